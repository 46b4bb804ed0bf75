"""Compaction (fewer, denser segments) and packing (one self-contained file). Neither is ever
needed for correctness: a store reads the same before and after.

* :func:`compact` rewrites the live rows of some segments into one new segment and retires the
  old ones (deleted by the garbage collection once no reader has the older main file open).
  ``consolidate`` runs it on its own (:func:`maybe_compact`) when the store has more than
  ``MAX_SEGMENTS`` segments or a virtual dataset more than ``MAX_MAPPINGS`` row ranges, picking
  the smallest segments (and those mostly superseded), so its cost stays a small share of the
  writes.
* :func:`pack` writes the store as one self-contained HDF5 file (format version 2 without
  segments: every dataset real), for sharing; ``featmammo store pack STORE -o OUT``.
"""

from __future__ import annotations

import contextlib
import logging
import types
from pathlib import Path

import numpy as np

from ..errors import StoreError
from .files import write_h5
from .index import (
    Segment,
    State,
    commit,
    editing,
    emb_dataset,
    gather,
    meta_dataset,
    runs,
    slab_rows,
)
from .locking import mutation
from .reader import Store
from .schema import DONE, backbone_key, resolve, utcnow
from .segments import (
    collect,
    create_embeddings,
    new_segment_path,
    start_segment,
    write_rows_part,
)

log = logging.getLogger("featmammo.store")

MAX_SEGMENTS = 64
TARGET_SEGMENTS = 16
MAX_MAPPINGS = 4096
WASTE = 0.5  # a segment whose live rows are under this share of its rows is rewritten


def _live_counts(state: State) -> tuple[np.ndarray, np.ndarray]:
    """Per segment: rows still read from it, and rows it holds."""
    k = len(state.segments)
    live = np.bincount(state.row_seg[state.row_seg >= 0], minlength=k).astype(np.int64)
    held = np.array([sg.rows or 0 for sg in state.segments], dtype=np.int64)
    for name, b in state.blocks.items():
        s = b.seg[(b.seg >= 0) & (b.status == DONE)]
        live += np.bincount(s, minlength=k) * max(1, b.dim // 64)
        held += np.array([sg.backbones.get(name, 0) for sg in state.segments]) * max(1, b.dim // 64)
    return live, held


def _mappings(state: State) -> int:
    most = len(runs(state.row_seg, state.row_pos))
    for b in state.blocks.values():
        most = max(most, len(runs(np.where(b.status == DONE, b.seg, -1), b.pos)))
    return most


def _choose(state: State, everything: bool) -> list[int]:
    k = len(state.segments)
    if k == 0 or state.inline:
        return []
    if everything:
        return list(range(k))
    live, held = _live_counts(state)
    chosen = {s for s in range(k) if held[s] and live[s] < WASTE * held[s]}
    if k - len(chosen) + (1 if chosen else 0) > MAX_SEGMENTS or _mappings(state) > MAX_MAPPINGS:
        order = np.argsort(held, kind="stable")  # smallest first
        for s in order:
            if k - len(chosen) + 1 <= TARGET_SEGMENTS:
                break
            chosen.add(int(s))
    return sorted(chosen)


def maybe_compact(path) -> int:
    """Compact when the store has grown too many segments or mappings; returns segments replaced."""
    real = resolve(path)
    with mutation(real), editing(real) as (state, _files):
        needed = bool(_choose(state, False))
    return compact(path) if needed else 0


def compact(path, *, everything: bool = False) -> int:
    """Rewrite the live rows of the chosen segments (all with ``everything``) as one segment.

    Returns how many segments were replaced. Takes the store's lock.
    """
    path = Path(path)
    real = resolve(path)
    with mutation(real):
        with editing(real) as (state, files):
            chosen = _choose(state, everything)
            if not chosen:
                return 0
            new_seg, rows, parts = _rewrite(path, state, files, chosen)
            _renumber(state, chosen, new_seg, rows, parts)
            state.provenance["compacted"] = utcnow()
            commit(state, store=path, fault="compact", what="compacting the store", retire=True)
        collect(real, state)
    log.info("store %s: compacted %d segments into one", path, len(chosen))
    return len(chosen)


def _rewrite(
    path, state: State, files, chosen: list[int]
) -> tuple[Segment | None, np.ndarray, dict]:
    """One new segment with every row the ``chosen`` segments still serve (None when none is):
    the segment, the rows of its ids/metadata part, and backbone -> rows of its embeddings."""
    pick = np.zeros(len(state.segments), dtype=bool)
    pick[chosen] = True
    rows = np.flatnonzero((state.row_seg >= 0) & pick[np.maximum(state.row_seg, 0)])
    parts = {}
    for name, b in state.blocks.items():
        seg = np.where(b.status == DONE, b.seg, -1)
        r = np.flatnonzero((seg >= 0) & pick[np.maximum(seg, 0)])
        if r.size:
            parts[name] = r
    if not rows.size and not parts:
        return None, rows, parts
    target, rel = new_segment_path(state)
    needed = (
        sum(
            r.size * state.blocks[n].dim * np.dtype(state.blocks[n].dtype).itemsize
            for n, r in parts.items()
        )
        + rows.size * 400
        + (1 << 20)
    )

    def build(f) -> None:
        start_segment(f, state)
        if rows.size:
            ids = gather(
                state.n,
                state.row_seg,
                state.row_pos,
                files,
                lambda s: "ids",
                rows=rows,
                strings=True,
            )
            values = {
                c: gather(
                    state.n,
                    state.row_seg,
                    state.row_pos,
                    files,
                    meta_dataset(state, c),
                    rows=rows,
                    strings=True,
                )
                for c in state.columns
            }
            write_rows_part(f, rows, ids, values, state.columns)
        for name, r in parts.items():
            b = state.blocks[name]
            ds = create_embeddings(
                f, backbone_key(name), name, r, b.dim, b.dtype, state.compression
            )
            step = slab_rows(b.dim * np.dtype(b.dtype).itemsize)
            seg = np.where(b.status == DONE, b.seg, -1)
            for a in range(0, r.size, step):
                x = gather(
                    state.n,
                    seg,
                    b.pos,
                    files,
                    emb_dataset(state, name),
                    rows=r[a : a + step],
                    dtype=np.dtype(b.dtype),
                    tail=(b.dim,),
                )
                ds[a : a + x.shape[0]] = x

    write_h5(target, build, store=path, needed=needed, what="compacting the store", fault="segment")
    seg = Segment(
        rel,
        int(rows.size) if rows.size else None,
        list(state.columns) if rows.size else [],
        {n: int(r.size) for n, r in parts.items()},
    )
    return seg, rows, parts


def _renumber(state: State, chosen: list[int], new_seg, rows: np.ndarray, parts: dict) -> None:
    """Drop the ``chosen`` segments from ``state``; their live rows now live in ``new_seg``."""
    k = len(state.segments)
    keep = [s for s in range(k) if s not in set(chosen)]
    remap = np.full(k + 1, -1, dtype=np.int32)  # index k: "none" (-1 maps through it)
    remap[keep] = np.arange(len(keep), dtype=np.int32)
    new_no = len(keep)
    state.segments = [state.segments[s] for s in keep] + ([new_seg] if new_seg else [])

    def apply(seg: np.ndarray) -> np.ndarray:
        return remap[np.where(seg >= 0, seg, k)]

    state.row_seg = apply(state.row_seg)
    state.row_seg[rows] = new_no
    state.row_pos[rows] = np.arange(rows.size)
    for name, b in state.blocks.items():
        b.seg = apply(b.seg)
        r = parts.get(name)
        if r is not None:
            b.seg[r] = new_no
            b.pos[r] = np.arange(r.size)


def pack(path, out=None) -> Path:
    """Write the store at ``path`` as one self-contained file at ``out`` (default: in place).

    The file has real datasets (no virtual datasets, no segment files): copy it anywhere, open it
    with plain h5py or ``featmammo.store.open``. Packing in place replaces the main file (same
    store UUID; its segments are deleted once no reader has the old main file open); packing to
    ``out`` makes an independent store (a new UUID, ``packed_from`` in its provenance).
    Returns the packed file's path.
    """
    from .create import write_packed

    path = Path(path)
    out = path if out is None else Path(out)
    in_place = resolve(out) == resolve(path)
    real_out = resolve(out)
    if not in_place and real_out.exists():
        raise StoreError(f"{out}: already exists; pack writes a new file (remove it first)")
    real_out.parent.mkdir(parents=True, exist_ok=True)
    with mutation(resolve(path)):
        with Store(path) as st:
            store_uuid = st.uuid
            entries = [
                types.SimpleNamespace(
                    name=n,
                    dim=st.dim(n),
                    dtype=st.dtype(n),
                    identity=st.identity(n),
                    provenance={
                        k: v for k, v in st.backbone_provenance(n).items() if k != "identity"
                    },
                )
                for n in st.backbones
            ]
            prov = dict(st.provenance)
            if not in_place:
                prov["packed_from"] = {
                    "store_uuid": st.uuid,
                    "generation": st.generation,
                    "path": str(path),
                }
            meta = st.raw_meta()
            needed = sum(len(st.ids) * e.dim * np.dtype(e.dtype).itemsize for e in entries)
            needed += len(st.ids) * 400 + (1 << 20)

            def rows_of(e):
                status, reason = st.status(e.name), st.reasons(e.name)
                for rows, x in st.blocks(e.name, dtype=np.dtype(e.dtype)):
                    yield rows, x, status[rows], reason[rows]

            lock_ctx = mutation(real_out) if not in_place else contextlib.nullcontext()
            with lock_ctx:
                write_packed(
                    real_out,
                    out,
                    st.ids.astype(object),
                    meta,
                    entries,
                    prov,
                    st.compression,
                    needed,
                    rows_of,
                    store_uuid=st.uuid if in_place else None,
                    what="packing the store",
                )
        if in_place:
            collect(resolve(path), None, min_age_s=0.0, own_uuid=store_uuid)
    log.info("packed %s into %s", path, out)
    return out
