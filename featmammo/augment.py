"""On-the-fly training augmentation for preprocessed mammogram tensors (torch module).

This module owns :class:`Augment`, the random geometric and photometric transform of the paper's
training recipe: rotation (±25°), translation (±10 % of the size), scaling (0.8-1.2), horizontal and
vertical flips, shear (±10°) and brightness/contrast (±20 %). It works on what
:func:`featmammo.preprocess.preprocess` returns (normalised float tensors, ``(3, H, W)`` or
``(B, 3, H, W)``), so the photometric steps are defined independently of the value range:

- contrast: ``x -> mean + c * (x - mean)`` with ``c ~ U(1 - contrast, 1 + contrast)`` (per image);
- brightness: ``x -> x + b * (max - min)`` with ``b ~ U(-brightness, brightness)``, i.e. a shift of
  up to ±20 % of the image's dynamic range;
- no clamping (normalised values are not bounded).

Geometry: flips first, then one affine warp (``torchvision.transforms.v2.functional.affine``,
bilinear, about the centre) whose empty corners are filled with the image's minimum (its
background). Each image of a batch gets its own parameters.

Determinism: parameters are drawn from a ``torch.Generator``: the one passed to ``__call__``, else
the instance's own, seeded from ``seed`` (``seed=None`` -> a random seed). Same seed and same inputs
-> same outputs. DataLoader workers each get a copy of the instance with the same generator state:
call :meth:`Augment.reseed` (e.g. with ``base_seed + worker_id``) in ``worker_init_fn``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Augment:
    """Random augmentation; every range is symmetric around the identity and 0 disables a step."""

    rotation: float = 25.0  # degrees: angle ~ U(-rotation, rotation)
    translation: float = 0.10  # fraction of width/height: shift ~ U(-t, t) * size
    scale: tuple = (0.8, 1.2)  # zoom ~ U(scale[0], scale[1]); (1, 1) disables
    shear: float = 10.0  # degrees: x-shear ~ U(-shear, shear)
    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.5  # probability of a vertical flip
    brightness: float = 0.2  # shift ~ U(-b, b) * (max - min)
    contrast: float = 0.2  # factor ~ U(1 - c, 1 + c) around the mean
    interpolation: str = "bilinear"  # bilinear | nearest
    seed: int | None = None
    _generator: torch.Generator | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        def bad(msg):
            raise ConfigError(f"Augment: {msg}")

        for name in ("rotation", "translation", "shear", "brightness", "contrast"):
            v = float(getattr(self, name))
            if not (v >= 0 and math.isfinite(v)):
                bad(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
            object.__setattr__(self, name, v)
        if self.translation > 1:
            bad(f"translation is a fraction of the size (<= 1), got {self.translation}")
        if self.contrast >= 1:
            bad(f"contrast must be < 1 (factor 1 +- contrast stays positive), got {self.contrast}")
        for name in ("hflip", "vflip"):
            v = float(getattr(self, name))
            if not 0 <= v <= 1:
                bad(f"{name} is a probability in [0, 1], got {getattr(self, name)!r}")
            object.__setattr__(self, name, v)
        try:
            lo, hi = (float(s) for s in self.scale)
        except (TypeError, ValueError):
            bad(f"scale must be a (min, max) pair, got {self.scale!r}")
        if not (0 < lo <= hi):
            bad(f"scale must satisfy 0 < min <= max, got {self.scale!r}")
        self.scale = (lo, hi)
        if self.interpolation not in ("bilinear", "nearest"):
            bad(f"interpolation must be bilinear or nearest, got {self.interpolation!r}")

    # ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "rotation": self.rotation,
            "translation": self.translation,
            "scale": list(self.scale),
            "shear": self.shear,
            "hflip": self.hflip,
            "vflip": self.vflip,
            "brightness": self.brightness,
            "contrast": self.contrast,
            "interpolation": self.interpolation,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Augment:
        return cls(**d)

    @classmethod
    def disabled(cls) -> Augment:
        """An Augment that returns its input unchanged."""
        return cls(
            rotation=0,
            translation=0,
            scale=(1, 1),
            shear=0,
            hflip=0,
            vflip=0,
            brightness=0,
            contrast=0,
        )

    @property
    def is_identity(self) -> bool:
        return (
            self.rotation == 0
            and self.translation == 0
            and self.scale == (1.0, 1.0)
            and self.shear == 0
            and self.hflip == 0
            and self.vflip == 0
            and self.brightness == 0
            and self.contrast == 0
        )

    def reseed(self, seed: int) -> None:
        """Restart the instance's generator from ``seed`` (use per DataLoader worker)."""
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)

    @property
    def generator(self) -> torch.Generator:
        if self._generator is None:
            g = torch.Generator()
            if self.seed is None:
                g.seed()
            else:
                g.manual_seed(int(self.seed))
            self._generator = g
        return self._generator

    # ----------------------------------------------------------------------------------------------
    def sample(self, generator: torch.Generator | None = None) -> dict:
        """Draw one image's parameters (angle/shear in degrees, translate as size fractions)."""
        g = generator if generator is not None else self.generator
        u = torch.rand(8, generator=g, dtype=torch.float64).tolist()

        def sym(x, r):  # U(-r, r) from U(0, 1)
            return (2 * x - 1) * r

        lo, hi = self.scale
        return {
            "hflip": u[0] < self.hflip,
            "vflip": u[1] < self.vflip,
            "angle": sym(u[2], self.rotation),
            "translate": (sym(u[3], self.translation), sym(u[4], self.translation)),
            "scale": lo + (hi - lo) * u[5],
            "shear": sym(u[6], self.shear),
            "contrast": 1 + sym(u[7], self.contrast),
            # drawn separately so that enabling brightness does not change the other draws
            "brightness": sym(
                torch.rand(1, generator=g, dtype=torch.float64).item(), self.brightness
            ),
        }

    def apply(self, image: torch.Tensor, params: dict) -> torch.Tensor:
        """Apply ``params`` (from :meth:`sample`) to one ``(C, H, W)`` float tensor."""
        import torchvision.transforms.v2.functional as TF
        from torchvision.transforms import InterpolationMode

        x = image
        if params["hflip"]:
            x = x.flip(-1)
        if params["vflip"]:
            x = x.flip(-2)
        tx, ty = params["translate"]
        if params["angle"] or tx or ty or params["scale"] != 1.0 or params["shear"]:
            h, w = x.shape[-2:]
            fill = [float(v) for v in x.amin(dim=(-2, -1))]
            mode = (
                InterpolationMode.BILINEAR
                if self.interpolation == "bilinear"
                else InterpolationMode.NEAREST
            )
            x = TF.affine(
                x,
                angle=float(params["angle"]),
                translate=[float(tx * w), float(ty * h)],
                scale=float(params["scale"]),
                shear=[float(params["shear"]), 0.0],
                interpolation=mode,
                fill=fill,
            )
        if params["contrast"] != 1.0:
            mean = x.mean(dim=(-2, -1), keepdim=True)
            x = mean + (x - mean) * params["contrast"]
        if params["brightness"]:
            span = (x.amax() - x.amin()).clamp_min(1e-12)
            x = x + params["brightness"] * span
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``(C, H, W)`` or ``(B, C, H, W)``; same shape and dtype out."""
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"Augment expects a torch tensor, got {type(x).__name__}")
        if x.ndim not in (3, 4):
            raise ConfigError(f"Augment expects (C,H,W) or (B,C,H,W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ConfigError(f"Augment expects a float tensor, got {x.dtype}")
        if self.is_identity:
            return x
        if x.ndim == 3:
            return self.apply(x, self.sample(generator)).contiguous()
        out = torch.stack([self.apply(img, self.sample(generator)) for img in x])
        return out.contiguous()


__all__ = ["Augment"]
