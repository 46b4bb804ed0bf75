"""PVRG's first-row prediction for :mod:`featmammo.io.ljpeg`: re-integration of a standard T.81
decode (:func:`pvrg_from_standard`) and the row-0 splice (:func:`spliced_stream`)."""

from __future__ import annotations

import numpy as np

from .ljpeg_markers import _entropy_end, _huffman_codes, _stuff, _unstuff
from .ljpeg_verify import residuals_u16

STANDARD_AGREES = frozenset({1, 4, 5})  # predictors whose first-row prediction is PVRG's too


def _residuals(std: np.ndarray, predictor: int, half: int) -> np.ndarray:
    """The coded residuals (uint16, modulo 2**16) of a standard T.81 decode ``std``: the pixel
    minus its T.81 prediction from the decoded neighbours."""
    precision = half.bit_length()
    return residuals_u16(std, predictor, precision, first_row="standard").reshape(std.shape)


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


def spliced_stream(
    data: bytes, info: dict, unstuffed: np.ndarray | None = None
) -> tuple[bytes, list[int]] | None:
    """A standard T.81 stream whose plain decode is PVRG's image, and PVRG's row 0 (to check);
    None when the file's Huffman table cannot code the new row-0 residuals. ``unstuffed``: the
    scan's entropy-coded bytes without stuffing, when the caller has them already."""
    table = info.get("huffman_table")
    if table is None:
        return None
    codes, lut_len, lut_sym = _huffman_codes(table)
    start = info["scan_offset"]
    if unstuffed is None:
        unstuffed = _unstuff(data[start : _entropy_end(data, start)])
    u = unstuffed
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
