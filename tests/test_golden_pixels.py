"""Golden pixels per reader and preprocessing mode, pinned to PREPROCESS_VERSION (see
tests/golden_pixels.py): changing output pixels without bumping the version fails here."""

from __future__ import annotations

import json
import shutil

import golden_pixels as golden
import numpy as np
import pytest

from featmammo.preprocess import PREPROCESS_VERSION

TABLE, ARRAYS = golden.load()
HOW = (
    "a change of output pixels needs PREPROCESS_VERSION bumped (featmammo/preprocess/config.py) "
    "and the golden table regenerated: python tests/golden_pixels.py --update"
)


def test_table_is_for_this_version():
    assert TABLE["preprocess_version"] == PREPROCESS_VERSION, (
        f"golden pixels were made for PREPROCESS_VERSION {TABLE['preprocess_version']}, the code "
        f"says {PREPROCESS_VERSION}: regenerate them (python tests/golden_pixels.py --update)"
    )


def test_every_case_has_golden_pixels():
    assert set(TABLE["cases"]) == set(golden.CASES) == set(ARRAYS), (
        "cases and golden table differ: python tests/golden_pixels.py --add (new cases) "
        "or --update (after a version bump)"
    )


def test_cases_cover_every_reader_and_mode():
    inputs = {src for src, _, _ in golden.CASES.values()}
    for needed in ("real", "left16.png", "left8.png", "left.pgm", "left16.tif", "left8.jpg",
                   "rows.npy#1", "ddsm/A_0042_1.LEFT_CC.LJPEG", "plain.dcm",
                   "patches.tfrecords#2", "left8.pgm", "j2k.dcm"):  # fmt: skip
        assert needed in inputs, needed
    configs = [c for _, c, _ in golden.CASES.values()]
    from featmammo.preprocess.config import (
        NORMALIZE_METHODS,
        RESIZE_METHODS,
        ROI_MODES,
        WINDOWINGS,
    )

    def seen(field, default):
        return {c.get(field, default) for c in configs}

    assert seen("resize", "area") >= set(RESIZE_METHODS)
    assert seen("normalize", "backbone") >= set(NORMALIZE_METHODS)
    assert seen("roi", "full") >= set(ROI_MODES)
    assert seen("windowing", "auto") >= set(WINDOWINGS)
    assert seen("crop", "breast") >= {"breast", "none"}
    assert seen("canonical_side", True) >= {True, False}
    assert "od" in seen("ddsm_calibration", "none")
    assert any(isinstance(c.get("image_size"), list) for c in configs)  # HxW


@pytest.mark.parametrize("name", sorted(golden.CASES))
def test_golden_pixels(name):
    x = golden.compute(name)
    entry = TABLE["cases"][name]
    assert list(x.shape) == entry["shape"], f"{name}: shape {x.shape} != {entry['shape']}; {HOW}"
    excess = golden.difference(x, entry, ARRAYS[name])
    assert excess <= 0, f"{name}: pixels moved ({excess:.3g} beyond the tolerance); {HOW}"


def test_a_pixel_change_is_caught(monkeypatch):
    """The tolerance is far below what a real recipe change does: a one-pixel shift of the breast
    box, or area replaced by bilinear, fails the comparison."""
    import featmammo.preprocess.pipeline as pipeline

    entry, q = TABLE["cases"]["reader-png16"], ARRAYS["reader-png16"]
    assert golden.difference(golden.compute("reader-png16"), entry, q) <= 0
    real_bbox = pipeline.breast_bbox
    monkeypatch.setattr(
        pipeline,
        "breast_bbox",
        lambda px: tuple(v + 1 for v in real_bbox(px)[:2]) + real_bbox(px)[2:],
    )
    assert golden.difference(golden.compute("reader-png16"), entry, q) > 0
    monkeypatch.setattr(pipeline, "breast_bbox", real_bbox)
    real_resize = pipeline.resize2d
    monkeypatch.setattr(pipeline, "resize2d", lambda x, h, w, m: real_resize(x, h, w, "bilinear"))
    assert golden.difference(golden.compute("reader-png16"), entry, q) > 0


def test_regenerating_without_a_bump_is_refused(tmp_path, monkeypatch, capsys):
    """`golden_pixels.py --update` will not rewrite moved pixels under the same version."""
    import featmammo.preprocess.pipeline as pipeline

    for name in ("TABLE", "ARRAYS"):
        copy = tmp_path / getattr(golden, name).name
        shutil.copy(getattr(golden, name), copy)
        monkeypatch.setattr(golden, name, copy)
    monkeypatch.setattr(golden, "GOLDEN", tmp_path)
    few = {k: golden.CASES[k] for k in ("reader-png16", "window-auto-linear")}
    monkeypatch.setattr(golden, "CASES", few)
    before = golden.TABLE.read_bytes()
    real_resize = pipeline.resize2d
    monkeypatch.setattr(pipeline, "resize2d", lambda x, h, w, m: real_resize(x, h, w, "nearest"))
    assert golden.main(["--update"]) == 1
    assert "bump it" in capsys.readouterr().err
    assert golden.TABLE.read_bytes() == before
    assert golden.main(["--check"]) == 1
    # after a bump the same change is accepted and recorded under the new version
    import featmammo.preprocess as fpre

    monkeypatch.setattr(fpre, "PREPROCESS_VERSION", PREPROCESS_VERSION + 1)
    assert golden.main(["--update"]) == 0
    table = json.loads(golden.TABLE.read_text())
    assert table["preprocess_version"] == PREPROCESS_VERSION + 1
    assert set(table["cases"]) == set(few)
    with np.load(golden.ARRAYS) as z:
        assert set(z.files) == set(few)
