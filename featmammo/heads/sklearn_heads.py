"""The scikit-learn and XGBoost heads, registered by name.

Each builder returns the classifier step only; :func:`featmammo.heads.make` puts it in a Pipeline
after the scaler. Class imbalance: ``class_weight="balanced"`` where the estimator supports it,
balanced sample weights through :class:`~featmammo.heads.wrappers.BalancedClassifier` for XGBoost
and the scikit-learn MLP, and none for k-NN (it has no weighting; its vote is by neighbours).
Probabilities: native ``predict_proba``, or a sigmoid (Platt) calibration fitted by 3-fold
cross-validation inside the training data for the SVMs (``CalibratedClassifierCV(ensemble=False)``).
That inner 3-fold split is stratified but not patient-grouped: it only affects the calibration
curve fitted within one training fold, never the outer (patient-grouped) evaluation.

Defaults suit the one scaling rule of :func:`featmammo.heads.make` (every features set arrives
with a total variance of 1 per row): logreg C=10, svm-linear C=0.1, svm-rbf C=1 and gamma="scale"
(= 1 under that rule), k-NN k=10, MLP alpha=1e-3, XGBoost depth 3 and learning rate 0.1. Early
stopping (MLP, XGBoost) holds out whole patients when ``fit`` gets ``groups``
(:class:`~featmammo.heads.wrappers.BalancedClassifier`). ``featmammo.tuning`` tunes these.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

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


def _calibrated(base, params: dict):
    from sklearn.calibration import CalibratedClassifierCV

    clf = CalibratedClassifierCV(base, method="sigmoid", cv=3, ensemble=False)
    return set_routed_params(clf, params, inner="estimator")


@register(
    "svm-linear",
    description="linear SVM (LinearSVC) with sigmoid calibration",
    imbalance='class_weight="balanced"',
    probabilities="CalibratedClassifierCV(method='sigmoid', cv=3, ensemble=False)",
)
def _svm_linear(*, seed: int = 0, **params):
    from sklearn.svm import LinearSVC

    base = LinearSVC(C=0.1, class_weight="balanced", max_iter=5000, random_state=seed)
    return _calibrated(base, params)


@register(
    "svm-rbf",
    description="RBF-kernel SVM (SVC) with sigmoid calibration; fit time grows ~quadratically",
    imbalance='class_weight="balanced"',
    probabilities="CalibratedClassifierCV(method='sigmoid', cv=3, ensemble=False)",
)
def _svm_rbf(*, seed: int = 0, **params):
    from sklearn.svm import SVC

    base = SVC(kernel="rbf", C=1.0, gamma="scale", class_weight="balanced", random_state=seed)
    return _calibrated(base, params)


@register(
    "rf",
    description="random forest (300 trees)",
    imbalance='class_weight="balanced_subsample"',
    probabilities="native (mean of tree votes)",
)
def _rf(*, seed: int = 0, **params):
    from sklearn.ensemble import RandomForestClassifier

    clf = RandomForestClassifier(
        n_estimators=300, class_weight="balanced_subsample", random_state=seed
    )
    return set_routed_params(clf, params)


@register(
    "knn",
    description="k-nearest neighbours (k=10, Euclidean on scaled features)",
    imbalance="none: k-NN has no class weights (minority classes are out-voted); "
    "compare it with balanced accuracy, not accuracy",
    probabilities="native (neighbour vote fractions)",
)
def _knn(*, seed: int = 0, **params):
    from sklearn.neighbors import KNeighborsClassifier

    log.debug("knn head: no class-imbalance handling is available for k-NN")
    clf = KNeighborsClassifier(n_neighbors=10, weights="uniform")
    return set_routed_params(clf, params)


@register(
    "mlp",
    description="scikit-learn MLPClassifier (256 hidden, adam, early stop on held-out patients)",
    imbalance="balanced sample weights (BalancedClassifier)",
    probabilities="native (softmax)",
)
def _mlp(*, seed: int = 0, **params):
    from sklearn.neural_network import MLPClassifier

    base = MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-3, max_iter=300, random_state=seed)
    # early stopping on 10 % of the patients (BalancedClassifier, epoch by epoch), not sklearn's
    # row-level early_stopping split, which puts images of one patient on both sides
    clf = BalancedClassifier(base, validation_fraction=0.1, patience=10, random_state=seed)
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
    imbalance="balanced sample weights (BalancedClassifier)",
    probabilities="native (softmax / logistic)",
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
    clf = BalancedClassifier(base, validation_fraction=0.15, patience=20, random_state=seed)
    return set_routed_params(clf, params, inner="estimator")
