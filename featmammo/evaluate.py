"""Metrics, patient-clustered bootstrap CIs, baselines and paired comparisons (no torch, no scipy).

This module owns every number featmammo reports about a classifier. It works on plain arrays and on
the ``predictions.csv`` table (``image_id, patient_id, fold, features, head, y_true, y_pred,
p_<class>...``) so that every figure can be recomputed from stored predictions:

- :func:`compute_metrics` -- the paper's table (per-class precision/recall/F1/support, macro and
  weighted averages, accuracy) plus balanced accuracy, ROC-AUC (one-vs-rest and positive-vs-rest),
  PR-AUC and sensitivity/specificity under the one decision rule (argmax = ``y_pred``; a threshold
  only adds a separately named second operating point). Degenerate inputs give NaN with a note,
  never an exception.
- :func:`bootstrap_metrics` -- percentile CIs by resampling *patients* (cluster bootstrap): all
  images of a drawn patient enter the resample together, so correlated views do not shrink the
  intervals.
- :func:`paired_comparison` / :func:`mcnemar_clustered` / :func:`holm_adjust` -- model A vs model
  B on the same images (paired patient bootstrap; McNemar with patients as clusters), adjusted for
  multiplicity.
- :func:`evaluate_predictions` -- all of the above for every features x head x evaluation in a
  table. Evaluations: ``cv`` (numbered folds), ``test``, ``validation`` (HybridNet early-stopping
  rows: optimistic, never ranked or compared). No CI below :data:`MIN_PATIENTS_PER_CLASS`
  patients in some class (:func:`ci_note` says why).

The metric kernels are written with numpy (weighted confusion matrices, Mann-Whitney AUC, step-wise
average precision) so that a 1000-resample bootstrap costs well under a second; tests check them
against scikit-learn.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError

log = logging.getLogger(__name__)

#: metrics that get bootstrap confidence intervals (columns ``<name>_ci_low`` / ``<name>_ci_high``)
CI_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "weighted_f1",
    "roc_auc_ovr",
    "roc_auc_pos_vs_rest",
    "pr_auc_pos_vs_rest",
    "sensitivity",
    "specificity",
)
#: the scalar metrics of :func:`compute_metrics`, in report order
SCALAR_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "weighted_precision",
    "weighted_recall",
    "weighted_f1",
    "roc_auc_ovr",
    "roc_auc_pos_vs_rest",
    "pr_auc_pos_vs_rest",
    "sensitivity",
    "specificity",
    "sensitivity_at_threshold",
    "specificity_at_threshold",
)
#: metrics compared between two models in :func:`paired_comparison`
PAIRED_METRICS = ("balanced_accuracy", "roc_auc_ovr")
TEST_FOLD = "test"
#: fold label of HybridNet's early-stopping rows (``featmammo train``): they chose the epoch
VALIDATION_FOLD = "validation"
#: evaluations that estimate performance (ranked and compared); ``validation`` is neither
HONEST_EVALUATIONS = ("cv", "test")
#: below this many patients in some class a bootstrap CI is not reported (it would look precise
#: while resting on a handful of clusters: 2 patients give "0.833 [0.833, 0.833]")
MIN_PATIENTS_PER_CLASS = 10
#: how the p-values of one evaluation are adjusted for multiplicity
ADJUSTMENT = (
    "Holm (step-down Bonferroni) over every p-value of one evaluation (cv or test): all "
    "hybrid-vs-other comparisons x heads x {balanced accuracy, ROC-AUC, clustered McNemar}"
)
#: the decision rule behind y_pred, the confusion matrix, per-class tables, sensitivity, specificity
DECISION_RULE = (
    "predicted class = argmax of p_<class> (the y_pred column); the confusion matrix, the "
    "per-class table, sensitivity and specificity all follow it (an image is called positive "
    "when the positive class has the highest probability)"
)


def positive_class(classes: Sequence[str]) -> str:
    """The 'positive' class (sensitivity, specificity, PR-AUC): malignant, abnormal, or the last."""
    for name in ("malignant", "abnormal"):
        if name in classes:
            return name
    return str(classes[-1])


# --------------------------------------------------------------------------------------------------
# kernels (integer-encoded labels, optional per-image weights)


def _confusion(yt: np.ndarray, yp: np.ndarray, k: int, w: np.ndarray | None = None) -> np.ndarray:
    """(k, k) confusion matrix, rows = true, columns = predicted; weighted counts given ``w``."""
    return np.bincount(yt * k + yp, weights=w, minlength=k * k).reshape(k, k).astype(float)


def _div(num, den):
    """num/den with 0 where den == 0 (scikit-learn's zero_division=0)."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den > 0)
    return out


def table_from_confusion(cm: np.ndarray) -> dict:
    """Per-class precision/recall/F1/support and their averages from a confusion matrix."""
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    n = cm.sum()
    precision = _div(tp, predicted)
    recall = _div(tp, support)
    f1 = _div(2 * tp, support + predicted)  # == 2PR/(P+R) where defined; 0 otherwise
    present = support > 0
    # macro averages run over the classes seen in y_true or y_pred (scikit-learn's default labels):
    # with every class present this is the plain mean; a class absent from a bootstrap resample
    # does not enter it as a spurious 0
    seen = present | (predicted > 0)
    out = {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "accuracy": float(tp.sum() / n) if n > 0 else math.nan,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else math.nan,
        "macro_precision": float(precision[seen].mean()) if seen.any() else math.nan,
        "macro_recall": float(recall[seen].mean()) if seen.any() else math.nan,
        "macro_f1": float(f1[seen].mean()) if seen.any() else math.nan,
    }
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        out[f"weighted_{name}"] = float((values * support).sum() / n) if n > 0 else math.nan
    return out


class _RankedScore:
    """A score vector prepared once (unique values + inverse) for fast weighted AUC / AP."""

    def __init__(self, score: np.ndarray, positive: np.ndarray):
        self.unique, self.inv = np.unique(np.asarray(score, dtype=float), return_inverse=True)
        self.pos = positive.astype(float)
        self.neg = 1.0 - self.pos

    def _sums(self, w):
        m = len(self.unique)
        pw = self.pos if w is None else self.pos * w
        nw = self.neg if w is None else self.neg * w
        return (
            np.bincount(self.inv, weights=pw, minlength=m),
            np.bincount(self.inv, weights=nw, minlength=m),
        )

    def auc(self, w: np.ndarray | None = None) -> float:
        """ROC-AUC = P(pos > neg) + 0.5 P(tie) (Mann-Whitney); NaN if a side is empty."""
        pos_u, neg_u = self._sums(w)
        p, n = pos_u.sum(), neg_u.sum()
        if p <= 0 or n <= 0:
            return math.nan
        neg_below = np.cumsum(neg_u) - neg_u
        return float((pos_u * (neg_below + 0.5 * neg_u)).sum() / (p * n))

    def _group_sums_batch(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, U) positive and negative weight per distinct score (ascending) for weight rows W."""
        if not hasattr(self, "_order"):
            self._order = np.argsort(self.inv, kind="stable")
            sorted_inv = self.inv[self._order]
            self._starts = np.r_[0, np.flatnonzero(np.diff(sorted_inv)) + 1]
            self._pos_sorted = self.pos[self._order]
        n_unique = len(self._starts)
        if n_unique <= 64:  # heavy ties (k-NN vote fractions): a small dense matmul
            if not hasattr(self, "_onehot"):
                self._onehot = np.zeros((len(self.inv), n_unique))
                self._onehot[np.arange(len(self.inv)), self.inv] = 1.0
            return W @ (self._onehot * self.pos[:, None]), W @ (self._onehot * self.neg[:, None])
        Wp = W[:, self._order]
        pos, neg = Wp * self._pos_sorted, Wp * (1.0 - self._pos_sorted)
        if n_unique == len(self.inv):  # no ties: every image is its own group
            return pos, neg
        return (
            np.add.reduceat(pos, self._starts, axis=1),
            np.add.reduceat(neg, self._starts, axis=1),
        )

    def auc_batch(self, W: np.ndarray) -> np.ndarray:
        """:meth:`auc` for every row of the (B, n) weight matrix ``W`` at once."""
        pos_u, neg_u = self._group_sums_batch(W)
        p, n = pos_u.sum(axis=1), neg_u.sum(axis=1)
        neg_below = np.cumsum(neg_u, axis=1) - neg_u
        num = (pos_u * (neg_below + 0.5 * neg_u)).sum(axis=1)
        return np.where((p > 0) & (n > 0), num / np.where((p > 0) & (n > 0), p * n, 1.0), np.nan)

    def average_precision_batch(self, W: np.ndarray) -> np.ndarray:
        """:meth:`average_precision` for every row of ``W`` at once."""
        pos_u, neg_u = self._group_sums_batch(W)
        p = pos_u.sum(axis=1, keepdims=True)
        tp = np.cumsum(pos_u[:, ::-1], axis=1)
        fp = np.cumsum(neg_u[:, ::-1], axis=1)
        precision = _div(tp, tp + fp)
        recall = _div(tp, np.broadcast_to(p, tp.shape))
        ap = (np.diff(recall, axis=1, prepend=0.0) * precision).sum(axis=1)
        return np.where(p[:, 0] > 0, ap, np.nan)

    def average_precision(self, w: np.ndarray | None = None) -> float:
        """Step-wise AP = sum_k (R_k - R_{k-1}) P_k over descending thresholds (scikit-learn's)."""
        pos_u, neg_u = self._sums(w)
        p = pos_u.sum()
        if p <= 0:
            return math.nan
        tp = np.cumsum(pos_u[::-1])
        fp = np.cumsum(neg_u[::-1])
        precision = _div(tp, tp + fp)
        recall = tp / p
        return float((np.diff(recall, prepend=0.0) * precision).sum())


def _encode(values, classes: tuple[str, ...]) -> np.ndarray:
    """Labels -> 0..k-1 in ``classes`` order; ConfigError naming the first unknown label."""
    values = np.asarray(values, dtype=object).astype(str)
    codes = pd.Index(classes).get_indexer(values)
    if (codes < 0).any():
        bad = values[codes < 0][0]
        raise ConfigError(f"label {bad!r} is not one of the classes {classes}")
    return codes.astype(np.int64)


class _Prepared:
    """Encoded labels and prepared scores of one prediction set, reused by every resample."""

    def __init__(self, y_true, y_pred, proba, classes, threshold, positive):
        self.classes = tuple(str(c) for c in classes)
        self.k = len(self.classes)
        if self.k < 2:
            raise ConfigError(f"need at least two classes, got {self.classes}")
        index = {c: i for i, c in enumerate(self.classes)}
        self.yt = _encode(y_true, self.classes)
        self.yp = _encode(y_pred, self.classes)
        self.proba = np.asarray(proba, dtype=float).reshape(len(self.yt), self.k)
        self.threshold = float(threshold)
        self.positive = positive or positive_class(self.classes)
        if self.positive not in index:
            raise ConfigError(f"positive class {self.positive!r} is not one of {self.classes}")
        self.pos_index = index[self.positive]
        self.ranked = [_RankedScore(self.proba[:, j], self.yt == j) for j in range(self.k)]
        self.pos_true = self.yt == self.pos_index
        self.pos_pred = self.yp == self.pos_index  # the decision rule: argmax (y_pred)
        self.pos_thr = self.proba[:, self.pos_index] >= self.threshold  # extra operating point

    def scalars(self, w: np.ndarray | None = None) -> dict:
        """The CI metrics (and the table) for one weighting of the images."""
        table = table_from_confusion(_confusion(self.yt, self.yp, self.k, w))
        aucs = [r.auc(w) for r in self.ranked]
        if self.k == 2:
            auc_ovr = aucs[1]  # binary: scikit-learn's convention (score of the second class)
        else:
            auc_ovr = float(np.mean(aucs)) if not np.isnan(aucs).any() else math.nan
        ww = np.ones(len(self.yt)) if w is None else w
        pos_w = ww[self.pos_true].sum()
        neg_w = ww[~self.pos_true].sum()
        sens = ww[self.pos_true & self.pos_pred].sum() / pos_w if pos_w > 0 else math.nan
        spec = ww[~self.pos_true & ~self.pos_pred].sum() / neg_w if neg_w > 0 else math.nan
        sens_t = ww[self.pos_true & self.pos_thr].sum() / pos_w if pos_w > 0 else math.nan
        spec_t = ww[~self.pos_true & ~self.pos_thr].sum() / neg_w if neg_w > 0 else math.nan
        return {
            **table,
            "per_class_roc_auc": aucs,
            "roc_auc_ovr": auc_ovr,
            "roc_auc_pos_vs_rest": aucs[self.pos_index],
            "pr_auc_pos_vs_rest": self.ranked[self.pos_index].average_precision(w),
            "sensitivity": float(sens),
            "specificity": float(spec),
            "sensitivity_at_threshold": float(sens_t),
            "specificity_at_threshold": float(spec_t),
        }

    def scalars_batch(self, W: np.ndarray, metrics: Sequence[str] = CI_METRICS) -> dict:
        """``metrics`` for every row of the (B, n) weight matrix ``W``: {metric: (B,) array}.

        The same definitions as :meth:`scalars`, vectorised over resamples (tests check equality).
        """
        k = self.k
        onehot = np.zeros((len(self.yt), k * k))
        onehot[np.arange(len(self.yt)), self.yt * k + self.yp] = 1.0
        cm = (W @ onehot).reshape(-1, k, k)
        tp = np.diagonal(cm, axis1=1, axis2=2)
        support = cm.sum(axis=2)
        predicted = cm.sum(axis=1)
        n = support.sum(axis=1)
        recall = _div(tp, support)
        f1 = _div(2 * tp, support + predicted)
        present = support > 0
        seen = present | (predicted > 0)
        out = {
            "accuracy": _nan_div(tp.sum(axis=1), n),
            "balanced_accuracy": _nan_div((recall * present).sum(axis=1), present.sum(axis=1)),
            "macro_f1": _nan_div((f1 * seen).sum(axis=1), seen.sum(axis=1)),
            "weighted_f1": _nan_div((f1 * support).sum(axis=1), n),
        }
        if {"roc_auc_ovr", "roc_auc_pos_vs_rest"} & set(metrics):
            aucs = np.column_stack([r.auc_batch(W) for r in self.ranked])
            out["roc_auc_ovr"] = aucs[:, 1] if k == 2 else aucs.mean(axis=1)  # NaN if any is NaN
            out["roc_auc_pos_vs_rest"] = aucs[:, self.pos_index]
        if "pr_auc_pos_vs_rest" in metrics:
            out["pr_auc_pos_vs_rest"] = self.ranked[self.pos_index].average_precision_batch(W)
        pt = self.pos_true.astype(float)
        out["sensitivity"] = _nan_div(W @ (pt * self.pos_pred), W @ pt)
        out["specificity"] = _nan_div(W @ ((1 - pt) * ~self.pos_pred), W @ (1 - pt))
        return {m: out[m] for m in metrics}


def _nan_div(num, den) -> np.ndarray:
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# --------------------------------------------------------------------------------------------------
# public API


def compute_metrics(
    y_true,
    y_pred,
    proba,
    classes: Sequence[str],
    *,
    threshold: float = 0.5,
    positive: str | None = None,
) -> dict:
    """Every point metric of one prediction set; NaN (with a note in ``notes``) where undefined.

    ``proba`` is (n, len(classes)) with columns in ``classes`` order. The positive class (for
    sensitivity, specificity, positive-vs-rest ROC/PR-AUC) defaults to malignant/abnormal/last
    class. One decision rule (:data:`DECISION_RULE`): ``y_pred`` (the argmax) makes the confusion
    matrix, the per-class table, ``sensitivity`` and ``specificity``. ``threshold`` only sets a
    second, separately named operating point: ``sensitivity_at_threshold`` /
    ``specificity_at_threshold`` call an image positive when its positive-class probability is
    >= ``threshold``.
    """
    prep = _Prepared(y_true, y_pred, proba, classes, threshold, positive)
    s = prep.scalars()
    notes = _notes(prep, s)
    per_class = {
        c: {
            "precision": float(s["precision"][i]),
            "recall": float(s["recall"][i]),
            "f1": float(s["f1"][i]),
            "support": int(s["support"][i]),
            "roc_auc_ovr": float(s["per_class_roc_auc"][i]),
        }
        for i, c in enumerate(prep.classes)
    }
    out = {
        "n_images": len(prep.yt),
        "classes": list(prep.classes),
        "positive_class": prep.positive,
        "threshold": prep.threshold,
        "decision_rule": "argmax",
        "per_class": per_class,
        "confusion_matrix": _confusion(prep.yt, prep.yp, prep.k).astype(int).tolist(),
        "notes": notes,
    }
    for key in SCALAR_METRICS:
        out[key] = float(s[key])
    return out


def _notes(prep: _Prepared, s: dict) -> list[str]:
    notes = []
    if len(prep.yt) == 0:
        return ["no predictions"]
    missing = [c for i, c in enumerate(prep.classes) if s["support"][i] == 0]
    if missing:
        notes.append(
            f"class(es) {', '.join(missing)} absent from y_true: recall/F1 are 0 by convention "
            "(macro averages include them only if predicted), balanced accuracy averages the "
            "present classes, one-vs-rest ROC-AUC is undefined (NaN)"
        )
    never = [c for i, c in enumerate(prep.classes) if s["support"][i] > 0 and s["f1"][i] == 0]
    if never:
        notes.append(f"class(es) {', '.join(never)} never correctly predicted (F1 = 0)")
    if math.isnan(s["roc_auc_pos_vs_rest"]):
        notes.append(
            f"only one of {prep.positive}/rest in y_true: {prep.positive}-vs-rest AUC is NaN"
        )
    sums = prep.proba.sum(axis=1)
    if len(sums) and not np.allclose(sums, 1.0, atol=1e-4):
        notes.append("probabilities do not sum to 1 per image")
    return notes


def cluster_bootstrap_weights(
    groups: Sequence, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_boot, n_images) weights of a cluster bootstrap: patients drawn with replacement.

    An image's weight is the number of times its group (patient) was drawn, so all images of one
    patient share a weight. Pass image ids as ``groups`` for an image-level bootstrap.
    """
    codes, uniques = pd.factorize(pd.Series(np.asarray(groups), dtype=object).astype(str))
    n_groups = len(uniques)
    if n_groups == 0:
        return np.zeros((n_boot, 0))
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    offsets = (np.arange(n_boot) * n_groups)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n_boot * n_groups)
    return counts.reshape(n_boot, n_groups)[:, codes].astype(float)


def _chunk(n_boot: int, n_images: int) -> int:
    """Resamples per batch: about 2 million weights (16 MB) at a time."""
    return max(1, min(n_boot, 2_000_000 // max(1, n_images)))


def _percentile_ci(values: np.ndarray, level: float) -> tuple[float, float, int]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan, 0
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high), int(finite.size)


def bootstrap_metrics(
    y_true,
    y_pred,
    proba,
    classes: Sequence[str],
    groups: Sequence,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    threshold: float = 0.5,
    positive: str | None = None,
    metrics: Sequence[str] = CI_METRICS,
    min_patients_per_class: int | None = None,
) -> dict:
    """Percentile CIs of ``metrics`` under a patient-clustered bootstrap (``groups`` = patient ids).

    Returns ``{metric: {"low", "high", "n_valid"}}``; resamples where a metric is undefined (e.g. a
    class missing from the resample) are dropped and counted out of ``n_valid``. With
    ``min_patients_per_class`` (e.g. :data:`MIN_PATIENTS_PER_CLASS`), a sample with fewer patients
    in some class gets NaN bounds and ``"note"`` (e.g. ``n/a (3 patients in class benign < 10)``).
    """
    prep = _Prepared(y_true, y_pred, proba, classes, threshold, positive)
    if min_patients_per_class is not None:
        note = ci_note(patients_per_class(y_true, groups, prep.classes), min_patients_per_class)
        if note:
            return {
                m: {"low": math.nan, "high": math.nan, "n_valid": 0, "note": note} for m in metrics
            }
    if n_boot <= 0 or len(prep.yt) == 0:
        return {m: {"low": math.nan, "high": math.nan, "n_valid": 0} for m in metrics}
    rng = np.random.default_rng(seed)
    values = {m: np.empty(n_boot) for m in metrics}
    done = 0
    chunk = _chunk(n_boot, len(prep.yt))
    while done < n_boot:
        weights = cluster_bootstrap_weights(groups, min(chunk, n_boot - done), rng)
        batch = prep.scalars_batch(weights, metrics)
        for m in metrics:
            values[m][done : done + len(weights)] = batch[m]
        done += len(weights)
    out = {}
    for m in metrics:
        low, high, valid = _percentile_ci(values[m], level)
        out[m] = {"low": low, "high": high, "n_valid": valid}
    return out


def majority_baseline(train_labels: Sequence[str], y_true: Sequence[str], classes) -> dict:
    """Accuracy of always predicting the most frequent *training* class (ties: first class)."""
    train = pd.Series(np.asarray(train_labels, dtype=object)).astype(str)
    counts = train.value_counts()
    if counts.empty:
        return {"majority_class": None, "majority_baseline": math.nan}
    best = counts.max()
    majority = next(c for c in classes if counts.get(c, 0) == best)
    yt = np.asarray(y_true, dtype=object).astype(str)
    acc = float(np.mean(yt == majority)) if len(yt) else math.nan
    return {"majority_class": majority, "majority_baseline": acc}


def mcnemar_exact(correct_a, correct_b) -> dict:
    """McNemar's exact test on paired correctness: two-sided binomial tail on the discordant pairs.

    ``b`` = A right & B wrong, ``c`` = A wrong & B right; p = min(1, 2 P[X <= min(b, c)]),
    X ~ Binomial(b + c, 1/2); p = 1 when there are no discordant pairs.
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ConfigError(f"McNemar needs paired vectors, got {a.shape} and {b_.shape}")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    return {"b": b, "c": c, "p_value": binomial_two_sided(min(b, c), b + c)}


def mcnemar_clustered(correct_a, correct_b, groups) -> dict:
    """McNemar's test for clustered matched pairs (Durkalski et al., Stat Med 2003;22:2417).

    Images of one patient are not independent, so the per-image McNemar test overstates the
    evidence. Per patient k: ``b_k`` = images only A gets right, ``c_k`` = images only B gets
    right; ``X = (sum b_k - sum c_k)^2 / sum (b_k - c_k)^2`` is referred to chi-square with 1 df
    (``p = erfc(sqrt(X / 2))``). With one image per patient it equals the usual McNemar
    chi-square without continuity correction. Asymptotic: few discordant patients make it
    unreliable (``n_discordant_patients`` says how many there are). p = 1 without discordance.
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    g = np.asarray(groups, dtype=object).astype(str)
    if not (a.shape == b_.shape == g.shape):
        raise ConfigError(
            f"clustered McNemar needs paired vectors, got {a.shape}, {b_.shape}, {g.shape}"
        )
    codes, _ = pd.factorize(pd.Series(g, dtype=object))
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    bk = np.bincount(codes, weights=(a & ~b_).astype(float), minlength=n_groups)
    ck = np.bincount(codes, weights=(~a & b_).astype(float), minlength=n_groups)
    d = bk - ck
    den = float(np.sum(d**2))
    stat = float(d.sum() ** 2 / den) if den > 0 else 0.0
    p = math.erfc(math.sqrt(stat / 2.0)) if den > 0 else 1.0
    return {
        "test": "clustered McNemar (Durkalski 2003), patients as clusters",
        "b": int(bk.sum()),
        "c": int(ck.sum()),
        "n_discordant_patients": int(np.sum((bk + ck) > 0)),
        "statistic": stat,
        "p_value": float(min(1.0, p)),
    }


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a test).

    Sorted ascending, ``p_(i) * (m - i + 1)`` (i = 1..m), made monotone with a running maximum and
    capped at 1; compare the adjusted values with alpha directly.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    if m == 0:
        return out.tolist()
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out.tolist()


def patients_per_class(y_true, groups, classes: Sequence[str]) -> dict[str, int]:
    """Distinct patients with at least one image of each class."""
    df = pd.DataFrame(
        {"y": np.asarray(y_true, dtype=object).astype(str), "g": np.asarray(groups).astype(str)}
    )
    counts = df.drop_duplicates().groupby("y")["g"].nunique()
    return {c: int(counts.get(c, 0)) for c in classes}


def ci_note(per_class_patients: dict[str, int], minimum: int = MIN_PATIENTS_PER_CLASS) -> str:
    """'' when every class has >= ``minimum`` patients, else why no CI is given."""
    if not per_class_patients:
        return "n/a (no patients)"
    c, n = min(per_class_patients.items(), key=lambda kv: kv[1])
    if n >= minimum:
        return ""
    return f"n/a ({n} patient{'s' if n != 1 else ''} in class {c} < {minimum})"


def binomial_two_sided(k: int, n: int) -> float:
    """min(1, 2 * P[X <= k]) for X ~ Binomial(n, 1/2), exact with integer arithmetic."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_comparison(
    a: pd.DataFrame,
    b: pd.DataFrame,
    classes: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    metrics: Sequence[str] = PAIRED_METRICS,
    min_patients_per_class: int = MIN_PATIENTS_PER_CLASS,
) -> dict:
    """Compare two prediction tables (predictions.csv rows) on the images they share.

    For each metric: the difference A - B, its percentile CI under a paired patient-level bootstrap
    (both models are scored on the same resampled patients) and a two-sided p-value from the
    bootstrap standard error (``erfc(|d| / (SE sqrt 2))``; the percentile p
    ``min(1, 2 (min(#[d* <= 0], #[d* >= 0]) + 1) / (B + 1))`` is kept as ``p_percentile``: it
    cannot go below 2 / (B + 1), which a Holm adjustment over many tests never passes); plus
    McNemar's test for clustered pairs (:func:`mcnemar_clustered`, patients as clusters) on
    per-image correctness.
    Below ``min_patients_per_class`` patients in some class of the shared images no CI or
    p-value is given (``ci_note`` says why).
    """
    merged = a.merge(b, on="image_id", suffixes=("_a", "_b"))
    out: dict = {"n_images": len(merged), "n_patients": int(merged["patient_id_a"].nunique())}
    if len(merged) == 0:
        out["note"] = "no shared images"
        return out
    if (merged["y_true_a"].astype(str) != merged["y_true_b"].astype(str)).any():
        raise ConfigError("paired comparison: the two prediction sets disagree on y_true")
    pcols = [f"p_{c}" for c in classes]
    preps = [
        _Prepared(
            merged["y_true_a"],
            merged[f"y_pred_{s}"],
            merged[[f"{c}_{s}" for c in pcols]].to_numpy(float),
            classes,
            0.5,
            None,
        )
        for s in ("a", "b")
    ]
    point = [p.scalars() for p in preps]
    per_class = patients_per_class(merged["y_true_a"], merged["patient_id_a"], classes)
    out["patients_per_class"] = per_class
    out["ci_note"] = ci_note(per_class, min_patients_per_class)
    if out["ci_note"]:
        n_boot = 0
    rng = np.random.default_rng(seed)
    diffs = {m: [] for m in metrics}
    done, chunk = 0, _chunk(n_boot, len(merged))
    while done < n_boot:
        W = cluster_bootstrap_weights(merged["patient_id_a"], min(chunk, n_boot - done), rng)
        sa, sb = preps[0].scalars_batch(W, metrics), preps[1].scalars_batch(W, metrics)
        for m in metrics:
            diffs[m].extend(sa[m] - sb[m])
        done += len(W)
    for m in metrics:
        d = np.asarray(diffs[m], dtype=float)
        low, high, valid = _percentile_ci(d, level)
        finite = d[np.isfinite(d)]
        diff = float(point[0][m] - point[1][m])
        p, p_pct, se = math.nan, math.nan, math.nan
        if finite.size >= 2:
            # percentile p: (count + 1) / (B + 1), never 0 -- but floored at 2 / (B + 1), which
            # no multiplicity adjustment of a dozen tests survives; the reported p is therefore
            # the Wald test on the bootstrap standard error (continuous, no floor)
            tail = min(np.sum(finite <= 0), np.sum(finite >= 0))
            p_pct = min(1.0, 2 * (tail + 1) / (finite.size + 1))
            se = float(np.std(finite, ddof=1))
            if se > 0 and math.isfinite(diff):
                p = math.erfc(abs(diff) / se / math.sqrt(2.0))
            else:
                p = 1.0 if diff == 0 else p_pct
        out[m] = {
            "a": float(point[0][m]),
            "b": float(point[1][m]),
            "diff": float(point[0][m] - point[1][m]),
            "ci_low": low,
            "ci_high": high,
            "p_value": float(p),
            "p_value_test": "two-sided Wald test, diff / bootstrap SE",
            "p_percentile": float(p_pct),
            "bootstrap_se": se,
            "n_valid": valid,
        }
    correct_a = merged["y_pred_a"].astype(str) == merged["y_true_a"].astype(str)
    correct_b = merged["y_pred_b"].astype(str) == merged["y_true_a"].astype(str)
    out["mcnemar"] = mcnemar_clustered(correct_a, correct_b, merged["patient_id_a"])
    if out["ci_note"]:
        out["mcnemar"]["p_value"] = math.nan
    return out


# --------------------------------------------------------------------------------------------------
# predictions.csv -> leaderboard + metrics


def read_predictions(path) -> pd.DataFrame:
    """Read predictions.csv with identifiers and fold as strings (never re-typed by pandas)."""
    df = pd.read_csv(
        path,
        dtype={
            "image_id": str,
            "patient_id": str,
            "fold": str,
            "features": str,
            "head": str,
            "y_true": str,
            "y_pred": str,
        },
        keep_default_na=False,
    )
    missing = [
        c
        for c in ("image_id", "patient_id", "fold", "features", "head", "y_true", "y_pred")
        if c not in df.columns
    ]
    if missing:
        raise ConfigError(f"{path}: predictions table lacks columns {missing}")
    return df


def _check_columns(predictions: pd.DataFrame, classes) -> list[str]:
    pcols = [f"p_{c}" for c in classes]
    missing = [c for c in pcols if c not in predictions.columns]
    if missing:
        raise ConfigError(
            f"predictions lack probability columns {missing} for classes {list(classes)}"
        )
    return pcols


def evaluation_of(fold) -> str:
    """``test`` / ``validation`` for those fold labels, ``cv`` for every other (a fold number)."""
    fold = str(fold)
    if fold == TEST_FOLD:
        return "test"
    if fold == VALIDATION_FOLD:
        return "validation"
    return "cv"


def _evaluation_rows(group: pd.DataFrame) -> dict[str, pd.DataFrame]:
    evaluation = group["fold"].astype(str).map(evaluation_of)
    out = {}
    for name in ("cv", "test", "validation"):
        rows = group[evaluation == name]
        if len(rows):
            out[name] = rows
    return out


def _counts_labels(train_counts: dict) -> list[str]:
    return [str(c) for c, n in train_counts.items() for _ in range(int(n))]


def _baseline(evaluation: str, rows: pd.DataFrame, cv_rows, classes, train_counts) -> dict:
    """Majority-class baseline from training labels, never from the evaluated rows' own labels.

    ``cv`` with K >= 2 folds: per fold, the majority of the other folds (that fold's training
    part). ``test`` and ``validation`` (and a single-fold ``cv``): the recorded training class
    counts (``config.json["train_class_counts"]``); for ``test`` without them, the K-fold CV rows
    (the whole training part in ``featmammo fit``). Otherwise NaN with ``majority_note`` saying
    why.
    """
    n_folds = 0 if cv_rows is None else cv_rows["fold"].astype(str).nunique()
    if evaluation == "cv" and n_folds >= 2:
        correct = 0
        majorities = set()
        for fold, part in rows.groupby(rows["fold"].astype(str), sort=True):
            train = rows.loc[rows["fold"].astype(str) != fold, "y_true"]
            bl = majority_baseline(train, part["y_true"], classes)
            majorities.add(bl["majority_class"])
            correct += bl["majority_baseline"] * len(part)
        name = majorities.pop() if len(majorities) == 1 else "/".join(sorted(majorities))
        return {
            "majority_class": name,
            "majority_baseline": correct / len(rows),
            "majority_source": "each fold's training part (the other folds)",
        }
    if train_counts:
        out = majority_baseline(_counts_labels(train_counts), rows["y_true"], classes)
        return {**out, "majority_source": "train_class_counts recorded in config.json"}
    if evaluation == "test" and n_folds >= 2:
        out = majority_baseline(cv_rows["y_true"], rows["y_true"], classes)
        return {**out, "majority_source": "the K-fold CV rows (the training part)"}
    return {
        "majority_class": None,
        "majority_baseline": math.nan,
        "majority_source": "unknown: config.json records no train_class_counts",
    }


def _per_fold(rows: pd.DataFrame, classes, pcols, threshold) -> list[dict]:
    out = []
    for fold, part in rows.groupby(rows["fold"].astype(str), sort=True):
        m = compute_metrics(
            part["y_true"],
            part["y_pred"],
            part[pcols].to_numpy(float),
            classes,
            threshold=threshold,
        )
        out.append(
            {
                "fold": fold,
                "n_images": m["n_images"],
                "n_patients": int(part["patient_id"].nunique()),
                **{k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr")},
            }
        )
    return out


def evaluate_predictions(
    predictions: pd.DataFrame,
    classes: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    threshold: float = 0.5,
    positive: str | None = None,
    level: float = 0.95,
    train_counts: dict | None = None,
    compare_to: str = "hybrid",
    optimistic_features: Sequence[str] = (),
    min_patients_per_class: int = MIN_PATIENTS_PER_CLASS,
) -> tuple[pd.DataFrame, dict]:
    """Leaderboard (one row per features x head x evaluation) and a metrics dict, from predictions.

    ``evaluation`` is ``cv`` (pooled out-of-fold rows: numbered folds), ``test`` or
    ``validation`` (HybridNet's early-stopping rows: they chose the epoch, so they are optimistic;
    they get no rank and enter no comparison). ``compare_to`` names the features set paired
    against every other features set with the same head, per honest evaluation; the p-values of
    one evaluation are Holm-adjusted together (``p_holm``). Rows of ``optimistic_features``
    (embeddings trained on the evaluated images) are marked ``optimistic``. A result whose
    smallest class has fewer than ``min_patients_per_class`` patients gets no CI (NaN) and a
    ``ci_note`` saying why.
    """
    classes = tuple(str(c) for c in classes)
    pcols = _check_columns(predictions, classes)
    positive = positive or positive_class(classes)
    optimistic_features = {str(f) for f in optimistic_features or ()}
    rows_out, results, groups = [], [], {}
    for (features, head), group in predictions.groupby(["features", "head"], sort=False):
        evals = _evaluation_rows(group)
        for evaluation, rows in evals.items():
            groups[(features, head, evaluation)] = rows
            m = compute_metrics(
                rows["y_true"],
                rows["y_pred"],
                rows[pcols].to_numpy(float),
                classes,
                threshold=threshold,
                positive=positive,
            )
            per_class_patients = patients_per_class(rows["y_true"], rows["patient_id"], classes)
            note = ci_note(per_class_patients, min_patients_per_class)
            ci = bootstrap_metrics(
                rows["y_true"],
                rows["y_pred"],
                rows[pcols].to_numpy(float),
                classes,
                rows["patient_id"],
                n_boot=0 if note else n_boot,
                seed=seed,
                level=level,
                threshold=threshold,
                positive=positive,
            )
            bl = _baseline(evaluation, rows, evals.get("cv"), classes, train_counts)
            n_patients = int(rows["patient_id"].nunique())
            optimistic = evaluation == "validation" or str(features) in optimistic_features
            row = {
                "features": features,
                "head": head,
                "evaluation": evaluation,
                "optimistic": optimistic,
                "n_images": m["n_images"],
                "n_patients": n_patients,
                "min_patients_per_class": min(per_class_patients.values()),
                "majority_class": bl["majority_class"],
                "majority_baseline": bl["majority_baseline"],
            }
            for key in SCALAR_METRICS:
                row[key] = m[key]
                if key in ci:
                    row[f"{key}_ci_low"] = ci[key]["low"]
                    row[f"{key}_ci_high"] = ci[key]["high"]
            row["ci_note"] = note
            row["positive_class"] = positive
            row["decision_rule"] = "argmax"
            row["threshold"] = threshold
            rows_out.append(row)
            result = {
                "features": features,
                "head": head,
                "evaluation": evaluation,
                "optimistic": optimistic,
                "n_images": m["n_images"],
                "n_patients": n_patients,
                "patients_per_class": per_class_patients,
                "ci_note": note,
                **bl,
                "metrics": m,
                "ci": ci,
            }
            if evaluation == "cv":
                result["per_fold"] = _per_fold(rows, classes, pcols, threshold)
            results.append(result)
    comparisons = []
    for (features, head, evaluation), rows in groups.items():
        if features != compare_to or evaluation not in HONEST_EVALUATIONS:
            continue
        for (other, head2, eval2), rows2 in groups.items():
            if head2 != head or eval2 != evaluation or other == features:
                continue
            cmp = paired_comparison(
                rows,
                rows2,
                classes,
                n_boot=n_boot,
                seed=seed,
                level=level,
                min_patients_per_class=min_patients_per_class,
            )
            comparisons.append(
                {
                    "a": features,
                    "b": other,
                    "head": head,
                    "evaluation": evaluation,
                    "optimistic": bool({str(features), str(other)} & optimistic_features),
                    **cmp,
                }
            )
    _adjust(comparisons)
    leaderboard = _rank(pd.DataFrame(rows_out))
    metrics = {
        "classes": list(classes),
        "positive_class": positive,
        "decision_rule": DECISION_RULE,
        "threshold": threshold,
        "threshold_use": (
            "only sensitivity_at_threshold / specificity_at_threshold (a second operating point "
            f"at P({positive}) >= threshold); every other figure follows the decision rule"
        ),
        "n_boot": n_boot,
        "seed": seed,
        "ci_level": level,
        "bootstrap": "patient-clustered percentile bootstrap (patients resampled with replacement)",
        "min_patients_per_class": min_patients_per_class,
        "ci_rule": (
            f"no CI (and no comparison p-value) where some class has fewer than "
            f"{min_patients_per_class} patients: ci_note says which"
        ),
        "multiple_comparisons": ADJUSTMENT,
        "optimistic_features": sorted(optimistic_features),
        "results": results,
        "comparisons": comparisons,
    }
    return leaderboard, metrics


def _adjust(comparisons: list[dict]) -> None:
    """Holm-adjust every p-value of one evaluation together (adds ``p_holm`` in place)."""
    for evaluation in HONEST_EVALUATIONS:
        slots = []
        for c in comparisons:
            if c["evaluation"] != evaluation:
                continue
            for key in PAIRED_METRICS:
                if key in c:
                    slots.append(c[key])
            if "mcnemar" in c:
                slots.append(c["mcnemar"])
        adjusted = holm_adjust([d["p_value"] for d in slots])
        for d, p in zip(slots, adjusted, strict=True):
            d["p_holm"] = p


def _rank(leaderboard: pd.DataFrame) -> pd.DataFrame:
    """Order: test, cv, validation; within one, balanced accuracy descending. ``rank`` (1 = best
    balanced accuracy) is given within test and within cv only: validation rows are not ranked."""
    if leaderboard.empty:
        return leaderboard
    order = {"test": 0, "cv": 1, "validation": 2}
    lb = leaderboard.assign(_o=leaderboard["evaluation"].map(order))
    lb = lb.sort_values(["_o", "balanced_accuracy"], ascending=[True, False], kind="stable")
    lb = lb.drop(columns="_o").reset_index(drop=True)
    rank = pd.Series(np.nan, index=lb.index)
    for evaluation in HONEST_EVALUATIONS:
        sel = lb["evaluation"] == evaluation
        rank[sel] = lb.loc[sel, "balanced_accuracy"].rank(ascending=False, method="min")
    lb.insert(3, "rank", rank.astype("Int64"))
    return lb
