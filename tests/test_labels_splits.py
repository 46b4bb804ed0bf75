"""Class schemes, encodings, patient-grouped splits and the leakage audit."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from featmammo.errors import ConfigError, ManifestError
from featmammo.labels import SCHEMES, decode, encode, in_scheme, map_labels, parse_classes
from featmammo.splits import audit, grouped_holdout, grouped_kfold


def test_parse_classes():
    assert parse_classes("3class") == ("normal", "benign", "malignant")
    assert parse_classes("normal,benign,malignant") == SCHEMES["3class"]
    assert parse_classes(" Benign-Malignant ") == ("benign", "malignant")
    assert parse_classes(["normal", "abnormal"]) == ("normal", "abnormal")
    assert parse_classes("malignant,benign") == ("malignant", "benign")  # order is kept
    for bad, match in [
        ("benign", "at least two"),
        ("benign,benign", "duplicate"),
        ("benign,cancer", "unknown class"),
        ("normal,abnormal,benign", "abnormal"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_classes(bad)


def test_map_and_encode():
    labels = ["normal", "BENIGN", "malignant", "BENIGN_WITHOUT_CALLBACK"]
    assert list(map_labels(labels, "normal-abnormal")) == [
        "normal",
        "abnormal",
        "abnormal",
        "abnormal",
    ]
    with pytest.raises(ManifestError, match=r"row 0: 'normal'"):
        map_labels(labels, "benign-malignant")
    assert list(in_scheme(labels, "benign-malignant")) == [False, True, True, True]
    ints = encode(labels, "3class")
    assert ints.dtype == np.int64 and list(ints) == [0, 1, 2, 1]
    onehot = encode(labels, "3class", "onehot")
    assert onehot.shape == (4, 3) and onehot.dtype == np.float32
    assert np.array_equal(onehot.argmax(1), ints) and np.all(onehot.sum(1) == 1)
    assert list(encode(labels[1:], "benign-malignant", "binary")) == [0, 1, 0]
    assert list(encode(labels, "normal-abnormal", "binary")) == [0, 1, 1, 1]
    with pytest.raises(ConfigError, match="two classes"):
        encode(labels, "3class", "binary")
    with pytest.raises(ConfigError, match="encoding"):
        encode(labels, "3class", "ordinal")
    # decode inverts every encoding
    assert list(decode(ints, "3class")) == ["normal", "benign", "malignant", "benign"]
    assert list(decode(onehot, "3class", "onehot")) == list(decode(ints, "3class"))
    assert list(decode(np.array([[0.2, 0.8], [0.9, 0.1]]), "benign-malignant")) == [
        "malignant",
        "benign",
    ]
    with pytest.raises(ConfigError, match="out of range"):
        decode([3], "3class")


def _toy(n_patients=30, seed=0):
    rng = np.random.default_rng(seed)
    groups, labels = [], []
    for p in range(n_patients):
        lab = ["benign", "malignant", "normal"][p % 3]
        for _ in range(rng.integers(1, 5)):
            groups.append(f"P{p:03d}")
            labels.append(lab)
    return np.array(labels, dtype=object), np.array(groups, dtype=object)


def test_grouped_kfold_patient_disjoint_stratified_seeded():
    y, g = _toy()
    folds = grouped_kfold(y, g, k=5, seed=3)
    assert len(folds) == 5
    seen = np.concatenate([va for _, va in folds])
    assert sorted(seen) == list(range(len(y)))  # every image validated exactly once
    for tr, va in folds:
        assert not set(g[tr]) & set(g[va])
        assert set(y[va]) == {"benign", "malignant", "normal"}
    again = grouped_kfold(y, g, k=5, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    other = grouped_kfold(y, g, k=5, seed=4)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))


def test_grouped_kfold_errors_and_warnings(caplog):
    with pytest.raises(ConfigError, match="from 3 patient"):
        grouped_kfold(["a", "b", "a", "b"], ["p1", "p2", "p3", "p3"], k=5)
    with pytest.raises(ConfigError, match="k >= 2"):
        grouped_kfold(["a", "b"], ["p1", "p2"], k=1)
    y = ["benign"] * 9 + ["malignant"]
    g = [f"p{i}" for i in range(10)]
    with caplog.at_level(logging.WARNING):
        grouped_kfold(y, g, k=3, seed=0)
    assert "absent from the validation side" in caplog.text


def test_grouped_holdout():
    y, g = _toy(60, seed=1)
    tr, te = grouped_holdout(y, g, test_size=0.3, seed=0)
    assert len(tr) + len(te) == len(y) and not set(g[tr]) & set(g[te])
    assert abs(len(te) / len(y) - 0.3) < 0.05
    for c in ("benign", "malignant", "normal"):
        frac = np.mean(y[te] == c) / np.mean(y == c) * len(te) / len(y)
        assert abs(frac - 0.3) < 0.1  # each class split close to 30 %
    tr2, te2 = grouped_holdout(y, g, test_size=0.3, seed=0)
    assert np.array_equal(te, te2)
    with pytest.raises(ConfigError, match="test_size"):
        grouped_holdout(y, g, test_size=1.5)
    with pytest.raises(ConfigError, match="at least 2 patients"):
        grouped_holdout(["a", "b"], ["p", "p"], test_size=0.5)


def test_audit_splits_folds_duplicates():
    df = pd.DataFrame(
        {
            "image_id": list("abcdef"),
            "path": ["1", "2", "3", "3", "5", "6"],
            "label": ["benign", "malignant", "benign", "benign", "malignant", "benign"],
            "patient_id": ["p1", "p1", "p2", "p3", "p4", "p4"],
            "laterality": ["L", "L", "R", "R", "L", "R"],
            "view": ["CC", "CC", "MLO", "CC", "CC", "CC"],
            "split": ["train", "test", "train", "train", "test", ""],
            "fold": ["0", "1", "0", "1", "", "2"],
        }
    )
    r = audit(df)
    assert not r.ok and r.n_shared == 1 and r.shared == {"test|train": ["p1"]}
    assert r.fold_shared == {"0|1": ["p1"]}
    assert r.duplicate_paths == ["3"] and r.duplicate_views == 1 and r.unassigned == 1
    d = r.to_dict()
    assert d["splits"]["train"] == {"images": 3, "patients": 3, "labels": {"benign": 3}}
    assert d["splits"]["test"]["labels"] == {"malignant": 2}
    assert "LEAK" in r.format()
    ok = audit(df[df["patient_id"] != "p1"].drop(columns="fold"))
    assert ok.ok and "OK" in ok.format()


def test_audit_warns_when_a_label_comes_from_one_source():
    df = pd.DataFrame(
        {
            "patient_id": ["a", "b", "c", "d"],
            "label": ["normal", "normal", "benign", "malignant"],
            "source": ["ddsm", "ddsm", "cbis-ddsm", "cbis-ddsm"],
            "split": ["train"] * 4,
        }
    )
    r = audit(df)
    assert r.source_confounding == {"normal": "ddsm"}
    assert "acquisition pipeline" in r.format()
    df.loc[0, "source"] = "cbis-ddsm"  # both sources now hold normals: no longer confounded
    assert audit(df).source_confounding == {}
    assert audit(df).single_source_labels == {"benign": "cbis-ddsm", "malignant": "cbis-ddsm"}


def test_audit_warns_when_a_label_comes_from_one_source_that_others_share():
    """Normals only from DDSM, lesions from DDSM and CBIS-DDSM: partly confounded, said apart."""
    df = pd.DataFrame(
        {
            "patient_id": ["a", "b", "c", "d", "e"],
            "label": ["normal", "normal", "benign", "malignant", "malignant"],
            "source": ["ddsm", "ddsm", "ddsm", "cbis-ddsm", "ddsm"],
            "split": ["train"] * 5,
        }
    )
    r = audit(df)
    assert r.source_confounding == {}
    assert r.single_source_labels == {"normal": "ddsm", "benign": "ddsm"}
    assert "'normal' image comes from source 'ddsm' (other labels" in r.format()
    assert r.to_dict()["single_source_labels"] == r.single_source_labels
    df["source"] = "ddsm"  # one source for everything: nothing to tell apart, nothing flagged
    assert audit(df).single_source_labels == {} and audit(df).source_confounding == {}


def _mean_images_per_patient(g, idx):
    return len(idx) / len(set(g[idx]))


def test_grouped_holdout_draws_patients_regardless_of_their_size():
    """Patients of 1-4 images: both sides hold the same kind of patient (a split filled with the
    largest patients first put only 4-image patients on the test side)."""
    train_mean, test_mean = [], []
    for seed in range(20):
        y, g = _toy(80, seed=seed)
        tr, te = grouped_holdout(y, g, test_size=0.25, seed=seed)
        train_mean.append(_mean_images_per_patient(g, tr))
        test_mean.append(_mean_images_per_patient(g, te))
        assert set(g[te]).isdisjoint(g[tr])
    ratio = np.mean(test_mean) / np.mean(train_mean)
    assert abs(ratio - 1) < 0.10, (np.mean(test_mean), np.mean(train_mean))
    # and the test side holds small patients too (a size-ordered fill would not)
    y, g = _toy(80, seed=0)
    _, te = grouped_holdout(y, g, test_size=0.25, seed=0)
    sizes = pd.Series(g).value_counts()
    assert sizes[sorted(set(g[te]))].min() <= 2


@pytest.mark.parametrize(("n_patients", "test_size"), [(15, 0.1), (21, 0.1), (15, 0.2)])
def test_grouped_holdout_is_unbiased_with_few_patients_per_class(n_patients, test_size):
    """5-7 patients per class and a 10% hold-out (HybridNet's validation split, the heads' early
    stopping): choosing the prefix by image count skipped large patients drawn first."""
    train_mean, test_mean = [], []
    for seed in range(300):
        y, g = _toy(n_patients, seed=seed)
        tr, te = grouped_holdout(y, g, test_size=test_size, seed=seed)
        train_mean.append(_mean_images_per_patient(g, tr))
        test_mean.append(_mean_images_per_patient(g, te))
    ratio = np.mean(test_mean) / np.mean(train_mean)
    assert abs(ratio - 1) < 0.10, ratio


def test_grouped_kfold_folds_hold_the_same_kind_of_patient():
    per_fold = []
    for seed in range(20):
        y, g = _toy(80, seed=seed)
        per_fold.append([_mean_images_per_patient(g, va) for _, va in grouped_kfold(y, g, 5, seed)])
    means = np.mean(per_fold, axis=0)
    assert means.max() / means.min() < 1.10, means


def test_grouped_holdout_names_its_held_out_side(caplog):
    """fit holds out a test split, train a validation split: the log says which (issue 20.6)."""

    y = ["a"] * 10 + ["b"] * 10
    g = [f"P{i}" for i in range(20)]
    with caplog.at_level(logging.INFO, logger="featmammo.splits"):
        grouped_holdout(y, g, 0.2, 0)
        grouped_holdout(y, g, 0.2, 0, held_out="validation")
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hold-out")]
    assert "test images" in said[0] and "validation images" in said[1]
