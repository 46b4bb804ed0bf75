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
from pathlib import Path

import pandas as pd

from .. import evaluate as ev
from ..atomic import atomic_write
from ..errors import ConfigError
from .caveats import (
    EVAL_LABEL,
    caveat_lines,
    footer_text,
    footer_warnings,
    report_warnings,
    source_statement,
)
from .checks import SKLEARN_CHECKS, TOL, consistency_checks, fold_audit, verify
from .figures import _figures, existing_figures, grid_model
from .files import (
    COMPARISONS,
    CONFIG,
    FIGURES,
    IMAGES,
    LEADERBOARD,
    METRICS,
    PREDICTIONS,
    REPORT,
    TUNING,
    _jsonable,
    _write_text,
    read_config,
    read_tuning,
)
from .inputs import comparison_frames, level_frames, report_pairs
from .markdown import _markdown, tuning_notes

# featmammo.report keeps every name it had before the split into files (the run folder's files),
# checks (audit, consistency, verify), caveats, markdown (report.md) and figures
__all__ = [
    "COMPARISONS", "CONFIG", "EVAL_LABEL", "FIGURES", "IMAGES", "LEADERBOARD", "METRICS",
    "PREDICTIONS", "REPORT",
    "SKLEARN_CHECKS", "TOL", "TUNING", "caveat_lines", "consistency_checks", "fold_audit",
    "footer_text", "footer_warnings", "grid_model", "level_frames", "read_config",
    "read_tuning", "report_pairs", "tuning_notes",
    "report_warnings", "source_statement", "verify", "write_report",
]  # fmt: skip

log = logging.getLogger(__name__)


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


def write_report(
    run_dir,
    *,
    n_boot: int | None = None,
    seed: int | None = None,
    threshold: float | None = None,
    figures: bool = True,
    max_images: int = 16,
    min_patients_per_class: int = ev.MIN_PATIENTS_PER_CLASS,
    compare_to: str | None = None,
    pairs=None,
    log_as=None,
) -> Path:
    """Recompute leaderboard.csv, metrics.json, comparisons.csv, report.md, the breast/exam
    predictions and figures from predictions.csv.

    ``config.json`` supplies the classes, the defaults of ``n_boot``, ``seed`` and ``threshold``
    (the arguments override them), ``train_class_counts`` (majority baselines),
    ``optimistic_features``, ``caveats``, ``split_audit``, ``notes``, ``compare`` (the pairs of
    ``fit --compare``), ``levels`` and ``aggregate`` (breast/exam rows, derived here from the
    ``exam_id``/``laterality`` columns of predictions.csv), ``positive_class`` and
    ``at_specificity`` (screening metrics); ``tuning.csv`` (when present) the chosen
    hyperparameters and their notes. config.json is read, never rewritten. After writing,
    :func:`verify` re-reads the files and recomputes every figure with scikit-learn. Returns the
    path of report.md. ``log_as``: the folder named in log lines (``fit`` writes into a staging
    folder and names the run folder it will become).
    """
    run_dir = Path(run_dir)
    shown = Path(log_as) if log_as is not None else run_dir
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
    pair_list = report_pairs(config, predictions, compare_to, pairs)
    frames, level_notes = level_frames(predictions, config)
    cmp_frames = comparison_frames(run_dir, frames, config)
    boards, results, comparisons = [], [], []
    metrics: dict = {}
    for lv, frame in frames.items():
        board, m = ev.evaluate_predictions(
            frame, classes, n_boot=n_boot, seed=seed, threshold=threshold,
            positive=config.get("positive_class"), train_counts=config.get("train_class_counts"),
            pairs=pair_list, optimistic_features=config.get("optimistic_features") or (),
            min_patients_per_class=min_patients_per_class,
            at_specificity=config.get("at_specificity") or ev.DEFAULT_AT_SPECIFICITY, level=lv,
            comparison_predictions=cmp_frames[lv],
        )  # fmt: skip
        boards.append(board)
        results += m["results"]
        comparisons += m["comparisons"]
        metrics = metrics or m
        if lv != "image":
            atomic_write(
                run_dir / ev.LEVEL_FILES[lv], lambda f, fr=frame: fr.to_csv(f, index=False)
            )
    leaderboard = pd.concat(boards, ignore_index=True)
    metrics.pop("level", None)
    metrics["levels"] = list(frames)
    metrics["aggregate"] = config.get("aggregate", "mean") if len(frames) > 1 else None
    metrics["level_notes"] = level_notes
    metrics["results"] = results
    metrics["comparisons"] = comparisons
    metrics["comparisons_config"]["pairs"] = [list(p) for p in pair_list]
    ranks = {
        (str(f), str(h), e, lv): rk
        for f, h, e, lv, rk in zip(
            leaderboard["features"], leaderboard["head"], leaderboard["evaluation"],
            leaderboard["level"], leaderboard["rank"], strict=True,
        )
    }  # fmt: skip
    for r in metrics["results"]:
        rk = ranks.get((str(r["features"]), str(r["head"]), r["evaluation"], r["level"]))
        r["rank"] = None if rk is None or pd.isna(rk) else int(rk)
    metrics["caveats"] = config.get("caveats")
    metrics["source_confounding"] = source_statement(config)[0]
    metrics["train_class_counts"] = config.get("train_class_counts")
    metrics["tuning_notes"] = tuning_notes(config, tuning)
    lb_path = run_dir / LEADERBOARD
    atomic_write(lb_path, lambda f: leaderboard.to_csv(f, index=False))
    table = pd.DataFrame(comparisons, columns=list(ev.COMPARISON_COLUMNS))
    atomic_write(run_dir / COMPARISONS, lambda f: table.to_csv(f, index=False))
    metrics_path = run_dir / METRICS
    _write_text(metrics_path, json.dumps(_jsonable(metrics), indent=1, allow_nan=False))
    audit = fold_audit(predictions)
    for a in audit:
        if not a["ok"]:
            log.warning(
                "%s: leakage audit %s/%s: %d patient(s) in more than one fold, %d in train "
                "and test",
                shown,
                a["features"],
                a["head"],
                a["patients_across_folds"],
                a["patients_train_and_test"],
            )
    checks = verify(run_dir)  # the files as written, re-read and recomputed with scikit-learn
    for c in checks:
        if not c["ok"]:
            log.warning("%s: consistency check failed: %s (%s)", shown, c["check"], c["detail"])
    metrics["warnings"] = report_warnings(config, metrics, audit, checks)
    for w in metrics["warnings"]:
        log.warning("%s: %s", shown, w)
    metrics["consistency"] = checks
    footer = footer_text(config, footer_warnings(config, metrics))
    fig_paths, fig_notes = (
        _figures(run_dir, predictions, metrics, classes, max_images, footer)
        if figures
        else (existing_figures(run_dir), [])
    )
    metrics["audit"] = audit
    metrics["consistency"] = checks
    metrics["data"] = _data_summary(predictions, classes)
    metrics["figures"] = fig_paths
    # the run's own notes (e.g. train's caveat) survive: config.json is never rewritten here
    metrics["notes"] = [*(config.get("notes") or []), *level_notes, *fig_notes]
    _write_text(metrics_path, json.dumps(_jsonable(metrics), indent=1, allow_nan=False))
    text = _markdown(config, metrics, audit, checks, fig_paths, metrics["data"], tuning)
    out = run_dir / REPORT
    _write_text(out, text)
    log.info("report written: %s", shown / REPORT)
    return out
