"""Writing the store's HDF5 files so that a full disk is a :class:`StoreSpaceError`, never a crash.

HDF5 does not survive a failed write: after ENOSPC or EFBIG (a ``ulimit -f`` file size limit) in
the middle of a file, h5py raised, then crashed the process with SIGSEGV while closing it
(measured: ``consolidate`` under ``RLIMIT_FSIZE`` ended with rc -11 and a ``.tmp`` left behind).
So h5py never writes to the disk itself here: it writes through :class:`GuardedFile`, a file
object (h5py's ``fileobj`` driver) that records the first OS error and tells HDF5 every write
succeeded. HDF5 finishes its in-memory work undisturbed, the caller finds the recorded error, the
temporary file is deleted and a StoreError naming the store and the space needed is raised. The
file is never renamed into place, so readers keep the last complete version.

Before a write, :func:`check_space` compares an estimate of its size with the free space of the
file system (and the process's file size limit), so an extraction stops before it starts a write
that cannot fit, with the same error.
"""

from __future__ import annotations

import errno
import io
import os
import resource
import tempfile
from collections.abc import Callable
from pathlib import Path

import h5py

from ..atomic import _umask, fsync_dir
from ..errors import StoreSpaceError
from .faults import fault_point
from .schema import LIBVER

#: free space kept in reserve beyond a write's estimate (metadata, other writers, the log)
SPACE_MARGIN = 16 << 20
_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def free_bytes(folder) -> int | None:
    """Bytes an unprivileged process may still write on the file system holding ``folder``."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return int(st.f_bavail) * int(st.f_frsize)


def file_size_limit() -> int | None:
    """This process's file size limit (``ulimit -f``, RLIMIT_FSIZE) in bytes; None if unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def check_space(store, folder, needed: int, what: str) -> None:
    """StoreSpaceError unless ``needed`` bytes (plus a margin) fit in ``folder`` and in one file."""
    limit = file_size_limit()
    if limit is not None and needed > limit:
        raise StoreSpaceError(
            f"{store}: {what} needs about {human(needed)} in one file, more than this process's "
            f"file size limit ({human(limit)}, ulimit -f); every row done so far is kept",
            store,
            needed,
            limit,
        )
    free = free_bytes(folder)
    if free is not None and needed + SPACE_MARGIN > free:
        raise StoreSpaceError(
            f"{store}: {what} needs about {human(needed + SPACE_MARGIN)} on {folder} but only "
            f"{human(free)} is free; free some space and rerun (every row done so far is kept)",
            store,
            needed + SPACE_MARGIN,
            free,
        )


def is_space_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _SPACE_ERRNOS


def space_error(store, exc: OSError, needed: int | None, folder, what: str) -> StoreSpaceError:
    free = free_bytes(folder)
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return StoreSpaceError(
        f"{store}: {what} failed: {reason} (needed about {human(needed)}; {human(free)} free on "
        f"{folder}); nothing half-written was left, the store keeps every row done so far: free "
        "some space and rerun",
        store,
        needed,
        free,
    )


class GuardedFile(io.RawIOBase):
    """A file h5py writes through (``h5py.File(GuardedFile(fd), "w")``) that never fails a write.

    The first OSError is kept in ``error`` and every later write is skipped; ``high`` is the end
    of the furthest write (the size the file would have had).
    """

    def __init__(self, fd: int):
        super().__init__()
        self.fd, self.pos, self.high, self.error = fd, 0, 0, None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self.pos = offset
        elif whence == 1:
            self.pos += offset
        else:
            self.pos = max(self.high, os.fstat(self.fd).st_size) + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf) -> int:
        n = os.preadv(self.fd, [buf], self.pos)
        self.pos += n
        return n

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        done = 0
        while self.error is None and done < size:
            try:
                done += os.pwrite(self.fd, view[done:], self.pos + done)
            except OSError as exc:
                self.error = exc
        self.pos += size
        self.high = max(self.high, self.pos)
        return size

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as exc:
                self.error = exc
        self.high = max(self.high, size)
        return size

    def flush(self) -> None:
        pass


def write_h5(
    final,
    build: Callable[[h5py.File], object],
    *,
    store,
    needed: int,
    what: str,
    fault: str | None = None,
    rdcc_nbytes: int = 8 << 20,
) -> None:
    """Build a new HDF5 file with ``build(h5file)`` and put it at ``final`` atomically.

    Unique temporary name in ``final``'s folder, written through :class:`GuardedFile`, fsynced,
    renamed, folder fsynced. ``needed`` (an estimate of the file's size) is checked against the
    free space first. A full disk or a file size limit raises StoreSpaceError; on any error the
    temporary file is removed and ``final`` is untouched. ``fault``: the test hook passed (as
    ``FAULT-tmp``) once the file is complete under its temporary name.
    """
    final = Path(final)
    folder = final.parent
    check_space(store, folder, needed, what)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=folder)
    guard = GuardedFile(fd)
    try:
        try:
            with h5py.File(
                guard, "w", libver=LIBVER, rdcc_nbytes=rdcc_nbytes, rdcc_nslots=10007, rdcc_w0=1.0
            ) as f:
                build(f)
        except Exception as exc:
            if guard.error is not None:
                raise space_error(store, guard.error, guard.high, folder, what) from exc
            raise
        if guard.error is not None:
            if not is_space_error(guard.error):
                raise guard.error
            raise space_error(store, guard.error, guard.high, folder, what) from guard.error
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            os.fsync(fd)
        except OSError as exc:
            if is_space_error(exc):
                raise space_error(store, exc, guard.high, folder, what) from exc
            raise
        os.close(fd)
        fd = -1
        if fault:
            fault_point(f"{fault}-tmp")
        os.replace(tmp, final)
        fsync_dir(folder)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
