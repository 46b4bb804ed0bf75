"""DDSM calibration: grey levels of an LJPEG scan -> optical density -> ``1 - OD / 4``."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

# ``ddsm_calibration="od"``: optical density is clipped to this range (the common practice for DDSM)
# and mapped to v = 1 - OD / 4, so dense tissue (low OD) stays bright as in the raw scan.
OD_CLIP = (0.05, 3.0)


def _optical_density(pixels: np.ndarray, digitizer: str, institution: str | None) -> np.ndarray:
    from ..io.ddsm import optical_density  # lazy: the io package pulls pydicom

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
