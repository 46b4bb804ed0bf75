"""The prepared-image cache under reuse: a file replaced by one of the same size and mtime is a
miss (never stale pixels), the decoder is part of the key, and one size bound holds across
processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

import featmammo.io
from featmammo.prepared import SUFFIX, PreparedCache, file_identity, prepare_image
from featmammo.preprocess import PreprocessConfig, load_and_preprocess

N = 10
CFG = PreprocessConfig(image_size=24, normalize="none")
MTIME_NS = 1_600_000_000 * 10**9  # whole seconds: tar keeps no more


def _pgm_bytes(seed: int) -> bytes:
    """A 40x30 16-bit PGM: every image has the same byte size (header and raster)."""
    arr = np.random.default_rng(seed).integers(0, 60000, (40, 30)).astype(">u2")
    return b"P5\n30 40\n65535\n" + arr.tobytes()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.utime(path, ns=(MTIME_NS, MTIME_NS))
    return path


@pytest.fixture
def old_and_new(tmp_path):
    """N images in data/ (cached once) and N others of the same sizes and mtime in new/."""
    data, new = tmp_path / "data", tmp_path / "new"
    data.mkdir()
    new.mkdir()
    for i in range(N):
        _write(data / f"{i}.pgm", _pgm_bytes(i))
        _write(new / f"{i}.pgm", _pgm_bytes(100 + i))
    cache = PreparedCache(tmp_path / "cache", max_bytes=2**30)
    first = [prepare_image(data / f"{i}.pgm", CFG, cache=cache) for i in range(N)]
    return data, new, cache, first


def _replace(how: str, data: Path, new: Path, tmp_path: Path) -> None:
    if how == "write-then-utime":  # in place, same inode: only ctime (and the bytes) differ
        for i in range(N):
            _write(data / f"{i}.pgm", (new / f"{i}.pgm").read_bytes())
    elif how == "cp -p":
        if shutil.which("cp") is None:
            pytest.skip("no cp")
        files = [str(new / f"{i}.pgm") for i in range(N)]
        subprocess.run(["cp", "-p", *files, str(data)], check=True)
    elif how == "rsync -t":
        if shutil.which("rsync") is None:
            pytest.skip("no rsync on this machine (rename-over-with-mtime does what it does)")
        subprocess.run(
            ["rsync", "-t", *sorted(map(str, new.glob("*.pgm"))), f"{data}/"], check=True
        )
    elif how == "rename-over-with-mtime":  # rsync -t's way: a temp file, mtime set, renamed over
        for i in range(N):
            tmp = _write(data / f".{i}.pgm.tmp", (new / f"{i}.pgm").read_bytes())
            os.replace(tmp, data / f"{i}.pgm")
    elif how == "tar x":
        archive = tmp_path / "new.tar"
        with tarfile.open(archive, "w") as tar:
            for i in range(N):
                tar.add(new / f"{i}.pgm", arcname=f"{i}.pgm")
        with tarfile.open(archive) as tar:
            tar.extractall(data, filter="data")  # keeps the mtime, like tar x
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["write-then-utime", "cp -p", "rsync -t", "rename-over-with-mtime", "tar x"]
)
def test_same_size_same_mtime_replacement_is_a_miss(old_and_new, tmp_path, how):
    data, new, cache, first = old_and_new
    before = [file_identity(data / f"{i}.pgm") for i in range(N)]
    _replace(how, data, new, tmp_path)
    for i in range(N):  # the replacement really is invisible to size + mtime
        st = (data / f"{i}.pgm").stat()
        assert (st.st_size, st.st_mtime_ns) == (before[i]["size"], before[i]["mtime_ns"])
    cache.stats.update(hits=0, misses=0)
    for i in range(N):
        out = prepare_image(data / f"{i}.pgm", CFG, cache=cache)
        fresh = load_and_preprocess(data / f"{i}.pgm", CFG)
        assert out.tobytes() == fresh.tobytes(), f"{how}: image {i} served stale pixels"
        assert not np.array_equal(out, first[i])
    assert cache.stats["hits"] == 0 and cache.stats["misses"] == N
    # and the new entries are hits from now on
    for i in range(N):
        prepare_image(data / f"{i}.pgm", CFG, cache=cache)
    assert cache.stats["hits"] == N


def test_identity_fields_follow_the_file(tmp_path):
    big = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    a = _write(tmp_path / "a.bin", big)
    ident = file_identity(a)
    assert file_identity(a) == ident  # stable while nothing happens
    st = a.stat()
    assert (ident["ctime_ns"], ident["inode"]) == (st.st_ctime_ns, st.st_ino)
    # same bytes at both ends, other bytes in the middle: ctime still tells them apart
    data = bytearray(big)
    data[len(data) // 2] ^= 0xFF
    time.sleep(0.01)
    _write(a, bytes(data))
    other = file_identity(a)
    assert other["sample"] == ident["sample"] and other["ctime_ns"] != ident["ctime_ns"]
    # another first 4 KiB: the sample differs even where ctime would not
    b = _write(tmp_path / "b.bin", b"\x00" + big[1:])
    assert file_identity(b)["sample"] != ident["sample"]


def test_decoder_is_part_of_the_key(tmp_path, monkeypatch):
    from test_io import grey12, make_ds, save

    dcm = save(make_ds(grey12(), bits_stored=12), tmp_path / "a.dcm")
    png = tmp_path / "a.png"
    from PIL import Image as PILImage

    PILImage.fromarray(grey12() * 16).save(png)
    cache = PreparedCache(tmp_path / "c", max_bytes=2**30)
    keys = {p: cache.key(p, CFG)[0] for p in (dcm, png)}
    assert cache.key(dcm, CFG)[1]["decoder"]["reader"] == "dicom"
    # another version of a decoding library: another key for the DICOM, not for the PNG
    real = featmammo.io._versions

    def other_pylibjpeg(names):
        return tuple((n, "0.0.1" if n == "pylibjpeg-rle" else v) for n, v in real(names))

    monkeypatch.setattr(featmammo.io, "_versions", other_pylibjpeg)
    assert cache.key(dcm, CFG)[0] != keys[dcm] and cache.key(png, CFG)[0] == keys[png]
    monkeypatch.setattr(featmammo.io, "_versions", real)
    # the GPU decoder: another key (a run that decodes on the CPU is not served its pixels)
    assert cache.key(dcm, CFG, decoder="auto")[0] == keys[dcm]  # no GPU here: auto = cpu
    monkeypatch.setattr(featmammo.io, "resolve_decoder", lambda decoder, tsyntax=None: decoder)
    assert cache.key(dcm, CFG, decoder="nvimagecodec")[0] != keys[dcm]
    # through get_or_prepare: a miss, then a hit, per decoder identity
    monkeypatch.setattr(featmammo.io, "_versions", other_pylibjpeg)
    prepare_image(dcm, CFG, cache=cache)
    monkeypatch.setattr(featmammo.io, "_versions", real)
    prepare_image(dcm, CFG, cache=cache)
    prepare_image(dcm, CFG, cache=cache)
    assert cache.stats["misses"] == 2 and cache.stats["hits"] == 1


_FILLER = r"""
import sys, time
from pathlib import Path
from featmammo.prepared import PreparedCache, prepare_image
from featmammo.preprocess import PreprocessConfig
root, max_bytes, barrier, me, n, *paths = sys.argv[1:]
cache = PreparedCache(root, max_bytes=int(max_bytes))
cfg = PreprocessConfig(image_size=24, normalize="none")
prepare_image(paths[0], cfg, cache=cache)  # every process has written (and counted) once ...
Path(barrier, me).touch()
while len(list(Path(barrier).iterdir())) < int(n):  # ... before any writes the rest
    time.sleep(0.01)
for p in paths[1:]:
    prepare_image(p, cfg, cache=cache)
"""


def test_one_size_bound_across_processes(tmp_path):
    """4 processes fill one cache at once, 6 entries each for a bound of 10: the folder stays
    within the bound (with a count per process, all 24 entries stayed: 2.4x)."""
    procs_n, per_proc, bound_entries = 4, 6, 10
    imgs = [str(_write(tmp_path / f"i{k}.pgm", _pgm_bytes(k))) for k in range(procs_n * per_proc)]
    probe = PreparedCache(tmp_path / "probe", max_bytes=2**30)
    prepare_image(imgs[0], CFG, cache=probe)
    entry = next(probe.root.rglob(f"*{SUFFIX}")).stat().st_size
    root, barrier = tmp_path / "shared", tmp_path / "barrier"
    barrier.mkdir()
    max_bytes = bound_entries * entry + entry // 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = []
    for k in range(procs_n):
        args = [str(root), str(max_bytes), str(barrier), str(k), str(procs_n)]
        args += imgs[k * per_proc : (k + 1) * per_proc]
        procs.append(subprocess.Popen([sys.executable, "-c", _FILLER, *args], env=env))
    assert all(p.wait(timeout=300) == 0 for p in procs)
    cache = PreparedCache(root, max_bytes=max_bytes)
    info = cache.info()
    assert info["bytes"] <= max_bytes, (
        f"{info['entries']} entries, {info['bytes']} bytes for a bound of {max_bytes}"
    )
    assert info["entries"] >= int(bound_entries * 0.9) - 1  # evicted down to ~90 %, not emptied
    # the shared count is never below what the folder holds
    assert int((cache.root / "v1" / "usage").read_text()) >= info["bytes"]


def test_clear_resets_the_shared_count(tmp_path):
    imgs = [_write(tmp_path / f"i{k}.pgm", _pgm_bytes(k)) for k in range(3)]
    cache = PreparedCache(tmp_path / "c", max_bytes=2**30)
    for p in imgs:
        prepare_image(p, CFG, cache=cache)
    usage = cache.root / "v1" / "usage"
    assert int(usage.read_text()) == cache.info()["bytes"]
    assert cache.clear() == 3
    prepare_image(imgs[0], CFG, cache=cache)  # counted afresh by a scan
    assert int(usage.read_text()) == cache.info()["bytes"] > 0
