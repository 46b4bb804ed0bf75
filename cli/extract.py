"""``featmammo extract MANIFEST -o STORE.h5``: embed every image with every backbone (a store)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time

import click

from .options import (
    decoder_option,
    device_option,
    echo_json,
    json_option,
    no_cache_option,
    output_option,
    weights_option,
    workers_option,
)


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
    "or hybrid:RUN_DIR/checkpoint.pt. All run on the same decoded batch.",
)
@weights_option
@click.option(
    "--image-size",
    default=None,
    type=click.IntRange(min=8),
    help="Side of the input [default: 224, or the hybrid: checkpoint's].",
)
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
    manifest, output, backbones, weights, image_size, resize, normalize, windowing, crop,
    ddsm_calibration, roi, batch_size, workers, no_cache, decoder, device, max_failures, dtype,
    hash_ids, backbone_suffix, compression, as_json,
) -> None:  # fmt: skip
    """Embed every image of MANIFEST with every backbone into the HDF5 store -o STORE.h5.

    Rerunning the same command resumes (finished images are skipped); a store made with other
    weights or preprocessing is refused. Under `torchrun --nproc-per-node N` the images are split
    across processes into one store. Exits non-zero when every image failed.
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
    show_bar = rank == 0 and not as_json and sys.stderr.isatty()
    bar = None
    if show_bar:
        bar = click.progressbar(
            length=1, label="extract", file=sys.stderr, show_pos=True,
            item_show_func=lambda rate: f"{rate:.2f} images/s" if rate else None,
        )  # fmt: skip
    lines = BarLines(bar) if bar is not None else None
    all_failed = None
    try:
        with lines if lines is not None else _nothing():
            summary = extract(
                manifest, output, backbones=backbones, weights=weights, preprocess=config,
                batch_size=batch_size, workers=workers, device=device,
                max_failures=max_failures, dtype=dtype, hash_ids=hash_ids,
                backbone_suffix=backbone_suffix, compression=compression,
                progress=lines.progress if lines is not None else None,
                cache=False if no_cache else None, decoder=decoder,
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


@contextlib.contextmanager
def _nothing():
    yield


class BarLines(logging.Filter):
    """Keeps a progress bar and log lines on separate lines.

    click draws the bar with a carriage return and no newline; a log record written while the bar
    is on screen would continue the bar's line. While active (a context manager), this filter sits
    on the ``featmammo`` logger's handlers and ends the bar's line before each record; the bar is
    redrawn below at the next update, and its line is ended once when the run finishes.
    ``progress(n, total)`` is the callback ``extract`` calls after each batch (it sizes the bar on
    first use: the total is known inside extract).
    """

    def __init__(self, bar):
        super().__init__()
        self.bar = bar
        self.open = False  # the bar's line is on screen without its newline
        self.started = False
        self.t0 = time.monotonic()
        self.n = 0
        self._handlers: list = []

    def filter(self, record) -> bool:
        self.end_line()
        return True

    def end_line(self) -> None:
        if self.open:
            self.bar.render_finish()  # click's line end (and the cursor shown again)
            self.open = False

    def progress(self, n: int, total: int) -> None:
        if not self.started:
            self.bar.length = max(1, total)
            self.started = True
        self.n += n
        rate = self.n / max(time.monotonic() - self.t0, 1e-9)
        self.bar.update(n, current_item=rate)
        self.open = True

    def __enter__(self):
        self._handlers = list(logging.getLogger("featmammo").handlers)
        for h in self._handlers:
            h.addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handlers:
            h.removeFilter(self)
        self.end_line()
