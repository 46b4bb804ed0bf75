"""Reading a store: :class:`Store` (one consistent snapshot, files held open), :func:`open`.

No torch. A ``Store`` opens the main file and every segment file it references when it is created
and keeps them open until :meth:`Store.close` (or the end of a ``with`` block): everything it
returns comes from that one version of the store, even while an extraction replaces the main file
or a compaction deletes segments (an open file stays readable on POSIX systems after it is
unlinked). Arrays are read on demand, in bounded slabs, so reading rows of a large store costs
the rows asked for, not the matrix.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..errors import StoreError
from .index import (
    MissingSegment,
    State,
    close_files,
    emb_dataset,
    gather,
    open_index,
    open_segments,
    read_ids,
    read_meta,
    slab_rows,
)
from .schema import DONE, FAILED, META_COLUMNS, PENDING, parts_dir, resolve

_OPEN_ATTEMPTS = 8
# a column is numeric when every non-empty value is a number written plainly (no leading zeros:
# "007" is an identifier, not 7)
_INT = re.compile(r"^[-+]?(0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^[-+]?(0|[1-9][0-9]*)?(\.[0-9]+)?([eE][-+]?[0-9]+)?$")


def typed_column(values: np.ndarray):
    """``values`` (strings, "" = missing) as int64 / float64 when every value is a plain number.

    Text otherwise (a manifest's extra columns are read as text; MIAS x, y, radius are numbers).
    """
    s = pd.Series(values, dtype=object).astype(str)
    present = s[s != ""]
    if present.empty:
        return values
    if present.str.match(_INT).all() and len(present) == len(s):
        try:
            return s.astype(np.int64).to_numpy()
        except (OverflowError, ValueError):
            return values
    if (present.str.match(_INT) | present.str.match(_FLOAT)).all() and not present.isin(
        ["+", "-", ".", ""]
    ).any():
        try:
            return pd.to_numeric(s.replace("", np.nan), errors="raise").astype(float).to_numpy()
        except (ValueError, TypeError):
            return values
    return values


class Store:
    """A read-only snapshot of a store: ids, metadata, status, provenance and embeddings.

    Metadata, status and provenance are loaded at open; embeddings are read on demand
    (:meth:`array`, :meth:`blocks`, :meth:`frame`) from the files opened with the store, so every
    result belongs to the same version. A context manager: leaving the block closes the files;
    what was loaded at open stays readable, reading embeddings then raises StoreError.
    """

    _closed = False
    _files: list = []
    _h5 = None
    #: ids whose rows ``prepare`` reset because their file changed (see ``featmammo.store.prepare``)
    changed_images: list = []

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such store")
        for attempt in range(_OPEN_ATTEMPTS):
            try:
                self._open()
                return
            except MissingSegment as exc:
                if attempt + 1 < _OPEN_ATTEMPTS and self._index_changed():
                    continue  # replaced meanwhile (a compaction): open the new version
                raise StoreError(
                    f"{self.path}: {exc}; the store references it (was it deleted, or the store "
                    f"moved without its {exc.path.parent.name} folder?)"
                ) from None

    def _index_changed(self) -> bool:
        try:
            with h5py.File(resolve(self.path), "r") as f:
                return int(f.attrs.get("generation", 0)) != self._opening_generation
        except OSError:
            return True

    def _open(self) -> None:
        h, state = open_index(resolve(self.path), self.path)
        try:
            self._opening_generation = state.generation
            files = open_segments(state, h)
            try:
                ids = read_ids(state, files)
                meta = read_meta(state, files)
            except (OSError, KeyError, ValueError) as exc:
                close_files(files, h)
                raise StoreError(f"{self.path}: unreadable store ({exc})") from exc
        except BaseException:
            h.close()
            raise
        self._h5, self._files, self._state = h, files, state
        self._raw_meta = meta
        self.compression = state.compression
        self.ids = ids
        self.meta = pd.DataFrame(
            {c: (v if c in META_COLUMNS else typed_column(v)) for c, v in meta.items()},
            index=pd.Index(ids, name="image_id"),
        )
        for c in META_COLUMNS:  # required text columns stay text
            self.meta[c] = self.meta[c].astype(str)
        self.provenance = dict(state.provenance)
        self.backbones = list(state.blocks)
        self.uuid = state.uuid
        self.format_version = state.version
        self.generation = state.generation
        self.changed_images = []

    # ------------------------------------------------------------------------------ lifecycle
    def __repr__(self) -> str:
        dims = ", ".join(f"{n}[{self.dim(n)}]" for n in self.backbones)
        return f"<featmammo Store {self.path}: {len(self.ids)} images; {dims}>"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return False

    def __reduce__(self):  # a new snapshot of the same path (open files do not pickle)
        return (type(self), (self.path,))

    def close(self) -> None:
        """Close the files this snapshot holds open; loaded metadata stays usable."""
        if self._closed:
            return
        self._closed = True
        close_files(self._files, self._h5)
        if self._h5 is not None:
            with contextlib.suppress(Exception):
                self._h5.close()
        self._files = []

    def _live(self) -> State:
        if self._closed:
            raise StoreError(f"{self.path}: store is closed")
        return self._state

    # ------------------------------------------------------------------------------ metadata
    def __len__(self) -> int:
        return len(self.ids)

    def _check(self, name: str) -> None:
        if name not in self._state.blocks:
            raise StoreError(
                f"{self.path}: no backbone {name!r} in this store (it has {self.backbones})"
            )

    def _block(self, name: str):
        self._check(name)
        return self._state.blocks[name]

    def dim(self, name: str) -> int:
        return self._block(name).dim

    def identity(self, name: str) -> str:
        return self._block(name).identity

    def dtype(self, name: str) -> str:
        """The stored dtype of ``name``'s embeddings (``float32`` or ``float16``)."""
        return self._block(name).dtype

    def status(self, name: str) -> np.ndarray:
        """(N,) int8: 0 pending, 1 done, 2 failed."""
        return self._block(name).status.copy()

    def done(self, name: str) -> np.ndarray:
        """(N,) bool mask of the images whose ``name`` embedding is done."""
        return self._block(name).status == DONE

    def reasons(self, name: str) -> np.ndarray:
        """(N,) why each row of ``name`` failed ("" where it did not)."""
        return self._block(name).reason.copy()

    def raw_meta(self) -> pd.DataFrame:
        """The metadata as stored: every column text (``meta`` types the numeric extras)."""
        return pd.DataFrame({c: np.asarray(v, dtype=object) for c, v in self._raw_meta.items()})

    def backbone_provenance(self, name: str) -> dict:
        """Spec, layer, weights identity and SHA-256, preprocessing config and fingerprint, ..."""
        b = self._block(name)
        return dict(b.provenance, identity=b.identity)

    # ------------------------------------------------------------------------------ embeddings
    def _rows(self, rows) -> np.ndarray:
        n = len(self.ids)
        if rows is None:
            return np.arange(n, dtype=np.int64)
        if isinstance(rows, slice):
            return np.arange(n, dtype=np.int64)[rows]
        r = np.asarray(rows)
        if r.dtype == bool:
            if r.shape != (n,):
                raise StoreError(f"{self.path}: a row mask needs {n} values, not {r.shape}")
            return np.flatnonzero(r)
        r = r.astype(np.int64, copy=False).reshape(-1)
        if r.size and (r.min() < -n or r.max() >= n):
            raise StoreError(f"{self.path}: row index out of range for {n} rows")
        return np.where(r < 0, r + n, r)

    def array(self, name: str, dtype=np.float32, rows=None) -> np.ndarray:
        """(len(rows), dim) embeddings (all rows by default) in row order of ``ids``.

        ``rows``: indices, a boolean mask or a slice. Rows that are not done are NaN. Only the
        rows asked for are read.
        """
        state = self._live()
        b = self._block(name)
        seg = np.where(b.status == DONE, b.seg, -1)
        return gather(
            len(self.ids),
            seg,
            b.pos,
            self._files,
            emb_dataset(state, name),
            rows=self._rows(rows),
            dtype=np.dtype(dtype),
            tail=(b.dim,),
        )

    def blocks(
        self, name: str, rows=None, block_rows: int | None = None, dtype=np.float32
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterate ``(row_indices, embeddings)`` over ``rows`` (default all) in bounded blocks."""
        b = self._block(name)
        rows = self._rows(rows)
        step = block_rows or slab_rows(b.dim * np.dtype(dtype).itemsize)
        for a in range(0, rows.size, step):
            r = rows[a : a + step]
            yield r, self.array(name, dtype=dtype, rows=r)

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
            x = self.array(n, rows=mask)
            blocks.append(
                pd.DataFrame(
                    x,
                    index=pd.Index(self.ids[mask], name="image_id"),
                    columns=[f"{n}:{i}" for i in range(x.shape[1])],
                )
            )
        return pd.concat(blocks, axis=1)

    # ------------------------------------------------------------------------------ summaries
    @property
    def failures(self) -> pd.DataFrame:
        """One row per failed (image, backbone): image_id, path, backbone, reason."""
        rows = []
        paths = self.meta["path"].to_numpy()
        for name in self.backbones:
            b = self._state.blocks[name]
            for i in np.flatnonzero(b.status == FAILED):
                rows.append(
                    {
                        "image_id": self.ids[i],
                        "path": paths[i],
                        "backbone": name,
                        "reason": str(b.reason[i]),
                    }
                )
        return pd.DataFrame(rows, columns=["image_id", "path", "backbone", "reason"])

    def n_done(self) -> dict:
        return {n: int(self.done(n).sum()) for n in self.backbones}

    def n_pending(self) -> dict:
        return {n: int((self._state.blocks[n].status == PENDING).sum()) for n in self.backbones}

    def pending_shards(self) -> int:
        """Shards of an extraction not merged yet (a running one, or one a rerun will merge)."""
        d = parts_dir(self.path)
        return len(list(d.glob("*.npz"))) if d.is_dir() else 0

    def pending_shard_rows(self) -> int:
        """Rows (images x backbones blocks) held by unmerged shards (read from their id lists)."""
        from .shards import list_shards, shard_header

        total = 0
        for p in list_shards(self.path):
            head = shard_header(p)
            if head is not None:
                total += len(head["ids"])
        return total

    def writing(self) -> bool:
        """True while a featmammo process holds the store's lock (an extraction is running)."""
        from .locking import is_locked

        return is_locked(self.path)

    @property
    def n_segments(self) -> int:
        return sum(1 for sg in self._state.segments if sg.file)

    def nbytes(self) -> int:
        """Bytes on disk of this version: the main file plus the segment files it reads."""
        return store_bytes(self.path, self._state)

    def summary(self) -> dict:
        """What ``featmammo info --json`` prints (and a few more keys the text form uses)."""
        fails = self.failures
        return {
            "path": str(self.path),
            "n_images": len(self.ids),
            "backbones": {n: self.dim(n) for n in self.backbones},
            "n_done": self.n_done(),
            "failed": fails.to_dict(orient="records"),
            "failed_images": int(fails["image_id"].nunique()) if len(fails) else 0,
            "pending_shards": self.pending_shards(),
            "writing": self.writing(),
            "store_uuid": self.uuid,
            "format_version": self.format_version,
            "segments": self.n_segments,
            "provenance": {
                **self.provenance,
                "backbones": {n: self.backbone_provenance(n) for n in self.backbones},
            },
        }


def store_bytes(path, state: State | None = None) -> int:
    """Bytes on disk of the store at ``path``: its main file and every segment file it maps."""
    real = resolve(path)
    if state is None:
        from .index import editing

        with editing(real) as (state, _files):
            pass
    total = real.stat().st_size
    for sg in state.segments:
        if sg.file:
            with contextlib.suppress(OSError):
                total += (real.parent / sg.file).stat().st_size
    return total


def open(path) -> Store:  # noqa: A001 - the contract's name; shadows the builtin here only
    """Open a store for reading (no torch needed). Close it (or use ``with``) when done."""
    return Store(path)
