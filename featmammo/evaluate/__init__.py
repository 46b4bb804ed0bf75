"""Metrics, patient-clustered bootstrap CIs, baselines and paired comparisons (no torch, no scipy).

This module owns every number featmammo reports about a classifier. It works on plain arrays and on
the ``predictions.csv`` table (``image_id, patient_id, fold, features, head, y_true, y_pred,
p_<class>...``) so that every figure can be recomputed from stored predictions:

- :func:`compute_metrics` -- the paper's table (per-class precision/recall/F1/support, macro and
  weighted averages, accuracy) plus balanced accuracy, ROC-AUC (one-vs-rest and positive-vs-rest),
  PR-AUC and sensitivity/specificity under the one decision rule (argmax = ``y_pred``; a threshold
  only adds a separately named second operating point). Degenerate inputs give NaN with a note,
  never an exception.
- :func:`bootstrap_metrics` -- percentile CIs by resampling *patients* (cluster bootstrap): all
  images of a drawn patient enter the resample together, so correlated views do not shrink the
  intervals.
- :func:`paired_comparison` / :func:`mcnemar_clustered` / :func:`holm_adjust` -- model A vs model
  B on the same images (paired patient bootstrap; McNemar with patients as clusters), adjusted for
  multiplicity.
- :func:`compare_predictions` (:mod:`.comparisons`) -- the ``comparisons.csv`` table: any two
  features sets, same head, same units; corrected resampled t on CV folds, paired patient
  bootstrap on the test, clustered McNemar as its own Holm family.
- :mod:`.levels` -- image rows aggregated to breasts (mean or most suspicious view) and exams
  (highest-scoring breast), labels the most severe class.
- screening metrics of the positive class (:func:`screening_metric_names`):
  ``sens_at_spec_<t>``, ``pauc_0.10``, ``pf1``.
- :func:`evaluate_predictions` -- all of the above for every features x head x evaluation in a
  table. Evaluations: ``cv`` (numbered folds), ``test``, ``validation`` (HybridNet early-stopping
  rows: optimistic, never ranked or compared). No CI below :data:`MIN_PATIENTS_PER_CLASS`
  patients in some class (:func:`ci_note` says why).

The metric kernels are written with numpy (weighted confusion matrices, Mann-Whitney AUC, step-wise
average precision) so that a 1000-resample bootstrap costs well under a second; tests check them
against scikit-learn.

One concern per module: :mod:`.kernels` (the decision rule and the metric kernels),
:mod:`.bootstrap` (patient-clustered resampling and CIs), :mod:`.paired` (paired comparisons,
McNemar, Holm) and :mod:`.table` (predictions.csv -> leaderboard + metrics); every name stays
importable from ``featmammo.evaluate``.
"""

from __future__ import annotations

from ..errors import ConfigError
from .bootstrap import (
    MIN_PATIENTS_PER_CLASS,
    bootstrap_metrics,
    ci_note,
    cluster_bootstrap_weights,
    patients_per_class,
)
from .comparisons import (
    COMPARISON_COLUMNS,
    compare_predictions,
    constant_reason,
    default_pairs,
    read_comparisons,
    resolve_pairs,
    verify_comparisons,
)
from .kernels import (
    CI_METRICS,
    DECISION_RULE,
    DEFAULT_AT_SPECIFICITY,
    SCALAR_METRICS,
    check_specificities,
    compute_metrics,
    majority_baseline,
    positive_class,
    screening_metric_names,
    table_from_confusion,
)
from .kernels import (
    _Prepared as _Prepared,  # tests build it directly
)
from .levels import (
    AGGREGATES,
    LEVEL_FILES,
    LEVELS,
    aggregate_predictions,
    default_levels,
    parse_levels,
)
from .paired import (
    ADJUSTMENT,
    PAIRED_METRICS,
    binomial_two_sided,
    holm_adjust,
    mcnemar_clustered,
    mcnemar_exact,
    paired_comparison,
)
from .table import (
    HONEST_EVALUATIONS,
    RANKING,
    TEST_FOLD,
    VALIDATION_FOLD,
    evaluate_predictions,
    evaluation_of,
    read_predictions,
)

__all__ = [
    "AGGREGATES", "DEFAULT_AT_SPECIFICITY", "LEVELS", "LEVEL_FILES", "RANKING",
    "aggregate_predictions", "check_specificities", "default_levels", "parse_levels",
    "screening_metric_names",
    "ADJUSTMENT", "CI_METRICS", "COMPARISON_COLUMNS", "DECISION_RULE", "HONEST_EVALUATIONS",
    "MIN_PATIENTS_PER_CLASS",
    "PAIRED_METRICS", "SCALAR_METRICS", "TEST_FOLD", "VALIDATION_FOLD", "ConfigError",
    "binomial_two_sided", "bootstrap_metrics", "ci_note", "cluster_bootstrap_weights",
    "compare_predictions", "compute_metrics", "constant_reason", "default_pairs",
    "evaluate_predictions", "evaluation_of", "holm_adjust",
    "majority_baseline", "mcnemar_clustered", "mcnemar_exact", "paired_comparison",
    "patients_per_class", "positive_class", "read_comparisons", "read_predictions", "resolve_pairs",
    "table_from_confusion", "verify_comparisons",
]  # fmt: skip
