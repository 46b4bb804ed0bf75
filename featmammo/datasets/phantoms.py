"""Synthetic mammogram phantoms: the renderer (tests, demo, benchmarks).

This module owns the phantom generator (arrays in memory, no files). It is **not** a model of real
anatomy; it is a reproducible stand-in whose labels are carried by lesion *morphology*, so
pipelines can be exercised end to end without patient data.

Phantom (rendered with the chest wall on the left, then mirrored for right breasts):

- breast: half-ellipse against the chest wall with a slightly wobbly outline, a thickness roll-off
  towards the skin and a brighter skin line; MLO views add a bright pectoral-muscle triangle in the
  upper chest-wall corner and a taller, lower breast;
- parenchyma: power-law (1/f^beta, beta = 3) Gaussian noise, thresholded softly into fibroglandular
  tissue whose amount follows a BI-RADS-like density 1-4, concentrated behind the nipple;
- lesions, by class (benign and malignant draw sizes and contrasts from the *same* distributions, so
  only shape separates them): ``benign`` circumscribed oval mass (sharp margin) or coarse
  calcifications (a few large round specks, scattered); ``malignant`` spiculated mass (irregular
  core + radiating spicules) or irregular ill-defined mass, or a tight cluster of fine pleomorphic
  calcifications; ``normal`` none;
- ``difficulty`` in [0, 1] lowers lesion contrast and size and raises the texture amplitude.

Stored values are integers: ``round(v * (2**bits_stored - 1))`` of the rendered attenuation v in
[0, 1] (12- or 16-bit, MONOCHROME2 sense: bright = dense).

The tree writer that lays phantoms out as a CBIS-DDSM data set is
:mod:`featmammo.datasets.synthetic`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ..labels import LABELS

log = logging.getLogger(__name__)

VIEWS = ("CC", "MLO")
SIDES = ("L", "R")


@dataclass
class Phantom:
    """One rendered phantom. ``image`` is uint16 stored values; ``mask`` uint8 0/1 or None."""

    image: np.ndarray
    mask: np.ndarray | None
    label: str
    view: str
    laterality: str
    bits_stored: int
    lesion_type: str | None  # "mass" | "calc" | None
    info: dict = field(default_factory=dict)  # descriptors: shape, margins, calc type, density...


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _power_law_noise(shape, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std Gaussian field with a 1/f^beta power spectrum (float32)."""
    h, w = shape
    white = rng.standard_normal((h, w), dtype=np.float32)
    spec = np.fft.rfft2(white)
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = np.inf
    spec *= f ** np.float32(-beta / 2.0)
    field_ = np.fft.irfft2(spec, s=(h, w)).astype(np.float32)
    field_ -= field_.mean()
    std = field_.std()
    return field_ / (std if std > 0 else 1.0)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _sample_inside(rng, inside: np.ndarray, d: np.ndarray, margin: float) -> tuple[int, int]:
    """A random pixel well inside the breast (normalised radius < 0.72, not at the chest wall)."""
    h, w = inside.shape
    ok = inside & (d < 0.72)
    ok[:, : max(1, int(0.08 * w))] = False
    ok[: int(margin), :] = False
    ok[h - int(margin) :, :] = False
    ys, xs = np.nonzero(ok)
    if ys.size == 0:
        ys, xs = np.nonzero(inside)
    if ys.size == 0:
        return h // 2, w // 4
    i = int(rng.integers(ys.size))
    return int(ys[i]), int(xs[i])


def _window(cy, cx, r, shape):
    h, w = shape
    y0, y1 = max(0, int(cy - r)), min(h, int(math.ceil(cy + r)) + 1)
    x0, x1 = max(0, int(cx - r)), min(w, int(math.ceil(cx + r)) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return (slice(y0, y1), slice(x0, x1)), yy - cy, xx - cx


def _draw_mass(img, mask, cy, cx, r0, contrast, malignant, rng, info):
    sub, dy, dx = _window(cy, cx, 3.2 * r0, img.shape)
    theta = rng.uniform(0, np.pi)
    ct, st = np.cos(theta), np.sin(theta)
    u = ct * dx + st * dy
    v = -st * dx + ct * dy
    phi = np.arctan2(v, u)
    if not malignant:
        # circumscribed oval: smooth elliptical outline, sharp margin
        aspect = rng.uniform(0.6, 0.9)
        q = np.sqrt((u / r0) ** 2 + (v / (r0 * aspect)) ** 2)
        edge = 0.06
        info.update(shape=str(rng.choice(["OVAL", "ROUND"])), margins="CIRCUMSCRIBED")
    else:
        # irregular core: many random harmonics of the radius; ill-defined margin
        radius = np.ones_like(phi)
        for k in range(2, 9):
            radius += (
                rng.uniform(0.08, 0.2) / math.sqrt(k - 1) * np.cos(k * phi + rng.uniform(0, 6.3))
            )
        q = np.sqrt(u * u + v * v) / (r0 * np.clip(radius, 0.4, None))
        edge = 0.25
        spiculated = rng.random() < 0.6
        info.update(shape="IRREGULAR", margins="SPICULATED" if spiculated else "ILL_DEFINED")
    core = _smoothstep((1.0 + edge / 2 - q) / edge)
    profile = core * (0.75 + 0.25 * np.sqrt(np.clip(1 - q * q, 0, 1)))
    img[sub] += np.float32(contrast) * profile.astype(np.float32)
    mask[sub] |= q < 1.0
    if malignant and info["margins"] == "SPICULATED":
        n_spic = int(rng.integers(8, 17))
        rr = np.sqrt(dx * dx + dy * dy)
        ang = np.arctan2(dy, dx)
        for _ in range(n_spic):
            a = rng.uniform(-np.pi, np.pi)
            length = r0 * rng.uniform(1.6, 3.0)
            width = max(0.6, 0.045 * r0) * rng.uniform(0.8, 1.4)
            # perpendicular distance to the ray, and position along it
            along = rr * np.cos(ang - a)
            perp = np.abs(rr * np.sin(ang - a))
            taper = np.clip(1 - along / length, 0, 1) * (along > 0.5 * r0)
            line = np.exp(-0.5 * (perp / width) ** 2) * taper
            img[sub] += np.float32(0.8 * contrast) * line.astype(np.float32)


def _draw_calcs(img, mask, cy, cx, r0, contrast, malignant, rng, info, scale):
    h, w = img.shape
    if not malignant:
        # coarse: few, large, round, scattered over a wide region
        n = int(rng.integers(3, 8))
        spread = 2.0 * r0
        radii = np.maximum(0.9, rng.uniform(2.2, 3.6, n) * scale)
        amp = np.full(n, 1.6 * contrast)
        elong = np.ones(n)
        info.update(
            calc_type=str(rng.choice(["COARSE", "ROUND_AND_REGULAR"])),
            # N/A: the official calc files leave many distributions empty this way
            distribution=str(rng.choice(["DIFFUSELY_SCATTERED", "REGIONAL", "N/A"])),
        )
    else:
        # fine pleomorphic: many, tiny, irregular, tightly clustered (sometimes along a line)
        n = int(rng.integers(12, 31))
        spread = 0.7 * r0
        radii = np.maximum(0.5, rng.uniform(0.6, 1.4, n) * scale)
        amp = rng.uniform(1.2, 2.0, n) * contrast
        elong = rng.uniform(1.0, 2.5, n)
        info.update(
            calc_type=str(rng.choice(["PLEOMORPHIC", "FINE_LINEAR_BRANCHING"])),
            distribution=str(rng.choice(["CLUSTERED", "CLUSTERED", "LINEAR"])),
        )
    info["n_calcs"] = n
    if info["distribution"] == "LINEAR":
        a = rng.uniform(0, np.pi)
        t = rng.uniform(-1, 1, n) * spread
        off_y = t * np.sin(a) + rng.normal(0, 0.15 * spread, n)
        off_x = t * np.cos(a) + rng.normal(0, 0.15 * spread, n)
    else:
        rad = spread * np.sqrt(rng.uniform(0, 1, n))
        ang = rng.uniform(0, 2 * np.pi, n)
        off_y, off_x = rad * np.sin(ang), rad * np.cos(ang)
    pys = np.clip(cy + off_y, 1, h - 2)
    pxs = np.clip(cx + off_x, 1, w - 2)
    for py, px, r, a, e in zip(pys, pxs, radii, amp, elong, strict=True):
        sub, dy, dx = _window(py, px, 2.5 * r * e + 1, img.shape)
        th = rng.uniform(0, np.pi)
        u = np.cos(th) * dx + np.sin(th) * dy
        v = -np.sin(th) * dx + np.cos(th) * dy
        dist = np.sqrt((u / e) ** 2 + v * v)
        disc = np.clip(r + 0.5 - dist, 0, 1)  # anti-aliased disc
        img[sub] += np.float32(a) * disc.astype(np.float32)
    # ROI: the disc that encloses the cluster (CBIS-DDSM calc ROIs outline the cluster)
    ccy, ccx = float(pys.mean()), float(pxs.mean())
    reach = float(
        np.sqrt((pys - ccy) ** 2 + (pxs - ccx) ** 2).max() + radii.max() * elong.max() + 2
    )
    sub, dy, dx = _window(ccy, ccx, reach, img.shape)
    mask[sub] |= (dy * dy + dx * dx) <= reach * reach


def render_phantom(
    label: str,
    *,
    size: tuple[int, int] = (512, 320),
    view: str = "CC",
    laterality: str = "L",
    difficulty: float = 0.5,
    rng: np.random.Generator | int | None = None,
    bits_stored: int = 12,
    lesion_type: str | None = None,
    density: int | None = None,
) -> Phantom:
    """Render one phantom with its descriptors (see the module docstring)."""
    if label not in LABELS:
        raise ConfigError(f"label must be one of {LABELS}, got {label!r}")
    if view not in VIEWS:
        raise ConfigError(f"view must be one of {VIEWS}, got {view!r}")
    if laterality not in SIDES:
        raise ConfigError(f"laterality must be 'L' or 'R', got {laterality!r}")
    if bits_stored not in (12, 16):
        raise ConfigError(f"bits_stored must be 12 or 16, got {bits_stored}")
    if not 0.0 <= float(difficulty) <= 1.0:
        raise ConfigError(f"difficulty must be in [0, 1], got {difficulty}")
    if lesion_type not in (None, "mass", "calc"):
        raise ConfigError(f"lesion_type must be 'mass', 'calc' or None, got {lesion_type!r}")
    h, w = (int(s) for s in size)
    if h < 16 or w < 16:
        raise ConfigError(f"size must be at least 16x16, got {size}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    difficulty = float(difficulty)
    scale = min(h, w) / 320.0
    density = int(density) if density is not None else int(rng.integers(1, 5))

    # The smooth background (outline, thickness, parenchyma, muscle) is rendered at half resolution
    # for images >= 128 px and upsampled bilinearly (4x fewer pixel operations; it holds no detail
    # finer than 2 px). Lesions, skin noise and quantum noise are drawn at full resolution.
    f = 2 if min(h, w) >= 128 else 1
    hl, wl = -(-h // f), -(-w // f)
    yy = ((np.arange(hl, dtype=np.float32) + 0.5) * f - 0.5)[:, None]
    xx = ((np.arange(wl, dtype=np.float32) + 0.5) * f - 0.5)[None, :]
    # breast outline: half-ellipse against the chest wall (x = 0)
    if view == "CC":
        cy = h * rng.uniform(0.46, 0.54)
        ry = h * rng.uniform(0.36, 0.44)
    else:
        cy = h * rng.uniform(0.56, 0.62)
        ry = h * rng.uniform(0.44, 0.5)
    rx = w * rng.uniform(0.62, 0.85)
    ny, nx = (yy - cy) / np.float32(ry), xx / np.float32(rx)
    phi = np.arctan2(ny, nx)
    wobble = np.ones_like(phi)
    for k in (2, 3, 5):
        wobble += np.float32(rng.uniform(0.0, 0.025)) * np.cos(
            k * phi + np.float32(rng.uniform(0, 6.3))
        )
    d = np.sqrt(ny * ny + nx * nx) / wobble
    inside = d < 1.0
    thickness = np.clip(1.0 - d * d, 0, 1) ** np.float32(0.35)
    pect = None
    if view == "MLO":
        px = w * rng.uniform(0.25, 0.4)
        py = h * rng.uniform(0.4, 0.6)
        pect_d = xx / np.float32(px) + yy / np.float32(py)  # < 1 inside the triangle
        pect = _smoothstep((1.0 - pect_d) / np.float32(0.04))
        inside = inside | (pect_d < 1.0)
        # upper breast merges into the axilla: thickness follows the muscle there
        thickness = np.maximum(thickness, np.float32(0.9) * (pect > 0.5))

    tex_amp = _lerp(0.10, 0.22, difficulty)
    tex = _power_law_noise((hl, wl), 3.0, rng)
    gland_level = {1: 1.2, 2: 0.6, 3: 0.0, 4: -0.6}[density]
    central = np.exp(-((np.clip(d, 0, 2) / np.float32(0.75)) ** 2))
    gland = central / (1.0 + np.exp(-(tex - np.float32(gland_level)) / np.float32(0.45)))
    tissue = 0.28 + 0.30 * gland + np.float32(tex_amp * 0.35) * tex
    low = np.full((hl, wl), 0.05, dtype=np.float32)
    low += thickness * tissue * inside
    skin = np.exp(-(((d - np.float32(0.985)) / np.float32(0.012)) ** 2))
    low += np.float32(0.06) * skin * (d < 1.02)
    if pect is not None:
        low = low * (1 - pect) + (0.72 + 0.05 * tex) * pect
    low = low.astype(np.float32, copy=False)
    if f > 1:
        from PIL import Image as PILImage

        up = PILImage.fromarray(low, mode="F").resize((w, h), PILImage.Resampling.BILINEAR)
        img = np.array(up, dtype=np.float32)
    else:
        img = low

    mask = np.zeros((h, w), dtype=bool)
    info: dict = {"density": density, "difficulty": difficulty}
    if label != "normal":
        lesion_type = lesion_type or ("mass" if rng.random() < 0.5 else "calc")
        r0 = min(h, w) * _lerp(0.09, 0.04, difficulty) * rng.uniform(0.85, 1.15)
        contrast = _lerp(0.30, 0.07, difficulty) * rng.uniform(0.85, 1.15)
        allowed = inside if pect is None else inside & (pect < 0.2)
        cy_l, cx_l = _sample_inside(rng, allowed, d, r0 / f)
        cy_l, cx_l = min(h - 1, cy_l * f + f // 2), min(w - 1, cx_l * f + f // 2)
        malignant = label == "malignant"
        if lesion_type == "mass":
            _draw_mass(img, mask, cy_l, cx_l, r0, contrast, malignant, rng, info)
        else:
            _draw_calcs(img, mask, cy_l, cx_l, r0, contrast, malignant, rng, info, scale)
        info["subtlety"] = int(np.clip(round(5 - 4 * difficulty + rng.normal(0, 0.5)), 1, 5))
    else:
        lesion_type = None

    img += np.float32(0.006) * rng.standard_normal((h, w), dtype=np.float32)  # quantum noise
    top = (1 << bits_stored) - 1
    stored = np.clip(np.rint(np.clip(img, 0, 1) * top), 0, top).astype(np.uint16)
    out_mask = mask.astype(np.uint8) if lesion_type else None
    if laterality == "R":
        stored = np.ascontiguousarray(stored[:, ::-1])
        if out_mask is not None:
            out_mask = np.ascontiguousarray(out_mask[:, ::-1])
    return Phantom(stored, out_mask, label, view, laterality, bits_stored, lesion_type, info)


def make_phantom(
    label: str,
    *,
    size: tuple[int, int] = (512, 320),
    view: str = "CC",
    laterality: str = "L",
    difficulty: float = 0.5,
    rng: np.random.Generator | int | None = None,
    bits_stored: int = 12,
    lesion_type: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(uint16 image, uint8 lesion mask or None)``; see :func:`render_phantom` for the options."""
    p = render_phantom(
        label,
        size=size,
        view=view,
        laterality=laterality,
        difficulty=difficulty,
        rng=rng,
        bits_stored=bits_stored,
        lesion_type=lesion_type,
    )
    return p.image, p.mask


# --------------------------------------------------------------------------------------------------
# in-memory data set


@dataclass
class SyntheticDataset:
    """Arrays for benchmarks: ``images`` (n,H,W) uint16, ``masks`` (n,H,W) uint8 (zeros for
    normals), ``labels`` (n,) str, ``meta`` DataFrame (image_id, label, patient_id, laterality,
    view, lesion_type, bits_stored, max_value)."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    meta: object

    def __len__(self) -> int:
        return len(self.labels)


def make_dataset(
    n: int,
    *,
    seed: int = 0,
    size: tuple[int, int] = (128, 96),
    classes: tuple[str, ...] = LABELS,
    difficulty: float = 0.5,
    bits_stored: int = 12,
) -> SyntheticDataset:
    """``n`` phantoms, classes balanced (cycled in a seeded order), two views (CC, MLO) of one
    breast per patient so grouped splits have something to group. Same seed -> same arrays."""
    import pandas as pd

    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    bad = [c for c in classes if c not in LABELS]
    if bad or not classes:
        raise ConfigError(f"classes must be a non-empty subset of {LABELS}, got {classes}")
    root = np.random.SeedSequence([int(seed), 7])
    order_rng = np.random.default_rng(root.spawn(1)[0])
    n_pat = (n + 1) // 2
    pat_labels = [classes[i % len(classes)] for i in range(n_pat)]
    order_rng.shuffle(pat_labels)
    pat_side = order_rng.choice(SIDES, n_pat)
    children = root.spawn(n + 1)[1:]
    images = np.empty((n, *size), dtype=np.uint16)
    masks = np.zeros((n, *size), dtype=np.uint8)
    rows = []
    for i in range(n):
        p = i // 2
        view = VIEWS[i % 2]
        ph = render_phantom(
            pat_labels[p],
            size=size,
            view=view,
            laterality=str(pat_side[p]),
            difficulty=difficulty,
            rng=np.random.default_rng(children[i]),
            bits_stored=bits_stored,
        )
        images[i] = ph.image
        if ph.mask is not None:
            masks[i] = ph.mask
        rows.append(
            {
                "image_id": f"synth_{i:05d}",
                "label": ph.label,
                "patient_id": f"P_{p + 1:05d}",
                "laterality": ph.laterality,
                "view": ph.view,
                "lesion_type": ph.lesion_type or "",
                "bits_stored": bits_stored,
                "max_value": float((1 << bits_stored) - 1),
            }
        )
    meta = pd.DataFrame(rows)
    return SyntheticDataset(images, masks, meta["label"].to_numpy(dtype=object), meta)


# --------------------------------------------------------------------------------------------------
# CBIS-DDSM-shaped tree on disk
