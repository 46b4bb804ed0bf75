"""featmammo.report, issues 8 and 11: caveats travel with the results, validation rows stay apart,
the answer is stated with Holm-adjusted paired differences, CIs are withheld on tiny samples, and
the consistency checks recompute every figure a second way (and fail when a number is wrong)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from featmammo import evaluate as ev
from featmammo import plots
from featmammo import report as rp

CLASSES = ["normal", "benign", "malignant"]
CAVEATS = {
    "weights": {"resnet50": "random (seed 0)", "alexnet": "file /w/a.pth (sha256 0123456789ab)"},
    "sources": {"cbis-ddsm": 300, "ddsm-normals": 60},
    "warnings": ["normals come from another source than lesions"],
}


def _frame(features, head, y, p, patients, fold):
    df = pd.DataFrame(
        {
            "image_id": [f"img{i:04d}" for i in range(len(y))],
            "patient_id": [f"P{g:03d}" for g in patients],
            "fold": fold,
            "features": features,
            "head": head,
            "y_true": np.asarray(CLASSES, dtype=object)[y],
            "y_pred": np.asarray(CLASSES, dtype=object)[p.argmax(1)],
        }
    )
    for j, c in enumerate(CLASSES):
        df[f"p_{c}"] = p[:, j]
    return df


def _probs(rng, y, signal):
    logits = rng.normal(size=(len(y), 3)) + signal * np.eye(3)[y]
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _run(tmp_path, *, n_pat=60, per=2, folds=("1", "2", "3"), validation=False, config=None,
         signals=None, heads=("logreg",), seed=0):  # fmt: skip
    rng = np.random.default_rng(seed)
    y = np.random.default_rng(7).integers(0, 3, n_pat * per)
    patients = np.repeat(np.arange(n_pat), per)
    train = patients < (2 * n_pat) // 3
    if validation:
        fold = np.where(train, "validation", "test")
    else:
        fold = np.where(train, np.asarray(folds, dtype=object)[patients % len(folds)], "test")
    frames = []
    for features, signal in (signals or {"hybrid": 2.0, "resnet50": 1.0}).items():
        for head in heads:
            frames.append(_frame(features, head, y, _probs(rng, y, signal), patients, fold))
    run = tmp_path / "run"
    run.mkdir()
    pd.concat(frames).to_csv(run / "predictions.csv", index=False)
    counts = pd.Series(np.asarray(CLASSES)[y[train]]).value_counts().to_dict()
    cfg = {"classes": CLASSES, "n_boot": 60, "seed": 1, "threshold": 0.5,
           "train_class_counts": counts, **(config or {})}  # fmt: skip
    (run / "config.json").write_text(json.dumps(cfg))
    return run, y, fold


def test_caveats_open_the_report_and_travel_into_metrics_and_footers(tmp_path):
    run, _, _ = _run(
        tmp_path,
        config={
            "caveats": CAVEATS,
            "split_audit": {"ok": True, "source_confounding": {"normal": "ddsm-normals"}},
            "notes": ["caveat written by the run itself"],
        },
    )
    text = rp.write_report(run, figures=False).read_text()
    opening = text[: text.index("## The answer")]
    assert "resnet50: random (seed 0)" in opening and "**Random weights** for resnet50" in opening
    assert "alexnet: file /w/a.pth (sha256 0123456789ab)" in opening
    assert "cbis-ddsm (300 images), ddsm-normals (60 images)" in opening
    assert "Warning: normals come from another source than lesions" in opening
    assert "Source confounding: checked: **every 'normal' image comes from 'ddsm-normals'**" in (
        opening
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["caveats"] == CAVEATS
    assert "caveat written by the run itself" in metrics["notes"]  # the run's note survives
    assert "caveat written by the run itself" in text
    assert "ddsm-normals" in metrics["source_confounding"]
    footer = rp.footer_text(json.loads((run / "config.json").read_text()))
    assert footer[0].startswith("weights: resnet50 random (seed 0)")
    assert any("sources: cbis-ddsm 300" in f for f in footer)


@pytest.mark.parametrize(
    ("audit", "expect"),
    [
        ({"ok": True, "source_confounding": {}}, "checked: no label comes from a source"),
        (
            {"ok": True, "source_confounding": {}, "single_source_labels": {"normal": "ddsm"}},
            "checked: **every 'normal' image comes from 'ddsm'** (which other labels share)",
        ),
        ({"ok": True, "source_confounding": None}, "not checked (the images carry no source"),
        ({"ok": True}, "not checked (the split audit has no source check)"),
        (None, "not checked (config.json has no split_audit)"),
    ],
)
def test_source_confounding_is_stated_even_when_empty(tmp_path, audit, expect):
    run, _, _ = _run(tmp_path, config={"split_audit": audit} if audit else {})
    text = rp.write_report(run, figures=False).read_text()
    assert expect in text[: text.index("## The answer")]
    assert "config.json records no caveats" in text  # a run without caveats says so


def test_validation_rows_are_apart_unranked_and_say_they_chose_the_epoch(tmp_path):
    """featmammo train: fold "validation" (early stopping) + test; baselines from train counts."""
    run, y, fold = _run(tmp_path, validation=True, signals={"hybridnet": 2.0}, heads=("hybridnet",))
    text = rp.write_report(run, figures=True, max_images=0).read_text()
    lb = pd.read_csv(run / "leaderboard.csv")
    assert set(lb["evaluation"]) == {"validation", "test"}
    val = lb[lb["evaluation"] == "validation"].iloc[0]
    assert bool(val["optimistic"]) and pd.isna(val["rank"])
    # no CV rows: nothing is ranked (never by the test score)
    assert pd.isna(lb.loc[lb["evaluation"] == "test", "rank"].iloc[0])
    counts = json.loads((run / "config.json").read_text())["train_class_counts"]
    majority = max(CLASSES, key=lambda c: (counts.get(c, 0), -CLASSES.index(c)))
    names = np.asarray(CLASSES, dtype=object)
    for _, row in lb.iterrows():
        part = names[y][fold == row["evaluation"]]
        assert row["majority_class"] == majority
        assert row["majority_baseline"] == pytest.approx(np.mean(part == majority))
    assert "## HybridNet validation rows (not an estimate)" in text
    assert "chose the stopping epoch" in text[: text.index("## The answer")]
    assert "/ pooled out-of-fold CV" not in text and "| cv |" not in text
    assert (
        "### hybridnet / hybridnet (optimistic) / validation\n\n*HybridNet validation (chose"
        in text
    )
    assert (run / "figures" / "roc_validation.png").exists()
    assert not (run / "figures" / "roc_cv.png").exists()
    honest = text[text.index("## Leaderboard") : text.index("## HybridNet validation rows")]
    assert "| validation |" not in honest


def test_the_answer_is_stated_with_holm_adjusted_paired_differences(tmp_path):
    run, _, _ = _run(
        tmp_path,
        n_pat=90,
        signals={"hybrid": 3.0, "resnet50": 1.0, "alexnet": 0.0},
        heads=("logreg", "knn"),
    )
    text = rp.write_report(run, figures=False).read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    answer = text[text.index("## The answer: hybrid vs each backbone") : text.index("## Setup")]
    assert "Holm-adjusted" in answer and "Durkalski 2003" in answer
    assert "corrected resampled t" in answer and "intervals are unadjusted" in answer
    assert answer.index("### held-out test") < answer.index("### CV folds")
    for c in metrics["comparisons"]:
        assert f"| {c['head']} | hybrid vs {c['features_b']} |" in answer
    # 2 backbones x 2 heads x (cv: 2 metrics, test: 2 metrics + McNemar)
    assert len(metrics["comparisons"]) == 2 * 2 * (2 + 3)
    # a strong hybrid against noise-level rivals, on the held-out test
    assert "Balanced accuracy, held-out test: hybrid better in 4, worse in 0" in answer
    # every verdict line says the intervals are unadjusted
    verdicts = [ln for ln in answer.splitlines() if " better in " in ln]
    assert len(verdicts) == 5 and all("intervals unadjusted" in ln for ln in verdicts)
    table = pd.read_csv(run / "comparisons.csv")
    for _, fam in table.groupby([table["evaluation"], table["metric"] == "accuracy_mcnemar"]):
        np.testing.assert_allclose(fam["p_holm"], ev.holm_adjust(fam["p_raw"].tolist()))
    assert (table.loc[table["metric"] == "accuracy_mcnemar", "evaluation"] == "test").all()


def test_no_ci_below_the_minimum_patients_per_class(tmp_path):
    run, _, _ = _run(tmp_path, n_pat=15)  # 5 test patients: fewer than 10 in every class
    text = rp.write_report(run, figures=False).read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    test = [r for r in metrics["results"] if r["evaluation"] == "test"]
    assert all(r["ci_note"].startswith("n/a (") and "< 10)" in r["ci_note"] for r in test)
    assert all(r["ci"]["roc_auc_ovr"]["low"] is None for r in test)
    lb = pd.read_csv(run / "leaderboard.csv")
    assert lb.loc[lb["evaluation"] == "test", "accuracy_ci_low"].isna().all()
    assert "(CI n/a (" in text and "patients in class" in text
    assert any(w.startswith("small samples:") for w in metrics["warnings"])
    assert "Warning: small samples" in text[: text.index("## The answer")]
    cmp = [c for c in metrics["comparisons"] if c["evaluation"] == "test"][0]
    assert "not tested" in cmp["method"] and cmp["p_raw"] is None and cmp["p_holm"] is None
    assert not any("[" in ln and "| test |" in ln for ln in text.splitlines() if "logreg" in ln)
    checks = {c["check"]: c for c in metrics["consistency"]}
    assert checks["no CI in leaderboard.csv where a class has < 10 patients (recounted)"]["ok"]


def test_a_corrupted_number_fails_the_consistency_checks(tmp_path):
    run, _, _ = _run(tmp_path)
    rp.write_report(run, figures=False)
    assert all(c["ok"] for c in rp.verify(run))
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["results"][1]["metrics"]["balanced_accuracy"] += 0.01
    metrics["results"][0]["metrics"]["confusion_matrix"][0][0] += 1
    (run / "metrics.json").write_text(json.dumps(metrics))
    failed = {c["check"]: c for c in rp.verify(run) if not c["ok"]}
    bal = "balanced accuracy = sklearn.metrics.balanced_accuracy_score on predictions.csv"
    assert set(failed) == {
        bal,
        "confusion matrix = sklearn.metrics.confusion_matrix (y_pred)",
        "leaderboard.csv (re-read) = metrics.json",
    }
    r = metrics["results"][1]
    assert f"{r['features']}/{r['head']}/{r['evaluation']}" in failed[bal]["detail"]
    # leaderboard.csv edited by hand: caught as well
    rp.write_report(run, figures=False)
    lb = pd.read_csv(run / "leaderboard.csv")
    lb.loc[0, "sensitivity"] = 0.123
    lb.to_csv(run / "leaderboard.csv", index=False)
    assert [c["check"] for c in rp.verify(run) if not c["ok"]] == [
        "leaderboard.csv (re-read) = metrics.json"
    ]


def test_a_wrong_metric_kernel_is_caught_by_the_independent_recompute(tmp_path, monkeypatch):
    """The checks do not re-derive numbers from the dictionary that produced them: a bug in
    featmammo.evaluate's kernels shows up as FAIL in the report."""
    run, _, _ = _run(tmp_path)
    real = ev.table_from_confusion

    def broken(cm):
        out = real(cm)
        out["balanced_accuracy"] = out["accuracy"]  # a plausible slip: the plain accuracy
        return out

    monkeypatch.setattr(ev.kernels, "table_from_confusion", broken)  # where the kernels call it
    text = rp.write_report(run, figures=False).read_text()
    assert "| balanced accuracy = sklearn.metrics.balanced_accuracy_score on predictions.csv" \
        " | **FAIL** |" in text  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    assert any(w.startswith("consistency checks failed") for w in metrics["warnings"])


def test_tuning_choices_are_shown_and_a_double_choice_fails(tmp_path):
    run, _, _ = _run(tmp_path, config={"tune": "grid", "tune_metric": "balanced_accuracy",
                                       "inner_cv": 3})  # fmt: skip
    rows = []
    for f in ("hybrid", "resnet50"):
        for fold in ("1", "2", "3", "test"):
            for c in (0.1, 1.0, 10.0):
                rows.append({"features": f, "head": "logreg", "fold": fold,
                             "params": json.dumps({"C": c}), "inner_score": 0.5 + c / 100,
                             "chosen": c == (10.0 if fold == "test" else 1.0)})  # fmt: skip
    pd.DataFrame(rows).to_csv(run / "tuning.csv", index=False)
    text = rp.write_report(run, figures=False).read_text()
    section = text[text.index("## Tuning") : text.index("## Data")]
    assert "| hybrid | logreg | 1: C=1.0 (0.510); 2: C=1.0 (0.510); 3: C=1.0 (0.510); " \
        "test: C=10.0 (0.600) |" in section  # fmt: skip
    assert "inner folds: 3, metric: balanced_accuracy" in section
    checks = {c["check"]: c for c in json.loads((run / "metrics.json").read_text())["consistency"]}
    assert checks["tuning.csv: exactly one chosen row per features/head/fold"]["ok"]
    rows[0]["chosen"] = True  # hybrid/logreg/fold 1 now has two chosen rows
    pd.DataFrame(rows).to_csv(run / "tuning.csv", index=False)
    bad = {c["check"]: c for c in rp.verify(run)}[
        "tuning.csv: exactly one chosen row per features/head/fold"
    ]
    assert not bad["ok"] and "hybrid/logreg/1" in bad["detail"]


def test_optimistic_features_are_marked(tmp_path):
    run, _, _ = _run(
        tmp_path,
        config={
            "optimistic_features": ["hybrid"],
            "optimistic_reason": "hybrid:ckpt.pt trained on 40 of these images",
        },
    )
    text = rp.write_report(run, figures=False).read_text()
    lb = pd.read_csv(run / "leaderboard.csv")
    assert lb.loc[lb["features"] == "hybrid", "optimistic"].all()
    assert not lb.loc[lb["features"] != "hybrid", "optimistic"].any()
    opening = text[: text.index("## The answer")]
    assert "optimistic: features hybrid" in opening and "trained on 40 of these images" in opening
    assert "hybrid vs resnet50 (optimistic)" in text
    assert "### hybrid / logreg (optimistic) / test\n\n*held-out test*" in text


def test_image_grid_model_is_chosen_by_cv_not_test(tmp_path):
    """resnet50 wins on CV, hybrid on test: the grid shows resnet50's test images."""
    rng = np.random.default_rng(0)
    y = np.random.default_rng(7).integers(0, 3, 120)
    patients = np.repeat(np.arange(60), 2)
    fold = np.where(patients < 40, (patients % 2 + 1).astype(str), "test").astype(object)
    frames = []
    for features, cv_signal, test_signal in (("hybrid", 0.0, 4.0), ("resnet50", 4.0, 0.0)):
        signal = np.where(fold == "test", test_signal, cv_signal)[:, None]
        logits = rng.normal(size=(120, 3)) + signal * np.eye(3)[y]
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        frames.append(_frame(features, "logreg", y, p, patients, fold))
    run = tmp_path / "run"
    run.mkdir()
    pd.concat(frames).to_csv(run / "predictions.csv", index=False)
    (run / "config.json").write_text(json.dumps({"classes": CLASSES, "n_boot": 0}))
    from PIL import Image

    Image.fromarray((rng.random((40, 30)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    ids = frames[0]["image_id"]
    pd.DataFrame({"image_id": ids, "path": str(tmp_path / "a.png")}).to_csv(
        run / "images.csv", index=False
    )
    rp.write_report(run, figures=True, max_images=4)
    metrics = json.loads((run / "metrics.json").read_text())
    (name,) = [k for k in metrics["figures"] if k.startswith("test images")]
    assert "resnet50 / logreg" in name and "best CV balanced accuracy" in name
    best_test = max(
        (r for r in metrics["results"] if r["evaluation"] == "test"),
        key=lambda r: r["metrics"]["balanced_accuracy"],
    )
    assert best_test["features"] == "hybrid"  # the test score would have picked the other one


def test_figures_are_large_with_titles_naming_the_evaluation(tmp_path):
    run, _, _ = _run(tmp_path, config={"caveats": CAVEATS})
    rp.write_report(run, figures=True, max_images=0)
    from PIL import Image

    for name in ("roc_test", "pr_cv", "calibration_test"):
        with Image.open(run / "figures" / f"{name}.png") as im:
            assert im.size[0] >= 1000 and im.size[1] >= 640, (name, im.size)
    text = (run / "report.md").read_text()
    assert "![ROC, held-out test](figures/roc_test.png)" in text


def test_calibration_error_and_footer_wrapping():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.8, 0.9])
    err = plots.calibration_error(y, s, n_bins=10)
    # bins 1, 2, 8, 9 hold one image each: |0-0.1|, |0-0.2|, |1-0.8|, |1-0.9| -> mean 0.15
    assert err["ece"] == pytest.approx(0.15)
    assert err["brier"] == pytest.approx((0.01 + 0.04 + 0.04 + 0.01) / 4)
    lines = plots.footer_lines(["x" * 50, "word " * 60], width=100)
    assert lines[0] == "x" * 50 and len(lines) == 1 + 3 and all(len(ln) <= 100 for ln in lines)


def test_report_command_verify_exits_non_zero_on_a_corrupted_file(tmp_path):
    from click.testing import CliRunner

    from featmammo.cli.main import cli

    run, _, _ = _run(tmp_path)
    r = CliRunner().invoke(cli, ["report", str(run), "--no-figures", "--min-patients", "5"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "metrics.json").read_text())["min_patients_per_class"] == 5
    r = CliRunner().invoke(cli, ["report", str(run), "--verify"])
    assert r.exit_code == 0, r.output
    assert "ok    balanced accuracy = sklearn.metrics.balanced_accuracy_score" in r.output
    lb = pd.read_csv(run / "leaderboard.csv")
    lb.loc[0, "balanced_accuracy"] += 0.05
    lb.to_csv(run / "leaderboard.csv", index=False)
    r = CliRunner().invoke(cli, ["report", str(run), "--verify"])
    assert r.exit_code == 1
    assert "FAIL  leaderboard.csv (re-read) = metrics.json" in r.output
    # an edited McNemar count in comparisons.csv (issue 16.4)
    CliRunner().invoke(cli, ["report", str(run), "--no-figures", "--min-patients", "5"])
    comps = pd.read_csv(run / "comparisons.csv")
    i = comps.index[comps["metric"] == "accuracy_mcnemar"][0]
    comps.loc[i, "method"] = comps.loc[i, "method"].replace("b=", "b=1", 1)
    comps.to_csv(run / "comparisons.csv", index=False)
    r = CliRunner().invoke(cli, ["report", str(run), "--verify"])
    assert r.exit_code == 1
    assert "FAIL  McNemar counts b/c = recounted from the paired rows" in r.output
    assert "FAIL  comparisons.csv = recomputed from the predictions" in r.output


def test_setup_names_the_grid_searched_and_the_scaling_rule(tmp_path):
    grid = {"logreg": {"C": [1.0, 100.0]}, "knn": {"n_neighbors": [20, 5]}}
    config = {"tune": "grid", "tune_grid": grid, "heads": ["logreg"], "scaling": "BlockScaler"}
    run, _, _ = _run(tmp_path, config=config)
    text = rp.write_report(run, figures=False).read_text()
    assert "- tune_grid (the grid searched): logreg: C [1.0, 100.0]" in text
    assert "n_neighbors" not in text  # only the heads the run fitted
    assert "- scaling (every features set): BlockScaler" in text


def test_untuned_folds_and_tuning_notes_go_into_read_this_first(tmp_path):
    """An outer fold too small for its inner CV ran untuned: the report says so up front and no
    longer claims that every head was tuned inside each outer fold (issue 16.6)."""
    run, _, _ = _run(tmp_path, config={"tune": "grid", "tune_metric": "balanced_accuracy",
                                       "inner_cv": 3})  # fmt: skip
    rows = []
    for f in ("hybrid", "resnet50"):
        for fold in ("1", "2", "3", "test"):
            if fold == "2":
                rows.append(
                    {
                        "features": f,
                        "head": "logreg",
                        "fold": fold,
                        "params": "{}",
                        "inner_score": float("nan"),
                        "chosen": True,
                        "note": "untuned: CV fold 2's training side has 2 patient(s)",
                    }
                )
                continue
            for c in (0.1, 1.0):
                rows.append(
                    {
                        "features": f,
                        "head": "logreg",
                        "fold": fold,
                        "params": json.dumps({"C": c}),
                        "inner_score": 0.5,
                        "chosen": c == 1.0,
                        "note": "grid points dropped: n_neighbors 15" if c == 0.1 else "",
                    }
                )
    pd.DataFrame(rows).to_csv(run / "tuning.csv", index=False)  # fmt: skip
    text = rp.write_report(run, figures=False).read_text()
    opening = text[: text.index("## The answer")]
    assert "- Tuning: untuned folds: 2 features x head x fold fit(s)" in opening
    assert "CV fold 2's training side has 2 patient(s)" in opening
    assert "- Tuning: grid points dropped in 6 grid row(s)" in opening
    assert "every head tuned inside each outer fold" not in text
    assert "**except 2 fit(s) where the inner CV was impossible" in text
    assert "pruned" not in opening  # successive halving working as documented: not an event
    # without notes, the plain statement stays
    pd.DataFrame([r for r in rows if r["fold"] != "2"]).assign(note="").to_csv(
        run / "tuning.csv", index=False
    )
    text = rp.write_report(run, figures=False).read_text()
    assert "every head tuned inside each outer fold" in text and "- Tuning:" not in text


def test_no_figures_keeps_the_links_to_figures_that_exist(tmp_path):
    run, _, _ = _run(tmp_path)
    rp.write_report(run, figures=True, max_images=0)
    text = rp.write_report(run, figures=False).read_text()
    assert "![ROC, held-out test](figures/roc_test.png)" in text
    (run / "figures" / "roc_test.png").unlink()
    text = rp.write_report(run, figures=False).read_text()
    assert "roc_test.png" not in text and "figures/roc_cv.png" in text


def test_constant_predictions_are_flagged_and_never_counted(tmp_path):
    """svm-linear predicting 'normal' for every image (issue 20.4): flagged, out of the counts."""
    run, y, fold = _run(tmp_path, n_pat=90, signals={"hybrid": 2.0, "resnet50": 1.0},
                        heads=("logreg", "svm-linear"))  # fmt: skip
    pred = pd.read_csv(run / "predictions.csv", dtype={"fold": str})
    sel = pred["head"] == "svm-linear"
    pred.loc[sel, "y_pred"] = "normal"
    pred.loc[sel, ["p_normal", "p_benign", "p_malignant"]] = [0.5, 0.25, 0.25]
    pred.to_csv(run / "predictions.csv", index=False)
    text = rp.write_report(run, figures=False).read_text()
    lb = pd.read_csv(run / "leaderboard.csv", keep_default_na=False)
    flagged = lb[lb["constant_predictions"] != ""]
    assert set(flagged["head"]) == {"svm-linear"} and len(flagged) == 4
    opening = text[: text.index("## The answer")]
    assert "Warning: constant predictions: 4 result(s)" in opening
    comps = pd.read_csv(run / "comparisons.csv")
    svm = comps[comps["head"] == "svm-linear"]
    assert svm["p_holm"].isna().all() and svm["method"].str.contains("constant").all()
    answer = text[text.index("## The answer") : text.index("## Setup")]
    line = next(ln for ln in answer.splitlines() if ln.startswith("- Balanced accuracy, held-out"))
    assert "not tested in 1 of 2" in line
    assert all(c["ok"] for c in rp.verify(run))


def test_timm_weights_are_named_as_timm_not_torchvision():
    from featmammo.report.caveats import describe_weights

    said = describe_weights("imagenet:timm/convnext_tiny.in12k_ft_in1k", "0123456789abcdef")
    assert said == "pretrained (timm convnext_tiny.in12k_ft_in1k, sha256 0123456789ab)"
    assert describe_weights("imagenet:ResNet50_Weights.IMAGENET1K_V2", "ab" * 8).startswith(
        "imagenet (torchvision ResNet50_Weights"
    )
