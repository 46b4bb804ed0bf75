"""Benchmark the classifier heads: the features x heads grid on a store, and fit-time scaling.

Per (features, head): fit time, predict time and peak memory. Every head gets its own spawned
worker process; before each fit the process's peak-RSS counter is reset (Linux ``clear_refs``), so
``peak_rss_mb`` is the highest resident size during that fit (data included) and
``fit_rss_delta_mb`` its growth over the size just before ``fit``. Balanced accuracy and macro
one-vs-rest ROC-AUC on one patient-grouped hold-out split are for orientation only: the honest
comparison is ``featmammo fit`` (grouped CV, bootstrap CIs). Then the same fit measurements on
synthetic "hybrid" embeddings (resnet50 2048-d + alexnet 4096-d) of growing size.

    python benchmarks/compare_heads.py                 # synthetic store (1000 images), 1k/5k/20k
    python benchmarks/compare_heads.py --quick         # small sizes, short time cap
    python benchmarks/compare_heads.py cache/stores/cbis.h5 --features resnet50,alexnet,hybrid
    python benchmarks/compare_heads.py --make-store /tmp/synthetic.h5   # only write the store

    python benchmarks/compare_heads.py --nested        # tuned vs untuned, cost of nested CV

``--nested`` runs ``featmammo.fit`` twice on the same store (default: the synthetic 1,000 x 6,144
store; resnet50, alexnet, hybrid x logreg, svm-linear, svm-rbf, rf, knn, xgboost; 5 outer and
3 inner patient-grouped folds, no test split), once with ``--tune grid`` and once with
``--tune none``: wall time of each (and per head, from the fit log), the CV balanced accuracy of
every features x head, the head ranking per features set, whether "hybrid beats backbone" agrees
between the two, and the chosen parameters. ``--exhaustive-heads rf,xgboost`` (the default; ""
skips it) adds a third run of those heads with the grid tuning had before successive halving
(``EXHAUSTIVE_GRIDS``, every point on every inner fold; ``--exhaustive-features``, default
resnet50), to show that halving and the smaller xgboost grid choose the same or equally good
parameters. Results: ``benchmarks/results/
compare_heads-nested[-jobsN].json`` and ``.md`` (``--nested-grid small`` for the demo's grid).

Results: ``benchmarks/results/compare_heads[-quick].json`` and ``.md``. svm-rbf (kernel SVM plus
3 calibration fits; time grows quadratically or worse with n) is skipped above ``--svm-rbf-max``
images, with the reason in the results; a fit running past ``--time-cap`` seconds (+60 s for
imports and data loading) is stopped and recorded as ``timeout``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

log = logging.getLogger("compare_heads")

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the spawned workers import this file by path
    sys.path.insert(0, str(HERE))
from memory import reset_peak, status_kb  # noqa: E402  (benchmarks/memory.py)

CLASSES = ("normal", "benign", "malignant")
SYNTH_DIMS = {"resnet50": 2048, "alexnet": 4096}


def _run_header(argv, **machine) -> dict:
    """When, by which command and on what machine a result was made (every results file)."""
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            **machine,
        },
    }


# --------------------------------------------------------------------------- synthetic embeddings
def synthetic_embeddings(n: int, dims=SYNTH_DIMS, seed: int = 0, signal: float = 0.1):
    """Fake backbone embeddings with class signal and patient clustering.

    Returns ``(ids, meta DataFrame, {backbone: (n, d) float32})``. Patients hold 1-4 images (so
    patient-grouped splitting matters); each class shifts a 16-d latent factor that every block sees
    through its own random projection; values are ReLU'd like pooled CNN features.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, 5)))
    sizes[-1] -= sum(sizes) - n
    patient = np.repeat(np.arange(len(sizes)), sizes)
    patient_class = rng.choice(3, size=len(sizes), p=[0.45, 0.35, 0.20])
    y = patient_class[patient]
    latent = rng.normal(size=(3, 16)) * signal * 4
    z = latent[y] + rng.normal(size=(len(sizes), 16))[patient] * 0.8 + rng.normal(size=(n, 16))
    arrays = {}
    for name, d in dims.items():
        proj = rng.normal(size=(16, d)) / 4
        x = z @ proj + rng.normal(size=(n, d))
        arrays[name] = np.maximum(x, 0).astype(np.float32)
    ids = np.array([f"synth{i:06d}" for i in range(n)])
    meta = pd.DataFrame(
        {
            "label": np.array(CLASSES)[y],
            "patient_id": [f"SP{p:05d}" for p in patient],
            "laterality": rng.choice(["L", "R"], size=n),
            "view": rng.choice(["CC", "MLO"], size=n),
            "split": "",
            "source": "synthetic",
        }
    )
    return ids, meta, arrays


def make_synthetic_store(path, n: int = 1000, seed: int = 0):
    """Write a synthetic store with resnet50/alexnet blocks (one preprocessing fingerprint)."""
    from featmammo import store

    ids, meta, arrays = synthetic_embeddings(n, seed=seed)
    prov = {
        name: {
            "spec": {"name": name, "arch": name, "dim": d},
            "layer": "penultimate",
            "weights": "synthetic",
            "weights_sha256": None,
            "preprocess": {"synthetic": True},
            "preprocess_fingerprint": "synthetic",
        }
        for name, d in SYNTH_DIMS.items()
    }
    return store.write(path, ids, meta, arrays, prov, {"note": "synthetic benchmark store"})


# ------------------------------------------------------------------------------ one measured fit
def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` field in MB (nan where unreadable)."""
    kb = status_kb(field)
    return kb / 1024 if kb else float("nan")


def _run_task(task: dict) -> dict:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from featmammo import heads

    d = np.load(task["data"], allow_pickle=True)
    X, y, train, test = d["X"], d["y"], d["train"], d["test"]
    model = heads.make(task["head"], seed=task["seed"], **task["params"])
    if heads.canonical_name(task["head"]) == "refine-mlp":
        import torch  # noqa: F401  (import cost outside the timed fit, as for the other heads)
    rss0 = _status_mb("VmRSS")
    exact = reset_peak()
    t0 = time.perf_counter()
    model.fit(X[train], y[train])
    fit_s = time.perf_counter() - t0
    peak = (
        _status_mb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    out = {
        "status": "ok",
        "fit_s": fit_s,
        "peak_rss_mb": peak,
        "fit_rss_delta_mb": max(0.0, peak - rss0),
        "peak_is_per_fit": exact,
    }
    if task["evaluate"]:
        t1 = time.perf_counter()
        proba = model.predict_proba(X[test])
        out["predict_s"] = time.perf_counter() - t1
        pred = model.classes_[proba.argmax(axis=1)]
        out["balanced_accuracy"] = float(balanced_accuracy_score(y[test], pred))
        try:
            out["roc_auc_ovr"] = float(
                roc_auc_score(y[test], proba, multi_class="ovr", labels=model.classes_)
            )
        except ValueError as exc:  # a class absent from the test split
            out["roc_auc_ovr"], out["note"] = None, str(exc)
    return out


def _worker(conn) -> None:
    """A fresh process that fits one head per task it receives (None ends it)."""
    while True:
        task = conn.recv()
        if task is None:
            break
        try:
            out = _run_task(task)
        except Exception as exc:  # noqa: BLE001 - reported as a failed cell, not a crash
            out = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        conn.send(out)
    conn.close()


class Worker:
    """A spawned process running fits one by one; a fit past the cap kills it (restarted lazily)."""

    def __init__(self):
        self.proc = None
        self.conn = None

    def _start(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def run(self, task: dict, time_cap: float) -> dict:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        t0 = time.perf_counter()
        self.conn.send(task)
        # the cap is on the fit; allow for the first task's imports and for data loading
        if self.conn.poll(time_cap + 60):
            try:
                result = self.conn.recv()
            except EOFError:
                result = {"status": "error", "error": f"worker died (exit {self.proc.exitcode})"}
                self.proc = None
        else:
            self.stop(kill=True)
            result = {"status": "timeout", "error": f"no result within {time_cap + 60:.0f} s"}
        result["wall_s"] = time.perf_counter() - t0
        if result.get("status") == "ok" and result["fit_s"] > time_cap:
            result["note"] = f"fit took longer than the {time_cap:.0f} s cap"
        return result

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.terminate()
        else:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                self.proc.terminate()
        self.proc.join(10)
        self.proc = None


def _split(y, groups, seed):
    try:
        from featmammo.splits import grouped_holdout

        return grouped_holdout(y, groups, test_size=0.25, seed=seed)
    except ImportError:  # featmammo.splits not installed: scikit-learn's grouped stratified split
        from sklearn.model_selection import StratifiedGroupKFold

        return next(StratifiedGroupKFold(4, shuffle=True, random_state=seed).split(y, y, groups))


def _bench_params(head: str, quick: bool) -> dict:
    """Benchmark settings: the registry defaults, single-threaded where a head would take both
    shared cores (numbers are per core and comparable across heads)."""
    params = {
        "xgboost": {"n_jobs": 1, "device": "auto"},
        "rf": {"n_jobs": 1},
        "refine-mlp": {"n_jobs": 1, "device": "auto"},
    }.get(head, {})
    params = dict(params)
    if quick and head == "refine-mlp":
        params["max_epochs"] = 50  # --quick: cap the epochs (early stopping usually ends sooner)
    return params


# ------------------------------------------------------------------------------------------ main
# ----------------------------------------------------------------------- tuned vs untuned (nested)
class _FitClock(logging.Handler):
    """Attributes wall time to features/head from featmammo.fit's "fitting F / H, ..." lines,
    per thread (``fit --jobs`` interleaves features sets)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.per_head: dict = {}
        self._last: dict = {}

    def emit(self, record):
        msg = record.getMessage()
        now = time.perf_counter()
        self._close(record.thread, now)
        if "fitting " in msg:  # "[RUN_DIR: ]fitting FEATURES / HEAD, what"
            feat, head = msg.split("fitting ", 1)[1].split(",")[0].split(" / ")
            self._last[record.thread] = (feat, head, now)

    def _close(self, thread, now):
        if thread in self._last:
            feat, head, t0 = self._last.pop(thread)
            key = f"{feat} / {head}"
            self.per_head[key] = self.per_head.get(key, 0.0) + now - t0

    def close_current(self, now=None):
        for thread in list(self._last):
            self._close(thread, now or time.perf_counter())


def _ranking(lb, features):
    cv = lb[lb["evaluation"] == "cv"]
    out = {}
    for f in features:
        sub = cv[cv["features"] == f].sort_values("balanced_accuracy", ascending=False)
        out[f] = sub["head"].tolist()
    return out


#: the grids of rf and xgboost before successive halving (every point on every inner fold)
EXHAUSTIVE_GRIDS = {
    "rf": {"min_samples_leaf": [5, 1], "max_features": ["sqrt", 0.05]},
    "xgboost": {"max_depth": [2, 4], "learning_rate": [0.1, 0.3]},
}


def _effective(head: str, params: str) -> dict:
    """The values a head runs with for the parameters of its exhaustive grid, given tuning.csv's
    ``params`` (a parameter left out of a grid runs at the head's default)."""
    from featmammo import heads

    clf = heads.make(head, **json.loads(params))[-1]
    est = clf.get_params(deep=False).get("estimator")
    est = clf if est is None else est  # (not `or`: an unfitted forest has no len())
    values = est.get_params()
    return {k: values[k] for k in sorted(EXHAUSTIVE_GRIDS[head])}


def _chosen(run_dir):
    """tuning.csv's chosen params per (features, head, fold), and the count of pruned rows."""
    import pandas as pd

    tun = pd.read_csv(run_dir / "tuning.csv", dtype={"fold": str}, keep_default_na=False)
    chosen = tun[tun["chosen"].astype(str).str.lower().isin(("true", "1"))]
    per_fold = {
        f"{r.features} / {r.head} / {r.fold}": r.params for r in chosen.itertuples(index=False)
    }
    notes = tun["note"].astype(str) if "note" in tun.columns else pd.Series([""] * len(tun))
    return tun, chosen, per_fold, int(notes.str.startswith("pruned").sum())


def run_nested(args, argv) -> int:
    from featmammo import tuning
    from featmammo.fit import fit

    tmp = Path(tempfile.mkdtemp(prefix="featmammo-nested-"))
    n = args.grid_n or 1000
    if args.store:
        store_path, synthetic = Path(args.store), False
    else:
        store_path, synthetic = tmp / "synthetic.h5", True
        make_synthetic_store(store_path, n=n, seed=args.seed)
    features = (
        [f.strip() for f in args.features.split(",")]
        if args.features
        else ["resnet50", "alexnet", "hybrid"]
    )
    head_names = [h.strip() for h in args.nested_heads.split(",") if h.strip()]
    exhaustive = [
        h.strip()
        for h in args.exhaustive_heads.split(",")
        if h.strip() and h.strip() in head_names and args.nested_grid == "default"
    ]
    exhaustive_features = [
        f.strip() for f in args.exhaustive_features.split(",") if f.strip() in features
    ] or features[:1]
    unknown = [h for h in exhaustive if h not in EXHAUSTIVE_GRIDS]
    if unknown:
        raise SystemExit(f"--exhaustive-heads: no exhaustive grid for {unknown}")
    results = {
        **_run_header(argv),
        "store": {"path": "(synthetic, temporary)" if synthetic else str(store_path), "n": n},
        "settings": {
            "features": features,
            "heads": head_names,
            "outer": args.outer,
            "inner": args.inner,
            "grid": args.nested_grid,
            "seed": args.seed,
            "jobs": args.jobs,
            "halving_heads": list(tuning.HALVING_HEADS),
            "xgboost_grid": tuning.resolve_grids(args.nested_grid)["xgboost"],
            "exhaustive_heads": exhaustive,
            "exhaustive_features": exhaustive_features,
            "exhaustive_grids": {h: EXHAUSTIVE_GRIDS[h] for h in exhaustive},
        },  # fmt: skip
        "runs": {},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "compare_heads-nested" + (
        "" if args.nested_grid == "default" else f"-{args.nested_grid}"
    )
    stem += f"-jobs{args.jobs}" if args.jobs > 1 else ""
    partial = out / f"{stem}.partial.json"
    fit_log = logging.getLogger("featmammo.fit")
    boards = {}
    modes = ["grid", "none", *(["exhaustive"] if exhaustive else [])]
    for mode in modes:
        clock = _FitClock()
        fit_log.addHandler(clock)
        load0 = os.getloadavg()
        halving = tuning.HALVING_HEADS
        if mode == "exhaustive":
            tuning.HALVING_HEADS = ()  # every point on every inner fold, as before halving
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            res = fit(
                [store_path], tmp / f"run-{mode}",
                features=exhaustive_features if mode == "exhaustive" else features,
                heads=exhaustive if mode == "exhaustive" else head_names,
                cv=args.outer, test_split="none", seed=args.seed, n_boot=0, figures=False,
                tune="none" if mode == "none" else "grid", inner_cv=args.inner,
                tune_grid=EXHAUSTIVE_GRIDS if mode == "exhaustive" else args.nested_grid,
                device="cpu", n_jobs=args.jobs,
            )  # fmt: skip
        finally:
            tuning.HALVING_HEADS = halving
            clock.close_current()
            fit_log.removeHandler(clock)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        lb = res.leaderboard
        boards[mode] = lb
        run = {
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "loadavg_before": [round(v, 2) for v in load0],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
            "per_head_s": {k: round(v, 1) for k, v in sorted(clock.per_head.items())},
            "ranking": _ranking(lb, features),
            "balanced_accuracy": {
                f"{r.features} / {r.head}": round(float(r.balanced_accuracy), 4)
                for r in lb[lb["evaluation"] == "cv"].itertuples()
            },
        }
        if mode != "none":
            tun, chosen, per_fold, n_pruned = _chosen(tmp / f"run-{mode}")
            run["chosen"] = {
                f"{f} / {h}": g["params"].value_counts().to_dict()
                for (f, h), g in chosen.groupby(["features", "head"])
            }
            run["chosen_per_fold"] = per_fold
            run["grid_points"] = int(len(tun))
            run["pruned_points"] = n_pruned
        results["runs"][mode] = run
        log.info("nested %s: %.1f s", mode, wall)
        # each finished run is on disk at once: a later failure loses no measured time
        partial.write_text(json.dumps(results, indent=2, default=str) + "\n")
    flips = []
    cv = {
        m: b[b["evaluation"] == "cv"].set_index(["features", "head"])
        for m, b in boards.items()
        if m in ("grid", "none")
    }
    if "hybrid" in features:
        for h in head_names:
            for b in [f for f in features if f != "hybrid"]:
                wins = {
                    m: bool(
                        cv[m].loc[("hybrid", h), "balanced_accuracy"]
                        > cv[m].loc[(b, h), "balanced_accuracy"]
                    )
                    for m in cv
                }
                flips.append({"head": h, "backbone": b, "hybrid_wins_tuned": wins["grid"],
                              "hybrid_wins_untuned": wins["none"]})  # fmt: skip
    results["hybrid_vs_backbone"] = flips
    results["cpu_ratio"] = round(
        results["runs"]["grid"]["cpu_s"] / max(results["runs"]["none"]["cpu_s"], 1e-9), 2
    )
    results["cost_ratio"] = round(
        results["runs"]["grid"]["wall_s"] / results["runs"]["none"]["wall_s"], 2
    )
    if exhaustive:
        g, e = results["runs"]["grid"], results["runs"]["exhaustive"]
        same = {}
        for key, params in e["chosen_per_fold"].items():
            fh = key.rsplit(" / ", 1)[0]
            head = fh.split(" / ")[1]
            hit = same.setdefault(fh, [0, 0])
            mine = g["chosen_per_fold"].get(key, "{}")
            hit[0] += int(_effective(head, mine) == _effective(head, params))
            hit[1] += 1
        results["halving_vs_exhaustive"] = [
            {
                "features_head": fh,
                "same_chosen_folds": hit[0],
                "folds": hit[1],
                "bacc_halving": g["balanced_accuracy"][fh],
                "bacc_exhaustive": e["balanced_accuracy"][fh],
                "s_halving": g["per_head_s"].get(fh),
                "s_exhaustive": e["per_head_s"].get(fh),
            }
            for fh, hit in same.items()
        ]
    shutil.rmtree(tmp, ignore_errors=True)
    baseline = None
    if args.baseline:
        baseline = json.loads(Path(args.baseline).read_text())
        results["baseline"] = {"path": str(args.baseline), "created": baseline["created"]}
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(nested_markdown(results, baseline))
    partial.unlink(missing_ok=True)
    log.info("wrote %s and %s", out / f"{stem}.json", out / f"{stem}.md")
    return 0


def nested_markdown(r: dict, baseline: dict | None = None) -> str:
    """The markdown of a ``--nested`` run; ``baseline``: an earlier run's results (``--baseline``),
    whose tuned wall/CPU time and CV balanced accuracy are shown beside this run's."""
    s = r["settings"]
    g, n = r["runs"]["grid"], r["runs"]["none"]
    L = [
        "# Tuned vs untuned heads, cost of nested CV (`benchmarks/compare_heads.py --nested`)",
        "",
        f"- created {r['created']}; command `{r['command']}`",
        f"- machine: {r['machine']['platform']}, {r['machine']['cpus']} CPUs; load average "
        f"before/after the tuned run {g['loadavg_before']} / {g['loadavg_after']}",
        f"- store: {r['store']['path']} ({r['store']['n']} images); features "
        f"{', '.join(s['features'])}; heads {', '.join(s['heads'])}",
        f"- {s['outer']} outer x {s['inner']} inner patient-grouped folds, grid `{s['grid']}` "
        f"({g.get('grid_points', 0)} grid-point rows in tuning.csv, "
        f"{g.get('pruned_points', 0)} of them pruned by successive halving of "
        f"{', '.join(s.get('halving_heads', [])) or 'no head'}), no test split; "
        f"{s.get('jobs', 1)} features set(s) in parallel, 1 BLAS/OpenMP thread each",
        "",
        "| run | wall s | CPU s (all threads of the process) | load average before / after |",
        "|---|---:|---:|---|",
        f"| --tune grid | {g['wall_s']} | {g.get('cpu_s')} | {g['loadavg_before']} / "
        f"{g['loadavg_after']} |",
        f"| --tune none | {n['wall_s']} | {n.get('cpu_s')} | {n['loadavg_before']} / "
        f"{n['loadavg_after']} |",
        f"| ratio | {r['cost_ratio']} | {r.get('cpu_ratio')} | |",
        "",
        "## CV balanced accuracy (tuned / untuned) and time per features x head",
        "",
        "| features / head | tuned | untuned | tuned s | untuned s | chosen (folds) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    if baseline:
        b = baseline["runs"]["grid"]
        at = next(i for i, line in enumerate(L) if line.startswith("| ratio |")) + 1
        L.insert(
            at,
            f"| baseline --tune grid (`{baseline['command']}`, {baseline['created']}) "
            f"| {b['wall_s']} | {b.get('cpu_s')} | {b['loadavg_before']} / "
            f"{b['loadavg_after']} |",
        )
    for key in g["balanced_accuracy"]:
        chosen = "; ".join(f"{p} x{c}" for p, c in g.get("chosen", {}).get(key, {}).items())
        L.append(
            f"| {key} | {g['balanced_accuracy'][key]:.3f} | {n['balanced_accuracy'][key]:.3f} "
            f"| {g['per_head_s'].get(key, float('nan')):.1f} "
            f"| {n['per_head_s'].get(key, float('nan')):.1f} | {chosen} |"
        )
    L += ["", "## Head ranking per features set (best first)", "",
          "| features | tuned | untuned |", "|---|---|---|"]  # fmt: skip
    for f in s["features"]:
        L.append(f"| {f} | {', '.join(g['ranking'][f])} | {', '.join(n['ranking'][f])} |")
    if baseline:
        b = baseline["runs"]["grid"]["balanced_accuracy"]
        L += [
            "",
            "## CV balanced accuracy, tuned: this run vs the baseline",
            "",
            "Both sides changed: the grids and halving and, since the baseline, the heads' "
            "decision rule (class-balanced probabilities for every head), so a difference here is "
            "not the tuning's alone; the exhaustive-grid section below isolates the tuning.",
            "",
            "| features / head | this run | baseline |",
            "|---|---:|---:|",
        ]
        for key, v in g["balanced_accuracy"].items():
            L.append(f"| {key} | {v:.3f} | {_fmt(b.get(key), '.3f')} |")
    if r.get("halving_vs_exhaustive"):
        e = r["runs"]["exhaustive"]
        L += [
            "",
            "## Successive halving and the smaller xgboost grid vs the exhaustive grid",
            "",
            f"The exhaustive run tunes {', '.join(s['exhaustive_heads'])} "
            f"({', '.join(s.get('exhaustive_features', []))}) on "
            f"`{json.dumps(s['exhaustive_grids'])}` with every point on every inner fold "
            f"({e['wall_s']} s wall, {e['cpu_s']} s CPU, load {e['loadavg_before']} / "
            f"{e['loadavg_after']}); the tuned run uses `{json.dumps(s['xgboost_grid'])}` for "
            "xgboost and halving for both.",
            "",
            "| features / head | same chosen params (folds) | CV bal. acc. halving | exhaustive "
            "| s halving | s exhaustive |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for x in r["halving_vs_exhaustive"]:
            L.append(
                f"| {x['features_head']} | {x['same_chosen_folds']} / {x['folds']} "
                f"| {x['bacc_halving']:.3f} | {x['bacc_exhaustive']:.3f} "
                f"| {_fmt(x['s_halving'], '.1f')} | {_fmt(x['s_exhaustive'], '.1f')} |"
            )
    if r["hybrid_vs_backbone"]:
        L += ["", "## Does the hybrid beat the backbone (CV balanced accuracy)?", "",
              "| head | vs | tuned | untuned |", "|---|---|---|---|"]  # fmt: skip
        for x in r["hybrid_vs_backbone"]:
            L.append(
                f"| {x['head']} | {x['backbone']} | {'yes' if x['hybrid_wins_tuned'] else 'no'} "
                f"| {'yes' if x['hybrid_wins_untuned'] else 'no'} |"
            )
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    from featmammo import heads

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "store", nargs="?", help="store path (default: a synthetic store in a temp dir)"
    )
    ap.add_argument("--quick", action="store_true", help="small sizes and a short time cap")
    ap.add_argument("--heads", default=",".join(heads.available()))
    ap.add_argument("--features", default=None, help="comma list (default: each backbone, hybrid)")
    ap.add_argument("--grid-n", type=int, default=None, help="images in the synthetic store")
    ap.add_argument("--sizes", default=None, help="scaling sizes (default 1000,5000,20000)")
    ap.add_argument("--time-cap", type=float, default=None, help="seconds per fit")
    ap.add_argument("--svm-rbf-max", type=int, default=10000, help="skip svm-rbf above this n")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--no-grid", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--make-store", metavar="PATH", help="only write a synthetic store and exit")
    ap.add_argument("--nested", action="store_true", help="tuned vs untuned nested CV (see above)")
    ap.add_argument("--nested-heads", default="logreg,svm-linear,svm-rbf,rf,knn,xgboost")
    ap.add_argument("--nested-grid", default="default", help="default | small")
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--inner", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1, help="features sets in parallel (fit n_jobs)")
    ap.add_argument(
        "--exhaustive-heads",
        default="rf,xgboost",
        help="--nested: heads also tuned on the grid before halving, every point on every inner "
        "fold ('' skips that run)",
    )
    ap.add_argument(
        "--baseline",
        default=None,
        help="--nested: an earlier compare_heads-nested*.json shown beside this run",
    )
    ap.add_argument(
        "--exhaustive-features",
        default="resnet50",
        help="--nested: features sets of that run (default resnet50, the cheapest)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.nested:
        return run_nested(args, argv)

    grid_n = args.grid_n or (300 if args.quick else 1000)
    if args.make_store:
        s = make_synthetic_store(args.make_store, n=grid_n, seed=args.seed)
        log.info("wrote %s", s)
        return 0
    sizes = [
        int(v)
        for v in (args.sizes or ("500,1000,2000" if args.quick else "1000,5000,20000")).split(",")
    ]
    time_cap = args.time_cap or (120.0 if args.quick else 900.0)
    head_names = [h.strip() for h in args.heads.split(",") if h.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="featmammo-bench-"))

    from featmammo import store as fstore
    from featmammo.fusion import fuse

    if args.store:
        store_path, synthetic = Path(args.store), False
    else:
        store_path, synthetic = tmp / "synthetic.h5", True
        make_synthetic_store(store_path, n=grid_n, seed=args.seed)
    s = fstore.open(store_path)
    features = (
        [f.strip() for f in args.features.split(",")]
        if args.features
        else [*s.backbones, "hybrid"]
        if len(s.backbones) > 1
        else list(s.backbones)
    )
    results = {
        **_run_header(argv, cuda_for_xgboost=heads.cuda_available()),
        "versions": heads.io.versions(),
        "store": {"path": str(store_path), "synthetic": synthetic, "n_images": len(s.ids)},
        "settings": {"quick": args.quick, "time_cap_s": time_cap, "seed": args.seed},
        "grid": [],
        "scaling": [],
        "skipped": [],
    }

    # data files first (each worker loads the one its task names)
    grid_tasks, scale_tasks = [], []
    if not args.no_grid:
        for feat in features:
            fused = fuse(s, feat)
            y, groups = fused.y.astype(str), fused.groups.astype(str)
            train, test = _split(y, groups, args.seed)
            data = tmp / f"grid-{feat}.npz"
            np.savez(data, X=fused.X, y=y.astype(object), train=train, test=test)
            info = {"features": feat, "n_train": len(train), "n_test": len(test)}
            grid_tasks.append((data, {**info, "dim": fused.X.shape[1]}))
    if not args.no_scaling:
        for n in sizes:
            ids, meta, arrays = synthetic_embeddings(n, seed=args.seed)
            X = np.concatenate([arrays[b] for b in SYNTH_DIMS], axis=1)
            data = tmp / f"scale-{n}.npz"
            y = meta["label"].to_numpy().astype(object)
            np.savez(data, X=X, y=y, train=np.arange(n), test=np.arange(0))
            scale_tasks.append((data, {"n": n, "dim": X.shape[1]}))
            del X, arrays

    for head in head_names:
        params = _bench_params(head, args.quick)
        worker = Worker()  # one process per head; the peak RSS is reset before every fit
        try:
            for data, info in grid_tasks:
                task = {"data": str(data), "head": head, "seed": args.seed, "params": params}
                r = worker.run({**task, "evaluate": True}, time_cap)
                results["grid"].append({**info, "head": head, "params": params, **r})
                log.info("grid %s/%s: %s", info["features"], head, _brief(r))
            for data, info in scale_tasks:
                n = info["n"]
                if head == "svm-rbf" and n > args.svm_rbf_max:
                    reason = (
                        f"svm-rbf skipped at n={n}: kernel SVM fit time grows O(n^2)-O(n^3) "
                        f"(plus 3 calibration fits); above --svm-rbf-max={args.svm_rbf_max}"
                    )
                    results["skipped"].append({"head": head, "n": n, "reason": reason})
                    results["scaling"].append({**info, "head": head, "status": "skipped"})
                    continue
                task = {"data": str(data), "head": head, "seed": args.seed, "params": params}
                r = worker.run({**task, "evaluate": False}, time_cap)
                results["scaling"].append({**info, "head": head, "params": params, **r})
                log.info("scaling %s n=%d: %s", head, n, _brief(r))
        finally:
            worker.stop()
    shutil.rmtree(tmp, ignore_errors=True)  # data files and the synthetic store
    if synthetic:
        results["store"]["path"] = "(synthetic, temporary)"

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "compare_heads-quick" if args.quick else "compare_heads"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(to_markdown(results))
    log.info("wrote %s and %s", out / f"{stem}.json", out / f"{stem}.md")
    return 0


def _brief(r: dict) -> dict:
    keys = ("status", "fit_s", "peak_rss_mb", "balanced_accuracy", "error")
    return {k: r[k] for k in keys if k in r}


def _fmt(v, spec=".2f"):
    return "" if v is None else (format(v, spec) if isinstance(v, float) else str(v))


def to_markdown(results: dict) -> str:
    m, st = results["machine"], results["store"]
    synth = ", synthetic embeddings" if st["synthetic"] else ""
    lines = [
        "# Head benchmark (`benchmarks/compare_heads.py`)",
        "",
        f"- created {results['created']}; command `{results['command']}`",
        f"- machine: {m['platform']}, {m['cpus']} CPUs, CUDA for XGBoost: {m['cuda_for_xgboost']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}",
        f"- store: {st['path']} ({st['n_images']} images{synth})",
        f"- one worker process per head, peak RSS reset before each fit; time cap "
        f"{results['settings']['time_cap_s']:.0f} s; XGBoost, random forest and the torch MLP "
        "use 1 thread",
        "- accuracy columns: one patient-grouped hold-out split, for orientation only (use "
        "`featmammo fit` for grouped CV with confidence intervals)",
        "",
    ]
    if results["grid"]:
        lines += [
            "## Features x heads",
            "",
            "| features | head | dim | n train | fit s | predict s | peak RSS MB | fit RSS +MB "
            "| bal. acc | ROC-AUC ovr | status |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in sorted(results["grid"], key=lambda r: r["features"]):
            cells = [
                r["features"],
                r["head"],
                r["dim"],
                r["n_train"],
                _fmt(r.get("fit_s")),
                _fmt(r.get("predict_s"), ".3f"),
                _fmt(r.get("peak_rss_mb"), ".0f"),
                _fmt(r.get("fit_rss_delta_mb"), ".0f"),
                _fmt(r.get("balanced_accuracy"), ".3f"),
                _fmt(r.get("roc_auc_ovr"), ".3f"),
                f"{r['status']} {r.get('error', '')}".strip(),
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        lines.append("")
    if results["scaling"]:
        sizes = sorted({r["n"] for r in results["scaling"]})
        heads_ = list(dict.fromkeys(r["head"] for r in results["scaling"]))
        cell = {(r["head"], r["n"]): r for r in results["scaling"]}
        dim = sum(SYNTH_DIMS.values())
        lines += [
            f"## Fit time (s) / peak RSS (MB) vs number of images (synthetic hybrid, {dim}-d)",
            "",
            "| head | " + " | ".join(f"n={n}" for n in sizes) + " |",
            "|---|" + "---:|" * len(sizes),
        ]
        for h in heads_:
            row = []
            for n in sizes:
                r = cell.get((h, n), {})
                ok = r.get("status") == "ok"
                row.append(
                    f"{r['fit_s']:.2f} s / {r['peak_rss_mb']:.0f} MB" if ok else r.get("status", "")
                )
            lines.append(f"| {h} | " + " | ".join(row) + " |")
        lines.append("")
    for s in results["skipped"]:
        lines.append(f"- skipped: {s['reason']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
