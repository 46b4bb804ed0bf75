"""`featmammo fit` end to end: nested tuning (tuning.csv contract), --tune none, the source audit,
caveats, and the refusal of hybrid: embeddings evaluated on the images their checkpoint saw."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_fit_cli import _cli, _prov, _write_store

from featmammo import store
from featmammo.fit import caveats_from_stores
from featmammo.tuning import GRIDS, TUNING_COLUMNS, read_this_first


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    d = tmp_path_factory.mktemp("tuned")
    st = _write_store(d / "store.h5")
    run = d / "run"
    r = _cli(["fit", st, "-o", run, "--head", "logreg", "--head", "knn",
              "--cv", "3", "--inner-cv", "2", "--n-boot", "0", "--no-figures"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return st, run


def test_tuning_csv_contract(tuned):
    st, run = tuned
    tun = pd.read_csv(run / "tuning.csv", dtype={"fold": str})
    assert tuple(tun.columns) == TUNING_COLUMNS
    assert set(tun["fold"]) == {"1", "2", "3", "test"}
    assert set(tun["features"]) == {"resnet50", "alexnet", "hybrid"}
    chosen = tun.groupby(["features", "head", "fold"])["chosen"].sum()
    assert len(chosen) == 3 * 2 * 4 and (chosen == 1).all()  # one chosen row each
    for p in tun["params"]:
        assert p == json.dumps(json.loads(p), sort_keys=True)  # JSON, sorted keys
    # a score is missing only where the note says why: knn's k=40 is more than the inner
    # training sides of this small run hold
    noted = tun["note"].fillna("") != ""
    assert tun.loc[~noted, "inner_score"].between(0, 1).all()
    assert tun.loc[tun["inner_score"].isna(), "note"].str.startswith("grid points dropped").all()
    assert (tun["head"][noted] == "knn").all() and noted.any()
    assert any("Tuning (grid points dropped): knn" in line for line in read_this_first(tun))
    # the same grid for every features set
    points = tun.groupby(["head", "fold", "features"])["params"].apply(tuple)
    for (head, fold), by_features in points.groupby(level=[0, 1]):
        assert by_features.nunique() == 1, (head, fold)
    logreg = tun[(tun["head"] == "logreg") & (tun["fold"] == "1") & (tun["features"] == "hybrid")]
    assert [json.loads(p)["C"] for p in logreg["params"]] == GRIDS["logreg"]["C"]
    # the chosen point is the best inner score (first on ties) and the saved model uses it
    for (f, h, k), g in tun.groupby(["features", "head", "fold"]):
        assert g["chosen"].to_numpy().argmax() == np.nanargmax(g["inner_score"].to_numpy())
        if k == "test":
            side = json.loads((run / "models" / f"{f}__{h}.json").read_text())
            assert side["tuned_params"] == json.loads(g.loc[g["chosen"], "params"].iloc[0])
            assert side["tune"] == "grid"
    config = json.loads((run / "config.json").read_text())
    assert config["tune"] == "grid" and config["tune_metric"] == "balanced_accuracy"
    assert config["inner_cv"] == 2 and config["tune_grid"]["logreg"] == GRIDS["logreg"]
    assert config["train_class_counts"] == {"normal": 15, "benign": 15, "malignant": 15}
    pred = pd.read_csv(run / "predictions.csv", dtype={"fold": str})
    assert len(pred) == 3 * 2 * 60 and set(pred["fold"]) == {"1", "2", "3", "test"}


def test_fit_audits_sources_and_writes_caveats(tuned):
    st, run = tuned
    config = json.loads((run / "config.json").read_text())
    assert config["split_audit"]["source_confounding"] == {}  # checked: one source, nothing found
    cav = config["caveats"]
    assert cav["weights"] == {"resnet50": "random (seed 0)", "alexnet": "random (seed 0)"}
    assert cav["sources"] == {"synthetic": 60}
    assert any("random weights" in w for w in cav["warnings"])
    assert config["optimistic_features"] == [] and config["optimistic_reason"] is None


def test_tune_none_and_source_confounding(tmp_path):
    st = _write_store(tmp_path / "store.h5")
    s = store.open(st)
    meta = s.meta.copy()
    meta["source"] = np.where(meta["label"] == "normal", "ddsm", "cbis-ddsm")
    meta.index = s.ids
    conf = tmp_path / "confounded.h5"
    store.write(
        conf, s.ids, meta.reset_index(drop=True),
        {b: s.array(b) for b in s.backbones}, {b: s.backbone_provenance(b) for b in s.backbones},
    )  # fmt: skip
    run = tmp_path / "run"
    r = _cli(["fit", conf, "-o", run, "--features", "resnet50", "--head", "logreg", "--cv", "2",
              "--tune", "none", "--n-boot", "0", "--no-figures"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert not (run / "tuning.csv").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["tune"] == "none" and config["tune_metric"] is None
    assert config["split_audit"]["source_confounding"] == {"normal": "ddsm"}
    assert config["caveats"]["sources"] == {"cbis-ddsm": 39, "ddsm": 21}
    assert any("'normal'" in w and "ddsm" in w for w in config["caveats"]["warnings"])
    side = json.loads((run / "models" / "resnet50__logreg.json").read_text())
    assert side["tuned_params"] == {} and side["tune"] == "none"


def test_caveats_name_weights_kinds():
    class S:
        backbones = ["resnet50", "alexnet", "vgg16", "hybrid:/r/ckpt.pt"]

        def backbone_provenance(self, name):
            return {
                "resnet50": {"spec": {"weights": "imagenet:ResNet50_Weights.IMAGENET1K_V2"},
                             "weights_sha256": "0123456789abcdef"},
                "alexnet": {"spec": {"weights": "random", "seed": 7}},
                "vgg16": {"spec": {"weights": "/w/vgg.pth"}, "weights_sha256": "feedfacecafe00"},
                "hybrid:/r/ckpt.pt": {"spec": {"arch": "hybridnet", "weights": "/r/ckpt.pt"},
                                      "weights_sha256": "aaaabbbbccccdddd"},
            }[name]  # fmt: skip

    cav = caveats_from_stores([S()], pd.DataFrame({"label": ["normal"]}))
    assert cav["weights"] == {
        "resnet50": "imagenet (torchvision ResNet50_Weights.IMAGENET1K_V2, sha256 0123456789ab)",
        "alexnet": "random (seed 7)",
        "vgg16": "file /w/vgg.pth (sha256 feedfacecafe)",
        "hybrid:/r/ckpt.pt": "hybrid checkpoint /r/ckpt.pt (sha256 aaaabbbbcccc)",
    }
    assert any("no 'source' column" in w for w in cav["warnings"])


def _hybrid_store(tmp_path, trained_ids, validation_ids):
    """A store whose only block is a fake hybrid: checkpoint's embeddings, with the checkpoint's
    JSON sidecar recording the image ids it trained and validated on (as `featmammo train` does)."""
    base = store.open(_write_store(tmp_path / "base.h5"))
    ckpt = tmp_path / "hyb" / "checkpoint.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not a real checkpoint")
    sha = "ab" * 32
    ckpt.with_suffix(".json").write_text(
        json.dumps({"format": "featmammo-hybridnet", "sha256": sha,
                    "image_ids": {"train": trained_ids, "validation": validation_ids}})
    )  # fmt: skip
    name = f"hybrid:{ckpt}"
    prov = _prov(name, 16)
    prov["spec"].update({"arch": "hybridnet", "weights": str(ckpt), "weights_sha256": sha})
    prov.update({"weights": str(ckpt), "weights_sha256": sha})
    path = tmp_path / "hybrid.h5"
    store.write(
        path, base.ids, base.meta.reset_index(drop=True), {name: base.array("resnet50")},
        {name: prov},
    )  # fmt: skip
    return path, name, ckpt


def test_fit_refuses_embeddings_trained_on_the_evaluated_images(tmp_path):
    ids = [f"img{p:02d}_{v}" for p in range(20) for v in range(3)]
    path, name, ckpt = _hybrid_store(tmp_path, ids[:30], ids[30:36])
    args = ["fit", path, "-o", tmp_path / "run", "--features", name, "--head", "logreg",
            "--cv", "2", "--tune", "none", "--n-boot", "0", "--no-figures"]  # fmt: skip
    r = _cli(args)
    assert r.exit_code != 0
    said = r.output + str(r.exception)
    assert str(ckpt) in said and "trained on 30 and validated on 6" in said
    assert "--allow-trained-embeddings" in said
    assert not (tmp_path / "run").exists()
    r = _cli([*args, "--allow-trained-embeddings"])
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["optimistic_features"] == [name]
    assert str(ckpt) in config["optimistic_reason"]
    assert config["caveats"]["weights"][name].startswith(f"hybrid checkpoint {ckpt}")


def test_fit_accepts_embeddings_of_images_the_checkpoint_never_saw(tmp_path):
    path, name, _ = _hybrid_store(tmp_path, ["other1", "other2"], ["other3"])
    r = _cli(["fit", path, "-o", tmp_path / "run", "--features", name, "--head", "logreg",
              "--cv", "2", "--tune", "none", "--n-boot", "0", "--no-figures"])  # fmt: skip
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["optimistic_features"] == []


def test_xgboost_device_is_logged_once_per_run(tmp_path, caplog):
    import logging

    from featmammo.fit import fit

    st = _write_store(tmp_path / "store.h5")
    with caplog.at_level(logging.DEBUG):
        fit([st], tmp_path / "run", heads=["xgboost"], cv=2, tune="none", n_boot=0,
            figures=False, device="cpu", head_params={"xgboost": {"n_estimators": 10}})  # fmt: skip
    said = [r for r in caplog.records if "xgboost head: device" in r.getMessage()]
    assert len([r for r in said if r.levelno >= logging.INFO]) == 1  # 3 features x 3 fits


def test_parallel_features_sets_give_the_same_run(tmp_path):
    st = _write_store(tmp_path / "store.h5")
    out = {}
    for jobs in ("1", "2"):
        run = tmp_path / f"run{jobs}"
        r = _cli(["fit", st, "-o", run, "--head", "logreg", "--head", "knn", "--cv", "2",
                  "--inner-cv", "2", "--n-boot", "0", "--no-figures", "--jobs", jobs])  # fmt: skip
        assert r.exit_code == 0, r.output
        out[jobs] = [(run / n).read_text() for n in ("predictions.csv", "tuning.csv")]
    assert out["1"] == out["2"]


def test_trained_embeddings_count_only_the_images_the_run_evaluates(tmp_path):
    """With --cv 0 only the test side is evaluated: a checkpoint trained on the training side is
    fine; one that also saw a test image is refused, and the count names only that image."""
    base = store.open(_write_store(tmp_path / "ids.h5"))
    meta = base.meta.reset_index(drop=True)
    ids = [str(i) for i in base.ids]
    train_ids = [i for i, s in zip(ids, meta["split"], strict=True) if s != "test"]
    test_ids = [i for i, s in zip(ids, meta["split"], strict=True) if s == "test"]
    assert train_ids and test_ids
    path, name, _ = _hybrid_store(tmp_path / "a", train_ids, [])
    args = ["--features", name, "--head", "logreg", "--cv", "0", "--test-split", "official",
            "--tune", "none", "--n-boot", "0", "--no-figures"]  # fmt: skip
    r = _cli(["fit", path, "-o", tmp_path / "run_a", *args])
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "run_a" / "config.json").read_text())
    assert config["optimistic_features"] == []
    path, name, _ = _hybrid_store(tmp_path / "b", train_ids, test_ids[:1])
    args[1] = name
    r = _cli(["fit", path, "-o", tmp_path / "run_b", *args])
    assert r.exit_code != 0
    assert "trained on 0 and validated on 1" in r.output + str(r.exception)
