"""Reuse cached embeddings: open a store, look at ids/metadata/arrays, fuse blocks by image id.

No torch needed. Run it on a store made by ``featmammo extract``::

    python examples/reuse_store.py cache/stores/cbis.h5

Without an argument it first writes a small demo store (random numbers standing in for embeddings)
with ``featmammo.store.write``, so the script runs anywhere. Each ``# %%`` cell works in a notebook.
"""

# %%
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from featmammo import store


def demo_store(folder: Path) -> Path:
    """Two stores' worth of blocks in one file: 'resnet50' (done for 5 of 6) and 'alexnet'."""
    rng = np.random.default_rng(0)
    ids = [f"P_{i:05d}_LEFT_CC" for i in range(6)]
    meta = pd.DataFrame(
        {
            "label": ["benign", "malignant", "benign", "malignant", "benign", "malignant"],
            "patient_id": ["P0", "P0", "P1", "P2", "P2", "P3"],
            "laterality": "L",
            "view": "CC",
            "split": ["train"] * 4 + ["test"] * 2,
            "source": "demo",
        }
    )
    r50 = rng.standard_normal((6, 2048)).astype(np.float32)
    r50[5] = np.nan  # not done (e.g. the image failed to decode)
    alex = rng.standard_normal((6, 4096)).astype(np.float32)
    prov = {"weights": "random", "preprocess_fingerprint": "demo", "layer": "penultimate"}
    path = folder / "demo.h5"
    store.write(
        path, ids, meta, {"resnet50": r50, "alexnet": alex}, {"resnet50": prov, "alexnet": prov},
        failures=[{"image_id": ids[5], "backbone": "resnet50", "reason": "file is empty"}],
    )  # fmt: skip
    return path


if len(sys.argv) > 1:
    path = Path(sys.argv[1])
else:
    path = demo_store(Path(tempfile.mkdtemp(prefix="featmammo-example-")))

# %% open: metadata is read at once, arrays on demand
st = store.open(path)
print(st)
print("ids      ", st.ids[:3], "...")  # the join key; never rely on row order across stores
print("backbones", {name: st.dim(name) for name in st.backbones})
print(
    st.meta.head()
)  # indexed by image_id: label, patient_id, laterality, view, split, source, ...

# %% one backbone as an array (N, D) float32: NaN rows where the image is not done
name = st.backbones[0]
X = st.array(name)
done = st.done(name)
print(f"{name}: {X.shape}, done {done.sum()}/{len(done)}")
print(st.failures)  # image_id, path, backbone, reason

# %% provenance: what made these numbers (check before comparing stores)
print({k: st.provenance.get(k) for k in ("featmammo", "torch", "manifest_hash", "created")})
print(st.backbone_provenance(name))

# %% a DataFrame of done rows, columns "<backbone>:<i>", indexed by image_id
frame = st.frame(*st.backbones)  # only images done for every named backbone
print(frame.shape, frame.columns[:3].tolist())

# %% fusing by id: the hybrid representation is a concatenation of blocks joined on image_id.
# Blocks from *different* stores join the same way (inner join on the index); refuse to fuse blocks
# whose preprocessing fingerprints differ.
blocks = [st.frame(n) for n in st.backbones]
fingerprints = {n: st.backbone_provenance(n).get("preprocess_fingerprint") for n in st.backbones}
assert len(set(fingerprints.values())) == 1, f"different preprocessing: {fingerprints}"
hybrid = pd.concat(blocks, axis=1, join="inner")
labelled = hybrid.join(st.meta[["label", "patient_id", "split"]])
X_train = labelled.loc[labelled["split"] == "train", hybrid.columns].to_numpy()
y_train = labelled.loc[labelled["split"] == "train", "label"].to_numpy()
print("hybrid", hybrid.shape, "train", X_train.shape, y_train)

# %% featmammo.fusion.fuse does the same with checks, when installed alongside:
try:
    from featmammo.fusion import fuse

    fused = fuse(st, "hybrid")
    print("fuse():", fused.X.shape, {k: (v.start, v.stop) for k, v in fused.blocks.items()})
except ImportError:  # pragma: no cover
    pass
