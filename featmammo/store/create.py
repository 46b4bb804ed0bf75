"""Writing whole stores: :func:`write` (one atomic step) and :func:`prepare` (create, or check and
extend an existing store before an extraction). Both replace the main file atomically."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..errors import StoreError
from .mainfile import commit, copy_and_modify, tmp_path
from .reader import Store
from .schema import (
    DONE,
    FAILED,
    IDENTITY_KEYS,
    PENDING,
    BackboneEntry,
    _as_str_array,
    _create_backbone,
    _create_str,
    _json_attr,
    _normalise_meta,
    _write_new_file,
    _write_rows,
    backbone_key,
    nonfinite_reason,
    package_versions,
    storable_rows,
    utcnow,
)

log = logging.getLogger("featmammo.store")


def _unique_ids(path: Path, ids, where: str) -> np.ndarray:
    """``ids`` as strings; a StoreError naming the first repeated id otherwise."""
    ids = np.asarray([str(i) for i in ids], dtype=object)
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids).loc[pd.Series(ids).duplicated()].iloc[0]
        raise StoreError(f"{path}: duplicate image id {dup!r}{where}")
    return ids


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
    """Write a complete store in one atomic step (tests, notebooks, conversions; no torch).

    ``arrays[name]`` is (N, D); rows that are all-NaN are recorded as pending.
    ``provenance[name]`` is the backbone's provenance dict. ``failures`` (dicts with image_id,
    backbone, reason) mark rows as failed. ``meta`` is a DataFrame aligned with ``ids`` (or with
    an ``image_id`` column).
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    _write_new_file(tmp, ids, meta, entries, sp, compression)
    with h5py.File(tmp, "r+") as f:
        for e in entries:
            x = np.asarray(arrays[e.name])
            done = ~np.all(np.isnan(x), axis=1) if x.size else np.zeros(len(ids), bool)
            status = np.where(done, DONE, PENDING).astype(np.int8)
            reason = np.full(len(ids), "", dtype=object)
            # a row that is only partly NaN, holds inf, or overflows the stored dtype is no
            # embedding: record it as failed (with the reason) rather than as done
            bad = done & ~storable_rows(x, e.dtype)
            for i in np.flatnonzero(bad):
                status[i], reason[i] = FAILED, nonfinite_reason(x[i], e.dtype)
            if bad.any():
                x = np.array(x, dtype=np.float32)
                x[bad] = np.nan  # no embedding is stored for a failed row
                log.warning(
                    "%s: backbone %r: %d row(s) recorded as failed (non-finite embedding), "
                    "first %r",
                    path, e.name, int(bad.sum()), str(ids[np.flatnonzero(bad)[0]]),
                )  # fmt: skip
            for i, r in fail_map.get(e.name, {}).items():
                status[i], reason[i] = FAILED, r
            g = f["backbones"][backbone_key(e.name)]
            _write_rows(g, np.arange(len(ids)), x, status, reason)
    commit(tmp, path)
    return Store(path)


def prepare(
    path,
    ids,
    meta,
    entries: Sequence[BackboneEntry],
    store_provenance: dict,
    *,
    compression: str | None = "gzip",
    compare_columns: Sequence[str] = (
        "label",
        "patient_id",
        "laterality",
        "view",
        "split",
        "source",
    ),
) -> Store:
    """Create the store, or check an existing one against this run and extend it atomically.

    Policy for an existing store:
    - a backbone already present with a different identity (weights, spec, layer, preprocessing
      config or dtype) is refused with a StoreError (write it under another name instead);
    - images of the manifest that the store lacks are appended (pending for every backbone);
    - an image present in both whose metadata (``compare_columns``) differs is refused;
    - images in the store but not in the manifest are kept untouched;
    - keyed-hash ids must use the same key (``id_hashing.key_check``) as the store.
    """
    path = Path(path)
    ids = _unique_ids(path, ids, " in the manifest")
    meta = _normalise_meta(ids, meta)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise StoreError(f"{path}: backbone names repeat: {names}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    if tmp.exists():  # left by a killed writer; never the live file
        tmp.unlink()
    if not path.exists():
        sp = {**package_versions(), "created": utcnow(), "updated": utcnow()}
        sp.update(store_provenance)
        sp["manifest_hashes"] = [h for h in [sp.get("manifest_hash")] if h]
        _write_new_file(tmp, ids, meta, entries, sp, compression)
        commit(tmp, path)
        log.info("created store %s (%d images, backbones %s)", path, len(ids), names)
        return Store(path)

    old = Store(path)
    # keyed-hash ids must agree, or the ids would silently never match
    old_h = (old.provenance.get("id_hashing") or {}).get("key_check")
    new_h = (store_provenance.get("id_hashing") or {}).get("key_check")
    if old_h != new_h:
        what = {
            (True, True): "a different hash key",
            (True, False): "plain ids (the store uses keyed-hash ids)",
            (False, True): "keyed-hash ids (the store uses plain ids)",
        }[(bool(old_h), bool(new_h))]
        raise StoreError(f"{path}: this run uses {what}; use the store's key or a new store")
    for e in entries:
        if e.name in old.backbones and old.identity(e.name) != e.identity:
            diff = _describe_difference(old.backbone_provenance(e.name), e.provenance)
            raise StoreError(
                f"{path}: backbone {e.name!r} exists with different {diff}; embeddings made "
                "differently must not share a name. Use another store, or store this run as a new "
                "entry (extract --backbone-suffix SUFFIX)."
            )
        if e.name in old.backbones and old.dim(e.name) != e.dim:
            raise StoreError(f"{path}: backbone {e.name!r} has dim {old.dim(e.name)}, not {e.dim}")
    old_index = {i: k for k, i in enumerate(old.ids)}
    common = [k for k, i in enumerate(ids) if i in old_index]
    if common:
        rows_new = np.array(common)
        rows_old = np.array([old_index[ids[k]] for k in common])
        for c in compare_columns:
            a = meta[c].to_numpy()[rows_new]
            b = old.meta[c].to_numpy()[rows_old] if c in old.meta.columns else np.full(len(a), "")
            bad = np.flatnonzero(a.astype(str) != b.astype(str))
            if bad.size:
                k = rows_new[bad[0]]
                raise StoreError(
                    f"{path}: image {ids[k]!r}: {c} is {b[bad[0]]!r} in the store but "
                    f"{a[bad[0]]!r} in the manifest ({bad.size} images differ); use a new store"
                )
    new_rows = np.array([k for k, i in enumerate(ids) if i not in old_index], dtype=np.int64)
    new_entries = [e for e in entries if e.name not in old.backbones]
    mh = store_provenance.get("manifest_hash")
    hashes = list(old.provenance.get("manifest_hashes", []))
    changed = bool(new_rows.size or new_entries or (mh and mh not in hashes))
    if not changed:
        return old
    copy_and_modify(
        path,
        lambda f: _extend(f, ids, meta, new_rows, new_entries, store_provenance, compression),
    )
    log.info(
        "store %s: appended %d images, added backbones %s",
        path, int(new_rows.size), [e.name for e in new_entries],
    )  # fmt: skip
    return Store(path)


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


def _extend(f, ids, meta, new_rows, new_entries, store_provenance, compression) -> None:
    n_old = f["ids"].shape[0]
    k = int(new_rows.size)
    if k:
        n = n_old + k
        f["ids"].resize((n,))
        f["ids"][n_old:] = _as_str_array(ids[new_rows])
        cols = json.loads(f["meta"].attrs["columns"])
        extra = [c for c in meta.columns if c not in cols]
        for c in cols:
            vals = meta[c].to_numpy()[new_rows] if c in meta.columns else np.full(k, "", object)
            f["meta"][c].resize((n,))
            f["meta"][c][n_old:] = _as_str_array(vals)
        for c in extra:  # a new column: empty for the old rows
            _create_str(
                f["meta"],
                c,
                np.concatenate([np.full(n_old, "", object), meta[c].to_numpy()[new_rows]]),
            )
        f["meta"].attrs["columns"] = json.dumps(cols + extra)
        for key in f["backbones"]:
            g = f["backbones"][key]
            g["embeddings"].resize((n, g["embeddings"].shape[1]))
            g["status"].resize((n,))
            g["reason"].resize((n,))
            g["reason"][n_old:] = np.full(k, "", dtype=object)
    n = f["ids"].shape[0]
    names = json.loads(f.attrs["backbones"])
    for e in new_entries:
        _create_backbone(f["backbones"], e, n, compression)
        names.append(e.name)
    f.attrs["backbones"] = json.dumps(names)
    sp = json.loads(f.attrs["provenance"])
    hashes = list(sp.get("manifest_hashes", []))
    mh = store_provenance.get("manifest_hash")
    if mh and mh not in hashes:
        hashes.append(mh)
    sp.update({k2: v for k2, v in store_provenance.items() if k2 not in ("created", "runs")})
    sp.update(package_versions())
    sp["manifest_hashes"] = hashes
    sp["updated"] = utcnow()
    f.attrs["provenance"] = _json_attr(sp)
