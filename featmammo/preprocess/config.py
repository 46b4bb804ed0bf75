""":class:`PreprocessConfig`: everything that decides the pixels a backbone sees, its validation,
serialisation and fingerprints, and the recipe's version.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass, fields

import numpy as np

from ..errors import ConfigError
from ..hashing import canonical_json

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESIZE_METHODS = ("nearest", "bilinear", "bicubic", "area")
NORMALIZE_METHODS = ("backbone", "zscore", "mean", "decimal", "none")
CROP_METHODS = ("breast", "none")
ROI_MODES = ("full", "crop", "patch")
#: ROI modes that read the manifest's lesion mask; ``full`` never opens it
ROI_MASK_MODES = ("crop", "patch")
WINDOWINGS = ("auto", "none", "voi", "window", "percentile")
DDSM_CALIBRATIONS = ("none", "od")
#: windowings that leave the stored values as they are where a file has no window (the DDSM
#: calibration maps those raw values)
RAW_WINDOWINGS = ("auto", "none")

# Bumped whenever the numerical recipe changes the pixels of a config that existed before, so old
# and new stores, fitted models and cache entries never match silently. The golden pixel tests
# (tests/test_golden_pixels.py) fail when pixels change while this stays (tests/golden_pixels.py
# regenerates them after a bump).
#   1: first release
#   2: original-DDSM .LJPEG files take their canonical side from the tissue distribution, never
#      from the laterality (commit 3e86c44 changed those pixels without a bump)
PREPROCESS_VERSION = 2

_SIZE_RE = re.compile(r"^\s*(\d+)\s*(?:[xX×]\s*(\d+)\s*)?$")


def parse_image_size(value) -> int | tuple[int, int]:
    """``224``, ``"224"``, ``"1024x512"``, ``(1024, 512)`` -> ``224`` or ``(1024, 512)`` (H, W).

    A square size is always the int ``N`` (``"512x512"`` -> ``512``), so ``N`` and ``NxN`` are one
    config with one fingerprint. Raises ConfigError on anything else (sizes must be >= 1).
    """
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"image_size must be N or HxW, got {value!r}")
    if isinstance(value, (int, np.integer)):
        h = w = int(value)
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m is None:
            raise ConfigError(
                f"image_size must be N or HxW (height x width, e.g. 224 or 1024x512), got {value!r}"
            )
        h = int(m.group(1))
        w = int(m.group(2)) if m.group(2) is not None else h
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        if not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in value
        ):
            raise ConfigError(f"image_size (H, W) must be two ints, got {value!r}")
        h, w = int(value[0]), int(value[1])
    else:
        raise ConfigError(
            f"image_size must be an int N or a pair (H, W), got {value!r} ({type(value).__name__})"
        )
    if h < 1 or w < 1:
        raise ConfigError(f"image_size must be >= 1, got {value!r}")
    return h if h == w else (h, w)


def format_image_size(size) -> str:
    """``224`` -> ``"224"``, ``(1024, 512)`` -> ``"1024x512"`` (what ``--image-size`` takes)."""
    size = parse_image_size(size)
    return str(size) if isinstance(size, int) else f"{size[0]}x{size[1]}"


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that decides the pixels a backbone sees. Hashable, comparable, fingerprinted."""

    image_size: int | tuple[int, int] = 224
    resize: str = "area"
    normalize: str = "backbone"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    crop: str = "breast"
    canonical_side: bool = True
    roi: str = "full"
    patch_context: float = 0.5
    windowing: str = "auto"
    ddsm_calibration: str = "none"

    def __post_init__(self):
        def bad(msg):
            raise ConfigError(f"PreprocessConfig: {msg}")

        try:
            size = parse_image_size(self.image_size)
        except ConfigError as exc:
            bad(str(exc))
        object.__setattr__(self, "image_size", size)
        for name, allowed in (
            ("resize", RESIZE_METHODS),
            ("normalize", NORMALIZE_METHODS),
            ("crop", CROP_METHODS),
            ("roi", ROI_MODES),
            ("windowing", WINDOWINGS),
            ("ddsm_calibration", DDSM_CALIBRATIONS),
        ):
            value = getattr(self, name)
            if value not in allowed:
                bad(f"{name}={value!r} is not one of {', '.join(allowed)}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            try:
                value = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                bad(f"{name} must be a sequence of numbers, got {value!r}")
            if len(value) not in (1, 3):
                bad(f"{name} must have 1 or 3 values, got {len(value)}")
            object.__setattr__(self, name, value)
        if any(s <= 0 for s in self.std):
            bad(f"std values must be > 0, got {self.std}")
        if not isinstance(self.canonical_side, (bool, np.bool_)):
            bad(f"canonical_side must be a bool, got {self.canonical_side!r}")
        object.__setattr__(self, "canonical_side", bool(self.canonical_side))
        try:
            ctx = float(self.patch_context)
        except (TypeError, ValueError):
            bad(f"patch_context must be a number, got {self.patch_context!r}")
        if not (ctx >= 0 and math.isfinite(ctx)):
            bad(f"patch_context must be >= 0, got {self.patch_context!r}")
        object.__setattr__(self, "patch_context", ctx)
        if self.ddsm_calibration != "none" and self.windowing not in RAW_WINDOWINGS:
            bad(
                f"ddsm_calibration={self.ddsm_calibration!r} maps the digitiser's raw values; "
                f"it needs windowing 'auto' or 'none', got {self.windowing!r}"
            )

    @property
    def uses_mask(self) -> bool:
        """Whether this config reads a lesion mask (``roi`` crop or patch; ``full`` never does)."""
        return self.roi in ROI_MASK_MODES

    @property
    def shape(self) -> tuple[int, int]:
        """The network input's ``(height, width)``: ``(N, N)`` for ``image_size=N``."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else size

    @property
    def is_square(self) -> bool:
        return isinstance(self.image_size, int)

    def region_shape(self, rows: int, cols: int) -> tuple[int, int]:
        """The resized size of a ``rows x cols`` region: aspect kept, fitted inside :attr:`shape`
        (the limiting side fills it exactly; the other is rounded, at least 1)."""
        out_h, out_w = self.shape
        if out_h * cols <= out_w * rows:  # height-limited (for N x N: rows >= cols)
            return out_h, min(out_w, max(1, int(round(cols * out_h / rows))))
        return min(out_h, max(1, int(round(rows * out_w / cols)))), out_w

    def fits(self, shape) -> bool:
        """Whether a prepared region of ``shape`` belongs to this size (one side filled)."""
        if len(shape) != 2:
            return False
        (h, w), (out_h, out_w) = tuple(int(v) for v in shape), self.shape
        return 1 <= h <= out_h and 1 <= w <= out_w and (h == out_h or w == out_w)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists).

        Fields added after the first release (``ddsm_calibration``) appear only when they differ
        from their default, so configs (and stores) made before they existed keep their
        fingerprint; :meth:`from_dict` fills them back in.
        """
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        if not self.is_square:  # [H, W]; a square size stays the int N it always was
            d["image_size"] = list(self.image_size)
        for name, default in _LATE_FIELDS.items():
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo must not pass silently)."""
        if not isinstance(d, dict):
            raise ConfigError(
                f"PreprocessConfig.from_dict: expected a dict, got {type(d).__name__}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"PreprocessConfig: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def fingerprint(self) -> str:
        """sha256 (hex, 16 chars) of the canonical JSON of the config and the recipe version.

        Independent of key order and Python version (sorted keys, floats as shortest repr, tuples
        and lists serialise alike).
        """
        payload = {"preprocess_version": PREPROCESS_VERSION, **self.to_dict()}
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]

    def prepared_fingerprint(self) -> str:
        """Fingerprint of the fields that decide :func:`prepare`'s output (normalisation excluded).

        Two configs that differ only in ``normalize``/``mean``/``std`` share it, so the
        prepared-image cache (:mod:`featmammo.prepared`) serves both.
        """
        d = self.to_dict()
        for name in _FINISH_FIELDS:
            d.pop(name)
        payload = {"preprocess_version": PREPROCESS_VERSION, "stage": "prepared", **d}
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]


# fields added after PREPROCESS_VERSION 1 -> their default (omitted from to_dict at the default)
_LATE_FIELDS = {"ddsm_calibration": "none"}
# fields only :func:`finish` reads
_FINISH_FIELDS = ("normalize", "mean", "std")
