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

import csv
import io
import json
import logging
import os
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


def abs_root(root, what: str) -> Path:
    """``root`` absolute (manifest paths must not depend on the cwd), ``~`` expanded, ``..``
    removed lexically, symlinks kept. Raises ManifestError when it is not a folder."""
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    if not path.is_dir():
        raise ManifestError(f"{path}: {what} root is not a folder")
    return path


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
