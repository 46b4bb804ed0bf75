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
