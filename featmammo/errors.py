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


class RankFailed(FeatmammoError):
    """Another process of the same ``torchrun`` launch failed (or stopped making progress); the
    message names that rank and its error. Every rank of the launch stops with it."""


class StoreSpaceError(StoreError):
    """A store write ran out of space (ENOSPC, a quota, or a file size limit): nothing half-written
    is left, the store keeps every row done before. ``path`` is the store, ``needed`` and
    ``available`` the bytes the write needed and had (None where unknown)."""

    def __init__(self, message: str, path=None, needed: int | None = None, available=None):
        super().__init__(message)
        self.path, self.needed, self.available = path, needed, available

    def __reduce__(self):
        return (type(self), (str(self), self.path, self.needed, self.available))


class UntrustedModelError(WeightsError):
    """A model file that could run code or build types featmammo does not trust when loaded (a
    pickle without ``trust_pickle``, a skops file naming an unknown type): refused before anything
    is built; the message names the file and the types."""
