"""featmammo.evaluate.comparisons: the comparisons.csv table (issue 16 items 1-4, 9; 20.4)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm

from featmammo.errors import ConfigError
from featmammo.evaluate import comparisons as cmp

CLASSES = ["normal", "benign", "malignant"]


def _frame(rng, signals=(("hybrid", 2.0), ("resnet50", 1.0), ("alexnet", 1.0)),
           heads=("logreg",), n_pat=90, per=2, n_test=20, k=5):  # fmt: skip
    y = np.random.default_rng(11).integers(0, 3, n_pat)
    rows = []
    for f, sig in signals:
        for h in heads:
            for p in range(n_pat):
                for v in range(per):
                    lg = rng.normal(size=3) + sig * np.eye(3)[y[p]]
                    pr = np.exp(lg) / np.exp(lg).sum()
                    rows.append({
                        "image_id": f"i{p}_{v}", "patient_id": f"P{p}",
                        "fold": "test" if p >= n_pat - n_test else str(p % k + 1),
                        "features": f, "head": h, "y_true": CLASSES[y[p]],
                        "y_pred": CLASSES[int(pr.argmax())],
                        **{f"p_{c}": pr[j] for j, c in enumerate(CLASSES)},
                    })  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture()
def frame():
    return _frame(np.random.default_rng(0))


def test_columns_are_the_contract_and_diff_is_a_minus_b(frame):
    out = cmp.compare_predictions(frame, [("hybrid", "resnet50")], CLASSES, n_boot=200,
                                  min_patients_per_class=3)  # fmt: skip
    assert tuple(out.columns) == cmp.COMPARISON_COLUMNS == (
        "evaluation", "level", "head", "features_a", "features_b", "metric", "n_images",
        "n_patients", "diff", "ci_low", "ci_high", "p_raw", "p_holm", "method",
    )  # fmt: skip
    test = frame[frame["fold"] == "test"]
    a, b = (test[test["features"] == f].sort_values("image_id") for f in ("hybrid", "resnet50"))
    row = out[(out["evaluation"] == "test") & (out["metric"] == "balanced_accuracy")].iloc[0]
    want = skm.balanced_accuracy_score(a["y_true"], a["y_pred"]) - skm.balanced_accuracy_score(
        b["y_true"], b["y_pred"]
    )
    assert row["diff"] == pytest.approx(want, abs=1e-12)
    assert row["n_images"] == len(a) and row["n_patients"] == a["patient_id"].nunique()
    assert set(out["metric"]) == {"balanced_accuracy", "roc_auc_ovr", "accuracy_mcnemar"}
    # McNemar only on test rows; CV rows use the corrected resampled t
    assert set(out.loc[out["metric"] == "accuracy_mcnemar", "evaluation"]) == {"test"}
    assert out.loc[out["evaluation"] == "cv", "method"].str.contains("Nadeau-Bengio").all()


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_cv_rows_are_the_corrected_resampled_t_by_hand(frame):
    out = cmp.compare_predictions(frame, [("hybrid", "resnet50")], CLASSES,
                                  min_patients_per_class=3)  # fmt: skip
    cv = frame[frame["fold"] != "test"]
    diffs, ratios = [], []
    n_all = cv["patient_id"].nunique()
    for _, part in cv.groupby("fold"):
        a = part[part["features"] == "hybrid"].sort_values("image_id")
        b = part[part["features"] == "resnet50"].sort_values("image_id")
        diffs.append(skm.balanced_accuracy_score(a["y_true"], a["y_pred"])
                     - skm.balanced_accuracy_score(b["y_true"], b["y_pred"]))  # fmt: skip
        n_te = a["patient_id"].nunique()
        ratios.append(n_te / (n_all - n_te))
    d = np.asarray(diffs)
    se = math.sqrt((1 / len(d) + np.mean(ratios)) * d.var(ddof=1))
    t = d.mean() / se
    row = out[(out["evaluation"] == "cv") & (out["metric"] == "balanced_accuracy")].iloc[0]
    assert row["diff"] == pytest.approx(d.mean(), abs=1e-12)
    assert row["p_raw"] == pytest.approx(2 * stats.t.sf(abs(t), len(d) - 1), rel=1e-9)
    half = stats.t.ppf(0.975, len(d) - 1) * se
    assert row["ci_low"] == pytest.approx(d.mean() - half, abs=1e-12)
    assert row["ci_high"] == pytest.approx(d.mean() + half, abs=1e-12)


def test_interval_excludes_zero_exactly_when_raw_p_is_below_005(frame):
    out = cmp.compare_predictions(frame, cmp.default_pairs(["resnet50", "alexnet", "hybrid"]),
                                  CLASSES, n_boot=300, min_patients_per_class=3)  # fmt: skip
    main = out[out["metric"] != "accuracy_mcnemar"]
    excludes = (main["ci_low"] > 0) | (main["ci_high"] < 0)
    assert (excludes == (main["p_raw"] < 0.05)).all()


def test_holm_families_keep_mcnemar_apart(frame):
    out = cmp.compare_predictions(frame, [("hybrid", "resnet50"), ("hybrid", "alexnet")],
                                  CLASSES, n_boot=200, min_patients_per_class=3)  # fmt: skip
    for evaluation in ("cv", "test"):
        e = out[out["evaluation"] == evaluation]
        main = e[e["metric"].isin(cmp.MAIN_METRICS)]
        np.testing.assert_allclose(main["p_holm"], cmp.holm_adjust(main["p_raw"].tolist()))
        mc = e[e["metric"] == cmp.MCNEMAR_METRIC]
        if len(mc):
            np.testing.assert_allclose(mc["p_holm"], cmp.holm_adjust(mc["p_raw"].tolist()))
            assert mc["method"].str.contains(r"b=\d+ \(only A right\), c=\d+").all()
    # a family of 4 (2 pairs x 2 metrics), not 6 (McNemar in it)
    main = out[(out["evaluation"] == "test") & out["metric"].isin(cmp.MAIN_METRICS)]
    assert main["p_holm"].min() == pytest.approx(min(1.0, 4 * main["p_raw"].min()))


def test_any_two_features_sets_and_names_with_colons():
    feats = ["resnet50", "hybrid:runs/a/checkpoint.pt", "resnet50+hybrid:runs/a/checkpoint.pt"]
    assert cmp.parse_pair("resnet50:hybrid:runs/a/checkpoint.pt", feats) == (
        "resnet50", "hybrid:runs/a/checkpoint.pt",
    )  # fmt: skip
    assert cmp.default_pairs(feats) == [
        ("resnet50+hybrid:runs/a/checkpoint.pt", "resnet50"),
        ("resnet50+hybrid:runs/a/checkpoint.pt", "hybrid:runs/a/checkpoint.pt"),
    ]
    with pytest.raises(ConfigError, match="both be features sets"):
        cmp.parse_pair("resnet50:vgg16", feats)
    with pytest.raises(ConfigError, match="itself"):
        cmp.parse_pair("resnet50:resnet50", feats)
    assert cmp.resolve_pairs(["resnet50:hybrid:runs/a/checkpoint.pt"], feats) == [
        ("resnet50", "hybrid:runs/a/checkpoint.pt")
    ]
    assert cmp.default_pairs(["resnet50", "alexnet"]) == []


def test_two_backbones_without_a_hybrid_can_be_compared(frame):
    out = cmp.compare_predictions(frame, [("alexnet", "resnet50")], CLASSES, n_boot=100,
                                  min_patients_per_class=3)  # fmt: skip
    assert set(out["features_a"]) == {"alexnet"} and len(out) == 5


def test_constant_and_optimistic_sides_stay_out_of_the_family(frame):
    f = frame.copy()
    sel = f["features"] == "alexnet"
    f.loc[sel, "y_pred"] = "normal"
    f.loc[sel, [f"p_{c}" for c in CLASSES]] = [0.5, 0.3, 0.2]
    out = cmp.compare_predictions(f, [("hybrid", "resnet50"), ("hybrid", "alexnet")], CLASSES,
                                  n_boot=100, min_patients_per_class=3)  # fmt: skip
    const = out[out["features_b"] == "alexnet"]
    assert const["p_holm"].isna().all()
    assert const["method"].str.contains("constant").all()
    kept = out[(out["features_b"] == "resnet50") & (out["metric"] != "accuracy_mcnemar")]
    for _, e in kept.groupby("evaluation"):  # the family is the resnet50 rows alone
        np.testing.assert_allclose(e["p_holm"], cmp.holm_adjust(e["p_raw"].tolist()))
    out = cmp.compare_predictions(
        frame,
        [("hybrid", "resnet50")],
        CLASSES,
        n_boot=100,
        min_patients_per_class=3,
        optimistic_features=["hybrid"],
    )
    assert out["p_holm"].isna().all() and out["method"].str.contains("optimistic").all()


def test_nearly_constant_is_defined():
    assert cmp.constant_reason(["a"] * 50).startswith("constant predictions")
    assert cmp.constant_reason(["a"] * 199 + ["b"]).startswith("nearly constant")
    assert cmp.constant_reason(["a"] * 196 + ["b"] * 4) == ""  # 2% differ: a real predictor
    assert cmp.constant_reason(["a"] * 9 + ["b"]) == ""  # too few units to call it
    assert cmp.constant_reason(["a", "b"], [[0.3, 0.7], [0.3, 0.7]]).startswith("constant scores")


def test_too_few_patients_gives_no_p(frame):
    out = cmp.compare_predictions(frame, [("hybrid", "resnet50")], CLASSES, n_boot=100)
    test = out[out["evaluation"] == "test"]  # 20 test patients: < 10 in some class
    assert test["p_raw"].isna().all() and test["p_holm"].isna().all()
    assert test["diff"].notna().all()
    assert test["method"].str.contains("not tested").all()


def test_verify_finds_every_edit(frame):
    out = cmp.compare_predictions(frame, [("hybrid", "resnet50")], CLASSES, n_boot=100,
                                  min_patients_per_class=3)  # fmt: skip
    assert cmp.verify_comparisons(out, out.copy()) == []
    for col, value in (("diff", 0.5), ("p_holm", 0.001), ("n_patients", 3)):
        bad = out.copy()
        bad.loc[0, col] = value
        assert any(col in p for p in cmp.verify_comparisons(bad, out))
    bad = out.copy()
    i = bad.index[bad["metric"] == "accuracy_mcnemar"][0]
    bad.loc[i, "method"] = bad.loc[i, "method"].replace("b=", "b=9")
    assert any("counts" in p for p in cmp.verify_comparisons(bad, out))
    assert any("missing" in p for p in cmp.verify_comparisons(out.iloc[1:], out))


def test_repeats_enter_the_corrected_t(frame):
    rng = np.random.default_rng(5)
    again = _frame(rng)
    cv1 = frame[frame["fold"] != "test"].assign(repeat=1)
    cv2 = again[again["fold"] != "test"].assign(repeat=2)
    both = pd.concat([cv1, cv2, frame[frame["fold"] == "test"].assign(repeat=1)])
    out = cmp.compare_predictions(both, [("hybrid", "resnet50")], CLASSES, n_boot=50,
                                  min_patients_per_class=3)  # fmt: skip
    cv = out[out["evaluation"] == "cv"].iloc[0]
    assert "10 folds x 2 repeat(s)" in cv["method"] and "df 9" in cv["method"]
    test = out[(out["evaluation"] == "test") & (out["metric"] == "balanced_accuracy")].iloc[0]
    assert test["n_images"] == 40


def test_mcnemar_needs_15_patients_per_class():
    """At 10 patients per class the clustered McNemar rejects a true null 6.8% of the time
    (benchmarks/null_calibration.py): below 15 it is not tested while the bootstrap rows are."""
    for n_test, tested in ((54, False), (75, True)):
        f = _frame(np.random.default_rng(1), n_pat=150, n_test=n_test)
        test = f[(f["fold"] == "test") & (f["features"] == "hybrid")]
        smallest = test.drop_duplicates("patient_id")["y_true"].value_counts().min()
        assert (smallest >= 15) == tested and smallest >= 10
        out = cmp.compare_predictions(f, [("hybrid", "resnet50")], CLASSES, n_boot=50)
        t = out[out["evaluation"] == "test"]
        mc = t[t["metric"] == "accuracy_mcnemar"].iloc[0]
        assert np.isnan(mc["p_raw"]) != tested
        assert ("needs 15 patients per class" in mc["method"]) != tested
        assert t.loc[t["metric"] != "accuracy_mcnemar", "p_raw"].notna().all()


def test_fit_cv_repeats_feed_the_corrected_t(tmp_path):
    """fit --cv-repeats 3: repeat 1 is predictions.csv unchanged, repeats 2-3 (new folds, CV rows
    only) are predictions_repeats.csv, and the CV comparisons run over 3 x 3 folds (issue 16.2)."""
    import json

    from test_fit_cli import _cli, _write_store

    from featmammo import report as rp

    st = _write_store(tmp_path / "s.h5")
    args = ["fit", st, "--head", "logreg", "--cv", "3", "--tune", "grid", "--tune-grid",
            "small", "--inner-cv", "2", "--n-boot", "20", "--no-figures"]  # fmt: skip
    assert _cli([*args, "-o", tmp_path / "one"]).exit_code == 0
    r = _cli([*args, "-o", tmp_path / "three", "--cv-repeats", "3"])
    assert r.exit_code == 0, r.output
    one, three = tmp_path / "one", tmp_path / "three"
    assert (one / "predictions.csv").read_text() == (three / "predictions.csv").read_text()
    assert not (one / "predictions_repeats.csv").exists()
    rep = pd.read_csv(three / "predictions_repeats.csv", dtype={"fold": str})
    assert set(rep["repeat"]) == {2, 3} and "test" not in set(rep["fold"])
    for _, g in rep.groupby(["features", "repeat"]):
        assert g["image_id"].is_unique and len(g) == 45  # every training image once per repeat
    first = pd.read_csv(one / "predictions.csv", dtype={"fold": str})
    r2 = rep[(rep["repeat"] == 2) & (rep["features"] == "hybrid")].set_index("image_id")["fold"]
    r1 = first[(first["features"] == "hybrid") & (first["fold"] != "test")]
    assert (r1.set_index("image_id")["fold"] != r2.loc[r1["image_id"]]).any()  # new folds
    comps = pd.read_csv(three / "comparisons.csv")
    cv = comps[comps["evaluation"] == "cv"]
    assert cv["method"].str.contains("9 folds x 3 repeat").all()
    tuning = pd.read_csv(three / "tuning.csv", dtype=str)
    assert {"r2.1", "r3.3", "1", "test"} <= set(tuning["fold"])
    cfg3 = json.loads((three / "config.json").read_text())
    assert cfg3["cv_repeats"] == 3
    # a set this small (a handful of patients per class): repeats run hot, the run says so
    assert any(n.startswith("--cv-repeats 3: the CV's smallest class has") for n in cfg3["notes"])
    cfg1 = json.loads((one / "config.json").read_text())
    assert not any("--cv-repeats" in n for n in cfg1["notes"])
    assert all(c["ok"] for c in rp.verify(three)), [c for c in rp.verify(three) if not c["ok"]]
    bad = pd.read_csv(three / "predictions_repeats.csv")
    bad.loc[bad.index[:10], "y_pred"] = "malignant"
    bad.to_csv(three / "predictions_repeats.csv", index=False)
    assert any(not c["ok"] for c in rp.verify(three))  # the repeats enter the verification
    r = _cli(["fit", st, "-o", tmp_path / "x", "--cv", "0", "--cv-repeats", "2"])
    assert r.exit_code != 0 and "--cv-repeats 2" in str(r.exception) + r.output
