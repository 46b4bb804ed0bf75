"""What a HybridNet run leaves in RUN_DIR besides checkpoints (featmammo.nn): ``curves.png``,
``predictions.csv`` in the ``featmammo fit`` format, ``leaderboard.csv``, ``metrics.json`` and the
report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from featmammo.atomic import atomic_write

from .config import features_name
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
    """Best model -> predictions.csv (val rows as fold 0, test rows as ``test``) -> metrics."""
    parts = []
    for fold, idx in (("0", val_idx), ("test", test_idx)):
        if len(idx):
            proba = predict_arrays(
                model, images, idx, batch_size=cfg.eval_batch_size, device=device, amp_dtype=amp
            )
            parts.append(predictions_frame(df, idx, proba, classes, fold, cfg))
    preds = pd.concat(parts, ignore_index=True)
    preds.to_csv(run_dir / "predictions.csv", index=False)
    try:
        from featmammo.evaluate import evaluate_predictions
    except ImportError:  # pragma: no cover - evaluate is part of the package
        log.warning("featmammo.evaluate unavailable: predictions.csv written without metrics")
        return None
    train_counts = {c: int(np.sum(y_train == i)) for i, c in enumerate(classes)}
    leaderboard, metrics = evaluate_predictions(preds, classes, train_counts=train_counts)
    metrics["note"] = (
        "evaluation 'cv' of a HybridNet run is its validation split (fold 0), which also chose the "
        "epoch (early stopping): optimistic. 'test' rows are the manifest's held-out split=test."
    )
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
