"""Original DDSM ``.OVERLAY`` files: abnormalities (lesion type, assessment, subtlety, pathology)
and their chain-coded outlines, and the outlines filled into ROI mask images.

Format (DATASETS.md): ``TOTAL_ABNORMALITIES n``; per abnormality ``ABNORMALITY i``,
``LESION_TYPE MASS SHAPE ... MARGINS ...`` or ``LESION_TYPE CALCIFICATION TYPE ... DISTRIBUTION
...`` (one or more lines), ``ASSESSMENT``, ``SUBTLETY``, ``PATHOLOGY``, ``TOTAL_OUTLINES k``, then
``BOUNDARY`` (and ``CORE``) each followed by a chain code ``x y d d d ... #`` (x = column, y = row;
directions 0 up, 1 up-right, 2 right, 3 down-right, 4 down, 5 down-left, 6 left, 7 up-left; the
code may wrap over several lines and ends at ``#``). Plain or gzipped. Parsing is lenient (blank
lines, unknown keys ignored); an unknown PATHOLOGY or a malformed chain code raises
:class:`~featmammo.errors.ManifestError` naming the file and line, and so does an overlay cut short:
no abnormality at all, fewer abnormalities than ``TOTAL_ABNORMALITIES`` or fewer outlines than an
abnormality's ``TOTAL_OUTLINES`` says, or a chain code without its closing ``#`` (a lost malignant
abnormality would otherwise leave a benign label, a cut chain a partial outline).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from featmammo.datasets.masks import write_mask  # noqa: F401 (re-exported)
from featmammo.errors import ManifestError

log = logging.getLogger(__name__)

PATHOLOGIES = ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK", "UNPROVEN")
# chain-code direction -> (dx, dy), x = column (right +), y = row (down +)
DIRECTIONS = {
    0: (0, -1),
    1: (1, -1),
    2: (1, 0),
    3: (1, 1),
    4: (0, 1),
    5: (-1, 1),
    6: (-1, 0),
    7: (-1, -1),
}


def read_overlay(path) -> list[dict]:
    """Parse an ``.OVERLAY`` -> one dict per abnormality: ``index``, ``line`` (where it starts),
    ``lesion_types`` (list of the LESION_TYPE texts), ``abnormality_type`` (``mass``,
    ``calcification`` or both, ``;``-joined), ``assessment``, ``subtlety``, ``pathology``,
    ``outlines`` (list of ``{"kind": "BOUNDARY"|"CORE", "line", "points": (N, 2) int array of
    (x, y)}``)."""
    from featmammo.io.ddsm import read_text

    p = Path(os.fspath(path))
    text = read_text(p, "overlay")
    lines = text.splitlines()
    out: list[dict] = []
    cur: dict | None = None
    declared: int | None = None
    i = 0
    while i < len(lines):
        tokens = lines[i].split()
        lineno = i + 1
        i += 1
        if not tokens:
            continue
        key = tokens[0].upper()
        if key == "ABNORMALITY":
            cur = {
                "index": tokens[1] if len(tokens) > 1 else str(len(out) + 1),
                "line": lineno,
                "lesion_types": [],
                "assessment": "",
                "subtlety": "",
                "pathology": "",
                "outlines": [],
            }
            out.append(cur)
            continue
        if key == "TOTAL_ABNORMALITIES" and cur is None and len(tokens) > 1:
            declared = _count(tokens[1], p, lineno)
            continue
        if cur is None:
            continue  # anything else before the first abnormality
        if key == "TOTAL_OUTLINES" and len(tokens) > 1:
            cur["declared_outlines"] = _count(tokens[1], p, lineno)
            continue
        if key == "LESION_TYPE":
            cur["lesion_types"].append(" ".join(tokens[1:]).upper())
        elif key in ("ASSESSMENT", "SUBTLETY"):
            cur[key.lower()] = tokens[1] if len(tokens) > 1 else ""
        elif key == "PATHOLOGY":
            value = tokens[1].upper() if len(tokens) > 1 else ""
            if value not in PATHOLOGIES:
                raise ManifestError(
                    f"{p}: line {lineno}: unknown PATHOLOGY {value or '(empty)'!r} "
                    f"(expected one of {', '.join(PATHOLOGIES)})"
                )
            cur["pathology"] = value
        elif key in ("BOUNDARY", "CORE"):
            chain: list[str] = tokens[1:]
            start = lineno
            while "#" not in chain and i < len(lines):
                chain += lines[i].split()
                i += 1
            if "#" not in chain:
                raise ManifestError(
                    f"{p}: line {start}: the {key} chain code has no closing '#' before the end "
                    f"of the file ({_CUT})"
                )
            cur["outlines"].append(
                {"kind": key, "line": start, "points": _chain_points(chain, p, start)}
            )
    if not out:
        raise ManifestError(f"{p}: no ABNORMALITY in the overlay (empty, or {_CUT})")
    if declared is not None and len(out) < declared:
        raise ManifestError(
            f"{p}: TOTAL_ABNORMALITIES declares {declared} abnormalities, holds {len(out)} ({_CUT})"
        )
    for a in out:
        if not a["pathology"]:
            raise ManifestError(f"{p}: line {a['line']}: abnormality {a['index']} has no PATHOLOGY")
        n = a.pop("declared_outlines", None)
        if n is not None and len(a["outlines"]) < n:
            raise ManifestError(
                f"{p}: line {a['line']}: abnormality {a['index']} declares {n} outlines, holds "
                f"{len(a['outlines'])} ({_CUT})"
            )
        kinds = []
        for lt in a["lesion_types"]:
            word = lt.split()[0] if lt.split() else ""
            kind = {"MASS": "mass", "CALCIFICATION": "calcification"}.get(word, word.lower())
            if kind and kind not in kinds:
                kinds.append(kind)
        a["abnormality_type"] = ";".join(kinds)
    return out


_CUT = "the file was cut short?"


def _count(token: str, path: Path, lineno: int) -> int:
    try:
        return int(token)
    except ValueError:
        raise ManifestError(f"{path}: line {lineno}: {token!r} is not a count") from None


def _chain_points(tokens: list[str], path: Path, lineno: int) -> np.ndarray:
    if "#" in tokens:
        tokens = tokens[: tokens.index("#")]
    try:
        x, y, *moves = (int(t) for t in tokens)
    except ValueError:
        raise ManifestError(
            f"{path}: line {lineno}: malformed chain code (expected 'x y d d ... #')"
        ) from None
    bad = [d for d in moves if d not in DIRECTIONS]
    if bad:
        raise ManifestError(f"{path}: line {lineno}: chain-code direction {bad[0]} is not 0-7")
    steps = np.array([DIRECTIONS[d] for d in moves], dtype=np.int64).reshape(-1, 2)
    pts = np.vstack([[x, y], np.array([x, y]) + np.cumsum(steps, axis=0)])
    return pts.astype(np.int64)


def outline_mask(outlines: list[dict], shape: tuple[int, int], kinds=("BOUNDARY",)) -> np.ndarray:
    """The filled outlines (``kinds``) as a uint8 mask of ``shape`` = (LINES, PIXELS_PER_LINE):
    255 inside or on an outline, 0 elsewhere (outlines are clipped to the image)."""
    from featmammo.datasets.masks import polygon_mask

    polygons = [o["points"] for o in outlines if o["kind"] in kinds]
    return polygon_mask(polygons, shape, point_radius=0)
