"""``featmammo extract``'s own words: a folder instead of a manifest, failures counted per image and
per image x backbone pair (as ``featmammo info`` counts them), images embedded again because their
files changed."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from featmammo.cli.main import cli  # noqa: E402

ARGS = ["--weights", "random", "--image-size", "64", "--device", "cpu", "--no-cache",
        "--workers", "0"]  # fmt: skip


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATMAMMO_CACHE", str(tmp_path / "cache"))


def _manifest(folder, n=3, bad=True):
    from test_extract_files import _pgm

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        _pgm(folder / f"img{i}.pgm", seed=i)
        rows.append({"image_id": f"img{i}", "path": f"img{i}.pgm", "label": "benign"})
    if bad:
        (folder / "broken.pgm").write_bytes(b"P5\n48 48\n255\n" + b"\0" * 10)  # truncated
        rows.append({"image_id": "broken", "path": "broken.pgm", "label": "benign"})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def test_a_folder_is_refused_with_the_manifest_commands(tmp_path):
    (tmp_path / "images").mkdir()
    r = CliRunner().invoke(cli, ["extract", str(tmp_path / "images"), "-o", str(tmp_path / "s.h5")])
    assert r.exit_code == 2
    assert "is a folder; extract reads a manifest CSV" in r.output
    assert "featmammo manifest folder ROOT -o manifest.csv" in r.output
    assert "cbis-ddsm|" in r.output and "|vindr" in r.output
    assert "exists: pass that" not in r.output
    _manifest(tmp_path / "set", bad=False)
    r = CliRunner().invoke(cli, ["extract", str(tmp_path / "set"), "-o", str(tmp_path / "s.h5")])
    assert r.exit_code == 2
    assert f"{tmp_path / 'set' / 'manifest.csv'} exists: pass that" in r.output
    assert not (tmp_path / "s.h5").exists()


def test_failures_are_counted_per_image_and_per_pair(tmp_path):
    manifest = _manifest(tmp_path / "set")
    out = tmp_path / "s.h5"
    r = CliRunner().invoke(
        cli, ["extract", str(manifest), "-o", str(out), "-b", "alexnet", "-b", "resnet18", *ARGS]
    )
    assert r.exit_code == 0, r.output
    assert "4 images: 3 done, 0 skipped, 1 image failed (2 image x backbone pairs); " in r.output
    assert "0 re-embedded because their files changed" in r.output
    info = CliRunner().invoke(cli, ["info", str(out), "--json"])
    assert len(json.loads(info.stdout)["failed"]) == 2  # what info counts: pairs
    r = CliRunner().invoke(
        cli, ["extract", str(manifest), "-o", str(out), "-b", "alexnet", "-b", "resnet18", *ARGS,
              "--json"],
    )  # fmt: skip
    summary = json.loads(r.stdout)
    assert (summary["n_failed"], summary["n_failures"], summary["n_reembedded"]) == (1, 2, 0)


def test_re_embedded_images_are_said(tmp_path, monkeypatch):
    from test_extract_files import _replace_keeping_size_and_mtime

    from featmammo.extract import files

    monkeypatch.setattr(files, "RACY_NS", 0)  # files written just now are kept in the table

    manifest = _manifest(tmp_path / "set", bad=False)
    out = tmp_path / "s.h5"
    cmd = ["extract", str(manifest), "-o", str(out), "-b", "alexnet", *ARGS]
    r = CliRunner().invoke(cli, cmd)
    assert r.exit_code == 0
    # a first run reads every file once before the first batch: said, not silent minutes
    assert "file identities: reading 3 of 3 files once for their digests" in r.output
    _replace_keeping_size_and_mtime(tmp_path / "set" / "img1.pgm", seed=99)
    r = CliRunner().invoke(cli, cmd)
    assert r.exit_code == 0, r.output
    assert "file identities: reading 1 of 3 files" in r.output
    assert "3 images: 1 done, 2 skipped, 0 images failed (0 image x backbone pairs); " in r.output
    assert "1 re-embedded because their files changed" in r.output
    assert os.path.exists(out)


def test_precision_is_a_flag(tmp_path):
    manifest = _manifest(tmp_path / "set", n=2, bad=False)
    out = tmp_path / "s.h5"
    cmd = ["extract", str(manifest), "-o", str(out), "-b", "alexnet", *ARGS]
    r = CliRunner().invoke(cli, [*cmd, "--precision", "bfloat16"])
    assert r.exit_code != 0 and "only used on CUDA" in str(r.exception)
    r = CliRunner().invoke(cli, [*cmd, "--precision", "float32"])
    assert r.exit_code == 0, r.output
    assert "float32" in r.output
