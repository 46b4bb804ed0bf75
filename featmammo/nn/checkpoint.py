"""HybridNet checkpoints: state dicts plus a JSON sidecar, verified before loading (featmammo.nn).

A checkpoint ``NAME.pt`` is a ``torch.save``'d dict of tensors and plain Python values (the model
state dict, and for the training state also optimizer, scheduler, RNG states, epoch, best metric,
history). Its sidecar ``NAME.json`` records the model config, classes, preprocessing, library
versions and the file's SHA-256. Loading checks the SHA-256 first and then calls
``torch.load(weights_only=True)``, so a tampered or truncated file is refused and no pickled code is
ever executed.

A training run's sidecars also record the manifest image ids and patient ids the network trained
and validated on (``image_ids``, ``trained_patient_ids``): :func:`trained_image_ids` and
:func:`trained_patient_ids` read them, and :func:`checkpoint_of` finds the
checkpoint behind a store's ``hybrid:`` block, so ``fit`` can refuse to evaluate embeddings on the
images (and patients) they were trained on. Those, and :func:`read_sidecar`, read JSON only:
torch is imported only to save or load tensors.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Mapping
from pathlib import Path

from featmammo._version import __version__
from featmammo.atomic import atomic_write
from featmammo.errors import WeightsError
from featmammo.hashing import sha256_file
from featmammo.plugins import HYBRID_PREFIX

log = logging.getLogger(__name__)

FORMAT = "featmammo-hybridnet"
FORMAT_VERSION = 1


def sidecar_path(path) -> Path:
    """``run/checkpoint.pt`` -> ``run/checkpoint.json``."""
    return Path(path).with_suffix(".json")


def versions() -> dict:
    import torch
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
    so a crash between the two leaves a mismatch that :func:`load_checkpoint` refuses, never a
    silent mix.
    """
    import torch

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
    import torch

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


#: the sidecar key holding ``{"train": [...], "validation": [...]}`` manifest image ids
IMAGE_IDS_KEY = "image_ids"
#: the sidecar key holding ``{"train": [...], "validation": [...]}`` manifest patient ids
PATIENT_IDS_KEY = "trained_patient_ids"
#: the BackboneSpec ``arch`` of a HybridNet used as a backbone (featmammo.nn.backbone)
HYBRID_ARCH = "hybridnet"


def trained_image_ids(checkpoint_path) -> dict[str, list[str]]:
    """``{"train": [...], "validation": [...]}``: the manifest image ids checkpoint
    ``checkpoint_path`` trained on and validated on (early stopping), from its JSON sidecar.

    WeightsError naming the file when the checkpoint (or its sidecar) is missing or records no ids
    (a checkpoint saved before ids were recorded, or one not written by ``featmammo train``).
    """
    meta = read_sidecar(checkpoint_path)
    ids = meta.get(IMAGE_IDS_KEY)
    if not isinstance(ids, Mapping) or not all(
        isinstance(ids.get(k), list) for k in ("train", "validation")
    ):
        raise WeightsError(
            f"{checkpoint_path}: the checkpoint records no trained/validation image ids (its "
            f"sidecar {sidecar_path(checkpoint_path).name} has no {IMAGE_IDS_KEY!r}); it was not "
            "written by this version of `featmammo train`, so the images it learnt from are unknown"
        )
    return {
        "train": [str(i) for i in ids["train"]],
        "validation": [str(i) for i in ids["validation"]],
    }


def trained_patient_ids(checkpoint_path) -> dict[str, list[str]] | None:
    """``{"train": [...], "validation": [...]}``: the manifest patient ids checkpoint
    ``checkpoint_path`` trained and validated on (sidecar key :data:`PATIENT_IDS_KEY`), or None
    when its sidecar predates the key (then join :func:`trained_image_ids` with the images'
    patients). JSON only; WeightsError when the checkpoint or its sidecar is missing."""
    meta = read_sidecar(checkpoint_path)
    ids = meta.get(PATIENT_IDS_KEY)
    if not isinstance(ids, Mapping) or not all(
        isinstance(ids.get(k), list) for k in ("train", "validation")
    ):
        return None
    return {
        "train": [str(i) for i in ids["train"]],
        "validation": [str(i) for i in ids["validation"]],
    }


def checkpoint_of(backbone_provenance: Mapping) -> Path | None:
    """The HybridNet checkpoint behind a store's ``hybrid:`` block; None for any other backbone.

    ``backbone_provenance`` is ``Store.backbone_provenance(name)`` as written by extraction: a
    ``hybrid:`` block has ``spec.arch == "hybridnet"``, the checkpoint's path in ``spec.weights``
    (also the top-level ``weights``) and its SHA-256 in ``weights_sha256``. The path is returned
    only when the checkpoint's sidecar there still records that SHA-256, so ids read from it belong
    to the network that made the embeddings; WeightsError (naming the file) otherwise. Reads JSON
    only: the checkpoint itself is not hashed again here.
    """
    spec = backbone_provenance.get("spec") or {}
    name = str(spec.get("name") or "")
    if spec.get("arch") != HYBRID_ARCH and not name.startswith(HYBRID_PREFIX):
        return None
    weights = spec.get("weights") or backbone_provenance.get("weights")
    if not weights:
        raise WeightsError(f"backbone {name!r}: its provenance records no checkpoint path")
    path = Path(str(weights))
    expected = backbone_provenance.get("weights_sha256") or spec.get("weights_sha256")
    meta = read_sidecar(path)  # WeightsError naming the file when it is gone
    if expected and meta.get("sha256") != expected:
        raise WeightsError(
            f"{path}: this checkpoint (sha256 {str(meta.get('sha256'))[:12]}) is not the one that "
            f"made the embeddings of {name!r} (sha256 {str(expected)[:12]}); it was replaced after "
            "extraction"
        )
    return path
