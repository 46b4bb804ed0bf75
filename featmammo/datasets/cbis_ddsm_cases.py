"""CBIS-DDSM case-description CSVs: finding and parsing them (one row per abnormality) and the
label rules that turn them into one row per full mammogram (:func:`images_from_cases`), usable
without any image. The rules are listed in :mod:`featmammo.datasets.cbis_ddsm`.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from pathlib import Path

import pandas as pd

from featmammo.datasets.base import records as _records
from featmammo.datasets.cbis_ddsm_index import _lower_keys, _walk
from featmammo.datasets.manifest import read_csv_strings
from featmammo.errors import ConfigError, ManifestError

log = logging.getLogger(__name__)

CSV_NAMES = {
    ("mass", "train"): "mass_case_description_train_set.csv",
    ("mass", "test"): "mass_case_description_test_set.csv",
    ("calc", "train"): "calc_case_description_train_set.csv",
    ("calc", "test"): "calc_case_description_test_set.csv",
}
SUBSETS = {"mass": ("mass",), "calc": ("calc",), "all": ("mass", "calc")}
ABNORMALITY_TYPE = {"mass": "mass", "calc": "calcification"}
BWC_POLICIES = ("benign", "exclude")
PATHOLOGIES = ("BENIGN", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT")
CASE_COLUMNS = [
    "patient_id",
    "left or right breast",
    "image view",
    "abnormality id",
    "pathology",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
]
DENSITY_COLUMNS = ("breast_density", "breast density")
DESCRIPTOR_COLUMNS = {
    "mass shape": "mass_shape",
    "mass margins": "mass_margins",
    "calc type": "calc_type",
    "calc distribution": "calc_distribution",
    "assessment": "assessment",
    "subtlety": "subtlety",
}
_UID_RE = re.compile(r"^\d+(\.\d+)+$")


# --------------------------------------------------------------------------------------------
# CSVs -> abnormalities -> images
# --------------------------------------------------------------------------------------------
def find_case_csvs(
    root=None, *, csv_dir=None, subset: str = "all", walk=None
) -> dict[tuple[str, str], Path]:
    """Locate the case-description CSVs of ``subset``: in ``csv_dir`` when given, else anywhere
    under ``root`` (by file name). Raises ManifestError (listing the names and where it looked) when
    none is found; a partial set (e.g. test files only) is used with a warning.
    """
    if subset not in SUBSETS:
        raise ConfigError(f"unknown subset {subset!r} (expected one of {', '.join(SUBSETS)})")
    wanted = {k: v for k, v in CSV_NAMES.items() if k[0] in SUBSETS[subset]}
    if csv_dir is not None:
        where = Path(csv_dir)
        if not where.is_dir():
            raise ManifestError(f"{where}: --csv-dir is not a folder")
        found = _find_names(where, set(wanted.values()))
    elif root is not None:
        where = Path(root)
        found = _lower_keys((walk or _walk(where)).csv_by_name)
        if not any(found.get(n) for n in wanted.values()):
            # a common arrangement: the CSVs downloaded next to the image folder, not inside it
            beside = _lower_keys(
                {p.name: [p] for p in where.parent.glob("*") if p.suffix.lower() == ".csv"}
            )
            beside = {n: beside[n] for n in wanted.values() if n in beside}
            if beside:
                log.info("%s: case-description CSVs found beside ROOT in %s", where, where.parent)
                found = beside
    else:
        raise ConfigError("find_case_csvs needs root or csv_dir")
    out: dict[tuple[str, str], Path] = {}
    missing = []
    for key, name in wanted.items():
        paths = sorted(found.get(name, []))
        if not paths:
            missing.append(name)
            continue
        if len(paths) > 1:
            log.warning("%s: %d copies found, using %s", name, len(paths), paths[0])
        out[key] = paths[0]
    if not out:
        raise ManifestError(
            f"{where}: CBIS-DDSM case-description CSV(s) not found: {', '.join(missing)} "
            "(searched by file name at any depth under ROOT and in the folder above it; point "
            "--csv-dir at the folder holding them)"
        )
    if missing:  # e.g. a test-only download: usable, but said loudly and recorded in the summary
        log.warning(
            "%s: only %d of %d case-description CSVs found; missing %s: their images are not in "
            "the manifest",
            where,
            len(out),
            len(wanted),
            ", ".join(missing),
        )
    return out


def _find_names(folder: Path, names: set[str]) -> dict[str, list[Path]]:
    """Files under ``folder`` whose name is one of ``names`` ignoring case (lowercase keys)."""
    found: dict[str, list[Path]] = defaultdict(list)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower() in names:
                found[name.lower()].append(Path(dirpath) / name)
    return found


def _split_csv_path(value: str) -> tuple[str, str, str, str] | None:
    """``Subject/StudyUID/SeriesUID/file.dcm`` -> its four parts (None when malformed)."""
    parts = [p for p in re.split(r"[\\/]+", value.strip()) if p]
    if len(parts) < 4:
        return None
    subject, study, series, name = parts[-4:]
    if not (_UID_RE.match(study) and _UID_RE.match(series)):
        return None
    return subject, study, series, name


def read_case_csvs(csv_files: dict[tuple[str, str], Path]) -> pd.DataFrame:
    """Parse the case-description CSVs into one normalised row per abnormality.

    Columns: ``csv_file, csv_line, subset (mass|calc), split (train|test), patient_id, laterality
    (L|R), view, abnormality_id, abnormality_type (mass|calcification), pathology, density,
    mass_shape, mass_margins, calc_type, calc_distribution, assessment, subtlety, subject,
    study_uid, series_uid, crop_subject, crop_study_uid, crop_series_uid, crop_file,
    mask_study_uid, mask_series_uid, mask_file, path_error``. Raises ManifestError (file + line) on
    missing columns, unknown pathology or laterality. A row cut short (a truncated CSV) is not
    padded: it is left out and described in ``attrs["cut_rows"]`` (patient, side, view where the
    row still holds them, ``csv``, ``reason``) for the builder to list with its image.
    """
    all_rows: list[dict] = []
    cut_rows: list[dict] = []
    density_zero = 0
    for (subset, split), path in sorted(csv_files.items()):
        df, lines = read_csv_strings(path, short_rows="list")
        for r in df.attrs.get("short_rows", ()):
            cells = dict(zip(df.columns, r["cells"], strict=False))
            side = cells.get("left or right breast", "").upper()
            cut_rows.append(
                {
                    "patient_id": cells.get("patient_id", ""),
                    "laterality": side[:1] if side in ("LEFT", "RIGHT") else "",
                    "view": cells.get("image view", "").upper(),
                    "csv": f"{path.name}:{r['line']}",
                    "reason": f"{path}: line {r['line']}: {r['reason']}",
                }
            )
        missing = [c for c in CASE_COLUMNS if c not in df.columns]
        density_col = next((c for c in DENSITY_COLUMNS if c in df.columns), None)
        if density_col is None:
            missing.append(" or ".join(repr(c) for c in DENSITY_COLUMNS))
        if missing:
            raise ManifestError(
                f"{path}: not a CBIS-DDSM case-description CSV, missing column(s) {missing}"
            )
        if len(df) == 0:
            log.warning("%s: no abnormality rows", path)
        rows = []
        for pos, rec in enumerate(_records(df)):
            where = f"{path}: line {lines[pos]}"
            pathology = rec["pathology"].upper()
            if pathology not in PATHOLOGIES:
                raise ManifestError(f"{where}: unknown pathology {rec['pathology']!r}")
            side = rec["left or right breast"].upper()
            if side not in ("LEFT", "RIGHT"):
                raise ManifestError(f"{where}: bad 'left or right breast' {side!r}")
            density = rec[density_col]
            if density in ("0", "N/A"):
                density_zero += density == "0"
                density = ""
            out = {
                "csv_file": path.name,
                "csv_line": lines[pos],
                "subset": subset,
                "split": split,
                "patient_id": rec["patient_id"],
                "laterality": side[0],
                "view": rec["image view"].upper(),
                "abnormality_id": rec["abnormality id"],
                "abnormality_type": ABNORMALITY_TYPE[subset],
                "pathology": pathology,
                "density": density,
            }
            for col, name in DESCRIPTOR_COLUMNS.items():
                v = rec.get(col, "")
                out[name] = "" if v == "N/A" else v
            errors = []
            full = _split_csv_path(rec["image file path"])
            crop = _split_csv_path(rec["cropped image file path"])
            mask = _split_csv_path(rec["ROI mask file path"])
            if full is None:
                errors.append(f"malformed image file path {rec['image file path']!r}")
                full = ("", "", "", "")
            crop = crop or ("", "", "", "")
            mask = mask or ("", "", "", "")
            if (
                full[0]
                and full[0]
                != f"{_prefix(subset, split)}_{rec['patient_id']}_{side}_" + (out["view"])
            ):
                log.debug("%s: subject folder %s does not match the row's columns", where, full[0])
            out.update(
                subject=full[0],
                study_uid=full[1],
                series_uid=full[2],
                crop_subject=crop[0],
                crop_study_uid=crop[1],
                crop_series_uid=crop[2],
                crop_file=crop[3],
                mask_study_uid=mask[1],
                mask_series_uid=mask[2],
                mask_file=mask[3],
                path_error="; ".join(errors),
            )
            rows.append(out)
        all_rows.extend(rows)
    if not all_rows:
        raise ManifestError(
            "no abnormality rows in " + ", ".join(str(p) for p in sorted(csv_files.values()))
        )
    cases = pd.DataFrame(all_rows, dtype=object)
    cases.attrs["density_zero"] = density_zero
    cases.attrs["cut_rows"] = cut_rows
    if density_zero:
        log.warning(
            "%d abnormality rows have density 0 (not a BI-RADS density): left empty", density_zero
        )
    return cases


def _prefix(subset: str, split: str) -> str:
    return f"{subset.capitalize()}-{'Training' if split == 'train' else 'Test'}"


def _label_rule(bwc: str) -> str:
    return f"any-malignant; BENIGN_WITHOUT_CALLBACK={bwc}"


def images_from_cases(
    cases: pd.DataFrame, *, benign_without_callback: str = "benign", dedup: bool = True
) -> tuple[pd.DataFrame, dict]:
    """Abnormality rows (:func:`read_case_csvs`) -> one row per full mammogram, before any file.

    Returns the image frame (manifest columns except ``path``/``source``, plus ``abnormality_type``,
    ``pathology``, ``density``, ``official_splits``, ``merged_from``, ``subject``, ``study_uid``,
    ``series_uid`` and private ``_members``/``_lesions`` used for resolution) and a dict of counts.
    See the module docstring for the label, BENIGN_WITHOUT_CALLBACK and dedup rules.
    """
    if benign_without_callback not in BWC_POLICIES:
        raise ConfigError(
            f"benign_without_callback={benign_without_callback!r}: expected one of {BWC_POLICIES}"
        )
    records = _records(cases)
    info: dict = {"n_abnormalities": len(records)}
    is_bwc = [r["pathology"] == "BENIGN_WITHOUT_CALLBACK" for r in records]
    info["n_benign_without_callback"] = sum(is_bwc)
    excluded: list[dict] = []
    if benign_without_callback == "exclude":
        kept_series = {r["series_uid"] for r, b in zip(records, is_bwc, strict=True) if not b}
        seen: set[str] = set()
        for r, b in zip(records, is_bwc, strict=True):
            if b and r["series_uid"] not in kept_series and r["subject"] not in seen:
                seen.add(r["subject"])
                excluded.append(
                    {
                        "image_id": r["subject"],
                        "subject": r["subject"],
                        "csv": f"{r['csv_file']}:{r['csv_line']}",
                        "reason": "only BENIGN_WITHOUT_CALLBACK abnormalities (excluded by policy)",
                    }
                )
        records = [r for r, b in zip(records, is_bwc, strict=True) if not b]
    info["excluded"] = sorted(excluded, key=lambda e: e["subject"])

    # one member per full-mammogram series, abnormalities in CSV order
    by_series: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        by_series[(r["subset"], r["subject"], r["series_uid"])].append(r)
    members = []
    for key in sorted(by_series):
        abn = sorted(by_series[key], key=lambda r: (_int_or(r["abnormality_id"]), r["csv_line"]))
        first = abn[0]
        members.append(
            {
                "subset": first["subset"],
                "subject": first["subject"],
                "study_uid": first["study_uid"],
                "series_uid": first["series_uid"],
                "split": first["split"],
                "patient_id": first["patient_id"],
                "laterality": first["laterality"],
                "view": first["view"],
                "csv": f"{first['csv_file']}:{first['csv_line']}",
                "path_error": first["path_error"],
                "abn": abn,
            }
        )
    info["n_series"] = len(members)
    info["images_with_benign_and_malignant"] = sum(
        1 for m in members if len({a["pathology"] == "MALIGNANT" for a in m["abn"]}) == 2
    )

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for m in members:
        key = (m["patient_id"], m["laterality"], m["view"]) if dedup else (m["subject"],)
        groups[key].append(m)
    merged = conflicts = 0
    rows = []
    subset_rank = {"mass": 0, "calc": 1}
    for key in sorted(groups):
        ms = groups[key]
        splits = sorted({m["split"] for m in ms})
        split = "test" if "test" in splits else splits[0]
        ms = sorted(ms, key=lambda m: (m["split"] != split, subset_rank[m["subset"]], m["subject"]))
        if len(ms) > 1:
            merged += 1
            conflicts += len(splits) > 1
        lesions = [{**a, "member_series": m["series_uid"]} for m in ms for a in m["abn"]]
        pathologies = {a["pathology"] for a in lesions}
        types = {a["abnormality_type"] for a in lesions}
        chosen = ms[0]
        side = "LEFT" if chosen["laterality"] == "L" else "RIGHT"
        rows.append(
            {
                "image_id": (
                    f"{chosen['patient_id']}_{side}_{chosen['view']}"
                    if dedup
                    else chosen["subject"]
                ),
                "label": "malignant" if "MALIGNANT" in pathologies else "benign",
                "patient_id": chosen["patient_id"],
                "exam_id": chosen["patient_id"],
                "laterality": chosen["laterality"],
                "view": chosen["view"],
                "split": split,
                "abnormality_type": ";".join(t for t in ("mass", "calcification") if t in types),
                "pathology": ";".join(p for p in PATHOLOGIES if p in pathologies),
                "label_rule": _label_rule(benign_without_callback),
                "density": next((a["density"] for a in lesions if a["density"]), ""),
                "n_abnormalities": len(lesions),
                "abnormality_ids": ";".join(
                    f"{a['subset']}{a['abnormality_id']}" if len(ms) > 1 else a["abnormality_id"]
                    for a in lesions
                ),
                "official_splits": ";".join(splits),
                "subject": chosen["subject"],
                "merged_from": ";".join(m["subject"] for m in ms[1:]),
                "study_uid": chosen["study_uid"],
                "series_uid": chosen["series_uid"],
                "csv": chosen["csv"],
                "_members": ms,
                "_lesions": lesions,
            }
        )
    info["merged_views"] = merged
    info["split_conflicts"] = conflicts
    info["n_images"] = len(rows)
    images = pd.DataFrame(rows)
    ids = [r["image_id"] for r in rows]
    if len(set(ids)) != len(ids):  # pragma: no cover - invariant of the grouping above
        raise ManifestError("internal error: duplicate CBIS-DDSM image ids")
    return images, info


def _int_or(v: str) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 10**9


def cases_to_frame(csv_dir, *, subset: str = "all", **kwargs) -> pd.DataFrame:
    """Convenience: CSV folder -> per-image rows (no files needed), for audits and counts."""
    images, _ = images_from_cases(
        read_case_csvs(find_case_csvs(csv_dir=csv_dir, subset=subset)), **kwargs
    )
    return images.drop(columns=["_members", "_lesions"])
