"""`featmammo fit` and `featmammo predict` through the CLI, on tiny synthetic stores and images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from featmammo import store
from featmammo.errors import StoreError

CLASSES = ["normal", "benign", "malignant"]
PRE = {"image_size": 64, "normalize": "backbone"}


def _cli(args, catch=True):
    from featmammo.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=catch)


def _prov(name: str, dim: int, weights: str = "random") -> dict:
    spec = {"name": name, "arch": name, "layer": "penultimate", "dim": dim, "weights": weights,
            "weights_sha256": None, "seed": 0}  # fmt: skip
    return {"spec": spec, "layer": "penultimate", "weights": weights, "weights_sha256": None,
            "preprocess": PRE, "preprocess_fingerprint": "pre0123456789abc",
            "dtype": "float32"}  # fmt: skip


def _write_store(path: Path, *, alexnet_weights: str = "random", seed: int = 0) -> Path:
    """60 images of 20 patients (3 per patient), 3 classes, two backbones with class signal;
    patients P15..P19 form the official test split."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(20):
        for v in range(3):
            rows.append(
                {"image_id": f"img{p:02d}_{v}", "label": CLASSES[p % 3], "patient_id": f"P{p:02d}",
                 "laterality": "LR"[p % 2], "view": ["CC", "MLO", "CC"][v],
                 "split": "test" if p >= 15 else "train", "source": "synthetic", "path": ""}
            )  # fmt: skip
    return write_two_backbones(path, pd.DataFrame(rows), rng, alexnet_weights=alexnet_weights)


def write_two_backbones(path: Path, meta: pd.DataFrame, rng, *, alexnet_weights="random") -> Path:
    """A store of ``meta``'s images with resnet50 (16-d) and alexnet (8-d) embeddings that carry
    class signal (alexnet weaker)."""
    y = np.array([CLASSES.index(v) for v in meta["label"]])

    def emb(dim, strength):
        centres = rng.normal(size=(3, dim)) * strength
        return (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32)

    store.write(
        path, meta["image_id"], meta.drop(columns="image_id"),
        {"resnet50": emb(16, 1.0), "alexnet": emb(8, 0.6)},
        {"resnet50": _prov("resnet50", 16), "alexnet": _prov("alexnet", 8, alexnet_weights)},
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    d = tmp_path_factory.mktemp("fit")
    st = _write_store(d / "store.h5")
    run = d / "run"
    r = _cli(["fit", st, "-o", run, "--head", "logreg", "--head", "knn", "--cv", "3",
              "--n-boot", "20", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return st, run, json.loads(r.stdout[r.stdout.index("{") :])


def test_fit_writes_a_complete_leak_free_run(fitted):
    st, run, summary = fitted
    for name in ("predictions.csv", "leaderboard.csv", "metrics.json", "report.md", "config.json"):
        assert (run / name).stat().st_size > 0, name
    for fig in (
        "confusion_cv",
        "confusion_test",
        "roc_cv",
        "roc_test",
        "pr_test",
        "calibration_test",
    ):
        assert (run / "figures" / f"{fig}.png").exists(), fig
    lb = pd.read_csv(run / "leaderboard.csv")
    # features default to each backbone + hybrid; two heads; cv + test
    assert len(lb) == 3 * 2 * 2
    assert set(lb["head"]) == {"logreg", "knn"}
    assert set(lb["features"]) == {"resnet50", "alexnet", "hybrid"}
    assert set(lb["evaluation"]) == {"cv", "test"}
    for col in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr", "accuracy_ci_low",
                "accuracy_ci_high", "n_images", "n_patients", "majority_baseline"):  # fmt: skip
        assert col in lb.columns, col
    test = lb[lb["evaluation"] == "test"]
    assert (test["n_images"] == 15).all() and (test["n_patients"] == 5).all()
    hybrid = lb[(lb["features"] == "hybrid") & (lb["head"] == "logreg")]
    assert hybrid["balanced_accuracy"].min() > 0.6  # the embeddings carry class signal
    pred = pd.read_csv(run / "predictions.csv", dtype={"fold": str, "patient_id": str})
    assert list(pred.columns[:7]) == ["image_id", "patient_id", "fold", "features", "head",
                                      "y_true", "y_pred"]  # fmt: skip
    assert [c for c in pred.columns if c.startswith("p_")] == [f"p_{c}" for c in CLASSES]
    for _, g in pred.groupby(["features", "head"]):
        assert g["image_id"].is_unique and len(g) == 60
        folds = g.groupby("patient_id")["fold"].nunique()
        assert (folds == 1).all()  # every patient sits in exactly one fold (or the test part)
        tested = set(g.loc[g["fold"] == "test", "patient_id"])
        assert tested == {f"P{p}" for p in range(15, 20)}  # the official split
        assert set(g.loc[g["fold"] != "test", "fold"]) == {"1", "2", "3"}
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == CLASSES and config["cv"] == 3 and config["seed"] == 0
    assert config["split_audit"]["ok"] is True
    metrics = json.loads((run / "metrics.json").read_text())
    assert all(a["ok"] for a in metrics["audit"])
    assert all(c["ok"] for c in metrics["consistency"])
    comps = pd.read_csv(run / "comparisons.csv")
    assert set(zip(comps["features_a"], comps["features_b"], comps["head"], comps["evaluation"],
                   strict=True)) == {
        ("hybrid", b, h, e) for b in ("resnet50", "alexnet") for h in ("logreg", "knn")
        for e in ("cv", "test")
    }  # fmt: skip
    assert len(metrics["comparisons"]) == len(comps)
    models = sorted(p.name for p in (run / "models").glob("*.skops"))
    assert models == sorted(f"{f}__{h}.skops" for f in ("resnet50", "alexnet", "hybrid")
                            for h in ("logreg", "knn"))  # fmt: skip
    sidecar = json.loads((run / "models" / "hybrid__logreg.json").read_text())
    assert sidecar["classes"] == CLASSES
    # the final model's training images (predict marks rows it was trained on)
    assert sidecar["trained_image_ids"] == sorted(
        f"img{p:02d}_{v}" for p in range(15) for v in range(3)
    )
    assert sidecar["backbones"] == ["resnet50", "alexnet"]
    assert sidecar["blocks"] == {"resnet50": [0, 16], "alexnet": [16, 24]}
    prov = sidecar["backbone_provenance"]["alexnet"]
    assert prov["spec"]["weights"] == "random" and prov["preprocess"] == PRE
    assert sidecar["stores"][0]["path"] == str(st) and sidecar["stores"][0]["fingerprint"]
    assert sidecar["sha256"]
    report = (run / "report.md").read_text()
    assert "| class | precision % | recall % | F1 % | support |" in report
    assert len(summary["models"]) == 6 and len(summary["leaderboard"]) == 12


def test_predict_on_the_store_reproduces_the_test_predictions(fitted, tmp_path):
    st, run, _ = fitted
    out = tmp_path / "pred.csv"
    model = run / "models" / "hybrid__logreg.skops"
    r = _cli(["predict", model, st, "-o", out])
    assert r.exit_code == 0, r.output
    got = pd.read_csv(out).set_index("image_id")
    assert len(got) == 60 and list(got.columns[:2]) == ["path", "y_pred"]
    pred = pd.read_csv(run / "predictions.csv", dtype={"fold": str})
    mine = (pred["features"] == "hybrid") & (pred["head"] == "logreg") & (pred["fold"] == "test")
    test = pred[mine].set_index("image_id")
    cols = [f"p_{c}" for c in CLASSES]
    np.testing.assert_allclose(
        got.loc[test.index, cols].to_numpy(), test[cols].to_numpy(), atol=1e-9
    )
    assert (got.loc[test.index, "y_pred"] == test["y_pred"]).all()


def test_predict_refuses_a_store_with_other_weights(fitted, tmp_path):
    _, run, _ = fitted
    other = _write_store(tmp_path / "other.h5", alexnet_weights="imagenet:AlexNet_Weights.X")
    r = _cli(["predict", run / "models" / "hybrid__logreg.skops", other])
    assert r.exit_code != 0
    assert isinstance(r.exception, StoreError)
    assert "alexnet" in str(r.exception) and "refusing" in str(r.exception)
    # a single-backbone model does not need the mismatching block
    r = _cli(["predict", run / "models" / "resnet50__logreg.skops", other, "--json"])
    assert r.exit_code == 0, r.output


def test_fit_class_scheme_toml_config_and_grouped_split(fitted, tmp_path):
    st, _, _ = fitted
    cfg = tmp_path / "fit.toml"
    cfg.write_text(
        '[fit]\nclasses = "benign,malignant"\ntest_split = "grouped"\ncv = 4\nn_boot = 10\n'
        'features = ["resnet50"]\nfigures = false\n[fit.head_params.logreg]\nC = 0.5\n'
    )
    run = tmp_path / "run"
    r = _cli(["fit", st, "-o", run, "--config", cfg, "--cv", "2", "--head", "logreg"])
    assert r.exit_code == 0, r.output
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == ["benign", "malignant"]
    assert config["dropped_rows"] == {"normal": 21}  # 7 normal patients x 3 images
    assert config["cv"] == 2  # the command line wins over the file
    assert config["test_split"] == "grouped" and config["head_params"] == {"logreg": {"C": 0.5}}
    assert not (run / "figures").exists()
    pred = pd.read_csv(run / "predictions.csv", dtype={"fold": str})
    assert set(pred["y_true"]) == {"benign", "malignant"} and len(pred) == 39
    assert [c for c in pred.columns if c.startswith("p_")] == ["p_benign", "p_malignant"]
    assert (pred.groupby("patient_id")["fold"].nunique() == 1).all()
    sidecar = json.loads((run / "models" / "resnet50__logreg.json").read_text())
    assert sidecar["head_params"] == {"C": 0.5}
    lb = pd.read_csv(run / "leaderboard.csv")
    assert set(lb["positive_class"]) == {"malignant"} and len(lb) == 2


def test_fit_cv_only_and_bad_options(fitted, tmp_path):
    st, _, _ = fitted
    run = tmp_path / "cvonly"
    r = _cli(["fit", st, "-o", run, "--features", "alexnet", "--head", "logreg",
              "--test-split", "none", "--cv", "2", "--n-boot", "0", "--no-figures"])  # fmt: skip
    assert r.exit_code == 0, r.output
    lb = pd.read_csv(run / "leaderboard.csv")
    assert list(lb["evaluation"]) == ["cv"] and lb["n_images"].iloc[0] == 60
    assert np.isnan(lb["accuracy_ci_low"].iloc[0])  # no bootstrap asked for
    r = _cli(["fit", st, "-o", tmp_path / "x", "--head", "no-such-head"])
    assert r.exit_code != 0 and "unknown head" in str(r.exception)
    r = _cli(["fit", st, "-o", tmp_path / "y", "--cv", "0", "--test-split", "none"])
    assert r.exit_code != 0 and "evaluates nothing" in str(r.exception)


# ------------------------------------------------------------------------------ end to end


def _png_manifest(folder: Path) -> Path:
    """24 tiny PNG phantoms of 12 patients; malignant ones carry a bright spot.

    Tissue sits on the left of every image, but odd rows say laterality "R": extraction flips them,
    so predicting them needs the manifest's side, not the side inferred from the pixels."""
    from PIL import Image

    rng = np.random.default_rng(5)
    rows = []
    yy, xx = np.mgrid[:64, :64]
    for i in range(24):
        label = ["benign", "malignant"][(i // 2) % 2]
        blob = np.exp(-((yy - 32) ** 2 + (xx - 22) ** 2) / (2 * 13.0**2))
        if label == "malignant":
            blob += 0.8 * np.exp(-((yy - 30) ** 2 + (xx - 25) ** 2) / 8.0)
        img = np.clip(blob + 0.1 * rng.random((64, 64)), 0, 1)
        path = folder / f"im{i:02d}.png"
        Image.fromarray((img * 255).astype(np.uint8)).save(path)
        rows.append(
            {"image_id": f"im{i:02d}", "path": str(path), "label": label,
             "patient_id": f"Q{i // 2:02d}", "laterality": "LR"[i % 2], "view": "CC",
             "split": "test" if i >= 16 else "train", "source": "synthetic"}
        )  # fmt: skip
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def test_extract_fit_predict_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    manifest = _png_manifest(tmp_path)
    st = tmp_path / "store.h5"
    r = _cli(["extract", manifest, "-o", st, "-b", "resnet18", "--weights", "random",
              "--image-size", "64", "--device", "cpu"], catch=False)  # fmt: skip
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    r = _cli(["fit", st, "-o", run, "--head", "logreg", "--cv", "2", "--n-boot", "10",
              "--no-figures"], catch=False)  # fmt: skip
    assert r.exit_code == 0, r.output
    images_csv = pd.read_csv(run / "images.csv")  # paths for the report's test-image grid
    assert images_csv.set_index("image_id").loc["im16", "path"] == str(tmp_path / "im16.png")
    model = run / "models" / "resnet18__logreg.skops"
    sidecar = json.loads(model.with_suffix(".json").read_text())
    assert sidecar["backbone_provenance"]["resnet18"]["spec"]["weights"] == "random"
    pred = pd.read_csv(run / "predictions.csv", dtype={"fold": str}).set_index("image_id")
    test = pred[pred["fold"] == "test"]
    cols = ["p_benign", "p_malignant"]
    # two image files, read + preprocessed + embedded from the recorded config
    images = [tmp_path / "im16.png", tmp_path / "im18.png"]  # laterality L, as inferred
    out = tmp_path / "images.csv"
    r = _cli(["predict", model, *images, "-o", out, "--device", "cpu"], catch=False)
    assert r.exit_code == 0, r.output
    got = pd.read_csv(out, keep_default_na=False).set_index("image_id")
    assert list(got.index) == ["im16", "im18"] and (got["error"] == "").all()
    np.testing.assert_allclose(
        got[cols].to_numpy(float), test.loc[["im16", "im18"], cols].to_numpy(), atol=1e-5
    )
    assert list(got["y_pred"]) == list(test.loc[["im16", "im18"], "y_pred"])
    # the manifest gives every image its side (odd rows are "R"), as at extraction
    r = _cli(["predict", model, manifest, "--json"], catch=False)
    rows = pd.DataFrame(json.loads(r.stdout[r.stdout.index("[") :])).set_index("image_id")
    np.testing.assert_allclose(
        rows.loc[test.index, cols].to_numpy(float), test[cols].to_numpy(), atol=1e-5
    )
    # a loose right-breast file matches only when its side is given
    r = _cli(["predict", model, tmp_path / "im19.png", "--laterality", "R", "--json"], catch=False)
    row = json.loads(r.stdout[r.stdout.index("[") :])[0]
    np.testing.assert_allclose([row[c] for c in cols], test.loc["im19", cols], atol=1e-5)
    # the store rows give the same predictions
    r = _cli(["predict", model, st, "--json"], catch=False)
    rows = pd.DataFrame(json.loads(r.stdout[r.stdout.index("[") :])).set_index("image_id")
    np.testing.assert_allclose(
        rows.loc[test.index, cols].to_numpy(float), test[cols].to_numpy(), atol=1e-9
    )
    # an unreadable file gets a row with its error, the others are still predicted
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    r = _cli(["predict", model, images[0], bad, "--json"], catch=False)
    rows = json.loads(r.stdout[r.stdout.index("[") :])
    assert rows[0]["error"] == "" and rows[0]["y_pred"] in ("benign", "malignant")
    assert rows[1]["error"] and rows[1]["y_pred"] == ""


def test_untuned_outer_folds_are_recorded_and_reported(fitted, tmp_path, caplog):
    """--inner-cv 13: every CV fold's training side (12 patients) is too small for the inner CV,
    the final fit (15 patients) is not: tuning.csv notes it, the report says it up front, and the
    log names the run folder, never the staging folder (issues 16.6, 19)."""
    import logging

    from featmammo.fit import fit

    st, _, _ = fitted
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        fit([st], run, features=["resnet50"], heads=["logreg"], cv=5, inner_cv=13, n_boot=0,
            figures=False, tune_grid="small")  # fmt: skip
    tuning = pd.read_csv(run / "tuning.csv", dtype=str, keep_default_na=False)
    assert tuning.columns[-1] == "note"
    cv_rows = tuning[tuning["fold"] != "test"]
    assert len(cv_rows) == 5 and cv_rows["note"].str.startswith("untuned: ").all()
    assert (tuning.loc[tuning["fold"] == "test", "note"] == "").all()
    text = (run / "report.md").read_text()
    assert "- Tuning: untuned folds: 5 features x head x fold fit(s)" in text
    assert "every head tuned inside each outer fold" not in text
    messages = [r.getMessage() for r in caplog.records]
    assert not any(".partial-" in m for m in messages)
    assert any(m.startswith(f"{run}: fitting resnet50 / logreg") for m in messages)
