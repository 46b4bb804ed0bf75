"""Writing an extraction's batches off the forward loop, at a cost in proportion to the new rows.

:class:`BackgroundWriter` takes finished batches (``submit`` returns at once), writes each as a
durable shard in a background thread and, on the process that owns the main file, merges shards
into the store (``featmammo.store.consolidate``) once they hold ``merge_bytes``: a merge writes
the merged rows as one new segment file plus a new (small) main file and rewrites nothing that
was stored before, so merging often costs no more than merging once. The default threshold
(``max(MERGE_MIN_BYTES, expected / MERGES_PER_RUN)`` of shard bytes) lets readers see the store
grow in about 16 steps and keeps a run's segment files few. The caller's final
``featmammo.store.consolidate`` (with the run's provenance) merges the rest.

Bytes written by a fresh run: the shards (zlib level 1: about the stored size), the segments (1x)
and the indexes (a few bytes per row each): about 2x the final store, flat in its size
(``benchmarks/store_write.py``). Memory: one shard at a time, whatever the store's size.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import StoreError
from .index import editing
from .schema import DONE, parts_dir, resolve
from .shards import consolidate as _consolidate
from .shards import write_shard

log = logging.getLogger("featmammo.store")

_STOP = object()
SCAN_INTERVAL_S = 0.5  # how often the shard folder is listed to decide on a merge
GROUP_MAX_ROWS = 4096  # at most this many rows (waiting batches) in one shard
MERGE_MIN_BYTES = 32 << 20  # no scheduled merge of less than this many shard bytes
MERGES_PER_RUN = 16  # scheduled merges of a run (readers see the store grow in as many steps)


class BackgroundWriter:
    """Write an extraction's batches to the store at ``store_path`` from background threads.

    ``consolidate``: merge shards into the store on the schedule (the process that owns the
    main file, rank 0); other ranks only write shards. ``max_pending``: batches that may wait for
    the writer before ``submit`` blocks (bounds memory). ``merge_bytes``: shard bytes that start
    a merge (default: module docstring), scaled by ``growth``; ``growth=0`` merges after every
    batch (fault-injection tests). ``merge_until`` (a fraction of the run's expected bytes, or
    None): no scheduled merge past it. The store must exist (``featmammo.store.prepare``).
    """

    def __init__(
        self,
        store_path,
        *,
        consolidate: bool = True,
        max_pending: int = 4,
        growth: float = 1.0,
        merge_until: float | None = None,
        merge_bytes: int | None = None,
    ):
        self.path = Path(store_path)
        if max_pending < 1:
            raise StoreError(f"{self.path}: max_pending must be >= 1, not {max_pending}")
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such store")
        with editing(resolve(self.path)) as (state, _files):  # the index only: no metadata
            blocks = state.blocks
            self._dims = {n: b.dim for n, b in blocks.items()}
            self._dtypes = {n: b.dtype for n, b in blocks.items()}
            self.store_uuid = state.uuid
            # bytes this run is expected to write: every row not done yet, of every backbone
            self.expected_bytes = sum(
                int((b.status != DONE).sum()) * b.dim * np.dtype(b.dtype).itemsize
                for b in blocks.values()
            )
        if merge_bytes is None:
            merge_bytes = max(MERGE_MIN_BYTES, self.expected_bytes // MERGES_PER_RUN)
        self.merge_bytes = int(merge_bytes)
        self.consolidate = bool(consolidate)
        self.growth = float(growth)
        self.merge_until = merge_until
        self.n_batches = 0  # batches written
        self.n_shards = 0  # shards written (waiting batches share one)
        self.n_merges = 0  # scheduled merges done
        self.bytes_shards = 0  # bytes of the shards this writer wrote
        self.bytes_merged = 0  # bytes of shards merged by scheduled merges
        self._sizes: dict[str, int] = {}
        self._last_scan = -float("inf")
        self._own_since_scan = 0  # bytes of this writer's shards since the folder was listed
        self._pending_at_scan = 0
        self._queue: queue.Queue = queue.Queue(maxsize=int(max_pending))
        self._error: BaseException | None = None
        self._closed = False
        self._merge: threading.Thread | None = None
        self._thread = threading.Thread(
            target=self._loop, name=f"featmammo-store-writer {self.path.name}", daemon=True
        )
        self._thread.start()

    # -------------------------------------------------------------------------------- public
    def submit(
        self,
        ids: Sequence[str],
        blocks: Mapping[str, tuple],
        identities: Mapping[str, str],
        *,
        row_meta: Mapping[str, Sequence] | None = None,
    ) -> None:
        """Queue one finished batch: ``blocks[name] = (emb (n, D), status (n,), reasons (n,))``.

        ``row_meta``: per-image facts known only once the images were read (``{column: one
        string per id}``); the merge writes them into those rows' metadata (a new column reads ""
        for the other rows). Returns at once unless ``max_pending`` batches are already waiting.
        The arrays are copied, so the caller may reuse its buffers. Raises the first error of the
        background threads.
        """
        self._raise()
        if self._closed:
            raise StoreError(f"{self.path}: submit after close")
        ids = [str(i) for i in ids]
        batch = {}
        for name, (emb, status, reasons) in blocks.items():
            if name not in self._dims:
                raise StoreError(f"{self.path}: no backbone {name!r} in this store")
            if name not in identities:
                raise StoreError(f"{self.path}: no identity given for backbone {name!r}")
            emb = np.array(emb, copy=True)
            status = np.array(status, dtype=np.int8, copy=True)
            reasons = [str(r) for r in reasons]
            if (
                emb.shape != (len(ids), self._dims[name])
                or len(status) != len(ids)
                or len(reasons) != len(ids)
            ):
                raise StoreError(
                    f"{self.path}: backbone {name!r}: block shapes {emb.shape}, "
                    f"{status.shape}, {len(reasons)} do not match {len(ids)} ids of dim "
                    f"{self._dims[name]}"
                )
            batch[name] = (emb, status, reasons)
        meta = None
        if row_meta:
            meta = {str(c): [str(v) for v in vals] for c, vals in row_meta.items()}
            bad = {c: len(v) for c, v in meta.items() if len(v) != len(ids)}
            if bad:
                raise StoreError(f"{self.path}: row_meta lengths {bad} do not match {len(ids)} ids")
        if batch:
            self._queue.put((ids, batch, {n: str(identities[n]) for n in batch}, meta))

    def close(self) -> None:
        """Wait for every submitted batch (and a merge in progress); raise a background error.

        Does not make the final merge: the caller runs ``featmammo.store.consolidate`` (with the
        run's provenance) once every writer of the store, on every rank, has closed.
        """
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()
        if self._merge is not None:
            self._merge.join()
        self._raise()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self.close()
        except BaseException as err:
            if exc_type is None:
                raise
            if err is not exc:  # the caller's exception propagates; do not hide this one
                log.error("%s: background writer failed too: %s", self.path, err)
        return False

    # -------------------------------------------------------------------------------- threads
    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        carry = None  # a batch taken from the queue that did not fit the previous shard
        while True:
            item = carry if carry is not None else self._queue.get()
            carry = None
            if item is _STOP:
                return
            if self._error is not None:
                continue  # keep draining so a blocked submit/close never hangs
            # group commit: batches already waiting (same backbones) go into one shard, so one
            # fsync pair serves them all when the loop outpaces the disk
            group = [item]
            rows = len(item[0])
            while rows < GROUP_MAX_ROWS:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP or nxt[2] != item[2] or _keys(nxt[3]) != _keys(item[3]):
                    carry = nxt
                    break
                group.append(nxt)
                rows += len(nxt[0])
            try:
                ids, blocks, identities, meta = _concat(group)
                p = write_shard(
                    self.path, ids, blocks, identities, dtypes=self._dtypes,
                    store_uuid=self.store_uuid, row_meta=meta,
                )  # fmt: skip
                self.n_batches += len(group)
                self.n_shards += 1
                size = p.stat().st_size
                self.bytes_shards += size
                self._own_since_scan += size
                if self.consolidate and self._merge_due():
                    self._start_merge()
            except BaseException as exc:  # surfaced by the next submit or close
                self._error = exc
                log.error("%s: background writer: %s", self.path, exc)

    def _pending(self) -> tuple[list[Path], int]:
        """Complete shards waiting in the parts folder (any rank's) and their bytes."""
        d = parts_dir(self.path)
        found, total = [], 0
        sizes = {}
        if not d.is_dir():
            self._sizes = sizes
            return found, total
        with os.scandir(d) as it:
            for entry in it:
                if entry.name.startswith(".") or not entry.name.endswith(".npz"):
                    continue
                size = self._sizes.get(entry.name)
                if size is None:
                    try:
                        size = entry.stat().st_size
                    except FileNotFoundError:
                        continue
                sizes[entry.name] = size
                found.append(Path(entry.path))
                total += size
        self._sizes = sizes
        return sorted(found), total

    def _merge_due(self) -> bool:
        if self._merge is not None and self._merge.is_alive():
            return False
        if self._error is not None:
            return False
        if self.merge_until is not None and (
            self.bytes_merged >= self.merge_until * self.expected_bytes
        ):
            return False  # past the scheduled part: only the final merge remains
        threshold = self.growth * self.merge_bytes
        # listing thousands of shards after every batch would cost O(n^2): list the folder when
        # this writer's own shards alone could have reached the threshold, else twice a second
        # (for the shards of other ranks)
        own = self._own_since_scan + self._pending_at_scan >= threshold
        if not own and time.monotonic() - self._last_scan < SCAN_INTERVAL_S:
            return False
        self._last_scan, self._own_since_scan = time.monotonic(), 0
        _, pending = self._pending()
        self._pending_at_scan = pending
        return pending > 0 and pending >= threshold

    def _start_merge(self) -> None:
        shards, pending = self._pending()

        def run() -> None:
            t0 = time.perf_counter()
            try:
                _consolidate(self.path, shards=shards)
                self.bytes_merged += pending
                self.n_merges += 1
                log.debug(
                    "%s: merged %d shards (%d bytes) in %.2f s",
                    self.path,
                    len(shards),
                    pending,
                    time.perf_counter() - t0,
                )
            except BaseException as exc:
                self._error = exc
                log.error("%s: background merge: %s", self.path, exc)

        self._merge = threading.Thread(target=run, name="featmammo-store-merge", daemon=True)
        self._merge.start()


def _keys(meta) -> tuple:
    return tuple(sorted(meta)) if meta else ()


def _concat(group: list) -> tuple[list[str], dict, dict, dict | None]:
    """One shard's ids, blocks and row metadata from batches with the same backbones and
    metadata columns (in submit order)."""
    if len(group) == 1:
        return group[0]
    ids = [i for g in group for i in g[0]]
    blocks = {}
    for name in group[0][1]:
        parts = [g[1][name] for g in group]
        blocks[name] = (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            [r for p in parts for r in p[2]],
        )
    meta = None
    if group[0][3]:
        meta = {c: [v for g in group for v in g[3][c]] for c in group[0][3]}
    return ids, blocks, group[0][2], meta
