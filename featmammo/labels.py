"""Class schemes and label encodings.

Schemes (as in the paper): three classes ``normal, benign, malignant``; ``benign-malignant``
(abnormal images only); ``normal-abnormal`` (benign and malignant pooled as ``abnormal``).
Encodings: ``integer`` (index into the class tuple, int64), ``onehot`` ((N, K) float32, for neural
nets) and ``binary`` (0/1 int64, two-class schemes only; 1 = the second class, i.e. ``malignant`` or
``abnormal``). No torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from featmammo.errors import ConfigError, ManifestError

# The manifest's labels. Defined here, at the bottom of the layers (no featmammo import but
# errors), so the manifest contract (featmammo.datasets.manifest) and the class schemes share them.
LABELS = ("normal", "benign", "malignant")

# input spellings accepted for each label (compared lowercase, after stripping)
LABEL_ALIASES = {
    "normal": "normal",
    "benign": "benign",
    "malignant": "malignant",
    "benign_without_callback": "benign",
    "benign without callback": "benign",
}

SCHEMES = {
    "3class": ("normal", "benign", "malignant"),
    "benign-malignant": ("benign", "malignant"),
    "normal-abnormal": ("normal", "abnormal"),
}
SCHEME_ALIASES = {
    "3-class": "3class",
    "three-class": "3class",
    "normal-benign-malignant": "3class",
    "benign_malignant": "benign-malignant",
    "bm": "benign-malignant",
    "normal_abnormal": "normal-abnormal",
    "na": "normal-abnormal",
}
KNOWN_CLASSES = ("normal", "benign", "malignant", "abnormal")
ENCODINGS = ("integer", "onehot", "binary")


def normalize_label(value) -> str | None:
    """The canonical label for an input spelling, or None when it is not a known label."""
    return LABEL_ALIASES.get(str(value).strip().lower())


def parse_classes(spec) -> tuple[str, ...]:
    """``"normal,benign,malignant"`` | a scheme name (``3class``, ``benign-malignant``,
    ``normal-abnormal``) | a list -> the class tuple (order = encoding order)."""
    if isinstance(spec, str):
        key = spec.strip().lower()
        key = SCHEME_ALIASES.get(key, key)
        if key in SCHEMES:
            return SCHEMES[key]
        items = [s for s in (p.strip() for p in key.split(",")) if s]
    elif isinstance(spec, Sequence):
        items = [str(s).strip().lower() for s in spec]
    else:
        raise ConfigError(f"classes: expected a string or a list, got {type(spec).__name__}")
    classes = []
    for c in items:
        canon = "abnormal" if c == "abnormal" else normalize_label(c)
        if canon is None:
            raise ConfigError(
                f"classes: unknown class {c!r} (known: {', '.join(KNOWN_CLASSES)}; "
                f"schemes: {', '.join(SCHEMES)})"
            )
        classes.append(canon)
    if len(classes) < 2:
        raise ConfigError(f"classes: need at least two classes (got {classes})")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"classes: duplicate class in {classes}")
    if "abnormal" in classes and ({"benign", "malignant"} & set(classes)):
        raise ConfigError(
            f"classes: 'abnormal' cannot be combined with benign/malignant ({classes})"
        )
    return tuple(classes)


def _map_one(label, classes: tuple[str, ...]) -> str | None:
    lab = normalize_label(label) if str(label).strip().lower() != "abnormal" else "abnormal"
    if lab is None:
        return None
    if lab in classes:
        return lab
    if "abnormal" in classes and lab in ("benign", "malignant"):
        return "abnormal"
    return None


def in_scheme(labels: Sequence, classes) -> np.ndarray:
    """Mask of the labels the scheme can express (e.g. drop normals for benign-malignant)."""
    classes = parse_classes(classes)
    return np.array([_map_one(v, classes) is not None for v in labels], dtype=bool)


def map_labels(labels: Sequence, classes) -> np.ndarray:
    """Manifest labels -> class names of the scheme (``benign``/``malignant`` -> ``abnormal`` for
    ``normal-abnormal``). Raises ManifestError naming the first rows whose label has no class."""
    classes = parse_classes(classes)
    out = np.empty(len(labels), dtype=object)
    bad = []
    for i, v in enumerate(labels):
        m = _map_one(v, classes)
        if m is None:
            bad.append((i, v))
        out[i] = m
    if bad:
        shown = ", ".join(f"row {i}: {v!r}" for i, v in bad[:10])
        raise ManifestError(
            f"{len(bad)} label(s) not in classes {classes}: {shown}"
            + (" ..." if len(bad) > 10 else "")
            + " (filter them first, e.g. with featmammo.labels.in_scheme)"
        )
    return out


def encode(labels: Sequence, classes, encoding: str = "integer") -> np.ndarray:
    """Labels -> ``integer`` (N,) int64 | ``onehot`` (N, K) float32 | ``binary`` (N,) int64."""
    classes = parse_classes(classes)
    if encoding not in ENCODINGS:
        raise ConfigError(f"encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    mapped = map_labels(labels, classes)
    lookup = {c: i for i, c in enumerate(classes)}
    idx = np.array([lookup[m] for m in mapped], dtype=np.int64)
    if encoding == "integer":
        return idx
    if encoding == "binary":
        if len(classes) != 2:
            raise ConfigError(f"binary encoding needs two classes (got {classes})")
        return idx
    onehot = np.zeros((len(idx), len(classes)), dtype=np.float32)
    onehot[np.arange(len(idx)), idx] = 1.0
    return onehot


def decode(codes, classes, encoding: str | None = None) -> np.ndarray:
    """Inverse of :func:`encode`: integer/binary codes, or one-hot / probability rows (argmax)."""
    classes = parse_classes(classes)
    arr = np.asarray(codes)
    if encoding == "onehot" or arr.ndim == 2:
        if arr.ndim != 2 or arr.shape[1] != len(classes):
            raise ConfigError(f"decode: expected (N, {len(classes)}) rows, got shape {arr.shape}")
        arr = arr.argmax(axis=1)
    elif encoding not in (None, "integer", "binary"):
        raise ConfigError(f"encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    if arr.ndim != 1:
        raise ConfigError(f"decode: expected 1-D codes, got shape {arr.shape}")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) and not np.all(arr == np.round(arr))):
        raise ConfigError("decode: codes must be integers")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= len(classes)):
        raise ConfigError(f"decode: code out of range for {len(classes)} classes")
    return np.array([classes[i] for i in arr], dtype=object)
