"""The neutral plugin table: which module provides a prefixed backbone name.

The backbone registry (:mod:`featmammo.backbones.registry`) knows no network beyond torchvision's,
and :mod:`featmammo.nn` builds on the registry, so the arrow between them points one way only:
``nn -> backbones``. A name such as ``hybrid:RUN/checkpoint.pt`` is resolved by the module this
table names for its prefix; importing that module registers its loader with
:func:`featmammo.backbones.registry.register_prefix`. The registry imports the provider by name
on first use, so ``make("hybrid:...")`` works without the caller importing ``featmammo.nn``.
Importing this module imports nothing.
"""

from __future__ import annotations

#: backbone names ``hybrid:PATH`` are trained HybridNet checkpoints (the one definition)
HYBRID_PREFIX = "hybrid:"

#: name prefix -> module that registers its loader when imported
BACKBONE_PREFIX_PROVIDERS: dict[str, str] = {
    HYBRID_PREFIX: "featmammo.nn.backbone",
}
