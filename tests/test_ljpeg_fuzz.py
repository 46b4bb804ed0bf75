"""Fuzzing the LJPEG reader with damaged files (tests/ljpeg_fuzz.py): truncations, inserted and
deleted byte runs, flipped bits, replaced bytes, inflated/deflated/swapped SOF sizes (the same as
a matching damaged .ics) and header damage, over the real PVRG codec's vectors and the project
encoder's, predictors 1-7 at 8, 12 and 16 bits. Each case runs in a worker subprocess whose
return code is checked: no case may crash, raise anything but ImageReadError, or decode to pixels
the file does not encode exactly. A fast sample runs by default; 10,350 cases in the slow test
(``python -m pytest -m slow tests/test_ljpeg_fuzz.py``; figures: benchmarks/ljpeg_fuzz.py)."""

from __future__ import annotations

import numpy as np
import pytest
from ljpeg_fuzz import BAD, KINDS, Base, bases, is_exact_encoding, outcome, run, tally

N_BASES = 46  # 25 PVRG vectors + 21 of the project encoder


def _check(results, n):
    t = tally(results)
    assert t["cases"] == n
    assert not t["bad"], t["bad"]  # no WRONG pixels, other exceptions, signals or exits
    assert t["predictors"] == list(range(1, 8))
    assert {r["precision"] for r in results} == {8, 12, 16}
    assert {r["kind"] for r in results} == set(KINDS)
    assert {r["base"].split(":")[0] for r in results} == {"pvrg", "own"}
    assert t["outcomes"]["error"] > 0.6 * n
    return t


def test_fuzz_sample_every_base_and_kind_once():
    assert len(bases()) == N_BASES
    n = N_BASES * len(KINDS)
    t = _check(run(20261206, n), n)
    for kind in ("truncate", "truncate_eoi"):  # cut data is always refused
        assert t["by_kind"].get(f"{kind}/error") == N_BASES, t["by_kind"]


@pytest.mark.slow
def test_fuzz_ten_thousand_damaged_files():
    n = 25 * N_BASES * len(KINDS)  # 10,350
    t = _check(run(17, n), n)
    for kind in ("truncate", "truncate_eoi", "insert", "delete"):  # never OK with other pixels
        assert f"{kind}/WRONG" not in t["by_kind"]
    print(t["outcomes"], t["by_kind"])


def test_the_harness_sees_crashes_and_wrong_pixels(monkeypatch):
    """The harness is not blind: a worker killed by SIGSEGV is reported for the case it was on
    (and the run goes on after it), and pixels the file does not encode are WRONG."""
    results = run(5, 12, env={"LJPEG_FUZZ_CRASH_AT": "4"})
    assert [r["i"] for r in results] == list(range(12))
    assert [r["outcome"] for r in results if r["outcome"] in BAD] == ["signal"]
    assert results[4]["outcome"] == "signal"
    base = bases()[0]
    from featmammo.io import ljpeg

    def off_by_one(data, path="<bytes>", **kw):
        px = base.pixels.copy()
        px[0, 0] ^= 1
        return px, {}

    monkeypatch.setattr(ljpeg, "decode_ljpeg", off_by_one)
    assert outcome(base, base.data)[0] == "WRONG"
    assert is_exact_encoding(base.data, base.pixels)


def test_valid_means_exactly_encoded():
    """A flipped extra bit turns the file into a valid encoding of other pixels: decoded, and
    classified "valid" only because the file is that image's encoding bit for bit."""
    from ljpeg_vectors import encode, phantom

    from featmammo.io.ljpeg import decode_ljpeg

    img = phantom(20, 16, 16, seed=2)
    data = encode(img, 1, 16)
    base = Base("t", data, img, 1, 16)
    start = data.index(b"\xff\xda") + 10
    found = 0
    for k in range(start, len(data) - 2):
        for bit in range(8):
            d = bytearray(data)
            d[k] ^= 1 << bit
            result, _ = outcome(base, bytes(d))
            assert result in ("error", "valid", "same"), result
            if result == "valid":
                found += 1
                px, _ = decode_ljpeg(bytes(d))
                assert not np.array_equal(px, img) and is_exact_encoding(bytes(d), px)
        if found >= 3:
            break
    assert found >= 3
