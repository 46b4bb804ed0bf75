"""Screening metrics of the positive class (issue 16 item 9), against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from featmammo import evaluate as ev
from featmammo import report as rp

BM = ["benign", "malignant"]
# positives score 0.9 and 0.4, negatives 0.6, 0.2, 0.1
Y = np.array(["malignant", "malignant", "benign", "benign", "benign"], dtype=object)
P_POS = np.array([0.9, 0.4, 0.6, 0.2, 0.1])


def _metrics(at=(0.9,), y=Y, p_pos=P_POS):
    proba = np.column_stack([1 - p_pos, p_pos])
    pred = np.asarray(BM, dtype=object)[proba.argmax(axis=1)]
    return ev.compute_metrics(y, pred, proba, BM, at_specificity=at)


def test_hand_computed_values():
    m = _metrics(at=(0.9, 0.6))
    # ROC points (fpr, tpr): (0,0) (0,.5) (1/3,.5) (1/3,1) (2/3,1) (1,1)
    assert m["sens_at_spec_0.90"] == 0.5  # specificity >= 0.9: only fpr 0
    assert m["sens_at_spec_0.60"] == 1.0  # fpr 1/3 allowed
    # area up to fpr 0.1: 0.1 x 0.5 = 0.05; standardized: (1 + (0.05 - 0.005) / (0.1 - 0.005)) / 2
    assert m["pauc_0.10"] == pytest.approx(0.5 * (1 + 0.045 / 0.095), abs=1e-12)
    # pF1: precision 1.3 / 2.2, recall 1.3 / 2
    prec, rec = 1.3 / 2.2, 1.3 / 2
    assert m["pf1"] == pytest.approx(2 * prec * rec / (prec + rec), abs=1e-12)
    assert m["screening_metrics"] == ["sens_at_spec_0.90", "sens_at_spec_0.60", "pauc_0.10", "pf1"]


def test_pauc_is_scikit_learns_and_sens_at_spec_matches_the_roc_curve():
    rng = np.random.default_rng(3)
    for rounding in (1, 6):
        y = np.where(rng.random(300) < 0.2, "malignant", "benign").astype(object)
        p = np.round(np.clip(rng.normal(0.3 + 0.3 * (y == "malignant"), 0.2), 0, 1), rounding)
        m = _metrics(at=(0.9, 0.95), y=y, p_pos=p)
        pos = y == "malignant"
        assert m["pauc_0.10"] == pytest.approx(skm.roc_auc_score(pos, p, max_fpr=0.1), abs=1e-12)
        fpr, tpr, _ = skm.roc_curve(pos, p)
        assert m["sens_at_spec_0.95"] == pytest.approx(tpr[fpr <= 0.05 + 1e-12].max(), abs=1e-12)


def test_degenerate_inputs():
    m = _metrics(y=np.array(["benign"] * 5, dtype=object))
    assert math.isnan(m["pauc_0.10"]) and math.isnan(m["pf1"])
    assert math.isnan(m["sens_at_spec_0.90"])
    m = _metrics(p_pos=np.zeros(5))  # nothing called positive: pF1 = 0 (RSNA's convention)
    assert m["pf1"] == 0.0
    with pytest.raises(ev.ConfigError, match="between 0 and 1"):
        ev.check_specificities([1.0])


def test_batched_screening_kernels_equal_one_at_a_time():
    rng = np.random.default_rng(0)
    y = np.where(rng.random(120) < 0.3, "malignant", "benign").astype(object)
    p = np.round(rng.random(120), 2)
    proba = np.column_stack([1 - p, p])
    prep = ev._Prepared(y, np.asarray(BM, dtype=object)[proba.argmax(1)], proba, BM, 0.5, None,
                        (0.9, 0.8))  # fmt: skip
    W = ev.cluster_bootstrap_weights((np.arange(120) // 2).astype(str), 20, rng)
    names = ev.screening_metric_names((0.9, 0.8))
    batch = prep.scalars_batch(W, names)
    for b in range(len(W)):
        one = prep.scalars(W[b])
        for k in names:
            np.testing.assert_allclose(batch[k][b], one[k], atol=1e-12, err_msg=k)
        pos = y == "malignant"
        auc = skm.roc_auc_score(pos, p, max_fpr=0.1, sample_weight=W[b])
        assert batch["pauc_0.10"][b] == pytest.approx(auc, abs=1e-12)


def _run(tmp_path, positive=None):
    rng = np.random.default_rng(1)
    n = 160
    patients = np.repeat(np.arange(n // 2), 2)
    y = np.where(np.repeat(rng.random(n // 2), 2) < 0.4, "malignant", "benign").astype(object)
    p = np.clip(0.3 + 0.35 * (y == "malignant") + rng.normal(0, 0.2, n), 0.01, 0.99)
    proba = np.column_stack([1 - p, p])
    fold = np.where(patients < 60, (patients % 3 + 1).astype(str), "test")
    df = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)],
                       "patient_id": [f"P{g}" for g in patients], "fold": fold,
                       "features": "resnet50", "head": "logreg", "y_true": y,
                       "y_pred": np.asarray(BM, dtype=object)[proba.argmax(1)],
                       "p_benign": proba[:, 0], "p_malignant": proba[:, 1]})  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    df.to_csv(run / "predictions.csv", index=False)
    cfg = {"classes": BM, "n_boot": 50, "seed": 0, "at_specificity": [0.9, 0.85],
           "positive_class": positive}  # fmt: skip
    (run / "config.json").write_text(json.dumps(cfg))
    return run, df


def test_leaderboard_columns_cis_and_verify(tmp_path):
    run, df = _run(tmp_path)
    text = rp.write_report(run, figures=False).read_text()
    lb = pd.read_csv(run / "leaderboard.csv")
    for col in ("sens_at_spec_0.90", "sens_at_spec_0.85", "pauc_0.10", "pf1"):
        assert col in lb.columns and f"{col}_ci_low" in lb.columns
    test = df[df["fold"] == "test"]
    row = lb[lb["evaluation"] == "test"].iloc[0]
    pos = test["y_true"] == "malignant"
    assert row["pauc_0.10"] == pytest.approx(skm.roc_auc_score(pos, test["p_malignant"],
                                                               max_fpr=0.1))  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    res = next(r for r in metrics["results"] if r["evaluation"] == "cv")
    assert res["ci"]["pf1"]["low"] <= res["metrics"]["pf1"] <= res["ci"]["pf1"]["high"]
    assert "Screening metrics (malignant vs rest)" in text and "| pauc_0.10 |" in text
    checks = {c["check"].split(" = ")[0]: c for c in rp.verify(run)}
    assert all(c["ok"] for c in checks.values())
    for name in ("sens_at_spec_0.90", "sens_at_spec_0.85", "pauc_0.10", "pf1"):
        assert checks[name]["ok"], name
    metrics["results"][0]["metrics"]["pf1"] += 0.01
    (run / "metrics.json").write_text(json.dumps(metrics))
    failed = [c["check"] for c in rp.verify(run) if not c["ok"]]
    assert failed == ["pf1 = RSNA's pF1 summed over the probabilities on the predictions",
                      "leaderboard.csv (re-read) = metrics.json"]  # fmt: skip


def test_positive_class_is_configurable(tmp_path):
    run, _ = _run(tmp_path, positive="benign")
    rp.write_report(run, figures=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["positive_class"] == "benign"
    assert all(c["ok"] for c in rp.verify(run))
