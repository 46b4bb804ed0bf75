"""Lossless JPEG syntax for :mod:`featmammo.io.ljpeg`: the SOF3/DHT/SOS header, Huffman tables
(codes and 16-bit lookup tables), the end of the entropy-coded segment and byte (un)stuffing.

The header is parsed strictly enough that the C decoder (imagecodecs' jpegsof3) can only ever see
the same frame, table and scan start as this parser: it uses the first Huffman table of the file
whatever the scan selects and overruns its arrays on a table of more than 17 codes, so exactly one
table of at most 17 codes (categories 0..16, each once, a valid prefix code) is accepted, and a
second SOI inside the header (which it would read as a segment length) is refused."""

from __future__ import annotations

import struct

import numpy as np

from featmammo.errors import ImageReadError

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
    n_tables = 0
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
        if marker == 0xD8:
            raise ImageReadError(path, "corrupt lossless JPEG header: a second SOI marker")
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
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
            info.update(precision=p, height=h, width=w, sof_offset=i + 2)
        elif marker == 0xC4:
            j = 0
            while j + 17 <= len(seg):
                tc_th = seg[j]
                counts = list(seg[j + 1 : j + 17])
                values = bytes(seg[j + 17 : j + 17 + sum(counts)])
                if len(values) < sum(counts):
                    raise ImageReadError(path, "corrupt Huffman table (DHT) segment")
                _check_table(counts, values, path)
                n_tables += 1
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
            info["sos_al_offset"] = i + 7  # the Ah/Al byte
            info["huffman_table"] = tables.get(seg[2] >> 4)
            info["huffman_tables"] = n_tables
            return info
        i += length


def _check_table(counts: list[int], values: bytes, path) -> None:
    """A lossless Huffman table: at most 17 codes for the categories 0..16, each once, and no
    more codes of any length than the bits allow (the C decoder trusts all of this)."""
    total = sum(counts)
    if total == 0:
        raise ImageReadError(path, "empty Huffman table (DHT)")
    if total > 17:
        raise ImageReadError(
            path, f"corrupt Huffman table (DHT): {total} codes, a lossless table has at most 17"
        )
    if max(values) > 16 or len(set(values)) != len(values):
        raise ImageReadError(
            path,
            "corrupt Huffman table (DHT): difference categories must be 0..16, each listed once",
        )
    room = 1
    for count in counts:  # codes left at each length (Kraft inequality)
        room = 2 * room - count
        if room < 0:
            raise ImageReadError(path, "corrupt Huffman table (DHT): more codes than bits allow")


def entropy_segment_end(data: bytes, start: int, path) -> int:
    """End (exclusive) of the entropy-coded segment that starts at ``start``.

    The segment runs to the first 0xFF that is not a stuffed 0xFF 0x00; that marker (after any
    0xFF fill bytes) must be EOI, and only NUL or white-space bytes may follow it. Anything else
    (a restart or other marker inside the data, a missing EOI, data after the EOI) is an
    ImageReadError naming what was found.
    """
    a = np.frombuffer(data, np.uint8, offset=start)
    ff = np.flatnonzero(a[:-1] == 0xFF)
    real = ff[a[ff + 1] != 0x00]
    if real.size == 0:
        raise ImageReadError(
            path, "truncated lossless JPEG: the coded data does not end with an EOI marker (0xFFD9)"
        )
    end = int(real[0])
    k = end
    while k + 1 < a.size and a[k + 1] == 0xFF:  # fill bytes before the marker
        k += 1
    marker = int(a[k + 1]) if k + 1 < a.size else None
    if marker != 0xD9:
        what = "the end of the file" if marker is None else f"marker 0xFF{marker:02X}"
        raise ImageReadError(
            path,
            f"corrupt lossless JPEG: {what} at byte {start + k:,} inside the coded data (the "
            "coded data must run to one EOI marker, 0xFFD9)",
        )
    rest = bytes(a[k + 2 :])
    if rest.strip(b"\x00 \t\r\n"):
        raise ImageReadError(
            path,
            f"corrupt lossless JPEG: {len(rest):,} bytes of other data after the first EOI marker "
            f"(byte {start + k + 1:,})",
        )
    return start + end


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
