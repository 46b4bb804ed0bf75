"""VinDr-Mammo manifests: ``images/<study_id>/<image_id>.dicom`` + ``breast-level_annotations.csv``
(+ ``finding_annotations.csv`` when present).

Rules (documented choices):

- One row per row of ``breast-level_annotations.csv``; the image is
  ``images/<study_id>/<image_id>.dicom`` (``.dcm`` accepted), else found by its image id anywhere
  under ROOT. A row whose image is missing is an unresolved row with the reason.
- Labels are a BI-RADS **proxy** (VinDr-Mammo has no biopsy results): ``breast_birads`` 1 ->
  normal, 2-3 -> benign, 4-5 -> malignant unless ``birads_map`` says otherwise (``exclude`` drops a
  category; the rows are listed). The rule is in ``label_rule``, the raw category in ``birads``.
  An unknown BI-RADS value stops with the file and line.
- Official split kept: ``training`` -> ``train``, ``test`` -> ``test``.
- ``patient_id`` = ``study_id``: VinDr-Mammo publishes no patient id, and each study is one
  woman's four-view exam (a woman with two studies could then sit on both sides of a split:
  unconfirmed, said in the summary).
- Extras: ``study_id``, ``series_id``, ``birads``, ``density`` (``A``-``D``), ``height``,
  ``width`` and ``finding_categories`` (from ``finding_annotations.csv``, ``;``-joined, when
  present). Some images are MONOCHROME1: the DICOM reader inverts them.
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

SOURCE = "vindr-mammo"
SPLITS = {"training": "train", "train": "train", "test": "test"}
EXTRA_COLUMNS = [
    "label_rule",
    "birads",
    "density",
    "study_id",
    "series_id",
    "height",
    "width",
    "finding_categories",
]


def _findings(path: Path | None) -> dict[str, list[str]]:
    if path is None:
        return {}
    t = read_table(path, "VinDr finding_annotations.csv")
    c_img = t.column("image_id")
    c_cat = t.column("finding_categories", required=False)
    out: dict[str, list[str]] = {}
    if c_cat is None:
        return out
    for rec in t.rows():
        cats = re.findall(r"'([^']+)'|\"([^\"]+)\"", rec[c_cat]) or [("", rec[c_cat])]
        for a, b in cats:
            name = (a or b).strip("[] ")
            if name and name not in out.setdefault(rec[c_img], []):
                out[rec[c_img]].append(name)
    return out


def build_vindr(root, *, annotations=None, birads_map=None) -> tuple[pd.DataFrame, dict]:
    """A manifest of a VinDr-Mammo folder: (DataFrame, summary). ``annotations``: the
    ``breast-level_annotations.csv`` (default: found under ``root``)."""
    root = abs_root(root, "VinDr-Mammo")
    mapping = parse_birads_map(birads_map)
    rule = birads_rule(mapping)
    t = read_table(
        find_file(root, ["breast-level_annotations.csv"], "VinDr annotations", annotations),
        "VinDr breast-level annotations",
    )
    c_study, c_img = t.column("study_id"), t.column("image_id")
    c_series = t.column("series_id", required=False)
    c_lat, c_view = t.column("laterality"), t.column("view_position", "view")
    c_birads = t.column("breast_birads", "birads")
    c_den = t.column("breast_density", "density", required=False)
    c_split = t.column("split")  # the official split is part of the set: never dropped silently
    c_h, c_w = t.column("height", required=False), t.column("width", required=False)
    try:
        findings_csv = find_file(t.path.parent, ["finding_annotations.csv"], "findings")
    except ManifestError:
        findings_csv = None
    findings = _findings(findings_csv)

    by_id: dict[str, Path] = {}
    for path in walk_files(root, (".dicom", ".dcm")):
        by_id.setdefault(path.stem, path)

    rows, unresolved, excluded = [], [], []
    for pos, rec in enumerate(t.rows()):
        where = t.where(pos)
        image_id, study = rec[c_img], rec[c_study]
        if not image_id or not study:
            raise ManifestError(f"{where}: empty study_id or image_id")
        cat = birads_category(rec[c_birads])
        if cat is None:
            raise ManifestError(
                f"{where}: unknown breast_birads {rec[c_birads]!r} (expected 'BI-RADS 1'..'5')"
            )
        label = birads_label(cat, mapping)
        if label is None:
            raise ManifestError(f"{where}: BI-RADS {cat} has no entry in the BI-RADS map")
        if label == "exclude":
            excluded.append(
                {"image_id": image_id, "where": where, "reason": f"BI-RADS {cat} excluded"}
            )
            continue
        split_raw = rec[c_split].lower() if c_split else ""
        if split_raw and split_raw not in SPLITS:
            raise ManifestError(f"{where}: unknown split {rec[c_split]!r} (training or test)")
        lat = rec[c_lat].upper()[:1]
        if lat not in ("L", "R"):
            raise ManifestError(f"{where}: unknown laterality {rec[c_lat]!r}")
        path = None
        for ext in (".dicom", ".dcm"):
            cand = root / "images" / study / f"{image_id}{ext}"
            if cand.is_file():
                path = cand
                break
        path = path or by_id.get(image_id)
        if path is None:
            unresolved.append(
                {
                    "image_id": image_id,
                    "where": where,
                    "reason": f"images/{study}/{image_id}.dicom not found under ROOT",
                }
            )
            continue
        rows.append(
            {
                "image_id": image_id,
                "path": str(path),
                "label": label,
                "patient_id": study,
                "laterality": lat,
                "view": rec[c_view].upper(),
                "split": SPLITS.get(split_raw, ""),
                "source": SOURCE,
                "label_rule": rule,
                "birads": cat,
                "density": (rec[c_den] if c_den else "").upper().replace("DENSITY", "").strip(),
                "study_id": study,
                "series_id": rec[c_series] if c_series else "",
                "height": rec[c_h] if c_h else "",
                "width": rec[c_w] if c_w else "",
                "finding_categories": ";".join(findings.get(image_id, [])),
            }
        )
    df = manifest_frame(rows, EXTRA_COLUMNS)
    if df.empty:
        raise ManifestError(
            f"{root}: no VinDr-Mammo image resolved ({len(unresolved)} rows without an image, "
            f"{len(excluded)} excluded; {len(by_id)} .dicom files under ROOT)"
        )
    summary = summarize(
        df,
        root=root,
        source=SOURCE,
        label_rule=rule,
        unresolved=unresolved,
        notes=[
            "labels are a BI-RADS proxy (assessment category), not biopsy results",
            "patient_id = study_id (VinDr-Mammo publishes no patient id)",
        ],
        annotations=str(t.path),
        findings=str(findings_csv) if findings_csv else "",
        birads_map=mapping,
        excluded=excluded,
    )
    return df, summary
