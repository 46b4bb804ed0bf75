"""RSNA Screening Mammography (2022-23 challenge) manifests:
``train_images/<patient_id>/<image_id>.dcm`` + ``train.csv``.

Rules (documented choices):

- One row per ``train.csv`` row; the image is ``<patient_id>/<image_id>.dcm`` anywhere under
  ROOT (``train_images/`` as downloaded; ``.dicom``/``.png`` too, for the common PNG
  re-encodings). When several copies of one image exist (a ``.dcm`` and a ``.png`` re-encoding
  side by side, say), the original is used by a fixed rule, ``.dcm`` > ``.dicom`` > ``.png``
  (:data:`PREFERENCE`); the summary counts them (``duplicate_copies``, ``formats``) and a note
  says so. A missing image is an unresolved row with the reason.
- Label: ``cancer`` = 1 -> malignant; ``biopsy`` = 1 and ``cancer`` = 0 -> benign (biopsied, no
  cancer found); otherwise normal. ``cancer``/``biopsy`` values other than 0/1 stop with the file
  and line.
- ``site_id`` and ``machine_id`` are kept (scanner and site differ between images: a classifier
  can learn them), with ``age``, ``biopsy``, ``invasive``, ``birads``, ``implant``, ``density``
  and ``difficult_negative_case``. Views other than CC/MLO (AT, ML, LM, LMO, ...) are kept as
  written and counted in the summary.
- Breast implants: ``implant`` = 1 images are counted in the summary (``implants``: images,
  patients); ``exclude_implants=True`` (``--exclude-implants``) leaves them out, listed in
  ``excluded``. An ``implant`` value other than 0/1/empty stops with the file and line.
- ``exam_id`` = ``patient_id``: the table has no study column, and the challenge holds one
  screening exam per patient.
- A table row cut short (a truncated download) is listed (unresolved), never padded.
- No official labelled test split: ``split`` empty.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pandas as pd

from featmammo.datasets.base import (
    WINDOWING_NOTE,
    abs_root,
    find_file,
    manifest_frame,
    read_table,
    summarize,
    walk_files,
)
from featmammo.errors import ManifestError

log = logging.getLogger(__name__)

SOURCE = "rsna"
LABEL_RULE = "cancer=1 -> malignant; biopsy=1 and cancer=0 -> benign; else normal"
TABLE_COLUMNS = [
    "site_id",
    "machine_id",
    "age",
    "biopsy",
    "invasive",
    "birads",
    "implant",
    "density",
    "difficult_negative_case",
]
EXTRA_COLUMNS = ["label_rule", "exam_id", *TABLE_COLUMNS]
#: which copy of an image is used when several exist: the original DICOM first
PREFERENCE = (".dcm", ".dicom", ".png")


def _flag(rec: dict, col: str, where: str) -> int:
    v = rec[col].strip()
    if v in ("0", "1", "0.0", "1.0"):
        return int(float(v))
    raise ManifestError(f"{where}: {col} is {rec[col]!r} (expected 0 or 1)")


def _image_files(root: Path) -> tuple[dict[tuple[str, str], Path], Counter, Counter]:
    """``{(patient folder, image id): path}`` choosing by :data:`PREFERENCE`, the count of each
    format used, and the count of images found in several formats (by the formats found)."""
    found: dict[tuple[str, str], dict[str, Path]] = {}
    for path in walk_files(root, PREFERENCE):
        ext = path.suffix.lower()
        found.setdefault((path.parent.name, path.stem), {}).setdefault(ext, path)
    files, formats, duplicates = {}, Counter(), Counter()
    for key, copies in found.items():
        ext = next(e for e in PREFERENCE if e in copies)
        files[key] = copies[ext]
        formats[ext[1:]] += 1
        if len(copies) > 1:
            duplicates["+".join(e[1:] for e in PREFERENCE if e in copies)] += 1
    return files, formats, duplicates


def _implant(rec: dict, col: str | None, where: str) -> bool:
    if col is None:
        return False
    v = rec[col].strip()
    if v in ("", "0", "0.0"):
        return False
    if v in ("1", "1.0"):
        return True
    raise ManifestError(f"{where}: implant is {rec[col]!r} (expected 0, 1 or empty)")


def build_rsna(root, *, table=None, exclude_implants: bool = False) -> tuple[pd.DataFrame, dict]:
    """A manifest of the RSNA challenge data: (DataFrame, summary). ``table``: ``train.csv``
    (default: found under ``root``); ``exclude_implants``: leave out ``implant`` = 1 images."""
    root = abs_root(root, "RSNA")
    t = read_table(find_file(root, ["train.csv"], "RSNA train.csv", table), "RSNA train.csv")
    c_pid, c_iid = t.column("patient_id"), t.column("image_id")
    c_lat, c_view, c_cancer = t.column("laterality"), t.column("view"), t.column("cancer")
    # the label rule reads biopsy: a table without it would turn every benign case normal
    c_biopsy = t.column("biopsy")
    cols = {c: t.column(c, required=False) for c in TABLE_COLUMNS}
    if exclude_implants and cols["implant"] is None:
        raise ManifestError(
            f"{t.path}: --exclude-implants needs an 'implant' column (has {list(t.df.columns)})"
        )
    files, formats, duplicates = _image_files(root)
    rows, unresolved, excluded = [], t.cut_rows(c_iid), []
    views: Counter = Counter()
    implants: list[tuple[str, str]] = []
    for pos, rec in enumerate(t.rows()):
        with t.last_row_guard(pos, unresolved, rec[c_iid]):
            where = t.where(pos)
            pid, iid = rec[c_pid], rec[c_iid]
            if not pid or not iid:
                raise ManifestError(f"{where}: empty patient_id or image_id")
            cancer = _flag(rec, c_cancer, where)
            biopsy = _flag(rec, c_biopsy, where)
            label = "malignant" if cancer else ("benign" if biopsy else "normal")
            lat = rec[c_lat].upper()[:1]
            if lat not in ("L", "R"):
                raise ManifestError(f"{where}: unknown laterality {rec[c_lat]!r}")
            implant = _implant(rec, cols["implant"], where)
            path = files.get((pid, iid))
            if path is None:
                unresolved.append(
                    {
                        "image_id": iid,
                        "where": where,
                        "reason": f"train_images/{pid}/{iid}.dcm not found under ROOT",
                    }
                )
                continue
            if implant:
                implants.append((iid, pid))
                if exclude_implants:
                    excluded.append(
                        {"image_id": iid, "where": where, "reason": "breast implant (excluded)"}
                    )
                    continue
            view = rec[c_view].upper()
            views[view] += 1
            row = {
                "image_id": iid,
                "path": str(path),
                "label": label,
                "patient_id": pid,
                "laterality": lat,
                "view": view,
                "split": "",
                "source": SOURCE,
                "label_rule": LABEL_RULE,
                "exam_id": pid,
            }
            for c, col in cols.items():
                row[c] = rec[col] if col else ""
            rows.append(row)
    df = manifest_frame(rows, EXTRA_COLUMNS)
    if df.empty:
        raise ManifestError(
            f"{root}: no RSNA image resolved ({len(unresolved)} rows unresolved, "
            f"{len(excluded)} excluded; {len(files)} image files under ROOT)"
        )
    other_views = {v: n for v, n in sorted(views.items()) if v not in ("CC", "MLO")}
    notes = ["site_id and machine_id kept: scanners differ between sites (a possible shortcut)"]
    if other_views:
        notes.append(
            "views other than CC/MLO kept: " + ", ".join(f"{v} {n}" for v, n in other_views.items())
        )
    n_implant_patients = len({p for _, p in implants})
    if implants:
        notes.append(
            f"{len(implants)} image(s) of {n_implant_patients} patient(s) show breast implants"
            + (
                " (left out: --exclude-implants)"
                if exclude_implants
                else " (kept; --exclude-implants leaves them out)"
            )
        )
    if duplicates:
        notes.append(
            f"{sum(duplicates.values())} image(s) exist in several formats under ROOT ("
            + ", ".join(f"{k} {v}" for k, v in sorted(duplicates.items()))
            + "): the original was used by the rule .dcm > .dicom > .png"
        )
    if formats.get("png"):
        notes.append(
            f"{formats['png']} image(s) are PNG re-encodings, not the original DICOMs "
            "(windowing and bit depth are whatever the re-encoding chose)"
        )
    notes.append(WINDOWING_NOTE)
    summary = summarize(
        df,
        root=root,
        source=SOURCE,
        label_rule=LABEL_RULE,
        unresolved=unresolved,
        notes=notes + t.notes,
        table=str(t.path),
        views=dict(sorted(views.items())),
        implants={"images": len(implants), "patients": n_implant_patients},
        exclude_implants=exclude_implants,
        excluded=excluded,
        formats=dict(sorted(formats.items())),
        duplicate_copies=dict(sorted(duplicates.items())),
        preference=[e[1:] for e in PREFERENCE],
        sites={k: int(v) for k, v in df["site_id"].value_counts().sort_index().items()},
    )
    return df, summary
