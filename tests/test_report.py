"""featmammo.report: every reported number is recomputed from predictions.csv and agrees with it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from featmammo import plots
from featmammo.report import fold_audit, write_report

CLASSES = ["normal", "benign", "malignant"]


def _run_dir(tmp_path, rng, *, leak=False):
    n_pat, per = 60, 3  # >= 10 patients per class on each side: CIs are given (issue 11.3)
    rows = []
    for features, signal in (("hybrid", 2.0), ("resnet50", 1.0)):
        local = np.random.default_rng(7)  # same labels/patients for both features sets
        y = local.integers(0, 3, n_pat * per)
        logits = rng.normal(size=(len(y), 3)) + signal * np.eye(3)[y]
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        patient = np.repeat(np.arange(n_pat), per)
        fold = np.where(patient < 36, patient % 3 + 1, 0).astype(str).astype(object)
        fold[fold == "0"] = "test"
        if leak:
            fold[0] = "2"  # patient 0 (fold 1) gets one image in fold 2
        for i in range(len(y)):
            rows.append(
                {
                    "image_id": f"img{i:03d}",
                    "patient_id": f"P{patient[i]:02d}",
                    "fold": fold[i],
                    "features": features,
                    "head": "logreg",
                    "y_true": CLASSES[y[i]],
                    "y_pred": CLASSES[int(p[i].argmax())],
                    **{f"p_{c}": p[i, j] for j, c in enumerate(CLASSES)},
                }
            )
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame(rows).to_csv(run / "predictions.csv", index=False)
    (run / "config.json").write_text(
        json.dumps({"classes": CLASSES, "n_boot": 40, "seed": 3, "threshold": 0.5, "cv": 3})
    )
    return run


def _recompute(pred: pd.DataFrame, features: str, evaluation: str) -> dict:
    """The leaderboard numbers, straight from predictions.csv with scikit-learn."""
    g = pred[pred["features"] == features]
    g = g[g["fold"] == "test"] if evaluation == "test" else g[g["fold"] != "test"]
    y, yp = g["y_true"].to_numpy(), g["y_pred"].to_numpy()
    p = g[[f"p_{c}" for c in CLASSES]].to_numpy()
    yi = np.array([CLASSES.index(v) for v in y])
    return {
        "accuracy": skm.accuracy_score(y, yp),
        "balanced_accuracy": skm.balanced_accuracy_score(y, yp),
        "macro_f1": skm.f1_score(y, yp, average="macro", labels=CLASSES, zero_division=0),
        "weighted_f1": skm.f1_score(y, yp, average="weighted", labels=CLASSES, zero_division=0),
        "roc_auc_ovr": skm.roc_auc_score(yi, p, multi_class="ovr"),
        "roc_auc_pos_vs_rest": skm.roc_auc_score(y == "malignant", p[:, 2]),
        "n_images": len(g),
        "n_patients": g["patient_id"].nunique(),
    }


def _check_leaderboard(run):
    pred = pd.read_csv(run / "predictions.csv", dtype={"fold": str})
    lb = pd.read_csv(run / "leaderboard.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(lb) == 4
    for _, row in lb.iterrows():
        want = _recompute(pred, row["features"], row["evaluation"])
        for key, value in want.items():
            assert row[key] == pytest.approx(value, abs=1e-12), (row["features"], key)
        res = next(
            r for r in metrics["results"]
            if (r["features"], r["evaluation"]) == (row["features"], row["evaluation"])
        )  # fmt: skip
        assert res["metrics"]["accuracy"] == pytest.approx(row["accuracy"], abs=1e-15)
        assert row["accuracy_ci_low"] <= row["accuracy"] <= row["accuracy_ci_high"]
    return lb, metrics


def test_report_numbers_are_recomputed_from_predictions(tmp_path, rng):
    run = _run_dir(tmp_path, rng)
    out = write_report(run, figures=False)
    lb, metrics = _check_leaderboard(run)
    text = out.read_text()
    # the paper's table layout, with the baseline and balanced accuracy beside it
    assert "| class | precision % | recall % | F1 % | support |" in text
    assert "| macro avg |" in text and "| weighted avg |" in text
    assert "majority-class baseline" in text and "balanced accuracy" in text
    assert "## Leakage and source audit" in text
    assert "## The answer: hybrid vs each backbone" in text  # opens the report (issue 8.7)
    assert text.index("## The answer") < text.index("## Setup")
    assert "**FAIL**" not in text and "**NO**" not in text
    assert not any(tok in text for tok in ("{_", "{m[", "{r[", "{c[")), "unformatted f-string"
    assert all(c["ok"] for c in metrics["consistency"])
    assert {c["check"] for c in metrics["consistency"]} >= {
        "balanced accuracy = sklearn.metrics.balanced_accuracy_score on predictions.csv",
        "leaderboard.csv (re-read) = metrics.json",
    }  # fmt: skip
    # a hybrid row's per-class table in report.md shows the same rounded numbers as metrics.json
    res = next(
        r for r in metrics["results"] if (r["features"], r["evaluation"]) == ("hybrid", "test")
    )
    pc = res["metrics"]["per_class"]["malignant"]
    line = (
        f"| malignant | {100 * pc['precision']:.1f} | {100 * pc['recall']:.1f} | "
        f"{100 * pc['f1']:.1f} | {pc['support']} |"
    )
    assert line in text
    # the held-out baseline is the training part's majority class
    pred = pd.read_csv(run / "predictions.csv", dtype={"fold": str})
    h = pred[pred["features"] == "hybrid"]
    majority = h[h["fold"] != "test"]["y_true"].value_counts().idxmax()
    row = lb[(lb["features"] == "hybrid") & (lb["evaluation"] == "test")].iloc[0]
    assert row["majority_baseline"] == pytest.approx(
        (h[h["fold"] == "test"]["y_true"] == majority).mean()
    )
    assert metrics["comparisons"] and metrics["comparisons"][0]["features_a"] == "hybrid"
    table = pd.read_csv(run / "comparisons.csv")
    assert len(table) == len(metrics["comparisons"]) and set(table["features_a"]) == {"hybrid"}


def test_editing_predictions_changes_the_report(tmp_path, rng):
    run = _run_dir(tmp_path, rng)
    write_report(run, figures=False)
    before = pd.read_csv(run / "leaderboard.csv")
    pred = pd.read_csv(run / "predictions.csv", dtype={"fold": str})
    # make every hybrid test prediction right (and its probabilities agree)
    sel = (pred["features"] == "hybrid") & (pred["fold"] == "test")
    pred.loc[sel, "y_pred"] = pred.loc[sel, "y_true"]
    for c in CLASSES:
        pred.loc[sel, f"p_{c}"] = np.where(pred.loc[sel, "y_true"] == c, 0.9, 0.05)
    pred.to_csv(run / "predictions.csv", index=False)
    write_report(run, figures=False)
    lb, metrics = _check_leaderboard(run)
    row = lb[(lb["features"] == "hybrid") & (lb["evaluation"] == "test")].iloc[0]
    old = before[(before["features"] == "hybrid") & (before["evaluation"] == "test")].iloc[0]
    assert row["accuracy"] == 1.0 and old["accuracy"] < 1.0
    assert row["roc_auc_ovr"] == 1.0
    same = lb[lb["features"] == "resnet50"].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        same, before[before["features"] == "resnet50"].reset_index(drop=True)
    )
    assert "| 1.000 [1.000, 1.000] |" in (run / "report.md").read_text()


def test_consistency_check_catches_inconsistent_predictions(tmp_path, rng):
    run = _run_dir(tmp_path, rng)
    pred = pd.read_csv(run / "predictions.csv", dtype={"fold": str})
    pred.loc[0, "y_pred"] = next(c for c in CLASSES if c != pred.loc[0, "y_pred"])  # not the argmax
    pred.loc[1, "p_normal"] += 0.5  # no longer sums to 1
    pred.to_csv(run / "predictions.csv", index=False)
    write_report(run, figures=False)
    checks = {c["check"]: c for c in json.loads((run / "metrics.json").read_text())["consistency"]}
    assert not checks["y_pred is the argmax of p_<class> (the decision rule)"]["ok"]
    assert not checks["probabilities sum to 1 per image"]["ok"]
    assert checks["confusion matrix = sklearn.metrics.confusion_matrix (y_pred)"]["ok"]
    assert "**FAIL**" in (run / "report.md").read_text()


def test_audit_recomputed_from_folds_flags_a_leak(tmp_path, rng):
    run = _run_dir(tmp_path, rng, leak=True)
    pred = pd.read_csv(run / "predictions.csv", dtype={"fold": str})
    audit = fold_audit(pred)
    assert all(a["patients_across_folds"] == 1 and not a["ok"] for a in audit)
    assert audit[0]["examples_across_folds"] == ["P00"]
    write_report(run, figures=False)
    assert "**NO**" in (run / "report.md").read_text()


def test_figures_are_written(tmp_path, rng):
    run = _run_dir(tmp_path, rng)
    img = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray((rng.random((40, 30)) * 255).astype(np.uint8)).save(img)
    pred = pd.read_csv(run / "predictions.csv", dtype={"fold": str})
    pred = pred[pred["features"] == "hybrid"]  # one model: fewer panels to draw
    pred.to_csv(run / "predictions.csv", index=False)
    ids = pred["image_id"].unique()
    paths = [str(img) if i == ids[-1] else str(tmp_path / "missing.png") for i in ids]
    pd.DataFrame({"image_id": ids, "path": paths}).to_csv(run / "images.csv", index=False)
    write_report(run, max_images=4)
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("confusion_test", "roc_cv", "pr_test", "calibration_cv", "test_images"):
        assert (run / "figures" / f"{name}.png").stat().st_size > 1000
    assert any("skipped" in n for n in metrics["notes"])  # unreadable images are noted, not fatal
    assert "![ROC, held-out test](figures/roc_test.png)" in (run / "report.md").read_text()


def test_calibration_bins():
    bins = plots.calibration_bins([0, 1, 1, 0, 1], [0.05, 0.95, 0.91, 0.5, 0.55], n_bins=10)
    assert bins["count"].sum() == 5
    row = bins[bins["bin"] == 9].iloc[0]
    assert row["observed"] == 1.0 and row["mean_predicted"] == pytest.approx(0.93)


def test_report_command_keeps_the_runs_own_settings(tmp_path, rng):
    """`featmammo report RUN_DIR` without options reproduces the run's numbers (its config's n_boot,
    seed and threshold); an explicit option changes them."""
    from click.testing import CliRunner

    from featmammo.cli.main import cli
    from featmammo.report import write_report

    run = _run_dir(tmp_path, rng)
    write_report(run, figures=False)  # as fit leaves it: settings from config.json
    before = (run / "leaderboard.csv").read_text()
    r = CliRunner().invoke(cli, ["report", str(run), "--no-figures"])
    assert r.exit_code == 0, r.output
    assert (run / "leaderboard.csv").read_text() == before
    assert json.loads((run / "metrics.json").read_text())["n_boot"] == 40
    r = CliRunner().invoke(cli, ["report", str(run), "--no-figures", "--n-boot", "60"])
    assert r.exit_code == 0, r.output
    assert (run / "leaderboard.csv").read_text() != before
