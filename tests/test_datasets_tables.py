"""Source tables as downloads damage them (issue 17): rows cut short are listed (or a manifest
error naming the line), never padded; a last line cut inside its last cell is listed; the
INbreast .xls read from a BIFF file written by an independent writer (xlwt); RSNA implants and
.dcm/.png copies; exam_id; numeric extra columns; merge's same-films notes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from pandas.api.types import is_string_dtype
from PIL import Image as PILImage
from test_datasets_sets import (
    CMMD_CSV,
    INBREAST_CSV,
    RSNA_CSV,
    VINDR_CSV,
    _cmmd,
    _inbreast,
    _mias,
    _rsna,
    _vindr,
    _write,
)

from featmammo.datasets.cmmd import build_cmmd
from featmammo.datasets.inbreast import build_inbreast
from featmammo.datasets.manifest import read_csv_strings, read_manifest, write_manifest
from featmammo.datasets.merge import merge_manifests
from featmammo.datasets.mias import build_mias
from featmammo.datasets.rsna import build_rsna
from featmammo.datasets.vindr import build_vindr
from featmammo.errors import ManifestError

DATA = Path(__file__).resolve().parent / "data"


# --------------------------------------------------------------------------------------------
# rows cut short
# --------------------------------------------------------------------------------------------
def test_vindr_rows_cut_short_are_listed_not_padded(tmp_path):
    """A row cut before its split cell used to keep split '' and one cut inside the density cell
    ('DENSITY B' -> 'D') density D: both are listed with the file and line instead."""
    lines = VINDR_CSV.splitlines()
    lines[4] = "s2,se2,i4,L,CC,3518,2800,BI-RADS 3,D"  # cut inside 'DENSITY B'
    lines[2] = "s1,se1,i2,L,MLO,3518,2800,BI-RADS 1,DENSITY C"  # cut before the split
    df, summary = build_vindr(_vindr(tmp_path / "v", "\n".join(lines) + "\n"))
    assert set(df["image_id"]) == {"i1", "i3"}
    cut = {u["image_id"]: u for u in summary["unresolved_rows"] if "cut short" in u["reason"]}
    assert set(cut) == {"i2", "i4"}
    assert cut["i4"]["where"].endswith("breast-level_annotations.csv: line 5")
    assert cut["i4"]["reason"].startswith("row has 9 of 10 fields: cut short")
    assert "D" not in set(df["density"]) and "" not in set(df["split"])


def test_a_last_line_cut_inside_its_last_cell_is_listed(tmp_path):
    """'training' cut to 'trai' on a last line without a line break: listed, the build goes on;
    the same value on a complete line stops with the file and line, as any unknown split."""
    text = VINDR_CSV.rstrip("\n").replace("BI-RADS 2,DENSITY B,test", "BI-RADS 2,DENSITY B,tes")
    root = _vindr(tmp_path / "v", text)
    (root / "images" / "s2" / "i5.dicom").write_bytes((root / "images/s2/i4.dicom").read_bytes())
    df, summary = build_vindr(root)
    assert "i5" not in set(df["image_id"]) and len(df) == 4
    (u,) = summary["unresolved_rows"]
    assert u["image_id"] == "i5" and "unknown split 'tes'" in u["reason"]
    assert "without a line break: cut short?" in u["reason"]
    assert any("has no line break" in n for n in summary["notes"])
    _write(root / "breast-level_annotations.csv", text + "\n")
    with pytest.raises(ManifestError, match=r"line 6: unknown split 'tes'"):
        build_vindr(root)


def test_a_listed_short_last_line_leaves_the_row_before_it_complete(tmp_path):
    """A file cut inside its last line, few enough fields that the line is listed as cut short:
    the row before it ended with a line break, so its own bad value still stops with its line
    (it used to be listed as 'cut short?'), and no note names it as the unterminated line."""
    lines = VINDR_CSV.splitlines()
    lines[4] = lines[4].replace(",L,CC,", ",X,CC,")  # line 5: a real error on a complete line
    text = "\n".join(lines[:5]) + "\n" + lines[5][:20]  # line 6 cut after its height
    root = _vindr(tmp_path / "v", text)
    with pytest.raises(ManifestError, match=r"line 5: unknown laterality 'X'"):
        build_vindr(root)
    _write(root / "breast-level_annotations.csv", text.replace(",X,CC,", ",L,CC,"))
    df, summary = build_vindr(root)
    assert len(df) == 4
    (u,) = summary["unresolved_rows"]
    assert u["where"].endswith("line 6") and u["reason"].startswith("row has 7 of 10 fields")
    assert not any("has no line break" in n for n in summary["notes"])


def test_a_file_ending_inside_a_quoted_cell_is_cut_short(tmp_path):
    p = _write(tmp_path / "t.csv", 'a,b,c\n1,2,3\n4,5,"tra')
    with pytest.raises(ManifestError, match=r"t.csv: 1 row\(s\) cut short.*line 3: the file ends"):
        read_csv_strings(p)
    df, lines = read_csv_strings(p, short_rows="list")
    assert lines == [2] and df["c"].tolist() == ["3"]
    assert df.attrs["short_rows"][0]["line"] == 3
    # a complete quoted cell spanning lines is not cut
    df, _ = read_csv_strings(_write(tmp_path / "ok.csv", 'a,b,c\n1,2,"x\ny"'))
    assert df["c"].tolist() == ["x\ny"]


def test_a_manifest_row_cut_short_is_an_error_naming_the_line(tmp_path):
    PILImage.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    _write(tmp_path / "m.csv", "path,label,patient_id,split\na.png,benign,p1,train\na.png,normal\n")
    with pytest.raises(ManifestError, match=r"m.csv: 1 row\(s\) cut short.*line 3: row has 2 of 4"):
        read_manifest(tmp_path / "m.csv")
    # trailing empty unnamed columns (spreadsheet exports) still read: a row short only by them
    _write(tmp_path / "x.csv", "path,label,,\na.png,benign\n")
    assert read_manifest(tmp_path / "x.csv")["label"].tolist() == ["benign"]


def test_rsna_cmmd_inbreast_rows_cut_short_are_listed(tmp_path):
    rsna = _rsna(tmp_path / "r", RSNA_CSV + "2,10006,1459541791,L\n")
    _, summary = build_rsna(rsna)
    assert any(
        u["image_id"] == "1459541791" and "cut short" in u["reason"] and "line 6" in u["where"]
        for u in summary["unresolved_rows"]
    )
    cmmd = _cmmd(
        tmp_path / "c", CMMD_CSV.replace("D1-0001,R,44,2,calcification,Benign,", "D1-0001,R,44")
    )
    df, summary = build_cmmd(cmmd)
    assert not df["patient_id"].eq("D1-0001").any()
    reasons = [u["reason"] for u in summary["unresolved_rows"]]
    assert any("row has 3 of 7 fields" in r for r in reasons)
    assert any("its row at" in r and "cut short (not assumed normal)" in r for r in reasons)
    inb = _inbreast(tmp_path / "i", INBREAST_CSV.replace("201001;22678622;4;1", "201001;226786"))
    df, summary = build_inbreast(inb)
    assert "22678622" not in set(df["image_id"])
    assert any(u["image_id"] == "226786" for u in summary["unresolved_rows"])


# --------------------------------------------------------------------------------------------
# INbreast .xls written by an independent BIFF writer
# --------------------------------------------------------------------------------------------
def test_a_source_table_exported_in_windows_1252_is_read(tmp_path):
    """A ';' CSV export of INbreast.xls from a European Excel is Windows-1252 text (its
    'Findings Notes (in Portuguese)' column has accents): read, with a note, instead of a stop."""
    head, *rows = INBREAST_CSV.splitlines()
    notes = {2: "microcalcificações"}  # the 4c row
    text = "\n".join(
        [head + ";Findings Notes (in Portuguese)"]
        + [r + ";" + notes.get(k, "") for k, r in enumerate(rows, start=1)]
    )
    root = _inbreast(tmp_path / "i")
    (root / "INbreast.csv").write_bytes(text.replace("\n", "\r\n").encode("cp1252"))
    df, summary = build_inbreast(root)
    assert len(df) == 3 and df.set_index("image_id").loc["22678646", "birads"] == "4c"
    assert any("Windows-1252" in n for n in summary["notes"])
    # manifests stay UTF-8 only (featmammo writes them)
    bad = tmp_path / "m.csv"
    bad.write_bytes("image_id,path,label\nção,a.png,normal\n".encode("cp1252"))
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_csv_strings(bad)


def test_inbreast_xls_fixture(tmp_path):
    """tests/data/inbreast/INbreast.xls was written by xlwt (generate.py beside it): number
    cells for File Name/ACR/date, 1 vs '4c' for Bi-Rads, trailing totals rows."""
    pytest.importorskip("xlrd")
    root = _inbreast(tmp_path / "inb")
    (root / "INbreast.csv").unlink()
    shutil.copy(DATA / "inbreast" / "INbreast.xls", root / "INbreast.xls")
    df, summary = build_inbreast(root)
    by = df.set_index("image_id")
    assert list(df["image_id"]) == ["22678622", "22678646", "20586908"]  # no '.0' from floats
    assert by.loc["22678646", "birads"] == "4c" and by.loc["22678646", "label"] == "malignant"
    assert by.loc["22678622", "density"] == "4" and by.loc["20586908", "label"] == "benign"
    assert by.loc["22678646", "exam_id"] == f"{by.loc['22678646', 'patient_id']}:201001"
    assert summary["unresolved"] == 1  # 20586934 has no DICOM
    assert summary["unresolved_rows"][0]["where"].endswith("INbreast.xls: line 5")
    (skipped,) = summary["skipped_rows"]  # the totals row; the blank one is not listed
    assert skipped["where"].endswith("line 7")


# --------------------------------------------------------------------------------------------
# RSNA: implants, .dcm and .png copies
# --------------------------------------------------------------------------------------------
def test_rsna_implants_counted_and_excludable(tmp_path):
    root = _rsna(tmp_path / "r", RSNA_CSV.replace("61.0,0,1,0,0,0,,29", "61.0,0,1,0,0,1,,29"))
    df, summary = build_rsna(root)
    assert summary["implants"] == {"images": 1, "patients": 1} and len(df) == 3
    assert any(
        "1 image(s) of 1 patient(s) show breast implants (kept" in n for n in summary["notes"]
    )
    assert set(df["exam_id"]) == {"10006"}
    df, summary = build_rsna(root, exclude_implants=True)
    assert "1459541791" not in set(df["image_id"]) and len(df) == 2
    assert summary["excluded"][0]["reason"] == "breast implant (excluded)"
    res = CliRunner().invoke(
        __import__("featmammo.cli.manifest", fromlist=["command"]).command,
        ["rsna", str(root), "-o", str(tmp_path / "r.csv"), "--exclude-implants"],
    )
    assert res.exit_code == 0 and "implants   1 image(s) of 1 patient(s) left out" in res.output
    bad = _rsna(tmp_path / "b", RSNA_CSV.replace("61.0,0,1,0,0,0,,29", "61.0,0,1,0,0,yes,,29"))
    with pytest.raises(ManifestError, match=r"train.csv: line 3: implant is 'yes'"):
        build_rsna(bad)


def test_rsna_dcm_and_png_copies_choose_by_a_rule_and_say_so(tmp_path):
    root = _rsna(tmp_path / "r")
    png_dir = root / "train_images_png" / "10006"
    png_dir.mkdir(parents=True)
    for iid in ("462822612", "1864590858"):
        PILImage.fromarray(np.zeros((4, 4), np.uint8)).save(png_dir / f"{iid}.png")
    # a PNG sorting before the .dcm folder: the rule, not the walk order, decides
    (root / "a_png" / "10006").mkdir(parents=True)
    PILImage.fromarray(np.zeros((4, 4), np.uint8)).save(root / "a_png/10006/1459541791.png")
    df, summary = build_rsna(root)
    assert all(p.endswith(".dcm") for p in df["path"])
    assert summary["duplicate_copies"] == {"dcm+png": 3} and summary["formats"] == {"dcm": 3}
    assert any(
        "the original was used by the rule .dcm > .dicom > .png" in n for n in summary["notes"]
    )
    shutil.rmtree(root / "train_images")
    df, summary = build_rsna(root)
    assert all(p.endswith(".png") for p in df["path"]) and summary["formats"] == {"png": 3}
    assert any("PNG re-encodings" in n for n in summary["notes"])


# --------------------------------------------------------------------------------------------
# exam_id, numeric columns, merge
# --------------------------------------------------------------------------------------------
def test_exam_id_in_every_builder_that_has_exams(tmp_path):
    assert set(build_vindr(_vindr(tmp_path / "v"))[0]["exam_id"]) == {"s1", "s2"}
    assert (
        build_mias(_mias(tmp_path / "m"))[0].set_index("image_id").loc["mdb002", "exam_id"]
        == "mdb001-002"
    )
    df, _ = build_cmmd(_cmmd(tmp_path / "c"))
    assert (df["exam_id"] == df["patient_id"]).all()
    df, _ = build_inbreast(_inbreast(tmp_path / "i"))
    assert set(df["exam_id"]) == {f"{p}:201001" for p in df["patient_id"]}


def test_numeric_extra_columns_get_numeric_dtypes(tmp_path):
    """read_manifest: required, path and id columns stay text; an extra column of plain numbers
    is Int64 (whole) or float64, empty cells missing; ids with leading zeros stay text."""
    PILImage.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    frame = pd.DataFrame(
        {
            "path": ["a.png"] * 3,
            "label": ["benign", "normal", "malignant"],
            "image_id": ["1", "2", "3"],
            "patient_id": ["0012", "0013", "0014"],
            "x": ["535", "", "-2"],
            "resolution": ["50.0", "43.5", "1e-3"],
            "study_id": ["7", "8", "9"],
            "code": ["0012", "3", "4"],
            "birads": ["4c", "1", "2"],
            "roi_mask_path": ["", "", ""],
        }
    )
    frame.to_csv(tmp_path / "m.csv", index=False)
    df = read_manifest(tmp_path / "m.csv")
    assert df["x"].dtype == "Int64" and df["x"].tolist()[0] == 535 and pd.isna(df["x"][1])
    assert df["resolution"].dtype == np.float64 and df["resolution"].tolist() == [50.0, 43.5, 0.001]
    for col in ("image_id", "patient_id", "study_id", "code", "birads", "roi_mask_path", "label"):
        assert is_string_dtype(df[col]), col
    assert df["patient_id"].tolist()[0] == "0012"
    assert all(
        is_string_dtype(c) for _, c in read_manifest(tmp_path / "m.csv", numeric=False).items()
    )
    # written back, the numbers read as they were
    write_manifest(df, tmp_path / "again.csv")
    assert read_manifest(tmp_path / "again.csv")["x"].tolist()[::2] == [535, -2]


def test_merge_notes_same_films_for_the_patch_set(tmp_path):
    frames = {}
    for source in ("ddsm-patches", "cbis-ddsm"):
        PILImage.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / f"{source}.png")
        frames[source] = pd.DataFrame(
            {
                "path": [f"{source}.png"],
                "label": ["benign"],
                "image_id": [source],
                "source": [source],
            }  # fmt: skip
        )
        frames[source].to_csv(tmp_path / f"{source}.csv", index=False)
    _, summary = merge_manifests([tmp_path / "ddsm-patches.csv", tmp_path / "cbis-ddsm.csv"])
    assert any("cbis-ddsm and ddsm-patches come from the same films" in n for n in summary["notes"])


def test_vindr_and_rsna_summaries_tell_about_windowing(tmp_path):
    from featmammo.datasets.base import WINDOWING_NOTE

    assert "--windowing auto" in WINDOWING_NOTE and "--windowing none" in WINDOWING_NOTE
    assert WINDOWING_NOTE in build_vindr(_vindr(tmp_path / "v"))[1]["notes"]
    assert WINDOWING_NOTE in build_rsna(_rsna(tmp_path / "r"))[1]["notes"]
