"""``featmammo manifest``: build a manifest CSV (one row per image) from a dataset on disk.

Subcommands: ``cbis-ddsm ROOT`` (a CBIS-DDSM download in any layout + the official CSVs) and
``folder ROOT`` (class-per-folder trees). Each writes the manifest, prints a summary and the
leakage audit; ``cbis-ddsm`` also writes ``<output stem>.summary.json`` (rules applied, counts,
unresolved rows) and, when some rows could not be resolved, ``<output stem>.unresolved.csv``.
"""

from __future__ import annotations

import click

from .options import echo_json, json_option, output_option


@click.group("manifest")
def command() -> None:
    """Build a manifest CSV (image_id, path, label, patient_id, laterality, view, split, source)."""


def _side_files(output: str):
    from pathlib import Path

    out = Path(output)
    return out.with_name(out.stem + ".summary.json"), out.with_name(out.stem + ".unresolved.csv")


def _echo_summary(summary: dict, output: str, max_rows: int) -> None:
    click.echo(f"manifest   {output}")
    click.echo(
        f"root       {summary['root']}  (layout {summary['layout']}, source {summary['source']})"
    )
    for note in summary["notes"]:
        click.echo(f"note       {note}")
    if summary["csv_missing"]:
        click.echo(f"csv        MISSING {', '.join(summary['csv_missing'])}: not in the manifest")
    click.echo(f"subset     {summary['subset']}; label rule: {summary['label_rule']}")
    click.echo(
        f"dedup      {summary['dedup']}: {summary['merged_views']} views merged, "
        f"{summary['split_conflicts']} with a train/test conflict"
    )
    click.echo(
        f"images     {summary['images']} of {summary['n_images_in_csvs']} in the CSVs; "
        f"patients {summary['patients']}"
    )
    click.echo("labels     " + ", ".join(f"{k} {v}" for k, v in summary["labels"].items()))
    click.echo("splits     " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()))
    idx = summary["index"]
    click.echo(
        f"index      {idx.get('dcm_files', 0)} .dcm / {idx.get('jpg_files', 0)} .jpg files; "
        f"headers read {idx.get('headers_read', 0)}, cached {idx.get('headers_cached', 0)}"
    )
    click.echo(
        f"lesions    {summary['lesions_missing_files']} without crop/mask files, "
        f"{summary['mask_size_mismatch']} masks of the wrong size, "
        f"{summary['crop_mask_swapped']} crop/mask listed in swapped order"
    )
    if summary["density_zero"]:
        click.echo(f"density    {summary['density_zero']} rows with density 0 left empty")
    if summary["excluded"]:
        click.echo(f"excluded   {len(summary['excluded'])} images (BENIGN_WITHOUT_CALLBACK only)")
    if summary["skipped_files"]:
        click.echo(f"skipped    {len(summary['skipped_files'])} unreadable file(s):")
        for s in summary["skipped_files"][:max_rows]:
            click.echo(f"           {s['path']}: {s['reason']}")
    if summary["unresolved"]:
        click.echo(
            f"unresolved {summary['unresolved']} image(s): "
            + "; ".join(f"{k} x{v}" for k, v in summary["unresolved_reasons"].items())
        )
        for u in summary["unresolved_rows"][:max_rows]:
            click.echo(f"           {u['subject']} ({u['csv']}): {u['reason']}")
        if summary["unresolved"] > max_rows:
            click.echo(
                f"           ... {summary['unresolved'] - max_rows} more in the unresolved CSV"
            )
    else:
        click.echo("unresolved 0")


@command.command("cbis-ddsm")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--csv-dir",
    type=click.Path(exists=True, file_okay=False),
    help="Folder with the case-description CSVs (default: found under ROOT by name).",
)
@output_option
@click.option(
    "--subset",
    type=click.Choice(["all", "mass", "calc"]),
    default="all",
    show_default=True,
    help="Which abnormality CSVs to use (all = mass + calc pooled).",
)
@click.option(
    "--benign-without-callback",
    "bwc",
    type=click.Choice(["benign", "exclude"]),
    default="benign",
    show_default=True,
    help="BENIGN_WITHOUT_CALLBACK abnormalities count as benign, or are dropped "
    "(images left with none are excluded). Raw pathology stays in 'pathology'.",
)
@click.option(
    "--no-dedup",
    is_flag=True,
    help="Keep one row per series (no patient/side/view dedup of mass+calc duplicates; "
    "image_id = subject folder).",
)
@click.option("--no-cache", is_flag=True, help="Do not read or write the DICOM header index cache.")
@click.option(
    "--fail-on-unresolved",
    is_flag=True,
    help="Exit with code 1 when any CSV image could not be resolved to a file.",
)
@click.option("--max-rows", default=10, show_default=True, help="Unresolved/skipped rows printed.")
@json_option
@click.pass_context
def cbis_ddsm(
    ctx,
    root,
    csv_dir,
    output,
    subset,
    bwc,
    no_dedup,
    no_cache,
    fail_on_unresolved,
    max_rows,
    as_json,
) -> None:
    """Manifest of a CBIS-DDSM download ROOT (classic, NBIA descriptive with metadata.csv,
    NBIA REST, or the 8-bit JPEG copy with csv/dicom_info.csv).

    One row per full mammogram; label: any malignant abnormality -> malignant. Files are found by
    Study/Series UID; crop and ROI mask are told apart by image size. The official train/test split
    is kept in 'split'. Unresolved rows are listed, never silently dropped.
    """
    import csv as csv_module
    import json

    from featmammo.datasets.cbis_ddsm import build_cbis_ddsm
    from featmammo.datasets.manifest import write_manifest
    from featmammo.splits import audit

    df, summary = build_cbis_ddsm(
        root,
        csv_dir=csv_dir,
        benign_without_callback=bwc,
        subset=subset,
        dedup=not no_dedup,
        cache=not no_cache,
    )
    write_manifest(df, output)
    summary_path, unresolved_path = _side_files(output)
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    if summary["unresolved_rows"]:
        with open(unresolved_path, "w", newline="") as f:
            writer = csv_module.DictWriter(f, fieldnames=["image_id", "subject", "csv", "reason"])
            writer.writeheader()
            writer.writerows(summary["unresolved_rows"])
    elif unresolved_path.exists():
        unresolved_path.unlink()
    if as_json:
        echo_json({**summary, "manifest": output, "summary_json": str(summary_path)})
    else:
        _echo_summary(summary, output, max_rows)
        click.echo(audit(df).format())
        click.echo(f"summary    {summary_path}")
    if fail_on_unresolved and summary["unresolved"]:
        ctx.exit(1)


@command.command("folder")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@output_option
@click.option(
    "--patient-pattern",
    default=None,
    help="Regular expression finding the patient id in the path relative to ROOT "
    "(named group 'patient', else group 1, else the whole match). Without it "
    "patient_id = image_id (warned: no patient grouping).",
)
@click.option("--source", default="folder", show_default=True, help="Value of the source column.")
@json_option
def folder(root, output, patient_pattern, source, as_json) -> None:
    """Manifest of a class-per-folder tree: ROOT/<label>/... or ROOT/<split>/<label>/...

    Labels: normal, benign, malignant (case-insensitive).
    Images: .dcm .png .jpg .jpeg .pgm .tif .tiff.
    """
    from featmammo.datasets.folders import build_folder
    from featmammo.datasets.manifest import write_manifest
    from featmammo.splits import audit

    df = build_folder(root, patient_pattern=patient_pattern, source=source)
    write_manifest(df, output)
    report = audit(df)
    summary = {
        "manifest": output,
        "root": root,
        "images": int(len(df)),
        "patients": int(df["patient_id"].nunique()),
        "patient_id": "pattern" if patient_pattern else "image_id (no pattern given)",
        "labels": {k: int(v) for k, v in df["label"].value_counts().sort_index().items()},
        "splits": {k: int(v) for k, v in df["split"].value_counts().sort_index().items()},
        "audit": report.to_dict(),
    }
    if as_json:
        echo_json(summary)
        return
    click.echo(f"manifest   {output}")
    click.echo(
        f"images     {summary['images']}; patients {summary['patients']} "
        f"(patient_id from {summary['patient_id']})"
    )
    click.echo("labels     " + ", ".join(f"{k} {v}" for k, v in summary["labels"].items()))
    click.echo(report.format())
