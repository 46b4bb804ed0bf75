"""``extract`` under ``torchrun``: one work list whatever the ranks' speeds, identities every rank
agrees on, one error for every rank, and a limit on every wait.

The fast tests run two ranks as two threads of this process over one in-memory key-value store
(``torch.distributed.HashStore``, what the launch's TCP store is to real ranks): the whole
protocol of ``featmammo.extract.ranks`` runs, without the launch. The slow ones launch
``python -m torch.distributed.run --nproc-per-node 2`` (gloo, CPU). Both extract 400 tiny PNGs
with a tiny seeded convolution (``Tiny``, 2,048-d like resnet50, so the writer merges shards while
the ranks work).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

from featmammo import store  # noqa: E402

N_ROWS = 400

SCRIPT = textwrap.dedent(
    """
    import logging, os, sys, time
    import torch
    from featmammo.backbones.registry import BackboneSpec
    from featmammo.extract import extract
    from featmammo.preprocess import PreprocessConfig

    class Tiny(torch.nn.Module):
        def __init__(self, seed):
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.conv = torch.nn.Conv2d(3, 2048, 3, stride=2)
            with torch.no_grad():
                self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
                self.conv.bias.zero_()
            self.spec = BackboneSpec(name="tiny", arch="tiny", layer="conv", dim=2048,
                                     input_size=16, seed=seed)

        def forward(self, x):
            time.sleep(0.02)  # a real backbone's pace: rank 0 merges shards during the run
            return self.conv(x).mean((2, 3))

    logging.basicConfig(level=logging.INFO)
    rank = int(os.environ.get("RANK", 0))
    seed = int(os.environ.get("TEST_SEED_OF_RANK1", 0)) if rank == 1 else 0
    fail_after = os.environ.get("TEST_RANK1_FAILS_AFTER")
    if rank == 1 and fail_after:
        from featmammo.extract import loop
        finish, seen = loop._Loop._finish, []

        def failing(self, *args):
            seen.append(1)
            if len(seen) > int(fail_after):
                raise RuntimeError("rank 1 broke on purpose")
            return finish(self, *args)

        loop._Loop._finish = failing
    s = extract(sys.argv[1], sys.argv[2], backbones=[Tiny(seed)], weights="random",
                preprocess=PreprocessConfig(image_size=16), batch_size=4, threads=1,
                device="cpu", cache=False)
    print("SUMMARY", rank, s.n_done, s.n_skipped, s.n_failed, flush=True)
    """
)


class _Tiny:
    """The script's backbone, built here for the in-process ranks."""

    def __new__(cls, seed: int = 0):
        namespace: dict = {}
        src = SCRIPT[: SCRIPT.index("logging.basicConfig")]
        exec(compile(src, "tiny", "exec"), namespace)  # noqa: S102 - our own test source
        return namespace["Tiny"](seed)


def _in_threads(monkeypatch, manifest, path, *, seeds=(0, 0), timeout_s=30.0, fail_rank1=None):
    """Run ``extract`` as ranks 0 and 1 of one launch, in two threads; returns what each rank
    returned or raised."""
    import threading

    import torch.distributed as dist

    from featmammo.devices import TorchrunEnv
    from featmammo.extract import extract
    from featmammo.extract import loop as loop_mod
    from featmammo.extract import ranks as ranks_mod
    from featmammo.extract import run as run_mod
    from featmammo.preprocess import PreprocessConfig

    kv = dist.HashStore()
    prefix = "featmammo/extract/test"

    def rank_of_thread() -> int:
        return int(threading.current_thread().name.rsplit("-", 1)[1])

    def join(rank, world):
        r = ranks_mod.Ranks(rank, world, kv, timeout_s)
        r.prefix = prefix  # one launch: both ranks share the keys
        return r, False

    monkeypatch.setattr(run_mod, "torchrun_env", lambda: TorchrunEnv(rank_of_thread(), 2, 0, 2))
    monkeypatch.setattr(run_mod.Ranks, "join", staticmethod(join))
    if fail_rank1 is not None:
        finish, seen = loop_mod._Loop._finish, []

        def failing(self, *args):
            if self.rank == 1:
                seen.append(1)
                if len(seen) > fail_rank1:
                    raise RuntimeError("rank 1 broke on purpose")
            return finish(self, *args)

        monkeypatch.setattr(loop_mod._Loop, "_finish", failing)
    models = [_Tiny(s) for s in seeds]
    out: list = [None, None]

    def go(rank: int) -> None:
        try:
            out[rank] = extract(
                manifest, path, backbones=[models[rank]], weights="random",
                preprocess=PreprocessConfig(image_size=16), batch_size=4, threads=1,
                device="cpu", cache=False,
            )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            out[rank] = exc

    threads = [threading.Thread(target=go, args=(r,), name=f"rank-{r}") for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    return out


def test_delayed_rank_in_process(data, tmp_path, monkeypatch):
    """Rank 1 starts 1.5 s late; rank 0 merges shards meanwhile. Both ranks work from rank 0's
    work list, so every row is done (without it, 172 of 400 rows stayed pending here)."""
    from featmammo.extract import ExtractSummary

    monkeypatch.setenv("FEATMAMMO_TEST_RANK_DELAY", "1:1.5")
    path = tmp_path / "threads.h5"
    out = _in_threads(monkeypatch, data[1], path)
    assert all(isinstance(s, ExtractSummary) for s in out), out
    assert all((s.n_done, s.n_skipped, s.n_failed) == (N_ROWS, 0, 0) for s in out)
    assert list(_counts(path)) == [0, N_ROWS, 0]


def test_ranks_disagreeing_on_a_backbone_both_refuse(data, tmp_path, monkeypatch):
    from featmammo.errors import ConfigError

    path = tmp_path / "mismatch.h5"
    out = _in_threads(monkeypatch, data[1], path, seeds=(0, 1))
    for exc in out:
        assert isinstance(exc, ConfigError), out
        assert "torchrun ranks disagree on backbone 'tiny'" in str(exc)
        assert "seed" in str(exc)
    assert not path.exists()  # refused before the store was touched


def test_a_failing_rank_stops_the_others_with_its_error(data, tmp_path, monkeypatch):
    from featmammo.errors import RankFailed

    monkeypatch.setenv("FEATMAMMO_TEST_RANK_DELAY", "0:0.5")
    path = tmp_path / "fails.h5"
    out = _in_threads(monkeypatch, data[1], path, fail_rank1=3)
    assert isinstance(out[1], RuntimeError) and "on purpose" in str(out[1])
    assert isinstance(out[0], RankFailed), out
    assert str(out[0]) == "rank 1 failed: RuntimeError: rank 1 broke on purpose"
    assert store.list_shards(path)  # finished batches kept for the next run


def test_a_silent_rank_is_given_up_after_the_timeout(data, tmp_path, monkeypatch):
    from featmammo.errors import RankFailed

    monkeypatch.setenv("FEATMAMMO_TEST_RANK_DELAY", "1:3")
    path = tmp_path / "silent.h5"
    out = _in_threads(monkeypatch, data[1], path, timeout_s=1.0)
    assert isinstance(out[0], RankFailed), out
    assert "waited 1 s for rank 1 (summary) with no sign of progress" in str(out[0])
    assert isinstance(out[1], RankFailed), out  # rank 1 stops at its first batch
    assert str(out[1]) == str(out[0])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("ranks")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :24]
    rows = []
    for i in range(N_ROWS):
        blob = np.exp(-((yy - 12) ** 2 + (xx - 8 - rng.integers(0, 5)) ** 2) / 30.0)
        img = (np.clip(blob + 0.1 * rng.random((24, 24)), 0, 1) * 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"img{i:03d}.png")
        rows.append(
            {"image_id": f"img{i:03d}", "path": f"img{i:03d}.png", "label": "benign",
             "patient_id": f"P{i:03d}", "laterality": "L", "view": "CC", "split": "train",
             "source": "synthetic"}
        )  # fmt: skip
    manifest = d / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    script = d / "run_rank.py"
    script.write_text(SCRIPT)
    return d, manifest, script


def _torchrun(data, store_path, timeout=240, **env):
    _, manifest, script = data
    full = dict(os.environ, OMP_NUM_THREADS="1", **{k: str(v) for k, v in env.items()})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(script), str(manifest), str(store_path)]  # fmt: skip
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=timeout)


def _counts(path) -> np.ndarray:
    return np.bincount(store.open(path).status("tiny"), minlength=3)  # pending, done, failed


@pytest.mark.slow
def test_a_delayed_rank_leaves_no_row_pending(data, tmp_path):
    """Rank 1 starts its batches 2 s late: rank 0 has merged rows by then, which rank 1 used to
    read as done and skip (rows left pending after exit 0); the shared work list forbids it."""
    path = tmp_path / "delayed.h5"
    r = _torchrun(data, path, FEATMAMMO_TEST_RANK_DELAY="1:2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 1: test delay" in r.stderr  # the seam ran
    assert list(_counts(path)) == [0, N_ROWS, 0]
    summaries = [line.split() for line in r.stdout.splitlines() if line.startswith("SUMMARY")]
    assert sorted(s[1] for s in summaries) == ["0", "1"]
    assert all(s[2:] == [str(N_ROWS), "0", "0"] for s in summaries)
    st = store.open(path)
    assert st.provenance["runs"][-1]["world_size"] == 2
    assert not store.parts_dir(path).exists()


@pytest.mark.slow
def test_ranks_fail_together_and_never_wait_forever(data, tmp_path):
    # backbones that differ between ranks (another seed on rank 1): every rank refuses, plainly
    r = _torchrun(data, tmp_path / "mismatch.h5", TEST_SEED_OF_RANK1=1)
    assert r.returncode != 0
    assert r.stderr.count("torchrun ranks disagree on backbone 'tiny'") >= 2, r.stderr[-3000:]
    assert "seed" in r.stderr
    assert "Connection closed" not in r.stderr
    assert not (tmp_path / "mismatch.h5").exists()  # refused before the store was touched

    # rank 1 fails after 3 batches: rank 0 (1 s late) stops after its first batch with rank 1's
    # error; the finished batches are kept (durable shards) and the rerun completes the store
    path = tmp_path / "fails.h5"
    r = _torchrun(data, path, TEST_RANK1_FAILS_AFTER=3, FEATMAMMO_TEST_RANK_DELAY="0:1")
    assert r.returncode != 0
    said = "RankFailed: rank 1 failed: RuntimeError: rank 1 broke on purpose"
    assert said in r.stderr, r.stderr[-3000:]
    assert "Connection closed" not in r.stderr
    assert "SUMMARY" not in r.stdout
    assert store.list_shards(path)  # the finished batches, merged by the next run
    r = _torchrun(data, path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(_counts(path)) == [0, N_ROWS, 0]

    # rank 1 silent for longer than FEATMAMMO_DIST_TIMEOUT: rank 0 gives up and stops rank 1
    path = tmp_path / "silent.h5"
    r = _torchrun(
        data, path, timeout=120, FEATMAMMO_TEST_RANK_DELAY="1:30", FEATMAMMO_DIST_TIMEOUT=3
    )
    assert r.returncode != 0
    assert "waited 3 s for rank 1 (summary) with no sign of progress" in r.stderr, r.stderr[-3000:]
    # and the rerun finishes the work: every row done
    r = _torchrun(data, path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(_counts(path)) == [0, N_ROWS, 0]


def test_rows_left_pending_never_end_in_success(data, tmp_path, monkeypatch):
    """The last guard: were a rank to skip batches (the old bug, or any other), the run ends
    with a StoreError naming the pending rows, not with exit 0."""
    from featmammo.errors import StoreError
    from featmammo.extract import extract
    from featmammo.extract import loop as loop_mod
    from featmammo.preprocess import PreprocessConfig

    real = loop_mod._Loop.run

    def skipping(self):
        self.plan.batches = self.plan.batches[::2]  # half the work "forgotten"
        return real(self)

    monkeypatch.setattr(loop_mod._Loop, "run", skipping)
    with pytest.raises(StoreError, match=r"rows still pending after the run \(tiny: 200 of 400\)"):
        extract(data[1], tmp_path / "s.h5", backbones=[_Tiny(0)], weights="random",
                preprocess=PreprocessConfig(image_size=16), batch_size=4, threads=1,
                device="cpu", cache=False)  # fmt: skip
