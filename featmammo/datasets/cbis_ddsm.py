"""CBIS-DDSM manifests: the official case-description CSVs + the images as users have them on disk.

Owns: finding and parsing the four case-description CSVs (one row per abnormality), turning them
into one row per full mammogram with an image-level label (:func:`images_from_cases`, usable
without any image), indexing a download by DICOM UIDs (:func:`build_index`) and resolving every
row to a file (:func:`build_cbis_ddsm`).

Rules (documented choices):

- Files are found by Study/Series UID taken from the CSV path, never by the literal path. Layouts
  handled: classic ``<Subject>/<StudyUID>/<SeriesUID>/000000.dcm``; NBIA descriptive
  (``metadata.csv`` with Windows-style ``File Location``; ``1-1.dcm``); NBIA REST
  (``00000001.dcm``); the 8-bit JPEG copy (``jpeg/<SeriesUID>/1-<n>.jpg`` +
  ``csv/dicom_info.csv``, lossy: a warning says so). With ``metadata.csv`` only the listed series
  folders are read; otherwise (or for series it lacks) every ``.dcm`` header is read once (pydicom
  ``dcmread(stop_before_pixels=True, specific_tags=...)``, called directly for speed: no pixel is
  decoded) and cached per file (size + mtime) in
  ``featmammo.paths.cache_dir()/cbis_index/<hash of ROOT>.json``. Unreadable / non-DICOM files
  are skipped and reported. Untidy real downloads: DICOMs without an extension (or with a
  UID-like numeric one) are recognised by their ``DICM`` marker; hidden/AppleDouble files,
  ``DICOMDIR`` and ``__MACOSX`` are skipped; ``metadata.csv`` may sit in ROOT's parent (ROOT given
  as the ``CBIS-DDSM/`` folder) and its columns match ignoring case/spaces/underscores; the
  case-description CSVs are found under ROOT (names ignoring case), else beside ROOT.
- Image label: any MALIGNANT abnormality -> ``malignant``, else ``benign``.
  ``BENIGN_WITHOUT_CALLBACK``: ``benign_without_callback="benign"`` (default, the usual choice)
  counts it as benign; ``"exclude"`` drops those abnormalities (and images left with none). There is
  no own class: manifest labels are ``normal``/``benign``/``malignant``; the raw pathologies stay in
  the ``pathology`` column and the rule in ``label_rule``.
- Pooling mass and calc (``subset="all"``, ``dedup=True``): one row per patient/side/view. 71 views
  exist as both a Mass and a Calc series (probably the same pixels); they become one row whose
  ``abnormality_type`` is ``mass;calcification``. When the two series sit in different official
  splits (29 views), the row goes to ``test`` (the official test set stays complete and its pixels
  are never trained on); ``official_splits`` records both. The image file is the series of the
  kept split, Mass before Calc. ``image_id`` = ``P_00001_LEFT_CC``, ``patient_id`` = ``P_00001``.
  With ``dedup=False`` every series is a row and ``image_id`` is its subject folder name.
- Crop vs ROI mask: decided by header size (the mask has the full image's Rows/Columns, the crop is
  small), never by the listed file name; masks whose size differs from their image are logged.
  ``crop_path``/``roi_mask_path`` hold the lesion that decides the label (first malignant, else
  first); ``crop_paths``/``roi_mask_paths`` hold every lesion, ``;``-joined in ``abnormality_ids``
  order (empty where a file is missing).
- Density: ``breast_density`` (mass CSVs) or ``breast density`` (calc CSVs); ``0`` (two calc-test
  rows) and ``N/A`` become empty, with a count in the summary. Descriptor ``N/A`` becomes empty.
- Rows that cannot be resolved are listed (subject, CSV line, reason) in the summary, never
  silently dropped.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import pandas as pd

from featmammo.datasets.base import records as _records
from featmammo.datasets.cbis_ddsm_cases import (  # noqa: F401 (public names re-exported)
    ABNORMALITY_TYPE,
    BWC_POLICIES,
    CASE_COLUMNS,
    CSV_NAMES,
    DENSITY_COLUMNS,
    DESCRIPTOR_COLUMNS,
    PATHOLOGIES,
    SUBSETS,
    _label_rule,
    cases_to_frame,
    find_case_csvs,
    images_from_cases,
    read_case_csvs,
)
from featmammo.datasets.cbis_ddsm_index import (  # noqa: F401 (public names re-exported)
    HEADER_TAGS,
    INDEX_VERSION,
    FileIndex,
    _walk,
    build_index,
)
from featmammo.datasets.manifest import REQUIRED_COLUMNS
from featmammo.errors import ManifestError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------
def _area(rec: dict) -> int:
    return (rec.get("rows") or 0) * (rec.get("cols") or 0)


def _size(rec: dict | None):
    return None if rec is None else (rec.get("rows"), rec.get("cols"))


def _pick_full(records: list[dict]) -> dict:
    return max(records, key=lambda r: (_area(r), r["path"]))


def _classify_lesion(
    les: dict, full: dict, index: FileIndex, counts: Counter, notes: list
) -> tuple[str, str]:
    """(crop_path, mask_path) of one abnormality, decided by header size."""
    cands: dict[str, dict] = {}
    for uid in (les["crop_series_uid"], les["mask_series_uid"]):
        for rec in index.series.get(uid, []) if uid else []:
            cands[rec["path"]] = rec
    if not cands:
        counts["lesions_missing_files"] += 1
        return "", ""
    full_size = _size(full)
    recs = sorted(cands.values(), key=lambda r: (-_area(r), r["path"]))
    exact = [r for r in recs if _size(r) == full_size]
    if len(recs) == 1:
        r = recs[0]
        # a single file: the mask when it has (about) the image's size, else the crop
        is_mask = bool(exact) or _area(r) >= 0.5 * _area(full)
        counts["lesions_missing_files"] += 1
        mask, crop = (r, None) if is_mask else (None, r)
    else:
        mask = exact[0] if exact else recs[0]
        crop = next(r for r in reversed(recs) if r is not mask)
    if mask is not None and _size(mask) != full_size:
        counts["mask_size_mismatch"] += 1
        msg = (
            f"{les['subject']} abnormality {les['abnormality_id']}: ROI mask {mask['path']} is "
            f"{_size(mask)} but its image is {full_size}"
        )
        notes.append(msg)
        log.warning(msg)
    # the listed names say which file should be the crop; count the rows where size says otherwise
    same_series = les["crop_series_uid"] == les["mask_series_uid"]
    listed = les["crop_file"]
    if (
        crop is not None
        and listed
        and same_series
        and Path(crop["path"]).name != listed
        and any(Path(r["path"]).name == listed for r in recs)
    ):
        counts["crop_mask_swapped"] += 1
    return (crop["path"] if crop else ""), (mask["path"] if mask else "")


def resolve_images(images: pd.DataFrame, index: FileIndex) -> tuple[pd.DataFrame, list[dict], dict]:
    """Attach files to per-image rows. Returns (resolved manifest rows, unresolved rows, counts)."""
    counts: Counter = Counter()
    notes: list[str] = []
    out, unresolved = [], []
    for row in _records(images):
        members = row["_members"]
        full = None
        member_full: dict[str, dict] = {}
        for m in members:
            recs = index.series.get(m["series_uid"], [])
            if recs:
                if len(recs) > 1:
                    counts["full_series_with_several_files"] += 1
                member_full[m["series_uid"]] = _pick_full(recs)
        chosen = next((m for m in members if m["series_uid"] in member_full), None)
        if chosen is None:
            m = members[0]
            if m["path_error"]:
                reason = m["path_error"]
            elif m["series_uid"] in index.missing_folders:
                reason = index.missing_folders[m["series_uid"]]
            else:
                reason = (
                    f"full-mammogram series {m['series_uid']} (study {m['study_uid']}) "
                    "not found under ROOT"
                )
            unresolved.append(
                {
                    "image_id": row["image_id"],
                    "subject": m["subject"],
                    "csv": row["csv"],
                    "reason": reason,
                }
            )
            continue
        if chosen is not members[0]:
            counts["resolved_through_duplicate_series"] += 1
        full = member_full[chosen["series_uid"]]
        if full.get("patient_id") and full["patient_id"] != chosen["subject"]:
            counts["header_patient_id_mismatch"] += 1
            log.warning(
                "%s: header PatientID %r differs from the CSV subject %r",
                full["path"],
                full["patient_id"],
                chosen["subject"],
            )
        crops, masks = [], []
        for les in row["_lesions"]:
            own = member_full.get(les["member_series"], full)
            c, k = _classify_lesion(les, own, index, counts, notes)
            crops.append(c)
            masks.append(k)
        lesions = row["_lesions"]
        primary = next((i for i, les in enumerate(lesions) if les["pathology"] == "MALIGNANT"), 0)
        rec = {k: v for k, v in row.items() if not k.startswith("_")}
        rec.update(
            path=full["path"],
            source=index.source,
            subject=chosen["subject"],
            study_uid=chosen["study_uid"],
            series_uid=chosen["series_uid"],
            rows=full.get("rows") or "",
            cols=full.get("cols") or "",
            crop_path=crops[primary] if crops else "",
            roi_mask_path=masks[primary] if masks else "",
            crop_paths=";".join(crops),
            roi_mask_paths=";".join(masks),
        )
        out.append(rec)
    cols = REQUIRED_COLUMNS + [
        "exam_id",
        "abnormality_type",
        "pathology",
        "label_rule",
        "density",
        "crop_path",
        "roi_mask_path",
        "n_abnormalities",
        "abnormality_ids",
        "crop_paths",
        "roi_mask_paths",
        "official_splits",
        "subject",
        "merged_from",
        "study_uid",
        "series_uid",
        "rows",
        "cols",
    ]
    df = pd.DataFrame(out, columns=cols)
    return df, unresolved, {**counts, "mask_mismatch_notes": notes[:50]}


def build_cbis_ddsm(
    root,
    *,
    csv_dir=None,
    benign_without_callback: str = "benign",
    subset: str = "all",
    dedup: bool = True,
    cache: bool = True,
    progress=None,
) -> tuple[pd.DataFrame, dict]:
    """A manifest of a CBIS-DDSM download: (DataFrame, summary dict).

    ``progress``: an ``update(n, total)`` callback for the DICOM header lookups (CLI bar).

    ``root``: the download in any supported layout; ``csv_dir``: where the case-description CSVs
    are (default: found under ``root``). The summary has counts (images, patients, labels, splits),
    the rules applied, the unresolved rows with reasons, skipped files and the leakage audit.
    Raises ManifestError when CSVs are missing/malformed or when no image resolves at all.
    """
    # absolute (manifest paths must not depend on the cwd), '..' removed, symlinks kept
    root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    if not root.is_dir():
        raise ManifestError(f"{root}: CBIS-DDSM root is not a folder")
    w = _walk(root)
    csv_files = find_case_csvs(root, csv_dir=csv_dir, subset=subset, walk=w)
    cases = read_case_csvs(csv_files)
    images, info = images_from_cases(
        cases, benign_without_callback=benign_without_callback, dedup=dedup
    )
    wanted = (
        set(cases["series_uid"]) | set(cases["crop_series_uid"]) | set(cases["mask_series_uid"])
    )
    wanted.discard("")
    index = build_index(root, wanted_series=wanted, cache=cache, walk=w, progress=progress)
    df, unresolved, counts = resolve_images(images, index)
    df = _drop_cut(df, cases.attrs.get("cut_rows", []), unresolved)
    if df.empty:
        reasons = Counter(_reason_kind(u["reason"]) for u in unresolved)
        hint = (
            ". No DICOM or JPEG file under ROOT: is ROOT the folder holding the images?"
            if not (w.dcm or w.jpg)
            else ""
        )
        raise ManifestError(
            f"{root}: no CBIS-DDSM image could be resolved ({len(unresolved)} rows; layout "
            f"{index.layout}, {len(w.dcm)} DICOM and {len(w.jpg)} .jpg files; "
            f"skipped files: {len(index.skipped)}); reasons: "
            + "; ".join(f"{r} x{n}" for r, n in reasons.most_common(3))
            + (
                f"; e.g. {unresolved[0]['subject']}: {unresolved[0]['reason']}"
                if unresolved
                else ""
            )
            + hint
        )
    from featmammo.splits import audit

    report = audit(df)
    notes = []
    if index.source == "cbis-ddsm-jpeg":
        notes.append("JPEG copy: 8-bit lossy re-encoding, not the original 16-bit DICOMs")
    notes.append("CBIS-DDSM has no normal images; adding DDSM normals mixes two pipelines")
    summary = {
        "root": str(root),
        "layout": index.layout,
        "source": index.source,
        "csv_files": {f"{k[0]}_{k[1]}": str(v) for k, v in sorted(csv_files.items())},
        "csv_missing": [
            n for k, n in CSV_NAMES.items() if k[0] in SUBSETS[subset] and k not in csv_files
        ],
        "subset": subset,
        "benign_without_callback": benign_without_callback,
        "label_rule": _label_rule(benign_without_callback),
        "dedup": "patient/side/view (split conflicts -> test; Mass series preferred)"
        if dedup
        else "none (one row per series)",
        "n_abnormalities": info["n_abnormalities"],
        "n_benign_without_callback": info["n_benign_without_callback"],
        "n_images_in_csvs": info["n_images"],
        "images": int(len(df)),
        "patients": int(df["patient_id"].nunique()),
        "labels": {k: int(v) for k, v in df["label"].value_counts().sort_index().items()},
        "splits": {k: int(v) for k, v in df["split"].value_counts().sort_index().items()},
        "merged_views": info["merged_views"],
        "split_conflicts": info["split_conflicts"],
        "images_with_benign_and_malignant": info["images_with_benign_and_malignant"],
        "density_zero": int(cases.attrs.get("density_zero", 0)),
        "unresolved": len(unresolved),
        "unresolved_reasons": dict(Counter(_reason_kind(u["reason"]) for u in unresolved)),
        "unresolved_rows": unresolved,
        "excluded": info["excluded"],
        "lesions_missing_files": int(counts.get("lesions_missing_files", 0)),
        "mask_size_mismatch": int(counts.get("mask_size_mismatch", 0)),
        "mask_mismatch_notes": counts.get("mask_mismatch_notes", []),
        "crop_mask_swapped": int(counts.get("crop_mask_swapped", 0)),
        "header_patient_id_mismatch": int(counts.get("header_patient_id_mismatch", 0)),
        "resolved_through_duplicate_series": int(
            counts.get("resolved_through_duplicate_series", 0)
        ),
        "skipped_files": index.skipped,
        "index": index.stats,
        "notes": notes,
        "audit": report.to_dict(),
    }
    if unresolved:
        log.warning(
            "%d CBIS-DDSM image(s) unresolved, e.g. %s: %s",
            len(unresolved),
            unresolved[0]["subject"],
            unresolved[0]["reason"],
        )
    return df, summary


def _drop_cut(df: pd.DataFrame, cut_rows: list[dict], unresolved: list[dict]) -> pd.DataFrame:
    """Images with an abnormality row cut short (a truncated CSV) leave the manifest: their label
    cannot be decided from the rows that remain (the cut one may be the malignant lesion). Each
    cut row is listed, with the image it belongs to when its patient/side/view survived."""
    drop = set()
    for c in cut_rows:
        key = bool(c["patient_id"] and c["laterality"] and c["view"])
        hit = (
            (df["patient_id"] == c["patient_id"])
            & (df["laterality"] == c["laterality"])
            & (df["view"] == c["view"])
            if key
            else pd.Series(False, index=df.index)
        )
        ids = list(df.loc[hit, "image_id"])
        drop.update(ids)
        side = "LEFT" if c["laterality"] == "L" else "RIGHT"
        own = f"{c['patient_id']}_{side}_{c['view']}" if key else ""
        unresolved.append(
            {
                "image_id": ids[0] if ids else own,
                "subject": c["patient_id"],
                "csv": c["csv"],
                "reason": c["reason"]
                + ("; the image's label cannot be decided without it" if key else ""),
            }
        )
    return df[~df["image_id"].isin(drop)].reset_index(drop=True) if drop else df


def _reason_kind(reason: str) -> str:
    if "cut short" in reason:
        return "CSV row cut short"
    if "not found under ROOT" in reason:
        return "series not found under ROOT"
    if reason.startswith("metadata.csv lists"):
        return "metadata.csv folder missing or empty"
    if reason.startswith("malformed"):
        return "malformed path in CSV"
    return reason


def format_summary(summary: dict, output, max_rows: int = 10) -> str:
    """The text ``featmammo manifest cbis-ddsm`` prints for a :func:`build_cbis_ddsm` summary."""
    from featmammo.datasets.base import format_unresolved

    out = [f"manifest   {output}"]
    out.append(
        f"root       {summary['root']}  (layout {summary['layout']}, source {summary['source']})"
    )
    out.extend(f"note       {note}" for note in summary["notes"])
    if summary["csv_missing"]:
        out.append(f"csv        MISSING {', '.join(summary['csv_missing'])}: not in the manifest")
    out.append(f"subset     {summary['subset']}; label rule: {summary['label_rule']}")
    out.append(
        f"dedup      {summary['dedup']}: {summary['merged_views']} views merged, "
        f"{summary['split_conflicts']} with a train/test conflict"
    )
    out.append(
        f"images     {summary['images']} of {summary['n_images_in_csvs']} in the CSVs; "
        f"patients {summary['patients']}"
    )
    out.append("labels     " + ", ".join(f"{k} {v}" for k, v in summary["labels"].items()))
    out.append("splits     " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()))
    idx = summary["index"]
    out.append(
        f"index      {idx.get('dcm_files', 0)} .dcm / {idx.get('jpg_files', 0)} .jpg files; "
        f"headers read {idx.get('headers_read', 0)}, cached {idx.get('headers_cached', 0)}"
    )
    out.append(
        f"lesions    {summary['lesions_missing_files']} without crop/mask files, "
        f"{summary['mask_size_mismatch']} masks of the wrong size, "
        f"{summary['crop_mask_swapped']} crop/mask listed in swapped order"
    )
    if summary["density_zero"]:
        out.append(f"density    {summary['density_zero']} rows with density 0 left empty")
    if summary["excluded"]:
        out.append(f"excluded   {len(summary['excluded'])} images (BENIGN_WITHOUT_CALLBACK only)")
    if summary["skipped_files"]:
        out.append(f"skipped    {len(summary['skipped_files'])} unreadable file(s):")
        out.extend(
            f"           {s['path']}: {s['reason']}" for s in summary["skipped_files"][:max_rows]
        )
    out.extend(format_unresolved(summary, max_rows))
    return "\n".join(out)
