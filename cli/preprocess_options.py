"""Preprocessing options shared by extract, train, predict (and any command that preprocesses):
``--image-size N|HxW`` and ``--windowing``. Only click at import time."""

from __future__ import annotations

import click

WINDOWINGS = ("auto", "none", "voi", "window", "percentile")


class ImageSizeType(click.ParamType):
    """``N`` (an N x N input) or ``HxW`` (height x width, e.g. ``1024x512``) -> ``int`` N or
    ``(H, W)``; a square ``NxN`` is ``N``. Each side at least ``min_side``."""

    name = "N|HxW"

    def __init__(self, min_side: int = 8):
        self.min_side = int(min_side)

    def convert(self, value, param, ctx):
        if value is None:
            return None
        from featmammo.errors import ConfigError
        from featmammo.preprocess import parse_image_size

        try:
            size = parse_image_size(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)
        sides = (size, size) if isinstance(size, int) else size
        if min(sides) < self.min_side:
            self.fail(f"{value!r}: each side must be at least {self.min_side}", param, ctx)
        return size


def image_size_option(default=224, *, min_side: int = 8, help_suffix: str = ""):
    """The ``--image-size`` option (``N`` or ``HxW``); ``default=None`` leaves it unset."""
    shown = "" if default is None else f" [default: {default}]"
    return click.option(
        "--image-size",
        "image_size",
        type=ImageSizeType(min_side),
        default=default,
        help="Network input size: N (N x N) or HxW (height x width, e.g. 1024x512 for the 2:1 "
        "portrait of a mammogram). The breast is resized keeping its aspect, never stretched: N "
        "centres it in the square; HxW puts it top-left, so the padding is right/bottom, away "
        f"from the chest wall (on the left after the canonical side){help_suffix}.{shown}",
    )


def windowing_option(default: str = "auto"):
    """The ``--windowing`` option (the reader's pixel policy)."""
    return click.option(
        "--windowing",
        type=click.Choice(WINDOWINGS),
        default=default,
        show_default=True,
        help="Pixel policy of the reader. auto: a DICOM's own VOI LUT or window (the first; "
        "LINEAR, LINEAR_EXACT or SIGMOID per VOILUTFunction) when it has one, else the stored "
        "range, as for every non-DICOM file; none: stored values, tags ignored; voi / window: "
        "the tags, an error when missing; percentile: 0.5-99.5 % clip. MONOCHROME1 is inverted "
        "whatever the policy; what was applied is recorded per image.",
    )
