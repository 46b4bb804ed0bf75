"""The operations behind ``featmammo weights list | verify | import | fetch`` (plain dicts).

- :func:`list_weights`: each backbone's ImageNet weights file, whether it is in
  ``TORCH_HOME/hub/checkpoints`` and whether its sha256 matches the prefix in its name;
- :func:`verify`: recompute sha256 of a backbone's file, a given file, or every file present;
- :func:`fetch`: download torchvision's ImageNet files for named backbones, on purpose, with the
  sha256 check (``torch.hub`` checks the prefix in the name before the file appears), and the
  pretrained files of ``timm:NAME`` backbones into the caches timm reads (Hugging Face hub cache,
  or torch's hub folder for URL-only tags), verified after download;
- :func:`import_file`: copy a downloaded ``.pth`` into the checkpoints folder under its torchvision
  name, after checking its sha256 against that name and its keys/shapes against the architecture.
  Mismatches are refused with :class:`~featmammo.errors.WeightsError`.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from featmammo.atomic import atomic_write
from featmammo.errors import ConfigError, WeightsError
from featmammo.plugins import TIMM_PREFIX

from . import arch as _arch
from . import registry as _registry
from . import weights as _weights

log = logging.getLogger(__name__)


def imagenet_weights(name: str) -> _weights.TorchvisionWeights:
    """The torchvision weights file that ``make(name, weights="imagenet")`` loads."""
    rec = _registry.recipe(name)
    return _weights.torchvision_weights(rec.arch, rec.imagenet)


def list_weights(*, all_models: bool = False, check_hash: bool = True) -> list[dict]:
    """One row per backbone: expected file, folder, presence and (if present) sha256 check."""
    names = _registry.available() if all_models else _registry.registered()
    folder = _weights.checkpoints_dir().absolute()
    rows = []
    for name in names:
        tw = imagenet_weights(name)
        path = folder / tw.file_name
        present = path.is_file()
        sha = _weights.file_sha256(path) if present and check_hash else None
        rows.append(
            {
                "name": name,
                "arch": tw.arch,
                "weights": tw.identity,
                "file": tw.file_name,
                "folder": str(folder),
                "url": tw.url,
                "present": present,
                "sha256": sha,
                "sha256_ok": None if sha is None else sha.startswith(tw.sha256_prefix or "\0"),
            }
        )
    return rows


def check_state_dict_file(path, tw: _weights.TorchvisionWeights) -> int:
    """Load ``path`` (weights_only) and check it fits ``tw.arch``; returns the number of tensors."""
    kwargs = _arch.builder_kwargs(tw.arch, tw, random_init=False)
    model = _arch.build(tw.arch, kwargs, meta=True)
    _, ignored = _arch.strip_head(model, tw.arch)
    sd = _weights.load_state_dict_file(path)
    _weights.match_state_dict(
        model.state_dict(), sd, source=path, arch=tw.arch, ignore_prefixes=ignored
    )
    return len(sd)


def _verify_file(path: Path, *, name: str | None = None, sha256: str | None = None) -> dict:
    row = {"target": str(path), "file": str(path), "sha256": None, "expected": None, "by": None}
    if not path.is_file():
        return {**row, "status": "missing", "ok": False, "reason": "file not found"}
    sha = _weights.file_sha256(path)
    row["sha256"] = sha
    checks: list[tuple[str, str]] = []
    if sha256:
        checks.append((_weights.normalise_sha256(sha256, str(path)), "explicit"))
    try:
        side = _weights.read_sidecar(path)
    except WeightsError as exc:
        return {**row, "status": "mismatch", "ok": False, "reason": str(exc)}
    if side:
        checks.append((side, "sidecar"))
    known = _weights.known_files().get(path.name)
    if known is not None:
        checks.append((known.sha256_prefix, "torchvision-name"))
    for expected, by in checks:
        if not sha.startswith(expected):
            return {**row, "expected": expected, "by": by, "status": "mismatch", "ok": False,
                    "reason": f"sha256 does not start with {expected} ({by})"}  # fmt: skip
    if checks:
        row["expected"], row["by"] = checks[0]
    status, reason = ("ok" if checks else "unverified"), None
    if not checks:
        reason = "no expected hash known (no sidecar, not a torchvision file name, no --sha256)"
    if name is not None or known is not None:
        tw = known if name is None else imagenet_weights(name)
        try:
            check_state_dict_file(path, tw)
        except WeightsError as exc:
            return {**row, "status": "mismatch", "ok": False, "reason": str(exc)}
    return {**row, "status": status, "ok": True, "reason": reason}


def verify(target: str | None = None, *, name: str | None = None, sha256: str | None = None):
    """Verify one backbone's ImageNet file (``target`` = a backbone name), one file, or (None) every
    file present in the checkpoints folder. Returns rows with ``status`` ok | unverified |
    mismatch | missing and ``ok`` (False for mismatch/missing)."""
    folder = _weights.checkpoints_dir().absolute()
    if target is None:
        files = sorted(
            p for p in folder.glob("*") if p.is_file() and not p.name.endswith(".sha256")
        )
        return [_verify_file(p) for p in files]
    p = Path(target).expanduser()
    if not p.exists() and target.startswith(TIMM_PREFIX):
        return [_verify_timm(target)]
    if not p.exists():
        try:
            tw = imagenet_weights(target)
        except ConfigError:
            return [{"target": target, "file": str(p), "sha256": None, "expected": None,
                     "by": None, "status": "missing", "ok": False,
                     "reason": "neither a file nor a known backbone name"}]  # fmt: skip
        row = _verify_file(folder / tw.file_name, sha256=sha256)
        if row["status"] == "missing":
            row["reason"] = (
                f"expected file '{tw.file_name}' for {tw.identity} not in folder '{folder}' "
                f"(featmammo weights fetch {target}, or featmammo weights import FILE; source "
                f"{tw.url})"
            )
        return [{**row, "target": target, "weights": tw.identity}]
    return [_verify_file(p, name=name, sha256=sha256)]


def _verify_timm(name: str) -> dict:
    """A ``timm:NAME``'s cached pretrained file: present, and its sha256 as the cache recorded."""
    from . import timm_models

    ref = timm_models.resolve(name)
    found = timm_models.pretrained_file(ref)
    row = {"target": name, "weights": ref.identity, "file": str(found.path or ""), "sha256": None,
           "expected": found.expected_sha256, "by": "hf-cache-blob-name"}  # fmt: skip
    if found.path is None:
        return {**row, "status": "missing", "ok": False,
                "reason": f"{found.where} (featmammo weights fetch {name})"}  # fmt: skip
    try:
        path, sha = timm_models.ensure_pretrained(ref)
    except WeightsError as exc:
        return {**row, "status": "mismatch", "ok": False, "reason": str(exc)}
    status = "ok" if found.expected_sha256 else "unverified"
    reason = None if found.expected_sha256 else "the cache records no hash for this file"
    return {**row, "file": str(path), "sha256": sha, "status": status, "ok": True, "reason": reason}


def import_file(path, *, name: str | None = None) -> dict:
    """Copy a downloaded torchvision weights file into ``TORCH_HOME/hub/checkpoints``.

    The file is identified by its own name (if it is a torchvision file name), by ``name`` (a
    backbone: its torchvision weight members are tried), or else by matching its sha256 against
    every torchvision file name's hash prefix. The sha256 must match that prefix and the state dict
    must fit the architecture; otherwise WeightsError and nothing is copied.
    """
    src = Path(path).expanduser()
    if not src.is_file():
        raise WeightsError(f"{src}: file not found")
    sha = _weights.file_sha256(src)
    known = _weights.known_files()
    by_name = known.get(src.name)
    if name is not None:
        rec = _registry.recipe(name)
        if by_name is not None and by_name.arch != rec.arch:
            raise WeightsError(
                f"{src}: the file name is torchvision's {by_name.identity} for {by_name.arch}, "
                f"not {name}; refusing to import"
            )
        candidates = [by_name] if by_name else _weights.weights_members(rec.arch)
    else:
        candidates = [by_name] if by_name else list(known.values())
    matches = [w for w in candidates if w.sha256_prefix and sha.startswith(w.sha256_prefix)]
    if not matches:
        if by_name is not None:
            reason = f"does not start with '{by_name.sha256_prefix}' embedded in its file name"
        elif name is not None:
            expected = ", ".join(w.file_name for w in candidates)
            reason = f"matches none of {name}'s torchvision files ({expected})"
        else:
            reason = "matches no torchvision weights file name (pass --name to say which backbone)"
        raise WeightsError(
            f"{src}: sha256 {sha} {reason}; refusing to import a corrupt, truncated or unknown "
            "file. A file of your own can be used directly with --weights PATH (its sha256 is "
            "recorded)."
        )
    tw = matches[0]
    n_tensors = check_state_dict_file(src, tw)
    dest = _weights.checkpoints_dir().absolute() / tw.file_name
    status = "imported"
    if dest.is_file() and _weights.file_sha256(dest) == sha:
        status = "already-present"
    else:

        def copy(out) -> None:
            digest = hashlib.sha256()
            with src.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != sha:  # the source changed while it was being copied
                raise WeightsError(f"{dest}: copy of {src} does not hash like the source")

        atomic_write(dest, copy)
        log.info("imported %s -> %s (%s)", src, dest, tw.identity)
    return {
        "file": str(src),
        "arch": tw.arch,
        "weights": tw.identity,
        "dest": str(dest),
        "sha256": sha,
        "tensors": n_tensors,
        "status": status,
    }


def fetch(names, *, progress: bool = True) -> list[dict]:
    """Download the ImageNet weights file of each backbone in ``names`` (skipping intact ones).

    Every name is resolved before anything is downloaded (an unknown name downloads nothing). A
    file already present with the right sha256 is kept (``status: already-present``). Errors
    (network, hash mismatch) raise WeightsError naming the file and URL. ``timm:NAME`` names fetch
    that tag's pretrained file into the cache timm reads (:func:`.timm_models.fetch`).
    """
    targets, timm_names = [], []
    for name in names:
        if str(name).startswith(TIMM_PREFIX):
            from . import timm_models

            timm_models.resolve(name)  # an unknown model or tag fails before any download
            timm_names.append(str(name))
            continue
        tw = imagenet_weights(name)
        if tw not in targets:
            targets.append(tw)
    rows = []
    for name in dict.fromkeys(timm_names):
        from . import timm_models

        rows.append(timm_models.fetch(name, progress=progress))
    for tw in targets:
        dest = tw.path.absolute()
        present = (
            dest.is_file()
            and bool(tw.sha256_prefix)
            and (_weights.file_sha256(dest).startswith(tw.sha256_prefix))
        )
        if present:
            status, sha = "already-present", _weights.file_sha256(dest)
        else:
            dest, sha = _weights.fetch_torchvision_file(tw, progress=progress)
            status = "downloaded"
            log.info("fetched %s -> %s (sha256 %s)", tw.url, dest, sha)
        rows.append(
            {
                "arch": tw.arch,
                "weights": tw.identity,
                "url": tw.url,
                "dest": str(dest),
                "sha256": sha,
                "status": status,
            }
        )
    return rows
