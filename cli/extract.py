"""``featmammo extract MANIFEST -o STORE.h5``: embed every image with every backbone (a store)."""

from __future__ import annotations

import click

from .options import (
    bar_enabled,
    decoder_option,
    device_option,
    echo_json,
    json_option,
    no_cache_option,
    output_option,
    progress,
    stage,
    weights_option,
    workers_option,
)
from .preprocess_options import image_size_option, windowing_option


@click.command("extract")
@click.argument("manifest", type=click.Path(exists=True))
@output_option
@click.option(
    "-b",
    "--backbone",
    "backbones",
    multiple=True,
    default=("resnet50", "alexnet"),
    show_default=True,
    help="Backbone (repeatable): resnet50, alexnet, vgg16, any torchvision classifier, "
    "timm:NAME (any timm model, pre-logits; pip install 'featmammo[timm]'), "
    "mammoclip:CHECKPOINT (the Mammo-CLIP image encoder of a released .tar) or "
    "hybrid:RUN_DIR/checkpoint.pt. All run on the same decoded batch.",
)
@weights_option
@click.option(
    "--pool",
    type=click.Choice(["avg", "gem"]),
    default="avg",
    show_default=True,
    help="Global pooling of the last feature map (torchvision CNNs, timm:, mammoclip:): avg, or "
    "gem (generalised mean, p=3, as Mammo-CLIP and the RSNA 2023 winners). Recorded in each "
    "backbone's spec (part of its identity); refused where the embedding is not a pooled "
    "feature map (alexnet/vgg16 fc7, ViTs, hybrid:).",
)
@image_size_option(default=None, help_suffix=" [default: 224, or the hybrid: checkpoint's]")
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
@windowing_option()
@click.option("--crop", type=click.Choice(["breast", "none"]), default="breast", show_default=True)
@click.option(
    "--ddsm-calibration",
    "ddsm_calibration",
    type=click.Choice(["none", "od"]),
    default="none",
    show_default=True,
    help="od: DDSM .LJPEG grey levels -> optical density per digitiser (.ics), clipped to "
    "[0.05, 3], as 1 - OD/4; an image without a digitiser fails. Part of the preprocessing "
    "fingerprint.",
)
@click.option(
    "--roi",
    type=click.Choice(["full", "crop", "patch"]),
    default=None,
    help="full (the default, or the hybrid: checkpoint's) | crop | patch; crop/patch need a "
    "roi_mask_path column in the manifest (refused before any work without one); full never "
    "reads the masks.",
)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@workers_option
@no_cache_option
@decoder_option
@device_option
@click.option(
    "--precision",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="Arithmetic of the forward passes: auto = float32 on the CPU, bfloat16 autocast on a GPU "
    "that supports it (else float16). Part of each backbone's identity in the store: resume a "
    "store made on a CPU on a GPU with --precision float32 (or store the GPU run apart with "
    "--backbone-suffix).",
)
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
    manifest, output, backbones, weights, pool, image_size, resize, normalize, windowing, crop,
    ddsm_calibration, roi, batch_size, workers, no_cache, decoder, device, precision, max_failures,
    dtype, hash_ids, backbone_suffix, compression, as_json,
) -> None:  # fmt: skip
    """Embed every image of MANIFEST with every backbone into the HDF5 store -o STORE.h5.

    Rerunning the same command resumes (finished images are skipped; an image whose file content
    changed since it was embedded is embedded again); a backbone already stored with other
    weights, preprocessing, precision or DICOM decoder plugin is refused (or stored apart with
    --backbone-suffix). Under `torchrun --nproc-per-node N` rank 0 decides the work and every
    process takes its share into one store; a failing process stops them all with its error.
    Exits non-zero when every image failed.
    """
    from featmammo.devices import torchrun_env
    from featmammo.extract import AllImagesFailed, extract, hybrid_preprocess
    from featmammo.preprocess import PreprocessConfig

    _refuse_folder(manifest)

    # a hybrid: checkpoint imposes the image size and ROI mode it was trained on (unless given,
    # then extract refuses a contradiction)
    imposed = hybrid_preprocess(backbones)
    config = PreprocessConfig(
        image_size=image_size or imposed.get("image_size", 224), resize=resize,
        normalize=normalize, crop=crop, roi=roi or imposed.get("roi", "full"),
        patch_context=imposed.get("patch_context", PreprocessConfig.patch_context),
        windowing=windowing, ddsm_calibration=ddsm_calibration,
    )  # fmt: skip
    rank = torchrun_env().rank
    talk = rank == 0 and not as_json
    if talk:
        stage(f"extract: {manifest} x {', '.join(backbones)} -> {output}")
    all_failed = None
    try:
        with progress("extract", unit="images", show=talk and bar_enabled()) as update:
            summary = extract(
                manifest, output, backbones=backbones, weights=weights, preprocess=config,
                batch_size=batch_size, workers=workers, device=device, precision=precision,
                max_failures=max_failures, dtype=dtype, hash_ids=hash_ids,
                backbone_suffix=backbone_suffix, compression=compression, progress=update,
                cache=False if no_cache else None, decoder=decoder, pool=pool,
                stage=stage if talk else None,
            )  # fmt: skip
    except AllImagesFailed as exc:
        summary, all_failed = exc.summary, exc
    if rank != 0:
        if all_failed is not None:
            raise all_failed
        return
    if as_json:
        echo_json(summary.to_dict())
    else:
        click.echo(f"{output}: {describe(summary)}")
        grouped: dict = {}  # one line per image and reason, naming the backbones
        for rec in summary.failures:
            key = (rec["path"] or rec["image_id"], rec["reason"])
            grouped.setdefault(key, []).append(rec["backbone"])
        for (where, reason), names in grouped.items():
            click.echo(f"  failed ({', '.join(names)}): {where}: {reason}", err=True)
        if summary.stopped_early:
            click.echo(f"stopped early: more than {max_failures} failures", err=True)
    if all_failed is not None:
        click.echo(f"Error: {all_failed}", err=True)
        click.get_current_context().exit(1)
    if summary.exceeded_max_failures:
        click.get_current_context().exit(1)


def describe(summary) -> str:
    """One line for an ``ExtractSummary``: counts of images, failures both ways (images, and
    image x backbone pairs as ``featmammo info`` counts them), images embedded again because their
    files changed, and the speed."""
    s = summary
    return (
        f"{s.n_images} images: {s.n_done} done, {s.n_skipped} skipped, "
        f"{_count(s.n_failed, 'image')} failed ({_count(s.n_failures, 'image x backbone pair')}); "
        f"{s.n_reembedded} re-embedded because their files changed; "
        f"{s.images_per_s:.2f} images/s on {s.device}, {s.precision}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _refuse_folder(manifest: str) -> None:
    """A folder is not a manifest: say which command makes one from it."""
    import os

    if not os.path.isdir(manifest):
        return
    from .manifest import command as manifest_group

    kinds = "|".join(c for c in manifest_group.list_commands(None) if c != "merge")
    inside = os.path.join(manifest, "manifest.csv")
    hint = f" ({inside} exists: pass that)" if os.path.isfile(inside) else ""
    raise click.BadParameter(
        f"{manifest!r} is a folder; extract reads a manifest CSV{hint}. Make one with "
        f"`featmammo manifest {kinds} ROOT -o manifest.csv` (`featmammo manifest folder ROOT -o "
        "manifest.csv` for a class-per-folder tree; `featmammo manifest --help` says which fits "
        "your data).",
        param_hint="MANIFEST",
    )
