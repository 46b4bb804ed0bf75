"""Images addressed inside a container file: ``FILE.tfrecords#INDEX`` and ``FILE.npy#INDEX``.

The Kaggle DDSM patch set ships its training split as TFRecords (one ``tf.train.Example`` per
patch: ``image`` = raw uint8 299 x 299 bytes, ``label``, ``label_normal``) and its cv10 / test10
splits as ``.npy`` arrays ``(N, 299, 299, 1)`` uint8 beside ``(N,)`` label arrays. A manifest row
addresses one patch as ``<file>#<index>`` (0-based); :func:`read_record_image` decodes it:

* TFRecord: the record is read by offset (CRC checked, see :mod:`featmammo.io.tfrecord`); the
  image feature (``image``, else ``image_raw`` / ``image/encoded``) is raw pixels (uint8, square,
  or shaped by ``height``/``width`` features) or an encoded PNG/JPEG (decoded exactly by Pillow).
  The record's integer features (``label``, ``label_normal``...) are copied into ``meta``.
* ``.npy``: memory-mapped (``np.load(mmap_mode="r")``), only the addressed patch is read.

A path whose full text names an existing file is always that file (``#`` may be part of a name).
"""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path

import numpy as np

from featmammo.errors import ImageReadError

from . import tfrecord
from .images import (
    DEFAULT_MAX_PIXELS,
    Image,
    apply_simple_windowing,
    check_max_pixels,
    check_path,
    empty_meta,
    grey_from_channels,
)

_RECORD_RE = re.compile(r"^(?P<file>.+)#(?P<index>\d+)$")
IMAGE_KEYS = ("image", "image_raw", "image/encoded")


def split_record_path(path) -> tuple[Path, int] | None:
    """``(file, index)`` when ``path`` addresses a record (``FILE#INDEX`` and FILE is not the
    whole path of an existing file); None for a plain path."""
    text = os.fspath(path)
    if not isinstance(text, str):
        return None
    m = _RECORD_RE.match(text)
    if m is None or os.path.exists(text):
        return None
    return Path(m.group("file")), int(m.group("index"))


def record_path(file, index: int) -> str:
    """The ``FILE#INDEX`` address of one record."""
    return f"{os.fspath(file)}#{int(index)}"


def is_npy(path) -> bool:
    return Path(os.fspath(path)).suffix.lower() == ".npy"


def _decode_encoded(spec: str, blob: bytes) -> tuple[np.ndarray, int, int, str]:
    from PIL import Image as PILImage

    from .images import _pillow_to_array

    try:
        im = PILImage.open(io.BytesIO(blob), formats=("PNG", "JPEG"))
        im.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a damaged record
        raise ImageReadError(spec, f"cannot decode the record's encoded image ({exc})") from None
    fmt = (im.format or "").lower()
    arr, max_value, bits = _pillow_to_array(Path(spec), im, fmt)
    return np.require(arr, requirements=["C", "W", "O"]), max_value, bits, fmt


def _example_image(spec: str, features: dict) -> tuple[np.ndarray, int, int, str]:
    key = next((k for k in IMAGE_KEYS if k in features), None)
    if key is None:
        raise ImageReadError(
            spec,
            f"the record has no image feature (looked for {', '.join(IMAGE_KEYS)}; it has "
            f"{', '.join(sorted(features)) or 'none'})",
        )
    values = features[key]
    if len(values) != 1 or not isinstance(values[0], bytes):
        raise ImageReadError(spec, f"feature {key!r} is not one bytes value")
    blob = values[0]
    if blob.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
        return _decode_encoded(spec, blob)
    h = features.get("height") or features.get("image/height") or features.get("rows")
    w = features.get("width") or features.get("image/width") or features.get("cols")
    if h and w and isinstance(h[0], int) and isinstance(w[0], int):
        rows, cols = int(h[0]), int(w[0])
    else:
        side = math.isqrt(len(blob))
        if side * side != len(blob) or side == 0:
            raise ImageReadError(
                spec,
                f"raw image feature {key!r} has {len(blob):,} bytes: not a square uint8 image "
                "and no height/width features",
            )
        rows = cols = side
    if rows * cols != len(blob):
        raise ImageReadError(
            spec, f"raw image feature {key!r}: {len(blob):,} bytes for {rows} x {cols} uint8"
        )
    arr = np.frombuffer(blob, dtype=np.uint8).reshape(rows, cols).copy()
    return arr, 255, 8, "raw"


def _read_tfrecord_image(file: Path, index: int, spec: str, meta: dict, max_pixels):
    data = tfrecord.read_record(file, index)
    try:
        features = tfrecord.parse_example(data)
    except tfrecord.ExampleParseError as exc:
        raise ImageReadError(file, f"record {index}: not a tf.train.Example ({exc})") from None
    arr, max_value, bits, encoding = _example_image(spec, features)
    check_max_pixels(spec, arr.shape[0], arr.shape[1], max_pixels)
    for name, values in features.items():
        if name not in IMAGE_KEYS and len(values) == 1 and isinstance(values[0], int):
            meta.setdefault("record_features", {})[name] = values[0]
    meta.update(format="tfrecord", decoder="featmammo-tfrecord", record_encoding=encoding)
    return arr, max_value, bits


def _read_npy_image(file: Path, index: int, spec: str, meta: dict, max_pixels):
    check_path(file)
    try:
        arr = np.load(file, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - ValueError/OSError/EOFError on a damaged file
        raise ImageReadError(file, f"not a readable .npy array ({exc})") from None
    shape = arr.shape
    if arr.ndim == 4 and shape[3] == 1:
        ok = True
    else:
        ok = arr.ndim == 3
    if not ok:
        raise ImageReadError(
            file, f"array of shape {shape}: expected (N, H, W) or (N, H, W, 1) images"
        )
    if arr.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(file, f"array dtype {arr.dtype}: uint8 or uint16 images expected")
    if not 0 <= index < shape[0]:
        raise ImageReadError(
            file, f"record index {index} out of range: the array holds {shape[0]} images"
        )
    check_max_pixels(spec, shape[1], shape[2], max_pixels)
    try:
        one = np.array(arr[index, ..., 0] if arr.ndim == 4 else arr[index])  # copy, not a view
    except Exception as exc:  # noqa: BLE001 - a truncated file fails here
        raise ImageReadError(file, f"cannot read image {index} ({exc})") from None
    bits = 8 if arr.dtype == np.uint8 else 16
    meta.update(format="npy", decoder="numpy-memmap")
    return one, (1 << bits) - 1, bits


def read_record_image(
    file,
    index: int,
    *,
    windowing: str = "none",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image:
    """The image of record ``index`` of a TFRecord or ``.npy`` file (see the module docstring).

    ``Image.path`` is ``FILE#INDEX``; ``meta`` adds ``record_file``, ``record_index``. Every
    failure is an ImageReadError whose ``path`` is ``FILE#INDEX``.
    """
    file = Path(os.fspath(file))
    index = int(index)
    spec = record_path(file, index)
    meta = empty_meta("record", windowing)
    try:
        if is_npy(file):
            arr, max_value, bits = _read_npy_image(file, index, spec, meta, max_pixels)
        else:
            check_path(file)
            arr, max_value, bits = _read_tfrecord_image(file, index, spec, meta, max_pixels)
    except ImageReadError as exc:  # the error names what was asked for: FILE#INDEX
        if exc.path == spec:
            raise
        raise ImageReadError(spec, exc.reason) from None
    if arr.ndim == 3:
        arr = np.ascontiguousarray(grey_from_channels(spec, arr, "record image"))
    meta.update(
        photometric="MONOCHROME2",
        bits_stored=bits,
        rows=int(arr.shape[0]),
        cols=int(arr.shape[1]),
        record_file=str(file),
        record_index=index,
    )
    meta["lossy"] = meta.get("record_encoding") == "jpeg"
    pixels, max_value = apply_simple_windowing(
        spec, arr, max_value, meta, windowing, meta["format"]
    )
    return Image(pixels=pixels, path=spec, max_value=float(max_value), meta=meta)


__all__ = ["IMAGE_KEYS", "read_record_image", "record_path", "split_record_path"]
