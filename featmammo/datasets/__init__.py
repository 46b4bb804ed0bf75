"""Manifest builders and the manifest contract (one row per image, saved as CSV).

``manifest`` (read/write/validate/hash) is imported eagerly; the builders -- one module per set
(``cbis_ddsm``, ``ddsm``, ``ddsm_patches``, ``mias``, ``inbreast``, ``vindr``, ``rsna``, ``cmmd``),
``folders``, ``merge`` and ``synthetic`` -- are resolved lazily so importing this package stays
cheap and never pulls in a builder's dependencies. Every set builder returns ``(df, summary)``
over the shared :mod:`featmammo.datasets.base` (summary, unresolved rows, ``save``). No torch.
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
    "build_ddsm": ("featmammo.datasets.ddsm", "build_ddsm"),
    "build_ddsm_patches": ("featmammo.datasets.ddsm_patches", "build_ddsm_patches"),
    "build_mias": ("featmammo.datasets.mias", "build_mias"),
    "build_inbreast": ("featmammo.datasets.inbreast", "build_inbreast"),
    "build_vindr": ("featmammo.datasets.vindr", "build_vindr"),
    "build_rsna": ("featmammo.datasets.rsna", "build_rsna"),
    "build_cmmd": ("featmammo.datasets.cmmd", "build_cmmd"),
    "merge_manifests": ("featmammo.datasets.merge", "merge_manifests"),
    "save": ("featmammo.datasets.base", "save"),
}

__all__ = [
    "LABELS",
    "REQUIRED_COLUMNS",
    "build_cbis_ddsm",
    "build_cmmd",
    "build_ddsm",
    "build_ddsm_patches",
    "build_folder",
    "build_inbreast",
    "build_mias",
    "build_rsna",
    "build_vindr",
    "merge_manifests",
    "save",
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
