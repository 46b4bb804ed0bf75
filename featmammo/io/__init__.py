"""Image readers: DICOM / PNG / JPEG / PGM / TIFF / DDSM LJPEG / TFRecord and .npy records ->
:class:`Image` (2-D pixels, max_value, meta).

``read_image`` picks the reader from the file name and, when that is not conclusive, the first
bytes: ``.dcm``/``.dicom`` files are always read as DICOM (so a non-DICOM file with a ``.dcm``
name is an error, not a guess); ``.png``/``.jpg``/``.jpeg``/``.tif``/``.tiff`` go to Pillow and
``.pgm``/``.pnm``/``.ppm`` to the exact netpbm reader; ``.LJPEG`` / ``.LJPEG.gz`` (original DDSM)
to :func:`~featmammo.io.ljpeg.read_ljpeg` (shape from the sibling ``.ics``); ``FILE#INDEX``, when
no file has that whole name, is record INDEX of a TFRecord or ``.npy`` file
(:mod:`featmammo.io.records`); any other name is sniffed (``DICM`` at byte
128, PNG/JPEG/TIFF/netpbm magic numbers; a gzip-compressed file is named as such). Every failure
is a :class:`featmammo.errors.ImageReadError` naming the file and the reason. No torch here.
"""

from __future__ import annotations

import functools
from pathlib import Path

from featmammo.errors import ImageReadError

from .decoders import DECODERS, check_decoder, nvimagecodec_status, resolve_decoder
from .dicom import gzip_reason, read_dicom, read_dicom_header
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


def reader_kind(path) -> str:
    """Which reader :func:`read_image` gives ``path``: ``record`` (``FILE#INDEX``), ``ljpeg``,
    ``dicom``, ``pillow`` (PNG/JPEG/TIFF), ``pnm`` (PGM/PPM), or ``unknown`` (the extension and
    the first bytes say nothing; :func:`read_image` then fails). Reads at most 132 bytes."""
    if split_record_path(path) is not None:
        return "record"
    p = Path(path)
    ext = p.suffix.lower()
    if is_ljpeg_name(p):
        return "ljpeg"
    if ext in _DICOM_EXT:
        return "dicom"
    if ext in _PILLOW_EXT:
        return "pillow"
    if ext in _PNM_EXT:
        return "pnm"
    try:
        return _sniff(p) or "unknown"
    except OSError:
        return "unknown"


# the libraries whose code turns each kind of file into pixels (their versions identify a decode)
_READER_LIBRARIES = {
    "dicom": (
        "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle",
        "pyjpegls", "python-gdcm", "pillow", "imagecodecs",
    ),
    "ljpeg": ("imagecodecs",),
    "pillow": ("pillow",),
    "record": ("pillow",),
    "pnm": (),
    "unknown": (),
}  # fmt: skip


_NVIMAGECODEC = ("nvidia-nvimgcodec-cu13", "nvidia-nvimgcodec-cu12", "nvidia-nvimgcodec-cu11")


@functools.cache
def _versions(names: tuple[str, ...]) -> tuple[tuple[str, str | None], ...]:
    """``(distribution, version or None)`` of each name, read once per process."""
    from importlib import metadata

    out = []
    for name in names:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, None))
    return tuple(out)


def decoder_identity(path, decoder: str = "cpu") -> dict:
    """What decodes ``path`` here: the reader, the installed versions of the libraries it may use
    (for DICOM every pydicom decoding plugin: which one decodes a transfer syntax follows from
    what is installed, fastest first), and for DICOM the decoding engine ``decoder`` resolves to
    for a JPEG 2000 file (``cpu`` or ``nvimagecodec``). Pixels decoded under another identity may
    differ (a lossy JPEG decoded by another library); the prepared-image cache keys on it.
    ConfigError when ``decoder`` is unknown or names an engine that cannot run.
    """
    check_decoder(decoder)
    kind = reader_kind(path)
    ident = {"reader": kind, "libraries": dict(_versions(_READER_LIBRARIES[kind]))}
    if kind == "dicom":
        engine = resolve_decoder(decoder)
        ident["engine"] = engine
        if engine == "nvimagecodec":
            ident["libraries"].update(_versions(_NVIMAGECODEC))
    return ident


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
    kind = reader_kind(p)
    if kind == "ljpeg":
        return read_ljpeg(p, windowing=windowing, max_pixels=max_pixels)
    if kind == "dicom":
        return read_dicom(p, windowing=windowing, max_pixels=max_pixels, decoder=decoder)
    if kind == "pillow":
        return read_pillow(p, windowing=windowing, max_pixels=max_pixels)
    if kind == "pnm":
        return read_pgm(p, windowing=windowing, max_pixels=max_pixels)
    raise ImageReadError(
        p,
        gzip_reason(p) or "unrecognised image format (expected DICOM, PNG, JPEG, PGM or TIFF)",
    )


__all__ = [
    "DECODERS",
    "DEFAULT_MAX_PIXELS",
    "META_KEYS",
    "WINDOWINGS",
    "Image",
    "decoder_identity",
    "read_dicom",
    "read_dicom_header",
    "read_image",
    "reader_kind",
    "read_ljpeg",
    "nvimagecodec_status",
    "read_record_image",
    "record_path",
    "resolve_decoder",
    "split_record_path",
]
