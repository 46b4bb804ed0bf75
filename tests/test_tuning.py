"""featmammo.tuning: grids, the exact inner-CV shortcuts, selection and the tuning.csv rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from featmammo import heads, tuning
from featmammo.errors import ConfigError
from featmammo.splits import grouped_kfold

LABELS = np.array(["benign", "malignant", "normal"], dtype=object)


def _data(n=150, d=60, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.array([f"P{i // 3:03d}" for i in range(n)], dtype=object)
    y_pat = rng.integers(0, 3, size=n // 3 + 1)
    y = y_pat[np.arange(n) // 3]
    means = rng.normal(0, 1.0, size=(3, d))
    means[:, 10:] = 0
    X = (means[y] * 3 + rng.normal(size=(n, d)) * rng.uniform(0.5, 5, size=d)).astype(np.float32)
    return X, LABELS[y], groups


BLOCKS = {"resnet50": slice(0, 20), "alexnet": slice(20, 60)}


# the shortcuts against the real pipeline: tests/test_tuning_honest.py


def test_tune_scores_every_point_and_chooses_the_best_once():
    X, y, g = _data(seed=1)
    cv = tuning.InnerCV(X, y, g, grouped_kfold(y, g, 3, seed=0), blocks=BLOCKS)
    grid = {"C": [1e-4, 1.0, 100.0]}
    chosen, rows = tuning.tune(
        cv, "logreg", grid, classes=list(LABELS), seed=0, metric="neg_log_loss"
    )
    assert [json.loads(r["params"]) for r in rows] == [{"C": 1e-4}, {"C": 1.0}, {"C": 100.0}]
    assert sum(r["chosen"] for r in rows) == 1
    scores = [r["inner_score"] for r in rows]
    best = rows[int(np.argmax(scores))]
    assert best["chosen"] and json.loads(best["params"]) == chosen
    assert scores[0] < max(scores)  # a near-zero C gives near-uniform probabilities
    # a parameter the user fixed is not tuned; the single point is still scored
    chosen, rows = tuning.tune(cv, "logreg", grid, classes=list(LABELS), base={"C": 2.0})
    assert chosen == {} and len(rows) == 1 and rows[0]["chosen"]
    assert np.isfinite(rows[0]["inner_score"])
    # ties go to the first (most regularised) point
    chosen, rows = tuning.tune(cv, "knn", {"n_neighbors": [5, 5]}, classes=list(LABELS))
    assert [r["chosen"] for r in rows] == [True, False]
    with pytest.raises(ConfigError, match="tune-metric"):
        tuning.tune(cv, "logreg", grid, classes=list(LABELS), metric="f2")


def test_early_stopping_heads_get_the_inner_fold_patients():
    X, y, g = _data(seed=2)
    cv = tuning.InnerCV(X, y, g, grouped_kfold(y, g, 3, seed=0), blocks=BLOCKS)
    chosen, rows = tuning.tune(
        cv, "xgboost", {"max_depth": [2, 3]}, classes=list(LABELS),
        base={"device": "cpu", "n_jobs": 1, "n_estimators": 30},
    )  # fmt: skip
    assert len(rows) == 2 and chosen in ({"max_depth": 2}, {"max_depth": 3})


@pytest.mark.parametrize("metric", tuning.METRICS)
def test_metrics_prefer_the_right_model(metric):
    y = np.array(["a", "b", "c"] * 10)
    good = np.eye(3)[np.tile([0, 1, 2], 10)] * 0.8 + 0.2 / 3
    bad = np.roll(good, 1, axis=1)
    assert tuning.score(metric, y, good, ["a", "b", "c"]) > tuning.score(
        metric, y, bad, ["a", "b", "c"]
    )


def test_grids_cover_every_head_and_resolve():
    for head in heads.available():
        assert tuning.GRIDS[head] and tuning.SMALL_GRIDS[head]
        for p, values in tuning.SMALL_GRIDS[head].items():
            assert p in tuning.GRIDS[head] and set(values) <= set(tuning.GRIDS[head][p])
    assert tuning.resolve_grids("small") == tuning.SMALL_GRIDS
    custom = tuning.resolve_grids({"mlp-torch": {"dropout": [0.1]}})
    assert custom["refine-mlp"] == {"dropout": [0.1]} and custom["logreg"] == tuning.GRIDS["logreg"]
    with pytest.raises(ConfigError, match="tune_grid.logreg"):
        tuning.resolve_grids({"logreg": {"C": []}})
    with pytest.raises(ConfigError, match="tune-grid"):
        tuning.resolve_grids("huge")
    assert tuning.params_json({"b": 1, "a": np.float64(0.5)}) == '{"a": 0.5, "b": 1}'
    assert tuning.grid_points({"C": [1, 2], "gamma": [3]}, {"gamma": 1}) == [{"C": 1}, {"C": 2}]


def test_every_grid_point_builds_a_head():
    for head, grid in tuning.GRIDS.items():
        for p in tuning.grid_points(grid):
            heads.make(head, **p)  # ConfigError if a grid names a parameter the head lacks


def test_roc_auc_tuning_metric_takes_classes_in_any_order():
    """The usual class order (normal, benign, malignant) is not sorted; scikit-learn wants sorted
    labels with matching columns."""
    from featmammo.tuning import score

    classes = ["normal", "benign", "malignant"]
    y = np.array(["normal", "benign", "malignant", "normal", "benign", "malignant"])
    perfect = np.eye(3)[[0, 1, 2, 0, 1, 2]]
    assert score("roc_auc", y, perfect, classes) == 1.0
    assert score("roc_auc", y, perfect[:, [1, 2, 0]], classes) < 0.5
