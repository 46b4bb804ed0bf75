"""What every manifest builder shares: the result shape, unresolved-row reporting, the summary,
the leakage audit call and writing the three files a ``featmammo manifest <set>`` command leaves.

A builder returns ``(df, summary)``: ``df`` holds the manifest contract
(:data:`~featmammo.datasets.manifest.REQUIRED_COLUMNS`, then set-specific columns and
``label_rule``); ``summary`` is a JSON-able dict made by :func:`summarize` (root, source, label
rule, counts of images/patients/labels/splits, the unresolved rows with their reasons, notes and
the leakage audit) plus whatever the set adds. :func:`save` writes the manifest, the summary
(``<stem>.summary.json``) and the unresolved rows (``<stem>.unresolved.csv``, removed when there
are none) so a Python user gets the same files as the command line. :func:`format_summary` is
the text the commands print.

Unresolved rows are dicts with at least ``image_id`` (may be empty when the table row names no
image), ``where`` (``file:line`` of the table row, or the file on disk) and ``reason``; builders
add their own keys (CBIS-DDSM: ``subject``, ``csv``). They are never silently dropped: every
builder lists each row it could not turn into a manifest row.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from featmammo.errors import ManifestError

log = logging.getLogger(__name__)


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as dicts, fast (``DataFrame.to_dict("records")`` is slow on object columns)."""
    cols = list(df.columns)
    return [
        dict(zip(cols, vals, strict=True))
        for vals in zip(*(df[c].tolist() for c in cols), strict=True)
    ]


def manifest_frame(rows: list[dict], extra: Iterable[str] = ()) -> pd.DataFrame:
    """Manifest rows -> a DataFrame with the contract's columns first, then ``extra`` (in order,
    ``label_rule`` among them), every cell a string (missing -> ``""``)."""
    from featmammo.datasets.manifest import REQUIRED_COLUMNS

    cols = REQUIRED_COLUMNS + [c for c in extra if c not in REQUIRED_COLUMNS]
    df = pd.DataFrame(rows, columns=cols, dtype=object)
    for c in cols:
        df[c] = ["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in df[c]]
    return df


def abs_root(root, what: str) -> Path:
    """``root`` absolute (manifest paths must not depend on the cwd), ``~`` expanded, ``..``
    removed lexically, symlinks kept. Raises ManifestError when it is not a folder."""
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    if not path.is_dir():
        raise ManifestError(f"{path}: {what} root is not a folder")
    return path


# --------------------------------------------------------------------------------------------
# Source tables (CSV, ;-CSV, xls, xlsx) with line numbers, and lenient column matching
# --------------------------------------------------------------------------------------------
class Table:
    """A source table read as stripped strings: ``df``, ``lines`` (the file line of each row;
    for spreadsheets the sheet row, header = 1) and ``path``; :meth:`where` names a row.

    Rows cut short (a truncated CSV) are not in ``df``: they are ``short_rows`` (see
    :func:`~featmammo.datasets.manifest.read_csv_strings`), which a builder lists with
    :meth:`cut_rows`; ``notes`` says when the file's last line has no line break."""

    def __init__(
        self, path: Path, df: pd.DataFrame, lines: list[int], short_rows=(), notes=(),
        no_final_newline: bool = False,
    ):  # fmt: skip
        self.path = path
        self.df = df
        self.lines = lines
        self.short_rows = list(short_rows)
        self.notes = list(notes)
        self.no_final_newline = no_final_newline

    @contextlib.contextmanager
    def last_row_guard(self, pos: int, unresolved: list[dict], image_id: str = ""):
        """Around the handling of row ``pos``: a ManifestError on the file's last row when that
        line has no line break (the file was most likely cut inside its last cell: ``trai`` for
        ``training``) lists the row as unresolved instead of stopping; any other stands."""
        try:
            yield
        except ManifestError as exc:
            if not (self.no_final_newline and pos == len(self.df) - 1):
                raise
            unresolved.append(
                {
                    "image_id": image_id,
                    "where": self.where(pos),
                    "reason": f"{exc} (the file's last line, without a line break: cut short?)",
                }
            )

    def cut_rows(self, id_column: str | None = None) -> list[dict]:
        """The rows cut short as unresolved rows (``image_id`` from ``id_column`` when the row
        still holds it, ``where`` = file and line, ``reason``)."""
        pos = list(self.df.columns).index(id_column) if id_column in self.df.columns else None
        out = []
        for r in self.short_rows:
            iid = r["cells"][pos] if pos is not None and pos < len(r["cells"]) else ""
            out.append({"image_id": iid, "where": f"{self.path}: line {r['line']}",
                        "reason": r["reason"]})  # fmt: skip
        return out

    def where(self, pos: int) -> str:
        return f"{self.path}: line {self.lines[pos]}"

    def column(self, *names: str, required: bool = True) -> str | None:
        """The table's column matching one of ``names`` ignoring case, spaces, ``_`` and ``-``;
        raises ManifestError naming the file and the columns it has when a required one is
        missing."""
        have = {_norm(c): c for c in self.df.columns}
        for n in names:
            if _norm(n) in have:
                return have[_norm(n)]
        if required:
            raise ManifestError(
                f"{self.path}: missing column {names[0]!r} (has {list(self.df.columns)})"
            )
        return None

    def rows(self) -> list[dict]:
        return records(self.df)


def _norm(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def read_table(path, what: str) -> Table:
    """Read a source table: ``.csv`` (comma, or ``;``/tab when the header uses it), ``.xlsx``
    (openpyxl) or ``.xls`` (xlrd), first sheet. Cells are stripped strings (no NA conversion;
    ``12.0`` from a spreadsheet's number cell becomes ``12``). Raises ManifestError naming the file
    when it is missing, unreadable, empty, or needs a reader that is not installed."""
    from featmammo.datasets.manifest import read_csv_strings

    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"{p}: {what} not found")
    ext = p.suffix.lower()
    if ext in (".xls", ".xlsx"):
        engine = "xlrd" if ext == ".xls" else "openpyxl"
        try:
            if ext == ".xls":
                cells = _xls_cells(p)
            else:
                raw = pd.read_excel(p, sheet_name=0, dtype=object, header=None, engine=engine)
                cells = [[_cell(v) for v in row] for row in raw.itertuples(index=False)]
        except ImportError as exc:
            raise ManifestError(
                f"{p}: reading {ext} needs the '{engine}' package (pip install {engine}), "
                "or save the sheet as CSV and point at that"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - any reader failure names the file
            raise ManifestError(f"{p}: cannot read {what} ({type(exc).__name__}: {exc})") from exc
        keep = [i for i, row in enumerate(cells) if any(row)]
        if not keep:
            raise ManifestError(f"{p}: empty {what}")
        head = keep[0]
        header = cells[head]
        named = [i for i, c in enumerate(header) if c]
        rows = [[cells[i][j] for j in named] for i in keep[1:]]
        df = pd.DataFrame(rows, columns=[header[j] for j in named], dtype=object)
        return Table(p, df, [i + 1 for i in keep[1:]])
    encoding, notes = _text_encoding(p), []
    if encoding != "utf-8-sig":
        notes.append(
            f"{p.name} is not UTF-8 text: read as {_ENCODING_NAMES[encoding]} (a spreadsheet's "
            "CSV export on Windows)"
        )
    with open(p, encoding=encoding, errors="replace") as f:
        first = next((line for line in f if line.strip()), "")
    delimiter = ","
    if "," not in first:
        delimiter = next((d for d in (";", "\t") if d in first), ",")
    df, lines = read_csv_strings(p, delimiter=delimiter, short_rows="list", encoding=encoding)
    if df.attrs.get("no_final_newline") and lines:
        notes.append(
            f"{p.name}: the last line (line {lines[-1]}) has no line break: if the file was cut "
            "short there, its last cell may be cut too (check that row)"
        )
    return Table(
        p, df, lines, df.attrs.get("short_rows", ()), notes, bool(df.attrs.get("no_final_newline"))
    )


_ENCODING_NAMES = {"cp1252": "Windows-1252", "latin-1": "Latin-1"}


def _text_encoding(p: Path) -> str:
    """``utf-8-sig`` when the source table decodes as UTF-8, else ``cp1252`` (what Excel's CSV
    export writes on a Western-European Windows), else ``latin-1`` (decodes any byte). Manifests,
    which featmammo writes, stay UTF-8 only (:func:`read_csv_strings`)."""
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            data.decode(encoding)
        except UnicodeDecodeError:
            continue
        return encoding
    return "latin-1"


def _xls_cells(p: Path) -> list[list[str]]:
    """The first sheet of a BIFF ``.xls`` through xlrd itself (pandas' xlrd engine is
    deprecated): numbers without a spurious ``.0``, date cells as ISO dates, empty cells ``""``."""
    import xlrd

    book = xlrd.open_workbook(str(p), on_demand=True)
    try:
        sheet = book.sheet_by_index(0)
        out = []
        for r in range(sheet.nrows):
            row = []
            for c in sheet.row(r):
                if c.ctype == xlrd.XL_CELL_DATE:
                    d = xlrd.xldate_as_datetime(c.value, book.datemode)
                    row.append(d.date().isoformat() if d.time().isoformat() == "00:00:00"
                               else d.isoformat())  # fmt: skip
                elif c.ctype in (xlrd.XL_CELL_EMPTY, xlrd.XL_CELL_BLANK, xlrd.XL_CELL_ERROR):
                    row.append("")
                elif c.ctype == xlrd.XL_CELL_BOOLEAN:
                    row.append(str(bool(c.value)))
                else:
                    row.append(_cell(c.value))
            out.append(row)
    finally:
        book.release_resources()
    width = max((len(r) for r in out), default=0)
    return [r + [""] * (width - len(r)) for r in out]


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v:  # NaN
            return ""
        if v.is_integer():
            return str(int(v))
    return str(v).strip()


def walk_files(root: Path, suffixes: tuple[str, ...] | None = None):
    """Yield every file under ``root`` (sorted, depth-first), skipping hidden files/folders
    (``.DS_Store``, ``._x.dcm``) and archiver/NAS junk folders (``__MACOSX``, ``@eaDir``...);
    ``suffixes``: only names ending in one of them, ignoring case."""
    from featmammo.datasets.folders import JUNK_FILES, JUNK_FOLDERS

    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in JUNK_FOLDERS)
        for name in sorted(filenames):
            if name.startswith(".") or name in JUNK_FILES:
                continue
            if suffixes is None or name.lower().endswith(suffixes):
                yield Path(dirpath) / name


def find_file(root: Path, names: Iterable[str], what: str, given=None) -> Path:
    """``given`` when set (must exist), else the first file under ``root`` (any depth, sorted)
    whose name is one of ``names`` ignoring case. Raises ManifestError naming what was looked
    for and where."""
    if given is not None:
        p = Path(given)
        if not p.is_file():
            raise ManifestError(f"{p}: {what} not found")
        return p
    wanted = [n.lower() for n in names]
    found: list[tuple[int, Path]] = []
    for path in walk_files(root):
        if path.name.lower() in wanted:
            found.append((wanted.index(path.name.lower()), path))
    if not found:
        raise ManifestError(
            f"{root}: {what} not found (looked for {', '.join(names)} at any depth under ROOT)"
        )
    found.sort(key=lambda t: (t[0], len(t[1].parts), str(t[1])))
    if len(found) > 1:
        log.info("%s: %d candidates for the %s, using %s", root, len(found), what, found[0][1])
    return found[0][1]


# --------------------------------------------------------------------------------------------
# BI-RADS proxy labels (INbreast, VinDr-Mammo): assessment categories, not pathology
# --------------------------------------------------------------------------------------------
DEFAULT_BIRADS_MAP = {
    "1": "normal",
    "2": "benign",
    "3": "benign",
    "4": "malignant",
    "5": "malignant",
    "6": "malignant",
}
BIRADS_TARGETS = ("normal", "benign", "malignant", "exclude")


def parse_birads_map(spec: str | dict | None) -> dict[str, str]:
    """``"1=normal,2=benign,3=exclude,4=malignant,5=malignant"`` (or a dict) -> the category map,
    starting from :data:`DEFAULT_BIRADS_MAP`. Keys are categories (``0``-``6``, ``4a``/``4b``/
    ``4c``; a sub-category falls back to its digit), values a label or ``exclude``."""
    from featmammo.errors import ConfigError

    out = dict(DEFAULT_BIRADS_MAP)
    if not spec:
        return out
    items = (
        spec.items()
        if isinstance(spec, dict)
        else (
            part.split("=", 1) if "=" in part else (part, "")
            for part in (p.strip() for p in str(spec).split(","))
            if part
        )
    )
    given: set[str] = set()
    for key, value in items:
        k, v = str(key).strip().lower(), str(value).strip().lower()
        if not re.fullmatch(r"[0-6][abc]?", k) or v not in BIRADS_TARGETS:
            raise ConfigError(
                f"--birads-map: bad entry {key!r}={value!r} (expected CATEGORY=LABEL with "
                f"CATEGORY 0-6 or 4a/4b/4c and LABEL one of {', '.join(BIRADS_TARGETS)})"
            )
        if k in given:
            raise ConfigError(f"--birads-map: category {k} is given twice")
        given.add(k)
        out[k] = v
    return out


def birads_category(value) -> str | None:
    """``"BI-RADS 4"``, ``"4a"``, ``"4.0"``, ``"Bi-Rads 5"`` -> ``"4"``/``"4a"``/``"5"``; None when
    the value holds no category."""
    text = str(value).strip().lower().replace("bi-rads", "").replace("birads", "").strip()
    m = re.fullmatch(r"([0-6])(?:\.0)?\s*([abc])?", text)
    return None if m is None else m.group(1) + (m.group(2) or "")


def birads_label(category: str, mapping: dict[str, str]) -> str | None:
    """The label (or ``exclude``) of a BI-RADS category; a sub-category falls back to its digit."""
    return mapping.get(category, mapping.get(category[:1]))


def birads_decision(value, mapping: dict[str, str], where: str, unknown: str) -> tuple[str, str]:
    """(category, label or ``exclude``) of a table's BI-RADS cell ``value``; a ManifestError
    naming ``where`` when the cell holds no category (``unknown``: the message's start, e.g.
    ``"unknown BI-RADS value '7' (expected 1-6)"``) or the map has no entry for it."""
    cat = birads_category(value)
    if cat is None:
        raise ManifestError(f"{where}: {unknown}")
    label = birads_label(cat, mapping)
    if label is None:
        raise ManifestError(f"{where}: BI-RADS {cat} has no entry in the BI-RADS map")
    return cat, label


def birads_rule(mapping: dict[str, str]) -> str:
    """``BI-RADS proxy (not pathology): 1=normal, 2=benign, ...`` for ``label_rule``."""
    body = ", ".join(f"{k}={v}" for k, v in sorted(mapping.items()))
    return f"BI-RADS proxy (assessment, not pathology): {body}"


#: what the VinDr-Mammo and RSNA summaries tell their users about reading the pixels (the
#: pixels helper's wording)
WINDOWING_NOTE = (
    "Pixels: these are digital mammograms whose DICOM headers carry their display window "
    "(WindowCenter / WindowWidth, VOILUTFunction; some files a VOI LUT, some MONOCHROME1). "
    "`featmammo extract` reads them with `--windowing auto` (the default): each file's own VOI "
    "LUT or first window, else its stored range; MONOCHROME1 inverted; what was applied is "
    "recorded per image (meta `windowing_applied`). `--windowing none` would embed the raw stored "
    "values instead."
)


def side_files(output) -> tuple[Path, Path]:
    """``(<stem>.summary.json, <stem>.unresolved.csv)`` beside the manifest ``output``."""
    out = Path(output)
    return out.with_name(out.stem + ".summary.json"), out.with_name(out.stem + ".unresolved.csv")


def reason_counts(unresolved: Iterable[dict], kind=None) -> dict[str, int]:
    """Unresolved reasons counted (``kind`` maps a reason to its category; default: itself)."""
    kind = kind or (lambda r: r)
    return dict(Counter(kind(u["reason"]) for u in unresolved).most_common())


def summarize(
    df: pd.DataFrame,
    *,
    root,
    source: str,
    label_rule: str,
    unresolved: list[dict],
    notes: Iterable[str] = (),
    reason_kind=None,
    **extra,
) -> dict:
    """The summary every builder returns (see the module docstring); ``extra`` keys are added.

    Runs the leakage audit (:func:`featmammo.splits.audit`) on ``df``; its dict is under
    ``audit``. Logs a warning when rows are unresolved.
    """
    from featmammo.splits import audit

    report = audit(df) if len(df) else None
    summary = {
        "root": str(root),
        "source": source,
        "label_rule": label_rule,
        "images": int(len(df)),
        "patients": int(df["patient_id"].nunique()) if len(df) else 0,
        "labels": {k: int(v) for k, v in df["label"].value_counts().sort_index().items()},
        "splits": {k: int(v) for k, v in df["split"].value_counts().sort_index().items()},
        **extra,
        "unresolved": len(unresolved),
        "unresolved_reasons": reason_counts(unresolved, reason_kind),
        "unresolved_rows": unresolved,
        "notes": list(notes),
        "audit": report.to_dict() if report is not None else {},
    }
    if unresolved:
        u = unresolved[0]
        log.warning(
            "%s: %d row(s) unresolved (listed in the summary), e.g. %s: %s",
            root,
            len(unresolved),
            u.get("image_id") or u.get("where", ""),
            u["reason"],
        )
    return summary


def save(df: pd.DataFrame, summary: dict, output) -> dict[str, str]:
    """Write the manifest ``output``, ``<stem>.summary.json`` and, when rows are unresolved,
    ``<stem>.unresolved.csv`` (a stale one is removed). Returns the three paths written."""
    from featmammo.atomic import atomic_write
    from featmammo.datasets.manifest import write_manifest

    write_manifest(df, output)
    summary_path, unresolved_path = side_files(output)
    payload = json.dumps(summary, indent=2, default=str).encode("utf-8")
    try:
        atomic_write(summary_path, lambda f: f.write(payload))
        rows = summary.get("unresolved_rows") or []
        if rows:
            fields = _fieldnames(rows)
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in fields} for r in rows)
            table = buf.getvalue().encode("utf-8")
            atomic_write(unresolved_path, lambda f: f.write(table))
        elif unresolved_path.exists():
            unresolved_path.unlink()
    except OSError as exc:
        raise ManifestError(f"{summary_path}: cannot write ({exc.strerror or exc})") from exc
    return {
        "manifest": str(output),
        "summary_json": str(summary_path),
        "unresolved_csv": str(unresolved_path) if summary.get("unresolved_rows") else "",
    }


def _fieldnames(rows: list[dict]) -> list[str]:
    first = ["image_id"]
    seen = dict.fromkeys(first)
    for r in rows:
        for k in r:
            seen.setdefault(k)
    fields = list(seen)
    return [f for f in fields if f != "reason"] + ["reason"]


def format_summary(summary: dict, output, max_rows: int = 10, lines: Iterable[str] = ()) -> str:
    """The text a ``featmammo manifest`` command prints: where, counts, notes, set-specific
    ``lines`` (already formatted), then the unresolved rows (up to ``max_rows``)."""
    out = [f"manifest   {output}"]
    out.append(f"root       {summary['root']}  (source {summary['source']})")
    for note in summary.get("notes", []):
        out.append(f"note       {note}")
    out.append(f"label rule {summary['label_rule']}")
    out.append(f"images     {summary['images']}; patients {summary['patients']}")
    out.append("labels     " + ", ".join(f"{k} {v}" for k, v in summary["labels"].items()))
    out.append(
        "splits     " + ", ".join(f"{k or '(none)'} {v}" for k, v in summary["splits"].items())
    )
    out.extend(lines)
    out.extend(format_unresolved(summary, max_rows))
    return "\n".join(out)


def format_unresolved(summary: dict, max_rows: int = 10) -> list[str]:
    n = summary["unresolved"]
    if not n:
        return ["unresolved 0"]
    out = [
        f"unresolved {n} row(s): "
        + "; ".join(f"{k} x{v}" for k, v in summary["unresolved_reasons"].items())
    ]
    for u in summary["unresolved_rows"][:max_rows]:
        who = u.get("subject") or u.get("image_id") or ""
        where = u.get("csv") or u.get("where") or ""
        out.append(f"           {who} ({where}): {u['reason']}")
    if n > max_rows:
        out.append(f"           ... {n - max_rows} more in the unresolved CSV")
    return out


def format_audit(summary: dict) -> str:
    """The leakage audit stored in ``summary["audit"]``, as :meth:`AuditReport.format` prints it
    (rebuilt from the dict: the audit is not run twice)."""
    import dataclasses

    from featmammo.splits import AuditReport

    d = summary.get("audit") or {}
    if not d:
        return "Leakage audit: no rows"
    names = {f.name for f in dataclasses.fields(AuditReport)}
    return AuditReport(**{k: v for k, v in d.items() if k in names}).format()
