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

DPI = 100
#: curve figures (ROC, PR, calibration): square axes with the legend beside them
CURVE_SIZE = (10.5, 6.4)  # inches at DPI: 1050 x 640 px (plus the footer)
FOOTER_WIDTH = 170  # characters per footer line before wrapping


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # no layout engine and no bbox_inches="tight": both draw every figure twice (slow on CPUs)
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def footer_lines(footer: str | Sequence[str], width: int = FOOTER_WIDTH) -> list[str]:
    """The footer as wrapped lines (a string or a list of paragraphs)."""
    import textwrap

    paragraphs = [footer] if isinstance(footer, str) else list(footer)
    lines = []
    for para in paragraphs:
        if para:
            lines += textwrap.wrap(str(para), width=width) or [""]
    return lines


def _save(fig, path, *, footer: str | Sequence[str] = "", right: float = 0.97, **adjust) -> Path:
    """Write the figure; ``footer`` (caveats: weights, sources, warnings) is printed under it."""
    path = Path(path)
    lines = footer_lines(footer, width=int(FOOTER_WIDTH * fig.get_figwidth() / CURVE_SIZE[0]))
    height_in = fig.get_figheight()
    footer_frac = (len(lines) * 0.16 + 0.1) / height_in if lines else 0.0
    params = {"left": 0.08, "bottom": 0.1, "top": 0.9, "wspace": 0.45, "hspace": 0.5, **adjust}
    params["bottom"] = params["bottom"] + footer_frac
    fig.subplots_adjust(right=right, **params)
    if lines:
        fig.text(
            0.01, 0.01, "\n".join(lines), ha="left", va="bottom", fontsize=7.5, color="#444444"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _curve_figure(footer) -> tuple:
    """A figure with one square axes on the left, room for a legend on its right and the footer
    (caveats) underneath; sizes in inches, so the plot never shrinks behind a long legend."""
    width, height = CURVE_SIZE
    lines = footer_lines(footer)
    footer_in = len(lines) * 0.16 + 0.15 if lines else 0.1
    fig = _figure(width, height + footer_in)
    total = height + footer_in
    left, bottom, side = 0.85, footer_in + 0.6, height - 0.6 - 0.5
    ax = fig.add_axes([left / width, bottom / total, side / width, side / total])
    if lines:
        fig.text(0.01, 0.01, "\n".join(lines), ha="left", va="bottom", fontsize=7.5, color="#444")
    return fig, ax


def _save_curves(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


LEGEND_CHARS = 46  # the legend column beside the axes holds about this many characters


def _wrap(label: str) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(str(label), LEGEND_CHARS, subsequent_indent="  ")) or label


def _legend_outside(ax, fig) -> None:
    """Legend to the right of the axes, never over the curves; long labels wrap."""
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(
        handles,
        [_wrap(lb) for lb in labels],
        fontsize=8.5,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        frameon=False,
    )


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(max_cols, max(1, n))
    return math.ceil(n / cols), cols


def confusion_matrices(
    panels: Sequence[tuple[str, np.ndarray]],
    classes: Sequence[str],
    path,
    *,
    title: str = "",
    footer: str | Sequence[str] = "",
) -> Path:
    """One panel per (title, confusion matrix) with counts and row-normalised percentages."""
    rows, cols = _grid(len(panels))
    fig = _figure(max(4.4 * cols, 8.0), 3.9 * rows + 0.9)
    for i, (panel_title, cm) in enumerate(panels):
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
        ax.set_title(panel_title, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    top = 1 - 0.75 / fig.get_figheight()
    return _save(fig, path, footer=footer, left=0.1, top=top, wspace=0.6, hspace=0.45)


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


def _curve_panels(curves, path, kind: str, positive: str, title: str, footer) -> Path:
    fig, ax = _curve_figure(footer)
    for label, y_true, score in curves:
        y = np.asarray(y_true, dtype=bool)
        if y.all() or not y.any():
            log.info("%s curve for %s skipped: only one class present", kind, label)
            continue
        fpr, tpr, precision, recall = curve_points(y, score)
        if kind == "roc":
            ax.plot(fpr, tpr, lw=1.6, label=label)
        else:
            ax.step(recall, precision, where="pre", lw=1.6, label=label)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="chance")
        ax.set_xlabel("1 - specificity (false-positive rate)")
        ax.set_ylabel("sensitivity (true-positive rate)")
        what = f"ROC, {positive} vs rest"
    else:
        if curves:
            prevalence = float(np.mean(np.asarray(curves[0][1], dtype=bool)))
            ax.axhline(
                prevalence, color="grey", ls="--", lw=0.8, label=f"prevalence {prevalence:.2f}"
            )
        ax.set_xlabel("recall (sensitivity)")
        ax.set_ylabel("precision")
        what = f"Precision-recall, {positive} vs rest"
    ax.set_title(f"{what}\n{title}" if title else what, fontsize=11, loc="left")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    _legend_outside(ax, fig)
    return _save_curves(fig, path)


def roc_curves(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]],
    positive: str,
    path,
    *,
    title: str = "",
    footer: str | Sequence[str] = "",
) -> Path:
    """ROC curves, one per (label, y_is_positive, positive-class probability).

    ``title`` names the evaluation (e.g. "held-out test, 120 images of 40 patients"); ``footer``
    carries the run's caveats."""
    return _curve_panels(list(curves), path, "roc", positive, title, footer)


def pr_curves(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]],
    positive: str,
    path,
    *,
    title: str = "",
    footer: str | Sequence[str] = "",
) -> Path:
    """Precision-recall curves, one per (label, y_is_positive, positive-class probability)."""
    return _curve_panels(list(curves), path, "pr", positive, title, footer)


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


def calibration_error(y_true, score, n_bins: int = 10) -> dict:
    """Expected calibration error (equal-width bins, count-weighted |observed - predicted|) and
    the Brier score (mean squared error of the positive-class probability)."""
    y = np.asarray(y_true, dtype=float)
    s = np.clip(np.asarray(score, dtype=float), 0, 1)
    if len(y) == 0:
        return {"ece": math.nan, "brier": math.nan}
    bins = calibration_bins(y, s, n_bins)
    ece = float((bins["count"] * (bins["observed"] - bins["mean_predicted"]).abs()).sum() / len(y))
    return {"ece": ece, "brier": float(np.mean((s - y) ** 2))}


def calibration(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]],
    positive: str,
    path,
    n_bins: int = 10,
    *,
    title: str = "",
    footer: str | Sequence[str] = "",
) -> Path:
    """Reliability diagram (positive-class probability vs observed frequency), a line per model;
    the legend gives each model's ECE and Brier score (calibration measures, not AUC)."""
    fig, ax = _curve_figure(footer)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="perfect calibration")
    for label, y_true, score in curves:
        bins = calibration_bins(y_true, score, n_bins)
        err = calibration_error(y_true, score, n_bins)
        ax.plot(
            bins["mean_predicted"],
            bins["observed"],
            marker="o",
            ms=3.5,
            lw=1.4,
            label=f"{label} (ECE {err['ece']:.3f}, Brier {err['brier']:.3f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"predicted P({positive})")
    ax.set_ylabel(f"observed fraction {positive}")
    what = f"Calibration, {positive} ({n_bins} equal-width bins)"
    ax.set_title(f"{what}\n{title}" if title else what, fontsize=11, loc="left")
    _legend_outside(ax, fig)
    return _save_curves(fig, path)


def thumbnail(pixels: np.ndarray, max_value: float, size: int = 256) -> np.ndarray:
    """A quick strided downsample to at most ``size`` px, scaled to [0, 1] float32."""
    step = max(1, int(math.ceil(max(pixels.shape[:2]) / size)))
    small = np.asarray(pixels[::step, ::step], dtype=np.float32)
    top = float(max_value) if max_value else float(small.max() or 1.0)
    return np.clip(small / top, 0, 1)


def image_grid(
    items: Sequence[dict],
    path,
    *,
    title: str = "",
    cols: int = 4,
    footer: str | Sequence[str] = "",
) -> Path:
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
    return _save(fig, path, footer=footer, left=0.02, right=0.98, top=0.88)
