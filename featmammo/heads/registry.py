"""The head registry: one factory, :func:`make`, for every classifier head.

A head is a builder ``fn(*, seed, **params) -> classifier`` registered under a name with a short
description of how it handles class imbalance and where its probabilities come from.
:func:`make` wraps the classifier in a scikit-learn Pipeline that holds its own scaler (and, when
``blocks`` are given, per-block scaling or PCA from :mod:`featmammo.fusion`), so fitting a head on a
training fold learns every statistic from that fold only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadInfo:
    """A head's name, imbalance handling, probability source and decision rule (for docs and
    reports). ``decision`` says how its predicted class follows from its probabilities: for every
    built-in head the argmax of class-balanced probabilities (:data:`DECISION_RULE`)."""

    name: str
    builder: Callable = field(repr=False)
    description: str = ""
    imbalance: str = ""
    probabilities: str = ""
    aliases: tuple[str, ...] = ()
    decision: str = ""


#: the one decision rule of the built-in heads
DECISION_RULE = (
    "argmax of class-balanced probabilities: the head's probabilities are those of a model "
    "trained as if every class had the prior 1/K (balanced class weights, or the training prior "
    "divided out), so no class wins by being common; the predicted class is the most probable one"
)


_REGISTRY: dict[str, HeadInfo] = {}
_ALIASES: dict[str, str] = {}


def register(
    name: str,
    *,
    description: str,
    imbalance: str,
    probabilities: str,
    aliases: tuple[str, ...] = (),
    decision: str = DECISION_RULE,
):
    """Decorator: register ``builder(*, seed, **params) -> classifier`` under ``name``.

    ``decision``: how the predicted class follows from the probabilities (default: the argmax of
    class-balanced probabilities, :data:`DECISION_RULE`; a head registered with another rule must
    say so, since ``fit`` compares heads on the argmax of their probabilities)."""

    def deco(builder: Callable) -> Callable:
        if name in _REGISTRY or name in _ALIASES:
            raise ConfigError(f"head {name!r} is registered twice")
        _REGISTRY[name] = HeadInfo(
            name, builder, description, imbalance, probabilities, aliases, decision
        )
        for a in aliases:
            _ALIASES[a] = name
        return builder

    return deco


def _ensure_loaded() -> None:
    # the built-in heads register themselves on import (no torch imported by either module)
    from . import refine, sklearn_heads  # noqa: F401


def available() -> list[str]:
    """Registered head names (aliases excluded), in registration order."""
    _ensure_loaded()
    return list(_REGISTRY)


def canonical_name(name: str) -> str:
    """The registered name for ``name`` or an alias of it; ConfigError listing names if unknown."""
    _ensure_loaded()
    if name in _REGISTRY:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    raise ConfigError(f"unknown head {name!r}; available: {', '.join(available())}")


def describe(name: str) -> HeadInfo:
    """The :class:`HeadInfo` of a head (imbalance handling, probability source, decision rule)."""
    return _REGISTRY[canonical_name(name)]


def make(
    name: str, *, seed: int = 0, blocks=None, block_pca: int | None = None, balance=True, **params
):
    """A fresh, unfitted head: ``Pipeline([("scale", BlockScaler), ("clf", classifier)])``.

    The one scaling rule: every features set -- a single backbone is a one-block set -- goes
    through the same :class:`~featmammo.fusion.BlockScaler`: each column is standardised on the
    training rows, then each of the B blocks is divided by sqrt(B x its width), so every block
    carries 1/B and the whole row a total variance of 1 (``balance=False``: standardisation only).
    A regularisation strength (C, alpha) or an RBF gamma then means the same thing for a 2,048-d
    backbone and a 6,144-d hybrid, and no head re-scales its input afterwards.

    ``seed`` seeds the classifier. ``blocks`` (``FusedFeatures.blocks``; None = one block);
    ``block_pca=k`` instead standardises and keeps k principal components per block. Any other
    keyword is a parameter of the classifier (e.g. ``C=0.1``, ``n_estimators=500``); an unknown one
    raises ConfigError naming the valid ones.
    """
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from .scaling import BlockPCA, BlockScaler

    info = describe(name)
    try:
        clf = info.builder(seed=seed, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"head {info.name!r}: invalid parameter(s) {sorted(params)}: {exc}"
        ) from exc
    if block_pca is not None:
        steps = [
            ("scale", StandardScaler()),
            ("block_pca", BlockPCA(blocks=blocks, n_components=int(block_pca), random_state=seed)),
        ]
    else:
        steps = [("scale", BlockScaler(blocks=blocks, balance=bool(balance)))]
    log.debug("head %s (seed %d): %s", info.name, seed, clf)
    return Pipeline([*steps, ("clf", clf)])


def accepts_groups(model) -> bool:
    """Whether a head's classifier takes ``groups`` (patient ids) in ``fit`` (early stopping)."""
    import inspect

    clf = model.steps[-1][1] if hasattr(model, "steps") else model
    return "groups" in inspect.signature(clf.fit).parameters


def fit_head(model, X, y, groups=None):
    """``model.fit(X, y)``, passing the patient ids to a classifier that early-stops on a
    patient hold-out (``clf__groups``; scikit-learn routes ``step__param`` fit parameters)."""
    if groups is not None and accepts_groups(model):
        key = f"{model.steps[-1][0]}__groups" if hasattr(model, "steps") else "groups"
        return model.fit(X, y, **{key: np.asarray(groups)})
    return model.fit(X, y)


def fit_notes(model) -> list[str]:
    """What a fitted head could not do as configured, one sentence each (empty when nothing):
    today, early stopping skipped because the training rows had too few patients per class for
    a patient hold-out (the head then trained for all its rounds / epochs)."""
    clf = model.steps[-1][1] if hasattr(model, "steps") else model
    fraction = float(getattr(clf, "validation_fraction", 0) or 0)
    held_out = getattr(clf, "validation_index_", None)
    if fraction > 0 and held_out is not None and len(held_out) == 0:
        return [
            f"too few patients per class for a {100 * fraction:.0f}% patient hold-out, so no "
            "early stopping: trained for every round / epoch"
        ]
    return []


def set_routed_params(estimator, params: dict, inner: str | None = None):
    """``estimator.set_params(**params)``, routing a parameter the outer estimator does not have to
    ``<inner>__<param>`` (e.g. LinearSVC's ``C`` inside CalibratedClassifierCV)."""
    if not params:
        return estimator
    own = estimator.get_params(deep=False)
    routed = {}
    for k, v in params.items():
        routed[k if (k in own or inner is None or "__" in k) else f"{inner}__{k}"] = v
    estimator.set_params(**routed)
    return estimator
