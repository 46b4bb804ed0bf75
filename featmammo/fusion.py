"""Fusion: the hybrid representation, i.e. backbone blocks of one or more stores joined by image id.

This module owns

* :func:`fuse` -- turns ``Store`` objects (``featmammo.store.open``) into one float32 matrix whose
  columns are the concatenated backbone blocks. Rows are joined on the image id, never on row
  order: an image is kept only when it is *done* for every requested backbone (inner join; the
  number of dropped ids is logged). Output rows are sorted by image id so the result does not depend
  on how the stores happen to be ordered.
* the provenance checks that keep fusion honest: blocks made with different preprocessing
  (different preprocess fingerprints) are refused, and the same backbone name found in two stores
  with different weights/layer/preprocessing is refused (:class:`~featmammo.errors.StoreError`
  naming both stores, the backbones and the fingerprints).
* :class:`BlockScaler` and :class:`BlockPCA` -- scikit-learn transformers that scale or reduce each
  block separately. They live inside a head's Pipeline (``featmammo.heads.make(...,
  blocks=...)``) so their statistics are learnt on the training fold only: nothing leaks across
  folds.

No torch here: fusing stored embeddings needs numpy and pandas only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError, StoreError
from .hashing import fingerprint

log = logging.getLogger(__name__)

#: The classic hybrid of the literature this project reproduces.
HYBRID_DEFAULT = ("resnet50", "alexnet")


@dataclass
class FusedFeatures:
    """Fused embeddings: one row per image id, blocks side by side.

    ``ids``: image ids (sorted); ``X``: (N, D) float32; ``meta``: per-image metadata aligned with
    ``ids`` (index = ids); ``blocks``: backbone name -> column slice of ``X``; ``provenance``:
    backbone name -> that backbone's provenance dict (plus ``"_stores"``: the store of each block).
    """

    ids: np.ndarray
    X: np.ndarray
    meta: pd.DataFrame
    blocks: dict[str, slice]
    provenance: dict[str, Any] = field(default_factory=dict)
    features: str = ""

    @property
    def backbones(self) -> list[str]:
        return list(self.blocks)

    def column(self, name: str) -> np.ndarray:
        """One metadata column as an array aligned with ``ids`` (StoreError if absent)."""
        if name not in self.meta.columns:
            raise StoreError(
                f"fused features ({self.features}): no metadata column {name!r}; "
                f"have {list(self.meta.columns)}"
            )
        return self.meta[name].to_numpy()

    @property
    def y(self) -> np.ndarray:
        """The ``label`` column."""
        return self.column("label")

    @property
    def groups(self) -> np.ndarray:
        """The ``patient_id`` column (the grouping for patient-disjoint splits)."""
        return self.column("patient_id")

    def fingerprint(self) -> str:
        """A short hash of the ids, block layout and backbone provenance (for model sidecars)."""
        return fingerprint(
            {
                "ids": [str(i) for i in self.ids],
                "blocks": {k: [s.start, s.stop] for k, s in self.blocks.items()},
                "provenance": {k: v for k, v in self.provenance.items() if k != "_stores"},
            }
        )

    def block_bounds(self) -> dict[str, tuple[int, int]]:
        """``blocks`` as JSON-friendly ``(start, stop)`` pairs."""
        return {k: (s.start, s.stop) for k, s in self.blocks.items()}


# --------------------------------------------------------------------------------------------------
# feature-string resolution


def resolve_features(features: str, available: Sequence[str]) -> list[str]:
    """Backbone names that a ``features`` string asks for.

    ``"resnet50"`` -> that backbone; ``"hybrid"`` -> resnet50+alexnet when both are available, else
    every available backbone (logged); ``"a+b+c"`` -> those backbones in that order.
    """
    available = list(available)
    if not isinstance(features, str) or not features.strip():
        raise ConfigError(f"features must be a non-empty string; got {features!r}")
    spec = features.strip()
    if spec in available:  # exact backbone name first (names like hybrid:/a+b/ckpt.pt stay whole)
        return [spec]
    if spec == "hybrid":
        if all(b in available for b in HYBRID_DEFAULT):
            return list(HYBRID_DEFAULT)
        if not available:
            raise ConfigError("features 'hybrid': the store(s) hold no backbones")
        log.info(
            "features 'hybrid': %s not all present; using every backbone: %s",
            "+".join(HYBRID_DEFAULT),
            "+".join(available),
        )
        return available
    names = [p.strip() for p in spec.split("+")]
    if any(not n for n in names):
        raise ConfigError(f"features {features!r}: empty backbone name between '+'")
    missing = [n for n in names if n not in available]
    if missing:
        raise ConfigError(
            f"features {features!r}: backbone(s) {missing} not in the store(s); "
            f"available: {available} (or 'hybrid')"
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"features {features!r}: backbone(s) {dupes} requested twice")
    return names


# --------------------------------------------------------------------------------------------------
# provenance helpers (tolerant of where the store puts each key)


def _lookup(prov: Mapping | None, keys: Sequence[str], nests: Sequence[str] = ()) -> Any:
    if not isinstance(prov, Mapping):
        return None
    for k in keys:
        if prov.get(k) not in (None, ""):
            return prov[k]
    for n in nests:
        sub = prov.get(n)
        if isinstance(sub, Mapping):
            for k in keys:
                if sub.get(k) not in (None, ""):
                    return sub[k]
    return None


def preprocess_fingerprint(prov: Mapping | None) -> str | None:
    """The preprocessing fingerprint recorded in a backbone's provenance (None when absent)."""
    fp = _lookup(prov, ["preprocess_fingerprint"])
    if fp is None:
        fp = _lookup(prov, ["fingerprint"], nests=["preprocess", "preprocess_config"])
    if fp is None:
        cfg = _lookup(prov, ["preprocess", "preprocess_config"])
        if isinstance(cfg, Mapping) and cfg:
            fp = "config:" + fingerprint(dict(cfg))
    return None if fp is None else str(fp)


def weights_identity(prov: Mapping | None) -> dict[str, Any]:
    """What identifies a backbone's weights: weights name/path, SHA-256, layer, architecture."""
    return {
        "weights": _lookup(prov, ["weights"], nests=["spec"]),
        "sha256": _lookup(prov, ["weights_sha256", "sha256"], nests=["spec"]),
        "layer": _lookup(prov, ["layer"], nests=["spec"]),
        "arch": _lookup(prov, ["arch"], nests=["spec"]),
    }


def _store_name(store: Any, index: int) -> str:
    path = getattr(store, "path", None)
    return str(path) if path is not None else f"store #{index}"


def _provenance_of(store: Any, name: str) -> dict:
    getter = getattr(store, "backbone_provenance", None)
    if getter is None:
        return {}
    prov = getter(name)
    return dict(prov) if isinstance(prov, Mapping) else {}


# --------------------------------------------------------------------------------------------------
# fuse


def fuse(
    stores: Any | Sequence[Any],
    features: str = "hybrid",
    *,
    require_same_preprocess: bool = True,
) -> FusedFeatures:
    """Concatenate backbone blocks from one or more stores, joined by image id.

    ``stores``: a Store (``featmammo.store.open``) or a list of them; any object with ``ids``,
    ``meta``, ``backbones``, ``array(name)``, ``done(name)`` and ``backbone_provenance(name)``
    works.
    ``features``: a backbone name, ``"hybrid"`` or ``"a+b+c"`` (see :func:`resolve_features`).

    Only ids done for every requested backbone are kept (inner join; dropped ids are counted in the
    log). The same backbone in several stores is merged only when its weights identity and
    preprocessing agree; blocks of different backbones must share one preprocess fingerprint unless
    ``require_same_preprocess=False`` (then the mismatch is logged as a warning).
    """
    store_list = list(stores) if isinstance(stores, (list, tuple)) else [stores]
    if not store_list:
        raise ConfigError("fuse: no stores given")

    available: list[str] = []
    for s in store_list:
        for b in s.backbones:
            if b not in available:
                available.append(b)
    names = resolve_features(features, available)

    # per backbone: the stores that hold it; same name in two stores must have the same provenance
    sources: dict[str, list[int]] = {}
    provenance: dict[str, Any] = {}
    for name in names:
        holders = [i for i, s in enumerate(store_list) if name in s.backbones]
        ref_prov = _provenance_of(store_list[holders[0]], name)
        for j in holders[1:]:
            prov = _provenance_of(store_list[j], name)
            a = (weights_identity(ref_prov), preprocess_fingerprint(ref_prov))
            b = (weights_identity(prov), preprocess_fingerprint(prov))
            if a != b:
                first_store = _store_name(store_list[holders[0]], holders[0])
                raise StoreError(
                    f"backbone {name!r} appears in {first_store} "
                    f"and {_store_name(store_list[j], j)} with different provenance "
                    f"(weights {a[0]} fingerprint {a[1]} vs weights {b[0]} fingerprint {b[1]}); "
                    "refusing to merge embeddings from different models or preprocessing"
                )
        sources[name] = holders
        provenance[name] = ref_prov

    # preprocessing must agree across blocks of different backbones
    fps = {n: preprocess_fingerprint(provenance[n]) for n in names}
    if len(names) > 1:
        first = names[0]
        for n in names[1:]:
            if fps[n] != fps[first] or fps[n] is None:
                where_a = _store_name(store_list[sources[first][0]], sources[first][0])
                where_b = _store_name(store_list[sources[n][0]], sources[n][0])
                msg = (
                    f"preprocessing differs between {where_a} backbone {first!r} "
                    f"(fingerprint {fps[first]}) and {where_b} backbone {n!r} "
                    f"(fingerprint {fps[n]})"
                )
                if fps[n] is None or fps[first] is None:
                    msg = msg.replace("differs", "cannot be verified (missing fingerprint)")
                if require_same_preprocess:
                    raise StoreError(msg + "; re-extract with one preprocessing config")
                log.warning("%s; fusing anyway (require_same_preprocess=False)", msg)

    # per backbone: id -> (store index, row) for done rows; first store wins on duplicates
    located: dict[str, dict[str, tuple[int, int]]] = {}
    all_ids: set[str] = set()
    for name in names:
        loc: dict[str, tuple[int, int]] = {}
        duplicate = 0
        for si in sources[name]:
            s = store_list[si]
            ids = np.asarray(s.ids).astype(str)
            done = np.asarray(s.done(name), dtype=bool)
            if done.shape != ids.shape:
                raise StoreError(
                    f"{_store_name(s, si)}: backbone {name!r} done mask has {done.shape[0]} rows "
                    f"for {ids.shape[0]} ids"
                )
            for row in np.flatnonzero(done):
                key = ids[row]
                if key in loc:
                    duplicate += 1
                    continue
                loc[key] = (si, int(row))
        if duplicate:
            log.info(
                "backbone %s: %d id(s) done in more than one store; using the first",
                name,
                duplicate,
            )
        located[name] = loc
    for s in store_list:
        all_ids.update(np.asarray(s.ids).astype(str).tolist())

    keep = set.intersection(*(set(located[n]) for n in names))
    ids_sorted = np.array(sorted(keep), dtype=object)
    dropped = len(all_ids) - len(keep)
    if dropped:
        per = {n: len(all_ids) - len(located[n]) for n in names}
        log.warning(
            "fuse %s: kept %d id(s), dropped %d not done for every backbone "
            "(missing per backbone: %s)",
            "+".join(names),
            len(keep),
            dropped,
            per,
        )
    if not len(ids_sorted):
        raise StoreError(
            f"fuse {'+'.join(names)}: no image id is done for every requested backbone "
            f"in {[_store_name(s, i) for i, s in enumerate(store_list)]}"
        )

    # gather blocks (one array read per store and backbone)
    blocks: dict[str, slice] = {}
    parts: list[np.ndarray] = []
    col = 0
    for name in names:
        loc = located[name]
        arrays = {si: np.asarray(store_list[si].array(name)) for si in sources[name]}
        dims = {a.shape[1] for a in arrays.values()}
        if len(dims) != 1:
            raise StoreError(
                f"backbone {name!r}: stores disagree on the dimension ({sorted(dims)})"
            )
        dim = dims.pop()
        block = np.empty((len(ids_sorted), dim), dtype=np.float32)
        for si, arr in arrays.items():
            pos = [k for k, i in enumerate(ids_sorted) if loc[i][0] == si]
            if pos:
                rows = [loc[ids_sorted[k]][1] for k in pos]
                block[pos] = arr[rows]
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            raise StoreError(
                f"backbone {name!r}: non-finite embedding for done image id(s) "
                f"{list(ids_sorted[bad][:5])}"
            )
        parts.append(block)
        blocks[name] = slice(col, col + dim)
        col += dim
    X = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    meta = _joined_meta(store_list, ids_sorted)
    provenance["_stores"] = {n: [_store_name(store_list[i], i) for i in sources[n]] for n in names}
    log.info("fused %s: %d images x %d features", "+".join(names), X.shape[0], X.shape[1])
    return FusedFeatures(
        ids=ids_sorted.astype(str),
        X=np.ascontiguousarray(X, dtype=np.float32),
        meta=meta,
        blocks=blocks,
        provenance=provenance,
        features=features,
    )


def _joined_meta(store_list: Sequence[Any], ids: np.ndarray) -> pd.DataFrame:
    """Metadata for ``ids``: the first store holding an id supplies its row; labels must agree."""
    frames = []
    for si, s in enumerate(store_list):
        m = s.meta
        if m is None:
            continue
        m = m.copy()
        m.index = pd.Index(np.asarray(s.ids).astype(str), name="image_id")
        if "image_id" in m.columns:
            m = m.drop(columns="image_id")
        m["_store"] = si
        frames.append(m)
    if not frames:
        return pd.DataFrame(index=pd.Index(ids.astype(str), name="image_id"))
    allm = pd.concat(frames, axis=0, sort=False)
    # label, patient and split drive the classes, the grouping and the held-out test: two stores
    # that disagree on them for one image cannot be fused (the first store would silently win)
    checked = [c for c in ("label", "patient_id", "split") if c in allm.columns]
    if checked and len(frames) > 1:
        want = allm[allm.index.isin(set(ids))]
        for col in checked:
            nval = want.groupby(level=0)[col].nunique(dropna=True)
            conflict = nval[nval > 1]
            if len(conflict):
                first = conflict.index[0]
                values = want.loc[[first], col].tolist()
                raise StoreError(
                    f"image id {first!r} has different {col} values in different stores "
                    f"({values}); {len(conflict)} id(s) conflict"
                )
    allm = allm[~allm.index.duplicated(keep="first")]
    meta = allm.reindex(pd.Index(ids.astype(str), name="image_id")).drop(columns="_store")
    return meta


# the per-block transformers moved to featmammo.heads.scaling (they belong to the heads' pipelines);
# they stay importable from here, and models pickled with featmammo.fusion.BlockScaler still load
from .heads.scaling import BlockPCA, BlockScaler, _normalise_blocks  # noqa: E402, F401
