"""How the processes of one ``torchrun`` launch agree: one work list, one set of backbone
identities, one error for all, and no wait without a limit.

Every exchange goes through the launch's key-value store (the TCP store ``torch.distributed``
rendezvoused on), never through gloo collectives: a rank that fails posts its error there and every
other rank, polling between batches and while it waits, stops with that error instead of
"Connection closed by peer" or a hang.

* :meth:`Ranks.share` -- rank 0 computes a value (the work list), every rank receives it, or the
  error rank 0 met;
* :meth:`Ranks.gather` -- every rank's value (backbone identities, per-rank summaries), in rank
  order, or the first error any rank posted;
* :meth:`Ranks.beat` / :meth:`Ranks.check` -- progress and failure signals between batches;
* :meth:`Ranks.busy` -- beats from a thread while one long step (a store merge) runs.

A wait fails when an awaited rank made no progress (no beat) for ``FEATMAMMO_DIST_TIMEOUT``
seconds (default 1800, as torch's own): the waiting rank posts that as its error, so every rank
ends. A dead rank is noticed sooner by ``torchrun`` itself, which stops the others.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, RankFailed

log = logging.getLogger(__package__)

TIMEOUT_ENV = "FEATMAMMO_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
#: test seam: ``RANK:SECONDS`` makes that rank sleep before it starts its share of the batches
DELAY_ENV = "FEATMAMMO_TEST_RANK_DELAY"
BEAT_EVERY_S = 5.0  # how often :meth:`Ranks.busy` beats
ACK_WAIT_S = 10.0  # how long a failed rank waits for the others to have seen its error
_calls = itertools.count()  # one prefix per extract call (every rank makes the same calls)


def dist_timeout() -> float:
    """Seconds an awaited rank may go without progress (``FEATMAMMO_DIST_TIMEOUT``)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: need a number of seconds > 0")
    return value


def test_delay(rank: int) -> None:
    """The delayed-rank seam of the torchrun tests (no-op unless ``FEATMAMMO_TEST_RANK_DELAY``)."""
    raw = os.environ.get(DELAY_ENV, "")
    if not raw:
        return
    who, _, seconds = raw.partition(":")
    if int(who) == rank:
        log.info("rank %d: test delay of %s s", rank, seconds)
        time.sleep(float(seconds))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Ranks:
    """This process's view of the launch; with one process every method is a local no-op."""

    def __init__(self, rank: int = 0, world: int = 1, store=None, timeout_s: float | None = None):
        self.rank, self.world, self.store = rank, world, store
        self.timeout_s = dist_timeout() if timeout_s is None else float(timeout_s)
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.prefix = f"featmammo/extract/{restart}/{next(_calls)}"
        self.failed = False  # this rank posted an error

    @classmethod
    def join(cls, rank: int, world: int) -> tuple[Ranks, bool]:
        """``(ranks, own_group)``: the launch's store, initialising ``torch.distributed`` (gloo,
        with the timeout) when nobody has; ``own_group`` says whether to destroy it after."""
        if world <= 1:
            return cls(), False
        import datetime

        import torch.distributed as dist

        timeout_s = dist_timeout()
        own = False
        if not dist.is_initialized():
            dist.init_process_group(
                backend="gloo", timeout=datetime.timedelta(seconds=timeout_s)
            )  # fmt: skip
            own = True
        from torch.distributed.distributed_c10d import _get_default_store

        return cls(rank, world, _get_default_store(), timeout_s), own

    # ------------------------------------------------------------------ keys
    def _key(self, *parts) -> str:
        return "/".join([self.prefix, *map(str, parts)])

    def _get(self, key: str) -> Any:
        return pickle.loads(self.store.get(key))

    # ------------------------------------------------------------------ signals
    def beat(self) -> None:
        """This rank made progress (a batch, a step)."""
        if self.store is not None:
            self.store.add(self._key("beat", self.rank), 1)

    def post_error(self, exc: BaseException) -> None:
        """Tell every rank that this one failed (a RankFailed came from elsewhere: not again),
        and give them a moment to say so before this process exits: ``torchrun`` stops the
        others (SIGTERM) as soon as one rank has exited with an error."""
        if isinstance(exc, RankFailed) or not self._post(
            f"rank {self.rank} failed: {_describe(exc)}"
        ):
            return
        deadline = time.monotonic() + min(ACK_WAIT_S, self.timeout_s)
        with contextlib.suppress(Exception):
            self.store.add(self._key("ended"), 1)
            while time.monotonic() < deadline:
                if self.store.add(self._key("ended"), 0) >= self.world:
                    break
                time.sleep(0.05)

    def _post(self, message: str) -> bool:
        """The launch's error: the first rank to post one sets it; later posts change nothing.
        True when posted."""
        if self.store is None or self.failed:
            return False
        self.failed = True
        try:
            self.store.compare_set(self._key("error"), "", pickle.dumps(message))
        except Exception:  # noqa: BLE001 - the store may be gone with the launch
            return False
        return True

    def check(self) -> None:
        """RankFailed when another rank posted its error."""
        if self.store is None:
            return
        key = self._key("error")
        if self.store.check([key]):
            self.failed = True  # nothing more to post
            with contextlib.suppress(Exception):
                self.store.add(self._key("ended"), 1)  # what the failed rank waits for
            raise RankFailed(self._get(key))

    @contextlib.contextmanager
    def busy(self):
        """Beat every few seconds while the body runs (one long step: a store merge)."""
        if self.store is None:
            yield
            return
        stop = threading.Event()
        store = self.store.clone() if hasattr(self.store, "clone") else self.store
        key = self._key("beat", self.rank)

        def beats():
            while not stop.wait(min(BEAT_EVERY_S, self.timeout_s / 4)):
                with contextlib.suppress(Exception):
                    store.add(key, 1)

        thread = threading.Thread(target=beats, name="featmammo-beat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    # ------------------------------------------------------------------ exchanges
    def _wait(self, keys: dict[int, str], what: str) -> None:
        """Until every ``keys[rank]`` exists; RankFailed on a posted error or a silent rank."""
        last = {r: (None, time.monotonic()) for r in keys}
        pause = 0.005
        while True:
            missing = [r for r, k in keys.items() if not self.store.check([k])]
            if not missing:
                return
            self.check()
            now = time.monotonic()
            for r in missing:
                beats = self.store.add(self._key("beat", r), 0)
                if beats != last[r][0]:
                    last[r] = (beats, now)
                elif now - last[r][1] > self.timeout_s:
                    exc = RankFailed(
                        f"rank {self.rank} waited {self.timeout_s:.0f} s for rank {r} ({what}) "
                        f"with no sign of progress; stopping every rank ({TIMEOUT_ENV} sets "
                        "the limit)"
                    )
                    self._post(str(exc))  # the others must stop too
                    raise exc
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    def share(self, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` on rank 0, its value on every rank (RankFailed there if it raised)."""
        if self.store is None:
            return compute()
        key = self._key("share", name)
        if self.rank == 0:
            try:
                value = compute()
            except BaseException as exc:
                self.post_error(exc)
                raise
            self.store.set(key, pickle.dumps(value))
            self.beat()
            return value
        self._wait({0: key}, name)
        return self._get(key)

    def gather(self, name: str, value: Any) -> list:
        """Every rank's ``value``, in rank order (RankFailed when a rank posted an error)."""
        if self.store is None:
            return [value]
        self.store.set(self._key("gather", name, self.rank), pickle.dumps(value))
        self.beat()
        keys = {r: self._key("gather", name, r) for r in range(self.world)}
        self._wait({r: k for r, k in keys.items() if r != self.rank}, name)
        return [value if r == self.rank else self._get(k) for r, k in keys.items()]
