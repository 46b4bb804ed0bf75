"""predictions.csv -> leaderboard + metrics: every features x head x evaluation of a predictions
table (at one level: images, breasts or exams), with baselines, CIs, screening metrics, the
CV-based ranking and the paired comparisons (:mod:`.comparisons`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .bootstrap import MIN_PATIENTS_PER_CLASS, bootstrap_metrics, ci_note, patients_per_class
from .kernels import (
    CI_METRICS,
    DECISION_RULE,
    DEFAULT_AT_SPECIFICITY,
    SCALAR_METRICS,
    check_specificities,
    compute_metrics,
    majority_baseline,
    positive_class,
    screening_metric_names,
)
from .paired import ADJUSTMENT

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
    ci_level: float = 0.95,
    train_counts: dict | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    compare_to: str | None = None,
    optimistic_features: Sequence[str] = (),
    min_patients_per_class: int = MIN_PATIENTS_PER_CLASS,
    at_specificity: Sequence[float] = DEFAULT_AT_SPECIFICITY,
    level: str = "image",
    cv_method: str = "corrected-t",
    comparison_predictions: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Leaderboard (one row per features x head x evaluation) and a metrics dict, from predictions.

    ``evaluation`` is ``cv`` (pooled out-of-fold rows: numbered folds), ``test`` or
    ``validation`` (HybridNet's early-stopping rows: they chose the epoch, so they are optimistic;
    they get no rank and enter no comparison). ``level`` names the units of ``predictions``
    (``image``, or ``breast`` / ``exam`` rows from :mod:`.levels`); the leaderboard and every
    result carry it. ``pairs`` (features_a, features_b) are compared per head by
    :func:`featmammo.evaluate.comparisons.compare_predictions` (default: each fused features set
    against each single one; ``compare_to`` = one features set against every other); the table is
    ``metrics["comparisons"]`` (rows of comparisons.csv). Rows of ``optimistic_features``
    (embeddings trained on the evaluated images) are marked ``optimistic``: never ranked, never
    tested. ``rank`` follows the CV balanced accuracy of each model (features x head), the
    evaluation used for choosing; a test row carries its model's CV rank; nothing is ranked by
    its test score. ``constant_predictions`` says why a result's predictions are (nearly)
    constant (:func:`~featmammo.evaluate.comparisons.constant_reason`), empty otherwise. A result
    whose smallest class has fewer than ``min_patients_per_class`` patients gets no CI (NaN) and a
    ``ci_note`` saying why. ``comparison_predictions``: the rows the comparisons run on when they
    differ from ``predictions`` (CV repeats: a ``repeat`` column; default ``predictions``).
    """
    from .comparisons import compare_predictions, constant_reason, default_pairs

    classes = tuple(str(c) for c in classes)
    pcols = _check_columns(predictions, classes)
    positive = positive or positive_class(classes)
    at_specificity = check_specificities(at_specificity)
    screening = screening_metric_names(at_specificity)
    ci_metrics = (*CI_METRICS, *screening)
    optimistic_features = {str(f) for f in optimistic_features or ()}
    rows_out, results = [], []
    for (features, head), group in predictions.groupby(["features", "head"], sort=False):
        evals = _evaluation_rows(group)
        for evaluation, rows in evals.items():
            proba = rows[pcols].to_numpy(float)
            m = compute_metrics(
                rows["y_true"], rows["y_pred"], proba, classes, threshold=threshold,
                positive=positive, at_specificity=at_specificity,
            )  # fmt: skip
            per_class_patients = patients_per_class(rows["y_true"], rows["patient_id"], classes)
            note = ci_note(per_class_patients, min_patients_per_class)
            ci = bootstrap_metrics(
                rows["y_true"], rows["y_pred"], proba, classes, rows["patient_id"],
                n_boot=0 if note else n_boot, seed=seed, level=ci_level, threshold=threshold,
                positive=positive, metrics=ci_metrics, at_specificity=at_specificity,
            )  # fmt: skip
            bl = _baseline(evaluation, rows, evals.get("cv"), classes, train_counts)
            n_patients = int(rows["patient_id"].nunique())
            optimistic = evaluation == "validation" or str(features) in optimistic_features
            constant = constant_reason(rows["y_pred"], proba)
            row = {
                "features": features,
                "head": head,
                "evaluation": evaluation,
                "level": level,
                "optimistic": optimistic,
                "n_images": m["n_images"],
                "n_patients": n_patients,
                "min_patients_per_class": min(per_class_patients.values()),
                "majority_class": bl["majority_class"],
                "majority_baseline": bl["majority_baseline"],
            }
            for key in (*SCALAR_METRICS, *screening):
                row[key] = m[key]
                if key in ci:
                    row[f"{key}_ci_low"] = ci[key]["low"]
                    row[f"{key}_ci_high"] = ci[key]["high"]
            row["ci_note"] = note
            row["constant_predictions"] = constant
            row["positive_class"] = positive
            row["decision_rule"] = "argmax"
            row["threshold"] = threshold
            rows_out.append(row)
            result = {
                "features": features,
                "head": head,
                "evaluation": evaluation,
                "level": level,
                "optimistic": optimistic,
                "constant_predictions": constant,
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
    honest = predictions[predictions["fold"].astype(str).map(evaluation_of) != "validation"]
    present = [str(f) for f in dict.fromkeys(honest["features"])]
    if pairs is None:
        pairs = (
            [(compare_to, f) for f in present if f != compare_to]
            if compare_to is not None and compare_to in present
            else []
            if compare_to is not None
            else default_pairs(present)
        )
    pairs = [(str(a), str(b)) for a, b in pairs]
    comparisons = compare_predictions(
        predictions if comparison_predictions is None else comparison_predictions,
        pairs, classes, level=level, n_boot=n_boot, seed=seed, ci_level=ci_level,
        min_patients_per_class=min_patients_per_class, positive=positive, cv_method=cv_method,
        optimistic_features=sorted(optimistic_features),
    )  # fmt: skip
    leaderboard = _rank(pd.DataFrame(rows_out))
    metrics = {
        "classes": list(classes),
        "level": level,
        "positive_class": positive,
        "decision_rule": DECISION_RULE,
        "threshold": threshold,
        "threshold_use": (
            "only sensitivity_at_threshold / specificity_at_threshold (a second operating point "
            f"at P({positive}) >= threshold); every other figure follows the decision rule"
        ),
        "at_specificity": list(at_specificity),
        "screening_metrics": list(screening),
        "n_boot": n_boot,
        "seed": seed,
        "ci_level": ci_level,
        "bootstrap": "patient-clustered percentile bootstrap (patients resampled with replacement)",
        "min_patients_per_class": min_patients_per_class,
        "ci_rule": (
            f"no CI (and no comparison p-value) where some class has fewer than "
            f"{min_patients_per_class} patients: ci_note says which"
        ),
        "multiple_comparisons": ADJUSTMENT,
        "ranking": RANKING,
        "optimistic_features": sorted(optimistic_features),
        "results": results,
        "comparisons": comparisons.to_dict(orient="records"),
        "comparisons_config": {
            "pairs": [list(p) for p in pairs],
            "n_boot": n_boot,
            "seed": seed,
            "ci_level": ci_level,
            "min_patients_per_class": min_patients_per_class,
            "positive": positive,
            "cv_method": cv_method,
            "optimistic_features": sorted(optimistic_features),
        },
    }
    return leaderboard, metrics


#: how the leaderboard ranks (metrics.json ``ranking``)
RANKING = (
    "rank = position of each model (features x head) by its CV balanced accuracy (pooled "
    "out-of-fold), the evaluation used for choosing; a test row carries its model's CV rank and "
    "nothing is ranked by a test score; optimistic rows (embeddings trained on the evaluated "
    "images, HybridNet validation rows) are not ranked; without CV rows nothing is ranked"
)


def _rank(leaderboard: pd.DataFrame) -> pd.DataFrame:
    """Order: cv, test, validation; within one, by the model's CV rank (then balanced accuracy).

    ``rank`` (1 = best CV balanced accuracy) is computed over the non-optimistic cv rows and
    copied to the same model's test row."""
    if leaderboard.empty:
        return leaderboard
    lb = leaderboard.reset_index(drop=True)
    cv = lb[(lb["evaluation"] == "cv") & ~lb["optimistic"].astype(bool)]
    cv_rank = cv["balanced_accuracy"].rank(ascending=False, method="min")
    by_model = {
        (str(f), str(h)): r for f, h, r in zip(cv["features"], cv["head"], cv_rank, strict=True)
    }
    rank = pd.Series(
        [
            by_model.get((str(f), str(h))) if e in HONEST_EVALUATIONS and not o else np.nan
            for f, h, e, o in zip(
                lb["features"], lb["head"], lb["evaluation"], lb["optimistic"].astype(bool),
                strict=True,
            )
        ],
        index=lb.index,
        dtype=float,
    )  # fmt: skip
    order = {"cv": 0, "test": 1, "validation": 2}
    lb = lb.assign(_o=lb["evaluation"].map(order), _r=rank.fillna(np.inf))
    lb.insert(3, "rank", rank.astype("Int64"))
    lb = lb.sort_values(["_o", "_r", "balanced_accuracy"], ascending=[True, True, False],
                        kind="stable")  # fmt: skip
    return lb.drop(columns=["_o", "_r"]).reset_index(drop=True)
