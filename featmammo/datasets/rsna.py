"""RSNA Screening Mammography (2022-23 challenge) manifests:
``train_images/<patient_id>/<image_id>.dcm`` + ``train.csv``.

Rules (documented choices):

- One row per ``train.csv`` row; the image is ``train_images/<patient_id>/<image_id>.dcm``
  (``.dicom``/``.png`` too, for the common PNG re-encodings). A missing image is an unresolved
  row with the reason.
- Label: ``cancer`` = 1 -> malignant; ``biopsy`` = 1 and ``cancer`` = 0 -> benign (biopsied, no
  cancer found); otherwise normal. ``cancer``/``biopsy`` values other than 0/1 stop with the file
  and line.
- ``site_id`` and ``machine_id`` are kept (scanner and site differ between images: a classifier
  can learn them), with ``age``, ``biopsy``, ``invasive``, ``birads``, ``implant``, ``density``
  and ``difficult_negative_case``. Views other than CC/MLO (AT, ML, LM, LMO, ...) are kept as
  written and counted in the summary.
- No official labelled test split: ``split`` empty.
"""

from __future__ import annotations

import logging
from collections import Counter
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

SOURCE = "rsna"
LABEL_RULE = "cancer=1 -> malignant; biopsy=1 and cancer=0 -> benign; else normal"
EXTRA_COLUMNS = [
    "label_rule",
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
_EXTS = (".dcm", ".dicom", ".png")


def _flag(rec: dict, col: str, where: str) -> int:
    v = rec[col].strip()
    if v in ("0", "1", "0.0", "1.0"):
        return int(float(v))
    raise ManifestError(f"{where}: {col} is {rec[col]!r} (expected 0 or 1)")


def build_rsna(root, *, table=None) -> tuple[pd.DataFrame, dict]:
    """A manifest of the RSNA challenge data: (DataFrame, summary). ``table``: ``train.csv``
    (default: found under ``root``)."""
    root = abs_root(root, "RSNA")
    t = read_table(find_file(root, ["train.csv"], "RSNA train.csv", table), "RSNA train.csv")
    c_pid, c_iid = t.column("patient_id"), t.column("image_id")
    c_lat, c_view, c_cancer = t.column("laterality"), t.column("view"), t.column("cancer")
    # the label rule reads biopsy: a table without it would turn every benign case normal
    c_biopsy = t.column("biopsy")
    cols = {c: t.column(c, required=False) for c in EXTRA_COLUMNS[1:]}
    files: dict[tuple[str, str], Path] = {}
    for path in walk_files(root, _EXTS):
        files.setdefault((path.parent.name, path.stem), path)
    rows, unresolved = [], []
    views: Counter = Counter()
    for pos, rec in enumerate(t.rows()):
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
        }
        for c, col in cols.items():
            row[c] = rec[col] if col else ""
        rows.append(row)
    df = manifest_frame(rows, EXTRA_COLUMNS)
    if df.empty:
        raise ManifestError(
            f"{root}: no RSNA image resolved ({len(unresolved)} rows without an image; "
            f"{len(files)} image files under ROOT)"
        )
    other_views = {v: n for v, n in sorted(views.items()) if v not in ("CC", "MLO")}
    notes = ["site_id and machine_id kept: scanners differ between sites (a possible shortcut)"]
    if other_views:
        notes.append(
            "views other than CC/MLO kept: " + ", ".join(f"{v} {n}" for v, n in other_views.items())
        )
    summary = summarize(
        df,
        root=root,
        source=SOURCE,
        label_rule=LABEL_RULE,
        unresolved=unresolved,
        notes=notes,
        table=str(t.path),
        views=dict(sorted(views.items())),
        sites={k: int(v) for k, v in df["site_id"].value_counts().sort_index().items()},
    )
    return df, summary
