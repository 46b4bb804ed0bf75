"""What one ``extract`` call did: :class:`ExtractSummary`, merged over ranks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class ExtractSummary:
    """What one ``extract`` call did (aggregated over ranks when sharded)."""

    store: str
    backbones: list[str]
    n_images: int = 0  # manifest rows
    n_done: int = 0  # images newly embedded by this run (every requested backbone)
    n_skipped: int = 0  # images already done for every requested backbone
    n_failed: int = 0  # images with at least one failure in this run
    # images embedded before whose files changed since (file_identity): pending again, redone
    n_reembedded: int = 0
    failures: list[dict] = field(default_factory=list)  # image_id, path, backbone, reason
    # images read by this run per pixel policy the reader applied (voi_lut, window, none, ...)
    windowing_applied: dict = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "cpu"
    precision: str = "float32"
    world_size: int = 1
    workers: int = 0
    decoder: str = "cpu"  # resolved: cpu or nvimagecodec (JPEG 2000 DICOMs)
    max_failures: int | None = None
    exceeded_max_failures: bool = False
    stopped_early: bool = False

    @property
    def n_failures(self) -> int:
        """Image x backbone failures (``featmammo info`` counts these); ``n_failed``: images."""
        return len(self.failures)

    @property
    def images_per_s(self) -> float:
        return (self.n_done + self.n_failed) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "n_failures": self.n_failures,
            "images_per_s": round(self.images_per_s, 3),
        }


def _first_failure(summary: ExtractSummary) -> str:
    if not summary.failures:
        return "no reason recorded"
    f = summary.failures[0]
    return f"{f['path'] or f['image_id']}: {f['reason']}"


def _merge_summaries(parts: list[ExtractSummary]) -> ExtractSummary:
    out = parts[0]
    for s in parts[1:]:
        out.n_done += s.n_done
        out.n_skipped += s.n_skipped
        out.n_failed += s.n_failed
        out.n_reembedded = max(out.n_reembedded, s.n_reembedded)
        out.failures += s.failures
        for k, v in s.windowing_applied.items():
            out.windowing_applied[k] = out.windowing_applied.get(k, 0) + v
        out.stopped_early |= s.stopped_early
    out.n_images = parts[0].n_images
    return out
