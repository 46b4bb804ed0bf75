"""Manifest builders of mini-MIAS, INbreast, VinDr-Mammo, RSNA, CMMD and merge, on tiny trees
written here (formats as DATASETS.md describes them): labels, patients, splits, unresolved rows,
bad tables named by file and line, and the CLI's three files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from featmammo.datasets.base import parse_birads_map
from featmammo.datasets.cmmd import build_cmmd
from featmammo.datasets.inbreast import build_inbreast
from featmammo.datasets.manifest import read_manifest
from featmammo.datasets.merge import merge_manifests
from featmammo.datasets.mias import build_mias
from featmammo.datasets.rsna import build_rsna
from featmammo.datasets.vindr import build_vindr
from featmammo.errors import ConfigError, ManifestError


def _dicom(path, **tags):
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = 8, 6
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.arange(48, dtype=np.uint16).tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# mini-MIAS
# --------------------------------------------------------------------------------------------
MIAS_INFO = """Mini-MIAS database: reference table
REFNUM BG CLASS SEVERITY X Y RADIUS

mdb001 G CIRC B 535 425 197
mdb002 G CIRC B 522 280 69
mdb003 D NORM
mdb004 D NORM
mdb005 F CALC B 477 133 30
mdb005 F CALC M 500 168 26
mdb006 F NORM
* notes: mdb059 has no coordinates
"""


def _mias(
    root, info=MIAS_INFO, films=("mdb001", "mdb002", "mdb003", "mdb004", "mdb005"), size=(16, 16)
):
    for name in films:
        root.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(np.full(size, 7, np.uint8)).save(root / f"{name}.pgm")
    _write(root / "Info.txt", info)
    return root


def test_mias_labels_pairs_and_unresolved(tmp_path):
    df, summary = build_mias(_mias(tmp_path / "mias"))
    by = df.set_index("image_id")
    assert list(df["image_id"]) == ["mdb001", "mdb002", "mdb003", "mdb004", "mdb005"]
    assert by.loc["mdb001", "label"] == "benign" and by.loc["mdb003", "label"] == "normal"
    assert by.loc["mdb005", "label"] == "malignant"  # B and M lines: any malignant
    assert by.loc["mdb005", "severity"] == "B;M" and by.loc["mdb005", "n_abnormalities"] == "2"
    assert by.loc["mdb001", "patient_id"] == by.loc["mdb002", "patient_id"] == "mdb001-002"
    assert by.loc["mdb005", "patient_id"] == "mdb005-006"
    assert set(df["source"]) == {"mias"} and set(df["split"]) == {""}
    # mdb006 is in the table but its PGM is missing: listed with the reason, not dropped silently
    assert summary["unresolved"] == 1
    u = summary["unresolved_rows"][0]
    assert u["image_id"] == "mdb006" and "line 10" in u["where"] and "not found" in u["reason"]
    assert summary["audit"]["n_images"] == 5


@pytest.mark.parametrize(
    "line, match",
    [
        ("mdb007 X NORM", r"line 2: unknown background 'X'"),
        ("mdb007 F BLOB B", r"line 2: unknown class 'BLOB'"),
        ("mdb007 F CIRC Q 1 2 3", r"line 2: unknown severity 'Q'"),
        ("mdb007 F CIRC", r"line 2: no severity for class CIRC"),
        ("mdb02 G CIRC B 522 280 69", r"line 2: 'mdb02' is not a reference number"),
        ("mdb004,D,NORM", r"line 2: 'mdb004,D,NORM' is not a reference number"),
    ],
)
def test_mias_bad_table_lines_stop_with_the_line(tmp_path, line, match):
    root = _mias(tmp_path / "m", info="REFNUM BG CLASS\n" + line + "\n", films=("mdb007",))
    with pytest.raises(ManifestError, match=match):
        build_mias(root)


def test_mias_missing_info_and_no_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="Info.txt not found"):
        build_mias(tmp_path / "empty")
    root = _mias(tmp_path / "m", films=())
    with pytest.raises(ManifestError, match="none of the 6 films"):
        build_mias(root)


# --------------------------------------------------------------------------------------------
# INbreast
# --------------------------------------------------------------------------------------------
INBREAST_CSV = """Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads
removed;removed;R;CC;201001;22678622;4;1
removed;removed;R;MLO;201001;22678646;4;4c
removed;removed;L;CC;201001;20586908;2;2
removed;removed;L;MLO;201001;20586934;2;5
;;;;;;;
"""


def _inbreast(root, table=INBREAST_CSV):
    for fid, h, lat, view in [
        ("22678622", "61b13c59bcba149e", "R", "CC"),
        ("22678646", "61b13c59bcba149e", "R", "ML"),
        ("20586908", "6bd0ad2d2f2b1de5", "L", "CC"),
    ]:
        _dicom(root / "AllDICOMs" / f"{fid}_{h}_MG_{lat}_{view}_ANON.dcm")
    _write(root / "AllXML" / "22678646.xml", "<plist/>")
    _write(root / "INbreast.csv", table)
    return root


def test_inbreast_birads_proxy_patients_and_unresolved(tmp_path):
    df, summary = build_inbreast(_inbreast(tmp_path / "inb"))
    by = df.set_index("image_id")
    assert by.loc["22678622", "label"] == "normal" and by.loc["22678646", "label"] == "malignant"
    assert by.loc["20586908", "label"] == "benign"
    assert by.loc["22678646", "birads"] == "4c" and by.loc["22678646", "view"] == "MLO"
    # 'removed' patient ids: the hash in the file name groups a woman's images
    assert by.loc["22678622", "patient_id"] == by.loc["22678646", "patient_id"]
    assert by.loc["22678622", "patient_id"] != by.loc["20586908", "patient_id"]
    assert by.loc["22678646", "outline_xml_path"].endswith("AllXML/22678646.xml")
    assert "BI-RADS proxy" in summary["label_rule"] and "proxy" in by.loc["22678622", "label_rule"]
    assert summary["unresolved"] == 1 and summary["unresolved_rows"][0]["image_id"] == "20586934"
    assert "line 5" in summary["unresolved_rows"][0]["where"]
    df2, s2 = build_inbreast(tmp_path / "inb", birads_map="2=exclude,4c=benign")
    assert "20586908" not in set(df2["image_id"]) and len(s2["excluded"]) == 1
    assert df2.set_index("image_id").loc["22678646", "label"] == "benign"


def test_inbreast_bad_values(tmp_path):
    root = _inbreast(
        tmp_path / "inb", INBREAST_CSV.replace("201001;22678622;4;1", "201001;22678622;4;7")
    )
    with pytest.raises(ManifestError, match=r"INbreast.csv: line 2: unknown BI-RADS value '7'"):
        build_inbreast(root)
    with pytest.raises(ConfigError, match="bad entry"):
        parse_birads_map("4=cancer")
    root = _inbreast(tmp_path / "b", INBREAST_CSV.replace("Bi-Rads", "Score"))
    with pytest.raises(ManifestError, match=r"INbreast.csv: missing column 'Bi-Rads'"):
        build_inbreast(root)


def test_inbreast_xlsx_table(tmp_path):
    pytest.importorskip("openpyxl")
    root = _inbreast(tmp_path / "inb")
    (root / "INbreast.csv").unlink()
    table = pd.read_csv(pd.io.common.StringIO(INBREAST_CSV), sep=";", dtype=str)
    table.to_excel(root / "INbreast.xlsx", index=False)
    df, _ = build_inbreast(root)
    assert set(df["image_id"]) == {"22678622", "22678646", "20586908"}


# --------------------------------------------------------------------------------------------
# VinDr-Mammo
# --------------------------------------------------------------------------------------------
VINDR_CSV = (
    (
        "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,"
        "breast_density,split\n"
    )
    + """s1,se1,i1,L,CC,3518,2800,BI-RADS 1,DENSITY C,training
s1,se1,i2,L,MLO,3518,2800,BI-RADS 1,DENSITY C,training
s1,se1,i3,R,CC,3518,2800,BI-RADS 4,DENSITY C,training
s2,se2,i4,L,CC,3518,2800,BI-RADS 3,DENSITY B,test
s2,se2,i5,R,CC,3518,2800,BI-RADS 2,DENSITY B,test
"""
)
VINDR_FINDINGS = """image_id,study_id,finding_categories,finding_birads
i3,s1,"['Mass', 'Suspicious Calcification']",BI-RADS 4
i1,s1,['No Finding'],
"""


def _vindr(root, table=VINDR_CSV):
    for study, image in [("s1", "i1"), ("s1", "i2"), ("s1", "i3"), ("s2", "i4")]:
        _dicom(root / "images" / study / f"{image}.dicom")
    _write(root / "breast-level_annotations.csv", table)
    _write(root / "finding_annotations.csv", VINDR_FINDINGS)
    return root


def test_vindr_birads_split_findings_and_unresolved(tmp_path):
    df, summary = build_vindr(_vindr(tmp_path / "vindr"))
    by = df.set_index("image_id")
    assert [by.loc[i, "label"] for i in ("i1", "i2", "i3", "i4")] == [
        "normal",
        "normal",
        "malignant",
        "benign",
    ]
    assert by.loc["i1", "split"] == "train" and by.loc["i4", "split"] == "test"
    assert by.loc["i3", "patient_id"] == "s1" and by.loc["i3", "density"] == "C"
    assert by.loc["i3", "finding_categories"] == "Mass;Suspicious Calcification"
    assert summary["unresolved"] == 1 and summary["unresolved_rows"][0]["image_id"] == "i5"
    df2, _ = build_vindr(tmp_path / "vindr", birads_map="3=malignant")
    assert df2.set_index("image_id").loc["i4", "label"] == "malignant"
    bad = _vindr(tmp_path / "bad", VINDR_CSV.replace("BI-RADS 2", "BI-RADS X"))
    with pytest.raises(ManifestError, match=r"line 6: unknown breast_birads 'BI-RADS X'"):
        build_vindr(bad)


# --------------------------------------------------------------------------------------------
# RSNA
# --------------------------------------------------------------------------------------------
RSNA_CSV = (
    (
        "site_id,patient_id,image_id,laterality,view,age,cancer,biopsy,invasive,BIRADS,implant,"
        "density,machine_id,difficult_negative_case\n"
    )
    + """2,10006,462822612,L,CC,61.0,0,0,0,,0,,29,False
2,10006,1459541791,L,MLO,61.0,0,1,0,0,0,,29,False
2,10006,1864590858,R,AT,61.0,1,1,1,,0,,29,False
1,10011,220375232,L,CC,55.0,0,0,0,,0,C,21,True
"""
)


def _rsna(root, table=RSNA_CSV):
    for pid, iid in [("10006", "462822612"), ("10006", "1459541791"), ("10006", "1864590858")]:
        _dicom(root / "train_images" / pid / f"{iid}.dcm")
    _write(root / "train.csv", table)
    return root


def test_rsna_labels_columns_and_unresolved(tmp_path):
    df, summary = build_rsna(_rsna(tmp_path / "rsna"))
    by = df.set_index("image_id")
    assert by.loc["462822612", "label"] == "normal"
    assert by.loc["1459541791", "label"] == "benign"  # biopsied, no cancer
    assert by.loc["1864590858", "label"] == "malignant"
    assert by.loc["1864590858", "view"] == "AT" and by.loc["462822612", "machine_id"] == "29"
    assert set(df["site_id"]) == {"2"} and summary["views"]["AT"] == 1
    assert any("AT 1" in n for n in summary["notes"])
    assert (
        summary["unresolved"] == 1 and "10011/220375232" in summary["unresolved_rows"][0]["reason"]
    )
    bad = _rsna(tmp_path / "bad", RSNA_CSV.replace("61.0,0,1,0", "61.0,0,yes,0"))
    with pytest.raises(ManifestError, match=r"train.csv: line 3: biopsy is 'yes'"):
        build_rsna(bad)


# --------------------------------------------------------------------------------------------
# CMMD
# --------------------------------------------------------------------------------------------
CMMD_CSV = """ID1,LeftRight,Age,number,abnormality,classification,subtype
D1-0001,R,44,2,calcification,Benign,
D2-0002,L,61,2,mass,Malignant,Luminal A
D2-0003,L,50,1,mass,Malignant,
"""


def _cmmd(root, table=CMMD_CSV):
    series = root / "CMMD"
    _dicom(series / "D1-0001" / "st" / "se" / "1-1.dcm", ImageLaterality="R", ViewPosition="CC")
    _dicom(series / "D1-0001" / "st" / "se" / "1-2.dcm", ImageLaterality="R", ViewPosition="MLO")
    _dicom(series / "D1-0001" / "st" / "se" / "1-3.dcm", ImageLaterality="L", ViewPosition="CC")
    _dicom(series / "D2-0002" / "st" / "se" / "1-1.dcm", ImageLaterality="L", ViewPosition="CC")
    # side only in the header: the file name says nothing
    _dicom(series / "D2-0002" / "st" / "se" / "1-2.dcm", ImageLaterality="L", ViewPosition="CC")
    _write(root / "CMMD_clinicaldata_revision.csv", table)
    return root


def test_cmmd_side_from_header_and_unresolved(tmp_path):
    df, summary = build_cmmd(_cmmd(tmp_path / "cmmd"))
    by = df.set_index("image_id")
    assert by.loc["D1-0001_R_CC", "label"] == "benign"
    assert by.loc["D1-0001_R_MLO", "laterality"] == "R"
    assert by.loc["D2-0002_L_CC", "label"] == "malignant" and "D2-0002_L_CC_2" in by.index
    assert by.loc["D2-0002_L_CC", "subtype"] == "Luminal A"
    reasons = summary["unresolved_reasons"]
    # D1-0001's left breast has no clinical row (not assumed normal); D2-0003 has no image
    assert reasons == {"image without a clinical row": 1, "clinical row without an image": 1}
    bad = _cmmd(tmp_path / "bad", CMMD_CSV.replace("Benign", "Maybe"))
    with pytest.raises(ManifestError, match=r"line 2: unknown classification 'Maybe'"):
        build_cmmd(bad)


def test_cmmd_xlsx_table(tmp_path):
    pytest.importorskip("openpyxl")
    root = _cmmd(tmp_path / "cmmd")
    (root / "CMMD_clinicaldata_revision.csv").unlink()
    pd.read_csv(pd.io.common.StringIO(CMMD_CSV), dtype=str).to_excel(
        root / "CMMD_clinicaldata_revision.xlsx", index=False
    )
    df, _ = build_cmmd(root)
    assert len(df) == 4


# --------------------------------------------------------------------------------------------
# merge + CLI
# --------------------------------------------------------------------------------------------
def test_merge_keeps_source_and_warns_about_single_source_labels(tmp_path):
    from featmammo.datasets.base import save

    mias_df, mias_sum = build_mias(_mias(tmp_path / "mias"))
    rsna_df, rsna_sum = build_rsna(_rsna(tmp_path / "rsna"))
    save(mias_df[mias_df["label"] == "normal"], mias_sum, tmp_path / "a.csv")
    save(rsna_df[rsna_df["label"] != "normal"], rsna_sum, tmp_path / "b.csv")
    merged, summary = merge_manifests([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert summary["sources"] == {"mias": 2, "rsna": 2}
    assert summary["label_sources"]["normal"] == ["mias"]
    assert summary["audit"]["source_confounding"] == {"normal": "mias"}
    assert any("every 'normal' image comes from 'mias'" in n for n in summary["notes"])
    assert "background" in merged.columns and "machine_id" in merged.columns
    # an id clash names both files; --prefix-ids resolves it
    with pytest.raises(ManifestError, match="is in both"):
        merge_manifests([tmp_path / "a.csv", tmp_path / "a.csv"])
    # same patient id in two sources: prefixed, so the audit does not join two women
    other = read_manifest(tmp_path / "a.csv")
    other["source"] = "other"
    other.to_csv(tmp_path / "c.csv", index=False)
    m2, s2 = merge_manifests([tmp_path / "a.csv", tmp_path / "c.csv"], prefix_ids=True)
    assert s2["prefixed_patients"] == 1 and "other:mdb003-004" in set(m2["patient_id"])
    assert m2["image_id"].is_unique


def test_cli_set_commands_write_three_files(tmp_path):
    from featmammo.cli.manifest import command

    runner = CliRunner()
    out = tmp_path / "out" / "mias.csv"
    res = runner.invoke(command, ["mias", str(_mias(tmp_path / "mias")), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "unresolved 1 row(s)" in res.output and "Leakage audit" in res.output
    assert read_manifest(out)["label"].tolist()[:3] == ["benign", "benign", "normal"]
    summary = json.loads((tmp_path / "out" / "mias.summary.json").read_text())
    assert summary["unresolved"] == 1
    unresolved = pd.read_csv(tmp_path / "out" / "mias.unresolved.csv", dtype=str)
    assert list(unresolved.columns) == ["image_id", "where", "reason"]
    assert list(unresolved["image_id"]) == ["mdb006"]
    res = runner.invoke(
        command, ["mias", str(tmp_path / "mias"), "-o", str(out), "--fail-on-unresolved", "--json"]
    )
    assert res.exit_code == 1 and json.loads(res.stdout)["unresolved_csv"]
    for name, root in [
        ("inbreast", _inbreast(tmp_path / "inb")),
        ("vindr", _vindr(tmp_path / "vindr")),
        ("rsna", _rsna(tmp_path / "rsna")),
        ("cmmd", _cmmd(tmp_path / "cmmd")),
    ]:
        res = runner.invoke(command, [name, str(root), "-o", str(tmp_path / f"{name}.csv")])
        assert res.exit_code == 0, (name, res.output)
        assert read_manifest(tmp_path / f"{name}.csv")["source"].iloc[0] in (name, "vindr-mammo")
    res = runner.invoke(
        command,
        [
            "merge",
            str(tmp_path / "rsna.csv"),
            str(tmp_path / "cmmd.csv"),
            "-o",
            str(tmp_path / "m.csv"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "source     rsna:" in res.output
    assert set(read_manifest(tmp_path / "m.csv")["source"]) == {"rsna", "cmmd"}


def test_every_public_builder_name_resolves():
    import featmammo.datasets as datasets

    for name in datasets.__all__:
        assert callable(getattr(datasets, name)) or name in ("LABELS", "REQUIRED_COLUMNS"), name


def test_missing_and_malformed_tables_name_file_and_line(tmp_path):
    root = _rsna(tmp_path / "rsna", RSNA_CSV + "2,10006,1,L,CC,61,0,0,0,,0,,29,False,EXTRA\n")
    with pytest.raises(ManifestError, match=r"train.csv: line 6: 15 fields, header has 14"):
        build_rsna(root)
    (root / "train.csv").unlink()
    with pytest.raises(ManifestError, match="RSNA train.csv not found"):
        build_rsna(root)
    with pytest.raises(ManifestError, match="nope.csv: VinDr annotations not found"):
        build_vindr(_vindr(tmp_path / "v"), annotations=tmp_path / "nope.csv")
    bad = tmp_path / "bad.xlsx"
    bad.write_bytes(b"not a spreadsheet")
    with pytest.raises(ManifestError, match=r"bad.xlsx: (cannot read CMMD|reading .xlsx needs)"):
        build_cmmd(_cmmd(tmp_path / "c"), table=bad)


def _drop_column(csv_text: str, name: str) -> str:
    frame = pd.read_csv(__import__("io").StringIO(csv_text), dtype=str, keep_default_na=False)
    return frame.drop(columns=[name]).to_csv(index=False)


def test_tables_missing_a_column_the_label_rule_needs_stop(tmp_path):
    """RSNA without biopsy would make every benign case normal; VinDr without split would drop
    the official split: both stop, naming the file and the column."""
    rsna = _rsna(tmp_path / "rsna", _drop_column(RSNA_CSV, "biopsy"))
    with pytest.raises(ManifestError, match=r"train.csv.*biopsy"):
        build_rsna(rsna)
    vindr = _vindr(tmp_path / "vindr", _drop_column(VINDR_CSV, "split"))
    with pytest.raises(ManifestError, match=r"breast-level_annotations.csv.*split"):
        build_vindr(vindr)


def test_birads_map_refuses_a_category_given_twice():
    with pytest.raises(ConfigError, match="category 1 is given twice"):
        parse_birads_map("1=normal,1=benign")
