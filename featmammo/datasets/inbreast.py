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
- ``exam_id``: ``<patient>:<acquisition date>`` when the table gives the date, else the patient.
- Lesion outlines (``mask_dir``): the XML is an Apple plist; every dict holding ``Point_px`` is
  one ROI (its ``Name``: ``Mass``, ``Calcification``, ``Cluster``, ``Distortion``, ...), its
  points ``"(x, y)"`` strings in pixels (x = column). ROIs are filled into one mask per kind,
  ``<mask_dir>/<file id>.<kind>.png`` with kind ``mass`` (names with "mass"), ``calcification``
  (names with "calc" or "cluster"; a calcification marked by one or two points becomes a disk of
  :data:`~featmammo.datasets.masks.POINT_RADIUS` pixels) or ``other`` (distortion, asymmetry,
  ...), at the DICOM's size (read from its header). ``roi_mask_path`` = the mass mask, else the
  calcification one, else other; ``roi_mask_paths`` all; ``roi_kinds`` lists them; ROI names
  are counted in the summary (``roi_names``). An unreadable XML, an unparsable point or a DICOM
  header without a size is a ``mask_errors`` entry (the row stays, without that mask).
- A table row cut short (a truncated CSV export) is listed as unresolved, never padded; rows
  with no file id, or with neither BI-RADS nor laterality nor view (the sheet's trailing
  totals/notes rows), are skipped and, when not blank, listed in ``skipped_rows``.
- No official split (``split`` empty).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from featmammo.datasets.base import (
    abs_root,
    birads_decision,
    birads_rule,
    find_file,
    manifest_frame,
    parse_birads_map,
    read_table,
    summarize,
    walk_files,
)
from featmammo.datasets.masks import (
    MaskGeometryError,
    MaskWriter,
    mask_notes,
    no_masks_summary,
    polygon_mask,
)
from featmammo.errors import ManifestError

log = logging.getLogger(__name__)

SOURCE = "inbreast"
TABLE_NAMES = ["INbreast.xls", "INbreast.xlsx", "INbreast.csv"]
EXTRA_COLUMNS = [
    "label_rule",
    "exam_id",
    "birads",
    "density",
    "view_raw",
    "acquisition_date",
    "outline_xml_path",
    "roi_kinds",
    "roi_mask_path",
    "roi_mask_paths",
]
ROI_KINDS = ("mass", "calcification", "other")
_DCM_RE = re.compile(
    r"^(?P<id>\d+)_(?P<hash>[0-9a-fA-F]+)_MG_(?P<lat>[LR])_(?P<view>[A-Z]+)", re.IGNORECASE
)
_NO_PATIENT = {"", "removed", "anonymized", "anon", "n/a", "na", "-"}


def _file_id(value: str) -> str:
    v = str(value).strip()
    return v[:-2] if v.endswith(".0") and v[:-2].isdigit() else v


def roi_kind(name: str) -> str:
    """``mass``, ``calcification`` or ``other`` for an INbreast ROI name."""
    low = str(name).lower()
    if "mass" in low:
        return "mass"
    if "calc" in low or "cluster" in low:
        return "calcification"
    return "other"


def read_rois(path) -> list[dict]:
    """The ROIs of an INbreast XML (Apple plist): ``[{"name", "kind", "points": (N, 2) float
    array of (x, y)}]``, from every dict holding ``Point_px``. Raises ManifestError naming the file
    when it is not a readable plist or a point is not an ``"(x, y)"`` pair."""
    import plistlib
    import xml.parsers.expat

    p = Path(path)
    try:
        with open(p, "rb") as f:
            doc = plistlib.load(f)
    except (
        OSError,
        ValueError,
        plistlib.InvalidFileException,
        xml.parsers.expat.ExpatError,
    ) as exc:
        raise ManifestError(f"{p}: not a readable INbreast XML (plist) ({exc})") from None
    rois: list[dict] = []
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "Point_px" in item:
                name = str(item.get("Name", ""))
                pts = []
                for k, text in enumerate(item.get("Point_px") or []):
                    m = _POINT_RE.fullmatch(str(text).strip())
                    if m is None:
                        raise ManifestError(
                            f"{p}: ROI {name or len(rois) + 1!r}: point {k + 1} is {text!r}, "
                            "not '(x, y)'"
                        )
                    pts.append((float(m.group(1)), float(m.group(2))))
                rois.append({"name": name, "kind": roi_kind(name), "points": np.array(pts)})
            else:
                stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return rois


_POINT_RE = re.compile(r"\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*(?:,[^)]*)?\)")


def _image_masks(fid, dcm: Path, xml: Path | None, writer, roi_names: Counter) -> dict:
    """{kind: mask path} for one image (empty when there is no XML or no writer)."""
    if writer is None or xml is None:
        return {}
    try:
        rois = read_rois(xml)
    except ManifestError as exc:
        writer.error(fid, str(exc))
        return {}
    roi_names.update(r["name"] or "(no name)" for r in rois)
    by_kind = {
        k: [r["points"] for r in rois if r["kind"] == k and len(r["points"])] for k in ROI_KINDS
    }
    size: list = []

    def shape():
        if not size:
            from featmammo.errors import ImageReadError
            from featmammo.io import read_dicom_header

            try:
                meta = read_dicom_header(dcm)
            except ImageReadError as exc:
                raise MaskGeometryError(f"image size unknown ({exc})") from None
            if not meta.get("rows") or not meta.get("cols"):
                raise MaskGeometryError(f"{dcm.name}: no Rows/Columns in the DICOM header")
            size.append((int(meta["rows"]), int(meta["cols"])))
        return size[0]

    out = {}
    for kind, polys in by_kind.items():
        if polys:
            path = writer.write(
                f"{fid}.{kind}.png", lambda polys=polys: polygon_mask(polys, shape()),
                key=lambda polys=polys: {"polygons": [p.tolist() for p in polys],
                                         "shape": shape()},
                image_id=fid, what=f"{xml.name} {kind}",
            )  # fmt: skip
            if path:
                out[kind] = path
    return out


def build_inbreast(
    root, *, table=None, birads_map=None, mask_dir=None
) -> tuple[pd.DataFrame, dict]:
    """A manifest of an INbreast folder: (DataFrame, summary). ``table``: the xls/xlsx/csv
    (default: found under ``root`` by name); ``birads_map``: see :func:`parse_birads_map`;
    ``mask_dir``: where the XML outlines are written as ROI mask PNGs (None: no masks)."""
    root = abs_root(root, "INbreast")
    writer = MaskWriter(mask_dir) if mask_dir is not None else None
    roi_names: Counter = Counter()
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
    # rows cut short: listed, unless they hold no file id (the sheet's totals/notes rows)
    unresolved.extend(u for u in t.cut_rows(c_file) if _file_id(u["image_id"]))
    skipped: list[dict] = []
    for pos, rec in enumerate(t.rows()):
        with t.last_row_guard(pos, unresolved, _file_id(rec[c_file])):
            fid = _file_id(rec[c_file])
            where = t.where(pos)
            if not fid or not any(rec[c] for c in (c_birads, c_lat, c_view) if c):
                # blank/totals/notes rows at the bottom of the sheet: no image row has neither
                # a BI-RADS nor a laterality nor a view
                if any(rec.values()):
                    skipped.append({"where": where, "reason": "not an image row (totals/notes)"})
                continue
            cat, label = birads_decision(
                rec[c_birads], mapping, where,
                f"unknown BI-RADS value {rec[c_birads]!r} for file {fid} (expected 1-6, 4a/4b/4c)",
            )  # fmt: skip
            if label == "exclude":
                excluded.append(
                    {"image_id": fid, "where": where, "reason": f"BI-RADS {cat} excluded"}
                )
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
            view_raw = (rec[c_view] if c_view else "").upper() or (
                m.group("view").upper() if m else ""
            )
            date = rec[c_date] if c_date else ""
            masks = _image_masks(fid, path, xmls.get(fid), writer, roi_names)
            primary = next((masks[k] for k in ROI_KINDS if k in masks), "")
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
                    "exam_id": f"{patient}:{date}" if date else patient,
                    "birads": cat,
                    "density": rec[c_acr] if c_acr else "",
                    "view_raw": view_raw,
                    "acquisition_date": date,
                    "outline_xml_path": str(xmls[fid]) if fid in xmls else "",
                    "roi_kinds": ";".join(masks),
                    "roi_mask_path": primary,
                    "roi_mask_paths": ";".join(masks.values()),
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
    masks = writer.summary() if writer is not None else no_masks_summary()
    summary = summarize(
        df,
        root=root,
        source=SOURCE,
        label_rule=rule,
        unresolved=unresolved,
        notes=[
            "labels are a BI-RADS proxy (assessment category), not biopsy results",
        ]
        + (
            [f"{len(not_in_table)} DICOM(s) without a table row (not in the manifest)"]
            if not_in_table
            else []
        )
        + mask_notes(masks)
        + t.notes,
        table=str(t.path),
        birads_map=mapping,
        excluded=excluded,
        skipped_rows=skipped,
        dicoms_not_in_table=not_in_table,
        xml_files=len(xmls),
        images_with_masks=int((df["roi_mask_path"] != "").sum()),
        roi_names=dict(roi_names.most_common()),
        **masks,
    )
    return df, summary
