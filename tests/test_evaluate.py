"""featmammo.evaluate: metrics against scikit-learn, cluster bootstrap, paired tests, baselines."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from featmammo import evaluate as ev

CLASSES = ("normal", "benign", "malignant")


def _predictions(rng, n=240, k=3, signal=1.0, rounding=1):
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + signal * np.eye(k)[y]
    logits = np.round(logits, rounding)  # ties in the scores exercise the tie handling
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return y, p, p.argmax(axis=1)


@pytest.mark.parametrize("k", [2, 3])
def test_metrics_match_sklearn(rng, k):
    classes = CLASSES[-k:]
    y, p, yp = _predictions(rng, k=k)
    names = np.asarray(classes, dtype=object)
    m = ev.compute_metrics(names[y], names[yp], p, classes, threshold=0.4)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, yp), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, yp), abs=1e-12)
    labels = list(range(k))
    for avg in ("macro", "weighted"):
        pr, rc, f1, _ = skm.precision_recall_fscore_support(
            y, yp, labels=labels, average=avg, zero_division=0
        )
        assert m[f"{avg}_precision"] == pytest.approx(pr, abs=1e-12)
        assert m[f"{avg}_recall"] == pytest.approx(rc, abs=1e-12)
        assert m[f"{avg}_f1"] == pytest.approx(f1, abs=1e-12)
    pr, rc, f1, sup = skm.precision_recall_fscore_support(y, yp, labels=labels, zero_division=0)
    for j, c in enumerate(classes):
        assert m["per_class"][c]["precision"] == pytest.approx(pr[j], abs=1e-12)
        assert m["per_class"][c]["recall"] == pytest.approx(rc[j], abs=1e-12)
        assert m["per_class"][c]["f1"] == pytest.approx(f1[j], abs=1e-12)
        assert m["per_class"][c]["support"] == sup[j]
    auc = skm.roc_auc_score(y, p[:, 1]) if k == 2 else skm.roc_auc_score(y, p, multi_class="ovr")
    assert m["roc_auc_ovr"] == pytest.approx(auc, abs=1e-12)
    pos = y == k - 1  # malignant is the last class in both schemes
    assert m["positive_class"] == "malignant"
    assert m["roc_auc_pos_vs_rest"] == pytest.approx(skm.roc_auc_score(pos, p[:, -1]), abs=1e-12)
    assert m["pr_auc_pos_vs_rest"] == pytest.approx(
        skm.average_precision_score(pos, p[:, -1]), abs=1e-12
    )
    # one decision rule (issue 8.7): sensitivity/specificity follow y_pred (argmax), as the
    # confusion matrix does; the threshold only makes the separately named operating point
    called = yp == k - 1
    assert m["sensitivity"] == pytest.approx(skm.recall_score(pos, called), abs=1e-12)
    assert m["specificity"] == pytest.approx(skm.recall_score(~pos, ~called), abs=1e-12)
    cm = np.asarray(m["confusion_matrix"])
    assert m["sensitivity"] == pytest.approx(cm[-1, -1] / cm[-1].sum(), abs=1e-12)
    thr = p[:, -1] >= 0.4
    assert m["sensitivity_at_threshold"] == pytest.approx(skm.recall_score(pos, thr), abs=1e-12)
    assert m["specificity_at_threshold"] == pytest.approx(skm.recall_score(~pos, ~thr), abs=1e-12)
    assert np.array_equal(m["confusion_matrix"], skm.confusion_matrix(y, yp, labels=labels))


def test_weighted_kernels_equal_repeated_rows(rng):
    """A bootstrap weight of 2 must equal duplicating the row (checked against sklearn)."""
    y, p, yp = _predictions(rng, n=80)
    w = rng.integers(0, 3, len(y))
    rep = np.repeat(np.arange(len(y)), w)
    names = np.asarray(CLASSES, dtype=object)
    prep = ev._Prepared(names[y], names[yp], p, CLASSES, 0.5, None)
    s = prep.scalars(w.astype(float))
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(y[rep], yp[rep]))
    assert s["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y[rep], yp[rep]))
    assert s["roc_auc_ovr"] == pytest.approx(skm.roc_auc_score(y[rep], p[rep], multi_class="ovr"))
    assert s["pr_auc_pos_vs_rest"] == pytest.approx(
        skm.average_precision_score(y[rep] == 2, p[rep, 2])
    )


def test_degenerate_inputs_give_nan_with_a_note():
    m = ev.compute_metrics(
        ["benign"] * 4, ["benign", "benign", "malignant", "benign"],
        np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), ("benign", "malignant"),
    )  # fmt: skip
    assert math.isnan(m["roc_auc_ovr"]) and math.isnan(m["roc_auc_pos_vs_rest"])
    assert math.isnan(m["sensitivity"]) and m["specificity"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.75)
    assert any("absent from y_true" in n for n in m["notes"])
    empty = ev.compute_metrics([], [], np.zeros((0, 2)), ("benign", "malignant"))
    assert empty["n_images"] == 0 and math.isnan(empty["accuracy"])
    assert empty["notes"] == ["no predictions"]
    ci = ev.bootstrap_metrics(
        ["benign"] * 4, ["benign"] * 4, np.tile([0.9, 0.1], (4, 1)), ("benign", "malignant"),
        ["a", "a", "b", "b"], n_boot=20,
    )  # fmt: skip
    assert math.isnan(ci["roc_auc_ovr"]["low"]) and ci["roc_auc_ovr"]["n_valid"] == 0
    with pytest.raises(ev.ConfigError, match="not one of the classes"):
        ev.compute_metrics(["cat"], ["benign"], np.array([[1.0, 0.0]]), ("benign", "malignant"))


def test_cluster_bootstrap_weights_are_per_patient(rng):
    groups = np.repeat([f"P{i}" for i in range(7)], [1, 2, 3, 4, 1, 5, 2])
    w = ev.cluster_bootstrap_weights(groups, 200, rng)
    assert w.shape == (200, len(groups))
    for g in np.unique(groups):
        cols = w[:, groups == g]
        assert (cols == cols[:, :1]).all()  # all images of a patient share the weight
    # the patient draws sum to the number of patients in every resample
    first = pd.Series(groups).drop_duplicates().index.to_numpy()
    assert (w[:, first].sum(axis=1) == 7).all()


def test_bootstrap_ci_contains_point_and_is_wider_when_clustered(rng):
    # 30 patients x 6 images; a patient is either all right or all wrong: images are not
    # independent, so an image-level bootstrap understates the uncertainty
    n_pat, per = 30, 6
    groups = np.repeat(np.arange(n_pat), per).astype(str)
    y = rng.integers(0, 2, n_pat * per)
    right = np.repeat(rng.random(n_pat) < 0.7, per)
    yp = np.where(right, y, 1 - y)
    p = np.column_stack([1 - yp * 0.8 - 0.1, yp * 0.8 + 0.1])
    names = np.array(["benign", "malignant"], dtype=object)
    args = (names[y], names[yp], p, ("benign", "malignant"))
    point = ev.compute_metrics(*args)["accuracy"]
    clustered = ev.bootstrap_metrics(*args, groups, n_boot=400, seed=1)["accuracy"]
    image_level = ev.bootstrap_metrics(*args, np.arange(len(y)).astype(str), n_boot=400, seed=1)
    assert clustered["low"] <= point <= clustered["high"]
    assert clustered["n_valid"] == 400
    width_c = clustered["high"] - clustered["low"]
    width_i = image_level["accuracy"]["high"] - image_level["accuracy"]["low"]
    assert width_c > 1.5 * width_i
    again = ev.bootstrap_metrics(*args, groups, n_boot=400, seed=1)["accuracy"]
    assert again == clustered  # seeded


def _frame(y, yp, p, features, groups, fold="test"):
    classes = CLASSES
    names = np.asarray(classes, dtype=object)
    df = pd.DataFrame(
        {
            "image_id": [f"i{i}" for i in range(len(y))],
            "patient_id": groups,
            "fold": fold,
            "features": features,
            "head": "logreg",
            "y_true": names[y],
            "y_pred": names[yp],
        }
    )
    for j, c in enumerate(classes):
        df[f"p_{c}"] = p[:, j]
    return df


def test_paired_comparison_identical_predictions_gives_p_one(rng):
    y, p, yp = _predictions(rng, n=90)
    groups = (np.arange(90) // 3).astype(str)
    a = _frame(y, yp, p, "hybrid", groups)
    b = _frame(y, yp, p, "resnet50", groups)
    out = ev.paired_comparison(a, b, CLASSES, n_boot=200, seed=0)
    for key in ev.PAIRED_METRICS:
        assert out[key]["diff"] == 0.0
        assert out[key]["p_value"] == pytest.approx(1.0)
        assert out[key]["ci_low"] == out[key]["ci_high"] == 0.0
    mc = out["mcnemar"]  # now the clustered McNemar (issue 8.7): patients are the clusters
    assert (mc["b"], mc["c"], mc["p_value"], mc["n_discordant_patients"]) == (0, 0, 1.0, 0)
    assert out["n_images"] == 90 and out["n_patients"] == 30


def test_paired_comparison_detects_a_clearly_better_model(rng):
    y, p, _ = _predictions(rng, n=300, signal=3.0)
    groups = (np.arange(300) // 2).astype(str)
    good = _frame(y, p.argmax(axis=1), p, "hybrid", groups)
    noise = rng.dirichlet(np.ones(3), size=300)
    bad = _frame(y, noise.argmax(axis=1), noise, "alexnet", groups)
    out = ev.paired_comparison(good, bad, CLASSES, n_boot=300, seed=0)
    assert out["balanced_accuracy"]["diff"] > 0.3
    assert out["balanced_accuracy"]["ci_low"] > 0
    assert out["balanced_accuracy"]["p_value"] < 0.01
    assert out["mcnemar"]["b"] > out["mcnemar"]["c"]
    assert out["mcnemar"]["p_value"] < 1e-6


def test_mcnemar_exact_known_tables():
    # b = 1, c = 6: p = 2 * (C(7,0) + C(7,1)) / 2**7 = 0.125
    a = [True] * 1 + [False] * 6 + [True] * 10
    b = [False] * 1 + [True] * 6 + [True] * 10
    assert ev.mcnemar_exact(a, b) == {"b": 1, "c": 6, "p_value": 0.125}
    assert ev.mcnemar_exact(b, a)["p_value"] == 0.125
    assert ev.binomial_two_sided(0, 0) == 1.0
    assert ev.binomial_two_sided(5, 10) == 1.0
    # b = 2, c = 12 -> 2 * sum_{i<=2} C(14, i) / 2**14
    assert ev.binomial_two_sided(2, 14) == pytest.approx(2 * (1 + 14 + 91) / 2**14)


def test_majority_baseline_uses_training_labels():
    out = ev.majority_baseline(
        ["benign"] * 5 + ["malignant"] * 2, ["malignant"] * 3 + ["benign"], CLASSES
    )
    assert out == {"majority_class": "benign", "majority_baseline": 0.25}
    tie = ev.majority_baseline(["malignant", "benign"], ["benign"], CLASSES)
    assert tie["majority_class"] == "benign"  # ties go to the first class of the scheme


def test_evaluate_predictions_leaderboard_and_baselines(rng):
    y, p, yp = _predictions(rng, n=120)
    groups = (np.arange(120) // 4).astype(str)
    fold = np.where(np.arange(120) < 90, (np.arange(120) // 4) % 3 + 1, 0).astype(str)
    fold[fold == "0"] = "test"
    frames = [_frame(y, yp, p, f, groups, fold) for f in ("hybrid", "resnet50")]
    lb, metrics = ev.evaluate_predictions(pd.concat(frames), CLASSES, n_boot=30, seed=0)
    assert len(lb) == 4
    assert set(zip(lb["features"], lb["evaluation"], strict=True)) == {
        ("hybrid", "cv"), ("hybrid", "test"), ("resnet50", "cv"), ("resnet50", "test"),
    }  # fmt: skip
    names = np.asarray(CLASSES, dtype=object)
    test = lb[(lb["features"] == "hybrid") & (lb["evaluation"] == "test")].iloc[0]
    train_majority = pd.Series(names[y[:90]]).value_counts().idxmax()
    assert test["majority_baseline"] == pytest.approx(np.mean(names[y[90:]] == train_majority))
    assert test["n_images"] == 30 and test["n_patients"] == 8
    # 8 test patients: fewer than 10 in some class, so no CI is given (issue 11.3)
    assert test["ci_note"].startswith("n/a (") and "< 10)" in test["ci_note"]
    assert np.isnan(test["accuracy_ci_low"]) and np.isnan(test["roc_auc_ovr_ci_high"])
    cv = lb[(lb["features"] == "hybrid") & (lb["evaluation"] == "cv")].iloc[0]
    assert cv["ci_note"] == "" and cv["min_patients_per_class"] >= 10
    for col in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr"):
        assert cv[f"{col}_ci_low"] <= cv[col] <= cv[f"{col}_ci_high"]
    expected = 0.0
    for k in "123":
        tr = names[y[:90]][fold[:90] != k]
        maj = pd.Series(tr).value_counts().idxmax()
        expected += np.sum(names[y[:90]][fold[:90] == k] == maj)
    assert cv["majority_baseline"] == pytest.approx(expected / 90)
    # hybrid vs resnet50 (the default pair): 2 metrics on cv, 2 + McNemar on test
    comps = metrics["comparisons"]
    assert {(c["features_a"], c["features_b"]) for c in comps} == {("hybrid", "resnet50")}
    assert sorted((c["evaluation"], c["metric"]) for c in comps) == [
        ("cv", "balanced_accuracy"), ("cv", "roc_auc_ovr"), ("test", "accuracy_mcnemar"),
        ("test", "balanced_accuracy"), ("test", "roc_auc_ovr"),
    ]  # fmt: skip
    assert set(lb["level"]) == {"image"} and {c["level"] for c in comps} == {"image"}
    cv_result = next(r for r in metrics["results"] if r["evaluation"] == "cv")
    assert [f["fold"] for f in cv_result["per_fold"]] == ["1", "2", "3"]


@pytest.mark.parametrize("rounding", [1, 6])  # heavy ties and (almost) none
def test_batched_bootstrap_kernels_equal_the_per_resample_ones(rng, rounding):
    y, p, yp = _predictions(rng, n=150, rounding=rounding)
    names = np.asarray(CLASSES, dtype=object)
    prep = ev._Prepared(names[y], names[yp], p, CLASSES, 0.3, None)
    W = ev.cluster_bootstrap_weights((np.arange(150) // 2).astype(str), 25, rng)
    W[0] = 0.0  # an empty resample: every metric undefined
    W[1] = (y == 0).astype(float)  # one class only: AUCs undefined, accuracy defined
    batch = prep.scalars_batch(W)
    for b in range(len(W)):
        one = prep.scalars(W[b])
        for m in ev.CI_METRICS:
            np.testing.assert_allclose(batch[m][b], one[m], atol=1e-12, err_msg=f"{m} row {b}")


def test_single_validation_fold_uses_recorded_train_counts(rng):
    """`featmammo train` writes one validation fold ("0") + test; its training part is not in the
    predictions, so the baselines come from the recorded training class counts."""
    y, p, yp = _predictions(rng, n=60)
    fold = np.where(np.arange(60) < 30, "0", "test")
    df = _frame(y, yp, p, "hybridnet", (np.arange(60) // 2).astype(str), fold)
    counts = {"normal": 5, "benign": 50, "malignant": 7}
    lb, _ = ev.evaluate_predictions(df, CLASSES, n_boot=0, train_counts=counts)
    names = np.asarray(CLASSES, dtype=object)
    for evaluation, part in (("cv", slice(0, 30)), ("test", slice(30, 60))):
        row = lb[lb["evaluation"] == evaluation].iloc[0]
        assert row["majority_class"] == "benign"
        assert row["majority_baseline"] == pytest.approx(np.mean(names[y[part]] == "benign"))
    lb, _ = ev.evaluate_predictions(df, CLASSES, n_boot=0)
    assert np.isnan(lb.loc[lb["evaluation"] == "cv", "majority_baseline"].iloc[0])


def test_clustered_mcnemar_reduces_to_mcnemar_and_widens_with_clusters():
    # one image per patient: the usual McNemar chi-square (no continuity correction)
    a = np.array([True] * 3 + [False] * 12 + [True] * 20)
    b = np.array([False] * 3 + [True] * 12 + [True] * 20)
    one = ev.mcnemar_clustered(a, b, np.arange(35).astype(str))
    assert one["statistic"] == pytest.approx((3 - 12) ** 2 / (3 + 12))
    assert one["p_value"] == pytest.approx(math.erfc(math.sqrt(81 / 15 / 2)))
    # the same images, discordances concentrated in three patients: far less evidence
    groups = np.array(["P1"] * 5 + ["P2"] * 5 + ["P3"] * 5 + [f"Q{i}" for i in range(20)])
    clustered = ev.mcnemar_clustered(a, b, groups)
    assert (clustered["b"], clustered["c"], clustered["n_discordant_patients"]) == (3, 12, 3)
    assert clustered["p_value"] > one["p_value"] * 5
    same = ev.mcnemar_clustered(a, a, groups)
    assert same["p_value"] == 1.0 and same["statistic"] == 0.0


def test_holm_adjust_known_values():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (running max), 0.5
    got = ev.holm_adjust([0.03, 0.5, 0.01, 0.02])
    np.testing.assert_allclose(got, [0.06, 0.5, 0.04, 0.06])
    got = ev.holm_adjust([0.4, math.nan, 0.6])  # NaN is not a test: m = 2
    assert got[0] == pytest.approx(0.8) and math.isnan(got[1]) and got[2] == pytest.approx(0.8)
    assert ev.holm_adjust([]) == []


def test_ci_note_names_the_smallest_class():
    counts = ev.patients_per_class(
        ["benign", "benign", "malignant", "benign"],
        ["P1", "P1", "P2", "P3"],
        ("benign", "malignant"),
    )
    assert counts == {"benign": 2, "malignant": 1}
    assert ev.ci_note(counts) == "n/a (1 patient in class malignant < 10)"
    assert ev.ci_note(counts, minimum=1) == ""


def test_validation_rows_are_labelled_unranked_and_not_compared(rng):
    """HybridNet early-stopping rows (fold 'validation') are their own evaluation: optimistic,
    unranked, out of the comparisons, baseline from the training counts (not their labels)."""
    y, p, yp = _predictions(rng, n=240)
    groups = (np.arange(240) // 2).astype(str)
    fold = np.where(np.arange(240) < 120, "validation", "test")
    frames = [_frame(y, yp, p, f, groups, fold) for f in ("hybrid", "resnet50")]
    counts = {"normal": 3, "benign": 2, "malignant": 40}  # malignant: not the validation majority
    lb, metrics = ev.evaluate_predictions(
        pd.concat(frames), CLASSES, n_boot=20, train_counts=counts
    )
    assert set(lb["evaluation"]) == {"validation", "test"} and "cv" not in set(lb["evaluation"])
    val = lb[lb["evaluation"] == "validation"]
    assert val["optimistic"].all() and val["rank"].isna().all()
    assert list(lb["evaluation"]) == ["test", "test", "validation", "validation"]
    # ranks come from CV only: a run without CV ranks nothing (never by the test score)
    assert lb["rank"].isna().all()
    names = np.asarray(CLASSES, dtype=object)
    for _, row in lb.iterrows():
        part = slice(0, 120) if row["evaluation"] == "validation" else slice(120, 240)
        assert row["majority_class"] == "malignant"
        assert row["majority_baseline"] == pytest.approx(np.mean(names[y[part]] == "malignant"))
    assert {c["evaluation"] for c in metrics["comparisons"]} == {"test"}
    # without recorded counts: NaN, and the reason says so (never the validation labels)
    lb, metrics = ev.evaluate_predictions(pd.concat(frames), CLASSES, n_boot=0)
    res = next(r for r in metrics["results"] if r["evaluation"] == "validation")
    assert math.isnan(res["majority_baseline"]) and "train_class_counts" in res["majority_source"]


def test_optimistic_features_and_holm_adjusted_comparisons(rng):
    y, p, yp = _predictions(rng, n=240, signal=2.0)
    groups = (np.arange(240) // 2).astype(str)
    fold = np.where(np.arange(240) < 160, (np.arange(240) // 2) % 2 + 1, 0).astype(str)
    fold[fold == "0"] = "test"
    noise = rng.dirichlet(np.ones(3), size=240)
    frames = [
        _frame(y, yp, p, "hybrid", groups, fold),
        _frame(y, noise.argmax(1), noise, "resnet50", groups, fold),
        _frame(y, noise.argmax(1), noise, "alexnet", groups, fold),
    ]
    lb, metrics = ev.evaluate_predictions(
        pd.concat(frames), CLASSES, n_boot=50, optimistic_features=["hybrid"]
    )
    assert lb.loc[lb["features"] == "hybrid", "optimistic"].all()
    assert not lb.loc[lb["features"] != "hybrid", "optimistic"].any()
    # optimistic rows are never ranked; the others rank by CV, and test rows carry that rank
    assert lb.loc[lb["features"] == "hybrid", "rank"].isna().all()
    test = lb[lb["evaluation"] == "test"]
    assert test.loc[test["features"] != "hybrid", "rank"].tolist() == [1, 1]  # tied on CV
    comps = [c for c in metrics["comparisons"] if c["evaluation"] == "test"]
    assert {c["features_a"] for c in comps} == {"hybrid"} and len(comps) == 2 * 3
    # optimistic comparisons are computed but never tested (no Holm family, never counted)
    assert all(math.isnan(c["p_holm"]) and "optimistic" in c["method"] for c in comps)
    assert all(not math.isnan(c["p_raw"]) for c in comps)
    # without the optimistic flag they form the Holm families
    lb, metrics = ev.evaluate_predictions(pd.concat(frames), CLASSES, n_boot=50)
    comps = [c for c in metrics["comparisons"] if c["evaluation"] == "test"]
    main = [c for c in comps if c["metric"] != "accuracy_mcnemar"]
    np.testing.assert_allclose([c["p_holm"] for c in main],
                               ev.holm_adjust([c["p_raw"] for c in main]))  # fmt: skip
    assert all(c["p_holm"] >= c["p_raw"] for c in comps)


def test_bootstrap_metrics_withholds_cis_below_the_patient_minimum(rng):
    """The public bootstrap (for benchmarks/train_hybrid.py) applies the same rule on request."""
    y, p, yp = _predictions(rng, n=40)
    names = np.asarray(CLASSES, dtype=object)
    groups = (np.arange(40) // 4).astype(str)  # 10 patients: fewer than 10 in every class
    out = ev.bootstrap_metrics(
        names[y], names[yp], p, CLASSES, groups, n_boot=50, min_patients_per_class=10
    )
    assert math.isnan(out["accuracy"]["low"]) and out["accuracy"]["note"].startswith("n/a (")
    out = ev.bootstrap_metrics(names[y], names[yp], p, CLASSES, groups, n_boot=50)
    assert out["accuracy"]["low"] <= out["accuracy"]["high"] and "note" not in out["accuracy"]
