"""`featmammo fit`: heads on stored embeddings, patient-grouped CV + held-out test, saved models.

:func:`fit` is the library function behind the command. For every features set (each backbone, the
hybrid, ``a+b``) and every head it

1. fuses the store(s) (:func:`featmammo.fusion.fuse`); all features sets are restricted to the
   images usable by every one of them, so every model is scored on the same images and paired
   comparisons are possible;
2. maps labels to the class scheme (:mod:`featmammo.labels`), dropping rows outside it (counted);
3. splits once, for all models: held-out test (``official`` = the manifest's ``split == "test"``
   rows, ``grouped`` = a patient-grouped hold-out, ``none``) and patient-grouped stratified K folds
   on the training part (:mod:`featmammo.splits`); both are audited for shared patients;
4. tunes every head by an inner patient-grouped CV inside each outer fold (``tune="grid"``,
   :mod:`featmammo.tuning`; the same grid and inner splits for every features set; every grid
   point lands in ``tuning.csv``), collects out-of-fold predictions, tunes and refits on the whole
   training part, predicts the test part and saves the model (:func:`featmammo.heads.save`) with a
   sidecar holding everything ``predict`` needs;
Before any fit it refuses embeddings of a ``hybrid:`` checkpoint evaluated on the images that
checkpoint trained or validated on (``allow_trained_embeddings=True`` runs anyway and lists the
features sets in ``config.json["optimistic_features"]``).

5. writes predictions.csv, tuning.csv, images.csv, config.json (with ``caveats`` from
   :func:`caveats_from_stores`) and calls :func:`featmammo.report.write_report`,
   which computes every reported number from predictions.csv.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError, ManifestError
from .hashing import fingerprint
from .store import DONE, FAILED, PENDING

log = logging.getLogger(__name__)

DEFAULT_HEADS = ("logreg", "knn")
LABEL_ORDER = ("normal", "benign", "malignant")
TEST_SPLITS = ("official", "grouped", "none")
MODELS = "models"


@dataclass
class FitResult:
    """What :func:`fit` produced (paths are inside ``run_dir``)."""

    run_dir: Path
    report: Path
    leaderboard: pd.DataFrame = field(repr=False)
    models: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict, repr=False)

    def summary(self) -> dict:
        return {
            "run_dir": str(self.run_dir),
            "report": str(self.report),
            "models": {k: str(v) for k, v in self.models.items()},
            "leaderboard": self.leaderboard.to_dict(orient="records"),
        }


def model_filename(features: str, head: str) -> str:
    """``<features>__<head>.joblib`` with characters unsafe in file names replaced."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{features}__{head}")
    return f"{safe}.joblib"


def store_fingerprint(store) -> str:
    """Short hash of a store's identity: ids, backbone identities and store provenance."""
    return fingerprint(
        {
            "ids": fingerprint([str(i) for i in store.ids]),
            "backbones": {n: store.identity(n) for n in store.backbones},
            "manifest_hash": store.provenance.get("manifest_hash"),
        }
    )


class FiniteStoreView:
    """A store whose ``done`` mask also excludes rows with non-finite embeddings.

    Extraction records NaN/inf embeddings as failed, but a store written by other code may hold
    them as done; such rows are left out (and counted in the report) instead of stopping the run.
    Everything else is delegated to the wrapped store; arrays are read once and cached.
    """

    def __init__(self, store):
        self._store = store
        self._arrays: dict = {}
        self._finite: dict = {}

    def __getattr__(self, name):
        return getattr(self._store, name)

    def _load(self, name: str) -> None:
        if name not in self._arrays:
            x = np.asarray(self._store.array(name))
            self._arrays[name] = x
            self._finite[name] = np.isfinite(x).all(axis=1) if x.size else np.ones(len(x), bool)

    def array(self, name: str, *args, **kwargs):
        self._load(name)
        return self._arrays[name]

    def done(self, name: str) -> np.ndarray:
        self._load(name)
        return np.asarray(self._store.done(name), dtype=bool) & self._finite[name]

    def non_finite(self, name: str) -> np.ndarray:
        """Rows marked done in the store whose embedding holds NaN or inf."""
        self._load(name)
        return np.asarray(self._store.done(name), dtype=bool) & ~self._finite[name]


def _exclusions(views, used: Sequence[str], kept_ids) -> list[dict]:
    """Per store and used backbone: images left out for want of an embedding, with reasons."""
    kept = set(map(str, kept_ids))
    out = []
    for v in views:
        ids = np.asarray(v.ids).astype(str)
        fails = v.failures if hasattr(v, "failures") else pd.DataFrame()
        for name in used:
            if name not in v.backbones:
                continue
            status = np.asarray(v.status(name))
            nonfin = v.non_finite(name) if hasattr(v, "non_finite") else np.zeros(len(ids), bool)
            failed = int((status == FAILED).sum())
            pending = int((status == PENDING).sum())
            n_nonfin = int(nonfin.sum())
            if not (failed or pending or n_nonfin):
                continue
            reasons = {}
            if failed and len(fails):
                f = fails[fails["backbone"] == name]
                reasons = {str(k): int(c) for k, c in f["reason"].value_counts().head(5).items()}
            examples = [i for i in ids[(status != DONE) | nonfin] if i not in kept][:5]
            out.append(
                {
                    "store": str(getattr(v, "path", "")),
                    "backbone": name,
                    "failed": failed,
                    "pending": pending,
                    "non_finite": n_nonfin,
                    "reasons": reasons,
                    "examples": examples,
                }
            )
    return out


def _exclusion_note(rec: dict) -> str:
    parts = []
    if rec["failed"]:
        why = "; ".join(f"{r} (x{c})" for r, c in rec["reasons"].items())
        parts.append(f"{rec['failed']} failed at extraction" + (f": {why}" if why else ""))
    if rec["pending"]:
        parts.append(f"{rec['pending']} never extracted (pending; rerun `featmammo extract`)")
    if rec["non_finite"]:
        parts.append(f"{rec['non_finite']} with a NaN/inf embedding")
    return (
        f"{Path(rec['store']).name} backbone {rec['backbone']}: "
        + ", ".join(parts)
        + f"; left out of every model (e.g. {', '.join(rec['examples'][:3])})"
    )


def _open_stores(stores) -> list:
    from . import store as store_mod

    items = list(stores) if isinstance(stores, (list, tuple)) else [stores]
    if not items:
        raise ConfigError("fit: no store given")
    return [store_mod.open(s) if isinstance(s, (str, Path)) else s for s in items]


def _default_classes(labels: Sequence[str]) -> tuple[str, ...]:
    """The labels present, normalised (featmammo.labels), in the order normal, benign, malignant."""
    from .labels import normalize_label

    present, unknown = set(), {}
    counts = pd.Series([str(v) for v in labels]).value_counts()
    for v in sorted(set(counts.index) - {""}):  # unlabeled rows are dropped later (counted)
        canon = "abnormal" if v.strip().lower() == "abnormal" else normalize_label(v)
        if canon is None:
            unknown[v] = int(counts[v])
        else:
            present.add(canon)
    if unknown:
        raise ManifestError(
            f"label(s) {unknown} (value: number of images) in the store are not known classes "
            f"(known: normal, benign, malignant, abnormal); pass --classes to choose a scheme "
            "(rows outside it are dropped and counted)"
        )
    ordered = [c for c in (*LABEL_ORDER, "abnormal") if c in present]
    return tuple(ordered)


def _map_labels(raw: np.ndarray, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(mapped labels, keep mask): rows the scheme cannot express are dropped, never guessed."""
    from .labels import in_scheme, map_labels

    keep = np.asarray(in_scheme(list(raw), classes), dtype=bool)
    mapped = np.full(len(raw), "", dtype=object)
    if keep.any():
        mapped[keep] = np.asarray(map_labels(list(raw[keep]), classes), dtype=object).astype(str)
    return mapped, keep


def _assign_splits(meta, labels, groups, *, cv, test_split, test_size, seed):
    """Per image: ``fold`` ("1".."k" for training rows, "test" for the held-out rows)."""
    from . import splits

    n = len(labels)
    is_test = np.zeros(n, dtype=bool)
    if test_split == "official":
        if "split" not in meta.columns:
            raise ManifestError("--test-split official: the store has no 'split' column")
        split = meta["split"].astype(str).str.strip().str.lower().to_numpy()
        is_test = split == "test"
        if not is_test.any():
            raise ManifestError(
                "--test-split official: no row has split == 'test' in the store's metadata; "
                "use --test-split grouped (patient-grouped hold-out) or none (CV only)"
            )
    elif test_split == "grouped":
        _, test_idx = splits.grouped_holdout(labels, groups, test_size, seed)
        is_test[np.asarray(test_idx, dtype=int)] = True
    elif test_split != "none":
        raise ConfigError(f"--test-split {test_split!r}: choose one of {TEST_SPLITS}")
    fold = np.where(is_test, "test", "").astype(object)
    train_idx = np.flatnonzero(~is_test)
    _check_trainable(labels[train_idx], groups[train_idx], "the training part", test_split)
    if cv >= 2:
        n_pat = len(set(groups[train_idx]))
        if n_pat < cv:
            raise ConfigError(
                f"--cv {cv}: the training part has only {n_pat} patient(s) "
                f"({len(train_idx)} images); patient-grouped CV needs at least one patient per "
                f"fold: use --cv {n_pat} or fewer"
                + (" (at least 2)" if n_pat < 2 else "")
                + ", or --cv 0 to skip CV"
            )
        folds = splits.grouped_kfold(labels[train_idx], groups[train_idx], cv, seed)
        for k, (_, val) in enumerate(folds, start=1):
            fold[train_idx[np.asarray(val, dtype=int)]] = str(k)
        if (fold[train_idx] == "").any():
            raise ConfigError("grouped_kfold left training rows without a fold")
        for k in range(1, cv + 1):
            rest = train_idx[fold[train_idx] != str(k)]
            _check_trainable(labels[rest], groups[rest], f"CV fold {k}'s training side", None, cv)
    elif cv != 0:
        raise ConfigError(f"--cv {cv}: use 0 (no CV) or at least 2 folds")
    elif test_split == "none":
        raise ConfigError("--cv 0 with --test-split none evaluates nothing")
    return fold


def _check_trainable(labels, groups, where: str, test_split, cv: int | None = None) -> None:
    """ConfigError unless ``labels`` hold at least two classes (a head cannot fit on one)."""
    present = pd.Series(labels).value_counts()
    if len(present) >= 2:
        return
    what = {str(k): int(v) for k, v in present.items()} if len(present) else "no images"
    hint = (
        f"with {len(set(groups))} patient(s) the folds cannot all hold two classes: use fewer "
        "folds (--cv) or --cv 0"
        if cv
        else "use another --test-split (or, for --test-split grouped, a smaller --test-size)"
        if test_split != "none"
        else "the store needs images of at least two classes"
    )
    raise ConfigError(
        f"{where} holds a single class ({what} over {len(set(groups))} patient(s)); no head can "
        f"be fit on one class; {hint}"
    )


def _audits(ids, groups, fold, meta) -> dict:
    """featmammo.splits.audit of the train/test split and the CV folds (shared patients, views)."""
    from . import splits

    df = pd.DataFrame(
        {
            "image_id": ids,
            "patient_id": groups,
            "split": np.where(fold == "test", "test", "train"),
            "fold": np.where(fold == "test", "", fold),
        }
    )
    for col in ("label", "path", "laterality", "view", "source"):
        if col in meta.columns:
            df[col] = meta[col].astype(str).to_numpy()
    report = splits.audit(df, split_col="split", group_col="patient_id")
    d = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    d["ok"] = bool(getattr(report, "ok", d.get("ok", True)))
    if "source" not in meta.columns:  # not checked: None, never {} (which means "checked, clean")
        d["source_confounding"] = None
    return d


@contextlib.contextmanager
def _step(features: str, head: str, what: str, n_train: int):
    """Name the model and fold in any error a head raises (e.g. k-NN with too few rows)."""
    try:
        yield
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"features {features} / head {head}, {what} ({n_train} training images): {exc}"
        ) from exc


def _proba(model, X, classes) -> np.ndarray:
    """predict_proba with columns in ``classes`` order (absent classes get probability 0)."""
    raw = np.asarray(model.predict_proba(X), dtype=float)
    have = [str(c) for c in model.classes_]
    out = np.zeros((len(X), len(classes)))
    for j, c in enumerate(have):
        if c in classes:
            out[:, classes.index(c)] = raw[:, j]
    return out


def _base_params(name, head_params, device, threads=None) -> dict:
    """The fixed parameters of head ``name``: the user's ``head_params`` plus device / threads."""
    from . import heads

    params = dict(head_params.get(name, {}))
    canon = heads.canonical_name(name)
    if canon in ("xgboost", "refine-mlp"):
        params.setdefault("device", device)
    if canon == "xgboost" and threads:
        params.setdefault("n_jobs", int(threads))
    return params


def _make_head(name, seed, blocks, params, block_scaling):
    """The one scaling rule: every features set (one block or several) through BlockScaler."""
    from . import heads

    return heads.make(name, seed=seed, blocks=blocks, balance=block_scaling, **params)


def fit(
    stores,
    run_dir,
    *,
    features: Sequence[str] | None = None,
    heads: Sequence[str] | None = None,
    classes=None,
    cv: int = 5,
    test_split: str = "official",
    test_size: float = 0.2,
    seed: int = 0,
    n_boot: int = 1000,
    threshold: float = 0.5,
    head_params: dict | None = None,
    block_scaling: bool = True,
    device: str = "auto",
    figures: bool = True,
    tune: str = "grid",
    tune_metric: str = "balanced_accuracy",
    inner_cv: int = 3,
    tune_grid="default",
    allow_trained_embeddings: bool = False,
    threads: int | None = 1,
    n_jobs: int = 1,
) -> FitResult:
    """Fit every features x head with patient-grouped CV and a held-out test; write the run folder.

    ``stores``: store paths or opened stores. ``features``: backbone names, ``hybrid`` or ``a+b``
    (default: each backbone + hybrid). ``heads``: head names (default: logreg, knn). ``classes``: a
    scheme for :func:`featmammo.labels.parse_classes` (default: the labels present, ordered
    normal, benign, malignant). ``head_params``: head name -> parameters for ``heads.make``
    (fixed: a parameter given here is not tuned). ``tune``: ``grid`` (nested patient-grouped CV
    with ``inner_cv`` folds on the grids of :mod:`featmammo.tuning`; ``tune_grid``: ``default``,
    ``small`` or a table head -> {param: [values]}; selection by ``tune_metric``) or ``none``
    (fixed defaults). ``allow_trained_embeddings``: evaluate embeddings of a ``hybrid:``
    checkpoint on images it trained on (marked optimistic) instead of refusing. ``threads``: BLAS
    and OpenMP threads while fitting (default 1: the matrices of a fit are small, and idle BLAS
    threads spin-wait; on a busy 2-core machine two threads made logreg ~30x and an SVD ~40x more
    CPU-hungry; None leaves the libraries' own setting); XGBoost gets ``n_jobs=threads``.
    ``n_jobs``: features sets fitted in parallel threads (the results do not depend on it).
    """
    from . import heads as heads_mod
    from . import tuning
    from .fusion import fuse
    from .heads import fit_head
    from .labels import parse_classes
    from .report import write_report

    if test_split not in TEST_SPLITS:
        raise ConfigError(f"--test-split {test_split!r}: choose one of {TEST_SPLITS}")
    if tune not in tuning.TUNE_MODES:
        raise ConfigError(f"--tune {tune!r}: choose one of {', '.join(tuning.TUNE_MODES)}")
    if tune_metric not in tuning.METRICS:
        raise ConfigError(
            f"--tune-metric {tune_metric!r}: choose one of {', '.join(tuning.METRICS)}"
        )
    inner_cv = int(inner_cv)
    if tune == "grid" and inner_cv < 2:
        raise ConfigError(f"--inner-cv {inner_cv}: use at least 2 folds (or --tune none)")
    grids = tuning.resolve_grids(tune_grid) if tune == "grid" else {}
    run_dir = Path(run_dir)
    store_list = [FiniteStoreView(s) for s in _open_stores(stores)]
    backbones = []
    for s in store_list:
        backbones += [b for b in s.backbones if b not in backbones]
    if not backbones:
        raise ConfigError(
            f"fit: the store(s) {[str(s.path) for s in store_list]} hold no backbones"
        )
    if not features:
        features = [*backbones, "hybrid"] if len(backbones) > 1 else list(backbones)
    features = list(dict.fromkeys(features))
    head_names = [heads_mod.canonical_name(h) for h in (heads or DEFAULT_HEADS)]
    head_names = list(dict.fromkeys(head_names))
    head_params = dict(head_params or {})

    fused = {f: fuse(store_list, f) for f in features}
    for f, fz in fused.items():
        if f == "hybrid" and len(fz.blocks) < 2:
            raise ConfigError(
                f"features 'hybrid' needs two backbones; the store(s) hold only {backbones} "
                f"(it would be {list(fz.blocks)} alone under another name)"
            )
    common = set.intersection(*(set(map(str, fz.ids)) for fz in fused.values()))
    notes = []
    for f, fz in fused.items():
        if len(fz.ids) != len(common):
            notes.append(
                f"features {f}: {len(fz.ids) - len(common)} image(s) not usable by every features "
                "set were left out so that all models see the same images"
            )
    ref = fused[features[0]]
    ref_ids = np.asarray(ref.ids).astype(str)
    keep_common = np.isin(ref_ids, sorted(common))
    meta = ref.meta.reset_index(drop=True)[keep_common].reset_index(drop=True)
    ids = ref_ids[keep_common]
    raw_labels = meta["label"].astype(str).to_numpy()
    used = list(dict.fromkeys(b for fz in fused.values() for b in fz.blocks))
    excluded = _exclusions(store_list, used, ids)
    for rec in excluded:
        note = _exclusion_note(rec)
        log.warning("%s", note)
        notes.insert(0, note)

    if not (np.char.strip(raw_labels.astype(str)) != "").any():
        raise ManifestError(
            f"no image of the store(s) {[str(s.path) for s in store_list]} has a label (the "
            f"'label' column is empty for all {len(raw_labels)} usable images); extract from a "
            "labelled manifest (featmammo manifest) to fit"
        )
    classes = tuple(parse_classes(classes)) if classes else _default_classes(raw_labels)
    if len(classes) < 2:
        raise ConfigError(f"fit needs at least two classes; the store has {list(classes)}")
    labels, keep = _map_labels(raw_labels, classes)
    dropped = {}
    if not keep.all():
        vc = pd.Series(raw_labels[~keep]).value_counts()
        dropped = {(str(k) or "(no label)"): int(v) for k, v in vc.items()}
        log.info("class scheme %s: dropped %d row(s) %s", ",".join(classes), (~keep).sum(), dropped)
    ids, labels, meta = ids[keep], labels[keep], meta[keep].reset_index(drop=True)
    groups = meta["patient_id"].astype(str).to_numpy()
    if (groups == "").any():
        raise ManifestError(
            f"{int((groups == '').sum())} image(s) have no patient_id (first: "
            f"{ids[groups == ''][0]}); patient-grouped splits need one for every image"
        )
    fold = _assign_splits(
        meta, labels, groups, cv=cv, test_split=test_split, test_size=test_size, seed=seed
    )
    audit = _audits(ids, groups, fold, meta)
    if not audit["ok"]:
        log.warning("patients shared between the training part and the test part: %s", audit)
        notes.append(
            "the split audit found patients shared between the training and test parts or "
            "between folds (see the audit); those results are optimistic"
        )
    is_test = fold == "test"
    train_counts = pd.Series(labels[~is_test]).value_counts().to_dict()
    optimistic = _trained_embeddings(
        store_list, fused, ids, allow=allow_trained_embeddings
    )  # ConfigError unless allowed
    if optimistic["features"]:
        notes.append(optimistic["reason"])
    if "xgboost" in head_names:
        log.info("xgboost head: device=%s", heads_mod.xgboost_device(device))

    # outer folds, then the final model on the whole training part ("test" in tuning.csv)
    outer = sorted({v for v in fold if v not in ("test", "")}, key=int)
    runs = [*outer, "test"]
    inner_splits = {}
    if tune == "grid":
        for r in runs:
            train = ~is_test if r == "test" else (~is_test & (fold != r))
            inner_splits[r], why = _inner_splits(labels[train], groups[train], inner_cv, seed, r)
            if why:
                note = (
                    f"--tune grid: {why}; its heads ran at their defaults, untuned (tuning.csv: "
                    "params {} with inner_score nan); use fewer --inner-cv or --cv folds"
                )
                log.warning("%s", note)
                notes.append(note)

    final_dir = run_dir
    run_dir = _staging_dir(final_dir)  # the run is written here, then moved in as a whole
    limiter = None
    if threads:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=int(threads))
    try:
        (run_dir / MODELS).mkdir(parents=True)
        stores_info = [
            {"path": str(s.path), "fingerprint": store_fingerprint(s)} for s in store_list
        ]

        def _one_features_set(f):
            """Every head on features set ``f``: (prediction frames, tuning rows, models)."""
            rows, models, tuning_rows = [], {}, []
            fz = fused[f]
            pos = pd.Series(np.arange(len(fz.ids)), index=np.asarray(fz.ids).astype(str))
            X = fz.X[pos.loc[ids].to_numpy()]
            proba = {h: np.full((len(ids), len(classes)), np.nan) for h in head_names}
            for r in runs:
                train = ~is_test if r == "test" else (~is_test & (fold != r))
                target = is_test if r == "test" else (fold == r)
                what = "final fit on the training part" if r == "test" else f"CV fold {r}"
                inner = None
                if tune == "grid" and inner_splits[r] is not None:
                    inner = tuning.InnerCV(
                        X[train], labels[train], groups[train], inner_splits[r],
                        blocks=fz.blocks, balance=block_scaling,
                    )  # fmt: skip
                for h in head_names:
                    log.info("fitting %s / %s, %s", f, h, what)
                    base = _base_params(h, head_params, device, threads)
                    chosen = {}
                    if tune == "grid" and inner is None:  # too small for an inner CV
                        tuning_rows.append({"features": f, "head": h, "fold": r, "params": "{}",
                                            "inner_score": np.nan, "chosen": True})  # fmt: skip
                    if inner is not None:
                        with _step(f, h, f"tuning for {what}", int(train.sum())):
                            chosen, grid_rows = tuning.tune(
                                inner, h, grids.get(h, {}), classes=classes, base=base,
                                metric=tune_metric, seed=seed,
                            )  # fmt: skip
                        tuning_rows += [
                            {"features": f, "head": h, "fold": r, **g} for g in grid_rows
                        ]
                    model = _make_head(h, seed, fz.blocks, {**base, **chosen}, block_scaling)
                    with _step(f, h, what, int(train.sum())):
                        fit_head(model, X[train], labels[train], groups[train])
                    if target.any():
                        with _step(f, h, f"prediction of {what}", int(train.sum())):
                            proba[h][target] = _proba(model, X[target], classes)
                    if r != "test":
                        continue
                    path = heads_mod.save(
                        model,
                        run_dir / MODELS / model_filename(f, h),
                        _sidecar(
                            f, h, fz, classes, stores_info, seed, head_params, block_scaling,
                            train_counts, tuned=chosen, tune=tune,
                        ),
                    )  # fmt: skip
                    models[f"{f}__{h}"] = path
            for h in head_names:
                done = ~np.isnan(proba[h]).any(axis=1)
                y_pred = np.asarray(classes, dtype=object)[np.nan_to_num(proba[h]).argmax(axis=1)]
                part = pd.DataFrame(
                    {
                        "image_id": ids,
                        "patient_id": groups,
                        "fold": fold,
                        "features": f,
                        "head": h,
                        "y_true": labels,
                        "y_pred": y_pred,
                        **{f"p_{c}": proba[h][:, j] for j, c in enumerate(classes)},
                    }
                )
                rows.append(part[done])
            return rows, tuning_rows, models

        if n_jobs > 1 and len(features) > 1:  # features sets in parallel threads
            from concurrent.futures import ThreadPoolExecutor

            biggest_first = sorted(features, key=lambda f: -fused[f].X.shape[1])
            with ThreadPoolExecutor(max_workers=int(n_jobs)) as pool:
                by_name = dict(
                    zip(biggest_first, pool.map(_one_features_set, biggest_first), strict=True)
                )
            done_sets = [by_name[f] for f in features]
        else:
            done_sets = [_one_features_set(f) for f in features]
        rows, models, tuning_rows = [], {}, []
        for f_rows, f_tuning, f_models in done_sets:  # in features order: deterministic files
            rows += f_rows
            tuning_rows += f_tuning
            models.update(f_models)
        if tune == "grid":
            pd.DataFrame(tuning_rows, columns=list(tuning.TUNING_COLUMNS)).to_csv(
                run_dir / "tuning.csv", index=False, na_rep="nan"
            )
        predictions = pd.concat(rows, ignore_index=True)
        predictions.to_csv(run_dir / "predictions.csv", index=False)
        paths = meta["path"].astype(str) if "path" in meta.columns else pd.Series([""] * len(ids))
        pd.DataFrame({"image_id": ids, "path": paths.to_numpy()}).to_csv(
            run_dir / "images.csv", index=False
        )
        config = {
            "command": "fit",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "stores": stores_info,
            "features": features,
            "heads": head_names,
            "head_params": head_params,
            "classes": list(classes),
            "cv": cv,
            "test_split": test_split,
            "test_size": test_size if test_split == "grouped" else None,
            "seed": seed,
            "n_boot": n_boot,
            "threshold": threshold,
            "block_scaling": block_scaling,
            "device": device,
            "threads": threads,
            "n_jobs": n_jobs,
            "n_images": len(ids),
            "n_patients": int(len(set(groups))),
            "dropped_rows": dropped,
            "excluded_rows": excluded,
            "n_images_in_stores": int(len(set().union(*(map(str, s.ids) for s in store_list)))),
            "train_class_counts": {str(k): int(v) for k, v in train_counts.items()},
            "tune": tune,
            "tune_metric": tune_metric if tune == "grid" else None,
            "inner_cv": inner_cv if tune == "grid" else None,
            "tune_grid": grids if tune == "grid" else None,
            "scaling": "BlockScaler: standardise, then each of B blocks / sqrt(B x width)"
            if block_scaling
            else "BlockScaler(balance=False): standardise only",
            "optimistic_features": optimistic["features"],
            "optimistic_reason": optimistic["reason"],
            "caveats": caveats_from_stores(store_list, meta),
            "split_audit": audit,
            "notes": notes,
        }
        (run_dir / "config.json").write_text(json.dumps(config, indent=1, default=str))
        report = write_report(run_dir, figures=figures)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # a failed fit leaves any earlier run intact
        raise
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
    _install_run(run_dir, final_dir)
    run_dir = final_dir
    report = run_dir / report.name
    models = {k: run_dir / MODELS / Path(v).name for k, v in models.items()}
    leaderboard = pd.read_csv(run_dir / "leaderboard.csv")
    return FitResult(
        run_dir=run_dir, report=report, leaderboard=leaderboard, models=models, config=config
    )


#: what a fit writes into RUN_DIR (replaced as a whole by the next fit into the same folder)
RUN_OUTPUTS = ("predictions.csv", "tuning.csv", "images.csv", "config.json", "leaderboard.csv",
               "metrics.json", "report.md", "figures", MODELS)  # fmt: skip


def _staging_dir(final_dir: Path) -> Path:
    """A fresh sibling folder of RUN_DIR to write the run into (same file system: atomic moves)."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    if final_dir.exists() and not final_dir.is_dir():
        raise ConfigError(f"-o {final_dir}: exists and is not a folder")
    staging = final_dir.parent / f".{final_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _install_run(staging: Path, final_dir: Path) -> None:
    """Move a finished run into RUN_DIR, replacing the outputs of an earlier fit there (so no
    stale model or figure of another run sits beside this run's report); other files are kept."""
    final_dir.mkdir(parents=True, exist_ok=True)
    old = [n for n in RUN_OUTPUTS if (final_dir / n).exists()]
    if old:
        log.warning("%s: replacing the outputs of an earlier fit (%s)", final_dir, ", ".join(old))
    for name in old:
        target = final_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    for item in staging.iterdir():
        os.replace(item, final_dir / item.name)
    staging.rmdir()


def _sidecar(
    features, head, fused, classes, stores_info, seed, head_params, block_scaling, counts,
    *, tuned=None, tune="none",
):  # fmt: skip
    provenance = {k: v for k, v in fused.provenance.items() if k != "_stores"}
    return {
        "kind": "featmammo.fit",
        "head": head,
        "head_params": {**head_params.get(head, {}), **(tuned or {})},
        "tuned_params": dict(tuned or {}),
        "tune": tune,
        "features": features,
        "backbones": list(fused.blocks),
        "blocks": {k: [s.start, s.stop] for k, s in fused.blocks.items()},
        "n_features": int(fused.X.shape[1]),
        "classes": list(classes),
        "backbone_provenance": provenance,
        "stores": stores_info,
        "block_stores": fused.provenance.get("_stores", {}),
        "seed": seed,
        "block_scaling": block_scaling,
        "train_class_counts": {str(k): int(v) for k, v in counts.items()},
    }


def _inner_splits(labels, groups, inner_cv: int, seed: int, run):
    """``(folds, None)``: the inner patient-grouped folds of one training part (the same for every
    features set), or ``(None, reason)`` when that part is too small for them."""
    from . import splits

    n_pat = len(set(groups))
    where = "the training part" if run == "test" else f"CV fold {run}'s training side"
    if n_pat < inner_cv:
        return None, f"{where} has {n_pat} patient(s), fewer than --inner-cv {inner_cv}"
    folds = splits.grouped_kfold(labels, groups, inner_cv, seed)
    for i, (tr, _) in enumerate(folds, start=1):
        if len(set(labels[tr])) < 2:
            return None, f"inner fold {i} of {where} ({n_pat} patients) trains on a single class"
    return folds, None


def _hybrid_blocks(store_list, used) -> dict:
    """backbone name -> checkpoint path for the ``hybrid:`` blocks among ``used``."""
    out = {}
    for name in used:
        for s in store_list:
            if name not in s.backbones:
                continue
            prov = s.backbone_provenance(name) or {}
            spec = prov.get("spec") or {}
            if not (str(name).startswith("hybrid:") or spec.get("arch") == "hybridnet"):
                break
            from .nn.checkpoint import checkpoint_of  # torch-free JSON reading, only when needed

            path = checkpoint_of(prov)
            if path is not None:
                out[name] = path
            break
    return out


def _trained_embeddings(store_list, fused, ids, *, allow: bool) -> dict:
    """Refuse (ConfigError) features sets whose ``hybrid:`` embeddings were trained on images this
    run evaluates; with ``allow`` return them as ``{"features": [...], "reason": str}``."""
    used = list(dict.fromkeys(b for fz in fused.values() for b in fz.blocks))
    ckpts = _hybrid_blocks(store_list, used)
    if not ckpts:
        return {"features": [], "reason": None}
    from .nn.checkpoint import trained_image_ids

    run_ids = set(map(str, ids))
    overlap = {}
    for name, path in ckpts.items():
        seen = trained_image_ids(path)
        n_train = len(run_ids & set(seen["train"]))
        n_val = len(run_ids & set(seen["validation"]))
        if n_train or n_val:
            overlap[name] = (path, n_train, n_val)
    if not overlap:
        return {"features": [], "reason": None}
    said = "; ".join(
        f"{name}: checkpoint {path} trained on {a} and validated on {b} of the {len(run_ids)} "
        "images this run evaluates"
        for name, (path, a, b) in overlap.items()
    )
    if not allow:
        raise ConfigError(
            f"trained embeddings: {said}. Its embeddings of those images are fitted to their "
            "labels, so cross-validating on them is optimistic; fit on images the checkpoint never "
            "saw (e.g. its test split) or pass --allow-trained-embeddings to run anyway (the rows "
            "are marked optimistic)"
        )
    feats = [f for f, fz in fused.items() if set(fz.blocks) & set(overlap)]
    reason = (
        f"optimistic: {said}; features {', '.join(feats)} are evaluated on images their "
        "embeddings were trained on (--allow-trained-embeddings)"
    )
    log.warning("%s", reason)
    return {"features": feats, "reason": reason}


def _weights_caveat(name: str, prov: dict) -> str:
    from .report.caveats import describe_weights

    spec = prov.get("spec") or {}
    return describe_weights(
        spec.get("weights") or prov.get("weights"),
        prov.get("weights_sha256") or spec.get("weights_sha256"),
        seed=spec.get("seed", prov.get("seed")),
        hybrid=str(name).startswith("hybrid:") or spec.get("arch") == "hybridnet",
    )


def caveats_from_stores(stores, meta: pd.DataFrame) -> dict:
    """``{"weights": {backbone: str}, "sources": {source: n_images}, "warnings": [str]}`` for
    ``config.json["caveats"]`` (INTERFACES I2): how every backbone's weights were obtained, where
    the run's images come from, and warnings a reader of the results must see (random weights,
    a label that comes from one source only, no source column)."""
    weights, warnings = {}, []
    for s in stores:
        for name in s.backbones:
            if name in weights:
                continue
            weights[name] = _weights_caveat(name, dict(s.backbone_provenance(name) or {}))
    random = [n for n, w in weights.items() if w.startswith("random")]
    if random:
        warnings.append(
            f"backbone(s) {', '.join(random)} ran with random weights: the embeddings carry no "
            "learnt image features and the results say nothing about real backbones "
            "(`featmammo weights fetch NAME` gets torchvision's ImageNet weights)"
        )
    sources = {}
    if "source" in meta.columns:
        col = meta["source"].fillna("").astype(str).replace("", "(none)")
        sources = {str(k): int(v) for k, v in col.value_counts().items()}
        if "label" in meta.columns and len(sources) > 1:
            by_label = meta.assign(_s=col).groupby("label")["_s"].unique()
            for label, srcs in by_label.items():
                others = col[meta["label"] != label]
                if len(srcs) == 1 and not (others == srcs[0]).any():
                    warnings.append(
                        f"every {label!r} image comes from source {srcs[0]!r} and no other label "
                        "does: a head can learn the acquisition instead of the pathology"
                    )
    else:
        warnings.append("the store has no 'source' column: source confounding was not checked")
    return {"weights": weights, "sources": sources, "warnings": warnings}
