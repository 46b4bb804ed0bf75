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
rf             min_samples_leaf 5, 1 x max_features sqrt, 0.05                 leaf 5, 1
knn            n_neighbors 40, 20, 10, 5                                       k 20, 5
mlp            alpha 1, 1e-2, 1e-4                                             1e-2, 1e-4
xgboost        max_depth 2, 4 x learning_rate 0.1, 0.3 (rounds: early stop)   depth 2, 4
refine-mlp     weight_decay 1e-2, 1e-4 x dropout 0.5, 0.2                      wd 1e-2, 1e-4
=============  ==============================================================  =============

Speed (exact shortcuts, not approximations): per inner fold the block scaling is fitted once and
shared by every head and grid point; logreg and svm-linear are fitted on the training rows
projected on their own row space (an L2-penalised linear model's weights lie in that span, so the
solution and its predictions are the same; a 6,144-d problem on ~500 rows becomes ~500-d);
svm-rbf and k-NN use one squared-distance matrix per inner fold (precomputed kernels / distances)
for every C, gamma and k; logreg is warm-started along its C path. XGBoost's number of rounds and
the MLPs' epochs come from early stopping on held-out patients inside each fit. One approximation:
the rf grid is scored with 100 trees per forest (``RF_TUNING_TREES``; the number of trees hardly
changes which max_features / min_samples_leaf wins), and the chosen point is refit with 300.
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
    "xgboost": {"max_depth": [2, 4], "learning_rate": [0.1, 0.3]},
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
TUNING_COLUMNS = ("features", "head", "fold", "params", "inner_score", "chosen")


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
        return -float(skm.log_loss(y_true, p, labels=classes))
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
    """One inner fold: block scaling fitted on its training rows, and (lazily) the row-space
    projection and the squared distances shared by every head and grid point."""

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
        """Pooled inner out-of-fold probabilities of every grid point: list of (n, K) arrays."""
        out = [np.full((len(self.y), len(classes)), np.nan) for _ in points]
        for i in range(len(self.inner)):
            fd = self.fold(i)
            for j, p in enumerate(_fit_points(head, points, base, fd, classes, seed)):
                out[j][fd.va] = p
        return out


def _clf(head: str, params: dict, seed: int):
    """The classifier step of ``heads.make(head, ...)`` (the scaling is done by the caller)."""
    from . import heads

    return heads.make(head, seed=seed, **params).steps[-1][1]


def _fit_points(head, points, base, fd: _FoldData, classes, seed):
    """Validation probabilities of every grid point on one inner fold (exact shortcuts)."""
    from .heads import fit_head

    out = []
    if head in ("logreg", "svm-linear"):
        Z_tr, Z_va = fd.projected()
        clf = None
        for p in points:
            params = {**base, **p}
            if head == "logreg" and clf is not None and set(p) == {"C"}:
                clf.set_params(C=p["C"])  # warm start along the C path
            else:
                clf = _clf(head, params, seed)
                if head == "logreg":
                    clf.set_params(warm_start=True)
            clf.fit(Z_tr, fd.y_tr)
            out.append(proba_in(clf, Z_va, classes))
        return out
    if head in ("svm-rbf", "knn"):
        D_tr, D_va = fd.sq_distances()
        for p in points:
            params = {**base, **p}
            clf = _clf(head, params, seed)
            if head == "knn":
                if clf.get_params().get("metric") not in ("minkowski", "euclidean") or (
                    clf.get_params().get("metric") == "minkowski" and clf.get_params()["p"] != 2
                ):
                    clf.fit(fd.S_tr, fd.y_tr)  # another metric: no shortcut
                    out.append(proba_in(clf, fd.S_va, classes))
                    continue
                clf.set_params(metric="precomputed")
                clf.fit(D_tr, fd.y_tr)
                out.append(proba_in(clf, D_va, classes))
                continue
            gamma = clf.get_params()["estimator"].get_params()["gamma"]
            if isinstance(gamma, str):  # "scale"/"auto" follow each calibration fold's rows
                clf.fit(fd.S_tr, fd.y_tr)
                out.append(proba_in(clf, fd.S_va, classes))
                continue
            clf.set_params(estimator__kernel="precomputed")
            clf.fit(np.exp(-float(gamma) * D_tr), fd.y_tr)
            out.append(proba_in(clf, np.exp(-float(gamma) * D_va), classes))
        return out
    for p in points:
        params = {**base, **p}
        if head == "rf" and "n_estimators" not in params:
            params["n_estimators"] = RF_TUNING_TREES  # the refit uses the head's 300 trees
        clf = _clf(head, params, seed)
        fit_head(clf, fd.S_tr, fd.y_tr, fd.g_tr)
        out.append(proba_in(clf, fd.S_va, classes))
    return out


def _feasible(head: str, points: list[dict], inner: InnerCV) -> list[dict]:
    """Drop k-NN points asking for more neighbours than the smallest inner training side holds
    (the same for every features set: it depends on the splits only)."""
    if head != "knn":
        return points
    n_min = min(len(tr) for tr, _ in inner.inner)
    kept = [p for p in points if int(p.get("n_neighbors", 0)) <= n_min]
    if len(kept) < len(points):
        log.info(
            "knn: grid points with more than %d neighbours dropped (inner training sides of %d)",
            n_min, n_min,
        )  # fmt: skip
    return kept or [{**points[0], "n_neighbors": n_min}]


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
    (``params``: JSON, ``inner_score``, ``chosen``). A grid of one point (every parameter fixed by
    the user) is scored too, so ``inner_score`` always says what the inner CV saw."""
    if metric not in METRICS:
        raise ConfigError(f"--tune-metric {metric!r}: choose one of {', '.join(METRICS)}")
    base = dict(base or {})
    points = _feasible(head, grid_points(grid, base), inner)
    t0 = time.perf_counter()
    probas = inner.oof_proba(head, points, base, classes, seed)
    scores = [score(metric, inner.y, p, classes) for p in probas]
    finite = [s if np.isfinite(s) else -np.inf for s in scores]
    best = int(np.argmax(finite))  # first maximum: the more regularised point wins ties
    log.debug(
        "tuned %s over %d point(s) in %.1f s: %s (%s %.4f)",
        head, len(points), time.perf_counter() - t0, points[best], metric, scores[best],
    )  # fmt: skip
    rows = [
        {"params": params_json(p), "inner_score": float(s), "chosen": j == best}
        for j, (p, s) in enumerate(zip(points, scores, strict=True))
    ]
    return points[best], rows
