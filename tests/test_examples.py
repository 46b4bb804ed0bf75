"""The scripts in examples/ keep running (each in a fresh interpreter, as a user runs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(args, cwd, timeout=900):
    out = subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert out.returncode == 0, f"{args}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_reuse_store_runs_on_its_own_demo_store(tmp_path):
    stdout = _run([EXAMPLES / "reuse_store.py"], tmp_path)
    assert "fuse()" in stdout


@pytest.mark.slow
def test_compare_heads_runs_on_a_store(tmp_path):
    import numpy as np
    import pandas as pd

    from featmammo import store

    rng = np.random.default_rng(0)
    n = 60
    labels = np.array(["benign", "malignant"])[np.arange(n) % 2]
    meta = pd.DataFrame({"label": labels, "patient_id": [f"P{i // 2}" for i in range(n)]})
    path = tmp_path / "s.h5"
    ids = [f"img{i}" for i in range(n)]
    arrays = {
        name: rng.normal(size=(n, dim)).astype(np.float32) + (labels == "malignant")[:, None]
        for name, dim in (("resnet50", 16), ("alexnet", 24))
    }
    prov = {"weights": "random", "preprocess_fingerprint": "test", "layer": "penultimate"}
    store.write(path, ids, meta, arrays, {name: prov for name in arrays})
    stdout = _run([EXAMPLES / "compare_heads.py", path, "hybrid", "logreg,knn"], tmp_path)
    assert "logreg" in stdout and "tuned" in stdout


@pytest.mark.slow
def test_train_hybrid_runs_and_reruns(tmp_path):
    args = [EXAMPLES / "train_hybrid.py", "--out", tmp_path / "out", "--n", "40", "--epochs", "1",
            "--image-size", "64"]  # fmt: skip
    first = _run(args, tmp_path, timeout=1800)
    assert "hybridnet" in first and "comparisons.csv" in first
    assert (tmp_path / "out" / "compare" / "comparisons.csv").exists()
    # a second run reuses the finished HybridNet run (train keeps no last.pt by default)
    assert "hybridnet" in _run(args, tmp_path, timeout=1800)
