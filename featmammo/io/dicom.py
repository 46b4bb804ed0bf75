"""DICOM reader: pydicom 3 + the pylibjpeg plugins, and the DICOM pixel policy.

This module owns how a DICOM file becomes an :class:`~featmammo.io.images.Image`:

* **Decoder choice.** Every standard greyscale transfer syntax decodes: native (implicit/explicit
  little endian, big endian, deflated), RLE, JPEG baseline/extended/lossless/SV1, JPEG-LS and
  JPEG 2000 / HTJ2K. The decoding plugin is picked explicitly, fastest first
  (``pylibjpeg`` > ``pyjpegls`` > ``gdcm`` > ``pillow`` > ``pydicom``; for RLE pylibjpeg-rle is
  ~5x faster than pydicom's own decoder) and recorded in ``meta["decoder"]`` (library, e.g.
  ``pylibjpeg-rle``) and ``meta["decoding_plugin"]`` (the pydicom plugin name, e.g.
  ``pylibjpeg``). If that plugin fails on a file, imagecodecs (libjpeg-turbo / CharLS /
  OpenJPEG) decodes it instead -- pydicom's own ``JPEG-lossy.dcm``, a 12-bit JPEG Extended file
  pylibjpeg refuses, is one -- and ``meta["decoder_fallback"]`` says which plugin failed and why
  (a warning is logged). Never a second decoder for a file the first one decoded, and no
  fallback when a plugin is forced (``decoding_plugin``), so a file always gives the same pixels.
* **GPU decoding** (optional, :mod:`featmammo.io.decoders`): ``decoder="nvimagecodec"`` (or
  ``"auto"`` with nvImageCodec and CUDA present) decodes JPEG 2000 / HTJ2K on the GPU;
  ``meta["decoder"]`` records it. The default ``decoder="cpu"`` leaves the path above unchanged.
* **Header checks before decoding:** pixel data present, one frame (multi-frame files are
  rejected with a clear error, never silently reduced to their first frame), ``Rows*Columns``
  against ``max_pixels``, a decoder plugin installed for the transfer syntax.
* **Pixel policy** (``windowing``, recorded in ``meta["windowing"]``; what was actually applied
  in ``meta["windowing_applied"]``: ``voi_lut``, ``window``, ``none`` or ``percentile``):
  ``auto`` (the preprocessing default): the file's own display transform when it has one -- the
  first item of the VOI LUT Sequence, else the first WindowCenter/WindowWidth pair with its
  VOILUTFunction (LINEAR, LINEAR_EXACT, SIGMOID) -- otherwise ``none`` (the stored range);
  window tags that are present but unusable (width <= 0, unknown function) are an error, never
  skipped. ``none``: stored values after the modality LUT/rescale, as ``uint8``/``uint16``, with
  ``max_value = 2**BitsStored - 1`` (high bits beyond BitsStored are masked). Signed data and
  rescales whose output range leaves 0..65535 are shifted so the nominal range starts at 0
  (``meta["offset"]``); a non-integer rescale gives float32 in [0, 1] (``max_value`` 1.0).
  ``voi``: VOI LUT Sequence if present, else the window tags. ``window``: WindowCenter/Width only
  (LINEAR, LINEAR_EXACT, SIGMOID; first window). ``percentile``: 0.5-99.5 % clip. The last three
  give float32 in [0, 1] computed in float32 (never float64), ``max_value`` 1.0. A policy whose
  tags are missing is an error, not a fallback.
  MONOCHROME1 is inverted after the modality/VOI step (logged at INFO once per process, then at
  DEBUG; ``meta['inverted']`` records it per file).
* **Metadata:** laterality and view from ImageLaterality / Laterality / ViewPosition /
  ViewCodeSequence, then CBIS-DDSM's PatientOrientation (``'CC'``) and PatientID
  (``'Mass-Test_P_00173_LEFT_CC'``); study/series UIDs, SeriesDescription, PatientID.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    RLETransferSyntaxes,
)

from featmammo.errors import ConfigError, ImageReadError

from .decoders import (
    check_decoder,
    decode_frame_imagecodecs,
    decode_frame_nvimagecodec,
    imagecodecs_label,
    resolve_decoder,
)
from .images import (
    DEFAULT_MAX_PIXELS,
    Image,
    check_max_pixels,
    check_path,
    check_windowing,
    empty_meta,
    grey_from_channels,
    percentile_window,
    typed_errors,
)

logger = logging.getLogger(__name__)

PLUGIN_PREFERENCE = ("pylibjpeg", "pyjpegls", "gdcm", "pillow", "pydicom")

_HTJ2K = {"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
_LOSSY = {
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.203",  # HTJ2K
}
# Values larger than this are deferred by dcmread (read only when accessed): the header checks
# run before the pixel data is read from disk.
_DEFER_SIZE = 64 * 1024

VIEWS = frozenset(
    {"CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM", "FB", "SIO", "AT", "RL", "RM", "CV", "TAN"}
)
_VIEW_MEANINGS = {
    "cranio-caudal": "CC",
    "craniocaudal": "CC",
    "medio-lateral oblique": "MLO",
    "mediolateral oblique": "MLO",
    "medio-lateral": "ML",
    "mediolateral": "ML",
    "latero-medial": "LM",
    "lateromedial": "LM",
    "latero-medial oblique": "LMO",
    "exaggerated cranio-caudal": "XCCL",
}
_SIDE_WORDS = {"LEFT": "L", "RIGHT": "R", "L": "L", "R": "R"}
_TOKEN_SPLIT = re.compile(r"[_\-\s.]+")


# --------------------------------------------------------------------------- decoder choice


def _decoder_library(tsyntax: str, plugin: str) -> str:
    """The library that actually decodes (``pylibjpeg`` is a front end to three plugins)."""
    if not plugin:
        return "pydicom-native"
    if plugin == "pylibjpeg":
        if tsyntax in RLETransferSyntaxes:
            return "pylibjpeg-rle"
        if tsyntax in JPEG2000TransferSyntaxes or tsyntax in _HTJ2K:
            return "pylibjpeg-openjpeg"
        return "pylibjpeg-libjpeg"
    if plugin == "pydicom":
        return "pydicom-rle" if tsyntax in RLETransferSyntaxes else "pydicom"
    return plugin


def _ts_name(tsyntax: str) -> str:
    name = UID(tsyntax).name
    return f"{name} ({tsyntax})" if name != tsyntax else tsyntax


def available_decoders(tsyntax: str) -> tuple[str, ...]:
    """The installed decoding plugins for a transfer syntax, fastest first ('' = native)."""
    decoder = get_decoder(UID(tsyntax))  # NotImplementedError when pydicom has no decoder
    if decoder.is_native:
        return ("",)
    plugins = set(decoder.available_plugins)
    ordered = [p for p in PLUGIN_PREFERENCE if p in plugins]
    ordered += sorted(plugins - set(ordered))
    return tuple(ordered)


def choose_decoder(path, tsyntax: str) -> str:
    """The pydicom plugin to decode ``tsyntax`` with ('' = native); ImageReadError if none."""
    uid = UID(tsyntax)
    try:
        plugins = available_decoders(tsyntax)
    except NotImplementedError:
        raise ImageReadError(
            path, f"unsupported transfer syntax {_ts_name(tsyntax)}: pydicom has no decoder"
        ) from None
    if not plugins:
        missing = "; ".join(get_decoder(uid).missing_dependencies) or (
            "pylibjpeg with pylibjpeg-libjpeg / pylibjpeg-openjpeg / pylibjpeg-rle"
        )
        raise ImageReadError(
            path,
            f"no decoder plugin installed for transfer syntax {_ts_name(tsyntax)}; "
            f"install one of: {missing}",
        )
    return plugins[0]


# --------------------------------------------------------------------------- header


def _str(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def _laterality_view(ds) -> tuple[str | None, str | None]:
    laterality = None
    for keyword in ("ImageLaterality", "Laterality"):
        value = (_str(ds, keyword) or "").upper()
        if value in ("L", "R"):
            laterality = value
            break
    view = None
    value = (_str(ds, "ViewPosition") or "").upper()
    if value in VIEWS:
        view = value
    if view is None:
        for item in ds.get("ViewCodeSequence", None) or ():
            meaning = str(item.get("CodeMeaning", "")).strip().lower()
            if meaning in _VIEW_MEANINGS:
                view = _VIEW_MEANINGS[meaning]
                break
    if view is None:  # CBIS-DDSM stores the view in PatientOrientation ('CC' / 'MLO')
        value = (_str(ds, "PatientOrientation") or "").upper()
        if value in VIEWS:
            view = value
    if laterality is None or view is None:  # CBIS-DDSM: 'Mass-Test_P_00173_LEFT_CC'
        for keyword in ("PatientID", "PatientName"):
            tokens = _TOKEN_SPLIT.split((_str(ds, keyword) or "").upper())
            if laterality is None:
                sides = {_SIDE_WORDS[t] for t in tokens if t in ("LEFT", "RIGHT")}
                if len(sides) == 1:
                    laterality = sides.pop()
            if view is None:
                views = [t for t in tokens if t in VIEWS]
                if len(set(views)) == 1:
                    view = views[0]
            if laterality is not None and view is not None:
                break
    return laterality, view


def _header_meta(ds, windowing: str | None) -> dict:
    meta = empty_meta("dicom", windowing)
    file_meta = getattr(ds, "file_meta", None)
    tsyntax = str(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else ""
    laterality, view = _laterality_view(ds)
    bits_stored = ds.get("BitsStored")
    meta.update(
        photometric=_str(ds, "PhotometricInterpretation"),
        bits_stored=int(bits_stored) if bits_stored is not None else None,
        laterality=laterality,
        view=view,
        rows=int(ds.Rows) if "Rows" in ds else None,
        cols=int(ds.Columns) if "Columns" in ds else None,
        transfer_syntax=tsyntax or None,
        study_uid=_str(ds, "StudyInstanceUID"),
        series_uid=_str(ds, "SeriesInstanceUID"),
        series_description=_str(ds, "SeriesDescription"),
        patient_id=_str(ds, "PatientID"),
    )
    meta["sop_instance_uid"] = _str(ds, "SOPInstanceUID")
    meta["modality"] = _str(ds, "Modality")
    meta["lossy"] = tsyntax in _LOSSY or _str(ds, "LossyImageCompression") == "01"
    return meta


GZIP_MAGIC = b"\x1f\x8b"


def gzip_reason(p: Path) -> str | None:
    """The error reason for a gzip-compressed file (None when ``p`` does not start like one)."""
    try:
        with open(p, "rb") as f:
            head = f.read(2)
    except OSError:
        return None
    if head != GZIP_MAGIC:
        return None
    if p.name.lower().endswith(".gz"):
        how = f"gunzip -k '{p.name}'"
    else:
        how = f"mv '{p.name}' '{p.name}.gz' && gunzip '{p.name}.gz'"
    return (
        f"gzip-compressed file: decompress it first ({how}); only DDSM's .LJPEG.gz files are "
        "read compressed"
    )


def _dcmread(p: Path, **kwargs):
    try:
        return pydicom.dcmread(p, **kwargs)
    except InvalidDicomError:
        raise ImageReadError(
            p,
            gzip_reason(p) or "not a DICOM file (no 'DICM' marker after the 128-byte preamble)",
        ) from None
    except Exception as exc:  # truncated/corrupt header: EOFError, struct.error, ValueError...
        raise ImageReadError(
            p, f"cannot parse DICOM header ({type(exc).__name__}: {exc})"
        ) from None


@typed_errors("DICOM header")
def read_dicom_header(path) -> dict:
    """Header metadata without decoding (or reading) the pixel data; same keys as Image.meta.

    ``windowing`` and ``decoder`` are None (no read happened); ``number_of_frames``,
    ``samples_per_pixel``, ``bits_allocated`` and ``pixel_representation`` are added.
    """
    p = check_path(path)
    ds = _dcmread(p, stop_before_pixels=True)
    meta = _header_meta(ds, None)
    meta["number_of_frames"] = int(ds.get("NumberOfFrames") or 1)
    meta["samples_per_pixel"] = int(ds.get("SamplesPerPixel") or 1)
    meta["bits_allocated"] = int(ds.BitsAllocated) if "BitsAllocated" in ds else None
    meta["pixel_representation"] = int(ds.get("PixelRepresentation") or 0)
    return meta


# --------------------------------------------------------------------------- pixel policy


def _float_or_none(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else None
    return None if value is None else float(value)


def _modality_none(arr: np.ndarray, ds, bits_stored: int, meta: dict) -> tuple[np.ndarray, float]:
    """windowing='none': integer stored values after the modality transform, range from 0."""
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    lo, hi = (
        (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1)
        if signed
        else (0, 2**bits_stored - 1)
    )
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        item = ds.ModalityLUTSequence[0]
        depth = int(item.LUTDescriptor[2])
        out = apply_modality_lut(arr, ds)
        meta["modality_lut"] = "lut"
        return out.astype(np.uint16 if depth > 8 else np.uint8, copy=False), float(2**depth - 1)
    slope = _float_or_none(ds.get("RescaleSlope"))
    intercept = _float_or_none(ds.get("RescaleIntercept"))
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    if slope == 1.0 and intercept == 0.0 and not signed:
        meta["modality_lut"] = "identity"
        return arr, float(hi)
    meta["modality_lut"] = f"rescale(slope={slope:g}, intercept={intercept:g})"
    out_lo, out_hi = sorted((slope * lo + intercept, slope * hi + intercept))
    integral = slope.is_integer() and intercept.is_integer()
    if integral and out_hi - min(out_lo, 0) <= 65535:
        offset = int(-out_lo) if out_lo < 0 else 0
        # int32 holds every value of the transform exactly; one temporary, then uint16
        work = arr.astype(np.int32)
        if slope != 1.0:
            work *= int(slope)
        if intercept + offset:
            work += int(intercept) + offset
        meta["offset"] = offset
        top = int(out_hi) + offset
        dtype = np.uint8 if top <= 255 and arr.dtype.itemsize == 1 else np.uint16
        return work.astype(dtype), float(top)
    # Non-integer (or out-of-range) rescale: float32 scaled to [0, 1] over the nominal range.
    work = arr.astype(np.float32)
    work *= np.float32(slope / (out_hi - out_lo))
    work += np.float32((intercept - out_lo) / (out_hi - out_lo))
    np.clip(work, 0.0, 1.0, out=work)
    meta["offset"] = -out_lo
    return work, 1.0


def _modality_values(arr: np.ndarray, ds, meta: dict) -> np.ndarray:
    """Modality LUT output (the values window tags refer to): int array or float32."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        meta["modality_lut"] = "lut"
        return apply_modality_lut(arr, ds)
    slope = _float_or_none(ds.get("RescaleSlope"))
    intercept = _float_or_none(ds.get("RescaleIntercept"))
    if (slope in (None, 1.0)) and (intercept in (None, 0.0)):
        meta["modality_lut"] = "identity"
        return arr
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    meta["modality_lut"] = f"rescale(slope={slope:g}, intercept={intercept:g})"
    work = arr.astype(np.float32)
    work *= np.float32(slope)
    work += np.float32(intercept)
    return work


def _window(p, x: np.ndarray, ds, meta: dict) -> np.ndarray:
    center = _float_or_none(ds.get("WindowCenter"))
    width = _float_or_none(ds.get("WindowWidth"))
    if center is None or width is None:
        raise ImageReadError(
            p, f"windowing={meta['windowing']!r} but the file has no WindowCenter/WindowWidth"
        )
    function = (_str(ds, "VOILUTFunction") or "LINEAR").upper()
    y = x.astype(np.float32)  # copy: x may be the decoded array (kept integer until here)
    if function == "SIGMOID":
        if width <= 0:
            raise ImageReadError(p, f"invalid WindowWidth {width:g} for SIGMOID")
        y -= np.float32(center)
        y *= np.float32(-4.0 / width)
        np.clip(y, -80.0, 80.0, out=y)  # exp(80) fits float32; the result is 0 or 1 anyway
        np.exp(y, out=y)
        y += np.float32(1.0)
        np.reciprocal(y, out=y)
    elif function in ("LINEAR", "LINEAR_EXACT"):
        if function == "LINEAR":  # PS3.3 C.11.2.1.2.1
            if width < 1:
                raise ImageReadError(p, f"invalid WindowWidth {width:g} (LINEAR needs >= 1)")
            c, w = center - 0.5, max(width - 1.0, 1e-6)
        else:
            if width <= 0:
                raise ImageReadError(p, f"invalid WindowWidth {width:g} for LINEAR_EXACT")
            c, w = center, width
        y -= np.float32(c - w / 2.0)
        y *= np.float32(1.0 / w)
        np.clip(y, 0.0, 1.0, out=y)
    else:
        raise ImageReadError(p, f"unsupported VOILUTFunction {function!r}")
    meta["windowing_params"] = {"center": center, "width": width, "function": function}
    return y


def _voi_lut(p, x: np.ndarray, ds, meta: dict) -> np.ndarray:
    from pydicom.pixels import apply_voi

    item = ds.VOILUTSequence[0]
    depth = int(item.LUTDescriptor[2])
    if x.dtype.kind == "f":
        x = np.rint(x).astype(np.int32)
    try:
        lut_out = apply_voi(x, ds, index=0)
    except Exception as exc:
        raise ImageReadError(p, f"cannot apply the VOI LUT ({exc})") from None
    y = lut_out.astype(np.float32)
    y *= np.float32(1.0 / (2**depth - 1))
    np.clip(y, 0.0, 1.0, out=y)
    meta["windowing_params"] = {"voi_lut": True, "lut_bits": depth}
    return y


def _has_window(p, ds) -> bool:
    """Whether ``ds`` carries a usable-looking window (both WindowCenter and WindowWidth)."""
    center = _float_or_none(ds.get("WindowCenter"))
    width = _float_or_none(ds.get("WindowWidth"))
    if (center is None) != (width is None):
        logger.warning(
            "%s: only one of WindowCenter/WindowWidth is set; windowing='auto' uses the stored "
            "range",
            p,
        )
    return center is not None and width is not None


def auto_policy(p, ds) -> str:
    """What ``windowing='auto'`` applies to ``ds``: ``voi_lut``, ``window`` or ``none``."""
    if len(ds.get("VOILUTSequence", None) or ()) > 0:
        return "voi_lut"
    if _has_window(p, ds):
        return "window"
    return "none"


def _apply_policy(p, arr, ds, windowing: str, bits_stored: int, meta: dict):
    photometric = (meta.get("photometric") or "").upper()
    monochrome1 = photometric == "MONOCHROME1"
    if windowing == "auto":
        applied = auto_policy(p, ds)
        windowing = "none" if applied == "none" else "voi"
    elif windowing == "voi":
        applied = "voi_lut" if len(ds.get("VOILUTSequence", None) or ()) > 0 else "window"
    else:
        applied = windowing
    meta["windowing_applied"] = applied
    if windowing in ("none", "percentile"):
        pixels, max_value = _modality_none(arr, ds, bits_stored, meta)
        if monochrome1:
            if pixels.dtype.kind == "f":
                np.subtract(np.float32(max_value), pixels, out=pixels)
            else:
                np.subtract(pixels.dtype.type(max_value), pixels, out=pixels)
        if windowing == "percentile":
            pixels, params = percentile_window(pixels, max_value)
            meta["windowing_params"] = params
            max_value = 1.0
    else:
        x = _modality_values(arr, ds, meta)
        if applied == "voi_lut":
            pixels = _voi_lut(p, x, ds, meta)
        else:
            pixels = _window(p, x, ds, meta)
        if monochrome1:
            np.subtract(np.float32(1.0), pixels, out=pixels)
        max_value = 1.0
    if monochrome1:
        global _monochrome1_warned
        # Correct handling, not a problem: said once per process at INFO (a data set is often all
        # MONOCHROME1); every file records meta["inverted"], and later files are logged at DEBUG.
        log = logger.debug if _monochrome1_warned else logger.info
        log(
            "%s: MONOCHROME1 image inverted to MONOCHROME2 after the %s step%s",
            p,
            "modality" if windowing in ("none", "percentile") else "VOI",
            "" if _monochrome1_warned else " (further MONOCHROME1 files are logged at DEBUG)",
        )
        _monochrome1_warned = True
        meta["inverted"] = True
    else:
        meta["inverted"] = False
    return pixels, max_value


_monochrome1_warned = False


# --------------------------------------------------------------------------- reader


_CUT = "(incomplete download or copy?)"


def _truncated_header(p: Path, ds, size: int) -> str | None:
    """Why ``ds`` (parsed without Pixel Data) looks cut short, or None when it ends cleanly.

    pydicom stops quietly at the end of a short file: an element cut in its middle keeps its
    declared length, a cut inside an element's header drops it, a cut inside the file meta leaves
    an empty data set. The last element must end exactly at the end of the file.
    """
    import warnings

    try:  # a fresh parse: elements read for the metadata are no longer raw (no value_tell)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(p, defer_size=_DEFER_SIZE)
    except Exception:  # noqa: BLE001 - the first parse succeeded; this one only explains
        return None
    meta_len = ds.file_meta.get("FileMetaInformationGroupLength")
    if getattr(ds, "preamble", None) is not None and meta_len is not None:
        meta_end = 128 + 4 + 12 + int(meta_len)
        if size < meta_end:
            return (
                f"truncated file: it ends after {size} bytes, inside the file meta information "
                f"({meta_end} bytes before the data set) {_CUT}"
            )
        if not len(ds) and size > meta_end:
            return (
                f"truncated file: it ends after {size} bytes, inside the first data element {_CUT}"
            )
    tags = list(ds.keys())
    if tags:
        last = ds.get_item(tags[-1])
        tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
        defined = tell is not None and length is not None and length != 0xFFFFFFFF
        if defined and tell + length != size:
            return (
                f"truncated file: it ends after {size} bytes, inside or just after element "
                f"{tags[-1]} (declared to end at byte {tell + length}) {_CUT}"
            )
    return None


def _why_no_pixel_data(p: Path, ds) -> str:
    other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
    if other:
        return f"{other[0]} (floating-point pixels) is not supported"
    # pydicom drops an encapsulated Pixel Data element that the file ends inside of
    data = p.read_bytes()
    if b"\xe0\x7f\x10\x00" in data or b"\x7f\xe0\x00\x10" in data:
        return (
            f"truncated pixel data: the file ends inside the Pixel Data (7FE0,0010) element {_CUT}"
        )
    cut = _truncated_header(p, ds, len(data))
    if cut is not None:
        return cut
    if "Rows" in ds and "Columns" in ds:
        return (
            f"no Pixel Data (7FE0,0010) element although the header describes a {ds.Rows} x "
            f"{ds.Columns} image: a header-only file, or one cut short just before its pixel "
            f"data ({len(data)} bytes)"
        )
    return (
        "no Pixel Data (7FE0,0010) element: not an image (a report, presentation state "
        "or a header-only file?)"
    )


def _decode_cpu(p: Path, ds, tsyntax: str, decoding_plugin: str | None, meta: dict):
    """(array, outside_pydicom): the pydicom plugin's decode, or imagecodecs when the
    automatically chosen plugin fails (recorded in ``meta["decoder_fallback"]``)."""
    if decoding_plugin is None:
        plugin = choose_decoder(p, tsyntax)
    else:
        plugin = decoding_plugin
        try:
            plugins = available_decoders(tsyntax)
        except NotImplementedError:
            plugins = ()
        if plugin not in plugins:
            raise ConfigError(
                f"decoding plugin {plugin!r} is not available for {UID(tsyntax).name}; "
                f"available: {', '.join(repr(x) for x in plugins) or 'none'}"
            )
    try:
        arr = pixel_array(ds, decoding_plugin=plugin)
    except Exception as exc:  # truncated data, codec errors, inconsistent tags
        first = f"{type(exc).__name__}: {exc}"
        fallback = imagecodecs_label(tsyntax) if decoding_plugin is None and plugin else None
        if fallback is None:
            raise ImageReadError(
                p,
                f"cannot decode pixel data ({UID(tsyntax).name}, plugin "
                f"{plugin or 'native'}): {first}",
            ) from None
        try:
            arr, label = decode_frame_imagecodecs(ds, tsyntax)
        except Exception as exc2:  # noqa: BLE001 - both decoders failed: say so
            raise ImageReadError(
                p,
                f"cannot decode pixel data ({UID(tsyntax).name}): plugin {plugin} failed "
                f"({first}); the {fallback} fallback failed too "
                f"({type(exc2).__name__}: {exc2})",
            ) from None
        reason = first.splitlines()[-1].strip() if first.strip() else first
        logger.warning(
            "%s: the %s plugin cannot decode it (%s); decoded with %s instead",
            p,
            plugin,
            reason,
            label,
        )
        meta["decoder"] = label
        meta["decoding_plugin"] = "imagecodecs"
        meta["decoder_fallback"] = f"{_decoder_library(tsyntax, plugin)} failed: {reason}"
        return arr, True
    meta["decoder"] = _decoder_library(tsyntax, plugin)
    meta["decoding_plugin"] = plugin or "native"
    return arr, False


@typed_errors("DICOM file")
def read_dicom(
    path,
    *,
    windowing: str = "none",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    decoding_plugin: str | None = None,
    decoder: str = "cpu",
) -> Image:
    """Read one single-frame greyscale DICOM image (see the module docstring for the policy).

    ``decoding_plugin`` overrides the automatic choice (a pydicom plugin name such as
    ``"pydicom"`` or ``"pylibjpeg"``; no imagecodecs fallback then); used by benchmarks and
    tests. ``decoder``: ``cpu`` (default), ``auto`` or ``nvimagecodec`` (GPU decoding of JPEG
    2000 / HTJ2K, see :mod:`featmammo.io.decoders`). Raises ImageReadError.
    """
    p = check_path(path)
    check_windowing(windowing)
    check_decoder(decoder)
    ds = _dcmread(p, defer_size=_DEFER_SIZE)
    meta = _header_meta(ds, windowing)
    if "PixelData" not in ds:
        raise ImageReadError(p, _why_no_pixel_data(p, ds))
    tsyntax = meta["transfer_syntax"]
    if not tsyntax:
        raise ImageReadError(p, "no Transfer Syntax UID in the file meta information")
    for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if keyword not in ds:
            raise ImageReadError(p, f"missing required image tag {keyword}")
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ImageReadError(
            p, f"multi-frame DICOM ({frames} frames, e.g. tomosynthesis); one 2-D image expected"
        )
    if rows <= 0 or cols <= 0:
        raise ImageReadError(p, f"invalid image size {rows} x {cols}")
    check_max_pixels(p, rows, cols, max_pixels)
    bits_allocated = int(ds.BitsAllocated)
    if bits_allocated not in (1, 8, 16):
        raise ImageReadError(p, f"BitsAllocated={bits_allocated} is not supported (1, 8, 16)")
    bits_stored = int(ds.get("BitsStored") or bits_allocated)
    if not 0 < bits_stored <= bits_allocated:
        raise ImageReadError(p, f"BitsStored={bits_stored} with BitsAllocated={bits_allocated}")
    meta["bits_stored"] = bits_stored
    engine = "cpu" if decoding_plugin is not None else resolve_decoder(decoder, tsyntax)
    meta["decoder_requested"] = decoder
    outside_pydicom = engine == "nvimagecodec"
    if engine == "nvimagecodec":
        try:
            arr, meta["decoder"] = decode_frame_nvimagecodec(ds)
        except Exception as exc:  # no silent switch to the CPU decoder
            raise ImageReadError(
                p,
                f"cannot decode pixel data on the GPU ({UID(tsyntax).name}, nvImageCodec): "
                f"{type(exc).__name__}: {exc}",
            ) from None
        meta["decoding_plugin"] = "nvimagecodec"
    else:
        arr, outside_pydicom = _decode_cpu(p, ds, tsyntax, decoding_plugin, meta)
    del ds.PixelData  # drop the encoded bytes now; the decoded array is all we keep
    if arr.ndim == 3:
        arr = grey_from_channels(p, arr, f"DICOM ({meta['photometric']})")
        meta["photometric"] = "MONOCHROME2"
    if arr.shape != (rows, cols):
        raise ImageReadError(p, f"decoded shape {arr.shape} does not match {rows} x {cols}")
    arr = np.require(arr, requirements=["C", "W"])  # no copy in the usual (grey) case
    if (
        arr.dtype.kind == "u"
        and bits_stored < arr.dtype.itemsize * 8
        and (
            outside_pydicom
            or tsyntax in JPEG2000TransferSyntaxes
            or tsyntax in JPEGLSTransferSyntaxes
            or tsyntax in _HTJ2K
        )
    ):
        # pydicom masks unused high bits itself for native/RLE/JPEG; J2K and JPEG-LS (and any
        # array from a decoder outside pydicom) are checked.
        mask = arr.dtype.type(2**bits_stored - 1)
        if arr.max() > mask:
            logger.warning("%s: pixel values above BitsStored=%d masked", p, bits_stored)
            np.bitwise_and(arr, mask, out=arr)
    pixels, max_value = _apply_policy(p, arr, ds, windowing, bits_stored, meta)
    return Image(pixels=pixels, path=str(p), max_value=float(max_value), meta=meta)


__all__ = [
    "PLUGIN_PREFERENCE",
    "available_decoders",
    "choose_decoder",
    "read_dicom",
    "read_dicom_header",
]
