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
    names = m.get("screening_metrics") or []
    if names:
        lines.append(
            f"Screening ({pos} vs rest): "
            + ", ".join(f"{k} {_f(m.get(k))}{_ci(r, k)}" for k in names)
            + "."
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


def _p(x) -> str:
    x = _num(x)
    return "NaN" if math.isnan(x) else "<0.001" if x < 0.001 else f"{x:.3f}"


def _cmp_cell(c: dict | None) -> str:
    """'+0.050 [-0.010, +0.110]' (or '+0.050' without an interval)."""
    if not c:
        return ""
    diff, low, high = _num(c.get("diff")), _num(c.get("ci_low")), _num(c.get("ci_high"))
    if math.isnan(low) or math.isnan(high):
        return _signed(diff)
    return f"{_signed(diff)} [{_signed(low)}, {_signed(high)}]"


def _cmp_p(c: dict | None) -> str:
    if not c or math.isnan(_num(c.get("p_raw"))):
        return "n/a"
    if math.isnan(_num(c.get("p_holm"))):
        return f"not tested (raw {_p(c['p_raw'])})"
    return f"{_p(c['p_holm'])} (raw {_p(c['p_raw'])})"


def _why_untested(c: dict) -> str:
    method = str(c.get("method", ""))
    why = method.split("out of the family: ", 1)[1] if "out of the family: " in method else ""
    return why.removeprefix("not tested: ")


#: what the report calls each metric of comparisons.csv
_CMP_LABEL = {
    "balanced_accuracy": "Balanced accuracy",
    "roc_auc_ovr": "ROC-AUC",
    "accuracy_mcnemar": "Accuracy (clustered McNemar)",
}
UNADJUSTED = (
    "intervals are unadjusted 95% intervals of the same test as the raw p (each excludes 0 "
    "exactly when its raw p < 0.05); the verdict uses the Holm-adjusted p, so an interval may "
    "exclude 0 where no difference is shown"
)


def answer_title(pairs: list, features=()) -> str:
    """'hybrid vs each backbone' when one fused set is compared with every single one of the run,
    else the pairs listed."""
    if not pairs:
        return "paired comparisons"
    firsts = {a for a, _ in pairs}
    singles = [f for f in features if f not in firsts and f != "hybrid" and "+" not in f]
    if len(firsts) == 1 and sorted(b for _, b in pairs) == sorted(singles):
        return f"{next(iter(firsts))} vs each backbone"
    shown = "; ".join(f"{a} vs {b}" for a, b in pairs[:6])
    return shown + (f" (+{len(pairs) - 6} more)" if len(pairs) > 6 else "")


def _answer(metrics: dict) -> list[str]:
    """The comparisons of comparisons.csv, per level and evaluation, with the verdict counts."""
    cfg = metrics.get("comparisons_config") or {}
    pairs = [tuple(p) for p in cfg.get("pairs") or []]
    features = [str(f) for f in dict.fromkeys(r["features"] for r in metrics["results"])]
    L = [f"## The answer: {answer_title(pairs, features)}", ""]
    comps = metrics.get("comparisons") or []
    if not comps:
        have = sorted({str(r["features"]) for r in metrics["results"]})
        L.append(
            "Nothing to compare: this run has no pair of features sets evaluated side by side "
            f"on the same images (features: {', '.join(have)}; compare any two with "
            "`featmammo fit --compare A:B`)."
        )
        return L + [""]
    L.append(
        "Difference A minus B (same head, same images; a positive difference favours A), from "
        "`comparisons.csv`. Held-out test: the paired, patient-clustered bootstrap "
        f"({metrics['n_boot']} resamples of patients; both models scored on each), a t test on "
        "its standard error: it asks whether *these two fitted models* differ. CV: the "
        "corrected resampled t test over the folds (Nadeau & Bengio 2003), which counts the "
        "variation between training sets that the pooled out-of-fold rows hide (pooled, the "
        "bootstrap rejected a true null 2-3x too often: benchmarks/null_calibration.py); the CV "
        "difference is the mean per-fold difference. p-values are **Holm-adjusted** per "
        "evaluation and level (balanced accuracy and ROC-AUC one family; the clustered McNemar "
        "test, Durkalski 2003 with patients as clusters, its own family); the raw value is in "
        f"brackets. Rows marked 'not tested' stay out of every family. Note: {UNADJUSTED}."
    )
    levels = list(dict.fromkeys(c["level"] for c in comps))
    for level in levels:
        for evaluation in ("test", "cv"):
            sel = [c for c in comps if c["evaluation"] == evaluation and c["level"] == level]
            if not sel:
                continue
            label = "CV folds" if evaluation == "cv" else EVAL_LABEL[evaluation]
            where = label + ("" if level == "image" else f", {level} level")
            unit = {"image": "images", "breast": "breasts", "exam": "exams"}.get(level, level)
            L += ["", f"### {where}", ""]
            by_key: dict = {}
            for c in sel:
                key = (str(c["head"]), str(c["features_a"]), str(c["features_b"]))
                by_key.setdefault(key, {})[c["metric"]] = c
            rows = []
            optimistic = set(metrics.get("optimistic_features") or ())
            for (head, a, b), cells in by_key.items():
                any_c = next(iter(cells.values()))
                mc = cells.get("accuracy_mcnemar")
                flag = " (optimistic)" if {a, b} & optimistic else ""
                rows.append([
                    head, f"{a} vs {b}{flag}", f"{any_c['n_images']} ({any_c['n_patients']})",
                    _cmp_cell(cells.get("balanced_accuracy")),
                    _cmp_p(cells.get("balanced_accuracy")),
                    _cmp_cell(cells.get("roc_auc_ovr")), _cmp_p(cells.get("roc_auc_ovr")),
                    *([_cmp_p(mc)] if evaluation == "test" else []),
                ])  # fmt: skip
            L += _table(
                [
                    "head", "comparison", f"{unit} (patients)", "Δ balanced accuracy [CI]",
                    "p Holm", "Δ ROC-AUC ovr [CI]", "p Holm",
                    *(["clustered McNemar p Holm"] if evaluation == "test" else []),
                ],
                rows,
            )  # fmt: skip
            L.append("")
            untested = sorted({_why_untested(c) for c in sel if _why_untested(c)})
            for why in untested[:6]:
                L.append(f"- Not tested: {why}.")
            firsts = {str(c["features_a"]) for c in sel}
            a_name = next(iter(firsts)) if len(firsts) == 1 else "A"
            table = pd.DataFrame(sel)
            for metric, label in _CMP_LABEL.items():
                if metric not in set(table["metric"]):
                    continue
                v = ev.comparisons.verdicts(table, metric)
                L.append(
                    f"- {label}, {where}: {a_name} better in {v['better']}, worse in "
                    f"{v['worse']}, no difference shown in {v['unclear']}"
                    + (f", not tested in {v['not_tested']}" if v["not_tested"] else "")
                    + f" of {v['total']} comparison(s) (Holm-adjusted p < 0.05; 'no difference "
                    "shown' is not 'equal'; intervals unadjusted)."
                )
    return L + [""]


def _params_text(params: str) -> str:
    try:
        d = json.loads(params)
    except (TypeError, ValueError):
        return str(params)
    if not isinstance(d, dict):
        return str(d)
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "(defaults)"


def _untuned(tuning: pd.DataFrame) -> pd.DataFrame:
    """Chosen rows of folds that ran untuned (inner CV impossible): a ``note`` starting with
    ``untuned``, or (runs before the note) params ``{}`` with a NaN inner score."""
    chosen = tuning[tuning["chosen"].astype(str).str.lower().isin(("true", "1"))]
    note = chosen["note"].astype(str).str.strip().str.lower()
    score = pd.to_numeric(chosen["inner_score"], errors="coerce")
    legacy = (chosen["params"].astype(str).str.strip() == "{}") & score.isna()
    return chosen[note.str.startswith("untuned") | (legacy & (note == ""))]


def tuning_notes(config: dict, tuning: pd.DataFrame | None) -> list[str]:
    """What deviated from plain nested tuning (tuning.csv ``note``): untuned outer folds, dropped
    grid points, skipped early stopping, all-NaN grids; one line each for "Read this first"."""
    if tuning is None or tuning.empty:
        return []
    out = []
    untuned = _untuned(tuning)
    if len(untuned):
        folds = sorted({str(f) for f in untuned["fold"]}, key=lambda v: (v == "test", v))
        why = next((n for n in untuned["note"].astype(str) if n.strip()), "")
        why = why.split(":", 1)[1].strip() if ":" in why else "the inner CV was impossible"
        cv_folds = [f for f in folds if f != "test"]
        out.append(
            f"untuned folds: {len(untuned)} features x head x fold fit(s) ran at the head's "
            f"defaults, untuned ({why}); fold(s) {', '.join(folds)}"
            + (
                "; the CV estimate of those folds is of an untuned procedure while the final "
                "model was tuned"
                if cv_folds and "test" not in folds
                else ""
            )
        )
    kinds: dict = {}
    for n in tuning["note"].astype(str):
        for part in n.split(";"):
            part = part.strip()
            kind = part.split(":", 1)[0].strip()
            # "untuned" has its own line above; "pruned" and "halving" are successive halving
            # working as documented (tuning.EVENT_KINDS lists the events a reader must see)
            if part and kind.lower() not in ("untuned", "pruned", "halving"):
                kinds.setdefault(kind, []).append(part)
    for kind, items in kinds.items():
        out.append(f"{kind} in {len(items)} grid row(s) of {TUNING} (e.g. {items[0]})")
    return out


def _halving_statement(tuning: pd.DataFrame) -> str:
    """How successive halving ran (tuning.csv notes ``pruned`` / ``halving``), "" when it did
    not: part of the method statement, not a deviation."""
    kinds = tuning["note"].astype(str).str.split(":", n=1).str[0].str.strip().str.lower()
    n_pruned, n_lone = int((kinds == "pruned").sum()), int((kinds == "halving").sum())
    if not n_pruned and not n_lone:
        return ""
    heads = sorted(set(tuning.loc[kinds.isin(["pruned", "halving"]), "head"].astype(str)))
    text = (
        f"Successive halving ({', '.join(heads)}): every grid point fitted on inner fold 1, the "
        f"better half on the other inner folds; {n_pruned} grid row(s) pruned after inner fold 1 "
        "(inner score empty)"
    )
    if n_lone:
        text += (
            f"; in {n_lone} tuning(s) one point was left after inner fold 1 and was chosen there "
            "(its inner score is that fold's)"
        )
    return text + "."


def _tuning_section(config: dict, tuning: pd.DataFrame | None) -> list[str]:
    if tuning is None:
        if config.get("tune") == "grid":
            return ["## Tuning", "", f"config.json says tune=grid but {TUNING} is missing.", ""]
        if config.get("tune"):
            return ["## Tuning", "", f"tune={config['tune']}: fixed head defaults, no tuning.", ""]
        return []
    chosen = tuning[tuning["chosen"].astype(str).str.lower().isin(("true", "1"))]
    L = ["## Tuning (chosen hyperparameters, from tuning.csv)", ""]
    untuned = _untuned(tuning)
    inner = (
        f"(inner folds: {config.get('inner_cv', '?')}, metric: "
        f"{config.get('tune_metric', 'balanced_accuracy')})"
    )
    if len(untuned):
        where = sorted(
            {
                f"{f}/{h}/{d}"
                for f, h, d in zip(
                    untuned["features"], untuned["head"], untuned["fold"], strict=True
                )
            }
        )
        L.append(
            f"Nested patient-grouped CV: heads tuned inside each outer fold by an inner CV "
            f"{inner}, **except {len(untuned)} fit(s) where the inner CV was impossible and the "
            f"head ran at its defaults, untuned** ({', '.join(where[:8])}"
            f"{' ...' if len(where) > 8 else ''}); fold `test` = the final refit on the whole "
            f"training part. {len(tuning)} grid points evaluated; all are in `{TUNING}`."
        )  # fmt: skip
    else:
        L.append(
            f"Nested patient-grouped CV: every head tuned inside each outer fold by an inner CV "
            f"{inner}; fold `test` = the final refit on the whole training part. "
            f"{len(tuning)} grid points evaluated; all are in `{TUNING}`."
        )
    halving = _halving_statement(tuning)
    if halving:
        L.append(halving)
    for line in tuning_notes(config, tuning):
        if not line.startswith("untuned"):
            L.append(f"Deviation: {line}.")
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


def _screening_cells(r: dict, names) -> list[str]:
    return [_f(r["metrics"].get(k)) + _ci(r, k) for k in names]


def _leaderboard_rows(results: list[dict], positive: str, screening=()) -> list[list]:
    return [
        [
            r["features"],
            r["head"],
            r["evaluation"],
            r.get("level", "image"),
            "" if r.get("rank") is None else r["rank"],
            r["n_images"],
            r["n_patients"],
            _f(r["majority_baseline"]),
            _f(r["metrics"]["accuracy"]) + _ci(r, "accuracy"),
            _f(r["metrics"]["balanced_accuracy"]) + _ci(r, "balanced_accuracy"),
            _f(r["metrics"]["macro_f1"]) + _ci(r, "macro_f1"),
            _f(r["metrics"]["roc_auc_ovr"]) + _ci(r, "roc_auc_ovr"),
            _f(r["metrics"]["roc_auc_pos_vs_rest"]) + _ci(r, "roc_auc_pos_vs_rest"),
            *_screening_cells(r, screening),
            "**yes**" if r.get("optimistic") else "",
            f"**{r['constant_predictions']}**" if r.get("constant_predictions") else "",
            r.get("ci_note") or "",
        ]
        for r in results
    ]


def _markdown(config, metrics, audit, checks, figures, data_summary, tuning=None) -> str:
    classes = metrics["classes"]
    screening = metrics.get("screening_metrics") or []
    L = ["# featmammo run report", ""]
    L.append(
        "**Read this first** (also in metrics.json `caveats`/`warnings` and under every figure):"
    )
    L.append("")
    L += [f"- {line}" for line in caveat_lines(config)]
    L.append(f"- {source_statement(config)[0]}")
    L += [f"- Warning: {w}" for w in metrics.get("warnings") or []]
    L += [f"- Tuning: {t}" for t in metrics.get("tuning_notes") or []]
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
        f"{metrics['decision_rule']}. Ranking: {metrics.get('ranking', ev.RANKING)}."
    )
    if len(metrics.get("levels") or []) > 1:
        L.append("")
        L.append(
            f"Levels: {', '.join(metrics['levels'])}. A breast (patient, exam, side) scores the "
            + ("mean of its views' probabilities"
               if metrics.get("aggregate", "mean") == "mean"
               else "probabilities of its most suspicious view (highest "
               f"P({metrics['positive_class']}))")
            + f"; an exam scores its highest-scoring breast (highest P({metrics['positive_class']}"
            "), cancer in either breast makes the exam positive); labels are the most severe "
            "class; CIs resample patients at every level. Files: predictions_breast.csv, "
            "predictions_exam.csv."
        )  # fmt: skip
    if screening:
        L.append("")
        L.append(
            f"Screening metrics ({metrics['positive_class']} vs rest): "
            + ", ".join(f"`{k}`" for k in screening)
            + " = the best sensitivity among ROC points whose specificity is at least the target"
            "; the standardized partial AUC up to a false-positive rate of 0.10 (scikit-learn's "
            "`roc_auc_score(max_fpr=0.1)`, 0.5 = chance); RSNA's probabilistic F1 (precision = "
            "sum of P(positive) over positives / over all, recall = that sum / positives)."
        )
    L.append("")
    L += _answer(metrics)
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
    if config.get("head_decision"):
        L.append(f"- decision rule of every head: {config['head_decision']}")
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
        "level",
        "rank",
        "images",
        "patients",
        "majority baseline",
        "accuracy",
        "balanced accuracy",
        "macro F1",
        "ROC-AUC ovr",
        f"AUC {metrics['positive_class']}-vs-rest",
        *screening,
        "optimistic",
        "constant predictions",
        "CI",
    ]
    honest = [r for r in metrics["results"] if r["evaluation"] in ev.HONEST_EVALUATIONS]
    validation = [r for r in metrics["results"] if r["evaluation"] == "validation"]
    L += ["", "## Leaderboard", ""]
    L.append(
        "Ranked by CV balanced accuracy (the evaluation used for choosing); a test row carries "
        "its model's CV rank, so the test rows show how the models chosen by CV fare on unseen "
        "patients; nothing is ranked by its test score. Optimistic rows (evaluated on images "
        "their embeddings trained on) are not ranked. Rows with constant predictions say nothing "
        "about their features set and count in no comparison."
    )
    L.append("")

    def order(r):
        level = {"image": 0, "breast": 1, "exam": 2}.get(r.get("level", "image"), 3)
        rank = r.get("rank")
        return (level, r["evaluation"] != "cv", math.inf if rank is None else rank)

    honest = sorted(honest, key=order)
    L += _table(header, _leaderboard_rows(honest, metrics["positive_class"], screening))
    if validation:
        L += ["", "## HybridNet validation rows (not an estimate)", ""]
        L.append(
            "These images chose the stopping epoch (early stopping), so their numbers are "
            "optimistic: they are not ranked, enter no comparison, and are not pooled "
            "out-of-fold CV. Their majority baseline comes from the training class counts."
        )
        L.append("")
        L += _table(header, _leaderboard_rows(validation, metrics["positive_class"], screening))
    L += ["", "## Per-model tables (the paper's layout, with what it leaves out beside it)", ""]
    for r in metrics["results"]:
        lv = "" if r.get("level", "image") == "image" else f" / {r['level']} level"
        L += [f"### {_name(r)} / {r['evaluation']}{lv}", "", f"*{EVAL_LABEL[r['evaluation']]}*",
              ""]  # fmt: skip
        if r.get("constant_predictions"):
            L += [f"**Flagged: {r['constant_predictions']}.**", ""]
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
