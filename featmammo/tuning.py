"""Hyperparameter tuning by patient-grouped inner cross-validation, nested in ``featmammo fit``.

Inside every outer fold (and for the final model, on the whole training part) each head is tuned on
a small, documented grid by an inner patient-grouped, stratified K-fold of that fold's training
rows (:func:`featmammo.splits.grouped_kfold`). The inner splits depend only on the labels, the
patients and the seed, so every features set is tuned on the same inner splits with the same grid.
A grid point's ``inner_score`` is the tuning metric (balanced accuracy unless ``--tune-metric``
says otherwise) of the pooled inner out-of-fold predictions; the best point wins, ties going to
the earlier point (each grid is ordered from the most to the least regularised). The chosen
parameters are then refit on the whole training side of the outer fold by the caller.

Grids (``GRIDS``; ``--tune-grid small`` uses ``SMALL_GRIDS``, a TOML ``tune_grid`` table may give
its own). Values assume the one scaling rule of :func:`featmammo.heads.make` (a row has total
variance 1 whatever the features set, so gamma = 1 is scikit-learn's ``"scale"``):

=============  ==============================================================  =============
head           grid                                                            small grid
=============  ==============================================================  =============
logreg         C 0.1, 1, 10, 100, 1000                                         C 1, 100
svm-linear     C 0.01, 0.1, 1, 10                                              C 0.1, 1
svm-rbf        C 1, 10, 100 x gamma 0.25, 0.5, 1                               C 1, 10
rf             min_samples_leaf 5, 1 x max_features sqrt, 0.05 (halving)       leaf 5, 1
knn            n_neighbors 40, 20, 10, 5                                       k 20, 5
mlp            alpha 1, 1e-2, 1e-4 (halving)                                   1e-2, 1e-4
xgboost        max_depth 2, 4 (learning rate 0.1; rounds: early stop; halving) depth 2, 4
refine-mlp     weight_decay 1e-2, 1e-4 x dropout 0.5, 0.2 (halving)            wd 1e-2, 1e-4
=============  ==============================================================  =============

Successive halving (``HALVING_HEADS``: rf, xgboost, mlp, refine-mlp, whose fits are the costly
ones): every grid point is fitted on the first inner fold, and only the better half (by the tuning
metric on that fold's validation patients; ties to the earlier point) on the other folds; the
winner is chosen among those by the pooled score as usual. A pruned point's row has
``inner_score`` nan and a ``pruned`` note with its first-fold score. When the better half is one
point (a grid of two points: xgboost; every halving head under ``--tune-grid small``) it is
chosen after the first inner fold and fitted on no other (that would only score it): its
``inner_score`` is that fold's, with a ``halving`` note. The xgboost grid no longer crosses the
learning rate (0.1 or 0.3 with early-stopped rounds): 0.1 won 17 of 18 tuned fits of the nested
benchmark. Both measured against the exhaustive grid in
``benchmarks/results/compare_heads-nested*.md``.

Speed (exact shortcuts, used only where exact for the head's actual parameters --
:func:`shortcut`; any other parameters go through the head's real pipeline): per inner fold the
block scaling is fitted once and shared by every head and grid point (it is what each pipeline's
own scaler fits on those rows); an L2-penalised logreg or svm-linear is fitted on the training
rows projected on their own row space (its weights lie in that span, so the solution and its
predictions are the same; a 6,144-d problem on ~500 rows becomes ~500-d); svm-rbf with a numeric
gamma and k-NN with uniform weights and the Euclidean metric use one squared-distance matrix per
inner fold (precomputed kernels / distances) for every C, gamma and k. Refused, for instance: an
L1 or elastic-net logreg (out-of-fold probabilities up to 0.6 off through the projection), k-NN
with distance weights (0.02 off: the squared distances weight differently), gamma "scale". No warm
start along the C path (from the previous C's optimum lbfgs stopped up to 0.04 away).
XGBoost's number of rounds and the MLPs' epochs come from early stopping on held-out patients
inside each fit. One approximation: the rf grid is scored with 100 trees per forest
(``RF_TUNING_TREES``; the number of trees hardly changes which max_features / min_samples_leaf
wins), and the chosen point is refit with 300.

What the tuning could not do is written into tuning.csv's ``note`` column (:data:`NOTE_KINDS`):
an outer fold that ran untuned because its inner CV was impossible (:func:`untuned_row`), grid
points dropped (k-NN asking for more neighbours than an inner training side holds), early stopping
skipped in inner fits or in the refit (:func:`refit_note`), fits that failed, nan scores, and a
grid where every point scored nan (the head then runs at its defaults). :func:`read_this_first`
turns the notes into the report's "read this first" lines.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from itertools import product

import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)

#: the default grids (ordered from the most to the least regularised point: ties go first)
GRIDS: dict[str, dict[str, list]] = {
    "logreg": {"C": [0.1, 1.0, 10.0, 100.0, 1000.0]},
    "svm-linear": {"C": [0.01, 0.1, 1.0, 10.0]},
    "svm-rbf": {"C": [1.0, 10.0, 100.0], "gamma": [0.25, 0.5, 1.0]},
    "rf": {"min_samples_leaf": [5, 1], "max_features": ["sqrt", 0.05]},
    "knn": {"n_neighbors": [40, 20, 10, 5]},
    "mlp": {"alpha": [1.0, 1e-2, 1e-4]},
    "xgboost": {"max_depth": [2, 4]},
    "refine-mlp": {"weight_decay": [1e-2, 1e-4], "dropout": [0.5, 0.2]},
}
#: two points per head, for demos and quick looks (``--tune-grid small``)
SMALL_GRIDS: dict[str, dict[str, list]] = {
    "logreg": {"C": [1.0, 100.0]},
    "svm-linear": {"C": [0.1, 1.0]},
    "svm-rbf": {"C": [1.0, 10.0]},
    "rf": {"min_samples_leaf": [5, 1]},
    "knn": {"n_neighbors": [20, 5]},
    "mlp": {"alpha": [1e-2, 1e-4]},
    "xgboost": {"max_depth": [2, 4]},
    "refine-mlp": {"weight_decay": [1e-2, 1e-4]},
}
TUNE_MODES = ("grid", "none")
METRICS = ("balanced_accuracy", "roc_auc", "macro_f1", "accuracy", "neg_log_loss")
DEFAULT_METRIC = "balanced_accuracy"
INNER_CV = 3
#: trees per forest while scoring the rf grid (the chosen point is refit with the default 300)
RF_TUNING_TREES = 100
#: heads whose grid is screened by successive halving over the inner folds (their fits are the
#: expensive ones): every point on inner fold 1, the better half on the other folds
HALVING_HEADS = ("rf", "xgboost", "mlp", "refine-mlp")
#: tuning.csv's columns; ``note``: what the reader must know about a row ("" when nothing;
#: "KIND: text" parts joined by "; ", kinds in :data:`NOTE_KINDS`; :func:`read_this_first`)
TUNING_COLUMNS = ("features", "head", "fold", "params", "inner_score", "chosen", "note")


def resolve_grids(spec="default") -> dict[str, dict[str, list]]:
    """``"default"`` -> :data:`GRIDS`, ``"small"`` -> :data:`SMALL_GRIDS`, or a mapping head ->
    {param: [values]} (e.g. a TOML ``[tune_grid.logreg]`` table) merged over the default grids."""
    from . import heads

    if spec in (None, "default", "grid", "full"):
        return {k: dict(v) for k, v in GRIDS.items()}
    if spec == "small":
        return {k: dict(v) for k, v in SMALL_GRIDS.items()}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"--tune-grid {spec!r}: use default, small or a table head -> grid")
    out = {k: dict(v) for k, v in GRIDS.items()}
    for head, grid in spec.items():
        name = heads.canonical_name(str(head))
        if not isinstance(grid, Mapping) or not all(
            isinstance(v, (list, tuple)) and len(v) for v in grid.values()
        ):
            raise ConfigError(
                f"tune_grid.{head}: expected a table of non-empty lists (e.g. C = [0.1, 1, 10]); "
                f"got {grid!r}"
            )
        out[name] = {str(k): list(v) for k, v in grid.items()}
    return out


def grid_points(grid: Mapping[str, Sequence], fixed: Mapping | None = None) -> list[dict]:
    """Every combination of ``grid`` (a parameter the user fixed in ``fixed`` is not tuned)."""
    keys = [k for k in grid if k not in (fixed or {})]
    if not keys:
        return [{}]
    return [dict(zip(keys, combo, strict=True)) for combo in product(*(grid[k] for k in keys))]


def params_json(params: Mapping) -> str:
    """The ``params`` column of tuning.csv: JSON with sorted keys."""
    return json.dumps({str(k): _plain(v) for k, v in params.items()}, sort_keys=True)


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def score(metric: str, y_true, proba: np.ndarray, classes: Sequence[str]) -> float:
    """The tuning metric of probabilities ``proba`` (columns in ``classes`` order); higher wins."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true).astype(str)
    classes = [str(c) for c in classes]
    pred = np.asarray(classes, dtype=object)[np.argmax(proba, axis=1)].astype(str)
    if metric == "balanced_accuracy":
        return float(skm.balanced_accuracy_score(y_true, pred))
    if metric == "accuracy":
        return float(skm.accuracy_score(y_true, pred))
    if metric == "macro_f1":
        return float(skm.f1_score(y_true, pred, average="macro", labels=classes, zero_division=0))
    if metric == "roc_auc":
        present = [c for c in classes if (y_true == c).any()]
        if len(present) < 2:
            return float("nan")
        if len(classes) == 2:
            return float(skm.roc_auc_score(y_true == classes[1], proba[:, 1]))
        p = np.clip(proba, 1e-12, None)
        p = p / p.sum(axis=1, keepdims=True)
        order = np.argsort(classes)  # scikit-learn wants the labels (and columns) sorted
        return float(
            skm.roc_auc_score(
                y_true,
                p[:, order],
                multi_class="ovr",
                average="macro",
                labels=[classes[i] for i in order],
            )
        )
    if metric == "neg_log_loss":
        p = np.clip(proba, 1e-12, None)
        p = p / p.sum(axis=1, keepdims=True)
        # scikit-learn reads the columns in sorted label order; proba is in ``classes`` order
        order = np.argsort(classes)
        return -float(skm.log_loss(y_true, p[:, order], labels=[classes[i] for i in order]))
    raise ConfigError(f"--tune-metric {metric!r}: choose one of {', '.join(METRICS)}")


def proba_in(model, X, classes: Sequence[str]) -> np.ndarray:
    """predict_proba with columns in ``classes`` order (classes the model never saw get 0)."""
    raw = np.asarray(model.predict_proba(X), dtype=float)
    out = np.zeros((len(X), len(classes)))
    index = {str(c): j for j, c in enumerate(classes)}
    for j, c in enumerate(model.classes_):
        if str(c) in index:
            out[:, index[str(c)]] = raw[:, j]
    return out


class _FoldData:
    """One inner fold: block scaling fitted on its training rows (exactly what each head's
    pipeline fits on them), and (lazily) the row-space projection and the squared distances
    shared by every head and grid point that may use them (:func:`shortcut`)."""

    def __init__(self, X, y, groups, tr, va, blocks, balance):
        from .heads.scaling import BlockScaler

        scaler = BlockScaler(blocks=blocks, balance=balance).fit(X[tr])
        self.S_tr = scaler.transform(X[tr])
        self.S_va = scaler.transform(X[va])
        self.y_tr, self.g_tr, self.va = y[tr], groups[tr], va
        self._proj = None
        self._dist = None

    def projected(self):
        if self._proj is None:
            # S_tr = U s Vt; weights of an L2-penalised linear model lie in span(rows of S_tr)
            u, s, vt = np.linalg.svd(self.S_tr.astype(np.float64), full_matrices=False)
            keep = s > s.max() * 1e-10 if len(s) else s > 0
            v = vt[keep].T
            self._proj = (u[:, keep] * s[keep], self.S_va.astype(np.float64) @ v)
        return self._proj

    def sq_distances(self):
        if self._dist is None:
            from sklearn.metrics.pairwise import euclidean_distances

            tr = self.S_tr.astype(np.float64)
            self._dist = (
                euclidean_distances(tr, tr, squared=True),
                euclidean_distances(self.S_va.astype(np.float64), tr, squared=True),
            )
        return self._dist


class InnerCV:
    """The inner patient-grouped CV of one training part, shared by every head of a features set.

    ``X`` (rows of the training part), ``y``/``groups`` aligned with it; ``inner`` the list of
    ``(train, validation)`` index arrays into those rows (the same for every features set).
    """

    def __init__(self, X, y, groups, inner, *, blocks=None, balance=True):
        self.X, self.y, self.groups = X, np.asarray(y), np.asarray(groups)
        self.inner = [(np.asarray(tr), np.asarray(va)) for tr, va in inner]
        self.blocks, self.balance = blocks, balance
        self._folds: dict[int, _FoldData] = {}

    def fold(self, i: int) -> _FoldData:
        if i not in self._folds:
            tr, va = self.inner[i]
            self._folds[i] = _FoldData(
                self.X, self.y, self.groups, tr, va, self.blocks, self.balance
            )
        return self._folds[i]

    def oof_proba(self, head: str, points: list[dict], base: dict, classes, seed: int):
        """Pooled inner out-of-fold probabilities of every grid point: list of (n, K) arrays
        (the rows of a failed fit are nan)."""
        fits = self.fit_folds(head, points, base, classes, seed, range(len(self.inner)))
        return [self.pooled(f, classes)[0] for f in fits]

    def fit_folds(self, head, points, base, classes, seed, folds) -> list[dict]:
        """For every point, ``{fold: (validation proba, notes)}`` over ``folds``."""
        out: list[dict] = [{} for _ in points]
        for i in folds:
            for j, res in enumerate(_fit_points(head, points, base, self.fold(i), classes, seed)):
                out[j][i] = res
        return out

    def pooled(self, fits: dict, classes):
        """``(pooled out-of-fold proba, {note: n_fits})`` of one point's per-fold fits (rows of
        folds not in ``fits`` stay nan)."""
        proba = np.full((len(self.y), len(classes)), np.nan)
        notes: dict[str, int] = {}
        for i, (p, fit_notes) in fits.items():
            proba[self.inner[i][1]] = p
            for n in fit_notes:
                notes[n] = notes.get(n, 0) + 1
        return proba, notes


def _clf(head: str, params: dict, seed: int):
    """The classifier step of ``heads.make(head, ...)`` (the scaling is done by the caller)."""
    from . import heads

    return heads.make(head, seed=seed, **params).steps[-1][1]


#: the exact shortcuts (see :func:`shortcut`)
SHORTCUTS = ("row-space", "kernel", "distance")


def _inner(clf):
    """The estimator a head's wrapper (calibration, prior correction) wraps, else ``clf``."""
    inner = clf.get_params(deep=False).get("estimator") if hasattr(clf, "get_params") else None
    return clf if inner is None else inner


def shortcut(head: str, clf) -> str | None:
    """The exact speed-up the tuning may use for this classifier *with its actual parameters*, or
    None: then every grid point is fitted by the head's real pipeline (on the inner fold's
    block-scaled rows, which is what the pipeline's own scaler gives).

    - ``row-space`` (logreg, svm-linear): an **L2**-penalised linear model's weights lie in the
      span of its training rows, so fitting on the rows projected on that span gives the same
      model and predictions. Refused for an L1 / elastic-net penalty or no penalty (C infinite).
    - ``kernel`` (svm-rbf): one squared-distance matrix per inner fold, exp(-gamma D) as a
      precomputed kernel. Only for ``kernel="rbf"`` with a numeric gamma (``"scale"``/``"auto"``
      depend on each calibration fold's rows).
    - ``distance`` (knn): precomputed squared Euclidean distances give the same neighbours, so
      only for uniform weights (distance weights need the distances themselves) and the
      Euclidean metric (minkowski with p=2, no metric_params).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC, LinearSVC

    est = _inner(clf)
    p = est.get_params(deep=False)
    if head == "logreg" and type(est) is LogisticRegression:
        l2 = p.get("penalty") in ("l2", "deprecated") and p.get("l1_ratio") in (None, 0, 0.0)
        return "row-space" if l2 and np.isfinite(float(p["C"])) else None
    if head == "svm-linear" and type(est) is LinearSVC:
        return "row-space" if p["penalty"] == "l2" and np.isfinite(float(p["C"])) else None
    if head == "svm-rbf" and type(est) is SVC:
        numeric = not isinstance(p["gamma"], str)
        return "kernel" if p["kernel"] == "rbf" and numeric else None
    if head == "knn" and type(est) is KNeighborsClassifier:
        euclid = p["metric"] in ("euclidean", "l2") or (p["metric"] == "minkowski" and p["p"] == 2)
        exact = p["weights"] == "uniform" and euclid and not p.get("metric_params")
        return "distance" if exact else None
    return None


def _fit_points(head, points, base, fd: _FoldData, classes, seed):
    """``(validation probabilities, notes)`` of every grid point on one inner fold: through the
    exact shortcut the classifier's parameters allow (:func:`shortcut`), else its real pipeline.
    A fit that fails (ValueError, a linear-algebra or floating-point error) gives nan
    probabilities and a ``failed`` note instead of stopping the run."""
    from .heads import fit_head, fit_notes

    out = []
    for p in points:
        params = {**base, **p}
        if head == "rf" and "n_estimators" not in params:
            params["n_estimators"] = RF_TUNING_TREES  # the refit uses the head's 300 trees
        clf = _clf(head, params, seed)
        kind = shortcut(head, clf)
        try:
            if kind == "row-space":
                # no warm start along the C path: from the previous C's optimum lbfgs stops
                # within its tolerance but up to 0.04 away in probability (measured at C=100)
                Z_tr, Z_va = fd.projected()
                fit_head(clf, Z_tr, fd.y_tr, fd.g_tr)
                out.append((proba_in(clf, Z_va, classes), []))
            elif kind == "kernel":
                D_tr, D_va = fd.sq_distances()
                gamma = float(_inner(clf).get_params()["gamma"])
                clf.set_params(estimator__kernel="precomputed")
                fit_head(clf, np.exp(-gamma * D_tr), fd.y_tr, fd.g_tr)
                out.append((proba_in(clf, np.exp(-gamma * D_va), classes), []))
            elif kind == "distance":
                D_tr, D_va = fd.sq_distances()
                clf.set_params(estimator__metric="precomputed")
                fit_head(clf, D_tr, fd.y_tr, fd.g_tr)
                out.append((proba_in(clf, D_va, classes), []))
            else:  # the real pipeline on the fold's block-scaled rows
                fit_head(clf, fd.S_tr, fd.y_tr, fd.g_tr)
                out.append((proba_in(clf, fd.S_va, classes), fit_notes(clf)))
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            log.warning("tuning %s %s: the fit failed (%s: %s); scored nan",
                        head, p, type(exc).__name__, exc)  # fmt: skip
            out.append(
                (np.full((len(fd.va), len(classes)), np.nan), [f"failed: {type(exc).__name__}"])
            )
    return out


# ----------------------------------------------------------------------- notes in tuning.csv
#: kinds of note in tuning.csv's ``note`` column ("KIND: text", several joined by "; ")
NOTE_KINDS = (
    "untuned",
    "grid points dropped",
    "early stopping skipped",
    "fit failed",
    "nan score",
    "all-NaN grid",
    "pruned",
    "halving",
)
#: the kinds that are events a reader must see (:func:`read_this_first`); ``pruned`` and
#: ``halving`` are the method (successive halving) working as documented
EVENT_KINDS = NOTE_KINDS[:-2]


def _note(kind: str, text: str) -> str:
    assert kind in NOTE_KINDS, kind
    return f"{kind}: {text}".replace(";", ",")


def add_note(row: dict, note: str) -> dict:
    """``row`` (a tuning.csv row) with ``note`` appended to its ``note`` (joined by "; ")."""
    old = row.get("note") or ""
    row["note"] = f"{old}; {note}" if old and note else (old or note)
    return row


def untuned_row(reason: str) -> dict:
    """The tuning.csv row of a head that ran untuned at its defaults because the inner CV was
    impossible (``reason``, e.g. "CV fold 2's training side has 2 patient(s), fewer than
    --inner-cv 3"): ``params`` "{}", ``inner_score`` nan, ``chosen`` True, ``note``
    "untuned: REASON". The caller adds ``features``, ``head`` and ``fold``."""
    return {
        "params": "{}",
        "inner_score": float("nan"),
        "chosen": True,
        "note": _note("untuned", reason),
    }


def refit_note(model) -> str:
    """The note for the chosen row when the refit of the chosen point (``model``, fitted) skipped
    its early stopping (:func:`featmammo.heads.fit_notes`), else ""."""
    from .heads import fit_notes

    return "; ".join(_note("early stopping skipped", f"the refit: {n}") for n in fit_notes(model))


def _feasible(head: str, points: list[dict], inner: InnerCV) -> tuple[list[dict], list[dict]]:
    """``(points to run, rows for points dropped)``: k-NN points asking for more neighbours than
    the smallest inner training side holds are dropped (the same for every features set: it
    depends on the splits only); when every point is, one with that many neighbours is run."""
    if head != "knn":
        return points, []
    n_min = min(len(tr) for tr, _ in inner.inner)
    kept = [p for p in points if int(p.get("n_neighbors", 0)) <= n_min]
    dropped = [
        {
            "params": params_json(p),
            "inner_score": float("nan"),
            "chosen": False,
            "note": _note(
                "grid points dropped",
                f"n_neighbors {p['n_neighbors']} is more than the {n_min} rows of the smallest "
                "inner training side",
            ),
        }
        for p in points
        if p not in kept
    ]
    if dropped:
        log.info("knn: %d grid point(s) with more than %d neighbours dropped (inner training "
                 "sides of %d rows)", len(dropped), n_min, n_min)  # fmt: skip
    if not kept:
        kept = [{**points[0], "n_neighbors": n_min}]
    return kept, dropped


def _finite(v: float) -> float:
    return v if np.isfinite(v) else -np.inf


def _score_of(metric, y, proba, classes) -> float:
    """:func:`score`, nan when a fit failed (nan probabilities)."""
    return score(metric, y, proba, classes) if np.isfinite(proba).all() else float("nan")


def tune(
    inner: InnerCV,
    head: str,
    grid: Mapping[str, Sequence],
    *,
    classes: Sequence[str],
    base: dict | None = None,
    metric: str = DEFAULT_METRIC,
    seed: int = 0,
) -> tuple[dict, list[dict]]:
    """Tune ``head`` on ``inner``: ``(chosen params, rows)`` with one row per grid point
    (``params``: JSON, ``inner_score``, ``chosen``, ``note``). A grid of one point (every
    parameter fixed by the user) is scored too, so ``inner_score`` always says what the inner CV
    saw. ``note`` ("" when nothing happened; kinds in :data:`NOTE_KINDS`) records a grid point
    dropped (k-NN), early stopping skipped in some inner fits, a failed fit, a nan score, a point
    pruned by successive halving (:data:`HALVING_HEADS`; its ``inner_score`` is nan, its
    first-fold score in the note; a lone survivor is scored on that fold only, note ``halving``);
    when every point scores nan the head's defaults are used and
    one more row (``params`` "{}", ``chosen``, note ``all-NaN grid``) says so."""
    if metric not in METRICS:
        raise ConfigError(f"--tune-metric {metric!r}: choose one of {', '.join(METRICS)}")
    base = dict(base or {})
    points, dropped = _feasible(head, grid_points(grid, base), inner)
    t0 = time.perf_counter()
    folds = range(len(inner.inner))
    pruned, one_fold, first, fits = {}, {}, None, None
    if head in HALVING_HEADS and len(points) > 1 and len(inner.inner) > 1:
        # successive halving over the inner folds: every point on the first inner fold, the
        # better half (ties: the earlier, more regularised point) on the others
        fits = inner.fit_folds(head, points, base, classes, seed, [0])
        va0 = inner.inner[0][1]
        first = [_finite(_score_of(metric, inner.y[va0], f[0][0], classes)) for f in fits]
        if not np.isfinite(first).any():
            # inner fold 1 ranks nothing (every fit failed there, or the metric is undefined on
            # it: roc_auc on a one-class validation side): no halving, every point on every fold
            first = None
            for j, f in enumerate(inner.fit_folds(head, points, base, classes, seed, folds[1:])):
                fits[j].update(f)
    if fits is None:
        fits = inner.fit_folds(head, points, base, classes, seed, folds)
    if first is not None:
        order = sorted(range(len(points)), key=lambda j: (-first[j], j))
        keep = sorted(order[: (len(points) + 1) // 2])
        pruned = {j: first[j] for j in range(len(points)) if j not in keep}
        best_first = max(first[j] for j in keep)
        if len(keep) > 1:
            for j, f in zip(keep, inner.fit_folds(head, [points[j] for j in keep], base, classes,
                                                  seed, folds[1:]), strict=True):  # fmt: skip
                fits[j].update(f)
        else:  # one point left: chosen already; fitting it on the other folds would only score it
            one_fold = {keep[0]: _score_of(metric, inner.y[va0], fits[keep[0]][0][0], classes)}
    n_fits = len(inner.inner)
    rows = []
    scores = []
    for j, p in enumerate(points):
        proba, fit_notes = inner.pooled(fits[j], classes)
        if j in pruned:
            s = np.nan
            row = {
                "params": params_json(p), "inner_score": float("nan"), "chosen": False,
                "note": _note("pruned", f"successive halving: scored {pruned[j]:.4f} on inner "
                                        f"fold 1 of {n_fits}, below the half kept (best "
                                        f"{best_first:.4f})"),
            }  # fmt: skip
        else:
            s = one_fold[j] if j in one_fold else _score_of(metric, inner.y, proba, classes)
            row = {"params": params_json(p), "inner_score": float(s), "chosen": False, "note": ""}
        scores.append(s)
        if j in one_fold:
            add_note(
                row,
                _note(
                    "halving",
                    f"the only point left after inner fold 1 of {n_fits}: "
                    "inner_score is that fold's (no other fold fitted)",
                ),
            )
        fit_folds = len(fits[j])  # inner folds this point was fitted on
        for text, count in fit_notes.items():
            if text.startswith("failed: "):
                add_note(row, _note("fit failed", f"{text[len('failed: '):]} in {count} of "
                                              f"{fit_folds} inner fits"))  # fmt: skip
            else:
                add_note(
                    row,
                    _note("early stopping skipped", f"{count} of {fit_folds} inner fits: {text}"),
                )
        if j in pruned:
            rows.append(row)
            continue
        if not np.isfinite(s) and not any(t.startswith("failed") for t in fit_notes):
            add_note(row, _note("nan score", f"the inner {metric} is not finite"))
        rows.append(row)
    finite = [_finite(s) for s in scores]
    if np.isfinite(scores).any():
        best = int(np.argmax(finite))  # first maximum: the more regularised point wins ties
        rows[best]["chosen"] = True
        chosen = points[best]
    else:
        chosen = {}
        why = f"every grid point scored nan ({metric}), the head ran at its defaults"
        rows.append(
            {"params": "{}", "inner_score": float("nan"), "chosen": True,
             "note": _note("all-NaN grid", why)}
        )  # fmt: skip
        log.warning("tuning %s: every grid point scored nan; the head runs at its defaults", head)
    log.debug(
        "tuned %s over %d point(s) in %.1f s: %s (%s %s)",
        head, len(points), time.perf_counter() - t0, chosen, metric, max(finite),
    )  # fmt: skip
    return chosen, [*rows, *dropped]


# ------------------------------------------------------------------------- read this first
def _fold_list(folds) -> str:
    def key(v):
        return (1, 0) if str(v) == "test" else (0, int(v) if str(v).isdigit() else 0)

    names = [("the final refit" if str(f) == "test" else f"fold {f}") for f in
             sorted(set(map(str, folds)), key=key)]  # fmt: skip
    return ", ".join(names)


def read_this_first(tuning_df) -> list[str]:
    """The tuning events a reader must see before the results, from tuning.csv's ``note``
    column (one line each, grouped over features sets and folds): outer folds that ran untuned,
    dropped grid points, skipped early stopping, failed fits, nan scores, all-nan grids. An empty
    list when nothing happened (or the file predates the ``note`` column)."""
    if tuning_df is None or "note" not in tuning_df.columns or not len(tuning_df):
        return []
    events: dict[tuple[str, str, str], dict] = {}
    for r in tuning_df.itertuples(index=False):
        note = r.note
        if note is None or (isinstance(note, float) and np.isnan(note)) or not str(note).strip():
            continue
        for part in str(note).split("; "):
            kind, _, text = part.partition(": ")
            if kind not in EVENT_KINDS:
                continue
            if kind in ("untuned", "all-NaN grid"):
                key = (kind, "", text)
            else:
                key = (kind, str(r.head), f"{r.params}: {text}" if r.params != "{}" else text)
            e = events.setdefault(key, {"heads": set(), "features": set(), "folds": set()})
            e["heads"].add(str(r.head))
            e["features"].add(str(r.features))
            e["folds"].add(str(r.fold))
    n_features = tuning_df["features"].nunique()
    n_heads = tuning_df["head"].nunique()
    lines = []
    order = {k: i for i, k in enumerate(NOTE_KINDS)}
    for (kind, _, text), e in sorted(events.items(), key=lambda kv: order[kv[0][0]]):
        who = (
            "every head"
            if len(e["heads"]) == n_heads and n_heads > 1
            else ", ".join(sorted(e["heads"]))
        )
        feats = (
            "every features set"
            if len(e["features"]) == n_features
            else ", ".join(sorted(e["features"]))
        )
        where = f"{_fold_list(e['folds'])} ({feats})"
        if kind == "untuned":
            lines.append(
                f"Tuning: {where}, {who} ran **untuned**, at the head's defaults: the inner CV "
                f"was impossible ({text}); those predictions are not tuned like the others."
            )
        elif kind == "all-NaN grid":
            lines.append(f"Tuning: {who}, {where}: {text}.")
        else:
            lines.append(f"Tuning ({kind}): {who}, {where}: {text}.")
    return lines
