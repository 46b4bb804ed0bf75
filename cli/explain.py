"""``featmammo explain``: Grad-CAM heatmaps of a trained HybridNet for image files."""

from __future__ import annotations

import click

from .options import device_option, echo_json, json_option, progress, stage


@click.command("explain")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(), help="Output folder.")
@click.option("--target", default=None, help="Class to explain (default: the predicted class).")
@click.option(
    "--laterality",
    type=click.Choice(["L", "R"]),
    default=None,
    help="Breast side for all images (default: DICOM header or inferred).",
)
@device_option
@json_option
def command(checkpoint, images, out_dir, target, laterality, device, as_json) -> None:
    """Grad-CAM of CHECKPOINT for each IMAGE: PNG overlays per trunk and fused map, plus JSON.

    Every figure carries the run's caveats (weights, sources, warnings) in a footer; a map that is
    zero everywhere is drawn grey and marked "no gradient signal", never normalised into colour.
    """
    from featmammo.nn.gradcam import explain

    with progress("explain", unit="images") as update:
        records = explain(
            checkpoint, images, out_dir, device=device, target=target, laterality=laterality,
            progress=update,
        )  # fmt: skip
    empty = sum(1 for r in records if r["empty_heatmaps"])
    stage(
        f"explain: {len(records)} image(s) -> {out_dir}"
        + (f"; {empty} with a map marked 'no gradient signal'" if empty else "")
    )
    if as_json:
        echo_json(records)
        return
    for r in records:
        probs = ", ".join(f"{c}={p:.3f}" for c, p in r["probabilities"].items())
        click.echo(f"{r['image']}: {r['predicted']} ({probs}) -> {out_dir}/{r['panel']}")
