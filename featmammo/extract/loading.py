"""What is read: the manifest's masks, the dataset (read + preprocess one image), the batch loader
(DataLoader workers or a read-ahead thread)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..datasets.manifest import MASK_COLUMNS, check_roi_masks, mask_column  # noqa: F401
from ..errors import FeatmammoError, ImageReadError
from ..preprocess.config import ROI_MASK_MODES

log = logging.getLogger(__package__)  # "featmammo.extract" in log lines, as before the split


#: ROI modes that read the manifest's lesion mask; ``full`` never opens it
MASK_ROI_MODES = ROI_MASK_MODES
_mask_column = mask_column


def _prepare(item, config, laterality, mask, cache, decoder: str = "cpu") -> tuple:
    """``(x, read)``: one (3, H, W) float32 input and what the read did to it
    (``windowing_applied``, ``inverted``, ...: ``featmammo.preprocess.READ_META``; ``{}`` for an
    array). ``item``: a path
    (read through the prepared-image cache, decoded by ``decoder``), a 2-D pixel array
    (preprocessed here) or an already preprocessed (3, H, W) array (used as is)."""
    if isinstance(item, np.ndarray):
        if item.ndim == 3 and item.shape[0] == 3:
            return np.ascontiguousarray(item, dtype=np.float32), {}
        from ..preprocess import preprocess as run_preprocess

        return run_preprocess(item, config, laterality=laterality), {}
    # the lesion mask is read only by the ROI modes that use it: ``full`` never opens it
    mask = mask if config.uses_mask else None
    got = _load_prepared(item, config, laterality, mask, cache, decoder, True)
    return got if isinstance(got, tuple) else (got, {})


def _load_prepared(
    path, config, laterality, mask, cache, decoder: str = "cpu", with_meta: bool = False
):
    """Decoded, cropped, sided and resized once per image and config (``featmammo.prepared``),
    normalised here; bit-identical to ``load_and_preprocess``. ``cache=False``: no cache.
    ``with_meta``: ``(array, read meta)``."""
    from ..prepared import prepare_image

    return prepare_image(
        path, config, laterality=laterality, roi_mask_path=mask, cache=cache, decoder=decoder,
        with_meta=with_meta,
    )  # fmt: skip


class _Images(torch.utils.data.Dataset):
    """Reads + preprocesses one item; a per-image error (any ``FeatmammoError``: unreadable file,
    preprocessing refusal) becomes ``(i, None, error)``. Other exceptions are bugs: they propagate
    (from a worker process too) and stop the run with their traceback."""

    def __init__(self, items, lateralities, masks, config, cache=None, decoder: str = "cpu"):
        self.items, self.lateralities, self.masks = items, lateralities, masks
        self.config, self.cache, self.decoder = config, cache, decoder

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        try:
            x, read = _prepare(
                item, self.config, self.lateralities[i] or None, self.masks[i] or None,
                self.cache, self.decoder,
            )  # fmt: skip
            if x.ndim != 3 or x.shape[0] != 3:
                where = item if not isinstance(item, np.ndarray) else f"image {i}"
                raise ImageReadError(where, f"preprocess returned shape {x.shape}")
            return i, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), None, read
        except FeatmammoError as exc:
            return i, None, exc, {}


def _reason(exc: FeatmammoError, path: str = "", mask: str = "", hide_paths: bool = False) -> str:
    """What a store records for a failed image: why, without the image's own path (the store has
    it in its path column; a message that starts with it has it cut); an error of another file
    (the ROI ``mask``) says which. ``hide_paths`` (``--hash-ids``: the store keeps no path): the
    paths of the image, its folder and its mask are replaced by ``<image>``, ``<image folder>``
    and ``<ROI mask>`` wherever the message has them."""
    if isinstance(exc, ImageReadError):
        if not exc.path or exc.path in (path, _container(path)):
            return exc.reason
        which = "ROI mask" if mask and exc.path == mask else "file"
        text = f"{which}: {exc.reason}" if hide_paths else f"{which} {exc.path}: {exc.reason}"
    else:
        text = str(exc)
        for p in (path, _container(path)):
            if p and text.startswith(f"{p}: "):
                text = text[len(p) + 2 :]
                break
    if not hide_paths:
        return text
    import os

    names = []
    for p, label in ((mask, "<ROI mask>"), (path, "<image>"), (_container(path), "<image>")):
        if p:
            names += [(p, label), (os.path.realpath(p), label)]
    for p in (path, mask):
        if p:
            names += [(os.path.dirname(p), "<image folder>")]
            names += [(os.path.dirname(os.path.realpath(p)), "<image folder>")]
    for p, label in sorted(set(names), key=lambda t: -len(t[0])):  # longest first
        if len(p) > 1:
            text = text.replace(p, label)
    return text


def _container(path: str) -> str:
    """The file of a ``FILE#INDEX`` record (``""`` for a plain path)."""
    head, sep, tail = str(path).rpartition("#")
    return head if sep and tail.isdigit() else ""


def _collate(items):
    """``(ok indices, stacked tensor or None, [(index, error)], {index: read meta})``."""
    ok = [(i, x) for i, x, _, _ in items if x is not None]
    failed = [(i, e) for i, x, e, _ in items if x is None]
    batch = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], batch, failed, {i: m for i, x, _, m in items if x is not None}


def _prefetched(loader, enabled: bool):
    """Iterate ``loader`` (or its iterator) with the next batch read in a background thread while
    the current one runs through the backbones (``workers=0``): decoding and resizing release the
    GIL, so reading overlaps the forward passes instead of idling the cores between batches."""
    if not enabled:
        yield from loader
        return
    from concurrent.futures import ThreadPoolExecutor

    it = iter(loader)
    end = object()
    with ThreadPoolExecutor(1, thread_name_prefix="featmammo-read") as pool:
        pending = pool.submit(next, it, end)
        while True:
            item = pending.result()
            if item is end:
                return
            pending = pool.submit(next, it, end)
            yield item


def _worker_init(_):
    torch.set_num_threads(1)  # the main process owns the cores for the forward passes


def _worker_context(dataset, workers: int, decoder: str) -> tuple[int, str | None]:
    """``(workers, multiprocessing context)`` for the DataLoader.

    CUDA (the GPU decoder's) does not survive a fork: with a decoder other than ``cpu`` the workers
    are spawned, which needs the dataset to pickle; when it does not, the main process reads
    (``workers=0``) and the reason is logged. The CPU decoder keeps the default context (fork).
    """
    if workers == 0 or decoder == "cpu":
        return workers, None
    import pickle

    try:
        pickle.dumps(dataset)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means: no spawned workers
        log.info(
            "decoder %s: CUDA does not survive a fork and the dataset cannot be sent to spawned "
            "workers (%s: %s); reading in the main process (workers=0) instead of %d workers",
            decoder, type(exc).__name__, exc, workers,
        )  # fmt: skip
        return 0, None
    log.info("decoder %s: %d DataLoader workers started with 'spawn' (CUDA)", decoder, workers)
    return workers, "spawn"


def _loader(
    dataset,
    batches: list[list[int]],
    workers: int,
    dev,
    prefetch: bool = True,
    context: str | None = None,
):
    """Batches ``(ok_indices, tensor or None, [(index, error)], {index: read meta})`` in the order
    of ``batches``:
    DataLoader worker processes when ``workers > 0`` (started with ``context``, see
    :func:`_worker_context`), else the main process with a read-ahead thread (``prefetch``).
    Pinned host memory on CUDA, for asynchronous copies."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=dev.type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
        multiprocessing_context=context if workers else None,
    )
    # worker processes are forked here, before the caller starts its writer thread (a fork copies
    # a lock held by another thread in its locked state)
    it = iter(loader)
    return _prefetched(it, enabled=workers == 0 and prefetch)
