"""Durable per-batch shards and their merge into the store (``consolidate``).

A shard (``STORE.h5.parts/<time>-<pid>-<random>.npz``, zlib level 1) records one finished group
of batches: ids, per backbone the embeddings, status and reasons, the backbone identity the rows
were computed under, and the UUID of the store it was written for. ``consolidate`` turns pending
shards into one new segment file plus a new main file; it never rewrites existing rows' bytes, so
a merge costs the rows merged (and the small index), however large the store is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import StoreError
from .faults import fault_point
from .files import check_space, is_space_error, space_error, write_h5
from .index import IdIndex, Segment, State, commit, editing, gather, meta_dataset, read_ids
from .locking import mutation
from .schema import (
    DONE,
    FAILED,
    IDENTITY_KEYS,
    META_COLUMNS,
    backbone_key,
    parts_dir,
    resolve,
    utcnow,
)
from .segments import (
    collect,
    create_embeddings,
    new_segment_path,
    start_segment,
    write_rows_part,
)

log = logging.getLogger("featmammo.store")

#: backbone provenance keys holding lists merged across runs (union, sorted), not replaced
MERGED_LISTS = ("devices", "decoders")


def store_uuid_of(path) -> str:
    """The UUID of the store at ``path`` ('' for a format-1 store or no store)."""
    import h5py

    try:
        with h5py.File(resolve(path), "r") as f:
            return str(f.attrs.get("store_uuid", ""))
    except (OSError, ValueError):
        return ""


def _savez(fh, payload: dict) -> None:
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for k, v in payload.items():
            with z.open(k + ".npy", "w", force_zip64=True) as m:
                np.lib.format.write_array(m, np.asanyarray(v), allow_pickle=False)


def write_shard(
    path,
    ids: Sequence[str],
    blocks: Mapping[str, tuple],
    identities: Mapping[str, str],
    *,
    dtypes: Mapping[str, str] | None = None,
    store_uuid: str | None = None,
    row_meta: Mapping[str, Sequence] | None = None,
) -> Path:
    """Durably record one finished batch for the store at ``path``.

    ``blocks[name] = (embeddings (n, D), status (n,) int, reasons (n,) str)`` for ``ids``;
    ``identities[name]`` is the backbone identity the rows were computed under (checked at merge).
    ``dtypes[name]`` (optional) is the store's dtype of that backbone: the shard then holds the
    embeddings already cast to it. ``store_uuid``: the store the rows belong to (read from the
    store when not given); a merge into any other store discards the shard. ``row_meta``: per-image
    metadata known only now (``{column: one string per id}``), written into those rows by the
    merge. The shard appears
    under its final name only once its bytes are on disk (``featmammo.atomic.atomic_write``).
    A full disk raises StoreSpaceError.
    """
    d = parts_dir(path)
    names = list(blocks)
    if store_uuid is None:
        store_uuid = store_uuid_of(path)
    payload = {
        "ids": np.asarray([str(i) for i in ids], dtype=str),
        "names": np.asarray(names, dtype=str),
        "identities": np.asarray([identities[n] for n in names], dtype=str),
        "store_uuid": np.asarray(str(store_uuid)),
    }
    columns = list(row_meta or {})
    fixed = [c for c in columns if c in META_COLUMNS]
    if fixed:
        raise StoreError(f"{path}: row_meta cannot change the manifest's columns {fixed}")
    payload["meta_columns"] = np.asarray(columns, dtype=str)
    for j, c in enumerate(columns):
        vals = [str(v) for v in row_meta[c]]
        if len(vals) != len(payload["ids"]):
            raise StoreError(f"{path}: row_meta {c!r} has {len(vals)} values for {len(ids)} ids")
        payload[f"meta{j}"] = np.asarray(vals, dtype=str)
    raw = 0
    for j, n in enumerate(names):
        emb, status, reason = blocks[n]
        emb = np.asarray(emb)
        if dtypes and dtypes.get(n):
            emb = emb.astype(dtypes[n], copy=False)
        raw += emb.nbytes
        payload[f"emb{j}"] = emb
        payload[f"status{j}"] = np.asarray(status, dtype=np.int8)
        payload[f"reason{j}"] = np.asarray([str(r) for r in reason], dtype=str)
    # time-ordered unique name: merge order is write order (a later shard wins on the same image)
    stem = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    final = d / f"{stem}.npz"
    d.mkdir(parents=True, exist_ok=True)
    check_space(path, d, raw + (1 << 20), "writing a shard")

    def _write(fh) -> None:
        _savez(fh, payload)
        fh.flush()
        fault_point("shard-tmp")  # bytes written under the temporary name, not yet renamed

    try:
        atomic_write(final, _write)
    except OSError as exc:
        if is_space_error(exc):
            raise space_error(path, exc, raw, d, "writing a shard") from exc
        raise
    return final


def list_shards(path) -> list[Path]:
    """The complete shards of ``path`` not merged yet, in write order."""
    d = parts_dir(path)
    return sorted(d.glob("*.npz")) if d.is_dir() else []


def shard_bytes(path) -> int:
    """Total size of the complete shards of ``path`` not merged yet."""
    total = 0
    for p in list_shards(path):
        with contextlib.suppress(FileNotFoundError):  # merged meanwhile
            total += p.stat().st_size
    return total


def shard_header(p: Path) -> dict | None:
    """A shard's ids, names, identities, store UUID, statuses and reasons (no embeddings)."""
    try:
        with np.load(p, allow_pickle=False) as z:
            head = {k: z[k] for k in z.files if not k.startswith("emb")}
    except Exception as exc:  # a complete shard never fails; a foreign file might
        log.warning("ignoring unreadable shard %s (%s)", p, exc)
        return None
    head["store_uuid"] = str(head["store_uuid"]) if "store_uuid" in head else ""
    return head


def _shard_time_ns(p: Path) -> int:
    try:
        return int(p.name.split("-", 1)[0])
    except ValueError:
        return 0


def _belongs(p: Path, head: dict, state: State) -> bool:
    if head["store_uuid"]:
        return head["store_uuid"] == state.uuid
    # written by a featmammo that put no UUID in shards: it belongs to the format-1 store this
    # index was upgraded from, if it predates the upgrade
    return bool(state.legacy_before_ns) and _shard_time_ns(p) < state.legacy_before_ns


def merge_shards(path, state: State, files, shard_paths: Sequence[Path]) -> list:
    """Merge ``shard_paths`` into ``state`` (a new segment written; the index not yet).

    Returns the shard files consumed (merged, or discarded as foreign, stale or unreadable).
    """
    consumed: list[Path] = []
    done_before = set(state.merged_shards)
    index = None
    plans: dict[str, list] = {}  # backbone -> [(rows, shard number, block j, k in shard)]
    metaplans: dict[str, list] = {}  # metadata column -> [(rows, values)]
    heads = []
    for p in shard_paths:
        if p.name in done_before:  # merged by a commit killed before it deleted the shard
            consumed.append(p)
            continue
        head = shard_header(p)
        consumed.append(p)
        if head is None:
            continue
        if not _belongs(p, head, state):
            log.warning(
                "%s: discarding shard %s: written for another store (UUID %s, this store's is "
                "%s), e.g. one deleted while a run was interrupted; its rows are not merged",
                path,
                p.name,
                head["store_uuid"] or "none",
                state.uuid,
            )
            continue
        if index is None:
            index = IdIndex(read_ids(state, files))
        sid = np.asarray(head["ids"]).astype(str)
        at, keep = index.lookup(sid)
        missing = sid[~keep]
        if missing.size:
            log.warning(
                "shard %s: %d images not in the store (e.g. %r); skipped",
                p,
                len(missing),
                str(missing[0]),
            )
        rows = at[keep]
        si = len(heads)
        heads.append((p, head, keep))
        for j, c in enumerate(head.get("meta_columns", ())):
            metaplans.setdefault(str(c), []).append((rows, head[f"meta{j}"][keep]))
        for j, (name, ident) in enumerate(zip(head["names"], head["identities"], strict=True)):
            b = state.blocks.get(str(name))
            if b is None or b.identity != str(ident):
                log.warning("shard %s: backbone %r does not match the store; skipped", p, name)
                continue
            k = np.flatnonzero(keep)
            plans.setdefault(str(name), []).append((rows, np.full(rows.size, si), j, k))
    if not plans and not metaplans:
        return consumed
    # per backbone the last write of each row wins (shards are in write order)
    winners = {}
    for name, parts in plans.items():
        rows = np.concatenate([q[0] for q in parts])
        src = np.concatenate([q[1] for q in parts])
        blk = np.concatenate([np.full(q[0].size, q[2]) for q in parts])
        kin = np.concatenate([q[3] for q in parts])
        _, last = np.unique(rows[::-1], return_index=True)
        take = rows.size - 1 - last  # sorted by row
        status = np.array(
            [
                heads[s][1][f"status{j}"][k]
                for s, j, k in zip(src[take], blk[take], kin[take], strict=True)
            ],
            dtype=np.int8,
        )
        winners[name] = (rows[take], src[take], blk[take], kin[take], status)
    new_done = {n: w[0][w[4] == DONE] for n, w in winners.items() if (w[4] == DONE).any()}
    meta_rows, meta_values, columns = _row_meta(state, files, metaplans)
    seg_no = None
    if new_done or meta_rows.size:
        target, rel = new_segment_path(state)
        needed = sum(
            r.size * state.blocks[n].dim * np.dtype(state.blocks[n].dtype).itemsize
            for n, r in new_done.items()
        ) + (1 << 20)

        def build(f) -> None:
            start_segment(f, state)
            if meta_rows.size:
                ids = gather(state.n, state.row_seg, state.row_pos, files, lambda s: "ids",
                             rows=meta_rows, strings=True)  # fmt: skip
                write_rows_part(f, meta_rows, ids, meta_values, columns)
            ds = {}
            for n, r in new_done.items():
                b = state.blocks[n]
                ds[n] = create_embeddings(
                    f, backbone_key(n), n, r, b.dim, b.dtype, state.compression
                )
            for si, (p, _head, _keep) in enumerate(heads):
                wanted = [
                    (n, w)
                    for n, w in winners.items()
                    if n in ds and ((w[1] == si) & (w[4] == DONE)).any()
                ]
                if not wanted:
                    continue
                with np.load(p, allow_pickle=False) as z:
                    for n, w in wanted:
                        sel = np.flatnonzero((w[1] == si) & (w[4] == DONE))
                        j = int(w[2][sel[0]])
                        emb = z[f"emb{j}"]
                        dst = np.searchsorted(new_done[n], w[0][sel])
                        _write_runs(ds[n], dst, emb[w[3][sel]])

        write_h5(target, build, store=path, needed=needed, what="merging shards", fault="segment")
        seg_no = state.add_segment(
            Segment(
                rel,
                int(meta_rows.size) if meta_rows.size else None,
                list(columns) if meta_rows.size else [],
                {n: int(r.size) for n, r in new_done.items()},
            )
        )
        if meta_rows.size:
            state.columns = list(columns)
            state.row_seg[meta_rows] = seg_no
            state.row_pos[meta_rows] = np.arange(meta_rows.size)
    for name, (rows, src, blk, kin, status) in winners.items():
        b = state.blocks[name]
        done = status == DONE
        failed = status == FAILED
        if done.any():
            r = rows[done]
            b.status[r] = DONE
            b.reason[r] = ""
            b.seg[r] = seg_no
            b.pos[r] = np.searchsorted(new_done[name], r)
        for i in np.flatnonzero(failed):
            r = int(rows[i])
            head = heads[int(src[i])][1]
            b.status[r] = FAILED
            b.reason[r] = str(head[f"reason{int(blk[i])}"][int(kin[i])])
            b.seg[r] = -1
    return consumed


def _row_meta(state: State, files, metaplans: dict) -> tuple[np.ndarray, dict, list]:
    """Rows given metadata by shards, their complete records (the stored values, the shards' on
    top; the last shard wins a row) and the columns they have."""
    if not metaplans:
        return np.zeros(0, np.int64), {}, list(state.columns)
    rows = np.unique(np.concatenate([r for parts in metaplans.values() for r, _ in parts]))
    columns = list(state.columns) + [c for c in metaplans if c not in state.columns]
    values = {}
    for c in columns:
        if c in state.columns:
            values[c] = gather(state.n, state.row_seg, state.row_pos, files,
                               meta_dataset(state, c), rows=rows, strings=True)  # fmt: skip
        else:
            values[c] = np.full(rows.size, "", dtype=object)
        for r, v in metaplans.get(c, ()):  # in write order: later shards overwrite
            values[c][np.searchsorted(rows, r)] = v.astype(object)
    return rows, values, columns


def _write_runs(ds, dst: np.ndarray, values: np.ndarray) -> None:
    """``ds[dst] = values`` for ascending-ish ``dst``, as contiguous slices."""
    order = np.argsort(dst, kind="stable")
    dst, values = dst[order], values[order]
    brk = np.flatnonzero(np.diff(dst) != 1) + 1
    starts = np.concatenate([[0], brk])
    stops = np.concatenate([brk, [dst.size]])
    for a, b in zip(starts, stops, strict=True):
        ds[int(dst[a]) : int(dst[b - 1]) + 1] = values[a:b].astype(ds.dtype, copy=False)


def apply_provenance(path, state: State, store_update, backbone_update) -> None:
    if store_update:
        sp = state.provenance
        for k, v in store_update.items():
            if k == "runs":
                sp["runs"] = list(sp.get("runs", [])) + list(v)
            else:
                sp[k] = v
        sp["updated"] = utcnow()
    for name, upd in (backbone_update or {}).items():
        b = state.blocks.get(name)
        if b is None:
            continue
        for k, v in upd.items():
            if k in IDENTITY_KEYS:
                raise StoreError(f"{path}: {k} is part of the identity of {name!r}; not updated")
            if k in MERGED_LISTS:  # what every run used, accumulated
                b.provenance[k] = sorted(set(b.provenance.get(k, [])) | set(v))
            else:
                b.provenance[k] = v


def consolidate(
    path,
    *,
    store_provenance_update: Mapping | None = None,
    backbone_provenance_update: Mapping[str, Mapping] | None = None,
    max_shards: int | None = None,
    shards: Sequence[Path] | None = None,
) -> int:
    """Merge the durable shards of ``path`` into the store atomically; return how many merged.

    The rows go into one new segment file and a new main file replaces the old one; nothing
    already stored is rewritten. Shards written for another store (another UUID), whose backbone
    identity differs from the store's entry of that name, or that name images the store lacks,
    are skipped with a warning (and removed, being unusable). Optionally updates the store-level
    provenance and per-backbone provenance in the same step. ``shards`` merges only those shard
    files (default: every complete shard, in write order). Takes the store's lock.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such store to merge shards into")
    real = resolve(path)
    with mutation(real):
        shard_paths = list_shards(real) if shards is None else sorted(Path(p) for p in shards)
        if max_shards is not None:
            shard_paths = shard_paths[:max_shards]
        if not shard_paths and not store_provenance_update and not backbone_provenance_update:
            return 0
        with editing(real) as (state, files):
            state.upgrade()
            consumed = merge_shards(path, state, files, shard_paths)
            apply_provenance(path, state, store_provenance_update, backbone_provenance_update)
            if consumed:
                state.merged_shards = [p.name for p in consumed]
            commit(state, store=path, fault="consolidate", what="merging shards")
        for p in consumed:  # only after the merged data is durable in the store
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        collect(real, state)
        from .compaction import maybe_compact

        maybe_compact(path)
    if consumed:
        log.debug("store %s: merged %d shards", path, len(consumed))
    return len(consumed)


def discard_foreign_shards(path, keep_uuid: str | None) -> int:
    """Delete shards not written for the store ``keep_uuid`` (None: every shard), with a warning."""
    gone = []
    for p in list_shards(path):
        head = shard_header(p)
        if head is not None and keep_uuid and head["store_uuid"] == keep_uuid:
            continue
        gone.append(p)
    if gone:
        log.warning(
            "%s: discarding %d shard(s) left by an interrupted run of a store that no longer "
            "exists at this path (e.g. %s); their rows are never merged into this store",
            path,
            len(gone),
            gone[0].name,
        )
        for p in gone:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return len(gone)


def cleanup_parts(path) -> None:
    """Remove the shard folder once it is empty (after the final consolidation)."""
    d = parts_dir(path)
    if d.is_dir():
        for tmp in d.glob(".*.tmp"):  # partial shards of killed writers
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        with contextlib.suppress(OSError):
            d.rmdir()
