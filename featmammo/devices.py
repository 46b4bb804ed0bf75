"""Where torch work runs: the one device resolver and the one torchrun-environment parser.

Every module that places tensors (extraction, HybridNet training, the torch refinement head, the
backbone registry) resolves ``--device`` here, so ``auto``/``cpu``/``cuda[:N]`` mean the same
everywhere and ``cuda`` on a machine without one is the same :class:`~featmammo.errors.ConfigError`.
torch is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import ConfigError


def resolve_device(device=None):
    """``None``/``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a ConfigError.

    Accepts a string (``cpu``, ``cuda``, ``cuda:1``) or a ``torch.device``; returns a
    ``torch.device``.
    """
    import torch

    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"--device {device!r}: not a device (use auto, cpu, cuda or cuda:N)"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: only cpu and cuda are supported")
    return dev


@dataclass(frozen=True)
class TorchrunEnv:
    """This process's place in a ``torchrun`` launch (all 0/1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def torchrun_env(environ=None) -> TorchrunEnv:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` (set by torchrun)."""
    env = os.environ if environ is None else environ

    def num(name: str, default: int) -> int:
        raw = str(env.get(name, default)).strip()
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None
        if value < 0:
            raise ConfigError(f"environment variable {name}={raw!r} is negative")
        return value

    world = max(1, num("WORLD_SIZE", 1))
    return TorchrunEnv(
        rank=num("RANK", 0),
        world_size=world,
        local_rank=num("LOCAL_RANK", 0),
        local_world_size=max(1, num("LOCAL_WORLD_SIZE", world)),
    )
