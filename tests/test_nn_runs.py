"""HybridNet runs beside fit runs (issue 20): ``train --test-split`` (fit's rule and seed), the
validation split called validation, epochs numbered from 1, ``--keep-last``, patient ids in the
checkpoint, ``predict CHECKPOINT`` end to end with ``trained_on``, and ``compare`` over a fit run
and a train run (random weights, AlexNet trunk, 64 px, a MIAS-like manifest without split=test)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

# one torch thread for the module (on a shared 2-core machine spinning threads cost more than the
# work); FEATMAMMO_CACHE is a session folder (conftest)
from test_nn import FAST as NN_FAST  # noqa: E402
from test_nn import _one_thread  # noqa: E402, F401

from featmammo.errors import ConfigError, ManifestError  # noqa: E402
from featmammo.nn import train  # noqa: E402

SIZE = 64
FAST = {**NN_FAST, "epochs": 1, "val_fraction": 0.3, "trunks": ("alexnet",)}


def write_manifest(root: Path, n: int = 24, split: str = "") -> Path:
    """``n`` phantom PNGs (2 views per patient, benign/malignant), like MIAS: no split=test."""
    from PIL import Image

    from featmammo.datasets.synthetic import make_dataset

    ds = make_dataset(n, seed=5, size=(96, 64), classes=("benign", "malignant"), difficulty=0.2)
    rows = []
    for i, r in ds.meta.iterrows():
        img = (ds.images[i].astype(np.float32) / r["max_value"] * 255).round().astype(np.uint8)
        Image.fromarray(img).save(root / f"{r['image_id']}.png")
        rows.append(
            {"image_id": r["image_id"], "path": f"{r['image_id']}.png", "label": r["label"],
             "patient_id": r["patient_id"], "laterality": r["laterality"], "view": r["view"],
             "split": split, "source": "synthetic"}
        )  # fmt: skip
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def mias_like(tmp_path_factory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("mias"))


@pytest.fixture(scope="module")
def grouped_run(mias_like, tmp_path_factory):
    """One epoch with --test-split grouped; the log records kept for the naming checks."""
    run = tmp_path_factory.mktemp("runs") / "hybridnet"
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    root = logging.getLogger("featmammo")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        result = train(mias_like, run, test_split="grouped", **FAST)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return run, result, [(r.name, r.levelno, r.getMessage()) for r in records]


# -- the test split: fit's rule ----------------------------------------------------------------


def test_official_split_without_test_rows_is_refused(mias_like, tmp_path):
    """The MIAS situation: before, train silently held out 0 test images (empty leaderboard)."""
    with pytest.raises(ManifestError, match="no manifest row has split == 'test'.*grouped"):
        train(mias_like, tmp_path / "r", **FAST)
    assert not (tmp_path / "r" / "cache").exists()  # refused before any decoding


def test_grouped_test_split_holds_out_fits_patients(mias_like, grouped_run):
    """The same manifest, seed and test size give train and fit the same test patients, whatever
    the row order (fit orders rows by image id)."""
    from featmammo.fit.splits import _assign_splits
    from featmammo.nn.data import held_out_mask

    run, _, _ = grouped_run
    split = pd.read_csv(run / "split.csv")
    train_test = set(split.loc[split.role == "test", "patient_id"])
    m = pd.read_csv(mias_like).sample(frac=1.0, random_state=1).reset_index(drop=True)
    fold = _assign_splits(
        m, m["label"].to_numpy(), m["patient_id"].to_numpy(), cv=0, test_split="grouped",
        test_size=0.2, seed=0,
    )  # fmt: skip
    fit_test = set(m.loc[fold == "test", "patient_id"])
    assert train_test == fit_test and 0 < len(train_test) < split.patient_id.nunique()
    # another seed, another draw (the seed is honoured)
    other = held_out_mask(m, m["label"], "grouped", 0.2, 7)
    fold7 = _assign_splits(
        m, m["label"].to_numpy(), m["patient_id"].to_numpy(), cv=0, test_split="grouped",
        test_size=0.2, seed=7,
    )  # fmt: skip
    assert set(m.loc[other, "patient_id"]) == set(m.loc[fold7 == "test", "patient_id"])
    preds = pd.read_csv(run / "predictions.csv", dtype={"fold": str})
    assert set(preds.loc[preds.fold == "test", "patient_id"]) == train_test
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["test_split"] == "grouped" and cfg["test_size"] == 0.2
    assert cfg["train"]["test_split"] == "grouped"


def test_validation_is_called_validation(grouped_run):
    run, _, records = grouped_run
    split = pd.read_csv(run / "split.csv")
    assert set(split.role) == {"train", "validation", "test"}
    messages = [m for _, _, m in records]
    assert any(" validation images (" in m for m in messages)  # the validation draw, named so
    # the one line about test images is the test split's own
    assert len([m for m in messages if " test images (" in m]) == 1
    assert any(" validation, " in m and m.startswith("images: ") for m in messages)


def test_no_test_rows_say_there_is_no_honest_estimate(mias_like, tmp_path, caplog):
    run = tmp_path / "none"
    with caplog.at_level(logging.WARNING, logger="featmammo"):
        train(mias_like, run, test_split="none", **FAST)
    assert any("NO honest estimate" in r.getMessage() for r in caplog.records)
    cfg = json.loads((run / "config.json").read_text())
    assert "NO honest estimate" in cfg["caveats"]["warnings"][0]
    assert "NO honest estimate" in (run / "report.md").read_text()
    preds = pd.read_csv(run / "predictions.csv", dtype={"fold": str})
    assert set(preds.fold) == {"validation"}


def test_cli_test_split_and_stage_lines(mias_like, tmp_path):
    from click.testing import CliRunner

    from featmammo.cli.main import cli

    run = tmp_path / "cli"
    args = [
        "train", str(mias_like), "-o", str(run), "--trunks", "alexnet", "--epochs", "1",
        "--batch-size", "4", "--image-size", "64x48", "--weights", "random", "--device", "cpu",
        "--classes", "benign-malignant", "--test-split", "none", "--windowing", "none",
    ]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "epoch 1/1: train loss" in res.stderr and "best epoch 1 of 1" in res.stderr
    assert "validation balanced accuracy" in res.stderr
    assert "NO test images: no honest estimate" in res.stderr
    assert "NO honest estimate" in res.stdout  # the summary's warning
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["image_size"] == [64, 48] and cfg["preprocess"]["windowing"] == "none"
    assert cfg["preprocess"]["image_size"] == [64, 48]
    bad = CliRunner().invoke(cli, [*args[:-4], "--test-split", "random"])
    assert bad.exit_code == 2 and "'random' is not one of" in bad.output


# -- epochs, last.pt, checkpoint ids -----------------------------------------------------------


def test_epochs_numbered_from_one_and_keep_last(mias_like, tmp_path, caplog):
    from featmammo.nn import load_checkpoint, save_checkpoint

    opts = {**FAST, "test_split": "grouped", "epochs": 2}
    run = tmp_path / "keep"
    first = train(
        mias_like, run, stop_after=1, evaluate=False, **opts
    )  # interrupted: state kept for --resume
    assert first.epochs_run == 1 and (run / "last.pt").is_file()
    payload, meta = load_checkpoint(run / "last.pt")
    assert payload["epoch"] == 1 and payload["best_epoch"] == 1 and meta["epoch"] == 1
    with caplog.at_level(logging.INFO, logger="featmammo"):
        done = train(mias_like, run, resume=True, evaluate=False, **opts)
    assert "resuming" in caplog.text and "after epoch 1 of 2" in caplog.text
    assert "epoch 2/2:" in caplog.text and "epoch 1/2:" not in caplog.text
    assert done.epochs_run == 2 and 1 <= done.best_epoch <= 2
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [1, 2]
    # finished without --keep-last: the training state and decoded images are gone
    assert not (run / "last.pt").exists() and not (run / "last.json").exists()
    assert not list((run / "cache").glob("images-*.npy"))
    assert (run / "checkpoint.pt").is_file() and (run / "history.csv").is_file()
    with pytest.raises(ConfigError, match="finished and kept no training state"):
        train(mias_like, run, resume=True, **opts)
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(mias_like, run, **opts)

    kept = tmp_path / "kept"
    train(mias_like, kept, keep_last=True, evaluate=False, **opts)
    payload, _ = load_checkpoint(kept / "last.pt")
    assert payload["epoch"] == 2 and list(kept.glob("cache/images-*.npy"))

    # a last.pt written before epochs were numbered from 1 (epoch 0 = the first) still resumes
    old = tmp_path / "old"
    train(mias_like, old, stop_after=1, evaluate=False, **opts)
    payload, meta = load_checkpoint(old / "last.pt")
    payload.pop("epoch_numbering")
    payload["epoch"], payload["best_epoch"] = 0, 0
    save_checkpoint(old / "last.pt", payload, {k: meta[k] for k in meta if k != "sha256"})
    assert train(mias_like, old, resume=True, evaluate=False, **opts).epochs_run == 2


def test_checkpoint_records_patient_ids(grouped_run, tmp_path):
    from featmammo.nn import HybridNet, save_checkpoint, trained_patient_ids

    run, _, _ = grouped_run
    split = pd.read_csv(run / "split.csv")
    got = trained_patient_ids(run / "checkpoint.pt")
    assert got["train"] == sorted(set(split.loc[split.role == "train", "patient_id"]))
    assert got["validation"] == sorted(set(split.loc[split.role == "validation", "patient_id"]))
    assert not set(got["train"]) & set(split.loc[split.role == "test", "patient_id"])
    side = json.loads((run / "checkpoint.json").read_text())
    assert side["trained_patient_ids"] == got and side["preprocess_fingerprint"]
    net = HybridNet(["a", "b"], trunks=("alexnet",), weights="random")
    save_checkpoint(tmp_path / "old.pt", {"model": net.state_dict()}, {"model": net.config()})
    assert trained_patient_ids(tmp_path / "old.pt") is None  # not recorded: callers join ids


# -- predict CHECKPOINT ------------------------------------------------------------------------


def test_predict_checkpoint_end_to_end(grouped_run, mias_like, tmp_path, caplog):
    """Before: 'checkpoint.json: not a featmammo head sidecar' (it looked for a head)."""
    from click.testing import CliRunner

    from featmammo.cli.main import cli
    from featmammo.fit.predict import predict

    run, _, _ = grouped_run
    ckpt = run / "checkpoint.pt"
    with caplog.at_level(logging.INFO, logger="featmammo"):
        got = predict(ckpt, [mias_like], device="cpu", workers=0)
    text = caplog.text
    assert "pass a manifest CSV" not in text  # the hint fits a manifest
    assert len(got) == 24 and (got["error"] == "").all()
    ref = pd.read_csv(run / "predictions.csv", dtype={"fold": str})
    merged = ref.merge(got, on="image_id", suffixes=("", "_new"))
    assert len(merged) == len(ref)
    np.testing.assert_allclose(merged["p_malignant"], merged["p_malignant_new"], atol=1e-5)
    assert (merged["y_pred"] == merged["y_pred_new"]).all()
    split = pd.read_csv(run / "split.csv").set_index("image_id")
    seen = split.role.isin(["train", "validation"])
    assert (got.set_index("image_id")["trained_on"] == seen.loc[got.image_id].to_numpy()).all()
    assert f"{int(seen.sum())} of 24 predicted row(s) are images checkpoint" in text

    # loose files and folders: no manifest ids, so trained_on is unknown (empty)
    one = mias_like.parent / "synth_00000.png"
    res = CliRunner().invoke(cli, ["predict", str(ckpt), str(one), "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows[0]["image_id"] == "synth_00000" and rows[0]["trained_on"] is None
    assert rows[0]["p_benign"] + rows[0]["p_malignant"] == pytest.approx(1.0, abs=1e-5)
    assert "predict: 1 row(s)" in res.stderr
    folder = CliRunner().invoke(
        cli, ["predict", str(ckpt), str(mias_like.parent), "--device", "cpu", "--json"]
    )
    assert folder.exit_code == 0 and len(json.loads(folder.stdout)) == 24
    with pytest.raises(ConfigError, match="classifies images, not stored embeddings"):
        predict(ckpt, [tmp_path / "x.h5"], device="cpu")


def test_predict_hint_for_loose_files_and_manifests(caplog):
    from featmammo.fit.predict import _laterality_note
    from featmammo.preprocess import PreprocessConfig

    with caplog.at_level(logging.INFO, logger="featmammo"):
        _laterality_note(PreprocessConfig(), ["", None, float("nan")], "m.csv")
        _laterality_note(PreprocessConfig(), [None], None)
        _laterality_note(PreprocessConfig(), ["L", ""], "given.csv")
    first, second = (r.getMessage() for r in caplog.records)
    assert first.startswith("m.csv: no row has a laterality") and "fill the manifest's" in first
    assert "pass a manifest CSV" not in first
    assert "pass a manifest CSV with a laterality column, or --laterality" in second


def test_backbone_and_explain_on_a_non_square_checkpoint(mias_like, tmp_path):
    from featmammo.nn import load_backbone

    run = tmp_path / "hxw"
    train(mias_like, run, test_split="grouped", evaluate=False, **{**FAST, "image_size": (64, 48)})
    bb = load_backbone(run / "checkpoint.pt")
    assert bb.spec.input_size == (64, 48)
    with torch.no_grad():
        assert bb(torch.randn(2, 3, 64, 48)).shape == (2, bb.spec.dim)


# -- compare -----------------------------------------------------------------------------------


def _store_from(manifest: Path, path: Path) -> Path:
    from test_predict_heads import write_store

    return write_store(path, pd.read_csv(manifest))


@pytest.fixture(scope="module")
def fit_run(mias_like, tmp_path_factory):
    from featmammo.fit import fit

    d = tmp_path_factory.mktemp("fit")
    st = _store_from(mias_like, d / "s.h5")
    fit(st, d / "fit", heads=["logreg"], cv=2, test_split="grouped", tune="none", n_boot=50,
        figures=False)  # fmt: skip
    return d / "fit"


def test_compare_fit_and_train_runs(fit_run, grouped_run, tmp_path):
    from click.testing import CliRunner

    from featmammo import report
    from featmammo.cli.main import cli
    from featmammo.evaluate.comparisons import COMPARISON_COLUMNS

    run, _, _ = grouped_run
    out = tmp_path / "cmp"
    res = CliRunner().invoke(
        cli, ["compare", str(fit_run), str(run), "-o", str(out), "--no-figures"]
    )
    assert res.exit_code == 0, res.output
    assert "compare: 2 run(s)" in res.stderr
    lb = pd.read_csv(out / "leaderboard.csv", dtype={"fold": str})
    test = lb[lb.evaluation == "test"]
    assert "alexnet-end2end" in set(test.features)  # a single-trunk run keeps its trunk's name
    assert test.n_images.nunique() == 1  # every test row on the same images
    comp = pd.read_csv(out / "comparisons.csv")
    assert tuple(comp.columns) == COMPARISON_COLUMNS
    pairs = set(zip(comp.features_a, comp.features_b, strict=True))
    assert pairs == {("alexnet-end2end", f) for f in ("resnet50", "alexnet", "hybrid")}
    assert set(comp.evaluation) == {"test"} and set(comp["head"]) == {"logreg"}
    checks = report.verify(out)
    assert checks and all(c["ok"] for c in checks), [c for c in checks if not c["ok"]]
    preds = pd.read_csv(out / "predictions.csv", dtype={"fold": str})
    assert "validation" not in set(preds.fold)


def _fake_run(path: Path, kind: str, test_ids, *, classes=("benign", "malignant"), label="benign",
              trunks=("resnet50", "alexnet"), fusion="feature-map", features="resnet50",
              cv=None) -> Path:  # fmt: skip
    """A run folder with only what compare reads: config.json and predictions.csv (``cv``:
    image id -> CV fold of a fit run's CV rows)."""
    path.mkdir(parents=True)
    rows = []
    feats = [(features, "logreg")] if kind == "fit" else [("hybridnet-" + fusion, "hybridnet")]
    folds = [(i, "test") for i in test_ids] + list((cv or {}).items())
    for f, h in feats:
        for k, (i, fold) in enumerate(folds):
            y = label if fold == "test" else classes[k % 2]
            rows.append({"image_id": i, "patient_id": f"P{i}", "fold": fold, "features": f,
                         "head": h, "y_true": y, "y_pred": classes[k % 3 % 2],
                         **{f"p_{c}": 1.0 / len(classes) for c in classes}})  # fmt: skip
    pd.DataFrame(rows).to_csv(path / "predictions.csv", index=False)
    config = {"classes": list(classes)}
    if kind == "fit":
        config["command"] = "fit"
    else:
        config.update(head="hybridnet", train={"trunks": list(trunks), "fusion": fusion})
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_compare_two_fit_runs_with_other_folds(tmp_path):
    """Two fit runs split into other CV folds: comparing their CV rows would pair images fold by
    fold across different splits (compare_predictions refuses that); their test rows still pair."""
    from featmammo.compare import compare

    ids = [f"c{k}" for k in range(8)]
    a = _fake_run(tmp_path / "a", "fit", ["t1", "t2"], cv={i: str(k % 2 + 1) for k, i in
                                                          enumerate(ids)})  # fmt: skip
    b = _fake_run(tmp_path / "b", "fit", ["t1", "t2"], features="hybrid",
                  cv={i: str((k + 1) % 2 + 1) for k, i in enumerate(ids)})  # fmt: skip
    compare([a, b], tmp_path / "o", n_boot=20, figures=False)
    preds = pd.read_csv(tmp_path / "o" / "predictions.csv", dtype={"fold": str})
    cv = preds[preds.fold != "test"]
    assert set(cv.features) == {"resnet50"}  # b's CV rows left out
    notes = json.loads((tmp_path / "o" / "config.json").read_text())["notes"]
    assert any("b: CV rows left out" in n and "on 8 image(s)" in n for n in notes)
    comp = pd.read_csv(tmp_path / "o" / "comparisons.csv")
    assert set(comp.evaluation) == {"test"} and set(comp.features_a) == {"hybrid"}


def test_compare_refuses_runs_that_cannot_be_paired(tmp_path):
    from featmammo.compare import compare

    fit_a = _fake_run(tmp_path / "fit", "fit", ["a", "b", "c"])
    far = _fake_run(tmp_path / "far", "train", ["x", "y"])
    with pytest.raises(ConfigError, match="share no test image.*: 3 test image.*: 2 test image"):
        compare([fit_a, far], tmp_path / "o1")
    other = _fake_run(tmp_path / "cls", "train", ["a"], classes=("normal", "abnormal"))
    with pytest.raises(ConfigError, match="different classes"):
        compare([fit_a, other], tmp_path / "o2")
    relabelled = _fake_run(tmp_path / "lab", "train", ["a", "b"], label="malignant")
    with pytest.raises(ConfigError, match="different labels: 2 of 2 shared test image"):
        compare([fit_a, relabelled], tmp_path / "o3")
    with pytest.raises(ConfigError, match="at least two"):
        compare([fit_a], tmp_path / "o4")


def test_compare_names_hybridnet_rows(tmp_path):
    from featmammo import compare as cmp

    runs = [
        cmp._read_run(_fake_run(tmp_path / "fit", "fit", ["a"])),
        cmp._read_run(_fake_run(tmp_path / "fm", "train", ["a"])),
    ]
    cmp._names(runs)
    assert set(runs[1]["rename"].values()) == {"hybridnet"}
    late = cmp._read_run(_fake_run(tmp_path / "late", "train", ["a"], fusion="late"))
    two = [*runs, late]
    cmp._names(two)
    assert {next(iter(r["rename"].values())) for r in two[1:]} == {
        "hybridnet-feature-map", "hybridnet-late"
    }  # fmt: skip
    again = cmp._read_run(_fake_run(tmp_path / "x" / "fm", "train", ["a"]))
    three = [*runs, again]
    cmp._names(three)
    names = [next(iter(r["rename"].values())) for r in three[1:]]
    assert names[0] != names[1] and all(n.startswith("hybridnet@") for n in names)
    cmp._names(runs)
    assert cmp.default_pairs(runs) == [("hybridnet", "resnet50")]
