"""The scikit-learn and XGBoost heads, registered by name.

Each builder returns the classifier step only; :func:`featmammo.heads.make` puts it in a Pipeline
after the scaler.

One decision rule for every head: the predicted class is the argmax of **class-balanced**
probabilities (as if every class had the prior 1/K), so heads are compared under the same rule and
none predicts the majority class for every image because of how its probabilities were made:

- logreg and the SVMs: ``class_weight="balanced"``; the SVMs' probabilities are Platt sigmoids
  fitted on patient-grouped folds with the same class weights
  (:class:`~featmammo.heads.calibration.PatientCalibratedClassifier`);
- the random forest, k-NN, XGBoost, the scikit-learn MLP (and the torch refine-mlp): trained
  unweighted, then the training prior is divided out of their probabilities
  (:class:`~featmammo.heads.wrappers.BalancedClassifier` with ``balance="prior"``; post-hoc
  logit adjustment). These models fit their training rows closely (a fully grown tree's leaves
  are pure, k-NN votes are local counts, boosting and MLPs memorise), where class weights in the
  loss lose their effect and the majority class still wins weak votes; k-NN has no weights at
  all. Measured on 60/25/15 % synthetic sets: with weights the forest named the majority class
  for every image, the MLP for up to 93 % of them; prior-corrected, none did, at equal or better
  balanced accuracy (notes: docs-heads.md).

Defaults suit the one scaling rule of :func:`featmammo.heads.make` (every features set arrives
with a total variance of 1 per row): logreg C=10, svm-linear C=0.1, svm-rbf C=1 and gamma="scale"
(= 1 under that rule), k-NN k=10, MLP alpha=1e-3, XGBoost depth 3 and learning rate 0.1. Early
stopping (MLP, XGBoost) and the SVMs' calibration folds hold out whole patients when ``fit`` gets
``groups``. ``featmammo.tuning`` tunes these.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

from .calibration import PatientCalibratedClassifier
from .registry import register, set_routed_params
from .wrappers import BalancedClassifier

log = logging.getLogger(__name__)


@register(
    "logreg",
    description="L2 logistic regression (lbfgs)",
    imbalance='class_weight="balanced"',
    probabilities="native (softmax)",
)
def _logreg(*, seed: int = 0, **params):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=10.0, class_weight="balanced", max_iter=2000, random_state=seed)
    return set_routed_params(clf, params)


_CALIBRATION = (
    "Platt sigmoids on 3 patient-grouped folds, class-weighted like the SVM "
    "(PatientCalibratedClassifier)"
)


def _calibrated(base, params: dict, seed: int):
    clf = PatientCalibratedClassifier(base, cv=3, class_weight="balanced", random_state=seed)
    return set_routed_params(clf, params, inner="estimator")


@register(
    "svm-linear",
    description="linear SVM (LinearSVC) with sigmoid calibration",
    imbalance='class_weight="balanced" (in the SVM and in its calibration)',
    probabilities=_CALIBRATION,
)
def _svm_linear(*, seed: int = 0, **params):
    from sklearn.svm import LinearSVC

    base = LinearSVC(C=0.1, class_weight="balanced", max_iter=5000, random_state=seed)
    return _calibrated(base, params, seed)


@register(
    "svm-rbf",
    description="RBF-kernel SVM (SVC) with sigmoid calibration; fit time grows ~quadratically",
    imbalance='class_weight="balanced" (in the SVM and in its calibration)',
    probabilities=_CALIBRATION,
)
def _svm_rbf(*, seed: int = 0, **params):
    from sklearn.svm import SVC

    base = SVC(kernel="rbf", C=1.0, gamma="scale", class_weight="balanced", random_state=seed)
    return _calibrated(base, params, seed)


_PRIOR = (
    "trained unweighted; class_weight='balanced' divides the training prior out of the "
    "probabilities (BalancedClassifier(balance='prior'))"
)


@register(
    "rf",
    description="random forest (300 trees, grown unweighted)",
    imbalance=_PRIOR,
    probabilities="mean of tree votes, prior-corrected",
)
def _rf(*, seed: int = 0, **params):
    from sklearn.ensemble import RandomForestClassifier

    # class weights inside the trees hardly act on fully grown (pure-leaved) trees: their votes
    # still follow the class shares, so the prior is divided out of the votes instead
    base = RandomForestClassifier(n_estimators=300, random_state=seed)
    clf = BalancedClassifier(base, balance="prior", random_state=seed)
    return set_routed_params(clf, params, inner="estimator")


@register(
    "knn",
    description="k-nearest neighbours (k=10, Euclidean on scaled features)",
    imbalance=_PRIOR,
    probabilities="neighbour vote fractions, prior-corrected",
)
def _knn(*, seed: int = 0, **params):
    from sklearn.neighbors import KNeighborsClassifier

    base = KNeighborsClassifier(n_neighbors=10, weights="uniform")
    clf = BalancedClassifier(base, balance="prior", random_state=seed)
    return set_routed_params(clf, params, inner="estimator")


@register(
    "mlp",
    description="scikit-learn MLPClassifier (256 hidden, adam, early stop on held-out patients)",
    imbalance=_PRIOR,
    probabilities="softmax, prior-corrected",
)
def _mlp(*, seed: int = 0, **params):
    from sklearn.neural_network import MLPClassifier

    base = MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-3, max_iter=300, random_state=seed)
    # early stopping on 10 % of the patients (BalancedClassifier, epoch by epoch), not sklearn's
    # row-level early_stopping split, which puts images of one patient on both sides
    clf = BalancedClassifier(
        base, validation_fraction=0.1, patience=10, random_state=seed, balance="prior"
    )
    return set_routed_params(clf, params, inner="estimator")


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """Whether a CUDA device is usable, without importing torch just to ask.

    torch's answer when torch is already imported; otherwise an XGBoost build with CUDA and an
    NVIDIA device visible to the driver.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    try:
        import xgboost

        if not xgboost.build_info().get("USE_CUDA", False):
            return False
    except Exception:  # noqa: BLE001 - an unusual xgboost build: no CUDA
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def xgboost_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when :func:`cuda_available`, else ``cpu``; other values pass through."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


@register(
    "xgboost",
    description="gradient-boosted trees (XGBoost hist, depth 3, up to 500 rounds early-stopped "
    "on held-out patients; CUDA when available)",
    imbalance=_PRIOR,
    probabilities="softmax / logistic, prior-corrected",
)
def _xgboost(*, seed: int = 0, device: str = "auto", **params):
    from xgboost import XGBClassifier

    dev = xgboost_device(device)
    log.debug("xgboost head: device=%s", dev)  # featmammo.fit logs the device once per run
    # defaults for wide inputs (thousands of embedding columns, hundreds to thousands of images):
    # shallow trees, 64 histogram bins and 30 % of the columns per tree keep a fit to minutes on
    # a CPU without a visible loss on embeddings; raise n_estimators / max_depth on larger sets.
    # the number of rounds is chosen by early stopping (20 rounds without gain) on 15 % of the
    # training patients
    base = XGBClassifier(
        n_estimators=500,
        learning_rate=0.1,
        max_depth=3,
        subsample=0.8,
        colsample_bytree=0.3,
        max_bin=64,
        tree_method="hist",
        device=dev,
        early_stopping_rounds=20,
        random_state=seed,
    )
    clf = BalancedClassifier(
        base, validation_fraction=0.15, patience=20, random_state=seed, balance="prior"
    )
    return set_routed_params(clf, params, inner="estimator")
