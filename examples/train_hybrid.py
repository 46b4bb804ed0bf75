"""Train the end-to-end HybridNet on a synthetic set and put it beside the classical heads.

Steps (each one a plain library call; the same as the CLI commands in the comments):

1. a CBIS-DDSM-shaped synthetic set        (featmammo synth)
2. embeddings of frozen ResNet50 + AlexNet  (featmammo extract ... -b resnet50 -b alexnet)
3. classical heads on those embeddings       (featmammo fit ...)
4. HybridNet trained end to end              (featmammo train MANIFEST -o RUN_DIR ...)
5. one leaderboard with every model, from the two predictions.csv files (same format), each run
   evaluated with its own training class counts (config.json ``train_class_counts``), so every
   majority baseline comes from that run's training part. HybridNet's ``validation`` rows chose its
   stopping epoch: they are left out of the table (only ``test`` rows are shown).

Random weights everywhere (no ImageNet download here): the numbers show the workflow, not the
method's accuracy. Run: ``python examples/train_hybrid.py --out /tmp/fm-example`` (a few minutes on
2 CPU cores at the defaults).
"""

from __future__ import annotations

import argparse
import json
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

    from featmammo.datasets.synthetic import write_synthetic_cbis
    from featmammo.evaluate import evaluate_predictions, read_predictions
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
    resume = (run / "last.pt").exists()
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
        resume=resume,
    )

    tables = []
    for folder in (out / "fit", run):
        counts = json.loads((folder / "config.json").read_text())["train_class_counts"]
        table, _ = evaluate_predictions(
            read_predictions(folder / "predictions.csv"),
            classes,
            n_boot=500,
            seed=args.seed,
            train_counts=counts,
        )
        tables.append(table)
    leaderboard = pd.concat(tables, ignore_index=True)
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
    table = leaderboard[leaderboard["evaluation"] == "test"][cols]
    table = table.sort_values("balanced_accuracy", ascending=False)
    table.to_csv(out / "leaderboard_with_hybridnet.csv", index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nwritten: {out / 'leaderboard_with_hybridnet.csv'}")


if __name__ == "__main__":
    main()
