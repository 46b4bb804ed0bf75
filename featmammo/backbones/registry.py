"""The backbone registry and its one factory, :func:`make` (timm style: decorator registry + make).

Registered entries (``@register``) name the paper's backbones and their documented choices:

- ``resnet50``: ``ResNet50_Weights.IMAGENET1K_V2``; default layer ``avgpool`` (2048-d, globally
  pooled output of layer4, before fc); ``layer1`` .. ``layer4`` global-average 256/512/1024/2048-d.
- ``alexnet``: ``AlexNet_Weights.IMAGENET1K_V1``; default ``fc7`` (4096-d); ``fc6`` 4096-d;
  ``pool`` 9216-d = pool5 flattened (256 x 6 x 6); ``features`` 256-d global average of pool5.
- ``vgg16``: ``VGG16_Weights.IMAGENET1K_V1``; default ``fc7`` (4096-d); ``fc6`` 4096-d;
  ``pool`` 25088-d = pool5 flattened (512 x 7 x 7); ``features`` 512-d global average.

``fc7`` is the classifier up to its second ReLU (the final Linear and any Dropout right before it
are removed; the returned module is in eval mode, so the remaining dropout is inactive). ``pool``
is the adaptive-average-pooled conv output *flattened* (the input of fc6), not a global average.
Any other torchvision classifier (``torchvision.models.list_models``) works by name with
torchvision's DEFAULT weights and its penultimate features (final classifier layer replaced by
Identity), and any layer of any backbone can be tapped by torchvision node/module name
(``layer="layer3"``), globally average-pooled (see :mod:`featmammo.backbones.arch`).
``pool="gem"`` replaces that global average (the model's own ``avgpool``, or the reduction of a
tapped feature map) with GeM, p = 3 (:mod:`featmammo.backbones.pooling`).
Prefixed names are resolved by the loader their provider registers with :func:`register_prefix`:
``hybrid:PATH`` (a trained HybridNet checkpoint, :mod:`featmammo.nn.backbone`), ``timm:NAME``
(:mod:`.timm_models`) and ``mammoclip:CHECKPOINT`` (:mod:`.mammoclip`). The provider is named in
the neutral table :mod:`featmammo.plugins` and imported on first use, so this module never imports
``featmammo.nn`` (nor timm).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from featmammo.devices import resolve_device
from featmammo.errors import ConfigError, WeightsError
from featmammo.plugins import BACKBONE_PREFIX_PROVIDERS

from . import arch as _arch
from . import pooling as _pooling
from . import weights as _weights
from .pooling import DEFAULT_POOL
from .weights import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

PENULTIMATE = "penultimate"

#: prefix -> loader(name, *, weights, layer, device[, seed, sha256, pool]) -> module with .spec
_PREFIX_LOADERS: dict[str, Callable[..., nn.Module]] = {}


def register_prefix(prefix: str, loader: Callable[..., nn.Module]) -> None:
    """Make ``make("<prefix>...")`` call ``loader(name, weights=, layer=, device=)``, plus
    whichever of ``seed=``, ``sha256=``, ``pool=`` its signature accepts (a loader without
    ``pool`` refuses ``pool='gem'``)."""
    _PREFIX_LOADERS[prefix] = loader


def _call_loader(loader, name: str, *, weights, layer, device, seed, sha256, pool) -> nn.Module:
    """Call a prefix loader with the options it takes; refuse the ones it cannot honour."""
    params = inspect.signature(loader).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    extra = {}
    for key, value, default in (("seed", seed, 0), ("sha256", sha256, None), ("pool", pool, "avg")):
        if takes_all or key in params:
            extra[key] = value
        elif key == "pool" and value != default:
            raise ConfigError(f"{name}: pool={value!r} is not supported for this backbone")
    return loader(name, weights=weights, layer=layer, device=device, **extra)


def _prefix_loader(name: str) -> Callable[..., nn.Module] | None:
    """The loader for a prefixed name, importing its provider (plugin table) on first use."""
    for prefix, provider in BACKBONE_PREFIX_PROVIDERS.items():
        if name.startswith(prefix) and prefix not in _PREFIX_LOADERS:
            try:
                importlib.import_module(provider)
            except ImportError as exc:
                raise ConfigError(
                    f"{name}: its provider {provider} failed to import ({exc})"
                ) from exc
    for prefix, loader in _PREFIX_LOADERS.items():
        if name.startswith(prefix):
            return loader
    return None


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone is, recorded with every embedding it makes.

    ``weights`` is ``imagenet:<Enum>.<MEMBER>`` (torchvision), ``imagenet:timm/ARCH.TAG``,
    ``random`` or the absolute path of a local file; ``weights_sha256`` the file's full sha256
    (None for random); ``seed`` the init seed for random. ``input_size`` is the native input size
    of the reference weights (``N``, or ``(H, W)``). Fields added later, left out of
    :meth:`to_dict` at their defaults so that existing specs (and store identities) stay as they
    were: ``pool`` (``avg`` | ``gem``: how the last feature map is pooled), ``interpolation``
    (the resize the pretrained config names, recorded only) and ``fixed_input`` (the network
    takes only ``input_size``; :func:`check_input_size`).
    """

    name: str
    arch: str
    layer: str
    dim: int
    input_size: int | tuple = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    weights: str = "random"
    weights_sha256: str | None = None
    seed: int | None = None
    pool: str = DEFAULT_POOL
    interpolation: str | None = None
    fixed_input: bool = False

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if not isinstance(self.input_size, int):
            d["input_size"] = list(self.input_size)
        for name, default in _LATE_SPEC_FIELDS.items():
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BackboneSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(kw[k])
        if isinstance(kw.get("input_size"), list):
            kw["input_size"] = tuple(kw["input_size"])
        return cls(**kw)

    @property
    def input_shape(self) -> tuple[int, int]:
        """The native input's ``(height, width)``."""
        size = self.input_size
        return (int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in size)


#: spec fields added after the first stores -> their default (left out of to_dict at the default)
_LATE_SPEC_FIELDS = {"pool": DEFAULT_POOL, "interpolation": None, "fixed_input": False}


@dataclass(frozen=True)
class Recipe:
    """How to build one named backbone from a torchvision architecture."""

    arch: str
    imagenet: str | None = None  # weights member used for "imagenet" (None: torchvision DEFAULT)
    default_layer: str = PENULTIMATE  # the name recorded for the penultimate features
    aliases: dict = field(default_factory=dict)  # layer name -> torchvision FX node
    dims: dict = field(default_factory=dict)  # known widths (layer -> dim), checked by the tests


_REGISTRY: dict[str, Callable[[], Recipe]] = {}


def register(name: str) -> Callable[[Callable[[], Recipe]], Callable[[], Recipe]]:
    """Decorator: ``@register("resnet50")`` on a function returning the :class:`Recipe`."""

    def deco(fn: Callable[[], Recipe]) -> Callable[[], Recipe]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


@register("resnet50")
def _resnet50() -> Recipe:
    # V2 (80.9 % top-1) over V1 (76.1 %): the better ImageNet features, the file cache/README names.
    return Recipe(
        arch="resnet50",
        imagenet="IMAGENET1K_V2",
        default_layer="avgpool",
        dims={"avgpool": 2048, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048},
    )


@register("alexnet")
def _alexnet() -> Recipe:
    return Recipe(
        arch="alexnet",
        imagenet="IMAGENET1K_V1",
        default_layer="fc7",
        aliases={"fc6": "classifier.2", "pool": "flatten"},
        dims={"fc7": 4096, "fc6": 4096, "pool": 256 * 6 * 6, "features": 256},
    )


@register("vgg16")
def _vgg16() -> Recipe:
    return Recipe(
        arch="vgg16",
        imagenet="IMAGENET1K_V1",  # not IMAGENET1K_FEATURES: that file has no classifier weights
        default_layer="fc7",
        aliases={"fc6": "classifier.1", "pool": "flatten"},
        dims={"fc7": 4096, "fc6": 4096, "pool": 512 * 7 * 7, "features": 512},
    )


@functools.lru_cache(maxsize=1)
def _torchvision_names() -> tuple[str, ...]:
    import torchvision.models as tvm

    return tuple(tvm.list_models(module=tvm))


def available() -> list[str]:
    """Registered backbones first, then every other torchvision classifier (``hybrid:PATH`` too)."""
    reg = list(_REGISTRY)
    return reg + sorted(n for n in _torchvision_names() if n not in _REGISTRY)


def registered() -> list[str]:
    """The backbones with documented defaults (resnet50, alexnet, vgg16)."""
    return list(_REGISTRY)


def recipe(name: str) -> Recipe:
    """The :class:`Recipe` for ``name`` (registered, or any torchvision classifier)."""
    key = name.strip().lower()
    if key in _REGISTRY:
        return _REGISTRY[key]()
    if key in _torchvision_names():
        return Recipe(arch=key)
    close = difflib.get_close_matches(key, available(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(
        f"unknown backbone {name!r}{hint}; use resnet50, alexnet, vgg16, any torchvision "
        "classifier name (featmammo weights list --all) or hybrid:PATH"
    )


def _plan_weights(name: str, rec: Recipe, weights, sha256: str | None):
    """(kind, TorchvisionWeights|None, path|None, sha256|None, identity) for ``weights``."""
    if not isinstance(weights, str) and not hasattr(weights, "__fspath__"):
        raise WeightsError(
            f"{name}: weights must be 'imagenet', 'random' or a PATH, got {weights!r}"
        )
    w = str(weights)
    if w == "random":
        return "random", None, None, None, "random"
    if w == "imagenet" or w.startswith("imagenet:"):
        member = w.split(".", 1)[1] if w.startswith("imagenet:") else rec.imagenet
        tw = _weights.torchvision_weights(rec.arch, member)
        return "imagenet", tw, None, None, tw.identity
    members = _weights.weights_members(rec.arch)
    if w in {m.member for m in members} | {f"{m.enum_name}.{m.member}" for m in members}:
        tw = _weights.torchvision_weights(rec.arch, w)  # a member name: IMAGENET1K_V1
        return "imagenet", tw, None, None, tw.identity
    path, digest, how = _weights.resolve_local_file(w, expected_sha256=sha256)
    log.info("%s: local weights %s (sha256 %s, %s)", name, path, digest[:16], how)
    return "file", None, path, digest, str(path)


@dataclass(frozen=True)
class _Plan:
    """Everything ``make`` decides before touching tensors."""

    name: str
    rec: Recipe
    kind: str  # random | imagenet | file
    ref: _weights.TorchvisionWeights  # architecture variant, input size, mean/std
    path: object
    digest: str | None
    identity: str
    layer: str
    node: str | None  # FX node for a tap; None = penultimate features
    kwargs: dict
    seed: int
    pool: str = DEFAULT_POOL

    def spec(self, dim: int) -> BackboneSpec:
        return BackboneSpec(
            name=self.name,
            arch=self.rec.arch,
            layer=self.layer,
            dim=int(dim),
            input_size=int(self.ref.input_size),
            mean=tuple(self.ref.mean),
            std=tuple(self.ref.std),
            weights=self.identity,
            weights_sha256=self.digest,
            seed=int(self.seed) if self.kind == "random" else None,
            pool=self.pool,
        )

    def tap_dim(self) -> int:
        """Width of the tapped layer from a meta-device forward (no weights, no compute); a GeM
        pool needs a feature map there (ConfigError otherwise)."""
        meta_model = _arch.build(self.rec.arch, self.kwargs, meta=True)
        _arch.strip_head(meta_model, self.rec.arch)
        body = _arch.tap(meta_model, self.node, self.rec.arch)
        out = _arch.probe_out(body, self.ref.input_size)
        if self.pool != DEFAULT_POOL and out.ndim != 4:
            raise ConfigError(
                f"{self.name}: pool={self.pool!r} pools a feature map, and layer {self.layer!r} "
                f"gives {out.ndim}-D output {tuple(out.shape)}; tap a convolutional layer"
            )
        return int(_arch.reduce_features(out).shape[1])

    def apply_pool(self, model: nn.Module) -> None:
        """GeM in place of the model's own global average pool (penultimate features only; a
        tapped feature map is pooled by :class:`~featmammo.backbones.arch.Features`)."""
        if self.pool != DEFAULT_POOL and self.node is None:
            _pooling.replace_global_pool(model, GLOBAL_POOL_MODULES, self.name)


#: torchvision classifiers that take only their reference input size (and every ``vit_*``); not
#: written into their specs (that would change the identities of stores made before)
FIXED_SIZE_ARCHS = ("maxvit_t",)
#: where a torchvision classifier keeps its global average pool (a direct child; SE blocks inside
#: EfficientNet/MobileNet/RegNet have ``avgpool`` modules of their own, deeper down)
GLOBAL_POOL_MODULES = ("avgpool", "classifier.0")


def _plan(name, weights, layer, seed, sha256, pool=DEFAULT_POOL) -> _Plan:
    rec = recipe(name)
    ref = _weights.torchvision_weights(rec.arch, rec.imagenet)
    kind, tw, path, digest, identity = _plan_weights(name, rec, weights, sha256)
    if kind == "imagenet":
        path, digest = _weights.ensure_torchvision_file(tw)
        ref = tw
    layer_name = rec.default_layer if layer in (None, "", PENULTIMATE) else str(layer)
    node = None if layer_name == rec.default_layer else rec.aliases.get(layer_name, layer_name)
    kwargs = _arch.builder_kwargs(rec.arch, ref, random_init=kind == "random")
    name = name.strip().lower()
    pool = _pooling.check_pool(pool, name)
    return _Plan(name, rec, kind, ref, path, digest, identity, layer_name, node, kwargs, seed, pool)


def spec(
    name: str,
    *,
    weights="imagenet",
    layer: str | None = None,
    seed: int = 0,
    sha256=None,
    pool: str = DEFAULT_POOL,
):
    """The :class:`BackboneSpec` :func:`make` would record, without loading any weights.

    Still checks the weights file (presence, sha256), so a missing file fails here too.
    """
    plan = _plan(name, weights, layer, seed, sha256, pool)
    if plan.node is not None:
        return plan.spec(plan.tap_dim())
    meta_model = _arch.build(plan.rec.arch, plan.kwargs, meta=True)
    dim = _arch.strip_head(meta_model, plan.rec.arch)[0]
    plan.apply_pool(meta_model)  # refuses gem where there is no global pool
    return plan.spec(dim)


def make(
    name: str,
    *,
    weights="imagenet",
    layer: str | None = None,
    device="cpu",
    seed: int = 0,
    sha256: str | None = None,
    pool: str = DEFAULT_POOL,
) -> nn.Module:
    """Build backbone ``name`` as a feature extractor (eval mode) with ``.spec``.

    weights: ``"imagenet"`` (torchvision file, offline, hash-checked; ``"IMAGENET1K_V1"`` or
    ``"imagenet:ResNet50_Weights.IMAGENET1K_V1"`` pick another member), ``"random"`` (explicit only;
    ``seed`` makes it reproducible) or a PATH to a state dict (``sha256`` or a ``PATH.sha256``
    sidecar is checked when given). layer: a named layer (see the module docstring) or a torchvision
    node name; None = the default. pool: ``avg`` (the default: the global average every backbone
    always used) or ``gem`` (GeM, p = 3, where the embedding is a globally pooled feature map;
    recorded in the spec). ``hybrid:PATH``, ``timm:NAME`` and ``mammoclip:CHECKPOINT`` names go
    to their providers' loaders (see the module docstring).
    Never falls back: missing or mismatching weights raise :class:`~featmammo.errors.WeightsError`.
    """
    loader = _prefix_loader(str(name))
    if loader is not None:
        return _call_loader(
            loader, str(name), weights=weights, layer=layer, device=resolve_device(device),
            seed=seed, sha256=sha256, pool=_pooling.check_pool(pool, str(name)),
        )  # fmt: skip
    plan = _plan(name, weights, layer, seed, sha256, pool)
    arch = plan.rec.arch
    if plan.kind == "random":
        model = _arch.build(arch, plan.kwargs, seed=seed)
        dim, _ = _arch.strip_head(model, arch)
    else:
        # built on the meta device (no init cost), then the checked state dict is assigned
        model = _arch.build(arch, plan.kwargs, meta=True)
        dim, ignored = _arch.strip_head(model, arch)
        sd = _weights.load_state_dict_file(plan.path)
        sd = _weights.match_state_dict(
            model.state_dict(), sd, source=plan.path, arch=arch, ignore_prefixes=ignored
        )
        model.load_state_dict(sd, strict=False, assign=True)
        leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if leftover:  # a buffer the state dict does not hold: build for real, copy the weights in
            log.debug("%s: %d tensors not in the state dict; building on CPU", arch, len(leftover))
            model = _arch.build(arch, plan.kwargs, seed=0)
            _arch.strip_head(model, arch)
            model.load_state_dict(sd, strict=False)
    plan.apply_pool(model)
    if plan.node is not None:
        dim = plan.tap_dim()
        body = _arch.tap(model.eval(), plan.node, arch)
    else:
        body = model
    out = _arch.Features(body, plan.spec(dim), pool=plan.pool).eval()
    return out.to(resolve_device(device))


def prepare_for_inference(model: nn.Module, device="auto") -> nn.Module:
    """Eval mode, no gradients, channels_last on ``device``; returns the same module.

    Call it inside the extraction loop's setup and run batches under ``torch.inference_mode()``
    with inputs in ``torch.channels_last`` too.
    """
    model.eval()
    model.requires_grad_(False)
    return model.to(device=resolve_device(device), memory_format=torch.channels_last)


def load_weights(
    model: nn.Module, arch: str, weights="imagenet", *, sha256: str | None = None
) -> dict:
    """Load ``weights`` into a full torchvision classifier ``model`` of ``arch``, in place.

    For code that builds its own torchvision model (``featmammo.nn``'s HybridNet trunks).
    ``weights`` is ``"imagenet"`` (or a member name, as in :func:`make`) or a PATH; ``"random"``
    loads nothing.
    Every feature key must match (WeightsError naming the file and the keys otherwise); the final
    classifier's keys are loaded only where their shapes fit (a fine-tuned 2-class head is skipped
    and the model keeps its own). Returns ``{"weights": identity, "weights_sha256": sha256}``.
    """
    rec = Recipe(arch=arch, imagenet=_REGISTRY[arch]().imagenet if arch in _REGISTRY else None)
    kind, tw, path, digest, identity = _plan_weights(arch, rec, weights, sha256)
    if kind == "random":
        return {"weights": "random", "weights_sha256": None}
    if kind == "imagenet":
        path, digest = _weights.ensure_torchvision_file(tw)
    ref = tw or _weights.torchvision_weights(arch, rec.imagenet)
    probe = _arch.build(arch, _arch.builder_kwargs(arch, ref, random_init=False), meta=True)
    _, head = _arch.strip_head(probe, arch)
    head = tuple(p for p in head if p not in _arch.AUX_PREFIXES)
    target = model.state_dict()
    sd = _weights.load_state_dict_file(path)
    body_expected = {k: v for k, v in target.items() if not k.startswith(head + _arch.AUX_PREFIXES)}
    body = _weights.match_state_dict(
        body_expected, sd, source=path, arch=arch, ignore_prefixes=head + _arch.AUX_PREFIXES
    )
    head_sd = {
        k: v
        for k, v in sd.items()
        if k.startswith(head) and k in target and tuple(v.shape) == tuple(target[k].shape)
    }
    skipped = sorted(k for k in sd if k.startswith(head) and k not in head_sd)
    if skipped:
        log.info("%s: classifier keys not loaded (shape differs): %s", path, ", ".join(skipped))
    model.load_state_dict({**body, **head_sd}, strict=False)
    return {"weights": identity, "weights_sha256": digest}


# -- checks a run makes before it builds anything ----------------------------------------------


def fixed_input_shape(spec) -> tuple[int, int] | None:
    """``(H, W)`` when the backbone of ``spec`` (a BackboneSpec or its dict) takes only its native
    input size (a ViT's fixed patch grid and position embedding), else None."""
    if isinstance(spec, Mapping):
        spec = BackboneSpec.from_dict(spec)
    arch = str(getattr(spec, "arch", ""))
    fixed = bool(getattr(spec, "fixed_input", False))
    fixed = fixed or arch in FIXED_SIZE_ARCHS or arch.startswith("vit_")
    return spec.input_shape if fixed else None


def check_input_size(models, shape) -> None:
    """ConfigError naming every backbone among ``models`` (``{name: module}`` or modules, or
    specs) that cannot take ``shape`` = ``(H, W)`` images, and the size to use instead; called
    before any image is read.

    Two checks: a network that takes only its native size (:func:`fixed_input_shape`), and, for
    built modules, an input smaller than the network's smallest (AlexNet's pooling needs 63 px a
    side): found by a shape-only forward (fake tensors: no arithmetic, no weights read), run only
    when ``shape`` is smaller than the native input in some side (a CNN takes anything larger).
    """
    from featmammo.preprocess.config import format_image_size

    items = list(models.items()) if isinstance(models, Mapping) else [(None, m) for m in models]
    shape = tuple(int(v) for v in shape)
    bad, sizes, small = [], [], []
    for key, m in items:
        spec = getattr(m, "spec", m)
        label = key or (spec.get("name") if isinstance(spec, Mapping) else spec.name)
        want = fixed_input_shape(spec)
        if want is not None:
            if tuple(want) != shape:
                bad.append(f"{label} takes only {want[0]}x{want[1]} images")
                sizes.append(format_image_size(want))
        elif isinstance(m, nn.Module) and not isinstance(spec, Mapping):
            least = smallest_side(m, shape)
            if least is not None:
                small.append(f"{label} needs at least {least} px a side")
    if bad:
        raise ConfigError(
            "; ".join(bad) + f" (a fixed patch grid and position embedding), and this run "
            f"prepares {shape[0]}x{shape[1]}: run it with --image-size "
            f"{' / '.join(dict.fromkeys(sizes))} (in an extract run of its own if the other "
            "backbones use another size)"
        )
    if small:
        raise ConfigError(
            "; ".join(small) + f" (its pooling and strides shrink smaller images to nothing), and "
            f"this run prepares {shape[0]}x{shape[1]}: choose a larger --image-size"
        )


#: (spec name, arch, layer, pool, shape) -> smallest side or None, for this process
_SMALLEST: dict[tuple, int | None] = {}
#: torch's messages for an input too small for a convolution or a pooling window
_TOO_SMALL = ("too small", "can't be greater than actual input size", "non-positive")


def _fits(model: nn.Module, shape: tuple[int, int]) -> bool | None:
    """Whether ``model`` takes a (1, 3, H, W) input, by a shape-only forward; None when the
    fake-tensor forward cannot say (an operator without a shape function: the run will tell)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake_log.level
    fake_log.setLevel(logging.CRITICAL)  # it logs each failed shape function as an error
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    try:
        with torch.inference_mode(), FakeTensorMode(allow_non_fake_inputs=True):
            model(torch.empty(1, 3, *shape, device=device))
        return True
    except RuntimeError as exc:
        if any(t in str(exc) for t in _TOO_SMALL):
            return False
        log.debug("shape check of %s at %s inconclusive: %s", type(model).__name__, shape, exc)
        return None
    except Exception as exc:  # fake tensors cannot run every operator; the real run decides
        log.debug("shape check of %s at %s inconclusive: %s", type(model).__name__, shape, exc)
        return None
    finally:
        fake_log.setLevel(level)


def smallest_side(model: nn.Module, shape) -> int | None:
    """None when ``model`` takes ``shape`` = (H, W) images (or it cannot be told); else the
    smallest side s such that (max(H, s), max(W, s)) fits (what to ask for instead)."""
    spec = model.spec
    native = spec.input_shape
    shape = (int(shape[0]), int(shape[1]))
    if shape[0] >= native[0] and shape[1] >= native[1]:
        return None  # a CNN that takes its native size takes anything larger
    key = (spec.name, spec.arch, spec.layer, spec.pool, shape)
    if key not in _SMALLEST:
        if _fits(model, shape) is not False:
            _SMALLEST[key] = None
        else:
            lo, hi = min(shape), max(native)  # lo fails (in its smaller side), hi fits
            while hi - lo > 1:
                mid = (lo + hi) // 2
                grown = (max(shape[0], mid), max(shape[1], mid))
                lo, hi = (lo, mid) if _fits(model, grown) is not False else (mid, hi)
            _SMALLEST[key] = hi
    return _SMALLEST[key]


def check_weights(names, weights="imagenet") -> None:
    """Check that every backbone in ``names`` finds its weights, before any is built.

    One WeightsError names every missing file (torchvision ImageNet files, timm pretrained files,
    checkpoints, local files) and the one ``featmammo weights fetch`` command that gets the
    downloadable ones; other problems (a hash mismatch, an unknown name) raise as ``make`` would.
    Names with a checkpoint prefix (:data:`featmammo.plugins.CHECKPOINT_PREFIXES`) carry their own
    weights; ``weights`` applies to the others. Built modules in ``names`` are skipped.
    """
    import os
    from pathlib import Path

    from featmammo.plugins import CHECKPOINT_PREFIXES, TIMM_PREFIX

    lines, fetchable = [], []
    w = str(weights)
    for name in names:
        if isinstance(name, nn.Module):
            continue
        name = str(name)
        if name.startswith(CHECKPOINT_PREFIXES):
            path = name.split(":", 1)[1]
            if not Path(path).expanduser().is_file():
                lines.append(f"{name}: checkpoint file '{path}' not found")
            continue
        if w == "random":
            continue
        imagenet = w == "imagenet" or w.startswith("imagenet:")
        if name.startswith(TIMM_PREFIX):
            if imagenet:
                from . import timm_models

                found = timm_models.pretrained_file(timm_models.resolve(name))
                if found.path is None:
                    lines.append(found.missing_line())
                    fetchable.append(name)
                continue
        elif _prefix_loader(name) is None:
            rec = recipe(name)
            try:
                kind, tw, *_ = _plan_weights(name, rec, weights, None)
            except WeightsError:
                if Path(w).expanduser().exists():
                    raise
                lines.append(f"{name}: weights file '{w}' not found")
                continue
            may_download = os.environ.get(_weights.ALLOW_DOWNLOAD_ENV) == "1"
            if kind == "imagenet" and not tw.path.is_file() and not may_download:
                lines.append(
                    f"{name}: ImageNet file '{tw.file_name}' ({tw.identity}) not in folder "
                    f"'{tw.path.parent.absolute()}' (torch's hub folder; set TORCH_HOME to use "
                    f"another; source {tw.url})"
                )
                fetchable.append(name)
            continue
        if not imagenet and not Path(w).expanduser().is_file():
            lines.append(f"{name}: weights file '{w}' not found")
    if not lines:
        return
    how = []
    if fetchable:
        how.append(
            f"get the pretrained files with `featmammo weights fetch {' '.join(fetchable)}` "
            "(downloads exactly these files, SHA-256 checked; on an offline machine copy a "
            "downloaded torchvision file in with `featmammo weights import FILE`)"
        )
    how.append("run with `--weights random` to use untrained backbones on purpose")
    n = len(lines)
    raise WeightsError(
        f"weights missing for {n} backbone{'s' if n > 1 else ''} (nothing is downloaded "
        "implicitly, nothing falls back to random weights):\n  - "
        + "\n  - ".join(lines)
        + "\n"
        + "; or ".join(how)
    )
