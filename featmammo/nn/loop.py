"""HybridNet optimisation (featmammo.nn): optimiser, schedule, AMP, RNG state, one training epoch
and one validation pass.

Every epoch reseeds torch/python RNGs from ``(seed, epoch, rank)`` (:func:`featmammo.nn.data.
epoch_seed`) and :func:`rng_state` / :func:`set_rng_state` carry the rest through a resume, so an
interrupted run resumed ends in the same state as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import random
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from featmammo.errors import ConfigError

from .config import TrainConfig
from .data import batches, to_batch
from .ddp import DistContext
from .model import HybridNet

log = logging.getLogger(__name__)


def amp_dtype(mode: str, device: torch.device):
    """The autocast dtype of ``--amp mode`` on ``device`` (None: float32).

    ``auto`` is float32 on the CPU and bf16 (else fp16) on CUDA; an explicit ``bf16``/``fp16`` on
    a CPU is a ConfigError, as ``extract --precision`` refuses it: it would silently not apply.
    """
    if device.type != "cuda" and mode in ("bf16", "fp16"):
        raise ConfigError(
            f"--amp {mode} is only used on CUDA; on {device} training runs in float32 "
            "(use --amp auto or --amp none)"
        )
    if device.type != "cuda" or mode == "none":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def make_optimizer(model: HybridNet, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with two groups: the head at ``lr``, the trunks at ``lr * trunk_lr_mult``."""
    groups = [
        {"params": model.head_parameters(), "lr": cfg.lr, "name": "head"},
        {"params": model.trunk_parameters(), "lr": cfg.lr * cfg.trunk_lr_mult, "name": "trunks"},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt, cfg: TrainConfig, steps_per_epoch: int):
    """One-cycle, or a linear warm-up (one epoch at most) then cosine decay to 1 % of ``lr``."""
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
        x = to_batch(images, idx[start : start + batch_size], dev)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    k = len(model.classes)
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.float32)


def rng_state() -> dict:
    """torch, python (and CUDA) RNG states, for the resumable training state."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def wrap_ddp(model: HybridNet, ctx: DistContext):
    """``model`` in DistributedDataParallel under torchrun, else ``model`` itself."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def train_epoch(
    wrapped,
    images: np.ndarray,
    order: np.ndarray,
    y_all: np.ndarray,
    *,
    cfg: TrainConfig,
    opt,
    sched,
    scaler,
    weight,
    augmenter,
    aug_gen: torch.Generator,
    device: torch.device,
    amp,
    ctx: DistContext,
) -> tuple[float, float]:
    """One pass over ``order`` (this rank's images); returns (mean loss, accuracy) over ranks."""
    loss_sum, correct, count = 0.0, 0.0, 0.0
    for batch in batches(order, cfg.batch_size):
        x = to_batch(images, batch, device)
        if augmenter is not None:
            x = augmenter(x, generator=aug_gen)
        target = torch.from_numpy(y_all[batch]).to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
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
    return loss_sum / max(count, 1), correct / max(count, 1)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """scikit-learn's balanced accuracy: the mean recall over the classes present in ``y_true``.

    A class predicted but absent from ``y_true`` adds no recall (scikit-learn's warning about it is
    expected on small validation sets and silenced here); NaN for an empty ``y_true``.
    """
    from sklearn.metrics import balanced_accuracy_score

    if len(y_true) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y_true, y_pred))


def validate(
    model: HybridNet,
    images: np.ndarray,
    val_idx: np.ndarray,
    y_val: np.ndarray,
    *,
    cfg: TrainConfig,
    device: torch.device,
    amp,
) -> dict:
    """Validation loss, accuracy and balanced accuracy of ``model`` (eval mode, no augmentation)."""
    proba = predict_arrays(
        model, images, val_idx, batch_size=cfg.eval_batch_size, device=device, amp_dtype=amp
    )
    val_loss = float(
        F.nll_loss(torch.log(torch.from_numpy(proba).clamp_min(1e-12)), torch.from_numpy(y_val))
    )
    pred = proba.argmax(1)
    return {
        "val_loss": val_loss,
        "val_accuracy": float(np.mean(pred == y_val)),
        "val_balanced_accuracy": balanced_accuracy(y_val, pred),
    }
