"""``featmammo compare RUN_DIR... -o OUT``: ``fit`` and ``train`` runs in one leaderboard, with
paired comparisons on the test images they all share.

Each run folder holds ``predictions.csv`` and ``config.json`` (both commands write them). This
module reads them, checks that the runs can be compared, and writes OUT as a run folder of its
own -- ``predictions.csv`` (the runs' rows, relabelled) and ``config.json`` -- then lets
:func:`featmammo.report.write_report` compute ``leaderboard.csv``, ``comparisons.csv`` (one call of
:func:`featmammo.evaluate.comparisons.compare_predictions` over every pair: one Holm family per
evaluation), ``metrics.json``, ``report.md`` and the figures, so ``featmammo report OUT --verify``
recomputes everything from OUT alone.

Rules (what a reader of OUT can rely on):

- **Same images.** Test rows are kept only for the images every run has as test rows (their
  intersection); how many each run lost is said in the notes. Runs that share no test image are
  refused, naming each run's count. CV rows of ``fit`` runs are kept as they are (their CV
  comparisons stay within a run); a ``train`` run's validation rows (they chose its epoch) are
  left out.
- **Same labels.** Runs with different classes, or that give a shared image another label or
  patient, are refused with the counts.
- **Names.** A ``train`` run's rows carry features ``hybridnet`` (the ResNet50 + AlexNet network;
  ``hybridnet-<fusion>`` when two fusions are compared, ``<trunk>-end2end`` for a single trunk);
  a name two runs would share gets ``@<run folder>``. Comparisons are made per head, so with
  ``fit`` runs present each ``train`` run's test rows are repeated under every ``fit`` head (the
  same predictions: one row per head), and pairs are HybridNet vs each ``fit`` features set under
  each head; without ``fit`` runs, the first ``train`` run against each other one (head
  ``hybridnet``). ``pairs`` (``A:B``) chooses others.
- **Ranks.** The leaderboard ranks by CV balanced accuracy (never by the test score); a ``train``
  run has no CV rows, so its rows carry no rank: read the test columns, which are on the same
  images for every row.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .atomic import atomic_write
from .errors import ConfigError

log = logging.getLogger(__name__)

#: the head of a train run's rows when no fit run gives them a head to be compared under
HYBRID_HEAD = "hybridnet"
#: the features name of a train run of the full ResNet50 + AlexNet network
HYBRID_FEATURES = "hybridnet"


def _read_run(path: Path) -> dict:
    """One run folder: kind (fit / train), config, predictions."""
    from .evaluate import read_predictions
    from .report import read_config

    if not path.is_dir():
        raise ConfigError(f"{path}: not a run folder")
    config = read_config(path)
    if config.get("command") == "compare":
        raise ConfigError(f"{path}: a compare folder; pass the fit/train run folders it compared")
    if config.get("command") == "fit":
        kind = "fit"
    elif isinstance(config.get("train"), dict) and config.get("head") == HYBRID_HEAD:
        kind = "train"
    else:
        raise ConfigError(
            f"{path}: config.json is neither a `featmammo fit` nor a `featmammo train` run's"
        )
    pred_path = path / "predictions.csv"
    if not pred_path.is_file():
        raise ConfigError(f"{pred_path}: missing (an unfinished run?)")
    preds = read_predictions(pred_path)
    classes = [str(c) for c in config.get("classes") or []]
    if not classes:
        raise ConfigError(f"{path / 'config.json'}: records no classes")
    return {"path": path, "kind": kind, "config": config, "predictions": preds, "classes": classes}


def _train_name(run: dict) -> str:
    from .nn.config import TRUNKS

    train = run["config"]["train"]
    trunks = tuple(train.get("trunks") or TRUNKS)
    if trunks == TRUNKS:
        return HYBRID_FEATURES
    return f"{'+'.join(trunks)}-end2end"


def _names(runs: list[dict]) -> None:
    """Give every run's rows their compared features names (``run["rename"]``: old -> new)."""
    train_runs = [r for r in runs if r["kind"] == "train"]
    for r in train_runs:
        r["rename"] = {f: _train_name(r) for f in r["predictions"]["features"].astype(str).unique()}
    hybrids = [r for r in train_runs if _train_name(r) == HYBRID_FEATURES]
    fusions = {str(r["config"]["train"].get("fusion")) for r in hybrids}
    if len(hybrids) > 1 and len(fusions) == len(hybrids):  # one run per fusion: name the fusion
        for r in hybrids:
            fusion = r["config"]["train"].get("fusion")
            r["rename"] = {f: f"{HYBRID_FEATURES}-{fusion}" for f in r["rename"]}
    for r in runs:
        if r["kind"] == "fit":
            r["rename"] = {f: f for f in r["predictions"]["features"].astype(str).unique()}
    # a (features, head) two runs would share: every such run says which folder it comes from
    seen: dict[tuple, list[dict]] = {}
    for r in runs:
        heads = r["predictions"]["head"].astype(str).unique() if r["kind"] == "fit" else ["*"]
        for new in set(r["rename"].values()):
            for h in heads:
                seen.setdefault((new, h), []).append(r)
    clash = {id(r) for rs in seen.values() if len({id(x) for x in rs}) > 1 for r in rs}
    labels = _labels(runs)
    for r in runs:
        if id(r) in clash:
            r["rename"] = {k: f"{v}@{labels[id(r)]}" for k, v in r["rename"].items()}


def _labels(runs: list[dict]) -> dict[int, str]:
    """A short label per run: its folder name, with its parent where two folders share a name."""
    names = [r["path"].resolve().name for r in runs]
    out = {}
    for r, name in zip(runs, names, strict=True):
        if names.count(name) > 1:
            name = f"{r['path'].resolve().parent.name}/{name}"
        out[id(r)] = name
    return out


def _check_classes(runs: list[dict]) -> list[str]:
    ref = runs[0]
    for r in runs[1:]:
        if set(r["classes"]) != set(ref["classes"]):
            raise ConfigError(
                f"runs used different classes: {ref['path']} has {ref['classes']}, {r['path']} "
                f"has {r['classes']}; compare runs of one class scheme (--classes)"
            )
    return ref["classes"]


def _shared_test(runs: list[dict]) -> set[str]:
    """The image ids every run has as test rows; ConfigError naming the counts when none."""
    counts = []
    shared = None
    for r in runs:
        p = r["predictions"]
        ids = set(p.loc[p["fold"].astype(str) == "test", "image_id"].astype(str))
        r["n_test"] = len(ids)
        counts.append(f"{r['path']} ({r['kind']}): {len(ids)} test image(s)")
        shared = ids if shared is None else shared & ids
    if not shared:
        raise ConfigError(
            "the runs share no test image, so nothing can be compared on the same images: "
            + "; ".join(counts)
            + ". Hold out the same patients: `featmammo fit --test-split grouped` and `featmammo "
            "train --test-split grouped` with one --seed and --test-size on one manifest (or "
            "--test-split official on a manifest with split=test rows)"
        )
    return shared


def _check_labels(runs: list[dict], shared: set[str]) -> None:
    """The shared test images must have one label and one patient in every run."""
    frames = []
    for r in runs:
        p = r["predictions"]
        t = p[(p["fold"].astype(str) == "test") & p["image_id"].astype(str).isin(shared)]
        t = t.drop_duplicates("image_id")[["image_id", "y_true", "patient_id"]].astype(str)
        frames.append((r, t.set_index("image_id")))
    ref_run, ref = frames[0]
    for r, t in frames[1:]:
        both = ref.join(t.add_suffix("_b"), how="inner").rename(
            columns={"y_true": "y_true_a", "patient_id": "patient_id_a"}
        )
        for col, what in (("y_true", "labels"), ("patient_id", "patients")):
            bad = both[both[f"{col}_a"] != both[f"{col}_b"]]
            if len(bad):
                i = bad.index[0]
                raise ConfigError(
                    f"runs used different {what}: {len(bad)} of {len(both)} shared test image(s) "
                    f"differ between {ref_run['path']} and {r['path']} (e.g. {i}: "
                    f"{bad.at[i, col + '_a']!r} vs {bad.at[i, col + '_b']!r}); they were not "
                    "made from the same manifest and class scheme"
                )


def _cv_folds(p: pd.DataFrame) -> pd.Series:
    """image_id -> CV fold of a fit run's CV rows."""
    fold = p["fold"].astype(str)
    cv = p[(fold != "test") & (fold != "validation")]
    return cv.drop_duplicates("image_id").set_index("image_id")["fold"].astype(str)


def _cv_kept(runs: list[dict], labels: dict[int, str]) -> tuple[set[int], list[str]]:
    """The fit runs whose CV rows are kept: the first, and each other whose folds agree with it on
    every image both have (CV comparisons pair images fold by fold; folds of other splits cannot
    be paired, so those runs keep only their test rows). Returns (run ids, notes)."""
    fits = [r for r in runs if r["kind"] == "fit"]
    if not fits:
        return set(), []
    ref = _cv_folds(fits[0]["predictions"])
    kept, notes = {id(fits[0])}, []
    for r in fits[1:]:
        folds = _cv_folds(r["predictions"])
        both = ref.index.intersection(folds.index)
        if (ref[both] == folds[both]).all():
            kept.add(id(r))
        else:
            notes.append(
                f"{labels[id(r)]}: CV rows left out (its CV folds differ from "
                f"{labels[id(fits[0])]}'s on {int((ref[both] != folds[both]).sum())} image(s), so "
                "CV comparisons across the two runs cannot be paired); its test rows are compared"
            )
    return kept, notes


def _rows(
    runs: list[dict], shared: set[str], classes: list[str], cv_runs: set[int]
) -> pd.DataFrame:
    """The compared predictions: test rows on the shared images, the CV rows of the fit runs in
    ``cv_runs``, relabelled."""
    fit_heads = list(
        dict.fromkeys(
            h for r in runs if r["kind"] == "fit" for h in r["predictions"]["head"].astype(str)
        )
    )
    cols = ["image_id", "patient_id", "fold", "features", "head", "y_true", "y_pred"]
    cols += [f"p_{c}" for c in classes]
    parts = []
    for r in runs:
        p = r["predictions"].copy()
        fold = p["fold"].astype(str)
        test = fold == "test"
        keep = (test & p["image_id"].astype(str).isin(shared)) | (
            (id(r) in cv_runs) & ~test & (fold != "validation")
        )
        p = p[keep].copy()
        p["features"] = p["features"].astype(str).map(r["rename"])
        extra = [c for c in ("repeat",) if c in p.columns]
        p = p[cols + extra]
        if r["kind"] == "train":
            heads = fit_heads or [HYBRID_HEAD]
            p = pd.concat([p.assign(head=h) for h in heads], ignore_index=True)
        parts.append(p)
    out = pd.concat(parts, ignore_index=True)
    if "repeat" in out.columns:  # test rows do not repeat: a train run's take the fit runs' value
        first = out.loc[out["fold"].astype(str) == "test", "repeat"].dropna()
        out["repeat"] = out["repeat"].fillna(first.iloc[0] if len(first) else "1")
    return out


def default_pairs(runs: list[dict]) -> list[tuple[str, str]]:
    """HybridNet (each train run) vs each fit features set; without fit runs, the first train run
    vs each other one."""
    train = list(
        dict.fromkeys(v for r in runs if r["kind"] == "train" for v in r["rename"].values())
    )
    fit = list(dict.fromkeys(v for r in runs if r["kind"] == "fit" for v in r["rename"].values()))
    if train and fit:
        return [(a, b) for a in train for b in fit]
    names = train or fit
    if len(names) < 2:
        return []
    if not train:
        from .evaluate.comparisons import default_pairs as fused_pairs

        return fused_pairs(names)
    return [(names[0], b) for b in names[1:]]


def _merged_caveats(runs: list[dict], labels: dict[int, str]) -> dict:
    weights, sources, warnings = {}, {}, []
    for r in runs:
        cav = r["config"].get("caveats") or {}
        label = labels[id(r)]
        for b, w in (cav.get("weights") or {}).items():
            weights[f"{b} [{label}]"] = w
        for s, n in (cav.get("sources") or {}).items():
            sources[s] = max(int(n), sources.get(s, 0))  # one data set seen by several runs
        for w in cav.get("warnings") or []:
            text = f"{label}: {w}"
            if text not in warnings:
                warnings.append(text)
    return {"weights": weights, "sources": sources, "warnings": warnings}


def _merged_audit(runs: list[dict]) -> dict:
    """Source confounding as every run checked it (absent when a run did not check)."""
    audits = [r["config"].get("split_audit") for r in runs]
    if not all(isinstance(a, dict) and "source_confounding" in a for a in audits):
        return {}
    if any(a["source_confounding"] is None for a in audits):
        return {"source_confounding": None}
    found: dict = {}
    for a in audits:
        found.update(a["source_confounding"] or {})
    return {"source_confounding": found, "ok": all(a.get("ok", True) for a in audits)}


def compare(
    run_dirs: Sequence,
    out_dir,
    *,
    pairs: Sequence[str] | None = None,
    n_boot: int | None = None,
    seed: int | None = None,
    figures: bool = True,
) -> Path:
    """Compare ``fit`` and ``train`` runs (see the module docstring); writes ``out_dir`` and
    returns its ``report.md``. ``pairs``: ``A:B`` features names of the compared rows (default:
    :func:`default_pairs`); ``n_boot``, ``seed``: the bootstrap (default: the first fit run's,
    else 1000 and 0)."""
    from .evaluate.comparisons import resolve_pairs
    from .report import write_report

    paths = [Path(p) for p in run_dirs]
    if len(paths) < 2:
        raise ConfigError("compare needs at least two run folders")
    out = Path(out_dir)
    if out.resolve() in {p.resolve() for p in paths}:
        raise ConfigError(f"{out}: the output folder is one of the compared runs")
    runs = [_read_run(p) for p in paths]
    classes = _check_classes(runs)
    labels = _labels(runs)
    _names(runs)
    shared = _shared_test(runs)
    _check_labels(runs, shared)
    cv_runs, cv_notes = _cv_kept(runs, labels)
    frame = _rows(runs, shared, classes, cv_runs)
    names = list(dict.fromkeys(frame["features"].astype(str)))
    pair_list = resolve_pairs(pairs, names) if pairs else default_pairs(runs)
    fits = [r for r in runs if r["kind"] == "fit"]
    first = (fits or runs)[0]["config"]
    n_boot = int(first.get("n_boot", 1000) if n_boot is None else n_boot)
    seed = int(first.get("seed", 0) if seed is None else seed)
    notes = [
        "compared runs: "
        + "; ".join(
            f"{labels[id(r)]} ({r['kind']}: {r['path']}; features "
            f"{', '.join(dict.fromkeys(r['rename'].values()))}; {r['n_test']} test image(s), "
            f"{len(shared)} shared)"
            for r in runs
        ),
        f"test rows: the {len(shared)} image(s) that are test images of every run "
        f"({frame.loc[frame['fold'] == 'test', 'patient_id'].nunique()} patients); "
        + ", ".join(
            f"{labels[id(r)]} left out {r['n_test'] - len(shared)}"
            for r in runs
            if r["n_test"] > len(shared)
        )
        if any(r["n_test"] > len(shared) for r in runs)
        else f"test rows: the {len(shared)} image(s) every run holds out (all of each run's)",
    ]
    notes += cv_notes
    if any(r["kind"] == "train" for r in runs):
        notes.append(
            "train runs: validation rows (they chose the stopping epoch) are left out; they have "
            "no CV rows, so they carry no rank: compare their test rows, on the same images as "
            "every other row"
        )
        if fits:
            notes.append(
                "train runs: their test rows are repeated under each head of the fit runs (the "
                "same predictions, one row per head), so each head's comparisons include them"
            )
    counts = [r["config"].get("train_class_counts") for r in runs]
    train_counts = next((c for r, c in zip(runs, counts, strict=True) if c and r in fits), None)
    train_counts = train_counts or next((c for c in counts if c), None)
    majorities = {max(c, key=c.get) for c in counts if c}
    if len(majorities) > 1:
        notes.append(
            f"the runs' training parts have different majority classes ({sorted(majorities)}): "
            "the majority baselines use the first fit run's training counts"
        )
    optimistic = sorted(
        {
            r["rename"].get(str(f), str(f))
            for r in fits
            for f in r["config"].get("optimistic_features") or ()
        }
    )
    config = {
        "command": "compare",
        "runs": [
            {
                "path": str(r["path"]),
                "kind": r["kind"],
                "label": labels[id(r)],
                "features": r["rename"],
                "n_test_images": r["n_test"],
            }
            for r in runs
        ],  # fmt: skip
        "features": names,
        "heads": list(dict.fromkeys(frame["head"].astype(str))),
        "classes": classes,
        "n_boot": n_boot,
        "seed": seed,
        "compare": [list(p) for p in pair_list],
        "levels": ["image"],
        "n_shared_test_images": len(shared),
        "train_class_counts": train_counts,
        "caveats": _merged_caveats(runs, labels),
        "split_audit": _merged_audit(runs),
        "optimistic_features": optimistic,
        "notes": notes,
    }
    for key in ("positive_class", "at_specificity", "threshold"):
        if first.get(key) is not None:
            config[key] = first[key]
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2, default=str).encode()
    atomic_write(out / "config.json", lambda f: f.write(text))
    atomic_write(out / "predictions.csv", lambda f: frame.to_csv(f, index=False))
    images = _images(runs, set(frame["image_id"].astype(str)))
    if images is not None:
        atomic_write(out / "images.csv", lambda f: images.to_csv(f, index=False))
    elif (out / "images.csv").exists():
        (out / "images.csv").unlink()
    log.info(
        "compare: %d run(s), %d shared test image(s), %d pair(s) -> %s",
        len(runs),
        len(shared),
        len(pair_list),
        out,
    )
    return write_report(out, figures=figures)


def _images(runs: list[dict], ids: set[str]) -> pd.DataFrame | None:
    """image_id -> path for the report's test-image grid, from the fit runs' images.csv."""
    frames = []
    for r in runs:
        path = r["path"] / "images.csv"
        if path.is_file():
            try:
                frames.append(pd.read_csv(path, dtype=str, keep_default_na=False))
            except (OSError, ValueError):
                continue
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True).drop_duplicates("image_id")
    df = df[df["image_id"].isin(ids)]
    return df[["image_id", "path"]] if len(df) and "path" in df else None


__all__ = ["compare", "default_pairs"]
