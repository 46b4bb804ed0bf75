"""Manifests from class-per-folder trees: ``ROOT/<label>/...`` or ``ROOT/<split>/<label>/...``.

Label folders are matched case-insensitively against the manifest labels (``normal``, ``benign``,
``malignant``; ``benign_without_callback`` counts as ``benign``); top-level split folders
(``train``, ``test``, ``val``) fill the ``split`` column. Every file with a supported extension
(``IMAGE_EXTENSIONS``) below a label folder is one row; other files are ignored (and counted).
``patient_id`` comes from ``patient_pattern`` (a regular expression searched in the path relative
to ROOT; its ``patient`` group, else group 1, else the whole match) or, without one, equals the
image id (with a warning: patient-grouped splits then cannot group anything). Laterality and view
are taken from file-name tokens when present (``LEFT``/``RIGHT``, ``CC``/``MLO``, ``L_CC``,
``RMLO``...).

Real trees are untidy: hidden files (``.DS_Store``, ``._x.png``), ``Thumbs.db``, ``DICOMDIR``,
archiver folders (``__MACOSX``, ``@eaDir``) are skipped; extensions match case-insensitively; a
file without an extension (or with a numeric one) is an image when it carries the DICOM marker;
symlinked folders are followed (once each); broken symlinks are skipped with a warning.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pandas as pd

from featmammo.datasets.manifest import (
    REQUIRED_COLUMNS,
    image_ids_from_paths,
    normalize_label,
    normalize_split,
)
from featmammo.errors import ConfigError, ManifestError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".dcm", ".png", ".jpg", ".jpeg", ".pgm", ".tif", ".tiff")
# folders made by archivers and NAS boxes, never data: skipped wherever they appear
JUNK_FOLDERS = frozenset({"__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information"})
# files that are never images: OS thumbnails/settings, and DICOMDIR (a DICOM media index with the
# DICM marker but no pixels)
JUNK_FILES = frozenset({"Thumbs.db", "desktop.ini", "DICOMDIR"})


def looks_like_dicom(path) -> bool:
    """True when the file carries the DICOM ``DICM`` marker at byte 128 (for files without an
    extension, or with a numeric one such as a UID: NBIA downloads and PACS exports name DICOMs
    like that). Unreadable files are False."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def dicom_candidate_name(name: str) -> bool:
    """A file name that may be a DICOM without a ``.dcm`` extension: none, or a numeric one."""
    suffix = Path(name).suffix
    return suffix == "" or suffix[1:].isdigit()


_SEP = r"(?:^|[_\-. ])"
_END = r"(?=$|[_\-. ])"
_VIEW_RE = re.compile(rf"{_SEP}(?P<lat>[LR])?[_\-]?(?P<view>CC|MLO){_END}", re.IGNORECASE)
_LAT_RE = re.compile(rf"{_SEP}(?P<lat>LEFT|RIGHT){_END}", re.IGNORECASE)


def _side_view(name: str) -> tuple[str, str]:
    stem = Path(name).stem
    lat, view = "", ""
    m = _VIEW_RE.search(stem)
    if m:
        view = m.group("view").upper()
        lat = (m.group("lat") or "").upper()
    m = _LAT_RE.search(stem)
    if m:
        lat = m.group("lat")[0].upper()
    return lat, view


def _patient(rel: str, pattern: re.Pattern) -> str | None:
    m = pattern.search(rel)
    if not m:
        return None
    if "patient" in pattern.groupindex:
        return m.group("patient")
    return m.group(1) if pattern.groups else m.group(0)


def build_folder(
    root, *, patient_pattern: str | None = None, source: str = "folder"
) -> pd.DataFrame:
    """One manifest row per image file under ``ROOT/<label>/`` (or ``ROOT/<split>/<label>/``).

    Raises ManifestError when ROOT is missing, a top-level folder is neither a label nor a split,
    no image is found, or ``patient_pattern`` does not match a file (named in the message).
    """
    # absolute (manifest paths must not depend on the cwd), '..' removed, symlinks kept
    root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder")
    pattern = None
    if patient_pattern:
        try:
            pattern = re.compile(patient_pattern)
        except re.error as exc:
            raise ConfigError(f"--patient-pattern {patient_pattern!r}: {exc}") from exc

    def subdirs(d: Path) -> list[Path]:
        return sorted(
            p
            for p in d.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name not in JUNK_FOLDERS
        )

    label_dirs: list[tuple[str, str, Path]] = []  # (split, label, folder)
    for top in subdirs(root):
        lab = normalize_label(top.name)
        spl = normalize_split(top.name)
        if lab is not None:
            label_dirs.append(("", lab, top))
        elif spl:
            for inner in subdirs(top):
                lab2 = normalize_label(inner.name)
                if lab2 is None:
                    raise ManifestError(
                        f"{inner}: folder name is not a label "
                        "(expected normal, benign or malignant)"
                    )
                label_dirs.append((spl, lab2, inner))
        else:
            hint = ""
            if normalize_label(root.name) is not None or normalize_split(root.name):
                hint = f"; ROOT itself looks like a label/split folder: point at {root.parent}"
            raise ManifestError(
                f"{top}: top-level folder is neither a label (normal, benign, malignant) nor a "
                f"split (train, test, val){hint}"
            )
    paths, labels, splits, ignored, broken = [], [], [], 0, []
    for spl, lab, folder in label_dirs:
        # symlinked folders are followed, each real folder visited once (no loop on a cycle)
        seen_dirs: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen_dirs:
                log.warning("%s: folder already visited (symlink loop?): skipped", dirpath)
                dirnames[:] = []
                continue
            seen_dirs.add(real)
            dirnames[:] = sorted(
                d for d in dirnames if not d.startswith(".") and d not in JUNK_FOLDERS
            )
            for name in sorted(filenames):
                if name.startswith(".") or name in JUNK_FILES:
                    continue
                path = Path(dirpath) / name
                if not name.lower().endswith(IMAGE_EXTENSIONS) and not (
                    dicom_candidate_name(name) and looks_like_dicom(path)
                ):
                    ignored += 1
                    continue
                if not path.exists():  # a symlink to nothing
                    broken.append(str(path))
                    continue
                paths.append(str(path))
                labels.append(lab)
                splits.append(spl)
    if ignored:
        log.info(
            "%s: ignored %d file(s) without an image extension %s (or DICOM marker)",
            root,
            ignored,
            IMAGE_EXTENSIONS,
        )
    if broken:
        log.warning(
            "%s: skipped %d broken symlink(s) (target missing), e.g. %s",
            root,
            len(broken),
            broken[0],
        )
    if not paths:
        raise ManifestError(
            f"{root}: no image found (expected ROOT/<label>/... with extensions "
            f"{', '.join(IMAGE_EXTENSIONS)})"
        )
    by_target: dict[str, list[int]] = {}
    for i, path in enumerate(paths):
        by_target.setdefault(os.path.realpath(path), []).append(i)
    twice = [v for v in by_target.values() if len(v) > 1]
    if twice:
        first = twice[0]
        log.warning(
            "%s: %d file(s) are reached by more than one path (symlinks), e.g. %s (%s); each "
            "is one row per path: the same pixels then count twice",
            root,
            len(twice),
            " and ".join(paths[i] for i in first),
            "/".join(sorted({labels[i] for i in first})),
        )
    ids = image_ids_from_paths(paths, root)
    rels = [Path(os.path.relpath(p, root)).as_posix() for p in paths]
    if pattern is not None:
        patients, bad = [], []
        for rel in rels:
            pid = _patient(rel, pattern)
            if not pid:
                bad.append(rel)
            patients.append(pid or "")
        if bad:
            raise ManifestError(
                f"{root}: --patient-pattern {patient_pattern!r} matches no patient id in "
                f"{len(bad)} file(s), e.g. {bad[:3]}"
            )
    else:
        patients = list(ids)
        log.warning(
            "%s: no --patient-pattern given: patient_id = image_id for %d images. "
            "Patient-grouped splits cannot keep a patient's views together (possible leakage).",
            root,
            len(ids),
        )
    sides = [_side_view(Path(p).name) for p in paths]
    df = pd.DataFrame(
        {
            "image_id": ids,
            "path": paths,
            "label": labels,
            "patient_id": patients,
            "laterality": [s[0] for s in sides],
            "view": [s[1] for s in sides],
            "split": splits,
            "source": source,
        },
        columns=REQUIRED_COLUMNS,
    )
    log.info(
        "%s: %d images, %d patients, labels %s",
        root,
        len(df),
        df["patient_id"].nunique(),
        df["label"].value_counts().to_dict(),
    )
    return df


def folder_summary(
    df: pd.DataFrame, root, *, patient_pattern: str | None = None, source: str = "folder"
) -> dict:
    """The summary of a :func:`build_folder` manifest (as the set builders return it, see
    :func:`featmammo.datasets.base.summarize`): counts, where ``patient_id`` came from, the audit.
    A folder tree has no table, so nothing is unresolved."""
    from featmammo.datasets.base import summarize

    return summarize(
        df,
        root=Path(os.path.abspath(os.path.expanduser(os.fspath(root)))),
        source=source,
        label_rule="the label folder's name",
        unresolved=[],
        notes=[]
        if patient_pattern
        else ["no --patient-pattern: patient_id = image_id (no patient grouping)"],
        patient_id="pattern" if patient_pattern else "image_id (no pattern given)",
    )
