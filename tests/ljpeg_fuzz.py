"""Damaged-LJPEG fuzzing for ``tests/test_ljpeg_fuzz.py`` and ``benchmarks/ljpeg_fuzz.py``.

Every case is a damaged copy of a small base vector (the real PVRG codec's files in
``tests/data/ljpeg_pvrg/`` and the project encoder's, predictors 1-7 at 8, 12 and 16 bits),
decoded by :func:`featmammo.io.ljpeg.decode_ljpeg` in a **worker subprocess**, so that a crash
is seen as the worker's death by a signal instead of killing the caller. The worker prints one
JSON line per case; when it dies, the parent records the case it was on and starts a new worker
after it.

Damage kinds: ``truncate`` (cut anywhere), ``truncate_eoi`` (cut inside the coded data and
re-terminated with EOI), ``insert``/``delete`` (a run of 1-32 bytes), ``flip`` (1-4 bits anywhere),
``flip_coded`` (one bit of the coded data), ``replace`` (1-8 coded bytes), ``sof`` (the SOF size
inflated, deflated, swapped or random: the same as a matching damaged ``.ics``), ``header``
(1-3 bits of the markers before the coded data).

Outcomes:

* ``error``: ImageReadError (its reason's first words are kept for the tallies).
* ``same``: decoded to the original pixels: the damage was invisible (only bytes no decoder
  uses: padding bits, unused header fields, segment contents nobody reads).
* ``valid``: decoded to other pixels, and the damaged file is, bit for bit, the encoding of
  exactly those pixels (checked here with the test encoder and an independent header walk, not
  with the reader's code): another valid image. Lossless JPEG has no checksum, so no reader can
  tell it from an intact file (typically a flipped bit inside a residual's extra bits).
* ``WRONG``: decoded to pixels the file does not encode exactly: a reader bug.
* ``other``: an exception other than ImageReadError: a reader bug.
* ``signal``/``exit``: the worker died (a crash) or exited abnormally.

    python tests/ljpeg_fuzz.py --worker SEED START STOP   # the worker (JSON lines)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "ljpeg_pvrg"
KINDS = (
    "truncate",
    "truncate_eoi",
    "insert",
    "delete",
    "flip",
    "flip_coded",
    "replace",
    "sof",
    "header",
)
BAD = ("WRONG", "other", "signal", "exit")  # outcomes that must never happen


@dataclass(frozen=True)
class Base:
    name: str
    data: bytes
    pixels: np.ndarray
    predictor: int
    precision: int


def header(data: bytes) -> dict | None:
    """An independent walk of the markers before the coded data: SOF3 (precision, height,
    width), the DHT tables in file order, the SOS predictor and where the coded data starts;
    None when the walk fails."""
    out: dict = {"tables": []}
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        seg = data[i + 4 : i + 2 + length]
        if marker == 0xC3 and len(seg) >= 6:
            out.update(precision=seg[0], height=int.from_bytes(seg[1:3], "big"))
            out["width"] = int.from_bytes(seg[3:5], "big")
        elif marker == 0xC4:
            j = 0
            while j + 17 <= len(seg):
                counts = list(seg[j + 1 : j + 17])
                out["tables"].append((counts, list(seg[j + 17 : j + 17 + sum(counts)])))
                j += 17 + sum(counts)
        elif marker == 0xDA and len(seg) >= 6:
            out.update(predictor=seg[3], start=i + 2 + length)
            return out if "height" in out else None
        i += 2 + length
    return None


def coded_segment_bits(data: bytes, start: int) -> np.ndarray:
    """The bits (0/1) of the entropy-coded data from ``start`` to the first marker, unstuffed."""
    end = start
    while end + 1 < len(data) and not (data[end] == 0xFF and data[end + 1] != 0x00):
        end += 1
    seg = data[start:end].replace(b"\xff\x00", b"\xff")
    return np.unpackbits(np.frombuffer(seg, np.uint8))


def is_exact_encoding(data: bytes, pixels: np.ndarray) -> bool:
    """Whether ``data``'s coded segment is, bit for bit (padding aside), the encoding of
    ``pixels`` with the file's own header and table (the test encoder, PVRG's first-row rule)."""
    from ljpeg_vectors import coded_bits

    h = header(data)
    if h is None or len(h["tables"]) != 1 or pixels.shape != (h["height"], h["width"]):
        return False
    try:
        want = coded_bits(pixels, h["predictor"], h["precision"], h["tables"][0])
    except (KeyError, ValueError):
        return False
    got = coded_segment_bits(data, h["start"])
    return 0 <= got.size - want.size < 8 and np.array_equal(got[: want.size], want)


def bases() -> list[Base]:
    """The real PVRG vectors (tests/data/ljpeg_pvrg) and the project encoder's, 1-7 x 8/12/16."""
    from ljpeg_vectors import encode, phantom

    out = []
    for e in json.loads((DATA / "vectors.json").read_text()):
        if "/" in e["file"]:  # the ddsm/ case is read through its .ics by the vector tests
            continue
        src = np.load(DATA / e["source"])
        data = (DATA / e["file"]).read_bytes()
        out.append(Base(f"pvrg:{e['file']}", data, src, e["predictor"], e["precision"]))
    for bits in (8, 12, 16):
        for k in range(1, 8):
            img = phantom(24, 20, bits, seed=100 + k)
            out.append(Base(f"own:p{k}_{bits}bit", encode(img, k, bits), img, k, bits))
    return out


def damage(base: Base, kind: str, rng: np.random.Generator) -> bytes:
    d = bytearray(base.data)
    n = len(d)
    start = header(base.data)["start"]
    end = n - 2  # before the EOI
    if kind == "truncate":
        return bytes(d[: int(rng.integers(1, n - 1))])
    if kind == "truncate_eoi":
        cut = int(rng.integers(start, end))
        return bytes(d[:cut]).rstrip(b"\xff") + b"\xff\xd9"
    if kind == "insert":
        i = int(rng.integers(2, n))
        d[i:i] = rng.bytes(int(rng.integers(1, 33)))
        return bytes(d)
    if kind == "delete":
        i = int(rng.integers(2, n - 1))
        del d[i : i + int(rng.integers(1, 33))]
        return bytes(d)
    if kind == "flip":
        for _ in range(int(rng.integers(1, 5))):
            d[int(rng.integers(0, n))] ^= 1 << int(rng.integers(0, 8))
        return bytes(d)
    if kind == "flip_coded":
        d[int(rng.integers(start, end))] ^= 1 << int(rng.integers(0, 8))
        return bytes(d)
    if kind == "replace":
        for _ in range(int(rng.integers(1, 9))):
            d[int(rng.integers(start, end))] = int(rng.integers(0, 256))
        return bytes(d)
    if kind == "sof":
        sof = base.data.index(b"\xff\xc3")
        h, w = base.pixels.shape
        choice = int(rng.integers(0, 4))
        if choice == 0:  # inflated, as in the issue: 2x..10x one side
            f = int(rng.choice([2, 3, 5, 10]))
            h, w = (h * f, w) if rng.integers(0, 2) else (h, w * f)
        elif choice == 1:  # deflated
            h, w = max(1, h // int(rng.integers(2, 4))), w
        elif choice == 2:  # swapped, or off by one
            h, w = (w, h) if rng.integers(0, 2) else (h + int(rng.choice([-1, 1])), w)
        else:
            h, w = int(rng.integers(1, 65536)), int(rng.integers(1, 65536))
        d[sof + 5 : sof + 7] = min(max(h, 1), 65535).to_bytes(2, "big")
        d[sof + 7 : sof + 9] = min(max(w, 1), 65535).to_bytes(2, "big")
        return bytes(d)
    if kind == "header":
        for _ in range(int(rng.integers(1, 4))):
            d[int(rng.integers(2, start))] ^= 1 << int(rng.integers(0, 8))
        return bytes(d)
    raise ValueError(kind)


def case(all_bases: list[Base], seed: int, i: int) -> tuple[Base, str, bytes]:
    """Case ``i`` of run ``seed``: kinds in turn, bases in turn, damage drawn from (seed, i)."""
    kind = KINDS[i % len(KINDS)]
    base = all_bases[(i // len(KINDS)) % len(all_bases)]
    return base, kind, damage(base, kind, np.random.default_rng([seed, i]))


def outcome(base: Base, data: bytes) -> tuple[str, str]:
    """(outcome, detail) of decoding ``data`` in this process."""
    from featmammo.errors import ImageReadError
    from featmammo.io.ljpeg import decode_ljpeg

    try:
        pixels, _ = decode_ljpeg(data, "fuzz")
    except ImageReadError as exc:
        return "error", " ".join(exc.reason.split()[:4])
    except Exception as exc:  # noqa: BLE001 - any other exception is a finding
        return "other", f"{type(exc).__name__}: {exc}"[:200]
    if pixels.shape == base.pixels.shape and np.array_equal(pixels, base.pixels):
        return "same", ""
    if is_exact_encoding(data, pixels):
        return "valid", ""
    return "WRONG", f"{pixels.shape}"


def worker(seed: int, start: int, stop: int) -> None:
    all_bases = bases()
    crash_at = int(os.environ.get("LJPEG_FUZZ_CRASH_AT", "-1"))  # the harness's own test
    for i in range(start, stop):
        if i == crash_at:
            import signal

            os.kill(os.getpid(), signal.SIGSEGV)
        base, kind, data = case(all_bases, seed, i)
        result, detail = outcome(base, data)
        line = {"i": i, "base": base.name, "kind": kind, "outcome": result, "detail": detail}
        line.update(precision=base.precision, predictor=base.predictor)
        print(json.dumps(line), flush=True)


def run(seed: int, n: int, *, timeout: float = 3600, env: dict | None = None) -> list[dict]:
    """Cases 0..n-1 of run ``seed`` in worker subprocesses; a worker's death by a signal is
    recorded as the outcome of the case it was on, and a new worker goes on after it."""
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, **(env or {}))
    results: list[dict] = []
    i = 0
    while i < n:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(seed), str(i), str(n)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        results += lines
        i = lines[-1]["i"] + 1 if lines else i
        if proc.returncode != 0:
            all_bases = bases()
            base, kind, _ = case(all_bases, seed, i)
            died = "signal" if proc.returncode < 0 else "exit"
            results.append(
                {
                    "i": i,
                    "base": base.name,
                    "kind": kind,
                    "outcome": died,
                    "detail": f"return code {proc.returncode}: {proc.stderr[-300:]}",
                    "precision": base.precision,
                    "predictor": base.predictor,
                }
            )
            i += 1
    return results


def tally(results: list[dict]) -> dict:
    """Counts by outcome, by kind x outcome, by precision x outcome, and error reasons."""
    by = Counter(r["outcome"] for r in results)
    kinds = Counter((r["kind"], r["outcome"]) for r in results)
    depth = Counter((r["precision"], r["outcome"]) for r in results)
    reasons = Counter(r["detail"] for r in results if r["outcome"] == "error")
    return {
        "cases": len(results),
        "outcomes": dict(by),
        "by_kind": {f"{k}/{o}": c for (k, o), c in sorted(kinds.items())},
        "by_precision": {f"{p}/{o}": c for (p, o), c in sorted(depth.items())},
        "predictors": sorted({r["predictor"] for r in results}),
        "error_reasons": dict(reasons.most_common(12)),
        "bad": [r for r in results if r["outcome"] in BAD][:20],
    }


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(HERE))
        worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit(__doc__)
