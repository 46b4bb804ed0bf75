"""The entry points: :func:`prepare` (calibration, side, crop/ROI, resize; cached by
:mod:`featmammo.prepared`), :func:`finish` (normalise, 3 channels), :func:`preprocess` and the
readers :func:`load_prepared` / :func:`load_and_preprocess`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, ImageReadError
from .calibration import calibrate_od
from .config import PreprocessConfig, format_image_size
from .geometry import _normalize_laterality, breast_bbox, infer_laterality, mask_bbox, patch_bbox
from .normalize import _normalize
from .resize import resize2d

log = logging.getLogger(__package__)  # "featmammo.preprocess" in log lines, as before the split


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
    ``(out_h, out_w)`` (fitted inside ``config.shape``, one side filled, no padding yet);
    ``max_value``: the image's nominal maximum; ``raw_max_abs``: max |value| of the region before
    resizing (``decimal``); ``meta``: what the read did to this image (:data:`READ_META` keys of
    ``Image.meta`` that are set: the windowing asked for and applied, its parameters, the
    MONOCHROME1 inversion, the decoder), kept with the pixels by the prepared-image cache.
    """

    pixels: np.ndarray
    max_value: float
    raw_max_abs: float
    meta: dict = field(default_factory=dict)


#: the ``Image.meta`` keys a :class:`Prepared` keeps (per-image facts a store may record)
READ_META = (
    "format",
    "decoder",
    "windowing",
    "windowing_applied",
    "windowing_params",
    "inverted",
    "decoder_fallback",
)


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
        if meta.get("format") == "ljpeg":
            # original DDSM: how a view faces depends on the scanning institution (A's left views
            # face the other way from B, C and D's), so the laterality cannot say which side the
            # chest wall is on; the tissue distribution can
            side = infer_laterality(pixels)
        elif side is None:
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

    out_h, out_w = config.region_shape(*region.shape)
    raw_max_abs = _region_max_abs(region)
    resized = np.ascontiguousarray(resize2d(region, out_h, out_w, config.resize), np.float32)
    kept = {k: meta[k] for k in READ_META if meta.get(k) is not None}
    return Prepared(resized, max_value, raw_max_abs, kept)


def finish(prepared: Prepared, config: PreprocessConfig | None = None) -> np.ndarray:
    """Steps 5-6 (normalise, pad to ``config.shape``, 3 channels) of a :class:`Prepared` region.

    ``image_size=N``: the region is centred in the N x N square (as ever). ``image_size=(H, W)``:
    it is placed at the top-left corner, so the padding is on the right and at the bottom: after
    the canonical side the chest wall is on the left, and the padding lies away from it.
    """
    config = config or PreprocessConfig()
    resized = prepared.pixels
    out_h, out_w = resized.shape
    height, width = config.shape
    if not config.fits(resized.shape):
        raise ConfigError(
            f"prepared region {out_h}x{out_w} does not match image_size="
            f"{format_image_size(config.image_size)} (another config)"
        )
    background = float(resized.min())
    normed, map_scalar = _normalize(resized, config, prepared.max_value, prepared.raw_max_abs)

    out = np.empty((3, height, width), dtype=np.float32)
    pad = np.asarray(map_scalar(background), dtype=np.float32).reshape(-1)
    out[:] = (pad if pad.size == 3 else np.repeat(pad, 3))[:, None, None]
    if config.is_square:
        top, left = (height - out_h) // 2, (width - out_w) // 2
    else:
        top = left = 0
    out[:, top : top + out_h, left : left + out_w] = normed
    return out


def preprocess(
    image,
    config: PreprocessConfig | None = None,
    *,
    laterality: str | None = None,
    roi_mask: np.ndarray | tuple | None = None,
) -> np.ndarray:
    """Turn one image into a ``(3, H, W)`` float32 C-contiguous array (see the module docstring).

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
    decoder: str = "cpu",
) -> Prepared:
    """Read ``path`` (and its ROI mask when ``config.roi`` uses one) and :func:`prepare` it.

    The mask is read only for ``roi="crop"|"patch"`` (with windowing ``none``; mask = pixels > 0):
    ``roi="full"`` never opens it, so an unreadable or empty mask cannot fail a full image.
    ``decoder`` (``cpu``, ``auto``, ``nvimagecodec``) is passed to
    :func:`featmammo.io.read_image`: where JPEG 2000 DICOMs decode, not what the pixels are (the
    GPU decoder's equal the CPU's), so it is not part of ``config`` nor of its fingerprint.
    """
    from .. import io as fio  # lazy: io pulls pydicom

    config = config or PreprocessConfig()
    image = fio.read_image(path, windowing=config.windowing, decoder=decoder)
    mask = None
    if config.uses_mask and _has_path(roi_mask_path):
        mask_img = fio.read_image(roi_mask_path, windowing="none", decoder=decoder)
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
    decoder: str = "cpu",
) -> np.ndarray:
    """Read ``path`` with :func:`featmammo.io.read_image` (``config.windowing``) and preprocess it.

    ``roi_mask_path`` is read (windowing ``none``; mask = pixels > 0) only when ``config.roi`` is
    ``crop`` or ``patch``. ``decoder``: see :func:`load_prepared`.
    :func:`featmammo.prepared.prepare_image` gives the same array through the prepared-image cache.
    """
    config = config or PreprocessConfig()
    prepared = load_prepared(
        path, config, laterality=laterality, roi_mask_path=roi_mask_path, decoder=decoder
    )
    return finish(prepared, config)
