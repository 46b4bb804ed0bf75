"""The identity of the files behind each store row (the store's ``file_identity`` column).

A store row is an image's embeddings; they stand only while the files they were computed from
are unchanged. ``file_identities`` gives each manifest row one opaque string, recorded by the
store and compared on every later run (``featmammo.store.prepare``: a row whose identity changed
is embedded again):

* **what counts**: the bytes of the image file (for a ``FILE#INDEX`` record, the container FILE
  and the record number; for a DDSM ``.LJPEG``, also every ``.ics``/``.ics.gz`` beside it, which
  gives its shape and digitiser) and of the ROI mask when the run's ROI mode reads it;
* **the value**: ``sha256:`` + 32 hex digits of the image files' SHA-256 digests, then, when the
  run reads the mask, `` mask:`` + 32 hex digits of the mask's (apart: a mask change re-embeds
  only the entries that read masks, and a ``--roi full`` run into a store of ``--roi crop``
  entries sees no change); under ``--hash-ids`` ``hmac:`` and HMACs with the run's key instead,
  so the column neither names the file nor lets anyone match it against the public datasets'
  files;
* **not the path, not the stat**: copying or moving the dataset, ``chmod`` or ``touch`` change
  nothing; a replacement with other content does, even at the same size and mtime (``cp -p``,
  ``rsync -t``, ``tar x``).

Digests are read once per file version: a small SQLite table under ``$FEATMAMMO_CACHE``
(``file_digests.sqlite3``) maps a file's stat signature (resolved path, device, inode, size,
mtime_ns, ctime_ns) to its digest, so a rerun stats each file and reads none; any change of the
signature (a replacement changes ctime, which no program can set back; a copy or ``chmod`` too)
reads the file once more. A digest is kept only when the file did not change while it was read
nor in the ``RACY_NS`` before (a file changed twice within one timestamp tick keeps its signature:
such a file is read again on the next run instead). The table is only a shortcut: when it is
missing, unreadable or unwritable the digests are computed (one warning), never guessed. Cost
measured by ``benchmarks/file_identity.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..hashing import sha256_file
from ..store.schema import MASK_PART

log = logging.getLogger(__package__)

CACHE_NAME = "file_digests.sqlite3"
_RECORD = re.compile(r"(.+)#(\d+)")
_HEX = 32  # hex digits kept (128 bits)
#: a digest taken less than this long after its file last changed is not put in the table: a
#: second change within the same timestamp tick (a coarse kernel clock: a few ms; FAT: 2 s) would
#: keep the stat signature, and the table would serve the first content's digest ("racy git")
RACY_NS = 2_000_000_000


def _signature(path: Path) -> tuple[str, str] | None:
    """``(resolved path, stat signature)`` of a regular file; None when it cannot be stat'ed."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    if not os.path.isfile(real):
        return None
    sig = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    return real, sig


def _racy(sig: str) -> bool:
    """The file changed (mtime or ctime) less than ``RACY_NS`` ago: its signature may not move
    if it changes again right away."""
    *_, mtime_ns, ctime_ns = sig.split(":")
    return time.time_ns() - max(int(mtime_ns), int(ctime_ns)) < RACY_NS


class DigestCache:
    """``(resolved path, stat signature) -> sha256`` in SQLite; every failure is a miss."""

    def __init__(self, path: Path | None):
        self.path = path
        self._db = None
        self._lock = threading.Lock()
        self._warned = False
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
            db.execute(
                "CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, sig TEXT, sha256 TEXT)"
            )
            db.commit()
            self._db = db
        except (OSError, sqlite3.Error) as exc:
            self._warn(exc)

    @classmethod
    def default(cls) -> DigestCache:
        from ..paths import cache_dir

        return cls(cache_dir() / CACHE_NAME)

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "file digest cache %s unusable (%s: %s): every file is read to compute its "
                "identity", self.path, type(exc).__name__, exc,
            )  # fmt: skip
        self._db = None

    def get_many(self, keys: list[tuple[str, str]]) -> dict[str, str]:
        """``{resolved path: sha256}`` for the keys whose signature matches the table's."""
        if self._db is None or not keys:
            return {}
        want = dict(keys)
        out: dict[str, str] = {}
        try:
            with self._lock:
                paths = list(want)
                for a in range(0, len(paths), 500):
                    part = paths[a : a + 500]
                    marks = ",".join("?" * len(part))
                    rows = self._db.execute(
                        f"SELECT path, sig, sha256 FROM digests WHERE path IN ({marks})", part
                    )  # noqa: S608 - placeholders only
                    for p, sig, digest in rows:
                        if want.get(p) == sig:
                            out[p] = digest
        except sqlite3.Error as exc:
            self._warn(exc)
            return {}
        return out

    def put_many(self, rows: list[tuple[str, str, str]]) -> None:
        if self._db is None or not rows:
            return
        try:
            with self._lock:
                self._db.executemany(
                    "INSERT OR REPLACE INTO digests (path, sig, sha256) VALUES (?, ?, ?)", rows
                )
                self._db.commit()
        except sqlite3.Error as exc:
            self._warn(exc)

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None


def row_files(path: str, mask: str | None = None) -> list[tuple[str, Path]] | None:
    """``[(role, file), ...]``: the files whose bytes decide a row's pixels; None when the
    image file does not exist (its identity is then unknown: ``""``)."""
    p, role = Path(path), "image"
    if not p.is_file():
        m = _RECORD.fullmatch(str(path))
        if m is None or not Path(m.group(1)).is_file():
            return None
        p, role = Path(m.group(1)), f"image#{int(m.group(2))}"
    files = [(role, p)]
    name = p.name.lower()
    if name.endswith((".ljpeg", ".ljpeg.gz")):
        with contextlib.suppress(OSError):
            for q in sorted(p.parent.iterdir()):
                if q.name.lower().endswith((".ics", ".ics.gz")):
                    files.append((f"ics:{q.name}", q))
    if mask:
        files.append(("mask", Path(mask)))
    return files


def file_identities(
    paths: Sequence[str],
    masks: Sequence[str] | None = None,
    *,
    key: bytes | None = None,
    cache: DigestCache | None = None,
    threads: int = 2,
    announce=None,
) -> list[str]:
    """One identity string per row (``""`` when its image file is missing); see the module.

    ``masks``: the ROI mask of each row when the run's ROI mode reads masks, else None.
    ``key``: the ``--hash-ids`` key (HMAC instead of plain digests). ``cache``: the digest table
    (None: :meth:`DigestCache.default`). ``threads``: files hashed at once (hashlib releases the
    GIL, so reading and hashing overlap). ``announce(message)``: told how many files will be
    read, before a pass that reads any (the CLI's stage line: a first run reads every file).
    """
    own = cache is None
    cache = DigestCache.default() if own else cache
    try:
        per_row = [row_files(p, masks[i] if masks else None) for i, p in enumerate(paths)]
        files = {str(f) for fs in per_row if fs for _, f in fs}
        sigs = {f: _signature(Path(f)) for f in files}
        known = cache.get_many([s for s in sigs.values() if s is not None])
        todo = sorted({s[0] for s in sigs.values() if s is not None and s[0] not in known})
        if todo:
            said = (
                f"file identities: reading {len(todo)} of {len(files)} files once for their "
                "digests (later runs only stat unchanged files)"
            )
            log.info("%s", said)
            if announce is not None:
                announce(said)

            by_real = {s[0]: s[1] for s in sigs.values() if s is not None}

            def one(real: str) -> tuple[str, str | None, bool]:
                """``(file, digest or None, whether the table may keep it)``."""
                try:
                    digest = sha256_file(real)
                except OSError:
                    return real, None, False
                after = _signature(Path(real))  # unchanged while read, and not changed just now
                steady = after is not None and after[1] == by_real[real] and not _racy(after[1])
                return real, digest, steady

            with ThreadPoolExecutor(max(1, threads), thread_name_prefix="featmammo-digest") as ex:
                fresh = {r: (d, ok) for r, d, ok in ex.map(one, todo)}
            cache.put_many([(r, by_real[r], d) for r, (d, ok) in fresh.items() if ok])
            known.update({r: d for r, (d, _ok) in fresh.items() if d is not None})
    finally:
        if own:
            cache.close()

    def seal(parts: list[str]) -> str:
        text = "\n".join(parts).encode()
        if key is not None:
            return hmac.new(key, text, hashlib.sha256).hexdigest()[:_HEX]
        return hashlib.sha256(text).hexdigest()[:_HEX]

    out = []
    prefix = "hmac:" if key is not None else "sha256:"
    for fs in per_row:
        parts, mask = [], []
        for role, f in fs or ():
            sig = sigs.get(str(f))
            digest = known.get(sig[0]) if sig is not None else None
            (mask if role == "mask" else parts).append(f"{role}={digest or 'unreadable'}")
        if not fs or any(p.endswith("=unreadable") for p in parts[:1]):
            out.append("")
            continue
        # the mask apart (MASK_PART): a mask changed is a change for the entries that read masks
        # only, and a run that reads none must not see every masked row as changed
        out.append(prefix + seal(parts) + (f"{MASK_PART}{seal(mask)}" if mask else ""))
    return out
