"""Segment files: writing them, and the garbage collection that deletes them safely.

A segment (``STORE.h5.segments/<uuid>-<time>-<random>.h5``) holds some rows of a store:
``/rows`` + ``/ids`` + ``/meta/<column>`` (the rows' ids and metadata) and/or, per backbone,
``/backbones/<key>/rows`` + ``/backbones/<key>/embeddings`` (``rows``: the store rows, ascending).
It is written once through ``featmammo.store.files.write_h5`` and never changed.

Garbage collection (:func:`collect`, under the store's lock) deletes, in the segments folder:

* temporary files of killed writers;
* segments this store's index does not reference (a merge killed before its index was written,
  rows a compaction rewrote) and that no retired snapshot and no other store file in the same
  folder references (``cp store.h5 copy.h5`` makes a second index over the same segments);
* segments of other stores (another UUID) unless a store in the same folder carries that UUID
  (``mv store.h5 other.h5`` keeps its segments working): after ``rm store.h5``, what it left is
  discarded with a warning, never read into the new store;
* retired snapshots (older main files that mapped segments a compaction replaced) once no process
  has them open: HDF5 holds a shared ``flock`` on every file it has open, so an exclusive
  non-blocking ``flock`` that succeeds proves no HDF5 reader (featmammo's or a plain h5py one)
  still reads through that snapshot. Snapshots younger than ``RETIRED_MIN_AGE_S`` are kept
  whatever the lock says (for readers that disabled HDF5's file locking).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from pathlib import Path

import h5py
import numpy as np

from .index import State, segment_name, segment_uuid
from .schema import _STR, SEGMENT_FORMAT, _as_str_array, _compression_kwargs, segments_dir

log = logging.getLogger("featmammo.store")

RETIRED_PREFIX = "retired-"
RETIRED_MIN_AGE_S = 3600.0


def new_segment_path(state: State, tag: str = "") -> tuple[Path, str]:
    """Where a new segment of ``state``'s store goes, and how the index names it."""
    folder = segments_dir(state.path)
    folder.mkdir(parents=True, exist_ok=True)
    name = segment_name(state.uuid, tag)
    return folder / name, f"{folder.name}/{name}"


def start_segment(f: h5py.File, state: State) -> None:
    f.attrs["format"] = SEGMENT_FORMAT
    f.attrs["store_uuid"] = state.uuid


def write_rows_part(f: h5py.File, rows: np.ndarray, ids, meta: dict, columns) -> None:
    """``/rows``, ``/ids``, ``/meta/<column>`` of a segment (``meta``: column -> values)."""
    k = len(rows)
    chunk = (max(1, min(k, 4096)),)
    f.create_dataset(
        "rows", data=np.asarray(rows, np.int64), chunks=chunk, compression="gzip", shuffle=True
    )
    f.create_dataset("ids", data=_as_str_array(ids), dtype=_STR, chunks=chunk)
    g = f.create_group("meta")
    g.attrs["columns"] = json.dumps(list(columns))
    for c in columns:
        g.create_dataset(c, data=_as_str_array(meta[c]), dtype=_STR, chunks=chunk)


def create_embeddings(
    f: h5py.File, key: str, name: str, rows: np.ndarray, dim: int, dtype: str, compression
) -> h5py.Dataset:
    """The ``/backbones/<key>`` part of a segment; returns its (k, dim) embeddings dataset."""
    from .schema import CHUNK_ROWS

    k = len(rows)
    g = f.require_group("backbones").create_group(key)
    g.attrs["name"] = name
    g.create_dataset(
        "rows",
        data=np.asarray(rows, np.int64),
        chunks=(max(1, min(k, 4096)),),
        compression="gzip",
        shuffle=True,
    )
    return g.create_dataset(
        "embeddings",
        shape=(k, int(dim)),
        dtype=dtype,
        chunks=(max(1, min(k, CHUNK_ROWS)), int(dim)),
        fillvalue=np.nan,
        **_compression_kwargs(compression),
    )


# ------------------------------------------------------------------------------ garbage collection
def retire_snapshot(index_path: Path) -> Path | None:
    """Keep the current main file as a retired snapshot (a hard link) before it is replaced."""
    folder = segments_dir(index_path)
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / f"{RETIRED_PREFIX}{time.time_ns():020d}-{secrets.token_hex(3)}.h5"
    try:
        os.link(index_path, dst)
    except OSError as exc:  # no hard links: a snapshot cannot be kept; GC keeps segments instead
        log.debug("%s: no retired snapshot (%s)", index_path, exc)
        return None
    return dst


def _referenced(index_file: Path) -> set[str] | None:
    """Segment file names an index references (None when it cannot be read)."""
    try:
        with _probe(index_file) as f:
            raw = f.attrs.get("segments")
            store_uuid = str(f.attrs.get("store_uuid", ""))
    except (OSError, KeyError, ValueError):
        return None
    out = {Path(r["file"]).name for r in json.loads(raw) if r.get("file")} if raw else set()
    return out | ({f"uuid:{store_uuid}"} if store_uuid else set())


def _probe(path: Path) -> h5py.File:
    """Open ``path`` read-only without taking HDF5's file lock (a probe must not block anyone)."""
    try:
        return h5py.File(path, "r", locking=False)
    except (TypeError, ValueError, OSError):  # h5py < 3.5, or already open here with a lock
        return h5py.File(path, "r")


def _try_exclusive(path: Path):
    """An fd holding an exclusive flock on ``path``, or None when some process has it open."""
    from .locking import try_flock

    try:
        return try_flock(path, exclusive=True)
    except OSError:
        return None


def _siblings(folder: Path, skip: Path, segments: Path) -> tuple[set[str], set[str]]:
    """The featmammo stores in ``folder`` other than ``skip``: their UUIDs, and the names of the
    files of the ``segments`` folder they read (a ``cp store.h5 copy.h5`` reads the original's
    segments folder: what it reads must outlive the original's compactions)."""
    uuids: set[str] = set()
    names: set[str] = set()
    for p in folder.iterdir():
        if p == skip or not p.is_file() or p.name.startswith("."):
            continue
        try:
            with open(p, "rb") as fh:
                if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                    continue
            with _probe(p) as f:
                if f.attrs.get("store_uuid") is None:
                    continue
                uuids.add(str(f.attrs["store_uuid"]))
                raw = f.attrs.get("segments")
            for r in json.loads(raw) if raw else ():
                rel = Path(r.get("file") or "")
                if (p.parent / rel).parent == segments:
                    names.add(rel.name)
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    return uuids, names


def collect(
    path: Path, state: State | None, *, min_age_s: float = RETIRED_MIN_AGE_S, own_uuid: str = ""
) -> int:
    """Delete what no store needs in ``path``'s segments folder (the caller holds the lock).

    ``state``: the live index (None when the store does not exist or is self-contained: then
    every segment not kept by a snapshot or a sibling store goes). ``own_uuid`` (with no
    ``state``): the UUID of the self-contained store now at ``path`` (packed in place): its old
    segments are its own, not another store's leftovers. Returns files deleted.
    """
    folder = segments_dir(path)
    if not folder.is_dir():
        return 0
    live = {sg.name for sg in state.segments if sg.file} if state is not None else set()
    live_uuid = state.uuid if state is not None else own_uuid
    deleted = 0
    keep: set[str] = set()
    now = time.time()
    snapshots = sorted(p for p in folder.glob(f"{RETIRED_PREFIX}*.h5"))
    held = []  # fds holding exclusive locks on snapshots about to be deleted
    try:
        unsure = False  # a snapshot we cannot read: delete no segment this time
        for snap in snapshots:
            refs = _referenced(snap)
            young = now - _retired_at(snap) < min_age_s
            fd = None if young or refs is None else _try_exclusive(snap)
            if fd is None:
                keep |= refs or set()
                unsure |= refs is None
                continue
            held.append((snap, fd))
        foreign: dict[str, list[Path]] = {}
        orphans: list[Path] = []  # this store's, referenced by no index of it
        for p in folder.iterdir():
            name = p.name
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    deleted += 1
                continue
            if name.startswith(RETIRED_PREFIX) or not name.endswith(".h5"):
                continue
            if name in live or name in keep or unsure:
                continue
            owner = segment_uuid(name)
            if owner and owner == live_uuid:
                orphans.append(p)  # replaced by a compaction, or a merge killed before its index
                continue
            if owner and f"uuid:{owner}" in keep:
                continue
            foreign.setdefault(owner, []).append(p)
        if orphans or foreign:
            siblings, read_by_siblings = _siblings(path.parent, path, folder)
            for p in orphans:
                if p.name in read_by_siblings:
                    continue  # a copy of the main file beside it still reads it
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    deleted += 1
            for owner, files in foreign.items():
                if owner and owner in siblings:
                    continue  # a store renamed in this folder still reads them
                log.warning(
                    "%s: discarding %d segment file(s) of a store that no longer exists "
                    "(store UUID %s, e.g. %s); they are never read into this store",
                    path,
                    len(files),
                    owner or "unknown",
                    files[0].name,
                )
                for p in files:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                        deleted += 1
        for snap, _fd in held:  # unused snapshots go last, while still locked
            with contextlib.suppress(FileNotFoundError):
                snap.unlink()
                deleted += 1
    finally:
        for _snap, fd in held:
            os.close(fd)
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when empty
    return deleted


def _retired_at(p: Path) -> float:
    """When a snapshot was retired (its name; a hard link keeps the old file's mtime)."""
    try:
        return int(p.name[len(RETIRED_PREFIX) :].split("-", 1)[0]) / 1e9
    except ValueError:
        return 0.0
