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

``read_ljpeg`` needs the ``.ics`` (``A_0002_1.LEFT_CC.LJPEG`` -> ``A-0002-1.ics`` in the same
folder) for the geometry, unless ``shape`` is given. A file whose data does not end in an EOI
marker is refused as truncated (jpegsof3 refuses such a stream too; the check gives the clearer
message). P <= 8 with predictors 2, 3, 6, 7 needs the splice (a standard decode comes back as
uint8, losing the wrapped values re-integration needs); DDSM files are 12- or 16-bit.
Optical density is never applied here (see :func:`featmammo.io.ddsm.optical_density`).
"""

from __future__ import annotations

import gzip
import logging
import struct
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

logger = logging.getLogger(__name__)

DECODER = "imagecodecs-jpegsof3+pvrg"
STANDARD_AGREES = frozenset({1, 4, 5})  # predictors whose first-row prediction is PVRG's too

_SOF_NAMES = {
    0xC0: "baseline DCT",
    0xC1: "extended DCT",
    0xC2: "progressive DCT",
    0xC5: "differential sequential DCT",
    0xC6: "differential progressive DCT",
    0xC7: "differential lossless (hierarchical)",
    0xC9: "arithmetic-coded extended DCT",
    0xCA: "arithmetic-coded progressive DCT",
    0xCB: "arithmetic-coded lossless",
    0xCD: "arithmetic-coded differential DCT",
    0xCE: "arithmetic-coded differential progressive DCT",
    0xCF: "arithmetic-coded differential lossless",
}


def parse_header(data: bytes, path) -> dict:
    """SOF3/SOS parameters of a lossless JPEG stream; ImageReadError for anything unsupported.

    Returns ``precision``, ``height``, ``width`` (SOF geometry), ``predictor``,
    ``point_transform``, ``scan_offset`` (first byte of entropy-coded data) and
    ``huffman_table`` (``(BITS, HUFFVAL)`` of the scan's table, None when absent).
    """
    if data[:2] != b"\xff\xd8":
        raise ImageReadError(path, "not a JPEG stream (no SOI marker 0xFFD8 at the start)")
    info: dict = {"restart_interval": 0}
    tables: dict[int, tuple[list[int], bytes]] = {}
    i, n = 2, len(data)
    while True:
        while i < n and data[i] != 0xFF:  # tolerate stray bytes between segments
            i += 1
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            raise ImageReadError(path, "truncated lossless JPEG: no start-of-scan (SOS) marker")
        marker = data[i]
        i += 1
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # SOI, TEM, RSTn: no length
            continue
        if marker == 0xD9:
            raise ImageReadError(path, "lossless JPEG ends (EOI) before any scan")
        if i + 2 > n:
            raise ImageReadError(path, "truncated lossless JPEG header")
        (length,) = struct.unpack(">H", data[i : i + 2])
        if length < 2:
            raise ImageReadError(path, f"corrupt JPEG segment 0xFF{marker:02X} length {length}")
        if i + length > n:
            raise ImageReadError(
                path, f"truncated lossless JPEG: segment 0xFF{marker:02X} runs past the end"
            )
        seg = data[i + 2 : i + length]
        if marker in _SOF_NAMES:
            raise ImageReadError(
                path,
                f"JPEG frame type 0xFF{marker:02X} ({_SOF_NAMES[marker]}) is not a DDSM lossless "
                "JPEG; expected SOF3 (lossless, Huffman)",
            )
        if marker == 0xC3:
            if len(seg) < 6:
                raise ImageReadError(path, "corrupt SOF3 segment")
            p, h, w, nf = struct.unpack(">BHHB", seg[:6])
            if nf != 1:
                raise ImageReadError(path, f"lossless JPEG with {nf} components; one expected")
            if not 2 <= p <= 16:
                raise ImageReadError(path, f"invalid lossless JPEG precision {p}")
            if h == 0 or w == 0:
                raise ImageReadError(path, f"invalid lossless JPEG size {h} x {w}")
            info.update(precision=p, height=h, width=w)
        elif marker == 0xC4:
            j = 0
            while j + 17 <= len(seg):
                tc_th = seg[j]
                counts = list(seg[j + 1 : j + 17])
                values = bytes(seg[j + 17 : j + 17 + sum(counts)])
                if len(values) < sum(counts):
                    raise ImageReadError(path, "corrupt Huffman table (DHT) segment")
                if tc_th >> 4 == 0:  # DC/lossless tables only
                    tables[tc_th & 0x0F] = (counts, values)
                j += 17 + sum(counts)
        elif marker == 0xDD and len(seg) >= 2:
            info["restart_interval"] = struct.unpack(">H", seg[:2])[0]
        elif marker == 0xDA:
            if "precision" not in info:
                raise ImageReadError(path, "lossless JPEG scan before any SOF3 frame header")
            if len(seg) < 6 or seg[0] != 1:
                raise ImageReadError(path, "lossless JPEG scan with other than one component")
            predictor, pt = seg[3], seg[5] & 0x0F
            if not 1 <= predictor <= 7:
                raise ImageReadError(path, f"lossless JPEG predictor {predictor}; 1..7 expected")
            if pt:
                raise ImageReadError(path, f"lossless JPEG point transform {pt} is not supported")
            if info["restart_interval"]:
                raise ImageReadError(
                    path, "lossless JPEG with restart markers (DRI) is not a DDSM file"
                )
            info.update(predictor=predictor, point_transform=pt, scan_offset=i + length)
            info["huffman_table"] = tables.get(seg[2] >> 4)
            return info
        i += length


def _residuals(std: np.ndarray, predictor: int, half: int) -> np.ndarray:
    """The coded residuals (uint16, modulo 2**16) of a standard T.81 decode ``std``: the pixel
    minus its T.81 prediction from the decoded neighbours; predictors 6 and 7."""
    d = std.astype(np.int32)
    d[0, 0] -= half
    d[0, 1:] -= std[0, :-1]  # T.81 first row: the left neighbour
    d[1:, 0] -= std[:-1, 0]  # first column: the pixel above
    if predictor == 7:  # (Ra + Rb) >> 1
        t = np.add(std[1:, :-1], std[:-1, 1:], dtype=np.int32)
        t >>= 1
    elif predictor == 6:  # Rb + ((Ra - Rc) >> 1)
        t = np.subtract(std[1:, :-1], std[:-1, :-1], dtype=np.int32)
        t >>= 1
        t += std[:-1, 1:]
    else:  # pragma: no cover - callers only pass 6 and 7
        raise ValueError(predictor)
    d[1:, 1:] -= t
    del t
    d &= 0xFFFF
    return d.astype(np.uint16)


def pvrg_from_standard(std: np.ndarray, predictor: int, precision: int) -> np.ndarray:
    """PVRG's image (uint16) from a standard T.81 decode ``std`` of the same stream.

    The residuals are recovered exactly (``std - standard prediction`` modulo 2**16) and
    re-integrated with PVRG's first-row rule. Predictors 1, 4, 5: ``std`` is returned unchanged.
    """
    if predictor in STANDARD_AGREES:
        return std
    h, w = std.shape
    half = 1 << (precision - 1)
    if predictor in (2, 3):
        # Linear predictors: the two decodes differ by row 0's difference E0 carried straight
        # down (2: X[r, c] += E0[c]) or down the diagonals (3: X[r, c] += E0[c - r], c >= r).
        # PVRG's row 0: X[0, c] = half + d0[c], d0 = standard row-0 residuals (left neighbour).
        row0 = std[0].astype(np.int64)
        d0 = np.diff(row0, prepend=half)
        e0 = ((half + d0) - row0) & 0xFFFF
        e0 = e0.astype(np.uint16)
        out = std.copy()
        if predictor == 2:
            out += e0  # uint16 arithmetic wraps modulo 2**16, as the codec does
        else:
            for r in range(min(h, w)):
                out[r, r:] += e0[: w - r]
        return out
    return _wavefront(_residuals(std, predictor, half), predictor, half)


def _wavefront(d: np.ndarray, predictor: int, half: int) -> np.ndarray:
    """Predictors 6 and 7 (left, above, above-left dependencies): anti-diagonal by anti-diagonal.

    Pixel (r, c) depends on (r, c-1) and (r-1, c) of anti-diagonal k-1 and (r-1, c-1) of k-2. The
    pixels of anti-diagonal k = r + c sit at flat positions k + r*(W-1): one strided slice, and its
    neighbours are the same slice shifted by -1 (left), -W (above), -W-1 (above-left). The image
    is kept in uint16, so storing an int32 sum wraps modulo 2**16 as the codec does.
    """
    h, w = d.shape
    x = np.zeros(h * w, np.uint16)
    flat_d = d.reshape(-1)
    tmp = np.empty(min(h, w), np.int32)
    # row 0 (PVRG): first pixel predicted by half, then the predictor with Rb = Rc = half
    x[0] = (half + int(flat_d[0])) & 0xFFFF
    step = w - 1  # >= 1 whenever the slice branch runs (w == 1 has no interior pixels)
    for k in range(1, h + w - 1):
        r0 = max(0, k - w + 1)
        r1 = min(h - 1, k)
        lo = max(r0, 1)  # rows with a pixel on the left and one above
        hi = min(r1, k - 1)
        if hi >= lo:
            n = hi - lo + 1
            start = k + lo * step
            stop = start + n * step
            t = tmp[:n]
            if predictor == 7:  # (Ra + Rb) >> 1
                left, above = x[start - 1 : stop - 1 : step], x[start - w : stop - w : step]
                np.add(left, above, out=t, dtype=np.int32)  # in int32: no uint16 wrap
                t >>= 1
            else:  # 6: Rb + ((Ra - Rc) >> 1)
                np.subtract(
                    x[start - 1 : stop - 1 : step],
                    x[start - w - 1 : stop - w - 1 : step],
                    out=t,
                    dtype=np.int32,
                )
                t >>= 1
                t += x[start - w : stop - w : step]
            t += flat_d[start:stop:step]
            x[start:stop:step] = t  # int32 -> uint16: modulo 2**16
        if r0 == 0 and k < w:  # row 0, column k: PVRG's imaginary row above
            a = int(x[k - 1])
            p = (a + half) >> 1 if predictor == 7 else half + ((a - half) >> 1)
            x[k] = (p + int(flat_d[k])) & 0xFFFF
        if r1 == k and k < h:  # column 0, row k: predicted by the pixel above (T.81 and PVRG)
            x[k * w] = (int(x[(k - 1) * w]) + int(flat_d[k * w])) & 0xFFFF
    return x.reshape(h, w)


# --------------------------------------------------------------------------- row-0 splice
# The fast way to PVRG's image: PVRG and T.81 differ only in how row 0 is predicted, and the
# coded residuals of every later row are the same. So row 0's codes are decoded here (a few
# thousand symbols), PVRG's row 0 is rebuilt from them, re-coded with T.81's left-neighbour
# prediction in the file's own Huffman table, and spliced in front of the untouched codes of
# rows 1..H-1 (a bit shift of the rest of the stream). One standard decode of that stream *is*
# PVRG's image. When the table lacks a category the new row-0 residuals need, the re-integration
# above (exact too, slower) is used instead; ``meta["pvrg_method"]`` says which ran.


def _huffman_codes(table) -> tuple[dict[int, tuple[int, int]], np.ndarray, np.ndarray]:
    """({symbol: (code, length)}, 16-bit prefix -> length, 16-bit prefix -> symbol)."""
    counts, values = table
    codes: dict[int, tuple[int, int]] = {}
    lut_len = np.zeros(1 << 16, np.int8)
    lut_sym = np.zeros(1 << 16, np.int16)
    code = 0
    k = 0
    for length in range(1, 17):
        for _ in range(counts[length - 1]):
            sym = values[k]
            k += 1
            if code >= 1 << length:
                raise ValueError("invalid Huffman table (more codes than bits allow)")
            codes.setdefault(sym, (code, length))
            lo = code << (16 - length)
            hi = (code + 1) << (16 - length)
            lut_len[lo:hi] = length
            lut_sym[lo:hi] = sym
            code += 1
        code <<= 1
    return codes, lut_len, lut_sym


def _entropy_end(data: bytes, start: int) -> int:
    """Index of the first marker (0xFF not followed by 0x00 or RSTn) after ``start``."""
    a = np.frombuffer(data, np.uint8, offset=start)
    ff = np.flatnonzero(a[:-1] == 0xFF)
    nxt = a[ff + 1]
    real = ff[(nxt != 0x00) & ((nxt < 0xD0) | (nxt > 0xD7)) & (nxt != 0xFF)]
    if real.size == 0:
        return len(data)
    end = int(real[0])
    while end > 0 and a[end - 1] == 0xFF:  # fill bytes before the marker
        end -= 1
    return start + end


def _unstuff(seg: bytes) -> np.ndarray:
    """Entropy-coded bytes without the 0x00 stuffed after every 0xFF (markers already cut, so
    every 0xFF left is followed by its stuffed 0x00)."""
    a = np.frombuffer(seg, np.uint8)
    ff = np.flatnonzero(a[:-1] == 0xFF)
    return np.delete(a, ff + 1) if ff.size else a


def _stuff(u: np.ndarray) -> bytes:
    return u.tobytes().replace(b"\xff", b"\xff\x00")


def _decode_row0(u: np.ndarray, n: int, lut_len, lut_sym) -> tuple[list[int], int]:
    """The first ``n`` residuals of the unstuffed stream ``u`` and the bit position after them."""
    head = bytes(u[: min(u.size, n * 4 + 8)]) + b"\xff" * 8  # <= 32 bits per sample
    pos = 0
    out = []
    lens, syms = lut_len, lut_sym
    for _ in range(n):
        byte = pos >> 3
        peek = int.from_bytes(head[byte : byte + 5], "big") << (pos & 7)
        top = (peek >> 24) & 0xFFFF
        length = int(lens[top])
        if length == 0:
            raise ValueError("invalid Huffman code in the first row")
        ssss = int(syms[top])
        pos += length
        if ssss == 0:
            out.append(0)
        elif ssss == 16:
            out.append(32768)
        elif ssss > 16:
            raise ValueError(f"invalid difference category {ssss}")
        else:
            byte = pos >> 3
            peek = int.from_bytes(head[byte : byte + 5], "big") << (pos & 7)
            v = (peek >> (40 - ssss)) & ((1 << ssss) - 1)
            pos += ssss
            out.append(v if v >= 1 << (ssss - 1) else v - (1 << ssss) + 1)
        if pos > (len(head) - 8) * 8:
            raise ValueError("the stream ends inside the first row")
    return out, pos


def _pvrg_row0(diffs: list[int], predictor: int, half: int) -> list[int]:
    """PVRG's row 0 from its coded residuals (imaginary row above = ``half``)."""
    row = []
    prev = None
    for d in diffs:
        if prev is None:
            p = half
        elif predictor in (1, 4, 5):
            p = prev
        elif predictor in (2, 3):
            p = half
        elif predictor == 6:
            p = half + ((prev - half) >> 1)
        else:  # 7
            p = (prev + half) >> 1
        prev = (p + d) & 0xFFFF
        row.append(prev)
    return row


def _encode_bits(diffs: list[int], codes) -> str | None:
    """'0'/'1' text of ``diffs`` in the table's codes; None when a category has no code."""
    parts = []
    for d in diffs:
        d = ((d + 32767) & 0xFFFF) - 32767  # to -32767..32768
        ssss = 16 if d == 32768 else abs(d).bit_length()
        if ssss not in codes:
            return None
        code, length = codes[ssss]
        parts.append(format(code, f"0{length}b"))
        if 0 < ssss < 16:
            extra = d if d > 0 else d - 1
            parts.append(format(extra & ((1 << ssss) - 1), f"0{ssss}b"))
    return "".join(parts)


def spliced_stream(data: bytes, info: dict) -> tuple[bytes, list[int]] | None:
    """A standard T.81 stream whose plain decode is PVRG's image, and PVRG's row 0 (to check);
    None when the file's Huffman table cannot code the new row-0 residuals."""
    table = info.get("huffman_table")
    if table is None:
        return None
    codes, lut_len, lut_sym = _huffman_codes(table)
    start = info["scan_offset"]
    end = _entropy_end(data, start)
    u = _unstuff(data[start:end])
    w = info["width"]
    half = 1 << (info["precision"] - 1)
    diffs, bitpos = _decode_row0(u, w, lut_len, lut_sym)
    row0 = _pvrg_row0(diffs, info["predictor"], half)
    new = [row0[0] - half] + [row0[c] - row0[c - 1] for c in range(1, w)]
    bits = _encode_bits(new, codes)
    if bits is None:
        return None
    j, r = bitpos >> 3, bitpos & 7
    if j < u.size:  # the rest of the byte the first row ends in
        bits += format(int(u[j]), "08b")[r:]
        rest = u[j + 1 :]
    else:
        rest = u[:0]
    k = len(bits) % 8
    head_bytes = (
        int(bits[: len(bits) - k], 2).to_bytes((len(bits) - k) // 8, "big")
        if (len(bits) >= 8)
        else b""
    )
    tail = bits[len(bits) - k :]
    if k == 0:
        body = rest
    else:  # shift the rest of the stream right by k bits behind the k leftover bits
        a = rest
        pad = 0xFF >> k  # ones after the original padding
        body = np.empty(a.size + 1, np.uint8)
        body[0] = ((int(tail, 2) << (8 - k)) | (int(a[0]) >> k if a.size else pad)) & 0xFF
        if a.size:  # uint8 shifts drop the bits that leave the byte, as wanted
            np.left_shift(a[:-1], np.uint8(8 - k), out=body[1:-1])
            body[1:-1] |= a[1:] >> np.uint8(k)
            body[-1] = ((int(a[-1]) << (8 - k)) | pad) & 0xFF
        else:
            body = body[:1]
    entropy = np.concatenate([np.frombuffer(head_bytes, np.uint8), body])
    out = data[:start] + _stuff(entropy) + b"\xff\xd9"
    return out, row0


def decode_standard(data: bytes, path) -> np.ndarray:
    """A plain T.81 decode (imagecodecs' jpegsof3) in the SOF geometry; no PVRG correction."""
    try:
        import imagecodecs
    except ImportError:  # pragma: no cover - imagecodecs is a declared dependency
        raise ImageReadError(
            path, "reading .LJPEG needs the imagecodecs package (pip install imagecodecs)"
        ) from None
    try:
        out = imagecodecs.jpegsof3_decode(data)
    except Exception as exc:  # Jpegsof3Error on corrupt streams
        raise ImageReadError(path, f"cannot decode lossless JPEG data ({exc})") from None
    return np.asarray(out)


def _end_has_eoi(data: bytes) -> bool:
    tail = data[-64:].rstrip(b"\x00 \r\n\t")
    return tail.endswith(b"\xff\xd9")


def decode_ljpeg(data: bytes, path="<bytes>", *, method: str = "auto") -> tuple[np.ndarray, dict]:
    """(pixels uint16 in the SOF geometry, header info) of a PVRG lossless JPEG stream.

    ``method``: ``auto`` (the row-0 splice, else re-integration), ``splice`` or ``reintegrate``
    (both exact; for tests and benchmarks). ``info["pvrg_method"]`` says which ran.
    """
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ImageReadError(path, f"corrupt gzip data ({exc})") from None
        gz = True
    else:
        gz = False
    info = parse_header(data, path)
    info["gzipped"] = gz
    if not _end_has_eoi(data):
        raise ImageReadError(
            path, "truncated lossless JPEG: the data does not end with an EOI marker (0xFFD9)"
        )
    # The C decoder trusts the header: a damaged SOF claiming far more pixels than the data can
    # hold makes it read past its buffer (a crash, not an error). Every sample costs at least
    # the shortest Huffman code, so check that first.
    table = info.get("huffman_table")
    if table is None:
        raise ImageReadError(path, "lossless JPEG scan without its Huffman table (DHT)")
    shortest = next((n + 1 for n, c in enumerate(table[0]) if c), None)
    if shortest is None:
        raise ImageReadError(path, "empty Huffman table (DHT)")
    coded_bits = 8 * (len(data) - info["scan_offset"])
    if coded_bits < shortest * info["height"] * info["width"]:
        raise ImageReadError(
            path,
            f"the header says {info['height']} x {info['width']} pixels but the file holds only "
            f"{coded_bits:,} bits of coded data (at least {shortest} per pixel): truncated or a "
            "damaged header",
        )
    h, w = info["height"], info["width"]
    predictor = info["predictor"]
    row0 = None
    info["pvrg_method"] = "standard" if predictor in STANDARD_AGREES else None
    if method not in ("auto", "splice", "reintegrate"):
        raise ConfigError(f"method must be auto, splice or reintegrate; got {method!r}")
    original = data
    if predictor not in STANDARD_AGREES and method != "reintegrate":
        try:
            spliced = spliced_stream(data, info)
        except ValueError as exc:
            raise ImageReadError(
                path, f"corrupt lossless JPEG data in the first row ({exc})"
            ) from None
        if spliced is not None:
            data, row0 = spliced
            info["pvrg_method"] = "splice"
        elif method == "splice":
            raise ImageReadError(path, "the Huffman table cannot code the re-predicted first row")
    if info["pvrg_method"] is None and info["precision"] <= 8:
        # the decoder returns uint8 for P <= 8: the values a PVRG stream wraps to are lost, so
        # the residuals cannot be recovered from a standard decode.
        raise ImageReadError(
            path,
            f"{info['precision']}-bit lossless JPEG with predictor {predictor} whose Huffman "
            "table cannot code the re-predicted first row: not supported (DDSM files are 12- "
            "or 16-bit)",
        )
    std = decode_standard(data, path)
    if std.shape != (h, w):
        raise ImageReadError(path, f"decoded shape {std.shape} does not match the SOF {h} x {w}")
    if std.dtype != np.uint16:
        std = std.astype(np.uint16)
    if info["pvrg_method"] == "splice":
        if np.array_equal(std[0], np.asarray(row0, np.uint16)):
            return std, info
        # Never silently wrong: the spliced stream did not decode to the row it was built from.
        # Re-integration from the original stream is exact too; it is used and the reason logged.
        logger.warning(
            "%s: the re-coded first row did not decode as built; re-integrating instead", path
        )
        if method == "splice":
            raise ImageReadError(path, "the re-coded first row did not decode as built")
        std = decode_standard(original, path)
        if std.shape != (h, w):
            raise ImageReadError(path, f"decoded shape {std.shape} does not match the SOF")
        std = std.astype(np.uint16, copy=False)
        info["pvrg_method"] = "reintegrate (splice check failed)"
        return pvrg_from_standard(std, predictor, info["precision"]), info
    if info["pvrg_method"] is None:
        info["pvrg_method"] = "reintegrate"
    return pvrg_from_standard(std, predictor, info["precision"]), info


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
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ImageReadError(p, f"corrupt gzip data ({exc})") from None
        gz = True
    else:
        gz = False
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
