"""``featmammo fit`` and ``featmammo predict``: heads on stored embeddings; saved heads on new data.

One module per concern:

- :mod:`featmammo.fit.run`: :func:`fit`, the run (features x heads, patient-grouped CV + test);
- :mod:`featmammo.fit.stores`: finite store views, exclusions, store fingerprints;
- :mod:`featmammo.fit.splits`: test/CV split assignment, leakage audits, inner folds;
- :mod:`featmammo.fit.caveats`: caveats from stores, the trained-embeddings check;
- :mod:`featmammo.fit.outputs`: the run folder (staging, install), model files, sidecars;
- :mod:`featmammo.fit.predict`: a fitted head on new images, manifests or store rows.

Every name of the former ``featmammo.fit`` module stays importable from here, and the former
modules ``featmammo.fit_stores``, ``fit_splits``, ``fit_caveats``, ``fit_outputs`` and
``featmammo.predict`` are aliases of these (the same module objects).
"""

from __future__ import annotations

from . import run as _run
from .caveats import caveats_from_stores
from .outputs import MODELS, RUN_OUTPUTS, model_filename
from .run import DEFAULT_HEADS, LABEL_ORDER, FitResult, fit
from .splits import TEST_SPLITS
from .stores import FiniteStoreView, store_fingerprint

__all__ = [
    "DEFAULT_HEADS",
    "LABEL_ORDER",
    "MODELS",
    "RUN_OUTPUTS",
    "TEST_SPLITS",
    "FiniteStoreView",
    "FitResult",
    "caveats_from_stores",
    "fit",
    "model_filename",
    "store_fingerprint",
]


def __getattr__(name: str):
    """The private helpers the former ``featmammo.fit`` module exposed (``_assign_splits`` ...)."""
    try:
        return getattr(_run, name)
    except AttributeError:
        raise AttributeError(f"module 'featmammo.fit' has no attribute {name!r}") from None
