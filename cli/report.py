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
    "--threshold",
    type=float,
    default=None,
    help="P(positive) of the extra operating point (sensitivity/specificity_at_threshold; "
    "every other figure uses argmax). Default: the run's.",
)
@click.option(
    "--min-patients",
    type=click.IntRange(1),
    default=None,
    help="Fewest patients per class for a CI to be given (default: 10).",
)
@click.option("--figures/--no-figures", default=True, show_default=True, help="Redraw figures.")
@click.option(
    "--verify",
    is_flag=True,
    help="Only re-check the written files against predictions.csv (scikit-learn recompute); "
    "exit 1 when a check fails.",
)
@json_option
def command(run_dir, n_boot, seed, threshold, min_patients, figures, verify, as_json):
    """Recompute every number of RUN_DIR from its predictions.csv (+ config.json).

    Works for `featmammo fit` and `featmammo train` runs alike; edit or filter predictions.csv and
    rerun to see the report follow.
    """
    from featmammo import report

    if verify:
        checks = report.verify(run_dir)
        failed = [c for c in checks if not c["ok"]]
        if as_json:
            echo_json({"checks": checks, "ok": not failed})
        else:
            for c in checks:
                status = "note" if c.get("info") else "ok" if c["ok"] else "FAIL"
                click.echo(f"{status:4}  {c['check']}: {c['detail']}")
        if failed:
            raise SystemExit(1)
        return
    kwargs = {} if min_patients is None else {"min_patients_per_class": min_patients}
    path = report.write_report(
        run_dir, n_boot=n_boot, seed=seed, threshold=threshold, figures=figures, **kwargs
    )
    if as_json:
        echo_json({"report": str(path)})
    else:
        click.echo(f"Report: {path}")
