"""The manifest: one table, one row per image, saved as CSV; reading, validating, writing, hashing.

This module owns the manifest contract (``REQUIRED_COLUMNS``; ``LABELS`` and the label spellings
live in :mod:`featmammo.labels`, below it), the label normalisation used on input (case variants,
``BENIGN_WITHOUT_CALLBACK`` -> ``benign``), the derivation of missing columns (``image_id`` from
the path, ``patient_id`` = ``image_id`` with a warning) and the checks that make a bad manifest
fail before any work, with a ``ManifestError`` naming the CSV line and the reason.

Any CSV with at least ``path`` and ``label`` columns is a manifest. Cells are read as strings (no NA
conversion: ``N/A`` stays ``N/A``; ids such as ``0012`` keep their zeros) and stripped; a UTF-8 BOM,
CRLF line ends, blank lines and trailing unnamed empty columns are accepted; a semicolon/tab
separated file is refused with a message saying so. Required column names match ignoring case.
Relative paths are resolved against the CSV's folder (``..`` removed, symlinked folders kept);
on POSIX a backslash in a relative path is a separator (a manifest written on Windows).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from featmammo.atomic import atomic_write
from featmammo.errors import ConfigError, ManifestError
from featmammo.labels import LABEL_ALIASES, LABELS, normalize_label  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = [
    "image_id",
    "path",
    "label",
    "patient_id",
    "laterality",
    "view",
    "split",
    "source",
]
LATERALITY_ALIASES = {"l": "L", "left": "L", "r": "R", "right": "R", "": ""}
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "test": "test",
    "testing": "test",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "": "",
}
MAX_REPORTED_ERRORS = 10
# Path columns (issue: one convention for all of them): ``path``, every column whose name ends in
# ``_path`` (one file: crop_path, roi_mask_path, ...) and every column ending in ``_paths`` (several
# files joined by ``;``). All are written by :func:`write_manifest` with ONE rule -- relative to the
# manifest's folder when the file lies inside it, absolute otherwise -- and resolved back the same
# way by :func:`read_manifest`. A path may address one record of a container file as
# ``FILE#INDEX`` (a TFRecord record); the check for existence is then made on FILE.
AUX_PATH_COLUMNS = ("crop_path", "roi_mask_path")  # the usual ones (any *_path column counts)
PATH_LIST_SEPARATOR = ";"


def path_columns(columns) -> list[str]:
    """The path columns among ``columns``: ``path``, ``*_path`` and (``;``-joined) ``*_paths``."""
    return [
        c for c in columns if c == "path" or str(c).endswith("_path") or str(c).endswith("_paths")
    ]


def _map_paths(value: str, column: str, fn) -> str:
    if column.endswith("_paths"):
        return PATH_LIST_SEPARATOR.join(fn(v) for v in value.split(PATH_LIST_SEPARATOR))
    return fn(value)


_RECORD_RE = re.compile(r"^(?P<file>.+)#(?P<index>\d+)$")


def container_file(path) -> Path:
    """The file to check for ``path``: ``FILE`` for ``FILE#INDEX`` (one record of a TFRecord
    file) when ``path`` itself is not a file, else ``path``."""
    p = Path(path)
    m = _RECORD_RE.match(str(path))
    if m and not p.is_file():
        return Path(m.group("file"))
    return p


# --------------------------------------------------------------------------------------------
# CSV reading with exact line numbers
# --------------------------------------------------------------------------------------------
def read_csv_strings(
    path, *, delimiter: str = ",", short_rows: str = "error", encoding: str = "utf-8-sig"
) -> tuple[pd.DataFrame, list[int]]:
    """Read a CSV as strings: no NA conversion, cells and header stripped, blank records skipped.

    ``delimiter``: ``,`` (a one-column header holding ``;``/tab/``|`` is then refused with a
    message saying so) or another single character for tables that use it (INbreast's ``;``).

    Returns the frame and, for each row, the CSV line number where its record starts (header = line
    1). Quoted cells may span lines (the CBIS-DDSM CSVs carry newlines inside path cells), so line
    numbers are tracked by the csv reader rather than computed from the row index.

    A row is never padded: a row with more fields than the header is a ManifestError naming the
    line; a row with fewer (a file cut short, a half-finished download: the missing cells would
    silently read as empty, or a cut cell as another value) and a last row that ends inside a
    quoted cell are ``short_rows="error"``: one ManifestError naming the file and every such
    line; ``short_rows="list"``: left out of the frame and described in
    ``df.attrs["short_rows"]`` (``[{"line", "fields", "expected", "cells", "reason"}]``) for the
    caller to list. ``df.attrs["no_final_newline"]`` is True when the frame's last row is the file's
    last line and that line has no line break (a cut inside the last cell cannot be told from its
    value; callers say so); False when that line was itself listed as cut short.
    """
    if short_rows not in ("error", "list"):
        raise ValueError(f"short_rows={short_rows!r}: expected 'error' or 'list'")
    path = Path(path)
    short: list[dict] = []
    try:
        with open(path, newline="", encoding=encoding) as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"{path}: cannot read CSV: not UTF-8 text ({exc}); "
            "save it as UTF-8 (Excel: 'CSV UTF-8')"
        ) from exc
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read CSV ({exc})") from exc
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        header: list[str] | None = None
        last_start = 0
        records: list[list[str]] = []
        lines: list[int] = []
        start = 1
        for record in reader:
            if not record or all(not cell.strip() for cell in record):
                start = reader.line_num + 1
                continue
            cells = [cell.strip() for cell in record]
            last_start = start
            if header is None:
                header = cells
            else:
                if len(cells) > len(header):
                    raise ManifestError(
                        f"{path}: line {start}: {len(cells)} fields, header has {len(header)}"
                    )
                if len(cells) < len(header):
                    short.append(_short_row(start, cells, len(header), "cut short"))
                else:
                    records.append(cells)
                    lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise ManifestError(f"{path}: cannot read CSV ({exc})") from exc
    if header is None:
        raise ManifestError(f"{path}: empty CSV (no header)")
    if lines and lines[-1] == last_start and _ends_inside_quotes(text, last_start, delimiter):
        short.append(_short_row(lines.pop(), records.pop(), len(header), "ends inside a quote"))
    # Unnamed columns (trailing separators from spreadsheet exports): dropped when every cell is
    # empty, an error otherwise (their values would have no column to go to).
    unnamed = [i for i, c in enumerate(header) if c == ""]
    if unnamed:
        filled = [i for i in unnamed if any(r[i] for r in records)]
        if filled:
            pos = next(k for k, r in enumerate(records) if r[filled[0]])
            raise ManifestError(
                f"{path}: line {lines[pos]}: value {records[pos][filled[0]]!r} in column "
                f"{filled[0] + 1}, which has no name in the header"
            )
        keep = [i for i, c in enumerate(header) if c != ""]
        header = [header[i] for i in keep]
        records = [[r[i] for i in keep] for r in records]
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise ManifestError(f"{path}: duplicate column names {dupes}")
    if len(header) == 1 and delimiter == ",":
        sep = next((s for s in (";", "\t", "|") if s in header[0]), None)
        if sep is not None:
            raise ManifestError(
                f"{path}: the header is one column {header[0]!r}: the file looks "
                f"{_SEP_NAMES[sep]}-separated; featmammo reads comma-separated CSV "
                "(re-save it with commas)"
            )
    # trailing unnamed (empty) columns: a row short only by them is complete
    named = len(header)
    trailing = not unnamed or unnamed == list(range(named, named + len(unnamed)))
    for row in [
        r for r in short if trailing and r["fields"] >= named and r["reason"][:7] == "row has"
    ]:
        short.remove(row)
        records.append(row["cells"][:named] + [""] * (named - len(row["cells"][:named])))
        lines.append(row["line"])
    if len(lines) > 1 and lines != sorted(lines):
        order = sorted(range(len(lines)), key=lines.__getitem__)
        records, lines = [records[i] for i in order], [lines[i] for i in order]
    if short and short_rows == "error":
        shown = "; ".join(f"line {r['line']}: {r['reason']}" for r in short[:MAX_REPORTED_ERRORS])
        more = f"; and {len(short) - MAX_REPORTED_ERRORS} more" if len(short) > 10 else ""
        raise ManifestError(f"{path}: {len(short)} row(s) cut short, never padded: {shown}{more}")
    df = pd.DataFrame(records, columns=header, dtype=object)
    df.attrs["short_rows"] = short
    # the frame's last row is the file's unterminated last line (when that line was listed as
    # cut short, the row before it ended with a line break and is complete)
    df.attrs["no_final_newline"] = (
        bool(text) and not text.endswith(("\n", "\r")) and bool(lines) and lines[-1] == last_start
    )
    return df, lines


def _short_row(line: int, cells: list[str], expected: int, how: str) -> dict:
    if how == "cut short":
        reason = (
            f"row has {len(cells)} of {expected} fields: cut short (file truncated or a "
            "half-finished download?); not padded, not used"
        )
    else:
        reason = (
            "the file ends inside a quoted cell of this row: cut short (file truncated?); not used"
        )
    return {"line": line, "fields": len(cells), "expected": expected, "cells": cells,
            "reason": reason}  # fmt: skip


def _ends_inside_quotes(text: str, line: int, delimiter: str) -> bool:
    """Whether the record starting at ``line`` (the last one) runs into the end of the file inside
    an open quoted cell (the lenient reader then returns the cut cell as a value)."""
    tail = "".join(io.StringIO(text, newline="").readlines()[line - 1 :])
    try:
        for _ in csv.reader(io.StringIO(tail, newline=""), delimiter=delimiter, strict=True):
            pass
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


_SEP_NAMES = {";": "semicolon", "\t": "tab", "|": "pipe"}


# --------------------------------------------------------------------------------------------
# Normalisation helpers (shared with the builders)
# --------------------------------------------------------------------------------------------
def normalize_laterality(value) -> str | None:
    return LATERALITY_ALIASES.get(str(value).strip().lower())


def normalize_split(value) -> str | None:
    return SPLIT_ALIASES.get(str(value).strip().lower())


def image_ids_from_paths(paths: Sequence[str], base_dir=None) -> list[str]:
    """Unique, deterministic image ids from file paths.

    The id is the path relative to ``base_dir`` (posix separators) without its extension, e.g.
    ``benign/case1/img``. Paths outside ``base_dir`` use their last two components. When two files
    differ only by extension the colliding ids keep the extension; any remaining collision (the
    same file listed twice) gets ``#2``, ``#3``... in row order.
    """
    stems: list[str] = []
    full: list[str] = []
    for p in paths:
        rel = _relative_posix(p, base_dir)
        pp = PurePosixPath(rel)
        full.append(rel)
        # a numeric "suffix" is part of the name (UID-named DICOMs: 1.2.840.99.7), not an extension
        ext = pp.suffix and not pp.suffix[1:].isdigit()
        stems.append(str(pp.with_suffix("")) if ext else rel)
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    ids = [f if counts[s] > 1 else s for s, f in zip(stems, full, strict=True)]
    seen: dict[str, int] = {}
    out = []
    for i in ids:
        n = seen.get(i, 0) + 1
        seen[i] = n
        out.append(i if n == 1 else f"{i}#{n}")
    return out


def _relative_posix(p: str, base_dir) -> str:
    path = Path(p)
    if base_dir is not None and path.is_absolute():
        try:
            rel = Path(os.path.relpath(path, base_dir)).as_posix()
        except ValueError:  # another drive (Windows)
            rel = ""
        if rel and not rel.startswith("../"):
            return rel
    if path.is_absolute() or path.as_posix().startswith("../"):
        # outside the base folder: the last two components (parent folder + file name)
        return PurePosixPath(*path.parts[-2:]).as_posix()
    return path.as_posix()


# --------------------------------------------------------------------------------------------
# read / write / hash
# --------------------------------------------------------------------------------------------
class _Problems:
    """Collects row problems so one ManifestError can list them all (up to a limit)."""

    def __init__(self, where: str, lines: list[int] | None):
        self.where = where
        self.lines = lines
        self.items: list[str] = []

    def ref(self, pos: int) -> str:
        if self.lines is not None:
            return f"{self.where}: line {self.lines[pos]}"
        return f"{self.where}: row {pos}"

    def add(self, pos: int, reason: str) -> None:
        self.items.append(f"{self.ref(pos)}: {reason}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_REPORTED_ERRORS]
        more = len(self.items) - len(shown)
        msg = "invalid manifest:\n  " + "\n  ".join(shown)
        if more:
            msg += f"\n  ... and {more} more problem(s)"
        raise ManifestError(msg)


def read_manifest(
    path_or_df,
    *,
    check_paths: bool = True,
    base_dir=None,
    require_labels: bool = True,
    numeric: bool = True,
) -> pd.DataFrame:
    """Read and validate a manifest; returns a new DataFrame with ``REQUIRED_COLUMNS`` first.

    Column types: the required columns, path columns, ``label_rule`` and identifier columns
    (names ending in ``id``, ``ids``, ``_uid``, ``_file``) are text (``str``); any other extra
    column whose every non-empty cell is a plain decimal number (``535``, ``-2``, ``50.0``,
    ``1e-3``; no leading zero such as ``0012``, which stays text) is numeric
    (:func:`numeric_columns`): pandas' nullable ``Int64`` when every value is a whole number
    written without a point, else ``float64``; an empty cell is missing (``<NA>`` / ``NaN``).
    ``numeric=False`` keeps every column text (what a tool
    that rewrites manifests, e.g. ``merge``, wants).

    ``path_or_df``: a CSV path or a DataFrame. Needs at least ``path`` and (unless
    ``require_labels=False``, for unlabeled prediction sets) ``label``. Missing columns are derived:
    ``image_id`` from the path (:func:`image_ids_from_paths`), ``patient_id`` = ``image_id`` (with
    a warning: patient-grouped splits then group nothing), ``laterality``/``view``/``split`` empty,
    ``source`` = ``csv``. Values are normalised (labels lowercase, laterality ``L``/``R``, view
    uppercase, split ``train``/``test``/``val``/``""``).

    Relative paths are resolved against ``base_dir`` (default: the CSV's folder; for a DataFrame,
    left as given unless ``base_dir`` is set) and returned absolute.

    Raises ManifestError, naming the CSV line (or the DataFrame row position) and the reason, for:
    missing ``path``/``label`` columns, an empty manifest, unknown labels, bad laterality/split
    values, empty paths, duplicate ``image_id`` and (``check_paths``) files that do not exist.
    """
    if isinstance(path_or_df, pd.DataFrame):
        df = path_or_df.copy()
        df.columns = [str(c).strip() for c in df.columns]
        dupes = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
        if dupes:
            raise ManifestError(f"manifest: duplicate column names {dupes}")
        for c in df.columns:
            df[c] = _cells_as_strings(df[c])
        lines = None
        where = "manifest"
    else:
        csv_path = _abspath(path_or_df)
        if csv_path.is_dir():
            raise ManifestError(f"{csv_path}: is a folder; a manifest is a CSV file")
        if not csv_path.is_file():
            raise ManifestError(f"{csv_path}: manifest file not found")
        df, lines = read_csv_strings(csv_path)
        where = str(csv_path)
        if base_dir is None:
            # lexical (symlinked folders kept): a path written relative to this folder reads
            # back as the very string that was written. A CSV that is itself a symlink is read
            # relative to the folder of the file it points to, where its data lives.
            base_dir = (
                Path(os.path.realpath(csv_path)).parent
                if csv_path.is_symlink()
                else csv_path.parent
            )
    if base_dir is not None:
        base_dir = _abspath(base_dir)
    df = df.reset_index(drop=True)
    df = _canonical_column_names(df, where)

    required_in = ["path", "label"] if require_labels else ["path"]
    missing = [c for c in required_in if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{where}: missing required column(s) {missing}; a manifest needs at least "
            f"'path' and 'label' (has {list(df.columns)})"
        )
    if len(df) == 0:
        raise ManifestError(f"{where}: empty manifest (no rows)")
    problems = _Problems(where, lines)

    # paths
    resolved = []
    for pos, p in enumerate(df["path"]):
        if not p:
            problems.add(pos, "empty path")
            resolved.append(p)
            continue
        if os.sep == "/" and _WINDOWS_ABS.match(p):
            problems.add(
                pos,
                f"Windows absolute path {p!r} cannot be opened here; write paths relative to "
                "the manifest's folder (or absolute paths of this machine)",
            )
            resolved.append(p)
            continue
        path = Path(_resolve(p, base_dir)) if base_dir is not None else Path(p).expanduser()
        resolved.append(str(path))
        if check_paths:
            target = container_file(path)
            if not target.is_file():
                what = "is a folder, not an image file" if target.is_dir() else "does not exist"
                problems.add(pos, f"path {what}: {target}")
    original_paths = list(df["path"])
    df["path"] = resolved
    # crop / ROI mask / other file columns: resolved like path (checked by the code using them)
    for col in path_columns(df.columns):
        if col != "path" and base_dir is not None:
            df[col] = [_map_paths(v, col, lambda p: _resolve(p, base_dir)) for v in df[col]]

    # labels
    if "label" not in df.columns:
        df["label"] = ""
    labels = []
    for pos, v in enumerate(df["label"]):
        if v == "" and not require_labels:
            labels.append("")
            continue
        lab = normalize_label(v)
        if lab is None:
            what = "empty label" if v == "" else f"unknown label {v!r}"
            problems.add(pos, f"{what} (expected one of {', '.join(LABELS)})")
        labels.append(lab or v)
    df["label"] = labels

    # image ids
    if "image_id" not in df.columns or (df["image_id"] == "").all():
        df["image_id"] = image_ids_from_paths(
            original_paths if base_dir is None else resolved, base_dir
        )
    else:
        for pos in [i for i, v in enumerate(df["image_id"]) if v == ""]:
            problems.add(pos, "empty image_id")
    first_seen: dict[str, int] = {}
    for pos, i in enumerate(df["image_id"]):
        if i == "":
            continue
        if i in first_seen:
            problems.add(pos, f"duplicate image_id {i!r} (first at {problems.ref(first_seen[i])})")
        else:
            first_seen[i] = pos

    # patients
    if "patient_id" not in df.columns:
        df["patient_id"] = ""
    empty_pat = df["patient_id"] == ""
    if empty_pat.any():
        log.warning(
            "%s: %d of %d rows have no patient_id; using image_id instead. Patient-grouped "
            "splits then cannot keep a patient's images together (possible leakage).",
            where,
            int(empty_pat.sum()),
            len(df),
        )
        df.loc[empty_pat, "patient_id"] = df.loc[empty_pat, "image_id"]

    # laterality, view, split, source
    for col in ("laterality", "view", "split"):
        if col not in df.columns:
            df[col] = ""
    lat = []
    for pos, v in enumerate(df["laterality"]):
        n = normalize_laterality(v)
        if n is None:
            problems.add(pos, f"bad laterality {v!r} (expected L, R or empty)")
        lat.append(n if n is not None else v)
    df["laterality"] = lat
    df["view"] = [v.upper() for v in df["view"]]
    spl = []
    for pos, v in enumerate(df["split"]):
        n = normalize_split(v)
        if n is None:
            problems.add(pos, f"bad split {v!r} (expected train, test, val or empty)")
        spl.append(n if n is not None else v)
    df["split"] = spl
    if "source" not in df.columns:
        df["source"] = "csv"
    df.loc[df["source"] == "", "source"] = "csv"

    problems.raise_if_any()
    df = df[REQUIRED_COLUMNS + [c for c in df.columns if c not in REQUIRED_COLUMNS]].astype(str)
    if numeric:
        df = numeric_columns(df)
    df.attrs["manifest_path"] = None if lines is None else where
    return df


_NUMBER_RE = re.compile(r"^[-+]?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?$")
_INTEGER_RE = re.compile(r"^[-+]?(?:0|[1-9]\d*)$")


def is_text_column(name: str) -> bool:
    """Columns that stay text whatever they hold: required, path, ``label_rule``, identifiers."""
    low = str(name).lower()
    return (
        name in REQUIRED_COLUMNS
        or name in path_columns([name])
        or low == "label_rule"
        or low.endswith(("id", "ids", "_uid", "_file", "_files"))
    )


def numeric_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every extra column of plain numbers converted (see :func:`read_manifest`):
    ``Int64`` for whole numbers, ``float64`` otherwise, empty cells missing. Text columns (see
    :func:`is_text_column`) and columns with any other value are left as they are."""
    out = df.copy()
    for col in df.columns:
        if is_text_column(col):
            continue
        values = ["" if _is_missing(v) else str(v).strip() for v in df[col]]
        present = [v for v in values if v != ""]
        if not present or not all(_NUMBER_RE.match(v) for v in present):
            continue
        if all(_INTEGER_RE.match(v) for v in present) and all(abs(int(v)) < 2**63 for v in present):
            out[col] = pd.array([int(v) if v else pd.NA for v in values], dtype="Int64")
        else:
            out[col] = np.array([float(v) if v else np.nan for v in values], dtype=np.float64)
    return out


def _resolve(p: str, base_dir) -> str:
    """``p`` with ``~`` expanded; a relative path joined to ``base_dir`` and normalised
    (``a/../b`` -> ``b`` where no symlink makes that differ). Absolute paths are kept as given."""
    if not p:
        return p
    if os.sep == "/" and "\\" in p and not _WINDOWS_ABS.match(p):
        p = p.replace("\\", "/")  # a manifest written on Windows: backslash = separator
    path = Path(p).expanduser()
    if path.is_absolute():
        return str(path)
    joined = os.path.join(base_dir, path)
    if ".." not in path.parts:
        return os.path.normpath(joined)  # only '.' and doubled separators go
    # '..' is removed only where that names the same file as the OS would (no symlinked folder
    # before it), so 'link/../x' keeps meaning what the filesystem says
    clean = os.path.normpath(joined)
    return clean if os.path.realpath(clean) == os.path.realpath(joined) else joined


_WINDOWS_ABS = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")  # C:\... or \\server\share


def _abspath(p) -> Path:
    """Absolute, ``~`` expanded, ``..`` removed lexically; symlinks are not resolved."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(p))))


def _canonical_column_names(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Required columns matched case-insensitively (``Path``, ``LABEL`` -> ``path``, ``label``)."""
    renames = {}
    for col in df.columns:
        low = col.lower()
        if low in REQUIRED_COLUMNS and col != low:
            if low in df.columns or low in renames.values():
                raise ManifestError(
                    f"{where}: columns {col!r} and {low!r} differ only by case; keep one"
                )
            renames[col] = low
    return df.rename(columns=renames) if renames else df


def _cells_as_strings(values: pd.Series) -> list[str]:
    """DataFrame cells as stripped strings; missing -> ``""``.

    A float column whose values are all whole numbers (what pandas makes of an integer id column
    with one missing cell) is written without ``.0``, so patient ``3`` stays ``"3"``.
    """
    vals = list(values)
    present = [v for v in vals if not _is_missing(v)]
    integral = (
        values.dtype.kind == "f"
        and present
        and all(float(v).is_integer() and abs(v) < 2**53 for v in present)
    )
    if integral:
        return ["" if _is_missing(v) else str(int(v)) for v in vals]
    return ["" if _is_missing(v) else str(v).strip() for v in vals]


def _is_missing(v) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def write_manifest(df: pd.DataFrame, path) -> None:
    """Write a manifest CSV (required columns first, then extras), atomically.

    One rule for every path column (:func:`path_columns`: ``path``, ``*_path``, ``;``-joined
    ``*_paths``): a file inside the manifest's folder is written relative to it (so the folder
    can be moved as a whole), any other stays absolute. ``read_manifest`` resolves them back.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: cannot write manifest, missing column(s) {missing}")
    out = _abspath(path)
    if out.is_dir():
        raise ManifestError(f"{out}: is a folder; give the manifest a file name (e.g. {out}/m.csv)")
    folder = out.parent
    frame = df[REQUIRED_COLUMNS + [c for c in df.columns if c not in REQUIRED_COLUMNS]].copy()
    for col in frame.columns:
        frame[col] = ["" if _is_missing(v) else str(v) for v in frame[col]]
    for col in path_columns(frame.columns):
        frame[col] = [
            _map_paths(v, col, lambda p: _relative_if_inside(p, folder)) for v in frame[col]
        ]
    data = frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
    try:
        atomic_write(out, lambda f: f.write(data))
    except OSError as exc:
        raise ManifestError(f"{out}: cannot write the manifest ({exc.strerror or exc})") from exc
    log.info("wrote manifest %s (%d rows)", out, len(frame))


def _relative_if_inside(p: str, folder: Path) -> str:
    """``p`` relative to ``folder`` when it lies inside it, lexically (symlinks are kept, so a
    linked file keeps its own name and ``read_manifest`` gives back the same path string)."""
    if not p or not os.path.isabs(p):
        return p
    try:
        rel = Path(p).relative_to(folder)  # pure: no filesystem access
    except ValueError:
        return p
    if ".." in rel.parts or os.path.normpath(p) != p:
        return p
    return rel.as_posix()


def manifest_hash(df: pd.DataFrame) -> str:
    """SHA-256 of the canonical CSV bytes of the required columns.

    Canonical: columns in ``REQUIRED_COLUMNS`` order, rows sorted by ``image_id``, every cell as a
    stripped string, ``\\n`` line ends, UTF-8. Row order and extra columns do not change the hash;
    any change of a label, patient, split or path does.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest_hash: missing column(s) {missing}")
    frame = df[REQUIRED_COLUMNS].copy()
    for col in frame.columns:
        frame[col] = ["" if _is_missing(v) else str(v).strip() for v in frame[col]]
    frame = frame.sort_values("image_id", kind="mergesort")
    buf = io.StringIO()
    frame.to_csv(buf, index=False, lineterminator="\n")
    return hashlib.sha256(buf.getvalue().encode("utf-8")).hexdigest()


#: manifest columns that may hold a lesion mask per row, in order of preference
MASK_COLUMNS = ("roi_mask_path", "mask_path")


def mask_column(df: pd.DataFrame) -> str | None:
    """The column of ``df`` holding lesion masks (``roi_mask_path``, else ``mask_path``) or None."""
    return next((c for c in MASK_COLUMNS if c in df.columns), None)


def check_roi_masks(df: pd.DataFrame, config, where: str = "manifest") -> None:
    """ConfigError, before any work, when ``config.roi`` needs lesion masks the rows cannot give
    (no ``roi_mask_path`` column, or an empty one). Rows with an empty mask among others fail one
    by one (recorded, with the reason)."""
    if not config.uses_mask:
        return
    col = mask_column(df)
    if col is None:
        raise ConfigError(
            f"{where}: --roi {config.roi} crops around the lesion and needs a roi_mask_path "
            f"column; this manifest has none (columns: {', '.join(map(str, df.columns))}). "
            "Use --roi full, or build the manifest from a source with masks (CBIS-DDSM)"
        )
    masks = df[col].fillna("").astype(str).str.strip()
    if len(df) and (masks == "").all():
        raise ConfigError(
            f"{where}: --roi {config.roi} needs lesion masks, but column {col} is empty in every "
            "row; use --roi full"
        )
    if (masks == "").any():
        log.warning(
            "%s: %d of %d rows have no %s; --roi %s will record them as failed",
            where, int((masks == "").sum()), len(df), col, config.roi,
        )  # fmt: skip
