"""``featmammo train``: train the end-to-end HybridNet (ResNet50 + AlexNet fusion) on a manifest."""

from __future__ import annotations

import click

from .options import (
    device_option,
    echo_json,
    json_option,
    no_cache_option,
    seed_option,
    weights_option,
)


@click.command("train")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(), help="Run directory.")
@click.option(
    "--classes", default=None, help="Class scheme or list (default: the manifest's labels)."
)
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--image-size", type=int, default=224, show_default=True)
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
@click.option("--val-fraction", type=float, default=0.2, show_default=True)
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
@no_cache_option
@json_option
def command(
    manifest, run_dir, classes, trunks, resume, no_augment, no_cache, as_json, **options
) -> None:
    """Train HybridNet on MANIFEST into RUN_DIR (checkpoint, history, curves, predictions, metrics).

    Under torchrun the same command trains with DistributedDataParallel.
    """
    from featmammo.nn.train import TrainConfig, train

    cfg = TrainConfig(
        classes=classes,
        trunks=tuple(t.strip() for t in trunks.split(",") if t.strip()),
        augment=not no_augment,
        prepared_cache=not no_cache,
        **options,
    )
    result = train(manifest, run_dir, cfg, resume=resume)
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
    if as_json:
        echo_json(summary)
        return
    for key, value in summary.items():
        click.echo(f"{key}: {value}")
