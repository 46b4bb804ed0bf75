"""featmammo.prepared: the prepared-image cache (bit-identity, keys, corruption, LRU, crashes)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import featmammo.io
from featmammo.errors import ConfigError, ImageReadError
from featmammo.prepared import (
    SUFFIX,
    PreparedCache,
    file_identity,
    parse_bytes,
    prepare_image,
)
from featmammo.preprocess import PreprocessConfig, load_and_preprocess


def _phantom(rng, h=120, w=80, side="L"):
    yy, xx = np.mgrid[0:h, 0:w]
    img = rng.integers(100, 400, size=(h, w)).astype(np.uint16)
    breast = ((yy - h / 2) / (0.4 * h)) ** 2 + (xx / (0.6 * w)) ** 2 < 1
    img[breast] += rng.integers(2000, 3000, size=int(breast.sum())).astype(np.uint16)
    img[50:60, 20:35] = 4000 + 50 * np.arange(15)  # lesion, with a left-right gradient
    return img if side == "L" else img[:, ::-1].copy()


def _png(path: Path, pixels: np.ndarray) -> Path:
    PILImage.fromarray(pixels.astype(np.uint16)).save(path)
    return path


def _mask(path: Path, shape, box=(50, 20, 60, 35)) -> Path:
    m = np.zeros(shape, np.uint8)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = 255
    PILImage.fromarray(m).save(path)
    return path


@pytest.fixture
def files(tmp_path, rng):
    d = tmp_path / "img"
    d.mkdir()
    left = _png(d / "left.png", _phantom(rng))
    right = _png(d / "right.png", _phantom(rng, side="R"))
    mask = _mask(d / "mask.png", (120, 80))
    return {"left": left, "right": right, "mask": mask}


@pytest.fixture
def cache(tmp_path):
    return PreparedCache(tmp_path / "cache", max_bytes=50 * 2**20)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _entries(cache: PreparedCache) -> list[Path]:
    return sorted(cache.root.rglob(f"*{SUFFIX}"))


class _CountReads:
    def __init__(self, monkeypatch):
        self.paths = []
        real = featmammo.io.read_image

        def counting(path, **kw):
            self.paths.append(str(path))
            return real(path, **kw)

        monkeypatch.setattr(featmammo.io, "read_image", counting)


# --------------------------------------------------------------------------- bit-identity


@pytest.mark.parametrize(
    "cfg",
    [
        PreprocessConfig(image_size=32),
        PreprocessConfig(image_size=33, resize="bilinear", normalize="zscore"),
        PreprocessConfig(image_size=24, resize="bicubic", normalize="mean", crop="none"),
        PreprocessConfig(image_size=31, resize="nearest", normalize="decimal"),
        PreprocessConfig(image_size=20, resize="nearest", normalize="none", canonical_side=False),
        PreprocessConfig(image_size=16, roi="crop", normalize="zscore"),
        PreprocessConfig(image_size=27, roi="patch", patch_context=0.7, resize="bilinear"),
        PreprocessConfig(image_size=32, windowing="percentile"),
    ],
    ids=lambda c: f"{c.resize}-{c.normalize}-{c.roi}-{c.image_size}-{c.windowing}",
)
@pytest.mark.parametrize("side", ["left", "right"])
def test_bit_identical_with_and_without_cache(files, cache, cfg, side):
    kw = {"roi_mask_path": files["mask"] if cfg.roi != "full" else None}
    lat = {"left": "L", "right": None}[side]  # None: inferred from the pixels
    direct = load_and_preprocess(files[side], cfg, laterality=lat, **kw)
    no_cache = prepare_image(files[side], cfg, laterality=lat, cache=False, **kw)
    miss = prepare_image(files[side], cfg, laterality=lat, cache=cache, **kw)
    hit = prepare_image(files[side], cfg, laterality=lat, cache=cache, **kw)
    assert cache.stats["misses"] == 1 and cache.stats["hits"] == 1
    for out in (no_cache, miss, hit):
        assert _same_bits(out, direct)
    assert len(_entries(cache)) == 1


def test_synthetic_dicoms_bit_identical(tmp_path):
    import pandas as pd

    from featmammo.datasets.synthetic import write_synthetic_cbis

    write_synthetic_cbis(tmp_path / "s", n=3, seed=2, size=(96, 64), classes=("benign",))
    base = tmp_path / "s"
    rows = pd.read_csv(base / "manifest.csv", keep_default_na=False)
    cache = PreparedCache(tmp_path / "c", max_bytes=2**30)
    for cfg in (PreprocessConfig(image_size=40), PreprocessConfig(image_size=40, roi="patch")):
        for _, row in rows.iterrows():
            kw = dict(
                laterality=row["laterality"] or None, roi_mask_path=base / row["roi_mask_path"]
            )
            ref = load_and_preprocess(base / row["path"], cfg, **kw)
            for _ in range(2):
                assert _same_bits(prepare_image(base / row["path"], cfg, cache=cache, **kw), ref)
    assert cache.stats == {"hits": 6, "misses": 6, "rebuilt": 0, "stored": 6, "uncached": 0}


def test_hit_does_not_decode_and_normalisation_shares_entries(files, cache, monkeypatch):
    reads = _CountReads(monkeypatch)
    cfg = PreprocessConfig(image_size=32)
    prepare_image(files["left"], cfg, cache=cache)
    assert len(reads.paths) == 1
    for other in (
        cfg,
        PreprocessConfig(image_size=32, normalize="zscore"),
        PreprocessConfig(image_size=32, normalize="decimal"),
        PreprocessConfig(image_size=32, mean=(0.5,), std=(0.25,)),
    ):
        out = prepare_image(files["left"], other, cache=cache)
        assert _same_bits(out, load_and_preprocess(files["left"], other))
    assert len(reads.paths) == 1 + 4  # only the load_and_preprocess references decoded
    assert cache.stats["hits"] == 4 and len(_entries(cache)) == 1
    # a field that changes the prepared pixels is another entry
    prepare_image(files["left"], PreprocessConfig(image_size=32, resize="bilinear"), cache=cache)
    assert len(_entries(cache)) == 2


def test_compact_dtype_for_nearest_on_integers(files, cache):
    for resize in ("nearest", "area"):
        prepare_image(files["left"], PreprocessConfig(image_size=32, resize=resize), cache=cache)
    dtypes = {}
    for p in _entries(cache):
        data = p.read_bytes()
        hlen = int.from_bytes(data[8:12], "little")
        header = json.loads(data[12 : 12 + hlen])
        dtypes[header["dtype"]] = p.stat().st_size
    assert set(dtypes) == {"uint16", "float32"}
    assert dtypes["uint16"] < dtypes["float32"]


def test_compact_keeps_every_bit():
    from featmammo.prepared import _compact

    cases = {
        "uint8": np.array([[0, 255], [3, 7]], np.float32),
        "uint16": np.array([[0, 256], [65535, 7]], np.float32),
        "float32": np.array([[0.5, 1]], np.float32),
    }
    cases["float32 (negative zero)"] = np.array([[-0.0, 1.0]], np.float32)
    cases["float32 (negative)"] = np.array([[-1.0, 1.0]], np.float32)
    cases["float32 (too large)"] = np.array([[65536.0, 1.0]], np.float32)
    for name, x in cases.items():
        c = _compact(x)
        assert c.dtype.name == name.split()[0], name
        assert c.astype(np.float32).tobytes() == x.tobytes(), name


# --------------------------------------------------------------------------- keys and staleness


def test_changed_source_is_a_new_entry(files, cache):
    cfg = PreprocessConfig(image_size=32, normalize="none")
    first = prepare_image(files["left"], cfg, cache=cache)
    img = np.asarray(PILImage.open(files["left"]))
    _png(files["left"], (img // 2).astype(np.uint16))
    st = files["left"].stat()
    os.utime(files["left"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = prepare_image(files["left"], cfg, cache=cache)
    assert cache.stats["hits"] == 0 and cache.stats["misses"] == 2
    assert _same_bits(second, load_and_preprocess(files["left"], cfg))
    assert not np.array_equal(first, second)


def test_laterality_and_mask_are_part_of_the_key(files, cache, tmp_path):
    cfg = PreprocessConfig(image_size=16, roi="crop", normalize="none")
    a = prepare_image(files["left"], cfg, roi_mask_path=files["mask"], cache=cache)
    b = prepare_image(files["left"], cfg, roi_mask_path=files["mask"], laterality="R", cache=cache)
    other = _mask(tmp_path / "other.png", (120, 80), box=(10, 10, 30, 30))
    c = prepare_image(files["left"], cfg, roi_mask_path=other, cache=cache)
    assert cache.stats["misses"] == 3 and len(_entries(cache)) == 3
    assert not np.array_equal(a, c) and not np.array_equal(a, b)
    # editing the mask file in place (new mtime) is a new key too
    _mask(files["mask"], (120, 80), box=(10, 10, 30, 30))
    st = files["mask"].stat()
    os.utime(files["mask"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    d = prepare_image(files["left"], cfg, roi_mask_path=files["mask"], cache=cache)
    assert cache.stats["hits"] == 0
    assert _same_bits(d, c)


def test_full_roi_ignores_the_mask(files, cache, monkeypatch, tmp_path):
    reads = _CountReads(monkeypatch)
    cfg = PreprocessConfig(image_size=32)
    a = prepare_image(files["left"], cfg, roi_mask_path=files["mask"], cache=cache)
    b = prepare_image(files["left"], cfg, roi_mask_path=tmp_path / "missing.png", cache=cache)
    assert cache.stats["hits"] == 1 and _same_bits(a, b)
    assert reads.paths == [str(files["left"])]  # the mask was never opened


def test_file_identity_record_paths_and_ljpeg_ics(tmp_path):
    f = tmp_path / "train.tfrecords"
    f.write_bytes(b"x" * 10)
    a, b = file_identity(f"{f}#3"), file_identity(f"{f}#4")
    assert a["index"] == 3 and b["index"] == 4 and a["path"] == str(f.resolve())
    st = f.stat()
    assert a["size"] == 10 and a["mtime_ns"] == st.st_mtime_ns
    assert a["ctime_ns"] == st.st_ctime_ns and a["inode"] == st.st_ino
    assert a["sample"] == hashlib.sha256(b"x" * 10).hexdigest()[:32]
    assert file_identity(tmp_path / "missing.png") is None
    assert file_identity(f"{tmp_path / 'missing'}#2") is None
    assert file_identity(tmp_path) is None  # a folder
    literal = tmp_path / "odd#7"  # an existing file whose name holds '#' is itself
    literal.write_bytes(b"y")
    assert file_identity(literal)["index"] is None
    lj = tmp_path / "A_0001_1.LEFT_CC.LJPEG"
    lj.write_bytes(b"z")
    ics = tmp_path / "A-0001-1.ics"
    ics.write_text("ics_version 1.0\n")
    before = file_identity(lj)
    st = ics.stat()
    sample = hashlib.sha256(ics.read_bytes()).hexdigest()[:32]
    assert before["ics"] == [
        ["A-0001-1.ics", st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, sample]
    ]
    ics.write_text("ics_version 1.0\nDIGITIZER LUMISYS LASER\n")
    assert file_identity(lj) != before


def test_unreadable_source_raises_the_readers_error(cache, tmp_path):
    with pytest.raises(ImageReadError, match="missing.png"):
        prepare_image(tmp_path / "missing.png", PreprocessConfig(image_size=8), cache=cache)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageReadError, match="bad.png"):
        prepare_image(bad, PreprocessConfig(image_size=8), cache=cache)
    assert _entries(cache) == []


# --------------------------------------------------------------------------- corruption


@pytest.mark.parametrize("where", ["magic", "header", "payload", "digest", "truncate", "empty"])
def test_corrupt_entry_is_detected_and_rebuilt(files, cache, where, caplog):
    cfg = PreprocessConfig(image_size=32)
    ref = prepare_image(files["left"], cfg, cache=cache)
    (entry,) = _entries(cache)
    data = bytearray(entry.read_bytes())
    hlen = int.from_bytes(data[8:12], "little")
    if where == "truncate":
        data = data[: len(data) // 2]
    elif where == "empty":
        data = bytearray()
    else:
        pos = {"magic": 2, "header": 12 + hlen // 2, "payload": len(data) - 40, "digest": -5}[where]
        data[pos] ^= 0x5A
    entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="featmammo.prepared"):
        out = prepare_image(files["left"], cfg, cache=cache)
    assert _same_bits(out, ref)
    assert cache.stats["rebuilt"] == 1 and cache.stats["hits"] == 0
    assert str(entry) in caplog.text and "rebuilding" in caplog.text
    again = prepare_image(files["left"], cfg, cache=cache)  # the rebuilt entry is whole
    assert cache.stats["hits"] == 1 and _same_bits(again, ref)


def test_entry_of_another_key_is_not_used(files, cache):
    cfg = PreprocessConfig(image_size=32)
    prepare_image(files["left"], cfg, cache=cache)
    prepare_image(files["right"], cfg, cache=cache)
    a, b = _entries(cache)
    a.write_bytes(b.read_bytes())  # valid checksum, wrong key (e.g. a file copied by hand)
    for f in ("left", "right"):
        assert _same_bits(
            prepare_image(files[f], cfg, cache=cache), load_and_preprocess(files[f], cfg)
        )
    assert cache.stats["rebuilt"] == 1


def test_failed_write_leaves_no_entry_and_warns_once(files, cache, monkeypatch, caplog):
    import featmammo.prepared as prepared

    def failing(path, write):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepared, "atomic_write", failing)
    cfg = PreprocessConfig(image_size=32)
    with caplog.at_level(logging.WARNING, logger="featmammo.prepared"):
        a = prepare_image(files["left"], cfg, cache=cache)
        b = prepare_image(files["right"], cfg, cache=cache)
    assert _same_bits(a, load_and_preprocess(files["left"], cfg))
    assert _same_bits(b, load_and_preprocess(files["right"], cfg))
    assert caplog.text.count("No space left") == 1 and str(cache.root) in caplog.text
    assert _entries(cache) == [] and cache.stats["uncached"] == 2


# --------------------------------------------------------------------------- size bound


def test_lru_eviction_keeps_recently_used(tmp_path, rng):
    imgs = [_png(tmp_path / f"i{k}.png", _phantom(rng)) for k in range(6)]
    cfg = PreprocessConfig(image_size=32)
    probe = PreparedCache(tmp_path / "probe", max_bytes=2**30)
    prepare_image(imgs[0], cfg, cache=probe)
    entry_size = _entries(probe)[0].stat().st_size
    cache = PreparedCache(tmp_path / "c", max_bytes=int(3.5 * entry_size))
    t0 = time.time() - 1000
    for k in range(3):
        prepare_image(imgs[k], cfg, cache=cache)
        (newest,) = [p for p in _entries(cache) if p.stat().st_mtime > t0 + 100]
        os.utime(newest, (t0 + 10 * k, t0 + 10 * k))  # deterministic use order 0 < 1 < 2
    prepare_image(imgs[0], cfg, cache=cache)  # a hit: 0 becomes the most recently used
    assert cache.stats["hits"] == 1
    prepare_image(imgs[3], cfg, cache=cache)  # 4 entries > 3.5: evict down to 90 %
    remaining = cache.info()
    assert remaining["bytes"] <= cache.max_bytes and remaining["entries"] == 3
    # 1 (least recently used) went; 0, 2, 3 stay as hits
    cache.stats.update(hits=0, misses=0)
    for k in (0, 2, 3):
        prepare_image(imgs[k], cfg, cache=cache)
    assert cache.stats["hits"] == 3
    prepare_image(imgs[1], cfg, cache=cache)
    assert cache.stats["misses"] == 1


def test_bound_holds_over_many_writes(tmp_path, rng):
    imgs = [_png(tmp_path / f"i{k}.png", _phantom(rng, 60, 40)) for k in range(12)]
    cache = PreparedCache(tmp_path / "c", max_bytes=20_000)
    for p in imgs:
        prepare_image(p, PreprocessConfig(image_size=32), cache=cache)
        assert cache.info()["bytes"] <= 20_000
    assert 0 < cache.info()["entries"] < 12


# --------------------------------------------------------------------------- info / clear / default


def test_info_and_clear(files, cache):
    assert cache.info()["entries"] == 0 and cache.clear() == 0
    prepare_image(files["left"], PreprocessConfig(image_size=32), cache=cache)
    prepare_image(files["right"], PreprocessConfig(image_size=32), cache=cache)
    prepare_image(files["left"], PreprocessConfig(image_size=16, resize="nearest"), cache=cache)
    stale_tmp = next(iter(_entries(cache))).parent / ".x.prep.abc.tmp"
    stale_tmp.write_bytes(b"half")
    info = cache.info()
    assert info["entries"] == 3 and info["temp_files"] == 1
    assert info["bytes"] == sum(p.stat().st_size for p in _entries(cache))
    assert info["max_bytes"] == cache.max_bytes and info["root"] == str(cache.root)
    by_fp = {c["fingerprint"]: c for c in info["configs"]}
    fp = PreprocessConfig(image_size=32).prepared_fingerprint()
    assert by_fp[fp]["entries"] == 2 and by_fp[fp]["preprocess"]["image_size"] == 32
    assert "normalize" not in by_fp[fp]["preprocess"]
    json.dumps(info)
    assert cache.clear() == 3
    assert cache.info()["entries"] == 0 and not stale_tmp.exists()
    # still usable after clear
    prepare_image(files["left"], PreprocessConfig(image_size=32), cache=cache)
    assert cache.info()["entries"] == 1


def test_default_cache_location_and_bound(files, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATMAMMO_CACHE", str(tmp_path / "fc"))
    monkeypatch.setenv("FEATMAMMO_PREPARED_MAX_BYTES", "3M")
    d = PreparedCache.default()
    assert d.root == (tmp_path / "fc" / "prepared").absolute() and d.max_bytes == 3 * 2**20
    assert PreparedCache.default() is d
    prepare_image(files["left"], PreprocessConfig(image_size=16))  # cache=None: the default
    assert d.info()["entries"] == 1
    prepare_image(files["right"], PreprocessConfig(image_size=16), cache=False)
    assert d.info()["entries"] == 1
    monkeypatch.setenv("FEATMAMMO_PREPARED_MAX_BYTES", "lots")
    with pytest.raises(ConfigError, match="lots"):
        PreparedCache.default()
    with pytest.raises(ConfigError):
        prepare_image(files["left"], PreprocessConfig(image_size=16), cache="yes")


def test_parse_bytes_and_constructor_checks(tmp_path):
    assert parse_bytes("10G") == 10 * 2**30 and parse_bytes("512m") == 512 * 2**20
    assert parse_bytes("1.5GiB") == int(1.5 * 2**30) and parse_bytes("123") == 123
    for bad in ("", "-1", "0", "ten", "5X"):
        with pytest.raises(ConfigError):
            parse_bytes(bad)
    with pytest.raises(ConfigError):
        PreparedCache(tmp_path, max_bytes=0)
    c = pickle.loads(pickle.dumps(PreparedCache(tmp_path / "p", max_bytes=1234)))
    assert c.root == (tmp_path / "p").absolute() and c.max_bytes == 1234 and c.stats["hits"] == 0


# --------------------------------------------------------------------------- processes, kill -9

_WORKER = r"""
import sys
from pathlib import Path
from featmammo.prepared import PreparedCache, prepare_image
from featmammo.preprocess import PreprocessConfig
root, mode, *paths = sys.argv[1:]
cache = PreparedCache(root, max_bytes=2**30)
sizes = [16, 20, 24, 28, 32] if mode == "loop" else [32]
print("ready", flush=True)
while True:
    for s in sizes:
        for p in paths:
            prepare_image(p, PreprocessConfig(image_size=s, resize="bicubic"), cache=cache)
    if mode != "loop":
        break
    cache.clear()
"""


def _worker_setup(tmp_path, rng):
    imgs = [str(_png(tmp_path / f"i{k}.png", _phantom(rng))) for k in range(4)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return imgs, tmp_path / "c", env


def test_concurrent_processes(tmp_path, rng):
    imgs, root, env = _worker_setup(tmp_path, rng)
    # two processes filling the same entries at once
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(root), "once", *imgs], env=env)
        for _ in range(2)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    cache = PreparedCache(root, max_bytes=2**30)
    cfg = PreprocessConfig(image_size=32, resize="bicubic")
    for p in imgs:
        assert _same_bits(prepare_image(p, cfg, cache=cache), load_and_preprocess(p, cfg))
    assert cache.stats["hits"] == 4 and cache.stats["rebuilt"] == 0


@pytest.mark.slow
def test_kill_9_leaves_whole_entries_or_none(tmp_path, rng):
    imgs, root, env = _worker_setup(tmp_path, rng)
    # a writer killed at random points: every entry left behind is whole or absent
    hits = 0
    for delay in (0.3, 0.55, 0.8):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(root), "loop", *imgs],
            env=env,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        check = PreparedCache(root, max_bytes=2**30)
        for s in (16, 20, 24, 28, 32):
            c = PreprocessConfig(image_size=s, resize="bicubic")
            for p in imgs:
                assert _same_bits(prepare_image(p, c, cache=check), load_and_preprocess(p, c))
        assert check.stats["rebuilt"] == 0
        hits += check.stats["hits"]
    assert hits > 0  # the killed writers did leave entries behind


# --------------------------------------------------------------------------- DDSM LJPEG end to end


def test_ljpeg_optical_density_through_the_cache(tmp_path):
    pytest.importorskip("featmammo.io.ljpeg")
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from ljpeg_vectors import phantom, write_case
    finally:
        sys.path.pop(0)
    paths = write_case(
        tmp_path / "case",
        "A-1001-1",
        {"LEFT_CC": (phantom(90, 60, 12, seed=3), 7, 12, True)},
        digitizer="DBA 21",
    )
    lj = paths["LEFT_CC"]
    try:
        featmammo.io.read_image(lj)
    except ImageReadError as exc:  # featmammo.io.read_image learns .LJPEG in the same change set
        pytest.skip(f"read_image does not read .LJPEG here yet: {exc}")
    cache = PreparedCache(tmp_path / "c", max_bytes=2**30)
    od = PreprocessConfig(image_size=32, ddsm_calibration="od")
    raw = PreprocessConfig(image_size=32)
    ref = load_and_preprocess(lj, od)
    assert not np.allclose(ref, load_and_preprocess(lj, raw))
    for _ in range(2):
        assert _same_bits(prepare_image(lj, od, cache=cache), ref)
    assert cache.stats["hits"] == 1 and cache.stats["misses"] == 1
    prepare_image(lj, raw, cache=cache)
    assert cache.stats["misses"] == 2  # calibration is part of the prepared fingerprint
    # the .ics decides the digitiser: editing it is a new key (here another scanner)
    ics = tmp_path / "case" / "A-1001-1.ics"
    ics.write_text(ics.read_text().replace("DBA 21", "HOWTEK 1"))
    st = ics.stat()
    os.utime(ics, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    howtek = prepare_image(lj, od, cache=cache)
    assert cache.stats["misses"] == 3 and not np.allclose(howtek, ref)
    assert _same_bits(howtek, load_and_preprocess(lj, od))


# --------------------------------------------------------------------------- CLI


def test_cache_cli_info_and_clear(files, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from featmammo.cli.cache import command

    monkeypatch.setenv("FEATMAMMO_CACHE", str(tmp_path / "fc"))
    monkeypatch.delenv("FEATMAMMO_PREPARED_MAX_BYTES", raising=False)
    prepare_image(files["left"], PreprocessConfig(image_size=16))
    prepare_image(files["right"], PreprocessConfig(image_size=16))
    runner = CliRunner()
    res = runner.invoke(command, ["info", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["entries"] == 2 and info["root"] == str((tmp_path / "fc" / "prepared").absolute())
    assert info["configs"][0]["preprocess"]["image_size"] == 16
    res = runner.invoke(command, ["info"])
    assert res.exit_code == 0 and "2 entries" in res.output and "image_size=16" in res.output
    other = PreparedCache(tmp_path / "other", max_bytes=2**30)
    prepare_image(files["left"], PreprocessConfig(image_size=16), cache=other)
    res = runner.invoke(command, ["clear", "--root", str(tmp_path / "other"), "--json"])
    assert json.loads(res.stdout)["removed"] == 1 and other.info()["entries"] == 0
    assert PreparedCache.default().info()["entries"] == 2  # --root left the default alone
    res = runner.invoke(command, ["clear"])
    assert res.exit_code == 0 and "removed 2 entries" in res.output
    assert json.loads(runner.invoke(command, ["info", "--json"]).stdout)["entries"] == 0


def test_ljpeg_identity_follows_a_gzipped_ics(tmp_path):
    """DDSM mirrors gzip the .ics; a rewritten .ics.gz (another digitiser) must change the key."""
    from featmammo.prepared import file_identity

    img = tmp_path / "A_0001_1.LEFT_CC.LJPEG"
    img.write_bytes(b"\xff\xd8")
    ics = tmp_path / "A-0001-1.ics.gz"
    ics.write_bytes(b"first")
    before = file_identity(img)
    assert before["ics"] and before["ics"][0][0] == ics.name
    ics.write_bytes(b"second, longer")
    assert file_identity(img) != before
