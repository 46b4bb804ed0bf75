"""Classifier heads on (fused) embeddings: a registry of scikit-learn estimators.

``make(name, *, seed=0, **params)`` returns an unfitted scikit-learn Pipeline that holds its own
scaler; ``available()`` lists the names; ``describe(name)`` says how a head handles class imbalance,
where its probabilities come from and its decision rule (for every head the argmax of
class-balanced probabilities); ``save``/``load`` persist a fitted head with a JSON sidecar
and a SHA-256 check. Importing this package does not import torch (the torch refinement head imports
it inside ``fit``/``predict_proba``).

Heads: logreg, svm-linear, svm-rbf, rf, knn, mlp (scikit-learn), xgboost, refine-mlp (torch;
alias mlp-torch).
"""

from __future__ import annotations

from . import refine, sklearn_heads  # noqa: F401  (registers the built-in heads)
from .calibration import PatientCalibratedClassifier
from .io import load, save
from .refine import RefineMLPClassifier
from .registry import (
    DECISION_RULE,
    HeadInfo,
    accepts_groups,
    available,
    canonical_name,
    describe,
    fit_head,
    fit_notes,
    make,
    register,
)
from .sklearn_heads import cuda_available, xgboost_device
from .wrappers import BalancedClassifier, patient_holdout

__all__ = [
    "BalancedClassifier",
    "DECISION_RULE",
    "HeadInfo",
    "PatientCalibratedClassifier",
    "RefineMLPClassifier",
    "accepts_groups",
    "available",
    "canonical_name",
    "cuda_available",
    "describe",
    "fit_head",
    "fit_notes",
    "load",
    "make",
    "patient_holdout",
    "register",
    "save",
    "xgboost_device",
]
