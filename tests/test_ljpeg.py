"""DDSM .ics parsing, optical density, and the LJPEG reader (featmammo.io.ddsm / ljpeg)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from ljpeg_vectors import encode, phantom, residuals, write_case

from featmammo.errors import ConfigError, ImageReadError, ManifestError
from featmammo.io import ddsm, read_image
from featmammo.io import ljpeg as lj

ICS = """

ics_version 1.0
filename B-3024-1
DATE_OF_STUDY 2 7 1995
PATIENT_AGE 42
FILM
FILM_TYPE REGULAR
DENSITY 4
DATE_DIGITIZED 22 7 1997
DIGITIZER LUMISYS LASER<SP>
SELECTED
LEFT_CC LINES 4696 PIXELS_PER_LINE 3024 BITS_PER_PIXEL 12 RESOLUTION 50.0 OVERLAY<SP>
LEFT_MLO LINES 4688 PIXELS_PER_LINE 3048 BITS_PER_PIXEL 12 RESOLUTION 50 NON_OVERLAY
RIGHT_CC LINES 4624 PIXELS_PER_LINE 2912 BITS_PER_PIXEL 12 RESOLUTION 50 NON_OVERLAY
RIGHT_MLO LINES 4664 PIXELS_PER_LINE 3000 BITS_PER_PIXEL 12 RESOLUTION 50 NON_OVERLAY
""".replace("<SP>", "   ")  # real files carry trailing spaces


def test_read_ics_lenient(tmp_path):
    p = tmp_path / "B-3024-1.ics"
    p.write_text(ICS)
    info = ddsm.read_ics(p)
    assert info["filename"] == "B-3024-1"
    assert info["case"] == "B-3024-1" and info["institution"] == "B"
    assert info["patient_age"] == 42 and info["density"] == 4
    assert info["digitizer"] == "LUMISYS LASER"
    assert info["date_of_study"] == "2 7 1995" and info["sequence"] == "SELECTED"
    assert set(info["views"]) == set(ddsm.VIEW_NAMES)
    cc = info["views"]["LEFT_CC"]
    assert cc == {
        "lines": 4696,
        "pixels_per_line": 3024,
        "bits_per_pixel": 12,
        "resolution": 50.0,
        "overlay": True,
    }
    assert info["LEFT_CC"] is cc and info["views"]["LEFT_MLO"]["overlay"] is False
    gz = tmp_path / "gz" / "B-3024-1.ics.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(ICS.encode()))
    assert ddsm.read_ics(gz)["views"] == info["views"]


def test_read_ics_errors_name_file_and_line(tmp_path):
    p = tmp_path / "A-0001-1.ics"
    p.write_text("ics_version 1.0\nfilename A-0001-1\nDIGITIZER DBA 21\n")
    with pytest.raises(ManifestError, match="A-0001-1.ics.*no view lines"):
        ddsm.read_ics(p)
    p.write_text("filename A-0001-1\nLEFT_CC LINES abc PIXELS_PER_LINE 10\n")
    with pytest.raises(ManifestError, match=r"line 2: LINES is 'abc'"):
        ddsm.read_ics(p)
    p.write_text("filename A-0001-1\nLEFT_CC PIXELS_PER_LINE 10 BITS_PER_PIXEL 16\n")
    with pytest.raises(ManifestError, match="line 2: LEFT_CC has no valid LINES"):
        ddsm.read_ics(p)
    with pytest.raises(ManifestError, match="does not exist"):
        ddsm.read_ics(tmp_path / "missing.ics")


def test_ics_path_and_names(tmp_path):
    (tmp_path / "A-0002-1.ics").write_text(ICS)
    lj = tmp_path / "A_0002_1.LEFT_CC.LJPEG"
    assert ddsm.ics_path_for(lj) == tmp_path / "A-0002-1.ics"
    assert ddsm.ics_path_for(tmp_path / "A_0003_1.LEFT_CC.LJPEG") is None
    assert ddsm.view_of(lj) == "LEFT_CC" and ddsm.view_of("x.LJPEG") is None
    assert ddsm.institution_of(lj.name) == "A" and ddsm.case_of(lj.name) == "A-0002-1"


@pytest.mark.parametrize(
    "digitizer,inst,gl,od",
    [
        ("DBA 21", "A", 10000, (4.0 - 4.80662) / -1.07553),
        ("HOWTEK 1", "A", 1000, 3.789 - 0.94568),
        ("LUMISYS LASER", "B", 2000, (2000 - 4096.99) / -1009.01),
        ("LUMISYS LASER", None, 2000, (2000 - 4096.99) / -1009.01),
        ("HOWTEK 43.5", "D", 1000, 3.96604095240593 - 0.99055807612),
        ("HOWTEK_ISMD", None, 1000, 3.96604095240593 - 0.99055807612),
    ],
)
def test_optical_density_formulas(digitizer, inst, gl, od):
    out = ddsm.optical_density(np.array([[gl, gl]], np.uint16), digitizer, inst)
    assert out.dtype == np.float32 and out.shape == (1, 2)
    np.testing.assert_allclose(out, od, rtol=1e-5)


def test_optical_density_refuses_ambiguity():
    px = np.zeros((2, 2), np.uint16)
    with pytest.raises(ConfigError, match="HOWTEK scanners have two"):
        ddsm.optical_density(px, "HOWTEK 1")
    with pytest.raises(ConfigError, match="unknown DDSM digitiser"):
        ddsm.optical_density(px, "AGFA")
    with pytest.raises(ConfigError, match="DBA digitiser at institution D"):
        ddsm.optical_density(px, "DBA 21", "D")
    assert np.isfinite(ddsm.optical_density(px, "DBA 21")).all()  # GL 0 -> finite


# --------------------------------------------------------------------------- LJPEG reader


@pytest.mark.parametrize("precision", [12, 16])
@pytest.mark.parametrize("predictor", range(1, 8))
@pytest.mark.parametrize("swap", [False, True])
def test_ljpeg_vectors_decode_exactly(tmp_path, precision, predictor, swap):
    img = phantom(61, 47, precision, seed=predictor)
    paths = write_case(tmp_path, "B-3024-1", {"LEFT_MLO": (img, predictor, precision, swap)})
    im = read_image(paths["LEFT_MLO"])
    assert im.pixels.dtype == np.uint16 and im.pixels.shape == (61, 47)
    np.testing.assert_array_equal(im.pixels, img)
    m = im.meta
    assert m["format"] == "ljpeg" and m["decoder"] == lj.DECODER
    assert m["bits_stored"] == precision and im.max_value == 2**precision - 1
    assert m["predictor"] == predictor and m["sof_swapped"] is swap
    assert m["sof_shape"] == ((47, 61) if swap else (61, 47))
    assert (m["laterality"], m["view"], m["patient_id"]) == ("L", "MLO", "B-3024-1")
    assert m["digitizer"] == "LUMISYS LASER" and m["institution"] == "B"
    assert m["od_calibration"] == "LUMISYS_WFU" and m["lossy"] is False
    # the splice needs the file's table to code T.81's row 0 (else the exact re-integration)
    assert m["pvrg_method"] in (
        ("standard",) if predictor in (1, 4, 5) else ("splice", "reintegrate")
    )
    # the slower re-integration gives the same pixels
    data = paths["LEFT_MLO"].read_bytes()
    out, info = lj.decode_ljpeg(data, method="reintegrate")
    np.testing.assert_array_equal(out.reshape(img.shape), img)
    assert info["pvrg_method"] == ("standard" if predictor in (1, 4, 5) else "reintegrate")


def test_random_noise_wraps_modulo_2_16_and_category_16():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 65536, size=(23, 31)).astype(np.uint16)
    img[5, 3], img[5, 4] = 0, 32768  # residual 32768 (SSSS 16) with predictor 1
    for predictor in range(1, 8):
        d = residuals(img, predictor, 16)
        out, info = lj.decode_ljpeg(encode(img, predictor, 16))
        np.testing.assert_array_equal(out, img)
        assert info["predictor"] == predictor
        assert info["pvrg_method"] == ("standard" if predictor in (1, 4, 5) else "splice")
    assert (residuals(img, 1, 16) == 32768).any() and (np.abs(d) > 30000).any()


@pytest.mark.parametrize("predictor", [2, 3, 6, 7])
def test_plain_standard_decode_is_wrong_for_pvrg_files(predictor):
    """The PVRG first-row rule matters: a T.81 decoder gives wrong pixels, spreading down."""
    img = phantom(40, 50, 12, seed=1)
    data = encode(img, predictor, 12)
    standard = lj.decode_standard(data, "vector")
    wrong = standard != img
    assert wrong[1:].any()  # the error is not confined to the first row
    if predictor == 7:
        assert wrong.mean() > 0.2
    np.testing.assert_array_equal(lj.decode_ljpeg(data)[0], img)
    # and a stream written with the T.81 rule is not what PVRG's rule decodes: other pixels, or
    # values beyond the 12-bit precision (refused)
    try:
        other = lj.decode_ljpeg(encode(img, predictor, 12, first_row="standard"))[0]
    except ImageReadError as exc:
        assert "beyond the 12-bit precision" in exc.reason
    else:
        assert not np.array_equal(other, img)


@pytest.mark.parametrize("predictor", [1, 4, 5])
def test_predictors_where_both_rules_agree(predictor):
    img = phantom(20, 30, 16, seed=2)
    data = encode(img, predictor, 16)
    np.testing.assert_array_equal(lj.decode_standard(data, "v"), img)
    assert encode(img, predictor, 16, first_row="standard") == data


def test_ljpeg_gzipped_and_explicit_shape(tmp_path):
    img = phantom(30, 20, 12)
    paths = write_case(tmp_path, "C-0001-1", {"RIGHT_CC": (img, 7, 12, True)})
    lj_path = paths["RIGHT_CC"]
    gz = lj_path.with_name(lj_path.name + ".gz")
    gz.write_bytes(gzip.compress(lj_path.read_bytes()))
    lj_path.unlink()
    ics = tmp_path / "C-0001-1.ics"
    (tmp_path / "C-0001-1.ics.gz").write_bytes(gzip.compress(ics.read_bytes()))
    ics.unlink()
    im = read_image(gz)
    np.testing.assert_array_equal(im.pixels, img)
    assert im.meta["gzipped"] is True and im.meta["laterality"] == "R"
    alone = tmp_path / "alone" / "x.LJPEG"
    alone.parent.mkdir()
    alone.write_bytes(encode(img, 6, 12))
    np.testing.assert_array_equal(lj.read_ljpeg(alone, shape=(30, 20)).pixels, img)
    with pytest.raises(ImageReadError, match="no sibling .ics"):
        read_image(alone)


def test_ljpeg_windowing_and_max_pixels(tmp_path):
    img = phantom(30, 20, 12)
    p = write_case(tmp_path, "D-4164-1", {"LEFT_CC": (img, 7, 12, False)}, digitizer="HOWTEK 1")
    im = read_image(p["LEFT_CC"], windowing="percentile")
    assert im.pixels.dtype == np.float32 and im.max_value == 1.0
    assert read_image(p["LEFT_CC"]).meta["od_calibration"] == "HOWTEK_ISMD"
    with pytest.raises(ImageReadError, match="max_pixels"):
        read_image(p["LEFT_CC"], max_pixels=100)
    with pytest.raises(ImageReadError, match="needs DICOM"):
        read_image(p["LEFT_CC"], windowing="voi")


def _case(tmp_path, img=None, predictor=7, precision=12):
    img = phantom(24, 16, precision) if img is None else img
    return write_case(tmp_path, "A-0002-1", {"LEFT_CC": (img, predictor, precision, False)})[
        "LEFT_CC"
    ], img


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[:-2], "EOI"),
        (lambda b: b"garbage" + b, "not a JPEG stream"),
        (lambda b: b[:30], "truncated"),
        (lambda b: b.replace(b"\xff\xc3", b"\xff\xc0", 1), "baseline DCT"),
        (lambda b: gzip.compress(b)[:-10], "gzip"),
    ],
)
def test_corrupt_ljpeg_is_one_image_read_error(tmp_path, damage, match):
    p, _ = _case(tmp_path)
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(ImageReadError, match=match) as info:
        read_image(p)
    assert info.value.path == str(p)


def test_ljpeg_geometry_mismatch_and_header_limits(tmp_path):
    p, img = _case(tmp_path)
    ics = tmp_path / "A-0002-1.ics"
    ics.write_text(ics.read_text().replace("LINES 24", "LINES 25"))
    with pytest.raises(ImageReadError, match=r"holds 24 x 16 pixels but the .ics says LINES 25"):
        read_image(p)
    ics.write_text(ics.read_text().replace("LEFT_CC", "RIGHT_CC"))
    with pytest.raises(ImageReadError, match="no line for view LEFT_CC"):
        read_image(p)
    # an .ics cut inside the view's line (a truncated download: 16 may read as 1) says so
    text = ics.read_text().replace("RIGHT_CC", "LEFT_CC").rstrip()
    ics.write_text(text[: text.index("PIXELS_PER_LINE 16") + len("PIXELS_PER_LINE 1")])
    with pytest.raises(ImageReadError, match=r"unusable .ics: .*ends inside the LEFT_CC line"):
        read_image(p)
    p1, img1 = _case(tmp_path / "one", img=phantom(24, 16, 8), predictor=1, precision=8)
    np.testing.assert_array_equal(read_image(p1).pixels, img1)


def _row0_needs_a_missing_category(precision):
    """Row 0 alternates half -/+ half/2, every later row repeats it: with predictor 2, PVRG's
    residuals are +-half/2 (row 0) and 0, while T.81's row 0 needs +-half: a category the
    file's Huffman table does not have."""
    half = 1 << (precision - 1)
    row = np.where(np.arange(16) % 2, half + half // 2, half - half // 2).astype(np.uint16)
    return np.tile(row, (6, 1))


def test_table_without_the_needed_category_falls_back_to_reintegration():
    img = _row0_needs_a_missing_category(12)
    out, info = lj.decode_ljpeg(encode(img, 2, 12))
    assert info["pvrg_method"] == "reintegrate"
    np.testing.assert_array_equal(out, img)
    with pytest.raises(ImageReadError, match="cannot code the re-predicted first row"):
        lj.decode_ljpeg(encode(img, 2, 12), method="splice")
    # 8-bit: the splice when the table allows it, else re-integration of a decode with 16-bit
    # values (the C decoder keeps 8 bits for P <= 8: it decodes with the SOF saying P = 9)
    img8 = phantom(24, 16, 8)
    out8, info8 = lj.decode_ljpeg(encode(img8, 7, 8))
    assert info8["pvrg_method"] == "splice"
    np.testing.assert_array_equal(out8, img8)
    for bits in (8, 6, 2):
        img = _row0_needs_a_missing_category(bits)
        for predictor in (2, 3, 6, 7):
            out, info = lj.decode_ljpeg(encode(img, predictor, bits), method="reintegrate")
            np.testing.assert_array_equal(out, img)
        out, info = lj.decode_ljpeg(encode(img, 2, bits))
        assert info["pvrg_method"] == "reintegrate"
        np.testing.assert_array_equal(out, img)


def test_a_failed_splice_check_is_logged_and_reintegrated(monkeypatch, caplog):
    img = phantom(20, 30, 12, seed=4)
    data = encode(img, 7, 12)
    real = lj.spliced_stream

    def wrong_row(data, info, *unstuffed):
        stream, row0 = real(data, info, *unstuffed)
        return stream, [(v + 1) & 0xFFFF for v in row0]

    monkeypatch.setattr(lj, "spliced_stream", wrong_row)
    with caplog.at_level("WARNING"):
        out, info = lj.decode_ljpeg(data, "vector")
    np.testing.assert_array_equal(out, img)
    assert info["pvrg_method"] == "reintegrate (splice check failed)"
    assert "re-integrated instead" in caplog.text


def test_splice_bit_alignments_and_tiny_shapes():
    """Every bit alignment of the spliced first row (many widths), 1-row and 1-column images."""
    rng = np.random.default_rng(7)
    methods = []
    for w in range(1, 14):
        for h in (1, 2, 5):
            img = rng.integers(0, 4096, size=(h, w)).astype(np.uint16)
            for predictor in (2, 3, 6, 7):
                out, info = lj.decode_ljpeg(encode(img, predictor, 12))
                np.testing.assert_array_equal(out, img, err_msg=f"{h}x{w} p{predictor}")
                methods.append(info["pvrg_method"])
    assert methods.count("splice") > 50  # tiny tables often lack a category: then re-integration


def test_header_claiming_more_pixels_than_the_data_holds_is_an_error_not_a_crash():
    """A damaged SOF size made imagecodecs' C decoder read past its buffer (a segfault found by
    fuzzing): the coded data is checked against the header first."""
    data = bytearray(encode(phantom(24, 16, 12), 7, 12))
    sof = data.index(b"\xff\xc3")
    data[sof + 5 : sof + 7] = (31768).to_bytes(2, "big")  # height 24 -> 31768
    with pytest.raises(ImageReadError, match=r"31768 x 16 pixels but the file holds only"):
        lj.decode_ljpeg(bytes(data), "vector")
    no_table = encode(phantom(8, 8, 12), 7, 12).replace(b"\xff\xc4", b"\xff\xfe", 1)  # DHT -> COM
    with pytest.raises(ImageReadError, match="without its Huffman table"):
        lj.decode_ljpeg(no_table, "vector")
