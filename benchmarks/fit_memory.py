"""How much memory does ``fit`` hold beside the features it uses? (issue 15 item 5: "fit holds at
most ~1.3x the features it uses").

A synthetic store (resnet50 2048-d + alexnet 4096-d float32, ``compare_heads.py --make-store``) is
written by a child process; this process then measures, from its resident size just before each
call (peak RSS reset with ``/proc/self/clear_refs``):

- ``fuse_many``: reading the three default features sets (resnet50, alexnet, hybrid) the way fit
  does -- one matrix, each set a column view;
- ``fit``: the whole ``featmammo.fit.fit`` on those sets, one cheap head (logreg, ``--tune none``,
  2-fold patient-grouped CV, no test split, no bootstrap, no figures), so that what is measured is
  the features and the fold copies, not a head's own working memory.

The reference is the bytes of the features fit uses: the hybrid's columns (resnet50 and alexnet are
views of them), n x 6144 x 4 bytes. Ratio = peak rise / those bytes. A warm-up fit runs first, so
imports (torch, matplotlib, the heads) are outside the readings. What remains above 1x in ``fit``
is one fold's training rows and the standardised copy the head's pipeline makes of them (2x at
12,000 rows; 4.1x before BlockScaler.transform worked in one output array and BlockScaler.fit
accumulated the std a few rows at a time).

    python benchmarks/fit_memory.py                 # n = 4000 and 12000
    python benchmarks/fit_memory.py --sizes 2000    # one size

Results: ``benchmarks/results/fit_memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from memory import reset_peak, status_kb  # noqa: E402


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


def measure(store_path: Path, n: int, tmp: Path) -> dict:
    from featmammo.fit import fit
    from featmammo.fusion import fuse_many
    from featmammo.store import Store

    features = ["resnet50", "alexnet", "hybrid"]
    feature_mb = n * (2048 + 4096) * 4 / 2**20
    if not (tmp / "warm").exists():  # imports (torch, matplotlib, the heads) outside the readings
        fit(
            [store_path], tmp / "warm", features=features, heads=["logreg"], cv=2,
            test_split="none", n_boot=0, figures=False, tune="none", device="cpu",
        )  # fmt: skip
    out = {"n": n, "features_mb": round(feature_mb, 1)}

    gc.collect()
    rss0 = status_kb("VmRSS")
    exact = reset_peak()
    t0 = time.perf_counter()
    with Store(store_path) as s:
        fused = fuse_many([s], features)
        held = sum(f.X.nbytes for f in fused.values()) / 2**20  # views counted as if copies
        del fused
    out["fuse_many"] = {
        "peak_rise_mb": _mb(status_kb("VmHWM") - rss0),
        "ratio": round((status_kb("VmHWM") - rss0) / 1024 / feature_mb, 3),
        "s": round(time.perf_counter() - t0, 2),
        "sum_of_set_widths_mb": round(held, 1),
    }
    gc.collect()
    rss0 = status_kb("VmRSS")
    reset_peak()
    t0 = time.perf_counter()
    fit(
        [store_path], tmp / f"run-{n}", features=features, heads=["logreg"], cv=2,
        test_split="none", n_boot=0, figures=False, tune="none", device="cpu",
    )  # fmt: skip
    peak = status_kb("VmHWM") - rss0
    out["fit"] = {
        "peak_rise_mb": _mb(peak),
        "ratio": round(peak / 1024 / feature_mb, 3),
        "s": round(time.perf_counter() - t0, 1),
    }
    out["peak_reset_exact"] = exact
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="4000,12000")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="featmammo-fitmem-") as d:
        tmp = Path(d)
        for n in [int(x) for x in args.sizes.split(",") if x.strip()]:
            store_path = tmp / f"synth-{n}.h5"
            subprocess.run(
                [sys.executable, str(HERE / "compare_heads.py"), "--make-store", str(store_path),
                 "--grid-n", str(n)],
                check=True, capture_output=True,
            )  # fmt: skip
            r = measure(store_path, n, tmp)
            print(json.dumps(r))
            rows.append(r)
    res = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "fit_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "load_before": [round(x, 2) for x in load0],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit_memory.json").write_text(json.dumps(res, indent=2) + "\n")
    L = [
        "# Memory fit holds beside its features (`benchmarks/fit_memory.py`)",
        "",
        f"- created {res['created']}; command `{res['command']}`; {res['machine']}; load "
        f"{res['load_before']} / {res['load_after']}",
        "- features: resnet50 (2048) + alexnet (4096) + hybrid, float32; reference = the hybrid's "
        "bytes (n x 6144 x 4); ratio = peak RSS rise during the call / that",
        "- fit: logreg, --tune none, --cv 2, --test-split none, no bootstrap, no figures",
        "",
        "| n | features MB | fuse_many peak MB | ratio | sum of the 3 sets' widths MB "
        "| fit peak MB | ratio | fit s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        L.append(
            f"| {r['n']} | {r['features_mb']} | {r['fuse_many']['peak_rise_mb']} | "
            f"{r['fuse_many']['ratio']} | {r['fuse_many']['sum_of_set_widths_mb']} | "
            f"{r['fit']['peak_rise_mb']} | {r['fit']['ratio']} | {r['fit']['s']} |"
        )
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        d_feat = b["features_mb"] - a["features_mb"]
        fz = (b["fuse_many"]["peak_rise_mb"] - a["fuse_many"]["peak_rise_mb"]) / d_feat
        ft = (b["fit"]["peak_rise_mb"] - a["fit"]["peak_rise_mb"]) / d_feat
        L += [
            "",
            f"Between n = {a['n']} and {b['n']} (what grows with the data, fixed costs cancelled): "
            f"fuse_many {fz:.2f}x, fit {ft:.2f}x the features.",
        ]
    (out / "fit_memory.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
