"""Weights live where torchvision keeps them; `featmammo weights fetch` downloads on purpose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from featmammo.backbones import manage, weights
from featmammo.cli.main import cli
from featmammo.errors import WeightsError
from featmammo.hashing import sha256_file


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _served_file(tmp_path: Path, arch: str = "alexnet") -> weights.TorchvisionWeights:
    """A real alexnet state dict 'served' from a file:// URL under its torchvision-style name."""
    from torchvision.models import alexnet

    src_dir = tmp_path / "server"
    src_dir.mkdir()
    tmp = src_dir / "plain.pth"
    torch.save(alexnet(weights=None).state_dict(), tmp)
    sha = sha256_file(tmp)
    named = src_dir / f"{arch}-{sha[:8]}.pth"
    tmp.rename(named)
    real = manage.imagenet_weights(arch)
    return weights.TorchvisionWeights(
        arch=real.arch, enum_name=real.enum_name, member=real.member, url=named.as_uri()
    )


def test_checkpoints_dir_follows_torch(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weights.checkpoints_dir() == tmp_path / ".cache" / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.checkpoints_dir() == tmp_path / "xdg" / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert weights.checkpoints_dir() == tmp_path / "th" / "hub" / "checkpoints"
    # the same folder torchvision itself downloads into, independent of the working directory
    monkeypatch.chdir(tmp_path)
    assert weights.checkpoints_dir() == Path(torch.hub.get_dir()) / "checkpoints"


def test_missing_weights_message_names_the_commands(torch_home):
    with pytest.raises(WeightsError) as err:
        weights.ensure_torchvision_file(manage.imagenet_weights("resnet50"))
    msg = str(err.value)
    assert "featmammo weights fetch resnet50" in msg
    assert "--weights random" in msg
    assert "weights='random'" not in msg
    assert str(torch_home / "hub" / "checkpoints") in msg


def test_fetch_downloads_and_verifies(torch_home, tmp_path, monkeypatch):
    tw = _served_file(tmp_path)
    monkeypatch.setattr(manage, "imagenet_weights", lambda name: tw)
    result = CliRunner().invoke(cli, ["weights", "fetch", "alexnet", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    dest = torch_home / "hub" / "checkpoints" / tw.file_name
    assert rows[0]["status"] == "downloaded" and Path(rows[0]["dest"]) == dest
    assert sha256_file(dest) == rows[0]["sha256"]
    assert rows[0]["sha256"].startswith(tw.sha256_prefix)
    # the file is now where make(weights="imagenet") looks
    path, sha = weights.ensure_torchvision_file(tw)
    assert path == dest and sha == rows[0]["sha256"]
    again = manage.fetch(["alexnet"], progress=False)
    assert again[0]["status"] == "already-present"


def test_fetch_refuses_a_corrupt_download(torch_home, tmp_path, monkeypatch):
    tw = _served_file(tmp_path)
    served = Path(tw.url.removeprefix("file://"))
    served.write_bytes(served.read_bytes()[:-10] + b"0123456789")  # same name, other bytes
    monkeypatch.setattr(manage, "imagenet_weights", lambda name: tw)
    result = CliRunner().invoke(cli, ["weights", "fetch", "alexnet"])
    assert result.exit_code != 0
    assert "download of" in result.output and tw.file_name in result.output
    folder = torch_home / "hub" / "checkpoints"
    assert not (folder / tw.file_name).exists()
    assert not [p for p in folder.glob("*") if p.is_file()] if folder.exists() else True


def test_fetch_unknown_name_downloads_nothing(torch_home):
    result = CliRunner().invoke(cli, ["weights", "fetch", "resnet50", "notanet"])
    assert result.exit_code != 0
    assert "notanet" in result.output
    assert not (torch_home / "hub" / "checkpoints").exists()


def test_fetch_draws_no_bar_off_a_terminal(monkeypatch):
    """Logs and CI stay clean: the download bar is drawn only where cli.options.bar_enabled()."""
    seen = []

    def fake_fetch(names, *, progress=True):
        seen.append(progress)
        return []

    monkeypatch.setattr(manage, "fetch", fake_fetch)
    res = CliRunner().invoke(cli, ["weights", "fetch", "resnet50"])  # not a terminal
    assert res.exit_code == 0, res.output
    monkeypatch.setattr("featmammo.cli.weights.bar_enabled", lambda: True)
    CliRunner().invoke(cli, ["weights", "fetch", "resnet50"])
    CliRunner().invoke(cli, ["weights", "fetch", "resnet50", "--no-progress"])
    assert seen == [False, True, False]
