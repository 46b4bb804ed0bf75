"""Patient-clustered bootstrap: resampling weights, percentile CIs, and the minimum of patients per
class below which no CI is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .kernels import CI_METRICS, DEFAULT_AT_SPECIFICITY, _Prepared

#: below this many patients in some class a bootstrap CI is not reported (it would look precise
#: while resting on a handful of clusters: 2 patients give "0.833 [0.833, 0.833]")
MIN_PATIENTS_PER_CLASS = 10


def cluster_bootstrap_weights(
    groups: Sequence, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_boot, n_images) weights of a cluster bootstrap: patients drawn with replacement.

    An image's weight is the number of times its group (patient) was drawn, so all images of one
    patient share a weight. Pass image ids as ``groups`` for an image-level bootstrap.
    """
    codes, uniques = pd.factorize(pd.Series(np.asarray(groups), dtype=object).astype(str))
    n_groups = len(uniques)
    if n_groups == 0:
        return np.zeros((n_boot, 0))
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    offsets = (np.arange(n_boot) * n_groups)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n_boot * n_groups)
    return counts.reshape(n_boot, n_groups)[:, codes].astype(float)


def _chunk(n_boot: int, n_images: int) -> int:
    """Resamples per batch: about 2 million weights (16 MB) at a time."""
    return max(1, min(n_boot, 2_000_000 // max(1, n_images)))


def _percentile_ci(values: np.ndarray, level: float) -> tuple[float, float, int]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan, 0
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high), int(finite.size)


def bootstrap_metrics(
    y_true,
    y_pred,
    proba,
    classes: Sequence[str],
    groups: Sequence,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    threshold: float = 0.5,
    positive: str | None = None,
    metrics: Sequence[str] = CI_METRICS,
    min_patients_per_class: int | None = None,
    at_specificity: Sequence[float] = DEFAULT_AT_SPECIFICITY,
) -> dict:
    """Percentile CIs of ``metrics`` under a patient-clustered bootstrap (``groups`` = patient ids).

    Returns ``{metric: {"low", "high", "n_valid"}}``; resamples where a metric is undefined (e.g. a
    class missing from the resample) are dropped and counted out of ``n_valid``. With
    ``min_patients_per_class`` (e.g. :data:`MIN_PATIENTS_PER_CLASS`), a sample with fewer patients
    in some class gets NaN bounds and ``"note"`` (e.g. ``n/a (3 patients in class benign < 10)``).
    """
    prep = _Prepared(y_true, y_pred, proba, classes, threshold, positive, at_specificity)
    if min_patients_per_class is not None:
        note = ci_note(patients_per_class(y_true, groups, prep.classes), min_patients_per_class)
        if note:
            return {
                m: {"low": math.nan, "high": math.nan, "n_valid": 0, "note": note} for m in metrics
            }
    if n_boot <= 0 or len(prep.yt) == 0:
        return {m: {"low": math.nan, "high": math.nan, "n_valid": 0} for m in metrics}
    rng = np.random.default_rng(seed)
    values = {m: np.empty(n_boot) for m in metrics}
    done = 0
    chunk = _chunk(n_boot, len(prep.yt))
    while done < n_boot:
        weights = cluster_bootstrap_weights(groups, min(chunk, n_boot - done), rng)
        batch = prep.scalars_batch(weights, metrics)
        for m in metrics:
            values[m][done : done + len(weights)] = batch[m]
        done += len(weights)
    out = {}
    for m in metrics:
        low, high, valid = _percentile_ci(values[m], level)
        out[m] = {"low": low, "high": high, "n_valid": valid}
    return out


def patients_per_class(y_true, groups, classes: Sequence[str]) -> dict[str, int]:
    """Distinct patients with at least one image of each class."""
    df = pd.DataFrame(
        {"y": np.asarray(y_true, dtype=object).astype(str), "g": np.asarray(groups).astype(str)}
    )
    counts = df.drop_duplicates().groupby("y")["g"].nunique()
    return {c: int(counts.get(c, 0)) for c in classes}


def ci_note(per_class_patients: dict[str, int], minimum: int = MIN_PATIENTS_PER_CLASS) -> str:
    """'' when every class has >= ``minimum`` patients, else why no CI is given."""
    if not per_class_patients:
        return "n/a (no patients)"
    c, n = min(per_class_patients.items(), key=lambda kv: kv[1])
    if n >= minimum:
        return ""
    return f"n/a ({n} patient{'s' if n != 1 else ''} in class {c} < {minimum})"
