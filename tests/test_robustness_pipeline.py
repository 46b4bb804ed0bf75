"""Adversarial inputs to extract -> fit -> predict -> report: clear errors, counted drops, no stops.

Tiny synthetic stores (``featmammo.store.write``), the logreg head, few bootstrap resamples.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from featmammo import store
from featmammo.errors import ConfigError, ManifestError, StoreError

C3 = ["normal", "benign", "malignant"]
FAST = ["--head", "logreg", "--n-boot", "20", "--no-figures"]


def _cli(args):
    from featmammo.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def _prov(name: str, dim: int, fp: str = "pre0123456789abc") -> dict:
    spec = {"name": name, "arch": name, "layer": "penultimate", "dim": dim, "weights": "random",
            "weights_sha256": None, "seed": 0}  # fmt: skip
    return {"spec": spec, "layer": "penultimate", "weights": "random", "weights_sha256": None,
            "preprocess": {"image_size": 64}, "preprocess_fingerprint": fp,
            "dtype": "float32"}  # fmt: skip


def _store(path, labels, *, per=2, test=None, backbones=("resnet50",), dim=6, seed=0,
           fp="pre0123456789abc", failures=None, shuffle=None, dtype="float32",
           edit=None):  # fmt: skip
    """One row per (patient, view); patient p has label labels[p]; ``test``: patients in the
    official test split (default: the last quarter). Embeddings carry the class signal."""
    test = set(range(len(labels) * 3 // 4, len(labels))) if test is None else set(test)
    rows = [
        {"image_id": f"i{p:02d}_{v}", "label": lab, "patient_id": f"P{p:02d}",
         "split": "test" if p in test else "train", "path": ""}
        for p, lab in enumerate(labels) for v in range(per)
    ]  # fmt: skip
    meta = pd.DataFrame(rows)
    rng = np.random.default_rng(seed)
    names = sorted(set(labels))
    y = np.array([names.index(v) for v in meta["label"]])
    arrays = {}
    for b in backbones:
        x = (rng.normal(size=(len(names), dim))[y] * 2 + rng.normal(size=(len(y), dim))).astype(
            np.float32
        )
        arrays[b] = x
    if edit:
        edit(meta, arrays)
    if shuffle is not None:
        order = np.random.default_rng(shuffle).permutation(len(meta))
        meta = meta.iloc[order].reset_index(drop=True)
        arrays = {b: x[order] for b, x in arrays.items()}
    store.write(path, meta["image_id"], meta.drop(columns="image_id"), arrays,
                {b: _prov(b, dim, fp) for b in backbones}, failures=failures,
                dtype=dtype)  # fmt: skip
    return path


def _fit(stores, run, *extra):
    from featmammo.fit import fit

    kwargs = {"heads": ["logreg"], "n_boot": 20, "figures": False, "cv": 3}
    kwargs.update(extra[0] if extra else {})
    return fit([str(s) for s in stores], run, **kwargs)


def _set_done_nan(path: Path, backbone: str, row: int) -> None:
    """Corrupt a store the way foreign code could: a done row holding NaN."""
    with h5py.File(path, "r+") as f:
        g = f["backbones"][store.backbone_key(backbone)]
        e = g["embeddings"][row]
        e[0] = np.nan
        g["embeddings"][row] = e


# ------------------------------------------------------------------------- folds, classes, splits
def test_too_few_patients_for_cv_names_the_fix(tmp_path):
    st = _store(tmp_path / "s.h5", C3 + ["normal"], test=[])
    with pytest.raises(ConfigError, match=r"--cv 5: the training part has only 4 patient\(s\)"):
        _fit([st], tmp_path / "r", {"cv": 5, "test_split": "none"})


def test_single_class_in_a_training_fold_is_refused_before_fitting(tmp_path):
    # 4 patients, grouped hold-out of 1 -> 3 training patients of 3 classes, 2 folds
    st = _store(tmp_path / "s.h5", C3 + ["normal"], test=[])
    with pytest.raises(ConfigError, match=r"CV fold \d's training side holds a single class"):
        _fit([st], tmp_path / "r", {"cv": 2, "test_split": "grouped", "test_size": 0.25})
    assert not (tmp_path / "r" / "predictions.csv").exists()


def test_a_class_with_one_image_still_fits_and_is_counted(tmp_path):
    labels = [C3[p % 2] for p in range(12)] + ["malignant"]
    st = _store(tmp_path / "s.h5", labels, per=1, test=[0, 1, 2, 3])
    res = _fit([st], tmp_path / "r")
    assert res.config["train_class_counts"]["malignant"] == 1
    data = (tmp_path / "r" / "report.md").read_text().split("## Data")[1]
    assert "| training (CV) | 9 | 9 | 4 | 4 | 1 |" in data


def test_only_one_class_overall(tmp_path):
    st = _store(tmp_path / "s.h5", ["benign"] * 8)
    with pytest.raises(ConfigError, match=r"at least two classes.*\['benign'\]"):
        _fit([st], tmp_path / "r")


def test_official_split_without_test_rows_says_what_to_use(tmp_path):
    st = _store(tmp_path / "s.h5", [C3[p % 3] for p in range(9)], test=[])
    with pytest.raises(ManifestError, match="no row has split == 'test'.*grouped.*none"):
        _fit([st], tmp_path / "r")


def test_unknown_labels_are_named_and_counted(tmp_path):
    labels = [C3[p % 3] for p in range(12)] + ["mass?", "mass?", ""]
    st = _store(tmp_path / "s.h5", labels)
    with pytest.raises(ManifestError, match=r"\{'mass\?': 4\}"):
        _fit([st], tmp_path / "r")
    r = _cli(["fit", st, "-o", tmp_path / "r2", "--classes", "benign,malignant", "--cv", "3",
              *FAST])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "Dropped 14 row(s) outside the class scheme" in r.output
    assert "normal: 8" in r.output and "mass?: 4" in r.output and "(no label): 2" in r.output
    config = json.loads((tmp_path / "r2" / "config.json").read_text())
    assert config["dropped_rows"] == {"normal": 8, "mass?": 4, "(no label)": 2}
    pred = pd.read_csv(tmp_path / "r2" / "predictions.csv")
    assert set(pred["y_true"]) == {"benign", "malignant"} and len(pred) == 16


def test_normal_abnormal_scheme_maps_every_row(tmp_path):
    st = _store(tmp_path / "s.h5", [C3[p % 3] for p in range(12)])
    res = _fit([st], tmp_path / "r", {"classes": "normal,abnormal"})
    assert res.config["classes"] == ["normal", "abnormal"] and res.config["dropped_rows"] == {}
    pred = pd.read_csv(tmp_path / "r" / "predictions.csv")
    assert pred["y_true"].value_counts().to_dict() == {"abnormal": 16, "normal": 8}


def test_class_absent_from_the_test_split_is_said_not_hidden(tmp_path):
    labels = [C3[p % 3] for p in range(12)]
    st = _store(tmp_path / "s.h5", labels, test=[0, 1, 3, 4])  # normal + benign only
    _fit([st], tmp_path / "r")
    text = (tmp_path / "r" / "report.md").read_text()
    assert "class(es) malignant absent from y_true" in text
    lb = pd.read_csv(tmp_path / "r" / "leaderboard.csv")
    assert np.isnan(lb.loc[lb["evaluation"] == "test", "roc_auc_ovr"]).all()
    test_table = text[text.index("/ test\n") :]
    assert "| malignant | - | - | - | 0 (absent) |" in test_table  # not 0.0 beside macro 100


def test_a_store_without_labels_is_refused_clearly(tmp_path):
    st = _store(tmp_path / "s.h5", [""] * 6)
    with pytest.raises(ManifestError, match="has a label"):
        _fit([st], tmp_path / "r")


# -------------------------------------------------------------------- stores: failures, NaN, fusion
def test_failed_and_nan_rows_are_excluded_and_counted(tmp_path):
    labels = [C3[p % 3] for p in range(12)]
    fails = [{"image_id": "i00_0", "backbone": "resnet50", "reason": "decode error: truncated"}]
    st = _store(tmp_path / "s.h5", labels, failures=fails)
    _set_done_nan(st, "resnet50", 5)  # i02_1: done but NaN
    r = _cli(["fit", st, "-o", tmp_path / "r", "--cv", "3", *FAST])
    assert r.exit_code == 0, r.output
    assert "1 failed at extraction: decode error: truncated (x1)" in r.output
    assert "1 with a NaN/inf embedding" in r.output
    run = tmp_path / "r"
    pred = pd.read_csv(run / "predictions.csv")
    assert len(pred) == 22 and not {"i00_0", "i02_1"} & set(pred["image_id"])
    text = (run / "report.md").read_text()
    assert "Images in the store(s): 24" in text and "used: 22" in text
    assert "decode error: truncated" in text and "NaN/inf" in text
    config = json.loads((run / "config.json").read_text())
    (rec,) = config["excluded_rows"]
    assert (rec["failed"], rec["pending"], rec["non_finite"]) == (1, 0, 1)
    # predict on the same store: every row comes back, the two with their error
    from featmammo.predict import predict

    out = predict(run / "models" / "resnet50__logreg.skops", [st])
    assert len(out) == 24
    errs = out.set_index("image_id")["error"]
    assert "decode error: truncated" in errs["i00_0"] and "not finite" in errs["i02_1"]
    assert (errs.drop(["i00_0", "i02_1"]) == "").all()


def test_store_write_records_nonfinite_and_float16_overflow_as_failed(tmp_path):
    def edit(meta, arrays):
        arrays["resnet50"][1, 2] = np.inf
        arrays["resnet50"][3, 0] = 1e6  # fine in float32, inf in float16

    st = store.open(_store(tmp_path / "s.h5", C3 * 2, dtype="float16", edit=edit))
    assert st.dtype("resnet50") == "float16"
    f = st.failures.set_index("image_id")["reason"]
    assert "1 inf" in f["i00_1"] and "overflows float16" in f["i01_1"]
    assert np.isfinite(st.array("resnet50")[st.done("resnet50")]).all()


def test_stores_fused_by_id_not_row_order(tmp_path):
    labels = [C3[p % 3] for p in range(12)]
    a = _store(tmp_path / "a.h5", labels, backbones=("resnet50",), seed=1)
    b = _store(tmp_path / "b.h5", labels, backbones=("alexnet",), seed=2)
    b_shuffled = _store(tmp_path / "bs.h5", labels, backbones=("alexnet",), seed=2, shuffle=7)
    assert list(store.open(b).ids) != list(store.open(b_shuffled).ids)
    opts = {"features": ["hybrid"]}
    p1 = pd.read_csv(_fit([a, b], tmp_path / "r1", opts).run_dir / "predictions.csv")
    p2 = pd.read_csv(_fit([a, b_shuffled], tmp_path / "r2", opts).run_dir / "predictions.csv")
    key = ["image_id", "fold"]
    p1, p2 = p1.sort_values(key).reset_index(drop=True), p2.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(p1, p2)


def test_stores_with_different_preprocessing_are_refused(tmp_path):
    labels = [C3[p % 3] for p in range(9)]
    a = _store(tmp_path / "a.h5", labels, backbones=("resnet50",), fp="fp_size224_area")
    b = _store(tmp_path / "b.h5", labels, backbones=("alexnet",), fp="fp_size512_bicubic")
    with pytest.raises(StoreError, match="preprocessing differs.*fp_size224_area.*fp_size512"):
        _fit([a, b], tmp_path / "r", {"features": ["hybrid"]})


def test_hybrid_of_a_single_backbone_is_refused(tmp_path):
    st = _store(tmp_path / "s.h5", [C3[p % 3] for p in range(9)])
    with pytest.raises(ConfigError, match=r"'hybrid' needs two backbones.*\['resnet50'\]"):
        _fit([st], tmp_path / "r", {"features": ["hybrid"]})


def test_features_naming_an_absent_backbone_lists_what_exists(tmp_path):
    st = _store(tmp_path / "s.h5", [C3[p % 3] for p in range(9)], backbones=("resnet50", "alexnet"))
    r = _cli(["fit", st, "-o", tmp_path / "r", "--features", "vgg16", *FAST])
    assert r.exit_code != 0
    assert "vgg16" in str(r.exception) and "resnet50" in str(r.exception)
    assert "alexnet" in str(r.exception)


# ------------------------------------------------------------------------------------ info
def test_info_on_a_non_hdf5_and_a_truncated_file(tmp_path):
    (tmp_path / "notes.h5").write_text("not a store\n")
    r = _cli(["info", tmp_path / "notes.h5"])
    assert r.exit_code != 0 and "not an HDF5 file" in str(r.exception)
    st = _store(tmp_path / "s.h5", C3 * 2)
    (tmp_path / "cut.h5").write_bytes(st.read_bytes()[: st.stat().st_size // 3])
    r = _cli(["info", tmp_path / "cut.h5"])
    assert r.exit_code != 0 and "truncated HDF5 file" in str(r.exception)
    assert "cut.h5" in str(r.exception)


def test_a_store_being_written_refuses_a_second_writer(tmp_path):
    st = _store(tmp_path / "s.h5", C3 * 2)
    with store.lock(st):
        with (
            pytest.raises(StoreError, match="another featmammo process is writing"),
            store.lock(st),
        ):
            pass
        assert len(store.open(st).ids) == 12  # readers are not blocked


# ------------------------------------------------------------------ reports and models after fit
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("robust")
    st = _store(d / "s.h5", [C3[p % 3] for p in range(15)], backbones=("resnet50", "alexnet"))
    res = _fit([st], d / "run")
    return st, res.run_dir


def _report_table(text: str, header: str) -> pd.DataFrame:
    lines = text[text.index(header) :].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| features"))
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return pd.DataFrame(rows[2:], columns=rows[0])


def test_report_numbers_match_leaderboard_and_recompute_from_predictions(run):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    _, run_dir = run
    lb = pd.read_csv(run_dir / "leaderboard.csv")
    pred = pd.read_csv(run_dir / "predictions.csv", dtype={"fold": str})
    table = _report_table((run_dir / "report.md").read_text(), "## Leaderboard")
    assert len(table) == len(lb) == 3 * 1 * 2  # resnet50, alexnet, hybrid x logreg x cv, test
    for _, row in lb.iterrows():
        t = table[
            (table["features"] == row["features"]) & (table["head"] == row["head"])
            & (table["eval"] == row["evaluation"])
        ].iloc[0]  # fmt: skip
        g = pred[(pred["features"] == row["features"]) & (pred["head"] == row["head"])]
        g = g[(g["fold"] == "test") if row["evaluation"] == "test" else (g["fold"] != "test")]
        acc = accuracy_score(g["y_true"], g["y_pred"])
        bal = balanced_accuracy_score(g["y_true"], g["y_pred"])
        assert row["accuracy"] == pytest.approx(acc) and row["balanced_accuracy"] == (
            pytest.approx(bal)
        )
        assert int(t["images"]) == row["n_images"] == len(g)
        assert int(t["patients"]) == row["n_patients"] == g["patient_id"].nunique()
        assert float(t["accuracy"].split()[0]) == pytest.approx(acc, abs=5e-4)
        assert float(t["balanced accuracy"].split()[0]) == pytest.approx(bal, abs=5e-4)
        assert float(t["majority baseline"]) == pytest.approx(row["majority_baseline"], abs=5e-4)
        ci = re.findall(r"\[([\d.]+), ([\d.]+)\]", t["accuracy"])
        if ci:
            low, high = map(float, ci[0])
            assert low == pytest.approx(row["accuracy_ci_low"], abs=5e-4)
            assert high == pytest.approx(row["accuracy_ci_high"], abs=5e-4)
        else:  # too few patients in a class: no interval, said so, none in the leaderboard
            assert str(t.get("CI", "")).startswith("n/a (") and "patient" in t["CI"], t
            assert np.isnan(row["accuracy_ci_low"]) and np.isnan(row["accuracy_ci_high"])


def test_fit_stdout_quotes_baseline_balanced_accuracy_and_patients(tmp_path, run):
    st, _ = run
    r = _cli(["fit", st, "-o", tmp_path / "r", "--features", "resnet50", "--cv", "3", *FAST])
    assert r.exit_code == 0, r.output
    header = next(ln for ln in r.output.splitlines() if ln.lstrip().startswith("features"))
    for col in ("n_patients", "majority_baseline", "accuracy", "balanced_accuracy"):
        assert col in header.split()


def test_a_ci_excluding_its_point_is_a_note_not_a_failure(run):
    from featmammo import evaluate as ev
    from featmammo.report import consistency_checks

    _, run_dir = run
    pred = ev.read_predictions(run_dir / "predictions.csv")
    lb, metrics = ev.evaluate_predictions(pred, C3, n_boot=10, seed=0)
    lb_path = run_dir / "lb_copy.csv"
    lb.to_csv(lb_path, index=False)

    def n_outside(checks):
        (info,) = [c for c in checks if c.get("info")]
        return 0 if info["detail"] == "none" else int(info["detail"].split(":")[0]), info

    n0, _ = n_outside(consistency_checks(pred, metrics, lb_path, C3))
    r0 = metrics["results"][0]
    r0["ci"]["accuracy"] = {"low": r0["metrics"]["accuracy"] + 0.01, "high": 1.5}
    checks = consistency_checks(pred, metrics, lb_path, C3)
    assert all(c["ok"] for c in checks)
    n1, info = n_outside(checks)
    assert n1 == n0 + 1 and f"{r0['features']}/{r0['head']}/cv accuracy" in info["detail"]
    r0["ci"]["macro_f1"] = {"low": 0.9, "high": 0.1}
    checks = consistency_checks(pred, metrics, lb_path, C3)
    assert [c["check"] for c in checks if not c["ok"]] == ["every bootstrap CI has low <= high"]


def test_report_regenerates_after_figures_are_deleted(run):
    import shutil

    from featmammo.report import write_report

    _, run_dir = run
    before = pd.read_csv(run_dir / "leaderboard.csv")
    shutil.rmtree(run_dir / "figures", ignore_errors=True)
    write_report(run_dir, figures=True, max_images=0)
    assert (run_dir / "figures" / "confusion_cv.png").stat().st_size > 0
    pd.testing.assert_frame_equal(before, pd.read_csv(run_dir / "leaderboard.csv"))


def test_predict_refuses_a_modified_model_file(run, tmp_path):
    import shutil

    from featmammo.errors import FeatmammoError

    st, run_dir = run
    model = tmp_path / "m.skops"
    shutil.copy(run_dir / "models" / "resnet50__logreg.skops", model)
    shutil.copy(run_dir / "models" / "resnet50__logreg.json", tmp_path / "m.json")
    with model.open("ab") as f:
        f.write(b"\0")
    r = _cli(["predict", model, st])
    assert r.exit_code != 0
    assert isinstance(r.exception, FeatmammoError) and "SHA-256 mismatch" in str(r.exception)


# ------------------------------------------------------------------------------------ extract
def test_extract_checks_every_manifest_path_before_any_work(tmp_path, monkeypatch):
    from PIL import Image

    d = tmp_path / "data"
    (d / "img").mkdir(parents=True)
    Image.fromarray(np.full((40, 32), 120, np.uint8)).save(d / "img" / "a.png")
    pd.DataFrame(
        {"image_id": ["a", "b"], "path": ["img/a.png", "img/b.png"], "label": ["benign"] * 2,
         "patient_id": ["P1", "P2"]}
    ).to_csv(d / "m.csv", index=False)  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths resolve against the manifest's folder
    r = _cli(["extract", d / "m.csv", "-o", elsewhere / "s.h5", "-b", "resnet18", "--weights",
              "random", "--image-size", "32"])  # fmt: skip
    assert r.exit_code != 0
    msg = str(r.exception) + r.output
    assert "line 3" in msg and str(d / "img" / "b.png") in msg and "does not exist" in msg
    assert not (elsewhere / "s.h5").exists()


def test_refit_into_the_same_folder_replaces_the_run_and_a_failed_fit_keeps_it(tmp_path):
    st = _store(
        tmp_path / "s.h5", [C3[p % 3] for p in range(12)], backbones=("resnet50", "alexnet")
    )
    run = tmp_path / "run"
    (run).mkdir()
    (run / "my_notes.txt").write_text("mine")
    _fit([st], run, {"heads": ["logreg", "knn"]})
    assert len(list((run / "models").glob("*.skops"))) == 6
    _fit([st], run, {"features": ["resnet50"]})
    assert sorted(p.name for p in (run / "models").iterdir()) == [
        "resnet50__logreg.json", "resnet50__logreg.skops"
    ]  # fmt: skip
    assert set(pd.read_csv(run / "leaderboard.csv")["features"]) == {"resnet50"}
    before = (run / "report.md").read_text()
    with pytest.raises(ConfigError):
        _fit([st], run, {"cv": 50})
    assert (run / "report.md").read_text() == before and (run / "my_notes.txt").exists()
    assert not list(tmp_path.glob(".run.partial-*"))
