"""Leakage audit and consistency checks, recomputed from predictions.csv.

:func:`consistency_checks` recomputes every figure a second way with scikit-learn (no shared kernel
with featmammo.evaluate) and compares it with metrics.json and leaderboard.csv; :func:`verify` runs
it on the files as re-read from a run folder.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .. import evaluate as ev
from ..errors import ConfigError
from .files import LEADERBOARD, METRICS, PREDICTIONS, read_config, read_tuning

TOL = 1e-9


# --------------------------------------------------------------------------------------------------
# audit and consistency, recomputed from predictions


def _training_mask(fold: pd.Series) -> pd.Series:
    return fold.astype(str).map(ev.evaluation_of) != "test"


def fold_audit(predictions: pd.DataFrame) -> list[dict]:
    """Patients shared between CV folds and between the training part and the test rows.

    Computed per features x head from the ``fold`` and ``patient_id`` columns of predictions.csv.
    The training part is every row that is not ``test``: CV folds and HybridNet ``validation``
    rows (the validation patients steered training through early stopping).
    """
    out = []
    for (features, head), g in predictions.groupby(["features", "head"], sort=False):
        evaluation = g["fold"].astype(str).map(ev.evaluation_of)
        cv = g[evaluation == "cv"]
        train = g[evaluation != "test"]
        test = g[evaluation == "test"]
        folds_per_patient = train.groupby("patient_id")["fold"].nunique()
        across = sorted(folds_per_patient[folds_per_patient > 1].index.astype(str))
        shared = sorted(set(train["patient_id"]) & set(test["patient_id"]))
        dup_images = int(g["image_id"].duplicated().sum())
        out.append(
            {
                "features": features,
                "head": head,
                "n_folds": int(cv["fold"].nunique()),
                "cv_images": len(cv),
                "cv_patients": int(cv["patient_id"].nunique()),
                "validation_images": int((evaluation == "validation").sum()),
                "validation_patients": int(
                    g.loc[evaluation == "validation", "patient_id"].nunique()
                ),
                "test_images": len(test),
                "test_patients": int(test["patient_id"].nunique()),
                "patients_across_folds": len(across),
                "patients_train_and_test": len(shared),
                "images_predicted_twice": dup_images,
                "examples_across_folds": across[:5],
                "examples_train_and_test": shared[:5],
                "ok": not across and not shared and dup_images == 0,
            }
        )
    return out


def _check(checks: list, name: str, ok: bool, detail: str = "") -> None:
    checks.append({"check": name, "ok": bool(ok), "detail": detail})


def _num(x) -> float:
    """A metrics.json value (None after a JSON round trip of NaN) as a float."""
    return math.nan if x is None else float(x)


def _same(a, b, tol: float = TOL) -> bool:
    a, b = _num(a), _num(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


def _sklearn_figures(g: pd.DataFrame, classes, positive: str, threshold: float) -> dict:
    """Every figure of one result recomputed with scikit-learn, straight from predictions rows.

    Independent of featmammo.evaluate: no shared kernel, only the definitions (the decision rule
    is y_pred; macro averages over the labels present in y_true or y_pred, scikit-learn's own
    default).
    """
    from sklearn import metrics as skm

    y = g["y_true"].astype(str).to_numpy()
    yp = g["y_pred"].astype(str).to_numpy()
    proba = g[[f"p_{c}" for c in classes]].to_numpy(float)
    classes = list(classes)
    out = {"n_images": len(g), "n_patients": int(g["patient_id"].nunique())}
    out["confusion_matrix"] = skm.confusion_matrix(y, yp, labels=classes)
    out["accuracy"] = skm.accuracy_score(y, yp)
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected here
        warnings.simplefilter("ignore")
        out["balanced_accuracy"] = skm.balanced_accuracy_score(y, yp)
    for avg in ("macro", "weighted"):
        pr, rc, f1, _ = skm.precision_recall_fscore_support(y, yp, average=avg, zero_division=0)
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = pr, rc, f1
    pr, rc, f1, sup = skm.precision_recall_fscore_support(y, yp, labels=classes, zero_division=0)
    out["per_class"] = {
        c: {"precision": pr[j], "recall": rc[j], "f1": f1[j], "support": int(sup[j])}
        for j, c in enumerate(classes)
    }
    present = set(y)

    def auc(truth, score):
        return skm.roc_auc_score(truth, score) if 0 < truth.sum() < len(truth) else math.nan

    if len(classes) == 2:
        out["roc_auc_ovr"] = auc(y == classes[1], proba[:, 1])
    else:
        # scikit-learn's multi_class="ovr" macro average, class by class (its multiclass entry
        # point refuses rows that do not sum to 1, which the check above reports instead)
        aucs = [auc(y == c, proba[:, i]) for i, c in enumerate(classes)]
        out["roc_auc_ovr"] = float(np.mean(aucs)) if present == set(classes) else math.nan
    j = classes.index(positive)
    pos = y == positive
    out["roc_auc_pos_vs_rest"] = auc(pos, proba[:, j])
    out["pr_auc_pos_vs_rest"] = (
        skm.average_precision_score(pos, proba[:, j]) if pos.any() else math.nan
    )
    called = yp == positive  # the decision rule: argmax
    thr = proba[:, j] >= threshold  # the extra operating point

    def recall(truth, call):
        return skm.recall_score(truth, call) if truth.any() else math.nan

    out["sensitivity"] = recall(pos, called)
    out["specificity"] = recall(~pos, ~called)
    out["sensitivity_at_threshold"] = recall(pos, thr)
    out["specificity_at_threshold"] = recall(~pos, ~thr)
    return out


#: (check name, metric key) pairs compared against scikit-learn for every result
SKLEARN_CHECKS = (
    ("accuracy", "accuracy", "accuracy_score"),
    ("balanced_accuracy", "balanced accuracy", "balanced_accuracy_score"),
    ("macro_precision", "macro precision", "precision_recall_fscore_support(average='macro')"),
    ("macro_recall", "macro recall", "precision_recall_fscore_support(average='macro')"),
    ("macro_f1", "macro F1", "f1 (average='macro')"),
    ("weighted_f1", "weighted F1", "f1 (average='weighted')"),
    ("roc_auc_ovr", "ROC-AUC one-vs-rest", "roc_auc_score(multi_class='ovr')"),
    ("roc_auc_pos_vs_rest", "positive-vs-rest ROC-AUC", "roc_auc_score"),
    ("pr_auc_pos_vs_rest", "PR-AUC", "average_precision_score"),
    ("sensitivity", "sensitivity (argmax)", "recall_score(positive)"),
    ("specificity", "specificity (argmax)", "recall_score(rest)"),
    ("sensitivity_at_threshold", "sensitivity at the threshold", "recall_score(p >= t)"),
    ("specificity_at_threshold", "specificity at the threshold", "recall_score(p < t)"),
)


def _rows_of(predictions: pd.DataFrame, r: dict) -> pd.DataFrame:
    g = predictions[
        (predictions["features"].astype(str) == str(r["features"]))
        & (predictions["head"].astype(str) == str(r["head"]))
    ]
    return g[g["fold"].astype(str).map(ev.evaluation_of) == r["evaluation"]]


def consistency_checks(
    predictions: pd.DataFrame,
    metrics: dict,
    leaderboard_path: Path,
    classes,
    *,
    config: dict | None = None,
    tuning: pd.DataFrame | None = None,
) -> list[dict]:
    """Checks that can fail: every figure recomputed a second way and compared.

    Each result's numbers in ``metrics`` are recomputed with scikit-learn's metrics from the rows
    of ``predictions`` (balanced_accuracy_score, roc_auc_score, precision/recall/F1,
    confusion_matrix, average_precision_score); leaderboard.csv is re-read from disk and compared
    with ``metrics``; the CI rule is re-applied from patient counts recounted here; the majority
    baselines of test/validation rows are recomputed from ``config["train_class_counts"]``;
    ``tuning`` (tuning.csv) must hold exactly one chosen row per features/head/fold. Returns a
    list of dicts (check, ok, detail).
    """
    checks: list[dict] = []
    classes = [str(c) for c in classes]
    pcols = [f"p_{c}" for c in classes]
    proba = predictions[pcols].to_numpy(float)
    sums = proba.sum(axis=1)
    bad = int((~np.isclose(sums, 1.0, atol=1e-4)).sum())
    _check(checks, "probabilities sum to 1 per image", bad == 0, f"{bad} row(s) off")
    argmax = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    mismatch = int((argmax != predictions["y_pred"].astype(str).to_numpy()).sum())
    _check(
        checks,
        "y_pred is the argmax of p_<class> (the decision rule)",
        mismatch == 0,
        f"{mismatch} row(s) differ",
    )
    positive = metrics.get("positive_class") or ev.positive_class(classes)
    threshold = float(metrics.get("threshold", 0.5))
    worst = {key: (0.0, "") for key, _, _ in SKLEARN_CHECKS}
    worst.update({"per_class": (0.0, ""), "confusion": (0.0, ""), "counts": (0.0, "")})

    def note(key, diff, where):
        if not diff <= worst[key][0]:  # NaN vs number counts as infinitely wrong
            worst[key] = (math.inf if math.isnan(diff) else diff, where)

    def diff_of(a, b) -> float:
        a, b = _num(a), _num(b)
        if math.isnan(a) and math.isnan(b):
            return 0.0
        return abs(a - b) if not (math.isnan(a) or math.isnan(b)) else math.nan

    for r in metrics["results"]:
        where = f"{r['features']}/{r['head']}/{r['evaluation']}"
        g = _rows_of(predictions, r)
        sk = _sklearn_figures(g, classes, positive, threshold)
        m = r["metrics"]
        for key, _, _ in SKLEARN_CHECKS:
            note(key, diff_of(m.get(key), sk[key]), where)
        for c in classes:
            for k in ("precision", "recall", "f1"):
                note("per_class", diff_of(m["per_class"][c][k], sk["per_class"][c][k]), where)
            note("per_class", diff_of(m["per_class"][c]["support"], sk["per_class"][c]["support"]),
                 where)  # fmt: skip
        cm = np.asarray(m["confusion_matrix"], dtype=float)
        note(
            "confusion",
            float(np.abs(cm - sk["confusion_matrix"]).max())
            if cm.shape == sk["confusion_matrix"].shape
            else math.inf,
            where,
        )
        note("counts", diff_of(r["n_images"], sk["n_images"]), where)
        note("counts", diff_of(r["n_patients"], sk["n_patients"]), where)
    for key, label, fn in SKLEARN_CHECKS:
        d, where = worst[key]
        _check(
            checks,
            f"{label} = sklearn.metrics.{fn} on predictions.csv",
            d <= TOL,
            f"max |diff| {d:.2e}" + (f" ({where})" if d > TOL else ""),
        )
    for key, label in (
        ("per_class", "per-class precision/recall/F1/support = precision_recall_fscore_support"),
        ("confusion", "confusion matrix = sklearn.metrics.confusion_matrix (y_pred)"),
        ("counts", "images and patients per result = counted in predictions.csv"),
    ):
        d, where = worst[key]
        _check(checks, label, d <= TOL, f"max |diff| {d:.2e}" + (f" ({where})" if d > TOL else ""))
    # majority baselines of test/validation rows from the recorded training class counts
    counts = (config or {}).get("train_class_counts")
    if counts:
        best = max(counts.values())
        majority = next(c for c in classes if counts.get(c, 0) == best)
        worst_bl = 0.0
        for r in metrics["results"]:
            if r["evaluation"] == "cv" and r.get("per_fold") and len(r["per_fold"]) >= 2:
                continue  # K-fold CV: each fold's own training part
            g = _rows_of(predictions, r)
            want = float((g["y_true"].astype(str) == majority).mean()) if len(g) else math.nan
            d = diff_of(r.get("majority_baseline"), want)
            worst_bl = math.inf if math.isnan(d) else max(worst_bl, d)
        _check(
            checks,
            f"majority baselines (test/validation) = share of '{majority}', the majority of "
            "train_class_counts",
            worst_bl <= TOL,
            f"max |diff| {worst_bl:.2e}",
        )
    # leaderboard.csv, re-read from disk, equals metrics.json's values
    lb = pd.read_csv(leaderboard_path, keep_default_na=True, dtype={"features": str, "head": str})
    worst_lb = 0.0
    min_patients = int(metrics.get("min_patients_per_class", ev.MIN_PATIENTS_PER_CLASS))
    printed_small = []
    for r in metrics["results"]:
        row = lb[
            (lb["features"].astype(str) == str(r["features"]))
            & (lb["head"].astype(str) == str(r["head"]))
            & (lb["evaluation"] == r["evaluation"])
        ]
        if len(row) != 1:
            worst_lb = math.inf
            continue
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr", "sensitivity"):
            if key in row.columns:
                d = diff_of(row[key].iloc[0], r["metrics"][key])
                worst_lb = math.inf if math.isnan(d) else max(worst_lb, d)
        g = _rows_of(predictions, r)
        per_class = g.drop_duplicates(["y_true", "patient_id"])["y_true"].astype(str)
        smallest = min(int((per_class == c).sum()) for c in classes)
        ci_cols = [c for c in row.columns if c.endswith("_ci_low") or c.endswith("_ci_high")]
        if smallest < min_patients and row[ci_cols].notna().to_numpy().any():
            printed_small.append(f"{r['features']}/{r['head']}/{r['evaluation']}")
    _check(
        checks,
        "leaderboard.csv (re-read) = metrics.json",
        worst_lb < 1e-12,
        f"max |diff| {worst_lb:.2e}",
    )
    _check(
        checks,
        f"no CI in leaderboard.csv where a class has < {min_patients} patients (recounted)",
        not printed_small,
        ", ".join(printed_small[:6]) or "none printed",
    )
    if tuning is not None:
        chosen = tuning[tuning["chosen"].astype(str).str.lower().isin(("true", "1"))]
        per = chosen.groupby(["features", "head", "fold"]).size()
        keys = tuning.groupby(["features", "head", "fold"]).size()
        bad = [f"{k[0]}/{k[1]}/{k[2]}" for k in keys.index if per.get(k, 0) != 1]
        _check(
            checks,
            "tuning.csv: exactly one chosen row per features/head/fold",
            not bad,
            ", ".join(bad[:6]) or f"{len(keys)} group(s)",
        )
    # CIs are ordered; a percentile bootstrap CI may legitimately exclude its point estimate
    # (skewed resampling distributions, few patients), so that is reported, not failed
    unordered, outside = 0, []
    for r in metrics["results"]:
        for key, ci in r["ci"].items():
            point = r["metrics"].get(key)
            if any(x is None or math.isnan(x) for x in (ci["low"], ci["high"])):
                continue
            if ci["low"] > ci["high"] + 1e-12:
                unordered += 1
            if point is None or math.isnan(point):
                continue
            if not (ci["low"] - 1e-12 <= point <= ci["high"] + 1e-12):
                outside.append(f"{r['features']}/{r['head']}/{r['evaluation']} {key}")
    _check(
        checks, "every bootstrap CI has low <= high", unordered == 0, f"{unordered} CI(s) inverted"
    )
    checks.append(
        {
            "check": "bootstrap CIs that exclude their point estimate (informational)",
            "ok": True,
            "info": True,
            "detail": (
                f"{len(outside)}: {', '.join(outside[:6])}{' ...' if len(outside) > 6 else ''}; "
                "percentile intervals can do this when the resampled metric is skewed "
                "(few patients); the interval is then a poor guide"
                if outside
                else "none"
            ),
        }
    )
    return checks


def verify(run_dir) -> list[dict]:
    """Re-read predictions.csv, metrics.json, leaderboard.csv (and config.json, tuning.csv) from
    RUN_DIR and run :func:`consistency_checks` on them: a number edited in metrics.json or
    leaderboard.csv, or a wrong kernel in featmammo.evaluate, shows up as a failed check."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    metrics_path = run_dir / METRICS
    if not metrics_path.exists():
        raise ConfigError(f"{metrics_path}: missing; run write_report first")
    metrics = json.loads(metrics_path.read_text())
    predictions = ev.read_predictions(run_dir / PREDICTIONS)
    return consistency_checks(
        predictions,
        metrics,
        run_dir / LEADERBOARD,
        metrics["classes"],
        config=config,
        tuning=read_tuning(run_dir),
    )
