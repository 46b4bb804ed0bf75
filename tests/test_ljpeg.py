"""DDSM .ics parsing, optical density, and the LJPEG reader (featmammo.io.ddsm / ljpeg)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from featmammo.errors import ConfigError, ManifestError
from featmammo.io import ddsm

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
