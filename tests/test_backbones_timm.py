"""``timm:NAME`` backbones: pre-logits features, offline pretrained files (Hugging Face cache
layout written by the tests), SHA-256 checks, local files, fixed-size networks, fetch/verify.
Random weights or test-written state dicts only; tiny models (convnext_atto, resnet18, vit_tiny)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from payloads import RunsCode

timm = pytest.importorskip("timm")

from featmammo import backbones as fb  # noqa: E402
from featmammo.backbones import manage, pooling, timm_models  # noqa: E402
from featmammo.cli.main import cli  # noqa: E402
from featmammo.errors import ConfigError, WeightsError  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    """Empty torch and Hugging Face caches: no real download or cached file leaks in."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("FEATMAMMO_ALLOW_DOWNLOAD", raising=False)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path / "hf"
    torch.set_num_threads(n)


def _x(h=64, w=64, n=2, seed=0):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _reference(arch, seed=0, **kw):
    """timm's own model, initialised as make(weights='random', seed=seed) initialises it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(arch, pretrained=False, **kw).eval()


def _state_bytes(sd: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in sd.items()})


def hf_cache(root: Path, repo: str, files: dict, revision: str = "0" * 40) -> dict:
    """Write files into the Hugging Face cache layout (blobs named by sha256, snapshot links)."""
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(revision)
    snap = base / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    (base / "blobs").mkdir(exist_ok=True)
    out = {}
    for name, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        (base / "blobs" / sha).write_bytes(data)
        (snap / name).symlink_to(Path("..") / ".." / "blobs" / sha)
        out[name] = (base / "blobs" / sha, sha)
    return out


# -- random weights: the pre-logits vector of timm's own model --------------------------------


def test_random_is_timm_pre_logits_and_records_the_data_config():
    model = fb.make("timm:convnext_atto", weights="random", seed=3)
    ref = _reference("convnext_atto", seed=3)
    x = _x(96, 64)
    with torch.inference_mode():
        y = model(x)
        expected = ref.forward_head(ref.forward_features(x), pre_logits=True)
    assert torch.equal(y, expected) and y.shape == (2, 320)
    s = model.spec
    cfg = timm.models.get_pretrained_cfg("convnext_atto")
    assert (s.name, s.arch, s.layer, s.dim) == ("timm:convnext_atto", "timm/convnext_atto",
                                                "pre_logits", 320)  # fmt: skip
    assert (s.weights, s.weights_sha256, s.seed) == ("random", None, 3)
    assert s.mean == tuple(cfg.mean) and s.std == tuple(cfg.std)
    assert s.interpolation == cfg.interpolation == "bicubic"
    assert s.input_size == cfg.input_size[1] and s.pool == "avg" and not s.fixed_input
    d = s.to_dict()
    assert "pool" not in d and d["interpolation"] == "bicubic"
    assert fb.BackboneSpec.from_dict(json.loads(json.dumps(d))) == s
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_tag_picks_its_data_config_and_unknown_names_are_refused():
    vit = fb.make("timm:vit_tiny_patch16_224", weights="random")
    assert vit.spec.mean == (0.5, 0.5, 0.5) and vit.spec.dim == 192 and vit.spec.fixed_input
    with pytest.raises(ConfigError, match="convnext_atto"):
        fb.make("timm:convnext_att", weights="random")
    with pytest.raises(ConfigError, match="d2_in1k"):  # the tags it does have are listed
        fb.make("timm:convnext_atto.bogus", weights="random")
    with pytest.raises(ConfigError, match="layer"):
        fb.make("timm:convnext_atto", weights="random", layer="stages.2")


def test_gem_replaces_the_global_average_pool():
    avg = fb.make("timm:resnet18", weights="random", seed=1)
    gem = fb.make("timm:resnet18", weights="random", seed=1, pool="gem")
    ref = _reference("resnet18", seed=1)
    x = _x(64, 96)
    with torch.inference_mode():
        feats = ref.forward_features(x)
        assert torch.allclose(avg(x), feats.mean(dim=(2, 3)), atol=1e-6)
        expected = feats.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
        assert torch.allclose(gem(x), expected, atol=1e-5)
    assert gem.spec.pool == "gem" and gem.spec.to_dict()["pool"] == "gem"
    with pytest.raises(ConfigError, match="gem"):  # a ViT's token features have no such pool
        fb.make("timm:vit_tiny_patch16_224", weights="random", pool="gem")


def test_fixed_size_networks_are_refused_up_front():
    vit = fb.make("timm:vit_tiny_patch16_224", weights="random")
    cnn = fb.make("timm:convnext_atto", weights="random")
    fb.check_input_size({"timm:vit_tiny_patch16_224": vit, "c": cnn}, (224, 224))
    fb.check_input_size({"c": cnn}, (1024, 512))
    with pytest.raises(ConfigError, match=r"timm:vit_tiny_patch16_224 takes only 224x224.*"
                                          r"--image-size 224"):  # fmt: skip
        fb.check_input_size({"timm:vit_tiny_patch16_224": vit, "c": cnn}, (1024, 512))
    # recorded specs (dicts, as a store or a model sidecar keeps them) are checked the same way
    with pytest.raises(ConfigError):
        fb.check_input_size([vit.spec.to_dict()], (256, 256))


# -- pretrained files: offline, from the caches timm fills -------------------------------------


def test_missing_pretrained_file_names_the_fetch(_isolated_caches):
    with pytest.raises(WeightsError) as err:
        fb.make("timm:convnext_atto", weights="imagenet")
    msg = str(err.value)
    assert "timm/convnext_atto.d2_in1k" in msg and "model.safetensors" in msg
    assert str(_isolated_caches) in msg
    assert "featmammo weights fetch timm:convnext_atto" in msg and "random" in msg


def _cached_convnext(cache: Path, seed=5):
    ref = _reference("convnext_atto", seed=seed)
    files = hf_cache(cache, "timm/convnext_atto.d2_in1k",
                     {"model.safetensors": _state_bytes(ref.state_dict())})  # fmt: skip
    return ref, files["model.safetensors"]


def test_pretrained_from_the_hf_cache_is_verified_and_loaded(_isolated_caches):
    ref, (blob, sha) = _cached_convnext(_isolated_caches)
    model = fb.make("timm:convnext_atto", weights="imagenet")
    assert model.spec.weights == "imagenet:timm/convnext_atto.d2_in1k"
    assert model.spec.weights_sha256 == sha and model.spec.seed is None
    x = _x(80, 64)
    with torch.inference_mode():
        assert torch.allclose(
            model(x), ref.forward_head(ref.forward_features(x), pre_logits=True), atol=1e-6
        )
    # predict rebuilds from the recorded spec: weights identity and sha256 are accepted back
    again = fb.make("timm:convnext_atto", weights=model.spec.weights, sha256=sha)
    assert again.spec == model.spec
    with pytest.raises(WeightsError, match="recorded"):  # the cache now holds another file
        fb.make("timm:convnext_atto", weights=model.spec.weights, sha256="0" * 64)
    # a damaged cached file is refused before it is read
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        fb.make("timm:convnext_atto", weights="imagenet")


def test_local_file_fine_tuned_head_ignored_missing_key_listed(tmp_path):
    ref = _reference("convnext_atto", seed=2, num_classes=3)  # a fine-tuned 3-class head
    path = tmp_path / "mine.pth"
    torch.save(ref.state_dict(), path)
    model = fb.make("timm:convnext_atto", weights=str(path))
    assert model.spec.weights == str(path.resolve()) and len(model.spec.weights_sha256) == 64
    x = _x()
    with torch.inference_mode():
        assert torch.allclose(
            model(x), ref.forward_head(ref.forward_features(x), pre_logits=True), atol=1e-6
        )
    sd = ref.state_dict()
    del sd["stages.1.blocks.0.conv_dw.weight"]
    sd["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_state_bytes(sd))
    with pytest.raises(WeightsError, match=r"stages\.1\.blocks\.0\.conv_dw\.weight.*extra\.weight"):
        fb.make("timm:convnext_atto", weights=str(bad))
    # an expected sha256 that does not match is refused
    with pytest.raises(WeightsError, match="sha256"):
        fb.make("timm:convnext_atto", weights=str(path), sha256="0" * 64)


def test_local_file_is_read_without_running_code(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setenv("FM_MARKER", str(marker))
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": RunsCode()}, path)
    with pytest.raises(WeightsError, match="weights_only"):
        fb.make("timm:convnext_atto", weights=str(path))
    assert not marker.exists()


def test_timm_absent_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'featmammo\[timm\]'"):
        fb.make("timm:convnext_atto", weights="random")


def test_check_weights_names_every_missing_file_at_once(_isolated_caches, tmp_path):
    _cached_convnext(_isolated_caches)  # present: not listed
    names = ["resnet50", "timm:convnext_atto", "timm:resnet18", "alexnet",
             f"mammoclip:{tmp_path / 'b5.tar'}"]  # fmt: skip
    with pytest.raises(WeightsError) as err:
        fb.check_weights(names, "imagenet")
    msg = str(err.value)
    assert "weights missing for 4 backbones" in msg
    for bit in ("resnet50-11ad3fa6.pth", "alexnet-owt-7be5be79.pth", "timm/resnet18.a1_in1k",
                "b5.tar' not found"):  # fmt: skip
        assert bit in msg
    assert "timm:convnext_atto:" not in msg
    assert "featmammo weights fetch resnet50 timm:resnet18 alexnet`" in msg
    fb.check_weights(names[:4], "random")  # random weights need no file (a checkpoint does)


# -- featmammo weights fetch / verify timm:NAME ------------------------------------------------


def test_fetch_and_verify_timm(_isolated_caches, monkeypatch):
    ref = _reference("convnext_atto", seed=4)
    data = _state_bytes(ref.state_dict())
    calls = []

    def fake_download(repo, filename, revision=None, cache_dir=None, **kw):
        calls.append((repo, filename, Path(cache_dir)))
        hf_cache(Path(cache_dir), repo, {filename: data})
        return str(Path(cache_dir))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    runner = CliRunner()
    res = runner.invoke(cli, ["weights", "fetch", "timm:convnext_atto", "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.output)
    assert calls == [("timm/convnext_atto.d2_in1k", "model.safetensors", _isolated_caches)]
    assert row["status"] == "downloaded" and row["sha256"] == hashlib.sha256(data).hexdigest()
    res = runner.invoke(cli, ["weights", "fetch", "timm:convnext_atto", "--json"])
    assert json.loads(res.output)[0]["status"] == "already-present" and len(calls) == 1
    res = runner.invoke(cli, ["weights", "verify", "timm:convnext_atto"])
    assert res.exit_code == 0 and res.output.startswith("OK"), res.output
    assert manage.verify("timm:resnet18")[0]["status"] == "missing"
    # what was fetched is what make reads
    assert fb.make("timm:convnext_atto").spec.weights_sha256 == row["sha256"]


def test_url_only_tags_are_looked_up_in_torch_hub_folder(monkeypatch, tmp_path):
    ref = timm_models.resolve("timm:resnet18.tv_in1k")
    found = timm_models.pretrained_file(ref)
    assert found.path is None and "resnet18-f37072fd.pth" in found.where
    assert "timm/resnet18.tv_in1k" in found.where


def test_gem_module_is_float32_under_half_precision():
    x = torch.full((1, 2, 3, 3), 100.0, dtype=torch.float16)  # 100**3 overflows float16
    y = pooling.gem(x)
    assert torch.isfinite(y).all() and torch.allclose(y, torch.full_like(y, 100.0), rtol=1e-4)
