"""featmammo.io: the DICOM variant table, every transfer syntax we can write, the Pillow/PGM
readers, the bad-input matrix (each reader), and the real CBIS-DDSM files (decoded once)."""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_voi, apply_windowing, get_decoder, get_encoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

import featmammo.io.dicom as dicom_mod
from featmammo.errors import ConfigError, ImageReadError
from featmammo.io import (
    DEFAULT_MAX_PIXELS,
    META_KEYS,
    Image,
    read_dicom_header,
    read_image,
)
from featmammo.io import decoders as dec_mod
from featmammo.io.dicom import read_dicom

# --------------------------------------------------------------------------- helpers


def make_ds(
    arr: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    tsyntax=ExplicitVRLittleEndian,
    **tags,
) -> Dataset:
    """A minimal single-frame secondary-capture dataset holding ``arr``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = tsyntax
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.SeriesDescription = "full mammogram images"
    ds.PatientID = "P1"
    bits_allocated = arr.dtype.itemsize * 8
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 1 if arr.ndim == 2 else arr.shape[2]
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def grey12(shape=(48, 40), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, shape).astype(np.uint16)


def smooth8(shape=(64, 48)) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]]
    return ((x * 3 + y * 2) % 256).astype(np.uint8)


def write_png(path: Path, arr: np.ndarray, color_type: int) -> Path:
    """A PNG written byte by byte (any bit depth / colour type, no Pillow involved)."""
    h, w = arr.shape[:2]
    depth = arr.dtype.itemsize * 8
    rows = b"".join(b"\x00" + arr[i].astype(f">u{arr.dtype.itemsize}").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def encode_jpeg_lossless_sv1(arr: np.ndarray, precision: int) -> bytes:
    """A minimal JPEG lossless (Process 14, selection value 1 = left predictor) encoder."""
    h, w = arr.shape
    x = arr.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]  # first row: left neighbour
    pred[1:, 0] = x[:-1, 0]  # first column: the sample above
    pred[1:, 1:] = x[1:, :-1]  # everywhere else: left (SV1)
    diff = (x - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff)
    # Huffman table: the 17 categories (SSSS 0..16), each a 5-bit code equal to SSSS
    bits = [0, 0, 0, 0, 17] + [0] * 11
    out = bytearray()
    acc, nacc = 0, 0

    def put(value: int, n: int) -> None:
        nonlocal acc, nacc
        acc = (acc << n) | (value & ((1 << n) - 1))
        nacc += n
        while nacc >= 8:
            nacc -= 8
            byte = (acc >> nacc) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0x00)  # byte stuffing
        acc &= (1 << nacc) - 1

    for d in diff.ravel().tolist():
        ssss = 16 if d == -32768 else abs(d).bit_length()
        put(ssss, 5)
        if 0 < ssss < 16:
            put(d if d > 0 else d - 1, ssss)
    if nacc:
        put((1 << (8 - nacc)) - 1, 8 - nacc)  # pad with ones

    def segment(marker: int, payload: bytes) -> bytes:
        return struct.pack(">HH", marker, len(payload) + 2) + payload

    sof3 = struct.pack(">BHHB", precision, h, w, 1) + bytes([1, 0x11, 0])
    dht = bytes([0x00]) + bytes(bits) + bytes(range(17))
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # 1 component, table 0; Ss=1 (predictor), Se=0, Ah/Al=0
    return (
        b"\xff\xd8"
        + segment(0xFFC3, sof3)
        + segment(0xFFC4, dht)
        + segment(0xFFDA, sos)
        + bytes(out)
        + b"\xff\xd9"
    )


# --------------------------------------------------------------------------- DICOM variant table

RAW12 = grey12()


def _expected_window(arr, ds):
    bits = ds.BitsStored
    return apply_windowing(arr.astype(np.float64), ds) / (2**bits - 1)


VARIANTS = {
    # name: (dataset kwargs, read kwargs, expected(pixels) function, expected max_value)
    "mono2-12bit": (
        dict(arr=RAW12, bits_stored=12),
        dict(),
        lambda: RAW12,
        4095.0,
    ),
    "mono1-12bit-inverted": (
        dict(arr=RAW12, bits_stored=12, photometric="MONOCHROME1"),
        dict(),
        lambda: 4095 - RAW12,
        4095.0,
    ),
    "12-in-16-high-bits-masked": (
        dict(arr=RAW12 | np.uint16(0xA000), bits_stored=12),
        dict(),
        lambda: RAW12,
        4095.0,
    ),
    "signed-12bit-shifted": (
        dict(arr=(RAW12.astype(np.int16) - 2048), bits_stored=12),
        dict(),
        lambda: RAW12,  # stored -2048..2047 -> 0..4095 (offset 2048)
        4095.0,
    ),
    "rescale-integer": (
        dict(arr=RAW12 // 4, bits_stored=10, RescaleSlope=2, RescaleIntercept=-100),
        dict(),
        lambda: (RAW12 // 4).astype(np.int32) * 2,  # [-100, 1946] shifted by 100
        2046.0,
    ),
    "rescale-fractional": (
        dict(arr=RAW12, bits_stored=12, RescaleSlope=0.5, RescaleIntercept=10.0),
        dict(),
        lambda: RAW12.astype(np.float64) / 4095,
        1.0,
    ),
    "window-linear": (
        dict(arr=RAW12, bits_stored=12, WindowCenter=2000, WindowWidth=1500),
        dict(windowing="window"),
        None,  # compared with pydicom.apply_windowing below
        1.0,
    ),
    "window-linear-exact": (
        dict(
            arr=RAW12,
            bits_stored=12,
            WindowCenter=1500,
            WindowWidth=1000,
            VOILUTFunction="LINEAR_EXACT",
        ),
        dict(windowing="window"),
        None,
        1.0,
    ),
    "window-sigmoid": (
        dict(
            arr=RAW12, bits_stored=12, WindowCenter=2048, WindowWidth=800, VOILUTFunction="SIGMOID"
        ),
        dict(windowing="voi"),
        None,
        1.0,
    ),
    "window-mono1": (
        dict(
            arr=RAW12,
            bits_stored=12,
            photometric="MONOCHROME1",
            WindowCenter=2000,
            WindowWidth=1500,
        ),
        dict(windowing="window"),
        "mono1",
        1.0,
    ),
    "percentile": (
        dict(arr=RAW12, bits_stored=12),
        dict(windowing="percentile"),
        "percentile",
        1.0,
    ),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_dicom_variant_table(name, tmp_path, caplog, monkeypatch):
    ds_kwargs, read_kwargs, expected, max_value = VARIANTS[name]
    ds_kwargs = dict(ds_kwargs)
    arr = ds_kwargs.pop("arr")
    ds = make_ds(arr, **ds_kwargs)
    path = save(ds, tmp_path / f"{name}.dcm")
    monkeypatch.setattr("featmammo.io.dicom._monochrome1_warned", False)
    with caplog.at_level(logging.INFO, logger="featmammo.io.dicom"):
        img = read_image(path, **read_kwargs)
    assert isinstance(img, Image)
    assert img.pixels.ndim == 2 and img.pixels.shape == arr.shape
    assert img.max_value == max_value
    assert img.meta["windowing"] == read_kwargs.get("windowing", "none")
    assert img.meta["decoder"] == "pydicom-native"
    assert img.meta["bits_stored"] == ds.BitsStored
    assert set(META_KEYS) <= set(img.meta)
    assert img.pixels.flags.writeable and img.pixels.flags.c_contiguous
    inverted = ds.PhotometricInterpretation == "MONOCHROME1"
    assert img.meta["inverted"] is inverted
    said = [r for r in caplog.records if "MONOCHROME1" in r.getMessage()]
    assert len(said) == (1 if inverted else 0)
    assert all(r.levelno == logging.INFO for r in said)  # correct handling: no warning
    if img.max_value == 1.0:
        assert img.pixels.dtype == np.float32
        assert img.pixels.min() >= 0.0 and img.pixels.max() <= 1.0
    else:
        assert img.pixels.dtype == np.uint16
    if callable(expected):
        np.testing.assert_allclose(img.pixels, expected(), atol=1e-6)
    elif expected is None:  # window: same numbers as pydicom's (float64) implementation
        np.testing.assert_allclose(img.pixels, _expected_window(arr, ds), atol=2e-5)
    elif expected == "mono1":
        np.testing.assert_allclose(img.pixels, 1.0 - _expected_window(arr, ds), atol=2e-5)
    elif expected == "percentile":
        lo, hi = np.percentile(arr, [0.5, 99.5])
        assert img.meta["windowing_params"]["low"] == pytest.approx(lo, abs=1)
        assert img.meta["windowing_params"]["high"] == pytest.approx(hi, abs=1)
        assert (img.pixels == 0).mean() >= 0.004 and (img.pixels == 1).mean() >= 0.004


def test_voi_lut_sequence(tmp_path):
    arr = grey12(seed=3)
    ds = make_ds(arr, bits_stored=12)
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUTDescriptor (ambiguous VR: US or SS)
    lut = (np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16)
    item.add_new(0x00283006, "US", [int(v) for v in lut])  # LUTData (US or OW)
    ds.VOILUTSequence = Sequence([item])
    path = save(ds, tmp_path / "voilut.dcm")
    img = read_image(path, windowing="voi")
    expected = apply_voi(arr, ds).astype(np.float64) / 65535
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)
    assert img.meta["windowing_params"]["voi_lut"] is True
    # 'window' ignores the LUT and there are no window tags: an error, not a fallback
    with pytest.raises(ImageReadError, match="WindowCenter"):
        read_image(path, windowing="window")


def test_window_policy_without_tags_is_an_error(tmp_path):
    path = save(make_ds(grey12(), bits_stored=12), tmp_path / "plain.dcm")
    for windowing in ("voi", "window"):
        with pytest.raises(ImageReadError, match="WindowCenter"):
            read_image(path, windowing=windowing)
    with pytest.raises(ConfigError, match="windowing"):
        read_image(path, windowing="lut")


def test_8bit_dicom_stays_uint8(tmp_path):
    arr = smooth8()
    img = read_image(save(make_ds(arr), tmp_path / "u8.dcm"))
    assert img.pixels.dtype == np.uint8 and img.max_value == 255.0
    np.testing.assert_array_equal(img.pixels, arr)


# --------------------------------------------------------------------------- transfer syntaxes


def _jpeg_baseline(tmp_path) -> tuple[Path, np.ndarray]:
    arr = smooth8()
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="JPEG", quality=95)
    ds = make_ds(arr, tsyntax=JPEGBaseline8Bit)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    return save(ds, tmp_path / "jpeg.dcm"), arr


def _compressed(tmp_path, tsyntax, name, arr=None, **ds_kwargs):
    arr = grey12() if arr is None else arr
    try:
        available = get_encoder(tsyntax).is_available
    except NotImplementedError:  # pydicom has no encoder at all (JPEG lossless, baseline)
        available = False
    if not available:
        pytest.skip(f"no {tsyntax.name} encoder installed: cannot write a test file (decode-only)")
    ds = make_ds(arr, bits_stored=ds_kwargs.pop("bits_stored", 12), **ds_kwargs)
    ds.compress(tsyntax, generate_instance_uid=False)
    return save(ds, tmp_path / f"{name}.dcm"), arr


@pytest.mark.parametrize(
    "tsyntax, decoder",
    [
        (ExplicitVRLittleEndian, "pydicom-native"),
        (ImplicitVRLittleEndian, "pydicom-native"),
        (DeflatedExplicitVRLittleEndian, "pydicom-native"),
        (RLELossless, "pylibjpeg-rle"),
        (JPEG2000Lossless, "pylibjpeg-openjpeg"),
        (JPEGLSLossless, "pylibjpeg-libjpeg"),
        (JPEGLosslessSV1, "pylibjpeg-libjpeg"),
        (JPEGLossless, "pylibjpeg-libjpeg"),
    ],
    ids=lambda v: getattr(v, "name", v),
)
def test_lossless_transfer_syntaxes_round_trip(tsyntax, decoder, tmp_path):
    if tsyntax in (JPEGLossless, JPEGLosslessSV1):  # pydicom has no encoder: our own, above
        arr = grey12()
        ds = make_ds(arr, bits_stored=12, tsyntax=tsyntax)
        ds.PixelData = encapsulate([encode_jpeg_lossless_sv1(arr, 12)])
        ds["PixelData"].VR = "OB"
        path = save(ds, tmp_path / "ts.dcm")
    elif tsyntax == JPEGLSLossless and not get_encoder(tsyntax).is_available:
        import imagecodecs  # pydicom's JPEG-LS encoder needs pyjpegls; CharLS via imagecodecs

        arr = grey12()
        ds = make_ds(arr, bits_stored=12, tsyntax=tsyntax)
        ds.PixelData = encapsulate([imagecodecs.jpegls_encode(arr, level=0)])
        ds["PixelData"].VR = "OB"
        path = save(ds, tmp_path / "ts.dcm")
    elif tsyntax.is_compressed:
        path, arr = _compressed(tmp_path, tsyntax, "ts")
    else:
        arr = grey12()
        ds = make_ds(arr, bits_stored=12, tsyntax=tsyntax)
        path = save(ds, tmp_path / "ts.dcm")
    img = read_image(path)
    np.testing.assert_array_equal(img.pixels, arr)
    assert img.meta["transfer_syntax"] == tsyntax
    assert img.meta["decoder"] == decoder
    assert img.meta["lossy"] is False


def test_jpeg_lossless_16bit_full_range(tmp_path):
    arr = np.random.default_rng(9).integers(0, 65536, (40, 32)).astype(np.uint16)
    ds = make_ds(arr, tsyntax=JPEGLosslessSV1)
    ds.PixelData = encapsulate([encode_jpeg_lossless_sv1(arr, 16)])
    ds["PixelData"].VR = "OB"
    img = read_image(save(ds, tmp_path / "jl16.dcm"))
    assert img.max_value == 65535.0
    np.testing.assert_array_equal(img.pixels, arr)


def test_rle_signed_and_monochrome1(tmp_path):
    signed = grey12(seed=5).astype(np.int16) - 2048
    path, _ = _compressed(tmp_path, RLELossless, "rle-signed", arr=signed)
    np.testing.assert_array_equal(read_image(path).pixels, signed + 2048)
    path, arr = _compressed(tmp_path, RLELossless, "rle-m1", photometric="MONOCHROME1")
    np.testing.assert_array_equal(read_image(path).pixels, 4095 - arr)


def test_jpeg2000_signed_lossless_and_lossy(tmp_path):
    signed = grey12(seed=7).astype(np.int16) - 2048
    path, _ = _compressed(tmp_path, JPEG2000Lossless, "j2k-signed", arr=signed)
    img = read_image(path)
    np.testing.assert_array_equal(img.pixels, signed + 2048)
    assert img.max_value == 4095.0 and img.meta["offset"] == 2048
    y, x = np.mgrid[:48, :40]
    smooth = (x * 60 + y * 30).astype(np.uint16)
    ds = make_ds(smooth, bits_stored=12)
    ds.compress(JPEG2000, j2k_cr=[5], generate_instance_uid=False)
    img = read_image(save(ds, tmp_path / "j2k-lossy.dcm"))
    assert img.meta["lossy"] is True and img.meta["decoder"] == "pylibjpeg-openjpeg"
    assert np.abs(img.pixels.astype(int) - smooth).mean() < 20


def test_jpeg_baseline_encapsulated(tmp_path):
    path, arr = _jpeg_baseline(tmp_path)
    img = read_image(path)
    assert img.pixels.dtype == np.uint8 and img.max_value == 255.0
    assert img.meta["decoder"] == "pylibjpeg-libjpeg" and img.meta["lossy"] is True
    assert np.abs(img.pixels.astype(int) - arr).mean() < 2.0  # lossy, but the same picture


def test_decoder_preference_and_override(tmp_path, monkeypatch):
    path, arr = _compressed(tmp_path, RLELossless, "rle")
    assert dicom_mod.available_decoders(RLELossless)[0] == "pylibjpeg"
    native = read_dicom(path, decoding_plugin="pydicom")
    assert native.meta["decoder"] == "pydicom-rle"
    np.testing.assert_array_equal(native.pixels, arr)
    with pytest.raises(ConfigError, match="not available"):
        read_dicom(path, decoding_plugin="pillow")
    # without pylibjpeg-rle, pydicom's own RLE decoder is the explicit choice
    rle = get_decoder(RLELossless)
    monkeypatch.setattr(rle, "_available", {"pydicom": rle._available["pydicom"]})
    assert read_image(path).meta["decoder"] == "pydicom-rle"


# --------------------------------------------------------------------------- DICOM bad input


def test_dicom_missing_decoder_plugin(tmp_path, monkeypatch):
    path, _ = _compressed(tmp_path, RLELossless, "rle")
    monkeypatch.setattr(get_decoder(RLELossless), "_available", {})
    with pytest.raises(ImageReadError, match="no decoder plugin installed") as info:
        read_image(path)
    assert info.value.path == str(path)


def test_dicom_unsupported_transfer_syntax(tmp_path):
    ds = make_ds(grey12())
    path = save(ds, tmp_path / "private.dcm")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.9.9999.1"  # a private syntax
    ds.save_as(path, enforce_file_format=False)
    with pytest.raises(ImageReadError, match="transfer syntax"):
        read_image(path)


@pytest.mark.parametrize("ext", [".dcm", ""])
def test_dicom_zero_byte_and_not_dicom(tmp_path, ext):
    empty = tmp_path / f"empty{ext}"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(empty)
    text = tmp_path / f"notes{ext}"
    text.write_text("this is a radiology report, not an image\n" * 10)
    with pytest.raises(ImageReadError, match="not a DICOM file|unrecognised"):
        read_image(text)
    with pytest.raises(ImageReadError, match="not a DICOM file"):
        read_dicom_header(text)


@pytest.mark.parametrize("kind", ["native", "rle"])
def test_dicom_truncated_pixel_data(tmp_path, kind):
    if kind == "native":
        path = save(make_ds(grey12(), bits_stored=12), tmp_path / "t.dcm")
    else:
        path, _ = _compressed(tmp_path, RLELossless, "t")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom: "End of file reached before delimiter"
        with pytest.raises(ImageReadError, match="less than expected|truncated") as info:
            read_image(path)
    assert info.value.path == str(path)
    # the header is still readable
    assert read_dicom_header(path)["rows"] == 48


@pytest.mark.parametrize("keep", [200, 300, "in-element"])
def test_dicom_cut_in_its_header_is_reported_truncated(tmp_path, keep):
    """A download cut inside the file meta (200 bytes) or inside a header element is 'truncated',
    not 'no Pixel Data ... (a report?)'."""
    path = save(make_ds(grey12(), bits_stored=12), tmp_path / "full.dcm")
    data = path.read_bytes()
    if keep == "in-element":  # a few bytes into SeriesDescription's value
        keep = data.index(b"full mammogram images") + 5
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:keep])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageReadError, match="truncated") as info:
            read_image(cut)
    assert "a report" not in str(info.value) and info.value.path == str(cut)


@pytest.mark.parametrize("name", ["image.dcm", "image.dcm.gz", "image"])
def test_gzipped_dicom_is_named_as_such(tmp_path, name):
    import gzip

    data = save(make_ds(grey12(), bits_stored=12), tmp_path / "plain.dcm").read_bytes()
    path = tmp_path / name
    path.write_bytes(gzip.compress(data))
    with pytest.raises(ImageReadError, match="gzip-compressed") as info:
        read_image(path)
    assert "not a DICOM file" not in str(info.value) and "gunzip" in str(info.value)
    if name.endswith(".dcm"):
        with pytest.raises(ImageReadError, match="gzip-compressed"):
            read_dicom_header(path)


def test_dicom_without_pixel_data(tmp_path):
    ds = make_ds(grey12())
    del ds.PixelData
    path = save(ds, tmp_path / "nopix.dcm")
    with pytest.raises(ImageReadError, match="no Pixel Data"):
        read_image(path)
    assert read_dicom_header(path)["series_description"] == "full mammogram images"


def test_dicom_colour_vs_grey(tmp_path):
    grey = smooth8()
    same = np.repeat(grey[..., None], 3, axis=2)
    img = read_image(save(make_ds(same, photometric="RGB"), tmp_path / "grey-rgb.dcm"))
    np.testing.assert_array_equal(img.pixels, grey)
    colour = same.copy()
    colour[..., 0] = 255 - colour[..., 0]
    with pytest.raises(ImageReadError, match="colour"):
        read_image(save(make_ds(colour, photometric="RGB"), tmp_path / "rgb.dcm"))


def test_dicom_max_pixels_checked_before_decoding(tmp_path, monkeypatch):
    path = save(make_ds(grey12()), tmp_path / "big.dcm")

    def no_decode(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(dicom_mod, "pixel_array", no_decode)
    with pytest.raises(ImageReadError, match="max_pixels"):
        read_image(path, max_pixels=48 * 40 - 1)
    assert DEFAULT_MAX_PIXELS == 60_000_000


def test_dicom_multiframe_rejected(tmp_path):
    arr = np.concatenate([grey12(), grey12(seed=1)])
    ds = make_ds(arr, bits_stored=12)
    ds.Rows = 48
    ds.NumberOfFrames = 2
    with pytest.raises(ImageReadError, match="multi-frame"):
        read_image(save(ds, tmp_path / "mf.dcm"))


def test_missing_path_and_directory(tmp_path):
    for name in ("missing.dcm", "missing.png", "missing.pgm", "missing"):
        with pytest.raises(ImageReadError, match="does not exist") as info:
            read_image(tmp_path / name)
        assert info.value.path.endswith(name)
    with pytest.raises(ImageReadError, match="does not exist"):
        read_dicom_header(tmp_path / "missing.dcm")
    with pytest.raises(ImageReadError, match="regular file"):
        read_image(tmp_path)


# --------------------------------------------------------------------------- header metadata


@pytest.mark.parametrize(
    "tags, expected",
    [
        ({"ImageLaterality": "R", "ViewPosition": "MLO"}, ("R", "MLO")),
        ({"Laterality": "L", "PatientOrientation": "CC"}, ("L", "CC")),
        ({"PatientID": "Mass-Test_P_00173_LEFT_CC"}, ("L", "CC")),
        ({"PatientID": "Calc-Training_P_00005_RIGHT_MLO_1"}, ("R", "MLO")),
        ({"ImageLaterality": "B", "PatientOrientation": "A\\R"}, (None, None)),
        ({"ImageLaterality": "L", "PatientID": "X_RIGHT_CC"}, ("L", "CC")),  # tag wins
    ],
)
def test_laterality_and_view(tmp_path, tags, expected):
    ds = make_ds(grey12(), **tags)
    path = save(ds, tmp_path / "lat.dcm")
    meta = read_dicom_header(path)
    assert (meta["laterality"], meta["view"]) == expected
    assert meta["decoder"] is None and meta["format"] == "dicom"


def test_view_code_sequence(tmp_path):
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "399368009", "SCT"
    item.CodeMeaning = "medio-lateral oblique"
    ds = make_ds(grey12(), ViewCodeSequence=Sequence([item]))
    assert read_dicom_header(save(ds, tmp_path / "vcs.dcm"))["view"] == "MLO"


# ------------------------------------------------------------------------ PNG / JPEG / TIFF / PGM


def test_png_16bit_round_trip(tmp_path):
    arr = (np.random.default_rng(1).integers(0, 65536, (40, 30))).astype(np.uint16)
    path = tmp_path / "a16.png"
    PILImage.fromarray(arr).save(path)
    img = read_image(path)
    assert img.pixels.dtype == np.uint16 and img.max_value == 65535.0
    np.testing.assert_array_equal(img.pixels, arr)
    assert img.meta["format"] == "png" and img.meta["bits_stored"] == 16
    # written without Pillow too (big-endian samples in the file)
    np.testing.assert_array_equal(read_image(write_png(tmp_path / "b16.png", arr, 0)).pixels, arr)


def test_png_8bit_and_grey_rgb(tmp_path):
    arr = smooth8()
    img = read_image(write_png(tmp_path / "g8.png", arr, 0))
    assert img.pixels.dtype == np.uint8 and img.max_value == 255.0
    np.testing.assert_array_equal(img.pixels, arr)
    assert img.pixels.flags.writeable and img.pixels.flags.c_contiguous
    rgb = np.repeat(arr[..., None], 3, axis=2)
    img = read_image(write_png(tmp_path / "rgb.png", rgb, 2))
    np.testing.assert_array_equal(img.pixels, arr)
    assert img.pixels.flags.writeable and img.pixels.flags.c_contiguous and img.pixels.base is None
    colour = rgb.copy()
    colour[..., 2] = 0
    with pytest.raises(ImageReadError, match="colour"):
        read_image(write_png(tmp_path / "colour.png", colour, 2))


def test_png_16bit_colour_refused(tmp_path):
    rgb16 = np.repeat(grey12()[..., None], 3, axis=2)
    with pytest.raises(ImageReadError, match="8 bits"):
        read_image(write_png(tmp_path / "rgb16.png", rgb16, 2))


@pytest.mark.parametrize("fmt, ext", [("PNG", ".png"), ("JPEG", ".jpg"), ("TIFF", ".tif")])
def test_pillow_bad_input(tmp_path, fmt, ext):
    empty = tmp_path / f"empty{ext}"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(empty)
    text = tmp_path / f"text{ext}"
    text.write_text("not an image at all\n" * 20)
    with pytest.raises(ImageReadError, match="not a readable"):
        read_image(text)
    arr = np.random.default_rng(2).integers(0, 256, (64, 64)).astype(np.uint8)
    good = tmp_path / f"good{ext}"
    PILImage.fromarray(arr).save(good, format=fmt)
    data = good.read_bytes()
    truncated = tmp_path / f"trunc{ext}"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated|decode|readable"):
        read_image(truncated)
    with pytest.raises(ImageReadError, match="max_pixels"):
        read_image(good, max_pixels=64 * 64 - 1)
    with pytest.raises(ImageReadError, match="needs DICOM"):
        read_image(good, windowing="window")
    colour = np.stack([arr, arr // 2, 255 - arr], axis=2)
    path = tmp_path / f"colour{ext}"
    PILImage.fromarray(colour).save(path, format=fmt)
    with pytest.raises(ImageReadError, match="colour"):
        read_image(path)


def test_jpeg_and_tiff(tmp_path):
    arr = smooth8()
    PILImage.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    img = read_image(tmp_path / "a.jpg")
    assert img.meta["format"] == "jpeg" and img.meta["lossy"] is True
    assert img.pixels.dtype == np.uint8 and np.abs(img.pixels.astype(int) - arr).mean() < 2.0
    a16 = grey12() * 16
    PILImage.fromarray(a16).save(tmp_path / "a16.tif")
    img = read_image(tmp_path / "a16.tif")
    assert img.pixels.dtype == np.uint16 and img.max_value == 65535.0
    np.testing.assert_array_equal(img.pixels, a16)
    be = PILImage.frombuffer("I;16B", a16.shape[::-1], a16.astype(">u2").tobytes())
    be.save(tmp_path / "be.tif")
    img = read_image(tmp_path / "be.tif")
    assert img.pixels.dtype == np.uint16
    np.testing.assert_array_equal(img.pixels, a16)
    PILImage.fromarray(arr).save(tmp_path / "a8.tiff")
    np.testing.assert_array_equal(read_image(tmp_path / "a8.tiff").pixels, arr)


def _pgm(path: Path, arr: np.ndarray, maxval: int, ascii_: bool = False) -> Path:
    h, w = arr.shape
    header = f"P{2 if ascii_ else 5}\n# a comment\n{w} {h}\n{maxval}\n".encode()
    if ascii_:
        body = " ".join(str(int(v)) for v in arr.ravel()).encode()
    else:
        body = arr.astype(">u2" if maxval > 255 else np.uint8).tobytes()
    path.write_bytes(header + body)
    return path


def test_pgm_exact(tmp_path):
    a12 = grey12()
    img = read_image(_pgm(tmp_path / "a12.pgm", a12, 4095))  # Pillow would rescale this
    assert img.pixels.dtype == np.uint16 and img.max_value == 4095.0
    assert img.meta["bits_stored"] == 12
    np.testing.assert_array_equal(img.pixels, a12)
    a8 = smooth8()
    img = read_image(_pgm(tmp_path / "a8.pgm", a8, 255))
    assert img.pixels.dtype == np.uint8
    np.testing.assert_array_equal(img.pixels, a8)
    np.testing.assert_array_equal(read_image(_pgm(tmp_path / "t.pgm", a12, 4095, True)).pixels, a12)
    img = read_image(_pgm(tmp_path / "p.pgm", a12, 4095), windowing="percentile")
    assert img.pixels.dtype == np.float32 and img.max_value == 1.0


def test_pgm_bad_input(tmp_path):
    empty = tmp_path / "e.pgm"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(empty)
    bad = tmp_path / "bad.pgm"
    bad.write_text("hello world")
    with pytest.raises(ImageReadError, match="not a PGM"):
        read_image(bad)
    path = _pgm(tmp_path / "a.pgm", grey12(), 4095)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(path)
    path = _pgm(tmp_path / "b.pgm", grey12(), 4095)
    with pytest.raises(ImageReadError, match="max_pixels"):
        read_image(path, max_pixels=100)
    with pytest.raises(ImageReadError, match="needs DICOM"):
        read_image(path, windowing="voi")
    rgb = np.stack([smooth8(), smooth8() // 2, smooth8()], axis=2)
    ppm = tmp_path / "c.ppm"
    ppm.write_bytes(b"P6\n48 64\n255\n" + rgb.tobytes())
    with pytest.raises(ImageReadError, match="colour"):
        read_image(ppm)


def test_format_sniffed_without_extension(tmp_path):
    arr = grey12()
    save(make_ds(arr, bits_stored=12), tmp_path / "IM0001")
    assert read_image(tmp_path / "IM0001").meta["format"] == "dicom"
    PILImage.fromarray(arr * 16).save(tmp_path / "blob", format="PNG")
    assert read_image(tmp_path / "blob").meta["format"] == "png"
    (tmp_path / "junk").write_bytes(b"\x00" * 300)
    with pytest.raises(ImageReadError, match="unrecognised"):
        read_image(tmp_path / "junk")


def test_image_read_error_pickles(tmp_path):
    import pickle

    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "nope.png")
    again = pickle.loads(pickle.dumps(info.value))
    assert again.path == info.value.path and again.reason == info.value.reason


# --------------------------------------------------------------------------- real CBIS-DDSM files


@pytest.fixture(scope="module")
def real_lcc(real_dicoms) -> tuple[Path, Image, np.ndarray]:
    """sfm-benign-0/1-130.dcm (Mass-Test_P_00173_LEFT_CC), decoded by both RLE decoders once."""
    path = next(p for p in real_dicoms if p.parent.name == "sfm-benign-0" and p.name == "1-130.dcm")
    img = read_image(path)
    reference = read_dicom(path, decoding_plugin="pydicom").pixels
    return path, img, reference


def test_real_dicom_decode(real_lcc):
    path, img, reference = real_lcc
    assert img.pixels.dtype == np.uint16 and img.pixels.ndim == 2
    rows, cols = img.pixels.shape
    assert 4000 <= rows <= 5400 and 2000 <= cols <= 3300
    assert img.max_value == 65535.0 and img.meta["bits_stored"] == 16
    assert (img.meta["laterality"], img.meta["view"]) == ("L", "CC")
    assert img.meta["decoder"] == "pylibjpeg-rle" and img.meta["decoding_plugin"] == "pylibjpeg"
    assert img.meta["transfer_syntax"] == RLELossless
    assert img.meta["patient_id"] == "Mass-Test_P_00173_LEFT_CC"
    assert img.meta["series_description"] == "full mammogram images"
    assert img.meta["study_uid"].startswith("1.3.6.1.4.1.9590")
    np.testing.assert_array_equal(img.pixels, reference)
    assert img.pixels.max() > 10_000  # real content, not zeros


def test_real_dicom_headers(real_dicoms):
    expected = {"1-130": ("L", "CC"), "1-131": ("L", "MLO"), "1-132": ("R", "CC")}
    expected |= {"1-133": ("R", "MLO"), "1-280": ("L", "CC"), "1-281": ("L", "MLO")}
    expected |= {"1-282": ("R", "CC"), "1-283": ("R", "MLO")}
    assert len(real_dicoms) == 8
    for path in real_dicoms:
        meta = read_dicom_header(path)
        assert (meta["laterality"], meta["view"]) == expected[path.stem], path
        assert meta["transfer_syntax"] == RLELossless and meta["bits_stored"] == 16
        assert 4000 <= meta["rows"] <= 5400 and 2000 <= meta["cols"] <= 3300
        assert meta["patient_id"].startswith("Mass-Test_P_")


# --------------------------------------------------------------------------- decoders: imagecodecs
# fallback when the chosen plugin fails; optional GPU (nvImageCodec) JPEG 2000 decoding


def _testdata(name):
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return path


def test_jpeg_extended_12bit_that_pylibjpeg_refuses_decodes_with_imagecodecs(caplog):
    """pydicom's JPEG-lossy.dcm (12-bit JPEG Extended, Se = 0 in its scan header)."""
    with caplog.at_level(logging.WARNING):
        img = read_image(_testdata("JPEG-lossy.dcm"))
    assert img.pixels.dtype == np.uint16 and img.pixels.shape == (1024, 256)
    assert img.pixels[420, 140] == 244 and img.pixels[230, 120] == 95  # pydicom's reference values
    assert img.meta["decoder"] == "imagecodecs-jpeg8"
    assert img.meta["decoding_plugin"] == "imagecodecs"
    assert img.meta["decoder_fallback"].startswith("pylibjpeg-libjpeg failed: ")
    assert "scan stop must be 63" in img.meta["decoder_fallback"]
    assert "decoded with imagecodecs-jpeg8 instead" in caplog.text
    # the same picture as pylibjpeg's decode of the corrected file (lossy IDCTs differ by <= 1)
    fixed = read_image(_testdata("JPGExtended.dcm"))
    assert fixed.meta["decoder"] == "pylibjpeg-libjpeg" and "decoder_fallback" not in fixed.meta
    assert np.abs(img.pixels.astype(int) - fixed.pixels.astype(int)).max() <= 1


def test_no_fallback_when_a_plugin_is_forced_and_both_failures_are_named():
    with pytest.raises(ImageReadError, match=r"(?s)plugin pylibjpeg.*scan stop must be 63"):
        read_dicom(_testdata("JPEG-lossy.dcm"), decoding_plugin="pylibjpeg")
    with pytest.raises(
        ImageReadError,
        match=r"(?s)plugin pylibjpeg failed .*imagecodecs-jpeg2k fallback failed too",
    ):
        read_image(_testdata("JPEG2000-embedded-sequence-delimiter.dcm"))


@pytest.mark.parametrize(
    "name",
    [
        "693_J2KI.dcm",
        "J2K_pixelrep_mismatch.dcm",
        "JPEG2000.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "JPEGLSNearLossless_16.dcm",
    ],
)
def test_outside_decoders_give_pydicoms_array(name):
    """The dtype / sign handling shared by the imagecodecs and GPU paths matches pydicom."""
    from pydicom.pixels import pixel_array

    ds = pydicom.dcmread(_testdata(name))
    reference = pixel_array(ds)
    arr, _ = dec_mod.decode_frame_imagecodecs(ds, str(ds.file_meta.TransferSyntaxUID))
    assert arr.dtype == reference.dtype
    np.testing.assert_array_equal(arr, reference)


def test_as_pydicom_dtype_sign_extends_from_bits_stored():
    ds = Dataset()
    ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 16, 12, 1
    raw = np.array([0x0FFF, 0x0800, 0x07FF, 0], np.uint16)
    np.testing.assert_array_equal(dec_mod.as_pydicom_dtype(raw, ds), [-1, -2048, 2047, 0])
    ds.PixelRepresentation = 0
    assert dec_mod.as_pydicom_dtype(raw.astype(np.uint8), ds).dtype == np.uint16


def test_decoder_option_cpu_default_auto_and_explicit_gpu(tmp_path):
    path, arr = _compressed(tmp_path, JPEG2000Lossless, "j2k")
    with pytest.raises(ConfigError, match="decoder must be one of"):
        read_image(path, decoder="gpu")
    img = read_image(path)
    assert img.meta["decoder_requested"] == "cpu" and img.meta["decoder"] == "pylibjpeg-openjpeg"
    if dec_mod.nvimagecodec_status()[0]:
        pytest.skip("nvImageCodec and CUDA are available: see the gpu-marked test")
    auto = read_image(path, decoder="auto")  # no GPU decoder here: the CPU path, recorded
    assert auto.meta["decoder"] == "pylibjpeg-openjpeg" and auto.meta["decoder_requested"] == "auto"
    np.testing.assert_array_equal(auto.pixels, arr)
    with pytest.raises(ConfigError, match="decoder='nvimagecodec' but it cannot run"):
        read_image(path, decoder="nvimagecodec")
    # other syntaxes never go to the GPU decoder, whatever is asked
    rle, _ = _compressed(tmp_path, RLELossless, "rle")
    assert read_image(rle, decoder="nvimagecodec").meta["decoder"] == "pylibjpeg-rle"
    assert dec_mod.resolve_decoder("nvimagecodec", str(RLELossless)) == "cpu"


@pytest.mark.gpu
def test_nvimagecodec_pixels_equal_cpu_decoder(tmp_path):
    """GPU JPEG 2000 decoding (nvImageCodec) gives the CPU decoder's pixels exactly."""
    ok, reason = dec_mod.nvimagecodec_status()
    if not ok:
        pytest.skip(reason)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:3000, :2400]
    big = ((x * 7 + y * 3) % 4096 + rng.integers(0, 16, x.shape)).clip(0, 4095).astype(np.uint16)
    files = [_compressed(tmp_path, JPEG2000Lossless, "big", arr=big)[0]]
    signed = grey12(seed=3).astype(np.int16) - 2048
    files.append(_compressed(tmp_path, JPEG2000Lossless, "signed", arr=signed)[0])
    for name in ("MR_small_jp2klossless.dcm", "J2K_pixelrep_mismatch.dcm", "693_J2KI.dcm"):
        path = get_testdata_file(name, download=False)
        if path is not None:
            files.append(path)
    for path in files:
        cpu = read_image(path)
        gpu = read_image(path, decoder="nvimagecodec")
        assert gpu.meta["decoder"] == "nvimagecodec-nvjpeg2k", path
        assert gpu.meta["decoding_plugin"] == "nvimagecodec"
        assert gpu.pixels.dtype == cpu.pixels.dtype and gpu.max_value == cpu.max_value
        np.testing.assert_array_equal(gpu.pixels, cpu.pixels, err_msg=str(path))
        assert read_image(path, decoder="auto").meta["decoder"] == "nvimagecodec-nvjpeg2k"
