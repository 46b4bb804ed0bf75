"""Backbone weights: torchvision ImageNet files (offline, hash-checked) and local state-dict files.

This module owns

- where torchvision weight files live: torch's hub folder, ``<torch home>/hub/checkpoints/``,
  resolved by ``torch.hub.get_dir()`` exactly as torchvision does (``$TORCH_HOME``, else
  ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``; ``torch.hub.set_dir`` is honoured too);
- the identity of each torchvision weights enum member (``ResNet50_Weights.IMAGENET1K_V2``), its
  file name and the SHA-256 prefix that torchvision embeds in that name
  (``resnet50-11ad3fa6.pth``: the file's sha256 starts with ``11ad3fa6``; the convention
  ``torch.hub`` checks on download);
- SHA-256 checks (file-name prefix, ``FILE.sha256`` sidecars, explicit hashes) *before* any load;
- reading state dicts with ``torch.load(weights_only=True)`` and matching them to an architecture.

Nothing is downloaded implicitly: ``featmammo weights fetch NAME`` (:func:`fetch_torchvision_file`)
downloads on purpose, and ``FEATMAMMO_ALLOW_DOWNLOAD=1`` lets a run download what it misses. A
missing file raises :class:`~featmammo.errors.WeightsError` naming the exact file, the folder and
the command that fetches it. Nothing ever falls back to random weights.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from featmammo.errors import WeightsError
from featmammo.hashing import sha256_file
from featmammo.paths import missing_weights_hint

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ALLOW_DOWNLOAD_ENV = "FEATMAMMO_ALLOW_DOWNLOAD"

# torch.hub's own convention (torch.hub.HASH_REGEX): the hex run between a "-" and the suffix.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")
_HEX = re.compile(r"^[0-9a-f]{8,64}$")


@dataclass(frozen=True)
class TorchvisionWeights:
    """One torchvision weights enum member and the file it lives in."""

    arch: str
    enum_name: str  # e.g. "ResNet50_Weights"
    member: str  # e.g. "IMAGENET1K_V2"
    url: str
    input_size: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    meta: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str | None:
        return hash_prefix_from_name(self.file_name)

    @property
    def identity(self) -> str:
        """What the store records as the weights: ``imagenet:ResNet50_Weights.IMAGENET1K_V2``."""
        return f"imagenet:{self.enum_name}.{self.member}"

    @property
    def path(self) -> Path:
        return checkpoints_dir() / self.file_name


def checkpoints_dir() -> Path:
    """torchvision's weights folder: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()).expanduser() / "checkpoints"


def hash_prefix_from_name(file_name: str) -> str | None:
    """The sha256 prefix in a torchvision file name (``alexnet-owt-7be5be79.pth`` -> ``7be5be79``).

    None when the name carries no hex run of at least 8 characters.
    """
    m = _HASH_IN_NAME.search(Path(file_name).name)
    if m is None or len(m.group(1)) < 8:
        return None
    return m.group(1)


def _weights_from_member(arch: str, enum_cls, member) -> TorchvisionWeights:
    transforms = getattr(member, "transforms", None)
    kw = dict(getattr(transforms, "keywords", {}) or {})
    crop = kw.get("crop_size", 224)
    if isinstance(crop, (list, tuple)):
        crop = crop[0]
    return TorchvisionWeights(
        arch=arch,
        enum_name=enum_cls.__name__,
        member=member.name,
        url=member.url,
        input_size=int(crop),
        mean=tuple(float(v) for v in kw.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in kw.get("std", IMAGENET_STD)),
        meta=dict(member.meta),
    )


def weights_enum(arch: str):
    """torchvision's weights enum class for ``arch`` (``ResNet50_Weights`` for ``resnet50``)."""
    import torchvision.models as tvm

    try:
        return tvm.get_model_weights(arch)
    except (ValueError, KeyError) as exc:
        raise WeightsError(
            f"{arch}: torchvision has no weights enum for this model ({exc})"
        ) from exc


def torchvision_weights(arch: str, member: str | None = None) -> TorchvisionWeights:
    """Describe ``arch``'s weights ``member`` (enum member name; None = torchvision's DEFAULT).

    ``member`` may also be written ``EnumName.MEMBER`` (``ResNet50_Weights.IMAGENET1K_V1``).
    """
    enum_cls = weights_enum(arch)
    if member is None:
        chosen = enum_cls.DEFAULT
    else:
        name = member.split(".", 1)[1] if member.startswith(enum_cls.__name__ + ".") else member
        try:
            chosen = enum_cls[name]
        except KeyError:
            raise WeightsError(
                f"{arch}: unknown weights {member!r}; torchvision offers "
                + ", ".join(f"{enum_cls.__name__}.{m.name}" for m in enum_cls)
            ) from None
    return _weights_from_member(arch, enum_cls, chosen)


def weights_members(arch: str) -> list[TorchvisionWeights]:
    """Every weights member torchvision offers for ``arch``."""
    enum_cls = weights_enum(arch)
    return [_weights_from_member(arch, enum_cls, m) for m in enum_cls]


@functools.lru_cache(maxsize=1)
def known_files() -> dict[str, TorchvisionWeights]:
    """File name -> weights for every torchvision classification model's weights."""
    import torchvision.models as tvm

    out: dict[str, TorchvisionWeights] = {}
    for arch in tvm.list_models(module=tvm):
        try:
            members = weights_members(arch)
        except WeightsError:
            continue
        for w in members:
            out.setdefault(w.file_name, w)
    return out


# -- hashing -------------------------------------------------------------------------------------

_HASH_MEMO: dict[tuple, str] = {}


def file_sha256(path) -> str:
    """sha256 of a file, memoised per process by (path, size, mtime) so a re-make costs nothing."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASH_MEMO:
        _HASH_MEMO[key] = sha256_file(p)
    return _HASH_MEMO[key]


def read_sidecar(path) -> str | None:
    """The expected sha256 from ``PATH.sha256`` (``sha256sum`` format or bare hex), if present."""
    side = Path(str(path) + ".sha256")
    if not side.is_file():
        return None
    text = side.read_text().strip().split()
    digest = text[0].lower() if text else ""
    if not _HEX.match(digest):
        raise WeightsError(
            f"{side}: not a sha256 sidecar (expected hex digest, got {digest[:70]!r})"
        )
    return digest


def normalise_sha256(expected: str, source: str) -> str:
    digest = expected.strip().lower()
    if not _HEX.match(digest):
        raise WeightsError(f"{source}: expected sha256 {expected!r} is not 8-64 hex characters")
    return digest


def check_sha256(path, actual: str, expected: str, what: str) -> None:
    """WeightsError when ``actual`` does not start with ``expected`` (a prefix or full hash)."""
    if not actual.startswith(expected):
        raise WeightsError(
            f"{path}: sha256 {actual} does not match the expected {expected} ({what}); "
            "the file is corrupt, truncated, or not the weights it claims to be"
        )


# -- torchvision ImageNet files ------------------------------------------------------------------


def ensure_torchvision_file(w: TorchvisionWeights) -> tuple[Path, str]:
    """Return (path, sha256) of ``w``'s file in the checkpoints folder, verified against its name.

    Missing file: WeightsError naming the file and folder (download only if
    FEATMAMMO_ALLOW_DOWNLOAD=1).
    Hash mismatch: WeightsError; the file is never loaded.
    """
    path = w.path.absolute()
    if not path.is_file():
        if os.environ.get(ALLOW_DOWNLOAD_ENV) == "1":
            _download(w, path)
        else:
            raise WeightsError(
                f"ImageNet weights for {w.arch} ({w.identity}) not found: expected file "
                f"'{w.file_name}' in folder '{path.parent}' (torch's hub folder; set TORCH_HOME to "
                f"use another). Nothing is downloaded implicitly: "
                f"{missing_weights_hint([w.arch])}. On an offline machine, fetch {w.url} "
                "elsewhere and import it."
            )
    sha = file_sha256(path)
    prefix = w.sha256_prefix
    if prefix is None:  # every torchvision classification file has one; refuse rather than guess
        raise WeightsError(
            f"{path}: file name carries no sha256 prefix; cannot verify {w.identity}"
        )
    if not sha.startswith(prefix):
        raise WeightsError(
            f"{path}: sha256 {sha} does not start with '{prefix}', the hash torchvision embeds in "
            f"the file name '{w.file_name}'; the file is corrupt or is not {w.identity}. Delete it "
            "and re-import the original download (`featmammo weights import FILE`), or pass the "
            "file explicitly as weights=PATH to use it as an unverified local state dict."
        )
    log.debug("verified %s (sha256 %s)", path, sha)
    return path, sha


def _download(w: TorchvisionWeights, path: Path, progress: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s -> %s", w.url, path)
    try:
        # torch.hub writes a temporary file beside ``path``, checks the sha256 prefix and only
        # then moves it into place: a failed or corrupt download never leaves a file behind
        torch.hub.download_url_to_file(
            w.url, str(path), hash_prefix=w.sha256_prefix, progress=progress
        )
    except Exception as exc:  # network errors come in many types; the message says which
        raise WeightsError(f"{path}: download of {w.url} failed ({exc})") from exc


def fetch_torchvision_file(w: TorchvisionWeights, *, progress: bool = True) -> tuple[Path, str]:
    """Download ``w``'s file into the checkpoints folder (unless an intact copy is there).

    Returns (path, sha256) after the full check of :func:`ensure_torchvision_file`. A present
    file whose sha256 does not match is replaced by a fresh download.
    """
    path = w.path.absolute()
    if path.is_file() and w.sha256_prefix and file_sha256(path).startswith(w.sha256_prefix):
        return path, file_sha256(path)
    if path.is_file():
        log.warning("%s: sha256 does not match its name; downloading it again", path)
        path.unlink()
    _download(w, path, progress=progress)
    return ensure_torchvision_file(w)


# -- local state-dict files ----------------------------------------------------------------------


def resolve_local_file(path, expected_sha256: str | None = None) -> tuple[Path, str, str]:
    """Check a local weights file: returns (path, sha256, how it was verified).

    Checked against, in this order, whichever are known: ``expected_sha256``, the ``PATH.sha256``
    sidecar, and (for a file named like a torchvision download) the hash prefix in its name.
    ``how`` is ``"explicit"``, ``"sidecar"``, ``"torchvision-name"`` or ``"unverified"``.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(
            f"{p}: weights file not found (weights must be 'imagenet', 'random', or a PATH to a "
            "state-dict file)"
        )
    sha = file_sha256(p)
    how = "unverified"
    if expected_sha256:
        check_sha256(p, sha, normalise_sha256(expected_sha256, str(p)), "expected hash")
        how = "explicit"
    side = read_sidecar(p)
    if side is not None:
        check_sha256(p, sha, side, f"sidecar {p.name}.sha256")
        how = "explicit" if how == "explicit" else "sidecar"
    if p.name in known_files():
        prefix = known_files()[p.name].sha256_prefix
        check_sha256(p, sha, prefix, f"hash prefix in the torchvision file name {p.name}")
        how = how if how != "unverified" else "torchvision-name"
    if how == "unverified":
        log.info("%s: no expected sha256 known; recorded sha256 %s", p, sha)
    return p.resolve(), sha, how


def load_state_dict_file(path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True``.

    Accepts a raw state dict, ``{'state_dict': ...}`` or ``{'model': ...}``; strips a DataParallel
    ``module.`` prefix. Floating tensors are converted to float32.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have many types; all mean "not a safe state dict"
        raise WeightsError(
            f"{path}: cannot be read as a state dict with weights_only=True ({exc})"
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{path}: not a state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path}: not a state dict; non-tensor entries such as {bad[:3]!r}")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def match_state_dict(
    expected: Mapping[str, torch.Tensor],
    sd: Mapping[str, torch.Tensor],
    *,
    source,
    arch: str,
    ignore_prefixes: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Return ``sd`` without ignored keys; WeightsError naming missing/unexpected/misshapen keys.

    ``expected`` is the target model's state dict (meta tensors are fine: only keys and shapes
    are read). BatchNorm ``num_batches_tracked`` may be absent (old torchvision files).
    """
    ignore = tuple(ignore_prefixes)
    kept = {k: v for k, v in sd.items() if not (ignore and k.startswith(ignore))}
    missing = sorted(k for k in expected if k not in kept and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in kept if k not in expected)
    misshapen = sorted(
        f"{k} {tuple(kept[k].shape)} vs {tuple(expected[k].shape)}"
        for k in kept
        if k in expected and tuple(kept[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:5])})")
        if misshapen:
            parts.append(f"{len(misshapen)} shape mismatches (e.g. {'; '.join(misshapen[:3])})")
        raise WeightsError(f"{source}: state dict does not match {arch}: " + "; ".join(parts))
    return kept
