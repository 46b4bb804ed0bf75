"""Small meta-estimators shared by the heads, and the patient hold-out used for early stopping.

:class:`BalancedClassifier` gives any classifier class-balanced probabilities, in one of two ways
(``balance``): ``"weights"``, balanced class weights as sample weights in the training loss (an
estimator whose ``fit`` accepts ``sample_weight``), or ``"prior"``, training unweighted and
dividing the training prior out of the predicted probabilities (any estimator; post-hoc logit
adjustment). It encodes labels to 0..K-1 for estimators that need integers (XGBoost) while
``predict`` returns the original labels (strings included). With
``validation_fraction > 0`` it early-stops the inner estimator on a validation set of whole
**patients** (``fit(X, y, groups=patient_ids)``): XGBoost through ``eval_set`` and
``early_stopping_rounds``, scikit-learn's MLP epoch by epoch through ``partial_fit``. Without
``groups`` every row counts as its own patient (only right when each patient has one image).

:func:`patient_holdout` is the split every head's early stopping uses (also ``refine-mlp``).
"""

from __future__ import annotations

import copy
import logging

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

log = logging.getLogger(__name__)


def patient_holdout(y_enc: np.ndarray, groups, fraction: float, seed: int):
    """``(train_idx, val_idx)`` holding out whole patients (stratified, random), or None.

    ``groups`` None -> every row is its own patient. None is returned (no early stopping possible)
    when ``fraction`` is 0, there are fewer than two patients per class, or the split would leave a
    class out of the training side; the caller logs it.
    """
    from ..splits import _random_group_split

    y_enc = np.asarray(y_enc)
    n = len(y_enc)
    if fraction <= 0 or n < 4:
        return None
    g = np.arange(n).astype(str) if groups is None else np.asarray(groups).astype(str)
    if len(g) != n:
        raise ValueError(f"groups has {len(g)} entries for {n} rows")
    for k in np.unique(y_enc):
        if len(set(g[y_enc == k].tolist())) < 2:
            return None
    val_mask = _random_group_split(y_enc, g, float(fraction), seed)
    train, val = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
    if not len(val) or len(np.unique(y_enc[train])) < len(np.unique(y_enc)):
        return None
    return train, val


def class_weights(y_enc, n_classes: int, class_weight, classes, sample_weight=None) -> np.ndarray:
    """Per-class weights of integer-encoded labels: ``"balanced"`` -> n / (K n_k) as
    scikit-learn's ``class_weight="balanced"`` (0 for an absent class; with ``sample_weight`` the
    counts are weighted, so a weight of 2 acts like a repeated sample), a dict label -> weight
    (1 for a label it does not name), None -> ones."""
    if class_weight is None:
        return np.ones(n_classes)
    if isinstance(class_weight, str) and class_weight == "balanced":
        totals = np.bincount(y_enc, weights=sample_weight, minlength=n_classes).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(totals > 0, totals.sum() / (n_classes * totals), 0.0)
    if isinstance(class_weight, dict):
        return np.array([float(class_weight.get(c, 1.0)) for c in classes])
    raise ValueError(f"class_weight must be 'balanced', a dict or None; got {class_weight!r}")


def _weighted_log_loss(proba: np.ndarray, y_enc: np.ndarray, w: np.ndarray) -> float:
    p = np.clip(proba[np.arange(len(y_enc)), y_enc], 1e-12, 1.0)
    return float(np.sum(-np.log(p) * w) / np.sum(w))


class BalancedClassifier(ClassifierMixin, BaseEstimator):
    """Class-balanced probabilities from ``estimator``, fitted on integer-encoded labels.

    ``class_weight``: ``"balanced"`` (weight n / (K * n_k) for class k, as scikit-learn's
    ``class_weight="balanced"``), a dict label -> weight, or None (no balancing).
    ``balance``: ``"weights"`` -- the class weights are sample weights of the training loss (a
    ``sample_weight`` passed to :meth:`fit` multiplies them); ``"prior"`` -- the estimator is
    trained unweighted and :meth:`predict_proba` multiplies its probabilities by the class weights
    and renormalises, which with ``"balanced"`` divides the training prior out (as if every class
    had the prior 1/K). A model that fits its training rows closely (fully grown trees,
    memorised points, long boosting) loses the effect of loss weights; the prior correction keeps
    it, and suits estimators without ``sample_weight`` (k-NN).
    ``validation_fraction``: fraction of the patients held out for early stopping (0: none);
    ``patience``: epochs / boosting rounds without improvement of the (training-weighted)
    validation loss before stopping; ``random_state`` seeds the patient hold-out.
    """

    def __init__(
        self,
        estimator=None,
        class_weight="balanced",
        validation_fraction: float = 0.0,
        patience: int = 10,
        random_state=0,
        balance: str = "weights",
    ):
        self.estimator = estimator
        self.class_weight = class_weight
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.random_state = random_state
        self.balance = balance

    def _weights(self, y_enc, sample_weight):
        """The training sample weights (class weights folded in under ``balance="weights"``);
        sets ``class_weight_`` (one weight per class)."""
        sw = np.ones(len(y_enc)) if sample_weight is None else np.asarray(sample_weight, float)
        if sw.shape != y_enc.shape:
            raise ValueError(f"sample_weight has shape {sw.shape}; expected {y_enc.shape}")
        if self.balance not in ("weights", "prior"):
            raise ValueError(f"balance must be 'weights' or 'prior'; got {self.balance!r}")
        per_class = class_weights(y_enc, len(self.classes_), self.class_weight, self.classes_, sw)
        self.class_weight_ = per_class
        return sw * per_class[y_enc] if self.balance == "weights" else sw

    def fit(self, X, y, sample_weight=None, groups=None):
        """Fit; ``groups`` (patient ids) make the early-stopping hold-out patient-disjoint."""
        if self.estimator is None:
            raise ValueError("BalancedClassifier needs an estimator")
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        self.encoder_ = LabelEncoder().fit(y)
        self.classes_ = self.encoder_.classes_
        y_enc = self.encoder_.transform(y)
        weights = self._weights(y_enc, sample_weight)
        self.estimator_ = clone(self.estimator)
        self.early_stopping_ = None
        self.validation_index_ = np.array([], dtype=int)  # rows held out for early stopping
        seed = 0 if self.random_state is None else int(self.random_state)
        split = (
            patient_holdout(y_enc, groups, float(self.validation_fraction), seed)
            if float(self.validation_fraction) > 0
            else None
        )
        is_xgb = "early_stopping_rounds" in self.estimator_.get_params(deep=False)
        if float(self.validation_fraction) > 0 and split is None:
            log.warning(
                "%s: too few patients per class for an early-stopping hold-out of %.0f%%; "
                "fitting without early stopping",
                type(self.estimator_).__name__,
                100 * float(self.validation_fraction),
            )
        if split is None:
            if is_xgb:
                self.estimator_.set_params(early_stopping_rounds=None)
            if np.all(weights == 1.0):  # also for estimators without sample_weight (k-NN)
                self.estimator_.fit(X, y_enc)
            else:
                self.estimator_.fit(X, y_enc, sample_weight=weights)
            return self
        tr, va = split
        self.validation_index_ = va
        self.early_stopping_ = {"n_train": int(len(tr)), "n_validation": int(len(va))}
        if is_xgb:
            self.estimator_.set_params(early_stopping_rounds=int(self.patience))
            self.estimator_.fit(
                X[tr], y_enc[tr], sample_weight=weights[tr], eval_set=[(X[va], y_enc[va])],
                sample_weight_eval_set=[weights[va]], verbose=False,
            )  # fmt: skip
            self.early_stopping_["best_iteration"] = int(self.estimator_.best_iteration)
        elif hasattr(self.estimator_, "partial_fit"):
            self._fit_epochs(X, y_enc, weights, tr, va)
        else:
            raise ValueError(
                f"validation_fraction > 0: {type(self.estimator_).__name__} has neither "
                "early_stopping_rounds nor partial_fit"
            )
        return self

    def _fit_epochs(self, X, y_enc, weights, tr, va):
        """One ``partial_fit`` per epoch on the training patients; keep the best epoch on the
        validation patients (weighted log-loss), stop after ``patience`` epochs without gain."""
        est = self.estimator_
        max_epochs = int(est.get_params().get("max_iter", 200))
        if "early_stopping" in est.get_params():
            est.set_params(early_stopping=False)
        labels = np.arange(len(self.classes_))
        best, best_state, best_epoch, bad = np.inf, None, 0, 0
        for epoch in range(1, max_epochs + 1):
            est.partial_fit(X[tr], y_enc[tr], sample_weight=weights[tr], classes=labels)
            loss = _weighted_log_loss(est.predict_proba(X[va]), y_enc[va], weights[va])
            if loss < best - 1e-6:
                best, best_epoch, bad = loss, epoch, 0
                best_state = copy.deepcopy(est)
            else:
                bad += 1
                if bad >= int(self.patience):
                    break
        if best_state is None:
            raise ValueError(
                f"{type(est).__name__}: the validation loss was not finite in any epoch"
            )
        self.estimator_ = best_state
        self.early_stopping_.update({"best_epoch": best_epoch, "epochs": epoch, "loss": best})

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        raw = np.asarray(self.estimator_.predict_proba(X), dtype=np.float64)
        if raw.ndim == 1:  # defensive: some binary estimators return P(class 1) only
            raw = np.column_stack([1.0 - raw, raw])
        # columns follow the estimator's classes (a class absent from its training rows: 0)
        proba = np.zeros((raw.shape[0], len(self.classes_)))
        seen = getattr(self.estimator_, "classes_", np.arange(raw.shape[1]))
        proba[:, np.asarray(seen, dtype=int)] = raw
        if getattr(self, "balance", "weights") == "prior":  # models saved before: "weights"
            proba *= self.class_weight_
            total = proba.sum(axis=1, keepdims=True)
            proba = np.where(
                total > 0, proba / np.where(total > 0, total, 1.0), 1.0 / proba.shape[1]
            )
        return proba

    def predict(self, X):
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    @property
    def feature_importances_(self):
        check_is_fitted(self)
        return self.estimator_.feature_importances_
