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

The parts live beside it in the ``featmammo.fit`` package, one concern each (every name stays
importable from ``featmammo.fit``): :mod:`featmammo.fit.stores` (store views, exclusions),
:mod:`featmammo.fit.splits` (split assignment, audits, inner folds), :mod:`featmammo.fit.caveats`
(caveats, trained-embeddings check), :mod:`featmammo.fit.outputs` (run folder staging/install,
model files, sidecar); :mod:`featmammo.fit.predict` applies a saved model to new data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, ManifestError
from .caveats import (  # noqa: F401  (re-exported: featmammo.fit keeps every name)
    _hybrid_blocks,
    _trained_embeddings,
    _weights_caveat,
    caveats_from_stores,
)
from .outputs import (  # noqa: F401
    MODELS,
    RUN_OUTPUTS,
    _install_run,
    _sidecar,
    _staging_dir,
    model_filename,
)
from .splits import (  # noqa: F401
    TEST_SPLITS,
    _assign_splits,
    _audits,
    _check_trainable,
    _inner_splits,
    _repeat_folds,
)
from .stores import (  # noqa: F401
    FiniteStoreView,
    _exclusion_note,
    _exclusions,
    _open_stores,
    store_fingerprint,
)

log = logging.getLogger("featmammo.fit")

DEFAULT_HEADS = ("logreg", "knn")
LABEL_ORDER = ("normal", "benign", "malignant")
#: below this many patients in the CV's smallest class, --cv-repeats > 1 is warned about: the
#: corrected resampled t over repeated folds ran hot there (benchmarks/null_calibration.py: 5 x 5
#: folds rejected 8.2%/11.4% at 10 patients per class, 5.6%/9.4% at 20, 6.0%/5.0% at 40)
CV_REPEATS_MIN_PATIENTS_PER_CLASS = 40


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


def _default_classes(labels: Sequence[str]) -> tuple[str, ...]:
    """The labels present, normalised (featmammo.labels), in the order normal, benign, malignant."""
    from ..labels import normalize_label

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
    from ..labels import in_scheme, map_labels

    keep = np.asarray(in_scheme(list(raw), classes), dtype=bool)
    mapped = np.full(len(raw), "", dtype=object)
    if keep.any():
        mapped[keep] = np.asarray(map_labels(list(raw[keep]), classes), dtype=object).astype(str)
    return mapped, keep


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


def _record_fit_notes(model, features, head, fold, tune, tuning_rows, notes) -> None:
    """What a fit could not do (early stopping skipped for want of patients): on the chosen
    tuning.csv row of that features/head/fold with ``--tune grid``, else a run note."""
    from .. import tuning
    from ..heads import fit_notes

    if tune == "grid":
        refit = tuning.refit_note(model)
        if refit:
            for row in tuning_rows:
                if (row["features"], row["head"], row["fold"], bool(row["chosen"])) == (
                    features, head, fold, True,
                ):  # fmt: skip
                    tuning.add_note(row, refit)
        return
    for n in fit_notes(model):
        text = f"{head} ({features}): {n}"
        if text not in notes:
            notes.append(text)


def _base_params(name, head_params, device, threads=None) -> dict:
    """The fixed parameters of head ``name``: the user's ``head_params`` plus device / threads."""
    from .. import heads

    params = dict(head_params.get(name, {}))
    canon = heads.canonical_name(name)
    if canon in ("xgboost", "refine-mlp"):
        params.setdefault("device", device)
    if canon == "xgboost" and threads:
        params.setdefault("n_jobs", int(threads))
    return params


def _make_head(name, seed, blocks, params, block_scaling):
    """The one scaling rule: every features set (one block or several) through BlockScaler."""
    from .. import heads

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
    compare: Sequence[str] | None = None,
    levels: Sequence[str] | None = None,
    aggregate: str = "mean",
    positive_class: str | None = None,
    at_specificity: Sequence[float] | None = None,
    progress=None,
    cv_repeats: int = 1,
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
    ``compare``: ``A:B`` pairs of features sets compared per head (default: each fused set --
    ``hybrid``, ``a+b`` -- against each single one); every comparison lands in comparisons.csv.
    ``levels``: ``image``, ``breast``, ``exam`` (default: image, plus breast and exam when the
    images carry a laterality and an ``exam_id``); ``aggregate``: how a breast scores its views
    (``mean`` of their probabilities, or ``max``: its most suspicious view's). ``positive_class``
    (default: the most severe class of the scheme) and ``at_specificity`` (default 0.9) set the
    screening metrics (``sens_at_spec_<t>``, ``pauc_0.10``, ``pf1``). ``cv_repeats``: R repeats
    of the patient-grouped CV, each with its own folds (repeat 1's predictions are
    predictions.csv, the others predictions_repeats.csv); the CV comparisons run the corrected
    resampled t over all R x K folds (more power at the same level: benchmarks/null_calibration.py),
    at R times the cost of the CV. ``progress(1, total)`` is
    called after each fitted unit (features x head x outer fold, final refit included).
    """
    from .. import heads as heads_mod
    from .. import tuning
    from ..fusion import fuse_many
    from ..heads import fit_head
    from ..labels import parse_classes
    from ..report import write_report

    if test_split not in TEST_SPLITS:
        raise ConfigError(f"--test-split {test_split!r}: choose one of {TEST_SPLITS}")
    if tune not in tuning.TUNE_MODES:
        raise ConfigError(f"--tune {tune!r}: choose one of {', '.join(tuning.TUNE_MODES)}")
    from ..evaluate import AGGREGATES, check_specificities, default_levels, parse_levels
    from ..evaluate.comparisons import resolve_pairs
    from ..evaluate.levels import exam_note, level_keys_for

    if aggregate not in AGGREGATES:
        raise ConfigError(f"--aggregate {aggregate!r}: choose one of {', '.join(AGGREGATES)}")
    at_specificity = check_specificities(at_specificity)
    cv_repeats = int(cv_repeats)
    if cv_repeats < 1 or (cv_repeats > 1 and cv < 2):
        raise ConfigError(
            f"--cv-repeats {cv_repeats}: use 1, or more with --cv 2 or more (repeats of the CV)"
        )
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

    fused = fuse_many(store_list, features)  # one matrix read once; each set a column view
    for f, fz in fused.items():
        if f == "hybrid" and len(fz.blocks) < 2:
            raise ConfigError(
                f"features 'hybrid' needs two backbones; the store(s) hold only {backbones} "
                f"(it would be {list(fz.blocks)} alone under another name)"
            )
    common = set.intersection(*(set(map(str, fz.ids)) for fz in fused.values()))
    notes = []
    for f, fz in fused.items():
        usable = fz.n_usable if getattr(fz, "n_usable", None) is not None else len(fz.ids)
        if usable != len(common):
            notes.append(
                f"features {f}: {usable - len(common)} image(s) not usable by every features "
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
    if positive_class is not None and str(positive_class) not in classes:
        raise ConfigError(
            f"--positive-class {positive_class!r} is not one of the classes {', '.join(classes)}"
        )
    pairs = resolve_pairs(compare, features)
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
    levels = parse_levels(levels) if levels else default_levels(meta)
    if "image" not in levels:
        levels = ["image", *levels]  # the store's unit: always evaluated
    level_cols = None
    if len(levels) > 1:
        keys = level_keys_for(meta)
        if not (keys["laterality"] != "").any():
            raise ConfigError(
                f"--level {' '.join(lv for lv in levels if lv != 'image')}: no image has an L/R "
                "laterality (the store's 'laterality' column is empty or missing), so no breast "
                "or exam can be formed; use --level image"
            )
        level_cols = keys
        why = exam_note(meta)
        if why:
            notes.append(f"levels: {why}")
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
    # only the images this run evaluates (CV folds, test) matter; training-only rows do not
    evaluated = fold != ""
    optimistic = _trained_embeddings(
        store_list, fused, ids[evaluated], groups[evaluated], allow=allow_trained_embeddings
    )  # ConfigError unless allowed
    if optimistic["features"]:
        notes.append(optimistic["reason"])
    if "xgboost" in head_names:
        log.info("xgboost head: device=%s", heads_mod.xgboost_device(device))

    # outer folds (of every CV repeat), then the final model on the whole training part ("test"
    # in tuning.csv); a run: (label in tuning.csv, repeat, training rows, predicted rows, what)
    outer = sorted({v for v in fold if v not in ("test", "")}, key=int)
    folds_of = {1: fold}
    if cv_repeats > 1:
        cv_patients = pd.Series(groups[~is_test]).groupby(labels[~is_test]).nunique()
        if len(cv_patients) and cv_patients.min() < CV_REPEATS_MIN_PATIENTS_PER_CLASS:
            note = (
                f"--cv-repeats {cv_repeats}: the CV's smallest class has {cv_patients.min()} "
                f"patients (< {CV_REPEATS_MIN_PATIENTS_PER_CLASS}); the corrected resampled t over "
                "repeated folds rejects a true null more often than 5% on sets this small "
                "(benchmarks/null_calibration.py: 5 x 5 folds, 10 patients per class, 8-11%); "
                "--cv-repeats 1 holds the level"
            )
            log.warning("%s", note)
            notes.append(note)
    for rep in range(2, cv_repeats + 1):
        folds_of[rep] = _repeat_folds(labels, groups, is_test, cv, seed, rep)
    runs = [
        (k if rep == 1 else f"r{rep}.{k}", rep, ~is_test & (fr != k), fr == k,
         f"CV fold {k}" + ("" if rep == 1 else f" of repeat {rep}"))
        for rep, fr in folds_of.items()
        for k in outer
    ]  # fmt: skip
    runs.append(("test", 1, ~is_test, is_test, "final fit on the training part"))
    inner_splits, untuned_why = {}, {}
    if tune == "grid":
        for r, _, train, _, _ in runs:
            inner_splits[r], why = _inner_splits(labels[train], groups[train], inner_cv, seed, r)
            untuned_why[r] = why
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

        total = len(features) * len(head_names) * len(runs)
        lock = threading.Lock()
        fit_notes: list[str] = []

        def tick():
            if progress is not None:
                with lock:  # features sets may run in parallel threads
                    progress(1, total)

        def _one_features_set(f):
            """Every head on features set ``f``: (prediction frames, tuning rows, models)."""
            rows, models, tuning_rows = [], {}, []
            fz = fused[f]
            pos = pd.Series(np.arange(len(fz.ids)), index=np.asarray(fz.ids).astype(str))
            idx = pos.loc[ids].to_numpy()
            # no copy when the rows are already in order (the usual case): a view stays a view
            X = fz.X if np.array_equal(idx, np.arange(len(fz.ids))) else fz.X[idx]
            proba = {
                rep: {h: np.full((len(ids), len(classes)), np.nan) for h in head_names}
                for rep in folds_of
            }
            for r, rep, train, target, what in runs:
                inner = None
                if tune == "grid" and inner_splits[r] is not None:
                    inner = tuning.InnerCV(
                        X[train], labels[train], groups[train], inner_splits[r],
                        blocks=fz.blocks, balance=block_scaling,
                    )  # fmt: skip
                for h in head_names:
                    log.info("%s: fitting %s / %s, %s", final_dir, f, h, what)
                    base = _base_params(h, head_params, device, threads)
                    chosen = {}
                    if tune == "grid" and inner is None:  # too small for an inner CV
                        tuning_rows.append({"features": f, "head": h, "fold": r, "params": "{}",
                                            "inner_score": np.nan, "chosen": True,
                                            "note": f"untuned: {untuned_why.get(r)}"})  # fmt: skip
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
                        # every row trains (the final fit without a test split): no row copy
                        X_train = X if train.all() else X[train]
                        fit_head(model, X_train, labels[train], groups[train])
                        del X_train
                    with lock:
                        _record_fit_notes(model, f, h, r, tune, tuning_rows, fit_notes)
                    tick()
                    if target.any():
                        with _step(f, h, f"prediction of {what}", int(train.sum())):
                            proba[rep][h][target] = _proba(model, X[target], classes)
                    if r != "test":
                        continue
                    path = heads_mod.save(
                        model,
                        run_dir / MODELS / model_filename(f, h),
                        {
                            **_sidecar(
                                f, h, fz, classes, stores_info, seed, head_params, block_scaling,
                                train_counts, tuned=chosen, tune=tune,
                            ),
                            # predict marks rows the model was trained on (trained_on)
                            "trained_image_ids": sorted(map(str, ids[train])),
                        },
                    )  # fmt: skip
                    models[f"{f}__{h}"] = path
            repeat_rows = []
            for rep, fr in folds_of.items():
                for h in head_names:
                    p = proba[rep][h]
                    done = ~np.isnan(p).any(axis=1)
                    y_pred = np.asarray(classes, dtype=object)[np.nan_to_num(p).argmax(axis=1)]
                    part = pd.DataFrame(
                        {
                            "image_id": ids,
                            "patient_id": groups,
                            "fold": fr,
                            "features": f,
                            "head": h,
                            "y_true": labels,
                            "y_pred": y_pred,
                            **{f"p_{c}": p[:, j] for j, c in enumerate(classes)},
                        }
                    )
                    if level_cols is not None:  # what the breast and exam levels group by
                        part["exam_id"] = level_cols["exam_id"].to_numpy()
                        part["laterality"] = level_cols["laterality"].to_numpy()
                    if rep == 1:
                        rows.append(part[done])
                    else:  # extra CV repeats: their own file, for the comparisons
                        repeat_rows.append(part[done].assign(repeat=rep))
            return rows, tuning_rows, models, repeat_rows

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
        rows, models, tuning_rows, repeat_rows = [], {}, [], []
        for f_rows, f_tuning, f_models, f_repeats in done_sets:  # in features order
            rows += f_rows
            tuning_rows += f_tuning
            models.update(f_models)
            repeat_rows += f_repeats
        notes += sorted(set(fit_notes))  # --tune none: what the fits could not do
        if tune == "grid":
            columns = list(tuning.TUNING_COLUMNS)
            if "note" not in columns:  # what deviated from plain nested tuning
                columns.append("note")
            frame = pd.DataFrame(tuning_rows, columns=columns)
            frame["note"] = frame["note"].fillna("")
            frame.to_csv(run_dir / "tuning.csv", index=False, na_rep="nan")
        predictions = pd.concat(rows, ignore_index=True)
        predictions.to_csv(run_dir / "predictions.csv", index=False)
        if repeat_rows:
            pd.concat(repeat_rows, ignore_index=True).to_csv(
                run_dir / "predictions_repeats.csv", index=False
            )
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
            "cv_repeats": cv_repeats,
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
            "compare": [list(p) for p in pairs],
            "levels": levels,
            "aggregate": aggregate,
            "positive_class": positive_class,
            "at_specificity": list(at_specificity),
            "head_decision": heads_mod.DECISION_RULE,
            "optimistic_features": optimistic["features"],
            "optimistic_reason": optimistic["reason"],
            "caveats": caveats_from_stores(store_list, meta),
            "split_audit": audit,
            "notes": notes,
        }
        (run_dir / "config.json").write_text(json.dumps(config, indent=1, default=str))
        report = write_report(run_dir, figures=figures, log_as=final_dir)
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
