"""``featmammo fit STORE... -o RUN_DIR``: heads on stored embeddings, patient-grouped CV + test."""

from __future__ import annotations

import click

from .options import device_option, echo_json, json_option, output_option, seed_option

# CLI option name -> key of featmammo.fit.fit (also the keys a --config TOML file may set)
_KEYS = {
    "features": "features",
    "heads": "heads",
    "classes": "classes",
    "cv": "cv",
    "test_split": "test_split",
    "test_size": "test_size",
    "seed": "seed",
    "n_boot": "n_boot",
    "threshold": "threshold",
    "device": "device",
    "block_scaling": "block_scaling",
    "figures": "figures",
    "tune": "tune",
    "tune_metric": "tune_metric",
    "inner_cv": "inner_cv",
    "tune_grid": "tune_grid",
    "allow_trained_embeddings": "allow_trained_embeddings",
    "threads": "threads",
    "n_jobs": "n_jobs",
    "compare": "compare",
    "levels": "levels",
    "aggregate": "aggregate",
    "positive_class": "positive_class",
    "at_specificity": "at_specificity",
    "cv_repeats": "cv_repeats",
}
_TOML_ONLY = ("head_params",)


def _resolve(ctx: click.Context, values: dict, config_path) -> dict:
    """Flags given on the command line win over the TOML file, which wins over the defaults."""
    from featmammo.errors import ConfigError

    resolved = dict(values)
    if not config_path:
        return resolved
    import tomllib

    try:
        with open(config_path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{config_path}: unreadable TOML ({exc})") from exc
    data = data.get("fit", data)
    unknown = sorted(set(data) - set(_KEYS) - set(_TOML_ONLY) - {"head", "stores", "output"})
    if unknown:
        raise ConfigError(
            f"{config_path}: unknown key(s) {unknown}; known: {sorted([*_KEYS, *_TOML_ONLY])}"
        )
    if "head" in data and "heads" not in data:
        data["heads"] = data.pop("head")
    for key, value in data.items():
        if key in _TOML_ONLY:
            resolved[key] = value
            continue
        if key not in _KEYS:
            continue
        source = ctx.get_parameter_source(key)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            if key in ("features", "heads", "compare", "levels") and isinstance(value, str):
                value = [value]
            resolved[key] = value
    return resolved


@click.command("fit")
@click.argument("stores", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@output_option
@click.option(
    "--features",
    "features",
    multiple=True,
    help="Features set (repeatable): a backbone name, 'hybrid', or 'a+b'. "
    "Default: each backbone in the store(s) + hybrid.",
)
@click.option(
    "--head",
    "heads",
    multiple=True,
    help="Classifier head (repeatable): logreg, svm-linear, svm-rbf, rf, knn, mlp, xgboost, "
    "refine-mlp. Default: logreg and knn.",
)
@click.option(
    "--classes",
    default=None,
    help="Class scheme: normal,benign,malignant | benign,malignant | normal,abnormal | "
    "3class | benign-malignant | normal-abnormal. Default: the labels in the store. Rows "
    "outside the scheme are dropped and counted.",
)
@click.option("--cv", default=5, show_default=True, type=int, help="Patient-grouped CV folds.")
@click.option(
    "--cv-repeats", default=1, show_default=True, type=click.IntRange(min=1),
    help="Repeats of the CV, each with its own patient-grouped folds (R times the CV's cost): the "
    "CV comparisons' corrected resampled t runs over all R x K folds. 1 holds the 5% level but "
    "finds fewer real differences; 5 gives about the power of the former pooled bootstrap at its "
    "level from about 40 patients per class, and runs hot on smaller sets (a warning says so; "
    "benchmarks/null_calibration.py).",
)  # fmt: skip
@click.option(
    "--test-split",
    type=click.Choice(["official", "grouped", "none"]),
    default="official",
    show_default=True,
    help="Held-out test: the store's split=='test' rows (every other row trains), a "
    "patient-grouped hold-out, or none (CV only).",
)
@click.option(
    "--test-size",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Test fraction for --test-split grouped.",
)
@seed_option
@click.option(
    "--n-boot", default=1000, show_default=True, type=click.IntRange(min=0),
    help="Bootstrap resamples (of patients) for the CIs and paired tests.",
)  # fmt: skip
@click.option(
    "--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1),
    help="P(malignant) for the extra operating point (sensitivity/specificity_at_threshold); "
    "the confusion matrix and the headline sensitivity/specificity use argmax.",
)  # fmt: skip
@click.option(
    "--block-scaling/--no-block-scaling",
    default=True,
    show_default=True,
    help="One scaling rule for every features set (a backbone is a one-block set): standardise, "
    "then give each of the B blocks a total variance of 1/B. --no-block-scaling: standardise only.",
)
@click.option(
    "--figures/--no-figures", default=True, show_default=True,
    help="Draw the figures (confusion matrices, ROC/PR, calibration, test images).",
)  # fmt: skip
@click.option(
    "--tune",
    type=click.Choice(["grid", "none"]),
    default="grid",
    show_default=True,
    help="grid: tune every head inside each outer fold by a patient-grouped inner CV on a small "
    "documented grid (the same grid and inner splits for every features set; every point in "
    "tuning.csv); none: fixed defaults.",
)
@click.option(
    "--tune-metric",
    type=click.Choice(["balanced_accuracy", "roc_auc", "macro_f1", "accuracy", "neg_log_loss"]),
    default="balanced_accuracy",
    show_default=True,
    help="What the inner CV maximises.",
)
@click.option(
    "--inner-cv", default=3, show_default=True, type=click.IntRange(min=2),
    help="Inner patient-grouped folds for --tune grid.",
)  # fmt: skip
@click.option(
    "--tune-grid",
    default="default",
    show_default=True,
    help="default | small (two points per head, for demos); a TOML --config may give "
    "[tune_grid.<head>] tables instead.",
)
@click.option(
    "--allow-trained-embeddings",
    is_flag=True,
    default=False,
    help="Evaluate hybrid: embeddings on images their checkpoint trained or validated on "
    "(refused otherwise); the rows are marked optimistic.",
)
@click.option(
    "--threads", default=1, show_default=True, type=click.IntRange(min=0),
    help="BLAS/OpenMP threads while fitting (0: the libraries' own setting). One is fastest for "
    "these small matrices on a busy machine: idle BLAS threads spin-wait.",
)  # fmt: skip
@click.option(
    "--jobs", "n_jobs", default=1, show_default=True, type=click.IntRange(min=1),
    help="Features sets fitted in parallel (threads); results do not depend on it.",
)  # fmt: skip
@click.option(
    "--compare", "compare", multiple=True, metavar="A:B",
    help="Compare features sets A and B (repeatable; any two, same head, same images): every "
    "comparison goes to comparisons.csv. Default: each fused set (hybrid, a+b) vs each backbone.",
)  # fmt: skip
@click.option(
    "--level", "levels", multiple=True, type=click.Choice(["image", "breast", "exam"]),
    help="Evaluate per image, breast (patient + exam + side) and/or exam (repeatable; image is "
    "always evaluated). Default: image, plus breast and exam when the images carry a laterality "
    "and an exam_id.",
)  # fmt: skip
@click.option(
    "--aggregate", type=click.Choice(["mean", "max"]), default="mean", show_default=True,
    help="A breast's probabilities: the mean of its views', or its most suspicious view's (max "
    "P(positive)). An exam scores its highest-scoring breast.",
)  # fmt: skip
@click.option(
    "--positive-class", default=None,
    help="Positive class of the screening metrics (default: the most severe class of the "
    "scheme: malignant or abnormal).",
)  # fmt: skip
@click.option(
    "--at-specificity", "at_specificity", multiple=True, type=click.FloatRange(0, 1,
    min_open=True, max_open=True),
    help="Target specificity of sens_at_spec_<t> (repeatable; default 0.9).",
)  # fmt: skip
@device_option
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="TOML file with any of these options (and [head_params.<head>] tables); "
    "command-line flags win.",
)
@json_option
@click.pass_context
def command(
    ctx, stores, output, features, heads, classes, cv, cv_repeats, test_split, test_size, seed,
    n_boot, threshold, block_scaling, figures, tune, tune_metric, inner_cv, tune_grid,
    allow_trained_embeddings, threads, n_jobs, compare, levels, aggregate, positive_class,
    at_specificity, device, config_path, as_json,
) -> None:  # fmt: skip
    """Fit heads on the embeddings of STORE(s) and write a run folder -o RUN_DIR.

    Patient-grouped stratified CV on the training part (heads tuned by a nested, patient-grouped
    inner CV unless --tune none), then the held-out test; predictions.csv, tuning.csv,
    leaderboard.csv, metrics.json, report.md, figures/, models/ and config.json. Every reported
    number is recomputed from predictions.csv.
    """
    import time

    from featmammo.fit import fit

    from .options import progress, stage

    values = {
        "features": list(features) or None, "heads": list(heads) or None, "classes": classes,
        "cv": cv, "cv_repeats": cv_repeats, "test_split": test_split, "test_size": test_size,
        "seed": seed,
        "n_boot": n_boot, "threshold": threshold, "device": device,
        "block_scaling": block_scaling, "figures": figures, "tune": tune,
        "tune_metric": tune_metric, "inner_cv": inner_cv, "tune_grid": tune_grid,
        "allow_trained_embeddings": allow_trained_embeddings, "threads": threads or None,
        "n_jobs": n_jobs, "compare": list(compare) or None, "levels": list(levels) or None,
        "aggregate": aggregate, "positive_class": positive_class,
        "at_specificity": list(at_specificity) or None,
    }  # fmt: skip
    kwargs = _resolve(ctx, values, config_path)
    feats = kwargs.get("features") or ["each backbone", "hybrid"]
    n_heads = len(kwargs.get("heads") or ["logreg", "knn"])
    stage(
        f"fit: {', '.join(map(str, feats))} x {n_heads} head(s), {kwargs.get('cv')}-fold "
        f"patient-grouped CV + {kwargs.get('test_split')} test -> {output}"
    )
    t0 = time.perf_counter()
    with progress("fit", unit="fits") as update:
        result = fit(list(stores), output, progress=update, **kwargs)
    stage(f"fit: done in {time.perf_counter() - t0:.0f} s -> {result.run_dir}")
    if as_json:
        echo_json(result.summary())
        return
    lb = result.leaderboard
    cols = [
        "features", "head", "evaluation", "level", "rank", "n_images", "n_patients",
        "majority_baseline", "accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr",
    ]  # fmt: skip
    click.echo(lb[[c for c in cols if c in lb.columns]].to_string(index=False, float_format="%.3f"))
    dropped = result.config.get("dropped_rows") or {}
    if dropped:
        shown = ", ".join(f"{k}: {v}" for k, v in dropped.items())
        click.echo(f"\nDropped {sum(dropped.values())} row(s) outside the class scheme ({shown})")
    for note in result.config.get("notes") or []:
        click.echo(f"Note: {note}")
    click.echo(f"\nReport: {result.report}")
