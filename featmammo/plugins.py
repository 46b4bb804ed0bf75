"""The neutral plugin table: which module provides a prefixed backbone name.

The backbone registry (:mod:`featmammo.backbones.registry`) builds torchvision networks itself,
and :mod:`featmammo.nn` builds on the registry, so the arrow between them points one way only:
``nn -> backbones``. A name such as ``hybrid:RUN/checkpoint.pt`` is resolved by the module this
table names for its prefix; importing that module registers its loader with
:func:`featmammo.backbones.registry.register_prefix`. The registry imports the provider by name
on first use, so ``make("hybrid:...")`` works without the caller importing ``featmammo.nn``, and
``make("timm:...")`` imports timm only then. Importing this module imports nothing.
"""

from __future__ import annotations

#: backbone names ``hybrid:PATH`` are trained HybridNet checkpoints (the one definition)
HYBRID_PREFIX = "hybrid:"
#: ``timm:NAME[.TAG]``: any timm model, its pre-logits features
TIMM_PREFIX = "timm:"
#: ``mammoclip:CHECKPOINT``: the Mammo-CLIP image encoder of a released checkpoint
MAMMOCLIP_PREFIX = "mammoclip:"

#: name prefix -> module that registers its loader when imported
BACKBONE_PREFIX_PROVIDERS: dict[str, str] = {
    HYBRID_PREFIX: "featmammo.nn.backbone",
    TIMM_PREFIX: "featmammo.backbones.timm_models",
    MAMMOCLIP_PREFIX: "featmammo.backbones.mammoclip",
}

#: prefixes whose names carry their own weights (a checkpoint file): ``--weights`` (imagenet,
#: random, PATH) applies to the other backbones of a run, and these are built with the default
CHECKPOINT_PREFIXES: tuple[str, ...] = (HYBRID_PREFIX, MAMMOCLIP_PREFIX)
