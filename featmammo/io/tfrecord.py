"""TFRecord files and ``tf.train.Example`` records, read without TensorFlow.

Framing (TensorFlow's ``record_writer``): ``<uint64 length LE><uint32 masked CRC32C of the
length bytes><data><uint32 masked CRC32C of data>``, masked = ((crc >> 15) | (crc << 17)) +
0xA282EAD8 modulo 2**32. Both CRCs are checked (CRC32C by ``google-crc32c``, C with the SSE4.2
instruction: ~13 GB/s here, so checking the 5 GB of the Kaggle DDSM patch set costs seconds; a
numpy table CRC would take minutes). Any damage is an :class:`~featmammo.errors.ImageReadError`
naming the file, the record index and its byte offset.

* :func:`iter_records` streams ``(index, offset, data)`` (memory stays flat);
* :func:`record_offsets` scans the headers only (seeks past the data) and is cached per file
  identity (path, size, mtime), so :func:`read_record` (random access, ``FILE#INDEX``) costs one
  scan per file and process, then one read;
* :func:`parse_example` decodes a ``tf.train.Example`` protobuf (features -> list of bytes /
  float / int) with a small wire-format parser: no protobuf or TensorFlow import.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from featmammo.errors import ImageReadError

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords")


def _crc32c(data) -> int:
    import google_crc32c

    return google_crc32c.value(bytes(data) if isinstance(data, memoryview) else data)


def masked_crc32c(data) -> int:
    """TensorFlow's masked CRC32C of ``data``."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _open(path) -> tuple[Path, object, int]:
    p = Path(os.fspath(path))
    try:
        f = open(p, "rb")  # noqa: SIM115 - returned open; every caller closes it in `with`
    except FileNotFoundError:
        raise ImageReadError(p, "TFRecord file does not exist") from None
    except OSError as exc:
        raise ImageReadError(p, f"cannot open TFRecord file: {exc.strerror or exc}") from None
    size = os.fstat(f.fileno()).st_size
    head = f.read(2)
    f.seek(0)
    if head == b"\x1f\x8b":
        f.close()
        raise ImageReadError(
            p, "gzip-compressed TFRecord file: decompress it first (gunzip) to read its records"
        )
    return p, f, size


def _read_header(p: Path, f, index: int, offset: int, size: int) -> int | None:
    """The data length of the record at ``offset`` (None at a clean end of file)."""
    head = f.read(_HEADER.size)
    if not head:
        return None
    if len(head) < _HEADER.size:
        raise ImageReadError(
            p,
            f"record {index} at byte {offset}: truncated record header "
            f"({len(head)} of {_HEADER.size} bytes; incomplete file?)",
        )
    length, length_crc = _HEADER.unpack(head)
    if masked_crc32c(head[:8]) != length_crc:
        raise ImageReadError(
            p,
            f"record {index} at byte {offset}: corrupt record header (length CRC mismatch); "
            "not a TFRecord file or damaged",
        )
    end = offset + _HEADER.size + length + _FOOTER.size
    if end > size:
        raise ImageReadError(
            p,
            f"record {index} at byte {offset}: {length:,} data bytes run past the end of the "
            f"file ({size:,} bytes; truncated?)",
        )
    return length


def _read_data(p: Path, f, index: int, offset: int, length: int, check_crc: bool) -> bytes:
    data = f.read(length)
    footer = f.read(_FOOTER.size)
    if len(data) < length or len(footer) < _FOOTER.size:
        raise ImageReadError(p, f"record {index} at byte {offset}: truncated record data")
    if check_crc and masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
        raise ImageReadError(
            p, f"record {index} at byte {offset}: data CRC mismatch (corrupt record)"
        )
    return data


def iter_records(
    path, *, check_crc: bool = True, errors: str = "raise"
) -> Iterator[tuple[int, int, bytes | ImageReadError]]:
    """Yield ``(index, byte offset, data)`` for every record, streaming, CRCs checked.

    ``errors="raise"``: the first damaged record raises its ImageReadError. ``errors="yield"``:
    a damaged record is yielded as ``(index, offset, error)`` instead of its data and the scan
    goes on -- past a record whose data CRC fails (its length is known), but not past a damaged
    or truncated header (where the next record starts is then unknown: that error is the last
    item). Opening the file still raises."""
    if errors not in ("raise", "yield"):
        raise ValueError(f"errors={errors!r}: expected 'raise' or 'yield'")
    p, f, size = _open(path)
    with f:
        index = 0
        offset = 0
        while True:
            try:
                length = _read_header(p, f, index, offset, size)
            except ImageReadError as exc:
                if errors == "raise":
                    raise
                yield index, offset, exc
                return
            if length is None:
                return
            try:
                data = _read_data(p, f, index, offset, length, check_crc)
            except ImageReadError as exc:
                if errors == "raise":
                    raise
                data = exc
                f.seek(offset + _HEADER.size + length + _FOOTER.size)
            yield index, offset, data
            offset += _HEADER.size + length + _FOOTER.size
            index += 1


_OFFSETS: dict[tuple, tuple[np.ndarray, ImageReadError | None]] = {}
_OFFSETS_LOCK = threading.Lock()
_OFFSETS_MAX_FILES = 64


def _scan_offsets(path) -> tuple[np.ndarray, ImageReadError | None]:
    """(offsets of the records before any damage, the damage or None); cached per (resolved
    path, size, mtime_ns): a rewritten file is rescanned."""
    p, f, size = _open(path)
    with f:
        st = os.fstat(f.fileno())
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        with _OFFSETS_LOCK:
            cached = _OFFSETS.get(key)
        if cached is not None:
            return cached
        offsets = []
        damage = None
        index = offset = 0
        while True:
            try:
                length = _read_header(p, f, index, offset, size)
            except ImageReadError as exc:
                damage = exc
                break
            if length is None:
                break
            offsets.append(offset)
            offset += _HEADER.size + length + _FOOTER.size
            f.seek(offset)
            index += 1
    result = (np.asarray(offsets, dtype=np.int64), damage)
    with _OFFSETS_LOCK:
        if len(_OFFSETS) >= _OFFSETS_MAX_FILES:
            _OFFSETS.pop(next(iter(_OFFSETS)))
        _OFFSETS[key] = result
    return result


def record_offsets(path) -> np.ndarray:
    """Byte offsets (int64) of every record, from the headers only (length CRCs checked; a
    damaged or truncated header raises its ImageReadError). Cached per file identity."""
    offsets, damage = _scan_offsets(path)
    if damage is not None:
        raise damage
    return offsets


def count_records(path) -> int:
    """Number of records in a TFRecord file (header scan)."""
    return int(record_offsets(path).size)


def read_record(path, index: int, *, check_crc: bool = True) -> bytes:
    """The data of record ``index`` (0-based), CRC checked; ImageReadError when out of range.

    A record before a damaged header stays readable (the file's intact records are usable, as
    a manifest built with damaged records skipped expects); one at or past it raises the damage.
    """
    offsets, damage = _scan_offsets(path)
    index = int(index)
    if not 0 <= index < offsets.size:
        if damage is not None and index >= offsets.size:
            raise damage
        raise ImageReadError(
            path, f"record index {index} out of range: the file holds {offsets.size} records"
        )
    p, f, size = _open(path)
    with f:
        offset = int(offsets[index])
        f.seek(offset)
        length = _read_header(p, f, index, offset, size)
        if length is None:
            raise ImageReadError(p, f"record {index} at byte {offset}: file changed while reading")
        return _read_data(p, f, index, offset, length, check_crc)


# --------------------------------------------------------------------------- tf.train.Example


class ExampleParseError(ValueError):
    """A record is not a well-formed ``tf.train.Example``."""


def _varint(buf, i: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if i >= end:
            raise ExampleParseError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ExampleParseError("varint longer than 10 bytes")


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a protobuf message in ``buf[start:end]``.

    Length-delimited values are given as (start, end) offsets into ``buf``.
    """
    i = start
    while i < end:
        key, i = _varint(buf, i, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ExampleParseError("field number 0")
        if wire == 0:
            value, i = _varint(buf, i, end)
        elif wire == 1:
            if i + 8 > end:
                raise ExampleParseError("truncated 64-bit field")
            value = (i, i + 8)
            i += 8
        elif wire == 2:
            length, i = _varint(buf, i, end)
            if i + length > end:
                raise ExampleParseError("length-delimited field runs past its message")
            value = (i, i + length)
            i += length
        elif wire == 5:
            if i + 4 > end:
                raise ExampleParseError("truncated 32-bit field")
            value = (i, i + 4)
            i += 4
        else:
            raise ExampleParseError(f"unsupported wire type {wire}")
        yield field, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _feature(buf, start: int, end: int) -> list:
    values: list = []
    for field, wire, span in _fields(buf, start, end):
        if wire != 2 or field not in (1, 2, 3):
            continue
        s, e = span  # the BytesList / FloatList / Int64List message
        for f2, w2, v in _fields(buf, s, e):
            if f2 != 1:
                continue
            if field == 1:  # bytes_list
                if w2 != 2:
                    raise ExampleParseError("bytes_list value is not length-delimited")
                values.append(bytes(buf[v[0] : v[1]]))
            elif field == 2:  # float_list: packed (wire 2) or not (wire 5)
                if w2 == 2:
                    if (v[1] - v[0]) % 4:
                        raise ExampleParseError("packed float_list length not a multiple of 4")
                    values.extend(struct.unpack(f"<{(v[1] - v[0]) // 4}f", buf[v[0] : v[1]]))
                elif w2 == 5:
                    values.append(struct.unpack("<f", buf[v[0] : v[1]])[0])
            else:  # int64_list: packed (wire 2) or not (wire 0)
                if w2 == 2:
                    i = v[0]
                    while i < v[1]:
                        n, i = _varint(buf, i, v[1])
                        values.append(_signed64(n))
                elif w2 == 0:
                    values.append(_signed64(v))
    return values


def parse_example(data) -> dict[str, list]:
    """Decode a serialized ``tf.train.Example``: ``{feature name: [values]}``.

    Values are ``bytes`` (bytes_list), ``float`` (float_list) or ``int`` (int64_list). Raises
    :class:`ExampleParseError` (a ValueError) on malformed input.
    """
    buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    out: dict[str, list] = {}
    for field, wire, span in _fields(buf, 0, len(buf)):
        if field != 1 or wire != 2:  # Example.features
            continue
        for f2, w2, entry in _fields(buf, span[0], span[1]):
            if f2 != 1 or w2 != 2:  # Features.feature (map entry)
                continue
            key = None
            values: list = []
            for f3, w3, v in _fields(buf, entry[0], entry[1]):
                if f3 == 1 and w3 == 2:
                    try:
                        key = bytes(buf[v[0] : v[1]]).decode("utf-8")
                    except UnicodeDecodeError:
                        raise ExampleParseError("feature name is not UTF-8") from None
                elif f3 == 2 and w3 == 2:
                    values = _feature(buf, v[0], v[1])
            if key is None:
                raise ExampleParseError("feature map entry without a name")
            out[key] = values
    return out


# --------------------------------------------------------------------------- writing (tests)


def _varint_bytes(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint_bytes(field << 3 | 2) + _varint_bytes(len(payload)) + payload


def serialize_example(features: dict[str, list]) -> bytes:
    """A ``tf.train.Example`` from ``{name: [bytes...] | [int...] | [float...]}`` (packed lists).

    The inverse of :func:`parse_example`; used to write test fixtures and small sets.
    """
    entries = b""
    for name, values in features.items():
        values = list(values)
        if values and all(isinstance(v, (bytes, bytearray)) for v in values):
            kind = _ld(1, b"".join(_ld(1, bytes(v)) for v in values))
        elif all(isinstance(v, (int, np.integer)) for v in values):
            kind = _ld(3, _ld(1, b"".join(_varint_bytes(int(v)) for v in values)))
        elif all(isinstance(v, (float, int, np.floating, np.integer)) for v in values):
            kind = _ld(2, _ld(1, struct.pack(f"<{len(values)}f", *values)))
        else:
            raise TypeError(f"feature {name!r}: values must be all bytes, all int or all float")
        entries += _ld(1, _ld(1, name.encode()) + _ld(2, kind))
    return _ld(1, entries)


def frame_record(data: bytes) -> bytes:
    """One TFRecord frame (length, masked CRCs) around ``data``."""
    head = struct.pack("<Q", len(data))
    return (
        head
        + struct.pack("<I", masked_crc32c(head))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def write_records(path, records) -> int:
    """Write an iterable of serialized records to a TFRecord file; returns the count."""
    n = 0
    with open(path, "wb") as f:
        for data in records:
            f.write(frame_record(data))
            n += 1
    return n


__all__ = [
    "TFRECORD_SUFFIXES",
    "ExampleParseError",
    "count_records",
    "frame_record",
    "iter_records",
    "masked_crc32c",
    "parse_example",
    "read_record",
    "record_offsets",
    "serialize_example",
    "write_records",
]
