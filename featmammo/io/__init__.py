"""Image readers: DICOM / PNG / JPEG / PGM / TIFF / DDSM LJPEG / TFRecord and .npy records ->
:class:`Image` (2-D pixels, max_value, meta).

``read_image`` picks the reader from the file name and, when that is not conclusive, the first
bytes: ``.dcm``/``.dicom`` files are always read as DICOM (so a non-DICOM file with a ``.dcm``
name is an error, not a guess); ``.png``/``.jpg``/``.jpeg``/``.tif``/``.tiff`` go to Pillow and
``.pgm``/``.pnm``/``.ppm`` to the exact netpbm reader; ``.LJPEG`` / ``.LJPEG.gz`` (original DDSM)
to :func:`~featmammo.io.ljpeg.read_ljpeg` (shape from the sibling ``.ics``); ``FILE#INDEX``, when
no file has that whole name, is record INDEX of a TFRecord or ``.npy`` file
(:mod:`featmammo.io.records`); any other name is sniffed (``DICM`` at byte
128, PNG/JPEG/TIFF/netpbm magic numbers). Every failure is a
:class:`featmammo.errors.ImageReadError` naming the file and the reason. No torch here.
"""

from __future__ import annotations

from pathlib import Path

from featmammo.errors import ImageReadError

from .decoders import DECODERS, check_decoder, nvimagecodec_status, resolve_decoder
from .dicom import read_dicom, read_dicom_header
from .images import (
    DEFAULT_MAX_PIXELS,
    META_KEYS,
    WINDOWINGS,
    Image,
    check_path,
    check_windowing,
    read_pgm,
    read_pillow,
    typed_errors,
)
from .ljpeg import is_ljpeg_name, read_ljpeg
from .records import read_record_image, record_path, split_record_path

_DICOM_EXT = {".dcm", ".dicom", ".dic"}
_PILLOW_EXT = {".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff"}
_PNM_EXT = {".pgm", ".pnm", ".ppm"}


def _sniff(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")):
        return "pillow"
    if head[:2] in (b"P2", b"P5", b"P3", b"P6") and len(head) > 2 and head[2:3].isspace():
        return "pnm"
    return None


@typed_errors("image file")
def read_image(
    path,
    *,
    windowing: str = "none",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    decoder: str = "cpu",
) -> Image:
    """Read one greyscale image; raises ImageReadError (ConfigError for a bad ``windowing``).

    ``max_pixels`` (None = no limit) is checked from the header before decoding. ``decoder``
    (``cpu`` default, ``auto``, ``nvimagecodec``) chooses GPU decoding for JPEG 2000 DICOMs
    (:func:`featmammo.io.decoders.resolve_decoder`); other files always decode on the CPU.
    """
    check_windowing(windowing)
    check_decoder(decoder)
    record = split_record_path(path)
    if record is not None:
        return read_record_image(record[0], record[1], windowing=windowing, max_pixels=max_pixels)
    p = check_path(path)
    ext = p.suffix.lower()
    if is_ljpeg_name(p):
        return read_ljpeg(p, windowing=windowing, max_pixels=max_pixels)
    if ext in _DICOM_EXT:
        kind = "dicom"
    elif ext in _PILLOW_EXT:
        kind = "pillow"
    elif ext in _PNM_EXT:
        kind = "pnm"
    else:
        kind = _sniff(p)
    if kind == "dicom":
        return read_dicom(p, windowing=windowing, max_pixels=max_pixels, decoder=decoder)
    if kind == "pillow":
        return read_pillow(p, windowing=windowing, max_pixels=max_pixels)
    if kind == "pnm":
        return read_pgm(p, windowing=windowing, max_pixels=max_pixels)
    raise ImageReadError(p, "unrecognised image format (expected DICOM, PNG, JPEG, PGM or TIFF)")


__all__ = [
    "DECODERS",
    "DEFAULT_MAX_PIXELS",
    "META_KEYS",
    "WINDOWINGS",
    "Image",
    "read_dicom",
    "read_dicom_header",
    "read_image",
    "read_ljpeg",
    "nvimagecodec_status",
    "read_record_image",
    "record_path",
    "resolve_decoder",
    "split_record_path",
]
