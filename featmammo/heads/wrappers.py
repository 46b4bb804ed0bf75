"""Small meta-estimators shared by the heads.

:class:`BalancedClassifier` gives any classifier whose ``fit`` accepts ``sample_weight`` (XGBoost,
scikit-learn's MLP) balanced class weights, and encodes labels to 0..K-1 for estimators that need
integers (XGBoost) while ``predict`` returns the original labels (strings included).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


class BalancedClassifier(ClassifierMixin, BaseEstimator):
    """Fit ``estimator`` on integer-encoded labels with per-sample weights from ``class_weight``.

    ``class_weight``: ``"balanced"`` (weight n / (K * n_k) for class k, as scikit-learn's
    ``class_weight="balanced"``), a dict label -> weight, or None (no weighting). A
    ``sample_weight`` passed to :meth:`fit` multiplies the class weights.
    """

    def __init__(self, estimator=None, class_weight="balanced"):
        self.estimator = estimator
        self.class_weight = class_weight

    def fit(self, X, y, sample_weight=None):
        if self.estimator is None:
            raise ValueError("BalancedClassifier needs an estimator")
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        self.encoder_ = LabelEncoder().fit(y)
        self.classes_ = self.encoder_.classes_
        y_enc = self.encoder_.transform(y)
        sw = np.ones(len(y_enc)) if sample_weight is None else np.asarray(sample_weight, float)
        if sw.shape != y_enc.shape:
            raise ValueError(f"sample_weight has shape {sw.shape}; expected {y_enc.shape}")
        weights = sw
        if self.class_weight is not None:
            # class totals are *weighted* counts, so a weight of 2 acts like a repeated sample
            totals = np.bincount(y_enc, weights=sw, minlength=len(self.classes_))
            if self.class_weight == "balanced":
                with np.errstate(divide="ignore"):
                    per_class = np.where(totals > 0, totals.sum() / (len(totals) * totals), 0.0)
            elif isinstance(self.class_weight, dict):
                per_class = np.array([float(self.class_weight.get(c, 1.0)) for c in self.classes_])
            else:
                raise ValueError(
                    f"class_weight must be 'balanced', a dict or None; got {self.class_weight!r}"
                )
            weights = sw * per_class[y_enc]
        self.estimator_ = clone(self.estimator)
        self.estimator_.fit(X, y_enc, sample_weight=weights)
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        proba = np.asarray(self.estimator_.predict_proba(X), dtype=np.float64)
        if proba.ndim == 1:  # defensive: some binary estimators return P(class 1) only
            proba = np.column_stack([1.0 - proba, proba])
        return proba

    def predict(self, X):
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    @property
    def feature_importances_(self):
        check_is_fitted(self)
        return self.estimator_.feature_importances_
