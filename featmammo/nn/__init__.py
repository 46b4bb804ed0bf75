"""featmammo.nn: HybridNet (end-to-end ResNet50 + AlexNet fusion), its training loop, checkpoints,
Grad-CAM, and the use of a trained checkpoint as a ``hybrid:PATH`` backbone. Imports torch.
"""

from __future__ import annotations

from .backbone import HybridBackbone, load_backbone
from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .model import FUSIONS, TRUNKS, HybridNet
from .train import TrainConfig, TrainResult, features_name, predict_arrays, train

__all__ = [
    "FUSIONS",
    "TRUNKS",
    "HybridBackbone",
    "HybridNet",
    "TrainConfig",
    "TrainResult",
    "explain",
    "features_name",
    "grad_cam",
    "load_backbone",
    "load_checkpoint",
    "load_model",
    "predict_arrays",
    "save_checkpoint",
    "train",
]


def __getattr__(name: str):
    if name in ("explain", "grad_cam"):  # matplotlib only when asked for
        from . import gradcam

        return getattr(gradcam, name)
    raise AttributeError(f"module 'featmammo.nn' has no attribute {name!r}")
