"""Backbone registry, weights handling and ``featmammo weights``: random weights or test-written
state dicts only (no downloads), tiny inputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner

from featmammo import backbones as fb
from featmammo.backbones import weights as fw
from featmammo.cli.main import cli
from featmammo.errors import ConfigError, WeightsError
from featmammo.hashing import sha256_file


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny forwards: one intra-op thread avoids oversubscription on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _isolated_torch_home(tmp_path, monkeypatch):
    """Every test sees an empty TORCH_HOME (so real cached weights never leak in)."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv("FEATMAMMO_ALLOW_DOWNLOAD", raising=False)
    return home


def _x(size=64, n=2, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _resnet18_reference(seed=7):
    """A randomly initialised full torchvision resnet18 and its penultimate-feature twin."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None).eval()
    return model


def _penultimate(model, x):
    fc = model.fc
    model.fc = torch.nn.Identity()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.fc = fc


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "my_resnet18.pth"
    model = _resnet18_reference()
    torch.save(model.state_dict(), path)
    return path, model


@pytest.fixture
def fake_imagenet(tmp_path, monkeypatch, resnet18_file):
    """Pretend torchvision's resnet18 file is our test state dict: its name embeds its real hash."""
    path, model = resnet18_file
    sha = sha256_file(path)
    real = fw.torchvision_weights("resnet18")
    fake = dataclasses.replace(real, url=f"https://example.invalid/resnet18-{sha[:10]}.pth")
    orig = fw.torchvision_weights

    def patched(arch, member=None):
        return fake if arch == "resnet18" else orig(arch, member)

    monkeypatch.setattr(fw, "torchvision_weights", patched)
    monkeypatch.setattr(fw, "known_files", lambda: {fake.file_name: fake})
    monkeypatch.setattr(fw, "weights_members", lambda arch: [fake] if arch == "resnet18" else [])
    return path, model, sha, fake


# -- registry and dims --------------------------------------------------------------------------


def test_available_lists_registered_first_and_all_torchvision():
    names = fb.available()
    assert names[:3] == ["resnet50", "alexnet", "vgg16"]
    assert "mobilenet_v3_small" in names and "resnet18" in names
    assert len(names) == len(set(names))
    with pytest.raises(ConfigError, match="resnet50"):
        fb.make("resnet5O", weights="random")


@pytest.mark.parametrize(
    ("name", "layer", "dim"),
    [
        ("resnet50", None, 2048),
        ("resnet50", "layer3", 1024),
        ("alexnet", "pool", 9216),
        ("resnet18", None, 512),
        ("mobilenet_v3_small", None, 1024),
        ("squeezenet1_1", None, 512),
    ],
)
def test_make_random_dims(name, layer, dim):
    model = fb.make(name, weights="random", layer=layer)
    s = model.spec
    assert (s.dim, s.arch, s.weights, s.weights_sha256, s.seed) == (dim, name, "random", None, 0)
    assert s.layer == (layer or fb.recipe(name).default_layer)
    assert s.input_size == 224 and s.mean == fb.IMAGENET_MEAN and s.std == fb.IMAGENET_STD
    assert not model.training
    with torch.inference_mode():
        y = model(_x(64))
    assert y.shape == (2, dim) and y.dtype == torch.float32 and torch.isfinite(y).all()


@pytest.mark.parametrize(
    ("name", "layer", "dim"),
    [
        ("resnet50", "avgpool", 2048),
        ("resnet50", "layer1", 256),
        ("resnet50", "layer4", 2048),
        ("alexnet", None, 4096),
        ("alexnet", "fc6", 4096),
        ("alexnet", "features", 256),
        ("vgg16", "pool", 25088),
        ("vgg16", "features", 512),
        ("inception_v3", None, 2048),
        ("vit_b_16", None, 768),
    ],
)
def test_spec_dims_without_weights(name, layer, dim):
    """Widths from a meta-device build (no init, no weights): the registry's documented dims."""
    s = fb.spec(name, weights="random", layer=layer)
    assert s.dim == dim
    assert fb.recipe(name).dims.get(s.layer, dim) == dim


def test_vgg16_fc7_at_32px():
    model = fb.make("vgg16", weights="random")
    assert (model.spec.dim, model.spec.layer) == (4096, "fc7")
    with torch.inference_mode():
        y = model(_x(32, n=1))
    assert y.shape == (1, 4096)
    assert (y >= 0).all()  # fc7 ends at the ReLU
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.body.classifier[4:])


def test_alexnet_fc7_is_classifier_up_to_second_relu():
    model = fb.make("alexnet", weights="random", seed=1)
    body = model.body
    assert isinstance(body.classifier[6], torch.nn.Identity)  # fc8 removed
    assert isinstance(body.classifier[5], torch.nn.ReLU)  # fc7's ReLU kept
    assert (
        isinstance(body.classifier[4], torch.nn.Linear) and body.classifier[4].out_features == 4096
    )
    x = _x(64, seed=2)
    with torch.inference_mode():
        h = torch.flatten(body.avgpool(body.features(x)), 1)
        expected = body.classifier[:6](h)
        assert torch.equal(model(x), expected)
        pool = fb.make("alexnet", weights="random", seed=1, layer="pool")(x)
        assert torch.equal(pool, h)  # "pool" = pool5 flattened, the input of fc6


def test_bad_layer_names_the_choices():
    with pytest.raises(ConfigError, match="layer3"):
        fb.make("resnet18", weights="random", layer="layer9")


def test_spec_without_building():
    s = fb.spec("alexnet", weights="random", layer="pool")
    assert s.dim == 9216 and s.layer == "pool"
    assert fb.BackboneSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s


# -- random weights: explicit and seeded ---------------------------------------------------------


def test_random_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = fb.make("resnet18", weights="random", seed=3)
    b = fb.make("resnet18", weights="random", seed=3)
    c = fb.make("resnet18", weights="random", seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    x = _x(64)
    with torch.inference_mode():
        ya, yb, yc = a(x), b(x), c(x)
    assert torch.equal(ya, yb) and not torch.allclose(ya, yc)
    assert c.spec.seed == 4


@pytest.mark.parametrize("bad", [None, 3])
def test_weights_argument_never_defaults_to_random(bad):
    with pytest.raises(WeightsError):
        fb.make("resnet18", weights=bad)


# -- local state-dict files ----------------------------------------------------------------------


def test_state_dict_path_gives_the_original_outputs(resnet18_file):
    path, ref = resnet18_file
    model = fb.make("resnet18", weights=str(path))
    assert model.spec.weights == str(path.resolve())
    assert model.spec.weights_sha256 == sha256_file(path)
    assert model.spec.seed is None
    x = _x(64, seed=5)
    with torch.inference_mode():
        y = model(x)
    assert torch.allclose(y, _penultimate(ref, x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module."])
def test_wrapped_state_dicts_load(tmp_path, resnet18_file, wrap):
    _, ref = resnet18_file
    sd = ref.state_dict()
    obj = {f"module.{k}": v for k, v in sd.items()} if wrap == "module." else {wrap: sd, "epoch": 3}
    path = tmp_path / "wrapped.pt"
    torch.save(obj, path)
    model = fb.make("resnet18", weights=path)
    x = _x(64, seed=6)
    with torch.inference_mode():
        assert torch.allclose(model(x), _penultimate(ref, x), atol=1e-6, rtol=0)


def test_finetuned_head_of_another_size_is_ignored(tmp_path, resnet18_file):
    _, ref = resnet18_file
    sd = dict(ref.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(2, 512), torch.zeros(2)
    path = tmp_path / "finetuned.pth"
    torch.save(sd, path)
    model = fb.make("resnet18", weights=path)
    with torch.inference_mode():
        assert torch.allclose(model(_x(64)), _penultimate(ref, _x(64)), atol=1e-6, rtol=0)


def test_sidecar_and_explicit_hash_are_checked(tmp_path, resnet18_file):
    src, _ = resnet18_file
    path = tmp_path / "w.pth"
    path.write_bytes(src.read_bytes())
    sha = sha256_file(path)
    fb.make("resnet18", weights=path, sha256=sha[:12])  # prefix accepted
    with pytest.raises(WeightsError, match="w.pth.*expected hash"):
        fb.make("resnet18", weights=path, sha256="0" * 64)
    (tmp_path / "w.pth.sha256").write_text(f"{'f' * 64}  w.pth\n")
    with pytest.raises(WeightsError, match=r"w\.pth.*sidecar"):
        fb.make("resnet18", weights=path)
    (tmp_path / "w.pth.sha256").write_text(f"{sha}  w.pth\n")
    assert fb.make("resnet18", weights=path).spec.weights_sha256 == sha


def test_mismatched_state_dict_names_file_and_keys(tmp_path, resnet18_file):
    src, _ = resnet18_file
    with pytest.raises(WeightsError) as err:
        fb.make("alexnet", weights=src)
    msg = str(err.value)
    assert str(src) in msg and "missing keys" in msg and "unexpected keys" in msg
    assert "classifier.1.weight" in msg and "bn1.weight" in msg and "classifier.6" not in msg
    # same keys, one tensor cut short
    sd = torch.load(src, weights_only=True)
    sd["layer1.0.conv1.weight"] = sd["layer1.0.conv1.weight"][:32]
    bad = tmp_path / "short.pth"
    torch.save(sd, bad)
    with pytest.raises(WeightsError, match=r"short\.pth.*shape mismatch.*layer1\.0\.conv1\.weight"):
        fb.make("resnet18", weights=bad)


def test_corrupted_or_missing_file(tmp_path, resnet18_file):
    src, _ = resnet18_file
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(src.read_bytes()[:4096])
    with pytest.raises(WeightsError, match=r"corrupt\.pth.*weights_only"):
        fb.make("resnet18", weights=corrupt)
    with pytest.raises(WeightsError, match="nothere.pth.*not found"):
        fb.make("resnet18", weights=tmp_path / "nothere.pth")


def test_load_weights_into_a_full_classifier(resnet18_file):
    path, ref = resnet18_file
    torch.manual_seed(99)
    model = torchvision.models.resnet18(weights=None)
    info = fb.load_weights(model, "resnet18", str(path))
    assert info["weights_sha256"] == sha256_file(path)
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


# -- ImageNet weights: offline, verified ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "file"),
    [("resnet50", "resnet50-11ad3fa6.pth"), ("alexnet", "alexnet-owt-7be5be79.pth")],
)
def test_missing_imagenet_weights_name_file_and_folder(_isolated_torch_home, name, file):
    with pytest.raises(WeightsError) as err:
        fb.make(name)
    msg = str(err.value)
    assert f"'{file}'" in msg and str(_isolated_torch_home / "hub" / "checkpoints") in msg
    assert "featmammo weights import" in msg
    assert not (_isolated_torch_home / "hub" / "checkpoints" / file).exists()  # no download


def test_fake_file_under_torchvision_name_fails_hash_check(_isolated_torch_home, resnet18_file):
    src, _ = resnet18_file
    folder = _isolated_torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "resnet18-f37072fd.pth").write_bytes(src.read_bytes())
    with pytest.raises(
        WeightsError, match=r"resnet18-f37072fd\.pth.*does not start with 'f37072fd'"
    ):
        fb.make("resnet18")


def test_verified_imagenet_file_loads(_isolated_torch_home, fake_imagenet):
    path, ref, sha, tw = fake_imagenet
    folder = _isolated_torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / tw.file_name).write_bytes(path.read_bytes())
    model = fb.make("resnet18")
    assert model.spec.weights == "imagenet:ResNet18_Weights.IMAGENET1K_V1"
    assert model.spec.weights_sha256 == sha
    x = _x(64, seed=8)
    with torch.inference_mode():
        assert torch.allclose(model(x), _penultimate(ref, x), atol=1e-6, rtol=0)


def test_download_only_when_allowed(_isolated_torch_home, fake_imagenet, monkeypatch):
    path, _, sha, tw = fake_imagenet
    fetched = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        fetched.append((url, hash_prefix))
        Path(dst).write_bytes(path.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(WeightsError, match="not found"):
        fb.make("resnet18")
    assert fetched == []
    monkeypatch.setenv("FEATMAMMO_ALLOW_DOWNLOAD", "1")
    assert fb.make("resnet18").spec.weights_sha256 == sha
    assert fetched == [(tw.url, sha[:10])]


# -- inference helpers and hybrid dispatch -------------------------------------------------------


def test_prepare_for_inference_channels_last():
    model = fb.make("resnet18", weights="random")
    x = _x(64)
    with torch.inference_mode():
        before = model(x)
    out = fb.prepare_for_inference(model, "cpu")
    assert out is model and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        after = model(x.contiguous(memory_format=torch.channels_last))
    assert after.dtype == torch.float32 and torch.allclose(before, after, atol=1e-4)


def test_registry_does_not_import_nn():
    """One direction between the parts: backbones never import featmammo.nn (nn registers)."""
    import subprocess
    import sys

    code = (
        "import sys, featmammo.backbones as fb, featmammo.backbones.registry as r; "
        "assert 'featmammo.nn' not in sys.modules, 'registry imported nn'; "
        "assert 'hybrid:' not in r._PREFIX_LOADERS; "
        "import featmammo.nn.backbone; assert 'hybrid:' in r._PREFIX_LOADERS"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hybrid_names_dispatch_to_nn(monkeypatch):
    import featmammo.nn.backbone as nn_backbone

    calls = []
    sentinel = torch.nn.Identity()
    monkeypatch.setattr(
        nn_backbone, "load_backbone", lambda p, device: calls.append((p, device)) or sentinel
    )
    assert fb.make("hybrid:/runs/a/checkpoint.pt") is sentinel
    assert calls == [("/runs/a/checkpoint.pt", torch.device("cpu"))]
    with pytest.raises(ConfigError, match="layer"):
        fb.make("hybrid:/runs/a/checkpoint.pt", layer="layer3")


# -- featmammo weights ---------------------------------------------------------------------------


def test_cli_list_and_verify_missing(_isolated_torch_home):
    runner = CliRunner()
    res = runner.invoke(cli, ["weights", "list", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["name"] for r in rows] == ["resnet50", "alexnet", "vgg16"]
    assert rows[0]["file"] == "resnet50-11ad3fa6.pth" and rows[2]["file"] == "vgg16-397923af.pth"
    assert all(r["present"] is False and r["sha256_ok"] is None for r in rows)
    assert rows[0]["folder"] == str(_isolated_torch_home / "hub" / "checkpoints")
    res = runner.invoke(cli, ["weights", "verify", "resnet50", "--json"])
    assert res.exit_code == 1
    (row,) = json.loads(res.stdout)
    assert row["status"] == "missing" and "resnet50-11ad3fa6.pth" in row["reason"]


def test_cli_verify_file_with_sidecar(tmp_path, resnet18_file):
    src, _ = resnet18_file
    path = tmp_path / "mine.pth"
    path.write_bytes(src.read_bytes())
    runner = CliRunner()
    res = runner.invoke(cli, ["weights", "verify", str(path), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["status"] == "unverified"
    (tmp_path / "mine.pth.sha256").write_text(sha256_file(path))
    res = runner.invoke(cli, ["weights", "verify", str(path), "--name", "resnet18", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["status"] == "ok"
    res = runner.invoke(cli, ["weights", "verify", str(path), "--name", "alexnet", "--json"])
    assert res.exit_code == 1 and "does not match alexnet" in json.loads(res.stdout)[0]["reason"]
    (tmp_path / "mine.pth.sha256").write_text("0" * 64)
    res = runner.invoke(cli, ["weights", "verify", str(path)])
    assert res.exit_code == 1 and "MISMATCH" in res.output


def test_cli_import_refuses_mismatch(_isolated_torch_home, tmp_path, resnet18_file):
    src, _ = resnet18_file
    fake = tmp_path / "resnet18-f37072fd.pth"
    fake.write_bytes(src.read_bytes())
    runner = CliRunner()
    res = runner.invoke(cli, ["weights", "import", str(fake)])
    assert res.exit_code != 0 and "f37072fd" in res.output and "refusing" in res.output
    res = runner.invoke(cli, ["weights", "import", str(src), "--name", "resnet50"])
    assert res.exit_code != 0 and "resnet50-11ad3fa6.pth" in res.output
    assert not (_isolated_torch_home / "hub" / "checkpoints").exists() or not any(
        (_isolated_torch_home / "hub" / "checkpoints").iterdir()
    )


def test_cli_import_verified_file_then_list(_isolated_torch_home, fake_imagenet):
    path, _, sha, tw = fake_imagenet
    runner = CliRunner()
    res = runner.invoke(cli, ["weights", "import", str(path), "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)
    dest = _isolated_torch_home / "hub" / "checkpoints" / tw.file_name
    assert row["status"] == "imported" and row["dest"] == str(dest) and sha256_file(dest) == sha
    res = runner.invoke(cli, ["weights", "import", str(path), "--name", "resnet18", "--json"])
    assert json.loads(res.stdout)["status"] == "already-present"
    res = runner.invoke(cli, ["weights", "verify", "resnet18", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["status"] == "ok"
    res = runner.invoke(cli, ["weights", "verify", "--json"])
    assert res.exit_code == 0 and [r["status"] for r in json.loads(res.stdout)] == ["ok"]
