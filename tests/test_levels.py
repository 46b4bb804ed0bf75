"""Breast and exam level (issue 16 item 8) and fit --compare / --level end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_fit_cli import _cli, write_two_backbones

from featmammo import evaluate as ev
from featmammo import report as rp
from featmammo import store
from featmammo.errors import ConfigError

CLASSES = ["normal", "benign", "malignant"]


def _images():
    """P1: left CC/MLO (normal, benign), right CC/MLO (normal, malignant); P2: one left view and
    one view without laterality; P3 two exams."""
    rows = [
        ("a", "P1", "E1", "L", "1", "normal", [0.5, 0.3, 0.2]),
        ("b", "P1", "E1", "L", "1", "benign", [0.2, 0.5, 0.3]),
        ("c", "P1", "E1", "R", "1", "normal", [0.6, 0.2, 0.2]),
        ("d", "P1", "E1", "R", "1", "malignant", [0.1, 0.2, 0.7]),
        ("e", "P2", "E2", "L", "test", "benign", [0.3, 0.4, 0.3]),
        ("f", "P2", "E2", "", "test", "normal", [0.3, 0.4, 0.3]),
        ("g", "P3", "E3", "L", "2", "normal", [0.8, 0.1, 0.1]),
        ("h", "P3", "E4", "L", "2", "normal", [0.4, 0.1, 0.5]),
    ]
    df = pd.DataFrame(
        [
            {"image_id": i, "patient_id": p, "exam_id": e, "laterality": lat, "fold": fold,
             "features": "f", "head": "h", "y_true": y,
             **{f"p_{c}": v for c, v in zip(CLASSES, probs, strict=True)}}
            for i, p, e, lat, fold, y, probs in rows
        ]
    )  # fmt: skip
    df["y_pred"] = np.asarray(CLASSES, dtype=object)[df[[f"p_{c}" for c in CLASSES]].to_numpy()
                                                     .argmax(axis=1)]  # fmt: skip
    return df


def test_breast_is_the_mean_of_its_views_and_labels_take_the_most_severe():
    b = ev.aggregate_predictions(_images(), CLASSES, "breast").set_index(
        ["patient_id", "exam_id", "laterality"]
    )
    assert list(ev.aggregate_predictions(_images(), CLASSES, "breast").columns) == [
        "patient_id", "exam_id", "laterality", "evaluation", "fold", "features", "head",
        "y_true", "y_pred", "p_normal", "p_benign", "p_malignant", "n_views",
    ]  # fmt: skip
    left = b.loc[("P1", "E1", "L")]
    assert left["p_normal"] == pytest.approx(0.35) and left["p_malignant"] == pytest.approx(0.25)
    assert left["y_true"] == "benign" and left["n_views"] == 2 and left["evaluation"] == "cv"
    right = b.loc[("P1", "E1", "R")]
    assert right["y_true"] == "malignant" and right["p_malignant"] == pytest.approx(0.45)
    assert right["y_pred"] == "malignant"  # argmax of (0.35, 0.2, 0.45)
    # the view without laterality belongs to no breast
    assert b.loc[("P2", "E2", "L")]["n_views"] == 1 and len(b) == 5
    assert ev.levels.dropped_without_laterality(_images()) == 1


def test_max_takes_the_most_suspicious_view_and_the_exam_its_highest_breast():
    b = ev.aggregate_predictions(_images(), CLASSES, "breast", aggregate="max")
    left = b[(b["patient_id"] == "P1") & (b["laterality"] == "L")].iloc[0]
    assert (left["p_normal"], left["p_benign"], left["p_malignant"]) == (0.2, 0.5, 0.3)
    e = ev.aggregate_predictions(_images(), CLASSES, "exam").set_index(["patient_id", "exam_id"])
    p1 = e.loc[("P1", "E1")]
    # breasts: L (0.35, 0.4, 0.25), R (0.35, 0.2, 0.45): the exam takes R (highest P(malignant))
    assert p1["p_malignant"] == pytest.approx(0.45) and p1["p_benign"] == pytest.approx(0.2)
    assert p1["y_true"] == "malignant" and p1["n_views"] == 4
    assert "laterality" not in e.columns and len(e) == 4  # P3 has two exams


def test_exam_ids_default_to_the_patient_and_levels_are_validated():
    meta = pd.DataFrame({"patient_id": ["P1", "P2"], "laterality": ["l", "X"]})
    keys = ev.levels.level_keys_for(meta)
    assert keys["exam_id"].tolist() == ["P1", "P2"] and keys["laterality"].tolist() == ["L", ""]
    assert "no exam_id" in ev.levels.exam_note(meta)
    assert ev.default_levels(meta) == ["image"]
    assert ev.default_levels(meta.assign(exam_id=["E1", ""])) == ["image", "breast", "exam"]
    assert ev.parse_levels(["exam", "image", "exam"]) == ["image", "exam"]
    with pytest.raises(ConfigError, match="image, breast or exam"):
        ev.parse_levels(["patient"])


def _screening_store(path):
    """40 patients x 2 sides x (CC, MLO), one exam each; test split: patients 30-39."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(40):
        for lat in "LR":
            label = CLASSES[p % 3] if lat == "L" else "normal"
            for v in ("CC", "MLO"):
                rows.append({"image_id": f"P{p:02d}_{lat}_{v}", "label": label,
                             "patient_id": f"P{p:02d}", "exam_id": f"E{p:02d}",
                             "laterality": lat, "view": v, "split": "test" if p >= 30 else "train",
                             "source": "s", "path": ""})  # fmt: skip
    return write_two_backbones(path, pd.DataFrame(rows), rng)


@pytest.fixture(scope="module")
def level_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("levels")
    st = _screening_store(d / "s.h5")
    run = d / "run"
    r = _cli(["fit", st, "-o", run, "--head", "logreg", "--cv", "3", "--n-boot", "40",
              "--tune", "none", "--no-figures", "--compare", "resnet50:alexnet",
              "--at-specificity", "0.9", "--at-specificity", "0.8"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return st, run


def test_fit_evaluates_images_breasts_and_exams_by_default(level_run):
    _, run = level_run
    config = json.loads((run / "config.json").read_text())
    assert config["levels"] == ["image", "breast", "exam"] and config["aggregate"] == "mean"
    pred = pd.read_csv(run / "predictions.csv")
    assert {"exam_id", "laterality"} <= set(pred.columns)
    breast = pd.read_csv(run / "predictions_breast.csv")
    exam = pd.read_csv(run / "predictions_exam.csv")
    assert list(breast.columns[:3]) == ["patient_id", "exam_id", "laterality"]
    assert "n_views" in breast.columns and "laterality" not in exam.columns
    assert len(breast) == 3 * 80 and len(exam) == 3 * 40 and (breast["n_views"] == 2).all()
    lb = pd.read_csv(run / "leaderboard.csv")
    assert set(lb["level"]) == {"image", "breast", "exam"}
    for col in ("sens_at_spec_0.90", "sens_at_spec_0.80", "pauc_0.10", "pf1",
                "pauc_0.10_ci_low", "pf1_ci_high"):  # fmt: skip
        assert col in lb.columns, col
    cv_breast = lb[(lb["level"] == "breast") & (lb["evaluation"] == "cv")]
    assert cv_breast["balanced_accuracy_ci_low"].notna().all()  # patients resampled: 10/class
    metrics = json.loads((run / "metrics.json").read_text())
    assert {r["level"] for r in metrics["results"]} == {"image", "breast", "exam"}
    comps = pd.read_csv(run / "comparisons.csv")
    assert set(comps["level"]) == {"image", "breast", "exam"}
    assert set(zip(comps["features_a"], comps["features_b"], strict=True)) == {
        ("resnet50", "alexnet")
    }
    assert all(c["ok"] for c in rp.verify(run)), [c for c in rp.verify(run) if not c["ok"]]


def test_verify_fails_on_an_edited_breast_file_or_comparison(level_run, tmp_path):
    import shutil

    _, src = level_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    breast = pd.read_csv(run / "predictions_breast.csv", dtype=str, keep_default_na=False)
    breast.loc[0, "p_malignant"] = "0.999"
    breast.to_csv(run / "predictions_breast.csv", index=False)
    failed = [c["check"] for c in rp.verify(run) if not c["ok"]]
    assert failed == ["predictions_breast.csv = derived from predictions.csv"]
    shutil.copy(src / "predictions_breast.csv", run / "predictions_breast.csv")
    comps = pd.read_csv(run / "comparisons.csv")
    comps.loc[comps["level"] == "exam", "diff"] += 0.01
    comps.to_csv(run / "comparisons.csv", index=False)
    failed = [c["check"] for c in rp.verify(run) if not c["ok"]]
    assert len(failed) == 3 and failed[0].startswith("comparisons.csv = recomputed")
    assert failed[1] == "comparisons in metrics.json = comparisons.csv"
    assert failed[2].startswith("comparison differences = recounted")


def test_compare_refuses_unknown_features_and_level_without_laterality(level_run, tmp_path):
    st, _ = level_run
    r = _cli(["fit", st, "-o", tmp_path / "r", "--compare", "resnet50:vgg16", "--tune", "none",
              "--n-boot", "0", "--no-figures"])  # fmt: skip
    assert r.exit_code != 0 and "vgg16" in str(r.exception) + r.output
    from test_fit_cli import _write_store

    plain = _write_store(tmp_path / "plain.h5")
    meta = store.open(plain).meta
    assert "exam_id" not in meta.columns  # laterality only: image level by default
    r = _cli(["fit", plain, "-o", tmp_path / "r2", "--head", "logreg", "--cv", "2", "--tune",
              "none", "--n-boot", "0", "--no-figures", "--level", "exam"])  # fmt: skip
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "r2" / "config.json").read_text())
    assert config["levels"] == ["image", "exam"]
    assert any("each patient counts as one exam" in n for n in config["notes"])
    exam = pd.read_csv(tmp_path / "r2" / "predictions_exam.csv", dtype=str)
    assert (exam["exam_id"] == exam["patient_id"]).all()
