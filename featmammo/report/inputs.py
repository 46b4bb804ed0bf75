"""What a report is computed from, besides the numbers: the pairs it compares and the level frames
(breast and exam rows derived from predictions.csv); shared by :func:`write_report` and
:func:`verify` so that both derive them the same way."""

from __future__ import annotations

import pandas as pd

from .. import evaluate as ev


def report_pairs(config: dict, predictions: pd.DataFrame, compare_to, pairs) -> list[tuple]:
    """The comparisons of the report: explicit ``pairs``, else ``compare_to`` against every other
    features set, else the run's recorded ``compare`` (fit --compare), else the default pairs."""
    honest = predictions[predictions["fold"].astype(str).map(ev.evaluation_of) != "validation"]
    present = [str(f) for f in dict.fromkeys(honest["features"].astype(str))]
    if pairs is not None:
        return ev.resolve_pairs(pairs, present)
    if compare_to is not None:
        return [(str(compare_to), f) for f in present if f != str(compare_to)]
    if config.get("compare"):
        return [(str(a), str(b)) for a, b in config["compare"]]
    return ev.default_pairs(present)


def level_frames(predictions: pd.DataFrame, config: dict) -> tuple[dict, list[str]]:
    """``{level: frame}`` of the levels config.json asks for (image always), the breast and exam
    rows derived from predictions.csv by :func:`featmammo.evaluate.aggregate_predictions`; and
    notes (images without laterality left out)."""
    levels = ev.parse_levels(config.get("levels") or ["image"])
    frames, notes = {"image": predictions}, []
    wanted = [lv for lv in levels if lv != "image"]
    if wanted:
        aggregate = config.get("aggregate", "mean")
        positive = config.get("positive_class")
        for lv in wanted:
            frames[lv] = ev.aggregate_predictions(
                predictions, config["classes"], lv, aggregate=aggregate, positive=positive
            )
        dropped = ev.levels.dropped_without_laterality(predictions)
        if dropped:
            notes.append(
                f"{dropped} image(s) without an L/R laterality belong to no breast: left out of "
                f"the {' and '.join(wanted)} level(s)"
            )
    return frames, notes


REPEATS = "predictions_repeats.csv"


def comparison_frames(run_dir, frames: dict, config: dict) -> dict:
    """``{level: rows}`` the comparisons run on: the level's rows (repeat 1), plus, when the run
    made ``cv_repeats`` > 1 CV repeats, the other repeats' CV rows (predictions_repeats.csv,
    aggregated to the level the same way), told apart by a ``repeat`` column."""
    from pathlib import Path

    repeats = int(config.get("cv_repeats") or 1)
    path = Path(run_dir) / REPEATS
    if repeats <= 1 or not path.exists():
        return frames
    extra = ev.read_predictions(path)
    extra["repeat"] = extra["repeat"].astype(int)
    out = {}
    for level, frame in frames.items():
        rows = extra
        if level != "image":
            rows = ev.aggregate_predictions(
                extra, config["classes"], level, aggregate=config.get("aggregate", "mean"),
                positive=config.get("positive_class"),
            )  # fmt: skip
        out[level] = pd.concat([frame.assign(repeat=1), rows], ignore_index=True)
    return out
