"""``featmammo predict MODEL INPUT...``: classify images or store rows with a fitted model or a
HybridNet checkpoint."""

from __future__ import annotations

import click

from .options import (
    decoder_option,
    device_option,
    echo_json,
    json_option,
    no_cache_option,
    progress,
    stage,
    workers_option,
)


@click.command("predict")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "-o", "--output", default=None, type=click.Path(dir_okay=False),
    help="Write the predictions CSV here (default: print it).",
)  # fmt: skip
@click.option(
    "--laterality",
    type=click.Choice(["L", "R"]),
    default=None,
    help="Breast side of loose image files (default: DICOM header, else inferred from the pixels).",
)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@workers_option
@no_cache_option
@decoder_option
@device_option
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Load an old .joblib model (a pickle: loading it runs any code the file holds; only for "
    "files you trust). Models saved since featmammo's skops format load without it.",
)
@json_option
def command(
    model, inputs, output, laterality, batch_size, workers, no_cache, decoder, device,
    trust_pickle, as_json,
) -> None:  # fmt: skip
    """Predict with MODEL on INPUT image files or folders, manifest CSVs (their laterality and
    roi_mask_path columns are used, as at extraction), or stores (.h5, whose backbone provenance
    must match the model's).

    MODEL is a head saved by `featmammo fit` (RUN_DIR/models/<features>__<head>.skops; an old
    .joblib only with --trust-pickle) or a HybridNet checkpoint saved by `featmammo train`
    (RUN_DIR/checkpoint.pt: images, folders and manifests, end to end).

    Images are read and preprocessed as the model was trained (backbones, weights and
    preprocessing recorded in its sidecar). Output columns: image_id, path, y_pred, p_<class>...,
    error (images that could not be read), trained_on (True for rows the model was trained on,
    whose scores are optimistic; empty for loose files). Images stream through in batches; a
    labelled input with a class the model lacks (a normal image given to a benign/malignant
    model) is warned about.
    """
    from featmammo.fit.predict import predict

    with progress("predict", unit="images") as update:
        df = predict(
            model, list(inputs), device=device, laterality=laterality, batch_size=batch_size,
            workers=workers, cache=False if no_cache else None, decoder=decoder,
            trust_pickle=trust_pickle, progress=update,
        )  # fmt: skip
    trained = int(df["trained_on"].fillna(False).sum()) if "trained_on" in df else 0
    failed = int((df["error"] != "").sum()) if "error" in df else 0
    stage(
        f"predict: {len(df)} row(s)"
        + (f", {failed} unreadable" if failed else "")
        + (f", {trained} the model was trained on (trained_on)" if trained else "")
        + (f" -> {output}" if output else "")
    )
    if output:
        df.to_csv(output, index=False)
    if as_json:
        echo_json(df.astype(object).where(df.notna(), None).to_dict(orient="records"))
    elif not output:
        click.echo(df.to_csv(index=False), nl=False)
