"""CMMD (Chinese Mammography Database, TCIA) manifests: DICOMs in a TCIA tree
(``CMMD/<ID1>/<study>/<series>/1-1.dcm``) + ``CMMD_clinicaldata_revision.xlsx`` (or a CSV export).

Rules (documented choices):

- The clinical table has one row per breast (``ID1``, ``LeftRight``, ``classification``
  Benign/Malignant, ``abnormality``, ``subtype``, ``Age``, ``number``). An unknown classification or
  side stops with the file and line.
- Every DICOM under ROOT is one image. Its patient is the first folder of its path that is an
  ``ID1`` of the table (else the header's PatientID); its side comes from the DICOM header
  (``ImageLaterality``, else ``Laterality``), never from the file name; its view from
  ``ViewPosition`` (else ``ViewCodeSequence``). The header is read without decoding pixels.
- The image's label is its breast's ``classification``. An image whose breast has no clinical
  row is an unresolved row (not assumed normal); a clinical row without any image is an
  unresolved row; an unreadable DICOM or one without a side in its header too.
- ``exam_id`` = ``ID1`` (one exam per patient). A clinical row cut short (a truncated CSV
  export) is listed (unresolved), and its breast's images say so, never padded.
- ``image_id`` = ``<ID1>_<side>_<view>`` (``_2``, ``_3``... when a breast view has several
  files, in path order). No official split (``split`` empty).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd

from featmammo.datasets.base import (
    abs_root,
    find_file,
    manifest_frame,
    read_table,
    summarize,
    walk_files,
)
from featmammo.errors import ManifestError

log = logging.getLogger(__name__)

SOURCE = "cmmd"
TABLE_NAMES = [
    "CMMD_clinicaldata_revision.xlsx",
    "CMMD_clinicaldata_revision.csv",
    "CMMD_clinicaldata.xlsx",
    "CMMD_clinicaldata.csv",
]
CLASSIFICATIONS = {"benign": "benign", "malignant": "malignant"}
LABEL_RULE = "clinical classification of the image's breast (Benign/Malignant; biopsy-based)"
EXTRA_COLUMNS = [
    "label_rule",
    "exam_id",
    "abnormality",
    "subtype",
    "age",
    "number",
    "study_uid",
    "series_uid",
]
HEADER_TAGS = [
    "PatientID",
    "ImageLaterality",
    "Laterality",
    "ViewPosition",
    "ViewCodeSequence",
    "StudyInstanceUID",
    "SeriesInstanceUID",
]
_VIEW_MEANINGS = {"cranio-caudal": "CC", "medio-lateral oblique": "MLO", "medio-lateral": "ML"}


def _header(path: Path) -> dict:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    lat = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "").strip().upper()
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if not view:
        for item in ds.get("ViewCodeSequence", []) or []:
            meaning = str(getattr(item, "CodeMeaning", "")).strip().lower()
            view = _VIEW_MEANINGS.get(meaning, "")
    return {
        "patient_id": str(ds.get("PatientID", "") or "").strip(),
        "laterality": lat[:1],
        "view": view,
        "study_uid": str(ds.get("StudyInstanceUID", "") or ""),
        "series_uid": str(ds.get("SeriesInstanceUID", "") or ""),
    }


def build_cmmd(root, *, table=None) -> tuple[pd.DataFrame, dict]:
    """A manifest of a CMMD download: (DataFrame, summary). ``table``: the clinical xlsx/csv
    (default: found under ``root``, else beside it)."""
    root = abs_root(root, "CMMD")
    if table is None:
        try:
            table = find_file(root, TABLE_NAMES, "CMMD clinical table")
        except ManifestError:
            table = find_file(
                root.parent, TABLE_NAMES, "CMMD clinical table (under or beside ROOT)"
            )
    t = read_table(table, "CMMD clinical table")
    c_id, c_side = t.column("ID1", "ID"), t.column("LeftRight", "Left Right", "side")
    c_cls = t.column("classification")
    c_abn = t.column("abnormality", required=False)
    c_sub = t.column("subtype", required=False)
    c_age = t.column("Age", required=False)
    c_num = t.column("number", required=False)
    breasts: dict[tuple[str, str], dict] = {}
    unresolved = t.cut_rows(c_id)
    # a breast whose clinical row was cut short: its images say so instead of "no clinical row"
    ci, cs = list(t.df.columns).index(c_id), list(t.df.columns).index(c_side)
    cut = {
        (r["cells"][ci], r["cells"][cs].upper()[:1]): f"{t.path}: line {r['line']}"
        for r in t.short_rows
        if len(r["cells"]) > max(ci, cs)
    }
    for pos, rec in enumerate(t.rows()):
        with t.last_row_guard(pos, unresolved, rec[c_id]):
            where = t.where(pos)
            pid = rec[c_id]
            if not pid:
                continue
            side = rec[c_side].upper()[:1]
            if side not in ("L", "R"):
                raise ManifestError(f"{where}: unknown LeftRight {rec[c_side]!r} (expected L or R)")
            label = CLASSIFICATIONS.get(rec[c_cls].strip().lower())
            if label is None:
                raise ManifestError(
                    f"{where}: unknown classification {rec[c_cls]!r} (expected Benign or Malignant)"
                )
            if (pid, side) in breasts:
                raise ManifestError(
                    f"{where}: second row for {pid} side {side} "
                    f"(first at line {breasts[(pid, side)]['line']})"
                )
            breasts[(pid, side)] = {
                "label": label,
                "where": where,
                "line": t.lines[pos],
                "abnormality": rec[c_abn] if c_abn else "",
                "subtype": rec[c_sub] if c_sub else "",
                "age": rec[c_age] if c_age else "",
                "number": rec[c_num] if c_num else "",
            }
    if not breasts:
        raise ManifestError(f"{t.path}: no usable clinical row with an ID1")
    ids = {pid for pid, _ in breasts} | {pid for pid, _ in cut}

    dicoms = list(walk_files(root, (".dcm",)))
    rows = []
    seen_breasts: set[tuple[str, str]] = set()
    for path in dicoms:
        where = str(path)
        try:
            h = _header(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is listed, never a crash
            unresolved.append(
                {"image_id": "", "where": where, "reason": f"unreadable DICOM header ({exc})"}
            )
            continue
        rel = path.relative_to(root).parts
        pid = next((p for p in rel[:-1] if p in ids), h["patient_id"])
        if h["laterality"] not in ("L", "R"):
            unresolved.append(
                {
                    "image_id": "",
                    "where": where,
                    "reason": "no ImageLaterality/Laterality in header",
                }
            )
            continue
        breast = breasts.get((pid, h["laterality"]))
        if breast is None:
            cut_at = cut.get((pid, h["laterality"]))
            unresolved.append(
                {
                    "image_id": "",
                    "where": where,
                    "reason": (
                        f"no clinical row for {pid or '(no patient id)'} side "
                        f"{h['laterality']} (not assumed normal)"
                        if cut_at is None
                        else f"no clinical row for {pid} side {h['laterality']}: its row at "
                        f"{cut_at} is cut short (not assumed normal)"
                    ),
                }
            )
            continue
        seen_breasts.add((pid, h["laterality"]))
        rows.append(
            {
                "image_id": f"{pid}_{h['laterality']}_{h['view'] or 'NA'}",
                "path": str(path),
                "label": breast["label"],
                "patient_id": pid,
                "laterality": h["laterality"],
                "view": h["view"],
                "split": "",
                "source": SOURCE,
                "label_rule": LABEL_RULE,
                "exam_id": pid,
                "abnormality": breast["abnormality"],
                "subtype": breast["subtype"],
                "age": breast["age"],
                "number": breast["number"],
                "study_uid": h["study_uid"],
                "series_uid": h["series_uid"],
            }
        )
    counts = Counter(r["image_id"] for r in rows)
    nth: dict[str, int] = defaultdict(int)
    for r in rows:
        if counts[r["image_id"]] > 1:
            nth[r["image_id"]] += 1
            if nth[r["image_id"]] > 1:
                r["image_id"] = f"{r['image_id']}_{nth[r['image_id']]}"
    for key in sorted(set(breasts) - seen_breasts):
        b = breasts[key]
        unresolved.append(
            {
                "image_id": f"{key[0]}_{key[1]}",
                "where": b["where"],
                "reason": f"no DICOM of {key[0]} side {key[1]} under ROOT",
            }
        )
    df = manifest_frame(rows, EXTRA_COLUMNS)
    if df.empty:
        raise ManifestError(
            f"{root}: no CMMD image resolved ({len(dicoms)} DICOMs, {len(breasts)} clinical "
            f"rows, {len(unresolved)} unresolved)"
        )
    summary = summarize(
        df,
        root=root,
        source=SOURCE,
        label_rule=LABEL_RULE,
        unresolved=unresolved,
        notes=[
            "side from the DICOM header; breasts without a clinical row are not labelled",
        ]
        + t.notes,
        reason_kind=_reason_kind,
        table=str(t.path),
        clinical_rows=len(breasts),
        dicom_files=len(dicoms),
    )
    return df, summary


def _reason_kind(reason: str) -> str:
    if reason.startswith("no clinical row"):
        return "image without a clinical row"
    if reason.startswith("no DICOM of"):
        return "clinical row without an image"
    if reason.startswith("unreadable"):
        return "unreadable DICOM"
    return reason
