"""The extraction loop: store contents, resume, refusal, failures, hashed ids, faults, sharding.

Tiny synthetic PNGs (8- and 16-bit), random-weight resnet18/alexnet at 64 px and one intra-op thread
keep this fast; the reference store is built once per module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from featmammo import store  # noqa: E402
from featmammo.errors import StoreError  # noqa: E402
from featmammo.extract import embed, extract  # noqa: E402
from featmammo.hashing import keyed_hash  # noqa: E402
from featmammo.preprocess import PreprocessConfig  # noqa: E402

CFG = PreprocessConfig(image_size=64)


@pytest.fixture(scope="module", autouse=True)
def _own_prepared_cache(tmp_path_factory):
    """The default prepared-image cache in a folder of this module's own (not ./cache)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATMAMMO_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


FAST = {"weights": "random", "preprocess": CFG, "threads": 1, "device": "cpu"}


def _phantom(rng, i: int, side: int = 64) -> np.ndarray:
    """A bright blob on a dark background (so the breast crop finds something), 8 or 16 bit."""
    yy, xx = np.mgrid[:side, :side]
    cy, cx = side / 2 + rng.integers(-6, 7), side / 3 + rng.integers(-4, 5)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (side / 5) ** 2))
    img = np.clip(blob + 0.1 * rng.random((side, side)), 0, 1)
    if i % 2:
        return (img * 255).astype(np.uint8)
    return (img * 65535).astype(np.uint16)


def _rows(folder: Path, n: int, start: int = 0, rng=None) -> list[dict]:
    from PIL import Image

    rng = rng or np.random.default_rng(start)
    rows = []
    for i in range(start, start + n):
        name = f"img{i:02d}.png"
        Image.fromarray(_phantom(rng, i)).save(folder / name)
        rows.append(
            {"image_id": f"img{i:02d}", "path": name, "label": ["benign", "malignant"][i % 2],
             "patient_id": f"P{i // 2:03d}", "laterality": "LR"[i % 2], "view": "CC",
             "split": "train", "source": "synthetic", "site": f"site{i % 3}"}
        )  # fmt: skip
    return rows


def _bad_rows(folder: Path) -> list[dict]:
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_bytes(b"this is not an image\n" * 4)
    base = {"label": "benign", "laterality": "L", "view": "MLO", "split": "test",
            "source": "synthetic", "site": "site0"}  # fmt: skip
    return [
        {"image_id": "empty", "path": "empty.png", "patient_id": "P900", **base},
        {"image_id": "text", "path": "text.png", "patient_id": "P901", **base},
    ]


@pytest.fixture(scope="module")
def r18():
    """resnet18 with seeded random weights, built once (init costs more than the 64 px forwards);
    ``extract`` takes a built module as readily as a name and records the same spec."""
    from featmammo.backbones import make

    return make("resnet18", weights="random")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12-row manifest: 10 phantoms with the two bad files in the middle (row 5 and 6)."""
    d = tmp_path_factory.mktemp("extract")
    rows = _rows(d, 10)
    rows = rows[:5] + _bad_rows(d) + rows[5:]
    manifest = d / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return d, manifest


@pytest.fixture(scope="module")
def base(data):
    """The uninterrupted reference run: resnet18 + alexnet, batches of 4."""
    d, manifest = data
    path = d / "base.h5"
    summary = extract(manifest, path, backbones=["resnet18", "alexnet"], batch_size=4, **FAST)
    return path, summary


def _copy(src: Path, dst: Path) -> Path:
    """An independent copy of the store at ``src`` (``store.pack`` where the store is a main file
    over segment files; a plain file copy for a self-contained one)."""
    if hasattr(store, "pack"):
        return Path(store.pack(src, dst))
    shutil.copyfile(src, dst)
    return dst


def test_store_contents_and_provenance(base, data):
    path, summary = base
    assert (summary.n_done, summary.n_skipped, summary.n_failed) == (10, 0, 2)
    assert not summary.exceeded_max_failures and summary.device == "cpu"
    st = store.open(path)
    assert st.backbones == ["resnet18", "alexnet"]
    assert st.dim("resnet18") == 512 and st.dim("alexnet") == 4096
    assert list(st.ids[:5]) == [f"img{i:02d}" for i in range(5)] and st.ids[5] == "empty"
    assert st.meta.loc["img03", "label"] == "malignant"
    assert st.meta.loc["img03", "laterality"] == "R" and st.meta.loc["img03", "site"] == "site0"
    assert st.meta.loc["img03", "path"] == str(data[0] / "img03.png")
    for name in st.backbones:
        done = st.done(name)
        assert done.sum() == 10 and not done[5] and not done[6]
        x = st.array(name)
        assert np.isfinite(x[done]).all() and np.isnan(x[~done]).all()
    # distinct images give distinct embeddings
    x = st.array("resnet18")[st.done("resnet18")]
    assert len({row.tobytes() for row in x}) == 10
    fails = st.failures.set_index(["image_id", "backbone"])["reason"]
    assert len(fails) == 4
    assert "empty" in fails[("empty", "alexnet")]
    assert fails[("text", "resnet18")]  # a reason is recorded (the reader's message)
    prov = st.provenance
    for k in ("featmammo", "torch", "torchvision", "pydicom", "manifest_hash", "created"):
        assert prov[k], k
    assert prov["runs"][-1]["device"] == "cpu" and prov["runs"][-1]["n_done"] == 10
    bp = st.backbone_provenance("resnet18")
    assert bp["weights"] == "random" and bp["layer"] == "penultimate"
    assert bp["spec"]["arch"] == "resnet18" and bp["spec"]["dim"] == 512
    assert bp["preprocess"]["image_size"] == 64
    assert bp["preprocess_fingerprint"] == CFG.fingerprint()
    assert bp["devices"] == ["cpu"] and bp["precision"] == "float32"
    assert not store.parts_dir(path).exists()  # shards merged and removed


def test_embed_matches_store(r18, base, data):
    path, _ = base
    d, _ = data
    st = store.open(path)
    paths = [d / f"img{i:02d}.png" for i in (0, 1, 2, 3)]
    sides = ["L", "R", "L", "R"]
    out = embed(paths, backbones=[r18], weights="random", preprocess=CFG, device="cpu",
                lateralities=sides)  # fmt: skip
    assert set(out) == {"resnet18"} and out["resnet18"].shape == (4, 512)
    np.testing.assert_allclose(out["resnet18"], st.array("resnet18")[:4], rtol=1e-4, atol=1e-5)
    from PIL import Image

    pixels = np.asarray(Image.open(paths[0]))
    again = embed([pixels], backbones=[r18], weights="random", preprocess=CFG, device="cpu",
                  lateralities=["L"])  # fmt: skip
    np.testing.assert_allclose(again["resnet18"][0], out["resnet18"][0], rtol=1e-4, atol=1e-5)
    from featmammo.preprocess import preprocess

    ready = preprocess(pixels, CFG, laterality="L")  # already preprocessed (3, S, S) input
    named = embed([ready], backbones={"resnet18_v2": r18}, preprocess=CFG, device="cpu")
    np.testing.assert_allclose(named["resnet18_v2"][0], out["resnet18"][0], rtol=1e-4, atol=1e-5)


def test_resume_skips_done_and_retries_failed(base, data, tmp_path):
    path = _copy(base[0], tmp_path / "resume.h5")
    before = store.open(path)
    s = extract(data[1], path, backbones=["resnet18", "alexnet"], batch_size=4, **FAST)
    assert (s.n_done, s.n_skipped, s.n_failed) == (0, 10, 2)
    after = store.open(path)
    for name in ("resnet18", "alexnet"):
        assert np.array_equal(after.array(name), before.array(name), equal_nan=True)
    assert len(after.provenance["runs"]) == 2


def test_new_manifest_rows_are_appended(r18, base, data, tmp_path):
    d, manifest = data
    path = _copy(base[0], tmp_path / "append.h5")
    extra = _rows(d, 2, start=20)
    big = pd.concat([pd.read_csv(manifest, dtype=str), pd.DataFrame(extra)])
    big_csv = d / "bigger.csv"
    big.to_csv(big_csv, index=False)
    s = extract(big_csv, path, backbones=[r18], batch_size=4, **FAST)
    assert (s.n_done, s.n_skipped) == (2, 10)
    st = store.open(path)
    assert list(st.ids[-2:]) == ["img20", "img21"] and st.done("resnet18")[-2:].all()
    assert st.done("alexnet")[-2:].sum() == 0  # not requested: pending
    assert len(st.provenance["manifest_hashes"]) == 2


def test_other_preprocessing_refused_or_new_entry(r18, base, data, tmp_path):
    path = _copy(base[0], tmp_path / "refuse.h5")
    other = {**FAST, "preprocess": PreprocessConfig(image_size=48)}
    with pytest.raises(StoreError, match=r"'resnet18' exists with different preprocessing config"):
        extract(data[1], path, backbones=[r18], batch_size=4, **other)
    with pytest.raises(StoreError, match="dtype"):
        extract(data[1], path, backbones=[r18], batch_size=4, dtype="float16", **FAST)
    s = extract(data[1], path, backbones=[r18], batch_size=4, backbone_suffix="_48", **other)
    assert s.n_done == 10
    st = store.open(path)
    assert st.backbones == ["resnet18", "alexnet", "resnet18_48"]
    assert st.backbone_provenance("resnet18_48")["preprocess"]["image_size"] == 48
    assert np.array_equal(
        st.array("resnet18"), store.open(base[0]).array("resnet18"), equal_nan=True
    )


def test_workers_give_identical_embeddings_and_catch_errors(r18, base, data, tmp_path):
    path = tmp_path / "workers.h5"
    s = extract(data[1], path, backbones=[r18], batch_size=4, workers=2, **FAST)
    assert (s.n_done, s.n_failed) == (10, 2)
    ref = store.open(base[0]).array("resnet18")
    assert np.array_equal(store.open(path).array("resnet18"), ref, equal_nan=True)


def _small_manifest(d: Path) -> Path:
    """Bad files first, then 4 phantoms (for the CLI tests)."""
    rows = _bad_rows(d) + _rows(d, 4, start=30)
    p = d / "small.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


def _cli(args):
    from featmammo.cli.main import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_cli_max_failures_exit_code_and_info_json(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    manifest = _small_manifest(tmp_path)
    common = ["-b", "resnet18", "--weights", "random", "--image-size", "64", "--batch-size", "2"]
    r = _cli(["extract", str(manifest), "-o", str(tmp_path / "a.h5"), *common,
              "--max-failures", "1"])  # fmt: skip
    assert r.exit_code == 1, r.output
    st = store.open(tmp_path / "a.h5")
    assert st.done("resnet18").sum() == 0  # stopped after the first (all-bad) batch
    r = _cli(["extract", str(manifest), "-o", str(tmp_path / "b.h5"), *common,
              "--max-failures", "2", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{") :])
    assert (out["n_done"], out["n_failed"]) == (4, 2)
    r = _cli(["info", str(tmp_path / "b.h5"), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert set(info) == {"n_images", "backbones", "n_done", "failed", "provenance"}
    assert info["n_images"] == 6 and info["backbones"] == {"resnet18": 512}
    assert info["n_done"] == {"resnet18": 4}
    assert {f["image_id"] for f in info["failed"]} == {"empty", "text"}
    assert set(info["failed"][0]) == {"image_id", "path", "backbone", "reason"}
    r = _cli(["info", str(tmp_path / "b.h5")])
    assert r.exit_code == 0 and "resnet18" in r.output and "failed     2" in r.output


def test_hash_ids(r18, tmp_path):
    manifest = _small_manifest(tmp_path)
    key_file = tmp_path / "key"
    key_file.write_bytes(b"0123456789abcdef-secret")
    path = tmp_path / "h.h5"
    s = extract(manifest, path, backbones=[r18], batch_size=2, hash_ids=key_file, **FAST)
    assert s.n_done == 4
    st = store.open(path)
    key = key_file.read_bytes().strip()
    assert list(st.ids) == [keyed_hash(i, key) for i in ["empty", "text", "img30", "img31",
                                                         "img32", "img33"]]  # fmt: skip
    assert st.meta.loc[keyed_hash("img30", key), "patient_id"] == keyed_hash("P015", key)
    assert (st.meta["path"] == "").all() and "site" not in st.meta.columns
    assert (st.failures["path"] == "").all()
    for f in [path, *store.segments_dir(path).iterdir()]:  # the ids live in the segments
        raw = f.read_bytes()
        assert b"img30" not in raw and b"P015" not in raw and str(tmp_path).encode() not in raw
    assert st.provenance["id_hashing"]["method"] == "hmac-sha256"
    other = tmp_path / "key2"
    other.write_bytes(b"another-key-of-16+bytes")
    with pytest.raises(StoreError, match="different hash key"):
        extract(manifest, path, backbones=[r18], batch_size=2, hash_ids=other, **FAST)


def test_real_dicoms(r18, real_dicoms, tmp_path):
    paths = real_dicoms[:2]
    df = pd.DataFrame(
        {"image_id": ["d0", "d1"], "path": [str(p) for p in paths], "label": ["benign", "benign"],
         "patient_id": ["P_00173", "P_00173"], "laterality": ["", ""], "view": ["CC", "MLO"],
         "split": ["test", "test"], "source": ["cbis-ddsm", "cbis-ddsm"]}
    )  # fmt: skip
    s = extract(df, tmp_path / "dcm.h5", backbones=[r18], batch_size=2, **FAST)
    assert (s.n_done, s.n_failed) == (2, 0), s.failures
    x = store.open(tmp_path / "dcm.h5").array("resnet18")
    assert np.isfinite(x).all() and not np.array_equal(x[0], x[1])


# ------------------------------------------------------------------------------- fault injection
def _run_in_child(env: dict, manifest, path, r18) -> int:
    """extract in a forked child (no re-import of torch); returns -signal or the exit code."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.environ.update(env)
            extract(manifest, path, backbones=[r18], batch_size=4, consolidate_every=1,
                    **FAST)  # fmt: skip
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


@pytest.mark.parametrize(
    "kill", ["batch:1", "shard-tmp:2", "consolidate-tmp:2", "consolidate-replaced:1"]
)
def test_sigkill_then_rerun_equals_uninterrupted(r18, base, data, tmp_path, kill):
    path = tmp_path / "killed.h5"
    assert _run_in_child({"FEATMAMMO_TEST_KILL": kill}, data[1], path, r18) == -9
    st = store.open(path)  # readable right after the kill
    assert st.done("resnet18").sum() < 10
    s = extract(data[1], path, backbones=[r18], batch_size=4, **FAST)
    assert s.n_done + s.n_skipped == 10
    ref = store.open(base[0])
    got = store.open(path)
    assert np.array_equal(got.array("resnet18"), ref.array("resnet18"), equal_nan=True)
    assert np.array_equal(got.status("resnet18"), ref.status("resnet18"))
    assert not store.parts_dir(path).exists()


@pytest.mark.slow
def test_sigkill_at_random_times_in_a_real_subprocess(base, data, tmp_path):
    """Kill a separate interpreter at arbitrary moments (not at hook points), several times."""
    import signal
    import time

    path = tmp_path / "rand.h5"
    code = (
        "import sys; from featmammo.extract import extract; "
        "from featmammo.preprocess import PreprocessConfig; "
        "extract(sys.argv[1], sys.argv[2], backbones=['resnet18'], batch_size=4, "
        "weights='random', preprocess=PreprocessConfig(image_size=64), threads=1, device='cpu', "
        "consolidate_every=1)"
    )
    rng = np.random.default_rng(0)
    for _ in range(4):
        p = subprocess.Popen([sys.executable, "-c", code, str(data[1]), str(path)])
        time.sleep(float(rng.uniform(2.0, 8.0)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        if path.exists():
            store.open(path)
    subprocess.run([sys.executable, "-c", code, str(data[1]), str(path)], check=True)
    ref = store.open(base[0]).array("resnet18")
    assert np.array_equal(store.open(path).array("resnet18"), ref, equal_nan=True)


# ------------------------------------------------------------------------------- sharding
@pytest.mark.slow
def test_torchrun_two_processes_give_one_identical_store(base, data, tmp_path):
    path = tmp_path / "ddp.h5"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "featmammo.cli.main", "extract", str(data[1]), "-o", str(path), "-b", "resnet18",
           "--weights", "random", "--image-size", "64", "--batch-size", "4",
           "--device", "cpu"]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = store.open(base[0])
    got = store.open(path)
    assert list(got.ids) == list(ref.ids)
    assert np.array_equal(got.array("resnet18"), ref.array("resnet18"), equal_nan=True)
    assert np.array_equal(got.status("resnet18"), ref.status("resnet18"))
    assert got.provenance["runs"][-1]["world_size"] == 2
    assert not store.parts_dir(path).exists()


# ------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_cpu_and_gpu_embeddings_agree(base, data, tmp_path):
    """Tolerance: per-image cosine similarity >= 0.9999 in float32 (cuDNN/TF32 reductions) and
    >= 0.99 under bfloat16 autocast, against the CPU store."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ref = store.open(base[0]).array("resnet18")
    ok = np.isfinite(ref).all(axis=1)
    for precision, floor in (("float32", 0.9999), ("bfloat16", 0.99)):
        path = tmp_path / f"gpu_{precision}.h5"
        extract(data[1], path, backbones=["resnet18"], batch_size=4, weights="random",
                preprocess=CFG, device="cuda", precision=precision)  # fmt: skip
        x = store.open(path).array("resnet18")
        a, b = x[ok], ref[ok]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.min() >= floor, (precision, cos.min())
