"""HybridNet: ResNet50 and AlexNet convolutional trunks fused end to end (owned by featmammo.nn).

The two trunks run in parallel on the same input. With ``fusion="feature-map"`` their last
convolutional maps (ResNet50 ``layer4``: 2048 channels, stride 32; AlexNet ``features`` up to the
last ReLU: 256 channels) are average-pooled to the coarser of the two grids (7x7 at 224 px),
concatenated, refined by convolutions (1x1 reduce then 3x3, each with batch norm and ReLU), globally
pooled and classified by a fully connected block (linear, batch norm, ReLU, dropout, linear). With
``fusion="late"`` each trunk is pooled to a vector first and the concatenated vectors go straight to
the fully connected block. ``trunks=("resnet50",)`` or ``("alexnet",)`` gives the single-trunk
variants trained the same way.

``forward`` returns logits; ``predict_proba`` the softmax; ``forward_features`` the fused
penultimate vector (the input of the last linear layer), which is what a trained checkpoint exposes
as a backbone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from featmammo.errors import ConfigError

from .config import FUSIONS, TRUNKS

log = logging.getLogger(__name__)

__all__ = ["FUSIONS", "TRUNKS", "HybridNet"]

TRUNK_CHANNELS = {"resnet50": 2048, "alexnet": 256}


def _load_trunk_weights(model: nn.Module, arch: str, weights: str) -> dict:
    """Load ImageNet or file weights into a torchvision classifier through featmammo.backbones."""
    from featmammo import backbones

    return backbones.load_weights(model, arch, weights)


def _build_trunk(arch: str, weights: str, seed: int | None) -> tuple[nn.Module, dict]:
    """The convolutional part of a torchvision classifier, with weights loaded by
    featmammo.backbones.

    ``weights`` is ``imagenet``, ``random`` (explicit) or a PATH to a state dict; the loading
    (download into the weights cache, SHA-256 checks, key matching) is featmammo.backbones' job,
    reused here.
    """
    import torchvision

    if seed is not None:
        torch.manual_seed(seed)
    full = getattr(torchvision.models, arch)(weights=None)
    info = {"weights": "random", "weights_sha256": None, "seed": seed}
    if weights != "random":
        info = _load_trunk_weights(full, arch, weights)
    if arch == "resnet50":
        trunk = nn.Sequential(
            full.conv1,
            full.bn1,
            full.relu,
            full.maxpool,
            full.layer1,
            full.layer2,
            full.layer3,
            full.layer4,
        )
        return trunk, info
    if arch == "alexnet":
        return nn.Sequential(*list(full.features.children())[:12]), info  # up to the last ReLU
    raise ConfigError(f"unknown trunk {arch!r}; choose from {', '.join(TRUNKS)}")


class HybridNet(nn.Module):
    """End-to-end ResNet50 + AlexNet fusion network (see the module docstring for the layout).

    Parameters
    ----------
    classes: class names, in the order of the logits.
    fusion: ``"feature-map"`` (fuse convolutional maps, then refine) or ``"late"`` (fuse pooled
        vectors).
    trunks: which trunks to run: both (default) or one of them alone.
    weights: ``"imagenet"``, ``"random"`` or a PATH to a state dict for the trunks (for two trunks a
        PATH may also be a mapping ``{"resnet50": PATH, "alexnet": PATH}``).
    refine_channels: channels after the 1x1 reduction and the 3x3 refinement convolution.
    hidden: width of the fully connected layer (and of ``forward_features``).
    dropout: dropout before the last linear layer.
    seed: seeds the random initialisation (trunks and head), so the same seed gives the same
        network.
    """

    def __init__(
        self,
        classes: Sequence[str],
        *,
        fusion: str = "feature-map",
        trunks: Sequence[str] = TRUNKS,
        weights: str | dict = "imagenet",
        refine_channels: tuple[int, int] = (512, 256),
        hidden: int = 256,
        dropout: float = 0.5,
        seed: int | None = 0,
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {fusion!r}; choose from {', '.join(FUSIONS)}")
        trunks = tuple(trunks)
        if not trunks or any(t not in TRUNKS for t in trunks) or len(set(trunks)) != len(trunks):
            raise ConfigError(f"trunks must be a non-empty subset of {TRUNKS}, got {trunks!r}")
        classes = tuple(str(c) for c in classes)
        if len(classes) < 2:
            raise ConfigError(f"need at least two classes, got {classes!r}")
        self.classes = classes
        self.fusion = fusion
        self.trunk_names = trunks
        self.hidden = int(hidden)
        self._trunks_frozen = False

        built = {}
        #: per trunk: the weights' identity and SHA-256 as reported by featmammo.backbones
        self.trunk_weights: dict[str, dict] = {}
        for i, name in enumerate(trunks):
            w = weights.get(name, "random") if isinstance(weights, dict) else weights
            built[name], self.trunk_weights[name] = _build_trunk(
                name, str(w), None if seed is None else seed + i
            )
        self.trunks = nn.ModuleDict(built)

        if seed is not None:
            torch.manual_seed(seed + 101)
        in_ch = sum(TRUNK_CHANNELS[t] for t in trunks)
        if fusion == "feature-map":
            c1, c2 = refine_channels
            self.refine = nn.Sequential(
                nn.Conv2d(in_ch, c1, kernel_size=1, bias=False),
                nn.BatchNorm2d(c1),
                nn.ReLU(inplace=True),
                nn.Conv2d(c1, c2, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c2),
                nn.ReLU(inplace=True),
            )
            fc_in = c2
        else:
            self.refine = None
            fc_in = in_ch
        self.fc = nn.Sequential(
            nn.Linear(fc_in, self.hidden),
            nn.BatchNorm1d(self.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.classifier = nn.Linear(self.hidden, len(classes))

    # -- structure ---------------------------------------------------------------------------------
    def trunk_parameters(self):
        return [p for t in self.trunks.values() for p in t.parameters()]

    def head_parameters(self):
        trunk_ids = {id(p) for p in self.trunk_parameters()}
        return [p for p in self.parameters() if id(p) not in trunk_ids]

    def freeze_trunks(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the trunks; frozen trunks also keep their batch-norm statistics."""
        self._trunks_frozen = bool(frozen)
        for p in self.trunk_parameters():
            p.requires_grad_(not frozen)
        if frozen:
            for t in self.trunks.values():
                t.eval()
        elif self.training:
            for t in self.trunks.values():
                t.train()

    @property
    def trunks_frozen(self) -> bool:
        return self._trunks_frozen

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self._trunks_frozen:
            for t in self.trunks.values():
                t.eval()
        return self

    # -- forward -----------------------------------------------------------------------------------
    def forward_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each trunk's last convolutional map, and ``fused`` (the refined map, feature-map
        fusion)."""
        maps = {name: trunk(x) for name, trunk in self.trunks.items()}
        if self.refine is not None:
            h = min(m.shape[-2] for m in maps.values())
            w = min(m.shape[-1] for m in maps.values())
            grid = [
                m if m.shape[-2:] == (h, w) else F.adaptive_avg_pool2d(m, (h, w))
                for m in maps.values()
            ]
            maps["fused"] = self.refine(torch.cat(grid, dim=1))
        return maps

    def _pooled(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.refine is not None:
            return torch.flatten(F.adaptive_avg_pool2d(maps["fused"], 1), 1)
        return torch.cat(
            [torch.flatten(F.adaptive_avg_pool2d(maps[t], 1), 1) for t in self.trunk_names], dim=1
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The fused penultimate vector (B, hidden): the input of the last linear layer."""
        return self.fc(self._pooled(self.forward_maps(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, n_classes)."""
        return self.classifier(self.forward_features(x))

    def forward_from_maps(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits from maps computed by :meth:`forward_maps` (used by Grad-CAM)."""
        return self.classifier(self.fc(self._pooled(maps)))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (B, n_classes), computed in eval mode (restores the previous
        mode)."""
        was_training = self.training
        self.eval()
        try:
            return torch.softmax(self(x).float(), dim=1)
        finally:
            self.train(was_training)

    def config(self) -> dict:
        """The constructor arguments that rebuild this architecture (weights excluded)."""
        c1, c2 = (
            (self.refine[0].out_channels, self.refine[3].out_channels)
            if self.refine is not None
            else (512, 256)
        )
        return {
            "classes": list(self.classes),
            "fusion": self.fusion,
            "trunks": list(self.trunk_names),
            "refine_channels": [c1, c2],
            "hidden": self.hidden,
            "dropout": float(self.fc[3].p),
        }

    @classmethod
    def from_config(cls, config: dict) -> HybridNet:
        """Rebuild the architecture (random weights, no download) for loading a state dict."""
        return cls(
            config["classes"],
            fusion=config["fusion"],
            trunks=tuple(config["trunks"]),
            weights="random",
            refine_channels=tuple(config["refine_channels"]),
            hidden=config["hidden"],
            dropout=config["dropout"],
            seed=None,
        )


class Probabilities(nn.Module):
    """A trained HybridNet whose ``forward(x)`` is its class probabilities (B, n_classes): how
    ``featmammo predict CHECKPOINT`` streams images through extraction's reader and batches
    (:func:`featmammo.extract.embed_stream` runs it as its one model). Always in eval mode."""

    def __init__(self, net: HybridNet):
        super().__init__()
        self.net = net.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x).float(), dim=1)

    def train(self, mode: bool = True):
        return super().train(False)
