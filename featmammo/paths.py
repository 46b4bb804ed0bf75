"""Where featmammo keeps run-time artefacts (weights, stores, runs).

``$FEATMAMMO_CACHE`` when set, else ``cache/`` in the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$FEATMAMMO_CACHE`` if set, else ``cache/`` in the current directory."""
    return Path(os.environ.get("FEATMAMMO_CACHE", "cache")).expanduser()


def weights_dir() -> Path:
    """TORCH_HOME used for torchvision weights unless the user already set TORCH_HOME."""
    env = os.environ.get("TORCH_HOME")
    return Path(env).expanduser() if env else cache_dir() / "weights"
