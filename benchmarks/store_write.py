"""The store's cost: bytes written, writer peak memory, and reading time/memory.

Drives the store's real writers with simulated embeddings (no model, no images: only the store's
own cost is measured) and counts the bytes through the process's I/O counters (``/proc/self/io``:
``wchar``, the bytes passed to write/pwrite; ``write_bytes`` minus ``cancelled_write_bytes``, the
bytes that reached the block layer, where the file system reports them) and its peak resident
memory (``VmHWM`` of ``/proc/self/status``, reset before the measured step through
``/proc/self/clear_refs`` where allowed). Each case runs in a fresh subprocess.

Write cases (ratio = bytes written / size of the store on disk: main file + segment files):

* ``fresh``: an extraction's store writes from nothing: ``prepare``, ``BackgroundWriter`` (shards
  off the loop, scheduled merges), the final ``consolidate`` with the run's provenance;
* ``noop``: the same run again with nothing to do (prepare, the leftover merge, the final
  consolidate with its run record);
* ``append``: 1% new images appended and embedded.

Each case runs for ``new`` (this checkout) and ``old`` (the store before format 2, loaded from
git ``--old-rev``: one main file rewritten by every merge), in the same run, on this machine.

Read cases (``--read-rows`` x ``--read-dim``, default 100k x 2048): ``array(name)`` and
``fusion.fuse(store, name)`` time and peak memory, new reader on a segmented store vs the old reader
and old ``fuse`` on a format-1 file.

Embeddings are ReLU'd Gaussians (about half exact zeros, as penultimate ReLU features are) or dense
Gaussians, float32, ``gzip`` (the store's default).

    python benchmarks/store_write.py                                    # everything (long)
    python benchmarks/store_write.py --rows 2000 20000 --no-read        # write cases only
    python benchmarks/store_write.py --no-write --read-rows 20000       # read cases only

``write_amplification(n_rows, ...)`` is the function other benchmarks call
(``benchmarks/extract_throughput.py``). Writes ``benchmarks/results/store_write.{json,md}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from memory import reset_peak, status_kb  # noqa: E402

REPO = HERE.parent
OLD_REV = "e0edf17~1"  # the last commit of the format-1 store (one main file, copied by merges)


# ------------------------------------------------------------------------------------ helpers
def _io() -> dict:
    out = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k.strip()] = int(v)
    return out


def _old_package(rev: str, name: str, repo=None):
    """``featmammo/<name>`` (package or module) at git ``rev``, as ``featmammo._old_<name>``."""
    tmp = Path(tempfile.mkdtemp(prefix=f"old-{name}-"))
    arch = subprocess.run(
        ["git", "-C", str(repo or REPO), "archive", rev, f"featmammo/{name}"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(arch)) as t:
        t.extractall(tmp, filter="data")
    src = tmp / "featmammo" / name
    modname = f"featmammo._old_{name.replace('.py', '')}"
    if src.is_dir():
        spec = importlib.util.spec_from_file_location(
            modname, src / "__init__.py", submodule_search_locations=[str(src)]
        )
    else:
        spec = importlib.util.spec_from_file_location(modname, src)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


def _store_module(mode: str, old_rev: str, repo=None):
    if mode == "old":
        return _old_package(old_rev, "store", repo)
    from featmammo import store

    return store


def _size(fs, mode: str, path: Path) -> int:
    if mode == "new":
        return fs.store_bytes(path)
    return path.stat().st_size


def _simulated(rng, n: int, dim: int, kind: str) -> np.ndarray:
    """ReLU'd Gaussians (about half exact zeros: penultimate ReLU features) or dense Gaussians."""
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return np.maximum(x, 0) if kind == "relu" else x


def _manifest(n: int):
    import pandas as pd

    ids = [f"img{i:07d}" for i in range(n)]
    meta = pd.DataFrame(
        {
            "image_id": ids,
            "label": "benign",
            "patient_id": [f"P{i // 4}" for i in range(n)],
            "laterality": "L",
            "view": "CC",
            "split": "train",
            "source": "synthetic",
            "path": [f"/data/{i}.png" for i in ids],
        }
    )
    return ids, meta


def _entry(fs, dim: int):
    prov = {
        "spec": {"name": "sim", "dim": dim},
        "layer": "penultimate",
        "weights": "random",
        "weights_sha256": None,
        "preprocess": {"image_size": 224},
    }
    return fs.BackboneEntry("sim", dim, prov, "float32")


def _run(fs, path: Path, ids, meta, dim, batch, kind, seed) -> dict:
    """What an extraction does with the store; returns the rows embedded and merges made."""
    entry = _entry(fs, dim)
    sp = {"manifest_hash": f"m{len(ids)}", "id_hashing": None}
    fs.prepare(path, ids, meta, [entry], sp, compression="gzip").close()
    fs.consolidate(path)  # shards of an interrupted run (none here)
    st = fs.open(path)
    done = st.done("sim")
    index = {i: k for k, i in enumerate(st.ids)}
    todo = [i for i in ids if not done[index[i]]]
    st.close()
    del st, index
    # the writer's own memory: from here to the end (the manifest and the caller's lists stay)
    hwm_before = status_kb("VmHWM")
    reset_peak()
    rss_writer = status_kb("VmRSS")
    rng = np.random.default_rng(seed)
    ok = np.ones(batch, np.int8)
    merges = 0
    if todo:
        with fs.BackgroundWriter(path) as w:
            for a in range(0, len(todo), batch):
                part = todo[a : a + batch]
                x = _simulated(rng, len(part), dim, kind)
                w.submit(
                    part, {"sim": (x, ok[: len(part)], [""] * len(part))}, {"sim": entry.identity}
                )
        merges = w.n_merges
    fs.consolidate(
        path,
        store_provenance_update={
            "runs": [{"n_done": len(todo)}],
            "manifest_hash": sp["manifest_hash"],
        },
        backbone_provenance_update={"sim": {"devices": ["cpu"]}},
    )
    fs.cleanup_parts(path)
    peak = status_kb("VmHWM")
    return {
        "embedded": len(todo),
        "merges": merges + 1,
        "writer_peak_over_start_mb": round((peak - rss_writer) / 1024, 1),
        "process_peak_kb": max(peak, hwm_before),
    }


def _write_case(spec: dict) -> dict:
    """One write case in this (fresh) process."""
    fs = _store_module(spec["mode"], spec["old_rev"], spec.get("repo"))
    path = Path(spec["path"])
    n, dim = spec["rows"], spec["dim"]
    grow = {"fresh": n, "noop": n, "append": n + max(1, n // 100)}[spec["op"]]
    ids, meta = _manifest(grow)
    before = _size(fs, spec["mode"], path) if path.exists() else 0
    peak_reset = reset_peak()
    rss0 = status_kb("VmRSS")
    io0, t0 = _io(), time.perf_counter()
    got = _run(fs, path, ids, meta, dim, spec["batch"], spec["kind"], spec["seed"] + grow)
    process_peak = got.pop("process_peak_kb")
    seconds = time.perf_counter() - t0
    io1 = _io()
    after = _size(fs, spec["mode"], path)
    st = fs.open(path)
    assert int(st.done("sim").sum()) == grow, "not every row stored"
    wchar = io1["wchar"] - io0["wchar"]
    block = (io1["write_bytes"] - io0["write_bytes"]) - (
        io1["cancelled_write_bytes"] - io0["cancelled_write_bytes"]
    )
    ref = before if spec["op"] != "fresh" else after
    return {
        **{k: spec[k] for k in ("op", "mode", "rows", "dim", "batch", "kind")},
        "store_bytes_before": before,
        "store_bytes_after": after,
        "wchar": wchar,
        "block_write_bytes": block,
        # fresh: / final size; noop and append: / the store before the run
        "wchar_ratio": round(wchar / ref, 4),
        "block_ratio": round(block / ref, 4) if block > 0 else None,
        "peak_rss_mb": round(process_peak / 1024, 1),
        "peak_rss_over_start_mb": round((process_peak - rss0) / 1024, 1),
        "peak_reset": peak_reset,
        "seconds": round(seconds, 2),
        **got,
    }


def _read_case(spec: dict) -> dict:
    """``array`` or ``fuse`` of one backbone, time and peak memory, in this process."""
    mode = spec["mode"]
    fs = _store_module(mode, spec["old_rev"], spec.get("repo"))
    if mode == "old":
        fusion = _old_package(spec["old_rev"], "fusion.py", spec.get("repo"))
    else:
        from featmammo import fusion
    st = fs.open(spec["path"])
    reset_peak()
    rss0 = status_kb("VmRSS")
    t0 = time.perf_counter()
    if spec["op"] == "array":
        x = st.array("sim")
    else:
        x = fusion.fuse(st, "sim").X
    seconds = time.perf_counter() - t0
    peak = status_kb("VmHWM")
    return {
        **{k: spec[k] for k in ("op", "mode", "rows", "dim")},
        "format": spec["format"],
        "seconds": round(seconds, 2),
        "result_mb": round(x.nbytes / 2**20, 1),
        "peak_over_start_mb": round((peak - rss0) / 1024, 1),
        "peak_over_result": round((peak - rss0) * 1024 / max(1, x.nbytes), 2),
    }


def _in_child(fn: str, spec: dict) -> dict:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import store_write as b; "
        f"print(json.dumps(b.{fn}(json.loads(sys.argv[2]))))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(HERE), json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if r.returncode:
        raise RuntimeError(f"store_write {fn} {spec} failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    return out


def write_cases(
    n_rows: int, *, dim: int, batch: int, mode: str, kind: str, old_rev: str,
    ops=("fresh", "noop", "append"), workdir=None, seed: int = 0, repo=None,
) -> list[dict]:  # fmt: skip
    """fresh, then noop and append on the same store, each in a fresh subprocess."""
    with tempfile.TemporaryDirectory(prefix="store_write-", dir=workdir) as tmp:
        path = Path(tmp) / f"{mode}.h5"
        out = []
        for op in ops:
            spec = {"op": op, "mode": mode, "rows": n_rows, "dim": dim, "batch": batch,
                    "kind": kind, "seed": seed, "old_rev": old_rev, "path": str(path),
                    "repo": str(repo or REPO)}  # fmt: skip
            out.append(_in_child("_write_case", spec))
        return out


def write_amplification(
    n_rows: int, *, dim: int = 128, batch: int = 32, mode: str = "new", kind: str = "relu",
    old_rev: str = OLD_REV, workdir=None,
) -> dict:  # fmt: skip
    """Bytes written / final store size of a fresh extraction of ``n_rows`` (``wchar_ratio``)."""
    (r,) = write_cases(n_rows, dim=dim, batch=batch, mode=mode, kind=kind, old_rev=old_rev,
                       ops=("fresh",), workdir=workdir)  # fmt: skip
    return {**r, "final_bytes": r["store_bytes_after"]}


def read_cases(n_rows: int, dim: int, old_rev: str, workdir=None, repo=None) -> list[dict]:
    """array and fuse: new reader on a segmented store vs the old reader on a format-1 file."""
    out = []
    with tempfile.TemporaryDirectory(prefix="store_read-", dir=workdir) as tmp:
        seg = Path(tmp) / "segmented.h5"
        t0 = time.perf_counter()
        spec = {"op": "fresh", "mode": "new", "rows": n_rows, "dim": dim, "batch": 64,
                "kind": "relu", "seed": 0, "old_rev": old_rev, "path": str(seg),
                "repo": str(repo or REPO)}  # fmt: skip
        _in_child("_write_case", spec)
        v1 = Path(tmp) / "format1.h5"
        _in_child("_write_case", {**spec, "mode": "old", "path": str(v1)})
        build_s = round(time.perf_counter() - t0, 1)
        for op in ("array", "fuse"):
            for mode, path, fmt in (("new", seg, 2), ("old", v1, 1), ("new", v1, 1)):
                spec_r = {"op": op, "mode": mode, "rows": n_rows, "dim": dim, "path": str(path),
                          "format": fmt, "old_rev": old_rev, "repo": str(repo or REPO)}  # fmt: skip
                r = _in_child("_read_case", spec_r)
                r["build_seconds"] = build_s
                print(json.dumps(r), flush=True)
                out.append(r)
    return out


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[2_000, 20_000, 100_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--kind", default="relu", choices=["relu", "dense"])
    ap.add_argument("--no-old", action="store_true", help="skip the format-1 store")
    ap.add_argument("--old-rev", default=OLD_REV, help="revision with the format-1 store package")
    ap.add_argument("--old-rows-max", type=int, help="run the old store up to this many rows")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--no-read", action="store_true")
    ap.add_argument("--read-rows", type=int, default=100_000)
    ap.add_argument("--read-dim", type=int, default=2048)
    ap.add_argument("--out", help="path stem (default results/store_write)")
    ap.add_argument("--repo", default=str(REPO), help="git checkout holding --old-rev")
    a = ap.parse_args(argv)
    out_stem = a.out or str(HERE / "results" / "store_write")
    modes = ["new"] if a.no_old else ["new", "old"]
    writes, reads = [], []
    if not a.no_write:
        for n in a.rows:
            for mode in modes:
                if mode == "old" and a.old_rows_max is not None and n > a.old_rows_max:
                    continue
                for r in write_cases(n, dim=a.dim, batch=a.batch, mode=mode, kind=a.kind,
                                     old_rev=a.old_rev, repo=a.repo):  # fmt: skip
                    print(json.dumps(r), flush=True)
                    writes.append(r)
    if not a.no_read:
        reads = read_cases(a.read_rows, a.read_dim, a.old_rev, repo=a.repo)
    out = {
        "benchmark": "store_write",
        "command": "python benchmarks/store_write.py " + " ".join(argv or sys.argv[1:]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "targets": {
            "fresh": "bytes written / final size <= 3, flat from 2k to 100k rows",
            "noop": "<= 0.1 x the store",
            "append": "1% new images: <= 0.2 x the store",
            "peak_rss": "writer peak memory flat in the store size",
            "read": "array and fuse: no more than the result (plus a block)",
        },
        "write": writes,
        "read": reads,
    }
    Path(out_stem).parent.mkdir(parents=True, exist_ok=True)
    Path(out_stem + ".json").write_text(json.dumps(out, indent=2) + "\n")
    Path(out_stem + ".md").write_text(_markdown(out, a) + "\n")
    return out


def _markdown(out: dict, a) -> str:
    lines = [
        "# Store cost: bytes written, writer memory, reads",
        "",
        f"`{out['command']}` at {out['time']} ({out['machine']['cpus']} CPUs, shared); simulated "
        f"{a.kind} embeddings (ReLU'd Gaussians: half zeros, compressible like real features), "
        f"float32, gzip, batch {a.batch}. `new`: this checkout (format 2: segments + index); "
        f"`old`: `{a.old_rev}` (format 1: one main file, copied by every merge). Ratio = written "
        "(`wchar`) / the store's size on disk (fresh: its final size; noop and append: its size "
        "before the run). Peak RSS: the whole process (Python, numpy, h5py, the simulated "
        "manifest); "
        "writer peak: its rise from the writer's start (BackgroundWriter, merges, final merge) "
        "to the end.",
        "",
        "| case | writer | rows | dim | store MB | written MB | ratio | peak RSS MB | writer peak "
        "MB | merges | s | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["write"]:
        size = r["store_bytes_after"] if r["op"] == "fresh" else r["store_bytes_before"]
        lines.append(
            f"| {r['op']} | {r['mode']} | {r['rows']:,} | {r['dim']} | {size / 1e6:.1f} | "
            f"{r['wchar'] / 1e6:.1f} | {r['wchar_ratio']:.3f} | {r['peak_rss_mb']:.0f} | "
            f"{r['writer_peak_over_start_mb']:.0f} | {r['merges']} | {r['seconds']} | "
            f"{r['loadavg'][0]} |"
        )
    if out["read"]:
        lines += [
            "",
            "Reads: one backbone of the store, `Store.array(name)` and `fusion.fuse(store, name)`;"
            " peak = resident memory above the process's before the call.",
            "",
            "| op | reader | store format | rows | dim | result MB | peak over start MB | "
            "peak / result | s | load |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in out["read"]:
            lines.append(
                f"| {r['op']} | {r['mode']} | {r['format']} | {r['rows']:,} | {r['dim']} | "
                f"{r['result_mb']} | {r['peak_over_start_mb']} | {r['peak_over_result']} | "
                f"{r['seconds']} | {r['loadavg'][0]} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
