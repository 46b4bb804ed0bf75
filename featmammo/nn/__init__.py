"""featmammo.nn: HybridNet (end-to-end ResNet50 + AlexNet fusion), its training run, checkpoints,
Grad-CAM, and the use of a trained checkpoint as a ``hybrid:PATH`` backbone.

Importing the package (or :mod:`.config`, :mod:`.checkpoint`, :mod:`.train`) does not import torch:
the options, ``train`` itself and the checkpoint sidecar readers (``trained_image_ids``,
``trained_patient_ids``, ``checkpoint_of``, ``read_sidecar``) are plain Python, so ``featmammo
fit`` can check a store's ``hybrid:`` blocks without torch. The network, the loop and Grad-CAM
import torch when first used.
"""

from __future__ import annotations

from .checkpoint import (
    checkpoint_of,
    load_checkpoint,
    load_model,
    read_sidecar,
    save_checkpoint,
    trained_image_ids,
    trained_patient_ids,
)
from .config import FUSIONS, TRUNKS, TrainConfig, TrainResult, features_name
from .train import train

#: names that import torch, resolved on first use: name -> submodule
_LAZY = {
    "HybridNet": "model",
    "HybridBackbone": "backbone",
    "load_backbone": "backbone",
    "predict_arrays": "loop",
    "explain": "gradcam",
    "grad_cam": "gradcam",
}

__all__ = [
    "FUSIONS",
    "TRUNKS",
    "HybridBackbone",
    "HybridNet",
    "TrainConfig",
    "TrainResult",
    "checkpoint_of",
    "explain",
    "features_name",
    "grad_cam",
    "load_backbone",
    "load_checkpoint",
    "load_model",
    "predict_arrays",
    "read_sidecar",
    "save_checkpoint",
    "train",
    "trained_image_ids",
    "trained_patient_ids",
]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featmammo.nn' has no attribute {name!r}")
