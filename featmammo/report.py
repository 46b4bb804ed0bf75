"""The run report: leaderboard.csv, metrics.json, report.md and figures, all from predictions.csv.

:func:`write_report` is the only writer of those files, and it reads nothing but
``RUN_DIR/predictions.csv`` and ``RUN_DIR/config.json`` (classes, seed, bootstrap size, threshold,
and what the fit recorded about its inputs). Every number in the report is therefore recomputable
from the stored predictions; editing predictions.csv and re-running :func:`write_report` changes the
report.

The report shows the paper's table layout (per-class precision / recall / F1 / support, accuracy,
macro and weighted averages) with, beside it, what that layout hides: the majority-class baseline,
balanced accuracy, patient counts, patient-clustered bootstrap CIs, a leakage audit recomputed from
the fold column, and an internal-consistency section (F1 = 2PR/(P+R) per class, averages equal to
the mean of their parts, supports summing to n, leaderboard.csv equal to metrics.json after a round
trip).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import evaluate as ev
from .errors import ConfigError

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.csv"
CONFIG = "config.json"
LEADERBOARD = "leaderboard.csv"
METRICS = "metrics.json"
REPORT = "report.md"
IMAGES = "images.csv"  # optional: image_id -> path, written by fit for the test-image grid
FIGURES = "figures"
TOL = 1e-9


# --------------------------------------------------------------------------------------------------
# audit and consistency, recomputed from predictions


def fold_audit(predictions: pd.DataFrame) -> list[dict]:
    """Patients shared between CV folds and between the training part (CV rows) and the test rows.

    Computed per features x head from the ``fold`` and ``patient_id`` columns of predictions.csv.
    """
    out = []
    for (features, head), g in predictions.groupby(["features", "head"], sort=False):
        fold = g["fold"].astype(str)
        cv = g[fold != ev.TEST_FOLD]
        test = g[fold == ev.TEST_FOLD]
        folds_per_patient = cv.groupby("patient_id")["fold"].nunique()
        across = sorted(folds_per_patient[folds_per_patient > 1].index.astype(str))
        shared = sorted(set(cv["patient_id"]) & set(test["patient_id"]))
        dup_images = int(g["image_id"].duplicated().sum())
        out.append(
            {
                "features": features,
                "head": head,
                "n_folds": int(cv["fold"].nunique()),
                "cv_images": len(cv),
                "cv_patients": int(cv["patient_id"].nunique()),
                "test_images": len(test),
                "test_patients": int(test["patient_id"].nunique()),
                "patients_across_folds": len(across),
                "patients_train_and_test": len(shared),
                "images_predicted_twice": dup_images,
                "examples_across_folds": across[:5],
                "examples_train_and_test": shared[:5],
                "ok": not across and not shared and dup_images == 0,
            }
        )
    return out


def _check(checks: list, name: str, ok: bool, detail: str = "") -> None:
    checks.append({"check": name, "ok": bool(ok), "detail": detail})


def consistency_checks(
    predictions: pd.DataFrame, metrics: dict, leaderboard_path: Path, classes
) -> list[dict]:
    """Internal-consistency checks of the computed report (each a dict: check, ok, detail)."""
    checks: list[dict] = []
    pcols = [f"p_{c}" for c in classes]
    proba = predictions[pcols].to_numpy(float)
    sums = proba.sum(axis=1)
    bad = int((~np.isclose(sums, 1.0, atol=1e-4)).sum())
    _check(checks, "probabilities sum to 1 per image", bad == 0, f"{bad} row(s) off")
    argmax = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    mismatch = int((argmax != predictions["y_pred"].astype(str).to_numpy()).sum())
    _check(checks, "y_pred is the argmax of p_<class>", mismatch == 0, f"{mismatch} row(s) differ")
    worst = {"f1": 0.0, "macro": 0.0, "weighted": 0.0, "acc": 0.0, "bal": 0.0, "support": 0}
    for r in metrics["results"]:
        m = r["metrics"]
        pc = m["per_class"]
        cm = np.asarray(m["confusion_matrix"], dtype=float)
        support = np.array([pc[c]["support"] for c in classes], dtype=float)
        for c in classes:
            p, rec, f1 = pc[c]["precision"], pc[c]["recall"], pc[c]["f1"]
            expect = 2 * p * rec / (p + rec) if p + rec > 0 else 0.0
            worst["f1"] = max(worst["f1"], abs(f1 - expect))
        seen = (support > 0) | (cm.sum(axis=0) > 0)
        for avg in ("precision", "recall", "f1"):
            vals = np.array([pc[c][avg] for c in classes])
            worst["macro"] = max(worst["macro"], abs(m[f"macro_{avg}"] - vals[seen].mean()))
            weighted = (vals * support).sum() / support.sum() if support.sum() else math.nan
            worst["weighted"] = max(worst["weighted"], abs(m[f"weighted_{avg}"] - weighted))
        worst["acc"] = max(worst["acc"], abs(m["accuracy"] - np.trace(cm) / cm.sum()))
        recalls = np.array([pc[c]["recall"] for c in classes])[support > 0]
        worst["bal"] = max(worst["bal"], abs(m["balanced_accuracy"] - recalls.mean()))
        worst["support"] = max(worst["support"], abs(int(support.sum()) - m["n_images"]))
    _check(
        checks, "F1 = 2PR/(P+R) for every class", worst["f1"] < TOL, f"max |diff| {worst['f1']:.2e}"
    )
    _check(
        checks,
        "macro averages = unweighted mean over the classes in y_true or y_pred",
        worst["macro"] < TOL,
        f"max |diff| {worst['macro']:.2e}",
    )
    _check(
        checks,
        "weighted averages = support-weighted mean of the per-class values",
        worst["weighted"] < TOL,
        f"max |diff| {worst['weighted']:.2e}",
    )
    _check(
        checks,
        "accuracy = trace(confusion) / n",
        worst["acc"] < TOL,
        f"max |diff| {worst['acc']:.2e}",
    )
    _check(
        checks,
        "balanced accuracy = mean recall over present classes",
        worst["bal"] < TOL,
        f"max |diff| {worst['bal']:.2e}",
    )
    _check(
        checks, "supports sum to n_images", worst["support"] == 0, f"max diff {worst['support']}"
    )
    # leaderboard.csv, re-read from disk, equals metrics.json's values
    lb = pd.read_csv(leaderboard_path, keep_default_na=True)
    worst_lb = 0.0
    for r in metrics["results"]:
        row = lb[
            (lb["features"].astype(str) == r["features"])
            & (lb["head"].astype(str) == r["head"])
            & (lb["evaluation"] == r["evaluation"])
        ]
        if len(row) != 1:
            worst_lb = math.inf
            continue
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr"):
            a, b = float(row[key].iloc[0]), float(r["metrics"][key])
            if not (math.isnan(a) and math.isnan(b)):
                worst_lb = max(worst_lb, abs(a - b))
    _check(
        checks,
        "leaderboard.csv (re-read) = metrics.json",
        worst_lb < 1e-12,
        f"max |diff| {worst_lb:.2e}",
    )
    # CIs are ordered; a percentile bootstrap CI may legitimately exclude its point estimate
    # (skewed resampling distributions, few patients), so that is reported, not failed
    unordered, outside = 0, []
    for r in metrics["results"]:
        for key, ci in r["ci"].items():
            point = r["metrics"].get(key)
            if any(x is None or math.isnan(x) for x in (ci["low"], ci["high"])):
                continue
            if ci["low"] > ci["high"] + 1e-12:
                unordered += 1
            if point is None or math.isnan(point):
                continue
            if not (ci["low"] - 1e-12 <= point <= ci["high"] + 1e-12):
                outside.append(f"{r['features']}/{r['head']}/{r['evaluation']} {key}")
    _check(
        checks, "every bootstrap CI has low <= high", unordered == 0, f"{unordered} CI(s) inverted"
    )
    checks.append(
        {
            "check": "bootstrap CIs that exclude their point estimate (informational)",
            "ok": True,
            "info": True,
            "detail": (
                f"{len(outside)}: {', '.join(outside[:6])}{' ...' if len(outside) > 6 else ''}; "
                "percentile intervals can do this when the resampled metric is skewed "
                "(few patients); the interval is then a poor guide"
                if outside
                else "none"
            ),
        }
    )
    return checks


# --------------------------------------------------------------------------------------------------
# markdown


def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NaN"
    return f"{x:.{digits}f}"


def _pct(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NaN"
    return f"{100 * x:.1f}"


def _ci(r: dict, key: str, pct: bool = False) -> str:
    ci = r["ci"].get(key)
    if not ci:
        return ""
    fmt = _pct if pct else _f
    return f" [{fmt(ci['low'])}, {fmt(ci['high'])}]"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _majority_text(r: dict) -> str:
    if r["evaluation"] == "cv":
        return f"each fold predicts its training part's majority: {r['majority_class']}"
    return f"always '{r['majority_class']}', the training part's majority"


def _paper_table(r: dict, classes) -> list[str]:
    m = r["metrics"]
    pc = m["per_class"]
    cm_arr = np.asarray(m["confusion_matrix"])
    predicted = cm_arr.sum(axis=0) if cm_arr.size else np.zeros(len(classes))
    rows = []
    for j, c in enumerate(classes):
        if pc[c]["support"] == 0 and not predicted[j]:
            # neither true nor predicted here: shown as absent, as the averages leave it out
            rows.append([c, "-", "-", "-", "0 (absent)"])
        else:
            rows.append(
                [c, _pct(pc[c]["precision"]), _pct(pc[c]["recall"]), _pct(pc[c]["f1"]),
                 pc[c]["support"]]
            )  # fmt: skip
    n = m["n_images"]
    rows.append(["accuracy", "", "", _pct(m["accuracy"]), n])
    rows.append(
        ["macro avg", _pct(m["macro_precision"]), _pct(m["macro_recall"]), _pct(m["macro_f1"]), n]
    )
    rows.append(
        [
            "weighted avg",
            _pct(m["weighted_precision"]),
            _pct(m["weighted_recall"]),
            _pct(m["weighted_f1"]),
            n,
        ]
    )
    lines = _table(["class", "precision %", "recall %", "F1 %", "support"], rows)
    lines.append("")
    lines.append(
        f"Beside it: majority-class baseline {_pct(r['majority_baseline'])}% "
        f"({_majority_text(r)}), balanced accuracy {_pct(m['balanced_accuracy'])}%"
        f"{_ci(r, 'balanced_accuracy', True)}, accuracy {_pct(m['accuracy'])}%"
        f"{_ci(r, 'accuracy', True)}, macro F1 {_pct(m['macro_f1'])}%{_ci(r, 'macro_f1', True)}; "
        f"ROC-AUC one-vs-rest {_f(m['roc_auc_ovr'])}"
        f"{_ci(r, 'roc_auc_ovr')}, {m['positive_class']}-vs-rest ROC-AUC "
        f"{_f(m['roc_auc_pos_vs_rest'])}{_ci(r, 'roc_auc_pos_vs_rest')}, PR-AUC "
        f"{_f(m['pr_auc_pos_vs_rest'])}{_ci(r, 'pr_auc_pos_vs_rest')}; sensitivity "
        f"{_f(m['sensitivity'])}{_ci(r, 'sensitivity')} / specificity {_f(m['specificity'])}"
        f"{_ci(r, 'specificity')} at P({m['positive_class']}) >= {m['threshold']}. "
        f"{r['n_images']} images of {r['n_patients']} patients."
    )
    cm = m["confusion_matrix"]
    lines += ["", "Confusion matrix (rows true, columns predicted):", ""]
    lines += _table(["true \\ predicted", *classes], [[c, *cm[i]] for i, c in enumerate(classes)])
    if r.get("per_fold"):
        lines += ["", "Per fold:", ""]
        lines += _table(
            ["fold", "images", "patients", "accuracy", "balanced acc.", "macro F1", "ROC-AUC ovr"],
            [
                [
                    f["fold"],
                    f["n_images"],
                    f["n_patients"],
                    _f(f["accuracy"]),
                    _f(f["balanced_accuracy"]),
                    _f(f["macro_f1"]),
                    _f(f["roc_auc_ovr"]),
                ]
                for f in r["per_fold"]
            ],
        )
    if m["notes"]:
        lines += [""] + [f"- Note: {n}" for n in m["notes"]]
    return lines


def _markdown(config, metrics, audit, checks, figures, data_summary) -> str:
    classes = metrics["classes"]
    L = ["# featmammo run report", ""]
    L.append(
        "Every number below is recomputed from `predictions.csv` by "
        "`featmammo.report.write_report`; "
        "CIs are patient-clustered percentile bootstrap intervals "
        f"({metrics['n_boot']} resamples of patients, seed {metrics['seed']}, "
        f"{int(100 * metrics['ci_level'])}%)."
    )
    L += ["", "## Setup", ""]
    for st in config.get("stores") or []:
        L.append(f"- store: `{st.get('path')}` (fingerprint {st.get('fingerprint')})")
    for key in ("features", "heads", "classes", "cv", "test_split", "seed", "threshold"):
        if key in config:
            value = config[key]
            value = ", ".join(map(str, value)) if isinstance(value, list) else value
            L.append(f"- {key}: {value}")
    if config.get("dropped_rows"):
        L.append(f"- rows dropped by the class scheme: {config['dropped_rows']}")
    L += ["", "## Data", ""]
    if config.get("n_images_in_stores") is not None:
        n_store = config["n_images_in_stores"]
        n_excl = len(
            {e for rec in config.get("excluded_rows") or [] for e in rec.get("examples", [])}
        )
        n_missing = sum(
            rec.get("failed", 0) + rec.get("pending", 0) + rec.get("non_finite", 0)
            for rec in config.get("excluded_rows") or []
        )
        n_drop = sum((config.get("dropped_rows") or {}).values())
        used = config.get("n_images")
        L.append(
            f"Images in the store(s): {n_store}; without a usable embedding (failed, pending or "
            f"non-finite, per store and backbone): {n_missing}; dropped by the class scheme: "
            f"{n_drop}; used: {used}." + (" Details under Notes." if n_excl or n_missing else "")
        )
        L.append("")
    L += _table(
        ["part", "images", "patients", *classes],
        [
            [d["part"], d["images"], d["patients"], *[d["per_class"].get(c, 0) for c in classes]]
            for d in data_summary
        ],
    )
    L += ["", "## Leakage audit", ""]
    L.append("Recomputed from the `fold` and `patient_id` columns of predictions.csv:")
    L.append("")
    L += _table(
        [
            "features",
            "head",
            "folds",
            "CV patients",
            "test patients",
            "patients in >1 fold",
            "patients in train and test",
            "ok",
        ],
        [
            [
                a["features"],
                a["head"],
                a["n_folds"],
                a["cv_patients"],
                a["test_patients"],
                a["patients_across_folds"],
                a["patients_train_and_test"],
                "yes" if a["ok"] else "**NO**",
            ]
            for a in audit
        ],
    )
    split_audit = config.get("split_audit")
    if split_audit:
        L += ["", "Split audit of the input rows at fit time (featmammo.splits.audit):", ""]
        L.append("```json")
        L.append(json.dumps(split_audit, indent=1, default=str)[:4000])
        L.append("```")
    L += ["", "## Leaderboard", ""]
    L += _table(
        [
            "features",
            "head",
            "eval",
            "images",
            "patients",
            "majority baseline",
            "accuracy",
            "balanced accuracy",
            "macro F1",
            "ROC-AUC ovr",
            f"AUC {metrics['positive_class']}-vs-rest",
        ],
        [
            [
                r["features"],
                r["head"],
                r["evaluation"],
                r["n_images"],
                r["n_patients"],
                _f(r["majority_baseline"]),
                _f(r["metrics"]["accuracy"]) + _ci(r, "accuracy"),
                _f(r["metrics"]["balanced_accuracy"]) + _ci(r, "balanced_accuracy"),
                _f(r["metrics"]["macro_f1"]) + _ci(r, "macro_f1"),
                _f(r["metrics"]["roc_auc_ovr"]) + _ci(r, "roc_auc_ovr"),
                _f(r["metrics"]["roc_auc_pos_vs_rest"]) + _ci(r, "roc_auc_pos_vs_rest"),
            ]
            for r in metrics["results"]
        ],
    )
    if metrics["comparisons"]:
        L += ["", "## Paired comparisons (same images, same patients resampled)", ""]
        rows = []
        for c in metrics["comparisons"]:
            row = [f"{c['a']} - {c['b']}", c["head"], c["evaluation"], c["n_images"]]
            for key in ev.PAIRED_METRICS:
                d = c.get(key)
                row.append(
                    f"{_f(d['diff'])} [{_f(d['ci_low'])}, {_f(d['ci_high'])}] p={_f(d['p_value'])}"
                    if d
                    else ""
                )
            mc = c.get("mcnemar", {})
            row.append(f"b={mc.get('b')} c={mc.get('c')} p={_f(mc.get('p_value'))}")
            rows.append(row)
        L += _table(
            [
                "difference",
                "head",
                "eval",
                "images",
                "balanced accuracy diff [CI] p",
                "ROC-AUC ovr diff [CI] p",
                "McNemar exact",
            ],
            rows,
        )
        L.append("")
        L.append(
            "p-values are not corrected for multiple comparisons; b = images only the first is "
            "right "
            "on, c = images only the second is right on."
        )
    L += ["", "## Per-model tables (the paper's layout, with what it leaves out beside it)", ""]
    for r in metrics["results"]:
        L += [f"### {r['features']} / {r['head']} / {r['evaluation']}", ""]
        L += _paper_table(r, classes)
        L.append("")
    L += ["## Internal consistency", ""]
    L += _table(
        ["check", "result", "detail"],
        [
            [
                c["check"],
                "note" if c.get("info") else "pass" if c["ok"] else "**FAIL**",
                c["detail"],
            ]
            for c in checks
        ],
    )
    if figures:
        L += ["", "## Figures", ""]
        for name, path in figures.items():
            L.append(f"![{name}]({path})")
    notes = config.get("notes") or []
    if notes:
        L += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------------------------------
# figures


def _figures(run_dir: Path, predictions, metrics, classes, max_images: int) -> tuple[dict, list]:
    from . import plots

    fig_dir = run_dir / FIGURES
    fig_dir.mkdir(exist_ok=True)
    figures, notes = {}, []
    positive = metrics["positive_class"]
    pcol = f"p_{positive}"
    for evaluation in ("cv", "test"):
        results = [r for r in metrics["results"] if r["evaluation"] == evaluation]
        if not results:
            continue
        label = "pooled out-of-fold CV" if evaluation == "cv" else "held-out test"
        panels = [
            (f"{r['features']} / {r['head']} ({label})", r["metrics"]["confusion_matrix"])
            for r in results
        ]
        figures[f"confusion matrices, {label}"] = plots.confusion_matrices(
            panels, classes, fig_dir / f"confusion_{evaluation}.png"
        )
        curves = []
        for r in results:
            g = predictions[
                (predictions["features"] == r["features"]) & (predictions["head"] == r["head"])
            ]
            fold = g["fold"].astype(str)
            g = g[fold == ev.TEST_FOLD] if evaluation == "test" else g[fold != ev.TEST_FOLD]
            y = g["y_true"].astype(str).to_numpy() == positive
            auc = r["metrics"]["roc_auc_pos_vs_rest"]
            curves.append((f"{r['features']} / {r['head']} (AUC {_f(auc)})", y, g[pcol].to_numpy()))
        figures[f"ROC, {label}"] = plots.roc_curves(
            curves, positive, fig_dir / f"roc_{evaluation}.png"
        )
        figures[f"precision-recall, {label}"] = plots.pr_curves(
            curves, positive, fig_dir / f"pr_{evaluation}.png"
        )
        figures[f"calibration, {label}"] = plots.calibration(
            curves, positive, fig_dir / f"calibration_{evaluation}.png"
        )
    grid, grid_notes = _test_grid(run_dir, predictions, metrics, classes, max_images)
    notes += grid_notes
    if grid is not None:
        figures["test images (best model by balanced accuracy)"] = grid
    return {k: str(Path(v).relative_to(run_dir)) for k, v in figures.items()}, notes


def _test_grid(run_dir: Path, predictions, metrics, classes, max_images: int):
    if max_images <= 0:
        return None, []
    images_csv = run_dir / IMAGES
    tests = [r for r in metrics["results"] if r["evaluation"] == "test"]
    if not tests:
        return None, ["no held-out test predictions: no test-image grid"]
    if not images_csv.exists():
        return None, [f"{IMAGES} not found: no test-image grid"]
    from . import plots

    paths = pd.read_csv(images_csv, dtype=str, keep_default_na=False)
    path_of = {i: p for i, p in zip(paths["image_id"], paths["path"], strict=False) if p}
    if not path_of:
        return None, [f"{IMAGES} records no image paths (e.g. hashed ids): no test-image grid"]
    best = max(tests, key=lambda r: np.nan_to_num(r["metrics"]["balanced_accuracy"], nan=-1))
    g = predictions[
        (predictions["features"] == best["features"])
        & (predictions["head"] == best["head"])
        & (predictions["fold"].astype(str) == ev.TEST_FOLD)
    ]
    # a seeded pick that shows every true class, right and wrong predictions
    rng = np.random.default_rng(metrics["seed"])
    order = rng.permutation(len(g))
    g = g.iloc[order]
    per_class = max(1, max_images // len(classes))
    picked = pd.concat([g[g["y_true"] == c].head(per_class) for c in classes])
    if len(picked) < max_images:
        rest = g[~g["image_id"].isin(picked["image_id"])].head(max_images - len(picked))
        picked = pd.concat([picked, rest])
    notes, items = [], []
    from .io import read_image

    for _, row in picked.head(max_images).iterrows():
        path = path_of.get(row["image_id"], "")
        image = None
        if path:
            try:
                img = read_image(path)
                image = plots.thumbnail(img.pixels, img.max_value)
            except Exception as exc:  # noqa: BLE001 - any unreadable image is skipped with a note
                notes.append(f"test-image grid: {row['image_id']} ({path}) skipped: {exc}")
        else:
            notes.append(f"test-image grid: no path recorded for {row['image_id']}")
        p = float(row[f"p_{row['y_pred']}"])
        items.append(
            {
                "image": image,
                "caption": f"{row['image_id'][:24]}\ntrue {row['y_true']} / pred {row['y_pred']}"
                f"\nP({row['y_pred']})={p:.2f}",
                "correct": row["y_true"] == row["y_pred"],
            }
        )
    path = plots.image_grid(
        items,
        run_dir / FIGURES / "test_images.png",
        title=f"held-out test, {best['features']} / {best['head']}",
    )
    return path, notes


# --------------------------------------------------------------------------------------------------
# entry point


def _data_summary(predictions: pd.DataFrame, classes) -> list[dict]:
    """Images/patients/classes per part, counted on unique image ids over all models."""
    out = []
    fold = predictions["fold"].astype(str)
    for part, mask in (("training (CV)", fold != ev.TEST_FOLD), ("test", fold == ev.TEST_FOLD)):
        rows = predictions[mask].drop_duplicates("image_id")
        if not len(rows):
            continue
        counts = rows["y_true"].value_counts()
        out.append(
            {
                "part": part,
                "images": len(rows),
                "patients": int(rows["patient_id"].nunique()),
                "per_class": {c: int(counts.get(c, 0)) for c in classes},
            }
        )
    return out


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def read_config(run_dir) -> dict:
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise ConfigError(f"{path}: missing (it records the classes of the run)")
    return json.loads(path.read_text())


def write_report(
    run_dir,
    *,
    n_boot: int | None = None,
    seed: int | None = None,
    threshold: float | None = None,
    figures: bool = True,
    max_images: int = 16,
) -> Path:
    """Recompute leaderboard.csv, metrics.json, report.md and figures from predictions.csv.

    ``config.json`` supplies the classes and the defaults of ``n_boot``, ``seed`` and ``threshold``
    (the arguments override them). Returns the path of report.md.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    classes = config.get("classes")
    if not classes:
        raise ConfigError(f"{run_dir / CONFIG}: no 'classes'")
    n_boot = int(config.get("n_boot", 1000) if n_boot is None else n_boot)
    seed = int(config.get("seed", 0) if seed is None else seed)
    threshold = float(config.get("threshold", 0.5) if threshold is None else threshold)
    pred_path = run_dir / PREDICTIONS
    if not pred_path.exists():
        raise ConfigError(f"{pred_path}: missing; nothing to report")
    predictions = ev.read_predictions(pred_path)
    if predictions.empty:
        raise ConfigError(f"{pred_path}: no rows")
    leaderboard, metrics = ev.evaluate_predictions(
        predictions,
        classes,
        n_boot=n_boot,
        seed=seed,
        threshold=threshold,
        train_counts=config.get("train_class_counts"),
    )
    lb_path = run_dir / LEADERBOARD
    leaderboard.to_csv(lb_path, index=False)
    audit = fold_audit(predictions)
    for a in audit:
        if not a["ok"]:
            log.warning(
                "leakage audit %s/%s: %d patient(s) in more than one fold, %d in train and test",
                a["features"],
                a["head"],
                a["patients_across_folds"],
                a["patients_train_and_test"],
            )
    checks = consistency_checks(predictions, metrics, lb_path, classes)
    for c in checks:
        if not c["ok"]:
            log.warning("consistency check failed: %s (%s)", c["check"], c["detail"])
    fig_paths, fig_notes = (
        _figures(run_dir, predictions, metrics, classes, max_images) if figures else ({}, [])
    )
    metrics["audit"] = audit
    metrics["consistency"] = checks
    metrics["data"] = _data_summary(predictions, classes)
    metrics["figures"] = fig_paths
    metrics["notes"] = fig_notes
    (run_dir / METRICS).write_text(json.dumps(_jsonable(metrics), indent=1, allow_nan=False))
    cfg = dict(config, notes=[*(config.get("notes") or []), *fig_notes])
    text = _markdown(cfg, metrics, audit, checks, fig_paths, metrics["data"])
    out = run_dir / REPORT
    out.write_text(text)
    log.info("report written: %s", out)
    return out
