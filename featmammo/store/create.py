"""Writing whole stores: :func:`write` (one self-contained file in one atomic step) and
:func:`prepare` (create, or check and extend an existing store before an extraction)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import StoreError
from .files import write_h5
from .index import (
    Block,
    IdIndex,
    Segment,
    State,
    commit,
    editing,
    new_uuid,
    read_ids,
    read_meta,
)
from .locking import mutation
from .reader import Store
from .schema import (
    DONE,
    FAILED,
    IDENTITY_DEFAULTS,
    IDENTITY_KEYS,
    MASK_PART,
    META_COLUMNS,
    PENDING,
    BackboneEntry,
    _normalise_meta,
    _write_rows,
    backbone_identity,
    backbone_key,
    nonfinite_reason,
    package_versions,
    resolve,
    segments_dir,
    storable_rows,
    utcnow,
)
from .segments import collect, new_segment_path, start_segment, write_rows_part

log = logging.getLogger("featmammo.store")

#: metadata columns whose change means the image changed: its rows are embedded again
FILE_COLUMNS = ("path", "file_identity")


def _unique_ids(path: Path, ids, where: str) -> np.ndarray:
    """``ids`` as strings; a StoreError naming the first repeated id otherwise."""
    ids = np.asarray([str(i) for i in ids], dtype=object)
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids).loc[pd.Series(ids).duplicated()].iloc[0]
        raise StoreError(f"{path}: duplicate image id {dup!r}{where}")
    return ids


def _remove_temps(real: Path) -> None:
    """Temporary files of writers of this store that were killed (the caller holds the lock)."""
    folder = real.parent
    for p in [real.with_name(real.name + ".tmp"), *folder.glob(f".{real.name}.*.tmp")]:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def write(
    path,
    ids,
    meta,
    arrays: Mapping[str, np.ndarray],
    provenance: Mapping[str, dict],
    store_provenance: dict | None = None,
    *,
    failures: Iterable[Mapping] | None = None,
    dtype: str = "float32",
    compression: str | None = "gzip",
) -> Store:
    """Write a complete, self-contained store in one atomic step (tests, notebooks, conversions).

    ``arrays[name]`` is (N, D); rows that are all-NaN are recorded as pending.
    ``provenance[name]`` is the backbone's provenance dict. ``failures`` (dicts with image_id,
    backbone, reason) mark rows as failed. ``meta`` is a DataFrame aligned with ``ids`` (or with
    an ``image_id`` column). Replaces whatever store was at ``path`` (a new store UUID). Takes the
    store's lock; a symlink is written through to its target.
    """
    path = Path(path)
    ids = _unique_ids(path, ids, "")
    meta = _normalise_meta(ids, meta)
    entries = []
    for name, x in arrays.items():
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[0] != len(ids):
            raise StoreError(f"{path}: array {name!r} has shape {x.shape}; need ({len(ids)}, D)")
        entries.append(BackboneEntry(name, x.shape[1], dict(provenance.get(name, {})), dtype))
    sp = {**package_versions(), "created": utcnow(), "updated": utcnow(), "id_hashing": None}
    sp["manifest_hash"] = None
    sp.update(store_provenance or {})
    index = {i: k for k, i in enumerate(ids)}
    fail_map: dict[str, dict[int, str]] = {}
    for rec in failures or ():
        if rec["image_id"] not in index:
            raise StoreError(f"{path}: failure for unknown image id {rec['image_id']!r}")
        fail_map.setdefault(rec["backbone"], {})[index[rec["image_id"]]] = str(rec["reason"])
    real = resolve(path)
    real.parent.mkdir(parents=True, exist_ok=True)
    needed = sum(np.asarray(a).nbytes for a in arrays.values()) + 400 * len(ids) + (1 << 20)
    with mutation(real):
        _remove_temps(real)
        old_segmented = _is_segmented(real)
        write_packed(
            real,
            path,
            ids,
            meta,
            entries,
            sp,
            compression,
            needed,
            lambda e: _rows_of(path, ids, e, arrays[e.name], fail_map),
        )
        if old_segmented or segments_dir(real).is_dir():
            collect(real, None)
    return Store(path)


def _is_segmented(real: Path) -> bool:
    import h5py

    try:
        with h5py.File(real, "r") as f:
            return f.attrs.get("segments") is not None
    except (OSError, ValueError):
        return False


def _rows_of(path, ids, e: BackboneEntry, x, fail_map):
    """Embeddings, status and reasons of one backbone of :func:`write` (checked, as stored)."""
    x = np.asarray(x)
    done = ~np.all(np.isnan(x), axis=1) if x.size else np.zeros(len(ids), bool)
    status = np.where(done, DONE, PENDING).astype(np.int8)
    reason = np.full(len(ids), "", dtype=object)
    # a row that is only partly NaN, holds inf, or overflows the stored dtype is no embedding:
    # record it as failed (with the reason) rather than as done
    bad = done & ~storable_rows(x, e.dtype)
    for i in np.flatnonzero(bad):
        status[i], reason[i] = FAILED, nonfinite_reason(x[i], e.dtype)
    if bad.any():
        x = np.array(x, dtype=np.float32)
        x[bad] = np.nan  # no embedding is stored for a failed row
        log.warning(
            "%s: backbone %r: %d row(s) recorded as failed (non-finite embedding), first %r",
            path,
            e.name,
            int(bad.sum()),
            str(ids[np.flatnonzero(bad)[0]]),
        )
    for i, r in fail_map.get(e.name, {}).items():
        status[i], reason[i] = FAILED, r
    return x, status, reason


def write_packed(
    real: Path,
    store,
    ids,
    meta: pd.DataFrame,
    entries,
    store_provenance: dict,
    compression,
    needed: int,
    rows_of,
    *,
    store_uuid: str | None = None,
    what: str = "writing the store",
) -> None:
    """One self-contained file (every dataset real, no segments) replacing ``real`` atomically.

    ``rows_of(entry)`` returns ``(embeddings, status, reasons)`` of all rows, or an iterator of
    ``(rows, embeddings, status, reasons)`` blocks.
    """
    from .index import retire_if_segmented
    from .schema import _write_new_file_into

    retire_if_segmented(real)

    def build(f) -> None:
        _write_new_file_into(f, ids, meta, entries, store_provenance, compression)
        f.attrs["store_uuid"] = store_uuid or new_uuid()
        for e in entries:
            g = f["backbones"][backbone_key(e.name)]
            got = rows_of(e)
            if isinstance(got, tuple):
                got = [(np.arange(len(ids)), *got)]
            for rows, x, status, reason in got:
                _write_rows(g, rows, x, status, reason)

    write_h5(real, build, store=store, needed=needed, what=what, fault="write")


def prepare(
    path,
    ids,
    meta,
    entries: Sequence[BackboneEntry],
    store_provenance: dict,
    *,
    compression: str | None = "gzip",
    compare_columns: Sequence[str] = tuple(META_COLUMNS[:6]),
) -> Store:
    """Create the store, or check an existing one against this run and extend it atomically.

    Policy for an existing store:
    - a backbone already present with a different identity (weights, spec, layer, preprocessing
      config or dtype) is refused with a StoreError (write it under another name instead);
    - images of the manifest that the store lacks are appended (pending for every backbone);
    - an image present in both whose metadata (``compare_columns``) differs is refused;
    - an image present in both whose ``path`` or ``file_identity`` differs (both non-empty) has
      changed since it was embedded: its rows become pending for every backbone (re-embedded by
      the run), its metadata is updated, and a WARNING names how many and a few ids; the ids are
      in the returned store's ``changed_images``. A store made before featmammo recorded file
      identities gets them recorded (rows kept);
    - images in the store but not in the manifest are kept untouched;
    - keyed-hash ids must use the same key (``id_hashing.key_check``) as the store.

    Shards an interrupted run of this store left are merged first (so a changed image cannot
    get its old embedding back from one); shards and segments that belong to no live store
    (e.g. after ``rm store.h5``) are discarded with a warning. Takes the store's lock. Writes
    nothing when nothing changes.
    """
    path = Path(path)
    ids = _unique_ids(path, ids, " in the manifest")
    meta = _normalise_meta(ids, meta)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise StoreError(f"{path}: backbone names repeat: {names}")
    real = resolve(path)
    if real.is_dir():
        raise StoreError(f"{path}: is a folder; a store is one .h5 file (e.g. {path}/store.h5)")
    real.parent.mkdir(parents=True, exist_ok=True)
    with mutation(real):
        _remove_temps(real)
        if not real.exists():
            from .shards import discard_foreign_shards

            discard_foreign_shards(real, None)
            collect(real, None)
            _create(real, path, ids, meta, entries, store_provenance, compression)
            log.info("created store %s (%d images, backbones %s)", path, len(ids), names)
            return Store(path)
        from .shards import list_shards

        if list_shards(real):
            from .shards import consolidate

            merged = consolidate(path)
            if merged:
                log.info("merged %d shards left by an interrupted run", merged)
        with editing(real) as (state, files):
            changed = _extend(
                path, state, files, ids, meta, entries, store_provenance, compare_columns
            )
        if changed is not None:
            collect(real, state)
    st = Store(path)
    st.changed_images = list(changed or [])
    return st


def _create(real, path, ids, meta, entries, store_provenance, compression) -> None:
    sp = {**package_versions(), "created": utcnow(), "updated": utcnow()}
    sp.update(store_provenance)
    sp["manifest_hashes"] = [h for h in [sp.get("manifest_hash")] if h]
    n = len(ids)
    state = State(
        path=real,
        uuid=new_uuid(),
        generation=0,
        provenance=sp,
        columns=list(meta.columns),
        row_seg=np.full(n, -1, np.int32),
        row_pos=np.zeros(n, np.int64),
        blocks={},
        segments=[],
        compression=compression or "none",
    )
    for e in entries:
        state.blocks[e.name] = _new_block(e, n)
    if n:
        _rows_segment(state, path, np.arange(n), ids, meta, "creating the store")
    commit(state, store=path, fault="create", what="creating the store")


def _new_block(e: BackboneEntry, n: int) -> Block:
    return Block(
        name=e.name,
        dim=int(e.dim),
        dtype=e.dtype,
        identity=e.identity,
        provenance=dict(e.provenance),
        status=np.zeros(n, np.int8),
        reason=np.full(n, "", dtype=object),
        seg=np.full(n, -1, np.int32),
        pos=np.zeros(n, np.int64),
    )


def _rows_segment(state: State, store, rows: np.ndarray, ids, meta: pd.DataFrame, what: str):
    """Write ids and metadata of store ``rows`` (ascending) as a new segment; point them at it."""
    columns = list(state.columns)
    values = {
        c: meta[c].to_numpy() if c in meta.columns else np.full(len(rows), "", object)
        for c in columns
    }
    target, rel = new_segment_path(state)
    needed = sum(sum(len(str(v)) + 16 for v in vals) for vals in values.values())
    needed += len(rows) * 40 + (1 << 20)
    write_h5(
        target,
        lambda f: (start_segment(f, state), write_rows_part(f, rows, ids, values, columns)),
        store=store,
        needed=needed,
        what=what,
        fault="segment",
    )
    s = state.add_segment(Segment(rel, int(len(rows)), columns, {}))
    state.row_seg[rows] = s
    state.row_pos[rows] = np.arange(len(rows))


def _extend(path, state: State, files, ids, meta, entries, store_provenance, compare_columns):
    """Check the run against the store and write what changes; None when nothing does."""
    old_h = (state.provenance.get("id_hashing") or {}).get("key_check")
    new_h = (store_provenance.get("id_hashing") or {}).get("key_check")
    if old_h != new_h:
        what = {
            (True, True): "a different hash key",
            (True, False): "plain ids (the store uses keyed-hash ids)",
            (False, True): "keyed-hash ids (the store uses plain ids)",
        }[(bool(old_h), bool(new_h))]
        raise StoreError(f"{path}: this run uses {what}; use the store's key or a new store")
    adopted = []
    for e in entries:
        b = state.blocks.get(e.name)
        if b is not None and b.identity != e.identity and _same_legacy_entry(b, e):
            # made before precision/decoder were identity keys, with the values this run uses
            b.identity = e.identity
            b.provenance.update({k: e.provenance.get(k) for k in IDENTITY_DEFAULTS})
            adopted.append(e.name)
        if b is not None and b.identity != e.identity:
            diff = _describe_difference(b.provenance, e.provenance)
            raise StoreError(
                f"{path}: backbone {e.name!r} exists with different {diff}; embeddings made "
                "differently must not share a name. Use another store, or store this run as a new "
                "entry (extract --backbone-suffix SUFFIX)."
            )
        if b is not None and b.dim != e.dim:
            raise StoreError(f"{path}: backbone {e.name!r} has dim {b.dim}, not {e.dim}")
    old_ids = read_ids(state, files)
    at, known = IdIndex(old_ids).lookup(ids)
    common = np.flatnonzero(known)
    rows_old = at[known]
    update = np.zeros(common.size, dtype=bool)  # metadata rewritten
    reset = np.zeros(common.size, dtype=bool)  # image changed: embedded again
    mask_reset = reset_any = reset  # its ROI mask changed: embedded again where masks are read
    if common.size:
        old_meta = read_meta(state, files)
        for c in compare_columns:
            a = meta[c].to_numpy()[common].astype(str)
            b = old_meta[c][rows_old].astype(str) if c in old_meta else np.full(len(a), "")
            bad = np.flatnonzero(a != b)
            if bad.size:
                k = common[bad[0]]
                raise StoreError(
                    f"{path}: image {ids[k]!r}: {c} is {str(b[bad[0]])!r} in the store but "
                    f"{str(a[bad[0]])!r} in the manifest ({bad.size} images differ); "
                    "use a new store"
                )
        reset, mask_reset, update, adopted_ids, merged = _changed_files(
            {c: meta[c].to_numpy()[common].astype(str) for c in FILE_COLUMNS},
            {c: old_meta[c][rows_old].astype(str) for c in FILE_COLUMNS},
        )
        fid = meta["file_identity"].to_numpy(dtype=object).copy()
        fid[common] = merged  # a run that reads no mask keeps the recorded mask part
        meta = meta.assign(file_identity=fid)
        if not any(_reads_masks(b) for b in state.blocks.values()):
            mask_reset[:] = False  # no entry read the masks: nothing to embed again
        reset_any = reset | mask_reset
        if adopted_ids.any():
            log.warning(
                "%s: %d image(s) had no recorded file_identity (a store made by an older "
                "featmammo); recorded now, their embeddings are kept",
                path,
                int(adopted_ids.sum()),
            )
    new_rows = np.flatnonzero(~known)
    new_entries = [e for e in entries if e.name not in state.blocks]
    new_columns = [c for c in meta.columns if c not in state.columns]
    mh = store_provenance.get("manifest_hash")
    hashes = list(state.provenance.get("manifest_hashes", []))
    changed_ids = [str(ids[k]) for k in common[reset_any]]
    if not (
        adopted
        or new_rows.size
        or new_entries
        or update.any()
        or (mh and mh not in hashes)
        or state.inline
    ):
        return None
    state.upgrade()
    n_old = state.n
    k_new = int(new_rows.size)
    if k_new:
        state.row_seg = np.concatenate([state.row_seg, np.full(k_new, -1, np.int32)])
        state.row_pos = np.concatenate([state.row_pos, np.zeros(k_new, np.int64)])
        for b in state.blocks.values():
            b.grow(k_new)
    state.columns = list(state.columns) + new_columns
    for e in new_entries:
        state.blocks[e.name] = _new_block(e, state.n)
    if reset_any.any():
        for b in state.blocks.values():
            r = rows_old[reset | mask_reset] if _reads_masks(b) else rows_old[reset]
            b.status[r], b.reason[r], b.seg[r] = PENDING, "", -1
        shown = ", ".join(changed_ids[:5]) + (" ..." if len(changed_ids) > 5 else "")
        log.warning(
            "%s: %d image(s) changed since they were embedded (their path or file identity "
            "differs from the store's): their rows are pending again for every backbone and will "
            "be embedded again (%s)",
            path,
            len(changed_ids),
            shown,
        )
    seg_rows = np.concatenate([rows_old[update], n_old + np.arange(k_new)]).astype(np.int64)
    src = np.concatenate([common[update], new_rows]).astype(np.int64)
    if seg_rows.size:
        order = np.argsort(seg_rows)
        seg_rows, src = seg_rows[order], src[order]
        part = meta.iloc[src].reset_index(drop=True)
        if any(c not in part.columns for c in state.columns):  # columns this manifest lacks
            old_meta = read_meta(state, files)
            for c in state.columns:
                if c not in part.columns:
                    vals = np.full(len(src), "", dtype=object)
                    have = seg_rows < n_old
                    if c in old_meta:
                        vals[have] = old_meta[c][seg_rows[have]]
                    part[c] = vals
        _rows_segment(state, path, seg_rows, ids[src], part, "extending the store")
    sp = state.provenance
    if mh and mh not in hashes:
        hashes.append(mh)
    sp.update({k: v for k, v in store_provenance.items() if k not in ("created", "runs")})
    sp.update(package_versions())
    sp["manifest_hashes"] = hashes
    sp["updated"] = utcnow()
    commit(state, store=path, fault="modify", what="extending the store")
    if k_new or new_entries:
        log.info(
            "store %s: appended %d images, added backbones %s",
            path,
            k_new,
            [e.name for e in new_entries],
        )
    return changed_ids


def _changed_files(new: dict, old: dict):
    """Which images changed since they were embedded: ``(reset, mask_reset, update, adopted,
    merged)``, masks over the rows but ``merged``, the ``file_identity`` each row keeps.

    The identity of the image files decides when both sides have one (a dataset copied elsewhere
    keeps its rows, with the new paths); the path decides when either side has none (a store made
    before identities were recorded, or a caller that computes none). The ROI mask's part
    (``MASK_PART``, recorded by runs that read masks) decides apart: ``mask_reset``, for the
    entries that read masks; a run that reads none keeps the recorded part. ``update``: metadata
    to rewrite; ``adopted``: identities recorded for rows that had none (kept).
    """
    img_new, m_new = _identity_parts(new["file_identity"])
    img_old, m_old = _identity_parts(old["file_identity"])
    p_new, p_old = new["path"], old["path"]
    both = (img_new != "") & (img_old != "")
    reset = np.where(both, img_new != img_old, (p_new != "") & (p_old != "") & (p_new != p_old))
    mask_reset = ~reset & (m_new != "") & (m_old != "") & (m_new != m_old)
    adopted = (img_new != "") & (img_old == "") & ~reset
    img = np.where(img_new != "", img_new, img_old)
    mask = np.where(m_new != "", m_new, np.where(reset, "", m_old))
    merged = np.array(
        [i + (MASK_PART + m if m and i else "") for i, m in zip(img, mask, strict=True)],
        dtype=object,
    )
    moved = (p_new != "") & (p_new != p_old)
    update = reset | mask_reset | adopted | moved | (merged != old["file_identity"])
    return reset, mask_reset, update, adopted, merged


def _identity_parts(values) -> tuple[np.ndarray, np.ndarray]:
    """``(image part, mask part)`` of each ``file_identity`` ("" where absent)."""
    split = [str(v).partition(MASK_PART) for v in values]
    return (
        np.array([a for a, _, _ in split], dtype=object),
        np.array([c for _, _, c in split], dtype=object),
    )


def _reads_masks(b) -> bool:
    """The entry's embeddings were made from pixels its ROI mask shaped (``--roi crop|patch``)."""
    roi = ((b.provenance or {}).get("preprocess") or {}).get("roi")
    return roi in ("crop", "patch")


def _same_legacy_entry(b, e: BackboneEntry) -> bool:
    """An entry identified before the keys of IDENTITY_DEFAULTS that this run matches."""
    if b.identity != backbone_identity(e.provenance, legacy=True):
        return False
    return all(
        (b.provenance.get(k) or d) == (e.provenance.get(k) or d)
        for k, d in IDENTITY_DEFAULTS.items()
    )


def _describe_difference(old: Mapping, new: Mapping) -> str:
    keys = [k for k in IDENTITY_KEYS if old.get(k) != new.get(k)]
    parts = []
    for k in keys:
        if k == "preprocess":
            o, n = old.get(k) or {}, new.get(k) or {}
            keys2 = [s for s in sorted(set(o) | set(n)) if o.get(s) != n.get(s)]
            sub = [f"{s}: {o.get(s)!r} -> {n.get(s)!r}" for s in keys2]
            parts.append("preprocessing config (" + ", ".join(sub) + ")")
        elif k == "spec":
            parts.append("backbone spec")
        else:
            parts.append(f"{k} ({old.get(k)!r} -> {new.get(k)!r})")
    return "; ".join(parts) or "provenance"
