"""Store write amplification: bytes an extraction writes ÷ the final store's size.

Drives the store's real writers with simulated embeddings (no model, no images: only the store's
own cost is measured) and counts the bytes through the process's I/O counters
(``/proc/self/io``: ``wchar``, the bytes passed to write/pwrite/sendfile; ``write_bytes`` minus
``cancelled_write_bytes``, the bytes that reached the block layer, where the file system reports
them). Each case runs in a fresh subprocess, so the counters hold that case only.

* ``new``: ``featmammo.store.writer.BackgroundWriter`` (durable shards written off the loop, a
  geometric merge schedule) plus the final ``consolidate`` with the run's provenance, as an
  extraction does.
* ``old``: the store before the writer (``git show REV:featmammo/store.py``): a shard per batch,
  ``consolidate`` every 50 batches (extract's former default), a final consolidate.

Embeddings are ReLU'd Gaussians (about half exact zeros, as penultimate ReLU features are: gzip
shrinks them, raw shards do not) and dense Gaussians (barely compressible), float32, ``gzip``
compression (the store's default). Dims are small by default (128) so that 100k rows fit this
busy machine in minutes. The width does move the ratio a little: every row also carries ~350 bytes
of variable-length ids and metadata, written once by ``prepare``, a large share of a 128-d store
and a negligible one of a 2048-d store; and at small widths the prepared file alone is past the
writer's quarter cap, so only the final merge happens. ``--dims 1024`` exercises the scheduled
merges.

    python benchmarks/store_write.py                  # 10k and 100k rows, new vs old
    python benchmarks/store_write.py --rows 2000 8000 --no-old
    python benchmarks/store_write.py --dims 1024 --rows 10000 30000 100000 --old-rows-max 30000

``write_amplification(n_rows, ...)`` is the function other benchmarks call
(``benchmarks/extract_throughput.py``). Writes ``benchmarks/results/store_write.{json,md}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OLD_REV = "192546e~1"  # the last commit with the monolithic featmammo/store.py


def _io() -> dict:
    out = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k.strip()] = int(v)
    return out


def _old_store_module(rev: str):
    """The store module as it was at ``rev`` (imported as featmammo._store_old)."""
    src = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:featmammo/store.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader("featmammo._store_old", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "featmammo"
    sys.modules[spec.name] = mod
    exec(compile(src, f"{rev}:featmammo/store.py", "exec"), mod.__dict__)
    return mod


def _simulated(rng, n: int, dim: int, kind: str) -> np.ndarray:
    """ReLU'd Gaussians (about half exact zeros: penultimate ReLU features) or dense Gaussians."""
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return np.maximum(x, 0) if kind == "relu" else x


def _case(
    folder: Path,
    n_rows: int,
    dim: int,
    batch: int,
    mode: str,
    compression: str,
    seed: int,
    kind: str = "relu",
    old_rev: str = OLD_REV,
) -> dict:
    """One run, in this process; the caller runs it in a fresh subprocess."""
    import pandas as pd

    from featmammo import store as new

    fs = _old_store_module(old_rev) if mode == "old" else new
    path = folder / f"{mode}.h5"
    ids = [f"img{i:07d}" for i in range(n_rows)]
    meta = pd.DataFrame(
        {"image_id": ids, "label": "benign", "patient_id": [f"P{i // 4}" for i in range(n_rows)],
         "laterality": "L", "view": "CC", "split": "train", "source": "synthetic",
         "path": [f"/data/{i}.png" for i in ids]}
    )  # fmt: skip
    prov = {"spec": {"name": "sim", "dim": dim}, "layer": "penultimate", "weights": "random",
            "weights_sha256": None, "preprocess": {"image_size": 224}}  # fmt: skip
    entry = fs.BackboneEntry("sim", dim, prov, "float32")
    rng = np.random.default_rng(seed)
    io0, t0 = _io(), time.perf_counter()
    fs.prepare(path, ids, meta, [entry], {"manifest_hash": "m", "id_hashing": None},
               compression=compression)  # fmt: skip
    ok = np.ones(batch, np.int8)
    starts = range(0, n_rows, batch)
    raw = 0
    if mode == "new":
        with new.BackgroundWriter(path) as w:
            for a in starts:
                x = _simulated(rng, min(batch, n_rows - a), dim, kind)
                raw += x.nbytes
                w.submit(ids[a : a + len(x)], {"sim": (x, ok[: len(x)], [""] * len(x))},
                         {"sim": entry.identity})  # fmt: skip
        merges = w.n_merges
    else:
        merges = 0
        for k, a in enumerate(starts, 1):
            x = _simulated(rng, min(batch, n_rows - a), dim, kind)
            raw += x.nbytes
            fs.write_shard(path, ids[a : a + len(x)], {"sim": (x, ok[: len(x)], [""] * len(x))},
                           {"sim": entry.identity})  # fmt: skip
            if k % 50 == 0:
                fs.consolidate(path)
                merges += 1
    fs.consolidate(path, store_provenance_update={"runs": [{"n_done": n_rows}]},
                   backbone_provenance_update={"sim": {"devices": ["cpu"]}})  # fmt: skip
    fs.cleanup_parts(path)
    seconds = time.perf_counter() - t0
    io1 = _io()
    final = path.stat().st_size
    st = new.open(path)
    assert int(st.done("sim").sum()) == n_rows, "not every row stored"
    wchar = io1["wchar"] - io0["wchar"]
    block = (io1["write_bytes"] - io0["write_bytes"]) - (
        io1["cancelled_write_bytes"] - io0["cancelled_write_bytes"]
    )
    return {
        "mode": mode, "rows": n_rows, "dim": dim, "batch": batch, "compression": compression,
        "embeddings": kind,
        "final_bytes": final, "raw_embedding_bytes": raw, "wchar": wchar,
        "block_write_bytes": block, "wchar_ratio": round(wchar / final, 3),
        "block_ratio": round(block / final, 3) if block > 0 else None,
        "merges": merges + 1, "seconds": round(seconds, 2),
    }  # fmt: skip


def write_amplification(
    n_rows: int,
    *,
    dim: int = 128,
    batch: int = 32,
    mode: str = "new",
    compression: str = "gzip",
    seed: int = 0,
    kind: str = "relu",
    old_rev: str = OLD_REV,
    workdir: str | os.PathLike | None = None,
) -> dict:
    """Bytes written ÷ final store size for ``n_rows`` simulated rows, in a fresh subprocess.

    ``mode`` is ``new`` (BackgroundWriter) or ``old`` (the pre-writer store, every 50 batches);
    ``kind`` is ``relu`` (ReLU'd Gaussians, compressible like real features) or ``dense``;
    ``old_rev``: a git revision whose ``featmammo/store.py`` is the monolithic store.
    Returns a dict: ``wchar_ratio`` (write syscall bytes ÷ final size), ``block_ratio`` (block
    layer bytes ÷ final size, None where the file system does not count them), the byte counts,
    ``merges`` (main-file rewrites, the final one included) and ``seconds``.
    """
    with tempfile.TemporaryDirectory(prefix="store_write-", dir=workdir) as tmp:
        args = [str(tmp), n_rows, dim, batch, mode, compression, seed, kind, old_rev]
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); import store_write as b; "
            "from pathlib import Path; a = json.loads(sys.argv[2]); "
            "print(json.dumps(b._case(Path(a[0]), *a[1:])))"
        )
        r = subprocess.run(
            [sys.executable, "-c", code, str(HERE), json.dumps(args)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        if r.returncode:
            raise RuntimeError(f"store_write case failed:\n{r.stderr[-3000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[128])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--kinds", nargs="+", default=["relu", "dense"], choices=["relu", "dense"])
    ap.add_argument("--no-old", action="store_true", help="skip the pre-writer store")
    ap.add_argument("--old-rev", default=OLD_REV, help="revision with featmammo/store.py")
    ap.add_argument(
        "--old-rows-max", type=int, help="run the pre-writer store up to this many rows"
    )
    ap.add_argument("--out", help="path stem (default results/store_write[-dimD])")
    a = ap.parse_args(argv)
    modes = ["new"] if a.no_old else ["new", "old"]
    if a.out is None:
        suffix = "" if a.dims == [128] else "-dim" + "-".join(map(str, a.dims))
        a.out = str(HERE / "results" / f"store_write{suffix}")
    results = []
    for dim, kind, n, mode in itertools.product(a.dims, a.kinds, a.rows, modes):
        if mode == "old" and a.old_rows_max is not None and n > a.old_rows_max:
            continue  # its bytes grow with the square of the rows
        r = write_amplification(n, dim=dim, batch=a.batch, mode=mode, kind=kind, old_rev=a.old_rev)
        r["loadavg"] = [round(v, 2) for v in os.getloadavg()]
        print(json.dumps(r), flush=True)
        results.append(r)
    out = {
        "benchmark": "store_write",
        "command": "python benchmarks/store_write.py " + " ".join(argv or sys.argv[1:]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "target": "new: bytes written / final size <= 3, flat in the row count",
        "results": results,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# Store write amplification",
        "",
        f"`{out['command']}` at {out['time']}; simulated embeddings (relu: ReLU'd Gaussians, "
        "half zeros, compressible like real features; dense: Gaussians), "
        f"batch {a.batch}, float32, gzip. Ratio = bytes written / final store size "
        "(`wchar`: write syscalls; `block`: bytes that reached the disk, where counted).",
        "",
        "| dim | embeddings | writer | rows | final MB | written MB (wchar) | wchar ratio "
        "| block ratio | merges | s | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['dim']} | {r['embeddings']} | {r['mode']} | {r['rows']:,} | "
            f"{r['final_bytes'] / 1e6:.1f} | "
            f"{r['wchar'] / 1e6:.1f} | {r['wchar_ratio']:.2f} | {r['block_ratio'] or '-'} | "
            f"{r['merges']} | {r['seconds']} | {r['loadavg'][0]} |"
        )
    Path(a.out + ".md").write_text("\n".join(lines) + "\n")
    return out


if __name__ == "__main__":
    main()
