"""One writer per store: an advisory ``flock`` on ``STORE.h5.lock``.

:func:`lock` is what a run takes (``extract`` holds it for the whole run): a second ``lock`` of
the same store, from another process or this one, is refused at once. Every function that writes
a store (``write``, ``prepare``, ``consolidate``, compaction, ``pack``) goes through
:func:`mutation`: it takes the lock, or re-enters it when this process already holds it (the run's
own prepare and merges), and serialises the read-modify-write steps of the process's threads
(the background merge and the caller). The lock file sits beside the file the path resolves to, so
every symlink to one store shares it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from ..errors import StoreError
from .schema import resolve

_GUARD = threading.Lock()
_HELD: dict[str, list] = {}  # lock file -> [fd, depth, pid]
_MUTEX: dict[str, threading.RLock] = {}


def lock_path(path) -> Path:
    real = resolve(path)
    return real.with_name(real.name + ".lock")


@contextlib.contextmanager
def lock(path):
    """Exclusive advisory lock on ``STORE.h5.lock`` (released by the OS if the process dies).

    A second lock of the same store (another process, or this one) is a StoreError at once: two
    extractions must not write one store. The store's own writers re-enter it (:func:`mutation`).
    """
    with _acquire(path, reentrant=False):
        yield


@contextlib.contextmanager
def _acquire(path, *, reentrant: bool):
    import fcntl

    lp = lock_path(path)
    key = str(lp)
    with _GUARD:
        held = _HELD.get(key)
        if held is not None and held[2] != os.getpid():  # inherited across fork: not ours
            del _HELD[key]
            held = None
        if held is not None and not reentrant:
            raise StoreError(
                f"{path}: another featmammo process is writing this store (lock {lp} is held "
                "by this process already)"
            )
        if held is not None:
            held[1] += 1
        else:
            try:
                lp.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:  # a read-only file system, a folder the user cannot write
                raise StoreError(
                    f"{path}: cannot write this store: its lock file {lp} cannot be created "
                    f"({exc.strerror or exc}); reading it needs no lock (featmammo info, "
                    "featmammo.store.open), writing needs a writable folder"
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StoreError(
                    f"{path}: another featmammo process is writing this store (lock {lp})"
                ) from None
            held = _HELD[key] = [fd, 1, os.getpid()]
    try:
        yield
    finally:
        with _GUARD:
            held[1] -= 1
            if held[1] == 0 and _HELD.get(key) is held:
                del _HELD[key]
                os.close(held[0])


@contextlib.contextmanager
def mutation(path):
    """The lock (re-entered) plus this process's per-store mutex: one change at a time."""
    key = str(lock_path(path))
    with _GUARD:
        mutex = _MUTEX.setdefault(key, threading.RLock())
    with _acquire(path, reentrant=True), mutex:
        yield


def try_flock(path, *, exclusive: bool) -> int:
    """An fd holding a non-blocking flock on ``path``; BlockingIOError when another holds one."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_locked(path) -> bool:
    """True while some process (this one included) holds the store's lock: a run is active."""

    lp = lock_path(path)
    with _GUARD:
        held = _HELD.get(str(lp))
        if held is not None and held[2] == os.getpid():
            return True
    try:
        fd = try_flock(lp, exclusive=False)
    except BlockingIOError:
        return True
    except OSError:
        return False
    os.close(fd)
    return False
