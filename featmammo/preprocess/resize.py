"""Aspect-preserving resize of a 2-D region: exact area averaging (``area``) or Pillow filters."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .config import RESIZE_METHODS

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
