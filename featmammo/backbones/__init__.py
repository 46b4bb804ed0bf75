"""Backbones: a registry of feature extractors and their weights (torch).

``make(name, weights=..., layer=..., device=...)`` returns an eval-mode ``torch.nn.Module``
whose ``forward(x: (B,3,H,W)) -> (B, spec.dim)`` float32 and whose ``.spec``
(:class:`BackboneSpec`) records name, arch, layer, dim, input size, mean/std and the weights'
identity and SHA-256. ``available()`` lists the names.

Modules: :mod:`.registry` (registry and factory), :mod:`.arch` (model surgery), :mod:`.weights`
(weight files, hashes, offline rules), :mod:`.manage` (the ``featmammo weights`` operations).
"""

from __future__ import annotations

from .registry import (
    BackboneSpec,
    Recipe,
    available,
    load_weights,
    make,
    prepare_for_inference,
    recipe,
    register,
    registered,
    spec,
)
from .weights import IMAGENET_MEAN, IMAGENET_STD, TorchvisionWeights, checkpoints_dir

__all__ = [
    "BackboneSpec",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Recipe",
    "TorchvisionWeights",
    "available",
    "checkpoints_dir",
    "load_weights",
    "make",
    "prepare_for_inference",
    "recipe",
    "register",
    "registered",
    "spec",
]
