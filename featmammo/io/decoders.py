"""Second-line and GPU decoders for compressed DICOM pixel data, outside pydicom's plugins.

* **imagecodecs fallback** (CPU). pylibjpeg-libjpeg refuses some real files that other codecs
  read, e.g. pydicom's own ``JPEG-lossy.dcm`` (12-bit JPEG Extended whose scan header says
  Se = 0 instead of 63; libjpeg-turbo reads it). When the automatically chosen pydicom plugin
  *fails* on a file, :func:`decode_frame_imagecodecs` decodes the frame with imagecodecs
  (libjpeg-turbo for the JPEG family, CharLS for JPEG-LS, OpenJPEG for JPEG 2000 / HTJ2K). It is
  never used on a file the first decoder decoded, and ``meta["decoder"]`` /
  ``meta["decoder_fallback"]`` record that it ran and why.
* **nvImageCodec** (GPU, optional: ``pip install featmammo[gpu]``). JPEG 2000 / HTJ2K frames
  (RSNA, VinDr-Mammo...) decode on the GPU with nvJPEG2000 when ``decoder="nvimagecodec"`` is
  asked for, or ``decoder="auto"`` finds nvImageCodec and a CUDA device. The decoder is created
  with the GPU_ONLY backend so nvImageCodec cannot silently fall back to one of its CPU codecs;
  a failure is an ImageReadError, never a quiet switch to the CPU decoder. The default is
  ``decoder="cpu"``: the CPU path is unchanged unless a caller opts in.

Both return the frame as the array pydicom would (``uint8``/``uint16`` for unsigned data,
``int8``/``int16`` sign-extended from BitsStored for signed data), so the pixel policy in
:mod:`featmammo.io.dicom` applies unchanged. No torch at import time.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes

logger = logging.getLogger(__name__)

DECODERS = ("cpu", "auto", "nvimagecodec")
HTJ2K_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
)
GPU_SYNTAXES = frozenset(str(u) for u in JPEG2000TransferSyntaxes) | HTJ2K_SYNTAXES
JPEG_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # baseline
        "1.2.840.10008.1.2.4.51",  # extended (12-bit)
        "1.2.840.10008.1.2.4.57",  # lossless
        "1.2.840.10008.1.2.4.70",  # lossless SV1
    }
)


def check_decoder(decoder: str) -> str:
    from featmammo.errors import ConfigError

    if decoder not in DECODERS:
        raise ConfigError(f"decoder must be one of {', '.join(DECODERS)}; got {decoder!r}")
    return decoder


# --------------------------------------------------------------------------- imagecodecs


def _imagecodecs_codec(tsyntax: str):
    """(imagecodecs function, decoder label) for a transfer syntax, or None."""
    try:
        import imagecodecs
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    if tsyntax in JPEG_SYNTAXES:
        return imagecodecs.jpeg8_decode, "imagecodecs-jpeg8"
    if tsyntax in {str(u) for u in JPEGLSTransferSyntaxes}:
        return imagecodecs.jpegls_decode, "imagecodecs-jpegls"
    if tsyntax in GPU_SYNTAXES:
        return imagecodecs.jpeg2k_decode, "imagecodecs-jpeg2k"
    return None


def imagecodecs_label(tsyntax: str) -> str | None:
    """The fallback decoder's label for ``tsyntax`` (None when imagecodecs has none)."""
    codec = _imagecodecs_codec(tsyntax)
    return None if codec is None else codec[1]


def first_frame(ds) -> bytes:
    """The encoded bytes of the (single) frame of an encapsulated Pixel Data element."""
    from pydicom.encaps import generate_frames

    return next(generate_frames(ds.PixelData, number_of_frames=1))


def as_pydicom_dtype(arr: np.ndarray, ds) -> np.ndarray:
    """``arr`` in the dtype pydicom gives: unsigned ``uint8``/``uint16`` by BitsAllocated, or
    signed ``int8``/``int16`` sign-extended from BitsStored (PixelRepresentation 1)."""
    bits_allocated = int(ds.BitsAllocated)
    bits_stored = int(ds.get("BitsStored") or bits_allocated)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    width = 8 if bits_allocated <= 8 else 16
    if not signed:
        return arr.astype(np.uint8 if width == 8 else np.uint16, copy=False)
    utype, stype = (np.uint8, np.int8) if width == 8 else (np.uint16, np.int16)
    if arr.dtype.kind == "i":
        return arr.astype(stype, copy=False)
    bits = arr.astype(utype, copy=False)
    shift = width - bits_stored
    if shift:
        return ((bits << utype(shift)).view(stype) >> stype(shift)).astype(stype, copy=False)
    return bits.view(stype)


def decode_frame_imagecodecs(ds, tsyntax: str) -> tuple[np.ndarray, str]:
    """Decode the single frame with imagecodecs: (array as pydicom would give, decoder label).

    Raises RuntimeError when imagecodecs has no codec for the syntax or fails.
    """
    codec = _imagecodecs_codec(tsyntax)
    if codec is None:
        raise RuntimeError(f"imagecodecs has no decoder for transfer syntax {tsyntax}")
    fn, label = codec
    arr = np.asarray(fn(first_frame(ds)))
    return as_pydicom_dtype(arr, ds), label


# --------------------------------------------------------------------------- nvImageCodec


_NV_LOCK = threading.Lock()
_NV_DECODER = None
_NV_STATUS: tuple[bool, str] | None = None


def nvimagecodec_status() -> tuple[bool, str]:
    """(usable, reason): nvImageCodec importable and a CUDA device visible (cached)."""
    global _NV_STATUS
    if _NV_STATUS is not None:
        return _NV_STATUS
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken CUDA install
        _NV_STATUS = (False, f"nvImageCodec is not installed ({type(exc).__name__}: {exc})")
        return _NV_STATUS
    try:
        import torch

        cuda = bool(torch.cuda.is_available())
    except Exception as exc:  # noqa: BLE001
        _NV_STATUS = (False, f"cannot query CUDA ({type(exc).__name__}: {exc})")
        return _NV_STATUS
    _NV_STATUS = (True, "nvImageCodec with CUDA") if cuda else (False, "no CUDA device")
    return _NV_STATUS


def resolve_decoder(decoder: str, tsyntax: str | None = None) -> str:
    """``cpu`` or ``nvimagecodec``: what ``decoder`` means for a file of ``tsyntax``.

    ``cpu`` -> cpu. ``auto`` -> nvimagecodec for JPEG 2000 / HTJ2K when :func:`nvimagecodec_status`
    says it is usable, else cpu. ``nvimagecodec`` -> nvimagecodec for JPEG 2000 / HTJ2K (ConfigError
    when it is not usable: asked for explicitly, never replaced silently), cpu for other syntaxes
    (nvImageCodec is only used for JPEG 2000 here). ``tsyntax=None`` answers for a JPEG 2000 file.
    """
    from featmammo.errors import ConfigError

    check_decoder(decoder)
    if decoder == "cpu":
        return "cpu"
    if tsyntax is not None and tsyntax not in GPU_SYNTAXES:
        return "cpu"
    ok, reason = nvimagecodec_status()
    if decoder == "auto":
        return "nvimagecodec" if ok else "cpu"
    if not ok:
        raise ConfigError(
            f"decoder='nvimagecodec' but it cannot run: {reason}. Install the extra "
            "(pip install 'featmammo[gpu]') on a machine with a CUDA GPU, or use decoder='cpu'"
        )
    return "nvimagecodec"


def _nv_decoder():
    global _NV_DECODER
    with _NV_LOCK:
        if _NV_DECODER is None:
            from nvidia import nvimgcodec

            # GPU_ONLY: nvImageCodec must not quietly use one of its CPU codecs instead.
            # (``backends=[Backend(kind)]``: the ``backend_kinds=`` overload is gone in 0.9.)
            gpu_only = nvimgcodec.Backend(nvimgcodec.BackendKind.GPU_ONLY)
            _NV_DECODER = nvimgcodec.Decoder(backends=[gpu_only])
        return _NV_DECODER


def decode_frame_nvimagecodec(ds) -> tuple[np.ndarray, str]:
    """Decode the single JPEG 2000 / HTJ2K frame on the GPU: (array as pydicom gives, label).

    Native bit depth (``allow_any_depth``), colour unchanged, no EXIF orientation; the result is
    copied to host memory. Raises RuntimeError when nvImageCodec returns no image.
    """
    from nvidia import nvimgcodec

    params = nvimgcodec.DecodeParams(
        apply_exif_orientation=False,
        color_spec=nvimgcodec.ColorSpec.UNCHANGED,
        allow_any_depth=True,
    )
    image = _nv_decoder().decode(first_frame(ds), params=params)
    if image is None:
        raise RuntimeError("nvImageCodec could not decode the frame (it returned no image)")
    arr = np.asarray(image.cpu())
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return as_pydicom_dtype(np.ascontiguousarray(arr), ds), "nvimagecodec-nvjpeg2k"


__all__ = [
    "DECODERS",
    "GPU_SYNTAXES",
    "as_pydicom_dtype",
    "check_decoder",
    "decode_frame_imagecodecs",
    "decode_frame_nvimagecodec",
    "imagecodecs_label",
    "nvimagecodec_status",
    "resolve_decoder",
]
