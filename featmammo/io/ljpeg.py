"""DDSM ``.LJPEG`` reader: lossless JPEG (SOF3) written by the Stanford PVRG codec.

How a file becomes an :class:`~featmammo.io.images.Image` (exact stored values, ``uint16``):

1. The markers are parsed here (SOF3, one component, precision P in 2..16, predictor 1..7, no
   point transform, no restart interval; anything else is an ImageReadError naming the file).
   A gzipped file (``.LJPEG.gz``; some mirrors gzip every file) is decompressed in memory.
2. The Huffman stream is decoded by ``imagecodecs.jpegsof3_decode`` (C, a standard ITU T.81
   lossless decoder): ~0.3 s for a 4600 x 3000 image. imagecodecs' other lossless decoder,
   ``ljpeg_decode`` (liblj92), is no faster here, decodes truncated streams silently and refuses
   some valid predictor-6 streams, so it is not used.
3. PVRG predicts the **first row** differently from T.81 (DATASETS.md): after the first pixel it
   applies the scan's predictor with an imaginary row above filled with 2**(P-1), where T.81 uses
   the left neighbour. Predictors 1, 4 and 5 give the same prediction either way, so the standard
   decode is already exact. For 2, 3, 6 and 7 (``meta["pvrg_method"]``):

   * ``splice`` (default): only row 0's codes differ in meaning, so they are decoded here (a few
     thousand symbols), PVRG's row 0 is rebuilt, re-coded with T.81's left-neighbour prediction in
     the file's own Huffman table and spliced before the untouched codes of rows 1..H-1 (a bit
     shift of the rest of the stream). One standard decode of that stream is PVRG's image; its
     first row is checked against the rebuilt one.
   * ``reintegrate`` (when the table has no code for a category the new row-0 residuals need, or
     the check fails, logged): the coded residuals are recovered from a standard decode
     (re-applying the standard predictor, modulo 2**16) and re-integrated with PVRG's rule: row
     0's difference carried down the columns (2) or diagonals (3); anti-diagonal by anti-diagonal
     (strided slices of the flat image) for 6 and 7. Values wrap modulo 2**16 like the codec's.
4. The pixel stream is row-major in the SOF's own geometry; the image is that flat stream
   reshaped to (LINES, PIXELS_PER_LINE) of the sibling ``.ics`` (many SOFs have width and height
   swapped). Never transposed. ``meta["sof_swapped"]`` records it.

5. Damaged files (:mod:`featmammo.io.ljpeg_verify`): the coded data is checked against the
   header before decoding, the C decoder gets a zero-padded stream it cannot read out of, and the
   image returned is re-encoded and compared bit for bit with the whole entropy-coded segment,
   which must run to one EOI; any difference is an ImageReadError naming the pixel and byte.

``read_ljpeg`` needs the ``.ics`` (``A_0002_1.LEFT_CC.LJPEG`` -> ``A-0002-1.ics`` in the same
folder) for the geometry, unless ``shape`` is given. For P <= 8 the C decoder keeps only 8 bits
of each value, which re-integration cannot use; it then decodes with the SOF precision raised to
9 and a point transform that keeps the first prediction (16-bit values). Optical density is never
applied here (see :func:`featmammo.io.ddsm.optical_density`).

Steps 1, 3 and 5 live beside this reader (every name stays importable from here):
:mod:`featmammo.io.ljpeg_markers` (header, Huffman tables, entropy segment, byte stuffing),
:mod:`featmammo.io.ljpeg_pvrg` (re-integration and the row-0 splice) and
:mod:`featmammo.io.ljpeg_verify`.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import numpy as np

from featmammo.errors import ConfigError, ImageReadError, ManifestError

from . import ddsm
from .images import (
    DEFAULT_MAX_PIXELS,
    Image,
    apply_simple_windowing,
    check_max_pixels,
    check_path,
    check_windowing,
    empty_meta,
    typed_errors,
)
from .ljpeg_markers import (  # noqa: F401  (re-exported: featmammo.io.ljpeg keeps every name)
    _SOF_NAMES,
    _entropy_end,
    _huffman_codes,
    _stuff,
    _unstuff,
    entropy_segment_end,
    parse_header,
)
from .ljpeg_pvrg import (  # noqa: F401
    STANDARD_AGREES,
    _decode_row0,
    _encode_bits,
    _pvrg_row0,
    _residuals,
    _wavefront,
    pvrg_from_standard,
    spliced_stream,
)
from .ljpeg_verify import check_size, padded_for_c, residuals_u16, verify_coded  # noqa: F401

logger = logging.getLogger(__name__)

DECODER = "imagecodecs-jpegsof3+pvrg"


def _gunzipped(data: bytes, path) -> tuple[bytes, bool]:
    """(the stream, whether it was gzipped): DDSM mirrors gzip some LJPEGs."""
    if data[:2] != b"\x1f\x8b":
        return data, False
    try:
        return gzip.decompress(data), True
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageReadError(path, f"corrupt gzip data ({exc})") from None


def _table(info: dict, path) -> tuple[list[int], bytes]:
    """The scan's Huffman table, which must be the file's only one: the C decoder uses the first
    table it meets whatever the scan selects."""
    table = info.get("huffman_table")
    if table is None:
        raise ImageReadError(path, "lossless JPEG scan without its Huffman table (DHT)")
    if info.get("huffman_tables", 1) != 1:
        raise ImageReadError(
            path,
            f"lossless JPEG with {info['huffman_tables']} Huffman tables; a DDSM file has one",
        )
    return table


def _c_decode(stream: bytes, info: dict, path) -> np.ndarray:
    """imagecodecs' jpegsof3 decode (T.81) of ``stream``, whose header ``info`` was validated,
    in the SOF geometry, as uint16; the stream is padded so the decoder stays in its buffer."""
    try:
        import imagecodecs
    except ImportError:  # pragma: no cover - imagecodecs is a declared dependency
        raise ImageReadError(
            path, "reading .LJPEG needs the imagecodecs package (pip install imagecodecs)"
        ) from None
    try:
        out = np.asarray(imagecodecs.jpegsof3_decode(padded_for_c(stream, info)))
    except Exception as exc:  # Jpegsof3Error on corrupt streams
        raise ImageReadError(path, f"cannot decode lossless JPEG data ({exc})") from None
    h, w = info["height"], info["width"]
    if out.shape != (h, w):
        raise ImageReadError(path, f"decoded shape {out.shape} does not match the SOF {h} x {w}")
    return out if out.dtype == np.uint16 else out.astype(np.uint16)


def _standard_16(data: bytes, info: dict, path) -> np.ndarray:
    """A T.81 decode of ``data`` with 16-bit values (modulo 2**16) whatever the precision. For
    P <= 8 the C decoder keeps 8 bits, so it decodes a copy whose SOF says P = 9 and whose scan
    says point transform 9 - P: jpegsof3 uses the point transform only for the first
    prediction, 2**(P' - 1 - Pt) = 2**(P-1), the true one. (Were that to change, the bit-for-bit
    check after decoding would refuse the file, not return other pixels.)"""
    precision = info["precision"]
    if precision > 8:
        return _c_decode(data, info, path)
    d = bytearray(data)
    d[info["sof_offset"]] = 9
    al = info["sos_al_offset"]
    d[al] = (d[al] & 0xF0) | (9 - precision)
    return _c_decode(bytes(d), info, path)


def decode_standard(data: bytes, path) -> np.ndarray:
    """A plain T.81 decode (imagecodecs' jpegsof3) in the SOF geometry; no PVRG correction and
    no check that the data is consumed exactly (:func:`decode_ljpeg` does both). For P <= 8
    the values are uint8."""
    info = parse_header(data, path)
    _table(info, path)
    out = _c_decode(data, info, path)
    return out.astype(np.uint8) if info["precision"] <= 8 else out


def decode_ljpeg(data: bytes, path="<bytes>", *, method: str = "auto") -> tuple[np.ndarray, dict]:
    """(pixels uint16 in the SOF geometry, header info) of a PVRG lossless JPEG stream.

    ``method``: ``auto`` (the row-0 splice, else re-integration), ``splice`` or ``reintegrate``
    (both exact; for tests and benchmarks). ``info["pvrg_method"]`` says which ran. The pixels
    returned are checked to be exactly what the entropy-coded segment encodes, all of it
    (:mod:`featmammo.io.ljpeg_verify`); anything else is an ImageReadError.
    """
    if method not in ("auto", "splice", "reintegrate"):
        raise ConfigError(f"method must be auto, splice or reintegrate; got {method!r}")
    data, gz = _gunzipped(data, path)
    info = parse_header(data, path)
    info["gzipped"] = gz
    _table(info, path)
    start = info["scan_offset"]
    coded = _unstuff(data[start : entropy_segment_end(data, start, path)])
    check_size(info, coded.size, path)
    predictor, precision = info["predictor"], info["precision"]
    info["pvrg_method"] = "standard" if predictor in STANDARD_AGREES else None
    pixels = None
    if predictor not in STANDARD_AGREES and method != "reintegrate":
        try:
            spliced = spliced_stream(data, info, coded)
        except ValueError as exc:
            raise ImageReadError(
                path, f"corrupt lossless JPEG data in the first row ({exc})"
            ) from None
        if spliced is not None:
            stream, row0 = spliced
            std = _c_decode(stream, info, path)
            if np.array_equal(std[0], np.asarray(row0, np.uint16)):
                pixels = std
                info["pvrg_method"] = "splice"
            else:
                # the spliced stream did not decode to the row it was built from (damaged data,
                # or a splice bug); re-integration from the original stream is exact too
                if method == "splice":
                    raise ImageReadError(path, "the re-coded first row did not decode as built")
                info["pvrg_method"] = "reintegrate (splice check failed)"
        elif method == "splice":
            raise ImageReadError(path, "the Huffman table cannot code the re-predicted first row")
    if pixels is None:
        pixels = pvrg_from_standard(_standard_16(data, info, path), predictor, precision)
        if info["pvrg_method"] is None:
            info["pvrg_method"] = "reintegrate"
    verify_coded(pixels, info, coded, path)
    top = int(pixels.max())
    if top >> precision:
        # a valid code stream, but of values the header's precision cannot hold (T.81 A.1.1):
        # damaged coded data (or a header with the wrong precision)
        raise ImageReadError(
            path,
            f"corrupt lossless JPEG data: decoded values reach {top}, beyond the {precision}-bit "
            "precision of the header",
        )
    if info["pvrg_method"] == "reintegrate (splice check failed)":  # the data is sound: a bug
        logger.warning(
            "%s: the re-coded first row did not decode as built; re-integrated instead", path
        )
    return pixels, info


def _ics_geometry(p: Path) -> tuple[tuple[int, int], dict, dict]:
    ics = ddsm.ics_path_for(p)
    if ics is None:
        raise ImageReadError(
            p,
            "no sibling .ics file (e.g. A-0002-1.ics for A_0002_1.LEFT_CC.LJPEG): it gives "
            "the image's LINES x PIXELS_PER_LINE, which the LJPEG header does not reliably hold",
        )
    try:
        info = ddsm.read_ics(ics)
    except ManifestError as exc:
        raise ImageReadError(p, f"unusable .ics: {exc}") from None
    view = ddsm.view_of(p)
    if view is None or view not in info["views"]:
        cut = info.get("cut_views", {}).get(view)
        if cut:  # the .ics ends inside this view's line: its geometry is not trusted
            raise ImageReadError(p, f"unusable .ics: {cut}")
        raise ImageReadError(
            p, f"{ics.name} has no line for view {view or '(none in the file name)'}"
        )
    fields = info["views"][view]
    return (fields["lines"], fields["pixels_per_line"]), fields, info


@typed_errors("LJPEG file")
def read_ljpeg(
    path,
    *,
    windowing: str = "none",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    shape: tuple[int, int] | None = None,
) -> Image:
    """Read one DDSM ``.LJPEG`` (or ``.LJPEG.gz``) exactly: ``uint16`` (LINES, PIXELS_PER_LINE).

    ``shape`` (rows, cols) overrides the sibling ``.ics``. ``windowing``: ``none`` or
    ``percentile``. Raises ImageReadError naming the file for anything wrong.
    """
    p = check_path(path)
    check_windowing(windowing)
    ics_info: dict = {}
    view_fields: dict = {}
    if shape is None:
        shape, view_fields, ics_info = _ics_geometry(p)
    else:
        shape = (int(shape[0]), int(shape[1]))
        if shape[0] <= 0 or shape[1] <= 0:
            raise ConfigError(f"shape must be two positive integers, got {shape}")
    rows, cols = shape
    check_max_pixels(p, rows, cols, max_pixels)
    data = p.read_bytes()
    data, gz = _gunzipped(data, p)
    header = parse_header(data, p)
    h, w = header["height"], header["width"]
    if h * w != rows * cols:
        raise ImageReadError(
            p,
            f"the lossless JPEG holds {h} x {w} pixels but the .ics says LINES {rows} x "
            f"PIXELS_PER_LINE {cols}",
        )
    check_max_pixels(p, h, w, max_pixels)
    sof_pixels, header = decode_ljpeg(data, p)
    pixels = sof_pixels.reshape(rows, cols)  # the flat stream in the .ics geometry: no transpose
    precision = header["precision"]
    ics_bits = view_fields.get("bits_per_pixel")
    bits = precision
    if ics_bits and ics_bits != precision:
        top = int(pixels.max()) if pixels.size else 0
        if 0 < ics_bits < precision and top < (1 << ics_bits):
            bits = ics_bits
        logger.warning(
            "%s: the .ics says BITS_PER_PIXEL %d, the JPEG header precision %d; using %d bits",
            p,
            ics_bits,
            precision,
            bits,
        )
    meta = empty_meta("ljpeg", windowing)
    view = ddsm.view_of(p)
    side, _, view_name = (view or "").partition("_")
    digitizer = ics_info.get("digitizer")
    institution = ics_info.get("institution") or ddsm.institution_of(p.name)
    try:
        calibration = ddsm.calibration_for(digitizer, institution) if digitizer else None
    except ConfigError:
        calibration = None
    meta.update(
        decoder=DECODER,
        photometric="MONOCHROME2",
        bits_stored=bits,
        laterality={"LEFT": "L", "RIGHT": "R"}.get(side),
        view=view_name or None,
        rows=rows,
        cols=cols,
        patient_id=ics_info.get("case") or ddsm.case_of(p.name),
    )
    meta.update(
        lossy=False,
        gzipped=gz,
        predictor=header["predictor"],
        precision=precision,
        sof_shape=(h, w),
        sof_swapped=(h, w) != (rows, cols),
        first_row_rule="pvrg",
        pvrg_method=header["pvrg_method"],
        digitizer=digitizer,
        institution=institution,
        od_calibration=calibration,
        resolution_um=view_fields.get("resolution"),
        overlay=view_fields.get("overlay"),
        ics_bits_per_pixel=ics_bits,
    )
    max_value = float((1 << bits) - 1)
    pixels, max_value = apply_simple_windowing(p, pixels, max_value, meta, windowing, "LJPEG")
    return Image(pixels=pixels, path=str(p), max_value=float(max_value), meta=meta)


def is_ljpeg_name(path) -> bool:
    name = Path(str(path)).name.lower()
    return name.endswith(".ljpeg") or name.endswith(".ljpeg.gz")


__all__ = [
    "DECODER",
    "decode_ljpeg",
    "decode_standard",
    "is_ljpeg_name",
    "parse_header",
    "pvrg_from_standard",
    "read_ljpeg",
]
