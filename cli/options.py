"""Options shared by several commands, defined once."""

from __future__ import annotations

import json

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where models run (auto: CUDA when available).",
)
weights_option = click.option(
    "--weights",
    default="imagenet",
    show_default=True,
    help="imagenet | random | PATH to a state dict (.pth). 'random' must be asked for explicitly.",
)
output_option = click.option(
    "-o", "--output", "output", required=True, type=click.Path(), help="Output path."
)


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


class WorkersType(click.ParamType):
    """``auto`` or an integer >= 0."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        elif str(value).strip().lower() == "auto":
            return "auto"
        else:
            try:
                n = int(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is neither 'auto' nor an integer", param, ctx)
        if n < 0:
            self.fail(f"{value!r} is negative", param, ctx)
        return n


workers_option = click.option(
    "--workers",
    type=WorkersType(),
    default="auto",
    show_default=True,
    help="Processes that read and preprocess images. auto: one per spare core on a GPU; on a "
    "CPU 0 (the main process with a read-ahead thread: the least CPU time per image, measured) up "
    "to 4 cores, then one per 4 cores. See docs/speed.md.",
)
no_cache_option = click.option(
    "--no-cache",
    "no_cache",
    is_flag=True,
    help="Read and prepare every image afresh, bypassing the prepared-image cache "
    "(featmammo cache info|clear manages it).",
)
decoder_option = click.option(
    "--decoder",
    type=click.Choice(["cpu", "auto", "nvimagecodec"]),
    default="cpu",
    show_default=True,
    help="Decoder of JPEG 2000 DICOMs: cpu; nvimagecodec (GPU, pip install 'featmammo[gpu]'; "
    "refused before any work when it cannot run); auto (nvimagecodec when usable, else cpu). Same "
    "pixels either way: recorded in the store's provenance, not in the preprocessing fingerprint.",
)
