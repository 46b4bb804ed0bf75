"""featmammo.datasets.ddsm_patches: the Kaggle DDSM patch set (TFRecords + .npy pairs)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from featmammo.datasets.ddsm_patches import NO_PATIENT_NOTE, SPLIT_CAVEAT, build_ddsm_patches
from featmammo.datasets.manifest import read_manifest, write_manifest
from featmammo.errors import ConfigError, ImageReadError, ManifestError
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
    df, summary = build_ddsm_patches(tmp_path, patch_splits="official")
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


def test_patch_splits_combined_by_default_with_the_authors_caveat(tmp_path):
    _tree(tmp_path)
    df, summary = build_ddsm_patches(tmp_path)
    assert summary["patch_splits"] == "combined"
    assert summary["splits"] == {"test": 4 + 3, "train": 8}  # cv10 + test10 -> test, no val
    assert set(df.loc[df["record_file"] == "cv10_data.npy", "split"]) == {"test"}
    assert SPLIT_CAVEAT in summary["notes"] and "should be combined" in SPLIT_CAVEAT
    assert any("no val rows" in n for n in summary["notes"])
    _, official = build_ddsm_patches(tmp_path, patch_splits="official")
    assert SPLIT_CAVEAT in official["notes"]
    assert any("val holds calcifications only" in n for n in official["notes"])
    with pytest.raises(ConfigError, match="patch_splits"):
        build_ddsm_patches(tmp_path, patch_splits="mine")


def test_the_summary_says_to_extract_patches_without_the_breast_crop(tmp_path):
    """The default breast crop (Otsu's largest component) of a patch full of tissue is not the
    patch: on a patch with a bright mass it is the mass (a zoom that depends on the label), so
    the summary tells users to extract the patch set with --crop none."""
    from featmammo.preprocess.geometry import breast_bbox

    yy, xx = np.mgrid[0:299, 0:299]
    rng = np.random.default_rng(0)
    patch = 120 + 30 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 8, (299, 299))
    patch[(yy - 220) ** 2 + (xx - 220) ** 2 < 50**2] = 230
    y0, x0, y1, x1 = breast_bbox(np.clip(patch, 0, 255).astype(np.uint8))
    assert (y1 - y0) * (x1 - x0) < 0.2 * 299 * 299  # the "breast" is the mass
    _tree(tmp_path)
    _, summary = build_ddsm_patches(tmp_path)
    (note,) = [n for n in summary["notes"] if "--crop none" in n]
    assert "featmammo extract" in note


def test_an_empty_tfrecord_file_is_listed_not_silently_empty(tmp_path):
    """A 0-byte training10_1.tfrecords (a failed or unfinished download) used to add no rows and
    no word: the file is listed with the reason."""
    _tree(tmp_path)
    empty = tmp_path / "training10_1" / "training10_1.tfrecords"
    empty.write_bytes(b"")
    df, summary = build_ddsm_patches(tmp_path)
    assert summary["splits"]["train"] == 6
    (u,) = summary["unresolved_rows"]
    assert u["where"] == str(empty) and "no records" in u["reason"]
    assert summary["unresolved_reasons"] == {"empty file": 1}


def _flip(path, byte):
    raw = bytearray(path.read_bytes())
    raw[byte] ^= 1
    path.write_bytes(bytes(raw))


def test_a_corrupt_record_is_listed_and_the_rest_kept(tmp_path):
    """A data CRC failure in one record: that record listed (file, record, offset), the records
    after it kept and readable; --corrupt-records stop keeps the old stop."""
    p = tmp_path / "training10_2.tfrecords"
    imgs = _tfrecord(p, [0, 1, 2, 3])
    size = len(p.read_bytes()) // 4
    _flip(p, size + 40)  # a data byte of record 1
    other = _tfrecord(tmp_path / "training10_3.tfrecords", [4], seed=3)
    df, summary = build_ddsm_patches(tmp_path)
    assert list(df["record_index"]) == ["0", "2", "3", "0"]
    (bad,) = summary["unresolved_rows"]
    assert bad["where"] == f"{p}#1" and bad["image_id"] == "training10_2-00001"
    assert bad["reason"] == f"record 1 at byte {size}: data CRC mismatch (corrupt record)"
    assert any("1 damaged record(s) left out" in n for n in summary["notes"])
    assert summary["unresolved_reasons"] == {"damaged record": 1}
    by = df.set_index("image_id")
    np.testing.assert_array_equal(read_image(by.loc["training10_2-00003", "path"]).pixels, imgs[3])
    np.testing.assert_array_equal(read_image(by.loc["training10_3-00000", "path"]).pixels, other[0])
    with pytest.raises(ImageReadError, match="record 1 at byte .*data CRC mismatch") as info:
        build_ddsm_patches(tmp_path, corrupt_records="stop")
    assert info.value.path == str(p)


def test_a_damaged_header_ends_the_file_but_keeps_the_records_before(tmp_path):
    p = tmp_path / "training10_0.tfrecords"
    imgs = _tfrecord(p, [0, 1, 2, 3])
    size = len(p.read_bytes()) // 4
    _flip(p, 2 * size + 3)  # the length field of record 2
    df, summary = build_ddsm_patches(tmp_path)
    assert list(df["record_index"]) == ["0", "1"]
    (bad,) = summary["unresolved_rows"]
    assert bad["where"] == f"{p}#2" and "corrupt record header" in bad["reason"]
    assert "records after it cannot be located" in bad["reason"]
    np.testing.assert_array_equal(read_image(df["path"].iloc[1]).pixels, imgs[1])
    with pytest.raises(ImageReadError, match="record 2 at byte .*corrupt record header"):
        read_image(f"{p}#3")
    # a record that is no tf.train.Example: listed in skip mode, a stop otherwise
    from featmammo.io.tfrecord import frame_record

    q = tmp_path / "training10_1.tfrecords"
    q.write_bytes(frame_record(b"\xff\xff\xff") + p.read_bytes()[:size])
    df, summary = build_ddsm_patches(tmp_path)
    assert f"{q}#0" in {u["where"] for u in summary["unresolved_rows"]}
    assert "training10_1-00001" in set(df["image_id"])
    p.unlink()
    with pytest.raises(ManifestError, match=r"training10_1.tfrecords#0: record is not a tf.train"):
        build_ddsm_patches(tmp_path, corrupt_records="stop")


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
    assert (
        "length mismatch: test10_data.npy holds 3 patches but test10_labels.npy 2 labels" in reasons
    )
    assert summary["ignored_files"] == [str(tmp_path / "other.tfrecords")]


def test_length_mismatch_alone_says_so_not_no_patches(tmp_path):
    _npy(tmp_path, "test10", [0, 1, 2])
    np.save(tmp_path / "test10_labels.npy", np.array([0, 1]))
    with pytest.raises(ManifestError, match=r"none usable: .*length mismatch: test10_data.npy"):
        build_ddsm_patches(tmp_path)


def test_float_patches_are_listed_up_front(tmp_path):
    """A float32 cv10_data.npy would build rows whose every read fails: its dtype is checked
    while building and the pair listed with the reason."""
    _npy(tmp_path, "test10", [0, 2])
    data = np.load(tmp_path / "test10_data.npy").astype(np.float32)
    np.save(tmp_path / "cv10_data.npy", data)
    np.save(tmp_path / "cv10_labels.npy", np.array([0, 1]))
    df, summary = build_ddsm_patches(tmp_path)
    assert set(df["record_file"]) == {"test10_data.npy"}
    (bad,) = summary["unresolved_rows"]
    assert bad["where"].endswith("cv10_data.npy") and "dtype float32" in bad["reason"]
    assert summary["unresolved_reasons"] == {"patches not uint8/uint16": 1}
    for row in df.itertuples():
        read_image(row.path)  # every row it keeps reads


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
