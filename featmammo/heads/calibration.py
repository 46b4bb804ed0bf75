"""Probability calibration for the SVM heads: Platt sigmoids fitted on patient-grouped folds,
with the class weighting every other head keeps.

:class:`PatientCalibratedClassifier` wraps a classifier that has a ``decision_function``
(LinearSVC, SVC). ``fit(X, y, groups=patient_ids)``:

1. splits the training rows into ``cv`` stratified, **patient-disjoint** folds
   (:func:`featmammo.splits.grouped_kfold`; without ``groups`` every row is its own patient), so
   no patient is in both the part a calibration fold's classifier is fitted on and the part its
   decision values are taken from;
2. collects the out-of-fold decision values and fits one sigmoid per class (one for two classes)
   on them, **weighting every row by its class weight** (``class_weight="balanced"``: n / (K x
   n_class), as the SVM's own ``class_weight``); an unweighted sigmoid would put the class prior
   back into the probabilities, and with a weak signal the argmax then names the majority class
   for every image;
3. refits the classifier on every training row (scikit-learn's ``ensemble=False``).

``predict_proba``: the sigmoids of the decision values, normalised to sum to 1 (scikit-learn's
one-vs-rest rule). The probabilities are therefore *class-balanced* (as if every class had the
prior 1/K), like those of every other head, and ``predict`` is their argmax.

Fitted attributes are plain arrays (``calibration_``: one ``(a, b)`` row per sigmoid on the raw
decision scale, p = 1 / (1 + exp(-(a f + b)))), so the model serialises with skops.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .wrappers import class_weights

log = logging.getLogger(__name__)


def fit_sigmoid(f: np.ndarray, target: np.ndarray, weight: np.ndarray) -> tuple[float, float]:
    """Platt's sigmoid p = 1 / (1 + exp(-(a f + b))) by weighted maximum likelihood on Platt's
    smoothed targets ((N+ + 1) / (N+ + 2) and 1 / (N- + 2), counted unweighted as scikit-learn
    does). Returns ``(a, b)`` on the scale of ``f``."""
    from scipy.optimize import minimize
    from scipy.special import expit

    f = np.asarray(f, dtype=np.float64)
    pos = np.asarray(target, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    t = np.where(pos, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    w = np.asarray(weight, dtype=np.float64)
    w = w / w.sum()
    scale = float(np.std(f)) or 1.0  # optimise on a unit scale, report on the raw one
    z = f / scale

    def loss(ab):
        s = ab[0] * z + ab[1]
        p = expit(s)
        value = float(np.sum(w * (np.logaddexp(0.0, s) - t * s)))
        r = w * (p - t)
        return value, np.array([np.sum(r * z), np.sum(r)])

    prior = np.log((np.sum(w * pos) + 1e-12) / (np.sum(w * ~pos) + 1e-12))
    res = minimize(loss, np.array([1.0, prior]), jac=True, method="L-BFGS-B")
    a, b = res.x
    return float(a / scale), float(b)


def _pairwise(estimator) -> bool:
    """Whether ``estimator`` takes a precomputed kernel (rows and columns index samples)."""
    return getattr(estimator, "kernel", None) == "precomputed"


class PatientCalibratedClassifier(ClassifierMixin, BaseEstimator):
    """Sigmoid (Platt) calibration of ``estimator``'s decision function on patient-grouped folds,
    class-weighted (see the module docstring).

    ``cv``: calibration folds (fewer when a class has fewer patients; at least 2 patients per
    class are needed); ``class_weight``: ``"balanced"``, a dict label -> weight, or None (the
    sigmoids then learn the training prior back); ``random_state`` seeds the folds.
    """

    def __init__(self, estimator=None, cv: int = 3, class_weight="balanced", random_state=0):
        self.estimator = estimator
        self.cv = cv
        self.class_weight = class_weight
        self.random_state = random_state

    def _folds(self, y_enc: np.ndarray, groups) -> list[tuple[np.ndarray, np.ndarray]]:
        from ..splits import grouped_kfold

        n = len(y_enc)
        g = np.array([f"row{i}" for i in range(n)], dtype=object) if groups is None else groups
        g = np.asarray(g).astype(str)
        if len(g) != n:
            raise ValueError(f"groups has {len(g)} entries for {n} rows")
        per_class = [len(set(g[y_enc == k].tolist())) for k in range(len(self.classes_))]
        k = min(int(self.cv), min(per_class))
        if k < 2:
            worst = self.classes_[int(np.argmin(per_class))]
            raise ValueError(
                f"probability calibration needs at least 2 patients of every class; class "
                f"'{worst}' has {min(per_class)}"
            )
        if k < int(self.cv):
            log.info("calibration: %d patient-grouped folds instead of %d (a class has %d "
                     "patients)", k, int(self.cv), min(per_class))  # fmt: skip
        seed = 0 if self.random_state is None else int(self.random_state)
        return grouped_kfold(y_enc, g, k, seed=seed)

    def fit(self, X, y, groups=None):
        """Fit; ``groups`` (patient ids) make the calibration folds patient-disjoint."""
        if self.estimator is None:
            raise ValueError("PatientCalibratedClassifier needs an estimator")
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        enc = LabelEncoder().fit(y)
        self.classes_ = enc.classes_
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(
                f"needs samples of at least 2 classes; got 1 class ('{self.classes_[0]}')"
            )
        y_enc = enc.transform(y)
        folds = self._folds(y_enc, groups)
        self.n_calibration_folds_ = len(folds)
        n_cols = 1 if n_classes == 2 else n_classes
        decision = np.full((len(y_enc), n_cols), np.nan)
        pairwise = _pairwise(self.estimator)
        for tr, va in folds:
            est = clone(self.estimator)
            est.fit(X[np.ix_(tr, tr)] if pairwise else X[tr], y_enc[tr])
            d = est.decision_function(X[np.ix_(va, tr)] if pairwise else X[va])
            d = np.asarray(d, dtype=np.float64).reshape(len(va), -1)
            if n_cols == 1:
                decision[va, 0] = d[:, 0]
            else:  # a class absent from this fold's training side has no column: left nan
                for j, k in enumerate(np.asarray(est.classes_, dtype=int)):
                    decision[va, k] = d[:, j]
        w_class = class_weights(y_enc, n_classes, self.class_weight, self.classes_)
        w = w_class[y_enc]
        calib = np.zeros((n_cols, 2))
        for j in range(n_cols):
            k = 1 if n_cols == 1 else j
            ok = np.isfinite(decision[:, j])
            calib[j] = fit_sigmoid(decision[ok, j], y_enc[ok] == k, w[ok])
        self.calibration_ = calib
        self.estimator_ = clone(self.estimator).fit(X, y_enc)
        return self

    def decision_function(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        return self.estimator_.decision_function(X)

    def predict_proba(self, X):
        from scipy.special import expit

        d = np.asarray(self.decision_function(X), dtype=np.float64)
        d = d.reshape(d.shape[0], -1)
        p = expit(d * self.calibration_[:, 0] + self.calibration_[:, 1])
        if p.shape[1] == 1:
            return np.column_stack([1.0 - p[:, 0], p[:, 0]])
        total = p.sum(axis=1, keepdims=True)
        uniform = np.full_like(p, 1.0 / p.shape[1])
        return np.where(total > 0, p / np.where(total > 0, total, 1.0), uniform)

    def predict(self, X):
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
