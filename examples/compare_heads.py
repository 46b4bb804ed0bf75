"""Compare classifier heads on stored embeddings with patient-grouped cross-validation.

    python examples/compare_heads.py STORE.h5 [FEATURES] [HEADS]
    python examples/compare_heads.py cache/stores/cbis.h5 hybrid logreg,svm-linear,xgboost

STORE.h5 comes from ``featmammo extract`` (or, to try this script without images,
``python benchmarks/compare_heads.py --make-store /tmp/synthetic.h5``). FEATURES is a backbone
name, ``hybrid`` or ``resnet50+alexnet``. Every fold is patient-disjoint: images of one patient
never sit on both sides. For bootstrap confidence intervals, baselines and a report use
``featmammo fit``; this script shows the moving parts.
"""

import sys

import numpy as np
import pandas as pd

from featmammo import heads, store
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
for name in head_names:
    proba = np.zeros((len(y), len(classes)))
    for train, val in folds:
        # a fresh head per fold: its scaler (and per-block scaling) learns from this fold only
        model = heads.make(name, seed=0, blocks=fused.blocks if len(fused.blocks) > 1 else None)
        model.fit(fused.X[train], y[train])
        p = model.predict_proba(fused.X[val])
        for j, c in enumerate(model.classes_):  # a class absent from a training fold stays at 0
            proba[val, classes.index(c)] = p[:, j]
    pred = np.array(classes, dtype=object)[proba.argmax(axis=1)]
    m = compute_metrics(y, pred, proba, classes)
    rows.append(
        {
            "head": name,
            "balanced_accuracy": m["balanced_accuracy"],
            "macro_f1": m["macro_f1"],
            "roc_auc_ovr": m["roc_auc_ovr"],
            "imbalance handling": heads.describe(name).imbalance.split(":")[0],
        }
    )

table = pd.DataFrame(rows).sort_values("balanced_accuracy", ascending=False)
print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
