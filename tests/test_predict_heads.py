"""``featmammo predict`` with fit heads (issues 19.3 and 20): the rows a model was trained on are
marked (``trained_on`` + a WARNING), old ``.joblib`` models load only with ``--trust-pickle``, and
a backbone recorded with GeM pooling is rebuilt with it. No torch: random embeddings in a store."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featmammo import store
from featmammo.errors import UntrustedModelError


def write_store(path: Path, meta: pd.DataFrame, dim: int = 8) -> Path:
    """A store of ``meta``'s images (``image_id`` + manifest columns) with random ``dim``-d
    resnet50 and alexnet embeddings (fit reads the ids, labels and patients)."""
    rng = np.random.default_rng(0)
    prov = {
        name: {"spec": {"name": name, "arch": name, "layer": "penultimate", "dim": dim,
                        "weights": "random", "weights_sha256": None, "seed": 0},
               "weights": "random", "weights_sha256": None, "preprocess": {"image_size": 64},
               "preprocess_fingerprint": "p0", "dtype": "float32"}
        for name in ("resnet50", "alexnet")
    }  # fmt: skip
    arrays = {n: rng.normal(size=(len(meta), dim)).astype(np.float32) for n in prov}
    store.write(path, meta["image_id"], meta.drop(columns="image_id"), arrays, prov)
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from featmammo.fit import fit

    d = tmp_path_factory.mktemp("heads")
    meta = pd.DataFrame(
        {"image_id": [f"i{k:02d}" for k in range(24)], "label": ["benign", "malignant"] * 12,
         "patient_id": [f"P{k // 2:02d}" for k in range(24)], "laterality": "L", "view": "CC",
         "split": "", "source": "s", "path": ""}
    )  # fmt: skip
    st = write_store(d / "s.h5", meta)
    fit(st, d / "run", heads=["logreg"], cv=2, test_split="grouped", tune="none", n_boot=20,
        figures=False)  # fmt: skip
    return st, d / "run"


def test_predict_on_a_store_marks_the_training_rows(fitted, caplog):
    """Before: the model's own training rows were scored beside the test rows, unmarked."""
    from featmammo.fit.predict import predict

    st, run = fitted
    with caplog.at_level(logging.WARNING, logger="featmammo"):
        got = predict(run / "models" / "hybrid__logreg.skops", [st])
    pred = pd.read_csv(run / "predictions.csv", dtype={"fold": str})
    test = set(pred.loc[pred.fold == "test", "image_id"])
    assert 0 < len(test) < 24
    expected = ~got["image_id"].isin(test)
    assert (got["trained_on"].astype(bool) == expected).all()
    n = int(expected.sum())
    assert f"{n} of 24 predicted row(s) are images model hybrid__logreg.skops was trained on" in (
        caplog.text
    )


def test_sidecar_ids_win_and_unknown_stays_empty(fitted, tmp_path):
    from featmammo.fit.predict import head_trained_ids, mark_trained

    st, run = fitted
    sidecar = json.loads((run / "models" / "hybrid__logreg.json").read_text())
    assert head_trained_ids(run / "models" / "x.skops", {"trained_image_ids": ["a"]}) == {
        "train": {"a"}
    }
    from_folder = head_trained_ids(run / "models" / "hybrid__logreg.skops", {})
    assert from_folder and len(from_folder["train"]) < 24
    if "trained_image_ids" in sidecar:  # fit records them (evaluation): both ways agree
        assert head_trained_ids(tmp_path / "m.skops", sidecar) == from_folder
    bare = {k: v for k, v in sidecar.items() if k != "trained_image_ids"}
    moved = tmp_path / "loose.skops"  # copied out of its run folder, no ids: cannot tell
    assert head_trained_ids(moved, bare) is None
    out = mark_trained(pd.DataFrame({"image_id": ["a", "b"]}), None, np.ones(2, bool), "m")
    assert out["trained_on"].isna().all()


def test_old_joblib_model_needs_trust_pickle(fitted, tmp_path, caplog):
    import joblib
    from click.testing import CliRunner

    from featmammo import heads
    from featmammo.cli.main import cli
    from featmammo.hashing import sha256_file

    st, run = fitted
    model, sidecar = heads.load(run / "models" / "resnet50__logreg.skops")
    old = tmp_path / "models"
    old.mkdir()
    joblib.dump(model, old / "resnet50__logreg.joblib")
    legacy = {**sidecar, "format_version": 1, "model_file": "resnet50__logreg.joblib",
              "sha256": sha256_file(old / "resnet50__logreg.joblib"), "files": {}}  # fmt: skip
    (old / "resnet50__logreg.json").write_text(json.dumps(legacy))
    for name in ("images.csv", "predictions.csv", "config.json"):  # the run folder beside it
        shutil.copy(run / name, tmp_path / name)
    r = CliRunner().invoke(cli, ["predict", str(old / "resnet50__logreg.joblib"), str(st)])
    assert r.exit_code != 0 and isinstance(r.exception, UntrustedModelError)
    assert "--trust-pickle" in str(r.exception)
    r = CliRunner().invoke(
        cli, ["predict", str(old / "resnet50__logreg.joblib"), str(st), "--trust-pickle", "--json"]
    )
    assert r.exit_code == 0, r.output
    assert "unpickling a .joblib model because trust_pickle was given" in r.stderr
    rows = pd.DataFrame(json.loads(r.stdout))
    assert len(rows) == 24 and rows["trained_on"].notna().all()


def test_rebuild_passes_the_recorded_pooling(monkeypatch):
    from types import SimpleNamespace

    import featmammo.backbones as backbones
    from featmammo.errors import WeightsError
    from featmammo.fit.predict import rebuild_backbones

    calls = []

    def fake_make(name, **kw):
        calls.append(kw)
        spec = {"name": name, "arch": name, "layer": "avgpool", "dim": 4, "weights": "random",
                "weights_sha256": None, "seed": 0, "pool": kw.get("pool", "avg")}  # fmt: skip
        return SimpleNamespace(spec=SimpleNamespace(to_dict=lambda: spec))

    monkeypatch.setattr(backbones, "make", fake_make)
    spec = {"name": "resnet50", "arch": "resnet50", "layer": "avgpool", "dim": 4,
            "weights": "random", "seed": 0, "pool": "gem"}  # fmt: skip
    sidecar = {"blocks": {"resnet50": [0, 4]},
               "backbone_provenance": {"resnet50": {"spec": spec}}}  # fmt: skip
    rebuild_backbones(sidecar)
    assert calls[-1]["pool"] == "gem"
    old = {**spec}
    old.pop("pool")  # recorded before pooling was a choice: average
    rebuild_backbones({**sidecar, "backbone_provenance": {"resnet50": {"spec": old}}})
    assert calls[-1]["pool"] == "avg"

    def avg_only(name, **kw):
        return fake_make(name, **{**kw, "pool": "avg"})

    monkeypatch.setattr(backbones, "make", avg_only)
    with pytest.raises(WeightsError, match="pool"):
        rebuild_backbones(sidecar)
