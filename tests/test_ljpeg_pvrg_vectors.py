"""Vectors written by the real PVRG codec (tests/data/ljpeg_pvrg, see its README): every one
decodes exactly to its source pixels, through both PVRG first-row methods, and a DDSM-style case
reads through its .ics (SOF swapped)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from ljpeg_vectors import encode

from featmammo.io import ljpeg as lj
from featmammo.io import read_image

DATA = Path(__file__).parent / "data" / "ljpeg_pvrg"
VECTORS = json.loads((DATA / "vectors.json").read_text())
FLAT = [e for e in VECTORS if "/" not in e["file"]]


def test_the_vectors_cover_predictors_and_depths():
    assert {(e["predictor"], e["precision"]) for e in FLAT} == {
        (k, p) for k in range(1, 8) for p in (8, 12, 16)
    }
    assert {e["file"] for e in VECTORS if "/" in e["file"]} == {
        "ddsm/A_0001_1.LEFT_CC.LJPEG",
        "ddsm/A_0001_1.RIGHT_MLO.LJPEG",
    }


@pytest.mark.parametrize("entry", FLAT, ids=[e["file"] for e in FLAT])
def test_pvrg_vector_decodes_exactly(entry):
    data = (DATA / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]  # the file the README describes
    src = np.load(DATA / entry["source"])
    out, info = lj.decode_ljpeg(data, entry["file"])
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, src)
    assert (info["predictor"], info["precision"]) == (entry["predictor"], entry["precision"])
    expected = "standard" if entry["predictor"] in (1, 4, 5) else "splice"
    if entry["file"].startswith("row0_"):
        expected = "reintegrate"  # PVRG's table lacks the categories a T.81 row 0 needs
    assert info["pvrg_method"] == expected
    again, info = lj.decode_ljpeg(data, entry["file"], method="reintegrate")
    np.testing.assert_array_equal(again, src)


@pytest.mark.parametrize("entry", FLAT, ids=[e["file"] for e in FLAT])
def test_the_test_encoder_writes_pvrg_bytes_given_pvrg_table(entry):
    """The project's own encoder (tests/ljpeg_vectors.py), given the table PVRG chose, writes
    the PVRG file byte for byte: its other vectors follow the real codec's rules."""
    data = (DATA / entry["file"]).read_bytes()
    src = np.load(DATA / entry["source"])
    table = lj.parse_header(data, entry["file"])["huffman_table"]
    assert encode(src, entry["predictor"], entry["precision"], table=table) == data


def test_ddsm_style_case_reads_through_the_ics():
    src12 = np.load(DATA / "src_12bit.npy")
    im = read_image(DATA / "ddsm" / "A_0001_1.LEFT_CC.LJPEG")
    np.testing.assert_array_equal(im.pixels, src12)
    m = im.meta
    assert m["sof_shape"] == (48, 40) and m["sof_swapped"] is True
    assert (m["predictor"], m["precision"], m["pvrg_method"]) == (7, 12, "splice")
    assert (m["laterality"], m["view"], m["patient_id"]) == ("L", "CC", "A-0001-1")
    im = read_image(DATA / "ddsm" / "A_0001_1.RIGHT_MLO.LJPEG")
    np.testing.assert_array_equal(im.pixels, np.load(DATA / "src_16bit.npy"))
    assert im.meta["sof_swapped"] is False and im.meta["bits_stored"] == 16
