"""The run folder's files: their names, config.json and tuning.csv readers, JSON-safe values,
atomic text writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_write
from ..errors import ConfigError

PREDICTIONS = "predictions.csv"
CONFIG = "config.json"
LEADERBOARD = "leaderboard.csv"
METRICS = "metrics.json"
REPORT = "report.md"
TUNING = (
    "tuning.csv"  # optional: fit --tune grid (features, head, fold, params, inner_score, chosen)
)
COMPARISONS = "comparisons.csv"  # every paired comparison (featmammo.evaluate.comparisons)
IMAGES = "images.csv"  # optional: image_id -> path, written by fit for the test-image grid
FIGURES = "figures"


def read_tuning(run_dir) -> pd.DataFrame | None:
    """``RUN_DIR/tuning.csv`` (fit with ``--tune grid``) or None when absent. Its optional ``note``
    column (what deviated from plain nested tuning: an untuned fold, dropped grid points, skipped
    early stopping, an all-NaN grid) is kept as text, empty when absent."""
    path = Path(run_dir) / TUNING
    if not path.exists():
        return None
    df = pd.read_csv(
        path, dtype={"features": str, "head": str, "fold": str, "params": str, "note": str},
        keep_default_na=False,
    )  # fmt: skip
    if "note" not in df.columns:
        df["note"] = ""
    if "inner_score" in df.columns:  # NaN may be written as "nan" or left empty
        df["inner_score"] = pd.to_numeric(df["inner_score"], errors="coerce")
    missing = [c for c in ("features", "head", "fold", "params", "inner_score", "chosen")
               if c not in df.columns]  # fmt: skip
    if missing:
        raise ConfigError(f"{path}: lacks columns {missing}")
    return df


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
