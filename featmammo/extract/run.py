"""``extract``: manifest -> store, resumable, crash-safe, optionally sharded across ranks."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import store as fstore
from ..devices import resolve_device, torchrun_env
from ..errors import AllImagesFailed, ConfigError, StoreError
from ..hashing import keyed_hash, read_key
from .environment import (
    _cudnn_benchmark,
    _threads,
    decoder_plugin,
    default_threads,
    resolve_decoder,
    resolve_precision,
    resolve_workers,
    run_environment,
)
from .files import file_identities
from .loading import _mask_column, check_roi_masks
from .loop import Plan, _Loop, plan_work
from .models import (
    DEFAULT_BACKBONES,
    _check_hybrid_preprocess,
    _make_models,
    _resolve_preprocess,
    backbone_provenance,
    hybrid_preprocess,
)
from .ranks import Ranks, test_delay
from .summary import ExtractSummary, _first_failure, _merge_summaries

log = logging.getLogger(__package__)  # "featmammo.extract" in log lines, as before the split


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
    pool: str = "avg",
    stage: Callable[[str], None] | None = None,
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
    :func:`resolve_decoder`; resolved before any work; which decoder reads lossy JPEG 2000 is part
    of each backbone's identity, ``decoder_plugin``). ``pool``: ``avg`` (default) or ``gem``, the
    global pooling of the backbones built from names (recorded in their spec: their identity).
    Batches are written by ``featmammo.store.BackgroundWriter`` off the forward loop; its merge
    schedule keeps the bytes written within a small constant of the store's size.
    ``consolidate_every=1`` merges after every batch instead (fault-injection tests).
    ``progress(n, total)`` is called after each batch: n images of this process's total settled.
    ``stage(message)`` is told of a long step before the batches (rank 0: a first run reading
    every file once for its ``file_identity``).
    Under ``torchrun`` (WORLD_SIZE > 1) the batches are split across ranks into one store.
    Raises :class:`AllImagesFailed` (after recording the failures) when every image failed.
    """
    from ..datasets.manifest import manifest_hash, read_manifest

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
    if (
        cache is None
    ):  # a bad FEATMAMMO_PREPARED_MAX_BYTES is one error now, not a failed image each
        from ..prepared import PreparedCache

        PreparedCache.default()

    df = read_manifest(manifest)
    where = str(manifest) if not isinstance(manifest, pd.DataFrame) else "manifest"
    if preprocess is not None:
        check_roi_masks(df, preprocess, where)
    if rank == 0:
        _warn_patches_cropped(df, preprocess, where)
    mhash = manifest_hash(df)
    key = read_key(hash_ids) if hash_ids else None
    stored = _pseudonymise(df, key) if key is not None else df
    ids = stored["image_id"].astype(str).to_numpy()
    meta = stored.drop(columns=["image_id"])

    n_threads = threads or default_threads(n_workers, local_world)
    ranks, own_group = Ranks.join(rank, world)
    try:
        with _threads(n_threads), _cudnn_benchmark(dev):
            summary = _run(
                ranks, df=df, ids=ids, meta=meta, mhash=mhash, key=key, store_path=store_path,
                backbones=backbones, weights=weights, preprocess=preprocess, dtype=dtype,
                backbone_suffix=backbone_suffix, compression=compression, dev=dev, prec=prec,
                batch_size=batch_size, n_workers=n_workers, max_failures=max_failures,
                progress=progress, prefetch=prefetch, cache=cache,
                consolidate_every=consolidate_every, dec=dec, t0=t0, pool=pool, stage=stage,
            )  # fmt: skip
    except BaseException as exc:
        ranks.post_error(exc)  # every other rank stops with this error, never waits for it
        raise
    finally:
        if own_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    summary.store = str(store_path)
    summary.device, summary.precision, summary.world_size = str(dev), prec, world
    summary.workers, summary.decoder = n_workers, dec
    summary.max_failures = max_failures
    summary.exceeded_max_failures = max_failures is not None and summary.n_failed > max_failures
    log.info(
        "extract %s: %d done, %d skipped, %d images failed (%d image x backbone pairs), "
        "%d re-embedded because their files changed, in %.1f s (%.2f images/s)",
        store_path, summary.n_done, summary.n_skipped, summary.n_failed, summary.n_failures,
        summary.n_reembedded, summary.seconds, summary.images_per_s,
    )  # fmt: skip
    nothing_done = not summary.n_done and not summary.n_skipped
    if summary.n_failed and nothing_done and not summary.stopped_early:
        raise AllImagesFailed(
            f"{store_path}: every image failed ({summary.n_failed} of {summary.n_images} images, "
            f"{summary.n_failures} image x backbone pairs; "
            f"first: {_first_failure(summary)}); the failures are recorded in the store "
            "(featmammo info STORE)",
            summary,
        )
    return summary


def _run(
    ranks: Ranks, *, df, ids, meta, mhash, key, store_path: Path, backbones, weights, preprocess,
    dtype, backbone_suffix, compression, dev, prec, batch_size, n_workers, max_failures,
    progress, prefetch, cache, consolidate_every, dec, t0, pool="avg", stage=None,
) -> ExtractSummary:  # fmt: skip
    """The run itself, on every rank: the backbones, identities every rank agrees on, one shared
    work list, this rank's batches, the merged summary; rank 0 prepares and finishes the store."""
    from ..preprocess import PreprocessConfig

    rank, world = ranks.rank, ranks.world
    from ..backbones import check_input_size

    models = _make_models(backbones, weights, dev, backbone_suffix, pool)
    if preprocess is None:
        preprocess = PreprocessConfig(**hybrid_preprocess(models))
        check_roi_masks(df, preprocess, "manifest")
    _check_hybrid_preprocess(preprocess, models)
    config = _resolve_preprocess(preprocess, models)
    check_input_size(models, config.shape)  # a ViT's fixed grid: refused before any image
    plugin = decoder_plugin(dec)
    entries = [
        fstore.BackboneEntry(
            name,
            int(m.spec.dim),
            backbone_provenance(m, config, dtype, precision=prec, decoder_plugin=plugin),
            dtype,
        )  # fmt: skip
        for name, m in models.items()
    ]
    identities = {e.name: e.identity for e in entries}
    # every rank must compute the same embeddings (weights, packages, precision may differ by node)
    _check_same_identities(ranks.gather("identities", [(e.name, e.provenance) for e in entries]))
    store_prov = {
        "manifest_hash": mhash,
        "id_hashing": (
            {"method": "hmac-sha256", "length": 16, "key_check": keyed_hash("featmammo", key)}
            if key is not None
            else None
        ),
    }
    names = list(models)
    with ranks.busy():  # the files behind each row: every rank digests its share
        meta = meta.assign(file_identity=_file_identities(ranks, df, config, key, stage))

    def prepare_and_plan() -> Plan:
        # prepare merges the shards an interrupted run left, before it compares file identities
        with fstore.prepare(
            store_path, ids, meta, entries, store_prov, compression=compression
        ) as st:
            n_changed = len(st.changed_images)
        plan = plan_work(store_path, ids, names, batch_size)
        plan.n_reembedded = n_changed
        return plan

    def between_batches() -> None:
        ranks.beat()
        ranks.check()  # another rank failed: stop here, keeping every finished batch

    with fstore.lock(store_path) if rank == 0 else contextlib.nullcontext():
        with ranks.busy():
            # one work list for every rank, decided before any rank writes a batch
            plan = ranks.share("plan", prepare_and_plan)
        test_delay(rank)
        loop = _Loop(
            df=df, ids=ids, store_path=store_path, models=models, identities=identities,
            config=config, dev=dev, prec=prec, batch_size=batch_size, workers=n_workers,
            max_failures=max_failures, rank=rank, world=world, progress=progress,
            prefetch=prefetch, cache=cache, consolidate_every=consolidate_every,
            decoder=dec, plan=plan, between=between_batches if world > 1 else None,
        )  # fmt: skip
        summary = _merge_summaries(ranks.gather("summary", loop.run()))
        summary.n_skipped, summary.n_reembedded = plan.n_skipped, plan.n_reembedded
        summary.seconds = time.perf_counter() - t0

        def finish() -> None:
            run_record = {
                "time": fstore.utcnow(),
                "device": str(dev),
                "precision": prec,
                "world_size": world,
                "batch_size": batch_size,
                "workers": n_workers,
                "decoder": dec,
                "decoder_plugin": plugin,
                **run_environment(dev),
                "backbones": names,
                "n_done": summary.n_done,
                "n_failed": summary.n_failed,
                "n_skipped": summary.n_skipped,
                "n_reembedded": summary.n_reembedded,
                "windowing_applied": summary.windowing_applied,
                "seconds": round(summary.seconds, 3),
            }
            fstore.consolidate(
                store_path,
                store_provenance_update={"runs": [run_record], "manifest_hash": mhash},
                backbone_provenance_update={
                    # precision is part of the entry's identity, fixed when it was created
                    name: {"devices": [dev.type], "decoders": [dec]}
                    for name in names
                },
            )
            fstore.cleanup_parts(store_path)
            if not summary.stopped_early:
                _check_nothing_pending(store_path, ids, names)

        with ranks.busy():
            ranks.share("final", finish)  # every rank returns once the store is whole
    return summary


def _warn_patches_cropped(df: pd.DataFrame, preprocess, where: str) -> None:
    """A WARNING when every row is a DDSM patch (``featmammo manifest ddsm-patches``) and the
    breast crop is on: on a 299x299 patch full of tissue it keeps the largest bright region (a
    mass: a zoom that differs with the label)."""
    from ..datasets.ddsm_patches import SOURCE
    from ..preprocess import PreprocessConfig

    crop = (preprocess or PreprocessConfig()).crop
    sources = set(df["source"].fillna("").astype(str)) if "source" in df.columns else set()
    if crop == "breast" and sources == {SOURCE}:
        log.warning(
            "%s: rows of the DDSM patch set (source %s) with --crop breast: each patch is cropped "
            "to its largest bright region (on a tissue patch with a mass, the mass: a zoom that "
            "differs with the label); use --crop none",
            where,
            SOURCE,
        )


def _check_nothing_pending(store_path: Path, ids, names: list) -> None:
    """After a run that was not stopped early every manifest row is done or failed for every
    requested backbone; a pending one would be work silently lost (StoreError, never exit 0)."""
    with fstore.open(store_path) as st:
        index = {i: k for k, i in enumerate(st.ids)}
        rows = np.array([index[i] for i in ids], dtype=np.int64)
        left = {nm: int((st.status(nm)[rows] == fstore.PENDING).sum()) for nm in names}
    if any(left.values()):
        said = ", ".join(f"{nm}: {k}" for nm, k in left.items() if k)
        raise StoreError(
            f"{store_path}: rows still pending after the run ({said} of {len(ids)}); this is a "
            "bug: rerun the same command to embed them, and please report it"
        )


def _file_identities(
    ranks: Ranks, df: pd.DataFrame, config, key: bytes | None, stage=None
) -> list[str]:
    """Each manifest row's ``file_identity`` (``featmammo.extract.files``); under torchrun every
    rank digests every ``world``-th row and all ranks get the whole list (rank 0 tells ``stage``
    how many of its share it reads)."""
    paths = df["path"].astype(str).tolist()
    col = _mask_column(df) if config.uses_mask else None
    masks = df[col].fillna("").astype(str).tolist() if col else None
    r, w = ranks.rank, ranks.world
    part = file_identities(paths[r::w], masks[r::w] if masks else None, key=key,
                           threads=max(2, torch.get_num_threads()),
                           announce=stage if r == 0 else None)  # fmt: skip
    parts = ranks.gather("file_identity", part)
    out = [""] * len(paths)
    for k, got in enumerate(parts):
        out[k::w] = got
    return out


def _check_same_identities(per_rank: list) -> None:
    """ConfigError, raised alike on every rank, when the ranks would not compute the same
    embeddings: ``per_rank[r]`` is rank r's ``[(backbone, provenance), ...]``."""
    ref = per_rank[0]
    for r, mine in enumerate(per_rank[1:], start=1):
        if [n for n, _ in mine] != [n for n, _ in ref]:
            raise ConfigError(
                f"torchrun ranks disagree on the backbones: {[n for n, _ in ref]} on rank 0, "
                f"{[n for n, _ in mine]} on rank {r}"
            )
        for (name, a), (_, b) in zip(ref, mine, strict=True):
            if not _differences(a, b):
                continue
            said = "; ".join(
                f"{k} {_short(_field(a, k))} on rank 0, {_short(_field(b, k))} on rank {r}"
                for k in _differences(a, b)
            )
            raise ConfigError(
                f"torchrun ranks disagree on backbone {name!r} ({said}): every rank must "
                "compute the same embeddings; give every node the same weights files, packages "
                "and --precision"
            )


def _differences(a: dict, b: dict) -> list[str]:
    """The identity keys (``spec.seed`` for a field of a dict) where two provenances differ."""
    out = []
    for k in dict.fromkeys((*fstore.IDENTITY_KEYS, "precision", "decoder_plugin")):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += [f"{k}.{s}" for s in sorted(set(x) | set(y)) if x.get(s) != y.get(s)]
        elif x != y:
            out.append(k)
    return out


def _field(provenance: dict, key: str):
    head, _, sub = key.partition(".")
    value = provenance.get(head)
    return value.get(sub) if sub else value


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
