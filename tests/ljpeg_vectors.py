"""A small lossless-JPEG (SOF3) encoder that writes DDSM-style ``.LJPEG`` test vectors.

No PVRG program is needed: the residuals are computed with the first-row rule chosen
(``"pvrg"``: after the first pixel, the scan's predictor with an imaginary row above filled with
2**(P-1); ``"standard"``: ITU T.81, left neighbour for the whole first row) and written as a
standard SOF3 stream (one component, one Huffman table built from the residual statistics, no
restart markers, byte stuffing). ``swap=True`` writes the SOF with width/height exchanged and the
pixel stream in that geometry, as many DDSM files are.

Used by tests/test_ljpeg.py and benchmarks/read_decode.py; vectorised with numpy so a full-size
4600 x 3000 vector takes a few seconds.
"""

from __future__ import annotations

import heapq
import struct

import numpy as np


def _predict(a, b, c, predictor: int):
    """T.81 Table H.1 predictions on int64 arrays (Ra, Rb, Rc)."""
    if predictor == 1:
        return a
    if predictor == 2:
        return b
    if predictor == 3:
        return c
    if predictor == 4:
        return a + b - c
    if predictor == 5:
        return a + ((b - c) >> 1)
    if predictor == 6:
        return b + ((a - c) >> 1)
    if predictor == 7:
        return (a + b) >> 1
    raise ValueError(predictor)


def residuals(img: np.ndarray, predictor: int, precision: int, first_row: str = "pvrg"):
    """Signed residuals in [-32767, 32768] (T.81 H.1.2.1, modulo 2**16) of ``img`` (H, W)."""
    x = img.astype(np.int64)
    half = 1 << (precision - 1)
    pred = np.empty_like(x)
    pred[0, 0] = half
    if first_row == "pvrg":
        row0 = x[0, :-1]
        pred[0, 1:] = _predict(row0, np.full_like(row0, half), np.full_like(row0, half), predictor)
    elif first_row == "standard":
        pred[0, 1:] = x[0, :-1]
    else:
        raise ValueError(first_row)
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = _predict(x[1:, :-1], x[:-1, 1:], x[:-1, :-1], predictor)
    d = (x - pred) & 0xFFFF
    d[d > 32768] -= 65536
    return d


def _huffman_lengths(freqs: dict[int, int]) -> dict[int, int]:
    """Code lengths (<= 16) for the used categories; one codepoint stays reserved (no all-ones)."""
    items = [(f, i, (s,)) for i, (s, f) in enumerate(sorted(freqs.items()))]
    items.append((0, -1, (-1,)))  # the reserved dummy: deepest leaf, dropped afterwards
    heapq.heapify(items)
    depth = {s: 0 for _, _, syms in items for s in syms}
    counter = len(items)
    while len(items) > 1:
        f1, _, s1 = heapq.heappop(items)
        f2, _, s2 = heapq.heappop(items)
        for s in s1 + s2:
            depth[s] += 1
        heapq.heappush(items, (f1 + f2, counter, s1 + s2))
        counter += 1
    depth.pop(-1)
    if max(depth.values()) > 16:  # pathological statistics: flat 5-bit code (17 categories fit)
        depth = {s: 5 for s in freqs}
    return depth


def _canonical(lengths: dict[int, int]):
    """(BITS[16], HUFFVAL, {symbol: (code, length)}) as T.81 Annex C."""
    order = sorted(lengths, key=lambda s: (lengths[s], s))
    bits = [0] * 16
    for s in order:
        bits[lengths[s] - 1] += 1
    codes = {}
    code = 0
    prev = lengths[order[0]]
    for s in order:
        code <<= lengths[s] - prev
        prev = lengths[s]
        codes[s] = (code, lengths[s])
        code += 1
    return bits, order, codes


def _bits(values: np.ndarray, nbits: np.ndarray) -> np.ndarray:
    """MSB-first bits (uint8 0/1) of (value, length) pairs, concatenated, no padding."""
    n = nbits.astype(np.int64)
    total = int(n.sum())
    owner = np.repeat(np.arange(values.size), n)
    k = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    shift = (n[owner] - 1 - k).astype(np.uint64)
    return ((values[owner] >> shift) & np.uint64(1)).astype(np.uint8)


def _pack(values: np.ndarray, nbits: np.ndarray) -> bytes:
    """MSB-first bit packing of (value, length) pairs, padded with 1s, 0xFF stuffed."""
    chunks = []
    carry_bits = np.zeros(0, np.uint8)
    step = 1 << 20
    for start in range(0, values.size, step):
        bits = np.concatenate(
            [carry_bits, _bits(values[start : start + step], nbits[start : start + step])]
        )
        whole = bits.size - bits.size % 8
        chunks.append(np.packbits(bits[:whole]))
        carry_bits = bits[whole:]
    if carry_bits.size:
        pad = np.ones(8 - carry_bits.size, np.uint8)
        chunks.append(np.packbits(np.concatenate([carry_bits, pad])))
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    stuffed = np.repeat(data, 1 + (data == 0xFF))
    ff = np.flatnonzero(data == 0xFF)
    stuffed[ff + np.arange(1, ff.size + 1)] = 0  # the byte after each 0xFF
    return stuffed.tobytes()


def _table_codes(bits, huffval) -> dict[int, tuple[int, int]]:
    """{symbol: (code, length)} of a DHT table (BITS[16], HUFFVAL), canonical (T.81 Annex C)."""
    codes = {}
    code = 0
    k = 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes.setdefault(int(huffval[k]), (code, length))
            k += 1
            code += 1
        code <<= 1
    return codes


def code_words(img, predictor: int, precision: int, first_row: str = "pvrg", table=None):
    """(values uint64, lengths, BITS, HUFFVAL) of every sample's code and extra bits; the table
    is built from the residual statistics unless ``table`` = (BITS, HUFFVAL) is given. A
    residual whose category the given table lacks raises KeyError."""
    d = residuals(img, predictor, precision, first_row).ravel()
    mag = np.abs(d)
    ssss = np.zeros(d.shape, np.int64)
    nz = mag > 0
    ssss[nz] = np.floor(np.log2(mag[nz])).astype(np.int64) + 1
    ssss[d == 32768] = 16
    if table is None:
        freqs = {int(s): int(c) for s, c in enumerate(np.bincount(ssss, minlength=17)) if c}
        bits, huffval, codes = _canonical(_huffman_lengths(freqs))
    else:
        bits, huffval = list(table[0]), list(table[1])
        codes = _table_codes(bits, huffval)
        missing = set(np.unique(ssss).tolist()) - set(codes)
        if missing:
            raise KeyError(f"the table has no code for categories {sorted(missing)}")
    code_of = np.zeros(17, np.uint64)
    len_of = np.zeros(17, np.int64)
    for s, (c, n) in codes.items():
        code_of[s], len_of[s] = c, n
    extra = np.where(d >= 0, d, d - 1) & ((1 << ssss) - 1)  # T.81 F.1.2.1 (negatives: d - 1)
    extra_len = np.where(ssss == 16, 0, ssss)
    values = (code_of[ssss] << extra_len.astype(np.uint64)) | extra.astype(np.uint64)
    values[ssss == 16] = code_of[16]
    return values, len_of[ssss] + extra_len, bits, huffval


def coded_bits(img, predictor: int, precision: int, table) -> np.ndarray:
    """The entropy-coded bits (uint8 0/1, unstuffed, no padding) of ``img`` in ``table``."""
    values, nbits, _, _ = code_words(img, predictor, precision, table=table)
    return _bits(values, nbits)


def encode(
    img: np.ndarray,
    predictor: int,
    precision: int,
    *,
    first_row: str = "pvrg",
    swap: bool = False,
    table=None,
) -> bytes:
    """A lossless JPEG (SOF3) stream of ``img`` (uint16 (H, W)); DDSM-style for ``"pvrg"``.

    ``swap=True``: the SOF says height=W, width=H and the stream holds the same row-major pixel
    sequence in that geometry (reshape, never transpose), as in many DDSM files. ``table``:
    (BITS, HUFFVAL) to use instead of the optimal table for the image.
    """
    img = np.asarray(img)
    if img.ndim != 2 or not 2 <= precision <= 16 or not 1 <= predictor <= 7:
        raise ValueError("bad vector parameters")
    if img.size and int(img.max()) >= 1 << precision:
        raise ValueError("pixel values exceed the precision")
    h, w = img.shape
    coded = img.reshape(w, h) if swap else img
    values, nbits, bits, huffval = code_words(coded, predictor, precision, first_row, table)
    body = _pack(values, nbits)
    sof_h, sof_w = coded.shape
    out = bytearray(b"\xff\xd8")
    out += b"\xff\xc3" + struct.pack(">HBHHB", 11, precision, sof_h, sof_w, 1) + b"\x01\x11\x00"
    dht = bytes([0x00]) + bytes(bits) + bytes(huffval)
    out += b"\xff\xc4" + struct.pack(">H", 2 + len(dht)) + dht
    out += b"\xff\xda" + struct.pack(">HB", 8, 1) + bytes([1, 0x00, predictor, 0, 0])
    out += body
    out += b"\xff\xd9"
    return bytes(out)


def phantom(h: int, w: int, precision: int, seed: int = 0) -> np.ndarray:
    """A smooth breast-like image with noise and a few hard edges, values within ``precision``."""
    rng = np.random.default_rng(seed)
    top = (1 << precision) - 1
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((yy - h / 2) / (0.55 * h), xx / (0.9 * w))
    base = np.clip(1.0 - r, 0, 1) ** 0.5 * 0.7 + 0.1
    img = base * top + rng.normal(0, top * 0.01, size=(h, w))
    img[h // 3 : h // 3 + max(1, h // 20), w // 4 : w // 2] = top  # a hard bright block
    img[:, : max(1, w // 50)] = 0  # a black border
    return np.clip(np.rint(img), 0, top).astype(np.uint16)


def write_case(
    folder,
    case: str,
    views: dict[str, tuple[np.ndarray, int, int, bool]],
    *,
    digitizer: str = "LUMISYS LASER",
) -> dict:
    """Write ``<case>.ics`` and one ``.LJPEG`` per view: {view: (img, predictor, precision, swap)}.

    ``case`` is the .ics spelling (``B-3024-1``). Returns {view: ljpeg path}.
    """
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "ics_version 1.0",
        f"filename {case}",
        "DATE_OF_STUDY 2 7 1995",
        "PATIENT_AGE 60",
        "DENSITY 2",
        "DATE_DIGITIZED 22 7 1997",
        f"DIGITIZER {digitizer}",
        "SELECTED",
    ]
    paths = {}
    stem = case.replace("-", "_")
    for view, (img, predictor, precision, swap) in views.items():
        h, w = img.shape
        lines.append(
            f"{view} LINES {h} PIXELS_PER_LINE {w} BITS_PER_PIXEL {precision} "
            "RESOLUTION 50 NON_OVERLAY"
        )
        p = folder / f"{stem}.{view}.LJPEG"
        p.write_bytes(encode(img, predictor, precision, swap=swap))
        paths[view] = p
    (folder / f"{case}.ics").write_text("\n".join(lines) + "\n")
    return paths
