""":class:`PreprocessConfig`: everything that decides the pixels a backbone sees, its validation,
serialisation and fingerprints, and the recipe's version.
"""

from __future__ import annotations

import hashlib
import math
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
WINDOWINGS = ("none", "voi", "window", "percentile")
DDSM_CALIBRATIONS = ("none", "od")


# Bumped whenever the numerical recipe changes, so old and new stores never fuse silently.
PREPROCESS_VERSION = 1


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that decides the pixels a backbone sees. Hashable, comparable, fingerprinted."""

    image_size: int = 224
    resize: str = "area"
    normalize: str = "backbone"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    crop: str = "breast"
    canonical_side: bool = True
    roi: str = "full"
    patch_context: float = 0.5
    windowing: str = "none"
    ddsm_calibration: str = "none"

    def __post_init__(self):
        def bad(msg):
            raise ConfigError(f"PreprocessConfig: {msg}")

        if isinstance(self.image_size, bool) or not isinstance(self.image_size, (int, np.integer)):
            bad(f"image_size must be an int, got {self.image_size!r}")
        if self.image_size < 1:
            bad(f"image_size must be >= 1, got {self.image_size}")
        object.__setattr__(self, "image_size", int(self.image_size))
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
        if self.ddsm_calibration != "none" and self.windowing != "none":
            bad(
                f"ddsm_calibration={self.ddsm_calibration!r} maps the digitiser's raw values; "
                f"it needs windowing='none', got {self.windowing!r}"
            )

    @property
    def uses_mask(self) -> bool:
        """Whether this config reads a lesion mask (``roi`` crop or patch; ``full`` never does)."""
        return self.roi in ROI_MASK_MODES

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists).

        Fields added after the first release (``ddsm_calibration``) appear only when they differ
        from their default, so configs (and stores) made before they existed keep their
        fingerprint; :meth:`from_dict` fills them back in.
        """
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
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
