"""``featmammo compare RUN_DIR... -o OUT``: fit and train runs in one leaderboard, compared on the
test images they share."""

from __future__ import annotations

import click

from .options import echo_json, json_option, stage


@click.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(), help="Output folder.")
@click.option(
    "--compare",
    "pairs",
    multiple=True,
    metavar="A:B",
    help="Compare features A with B (names as in the output's leaderboard: hybridnet, resnet50, "
    "hybrid, ...), per head; repeatable. Default: HybridNet (each train run) against each fit "
    "features set.",
)
@click.option(
    "--n-boot", type=int, default=None, help="Bootstrap resamples (default: the first fit run's)."
)
@click.option(
    "--seed", type=int, default=None, help="Bootstrap seed (default: the first fit run's)."
)
@click.option("--figures/--no-figures", default=True, show_default=True, help="Draw figures.")
@json_option
def command(run_dirs, out_dir, pairs, n_boot, seed, figures, as_json) -> None:
    """Put `featmammo fit` and `featmammo train` RUN_DIRs in one leaderboard with paired
    comparisons (patient-clustered bootstrap, Holm-adjusted) on the test images they all share.

    OUT gets predictions.csv, config.json, leaderboard.csv, comparisons.csv, metrics.json,
    report.md and figures; `featmammo report OUT --verify` re-checks them. HybridNet's rows carry
    features `hybridnet`. Refused when the runs share no test image or used different labels or
    classes (use one manifest and `--test-split grouped` with one --seed in both commands).
    """
    from featmammo.compare import compare

    report = compare(
        list(run_dirs), out_dir, pairs=list(pairs) or None, n_boot=n_boot, seed=seed,
        figures=figures,
    )  # fmt: skip
    import json
    from pathlib import Path

    config = json.loads((Path(out_dir) / "config.json").read_text())
    stage(
        f"compare: {len(run_dirs)} run(s), {config['n_shared_test_images']} shared test "
        f"image(s), {len(config['compare'])} pair(s) -> {report}"
    )
    if as_json:
        echo_json({"report": str(report), "n_shared_test_images": config["n_shared_test_images"],
                   "pairs": config["compare"]})  # fmt: skip
    else:
        click.echo(f"Report: {report}")
