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


def _sklearn_figures(
    g: pd.DataFrame, classes, positive: str, threshold: float, screening=()
) -> dict:
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
    out.update(_sklearn_screening(pos, proba[:, j], screening))
    return out


def _sklearn_screening(pos: np.ndarray, score: np.ndarray, names) -> dict:
    """The screening metrics from scikit-learn's ROC curve and a plain sum (RSNA's pF1)."""
    from sklearn import metrics as skm

    out = {}
    both = 0 < pos.sum() < len(pos)
    fpr, tpr = (skm.roc_curve(pos, score)[:2]) if both else (None, None)
    for name in names:
        if name.startswith("sens_at_spec_"):
            target = float(name.removeprefix("sens_at_spec_"))
            out[name] = float(tpr[(1 - fpr) >= target - 1e-12].max()) if both else math.nan
        elif name.startswith("pauc_"):
            max_fpr = float(name.removeprefix("pauc_"))
            out[name] = skm.roc_auc_score(pos, score, max_fpr=max_fpr) if both else math.nan
        elif name == "pf1":
            p = np.clip(score, 0, 1)
            ctp, cfp = p[pos].sum(), p[~pos].sum()
            if not pos.any():
                out[name] = math.nan
            else:
                prec = ctp / (ctp + cfp) if ctp + cfp > 0 else 0.0
                rec = ctp / pos.sum()
                out[name] = 2 * prec * rec / (prec + rec) if prec > 0 and rec > 0 else 0.0
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


def _rows_of(predictions, r: dict) -> pd.DataFrame:
    """The rows of result ``r`` in ``predictions`` (one frame, or ``{level: frame}``)."""
    if isinstance(predictions, dict):
        predictions = predictions[r.get("level", "image")]
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
    frames: dict | None = None,
    comparisons: pd.DataFrame | None = None,
    level_files: dict | None = None,
    comparison_rows: dict | None = None,
) -> list[dict]:
    """Checks that can fail: every figure recomputed a second way and compared.

    ``frames``: ``{level: rows}`` (image = ``predictions``; breast/exam derived from it);
    ``comparisons``: comparisons.csv as re-read, recomputed from ``frames`` and checked cell by
    cell (and its differences, Holm adjustment and McNemar counts a second way);
    ``level_files``: the breast/exam files as re-read, compared with their re-derivation.

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
    frames = frames or {"image": predictions}
    screening = list(metrics.get("screening_metrics") or [])
    sk_checks = [*SKLEARN_CHECKS, *[(k, k, _SCREENING_FN.get(k.split("_")[0], k))
                                    for k in screening]]  # fmt: skip
    worst = {key: (0.0, "") for key, _, _ in sk_checks}
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
        where = _where(r)
        g = _rows_of(frames, r)
        sk = _sklearn_figures(g, classes, positive, threshold, screening)
        m = r["metrics"]
        for key, _, _ in sk_checks:
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
    for key, label, fn in sk_checks:
        d, where = worst[key]
        _check(
            checks,
            f"{label} = {fn} on the predictions"
            if key in screening
            else f"{label} = sklearn.metrics.{fn} on predictions.csv",
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
            g = _rows_of(frames, r)
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
    if "level" not in lb.columns:
        lb["level"] = "image"
    worst_lb = 0.0
    min_patients = int(metrics.get("min_patients_per_class", ev.MIN_PATIENTS_PER_CLASS))
    printed_small = []
    for r in metrics["results"]:
        row = lb[
            (lb["features"].astype(str) == str(r["features"]))
            & (lb["head"].astype(str) == str(r["head"]))
            & (lb["evaluation"] == r["evaluation"])
            & (lb["level"].astype(str) == str(r.get("level", "image")))
        ]
        if len(row) != 1:
            worst_lb = math.inf
            continue
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr", "sensitivity",
                    *screening):  # fmt: skip
            if key in row.columns:
                d = diff_of(row[key].iloc[0], r["metrics"][key])
                worst_lb = math.inf if math.isnan(d) else max(worst_lb, d)
        g = _rows_of(frames, r)
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
    _rank_check(checks, lb)
    _constant_check(checks, metrics, frames)
    if comparisons is not None:
        checks += comparison_checks(comparisons, metrics, comparison_rows or frames, classes)
    if level_files:
        checks += level_file_checks(level_files, frames)
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


_SCREENING_FN = {
    "sens": "sklearn.metrics.roc_curve (best tpr where 1 - fpr >= target)",
    "pauc": "sklearn.metrics.roc_auc_score(max_fpr=0.1)",
    "pf1": "RSNA's pF1 summed over the probabilities",
}


def _where(r: dict) -> str:
    lv = r.get("level", "image")
    return f"{r['features']}/{r['head']}/{r['evaluation']}" + ("" if lv == "image" else f"/{lv}")


def _rank_check(checks: list, lb: pd.DataFrame) -> None:
    """Ranks follow CV balanced accuracy; a test row carries its model's CV rank; optimistic and
    validation rows have none; nothing is ranked by a test score."""
    bad = []
    for level, part in lb.groupby(lb["level"].astype(str)):
        cv = part[(part["evaluation"] == "cv") & ~part["optimistic"].astype(bool)]
        want = cv["balanced_accuracy"].rank(ascending=False, method="min")
        models = zip(cv["features"].astype(str), cv["head"].astype(str), strict=True)
        by_model = dict(zip(models, want, strict=True))
        for _, row in part.iterrows():
            honest = row["evaluation"] in ev.HONEST_EVALUATIONS and not bool(row["optimistic"])
            expect = by_model.get((str(row["features"]), str(row["head"]))) if honest else None
            got = row["rank"]
            if (expect is None or pd.isna(expect)) != pd.isna(got) or (
                expect is not None and not pd.isna(got) and float(got) != float(expect)
            ):
                bad.append(f"{row['features']}/{row['head']}/{row['evaluation']}/{level}")
    _check(checks, "leaderboard ranks = CV balanced accuracy (test rows carry their model's "
           "CV rank; optimistic rows unranked)", not bad, ", ".join(bad[:6]) or "ok")  # fmt: skip


def _constant_check(checks: list, metrics: dict, frames: dict) -> None:
    bad = []
    for r in metrics["results"]:
        g = _rows_of(frames, r)
        pcols = [f"p_{c}" for c in metrics["classes"]]
        want = ev.constant_reason(g["y_pred"], g[pcols].to_numpy(float))
        if str(r.get("constant_predictions") or "") != want:
            bad.append(_where(r))
    _check(checks, "constant-prediction flags = recounted from the predictions", not bad,
           ", ".join(bad[:6]) or "ok")  # fmt: skip


def _holm_by_hand(p: list[float]) -> list[float]:
    """Holm's step-down adjustment written out (a second implementation for the check)."""
    idx = [i for i, v in enumerate(p) if not math.isnan(v)]
    order = sorted(idx, key=lambda i: p[i])
    out, running = [math.nan] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        out[i] = running
    return out


def comparison_checks(table: pd.DataFrame, metrics: dict, frames: dict, classes) -> list[dict]:
    """comparisons.csv (as re-read) against (a) its recomputation from the predictions with the
    recorded settings and (b) a second path: differences recomputed by plain counting and rank
    sums (pooled test rows, mean per-fold CV differences), Holm written out, McNemar counts
    recounted."""
    checks: list[dict] = []
    cfg = dict(metrics.get("comparisons_config") or {})
    pairs = [tuple(p) for p in cfg.pop("pairs", [])]
    recomputed = pd.concat(
        [ev.compare_predictions(frame, pairs, classes, level=lv, **cfg)
         for lv, frame in frames.items()],
        ignore_index=True,
    )  # fmt: skip
    problems = ev.verify_comparisons(table, recomputed)
    _check(checks, f"comparisons.csv = recomputed from the predictions ({len(recomputed)} rows: "
           "diff, CI, p, Holm, McNemar counts)", not problems,
           "; ".join(problems[:4]) or "identical")  # fmt: skip
    stored_json = pd.DataFrame(metrics.get("comparisons") or [],
                               columns=list(ev.COMPARISON_COLUMNS))  # fmt: skip
    stored_json = stored_json.astype({c: float for c in ("diff", "ci_low", "ci_high", "p_raw",
                                                         "p_holm")})  # fmt: skip
    problems = ev.verify_comparisons(stored_json, table)
    _check(checks, "comparisons in metrics.json = comparisons.csv", not problems,
           "; ".join(problems[:4]) or "identical")  # fmt: skip
    worst, where, counts_bad, holm_bad = 0.0, "", [], []
    skfn = {"balanced_accuracy": _balanced_accuracy_plain, "roc_auc_ovr": _auc_ovr_plain}
    pcols = [f"p_{c}" for c in classes]
    for _, row in table.iterrows():
        frame = frames.get(str(row["level"]))
        if frame is None:
            continue
        keys = list(ev.comparisons.LEVEL_KEYS[str(row["level"])])
        if "repeat" in frame.columns:  # CV repeats: pair within a repeat
            keys.append("repeat")
        ev_col = frame["fold"].astype(str).map(ev.evaluation_of)
        sel = frame[(ev_col == row["evaluation"]) & (frame["head"].astype(str) == row["head"])]
        a = sel[sel["features"].astype(str) == row["features_a"]]
        b = sel[sel["features"].astype(str) == row["features_b"]]
        m = a.merge(b, on=keys, suffixes=("_a", "_b"))
        if row["metric"] == ev.comparisons.MCNEMAR_METRIC:
            ra = m["y_pred_a"].astype(str) == m["y_true_a"].astype(str)
            rb = m["y_pred_b"].astype(str) == m["y_true_a"].astype(str)
            b_n, c_n = int((ra & ~rb).sum()), int((~ra & rb).sum())
            if f"b={b_n} " not in str(row["method"]) or f"c={c_n} " not in str(row["method"]):
                counts_bad.append(f"{row['head']}/{row['features_a']}:{row['features_b']}")
            continue
        fn = skfn.get(str(row["metric"]))
        if fn is None or not len(m):
            continue

        def score(part, side, fn=fn):
            p = part[[f"{c}_{side}" for c in pcols]].to_numpy(float)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return fn(
                        part["y_true_a"].astype(str).to_numpy(),
                        part[f"y_pred_{side}"].astype(str).to_numpy(),
                        p,
                        list(classes),
                    )
            except ValueError:
                return math.nan  # fmt: skip

        if row["evaluation"] == "cv" and "Nadeau-Bengio" in str(row["method"]):
            grp = [m["fold_a"].astype(str)] if "repeat" not in m.columns else [
                m["repeat"].astype(str), m["fold_a"].astype(str)]  # fmt: skip
            d = [score(part, "a") - score(part, "b") for _, part in m.groupby(grp)]
            d = [v for v in d if not math.isnan(v)]
            want = float(np.mean(d)) if d else math.nan
        else:
            if "repeat" in m.columns:  # the test set (and pooled rows): the first repeat
                m = m[m["repeat"].astype(str) == "1"]
            want = score(m, "a") - score(m, "b")
        dd = diff_abs(row["diff"], want)
        if dd > worst:
            worst = dd
            where = "/".join(str(row[c]) for c in ("evaluation", "level", "head", "features_a",
                                                   "features_b", "metric"))  # fmt: skip
    _check(checks, "comparison differences = recounted on the paired rows (balanced accuracy by "
           "counting, ROC-AUC by rank sums; test: pooled, CV: mean per-fold difference)",
           worst <= 1e-9,
           f"max |diff| {worst:.2e}" + (f" ({where})" if worst > 1e-9 else ""))  # fmt: skip
    _check(checks, "McNemar counts b/c = recounted from the paired rows", not counts_bad,
           ", ".join(counts_bad[:6]) or "ok")  # fmt: skip
    for _, fam in table.groupby(_families(table)):
        tested = fam[~fam["method"].astype(str).str.contains("out of the family")]
        want = _holm_by_hand(tested["p_raw"].astype(float).tolist())
        for got, w in zip(tested["p_holm"].astype(float), want, strict=True):
            if diff_abs(got, w) > 1e-12:
                holm_bad.append(str(fam["evaluation"].iloc[0]) + "/" + str(fam["level"].iloc[0]))
                break
        untested = fam[fam["method"].astype(str).str.contains("out of the family")]
        if untested["p_holm"].notna().any():
            holm_bad.append("an untested row has a Holm p")
    _check(checks, "Holm p = step-down adjustment of the raw p per family (written out)",
           not holm_bad, ", ".join(holm_bad[:6]) or "ok")  # fmt: skip
    return checks


def _balanced_accuracy_plain(y, yp, p, classes) -> float:
    """Mean recall over the classes present in ``y`` (scikit-learn's definition), by counting."""
    recalls = [float(np.mean(yp[y == c] == c)) for c in classes if (y == c).any()]
    return float(np.mean(recalls)) if recalls else math.nan


def _auc_ovr_plain(y, yp, p, classes) -> float:
    """Macro one-vs-rest ROC-AUC by the Mann-Whitney rank sum (scipy.stats.rankdata, mid-ranks for
    ties); the binary case scores the second class. NaN when a class is absent."""
    from scipy.stats import rankdata

    def auc(pos, score):
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            return math.nan
        r = rankdata(score)
        return float((r[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))

    if len(classes) == 2:
        return auc(y == classes[1], p[:, 1])
    return float(np.mean([auc(y == c, p[:, i]) for i, c in enumerate(classes)]))


def _families(table: pd.DataFrame) -> pd.Series:
    mc = table["metric"].astype(str) == ev.comparisons.MCNEMAR_METRIC
    return (
        table["evaluation"].astype(str)
        + "/"
        + table["level"].astype(str)
        + "/"
        + np.where(mc, "mcnemar", "main")
    )


def diff_abs(a, b) -> float:
    a, b = _num(a), _num(b)
    if math.isnan(a) and math.isnan(b):
        return 0.0
    return abs(a - b) if not (math.isnan(a) or math.isnan(b)) else math.inf


def level_file_checks(files: dict, frames: dict) -> list[dict]:
    """The breast/exam files on disk = their re-derivation from predictions.csv."""
    checks = []
    for level, stored in files.items():
        want = frames.get(level)
        name = ev.LEVEL_FILES[level]
        if want is None:
            _check(checks, f"{name} = derived from predictions.csv", False,
                   "on disk but config.json does not ask for this level")  # fmt: skip
            continue
        if stored is None:
            _check(checks, f"{name} = derived from predictions.csv", False, "missing")
            continue
        problem = ""
        if list(stored.columns) != list(want.columns) or len(stored) != len(want):
            problem = f"{len(stored)} rows / columns {list(stored.columns)[:4]}... on disk"
        else:
            for col in want.columns:
                a, b = stored[col], want[col]
                if col.startswith("p_") or col == "n_views":
                    d = np.abs(a.astype(float).to_numpy() - b.astype(float).to_numpy())
                    if np.nanmax(d, initial=0.0) > 1e-9:
                        problem = f"{col} differs (max {np.nanmax(d):.2e})"
                        break
                elif (a.astype(str).to_numpy() != b.astype(str).to_numpy()).any():
                    problem = f"{col} differs"
                    break
        _check(checks, f"{name} = derived from predictions.csv", not problem, problem or "ok")
    return checks


def verify(run_dir) -> list[dict]:
    """Re-read predictions.csv, metrics.json, leaderboard.csv, comparisons.csv, the breast/exam
    predictions (and config.json, tuning.csv) from RUN_DIR and run :func:`consistency_checks` on
    them: a number edited in any of those files, or a wrong kernel in featmammo.evaluate, shows up
    as a failed check. The breast/exam rows and every comparison are re-derived from
    predictions.csv."""
    from .files import COMPARISONS
    from .inputs import comparison_frames, level_frames

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    metrics_path = run_dir / METRICS
    if not metrics_path.exists():
        raise ConfigError(f"{metrics_path}: missing; run write_report first")
    metrics = json.loads(metrics_path.read_text())
    predictions = ev.read_predictions(run_dir / PREDICTIONS)
    frames, _ = level_frames(predictions, config)
    files = {}
    for level in ("breast", "exam"):
        path = run_dir / ev.LEVEL_FILES[level]
        if level in frames or path.exists():
            files[level] = ev.levels.read_level_predictions(path) if path.exists() else None
    comparisons = None
    cmp_path = run_dir / COMPARISONS
    if cmp_path.exists():
        comparisons = ev.read_comparisons(cmp_path)
    elif metrics.get("comparisons_config") is not None:
        raise ConfigError(f"{cmp_path}: missing (metrics.json records comparisons)")
    return consistency_checks(
        predictions,
        metrics,
        run_dir / LEADERBOARD,
        metrics["classes"],
        config=config,
        tuning=read_tuning(run_dir),
        frames=frames,
        comparisons=comparisons,
        level_files=files,
        comparison_rows=comparison_frames(run_dir, frames, config),
    )
