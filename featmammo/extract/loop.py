"""One process's share of an extraction: read -> forward -> background write (:class:`_Loop`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import store as fstore
from ..errors import ConfigError
from .forward import _forward_all, _pipelined
from .loading import _Images, _loader, _mask_column, _reason, _worker_context
from .summary import ExtractSummary

log = logging.getLogger(__package__)  # "featmammo.extract" in log lines, as before the split

#: what the reader did to an image, stored per row beside the manifest's metadata
#: (``Store.meta["windowing_applied"]``: voi_lut | window | none | percentile; "" where not read)
ROW_FACTS = ("windowing_applied",)


def _open_writer(store_path, rank: int, every: int | None):
    """The store's background writer; rank 0 merges shards into the main file (geometric
    schedule, or after every batch with ``every=1``: the fault-injection tests' setting)."""
    if every is None:
        return fstore.BackgroundWriter(store_path, consolidate=rank == 0)
    if every != 1:
        raise ConfigError(
            f"consolidate_every must be None (the writer's schedule) or 1, not {every!r}"
        )
    return fstore.BackgroundWriter(store_path, consolidate=rank == 0, growth=0, merge_until=None)


@dataclass
class Plan:
    """The work of one extraction, decided once (by rank 0 under ``torchrun``) from the store as
    it was when the run started, and shared with every rank: each rank takes every
    ``world``-th batch of the same list, so no rank can see rows another rank merged meanwhile
    as "done" and skip work nobody else does."""

    need: np.ndarray  # (manifest rows, backbones) bool: still needs an embedding
    dtypes: dict  # backbone -> the store's dtype
    batches: list  # manifest row indices of each batch that needs work, in manifest order
    n_skipped: int  # images already done for every requested backbone
    n_reembedded: int = 0  # images done before whose files changed: pending again

    @property
    def n_todo(self) -> int:
        return int(self.need.any(axis=1).sum())


def plan_work(store_path, ids: np.ndarray, names: list, batch_size: int) -> Plan:
    """Which manifest rows still need which backbone, cut into the run's fixed batches."""
    with fstore.open(store_path) as st:
        index = {i: k for k, i in enumerate(st.ids)}
        rows = np.array([index[i] for i in ids], dtype=np.int64)  # store row per manifest row
        # True where (manifest row, backbone) still needs an embedding (pending or failed before)
        need = np.stack([st.status(nm)[rows] != fstore.DONE for nm in names], axis=1)
        dtypes = {nm: st.dtype(nm) for nm in names}
    n = len(ids)
    chunks = [np.arange(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    return Plan(
        need=need,
        dtypes=dtypes,
        batches=[c for c in chunks if need[c].any()],
        n_skipped=int((~need.any(axis=1)).sum()),
    )


@dataclass
class _Loop:
    """One process's share of an extraction: read -> forward -> background write."""

    df: pd.DataFrame
    ids: np.ndarray
    store_path: Path
    models: dict
    identities: dict
    config: object
    dev: torch.device
    prec: str
    batch_size: int
    workers: int
    max_failures: int | None
    rank: int
    world: int
    progress: Callable | None
    prefetch: bool
    cache: object
    consolidate_every: int | None
    plan: Plan
    decoder: str = "cpu"
    between: Callable[[], None] | None = None  # after each batch (other ranks' failures, beats)

    def run(self) -> ExtractSummary:
        plan = self.plan
        self.names = names = list(self.models)
        self.need = need = plan.need
        self.dtypes = plan.dtypes
        n = len(self.df)
        mine = plan.batches[self.rank :: self.world]
        self.summary = summary = ExtractSummary(
            store=str(self.store_path), backbones=names, n_images=n
        )
        log.info(
            "%d images: %d to embed in %d batches on %s (rank %d/%d: %d batches, %d workers), "
            "backbones %s",
            n, plan.n_todo, len(plan.batches), self.dev, self.rank, self.world, len(mine),
            self.workers, names,
        )  # fmt: skip
        if not mine:
            return summary

        self.paths = self.df["path"].astype(str).tolist()
        lats = self.df["laterality"].fillna("").astype(str).tolist()
        col = _mask_column(self.df) if self.config.uses_mask else None
        self.masks = masks = self.df[col].fillna("").astype(str).tolist() if col else [""] * n
        dataset = _Images(self.paths, lats, masks, self.config, self.cache, self.decoder)
        n_workers, context = _worker_context(dataset, self.workers, self.decoder)
        batches = _loader(dataset, [c.tolist() for c in mine], n_workers, self.dev,
                          self.prefetch, context)  # fmt: skip
        self.hashed = list(self.ids) != self.df["image_id"].astype(str).tolist()
        self.failed_images: set[int] = set()
        self.total_mine = int(sum(len(c) for c in mine))
        self.n_seen, self.t_start = 0, time.monotonic()
        self.last_log = self.t_start

        def launch(b):
            ok_idx, batch = b[0], b[1]
            todo = [nm for j, nm in enumerate(names) if batch is not None and need[ok_idx, j].any()]
            return _forward_all(self.models, todo, batch, self.dev, self.prec)

        with _open_writer(self.store_path, self.rank, self.consolidate_every) as writer:
            for (ok_idx, _batch, failed, read), outputs in _pipelined(batches, launch):
                for meta in read.values():
                    applied = meta.get("windowing_applied")
                    if applied:
                        summary.windowing_applied[applied] = (
                            summary.windowing_applied.get(applied, 0) + 1
                        )
                self._finish(writer, ok_idx, failed, outputs.result(), read)
                if self.between is not None:
                    self.between()
                if self.max_failures is not None and len(self.failed_images) > self.max_failures:
                    log.error(
                        "more than %d images failed; stopping after this batch", self.max_failures
                    )
                    summary.stopped_early = True
                    break
        summary.n_failed = len(self.failed_images)
        return summary

    def _finish(self, writer, ok_idx, failed, outputs: dict, reads: dict | None = None) -> None:
        """Check one batch's embeddings, record failures, hand the rows to the writer with what
        the reader applied to each image (``reads``: index -> read meta; stored per row as the
        metadata columns of ``ROW_FACTS``)."""
        names, need, summary = self.names, self.need, self.summary
        chunk = np.array(sorted(ok_idx + [i for i, _ in failed]), dtype=np.int64)
        reasons = {i: _reason(e, self.paths[i], self.masks[i], self.hashed) for i, e in failed}
        pos = {i: k for k, i in enumerate(ok_idx)}
        blocks = {}
        for j, name in enumerate(names):
            sel = chunk[need[chunk, j]]
            if sel.size == 0:
                continue
            dim = int(self.models[name].spec.dim)
            emb = np.full((sel.size, dim), np.nan, dtype=np.float32)
            status = np.full(sel.size, fstore.DONE, dtype=np.int8)
            why = np.full(sel.size, "", dtype=object)
            read = np.array([i not in reasons for i in sel], dtype=bool)
            if read.any():
                x = outputs[name][[pos[i] for i in sel[read]]]
                emb[read] = x
                # NaN/inf, or a value the store's float16 would turn into inf (whole batch at once)
                bad = ~fstore.storable_rows(x, self.dtypes[name])
                for k in np.flatnonzero(read)[bad]:
                    why[k] = f"{name}: {fstore.nonfinite_reason(emb[k], self.dtypes[name])}"
                    status[k] = fstore.FAILED
                    emb[k] = np.nan
            for k in np.flatnonzero(~read):
                status[k], why[k] = fstore.FAILED, reasons[int(sel[k])]
            for k, i in enumerate(sel):
                if status[k] == fstore.FAILED:
                    self.failed_images.add(int(i))
                    log.warning("%s failed for %s: %s", name, self.paths[i], why[k])
                    # the summary carries what the store carries: no path behind hashed ids
                    summary.failures.append(
                        {"image_id": str(self.ids[i]), "path": "" if self.hashed else self.paths[i],
                         "backbone": name, "reason": str(why[k])}
                    )  # fmt: skip
            blocks[name] = (emb, status, why)
        # a shard holds one id list: one submission per distinct row set (usually one per batch)
        groups: dict[tuple, dict] = {}
        for j, name in enumerate(names):
            if name in blocks:
                sel = tuple(int(i) for i in chunk[need[chunk, j]])
                groups.setdefault(sel, {})[name] = blocks[name]
        for sel, bl in groups.items():
            seen = reads or {}
            facts = {col: [str(seen.get(i, {}).get(col) or "") for i in sel] for col in ROW_FACTS}
            writer.submit(
                [str(self.ids[i]) for i in sel], bl, {nm: self.identities[nm] for nm in bl},
                row_meta=facts,
            )  # fmt: skip
        summary.n_done += int(
            sum(1 for i in chunk if need[i].any() and int(i) not in self.failed_images)
        )
        self.n_seen += len(chunk)
        if self.progress is not None:
            self.progress(len(chunk), self.total_mine)
        if time.monotonic() - self.last_log > 30:
            rate = self.n_seen / max(time.monotonic() - self.t_start, 1e-9)
            log.info("%d/%d images (%.2f images/s)", self.n_seen, self.total_mine, rate)
            self.last_log = time.monotonic()
        fstore.fault_point("batch")
