"""Prepared-image cache: decode + calibration + side + crop + resize once per image and config.

:func:`prepare_image` returns exactly what :func:`featmammo.preprocess.load_and_preprocess` returns
(bit for bit), but keeps the costly half, :func:`featmammo.preprocess.prepare`'s output (the
resized region before normalisation), on disk, so the next ``extract``/``train``/``predict`` with
the same preprocessing reads a ~200 KB file instead of decoding a ~25 MB mammogram.

**Where.** ``PreparedCache.default()`` lives in ``$FEATMAMMO_CACHE/prepared`` (``cache/prepared`` in
the current folder when the variable is unset, like every featmammo artefact), bounded by
``$FEATMAMMO_PREPARED_MAX_BYTES`` (bytes, or with a K/M/G/T suffix; default 10G).

**Layout.** ``ROOT/v1/<prepared fingerprint>/<k[:2]>/<k>.prep`` plus one ``config.json`` per
fingerprint folder (the preprocessing fields it stands for, for ``featmammo cache info``). The
prepared fingerprint (:meth:`PreprocessConfig.prepared_fingerprint`) covers every field that
decides the prepared pixels and leaves out ``normalize``/``mean``/``std``: configs that differ only
in normalisation share entries.

**Key** ``k`` = sha256 of: the image file's identity (:func:`file_identity`: resolved path,
size, mtime_ns, ctime_ns, inode and a sha256 of its first and last 4 KiB; for a ``FILE#INDEX``
path, FILE's identity and the record index; for a DDSM ``.LJPEG`` also every ``.ics`` beside it,
since shape and digitiser come from there), the decoder identity
(:func:`featmammo.io.decoder_identity`: the reader, the versions of its decoding libraries -- for a
DICOM every pydicom plugin, which decides the plugin a transfer syntax gets -- and the requested
``decoder`` engine), the ROI mask file's identity when ``roi`` is ``crop``/``patch`` (never for
``full``), the requested laterality (when ``canonical_side``) and the prepared fingerprint. A file
replaced by another of the same size and mtime (``cp -p``, ``rsync -t``, ``tar x``) has a new
ctime (no program can set it back) and usually a new inode, so its old entry is simply never asked
for again (and ages out). Why not a digest of the whole file: on the 8 real CBIS-DDSM DICOMs
(10-14 MB) sha256 takes 6-9 ms with the file in the page cache against 0.2 ms for a hit and ~90 ms
for decode + preprocess, and on a cold or network disk it reads the whole file, as a decode does;
the stat + 2 x 4 KiB sample costs ~0.15 ms. The identity is read again after a miss's decode; a
file that changed meanwhile is not stored.

**Entry file.** ``FMPREP1\\n``, a little-endian uint32 header length, a JSON header (key, dtype,
shape, max_value, raw_max_abs, identities), the pixels (C order), and the sha256 of everything
before it. Pixels are stored in the smallest dtype that holds them exactly (uint8/uint16 for
``nearest`` on integer images, float32 otherwise: area/bilinear/bicubic averages are not integers
and the result must stay bit-identical). A file that is short, fails its checksum, names another
key or disagrees with the config is logged, deleted and rebuilt, never used.

**Concurrency and crashes.** Entries are written with :func:`featmammo.atomic.atomic_write` (temp
file, rename): a reader sees a whole entry or none; two runs preparing the same image both
write the same bytes. A run killed mid-write leaves only a ``.*.tmp`` file, removed by eviction
scans once it is an hour old and by :meth:`PreparedCache.clear`. Reads take no lock; writers
take the size count's lock only to count (below).

**Size bound.** Each hit bumps the entry's mtime (its last use). One byte count per format
folder (``ROOT/v1/usage``), read and updated under an exclusive ``flock`` on that file by every
process that writes an entry: past ``max_bytes`` the writer deletes least recently used entries
(one scan of the folder, under the lock) down to 90 % of the bound. So the bound holds across
processes (measured: 4 processes with a count each left 2.4x the bound; one shared count, <= 1x).
The count starts from a scan when the file is missing or unreadable; it can only overestimate
(an entry rewritten by two processes counts twice until the next eviction's scan).

Cache I/O failures (read-only or full disk) never change a result: the image is prepared
without the cache and one warning per process names the folder and reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import struct
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .errors import ConfigError
from .hashing import canonical_json
from .paths import cache_dir
from .preprocess import (
    Prepared,
    PreprocessConfig,
    _has_path,
    _normalize_laterality,
    finish,
    load_and_preprocess,
    load_prepared,
)

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
MAGIC = b"FMPREP1\n"
SUFFIX = ".prep"
DEFAULT_MAX_BYTES = 10 * 2**30
MAX_BYTES_ENV = "FEATMAMMO_PREPARED_MAX_BYTES"
_LOW_WATER = 0.9  # eviction brings the folder down to this fraction of max_bytes
_TMP_MAX_AGE_S = 3600.0  # a temp file older than this belongs to a killed writer
_DIGEST = 32
USAGE_FILE = "usage"  # the shared byte count of one format folder (and its lock)
_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "float32": np.float32}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_bytes(text) -> int:
    """``"10G"``, ``"512M"``, ``"1.5GiB"``, ``"123"`` -> bytes (binary multiples)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ConfigError(f"not a size in bytes: {text!r} (examples: 500M, 10G, 1073741824)")
    mult = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    value = int(float(m.group(1)) * mult)
    if value <= 0:
        raise ConfigError(f"size must be > 0 bytes, got {text!r}")
    return value


SAMPLE_BYTES = 4096  # read from each end of a file for its identity's content sample


def _stat_identity(p: Path, st: os.stat_result) -> dict:
    """The stat fields and content sample of one regular file (OSError when it cannot be read)."""
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        digest.update(f.read(SAMPLE_BYTES))
        if st.st_size > SAMPLE_BYTES:
            f.seek(max(SAMPLE_BYTES, st.st_size - SAMPLE_BYTES))
            digest.update(f.read(SAMPLE_BYTES))
    return {
        "size": int(st.st_size),
        "mtime_ns": int(st.st_mtime_ns),
        "ctime_ns": int(st.st_ctime_ns),
        "inode": int(st.st_ino),
        "sample": digest.hexdigest()[:32],
    }


def file_identity(path) -> dict | None:
    """The identity of an image file: what must be unchanged for a result made from it to stand.

    ``{"path", "size", "mtime_ns", "ctime_ns", "inode", "sample", "index"}``: the resolved path;
    size, modification time, status-change time and inode number (``os.stat``); ``sample``, the
    sha256 (32 hex digits) of the first and last 4 KiB of the file; ``index``, the record number
    of a ``FILE#INDEX`` path (FILE's identity), else None. A DDSM ``.LJPEG`` also carries
    ``ics``: ``[name, size, mtime_ns, ctime_ns, inode, sample]`` of each ``.ics``/``.ics.gz`` in
    its folder (shape and digitiser come from there). None when the file cannot be stat'ed or
    read, or is not a regular file.

    A file replaced by one of the same size and mtime (``cp -p``, ``rsync -t``, ``tar x``,
    ``os.utime`` after writing) gets a new ``ctime_ns`` (and, unless overwritten in place, a new
    ``inode``): no program can set ctime back. ``sample`` also catches a replacement where ctime
    is not a change time (some network or Windows file systems) unless both ends are unchanged.
    Cost: one ``stat`` and two 4 KiB reads (``benchmarks/preprocess_speed.py``, section ``cache``).
    ``chmod``/``chown``/``mv`` also change ctime: the identity then differs although the pixels
    do not (a cache miss, never a stale hit).
    """
    text = str(path)
    p, index = Path(text), None
    try:
        st = p.stat()
    except OSError:
        m = re.fullmatch(r"(.+)#(\d+)", text)
        if m is None:
            return None
        p, index = Path(m.group(1)), int(m.group(2))
        try:
            st = p.stat()
        except OSError:
            return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        ident = {"path": str(p.resolve()), **_stat_identity(p, st), "index": index}
    except OSError:
        return None
    name = p.name.lower()
    if name.endswith(".ljpeg") or name.endswith(".ljpeg.gz"):
        ics = []
        try:
            siblings = sorted(
                q for q in p.parent.iterdir() if q.name.lower().endswith((".ics", ".ics.gz"))
            )
            for q in siblings:
                ics.append([q.name, *_stat_identity(q, q.stat()).values()])
        except OSError:
            return None
        ident["ics"] = ics
    return ident


def _utc(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _json_default(value):
    """numpy scalars and arrays in read metadata (window parameters) as plain JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _compact(pixels: np.ndarray) -> np.ndarray:
    """The smallest of uint8/uint16/float32 that holds ``pixels`` (float32) exactly."""
    lo, hi = float(pixels.min()), float(pixels.max())
    exact_int = lo >= 0 and hi <= 65535 and np.array_equal(np.floor(pixels), pixels)
    if exact_int and not np.signbit(pixels).any():  # -0.0 would come back as +0.0
        return pixels.astype(np.uint8 if hi <= 255 else np.uint16)
    return np.ascontiguousarray(pixels, dtype=np.float32)


class CorruptEntry(Exception):
    """An entry file that must not be used (the message says why)."""


class PreparedCache:
    """Prepared regions on disk under ``root``, at most about ``max_bytes`` (see the module doc).

    Picklable (DataLoader workers get their own size estimate). ``stats`` counts this process's
    ``hits``, ``misses``, ``rebuilt`` (corrupt entries replaced), ``stored`` and ``uncached``
    (images prepared without the cache: source not stat-able or cache I/O failed).
    """

    _defaults: dict = {}

    def __init__(self, root, max_bytes: int = DEFAULT_MAX_BYTES):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)):
            raise ConfigError(f"PreparedCache: max_bytes must be an int, got {max_bytes!r}")
        if max_bytes <= 0:
            raise ConfigError(f"PreparedCache: max_bytes must be > 0, got {max_bytes}")
        self.root = Path(root).expanduser().absolute()
        self.max_bytes = int(max_bytes)
        self._reset()

    def _reset(self) -> None:
        self._warned = False
        self._configs_written: set[str] = set()
        self.stats = {"hits": 0, "misses": 0, "rebuilt": 0, "stored": 0, "uncached": 0}

    def __getstate__(self):
        return {"root": self.root, "max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.root, self.max_bytes = state["root"], state["max_bytes"]
        self._reset()

    def __repr__(self) -> str:
        return f"PreparedCache({str(self.root)!r}, max_bytes={self.max_bytes})"

    @classmethod
    def default(cls) -> PreparedCache:
        """Root ``$FEATMAMMO_CACHE/prepared`` (else ``cache/prepared``), bound
        ``$FEATMAMMO_PREPARED_MAX_BYTES`` (else 10 GiB); one shared object per (root, bound)."""
        env = os.environ.get(MAX_BYTES_ENV)
        max_bytes = parse_bytes(env) if env else DEFAULT_MAX_BYTES
        root = (cache_dir() / "prepared").expanduser().absolute()
        key = (str(root), max_bytes)
        cache = cls._defaults.get(key)
        if cache is None:
            cache = cls._defaults[key] = cls(root, max_bytes)
        return cache

    # ------------------------------------------------------------------------------ paths, keys
    @property
    def _base(self) -> Path:
        return self.root / f"v{CACHE_FORMAT}"

    def entry_path(self, config: PreprocessConfig, key: str) -> Path:
        return self._base / config.prepared_fingerprint() / key[:2] / f"{key}{SUFFIX}"

    def key(
        self,
        path,
        config: PreprocessConfig,
        *,
        laterality=None,
        roi_mask_path=None,
        decoder: str = "cpu",
    ) -> tuple[str, dict] | None:
        """``(key, identities)`` for one image and config; None when a file cannot be stat'ed
        (the caller then prepares without the cache, and the reader names the problem)."""
        source = file_identity(path)
        if source is None:
            return None
        mask = None
        if config.uses_mask and _has_path(roi_mask_path):
            mask = file_identity(roi_mask_path)
            if mask is None:
                return None
        side = _normalize_laterality(laterality) if config.canonical_side else None
        from .io import decoder_identity  # lazy: the io package pulls pydicom

        idents = {
            "format": CACHE_FORMAT,
            "prepared": config.prepared_fingerprint(),
            "source": source,
            "decoder": decoder_identity(path, decoder),
            "mask": mask,
            "laterality": side,
        }
        return hashlib.sha256(canonical_json(idents).encode()).hexdigest()[:40], idents

    # ------------------------------------------------------------------------------ read, write
    def _warn(self, what: str, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "prepared-image cache %s: %s failed (%s: %s); preparing without it",
                self.root,
                what,
                type(exc).__name__,
                exc,
            )

    def read(self, file: Path, key: str, config: PreprocessConfig) -> Prepared:
        """The entry in ``file``; FileNotFoundError when absent, CorruptEntry when unusable."""
        data = file.read_bytes()
        head = len(MAGIC) + 4
        if len(data) < head + _DIGEST or not data.startswith(MAGIC):
            raise CorruptEntry(f"not a prepared entry ({len(data)} bytes, bad magic or short)")
        body, digest = data[:-_DIGEST], data[-_DIGEST:]
        if hashlib.sha256(body).digest() != digest:
            raise CorruptEntry("checksum mismatch")
        (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
        try:
            header = json.loads(body[head : head + hlen].decode())
            dtype = _DTYPES[header["dtype"]]
            shape = tuple(int(v) for v in header["shape"])
            max_value, raw_max_abs = float(header["max_value"]), float(header["raw_max_abs"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptEntry(f"bad header ({exc})") from exc
        if header.get("key") != key:
            raise CorruptEntry(f"entry is for key {header.get('key')!r}")
        payload = body[head + hlen :]
        if not config.fits(shape):
            raise CorruptEntry(f"shape {shape} does not fit image_size={config.image_size}")
        if len(payload) != shape[0] * shape[1] * np.dtype(dtype).itemsize:
            raise CorruptEntry(f"{len(payload)} payload bytes for {header['dtype']} {shape}")
        pixels = np.empty(shape, dtype=np.float32)
        pixels[...] = np.frombuffer(payload, dtype=dtype).reshape(shape)
        with contextlib.suppress(OSError):
            os.utime(file)  # last use, for LRU eviction
        meta = header.get("read_meta")
        return Prepared(pixels, max_value, raw_max_abs, meta if isinstance(meta, dict) else {})

    def write(self, file: Path, key: str, prepared: Prepared, idents: dict) -> int:
        """Write one entry atomically; returns its size in bytes."""
        stored = _compact(prepared.pixels)
        header = {
            "key": key,
            "dtype": stored.dtype.name,
            "shape": list(stored.shape),
            "max_value": float(prepared.max_value),
            "raw_max_abs": float(prepared.raw_max_abs),
            "read_meta": prepared.meta,
            "created": _utc(time.time()),
            **idents,
        }
        hbytes = json.dumps(header, sort_keys=True, default=_json_default).encode()
        body = MAGIC + struct.pack("<I", len(hbytes)) + hbytes + stored.tobytes(order="C")
        blob = body + hashlib.sha256(body).digest()
        # no fsync: an entry carries its own sha256, so one torn by a power cut is detected and
        # rebuilt; a kill -9 cannot tear it (atomic rename). fsync cost 4-7 ms per entry here.
        atomic_write(file, lambda f: f.write(blob), durable=False)
        return len(blob)

    def _write_config(self, config: PreprocessConfig) -> None:
        fp = config.prepared_fingerprint()
        if fp in self._configs_written:
            return
        path = self._base / fp / "config.json"
        if not path.exists():
            d = config.to_dict()
            for name in ("normalize", "mean", "std"):
                d.pop(name)
            text = json.dumps(
                {"prepared_fingerprint": fp, "preprocess": d}, indent=2, sort_keys=True
            )
            atomic_write(path, lambda f: f.write(text.encode()))
        self._configs_written.add(fp)

    def get_or_prepare(
        self,
        path,
        config: PreprocessConfig,
        *,
        laterality=None,
        roi_mask_path=None,
        decoder: str = "cpu",
    ) -> Prepared:
        """The prepared region of ``path``: from the cache, else decoded, prepared and stored.

        ``decoder`` (``featmammo.io.read_image``'s) is part of the key through
        :func:`featmammo.io.decoder_identity`: an entry decoded on the GPU, or by other versions
        of the decoding libraries, is not served to a run that would decode otherwise.
        """
        keyed = self.key(
            path, config, laterality=laterality, roi_mask_path=roi_mask_path, decoder=decoder
        )
        if keyed is None:
            self.stats["uncached"] += 1
            return load_prepared(
                path, config, laterality=laterality, roi_mask_path=roi_mask_path, decoder=decoder
            )
        key, idents = keyed
        file = self.entry_path(config, key)
        try:
            prepared = self.read(file, key, config)
        except FileNotFoundError:
            pass
        except CorruptEntry as exc:
            log.warning("prepared-image cache: %s: %s; rebuilding it", file, exc)
            self.stats["rebuilt"] += 1
            try:
                file.unlink(missing_ok=True)
            except OSError as err:
                self._warn("removing a corrupt entry", err)
        except OSError as exc:
            self._warn("reading", exc)
        else:
            self.stats["hits"] += 1
            return prepared
        self.stats["misses"] += 1
        prepared = load_prepared(
            path, config, laterality=laterality, roi_mask_path=roi_mask_path, decoder=decoder
        )
        again = self.key(
            path, config, laterality=laterality, roi_mask_path=roi_mask_path, decoder=decoder
        )
        if again is None or again[0] != key:
            log.info("prepared-image cache: %s changed while it was read; not stored", path)
            self.stats["uncached"] += 1
            return prepared
        try:
            self._write_config(config)
            size = self.write(file, key, prepared, idents)
        except OSError as exc:
            self._warn("writing", exc)
            self.stats["uncached"] += 1
            return prepared
        self.stats["stored"] += 1
        try:
            self._account(size)
        except OSError as exc:
            self._warn("counting its size", exc)
        return prepared

    # ------------------------------------------------------------------------------ size bound
    def _scan(self, tmp_cleanup: bool = True) -> list[tuple[float, int, Path]]:
        """``(mtime, size, path)`` of every entry; stale temp files are removed on the way."""
        out = []
        now = time.time()
        if not self._base.is_dir():
            return out
        for dirpath, _dirs, files in os.walk(self._base):
            for name in files:
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except OSError:
                    continue
                if name.endswith(SUFFIX) and not name.startswith("."):
                    out.append((st.st_mtime, st.st_size, p))
                elif tmp_cleanup and name.endswith(".tmp") and now - st.st_mtime > _TMP_MAX_AGE_S:
                    p.unlink(missing_ok=True)
        return out

    @property
    def _usage_path(self) -> Path:
        return self._base / USAGE_FILE

    @contextlib.contextmanager
    def _usage(self):
        """The shared byte count, under an exclusive lock: yields ``[bytes or None]`` (None: not
        known, scan) and writes the value back. One count for every process using the folder."""
        self._base.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._usage_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _lock_fd(fd)
            raw = os.pread(fd, 64, 0)
            try:
                box = [int(raw.decode().strip())]
            except ValueError:  # new, empty or torn: unknown
                box = [None]
            yield box
            text = b"" if box[0] is None else f"{int(box[0])}\n".encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, text, 0)
        finally:
            os.close(fd)  # releases the lock

    def _account(self, size: int) -> None:
        """Add one written entry to the shared count; evict when it passes ``max_bytes``."""
        with self._usage() as usage:
            if usage[0] is None:
                usage[0] = sum(s for _, s, _ in self._scan())  # the new entry is in the scan
            else:
                usage[0] += size
            if usage[0] > self.max_bytes:
                usage[0] = self._evict_unlocked(int(self.max_bytes * _LOW_WATER))

    def evict(self, target: int | None = None) -> int:
        """Delete least recently used entries until at most ``target`` bytes remain (default 90 %
        of ``max_bytes``); returns how many were deleted."""
        target = int(self.max_bytes * _LOW_WATER) if target is None else int(target)
        removed = [0]
        with self._usage() as usage:
            usage[0] = self._evict_unlocked(target, removed)
        return removed[0]

    def _evict_unlocked(self, target: int, removed: list | None = None) -> int:
        """Eviction proper (the caller holds the usage lock); returns the bytes that remain."""
        removed = [0] if removed is None else removed
        entries = sorted(self._scan())
        total = sum(s for _, s, _ in entries)
        for _, size, p in entries:
            if total <= target:
                break
            try:
                p.unlink()
            except FileNotFoundError:
                pass  # removed meanwhile (a clear, or a process without the lock)
            except OSError as exc:
                self._warn("evicting", exc)
                break
            total -= size
            removed[0] += 1
        if removed[0]:
            log.info(
                "prepared-image cache %s: evicted %d least recently used entries (now %d bytes)",
                self.root,
                removed[0],
                total,
            )
        return total

    # ------------------------------------------------------------------------------ management
    def info(self) -> dict:
        """Root, bound, entry count and bytes in all and per prepared fingerprint (with config)."""
        entries = self._scan(tmp_cleanup=False)
        per: dict[str, dict] = {}
        for _mtime, size, p in entries:
            fp = p.relative_to(self._base).parts[0]
            row = per.setdefault(fp, {"fingerprint": fp, "entries": 0, "bytes": 0})
            row["entries"] += 1
            row["bytes"] += size
        for fp, row in per.items():
            try:
                row["preprocess"] = json.loads((self._base / fp / "config.json").read_text())[
                    "preprocess"
                ]
            except (OSError, ValueError, KeyError):
                row["preprocess"] = None
        temp = 0
        if self._base.is_dir():
            temp = sum(1 for p in self._base.rglob("*.tmp"))
        mtimes = [m for m, _, _ in entries]
        return {
            "root": str(self.root),
            "format": CACHE_FORMAT,
            "max_bytes": self.max_bytes,
            "entries": len(entries),
            "bytes": sum(s for _, s, _ in entries),
            "temp_files": temp,
            "least_recent_use": _utc(min(mtimes)) if mtimes else None,
            "most_recent_use": _utc(max(mtimes)) if mtimes else None,
            "configs": sorted(per.values(), key=lambda r: r["fingerprint"]),
        }

    def clear(self) -> int:
        """Delete every entry (all format versions), temp file and config; returns entries gone."""
        if not self.root.is_dir():
            return 0
        if self._base.is_dir():
            with self._usage() as usage:  # no process counts or evicts meanwhile
                removed = self._clear_unlocked()
                usage[0] = None  # whatever was written meanwhile is found by the next scan
        else:
            removed = self._clear_unlocked()
        return removed

    def _clear_unlocked(self) -> int:
        removed = 0
        for base in self.root.iterdir():
            if not (base.is_dir() and re.fullmatch(r"v\d+", base.name)):
                continue
            for dirpath, dirs, files in os.walk(base, topdown=False):
                for name in files:
                    if name == USAGE_FILE and Path(dirpath) == self._base:
                        continue  # locked by this call; emptied when it ends
                    try:
                        (Path(dirpath) / name).unlink()
                    except FileNotFoundError:
                        continue
                    if name.endswith(SUFFIX) and not name.startswith("."):
                        removed += 1
                for d in dirs:
                    with contextlib.suppress(OSError):  # a concurrent writer may have added a file
                        (Path(dirpath) / d).rmdir()
            with contextlib.suppress(OSError):
                base.rmdir()
        return removed


def _lock_fd(fd: int) -> None:
    """Block until this process holds an exclusive lock on the open file ``fd`` (released when
    ``fd`` is closed, or by the OS when the process dies)."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                return
            except OSError:  # LK_LOCK gives up after 10 s: keep waiting
                continue
    fcntl.flock(fd, fcntl.LOCK_EX)


def _resolve_cache(cache) -> PreparedCache | None:
    if cache is False:
        return None
    if cache is None or cache is True:
        return PreparedCache.default()
    if isinstance(cache, PreparedCache):
        return cache
    raise ConfigError(
        "cache must be a PreparedCache, None (the default cache) or False (no cache), "
        f"got {cache!r}"
    )


def prepare_image(
    path,
    config: PreprocessConfig | None = None,
    *,
    laterality=None,
    roi_mask_path=None,
    cache=None,
    decoder: str = "cpu",
    with_meta: bool = False,
):
    """``(3, H, W)`` float32, identical to ``load_and_preprocess(path, config, ...)``.

    Decode + calibration + side + crop + resize come from the prepared-image cache when present
    (and are stored there otherwise); normalisation runs every time. ``cache``: None (or True)
    = :meth:`PreparedCache.default`, False = no cache, or a :class:`PreparedCache`.
    ``decoder``: ``featmammo.io.read_image``'s (``cpu``, ``auto``, ``nvimagecodec``).
    ``with_meta=True`` returns ``(array, meta)``: what the read did to this image
    (``windowing``, ``windowing_applied``, ``windowing_params``, ``inverted``, ``decoder``, ...;
    :data:`featmammo.preprocess.READ_META`), the same from a hit as from a miss.
    """
    config = config or PreprocessConfig()
    store = _resolve_cache(cache)
    if store is None and not with_meta:
        return load_and_preprocess(
            path, config, laterality=laterality, roi_mask_path=roi_mask_path, decoder=decoder
        )
    if store is None:
        prepared = load_prepared(
            path, config, laterality=laterality, roi_mask_path=roi_mask_path, decoder=decoder
        )
    else:
        prepared = store.get_or_prepare(
            path, config, laterality=laterality, roi_mask_path=roi_mask_path, decoder=decoder
        )
    out = finish(prepared, config)
    return (out, dict(prepared.meta)) if with_meta else out


__all__ = [
    "CACHE_FORMAT",
    "DEFAULT_MAX_BYTES",
    "MAX_BYTES_ENV",
    "PreparedCache",
    "file_identity",
    "parse_bytes",
    "prepare_image",
]
