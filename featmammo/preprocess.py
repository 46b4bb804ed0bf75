"""Preprocessing: one 2-D mammogram -> one ``(3, S, S)`` float32 network input.

This module owns the image-to-tensor recipe and its configuration (:class:`PreprocessConfig`, with a
stable fingerprint that goes into every embedding store). It is torch-free (numpy + Pillow).

Steps, in order (each one documented where it is implemented):

0. **DDSM calibration** (``ddsm_calibration="od"``, default ``none``): grey levels of a DDSM
   ``.LJPEG`` scan become optical density for the scanner named in ``Image.meta["digitizer"]``
   (:func:`featmammo.io.ddsm.optical_density`), clipped to [0.05, 3.0] and mapped to
   ``1 - OD / 4`` (float32, max value 1; dense tissue stays bright). Never applied at read time;
   an image without a digitiser is an error naming the file.
1. **Canonical side** (``canonical_side``): right breasts are flipped horizontally so the chest wall
   is on the left of every image (the CBIS-DDSM/DDSM convention for left breasts). Laterality comes
   from the ``laterality`` argument, else ``Image.meta["laterality"]``; when unknown it is inferred:
   the half (left/right) of a downsampled copy holding more tissue is the chest-wall side.
2. **Breast crop** (``crop="breast"``): Otsu threshold on a strided copy whose long side is at most
   256 px, eroded by 2 px (so thin bright film borders stop touching the breast), largest
   8-connected component (run-length union-find, no scipy), its bounding box mapped back to full
   resolution and grown back by the erosion + one stride. Drops film labels, markers and borders.
3. **ROI** (``roi``): ``full`` keeps the (breast-cropped) image; ``crop`` takes the bounding box of
   the lesion mask; ``patch`` takes a square centred on the lesion box, of side ``max(h, w) * (1 +
   patch_context)``, shifted to lie inside the image where it fits and clipped where it does not. A
   mask of another resolution than the image is scaled (bounding box scaled by the size ratio).
   ``crop``/``patch`` ignore the breast crop (they are already local).
4. **Resize** with aspect preserved: the long side becomes ``image_size``, the short side is scaled
   by the same factor, and the result is padded (centred) to a square with the region's background
   value (its minimum). Padding after the resize equals pad-then-resize up to edge blending and
   never builds a padded full-resolution copy. Methods: ``nearest``, ``bilinear``, ``bicubic``
   (Pillow on float32 'F' images; Pillow antialiases when downscaling) and ``area``: the *exact*
   area-weighted average of the source pixels each output pixel covers (OpenCV INTER_AREA semantics;
   Pillow's BOX filter is only exact for integer factors). ``area`` is computed with
   ``np.add.reduceat`` directly on the integer pixels, so no float copy of the full field is made.
5. **Normalise** (statistics from the resized region, padding excluded; the padding gets the
   normalised background value): ``backbone`` x/max_value then (x - mean[c]) / std[c];
   ``zscore`` (x - mean) / std per image; ``mean`` (x - mean) / (max - min); ``decimal`` x / 10**j
   with j >= 0 the smallest integer with max|x| / 10**j < 1, j computed on the raw stored values
   of the region;
   ``none`` x / max_value.
6. Grey -> 3 identical channels; output is C-contiguous float32 ``(3, S, S)``.

Steps 0-4 are :func:`prepare` (the costly part, cached by :mod:`featmammo.prepared` under
:meth:`PreprocessConfig.prepared_fingerprint`), steps 5-6 are :func:`finish`;
``preprocess = finish(prepare(...))``. :func:`load_and_preprocess` reads an ROI mask only when
``roi`` is ``crop`` or ``patch``.

Pixels stay in their stored integer type until the resize (flips and crops are views); nothing is
ever float64 at full-field size.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from .errors import ConfigError, ImageReadError
from .hashing import canonical_json

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESIZE_METHODS = ("nearest", "bilinear", "bicubic", "area")
NORMALIZE_METHODS = ("backbone", "zscore", "mean", "decimal", "none")
CROP_METHODS = ("breast", "none")
ROI_MODES = ("full", "crop", "patch")
WINDOWINGS = ("none", "voi", "window", "percentile")
DDSM_CALIBRATIONS = ("none", "od")

# ``ddsm_calibration="od"``: optical density is clipped to this range (the common practice for DDSM)
# and mapped to v = 1 - OD / 4, so dense tissue (low OD) stays bright as in the raw scan.
OD_CLIP = (0.05, 3.0)

# Bumped whenever the numerical recipe changes, so old and new stores never fuse silently.
PREPROCESS_VERSION = 1

# Long side of the strided copy used for the breast mask and laterality inference.
_MASK_SIDE = 256


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


# --------------------------------------------------------------------------------------------------
# geometry helpers


def _normalize_laterality(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    v = str(value).strip().upper()
    if v in ("L", "LEFT"):
        return "L"
    if v in ("R", "RIGHT"):
        return "R"
    if v == "":
        return None
    raise ConfigError(f"laterality must be L, R or empty, got {value!r}")


def _strided(pixels: np.ndarray, side: int = _MASK_SIDE) -> tuple[np.ndarray, int]:
    """A small copy of ``pixels`` by striding (no averaging: cheap on 4600x2800 uint16)."""
    step = max(1, math.ceil(max(pixels.shape) / side))
    return np.ascontiguousarray(pixels[::step, ::step]), step


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any numeric dtype): the lower edge of the upper class."""
    v = np.asarray(values).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    k = int(np.argmax(between[:-1])) if bins > 1 else 0
    return float(edges[k + 1])


def largest_component_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box ``(y0, x0, y1, x1)`` (end-exclusive) of the largest 8-connected component.

    Run-length union-find: each row's runs of True are nodes; runs in adjacent rows that touch
    (8-connectivity) are merged. Fast for the few-hundred-pixel masks it is used on.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    rs, cs = np.nonzero(d == 1)  # run starts (row-major order)
    _, ce = np.nonzero(d == -1)  # run ends (exclusive), same order
    n = len(rs)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(rs, np.arange(h + 1))
    for r in range(1, h):
        a0, a1 = row_first[r - 1], row_first[r]
        b0, b1 = row_first[r], row_first[r + 1]
        if a0 == a1 or b0 == b1:
            continue
        i, j = a0, b0
        while i < a1 and j < b1:
            # 8-connected overlap: [cs, ce) intervals touching diagonally count.
            if cs[i] <= ce[j] and cs[j] <= ce[i]:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[rj] = ri
            if ce[i] < ce[j]:
                i += 1
            else:
                j += 1
    roots = np.array([find(i) for i in range(n)])
    lengths = (ce - cs).astype(np.int64)
    sizes = np.bincount(roots, weights=lengths, minlength=n)
    best = int(np.argmax(sizes))
    sel = roots == best
    return int(rs[sel].min()), int(cs[sel].min()), int(rs[sel].max()) + 1, int(ce[sel].max())


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by a (2r+1)^2 square, done as ``radius`` 3x3 erosions (outside = False)."""
    h, w = mask.shape
    for _ in range(radius):
        p = np.pad(mask, 1, constant_values=False)
        out = p[1:-1, 1:-1].copy()
        for dy in range(3):
            for dx in range(3):
                out &= p[dy : dy + h, dx : dx + w]
        mask = out
    return mask


_ERODE_RADIUS = 2


def breast_bbox(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, x0, y1, x1)`` of the breast in full-resolution coordinates.

    Otsu on a strided copy (long side <= 256); the mask is eroded by 2 px (5x5) so that thin bright
    film borders and label strips (< ~2 % of the long side) stop touching the breast; largest
    8-connected component; its box grown back by the erosion radius + 1 stride and clipped.
    The whole image when nothing stands out from the background.
    """
    h, w = pixels.shape
    small, step = _strided(pixels)
    thr = otsu_threshold(small)
    fg = small > thr
    bbox = largest_component_bbox(_erode(fg, _ERODE_RADIUS))
    grow = _ERODE_RADIUS + 1
    if bbox is None:  # everything thin: fall back to the un-eroded mask
        bbox, grow = largest_component_bbox(fg), 1
    if bbox is None:
        log.debug("breast crop: no foreground above Otsu threshold %.4g; keeping the image", thr)
        return 0, 0, h, w
    y0, x0, y1, x1 = bbox
    return (
        max(0, (y0 - grow) * step),
        max(0, (x0 - grow) * step),
        min(h, (y1 + grow) * step),
        min(w, (x1 + grow) * step),
    )


def infer_laterality(pixels: np.ndarray) -> str:
    """``"L"`` when the left half holds more tissue (chest wall on the left), else ``"R"``.

    Tissue = pixels above the Otsu threshold of a strided copy, weighted by their intensity above
    that threshold; that ignores the uniform background and most of the film border.
    """
    small, _ = _strided(pixels)
    thr = otsu_threshold(small)
    tissue = np.clip(small.astype(np.float32) - np.float32(thr), 0, None)
    half = small.shape[1] // 2
    left = float(tissue[:, :half].sum())
    right = float(tissue[:, small.shape[1] - half :].sum())
    return "L" if left >= right else "R"


def mask_bbox(mask: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Bounding box of ``mask > 0`` scaled to an image of ``shape`` (mask may differ in size)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ConfigError(f"roi_mask must be 2-D, got shape {mask.shape}")
    rows = np.flatnonzero(np.any(mask > 0, axis=1))
    if rows.size == 0:
        raise ConfigError("roi_mask has no foreground pixels: cannot crop a lesion")
    cols = np.flatnonzero(np.any(mask[rows[0] : rows[-1] + 1] > 0, axis=0))
    mh, mw = mask.shape
    h, w = shape
    sy, sx = h / mh, w / mw
    y0 = int(math.floor(rows[0] * sy))
    y1 = int(math.ceil((rows[-1] + 1) * sy))
    x0 = int(math.floor(cols[0] * sx))
    x1 = int(math.ceil((cols[-1] + 1) * sx))
    return max(0, y0), max(0, x0), min(h, max(y1, y0 + 1)), min(w, max(x1, x0 + 1))


def patch_bbox(
    bbox: tuple[int, int, int, int], shape: tuple[int, int], context: float
) -> tuple[int, int, int, int]:
    """Square of side ``max(h, w) * (1 + context)`` centred on ``bbox``, moved inside ``shape``."""
    y0, x0, y1, x1 = bbox
    h, w = shape
    side = max(1, int(round(max(y1 - y0, x1 - x0) * (1.0 + context))))
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2

    def place(center, size):
        start = int(round(center - side / 2))
        start = min(max(start, 0), max(size - side, 0))
        return start, min(size, start + side)

    py0, py1 = place(cy, h)
    px0, px1 = place(cx, w)
    return py0, px0, py1, px1


# --------------------------------------------------------------------------------------------------
# resizing


def _area_axis(x: np.ndarray, out_len: int, axis: int) -> np.ndarray:
    """Exact area-weighted resampling of 2-D ``x`` along ``axis`` (0 or 1) to ``out_len`` samples.

    Output i averages the source over [e_i, e_i+1), e_i = i*n/out, with fractional edge weights:
    with k_i = floor(e_i) and f_i = e_i - k_i, the covered area is
    ``sum(x[k_i:k_i+1]) - f_i * x[k_i] + f_i+1 * x[k_i+1]``. The whole-pixel block sums are one
    ``np.add.reduce`` per block accumulated in float64 into a small row (~10x faster than
    ``np.add.reduceat`` with a dtype on uint16); only (out_len x other) arrays are float64.
    Upscaling works too (empty blocks; the formula then returns the covering pixel).
    """
    n = x.shape[axis]
    edges = np.arange(out_len + 1, dtype=np.float64) * (n / out_len)
    edges[-1] = n
    k = np.minimum(np.floor(edges).astype(np.int64), n)
    frac = edges - k
    other = x.shape[1 - axis]
    acc = np.zeros((out_len, other), dtype=np.float64)
    for i in range(out_len):
        lo, hi = int(k[i]), int(k[i + 1])
        if hi > lo:
            block = x[lo:hi] if axis == 0 else x[:, lo:hi]
            np.add.reduce(block, axis=axis, dtype=np.float64, out=acc[i])
    edge_part = np.zeros((out_len + 1, other), dtype=np.float64)
    inside = np.flatnonzero((k < n) & (frac > 0))
    if inside.size:
        pix = np.take(x, k[inside], axis=axis)
        edge_part[inside] = frac[inside, None] * (pix if axis == 0 else pix.T)
    acc += edge_part[1:]
    acc -= edge_part[:-1]
    acc /= np.diff(edges)[:, None]
    out = acc.astype(np.float32)
    return out if axis == 0 else np.ascontiguousarray(out.T)


def area_resize(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Exact area-average resize of a 2-D array (any dtype) to float32 ``(out_h, out_w)``."""
    # rows first whatever the shape: block sums over contiguous rows are the fast direction
    return _area_axis(_area_axis(x, out_h, 0), out_w, 1)


_PIL_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # Image.Resampling values


def resize2d(x: np.ndarray, out_h: int, out_w: int, method: str) -> np.ndarray:
    """Resize a 2-D array to float32 ``(out_h, out_w)``; see the module docstring for methods."""
    if method == "area":
        return area_resize(x, out_h, out_w)
    if method == "nearest":
        # centre sampling, src = floor((i + 0.5) * n / out): Pillow's NEAREST, without a float copy
        # of the whole region
        rows = np.minimum(
            ((np.arange(out_h) + 0.5) * (x.shape[0] / out_h)).astype(np.int64), x.shape[0] - 1
        )
        cols = np.minimum(
            ((np.arange(out_w) + 0.5) * (x.shape[1] / out_w)).astype(np.int64), x.shape[1] - 1
        )
        return x[rows[:, None], cols[None, :]].astype(np.float32)
    if method not in _PIL_FILTERS:
        raise ConfigError(f"resize method {method!r} is not one of {', '.join(RESIZE_METHODS)}")
    from PIL import Image as PILImage

    src = PILImage.fromarray(np.ascontiguousarray(x, dtype=np.float32), mode="F")
    out = src.resize((out_w, out_h), resample=PILImage.Resampling(_PIL_FILTERS[method]))
    return np.asarray(out, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# normalisation


def _decimal_exponent(max_abs: float) -> int:
    j = 0
    while max_abs / 10.0**j >= 1.0:
        j += 1
    return j


def _normalize(
    x: np.ndarray, config: PreprocessConfig, max_value: float, raw_max_abs: float
) -> tuple[np.ndarray, callable]:
    """Returns the normalised grey image (1 or 3 channels) and the scalar map used for padding."""
    method = config.normalize
    if method == "none":
        scale = np.float32(1.0 / max_value)
        return x * scale, lambda v: v / max_value
    if method == "decimal":
        div = np.float32(10.0 ** _decimal_exponent(raw_max_abs))
        return x / div, lambda v: v / float(div)
    if method == "zscore":
        mean, std = float(x.mean()), float(x.std())
        std = std if std > 0 else 1.0
        return (x - np.float32(mean)) / np.float32(std), lambda v: (v - mean) / std
    if method == "mean":
        mean, rng = float(x.mean()), float(x.max() - x.min())
        rng = rng if rng > 0 else 1.0
        return (x - np.float32(mean)) / np.float32(rng), lambda v: (v - mean) / rng
    # backbone: per-channel (x / max_value - mean[c]) / std[c]
    mean = np.asarray(config.mean if len(config.mean) == 3 else config.mean * 3, np.float32)
    std = np.asarray(config.std if len(config.std) == 3 else config.std * 3, np.float32)
    unit = x * np.float32(1.0 / max_value)
    out = (unit[None] - mean[:, None, None]) / std[:, None, None]
    return out, lambda v: (v / max_value - mean) / std


# --------------------------------------------------------------------------------------------------
# public entry points


def _as_pixels(image) -> tuple[np.ndarray, float, str, dict]:
    if hasattr(image, "pixels"):
        pixels = np.asarray(image.pixels)
        max_value = float(image.max_value)
        path = str(getattr(image, "path", "<image>"))
        meta = dict(getattr(image, "meta", None) or {})
    else:
        pixels = np.asarray(image)
        path, meta = "<array>", {}
        if pixels.dtype == np.uint8:
            max_value = 255.0
        elif pixels.dtype == np.uint16:
            max_value = 65535.0
        elif np.issubdtype(pixels.dtype, np.floating):
            max_value = 1.0
        else:
            max_value = float(np.iinfo(pixels.dtype).max) if pixels.dtype.kind in "iu" else 1.0
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim != 2:
        raise ImageReadError(path, f"expected a 2-D grey image, got shape {pixels.shape}")
    if pixels.size == 0:
        raise ImageReadError(path, "empty image")
    if pixels.dtype.kind not in "uif" or pixels.dtype == np.bool_:
        raise ImageReadError(path, f"unsupported pixel dtype {pixels.dtype}")
    if not (max_value > 0 and math.isfinite(max_value)):
        raise ImageReadError(path, f"max_value must be a finite number > 0, got {max_value}")
    if pixels.dtype.kind == "f":
        # NaN/inf would poison Otsu, the resize and every normalisation (and loop decimal scaling)
        finite = np.isfinite(pixels)
        if not finite.all():
            bad = int(pixels.size - np.count_nonzero(finite))
            raise ImageReadError(
                path, f"{bad} of {pixels.size} pixels are NaN or infinite; finite values expected"
            )
    return pixels, max_value, path, meta


@dataclass(frozen=True)
class Prepared:
    """The expensive half of preprocessing, before normalisation (what the cache stores).

    ``pixels``: the region after calibration, canonical side, crop/ROI and resize, float32
    ``(out_h, out_w)`` (long side = ``image_size``, no padding yet); ``max_value``: the image's
    nominal maximum; ``raw_max_abs``: max |value| of the region before resizing (``decimal``).
    """

    pixels: np.ndarray
    max_value: float
    raw_max_abs: float


def _optical_density(pixels: np.ndarray, digitizer: str, institution: str | None) -> np.ndarray:
    from .io.ddsm import optical_density  # lazy: the io package pulls pydicom

    return optical_density(pixels, digitizer, institution)


def calibrate_od(pixels: np.ndarray, digitizer: str, institution: str | None = None) -> np.ndarray:
    """DDSM grey levels -> ``1 - clip(OD, 0.05, 3.0) / 4`` (float32), OD per digitiser.

    OD comes from :func:`featmammo.io.ddsm.optical_density` (``institution``: the case letter,
    which tells HOWTEK's two calibrations apart). Integer images of at most 16 bits go
    through a lookup table of every possible value (the same numbers, one call on <= 65,536 values
    instead of one per pixel); the result is a full-size float32 image, max value 1.
    """
    lo, hi = OD_CLIP

    def to_grey(od):
        od = np.asarray(od, dtype=np.float32)
        return (
            np.float32(1.0) - np.clip(od, np.float32(lo), np.float32(hi)) / np.float32(4.0)
        ).astype(np.float32, copy=False)

    with np.errstate(divide="ignore", invalid="ignore"):
        if pixels.dtype in (np.uint8, np.uint16):
            values = np.arange(int(pixels.max()) + 1, dtype=pixels.dtype)
            lut = to_grey(_optical_density(values, digitizer, institution))
            if lut.shape != values.shape:
                raise ConfigError(
                    f"optical_density returned shape {lut.shape} for {values.shape} values"
                )
            return lut[pixels]
        return to_grey(_optical_density(pixels, digitizer, institution))


def _region_max_abs(region: np.ndarray) -> float:
    """max |x| of ``region`` without an |x| copy (and without int overflow at the dtype minimum)."""
    top = float(region.max())
    if region.dtype.kind == "u":
        return abs(top)
    return max(abs(top), abs(float(region.min())))


def prepare(
    image,
    config: PreprocessConfig | None = None,
    *,
    laterality: str | None = None,
    roi_mask: np.ndarray | tuple | None = None,
) -> Prepared:
    """Steps 0-4 of the module docstring (calibration, side, crop/ROI, resize): the costly part.

    Arguments as :func:`preprocess`; ``finish(prepare(...), config)`` is ``preprocess(...)``.
    """
    config = config or PreprocessConfig()
    pixels, max_value, path, meta = _as_pixels(image)
    h, w = pixels.shape

    if config.ddsm_calibration == "od":
        digitizer = meta.get("digitizer")
        if not digitizer:
            raise ImageReadError(
                path,
                "ddsm_calibration='od' needs the image's digitiser (Image.meta['digitizer'], set "
                f"for DDSM .LJPEG files); this image ({meta.get('format') or 'no format recorded'})"
                " has none",
            )
        institution = meta.get("institution") or None
        try:
            pixels = calibrate_od(pixels, str(digitizer), institution)
        except ConfigError as exc:
            raise ImageReadError(path, f"ddsm_calibration='od': {exc}") from None
        max_value = 1.0
        if not np.isfinite(pixels).all():
            raise ImageReadError(path, f"optical density of digitiser {digitizer!r} is not finite")

    mask = None
    box = None
    if roi_mask is not None:
        if isinstance(roi_mask, (tuple, list)) and len(roi_mask) == 4:
            y0, x0, y1, x1 = (int(v) for v in roi_mask)
            if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
                raise ConfigError(f"{path}: ROI bbox {tuple(roi_mask)} outside image {h}x{w}")
            box = (y0, x0, y1, x1)
        else:
            mask = np.asarray(roi_mask)
    if config.roi != "full" and mask is None and box is None:
        raise ConfigError(f"{path}: roi={config.roi!r} needs a lesion mask or bbox (roi_mask)")

    if config.canonical_side:
        # an empty/NaN manifest cell means unknown: the header's laterality, else inference
        side = _normalize_laterality(laterality)
        if side is None:
            side = _normalize_laterality(meta.get("laterality"))
        if side is None:
            side = infer_laterality(pixels)
            log.debug("%s: laterality unknown, inferred %s from tissue distribution", path, side)
        if side == "R":
            pixels = pixels[:, ::-1]
            if mask is not None:
                mask = mask[:, ::-1]
            if box is not None:
                box = (box[0], w - box[3], box[2], w - box[1])

    if config.roi == "full":
        region_box = breast_bbox(pixels) if config.crop == "breast" else (0, 0, h, w)
    else:
        lesion = box if box is not None else mask_bbox(mask, (h, w))
        region_box = (
            lesion if config.roi == "crop" else patch_bbox(lesion, (h, w), config.patch_context)
        )
    y0, x0, y1, x1 = region_box
    region = pixels[y0:y1, x0:x1]

    size = config.image_size
    rh, rw = region.shape
    if rh >= rw:
        out_h, out_w = size, max(1, int(round(rw * size / rh)))
    else:
        out_h, out_w = max(1, int(round(rh * size / rw))), size
    raw_max_abs = _region_max_abs(region)
    resized = np.ascontiguousarray(resize2d(region, out_h, out_w, config.resize), np.float32)
    return Prepared(resized, max_value, raw_max_abs)


def finish(prepared: Prepared, config: PreprocessConfig | None = None) -> np.ndarray:
    """Steps 5-6 (normalise, pad to a square, 3 channels) of a :class:`Prepared` region."""
    config = config or PreprocessConfig()
    resized = prepared.pixels
    out_h, out_w = resized.shape
    size = config.image_size
    if max(out_h, out_w) != size:
        raise ConfigError(
            f"prepared region {out_h}x{out_w} does not match image_size={size} (another config)"
        )
    background = float(resized.min())
    normed, map_scalar = _normalize(resized, config, prepared.max_value, prepared.raw_max_abs)

    out = np.empty((3, size, size), dtype=np.float32)
    pad = np.asarray(map_scalar(background), dtype=np.float32).reshape(-1)
    out[:] = (pad if pad.size == 3 else np.repeat(pad, 3))[:, None, None]
    top, left = (size - out_h) // 2, (size - out_w) // 2
    out[:, top : top + out_h, left : left + out_w] = normed
    return out


def preprocess(
    image,
    config: PreprocessConfig | None = None,
    *,
    laterality: str | None = None,
    roi_mask: np.ndarray | tuple | None = None,
) -> np.ndarray:
    """Turn one image into a ``(3, S, S)`` float32 C-contiguous array (see the module docstring).

    ``image`` is a :class:`featmammo.io.Image` or a 2-D array (uint8 -> max 255, uint16 -> 65535,
    float -> 1.0). ``roi_mask`` is a 2-D mask (any resolution; > 0 = lesion) or a bounding box
    ``(y0, x0, y1, x1)`` in image pixels, needed for ``roi="crop"|"patch"``.
    """
    config = config or PreprocessConfig()
    return finish(prepare(image, config, laterality=laterality, roi_mask=roi_mask), config)


def _has_path(value) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return str(value).strip() != ""


def load_prepared(
    path,
    config: PreprocessConfig | None = None,
    *,
    laterality: str | None = None,
    roi_mask_path=None,
) -> Prepared:
    """Read ``path`` (and its ROI mask when ``config.roi`` uses one) and :func:`prepare` it.

    The mask is read only for ``roi="crop"|"patch"`` (with windowing ``none``; mask = pixels > 0):
    ``roi="full"`` never opens it, so an unreadable or empty mask cannot fail a full image.
    """
    from .io import read_image  # lazy: io pulls pydicom

    config = config or PreprocessConfig()
    image = read_image(path, windowing=config.windowing)
    mask = None
    if config.roi != "full" and _has_path(roi_mask_path):
        mask_img = read_image(roi_mask_path, windowing="none")
        mask = np.asarray(mask_img.pixels) > 0
        if not mask.any():
            raise ImageReadError(roi_mask_path, "ROI mask has no foreground pixels")
    return prepare(image, config, laterality=laterality, roi_mask=mask)


def load_and_preprocess(
    path,
    config: PreprocessConfig | None = None,
    *,
    laterality: str | None = None,
    roi_mask_path=None,
) -> np.ndarray:
    """Read ``path`` with :func:`featmammo.io.read_image` (``config.windowing``) and preprocess it.

    ``roi_mask_path`` is read (windowing ``none``; mask = pixels > 0) only when ``config.roi`` is
    ``crop`` or ``patch``. :func:`featmammo.prepared.prepare_image` gives the same array through
    the prepared-image cache.
    """
    config = config or PreprocessConfig()
    prepared = load_prepared(path, config, laterality=laterality, roi_mask_path=roi_mask_path)
    return finish(prepared, config)


__all__ = [
    "DDSM_CALIBRATIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PREPROCESS_VERSION",
    "Prepared",
    "PreprocessConfig",
    "area_resize",
    "breast_bbox",
    "calibrate_od",
    "finish",
    "infer_laterality",
    "largest_component_bbox",
    "load_and_preprocess",
    "load_prepared",
    "mask_bbox",
    "otsu_threshold",
    "patch_bbox",
    "prepare",
    "preprocess",
    "resize2d",
]
