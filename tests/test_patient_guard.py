"""fit refuses to evaluate a hybrid: checkpoint's embeddings on any patient it saw (issue 16.5)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from test_fit_cli import _cli, _prov

from featmammo import store

CLASSES = ["normal", "benign", "malignant"]


def _store(tmp_path, views=("CC", "MLO"), *, cc_train_mlo_test=False, sidecar_extra=None,
           trained=("CC",)):  # fmt: skip
    """20 patients x ``views``; the only block is a hybrid: checkpoint trained on the patients'
    ``trained`` views (image ids recorded in its sidecar, as `featmammo train` writes them)."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(20):
        for v in views:
            split = ("train" if v == "CC" else "test") if cc_train_mlo_test else (
                "test" if p >= 15 else "train")  # fmt: skip
            rows.append({"image_id": f"P{p:02d}_{v}", "label": CLASSES[p % 3],
                         "patient_id": f"P{p:02d}", "laterality": "L", "view": v,
                         "split": split, "source": "synthetic", "path": ""})  # fmt: skip
    meta = pd.DataFrame(rows)
    y = np.array([CLASSES.index(v) for v in meta["label"]])
    x = (rng.normal(size=(3, 8))[y] + rng.normal(size=(len(y), 8))).astype(np.float32)
    ckpt = tmp_path / "hyb" / "checkpoint.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not a real checkpoint")
    sha = "ab" * 32
    trained_ids = [f"P{p:02d}_{v}" for p in range(20) for v in trained]
    side = {
        "format": "featmammo-hybridnet",
        "sha256": sha,
        "image_ids": {"train": trained_ids, "validation": []},
        **(sidecar_extra or {}),
    }
    ckpt.with_suffix(".json").write_text(json.dumps(side))
    name = f"hybrid:{ckpt}"
    prov = _prov(name, 8)
    prov["spec"].update({"arch": "hybridnet", "weights": str(ckpt), "weights_sha256": sha})
    prov.update({"weights": str(ckpt), "weights_sha256": sha})
    path = tmp_path / "hybrid.h5"
    store.write(path, meta["image_id"], meta.drop(columns="image_id"), {name: x}, {name: prov})
    return path, name, ckpt


ARGS = ["--head", "logreg", "--tune", "none", "--n-boot", "0", "--no-figures"]


def test_checkpoint_trained_on_the_cc_views_refuses_a_fit_on_the_mlo_views(tmp_path):
    """The store holds only MLO views; the sidecar records the CC images and the patients."""
    patients = [f"P{p:02d}" for p in range(20)]
    path, name, ckpt = _store(
        tmp_path, views=("MLO",),
        sidecar_extra={"trained_patient_ids": {"train": patients, "validation": []}},
    )  # fmt: skip
    args = ["fit", path, "-o", tmp_path / "run", "--features", name, "--cv", "3", *ARGS]
    r = _cli(args)
    said = r.output + str(r.exception)
    assert r.exit_code != 0
    assert str(ckpt) in said and "trained on 0 and validated on 0 of the 20 images" in said
    assert "saw 20 (training) and 0 (validation) of its 20 patients" in said
    assert not (tmp_path / "run").exists()
    r = _cli([*args, "--allow-trained-embeddings"])
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["optimistic_features"] == [name]
    lb = pd.read_csv(tmp_path / "run" / "leaderboard.csv")
    assert lb["optimistic"].all() and lb["rank"].isna().all()  # never ranked


def test_patients_are_found_through_the_store_when_the_sidecar_has_only_image_ids(tmp_path):
    """CC views in the training part, MLO views held out (--cv 0): the checkpoint trained on the
    CC images, which this run does not evaluate; their patients are the test patients."""
    path, name, ckpt = _store(tmp_path, cc_train_mlo_test=True)
    args = ["fit", path, "-o", tmp_path / "run", "--features", name, "--cv", "0",
            "--test-split", "official", *ARGS]  # fmt: skip
    r = _cli(args)
    said = r.output + str(r.exception)
    assert r.exit_code != 0, r.output
    assert "trained on 0 and validated on 0 of the 20 images" in said
    assert "saw 20 (training) and 0 (validation) of its 20 patients" in said


def test_a_checkpoint_of_other_patients_is_accepted(tmp_path):
    path, name, _ = _store(
        tmp_path, sidecar_extra={"trained_patient_ids": {"train": ["X1"], "validation": ["X2"]}},
        trained=(),
    )  # fmt: skip
    r = _cli(["fit", path, "-o", tmp_path / "run", "--features", name, "--cv", "3", *ARGS])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["optimistic_features"] == []
