"""HybridNet: shapes, optimisation, no augmentation at evaluation, resume, checkpoints and the
ids they record, run caveats, backbone use, Grad-CAM and two-process DDP on the CPU (random
weights, 64 px inputs, tiny phantom sets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from featmammo.errors import ConfigError, WeightsError  # noqa: E402
from featmammo.nn import (  # noqa: E402
    HybridNet,
    load_backbone,
    load_checkpoint,
    load_model,
    save_checkpoint,
    train,
)

SIZE = 64
FAST = dict(
    epochs=2,
    batch_size=4,
    image_size=SIZE,
    weights="random",
    device="cpu",
    seed=0,
    classes="benign-malignant",
    patience=10,
    eval_batch_size=8,
    val_fraction=0.34,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # on a shared 2-core machine, spinning OpenMP threads cost several times the work itself
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def _prepared_cache_in_tmp(tmp_path_factory):
    # training reads pixels through featmammo.prepared's default cache: keep it out of the repo
    before = os.environ.get("FEATMAMMO_CACHE")
    os.environ["FEATMAMMO_CACHE"] = str(tmp_path_factory.mktemp("fmcache"))
    yield
    if before is None:
        os.environ.pop("FEATMAMMO_CACHE", None)
    else:
        os.environ["FEATMAMMO_CACHE"] = before


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory) -> Path:
    """16 phantom PNGs (8 patients x 2 views, benign/malignant); 2 patients are split=test."""
    from PIL import Image

    from featmammo.datasets.synthetic import make_dataset

    root = tmp_path_factory.mktemp("tiny")
    ds = make_dataset(16, seed=3, size=(96, 64), classes=("benign", "malignant"), difficulty=0.2)
    rows = []
    for i, r in ds.meta.iterrows():
        img = (ds.images[i].astype(np.float32) / r["max_value"] * 255).round().astype(np.uint8)
        path = root / f"{r['image_id']}.png"
        Image.fromarray(img).save(path)
        rows.append(
            {
                "image_id": r["image_id"],
                "path": path.name,
                "label": r["label"],
                "patient_id": r["patient_id"],
                "laterality": r["laterality"],
                "view": r["view"],
                "split": "test" if r["patient_id"] in ("P_00001", "P_00002") else "train",
                "source": "synthetic",
            }
        )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def trained_run(tiny_manifest, tmp_path_factory):
    """One epoch of the full hybrid (64 px): outputs, backbone and Grad-CAM are checked on it."""
    run = tmp_path_factory.mktemp("run") / "hybrid"
    result = train(tiny_manifest, run, **{**FAST, "epochs": 1})
    return run, result


def _state(path):
    payload, _ = load_checkpoint(path)
    return payload


# -- model -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["feature-map", "late"])
def test_shapes_both_fusions(fusion):
    net = HybridNet(["normal", "benign", "malignant"], fusion=fusion, weights="random", seed=0)
    x = torch.randn(4, 3, SIZE, SIZE)
    net.eval()
    assert net(x).shape == (4, 3)
    assert net.forward_features(x).shape == (4, 256)
    maps = net.forward_maps(x)
    assert maps["resnet50"].shape[1] == 2048 and maps["alexnet"].shape[1] == 256
    assert ("fused" in maps) == (fusion == "feature-map")
    p = net.predict_proba(x)
    torch.testing.assert_close(p.sum(1), torch.ones(4))
    assert net.training is False


def test_single_trunk_and_bad_options():
    net = HybridNet(["benign", "malignant"], trunks=("alexnet",), weights="random")
    assert list(net.trunks) == ["alexnet"]
    assert net(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 2)
    with pytest.raises(ConfigError, match="fusion"):
        HybridNet(["a", "b"], fusion="early", weights="random")
    with pytest.raises(ConfigError, match="trunks"):
        HybridNet(["a", "b"], trunks=("vgg16",), weights="random")


def test_one_step_lowers_loss():
    torch.manual_seed(0)
    net = HybridNet(["benign", "malignant"], weights="random", seed=0, dropout=0.0)
    net.train()
    x = torch.randn(4, 3, SIZE, SIZE)
    y = torch.tensor([0, 1, 0, 1])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    loss0 = torch.nn.functional.cross_entropy(net(x), y)
    opt.zero_grad()
    loss0.backward()
    opt.step()
    with torch.no_grad():
        loss1 = torch.nn.functional.cross_entropy(net(x), y)
    assert float(loss1) < float(loss0.detach()) - 1e-3


def test_freeze_keeps_trunk_batchnorm_and_weights():
    net = HybridNet(["a", "b"], trunks=("resnet50",), weights="random", seed=0)
    net.freeze_trunks(True)
    net.train()
    bn = net.trunks["resnet50"][1]
    assert not bn.training and net.fc.training
    before = bn.running_mean.clone()
    net(torch.randn(4, 3, SIZE, SIZE)).sum().backward()
    assert torch.equal(before, bn.running_mean)
    assert all(p.grad is None for p in net.trunk_parameters())
    assert any(p.grad is not None for p in net.head_parameters())
    net.freeze_trunks(False)
    assert bn.training and all(p.requires_grad for p in net.trunk_parameters())


# -- checkpoints -----------------------------------------------------------------------------------


def test_checkpoint_round_trip_and_tamper(tmp_path):
    net = HybridNet(["benign", "malignant"], trunks=("alexnet",), weights="random", seed=1)
    path = tmp_path / "m.pt"
    meta = save_checkpoint(path, {"model": net.state_dict()}, {"model": net.config()})
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == meta["sha256"]
    loaded, _ = load_model(path)
    x = torch.randn(2, 3, SIZE, SIZE)
    torch.testing.assert_close(loaded(x), net.eval()(x), rtol=0, atol=0)

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="SHA-256"):
        load_checkpoint(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(WeightsError, match="sidecar"):
        load_checkpoint(path)


# -- training --------------------------------------------------------------------------------------


def test_train_outputs(trained_run):
    run, result = trained_run
    for name in ("checkpoint.pt", "checkpoint.json", "history.csv", "curves.png"):
        assert (run / name).is_file(), name
    # finished, no --keep-last: the training state (3x the model) and decoded images are removed
    assert not (run / "last.pt").exists() and not list((run / "cache").glob("images-*.npy"))
    hist = pd.read_csv(run / "history.csv")
    assert list(hist["epoch"]) == [1]
    for col in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "time"):
        assert hist[col].notna().all(), col
    preds = pd.read_csv(run / "predictions.csv", dtype={"fold": str})
    assert list(preds.columns[:7]) == [
        "image_id",
        "patient_id",
        "fold",
        "features",
        "head",
        "y_true",
        "y_pred",
    ]
    assert {"p_benign", "p_malignant"} <= set(preds.columns)
    assert set(preds["fold"]) == {"validation", "test"}  # validation rows chose the epoch
    assert (preds["features"] == "hybridnet-feature-map").all() and (
        preds["head"] == "hybridnet"
    ).all()
    test_ids = set(preds.loc[preds["fold"] == "test", "image_id"])
    assert test_ids == {f"synth_{i:05d}" for i in range(4)}  # patients P_00001 and P_00002
    split = pd.read_csv(run / "split.csv")
    val_pat = set(split.loc[split.role == "validation", "patient_id"])
    train_pat = set(split.loc[split.role == "train", "patient_id"])
    assert val_pat and not (val_pat & train_pat)  # patient-grouped
    side = json.loads((run / "checkpoint.json").read_text())
    assert side["trunk_weights"]["resnet50"]["weights"] == "random"
    assert side["preprocess"]["image_size"] == SIZE and side["versions"]["torch"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == ["benign", "malignant"]
    assert result.epochs_run == 1 and result.best_epoch == 1


def test_train_config_counts_caveats_and_note(trained_run):
    run, _ = trained_run
    cfg = json.loads((run / "config.json").read_text())
    split = pd.read_csv(run / "split.csv")
    trained = split[(split.role == "train") & split.decoded]
    assert cfg["train_class_counts"] == {
        c: int((trained["label"] == c).sum()) for c in ("benign", "malignant")
    }
    assert sum(cfg["train_class_counts"].values()) == len(trained) > 0
    assert any("stopping epoch" in n for n in cfg["notes"])
    cav = cfg["caveats"]
    assert cav["weights"] == {"resnet50": "random (seed 0)", "alexnet": "random (seed 1)"}
    assert cav["sources"] == {"synthetic": int(split.decoded.sum())}
    assert any("random weights" in w for w in cav["warnings"])
    assert cfg["split_audit"]["ok"] and cfg["split_audit"]["source_confounding"] == {}


def test_checkpoint_records_trained_and_validation_ids(trained_run):
    from featmammo.nn.checkpoint import trained_image_ids

    run, _ = trained_run
    split = pd.read_csv(run / "split.csv")
    ids = trained_image_ids(run / "checkpoint.pt")
    assert sorted(ids["train"]) == sorted(split.loc[split.role == "train", "image_id"])
    assert sorted(ids["validation"]) == sorted(split.loc[split.role == "validation", "image_id"])
    assert not set(ids["train"]) & set(split.loc[split.role == "test", "image_id"])


def test_trained_ids_missing_and_checkpoint_of(trained_run, tmp_path):
    from featmammo.nn.checkpoint import checkpoint_of, trained_image_ids

    net = HybridNet(["benign", "malignant"], trunks=("alexnet",), weights="random", seed=1)
    bare = tmp_path / "bare.pt"
    save_checkpoint(bare, {"model": net.state_dict()}, {"model": net.config()})
    with pytest.raises(WeightsError, match="bare.pt.*no trained/validation image ids"):
        trained_image_ids(bare)
    with pytest.raises(WeightsError, match="not found"):
        trained_image_ids(tmp_path / "absent.pt")

    run, _ = trained_run
    ckpt = run / "checkpoint.pt"
    spec = load_backbone(ckpt).spec.to_dict()
    prov = {"spec": spec, "weights": spec["weights"], "weights_sha256": spec["weights_sha256"]}
    assert checkpoint_of(prov) == ckpt
    plain = {"spec": {"name": "resnet50", "arch": "resnet50"}, "weights": "random"}
    assert checkpoint_of(plain) is None
    with pytest.raises(WeightsError, match="not the one that made the embeddings"):
        checkpoint_of({**prov, "weights_sha256": "0" * 64})
    moved = {**prov, "spec": {**spec, "weights": str(tmp_path / "gone.pt")}}
    with pytest.raises(WeightsError, match="gone.pt"):
        checkpoint_of(moved)


def test_sidecar_readers_and_train_import_without_torch(trained_run):
    """fit checks a store's hybrid: blocks through these: no torch import for JSON reading."""
    run, _ = trained_run
    code = (
        "import sys\n"
        "import featmammo.nn\n"
        "from featmammo.nn import TrainConfig, checkpoint_of, train, trained_image_ids\n"
        "from featmammo.nn.train import TrainConfig as T2\n"
        "assert callable(train) and T2 is TrainConfig\n"
        f"ids = trained_image_ids({str(run / 'checkpoint.pt')!r})\n"
        "assert ids['train'] and ids['validation']\n"
        "assert checkpoint_of({'spec': {'name': 'resnet50', 'arch': 'resnet50'}}) is None\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "from featmammo.nn import HybridNet\n"
        "assert 'torch' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_checkpoint_of_an_extracted_hybrid_block(trained_run, tiny_manifest, tmp_path):
    """The contract with extraction (INTERFACES I1): a store's hybrid: block leads back to the
    checkpoint and the ids it trained on."""
    import featmammo.store as fstore
    from featmammo.extract import extract
    from featmammo.nn.checkpoint import checkpoint_of, trained_image_ids
    from featmammo.preprocess import PreprocessConfig

    run, _ = trained_run
    ckpt = (run / "checkpoint.pt").resolve()
    store = tmp_path / "s.h5"
    extract(
        tiny_manifest,
        store,
        backbones=[f"hybrid:{ckpt}"],
        preprocess=PreprocessConfig(image_size=SIZE),
        device="cpu",
    )
    s = fstore.open(store)
    (name,) = s.backbones
    assert checkpoint_of(s.backbone_provenance(name)) == ckpt
    split = pd.read_csv(run / "split.csv")
    ids = trained_image_ids(checkpoint_of(s.backbone_provenance(name)))
    assert set(ids["train"]) | set(ids["validation"]) == set(
        split.loc[split.role != "test", "image_id"]
    )


def test_validation_split_is_splits_grouped_holdout(tiny_manifest, tmp_path, monkeypatch):
    import featmammo.splits as splits

    calls = []
    real = splits.grouped_holdout

    def spy(labels, groups, test_size=0.2, seed=0, held_out="test"):
        calls.append((len(labels), test_size, seed, held_out))
        return real(labels, groups, test_size, seed, held_out=held_out)

    monkeypatch.setattr(splits, "grouped_holdout", spy)
    opts = {**FAST, "epochs": 1, "trunks": ("alexnet",), "seed": 3}
    train(tiny_manifest, tmp_path / "r", evaluate=False, **opts)
    # the 12 non-test images, once, the held-out side named validation
    assert calls == [(12, FAST["val_fraction"], 3, "validation")]


def test_train_reads_the_prepared_image_cache(tiny_manifest, tmp_path, monkeypatch):
    import featmammo.prepared as prepared

    monkeypatch.setenv("FEATMAMMO_CACHE", str(tmp_path / "fmcache"))
    opts = {**FAST, "epochs": 1, "trunks": ("alexnet",), "image_size": 48, "keep_last": True}
    train(tiny_manifest, tmp_path / "first", evaluate=False, **opts)
    assert prepared.PreparedCache.default().info()["entries"] == 16  # every image stored once
    first = np.load(next((tmp_path / "first" / "cache").glob("images-*[!k].npy")))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image the prepared-image cache holds")

    monkeypatch.setattr(prepared, "load_prepared", no_decoding)
    train(tiny_manifest, tmp_path / "second", evaluate=False, **opts)  # hits only
    second = np.load(next((tmp_path / "second" / "cache").glob("images-*[!k].npy")))
    np.testing.assert_array_equal(first, second)
    with pytest.raises(AssertionError, match="no decoding|decoded"):
        prepared.prepare_image(tiny_manifest.parent / "synth_00000.png", cache=None)
    # --no-cache: decoded afresh (load_and_preprocess), the cache is neither read nor needed
    third = train(tiny_manifest, tmp_path / "third", evaluate=False, prepared_cache=False, **opts)
    assert third.epochs_run == 1
    cfg = json.loads((tmp_path / "third" / "config.json").read_text())
    assert cfg["train"]["prepared_cache"] is False


def test_amp_on_cpu_is_refused(tiny_manifest, tmp_path):
    for amp in ("bf16", "fp16"):
        with pytest.raises(ConfigError, match=f"--amp {amp} is only used on CUDA"):
            train(tiny_manifest, tmp_path / amp, **{**FAST, "amp": amp})
        assert not (tmp_path / amp).exists()  # refused before any work


def test_caveat_strings_and_source_confounding():
    from featmammo.nn.outputs import run_audit, run_caveats, weights_caveat

    sha = "ab" * 32
    assert weights_caveat("alexnet", {"weights": "random", "seed": 4}) == "random (seed 4)"
    assert weights_caveat(
        "resnet50", {"weights": "imagenet:ResNet50_Weights.IMAGENET1K_V2", "weights_sha256": sha}
    ) == ("imagenet (torchvision ResNet50_Weights.IMAGENET1K_V2, sha256 abababababab)")
    assert weights_caveat("alexnet", {"weights": "/w/a.pth", "weights_sha256": sha}) == (
        "file /w/a.pth (sha256 abababababab)"
    )
    df = pd.DataFrame(
        {
            "patient_id": ["p1", "p1", "p2", "p3", "p4"],
            "_y": ["normal", "normal", "malignant", "malignant", "benign"],
            "source": ["ddsm", "ddsm", "cbis", "cbis", "cbis"],
        }
    )
    used = np.array([True, False, True, True, True])
    role = np.array(["train", "train", "val", "test", "train"])
    audit = run_audit(df, used, role)
    assert audit["source_confounding"] == {"normal": "ddsm"}
    cav = run_caveats(df, used, role, {"alexnet": {"weights": "random", "seed": 0}}, audit)
    assert cav["sources"] == {"cbis": 3, "ddsm": 1}
    text = " | ".join(cav["warnings"])
    assert "every 'normal' image comes from source 'ddsm'" in text
    assert "1 image(s) could not be decoded" in text and "random weights" in text
    no_source = df.drop(columns="source")
    audit = run_audit(no_source, used, role)
    assert "source_confounding" not in audit  # not checked, which is not the same as clean
    cav = run_caveats(no_source, used, role, {}, audit)
    assert cav["sources"] == {"(no source column)": 4}
    assert any("source confounding not checked" in w for w in cav["warnings"])


def test_resume_matches_uninterrupted_run(tiny_manifest, tmp_path):
    # AlexNet trunk (cheap) with freeze_epochs=1, so the frozen -> unfrozen switch happens exactly
    # at the interruption; batch norm, dropout, augmentation, AdamW and the schedule all carry over.
    opts = {**FAST, "trunks": ("alexnet",), "freeze_epochs": 1, "schedule": "onecycle",
            "keep_last": True}  # fmt: skip
    straight = tmp_path / "straight"
    train(tiny_manifest, straight, **opts)
    run = tmp_path / "resumed"
    first = train(tiny_manifest, run, stop_after=1, **opts)
    assert first.epochs_run == 1 and not (run / "predictions.csv").exists()
    after_one = _state(run / "last.pt")["model"]
    with pytest.raises(ConfigError, match="resume"):
        train(tiny_manifest, run, **opts)  # refuses to overwrite a run without --resume
    with pytest.raises(ConfigError, match="lr"):
        train(tiny_manifest, run, resume=True, **{**opts, "lr": 0.5})
    other = tmp_path / "other.csv"
    m = pd.read_csv(tiny_manifest)
    m["path"] = [str(tiny_manifest.parent / p) for p in m["path"]]
    m.iloc[:-1].to_csv(other, index=False)
    with pytest.raises(ConfigError, match="different manifest"):
        train(other, run, resume=True, **opts)
    second = train(tiny_manifest, run, resume=True, **opts)
    assert second.epochs_run == 2
    a, b = _state(straight / "last.pt"), _state(run / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=1e-6, msg=k)
    # epoch 2 (after the interruption) trained the unfrozen trunk and the head
    trunk_w, head_w = "trunks.alexnet.0.weight", "classifier.weight"
    assert not torch.equal(after_one[trunk_w], b["model"][trunk_w])
    assert not torch.equal(after_one[head_w], b["model"][head_w])
    assert a["epoch"] == b["epoch"] == 2 and a["best_epoch"] == b["best_epoch"]  # from 1
    for ha, hb in zip(a["history"], b["history"], strict=True):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], abs=1e-6)
        assert ha["val_loss"] == pytest.approx(hb["val_loss"], abs=1e-6)
    assert [h["trunks_frozen"] for h in b["history"]] == [True, False]
    for ka, kb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        torch.testing.assert_close(ka["exp_avg"], kb["exp_avg"], rtol=0, atol=1e-6)
    pa = pd.read_csv(straight / "predictions.csv")
    pb = pd.read_csv(run / "predictions.csv")
    np.testing.assert_allclose(pa["p_malignant"], pb["p_malignant"], atol=1e-6)


def test_augmentation_only_in_training(tiny_manifest, tmp_path, monkeypatch):
    import featmammo.augment as aug_mod

    calls = []
    real = aug_mod.Augment

    class Spy:
        def __init__(self, *a, **k):
            self.inner = real(*a, **k)

        def __call__(self, x, generator=None):
            calls.append(tuple(x.shape))
            return self.inner(x, generator=generator)

    monkeypatch.setattr(aug_mod, "Augment", Spy)
    run = tmp_path / "aug"
    res = train(
        tiny_manifest, run, **{**FAST, "epochs": 1, "trunks": ("alexnet",), "keep_last": True}
    )
    split = pd.read_csv(run / "split.csv")
    n_train = int(((split.role == "train") & split.decoded).sum())
    assert sum(s[0] for s in calls) == n_train - (n_train % 4 == 1)  # one call per training batch
    assert all(len(s) == 4 for s in calls)

    # evaluation: predictions.csv == the model's softmax on the cached, un-augmented images
    model, meta = load_model(res.checkpoint)
    cache = next((run / "cache").glob("images-*[!k].npy"))
    images = np.load(cache)
    ids = split["image_id"].tolist()
    preds = pd.read_csv(run / "predictions.csv")
    idx = [ids.index(i) for i in preds["image_id"]]
    n_calls = len(calls)
    with torch.no_grad():
        p1 = torch.softmax(model(torch.from_numpy(images[idx])), 1).numpy()
        p2 = model.predict_proba(torch.from_numpy(images[idx])).numpy()
    assert len(calls) == n_calls
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_allclose(preds[["p_benign", "p_malignant"]].to_numpy(), p1, atol=1e-5)
    assert (preds["features"] == "alexnet-end2end").all()


# -- trained checkpoint as a backbone, Grad-CAM ----------------------------------------------------


def test_load_backbone(trained_run):
    run, _ = trained_run
    bb = load_backbone(run / "checkpoint.pt")
    assert bb.spec.dim == 256 and bb.spec.name == f"hybrid:{run / 'checkpoint.pt'}"
    assert bb.spec.input_size == SIZE
    assert bb.spec.weights_sha256 == json.loads((run / "checkpoint.json").read_text())["sha256"]
    bb.train()
    assert not bb.training
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        out = bb(x)
    assert out.shape == (3, 256)
    from featmammo.backbones import make

    via_registry = make(f"hybrid:{run / 'checkpoint.pt'}")
    with torch.no_grad():
        torch.testing.assert_close(via_registry(x), out)


def test_explain_writes_heatmaps(trained_run, tiny_manifest, tmp_path):
    from PIL import Image

    from featmammo.nn.gradcam import explain

    run, _ = trained_run
    images = sorted(tiny_manifest.parent.glob("synth_*.png"))[:2]
    out = tmp_path / "cam"
    records = explain(run / "checkpoint.pt", images, out)
    doc = json.loads((out / "explanations.json").read_text())
    assert len(doc["images"]) == 2 and doc["classes"] == ["benign", "malignant"]
    for rec in records:
        assert set(rec["heatmaps"]) == {"resnet50", "alexnet", "fused"}
        assert sum(rec["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        for name in rec["heatmaps"].values():
            with Image.open(out / name) as im:
                assert im.size == (SIZE, SIZE)
        heat = np.load(out / rec["heatmaps_npz"])
        for k in heat.files:
            assert heat[k].shape == (SIZE, SIZE)
            assert heat[k].min() >= 0 and heat[k].max() <= 1
        assert (out / rec["panel"]).stat().st_size > 0


def test_explain_marks_empty_maps_and_carries_the_caveats(trained_run, tiny_manifest, tmp_path,
                                                          monkeypatch):  # fmt: skip
    """An all-zero map was normalised into full colour (jet's dark blue) with no word on the
    figure, which had no caveat footer either."""
    import featmammo.nn.gradcam as gc
    import featmammo.plots as plots

    real = gc.grad_cam

    def zero_alexnet(model, x, target=None):
        cams, proba, tg = real(model, x, target)
        cams["alexnet"] = np.zeros_like(cams["alexnet"])
        return cams, proba, tg

    saved = []
    real_save = plots._save

    def spy(fig, path, **kw):
        saved.append((fig, kw.get("footer")))
        return real_save(fig, path, **kw)

    monkeypatch.setattr(gc, "grad_cam", zero_alexnet)
    monkeypatch.setattr(plots, "_save", spy)
    run, _ = trained_run
    image = sorted(tiny_manifest.parent.glob("synth_*.png"))[0]
    (rec,) = gc.explain(run / "checkpoint.pt", [image], tmp_path / "cam")
    assert rec["empty_heatmaps"] == ["alexnet"]
    from PIL import Image

    with Image.open(tmp_path / "cam" / rec["heatmaps"]["alexnet"]) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()  # grey
    with Image.open(tmp_path / "cam" / rec["heatmaps"]["resnet50"]) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert not (rgb[..., 0] == rgb[..., 2]).all()  # a real map is coloured
    ((fig, footer),) = saved
    titles = [ax.get_title() for ax in fig.axes]
    assert "Grad-CAM: alexnet (no gradient signal)" in titles
    assert "Grad-CAM: resnet50" in titles
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("no gradient signal" in t for t in texts)
    text = "\n".join(footer)
    assert "resnet50 random (seed 0)" in text and "alexnet random (seed 1)" in text
    assert "sources: synthetic" in text and "random weights" in text
    assert "no gradient signal in alexnet" in text and "Grad-CAM:" in text
    doc = json.loads((tmp_path / "cam" / "explanations.json").read_text())
    assert doc["caveats"]["weights"]["alexnet"] == "random (seed 1)"


def test_cli_help():
    from click.testing import CliRunner

    from featmammo.cli.main import cli

    for name, flag in (("train", "--resume"), ("explain", "--target")):
        res = CliRunner().invoke(cli, [name, "--help"])
        assert res.exit_code == 0 and flag in res.output


# -- distributed -----------------------------------------------------------------------------------


@pytest.mark.slow  # ~12 s alone, ~35 s on a loaded 2-core machine: two torch processes start
def test_ddp_two_processes_cpu(tiny_manifest, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "featmammo.cli.main",
        "-v",  # the rank lines are INFO (the CLI is quiet by default)
        "train",
        str(tiny_manifest),
        "-o",
        str(run),
        "--trunks",
        "alexnet",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--image-size",
        str(SIZE),
        "--weights",
        "random",
        "--device",
        "cpu",
        "--classes",
        "benign-malignant",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1/2" in proc.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2
    assert len(pd.read_csv(run / "history.csv")) == 2
    assert (run / "predictions.csv").is_file()
    load_model(run / "checkpoint.pt")


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_train_cuda_amp(tiny_manifest, tmp_path, amp):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    res = train(tiny_manifest, tmp_path / amp, **{**FAST, "device": "cuda", "amp": amp})
    assert res.epochs_run == 2
    hist = pd.read_csv(tmp_path / amp / "history.csv")
    assert np.isfinite(hist["train_loss"]).all()
    model, _ = load_model(res.checkpoint)
    assert next(model.parameters()).dtype == torch.float32  # AMP never changes the stored weights


def test_augment_strengths_in_config():
    from featmammo.nn.train import TrainConfig

    cfg = TrainConfig(weights="random", augment={"rotation": 10, "brightness": 0.05})
    assert TrainConfig.from_dict(cfg.to_dict()).augment == {"rotation": 10, "brightness": 0.05}
    assert TrainConfig(weights="random").augment is True
    with pytest.raises(ConfigError, match="rotation"):
        TrainConfig(weights="random", augment={"rotation": -1})
    with pytest.raises(ConfigError, match="augment"):
        TrainConfig(weights="random", augment="strong")


def test_train_roi_crop_without_masks_is_refused_before_any_work(tiny_manifest, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="roi_mask_path"):
        train(tiny_manifest, run, **{**FAST, "epochs": 1, "preprocess": {"roi": "crop"}})
    assert not (run / "cache").exists()


def test_train_reads_masks_from_either_mask_column(monkeypatch):
    """extract accepts roi_mask_path or mask_path; train's decoder reads the same columns, and only
    when the ROI mode uses masks."""
    import featmammo.prepared as prepared
    from featmammo.nn.data import _decode_one
    from featmammo.preprocess import PreprocessConfig

    seen = []
    monkeypatch.setattr(
        prepared, "prepare_image", lambda path, pre, cache=None, **kw: seen.append(kw) or 0.0
    )
    row = {"path": "a.png", "laterality": "L", "mask_path": "a_mask.png"}
    _decode_one(row, PreprocessConfig(roi="crop"), cache=False)
    _decode_one(row, PreprocessConfig(roi="full"), cache=False)
    assert seen[0]["roi_mask_path"] == "a_mask.png"
    assert "roi_mask_path" not in seen[1]
    assert PreprocessConfig(roi="patch").uses_mask and not PreprocessConfig().uses_mask
