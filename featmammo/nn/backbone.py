"""A trained HybridNet checkpoint used as a feature extractor (``hybrid:PATH`` backbones).

:func:`load_backbone` verifies the checkpoint (SHA-256 sidecar, ``weights_only`` load), rebuilds the
network and returns an eval-mode module whose ``forward(x)`` is the fused penultimate vector and
whose ``.spec`` is a :class:`featmammo.backbones.BackboneSpec`. Importing this module registers
:func:`make_hybrid` for ``hybrid:PATH`` names with the backbone registry (the arrow points from
``nn`` to ``backbones``; :mod:`featmammo.plugins` tells the registry to import this module), so
``featmammo extract MANIFEST -b hybrid:RUN_DIR/checkpoint.pt`` works.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from featmammo.backbones.registry import PENULTIMATE, BackboneSpec, register_prefix
from featmammo.errors import ConfigError
from featmammo.plugins import HYBRID_PREFIX

from .checkpoint import load_model

log = logging.getLogger(__name__)


class HybridBackbone(nn.Module):
    """Wraps a trained HybridNet: ``forward(x) -> (B, dim)`` = ``HybridNet.forward_features``."""

    def __init__(self, net, spec, sidecar: dict):
        super().__init__()
        self.net = net
        self.spec = spec
        self.sidecar = sidecar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def train(self, mode: bool = True):
        # a backbone is a frozen feature extractor: batch norm and dropout always in eval mode
        return super().train(False)


def _input_size(pre: dict, meta: dict):
    """The checkpoint's input size: ``N``, or ``(H, W)`` for a non-square one (``--image-size
    HxW``); JSON gives ``[H, W]``, which :func:`featmammo.preprocess.parse_image_size` takes."""
    from featmammo.preprocess import parse_image_size

    return parse_image_size(pre.get("image_size", meta.get("train", {}).get("image_size", 224)))


def load_backbone(path, device="cpu") -> HybridBackbone:
    """Load checkpoint ``path`` (``hybrid:`` prefix allowed) as an eval-mode feature extractor."""
    path = str(path)
    if path.startswith(HYBRID_PREFIX):
        path = path[len(HYBRID_PREFIX) :]
    net, meta = load_model(path, device=device)
    pre = meta.get("preprocess", {})
    spec = BackboneSpec(
        name=f"{HYBRID_PREFIX}{path}",
        arch="hybridnet",
        layer="penultimate",
        dim=int(net.hidden),
        input_size=_input_size(pre, meta),
        mean=tuple(pre.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(pre.get("std", (0.229, 0.224, 0.225))),
        weights=str(Path(path).resolve()),  # absolute: fit may run from another folder
        weights_sha256=meta["sha256"],
    )
    for p in net.parameters():
        p.requires_grad_(False)
    log.info(
        "loaded HybridNet backbone %s (dim %d, sha256 %s)", path, spec.dim, spec.weights_sha256[:12]
    )
    return HybridBackbone(net, spec, meta).eval()


def make_hybrid(name: str, *, weights="imagenet", layer=None, device="cpu") -> HybridBackbone:
    """The registry's loader for ``hybrid:PATH`` names (see :func:`featmammo.backbones.make`)."""
    path = name[len(HYBRID_PREFIX) :] if name.startswith(HYBRID_PREFIX) else name
    if not path:
        raise ConfigError(f"{name!r}: hybrid backbones are named hybrid:PATH_TO_CHECKPOINT")
    if layer not in (None, "", PENULTIMATE):
        raise ConfigError(f"{name}: layer={layer!r} is not supported for HybridNet checkpoints")
    if str(weights) not in ("imagenet", "None"):
        raise ConfigError(
            f"{name}: a HybridNet checkpoint carries its weights; got weights={weights!r}"
        )
    return load_backbone(path, device=device)


register_prefix(HYBRID_PREFIX, make_hybrid)
