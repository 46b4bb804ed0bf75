"""featmammo: deep features from mammograms and honest, reproducible classifier comparisons.

Importing this package does not import torch: store readers, manifests, heads and reports work
without it. Public names are resolved lazily (PEP 562), so ``featmammo.open_store`` costs nothing
until used; so is the ``featmammo.store`` submodule (``import featmammo; featmammo.store.open(p)``).
"""

from __future__ import annotations

import importlib

from ._version import __version__

_LAZY = {
    # name: (module, attribute)
    "open_store": ("featmammo.store", "open"),
    "read_manifest": ("featmammo.datasets.manifest", "read_manifest"),
    "read_image": ("featmammo.io", "read_image"),
    "PreprocessConfig": ("featmammo.preprocess", "PreprocessConfig"),
    "fuse": ("featmammo.fusion", "fuse"),
    "make_head": ("featmammo.heads", "make"),
    "make_backbone": ("featmammo.backbones", "make"),
}

# submodules reachable as attributes without importing them first (``featmammo.store.open(p)``)
_SUBMODULES = ("store",)

__all__ = ["__version__", *_LAZY, *_SUBMODULES]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # also binds featmammo.<name>
    raise AttributeError(f"module 'featmammo' has no attribute {name!r}")
