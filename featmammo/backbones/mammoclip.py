"""The Mammo-CLIP image encoder as a backbone: ``mammoclip:CHECKPOINT``.

Mammo-CLIP (Ghosh et al., MICCAI 2024; github.com/batmanlab/Mammo-CLIP, checkpoints CC BY 4.0 on
huggingface.co/shawn24/Mammo-CLIP) released two image-text checkpoints,
``b5-model-best-epoch-7.tar`` and ``b2-model-best-epoch-10.tar``: the dict ``torch.save`` wrote
during pre-training, with ``config`` (the run's configuration;
``config["model"]["image_encoder"]["name"]`` names the encoder) and ``model`` (the whole CLIP
model's state dict: ``image_encoder.*``, ``text_encoder.*``, projections, ``logit_scale``),
besides optimizer and scheduler states.

What this module rebuilds, read from that repository (``breastclip/model/modules``):

- ``tf_efficientnet_b5_ns-detect`` -> ``EfficientNet.from_pretrained("efficientnet-b5")`` and
  ``tf_efficientnetv2-detect`` -> ``"efficientnet-b2"``: lukemelas' EfficientNet-PyTorch, copied
  into the repository without its final ``_fc`` layer. Its forward is stem -> 39 (B5) / 23 (B2)
  MBConv blocks -> ``_conv_head`` -> ``_bn1`` -> swish -> ``_avg_pooling`` -> flatten (dropout is
  inactive in eval): a 2048-d (B5) or 1408-d (B2) vector, which is what Mammo-CLIP's
  ``encode_image`` returns for these CNN encoders (the 512-d projection is not applied).
  The network is written here (:class:`EfficientNetEncoder`), with lukemelas' module names so the
  checkpoint's keys load as they are, rather than mapped onto timm's ``tf_efficientnet_*``: those
  pad dynamically ("same" padding from each input's size), while lukemelas builds every
  convolution with *static* "same" padding computed once for the model's nominal resolution
  (456 px for B5, 260 px for B2) and applies those fixed pads to inputs of any size -- on
  Mammo-CLIP's 1520x912 inputs the two differ wherever an odd-sized map meets a stride-2
  convolution. Batch norm uses eps 1e-3 (TensorFlow's), swish is x * sigmoid(x).
- Pooling: global average (``pool="avg"``, as released). ``pool="gem"`` replaces it with GeM, p = 3
  (Mammo-CLIP's GeM module, used by its non-detector ``EfficientNet_Mammo`` variant).
- Preprocessing in Mammo-CLIP: breast crop, resize to 1520x912 (H x W; ``cv2.INTER_AREA``), 8-bit
  PNG read as RGB (three equal channels), scaled to [0, 1] by its own min and max, then
  ``(x - 0.3089279) / 0.25053555408335154``. The spec records that mean/std (per channel), native
  size (1520, 912) and ``area`` interpolation; with ``normalize='backbone'`` featmammo applies the
  mean/std to ``x / max_value``, not to a per-image min-max (equal when an image spans the full
  range), and keeps the aspect ratio (padding) where Mammo-CLIP stretched to 1520x912.

Reading the checkpoint never runs code from it. It is first read with ``torch.load(...,
weights_only=True)``. The released files pickle omegaconf ``ListConfig`` objects inside
``config`` (``convert_dictconfig_to_dict`` converts only the dicts), which ``weights_only``
refuses; then the pickle's global names are listed without executing it
(``torch.serialization.get_unsafe_globals_in_checkpoint``) and the file is read again with the same
``weights_only`` unpickler, each of those names bound to :class:`Inert` -- a placeholder that
accepts any arguments and state and does nothing -- so no class or function named by the file is
imported or called. Tensors are rebuilt by torch's own allow-listed functions. The encoder name is
then read from ``config`` when it is a plain string there; otherwise the encoder is identified from
the weights' shapes (B5's head is 2048 wide, B2's 1408).

Every ``image_encoder.*`` key must match the encoder exactly (names and shapes): missing or
unexpected keys are a WeightsError listing them. The checkpoint's SHA-256 is recorded (and checked
against ``CHECKPOINT.sha256`` or ``sha256=`` when given), as for any weights file.
Importing this module registers :func:`make_mammoclip` for the ``mammoclip:`` prefix.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from featmammo.errors import ConfigError, WeightsError
from featmammo.plugins import MAMMOCLIP_PREFIX

from . import pooling as _pooling
from . import weights as _weights
from .registry import PENULTIMATE, BackboneSpec, register_prefix

log = logging.getLogger(__name__)

LAYER = "image_encoder"
#: Mammo-CLIP's normalisation (configs/pre_train_b*_clip.yaml: base.mean/std) and input size
MEAN = 0.3089279
STD = 0.25053555408335154
INPUT_SIZE = (1520, 912)
ENCODER_PREFIX = "image_encoder."

# lukemelas' efficientnet(): block strings of B0, scaled by width/depth coefficients
_BLOCKS = (
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
)
#: lukemelas model -> (width, depth, nominal resolution)
_PARAMS = {"efficientnet-b2": (1.1, 1.2, 260), "efficientnet-b5": (1.6, 2.2, 456)}
#: Mammo-CLIP's config name -> (lukemelas model, embedding width)
ENCODERS = {
    "tf_efficientnet_b5_ns-detect": ("efficientnet-b5", 2048),
    "tf_efficientnetv2-detect": ("efficientnet-b2", 1408),
}
_BN_MOMENTUM = 0.01  # 1 - 0.99 (TensorFlow's decay), as lukemelas sets it
_BN_EPS = 1e-3


@dataclass(frozen=True)
class _Block:
    repeats: int
    kernel: int
    stride: int
    expand: int
    c_in: int
    c_out: int
    se_ratio: float


def _decode(text: str) -> _Block:
    opts = {}
    for op in text.split("_"):
        m = re.match(r"([a-z]+)(\d.*)", op)
        opts[m.group(1)] = m.group(2)
    return _Block(int(opts["r"]), int(opts["k"]), int(opts["s"][0]), int(opts["e"]),
                  int(opts["i"]), int(opts["o"]), float(opts["se"]))  # fmt: skip


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:  # never round down by more than 10%
        new += divisor
    return int(new)


def _round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def _out_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    return (int(math.ceil(size[0] / stride)), int(math.ceil(size[1] / stride)))


class StaticSameConv2d(nn.Conv2d):
    """lukemelas' ``Conv2dStaticSamePadding``: TensorFlow "same" pads computed once, for the
    nominal input ``image_size``, and applied as they are to any input (no parameters added)."""

    def __init__(self, c_in, c_out, kernel_size, stride=1, groups=1, bias=False, *, image_size):
        super().__init__(c_in, c_out, kernel_size, stride, 0, 1, groups, bias)
        ih, iw = image_size
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        oh, ow = math.ceil(ih / sh), math.ceil(iw / sw)
        pad_h = max((oh - 1) * sh + kh - ih, 0)
        pad_w = max((ow - 1) * sw + kw - iw, 0)
        self.pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        left, right, top, bottom = self.pads
        # symmetric pads are the convolution's own zero padding (no padded copy of the map)
        self.symmetric = left == right and top == bottom
        self.padding = (top, left) if self.symmetric else (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.symmetric:
            x = F.pad(x, self.pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=_BN_MOMENTUM, eps=_BN_EPS)


class MBConvBlock(nn.Module):
    """lukemelas' ``MBConvBlock`` (eval only: drop connect is a training-time operation)."""

    def __init__(self, b: _Block, image_size: tuple[int, int]):
        super().__init__()
        self.block = b
        mid = b.c_in * b.expand
        if b.expand != 1:
            self._expand_conv = StaticSameConv2d(b.c_in, mid, 1, image_size=image_size)
            self._bn0 = _bn(mid)
        self._depthwise_conv = StaticSameConv2d(
            mid, mid, b.kernel, b.stride, groups=mid, image_size=image_size
        )
        self._bn1 = _bn(mid)
        image_size = _out_size(image_size, b.stride)
        squeezed = max(1, int(b.c_in * b.se_ratio))
        self._se_reduce = StaticSameConv2d(mid, squeezed, 1, bias=True, image_size=(1, 1))
        self._se_expand = StaticSameConv2d(squeezed, mid, 1, bias=True, image_size=(1, 1))
        self._project_conv = StaticSameConv2d(mid, b.c_out, 1, image_size=image_size)
        self._bn2 = _bn(b.c_out)
        self.skip = b.stride == 1 and b.c_in == b.c_out  # id_skip is on for every block string

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.block.expand != 1:
            x = F.silu(self._bn0(self._expand_conv(x)))
        x = F.silu(self._bn1(self._depthwise_conv(x)))
        s = F.adaptive_avg_pool2d(x, 1)
        s = self._se_expand(F.silu(self._se_reduce(s)))
        x = torch.sigmoid(s) * x
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class EfficientNetEncoder(nn.Module):
    """lukemelas' ``EfficientNet`` without ``_fc``: ``forward(x) -> (B, C)`` pooled features."""

    def __init__(self, model_name: str):
        super().__init__()
        width, depth, res = _PARAMS[model_name]
        self.model_name = model_name
        image_size = (res, res)
        stem = _round_filters(32, width)
        self._conv_stem = StaticSameConv2d(3, stem, 3, 2, image_size=image_size)
        self._bn0 = _bn(stem)
        image_size = _out_size(image_size, 2)
        blocks = []
        for text in _BLOCKS:
            b = _decode(text)
            b = _Block(_round_repeats(b.repeats, depth), b.kernel, b.stride, b.expand,
                       _round_filters(b.c_in, width), _round_filters(b.c_out, width),
                       b.se_ratio)  # fmt: skip
            blocks.append(MBConvBlock(b, image_size))
            image_size = _out_size(image_size, b.stride)
            rest = _Block(1, b.kernel, 1, b.expand, b.c_out, b.c_out, b.se_ratio)
            blocks += [MBConvBlock(rest, image_size) for _ in range(b.repeats - 1)]
        self._blocks = nn.ModuleList(blocks)
        head = _round_filters(1280, width)
        self._conv_head = StaticSameConv2d(blocks[-1].block.c_out, head, 1, image_size=image_size)
        self._bn1 = _bn(head)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self.out_dim = head

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.silu(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._avg_pooling(self.extract_features(x)).flatten(1)


def build_encoder(encoder: str, *, meta: bool = False) -> EfficientNetEncoder:
    """The encoder a Mammo-CLIP config name stands for (``tf_efficientnet_b5_ns-detect`` ...)."""
    if encoder not in ENCODERS:
        raise ConfigError(
            f"Mammo-CLIP image encoder {encoder!r} is not supported; supported: "
            f"{', '.join(ENCODERS)} (the released B5 and B2 checkpoints)"
        )
    if meta:
        with torch.device("meta"):
            return EfficientNetEncoder(ENCODERS[encoder][0])
    return EfficientNetEncoder(ENCODERS[encoder][0])


# -- reading a checkpoint without running it -----------------------------------------------------


class Inert:
    """Stands in for every global a checkpoint's pickle names beyond torch's ``weights_only``
    allow-list (omegaconf containers, typing objects, numpy scalars ...): accepts any arguments and
    any state, keeps nothing, runs nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __repr__(self) -> str:
        return "<inert placeholder>"


def _reason(exc: Exception) -> str:
    """The informative line of torch's weights_only error (not its advice to drop the check)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keys = ("Trying to", "Unsupported", "Can only", "Unsupported operand")
    return next((ln for ln in lines if ln.startswith(keys)), lines[-1] if lines else repr(exc))


def read_checkpoint(path) -> tuple[dict, list[str]]:
    """The checkpoint's top-level object (a dict) and the globals replaced by :class:`Inert`."""
    load = dict(map_location="cpu", weights_only=True)
    try:
        obj = torch.load(path, **load)
        replaced: list[str] = []
    except Exception as first:  # UnpicklingError, RuntimeError ...: not a plain weights file
        try:
            replaced = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception as exc:
            raise WeightsError(f"{path}: not a torch checkpoint ({exc})") from exc
        if not replaced:
            raise WeightsError(
                f"{path}: cannot be read with weights_only=True ({_reason(first)})"
            ) from first
        try:
            with torch.serialization.safe_globals([(Inert, g) for g in replaced]):
                obj = torch.load(path, **load)
        except Exception as exc:
            raise WeightsError(
                f"{path}: refused: it cannot be read without running code from it "
                f"({_reason(exc)}); its pickle names {', '.join(replaced[:8])}"
            ) from exc
        log.info(
            "%s: read with weights_only=True; %d pickled globals not needed for the encoder "
            "(%s) replaced by inert placeholders, none imported or run",
            path, len(replaced), ", ".join(replaced[:6]) + (" ..." if len(replaced) > 6 else ""),
        )  # fmt: skip
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: not a Mammo-CLIP checkpoint (found {type(obj).__name__})")
    return dict(obj), replaced


def _config_encoder(obj: Mapping) -> str | None:
    node = obj.get("config")
    for key in ("model", "image_encoder", "name"):
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node if isinstance(node, str) else None


def encoder_state(obj: Mapping, path) -> tuple[str, dict[str, torch.Tensor], str]:
    """(encoder name, its state dict without the ``image_encoder.`` prefix, how it was named)."""
    model = obj.get("model", obj)
    if not isinstance(model, Mapping):
        raise WeightsError(f"{path}: its 'model' entry is not a state dict")
    sd = {
        k[len(ENCODER_PREFIX) :]: v
        for k, v in model.items()
        if isinstance(k, str) and k.startswith(ENCODER_PREFIX)
    }
    if not sd:
        raise WeightsError(
            f"{path}: no '{ENCODER_PREFIX}*' keys in its 'model' state dict; not a Mammo-CLIP "
            "checkpoint in the released layout (a dict with 'config' and 'model')"
        )
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path}: non-tensor encoder entries such as {bad[:3]}")
    name = _config_encoder(obj)
    how = "config.model.image_encoder.name"
    if name is None:
        head = sd.get("_conv_head.weight")
        width = int(head.shape[0]) if isinstance(head, torch.Tensor) else None
        by_width = [enc for enc, (_, dim) in ENCODERS.items() if dim == width]
        if not by_width:
            raise WeightsError(
                f"{path}: config.model.image_encoder.name is unreadable and the encoder's "
                f"_conv_head.weight ({None if head is None else tuple(head.shape)}) matches "
                f"neither {', '.join(f'{e} ({d})' for e, (_, d) in ENCODERS.items())}"
            )
        name, how = by_width[0], f"the weights' shapes (_conv_head {width} wide)"
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    return name, sd, how


def load_encoder(path, *, sha256: str | None = None):
    """(encoder module with the checkpoint's weights, encoder name, resolved path, sha256)."""
    path, digest, verified = _weights.resolve_local_file(path, expected_sha256=sha256)
    obj, _ = read_checkpoint(path)
    encoder, sd, how = encoder_state(obj, path)
    model = build_encoder(encoder, meta=True)
    sd = _weights.match_state_dict(
        model.state_dict(), sd, source=f"{path} ({ENCODER_PREFIX}*)", arch=f"Mammo-CLIP {encoder}"
    )
    model.load_state_dict(sd, strict=True, assign=True)
    log.info("%s: Mammo-CLIP %s (named by %s), sha256 %s (%s)", path, encoder, how, digest[:16],
             verified)  # fmt: skip
    return model, encoder, path, digest


def _checkpoint_path(name: str, weights) -> str:
    given = name[len(MAMMOCLIP_PREFIX) :] if name.startswith(MAMMOCLIP_PREFIX) else name
    if not given:
        raise ConfigError(f"{name!r}: Mammo-CLIP backbones are named mammoclip:CHECKPOINT")
    w = None if weights is None else str(weights)
    if w in (None, "", "imagenet", "checkpoint"):
        return given
    if w == "random":
        raise ConfigError(
            f"{name}: a Mammo-CLIP checkpoint carries its weights; weights='random' does not apply "
            "(--weights is for the other backbones of a run)"
        )
    # a recorded spec names the checkpoint's absolute path as its weights (predict passes it)
    a, b = Path(given).expanduser(), Path(w).expanduser()
    if a.is_file() and b.is_file() and not os.path.samefile(a, b):
        raise ConfigError(f"{name}: weights={w!r} is another file than the checkpoint named")
    return w if Path(w).expanduser().is_file() else given


def make_mammoclip(
    name: str,
    *,
    weights="imagenet",
    layer=None,
    device="cpu",
    seed: int = 0,
    sha256: str | None = None,
    pool: str = "avg",
) -> nn.Module:
    """The registry's loader for ``mammoclip:CHECKPOINT`` (see :func:`featmammo.backbones.make`)."""
    from .arch import Features

    if layer not in (None, "", PENULTIMATE, LAYER):
        raise ConfigError(f"{name}: Mammo-CLIP gives its image encoder's pooled features only "
                          f"(layer {LAYER!r}), not layer={layer!r}")  # fmt: skip
    pool = _pooling.check_pool(pool, name)
    model, encoder, path, digest = load_encoder(_checkpoint_path(name, weights), sha256=sha256)
    if pool == "gem":
        _pooling.replace_global_pool(model, ("_avg_pooling",), name)
    for p in model.parameters():
        p.requires_grad_(False)
    spec = BackboneSpec(
        name=name if name.startswith(MAMMOCLIP_PREFIX) else f"{MAMMOCLIP_PREFIX}{name}",
        arch=encoder,
        layer=LAYER,
        dim=int(model.out_dim),
        input_size=INPUT_SIZE,
        mean=(MEAN,) * 3,
        std=(STD,) * 3,
        weights=str(path),
        weights_sha256=digest,
        pool=pool,
        interpolation="area",
    )
    return Features(model.eval(), spec).eval().to(device)


register_prefix(MAMMOCLIP_PREFIX, make_mammoclip)
