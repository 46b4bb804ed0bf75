"""report.md: the markdown text of a run's report."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from .. import evaluate as ev
from .caveats import EVAL_LABEL, caveat_lines, source_statement
from .checks import _num
from .files import TUNING


def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NaN"
    return f"{x:.{digits}f}"


def _signed(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NaN"
    return f"{x:+.{digits}f}"


def _pct(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NaN"
    return f"{100 * x:.1f}"


def _ci(r: dict, key: str, pct: bool = False, *, why: bool = False) -> str:
    """' [low, high]', or where the CI rule withholds it ' (CI n/a)' / ' (CI n/a (why))'."""
    if r.get("ci_note"):
        return f" (CI {r['ci_note']})" if why else " (CI n/a)"
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
    if r.get("majority_class") is None:
        return r.get("majority_source", "training counts unknown")
    if r["evaluation"] == "cv" and r.get("per_fold") and len(r["per_fold"]) >= 2:
        return f"each fold predicts its training part's majority: {r['majority_class']}"
    return f"always '{r['majority_class']}', from {r.get('majority_source', 'the training part')}"


def _name(r: dict) -> str:
    return f"{r['features']} / {r['head']}" + (" (optimistic)" if r.get("optimistic") else "")


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
    pos = m["positive_class"]
    lines.append(
        f"Beside it: majority-class baseline {_pct(r['majority_baseline'])}% "
        f"({_majority_text(r)}), balanced accuracy {_pct(m['balanced_accuracy'])}%"
        f"{_ci(r, 'balanced_accuracy', True, why=True)}, accuracy {_pct(m['accuracy'])}%"
        f"{_ci(r, 'accuracy', True)}, macro F1 {_pct(m['macro_f1'])}%{_ci(r, 'macro_f1', True)}; "
        f"ROC-AUC one-vs-rest {_f(m['roc_auc_ovr'])}"
        f"{_ci(r, 'roc_auc_ovr')}, {pos}-vs-rest ROC-AUC "
        f"{_f(m['roc_auc_pos_vs_rest'])}{_ci(r, 'roc_auc_pos_vs_rest')}, PR-AUC "
        f"{_f(m['pr_auc_pos_vs_rest'])}{_ci(r, 'pr_auc_pos_vs_rest')}; sensitivity "
        f"{_f(m['sensitivity'])}{_ci(r, 'sensitivity')} / specificity {_f(m['specificity'])}"
        f"{_ci(r, 'specificity')} (argmax rule, as the confusion matrix below). "
        f"{r['n_images']} images of {r['n_patients']} patients."
    )
    if not math.isclose(float(m["threshold"]), 0.5):
        lines.append(
            f"Second operating point, P({pos}) >= {m['threshold']} (used nowhere else): "
            f"sensitivity {_f(m.get('sensitivity_at_threshold'))} / specificity "
            f"{_f(m.get('specificity_at_threshold'))}."
        )
    cm = m["confusion_matrix"]
    lines += ["", "Confusion matrix (rows true, columns predicted = argmax):", ""]
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


def _diff_cell(c: dict, key: str) -> str:
    d = c.get(key)
    if not d:
        return ""
    if c.get("ci_note"):
        return f"{_signed(d['diff'])} (CI n/a)"
    return f"{_signed(d['diff'])} [{_signed(d['ci_low'])}, {_signed(d['ci_high'])}]"


def _p_cell(d: dict | None) -> str:
    if not d or d.get("p_value") is None or math.isnan(_num(d.get("p_value"))):
        return "n/a"
    return f"{_p(d.get('p_holm'))} (raw {_p(d['p_value'])})"


def _p(x) -> str:
    x = _num(x)
    return "NaN" if math.isnan(x) else "<0.001" if x < 0.001 else f"{x:.3f}"


def _answer(metrics: dict, compare_to: str) -> list[str]:
    """'Hybrid vs each backbone', per head: paired patient-clustered bootstrap differences."""
    L = [f"## The answer: {compare_to} vs each backbone", ""]
    comps = metrics["comparisons"]
    if not comps:
        have = sorted({r["features"] for r in metrics["results"]})
        L.append(
            f"Nothing to compare: this run has no '{compare_to}' features set evaluated beside "
            f"another one on the same images (features: {', '.join(map(str, have))})."
        )
        return L + [""]
    L.append(
        f"Difference {compare_to} minus the other features set, same head, same images: the "
        f"paired, patient-clustered bootstrap ({metrics['n_boot']} resamples of patients; both "
        f"models scored on each resample) gives the {int(100 * metrics['ci_level'])}% CI. "
        "p-values are **Holm-adjusted** across every test of one evaluation (all comparisons x "
        "heads x {balanced accuracy, ROC-AUC, McNemar}); the raw value is in brackets. McNemar "
        "is the clustered test (Durkalski 2003: patients are the clusters). A positive "
        f"difference favours {compare_to}."
    )
    for evaluation in ("test", "cv"):
        sel = [c for c in comps if c["evaluation"] == evaluation]
        if not sel:
            continue
        L += ["", f"### {EVAL_LABEL[evaluation]}", ""]
        rows = []
        for c in sorted(sel, key=lambda c: (str(c["head"]), str(c["b"]))):
            rows.append(
                [
                    c["head"],
                    f"{c['a']} vs {c['b']}" + (" (optimistic)" if c.get("optimistic") else ""),
                    f"{c['n_images']} ({c['n_patients']})",
                    _diff_cell(c, "balanced_accuracy"),
                    _p_cell(c.get("balanced_accuracy")),
                    _diff_cell(c, "roc_auc_ovr"),
                    _p_cell(c.get("roc_auc_ovr")),
                    _p_cell(c.get("mcnemar")),
                ]
            )
        L += _table(
            [
                "head",
                "comparison",
                "images (patients)",
                "Δ balanced accuracy [CI]",
                "p Holm",
                "Δ ROC-AUC ovr [CI]",
                "p Holm",
                "clustered McNemar p Holm",
            ],
            rows,
        )
        L.append("")
        withheld = sorted(
            {c["ci_note"].removeprefix("n/a (").removesuffix(")") for c in sel if c.get("ci_note")}
        )
        if withheld:
            L.append(
                f"- CI and p n/a: {'; '.join(withheld)} on the shared images, so no interval or "
                "test is given."
            )
        for key, label in (("balanced_accuracy", "Balanced accuracy"), ("roc_auc_ovr", "ROC-AUC")):
            better, worse, unclear, untested = _verdict(sel, key)
            L.append(
                f"- {label}, {EVAL_LABEL[evaluation]}: {compare_to} better in {better}, worse in "
                f"{worse}, no difference shown in {unclear}"
                + (f", not tested (too few patients) in {untested}" if untested else "")
                + f" of {len(sel)} comparison(s) (Holm-adjusted p < 0.05; 'no difference shown' "
                "is not 'equal')."
            )
    return L + [""]


def _verdict(comparisons: list[dict], key: str, alpha: float = 0.05) -> tuple[int, ...]:
    """(better, worse, no difference shown, not tested) at Holm-adjusted p < ``alpha``."""
    better = worse = unclear = untested = 0
    for c in comparisons:
        d = c.get(key) or {}
        p = _num(d.get("p_holm"))
        if c.get("ci_note") or math.isnan(p):
            untested += 1
        elif p < alpha and d["diff"] != 0:
            better += d["diff"] > 0
            worse += d["diff"] < 0
        else:
            unclear += 1
    return better, worse, unclear, untested


def _params_text(params: str) -> str:
    try:
        d = json.loads(params)
    except (TypeError, ValueError):
        return str(params)
    if not isinstance(d, dict):
        return str(d)
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "(defaults)"


def _tuning_section(config: dict, tuning: pd.DataFrame | None) -> list[str]:
    if tuning is None:
        if config.get("tune") == "grid":
            return ["## Tuning", "", f"config.json says tune=grid but {TUNING} is missing.", ""]
        if config.get("tune"):
            return ["## Tuning", "", f"tune={config['tune']}: fixed head defaults, no tuning.", ""]
        return []
    chosen = tuning[tuning["chosen"].astype(str).str.lower().isin(("true", "1"))]
    L = ["## Tuning (chosen hyperparameters, from tuning.csv)", ""]
    L.append(
        f"Nested patient-grouped CV: every head tuned inside each outer fold by an inner CV "
        f"(inner folds: {config.get('inner_cv', '?')}, metric: "
        f"{config.get('tune_metric', 'balanced_accuracy')}); fold `test` = the final refit on the "
        f"whole training part. {len(tuning)} grid points evaluated; all are in `{TUNING}`."
    )
    L.append("")

    def fold_key(v):
        return (1, 0) if str(v) == "test" else (0, int(v) if str(v).isdigit() else 0)

    rows = []
    for (features, head), g in chosen.groupby(["features", "head"], sort=False):
        g = g.sort_values("fold", key=lambda s: s.map(fold_key))
        cells = [
            f"{fold}: {_params_text(params)} ({_f(_num(score))})"
            for fold, params, score in zip(g["fold"], g["params"], g["inner_score"], strict=True)
        ]
        rows.append([features, head, "; ".join(cells)])
    L += _table(["features", "head", "fold: chosen params (inner score)"], rows)
    return L + [""]


def _leaderboard_rows(results: list[dict], positive: str) -> list[list]:
    return [
        [
            r["features"],
            r["head"],
            r["evaluation"],
            "" if r.get("rank") is None else r["rank"],
            r["n_images"],
            r["n_patients"],
            _f(r["majority_baseline"]),
            _f(r["metrics"]["accuracy"]) + _ci(r, "accuracy"),
            _f(r["metrics"]["balanced_accuracy"]) + _ci(r, "balanced_accuracy"),
            _f(r["metrics"]["macro_f1"]) + _ci(r, "macro_f1"),
            _f(r["metrics"]["roc_auc_ovr"]) + _ci(r, "roc_auc_ovr"),
            _f(r["metrics"]["roc_auc_pos_vs_rest"]) + _ci(r, "roc_auc_pos_vs_rest"),
            "**yes**" if r.get("optimistic") else "",
            r.get("ci_note") or "",
        ]
        for r in results
    ]


def _markdown(config, metrics, audit, checks, figures, data_summary, tuning=None) -> str:
    classes = metrics["classes"]
    compare_to = metrics.get("compare_to", "hybrid")
    L = ["# featmammo run report", ""]
    L.append(
        "**Read this first** (also in metrics.json `caveats`/`warnings` and under every figure):"
    )
    L.append("")
    L += [f"- {line}" for line in caveat_lines(config)]
    L.append(f"- {source_statement(config)[0]}")
    L += [f"- Warning: {w}" for w in metrics.get("warnings") or []]
    if config.get("notes"):
        L.append(f"- The run recorded {len(config['notes'])} note(s): see Notes at the end.")
    L.append("")
    L.append(
        "Every number below is recomputed from `predictions.csv` by "
        "`featmammo.report.write_report`; "
        "CIs are patient-clustered percentile bootstrap intervals "
        f"({metrics['n_boot']} resamples of patients, seed {metrics['seed']}, "
        f"{int(100 * metrics['ci_level'])}%), given only where every class has at least "
        f"{metrics['min_patients_per_class']} patients (fewer clusters make an interval that "
        "looks precise and is not). Decision rule: "
        f"{metrics['decision_rule']}."
    )
    L.append("")
    L += _answer(metrics, compare_to)
    L += ["## Setup", ""]
    for st in config.get("stores") or []:
        L.append(f"- store: `{st.get('path')}` (fingerprint {st.get('fingerprint')})")
    for key in (
        "command", "features", "heads", "classes", "cv", "test_split", "tune", "tune_metric",
        "inner_cv", "seed", "threshold",
    ):  # fmt: skip
        if config.get(key) is not None:  # --tune none records no tune_metric: say nothing
            value = config[key]
            value = ", ".join(map(str, value)) if isinstance(value, list) else value
            L.append(f"- {key}: {value}")
    grid = config.get("tune_grid")
    if config.get("tune") == "grid" and isinstance(grid, dict):
        heads = set(config.get("heads") or grid)
        shown = "; ".join(
            f"{head}: " + ", ".join(f"{p} {v}" for p, v in params.items())
            for head, params in grid.items()
            if head in heads
        )
        L.append(f"- tune_grid (the grid searched): {shown}")
    if config.get("scaling"):
        L.append(f"- scaling (every features set): {config['scaling']}")
    if config.get("dropped_rows"):
        L.append(f"- rows dropped by the class scheme: {config['dropped_rows']}")
    L.append("")
    L += _tuning_section(config, tuning)
    L += ["## Data", ""]
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
    if config.get("train_class_counts"):
        counts = ", ".join(f"{c} {n}" for c, n in config["train_class_counts"].items())
        L += ["", f"Training class counts (the majority baselines' source): {counts}."]
    L += ["", "## Leakage and source audit", ""]
    L.append(source_statement(config)[0])
    L.append("")
    L.append("Recomputed from the `fold` and `patient_id` columns of predictions.csv:")
    L.append("")
    with_val = any(a["validation_patients"] for a in audit)
    L += _table(
        [
            "features",
            "head",
            "folds",
            "CV patients",
            *(["validation patients"] if with_val else []),
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
                *([a["validation_patients"]] if with_val else []),
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
    header = [
        "features",
        "head",
        "eval",
        "rank",
        "images",
        "patients",
        "majority baseline",
        "accuracy",
        "balanced accuracy",
        "macro F1",
        "ROC-AUC ovr",
        f"AUC {metrics['positive_class']}-vs-rest",
        "optimistic",
        "CI",
    ]
    honest = [r for r in metrics["results"] if r["evaluation"] in ev.HONEST_EVALUATIONS]
    validation = [r for r in metrics["results"] if r["evaluation"] == "validation"]
    L += ["", "## Leaderboard", ""]
    L.append(
        "Ranked by balanced accuracy within each evaluation (held-out test first). Rows marked "
        "(optimistic) were evaluated on images their embeddings trained on."
    )
    L.append("")
    L += _table(header, _leaderboard_rows(honest, metrics["positive_class"]))
    if validation:
        L += ["", "## HybridNet validation rows (not an estimate)", ""]
        L.append(
            "These images chose the stopping epoch (early stopping), so their numbers are "
            "optimistic: they are not ranked, enter no comparison, and are not pooled "
            "out-of-fold CV. Their majority baseline comes from the training class counts."
        )
        L.append("")
        L += _table(header, _leaderboard_rows(validation, metrics["positive_class"]))
    L += ["", "## Per-model tables (the paper's layout, with what it leaves out beside it)", ""]
    for r in metrics["results"]:
        L += [f"### {_name(r)} / {r['evaluation']}", "", f"*{EVAL_LABEL[r['evaluation']]}*", ""]
        L += _paper_table(r, classes)
        L.append("")
    L += ["## Internal consistency (each figure recomputed a second way)", ""]
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
    notes = metrics.get("notes") or []
    if notes:
        L += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------------------------------
# figures
