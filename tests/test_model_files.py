"""Model files that load without executing code: skops for the pipeline (trusted types only),
XGBoost's native format, torch state dicts loaded with weights_only; pickles only when trusted."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from featmammo import heads
from featmammo.errors import ConfigError, UntrustedModelError, WeightsError
from featmammo.heads import io as hio

#: parameters that keep each head's fit to a fraction of a second
SMALL = {
    "refine-mlp": {"max_epochs": 3},
    "xgboost": {"n_estimators": 5},
    "rf": {"n_estimators": 5},
    "mlp": {"max_iter": 5},
}


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 12)).astype(np.float32)
    y = np.array(["benign", "malignant", "normal", "benign"] * 20)
    return X, y, np.repeat(np.arange(40), 2)


def _fitted(name, **kwargs):
    X, y, g = _data()
    model = heads.make(name, blocks={"a": slice(0, 6), "b": slice(6, 12)}, **SMALL.get(name, {}),
                       **kwargs)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        heads.fit_head(model, X, y, g)
    return model


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", heads.available())
def test_every_head_round_trips_with_identical_predictions(tmp_path, name):
    model = _fitted(name)
    path = heads.save(model, tmp_path / "models" / "hybrid__x", {"head": name})
    assert path.name == "hybrid__x.skops"
    files = sorted(p.name for p in path.parent.iterdir())
    assert not any(f.endswith((".joblib", ".pkl")) for f in files), files
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["format_version"] == 2 and info["model_file"] == "hybrid__x.skops"
    assert set(files) == {"hybrid__x.skops", "hybrid__x.json", *info["files"]}
    for part, digest in info["files"].items():
        assert digest == _sha(path.parent / part)
    if heads.canonical_name(name) == "xgboost":
        assert any(p.endswith(".xgb.ubj") for p in info["files"]), files
    if heads.canonical_name(name) == "refine-mlp":
        assert any(p.endswith(".torch.pt") for p in info["files"]), files
    loaded, sidecar = heads.load(path)
    X, _, _ = _data()
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert sidecar["head"] == name
    # the stem, the sidecar and the old .joblib name all resolve to the saved model
    for alias in ("hybrid__x", "hybrid__x.json", "hybrid__x.joblib"):
        again, _ = heads.load(path.parent / alias)
        np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))


def test_block_pca_pipeline_round_trips(tmp_path):
    model = _fitted("logreg", block_pca=2)
    loaded, _ = heads.load(heads.save(model, tmp_path / "pca"))
    X, _, _ = _data()
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_trusted_featmammo_types_come_from_the_registry():
    names = hio.featmammo_types()
    assert "featmammo.heads.scaling.BlockScaler" in names
    assert "featmammo.heads.scaling.BlockPCA" in names
    assert "featmammo.heads.refine.RefineMLPClassifier" in names
    assert "featmammo.heads.wrappers.BalancedClassifier" in names
    assert all(n.startswith("featmammo.") for n in names)


# --- hostile files -------------------------------------------------------------------------------


class _Payload:
    """Unpickling (or building) this writes ``marker``: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))

    def __setstate__(self, state):
        Path(state["marker"]).write_text("ran")


def _legacy_sidecar(model_path: Path) -> None:
    info = {
        "format": hio.FORMAT, "format_version": 1, "model_file": model_path.name,
        "sha256": _sha(model_path), "classes": ["benign", "malignant"],
    }  # fmt: skip
    model_path.with_suffix(".json").write_text(json.dumps(info))


def test_malicious_joblib_does_not_run_without_trust_pickle(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "models" / "hybrid__logreg.joblib"
    evil.parent.mkdir()
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    _legacy_sidecar(evil)  # the attacker ships a matching sidecar: the hash check passes
    with pytest.raises(UntrustedModelError) as err:
        heads.load(evil)
    assert str(evil) in str(err.value) and "trust_pickle" in str(err.value)
    assert not marker.exists()
    # the same file through its stem or sidecar: still refused
    for alias in (evil.with_suffix(""), evil.with_suffix(".json")):
        with pytest.raises(UntrustedModelError):
            heads.load(alias)
    assert not marker.exists()
    # control: the payload is real, it runs when the user says they trust the file
    heads.load(evil, trust_pickle=True)
    assert marker.exists()


def test_pickle_renamed_to_skops_is_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "m.skops"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    info = {"format": hio.FORMAT, "format_version": 2, "model_file": evil.name,
            "sha256": _sha(evil), "files": {}}  # fmt: skip
    evil.with_suffix(".json").write_text(json.dumps(info))
    with pytest.raises(WeightsError, match="not a readable skops model file"):
        heads.load(evil)
    assert not marker.exists()


def test_skops_file_with_an_untrusted_type_is_refused_naming_it(tmp_path):
    import skops.io as sio

    marker = tmp_path / "pwned"
    model = _fitted("logreg")
    model.steps[0][1].extra = _Payload.__new__(_Payload)
    model.steps[0][1].extra.marker = str(marker)
    evil = tmp_path / "m.skops"
    evil.write_bytes(sio.dumps(model))
    info = {"format": hio.FORMAT, "format_version": 2, "model_file": evil.name,
            "sha256": _sha(evil), "files": {}}  # fmt: skip
    evil.with_suffix(".json").write_text(json.dumps(info))
    with pytest.raises(UntrustedModelError) as err:
        heads.load(evil)
    message = str(err.value)
    assert str(evil) in message and "_Payload" in message
    assert not marker.exists()
    # control: skops told to trust the type builds it, and its code runs
    sio.load(evil, trusted=sio.get_untrusted_types(file=evil))
    assert marker.exists()


def test_skops_file_naming_a_function_is_refused(tmp_path):
    import skops.io as sio

    model = _fitted("logreg")
    model.steps[0][1].hook = os.system
    evil = tmp_path / "m.skops"
    evil.write_bytes(sio.dumps(model))
    info = {"format": hio.FORMAT, "format_version": 2, "model_file": evil.name,
            "sha256": _sha(evil), "files": {}}  # fmt: skip
    evil.with_suffix(".json").write_text(json.dumps(info))
    with pytest.raises(UntrustedModelError, match="system"):
        heads.load(evil)


def test_part_file_outside_the_sidecar_is_refused(tmp_path):
    model = _fitted("xgboost")
    path = heads.save(model, tmp_path / "m")
    info = json.loads(path.with_suffix(".json").read_text())
    (part,) = info["files"]
    info["files"] = {}  # the pipeline still names the part; the sidecar no longer vouches for it
    path.with_suffix(".json").write_text(json.dumps(info))
    with pytest.raises(UntrustedModelError, match="does not list"):
        heads.load(path)
    info["files"] = {f"../{part}": _sha(tmp_path / part)}
    path.with_suffix(".json").write_text(json.dumps(info))
    with pytest.raises(UntrustedModelError, match="outside"):
        heads.load(path)


@pytest.mark.parametrize("which", ["model", "part"])
def test_sha256_checked_for_every_file(tmp_path, which):
    path = heads.save(_fitted("xgboost"), tmp_path / "m")
    info = json.loads(path.with_suffix(".json").read_text())
    target = path if which == "model" else tmp_path / next(iter(info["files"]))
    target.write_bytes(target.read_bytes() + b"\0")
    with pytest.raises(WeightsError, match="SHA-256 mismatch"):
        heads.load(path)


def test_legacy_joblib_model_loads_only_when_trusted_with_a_warning(tmp_path, caplog):
    import joblib

    model = _fitted("logreg")
    old = tmp_path / "hybrid__logreg.joblib"
    joblib.dump(model, old)
    _legacy_sidecar(old)
    with pytest.raises(UntrustedModelError, match="pickle"):
        heads.load(old)
    with caplog.at_level(logging.WARNING, logger="featmammo"):
        loaded, info = heads.load(old, trust_pickle=True)
    assert any("trust_pickle" in r.getMessage() for r in caplog.records)
    X, _, _ = _data()
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert info["format_version"] == 1


def test_save_refuses_what_load_would_refuse(tmp_path):
    model = _fitted("logreg")
    model.steps[0][1].hook = os.system
    with pytest.raises(ConfigError, match="system"):
        heads.save(model, tmp_path / "m")
    assert not list(tmp_path.iterdir())


def test_a_renamed_copy_loads(tmp_path):
    import shutil

    model = _fitted("xgboost")
    path = heads.save(model, tmp_path / "run" / "hybrid__xgboost")
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in hio.model_files(path):  # the model, its part file(s) and the sidecar
        name = f.name.replace("hybrid__xgboost.skops", "m.skops").replace(
            "hybrid__xgboost.json", "m.json"
        )
        shutil.copy(f, copy / name)
    loaded, _ = heads.load(copy / "m.skops")
    X, _, _ = _data()
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


@pytest.mark.parametrize(
    "features", ["mammoclip__data_mc_b2-model-best-epoch-10.tar", "timm_convnext_atto.d2_in1k"]
)
def test_heads_of_a_features_name_with_a_dot_keep_their_own_files(tmp_path, features):
    """fit names a model <features>__<head>; with_suffix replaced '.tar__logreg' (the part after
    the name's own dot), so every head of that features set wrote one file and the last won."""
    from featmammo.fit.outputs import model_filename

    X, _, _ = _data()
    models = {h: _fitted(h) for h in ("logreg", "knn")}
    paths = {h: heads.save(m, tmp_path / model_filename(features, h)) for h, m in models.items()}
    for h, path in paths.items():
        assert path.name == model_filename(features, h)
        assert hio._paths(path)[1].name == f"{features}__{h}.json"
        loaded, info = heads.load(path)
        assert info["model_file"] == path.name
        np.testing.assert_array_equal(loaded.predict_proba(X), models[h].predict_proba(X))
    assert len(list(tmp_path.glob("*.skops"))) == 2 and len(list(tmp_path.glob("*.json"))) == 2
