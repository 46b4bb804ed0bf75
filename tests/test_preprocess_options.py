"""cli/preprocess_options.py: --image-size N|HxW and --windowing, as commands use them."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from featmammo.cli.preprocess_options import image_size_option, windowing_option


def _command(**kw):
    @click.command()
    @image_size_option(**kw)
    @windowing_option()
    def cmd(image_size, windowing):
        from featmammo.preprocess import PreprocessConfig

        c = PreprocessConfig(image_size=image_size or 224, windowing=windowing)
        click.echo(json.dumps({"size": c.to_dict()["image_size"], "windowing": c.windowing}))

    return cmd


@pytest.mark.parametrize(
    "args, size",
    [([], 224), (["--image-size", "256"], 256), (["--image-size", "1024x512"], [1024, 512]),
     (["--image-size", "512X512"], 512)],
)  # fmt: skip
def test_image_size_values(args, size):
    res = CliRunner().invoke(_command(), args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"size": size, "windowing": "auto"}


@pytest.mark.parametrize("bad", ["1024x", "x512", "big", "0", "4x4", "1024x512x3"])
def test_image_size_refused(bad):
    res = CliRunner().invoke(_command(), ["--image-size", bad])
    assert res.exit_code == 2 and "--image-size" in res.output


def test_min_side_and_unset_default():
    res = CliRunner().invoke(_command(min_side=32), ["--image-size", "64x16"])
    assert res.exit_code == 2 and "at least 32" in res.output
    res = CliRunner().invoke(_command(default=None), [])
    assert json.loads(res.output)["size"] == 224  # unset: the command's own default


def test_windowing_choices():
    res = CliRunner().invoke(_command(), ["--windowing", "none"])
    assert json.loads(res.output)["windowing"] == "none"
    assert CliRunner().invoke(_command(), ["--windowing", "lut"]).exit_code == 2
    from featmammo.cli.preprocess_options import WINDOWINGS
    from featmammo.preprocess.config import WINDOWINGS as CONFIG_WINDOWINGS

    assert WINDOWINGS == CONFIG_WINDOWINGS  # one list, spelled twice only to keep cli import-light
