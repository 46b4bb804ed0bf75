"""Original DDSM (USF) metadata: the ``.ics`` case file and the published optical-density
calibrations.

* :func:`read_ics` parses a case's ``A-0002-1.ics`` leniently (blank first lines, trailing spaces,
  float resolutions, unknown lines ignored) into a dict; a file without the fields a reader needs
  raises :class:`~featmammo.errors.ManifestError` naming the file and line.
* :func:`optical_density` maps stored grey levels to optical density with the calibration DDSM
  published for each digitiser / institution pair (float32, never applied at read time).
* :func:`ics_path_for` finds the ``.ics`` beside an ``.LJPEG`` (``A_0002_1.LEFT_CC.LJPEG`` ->
  ``A-0002-1.ics``), gzipped or not.

No torch, no pydicom here.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from pathlib import Path

import numpy as np

from featmammo.errors import ConfigError, ManifestError

VIEW_NAMES = ("LEFT_CC", "LEFT_MLO", "RIGHT_CC", "RIGHT_MLO")
_VIEW_RE = re.compile(r"^(LEFT|RIGHT)_[A-Z]+$")
_VIEW_END = ("OVERLAY", "NON_OVERLAY")
_CASE_RE = re.compile(r"^([A-Da-d])[-_](\d{4})[-_](\d+)")

# The four calibrations DDSM published (grey level GL -> optical density OD), keyed by
# scanner and institution. DBA is 16-bit, the others 12-bit.
CALIBRATIONS = {
    "DBA_MGH": "OD = (log10(GL) - 4.80662) / -1.07553",
    "HOWTEK_MGH": "OD = 3.789 - 0.00094568 * GL",
    "LUMISYS_WFU": "OD = (GL - 4096.99) / -1009.01",
    "HOWTEK_ISMD": "OD = 3.96604095240593 - 0.00099055807612 * GL",
}


def read_text(path, what: str) -> str:
    """The text of a DDSM side file (``.ics``, ``.OVERLAY``), plain or gzipped (some mirrors
    gzip every file), decoded as latin-1. Raises ManifestError naming the file and ``what`` it is
    when it is missing, unreadable, or its gzip/deflate stream is damaged (``zlib.error``, a cut
    stream, a bad header: never a raw zlib or gzip exception)."""
    p = Path(os.fspath(path))
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{p}: {what} does not exist") from None
    except OSError as exc:
        raise ManifestError(f"{p}: cannot read {what} ({exc.strerror or exc})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise ManifestError(f"{p}: corrupt gzip data in the {what} ({exc})") from None
    return raw.decode("latin-1")


def _number(path, lineno: int, key: str, text: str, kind=int):
    try:
        value = float(text)
    except ValueError:
        raise ManifestError(f"{path}: line {lineno}: {key} is {text!r}, not a number") from None
    if kind is int:
        if not value.is_integer():
            raise ManifestError(f"{path}: line {lineno}: {key} is {text!r}, not an integer")
        return int(value)
    return value


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def institution_of(name: str) -> str | None:
    """The institution letter (A-D) from a case or file name (``A-0002-1``, ``D_4164_1...``)."""
    m = _CASE_RE.match(os.path.basename(str(name)))
    return m.group(1).upper() if m else None


def case_of(name: str) -> str | None:
    """The case id in the .ics spelling (``A-0002-1``) from a case or file name."""
    m = _CASE_RE.match(os.path.basename(str(name)))
    if not m:
        return None
    return f"{m.group(1).upper()}-{m.group(2)}-{m.group(3)}"


def read_ics(path) -> dict:
    """Parse a DDSM ``.ics`` case file (plain or gzipped).

    Returns a dict with ``filename`` (``B-3024-1``), ``case`` (same, normalised), ``institution``
    (``B``), ``date_of_study`` / ``date_digitized`` (the raw text: day/month order varies between
    files, so no date is guessed), ``patient_age`` and ``density`` (int or None), ``digitizer``
    (``LUMISYS LASER``, ``DBA 21``, ``HOWTEK 43.5``... as written, spaces collapsed), ``film_type``,
    ``sequence`` (``SELECTED``/``SEQUENCE`` or None) and ``views``: ``{"LEFT_CC": {"lines",
    "pixels_per_line", "bits_per_pixel", "resolution", "overlay"}, ...}`` (``lines`` = rows,
    ``pixels_per_line`` = columns). Each view dict is also available at the top level
    (``info["LEFT_CC"]``). A file that ends inside its last view line (no line break and no
    ``OVERLAY``/``NON_OVERLAY``: a truncated download) leaves that view out of ``views`` and names
    it in ``cut_views`` (view -> reason), since its numbers may be cut. Raises ManifestError
    naming the file (and line) when the file is missing, has no view lines, or a view line lacks
    LINES / PIXELS_PER_LINE.
    """
    p = Path(os.fspath(path))
    text = read_text(p, ".ics file")
    info: dict = {
        "filename": None,
        "case": None,
        "institution": None,
        "ics_version": None,
        "date_of_study": None,
        "patient_age": None,
        "density": None,
        "date_digitized": None,
        "digitizer": None,
        "film_type": None,
        "sequence": None,
        "views": {},
    }
    keys = {
        "ICS_VERSION": "ics_version",
        "FILENAME": "filename",
        "DATE_OF_STUDY": "date_of_study",
        "PATIENT_AGE": "patient_age",
        "DENSITY": "density",
        "DATE_DIGITIZED": "date_digitized",
        "DIGITIZER": "digitizer",
        "FILM_TYPE": "film_type",
    }
    lines = text.splitlines()
    last = max((k for k, ln in enumerate(lines, 1) if ln.split()), default=0)
    open_end = bool(text) and not text.endswith(("\n", "\r"))
    for lineno, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        head = tokens[0].upper()
        rest = " ".join(tokens[1:]) or None
        if head in keys:
            info[keys[head]] = rest
        elif head in ("SELECTED", "SEQUENCE") and len(tokens) == 1:
            info["sequence"] = head
        elif _VIEW_RE.match(head) and len(tokens) > 1:
            if open_end and lineno == last and tokens[-1].upper() not in _VIEW_END:
                # the file stops inside its last view line (a truncated download): its numbers
                # may be cut ('3024' -> '30'), so this view's geometry is not trusted
                info.setdefault("cut_views", {})[head] = (
                    f"{p}: line {lineno}: the file ends inside the {head} line (no line break, "
                    "no OVERLAY/NON_OVERLAY): cut short?"
                )
                continue
            info["views"][head] = _view_line(p, lineno, head, tokens[1:])
    if not info["views"]:
        if info.get("cut_views"):
            raise ManifestError(next(iter(info["cut_views"].values())))
        raise ManifestError(
            f"{p}: no view lines (e.g. 'LEFT_CC LINES 4696 PIXELS_PER_LINE 3024 ...') in the .ics"
        )
    info["patient_age"] = _int_or_none(info["patient_age"])
    info["density"] = _int_or_none(info["density"])
    name = info["filename"] or p.name
    info["case"] = case_of(name) or case_of(p.name)
    info["institution"] = institution_of(name) or institution_of(p.name)
    for view, fields in info["views"].items():
        info.setdefault(view, fields)
    return info


def _view_line(p: Path, lineno: int, view: str, tokens: list[str]) -> dict:
    fields: dict = {
        "lines": None,
        "pixels_per_line": None,
        "bits_per_pixel": None,
        "resolution": None,
        "overlay": False,
    }
    i = 0
    while i < len(tokens):
        key = tokens[i].upper()
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if key in ("LINES", "PIXELS_PER_LINE", "BITS_PER_PIXEL") and nxt is not None:
            fields[key.lower()] = _number(p, lineno, key, nxt, int)
            i += 2
        elif key == "RESOLUTION" and nxt is not None:
            fields["resolution"] = _number(p, lineno, key, nxt, float)
            i += 2
        elif key == "OVERLAY":
            fields["overlay"] = True
            i += 1
        else:  # NON_OVERLAY and anything unknown
            i += 1
    for key in ("lines", "pixels_per_line"):
        if fields[key] is None or fields[key] <= 0:
            raise ManifestError(f"{p}: line {lineno}: {view} has no valid {key.upper()} value")
    return fields


def ics_path_for(ljpeg_path) -> Path | None:
    """The sibling ``.ics`` of an ``.LJPEG`` (``A_0002_1.LEFT_CC.LJPEG[.gz]`` -> ``A-0002-1.ics``,
    also ``.ics.gz`` and any case/underscore spelling); None when there is none."""
    p = Path(os.fspath(ljpeg_path))
    case = case_of(p.name)
    if case is None:
        return None
    folder = p.parent
    wanted = {case.lower(), case.replace("-", "_").lower()}
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    matches = []
    for name in names:
        low = name.lower()
        for suffix in (".ics", ".ics.gz"):
            if low.endswith(suffix) and low[: -len(suffix)] in wanted:
                matches.append(name)
    if not matches:
        return None
    matches.sort(key=lambda n: (n.lower().endswith(".gz"), n))  # plain before gzipped
    return folder / matches[0]


def view_of(ljpeg_path) -> str | None:
    """``LEFT_CC`` from ``A_0002_1.LEFT_CC.LJPEG`` (None when the name carries no view)."""
    for part in Path(os.fspath(ljpeg_path)).name.split("."):
        if _VIEW_RE.match(part.upper()):
            return part.upper()
    return None


def calibration_for(digitizer: str, institution: str | None = None) -> str:
    """The calibration key (a key of :data:`CALIBRATIONS`) for a digitiser name and institution.

    ``digitizer`` may also be a calibration key itself (``"HOWTEK_ISMD"``). DBA scanners were used
    at MGH (A) and LUMISYS at Wake Forest (B, C) only, so their institution may be omitted; HOWTEK
    was used at A and D with different calibrations, so the institution letter is required.
    """
    name = " ".join(str(digitizer or "").upper().replace("_", " ").split())
    key = name.replace(" ", "_")
    if key in CALIBRATIONS:
        return key
    inst = (institution or "").strip().upper() or None
    if name.startswith("DBA"):
        if inst not in (None, "A"):
            raise ConfigError(f"no DDSM calibration for a DBA digitiser at institution {inst}")
        return "DBA_MGH"
    if name.startswith("LUMISYS") or name.startswith("LUMYSIS"):
        if inst not in (None, "B", "C"):
            raise ConfigError(f"no DDSM calibration for a LUMISYS digitiser at institution {inst}")
        return "LUMISYS_WFU"
    if name.startswith("HOWTEK"):
        if inst == "A":
            return "HOWTEK_MGH"
        if inst == "D":
            return "HOWTEK_ISMD"
        raise ConfigError(
            f"digitiser {digitizer!r}: HOWTEK scanners have two DDSM calibrations (MGH = A, "
            f"ISMD = D); pass institution='A' or 'D' (got {institution!r})"
        )
    raise ConfigError(
        f"unknown DDSM digitiser {digitizer!r}; known: DBA, HOWTEK (A or D), LUMISYS "
        f"or a calibration key ({', '.join(CALIBRATIONS)})"
    )


def optical_density(pixels, digitizer: str, institution: str | None = None) -> np.ndarray:
    """Optical density (float32, same shape) of stored DDSM grey levels, per digitiser.

    ``digitizer`` is the .ics DIGITIZER text (``DBA 21``, ``HOWTEK 1``, ``LUMISYS LASER``) or a
    calibration key; ``institution`` is the case letter (required for HOWTEK, see
    :func:`calibration_for`). The calibrations are those DDSM published (:data:`CALIBRATIONS`);
    the result is not clipped (common practice clips to [0.05, 3.0] afterwards). For DBA a grey
    level of 0 is treated as 1 (log10 of 0 is undefined; the resulting OD is the scale's maximum).
    """
    key = calibration_for(digitizer, institution)
    gl = np.asarray(pixels)
    if gl.dtype.kind not in "uif":
        raise ConfigError(f"optical_density needs numeric pixels, got dtype {gl.dtype}")
    x = gl.astype(np.float32)
    if key == "DBA_MGH":
        np.maximum(x, np.float32(1.0), out=x)
        np.log10(x, out=x)
        x -= np.float32(4.80662)
        x *= np.float32(-1.0 / 1.07553)
    elif key == "HOWTEK_MGH":
        x *= np.float32(-0.00094568)
        x += np.float32(3.789)
    elif key == "LUMISYS_WFU":
        x -= np.float32(4096.99)
        x *= np.float32(-1.0 / 1009.01)
    else:  # HOWTEK_ISMD
        x *= np.float32(-0.00099055807612)
        x += np.float32(3.96604095240593)
    return x


__all__ = [
    "CALIBRATIONS",
    "VIEW_NAMES",
    "calibration_for",
    "case_of",
    "ics_path_for",
    "institution_of",
    "optical_density",
    "read_ics",
    "read_text",
    "view_of",
]
