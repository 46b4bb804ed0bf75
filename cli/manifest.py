"""``featmammo manifest``: build a manifest CSV (one row per image) from a dataset on disk.

Subcommands, one per set: ``cbis-ddsm``, ``ddsm`` (original DDSM volumes), ``ddsm-patches``
(Kaggle patch set), ``mias``, ``inbreast``, ``vindr``, ``rsna``, ``cmmd``; ``folder``
(class-per-folder trees) and ``merge`` (several manifests into one, keeping ``source``). Each
calls its library builder (``featmammo.datasets.<set>``), then ``featmammo.datasets.base.save``
writes the manifest, ``<output stem>.summary.json`` (rules applied, counts, unresolved rows, the
leakage audit) and, when some rows could not be resolved, ``<output stem>.unresolved.csv``; the
command prints the summary and the audit.
"""

from __future__ import annotations

import click

from .options import echo_json, json_option, output_option


@click.group("manifest", context_settings={"help_option_names": ["-h", "--help"]})
def command() -> None:
    """Build a manifest CSV (image_id, path, label, patient_id, laterality, view, split, source)."""


def _finish(df, summary: dict, output: str, as_json: bool, text: str) -> None:
    """Write the manifest, summary and unresolved files (library), then print."""
    from featmammo.datasets.base import format_audit, save

    paths = save(df, summary, output)
    if as_json:
        echo_json({**summary, **paths})
        return
    click.echo(text)
    click.echo(format_audit(summary))
    click.echo(f"summary    {paths['summary_json']}")
    if paths["unresolved_csv"]:
        click.echo(f"unresolved {paths['unresolved_csv']}")


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
    from featmammo.datasets.cbis_ddsm import build_cbis_ddsm, format_summary

    from .options import progress

    with progress("DICOM headers", unit="files") as update:
        df, summary = build_cbis_ddsm(
            root,
            csv_dir=csv_dir,
            benign_without_callback=bwc,
            subset=subset,
            dedup=not no_dedup,
            cache=not no_cache,
            progress=update,
        )
    _finish(df, summary, output, as_json, format_summary(summary, output, max_rows))
    if fail_on_unresolved and summary["unresolved"]:
        ctx.exit(1)


max_rows_option = click.option(
    "--max-rows", default=10, show_default=True, help="Unresolved rows printed."
)
fail_option = click.option(
    "--fail-on-unresolved",
    is_flag=True,
    help="Exit with code 1 when any row could not be resolved to an image.",
)
birads_option = click.option(
    "--birads-map",
    default=None,
    help="BI-RADS category -> label, e.g. '3=exclude,4=malignant' (changes the default "
    "1=normal, 2-3=benign, 4-6=malignant; LABEL: normal|benign|malignant|exclude).",
)


def _set_options(f):
    """ROOT, -o, --fail-on-unresolved, --max-rows, --json and the click context: what every
    per-set command takes."""
    f = click.pass_context(f)
    for deco in reversed(
        (
            click.argument("root", type=click.Path(exists=True, file_okay=False)),
            output_option,
            fail_option,
            max_rows_option,
            json_option,
        )
    ):
        f = deco(f)
    return f


def _mask_options(f):
    """--mask-dir / --no-masks: where a set's lesion geometry is written as ROI mask PNGs."""
    f = click.option(
        "--no-masks", is_flag=True, help="Write no ROI masks (roi_mask_path stays empty)."
    )(f)
    return click.option(
        "--mask-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Where the lesion outlines/boxes/circles are written as ROI mask PNGs for "
        "--roi crop|patch (default: <output stem>.masks/ beside the manifest).",
    )(f)


def _masks(output, mask_dir, no_masks):
    from featmammo.datasets.masks import default_mask_dir

    if no_masks:
        return None
    return mask_dir if mask_dir is not None else default_mask_dir(output)


def _mask_lines(summary: dict) -> list[str]:
    if not summary.get("mask_dir"):
        return []
    return [
        f"masks      {summary['mask_dir']}: {summary['masks_written']} written, "
        f"{summary['masks_reused']} reused, {len(summary['mask_errors'])} errors"
    ]


def _run(ctx, build, output, as_json, max_rows, fail_on_unresolved, lines=None) -> None:
    from featmammo.datasets.base import format_summary

    df, summary = build()
    text = format_summary(summary, output, max_rows, lines(summary) if lines else ())
    _finish(df, summary, output, as_json, text)
    if fail_on_unresolved and summary["unresolved"]:
        ctx.exit(1)


@command.command("mias")
@_set_options
@click.option(
    "--info",
    type=click.Path(exists=True, dir_okay=False),
    help="Info.txt (default: found under ROOT).",
)
@_mask_options
def mias(
    ctx, root, output, info, mask_dir, no_masks, fail_on_unresolved, max_rows, as_json
) -> None:
    """Manifest of mini-MIAS (mdbNNN.pgm + Info.txt).

    Label: any SEVERITY M -> malignant, else B -> benign; NORM -> normal. The two films of a woman
    (mdb001/mdb002, ...) share a patient_id; laterality from the file number (Info.txt: even =
    left, odd = right), view MLO. The abnormality circles (origin bottom-left) become ROI masks.
    """
    from featmammo.datasets.mias import build_mias

    masks = _masks(output, mask_dir, no_masks)
    _run(
        ctx,
        lambda: build_mias(root, info=info, mask_dir=masks),
        output,
        as_json,
        max_rows,
        fail_on_unresolved,
        _mask_lines,
    )


@command.command("inbreast")
@_set_options
@click.option(
    "--table",
    type=click.Path(exists=True, dir_okay=False),
    help="INbreast.xls/.csv (default: found under ROOT).",
)
@birads_option
@_mask_options
def inbreast(
    ctx, root, output, table, birads_map, mask_dir, no_masks, fail_on_unresolved, max_rows, as_json
) -> None:
    """Manifest of INbreast (AllDICOMs/ + INbreast.xls or its CSV export + AllXML/).

    Labels are a BI-RADS proxy (recorded in label_rule): 1 -> normal, 2-3 -> benign,
    4-6 -> malignant unless --birads-map says otherwise. The XML lesion outlines (masses,
    calcifications, others) become ROI masks.
    """
    from featmammo.datasets.inbreast import build_inbreast

    masks = _masks(output, mask_dir, no_masks)
    _run(
        ctx,
        lambda: build_inbreast(root, table=table, birads_map=birads_map, mask_dir=masks),
        output,
        as_json,
        max_rows,
        fail_on_unresolved,
        _mask_lines,
    )


@command.command("vindr")
@_set_options
@click.option(
    "--annotations",
    type=click.Path(exists=True, dir_okay=False),
    help="breast-level_annotations.csv (default: found under ROOT).",
)
@birads_option
@_mask_options
def vindr(
    ctx,
    root,
    output,
    annotations,
    birads_map,
    mask_dir,
    no_masks,
    fail_on_unresolved,
    max_rows,
    as_json,
) -> None:
    """Manifest of VinDr-Mammo (images/<study>/<image>.dicom + breast-level_annotations.csv).

    Labels are a BI-RADS proxy: 1 -> normal, 2-3 -> benign, 4-5 -> malignant unless
    --birads-map says otherwise. The official split is kept; patient_id = exam_id = study_id.
    The finding boxes of finding_annotations.csv become ROI masks.
    """
    from featmammo.datasets.vindr import build_vindr

    masks = _masks(output, mask_dir, no_masks)
    _run(
        ctx,
        lambda: build_vindr(root, annotations=annotations, birads_map=birads_map, mask_dir=masks),
        output,
        as_json,
        max_rows,
        fail_on_unresolved,
        _mask_lines,
    )


@command.command("rsna")
@_set_options
@click.option(
    "--table",
    type=click.Path(exists=True, dir_okay=False),
    help="train.csv (default: found under ROOT).",
)
@click.option(
    "--exclude-implants",
    is_flag=True,
    help="Leave out images with implant=1 (listed as excluded; always counted in the summary).",
)
def rsna(ctx, root, output, table, exclude_implants, fail_on_unresolved, max_rows, as_json) -> None:
    """Manifest of the RSNA screening challenge data (train_images/<patient>/<image>.dcm +
    train.csv).

    Label: cancer=1 -> malignant; biopsy=1 and cancer=0 -> benign; else normal. site_id and
    machine_id are kept as columns. When an image exists as .dcm and .png, the .dcm is used.
    """
    from featmammo.datasets.rsna import build_rsna

    def lines(summary: dict) -> list[str]:
        n = summary["implants"]
        return [
            f"implants   {n['images']} image(s) of {n['patients']} patient(s)"
            + (" left out" if summary["exclude_implants"] else " kept")
        ]

    _run(
        ctx,
        lambda: build_rsna(root, table=table, exclude_implants=exclude_implants),
        output,
        as_json,
        max_rows,
        fail_on_unresolved,
        lines,
    )


@command.command("cmmd")
@_set_options
@click.option(
    "--table",
    type=click.Path(exists=True, dir_okay=False),
    help="CMMD_clinicaldata_revision.xlsx or .csv (default: found under or beside ROOT).",
)
def cmmd(ctx, root, output, table, fail_on_unresolved, max_rows, as_json) -> None:
    """Manifest of CMMD (TCIA DICOM tree + the clinical table).

    Label: the clinical classification (Benign/Malignant) of the image's breast; the side comes
    from the DICOM header. Images of breasts without a clinical row are listed, not labelled.
    """
    from featmammo.datasets.cmmd import build_cmmd

    _run(ctx, lambda: build_cmmd(root, table=table), output, as_json, max_rows, fail_on_unresolved)


@command.command("ddsm")
@_set_options
@click.option(
    "--unverified-views",
    type=click.Choice(["exclude", "normal"]),
    default="exclude",
    show_default=True,
    help="Views without an overlay in abnormal cases: left out (listed), or labelled normal.",
)
@click.option(
    "--unproven",
    type=click.Choice(["exclude", "benign", "malignant"]),
    default="exclude",
    show_default=True,
    help="Overlays whose pathology is UNPROVEN: left out (listed), or counted as benign/malignant.",
)
@_mask_options
@click.option(
    "--case-types",
    default=None,
    help="Only these volumes, comma-separated: normals, benigns, cancers, "
    "benign_without_callbacks (e.g. 'normals' for the paper's normal class). Default: all.",
)
def ddsm(
    ctx,
    root,
    output,
    unverified_views,
    unproven,
    mask_dir,
    no_masks,
    case_types,
    fail_on_unresolved,
    max_rows,
    as_json,
) -> None:
    """Manifest of the original DDSM tree (cases/<type>/<volume>/caseNNNN, .ics + .LJPEG +
    .OVERLAY, plain or gzipped).

    Labels: normals volumes -> normal; overlays: any MALIGNANT -> malignant, BENIGN and
    BENIGN_WITHOUT_CALLBACK -> benign, UNPROVEN by --unproven; views without an overlay in abnormal
    cases by --unverified-views. Overlay outlines become ROI masks for --roi crop|patch.
    """
    from featmammo.datasets.ddsm import build_ddsm

    masks = _masks(output, mask_dir, no_masks)

    def lines(summary: dict) -> list[str]:
        out = [
            "cases      "
            + ", ".join(f"{k} {v}" for k, v in summary["case_types"].items())
            + f"; {summary['missing_ljpeg']} LJPEG missing; {len(summary['gzipped'])} gzipped"
        ]
        if summary["excluded"]:
            out.append(f"excluded   {len(summary['excluded'])} view(s) (unverified/unproven)")
        return out + _mask_lines(summary)

    def build():
        from .options import progress

        with progress("DDSM case folders", unit="cases") as update:
            return build_ddsm(
                root,
                unverified_views=unverified_views,
                unproven=unproven,
                mask_dir=masks,
                case_types=[t.strip() for t in case_types.split(",") if t.strip()]
                if case_types
                else None,
                progress=update,
            )

    _run(
        ctx,
        build,
        output,
        as_json,
        max_rows,
        fail_on_unresolved,
        lines,
    )


@command.command("ddsm-patches")
@_set_options
@click.option(
    "--patch-splits",
    type=click.Choice(["combined", "official"]),
    default="combined",
    show_default=True,
    help="combined: cv10 + test10 -> test, as the set's README says they should be (its cv10 "
    "holds calcifications only, test10 masses only); official: cv10 -> val, test10 -> test as "
    "distributed.",
)
@click.option(
    "--corrupt-records",
    type=click.Choice(["skip", "stop"]),
    default="skip",
    show_default=True,
    help="A damaged TFRecord record (CRC, framing, not a tf.train.Example): skip it and list it "
    "as unresolved, or stop at the first.",
)
def ddsm_patches(
    ctx, root, output, patch_splits, corrupt_records, fail_on_unresolved, max_rows, as_json
) -> None:
    """Manifest of the Kaggle DDSM patch set (training10_*.tfrecords + cv10/test10 .npy pairs),
    one row per patch; a row's path is FILE#INDEX.

    Codes 0-4 -> normal / benign / malignant (abnormality_type calc/mass); training10 -> train,
    cv10/test10 by --patch-splits. The set records no patient: patient_id = the patch.
    """
    from featmammo.datasets.ddsm_patches import build_ddsm_patches

    _run(
        ctx,
        lambda: build_ddsm_patches(
            root, patch_splits=patch_splits, corrupt_records=corrupt_records
        ),
        output,
        as_json,
        max_rows,
        fail_on_unresolved,
    )


@command.command("merge")
@click.argument("manifests", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@output_option
@click.option(
    "--prefix-ids",
    is_flag=True,
    help="Write every image_id as <source>/<image_id> (needed when ids clash).",
)
@click.option("--no-check-paths", is_flag=True, help="Do not check that the images exist.")
@json_option
@click.pass_context
def merge(ctx, manifests, output, prefix_ids, no_check_paths, as_json) -> None:
    """Merge manifests of several sets into one, keeping 'source' (e.g. DDSM normals + CBIS-DDSM
    benign/malignant: the paper's three classes).

    The audit warns when a label comes from one source only: a classifier can then learn the
    source instead of the label.
    """
    from featmammo.datasets.merge import format_lines, merge_manifests

    _run(
        ctx,
        lambda: merge_manifests(manifests, prefix_ids=prefix_ids, check_paths=not no_check_paths),
        output,
        as_json,
        10,
        False,
        format_lines,
    )


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
    from featmammo.datasets.base import format_summary
    from featmammo.datasets.folders import build_folder, folder_summary

    df = build_folder(root, patient_pattern=patient_pattern, source=source)
    summary = folder_summary(df, root, patient_pattern=patient_pattern, source=source)
    text = format_summary(summary, output, lines=[f"patient_id from {summary['patient_id']}"])
    _finish(df, summary, output, as_json, text)
