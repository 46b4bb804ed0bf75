"""Stores as :func:`featmammo.fit.fit` sees them: opening, finite views, exclusions, identity."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..hashing import fingerprint
from ..store import DONE, FAILED, PENDING


def store_fingerprint(store) -> str:
    """Short hash of a store's identity: ids, backbone identities and store provenance."""
    return fingerprint(
        {
            "ids": fingerprint([str(i) for i in store.ids]),
            "backbones": {n: store.identity(n) for n in store.backbones},
            "manifest_hash": store.provenance.get("manifest_hash"),
        }
    )


class FiniteStoreView:
    """A store whose ``done`` mask also excludes rows with non-finite embeddings.

    Extraction records NaN/inf embeddings as failed, but a store written by other code may hold
    them as done; such rows are left out (and counted in the report) instead of stopping the run.
    Everything else is delegated to the wrapped store. No matrix is kept: the finiteness of each
    backbone's done rows is checked once, block by block, and only the (N,) mask is cached, so
    fusing through the view holds the fused features and one block, not the store's matrices too.
    """

    def __init__(self, store):
        self._store = store
        self._finite: dict = {}

    def __getattr__(self, name):
        return getattr(self._store, name)

    def _mask(self, name: str) -> np.ndarray:
        if name not in self._finite:
            done = np.asarray(self._store.done(name), dtype=bool)
            finite = np.ones(done.shape[0], dtype=bool)
            rows = np.flatnonzero(done)
            reader = getattr(self._store, "blocks", None)
            if reader is not None:
                for r, x in reader(name, rows=rows):
                    finite[r] = np.isfinite(x).all(axis=1) if x.size else True
            elif rows.size:
                x = np.asarray(self._store.array(name))
                finite = np.isfinite(x).all(axis=1) if x.size else finite
            self._finite[name] = finite
        return self._finite[name]

    def array(self, name: str, *args, **kwargs):
        return self._store.array(name, *args, **kwargs)

    def blocks(self, name: str, *args, **kwargs):
        reader = getattr(self._store, "blocks", None)
        if reader is None:  # a store object with array() only
            rows = kwargs.get("rows", args[0] if args else None)
            x = np.asarray(self._store.array(name))
            rows = np.arange(len(x)) if rows is None else np.asarray(rows)
            yield rows, x[rows]
            return
        yield from reader(name, *args, **kwargs)

    def done(self, name: str) -> np.ndarray:
        return np.asarray(self._store.done(name), dtype=bool) & self._mask(name)

    def non_finite(self, name: str) -> np.ndarray:
        """Rows marked done in the store whose embedding holds NaN or inf."""
        return np.asarray(self._store.done(name), dtype=bool) & ~self._mask(name)


def _exclusions(views, used: Sequence[str], kept_ids) -> list[dict]:
    """Per store and used backbone: images left out for want of an embedding, with reasons."""
    kept = set(map(str, kept_ids))
    out = []
    for v in views:
        ids = np.asarray(v.ids).astype(str)
        fails = v.failures if hasattr(v, "failures") else pd.DataFrame()
        for name in used:
            if name not in v.backbones:
                continue
            status = np.asarray(v.status(name))
            nonfin = v.non_finite(name) if hasattr(v, "non_finite") else np.zeros(len(ids), bool)
            failed = int((status == FAILED).sum())
            pending = int((status == PENDING).sum())
            n_nonfin = int(nonfin.sum())
            if not (failed or pending or n_nonfin):
                continue
            reasons = {}
            if failed and len(fails):
                f = fails[fails["backbone"] == name]
                reasons = {str(k): int(c) for k, c in f["reason"].value_counts().head(5).items()}
            examples = [i for i in ids[(status != DONE) | nonfin] if i not in kept][:5]
            out.append(
                {
                    "store": str(getattr(v, "path", "")),
                    "backbone": name,
                    "failed": failed,
                    "pending": pending,
                    "non_finite": n_nonfin,
                    "reasons": reasons,
                    "examples": examples,
                }
            )
    return out


def _exclusion_note(rec: dict) -> str:
    parts = []
    if rec["failed"]:
        why = "; ".join(f"{r} (x{c})" for r, c in rec["reasons"].items())
        parts.append(f"{rec['failed']} failed at extraction" + (f": {why}" if why else ""))
    if rec["pending"]:
        parts.append(f"{rec['pending']} never extracted (pending; rerun `featmammo extract`)")
    if rec["non_finite"]:
        parts.append(f"{rec['non_finite']} with a NaN/inf embedding")
    return (
        f"{Path(rec['store']).name} backbone {rec['backbone']}: "
        + ", ".join(parts)
        + f"; left out of every model (e.g. {', '.join(rec['examples'][:3])})"
    )


def _open_stores(stores) -> list:
    from .. import store as store_mod

    items = list(stores) if isinstance(stores, (list, tuple)) else [stores]
    if not items:
        raise ConfigError("fit: no store given")
    return [store_mod.open(s) if isinstance(s, (str, Path)) else s for s in items]
