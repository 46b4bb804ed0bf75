"""The background store writer: contents, schedule, byte cost, errors, SIGKILL at any point.

Also the store package's conveniences: ``with featmammo.store.open(p) as s:`` and the lazy
``featmammo.store`` attribute.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_store import _in_child  # the forked-child runner of the store's fault tests

from featmammo import store
from featmammo.errors import StoreError
from featmammo.store.writer import BackgroundWriter

N, DIM = 40, 6


def _prepare(path, n=N, dim=DIM, dtype="float32"):
    ids = [f"img{i:04d}" for i in range(n)]
    meta = pd.DataFrame({"image_id": ids, "label": "benign", "patient_id": "P",
                         "path": [f"/d/{i}.png" for i in ids]})  # fmt: skip
    prov = {"spec": {"name": "toy"}, "layer": "p", "weights": "random", "weights_sha256": None,
            "preprocess": {"image_size": 64}}  # fmt: skip
    e = store.BackboneEntry("toy", dim, prov, dtype)
    store.prepare(path, ids, meta, [e], {"manifest_hash": "m", "id_hashing": None})
    return ids, e


def _embeddings(n=N, dim=DIM):
    x = np.arange(n * dim, dtype=np.float32).reshape(n, dim) / 7.0
    x[5] = np.nan  # a failed row
    return x


def _extract_like(path, batch=4, order_seed=None, **writer_kw) -> BackgroundWriter:
    """What an extraction does: merge leftovers, embed the rows not done, one final merge."""
    x = _embeddings()
    st = store.open(path)
    ids, ident = list(st.ids), st.identity("toy")
    store.consolidate(path)  # shards left by a killed run
    todo = np.flatnonzero(store.open(path).status("toy") != store.DONE)
    if order_seed is not None:
        todo = np.random.default_rng(order_seed).permutation(todo)
    with BackgroundWriter(path, **writer_kw) as w:
        for a in range(0, len(todo), batch):
            rows = todo[a : a + batch]
            status = np.where(rows == 5, store.FAILED, store.DONE).astype(np.int8)
            reasons = ["decode error" if r == 5 else "" for r in rows]
            w.submit([ids[r] for r in rows], {"toy": (x[rows], status, reasons)}, {"toy": ident})
    store.consolidate(path, store_provenance_update={"runs": [{"n": len(todo)}]})
    store.cleanup_parts(path)
    return w


def _check_complete(path, dtype=np.float32):
    st = store.open(path)
    x = _embeddings().astype(dtype).astype(np.float32)
    assert st.status("toy").tolist() == [store.FAILED if i == 5 else store.DONE for i in range(N)]
    np.testing.assert_array_equal(st.array("toy"), x)
    assert st.failures["reason"].tolist() == ["decode error"]
    assert not store.parts_dir(path).exists()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_writer_stores_every_batch_in_any_order(tmp_path, dtype):
    path = tmp_path / "w.h5"
    _prepare(path, dtype=dtype)
    w = _extract_like(path, order_seed=3, growth=0, merge_until=None)
    assert w.n_batches == 10 and w.n_merges >= 1  # growth=0: a merge whenever none is running
    assert 2 <= w.n_shards <= 10
    _check_complete(path, np.float16 if dtype == "float16" else np.float32)


def _wait(cond, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_readers_see_a_consistent_store_during_merges(tmp_path):
    """A reader opening the store while merges run sees whole rows, never a half-merged file."""
    import threading

    path = tmp_path / "r.h5"
    ids, e = _prepare(path)
    x = _embeddings()
    seen, stop, errors = [], threading.Event(), []

    def read():
        while not stop.is_set():
            try:
                st = store.open(path)
                done = st.done("toy")
                np.testing.assert_array_equal(st.array("toy")[done], x[done])
                seen.append(int(done.sum()))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        with BackgroundWriter(path, growth=0, merge_until=None) as w:
            for k, a in enumerate(range(0, N, 2)):
                rows = [r for r in (a, a + 1) if r != 5]
                block = (x[rows], [1] * len(rows), [""] * len(rows))
                w.submit([ids[r] for r in rows], {"toy": block}, {"toy": e.identity})
                if k < 3:  # let the first batches merge one at a time, however loaded the machine
                    _wait(lambda k=k: w.n_merges > k)
        store.consolidate(path)
    finally:
        stop.set()
        reader.join()
    assert not errors, errors[0]
    assert w.n_merges >= 2 and len(seen) > 1 and seen == sorted(seen)  # rows only ever appear


def test_shards_hold_the_store_dtype(tmp_path):
    path = tmp_path / "h.h5"
    ids, e = _prepare(path, dtype="float16")
    with BackgroundWriter(path, consolidate=False) as w:  # a rank > 0: shards only
        w.submit(ids[:2], {"toy": (np.ones((2, DIM)), [1, 1], ["", ""])}, {"toy": e.identity})
    (shard,) = store.list_shards(path)
    with np.load(shard) as z:
        assert z["emb0"].dtype == np.float16
    assert w.n_merges == 0 and store.open(path).done("toy").sum() == 0


def test_merges_write_new_rows_once_and_bytes_stay_linear(tmp_path):
    """Many batches, several merges; bytes written stay a small multiple of the final size."""
    if not Path("/proc/self/io").exists():
        pytest.skip("needs Linux /proc/self/io")

    def wchar() -> int:
        with open("/proc/self/io") as f:
            return next(int(v) for k, _, v in (ln.partition(":") for ln in f) if k == "wchar")

    n, dim, batch = 3008, 1024, 16
    path = tmp_path / "g.h5"
    before = wchar()
    ids, e = _prepare(path, n=n, dim=dim)
    rng = np.random.default_rng(0)
    ok = np.ones(batch, np.int8)
    with BackgroundWriter(path, merge_bytes=2 << 20) as w:
        for a in range(0, n, batch):
            x = rng.standard_normal((batch, dim)).astype(np.float32)  # gzip keeps ~0.9 of it
            w.submit(ids[a : a + batch], {"toy": (x, ok, [""] * batch)}, {"toy": e.identity})
    store.consolidate(path, store_provenance_update={"runs": [{}]})
    store.cleanup_parts(path)
    ratio = (wchar() - before) / store.store_bytes(path)
    assert store.open(path).done("toy").all()
    assert w.n_batches == n // batch and w.n_merges >= 3, w.n_merges
    # shards (~1x) + segments (1x) + small indexes: merging often costs no more than once (the
    # former merges copied the main file: 6.7x at 8k rows every 50 batches)
    assert ratio < 2.5, ratio


def test_background_errors_surface(tmp_path):
    path = tmp_path / "e.h5"
    ids, e = _prepare(path)
    block = {"toy": (np.ones((2, DIM)), [1, 1], ["", ""])}
    w = BackgroundWriter(path)
    with pytest.raises(StoreError, match="no backbone 'other'"):
        w.submit(ids[:2], {"other": block["toy"]}, {"other": "x"})
    with pytest.raises(StoreError, match="do not match 3 ids"):
        w.submit(ids[:3], block, {"toy": e.identity})
    w.close()
    with pytest.raises(StoreError, match="submit after close"):
        w.submit(ids[:2], block, {"toy": e.identity})
    # the shard folder is a file: the background write fails; submit/close raise it
    store.parts_dir(path).write_text("in the way")
    w = BackgroundWriter(path)
    w.submit(ids[:2], block, {"toy": e.identity})
    with pytest.raises(OSError):
        for _ in range(50):  # the next submit raises once the thread has failed
            time.sleep(0.02)
            w.submit(ids[2:4], block, {"toy": e.identity})
    with pytest.raises(OSError):
        w.close()
    # an error in the caller's block propagates; the writer still drains and closes
    store.parts_dir(path).unlink()
    with pytest.raises(KeyError), BackgroundWriter(path) as w:
        w.submit(ids[:2], block, {"toy": e.identity})
        raise KeyError("forward failed")
    assert len(store.list_shards(path)) == 1
    with pytest.raises(StoreError, match="no such store"):
        BackgroundWriter(tmp_path / "missing.h5")


# ------------------------------------------------------------------------------- fault injection
@pytest.mark.parametrize(
    "point",
    # points every run passes: >= 2 shards (at most 1 + max_pending batches share one), a
    # segment written but not in the index yet, scheduled merges and the final one
    ["shard-tmp:1", "shard-tmp:2", "segment-tmp:1", "consolidate-tmp:1",
     "consolidate-tmp:2", "consolidate-replaced:1", "consolidate-replaced:2"],
)  # fmt: skip
def test_sigkill_in_the_writer_then_rerun_equals_uninterrupted(tmp_path, point):
    path = tmp_path / "k.h5"
    _prepare(path)
    kw = {"growth": 0, "merge_until": None}  # a merge after (almost) every batch
    assert _in_child(_extract_like, path, env={"FEATMAMMO_TEST_KILL": point}, **kw) == -9
    st = store.open(path)  # readable right after the kill, every stored row whole
    done = st.done("toy")
    np.testing.assert_array_equal(st.array("toy")[done], _embeddings()[done])
    assert _in_child(_extract_like, path, env={"FEATMAMMO_TEST_KILL": ""}, **kw) == 0
    _check_complete(path)


@pytest.mark.slow
def test_sigkill_at_random_times_in_a_real_subprocess(tmp_path):
    """Kill a separate interpreter running the writer at arbitrary moments, then finish.

    Each kill waits for the child's "started writing" line, so it lands in a live writer (the
    test counts the kills that found the child still running and needs most of them).
    """
    import select

    path = tmp_path / "r.h5"
    n, dim = 6000, 512
    ids, e = _prepare(path, n=n, dim=dim)
    code = (
        "import sys, numpy as np; from featmammo import store; "
        "from featmammo.store.writer import BackgroundWriter; p = sys.argv[1]; "
        "store.consolidate(p); st = store.open(p); ident = st.identity('toy'); "
        "todo = np.flatnonzero(st.status('toy') != store.DONE); "
        f"x = np.arange({n * dim}, dtype=np.float32).reshape({n}, {dim}); "
        "w = BackgroundWriter(p, merge_bytes=1 << 20); print('started', flush=True)\n"
        "for a in range(0, len(todo), 8):\n"
        "    r = todo[a:a + 8]; "
        "w.submit([st.ids[i] for i in r], {'toy': (x[r], np.ones(len(r)), [''] * len(r))}, "
        "{'toy': ident})\n"
        "w.close(); store.consolidate(p, store_provenance_update={'runs': [{}]}); "
        "store.cleanup_parts(p)"
    )
    rng = np.random.default_rng(0)
    live = 0
    for _ in range(5):
        p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
        ready, _, _ = select.select([p.stdout], [], [], 60)
        assert ready and p.stdout.readline().startswith(b"started")
        time.sleep(float(rng.uniform(0.05, 0.6)))
        live += p.poll() is None  # the kill hits a running writer
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        st = store.open(path)  # always readable, every stored row whole
        done = st.done("toy")
        x = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
        np.testing.assert_array_equal(st.array("toy", rows=done), x[done])
    assert live >= 3, f"only {live} of 5 kills hit a live writer"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, stdout=subprocess.DEVNULL)
    st = store.open(path)
    assert st.done("toy").all() and not store.parts_dir(path).exists()
    np.testing.assert_array_equal(
        st.array("toy"), np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    )


# ------------------------------------------------------------------------------- conveniences
def test_store_is_a_context_manager(tmp_path):
    path = tmp_path / "c.h5"
    _prepare(path)
    with store.open(path) as s:
        assert len(s) == N and s.array("toy").shape == (N, DIM)
    assert len(s.ids) == N  # what was loaded at open stays
    with pytest.raises(StoreError, match="closed"):
        s.array("toy")


def test_featmammo_store_attribute_without_importing_the_submodule(tmp_path):
    path = tmp_path / "a.h5"
    _prepare(path)
    code = (
        "import sys, featmammo; s = featmammo.store.open(sys.argv[1]); "
        "assert s.backbones == ['toy'], s.backbones; "
        "assert featmammo.store.BackgroundWriter and featmammo.store.fault_point; "
        "assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_row_meta_written_with_a_batch_lands_in_those_rows(tmp_path):
    """Per-image facts known only once an image is read (extract: how it was windowed)."""
    import h5py

    path = tmp_path / "m.h5"
    ids, e = _prepare(path)
    x = _embeddings()
    with BackgroundWriter(path, growth=0) as w:
        for a in (0, 4):
            rows = list(range(a, a + 4))
            block = (x[rows], [1] * 4, [""] * 4)
            how = {"windowing_applied": ["voi_lut" if r % 2 else "none" for r in rows]}
            w.submit([ids[r] for r in rows], {"toy": block}, {"toy": e.identity}, row_meta=how)
        with pytest.raises(StoreError, match="row_meta lengths"):
            w.submit(ids[:2], {"toy": (x[:2], [1, 1], ["", ""])}, {"toy": e.identity},
                     row_meta={"windowing_applied": ["none"]})  # fmt: skip
    store.consolidate(path)
    st = store.open(path)
    got = st.meta["windowing_applied"].tolist()
    assert got == ["voi_lut" if r % 2 else "none" for r in range(8)] + [""] * (N - 8)
    assert st.meta["path"].tolist() == [f"/d/{i}.png" for i in ids]  # the rest kept
    np.testing.assert_array_equal(st.array("toy", rows=np.arange(8)), x[:8])
    with h5py.File(path) as f:
        assert f["meta/windowing_applied"].asstr()[1] == "voi_lut"
    with pytest.raises(StoreError, match="cannot change the manifest's columns"):
        store.write_shard(path, ids[:1], {"toy": (x[:1], [1], [""])}, {"toy": e.identity},
                          row_meta={"label": ["malignant"]})  # fmt: skip
