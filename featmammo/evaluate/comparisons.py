"""Paired comparisons of two features sets (same head, same images) -> ``comparisons.csv``.

This is the one implementation behind ``fit --compare A:B``, the report's "answer" section,
``report --verify`` and ``featmammo compare``. It takes a predictions table (the
``predictions.csv`` columns, possibly concatenated from several runs, possibly aggregated to
breasts or exams by :mod:`.levels`) and a list of ``(features_a, features_b)`` pairs, and returns
one row per evaluation x head x pair x metric with exactly :data:`COMPARISON_COLUMNS`:

``evaluation, level, head, features_a, features_b, metric, n_images, n_patients, diff, ci_low,
ci_high, p_raw, p_holm, method``

- ``diff`` is A - B. ``n_images`` counts the compared units of the level (images, breasts or
  exams) that both sides predicted; ``n_patients`` their patients.
- ``test`` rows (one training set, independent test patients): a **paired patient-clustered
  bootstrap** (both models scored on every resample of patients); ``p_raw`` is the two-sided
  t test of ``diff`` on the bootstrap standard error, small-sample corrected (variance x
  m/(m-1), m = the smallest class's patients; t with n - 1 degrees of freedom for n patients),
  and ``ci_low, ci_high`` is the matching interval ``diff +- t * SE``, so an interval excludes 0
  exactly when ``p_raw`` < 1 - ``ci_level``. The question answered is conditional on the fitted
  models: are *these two models* different on patients like the test patients.
- ``cv`` rows: the **corrected resampled t test** (Nadeau & Bengio 2003) over the folds (x
  repeats) of the patient-grouped CV: ``diff`` = mean of the per-fold differences, variance
  ``(1/J + n_test/n_train) s^2`` (J folds in all, ``n_test/n_train`` the mean patient ratio of a
  fold), t with J - 1 degrees of freedom, interval from the same t. The pooled out-of-fold
  bootstrap holds the K fold models fixed, misses the training-set variation and rejects a true
  null 2-3x too often (``benchmarks/null_calibration.py``); it is available as
  ``cv_method="pooled-bootstrap"``, labelled exploratory.
- ``mcnemar`` rows (metric ``accuracy_mcnemar``, test rows only: pooled over CV folds it would
  hold the fold models fixed as the pooled bootstrap does): the clustered McNemar test
  (Durkalski 2003, patients as clusters) on per-unit correctness; ``diff`` = accuracy A -
  accuracy B, no interval, counts in ``method`` (``b`` = only A right, ``c`` = only B right).
  McNemar is its own Holm family (it is about accuracy, not the main family's metrics), tested
  from :data:`MCNEMAR_MIN_PATIENTS_PER_CLASS` (15) patients per class: it runs hot below.
- **Holm** (``p_holm``) adjusts, per evaluation x level, the ``balanced_accuracy`` and
  ``roc_auc_ovr`` rows together (one family) and the McNemar rows apart (a second family).
  Rows that are not tested -- fewer than ``min_patients_per_class`` patients in a class of the
  shared units, a side whose predictions are constant (:func:`constant_reason`), a side that is
  optimistic (embeddings trained on the evaluated images) -- keep ``diff`` (and ``p_raw`` where
  computable) but get ``p_holm`` NaN, stay out of the family and say why in ``method``.
- Intervals are **unadjusted** (each at ``ci_level``); verdicts use ``p_holm``.

:func:`verify_comparisons` recomputes a stored table and lists every difference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .bootstrap import MIN_PATIENTS_PER_CLASS, _chunk, ci_note, cluster_bootstrap_weights
from .bootstrap import patients_per_class as _patients_per_class
from .kernels import _Prepared
from .paired import holm_adjust, mcnemar_clustered

#: the columns of comparisons.csv, in order (a contract: fit, report, compare, --verify)
COMPARISON_COLUMNS = (
    "evaluation", "level", "head", "features_a", "features_b", "metric", "n_images",
    "n_patients", "diff", "ci_low", "ci_high", "p_raw", "p_holm", "method",
)  # fmt: skip
#: metrics of the main Holm family
MAIN_METRICS = ("balanced_accuracy", "roc_auc_ovr")
#: the McNemar rows' metric name (its own Holm family)
MCNEMAR_METRIC = "accuracy_mcnemar"
#: the clustered McNemar's minimum of patients per class (benchmarks/null_calibration.py: 6.8% of
#: raw p < 0.05 under an exact null at 10 patients per class, 5.6% at 15, 3.2% at 20)
MCNEMAR_MIN_PATIENTS_PER_CLASS = 15
#: CV methods: the calibrated default and the exploratory pooled bootstrap
CV_METHODS = ("corrected-t", "pooled-bootstrap")
#: the unit keys of each level (what identifies one compared unit)
LEVEL_KEYS = {
    "image": ("image_id",),
    "breast": ("patient_id", "exam_id", "laterality"),
    "exam": ("patient_id", "exam_id"),
}
#: evaluations that are compared (validation rows chose HybridNet's epoch: never compared)
COMPARED_EVALUATIONS = ("cv", "test")
#: "nearly constant": at most this share of the units (and at least one) predicted otherwise
NEAR_CONSTANT_SHARE = 0.01


# --------------------------------------------------------------------------------------------------
# pairs


def default_pairs(features: Sequence[str]) -> list[tuple[str, str]]:
    """Each fused features set (``hybrid`` or ``a+b``) against each single one, in run order.

    ``fit`` compares these when no ``--compare`` is given; a run without a fused set has none.
    """
    features = [str(f) for f in dict.fromkeys(features)]
    fused = [f for f in features if f == "hybrid" or "+" in f]
    single = [f for f in features if f not in fused]
    return [(a, b) for a in fused for b in single]


def parse_pair(spec: str, features: Sequence[str]) -> tuple[str, str]:
    """``"A:B"`` -> ``(A, B)`` where both name features sets of ``features``.

    A features set may itself contain ``:`` (``hybrid:RUN/checkpoint.pt``), so every split point
    is tried and the one whose two sides are known is taken; ConfigError when none (or two) fit.
    """
    known = [str(f) for f in features]
    spec = str(spec).strip()
    cuts = [i for i, ch in enumerate(spec) if ch == ":"]
    found = [
        (spec[:i], spec[i + 1 :]) for i in cuts if spec[:i] in known and spec[i + 1 :] in known
    ]
    if len(found) == 1:
        a, b = found[0]
        if a == b:
            raise ConfigError(f"--compare {spec}: compares {a!r} with itself")
        return a, b
    if not cuts:
        raise ConfigError(f"--compare {spec!r}: write it as A:B (two features sets of this run)")
    if len(found) > 1:
        raise ConfigError(f"--compare {spec!r}: ambiguous ({found}); rename a features set")
    raise ConfigError(
        f"--compare {spec!r}: A and B must both be features sets of this run; the run has "
        f"{', '.join(known)}"
    )


def resolve_pairs(specs: Iterable[str] | None, features: Sequence[str]) -> list[tuple[str, str]]:
    """``--compare`` values (``A:B`` or pairs) -> pairs; none given: :func:`default_pairs`."""
    specs = list(specs or [])
    if not specs:
        return default_pairs(features)
    out = []
    for s in specs:
        if isinstance(s, (tuple, list)):
            if len(s) != 2:
                raise ConfigError(f"--compare {s!r}: need two features sets")
            pair = parse_pair(f"{s[0]}:{s[1]}", features)
        else:
            pair = parse_pair(s, features)
        if pair not in out:
            out.append(pair)
    return out


# --------------------------------------------------------------------------------------------------
# statistics


def _t_sf2(t: float, df: float) -> float:
    """Two-sided tail P(|T| >= |t|), T ~ Student t with ``df`` degrees of freedom."""
    from scipy import special

    return float(2.0 * special.stdtr(df, -abs(t)))


def _t_quantile(q: float, df: float) -> float:
    from scipy import special

    return float(special.stdtrit(df, q))


def t_test(diff: float, se: float, df: float, ci_level: float = 0.95) -> tuple[float, float, float]:
    """``(ci_low, ci_high, p)`` of a t test of ``diff`` with standard error ``se``.

    ``se == 0``: p = 1 when ``diff == 0`` else 0 (a difference with no spread), interval a point.
    """
    if not (math.isfinite(diff) and math.isfinite(se)) or df < 1:
        return math.nan, math.nan, math.nan
    if se <= 0:
        return diff, diff, 1.0 if diff == 0 else 0.0
    half = _t_quantile(0.5 + ci_level / 2.0, df) * se
    return diff - half, diff + half, min(1.0, _t_sf2(diff / se, df))


def corrected_resampled_t(
    diffs: Sequence[float], test_train_ratio: float, ci_level: float = 0.95
) -> dict:
    """Nadeau & Bengio's corrected resampled t test on per-fold differences.

    ``diffs``: the metric difference A - B of each fold of each repeat (J values);
    ``test_train_ratio``: n_test / n_train of one fold (patients). Variance
    ``(1/J + ratio) s^2``, t with J - 1 degrees of freedom (Bouckaert & Frank 2004 use it on
    10 x 10-fold CV). Returns ``{"diff", "se", "df", "ci_low", "ci_high", "p", "n_folds"}``;
    NaN where fewer than two folds have a finite difference.
    """
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    j = len(d)
    out = {"diff": math.nan, "se": math.nan, "df": max(j - 1, 0), "n_folds": j}
    if j == 0:
        out.update(ci_low=math.nan, ci_high=math.nan, p=math.nan)
        return out
    mean = float(d.mean())
    out["diff"] = mean
    if j < 2:
        out.update(ci_low=math.nan, ci_high=math.nan, p=math.nan)
        return out
    var = float(np.var(d, ddof=1))
    se = math.sqrt((1.0 / j + float(test_train_ratio)) * var)
    low, high, p = t_test(mean, se, j - 1, ci_level)
    out.update(se=se, ci_low=low, ci_high=high, p=p)
    return out


# --------------------------------------------------------------------------------------------------
# flags: what keeps a comparison out of the verdicts


def constant_reason(y_pred, proba=None, *, share: float = NEAR_CONSTANT_SHARE) -> str:
    """Why a result's predictions are (nearly) constant, or ``""``.

    Constant: every unit gets the same predicted class. Nearly constant: all but at most
    ``max(1, floor(share * n))`` units get the same class (1% by default: 2 of 200 differ).
    Constant scores: every probability column identical across units (no ranking either).
    Such a result says nothing about the features set; it is flagged in the report and never
    counted in "better in N".
    """
    yp = pd.Series(np.asarray(y_pred, dtype=object)).astype(str)
    n = len(yp)
    if n == 0:
        return ""
    if proba is not None:
        p = np.asarray(proba, dtype=float).reshape(n, -1)
        if n > 1 and np.all(np.ptp(p, axis=0) <= 1e-12):
            return "constant scores: the same probabilities for every unit"
    counts = yp.value_counts()
    top, n_top = str(counts.index[0]), int(counts.iloc[0])
    if n_top == n:
        return f"constant predictions: every one of the {n} units predicted {top!r}"
    allowed = max(1, int(math.floor(share * n)))
    if n >= 20 and n - n_top <= allowed:
        return (
            f"nearly constant predictions: {n_top} of {n} units predicted {top!r} (at most "
            f"{allowed} differ)"
        )
    return ""


# --------------------------------------------------------------------------------------------------
# the table


def _evaluation(fold) -> str:
    from .table import evaluation_of

    return evaluation_of(fold)


def _keys(level: str, frame: pd.DataFrame) -> list[str]:
    if level not in LEVEL_KEYS:
        raise ConfigError(f"level {level!r}: choose one of {', '.join(LEVEL_KEYS)}")
    keys = list(LEVEL_KEYS[level])
    missing = [k for k in keys if k not in frame.columns]
    if missing:
        raise ConfigError(f"{level}-level predictions lack the column(s) {missing}")
    return keys


def _merged(a: pd.DataFrame, b: pd.DataFrame, keys: list[str], pcols: list[str]) -> pd.DataFrame:
    """A and B on the units both predicted (inner join on the level's keys)."""
    cols = [*keys, "fold", "y_true", "y_pred", *pcols]
    if "patient_id" not in keys:
        cols.insert(len(keys), "patient_id")
    if "repeat" in a.columns:
        cols.append("repeat")
    left = a[[c for c in cols if c in a.columns]]
    right = b[[c for c in [*keys, "y_true", "y_pred", *pcols, "fold", "repeat"] if c in b.columns]]
    join = [*keys, *(["repeat"] if "repeat" in left.columns and "repeat" in right.columns else [])]
    m = left.merge(right, on=join, suffixes=("_a", "_b"))
    if (m["y_true_a"].astype(str) != m["y_true_b"].astype(str)).any():
        bad = m.loc[m["y_true_a"].astype(str) != m["y_true_b"].astype(str), keys].iloc[0]
        raise ConfigError(
            f"paired comparison: the two prediction sets disagree on y_true (e.g. "
            f"{dict(bad)}); they were made with different labels"
        )
    if "fold_b" in m.columns and (m["fold_a"].astype(str) != m["fold_b"].astype(str)).any():
        raise ConfigError(
            "paired comparison: the two prediction sets put the same unit in different folds; "
            "they come from different splits and cannot be paired fold by fold"
        )
    return m.rename(columns={"fold_a": "fold"})


def _first_repeat(m: pd.DataFrame) -> pd.DataFrame:
    """The rows of the first CV repeat (the pooled bootstrap counts each unit once)."""
    if "repeat" not in m.columns or m.empty:
        return m
    first = sorted(m["repeat"].astype(str).unique(), key=lambda v: (len(v), v))[0]
    return m[m["repeat"].astype(str) == first]


def _prepared(m: pd.DataFrame, side: str, classes, positive) -> _Prepared:
    return _Prepared(
        m["y_true_a"],
        m[f"y_pred_{side}"],
        m[[f"p_{c}_{side}" for c in classes]].to_numpy(float),
        classes,
        0.5,
        positive,
    )


def _cv_test(m: pd.DataFrame, classes, positive, metrics, ci_level) -> dict:
    """Corrected resampled t per metric over the folds (x repeats) of ``m``.

    A fold's metric is the metric of the rows weighted by fold membership (0/1): one batched
    kernel call for every fold, the same numbers as scoring each fold's rows alone.
    """
    repeat = m["repeat"].astype(str) if "repeat" in m.columns else pd.Series("1", index=m.index)
    key = pd.Series(list(zip(repeat, m["fold"].astype(str), strict=True)), index=m.index)
    codes, uniques = pd.factorize(key, sort=True)
    W = np.zeros((len(uniques), len(m)))
    W[codes, np.arange(len(m))] = 1.0
    sa = _prepared(m, "a", classes, positive).scalars_batch(W, metrics)
    sb = _prepared(m, "b", classes, positive).scalars_batch(W, metrics)
    patients = m["patient_id"].astype(str).to_numpy()
    n_pat = {r: len(set(patients[(repeat == r).to_numpy()])) for r in repeat.unique()}
    ratios = []
    for j, (r, _fold) in enumerate(uniques):
        n_test = len(set(patients[codes == j]))
        n_train = n_pat[r] - n_test
        ratios.append(n_test / n_train if n_train > 0 else math.nan)
    ratio = float(np.nanmean(ratios)) if np.isfinite(ratios).any() else math.nan
    n_repeats = int(repeat.nunique())
    out = {}
    for k in metrics:
        per_fold = (np.asarray(sa[k], dtype=float) - np.asarray(sb[k], dtype=float)).tolist()
        res = corrected_resampled_t(per_fold, ratio, ci_level)
        res.update(per_fold=per_fold, ratio=ratio, n_repeats=n_repeats)
        out[k] = res
    return out


def _bootstrap_test(m, classes, positive, metrics, n_boot, seed, ci_level) -> dict:
    """Paired patient-clustered bootstrap SE per metric; small-sample t test and interval.

    The bootstrap variance of a mean over m clusters is (m - 1)/m of its unbiased estimate;
    balanced accuracy and ROC-AUC are built from per-class means, so the variance is scaled by
    m/(m - 1) with m the smallest class's patients (the conservative choice), and t has n - 1
    degrees of freedom (n patients)."""
    pa, pb = _prepared(m, "a", classes, positive), _prepared(m, "b", classes, positive)
    point_a, point_b = pa.scalars(), pb.scalars()
    groups = m["patient_id"].astype(str).to_numpy()
    n = len(set(groups))
    per_class = _patients_per_class(m["y_true_a"], groups, classes)
    present = [v for v in per_class.values() if v > 0]
    m_min = min(present) if present else 0
    rng = np.random.default_rng(seed)
    diffs = {k: np.empty(n_boot) for k in metrics}
    done, chunk = 0, _chunk(n_boot, len(m))
    while done < n_boot:
        W = cluster_bootstrap_weights(groups, min(chunk, n_boot - done), rng)
        sa, sb = pa.scalars_batch(W, metrics), pb.scalars_batch(W, metrics)
        for k in metrics:
            diffs[k][done : done + len(W)] = sa[k] - sb[k]
        done += len(W)
    out = {}
    for k in metrics:
        diff = float(point_a[k] - point_b[k])
        finite = diffs[k][np.isfinite(diffs[k])]
        se = math.nan
        if finite.size >= 2 and n >= 2 and m_min >= 2:
            se = float(np.std(finite, ddof=1)) * math.sqrt(m_min / (m_min - 1))
        low, high, p = t_test(diff, se, n - 1, ci_level)
        out[k] = {"diff": diff, "se": se, "df": n - 1, "ci_low": low, "ci_high": high, "p": p,
                  "n_valid": int(finite.size), "m_min": m_min}  # fmt: skip
    return out


def compare_predictions(
    predictions: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    classes: Sequence[str],
    *,
    level: str = "image",
    evaluations: Sequence[str] = COMPARED_EVALUATIONS,
    n_boot: int = 1000,
    seed: int = 0,
    ci_level: float = 0.95,
    min_patients_per_class: int = MIN_PATIENTS_PER_CLASS,
    positive: str | None = None,
    metrics: Sequence[str] = MAIN_METRICS,
    mcnemar: bool = True,
    cv_method: str = "corrected-t",
    optimistic_features: Sequence[str] = (),
) -> pd.DataFrame:
    """The ``comparisons.csv`` frame of ``pairs`` at ``level`` (see the module docstring).

    ``predictions``: rows with ``patient_id, fold, features, head, y_true, y_pred, p_<class>``
    and the level's unit keys (:data:`LEVEL_KEYS`: ``image_id`` for images; ``patient_id,
    exam_id, laterality`` for breasts; ``patient_id, exam_id`` for exams); an optional
    ``repeat`` column numbers CV repeats (the corrected t then runs over folds x repeats; the
    test rows must not repeat). Every head present for both features sets of a pair is
    compared, in every evaluation of ``evaluations`` both have. ``optimistic_features``: sets
    whose rows are optimistic (embeddings trained on the evaluated images): compared, never
    tested. Rows come out sorted by evaluation (test first), head, pair (as given), metric.
    """
    if cv_method not in CV_METHODS:
        raise ConfigError(f"cv_method {cv_method!r}: choose one of {CV_METHODS}")
    classes = tuple(str(c) for c in classes)
    pcols = [f"p_{c}" for c in classes]
    missing = [c for c in ("patient_id", "fold", "features", "head", "y_true", "y_pred", *pcols)
               if c not in predictions.columns]  # fmt: skip
    if missing:
        raise ConfigError(f"predictions lack the column(s) {missing} needed for comparisons")
    keys = _keys(level, predictions)
    optimistic = {str(f) for f in optimistic_features or ()}
    frame = predictions.assign(
        _eval=predictions["fold"].astype(str).map(_evaluation),
        features=predictions["features"].astype(str),
        head=predictions["head"].astype(str),
    )
    rows = []
    for evaluation in ("test", "cv"):
        if evaluation not in evaluations:
            continue
        part = frame[frame["_eval"] == evaluation]
        if part.empty:
            continue
        heads = list(dict.fromkeys(part["head"]))
        for head in heads:
            hp = part[part["head"] == head]
            for fa, fb in pairs:
                a, b = hp[hp["features"] == str(fa)], hp[hp["features"] == str(fb)]
                if a.empty or b.empty:
                    continue
                if evaluation == "test":  # one test set: the first repeat's (they are equal)
                    a, b = _first_repeat(a), _first_repeat(b)
                rows += _compare_one(
                    a, b, str(fa), str(fb), head, evaluation, level, keys, pcols, classes,
                    positive=positive, metrics=metrics, mcnemar=mcnemar, n_boot=n_boot,
                    seed=seed, ci_level=ci_level, min_patients=min_patients_per_class,
                    cv_method=cv_method, optimistic=optimistic,
                )  # fmt: skip
    out = pd.DataFrame(rows, columns=[*COMPARISON_COLUMNS, "_family", "_excluded"])
    _holm(out)
    return out[list(COMPARISON_COLUMNS)].reset_index(drop=True)


def _compare_one(
    a, b, fa, fb, head, evaluation, level, keys, pcols, classes, *, positive, metrics, mcnemar,
    n_boot, seed, ci_level, min_patients, cv_method, optimistic,
) -> list[dict]:  # fmt: skip
    m = _merged(a, b, keys, pcols)
    n_units = len(m.drop_duplicates(keys)) if len(m) else 0
    n_pat = int(m["patient_id"].nunique()) if len(m) else 0
    base = {
        "evaluation": evaluation, "level": level, "head": head, "features_a": fa,
        "features_b": fb, "n_images": n_units, "n_patients": n_pat,
    }  # fmt: skip
    family = f"{evaluation}/{level}"
    excluded = []
    if not len(m):
        excluded.append("no shared units")
    else:
        note = ci_note(_patients_per_class(m["y_true_a"], m["patient_id"], classes), min_patients)
        if note:
            excluded.append(f"not tested: {note.removeprefix('n/a (').removesuffix(')')}")
    for side, f, frame in (("a", fa, m), ("b", fb, m)):
        if not len(frame):
            continue
        why = constant_reason(
            frame[f"y_pred_{side}"], frame[[f"{c}_{side}" for c in pcols]].to_numpy(float)
        )
        if why:
            excluded.append(f"{f}: {why}")
    for f in (fa, fb):
        if f in optimistic:
            excluded.append(f"{f} optimistic (embeddings trained on the evaluated images)")
    too_few = any(e.startswith(("not tested", "no shared")) for e in excluded)
    rows = []
    stats: dict = {}
    if len(m) and evaluation == "cv" and cv_method == "corrected-t":
        stats = _cv_test(m, classes, positive, metrics, ci_level)
    elif len(m) and not too_few:
        stats = _bootstrap_test(_first_repeat(m), classes, positive, metrics, n_boot, seed,
                                ci_level)  # fmt: skip
    elif len(m):
        first = _first_repeat(m)
        pa = _prepared(first, "a", classes, positive).scalars()
        pb = _prepared(first, "b", classes, positive).scalars()
        stats = {k: {"diff": float(pa[k] - pb[k])} for k in metrics}
    if too_few:  # the difference is shown; no interval or test on so few patients
        stats = {k: {key: v for key, v in st.items() if key in ("diff", "n_folds", "n_repeats",
                                                                "ratio", "df")}
                 for k, st in stats.items()}  # fmt: skip
    for k in metrics:
        s = stats.get(k, {})
        if evaluation == "cv" and cv_method == "corrected-t":
            method = (
                f"corrected resampled t (Nadeau-Bengio): {s.get('n_folds', 0)} folds x "
                f"{s.get('n_repeats', 1)} repeat(s), n_test/n_train {s.get('ratio', math.nan):.3f}"
                f" (patients), df {s.get('df', 0)}; diff = mean per-fold difference"
            )
        elif evaluation == "cv":
            method = (
                f"EXPLORATORY pooled out-of-fold patient bootstrap ({n_boot} resamples), t on the "
                "bootstrap SE; ignores training-set variation, does not hold its level"
            )
        else:
            method = (
                f"paired patient-clustered bootstrap ({n_boot} resamples), t on the bootstrap SE "
                f"(variance x m/(m-1), m = {s.get('m_min', '?')} patients in the smallest class; "
                f"df {s.get('df', n_pat - 1)})"
            )
        rows.append(_row(base, k, s, method, family, excluded, ci_level))
    if mcnemar and evaluation != "cv":  # pooled over CV folds it holds the fold models fixed
        rows.append(_mcnemar_row(base, _first_repeat(m), family, excluded, classes))
    return rows


def _row(base, metric, s, method, family, excluded, ci_level) -> dict:
    why = "; ".join(excluded)
    method = f"{method}; {int(round(100 * ci_level))}% interval unadjusted; Holm family {family}"
    if why:
        method += f"; out of the family: {why}"
    return {
        **base, "metric": metric, "diff": s.get("diff", math.nan),
        "ci_low": s.get("ci_low", math.nan), "ci_high": s.get("ci_high", math.nan),
        "p_raw": s.get("p", math.nan), "p_holm": math.nan, "method": method,
        "_family": f"{family}/main", "_excluded": bool(excluded),
    }  # fmt: skip


def _mcnemar_row(base, m, family, excluded, classes) -> dict:
    excluded = list(excluded)
    if len(m) and not any(e.startswith(("not tested", "no shared")) for e in excluded):
        per_class = _patients_per_class(m["y_true_a"], m["patient_id"], classes)
        smallest = min((v for v in per_class.values() if v > 0), default=0)
        if smallest < MCNEMAR_MIN_PATIENTS_PER_CLASS:
            excluded.append(
                f"not tested: the clustered McNemar needs {MCNEMAR_MIN_PATIENTS_PER_CLASS} "
                f"patients per class ({smallest} here; at 10 it rejects a true null 6.8% of the "
                "time: benchmarks/null_calibration.py)"
            )
    if len(m):
        ca = m["y_pred_a"].astype(str) == m["y_true_a"].astype(str)
        cb = m["y_pred_b"].astype(str) == m["y_true_a"].astype(str)
        res = mcnemar_clustered(ca.to_numpy(), cb.to_numpy(), m["patient_id"].to_numpy())
        diff = float(ca.mean() - cb.mean())
        p = res["p_value"]
        if any(e.startswith(("not tested", "no shared")) for e in excluded):
            p = math.nan
        counts = (
            f"b={res['b']} (only A right), c={res['c']} (only B right), "
            f"{res['n_discordant_patients']} discordant patients"
        )
    else:
        diff, p, counts = math.nan, math.nan, "b=0, c=0, 0 discordant patients"
    method = (
        f"clustered McNemar (Durkalski 2003, patients as clusters), {counts}; diff = accuracy "
        f"A - B; Holm family {family} (McNemar)"
    )
    if excluded:
        method += f"; out of the family: {'; '.join(excluded)}"
    return {
        **base, "metric": MCNEMAR_METRIC, "diff": diff, "ci_low": math.nan, "ci_high": math.nan,
        "p_raw": p, "p_holm": math.nan, "method": method, "_family": f"{family}/mcnemar",
        "_excluded": bool(excluded),
    }  # fmt: skip


def _holm(out: pd.DataFrame) -> None:
    """p_holm in place: per family, over the rows that are tested."""
    if out.empty:
        return
    for _, idx in out.groupby("_family", sort=False).groups.items():
        sel = [i for i in idx if not out.at[i, "_excluded"]]
        adjusted = holm_adjust(out.loc[sel, "p_raw"].astype(float).tolist())
        for i, p in zip(sel, adjusted, strict=True):
            out.at[i, "p_holm"] = p


# --------------------------------------------------------------------------------------------------
# reading and verifying comparisons.csv


def read_comparisons(path) -> pd.DataFrame:
    """comparisons.csv with text columns kept as text; ConfigError when a column is missing."""
    df = pd.read_csv(
        path,
        dtype={c: str for c in ("evaluation", "level", "head", "features_a", "features_b",
                                "metric", "method")},
        keep_default_na=False,
        na_values={c: ["", "nan", "NaN"] for c in ("diff", "ci_low", "ci_high", "p_raw",
                                                  "p_holm")},
    )  # fmt: skip
    missing = [c for c in COMPARISON_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: comparisons table lacks columns {missing}")
    return df


def verify_comparisons(
    stored: pd.DataFrame, recomputed: pd.DataFrame, *, tol: float = 1e-9
) -> list[str]:
    """Every difference between a stored comparisons table and its recomputation: rows missing or
    extra, a number off by more than ``tol`` (NaN matches only NaN), a different ``method`` text
    (which holds the McNemar counts and the fold/repeat counts). Empty list: identical."""
    key = ["evaluation", "level", "head", "features_a", "features_b", "metric"]
    problems = []
    s = stored.astype({k: str for k in key}).set_index(key)
    r = recomputed.astype({k: str for k in key}).set_index(key)
    for k in s.index.difference(r.index):
        problems.append(f"{'/'.join(k)}: in comparisons.csv but not recomputed")
    for k in r.index.difference(s.index):
        problems.append(f"{'/'.join(k)}: recomputed but missing from comparisons.csv")
    if s.index.has_duplicates:
        problems.append("comparisons.csv holds a comparison twice")
        return problems
    for k in s.index.intersection(r.index):
        a, b = s.loc[k], r.loc[k]
        for col in ("n_images", "n_patients", "diff", "ci_low", "ci_high", "p_raw", "p_holm"):
            x, y = float(a[col]), float(b[col])
            same = (math.isnan(x) and math.isnan(y)) or (
                not (math.isnan(x) or math.isnan(y)) and abs(x - y) <= tol
            )
            if not same:
                problems.append(f"{'/'.join(k)}: {col} {x!r} on disk, {y!r} recomputed")
        if str(a["method"]) != str(b["method"]):
            problems.append(f"{'/'.join(k)}: method/counts differ: {a['method']!r} on disk")
    return problems


def comparisons_as_dicts(table: pd.DataFrame) -> list[dict]:
    """The rows as plain dicts (JSON-ready: NaN -> None is left to the writer)."""
    return [dict(r) for r in table.to_dict(orient="records")]


def verdicts(table: pd.DataFrame, metric: str, alpha: float = 0.05) -> dict[str, int]:
    """Counts of one metric's rows: ``better`` (A), ``worse``, ``unclear`` (no difference
    shown), ``not_tested`` (out of the Holm family: too few patients, constant, optimistic)."""
    rows = table[table["metric"] == metric]
    out = {"better": 0, "worse": 0, "unclear": 0, "not_tested": 0, "total": len(rows)}
    for _, r in rows.iterrows():
        p = float(r["p_holm"])
        if math.isnan(p):
            out["not_tested"] += 1
        elif p < alpha and float(r["diff"]) != 0:
            out["better" if float(r["diff"]) > 0 else "worse"] += 1
        else:
            out["unclear"] += 1
    return out


__all__ = [
    "COMPARED_EVALUATIONS", "COMPARISON_COLUMNS", "CV_METHODS", "LEVEL_KEYS", "MAIN_METRICS",
    "MCNEMAR_METRIC", "NEAR_CONSTANT_SHARE", "compare_predictions",
    "comparisons_as_dicts", "constant_reason", "corrected_resampled_t", "default_pairs",
    "parse_pair", "read_comparisons", "resolve_pairs", "t_test",
    "verdicts", "verify_comparisons",
]  # fmt: skip
