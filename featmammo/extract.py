"""The extraction loop: manifest -> read + preprocess once -> every backbone -> HDF5 store.

Owns ``extract`` (resumable, crash-safe, optionally sharded across ``torchrun`` ranks) and ``embed``
(the same computation in memory, for ``featmammo predict``).

How a run proceeds:

1. The manifest is validated (``featmammo.datasets.read_manifest``) and every backbone is built
   before any image is read, so a bad row, bad weights or a refused store fail fast.
2. The store is created or checked (``featmammo.store.prepare``: a backbone already stored with
   other weights or preprocessing is refused; new manifest images are appended) and the shards left
   by an interrupted run are merged.
3. Manifest rows are cut into fixed batches in manifest order (``batch_size`` rows each). A batch
   whose images are all done for every requested backbone is skipped; any other batch is read,
   preprocessed once and run through each backbone that still needs one of its images. Because a
   batch is always the same set of images, a resumed or sharded run (ranks take every
   WORLD_SIZE-th batch) computes bit for bit what an uninterrupted run computes.
4. Each finished batch is written as a durable shard and periodically merged into the main file
   (see ``featmammo.store`` for why a ``kill -9`` at any moment is harmless).

Per-image errors (unreadable, corrupt, non-finite output) are caught where they happen, in the
DataLoader worker when ``workers > 0``, and recorded as failures with their reason; the run goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import store as fstore
from .errors import ConfigError, FeatmammoError, ImageReadError, StoreError
from .hashing import keyed_hash, read_key

log = logging.getLogger(__name__)

DEFAULT_BACKBONES = ("resnet50", "alexnet")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


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
    max_failures: int | None = None
    exceeded_max_failures: bool = False
    stopped_early: bool = False

    @property
    def images_per_s(self) -> float:
        return (self.n_done + self.n_failed) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "images_per_s": round(self.images_per_s, 3)}


# --------------------------------------------------------------------------------- environment
def resolve_device(device: str = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return dev


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


def default_threads(workers: int = 0, local_world: int = 1) -> int:
    """Intra-op threads: ``OMP_NUM_THREADS`` when set, else this process's share of the cores
    minus one per DataLoader worker (oversubscribed OpenMP threads spin and slow everything)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = max(1, available_cores() // max(1, local_world))
    return cores if workers == 0 else max(1, cores - workers)


def _distributed() -> tuple[int, int, int, int]:
    """(rank, world_size, local_rank, local_world_size) from the torchrun environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return rank, world, local_rank, local_world


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


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
            w = "imagenet" if str(name).startswith("hybrid:") else weights
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
class _Images(torch.utils.data.Dataset):
    """Reads + preprocesses one manifest row; an error becomes ``(i, None, reason)``."""

    def __init__(self, paths, lateralities, masks, config):
        self.paths, self.lateralities, self.masks, self.config = paths, lateralities, masks, config

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from .preprocess import load_and_preprocess

        try:
            x = load_and_preprocess(
                self.paths[i],
                self.config,
                laterality=self.lateralities[i] or None,
                roi_mask_path=self.masks[i] or None,
            )
            x = np.ascontiguousarray(x, dtype=np.float32)
            if x.ndim != 3 or x.shape[0] != 3:
                raise ImageReadError(self.paths[i], f"preprocess returned shape {x.shape}")
            return i, torch.from_numpy(x), None
        except ImageReadError as exc:
            return i, None, exc.reason
        except FeatmammoError as exc:
            return i, None, str(exc)
        except Exception as exc:  # one bad image must not stop the run; the reason is recorded
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate(items):
    ok = [(i, x) for i, x, _ in items if x is not None]
    failed = [(i, r) for i, x, r in items if x is None]
    batch = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], batch, failed


def _prefetched(loader, enabled: bool):
    """Iterate ``loader`` with the next batch read in a background thread while the current one
    runs through the backbones (``workers=0``): decoding and resizing release the GIL, so reading
    overlaps the forward passes instead of idling the cores between batches."""
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


@contextlib.contextmanager
def _autocast(device: torch.device, precision: str):
    if device.type == "cuda" and precision in ("bfloat16", "float16"):
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float16
        with torch.autocast("cuda", dtype=dtype):
            yield
    else:
        yield


def _forward(model, batch: torch.Tensor, device, precision) -> np.ndarray:
    x = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), _autocast(device, precision):
        y = model(x)
    y = y.reshape(y.shape[0], -1)
    return y.float().cpu().numpy()


# --------------------------------------------------------------------------------- extract
def _pseudonymise(df: pd.DataFrame, key: bytes) -> pd.DataFrame:
    out = df[[c for c in df.columns if c in ("image_id", *fstore.META_COLUMNS)]].copy()
    out["image_id"] = [keyed_hash(v, key) for v in df["image_id"].astype(str)]
    out["patient_id"] = [keyed_hash(v, key) if str(v) else "" for v in df["patient_id"].astype(str)]
    out["path"] = ""
    return out


def extract(
    manifest,
    store_path,
    *,
    backbones: Sequence = DEFAULT_BACKBONES,
    weights: str = "imagenet",
    preprocess=None,
    batch_size: int = 16,
    workers: int = 0,
    device: str = "auto",
    max_failures: int | None = None,
    dtype: str = "float32",
    hash_ids=None,
    backbone_suffix: str = "",
    precision: str = "auto",
    compression: str = "gzip",
    consolidate_every: int = 50,
    consolidate_seconds: float = 300.0,
    progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
    prefetch: bool = True,
) -> ExtractSummary:
    """Embed every manifest image with every backbone into the HDF5 store at ``store_path``.

    Rerunning the same call resumes: finished images are skipped, images that failed are retried.
    ``max_failures``: stop (after the current batch, keeping everything done) once more images than
    this have failed in this run; ``None`` never stops. ``hash_ids``: a key file; image and patient
    ids become keyed hashes and no path enters the store. ``backbone_suffix`` stores this run's
    embeddings under ``<name><suffix>`` (e.g. a second preprocessing of the same backbone).
    ``threads``: intra-op threads for the forward passes (default: ``default_threads``).
    ``workers=0`` reads in the main process; with ``prefetch`` (default) a background thread reads
    batch k+1 while batch k runs through the backbones.
    ``progress(n, total)`` is called after each batch: n images of this process's total settled.
    Under ``torchrun`` (WORLD_SIZE > 1) the batches are split across ranks into one store.
    """
    from .datasets.manifest import manifest_hash, read_manifest
    from .preprocess import PreprocessConfig

    t0 = time.perf_counter()
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, not {batch_size}")
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, not {workers}")
    if dtype not in fstore.DTYPES:
        raise ConfigError(f"dtype {dtype!r} not in {fstore.DTYPES}")
    if not backbones:
        raise ConfigError("no backbone requested")
    store_path = Path(store_path)
    config = preprocess if preprocess is not None else PreprocessConfig()

    rank, world, local_rank, local_world = _distributed()
    dist = None
    own_group = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
            own_group = True
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", local_rank)
    prec = resolve_precision(precision, dev)

    df = read_manifest(manifest)
    mhash = manifest_hash(df)
    key = read_key(hash_ids) if hash_ids else None
    stored = _pseudonymise(df, key) if key is not None else df
    ids = stored["image_id"].astype(str).to_numpy()
    meta = stored.drop(columns=["image_id"])

    n_threads = threads or default_threads(workers, local_world)
    with _threads(n_threads):
        models = _make_models(backbones, weights, dev, backbone_suffix)
        config = _resolve_preprocess(config, models)
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
            summary = _run(
                df, ids, store_path, models, identities, config, dev, prec, batch_size, workers,
                max_failures, rank, world, consolidate_every, consolidate_seconds, progress,
                prefetch,
            )  # fmt: skip
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
                    "workers": workers,
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
                        name: {"devices": [dev.type], "precision": prec} for name in models
                    },
                )
                fstore.cleanup_parts(store_path)
            if dist is not None:
                dist.barrier()
                if own_group:
                    dist.destroy_process_group()
    summary.store = str(store_path)
    summary.device, summary.precision, summary.world_size = str(dev), prec, world
    summary.max_failures = max_failures
    summary.exceeded_max_failures = max_failures is not None and summary.n_failed > max_failures
    log.info(
        "extract %s: %d done, %d skipped, %d failed in %.1f s (%.2f images/s)",
        store_path, summary.n_done, summary.n_skipped, summary.n_failed, summary.seconds,
        summary.images_per_s,
    )  # fmt: skip
    return summary


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


def _run(
    df, ids, store_path, models, identities, config, dev, prec, batch_size, workers,
    max_failures, rank, world, consolidate_every, consolidate_seconds, progress, prefetch,
) -> ExtractSummary:  # fmt: skip
    st = fstore.open(store_path)
    index = {i: k for k, i in enumerate(st.ids)}
    rows = np.array([index[i] for i in ids], dtype=np.int64)  # store row of each manifest row
    names = list(models)
    # True where (manifest row, backbone) still needs an embedding (pending or failed before)
    need = np.stack([st.status(nm)[rows] != fstore.DONE for nm in names], axis=1)
    dtypes = {nm: st.dtype(nm) for nm in names}
    n = len(df)
    chunks = [np.arange(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    todo = [c for c in chunks if need[c].any()]
    mine = todo[rank::world]
    summary = ExtractSummary(store=str(store_path), backbones=names, n_images=n)
    # images needing nothing are counted once, by rank 0
    summary.n_skipped = int((~need.any(axis=1)).sum()) if rank == 0 else 0
    log.info(
        "%d images: %d to embed in %d batches on %s (rank %d/%d), backbones %s",
        n, int(need.any(axis=1).sum()), len(todo), dev, rank, world, names,
    )  # fmt: skip
    if not mine:
        return summary

    paths = df["path"].astype(str).tolist()
    lats = df["laterality"].fillna("").astype(str).tolist()
    mask_col = next((c for c in ("roi_mask_path", "mask_path") if c in df.columns), None)
    masks = df[mask_col].fillna("").astype(str).tolist() if mask_col else [""] * n
    dataset = _Images(paths, lats, masks, config)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=[c.tolist() for c in mine],
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=dev.type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
    )
    hashed = list(ids) != df["image_id"].astype(str).tolist()
    last_merge, since_merge = time.monotonic(), 0
    failed_images: set[int] = set()
    total_mine = int(sum(len(c) for c in mine))
    n_seen, t_start = 0, time.monotonic()
    last_log = t_start
    for ok_idx, batch, failed in _prefetched(loader, enabled=workers == 0 and prefetch):
        chunk = np.array(sorted(ok_idx + [i for i, _ in failed]), dtype=np.int64)
        reasons = dict(failed)
        outputs = {}
        for j, name in enumerate(names):
            if batch is None or not need[ok_idx, j].any():
                continue
            emb = _forward(models[name], batch, dev, prec)
            outputs[name] = emb
        blocks = {}
        for j, name in enumerate(names):
            sel = chunk[need[chunk, j]]
            if sel.size == 0:
                continue
            dim = models[name].spec.dim
            emb = np.full((sel.size, dim), np.nan, dtype=np.float32)
            status = np.full(sel.size, fstore.DONE, dtype=np.int8)
            why = np.full(sel.size, "", dtype=object)
            pos = {i: k for k, i in enumerate(ok_idx)}
            for k, i in enumerate(sel):
                if i in reasons:
                    status[k], why[k] = fstore.FAILED, reasons[i]
                    continue
                e = outputs[name][pos[i]]
                if not fstore.storable_rows(e[None, :], dtypes[name])[0]:
                    # NaN/inf, or a value the store's float16 would turn into inf
                    why[k] = f"{name}: {fstore.nonfinite_reason(e, dtypes[name])}"
                    status[k] = fstore.FAILED
                    continue
                emb[k] = e
            for k, i in enumerate(sel):
                if status[k] == fstore.FAILED:
                    failed_images.add(int(i))
                    log.warning("%s failed for %s: %s", name, paths[i], why[k])
                    # the summary carries what the store carries: no path behind hashed ids
                    summary.failures.append(
                        {"image_id": str(ids[i]), "path": "" if hashed else paths[i],
                         "backbone": name, "reason": str(why[k])}
                    )  # fmt: skip
            blocks[name] = (emb, status, why)
        if blocks:
            _write_batch(store_path, ids, blocks, chunk, need, names, identities)
        summary.n_done += int(
            sum(1 for i in chunk if need[i].any() and int(i) not in failed_images)
        )
        n_seen += len(chunk)
        if progress is not None:
            progress(len(chunk), total_mine)
        if time.monotonic() - last_log > 30:
            rate = n_seen / max(time.monotonic() - t_start, 1e-9)
            log.info("%d/%d images (%.2f images/s)", n_seen, total_mine, rate)
            last_log = time.monotonic()
        fstore.fault_point("batch")
        since_merge += 1
        if rank == 0 and (
            since_merge >= consolidate_every or time.monotonic() - last_merge > consolidate_seconds
        ):
            fstore.consolidate(store_path)
            last_merge, since_merge = time.monotonic(), 0
        if max_failures is not None and len(failed_images) > max_failures:
            log.error("more than %d images failed; stopping after this batch", max_failures)
            summary.stopped_early = True
            break
    summary.n_failed = len(failed_images)
    return summary


def _write_batch(store_path, ids, blocks, chunk, need, names, identities) -> None:
    # each block covers the chunk rows that needed that backbone; a shard holds one id list, so
    # write one shard per distinct row set (usually a single shard for the whole batch)
    groups: dict[tuple, dict] = {}
    for j, name in enumerate(names):
        if name not in blocks:
            continue
        sel = tuple(int(i) for i in chunk[need[chunk, j]])
        groups.setdefault(sel, {})[name] = blocks[name]
    for sel, bl in groups.items():
        fstore.write_shard(store_path, [ids[i] for i in sel], bl, {nm: identities[nm] for nm in bl})


# --------------------------------------------------------------------------------- embed
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
) -> dict[str, np.ndarray]:
    """Embeddings of in-memory images or paths, computed exactly as ``extract`` does; no store.

    ``images``: file paths, 2-D pixel arrays (preprocessed with ``preprocess``), or already
    preprocessed (3, H, W) float32 arrays. ``backbones``: names or modules from
    ``backbones.make``, or ``{output name: name or module}``. ``lateralities`` ("L"/"R"/None
    per image, as the manifest's column) picks the canonical side the way ``extract`` does; None
    infers it from the pixels. Returns ``{name: (len(images), dim) float32}``; an unreadable
    image raises ``ImageReadError``.
    """
    from .preprocess import PreprocessConfig, load_and_preprocess
    from .preprocess import preprocess as run_preprocess

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    config = preprocess if preprocess is not None else PreprocessConfig()
    models = _make_models(backbones, weights, dev)
    config = _resolve_preprocess(config, models)
    if lateralities is not None and len(lateralities) != len(images):
        raise ConfigError(f"{len(lateralities)} lateralities for {len(images)} images")
    tensors = []
    for k, im in enumerate(images):
        side = (lateralities[k] or None) if lateralities is not None else None
        if isinstance(im, np.ndarray) and im.ndim == 3 and im.shape[0] == 3:
            x = im.astype(np.float32, copy=False)
        elif isinstance(im, np.ndarray):
            x = run_preprocess(im, config, laterality=side)
        else:
            x = load_and_preprocess(im, config, laterality=side)
        tensors.append(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    out = {name: [] for name in models}
    for a in range(0, len(tensors), batch_size):
        batch = torch.stack(tensors[a : a + batch_size])
        for name, m in models.items():
            out[name].append(_forward(m, batch, dev, prec))
    return {
        name: (np.concatenate(v) if v else np.zeros((0, models[name].spec.dim), np.float32))
        for name, v in out.items()
    }
