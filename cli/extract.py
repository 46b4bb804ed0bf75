"""``featmammo extract MANIFEST -o STORE.h5``: embed every image with every backbone (a store)."""

from __future__ import annotations

import sys

import click

from .options import device_option, echo_json, json_option, output_option, weights_option


@click.command("extract")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@output_option
@click.option(
    "-b",
    "--backbone",
    "backbones",
    multiple=True,
    default=("resnet50", "alexnet"),
    show_default=True,
    help="Backbone (repeatable): resnet50, alexnet, vgg16, any torchvision classifier, "
    "or hybrid:RUN_DIR/checkpoint.pt. All run on the same decoded batch.",
)
@weights_option
@click.option("--image-size", default=224, show_default=True, type=int, help="Side of the input.")
@click.option(
    "--resize",
    type=click.Choice(["area", "bilinear", "bicubic", "nearest"]),
    default="area",
    show_default=True,
)
@click.option(
    "--normalize",
    type=click.Choice(["backbone", "zscore", "mean", "decimal", "none"]),
    default="backbone",
    show_default=True,
)
@click.option(
    "--windowing",
    type=click.Choice(["none", "voi", "window", "percentile"]),
    default="none",
    show_default=True,
    help="DICOM pixel policy passed to the reader.",
)
@click.option("--crop", type=click.Choice(["breast", "none"]), default="breast", show_default=True)
@click.option(
    "--roi",
    type=click.Choice(["full", "crop", "patch"]),
    default="full",
    show_default=True,
    help="crop/patch need a roi_mask_path column in the manifest.",
)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--workers",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="DataLoader worker processes for reading/preprocessing (0: the main process, with a "
    "background thread reading the next batch during the forward passes).",
)
@device_option
@click.option(
    "--max-failures",
    type=click.IntRange(min=0),
    default=None,
    help="Stop and exit non-zero once more than N images failed (default: never; failures are "
    "recorded and listed).",
)
@click.option(
    "--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True
)
@click.option(
    "--hash-ids",
    "hash_ids",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Key file: store image/patient ids as keyed hashes (HMAC-SHA256) and no paths.",
)
@click.option(
    "--backbone-suffix",
    default="",
    help="Store this run's embeddings as <backbone><suffix> (e.g. another preprocessing of a "
    "backbone the store already holds).",
)
@click.option(
    "--compression",
    type=click.Choice(["gzip", "lzf", "none"]),
    default="gzip",
    show_default=True,
)
@json_option
def command(
    manifest, output, backbones, weights, image_size, resize, normalize, windowing, crop, roi,
    batch_size, workers, device, max_failures, dtype, hash_ids, backbone_suffix, compression,
    as_json,
) -> None:  # fmt: skip
    """Embed every image of MANIFEST with every backbone into the HDF5 store -o STORE.h5.

    Rerunning the same command resumes (finished images are skipped); a store made with other
    weights or preprocessing is refused. Under `torchrun --nproc-per-node N` the images are split
    across processes into one store.
    """
    import os

    from featmammo.extract import extract
    from featmammo.preprocess import PreprocessConfig

    config = PreprocessConfig(
        image_size=image_size, resize=resize, normalize=normalize, crop=crop, roi=roi,
        windowing=windowing,
    )  # fmt: skip
    rank = int(os.environ.get("RANK", "0"))
    show_bar = rank == 0 and not as_json and sys.stderr.isatty()
    bar = None
    if show_bar:
        bar = click.progressbar(
            length=1, label="extract", file=sys.stderr, show_pos=True,
            item_show_func=lambda rate: f"{rate:.2f} images/s" if rate else None,
        )  # fmt: skip
    progress = _progress(bar) if bar is not None else None
    try:
        summary = extract(
            manifest, output, backbones=backbones, weights=weights, preprocess=config,
            batch_size=batch_size, workers=workers, device=device, max_failures=max_failures,
            dtype=dtype, hash_ids=hash_ids, backbone_suffix=backbone_suffix,
            compression=compression, progress=progress,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.render_finish()
    if rank != 0:
        return
    if as_json:
        echo_json(summary.to_dict())
    else:
        click.echo(
            f"{output}: {summary.n_done} done, {summary.n_skipped} skipped, "
            f"{summary.n_failed} failed of {summary.n_images} images "
            f"({summary.images_per_s:.2f} images/s on {summary.device}, {summary.precision})"
        )
        grouped: dict = {}  # one line per image and reason, naming the backbones
        for rec in summary.failures:
            key = (rec["path"] or rec["image_id"], rec["reason"])
            grouped.setdefault(key, []).append(rec["backbone"])
        for (where, reason), names in grouped.items():
            click.echo(f"  failed ({', '.join(names)}): {where}: {reason}", err=True)
        if summary.stopped_early:
            click.echo(f"stopped early: more than {max_failures} failures", err=True)
    if summary.exceeded_max_failures:
        click.get_current_context().exit(1)


def _progress(bar):
    """A progress callback that sizes the bar on first use (the total is known inside extract)."""
    import time

    state = {"started": False, "t0": time.monotonic(), "n": 0}

    def update(n: int, total: int) -> None:
        if not state["started"]:
            bar.length = max(1, total)
            state["started"] = True
        state["n"] += n
        rate = state["n"] / max(time.monotonic() - state["t0"], 1e-9)
        bar.update(n, current_item=rate)

    return update
