"""What makes :mod:`featmammo.io.ljpeg` safe and exact on damaged files.

imagecodecs' C decoder (jpegsof3) trusts the header: it decodes SOF height x width samples and
reads past the end of its buffer when the coded data holds fewer (a wrong image, or SIGSEGV,
which kills a DataLoader worker and the run). No bound on the coded bits from the header alone
is sound (a sample can cost 1 bit), so the reader does three things:

1. **Before decoding**, cheap necessary conditions: the coded data holds at least the shortest
   code per sample and at most the longest code plus its extra bits per sample
   (:func:`check_size`).
2. **No crash**: the stream handed to the C decoder is followed by zero bytes
   (:func:`padded_for_c`). In all-zero bits the decoder reads the table's first code (all zeros)
   and its extra bits, a fixed number of bits ``c0`` per sample, so however damaged the data,
   ``H*W*c0 + 31`` bits of zeros (31: the most one sample can take, started in the real data)
   plus its 3-byte look-ahead keep every read inside the buffer.
3. **After decoding, exactness** (:func:`verify_coded`): the PVRG residuals of the decoded image
   are encoded again with the file's own table, vectorised, and compared bit for bit with the
   file's entropy-coded segment; every sample must match and the last one must end in the last
   byte of the segment (at most 7 padding bits left). So the file *is* the encoding of the image
   returned: any decoder following PVRG's rules reads the same pixels from it, whatever the C
   decoder did internally. A mismatch is an ImageReadError naming the sample (row, column) and
   byte where the data stops matching, a segment that ends too early, or coded data left over.

What cannot be caught: lossless JPEG has no checksum, so damage that turns the segment into
another valid encoding of exactly H x W samples (typically a flipped bit inside a residual's
extra bits) is a different valid image; no reader can tell. Damage no decoder reads (padding
bits after the last sample, bytes inside COM/APPn segments, NUL bytes after EOI) is invisible:
the pixels are the same.
"""

from __future__ import annotations

import functools

import numpy as np

from featmammo.errors import ImageReadError

_U64 = np.uint64
_BLOCK = 1 << 18  # samples per verification block (fits the L2 cache)


@functools.lru_cache(maxsize=32)
def _code_tables(counts: tuple[int, ...], values: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(bits, word) per residual modulo 2**16: the number of bits its code and extra bits take
    (0 when the table has no code for its category) and their value, as written by T.81/PVRG."""
    u = np.arange(1 << 16, dtype=np.int64)
    d = np.where(u > 32768, u - 65536, u)  # the residual, -32767..32768
    mag = np.abs(d)
    ssss = np.zeros(u.size, np.int64)
    nz = mag > 0
    ssss[nz] = np.floor(np.log2(mag[nz])).astype(np.int64) + 1
    ssss[u == 32768] = 16
    bits = np.zeros(u.size, np.uint8)
    word = np.zeros(u.size, np.uint64)
    code = 0
    k = 0
    for length in range(1, 17):  # canonical codes, T.81 Annex C
        for _ in range(counts[length - 1]):
            sym = values[k]
            k += 1
            sel = ssss == sym
            extra = sym if sym < 16 else 0
            low = np.where(d[sel] >= 0, d[sel], d[sel] - 1) & ((1 << extra) - 1)
            bits[sel] = length + extra
            word[sel] = (code << extra) | low
            code += 1
        code <<= 1
    return bits, word


def _tables(info: dict) -> tuple[np.ndarray, np.ndarray]:
    counts, values = info["huffman_table"]
    return _code_tables(tuple(counts), bytes(values))


def _extra_bits(category: int) -> int:
    return category if category < 16 else 0


def check_size(info: dict, coded_bytes: int, path) -> None:
    """Before decoding: the entropy-coded segment (``coded_bytes`` after unstuffing) can hold
    the SOF's height x width samples at all (shortest and longest code per sample)."""
    counts, values = info["huffman_table"]
    lengths = [n + 1 for n, c in enumerate(counts) for _ in range(c)]
    shortest = lengths[0]
    longest = max(n + _extra_bits(v) for n, v in zip(lengths, values, strict=True))
    h, w = info["height"], info["width"]
    bits = 8 * coded_bytes
    if bits < shortest * h * w:
        raise ImageReadError(
            path,
            f"the header says {h} x {w} pixels but the file holds only {bits:,} bits of coded "
            f"data (at least {shortest} per pixel): truncated or a damaged header",
        )
    if bits > longest * h * w + 7:
        raise ImageReadError(
            path,
            f"the header says {h} x {w} pixels but the file holds {bits:,} bits of coded data, "
            f"more than {h * w:,} pixels can take (at most {longest} bits each): a damaged "
            "header or data",
        )


def padded_for_c(stream: bytes, info: dict) -> bytes:
    """``stream`` followed by enough zero bytes that the C decoder cannot read past the buffer
    however damaged the data is (see the module docstring)."""
    counts, values = info["huffman_table"]
    first_length = next(n + 1 for n, c in enumerate(counts) if c)
    c0 = first_length + _extra_bits(values[0])
    pad_bits = info["height"] * info["width"] * c0 + 31
    return stream + bytes((pad_bits + 7) // 8 + 8)


def residuals_u16(
    x: np.ndarray, predictor: int, precision: int, first_row: str = "pvrg", rows=None
) -> np.ndarray:
    """The coded residuals (uint16, modulo 2**16) of image ``x`` for rows ``rows`` (a slice;
    all by default), row-major: pixel minus prediction (T.81 Table H.1). ``first_row``:
    ``"pvrg"`` (after the first pixel, the predictor with an imaginary row above of 2**(P-1))
    or ``"standard"`` (T.81: the left neighbour)."""
    h, w = x.shape
    r0, r1, _ = (rows or slice(0, h)).indices(h)
    half = 1 << (precision - 1)
    top = max(r0 - 1, 0)
    xs = x[top:r1]
    pred = np.empty((r1 - top, w), np.uint16)
    if r0 == 0:
        pred[0, 0] = half
        if w > 1:
            a = x[0, :-1]
            if first_row == "standard" or predictor in (1, 4, 5):
                pred[0, 1:] = a
            elif predictor in (2, 3):
                pred[0, 1:] = half
            elif predictor == 6:  # Rb + ((Ra - Rc) >> 1), Rb = Rc = half
                pred[0, 1:] = half + ((a.astype(np.int32) - half) >> 1)
            else:  # 7: (Ra + Rb) >> 1
                pred[0, 1:] = (a.astype(np.int32) + half) >> 1
    if r1 - top > 1:
        pred[1:, 0] = xs[:-1, 0]  # first column: the pixel above
        if w > 1:
            a, b, c = xs[1:, :-1], xs[:-1, 1:], xs[:-1, :-1]
            out = pred[1:, 1:]
            if predictor == 1:
                out[...] = a
            elif predictor == 2:
                out[...] = b
            elif predictor == 3:
                out[...] = c
            elif predictor == 4:  # Ra + Rb - Rc, modulo 2**16 like the residual
                np.add(a, b, out=out)
                out -= c
            elif predictor == 5:  # Ra + ((Rb - Rc) >> 1)
                t = np.subtract(b, c, dtype=np.int32)
                t >>= 1
                t += a
                out[...] = t
            elif predictor == 6:  # Rb + ((Ra - Rc) >> 1)
                t = np.subtract(a, c, dtype=np.int32)
                t >>= 1
                t += b
                out[...] = t
            else:  # 7: (Ra + Rb) >> 1
                t = np.add(a, b, dtype=np.int32)
                t >>= 1
                out[...] = t
    rows_out = pred[r0 - top :]
    np.subtract(x[r0:r1], rows_out, out=rows_out)  # uint16: modulo 2**16
    return rows_out.reshape(-1)


def _words(unstuffed: np.ndarray) -> np.ndarray:
    """64-bit big-endian windows of the bit stream starting at every 32-bit boundary."""
    n = unstuffed.size
    buf = np.zeros((n + 3) // 4 * 4 + 8, np.uint8)
    buf[:n] = unstuffed
    w32 = buf.view(">u4").astype(_U64)
    return (w32[:-1] << _U64(32)) | w32[1:]


def verify_coded(x: np.ndarray, info: dict, unstuffed: np.ndarray, path) -> None:
    """After decoding: the unstuffed entropy-coded segment is, bit for bit, the encoding of the
    PVRG residuals of ``x`` (SOF geometry) in the file's table, up to its last byte; otherwise
    an ImageReadError saying where it stops matching. Nothing about how ``x`` was obtained is
    trusted (the C decoder, the row-0 splice, re-integration)."""
    h, w = x.shape
    predictor, precision = info["predictor"], info["precision"]
    nbits, words = _tables(info)
    total = 8 * unstuffed.size
    windows = _words(unstuffed)
    rows_per_block = max(1, _BLOCK // max(w, 1))
    # bit positions in int32 while they fit (half the memory traffic of int64)
    pos_type = np.int32 if total + 32 * _BLOCK < 2**31 else np.int64
    pos = 0  # bits used by the samples before this block
    for r0 in range(0, h, rows_per_block):
        u = residuals_u16(x, predictor, precision, rows=slice(r0, r0 + rows_per_block))
        u = u.astype(np.intp)  # once, for the two table look-ups
        n = nbits[u]
        end = np.cumsum(n, dtype=pos_type)
        end += pos
        over = int(np.searchsorted(end, total, side="right"))  # samples that fit
        missing = np.flatnonzero(n[:over] == 0) if not n.min() else ()  # category without code
        n = n[:over]
        start = end[:over] - n
        got = windows[start >> 5]
        got <<= (start & 31).astype(np.uint8)
        got >>= 64 - n
        bad = np.flatnonzero(got != words[u[:over]])
        if len(missing):
            bad = np.union1d(bad, missing)
        if bad.size or over < u.size:
            i = int(bad[0]) if bad.size else over
            flat = r0 * w + i
            where = f"pixel {flat:,} of {h * w:,} (row {flat // w}, column {flat % w} of the SOF)"
            if bad.size:
                raise ImageReadError(
                    path,
                    f"corrupt lossless JPEG data: the coded data stops decoding consistently at "
                    f"{where}, scan byte ~{int(start[i]) // 8:,}: damaged data or a damaged header",
                )
            raise ImageReadError(
                path,
                f"truncated lossless JPEG data: the coded data ends at {where}; the file was cut "
                "short or its header claims more pixels than it holds",
            )
        pos = int(end[-1])
    left = total - pos
    if left >= 8:
        raise ImageReadError(
            path,
            f"corrupt lossless JPEG data: {left // 8:,} bytes of coded data are left after the "
            f"last of the {h} x {w} pixels: the header claims fewer pixels than the file holds, "
            "or the data is damaged",
        )
