"""The HDF5 embedding store: schema, crash-safe writer, reader. No torch.

A store holds, for one set of images, the image ids (the join key, never row order), the
manifest's per-image metadata, one embedding matrix per backbone, a done/failed record per image and
backbone with the failure reason, and provenance. Reading needs only h5py, numpy and pandas
(``featmammo.store.open``); plain h5py works too, with the layout below.

HDF5 layout (format ``featmammo.store``, ``format_version`` 1)
-------------------------------------------------------------
``/`` attributes
    ``format`` = "featmammo.store", ``format_version`` = 1,
    ``provenance``: JSON text (featmammo / torch / torchvision / pydicom / h5py / numpy versions,
    ``manifest_hash`` (of the latest manifest), ``manifest_hashes`` (all manifests merged in),
    ``created`` / ``updated`` (UTC ISO times), ``id_hashing`` (null, or
    ``{"method": "hmac-sha256", "length": 16, "key_check": ...}`` when ids are keyed hashes),
    ``runs`` (one entry per extraction run: time, device, precision, counts)),
    ``backbones``: JSON list of backbone names in insertion order.
``/ids``  (N,) variable-length UTF-8 strings: the image ids, unique.
``/meta/<column>``  (N,) variable-length UTF-8 strings, one dataset per metadata column, in the
    order given by the JSON list in ``/meta`` attribute ``columns``: ``label``, ``patient_id``,
    ``laterality``, ``view``, ``split``, ``source``, ``path``, then any extra manifest columns.
    Missing values are empty strings.
``/backbones/<key>``  one group per backbone. ``<key>`` is the backbone name percent-encoded
    (``urllib.parse.quote(name, safe="")``, so ``hybrid:runs/a/checkpoint.pt`` becomes
    ``hybrid%3Aruns%2Fa%2Fcheckpoint.pt``); the real name is the group attribute ``name``.
    Attributes: ``name``, ``dim``, ``dtype`` ("float32" | "float16"), ``identity`` (16-hex
    fingerprint of what makes embeddings comparable: backbone spec, layer, weights identity and
    SHA-256, preprocessing config, storage dtype) and ``provenance`` (JSON text: ``spec``,
    ``layer``, ``weights``, ``weights_sha256``, ``preprocess`` (config dict),
    ``preprocess_fingerprint``, ``dtype``, ``devices``, ``precision``).
    Datasets:
    ``embeddings``  (N, dim) float32 or float16, chunked (rows of 64 x dim), gzip/lzf or none;
                    rows that are not done hold NaN (pending/failed rows are never meaningful).
    ``status``      (N,) int8: 0 = pending, 1 = done, 2 = failed.
    ``reason``      (N,) variable-length UTF-8: why a row failed ("" otherwise).
Row i of every dataset belongs to ``/ids[i]``.

Plain h5py::

    import h5py, json
    with h5py.File("store.h5") as f:
        ids = f["ids"].asstr()[()]
        g = f["backbones/resnet50"]
        X, ok = g["embeddings"][()], g["status"][()] == 1
        prov = json.loads(g.attrs["provenance"])

Crash safety
------------
The main file is only ever replaced whole and atomically: a new version is written to
``STORE.h5.tmp`` in the same folder, flushed, fsynced and ``os.replace``-d over ``STORE.h5``. An
extraction writes each finished batch as a small shard (``STORE.h5.parts/*.npz``, written to a
temporary name, fsynced, then renamed) and periodically merges the shards into the main file
(``consolidate``); a merged shard is deleted only after the new main file is in place, and merging
is idempotent. A ``kill -9`` at any moment therefore leaves a readable main file plus durable
shards, which the next run merges before it starts; shards whose backbone identity does not match
the store are ignored (logged), never merged. A writer holds ``STORE.h5.lock`` (``flock``; the
file stays, the lock dies with the process) so two extractions never write one store.

Identifiers
-----------
With keyed-hash ids (``extract --hash-ids KEYFILE``) ``image_id`` and ``patient_id`` are
HMAC-SHA256 pseudonyms, the ``path`` column is emptied and extra manifest columns are dropped (paths
and free-form columns carry patient identifiers in CBIS-DDSM), and failure records carry no paths.
The key itself is never stored; ``key_check`` (an HMAC of a constant) lets a rerun detect a
different key. No DICOM header field enters a store: metadata comes from the manifest only.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import h5py
import numpy as np
import pandas as pd

from .errors import StoreError
from .hashing import fingerprint

log = logging.getLogger(__name__)

FORMAT = "featmammo.store"
FORMAT_VERSION = 1
META_COLUMNS = ["label", "patient_id", "laterality", "view", "split", "source", "path"]
PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}
CHUNK_ROWS = 64
COMPRESSIONS = ("gzip", "lzf", "none")
DTYPES = ("float32", "float16")
# provenance keys that decide whether two embedding matrices are comparable
IDENTITY_KEYS = ("spec", "layer", "weights", "weights_sha256", "preprocess", "dtype")

_STR = h5py.string_dtype("utf-8")


# ----------------------------------------------------------------------------------------- helpers
_FAULT_COUNTS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Test hook: ``FEATMAMMO_TEST_KILL=NAME:K`` SIGKILLs this process at the K-th pass of NAME.

    Used by the fault-injection tests to kill a writer at precise moments (``batch``, ``shard-tmp``,
    ``consolidate-tmp``, ``consolidate-replaced``); a no-op unless the variable is set.
    ``FEATMAMMO_TEST_KILL_AFTER=K`` is short for ``batch:K``.
    """
    spec = os.environ.get("FEATMAMMO_TEST_KILL")
    if not spec and os.environ.get("FEATMAMMO_TEST_KILL_AFTER"):
        spec = "batch:" + os.environ["FEATMAMMO_TEST_KILL_AFTER"]
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if _FAULT_COUNTS[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def backbone_key(name: str) -> str:
    """The HDF5 group name of a backbone (percent-encoded so '/' and ':' are safe)."""
    return quote(str(name), safe="")


def backbone_identity(provenance: Mapping) -> str:
    """Fingerprint of what makes two embedding matrices comparable (weights, spec, preprocess)."""
    return fingerprint({k: provenance.get(k) for k in IDENTITY_KEYS})


def parts_dir(path) -> Path:
    """Folder of the durable per-batch shards of a store being extracted."""
    p = Path(path)
    return p.with_name(p.name + ".parts")


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


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every filesystem
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with builtins.open(path, "rb") as f:
        os.fsync(f.fileno())


def _commit(tmp: Path, path: Path) -> None:
    """Make ``tmp`` durable and atomically put it in place of ``path``."""
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def lock(path):
    """Exclusive advisory lock on ``STORE.h5.lock`` (released by the OS if the process dies)."""
    import fcntl

    lock_path = Path(str(path) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"{path}: another featmammo process is writing this store (lock {lock_path})"
            ) from None
        yield
    finally:
        os.close(fd)


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


# ----------------------------------------------------------------------------------------- reader
def _explain_h5_error(exc: Exception) -> str:
    """h5py's error text, prefixed with what it means for a user."""
    text = str(exc)
    if "file signature not found" in text:
        return f"not an HDF5 file: {text}"
    if "truncated file" in text:
        return f"truncated HDF5 file (an interrupted copy or download?): {text}"
    if "unable to lock file" in text.lower():
        return f"the file is locked by another process: {text}"
    return text


class Store:
    """A read-only view of a store file. Metadata is loaded at open; arrays are read on demand.

    Every method re-opens the file, so a reader never holds a handle that an extraction's atomic
    replace would leave stale.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such store")
        try:
            with h5py.File(self.path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise StoreError(f"{self.path}: not a featmammo store (no format attribute)")
                version = int(f.attrs.get("format_version", -1))
                if version != FORMAT_VERSION:
                    raise StoreError(
                        f"{self.path}: store format version {version} is not supported "
                        f"(this featmammo reads {FORMAT_VERSION})"
                    )
                self.ids = np.asarray(f["ids"].asstr()[()], dtype=object).astype(str)
                cols = json.loads(f["meta"].attrs["columns"])
                self.meta = pd.DataFrame(
                    {c: f["meta"][c].asstr()[()].astype(str) for c in cols},
                    index=pd.Index(self.ids, name="image_id"),
                )
                self.provenance = json.loads(f.attrs["provenance"])
                self.backbones = list(json.loads(f.attrs["backbones"]))
                self._bb = {}
                for name in self.backbones:
                    g = f["backbones"][backbone_key(name)]
                    self._bb[name] = {
                        "dim": int(g.attrs["dim"]),
                        "dtype": str(g.attrs["dtype"]),
                        "identity": str(g.attrs["identity"]),
                        "provenance": json.loads(g.attrs["provenance"]),
                        "status": g["status"][()].astype(np.int8),
                    }
        except StoreError:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise StoreError(f"{self.path}: unreadable store ({_explain_h5_error(exc)})") from exc

    def __repr__(self) -> str:
        dims = ", ".join(f"{n}[{self.dim(n)}]" for n in self.backbones)
        return f"<featmammo Store {self.path}: {len(self.ids)} images; {dims}>"

    def __len__(self) -> int:
        return len(self.ids)

    def _check(self, name: str) -> None:
        if name not in self._bb:
            raise StoreError(
                f"{self.path}: no backbone {name!r} in this store (it has {self.backbones})"
            )

    def dim(self, name: str) -> int:
        self._check(name)
        return self._bb[name]["dim"]

    def identity(self, name: str) -> str:
        self._check(name)
        return self._bb[name]["identity"]

    def dtype(self, name: str) -> str:
        """The stored dtype of ``name``'s embeddings (``float32`` or ``float16``)."""
        self._check(name)
        return self._bb[name]["dtype"]

    def status(self, name: str) -> np.ndarray:
        """(N,) int8: 0 pending, 1 done, 2 failed."""
        self._check(name)
        return self._bb[name]["status"].copy()

    def done(self, name: str) -> np.ndarray:
        """(N,) bool mask of the images whose ``name`` embedding is done."""
        return self.status(name) == DONE

    def array(self, name: str, dtype=np.float32) -> np.ndarray:
        """(N, dim) embeddings in row order of ``ids``; NaN rows where not done."""
        self._check(name)
        with h5py.File(self.path, "r") as f:
            x = f["backbones"][backbone_key(name)]["embeddings"][()]
        x = x.astype(dtype, copy=False)
        x[~self.done(name)] = np.nan
        return x

    def frame(self, *names: str) -> pd.DataFrame:
        """Done rows of the given backbones (all when none given), columns ``"<name>:<i>"``.

        The index is ``image_id``; only images done for every named backbone are kept.
        """
        names = names or tuple(self.backbones)
        if not names:
            return pd.DataFrame(index=pd.Index([], name="image_id"))
        mask = np.logical_and.reduce([self.done(n) for n in names])
        blocks = []
        for n in names:
            x = self.array(n)[mask]
            blocks.append(
                pd.DataFrame(
                    x, index=pd.Index(self.ids[mask], name="image_id"),
                    columns=[f"{n}:{i}" for i in range(x.shape[1])],
                )
            )  # fmt: skip
        return pd.concat(blocks, axis=1)

    def backbone_provenance(self, name: str) -> dict:
        """Spec, layer, weights identity and SHA-256, preprocessing config and fingerprint, ..."""
        self._check(name)
        return dict(self._bb[name]["provenance"], identity=self._bb[name]["identity"])

    @property
    def failures(self) -> pd.DataFrame:
        """One row per failed (image, backbone): image_id, path, backbone, reason."""
        rows = []
        with h5py.File(self.path, "r") as f:
            for name in self.backbones:
                status = self._bb[name]["status"]
                idx = np.flatnonzero(status == FAILED)
                if idx.size == 0:
                    continue
                reasons = f["backbones"][backbone_key(name)]["reason"].asstr()[()]
                for i in idx:
                    rows.append(
                        {
                            "image_id": self.ids[i],
                            "path": self.meta["path"].iloc[i],
                            "backbone": name,
                            "reason": str(reasons[i]),
                        }
                    )
        return pd.DataFrame(rows, columns=["image_id", "path", "backbone", "reason"])

    def n_done(self) -> dict:
        return {n: int(self.done(n).sum()) for n in self.backbones}

    def pending_shards(self) -> int:
        """Shards written by an interrupted extraction, not yet merged (a rerun merges them)."""
        d = parts_dir(self.path)
        return len(list(d.glob("*.npz"))) if d.is_dir() else 0

    def summary(self) -> dict:
        """What ``featmammo info --json`` prints."""
        fails = self.failures
        return {
            "path": str(self.path),
            "n_images": len(self.ids),
            "backbones": {n: self.dim(n) for n in self.backbones},
            "n_done": self.n_done(),
            "failed": fails.to_dict(orient="records"),
            "pending_shards": self.pending_shards(),
            "provenance": {
                **self.provenance,
                "backbones": {n: self.backbone_provenance(n) for n in self.backbones},
            },
        }


def open(path) -> Store:  # noqa: A001 - the contract's name; shadows the builtin here only
    """Open a store for reading (no torch needed)."""
    return Store(path)


# ----------------------------------------------------------------------------------------- writer
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


def _write_new_file(
    tmp: Path,
    ids: np.ndarray,
    meta: pd.DataFrame,
    entries: Sequence[BackboneEntry],
    store_provenance: dict,
    compression: str | None,
) -> None:
    n = len(ids)
    with h5py.File(tmp, "w", libver="latest") as f:
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
    g.create_dataset("reason", shape=(n,), maxshape=(None,), dtype=_STR, chunks=(CHUNK_ROWS,))
    if n:
        g["reason"][:] = np.full(n, "", dtype=object)
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
        ds_r[r0:r1] = reason[p0:p1]


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
    ids = np.asarray([str(i) for i in ids], dtype=object)
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids).loc[pd.Series(ids).duplicated()].iloc[0]
        raise StoreError(f"{path}: duplicate image id {dup!r}")
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
    tmp = _tmp_path(path)
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
    _commit(tmp, path)
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
    ids = np.asarray([str(i) for i in ids], dtype=object)
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids).loc[pd.Series(ids).duplicated()].iloc[0]
        raise StoreError(f"{path}: duplicate image id {dup!r} in the manifest")
    meta = _normalise_meta(ids, meta)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise StoreError(f"{path}: backbone names repeat: {names}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    if tmp.exists():  # left by a killed writer; never the live file
        tmp.unlink()
    if not path.exists():
        sp = {**package_versions(), "created": utcnow(), "updated": utcnow()}
        sp.update(store_provenance)
        sp["manifest_hashes"] = [h for h in [sp.get("manifest_hash")] if h]
        _write_new_file(tmp, ids, meta, entries, sp, compression)
        _commit(tmp, path)
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
    _copy_and_modify(
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


def _copy_and_modify(path: Path, modify, fault: str = "modify") -> None:
    """Copy the live file to STORE.h5.tmp, let ``modify(h5file)`` change the copy, then commit."""
    tmp = _tmp_path(path)
    shutil.copyfile(path, tmp)
    try:
        with h5py.File(tmp, "r+") as f:
            modify(f)
            f.flush()
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fault_point(f"{fault}-tmp")
    _commit(tmp, path)
    fault_point(f"{fault}-replaced")


# ----------------------------------------------------------------------------------------- shards
def write_shard(
    path, ids: Sequence[str], blocks: Mapping[str, tuple], identities: Mapping[str, str]
) -> Path:
    """Durably record one finished batch for the store at ``path``.

    ``blocks[name] = (embeddings (n, D), status (n,) int, reasons (n,) str)`` for ``ids``;
    ``identities[name]`` is the backbone identity the rows were computed under (checked at merge).
    The shard appears under its final name only once its bytes are on disk.
    """
    d = parts_dir(path)
    d.mkdir(parents=True, exist_ok=True)
    names = list(blocks)
    payload = {
        "ids": np.asarray([str(i) for i in ids], dtype=str),
        "names": np.asarray(names, dtype=str),
        "identities": np.asarray([identities[n] for n in names], dtype=str),
    }
    for j, n in enumerate(names):
        emb, status, reason = blocks[n]
        payload[f"emb{j}"] = np.asarray(emb)
        payload[f"status{j}"] = np.asarray(status, dtype=np.int8)
        payload[f"reason{j}"] = np.asarray([str(r) for r in reason], dtype=str)
    # time-ordered unique name: merge order is write order (a later shard wins on the same image)
    stem = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = d / f".{stem}.npz.tmp"
    with builtins.open(tmp, "wb") as fh:
        np.savez(fh, **payload)
        fh.flush()
        os.fsync(fh.fileno())
    fault_point("shard-tmp")
    final = d / f"{stem}.npz"
    os.replace(tmp, final)
    _fsync_dir(d)
    return final


def _read_shard(p: Path) -> dict | None:
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # a complete shard never fails; a foreign file might
        log.warning("ignoring unreadable shard %s (%s)", p, exc)
        return None


def consolidate(
    path,
    *,
    store_provenance_update: Mapping | None = None,
    backbone_provenance_update: Mapping[str, Mapping] | None = None,
    max_shards: int | None = None,
) -> int:
    """Merge the durable shards of ``path`` into the main file atomically; return how many merged.

    Shards whose backbone identity differs from the store's entry of that name, or that name
    backbones/images the store lacks, are skipped with a warning (and removed, being unusable).
    Optionally updates the store-level provenance and per-backbone provenance in the same step.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such store to merge shards into")
    d = parts_dir(path)
    shard_paths = sorted(d.glob("*.npz")) if d.is_dir() else []
    if max_shards is not None:
        shard_paths = shard_paths[:max_shards]
    if not shard_paths and not store_provenance_update and not backbone_provenance_update:
        return 0
    merged = []

    def modify(f):
        ids = f["ids"].asstr()[()]
        index = {i: k for k, i in enumerate(ids)}
        groups = {str(f["backbones"][k].attrs["name"]): f["backbones"][k] for k in f["backbones"]}
        for p in shard_paths:
            shard = _read_shard(p)
            merged.append(p)
            if shard is None:
                continue
            sid = [str(i) for i in shard["ids"]]
            missing = [i for i in sid if i not in index]
            if missing:
                log.warning("shard %s: %d images not in the store (e.g. %r); skipped", p,
                            len(missing), missing[0])  # fmt: skip
            keep = np.array([i in index for i in sid], dtype=bool)
            rows = np.array([index[i] for i in sid if i in index], dtype=np.int64)
            for j, (name, ident) in enumerate(
                zip(shard["names"], shard["identities"], strict=True)
            ):
                g = groups.get(str(name))
                if g is None or str(g.attrs["identity"]) != str(ident):
                    log.warning("shard %s: backbone %r does not match the store; skipped", p, name)
                    continue
                _write_rows(
                    g, rows, shard[f"emb{j}"][keep], shard[f"status{j}"][keep],
                    shard[f"reason{j}"][keep],
                )  # fmt: skip
        if store_provenance_update:
            sp = json.loads(f.attrs["provenance"])
            for k, v in store_provenance_update.items():
                if k == "runs":
                    sp["runs"] = list(sp.get("runs", [])) + list(v)
                else:
                    sp[k] = v
            sp["updated"] = utcnow()
            f.attrs["provenance"] = _json_attr(sp)
        for name, upd in (backbone_provenance_update or {}).items():
            g = groups.get(name)
            if g is None:
                continue
            bp = json.loads(g.attrs["provenance"])
            for k, v in upd.items():
                if k in IDENTITY_KEYS:
                    raise StoreError(
                        f"{path}: {k} is part of the identity of {name!r}; not updated"
                    )
                if k == "devices":
                    bp["devices"] = sorted(set(bp.get("devices", [])) | set(v))
                else:
                    bp[k] = v
            g.attrs["provenance"] = _json_attr(bp)

    _copy_and_modify(path, modify, fault="consolidate")
    for p in merged:  # only after the merged data is durable in the main file
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    if merged:
        log.debug("store %s: merged %d shards", path, len(merged))
    return len(merged)


def cleanup_parts(path) -> None:
    """Remove the shard folder once it is empty (after the final consolidation)."""
    d = parts_dir(path)
    if d.is_dir():
        for tmp in d.glob(".*.npz.tmp"):  # partial shards of killed writers
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        with contextlib.suppress(OSError):
            d.rmdir()
