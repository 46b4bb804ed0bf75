"""INbreast manifests: ``AllDICOMs/<file id>_<hash>_MG_<L|R>_<CC|ML>_ANON.dcm`` + ``INbreast.xls``
(or a ``.csv`` export, often ``;``-separated) + ``AllXML/<file id>.xml`` lesion outlines.

Rules (documented choices):

- One row per table row with a ``File Name``; the DICOM is found by that file id (the number
  before the first ``_`` of the DICOM's name), anywhere under ROOT. A row whose DICOM is missing is
  an unresolved row; DICOMs without a table row are counted in the summary.
- Labels are a BI-RADS **proxy** (INbreast has no pathology for most images): by default
  1 -> normal, 2-3 -> benign, 4 (4a/4b/4c) -> malignant, 5-6 -> malignant; ``birads_map``
  changes any category (``exclude`` drops it; excluded rows are listed in the summary). The rule
  is recorded in ``label_rule`` and the raw category in ``birads``. An unknown BI-RADS value stops
  with the table's file and line.
- ``patient_id``: the table's ``Patient ID`` when it holds one; copies that blank it (or write
  ``removed``) fall back to the hash in the DICOM name, which is shared by one woman's images.
- Laterality from the table (else the file name); view from the table (else the file name), with
  INbreast's ``ML`` spelled ``MLO`` like the other sets (the raw value stays in ``view_raw``).
- ``density`` = the ACR column; ``outline_xml_path`` = ``AllXML/<file id>.xml`` when present.
- No official split (``split`` empty).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from featmammo.datasets.base import (
    abs_root,
    birads_category,
    birads_label,
    birads_rule,
    find_file,
    manifest_frame,
    parse_birads_map,
    read_table,
    summarize,
    walk_files,
)
from featmammo.errors import ManifestError

log = logging.getLogger(__name__)

SOURCE = "inbreast"
TABLE_NAMES = ["INbreast.xls", "INbreast.xlsx", "INbreast.csv"]
EXTRA_COLUMNS = [
    "label_rule",
    "birads",
    "density",
    "view_raw",
    "acquisition_date",
    "outline_xml_path",
]
_DCM_RE = re.compile(
    r"^(?P<id>\d+)_(?P<hash>[0-9a-fA-F]+)_MG_(?P<lat>[LR])_(?P<view>[A-Z]+)", re.IGNORECASE
)
_NO_PATIENT = {"", "removed", "anonymized", "anon", "n/a", "na", "-"}


def _file_id(value: str) -> str:
    v = str(value).strip()
    return v[:-2] if v.endswith(".0") and v[:-2].isdigit() else v


def build_inbreast(root, *, table=None, birads_map=None) -> tuple[pd.DataFrame, dict]:
    """A manifest of an INbreast folder: (DataFrame, summary). ``table``: the xls/xlsx/csv
    (default: found under ``root`` by name); ``birads_map``: see :func:`parse_birads_map`."""
    root = abs_root(root, "INbreast")
    mapping = parse_birads_map(birads_map)
    rule = birads_rule(mapping)
    t = read_table(find_file(root, TABLE_NAMES, "INbreast table", table), "INbreast table")
    c_file = t.column("File Name", "FileName", "File")
    c_birads = t.column("Bi-Rads", "BIRADS", "Bi-RADS")
    c_pat = t.column("Patient ID", "PatientID", required=False)
    c_lat = t.column("Laterality", required=False)
    c_view = t.column("View", required=False)
    c_acr = t.column("ACR", "density", required=False)
    c_date = t.column("Acquisition date", "date", required=False)

    dicoms: dict[str, Path] = {}
    xmls: dict[str, Path] = {}
    for path in walk_files(root, (".dcm", ".xml")):
        if path.name.lower().endswith(".dcm"):
            m = _DCM_RE.match(path.name)
            dicoms.setdefault(m.group("id") if m else path.name.split("_", 1)[0], path)
        else:
            xmls.setdefault(path.stem, path)

    rows, unresolved, excluded = [], [], []
    for pos, rec in enumerate(t.rows()):
        fid = _file_id(rec[c_file])
        if not fid:
            continue  # blank/total rows at the bottom of the sheet
        where = t.where(pos)
        cat = birads_category(rec[c_birads])
        if cat is None:
            raise ManifestError(
                f"{where}: unknown BI-RADS value {rec[c_birads]!r} for file {fid} "
                "(expected 1-6, 4a/4b/4c)"
            )
        label = birads_label(cat, mapping)
        if label is None:
            raise ManifestError(f"{where}: BI-RADS {cat} has no entry in the BI-RADS map")
        if label == "exclude":
            excluded.append({"image_id": fid, "where": where, "reason": f"BI-RADS {cat} excluded"})
            continue
        path = dicoms.get(fid)
        if path is None:
            unresolved.append(
                {
                    "image_id": fid,
                    "where": where,
                    "reason": f"no DICOM named {fid}_*.dcm under ROOT",
                }
            )
            continue
        m = _DCM_RE.match(path.name)
        patient = rec[c_pat] if c_pat else ""
        if patient.strip().lower() in _NO_PATIENT:
            patient = m.group("hash") if m else ""
        if not patient:
            raise ManifestError(
                f"{where}: no Patient ID and the DICOM name {path.name} carries no patient hash"
            )
        lat = (rec[c_lat] if c_lat else "").upper()[:1] or (m.group("lat").upper() if m else "")
        if lat not in ("L", "R", ""):
            raise ManifestError(f"{where}: unknown laterality {rec[c_lat]!r}")
        view_raw = (rec[c_view] if c_view else "").upper() or (m.group("view").upper() if m else "")
        rows.append(
            {
                "image_id": fid,
                "path": str(path),
                "label": label,
                "patient_id": patient,
                "laterality": lat,
                "view": "MLO" if view_raw == "ML" else view_raw,
                "split": "",
                "source": SOURCE,
                "label_rule": rule,
                "birads": cat,
                "density": rec[c_acr] if c_acr else "",
                "view_raw": view_raw,
                "acquisition_date": rec[c_date] if c_date else "",
                "outline_xml_path": str(xmls[fid]) if fid in xmls else "",
            }
        )
    listed = {r["image_id"] for r in rows} | {u["image_id"] for u in unresolved}
    listed |= {e["image_id"] for e in excluded}
    not_in_table = sorted(set(dicoms) - listed)
    df = manifest_frame(rows, EXTRA_COLUMNS)
    if df.empty:
        raise ManifestError(
            f"{root}: no INbreast image resolved ({len(unresolved)} table rows without a DICOM, "
            f"{len(excluded)} excluded; {len(dicoms)} DICOMs under ROOT)"
        )
    summary = summarize(
        df,
        root=root,
        source=SOURCE,
        label_rule=rule,
        unresolved=unresolved,
        notes=["labels are a BI-RADS proxy (assessment category), not biopsy results"]
        + (
            [f"{len(not_in_table)} DICOM(s) without a table row (not in the manifest)"]
            if not_in_table
            else []
        ),
        table=str(t.path),
        birads_map=mapping,
        excluded=excluded,
        dicoms_not_in_table=not_in_table,
    )
    return df, summary
