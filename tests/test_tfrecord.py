"""TFRecord framing, CRC checks, tf.train.Example parsing and FILE#INDEX / .npy record reads."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from featmammo.errors import ImageReadError
from featmammo.io import read_image, record_path, split_record_path
from featmammo.io import tfrecord as tfr


def _patches(n, seed=0, size=299):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(n)]


def _write(path, imgs, labels):
    recs = (
        tfr.serialize_example(
            {"label": [int(y)], "label_normal": [int(y > 0)], "image": [im.tobytes()]}
        )
        for im, y in zip(imgs, labels, strict=True)
    )
    return tfr.write_records(path, recs)


def test_crc32c_and_mask():
    import google_crc32c

    assert google_crc32c.value(b"123456789") == 0xE3069283  # the CRC-32C check value
    crc = 0xE3069283
    assert tfr.masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


def test_iter_read_and_offsets(tmp_path):
    imgs = _patches(4, size=20)
    p = tmp_path / "training10_0.tfrecords"
    assert _write(p, imgs, [0, 1, 2, 4]) == 4
    seen = list(tfr.iter_records(p))
    assert [i for i, _, _ in seen] == [0, 1, 2, 3]
    offsets = tfr.record_offsets(p)
    assert [o for _, o, _ in seen] == offsets.tolist() and offsets[0] == 0
    assert tfr.count_records(p) == 4
    for i, _, data in seen:
        assert tfr.read_record(p, i) == data
        ex = tfr.parse_example(data)
        assert ex["image"] == [imgs[i].tobytes()] and ex["label"] == [[0, 1, 2, 4][i]]
    with pytest.raises(ImageReadError, match="record index 4 out of range: the file holds 4"):
        tfr.read_record(p, 4)


def test_parse_example_packed_and_unpacked():
    ex = tfr.parse_example(tfr.serialize_example({"f": [1.5, -2.0], "n": [-3, 2**40], "e": []}))
    assert ex == {"f": [1.5, -2.0], "n": [-3, 2**40], "e": []}

    # unpacked int64 (wire type 0) and float (wire type 5) values, as proto2 writers emit them
    def ld(field, payload):
        return bytes([field << 3 | 2, len(payload)]) + payload

    ints = ld(3, b"\x08\x07\x08\x09")  # Int64List{value: 7, value: 9} unpacked
    floats = ld(2, b"\x0d" + struct.pack("<f", 0.25))
    entries = ld(1, ld(1, b"a") + ld(2, ints)) + ld(1, ld(1, b"b") + ld(2, floats))
    assert tfr.parse_example(ld(1, entries)) == {"a": [7, 9], "b": [0.25]}
    with pytest.raises(tfr.ExampleParseError):
        tfr.parse_example(b"\x0a\x50\x0a")  # length runs past the message


@pytest.mark.parametrize(
    "where,match",
    [
        (4, "corrupt record header"),  # a byte of the length
        (30, "data CRC mismatch"),  # a byte of the data
    ],
)
def test_corrupt_record_names_file_and_index(tmp_path, where, match):
    imgs = _patches(3, size=10)
    p = tmp_path / "x.tfrecords"
    _write(p, imgs, [0, 1, 2])
    raw = bytearray(p.read_bytes())
    rec_len = len(raw) // 3
    raw[rec_len + where] ^= 0x40  # damage record 1
    p.write_bytes(bytes(raw))
    with pytest.raises(ImageReadError, match=rf"record 1 at byte {rec_len}: {match}") as info:
        list(tfr.iter_records(p))
    assert info.value.path == str(p)
    if where == 30:
        assert read_image(f"{p}#0").shape == (10, 10)  # record 0 is intact
        with pytest.raises(ImageReadError, match="record 1 .*CRC mismatch"):
            read_image(f"{p}#1")


def test_truncated_and_not_a_tfrecord(tmp_path):
    p = tmp_path / "x.tfrecords"
    _write(p, _patches(2, size=10), [0, 3])
    raw = p.read_bytes()
    p.write_bytes(raw[:-5])
    with pytest.raises(ImageReadError, match="record 1 at byte .*run past the end.*truncated"):
        list(tfr.iter_records(p))
    p.write_bytes(raw + b"\x01\x02")
    with pytest.raises(ImageReadError, match="record 2 .*truncated record header"):
        list(tfr.iter_records(p))
    p.write_bytes(b"this is not a tfrecord file at all")
    with pytest.raises(ImageReadError, match="record 0 at byte 0: corrupt record header"):
        read_image(f"{p}#0")
    import gzip

    p.write_bytes(gzip.compress(raw))
    with pytest.raises(ImageReadError, match="gzip-compressed TFRecord"):
        tfr.count_records(p)


def test_read_image_record_paths(tmp_path):
    imgs = _patches(3)
    p = tmp_path / "training10_1.tfrecords"
    _write(p, imgs, [0, 2, 3])
    im = read_image(record_path(p, 2))
    assert im.path == f"{p}#2" and im.pixels.dtype == np.uint8 and im.max_value == 255
    np.testing.assert_array_equal(im.pixels, imgs[2])
    assert im.meta["format"] == "tfrecord" and im.meta["record_index"] == 2
    assert im.meta["record_features"] == {"label": 3, "label_normal": 1}
    assert split_record_path(f"{p}#2") == (p, 2) and split_record_path(p) is None
    hashed = tmp_path / "odd#1"  # a real file whose name ends in #1 stays that file
    hashed.write_bytes(b"x")
    assert split_record_path(hashed) is None
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "missing.tfrecords#0")


def test_record_image_encodings(tmp_path):
    import io

    from PIL import Image as PILImage

    img = _patches(1, size=12)[0]
    buf = io.BytesIO()
    PILImage.fromarray(img).save(buf, format="PNG")
    rect = np.arange(6 * 4, dtype=np.uint8).reshape(6, 4)
    recs = [
        tfr.serialize_example({"image": [buf.getvalue()], "label": [1]}),
        tfr.serialize_example({"image_raw": [rect.tobytes()], "height": [6], "width": [4]}),
        tfr.serialize_example({"image": [b"\x00" * 10]}),
        tfr.serialize_example({"label": [1]}),
        b"\x0a\x50\x0a",
    ]
    p = tmp_path / "enc.tfrecords"
    tfr.write_records(p, recs)
    png = read_image(f"{p}#0")
    np.testing.assert_array_equal(png.pixels, img)
    assert png.meta["record_encoding"] == "png"
    np.testing.assert_array_equal(read_image(f"{p}#1").pixels, rect)
    with pytest.raises(ImageReadError, match="10 bytes: not a square"):
        read_image(f"{p}#2")
    with pytest.raises(ImageReadError, match="no image feature.*it has label"):
        read_image(f"{p}#3")
    with pytest.raises(ImageReadError, match="record 4: not a tf.train.Example"):
        read_image(f"{p}#4")


def test_npy_records(tmp_path):
    data = np.stack(_patches(5, size=16))[..., None]
    p = tmp_path / "cv10_data.npy"
    np.save(p, data)
    im = read_image(f"{p}#4")
    np.testing.assert_array_equal(im.pixels, data[4, ..., 0])
    assert im.meta["format"] == "npy" and im.pixels.flags.writeable
    with pytest.raises(ImageReadError, match="index 5 out of range: the array holds 5"):
        read_image(f"{p}#5")
    np.save(p, data.astype(np.float32))
    with pytest.raises(ImageReadError, match="dtype float32"):
        read_image(f"{p}#0")
    np.save(p, data[..., 0][:, :, :, None].repeat(3, axis=3))
    with pytest.raises(ImageReadError, match=r"shape \(5, 16, 16, 3\)"):
        read_image(f"{p}#0")
    p.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ImageReadError, match="not a readable .npy"):
        read_image(f"{p}#0")
    np.save(p, data)
    p.write_bytes(p.read_bytes()[:-300])  # truncated
    with pytest.raises(ImageReadError):
        read_image(f"{p}#4")


# ------------------------------------------------------------------------------------------------
# Frames written without the project's serializer: every byte built here from the TFRecord and
# protobuf wire-format specifications, CRCs from google_crc32c directly.
# ------------------------------------------------------------------------------------------------
def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _frame_by_hand(data: bytes) -> bytes:
    import google_crc32c

    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", _masked(google_crc32c.value(length)))
        + data
        + struct.pack("<I", _masked(google_crc32c.value(data)))
    )


def _varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


# tf.train.Example{features{feature{key: "label" value{int64_list{value: [2]}}}}}, byte by byte:
# Int64List 0a 01 02 (field 1 packed, 1 byte); Feature 1a 03 .. (field 3 = int64_list);
# map entry 0a 05 "label" 12 05 ..; Features 0a 0e ..; Example 0a 10 ..
LABEL_2 = b"\x0a\x10\x0a\x0e\x0a\x05label\x12\x05\x1a\x03\x0a\x01\x02"


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _example_by_hand(image: bytes, label: int, extra_first: bool) -> bytes:
    def entry(key: bytes, feature: bytes) -> bytes:  # Features.feature map entry (field 1)
        return _ld(1, _ld(1, key) + _ld(2, feature))

    def int64s(*values: int) -> bytes:  # Feature.int64_list (3) of Int64List.value (1), packed
        return _ld(3, _ld(1, b"".join(_varint(v) for v in values)))

    feats = [
        entry(b"label", int64s(label)),
        entry(b"label_normal", int64s(int(label > 0))),
        entry(b"image", _ld(1, _ld(1, image))),  # Feature.bytes_list (1) of BytesList.value (1)
    ]
    if extra_first:  # map order is not fixed; an unknown feature holding a float_list (2)
        feats.insert(0, entry(b"note", _ld(2, _ld(1, struct.pack("<f", 0.5)))))
    return _ld(1, b"".join(feats))  # Example.features (field 1)


def test_hand_built_frames_read_exactly(tmp_path):
    """A TFRecord file whose frames and tf.train.Example bytes were built by hand reads back
    exactly through the reader, the manifest builder and read_image."""
    from featmammo.datasets.ddsm_patches import build_ddsm_patches

    assert tfr.parse_example(LABEL_2) == {"label": [2]}
    rng = np.random.default_rng(7)
    imgs = [rng.integers(0, 256, (299, 299), dtype=np.uint8) for _ in range(3)]
    codes = [0, 4, 1]
    p = tmp_path / "training10_0.tfrecords"
    p.write_bytes(
        b"".join(
            _frame_by_hand(_example_by_hand(im.tobytes(), c, extra_first=k == 1))
            for k, (im, c) in enumerate(zip(imgs, codes, strict=True))
        )
    )
    assert [tfr.parse_example(d)["label"] for _, _, d in tfr.iter_records(p)] == [[0], [4], [1]]
    df, summary = build_ddsm_patches(tmp_path)
    assert list(df["label"]) == ["normal", "malignant", "benign"]
    assert list(df["label_normal"]) == ["0", "1", "1"] and summary["unresolved"] == 0
    for row, im in zip(df.itertuples(), imgs, strict=True):
        np.testing.assert_array_equal(read_image(row.path).pixels, im)
    # the project's writer gives the very bytes built by hand for the same record
    assert tfr.frame_record(LABEL_2) == _frame_by_hand(LABEL_2)
