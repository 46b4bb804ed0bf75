"""Global pooling of a CNN's last feature map: average (the default) or GeM.

``pool="avg"`` is what every backbone did before this option existed (torchvision's
``avgpool``, timm's ``global_pool``, Mammo-CLIP's ``_avg_pooling``), so it is left out of a
spec's dict and existing store identities do not change. ``pool="gem"`` is generalised-mean
pooling with a fixed ``p = 3`` and ``eps = 1e-6``, exactly as Mammo-CLIP's ``GeM`` module and the
RSNA 2023 winners' heads compute it::

    gem(x) = mean_{h,w}( clamp(x, min=eps) ** p ) ** (1 / p)

It is computed in float32 even under a bfloat16/float16 autocast (``x ** 3`` overflows float16
above ~40). Values below ``eps`` are clamped, as in the reference: on features that can be
negative (ConvNeXt before its head's LayerNorm, say) GeM ignores the negative part.

:func:`replace_global_pool` swaps a model's global-average-pool module for :class:`GeM`; a model
without one (fully connected fc7, token features of a ViT) is refused with a ConfigError.
"""

from __future__ import annotations

import torch
from torch import nn

from featmammo.errors import ConfigError

POOLS = ("avg", "gem")
DEFAULT_POOL = "avg"
GEM_P = 3.0
GEM_EPS = 1e-6


def check_pool(pool, name: str = "backbone") -> str:
    """``pool`` as one of :data:`POOLS` (None means the default); ConfigError otherwise."""
    value = DEFAULT_POOL if pool is None else str(pool).strip().lower()
    if value not in POOLS:
        raise ConfigError(f"{name}: pool must be one of {', '.join(POOLS)}, got {pool!r}")
    return value


def gem(x: torch.Tensor, p: float = GEM_P, eps: float = GEM_EPS) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 1, 1) generalised mean over H and W, computed in float32."""
    with torch.autocast(x.device.type, enabled=False):
        x = x.float().clamp(min=eps).pow(p)
        return x.mean(dim=(-2, -1), keepdim=True).pow(1.0 / p)


class GeM(nn.Module):
    """Generalised-mean global pooling, fixed ``p`` (no parameters: nothing to load or train)."""

    def __init__(self, p: float = GEM_P, eps: float = GEM_EPS):
        super().__init__()
        self.p, self.eps = float(p), float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p:g}, eps={self.eps:g}"


def reduce_map(x: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, C) by ``pool`` (avg or gem)."""
    if pool == "gem":
        return gem(x).flatten(1)
    return x.mean(dim=(2, 3))


def _is_global_avg(module: nn.Module) -> bool:
    if not isinstance(module, nn.AdaptiveAvgPool2d):
        return False
    size = module.output_size
    return size in (1, (1, 1), [1, 1])


def replace_global_pool(model: nn.Module, candidates, name: str, hint: str | None = None) -> str:
    """Replace the first of ``candidates`` (qualified module names) that is a global
    ``AdaptiveAvgPool2d(1)`` in ``model`` with :class:`GeM`; return its name.

    ConfigError naming the backbone when none is: its embedding is not a global average of a
    feature map, so GeM has nothing to replace (``hint`` says why, in the family's words).
    """
    for qualname in candidates:
        try:
            module = model.get_submodule(qualname)
        except AttributeError:
            continue
        if _is_global_avg(module):
            parent_name, _, child = qualname.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if isinstance(parent, nn.Sequential) and child.isdigit():
                parent[int(child)] = GeM()
            else:
                setattr(parent, child, GeM())
            return qualname
    hint = hint or (
        "its embedding is a fully connected layer such as fc7, or token features; use a layer "
        "that is a feature map (layer='features' for alexnet/vgg16, 'layer4' for a ResNet)"
    )
    raise ConfigError(
        f"{name}: pool='gem' replaces a global average pool over the last feature map, and this "
        f"backbone has none ({hint}); use pool='avg' for it"
    )
