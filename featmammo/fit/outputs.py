"""The run folder of :func:`featmammo.fit.fit`: staging, installing over an earlier run, model
file names and the sidecar saved beside every model."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger("featmammo.fit")  # the logger name of the fit run, as before the split

MODELS = "models"


def model_filename(features: str, head: str) -> str:
    """``<features>__<head>.skops`` (:func:`featmammo.heads.save`'s format) with characters unsafe
    in file names replaced."""
    from ..heads.io import MODEL_SUFFIX

    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{features}__{head}")
    return f"{safe}{MODEL_SUFFIX}"


#: what a fit writes into RUN_DIR (replaced as a whole by the next fit into the same folder)
RUN_OUTPUTS = ("predictions.csv", "tuning.csv", "images.csv", "config.json", "leaderboard.csv",
               "metrics.json", "report.md", "figures", MODELS)  # fmt: skip


def _staging_dir(final_dir: Path) -> Path:
    """A fresh sibling folder of RUN_DIR to write the run into (same file system: atomic moves)."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    if final_dir.exists() and not final_dir.is_dir():
        raise ConfigError(f"-o {final_dir}: exists and is not a folder")
    staging = final_dir.parent / f".{final_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _install_run(staging: Path, final_dir: Path) -> None:
    """Move a finished run into RUN_DIR, replacing the outputs of an earlier fit there (so no
    stale model or figure of another run sits beside this run's report); other files are kept."""
    final_dir.mkdir(parents=True, exist_ok=True)
    old = [n for n in RUN_OUTPUTS if (final_dir / n).exists()]
    if old:
        log.warning("%s: replacing the outputs of an earlier fit (%s)", final_dir, ", ".join(old))
    for name in old:
        target = final_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    for item in staging.iterdir():
        os.replace(item, final_dir / item.name)
    staging.rmdir()


def _sidecar(
    features, head, fused, classes, stores_info, seed, head_params, block_scaling, counts,
    *, tuned=None, tune="none",
):  # fmt: skip
    provenance = {k: v for k, v in fused.provenance.items() if k != "_stores"}
    return {
        "kind": "featmammo.fit",
        "head": head,
        "head_params": {**head_params.get(head, {}), **(tuned or {})},
        "tuned_params": dict(tuned or {}),
        "tune": tune,
        "features": features,
        "backbones": list(fused.blocks),
        "blocks": {k: [s.start, s.stop] for k, s in fused.blocks.items()},
        "n_features": int(fused.X.shape[1]),
        "classes": list(classes),
        "backbone_provenance": provenance,
        "stores": stores_info,
        "block_stores": fused.provenance.get("_stores", {}),
        "seed": seed,
        "block_scaling": block_scaling,
        "train_class_counts": {str(k): int(v) for k, v in counts.items()},
    }
