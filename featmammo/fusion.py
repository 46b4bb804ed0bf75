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
    #: images this features set alone could use (``fuse_many`` keeps those every set can use)
    n_usable: int | None = None

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
    store_list = _store_list(stores)
    names = resolve_features(features, _available(store_list))
    return _fuse(store_list, names, features, require_same_preprocess, check_blocks=True)


def _store_list(stores) -> list:
    store_list = list(stores) if isinstance(stores, (list, tuple)) else [stores]
    if not store_list:
        raise ConfigError("fuse: no stores given")
    return store_list


def _available(store_list) -> list[str]:
    available: list[str] = []
    for s in store_list:
        for b in s.backbones:
            if b not in available:
                available.append(b)
    return available


def _fuse(store_list, names, features, require_same_preprocess, *, check_blocks) -> FusedFeatures:
    """:func:`fuse` of resolved ``names`` (``check_blocks``: their preprocessing must agree)."""
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

    if check_blocks:
        _check_preprocess(store_list, names, sources, provenance, require_same_preprocess)

    # per backbone: id -> (store index, row) for done rows; first store wins on duplicates
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

    # gather blocks straight into the one output matrix: rows are read in bounded blocks (only
    # the rows kept), so memory is the result plus one block, not the stores' matrices too
    blocks: dict[str, slice] = {}
    dims = {}
    for name in names:
        got = {
            int(store_list[si].dim(name)) if hasattr(store_list[si], "dim") else None
            for si in sources[name]
        }
        got.discard(None)
        if len(got) > 1:
            raise StoreError(f"backbone {name!r}: stores disagree on the dimension ({sorted(got)})")
        dims[name] = got.pop() if got else None
    X = None
    col = 0
    for name in names:
        loc = located[name]
        dim = dims[name]
        for si in sources[name]:
            pos = np.array([k for k, i in enumerate(ids_sorted) if loc[i][0] == si], dtype=np.int64)
            if not pos.size:
                continue
            rows = np.array([loc[ids_sorted[k]][1] for k in pos], dtype=np.int64)
            for p_blk, x_blk in _row_blocks(store_list[si], name, rows, pos):
                if dim is None:
                    dim = x_blk.shape[1]
                elif x_blk.shape[1] != dim:
                    raise StoreError(
                        f"backbone {name!r}: stores disagree on the dimension "
                        f"({sorted({dim, x_blk.shape[1]})})"
                    )
                if X is None or X.shape[1] < col + dim:
                    X = _widen(X, len(ids_sorted), col + dim + _rest_dims(names, name, dims))
                bad = ~np.isfinite(x_blk).all(axis=1)
                if bad.any():
                    raise StoreError(
                        f"backbone {name!r}: non-finite embedding for done image id(s) "
                        f"{list(ids_sorted[p_blk[bad]][:5])}"
                    )
                X[p_blk, col : col + dim] = x_blk
        blocks[name] = slice(col, col + dim)
        col += dim
    X = X[:, :col] if X.shape[1] != col else X

    meta = _joined_meta(store_list, ids_sorted, strict_files=require_same_preprocess)
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


def fuse_many(
    stores: Any | Sequence[Any],
    features: Sequence[str],
    *,
    require_same_preprocess: bool = True,
) -> dict[str, FusedFeatures]:
    """Several features sets of the same stores, sharing one matrix (``fit``'s case).

    Returns ``{features string: FusedFeatures}``. Every result has the same rows: the ids done
    for every backbone any set uses (``n_usable`` says how many the set alone could use). The
    backbones are read once into one matrix ordered so that each set's blocks are contiguous
    where possible; each result's ``X`` is then a view of its columns (no copy): resnet50,
    alexnet and their hybrid together hold the hybrid's bytes once, not twice. A set whose
    blocks cannot be contiguous gets its own copy. Checks are those of :func:`fuse`, per set.
    """
    store_list = _store_list(stores)
    available = _available(store_list)
    sets = {f: resolve_features(f, available) for f in dict.fromkeys(features)}
    if not sets:
        raise ConfigError("fuse_many: no features sets given")
    union: list[str] = []
    for f in sorted(sets, key=lambda f: -len(sets[f])):  # the widest set's order first
        union += [n for n in sets[f] if n not in union]
    whole = _fuse(store_list, union, "+".join(union), require_same_preprocess, check_blocks=False)
    out = {}
    for f, names in sets.items():
        sources = {n: [i for i, s in enumerate(store_list) if n in s.backbones] for n in names}
        _check_preprocess(store_list, names, sources, whole.provenance, require_same_preprocess)
        spans = [whole.blocks[n] for n in names]
        if all(a.stop == b.start for a, b in zip(spans, spans[1:], strict=False)):
            X = whole.X[:, spans[0].start : spans[-1].stop]  # a view
        else:
            X = np.concatenate([whole.X[:, sl] for sl in spans], axis=1)
        blocks, col = {}, 0
        for n, sl in zip(names, spans, strict=True):
            blocks[n] = slice(col, col + (sl.stop - sl.start))
            col = blocks[n].stop
        prov = {n: whole.provenance[n] for n in names}
        prov["_stores"] = {n: whole.provenance["_stores"][n] for n in names}
        usable = set.intersection(*(_done_ids(store_list, n) for n in names))
        out[f] = FusedFeatures(
            ids=whole.ids,
            X=X,
            meta=whole.meta,
            blocks=blocks,
            provenance=prov,
            features=f,
            n_usable=len(usable),
        )
    return out


def _done_ids(store_list, name: str) -> set:
    ids = set()
    for s in store_list:
        if name in s.backbones:
            ids |= set(np.asarray(s.ids).astype(str)[np.asarray(s.done(name), dtype=bool)])
    return ids


def prepared_pixels(prov: Mapping | None) -> str | None:
    """The fingerprint of the prepared pixels of a block made with ``normalize='backbone'``.

    Such a block normalises with its own backbone's mean/std, so two backbones of one extraction
    setting differ in the full preprocessing fingerprint although they saw the same pixels. None
    unless the recorded config is ``normalize='backbone'`` and recomputes to the recorded
    fingerprint (made by this preprocessing recipe version: pixels of another version may differ).
    """
    cfg = _lookup(prov, ["preprocess"])
    recorded = preprocess_fingerprint(prov)
    if not isinstance(cfg, Mapping) or cfg.get("normalize") != "backbone" or recorded is None:
        return None
    from .errors import FeatmammoError
    from .preprocess import PreprocessConfig

    try:
        config = PreprocessConfig.from_dict(dict(cfg))
    except (FeatmammoError, TypeError, ValueError):
        return None
    if config.fingerprint() != recorded:
        return None
    return config.prepared_fingerprint()


def _check_preprocess(store_list, names, sources, provenance, require_same_preprocess) -> None:
    """Blocks of different backbones must share one preprocessing fingerprint (or, under
    ``normalize='backbone'``, the same prepared pixels: each then normalises its own way)."""
    fps = {n: preprocess_fingerprint(provenance[n]) for n in names}
    pixels = {n: prepared_pixels(provenance[n]) for n in names}
    if len(names) > 1:
        first = names[0]
        for n in names[1:]:
            if fps[n] != fps[first] and pixels[n] is not None and pixels[n] == pixels[first]:
                continue  # the same pixels, each block normalised for its own backbone
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


def _row_blocks(store: Any, name: str, rows: np.ndarray, pos: np.ndarray):
    """``(positions, embeddings)`` of store ``rows`` in bounded blocks, read in row order.

    Uses ``store.blocks(name, rows=...)`` (featmammo stores); any other object needs
    ``array(name)`` only (the whole matrix, then the rows).
    """
    order = np.argsort(rows, kind="stable")
    rows, pos = rows[order], pos[order]
    reader = getattr(store, "blocks", None)
    if reader is None:
        yield pos, np.asarray(store.array(name), dtype=np.float32)[rows]
        return
    done = 0
    for r, x in reader(name, rows=rows):
        yield pos[done : done + len(r)], np.asarray(x, dtype=np.float32)
        done += len(r)


def _rest_dims(names, current, dims) -> int:
    after = names[names.index(current) + 1 :]
    return sum(dims.get(n) or 0 for n in after)


def _widen(X, n: int, width: int) -> np.ndarray:
    """The output matrix, allocated once when every width is known (grown only if one was not)."""
    out = np.empty((n, width), dtype=np.float32)
    if X is not None:
        out[:, : X.shape[1]] = X
    return out


def _joined_meta(
    store_list: Sequence[Any], ids: np.ndarray, *, strict_files: bool = True
) -> pd.DataFrame:
    """Metadata for ``ids``: the first store holding an id supplies its row; labels must agree,
    and file identities (``strict_files=False``, fuse's opt-out of the preprocessing check:
    a warning; a ``--roi crop`` run's identity also covers the mask a ``full`` run's does not)."""
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
        if "file_identity" in allm.columns:
            # the same id embedded from other file contents (a file replaced between the two
            # extractions): one row would join embeddings of two different images
            from .store.schema import MASK_PART  # the image files' part: masks are per entry

            fid = want["file_identity"].fillna("").astype(str).str.partition(MASK_PART)[0]
            fid = fid.replace("", np.nan)
            nval = fid.groupby(level=0).nunique(dropna=True)
            conflict = nval[nval > 1]
            if len(conflict):
                first = conflict.index[0]
                where = [
                    _store_name(store_list[int(k)], int(k))
                    for k in want.loc[[first], "_store"].tolist()
                ]
                msg = (
                    f"image id {first!r} was embedded from different file contents in "
                    f"{' and '.join(dict.fromkeys(where))} (file_identity differs: its file "
                    f"changed between the extractions); {len(conflict)} id(s) differ. Rerun "
                    "featmammo extract into each store with the current manifest (changed images "
                    "are embedded again), then fuse"
                )
                if strict_files:
                    raise StoreError(msg)
                log.warning("%s; fusing anyway (require_same_preprocess=False)", msg)
    allm = allm[~allm.index.duplicated(keep="first")]
    meta = allm.reindex(pd.Index(ids.astype(str), name="image_id")).drop(columns="_store")
    return meta


# the per-block transformers moved to featmammo.heads.scaling (they belong to the heads' pipelines);
# they stay importable from here, and models pickled with featmammo.fusion.BlockScaler still load
from .heads.scaling import BlockPCA, BlockScaler, _normalise_blocks  # noqa: E402, F401
