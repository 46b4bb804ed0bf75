"""The store's schema: format constants, names, identities and the HDF5 building blocks.

The layout itself is documented in ``featmammo.store`` (the package docstring). Everything here is
shared by the reader, the writers and the shard merger; nothing here writes a file in place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import h5py
import numpy as np
import pandas as pd

from ..errors import StoreError
from ..hashing import fingerprint

FORMAT = "featmammo.store"
#: version 2: the main file is an index over immutable segment files (virtual datasets), with a
#: store UUID; version 1 (one self-contained file) is still read, and upgraded when extended
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SEGMENT_FORMAT = "featmammo.store-segment"
#: required per-image metadata columns, always text; ``file_identity`` is an opaque string the
#: extraction computes per image file (a row whose path or file identity changed is re-embedded)
META_COLUMNS = ["label", "patient_id", "laterality", "view", "split", "source", "path"]
META_COLUMNS.append("file_identity")
#: separates a ``file_identity``'s image part from its ROI mask part (``sha256:<hex> mask:<hex>``,
#: the mask part recorded by runs that read masks): compared apart by ``prepare``
MASK_PART = " mask:"
#: the oldest HDF5 file format objects are written in (readable by HDF5 >= 1.10, which VDS needs)
LIBVER = ("earliest", "v110")
PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}
CHUNK_ROWS = 64
COMPRESSIONS = ("gzip", "lzf", "none")
DTYPES = ("float32", "float16")
# provenance keys that decide whether two embedding matrices are comparable
IDENTITY_KEYS = (
    *("spec", "layer", "weights", "weights_sha256", "preprocess", "dtype"),
    *("precision", "decoder_plugin"),
)
#: identity keys added after the first stores: in the fingerprint only when not at the value every
#: earlier store was made with (float32 on the CPU; the pylibjpeg plugins of the standard install),
#: so existing entries keep their identity
IDENTITY_DEFAULTS = {"precision": "float32", "decoder_plugin": "pylibjpeg"}

_STR = h5py.string_dtype("utf-8")


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def backbone_key(name: str) -> str:
    """The HDF5 group name of a backbone (percent-encoded so '/' and ':' are safe)."""
    return quote(str(name), safe="")


def backbone_identity(provenance: Mapping, *, legacy: bool = False) -> str:
    """Fingerprint of what makes two embedding matrices comparable (weights, spec, preprocess,
    dtype, autocast precision, DICOM decoder plugin).

    ``legacy``: the fingerprint entries had before the keys of ``IDENTITY_DEFAULTS`` existed.
    """
    ident = {k: provenance.get(k) for k in IDENTITY_KEYS if k not in IDENTITY_DEFAULTS}
    if not legacy:
        for k, default in IDENTITY_DEFAULTS.items():
            if provenance.get(k) not in (None, default):
                ident[k] = provenance[k]
    return fingerprint(ident)


def resolve(path) -> Path:
    """The file a store path names: symlinks followed, so writers write through to the target
    (the link stays a link) and every alias of one store shares its lock, shards and segments."""
    return Path(os.path.realpath(os.fspath(path)))


def parts_dir(path) -> Path:
    """Folder of the durable per-batch shards of a store being extracted."""
    p = resolve(path)
    return p.with_name(p.name + ".parts")


def segments_dir(path) -> Path:
    """Folder of the immutable segment files the main file (the index) reads through."""
    p = resolve(path)
    return p.with_name(p.name + ".segments")


def package_versions() -> dict:
    """Versions of the packages that shape embeddings, read from metadata (no torch import)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("featmammo", "torch", "torchvision", "pydicom", "h5py", "numpy", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _json_attr(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def storable_rows(x: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """(N,) bool: rows of ``x`` that are finite and representable in the store ``dtype``."""
    x = np.asarray(x)
    if x.size == 0:
        return np.ones(x.shape[0], dtype=bool)
    finite = np.isfinite(x).all(axis=1)
    limit = float(np.finfo(np.dtype(dtype)).max)
    with np.errstate(invalid="ignore"):
        fits = (np.abs(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)) <= limit).all(axis=1)
    return finite & fits


def nonfinite_reason(row: np.ndarray, dtype: str = "float32") -> str:
    """Why ``row`` cannot be stored as an embedding (NaN, inf, or out of ``dtype``'s range)."""
    row = np.asarray(row, dtype=np.float64)
    n_nan, n_inf = int(np.isnan(row).sum()), int(np.isinf(row).sum())
    if n_nan or n_inf:
        return f"non-finite embedding ({n_nan} NaN, {n_inf} inf of {row.size} values)"
    return (
        f"embedding overflows {dtype} (max |value| {np.abs(row).max():.4g} > "
        f"{float(np.finfo(np.dtype(dtype)).max):.4g}); extract with --dtype float32"
    )


def _as_str_array(values) -> np.ndarray:
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            out.append("")
        else:
            out.append(str(v))
    return np.array(out, dtype=object)


def _create_str(group, name, values, chunk=CHUNK_ROWS):
    data = _as_str_array(values)
    return group.create_dataset(
        name, data=data, dtype=_STR, maxshape=(None,), chunks=(max(1, chunk),)
    )


def _compression_kwargs(compression: str | None) -> dict:
    if compression in (None, "none"):
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    raise StoreError(f"unknown compression {compression!r}; choose one of {COMPRESSIONS}")


def _normalise_meta(ids: np.ndarray, meta) -> pd.DataFrame:
    """Metadata as a string DataFrame aligned with ``ids`` (META_COLUMNS first, then extras)."""
    n = len(ids)
    if meta is None:
        meta = pd.DataFrame(index=range(n))
    meta = pd.DataFrame(meta)
    if "image_id" in meta.columns:
        if len(meta) != n or list(meta["image_id"].astype(str)) != list(ids):
            raise StoreError("meta['image_id'] does not match ids (same ids in the same order)")
        meta = meta.drop(columns=["image_id"])
    elif len(meta) != n:
        raise StoreError(f"meta has {len(meta)} rows for {n} ids")
    meta = meta.reset_index(drop=True)
    cols = META_COLUMNS + [c for c in meta.columns if c not in META_COLUMNS]
    out = {c: _as_str_array(meta[c]) if c in meta.columns else np.full(n, "", object) for c in cols}
    return pd.DataFrame(out)


@dataclass
class BackboneEntry:
    """What a writer needs to create or verify one backbone block."""

    name: str
    dim: int
    provenance: dict
    dtype: str = "float32"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise StoreError(f"backbone {self.name!r}: dtype {self.dtype!r} not in {DTYPES}")
        self.provenance = {**self.provenance, "dtype": self.dtype}

    @property
    def identity(self) -> str:
        return backbone_identity(self.provenance)


def _write_new_file_into(
    f: h5py.File,
    ids: np.ndarray,
    meta: pd.DataFrame,
    entries: Sequence[BackboneEntry],
    store_provenance: dict,
    compression: str | None,
) -> None:
    """A self-contained store (format version 2 without segments) in the open, empty file ``f``."""
    n = len(ids)
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["provenance"] = _json_attr(store_provenance)
    f.attrs["backbones"] = json.dumps([e.name for e in entries])
    _create_str(f, "ids", ids)
    g = f.create_group("meta")
    g.attrs["columns"] = json.dumps(list(meta.columns))
    for c in meta.columns:
        _create_str(g, c, meta[c].to_numpy())
    bg = f.create_group("backbones")
    for e in entries:
        _create_backbone(bg, e, n, compression)


def _create_backbone(bg, e: BackboneEntry, n: int, compression) -> h5py.Group:
    g = bg.create_group(backbone_key(e.name))
    g.attrs["name"] = e.name
    g.attrs["dim"] = int(e.dim)
    g.attrs["dtype"] = e.dtype
    g.attrs["identity"] = e.identity
    g.attrs["provenance"] = _json_attr(e.provenance)
    g.create_dataset(
        "embeddings",
        shape=(n, int(e.dim)),
        maxshape=(None, int(e.dim)),
        dtype=e.dtype,
        chunks=(CHUNK_ROWS, int(e.dim)),
        fillvalue=np.nan,
        **_compression_kwargs(compression),
    )
    g.create_dataset(
        "status", shape=(n,), maxshape=(None,), dtype=np.int8, chunks=(1024,), fillvalue=PENDING
    )
    g.create_dataset(
        "reason", shape=(n,), maxshape=(None,), dtype=_STR, chunks=(max(1, min(n, 4096)),),
        compression="gzip",
    )  # fmt: skip
    return g


def _runs(rows: np.ndarray) -> Iterable[tuple[int, int, int, int]]:
    """Split sorted row indices into consecutive runs: (row0, row1, pos0, pos1) slices."""
    if rows.size == 0:
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [rows.size]])
    for a, b in zip(starts, stops, strict=True):
        yield int(rows[a]), int(rows[b - 1]) + 1, int(a), int(b)


def _write_rows(g: h5py.Group, rows, emb, status, reason) -> None:
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    emb = np.asarray(emb)[order]
    status = np.asarray(status, dtype=np.int8)[order]
    reason = _as_str_array(np.asarray(reason, dtype=object)[order])
    ds_e, ds_s, ds_r = g["embeddings"], g["status"], g["reason"]
    for r0, r1, p0, p1 in _runs(rows):
        ds_e[r0:r1] = emb[p0:p1].astype(ds_e.dtype, copy=False)
        ds_s[r0:r1] = status[p0:p1]
    said = np.flatnonzero(reason != "")
    if said.size:  # only non-empty reasons: an unwritten string reads as "" and costs nothing
        ds_r[rows[said]] = reason[said]
