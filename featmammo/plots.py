"""Matplotlib figures of a run: confusion matrices, ROC/PR curves, calibration, a test-image grid.

Figures are built with :class:`matplotlib.figure.Figure` and :class:`FigureCanvasAgg` directly, so
nothing here touches pyplot's global state or the process-wide backend. Every function takes plain
data (arrays / DataFrames from predictions.csv) and writes one PNG, returning its path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DPI = 80


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # no layout engine and no bbox_inches="tight": both draw every figure twice (slow on CPUs)
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.1, top=0.9, wspace=0.45, hspace=0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(max_cols, max(1, n))
    return math.ceil(n / cols), cols


def confusion_matrices(
    panels: Sequence[tuple[str, np.ndarray]], classes: Sequence[str], path
) -> Path:
    """One panel per (title, confusion matrix) with counts and row-normalised percentages."""
    rows, cols = _grid(len(panels))
    fig = _figure(3.6 * cols, 3.3 * rows)
    for i, (title, cm) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        cm = np.asarray(cm, dtype=float)
        support = cm.sum(axis=1, keepdims=True)
        frac = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)
        ax.imshow(frac, vmin=0, vmax=1, cmap="Blues")
        for r in range(cm.shape[0]):
            for c in range(cm.shape[1]):
                ax.text(
                    c,
                    r,
                    f"{int(cm[r, c])}\n{100 * frac[r, c]:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if frac[r, c] > 0.5 else "black",
                )
        ax.set_xticks(range(len(classes)), classes, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def curve_points(y_true, score) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ROC and PR points at every distinct threshold (descending): fpr, tpr, precision, recall."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(score, dtype=float)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last].astype(float)
    fp = (last + 1 - tp).astype(float)
    pos, neg = max(y.sum(), 1), max((~y).sum(), 1)
    tpr, fpr = np.r_[0.0, tp / pos], np.r_[0.0, fp / neg]
    precision = np.r_[1.0, tp / (tp + fp)]
    recall = np.r_[0.0, tp / pos]
    return fpr, tpr, precision, recall


def _curve_panels(curves, path, kind: str, positive: str) -> Path:
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for label, y_true, score in curves:
        y = np.asarray(y_true, dtype=bool)
        if y.all() or not y.any():
            log.info("%s curve for %s skipped: only one class present", kind, label)
            continue
        fpr, tpr, precision, recall = curve_points(y, score)
        if kind == "roc":
            ax.plot(fpr, tpr, lw=1.2, label=label)
        else:
            ax.step(recall, precision, where="pre", lw=1.2, label=label)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="chance")
        ax.set_xlabel("1 - specificity (false-positive rate)")
        ax.set_ylabel("sensitivity (true-positive rate)")
        ax.set_title(f"ROC, {positive} vs rest")
    else:
        if curves:
            prevalence = float(np.mean(np.asarray(curves[0][1], dtype=bool)))
            ax.axhline(prevalence, color="grey", ls="--", lw=0.8, label="prevalence")
        ax.set_xlabel("recall (sensitivity)")
        ax.set_ylabel("precision")
        ax.set_title(f"Precision-recall, {positive} vs rest")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
    return _save(fig, path)


def roc_curves(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], positive: str, path) -> Path:
    """ROC curves, one per (label, y_is_positive, positive-class probability)."""
    return _curve_panels(list(curves), path, "roc", positive)


def pr_curves(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], positive: str, path) -> Path:
    """Precision-recall curves, one per (label, y_is_positive, positive-class probability)."""
    return _curve_panels(list(curves), path, "pr", positive)


def calibration_bins(y_true, score, n_bins: int = 10) -> pd.DataFrame:
    """Equal-width reliability bins: mean predicted probability, observed frequency, count."""
    y = np.asarray(y_true, dtype=float)
    s = np.clip(np.asarray(score, dtype=float), 0, 1)
    idx = np.minimum((s * n_bins).astype(int), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    mean_p = np.bincount(idx, weights=s, minlength=n_bins)
    observed = np.bincount(idx, weights=y, minlength=n_bins)
    keep = count > 0
    return pd.DataFrame(
        {
            "bin": np.arange(n_bins)[keep],
            "mean_predicted": mean_p[keep] / count[keep],
            "observed": observed[keep] / count[keep],
            "count": count[keep],
        }
    )


def calibration(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]], positive: str, path, n_bins: int = 10
) -> Path:
    """Reliability diagram (positive-class probability vs observed frequency), a line per model."""
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="perfect calibration")
    for label, y_true, score in curves:
        bins = calibration_bins(y_true, score, n_bins)
        ax.plot(bins["mean_predicted"], bins["observed"], marker="o", ms=3, lw=1.0, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"predicted P({positive})")
    ax.set_ylabel(f"observed fraction {positive}")
    ax.set_title(f"Calibration ({n_bins} bins)")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def thumbnail(pixels: np.ndarray, max_value: float, size: int = 256) -> np.ndarray:
    """A quick strided downsample to at most ``size`` px, scaled to [0, 1] float32."""
    step = max(1, int(math.ceil(max(pixels.shape[:2]) / size)))
    small = np.asarray(pixels[::step, ::step], dtype=np.float32)
    top = float(max_value) if max_value else float(small.max() or 1.0)
    return np.clip(small / top, 0, 1)


def image_grid(items: Sequence[dict], path, *, title: str = "", cols: int = 4) -> Path:
    """Grid of images with captions. Each item: ``image`` (2-D array in [0,1] or None), ``caption``,
    ``correct`` (bool, colours the caption); a None image shows a 'not readable' note."""
    n = max(1, len(items))
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = _figure(2.6 * cols, 3.0 * rows)
    for i, item in enumerate(items):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        if item.get("image") is not None:
            ax.imshow(item["image"], cmap="gray", vmin=0, vmax=1)
        else:
            ax.text(0.5, 0.5, "image not readable", ha="center", va="center", fontsize=8)
        ax.set_title(
            item.get("caption", ""),
            fontsize=7,
            color="darkgreen" if item.get("correct") else "darkred",
        )
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
