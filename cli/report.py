"""`featmammo report RUN_DIR`: rebuild a run's leaderboard, metrics, report and figures."""

from __future__ import annotations

import click

from .options import echo_json, json_option


@click.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--n-boot", type=int, default=None, help="Bootstrap resamples (default: the run's config.json)."
)
@click.option("--seed", type=int, default=None, help="Bootstrap seed (default: the run's).")
@click.option(
    "--threshold", type=float, default=None, help="P(positive) threshold (default: the run's)."
)
@click.option("--figures/--no-figures", default=True, show_default=True, help="Redraw figures.")
@json_option
def command(run_dir, n_boot, seed, threshold, figures, as_json):
    """Recompute every number of RUN_DIR from its predictions.csv (+ config.json).

    Works for `featmammo fit` and `featmammo train` runs alike; edit or filter predictions.csv and
    rerun to see the report follow.
    """
    from featmammo.report import write_report

    path = write_report(run_dir, n_boot=n_boot, seed=seed, threshold=threshold, figures=figures)
    if as_json:
        echo_json({"report": str(path)})
    else:
        click.echo(f"Report: {path}")
