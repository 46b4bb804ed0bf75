"""Lesion masks for every set with lesion geometry (issue 17): MIAS circles (origin bottom-left),
INbreast XML outlines (Apple plist, "(x, y)" points), VinDr finding boxes. Each is drawn at the
image's size, referenced in roi_mask_path / roi_mask_paths, and usable by --roi crop|patch;
MIAS laterality comes from the file number."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from pandas.api.types import is_string_dtype
from test_datasets_sets import INBREAST_CSV, VINDR_CSV, _dicom, _write
from test_datasets_sets import _mias as _mias_tree

from featmammo.datasets.inbreast import build_inbreast, read_rois
from featmammo.datasets.manifest import check_roi_masks, read_manifest
from featmammo.datasets.masks import box_mask, disk_mask, polygon_mask
from featmammo.datasets.mias import build_mias
from featmammo.datasets.vindr import build_vindr
from featmammo.errors import ManifestError
from featmammo.io import read_image
from featmammo.preprocess import PreprocessConfig, prepare

CROP = PreprocessConfig(roi="crop", image_size=16, crop="none", canonical_side=False)


def _box(mask) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())


def _crop_is_the_lesion(mask_path, shape, lesion_box):
    """An image bright exactly where the lesion is: --roi crop through the written mask sees
    only the lesion."""
    y0, y1, x0, x1 = lesion_box
    image = np.zeros(shape, np.uint16)
    image[y0 : y1 + 1, x0 : x1 + 1] = 4000
    mask = read_image(mask_path).pixels
    assert mask.shape == shape
    region = prepare(image, CROP, laterality="L", roi_mask=mask > 0).pixels
    assert region.min() == region.max() == 4000


# --------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------
def test_drawing_primitives():
    m = box_mask([(2.5, 1.0, 4.0, 3.2)], (8, 8))
    assert _box(m) == (1, 3, 2, 3)  # floor(min) .. ceil(max) - 1
    d = disk_mask([(4, 5, 2)], (10, 10))
    assert _box(d) == (3, 7, 2, 6) and d[5, 4] == 255 and d[3, 2] == 0
    p = polygon_mask([[(1, 1), (5, 1), (5, 4), (1, 4)], [(8, 8)]], (12, 12), point_radius=1)
    assert _box(p[:6]) == (1, 4, 1, 5) and _box(p[6:]) == (1, 3, 7, 9)  # a point -> a disk


# --------------------------------------------------------------------------------------------
# mini-MIAS
# --------------------------------------------------------------------------------------------
MIAS_INFO = """REFNUM BG CLASS SEVERITY X Y RADIUS
mdb001 G CIRC B 20 10 5
mdb002 G NORM
mdb003 F CALC B
mdb003 F CALC M 40 50 3
"""


def _mias(root, info=MIAS_INFO, size=(64, 48)):
    return _mias_tree(root, info, ("mdb001", "mdb002", "mdb003"), size)


def test_mias_laterality_view_and_numeric_geometry(tmp_path):
    df, summary = build_mias(_mias(tmp_path / "m"))
    by = df.set_index("image_id")
    # Info.txt: even file numbers are left breasts, odd ones right; all films MLO
    assert by.loc["mdb001", "laterality"] == "R" and by.loc["mdb002", "laterality"] == "L"
    assert set(df["view"]) == {"MLO"} and "even file numbers are left" in summary["notes"][0]
    assert by.loc["mdb001", "exam_id"] == "mdb001-002"
    # the primary abnormality's numbers in x/y/radius (the malignant one), all in circles
    assert (by.loc["mdb003", "x"], by.loc["mdb003", "radius"]) == ("40", "3")
    assert by.loc["mdb003", "circles"] == ";40 50 3"
    back = read_manifest(_saved(df, summary, tmp_path / "mias.csv"))
    assert back["x"].dtype == "Int64" and back["radius"].dtype == "Int64"
    assert back.set_index("image_id").loc["mdb001", "y"] == 10
    assert all(is_string_dtype(back[c]) for c in ("laterality", "exam_id", "circles"))


def _saved(df, summary, out):
    from featmammo.datasets.base import save

    save(df, summary, out)
    return out


def test_mias_circles_become_masks_with_y_flipped(tmp_path):
    df, summary = build_mias(_mias(tmp_path / "m"), mask_dir=tmp_path / "masks")
    by = df.set_index("image_id")
    mask = read_image(by.loc["mdb001", "roi_mask_path"]).pixels
    # centre (x 20, y 10) with the origin at the bottom-left of a 64-row film: row 63 - 10 = 53
    assert mask.shape == (64, 48) and mask[53, 20] == 255 and mask[10, 20] == 0
    assert _box(mask) == (48, 58, 15, 25)
    _crop_is_the_lesion(by.loc["mdb001", "roi_mask_path"], (64, 48), (48, 58, 15, 25))
    # mdb003: the first line has no coordinates (listed), the malignant one decides the crop
    paths = by.loc["mdb003", "roi_mask_paths"].split(";")
    assert paths[0] == "" and by.loc["mdb003", "roi_mask_path"] == paths[1]
    (err,) = summary["mask_errors"]
    assert err["image_id"] == "mdb003" and "Info.txt line 4" in err["reason"]
    assert by.loc["mdb002", "roi_mask_path"] == "" and summary["masks_written"] == 2
    check_roi_masks(df, CROP)  # --roi crop accepts the manifest
    _, again = build_mias(tmp_path / "m", mask_dir=tmp_path / "masks")
    assert again["masks_reused"] == 2 and again["masks_written"] == 0


def test_a_mask_is_reused_only_for_the_same_geometry_whatever_the_mtimes(tmp_path):
    """Masks are reused by what they were drawn from, not by file times: a corrected Info.txt
    copied in with its old mtime (``cp -p``, ``rsync -t``, ``tar x``) redraws the mask, and a
    film whose PGM changed size (the y flip depends on its height) too."""
    import os

    root = _mias(tmp_path / "m")
    df, _ = build_mias(root, mask_dir=tmp_path / "masks")
    mask_path = df.set_index("image_id").loc["mdb001", "roi_mask_path"]
    assert _box(read_image(mask_path).pixels) == (48, 58, 15, 25)
    old = os.stat(root / "Info.txt").st_mtime - 3600
    _write(
        root / "Info.txt", MIAS_INFO.replace("mdb001 G CIRC B 20 10 5", "mdb001 G CIRC B 30 40 4")
    )
    os.utime(root / "Info.txt", (old, old))  # older than the mask, as cp -p keeps it
    df, summary = build_mias(root, mask_dir=tmp_path / "masks")
    assert summary["masks_written"] == 1 and summary["masks_reused"] == 1
    assert _box(read_image(mask_path).pixels) == (19, 27, 26, 34)  # row 63 - 40 = 23
    # the same Info.txt, a taller film: the flipped row moves with the height
    from PIL import Image as PILImage

    PILImage.fromarray(np.full((80, 48), 7, np.uint8)).save(root / "mdb001.pgm")
    _, summary = build_mias(root, mask_dir=tmp_path / "masks")
    assert summary["masks_written"] == 1
    mask = read_image(mask_path).pixels
    assert mask.shape == (80, 48) and _box(mask) == (35, 43, 26, 34)  # row 79 - 40 = 39


# --------------------------------------------------------------------------------------------
# INbreast
# --------------------------------------------------------------------------------------------
PLIST = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Images</key>
  <array>
    <dict>
      <key>ImageHeight</key><integer>64</integer>
      <key>ImageWidth</key><integer>48</integer>
      <key>ImageIndex</key><integer>0</integer>
      <key>NumberOfROIs</key><integer>3</integer>
      <key>ROIs</key>
      <array>
        <dict>
          <key>Name</key><string>Mass</string>
          <key>NumberOfPoints</key><integer>4</integer>
          <key>Point_mm</key><array><string>(0.7, 1.4)</string></array>
          <key>Point_px</key>
          <array>
            <string>(10.5, 20.25)</string>
            <string>(18.0, 20.0)</string>
            <string>(18, 30)</string>
            <string>(10, 30.4)</string>
          </array>
        </dict>
        <dict>
          <key>Name</key><string>Calcification</string>
          <key>NumberOfPoints</key><integer>1</integer>
          <key>Point_px</key><array><string>(40.0, 5.0)</string></array>
        </dict>
        <dict>
          <key>Name</key><string>Distortion</string>
          <key>NumberOfPoints</key><integer>3</integer>
          <key>Point_px</key>
          <array><string>(2, 50)</string><string>(8, 50)</string><string>(5, 60)</string></array>
        </dict>
      </array>
    </dict>
  </array>
</dict>
</plist>
"""


def _inbreast(root, table=INBREAST_CSV):
    pixels = np.zeros((64, 48), np.uint16).tobytes()
    for fid, h, lat, view in [
        ("22678622", "61b13c59bcba149e", "R", "CC"),
        ("22678646", "61b13c59bcba149e", "R", "ML"),
        ("20586908", "6bd0ad2d2f2b1de5", "L", "CC"),
    ]:
        _dicom(
            root / "AllDICOMs" / f"{fid}_{h}_MG_{lat}_{view}_ANON.dcm",
            Rows=64,
            Columns=48,
            PixelData=pixels,
        )
    _write(root / "AllXML" / "22678646.xml", PLIST)
    _write(root / "AllXML" / "20586908.xml", PLIST.replace("(40.0, 5.0)", "(40.0; 5.0)"))
    _write(root / "INbreast.csv", table)
    return root


def test_inbreast_outlines_become_masks_per_kind(tmp_path):
    root = _inbreast(tmp_path / "inb")
    rois = read_rois(root / "AllXML" / "22678646.xml")
    assert [(r["name"], r["kind"], len(r["points"])) for r in rois] == [
        ("Mass", "mass", 4),
        ("Calcification", "calcification", 1),
        ("Distortion", "other", 3),
    ]
    assert rois[0]["points"][0].tolist() == [10.5, 20.25]
    df, summary = build_inbreast(root, mask_dir=tmp_path / "masks")
    row = df.set_index("image_id").loc["22678646"]
    assert row["roi_kinds"] == "mass;calcification;other"
    paths = row["roi_mask_paths"].split(";")
    assert row["roi_mask_path"] == paths[0] and paths[0].endswith("22678646.mass.png")
    mass = read_image(paths[0]).pixels
    assert mass.shape == (64, 48) and _box(mass) == (20, 30, 10, 18)  # x = column, y = row
    calc = read_image(paths[1]).pixels
    assert _box(calc) == (2, 8, 37, 43)  # one point -> a disk of POINT_RADIUS (3) pixels
    _crop_is_the_lesion(paths[0], (64, 48), (20, 30, 10, 18))
    # an unparsable point: that image keeps its row, without masks, and the reason is listed
    bad = df.set_index("image_id").loc["20586908"]
    assert bad["roi_mask_path"] == "" and bad["label"] == "benign"
    (err,) = summary["mask_errors"]
    assert err["image_id"] == "20586908" and "'(40.0; 5.0)', not '(x, y)'" in err["reason"]
    assert summary["roi_names"] == {"Mass": 1, "Calcification": 1, "Distortion": 1}
    assert summary["images_with_masks"] == 1
    (tmp_path / "junk.xml").write_text("<plist><dict><key>x</key>")
    with pytest.raises(ManifestError, match="junk.xml: not a readable INbreast XML"):
        read_rois(tmp_path / "junk.xml")


# --------------------------------------------------------------------------------------------
# VinDr-Mammo
# --------------------------------------------------------------------------------------------
FINDINGS = """image_id,study_id,series_id,laterality,view_position,height,width,breast_birads,\
breast_density,finding_categories,finding_birads,xmin,ymin,xmax,ymax,split
i3,s1,se1,R,CC,64,48,BI-RADS 4,DENSITY C,['Mass'],BI-RADS 3,5.0,6.0,9.5,12.0,training
i3,s1,se1,R,CC,64,48,BI-RADS 4,DENSITY C,['Suspicious Calcification'],BI-RADS 4,30.2,40.0,36.0,\
44.9,training
i1,s1,se1,L,CC,64,48,BI-RADS 1,DENSITY C,['No Finding'],,,,,,training
i4,s2,se2,L,CC,64,48,BI-RADS 3,DENSITY B,['Mass'],BI-RADS 3,60.0,70.0,80.0,90.0,test
"""


def _vindr(root):
    pixels = np.zeros((64, 48), np.uint16).tobytes()
    for study, image in [("s1", "i1"), ("s1", "i2"), ("s1", "i3"), ("s2", "i4")]:
        _dicom(root / "images" / study / f"{image}.dicom", Rows=64, Columns=48, PixelData=pixels)
    _write(root / "breast-level_annotations.csv", VINDR_CSV.replace("3518,2800", "64,48"))
    _write(root / "finding_annotations.csv", FINDINGS)
    return root


def test_vindr_finding_boxes_become_masks(tmp_path):
    df, summary = build_vindr(_vindr(tmp_path / "v"), mask_dir=tmp_path / "masks")
    by = df.set_index("image_id")
    assert by.loc["i3", "exam_id"] == "s1" and by.loc["i3", "n_boxes"] == "2"
    paths = by.loc["i3", "roi_mask_paths"].split(";")
    # the BI-RADS 4 finding decides the crop, the BI-RADS 3 one follows
    assert by.loc["i3", "roi_mask_path"] == paths[0]
    assert _box(read_image(paths[0]).pixels) == (40, 44, 30, 35)
    assert _box(read_image(paths[1]).pixels) == (6, 11, 5, 9)
    _crop_is_the_lesion(paths[0], (64, 48), (40, 44, 30, 35))
    assert by.loc["i1", "roi_mask_path"] == "" and by.loc["i1", "n_boxes"] == "0"
    (err,) = summary["mask_errors"]  # i4's box lies outside its 64 x 48 image
    assert err["image_id"] == "i4" and "outside the 64x48 image" in err["reason"]
    assert summary["finding_boxes"] == 3 and summary["masks_written"] == 2


def test_cli_writes_masks_beside_the_manifest_for_each_set(tmp_path):
    from featmammo.cli.manifest import command

    runner = CliRunner()
    for name, root in [
        ("mias", _mias(tmp_path / "mias")),
        ("inbreast", _inbreast(tmp_path / "inb")),
        ("vindr", _vindr(tmp_path / "vindr")),
    ]:
        out = tmp_path / "out" / f"{name}.csv"
        res = runner.invoke(command, [name, str(root), "-o", str(out)])
        assert res.exit_code == 0, (name, res.output)
        assert f"masks      {tmp_path / 'out' / (name + '.masks')}" in res.output
        assert f"{name}.masks/" in out.read_text()  # relative: inside the manifest's folder
        df = read_manifest(out)
        check_roi_masks(df, CROP)
        masks = [p for p in df["roi_mask_path"] if p]
        assert masks and all(read_image(p).pixels.any() for p in masks)
        res = runner.invoke(command, [name, str(root), "-o", str(out), "--no-masks"])
        assert res.exit_code == 0 and set(read_manifest(out)["roi_mask_path"]) == {""}


def test_roi_crop_runs_through_extract_on_each_set(tmp_path, monkeypatch):
    """--roi crop end to end (random weights, 64 px) on the three sets merged into one
    manifest: every row with a mask is extracted."""
    pytest.importorskip("torch")
    from featmammo.datasets.base import save
    from featmammo.datasets.merge import merge_manifests
    from featmammo.extract import extract
    from featmammo.store import open as open_store

    monkeypatch.setenv("FEATMAMMO_CACHE", str(tmp_path / "cache"))
    parts = []
    for name, build, root in [
        ("mias", build_mias, _mias(tmp_path / "mias")),
        ("inbreast", build_inbreast, _inbreast(tmp_path / "inb")),
        ("vindr", build_vindr, _vindr(tmp_path / "vindr")),
    ]:
        df, summary = build(root, mask_dir=tmp_path / "out" / f"{name}.masks")
        parts.append(save(df[df["roi_mask_path"] != ""], summary, tmp_path / "out" / f"{name}.csv"))
    merged, summary = merge_manifests([p["manifest"] for p in parts], prefix_ids=True)
    assert set(merged["source"]) == {"mias", "inbreast", "vindr-mammo"} and len(merged) == 4
    save(merged, summary, tmp_path / "out" / "all.csv")
    s = extract(
        tmp_path / "out" / "all.csv", tmp_path / "all.h5", backbones=["alexnet"],
        weights="random", preprocess=PreprocessConfig(roi="crop", image_size=64), threads=1,
        device="cpu", batch_size=8,
    )  # fmt: skip
    assert s.n_failed == 0 and s.n_done == len(merged), s.failures
    with open_store(tmp_path / "all.h5") as st:
        assert st.done("alexnet").sum() == len(merged)
