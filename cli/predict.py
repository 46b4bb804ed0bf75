"""``featmammo predict MODEL INPUT...``: classify images or store rows with a fitted model."""

from __future__ import annotations

import click

from .options import (
    decoder_option,
    device_option,
    echo_json,
    json_option,
    no_cache_option,
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
@json_option
def command(
    model, inputs, output, laterality, batch_size, workers, no_cache, decoder, device, as_json
) -> None:
    """Predict with MODEL (RUN_DIR/models/<features>__<head>.joblib) on INPUT image files or
    folders, manifest CSVs (their laterality and roi_mask_path columns are used, as at
    extraction), or stores (.h5, whose backbone provenance must match the model's).

    Images are read, preprocessed and embedded with the backbones, weights and preprocessing the
    model was fit on (all recorded in its sidecar). Output columns: image_id, path, y_pred,
    p_<class>... (and error, for images that could not be read). Images stream through in
    batches; a labelled input with a class the model lacks (a normal image given to a
    benign/malignant model) is warned about.
    """
    from featmammo.fit.predict import predict

    df = predict(
        model, list(inputs), device=device, laterality=laterality, batch_size=batch_size,
        workers=workers, cache=False if no_cache else None, decoder=decoder,
    )  # fmt: skip
    if output:
        df.to_csv(output, index=False)
    if as_json:
        echo_json(df.to_dict(orient="records"))
    elif not output:
        click.echo(df.to_csv(index=False), nl=False)
    else:
        click.echo(f"{len(df)} prediction(s) written to {output}")
