"""HybridNet checkpoints: state dicts plus a JSON sidecar, verified before loading (featmammo.nn).

A checkpoint ``NAME.pt`` is a ``torch.save``'d dict of tensors and plain Python values (the model
state
dict, and for the training state also optimizer, scheduler, RNG states, epoch, best metric,
history).
Its sidecar ``NAME.json`` records the model config, classes, preprocessing, library versions and the
file's SHA-256. Loading checks the SHA-256 first and then calls ``torch.load(weights_only=True)``,
so a
tampered or truncated file is refused and no pickled code is ever executed.
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path

import torch

from featmammo._version import __version__
from featmammo.atomic import atomic_write
from featmammo.errors import WeightsError
from featmammo.hashing import sha256_file

log = logging.getLogger(__name__)

FORMAT = "featmammo-hybridnet"
FORMAT_VERSION = 1


def sidecar_path(path) -> Path:
    """``run/checkpoint.pt`` -> ``run/checkpoint.json``."""
    return Path(path).with_suffix(".json")


def versions() -> dict:
    import torchvision

    return {
        "featmammo": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def save_checkpoint(path, payload: dict, sidecar: dict) -> dict:
    """Save ``payload`` (tensors and plain values only) and its sidecar; returns the sidecar
    written.

    The ``.pt`` file is written first (atomically), then the sidecar with its SHA-256 (atomically),
    so
    a crash between the two leaves a mismatch that :func:`load_checkpoint` refuses, never a silent
    mix.
    """
    path = Path(path)
    atomic_write(path, lambda f: torch.save(payload, f))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **sidecar,
        "file": path.name,
        "sha256": sha256_file(path),
        "versions": versions(),
    }
    text = json.dumps(meta, indent=2, sort_keys=True, default=str).encode()
    atomic_write(sidecar_path(path), lambda f: f.write(text))
    log.debug("saved %s (sha256 %s)", path, meta["sha256"][:12])
    return meta


def read_sidecar(path) -> dict:
    """The sidecar of checkpoint ``path``; WeightsError if it is missing or not a HybridNet
    sidecar."""
    side = sidecar_path(path)
    if not Path(path).is_file():
        raise WeightsError(f"{path}: checkpoint file not found")
    if not side.is_file():
        raise WeightsError(
            f"{path}: sidecar {side.name} not found; refusing an unverified checkpoint"
        )
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{side}: sidecar is not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT or "sha256" not in meta:
        raise WeightsError(f"{side}: not a {FORMAT} sidecar (format={meta.get('format')!r})")
    return meta


def load_checkpoint(path, *, map_location="cpu") -> tuple[dict, dict]:
    """Verify the SHA-256 against the sidecar, then ``torch.load(weights_only=True)``.

    Returns ``(payload, sidecar)``. Raises WeightsError on a missing sidecar or a hash mismatch.
    """
    meta = read_sidecar(path)
    actual = sha256_file(path)
    if actual != meta["sha256"]:
        raise WeightsError(
            f"{path}: SHA-256 {actual[:16]}... does not match its sidecar "
            f"({meta['sha256'][:16]}...); the file was modified or truncated"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling refused or corrupt archive
        raise WeightsError(f"{path}: cannot load checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or "model" not in payload:
        raise WeightsError(f"{path}: checkpoint has no 'model' state dict")
    return payload, meta


def load_model(path, *, device="cpu"):
    """Rebuild the HybridNet of checkpoint ``path`` and load its weights; returns ``(model,
    sidecar)``.

    The model is returned in eval mode on ``device``.
    """
    from .model import HybridNet

    payload, meta = load_checkpoint(path, map_location="cpu")
    try:
        model = HybridNet.from_config(meta["model"])
    except KeyError as exc:
        raise WeightsError(f"{sidecar_path(path)}: sidecar lacks model config key {exc}") from exc
    missing, unexpected = model.load_state_dict(payload["model"], strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{path}: state dict does not match the sidecar's architecture "
            f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
        )
    return model.to(device).eval(), meta
