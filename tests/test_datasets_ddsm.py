"""Original DDSM manifests on a tiny tree written here (cases/<type>/<volume>/caseNNNN with .ics,
.LJPEG, .OVERLAY, some gzipped, one LJPEG missing): labels and their options, columns, overlay
outlines as ROI masks usable by roi=crop, and broken files listed, never a crash."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from featmammo.datasets.ddsm import build_ddsm
from featmammo.datasets.ddsm_overlay import outline_mask, read_overlay
from featmammo.datasets.manifest import read_manifest
from featmammo.errors import ConfigError, ManifestError

pytest.importorskip("featmammo.io.ddsm")

SQUARE = "10 10 2 2 2 2 4 4 4 4 6 6 6 6 0 0 0 0 #"  # x 10..14, y 10..14: 25 pixels


def _ics(case: str, views: dict[str, bool], digitizer="LUMISYS LASER") -> str:
    lines = [
        "",
        "ics_version 1.0",
        f"filename {case}",
        "DATE_OF_STUDY 2 7 95",
        "PATIENT_AGE 62  ",
        "DENSITY 3",
        "DATE_DIGITIZED 7 22 1997",
        f"DIGITIZER {digitizer}",
        "SELECTED",
    ]
    for view, overlay in views.items():
        lines.append(
            f"{view} LINES 40 PIXELS_PER_LINE 30 BITS_PER_PIXEL 12 RESOLUTION 50.0 "
            + ("OVERLAY" if overlay else "NON_OVERLAY")
        )
    return "\n".join(lines) + "\n"


def _overlay(*abnormalities: tuple[str, str]) -> str:
    out = [f"TOTAL_ABNORMALITIES {len(abnormalities)}"]
    for i, (lesion, pathology) in enumerate(abnormalities, start=1):
        out += [
            f"ABNORMALITY {i}",
            f"LESION_TYPE {lesion}",
            "ASSESSMENT 4",
            f"SUBTLETY {i + 2}",
            f"PATHOLOGY {pathology}",
            "TOTAL_OUTLINES 1",
            "BOUNDARY",
            # the chain code may wrap over two lines
            SQUARE[:14] if i == 1 else SQUARE,
        ]
        if i == 1:
            out.append(SQUARE[14:])
    return "\n".join(out) + "\n"


def _put(path, text_or_bytes, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text_or_bytes.encode() if isinstance(text_or_bytes, str) else text_or_bytes
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


LJPEG = b"\xff\xd8not decoded by the manifest builder\xff\xd9"


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "DDSM"
    cases = root / "cases"
    n = cases / "normals" / "normal_01" / "case0002"
    _put(
        n / "A-0002-1.ics",
        _ics(
            "A-0002-1",
            dict.fromkeys(("LEFT_CC", "LEFT_MLO", "RIGHT_CC", "RIGHT_MLO"), False),
            "DBA 21",
        ),
    )
    for v in ("LEFT_CC", "LEFT_MLO", "RIGHT_CC"):  # RIGHT_MLO missing
        _put(n / f"A_0002_1.{v}.LJPEG", LJPEG)
    c = cases / "cancers" / "cancer_05" / "case1465"
    _put(
        c / "C-1465-1.ics",
        _ics("C-1465-1", {"LEFT_CC": True, "LEFT_MLO": True, "RIGHT_CC": False}),
        gz=True,
    )
    _put(c / "C_1465_1.LEFT_CC.LJPEG", LJPEG)
    _put(c / "C_1465_1.LEFT_MLO.LJPEG", LJPEG)
    _put(c / "C_1465_1.RIGHT_CC.LJPEG", LJPEG, gz=True)
    _put(
        c / "C_1465_1.LEFT_CC.OVERLAY",
        _overlay(
            ("CALCIFICATION TYPE PLEOMORPHIC DISTRIBUTION CLUSTERED", "BENIGN"),
            ("MASS SHAPE IRREGULAR MARGINS SPICULATED", "MALIGNANT"),
        ),
    )
    _put(
        c / "C_1465_1.LEFT_MLO.OVERLAY",
        _overlay(("MASS SHAPE OVAL MARGINS CIRCUMSCRIBED", "UNPROVEN")),
    )
    b = cases / "benign_without_callbacks" / "bwc_01" / "case3000"
    _put(b / "D-3000-1.ics", _ics("D-3000-1", {"RIGHT_MLO": True}, "HOWTEK 43.5"))
    _put(b / "D_3000_1.RIGHT_MLO.LJPEG", LJPEG)
    _put(
        b / "D_3000_1.RIGHT_MLO.OVERLAY",
        _overlay(("MASS SHAPE ROUND MARGINS OBSCURED", "BENIGN_WITHOUT_CALLBACK")),
        gz=True,
    )
    # a case folder without its .ics
    _put(cases / "benigns" / "benign_01" / "case0100" / "B_0100_1.LEFT_CC.LJPEG", LJPEG)
    return root


def test_labels_columns_and_listed_problems(tree, tmp_path):
    df, summary = build_ddsm(tree, mask_dir=tmp_path / "masks")
    by = df.set_index("image_id")
    assert set(by.index) == {
        "A_0002_1.LEFT_CC",
        "A_0002_1.LEFT_MLO",
        "A_0002_1.RIGHT_CC",
        "C_1465_1.LEFT_CC",
        "D_3000_1.RIGHT_MLO",
    }
    a = by.loc["A_0002_1.LEFT_CC"]
    assert (a["label"], a["patient_id"], a["laterality"], a["view"]) == (
        "normal",
        "A-0002-1",
        "L",
        "CC",
    )
    assert (a["institution"], a["digitizer"], a["density"], a["age"]) == ("A", "DBA 21", "3", "62")
    assert a["case_type"] == "normals" and a["volume"] == "normal_01" and a["lines"] == "40"
    m = by.loc["C_1465_1.LEFT_CC"]
    assert m["label"] == "malignant" and m["pathology"] == "BENIGN;MALIGNANT"
    assert m["abnormality_type"] == "mass;calcification" and m["subtlety"] == "3;4"
    assert m["lesion_type"].startswith("CALCIFICATION TYPE PLEOMORPHIC")
    assert by.loc["D_3000_1.RIGHT_MLO", "label"] == "benign"  # BENIGN_WITHOUT_CALLBACK
    assert set(df["split"]) == {""} and set(df["source"]) == {"ddsm"}
    # unverified (no overlay in a cancer case) and UNPROVEN views: left out, listed
    excluded = {e["image_id"]: e["reason"] for e in summary["excluded"]}
    assert set(excluded) == {"C_1465_1.RIGHT_CC", "C_1465_1.LEFT_MLO"}
    # missing LJPEG and a case folder without .ics: unresolved with reasons
    assert summary["missing_ljpeg"] == 1
    assert summary["unresolved_reasons"] == {"LJPEG missing": 1, "no .ics": 1}
    ids = {u["image_id"] for u in summary["unresolved_rows"]}
    assert ids == {"A_0002_1.RIGHT_MLO", "B_0100_1.LEFT_CC"}
    assert len(summary["gzipped"]) == 3
    assert summary["case_types"] == {
        "benign_without_callbacks": 1,
        "benigns": 1,
        "cancers": 1,
        "normals": 1,
    }


def test_options_unverified_and_unproven(tree):
    df, summary = build_ddsm(tree, unverified_views="normal", unproven="malignant")
    by = df.set_index("image_id")
    assert by.loc["C_1465_1.RIGHT_CC", "label"] == "normal"
    assert by.loc["C_1465_1.RIGHT_CC", "path"].endswith(".LJPEG.gz")  # gzipped: a row
    assert by.loc["C_1465_1.LEFT_MLO", "label"] == "malignant"
    assert "UNPROVEN -> malignant" in by.loc["C_1465_1.LEFT_MLO", "label_rule"]
    assert summary["excluded"] == [] and by.loc["C_1465_1.LEFT_CC", "roi_mask_path"] == ""


def test_case_types_option_keeps_only_those_volumes(tree):
    df, summary = build_ddsm(tree, case_types=["normals"])
    assert set(df["label"]) == {"normal"} and len(df) == 3
    assert summary["cases_skipped"] == 3 and summary["case_types"] == {"normals": 1}
    assert summary["unresolved_reasons"] == {"LJPEG missing": 1}
    with pytest.raises(ConfigError, match="case_types"):
        build_ddsm(tree, case_types=["normal"])


def test_overlay_masks_usable_for_roi_crop(tree, tmp_path):
    from featmammo.io import read_image
    from featmammo.preprocess import PreprocessConfig, prepare

    df, summary = build_ddsm(tree, mask_dir=tmp_path / "masks")
    row = df.set_index("image_id").loc["C_1465_1.LEFT_CC"]
    paths = row["roi_mask_paths"].split(";")
    assert len(paths) == 2 and row["roi_mask_path"] == paths[1]  # the malignant lesion decides
    mask = read_image(row["roi_mask_path"]).pixels
    assert mask.shape == (40, 30)  # LINES x PIXELS_PER_LINE
    ys, xs = np.nonzero(mask)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 14, 10, 14) and len(ys) == 25
    assert summary["masks_written"] == 3
    image = np.zeros((40, 30), np.uint16)
    image[10:15, 10:15] = 4000  # the lesion the overlay outlines
    cfg = PreprocessConfig(roi="crop", image_size=16, crop="none", canonical_side=False)
    region = prepare(image, cfg, laterality="L", roi_mask=mask > 0).pixels
    assert region.shape == (16, 16) and region.min() == region.max() == 4000
    _, again = build_ddsm(tree, mask_dir=tmp_path / "masks")
    assert again["masks_reused"] == 3 and again["masks_written"] == 0


def test_a_replaced_overlay_redraws_its_mask_even_when_older(tree, tmp_path):
    """An overlay replaced by a corrected copy that keeps its old mtime (cp -p) must not leave
    the mask of the old outline in place (masks used to be reused when newer than the overlay)."""
    import os

    df, _ = build_ddsm(tree, mask_dir=tmp_path / "masks")
    row = df.set_index("image_id").loc["C_1465_1.LEFT_CC"]
    overlay = Path(row["overlay_path"])
    before = {p: _mask_box(p) for p in row["roi_mask_paths"].split(";")}
    st = os.stat(overlay)
    text = overlay.read_text()
    assert "10 10 " in text
    overlay.write_text(text.replace("10 10 ", "3 20 "))
    os.utime(overlay, ns=(st.st_atime_ns, st.st_mtime_ns - 10**10))  # older than the masks
    df, summary = build_ddsm(tree, mask_dir=tmp_path / "masks")
    after = {p: _mask_box(p) for p in row["roi_mask_paths"].split(";")}
    assert after != before and summary["masks_written"] >= 1
    assert (20, 3) in {(b[0], b[2]) for b in after.values()}  # the new outline's corner


def _mask_box(path):
    from featmammo.io import read_image

    ys, xs = np.nonzero(read_image(path).pixels)
    return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())


def test_overlay_parser_and_bad_overlays(tmp_path):
    p = _put(tmp_path / "x.OVERLAY", _overlay(("MASS SHAPE ROUND", "MALIGNANT")))
    (a,) = read_overlay(p)
    assert a["abnormality_type"] == "mass" and a["outlines"][0]["points"].shape == (17, 2)
    assert outline_mask(a["outlines"], (20, 20)).sum() == 25 * 255
    bad = _put(tmp_path / "bad.OVERLAY", _overlay(("MASS", "MAYBE")))
    with pytest.raises(ManifestError, match=r"bad.OVERLAY: line 6: unknown PATHOLOGY 'MAYBE'"):
        read_overlay(bad)
    chain = _put(
        tmp_path / "chain.OVERLAY", _overlay(("MASS", "BENIGN")).replace("6 6 6 6", "6 9 6 6")
    )
    with pytest.raises(ManifestError, match="chain-code direction 9 is not 0-7"):
        read_overlay(chain)


def _cut_after(text: str, marker: str, keep: int = 0) -> str:
    return text[: text.index(marker) + keep]


@pytest.mark.parametrize(
    "cut, match",
    [
        # cut before the second (malignant) abnormality: its benign calcification alone used to
        # label the view benign
        (lambda t: _cut_after(t, "ABNORMALITY 2"), "declares 2 abnormalities, holds 1"),
        # cut inside the last chain code (no '#'): a partial outline used to become the mask
        (lambda t: t[: t.rindex("#") - 4], "chain code has no closing '#'"),
        # an empty overlay (a failed download) used to be "UNPROVEN pathology only"
        (lambda t: "", "no ABNORMALITY"),
        # cut after the BOUNDARY of an abnormality that announces a CORE too
        (
            lambda t: t.replace("TOTAL_OUTLINES 1", "TOTAL_OUTLINES 2")[: t.rindex("#") + 1],
            "declares 2 outlines, holds 1",
        ),
    ],
)
def test_an_overlay_cut_short_is_a_listed_view_not_a_label(tree, cut, match):
    overlay = next(tree.rglob("C_1465_1.LEFT_CC.OVERLAY"))
    overlay.write_text(cut(overlay.read_text()))
    with pytest.raises(ManifestError, match=match) as info:
        read_overlay(overlay)
    assert "cut short" in str(info.value) and str(overlay) in str(info.value)
    df, summary = build_ddsm(tree)
    assert "C_1465_1.LEFT_CC" not in set(df["image_id"])
    (row,) = [u for u in summary["unresolved_rows"] if u["image_id"] == "C_1465_1.LEFT_CC"]
    assert match in row["reason"] and row["where"] == str(overlay)


def _corrupt_deflate(path):
    """``path``'s bytes gzipped, then a byte inside the deflate stream flipped: the gzip header is
    intact, so only zlib sees the damage (it raises ``zlib.error``, not an OSError)."""
    raw = bytearray(gzip.compress(path.read_bytes() * 3))
    raw[len(raw) // 2] ^= 0xFF
    raw[12] ^= 0x55
    gz = path.with_name(path.name + ".gz")
    gz.write_bytes(bytes(raw))
    path.unlink()
    return gz


def test_corrupt_deflate_in_side_files_is_named_and_listed(tree):
    """A .ics.gz or .OVERLAY.gz with a damaged deflate stream: a ManifestError naming the file
    from the readers, and one listed case/view from the builder, which finishes."""
    import zlib

    from featmammo.io.ddsm import read_ics

    ics = _corrupt_deflate(next(tree.rglob("A-0002-1.ics")))
    ov = _corrupt_deflate(next(tree.rglob("C_1465_1.LEFT_CC.OVERLAY")))
    for reader, path in ((read_ics, ics), (read_overlay, ov)):
        with pytest.raises(ManifestError, match=r"corrupt gzip data") as info:
            reader(path)
        assert str(path) in str(info.value) and not isinstance(info.value, zlib.error)
    df, summary = build_ddsm(tree)
    rows = {u["image_id"]: u for u in summary["unresolved_rows"]}
    assert "corrupt gzip data" in rows["C_1465_1.LEFT_CC"]["reason"]
    assert rows["C_1465_1.LEFT_CC"]["where"] == str(ov)
    assert rows["A_0002_1.LEFT_CC"]["where"] == str(ics)
    assert summary["unresolved_reasons"]["unreadable overlay"] == 1
    assert summary["unresolved_reasons"]["unreadable .ics"] == 3
    assert set(df["image_id"]) == {"D_3000_1.RIGHT_MLO"}


@pytest.mark.parametrize(
    "old, new, match",
    [
        ("PATHOLOGY BENIGN\n", "PATHOLOGY MAYBE\n", r"line \d+: unknown PATHOLOGY 'MAYBE'"),
        ("6 6 6 6", "6 9 6 6", r"line \d+: chain-code direction 9 is not 0-7"),
        ("6 6 6 6", "6 x 6 6", r"line \d+: malformed chain code"),
    ],
)
def test_a_bad_overlay_is_one_listed_view_not_a_stop(tree, old, new, match):
    ov = next(tree.rglob("C_1465_1.LEFT_CC.OVERLAY"))
    ov.write_text(ov.read_text().replace(old, new, 1))
    df, summary = build_ddsm(tree)
    (bad,) = [u for u in summary["unresolved_rows"] if u["image_id"] == "C_1465_1.LEFT_CC"]
    assert bad["where"] == str(ov)
    assert re.search(match, bad["reason"]) and "LEFT_CC.OVERLAY" in bad["reason"]
    assert "C_1465_1.LEFT_CC" not in set(df["image_id"]) and len(df) == 4


def test_an_ics_cut_inside_its_last_view_line_lists_that_view(tree):
    """A truncated .ics whose last view line stops mid-number ('30' of '3024'): that view is
    listed (its geometry is not trusted), the case's other views are built."""
    from featmammo.io.ddsm import read_ics

    ics = next(tree.rglob("A-0002-1.ics"))
    text = ics.read_text().rstrip("\n")
    ics.write_text(text[: text.rindex("PIXELS_PER_LINE 30") + len("PIXELS_PER_LINE 3")])
    info = read_ics(ics)
    assert "RIGHT_MLO" not in info["views"] and "RIGHT_MLO" in info["cut_views"]
    _put(ics.parent / "A_0002_1.RIGHT_MLO.LJPEG", LJPEG)
    df, summary = build_ddsm(tree)
    rows = {u["image_id"]: u for u in summary["unresolved_rows"]}
    assert "ends inside the RIGHT_MLO line" in rows["A_0002_1.RIGHT_MLO"]["reason"]
    assert summary["unresolved_reasons"][".ics cut short"] == 1
    assert {"A_0002_1.LEFT_CC", "A_0002_1.RIGHT_CC"} <= set(df["image_id"])
    ics.write_text(text + "\n")  # complete again: the view is read
    assert read_ics(ics)["views"]["RIGHT_MLO"]["pixels_per_line"] == 30


@pytest.mark.parametrize(
    "sub, n",
    [
        ("cases/normals", 3),
        ("cases/normals/normal_01", 3),
        ("cases/normals/normal_01/case0002", 3),
        ("cases/cancers/cancer_05/case1465", 1),
    ],
)
def test_root_may_be_any_level_of_the_tree(tree, sub, n):
    df, summary = build_ddsm(tree / sub)
    assert len(df) == n and summary["unresolved_reasons"].get("case type unknown") is None
    want = "normals" if "normals" in sub else "cancers"
    assert set(df["case_type"]) == {want}
    assert set(df["volume"]) == {sub.split("/")[2] if sub.count("/") >= 2 else "normal_01"}


def test_root_through_a_symlink_and_messages_when_nothing_is_found(tree, tmp_path):
    link = tmp_path / "mine"
    link.symlink_to(tree / "cases" / "normals")
    df, _ = build_ddsm(link)
    assert set(df["label"]) == {"normal"} and len(df) == 3
    # a case tree whose folders carry no type name: said so, not "e.g. <first reason>"
    odd = tmp_path / "odd" / "case0002"
    odd.mkdir(parents=True)
    for f in (tree / "cases" / "normals" / "normal_01" / "case0002").iterdir():
        (odd / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ManifestError, match="none lies under a folder named normals"):
        build_ddsm(tmp_path / "odd")
    with pytest.raises(ManifestError, match="all 1 are of other types than cancers"):
        build_ddsm(tree / "cases" / "normals", case_types=["cancers"])
    (tmp_path / "empty" / "x").mkdir(parents=True)
    (tmp_path / "empty" / "x" / "readme.txt").write_text("nothing")
    with pytest.raises(ManifestError, match=r"no \.ics or \.LJPEG file .* ROOT may be"):
        build_ddsm(tmp_path / "empty")


def test_unreadable_ics_listed_and_empty_tree(tree, tmp_path):
    ics = next(tree.rglob("A-0002-1.ics"))
    ics.write_text("ics_version 1.0\nfilename A-0002-1\n")  # no view lines
    df, summary = build_ddsm(tree)
    assert summary["unresolved_reasons"]["unreadable .ics"] == 3
    assert not df["patient_id"].eq("A-0002-1").any()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no DDSM case found"):
        build_ddsm(tmp_path / "empty")


def test_cli_ddsm_writes_masks_beside_the_manifest(tree, tmp_path):
    from featmammo.cli.manifest import command

    out = tmp_path / "out" / "ddsm.csv"
    res = CliRunner().invoke(command, ["ddsm", str(tree), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["masks_written"] == 3 and summary["unresolved"] == 2
    raw = out.read_text()
    assert "ddsm.masks/C_1465_1.LEFT_CC.2.png" in raw  # relative: inside the manifest folder
    df = read_manifest(out)
    assert (tmp_path / "out" / "ddsm.masks" / "C_1465_1.LEFT_CC.2.png").is_file()
    assert df.set_index("image_id").loc["C_1465_1.LEFT_CC", "roi_mask_path"].startswith("/")
    assert (tmp_path / "out" / "ddsm.unresolved.csv").is_file()


def test_cli_ddsm_patches_and_merge_with_ddsm(tree, tmp_path):
    """`manifest ddsm-patches` (helper H's builder) through the CLI: FILE#INDEX paths written
    relative to the manifest and checked through FILE; merged with the DDSM volumes manifest."""
    from featmammo.cli.manifest import command
    from featmammo.io import tfrecord as tfr

    recs = [
        tfr.serialize_example(
            {"label": [c], "label_normal": [int(c > 0)], "image": [bytes(12 * 12)]}
        )
        for c in (0, 2, 3)
    ]
    patches = tmp_path / "out" / "kaggle" / "training10_0.tfrecords"
    patches.parent.mkdir(parents=True)
    tfr.write_records(patches, recs)
    runner = CliRunner()
    out = tmp_path / "out" / "patches.csv"
    res = runner.invoke(command, ["ddsm-patches", str(patches.parent), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "kaggle/training10_0.tfrecords#2" in out.read_text()
    df = read_manifest(out)  # FILE of FILE#INDEX checked
    assert list(df["label"]) == ["normal", "benign", "malignant"]
    assert set(df["split"]) == {"train"}
    res = runner.invoke(command, ["ddsm", str(tree), "-o", str(tmp_path / "out" / "ddsm.csv")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        command,
        [
            "merge",
            str(tmp_path / "out" / "ddsm.csv"),
            str(out),
            "-o",
            str(tmp_path / "out" / "both.csv"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["sources"] == {"ddsm": 5, "ddsm-patches": 3}
    # the patch set was cut from DDSM normals and CBIS-DDSM lesions: the same films
    assert any("ddsm and ddsm-patches come from the same films" in n for n in summary["notes"])


def test_progress_callbacks_count_every_case_folder(tree):
    calls = []
    build_ddsm(tree, progress=lambda n, total: calls.append((n, total)))
    assert calls == [(1, 4)] * 4
