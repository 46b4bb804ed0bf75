"""Where featmammo keeps run-time artefacts (stores, runs, indexes) and where weights live.

Artefacts: ``$FEATMAMMO_CACHE`` when set, else ``cache/`` in the current directory.
Weights: torch's own home, exactly as torch/torchvision resolve it (``$TORCH_HOME``, else
``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``), so files downloaded by torchvision are found
and files imported once are found from every folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$FEATMAMMO_CACHE`` if set, else ``cache/`` in the current directory."""
    return Path(os.environ.get("FEATMAMMO_CACHE", "cache")).expanduser()


def torch_home() -> Path:
    """torch's home folder, resolved as ``torch.hub`` does (without importing torch)."""
    env = os.environ.get("TORCH_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "torch"


def weights_dir() -> Path:
    """The folder whose ``hub/checkpoints`` holds torchvision weight files: :func:`torch_home`."""
    return torch_home()


def missing_weights_hint(names=()) -> str:
    """What to run when ImageNet weights are missing, in CLI words (no torch needed)."""
    listed = " ".join(names) or "NAME..."
    return (
        f"get them with `featmammo weights fetch {listed}` (downloads torchvision's files into "
        "torch's hub folder and checks their sha256), copy a downloaded file in with "
        "`featmammo weights import FILE`, or run with `--weights random` to use untrained "
        "backbones on purpose"
    )
