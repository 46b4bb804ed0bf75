"""CBIS-DDSM on disk: the layouts users have and the Series-UID index of a download
(:func:`build_index`), with its per-file header cache. The layouts are listed in
:mod:`featmammo.datasets.cbis_ddsm`.
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

from featmammo.atomic import atomic_write
from featmammo.datasets.base import records as _records
from featmammo.datasets.folders import (
    JUNK_FILES,
    JUNK_FOLDERS,
    dicom_candidate_name,
    looks_like_dicom,
)
from featmammo.datasets.manifest import read_csv_strings
from featmammo.errors import ManifestError

log = logging.getLogger(__name__)

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


def _lower_keys(by_name: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """File-name index with lowercase keys (``Mass_Case_Description_Train_Set.csv`` matches)."""
    out: dict[str, list[Path]] = defaultdict(list)
    for name, paths in by_name.items():
        out[name.lower()].extend(paths)
    return out


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
            text = json.dumps(
                {"version": INDEX_VERSION, "root": str(self.root.resolve()), "files": self.entries}
            )
            # a cache: rebuilt when unreadable, so no fsync is needed (a kill -9 cannot tear it)
            atomic_write(self.path, lambda f: f.write(text.encode()), durable=False)
            log.info("cached the header index of %d files in %s", len(self.entries), self.path)
        except OSError as exc:
            log.warning("could not write the index cache %s (%s)", self.path, exc)


def _file_location(loc: str) -> PurePosixPath:
    """NBIA ``File Location`` (``.\\CBIS-DDSM\\Subject\\...``) -> a relative posix path."""
    parts = [p for p in re.split(r"[\\/]+", loc.strip()) if p and p != "."]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def build_index(
    root, *, wanted_series: set[str] | None = None, cache: bool = True, walk=None, progress=None
) -> FileIndex:
    """Index a CBIS-DDSM download by Series UID (see the module docstring for the layouts).

    ``progress``: an ``update(n, total)`` callback told of every DICOM header looked up (read or
    from the cache), out of the DICOM files found (a CLI progress bar)."""
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
        if progress is not None:
            progress(1, len(w.dcm))
        entry = hc.get(path)
        if "error" in entry:
            skipped.append({"path": str(path), "reason": entry["error"]})
            return
        rec = {k: v for k, v in entry.items() if k != "sig"}
        rec["path"] = str(path)
        series[rec["series_uid"]].append(rec)

    for meta_csv in sorted(metadata):
        mdf, _ = read_csv_strings(meta_csv, short_rows="list")
        _skip_cut(meta_csv, mdf, skipped)  # their series are then found by the header scan
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


def _skip_cut(table: Path, df, skipped: list) -> None:
    """Rows of an index CSV cut short (a truncated download): listed as skipped, never padded."""
    for r in df.attrs.get("short_rows", ()):
        skipped.append({"path": f"{table}: line {r['line']}", "reason": r["reason"]})


def _index_jpeg(info_csv: Path, w: _Walk, series: dict, skipped: list) -> None:
    df, lines = read_csv_strings(info_csv, short_rows="list")
    _skip_cut(info_csv, df, skipped)
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
