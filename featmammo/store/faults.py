"""Fault-injection seam for the crash-safety tests: a no-op unless ``FEATMAMMO_TEST_KILL`` is set.

The store's writers call :func:`fault_point` at the moments where a ``kill -9`` matters (a shard
written but not yet renamed, a new main file written but not yet in place, ...). The tests set
``FEATMAMMO_TEST_KILL=NAME:K`` to SIGKILL the process at the K-th pass of point NAME, then check
that the store is readable and that a rerun ends identical to an uninterrupted run.

Points: ``batch`` (extract, after each batch), ``shard-tmp`` (shard bytes written, not renamed),
``consolidate-tmp`` / ``consolidate-replaced`` (merged main file written / put in place, shards not
yet removed), ``modify-tmp`` / ``modify-replaced`` (the same for ``prepare`` extending a store).
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "FEATMAMMO_TEST_KILL"
ENV_AFTER = "FEATMAMMO_TEST_KILL_AFTER"

_COUNTS: dict[str, int] = {}
_LOCK = threading.Lock()


def fault_point(name: str) -> None:
    """Test hook: ``FEATMAMMO_TEST_KILL=NAME:K`` SIGKILLs this process at the K-th pass of NAME.

    ``FEATMAMMO_TEST_KILL_AFTER=K`` is short for ``batch:K``. A no-op unless a variable is set.
    """
    spec = os.environ.get(ENV)
    if not spec and os.environ.get(ENV_AFTER):
        spec = "batch:" + os.environ[ENV_AFTER]
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    with _LOCK:  # the background writer passes points from its own threads
        _COUNTS[name] = _COUNTS.get(name, 0) + 1
        hit = _COUNTS[name] >= int(count or 1)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
