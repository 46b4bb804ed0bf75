"""The run report: leaderboard.csv, metrics.json, report.md and figures, all from predictions.csv.

:func:`write_report` is the only writer of those files, and it reads nothing but
``RUN_DIR/predictions.csv`` and ``RUN_DIR/config.json`` (classes, seed, bootstrap size, threshold,
and what the fit recorded about its inputs). Every number in the report is therefore recomputable
from the stored predictions; editing predictions.csv and re-running :func:`write_report` changes the
report.

The report opens with the run's caveats (``config["caveats"]``: weights per backbone, data sources,
warnings; the source-confounding audit; small-sample and optimistic-row warnings) and with the
answer to the project's question: the hybrid against each other features set, per head, as paired
patient-clustered bootstrap differences with Holm-adjusted p-values. Then the paper's table layout
(per-class precision / recall / F1 / support, accuracy, macro and weighted averages) with, beside
it, what that layout hides: the majority-class baseline, balanced accuracy, patient counts,
patient-clustered bootstrap CIs (withheld below a minimum of patients per class), the chosen
hyperparameters (``tuning.csv``), a leakage audit recomputed from the fold column, and consistency
checks that recompute every figure a second way with scikit-learn from predictions.csv and compare
it with metrics.json and leaderboard.csv as re-read from disk (:func:`verify`).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import evaluate as ev
from .atomic import atomic_write
from .errors import ConfigError

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.csv"
CONFIG = "config.json"
LEADERBOARD = "leaderboard.csv"
METRICS = "metrics.json"
REPORT = "report.md"
TUNING = (
    "tuning.csv"  # optional: fit --tune grid (features, head, fold, params, inner_score, chosen)
)
IMAGES = "images.csv"  # optional: image_id -> path, written by fit for the test-image grid
FIGURES = "figures"
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


def read_tuning(run_dir) -> pd.DataFrame | None:
    """``RUN_DIR/tuning.csv`` (fit with ``--tune grid``) or None when absent."""
    path = Path(run_dir) / TUNING
    if not path.exists():
        return None
    df = pd.read_csv(
        path, dtype={"features": str, "head": str, "fold": str, "params": str},
        keep_default_na=False,
    )  # fmt: skip
    missing = [c for c in ("features", "head", "fold", "params", "inner_score", "chosen")
               if c not in df.columns]  # fmt: skip
    if missing:
        raise ConfigError(f"{path}: lacks columns {missing}")
    return df


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


# --------------------------------------------------------------------------------------------------
# caveats: what must travel with every saved result


EVAL_LABEL = {
    "cv": "pooled out-of-fold CV",
    "test": "held-out test",
    "validation": "HybridNet validation (chose the stopping epoch: optimistic)",
}


def caveat_lines(config: dict) -> list[str]:
    """The run's caveats (``config["caveats"]``: weights per backbone, data sources, warnings) as
    markdown lines; a run that records none says so."""
    cav = config.get("caveats")
    if not cav:
        return [
            "config.json records no caveats (backbone weights, data sources, warnings): the run "
            "predates them or its writer did not record them; check the store's provenance "
            "(`featmammo info STORE`) before sharing these numbers"
        ]
    lines = []
    weights = cav.get("weights") or {}
    if weights:
        lines.append("Backbone weights: " + "; ".join(f"{b}: {w}" for b, w in weights.items()))
        random = [b for b, w in weights.items() if str(w).lower().startswith("random")]
        said = any("random weights" in str(w).lower() for w in cav.get("warnings") or [])
        if random and not said:
            lines.append(
                f"**Random weights** for {', '.join(random)}: these features come from untrained "
                "networks; the numbers below say nothing about pretrained (ImageNet) features. "
                "Get real weights with `featmammo weights fetch NAME`."
            )
    else:
        lines.append("Backbone weights: not recorded")
    sources = cav.get("sources") or {}
    if sources:
        lines.append(
            "Data sources: "
            + ", ".join(f"{s or '(no source)'} ({n} images)" for s, n in sources.items())
        )
    else:
        lines.append("Data sources: not recorded")
    lines += [f"Warning: {w}" for w in cav.get("warnings") or []]
    return lines


def footer_text(config: dict, extra: list[str] | None = None) -> list[str]:
    """Short caveat paragraphs printed under every figure."""
    cav = config.get("caveats") or {}
    out = []
    weights = cav.get("weights") or {}
    out.append(
        "weights: " + "; ".join(f"{b} {w}" for b, w in weights.items())
        if weights
        else "weights: not recorded in config.json"
    )
    sources = cav.get("sources") or {}
    out.append(
        "sources: " + ", ".join(f"{s or '(none)'} {n}" for s, n in sources.items())
        if sources
        else "sources: not recorded"
    )
    out += [f"warning: {w}" for w in cav.get("warnings") or []]
    out += list(extra or [])
    return out


def source_statement(config: dict) -> tuple[str, bool]:
    """What the run's split audit says about labels confounded with data sources.

    Returns (sentence, is_warning). ``split_audit.source_confounding == {}`` means checked, none.
    """
    audit = config.get("split_audit")
    if not isinstance(audit, dict):
        return "Source confounding: not checked (config.json has no split_audit).", True
    if "source_confounding" not in audit:
        return "Source confounding: not checked (the split audit has no source check).", True
    found = audit.get("source_confounding") or {}
    sources = ((config.get("caveats") or {}).get("sources")) or {}
    if not found:
        if len(sources) == 1:
            only = next(iter(sources))
            return (
                f"Source confounding: checked: every image comes from one source ({only!r}), so "
                "labels cannot be told apart by source; nor do the results say anything beyond "
                "that source.",
                False,
            )
        return (
            "Source confounding: checked: no label comes from a source that no other label "
            "shares" + (f" (sources: {', '.join(map(str, sources))})." if sources else "."),
            False,
        )
    parts = [f"every {label!r} image comes from {src!r}" for label, src in found.items()]
    return (
        "Source confounding: checked: **" + "; ".join(parts) + "** and no other label does: a "
        "classifier can learn the acquisition pipeline instead of the pathology, so these "
        "numbers overstate what it learned about lesions.",
        True,
    )


def report_warnings(config, metrics, audit, checks) -> list[str]:
    """Warnings derived from the results themselves (metrics.json ``warnings``)."""
    out = []
    small = [r for r in metrics["results"] if r.get("ci_note")]
    if small:
        examples = ", ".join(
            f"{r['features']}/{r['head']}/{r['evaluation']} {r['ci_note']}" for r in small[:3]
        )
        out.append(
            f"small samples: {len(small)} of {len(metrics['results'])} result(s) have fewer than "
            f"{metrics['min_patients_per_class']} patients in some class, so no confidence "
            f"interval is given for them (e.g. {examples}); their point estimates are fragile"
        )
    if metrics.get("optimistic_features"):
        out.append(
            f"optimistic: features {', '.join(metrics['optimistic_features'])} were evaluated on "
            "images their embeddings were trained on"
            + (f" ({config['optimistic_reason']})" if config.get("optimistic_reason") else "")
            + "; their rows are marked optimistic"
        )
    if any(r["evaluation"] == "validation" for r in metrics["results"]):
        out.append(
            "HybridNet validation rows chose the stopping epoch (early stopping): they are "
            "optimistic, shown apart, not ranked and not compared; only test rows estimate "
            "performance"
        )
    if any(not a["ok"] for a in audit):
        out.append("leakage audit failed: patients shared between folds or train and test")
    failed = [c["check"] for c in checks if not c["ok"]]
    if failed:
        out.append(f"consistency checks failed: {'; '.join(failed)}")
    return out


def footer_warnings(config: dict, metrics: dict) -> list[str]:
    """Short forms of the report's own warnings for the figure footers (the report has the rest)."""
    out = []
    small = [r for r in metrics["results"] if r.get("ci_note")]
    if small:
        out.append(
            f"small samples: no CI for {len(small)} of {len(metrics['results'])} results (fewer "
            f"than {metrics['min_patients_per_class']} patients in some class; see report.md)"
        )
    if metrics.get("optimistic_features"):
        out.append(
            f"optimistic: {', '.join(metrics['optimistic_features'])} evaluated on images its "
            "embeddings trained on"
        )
    if any(r["evaluation"] == "validation" for r in metrics["results"]):
        out.append("validation rows chose the stopping epoch: optimistic")
    found = ((config.get("split_audit") or {}).get("source_confounding")) or {}
    said = " ".join(str(w) for w in (config.get("caveats") or {}).get("warnings") or [])
    for label, src in found.items():
        if not (str(label) in said and str(src) in said):
            out.append(f"source confounding: every {label!r} image comes from {src!r} alone")
    text, warn = source_statement(config)
    if warn and not found:
        out.append(text)
    failed = [c["check"] for c in metrics.get("consistency") or [] if not c["ok"]]
    if failed:
        out.append(f"{len(failed)} consistency check(s) FAILED: see report.md")
    return [f"warning: {w}" for w in out]


# --------------------------------------------------------------------------------------------------
# markdown


def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NaN"
    return f"{x:.{digits}f}"


def _signed(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NaN"
    return f"{x:+.{digits}f}"


def _pct(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NaN"
    return f"{100 * x:.1f}"


def _ci(r: dict, key: str, pct: bool = False, *, why: bool = False) -> str:
    """' [low, high]', or where the CI rule withholds it ' (CI n/a)' / ' (CI n/a (why))'."""
    if r.get("ci_note"):
        return f" (CI {r['ci_note']})" if why else " (CI n/a)"
    ci = r["ci"].get(key)
    if not ci:
        return ""
    fmt = _pct if pct else _f
    return f" [{fmt(ci['low'])}, {fmt(ci['high'])}]"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _majority_text(r: dict) -> str:
    if r.get("majority_class") is None:
        return r.get("majority_source", "training counts unknown")
    if r["evaluation"] == "cv" and r.get("per_fold") and len(r["per_fold"]) >= 2:
        return f"each fold predicts its training part's majority: {r['majority_class']}"
    return f"always '{r['majority_class']}', from {r.get('majority_source', 'the training part')}"


def _name(r: dict) -> str:
    return f"{r['features']} / {r['head']}" + (" (optimistic)" if r.get("optimistic") else "")


def _paper_table(r: dict, classes) -> list[str]:
    m = r["metrics"]
    pc = m["per_class"]
    cm_arr = np.asarray(m["confusion_matrix"])
    predicted = cm_arr.sum(axis=0) if cm_arr.size else np.zeros(len(classes))
    rows = []
    for j, c in enumerate(classes):
        if pc[c]["support"] == 0 and not predicted[j]:
            # neither true nor predicted here: shown as absent, as the averages leave it out
            rows.append([c, "-", "-", "-", "0 (absent)"])
        else:
            rows.append(
                [c, _pct(pc[c]["precision"]), _pct(pc[c]["recall"]), _pct(pc[c]["f1"]),
                 pc[c]["support"]]
            )  # fmt: skip
    n = m["n_images"]
    rows.append(["accuracy", "", "", _pct(m["accuracy"]), n])
    rows.append(
        ["macro avg", _pct(m["macro_precision"]), _pct(m["macro_recall"]), _pct(m["macro_f1"]), n]
    )
    rows.append(
        [
            "weighted avg",
            _pct(m["weighted_precision"]),
            _pct(m["weighted_recall"]),
            _pct(m["weighted_f1"]),
            n,
        ]
    )
    lines = _table(["class", "precision %", "recall %", "F1 %", "support"], rows)
    lines.append("")
    pos = m["positive_class"]
    lines.append(
        f"Beside it: majority-class baseline {_pct(r['majority_baseline'])}% "
        f"({_majority_text(r)}), balanced accuracy {_pct(m['balanced_accuracy'])}%"
        f"{_ci(r, 'balanced_accuracy', True, why=True)}, accuracy {_pct(m['accuracy'])}%"
        f"{_ci(r, 'accuracy', True)}, macro F1 {_pct(m['macro_f1'])}%{_ci(r, 'macro_f1', True)}; "
        f"ROC-AUC one-vs-rest {_f(m['roc_auc_ovr'])}"
        f"{_ci(r, 'roc_auc_ovr')}, {pos}-vs-rest ROC-AUC "
        f"{_f(m['roc_auc_pos_vs_rest'])}{_ci(r, 'roc_auc_pos_vs_rest')}, PR-AUC "
        f"{_f(m['pr_auc_pos_vs_rest'])}{_ci(r, 'pr_auc_pos_vs_rest')}; sensitivity "
        f"{_f(m['sensitivity'])}{_ci(r, 'sensitivity')} / specificity {_f(m['specificity'])}"
        f"{_ci(r, 'specificity')} (argmax rule, as the confusion matrix below). "
        f"{r['n_images']} images of {r['n_patients']} patients."
    )
    if not math.isclose(float(m["threshold"]), 0.5):
        lines.append(
            f"Second operating point, P({pos}) >= {m['threshold']} (used nowhere else): "
            f"sensitivity {_f(m.get('sensitivity_at_threshold'))} / specificity "
            f"{_f(m.get('specificity_at_threshold'))}."
        )
    cm = m["confusion_matrix"]
    lines += ["", "Confusion matrix (rows true, columns predicted = argmax):", ""]
    lines += _table(["true \\ predicted", *classes], [[c, *cm[i]] for i, c in enumerate(classes)])
    if r.get("per_fold"):
        lines += ["", "Per fold:", ""]
        lines += _table(
            ["fold", "images", "patients", "accuracy", "balanced acc.", "macro F1", "ROC-AUC ovr"],
            [
                [
                    f["fold"],
                    f["n_images"],
                    f["n_patients"],
                    _f(f["accuracy"]),
                    _f(f["balanced_accuracy"]),
                    _f(f["macro_f1"]),
                    _f(f["roc_auc_ovr"]),
                ]
                for f in r["per_fold"]
            ],
        )
    if m["notes"]:
        lines += [""] + [f"- Note: {n}" for n in m["notes"]]
    return lines


def _diff_cell(c: dict, key: str) -> str:
    d = c.get(key)
    if not d:
        return ""
    if c.get("ci_note"):
        return f"{_signed(d['diff'])} (CI n/a)"
    return f"{_signed(d['diff'])} [{_signed(d['ci_low'])}, {_signed(d['ci_high'])}]"


def _p_cell(d: dict | None) -> str:
    if not d or d.get("p_value") is None or math.isnan(_num(d.get("p_value"))):
        return "n/a"
    return f"{_p(d.get('p_holm'))} (raw {_p(d['p_value'])})"


def _p(x) -> str:
    x = _num(x)
    return "NaN" if math.isnan(x) else "<0.001" if x < 0.001 else f"{x:.3f}"


def _answer(metrics: dict, compare_to: str) -> list[str]:
    """'Hybrid vs each backbone', per head: paired patient-clustered bootstrap differences."""
    L = [f"## The answer: {compare_to} vs each backbone", ""]
    comps = metrics["comparisons"]
    if not comps:
        have = sorted({r["features"] for r in metrics["results"]})
        L.append(
            f"Nothing to compare: this run has no '{compare_to}' features set evaluated beside "
            f"another one on the same images (features: {', '.join(map(str, have))})."
        )
        return L + [""]
    L.append(
        f"Difference {compare_to} minus the other features set, same head, same images: the "
        f"paired, patient-clustered bootstrap ({metrics['n_boot']} resamples of patients; both "
        f"models scored on each resample) gives the {int(100 * metrics['ci_level'])}% CI. "
        "p-values are **Holm-adjusted** across every test of one evaluation (all comparisons x "
        "heads x {balanced accuracy, ROC-AUC, McNemar}); the raw value is in brackets. McNemar "
        "is the clustered test (Durkalski 2003: patients are the clusters). A positive "
        f"difference favours {compare_to}."
    )
    for evaluation in ("test", "cv"):
        sel = [c for c in comps if c["evaluation"] == evaluation]
        if not sel:
            continue
        L += ["", f"### {EVAL_LABEL[evaluation]}", ""]
        rows = []
        for c in sorted(sel, key=lambda c: (str(c["head"]), str(c["b"]))):
            rows.append(
                [
                    c["head"],
                    f"{c['a']} vs {c['b']}" + (" (optimistic)" if c.get("optimistic") else ""),
                    f"{c['n_images']} ({c['n_patients']})",
                    _diff_cell(c, "balanced_accuracy"),
                    _p_cell(c.get("balanced_accuracy")),
                    _diff_cell(c, "roc_auc_ovr"),
                    _p_cell(c.get("roc_auc_ovr")),
                    _p_cell(c.get("mcnemar")),
                ]
            )
        L += _table(
            [
                "head",
                "comparison",
                "images (patients)",
                "Δ balanced accuracy [CI]",
                "p Holm",
                "Δ ROC-AUC ovr [CI]",
                "p Holm",
                "clustered McNemar p Holm",
            ],
            rows,
        )
        L.append("")
        withheld = sorted(
            {c["ci_note"].removeprefix("n/a (").removesuffix(")") for c in sel if c.get("ci_note")}
        )
        if withheld:
            L.append(
                f"- CI and p n/a: {'; '.join(withheld)} on the shared images, so no interval or "
                "test is given."
            )
        for key, label in (("balanced_accuracy", "Balanced accuracy"), ("roc_auc_ovr", "ROC-AUC")):
            better, worse, unclear, untested = _verdict(sel, key)
            L.append(
                f"- {label}, {EVAL_LABEL[evaluation]}: {compare_to} better in {better}, worse in "
                f"{worse}, no difference shown in {unclear}"
                + (f", not tested (too few patients) in {untested}" if untested else "")
                + f" of {len(sel)} comparison(s) (Holm-adjusted p < 0.05; 'no difference shown' "
                "is not 'equal')."
            )
    return L + [""]


def _verdict(comparisons: list[dict], key: str, alpha: float = 0.05) -> tuple[int, ...]:
    """(better, worse, no difference shown, not tested) at Holm-adjusted p < ``alpha``."""
    better = worse = unclear = untested = 0
    for c in comparisons:
        d = c.get(key) or {}
        p = _num(d.get("p_holm"))
        if c.get("ci_note") or math.isnan(p):
            untested += 1
        elif p < alpha and d["diff"] != 0:
            better += d["diff"] > 0
            worse += d["diff"] < 0
        else:
            unclear += 1
    return better, worse, unclear, untested


def _params_text(params: str) -> str:
    try:
        d = json.loads(params)
    except (TypeError, ValueError):
        return str(params)
    if not isinstance(d, dict):
        return str(d)
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "(defaults)"


def _tuning_section(config: dict, tuning: pd.DataFrame | None) -> list[str]:
    if tuning is None:
        if config.get("tune") == "grid":
            return ["## Tuning", "", f"config.json says tune=grid but {TUNING} is missing.", ""]
        if config.get("tune"):
            return ["## Tuning", "", f"tune={config['tune']}: fixed head defaults, no tuning.", ""]
        return []
    chosen = tuning[tuning["chosen"].astype(str).str.lower().isin(("true", "1"))]
    L = ["## Tuning (chosen hyperparameters, from tuning.csv)", ""]
    L.append(
        f"Nested patient-grouped CV: every head tuned inside each outer fold by an inner CV "
        f"(inner folds: {config.get('inner_cv', '?')}, metric: "
        f"{config.get('tune_metric', 'balanced_accuracy')}); fold `test` = the final refit on the "
        f"whole training part. {len(tuning)} grid points evaluated; all are in `{TUNING}`."
    )
    L.append("")

    def fold_key(v):
        return (1, 0) if str(v) == "test" else (0, int(v) if str(v).isdigit() else 0)

    rows = []
    for (features, head), g in chosen.groupby(["features", "head"], sort=False):
        g = g.sort_values("fold", key=lambda s: s.map(fold_key))
        cells = [
            f"{fold}: {_params_text(params)} ({_f(_num(score))})"
            for fold, params, score in zip(g["fold"], g["params"], g["inner_score"], strict=True)
        ]
        rows.append([features, head, "; ".join(cells)])
    L += _table(["features", "head", "fold: chosen params (inner score)"], rows)
    return L + [""]


def _leaderboard_rows(results: list[dict], positive: str) -> list[list]:
    return [
        [
            r["features"],
            r["head"],
            r["evaluation"],
            "" if r.get("rank") is None else r["rank"],
            r["n_images"],
            r["n_patients"],
            _f(r["majority_baseline"]),
            _f(r["metrics"]["accuracy"]) + _ci(r, "accuracy"),
            _f(r["metrics"]["balanced_accuracy"]) + _ci(r, "balanced_accuracy"),
            _f(r["metrics"]["macro_f1"]) + _ci(r, "macro_f1"),
            _f(r["metrics"]["roc_auc_ovr"]) + _ci(r, "roc_auc_ovr"),
            _f(r["metrics"]["roc_auc_pos_vs_rest"]) + _ci(r, "roc_auc_pos_vs_rest"),
            "**yes**" if r.get("optimistic") else "",
            r.get("ci_note") or "",
        ]
        for r in results
    ]


def _markdown(config, metrics, audit, checks, figures, data_summary, tuning=None) -> str:
    classes = metrics["classes"]
    compare_to = metrics.get("compare_to", "hybrid")
    L = ["# featmammo run report", ""]
    L.append(
        "**Read this first** (also in metrics.json `caveats`/`warnings` and under every figure):"
    )
    L.append("")
    L += [f"- {line}" for line in caveat_lines(config)]
    L.append(f"- {source_statement(config)[0]}")
    L += [f"- Warning: {w}" for w in metrics.get("warnings") or []]
    if config.get("notes"):
        L.append(f"- The run recorded {len(config['notes'])} note(s): see Notes at the end.")
    L.append("")
    L.append(
        "Every number below is recomputed from `predictions.csv` by "
        "`featmammo.report.write_report`; "
        "CIs are patient-clustered percentile bootstrap intervals "
        f"({metrics['n_boot']} resamples of patients, seed {metrics['seed']}, "
        f"{int(100 * metrics['ci_level'])}%), given only where every class has at least "
        f"{metrics['min_patients_per_class']} patients (fewer clusters make an interval that "
        "looks precise and is not). Decision rule: "
        f"{metrics['decision_rule']}."
    )
    L.append("")
    L += _answer(metrics, compare_to)
    L += ["## Setup", ""]
    for st in config.get("stores") or []:
        L.append(f"- store: `{st.get('path')}` (fingerprint {st.get('fingerprint')})")
    for key in (
        "command", "features", "heads", "classes", "cv", "test_split", "tune", "tune_metric",
        "inner_cv", "seed", "threshold",
    ):  # fmt: skip
        if key in config:
            value = config[key]
            value = ", ".join(map(str, value)) if isinstance(value, list) else value
            L.append(f"- {key}: {value}")
    if config.get("dropped_rows"):
        L.append(f"- rows dropped by the class scheme: {config['dropped_rows']}")
    L.append("")
    L += _tuning_section(config, tuning)
    L += ["## Data", ""]
    if config.get("n_images_in_stores") is not None:
        n_store = config["n_images_in_stores"]
        n_excl = len(
            {e for rec in config.get("excluded_rows") or [] for e in rec.get("examples", [])}
        )
        n_missing = sum(
            rec.get("failed", 0) + rec.get("pending", 0) + rec.get("non_finite", 0)
            for rec in config.get("excluded_rows") or []
        )
        n_drop = sum((config.get("dropped_rows") or {}).values())
        used = config.get("n_images")
        L.append(
            f"Images in the store(s): {n_store}; without a usable embedding (failed, pending or "
            f"non-finite, per store and backbone): {n_missing}; dropped by the class scheme: "
            f"{n_drop}; used: {used}." + (" Details under Notes." if n_excl or n_missing else "")
        )
        L.append("")
    L += _table(
        ["part", "images", "patients", *classes],
        [
            [d["part"], d["images"], d["patients"], *[d["per_class"].get(c, 0) for c in classes]]
            for d in data_summary
        ],
    )
    if config.get("train_class_counts"):
        counts = ", ".join(f"{c} {n}" for c, n in config["train_class_counts"].items())
        L += ["", f"Training class counts (the majority baselines' source): {counts}."]
    L += ["", "## Leakage and source audit", ""]
    L.append(source_statement(config)[0])
    L.append("")
    L.append("Recomputed from the `fold` and `patient_id` columns of predictions.csv:")
    L.append("")
    with_val = any(a["validation_patients"] for a in audit)
    L += _table(
        [
            "features",
            "head",
            "folds",
            "CV patients",
            *(["validation patients"] if with_val else []),
            "test patients",
            "patients in >1 fold",
            "patients in train and test",
            "ok",
        ],
        [
            [
                a["features"],
                a["head"],
                a["n_folds"],
                a["cv_patients"],
                *([a["validation_patients"]] if with_val else []),
                a["test_patients"],
                a["patients_across_folds"],
                a["patients_train_and_test"],
                "yes" if a["ok"] else "**NO**",
            ]
            for a in audit
        ],
    )
    split_audit = config.get("split_audit")
    if split_audit:
        L += ["", "Split audit of the input rows at fit time (featmammo.splits.audit):", ""]
        L.append("```json")
        L.append(json.dumps(split_audit, indent=1, default=str)[:4000])
        L.append("```")
    header = [
        "features",
        "head",
        "eval",
        "rank",
        "images",
        "patients",
        "majority baseline",
        "accuracy",
        "balanced accuracy",
        "macro F1",
        "ROC-AUC ovr",
        f"AUC {metrics['positive_class']}-vs-rest",
        "optimistic",
        "CI",
    ]
    honest = [r for r in metrics["results"] if r["evaluation"] in ev.HONEST_EVALUATIONS]
    validation = [r for r in metrics["results"] if r["evaluation"] == "validation"]
    L += ["", "## Leaderboard", ""]
    L.append(
        "Ranked by balanced accuracy within each evaluation (held-out test first). Rows marked "
        "(optimistic) were evaluated on images their embeddings trained on."
    )
    L.append("")
    L += _table(header, _leaderboard_rows(honest, metrics["positive_class"]))
    if validation:
        L += ["", "## HybridNet validation rows (not an estimate)", ""]
        L.append(
            "These images chose the stopping epoch (early stopping), so their numbers are "
            "optimistic: they are not ranked, enter no comparison, and are not pooled "
            "out-of-fold CV. Their majority baseline comes from the training class counts."
        )
        L.append("")
        L += _table(header, _leaderboard_rows(validation, metrics["positive_class"]))
    L += ["", "## Per-model tables (the paper's layout, with what it leaves out beside it)", ""]
    for r in metrics["results"]:
        L += [f"### {_name(r)} / {r['evaluation']}", "", f"*{EVAL_LABEL[r['evaluation']]}*", ""]
        L += _paper_table(r, classes)
        L.append("")
    L += ["## Internal consistency (each figure recomputed a second way)", ""]
    L += _table(
        ["check", "result", "detail"],
        [
            [
                c["check"],
                "note" if c.get("info") else "pass" if c["ok"] else "**FAIL**",
                c["detail"],
            ]
            for c in checks
        ],
    )
    if figures:
        L += ["", "## Figures", ""]
        for name, path in figures.items():
            L.append(f"![{name}]({path})")
    notes = metrics.get("notes") or []
    if notes:
        L += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------------------------------
# figures


def _figures(
    run_dir: Path, predictions, metrics, classes, max_images: int, footer: list[str]
) -> tuple[dict, list]:
    from . import plots

    fig_dir = run_dir / FIGURES
    fig_dir.mkdir(exist_ok=True)
    figures, notes = {}, []
    positive = metrics["positive_class"]
    pcol = f"p_{positive}"
    evaluation_col = predictions["fold"].astype(str).map(ev.evaluation_of)
    for evaluation in ("cv", "test", "validation"):
        results = [r for r in metrics["results"] if r["evaluation"] == evaluation]
        if not results:
            continue
        label = EVAL_LABEL[evaluation]
        rows = predictions[evaluation_col == evaluation]
        n_img, n_pat = rows["image_id"].nunique(), rows["patient_id"].nunique()
        title = f"{label}, {n_img} images of {n_pat} patients"
        panels = [(_name(r), r["metrics"]["confusion_matrix"]) for r in results]
        figures[f"confusion matrices, {label}"] = plots.confusion_matrices(
            panels,
            classes,
            fig_dir / f"confusion_{evaluation}.png",
            title=f"Confusion matrices (argmax), {title}",
            footer=footer,
        )
        curves, pr_curves = [], []
        for r in results:
            g = _rows_of(predictions, r)
            y = g["y_true"].astype(str).to_numpy() == positive
            auc = r["metrics"]["roc_auc_pos_vs_rest"]
            ap = r["metrics"]["pr_auc_pos_vs_rest"]
            curves.append((f"{_name(r)} (AUC {_f(auc)})", y, g[pcol].to_numpy()))
            pr_curves.append((f"{_name(r)} (AP {_f(ap)})", y, g[pcol].to_numpy()))
        figures[f"ROC, {label}"] = plots.roc_curves(
            curves, positive, fig_dir / f"roc_{evaluation}.png", title=title, footer=footer
        )
        figures[f"precision-recall, {label}"] = plots.pr_curves(
            pr_curves, positive, fig_dir / f"pr_{evaluation}.png", title=title, footer=footer
        )
        figures[f"calibration, {label}"] = plots.calibration(
            [(_name(r), y, s) for r, (_, y, s) in zip(results, curves, strict=True)],
            positive,
            fig_dir / f"calibration_{evaluation}.png",
            title=title,
            footer=footer,
        )
    grid, grid_notes, grid_name = _test_grid(
        run_dir, predictions, metrics, classes, max_images, footer
    )
    notes += grid_notes
    if grid is not None:
        figures[grid_name] = grid
    return {k: str(Path(v).relative_to(run_dir)) for k, v in figures.items()}, notes


def grid_model(metrics: dict) -> tuple[dict | None, str]:
    """The model whose test images the grid shows: best CV balanced accuracy (never chosen by
    its test score); a run without CV rows qualifies only with a single model."""
    tests = [r for r in metrics["results"] if r["evaluation"] == "test"]
    if not tests:
        return None, "no held-out test predictions: no test-image grid"
    with_test = {(r["features"], r["head"]) for r in tests}
    cv = [
        r
        for r in metrics["results"]
        if r["evaluation"] == "cv" and (r["features"], r["head"]) in with_test
    ]
    if cv:
        best = max(cv, key=lambda r: np.nan_to_num(_num(r["metrics"]["balanced_accuracy"]), nan=-1))
        chosen = next(
            r for r in tests if (r["features"], r["head"]) == (best["features"], best["head"])
        )
        return chosen, "best CV balanced accuracy"
    if len(tests) == 1:
        return tests[0], "the run's only model"
    return None, "no CV rows to choose a model by (never by test score): no test-image grid"


def _test_grid(run_dir: Path, predictions, metrics, classes, max_images: int, footer):
    if max_images <= 0:
        return None, [], ""
    best, why = grid_model(metrics)
    if best is None:
        return None, [why], ""
    images_csv = run_dir / IMAGES
    if not images_csv.exists():
        return None, [f"{IMAGES} not found: no test-image grid"], ""
    from . import plots

    paths = pd.read_csv(images_csv, dtype=str, keep_default_na=False)
    path_of = {i: p for i, p in zip(paths["image_id"], paths["path"], strict=False) if p}
    if not path_of:
        return None, [f"{IMAGES} records no image paths (e.g. hashed ids): no test-image grid"], ""
    g = _rows_of(predictions, best)
    # a seeded pick that shows every true class, right and wrong predictions
    rng = np.random.default_rng(metrics["seed"])
    order = rng.permutation(len(g))
    g = g.iloc[order]
    per_class = max(1, max_images // len(classes))
    picked = pd.concat([g[g["y_true"] == c].head(per_class) for c in classes])
    if len(picked) < max_images:
        rest = g[~g["image_id"].isin(picked["image_id"])].head(max_images - len(picked))
        picked = pd.concat([picked, rest])
    notes, items = [], []
    from .io import read_image

    for _, row in picked.head(max_images).iterrows():
        path = path_of.get(row["image_id"], "")
        image = None
        if path:
            try:
                img = read_image(path)
                image = plots.thumbnail(img.pixels, img.max_value)
            except Exception as exc:  # noqa: BLE001 - any unreadable image is skipped with a note
                notes.append(f"test-image grid: {row['image_id']} ({path}) skipped: {exc}")
        else:
            notes.append(f"test-image grid: no path recorded for {row['image_id']}")
        p = float(row[f"p_{row['y_pred']}"])
        items.append(
            {
                "image": image,
                "caption": f"{row['image_id'][:24]}\ntrue {row['y_true']} / pred {row['y_pred']}"
                f"\nP({row['y_pred']})={p:.2f}",
                "correct": row["y_true"] == row["y_pred"],
            }
        )
    path = plots.image_grid(
        items,
        run_dir / FIGURES / "test_images.png",
        title=f"held-out test, {_name(best)} (chosen by {why})",
        footer=footer,
    )
    return path, notes, f"test images ({_name(best)}, chosen by {why})"


# --------------------------------------------------------------------------------------------------
# entry point


def _data_summary(predictions: pd.DataFrame, classes) -> list[dict]:
    """Images/patients/classes per part, counted on unique image ids over all models."""
    out = []
    evaluation = predictions["fold"].astype(str).map(ev.evaluation_of)
    for part, name in (
        ("training (CV)", "cv"),
        ("validation (early stopping)", "validation"),
        ("test", "test"),
    ):
        rows = predictions[evaluation == name].drop_duplicates("image_id")
        if not len(rows):
            continue
        counts = rows["y_true"].value_counts()
        out.append(
            {
                "part": part,
                "images": len(rows),
                "patients": int(rows["patient_id"].nunique()),
                "per_class": {c: int(counts.get(c, 0)) for c in classes},
            }
        )
    return out


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def read_config(run_dir) -> dict:
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise ConfigError(f"{path}: missing (it records the classes of the run)")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_report(
    run_dir,
    *,
    n_boot: int | None = None,
    seed: int | None = None,
    threshold: float | None = None,
    figures: bool = True,
    max_images: int = 16,
    min_patients_per_class: int = ev.MIN_PATIENTS_PER_CLASS,
    compare_to: str = "hybrid",
) -> Path:
    """Recompute leaderboard.csv, metrics.json, report.md and figures from predictions.csv.

    ``config.json`` supplies the classes, the defaults of ``n_boot``, ``seed`` and ``threshold``
    (the arguments override them), ``train_class_counts`` (majority baselines),
    ``optimistic_features``, ``caveats``, ``split_audit`` and ``notes``; ``tuning.csv`` (when
    present) the chosen hyperparameters. config.json is read, never rewritten. After writing,
    :func:`verify` re-reads the files and recomputes every figure with scikit-learn. Returns the
    path of report.md.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    classes = config.get("classes")
    if not classes:
        raise ConfigError(f"{run_dir / CONFIG}: no 'classes'")
    n_boot = int(config.get("n_boot", 1000) if n_boot is None else n_boot)
    seed = int(config.get("seed", 0) if seed is None else seed)
    threshold = float(config.get("threshold", 0.5) if threshold is None else threshold)
    pred_path = run_dir / PREDICTIONS
    if not pred_path.exists():
        raise ConfigError(f"{pred_path}: missing; nothing to report")
    predictions = ev.read_predictions(pred_path)
    if predictions.empty:
        raise ConfigError(f"{pred_path}: no rows")
    tuning = read_tuning(run_dir)
    leaderboard, metrics = ev.evaluate_predictions(
        predictions,
        classes,
        n_boot=n_boot,
        seed=seed,
        threshold=threshold,
        train_counts=config.get("train_class_counts"),
        compare_to=compare_to,
        optimistic_features=config.get("optimistic_features") or (),
        min_patients_per_class=min_patients_per_class,
    )
    metrics["compare_to"] = compare_to
    ranks = {
        (str(f), str(h), e): rk
        for f, h, e, rk in zip(
            leaderboard["features"], leaderboard["head"], leaderboard["evaluation"],
            leaderboard["rank"], strict=True,
        )
    }  # fmt: skip
    for r in metrics["results"]:
        rk = ranks.get((str(r["features"]), str(r["head"]), r["evaluation"]))
        r["rank"] = None if rk is None or pd.isna(rk) else int(rk)
    metrics["caveats"] = config.get("caveats")
    metrics["source_confounding"] = source_statement(config)[0]
    metrics["train_class_counts"] = config.get("train_class_counts")
    lb_path = run_dir / LEADERBOARD
    atomic_write(lb_path, lambda f: leaderboard.to_csv(f, index=False))
    metrics_path = run_dir / METRICS
    _write_text(metrics_path, json.dumps(_jsonable(metrics), indent=1, allow_nan=False))
    audit = fold_audit(predictions)
    for a in audit:
        if not a["ok"]:
            log.warning(
                "leakage audit %s/%s: %d patient(s) in more than one fold, %d in train and test",
                a["features"],
                a["head"],
                a["patients_across_folds"],
                a["patients_train_and_test"],
            )
    checks = verify(run_dir)  # the files as written, re-read and recomputed with scikit-learn
    for c in checks:
        if not c["ok"]:
            log.warning("consistency check failed: %s (%s)", c["check"], c["detail"])
    metrics["warnings"] = report_warnings(config, metrics, audit, checks)
    for w in metrics["warnings"]:
        log.warning("%s: %s", run_dir.name, w)
    metrics["consistency"] = checks
    footer = footer_text(config, footer_warnings(config, metrics))
    fig_paths, fig_notes = (
        _figures(run_dir, predictions, metrics, classes, max_images, footer)
        if figures
        else ({}, [])
    )
    metrics["audit"] = audit
    metrics["consistency"] = checks
    metrics["data"] = _data_summary(predictions, classes)
    metrics["figures"] = fig_paths
    # the run's own notes (e.g. train's caveat) survive: config.json is never rewritten here
    metrics["notes"] = [*(config.get("notes") or []), *fig_notes]
    _write_text(metrics_path, json.dumps(_jsonable(metrics), indent=1, allow_nan=False))
    text = _markdown(config, metrics, audit, checks, fig_paths, metrics["data"], tuning)
    out = run_dir / REPORT
    _write_text(out, text)
    log.info("report written: %s", out)
    return out
