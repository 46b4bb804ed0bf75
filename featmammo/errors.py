"""The typed errors featmammo raises. Every one names the file (or row) and the reason."""

from __future__ import annotations


class FeatmammoError(Exception):
    """Base class: anything featmammo refuses to do, with a message a user can act on."""


class ImageReadError(FeatmammoError):
    """One image could not be read. ``path`` names the file, ``reason`` says why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


class ManifestError(FeatmammoError):
    """A manifest (or the source it is built from) is unusable; the message names the row/file."""


class StoreError(FeatmammoError):
    """An embedding store is missing, malformed, or incompatible with the requested operation."""


class WeightsError(FeatmammoError):
    """Requested model weights are unavailable or fail verification (never silently replaced)."""


class ConfigError(FeatmammoError):
    """An invalid option or combination of options."""


class AllImagesFailed(FeatmammoError):
    """An extraction in which every image failed (nothing done, nothing already done).

    The failures are in the store and in ``.summary`` (``featmammo.extract.ExtractSummary``).
    """

    def __init__(self, message: str, summary):
        super().__init__(message)
        self.summary = summary

    def __reduce__(self):  # picklable (torchrun ranks, worker processes) with its summary
        return (type(self), (str(self), self.summary))
