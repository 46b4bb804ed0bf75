"""The HybridNet training loop behind ``featmammo train`` (owned by featmammo.nn).

manifest -> patient-grouped train/validation split (+ the manifest's ``split=test`` rows as held-out
test) -> decode + preprocess every image once into ``RUN_DIR/cache/images-<key>.npy`` -> per epoch:
on-the-fly augmentation (training only), class-weighted loss or balanced sampling, AdamW with a
cosine
or one-cycle schedule, trunks frozen for ``freeze_epochs`` then trained at ``lr * trunk_lr_mult``,
AMP on
the GPU -> validation -> early stopping on balanced accuracy or loss.

Files in RUN_DIR: ``config.json`` (resolved config), ``split.csv`` (image -> train/val/test),
``history.csv`` + ``curves.png``, ``checkpoint.pt/.json`` (best model; a backbone for ``extract``),
``last.pt/.json`` (full training state for ``--resume``), ``predictions.csv`` (same columns as
``featmammo fit``), ``metrics.json`` and, when featmammo.report is present, its report.

Reproducibility: every epoch reseeds torch/python RNGs from ``(seed, epoch, rank)``, and the
resumable
state holds model, optimizer, scheduler, grad scaler, RNG states, epoch, best metric and history,
so an
interrupted run resumed with ``resume=True`` ends in the same state as an uninterrupted one.
Under ``torchrun`` the same function trains with DistributedDataParallel (rank 0 writes files).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from featmammo.errors import ConfigError, ImageReadError, ManifestError
from featmammo.hashing import canonical_json, fingerprint

from .checkpoint import load_checkpoint, save_checkpoint
from .ddp import DistContext, setup
from .model import FUSIONS, TRUNKS, HybridNet

log = logging.getLogger(__name__)

MONITORS = ("balanced_accuracy", "loss")
BALANCE = ("weights", "sampler", "none")
SCHEDULES = ("cosine", "onecycle")
AMP_MODES = ("auto", "bf16", "fp16", "none")
HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "lr",
    "trunks_frozen",
    "time",
]
#: config keys that may differ between an interrupted run and its resumption
_RESUME_FREE = {"device", "workers", "eval_batch_size", "amp"}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as RUN_DIR/config.json)."""

    classes: tuple[str, ...] | str | None = None  # None: the manifest's labels, in LABELS order
    epochs: int = 20
    batch_size: int = 16
    image_size: int = 224
    fusion: str = "feature-map"
    trunks: tuple[str, ...] = TRUNKS
    weights: str = "imagenet"
    device: str = "auto"
    seed: int = 0
    lr: float = 1e-3
    trunk_lr_mult: float | None = None  # None: 1.0 with random weights, 0.1 with pretrained ones
    weight_decay: float = 1e-4
    freeze_epochs: int | None = None  # None: 0 with random weights, 2 with pretrained ones
    schedule: str = "cosine"
    val_fraction: float = 0.2
    monitor: str = "balanced_accuracy"
    patience: int = 5
    balance: str = "weights"
    augment: bool | dict = True  # True: the paper's Augment(); a dict: Augment(**dict) strengths
    amp: str = "auto"
    hidden: int = 256
    dropout: float = 0.5
    refine_channels: tuple[int, int] = (512, 256)
    eval_batch_size: int = 32
    workers: int = 0  # threads decoding images for the cache
    preprocess: dict = field(
        default_factory=dict
    )  # PreprocessConfig fields (image_size from above)

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        self.trunks = tuple(self.trunks)
        if not self.trunks or any(t not in TRUNKS for t in self.trunks):
            raise ConfigError(f"trunks must be a subset of {TRUNKS}, got {self.trunks!r}")
        for name, allowed in (
            ("monitor", MONITORS),
            ("balance", BALANCE),
            ("schedule", SCHEDULES),
            ("amp", AMP_MODES),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "image_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.image_size < 32:  # AlexNet's two max-pools need at least 31 px
            raise ConfigError(
                f"image_size must be >= 32 for the HybridNet trunks, got {self.image_size}"
            )
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2 (batch norm needs two samples)")
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.classes is not None and not isinstance(self.classes, str):
            self.classes = tuple(self.classes)
        self.refine_channels = tuple(int(c) for c in self.refine_channels)
        if self.freeze_epochs is None:
            self.freeze_epochs = 0 if self.weights == "random" else 2
        if self.trunk_lr_mult is None:  # random trunks must learn at full rate
            self.trunk_lr_mult = 1.0 if self.weights == "random" else 0.1
        self.preprocess = dict(self.preprocess)
        if isinstance(self.augment, dict):
            from featmammo.augment import Augment

            self.augment = dict(self.augment)
            Augment.from_dict(self.augment)  # raises ConfigError on a bad strength
        elif not isinstance(self.augment, bool):
            raise ConfigError(f"augment must be true/false or a dict, got {self.augment!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["trunks"] = list(self.trunks)
        d["refine_channels"] = list(self.refine_channels)
        if isinstance(self.classes, tuple):
            d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training options {sorted(unknown)}")
        return cls(**d)


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    classes: tuple[str, ...]
    best_epoch: int
    best_metric: float
    epochs_run: int
    stopped_early: bool
    history: pd.DataFrame
    metrics: dict | None


# ------------------------------------------------------------------------------------------------
# data


def features_name(fusion: str, trunks: Sequence[str]) -> str:
    """The ``features`` label of a HybridNet in predictions.csv / the leaderboard."""
    trunks = tuple(trunks)
    if trunks == TRUNKS:
        return f"hybridnet-{fusion}"
    return f"{'+'.join(trunks)}-end2end"


def _preprocess_config(cfg: TrainConfig):
    from featmammo.preprocess import PreprocessConfig

    fields = dict(cfg.preprocess)
    fields["image_size"] = cfg.image_size
    try:
        return PreprocessConfig.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid preprocess options {cfg.preprocess!r}: {exc}") from exc


def _resolve_classes(cfg: TrainConfig, labels: Sequence[str]) -> tuple[str, ...]:
    from featmammo.labels import parse_classes

    if cfg.classes is not None:
        return tuple(parse_classes(cfg.classes))
    from featmammo.datasets import LABELS

    present = {str(v) for v in labels}
    classes = tuple(c for c in LABELS if c in present)
    extra = sorted(present - set(LABELS))
    classes = classes + tuple(extra)
    if len(classes) < 2:
        raise ConfigError(
            f"the manifest has fewer than two labels ({sorted(present)}); pass --classes"
        )
    log.info("classes not given: using the manifest's labels %s", ",".join(classes))
    return classes


def _split(df: pd.DataFrame, y: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """Per row: ``train``, ``val`` or ``test`` (manifest split=test rows; patient-grouped val)."""
    from featmammo.splits import grouped_holdout

    role = np.full(len(df), "train", dtype=object)
    is_test = df["split"].astype(str).str.lower().eq("test").to_numpy()
    role[is_test] = "test"
    dev = np.flatnonzero(~is_test)
    if len(dev) < 4:
        raise ManifestError(f"only {len(dev)} non-test images: too few to train and validate")
    tr, va = grouped_holdout(
        y[dev], df["patient_id"].astype(str).to_numpy()[dev], cfg.val_fraction, cfg.seed
    )
    role[dev[np.asarray(va)]] = "val"
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


def _decode_one(row: dict, pre) -> np.ndarray:
    from featmammo.preprocess import load_and_preprocess

    lat = row.get("laterality")
    lat = lat if isinstance(lat, str) and lat in ("L", "R") else None
    kwargs = {"laterality": lat}
    mask = row.get("roi_mask_path")
    if isinstance(mask, str) and mask and getattr(pre, "roi", "full") != "full":
        kwargs["roi_mask_path"] = mask
    return np.asarray(load_and_preprocess(row["path"], pre, **kwargs), dtype=np.float32)


def build_image_cache(
    df: pd.DataFrame, pre, cache_dir: Path, *, workers: int = 0
) -> tuple[Path, np.ndarray]:
    """Decode + preprocess every manifest row once into ``cache_dir/images-<key>.npy``.

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
    size = int(pre.image_size)
    tmp = cache_dir / f".images-{key}.tmp.npy"
    arr = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.float32, shape=(len(df), 3, size, size)
    )
    ok = np.zeros(len(df), dtype=bool)
    failures = []
    rows = df.to_dict("records")

    def work(i):
        try:
            return i, _decode_one(rows[i], pre), None
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
    if img.shape != (3, size, size):
        reason = f"preprocess returned shape {img.shape}, expected (3, {size}, {size})"
        log.warning("skipping %s: %s", rows[i]["image_id"], reason)
        failures.append((rows[i]["image_id"], rows[i]["path"], reason))
        return
    arr[i] = img
    ok[i] = True


# ------------------------------------------------------------------------------------------------
# training helpers


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (int(seed) * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**31 - 1)


def _amp_dtype(mode: str, device: torch.device):
    if device.type != "cuda" or mode == "none":
        if mode in ("bf16", "fp16") and device.type != "cuda":
            log.info("AMP %s requested on %s: training in float32", mode, device)
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def _make_optimizer(model: HybridNet, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = [
        {"params": model.head_parameters(), "lr": cfg.lr, "name": "head"},
        {"params": model.trunk_parameters(), "lr": cfg.lr * cfg.trunk_lr_mult, "name": "trunks"},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_scheduler(opt, cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total
        )
    warmup = min(steps_per_epoch, max(1, total // 20))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _class_weights(y_train: np.ndarray, k: int) -> np.ndarray:
    counts = np.bincount(y_train, minlength=k).astype(np.float64)
    return (counts.sum() / (k * np.maximum(counts, 1))).astype(np.float32)


def _epoch_order(
    n: int, y: np.ndarray, cfg: TrainConfig, epoch: int, ctx: DistContext, k: int
) -> np.ndarray:
    """This rank's training indices (positions into the training set) for ``epoch``."""
    g = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch, 0))
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
            seed=_epoch_seed(cfg.seed, 0, 0),
            drop_last=False,
        )
        sampler.set_epoch(epoch)
        return np.fromiter(iter(sampler), dtype=np.int64)
    return torch.randperm(n, generator=g).numpy()


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    out = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:  # batch norm cannot train on one sample
        out.pop()
    return out


def _steps_per_epoch(n: int, cfg: TrainConfig, ctx: DistContext) -> int:
    per_rank = math.ceil(n / ctx.world_size)
    return len(_batches(np.arange(per_rank), cfg.batch_size))


def _to_batch(images: np.ndarray, idx: np.ndarray, device) -> torch.Tensor:
    srt = np.sort(idx)  # memmap reads are faster in order; restore the requested order after
    x = torch.from_numpy(np.ascontiguousarray(images[srt]))
    if not np.array_equal(srt, idx):
        x = x[torch.from_numpy(np.argsort(np.argsort(idx)))]
    return x.to(device, non_blocking=True)


@torch.no_grad()
def predict_arrays(
    model: HybridNet,
    images: np.ndarray,
    idx: np.ndarray,
    *,
    batch_size: int = 32,
    device="cpu",
    amp_dtype=None,
) -> np.ndarray:
    """Softmax probabilities (len(idx), n_classes) in eval mode, without augmentation."""
    model.eval()
    out = []
    dev = torch.device(device)
    for start in range(0, len(idx), batch_size):
        x = _to_batch(images, idx[start : start + batch_size], dev)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    k = len(model.classes)
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.float32)


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    recalls = [np.mean(pred[y == c] == c) for c in range(k) if np.any(y == c)]
    return float(np.mean(recalls)) if recalls else math.nan


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _unwrap(model) -> HybridNet:
    return model.module if hasattr(model, "module") else model


def _wrap_ddp(model: HybridNet, ctx: DistContext):
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


# ------------------------------------------------------------------------------------------------
# outputs


def write_curves(history: pd.DataFrame, path: Path) -> None:
    """The paper's training/validation loss and accuracy curves (two panels, PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ep = history["epoch"]
    ax1.plot(ep, history["train_loss"], "o-", label="training")
    ax1.plot(ep, history["val_loss"], "s-", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax2.plot(ep, history["train_accuracy"], "o-", label="training")
    ax2.plot(ep, history["val_accuracy"], "s-", label="validation")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def _predictions_frame(df, idx, proba, classes, fold, cfg) -> pd.DataFrame:
    y_pred = np.asarray(classes, dtype=object)[proba.argmax(1)] if len(idx) else []
    out = pd.DataFrame(
        {
            "image_id": df["image_id"].astype(str).to_numpy()[idx],
            "patient_id": df["patient_id"].astype(str).to_numpy()[idx],
            "fold": fold,
            "features": features_name(cfg.fusion, cfg.trunks),
            "head": "hybridnet",
            "y_true": df["_y"].to_numpy()[idx],
            "y_pred": y_pred,
        }
    )
    for j, c in enumerate(classes):
        out[f"p_{c}"] = proba[:, j] if len(idx) else []
    return out


# ------------------------------------------------------------------------------------------------
# the run


def train(
    manifest,
    run_dir,
    config: TrainConfig | dict | None = None,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    evaluate: bool = True,
    **overrides,
) -> TrainResult:
    """Train a HybridNet on ``manifest`` (path or DataFrame) into ``run_dir``.

    ``config`` (a :class:`TrainConfig` or dict) and keyword ``overrides`` set the options.
    ``resume``
    continues from ``run_dir/last.pt`` (the config must match, except device/AMP/workers).
    ``stop_after`` ends this invocation after that many epochs in total, as if interrupted (the
    state
    is saved; a later ``resume=True`` carries on). ``evaluate=False`` skips predictions/metrics.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict({**config, **overrides})
    elif config is None:
        config = TrainConfig(**overrides)
    elif overrides:
        config = TrainConfig.from_dict({**config.to_dict(), **overrides})
    cfg = config
    run_dir = Path(run_dir)
    ctx = setup(cfg.device)
    try:
        return _train(
            manifest, run_dir, cfg, ctx, resume=resume, stop_after=stop_after, ev=evaluate
        )
    finally:
        ctx.teardown()


def _check_resume_config(run_dir: Path, cfg: TrainConfig) -> None:
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        raise ConfigError(f"{saved_path}: missing; cannot resume this run")
    saved = json.loads(saved_path.read_text())["train"]
    now = json.loads(canonical_json(cfg.to_dict()))
    diff = sorted(
        k for k in set(saved) | set(now) if k not in _RESUME_FREE and saved.get(k) != now.get(k)
    )
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff)
        raise ConfigError(f"{saved_path}: --resume with different options ({details})")


def _train(manifest, run_dir: Path, cfg: TrainConfig, ctx: DistContext, *, resume, stop_after, ev):
    from featmammo.datasets import manifest_hash, read_manifest
    from featmammo.labels import in_scheme, map_labels

    last_path = run_dir / "last.pt"
    if resume:
        if not last_path.is_file():
            raise ConfigError(f"{last_path}: no checkpoint to resume from")
        _check_resume_config(run_dir, cfg)
    elif last_path.is_file():
        raise ConfigError(
            f"{run_dir}: already holds a training run (last.pt); use --resume or another directory"
        )

    df = read_manifest(manifest).reset_index(drop=True)
    m_hash = manifest_hash(df)
    if resume:
        saved_hash = json.loads((run_dir / "config.json").read_text()).get("manifest_hash")
        if saved_hash != m_hash:
            raise ConfigError(
                f"{run_dir}: --resume with a different manifest (hash {m_hash[:12]}, the run "
                f"was trained on {str(saved_hash)[:12]})"
            )
    classes = _resolve_classes(cfg, df["label"].astype(str))
    keep = np.asarray(in_scheme(df["label"].astype(str).tolist(), classes), dtype=bool)
    if not keep.all():  # e.g. normals under benign-malignant: dropped, never guessed
        log.info("dropping %d image(s) whose label is not in classes %s", (~keep).sum(), classes)
        df = df[keep].reset_index(drop=True)
    df["_y"] = np.asarray(map_labels(df["label"].astype(str).tolist(), classes), dtype=object)
    index = {c: i for i, c in enumerate(classes)}
    y_all = np.array([index[v] for v in df["_y"]], dtype=np.int64)
    role = _split(df, y_all, cfg)
    pre = _preprocess_config(cfg)

    cache_dir = run_dir / "cache"
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        images_path, ok = build_image_cache(df, pre, cache_dir, workers=cfg.workers)
        pd.DataFrame(
            {
                "image_id": df["image_id"],
                "patient_id": df["patient_id"],
                "label": df["_y"],
                "role": role,
                "decoded": ok,
            }
        ).to_csv(run_dir / "split.csv", index=False)
        if not resume:
            _write_json(
                run_dir / "config.json",
                {
                    "train": cfg.to_dict(),
                    "classes": list(classes),
                    "preprocess": pre.to_dict(),
                    "features": features_name(cfg.fusion, cfg.trunks),
                    "head": "hybridnet",
                    "manifest": str(manifest) if not isinstance(manifest, pd.DataFrame) else None,
                    "manifest_hash": m_hash,
                    "world_size": ctx.world_size,
                },
            )
    ctx.barrier()
    images_path = ctx.broadcast_object(str(images_path) if ctx.is_main else None)
    ok = np.load(Path(images_path).with_name(Path(images_path).stem + ".ok.npy"))
    images = np.load(images_path, mmap_mode="r")

    train_idx = np.flatnonzero((role == "train") & ok)
    val_idx = np.flatnonzero((role == "val") & ok)
    test_idx = np.flatnonzero((role == "test") & ok)
    k = len(classes)
    y_train = y_all[train_idx]
    missing = [classes[c] for c in range(k) if not np.any(y_train == c)]
    if missing:
        raise ConfigError(
            f"no training images of class(es) {missing}; check --classes and the data"
        )
    if len(val_idx) == 0:
        raise ConfigError("the validation split is empty; raise val_fraction or add patients")
    log.info(
        "images: %d train, %d val, %d test (%d classes: %s)",
        len(train_idx),
        len(val_idx),
        len(test_idx),
        k,
        ",".join(classes),
    )

    device = ctx.device
    amp_dtype = _amp_dtype(cfg.amp, device)
    model = HybridNet(
        classes,
        fusion=cfg.fusion,
        trunks=cfg.trunks,
        weights=cfg.weights,
        refine_channels=cfg.refine_channels,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
        seed=cfg.seed,
    ).to(device)
    opt = _make_optimizer(model, cfg)
    steps = _steps_per_epoch(len(train_idx), cfg, ctx)
    sched = _make_scheduler(opt, cfg, steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    weight = (
        torch.as_tensor(_class_weights(y_train, k), device=device)
        if cfg.balance == "weights"
        else None
    )
    augmenter = None
    if cfg.augment:
        from featmammo.augment import Augment

        augmenter = Augment.from_dict(cfg.augment) if isinstance(cfg.augment, dict) else Augment()

    start_epoch, best_metric, best_epoch, bad_epochs, history = 0, None, -1, 0, []
    if resume:
        payload, _ = load_checkpoint(last_path, map_location="cpu")
        model.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        sched.load_state_dict(payload["scheduler"])
        if payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        _set_rng_state(payload["rng"])
        start_epoch = int(payload["epoch"]) + 1
        best_metric = payload["best_metric"]
        best_epoch = int(payload["best_epoch"])
        bad_epochs = int(payload["bad_epochs"])
        history = [dict(h) for h in payload["history"]]
        if payload.get("stopped_early"):  # an early-stopped run is finished: do not train on
            log.info("%s stopped early at epoch %d; nothing left to train", run_dir, start_epoch)
            start_epoch = cfg.epochs
        log.info(
            "resuming %s at epoch %d (best %s at %d)", run_dir, start_epoch, best_metric, best_epoch
        )

    sidecar = {
        "model": model.config(),
        "classes": list(classes),
        "preprocess": pre.to_dict(),
        "train": cfg.to_dict(),
        "features": features_name(cfg.fusion, cfg.trunks),
        "trunk_weights": model.trunk_weights,
    }
    wrapped, wrapped_frozen = None, None
    stopped_early = False
    end = cfg.epochs if stop_after is None else min(cfg.epochs, int(stop_after))
    epoch = start_epoch - 1
    for epoch in range(start_epoch, end):
        t0 = time.perf_counter()
        seed = _epoch_seed(cfg.seed, epoch, ctx.rank)
        torch.manual_seed(seed)
        random.seed(seed)
        frozen = epoch < cfg.freeze_epochs
        model.freeze_trunks(frozen)
        if wrapped is None or wrapped_frozen != frozen:  # DDP registers only trainable parameters
            wrapped, wrapped_frozen = _wrap_ddp(model, ctx), frozen
        wrapped.train()
        order = train_idx[_epoch_order(len(train_idx), y_train, cfg, epoch, ctx, k)]
        aug_gen = torch.Generator().manual_seed(seed + 1)
        loss_sum, correct, count = 0.0, 0.0, 0.0
        for batch in _batches(order, cfg.batch_size):
            x = _to_batch(images, batch, device)
            if augmenter is not None:
                x = augmenter(x, generator=aug_gen)
            target = torch.from_numpy(y_all[batch]).to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = wrapped(x)
            loss = F.cross_entropy(logits.float(), target, weight=weight)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += float(loss.detach()) * len(batch)
            correct += float((logits.detach().argmax(1) == target).sum())
            count += len(batch)
        loss_sum, correct, count = ctx.all_reduce_sum([loss_sum, correct, count])

        proba = predict_arrays(
            model,
            images,
            val_idx,
            batch_size=cfg.eval_batch_size,
            device=device,
            amp_dtype=amp_dtype,
        )
        y_val = y_all[val_idx]
        val_loss = float(
            F.nll_loss(torch.log(torch.from_numpy(proba).clamp_min(1e-12)), torch.from_numpy(y_val))
        )
        pred = proba.argmax(1)
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(count, 1),
            "train_accuracy": correct / max(count, 1),
            "val_loss": val_loss,
            "val_accuracy": float(np.mean(pred == y_val)),
            "val_balanced_accuracy": _balanced_accuracy(y_val, pred, k),
            "lr": float(opt.param_groups[0]["lr"]),
            "trunks_frozen": bool(frozen),
            "time": time.perf_counter() - t0,
        }
        history.append(row)
        metric = -row["val_loss"] if cfg.monitor == "loss" else row["val_balanced_accuracy"]
        improved = best_metric is None or metric > best_metric
        if improved:
            best_metric, best_epoch, bad_epochs = float(metric), epoch, 0
        else:
            bad_epochs += 1
        log.info(
            "epoch %d/%d: train loss %.4f acc %.3f | val loss %.4f acc %.3f "
            "bal-acc %.3f%s (%.1f s)",
            epoch + 1,
            cfg.epochs,
            row["train_loss"],
            row["train_accuracy"],
            row["val_loss"],
            row["val_accuracy"],
            row["val_balanced_accuracy"],
            " *" if improved else "",
            row["time"],
        )
        stop = bad_epochs >= cfg.patience
        if ctx.is_main:
            if improved:
                save_checkpoint(
                    run_dir / "checkpoint.pt",
                    {"model": model.state_dict()},
                    {**sidecar, "epoch": epoch + 1, "monitor": cfg.monitor, "best_metric": metric},
                )
            save_checkpoint(
                last_path,
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "rng": _rng_state(),
                    "epoch": epoch,
                    "best_metric": best_metric,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "stopped_early": stop,
                    "history": history,
                },
                {**sidecar, "epoch": epoch + 1, "kind": "training-state"},
            )
            pd.DataFrame(history, columns=HISTORY_COLUMNS).to_csv(
                run_dir / "history.csv", index=False
            )
        ctx.barrier()
        if stop:
            stopped_early = True
            log.info("early stopping: no %s improvement for %d epochs", cfg.monitor, cfg.patience)
            break

    if resume and epoch < start_epoch:  # nothing left to train in this invocation
        stopped_early = bool(payload.get("stopped_early", False))

    history_df = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    if ctx.is_main and len(history_df):
        write_curves(history_df, run_dir / "curves.png")  # once per invocation: figures are slow
    finished = stopped_early or len(history) >= cfg.epochs
    metrics = None
    if ev and finished and ctx.is_main:
        best, _ = load_checkpoint(run_dir / "checkpoint.pt", map_location="cpu")
        model.load_state_dict(best["model"])
        metrics = _final_evaluation(
            run_dir, df, classes, cfg, model, images, val_idx, test_idx, y_train, device, amp_dtype
        )
    ctx.barrier()
    bm = math.nan if best_metric is None else float(best_metric)
    if cfg.monitor == "loss" and best_metric is not None:
        bm = -bm
    return TrainResult(
        run_dir=run_dir,
        checkpoint=run_dir / "checkpoint.pt",
        classes=classes,
        best_epoch=best_epoch + 1,
        best_metric=bm,
        epochs_run=len(history),
        stopped_early=stopped_early,
        history=history_df,
        metrics=metrics,
    )


def _final_evaluation(
    run_dir, df, classes, cfg, model, images, val_idx, test_idx, y_train, device, amp
):
    """Best model -> predictions.csv (val rows as fold 0, test rows as ``test``) -> metrics."""
    parts = []
    for fold, idx in (("0", val_idx), ("test", test_idx)):
        if len(idx):
            proba = predict_arrays(
                model, images, idx, batch_size=cfg.eval_batch_size, device=device, amp_dtype=amp
            )
            parts.append(_predictions_frame(df, idx, proba, classes, fold, cfg))
    preds = pd.concat(parts, ignore_index=True)
    preds.to_csv(run_dir / "predictions.csv", index=False)
    try:
        from featmammo.evaluate import evaluate_predictions
    except ImportError:  # pragma: no cover - evaluate is part of the package
        log.warning("featmammo.evaluate unavailable: predictions.csv written without metrics")
        return None
    train_counts = {c: int(np.sum(y_train == i)) for i, c in enumerate(classes)}
    leaderboard, metrics = evaluate_predictions(preds, classes, train_counts=train_counts)
    metrics["note"] = (
        "evaluation 'cv' of a HybridNet run is its validation split (fold 0), which also chose the "
        "epoch (early stopping): optimistic. 'test' rows are the manifest's held-out split=test."
    )
    leaderboard.to_csv(run_dir / "leaderboard.csv", index=False)
    _write_json(run_dir / "metrics.json", metrics)
    try:
        from featmammo.report import write_report
    except ImportError:
        log.info("featmammo.report not available: skipped the report")
    else:
        try:
            write_report(run_dir)
        except Exception as exc:  # a report failure must not lose the trained model
            log.warning("report for %s failed: %s", run_dir, exc)
    return metrics
