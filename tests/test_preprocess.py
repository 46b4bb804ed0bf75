"""featmammo.preprocess: config/fingerprint, area resize, breast crop, side, ROI, normalisation."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from featmammo.errors import ConfigError, ImageReadError
from featmammo.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessConfig,
    area_resize,
    breast_bbox,
    infer_laterality,
    largest_component_bbox,
    mask_bbox,
    patch_bbox,
    preprocess,
)

# ---------------------------------------------------------------------------------------- config


def test_config_roundtrip_and_fingerprint_stability():
    c = PreprocessConfig()
    d = c.to_dict()
    assert d["mean"] == list(IMAGENET_MEAN) and d["std"] == list(IMAGENET_STD)
    assert PreprocessConfig.from_dict(d) == c
    # dict order, lists vs tuples, ints vs floats must not matter
    shuffled = dict(reversed(list(d.items())))
    assert PreprocessConfig.from_dict(shuffled).fingerprint() == c.fingerprint()
    assert PreprocessConfig(mean=list(IMAGENET_MEAN)).fingerprint() == c.fingerprint()
    assert (
        PreprocessConfig(patch_context=1).fingerprint()
        == PreprocessConfig(patch_context=1.0).fingerprint()
    )
    # pinned value: the fingerprint must not drift across Python/numpy versions
    assert c.fingerprint() == "73fef454da305857"
    assert len(c.fingerprint()) == 16
    others = {
        PreprocessConfig(image_size=256).fingerprint(),
        PreprocessConfig(resize="bilinear").fingerprint(),
        PreprocessConfig(normalize="zscore").fingerprint(),
        PreprocessConfig(crop="none").fingerprint(),
        PreprocessConfig(canonical_side=False).fingerprint(),
        PreprocessConfig(roi="patch").fingerprint(),
        PreprocessConfig(windowing="voi").fingerprint(),
        PreprocessConfig(windowing="none").fingerprint(),
        PreprocessConfig(image_size=(224, 112)).fingerprint(),
    }
    assert c.fingerprint() not in others and len(others) == 9
    hash(c)  # frozen -> hashable


def test_fingerprint_formula_unchanged_since_version_1(monkeypatch):
    """Only the version moved: the version-1 default config (windowing 'none', then the default)
    still hashes to the value stores of version 1 recorded."""
    import featmammo.preprocess.config as config_mod

    assert config_mod.PREPROCESS_VERSION == 2
    monkeypatch.setattr(config_mod, "PREPROCESS_VERSION", 1)
    old = PreprocessConfig(windowing="none")
    assert old.fingerprint() == "b5718101e4fafb92"
    # a recorded version-1 config (a plain dict from a store's provenance) still parses
    recorded = {
        "image_size": 224, "resize": "area", "normalize": "backbone",
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "crop": "breast",
        "canonical_side": True, "roi": "full", "patch_context": 0.5, "windowing": "none",
    }  # fmt: skip
    assert PreprocessConfig.from_dict(recorded) == old


@pytest.mark.parametrize(
    "value, expected",
    [
        (224, 224),
        ("224", 224),
        ("512x512", 512),
        ((300, 300), 300),
        ("1024x512", (1024, 512)),
        (" 1024 X 512 ", (1024, 512)),
        ((1024, 512), (1024, 512)),
        ([1024, 512], (1024, 512)),
        (np.int64(96), 96),
    ],
)
def test_image_size_forms(value, expected):
    from featmammo.preprocess import format_image_size, parse_image_size

    assert parse_image_size(value) == expected
    c = PreprocessConfig(image_size=value)
    assert c.image_size == expected
    h, w = (expected, expected) if isinstance(expected, int) else expected
    assert c.shape == (h, w) and c.is_square == (h == w)
    assert PreprocessConfig.from_dict(c.to_dict()) == c
    assert PreprocessConfig.from_dict(c.to_dict()).fingerprint() == c.fingerprint()
    assert format_image_size(value) == (str(h) if h == w else f"{h}x{w}")
    assert PreprocessConfig(image_size=format_image_size(value)) == c


def test_square_hxw_is_n_and_keeps_its_fingerprint():
    n = PreprocessConfig(image_size=256)
    assert PreprocessConfig(image_size="256x256") == n
    assert PreprocessConfig(image_size=(256, 256)).fingerprint() == n.fingerprint()
    assert n.to_dict()["image_size"] == 256
    assert PreprocessConfig(image_size="1024x512").to_dict()["image_size"] == [1024, 512]
    assert PreprocessConfig(image_size="1024x512").fingerprint() != (
        PreprocessConfig(image_size="512x1024").fingerprint()
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 0},
        {"image_size": 2.5},
        {"resize": "lanczos"},
        {"normalize": "minmax"},
        {"crop": "auto"},
        {"roi": "lesion"},
        {"windowing": "lut"},
        {"image_size": "1024x"},
        {"image_size": "0x512"},
        {"image_size": (1024, 512, 3)},
        {"image_size": (1024.0, 512)},
        {"image_size": True},
        {"windowing": "voi", "ddsm_calibration": "od"},
        {"mean": (0.5, 0.5)},
        {"std": (0.0, 1.0, 1.0)},
        {"patch_context": -0.1},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        PreprocessConfig(**kwargs)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="imagesize"):
        PreprocessConfig.from_dict({"imagesize": 224})


def test_preprocess_module_is_torch_free():
    code = "import sys, featmammo.preprocess; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------- resize


def test_area_resize_hand_computed():
    # 3 -> 2: each output covers 1.5 source pixels
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    np.testing.assert_allclose(area_resize(x, 1, 2), [[(1 + 0.5 * 2) / 1.5, (0.5 * 2 + 3) / 1.5]])
    # integer factor: 4x4 -> 2x2 block means, computed on uint16 directly
    x = np.arange(16, dtype=np.uint16).reshape(4, 4)
    np.testing.assert_allclose(area_resize(x, 2, 2), [[2.5, 4.5], [10.5, 12.5]])
    # upscaling replicates (area of a sub-pixel = the pixel)
    np.testing.assert_allclose(area_resize(np.array([[1.0, 2.0]]), 1, 4), [[1, 1, 2, 2]])
    assert area_resize(x, 2, 2).dtype == np.float32


def _dense_area_matrix(n_in, n_out):
    w = np.zeros((n_out, n_in))
    step = n_in / n_out
    for i in range(n_out):
        lo, hi = i * step, (i + 1) * step
        for p in range(n_in):
            w[i, p] = max(0.0, min(p + 1, hi) - max(p, lo))
        w[i] /= hi - lo
    return w


@pytest.mark.parametrize("shape,out", [((37, 23), (10, 7)), ((9, 40), (13, 6)), ((5, 5), (5, 5))])
def test_area_resize_matches_dense_weights(shape, out, rng):
    x = rng.integers(0, 4096, size=shape).astype(np.uint16)
    expected = _dense_area_matrix(shape[0], out[0]) @ x @ _dense_area_matrix(shape[1], out[1]).T
    np.testing.assert_allclose(area_resize(x, *out), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("shape,out", [((37, 23), (10, 7)), ((9, 40), (13, 6)), ((5, 5), (11, 3))])
def test_nearest_matches_pillow(shape, out, rng):
    from PIL import Image as PILImage

    from featmammo.preprocess import resize2d

    x = rng.random(shape).astype(np.float32)
    ref = PILImage.fromarray(x, mode="F").resize((out[1], out[0]), PILImage.Resampling.NEAREST)
    np.testing.assert_array_equal(resize2d(x, *out, "nearest"), np.asarray(ref))


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic", "area"])
@pytest.mark.parametrize("normalize", ["backbone", "zscore", "mean", "decimal", "none"])
def test_output_contract(method, normalize, rng):
    img = rng.integers(0, 4096, size=(90, 60)).astype(np.uint16)
    cfg = PreprocessConfig(image_size=32, resize=method, normalize=normalize, crop="none")
    out = preprocess(img, cfg, laterality="L")
    assert out.shape == (3, 32, 32) and out.dtype == np.float32 and out.flags.c_contiguous
    assert np.isfinite(out).all()
    if normalize != "backbone":  # grey -> 3 identical channels
        assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])


# ---------------------------------------------------------------------------------- normalisation


def test_normalisations_values():
    img = np.full((40, 40), 1000, dtype=np.uint16)
    img[10:30, 10:30] = 3000  # max 3000 -> decimal j = 4
    base = dict(image_size=40, resize="nearest", crop="none", canonical_side=False)
    out = preprocess(img, PreprocessConfig(normalize="decimal", **base))
    np.testing.assert_allclose(out[0, 20, 20], 0.3, rtol=1e-6)
    np.testing.assert_allclose(out[0, 0, 0], 0.1, rtol=1e-6)
    out = preprocess(img, PreprocessConfig(normalize="none", **base))
    np.testing.assert_allclose(out[0, 20, 20], 3000 / 65535, rtol=1e-6)  # ndarray uint16 -> 65535
    out = preprocess(img, PreprocessConfig(normalize="zscore", **base))
    assert abs(out[0].mean()) < 1e-5 and abs(out[0].std() - 1) < 1e-4
    out = preprocess(img, PreprocessConfig(normalize="mean", **base))
    assert abs(out[0].mean()) < 1e-5 and abs((out[0].max() - out[0].min()) - 1) < 1e-5
    out = preprocess(img, PreprocessConfig(normalize="backbone", **base))
    for c in range(3):
        expected = (3000 / 65535 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        np.testing.assert_allclose(out[c, 20, 20], expected, rtol=1e-5)


def test_max_value_from_image_object():
    class Img:  # duck-typed featmammo.io.Image
        pixels = np.full((20, 20), 4095, dtype=np.uint16)
        path = "x.dcm"
        max_value = 4095.0
        meta = {"laterality": "L"}

    cfg = PreprocessConfig(image_size=8, normalize="none", crop="none")
    np.testing.assert_allclose(preprocess(Img(), cfg), 1.0)


def test_padding_keeps_aspect_and_uses_background():
    img = np.zeros((100, 50), dtype=np.uint16)
    img[:, :] = 500
    img[40:60, 10:40] = 4000
    cfg = PreprocessConfig(image_size=20, resize="area", normalize="none", crop="none")
    out = preprocess(img, cfg, laterality="L")[0]
    # 100x50 -> 20x10 centred in 20x20: columns 0-4 and 15-19 are padding = background (500)
    np.testing.assert_allclose(out[:, :5], 500 / 65535, rtol=1e-6)
    np.testing.assert_allclose(out[:, 15:], 500 / 65535, rtol=1e-6)
    assert out[10, 7] > 3000 / 65535


@pytest.mark.parametrize(
    "shape, size, region",
    [
        ((100, 60), (50, 40), (50, 30)),  # height-limited: 0.5 x -> 50 x 30, pad 10 on the right
        ((60, 100), (50, 40), (24, 40)),  # width-limited: 0.4 x -> 24 x 40, pad 26 at the bottom
        ((90, 45), (1024 // 16, 512 // 16), (64, 32)),  # exactly 2:1 -> no padding at all
        ((33, 71), (20, 10), (5, 10)),  # 10/71: 33 * 10 / 71 = 4.65 -> 5 rows
    ],
)
def test_hxw_keeps_aspect_and_pads_away_from_the_chest_wall(shape, size, region, rng):
    """image_size=(H, W): scaled by min(H/rows, W/cols), never stretched, placed top-left so the
    padding is right/bottom (the chest wall is on the left after the canonical side)."""
    img = rng.integers(1000, 4000, size=shape).astype(np.uint16)
    cfg = PreprocessConfig(image_size=size, normalize="none", crop="none", canonical_side=False)
    out = preprocess(img, cfg)
    assert out.shape == (3, *size) and out.dtype == np.float32 and out.flags.c_contiguous
    rh, rw = region
    # the region, resized by exact area averaging to the hand-computed size
    expected = area_resize(img, rh, rw) / np.float32(65535)
    np.testing.assert_allclose(out[0, :rh, :rw], expected, rtol=1e-6)
    assert abs(rw / rh - shape[1] / shape[0]) <= max(1 / rh, 1 / rw) * shape[1] / shape[0] + 1e-9
    pad = out[0].copy()
    pad[:rh, :rw] = np.nan
    bg = expected.min()  # the resized region's background (minimum)
    assert np.all(np.isnan(pad) | (pad == bg))
    assert (~np.isnan(pad)).sum() == size[0] * size[1] - rh * rw


def test_hxw_right_breast_is_flipped_then_padded_right(rng):
    tall = np.full((120, 60), 200, np.uint16)
    tall[10:110, 30:] = 3000  # tissue on the right: a right breast whose chest wall is right
    cfg = PreprocessConfig(image_size=(64, 64 * 2), normalize="none", crop="none")
    out = preprocess(tall, cfg, laterality="R")[0]
    # flipped: tissue (chest wall) now on the left; 120x60 -> 64x32, padding on the right
    assert out[:, 32:].max() == pytest.approx(200 / 65535)
    assert out[32, 0] > 0.04 and out[32, 31] < 0.01


def test_hxw_prepared_entries_fit_only_their_size(rng):
    from featmammo.preprocess import finish, prepare

    img = rng.integers(0, 4096, size=(90, 40)).astype(np.uint16)
    wide = PreprocessConfig(image_size="64x48", normalize="none", crop="none")
    p = prepare(img, wide, laterality="L")
    assert p.pixels.shape == (64, 28)  # 40 * 64 / 90 = 28.4
    assert wide.fits(p.pixels.shape) and not PreprocessConfig(image_size=64).fits((60, 50))
    np.testing.assert_array_equal(finish(p, wide), preprocess(img, wide, laterality="L"))
    with pytest.raises(ConfigError, match="32x48"):
        finish(p, PreprocessConfig(image_size="32x48", normalize="none", crop="none"))


def test_square_size_still_centres(rng):
    """N keeps the centred padding of every store made before HxW existed."""
    img = rng.integers(1000, 4000, size=(100, 50)).astype(np.uint16)
    out = preprocess(img, PreprocessConfig(image_size=20, normalize="none", crop="none"))[0]
    region = area_resize(img, 20, 10) / np.float32(65535)
    np.testing.assert_allclose(out[:, 5:15], region, rtol=1e-6)


def test_bad_inputs():
    with pytest.raises(ImageReadError):
        preprocess(np.zeros((4, 4, 3), np.uint8), PreprocessConfig())
    with pytest.raises(ConfigError, match="needs a lesion mask"):
        preprocess(np.zeros((32, 32), np.uint16), PreprocessConfig(roi="crop"))
    with pytest.raises(ConfigError, match="no foreground"):
        preprocess(
            np.zeros((32, 32), np.uint16),
            PreprocessConfig(roi="crop"),
            roi_mask=np.zeros((32, 32), np.uint8),
        )


# ------------------------------------------------------------------------------- crop and side


def test_largest_component_bbox_8_connected():
    m = np.zeros((10, 10), bool)
    m[1, 1] = m[2, 2] = m[3, 3] = True  # diagonal chain: one component of 3
    m[6:8, 6:8] = True  # 4 pixels: the largest
    assert largest_component_bbox(m) == (6, 6, 8, 8)
    m[4, 4] = m[5, 5] = True  # chain now reaches the square: 9 pixels, one component
    assert largest_component_bbox(m) == (1, 1, 8, 8)
    assert largest_component_bbox(np.zeros((5, 5), bool)) is None
    # U shape: two runs in one row joined below
    u = np.zeros((5, 7), bool)
    u[0:4, 1] = u[0:4, 5] = True
    u[3, 1:6] = True
    u[0, 3] = True  # separate single pixel
    assert largest_component_bbox(u) == (0, 1, 4, 6)


def _fake_mammogram(h=600, w=400, side="L"):
    """Bright half-ellipse at the chest wall, a label blob and a film border."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w), 200, np.uint16)
    breast = ((yy - h / 2) / (0.4 * h)) ** 2 + (xx / (0.55 * w)) ** 2 < 1
    img[breast] = 3000
    img[40:70, 300:360] = 4000  # label, separate from the breast
    img[:, -4:] = 3500  # thin bright film border along the far edge
    img[-4:, :] = 3500  # ... and the bottom, touching the breast's side
    if side == "R":
        img = img[:, ::-1].copy()
    return img


def test_breast_bbox_drops_label_and_border():
    img = _fake_mammogram()
    y0, x0, y1, x1 = breast_bbox(img)
    # breast spans rows 60-540, cols 0-220
    assert y0 <= 62 and y1 >= 538 and x0 == 0
    assert 215 <= x1 <= 260, (y0, x0, y1, x1)  # label (300+) and right border excluded
    assert y1 <= 580  # bottom border excluded


def test_canonical_side_flip_and_inference():
    left = _fake_mammogram(side="L")
    right = _fake_mammogram(side="R")
    assert infer_laterality(left) == "L" and infer_laterality(right) == "R"
    cfg = PreprocessConfig(image_size=48)
    a = preprocess(left, cfg, laterality="L")
    b = preprocess(right, cfg, laterality="R")
    c = preprocess(right, cfg)  # inferred
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)
    d = preprocess(right, PreprocessConfig(image_size=48, canonical_side=False))
    assert not np.allclose(a, d)
    with pytest.raises(ConfigError):
        preprocess(left, cfg, laterality="X")


# ---------------------------------------------------------------------------------------- ROI


def test_roi_crop_with_mask_at_other_resolution():
    img = np.full((200, 100), 100, np.uint16)
    img[80:120, 40:60] = 4000
    mask = np.zeros((100, 50), np.uint8)  # half resolution
    mask[40:60, 20:30] = 1
    assert mask_bbox(mask, img.shape) == (80, 40, 120, 60)
    cfg = PreprocessConfig(image_size=16, roi="crop", normalize="none", canonical_side=False)
    out = preprocess(img, cfg, roi_mask=mask)
    # the crop is the lesion only (40x20 -> 16x8 centred), padding = its own minimum
    np.testing.assert_allclose(out[0], 4000 / 65535, rtol=1e-6)
    out_box = preprocess(img, cfg, roi_mask=(80, 40, 120, 60))
    np.testing.assert_allclose(out, out_box)


def test_roi_patch_square_context_and_clipping():
    assert patch_bbox((40, 40, 60, 50), (200, 100), 0.5) == (35, 30, 65, 60)
    # near the border: shifted inside, still square
    y0, x0, y1, x1 = patch_bbox((0, 0, 20, 10), (200, 100), 1.0)
    assert (y0, x0) == (0, 0) and y1 - y0 == x1 - x0 == 40
    # larger than the image: clipped
    assert patch_bbox((0, 0, 20, 10), (30, 25), 1.0) == (0, 0, 30, 25)
    img = np.full((200, 100), 100, np.uint16)
    img[80:120, 40:60] = 4000
    cfg = PreprocessConfig(image_size=30, roi="patch", patch_context=0.5, normalize="none")
    out = preprocess(img, cfg, laterality="L", roi_mask=(80, 40, 120, 60))[0]
    # 60x60 patch around the 40x20 lesion: context on all sides
    assert out[15, 15] > 0.05 and out[15, 1] < 0.01 and out[1, 15] < 0.01


def test_roi_mask_flips_with_image():
    img = np.full((100, 100), 100, np.uint16)
    img[10:30, 60:90] = 4000  # lesion on the right half
    mask = np.zeros_like(img, np.uint8)
    mask[10:30, 60:90] = 1
    cfg = PreprocessConfig(image_size=10, roi="crop", normalize="none")
    out = preprocess(img, cfg, laterality="R", roi_mask=mask)
    np.testing.assert_allclose(out, 4000 / 65535, rtol=1e-6)


# ---------------------------------------------------------------------------- real & synthetic I/O


def test_load_and_preprocess_synthetic_dicom(tmp_path):
    from featmammo.datasets.synthetic import write_synthetic_cbis
    from featmammo.preprocess import load_and_preprocess

    write_synthetic_cbis(tmp_path / "s", n=2, seed=5, size=(64, 48), classes=("malignant",))
    import pandas as pd

    row = pd.read_csv(tmp_path / "s" / "manifest.csv", keep_default_na=False).iloc[0]
    base = tmp_path / "s"
    full = load_and_preprocess(base / row["path"], PreprocessConfig(image_size=32))
    patch = load_and_preprocess(
        base / row["path"],
        PreprocessConfig(image_size=32, roi="patch"),
        roi_mask_path=base / row["roi_mask_path"],
    )
    assert full.shape == patch.shape == (3, 32, 32)
    assert not np.allclose(full, patch)


@pytest.fixture(scope="module")
def real_pair(real_dicoms):
    from featmammo.io import read_image

    # index 2: RIGHT CC; index 5: LEFT MLO with a bright film border (see tests' conftest)
    return [read_image(real_dicoms[i]) for i in (2, 5)]


def test_real_dicoms_crop_side_and_speed(real_pair):
    for image in real_pair:
        assert infer_laterality(image.pixels) == image.meta["laterality"]
        h, w = image.pixels.shape
        y0, x0, y1, x1 = breast_bbox(image.pixels)
        # the film border used to make the whole image one component
        assert (x1 - x0) < 0.75 * w and (y1 - y0) > 0.5 * h
    cfg = PreprocessConfig()
    preprocess(real_pair[1], cfg)
    t = time.perf_counter()
    out = preprocess(real_pair[1], cfg)
    elapsed = time.perf_counter() - t
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    assert elapsed < 1.0, f"preprocess of a full-field image took {elapsed:.2f} s"


# ---------------------------------------------------------------------------- ROI mask reading


def test_full_roi_never_reads_the_mask(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    import featmammo.io
    from featmammo.preprocess import load_and_preprocess

    img = np.full((60, 40), 300, np.uint16)
    img[10:50, 0:25] = 3000
    PILImage.fromarray(img).save(tmp_path / "a.png")
    PILImage.fromarray(np.zeros((60, 40), np.uint8)).save(tmp_path / "empty.png")
    (tmp_path / "garbage.png").write_bytes(b"not an image")
    reads = []
    real = featmammo.io.read_image

    def counting(path, **kw):
        reads.append(str(path))
        return real(path, **kw)

    monkeypatch.setattr(featmammo.io, "read_image", counting)
    cfg = PreprocessConfig(image_size=16)
    ref = load_and_preprocess(tmp_path / "a.png", cfg)
    for mask in ("empty.png", "garbage.png", "missing.png"):
        out = load_and_preprocess(tmp_path / "a.png", cfg, roi_mask_path=tmp_path / mask)
        assert np.array_equal(out, ref)
    assert reads == [str(tmp_path / "a.png")] * 4
    # crop/patch do read it, and an empty mask is then a clear error naming the mask
    with pytest.raises(ImageReadError, match="empty.png.*no foreground"):
        load_and_preprocess(
            tmp_path / "a.png", PreprocessConfig(image_size=16, roi="crop"),
            roi_mask_path=tmp_path / "empty.png",
        )  # fmt: skip
    with pytest.raises(ConfigError, match="needs a lesion mask"):
        load_and_preprocess(
            tmp_path / "a.png", PreprocessConfig(image_size=16, roi="patch"), roi_mask_path=""
        )


def test_prepare_finish_split_and_prepared_fingerprint(rng):
    from featmammo.preprocess import finish, prepare

    img = _fake_mammogram(side="R")
    for cfg in (
        PreprocessConfig(image_size=40),
        PreprocessConfig(image_size=41, resize="bicubic", normalize="decimal", crop="none"),
    ):
        p = prepare(img, cfg)
        assert p.pixels.dtype == np.float32 and max(p.pixels.shape) == cfg.image_size
        # the breast crop drops the 4000 label and the 3500 border
        assert p.raw_max_abs == (3000.0 if cfg.crop == "breast" else 4000.0)
        assert p.max_value == 65535.0
        assert np.array_equal(finish(p, cfg), preprocess(img, cfg))
    with pytest.raises(ConfigError, match="image_size"):
        finish(prepare(img, PreprocessConfig(image_size=40)), PreprocessConfig(image_size=41))
    base = PreprocessConfig()
    same = {
        PreprocessConfig(normalize=n).prepared_fingerprint()
        for n in ("backbone", "zscore", "mean", "decimal", "none")
    }
    same.add(PreprocessConfig(mean=(0.5,), std=(0.2,)).prepared_fingerprint())
    assert same == {base.prepared_fingerprint()}
    differ = {
        PreprocessConfig(image_size=256).prepared_fingerprint(),
        PreprocessConfig(resize="nearest").prepared_fingerprint(),
        PreprocessConfig(crop="none").prepared_fingerprint(),
        PreprocessConfig(canonical_side=False).prepared_fingerprint(),
        PreprocessConfig(roi="crop").prepared_fingerprint(),
        PreprocessConfig(patch_context=0.25).prepared_fingerprint(),
        PreprocessConfig(windowing="voi").prepared_fingerprint(),
        PreprocessConfig(ddsm_calibration="od").prepared_fingerprint(),
    }
    assert base.prepared_fingerprint() not in differ and len(differ) == 8
    assert base.prepared_fingerprint() != base.fingerprint()


# ---------------------------------------------------------------------------- DDSM calibration


def test_ddsm_calibration_config():
    od = PreprocessConfig(ddsm_calibration="od")
    assert "ddsm_calibration" not in PreprocessConfig().to_dict()  # old fingerprints unchanged
    assert od.to_dict()["ddsm_calibration"] == "od"
    assert PreprocessConfig.from_dict(od.to_dict()) == od
    assert od.fingerprint() != PreprocessConfig().fingerprint()
    with pytest.raises(ConfigError, match="ddsm_calibration"):
        PreprocessConfig(ddsm_calibration="linear")
    with pytest.raises(ConfigError, match="windowing 'auto' or 'none'"):
        PreprocessConfig(ddsm_calibration="od", windowing="percentile")


class _Ljpeg:  # duck-typed featmammo.io.Image of an LJPEG
    def __init__(self, pixels, digitizer):
        self.pixels, self.path, self.max_value = pixels, "A_0001_1.LEFT_CC.LJPEG", 4095.0
        self.meta = {"format": "ljpeg", "laterality": "L", "institution": "A"}
        if digitizer is not None:
            self.meta["digitizer"] = digitizer


def test_ddsm_od_uses_the_digitiser_and_needs_one(monkeypatch, rng):
    import featmammo.preprocess as pre

    calls = []

    def fake_od(pixels, digitizer, institution):  # Howtek-like: OD = 3.789 - 0.00094568 GL
        calls.append((np.asarray(pixels).size, digitizer, institution))
        return (3.789 - 0.00094568 * np.asarray(pixels, np.float64)).astype(np.float32)

    monkeypatch.setattr(pre.calibration, "_optical_density", fake_od)
    pixels = _fake_mammogram().astype(np.uint16)
    pixels[5, 5] = 0  # OD 3.789 -> clipped to 3.0
    cfg = PreprocessConfig(image_size=48, ddsm_calibration="od", normalize="none")
    out = preprocess(_Ljpeg(pixels, "HOWTEK 1"), cfg)
    # a lookup table of every value up to the image's max, once, with the digitiser's name
    assert calls == [(int(pixels.max()) + 1, "HOWTEK 1", "A")]
    od = np.clip(3.789 - 0.00094568 * pixels.astype(np.float64), 0.05, 3.0)
    grey = (1 - od / 4).astype(np.float32)
    expected = preprocess(
        grey, PreprocessConfig(image_size=48, normalize="none"), laterality="L"
    )  # float image -> max value 1
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(out, preprocess(_Ljpeg(pixels, "HOWTEK 1"), cfg.__class__(
        image_size=48, normalize="none")))  # fmt: skip
    for digitizer in (None, ""):
        with pytest.raises(ImageReadError, match="A_0001_1.LEFT_CC.LJPEG.*digitiser"):
            preprocess(_Ljpeg(pixels, digitizer), cfg)
    with pytest.raises(ImageReadError, match="<array>.*digitiser"):
        preprocess(pixels, cfg)


def test_ddsm_od_with_the_real_calibrations(rng):
    ddsm = pytest.importorskip("featmammo.io.ddsm")
    from featmammo.preprocess import calibrate_od

    pixels = rng.integers(0, 4096, size=(50, 30)).astype(np.uint16)
    for digitizer, inst in (("HOWTEK 1", "A"), ("HOWTEK 1", "D"), ("LUMISYS LASER", "B"),
                            ("DBA 21", None)):  # fmt: skip
        lut_path = calibrate_od(pixels, digitizer, inst)
        with np.errstate(divide="ignore", invalid="ignore"):
            od = np.asarray(ddsm.optical_density(pixels, digitizer, inst), np.float32)
        direct = np.float32(1) - np.clip(od, np.float32(0.05), np.float32(3.0)) / np.float32(4)
        assert lut_path.dtype == np.float32 and np.array_equal(lut_path, direct)
        assert np.isfinite(lut_path).all() and 0.25 <= lut_path.min() <= lut_path.max() <= 0.9875
    # HOWTEK without the institution letter: which calibration is unknown -> error naming the file
    cfg = PreprocessConfig(image_size=16, ddsm_calibration="od")
    image = _Ljpeg(pixels, "HOWTEK 1")
    image.meta["institution"] = None
    with pytest.raises(ImageReadError, match="A_0001_1.LEFT_CC.LJPEG.*HOWTEK"):
        preprocess(image, cfg)


def test_ddsm_ljpeg_canonical_side_follows_the_tissue_not_the_view_name(tmp_path):
    """Original DDSM: how a view faces depends on the institution (DATASETS.md), so an LJPEG's
    chest wall is found from the tissue; other formats keep trusting the laterality."""
    import featmammo.io as fio
    from featmammo.preprocess import prepare

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    try:
        from ljpeg_vectors import write_case
    finally:
        sys.path.pop(0)
    yy, xx = np.mgrid[0:80, 0:60]
    breast = ((xx - 59) / 40.0) ** 2 + ((yy - 40) / 35.0) ** 2 < 1  # chest wall on the right edge
    img = np.where(breast, 3000, 80).astype(np.uint16)
    paths = write_case(
        tmp_path / "case",
        "A-1002-1",
        {"LEFT_CC": (img, 1, 12, False), "RIGHT_CC": (img[:, ::-1].copy(), 1, 12, False)},
    )
    config = PreprocessConfig(image_size=32, crop="none", normalize="none")
    for view, lat in (("LEFT_CC", "L"), ("RIGHT_CC", "R")):
        out = prepare(fio.read_image(paths[view]), config, laterality=lat).pixels
        half = out.shape[1] // 2
        assert out[:, :half].mean() > out[:, half:].mean(), view  # chest wall on the left
    # a PNG-like array with the same picture and laterality L is not second-guessed
    out = prepare(img, config, laterality="L").pixels
    half = out.shape[1] // 2
    assert out[:, :half].mean() < out[:, half:].mean()
