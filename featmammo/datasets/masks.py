"""Lesion geometry of the public sets as ROI mask PNGs, written beside the manifest.

Every set with lesion geometry gets masks the same way, so ``--roi crop|patch`` reads them like
CBIS-DDSM's: a 1-bit PNG of the image's full size (255 = lesion), one path per row in
``roi_mask_path`` (the lesion that decides the crop) and all of them, ``;``-joined, in
``roi_mask_paths``. The drawing is exact integer geometry:

* :func:`polygon_mask` fills outlines (DDSM chain codes, INbreast XML ``Point_px`` polygons);
  an outline of one or two points (a calcification marked by a point) becomes a disk of
  ``point_radius`` pixels around each point, so the lesion keeps a box to crop;
* :func:`box_mask` fills boxes ``(xmin, ymin, xmax, ymax)`` in pixel coordinates (VinDr findings):
  every pixel the box touches, ``floor(min)`` .. ``ceil(max) - 1``, clipped to the image;
* :func:`disk_mask` fills circles ``(column, row, radius)`` (MIAS): the pixels whose centre lies
  within ``radius`` of the centre.

:class:`MaskWriter` writes them into one folder and collects what could not be drawn (``errors``:
image, reason) instead of stopping: a row without its mask still is a row (``--roi full`` reads it;
``--roi crop`` records it as failed). Only a folder that cannot be written stops the build
(ManifestError naming it). A mask is reused only when it was drawn from the same geometry: each
PNG carries (a ``featmammo-mask`` text chunk) the digest of its builder's key -- the lesion's
coordinates and the image size, with :data:`MASK_FORMAT` -- so a corrected overlay or table copied
in with its old mtime (``cp -p``, ``rsync -t``, ``tar x``), a new image size or a change of the
drawing rules redraws it; file times decide nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from featmammo.errors import ManifestError

log = logging.getLogger(__name__)

#: radius (pixels) of the disk drawn around an outline of one or two points
POINT_RADIUS = 3
#: version of the drawing rules, part of every mask's key: bump it when a mask drawn from the same
#: geometry would come out differently, so no mask of the old rules is reused
MASK_FORMAT = 1
#: the PNG text chunk that holds a mask's key digest
KEY_CHUNK = "featmammo-mask"


class MaskGeometryError(ValueError):
    """The geometry cannot be drawn into the image (outside it, degenerate, unknown size)."""


def _canvas(shape: tuple[int, int]):
    from PIL import Image as PILImage

    h, w = (int(v) for v in shape)
    if h <= 0 or w <= 0:
        raise MaskGeometryError(f"image size {h}x{w} is not usable")
    return PILImage.new("L", (w, h), 0)


def polygon_mask(
    polygons: Iterable, shape: tuple[int, int], *, point_radius: int = POINT_RADIUS
) -> np.ndarray:
    """Filled polygons (each an (N, 2) sequence of (x = column, y = row)) as a uint8 mask of
    ``shape`` = (rows, columns), 255 inside and on the outline; clipped to the image."""
    from PIL import ImageDraw

    img = _canvas(shape)
    draw = ImageDraw.Draw(img)
    for poly in polygons:
        pts = [(float(x), float(y)) for x, y in np.asarray(poly, dtype=np.float64).reshape(-1, 2)]
        if len(pts) >= 3:
            draw.polygon([(round(x), round(y)) for x, y in pts], fill=255, outline=255)
        else:
            r = int(point_radius)
            for x, y in pts:
                cx, cy = round(x), round(y)
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255, outline=255)
    return np.asarray(img)


def box_mask(boxes: Iterable, shape: tuple[int, int]) -> np.ndarray:
    """Boxes ``(xmin, ymin, xmax, ymax)`` (pixel coordinates, x = column) as a uint8 mask of
    ``shape``: every pixel a box touches (``floor(min)`` to ``ceil(max) - 1``; a box thinner than
    a pixel still marks one), clipped to the image."""
    h, w = (int(v) for v in shape)
    if h <= 0 or w <= 0:
        raise MaskGeometryError(f"image size {h}x{w} is not usable")
    mask = np.zeros((h, w), np.uint8)
    for xmin, ymin, xmax, ymax in boxes:
        if not all(np.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
            raise MaskGeometryError(f"box {(xmin, ymin, xmax, ymax)} has a missing coordinate")
        if xmax < xmin or ymax < ymin:
            raise MaskGeometryError(f"box {(xmin, ymin, xmax, ymax)}: max below min")
        x0, y0 = int(np.floor(xmin)), int(np.floor(ymin))
        x1, y1 = max(int(np.ceil(xmax)), x0 + 1), max(int(np.ceil(ymax)), y0 + 1)
        mask[max(0, y0) : max(0, min(h, y1)), max(0, x0) : max(0, min(w, x1))] = 255
    return mask


def disk_mask(circles: Iterable, shape: tuple[int, int]) -> np.ndarray:
    """Circles ``(column, row, radius)`` (pixel indices, origin top-left) as a uint8 mask of
    ``shape``: the pixels whose centre is within ``radius`` of the circle's centre."""
    h, w = (int(v) for v in shape)
    if h <= 0 or w <= 0:
        raise MaskGeometryError(f"image size {h}x{w} is not usable")
    mask = np.zeros((h, w), np.uint8)
    for cx, cy, r in circles:
        if r < 0:
            raise MaskGeometryError(f"circle radius {r} is negative")
        y0, y1 = max(0, int(np.floor(cy - r))), min(h, int(np.ceil(cy + r)) + 1)
        x0, x1 = max(0, int(np.floor(cx - r))), min(w, int(np.ceil(cx + r)) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        mask[y0:y1, x0:x1][inside] = 255
    return mask


def write_mask(mask: np.ndarray, path, digest: str = "") -> None:
    """Write a mask PNG atomically: 1-bit (``featmammo.io.read_image`` gives 0/255 back), fast
    zlib level: a full-size DDSM mask takes ~50 ms and ~12 KiB (8-bit, default level: ~140 ms).
    ``digest`` (:func:`mask_key_digest`) goes into the ``featmammo-mask`` text chunk."""
    from PIL import Image as PILImage
    from PIL.PngImagePlugin import PngInfo

    from featmammo.atomic import atomic_write

    img = PILImage.fromarray(np.ascontiguousarray(mask > 0))
    info = PngInfo()
    if digest:
        info.add_text(KEY_CHUNK, digest)
    atomic_write(Path(path), lambda f: img.save(f, format="PNG", compress_level=1, pnginfo=info))


def mask_key_digest(key) -> str:
    """The digest a mask PNG carries: sha256 of :data:`MASK_FORMAT` and the builder's ``key``
    (JSON-able: coordinates as lists of numbers, the image size)."""
    from featmammo.hashing import canonical_json

    text = canonical_json({"format": MASK_FORMAT, "key": key})
    return hashlib.sha256(text.encode()).hexdigest()


def _stored_digest(path: Path) -> str | None:
    """The key digest in an existing mask PNG (None: no file, no digest, unreadable)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            value = im.info.get(KEY_CHUNK)
    except Exception:  # noqa: BLE001 - any unreadable old mask is simply drawn again
        return None
    return value if isinstance(value, str) else None


class MaskWriter:
    """Writes the masks of one manifest into ``folder`` (see the module docstring).

    ``write(name, make, key=..., image_id=...)`` returns the mask's path, or ``""`` when ``key``
    or ``make`` raised :class:`MaskGeometryError` or nothing was drawn (the reason is in
    ``errors``). ``key`` is everything ``make`` draws from (a JSON-able value, or a callable
    giving it: coordinates and image size); an existing PNG carrying the same key is reused
    without drawing. ``written`` and ``reused`` count files; :meth:`summary` gives the keys every
    builder's summary carries.
    """

    def __init__(self, folder):
        self.folder = Path(os.path.abspath(os.fspath(folder)))
        self.written = 0
        self.reused = 0
        self.errors: list[dict] = []

    def write(
        self,
        name: str,
        make: Callable[[], np.ndarray],
        *,
        key,
        image_id: str = "",
        what: str = "",
        **extra,
    ) -> str:
        path = self.folder / name
        try:
            digest = mask_key_digest(key() if callable(key) else key)
            if _stored_digest(path) == digest:
                self.reused += 1
                return str(path)
            mask = make()
        except MaskGeometryError as exc:
            self.error(image_id, f"{what}: {exc}" if what else str(exc), **extra)
            return ""
        if not np.any(mask):
            h, w = mask.shape
            where = f"the lesion lies outside the {h}x{w} image"
            self.error(image_id, f"{what}: {where}" if what else where, **extra)
            return ""
        try:
            write_mask(mask, path, digest)
        except OSError as exc:
            raise ManifestError(f"{path}: cannot write ROI mask ({exc.strerror or exc})") from exc
        self.written += 1
        return str(path)

    def error(self, image_id: str, reason: str, **extra) -> None:
        self.errors.append({"image_id": image_id, **extra, "reason": reason})

    def summary(self) -> dict:
        return {
            "mask_dir": str(self.folder),
            "masks_written": self.written,
            "masks_reused": self.reused,
            "mask_errors": self.errors,
        }


def no_masks_summary() -> dict:
    """The mask keys of a summary when no mask folder was given."""
    return {"mask_dir": "", "masks_written": 0, "masks_reused": 0, "mask_errors": []}


def mask_notes(summary: dict) -> list[str]:
    """The notes a builder adds about its masks."""
    if not summary["mask_dir"]:
        return ["no ROI masks written (give a mask folder for --roi crop|patch)"]
    if summary["mask_errors"]:
        return [
            f"{len(summary['mask_errors'])} lesion(s) could not be made into masks "
            "(listed in mask_errors; those rows keep an empty roi_mask_path)"
        ]
    return []


def default_mask_dir(output) -> Path:
    """``<output stem>.masks/`` beside the manifest (so mask paths are written relative)."""
    out = Path(output)
    return out.with_name(out.stem + ".masks")


__all__ = [
    "MASK_FORMAT",
    "POINT_RADIUS",
    "MaskGeometryError",
    "MaskWriter",
    "box_mask",
    "default_mask_dir",
    "disk_mask",
    "mask_key_digest",
    "mask_notes",
    "no_masks_summary",
    "polygon_mask",
    "write_mask",
]
