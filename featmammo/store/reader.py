"""Reading a store: :class:`Store` (metadata at open, arrays on demand), :func:`open`. No torch."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..errors import StoreError
from .schema import DONE, FAILED, FORMAT, FORMAT_VERSION, backbone_key, parts_dir


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
    replace would leave stale. A context manager too (``with featmammo.store.open(p) as s:``):
    leaving the block closes the store; what was loaded at open (ids, meta, provenance, status)
    stays readable, reading arrays from the file then raises StoreError.
    """

    _closed = False

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

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return False

    def close(self) -> None:
        """Close the store: no file handle is kept between calls, so this only marks it closed."""
        self._closed = True

    def _h5(self):
        if self._closed:
            raise StoreError(f"{self.path}: store is closed")
        return h5py.File(self.path, "r")

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
        with self._h5() as f:
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
        with self._h5() as f:
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
