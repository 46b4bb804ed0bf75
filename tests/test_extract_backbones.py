"""What extract asks of the backbones before any image is read: every missing weights file in one
error, the global pooling (``--pool avg|gem``, part of the identity), a fixed input size."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from featmammo import store  # noqa: E402
from featmammo.cli.main import cli  # noqa: E402
from featmammo.errors import ConfigError, StoreError, WeightsError  # noqa: E402
from featmammo.extract import embed, extract  # noqa: E402
from featmammo.preprocess import PreprocessConfig  # noqa: E402

CFG = PreprocessConfig(image_size=64)
FAST = {"preprocess": CFG, "threads": 1, "device": "cpu", "cache": False}


@pytest.fixture(autouse=True)
def _own_homes(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATMAMMO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no weights file anywhere


@pytest.fixture
def manifest(tmp_path):
    from test_extract_files import _dataset

    return _dataset(tmp_path / "data", n=3)


def test_every_missing_weights_file_in_one_error_before_any_work(manifest, tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(WeightsError) as err:
        extract(manifest, path, backbones=["resnet50", "alexnet"], weights="imagenet", **FAST)
    text = str(err.value)
    assert "resnet50" in text and "alexnet" in text  # both named, not the first one only
    assert "featmammo weights fetch" in text
    assert not path.exists()


def test_gem_pooling_is_recorded_and_is_another_identity(manifest, tmp_path):
    path = tmp_path / "s.h5"
    extract(manifest, path, backbones=["resnet18"], weights="random", pool="gem", **FAST)
    spec = store.open(path).backbone_provenance("resnet18")["spec"]
    assert spec["pool"] == "gem"
    with pytest.raises(StoreError, match="spec"):  # an avg run cannot resume a gem entry
        extract(manifest, path, backbones=["resnet18"], weights="random", **FAST)
    r = CliRunner().invoke(
        cli, ["extract", str(manifest), "-o", str(path), "-b", "resnet18", "--weights", "random",
              "--pool", "gem", "--image-size", "64", "--device", "cpu", "--no-cache", "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    with pytest.raises(ConfigError, match="gem"):  # alexnet's fc7 is no pooled feature map
        embed([tmp_path / "data" / "img0.pgm"], backbones=["alexnet"], weights="random",
              pool="gem", preprocess=CFG, device="cpu", cache=False)  # fmt: skip


def test_a_fixed_size_backbone_is_refused_at_another_size_before_reading(manifest, tmp_path):
    pytest.importorskip("timm")
    path = tmp_path / "s.h5"
    with pytest.raises(ConfigError, match="takes only 224x224") as err:
        extract(manifest, path, backbones=["timm:vit_tiny_patch16_224"], weights="random", **FAST)
    assert "--image-size 224" in str(err.value)
    assert not path.exists()
