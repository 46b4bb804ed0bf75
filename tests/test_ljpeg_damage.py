"""Damaged DDSM LJPEGs (issue 17): the reader verifies the coded data against the header before
decoding and the decoded image against every bit of the coded data after it; nothing crashes
the process. The fuzz harness is tests/ljpeg_fuzz.py (a fast sample here and in
test_ljpeg_fuzz.py, 10,000+ cases in the slow test)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from ljpeg_vectors import encode, phantom

from featmammo.errors import ImageReadError
from featmammo.io import ljpeg as lj
from featmammo.io import read_image

# PVRG's optimised table for a half-black, half-noisy 16-bit image: a 1-bit code for category 0
PVRG_TABLE_16 = ([1] * 14 + [0, 3], [0, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 16])


def _half_black(h, w, bits, black=0.55, seed=0):
    """Half black (category 0: PVRG gives it a 1-bit code), half noise: many bits per pixel."""
    img = np.random.default_rng(seed).integers(0, 1 << bits, (h, w)).astype(np.uint16)
    img[:, : int(w * black)] = 0
    return img


def _with_sof(data: bytes, h: int, w: int) -> bytes:
    d = bytearray(data)
    sof = d.index(b"\xff\xc3")
    d[sof + 5 : sof + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    return bytes(d)


def _case(tmp_path, data, lines, cols, bits=12):
    ics = f"filename A-0001-1\nDIGITIZER DBA 21\nLEFT_CC LINES {lines} PIXELS_PER_LINE {cols}"
    (tmp_path / "A-0001-1.ics").write_text(f"{ics} BITS_PER_PIXEL {bits}\n")
    p = tmp_path / "A_0001_1.LEFT_CC.LJPEG"
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("factor", [2, 3, 5])
@pytest.mark.parametrize("side", ["height", "width"])
def test_inflated_sof_and_ics_are_an_error_not_other_pixels(tmp_path, factor, side):
    """The issue's case: a 1-bit code lets 3x the pixels pass the old coded-bits bound; the C
    decoder then read past the data and returned other pixels as if all were well."""
    img = _half_black(60, 40, 12)
    data = encode(img, 7, 12)
    assert lj.parse_header(data, "v")["huffman_table"][0][0] == 1  # a 1-bit code
    h, w = (60 * factor, 40) if side == "height" else (60, 40 * factor)
    assert 8 * len(data) > h * w  # the old bound (1 bit per pixel) let it through
    p = _case(tmp_path, _with_sof(data, h, w), h, w)
    with pytest.raises(ImageReadError, match=r"truncated lossless JPEG data: the coded data ends"):
        read_image(p)
    np.testing.assert_array_equal(read_image(_case(tmp_path, data, 60, 40)).pixels, img)


def test_cut_and_re_terminated_file_is_truncated(tmp_path):
    """A file cut to 30 % of its coded data and given a new EOI decoded without an error."""
    img = _half_black(60, 40, 12)
    data = encode(img, 7, 12)
    start = lj.parse_header(data, "v")["scan_offset"]
    cut = data[: start + int(0.3 * (len(data) - 2 - start))].rstrip(b"\xff") + b"\xff\xd9"
    with pytest.raises(ImageReadError, match=r"truncated lossless JPEG data: the coded data ends"):
        read_image(_case(tmp_path, cut, 60, 40))


def test_sof_claiming_fewer_pixels_leaves_data_over():
    img = phantom(30, 20, 12)
    data = _with_sof(encode(img, 7, 12), 15, 20)
    with pytest.raises(ImageReadError, match=r"bytes of coded data are left after the last"):
        lj.decode_ljpeg(data, "v")


def test_damage_that_breaks_the_code_names_the_pixel():
    img = phantom(40, 30, 12, seed=3)
    data = bytearray(encode(img, 1, 12))
    start = lj.parse_header(bytes(data), "v")["scan_offset"]
    outcomes = set()
    for k in range(40):  # some replaced bytes leave a valid stream (no checksum): see the fuzz
        d = bytearray(data)
        i = start + 20 + 7 * k
        d[i] = (d[i] + 0x55) & 0xFF if d[i + 1] != 0 else d[i]
        try:
            out, _ = lj.decode_ljpeg(bytes(d), "v")
            outcomes.add("ok")
        except ImageReadError as exc:
            outcomes.add(exc.reason.split(":")[0])
            if "stops decoding consistently" in exc.reason:
                assert "row " in exc.reason and "scan byte" in exc.reason
    assert "corrupt lossless JPEG data" in outcomes


def test_the_decode_is_checked_against_every_bit(monkeypatch):
    """Whatever the C decoder returns, only the image the coded data encodes is accepted."""
    img = phantom(24, 16, 12)
    data = encode(img, 7, 12)
    real = lj._c_decode

    def off_by_one(stream, info, path):
        out = real(stream, info, path)
        out[10, 5] += 1
        return out

    monkeypatch.setattr(lj, "_c_decode", off_by_one)
    with pytest.raises(ImageReadError, match=r"row 10, column 5 of the SOF"):
        lj.decode_ljpeg(data, "v")
    # the check itself: the intact image passes, any single changed pixel does not
    info = lj.parse_header(data, "v")
    start = info["scan_offset"]
    coded = lj._unstuff(data[start : lj.entropy_segment_end(data, start, "v")])
    lj.verify_coded(img, info, coded, "v")
    rng = np.random.default_rng(0)
    for _ in range(20):
        bad = img.copy()
        r, c = rng.integers(0, 24), rng.integers(0, 16)
        bad[r, c] ^= 1 << int(rng.integers(0, 12))
        with pytest.raises(ImageReadError, match="corrupt lossless JPEG data"):
            lj.verify_coded(bad, info, coded, "v")


CHILD = textwrap.dedent(
    """
    import sys
    from featmammo.errors import ImageReadError
    from featmammo.io.ljpeg import decode_ljpeg
    try:
        decode_ljpeg(open(sys.argv[1], "rb").read(), sys.argv[1])
    except ImageReadError as exc:
        print("ImageReadError", exc.reason)
    else:
        print("decoded")
    """
)


def test_header_claiming_far_more_pixels_cannot_crash_the_process(tmp_path):
    """8x and 6x the width of a 16-bit file with a 1-bit code: the C decoder read megabytes past
    its buffer and the process died by SIGSEGV (a DataLoader worker, and the run). Decoded in
    fresh processes (a crash depends on what lies after the buffer)."""
    img = _half_black(1000, 1000, 16, black=0.52)
    data = encode(img, 7, 16, table=PVRG_TABLE_16)
    assert 8 * len(data) > 8 * img.size  # 8.7 bits per pixel: the old bound let 8x through
    for factor in (8, 6):
        p = tmp_path / f"x{factor}.LJPEG"
        p.write_bytes(_with_sof(data, 1000, 1000 * factor))
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(p)], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, (factor, proc.returncode, proc.stderr[-500:])
        assert proc.stdout.startswith("ImageReadError"), proc.stdout
        assert "the coded data ends at pixel 1,000,000" in proc.stdout


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda d, s: d[: s + 5] + b"\xff\xd0" + d[s + 5 :], r"marker 0xFFD0 at byte"),
        (lambda d, s: d + b"trailing junk", r"bytes of other data after the first EOI"),
        (lambda d, s: d[:-2] + b"\xff\xd9\xff\xd9", r"bytes of other data after the first EOI"),
        (lambda d, s: d[:-2], r"does not end with an EOI marker"),
        (lambda d, s: d[:-2] + b"\xff\xc4", r"marker 0xFFC4 at byte"),
        (lambda d, s: d[:2] + b"\xff\xd8" + d[2:], r"a second SOI marker"),
    ],
)
def test_marker_structure_around_the_coded_data(damage, match):
    data = encode(phantom(20, 16, 12), 7, 12)
    start = lj.parse_header(data, "v")["scan_offset"]
    with pytest.raises(ImageReadError, match=match):
        lj.decode_ljpeg(damage(data, start), "v")


def _dht(counts, values, tc_th=0x00):
    body = bytes([tc_th]) + bytes(counts) + bytes(values)
    return b"\xff\xc4" + (2 + len(body)).to_bytes(2, "big") + body


@pytest.mark.parametrize(
    "table,match",
    [
        # the C decoder sums the counts in a byte and overruns its 32-entry arrays
        (([0] * 15 + [255], bytes(255)), r"255 codes, a lossless table has at most 17"),
        (([3] + [0] * 15, bytes([0, 1, 2])), r"more codes than bits allow"),
        (([0, 2] + [0] * 14, bytes([0, 17])), r"categories must be 0..16"),
        (([0, 2] + [0] * 14, bytes([3, 3])), r"each listed once"),
        (([0] * 16, b""), r"empty Huffman table"),
    ],
)
def test_huffman_tables_the_c_decoder_cannot_take_are_refused(table, match):
    data = encode(phantom(8, 8, 12), 7, 12)
    dht = data.index(b"\xff\xc4")
    end = dht + 2 + int.from_bytes(data[dht + 2 : dht + 4], "big")
    bad = data[:dht] + _dht(*table) + data[end:]
    with pytest.raises(ImageReadError, match=match):
        lj.decode_ljpeg(bad, "v")
    with pytest.raises(ImageReadError, match=match):
        lj.decode_standard(bad, "v")


def test_a_second_table_is_refused():
    """The C decoder uses the first table it meets, whatever the scan selects."""
    data = encode(phantom(8, 8, 12), 7, 12)
    dht = data.index(b"\xff\xc4")
    extra = _dht([0, 2] + [0] * 14, bytes([0, 1]), tc_th=0x01)
    with pytest.raises(ImageReadError, match="2 Huffman tables; a DDSM file has one"):
        lj.decode_ljpeg(data[:dht] + extra + data[dht:], "v")


def test_invisible_damage_keeps_the_pixels():
    """Bytes no decoder reads: the padding bits after the last code, a COM segment's content,
    the SOF's component id, sampling factors and table selector, NUL or white space after the
    EOI. Damage there is invisible: same pixels (the fuzz counts these outcomes as "same")."""
    from featmammo.io import ljpeg_verify

    img = phantom(20, 24, 12, seed=5)
    data = encode(img, 7, 12)
    info = lj.parse_header(data, "v")
    start = info["scan_offset"]
    used = sum(
        int(n) for n in ljpeg_verify._tables(info)[0][lj.residuals_u16(img, 7, 12)]
    )  # bits of the codes: the rest of the last byte is padding
    coded_bits = 8 * lj._unstuff(data[start:-2]).size
    pad = coded_bits - used
    assert 0 < pad < 8
    sof = data.index(b"\xff\xc3")
    variants = []
    for bit in range(pad):  # the last coded byte is not 0xFF here, so no stuffing moves
        d = bytearray(data)
        assert d[-3] != 0xFF and d[-4] != 0xFF
        d[-3] ^= 1 << bit
        variants.append(bytes(d))
    for k in (sof + 10, sof + 11, sof + 12):  # component id, sampling factors, Tq
        d = bytearray(data)
        d[k] ^= 0x5A
        variants.append(bytes(d))
    com = b"\xff\xfe\x00\x08" + np.random.default_rng(1).bytes(6)
    variants.append(data[:2] + com + data[2:])
    variants.append(data + b"\x00" * 700 + b"\r\n")
    for d in variants:
        out, _ = lj.decode_ljpeg(d, "v")
        np.testing.assert_array_equal(out, img)


def test_values_beyond_the_header_precision_are_refused():
    """A valid code stream whose values the SOF precision cannot hold (here a 16-bit stream
    relabelled 12-bit: every value moves by 2**15 - 2**11) is damaged data."""
    img = phantom(20, 16, 12, seed=1)
    data = bytearray(encode(img, 1, 16))
    data[data.index(b"\xff\xc3") + 4] = 12
    with pytest.raises(ImageReadError, match=r"decoded values reach \d+, beyond the 12-bit"):
        lj.decode_ljpeg(bytes(data), "v")
