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

import hashlib
import json
import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from featmammo.datasets.folders import (
    JUNK_FILES,
    JUNK_FOLDERS,
    dicom_candidate_name,
    looks_like_dicom,
)
from featmammo.datasets.manifest import REQUIRED_COLUMNS, read_csv_strings
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
HEADER_TAGS = [
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesDescription",
    "InstanceNumber",
    "Rows",
    "Columns",
]
INDEX_VERSION = 1
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


def _lower_keys(by_name: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """File-name index with lowercase keys (``Mass_Case_Description_Train_Set.csv`` matches)."""
    out: dict[str, list[Path]] = defaultdict(list)
    for name, paths in by_name.items():
        out[name.lower()].extend(paths)
    return out


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
    missing columns, unknown pathology or laterality.
    """
    all_rows: list[dict] = []
    density_zero = 0
    for (subset, split), path in sorted(csv_files.items()):
        df, lines = read_csv_strings(path)
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
    if density_zero:
        log.warning(
            "%d abnormality rows have density 0 (not a BI-RADS density): left empty", density_zero
        )
    return cases


def _prefix(subset: str, split: str) -> str:
    return f"{subset.capitalize()}-{'Training' if split == 'train' else 'Test'}"


def _label_rule(bwc: str) -> str:
    return f"any-malignant; BENIGN_WITHOUT_CALLBACK={bwc}"


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as dicts, fast (``DataFrame.to_dict("records")`` is slow on object columns)."""
    cols = list(df.columns)
    return [
        dict(zip(cols, vals, strict=True))
        for vals in zip(*(df[c].tolist() for c in cols), strict=True)
    ]


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


# --------------------------------------------------------------------------------------------
# The file index: UIDs -> files
# --------------------------------------------------------------------------------------------
@dataclass
class _Walk:
    csv_by_name: dict[str, list[Path]] = field(default_factory=lambda: defaultdict(list))
    dcm: list[Path] = field(default_factory=list)
    jpg: list[Path] = field(default_factory=list)


def _walk(root: Path) -> _Walk:
    w = _Walk()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in JUNK_FOLDERS)
        d = Path(dirpath)
        for name in sorted(filenames):
            if name.startswith(".") or name in JUNK_FILES:  # .DS_Store, '._000000.dcm'
                continue
            low = name.lower()
            if low.endswith(".csv"):
                w.csv_by_name[name].append(d / name)
            elif low.endswith(".dcm"):
                w.dcm.append(d / name)
            elif dicom_candidate_name(name) and looks_like_dicom(d / name):
                w.dcm.append(d / name)  # NBIA/PACS exports: no extension or a UID-like one
            elif low.endswith((".jpg", ".jpeg")):
                w.jpg.append(d / name)
    return w


@dataclass
class FileIndex:
    """Series UID -> file records (path, study_uid, series_uid, series_description, rows, cols,
    patient_id, instance), plus what happened while building it."""

    series: dict[str, list[dict]]
    layout: str
    source: str  # cbis-ddsm | cbis-ddsm-jpeg
    skipped: list[dict]
    missing_folders: dict[str, str]
    stats: dict


def _detect_layout(w: _Walk, has_metadata: bool, jpeg: bool) -> str:
    if jpeg:
        return "jpeg"
    kinds = Counter()
    for p in w.dcm:
        n = p.name
        if re.fullmatch(r"\d{6}\.dcm", n):
            kinds["classic"] += 1
        elif re.fullmatch(r"\d{8}\.dcm", n):
            kinds["nbia-rest"] += 1
        elif re.fullmatch(r"\d+-\d+\.dcm", n):
            kinds["nbia-descriptive"] += 1
        else:
            kinds["other"] += 1
    if len(kinds) > 1:
        kinds.pop("other", None)  # stray files do not make a layout
    if not kinds:
        return "empty"
    if len(kinds) > 1:
        return "mixed(" + ",".join(f"{k}:{v}" for k, v in sorted(kinds.items())) + ")"
    layout = next(iter(kinds))
    if layout == "nbia-descriptive" and not has_metadata:
        layout += " (no metadata.csv)"
    return layout


def _index_cache_path(root: Path) -> Path:
    from featmammo.paths import cache_dir

    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "cbis_index" / f"{key}.json"


def _read_header(path: Path) -> dict:
    """Header fields of one DICOM without touching its pixel data (raises on a non-DICOM file)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    series = str(ds.get("SeriesInstanceUID", "") or "")
    if not series:
        raise ValueError("no SeriesInstanceUID in header")

    def _int(v):
        try:
            return int(v)
        except (TypeError, ValueError):
            return None

    return {
        "study_uid": str(ds.get("StudyInstanceUID", "") or ""),
        "series_uid": series,
        "series_description": str(ds.get("SeriesDescription", "") or ""),
        "rows": _int(ds.get("Rows")),
        "cols": _int(ds.get("Columns")),
        "patient_id": str(ds.get("PatientID", "") or ""),
        "instance": _int(ds.get("InstanceNumber")),
    }


class _HeaderCache:
    """Per-file header records keyed by path relative to ROOT, valid while size and mtime match."""

    def __init__(self, root: Path, enabled: bool):
        self.root = root
        self.enabled = enabled
        self.path = _index_cache_path(root) if enabled else None
        self.entries: dict[str, dict] = {}
        self.changed = False
        self.read = self.hits = 0
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("version") == INDEX_VERSION and data.get("root") == str(root.resolve()):
                    self.entries = data.get("files", {})
            except (OSError, ValueError) as exc:
                log.warning("%s: ignoring unreadable index cache (%s)", self.path, exc)

    def get(self, path: Path) -> dict:
        rel = os.path.relpath(path, self.root)
        try:
            st = path.stat()
            sig = [st.st_size, st.st_mtime_ns]
        except OSError as exc:
            return {"error": f"cannot stat: {exc}"}
        entry = self.entries.get(rel)
        if entry is not None and entry.get("sig") == sig:
            self.hits += 1
            return entry
        self.read += 1
        if sig[0] == 0:
            entry = {"sig": sig, "error": "zero-byte file"}
        else:
            try:
                entry = {"sig": sig, **_read_header(path)}
            except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped and reported
                entry = {"sig": sig, "error": f"not a readable DICOM ({type(exc).__name__}: {exc})"}
        self.entries[rel] = entry
        self.changed = True
        return entry

    def save(self) -> None:
        if not (self.enabled and self.changed and self.path is not None):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
            tmp.write_text(
                json.dumps(
                    {
                        "version": INDEX_VERSION,
                        "root": str(self.root.resolve()),
                        "files": self.entries,
                    }
                )
            )
            os.replace(tmp, self.path)
            log.info("cached the header index of %d files in %s", len(self.entries), self.path)
        except OSError as exc:
            log.warning("could not write the index cache %s (%s)", self.path, exc)


def _file_location(loc: str) -> PurePosixPath:
    """NBIA ``File Location`` (``.\\CBIS-DDSM\\Subject\\...``) -> a relative posix path."""
    parts = [p for p in re.split(r"[\\/]+", loc.strip()) if p and p != "."]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def build_index(
    root, *, wanted_series: set[str] | None = None, cache: bool = True, walk=None
) -> FileIndex:
    """Index a CBIS-DDSM download by Series UID (see the module docstring for the layouts)."""
    root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    w = walk or _walk(root)
    series: dict[str, list[dict]] = defaultdict(list)
    skipped: list[dict] = []
    missing_folders: dict[str, str] = {}
    stats: dict = {"dcm_files": len(w.dcm), "jpg_files": len(w.jpg)}

    csvs = _lower_keys(w.csv_by_name)  # names matched ignoring case
    dicom_info = csvs.get("dicom_info.csv", [])
    if dicom_info and w.jpg:
        for info_csv in sorted(dicom_info):
            _index_jpeg(info_csv, w, series, skipped)
        log.warning(
            "%s: this is the 8-bit JPEG re-encoding of CBIS-DDSM (lossy, 8 bits instead of 16); "
            "features from it are not comparable with features from the DICOMs",
            root,
        )
        stats.update(headers_read=0, headers_cached=0, metadata_csv=[str(p) for p in dicom_info])
        return FileIndex(dict(series), "jpeg", "cbis-ddsm-jpeg", skipped, missing_folders, stats)

    hc = _HeaderCache(root, cache)
    by_dir: dict[Path, list[Path]] = defaultdict(list)
    for p in w.dcm:
        by_dir[p.parent].append(p)
    covered: set[Path] = set()
    metadata = csvs.get("metadata.csv", [])
    if not metadata:  # ROOT given as the CBIS-DDSM/ folder; the NBIA metadata.csv sits above it
        metadata = [p for p in root.parent.glob("*") if p.name.lower() == "metadata.csv"]

    def add(path: Path) -> None:
        entry = hc.get(path)
        if "error" in entry:
            skipped.append({"path": str(path), "reason": entry["error"]})
            return
        rec = {k: v for k, v in entry.items() if k != "sig"}
        rec["path"] = str(path)
        series[rec["series_uid"]].append(rec)

    for meta_csv in sorted(metadata):
        mdf, _ = read_csv_strings(meta_csv)
        # column names as NBIA writes them, matched ignoring case, spaces and underscores
        canon = {re.sub(r"[\s_]+", "", c).lower(): c for c in mdf.columns}
        mdf = mdf.rename(
            columns={
                canon[k]: v
                for k, v in (("seriesuid", "Series UID"), ("filelocation", "File Location"))
                if k in canon
            }
        )
        need = [c for c in ("Series UID", "File Location") if c not in mdf.columns]
        if need:
            log.warning("%s: not an NBIA metadata.csv (missing %s); ignored", meta_csv, need)
            continue
        for uid, loc in zip(mdf["Series UID"], mdf["File Location"], strict=True):
            if wanted_series is not None and uid not in wanted_series:
                continue
            rel = _file_location(loc)
            folder = next(
                (c for c in (meta_csv.parent / rel, root / rel) if c.is_dir()),
                None,
            )
            if folder is None or not by_dir.get(folder):
                missing_folders[uid] = f"metadata.csv lists {loc!r} but no .dcm file is there"
                continue
            for p in by_dir[folder]:
                if p not in covered:
                    covered.add(p)
                    add(p)
    stats["metadata_csv"] = [str(p) for p in sorted(metadata)]
    remaining = [p for p in w.dcm if p not in covered]
    unresolved = None if wanted_series is None else set(wanted_series) - set(series)
    if remaining and (not metadata or unresolved is None or unresolved):
        if metadata:
            log.info(
                "%d series not found through metadata.csv: scanning %d other DICOM headers",
                len(unresolved or ()),
                len(remaining),
            )
        for p in remaining:
            add(p)
    hc.save()
    stats.update(headers_read=hc.read, headers_cached=hc.hits, skipped_files=len(skipped))
    if skipped:
        log.warning(
            "%d file(s) skipped while reading DICOM headers, e.g. %s: %s",
            len(skipped),
            skipped[0]["path"],
            skipped[0]["reason"],
        )
    layout = _detect_layout(w, bool(metadata), False)
    return FileIndex(dict(series), layout, "cbis-ddsm", skipped, missing_folders, stats)


def _index_jpeg(info_csv: Path, w: _Walk, series: dict, skipped: list) -> None:
    df, lines = read_csv_strings(info_csv)
    need = [c for c in ("image_path", "SeriesInstanceUID") if c not in df.columns]
    if need:
        raise ManifestError(
            f"{info_csv}: missing column(s) {need} (expected the JPEG copy's dicom_info.csv)"
        )
    jpgs = {(p.parent.name, p.name): p for p in w.jpg}

    def _int(v):
        try:
            return int(float(v))
        except (TypeError, ValueError):
            return None

    for pos, rec in enumerate(_records(df)):
        parts = [p for p in re.split(r"[\\/]+", rec["image_path"]) if p]
        path = jpgs.get(tuple(parts[-2:])) if len(parts) >= 2 else None
        if path is None:
            skipped.append(
                {
                    "path": rec["image_path"],
                    "reason": f"{info_csv.name}:{lines[pos]}: JPEG file not found",
                }
            )
            continue
        rows, cols = _int(rec.get("Rows")), _int(rec.get("Columns"))
        if rows is None or cols is None:
            rows, cols = _jpeg_size(path)
        series[rec["SeriesInstanceUID"]].append(
            {
                "path": str(path),
                "study_uid": rec.get("StudyInstanceUID", ""),
                "series_uid": rec["SeriesInstanceUID"],
                "series_description": rec.get("SeriesDescription", ""),
                "rows": rows,
                "cols": cols,
                "patient_id": rec.get("PatientID", ""),
                "instance": _int(rec.get("InstanceNumber")),
            }
        )


def _jpeg_size(path: Path) -> tuple[int | None, int | None]:
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:  # reads the header only
            return im.height, im.width
    except OSError:
        return None, None


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
) -> tuple[pd.DataFrame, dict]:
    """A manifest of a CBIS-DDSM download: (DataFrame, summary dict).

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
    index = build_index(root, wanted_series=wanted, cache=cache, walk=w)
    df, unresolved, counts = resolve_images(images, index)
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


def _reason_kind(reason: str) -> str:
    if "not found under ROOT" in reason:
        return "series not found under ROOT"
    if reason.startswith("metadata.csv lists"):
        return "metadata.csv folder missing or empty"
    if reason.startswith("malformed"):
        return "malformed path in CSV"
    return reason
