"""One writer per store: an advisory ``flock`` on ``STORE.h5.lock``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import StoreError


@contextlib.contextmanager
def lock(path):
    """Exclusive advisory lock on ``STORE.h5.lock`` (released by the OS if the process dies)."""
    import fcntl

    lock_path = Path(str(path) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"{path}: another featmammo process is writing this store (lock {lock_path})"
            ) from None
        yield
    finally:
        os.close(fd)
