"""The main file as an index over immutable segment files (format version 2).

The main file ``STORE.h5`` holds what changes with every step, and nothing proportional to the
embeddings: the store UUID, provenance, per backbone its ``status`` and ``reason`` columns, and
where every row lives: ``/index/rows/{segment,position}`` (the segment holding the row's id and
metadata) and ``/index/backbones/<key>/{segment,position}`` (the segment holding its embedding;
-1 = none: pending or failed). Ids, metadata and embeddings are HDF5 virtual datasets mapping row
ranges of those segment files, so a plain ``h5py`` user reads ``f["ids"]``,
``f["meta/label"]`` or ``f["backbones/resnet50/embeddings"]`` as one array, as before.

A segment is written once, under a unique name, and never changed. A change of the store writes
the new rows as new segments, then a new main file (small: a few bytes per row) that is
``os.replace``-d over the old one: a reader sees the old version or the new one. What a step costs
is therefore the new rows plus the index, not the store.

Segment files sit in ``STORE.h5.segments/`` and are named ``<store uuid>-<time>-<random>.h5``;
the main file references them by paths relative to its own folder, which HDF5 resolves against
the folder of the file it opened (then the folder of the file a symlink points to). HDF5 opens a
virtual dataset's sources lazily and reads its fill value (NaN, "") silently where a source
file is missing; so segments are only ever deleted by the garbage collection of
``featmammo.store.segments``, which keeps every segment a possibly open older index still maps, and
``featmammo.store.Store`` opens every segment when it opens the store and holds it open.

A store written as one self-contained file (format version 1, ``write``, ``featmammo store
pack``) has real datasets and no segments; it is read as one segment (``inline``), and the first
change turns it into an index whose first segment is that very file (hard-linked, not copied).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
import uuid as uuid_mod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import StoreError
from .faults import fault_point
from .files import write_h5
from .schema import (
    _STR,
    DONE,
    FAILED,
    FORMAT,
    FORMAT_VERSION,
    META_COLUMNS,
    READABLE_VERSIONS,
    _json_attr,
    backbone_key,
    segments_dir,
)

INDEX_CHUNK = 1 << 14  # rows per chunk of the index's own columns


@dataclass
class Segment:
    """One segment file as the index sees it."""

    file: str | None  # path relative to the index's folder; None: the index file itself (inline)
    rows: int | None = None  # length of its ids/metadata part (None: no such part)
    columns: list = field(default_factory=list)  # metadata columns it holds
    backbones: dict = field(default_factory=dict)  # backbone -> rows of its embeddings part

    def record(self) -> dict:
        return {
            "file": self.file,
            "rows": self.rows,
            "columns": list(self.columns),
            "backbones": dict(self.backbones),
        }

    @property
    def name(self) -> str:
        return Path(self.file).name if self.file else ""


@dataclass
class Block:
    """One backbone: identity, provenance, per-row status/reason and where each embedding is."""

    name: str
    dim: int
    dtype: str
    identity: str
    provenance: dict
    status: np.ndarray  # (N,) int8
    reason: np.ndarray  # (N,) object (str)
    seg: np.ndarray  # (N,) int32 segment number, -1 = no embedding
    pos: np.ndarray  # (N,) int64 row within that segment's part

    def grow(self, k: int) -> None:
        self.status = np.concatenate([self.status, np.zeros(k, np.int8)])
        self.reason = np.concatenate([self.reason, np.full(k, "", dtype=object)])
        self.seg = np.concatenate([self.seg, np.full(k, -1, np.int32)])
        self.pos = np.concatenate([self.pos, np.zeros(k, np.int64)])


@dataclass
class State:
    """Everything the index says; writers change it and :func:`commit` writes it."""

    path: Path  # the index file (symlinks resolved)
    uuid: str
    generation: int
    provenance: dict
    columns: list
    row_seg: np.ndarray
    row_pos: np.ndarray
    blocks: dict
    segments: list
    version: int = FORMAT_VERSION
    inline: bool = False
    merged_shards: list = field(default_factory=list)
    legacy_before_ns: int = 0  # shards without a store UUID older than this belong here (v1)
    compression: str = "gzip"  # of the embeddings segments get
    links: list = field(default_factory=list)  # (source, destination) hard links before commit

    @property
    def n(self) -> int:
        return int(self.row_seg.shape[0])

    @property
    def backbones(self) -> list:
        return list(self.blocks)

    def add_segment(self, seg: Segment) -> int:
        self.segments.append(seg)
        return len(self.segments) - 1

    def upgrade(self) -> None:
        """An inline store becomes an index whose first segment is the old file (a hard link)."""
        if not self.inline:
            return
        legacy = not self.uuid
        if legacy:
            self.uuid = new_uuid()
            self.legacy_before_ns = time.time_ns()
        name = segment_name(self.uuid, "base")
        folder = segments_dir(self.path)
        self.segments[0].file = f"{folder.name}/{name}"
        self.links.append((self.path, folder / name))
        self.inline = False
        self.version = FORMAT_VERSION


def new_uuid() -> str:
    return uuid_mod.uuid4().hex


def segment_name(store_uuid: str, tag: str = "") -> str:
    """``<uuid>-<time ns>-<random>[-tag].h5``: unique, ordered by time, owned by one store."""
    suffix = f"-{tag}" if tag else ""
    return f"{store_uuid}-{time.time_ns():020d}-{secrets.token_hex(3)}{suffix}.h5"


def segment_uuid(name: str) -> str:
    """The store UUID a segment file name carries ('' when the name is not a segment's)."""
    head = name.split("-", 1)[0]
    return head if len(head) == 32 and all(c in "0123456789abcdef" for c in head) else ""


# ---------------------------------------------------------------------------------------- reading
def _json(attrs, key, default):
    raw = attrs.get(key)
    if raw is None:
        return default
    return json.loads(raw)


def read_state(f: h5py.File, path: Path) -> State:
    """The state of the open index (or self-contained) file ``f`` (StoreError if not a store)."""
    if f.attrs.get("format") != FORMAT:
        raise StoreError(f"{path}: not a featmammo store (no format attribute)")
    version = int(f.attrs.get("format_version", -1))
    if version not in READABLE_VERSIONS:
        raise StoreError(
            f"{path}: store format version {version} is not supported (this featmammo reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}); upgrade featmammo"
        )
    provenance = json.loads(f.attrs["provenance"])
    names = list(json.loads(f.attrs["backbones"]))
    columns = list(json.loads(f["meta"].attrs["columns"]))
    n = int(f["ids"].shape[0])
    store_uuid = str(f.attrs.get("store_uuid", ""))
    segments_raw = _json(f.attrs, "segments", None)
    inline = segments_raw is None
    blocks = {}
    for name in names:
        g = f["backbones"][backbone_key(name)]
        status = g["status"][()].astype(np.int8)
        reason = np.asarray(g["reason"].asstr()[()], dtype=object)
        if inline:
            seg = np.where(status == DONE, 0, -1).astype(np.int32)
            pos = np.arange(n, dtype=np.int64)
        else:
            ix = f["index/backbones"][backbone_key(name)]
            seg = ix["segment"][()].astype(np.int32)
            pos = ix["position"][()].astype(np.int64)
        blocks[name] = Block(
            name=name,
            dim=int(g.attrs["dim"]),
            dtype=str(g.attrs["dtype"]),
            identity=str(g.attrs["identity"]),
            provenance=json.loads(g.attrs["provenance"]),
            status=status,
            reason=reason,
            seg=seg,
            pos=pos,
        )
    compression = f.attrs.get("compression")
    if compression is None:  # a self-contained file: what its embeddings use
        compression = "gzip"
        for name in names:
            compression = f["backbones"][backbone_key(name)]["embeddings"].compression or "none"
            break
    if inline:
        segments = [Segment(None, n, list(columns), {nm: n for nm in names})]
        row_seg = np.zeros(n, np.int32)
        row_pos = np.arange(n, dtype=np.int64)
    else:
        segments = [Segment(**r) for r in segments_raw]
        row_seg = f["index/rows/segment"][()].astype(np.int32)
        row_pos = f["index/rows/position"][()].astype(np.int64)
    return State(
        path=Path(path),
        uuid=store_uuid,
        generation=int(f.attrs.get("generation", 0)),
        provenance=provenance,
        columns=columns,
        row_seg=row_seg,
        row_pos=row_pos,
        blocks=blocks,
        segments=segments,
        version=version,
        inline=inline,
        merged_shards=list(_json(f.attrs, "merged_shards", [])),
        legacy_before_ns=int(f.attrs.get("legacy_before_ns", 0)),
        compression=str(compression),
    )


def explain_h5_error(exc: Exception) -> str:
    """h5py's error text, prefixed with what it means for a user."""
    text = str(exc)
    if "file signature not found" in text:
        return f"not an HDF5 file: {text}"
    if "truncated file" in text:
        return f"truncated HDF5 file (an interrupted copy or download?): {text}"
    if "unable to lock file" in text.lower():
        return f"the file is locked by another process: {text}"
    return text


def open_index(path: Path, shown=None) -> tuple[h5py.File, State]:
    """The open main file at ``path`` and its state; StoreError (naming ``shown``) if unusable."""
    shown = path if shown is None else shown
    try:
        h = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise StoreError(f"{shown}: unreadable store ({explain_h5_error(exc)})") from exc
    try:
        return h, read_state(h, path)
    except StoreError:
        h.close()
        raise
    except (OSError, KeyError, ValueError) as exc:
        h.close()
        raise StoreError(f"{shown}: unreadable store ({explain_h5_error(exc)})") from exc


@contextlib.contextmanager
def editing(path: Path):
    """``(state, files)`` of the store at ``path`` for a change (the caller holds the lock)."""
    h, state = open_index(path)
    try:
        files = open_segments(state, h)
        try:
            yield state, files
        finally:
            close_files(files, h)
    finally:
        h.close()


def open_segments(state: State, index: h5py.File) -> list:
    """An open h5py.File per segment of ``state`` (``index`` itself for the inline segment).

    A missing segment file is a StoreError naming it: never read as fill values.
    """
    folder = state.path.parent
    files = []
    try:
        for sg in state.segments:
            if sg.file is None:
                files.append(index)
                continue
            p = folder / sg.file
            try:
                files.append(h5py.File(p, "r"))
            except FileNotFoundError as exc:
                raise MissingSegment(p) from exc
            except OSError as exc:
                raise StoreError(f"{state.path}: unreadable segment file {p} ({exc})") from exc
    except BaseException:
        close_files(files, index)
        raise
    return files


def close_files(files, index=None) -> None:
    for h in files:
        if h is not index:
            with contextlib.suppress(Exception):  # closing what may be half-open
                h.close()


class MissingSegment(StoreError):
    def __init__(self, path):
        super().__init__(f"segment file {path} is missing")
        self.path = path


def slab_rows(row_bytes: int, target: int = 32 << 20) -> int:
    return max(64, int(target // max(1, row_bytes)))


def read_into(out: np.ndarray, dest: np.ndarray, ds, positions: np.ndarray, *,
              strings: bool = False, gap: int = 256) -> None:  # fmt: skip
    """``out[dest[k]] = ds[positions[k]]`` for every k, read in contiguous slabs of bounded size.

    Where both sides of a slab are contiguous the rows go straight into ``out``
    (``read_direct``): reading a matrix costs the matrix, not twice it.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size == 0:
        return
    tail = ds.shape[1:]
    row_bytes = int(np.prod(tail, dtype=np.int64)) * ds.dtype.itemsize if tail else 16
    order = np.argsort(positions, kind="stable")
    ps, dst = positions[order], np.asarray(dest, dtype=np.int64)[order]
    limit = slab_rows(row_bytes)
    direct = not strings and out.flags.c_contiguous
    reader = ds.asstr() if strings else ds
    i, m = 0, ps.size
    while i < m:
        a = int(ps[i])
        j = i + 1
        while j < m and ps[j] - ps[j - 1] <= gap and ps[j] - a < limit:
            j += 1
        b = int(ps[j - 1]) + 1
        d = dst[i:j]
        if direct and b - a == j - i and d[-1] - d[0] == j - i - 1 and (np.diff(d) == 1).all():
            ds.read_direct(out, np.s_[a:b], np.s_[int(d[0]) : int(d[-1]) + 1])
        else:
            slab = reader[a:b]
            out[d] = slab[ps[i:j] - a]
        i = j


def gather(
    n: int,
    seg: np.ndarray,
    pos: np.ndarray,
    files: Sequence,
    dataset: Callable,
    *,
    rows: np.ndarray | None = None,
    strings: bool = False,
    fill=None,
    dtype=None,
    tail=(),
) -> np.ndarray:
    """Values of ``rows`` (default all) gathered from the segments that hold them.

    ``dataset(segment_number)`` returns the dataset path in that segment (None: not held there,
    the row gets ``fill``).
    """
    rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    if strings:
        out = np.full(rows.size, "" if fill is None else fill, dtype=object)
    else:
        out = np.full((rows.size, *tail), np.nan if fill is None else fill, dtype=dtype)
    if rows.size == 0:
        return out
    s_of = seg[rows]
    for s in np.unique(s_of[s_of >= 0]):
        name = dataset(int(s))
        if name is None:
            continue
        sel = np.flatnonzero(s_of == s)
        read_into(out, sel, files[int(s)][name], pos[rows[sel]], strings=strings)
    return out


def meta_dataset(state: State, column: str) -> Callable:
    def which(s: int):
        sg = state.segments[s]
        return f"meta/{column}" if column in sg.columns else None

    return which


def emb_dataset(state: State, name: str) -> Callable:
    path = f"backbones/{backbone_key(name)}/embeddings"

    def which(s: int):
        return path if name in state.segments[s].backbones else None

    return which


class IdIndex:
    """Row of each id, for many lookups: sorted ids + ``searchsorted`` (no dict of N strings)."""

    def __init__(self, ids: np.ndarray):
        ids = np.asarray(ids).astype(str)
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]

    def lookup(self, query) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, found)``: the store row of each queried id (where ``found``)."""
        q = np.asarray(query).astype(str)
        if not self.sorted.size:
            return np.zeros(q.size, np.int64), np.zeros(q.size, bool)
        at = np.minimum(np.searchsorted(self.sorted, q), self.sorted.size - 1)
        found = self.sorted[at] == q
        return self.order[at].astype(np.int64), found


def read_ids(state: State, files) -> np.ndarray:
    ids = gather(state.n, state.row_seg, state.row_pos, files, lambda s: "ids", strings=True)
    return ids.astype(str)


def read_meta(state: State, files) -> dict:
    """Column -> (N,) object array of strings; required columns missing from the store are ""."""
    out = {}
    for c in state.columns:
        out[c] = gather(
            state.n, state.row_seg, state.row_pos, files, meta_dataset(state, c), strings=True
        )
    for c in META_COLUMNS:
        out.setdefault(c, np.full(state.n, "", dtype=object))
    return out


# ---------------------------------------------------------------------------------------- writing
def runs(seg: np.ndarray, pos: np.ndarray) -> list:
    """Maximal runs of rows held contiguously by one segment: (segment, row0, row1, position0)."""
    idx = np.flatnonzero(seg >= 0)
    if idx.size == 0:
        return []
    s, p = seg[idx], pos[idx]
    brk = np.flatnonzero((np.diff(idx) != 1) | (np.diff(s) != 0) | (np.diff(p) != 1)) + 1
    starts = np.concatenate([[0], brk])
    stops = np.concatenate([brk, [idx.size]])
    return [
        (int(s[a]), int(idx[a]), int(idx[b - 1]) + 1, int(p[a]))
        for a, b in zip(starts, stops, strict=True)
    ]


def _virtual(group, name, state, seg, pos, dataset, length, dtype, tail=(), fill=None, chunks=None):
    """A virtual dataset over the segments (a plain dataset of fill values when nothing maps)."""
    n = state.n
    mapped = [r for r in runs(seg, pos) if dataset(r[0]) is not None]
    if not mapped or n == 0:
        kw = {"fillvalue": fill} if fill is not None else {}
        return group.create_dataset(
            name,
            shape=(n, *tail),
            dtype=dtype,
            maxshape=(None, *tail),
            chunks=chunks or (max(1, min(n, 64)), *tail),
            **kw,
        )
    layout = h5py.VirtualLayout(shape=(n, *tail), dtype=dtype)
    sources = {}
    for s, r0, r1, p0 in mapped:
        src = sources.get(s)
        if src is None:
            sg = state.segments[s]
            # HDF5 reads '%' in source names as a printf-style pattern: escape it ('%%')
            src = sources[s] = h5py.VirtualSource(
                sg.file.replace("%", "%%"),
                dataset(s).replace("%", "%%"),
                shape=(length(s), *tail),
                dtype=dtype,
            )
        layout[r0:r1] = src[p0 : p0 + (r1 - r0)]
    kw = {"fillvalue": fill} if fill is not None else {}
    return group.create_virtual_dataset(name, layout, **kw)


def _column(group, name, values, dtype, compression=True):
    n = len(values)
    kw = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if compression else {}
    return group.create_dataset(
        name,
        data=values,
        dtype=dtype,
        chunks=(max(1, min(n, INDEX_CHUNK)),),
        maxshape=(None,),
        **kw,
    )


def _build(state: State, generation: int) -> Callable:
    def build(f: h5py.File) -> None:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["store_uuid"] = state.uuid
        f.attrs["generation"] = generation
        f.attrs["provenance"] = _json_attr(state.provenance)
        f.attrs["backbones"] = json.dumps(state.backbones)
        f.attrs["segments"] = json.dumps([sg.record() for sg in state.segments])
        f.attrs["merged_shards"] = json.dumps(list(state.merged_shards))
        f.attrs["compression"] = state.compression
        if state.legacy_before_ns:
            f.attrs["legacy_before_ns"] = int(state.legacy_before_ns)
        rows_len = [sg.rows or 0 for sg in state.segments]
        has_rows = [sg.rows is not None for sg in state.segments]
        _virtual(
            f,
            "ids",
            state,
            state.row_seg,
            state.row_pos,
            lambda s: "ids" if has_rows[s] else None,
            lambda s: rows_len[s],
            _STR,
        )
        meta = f.create_group("meta")
        meta.attrs["columns"] = json.dumps(list(state.columns))
        for c in state.columns:
            _virtual(
                meta,
                c,
                state,
                state.row_seg,
                state.row_pos,
                meta_dataset(state, c),
                lambda s: rows_len[s],
                _STR,
            )
        bg = f.create_group("backbones")
        ix = f.create_group("index")
        r = ix.create_group("rows")
        _column(r, "segment", state.row_seg.astype(np.int32), np.int32)
        _column(r, "position", state.row_pos.astype(np.int64), np.int64)
        ixb = ix.create_group("backbones")
        for name, b in state.blocks.items():
            key = backbone_key(name)
            g = bg.create_group(key)
            g.attrs["name"] = name
            g.attrs["dim"] = int(b.dim)
            g.attrs["dtype"] = b.dtype
            g.attrs["identity"] = b.identity
            g.attrs["provenance"] = _json_attr(b.provenance)
            seg = np.where(b.status == DONE, b.seg, -1).astype(np.int32)
            _virtual(
                g,
                "embeddings",
                state,
                seg,
                b.pos,
                emb_dataset(state, name),
                lambda s, name=name: state.segments[s].backbones.get(name, 0),
                b.dtype,
                tail=(int(b.dim),),
                fill=np.nan,
                chunks=(64, int(b.dim)),
            )
            _column(g, "status", b.status.astype(np.int8), np.int8)
            reason = g.create_dataset(
                "reason",
                shape=(state.n,),
                dtype=_STR,
                maxshape=(None,),
                chunks=(max(1, min(state.n, INDEX_CHUNK)),),
                compression="gzip",
            )
            # only non-empty reasons are written: an unwritten string reads as "" and costs nothing
            failed = np.flatnonzero((b.status == FAILED) & (b.reason != ""))
            if failed.size:
                reason[failed] = np.asarray(b.reason[failed], dtype=object)
            ib = ixb.create_group(key)
            _column(ib, "segment", seg, np.int32)
            _column(ib, "position", b.pos.astype(np.int64), np.int64)

    return build


def estimate_index_bytes(state: State) -> int:
    per_row = 1 + 12 * (len(state.blocks) + 1) + 8
    n_maps = sum(1 for _ in state.segments) * (len(state.columns) + len(state.blocks) + 1)
    return state.n * per_row + 400 * n_maps + (1 << 20)


def commit(state: State, *, store, fault: str, what: str, retire: bool = False) -> None:
    """Write ``state`` as the new main file atomically (after the hard links it needs).

    ``retire``: the old main file is kept as a retired snapshot in the segments folder (a reader
    may still have it open; the garbage collection keeps what it maps while it is open).
    """
    from .segments import retire_snapshot  # the garbage collection's side of retiring

    path = state.path
    folder = segments_dir(path)
    for src, dst in state.links:
        folder.mkdir(parents=True, exist_ok=True)
        if not Path(dst).exists():
            _link_or_copy(src, dst, store)
    if state.links:
        from ..atomic import fsync_dir

        fsync_dir(folder)
    if retire and path.exists():
        retire_snapshot(path)
    generation = state.generation + 1
    write_h5(
        path,
        _build(state, generation),
        store=store,
        needed=estimate_index_bytes(state),
        what=what,
        fault=fault,
    )
    state.generation = generation
    state.links = []
    fault_point(f"{fault}-replaced")


def retire_if_segmented(path: Path) -> None:
    """Before a self-contained file replaces the index at ``path``: keep the index as a retired
    snapshot, so the garbage collection keeps its segments while a reader has it open."""
    from .segments import _probe, retire_snapshot

    try:  # _probe: this process may hold the file open already (pack reads it as a Store)
        with _probe(path) as f:
            segmented = f.attrs.get("segments") is not None
    except (OSError, ValueError, TypeError):
        return
    if segmented:
        retire_snapshot(path)


def _link_or_copy(src: Path, dst: Path, store) -> None:
    try:
        os.link(src, dst)
        return
    except OSError:
        pass  # no hard links here (another file system, a FAT volume): copy once
    from .files import check_space

    size = Path(src).stat().st_size
    check_space(store, Path(dst).parent, size, "upgrading the store (copying the old file)")
    import shutil

    tmp = Path(dst).with_name(f".{Path(dst).name}.{secrets.token_hex(4)}.tmp")
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
