"""predictions.csv -> leaderboard + metrics: every features x head x evaluation of a predictions
table, with baselines, CIs and the paired comparisons against one features set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .bootstrap import MIN_PATIENTS_PER_CLASS, bootstrap_metrics, ci_note, patients_per_class
from .kernels import (
    DECISION_RULE,
    SCALAR_METRICS,
    compute_metrics,
    majority_baseline,
    positive_class,
)
from .paired import ADJUSTMENT, PAIRED_METRICS, holm_adjust, paired_comparison

TEST_FOLD = "test"
#: fold label of HybridNet's early-stopping rows (``featmammo train``): they chose the epoch
VALIDATION_FOLD = "validation"
#: evaluations that estimate performance (ranked and compared); ``validation`` is neither
HONEST_EVALUATIONS = ("cv", "test")

# --------------------------------------------------------------------------------------------------
# predictions.csv -> leaderboard + metrics


def read_predictions(path) -> pd.DataFrame:
    """Read predictions.csv with identifiers and fold as strings (never re-typed by pandas)."""
    df = pd.read_csv(
        path,
        dtype={
            "image_id": str,
            "patient_id": str,
            "fold": str,
            "features": str,
            "head": str,
            "y_true": str,
            "y_pred": str,
        },
        keep_default_na=False,
    )
    missing = [
        c
        for c in ("image_id", "patient_id", "fold", "features", "head", "y_true", "y_pred")
        if c not in df.columns
    ]
    if missing:
        raise ConfigError(f"{path}: predictions table lacks columns {missing}")
    return df


def _check_columns(predictions: pd.DataFrame, classes) -> list[str]:
    pcols = [f"p_{c}" for c in classes]
    missing = [c for c in pcols if c not in predictions.columns]
    if missing:
        raise ConfigError(
            f"predictions lack probability columns {missing} for classes {list(classes)}"
        )
    return pcols


def evaluation_of(fold) -> str:
    """``test`` / ``validation`` for those fold labels, ``cv`` for every other (a fold number)."""
    fold = str(fold)
    if fold == TEST_FOLD:
        return "test"
    if fold == VALIDATION_FOLD:
        return "validation"
    return "cv"


def _evaluation_rows(group: pd.DataFrame) -> dict[str, pd.DataFrame]:
    evaluation = group["fold"].astype(str).map(evaluation_of)
    out = {}
    for name in ("cv", "test", "validation"):
        rows = group[evaluation == name]
        if len(rows):
            out[name] = rows
    return out


def _counts_labels(train_counts: dict) -> list[str]:
    return [str(c) for c, n in train_counts.items() for _ in range(int(n))]


def _baseline(evaluation: str, rows: pd.DataFrame, cv_rows, classes, train_counts) -> dict:
    """Majority-class baseline from training labels, never from the evaluated rows' own labels.

    ``cv`` with K >= 2 folds: per fold, the majority of the other folds (that fold's training
    part). ``test`` and ``validation`` (and a single-fold ``cv``): the recorded training class
    counts (``config.json["train_class_counts"]``); for ``test`` without them, the K-fold CV rows
    (the whole training part in ``featmammo fit``). Otherwise NaN with ``majority_note`` saying
    why.
    """
    n_folds = 0 if cv_rows is None else cv_rows["fold"].astype(str).nunique()
    if evaluation == "cv" and n_folds >= 2:
        correct = 0
        majorities = set()
        for fold, part in rows.groupby(rows["fold"].astype(str), sort=True):
            train = rows.loc[rows["fold"].astype(str) != fold, "y_true"]
            bl = majority_baseline(train, part["y_true"], classes)
            majorities.add(bl["majority_class"])
            correct += bl["majority_baseline"] * len(part)
        name = majorities.pop() if len(majorities) == 1 else "/".join(sorted(majorities))
        return {
            "majority_class": name,
            "majority_baseline": correct / len(rows),
            "majority_source": "each fold's training part (the other folds)",
        }
    if train_counts:
        out = majority_baseline(_counts_labels(train_counts), rows["y_true"], classes)
        return {**out, "majority_source": "train_class_counts recorded in config.json"}
    if evaluation == "test" and n_folds >= 2:
        out = majority_baseline(cv_rows["y_true"], rows["y_true"], classes)
        return {**out, "majority_source": "the K-fold CV rows (the training part)"}
    return {
        "majority_class": None,
        "majority_baseline": math.nan,
        "majority_source": "unknown: config.json records no train_class_counts",
    }


def _per_fold(rows: pd.DataFrame, classes, pcols, threshold) -> list[dict]:
    out = []
    for fold, part in rows.groupby(rows["fold"].astype(str), sort=True):
        m = compute_metrics(
            part["y_true"],
            part["y_pred"],
            part[pcols].to_numpy(float),
            classes,
            threshold=threshold,
        )
        out.append(
            {
                "fold": fold,
                "n_images": m["n_images"],
                "n_patients": int(part["patient_id"].nunique()),
                **{k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr")},
            }
        )
    return out


def evaluate_predictions(
    predictions: pd.DataFrame,
    classes: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    threshold: float = 0.5,
    positive: str | None = None,
    level: float = 0.95,
    train_counts: dict | None = None,
    compare_to: str = "hybrid",
    optimistic_features: Sequence[str] = (),
    min_patients_per_class: int = MIN_PATIENTS_PER_CLASS,
) -> tuple[pd.DataFrame, dict]:
    """Leaderboard (one row per features x head x evaluation) and a metrics dict, from predictions.

    ``evaluation`` is ``cv`` (pooled out-of-fold rows: numbered folds), ``test`` or
    ``validation`` (HybridNet's early-stopping rows: they chose the epoch, so they are optimistic;
    they get no rank and enter no comparison). ``compare_to`` names the features set paired
    against every other features set with the same head, per honest evaluation; the p-values of
    one evaluation are Holm-adjusted together (``p_holm``). Rows of ``optimistic_features``
    (embeddings trained on the evaluated images) are marked ``optimistic``. A result whose
    smallest class has fewer than ``min_patients_per_class`` patients gets no CI (NaN) and a
    ``ci_note`` saying why.
    """
    classes = tuple(str(c) for c in classes)
    pcols = _check_columns(predictions, classes)
    positive = positive or positive_class(classes)
    optimistic_features = {str(f) for f in optimistic_features or ()}
    rows_out, results, groups = [], [], {}
    for (features, head), group in predictions.groupby(["features", "head"], sort=False):
        evals = _evaluation_rows(group)
        for evaluation, rows in evals.items():
            groups[(features, head, evaluation)] = rows
            m = compute_metrics(
                rows["y_true"],
                rows["y_pred"],
                rows[pcols].to_numpy(float),
                classes,
                threshold=threshold,
                positive=positive,
            )
            per_class_patients = patients_per_class(rows["y_true"], rows["patient_id"], classes)
            note = ci_note(per_class_patients, min_patients_per_class)
            ci = bootstrap_metrics(
                rows["y_true"],
                rows["y_pred"],
                rows[pcols].to_numpy(float),
                classes,
                rows["patient_id"],
                n_boot=0 if note else n_boot,
                seed=seed,
                level=level,
                threshold=threshold,
                positive=positive,
            )
            bl = _baseline(evaluation, rows, evals.get("cv"), classes, train_counts)
            n_patients = int(rows["patient_id"].nunique())
            optimistic = evaluation == "validation" or str(features) in optimistic_features
            row = {
                "features": features,
                "head": head,
                "evaluation": evaluation,
                "optimistic": optimistic,
                "n_images": m["n_images"],
                "n_patients": n_patients,
                "min_patients_per_class": min(per_class_patients.values()),
                "majority_class": bl["majority_class"],
                "majority_baseline": bl["majority_baseline"],
            }
            for key in SCALAR_METRICS:
                row[key] = m[key]
                if key in ci:
                    row[f"{key}_ci_low"] = ci[key]["low"]
                    row[f"{key}_ci_high"] = ci[key]["high"]
            row["ci_note"] = note
            row["positive_class"] = positive
            row["decision_rule"] = "argmax"
            row["threshold"] = threshold
            rows_out.append(row)
            result = {
                "features": features,
                "head": head,
                "evaluation": evaluation,
                "optimistic": optimistic,
                "n_images": m["n_images"],
                "n_patients": n_patients,
                "patients_per_class": per_class_patients,
                "ci_note": note,
                **bl,
                "metrics": m,
                "ci": ci,
            }
            if evaluation == "cv":
                result["per_fold"] = _per_fold(rows, classes, pcols, threshold)
            results.append(result)
    comparisons = []
    for (features, head, evaluation), rows in groups.items():
        if features != compare_to or evaluation not in HONEST_EVALUATIONS:
            continue
        for (other, head2, eval2), rows2 in groups.items():
            if head2 != head or eval2 != evaluation or other == features:
                continue
            cmp = paired_comparison(
                rows,
                rows2,
                classes,
                n_boot=n_boot,
                seed=seed,
                level=level,
                min_patients_per_class=min_patients_per_class,
            )
            comparisons.append(
                {
                    "a": features,
                    "b": other,
                    "head": head,
                    "evaluation": evaluation,
                    "optimistic": bool({str(features), str(other)} & optimistic_features),
                    **cmp,
                }
            )
    _adjust(comparisons)
    leaderboard = _rank(pd.DataFrame(rows_out))
    metrics = {
        "classes": list(classes),
        "positive_class": positive,
        "decision_rule": DECISION_RULE,
        "threshold": threshold,
        "threshold_use": (
            "only sensitivity_at_threshold / specificity_at_threshold (a second operating point "
            f"at P({positive}) >= threshold); every other figure follows the decision rule"
        ),
        "n_boot": n_boot,
        "seed": seed,
        "ci_level": level,
        "bootstrap": "patient-clustered percentile bootstrap (patients resampled with replacement)",
        "min_patients_per_class": min_patients_per_class,
        "ci_rule": (
            f"no CI (and no comparison p-value) where some class has fewer than "
            f"{min_patients_per_class} patients: ci_note says which"
        ),
        "multiple_comparisons": ADJUSTMENT,
        "optimistic_features": sorted(optimistic_features),
        "results": results,
        "comparisons": comparisons,
    }
    return leaderboard, metrics


def _adjust(comparisons: list[dict]) -> None:
    """Holm-adjust every p-value of one evaluation together (adds ``p_holm`` in place)."""
    for evaluation in HONEST_EVALUATIONS:
        slots = []
        for c in comparisons:
            if c["evaluation"] != evaluation:
                continue
            for key in PAIRED_METRICS:
                if key in c:
                    slots.append(c[key])
            if "mcnemar" in c:
                slots.append(c["mcnemar"])
        adjusted = holm_adjust([d["p_value"] for d in slots])
        for d, p in zip(slots, adjusted, strict=True):
            d["p_holm"] = p


def _rank(leaderboard: pd.DataFrame) -> pd.DataFrame:
    """Order: test, cv, validation; within one, balanced accuracy descending. ``rank`` (1 = best
    balanced accuracy) is given within test and within cv only: validation rows are not ranked."""
    if leaderboard.empty:
        return leaderboard
    order = {"test": 0, "cv": 1, "validation": 2}
    lb = leaderboard.assign(_o=leaderboard["evaluation"].map(order))
    lb = lb.sort_values(["_o", "balanced_accuracy"], ascending=[True, False], kind="stable")
    lb = lb.drop(columns="_o").reset_index(drop=True)
    rank = pd.Series(np.nan, index=lb.index)
    for evaluation in HONEST_EVALUATIONS:
        sel = lb["evaluation"] == evaluation
        rank[sel] = lb.loc[sel, "balanced_accuracy"].rank(ascending=False, method="min")
    lb.insert(3, "rank", rank.astype("Int64"))
    return lb
