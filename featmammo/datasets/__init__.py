"""Manifest builders and the manifest contract (one row per image, saved as CSV).

``manifest`` (read/write/validate/hash) is imported eagerly; the builders (``cbis_ddsm``,
``folders``, ``synthetic``) are resolved lazily so importing this package stays cheap and never
pulls in a builder's dependencies. No torch.
"""

from __future__ import annotations

import importlib

from featmammo.datasets.manifest import (
    LABELS,
    REQUIRED_COLUMNS,
    manifest_hash,
    normalize_label,
    read_manifest,
    write_manifest,
)

_LAZY = {
    "build_cbis_ddsm": ("featmammo.datasets.cbis_ddsm", "build_cbis_ddsm"),
    "build_folder": ("featmammo.datasets.folders", "build_folder"),
}

__all__ = [
    "LABELS",
    "REQUIRED_COLUMNS",
    "build_cbis_ddsm",
    "build_folder",
    "manifest_hash",
    "normalize_label",
    "read_manifest",
    "write_manifest",
]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'featmammo.datasets' has no attribute {name!r}")
