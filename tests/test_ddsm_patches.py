"""featmammo.datasets.ddsm_patches: the Kaggle DDSM patch set (TFRecords + .npy pairs)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from featmammo.datasets.ddsm_patches import NO_PATIENT_NOTE, build_ddsm_patches
from featmammo.datasets.manifest import read_manifest, write_manifest
from featmammo.errors import ImageReadError, ManifestError
from featmammo.io import read_image
from featmammo.io import tfrecord as tfr


def _tfrecord(path, codes, size=12, seed=0, label_normal=None):
    rng = np.random.default_rng(seed)
    imgs = [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in codes]
    recs = []
    for im, c in zip(imgs, codes, strict=True):
        ln = int(c > 0) if label_normal is None else label_normal
        recs.append(
            tfr.serialize_example({"label": [c], "label_normal": [ln], "image": [im.tobytes()]})
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tfr.write_records(path, recs)
    return imgs


def _npy(folder, stem, codes, size=12, seed=1):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (len(codes), size, size, 1), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{stem}_data.npy", data)
    np.save(folder / f"{stem}_labels.npy", np.asarray(codes, dtype=np.int64))
    return data


def _tree(root):
    t0 = _tfrecord(root / "training10_0" / "training10_0.tfrecords", [0, 1, 2, 3, 4, 0])
    t1 = _tfrecord(root / "training10_1" / "training10_1.tfrecords", [0, 4], seed=5)
    cv = _npy(root / "cv10", "cv10", [0, 0, 2, 3])
    te = _npy(root, "test10", [0, 2, 4], seed=2)
    return t0, t1, cv, te


def test_build_rows_labels_splits_and_paths(tmp_path):
    t0, t1, cv, te = _tree(tmp_path)
    df, summary = build_ddsm_patches(tmp_path)
    assert len(df) == 6 + 2 + 4 + 3
    assert summary["splits"] == {"test": 3, "train": 8, "val": 4}
    assert summary["labels"] == {"benign": 4, "malignant": 5, "normal": 6}
    row = df.set_index("image_id").loc["training10_0-00003"]
    assert (row.label, row.abnormality_type, row.label_code, row.label_normal) == (
        "malignant",
        "calc",
        "3",
        "1",
    )
    assert row.split == "train" and row.patient_id == "training10_0-00003"
    assert row.path.endswith("training10_0.tfrecords#3") and row.source == "ddsm-patches"
    assert set(df.loc[df.label == "normal", "abnormality_type"]) == {""}
    np.testing.assert_array_equal(read_image(row.path).pixels, t0[3])
    cv_row = df.set_index("image_id").loc["cv10-00002"]
    assert (cv_row.split, cv_row.label, cv_row.abnormality_type) == ("val", "benign", "mass")
    np.testing.assert_array_equal(read_image(cv_row.path).pixels, cv[2, ..., 0])
    te_row = df.set_index("image_id").loc["test10-00002"]
    np.testing.assert_array_equal(read_image(te_row.path).pixels, te[2, ..., 0])
    assert NO_PATIENT_NOTE in summary["notes"]
    assert summary["unresolved"] == 0 and summary["label_codes"]["train:0"] == 3
    # the manifest round-trips through the contract (FILE#INDEX paths, relative on disk)
    out = tmp_path / "patches.csv"
    write_manifest(df, out)
    back = read_manifest(out)
    assert back["path"].tolist() == df["path"].tolist()


def test_unknown_code_and_contradicting_label_normal_stop_with_the_record(tmp_path):
    _tfrecord(tmp_path / "training10_0.tfrecords", [0, 1, 7])
    with pytest.raises(ManifestError, match=r"training10_0.tfrecords#2: unknown label code 7"):
        build_ddsm_patches(tmp_path)
    _tfrecord(tmp_path / "training10_0.tfrecords", [0, 2], label_normal=0)
    with pytest.raises(ManifestError, match=r"#1: label_normal 0 contradicts label code 2"):
        build_ddsm_patches(tmp_path)
    (tmp_path / "training10_0.tfrecords").unlink()
    _npy(tmp_path, "cv10", [0, 5])
    with pytest.raises(ManifestError, match=r"cv10_labels.npy#1: unknown label code 5"):
        build_ddsm_patches(tmp_path)


def test_corrupt_record_is_an_error_naming_file_and_record(tmp_path):
    p = tmp_path / "training10_2.tfrecords"
    _tfrecord(p, [0, 1, 2])
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 3 * 2 + 40] ^= 1  # a data byte of record 2
    p.write_bytes(bytes(raw))
    with pytest.raises(ImageReadError, match="record 2 at byte .*data CRC mismatch") as info:
        build_ddsm_patches(tmp_path)
    assert info.value.path == str(p)


def test_unpaired_and_mismatched_npy_are_listed_not_dropped(tmp_path):
    _npy(tmp_path, "cv10", [0, 1])
    (tmp_path / "cv10_labels.npy").unlink()
    _npy(tmp_path / "t", "test10", [0, 1, 2])
    np.save(tmp_path / "t" / "test10_labels.npy", np.array([0, 1]))
    _tfrecord(tmp_path / "training10_0.tfrecords", [0])
    _tfrecord(tmp_path / "other.tfrecords", [0])
    df, summary = build_ddsm_patches(tmp_path)
    assert len(df) == 1
    reasons = [u["reason"] for u in summary["unresolved_rows"]]
    assert "cv10_labels.npy not found beside it" in reasons
    assert "3 patches but 2 labels in test10_labels.npy" in reasons
    assert summary["ignored_files"] == [str(tmp_path / "other.tfrecords")]


def test_empty_root_is_an_error(tmp_path):
    with pytest.raises(ManifestError, match="no patches found"):
        build_ddsm_patches(tmp_path)


def test_memory_stays_flat(tmp_path):
    """Records are streamed: peak Python memory is far below the records' total size."""
    _tfrecord(tmp_path / "training10_0.tfrecords", [0, 1, 2, 3, 4] * 40, size=299)  # 17.9 MB
    tracemalloc.start()
    try:
        df, _ = build_ddsm_patches(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(df) == 200
    assert peak < 4_000_000, peak
