"""Inputs real users have and the authors did not write: untidy CSVs, folder trees, CBIS-DDSM
arrangements and image variants, through the public interfaces (``read_manifest``,
``build_folder``/``featmammo manifest folder``, ``featmammo manifest cbis-ddsm``, ``read_image``,
``preprocess``/``load_and_preprocess``). Each case is accepted correctly or refused with a typed
error that names the file/row and the reason."""

from __future__ import annotations

import io
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from featmammo.datasets import build_folder, read_manifest, write_manifest
from featmammo.errors import ImageReadError, ManifestError
from featmammo.io import read_image
from featmammo.preprocess import PreprocessConfig, load_and_preprocess, preprocess


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATMAMMO_CACHE", str(tmp_path / "cache"))


def _manifest_cmd():
    # the subcommand itself: the top-level group would configure logging process-wide
    from featmammo.cli.manifest import command

    return command


def _png(path: Path, arr=None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr is None:
        arr = np.random.default_rng(len(str(path))).integers(0, 255, (12, 10), dtype=np.uint8)
    PILImage.fromarray(arr).save(path, format="PNG", **save)
    return path


def _dicom(path: Path, arr: np.ndarray, photometric="MONOCHROME2", **tags) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = tags.pop("BitsStored", ds.BitsAllocated)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- manifest CSVs


def _damaged(data: bytes, trial: int, rng) -> bytearray:
    """A damaged copy of ``data``: truncated, bytes flipped, or junk spliced in (by trial % 3)."""
    d = bytearray(data)
    if trial % 3 == 0:
        d = d[: rng.integers(1, len(d))]
    elif trial % 3 == 1:
        for _ in range(rng.integers(1, 20)):
            d[rng.integers(0, len(d))] = rng.integers(0, 256)
    else:
        i = rng.integers(0, len(d))
        d[i:i] = rng.bytes(int(rng.integers(1, 50)))
    return d


def test_csv_bom_crlf_blank_rows_string_ids_unicode_paths(tmp_path):
    _png(tmp_path / "mes images é" / "0012 a.png")
    _png(tmp_path / "mes images é" / "007.PNG")
    text = (
        "\ufeffimage_id,path,label,patient_id,extra\r\n"
        "0012,mes images é/0012 a.png,Malignant ,00042,x\r\n"
        "007,mes images é/007.PNG, BENIGN_WITHOUT_CALLBACK,00042,\r\n"
        "\r\n,,,,\r\n\r\n"
    )
    (tmp_path / "m.csv").write_bytes(text.encode("utf-8"))
    df = read_manifest(tmp_path / "m.csv")
    assert list(df["image_id"]) == ["0012", "007"]  # leading zeros kept: strings, not numbers
    assert list(df["patient_id"]) == ["00042", "00042"]
    assert list(df["label"]) == ["malignant", "benign"]
    assert list(df["extra"]) == ["x", ""]
    assert df["path"][0] == str(tmp_path / "mes images é" / "0012 a.png")


@pytest.mark.parametrize("sep,name", [(";", "semicolon"), ("\t", "tab")])
def test_other_separators_are_a_clear_error(tmp_path, sep, name):
    (tmp_path / "m.csv").write_text(f"path{sep}label\na.png{sep}benign\n")
    with pytest.raises(ManifestError, match=rf"m\.csv: .*{name}-separated"):
        read_manifest(tmp_path / "m.csv")


def test_unnamed_columns_and_header_case(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "trailing.csv").write_text("Path,LABEL,,\na.png,benign,,\n")  # Excel export
    df = read_manifest(tmp_path / "trailing.csv")
    assert df["label"].tolist() == ["benign"] and "" not in df.columns
    (tmp_path / "filled.csv").write_text("path,label,\na.png,benign,\na.png,benign,oops\n")
    with pytest.raises(ManifestError, match=r"filled\.csv: line 3: value 'oops' in column 3"):
        read_manifest(tmp_path / "filled.csv")
    (tmp_path / "dup.csv").write_text("path,label,label\na.png,benign,benign\n")
    with pytest.raises(ManifestError, match=r"dup\.csv: duplicate column names \['label'\]"):
        read_manifest(tmp_path / "dup.csv")
    (tmp_path / "case.csv").write_text("path,Path,label\na.png,a.png,benign\n")
    with pytest.raises(ManifestError, match="differ only by case"):
        read_manifest(tmp_path / "case.csv")
    (tmp_path / "latin.csv").write_bytes("path,label\nimagé.png,benign\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=r"latin\.csv: .*not UTF-8"):
        read_manifest(tmp_path / "latin.csv")
    with pytest.raises(ManifestError, match="is a folder"):
        read_manifest(tmp_path)


def test_relative_dotdot_and_home_paths(tmp_path, monkeypatch):
    img = _png(tmp_path / "imgs" / "a.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.csv").write_text("path,label\n../imgs/a.png,benign\n")
    monkeypatch.chdir(tmp_path / "imgs")  # the cwd never matters
    assert read_manifest(tmp_path / "sub" / "m.csv")["path"][0] == str(img)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "home.csv").write_text("path,label\n~/imgs/a.png,benign\n")
    assert read_manifest("~/home.csv")["path"][0] == str(img)
    # a symlinked CSV reads relative to the real file's folder (where its data is)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "sub" / "m.csv", tmp_path / "elsewhere" / "link.csv")
    assert read_manifest(tmp_path / "elsewhere" / "link.csv")["path"][0] == str(img)
    # a symlinked folder on the way stays in the path; '..' after it means what the OS says
    deep = tmp_path / "real" / "deep"
    _png(tmp_path / "real" / "imgs" / "a.png")
    deep.mkdir()
    (deep / "m.csv").write_text("path,label\n../imgs/a.png,benign\n")
    os.symlink(deep, tmp_path / "link")
    got = read_manifest(tmp_path / "link" / "m.csv")["path"][0]
    assert os.path.samefile(got, tmp_path / "real" / "imgs" / "a.png")


def test_windows_paths(tmp_path):
    img = _png(tmp_path / "imgs" / "sub" / "a.png")
    (tmp_path / "win.csv").write_text("path,label\nimgs\\sub\\a.png,benign\n")
    assert read_manifest(tmp_path / "win.csv")["path"][0] == str(img)
    (tmp_path / "abs.csv").write_text("path,label\nimgs/sub/a.png,benign\nC:\\data\\a.png,benign\n")
    with pytest.raises(ManifestError, match=r"abs\.csv: line 3: Windows absolute path"):
        read_manifest(tmp_path / "abs.csv")


def test_write_manifest_to_a_folder_or_unwritable_place(tmp_path):
    df = read_manifest(pd.DataFrame({"path": [str(_png(tmp_path / "a.png"))], "label": ["benign"]}))
    with pytest.raises(ManifestError, match="is a folder"):
        write_manifest(df, tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ManifestError, match=r"cannot write the manifest"):
        write_manifest(df, tmp_path / "file" / "m.csv")  # parent is a file
    assert sorted(os.listdir(tmp_path)) == ["a.png", "file"]  # no temporary left behind


def test_dataframe_nan_cells_and_float_ids(tmp_path):
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png")
    df = pd.DataFrame(
        {"path": [str(a), str(b)], "label": ["benign", "malignant"], "patient_id": [np.nan, 3.0]}
    )
    out = read_manifest(df)
    assert out["patient_id"].tolist() == [out["image_id"][0], "3"]  # not "3.0"
    df["label"] = ["benign", np.nan]
    with pytest.raises(ManifestError, match="row 1: empty label"):
        read_manifest(df)


# --------------------------------------------------------------------------- folder trees


@pytest.fixture
def untidy_tree(tmp_path):
    root = tmp_path / "my data é"
    _png(root / "Benign" / "pat 1" / "x_L_CC.PNG")
    _png(root / "Benign" / "deep" / "deeper" / "c.png")
    _dicom(root / "Benign" / "IM0001", np.zeros((8, 8), np.uint8))  # DICOM, no extension
    _dicom(root / "Benign" / "1.2.840.99.7", np.zeros((8, 8), np.uint8))  # UID-named DICOM
    _dicom(root / "Benign" / "Y.DCM", np.zeros((8, 8), np.uint8))
    _dicom(root / "Benign" / "DICOMDIR", np.zeros((2, 2), np.uint8))  # stands in for the index
    _png(root / "MALIGNANT" / "b.JPG")  # a PNG under a .JPG name: the reader sniffs it
    (root / "MALIGNANT" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "MALIGNANT" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "MALIGNANT" / "notes.txt").write_text("not an image")
    (root / "MALIGNANT" / "._b.JPG").write_bytes(b"\0\5\26\7")  # AppleDouble
    _png(root / "__MACOSX" / "Benign" / "._x.png")
    (root / "normal").mkdir()  # empty class folder
    os.symlink(root / "Benign" / "deep", root / "MALIGNANT" / "linked dir")
    os.symlink(root / "Benign" / "pat 1" / "x_L_CC.PNG", root / "MALIGNANT" / "link.png")
    os.symlink(root / "missing.png", root / "MALIGNANT" / "broken.png")
    os.symlink(root / "MALIGNANT", root / "MALIGNANT" / "loop")  # a cycle
    return root


def test_folder_untidy_tree(untidy_tree, caplog):
    with caplog.at_level(logging.WARNING):
        df = build_folder(untidy_tree)
    assert sorted(df["image_id"]) == [
        "Benign/1.2.840.99.7",
        "Benign/IM0001",
        "Benign/Y",
        "Benign/deep/deeper/c",
        "Benign/pat 1/x_L_CC",
        "MALIGNANT/b",
        "MALIGNANT/link",
        "MALIGNANT/linked dir/deeper/c",
    ]
    d = df.set_index("image_id")
    assert d.loc["MALIGNANT/linked dir/deeper/c", "label"] == "malignant"
    assert (d.loc["Benign/pat 1/x_L_CC", ["laterality", "view"]] == ["L", "CC"]).all()
    assert "broken symlink" in caplog.text and "broken.png" in caplog.text
    assert "more than one path" in caplog.text  # the linked files count twice: said loudly
    for p in df["path"]:  # every row is readable
        assert read_image(p).pixels.ndim == 2


def test_folder_unknown_class_folder_is_named(tmp_path):
    _png(tmp_path / "root" / "benign" / "a.png")
    _png(tmp_path / "root" / "normal_cases" / "b.png")
    with pytest.raises(ManifestError, match=r"normal_cases: top-level folder is neither"):
        build_folder(tmp_path / "root")


def test_folder_manifest_reads_back_identically_elsewhere(untidy_tree, tmp_path, monkeypatch):
    reference = build_folder(untidy_tree)
    monkeypatch.chdir(untidy_tree.parent)
    runner = CliRunner()
    for out in (untidy_tree / "m.csv", tmp_path / "elsewhere" / "m.csv"):
        rel_out = os.path.relpath(out, untidy_tree.parent)
        res = runner.invoke(_manifest_cmd(), ["folder", untidy_tree.name, "-o", rel_out])
        assert res.exit_code == 0, res.output
        monkeypatch.chdir("/")
        back = read_manifest(out)
        monkeypatch.chdir(untidy_tree.parent)
        # same path strings (symlinked files keep their own name), same ids
        assert back["path"].tolist() == reference["path"].tolist()
        assert back["image_id"].tolist() == reference["image_id"].tolist()
        out.unlink()


# --------------------------------------------------------------------------- CBIS-DDSM


@pytest.fixture(scope="module")
def synth_cbis(tmp_path_factory):
    from featmammo.datasets.synthetic import write_synthetic_cbis

    out = tmp_path_factory.mktemp("synth") / "CBIS-DDSM"
    write_synthetic_cbis(out, 4, seed=3, size=(32, 24), classes=("benign", "malignant"))
    (out / "manifest.csv").unlink()  # the tree as a download has it: images + case CSVs
    return out


def _copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _cbis_cli(root, out, *extra):
    res = CliRunner().invoke(
        _manifest_cmd(), ["cbis-ddsm", str(root), "-o", str(out), "--json", *extra]
    )
    assert res.exit_code == 0, res.output
    return read_manifest(out)


def test_cbis_root_above_csvs_beside_and_extensionless_dicoms(synth_cbis, tmp_path, monkeypatch):
    dl = tmp_path / "down load"
    tree = _copy_tree(synth_cbis, dl / "CBIS-DDSM")
    # root given as the folder ABOVE CBIS-DDSM/
    expected = _cbis_cli(dl, tmp_path / "a.csv")
    assert len(expected) == 4 and set(expected["label"]) <= {"benign", "malignant"}
    # CSVs downloaded next to the image folder instead of inside it
    for csv in tree.glob("*_set.csv"):  # ... and renamed by a browser/OS with capitals
        csv.rename(dl / csv.name.replace("mass_case", "Mass_Case"))
    got = _cbis_cli(tree, tmp_path / "b.csv")
    assert got["image_id"].tolist() == expected["image_id"].tolist()
    # DICOM files without an extension (NBIA/PACS exports)
    for dcm in list(tree.rglob("*.dcm")):
        dcm.rename(dcm.with_suffix(""))
    from featmammo.datasets import build_cbis_ddsm

    reference, _ = build_cbis_ddsm(tree, csv_dir=dl)
    cols = ["path", "crop_path", "roi_mask_path", "crop_paths", "roi_mask_paths"]
    monkeypatch.chdir(tmp_path)
    # relative ROOT and output, the manifest outside and inside the tree
    for out in ("c.csv", "down load/CBIS-DDSM/m.csv"):
        _cbis_cli(Path("down load") / "CBIS-DDSM", out, "--csv-dir", "down load")
        monkeypatch.chdir("/")
        back = read_manifest(tmp_path / out)
        monkeypatch.chdir(tmp_path)
        assert back[cols].values.tolist() == reference[cols].values.tolist()
        assert back["image_id"].tolist() == expected["image_id"].tolist()
        assert back["label"].tolist() == expected["label"].tolist()
    assert all(not p.endswith(".dcm") and os.path.isfile(p) for p in back["path"])
    assert (back["roi_mask_path"] != "").all()
    assert "/" not in (tmp_path / out).read_text().splitlines()[1].split(",")[1][:1]  # relative


def test_cbis_metadata_csv_variants(synth_cbis, tmp_path):
    """NBIA descriptive layout; metadata.csv with a BOM, other column spelling, '/' separators."""
    root = tmp_path / "nbia"
    rows = []
    for dcm in sorted(synth_cbis.rglob("*.dcm")):
        ds = pydicom.dcmread(dcm, stop_before_pixels=True)
        subject = dcm.parts[len(synth_cbis.parts)]
        study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        rel = Path(
            "CBIS-DDSM",
            subject,
            f"10-04-2016-DDSM-{study[-5:]}",
            f"1.000000-{ds.SeriesDescription}-{series[-5:]}",
        )
        n = sum(1 for r in rows if r["series uid"] == series) + 1
        (root / rel).mkdir(parents=True, exist_ok=True)
        shutil.copy(dcm, root / rel / f"1-{n}.dcm")
        if n == 1:
            rows.append({"series uid": series, "File_Location": "./" + rel.as_posix()})
    # a corrupt DICOM in a folder metadata.csv does not list: never read when metadata is used
    (root / "CBIS-DDSM" / "stray").mkdir()
    (root / "CBIS-DDSM" / "stray" / "1-1.dcm").write_bytes(b"junk" * 50)
    meta = pd.DataFrame(rows).to_csv(index=False)
    (root / "Metadata.CSV").write_bytes(("\ufeff" + meta).encode("utf-8"))
    for csv in synth_cbis.glob("*_set.csv"):
        shutil.copy(csv, root / csv.name)
    from featmammo.datasets import build_cbis_ddsm

    for where in (root, root / "CBIS-DDSM"):  # ROOT: the download, or its CBIS-DDSM/ folder
        df, summary = build_cbis_ddsm(where, csv_dir=root, cache=False)
        assert len(df) == 4 and summary["unresolved"] == 0
        assert summary["skipped_files"] == []  # the listed folders were enough
        assert summary["layout"] == "nbia-descriptive"
    # a metadata.csv cut short (half-downloaded): the cut row is listed, never padded, and its
    # series is found by the header scan
    cut = meta.rstrip("\n")
    (root / "Metadata.CSV").write_text(cut[: cut.rindex(",")] + "\n")
    df, summary = build_cbis_ddsm(root, csv_dir=root, cache=False)
    assert len(df) == 4 and summary["unresolved"] == 0
    reasons = {Path(s["path"]).name: s["reason"] for s in summary["skipped_files"]}
    assert "cut short" in reasons[f"Metadata.CSV: line {len(rows) + 1}"]


# --------------------------------------------------------------------------- image variants


def test_jpeg_exif_orientation_is_applied(tmp_path):
    raw = np.tile(np.arange(0, 240, 8, dtype=np.uint8), (20, 1))  # 20 x 30, smooth
    im = PILImage.fromarray(raw)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    im.save(tmp_path / "plain.jpg", quality=100)
    rotated, plain = read_image(tmp_path / "rot.jpg"), read_image(tmp_path / "plain.jpg")
    assert plain.pixels.shape == (20, 30) and plain.meta["exif_orientation"] is None
    assert rotated.pixels.shape == (30, 20) and rotated.meta["exif_orientation"] == 6
    assert (rotated.meta["rows"], rotated.meta["cols"]) == (30, 20)
    np.testing.assert_array_equal(rotated.pixels, np.rot90(plain.pixels, -1))


def test_png_tiff_variants(tmp_path):
    g = np.random.default_rng(0).integers(0, 256, (9, 7), dtype=np.uint8)
    PILImage.fromarray(np.dstack([g, np.full_like(g, 255)]), "LA").save(tmp_path / "la.png")
    PILImage.fromarray(g).convert("P").save(tmp_path / "pal.png")
    PILImage.fromarray(g > 127).save(tmp_path / "bit.png")
    PILImage.fromarray(np.dstack([g, g, g, np.full_like(g, 255)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png").pixels, g)
    u16 = np.random.default_rng(1).integers(0, 65536, (9, 7)).astype(np.uint16)
    PILImage.fromarray(u16).save(tmp_path / "g16.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png").pixels, g)
    np.testing.assert_array_equal(read_image(tmp_path / "pal.png").pixels, g)
    bit = read_image(tmp_path / "bit.png")
    np.testing.assert_array_equal(bit.pixels, (g > 127).astype(np.uint8) * 255)
    t16 = read_image(tmp_path / "g16.tif")
    assert t16.pixels.dtype == np.uint16 and t16.max_value == 65535
    np.testing.assert_array_equal(t16.pixels, u16)
    PILImage.fromarray(np.dstack([g, g]), "LA").save(tmp_path / "la_t.png")
    with pytest.raises(ImageReadError, match=r"la_t\.png: .*transparent"):
        read_image(tmp_path / "la_t.png")
    PILImage.fromarray(u16.astype(np.float32) / 65535).save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match=r"f\.tif: .*floating-point"):
        read_image(tmp_path / "f.tif")


def test_pgm_ascii_variants(tmp_path):
    (tmp_path / "long.pgm").write_text("P2\n#" + "c" * 2000 + "\n3 2\n255\n0 1 2\n3 4 255\n")
    assert read_image(tmp_path / "long.pgm").pixels.tolist() == [[0, 1, 2], [3, 4, 255]]
    (tmp_path / "one.pgm").write_text("P2 3 2 4095 0 1 2 3 4 4095")
    one = read_image(tmp_path / "one.pgm")
    assert one.max_value == 4095 and one.pixels.dtype == np.uint16
    (tmp_path / "crlf.pgm").write_bytes(b"P2\r\n3 2\r\n15\r\n0 1 2\r\n3 4 15\r\n")
    assert read_image(tmp_path / "crlf.pgm").max_value == 15
    (tmp_path / "short.pgm").write_text("P2\n3 2\n255\n0 1 2\n")
    with pytest.raises(ImageReadError, match=r"short\.pgm: truncated"):
        read_image(tmp_path / "short.pgm")


def test_dicom_without_extension_and_sigmoid_window(tmp_path):
    arr = np.random.default_rng(2).integers(0, 4096, (10, 8)).astype(np.uint16)
    p = _dicom(
        tmp_path / "IM0001",
        arr,
        BitsStored=12,
        WindowCenter=2000,
        WindowWidth=1e-20,
        VOILUTFunction="SIGMOID",
    )
    assert read_image(p).meta["format"] == "dicom"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning from exp
        win = read_image(p, windowing="window").pixels
    assert np.isfinite(win).all()
    np.testing.assert_allclose(win, np.round(win * 2) / 2, atol=1e-6)  # saturated: 0 or 1


# --------------------------------------------------------------------------- preprocess: never NaN


def test_monochrome1_8bit_is_inverted(tmp_path):
    arr = np.random.default_rng(4).integers(0, 256, (6, 5), dtype=np.uint8)
    im = read_image(_dicom(tmp_path / "m1.dcm", arr, "MONOCHROME1"))
    assert im.pixels.dtype == np.uint8 and im.max_value == 255
    np.testing.assert_array_equal(im.pixels, 255 - arr)


def test_non_finite_arrays_are_refused():
    a = np.random.default_rng(0).random((20, 20), dtype=np.float32)
    for bad in (np.nan, np.inf):
        b = a.copy()
        b[3, 4] = bad
        with pytest.raises(ImageReadError, match="1 of 400 pixels are NaN or infinite"):
            preprocess(b, PreprocessConfig(image_size=8, normalize="decimal"))


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(5)
    files = {
        "constant": _png(d / "constant.png", np.full((40, 30), 7, np.uint8)),
        "zeros16": _png(d / "zeros16.png", np.zeros((40, 30), np.uint16)),
        "1x1": _png(d / "1x1.png", np.full((1, 1), 200, np.uint8)),
        "3x200": _png(d / "3x200.png", rng.integers(0, 255, (3, 200), dtype=np.uint8)),
        "elongated": _png(d / "tall.png", rng.integers(0, 255, (1500, 2), dtype=np.uint8)),
        "mono1_8bit": _dicom(
            d / "m1.dcm", rng.integers(0, 255, (30, 20), dtype=np.uint8), "MONOCHROME1"
        ),
        "const_dicom": _dicom(
            d / "c.dcm",
            np.full((20, 20), 1000, np.uint16),
            BitsStored=12,
            WindowCenter=1000,
            WindowWidth=1,
        ),
    }
    return files


@pytest.mark.parametrize("normalize", ["backbone", "zscore", "mean", "decimal", "none"])
def test_preprocess_always_finite(odd_images, normalize):
    for name, path in odd_images.items():
        windowings = ["none", "percentile"] + (["window"] if name == "const_dicom" else [])
        for windowing in windowings:
            for resize in ("area", "bilinear", "nearest", "bicubic"):
                for crop in ("breast", "none"):
                    cfg = PreprocessConfig(
                        image_size=16,
                        normalize=normalize,
                        resize=resize,
                        crop=crop,
                        windowing=windowing,
                    )
                    x = load_and_preprocess(path, cfg)
                    assert x.shape == (3, 16, 16) and x.dtype == np.float32
                    assert np.isfinite(x).all(), (name, windowing, resize, crop)


# --------------------------------------------------------------------------- damaged files


def test_multivalued_rows_tag_is_a_typed_error(tmp_path):
    p = _dicom(tmp_path / "x.dcm", np.zeros((4, 4), np.uint8))
    ds = pydicom.dcmread(p)
    ds.Rows = [4, 4]  # VM 2: int(ds.Rows) fails deep inside
    ds.save_as(p)
    with pytest.raises(ImageReadError, match=r"x\.dcm: "):
        read_image(p)


def test_damaged_files_only_raise_image_read_error(tmp_path):
    """Truncated, bit-flipped and spliced copies of every format: each read either succeeds (then
    preprocessing is finite) or raises ImageReadError naming the file; nothing else escapes."""
    rng = np.random.default_rng(0)
    g = rng.integers(0, 255, (24, 16), dtype=np.uint8)
    sources = {}
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("TIFF", "tif")):
        buf = io.BytesIO()
        PILImage.fromarray(g).save(buf, fmt)
        sources[ext] = buf.getvalue()
    sources["pgm"] = b"P5\n16 24\n255\n" + g.tobytes()
    sources["dcm"] = _dicom(tmp_path / "src.dcm", g).read_bytes()
    n_failed = 0
    for ext, data in sources.items():
        for trial in range(24):
            d = _damaged(data, trial, rng)
            p = tmp_path / f"f{trial}.{ext}"
            p.write_bytes(bytes(d))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    x = load_and_preprocess(p, PreprocessConfig(image_size=8))
            except ImageReadError as exc:
                assert exc.path == str(p) and exc.reason
                n_failed += 1
            else:
                assert np.isfinite(x).all()
    assert n_failed > 40  # the damage is real


def test_missing_group_ids_are_named():
    from featmammo.splits import grouped_kfold

    with pytest.raises(ManifestError, match=r"row\(s\) \[2\] have no patient/group id"):
        grouped_kfold(["benign", "malignant"] * 3, ["p1", "p2", np.nan, "p4", "p5", "p6"], 2, 0)


def test_synth_expands_a_quoted_home(tmp_path, monkeypatch):
    from featmammo.cli.synth import command as synth_cmd

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(synth_cmd, ["~/syn dir", "--n", "1", "--size", "16x16", "--json"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "syn dir" / "manifest.csv").is_file() and not (tmp_path / "~").exists()
    assert len(read_manifest(tmp_path / "syn dir" / "manifest.csv")) == 1


def test_empty_laterality_cell_falls_back_to_the_header(tmp_path):
    # tissue on the right half, but the header says L: an empty manifest cell must not override it
    arr = np.zeros((40, 40), np.uint8)
    arr[5:35, 25:40] = 200
    p = _dicom(tmp_path / "l.dcm", arr, ImageLaterality="L")
    cfg = PreprocessConfig(image_size=16, crop="none", normalize="none")
    header = load_and_preprocess(p, cfg)
    for cell in ("", " ", float("nan")):
        np.testing.assert_array_equal(load_and_preprocess(p, cfg, laterality=cell), header)
    flipped = load_and_preprocess(p, cfg, laterality="R")
    np.testing.assert_array_equal(flipped, header[:, :, ::-1])


def test_damaged_ljpeg_tfrecord_and_npy_only_raise_image_read_error(tmp_path):
    """The DDSM formats get the same treatment: truncated, bit-flipped and spliced copies of an
    LJPEG (with its .ics), a TFRecord and a .npy either read (finite preprocessing) or raise one
    ImageReadError naming what was asked for (the file, or FILE#INDEX for a record)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from ljpeg_vectors import encode, phantom

    from featmammo.io import tfrecord

    rng = np.random.default_rng(1)
    img = phantom(24, 16, 12)
    ics = "filename A-0001-1\nDIGITIZER DBA 21\n"
    ics += "LEFT_CC LINES 24 PIXELS_PER_LINE 16 BITS_PER_PIXEL 12\n"
    (tmp_path / "A-0001-1.ics").write_text(ics)
    patch = rng.integers(0, 255, (12, 12), dtype=np.uint8)
    example = tfrecord.serialize_example({"label": [2], "image": [patch.tobytes()]})
    npy = io.BytesIO()
    np.save(npy, patch[None, ..., None])
    sources = {
        "LEFT_CC.LJPEG": (encode(img, 7, 12), ""),
        "tfrecords": (tfrecord.frame_record(example) * 2, "#1"),
        "npy": (npy.getvalue(), "#0"),
    }
    n_failed = 0
    for ext, (data, suffix) in sources.items():
        for trial in range(18):
            d = _damaged(data, trial, rng)
            name = f"A_0001_1.{ext}" if ext.endswith("LJPEG") else f"f{trial}.{ext}"
            p = tmp_path / name
            p.write_bytes(bytes(d))
            spec = f"{p}{suffix}"
            try:
                x = load_and_preprocess(spec, PreprocessConfig(image_size=8))
            except ImageReadError as exc:
                assert exc.path == spec and exc.reason, (exc.path, spec)
                n_failed += 1
            else:
                assert np.isfinite(x).all()
    assert n_failed > 25  # the damage is real
