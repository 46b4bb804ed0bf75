"""Geometry: laterality, Otsu threshold, the breast mask's largest component and bounding box,
lesion-mask and patch boxes (numpy only, no scipy).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__package__)  # "featmammo.preprocess" in log lines, as before the split


# Long side of the strided copy used for the breast mask and laterality inference.
_MASK_SIDE = 256

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
