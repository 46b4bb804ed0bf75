"""``pool="avg"|"gem"`` for torchvision backbones, spec compatibility (identities of existing
stores unchanged), prefix loaders and pooling, fixed-size torchvision networks, missing weights
named at once, and prefixed names (``timm:``, ``mammoclip:``) through fusion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from featmammo import backbones as fb
from featmammo import store as fstore
from featmammo.backbones import registry
from featmammo.errors import ConfigError, WeightsError
from featmammo.fusion import fuse, resolve_features

#: what a torchvision spec recorded before pooling existed (the identity of every existing store)
RESNET18_SPEC = {
    "name": "resnet18", "arch": "resnet18", "layer": "penultimate", "dim": 512,
    "input_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    "weights": "random", "weights_sha256": None, "seed": 0,
}  # fmt: skip


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("FEATMAMMO_ALLOW_DOWNLOAD", raising=False)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _x(h=64, w=48, seed=0):
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _gem(feats):
    return feats.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)


def test_default_pool_keeps_the_recorded_spec():
    s = fb.make("resnet18", weights="random").spec
    assert s.to_dict() == RESNET18_SPEC and s.pool == "avg"
    assert fb.spec("resnet18", weights="random").to_dict() == RESNET18_SPEC
    assert fb.make("resnet18", weights="random", pool="avg").spec == s


def test_gem_on_resnet_replaces_avgpool():
    avg = fb.make("resnet18", weights="random", seed=2)
    gem = fb.make("resnet18", weights="random", seed=2, pool="gem")
    x = _x()
    body = avg.body
    with torch.inference_mode():
        h = body.layer4(body.layer3(body.layer2(body.layer1(
            body.maxpool(body.relu(body.bn1(body.conv1(x))))))))  # fmt: skip
        assert torch.allclose(gem(x), _gem(h), atol=1e-5)
        assert not torch.allclose(gem(x), avg(x))
    assert gem.spec.to_dict() == {**RESNET18_SPEC, "seed": 2, "pool": "gem"}
    assert fb.spec("resnet18", weights="random", pool="gem").pool == "gem"


def test_gem_on_a_tapped_feature_map_and_refusals():
    feats = fb.make("alexnet", weights="random", seed=1, layer="features", pool="gem")
    x = _x(96, 96)
    with torch.inference_mode():
        assert torch.allclose(feats(x), _gem(feats.body(x)["out"]), atol=1e-5)
    assert feats.spec.dim == 256
    with pytest.raises(ConfigError, match="fc7"):
        fb.make("alexnet", weights="random", pool="gem")  # fc7 is not a pooled map
    with pytest.raises(ConfigError, match="2-D"):
        fb.make("vgg16", weights="random", layer="pool", pool="gem")
    with pytest.raises(ConfigError, match="pool must be one of avg, gem"):
        fb.make("resnet18", weights="random", pool="max")
    # SE blocks have avgpool modules of their own: only the network's global pool is replaced
    eff = fb.make("efficientnet_b0", weights="random", pool="gem")
    n_gem = sum(isinstance(m, fb.pooling.GeM) for m in eff.modules())
    assert n_gem == 1 and isinstance(eff.body.avgpool, fb.pooling.GeM)


def test_prefix_loaders_get_the_options_they_take():
    seen = {}

    def old_style(name, *, weights, layer, device):  # a loader written before pooling
        seen["old"] = (name, weights)
        return fb.make("resnet18", weights="random")

    def new_style(name, *, weights, layer, device, seed=0, sha256=None, pool="avg"):
        seen["new"] = (seed, sha256, pool)
        return fb.make("resnet18", weights="random", pool=pool)

    try:
        registry.register_prefix("zzold:", old_style)
        registry.register_prefix("zznew:", new_style)
        fb.make("zzold:x", weights="imagenet")
        with pytest.raises(ConfigError, match="zzold:x: pool='gem' is not supported"):
            fb.make("zzold:x", pool="gem")
        fb.make("zznew:y", seed=4, sha256="ab" * 32, pool="gem")
        assert seen == {"old": ("zzold:x", "imagenet"), "new": (4, "ab" * 32, "gem")}
    finally:
        registry._PREFIX_LOADERS.pop("zzold:", None)
        registry._PREFIX_LOADERS.pop("zznew:", None)


def test_torchvision_vit_is_fixed_size():
    s = fb.spec("vit_b_16", weights="random")
    assert "fixed_input" not in s.to_dict()  # not written: existing vit stores keep identities
    assert fb.fixed_input_shape(s) == (224, 224)
    assert fb.fixed_input_shape(fb.spec("resnet18", weights="random")) is None
    with pytest.raises(ConfigError, match="vit_b_16 takes only 224x224"):
        fb.check_input_size([s], (512, 256))


def test_check_weights_torchvision(tmp_path, monkeypatch):
    with pytest.raises(WeightsError) as err:
        fb.check_weights(["resnet50", "alexnet", "vgg16"])
    msg = str(err.value)
    assert msg.count("\n  - ") == 3 and "featmammo weights fetch resnet50 alexnet vgg16" in msg
    fb.check_weights(["resnet50"], "random")
    with pytest.raises(WeightsError, match="weights file '.*nope.pth' not found"):
        fb.check_weights(["resnet18"], str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="unknown backbone"):
        fb.check_weights(["resnet5O"])
    monkeypatch.setenv("FEATMAMMO_ALLOW_DOWNLOAD", "1")  # a run that may download misses nothing
    fb.check_weights(["resnet50"])


def test_prefixed_names_fuse(tmp_path):
    names = [
        "resnet50",
        "timm:convnext_atto.d2_in1k",
        "mammoclip:/data/mc/b5-model-best-epoch-7.tar",
    ]
    n = 6
    ids = np.array([f"i{k}" for k in range(n)])
    meta = pd.DataFrame({"label": ["benign", "malignant"] * 3, "patient_id": [f"P{k}" for k in
                                                                           range(n)]})  # fmt: skip
    rng = np.random.default_rng(0)
    dims = {names[0]: 4, names[1]: 3, names[2]: 2}
    arrays = {b: rng.normal(size=(n, d)).astype(np.float32) for b, d in dims.items()}
    prov = {b: {"spec": {"name": b, "dim": d}, "weights": "random", "preprocess": {"x": 1},
                "preprocess_fingerprint": "fp"} for b, d in dims.items()}  # fmt: skip
    st = fstore.write(tmp_path / "s.h5", ids, meta, arrays, prov)
    assert sorted(st.backbones) == sorted(names)
    assert resolve_features("hybrid", st.backbones) == list(st.backbones)
    both = f"{names[1]}+{names[2]}"
    assert resolve_features(both, st.backbones) == names[1:]
    fused = fuse(st, both)
    assert fused.X.shape == (n, 5)
    np.testing.assert_array_equal(fused.X[:, fused.blocks[names[2]]], arrays[names[2]])
    assert fuse(st, names[2]).X.shape == (n, 2)


def test_an_input_too_small_for_the_network_is_refused_up_front():
    alexnet = fb.make("alexnet", weights="random", seed=1)
    x = _x(64, 64)
    with torch.inference_mode():
        before = alexnet(x)
    with pytest.raises(ConfigError, match=r"alexnet needs at least 63 px a side.*64x32"):
        fb.check_input_size({"alexnet": alexnet}, (64, 32))
    fb.check_input_size({"alexnet": alexnet}, (64, 64))
    fb.check_input_size([alexnet.spec.to_dict()], (64, 32))  # a recorded spec: nothing to trace
    with torch.inference_mode():  # the shape-only forward left the weights as they were
        assert torch.equal(alexnet(x), before)
    fb.check_input_size([fb.make("resnet18", weights="random")], (16, 16))  # 1x1 at the end: fine
