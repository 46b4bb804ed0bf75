"""``featmammo synth OUT``: write a synthetic CBIS-DDSM-shaped data set (phantoms, no patients)."""

from __future__ import annotations

import click

from .options import echo_json, json_option, seed_option


def _parse_size(ctx, param, value: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value.lower().replace("×", "x").split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HxW (e.g. 512x320), got {value!r}") from None
    if h < 16 or w < 16:
        raise click.BadParameter(f"size must be at least 16x16, got {value!r}")
    return h, w


def _parse_classes(ctx, param, value: str) -> tuple[str, ...]:
    classes = tuple(c.strip() for c in value.split(",") if c.strip())
    allowed = ("normal", "benign", "malignant")
    bad = [c for c in classes if c not in allowed]
    if bad or not classes:
        raise click.BadParameter(
            f"classes must be a comma list of {', '.join(allowed)}; got {value!r}"
        )
    return classes


@click.command("synth", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--n",
    "n",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Number of full images (patients get 2-4 views each).",
)
@seed_option
@click.option(
    "--size",
    default="512x320",
    show_default=True,
    callback=_parse_size,
    help="Image size HxW in pixels.",
)
@click.option(
    "--difficulty",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="0 = large, high-contrast lesions; 1 = small, faint lesions in dense texture.",
)
@click.option(
    "--classes",
    default="normal,benign,malignant",
    show_default=True,
    callback=_parse_classes,
    help="Classes to generate (comma-separated).",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Fraction of patients in the official-style test split.",
)
@json_option
def command(out, n, seed, size, difficulty, classes, test_fraction, as_json):
    """Write N synthetic mammograms to OUT in the CBIS-DDSM classic layout.

    OUT gets the official case-description CSVs, <Subject>/<StudyUID>/<SeriesUID>/*.dcm (full
    images, lesion crops, ROI masks), normals/ + normal_cases.csv (normals are a separate synthetic
    source: CBIS-DDSM has none) and manifest.csv, ready for `featmammo extract`.
    """
    import os
    import time

    from featmammo.datasets.synthetic import write_synthetic_cbis

    t0 = time.perf_counter()
    summary = write_synthetic_cbis(
        os.path.expanduser(out),  # a quoted '~/synth' too
        n,
        seed=seed,
        size=size,
        classes=classes,
        difficulty=difficulty,
        test_fraction=test_fraction,
    )
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    if as_json:
        echo_json(summary)
        return
    click.echo(
        f"Wrote {summary['n_images']} synthetic images of {summary['n_patients']} patients "
        f"({size[0]}x{size[1]}, seed {seed}, difficulty {difficulty}) to {out} "
        f"in {summary['seconds']} s"
    )
    click.echo("  labels:  " + ", ".join(f"{k} {v}" for k, v in summary["by_label"].items()))
    click.echo("  splits:  " + ", ".join(f"{k} {v}" for k, v in summary["by_split"].items()))
    click.echo("  sources: " + ", ".join(f"{k} {v}" for k, v in summary["by_source"].items()))
    click.echo(f"  MONOCHROME1 images: {summary['monochrome1']}")
    click.echo(f"  manifest: {summary['manifest']} (every class, normals included: use this one)")
    click.echo(
        "  note: phantoms, not patient data; normals are a separate source (normals/). "
        "`featmammo manifest cbis-ddsm OUT` reads only the CBIS-DDSM part (no normals), as it "
        "would a real download."
    )
    click.echo(f"  next: featmammo extract {summary['manifest']} -o STORE.h5")
