"""``featmammo audit MANIFEST``: the leakage audit of a manifest (patients shared between splits
and, when a ``fold`` column exists, between CV folds; duplicated files and breast views)."""

from __future__ import annotations

import click

from .options import echo_json, json_option


@click.command("audit", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--enforce",
    is_flag=True,
    help="Exit with code 1 when any patient is shared between splits or folds.",
)
@click.option("--split-col", default="split", show_default=True, help="Column holding the split.")
@click.option(
    "--group-col",
    default="patient_id",
    show_default=True,
    help="Column holding the patient (group) id.",
)
@json_option
@click.pass_context
def command(
    ctx, manifest: str, enforce: bool, split_col: str, group_col: str, as_json: bool
) -> None:
    """Report patients shared between splits (train/test/val) and CV folds of MANIFEST.

    MANIFEST is a manifest CSV (images need not exist on disk) or any CSV with a patient column,
    such as a run's predictions.csv (its 'fold' column is audited). With --json: ok, n_images,
    n_patients, splits, shared ("a|b" -> patient ids), fold_shared, duplicate_paths,
    duplicate_views, source_confounding.
    """
    from featmammo.datasets.manifest import read_csv_strings, read_manifest
    from featmammo.errors import ManifestError
    from featmammo.splits import audit

    raw, _ = read_csv_strings(manifest)
    if "path" in {c.lower() for c in raw.columns}:  # a manifest (files need not exist)
        df = read_manifest(manifest, check_paths=False, require_labels=False)
    elif group_col in raw.columns:  # e.g. predictions.csv (image_id, patient_id, fold, ...)
        df = raw
    else:
        raise ManifestError(f"{manifest}: neither a manifest (no 'path') nor has {group_col!r}")
    report = audit(df, split_col=split_col, group_col=group_col)
    if as_json:
        echo_json({"manifest": manifest, **report.to_dict()})
    else:
        click.echo(f"manifest   {manifest}")
        click.echo(report.format())
    if enforce and not report.ok:
        if not as_json:
            click.echo("audit failed (--enforce): patients are shared between splits", err=True)
        ctx.exit(1)
