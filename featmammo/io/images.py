"""The ``Image`` record, the shared pixel policy, and the PNG / JPEG / PGM / TIFF readers.

This module owns:

* :class:`Image` (2-D pixels + nominal white level + metadata) and ``DEFAULT_MAX_PIXELS``;
* the windowing policies that do not need DICOM tags (``none``, ``auto`` = ``none`` for a file
  without window tags, ``percentile``) and the checks
  shared with the DICOM reader (grey-vs-colour, ``max_pixels``, path checks);
* :func:`read_pillow` (PNG, JPEG, TIFF through Pillow, without Pillow's lossy mode conversions)
  and :func:`read_pgm` (a small exact netpbm reader: Pillow rescales a PGM whose maxval is not
  255/65535, which would change the stored values).

Decisions (documented, tested):

* Colour where grey is expected: an RGB(A) image whose three channels are identical is read as
  grey (one channel is taken); otherwise :class:`~featmammo.errors.ImageReadError` says it is
  colour. No luminance conversion: a colour mammogram is almost always the wrong file.
* A 16-bit PNG stays ``uint16`` (``max_value`` 65535); 16-bit colour or grey+alpha PNGs are refused
  because Pillow would silently reduce them to 8 bits.
* JPEG EXIF Orientation is applied (what every viewer shows; ``meta["exif_orientation"]``); a
  float TIFF is refused (no nominal white level).
* A damaged file that makes Pillow/pydicom raise anything unexpected still gives one
  :class:`~featmammo.errors.ImageReadError` naming the file (:func:`typed_errors`).
* ``max_pixels`` is checked from the header (``Image.size``) before any pixel is decoded. Pillow's
  own decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is raised to ``max_pixels`` when
  that is larger (never lowered), so the two guards agree.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featmammo.errors import ConfigError, FeatmammoError, ImageReadError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 60_000_000
#: pixel policies; ``auto`` (DICOM VOI LUT or window when present, else the stored range) is
#: :class:`featmammo.preprocess.PreprocessConfig`'s default, ``none`` the readers'
WINDOWINGS = ("auto", "none", "voi", "window", "percentile")
PERCENTILES = (0.5, 99.5)

# The keys every Image.meta (and read_dicom_header) carries; unknown values are None.
META_KEYS = (
    "format",
    "decoder",
    "photometric",
    "bits_stored",
    "windowing",
    "windowing_applied",
    "laterality",
    "view",
    "rows",
    "cols",
    "transfer_syntax",
    "study_uid",
    "series_uid",
    "series_description",
    "patient_id",
)

_PILLOW_FORMATS = {"PNG": "png", "JPEG": "jpeg", "TIFF": "tiff"}


@dataclass
class Image:
    """One decoded greyscale image.

    ``pixels`` is 2-D: ``uint8``/``uint16`` for ``windowing="none"`` (stored values after the
    modality LUT, MONOCHROME1 already inverted) and for ``auto`` on a file without VOI LUT or
    window tags, ``float32`` in [0, 1] for any windowing applied (``meta["windowing_applied"]``).
    ``max_value`` is the nominal white level (``2**BitsStored - 1`` for DICOM, 255/65535 for
    PNG/TIFF/JPEG, the header maxval for PGM, 1.0 when windowed).
    """

    pixels: np.ndarray
    path: str
    max_value: float
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape  # type: ignore[return-value]


def empty_meta(fmt: str, windowing: str) -> dict:
    meta = dict.fromkeys(META_KEYS)
    meta["format"] = fmt
    meta["windowing"] = windowing
    return meta


def typed_errors(what: str):
    """Decorator for a reader ``f(path, ...)``: any unexpected exception (a damaged file can make
    Pillow/pydicom raise TypeError, NotImplementedError, struct.error... from deep inside) becomes
    one :class:`ImageReadError` naming the file, so a long run can skip it and carry on.
    ``FeatmammoError`` (ImageReadError, ConfigError) and ``MemoryError`` pass through."""

    def wrap(func):
        @functools.wraps(func)
        def reader(path, *args, **kwargs):
            if not isinstance(path, (str, os.PathLike)):  # a caller's bug, not a bad file
                raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
            try:
                return func(path, *args, **kwargs)
            except (FeatmammoError, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - see the docstring
                logger.debug("%s: %s failed", path, what, exc_info=True)
                raise ImageReadError(
                    path, f"damaged or unsupported {what} ({type(exc).__name__}: {exc})"
                ) from None

        return reader

    return wrap


def check_windowing(windowing: str) -> str:
    if windowing not in WINDOWINGS:
        raise ConfigError(f"windowing must be one of {', '.join(WINDOWINGS)}; got {windowing!r}")
    return windowing


def check_path(path) -> Path:
    """The path as a ``Path``; ImageReadError when it is missing, not a file or empty."""
    p = Path(os.fspath(path))
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageReadError(p, "file does not exist") from None
    except OSError as exc:
        raise ImageReadError(p, f"cannot access file: {exc.strerror or exc}") from None
    if not p.is_file():
        raise ImageReadError(p, "not a regular file (a directory?)")
    if st.st_size == 0:
        raise ImageReadError(p, "file is empty (0 bytes)")
    return p


def check_max_pixels(path, rows: int, cols: int, max_pixels: int | None, frames: int = 1) -> None:
    if max_pixels is not None and rows * cols * frames > max_pixels:
        raise ImageReadError(
            path,
            f"image is {rows} x {cols} = {rows * cols * frames:,} pixels, more than "
            f"max_pixels={max_pixels:,}; raise max_pixels if this file is genuine",
        )


def grey_from_channels(path, arr: np.ndarray, what: str) -> np.ndarray:
    """A (H, W, C) array whose colour channels are identical -> (H, W) view of one channel.

    A fourth (alpha) channel is accepted only when fully opaque. Raises ImageReadError on colour.
    """
    if arr.ndim != 3:
        return arr
    channels = arr.shape[2]
    if channels in (2, 4):  # grey+alpha or RGBA
        alpha = arr[..., -1]
        if not np.all(alpha == np.iinfo(arr.dtype).max):
            raise ImageReadError(path, f"{what} has a transparent alpha channel; expected grey")
        channels -= 1
    first = arr[..., 0]
    for c in range(1, channels):
        if not np.array_equal(first, arr[..., c]):
            raise ImageReadError(
                path,
                f"{what} is a colour image (its channels differ); a greyscale mammogram is "
                "expected. Convert it to greyscale explicitly if that is what you want",
            )
    return first


def percentile_window(
    pixels: np.ndarray,
    max_value: float,
    lo_pct: float = PERCENTILES[0],
    hi_pct: float = PERCENTILES[1],
) -> tuple[np.ndarray, dict]:
    """Clip to the [lo_pct, hi_pct] percentiles and scale to float32 [0, 1].

    Integer images use a histogram (exact order statistics, no sort, no float64 copy).
    """
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize <= 2:
        counts = np.bincount(pixels.ravel(), minlength=int(max_value) + 1)
        cum = np.cumsum(counts)
        n = cum[-1]
        # Nearest-rank percentiles on the integer histogram.
        lo = float(np.searchsorted(cum, max(1, int(np.ceil(lo_pct / 100 * n)))))
        hi = float(np.searchsorted(cum, max(1, int(np.ceil(hi_pct / 100 * n)))))
    else:
        lo, hi = (float(v) for v in np.percentile(pixels, [lo_pct, hi_pct]))
    out = pixels.astype(np.float32)
    out -= np.float32(lo)
    if hi > lo:
        out *= np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    return out, {"percentiles": [lo_pct, hi_pct], "low": lo, "high": hi}


def apply_simple_windowing(path, pixels, max_value, meta, windowing, fmt_name):
    """``none``, ``auto`` (= ``none``: the stored range) or ``percentile`` for formats without
    DICOM window tags; ``meta["windowing_applied"]`` says which was applied."""
    if windowing in ("none", "auto"):
        meta["windowing_applied"] = "none"
        return pixels, max_value
    if windowing == "percentile":
        out, params = percentile_window(pixels, max_value)
        meta["windowing_params"] = params
        meta["windowing_applied"] = "percentile"
        return out, 1.0
    raise ImageReadError(
        path,
        f"windowing={windowing!r} needs DICOM VOI LUT or WindowCenter/WindowWidth tags; "
        f"a {fmt_name} file has none (use 'auto', 'none' or 'percentile')",
    )


# --------------------------------------------------------------------------- Pillow formats


def _png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG IHDR, or None when the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


@typed_errors("PNG/JPEG/TIFF file")
def read_pillow(path, *, windowing: str = "none", max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Read a PNG / JPEG / TIFF greyscale image exactly (no lossy mode conversion)."""
    from PIL import Image as PILImage

    p = check_path(path)
    check_windowing(windowing)
    if max_pixels is not None:
        limit = PILImage.MAX_IMAGE_PIXELS
        if limit is not None and max_pixels > limit:
            PILImage.MAX_IMAGE_PIXELS = int(max_pixels)  # never lowered; see module docstring
    try:
        im = PILImage.open(p, formats=tuple(_PILLOW_FORMATS))
    except PILImage.DecompressionBombError as exc:
        reason = f"image too large for Pillow's decompression-bomb guard: {exc}"
        raise ImageReadError(p, reason) from None
    except PILImage.UnidentifiedImageError:
        reason = "not a readable PNG/JPEG/TIFF image (Pillow cannot identify it)"
        raise ImageReadError(p, reason) from None
    except Exception as exc:  # OSError, SyntaxError from a plugin on a damaged header
        raise ImageReadError(p, f"not a readable PNG/JPEG/TIFF image ({exc})") from None
    with im:
        fmt = _PILLOW_FORMATS.get(im.format or "", (im.format or "unknown").lower())
        cols, rows = im.size
        check_max_pixels(p, rows, cols, max_pixels, getattr(im, "n_frames", 1))
        if getattr(im, "n_frames", 1) > 1:
            raise ImageReadError(p, f"{fmt} has {im.n_frames} frames; one 2-D image expected")
        mode = im.mode
        if fmt == "png":
            depth, ctype = _png_header(p) or (8, 0)
            if depth == 16 and ctype in (2, 4, 6):
                kind = {2: "RGB", 4: "grey+alpha", 6: "RGBA"}[ctype]
                raise ImageReadError(
                    p,
                    f"16-bit {kind} PNG: Pillow would reduce it to 8 bits; "
                    "save it as a 16-bit greyscale PNG",
                )
        if fmt == "tiff" and mode in ("RGB", "RGBA", "LA"):
            bps = im.tag_v2.get(258, (8,))
            bps = bps if isinstance(bps, tuple) else (bps,)
            if max(bps) > 8:
                raise ImageReadError(p, f"{max(bps)}-bit colour TIFF is not supported")
        try:
            im.load()
            pixels, max_value, bits = _pillow_to_array(p, im, fmt)
            # JPEG: what every viewer shows is the stored raster turned by the EXIF Orientation
            # tag, which Pillow does not apply (its TIFF reader applies the TIFF tag itself)
            orientation = _exif_orientation(im) if fmt == "jpeg" else None
            if orientation not in (None, 1):
                pixels = _apply_orientation(pixels, orientation)
            rows, cols = pixels.shape
            # Pillow hands out read-only buffers (and one channel of RGB is a strided view):
            # give callers an owned, writable, contiguous array like the DICOM reader does.
            pixels = np.require(pixels, requirements=["C", "W", "O"])
        except ImageReadError:
            raise
        except Exception as exc:  # truncated / corrupt data
            raise ImageReadError(p, f"cannot decode {fmt} pixel data ({exc})") from None
    meta = empty_meta(fmt, windowing)
    meta.update(decoder="pillow", photometric=mode, bits_stored=bits, rows=rows, cols=cols)
    meta["lossy"] = fmt == "jpeg"
    meta["exif_orientation"] = orientation
    pixels, max_value = apply_simple_windowing(p, pixels, max_value, meta, windowing, fmt.upper())
    return Image(pixels=pixels, path=str(p), max_value=float(max_value), meta=meta)


def _exif_orientation(im) -> int | None:
    """The EXIF Orientation tag (1..8) of a JPEG, None when absent or unreadable."""
    try:
        value = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not stop the read
        return None
    try:
        value = int(value)
    except (TypeError, ValueError):
        return None
    return value if 1 <= value <= 8 else None


def _apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 2..8 to a 2-D array (same result as ``ImageOps.exif_transpose``)."""
    ops = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1, :],
        5: lambda x: x.T,
        6: lambda x: np.rot90(x, -1),
        7: lambda x: x[::-1, ::-1].T,
        8: lambda x: np.rot90(x, 1),
    }
    return np.ascontiguousarray(ops[orientation](a))


def _pillow_to_array(p: Path, im, fmt: str) -> tuple[np.ndarray, int, int]:
    mode = im.mode
    what = f"{fmt.upper()} (mode {mode})"
    if mode == "L":
        return np.asarray(im), 255, 8
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(im)
        if arr.dtype.byteorder not in ("=", "|") and arr.dtype.byteorder != (
            "<" if np.little_endian else ">"
        ):
            arr = arr.astype(np.uint16)
        return arr, 65535, 16
    if mode == "1":
        return np.asarray(im).astype(np.uint8) * np.uint8(255), 255, 1
    if mode == "I":  # e.g. signed 16-bit TIFF: accepted only when the values fit uint16
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageReadError(p, f"{what}: 32-bit values outside 0..65535 are not supported")
        return arr.astype(np.uint16), 65535, 16
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        return grey_from_channels(p, np.asarray(im), f"{what} palette image"), 255, 8
    if mode in ("RGB", "RGBA", "LA"):
        return grey_from_channels(p, np.asarray(im), what), 255, 8
    if mode == "F":
        raise ImageReadError(
            p,
            f"{what}: floating-point pixels have no nominal white level; save the image as "
            "8- or 16-bit integer greyscale",
        )
    raise ImageReadError(p, f"unsupported pixel mode {mode!r} ({what}); expected greyscale")


# --------------------------------------------------------------------------- PGM / PPM


def _pnm_header(data: bytes, path: Path) -> tuple[bytes, int, int, int, int]:
    """(magic, width, height, maxval, offset of the raster)."""
    magic = data[:2]
    if magic not in (b"P2", b"P5", b"P3", b"P6"):
        raise ImageReadError(path, "not a PGM/PPM file (no P2/P5/P3/P6 magic number)")
    tokens: list[int] = []
    i = 2
    n = len(data)
    while len(tokens) < 3:
        while i < n and data[i : i + 1].isspace():
            i += 1
        if i < n and data[i : i + 1] == b"#":
            while i < n and data[i : i + 1] not in (b"\n", b"\r"):
                i += 1
            continue
        j = i
        while j < n and data[j : j + 1].isdigit():
            j += 1
        if j == i:
            raise ImageReadError(path, "malformed PGM header (expected width, height, maxval)")
        tokens.append(int(data[i:j]))
        i = j
    if i >= n or not data[i : i + 1].isspace():
        raise ImageReadError(path, "malformed PGM header (no whitespace before the raster)")
    width, height, maxval = tokens
    if width <= 0 or height <= 0 or not 0 < maxval < 65536:
        raise ImageReadError(path, f"invalid PGM header: {width} x {height}, maxval {maxval}")
    return magic, width, height, maxval, i + 1


@typed_errors("PGM/PPM file")
def read_pgm(path, *, windowing: str = "none", max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Read a binary (P5) or ASCII (P2) PGM exactly; ``max_value`` is the header's maxval.

    P6/P3 (colour PPM) follow the grey-vs-colour rule of :func:`grey_from_channels`.
    """
    p = check_path(path)
    check_windowing(windowing)
    with open(p, "rb") as f:
        head = f.read(65536)  # the header, comments included (a raster after it is harmless)
        magic, width, height, maxval, offset = _pnm_header(head, p)
        check_max_pixels(p, height, width, max_pixels)
        f.seek(offset)
        data = f.read()
    channels = 3 if magic in (b"P3", b"P6") else 1
    count = width * height * channels
    if magic in (b"P5", b"P6"):
        dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
        need = count * dtype.itemsize
        if len(data) < need:
            raise ImageReadError(p, f"truncated PGM raster: {len(data):,} bytes, {need:,} expected")
        arr = np.frombuffer(data, dtype=dtype, count=count)
        arr = arr.astype(np.uint16) if maxval > 255 else arr.copy()
    else:
        try:
            values = np.array(data.split()[:count], dtype=np.int64)
        except ValueError:
            raise ImageReadError(p, "malformed ASCII PGM raster") from None
        if values.size < count:
            raise ImageReadError(p, f"truncated PGM raster: {values.size} of {count} values")
        if values.min() < 0 or values.max() > maxval:
            raise ImageReadError(p, f"PGM values outside 0..maxval ({maxval})")
        arr = values.astype(np.uint16 if maxval > 255 else np.uint8)
    if maxval not in (255, 65535) and arr.max() > maxval:
        raise ImageReadError(p, f"PGM values exceed the header maxval {maxval}")
    arr = arr.reshape((height, width, channels) if channels == 3 else (height, width))
    if channels == 3:
        arr = np.ascontiguousarray(grey_from_channels(p, arr, "PPM"))
    meta = empty_meta("pgm", windowing)
    meta.update(
        decoder="featmammo-pnm",
        photometric="MONOCHROME2",
        bits_stored=int(maxval).bit_length(),
        rows=height,
        cols=width,
    )
    meta["lossy"] = False
    pixels, max_value = apply_simple_windowing(p, arr, maxval, meta, windowing, "PGM")
    return Image(pixels=pixels, path=str(p), max_value=float(max_value), meta=meta)
