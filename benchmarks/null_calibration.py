"""Do featmammo's comparisons hold their level? Rejection rates under an exact null, power under a
real difference, and the cost of each method (issue 16 item 2).

Part A -- cross-validated comparisons of two features sets (the ``cv`` rows of comparisons.csv).
Two features sets are independent draws of one generative model: per patient a class (3 classes,
balanced), a patient effect shared by the patient's images, image noise, around class means
(``--dims`` dimensions, signal ``--signal``) that both sets share; both are exactly equally
informative, so "A differs from B" is an exact null. (Drawing each set its own class means makes
one of the two truly better in each data set: the tests then detect a real difference. A first
run did that: 10x10 CV "rejected" 21%.) Under the alternative, B's class signal is
scaled by ``--weaker``. Per replication: ``--patients`` patients x 2 images, patient-grouped
stratified 5-fold CV (featmammo.splits.grouped_kfold), a standardised multinomial logistic
regression (C = 1). Methods:

- ``pooled bootstrap (before)``: the former comparison -- the pooled out-of-fold rows, paired
  patient bootstrap, Wald z on the bootstrap SE (featmammo.evaluate.paired_comparison) -- and its
  clustered McNemar on the pooled rows;
- ``corrected t, R x K``: featmammo.evaluate.compare_predictions (the product's CV method): the
  Nadeau-Bengio corrected resampled t over R repeats of K-fold CV (1x5, 2x5; on the first
  ``--reps-expensive`` replications also 5x5 and Bouckaert & Frank's 10x10);
- ``Bayesian correlated t``: Benavoli et al. (2017) on the same folds; with a ROPE of 0 its
  posterior is the corrected t distribution, so "P(A > B) > 0.975 or < 0.025" is the corrected t
  test at 0.05 exactly (printed to show it); with a ROPE (+-0.01) it answers another question;
- ``test set only``: one patient-grouped hold-out (25% of the patients), one fit per features
  set, paired patient bootstrap on the test (the product's ``test`` rows).

Part B -- the ``test`` rows' p-values on fixed predictions, by patients per class: two models'
predictions are i.i.d. given the data (a shared patient effect, independent model noise), so
their expected metrics are equal on the evaluated patients (an exact conditional null). Methods:
the former Wald z and percentile p, the product's small-sample t (bootstrap SE x n/(n-1), t with
n - 1 df), the clustered McNemar. This gives the minimum of patients per class for a p-value.

    python benchmarks/null_calibration.py            # 500 replications (5x5, 10x10: the first 100)
    python benchmarks/null_calibration.py --quick    # 60 replications (5x5, 10x10: 20)

Results: ``benchmarks/results/null_calibration[-quick].json`` and ``.md``: share of raw p < 0.05
(with a 95% Wilson interval) per method and metric, under the null and under the alternative,
fits per replication and seconds per replication.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from featmammo import splits  # noqa: E402
from featmammo.evaluate import compare_predictions, paired_comparison  # noqa: E402

CLASSES = ("normal", "benign", "malignant")
PCOLS = [f"p_{c}" for c in CLASSES]
METRICS = ("balanced_accuracy", "roc_auc_ovr")
ALPHA = 0.05


def _header(argv) -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *argv]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_at_start": [round(x, 2) for x in load] if load else None,
        },
    }


# --------------------------------------------------------------------------------------------------
# data


def simulate(rng, n_patients: int, dims: int, signal: float, weaker: float, per: int = 2):
    """(X_a, X_b, y, groups): two features sets of the same images, independent draws of one
    generative model; B's class signal scaled by ``weaker`` (1 = the exact null).

    The class means are drawn once and shared: A and B then have the same class-conditional
    distribution, so they are exactly equally informative (drawing each set its own means would
    make one of them truly better in each data set, and a test that detects it is right)."""
    y_pat = np.resize(np.arange(3), n_patients)
    rng.shuffle(y_pat)
    y = np.repeat(y_pat, per)
    groups = np.repeat(np.arange(n_patients), per).astype(str)
    shared = rng.normal(size=(3, dims)) * signal
    out = []
    for scale in (1.0, weaker):
        means = shared * scale
        patient = rng.normal(size=(n_patients, dims))[np.repeat(np.arange(n_patients), per)]
        noise = rng.normal(size=(len(y), dims))
        out.append(means[y] + patient + noise)
    return out[0], out[1], np.asarray(CLASSES, dtype=object)[y], groups


def _fit_predict(X, y, train, test):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500))
    model.fit(X[train], y[train])
    p = model.predict_proba(X[test])
    order = [list(model.classes_).index(c) for c in CLASSES]
    return p[:, order]


def _frame(proba_by_features, y, groups, fold, rows, repeat=1) -> pd.DataFrame:
    parts = []
    for f, p in proba_by_features.items():
        parts.append(
            pd.DataFrame(
                {
                    "image_id": [f"i{i}" for i in rows],
                    "patient_id": groups[rows],
                    "fold": fold,
                    "features": f,
                    "head": "logreg",
                    "y_true": y[rows],
                    "y_pred": np.asarray(CLASSES, dtype=object)[p.argmax(axis=1)],
                    "repeat": repeat,
                    **{c: p[:, j] for j, c in enumerate(PCOLS)},
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def cv_frames(Xa, Xb, y, groups, k: int, repeats: int, seed: int) -> tuple[pd.DataFrame, int]:
    """Out-of-fold predictions of both features sets for ``repeats`` x ``k``-fold CV."""
    frames, fits = [], 0
    for r in range(repeats):
        folds = splits.grouped_kfold(y, groups, k, seed * 1000 + r)
        for j, (tr, va) in enumerate(folds, start=1):
            probs = {"A": _fit_predict(Xa, y, tr, va), "B": _fit_predict(Xb, y, tr, va)}
            fits += 2
            frames.append(_frame(probs, y, groups, str(j), va, r + 1))
    return pd.concat(frames, ignore_index=True), fits


def _p(table: pd.DataFrame, metric: str) -> float:
    row = table[table["metric"] == metric]
    return float(row["p_raw"].iloc[0]) if len(row) else math.nan


def _bayes(table: pd.DataFrame, metric: str, rope: float) -> bool:
    """Decision of the Bayesian correlated t test from the corrected-t row (same posterior)."""
    from scipy import stats

    row = table[table["metric"] == metric].iloc[0]
    df = int(str(row["method"]).split("df ")[1].split(";")[0])
    half = row["ci_high"] - row["diff"]
    if not math.isfinite(half) or half <= 0:
        return False
    se = half / stats.t.ppf(0.975, df)
    post = stats.t(df, loc=row["diff"], scale=se)
    if rope == 0:
        return bool(max(post.sf(0), post.cdf(0)) > 1 - ALPHA / 2)
    return bool(max(post.sf(rope), post.cdf(-rope)) > 0.95)


# --------------------------------------------------------------------------------------------------
# part A: CV comparisons


def part_a_rep(rng, args, n_patients, weaker, seed, methods) -> dict:
    Xa, Xb, y, groups = simulate(rng, n_patients, args.dims, args.signal, weaker)
    out, cost = {}, {}
    quiet = {"min_patients_per_class": 1, "n_boot": args.n_boot, "seed": seed}
    t0 = time.perf_counter()
    max_r = max([r for (r, k) in methods["corrected"] if k == 5] or [1])
    cv5, fits5 = cv_frames(Xa, Xb, y, groups, 5, max_r, seed)
    t_cv5 = time.perf_counter() - t0
    first = cv5[cv5["repeat"] == 1]
    if "pooled" in methods:
        t = time.perf_counter()
        a, b = (first[first["features"] == f].drop(columns="repeat") for f in ("A", "B"))
        res = paired_comparison(a, b, CLASSES, n_boot=args.n_boot, seed=seed,
                                min_patients_per_class=1)  # fmt: skip
        for m in METRICS:
            out[f"pooled bootstrap (before)|{m}"] = res[m]["p_value"]
        out["pooled bootstrap (before)|accuracy_mcnemar"] = res["mcnemar"]["p_value"]
        cost["pooled bootstrap (before)"] = (fits5 / max_r, t_cv5 / max_r + time.perf_counter() - t)
    for r, k in methods["corrected"]:
        name = f"corrected t, {r}x{k}"
        t = time.perf_counter()
        if k == 5:
            frame, fits, base = cv5[cv5["repeat"] <= r], fits5 * r / max_r, t_cv5 * r / max_r
        else:
            frame, fits = cv_frames(Xa, Xb, y, groups, k, r, seed + 7)
            base = 0.0
        table = compare_predictions(frame, [("A", "B")], CLASSES, evaluations=("cv",), **quiet)
        for m in METRICS:
            out[f"{name}|{m}"] = _p(table, m)
        if (r, k) == methods.get("bayes"):
            for m in METRICS:
                out[f"Bayesian correlated t, {r}x{k}, ROPE 0|{m}"] = (
                    0.0 if _bayes(table, m, 0.0) else 1.0
                )
                out[f"Bayesian correlated t, {r}x{k}, ROPE 0.01|{m}"] = (
                    0.0 if _bayes(table, m, 0.01) else 1.0
                )
        cost[name] = (fits, base + time.perf_counter() - t)
    if methods.get("test_only"):
        t = time.perf_counter()
        tr, te = splits.grouped_holdout(y, groups, 0.25, seed)
        tr, te = np.asarray(tr), np.asarray(te)
        probs = {"A": _fit_predict(Xa, y, tr, te), "B": _fit_predict(Xb, y, tr, te)}
        frame = _frame(probs, y, groups, "test", te)
        table = compare_predictions(frame, [("A", "B")], CLASSES, evaluations=("test",), **quiet)
        for m in (*METRICS, "accuracy_mcnemar"):
            out[f"test set only (25% of patients)|{m}"] = _p(table, m)
        cost["test set only (25% of patients)"] = (2, time.perf_counter() - t)
    return out, cost


def run_part_a(args, n_patients, weaker, reps, methods, label, expensive=None, n_exp=0) -> dict:
    """``methods`` on every replication; ``expensive`` (more repeats) on the first ``n_exp``."""
    rng = np.random.default_rng(args.seed + int(100 * weaker) + n_patients)
    ps, costs = {}, {}
    t0 = time.perf_counter()
    for rep in range(reps):
        use = expensive if expensive and rep < n_exp else methods
        out, cost = part_a_rep(rng, args, n_patients, weaker, args.seed + rep, use)
        for key, p in out.items():
            ps.setdefault(key, []).append(p)
        for key, (fits, sec) in cost.items():
            costs.setdefault(key, []).append((fits, sec))
        if (rep + 1) % max(1, reps // 10) == 0:
            print(f"  {label}: {rep + 1}/{reps} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return _summarise(ps, costs)


def _wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    z = 1.959963984540054
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return round(mid - half, 4), round(mid + half, 4)


def _summarise(ps: dict, costs: dict) -> dict:
    rows = {}
    for key, values in ps.items():
        method, metric = key.split("|")
        v = np.asarray(values, dtype=float)
        valid = v[np.isfinite(v)]
        k = int((valid < ALPHA).sum())
        rows.setdefault(method, {})[metric] = {
            "rate": round(k / len(valid), 4) if len(valid) else None,
            "wilson95": _wilson(k, len(valid)),
            "n": int(len(valid)),
        }
    for method, c in costs.items():
        fits = np.mean([f for f, _ in c])
        sec = np.mean([s for _, s in c])
        rows.setdefault(method, {})["cost"] = {
            "fits_per_features_set_and_head": round(float(fits) / 2, 1),
            "seconds_per_replication": round(float(sec), 3),
        }
    for method in list(rows):
        if method.startswith("Bayesian"):
            rows[method]["cost"] = {"note": "the corrected t's folds (no extra fits)"}
    return rows


# --------------------------------------------------------------------------------------------------
# part B: fixed predictions (test rows), by patients per class


def fixed_predictions(rng, n_per_class: int, per: int = 2, signal: float = 1.0):
    n = 3 * n_per_class
    y_pat = np.repeat(np.arange(3), n_per_class)
    y = np.repeat(y_pat, per)
    groups = np.repeat(np.arange(n), per).astype(str)
    patient = rng.normal(size=(n, 3))[np.repeat(np.arange(n), per)]
    frames = {}
    for f in ("A", "B"):
        logits = signal * np.eye(3)[y] + patient + rng.normal(size=(len(y), 3))
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        frames[f] = p
    return frames, np.asarray(CLASSES, dtype=object)[y], groups


def run_part_b(args, n_per_class, reps) -> dict:
    rng = np.random.default_rng(args.seed + 17 * n_per_class)
    ps = {}
    for rep in range(reps):
        probs, y, groups = fixed_predictions(rng, n_per_class)
        frame = _frame(probs, y, groups, "test", np.arange(len(y))).drop(columns="repeat")
        a, b = (frame[frame["features"] == f] for f in ("A", "B"))
        old = paired_comparison(a, b, CLASSES, n_boot=args.n_boot, seed=rep,
                                min_patients_per_class=1)  # fmt: skip
        new = compare_predictions(
            frame,
            [("A", "B")],
            CLASSES,
            evaluations=("test",),
            n_boot=args.n_boot,
            seed=rep,
            min_patients_per_class=1,
        )
        for m in METRICS:
            ps.setdefault(f"bootstrap Wald z (before)|{m}", []).append(old[m]["p_value"])
            ps.setdefault(f"bootstrap percentile p (before)|{m}", []).append(old[m]["p_percentile"])
            ps.setdefault(f"bootstrap small-sample t (now)|{m}", []).append(_p(new, m))
        ps.setdefault("clustered McNemar|accuracy_mcnemar", []).append(_p(new, "accuracy_mcnemar"))
    return _summarise(ps, {})


# --------------------------------------------------------------------------------------------------
# output


def _fmt(cell) -> str:
    if not cell or cell.get("rate") is None:
        return ""
    lo, hi = cell["wilson95"]
    return f"{cell['rate']:.3f} [{lo:.3f}, {hi:.3f}]"


def _table(block: dict, metrics) -> list[str]:
    head = ["method", *metrics, "fits per features set x head", "s / replication"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, cells in block.items():
        cost = cells.get("cost", {})
        lines.append(
            "| " + " | ".join([
                method, *[_fmt(cells.get(m)) for m in metrics],
                str(cost.get("fits_per_features_set_and_head", cost.get("note", ""))),
                str(cost.get("seconds_per_replication", "")),
            ]) + " |"
        )  # fmt: skip
    return lines


def markdown(r: dict) -> str:
    L = ["# Null calibration of featmammo's comparisons", ""]
    L.append(f"`{r['command']}` at {r['created']}; {r['machine']['platform']}, "
             f"{r['machine']['cpus']} CPUs, load at start {r['machine']['load_at_start']}, at end "
             f"{r['machine'].get('load_at_end')}, "
             f"{r['wall_s']:.0f} s wall.")  # fmt: skip
    L.append("")
    L.append("Share of raw p < 0.05 (95% Wilson interval over the replications). Under the null "
             "a calibrated test gives 0.05; under the alternative it is the power.")  # fmt: skip
    s = r["settings"]
    L.append("")
    L.append(f"Settings: {s}")
    metrics = (*METRICS, "accuracy_mcnemar")
    for key, block in r["part_a"].items():
        L += ["", f"## Part A: CV comparisons, {key}", ""]
        L += _table(block, metrics)
    for key, block in r["part_b"].items():
        L += ["", f"## Part B: test rows on fixed predictions, {key}", ""]
        L += _table(block, metrics)
    if r.get("decision"):
        L += ["", "## Reading", ""] + [f"- {d}" for d in r["decision"]]
    return "\n".join(L) + "\n"


def _write(result: dict, t0: float, out: Path, stem: str) -> None:
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    result["machine"]["load_at_end"] = [round(x, 2) for x in load] if load else None
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=500)
    ap.add_argument(
        "--reps-expensive", type=int, default=100,
        help="replications that also run 5x5 and 10x10 CV (about 250 more fits each)",
    )  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="60 replications, fewer settings")
    ap.add_argument("--patients", type=int, default=120)
    ap.add_argument("--dims", type=int, default=16)
    ap.add_argument("--signal", type=float, default=0.35)
    ap.add_argument("--weaker", type=float, default=0.5, help="B's signal under the alternative")
    ap.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples (SE-based p)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--parts", default="a,b")
    ap.add_argument(
        "--expensive", default="5x5,10x10",
        help="RxK repeated CVs run on the first --reps-expensive replications (K = 5 or 10)",
    )  # fmt: skip
    ap.add_argument("--tag", default="", help="suffix of the results files")
    args = ap.parse_args(argv)
    reps = 60 if args.quick else args.reps
    n_exp = min(reps, 20 if args.quick else args.reps_expensive)
    warnings.filterwarnings("ignore")
    import sklearn.linear_model  # noqa: F401  (loads scipy's OpenBLAS before the limit below)
    from threadpoolctl import threadpool_limits

    # tiny matrices: idle BLAS threads only spin; a library loaded after this call would keep its
    # own threads (scipy's OpenBLAS made a fit 8x more CPU-hungry), hence the import above
    threadpool_limits(1)
    t0 = time.perf_counter()
    result = {**_header(argv), "settings": {
        "replications": reps, "patients": args.patients, "images_per_patient": 2,
        "dims": args.dims, "signal": args.signal, "weaker_under_alternative": args.weaker,
        "n_boot": args.n_boot, "head": "standardised multinomial logistic regression, C=1",
        "replications_with_expensive": n_exp, "expensive": args.expensive,
        "cv": "patient-grouped stratified 5-fold (featmammo.splits.grouped_kfold)",
    }, "part_a": {}, "part_b": {}}  # fmt: skip
    parts = set(args.parts.split(","))
    cheap = {"pooled": True, "corrected": [(1, 5), (2, 5)], "test_only": True}
    extra = [tuple(int(v) for v in x.split("x")) for x in args.expensive.split(",") if x]
    full = {**cheap, "corrected": [*cheap["corrected"], *extra]}
    if (10, 10) in extra:
        full["bayes"] = (10, 10)
    small = {"pooled": True, "corrected": [(1, 5), (2, 5), (5, 5)], "test_only": False}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = (
        "null_calibration" + ("-quick" if args.quick else "") + (f"-{args.tag}" if args.tag else "")
    )
    blocks = []
    if "a" in parts:
        blocks.append(("a", f"{args.patients} patients, exact null", args.patients, 1.0, True))
    if "b" in parts:
        blocks += [
            ("b", f"{n} patients per class, exact null", n, None, False)
            for n in ((5, 10, 20) if args.quick else (5, 8, 10, 15, 20, 30, 50))
        ]
    if "a" in parts:
        blocks.append(
            (
                "a",
                f"{args.patients} patients, B's signal x {args.weaker}",
                args.patients,
                args.weaker,
                True,
            )
        )
        blocks += [("a", f"{n} patients ({n // 3} per class), exact null", n, 1.0, False)
                   for n in (() if args.quick else (30, 60))]  # fmt: skip
    for part, key, n, weaker, main_block in blocks:
        print(f"part {part.upper()}: {key}", flush=True)
        if part == "b":
            result["part_b"][key] = run_part_b(args, n, reps)
        elif main_block:
            result["part_a"][key] = run_part_a(
                args, n, weaker, reps, cheap, key, expensive=full, n_exp=n_exp
            )
        else:
            result["part_a"][key] = run_part_a(args, n, weaker, reps, small, key)
        _write(result, t0, out, stem)  # after every block: a long run shows what it has
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
