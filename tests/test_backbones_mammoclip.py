"""``mammoclip:CHECKPOINT``: the Mammo-CLIP image encoder from a checkpoint in the released layout
(written here: random tensors under the real key names and shapes, a config as the released files
carry it), read without running code from the file; strict keys; pooling; spec."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
from payloads import RunsCode

from featmammo import backbones as fb
from featmammo.backbones import mammoclip as mc
from featmammo.errors import ConfigError, WeightsError
from featmammo.hashing import sha256_file

B2, B5 = "tf_efficientnetv2-detect", "tf_efficientnet_b5_ns-detect"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def encoder_tensors(encoder: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for every key of the encoder (plausible batch-norm statistics)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in mc.build_encoder(encoder, meta=True).state_dict().items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(1000)
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith(("running_mean", "bias")):
            out[k] = torch.randn(v.shape, generator=g) * 0.05
        elif "_bn" in k:  # batch-norm weight
            out[k] = 1 + torch.randn(v.shape, generator=g) * 0.05
        else:
            fan_in = max(1, v[0].numel())
            out[k] = torch.randn(v.shape, generator=g) / fan_in**0.5
    return out


def released_config(encoder: str, listconfig=None) -> dict:
    """The shape of Mammo-CLIP's checkpoint["config"] (convert_dictconfig_to_dict output)."""
    aug = listconfig([0.8, 1.2]) if listconfig else [0.8, 1.2]
    return {
        "base": {"mean": mc.MEAN, "std": mc.STD, "image_size_h": 1520, "image_size_w": 912},
        "model": {
            "name": "clip_custom",
            "image_encoder": {"source": "cnn", "name": encoder, "pretrained": True,
                              "model_type": "cnn"},
            "text_encoder": {"source": "huggingface", "name": "emilyalsentzer/Bio_ClinicalBERT"},
            "projection_head": {"name": "linear", "proj_dim": 512},
        },
        "transform": {"train": {"transform": {"affine_scale": aug}}},
    }  # fmt: skip


def write_checkpoint(path, encoder=B2, *, seed=0, config=None, listconfig=None, drop=(),
                     add=None, extra=None) -> dict:  # fmt: skip
    """A checkpoint as Mammo-CLIP's trainer saved it (model = the whole CLIP model)."""
    enc = encoder_tensors(encoder, seed)
    dim = mc.ENCODERS[encoder][1]
    model = {f"image_encoder.{k}": v for k, v in enc.items() if k not in drop}
    model.update(add or {})
    model["text_encoder.encoder.embeddings.word_embeddings.weight"] = torch.randn(10, 8)
    model["image_projection.projection.weight"] = torch.randn(512, dim) * 0.01
    model["text_projection.projection.weight"] = torch.randn(512, 8)
    model["logit_scale"] = torch.tensor(2.6593)
    ckpt = {
        "model": model,
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "params": [0, 1]}]},
        "scheduler": {"base_lrs": [5e-5], "last_epoch": 7, "tsteps": 100, "wsteps": 10},
        "config": released_config(encoder, listconfig) if config is None else config,
        "epoch": 7,
        "train_loss": 1.25,
        **(extra or {}),
    }
    torch.save(ckpt, path)
    return enc


@contextlib.contextmanager
def fake_omegaconf(marker: Path):
    """Classes pickled under omegaconf's names (what the released files hold); their code writes
    ``marker`` if it ever runs. Removed again before loading: nothing can import them."""
    root, sub = types.ModuleType("omegaconf"), types.ModuleType("omegaconf.listconfig")

    class ListConfig:
        def __init__(self, items):
            self._content = list(items)
            self._parent = None

        def __setstate__(self, state):
            marker.write_text("omegaconf code ran")
            self.__dict__.update(state)

    ListConfig.__module__ = "omegaconf.listconfig"
    ListConfig.__qualname__ = "ListConfig"
    sub.ListConfig = ListConfig
    root.listconfig = sub
    sys.modules["omegaconf"], sys.modules["omegaconf.listconfig"] = root, sub
    try:
        yield ListConfig
    finally:
        del sys.modules["omegaconf"], sys.modules["omegaconf.listconfig"]


@pytest.fixture(scope="module")
def b2_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("mc") / "b2-model-best-epoch-10.tar"
    enc = write_checkpoint(path, B2)
    return path, enc


def _reference_forward(enc: dict, encoder: str, x):
    model = mc.build_encoder(encoder)
    model.load_state_dict(enc)
    with torch.inference_mode():
        return model.eval()(x)


def test_b2_checkpoint_spec_and_features(b2_checkpoint):
    path, enc = b2_checkpoint
    model = fb.make(f"mammoclip:{path}")
    s = model.spec
    assert (s.name, s.arch, s.layer, s.dim) == (f"mammoclip:{path}", B2, "image_encoder", 1408)
    assert s.input_size == (1520, 912) and s.input_shape == (1520, 912)
    assert s.mean == (mc.MEAN,) * 3 and s.std == (mc.STD,) * 3 and s.interpolation == "area"
    assert s.weights == str(path.resolve()) and s.weights_sha256 == sha256_file(path)
    assert s.pool == "avg" and not s.fixed_input
    assert fb.BackboneSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    x = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (2, 1408) and torch.isfinite(y).all()
    assert torch.equal(y, _reference_forward(enc, B2, x))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    # any input size (a CNN): nothing to refuse at 1024x512
    fb.check_input_size([model], (1024, 512))


def test_b5_gives_2048(tmp_path):
    path = tmp_path / "b5-model-best-epoch-7.tar"
    write_checkpoint(path, B5, seed=3)
    model = fb.make(f"mammoclip:{path}")
    assert (model.spec.arch, model.spec.dim) == (B5, 2048)
    assert len(model.body._blocks) == 39
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 64, 48)).shape == (1, 2048)


def test_lukemelas_static_same_padding():
    """Pads fixed for the nominal size (456 px for B5), applied as they are to any input."""
    enc = mc.build_encoder(B5, meta=True)
    assert enc._conv_stem.pads == (0, 1, 0, 1)  # k3 s2 at 456: TF "same" pads bottom/right
    # stride-2 depthwise convolutions meet 228, 114, 57 and 29 px maps at 456 px
    strided = [b for b in enc._blocks if b.block.stride == 2]
    assert [b._depthwise_conv.pads for b in strided] == [
        (0, 1, 0, 1), (1, 2, 1, 2), (1, 1, 1, 1), (2, 2, 2, 2)]  # fmt: skip
    assert all(b._depthwise_conv.pads == (1, 1, 1, 1) for b in enc._blocks
               if b.block.stride == 1 and b.block.kernel == 3)  # fmt: skip
    conv = mc.StaticSameConv2d(1, 1, 5, 2, image_size=(57, 57))
    assert conv.pads == (2, 2, 2, 2)
    # dynamic "same" padding of a 95-px map (1520/16) would be (2, 2); the static pads stay
    x = torch.zeros(1, 1, 95, 95)
    assert conv(x).shape[-1] == 48


def test_released_config_with_omegaconf_objects_is_read_without_running_them(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "b2.tar"
    with fake_omegaconf(marker) as listconfig:
        enc = write_checkpoint(path, B2, listconfig=listconfig)
    with pytest.raises(pickle.UnpicklingError):  # weights_only alone refuses the file
        torch.load(path, weights_only=True)
    model = fb.make(f"mammoclip:{path}")
    assert not marker.exists() and "omegaconf" not in sys.modules
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), _reference_forward(enc, B2, x))
    obj, replaced = mc.read_checkpoint(path)
    assert replaced == ["omegaconf.listconfig.ListConfig"]
    assert obj["config"]["model"]["image_encoder"]["name"] == B2


def test_code_in_a_checkpoint_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("FM_MARKER", str(marker))
    path = tmp_path / "evil.tar"
    write_checkpoint(path, B2, extra={"hook": RunsCode()})
    with pytest.raises(WeightsError, match="without running code.*system"):
        fb.make(f"mammoclip:{path}")
    assert not marker.exists()


def test_encoder_named_by_weights_when_config_unreadable(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "no-config.tar"
    with fake_omegaconf(marker) as listconfig:
        write_checkpoint(path, B5, config=listconfig(["not", "a", "dict"]))
    assert fb.make(f"mammoclip:{path}").spec.arch == B5 and not marker.exists()


def test_missing_and_unexpected_encoder_keys_are_listed(tmp_path):
    path = tmp_path / "bad.tar"
    write_checkpoint(path, B2, drop=("_blocks.3._bn1.weight",),
                     add={"image_encoder._fc.weight": torch.zeros(1, 1408)})  # fmt: skip
    with pytest.raises(WeightsError, match=r"_blocks\.3\._bn1\.weight.*_fc\.weight"):
        fb.make(f"mammoclip:{path}")
    wrong = tmp_path / "wrong-shape.tar"  # a B2 config over B5 weights
    write_checkpoint(wrong, B5, config=released_config(B2))
    with pytest.raises(WeightsError, match="shape"):
        fb.make(f"mammoclip:{wrong}")


def test_not_a_mammoclip_checkpoint(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(WeightsError, match="image_encoder"):
        fb.make(f"mammoclip:{path}")
    other = tmp_path / "b5ns.tar"
    write_checkpoint(other, B2, config=released_config("tf_efficientnet_b5_ns"))
    with pytest.raises(ConfigError, match="tf_efficientnet_b5_ns-detect"):
        fb.make(f"mammoclip:{other}")
    with pytest.raises(WeightsError, match="not found"):
        fb.make(f"mammoclip:{tmp_path / 'nope.tar'}")


def test_gem_pool_and_weights_rules(b2_checkpoint, tmp_path, monkeypatch):
    path, enc = b2_checkpoint
    gem = fb.make(f"mammoclip:{path}", pool="gem")
    assert gem.spec.pool == "gem" and gem.spec.to_dict()["pool"] == "gem"
    x = torch.randn(1, 3, 64, 64)
    ref = mc.build_encoder(B2)
    ref.load_state_dict(enc)
    with torch.inference_mode():
        feats = ref.eval().extract_features(x)
        expected = feats.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
        assert torch.allclose(gem(x), expected, atol=1e-5)
    with pytest.raises(ConfigError, match="carries its weights"):
        fb.make(f"mammoclip:{path}", weights="random")
    # predict rebuilds from the recorded spec: absolute weights path + sha256, from any folder
    rel = os.path.relpath(path, tmp_path)
    monkeypatch.chdir(tmp_path)
    model = fb.make(f"mammoclip:{rel}")
    monkeypatch.chdir(Path(path).parent.parent)
    again = fb.make(model.spec.name, weights=model.spec.weights, sha256=model.spec.weights_sha256)
    assert again.spec == model.spec
    with pytest.raises(WeightsError, match="sha256"):
        fb.make(model.spec.name, weights=model.spec.weights, sha256="ab" * 32)
