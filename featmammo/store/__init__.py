"""The HDF5 embedding store: schema, reader, crash-safe writers. No torch.

A store holds, for one set of images, the image ids (the join key, never row order), the
manifest's per-image metadata, one embedding matrix per backbone, a done/failed record per image and
backbone with the failure reason, and provenance. Reading needs only h5py, numpy and pandas
(``featmammo.store.open``); plain h5py works too, with the layout below.

HDF5 layout (format ``featmammo.store``, ``format_version`` 2)
-------------------------------------------------------------
``STORE.h5`` is the one path a user opens. Since format version 2 it is an index over immutable
segment files in ``STORE.h5.segments/`` (``featmammo.store.index``): the ids, the metadata and
the embeddings are HDF5 virtual datasets mapping row ranges of the segments, so plain h5py reads
them as one array each (relative paths: keep ``STORE.h5`` and its ``.segments`` folder together;
``featmammo store pack STORE -o OUT`` makes one self-contained file for sharing).

``/`` attributes
    ``format`` = "featmammo.store", ``format_version`` = 2 (1: an older self-contained store,
    still read, upgraded when extended), ``store_uuid`` (32 hex: the store's identity; shards and
    segments carry it), ``generation`` (counts the main file's versions), ``compression``,
    ``segments`` (JSON: the segment files and what each holds; absent in a self-contained file),
    ``provenance``: JSON text (featmammo / torch / torchvision / pydicom / h5py / numpy versions,
    ``manifest_hash`` (of the latest manifest), ``manifest_hashes`` (all manifests merged in),
    ``created`` / ``updated`` (UTC ISO times), ``id_hashing`` (null, or
    ``{"method": "hmac-sha256", "length": 16, "key_check": ...}`` when ids are keyed hashes),
    ``runs`` (one entry per extraction run: time, device, precision, counts)),
    ``backbones``: JSON list of backbone names in insertion order.
``/ids``  (N,) variable-length UTF-8 strings: the image ids, unique.
``/meta/<column>``  (N,) variable-length UTF-8 strings, one dataset per metadata column, in the
    order given by the JSON list in ``/meta`` attribute ``columns``: ``label``, ``patient_id``,
    ``laterality``, ``view``, ``split``, ``source``, ``path``, ``file_identity`` (an opaque
    signature of the image file the row was embedded from), then any extra manifest columns.
    Missing values are empty strings. (``Store.meta`` returns extra columns whose every value is a
    plain number as numbers.)
``/backbones/<key>``  one group per backbone. ``<key>`` is the backbone name percent-encoded
    (``urllib.parse.quote(name, safe="")``, so ``hybrid:runs/a/checkpoint.pt`` becomes
    ``hybrid%3Aruns%2Fa%2Fcheckpoint.pt``); the real name is the group attribute ``name``.
    Attributes: ``name``, ``dim``, ``dtype`` ("float32" | "float16"), ``identity`` (16-hex
    fingerprint of what makes embeddings comparable: backbone spec, layer, weights identity and
    SHA-256, preprocessing config, storage dtype) and ``provenance`` (JSON text: ``spec``,
    ``layer``, ``weights``, ``weights_sha256``, ``preprocess`` (config dict),
    ``preprocess_fingerprint``, ``dtype``, ``devices``, ``precision``).
    Datasets:
    ``embeddings``  (N, dim) float32 or float16 (segments: chunked rows of 64 x dim, gzip/lzf or
                    none); rows that are not done read as NaN (pending/failed rows are never
                    meaningful).
    ``status``      (N,) int8: 0 = pending, 1 = done, 2 = failed.
    ``reason``      (N,) variable-length UTF-8: why a row failed ("" otherwise).
``/index/...``  where each row's id/metadata and embedding live (segment number, position);
    bookkeeping for featmammo, absent in a self-contained file.
Row i of every dataset belongs to ``/ids[i]``.

Plain h5py::

    import h5py, json
    with h5py.File("store.h5") as f:
        ids = f["ids"].asstr()[()]
        g = f["backbones/resnet50"]
        X, ok = g["embeddings"][()], g["status"][()] == 1
        prov = json.loads(g.attrs["provenance"])

Crash safety and cost
---------------------
Nothing is ever changed in place. A new segment is written under a unique temporary name through
``featmammo.store.files.write_h5`` (a full disk is a ``StoreSpaceError``, never a crash), fsynced
and renamed; then a new main file is written the same way and ``os.replace``-d over ``STORE.h5``
(the folder is fsynced). An extraction hands each finished batch to a background writer
(``featmammo.store.writer.BackgroundWriter``) that writes it as a shard (``STORE.h5.parts/*.npz``:
temporary name, fsync, rename) and merges shards into the store (``consolidate``) every
``merge_bytes``: a merge writes the merged rows once, as one new segment, and a main file of a
few bytes per row, so a step costs the new rows, not the store (a rerun with nothing to do
writes a main file; appending 1% writes about 1% plus the main file). A merged shard is deleted
only after the new main file is in place (the main file names the shards it merged, so a rerun
never merges them twice). A ``kill -9`` at any moment therefore leaves a readable main file plus
durable shards, which the next run merges before it starts. Shards and segments carry the store's
UUID: what belongs to no live store (a store deleted while a run was interrupted) is discarded
with a warning, never merged; shards whose backbone identity does not match the store are ignored
(logged). ``Store`` is one consistent snapshot (it holds its files open); rows still in shards
read as pending (``Store.pending_shards()``; ``featmammo info`` says whether a run is writing
the store now). A writer holds ``STORE.h5.lock`` (``flock``; the lock dies with the process) so
two processes never write one store; a symlinked store is written through to its target.

Modules: ``schema`` (format constants, names, identities, HDF5 building blocks), ``index`` (the
main file: state, virtual datasets, commit), ``segments`` (segment files, garbage collection),
``reader`` (``Store``, ``open``), ``create`` (``write``, ``prepare``), ``shards``
(``write_shard``, ``consolidate``, ``cleanup_parts``), ``writer`` (``BackgroundWriter``),
``compaction`` (``compact``, ``pack``), ``files`` (guarded atomic HDF5 writes, free-space checks),
``locking`` (``lock``), ``faults`` (the test-only SIGKILL seam).

Identifiers
-----------
With keyed-hash ids (``extract --hash-ids KEYFILE``) ``image_id`` and ``patient_id`` are
HMAC-SHA256 pseudonyms, the ``path`` column is emptied and extra manifest columns are dropped (paths
and free-form columns carry patient identifiers in CBIS-DDSM), and failure records carry no paths.
The key itself is never stored; ``key_check`` (an HMAC of a constant) lets a rerun detect a
different key. No DICOM header field enters a store: metadata comes from the manifest only.
"""

from __future__ import annotations

from .compaction import compact, pack
from .create import prepare, write
from .faults import fault_point
from .locking import is_locked, lock
from .reader import Store, open, store_bytes
from .schema import (
    CHUNK_ROWS,
    COMPRESSIONS,
    DONE,
    DTYPES,
    FAILED,
    FORMAT,
    FORMAT_VERSION,
    IDENTITY_DEFAULTS,
    IDENTITY_KEYS,
    META_COLUMNS,
    PENDING,
    READABLE_VERSIONS,
    STATUS_NAMES,
    BackboneEntry,
    backbone_identity,
    backbone_key,
    nonfinite_reason,
    package_versions,
    parts_dir,
    resolve,
    segments_dir,
    storable_rows,
    utcnow,
)
from .shards import cleanup_parts, consolidate, list_shards, shard_bytes, write_shard
from .writer import BackgroundWriter

__all__ = [
    "CHUNK_ROWS",
    "COMPRESSIONS",
    "DONE",
    "DTYPES",
    "FAILED",
    "FORMAT",
    "FORMAT_VERSION",
    "IDENTITY_DEFAULTS",
    "IDENTITY_KEYS",
    "META_COLUMNS",
    "PENDING",
    "READABLE_VERSIONS",
    "STATUS_NAMES",
    "BackboneEntry",
    "BackgroundWriter",
    "Store",
    "backbone_identity",
    "backbone_key",
    "cleanup_parts",
    "compact",
    "consolidate",
    "fault_point",
    "is_locked",
    "list_shards",
    "lock",
    "nonfinite_reason",
    "open",
    "pack",
    "package_versions",
    "parts_dir",
    "prepare",
    "resolve",
    "segments_dir",
    "shard_bytes",
    "storable_rows",
    "store_bytes",
    "utcnow",
    "write",
    "write_shard",
]
