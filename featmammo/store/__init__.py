"""The HDF5 embedding store: schema, reader, crash-safe writers. No torch.

A store holds, for one set of images, the image ids (the join key, never row order), the
manifest's per-image metadata, one embedding matrix per backbone, a done/failed record per image and
backbone with the failure reason, and provenance. Reading needs only h5py, numpy and pandas
(``featmammo.store.open``); plain h5py works too, with the layout below.

HDF5 layout (format ``featmammo.store``, ``format_version`` 1)
-------------------------------------------------------------
``/`` attributes
    ``format`` = "featmammo.store", ``format_version`` = 1,
    ``provenance``: JSON text (featmammo / torch / torchvision / pydicom / h5py / numpy versions,
    ``manifest_hash`` (of the latest manifest), ``manifest_hashes`` (all manifests merged in),
    ``created`` / ``updated`` (UTC ISO times), ``id_hashing`` (null, or
    ``{"method": "hmac-sha256", "length": 16, "key_check": ...}`` when ids are keyed hashes),
    ``runs`` (one entry per extraction run: time, device, precision, counts)),
    ``backbones``: JSON list of backbone names in insertion order.
``/ids``  (N,) variable-length UTF-8 strings: the image ids, unique.
``/meta/<column>``  (N,) variable-length UTF-8 strings, one dataset per metadata column, in the
    order given by the JSON list in ``/meta`` attribute ``columns``: ``label``, ``patient_id``,
    ``laterality``, ``view``, ``split``, ``source``, ``path``, then any extra manifest columns.
    Missing values are empty strings.
``/backbones/<key>``  one group per backbone. ``<key>`` is the backbone name percent-encoded
    (``urllib.parse.quote(name, safe="")``, so ``hybrid:runs/a/checkpoint.pt`` becomes
    ``hybrid%3Aruns%2Fa%2Fcheckpoint.pt``); the real name is the group attribute ``name``.
    Attributes: ``name``, ``dim``, ``dtype`` ("float32" | "float16"), ``identity`` (16-hex
    fingerprint of what makes embeddings comparable: backbone spec, layer, weights identity and
    SHA-256, preprocessing config, storage dtype) and ``provenance`` (JSON text: ``spec``,
    ``layer``, ``weights``, ``weights_sha256``, ``preprocess`` (config dict),
    ``preprocess_fingerprint``, ``dtype``, ``devices``, ``precision``).
    Datasets:
    ``embeddings``  (N, dim) float32 or float16, chunked (rows of 64 x dim), gzip/lzf or none;
                    rows that are not done hold NaN (pending/failed rows are never meaningful).
    ``status``      (N,) int8: 0 = pending, 1 = done, 2 = failed.
    ``reason``      (N,) variable-length UTF-8: why a row failed ("" otherwise).
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
The main file is only ever replaced whole and atomically: a new version is written to
``STORE.h5.tmp`` in the same folder, fsynced and ``os.replace``-d over ``STORE.h5`` (then the folder
is fsynced). An extraction hands each finished batch to a background writer
(``featmammo.store.writer.BackgroundWriter``) that writes it as a shard (``STORE.h5.parts/*.npz``:
temporary name, fsync, rename) and merges shards into the main file (``consolidate``) on a geometric
schedule: only once the pending shards hold as many bytes as the main file, and not past a quarter
of the run's expected bytes; the run ends with one final merge. Every merge copies the main file, so
the copies form a geometric series: the bytes an extraction writes stay within about 3x the final
store size however large it grows (merging every N batches made them grow with its square). A merged
shard is deleted only after the new main file is in place, and merging is idempotent. A ``kill -9``
at any moment therefore leaves a readable main file plus durable shards, which the next run merges
before it starts; shards whose backbone identity does not match the store are ignored (logged),
never merged. Readers see a consistent store at all times: the main file as of the last merge (rows
still in shards read as pending; ``Store.pending_shards()`` counts the shards). A writer holds
``STORE.h5.lock`` (``flock``; the file stays, the lock dies with the process) so two extractions
never write one store.

Modules: ``schema`` (format constants, names, identities, HDF5 building blocks), ``reader``
(``Store``, ``open``), ``create`` (``write``, ``prepare``), ``shards`` (``write_shard``,
``consolidate``, ``cleanup_parts``), ``writer`` (``BackgroundWriter``), ``mainfile`` (atomic
replacement of the main file), ``locking`` (``lock``), ``faults`` (the test-only SIGKILL seam).

Identifiers
-----------
With keyed-hash ids (``extract --hash-ids KEYFILE``) ``image_id`` and ``patient_id`` are
HMAC-SHA256 pseudonyms, the ``path`` column is emptied and extra manifest columns are dropped (paths
and free-form columns carry patient identifiers in CBIS-DDSM), and failure records carry no paths.
The key itself is never stored; ``key_check`` (an HMAC of a constant) lets a rerun detect a
different key. No DICOM header field enters a store: metadata comes from the manifest only.
"""

from __future__ import annotations

from .create import prepare, write
from .faults import fault_point
from .locking import lock
from .reader import Store, open
from .schema import (
    CHUNK_ROWS,
    COMPRESSIONS,
    DONE,
    DTYPES,
    FAILED,
    FORMAT,
    FORMAT_VERSION,
    IDENTITY_KEYS,
    META_COLUMNS,
    PENDING,
    STATUS_NAMES,
    BackboneEntry,
    backbone_identity,
    backbone_key,
    nonfinite_reason,
    package_versions,
    parts_dir,
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
    "IDENTITY_KEYS",
    "META_COLUMNS",
    "PENDING",
    "STATUS_NAMES",
    "BackboneEntry",
    "BackgroundWriter",
    "Store",
    "backbone_identity",
    "backbone_key",
    "cleanup_parts",
    "consolidate",
    "fault_point",
    "list_shards",
    "lock",
    "nonfinite_reason",
    "open",
    "package_versions",
    "parts_dir",
    "prepare",
    "shard_bytes",
    "storable_rows",
    "utcnow",
    "write",
    "write_shard",
]
