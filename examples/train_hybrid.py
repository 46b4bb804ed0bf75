"""Train the end-to-end HybridNet on a synthetic set and put it beside the classical heads.

Steps (each one a plain library call; the same as the CLI commands in the comments):

1. a CBIS-DDSM-shaped synthetic set        (featmammo synth)
2. embeddings of frozen ResNet50 + AlexNet  (featmammo extract ... -b resnet50 -b alexnet)
3. classical heads on those embeddings       (featmammo fit ...)
4. HybridNet trained end to end              (featmammo train MANIFEST -o RUN_DIR ...)
5. one leaderboard with every model   (featmammo compare FIT_RUN HYBRIDNET_RUN -o OUT): the test
   images both runs hold out, paired patient-clustered comparisons (comparisons.csv), a report.
   HybridNet's ``validation`` rows chose its stopping epoch: they are never ranked (only ``test``
   rows are shown below).

Random weights everywhere (no ImageNet download here): the numbers show the workflow, not the
method's accuracy. Run: ``python examples/train_hybrid.py --out /tmp/fm-example`` (a few minutes on
2 CPU cores at the defaults).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="HybridNet beside the classical heads")
    ap.add_argument("--out", default="cache/examples/train_hybrid")
    ap.add_argument("--n", type=int, default=120, help="synthetic full images")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)

    from featmammo.compare import compare
    from featmammo.datasets.synthetic import write_synthetic_cbis
    from featmammo.extract import extract
    from featmammo.fit import fit
    from featmammo.nn import train
    from featmammo.preprocess import PreprocessConfig

    classes = ("normal", "benign", "malignant")
    data = out / "data"
    if not (data / "manifest.csv").exists():
        write_synthetic_cbis(
            data, args.n, seed=args.seed, size=(256, 160), difficulty=0.2, test_fraction=0.3
        )
    manifest = data / "manifest.csv"

    store = out / "embeddings.h5"
    extract(
        manifest,
        store,
        backbones=("resnet50", "alexnet"),
        weights="random",
        preprocess=PreprocessConfig(image_size=args.image_size),
        device="cpu",
    )
    fit(store, out / "fit", heads=["logreg"], classes=classes, cv=3, seed=args.seed)

    run = out / "hybridnet"
    finished = (run / "checkpoint.pt").exists() and (run / "predictions.csv").exists()
    if not finished:  # a rerun of the example reuses a finished run; an interrupted one resumes
        train(
            manifest,
            run,
            classes=classes,
            epochs=args.epochs,
            batch_size=16,
            image_size=args.image_size,
            weights="random",
            device="cpu",
            seed=args.seed,
            resume=(run / "last.pt").exists(),
        )

    report = compare([out / "fit", run], out / "compare", n_boot=500, seed=args.seed)
    leaderboard = pd.read_csv(report.parent / "leaderboard.csv")
    cols = [
        "features",
        "head",
        "evaluation",
        "n_images",
        "balanced_accuracy",
        "balanced_accuracy_ci_low",
        "balanced_accuracy_ci_high",
        "majority_baseline",
    ]
    rows = leaderboard["evaluation"] == "test"
    if "level" in leaderboard:  # image-level rows (breast/exam levels are in the report)
        rows &= leaderboard["level"].astype(str).isin(["image", "", "nan"])
    table = leaderboard[rows][cols]
    table = table.sort_values("balanced_accuracy", ascending=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nreport: {report}  (comparisons.csv beside it)")


if __name__ == "__main__":
    main()
