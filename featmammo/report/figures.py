"""The report's figures: confusion matrices, ROC/PR curves, the test-image grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import evaluate as ev
from .caveats import EVAL_LABEL
from .checks import _num, _rows_of
from .files import FIGURES, IMAGES
from .markdown import _f, _name


def _figures(
    run_dir: Path, predictions, metrics, classes, max_images: int, footer: list[str]
) -> tuple[dict, list]:
    from .. import plots

    fig_dir = run_dir / FIGURES
    fig_dir.mkdir(exist_ok=True)
    figures, notes = {}, []
    positive = metrics["positive_class"]
    pcol = f"p_{positive}"
    evaluation_col = predictions["fold"].astype(str).map(ev.evaluation_of)
    for evaluation in ("cv", "test", "validation"):
        results = [
            r
            for r in metrics["results"]
            if r["evaluation"] == evaluation and r.get("level", "image") == "image"
        ]
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


#: figure file stems of one evaluation -> the name the report gives them
_FIGURE_KINDS = (
    ("confusion", "confusion matrices"),
    ("roc", "ROC"),
    ("pr", "precision-recall"),
    ("calibration", "calibration"),
)


def existing_figures(run_dir: Path) -> dict:
    """The figures already in ``RUN_DIR/figures`` (``report --no-figures`` keeps linking them)."""
    fig_dir = Path(run_dir) / FIGURES
    out = {}
    for evaluation in ("cv", "test", "validation"):
        for stem, name in _FIGURE_KINDS:
            path = fig_dir / f"{stem}_{evaluation}.png"
            if path.exists():
                out[f"{name}, {EVAL_LABEL[evaluation]}"] = str(path.relative_to(run_dir))
    grid = fig_dir / "test_images.png"
    if grid.exists():
        out["test images"] = str(grid.relative_to(run_dir))
    return out


def grid_model(metrics: dict) -> tuple[dict | None, str]:
    """The model whose test images the grid shows: best CV balanced accuracy (never chosen by
    its test score); a run without CV rows qualifies only with a single model."""
    image = [r for r in metrics["results"] if r.get("level", "image") == "image"]
    tests = [r for r in image if r["evaluation"] == "test"]
    if not tests:
        return None, "no held-out test predictions: no test-image grid"
    with_test = {(r["features"], r["head"]) for r in tests}
    cv = [
        r
        for r in image
        if r["evaluation"] == "cv"
        and (r["features"], r["head"]) in with_test
        and not r.get("optimistic")
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
    from .. import plots

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
    from ..io import read_image

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
