"""Backbones: a registry of feature extractors and their weights (torch).

``make(name, weights=..., layer=..., device=..., pool=...)`` returns an eval-mode
``torch.nn.Module`` whose ``forward(x: (B,3,H,W)) -> (B, spec.dim)`` float32 and whose ``.spec``
(:class:`BackboneSpec`) records name, arch, layer, dim, input size, mean/std, pooling and the
weights' identity and SHA-256. ``available()`` lists the torchvision names; ``timm:NAME`` and
``mammoclip:CHECKPOINT`` name timm models and the Mammo-CLIP image encoder. Before building,
``check_weights(names, weights)`` names every missing weights file at once; before reading images,
``check_input_size(models, (H, W))`` refuses fixed-size networks (ViTs) at another size.

Modules: :mod:`.registry` (registry and factory), :mod:`.arch` (model surgery), :mod:`.pooling`
(avg / GeM), :mod:`.weights` (weight files, hashes, offline rules), :mod:`.manage` (the
``featmammo weights`` operations), :mod:`.timm_models` and :mod:`.mammoclip` (the ``timm:`` and
``mammoclip:`` providers, imported on first use).
"""

from __future__ import annotations

from .pooling import POOLS
from .registry import (
    BackboneSpec,
    Recipe,
    available,
    check_input_size,
    check_weights,
    fixed_input_shape,
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
    "POOLS",
    "Recipe",
    "TorchvisionWeights",
    "available",
    "check_input_size",
    "check_weights",
    "checkpoints_dir",
    "fixed_input_shape",
    "load_weights",
    "make",
    "prepare_for_inference",
    "recipe",
    "register",
    "registered",
    "spec",
]
