"""CBIS-DDSM manifests from real files: the 8 real DICOMs (P_00173, P_00820) placed into each disk
layout users have (classic, NBIA descriptive + metadata.csv, NBIA REST, 8-bit JPEG copy), with tiny
crop and header-only ROI-mask DICOMs written here, resolved against the official CSVs."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from featmammo.datasets.cbis_ddsm import (
    CSV_NAMES,
    build_cbis_ddsm,
    find_case_csvs,
    images_from_cases,
    read_case_csvs,
)
from featmammo.errors import ManifestError
from featmammo.splits import audit

PATIENTS = ("P_00173", "P_00820")
CROP_SIZE = (40, 30)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATMAMMO_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def real_headers(real_dicoms):
    """Header fields of the real files (no pixel decode): subject -> dict."""
    out = {}
    for p in real_dicoms:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        out[str(ds.PatientID)] = {
            "path": Path(p),
            "study": str(ds.StudyInstanceUID),
            "series": str(ds.SeriesInstanceUID),
            "rows": int(ds.Rows),
            "cols": int(ds.Columns),
        }
    assert len(out) == 8
    return out


@pytest.fixture(scope="session")
def case_rows(cbis_csv_dir):
    """The official mass-test rows of the two patients, as raw CSV dicts (header, rows)."""
    with open(cbis_csv_dir / CSV_NAMES[("mass", "test")], newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [r for r in reader if r and r[0] in PATIENTS]
    assert len(rows) == 10  # 8 images, P_00173 RIGHT CC/MLO carry two masses each
    return header, rows


def _split(cell: str):
    subject, study, series, name = cell.strip().split("/")
    return subject, study, series, name


def write_filtered_csvs(folder: Path, cbis_csv_dir: Path, case_rows) -> Path:
    """The mass-test CSV filtered to the two patients; the other three with their header only."""
    folder.mkdir(parents=True, exist_ok=True)
    header, rows = case_rows
    for key, name in CSV_NAMES.items():
        with open(cbis_csv_dir / name, newline="") as f:
            head = next(csv.reader(f))
        with open(folder / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(head)
            if key == ("mass", "test"):
                w.writerows(rows)
    return folder


def tiny_dicom(path: Path, *, subject, study, series, desc, rows, cols, instance, pixels=True):
    """A small DICOM. pixels=False writes a header-only file (PixelData of 4 bytes: decoding it
    would fail), standing in for a full-size ROI mask without writing ~12 MB."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = subject
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SeriesDescription = desc
    ds.InstanceNumber = instance
    ds.Modality = "MG"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.zeros((rows, cols), np.uint8).tobytes() if pixels else b"\0" * 4
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def make_tree(
    root: Path, layout: str, real_headers, case_rows, *, swap_subject=None, bad_mask_subject=None
):
    """Place the real full mammograms (symlinks) and tiny crop/mask files in ``layout``.

    Returns {lesion subject: (crop path, mask path)}. ``swap_subject``: the lesion folder whose
    crop is written under the mask's listed name and vice versa. ``bad_mask_subject``: a lesion
    whose mask is not the image's size.
    """
    header, rows = case_rows
    col = {c.strip(): i for i, c in enumerate(header)}
    meta_rows = []
    written = {}

    def place(subject, study, series, desc, files):
        """files: list of (source_path | dict for tiny dicom) in instance order."""
        if layout == "classic":
            folder = root / subject / study / series
            names = [f"00000{i}.dcm" for i in range(len(files))]
        elif layout == "nbia-rest":
            folder = root / subject / study / series
            names = [f"0000000{i + 1}.dcm" for i in range(len(files))]
        else:  # nbia-descriptive
            rel = Path(
                "CBIS-DDSM",
                subject,
                f"10-04-2016-DDSM-{study[-5:]}",
                f"1.000000-{desc}-{series[-5:]}",
            )
            folder = root / rel
            names = [f"1-{i + 1}.dcm" for i in range(len(files))]
            meta_rows.append(
                {
                    "Series UID": series,
                    "Collection": "CBIS-DDSM",
                    "Subject ID": subject,
                    "Study UID": study,
                    "Series Description": desc,
                    "Modality": "MG",
                    "Number of Images": str(len(files)),
                    "File Location": ".\\" + str(rel).replace("/", "\\"),
                }
            )
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for name, src in zip(names, files, strict=True):
            p = folder / name
            if isinstance(src, Path):
                os.symlink(src, p)
            else:
                tiny_dicom(p, **src)
            out.append(p)
        return out

    done_full = set()
    for r in rows:
        fsub, fstudy, fseries, _ = _split(r[col["image file path"]])
        real = real_headers[fsub]
        assert (real["study"], real["series"]) == (fstudy, fseries)  # UIDs in CSV == headers
        if fsub not in done_full:
            place(fsub, fstudy, fseries, "full mammogram images", [real["path"]])
            done_full.add(fsub)
        csub, cstudy, cseries, cname = _split(r[col["cropped image file path"]])
        _, _, mseries, mname = _split(r[col["ROI mask file path"]])
        assert cseries == mseries  # these rows keep crop and mask in one series
        mrows, mcols = real["rows"], real["cols"]
        if csub == bad_mask_subject:
            mrows -= 8
        crop = dict(
            subject=csub,
            study=cstudy,
            series=cseries,
            desc="cropped images",
            rows=CROP_SIZE[0],
            cols=CROP_SIZE[1],
            instance=1,
        )
        mask = dict(
            subject=csub,
            study=cstudy,
            series=cseries,
            desc="ROI mask images",
            rows=mrows,
            cols=mcols,
            instance=2,
            pixels=False,
        )
        # CSV order for mass rows: crop 000000, mask 000001; swap_subject inverts it on disk
        order = [mask, crop] if csub == swap_subject else [crop, mask]
        paths = place(csub, cstudy, cseries, "ROI mask images", order)
        crop_p, mask_p = (paths[1], paths[0]) if csub == swap_subject else (paths[0], paths[1])
        written[csub] = (crop_p, mask_p)
    if layout == "nbia-descriptive":
        pd.DataFrame(meta_rows).to_csv(root / "metadata.csv", index=False)
    return written


EXPECTED = {
    "P_00173_LEFT_CC": "benign",
    "P_00173_LEFT_MLO": "benign",
    "P_00173_RIGHT_CC": "benign",
    "P_00173_RIGHT_MLO": "benign",
    "P_00820_LEFT_CC": "malignant",
    "P_00820_LEFT_MLO": "malignant",
    "P_00820_RIGHT_CC": "benign",
    "P_00820_RIGHT_MLO": "benign",
}


def check_resolved(df, real_headers, written):
    assert sorted(df["image_id"]) == sorted(EXPECTED)
    d = df.set_index("image_id")
    for image_id, label in EXPECTED.items():
        row = d.loc[image_id]
        assert row["label"] == label, image_id
        assert row["split"] == "test"
        pid, side, view = image_id[:7], image_id.split("_")[2], image_id.split("_")[3]
        assert row["patient_id"] == pid
        assert row["laterality"] == side[0] and row["view"] == view
        assert row["abnormality_type"] == "mass"
        subject = f"Mass-Test_{image_id}"
        assert Path(row["path"]).resolve() == real_headers[subject]["path"].resolve()
        crop, mask = written[f"{subject}_1"]
        assert row["crop_path"] == str(crop)
        assert row["roi_mask_path"] == str(mask)
    two = d.loc["P_00173_RIGHT_CC"]
    assert two["n_abnormalities"] == 2
    assert two["crop_paths"].split(";") == [
        str(written[f"Mass-Test_P_00173_RIGHT_CC_{i}"][0]) for i in (1, 2)
    ]
    assert d.loc["P_00820_LEFT_CC", "pathology"] == "MALIGNANT"
    assert set(df["source"]) == {"cbis-ddsm"}


@pytest.mark.parametrize("layout", ["classic", "nbia-descriptive", "nbia-rest"])
def test_layouts_resolve_by_uid(tmp_path, layout, real_headers, case_rows, cbis_csv_dir):
    root = tmp_path / "download"
    written = make_tree(
        root, layout, real_headers, case_rows, swap_subject="Mass-Test_P_00820_LEFT_CC_1"
    )
    (root / "stray.dcm").touch()  # read (and reported) only when headers are scanned
    csvs = write_filtered_csvs(tmp_path / "csvs", cbis_csv_dir, case_rows)
    df, summary = build_cbis_ddsm(root, csv_dir=csvs)
    check_resolved(df, real_headers, written)
    assert summary["layout"] == layout
    assert summary["unresolved"] == 0
    scanned = layout != "nbia-descriptive"
    assert len(summary["skipped_files"]) == int(scanned)
    assert summary["lesions_missing_files"] == 0 and summary["mask_size_mismatch"] == 0
    assert summary["labels"] == {"benign": 6, "malignant": 2}
    if layout == "classic":  # only here do file names match the CSV's 000000/000001
        assert summary["crop_mask_swapped"] == 1
    if layout == "nbia-descriptive":  # through metadata.csv: only listed folders are read
        assert summary["index"]["metadata_csv"]
        assert summary["index"]["headers_read"] == 8 + 20
    assert summary["audit"]["ok"]


def test_descriptive_layout_without_metadata(
    tmp_path, real_headers, case_rows, cbis_csv_dir, monkeypatch
):
    root = tmp_path / "download"
    written = make_tree(root, "nbia-descriptive", real_headers, case_rows)
    (root / "metadata.csv").unlink()  # falls back to scanning every header
    (root / "stray.dcm").touch()
    write_filtered_csvs(tmp_path / "c", cbis_csv_dir, case_rows)
    monkeypatch.chdir(tmp_path)  # relative ROOT: manifest paths must still be absolute
    calls = []
    df, summary = build_cbis_ddsm("download", csv_dir="c", progress=lambda *a: calls.append(a))
    check_resolved(df, real_headers, written)
    # the progress callback hears of every header looked up, out of the DICOM files found
    idx = summary["index"]
    assert calls == [(1, idx["dcm_files"])] * (idx["headers_read"] + idx["headers_cached"])
    assert summary["layout"] == "nbia-descriptive (no metadata.csv)"
    assert summary["index"]["headers_read"] == 8 + 20 + 1
    assert [Path(s["path"]).name for s in summary["skipped_files"]] == ["stray.dcm"]


def test_whole_csvs_report_unresolved_and_cache(tmp_path, real_headers, case_rows, cbis_csv_dir):
    root = tmp_path / "download"
    written = make_tree(
        root, "classic", real_headers, case_rows, bad_mask_subject="Mass-Test_P_00173_LEFT_MLO_1"
    )
    # junk in the tree: a zero-byte and a non-DICOM .dcm are skipped and reported
    (root / "empty.dcm").touch()
    (root / "notes").mkdir()
    (root / "notes" / "readme.dcm").write_text("not a dicom")
    df, summary = build_cbis_ddsm(root, csv_dir=cbis_csv_dir)
    check_resolved(df, real_headers, written)
    assert summary["n_images_in_csvs"] == 3032  # 3103 series, 71 mass/calc duplicates merged
    assert summary["unresolved"] == 3032 - 8
    assert len(summary["unresolved_rows"]) == summary["unresolved"]
    assert summary["unresolved_reasons"] == {"series not found under ROOT": 3024}
    skipped = {Path(s["path"]).name: s["reason"] for s in summary["skipped_files"]}
    assert skipped["empty.dcm"] == "zero-byte file"
    assert "not a readable DICOM" in skipped["readme.dcm"]
    assert summary["mask_size_mismatch"] == 1
    assert "Mass-Test_P_00173_LEFT_MLO" in summary["mask_mismatch_notes"][0]
    assert summary["density_zero"] == 2
    first_read = summary["index"]["headers_read"]
    assert first_read == 8 + 20 + 2
    _, again = build_cbis_ddsm(root, csv_dir=cbis_csv_dir)
    assert again["index"]["headers_read"] == 0 and again["index"]["headers_cached"] == first_read


def test_header_scan_never_decodes_pixels(
    tmp_path, real_headers, case_rows, cbis_csv_dir, monkeypatch
):
    def boom(self):
        raise AssertionError("pixel data decoded during a header scan")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(boom))
    root = tmp_path / "d"
    make_tree(root, "nbia-rest", real_headers, case_rows)
    df, _ = build_cbis_ddsm(
        root, csv_dir=write_filtered_csvs(tmp_path / "c", cbis_csv_dir, case_rows), cache=False
    )
    assert len(df) == 8
    assert df["rows"].astype(int).min() > 4000  # sizes come from headers of the real files


def test_jpeg_copy(tmp_path, real_headers, case_rows, cbis_csv_dir, caplog):
    from PIL import Image as PILImage

    root = tmp_path / "kaggle"
    header, rows = case_rows
    col = {c.strip(): i for i, c in enumerate(header)}
    info, n = [], 0
    expected = {}

    def jpg(series, study, subject, desc, size):
        nonlocal n
        n += 1
        rel = f"CBIS-DDSM/jpeg/{series}/1-{n:03d}.jpg"
        p = root / "jpeg" / series / f"1-{n:03d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        PILImage.new("L", (8, 8)).save(p)
        info.append(
            {
                "file_path": rel.replace("jpeg", "dicom").replace(".jpg", ".dcm"),
                "image_path": rel,
                "PatientID": subject,
                "SeriesDescription": desc,
                "SeriesInstanceUID": series,
                "StudyInstanceUID": study,
                "Rows": size[0],
                "Columns": size[1],
            }
        )
        return p

    seen = set()
    for r in rows:
        fsub, fstudy, fseries, _ = _split(r[col["image file path"]])
        real = real_headers[fsub]
        if fsub not in seen:
            seen.add(fsub)
            expected[fsub] = jpg(
                fseries, fstudy, fsub, "full mammogram images", (real["rows"], real["cols"])
            )
        csub, cstudy, cseries, _ = _split(r[col["cropped image file path"]])
        m = jpg(cseries, cstudy, csub, "ROI mask images", (real["rows"], real["cols"]))
        c = jpg(cseries, cstudy, csub, "cropped images", CROP_SIZE)
        expected[csub] = (c, m)
    (root / "csv").mkdir()
    pd.DataFrame(info).to_csv(root / "csv" / "dicom_info.csv", index=False)
    write_filtered_csvs(root / "csv", cbis_csv_dir, case_rows)
    df, summary = build_cbis_ddsm(root)  # CSVs found under ROOT by name
    assert summary["layout"] == "jpeg" and summary["source"] == "cbis-ddsm-jpeg"
    assert any("lossy" in n for n in summary["notes"])
    assert "lossy" in caplog.text
    d = df.set_index("image_id")
    assert sorted(d.index) == sorted(EXPECTED)
    for image_id, label in EXPECTED.items():
        assert d.loc[image_id, "label"] == label
        assert d.loc[image_id, "path"] == str(expected[f"Mass-Test_{image_id}"])
    crop, mask = expected["Mass-Test_P_00820_LEFT_CC_1"]
    assert d.loc["P_00820_LEFT_CC", "crop_path"] == str(crop)
    assert d.loc["P_00820_LEFT_CC", "roi_mask_path"] == str(mask)


@pytest.fixture(scope="session")
def official_cases(cbis_csv_dir):
    return read_case_csvs(find_case_csvs(csv_dir=cbis_csv_dir))


def test_official_csv_facts(official_cases):
    """The counts CBIS-DDSM.md states, recomputed from the real CSVs without any image."""
    cases = official_cases
    assert len(cases) == 3568
    assert cases.attrs["density_zero"] == 2
    assert not (cases["mass_margins"] == "N/A").any()  # N/A strings normalised to empty
    assert set(cases["density"]) == {"", "1", "2", "3", "4"}
    pooled, _ = images_from_cases(cases, dedup=False)
    pooled = pooled.drop(columns=["_members", "_lesions"])
    assert len(pooled) == 3103 and pooled["patient_id"].nunique() == 1566
    report = audit(pooled)
    assert report.n_shared == 31  # official split shares 31 patients once mass+calc are pooled
    assert report.duplicate_views == 71
    assert not report.ok
    deduped, info = images_from_cases(cases)
    assert info["merged_views"] == 71 and info["split_conflicts"] == 29
    assert info["images_with_benign_and_malignant"] == 17
    assert deduped["image_id"].is_unique and len(deduped) == 3032
    assert deduped["image_id"].str.fullmatch(r"P_\d{5}_(LEFT|RIGHT)_(CC|MLO)").all()
    both = deduped[deduped["merged_from"] != ""]
    assert set(both["abnormality_type"]) == {"mass;calcification"}
    conflict = both[both["official_splits"] == "test;train"]
    assert len(conflict) == 29 and set(conflict["split"]) == {"test"}
    assert audit(deduped.drop(columns=["_members", "_lesions"])).n_shared == 22
    # mass-only and calc-only official splits are patient-disjoint
    for subset in ("mass", "calc"):
        sub, _ = images_from_cases(cases[cases["subset"] == subset])
        assert audit(sub.drop(columns=["_members", "_lesions"])).ok
    # BENIGN_WITHOUT_CALLBACK=exclude: views with only such abnormalities are excluded (reported)
    excl, info_x = images_from_cases(cases, benign_without_callback="exclude")
    keys = ["patient_id", "laterality", "view"]
    real = cases[cases["pathology"] != "BENIGN_WITHOUT_CALLBACK"].drop_duplicates(keys)
    assert len(excl) == len(real)
    assert info_x["excluded"] and all(
        "BENIGN_WITHOUT_CALLBACK" in e["reason"] for e in info_x["excluded"]
    )
    assert not excl["pathology"].str.contains("WITHOUT").any()
    assert set(excl["label_rule"]) == {"any-malignant; BENIGN_WITHOUT_CALLBACK=exclude"}
    assert (excl["label"] == "benign").sum() < (deduped["label"] == "benign").sum()
    assert (excl["label"] == "malignant").sum() == (deduped["label"] == "malignant").sum()


def test_partial_csv_set_is_used_with_a_warning(tmp_path, real_headers, case_rows, caplog):
    """As the demo lays it out: classic tree + only the mass-test CSV inside ROOT."""
    root = tmp_path / "download"
    make_tree(root, "classic", real_headers, case_rows)
    header, rows = case_rows
    with open(root / CSV_NAMES[("mass", "test")], "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    df, summary = build_cbis_ddsm(root)
    assert len(df) == 8 and summary["unresolved"] == 0
    assert len(summary["csv_missing"]) == 3 and "only 1 of 4" in caplog.text


def test_missing_and_malformed_csvs(tmp_path, cbis_csv_dir):
    (tmp_path / "root").mkdir()
    with pytest.raises(ManifestError, match="mass_case_description_train_set.csv"):
        build_cbis_ddsm(tmp_path / "root")
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in CSV_NAMES.values():
        df = pd.read_csv(cbis_csv_dir / name, dtype=str, keep_default_na=False, nrows=3)
        if name.startswith("calc_case_description_test"):
            df = df.drop(columns=["pathology"])
        df.to_csv(bad / name, index=False)
    with pytest.raises(ManifestError, match=r"calc_case_description_test_set.csv.*pathology"):
        build_cbis_ddsm(tmp_path / "root", csv_dir=bad)
    # unknown pathology: named with the file and CSV line
    df = pd.read_csv(
        cbis_csv_dir / CSV_NAMES[("calc", "test")], dtype=str, keep_default_na=False, nrows=3
    )
    df.loc[1, "pathology"] = "MAYBE"
    df.to_csv(bad / CSV_NAMES[("calc", "test")], index=False)
    # row 1 starts on line 4: row 0's quoted path cell spans two lines (the CSVs' trailing newline)
    with pytest.raises(ManifestError, match=r"line 4: unknown pathology 'MAYBE'"):
        build_cbis_ddsm(tmp_path / "root", csv_dir=bad)
    # nothing resolvable: a clear error, not an empty manifest
    with pytest.raises(ManifestError, match="no CBIS-DDSM image could be resolved"):
        build_cbis_ddsm(tmp_path / "root", csv_dir=cbis_csv_dir)


def test_cli_cbis_and_audit(tmp_path, real_headers, case_rows, cbis_csv_dir):
    from featmammo.cli.audit import command as audit_cmd
    from featmammo.cli.manifest import command as manifest_cmd
    from featmammo.datasets.manifest import read_manifest

    root = tmp_path / "download"
    make_tree(root, "classic", real_headers, case_rows)
    csvs = write_filtered_csvs(tmp_path / "csvs", cbis_csv_dir, case_rows)
    out = tmp_path / "out" / "manifest.csv"
    runner = CliRunner()
    res = runner.invoke(
        manifest_cmd,
        [
            "cbis-ddsm",
            str(root),
            "--csv-dir",
            str(csvs),
            "-o",
            str(out),
            "--subset",
            "mass",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "unresolved" in res.output and "Leakage audit" in res.output
    df = read_manifest(out)
    assert len(df) == 8 and set(df["label"]) == {"benign", "malignant"}
    summary = json.loads((tmp_path / "out" / "manifest.summary.json").read_text())
    assert summary["subset"] == "mass" and summary["unresolved"] == 0
    assert not (tmp_path / "out" / "manifest.unresolved.csv").exists()
    # one full mammogram missing on disk: reported (CLI, JSON, CSV), and fatal on request
    gone = next(root.glob("Mass-Test_P_00173_LEFT_CC/*/*/000000.dcm"))
    gone.unlink()
    res = runner.invoke(
        manifest_cmd,
        [
            "cbis-ddsm",
            str(root),
            "--csv-dir",
            str(csvs),
            "-o",
            str(out),
            "--subset",
            "mass",
            "--json",
            "--fail-on-unresolved",
        ],
    )
    assert res.exit_code == 1
    summary = json.loads(res.stdout)
    assert summary["images"] == 7 and summary["unresolved"] == 1
    assert summary["unresolved_rows"][0]["subject"] == "Mass-Test_P_00173_LEFT_CC"
    assert summary["unresolved_rows"][0]["csv"] == "mass_case_description_test_set.csv:2"
    unresolved = pd.read_csv(tmp_path / "out" / "manifest.unresolved.csv")
    assert list(unresolved["image_id"]) == ["P_00173_LEFT_CC"]

    res = runner.invoke(audit_cmd, [str(out), "--enforce"])
    assert res.exit_code == 0, res.output
    leaky = df.copy()
    leaky.loc[leaky["image_id"] == "P_00820_LEFT_CC", "split"] = "train"
    leaky.to_csv(tmp_path / "leaky.csv", index=False)
    res = runner.invoke(audit_cmd, [str(tmp_path / "leaky.csv"), "--enforce", "--json"])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["shared"] == {"test|train": ["P_00820"]}
    # a predictions-like CSV (no path column): folds are audited
    preds = pd.DataFrame(
        {"image_id": ["a", "b", "c"], "patient_id": ["p1", "p1", "p2"], "fold": ["0", "1", "test"]}
    )
    preds.to_csv(tmp_path / "predictions.csv", index=False)
    res = runner.invoke(audit_cmd, [str(tmp_path / "predictions.csv"), "--enforce"])
    assert res.exit_code == 1 and "patient(s) in folds 0 and 1: p1" in res.output


@pytest.mark.parametrize("cut", ["P_00820 RIGHT MLO", "P_00173 RIGHT CC"])
def test_a_case_csv_row_cut_short_unresolves_its_image(
    tmp_path, real_headers, case_rows, cbis_csv_dir, cut
):
    """A truncated case CSV: the cut row is never padded (its pathology could be the malignant
    one); its image is listed with the file and line, even when another complete row names the
    same image (P_00173 RIGHT CC carries two masses), and the other images resolve."""
    root = tmp_path / "download"
    make_tree(root, "classic", real_headers, case_rows)
    csvs = write_filtered_csvs(tmp_path / "csvs", cbis_csv_dir, case_rows)
    mass_test = csvs / CSV_NAMES[("mass", "test")]
    header, rows = case_rows
    k = max(i for i, r in enumerate(rows) if " ".join(c.strip() for c in r[:4:2] + r[3:4]) == cut)
    rows = rows[:k] + rows[k + 1 :] + [rows[k]]
    last = rows[-1]
    image_id = f"{last[0]}_{last[2].strip().upper()}_{last[3].strip().upper()}"
    with open(mass_test, "w", newline="") as f:  # the last row cut after its 9th cell
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows[:-1])
        w.writerow(last[:9])
    start = mass_test.read_text().count("\n") - 0  # the cut row is the file's last line
    df, summary = build_cbis_ddsm(root, csv_dir=csvs)
    assert image_id not in set(df["image_id"]) and len(df) == 7
    (u,) = summary["unresolved_rows"]
    assert u["image_id"] == image_id and u["csv"] == f"{mass_test.name}:{start}"
    assert "cut short" in u["reason"] and "label cannot be decided" in u["reason"]
    assert summary["unresolved_reasons"] == {"CSV row cut short": 1}
    assert set(df["exam_id"]) == set(df["patient_id"])
