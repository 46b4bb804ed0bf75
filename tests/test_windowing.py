"""windowing='auto' (the preprocessing default) and the explicit DICOM policies, checked against
pixels computed by hand from the DICOM PS3.3 C.11.2.1.2 / C.11.2.1.3 formulas (plain Python on
each distinct value), never against featmammo's or pydicom's own windowing code.

The files are DICOMs written here (window tags, several windows, VOI LUT Sequence, SIGMOID,
LINEAR_EXACT, MONOCHROME1, a rescale) plus a PNG (non-DICOM: auto = the stored range).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from test_io import make_ds, save

from featmammo.errors import ImageReadError
from featmammo.io import read_image
from featmammo.preprocess import PreprocessConfig, load_and_preprocess

# every 12-bit value a window can treat differently: a ramp over the whole range plus the
# values right at and around the window edges used below
_EDGES = [999, 1000, 1001, 1249, 1250, 1251, 1749, 1750, 1751, 2000, 2047, 2048, 2049]
_VALUES = np.unique(np.concatenate([np.arange(0, 4096, 13), _EDGES]))
RAW = np.resize(_VALUES, (24, 32)).astype(np.uint16)  # (24, 32): every value at least once


def _by_value(arr: np.ndarray, fn) -> np.ndarray:
    """``fn`` (a plain Python function of one stored value) applied to every pixel."""
    table = {int(v): float(fn(int(v))) for v in np.unique(arr)}
    return np.vectorize(table.__getitem__, otypes=[np.float64])(arr)


def linear(c: float, w: float):
    """PS3.3 C.11.2.1.2.1 (LINEAR), output range [0, 1]."""

    def f(x):
        if x <= c - 0.5 - (w - 1) / 2:
            return 0.0
        if x > c - 0.5 + (w - 1) / 2:
            return 1.0
        return (x - (c - 0.5)) / (w - 1) + 0.5

    return f


def linear_exact(c: float, w: float):
    """PS3.3 C.11.2.1.3.2 (LINEAR_EXACT)."""

    def f(x):
        if x <= c - w / 2:
            return 0.0
        if x > c + w / 2:
            return 1.0
        return (x - c) / w + 0.5

    return f


def sigmoid(c: float, w: float):
    """PS3.3 C.11.2.1.3.1 (SIGMOID)."""
    return lambda x: 1.0 / (1.0 + math.exp(-4.0 * (x - c) / w))


def _write(tmp_path, name, arr=RAW, **tags):
    return save(make_ds(arr, bits_stored=12, **tags), tmp_path / f"{name}.dcm")


def _voi_lut_item(first: int, n: int, bits: int, data: list[int]) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [n, first, bits])  # LUTDescriptor
    item.add_new(0x00283006, "US", data)  # LUTData
    return item


CASES = {
    # name: (tags, hand-computed function of the stored value, windowing_applied)
    "linear": (dict(WindowCenter=1500, WindowWidth=500), linear(1500, 500), "window"),
    "linear-default-function-tag": (
        dict(WindowCenter=1500, WindowWidth=500, VOILUTFunction="LINEAR"),
        linear(1500, 500),
        "window",
    ),
    "first-of-two-windows": (
        dict(WindowCenter=[2048, 1000], WindowWidth=[4096, 300]),
        linear(2048, 4096),
        "window",
    ),
    "linear-exact": (
        dict(WindowCenter=1500, WindowWidth=500, VOILUTFunction="LINEAR_EXACT"),
        linear_exact(1500, 500),
        "window",
    ),
    "sigmoid": (
        dict(WindowCenter=2048, WindowWidth=800, VOILUTFunction="SIGMOID"),
        sigmoid(2048, 800),
        "window",
    ),
    "monochrome1-window": (
        dict(WindowCenter=1500, WindowWidth=500, PhotometricInterpretation="MONOCHROME1"),
        lambda x: 1.0 - linear(1500, 500)(x),
        "window",
    ),
    "rescale-then-window": (  # the window applies to the modality output x * 2 - 1000
        dict(WindowCenter=2000, WindowWidth=1000, RescaleSlope=2, RescaleIntercept=-1000),
        lambda x: linear(2000, 1000)(2 * x - 1000),
        "window",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("windowing", ["auto", "voi", "window"])
def test_window_tags_by_hand(name, windowing, tmp_path):
    tags, fn, applied = CASES[name]
    tags = dict(tags)
    photometric = tags.pop("PhotometricInterpretation", "MONOCHROME2")
    path = save(
        make_ds(RAW, bits_stored=12, photometric=photometric, **tags), tmp_path / f"{name}.dcm"
    )
    img = read_image(path, windowing=windowing)
    expected = _by_value(RAW, fn)
    assert img.pixels.dtype == np.float32 and img.max_value == 1.0
    np.testing.assert_allclose(img.pixels, expected, rtol=0, atol=2e-6)
    assert img.meta["windowing"] == windowing
    assert img.meta["windowing_applied"] == applied
    assert img.meta["inverted"] is (photometric == "MONOCHROME1")


def _lut_file(tmp_path, *, window_too: bool, photometric="MONOCHROME2"):
    # a LUT of 2000 entries starting at stored value 1000 (values below map to entry 0, above to
    # the last), 16-bit output: a square-root curve
    first, n, bits = 1000, 2000, 16
    data = [int(round(65535 * math.sqrt(i / (n - 1)))) for i in range(n)]
    tags = dict(WindowCenter=100, WindowWidth=50) if window_too else {}
    ds = make_ds(RAW, bits_stored=12, photometric=photometric, **tags)
    ds.VOILUTSequence = Sequence([_voi_lut_item(first, n, bits, data)])

    def by_hand(x):
        i = min(max(x - first, 0), n - 1)  # PS3.3 C.11.2.1.1: clamp to the first/last entry
        y = data[i] / (2**bits - 1)
        return 1.0 - y if photometric == "MONOCHROME1" else y

    return save(ds, tmp_path / f"lut-{window_too}-{photometric}.dcm"), by_hand


@pytest.mark.parametrize("window_too", [False, True])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_voi_lut_sequence_by_hand(tmp_path, window_too, photometric):
    path, by_hand = _lut_file(tmp_path, window_too=window_too, photometric=photometric)
    for windowing in ("auto", "voi"):
        img = read_image(path, windowing=windowing)
        # the LUT wins over window tags in the same file (its first item)
        np.testing.assert_allclose(img.pixels, _by_value(RAW, by_hand), rtol=0, atol=1e-6)
        assert img.meta["windowing_applied"] == "voi_lut"
        assert img.meta["inverted"] is (photometric == "MONOCHROME1")


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_auto_without_tags_is_the_stored_range(tmp_path, photometric):
    path = _write(tmp_path, f"plain-{photometric}", PhotometricInterpretation=photometric)
    auto = read_image(path, windowing="auto")
    none = read_image(path, windowing="none")
    expected = RAW if photometric == "MONOCHROME2" else 4095 - RAW  # MONOCHROME1 inverted
    for img in (auto, none):
        assert img.pixels.dtype == np.uint16 and img.max_value == 4095.0
        np.testing.assert_array_equal(img.pixels, expected)
        assert img.meta["windowing_applied"] == "none"
    assert auto.meta["windowing"] == "auto" and none.meta["windowing"] == "none"


def test_none_ignores_window_tags(tmp_path):
    img = read_image(_write(tmp_path, "w", WindowCenter=1500, WindowWidth=500), windowing="none")
    np.testing.assert_array_equal(img.pixels, RAW)
    assert img.meta["windowing_applied"] == "none"


def test_auto_on_a_bad_window_is_an_error_not_a_fallback(tmp_path):
    path = _write(tmp_path, "zero-width", WindowCenter=1500, WindowWidth=0)
    with pytest.raises(ImageReadError, match="WindowWidth"):
        read_image(path, windowing="auto")
    path = _write(tmp_path, "odd-fn", WindowCenter=1500, WindowWidth=10, VOILUTFunction="CUBIC")
    with pytest.raises(ImageReadError, match="VOILUTFunction"):
        read_image(path, windowing="auto")


def test_auto_on_non_dicom_is_the_stored_range(tmp_path):
    arr = (RAW * 16).astype(np.uint16)
    PILImage.fromarray(arr).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png", windowing="auto")
    assert img.pixels.dtype == np.uint16 and img.max_value == 65535.0
    np.testing.assert_array_equal(img.pixels, arr)
    assert img.meta["windowing"] == "auto" and img.meta["windowing_applied"] == "none"
    assert read_image(tmp_path / "a.png").meta["windowing_applied"] == "none"


def test_preprocessing_default_is_auto_and_applies_the_window(tmp_path):
    """The default PreprocessConfig windows a DICOM that carries a window, and equals 'none' on
    one that does not."""
    assert PreprocessConfig().windowing == "auto"
    cfg = dict(image_size=16, crop="none", canonical_side=False, normalize="none")
    windowed = _write(tmp_path, "w", WindowCenter=1500, WindowWidth=500)
    plain = _write(tmp_path, "p")
    auto_w = load_and_preprocess(windowed, PreprocessConfig(**cfg))
    none_w = load_and_preprocess(windowed, PreprocessConfig(windowing="none", **cfg))
    assert not np.allclose(auto_w, none_w)
    window_w = load_and_preprocess(windowed, PreprocessConfig(windowing="window", **cfg))
    np.testing.assert_array_equal(auto_w, window_w)
    np.testing.assert_array_equal(
        load_and_preprocess(plain, PreprocessConfig(**cfg)),
        load_and_preprocess(plain, PreprocessConfig(windowing="none", **cfg)),
    )


def test_what_was_applied_comes_back_per_image_through_the_cache(tmp_path):
    """prepare_image(..., with_meta=True): the windowing applied to each image, from a miss and
    from a cache hit alike (what a store records per row)."""
    from featmammo.prepared import PreparedCache, prepare_image

    cache = PreparedCache(tmp_path / "cache", max_bytes=2**30)
    cfg = PreprocessConfig(image_size=16)
    files = {
        "window": _write(tmp_path, "w", WindowCenter=1500, WindowWidth=500),
        "none": _write(tmp_path, "p"),
        "voi_lut": _lut_file(tmp_path, window_too=False)[0],
    }
    for applied, path in files.items():
        miss, meta_miss = prepare_image(path, cfg, cache=cache, with_meta=True)
        hit, meta_hit = prepare_image(path, cfg, cache=cache, with_meta=True)
        assert np.array_equal(miss, hit) and meta_miss == meta_hit
        assert meta_hit["windowing"] == "auto" and meta_hit["windowing_applied"] == applied
        assert meta_hit["inverted"] is False and meta_hit["decoder"] == "pydicom-native"
    assert cache.stats["hits"] == 3 and cache.stats["misses"] == 3
    window = prepare_image(files["window"], cfg, cache=False, with_meta=True)[1]
    assert window["windowing_params"] == {"center": 1500.0, "width": 500.0, "function": "LINEAR"}
