"""Metric kernels: the one decision rule, confusion matrices, per-class tables, ranked scores
(Mann-Whitney AUC, step-wise average precision) and :func:`compute_metrics`, in numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError

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
#: default target specificities of ``sens_at_spec_<t>`` (``fit --at-specificity``)
DEFAULT_AT_SPECIFICITY = (0.9,)
#: the false-positive limit of the standardized partial AUC ``pauc_0.10``
PAUC_MAX_FPR = 0.1


def sens_at_spec_name(target: float) -> str:
    """``sens_at_spec_0.90`` for 0.9: the column name of a target specificity."""
    return f"sens_at_spec_{float(target):.2f}"


def screening_metric_names(at_specificity=DEFAULT_AT_SPECIFICITY) -> tuple[str, ...]:
    """The screening metrics of the positive class, in report order: ``sens_at_spec_<t>`` per
    target, ``pauc_0.10`` and ``pf1``."""
    return (
        *(sens_at_spec_name(t) for t in at_specificity),
        f"pauc_{PAUC_MAX_FPR:.2f}",
        "pf1",
    )


def check_specificities(values) -> tuple[float, ...]:
    """Validated, deduplicated target specificities in (0, 1)."""
    out = []
    for v in values or DEFAULT_AT_SPECIFICITY:
        t = float(v)
        if not 0.0 < t < 1.0:
            raise ConfigError(f"--at-specificity {v}: give a specificity between 0 and 1")
        if sens_at_spec_name(t) not in map(sens_at_spec_name, out):
            out.append(t)
    return tuple(out)


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

    def roc_batch(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, U + 1) true- and false-positive rates over descending thresholds, from (0, 0)."""
        pos_u, neg_u = self._group_sums_batch(W)
        p = pos_u.sum(axis=1, keepdims=True)
        n = neg_u.sum(axis=1, keepdims=True)
        zero = np.zeros((len(W), 1))
        tp = np.hstack([zero, np.cumsum(pos_u[:, ::-1], axis=1)])
        fp = np.hstack([zero, np.cumsum(neg_u[:, ::-1], axis=1)])
        with np.errstate(invalid="ignore", divide="ignore"):
            return tp / np.where(p > 0, p, np.nan), fp / np.where(n > 0, n, np.nan)

    def sens_at_spec_batch(self, W: np.ndarray, target: float) -> np.ndarray:
        """Best sensitivity among the ROC points whose specificity is >= ``target``."""
        tpr, fpr = self.roc_batch(W)
        ok = (1.0 - fpr) >= float(target) - 1e-12
        best = np.where(ok, tpr, -np.inf).max(axis=1)
        return np.where(np.isfinite(tpr[:, -1]) & np.isfinite(fpr[:, -1]), best, np.nan)

    def pauc_batch(self, W: np.ndarray, max_fpr: float = PAUC_MAX_FPR) -> np.ndarray:
        """scikit-learn's standardized partial AUC (McClish): ``roc_auc_score(max_fpr=...)``."""
        tpr, fpr = self.roc_batch(W)
        f0, f1, t0, t1 = fpr[:, :-1], fpr[:, 1:], tpr[:, :-1], tpr[:, 1:]
        m = float(max_fpr)
        full = np.where(f1 <= m, (f1 - f0) * (t0 + t1) / 2.0, 0.0)
        cut = (f0 < m) & (f1 > m)
        with np.errstate(invalid="ignore", divide="ignore"):
            tm = t0 + (t1 - t0) * (m - f0) / np.where(cut, f1 - f0, 1.0)
        part = np.where(cut, (m - f0) * (t0 + tm) / 2.0, 0.0)
        area = np.nansum(full + part, axis=1)
        min_area, max_area = 0.5 * m**2, m
        out = 0.5 * (1.0 + (area - min_area) / (max_area - min_area))
        return np.where(np.isfinite(tpr[:, -1]) & np.isfinite(fpr[:, -1]), out, np.nan)

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

    def __init__(
        self, y_true, y_pred, proba, classes, threshold, positive,
        at_specificity=DEFAULT_AT_SPECIFICITY,
    ):  # fmt: skip
        self.at_specificity = tuple(float(t) for t in at_specificity)
        self.screening = screening_metric_names(self.at_specificity)
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
        screening = {k: float(v[0]) for k, v in self._screening_batch(ww[None, :]).items()}
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
            **screening,
        }

    def _screening_batch(self, W: np.ndarray, wanted=None) -> dict:
        """The screening metrics of the positive class for every row of ``W``."""
        wanted = self.screening if wanted is None else [m for m in self.screening if m in wanted]
        out = {}
        ranked = self.ranked[self.pos_index]
        for t in self.at_specificity:
            if sens_at_spec_name(t) in wanted:
                out[sens_at_spec_name(t)] = ranked.sens_at_spec_batch(W, t)
        pauc = f"pauc_{PAUC_MAX_FPR:.2f}"
        if pauc in wanted:
            out[pauc] = ranked.pauc_batch(W, PAUC_MAX_FPR)
        if "pf1" in wanted:
            p = np.clip(self.proba[:, self.pos_index], 0.0, 1.0)
            pt = self.pos_true.astype(float)
            ctp, cfp, n_pos = W @ (p * pt), W @ (p * (1 - pt)), W @ pt
            with np.errstate(invalid="ignore", divide="ignore"):
                precision = np.where(ctp + cfp > 0, ctp / (ctp + cfp), 0.0)
                recall = np.where(n_pos > 0, ctp / n_pos, np.nan)
                f1 = np.where(
                    (precision > 0) & (recall > 0),
                    2 * precision * recall / (precision + recall),
                    0.0,
                )
            out["pf1"] = np.where(n_pos > 0, f1, np.nan)
        return out

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
        out.update(self._screening_batch(W, metrics))
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
    at_specificity=DEFAULT_AT_SPECIFICITY,
) -> dict:
    """Every point metric of one prediction set; NaN (with a note in ``notes``) where undefined.

    ``proba`` is (n, len(classes)) with columns in ``classes`` order. The positive class (for
    sensitivity, specificity, positive-vs-rest ROC/PR-AUC) defaults to malignant/abnormal/last
    class. One decision rule (:data:`DECISION_RULE`): ``y_pred`` (the argmax) makes the confusion
    matrix, the per-class table, ``sensitivity`` and ``specificity``. ``threshold`` only sets a
    second, separately named operating point: ``sensitivity_at_threshold`` /
    ``specificity_at_threshold`` call an image positive when its positive-class probability is
    >= ``threshold``.

    Screening metrics of the positive class (:func:`screening_metric_names`):
    ``sens_at_spec_<t>`` for each ``at_specificity`` target (the best sensitivity among the ROC
    points whose specificity is >= t), ``pauc_0.10`` (scikit-learn's standardized
    ``roc_auc_score(max_fpr=0.1)``) and ``pf1`` (RSNA's probabilistic F1: precision = sum of
    P(positive) over positives / its sum over all, recall = that sum / number of positives).
    """
    prep = _Prepared(y_true, y_pred, proba, classes, threshold, positive, at_specificity)
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
    for key in (*SCALAR_METRICS, *prep.screening):
        out[key] = float(s[key])
    out["screening_metrics"] = list(prep.screening)
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
