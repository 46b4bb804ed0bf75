"""Synthetic mammogram phantoms and a CBIS-DDSM-shaped synthetic data set (tests, demo, benchmarks).

This module owns the phantom generator and the writer of a synthetic tree in the official CBIS-DDSM
"classic" layout. It is **not** a model of real anatomy; it is a reproducible stand-in whose labels
are carried by lesion *morphology*, so pipelines can be exercised end to end without patient data.

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

``write_synthetic_cbis`` writes (all under ``out_dir``):

- ``<Subject>/<StudyUID>/<SeriesUID>/000000.dcm`` full images, and for each lesion a crop and a ROI
  mask sharing one series folder of ``<Subject>_1`` (mass rows: crop ``000000.dcm``, mask
  ``000001.dcm``; calc rows the opposite, as in the official CSVs);
- the four official case-description CSVs with the official headers (``breast_density`` in mass
  files, ``breast density`` in calc files; ``N/A`` descriptors; the trailing newline the official
  files carry inside the crop cell of calc rows and the ROI cell of mass rows);
- normals, which CBIS-DDSM does not have, in a separate, clearly marked source: ``normals/`` (same
  classic layout, subjects ``Normal-{Training|Test}_P_xxxxx_{LEFT|RIGHT}_{CC|MLO}``) described by
  ``normal_cases.csv`` (paths relative to ``normals/``);
- ``manifest.csv`` (the featmammo manifest columns + ``abnormality_type``, ``roi_mask_path``,
  ``photometric``, ``bits_stored``; ``source`` is ``synthetic-cbis`` or ``synthetic-normal``);
- ``README.md`` saying what the folder is.

DICOMs: Modality MG, Secondary Capture SOP class (as CBIS-DDSM), explicit VR little endian,
BitsStored 12 or 16 (BitsAllocated 16), about a quarter of the full images MONOCHROME1 with inverted
stored values, ``Laterality``/``ImageLaterality``, ``ViewPosition``, ``PatientOrientation`` (the
view, as CBIS-DDSM), ``PatientID`` = subject folder name (as CBIS-DDSM), UIDs from
``pydicom.uid.generate_uid`` with entropy from the seed (same seed -> same UIDs). Patients have 2-4
views; the train/test split is by patient.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .manifest import REQUIRED_COLUMNS

log = logging.getLogger(__name__)

LABELS = ("normal", "benign", "malignant")
VIEWS = ("CC", "MLO")
SIDES = ("L", "R")

MASS_COLUMNS = [
    "patient_id",
    "breast_density",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "mass shape",
    "mass margins",
    "assessment",
    "pathology",
    "subtlety",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
]
CALC_COLUMNS = [
    "patient_id",
    "breast density",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "calc type",
    "calc distribution",
    "assessment",
    "pathology",
    "subtlety",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
]
CSV_NAMES = {
    ("mass", "train"): "mass_case_description_train_set.csv",
    ("mass", "test"): "mass_case_description_test_set.csv",
    ("calc", "train"): "calc_case_description_train_set.csv",
    ("calc", "test"): "calc_case_description_test_set.csv",
}
NORMAL_COLUMNS = [
    "patient_id",
    "breast density",
    "left or right breast",
    "image view",
    "pathology",
    "split",
    "image file path",
]
MANIFEST_COLUMNS = [
    *REQUIRED_COLUMNS,
    "abnormality_type",
    "roi_mask_path",
    "photometric",
    "bits_stored",
]
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's registered root for generated UIDs


# --------------------------------------------------------------------------------------------------
# rendering


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


def _uid(seed: int, *parts) -> str:
    from pydicom.uid import generate_uid

    return str(
        generate_uid(prefix=UID_ROOT, entropy_srcs=["featmammo-synth", str(seed), *map(str, parts)])
    )


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    bits_stored: int,
    photometric: str,
    subject: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    laterality: str,
    view: str,
    description: str,
    instance: int,
) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20160101"
    ds.Modality = "MG"
    ds.ConversionType = "WSD"
    ds.SeriesDescription = description
    ds.PatientName = subject
    ds.PatientID = subject
    ds.BodyPartExamined = "BREAST"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "DDSM"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.PatientOrientation = view  # CBIS-DDSM stores the view here
    ds.Laterality = laterality
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.ImageComments = "featmammo synthetic phantom (not patient data)"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(s) for s in pixels.shape)
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if pixels.dtype != np.uint8:
        ds.WindowCenter = str(1 << (bits_stored - 1))
        ds.WindowWidth = str(1 << bits_stored)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _split_views(rng, n_views: int) -> list[tuple[str, str]]:
    """(side, view) pairs for one patient: 2 = one breast, 3 = one breast + one view, 4 = both."""
    first = str(rng.choice(SIDES))
    other = "R" if first == "L" else "L"
    pairs = [(first, "CC"), (first, "MLO")]
    if n_views >= 3:
        pairs.append((other, str(rng.choice(VIEWS))))
    if n_views == 4:
        pairs = [(first, "CC"), (first, "MLO"), (other, "CC"), (other, "MLO")]
    return pairs[:n_views]


def _views_per_patient(rng, n: int) -> list[int]:
    counts, left = [], n
    while left > 0:
        k = int(rng.integers(2, 5))
        if left <= 4:
            k = left
        elif left - k == 1:
            k = k - 1 if k > 2 else k + 1
        counts.append(k)
        left -= k
    return counts


def write_synthetic_cbis(
    out_dir,
    n: int = 300,
    *,
    seed: int = 0,
    size: tuple[int, int] = (512, 320),
    classes: tuple[str, ...] = LABELS,
    difficulty: float = 0.5,
    test_fraction: float = 0.2,
    monochrome1_fraction: float = 0.25,
    bits16_fraction: float = 0.5,
    benign_without_callback_fraction: float = 0.15,
) -> dict:
    """Write ``n`` full images (plus lesion crops and masks) as a CBIS-DDSM-shaped tree.

    Returns a summary dict (counts per class/split/source, paths of the CSVs and the manifest).
    ``out_dir`` must be empty or not exist. Same arguments -> byte-identical files.
    """
    import pandas as pd

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: output folder is not empty (refusing to mix data sets)")
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    bad = [c for c in classes if c not in LABELS]
    if bad or not classes:
        raise ConfigError(f"classes must be a non-empty subset of {LABELS}, got {classes}")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction}")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 11]))
    counts = _views_per_patient(rng, n)
    n_pat = len(counts)
    pat_class = [classes[i % len(classes)] for i in range(n_pat)]
    rng.shuffle(pat_class)
    # patient-disjoint split, stratified by class: every class gets ~test_fraction of its patients
    pat_split = ["train"] * n_pat
    for c in classes:
        idx = [i for i in range(n_pat) if pat_class[i] == c]
        rng.shuffle(idx)
        for i in idx[: int(round(test_fraction * len(idx)))]:
            pat_split[i] = "test"

    case_rows: dict[tuple[str, str], list[dict]] = {k: [] for k in CSV_NAMES}
    normal_rows, manifest_rows = [], []
    img_index = 0
    for p in range(n_pat):
        pid = f"P_{p + 1:05d}"
        label, split = pat_class[p], pat_split[p]
        density = int(rng.integers(1, 5))
        pairs = _split_views(rng, counts[p])
        breast_type = {s: ("mass" if rng.random() < 0.5 else "calc") for s in SIDES}
        for side, view in pairs:
            img_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 13, img_index]))
            img_index += 1
            bits = 16 if img_rng.random() < bits16_fraction else 12
            photometric = (
                "MONOCHROME1" if img_rng.random() < monochrome1_fraction else "MONOCHROME2"
            )
            diff = float(np.clip(difficulty + img_rng.normal(0, 0.08), 0, 1))
            ph = render_phantom(
                label,
                size=size,
                view=view,
                laterality=side,
                difficulty=diff,
                rng=img_rng,
                bits_stored=bits,
                lesion_type=None if label == "normal" else breast_type[side],
                density=density,
            )
            side_word = "LEFT" if side == "L" else "RIGHT"
            split_word = "Training" if split == "train" else "Test"
            top = (1 << bits) - 1
            stored = (
                ph.image if photometric == "MONOCHROME2" else (top - ph.image).astype(np.uint16)
            )
            if label == "normal":
                subject = f"Normal-{split_word}_{pid}_{side_word}_{view}"
                base = out / "normals"
                source = "synthetic-normal"
            else:
                kind = "Mass" if ph.lesion_type == "mass" else "Calc"
                subject = f"{kind}-{split_word}_{pid}_{side_word}_{view}"
                base = out
                source = "synthetic-cbis"
            study = _uid(seed, subject, "study")
            series = _uid(seed, subject, "series")
            rel = f"{subject}/{study}/{series}/000000.dcm"
            common = dict(laterality=side, view=view, subject=subject)
            _write_dicom(
                base / rel,
                stored,
                bits_stored=bits,
                photometric=photometric,
                study_uid=study,
                series_uid=series,
                sop_uid=_uid(seed, subject, "sop"),
                description="full mammogram images",
                instance=1,
                **common,
            )
            manifest_path = rel if base == out else f"normals/{rel}"
            mask_manifest = ""
            if label == "normal":
                normal_rows.append(
                    {
                        "patient_id": pid,
                        "breast density": density,
                        "left or right breast": side_word,
                        "image view": view,
                        "pathology": "NORMAL",
                        "split": split,
                        "image file path": rel,
                    }
                )
            else:
                sub = f"{subject}_1"
                sub_study = _uid(seed, sub, "study")
                sub_series = _uid(seed, sub, "series")
                mass = ph.lesion_type == "mass"
                crop_name, mask_name = (
                    ("000000.dcm", "000001.dcm") if mass else ("000001.dcm", "000000.dcm")
                )
                ys, xs = np.nonzero(ph.mask)
                pad = max(2, int(0.1 * max(np.ptp(ys) + 1, np.ptp(xs) + 1)))
                y0, y1 = max(0, ys.min() - pad), min(size[0], ys.max() + 1 + pad)
                x0, x1 = max(0, xs.min() - pad), min(size[1], xs.max() + 1 + pad)
                crop_rel = f"{sub}/{sub_study}/{sub_series}/{crop_name}"
                mask_rel = f"{sub}/{sub_study}/{sub_series}/{mask_name}"
                sub_common = dict(laterality=side, view=view, subject=sub)
                _write_dicom(
                    out / crop_rel,
                    ph.image[y0:y1, x0:x1],
                    bits_stored=bits,
                    photometric="MONOCHROME2",
                    study_uid=sub_study,
                    series_uid=sub_series,
                    sop_uid=_uid(seed, sub, "crop"),
                    description="cropped images",
                    instance=1 if mass else 2,
                    **sub_common,
                )
                _write_dicom(
                    out / mask_rel,
                    (ph.mask * 255).astype(np.uint8),
                    bits_stored=8,
                    photometric="MONOCHROME2",
                    study_uid=sub_study,
                    series_uid=sub_series,
                    sop_uid=_uid(seed, sub, "mask"),
                    description="ROI mask images",
                    instance=2 if mass else 1,
                    **sub_common,
                )
                mask_manifest = mask_rel
                pathology = "MALIGNANT"
                if label == "benign":
                    pathology = (
                        "BENIGN_WITHOUT_CALLBACK"
                        if img_rng.random() < benign_without_callback_fraction
                        else "BENIGN"
                    )
                if label == "malignant":
                    assessment = int(img_rng.choice([4, 5, 5]))
                else:
                    assessment = int(img_rng.choice([2, 3, 4]))
                row = {
                    "patient_id": pid,
                    "left or right breast": side_word,
                    "image view": view,
                    "abnormality id": 1,
                    "abnormality type": "mass" if mass else "calcification",
                    "assessment": assessment,
                    "pathology": pathology,
                    "subtlety": ph.info["subtlety"],
                    "image file path": rel,
                    # the official files carry a newline inside these cells (crop for calc rows,
                    # ROI mask for mass rows); reproduce it so readers must strip cells
                    "cropped image file path": crop_rel if mass else crop_rel + "\n",
                    "ROI mask file path": mask_rel + "\n" if mass else mask_rel,
                }
                if mass:
                    row["breast_density"] = density
                    row["mass shape"] = ph.info["shape"]
                    row["mass margins"] = ph.info["margins"]
                else:
                    row["breast density"] = density
                    row["calc type"] = ph.info["calc_type"]
                    row["calc distribution"] = ph.info["distribution"]
                case_rows[("mass" if mass else "calc", split)].append(row)
            manifest_rows.append(
                {
                    # same id as featmammo.datasets.cbis_ddsm gives the view (patient_side_view)
                    "image_id": f"{pid}_{side_word}_{view}",
                    "path": manifest_path,
                    "label": label,
                    "patient_id": pid,
                    "laterality": side,
                    "view": view,
                    "split": split,
                    "source": source,
                    "abnormality_type": ph.lesion_type or "",
                    "roi_mask_path": mask_manifest,
                    "photometric": photometric,
                    "bits_stored": bits,
                }
            )

    def sort_key(r):
        return (r["patient_id"], r["left or right breast"], r["image view"])

    csv_paths = {}
    for (kind, split), name in CSV_NAMES.items():
        cols = MASS_COLUMNS if kind == "mass" else CALC_COLUMNS
        path = out / name
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
            writer.writeheader()
            writer.writerows(sorted(case_rows[(kind, split)], key=sort_key))
        csv_paths[name] = str(path)
    normal_csv = out / "normal_cases.csv"
    with open(normal_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=NORMAL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(normal_rows, key=sort_key))
    manifest = pd.DataFrame(manifest_rows, columns=MANIFEST_COLUMNS)
    manifest_path = out / "manifest.csv"
    manifest.to_csv(manifest_path, index=False, lineterminator="\n")
    (out / "README.md").write_text(_README.format(n=n, seed=seed, size=size, difficulty=difficulty))

    summary = {
        "out_dir": str(out),
        "n_images": len(manifest),
        "n_patients": n_pat,
        "seed": seed,
        "size": list(size),
        "difficulty": difficulty,
        "by_label": {k: int(v) for k, v in manifest["label"].value_counts().sort_index().items()},
        "by_split": {k: int(v) for k, v in manifest["split"].value_counts().sort_index().items()},
        "by_source": {k: int(v) for k, v in manifest["source"].value_counts().sort_index().items()},
        "by_abnormality": {name: len(case_rows[key]) for key, name in CSV_NAMES.items()},
        "monochrome1": int((manifest["photometric"] == "MONOCHROME1").sum()),
        "manifest": str(manifest_path),
        "case_csvs": csv_paths,
        "normal_csv": str(normal_csv),
    }
    log.info("wrote %d synthetic images (%d patients) to %s", len(manifest), n_pat, out)
    return summary


_README = """# Synthetic CBIS-DDSM-shaped data (featmammo phantoms, NOT patient data)

Written by `featmammo synth` / `featmammo.datasets.synthetic.write_synthetic_cbis`
(n={n}, seed={seed}, size={size}, difficulty={difficulty}).

- `<Subject>/<StudyUID>/<SeriesUID>/*.dcm` and the four `*_case_description_*_set.csv` files follow
  the official CBIS-DDSM classic layout and headers (benign/malignant masses and calcifications).
- `normals/` + `normal_cases.csv`: normal phantoms. CBIS-DDSM has no normal images; these are a
  separate, synthetic source (manifest `source` = `synthetic-normal`). Paths in `normal_cases.csv`
  are relative to `normals/`.
- `manifest.csv`: one row per full image, featmammo manifest columns, paths relative to this folder.

Class is carried by lesion morphology: benign = circumscribed oval masses or coarse calcifications,
malignant = spiculated/irregular masses or clustered fine pleomorphic calcifications.
"""
