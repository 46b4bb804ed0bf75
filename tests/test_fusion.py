"""Fusion: id joins (never row order), provenance refusals, "hybrid", block transformers."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline

from featmammo import store as fstore
from featmammo.errors import ConfigError, StoreError
from featmammo.fusion import BlockPCA, BlockScaler, fuse, preprocess_fingerprint, resolve_features

N = 30
DIMS = {"resnet50": 6, "alexnet": 4, "vgg16": 3}


def _prov(name, *, fp="fp-A", sha=None):
    return {
        "spec": {"name": name, "arch": name, "dim": DIMS[name]},
        "layer": "avgpool",
        "weights": "random",
        "weights_sha256": sha or f"sha-{name}",
        "preprocess": {"image_size": 64, "fp": fp},
        "preprocess_fingerprint": fp,
    }


def _truth(seed=0):
    """Ground truth per image id: embeddings that encode the id, labels, patients."""
    ids = np.array([f"img{i:03d}" for i in range(N)])
    rng = np.random.default_rng(seed)
    emb = {
        name: (rng.normal(size=(N, d)) + np.arange(N)[:, None]).astype(np.float32)
        for name, d in DIMS.items()
    }
    meta = pd.DataFrame(
        {
            "label": np.array(["benign", "malignant", "normal"])[np.arange(N) % 3],
            "patient_id": [f"P{i // 2:03d}" for i in range(N)],
        }
    )
    return ids, emb, meta


def _write(path, rows, names, *, fp="fp-A", sha=None):
    ids, emb, meta = _truth()
    arrays = {n: emb[n][rows] for n in names}
    return fstore.write(
        path,
        ids[rows],
        meta.iloc[rows].reset_index(drop=True),
        arrays,
        {n: _prov(n, fp=fp, sha=sha) for n in names},
    )


def _expected(ids, names):
    all_ids, emb, _ = _truth()
    pos = [int(np.flatnonzero(all_ids == i)[0]) for i in ids]
    return np.concatenate([emb[n][pos] for n in names], axis=1)


def test_joins_by_id_not_row_order(tmp_path, caplog):
    rng = np.random.default_rng(7)
    rows_a = rng.permutation(N)  # every image, shuffled
    rows_b = rng.permutation(N)[:20]  # a different order and a subset
    a = _write(tmp_path / "a.h5", rows_a, ["resnet50"])
    b = _write(tmp_path / "b.h5", rows_b, ["alexnet"])
    with caplog.at_level(logging.WARNING, logger="featmammo.fusion"):
        fused = fuse([a, b], "resnet50+alexnet")
    assert "dropped 10" in caplog.text
    assert len(fused.ids) == 20 and list(fused.ids) == sorted(fused.ids)
    assert set(fused.ids) == set(_truth()[0][rows_b])
    assert fused.X.dtype == np.float32 and fused.X.shape == (20, 10)
    np.testing.assert_array_equal(fused.X, _expected(fused.ids, ["resnet50", "alexnet"]))
    assert fused.blocks == {"resnet50": slice(0, 6), "alexnet": slice(6, 10)}
    # metadata aligned with ids
    assert list(fused.meta.index) == list(fused.ids)
    idx = [int(i[3:]) for i in fused.ids]
    assert list(fused.y) == list(_truth()[2]["label"].iloc[idx])
    assert list(fused.groups) == [f"P{i // 2:03d}" for i in idx]
    # the same data in other row orders gives the identical result
    c = _write(tmp_path / "c.h5", rows_a[::-1], ["resnet50"])
    again = fuse([b, c], "resnet50+alexnet")
    np.testing.assert_array_equal(again.X, fused.X)
    assert again.fingerprint() == fused.fingerprint()


def test_only_rows_done_for_every_backbone(tmp_path):
    # row 2 pending for both backbones, row 5 pending for alexnet only
    ids, emb, meta = _truth()
    alex = emb["alexnet"].copy()
    alex[[2, 5]] = np.nan
    res = emb["resnet50"].copy()
    res[2] = np.nan
    s = fstore.write(
        tmp_path / "t.h5",
        ids,
        meta,
        {"resnet50": res, "alexnet": alex},
        {n: _prov(n) for n in ("resnet50", "alexnet")},
    )
    assert fuse(s, "resnet50").X.shape[0] == N - 1
    fused = fuse(s, "hybrid")
    assert fused.X.shape == (N - 2, 10)
    assert {"img002", "img005"}.isdisjoint(fused.ids)
    np.testing.assert_array_equal(fused.X, _expected(fused.ids, ["resnet50", "alexnet"]))


def test_refuses_mismatched_preprocessing(tmp_path):
    a = _write(tmp_path / "a.h5", np.arange(N), ["resnet50"], fp="fp-A")
    b = _write(tmp_path / "b.h5", np.arange(N), ["alexnet"], fp="fp-B")
    with pytest.raises(StoreError) as err:
        fuse([a, b], "hybrid")
    msg = str(err.value)
    for part in ("a.h5", "b.h5", "resnet50", "alexnet", "fp-A", "fp-B"):
        assert part in msg
    # an explicit opt-out fuses with a warning
    fused = fuse([a, b], "hybrid", require_same_preprocess=False)
    assert fused.X.shape == (N, 10)


def test_same_backbone_two_stores(tmp_path):
    a = _write(tmp_path / "a.h5", np.arange(0, 20), ["resnet50"])
    b = _write(tmp_path / "b.h5", np.arange(15, N), ["resnet50"])
    merged = fuse([a, b], "resnet50")  # same weights + preprocessing: shards are merged by id
    assert len(merged.ids) == N
    np.testing.assert_array_equal(merged.X, _expected(merged.ids, ["resnet50"]))
    other = _write(tmp_path / "other.h5", np.arange(N), ["resnet50"], sha="different-weights")
    with pytest.raises(StoreError, match="different provenance") as err:
        fuse([a, other], "resnet50")
    assert "a.h5" in str(err.value) and "other.h5" in str(err.value)


def test_conflicting_labels_refused(tmp_path):
    ids, emb, meta = _truth()
    a = _write(tmp_path / "a.h5", np.arange(N), ["resnet50"])
    meta2 = meta.copy()
    meta2.loc[3, "label"] = "normal" if meta2.loc[3, "label"] != "normal" else "benign"
    b = fstore.write(tmp_path / "b.h5", ids, meta2, {"alexnet": emb["alexnet"]},
                     {"alexnet": _prov("alexnet")})  # fmt: skip
    with pytest.raises(StoreError, match="img003"):
        fuse([a, b], "hybrid")


def test_feature_string_resolution(caplog):
    three = ["vgg16", "alexnet", "resnet50"]
    assert resolve_features("hybrid", three) == ["resnet50", "alexnet"]
    with caplog.at_level(logging.INFO, logger="featmammo.fusion"):
        assert resolve_features("hybrid", ["vgg16", "alexnet"]) == ["vgg16", "alexnet"]
    assert "every backbone" in caplog.text
    assert resolve_features("vgg16+resnet50", three) == ["vgg16", "resnet50"]
    assert resolve_features("hybrid:runs/a+b/ckpt.pt", ["hybrid:runs/a+b/ckpt.pt"]) == [
        "hybrid:runs/a+b/ckpt.pt"
    ]
    with pytest.raises(ConfigError, match="densenet"):
        resolve_features("resnet50+densenet", three)
    with pytest.raises(ConfigError, match="twice"):
        resolve_features("alexnet+alexnet", three)
    with pytest.raises(ConfigError):
        resolve_features("", three)


class _MemStore:
    """An in-memory object with the Store attributes fusion uses."""

    def __init__(self, ids, arrays, provs, meta=None):
        self.ids = np.asarray(ids)
        self._arrays = arrays
        self._provs = provs
        self.backbones = list(arrays)
        self.meta = meta

    def array(self, name):
        return self._arrays[name]

    def done(self, name):
        return ~np.isnan(self._arrays[name]).all(axis=1)

    def backbone_provenance(self, name):
        return self._provs[name]


def test_in_memory_store_and_missing_fingerprint():
    ids, emb, _ = _truth()
    mem = _MemStore(ids, {"resnet50": emb["resnet50"]}, {"resnet50": {}})
    fused = fuse(mem, "resnet50")  # one block: nothing to compare
    assert fused.X.shape == (N, 6) and fused.meta.shape[0] == N
    mem2 = _MemStore(
        ids,
        {"resnet50": emb["resnet50"], "alexnet": emb["alexnet"]},
        {"resnet50": _prov("resnet50"), "alexnet": {}},
    )
    with pytest.raises(StoreError, match="cannot be verified"):
        fuse(mem2, "hybrid")
    assert preprocess_fingerprint({"preprocess": {"image_size": 224}}).startswith("config:")


def test_block_scaler_balances_blocks_and_learns_on_train_only():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(5, 3, (80, 4)), rng.normal(-1, 0.1, (80, 16))], axis=1)
    blocks = {"resnet50": slice(0, 4), "alexnet": slice(4, 20)}
    Z = BlockScaler(blocks).fit_transform(X)
    for s in blocks.values():  # every block carries total variance 1/B, a row 1
        np.testing.assert_allclose(Z[:, s].var(axis=0).sum(), 0.5, rtol=1e-6)
    np.testing.assert_allclose(Z.var(axis=0).sum(), 1.0, rtol=1e-6)
    one = BlockScaler({"resnet50": slice(0, 20)}).fit_transform(X)  # one block: same rule
    np.testing.assert_allclose(one.var(axis=0).sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(BlockScaler().fit_transform(X), one, rtol=1e-6)
    Z2 = BlockScaler(blocks, balance=False).fit_transform(X)
    np.testing.assert_allclose(Z2.var(axis=0), 1.0, rtol=1e-6)

    train, test = X[:50], X[50:] + 100.0
    scaler = BlockScaler(blocks).fit(train)
    np.testing.assert_allclose(scaler.mean_, train.mean(axis=0))  # test rows never seen
    assert scaler.transform(test).mean() > 10

    y = (X[:, 0] > 5).astype(int)
    pipe = make_pipeline(BlockScaler(blocks), LogisticRegression())
    assert cross_val_score(pipe, X, y, cv=3).mean() > 0.8
    with pytest.raises(ValueError, match="tile"):
        BlockScaler({"a": (0, 3), "b": (4, 20)}).fit(X)
    with pytest.raises(ValueError, match="cover"):
        BlockScaler({"a": (0, 3)}).fit(X)


def test_block_pca_per_block():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 20))
    pca = BlockPCA({"resnet50": (0, 4), "alexnet": (4, 20)}, n_components=6).fit(X)
    assert pca.blocks_out_ == {"resnet50": (0, 4), "alexnet": (4, 10)}  # capped by block width
    assert pca.transform(X).shape == (40, 10)
    assert list(pca.get_feature_names_out()[:2]) == ["resnet50:pc0", "resnet50:pc1"]


@pytest.mark.parametrize("column", ["patient_id", "split"])
def test_conflicting_patient_or_split_refused(tmp_path, column):
    # the patient drives the CV grouping and the split the held-out test: no silent first-store win
    ids, emb, meta = _truth()
    meta = meta.assign(split="train")
    a = fstore.write(tmp_path / "a.h5", ids, meta, {"resnet50": emb["resnet50"]},
                     {"resnet50": _prov("resnet50")})  # fmt: skip
    meta2 = meta.copy()
    meta2.loc[5, column] = "other"
    b = fstore.write(tmp_path / "b.h5", ids, meta2, {"alexnet": emb["alexnet"]},
                     {"alexnet": _prov("alexnet")})  # fmt: skip
    with pytest.raises(StoreError, match=f"img005.*different {column}"):
        fuse([a, b], "hybrid")
    # identical metadata fuses
    c = fstore.write(tmp_path / "c.h5", ids, meta, {"alexnet": emb["alexnet"]},
                     {"alexnet": _prov("alexnet")})  # fmt: skip
    assert fuse([a, c], "hybrid").X.shape == (N, DIMS["resnet50"] + DIMS["alexnet"])


def test_an_id_embedded_from_other_file_contents_is_not_joined(tmp_path):
    """resnet50 extracted before an image was replaced, alexnet after: the two stores agree on
    label, patient and split, but the row would join embeddings of two different images."""
    ids, emb, meta = _truth()
    meta = meta.assign(file_identity=[f"sha256:{i:032x}" for i in range(N)])
    a = fstore.write(tmp_path / "a.h5", ids, meta, {"resnet50": emb["resnet50"]},
                     {"resnet50": _prov("resnet50")})  # fmt: skip
    replaced = meta.copy()
    replaced.loc[7, "file_identity"] = "sha256:" + "f" * 32
    b = fstore.write(tmp_path / "b.h5", ids, replaced, {"alexnet": emb["alexnet"]},
                     {"alexnet": _prov("alexnet")})  # fmt: skip
    with pytest.raises(StoreError, match="img007.*different file contents.*a.h5 and .*b.h5"):
        fuse([a, b], "hybrid")
    assert len(fuse([a, b], "hybrid", require_same_preprocess=False).ids) == N  # the opt-out warns
    # the mask part (a --roi crop entry of the store read it) is not the image's content
    masked = meta.assign(
        file_identity=[f"{v} mask:{i:032x}" for i, v in enumerate(meta.file_identity)]
    )
    c = fstore.write(tmp_path / "c.h5", ids, masked, {"alexnet": emb["alexnet"]},
                     {"alexnet": _prov("alexnet")})  # fmt: skip
    assert fuse([a, c], "hybrid").X.shape == (N, DIMS["resnet50"] + DIMS["alexnet"])
    # a store made before identities were recorded ("") cannot tell: fused as before
    old = fstore.write(tmp_path / "old.h5", ids, meta.assign(file_identity=""),
                       {"alexnet": emb["alexnet"]}, {"alexnet": _prov("alexnet")})  # fmt: skip
    assert fuse([a, old], "hybrid").X.shape == (N, DIMS["resnet50"] + DIMS["alexnet"])


def test_backbone_normalisation_alone_does_not_stop_a_fusion(tmp_path):
    """Under normalize='backbone' each block uses its own mean/std on the same prepared pixels."""
    from featmammo.preprocess import PreprocessConfig

    def prov(name, **cfg):
        c = PreprocessConfig(**{"image_size": 64, "normalize": "backbone", **cfg})
        return {**_prov(name), "preprocess": c.to_dict(), "preprocess_fingerprint": c.fingerprint()}

    ids, emb, meta = _truth()

    def store_with(path, a, b):
        arrays = {"resnet50": emb["resnet50"], "alexnet": emb["alexnet"]}
        return fstore.write(path, ids, meta, arrays, {"resnet50": a, "alexnet": b})

    imagenet = prov("resnet50")
    clip = prov("alexnet", mean=(0.3089,) * 3, std=(0.2505,) * 3)
    assert preprocess_fingerprint(imagenet) != preprocess_fingerprint(clip)
    fz = fuse(store_with(tmp_path / "a.h5", imagenet, clip), "resnet50+alexnet")
    assert fz.X.shape == (N, 10)
    bigger = prov("alexnet", image_size=128)  # other pixels: refused
    with pytest.raises(StoreError, match="preprocessing differs"):
        fuse(store_with(tmp_path / "b.h5", imagenet, bigger), "resnet50+alexnet")
    mean_a = prov("resnet50", normalize="mean")  # normalize='mean': the fingerprints decide
    mean_b = prov("alexnet", normalize="mean", mean=(0.3,) * 3)
    with pytest.raises(StoreError, match="preprocessing differs"):
        fuse(store_with(tmp_path / "c.h5", mean_a, mean_b), "resnet50+alexnet")
