"""The extraction loop: manifest -> read + preprocess once -> every backbone -> HDF5 store.

Owns ``extract`` (resumable, crash-safe, optionally sharded across ``torchrun`` ranks), ``embed``
and ``embed_stream`` (the same computation in memory, for ``featmammo predict``).

How a run proceeds:

1. The manifest is validated (``featmammo.datasets.read_manifest``) and every backbone is built
   before any image is read, so a bad row, bad weights, a refused store or an ROI mode the
   manifest cannot serve fail fast.
2. Each row's ``file_identity`` is computed (``.files``: a SHA-256 of the image's bytes, with
   the ``.ics`` of an LJPEG and the ROI mask when read; read once per file version). The store
   is created or checked (``featmammo.store.prepare``: a backbone already stored with other
   weights, preprocessing, precision or DICOM decoder plugin is refused; new manifest images are
   appended; an image whose file identity changed is pending again) and the shards left by an
   interrupted run are merged.
3. Manifest rows are cut into fixed batches in manifest order (``batch_size`` rows each). A batch
   whose images are all done for every requested backbone is skipped; any other batch is read,
   preprocessed once (DataLoader workers, or a read-ahead thread) and copied to the device once;
   every backbone that still needs one of its images runs on that one copy. Because a batch is
   always the same set of images, a resumed or sharded run (ranks take every WORLD_SIZE-th batch)
   computes bit for bit what an uninterrupted run computes. Under ``torchrun`` rank 0 decides
   this work list once and every rank takes its share of that one list (``.ranks``: identities
   checked across ranks, one error for all, a limit on every wait).
4. Each finished batch goes to a background writer (durable shards, merged into the main file on
   a schedule; see ``featmammo.store``), so writing never stalls the forward loop, and a
   ``kill -9`` at any moment is harmless. The run's record (counts, device, precision, decoder
   plugin, package versions) goes into the store's provenance ``runs``.

Per-image errors (unreadable or corrupt files, preprocessing refusals: ``FeatmammoError``) and
non-finite outputs are caught where they happen, in the DataLoader worker when ``workers > 0``, and
recorded as failures with their reason; the run goes on. Anything else is a bug and stops the run
with its traceback. A run in which every image failed raises :class:`AllImagesFailed`.

The modules, one concern each (every name stays importable from ``featmammo.extract``):
:mod:`.environment` (precision, workers, threads, cuDNN, decoder), :mod:`.models` (backbones,
``hybrid:`` checkpoints' preprocessing, provenance), :mod:`.loading` (ROI masks, the dataset, the
batch loader), :mod:`.forward` (one device copy per batch, pipelining), :mod:`.summary`
(:class:`ExtractSummary`), :mod:`.loop` (the work plan; one process's read -> forward -> write
loop), :mod:`.ranks` (how torchrun ranks agree), :mod:`.files` (file identities), :mod:`.run`
(:func:`extract`) and :mod:`.streaming` (:func:`embed`, :func:`embed_stream`).
"""

from __future__ import annotations

from ..devices import resolve_device
from ..errors import AllImagesFailed
from .environment import (
    CPU_CORES_PER_WORKER,
    MAX_AUTO_WORKERS,
    PRECISIONS,
    _cudnn_benchmark,
    _threads,
    available_cores,
    default_threads,
    resolve_decoder,
    resolve_precision,
    resolve_workers,
)
from .forward import _autocast, _forward_all, _Outputs, _pipelined
from .loading import (
    MASK_COLUMNS,
    MASK_ROI_MODES,
    _collate,
    _Images,
    _load_prepared,
    _loader,
    _mask_column,
    _prefetched,
    _prepare,
    _reason,
    _worker_context,
    _worker_init,
    check_roi_masks,
)
from .loop import _Loop, _open_writer
from .models import (
    DEFAULT_BACKBONES,
    HYBRID_FIELDS,
    HYBRID_PREFIX,
    _check_hybrid_preprocess,
    _make_models,
    _resolve_preprocess,
    _spec_dict,
    backbone_provenance,
    hybrid_preprocess,
)
from .run import _pseudonymise, extract
from .streaming import embed, embed_stream
from .summary import ExtractSummary, _first_failure, _merge_summaries

# importable from here as before the split, outside __all__ as before: the public helpers and
# constants, and the private names predict.py, benchmarks and tests use
_REEXPORTED = (
    CPU_CORES_PER_WORKER, DEFAULT_BACKBONES, HYBRID_FIELDS, HYBRID_PREFIX, MASK_COLUMNS,
    MASK_ROI_MODES, MAX_AUTO_WORKERS, PRECISIONS, available_cores, backbone_provenance,
    check_roi_masks, default_threads, hybrid_preprocess, resolve_precision,
    _autocast, _check_hybrid_preprocess, _collate, _cudnn_benchmark, _first_failure, _forward_all,
    _Images, _load_prepared, _loader, _Loop, _make_models, _mask_column, _merge_summaries,
    _open_writer, _Outputs, _pipelined, _prefetched, _prepare, _pseudonymise, _reason,
    _resolve_preprocess, _spec_dict, _threads, _worker_context, _worker_init,
)  # fmt: skip

__all__ = [
    "AllImagesFailed",
    "ExtractSummary",
    "embed",
    "embed_stream",
    "extract",
    "resolve_decoder",
    "resolve_device",
    "resolve_workers",
]
