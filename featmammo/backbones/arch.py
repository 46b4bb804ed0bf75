"""torchvision architectures as feature extractors: build, cut the classifier, tap a layer.

This module owns the model surgery behind :func:`featmammo.backbones.make`:

- :func:`build` constructs a torchvision classifier with the architecture variant its reference
  ImageNet weights need (e.g. ``inception_v3`` with ``transform_input=True``), either on the
  ``meta`` device (no init cost; weights are assigned afterwards) or on the CPU with a seeded
  random init;
- :func:`strip_head` replaces the final classification layer (and any Dropout right before it) with
  ``Identity`` so the model returns its penultimate features; auxiliary heads are removed;
- :func:`tap` turns a model into an extractor of another layer with
  ``torchvision.models.feature_extraction.create_feature_extractor``;
- :class:`Features` is the module ``make`` returns: ``forward(x) -> (B, dim)`` float32.

Reduction of a tapped layer: 4-D outputs (B, C, H, W) are globally pooled to (B, C) -- averaged,
or GeM-pooled with ``pool="gem"`` (:mod:`.pooling`); 3-D token outputs (B, N, C) are averaged over
tokens; 2-D outputs are returned as they are.
The 4-D rule assumes NCHW, which holds for torchvision's CNNs; for Swin (NHWC inside) use the
default penultimate layer.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from featmammo.errors import ConfigError

from .pooling import reduce_map
from .weights import TorchvisionWeights

log = logging.getLogger(__name__)

# auxiliary classifier heads: never part of the features; their weights are ignored when loading
AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


def builder_kwargs(arch: str, ref: TorchvisionWeights, *, random_init: bool) -> dict:
    """The constructor arguments torchvision itself uses with ``ref`` (kept for random weights too,
    so the architecture does not depend on where its weights came from)."""
    kw: dict = {"num_classes": len(ref.meta.get("categories") or range(1000))}
    if arch in ("googlenet", "inception_v3"):
        kw.update(transform_input=True, aux_logits=True, init_weights=random_init)
    elif arch.startswith("vit_") and ref.meta.get("min_size"):
        kw["image_size"] = int(ref.meta["min_size"][0])
    elif arch == "maxvit_t" and ref.meta.get("min_size"):
        kw["input_size"] = tuple(ref.meta["min_size"])
    return kw


def build(arch: str, kwargs: dict, *, seed: int | None = None, meta: bool = False) -> nn.Module:
    """Construct ``arch``: on the meta device (``meta=True``) or on the CPU with ``seed``-ed init.

    A seeded build does not disturb the caller's global RNG state.
    """
    import torchvision.models as tvm

    if meta:
        try:
            with torch.device("meta"):
                return tvm.get_model(arch, weights=None, **kwargs)
        except (NotImplementedError, RuntimeError) as exc:  # e.g. RegNet reads values at init
            log.debug("%s cannot be built on the meta device (%s); building on the CPU", arch, exc)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if seed is None else int(seed))
        return tvm.get_model(arch, weights=None, **kwargs)


def _set_submodule(root: nn.Module, qualname: str, new: nn.Module) -> None:
    parent_name, _, child = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def strip_head(model: nn.Module, arch: str) -> tuple[int, tuple[str, ...]]:
    """Remove the final classifier layer in place; return (penultimate dim, ignored key prefixes).

    The final layer is the last registered ``nn.Linear`` (the last 1x1 ``Conv2d`` for SqueezeNet).
    Dropout layers directly before it in the same ``Sequential`` are replaced too, so the output is
    identical in train and eval mode (e.g. VGG16 ends at the fc7 ReLU).
    """
    ignored = list(AUX_PREFIXES)
    for attr in ("aux1", "aux2", "AuxLogits"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if hasattr(model, "aux_logits"):
        model.aux_logits = False

    if arch.startswith("squeezenet"):
        conv = model.classifier[1]
        model.classifier = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)))
        ignored.append("classifier.")
        return int(conv.in_channels), tuple(ignored)

    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{arch}: no final nn.Linear classifier found; use layer=NODE instead")
    qualname, head = linears[-1]
    _set_submodule(model, qualname, nn.Identity())
    ignored.append(qualname + ".")
    parent_name, _, child = qualname.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential) and child.isdigit():
        i = int(child) - 1
        while i >= 0 and isinstance(parent[i], nn.Dropout):
            parent[i] = nn.Identity()
            i -= 1
    elif isinstance(getattr(parent, "dropout", None), nn.Dropout):
        parent.dropout = nn.Identity()  # GoogLeNet / Inception: dropout before fc
    return int(head.in_features), tuple(ignored)


def node_names(model: nn.Module) -> list[str]:
    from torchvision.models.feature_extraction import get_graph_node_names

    return get_graph_node_names(model)[1]


def tap(model: nn.Module, node: str, arch: str) -> nn.Module:
    """A GraphModule returning ``{'out': <node output>}`` (FX; the node must exist in eval mode)."""
    from torchvision.models.feature_extraction import create_feature_extractor

    names = node_names(model)
    if node not in names and not any(n.startswith(node + ".") for n in names):
        import difflib

        top = [n for n, _ in model.named_children()]
        close = difflib.get_close_matches(node, names, n=4)
        raise ConfigError(
            f"{arch}: no layer {node!r}; pass a torchvision node or module name: "
            + ", ".join(dict.fromkeys(close + top))
        )
    return create_feature_extractor(model, return_nodes={node: "out"})


def reduce_features(out, pool: str = "avg") -> torch.Tensor:
    """(B, C, H, W) -> global average (or GeM, ``pool="gem"``) (B, C); (B, N, C) -> token mean
    (B, C); (B, D) unchanged."""
    if isinstance(out, dict):
        out = out["out"]
    if out.ndim == 4:
        out = reduce_map(out, pool)
    elif out.ndim == 3:
        out = out.mean(dim=1)
    elif out.ndim != 2:
        out = out.flatten(1)
    return out


def probe_out(body: nn.Module, input_size: int) -> torch.Tensor:
    """The raw output of a meta-device ``body`` for one meta image (no compute)."""
    with torch.no_grad():
        out = body(torch.empty(1, 3, input_size, input_size, device="meta"))
    return out["out"] if isinstance(out, dict) else out


def probe_dim(body: nn.Module, input_size: int) -> int:
    """The feature width of a meta-device ``body``: one forward of a meta tensor (no compute)."""
    return int(reduce_features(probe_out(body, input_size)).shape[1])


class Features(nn.Module):
    """A backbone as a feature extractor: ``forward(x: (B,3,H,W)) -> (B, spec.dim)`` float32.

    ``body`` is the torchvision model with its classifier cut (or an FX extractor for a layer tap);
    ``spec`` is the :class:`~featmammo.backbones.BackboneSpec` recorded with every embedding;
    ``pool`` how a 4-D tap is reduced (a body that pools itself returns 2-D features).
    """

    def __init__(self, body: nn.Module, spec, pool: str = "avg"):
        super().__init__()
        self.body = body
        self.spec = spec
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reduce_features(self.body(x), self.pool).float()

    def extra_repr(self) -> str:
        s = self.spec
        return f"name={s.name!r}, layer={s.layer!r}, dim={s.dim}, weights={s.weights!r}"
