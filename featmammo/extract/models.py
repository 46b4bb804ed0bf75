"""The backbones of a run: built once, their ``hybrid:`` checkpoints' preprocessing, provenance."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from ..errors import ConfigError
from ..plugins import CHECKPOINT_PREFIXES, HYBRID_PREFIX

DEFAULT_BACKBONES = ("resnet50", "alexnet")


def _make_models(
    names, weights: str, device: torch.device, suffix: str = "", pool: str = "avg"
) -> dict[str, torch.nn.Module]:
    """Build every backbone once, in eval mode on ``device``; keys are the store names.

    ``names``: backbone names or built modules (``backbones.make``), or a mapping
    ``{store name: name or module}`` to choose the keys; otherwise a key is ``spec.name + suffix``.
    ``pool``: the global pooling of the names built here (``avg`` | ``gem``; in each spec).
    Every missing weights file is named in one WeightsError before any model is built.
    """
    from .. import backbones as fb

    items = list(names.items()) if isinstance(names, Mapping) else [(None, n) for n in names]
    fb.check_weights([n for _, n in items if not isinstance(n, torch.nn.Module)], weights)
    models: dict[str, torch.nn.Module] = {}
    for key, name in items:
        if isinstance(name, torch.nn.Module):
            model = name
        else:
            # a checkpoint (hybrid:, mammoclip:) carries its own weights; --weights applies to
            # the others. weights="random" is seeded inside make (seed=0): every run and rank
            # builds one net
            w = "imagenet" if str(name).startswith(CHECKPOINT_PREFIXES) else weights
            model = fb.make(str(name), weights=w, device=str(device), pool=pool)
        spec = getattr(model, "spec", None)
        if spec is None:
            raise ConfigError(f"backbone {name!r} has no .spec (build it with backbones.make)")
        key = str(key) if key is not None else f"{spec.name}{suffix}"
        if key in models:
            raise ConfigError(f"backbone {key!r} requested twice")
        model = fb.prepare_for_inference(model, device=device)  # eval, no grad, channels_last
        models[key] = model
    return models


def _spec_dict(spec) -> dict:
    if hasattr(spec, "to_dict"):
        return spec.to_dict()
    if dataclasses.is_dataclass(spec):
        return {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(spec).items()
        }
    return dict(vars(spec))


#: preprocessing fields a HybridNet checkpoint imposes on its extraction (it learnt on them)
HYBRID_FIELDS = ("image_size", "roi", "patch_context")


def hybrid_preprocess(backbones) -> dict:
    """``{field: value}`` of ``HYBRID_FIELDS`` that the ``hybrid:`` checkpoints among ``backbones``
    (names or built modules) were trained with; ``{}`` when there is none.

    Reads the checkpoints' JSON sidecars (``featmammo.nn.checkpoint.read_sidecar``) for names, the
    ``.sidecar`` of built ``HybridBackbone`` modules. ConfigError when two checkpoints disagree.
    """
    items = list(backbones.values()) if isinstance(backbones, Mapping) else list(backbones)
    found: dict[str, dict] = {}
    for b in items:
        if isinstance(b, torch.nn.Module):
            meta = getattr(b, "sidecar", None)
            label = getattr(getattr(b, "spec", None), "name", "hybrid backbone")
            if not isinstance(meta, Mapping):
                continue
        elif str(b).startswith(HYBRID_PREFIX):
            from ..nn.checkpoint import read_sidecar

            label = str(b)
            meta = read_sidecar(str(b)[len(HYBRID_PREFIX) :])
        else:
            continue
        pre = dict(meta.get("preprocess") or {})
        if "image_size" not in pre:
            pre["image_size"] = (meta.get("train") or {}).get("image_size")
        found[label] = {k: pre[k] for k in HYBRID_FIELDS if pre.get(k) is not None}
    values = {tuple(sorted(v.items())) for v in found.values()}
    if len(values) > 1:
        raise ConfigError(
            "hybrid checkpoints trained on different image sizes or ROI modes cannot share one "
            f"extraction: {found}; extract them in separate runs"
        )
    return dict(next(iter(found.values()))) if found else {}


def _check_hybrid_preprocess(config, models: dict) -> None:
    """ConfigError when a ``hybrid:`` backbone would see images unlike those it was trained on."""
    want = hybrid_preprocess(models)
    if not want:
        return
    have = {k: getattr(config, k) for k in want}
    if want.get("roi", config.roi) != "patch":
        want.pop("patch_context", None)
        have.pop("patch_context", None)
    diff = {k: (want[k], have[k]) for k in want if want[k] != have[k]}
    if diff:
        names = [n for n in models if n.startswith(HYBRID_PREFIX)] or list(models)
        said = ", ".join(f"{k} {w!r} (this run: {h!r})" for k, (w, h) in diff.items())
        raise ConfigError(
            f"{', '.join(names)}: the checkpoint was trained with {said}; its embeddings are "
            "only meaningful on images prepared the same way: drop --image-size/--roi to take the "
            "checkpoint's, or extract the other backbones in a separate run"
        )


def _resolve_preprocess(config, models: dict) -> object:
    """With ``normalize='backbone'`` the config takes the backbones' mean/std (they must agree)."""
    if config.normalize != "backbone" or not models:
        return config
    stats = {(tuple(m.spec.mean), tuple(m.spec.std)) for m in models.values()}
    if len(stats) > 1:
        raise ConfigError(
            "normalize='backbone': the requested backbones use different mean/std "
            f"({sorted(stats)}); images are preprocessed once per batch, so extract them in "
            "separate runs (or choose --normalize mean|decimal)"
        )
    mean, std = next(iter(stats))
    if (tuple(config.mean), tuple(config.std)) != (mean, std):
        config = dataclasses.replace(config, mean=mean, std=std)
    return config


def backbone_provenance(
    model, config, dtype: str, *, precision: str | None = None, decoder_plugin: str | None = None
) -> dict:
    """What a backbone entry of the store records, and (``featmammo.store.IDENTITY_KEYS``) what
    makes two runs' embeddings comparable: spec, weights, preprocessing, stored dtype, and the
    run's ``precision`` (float32, or the bfloat16/float16 autocast on a GPU: the embeddings
    differ) and ``decoder_plugin`` (``environment.decoder_plugin``: which plugin decodes lossy
    DICOMs). None leaves a key out (callers that embed no store rows)."""
    spec = model.spec
    out = {
        "spec": _spec_dict(spec),
        "layer": getattr(spec, "layer", None),
        "weights": getattr(spec, "weights", None),
        "weights_sha256": getattr(spec, "weights_sha256", None),
        "preprocess": config.to_dict(),
        "preprocess_fingerprint": config.fingerprint(),
        "dtype": dtype,
    }
    if precision is not None:
        out["precision"] = precision
    if decoder_plugin is not None:
        out["decoder_plugin"] = decoder_plugin
    return out
