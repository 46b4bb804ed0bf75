"""``embed_stream`` and ``embed``: the extraction's computation in memory, in batches; no store."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import ConfigError, FeatmammoError
from .environment import resolve_decoder, resolve_precision, resolve_workers
from .forward import _forward_all, _pipelined
from .loading import _Images, _loader, _worker_context
from .models import (
    DEFAULT_BACKBONES,
    _check_hybrid_preprocess,
    _make_models,
    _resolve_preprocess,
    hybrid_preprocess,
)


def embed_stream(
    images: Sequence,
    models: Mapping[str, torch.nn.Module],
    config,
    *,
    device="auto",
    precision: str = "auto",
    batch_size: int = 16,
    workers="auto",
    lateralities: Sequence[str | None] | None = None,
    roi_masks: Sequence | None = None,
    cache=None,
    decoder: str = "cpu",
) -> Iterator[tuple[list[int], dict[str, np.ndarray], list[tuple[int, FeatmammoError]]]]:
    """Embed ``images`` batch by batch, never holding more than a few batches of pixels.

    ``models``: ``{name: module}`` already prepared for inference on ``device`` (``_make_models``);
    ``config``: the resolved ``PreprocessConfig``. Yields, in input order, ``(indices, {name:
    (len(indices), dim) float32}, [(index, error), ...])`` per batch: the images read (and their
    embeddings) and the ones that failed with their ``FeatmammoError``. Decoding runs in DataLoader
    workers or a read-ahead thread as in ``extract``; each batch is copied to the device once.
    ``decoder``: as in ``extract`` (resolved when the generator starts, before any image is read).
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    dec = resolve_decoder(decoder)
    n = len(images)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, not {batch_size}")
    lats = list(lateralities) if lateralities is not None else [None] * n
    masks = list(roi_masks) if roi_masks is not None else [None] * n
    if len(lats) != n or len(masks) != n:
        raise ConfigError(f"{len(lats)} lateralities / {len(masks)} masks for {n} images")
    items = [im if isinstance(im, np.ndarray) else str(im) for im in images]
    dataset = _Images(items, [v or "" for v in lats], [v or "" for v in masks], config, cache, dec)
    batches = [list(range(a, min(a + batch_size, n))) for a in range(0, n, batch_size)]
    if not batches:
        return
    n_workers, context = _worker_context(dataset, resolve_workers(workers, dev), dec)
    names = list(models)

    def launch(b):
        return _forward_all(models, names, b[1], dev, prec)

    for (ok_idx, _batch, failed, _read), outputs in _pipelined(
        _loader(dataset, batches, n_workers, dev, context=context), launch
    ):
        res = outputs.result()
        yield ok_idx, {k: np.array(v, copy=True) for k, v in res.items()}, failed


def embed(
    images: Sequence,
    *,
    backbones: Sequence = DEFAULT_BACKBONES,
    weights: str = "imagenet",
    preprocess=None,
    device: str = "auto",
    batch_size: int = 16,
    precision: str = "auto",
    lateralities: Sequence[str | None] | None = None,
    roi_masks: Sequence | None = None,
    workers="auto",
    cache=None,
    decoder: str = "cpu",
    pool: str = "avg",
) -> dict[str, np.ndarray]:
    """Embeddings of in-memory images or paths, computed exactly as ``extract`` does; no store.

    ``images``: file paths, 2-D pixel arrays (preprocessed with ``preprocess``), or already
    preprocessed (3, H, W) float32 arrays. ``backbones``: names or modules from
    ``backbones.make``, or ``{output name: name or module}``. ``lateralities`` ("L"/"R"/None
    per image, as the manifest's column) picks the canonical side the way ``extract`` does; None
    infers it from the pixels. ``roi_masks``: mask paths, read when the ROI mode uses them.
    ``decoder``: ``cpu``, ``auto`` or ``nvimagecodec`` (JPEG 2000 DICOMs; see ``extract``).
    ``pool``: ``avg`` or ``gem`` (see ``extract``). Streams (see :func:`embed_stream`). Returns
    ``{name: (len(images), dim) float32}``; an unreadable image raises ``ImageReadError``.
    """
    from ..preprocess import PreprocessConfig

    dev = resolve_device(device)
    resolve_decoder(decoder)  # refused before the backbones are built
    from ..backbones import check_input_size

    models = _make_models(backbones, weights, dev, pool=pool)
    if preprocess is None:
        preprocess = PreprocessConfig(**hybrid_preprocess(models))
    _check_hybrid_preprocess(preprocess, models)
    config = _resolve_preprocess(preprocess, models)
    check_input_size(models, config.shape)
    out = {name: np.zeros((len(images), int(m.spec.dim)), np.float32) for name, m in models.items()}
    for ok_idx, emb, failed in embed_stream(
        images, models, config, device=dev, precision=precision, batch_size=batch_size,
        workers=workers, lateralities=lateralities, roi_masks=roi_masks, cache=cache,
        decoder=decoder,
    ):  # fmt: skip
        if failed:
            raise failed[0][1]
        for name, x in emb.items():
            out[name][ok_idx] = x
    return out
