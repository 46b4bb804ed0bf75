"""One decision rule across heads (argmax of class-balanced probabilities) and the SVMs'
patient-grouped, class-weighted calibration (issues 16 and 20)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from test_heads import ALL_HEADS, FAST

from featmammo import heads
from featmammo.heads import BalancedClassifier, PatientCalibratedClassifier

CLASSES = np.array(["normal", "benign", "malignant"], dtype=object)


def _imbalanced(n=320, d=100, signal=0.0, seed=0, shares=(0.6, 0.25, 0.15)):
    """Two images per patient, classes 60/25/15 % of the patients; ``signal`` 0 is what a
    random-weight backbone gives on mini-MIAS: nothing to learn."""
    rng = np.random.default_rng(seed)
    n_pat = n // 2
    y_pat = rng.choice(3, size=n_pat, p=shares)
    pat = np.repeat(np.arange(n_pat), 2)
    means = rng.normal(size=(3, d)) * signal
    X = means[y_pat[pat]] + rng.normal(size=(n_pat, d))[pat] * 0.5 + rng.normal(size=(n, d))
    groups = np.array([f"P{p:04d}" for p in pat], dtype=object)
    return X.astype(np.float32), CLASSES[y_pat[pat]], groups


@pytest.fixture(scope="module")
def no_signal():
    X, y, g = _imbalanced()
    train = np.isin(g, np.unique(g)[:112])
    return X, y, g, train


@pytest.mark.parametrize("name", ALL_HEADS)
def test_no_head_names_the_majority_class_for_every_image(name, no_signal):
    """With nothing to learn, a head whose probabilities kept the training prior (the calibrated
    SVMs before, the forest's and k-NN's votes) names "normal" for (almost) every image; under
    the one decision rule none does."""
    X, y, g, train = no_signal
    model = heads.make(name, seed=0, **FAST.get(name, {}))
    heads.fit_head(model, X[train], y[train], g[train])
    pred = model.predict(X[~train])
    share = np.mean(pred == "normal")
    assert share < 0.8, (name, share, np.unique(pred, return_counts=True))
    proba = model.predict_proba(X[~train])
    np.testing.assert_array_equal(pred, model.classes_[proba.argmax(axis=1)])


def test_every_head_documents_its_decision_rule():
    for name in ALL_HEADS:
        info = heads.describe(name)
        assert info.decision == heads.DECISION_RULE and "argmax" in info.decision
        assert info.imbalance and info.probabilities
    assert "patient-grouped" in heads.describe("svm-linear").probabilities
    for name in ("rf", "knn", "mlp", "xgboost", "refine-mlp"):  # prior-corrected heads
        assert "prior" in heads.describe(name).imbalance
        assert heads.make(name)[-1].get_params()["balance"] == "prior"


# ------------------------------------------------------------------------ grouped calibration
class _Spy(ClassifierMixin, BaseEstimator):
    """Records which rows (column 0 holds the row number) each clone is fitted and scored on."""

    calls: list = []

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.fit_rows_ = X[:, 0].astype(int)
        return self

    def decision_function(self, X):
        _Spy.calls.append((self.fit_rows_, X[:, 0].astype(int)))
        rng = np.random.default_rng(len(X))
        return rng.normal(size=(len(X), len(self.classes_)))


@pytest.mark.parametrize("name", ["svm-linear", "svm-rbf"])
def test_svm_calibration_never_has_a_patient_on_both_sides(name):
    X, y, g = _imbalanced(n=240, d=5, seed=1)
    X[:, 0] = np.arange(len(X))
    clf = heads.make(name)[-1].set_params(estimator=_Spy())
    _Spy.calls = []
    heads.fit_head(clf, X, y, g)
    fits = [c for c in _Spy.calls if len(c[0]) < len(X)]  # the calibration folds
    assert len(fits) == 3
    scored = np.concatenate([rows for _, rows in fits])
    assert sorted(scored) == list(range(len(X)))  # every row scored out of fold once
    for fit_rows, eval_rows in fits:
        assert set(g[fit_rows]).isdisjoint(g[eval_rows])


def test_calibration_keeps_the_class_weighting():
    """No signal: the calibrated probabilities average ~1/3 per class (class-balanced), not the
    60/25/15 training shares an unweighted sigmoid gives back; class_weight=None shows both."""
    X, y, g = _imbalanced(n=400, d=20, seed=2)
    from sklearn.svm import LinearSVC

    base = LinearSVC(C=0.1, class_weight="balanced")
    balanced = PatientCalibratedClassifier(base).fit(X, y, groups=g)
    plain = PatientCalibratedClassifier(base, class_weight=None).fit(X, y, groups=g)
    i = list(balanced.classes_).index("normal")
    assert abs(balanced.predict_proba(X)[:, i].mean() - 1 / 3) < 0.08
    assert plain.predict_proba(X)[:, i].mean() > 0.5
    assert np.mean(plain.predict(X) == "normal") > 0.9  # the bug of issue 20, reproduced
    assert balanced.n_calibration_folds_ == 3


def test_calibration_binary_precomputed_and_too_few_patients():
    from sklearn.svm import SVC

    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 4))
    y = np.where(X[:, 0] + 0.5 * rng.normal(size=80) > 0.4, "malignant", "benign")
    g = np.array([f"P{i // 2}" for i in range(80)])
    clf = PatientCalibratedClassifier(SVC(class_weight="balanced")).fit(X, y, groups=g)
    p = clf.predict_proba(X)
    assert p.shape == (80, 2) and np.allclose(p.sum(axis=1), 1)
    assert np.mean(clf.predict(X) == y) > 0.8
    K = np.exp(-0.25 * ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    pre = PatientCalibratedClassifier(SVC(kernel="precomputed", class_weight="balanced"))
    pre.fit(K, y, groups=g)
    same = PatientCalibratedClassifier(SVC(gamma=0.25, class_weight="balanced"))
    np.testing.assert_allclose(pre.predict_proba(K), same.fit(X, y, groups=g).predict_proba(X),
                               atol=1e-8)  # fmt: skip
    one = np.where(np.arange(80) < 4, "malignant", "benign")  # 2 malignant patients -> 2 folds
    assert PatientCalibratedClassifier(SVC()).fit(X, one, groups=g).n_calibration_folds_ == 2
    with pytest.raises(ValueError, match="at least 2 patients of every class.*'malignant' has 1"):
        PatientCalibratedClassifier(SVC()).fit(X, np.where(np.arange(80) < 2, "malignant",
                                                           "benign"), groups=g)  # fmt: skip


# ------------------------------------------------------------------------------ prior correction
def test_prior_correction_divides_the_training_prior_out():
    from sklearn.neighbors import KNeighborsClassifier

    X, y, g = _imbalanced(n=200, d=6, seed=4)
    raw = KNeighborsClassifier(n_neighbors=15).fit(X, y)
    corrected = BalancedClassifier(KNeighborsClassifier(n_neighbors=15), balance="prior").fit(X, y)
    assert list(corrected.classes_) == list(raw.classes_)
    prior = np.array([np.mean(y == c) for c in raw.classes_])
    expect = raw.predict_proba(X) / prior
    expect /= expect.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(corrected.predict_proba(X), expect, atol=1e-12)
    off = BalancedClassifier(KNeighborsClassifier(15), class_weight=None, balance="prior")
    np.testing.assert_allclose(off.fit(X, y).predict_proba(X), raw.predict_proba(X))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
@pytest.mark.parametrize(
    "est",
    [
        PatientCalibratedClassifier(__import__("sklearn.svm").svm.LinearSVC()),
        BalancedClassifier(
            __import__("sklearn.linear_model").linear_model.LogisticRegression(), balance="prior"
        ),  # fmt: skip
    ],
    ids=["calibrated", "prior-corrected"],
)
def test_new_wrappers_pass_sklearn_estimator_checks(est):
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(est, on_fail=None)
    assert not [r["check_name"] for r in results if r["status"] == "failed"]
