"""Benchmark: damaged DDSM LJPEG files through the reader, counted by outcome.

Runs the fuzz harness of ``tests/ljpeg_fuzz.py`` (each case decoded in a worker subprocess whose
return code is checked) over the real PVRG codec's vectors (``tests/data/ljpeg_pvrg``) and the
project encoder's, predictors 1-7 at 8, 12 and 16 bits, with truncations, inserted/deleted byte
runs, flipped bits, replaced bytes, damaged SOF sizes and header damage. Prints and saves the
counts by outcome, by damage kind and by bit depth:

* ``error``: ImageReadError naming the file and the reason (the expected outcome);
* ``same``: decoded to the original pixels (invisible damage: bytes no decoder uses);
* ``valid``: decoded to other pixels, and the damaged file is bit for bit the encoding of those
  pixels (checked with the test encoder, not the reader): a different valid image no reader can
  tell from an intact file, since lossless JPEG has no checksum;
* ``WRONG`` / ``other`` / ``signal`` / ``exit``: reader bugs; the script exits 1 if any occurs.

    python benchmarks/ljpeg_fuzz.py [--cases 10350] [--seed 17] [--out benchmarks/results]

Writes ``ljpeg_fuzz.json`` and ``ljpeg_fuzz.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ljpeg_fuzz import BAD, KINDS, bases, run, tally  # noqa: E402


def markdown(res: dict) -> str:
    t = res["tally"]
    outcomes = ["error", "same", "valid", *BAD]
    lines = [
        "# Damaged DDSM LJPEGs: outcomes of featmammo.io.ljpeg.decode_ljpeg",
        "",
        f"{t['cases']:,} damaged copies of {res['bases']} small vectors (real PVRG codec's and the "
        "project encoder's; predictors 1-7; 8, 12 and 16 bits), each decoded in a worker "
        f"subprocess whose return code is checked; seed {res['seed']}, {res['seconds']:.0f} s.",
        "",
        "| damage | " + " | ".join(outcomes) + " |",
        "|---|" + "---|" * len(outcomes),
    ]
    for kind in [*KINDS, "all"]:
        if kind == "all":
            row = [t["outcomes"].get(o, 0) for o in outcomes]
        else:
            row = [t["by_kind"].get(f"{kind}/{o}", 0) for o in outcomes]
        lines.append(f"| {kind} | " + " | ".join(f"{c:,}" for c in row) + " |")
    lines += ["", "| bits | " + " | ".join(outcomes) + " |", "|---|" + "---|" * len(outcomes)]
    for bits in (8, 12, 16):
        row = [t["by_precision"].get(f"{bits}/{o}", 0) for o in outcomes]
        lines.append(f"| {bits} | " + " | ".join(f"{c:,}" for c in row) + " |")
    lines += ["", "Most frequent error reasons (first words):", ""]
    lines += [f"- {reason}: {count:,}" for reason, count in t["error_reasons"].items()]
    lines += [
        "",
        "`error` is an ImageReadError; `same` decoded to the original pixels (damage only in "
        "bytes no decoder uses); `valid` decoded to other pixels of which the damaged file is the "
        "exact encoding (lossless JPEG has no checksum: undetectable by any reader); `WRONG`, "
        "`other`, `signal`, `exit` would be reader bugs.",
        "",
        f"`{res['command']}`, {res['when']}; load average before/after "
        f"{', '.join(f'{x:.2f}' for x in res['loadavg_before_after'][0])} / "
        f"{', '.join(f'{x:.2f}' for x in res['loadavg_before_after'][1])} "
        f"({os.cpu_count()} CPUs).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10350)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results", help="folder"
    )
    args = parser.parse_args(argv)
    load = os.getloadavg()
    t0 = time.perf_counter()
    results = run(args.seed, args.cases)
    res = {
        "benchmark": "ljpeg_fuzz",
        "command": f"python benchmarks/ljpeg_fuzz.py --cases {args.cases} --seed {args.seed}",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - t0,
        "seed": args.seed,
        "bases": len(bases()),
        "loadavg_before_after": [list(load), list(os.getloadavg())],
        "tally": tally(results),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ljpeg_fuzz.json").write_text(json.dumps(res, indent=2) + "\n")
    text = markdown(res)
    (args.out / "ljpeg_fuzz.md").write_text(text)
    print(text)
    return 1 if res["tally"]["bad"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
