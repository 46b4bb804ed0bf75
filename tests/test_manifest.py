"""Manifest reading/validation/writing/hashing and class-per-folder manifests."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage

from featmammo.datasets import (
    REQUIRED_COLUMNS,
    build_folder,
    manifest_hash,
    read_manifest,
    write_manifest,
)
from featmammo.datasets.manifest import image_ids_from_paths, read_csv_strings
from featmammo.errors import ManifestError


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.full((8, 8), value, np.uint8)).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    return [_png(tmp_path / "img" / f"{name}.png") for name in ("a", "b", "c")]


def test_minimal_manifest_derives_columns(tmp_path, images, caplog):
    csv = tmp_path / "m.csv"
    csv.write_text(
        "path,label\nimg/a.png, Benign \nimg/b.png,MALIGNANT\nimg/c.png,BENIGN_WITHOUT_CALLBACK\n"
    )
    with caplog.at_level(logging.WARNING):
        df = read_manifest(csv)
    assert list(df.columns) == REQUIRED_COLUMNS
    assert list(df["label"]) == ["benign", "malignant", "benign"]
    assert list(df["image_id"]) == ["img/a", "img/b", "img/c"]
    assert list(df["patient_id"]) == list(df["image_id"])
    assert "no patient_id" in caplog.text
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in df["path"])
    assert set(df["source"]) == {"csv"} and set(df["split"]) == {""}


def test_strings_not_na_and_stripped(tmp_path, images):
    csv = tmp_path / "m.csv"
    csv.write_text(
        "path,label,patient_id,laterality,view,split,density\n"
        "img/a.png,normal, P1 ,left,cc,Training,N/A\n"
        "img/b.png,normal,NA,R,MLO,test,\n"
    )
    df = read_manifest(csv)
    assert list(df["density"]) == ["N/A", ""]  # no NaN conversion
    assert list(df["patient_id"]) == ["P1", "NA"]
    assert list(df["laterality"]) == ["L", "R"] and list(df["view"]) == ["CC", "MLO"]
    assert list(df["split"]) == ["train", "test"]


@pytest.mark.parametrize(
    "body, match",
    [
        ("path,label\nimg/a.png,benign\nimg/b.png,cancer\n", r"line 3: unknown label 'cancer'"),
        (
            "image_id,path,label\nx,img/a.png,benign\ny,img/b.png,benign\nx,img/c.png,benign\n",
            r"line 4: duplicate image_id 'x' \(first at .*line 2\)",
        ),
        ("path,label\nimg/a.png,benign\nimg/missing.png,benign\n", r"line 3: path does not exist"),
        ("path,label\nimg/a.png,benign\n,benign\n", r"line 3: empty path"),
        ("path,diagnosis\nimg/a.png,benign\n", r"missing required column\(s\) \['label'\]"),
        ("label\nbenign\n", r"missing required column\(s\) \['path'\]"),
        ("path,label\n", r"empty manifest"),
        ("path,label,laterality\nimg/a.png,benign,up\n", r"line 2: bad laterality 'up'"),
        ("path,label,split\nimg/a.png,benign,holdout\n", r"line 2: bad split 'holdout'"),
    ],
)
def test_bad_manifests_fail_naming_the_line(tmp_path, images, body, match):
    csv = tmp_path / "m.csv"
    csv.write_text(body)
    with pytest.raises(ManifestError, match=match):
        read_manifest(csv)


def test_line_numbers_survive_multiline_cells(tmp_path, images):
    csv = tmp_path / "m.csv"
    csv.write_text('path,label,note\nimg/a.png,benign,"two\nlines"\nimg/b.png,bogus,x\n')
    with pytest.raises(ManifestError, match="line 4: unknown label 'bogus'"):
        read_manifest(csv)
    df, lines = read_csv_strings(csv)
    assert lines == [2, 4] and df.loc[0, "note"] == "two\nlines"


def test_all_problems_listed_and_check_paths_off(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("path,label\nnope1.png,benign\nnope2.png,benign\n")
    with pytest.raises(ManifestError) as exc:
        read_manifest(csv)
    assert "line 2" in str(exc.value) and "line 3" in str(exc.value)
    assert len(read_manifest(csv, check_paths=False)) == 2


def test_dataframe_input_and_unlabeled(images):
    df = pd.DataFrame({"path": [str(p) for p in images], "label": ["normal", np.nan, "benign"]})
    with pytest.raises(ManifestError, match=r"row 1: empty label"):
        read_manifest(df)
    out = read_manifest(df, require_labels=False)
    assert list(out["label"]) == ["normal", "", "benign"]
    # absolute paths: ids from the last two components, unique
    assert list(out["image_id"]) == ["img/a", "img/b", "img/c"]


def test_image_ids_unique_and_deterministic():
    ids = image_ids_from_paths(["x/a.png", "x/a.dcm", "y/a.png", "x/a.png"], None)
    assert ids == ["x/a.png", "x/a.dcm", "y/a", "x/a.png#2"]
    assert len(set(ids)) == 4
    assert image_ids_from_paths(["/data/m/x/a.png", "/other/q/b.png"], "/data/m") == [
        "x/a",
        "q/b",
    ]


def test_write_read_roundtrip_and_hash(tmp_path, images):
    df = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "path": [str(p) for p in images],
            "label": ["benign", "malignant", "normal"],
            "patient_id": ["p1", "p1", "p2"],
            "laterality": ["L", "R", ""],
            "view": ["CC", "MLO", ""],
            "split": ["train", "train", "test"],
            "source": ["folder"] * 3,
            "density": ["2", "N/A", ""],
            "roi_mask_path": [str(images[1]), "", "/elsewhere/mask.dcm"],
        }
    )
    out = tmp_path / "manifest.csv"
    write_manifest(df, out)
    assert "img/a.png" in out.read_text().splitlines()[1]  # relative inside the manifest folder
    back = read_manifest(out)
    assert ",img/b.png" in out.read_text().splitlines()[1]  # mask path relative too
    assert list(back["roi_mask_path"]) == [str(images[1]), "", "/elsewhere/mask.dcm"]
    pd.testing.assert_frame_equal(back, read_manifest(df))
    assert list(back["density"]) == ["2", "N/A", ""]
    h = manifest_hash(back)
    assert h == manifest_hash(back.iloc[::-1]) == manifest_hash(back.drop(columns="density"))
    changed = back.copy()
    changed.loc[0, "label"] = "malignant"
    assert manifest_hash(changed) != h
    with pytest.raises(ManifestError, match="missing column"):
        write_manifest(df.drop(columns="split"), tmp_path / "x.csv")


def test_one_path_convention_for_every_path_column(tmp_path, images):
    """path, *_path and ;-joined *_paths columns: relative inside the manifest folder, absolute
    outside, resolved back on read; FILE#INDEX paths are checked through FILE."""
    rec = tmp_path / "img" / "patches.tfrecords"
    rec.write_bytes(b"x")
    df = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "path": [str(images[0]), f"{rec}#7"],
            "label": ["benign", "normal"],
            "patient_id": ["p1", "p2"],
            "laterality": ["L", ""],
            "view": ["CC", ""],
            "split": ["train", "test"],
            "source": ["x", "y"],
            "overlay_path": [str(images[1]), ""],
            "roi_mask_paths": [f"{images[1]};;/elsewhere/m.png", ""],
        }
    )
    out = tmp_path / "manifest.csv"
    write_manifest(df, out)
    raw = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(raw["path"]) == ["img/a.png", "img/patches.tfrecords#7"]
    assert list(raw["overlay_path"]) == ["img/b.png", ""]
    assert list(raw["roi_mask_paths"]) == ["img/b.png;;/elsewhere/m.png", ""]
    back = read_manifest(out)  # check_paths: FILE of FILE#INDEX exists
    assert back.loc[1, "path"] == f"{rec}#7"
    assert back.loc[0, "overlay_path"] == str(images[1])
    assert back.loc[0, "roi_mask_paths"] == f"{images[1]};;/elsewhere/m.png"
    rec.unlink()
    with pytest.raises(ManifestError, match=r"line 3: path does not exist: .*patches.tfrecords$"):
        read_manifest(out)


def test_build_folder(tmp_path, monkeypatch, caplog):
    root = tmp_path / "tree"
    _png(root / "Benign" / "P_001_L_CC.png")
    _png(root / "benign" / "sub" / "P_001_RIGHT_MLO.png")
    _png(root / "MALIGNANT" / "P_002_RMLO.png")
    _png(root / "normal" / "P_003_x.png")
    (root / "normal" / "notes.txt").write_text("ignored")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        df = build_folder("tree")
    assert "no --patient-pattern" in caplog.text
    assert list(df.columns) == REQUIRED_COLUMNS and len(df) == 4
    assert all(os.path.isabs(p) for p in df["path"])
    d = df.set_index("image_id")
    assert d.loc["Benign/P_001_L_CC", "label"] == "benign"
    assert (d.loc["Benign/P_001_L_CC", "laterality"], d.loc["Benign/P_001_L_CC", "view"]) == (
        "L",
        "CC",
    )
    assert d.loc["benign/sub/P_001_RIGHT_MLO", ["laterality", "view"]].tolist() == ["R", "MLO"]
    assert d.loc["MALIGNANT/P_002_RMLO", ["label", "laterality", "view"]].tolist() == [
        "malignant",
        "R",
        "MLO",
    ]
    assert d.loc["normal/P_003_x", ["laterality", "view"]].tolist() == ["", ""]
    df = build_folder(root, patient_pattern=r"(?P<patient>P_\d+)")
    assert sorted(df["patient_id"].unique()) == ["P_001", "P_002", "P_003"]
    with pytest.raises(ManifestError, match="matches no patient id"):
        build_folder(root, patient_pattern=r"Q_\d+")


def test_build_folder_splits_and_errors(tmp_path):
    root = tmp_path / "t"
    _png(root / "train" / "benign" / "1.png")
    _png(root / "test" / "malignant" / "2.png")
    df = build_folder(root)
    assert dict(zip(df["image_id"], df["split"], strict=True)) == {
        "train/benign/1": "train",
        "test/malignant/2": "test",
    }
    _png(root / "misc" / "3.png")
    with pytest.raises(ManifestError, match="neither a label"):
        build_folder(root)
    (tmp_path / "empty" / "benign").mkdir(parents=True)
    with pytest.raises(ManifestError, match="no image found"):
        build_folder(tmp_path / "empty")


def test_cli_folder(tmp_path):
    from featmammo.cli.manifest import command

    root = tmp_path / "t"
    _png(root / "benign" / "P1_a.png")
    _png(root / "malignant" / "P2_a.dcm.png")
    out = tmp_path / "m.csv"
    res = CliRunner().invoke(
        command, ["folder", str(root), "-o", str(out), "--patient-pattern", r"P\d"]
    )
    assert res.exit_code == 0, res.output
    df = read_manifest(out)
    assert sorted(df["patient_id"]) == ["P1", "P2"]
    assert "Leakage audit" in res.output


def test_labels_sits_below_the_datasets_layer():
    """featmammo.labels (class schemes) imports nothing from featmammo.datasets; the manifest
    takes LABELS and the label spellings from it."""
    import subprocess
    import sys

    code = (
        "import sys, featmammo.labels as L\n"
        "assert not [m for m in sys.modules if m.startswith('featmammo.datasets')], 'datasets'\n"
        "from featmammo.datasets.manifest import LABELS, normalize_label\n"
        "assert LABELS is L.LABELS and normalize_label is L.normalize_label\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_commands_invoked_alone_keep_the_h_help_option():
    """Tests (and Python users) invoke `featmammo.cli.manifest.command` & co. directly; click
    then caches each command's help option from that context: without the group's own
    help_option_names, `-h` vanished from `featmammo manifest mias --help`, `featmammo cache
    info --help`... for the rest of the process (and the generated docs/cli.md differed)."""
    from click.testing import CliRunner

    from featmammo.cli import audit, cache, manifest, synth
    from featmammo.cli.main import cli

    runner = CliRunner()
    for command, args in (
        (manifest.command, ["mias", "--help"]),
        (cache.command, ["info", "--help"]),
        (audit.command, ["--help"]),
        (synth.command, ["--help"]),
    ):
        assert runner.invoke(command, args).exit_code == 0
    for args in (["manifest", "mias"], ["cache", "info"], ["audit"], ["synth"], ["manifest"]):
        res = runner.invoke(cli, [*args, "--help"])
        assert res.exit_code == 0 and "-h, --help" in res.output, args
        assert runner.invoke(cli, [*args, "-h"]).exit_code == 0, args
