"""Paired comparisons of two models on the same images: patient-clustered bootstrap differences,
McNemar (exact and clustered) and Holm's adjustment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .bootstrap import (
    MIN_PATIENTS_PER_CLASS,
    _chunk,
    _percentile_ci,
    ci_note,
    cluster_bootstrap_weights,
    patients_per_class,
)
from .kernels import _Prepared

#: metrics compared between two models in :func:`paired_comparison`
PAIRED_METRICS = ("balanced_accuracy", "roc_auc_ovr")
#: how the p-values of one evaluation are adjusted for multiplicity
ADJUSTMENT = (
    "Holm (step-down Bonferroni) per evaluation (cv, test) and level (image, breast, exam): one "
    "family of every tested comparison x head x {balanced accuracy, ROC-AUC}; the clustered "
    "McNemar tests (test rows) are a second family; comparisons not tested (too few patients, "
    "constant predictions, optimistic rows) are in no family. Intervals are unadjusted."
)


def mcnemar_exact(correct_a, correct_b) -> dict:
    """McNemar's exact test on paired correctness: two-sided binomial tail on the discordant pairs.

    ``b`` = A right & B wrong, ``c`` = A wrong & B right; p = min(1, 2 P[X <= min(b, c)]),
    X ~ Binomial(b + c, 1/2); p = 1 when there are no discordant pairs.
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ConfigError(f"McNemar needs paired vectors, got {a.shape} and {b_.shape}")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    return {"b": b, "c": c, "p_value": binomial_two_sided(min(b, c), b + c)}


def mcnemar_clustered(correct_a, correct_b, groups) -> dict:
    """McNemar's test for clustered matched pairs (Durkalski et al., Stat Med 2003;22:2417).

    Images of one patient are not independent, so the per-image McNemar test overstates the
    evidence. Per patient k: ``b_k`` = images only A gets right, ``c_k`` = images only B gets
    right; ``X = (sum b_k - sum c_k)^2 / sum (b_k - c_k)^2`` is referred to chi-square with 1 df
    (``p = erfc(sqrt(X / 2))``). With one image per patient it equals the usual McNemar
    chi-square without continuity correction. Asymptotic: few discordant patients make it
    unreliable (``n_discordant_patients`` says how many there are). p = 1 without discordance.
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    g = np.asarray(groups, dtype=object).astype(str)
    if not (a.shape == b_.shape == g.shape):
        raise ConfigError(
            f"clustered McNemar needs paired vectors, got {a.shape}, {b_.shape}, {g.shape}"
        )
    codes, _ = pd.factorize(pd.Series(g, dtype=object))
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    bk = np.bincount(codes, weights=(a & ~b_).astype(float), minlength=n_groups)
    ck = np.bincount(codes, weights=(~a & b_).astype(float), minlength=n_groups)
    d = bk - ck
    den = float(np.sum(d**2))
    stat = float(d.sum() ** 2 / den) if den > 0 else 0.0
    p = math.erfc(math.sqrt(stat / 2.0)) if den > 0 else 1.0
    return {
        "test": "clustered McNemar (Durkalski 2003), patients as clusters",
        "b": int(bk.sum()),
        "c": int(ck.sum()),
        "n_discordant_patients": int(np.sum((bk + ck) > 0)),
        "statistic": stat,
        "p_value": float(min(1.0, p)),
    }


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a test).

    Sorted ascending, ``p_(i) * (m - i + 1)`` (i = 1..m), made monotone with a running maximum and
    capped at 1; compare the adjusted values with alpha directly.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    if m == 0:
        return out.tolist()
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out.tolist()


def binomial_two_sided(k: int, n: int) -> float:
    """min(1, 2 * P[X <= k]) for X ~ Binomial(n, 1/2), exact with integer arithmetic."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_comparison(
    a: pd.DataFrame,
    b: pd.DataFrame,
    classes: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    metrics: Sequence[str] = PAIRED_METRICS,
    min_patients_per_class: int = MIN_PATIENTS_PER_CLASS,
) -> dict:
    """Compare two prediction tables (predictions.csv rows) on the images they share.

    For each metric: the difference A - B, its percentile CI under a paired patient-level bootstrap
    (both models are scored on the same resampled patients) and a two-sided p-value from the
    bootstrap standard error (``erfc(|d| / (SE sqrt 2))``; the percentile p
    ``min(1, 2 (min(#[d* <= 0], #[d* >= 0]) + 1) / (B + 1))`` is kept as ``p_percentile``: it
    cannot go below 2 / (B + 1), which a Holm adjustment over many tests never passes); plus
    McNemar's test for clustered pairs (:func:`mcnemar_clustered`, patients as clusters) on
    per-image correctness.
    Below ``min_patients_per_class`` patients in some class of the shared images no CI or
    p-value is given (``ci_note`` says why).
    """
    merged = a.merge(b, on="image_id", suffixes=("_a", "_b"))
    out: dict = {"n_images": len(merged), "n_patients": int(merged["patient_id_a"].nunique())}
    if len(merged) == 0:
        out["note"] = "no shared images"
        return out
    if (merged["y_true_a"].astype(str) != merged["y_true_b"].astype(str)).any():
        raise ConfigError("paired comparison: the two prediction sets disagree on y_true")
    pcols = [f"p_{c}" for c in classes]
    preps = [
        _Prepared(
            merged["y_true_a"],
            merged[f"y_pred_{s}"],
            merged[[f"{c}_{s}" for c in pcols]].to_numpy(float),
            classes,
            0.5,
            None,
        )
        for s in ("a", "b")
    ]
    point = [p.scalars() for p in preps]
    per_class = patients_per_class(merged["y_true_a"], merged["patient_id_a"], classes)
    out["patients_per_class"] = per_class
    out["ci_note"] = ci_note(per_class, min_patients_per_class)
    if out["ci_note"]:
        n_boot = 0
    rng = np.random.default_rng(seed)
    diffs = {m: [] for m in metrics}
    done, chunk = 0, _chunk(n_boot, len(merged))
    while done < n_boot:
        W = cluster_bootstrap_weights(merged["patient_id_a"], min(chunk, n_boot - done), rng)
        sa, sb = preps[0].scalars_batch(W, metrics), preps[1].scalars_batch(W, metrics)
        for m in metrics:
            diffs[m].extend(sa[m] - sb[m])
        done += len(W)
    for m in metrics:
        d = np.asarray(diffs[m], dtype=float)
        low, high, valid = _percentile_ci(d, level)
        finite = d[np.isfinite(d)]
        diff = float(point[0][m] - point[1][m])
        p, p_pct, se = math.nan, math.nan, math.nan
        if finite.size >= 2:
            # percentile p: (count + 1) / (B + 1), never 0 -- but floored at 2 / (B + 1), which
            # no multiplicity adjustment of a dozen tests survives; the reported p is therefore
            # the Wald test on the bootstrap standard error (continuous, no floor)
            tail = min(np.sum(finite <= 0), np.sum(finite >= 0))
            p_pct = min(1.0, 2 * (tail + 1) / (finite.size + 1))
            se = float(np.std(finite, ddof=1))
            if se > 0 and math.isfinite(diff):
                p = math.erfc(abs(diff) / se / math.sqrt(2.0))
            else:
                p = 1.0 if diff == 0 else p_pct
        out[m] = {
            "a": float(point[0][m]),
            "b": float(point[1][m]),
            "diff": float(point[0][m] - point[1][m]),
            "ci_low": low,
            "ci_high": high,
            "p_value": float(p),
            "p_value_test": "two-sided Wald test, diff / bootstrap SE",
            "p_percentile": float(p_pct),
            "bootstrap_se": se,
            "n_valid": valid,
        }
    correct_a = merged["y_pred_a"].astype(str) == merged["y_true_a"].astype(str)
    correct_b = merged["y_pred_b"].astype(str) == merged["y_true_a"].astype(str)
    out["mcnemar"] = mcnemar_clustered(correct_a, correct_b, merged["patient_id_a"])
    if out["ci_note"]:
        out["mcnemar"]["p_value"] = math.nan
    return out
