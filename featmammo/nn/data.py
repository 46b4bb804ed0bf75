"""HybridNet training data (featmammo.nn): which image trains, validates or tests, the decoded
image cache, and the order and batches of each epoch.

- :func:`split_roles`: the test rows by ``fit``'s rule (:func:`held_out_mask`: the manifest's
  ``split=test`` rows, patients held out by :func:`featmammo.splits.grouped_holdout`, or none);
  the rest is split by patient into training and validation with the same function.
- :func:`build_image_cache`: every row decoded and preprocessed once into
  ``RUN_DIR/cache/images-<key>.npy`` (a memory map every rank and epoch reads).
- :func:`epoch_order`, :func:`batches`, :func:`to_batch`: seeded per epoch (and rank under DDP),
  class-balanced sampling when asked.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from featmammo.datasets.manifest import MASK_COLUMNS
from featmammo.errors import ConfigError, ImageReadError, ManifestError
from featmammo.hashing import fingerprint

from .config import TrainConfig
from .ddp import DistContext

log = logging.getLogger(__name__)


#: the roles of split.csv (and of the run's logs): validation is never called anything else
ROLES = ("train", "validation", "test")


def held_out_mask(
    df: pd.DataFrame, labels, test_split: str, test_size: float, seed: int
) -> np.ndarray:
    """The rows held out for test (``labels``: class names per row), by ``fit``'s rule
    (``featmammo.fit.splits``): ``official`` = the manifest's ``split`` is ``test`` (trimmed, any
    case); ``grouped`` = whole patients drawn by :func:`featmammo.splits.grouped_holdout` with
    ``test_size`` and ``seed`` (the draw depends only on each patient's label and the seed, not on
    row order, so ``fit`` and ``train`` on one manifest hold out the same patients); ``none`` = no
    test rows.

    ``official`` without any ``split=test`` row is refused, as ``fit`` refuses it.
    """
    from featmammo import splits

    is_test = np.zeros(len(df), dtype=bool)
    if test_split == "official":
        split = (
            df["split"].fillna("").astype(str).str.strip().str.lower().to_numpy()
            if "split" in df.columns
            else np.full(len(df), "", dtype=object)
        )
        is_test = split == "test"
        if not is_test.any():
            raise ManifestError(
                "--test-split official: no manifest row has split == 'test' (a set without an "
                "official split, such as MIAS); use --test-split grouped (whole patients held "
                "out at random, the same patients `featmammo fit --test-split grouped` holds out "
                "with the same --seed and --test-size) or --test-split none (no honest estimate)"
            )
    elif test_split == "grouped":
        _, test_idx = splits.grouped_holdout(
            np.asarray(labels, dtype=object).astype(str),
            df["patient_id"].astype(str).to_numpy(),
            test_size,
            seed,
        )
        is_test[np.asarray(test_idx, dtype=int)] = True
    elif test_split != "none":
        raise ConfigError(f"--test-split {test_split!r}: choose one of official, grouped, none")
    return is_test


def split_roles(df: pd.DataFrame, cfg: TrainConfig) -> np.ndarray:
    """Per row: ``train``, ``validation`` or ``test``.

    Test rows by :func:`held_out_mask` (``cfg.test_split``); the validation split is drawn from the
    other rows by patient with :func:`featmammo.splits.grouped_holdout` (``cfg.val_fraction``,
    ``cfg.seed``).
    """
    from featmammo import splits

    role = np.full(len(df), "train", dtype=object)
    # the class names (as fit passes them): the draw's strata follow their sorted order
    is_test = held_out_mask(df, df["_y"], cfg.test_split, cfg.test_size, cfg.seed)
    role[is_test] = "test"
    dev = np.flatnonzero(~is_test)
    if len(dev) < 4:
        raise ManifestError(f"only {len(dev)} non-test images: too few to train and validate")
    args = (
        df["_y"].astype(str).to_numpy()[dev],
        df["patient_id"].astype(str).to_numpy()[dev],
        cfg.val_fraction,
        cfg.seed,
    )
    tr, va = splits.grouped_holdout(*args, held_out="validation")
    role[dev[np.asarray(va)]] = "validation"
    test_patients = set(df.loc[is_test, "patient_id"].astype(str))
    shared = test_patients & set(df["patient_id"].astype(str).to_numpy()[dev])
    if shared:
        log.warning(
            "%d patient(s) appear in both the manifest's test split and the training data, e.g. %s",
            len(shared),
            sorted(shared)[:3],
        )
    return role


def _cache_key(df: pd.DataFrame, pre) -> str:
    cols = [c for c in ("image_id", "path", "laterality") if c in df.columns]
    rows = df[cols].astype(str).to_numpy().tolist()
    return fingerprint({"rows": rows, "preprocess": pre.to_dict()})


def _decode_one(row: dict, pre, cache=None) -> np.ndarray:
    """One row's (3, H, W) float32 through the prepared-image cache (``cache=False``: none)."""
    from featmammo.prepared import prepare_image

    lat = row.get("laterality")
    lat = lat if isinstance(lat, str) and lat in ("L", "R") else None
    kwargs = {"laterality": lat}
    mask = next((row.get(c) for c in MASK_COLUMNS if row.get(c)), None)
    if isinstance(mask, str) and mask and pre.uses_mask:
        kwargs["roi_mask_path"] = mask
    return np.asarray(prepare_image(row["path"], pre, cache=cache, **kwargs), dtype=np.float32)


def build_image_cache(
    df: pd.DataFrame, pre, cache_dir: Path, *, workers: int = 0, prepared_cache=None
) -> tuple[Path, np.ndarray]:
    """Decode + preprocess every manifest row once into ``cache_dir/images-<key>.npy``.

    Pixels come through :func:`featmammo.prepared.prepare_image` (bit-identical to
    ``load_and_preprocess``): an image decoded by an earlier ``extract``/``train``/``predict`` with
    the same preprocessing is read from the prepared-image cache. ``prepared_cache``: None = the
    default cache, False = none (``--no-cache``), or a :class:`~featmammo.prepared.PreparedCache`.

    Returns ``(path, ok)`` where ``ok`` marks rows that decoded (failures are logged and recorded in
    ``cache_dir/failures-<key>.csv``). An existing complete cache with the same key is reused.
    """
    key = _cache_key(df, pre)
    path = cache_dir / f"images-{key}.npy"
    ok_path = cache_dir / f"images-{key}.ok.npy"
    fail_path = cache_dir / f"failures-{key}.csv"
    if path.is_file() and ok_path.is_file():
        log.info("reusing preprocessed image cache %s", path)
        return path, np.load(ok_path)
    cache_dir.mkdir(parents=True, exist_ok=True)
    size = tuple(pre.shape)  # (H, W)
    tmp = cache_dir / f".images-{key}.tmp.npy"
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(df), 3, *size))
    ok = np.zeros(len(df), dtype=bool)
    failures = []
    rows = df.to_dict("records")

    def work(i):
        try:
            return i, _decode_one(rows[i], pre, prepared_cache), None
        except ImageReadError as exc:
            return i, None, str(exc)

    t0 = time.perf_counter()
    if workers and workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(work, range(len(rows)))
            for i, img, err in results:
                _store(arr, ok, failures, rows, i, img, err, size)
    else:
        for i in range(len(rows)):
            _store(arr, ok, failures, rows, i, *work(i)[1:], size)
    arr.flush()
    del arr
    tmp.replace(path)
    np.save(ok_path, ok)
    pd.DataFrame(failures, columns=["image_id", "path", "reason"]).to_csv(fail_path, index=False)
    log.info(
        "decoded %d/%d images in %.1f s into %s (%d failed)",
        ok.sum(),
        len(ok),
        time.perf_counter() - t0,
        path,
        len(failures),
    )
    return path, ok


def _store(arr, ok, failures, rows, i, img, err, size):
    if err is not None:
        log.warning("skipping %s: %s", rows[i]["image_id"], err)
        failures.append((rows[i]["image_id"], rows[i]["path"], err))
        return
    if img.shape != (3, *size):
        reason = f"preprocess returned shape {img.shape}, expected {(3, *size)}"
        log.warning("skipping %s: %s", rows[i]["image_id"], reason)
        failures.append((rows[i]["image_id"], rows[i]["path"], reason))
        return
    arr[i] = img
    ok[i] = True


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (int(seed) * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**31 - 1)


def class_weights(y_train: np.ndarray, k: int) -> np.ndarray:
    counts = np.bincount(y_train, minlength=k).astype(np.float64)
    return (counts.sum() / (k * np.maximum(counts, 1))).astype(np.float32)


def epoch_order(
    n: int, y: np.ndarray, cfg: TrainConfig, epoch: int, ctx: DistContext, k: int
) -> np.ndarray:
    """This rank's training indices (positions into the training set) for ``epoch``."""
    g = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, 0))
    if cfg.balance == "sampler":
        w = torch.as_tensor(1.0 / np.bincount(y, minlength=k)[y], dtype=torch.double)
        per_rank = math.ceil(n / ctx.world_size)  # equal step counts on every rank (DDP needs it)
        order = torch.multinomial(w, per_rank * ctx.world_size, replacement=True, generator=g)
        return order.numpy()[ctx.rank :: ctx.world_size]
    if ctx.distributed:
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(
            range(n),
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=epoch_seed(cfg.seed, 0, 0),
            drop_last=False,
        )
        sampler.set_epoch(epoch)
        return np.fromiter(iter(sampler), dtype=np.int64)
    return torch.randperm(n, generator=g).numpy()


def batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    out = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:  # batch norm cannot train on one sample
        out.pop()
    return out


def steps_per_epoch(n: int, cfg: TrainConfig, ctx: DistContext) -> int:
    per_rank = math.ceil(n / ctx.world_size)
    return len(batches(np.arange(per_rank), cfg.batch_size))


def to_batch(images: np.ndarray, idx: np.ndarray, device) -> torch.Tensor:
    srt = np.sort(idx)  # memmap reads are faster in order; restore the requested order after
    x = torch.from_numpy(np.ascontiguousarray(images[srt]))
    if not np.array_equal(srt, idx):
        x = x[torch.from_numpy(np.argsort(np.argsort(idx)))]
    return x.to(device, non_blocking=True)
