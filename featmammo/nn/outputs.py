"""What a HybridNet run leaves in RUN_DIR besides checkpoints (featmammo.nn): ``config.json``
(with the caveats that travel with the results), ``curves.png``, ``predictions.csv`` in the
``featmammo fit`` format, ``leaderboard.csv``, ``metrics.json`` and the report.

Validation rows are written with ``fold = "validation"``: they chose the stopping epoch (and the
saved checkpoint), so featmammo.evaluate keeps them out of the ranked comparison and
``config.json`` says why (``notes``); ``train_class_counts`` (the training part) gives every row
its majority baseline.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from featmammo.atomic import atomic_write
from featmammo.evaluate import VALIDATION_FOLD, evaluate_predictions

from .config import TrainConfig, features_name
from .loop import predict_arrays

log = logging.getLogger(__name__)


def write_curves(history: pd.DataFrame, path: Path) -> None:
    """The paper's training/validation loss and accuracy curves (two panels, PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ep = history["epoch"]
    ax1.plot(ep, history["train_loss"], "o-", label="training")
    ax1.plot(ep, history["val_loss"], "s-", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax2.plot(ep, history["train_accuracy"], "o-", label="training")
    ax2.plot(ep, history["val_accuracy"], "s-", label="validation")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


#: why a HybridNet run's validation rows are not an estimate (config.json ``notes``, metrics.json)
VALIDATION_NOTE = (
    "HybridNet 'validation' rows are the patient-grouped validation split that chose the stopping "
    "epoch and the saved checkpoint (early stopping): their scores are optimistic, not an "
    "estimate. Only the 'test' rows (held-out patients, never seen in training: --test-split) are."
)

#: where the test rows of each ``--test-split`` come from (config.json ``notes``)
TEST_SPLIT_NOTE = {
    "official": "test rows: the manifest's split=test images (--test-split official)",
    "grouped": "test rows: whole patients held out at random, stratified by class "
    "(--test-split grouped: featmammo.splits.grouped_holdout with --test-size and --seed, the "
    "patients `featmammo fit --test-split grouped` holds out from the same manifest)",
    "none": "no test rows (--test-split none)",
}


def no_test_warning(test_split: str) -> str:
    """What a run without test rows says (log WARNING, caveats, report, CLI line)."""
    why = (
        "--test-split none"
        if test_split == "none"
        else f"--test-split {test_split} left no decodable test image"
    )
    return (
        f"no test images ({why}): this run has NO honest estimate of performance; its only "
        "scores are the validation rows, which chose the stopping epoch and are optimistic. "
        "Train with --test-split grouped (or official, on a set with an official split) for a "
        "held-out test"
    )


def class_counts(y: np.ndarray, classes) -> dict[str, int]:
    """``{class: images}`` of the class codes ``y`` (0..k-1 in ``classes`` order)."""
    return {c: int(np.sum(y == i)) for i, c in enumerate(classes)}


def weights_caveat(arch: str, info: dict) -> str:
    """One trunk's weights as the caveats state them (the formatter ``fit`` uses too):
    ``random (seed N)``, ``imagenet (torchvision ENUM.MEMBER, sha256 PREFIX)`` or ``file PATH
    (sha256 PREFIX)``; ``arch`` names the trunk (kept for callers; the identity says it all)."""
    from featmammo.report.caveats import describe_weights

    return describe_weights(info.get("weights"), info.get("weights_sha256"), seed=info.get("seed"))


def run_audit(df: pd.DataFrame, used: np.ndarray, role: np.ndarray) -> dict:
    """featmammo.splits.audit of the rows a run used, split = train/val/test (patients shared
    between them, labels confounded with the manifest's ``source``), as config.json's
    ``split_audit``. Without a ``source`` column the source check is absent (not checked), never
    ``{}`` (checked, clean)."""
    from featmammo.splits import audit

    rows = df[used]
    frame = pd.DataFrame(
        {
            "patient_id": rows["patient_id"].astype(str).to_numpy(),
            "label": rows["_y"].astype(str).to_numpy(),
            "split": np.asarray(role)[used],
        }
    )
    if "source" in rows.columns:
        frame["source"] = rows["source"].to_numpy()
    out = audit(frame).to_dict()
    if "source" not in rows.columns:
        out.pop("source_confounding", None)
    return out


def run_caveats(
    df: pd.DataFrame,
    used: np.ndarray,
    role: np.ndarray,
    trunk_weights: dict,
    split_audit: dict,
    *,
    test_split: str = "official",
) -> dict:
    """``{"weights", "sources", "warnings"}`` of a training run (the format of ``featmammo fit``).

    ``df``: the manifest rows in the class scheme (``_y`` = class name); ``used``: rows decoded
    (the others are counted in a warning); ``role``: train/validation/test per row;
    ``split_audit``: :func:`run_audit`'s result; ``test_split``: where the test rows came from
    (a run without a decodable test row gets :func:`no_test_warning`).
    """
    weights = {arch: weights_caveat(arch, info) for arch, info in trunk_weights.items()}
    rows = df[used]
    if "source" in rows.columns:
        src = rows["source"].fillna("").astype(str).replace("", "(empty)")
        sources = {str(k): int(v) for k, v in src.value_counts().sort_index().items()}
    else:
        sources = {"(no source column)": int(len(rows))}
    warnings = []
    random_trunks = [a for a, info in trunk_weights.items() if info.get("weights") == "random"]
    if random_trunks:
        warnings.append(
            f"trunk(s) {', '.join(random_trunks)} started from random weights, not ImageNet: "
            "these results say nothing about the pretrained network (fetch real weights with "
            "`featmammo weights fetch NAME` and train with --weights imagenet)"
        )
    if "source_confounding" not in split_audit:
        warnings.append("the manifest has no 'source' column: source confounding not checked")
    for label, source in (split_audit.get("source_confounding") or {}).items():
        warnings.append(
            f"every {label!r} image comes from source {source!r} and no other label does: the "
            "network can learn the acquisition pipeline instead of the pathology"
        )
    n_failed = int((~used).sum())
    if n_failed:
        warnings.append(
            f"{n_failed} image(s) could not be decoded and were left out (cache/failures-*.csv)"
        )
    if not np.any(used & (np.asarray(role) == "test")):
        warnings.insert(0, no_test_warning(test_split))
    patients = df["patient_id"].astype(str).to_numpy()
    shared = set(patients[role == "test"]) & set(patients[role != "test"])
    if shared:
        warnings.append(
            f"{len(shared)} patient(s) appear both in the manifest's test split and in the "
            f"training/validation data (e.g. {sorted(shared)[0]}): the test rows are not held out"
        )
    return {"weights": weights, "sources": sources, "warnings": warnings}


def run_config(
    cfg: TrainConfig,
    *,
    classes,
    pre,
    manifest,
    m_hash: str,
    world_size: int,
    train_counts: dict,
    caveats: dict,
    split_audit: dict,
) -> dict:
    """The run's ``config.json``: options, data identity, training class counts, caveats, notes."""
    return {
        "train": cfg.to_dict(),
        "classes": list(classes),
        "preprocess": pre.to_dict(),
        "features": features_name(cfg.fusion, cfg.trunks),
        "head": "hybridnet",
        "manifest": str(manifest) if not isinstance(manifest, pd.DataFrame) else None,
        "manifest_hash": m_hash,
        "world_size": world_size,
        "train_class_counts": train_counts,
        "caveats": caveats,
        "split_audit": split_audit,
        "test_split": cfg.test_split,
        "test_size": cfg.test_size if cfg.test_split == "grouped" else None,
        "seed": cfg.seed,
        "notes": [VALIDATION_NOTE, TEST_SPLIT_NOTE[cfg.test_split]],
    }


def write_json(path: Path, obj) -> None:
    """``obj`` as indented, key-sorted JSON, written atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    atomic_write(path, lambda f: f.write(text))


def predictions_frame(df, idx, proba, classes, fold, cfg) -> pd.DataFrame:
    y_pred = np.asarray(classes, dtype=object)[proba.argmax(1)] if len(idx) else []
    out = pd.DataFrame(
        {
            "image_id": df["image_id"].astype(str).to_numpy()[idx],
            "patient_id": df["patient_id"].astype(str).to_numpy()[idx],
            "fold": fold,
            "features": features_name(cfg.fusion, cfg.trunks),
            "head": "hybridnet",
            "y_true": df["_y"].to_numpy()[idx],
            "y_pred": y_pred,
        }
    )
    for j, c in enumerate(classes):
        out[f"p_{c}"] = proba[:, j] if len(idx) else []
    return out


def final_evaluation(
    run_dir, df, classes, cfg, model, images, val_idx, test_idx, y_train, device, amp
):
    """Best model -> predictions.csv (``validation`` and ``test`` rows) -> metrics and report."""
    parts = []
    for fold, idx in ((VALIDATION_FOLD, val_idx), ("test", test_idx)):
        if len(idx):
            proba = predict_arrays(
                model, images, idx, batch_size=cfg.eval_batch_size, device=device, amp_dtype=amp
            )
            parts.append(predictions_frame(df, idx, proba, classes, fold, cfg))
    preds = pd.concat(parts, ignore_index=True)
    preds.to_csv(run_dir / "predictions.csv", index=False)
    leaderboard, metrics = evaluate_predictions(
        preds, classes, train_counts=class_counts(y_train, classes)
    )
    metrics["note"] = VALIDATION_NOTE
    leaderboard.to_csv(run_dir / "leaderboard.csv", index=False)
    write_json(run_dir / "metrics.json", metrics)
    try:
        from featmammo.report import write_report
    except ImportError:
        log.info("featmammo.report not available: skipped the report")
    else:
        try:
            write_report(run_dir)
        except Exception as exc:  # a report failure must not lose the trained model
            log.warning("report for %s failed: %s", run_dir, exc)
    return metrics
