"""The HybridNet training run behind ``featmammo train`` (owned by featmammo.nn).

manifest -> held-out test patients by ``fit``'s rule (``test_split``: the manifest's ``split=test``
rows, patients drawn by ``featmammo.splits.grouped_holdout`` with ``test_size``/``seed``, or none)
-> patient-grouped training/validation split of the rest -> decode + preprocess every image once
into ``RUN_DIR/cache/images-<key>.npy`` -> per epoch: on-the-fly augmentation (training only),
class-weighted loss or balanced sampling, AdamW with a cosine or one-cycle schedule, trunks frozen
for ``freeze_epochs`` then trained at ``lr * trunk_lr_mult``, AMP on the GPU -> validation -> early
stopping on balanced accuracy or loss.

This module holds the run itself and imports torch only when a run starts (``TrainConfig`` and
``train`` are importable without it); its parts live beside it: options in :mod:`.config`, the
split, image cache and sampling in :mod:`.data`, the optimiser and one epoch in :mod:`.loop`,
checkpoints in :mod:`.checkpoint`, curves / predictions / metrics in :mod:`.outputs`, torchrun in
:mod:`.ddp`.

Files in RUN_DIR: ``config.json`` (resolved config), ``split.csv`` (image -> train / validation /
test), ``history.csv`` + ``curves.png``, ``checkpoint.pt/.json`` (best model; a backbone for
``extract``), ``last.pt/.json`` (full training state for ``--resume``; removed with the decoded
images once the run is finished unless ``keep_last``), ``predictions.csv`` (same columns as
``featmammo fit``), ``metrics.json`` and, when featmammo.report is present, its report. Epochs are
numbered from 1 in every log line and file.

Reproducibility: every epoch reseeds torch/python RNGs from ``(seed, epoch, rank)``, and the
resumable state holds model, optimizer, scheduler, grad scaler, RNG states, epoch, best metric and
history, so an interrupted run resumed with ``resume=True`` ends in the same state as an
uninterrupted one. Under ``torchrun`` the same function trains with DistributedDataParallel (rank 0
writes files).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd

from featmammo.datasets.manifest import check_roi_masks
from featmammo.errors import ConfigError

from .checkpoint import IMAGE_IDS_KEY, PATIENT_IDS_KEY, load_checkpoint, save_checkpoint
from .config import (
    HISTORY_COLUMNS,
    TrainConfig,
    TrainResult,
    check_resume_config,
    features_name,
    preprocess_config,
    resolve_classes,
)

log = logging.getLogger(__name__)

#: how last.pt numbers its ``epoch`` and ``best_epoch`` (files written before said nothing: 0-based)
EPOCH_NUMBERING = "1-based"

__all__ = ["TrainConfig", "TrainResult", "features_name", "train"]


def train(
    manifest,
    run_dir,
    config: TrainConfig | dict | None = None,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    evaluate: bool = True,
    on_epoch=None,
    **overrides,
) -> TrainResult:
    """Train a HybridNet on ``manifest`` (path or DataFrame) into ``run_dir``.

    ``config`` (a :class:`TrainConfig` or dict) and keyword ``overrides`` set the options.
    ``resume`` continues from ``run_dir/last.pt`` (the config must match, except
    device/AMP/workers). ``stop_after`` ends this invocation after that many epochs in total, as if
    interrupted (the state is saved; a later ``resume=True`` carries on). ``evaluate=False`` skips
    predictions/metrics. ``on_epoch(row)`` is called on the main process after each epoch with
    the history row (``epoch`` 1-based, losses, metrics) plus ``epochs``, ``improved``,
    ``best_epoch``, ``stopping`` (the CLI's progress lines).

    Epochs are numbered from 1 everywhere (logs, ``history.csv``, sidecars, ``last.pt``'s
    ``epoch`` = the last finished epoch, ``best_epoch``).
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict({**config, **overrides})
    elif config is None:
        config = TrainConfig(**overrides)
    elif overrides:
        config = TrainConfig.from_dict({**config.to_dict(), **overrides})
    from .ddp import setup  # torch from here on

    cfg = config
    run_dir = Path(run_dir)
    ctx = setup(cfg.device)
    try:
        return _train(
            manifest, run_dir, cfg, ctx, resume=resume, stop_after=stop_after, ev=evaluate,
            on_epoch=on_epoch,
        )  # fmt: skip
    finally:
        ctx.teardown()


def _read_data(manifest, run_dir: Path, cfg: TrainConfig, *, resume: bool):
    """The manifest (rows of ``classes`` only, ``_y`` = class name), its hash, classes, labels."""
    from featmammo.datasets import manifest_hash, read_manifest
    from featmammo.labels import in_scheme, map_labels

    df = read_manifest(manifest).reset_index(drop=True)
    m_hash = manifest_hash(df)
    if resume:
        saved_hash = json.loads((run_dir / "config.json").read_text()).get("manifest_hash")
        if saved_hash != m_hash:
            raise ConfigError(
                f"{run_dir}: --resume with a different manifest (hash {m_hash[:12]}, the run "
                f"was trained on {str(saved_hash)[:12]})"
            )
    classes = resolve_classes(cfg, df["label"].astype(str))
    keep = np.asarray(in_scheme(df["label"].astype(str).tolist(), classes), dtype=bool)
    if not keep.all():  # e.g. normals under benign-malignant: dropped, never guessed
        log.info("dropping %d image(s) whose label is not in classes %s", (~keep).sum(), classes)
        df = df[keep].reset_index(drop=True)
    df["_y"] = np.asarray(map_labels(df["label"].astype(str).tolist(), classes), dtype=object)
    index = {c: i for i, c in enumerate(classes)}
    y_all = np.array([index[v] for v in df["_y"]], dtype=np.int64)
    return df, m_hash, classes, y_all


def _train(manifest, run_dir: Path, cfg: TrainConfig, ctx, *, resume, stop_after, ev, on_epoch):
    import torch

    from .data import (
        build_image_cache,
        class_weights,
        epoch_order,
        epoch_seed,
        split_roles,
        steps_per_epoch,
    )
    from .loop import (
        amp_dtype,
        make_optimizer,
        make_scheduler,
        rng_state,
        set_rng_state,
        train_epoch,
        validate,
        wrap_ddp,
    )
    from .model import HybridNet
    from .outputs import (
        class_counts,
        final_evaluation,
        no_test_warning,
        run_audit,
        run_caveats,
        run_config,
        write_curves,
        write_json,
    )

    last_path = run_dir / "last.pt"
    if resume:
        if not last_path.is_file():
            done = (run_dir / "checkpoint.pt").is_file() and (run_dir / "history.csv").is_file()
            raise ConfigError(
                f"{last_path}: no checkpoint to resume from"
                + (
                    " (the run in this folder finished and kept no training state: --no-keep-last)"
                    if done
                    else ""
                )
            )
        check_resume_config(run_dir, cfg)
    elif last_path.is_file() or (run_dir / "checkpoint.pt").is_file():
        raise ConfigError(
            f"{run_dir}: already holds a training run (last.pt or checkpoint.pt); use --resume "
            "or another directory"
        )

    amp = amp_dtype(cfg.amp, ctx.device)  # --amp bf16/fp16 on a CPU is refused before any work
    df, m_hash, classes, y_all = _read_data(manifest, run_dir, cfg, resume=resume)
    role = split_roles(df, cfg)
    pre = preprocess_config(cfg)
    check_roi_masks(
        df, pre, where=str(manifest) if isinstance(manifest, (str, Path)) else "manifest"
    )

    cache_dir = run_dir / "cache"
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        images_path, ok = build_image_cache(
            df,
            pre,
            cache_dir,
            workers=cfg.workers,
            prepared_cache=None if cfg.prepared_cache else False,
        )
        pd.DataFrame(
            {
                "image_id": df["image_id"],
                "patient_id": df["patient_id"],
                "label": df["_y"],
                "role": role,
                "decoded": ok,
            }
        ).to_csv(run_dir / "split.csv", index=False)
    ctx.barrier()
    images_path = ctx.broadcast_object(str(images_path) if ctx.is_main else None)
    ok = np.load(Path(images_path).with_name(Path(images_path).stem + ".ok.npy"))
    images = np.load(images_path, mmap_mode="r")

    train_idx = np.flatnonzero((role == "train") & ok)
    val_idx = np.flatnonzero((role == "validation") & ok)
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
        "images: %d train, %d validation, %d test (--test-split %s; %d classes: %s)",
        len(train_idx),
        len(val_idx),
        len(test_idx),
        cfg.test_split,
        k,
        ",".join(classes),
    )
    if len(test_idx) == 0 and ctx.is_main:
        log.warning("%s: %s", run_dir, no_test_warning(cfg.test_split))

    device = ctx.device
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
    split_audit = run_audit(df, ok, role)
    caveats = run_caveats(df, ok, role, model.trunk_weights, split_audit, test_split=cfg.test_split)
    if ctx.is_main and not resume:
        write_json(
            run_dir / "config.json",
            run_config(
                cfg,
                classes=classes,
                pre=pre,
                manifest=manifest,
                m_hash=m_hash,
                world_size=ctx.world_size,
                train_counts=class_counts(y_train, classes),
                caveats=caveats,
                split_audit=split_audit,
            ),
        )
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch(len(train_idx), cfg, ctx))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    weight = (
        torch.as_tensor(class_weights(y_train, k), device=device)
        if cfg.balance == "weights"
        else None
    )
    augmenter = None
    if cfg.augment:
        from featmammo.augment import Augment

        augmenter = Augment.from_dict(cfg.augment) if isinstance(cfg.augment, dict) else Augment()

    # start_epoch: epochs finished (the next epoch's 0-based index); best_epoch: 1-based, 0 = none
    start_epoch, best_metric, best_epoch, bad_epochs, history = 0, None, 0, 0, []
    payload = {}
    if resume:
        payload, _ = load_checkpoint(last_path, map_location="cpu")
        model.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        sched.load_state_dict(payload["scheduler"])
        if payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        set_rng_state(payload["rng"])
        # last.pt files written before epochs were numbered from 1 held 0-based numbers
        shift = 0 if payload.get("epoch_numbering") == EPOCH_NUMBERING else 1
        start_epoch = int(payload["epoch"]) + shift
        best_metric = payload["best_metric"]
        best_epoch = int(payload["best_epoch"]) + shift
        bad_epochs = int(payload["bad_epochs"])
        history = [dict(h) for h in payload["history"]]
        if payload.get("stopped_early"):  # an early-stopped run is finished: do not train on
            log.info("%s stopped early after epoch %d; nothing left to train", run_dir, start_epoch)
            start_epoch = cfg.epochs
        log.info(
            "resuming %s after epoch %d of %d (best: epoch %d, %s %s)",
            run_dir,
            start_epoch,
            cfg.epochs,
            best_epoch,
            cfg.monitor,
            best_metric,
        )

    ids = df["image_id"].astype(str).to_numpy()
    patients = df["patient_id"].astype(str).to_numpy()
    sidecar = {
        "model": model.config(),
        "classes": list(classes),
        "preprocess": pre.to_dict(),
        "preprocess_fingerprint": pre.fingerprint(),  # predict refuses another recipe's pixels
        "train": cfg.to_dict(),
        "features": features_name(cfg.fusion, cfg.trunks),
        "trunk_weights": model.trunk_weights,
        IMAGE_IDS_KEY: {  # what fit must not evaluate these embeddings on (trained_image_ids)
            "train": ids[train_idx].tolist(),
            "validation": ids[val_idx].tolist(),
        },
        PATIENT_IDS_KEY: {  # ... nor on these patients (trained_patient_ids)
            "train": sorted(set(patients[train_idx].tolist())),
            "validation": sorted(set(patients[val_idx].tolist())),
        },
        "test_split": cfg.test_split,
        "caveats": caveats,  # what every Grad-CAM figure of this checkpoint must say
    }
    wrapped, wrapped_frozen = None, None
    stopped_early = False
    end = cfg.epochs if stop_after is None else min(cfg.epochs, int(stop_after))
    epoch = start_epoch - 1
    for epoch in range(start_epoch, end):
        t0 = time.perf_counter()
        seed = epoch_seed(cfg.seed, epoch, ctx.rank)
        torch.manual_seed(seed)
        random.seed(seed)
        frozen = epoch < cfg.freeze_epochs
        model.freeze_trunks(frozen)
        if wrapped is None or wrapped_frozen != frozen:  # DDP registers only trainable parameters
            wrapped, wrapped_frozen = wrap_ddp(model, ctx), frozen
        wrapped.train()
        order = train_idx[epoch_order(len(train_idx), y_train, cfg, epoch, ctx, k)]
        train_loss, train_acc = train_epoch(
            wrapped,
            images,
            order,
            y_all,
            cfg=cfg,
            opt=opt,
            sched=sched,
            scaler=scaler,
            weight=weight,
            augmenter=augmenter,
            aug_gen=torch.Generator().manual_seed(seed + 1),
            device=device,
            amp=amp,
            ctx=ctx,
        )
        val = validate(model, images, val_idx, y_all[val_idx], cfg=cfg, device=device, amp=amp)
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            **val,
            "lr": float(opt.param_groups[0]["lr"]),
            "trunks_frozen": bool(frozen),
            "time": time.perf_counter() - t0,
        }
        history.append(row)
        metric = -row["val_loss"] if cfg.monitor == "loss" else row["val_balanced_accuracy"]
        improved = best_metric is None or metric > best_metric
        if improved:
            best_metric, best_epoch, bad_epochs = float(metric), epoch + 1, 0
        else:
            bad_epochs += 1
        log.info(
            "epoch %d/%d: train loss %.4f acc %.3f | validation loss %.4f acc %.3f "
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
        if ctx.is_main and on_epoch is not None:
            on_epoch(
                {
                    **row,
                    "epochs": cfg.epochs,
                    "improved": bool(improved),
                    "best_epoch": best_epoch,
                    "stopping": bool(stop),
                    "monitor": cfg.monitor,
                }
            )
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
                    "rng": rng_state(),
                    "epoch": epoch + 1,  # the last finished epoch, numbered from 1
                    "epoch_numbering": EPOCH_NUMBERING,
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
            log.info(
                "early stopping after epoch %d: no %s improvement for %d epochs (best: epoch %d)",
                epoch + 1,
                cfg.monitor,
                cfg.patience,
                best_epoch,
            )
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
        metrics = final_evaluation(
            run_dir, df, classes, cfg, model, images, val_idx, test_idx, y_train, device, amp
        )
    if finished and ctx.is_main and not cfg.keep_last:
        _drop_training_state(run_dir, last_path, Path(images_path))
    ctx.barrier()
    bm = math.nan if best_metric is None else float(best_metric)
    if cfg.monitor == "loss" and best_metric is not None:
        bm = -bm
    return TrainResult(
        run_dir=run_dir,
        checkpoint=run_dir / "checkpoint.pt",
        classes=classes,
        best_epoch=best_epoch,
        best_metric=bm,
        epochs_run=len(history),
        stopped_early=stopped_early,
        history=history_df,
        metrics=metrics,
    )


def _drop_training_state(run_dir: Path, last_path: Path, images_path: Path) -> None:
    """A finished run without ``keep_last``: remove ``last.pt`` (+ sidecar; model, optimizer
    moments and RNG states, ~3x the model) and the decoded images in ``cache/`` (only a resume
    reads them, and a finished run has nothing left to resume). ``checkpoint.pt`` (the best model),
    the history, predictions and ``cache/failures-*.csv`` stay."""
    freed = 0
    for path in (
        last_path,
        last_path.with_suffix(".json"),
        images_path,
        images_path.with_name(images_path.stem + ".ok.npy"),
    ):
        if path.is_file():
            freed += path.stat().st_size
            path.unlink()
    log.info(
        "%s: finished; removed the training state (last.pt) and decoded images: %.1f MB freed "
        "(--keep-last keeps them)",
        run_dir,
        freed / 1e6,
    )
