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
- ``exam_id`` = ``study_id`` (one study = one four-view exam).
- Extras: ``study_id``, ``series_id``, ``birads``, ``density`` (``A``-``D``), ``height``,
  ``width`` and ``finding_categories`` (from ``finding_annotations.csv``, ``;``-joined, when
  present). Some images are MONOCHROME1: the DICOM reader inverts them.
- Finding boxes (``mask_dir``): every ``finding_annotations.csv`` row with a box
  (``xmin``/``ymin``/``xmax``/``ymax``, pixels, x = column) becomes a box mask
  ``<mask_dir>/<image_id>.<k>.png`` of the image's size (``height``/``width`` of the annotation
  tables, else the DICOM header); ``roi_mask_path`` = the finding with the highest
  ``finding_birads`` (the first on a tie), ``roi_mask_paths`` all, ``n_boxes`` their number. A
  box with a missing or reversed coordinate, or outside the image, is a ``mask_errors`` entry.
- A table row cut short (a truncated download) is listed (unresolved), never padded.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from featmammo.datasets.base import (
    WINDOWING_NOTE,
    abs_root,
    birads_category,
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
    box_mask,
    mask_notes,
    no_masks_summary,
)
from featmammo.errors import ManifestError

log = logging.getLogger(__name__)

SOURCE = "vindr-mammo"
SPLITS = {"training": "train", "train": "train", "test": "test"}
EXTRA_COLUMNS = [
    "label_rule",
    "exam_id",
    "birads",
    "density",
    "study_id",
    "series_id",
    "height",
    "width",
    "finding_categories",
    "n_boxes",
    "roi_mask_path",
    "roi_mask_paths",
]


def _findings(t) -> tuple[dict[str, list[str]], dict[str, list[dict]]]:
    """(categories per image, boxes per image: ``{"box", "birads", "line", "height", "width"}``)
    from ``finding_annotations.csv``; rows without a box (``No Finding``) give categories only."""
    if t is None:
        return {}, {}
    c_img = t.column("image_id")
    c_cat = t.column("finding_categories", required=False)
    c_bir = t.column("finding_birads", required=False)
    c_box = [t.column(c, required=False) for c in ("xmin", "ymin", "xmax", "ymax")]
    c_h, c_w = t.column("height", required=False), t.column("width", required=False)
    cats: dict[str, list[str]] = {}
    boxes: dict[str, list[dict]] = {}
    for pos, rec in enumerate(t.rows()):
        image_id = rec[c_img]
        if c_cat is not None:
            found = re.findall(r"'([^']+)'|\"([^\"]+)\"", rec[c_cat]) or [("", rec[c_cat])]
            for a, b in found:
                name = (a or b).strip("[] ")
                if name and name not in cats.setdefault(image_id, []):
                    cats[image_id].append(name)
        if all(c_box) and any(rec[c] for c in c_box):
            boxes.setdefault(image_id, []).append(
                {
                    "box": tuple(_float(rec[c]) for c in c_box),
                    "birads": birads_category(rec[c_bir]) if c_bir else None,
                    "line": t.lines[pos],
                    "height": rec[c_h] if c_h else "",
                    "width": rec[c_w] if c_w else "",
                }
            )
    return cats, boxes


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _box_masks(image_id, path, shape_cells, found: list[dict], writer, findings_csv) -> list[str]:
    if writer is None or not found:
        return []
    size: list = []

    def shape():
        if not size:
            size.append(_image_size(path, shape_cells))
        return size[0]

    return [
        writer.write(
            f"{image_id}.{k}.png",
            lambda f=f: box_mask([f["box"]], shape()),
            key=lambda f=f: {"box": list(f["box"]), "shape": shape()},
            image_id=image_id,
            what=f"{findings_csv.name} line {f['line']}",
        )  # fmt: skip
        for k, f in enumerate(found, start=1)
    ]


def _image_size(path: Path, cells) -> tuple[int, int]:
    """(rows, columns) from the annotation tables' height/width, else the DICOM header."""
    for h, w in cells:
        try:
            hh, ww = int(float(h)), int(float(w))
        except (TypeError, ValueError):
            continue
        if hh > 0 and ww > 0:
            return hh, ww
    from featmammo.errors import ImageReadError
    from featmammo.io import read_dicom_header

    try:
        meta = read_dicom_header(path)
    except ImageReadError as exc:
        raise MaskGeometryError(f"image size unknown ({exc})") from None
    if not meta.get("rows") or not meta.get("cols"):
        raise MaskGeometryError(f"{path.name}: no height/width and no Rows/Columns")
    return int(meta["rows"]), int(meta["cols"])


def _rank(f: dict) -> tuple:
    b = f["birads"] or ""
    return (int(b[0]) if b[:1].isdigit() else -1, b[1:])


def build_vindr(
    root, *, annotations=None, birads_map=None, mask_dir=None
) -> tuple[pd.DataFrame, dict]:
    """A manifest of a VinDr-Mammo folder: (DataFrame, summary). ``annotations``: the
    ``breast-level_annotations.csv`` (default: found under ``root``); ``mask_dir``: where the
    finding boxes are written as ROI mask PNGs (None: no masks)."""
    root = abs_root(root, "VinDr-Mammo")
    writer = MaskWriter(mask_dir) if mask_dir is not None else None
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
    ft = read_table(findings_csv, "VinDr finding_annotations.csv") if findings_csv else None
    findings, boxes = _findings(ft)

    by_id: dict[str, Path] = {}
    for path in walk_files(root, (".dicom", ".dcm")):
        by_id.setdefault(path.stem, path)

    rows, unresolved, excluded = [], [], []
    unresolved.extend(t.cut_rows(c_img))
    if ft is not None:
        unresolved.extend(ft.cut_rows("image_id"))
    for pos, rec in enumerate(t.rows()):
        with t.last_row_guard(pos, unresolved, rec[c_img]):
            where = t.where(pos)
            image_id, study = rec[c_img], rec[c_study]
            if not image_id or not study:
                raise ManifestError(f"{where}: empty study_id or image_id")
            cat, label = birads_decision(
                rec[c_birads], mapping, where,
                f"unknown breast_birads {rec[c_birads]!r} (expected 'BI-RADS 1'..'5')",
            )  # fmt: skip
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
            found = sorted(boxes.get(image_id, []), key=_rank, reverse=True)
            own = [(rec[c_h] if c_h else "", rec[c_w] if c_w else "")]
            masks = _box_masks(
                image_id, path, own + [(f["height"], f["width"]) for f in found], found, writer,
                findings_csv,
            )  # fmt: skip
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
                    "exam_id": study,
                    "birads": cat,
                    "density": (rec[c_den] if c_den else "").upper().replace("DENSITY", "").strip(),
                    "study_id": study,
                    "series_id": rec[c_series] if c_series else "",
                    "height": rec[c_h] if c_h else "",
                    "width": rec[c_w] if c_w else "",
                    "finding_categories": ";".join(findings.get(image_id, [])),
                    "n_boxes": len(found),
                    "roi_mask_path": masks[0] if masks else "",
                    "roi_mask_paths": ";".join(masks),
                }
            )
    df = manifest_frame(rows, EXTRA_COLUMNS)
    masks = writer.summary() if writer is not None else no_masks_summary()
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
            WINDOWING_NOTE,
        ]
        + mask_notes(masks)
        + t.notes
        + (ft.notes if ft is not None else []),
        annotations=str(t.path),
        findings=str(findings_csv) if findings_csv else "",
        birads_map=mapping,
        excluded=excluded,
        finding_boxes=sum(len(v) for v in boxes.values()),
        images_with_masks=int((df["roi_mask_path"] != "").sum()),
        **masks,
    )
    return df, summary
