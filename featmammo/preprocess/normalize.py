"""Normalisation of a resized region: backbone, zscore, mean, decimal scaling or none."""

from __future__ import annotations

import numpy as np

from .config import PreprocessConfig

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
