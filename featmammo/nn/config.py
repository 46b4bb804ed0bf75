"""HybridNet training options (featmammo.nn): :class:`TrainConfig`, :class:`TrainResult` and the
rules that turn them into classes, preprocessing and names.

``TrainConfig`` is everything that defines a run (saved as ``RUN_DIR/config.json``); a resumed run
must match it except for the keys in :data:`RESUME_FREE` (where and how fast it runs). Imports no
torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from featmammo.errors import ConfigError
from featmammo.hashing import canonical_json

log = logging.getLogger(__name__)

#: the convolutional trunks HybridNet can run (featmammo.nn.model builds them)
TRUNKS = ("resnet50", "alexnet")
#: feature-map fusion (concatenated maps, refined by convolutions) or late fusion (pooled vectors)
FUSIONS = ("feature-map", "late")

MONITORS = ("balanced_accuracy", "loss")
#: where the held-out test images come from: the manifest's split=test rows, whole patients drawn
#: at random (``featmammo.splits.grouped_holdout``, ``fit``'s rule and seed), or none
TEST_SPLITS = ("official", "grouped", "none")
BALANCE = ("weights", "sampler", "none")
SCHEDULES = ("cosine", "onecycle")
AMP_MODES = ("auto", "bf16", "fp16", "none")
HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "lr",
    "trunks_frozen",
    "time",
]
#: config keys that may differ between an interrupted run and its resumption
RESUME_FREE = {"device", "workers", "eval_batch_size", "amp", "prepared_cache", "keep_last"}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as RUN_DIR/config.json)."""

    classes: tuple[str, ...] | str | None = None  # None: the manifest's labels, in LABELS order
    epochs: int = 20
    batch_size: int = 16
    image_size: int | tuple[int, int] = 224  # N (N x N) or (H, W)
    fusion: str = "feature-map"
    trunks: tuple[str, ...] = TRUNKS
    weights: str = "imagenet"
    device: str = "auto"
    seed: int = 0
    lr: float = 1e-3
    trunk_lr_mult: float | None = None  # None: 1.0 with random weights, 0.1 with pretrained ones
    weight_decay: float = 1e-4
    freeze_epochs: int | None = None  # None: 0 with random weights, 2 with pretrained ones
    schedule: str = "cosine"
    val_fraction: float = 0.2
    test_split: str = "official"  # official | grouped | none (see TEST_SPLITS)
    test_size: float = 0.2  # share of patients held out by test_split="grouped"
    monitor: str = "balanced_accuracy"
    patience: int = 5
    balance: str = "weights"
    augment: bool | dict = True  # True: the paper's Augment(); a dict: Augment(**dict) strengths
    amp: str = "auto"
    hidden: int = 256
    dropout: float = 0.5
    refine_channels: tuple[int, int] = (512, 256)
    eval_batch_size: int = 32
    workers: int = 0  # threads decoding images for the cache
    prepared_cache: bool = True  # read/write featmammo.prepared's cache (False: --no-cache)
    keep_last: bool = False  # keep last.pt and the decoded images once the run is finished
    preprocess: dict = field(
        default_factory=dict
    )  # PreprocessConfig fields (image_size from above)

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        self.trunks = tuple(self.trunks)
        if not self.trunks or any(t not in TRUNKS for t in self.trunks):
            raise ConfigError(f"trunks must be a subset of {TRUNKS}, got {self.trunks!r}")
        for name, allowed in (
            ("test_split", TEST_SPLITS),
            ("monitor", MONITORS),
            ("balance", BALANCE),
            ("schedule", SCHEDULES),
            ("amp", AMP_MODES),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        from featmammo.preprocess import parse_image_size

        self.image_size = parse_image_size(self.image_size)  # N, or (H, W) when not square
        sides = (self.image_size,) * 2 if isinstance(self.image_size, int) else self.image_size
        if min(sides) < 32:  # AlexNet's two max-pools need at least 31 px a side
            raise ConfigError(
                f"image_size must be >= 32 a side for the HybridNet trunks, got {self.image_size}"
            )
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2 (batch norm needs two samples)")
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if not 0.0 < float(self.test_size) < 1.0:
            raise ConfigError(f"test_size must be in (0, 1), got {self.test_size!r}")
        if self.classes is not None and not isinstance(self.classes, str):
            self.classes = tuple(self.classes)
        self.refine_channels = tuple(int(c) for c in self.refine_channels)
        if self.freeze_epochs is None:
            self.freeze_epochs = 0 if self.weights == "random" else 2
        if self.trunk_lr_mult is None:  # random trunks must learn at full rate
            self.trunk_lr_mult = 1.0 if self.weights == "random" else 0.1
        self.preprocess = dict(self.preprocess)
        if isinstance(self.augment, dict):
            from featmammo.augment import Augment

            self.augment = dict(self.augment)
            Augment.from_dict(self.augment)  # raises ConfigError on a bad strength
        elif not isinstance(self.augment, bool):
            raise ConfigError(f"augment must be true/false or a dict, got {self.augment!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["trunks"] = list(self.trunks)
        d["refine_channels"] = list(self.refine_channels)
        if isinstance(self.image_size, tuple):
            d["image_size"] = list(self.image_size)
        if isinstance(self.classes, tuple):
            d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training options {sorted(unknown)}")
        return cls(**d)


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    classes: tuple[str, ...]
    best_epoch: int
    best_metric: float
    epochs_run: int
    stopped_early: bool
    history: pd.DataFrame
    metrics: dict | None


def features_name(fusion: str, trunks: Sequence[str]) -> str:
    """The ``features`` label of a HybridNet in predictions.csv / the leaderboard."""
    trunks = tuple(trunks)
    if trunks == TRUNKS:
        return f"hybridnet-{fusion}"
    return f"{'+'.join(trunks)}-end2end"


def preprocess_config(cfg: TrainConfig):
    """The run's :class:`~featmammo.preprocess.PreprocessConfig` (``image_size`` from ``cfg``)."""
    from featmammo.preprocess import PreprocessConfig

    fields = dict(cfg.preprocess)
    fields["image_size"] = cfg.image_size
    try:
        return PreprocessConfig.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid preprocess options {cfg.preprocess!r}: {exc}") from exc


def resolve_classes(cfg: TrainConfig, labels: Sequence[str]) -> tuple[str, ...]:
    """``cfg.classes`` parsed, or else the manifest's labels (featmammo's LABELS order first)."""
    from featmammo.labels import parse_classes

    if cfg.classes is not None:
        return tuple(parse_classes(cfg.classes))
    from featmammo.datasets import LABELS

    present = {str(v) for v in labels}
    classes = tuple(c for c in LABELS if c in present)
    extra = sorted(present - set(LABELS))
    classes = classes + tuple(extra)
    if len(classes) < 2:
        raise ConfigError(
            f"the manifest has fewer than two labels ({sorted(present)}); pass --classes"
        )
    log.info("classes not given: using the manifest's labels %s", ",".join(classes))
    return classes


def check_resume_config(run_dir: Path, cfg: TrainConfig) -> None:
    """ConfigError unless ``cfg`` matches the run's saved config (except :data:`RESUME_FREE`)."""
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        raise ConfigError(f"{saved_path}: missing; cannot resume this run")
    saved = json.loads(saved_path.read_text())["train"]
    now = json.loads(canonical_json(cfg.to_dict()))
    # options added after a run was started are compared with their defaults (the old behaviour)
    defaults = json.loads(canonical_json(TrainConfig(weights=cfg.weights).to_dict()))
    saved = {**{k: defaults[k] for k in defaults.keys() - saved.keys()}, **saved}
    diff = sorted(
        k for k in set(saved) | set(now) if k not in RESUME_FREE and saved.get(k) != now.get(k)
    )
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff)
        raise ConfigError(f"{saved_path}: --resume with different options ({details})")
