"""Heads: registry, every head end to end, imbalance handling, save/load, estimator API checks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import estimator_checks_generator

from featmammo import heads
from featmammo.errors import ConfigError, WeightsError
from featmammo.fusion import BlockPCA, BlockScaler
from featmammo.heads import BalancedClassifier, RefineMLPClassifier

ALL_HEADS = ["logreg", "svm-linear", "svm-rbf", "rf", "knn", "mlp", "xgboost", "refine-mlp"]
LABELS = np.array(["normal", "benign", "malignant"], dtype=object)

# small-but-real settings so the whole file stays fast on a shared 2-core CPU
FAST = {
    "rf": {"n_estimators": 60},
    "xgboost": {"n_estimators": 60, "device": "cpu", "n_jobs": 1},
    "refine-mlp": {
        "max_epochs": 30,
        "n_jobs": 1,
        "learning_rate": 1e-2,
        "hidden_layer_sizes": (64,),
    },
    "mlp": {"max_iter": 200},
}


def _separable(n=120, d=40, seed=0, weights=(1 / 3, 1 / 3, 1 / 3), sep=2.0):
    """Synthetic 'embeddings': class means differ on the first 8 dims, noise elsewhere."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(weights), size=n, p=np.asarray(weights) / np.sum(weights))
    means = rng.normal(0, sep, size=(len(weights), d))
    means[:, 8:] = 0
    X = (means[y] + rng.normal(size=(n, d))).astype(np.float32)
    return X, LABELS[y]


@pytest.fixture(scope="module")
def data():
    X, y = _separable(n=180, seed=1)
    return X[:120], y[:120], X[120:], y[120:]


# -------------------------------------------------------------------------------------- registry
def test_available_lists_every_head_and_import_is_torch_free():
    assert heads.available() == ALL_HEADS
    code = "import sys, featmammo.heads, featmammo.fusion; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_unknown_head_lists_available():
    with pytest.raises(ConfigError) as err:
        heads.make("boosted-magic")
    assert "boosted-magic" in str(err.value)
    for name in ALL_HEADS:
        assert name in str(err.value)


def test_alias_and_bad_param():
    model = heads.make("mlp-torch", seed=3)
    assert isinstance(model[-1], RefineMLPClassifier) and model[-1].random_state == 3
    with pytest.raises(ConfigError, match="logreg"):
        heads.make("logreg", not_a_param=1)


def test_params_are_routed_and_seeded():
    svm = heads.make("svm-linear", seed=7, C=0.25)
    assert svm[-1].estimator.C == 0.25 and svm[-1].estimator.random_state == 7
    rf = heads.make("rf", seed=5, n_estimators=11)
    assert rf[-1].estimator.n_estimators == 11 and rf[-1].estimator.random_state == 5
    xgb = heads.make("xgboost", seed=2, max_depth=2, class_weight=None)
    assert xgb[-1].estimator.max_depth == 2 and xgb[-1].class_weight is None
    assert xgb[-1].estimator.tree_method == "hist"
    for name in ALL_HEADS:
        assert isinstance(heads.make(name), Pipeline)
        assert heads.describe(name).imbalance
        assert heads.describe(name).decision == heads.DECISION_RULE  # one rule for every head
    assert "prior" in heads.describe("knn").imbalance


def test_xgboost_device_resolution(monkeypatch):
    from featmammo.heads import sklearn_heads

    monkeypatch.setattr(sklearn_heads, "cuda_available", lambda: True)
    assert heads.make("xgboost")[-1].estimator.device == "cuda"
    monkeypatch.setattr(sklearn_heads, "cuda_available", lambda: False)
    assert heads.make("xgboost")[-1].estimator.device == "cpu"
    assert heads.make("xgboost", device="cpu")[-1].estimator.device == "cpu"


# ----------------------------------------------------------------------------------- every head
@pytest.mark.parametrize("name", ALL_HEADS)
def test_head_fits_string_labels_and_beats_chance(name, data):
    Xtr, ytr, Xte, yte = data
    model = heads.make(name, seed=0, **FAST.get(name, {}))
    model.fit(Xtr, ytr)
    assert sorted(model.classes_) == sorted(LABELS)
    proba = model.predict_proba(Xte)
    assert proba.shape == (len(Xte), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert (proba >= 0).all()
    pred = model.predict(Xte)
    assert set(pred) <= set(LABELS)
    # predict agrees with the most probable class (ties aside)
    assert np.mean(pred == model.classes_[proba.argmax(axis=1)]) > 0.95
    assert balanced_accuracy_score(yte, pred) > 0.6, name  # chance is 1/3

    # clone: same parameters, unfitted, and refitting gives the same predictions (seeded)
    twin = clone(model)
    assert twin.get_params().keys() == model.get_params().keys()
    assert not hasattr(twin[-1], "classes_")
    if name in ("logreg", "knn", "xgboost", "refine-mlp", "rf"):
        np.testing.assert_array_equal(twin.fit(Xtr, ytr).predict(Xte), pred)


def test_class_weighting_helps_on_imbalanced_data():
    X, y = _separable(n=600, d=20, seed=4, weights=(0.9, 0.07, 0.03), sep=0.9)
    Xtr, ytr, Xte, yte = X[:400], y[:400], X[400:], y[400:]
    balanced = heads.make("logreg").fit(Xtr, ytr)
    plain = heads.make("logreg", class_weight=None).fit(Xtr, ytr)
    b = balanced_accuracy_score(yte, balanced.predict(Xte))
    p = balanced_accuracy_score(yte, plain.predict(Xte))
    assert b > p + 0.05, (b, p)


def test_balanced_classifier_weights_and_label_encoding():
    from sklearn.linear_model import LogisticRegression

    seen = {}

    class Recording(LogisticRegression):
        def fit(self, X, y, sample_weight=None):
            seen["y"], seen["w"] = np.asarray(y), np.asarray(sample_weight)
            return super().fit(X, y, sample_weight=sample_weight)

    X, y = _separable(n=90, seed=2, weights=(0.6, 0.3, 0.1))
    clf = BalancedClassifier(Recording()).fit(X, y)
    assert set(np.unique(seen["y"])) == {0, 1, 2}  # integer-encoded for the inner estimator
    assert len(np.unique(seen["w"])) == 3  # the classes have different sizes -> weights differ
    for k in range(3):  # weight n / (K n_k): every class gets the same total weight n / K
        np.testing.assert_allclose(seen["w"][seen["y"] == k].sum(), len(y) / 3)
    assert set(clf.predict(X)) <= set(LABELS)
    BalancedClassifier(Recording(), class_weight=None).fit(X, y)
    assert seen["w"].item() is None  # unweighted: no sample_weight at all
    BalancedClassifier(Recording(), balance="prior").fit(X, y)  # weights at predict time only
    assert seen["w"].item() is None


def test_block_options_build_block_transformers(data):
    Xtr, ytr, Xte, _ = data
    blocks = {"resnet50": slice(0, 16), "alexnet": slice(16, 40)}
    model = heads.make("logreg", blocks=blocks).fit(Xtr, ytr)
    assert isinstance(model.named_steps["scale"], BlockScaler)
    pca = heads.make("logreg", blocks=blocks, block_pca=5).fit(Xtr, ytr)
    assert isinstance(pca.named_steps["block_pca"], BlockPCA)
    assert pca.named_steps["block_pca"].transform(Xte).shape == (len(Xte), 10)


# ---------------------------------------------------------------------------------- save / load
def test_save_load_round_trip_and_tamper_detection(tmp_path, data):
    Xtr, ytr, Xte, _ = data
    model = heads.make("xgboost", **FAST["xgboost"]).fit(Xtr, ytr)
    path = heads.save(
        model,
        tmp_path / "models" / "xgb",
        {"head": "xgboost", "features": "hybrid", "store_fingerprint": "abc123"},
    )
    assert path.name == "xgb.skops" and path.with_suffix(".json").exists()
    loaded, sidecar = heads.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(Xte), model.predict_proba(Xte))
    assert sidecar["features"] == "hybrid" and sidecar["store_fingerprint"] == "abc123"
    assert sorted(sidecar["classes"]) == sorted(LABELS)
    assert {"featmammo", "scikit-learn", "xgboost", "torch"} <= set(sidecar["versions"])
    assert sidecar["params"]["clf__estimator__tree_method"] == "hist"
    assert len(sidecar["sha256"]) == 64
    json.dumps(sidecar)  # plain JSON

    heads.load(tmp_path / "models" / "xgb.json")  # either file name works

    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match="SHA-256 mismatch"):
        heads.load(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(WeightsError, match="sidecar missing"):
        heads.load(path)


def test_refine_mlp_round_trip_is_torch_free_pickle(tmp_path, data):
    Xtr, ytr, Xte, _ = data
    model = heads.make("refine-mlp", **FAST["refine-mlp"]).fit(Xtr, ytr)
    clf = model[-1]
    assert all(isinstance(v, np.ndarray) for v in clf.state_dict_.values())
    assert clf.device_ == "cpu" and 1 <= clf.best_epoch_ <= clf.n_iter_
    path = heads.save(model, tmp_path / "mlp.joblib", {"head": "refine-mlp"})
    loaded, _ = heads.load(path)
    np.testing.assert_allclose(loaded.predict_proba(Xte), model.predict_proba(Xte), atol=1e-6)


def test_sidecar_params_are_json_with_blocks(tmp_path, data):
    Xtr, ytr, _, _ = data
    blocks = {"resnet50": slice(0, 16), "alexnet": slice(16, 40)}
    model = heads.make("logreg", blocks=blocks).fit(Xtr, ytr)
    path = heads.save(model, tmp_path / "lr", {"blocks": blocks})
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["params"]["scale__blocks"] == {"resnet50": [0, 16], "alexnet": [16, 40]}
    assert sidecar["blocks"]["alexnet"] == [16, 40]
    assert sidecar["params"]["clf__class_weight"] == "balanced"


@pytest.mark.gpu
def test_gpu_heads_run_on_cuda_and_load_on_cpu(tmp_path, data):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    Xtr, ytr, Xte, yte = data
    mlp = heads.make("refine-mlp", device="cuda", **FAST["refine-mlp"]).fit(Xtr, ytr)
    assert mlp[-1].device_ == "cuda"
    assert balanced_accuracy_score(yte, mlp.predict(Xte)) > 0.6
    loaded, _ = heads.load(heads.save(mlp, tmp_path / "mlp", {}))  # numpy state: loads anywhere
    np.testing.assert_allclose(loaded.predict_proba(Xte), mlp.predict_proba(Xte), atol=1e-6)
    assert heads.make("xgboost")[-1].estimator.device == "cuda"  # auto picks the GPU
    xgb = heads.make("xgboost", n_estimators=60).fit(Xtr, ytr)
    assert xgb[-1].estimator_.get_params()["device"] == "cuda"
    assert balanced_accuracy_score(yte, xgb.predict(Xte)) > 0.6


# --------------------------------------------------------------------- scikit-learn API checks
_CHECK_EST = RefineMLPClassifier(
    hidden_layer_sizes=(16,),
    max_epochs=20,
    patience=5,
    learning_rate=1e-2,
    batch_size=32,
    n_jobs=1,
)
# a fast subset runs by default; the rest (several fits each) is marked slow. All of them pass:
# no expected failures are declared.
_FAST_CHECKS = {
    "check_estimator_cloneable",
    "check_no_attributes_set_in_init",
    "check_estimators_unfitted",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_classifiers_classes",
    "check_estimators_pickle",
    "check_fit_idempotent",
    "check_n_features_in",
    "check_requires_y_none",
    "check_classifiers_regression_target",
    "check_mixin_order",
}


def _check_params():
    out = []
    for est, check in estimator_checks_generator(_CHECK_EST):
        name = getattr(check, "func", check).__name__
        marks = () if name in _FAST_CHECKS else (pytest.mark.slow,)
        out.append(pytest.param(est, check, id=name, marks=marks))
    return out


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
@pytest.mark.parametrize("estimator, check", _check_params())
def test_refine_mlp_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
@pytest.mark.parametrize("est", [BlockScaler(), BlockPCA(n_components=2)], ids=lambda e: str(e))
def test_block_transformers_sklearn_estimator_checks(est):
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(est, on_fail=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert not failed


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
def test_balanced_classifier_sklearn_estimator_checks():
    from sklearn.linear_model import LogisticRegression
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(BalancedClassifier(LogisticRegression()), on_fail=None)
    assert not [r["check_name"] for r in results if r["status"] == "failed"]


# ------------------------------------------------------------------ one scaling rule, early stops
def test_every_features_set_goes_through_the_same_scaling_and_refine_mlp_keeps_it(data):
    Xtr, ytr, _, _ = data
    one = heads.make("logreg")  # a single backbone is a one-block features set
    two = heads.make("logreg", blocks={"resnet50": slice(0, 16), "alexnet": slice(16, 40)})
    assert type(one.named_steps["scale"]) is type(two.named_steps["scale"]) is BlockScaler
    for model in (one, two):
        Z = model.named_steps["scale"].fit_transform(Xtr)
        np.testing.assert_allclose(Z.var(axis=0).sum(), 1.0, rtol=1e-4)  # unit total variance
    refine = heads.make("refine-mlp", **FAST["refine-mlp"])
    assert refine.named_steps["clf"].standardize is False  # no second, block-undoing z-score
    refine.fit(Xtr, ytr)
    np.testing.assert_array_equal(refine.named_steps["clf"].mean_, 0.0)
    np.testing.assert_array_equal(refine.named_steps["clf"].scale_, 1.0)


def _patients(n, size=3):
    return np.array([f"P{i // size:03d}" for i in range(n)], dtype=object)


@pytest.mark.parametrize("name", ["refine-mlp", "mlp", "xgboost"])
def test_early_stopping_holds_out_whole_patients(name, data):
    Xtr, ytr, _, _ = data
    groups = _patients(len(ytr))
    params = {k: v for k, v in FAST.get(name, {}).items() if k != "n_estimators"}
    if name == "mlp":
        params["max_iter"] = 40
    model = heads.make(name, **params)
    assert heads.accepts_groups(model)
    heads.fit_head(model, Xtr, ytr, groups)
    clf = model.named_steps["clf"]
    val = clf.validation_index_
    assert len(val) > 0
    train = np.setdiff1d(np.arange(len(ytr)), val)
    assert set(groups[val]).isdisjoint(groups[train])  # no patient on both sides
    for p in set(groups[val]):  # every image of a held-out patient is held out
        assert set(np.flatnonzero(groups == p)) <= set(val)
    if name == "xgboost":
        assert 0 <= clf.early_stopping_["best_iteration"] < 500
    if name == "mlp":
        assert clf.early_stopping_["best_epoch"] >= 1
    # without groups every row is its own patient; logreg takes no groups at all
    assert not heads.accepts_groups(heads.make("logreg"))
    heads.fit_head(heads.make("logreg"), Xtr, ytr, groups)


def test_patient_holdout_is_disjoint_seeded_and_refuses_tiny_classes():
    y = np.repeat([0, 1, 2], 30)
    g = _patients(90, size=5)
    tr, va = heads.patient_holdout(y, g, 0.2, seed=1)
    assert set(g[tr]).isdisjoint(g[va]) and set(y[va]) == {0, 1, 2}
    tr2, va2 = heads.patient_holdout(y, g, 0.2, seed=1)
    np.testing.assert_array_equal(va, va2)
    one_patient_class = np.array([0] * 10 + [1] * 3)
    assert heads.patient_holdout(one_patient_class, ["a"] * 10 + ["b"] * 3, 0.2, 0) is None
