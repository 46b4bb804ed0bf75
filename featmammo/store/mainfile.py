"""Atomic replacement of a store's main file: a reader sees the old version or the new one.

A new version is written to ``STORE.h5.tmp`` in the same folder, fsynced and ``os.replace``-d over
``STORE.h5``; the folder is then fsynced so the rename itself is durable.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import shutil
from pathlib import Path

import h5py

from ..atomic import fsync_dir
from .faults import fault_point


def tmp_path(path: Path) -> Path:
    """Where the next version of ``path`` is built (never read as the store)."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def commit(tmp: Path, path: Path) -> None:
    """Make the finished file ``tmp`` durable and atomically put it in place of ``path``.

    (``featmammo.atomic.atomic_write`` streams through a file object; HDF5 needs a file name, so
    the store builds ``tmp`` itself and commits it here with the same fsync-rename-fsync steps.)
    """
    with builtins.open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def copy_and_modify(path: Path, modify, fault: str = "modify") -> None:
    """Copy the live file to STORE.h5.tmp, let ``modify(h5file)`` change the copy, then commit."""
    path = Path(path)
    tmp = tmp_path(path)
    shutil.copyfile(path, tmp)
    try:
        # a chunk cache large enough that consecutive shards filling one chunk (rows of 64 x dim)
        # compress and write it once, not once per shard
        with h5py.File(tmp, "r+", rdcc_nbytes=64 << 20, rdcc_nslots=10007, rdcc_w0=1.0) as f:
            modify(f)
            f.flush()
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fault_point(f"{fault}-tmp")
    commit(tmp, path)
    fault_point(f"{fault}-replaced")
