"""Any timm model as a backbone: ``timm:NAME`` (``timm:convnext_tiny``, ``timm:resnet50.a1_in1k``).

The embedding is timm's pre-logits vector: ``forward_head(forward_features(x), pre_logits=True)``
(the classifier is removed with ``reset_classifier(0)``). ``NAME`` is a timm model name with an
optional pretrained tag; without a tag, timm's default tag for that architecture is used.

Weights:

- ``imagenet``: the default (or named) tag's pretrained file, read **only from the local caches**
  timm itself downloads into -- the Hugging Face hub cache (``$HF_HUB_CACHE``, else
  ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``) for tags with an ``hf_hub_id`` (nearly
  all), else torch's hub folder (``$TORCH_HOME/hub/checkpoints``) for URL-only tags. Nothing is
  downloaded: a missing file is a WeightsError naming the repository, file and folder and the
  command that fetches it (``featmammo weights fetch timm:NAME``). The file is verified by SHA-256
  before it is read (the Hugging Face cache names each downloaded file by its SHA-256; a URL file
  carries a hash prefix in its name as torch.hub's do). The identity recorded is
  ``imagenet:timm/ARCH.TAG`` (whatever the tag was trained on: in1k, in12k, CLIP ...).
- ``random``: timm's own initialisation under ``seed`` (explicit only, recorded).
- a ``PATH`` to a state dict (``.safetensors``, or a ``.pth``/``.bin`` read with
  ``weights_only=True``), SHA-256 recorded and checked against ``PATH.sha256`` or ``sha256=``.

Every key of the network except its classifier must be in the file with its shape; anything else is
a WeightsError listing the keys (never a partial load). The model module's own
``checkpoint_filter_fn`` (timm's conversion of older layouts) is applied first when it has one.

Mean, std, interpolation and native input size come from the tag's pretrained config
(``timm.data.resolve_data_config`` reads the same fields) and are recorded in the spec; with
``normalize='backbone'`` the mean/std are those of the preprocessing, so they enter its
fingerprint. Models whose pretrained config says ``fixed_input_size`` (ViT, Swin, ... without
``dynamic_img_size``) record ``fixed_input=True``; :func:`featmammo.backbones.check_input_size`
refuses any other image size before an image is read.

timm is an optional dependency (``pip install 'featmammo[timm]'``), imported on first use.
Importing this module registers :func:`make_timm` for the ``timm:`` prefix.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from featmammo.errors import ConfigError, WeightsError
from featmammo.plugins import TIMM_PREFIX

from . import pooling as _pooling
from . import weights as _weights
from .registry import PENULTIMATE, BackboneSpec, register_prefix

log = logging.getLogger(__name__)

LAYER = "pre_logits"
INSTALL_HINT = "pip install 'featmammo[timm]'"
#: Hugging Face file names timm tries, in its order (safetensors first)
HF_FILES = ("model.safetensors", "pytorch_model.bin")
_SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")


def _timm():
    try:
        import timm
    except ImportError as exc:
        raise ConfigError(
            f"timm: backbones need the timm package, which is not installed ({exc}); "
            f"install it with `{INSTALL_HINT}`"
        ) from exc
    return timm


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved as ``huggingface_hub`` does, at call time."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


@dataclass(frozen=True)
class TimmRef:
    """A resolved ``timm:NAME``: architecture, pretrained tag and its config."""

    name: str  # the backbone name as recorded: timm:NAME
    arch: str  # timm architecture, e.g. convnext_tiny
    tag: str  # the pretrained tag the data config (and imagenet weights) come from
    cfg: object  # timm PretrainedCfg of arch.tag

    @property
    def identity(self) -> str:
        return f"imagenet:timm/{self.arch}.{self.tag}" if self.tag else f"imagenet:timm/{self.arch}"

    @property
    def input_size(self):
        size = tuple(int(v) for v in (self.cfg.input_size or (3, 224, 224))[1:])
        return size[0] if size[0] == size[1] else size

    @property
    def classifiers(self) -> tuple[str, ...]:
        c = self.cfg.classifier
        return (c,) if isinstance(c, str) else tuple(c or ())


def resolve(name: str) -> TimmRef:
    """``timm:NAME`` -> :class:`TimmRef`; ConfigError for an unknown model or tag."""
    text = str(name).strip()
    model_name = text[len(TIMM_PREFIX) :].strip() if text.startswith(TIMM_PREFIX) else text
    if not model_name:
        raise ConfigError(
            f"{name!r}: timm backbones are named timm:MODEL (e.g. timm:convnext_tiny)"
        )
    timm = _timm()
    from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(model_name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"{name}: timm has no model {arch!r}{hint}; list them with "
            "`python -c \"import timm; print(timm.list_models('*convnext*'))\"`"
        )
    try:
        cfg = get_pretrained_cfg(model_name)
    except RuntimeError:
        cfg = None
    if cfg is None:
        tags = sorted(get_arch_pretrained_cfgs(arch))
        if tag:
            raise ConfigError(
                f"{name}: timm has no pretrained tag {tag!r} for {arch}; its tags: "
                + (", ".join(tags) or "none")
            )
        from timm.models import PretrainedCfg

        cfg = PretrainedCfg(architecture=arch)
    return TimmRef(f"{TIMM_PREFIX}{model_name}", arch, str(cfg.tag or tag or ""), cfg)


# -- pretrained files --------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainedFile:
    """Where a tag's pretrained file is (or would be) in the local caches."""

    ref: TimmRef
    path: Path | None  # None: not cached
    expected_sha256: str | None  # from the cache's blob name or the URL file name
    where: str  # what would be fetched, in words

    def missing_line(self) -> str:
        return f"{self.ref.name}: {self.where}"


def _hf_repo(ref: TimmRef) -> tuple[str, str | None]:
    repo, _, revision = str(ref.cfg.hf_hub_id).partition("@")
    return repo, (revision or None)


def _hf_files(ref: TimmRef) -> tuple[str, ...]:
    return (ref.cfg.hf_hub_filename,) if ref.cfg.hf_hub_filename else HF_FILES


def pretrained_file(ref: TimmRef) -> PretrainedFile:
    """Find ``ref``'s pretrained file in the Hugging Face cache or torch's hub folder."""
    cfg = ref.cfg
    if not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise WeightsError(
            f"{ref.name}: timm has no pretrained weights for {ref.arch}; use --weights random "
            "(untrained, on purpose) or --weights PATH"
        )
    where = []
    if cfg.hf_hub_id:
        repo, revision = _hf_repo(ref)
        cache = hf_cache_dir()
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # timm works without it for URL-only weights
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            for fname in _hf_files(ref):
                found = try_to_load_from_cache(repo, fname, cache_dir=cache, revision=revision)
                if isinstance(found, str) and os.path.isfile(found):
                    blob = Path(os.path.realpath(found)).name
                    sha = blob if _SHA256_NAME.match(blob) else None
                    return PretrainedFile(ref, Path(found), sha, f"{repo}/{fname}")
        names = " or ".join(f"'{f}'" for f in _hf_files(ref))
        where.append(f"{names} of Hugging Face repo {repo} in the cache '{cache}'")
    if cfg.url and not cfg.custom_load:
        fname = cfg.url.rsplit("/", 1)[-1]
        path = _weights.checkpoints_dir().absolute() / fname
        if path.is_file():
            return PretrainedFile(ref, path, _weights.hash_prefix_from_name(fname), cfg.url)
        where.append(f"'{fname}' in folder '{path.parent}' (from {cfg.url})")
    if cfg.file and Path(cfg.file).is_file():
        return PretrainedFile(ref, Path(cfg.file), None, str(cfg.file))
    if not where:
        raise WeightsError(
            f"{ref.name}: the pretrained weights of {ref.identity} are only published in a "
            f"format featmammo does not read ({cfg.url}); pass a converted state dict as "
            "--weights PATH"
        )
    return PretrainedFile(ref, None, None, "; or ".join(where))


def missing_message(files: list[PretrainedFile]) -> str:
    names = " ".join(f.ref.name for f in files)
    return (
        f"pretrained timm weights not found ({'; '.join(f.missing_line() for f in files)}). "
        f"Nothing is downloaded implicitly: get them with `featmammo weights fetch {names}` "
        "(downloads exactly these files into those caches), or run with --weights random to "
        "use untrained backbones on purpose"
    )


def ensure_pretrained(ref: TimmRef) -> tuple[Path, str]:
    """(path, sha256) of ``ref``'s cached pretrained file, verified; WeightsError otherwise."""
    found = pretrained_file(ref)
    if found.path is None:
        raise WeightsError(missing_message([found]))
    sha = _weights.file_sha256(found.path)
    if found.expected_sha256 is None:
        log.info("%s: %s has no recorded hash to check; sha256 %s", ref.name, found.path, sha)
    else:
        _weights.check_sha256(
            found.path, sha, found.expected_sha256, f"the hash the cache recorded for {found.where}"
        )
    return found.path.absolute(), sha  # the snapshot name: its suffix says the format


def fetch(name: str, *, progress: bool = True) -> dict:
    """Download ``timm:NAME``'s pretrained file into the cache timm reads (on purpose only)."""
    ref = resolve(name)
    found = pretrained_file(ref)
    status = "already-present"
    if found.path is None:
        status = "downloaded"
        if ref.cfg.hf_hub_id:
            _download_hf(ref, progress=progress)
        else:
            dest = _weights.checkpoints_dir().absolute() / ref.cfg.url.rsplit("/", 1)[-1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(
                    ref.cfg.url, str(dest), hash_prefix=found.expected_sha256, progress=progress
                )
            except Exception as exc:  # network errors come in many types
                raise WeightsError(f"{dest}: download of {ref.cfg.url} failed ({exc})") from exc
    path, sha = ensure_pretrained(ref)
    return {"arch": ref.arch, "weights": ref.identity, "url": pretrained_file(ref).where,
            "dest": str(path), "sha256": sha, "status": status}  # fmt: skip


def _download_hf(ref: TimmRef, *, progress: bool) -> None:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError
    except ImportError as exc:
        raise WeightsError(f"{ref.name}: downloading needs huggingface_hub ({exc})") from exc
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    repo, revision = _hf_repo(ref)
    last = None
    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        for fname in _hf_files(ref):
            try:
                hf_hub_download(repo, fname, revision=revision, cache_dir=hf_cache_dir())
                return
            except EntryNotFoundError as exc:
                last = exc
            except Exception as exc:  # network errors come in many types
                raise WeightsError(
                    f"{ref.name}: download of {repo}/{fname} failed ({exc})"
                ) from exc
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()
    raise WeightsError(f"{ref.name}: {repo} holds none of {', '.join(_hf_files(ref))} ({last})")


# -- building ------------------------------------------------------------------------------------


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file (safetensors, no pickle) or a torch file (``weights_only=True``)."""
    if str(path).endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise WeightsError(f"{path}: reading .safetensors needs safetensors ({exc})") from exc
        try:
            sd = load_file(str(path), device="cpu")
        except Exception as exc:  # a damaged header raises SafetensorError and friends
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
        return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    return _weights.load_state_dict_file(path)


def _create(ref: TimmRef, *, meta: bool, seed: int = 0) -> nn.Module:
    timm = _timm()
    kwargs = {"pretrained": False, "pretrained_cfg": ref.cfg}
    if meta:
        try:
            with torch.device("meta"):
                return timm.create_model(ref.arch, **kwargs)
        except (NotImplementedError, RuntimeError) as exc:
            log.debug("%s cannot be built on the meta device (%s)", ref.arch, exc)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return timm.create_model(ref.arch, **kwargs)


def _filtered(model: nn.Module, sd: dict, source) -> dict:
    """timm's own layout conversion for this model family, when its module has one."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if not callable(fn):
        return sd
    try:
        return dict(fn(sd, model))
    except Exception as exc:  # a filter written for another layout fails in its own way
        raise WeightsError(
            f"{source}: timm's checkpoint filter for {type(model).__name__} failed ({exc}); the "
            "file is not a state dict of this model"
        ) from exc


def _load(ref: TimmRef, path, seed: int) -> nn.Module:
    model = _create(ref, meta=True)
    model.reset_classifier(0)
    sd = _filtered(model, read_state_dict(path), path)
    ignore = tuple(f"{c}." for c in ref.classifiers)
    sd = _weights.match_state_dict(
        model.state_dict(), sd, source=path, arch=f"timm {ref.arch}", ignore_prefixes=ignore
    )
    model.load_state_dict(sd, strict=False, assign=True)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:  # buffers computed at init (not in a state dict): build for real, copy in
        model = _create(ref, meta=False, seed=seed)
        model.reset_classifier(0)
        model.load_state_dict(sd, strict=False)
    return model


class PreLogits(nn.Module):
    """A timm model whose forward is ``forward_head(forward_features(x), pre_logits=True)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.forward_head(m.forward_features(x), pre_logits=True)


def _gem(model: nn.Module, name: str) -> None:
    _pooling.replace_global_pool(
        model,
        ("global_pool.pool", "head.global_pool.pool"),
        name,
        hint="its head has no NCHW global average pool (token pooling of a transformer, or a "
        "pool type other than 'avg')",
    )


def make_timm(
    name: str,
    *,
    weights="imagenet",
    layer=None,
    device="cpu",
    seed: int = 0,
    sha256: str | None = None,
    pool: str = "avg",
) -> nn.Module:
    """The registry's loader for ``timm:NAME`` (see :func:`featmammo.backbones.make`)."""
    from .arch import Features

    ref = resolve(name)
    if layer not in (None, "", PENULTIMATE, LAYER):
        raise ConfigError(f"{name}: timm backbones give their pre-logits features only (layer "
                          f"{LAYER!r}), not layer={layer!r}")  # fmt: skip
    pool = _pooling.check_pool(pool, ref.name)
    if not isinstance(weights, (str, os.PathLike)):
        raise WeightsError(
            f"{name}: weights must be 'imagenet', 'random' or a PATH, got {weights!r}"
        )
    w = str(weights)
    digest = None
    if w == "random":
        model = _create(ref, meta=False, seed=seed)
        model.reset_classifier(0)
        identity = "random"
    elif w == "imagenet" or w.startswith("imagenet:"):
        if w.startswith("imagenet:") and w != ref.identity:
            ref = _tagged(ref, w)
        path, digest = ensure_pretrained(ref)
        if sha256:  # a recorded hash (predict): the cached file must still be that file
            _weights.check_sha256(path, digest, _weights.normalise_sha256(sha256, str(path)),
                                  f"the sha256 recorded for {ref.identity}")  # fmt: skip
        model = _load(ref, path, seed)
        identity = ref.identity
    else:
        path, digest, how = _weights.resolve_local_file(w, expected_sha256=sha256)
        log.info("%s: local weights %s (sha256 %s, %s)", ref.name, path, digest[:16], how)
        model = _load(ref, path, seed)
        identity = str(path)
    if pool == "gem":
        _gem(model, ref.name)
    dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    fixed = bool(ref.cfg.fixed_input_size) and not getattr(model, "dynamic_img_size", False)
    spec = BackboneSpec(
        name=ref.name,
        arch=f"timm/{ref.arch}",
        layer=LAYER,
        dim=dim,
        input_size=ref.input_size,
        mean=tuple(float(v) for v in ref.cfg.mean),
        std=tuple(float(v) for v in ref.cfg.std),
        weights=identity,
        weights_sha256=digest,
        seed=int(seed) if identity == "random" else None,
        pool=pool,
        interpolation=str(ref.cfg.interpolation or "") or None,
        fixed_input=fixed,
    )
    for p in model.parameters():
        p.requires_grad_(False)
    return Features(PreLogits(model.eval()), spec).eval().to(device)


def _tagged(ref: TimmRef, identity: str) -> TimmRef:
    """The ref for a recorded identity ``imagenet:timm/ARCH.TAG`` (predict rebuilds with it)."""
    text = identity[len("imagenet:") :]
    text = text[len("timm/") :] if text.startswith("timm/") else text
    other = resolve(TIMM_PREFIX + text)
    if other.arch != ref.arch:
        raise WeightsError(f"{ref.name}: weights {identity!r} are for {other.arch}, not {ref.arch}")
    return TimmRef(ref.name, ref.arch, other.tag, other.cfg)


register_prefix(TIMM_PREFIX, make_timm)
