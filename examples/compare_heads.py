"""Compare classifier heads on stored embeddings with patient-grouped cross-validation.

    python examples/compare_heads.py STORE.h5 [FEATURES] [HEADS]
    python examples/compare_heads.py cache/stores/cbis.h5 hybrid logreg,svm-linear,xgboost

STORE.h5 comes from ``featmammo extract`` (or, to try this script without images,
``python benchmarks/compare_heads.py --make-store /tmp/synthetic.h5``). FEATURES is a backbone
name, ``hybrid`` or ``resnet50+alexnet``. Every fold is patient-disjoint: images of one patient
never sit on both sides. Each head is scored twice: at its fixed defaults, and tuned by a nested
patient-grouped CV (``featmammo.tuning``: inside every outer fold an inner 3-fold CV of that fold's
training rows picks the grid point; the small grid keeps this example quick). For bootstrap
confidence intervals, baselines and a report use ``featmammo fit`` (which tunes the same way and
writes every grid point to tuning.csv); this script shows the moving parts.
"""

import sys

import numpy as np
import pandas as pd

from featmammo import heads, store, tuning
from featmammo.evaluate import compute_metrics
from featmammo.fusion import fuse
from featmammo.splits import grouped_kfold

path = sys.argv[1]
features = sys.argv[2] if len(sys.argv) > 2 else "hybrid"
head_names = sys.argv[3].split(",") if len(sys.argv) > 3 else ["logreg", "svm-linear", "knn", "rf"]

fused = fuse(store.open(path), features)  # rows joined by image id; blocks = column slices
y, patients = fused.y, fused.groups
classes = sorted(set(y))
folds = grouped_kfold(y, patients, k=5, seed=0)  # stratified and patient-disjoint
print(f"{features}: {fused.X.shape[0]} images x {fused.X.shape[1]} features, blocks {fused.blocks}")
print(f"{len(set(patients))} patients, {len(folds)} folds, classes {classes}")

rows = []
blocks = fused.blocks  # one scaling rule: a single backbone is a one-block set
for name in head_names:
    for mode in ("defaults", "tuned"):
        proba = np.zeros((len(y), len(classes)))
        chosen_all = []
        for train, val in folds:
            chosen = {}
            if mode == "tuned":  # inner patient-grouped CV on this outer fold's training rows
                inner = tuning.InnerCV(fused.X[train], y[train], patients[train],
                                       grouped_kfold(y[train], patients[train], k=3, seed=0),
                                       blocks=blocks)  # fmt: skip
                chosen, _ = tuning.tune(inner, name, tuning.SMALL_GRIDS[name], classes=classes)
                chosen_all.append(tuning.params_json(chosen))
            # a fresh head per fold: its scaler learns from this fold only
            model = heads.make(name, seed=0, blocks=blocks, **chosen)
            heads.fit_head(model, fused.X[train], y[train], patients[train])  # grouped early stop
            proba[val] = tuning.proba_in(model, fused.X[val], classes)
        pred = np.array(classes, dtype=object)[proba.argmax(axis=1)]
        m = compute_metrics(y, pred, proba, classes)
        rows.append(
            {
                "head": name,
                "hyperparameters": mode,
                "balanced_accuracy": m["balanced_accuracy"],
                "macro_f1": m["macro_f1"],
                "roc_auc_ovr": m["roc_auc_ovr"],
                "chosen": ", ".join(sorted(set(chosen_all))),
            }
        )

table = pd.DataFrame(rows).sort_values("balanced_accuracy", ascending=False)
print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
