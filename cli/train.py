"""``featmammo train``: train the end-to-end HybridNet (ResNet50 + AlexNet fusion) on a manifest."""

from __future__ import annotations

import click

from .options import (
    device_option,
    echo_json,
    json_option,
    no_cache_option,
    seed_option,
    stage,
    weights_option,
)
from .preprocess_options import image_size_option, windowing_option


@click.command("train")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(), help="Run directory.")
@click.option(
    "--classes", default=None, help="Class scheme or list (default: the manifest's labels)."
)
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@image_size_option(default=224, min_side=32)
@windowing_option()
@click.option(
    "--fusion", type=click.Choice(["feature-map", "late"]), default="feature-map", show_default=True
)
@click.option(
    "--trunks",
    default="resnet50,alexnet",
    show_default=True,
    help="Trunks to run: resnet50,alexnet (the hybrid) or one of them alone.",
)
@weights_option
@device_option
@seed_option
@click.option("--resume", is_flag=True, help="Continue an interrupted run from RUN_DIR/last.pt.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Head learning rate.")
@click.option(
    "--trunk-lr-mult",
    type=float,
    default=None,
    help="Trunk lr = lr x this (default: 1.0 with random weights, 0.1 with pretrained).",
)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option(
    "--freeze-epochs",
    type=int,
    default=None,
    help="Epochs with frozen trunks (default: 0 with random weights, 2 with pretrained).",
)
@click.option(
    "--schedule", type=click.Choice(["cosine", "onecycle"]), default="cosine", show_default=True
)
@click.option(
    "--test-split",
    type=click.Choice(["official", "grouped", "none"]),
    default="official",
    show_default=True,
    help="Held-out test images, by featmammo fit's rule: official = the manifest's split=test rows "
    "(refused when there are none, e.g. MIAS); grouped = whole patients drawn at random, "
    "stratified by class (--test-size, --seed: the same patients `featmammo fit --test-split "
    "grouped` holds out from the same manifest); none = no test rows, so no honest estimate.",
)
@click.option(
    "--test-size",
    type=float,
    default=0.2,
    show_default=True,
    help="Share of patients held out by --test-split grouped.",
)
@click.option(
    "--val-fraction",
    type=float,
    default=0.2,
    show_default=True,
    help="Share of the remaining (non-test) patients in the validation split, which picks the "
    "epoch (early stopping and the saved checkpoint).",
)
@click.option(
    "--monitor",
    type=click.Choice(["balanced_accuracy", "loss"]),
    default="balanced_accuracy",
    show_default=True,
    help="Validation metric for early stopping and the best checkpoint.",
)
@click.option("--patience", type=int, default=5, show_default=True)
@click.option(
    "--balance",
    type=click.Choice(["weights", "sampler", "none"]),
    default="weights",
    show_default=True,
    help="Class-weighted loss, balanced sampling, or neither.",
)
@click.option(
    "--amp", type=click.Choice(["auto", "bf16", "fp16", "none"]), default="auto", show_default=True
)
@click.option("--no-augment", is_flag=True, help="Train without on-the-fly augmentation.")
@click.option("--workers", type=int, default=0, show_default=True, help="Image decoding threads.")
@click.option(
    "--keep-last/--no-keep-last",
    default=False,
    show_default=True,
    help="Keep last.pt (the full training state: weights, optimizer moments, RNG states, ~3x "
    "the model) and the decoded images in RUN_DIR/cache once the run is finished. An "
    "interrupted run always keeps them for --resume.",
)
@no_cache_option
@json_option
def command(
    manifest, run_dir, classes, trunks, resume, no_augment, no_cache, windowing, as_json, **options
) -> None:
    """Train HybridNet on MANIFEST into RUN_DIR (checkpoint, history, curves, predictions, metrics).

    The test images are held out by --test-split (fit's rule and --seed); the validation split
    (whole patients from the rest) picks the epoch. Epochs are numbered from 1 in every log line
    and file. Under torchrun the same command trains with DistributedDataParallel.
    """
    from featmammo.nn.outputs import no_test_warning
    from featmammo.nn.train import TrainConfig, features_name, train

    cfg = TrainConfig(
        classes=classes,
        trunks=tuple(t.strip() for t in trunks.split(",") if t.strip()),
        augment=not no_augment,
        prepared_cache=not no_cache,
        preprocess={"windowing": windowing},
        **options,
    )
    size = cfg.image_size if isinstance(cfg.image_size, int) else "x".join(map(str, cfg.image_size))
    stage(
        f"train: {features_name(cfg.fusion, cfg.trunks)} ({cfg.weights} weights), up to "
        f"{cfg.epochs} epoch(s) at {size} px on {cfg.device}, --test-split {cfg.test_split} "
        f"-> {run_dir}"
    )

    def on_epoch(row: dict) -> None:
        metric = row["val_loss"] if row["monitor"] == "loss" else row["val_balanced_accuracy"]
        what = "loss" if row["monitor"] == "loss" else "balanced accuracy"
        best = "best so far" if row["improved"] else f"best: epoch {row['best_epoch']}"
        stop = "; early stop" if row["stopping"] else ""
        stage(
            f"epoch {row['epoch']}/{row['epochs']}: train loss {row['train_loss']:.4f}, "
            f"validation {what} {metric:.3f} ({best}{stop}) [{row['time']:.0f} s]"
        )

    result = train(manifest, run_dir, cfg, resume=resume, on_epoch=on_epoch)
    summary = {
        "run_dir": str(result.run_dir),
        "checkpoint": str(result.checkpoint),
        "classes": list(result.classes),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        f"best_val_{cfg.monitor}": result.best_metric,
        "stopped_early": result.stopped_early,
    }
    if result.metrics:
        for r in result.metrics.get("results", []):
            m = r.get("metrics", {})
            summary[f"{r['evaluation']}_balanced_accuracy"] = m.get("balanced_accuracy")
            summary[f"{r['evaluation']}_accuracy"] = m.get("accuracy")
    tested = bool(result.metrics) and any(
        r.get("evaluation") == "test" for r in result.metrics.get("results", [])
    )
    if result.metrics is not None and not tested:
        summary["warning"] = no_test_warning(cfg.test_split)
    stage(
        f"train: best epoch {result.best_epoch} of {result.epochs_run} run -> "
        f"{result.checkpoint}"
        + ("" if tested or result.metrics is None else "; NO test images: no honest estimate")
    )
    if as_json:
        echo_json(summary)
        return
    for key, value in summary.items():
        click.echo(f"{key}: {value}")
