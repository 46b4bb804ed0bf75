"""Durable per-batch shards and their merge into the main file (``consolidate``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import StoreError
from .faults import fault_point
from .mainfile import copy_and_modify
from .schema import IDENTITY_KEYS, _json_attr, _write_rows, parts_dir, utcnow

log = logging.getLogger("featmammo.store")


def write_shard(
    path,
    ids: Sequence[str],
    blocks: Mapping[str, tuple],
    identities: Mapping[str, str],
    *,
    dtypes: Mapping[str, str] | None = None,
) -> Path:
    """Durably record one finished batch for the store at ``path``.

    ``blocks[name] = (embeddings (n, D), status (n,) int, reasons (n,) str)`` for ``ids``;
    ``identities[name]`` is the backbone identity the rows were computed under (checked at merge).
    ``dtypes[name]`` (optional) is the store's dtype of that backbone: the shard then holds the
    embeddings already cast to it (the merge casts the same way, so nothing changes but the bytes).
    The shard appears under its final name only once its bytes are on disk
    (``featmammo.atomic.atomic_write``: temporary name, fsync, rename, fsync of the folder).
    """
    d = parts_dir(path)
    names = list(blocks)
    payload = {
        "ids": np.asarray([str(i) for i in ids], dtype=str),
        "names": np.asarray(names, dtype=str),
        "identities": np.asarray([identities[n] for n in names], dtype=str),
    }
    for j, n in enumerate(names):
        emb, status, reason = blocks[n]
        emb = np.asarray(emb)
        if dtypes and dtypes.get(n):
            emb = emb.astype(dtypes[n], copy=False)
        payload[f"emb{j}"] = emb
        payload[f"status{j}"] = np.asarray(status, dtype=np.int8)
        payload[f"reason{j}"] = np.asarray([str(r) for r in reason], dtype=str)
    # time-ordered unique name: merge order is write order (a later shard wins on the same image)
    stem = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    final = d / f"{stem}.npz"

    def _write(fh) -> None:
        np.savez(fh, **payload)
        fh.flush()
        fault_point("shard-tmp")  # bytes written under the temporary name, not yet renamed

    atomic_write(final, _write)
    return final


def list_shards(path) -> list[Path]:
    """The complete shards of ``path`` not merged yet, in write order."""
    d = parts_dir(path)
    return sorted(d.glob("*.npz")) if d.is_dir() else []


def shard_bytes(path) -> int:
    """Total size of the complete shards of ``path`` not merged yet."""
    total = 0
    for p in list_shards(path):
        with contextlib.suppress(FileNotFoundError):  # merged meanwhile
            total += p.stat().st_size
    return total


def _read_shard(p: Path) -> dict | None:
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # a complete shard never fails; a foreign file might
        log.warning("ignoring unreadable shard %s (%s)", p, exc)
        return None


# rows gathered from consecutive shards before they are written: whole chunks are then compressed
# and written once (batch-sized writes into 64-row chunks wrote each chunk twice or more)
MERGE_BUFFER_BYTES = 256 << 20
#: backbone provenance keys holding lists merged across runs (union, sorted), not replaced
MERGED_LISTS = ("devices", "decoders")


class _MergeBuffer:
    """Shard rows per backbone, written sorted in contiguous runs; a later shard wins a row."""

    def __init__(self, groups, limit: int = MERGE_BUFFER_BYTES):
        self.groups, self.limit = groups, limit
        self.parts: dict[str, list] = {}
        self.nbytes = 0

    def add(self, name, rows, emb, status, reason) -> None:
        self.parts.setdefault(name, []).append((rows, emb, status, reason))
        self.nbytes += emb.nbytes
        if self.nbytes >= self.limit:
            self.flush()

    def flush(self) -> None:
        for name, parts in self.parts.items():
            rows = np.concatenate([p[0] for p in parts])
            emb = np.concatenate([p[1] for p in parts])
            status = np.concatenate([p[2] for p in parts])
            reason = np.concatenate([np.asarray(p[3], dtype=object) for p in parts])
            # the last occurrence of each row wins (shards are in write order); sorted by row
            _, last = np.unique(rows[::-1], return_index=True)
            take = rows.size - 1 - last
            _write_rows(self.groups[name], rows[take], emb[take], status[take], reason[take])
        self.parts.clear()
        self.nbytes = 0


def consolidate(
    path,
    *,
    store_provenance_update: Mapping | None = None,
    backbone_provenance_update: Mapping[str, Mapping] | None = None,
    max_shards: int | None = None,
    shards: Sequence[Path] | None = None,
) -> int:
    """Merge the durable shards of ``path`` into the main file atomically; return how many merged.

    Shards whose backbone identity differs from the store's entry of that name, or that name
    backbones/images the store lacks, are skipped with a warning (and removed, being unusable).
    Optionally updates the store-level provenance and per-backbone provenance in the same step.
    ``shards`` merges only those shard files (default: every complete shard, in write order).
    Each call copies the main file once: call it on a schedule whose copies stay a bounded
    multiple of the final size (``featmammo.store.writer.BackgroundWriter``), not every N batches.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such store to merge shards into")
    shard_paths = list_shards(path) if shards is None else sorted(Path(p) for p in shards)
    if max_shards is not None:
        shard_paths = shard_paths[:max_shards]
    if not shard_paths and not store_provenance_update and not backbone_provenance_update:
        return 0
    merged = []

    def modify(f):
        ids = f["ids"].asstr()[()]
        index = {i: k for k, i in enumerate(ids)}
        groups = {str(f["backbones"][k].attrs["name"]): f["backbones"][k] for k in f["backbones"]}
        buffer = _MergeBuffer(groups)
        for p in shard_paths:
            shard = _read_shard(p)
            merged.append(p)
            if shard is None:
                continue
            sid = [str(i) for i in shard["ids"]]
            missing = [i for i in sid if i not in index]
            if missing:
                log.warning("shard %s: %d images not in the store (e.g. %r); skipped", p,
                            len(missing), missing[0])  # fmt: skip
            keep = np.array([i in index for i in sid], dtype=bool)
            rows = np.array([index[i] for i in sid if i in index], dtype=np.int64)
            for j, (name, ident) in enumerate(
                zip(shard["names"], shard["identities"], strict=True)
            ):
                g = groups.get(str(name))
                if g is None or str(g.attrs["identity"]) != str(ident):
                    log.warning("shard %s: backbone %r does not match the store; skipped", p, name)
                    continue
                buffer.add(
                    str(name), rows, shard[f"emb{j}"][keep], shard[f"status{j}"][keep],
                    shard[f"reason{j}"][keep],
                )  # fmt: skip
        buffer.flush()
        if store_provenance_update:
            sp = json.loads(f.attrs["provenance"])
            for k, v in store_provenance_update.items():
                if k == "runs":
                    sp["runs"] = list(sp.get("runs", [])) + list(v)
                else:
                    sp[k] = v
            sp["updated"] = utcnow()
            f.attrs["provenance"] = _json_attr(sp)
        for name, upd in (backbone_provenance_update or {}).items():
            g = groups.get(name)
            if g is None:
                continue
            bp = json.loads(g.attrs["provenance"])
            for k, v in upd.items():
                if k in IDENTITY_KEYS:
                    raise StoreError(
                        f"{path}: {k} is part of the identity of {name!r}; not updated"
                    )
                if k in MERGED_LISTS:  # what every run used, accumulated
                    bp[k] = sorted(set(bp.get(k, [])) | set(v))
                else:
                    bp[k] = v
            g.attrs["provenance"] = _json_attr(bp)

    copy_and_modify(path, modify, fault="consolidate")
    for p in merged:  # only after the merged data is durable in the main file
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    if merged:
        log.debug("store %s: merged %d shards", path, len(merged))
    return len(merged)


def cleanup_parts(path) -> None:
    """Remove the shard folder once it is empty (after the final consolidation)."""
    d = parts_dir(path)
    if d.is_dir():
        for tmp in d.glob(".*.tmp"):  # partial shards of killed writers
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        with contextlib.suppress(OSError):
            d.rmdir()
