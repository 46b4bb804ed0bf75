"""Preprocessing: one 2-D mammogram -> one ``(3, H, W)`` float32 network input.

This module owns the image-to-tensor recipe and its configuration (:class:`PreprocessConfig`, with a
stable fingerprint that goes into every embedding store). It is torch-free (numpy + Pillow).

Steps, in order (each one documented where it is implemented):

0. **DDSM calibration** (``ddsm_calibration="od"``, default ``none``): grey levels of a DDSM
   ``.LJPEG`` scan become optical density for the scanner named in ``Image.meta["digitizer"]``
   (:func:`featmammo.io.ddsm.optical_density`), clipped to [0.05, 3.0] and mapped to
   ``1 - OD / 4`` (float32, max value 1; dense tissue stays bright). Never applied at read time;
   an image without a digitiser is an error naming the file.
1. **Canonical side** (``canonical_side``): right breasts are flipped horizontally so the chest wall
   is on the left of every image (the CBIS-DDSM/DDSM convention for left breasts). Laterality comes
   from the ``laterality`` argument, else ``Image.meta["laterality"]``; when unknown it is inferred:
   the half (left/right) of a downsampled copy holding more tissue is the chest-wall side.
2. **Breast crop** (``crop="breast"``): Otsu threshold on a strided copy whose long side is at most
   256 px, eroded by 2 px (so thin bright film borders stop touching the breast), largest
   8-connected component (run-length union-find, no scipy), its bounding box mapped back to full
   resolution and grown back by the erosion + one stride. Drops film labels, markers and borders.
3. **ROI** (``roi``): ``full`` keeps the (breast-cropped) image; ``crop`` takes the bounding box of
   the lesion mask; ``patch`` takes a square centred on the lesion box, of side ``max(h, w) * (1 +
   patch_context)``, shifted to lie inside the image where it fits and clipped where it does not. A
   mask of another resolution than the image is scaled (bounding box scaled by the size ratio).
   ``crop``/``patch`` ignore the breast crop (they are already local).
4. **Resize** with aspect preserved, never stretched. ``image_size=N``: the long side becomes N,
   the short side is scaled by the same factor, and the result is padded (centred) to N x N.
   ``image_size=(H, W)`` (``"HxW"``, e.g. ``1024x512`` for the 2:1 portrait of a mammogram): the
   region is scaled by ``min(H / rows, W / cols)`` (one side fills its target exactly, the other
   is rounded) and placed at the top-left corner, so the padding is on the right and at the
   bottom -- after step 1 the chest wall is on the left, and the padding lies away from it (with
   ``canonical_side=False`` the padding is still right/bottom). Padding uses the region's
   background value (its minimum). Padding after the resize equals pad-then-resize up to edge
   blending and never builds a padded full-resolution copy. Methods: ``nearest``, ``bilinear``,
   ``bicubic`` (Pillow on float32 'F' images; Pillow antialiases when downscaling) and ``area``:
   the *exact* area-weighted average of the source pixels each output pixel covers (OpenCV
   INTER_AREA semantics; Pillow's BOX filter is only exact for integer factors). ``area`` is
   computed with ``np.add.reduce`` directly on the integer pixels, so no float copy of the full
   field is made.
5. **Normalise** (statistics from the resized region, padding excluded; the padding gets the
   normalised background value): ``backbone`` x/max_value then (x - mean[c]) / std[c];
   ``zscore`` (x - mean) / std per image; ``mean`` (x - mean) / (max - min); ``decimal`` x / 10**j
   with j >= 0 the smallest integer with max|x| / 10**j < 1, j computed on the raw stored values
   of the region;
   ``none`` x / max_value.
6. Grey -> 3 identical channels; output is C-contiguous float32 ``(3, H, W)`` (``H = W = N``).

The read itself (``windowing``, default ``auto``) is :func:`featmammo.io.read_image`'s: a DICOM's
own VOI LUT or window when it has one, else the stored range (every non-DICOM file).

Steps 0-4 are :func:`prepare` (the costly part, cached by :mod:`featmammo.prepared` under
:meth:`PreprocessConfig.prepared_fingerprint`), steps 5-6 are :func:`finish`;
``preprocess = finish(prepare(...))``. :func:`load_and_preprocess` reads an ROI mask only when
``roi`` is ``crop`` or ``patch``.

Pixels stay in their stored integer type until the resize (flips and crops are views); nothing is
ever float64 at full-field size.
One concern per module: :mod:`.config` (the configuration and its fingerprints), :mod:`.geometry`
(side, breast crop, ROI boxes), :mod:`.resize`, :mod:`.normalize`, :mod:`.calibration` (DDSM optical
density) and :mod:`.pipeline` (the entry points); every name stays importable from
``featmammo.preprocess``.
"""

from __future__ import annotations

from .calibration import OD_CLIP, calibrate_od
from .config import (
    CROP_METHODS,
    DDSM_CALIBRATIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZE_METHODS,
    PREPROCESS_VERSION,
    RAW_WINDOWINGS,
    RESIZE_METHODS,
    ROI_MODES,
    WINDOWINGS,
    PreprocessConfig,
    format_image_size,
    parse_image_size,
)
from .geometry import (
    _normalize_laterality,
    breast_bbox,
    infer_laterality,
    largest_component_bbox,
    mask_bbox,
    otsu_threshold,
    patch_bbox,
)
from .pipeline import (
    READ_META,
    Prepared,
    _has_path,
    finish,
    load_and_preprocess,
    load_prepared,
    prepare,
    preprocess,
)
from .resize import area_resize, resize2d

# importable from here as before the split, outside __all__ as before: the method lists and
# OD_CLIP; featmammo.prepared's two private helpers
_REEXPORTED = (
    CROP_METHODS, NORMALIZE_METHODS, OD_CLIP, RAW_WINDOWINGS, RESIZE_METHODS, ROI_MODES, WINDOWINGS,
    _has_path, _normalize_laterality,
)  # fmt: skip

__all__ = [
    "DDSM_CALIBRATIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PREPROCESS_VERSION",
    "Prepared",
    "READ_META",
    "PreprocessConfig",
    "area_resize",
    "breast_bbox",
    "calibrate_od",
    "finish",
    "format_image_size",
    "infer_laterality",
    "largest_component_bbox",
    "load_and_preprocess",
    "load_prepared",
    "mask_bbox",
    "otsu_threshold",
    "parse_image_size",
    "patch_bbox",
    "prepare",
    "preprocess",
    "resize2d",
]
