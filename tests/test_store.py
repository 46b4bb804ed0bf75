"""The HDF5 embedding store without torch: layout, reader, prepare/append/refuse, shards, faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from featmammo import store
from featmammo.errors import StoreError


def _meta(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"img{i:02d}" for i in range(n)],
            "label": ["benign", "malignant"] * (n // 2) + ["normal"] * (n % 2),
            "patient_id": [f"P{i // 2}" for i in range(n)],
            "laterality": ["L", "R"] * (n // 2) + ["L"] * (n % 2),
            "view": "CC",
            "split": "train",
            "source": "synthetic",
            "path": [f"/data/img{i:02d}.png" for i in range(n)],
            "density": [str(i % 4 + 1) for i in range(n)],
        }
    )


def _prov(weights="random", size=64):
    return {
        "spec": {"name": "toy", "dim": 3},
        "layer": "penultimate",
        "weights": weights,
        "weights_sha256": None,
        "preprocess": {"image_size": size, "resize": "area"},
        "preprocess_fingerprint": f"fp{size}",
    }


@pytest.fixture
def small_store(tmp_path, rng):
    meta = _meta(6)
    a = rng.standard_normal((6, 3)).astype(np.float32)
    b = rng.standard_normal((6, 5)).astype(np.float32)
    a[4] = np.nan  # pending
    path = tmp_path / "s.h5"
    st = store.write(
        path,
        meta["image_id"],
        meta,
        {"toy": a, "hybrid:runs/x/checkpoint.pt": b},
        {"toy": _prov(), "hybrid:runs/x/checkpoint.pt": _prov("imagenet")},
        {"manifest_hash": "abc"},
        failures=[{"image_id": "img05", "backbone": "toy", "reason": "file is empty (0 bytes)"}],
    )
    return st, a, b, meta


def test_write_open_roundtrip(small_store):
    st, a, b, meta = small_store
    st = store.open(st.path)
    assert list(st.ids) == list(meta["image_id"])
    assert st.backbones == ["toy", "hybrid:runs/x/checkpoint.pt"]
    assert st.meta.index.name == "image_id"
    assert list(st.meta.columns[:8]) == store.META_COLUMNS
    assert st.meta.loc["img03", "label"] == "malignant"
    assert st.meta.loc["img03", "density"] == 4  # extras kept, numbers as numbers
    assert st.done("toy").tolist() == [True, True, True, True, False, False]
    x = st.array("toy")
    assert x.dtype == np.float32 and x.shape == (6, 3)
    np.testing.assert_array_equal(x[:4], a[:4])
    assert np.isnan(x[4:]).all()
    np.testing.assert_array_equal(st.array("hybrid:runs/x/checkpoint.pt"), b)
    fr = st.frame("toy", "hybrid:runs/x/checkpoint.pt")
    assert list(fr.index) == ["img00", "img01", "img02", "img03"]
    assert fr.columns[0] == "toy:0" and fr.columns[-1] == "hybrid:runs/x/checkpoint.pt:4"
    assert st.frame().shape == (4, 8)
    f = st.failures
    assert f.to_dict(orient="records") == [
        {"image_id": "img05", "path": "/data/img05.png", "backbone": "toy",
         "reason": "file is empty (0 bytes)"}
    ]  # fmt: skip
    assert st.provenance["manifest_hash"] == "abc"
    for k in ("featmammo", "torch", "torchvision", "pydicom", "created"):
        assert k in st.provenance
    bp = st.backbone_provenance("toy")
    assert bp["weights"] == "random" and bp["preprocess_fingerprint"] == "fp64"
    assert bp["identity"] == store.backbone_identity(_prov() | {"dtype": "float32"})
    with pytest.raises(StoreError, match="no backbone 'nope'"):
        st.array("nope")


def test_layout_readable_with_plain_h5py(small_store):
    st, a, _, _ = small_store
    with h5py.File(st.path, "r") as f:
        assert f.attrs["format"] == "featmammo.store" and f.attrs["format_version"] == 2
        ids = f["ids"].asstr()[()]
        assert ids[0] == "img00"
        assert json.loads(f.attrs["backbones"])[1] == "hybrid:runs/x/checkpoint.pt"
        g = f["backbones/hybrid%3Aruns%2Fx%2Fcheckpoint.pt"]
        assert g.attrs["name"] == "hybrid:runs/x/checkpoint.pt" and g.attrs["dim"] == 5
        g = f["backbones/toy"]
        assert g["embeddings"].chunks[1] == 3 and g["embeddings"].compression == "gzip"
        status = g["status"][()]
        assert status.tolist() == [1, 1, 1, 1, 0, 2]
        assert g["reason"].asstr()[5] == "file is empty (0 bytes)"
        np.testing.assert_array_equal(g["embeddings"][0], a[0])
        assert json.loads(g.attrs["provenance"])["layer"] == "penultimate"
        cols = json.loads(f["meta"].attrs["columns"])
        assert "density" in cols and f["meta/label"].asstr()[1] == "malignant"


def test_float16_and_summary(tmp_path, rng):
    meta = _meta(4)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    st = store.write(tmp_path / "h.h5", meta["image_id"], meta, {"toy": x}, {"toy": _prov()},
                     dtype="float16", compression="lzf")  # fmt: skip
    y = st.array("toy")
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x.astype(np.float16).astype(np.float32))
    s = st.summary()
    assert s["n_images"] == 4 and s["backbones"] == {"toy": 3} and s["n_done"] == {"toy": 4}
    assert s["provenance"]["backbones"]["toy"]["dtype"] == "float16"


def test_bad_inputs_refused(tmp_path):
    meta = _meta(3)
    with pytest.raises(StoreError, match="duplicate image id 'a'"):
        store.write(tmp_path / "d.h5", ["a", "a", "b"], None, {}, {})
    with pytest.raises(StoreError, match="shape"):
        store.write(tmp_path / "d.h5", meta["image_id"], meta, {"t": np.zeros((2, 3))}, {})
    with pytest.raises(StoreError, match="no such store"):
        store.open(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # truncated HDF5 signature
    with pytest.raises(StoreError, match="unreadable store"):
        store.open(junk)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not a featmammo store"):
        store.open(tmp_path / "other.h5")


def _entry(name="toy", weights="random", size=64, dim=3, dtype="float32"):
    return store.BackboneEntry(name, dim, _prov(weights, size), dtype)


def test_prepare_create_append_and_refuse(tmp_path):
    path = tmp_path / "p.h5"
    meta = _meta(4)
    ids = meta["image_id"]
    st = store.prepare(path, ids, meta, [_entry()], {"manifest_hash": "m1", "id_hashing": None})
    assert st.done("toy").sum() == 0 and st.provenance["manifest_hashes"] == ["m1"]
    mtime = path.stat().st_mtime_ns
    store.prepare(path, ids, meta, [_entry()], {"manifest_hash": "m1", "id_hashing": None})
    assert path.stat().st_mtime_ns == mtime  # nothing changed: file untouched

    with pytest.raises(StoreError, match=r"preprocessing config \(image_size: 64 -> 128\)"):
        store.prepare(path, ids, meta, [_entry(size=128)], {"id_hashing": None})
    with pytest.raises(StoreError, match="weights .'random' -> 'imagenet'"):
        store.prepare(path, ids, meta, [_entry(weights="imagenet")], {"id_hashing": None})
    with pytest.raises(StoreError, match="dtype"):
        store.prepare(path, ids, meta, [_entry(dtype="float16")], {"id_hashing": None})
    changed = meta.copy()
    changed.loc[1, "label"] = "benign"
    with pytest.raises(StoreError, match="image 'img01': label is 'malignant' in the store"):
        store.prepare(path, ids, changed, [_entry()], {"id_hashing": None})
    with pytest.raises(StoreError, match="keyed-hash ids"):
        store.prepare(path, ids, meta, [_entry()], {"id_hashing": {"key_check": "k"}})

    # a superset manifest appends its new images; another identity can live under a new name
    bigger = _meta(7)
    st = store.prepare(
        path, bigger["image_id"], bigger, [_entry(), _entry("toy_128", size=128)],
        {"manifest_hash": "m2", "id_hashing": None},
    )  # fmt: skip
    assert len(st) == 7 and st.backbones == ["toy", "toy_128"]
    assert st.meta.loc["img06", "path"] == "/data/img06.png"
    assert st.status("toy").tolist() == [0] * 7
    assert st.provenance["manifest_hashes"] == ["m1", "m2"]
    # a subset manifest keeps the other images
    st = store.prepare(
        path, ids[:2], meta[:2], [_entry()], {"manifest_hash": "m1", "id_hashing": None}
    )
    assert len(st) == 7


def _shard_block(x, status=None, reason=None):
    n = len(x)
    status = np.ones(n, np.int8) if status is None else np.asarray(status, np.int8)
    reason = [""] * n if reason is None else reason
    return (x, status, reason)


def test_shards_merge_idempotent_and_identity_checked(tmp_path, rng):
    path = tmp_path / "c.h5"
    meta = _meta(5)
    ids = list(meta["image_id"])
    e = _entry()
    store.prepare(path, ids, meta, [e], {"id_hashing": None})
    x = rng.standard_normal((5, 3)).astype(np.float32)
    store.write_shard(path, ids[3:], {"toy": _shard_block(x[3:])}, {"toy": e.identity})
    p2 = store.write_shard(
        path, ids[:2],
        {"toy": _shard_block(np.vstack([x[0], np.full(3, np.nan)]), [1, 2], ["", "broken"])},
        {"toy": e.identity},
    )  # fmt: skip
    copy = p2.read_bytes()
    stale = store.write_shard(path, ids[2:3], {"toy": _shard_block(x[2:3])}, {"toy": "0" * 16})
    assert store.open(path).pending_shards() == 3
    assert store.consolidate(path) == 3
    st = store.open(path)
    assert st.status("toy").tolist() == [1, 2, 0, 1, 1]  # the stale shard was not merged
    np.testing.assert_array_equal(st.array("toy")[[0, 3, 4]], x[[0, 3, 4]])
    assert st.failures["reason"].tolist() == ["broken"]
    assert not stale.exists() and st.pending_shards() == 0
    # merging the same shard again (a kill between replace and unlink) changes nothing
    before = st.array("toy")
    (store.parts_dir(path) / p2.name).write_bytes(copy)
    store.consolidate(path)
    np.testing.assert_array_equal(store.open(path).array("toy"), before)
    store.cleanup_parts(path)
    assert not store.parts_dir(path).exists()


def _hold_lock(path, ready, release) -> None:
    with store.lock(path):
        os.write(ready, b"x")
        os.read(release, 1)


def test_lock_refuses_a_second_process_and_is_reentrant_within_one(tmp_path):
    path = tmp_path / "l.h5"
    with store.lock(path):
        assert store.is_locked(path)
        with pytest.raises(StoreError, match="another featmammo process"):
            store.lock(path).__enter__()  # a second run in this process: refused too
        # the run's own writers re-enter it
        store.prepare(path, ["a"], None, [_entry()], {"id_hashing": None})
    assert not store.is_locked(path)
    path.unlink()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            _hold_lock(path, w1, r2)
        finally:
            os._exit(0)
    try:
        os.read(r1, 1)  # the child holds the lock
        assert store.is_locked(path)
        writers = (
            lambda: store.lock(path).__enter__(),
            lambda: store.write(path, ["a"], None, {}, {}),
            lambda: store.prepare(path, ["a"], None, [_entry()], {"id_hashing": None}),
        )
        for writer in writers:
            with pytest.raises(StoreError, match="another featmammo process"):
                writer()
        assert not path.exists()
    finally:
        os.write(w2, b"x")
        os.waitpid(pid, 0)
    with store.lock(path):  # released with the process
        pass


def test_a_store_on_a_read_only_file_system_is_read_and_a_write_is_a_store_error(
    tmp_path, monkeypatch
):
    """Readers need no lock; a writer that cannot create the lock file gets a StoreError (it was
    a raw OSError traceback: 'Read-only file system: .../s.h5.lock')."""
    import errno

    path = tmp_path / "s.h5"
    store.write(path, ["a", "b"], None, {"toy": np.ones((2, 3), np.float32)}, {"toy": _prov()})
    real_open = os.open

    def read_only(p, flags, *args):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(p))
        return real_open(p, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with store.open(path) as st:
        assert st.n_done() == {"toy": 2} and not st.writing()
    writers = (
        lambda: store.lock(path).__enter__(),
        lambda: store.prepare(path, ["a", "b"], None, [_entry()], {"id_hashing": None}),
        lambda: store.compact(path, everything=True),
    )
    for writer in writers:
        with pytest.raises(StoreError, match="cannot write this store.*Read-only file system"):
            writer()


def test_a_folder_given_as_the_store_is_refused_plainly(tmp_path):
    with pytest.raises(StoreError, match="is a folder; a store is one .h5 file"):
        store.prepare(tmp_path, ["a"], None, [_entry()], {"id_hashing": None})


def _shards_then_merge(path, ident) -> None:
    ids = [f"img{i:02d}" for i in range(6)]
    x = np.arange(18, dtype=np.float32).reshape(6, 3)
    ok = np.ones(3, np.int8)
    store.write_shard(path, ids[:3], {"toy": (x[:3], ok, [""] * 3)}, {"toy": ident})
    store.write_shard(path, ids[3:], {"toy": (x[3:], ok, [""] * 3)}, {"toy": ident})
    store.consolidate(path)


def _in_child(fn, *args, env: dict, **kw) -> int:
    """Run fn in a forked child (cheap: no re-import) and return its wait status signal/exit."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.environ.update(env)
            fn(*args, **kw)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


@pytest.mark.parametrize(
    "point", ["shard-tmp:1", "shard-tmp:2", "consolidate-tmp:1", "consolidate-replaced:1"]
)
def test_sigkill_during_shard_or_merge_leaves_readable_store(tmp_path, point):
    path = tmp_path / "k.h5"
    meta = _meta(6)
    e = _entry()
    store.prepare(path, meta["image_id"], meta, [e], {"id_hashing": None})
    assert _in_child(_shards_then_merge, path, e.identity, env={"FEATMAMMO_TEST_KILL": point}) == -9
    st = store.open(path)  # the main file is always readable
    assert st.status("toy").sum() in (0, 6)  # old or new version, never half a merge
    # a rerun without faults ends identical to an uninterrupted run
    assert _in_child(_shards_then_merge, path, e.identity, env={"FEATMAMMO_TEST_KILL": ""}) == 0
    store.cleanup_parts(path)
    np.testing.assert_array_equal(
        store.open(path).array("toy"), np.arange(18, dtype=np.float32).reshape(6, 3)
    )
    assert not store.parts_dir(path).exists()


def test_reading_a_store_does_not_import_torch(small_store):
    st = small_store[0]
    code = (
        "import sys, featmammo, featmammo.store as s; st = s.open(sys.argv[1]); "
        "st.frame(); st.failures; featmammo.open_store(sys.argv[1]); "
        "assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code, str(st.path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_precision_and_decoder_plugin_are_identity_keys_that_keep_old_identities(
    tmp_path, monkeypatch
):
    base = _prov() | {"dtype": "float32"}
    plain = store.backbone_identity(base)
    assert store.backbone_identity(base | {"precision": "float32"}) == plain
    assert store.backbone_identity(base | {"decoder_plugin": "pylibjpeg"}) == plain
    assert store.backbone_identity(base | {"precision": "bfloat16"}) != plain
    assert store.backbone_identity(base | {"decoder_plugin": "JPEG2000=gdcm"}) != plain
    # an entry a bfloat16 run made before precision was an identity key is resumed, not refused
    from featmammo.store import schema

    path = tmp_path / "bf16.h5"
    meta = _meta(4)
    bf16 = store.BackboneEntry("toy", 3, _prov() | {"precision": "bfloat16"})
    legacy = schema.backbone_identity
    monkeypatch.setattr(schema, "backbone_identity", lambda p: legacy(p, legacy=True))
    store.prepare(path, meta["image_id"], meta, [bf16], {"id_hashing": None})
    old_identity = store.open(path).identity("toy")
    monkeypatch.undo()
    assert old_identity != bf16.identity
    st = store.prepare(path, meta["image_id"], meta, [bf16], {"id_hashing": None})
    assert st.identity("toy") == bf16.identity
    fp32 = store.BackboneEntry("toy", 3, _prov() | {"precision": "float32"})
    with pytest.raises(StoreError, match=r"precision \('bfloat16' -> 'float32'\)"):
        store.prepare(path, meta["image_id"], meta, [fp32], {"id_hashing": None})
