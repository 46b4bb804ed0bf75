"""The Kaggle "DDSM Mammography" patch set as distributed: one manifest row per 299 x 299 patch.

Files (found anywhere under ROOT): ``training10_0.tfrecords`` ... ``training10_4.tfrecords`` (one
``tf.train.Example`` per patch: ``label``, ``label_normal``, ``image`` = raw uint8 bytes) and the
pairs ``cv10_data.npy`` / ``cv10_labels.npy`` and ``test10_data.npy`` / ``test10_labels.npy``
(``(N, 299, 299, 1)`` uint8 and ``(N,)`` integer codes).

Rules (documented choices):

- A row's ``path`` addresses one patch: ``<file>#<index>`` (0-based record / array index),
  readable by :func:`featmammo.io.read_image`. TFRecords are streamed record by record (CRCs
  checked; a corrupt record stops the build with an ImageReadError naming the file, the record
  and its byte offset); ``.npy`` data arrays are only memory-mapped to check their shape and
  count, never loaded. Memory stays flat whatever the set's size.
- Label codes: 0 normal; 1 benign calcification, 2 benign mass, 3 malignant calcification,
  4 malignant mass -> ``label`` normal/benign/malignant and ``abnormality_type`` calc/mass
  (empty for normal). Any other code stops the build naming the file and record. A record whose
  ``label_normal`` contradicts its code (``label_normal`` must be 0 for code 0, else 1) stops too.
- Splits: ``training10*`` -> train, ``cv10*`` -> val, ``test10*`` -> test (from the file name).
  Other ``.tfrecords`` / ``*_data.npy`` files are listed in the summary and left out.
- The set records no patient, no source image and no laterality/view: ``patient_id`` is the
  patch's own id, so patient-grouped CV cannot keep a woman's patches (or the augmented copies
  of one lesion) together; the summary says so. Its counts are compared with the published ones.
- A ``*_data.npy`` without its ``*_labels.npy`` (or the reverse), or a pair whose lengths
  differ, is an unresolved entry (listed with the reason), never a guess.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from featmammo.datasets.base import abs_root, manifest_frame, summarize
from featmammo.errors import ManifestError

log = logging.getLogger(__name__)

SOURCE = "ddsm-patches"
CODES = {
    0: ("normal", ""),
    1: ("benign", "calc"),
    2: ("benign", "mass"),
    3: ("malignant", "calc"),
    4: ("malignant", "mass"),
}
LABEL_RULE = (
    "Kaggle DDSM patch codes: 0 normal; 1 benign calcification, 2 benign mass, "
    "3 malignant calcification, 4 malignant mass"
)
SPLIT_PREFIXES = (("training10", "train"), ("cv10", "val"), ("test10", "test"))
# The counts the set's files hold as written (DATASETS.md); the README says 55,890 for training.
PUBLISHED = {"train": 55885, "val": 7682, "test": 7682}
EXTRA_COLUMNS = [
    "label_rule",
    "abnormality_type",
    "label_code",
    "label_normal",
    "record_file",
    "record_index",
]
_TFRECORD_SUFFIXES = (".tfrecords", ".tfrecord")
_NPY_RE = re.compile(r"^(?P<stem>.+)_(?P<kind>data|labels)\.npy$", re.IGNORECASE)
NO_PATIENT_NOTE = (
    "the patch set records no patient or source image: patient_id is each patch's own id, so "
    "patient-grouped CV cannot keep one woman's patches (or augmented copies of one lesion) "
    "together; treat CV scores on this set as optimistic"
)


def split_of(name: str) -> str | None:
    """``train``/``val``/``test`` from a file name (``training10_3.tfrecords`` -> train)."""
    low = name.lower()
    for prefix, split in SPLIT_PREFIXES:
        if low.startswith(prefix):
            return split
    return None


def _code(value, where: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ManifestError(f"{where}: label {value!r} is not an integer code")
    code = value
    if code not in CODES:
        raise ManifestError(
            f"{where}: unknown label code {code} (expected 0-4: {LABEL_RULE.split(': ', 1)[1]})"
        )
    return code


def _row(file: Path, index: int, code: int, label_normal, split: str, stem: str) -> dict:
    from featmammo.io.records import record_path

    label, kind = CODES[code]
    image_id = f"{stem}-{index:05d}"
    return {
        "image_id": image_id,
        "path": record_path(file, index),
        "label": label,
        "patient_id": image_id,
        "laterality": "",
        "view": "",
        "split": split,
        "source": SOURCE,
        "label_rule": LABEL_RULE,
        "abnormality_type": kind,
        "label_code": code,
        "label_normal": "" if label_normal is None else int(label_normal),
        "record_file": file.name,
        "record_index": index,
    }


def _check_label_normal(value, code: int, where: str):
    if value is None:
        return None
    if value not in (0, 1) or value != int(code > 0):
        raise ManifestError(
            f"{where}: label_normal {value!r} contradicts label code {code} "
            "(label_normal is 0 for code 0 and 1 for codes 1-4)"
        )
    return value


def _tfrecord_rows(path: Path, split: str) -> list[dict]:
    from featmammo.io import tfrecord

    rows = []
    stem = path.name.split(".")[0]
    for index, _offset, data in tfrecord.iter_records(path):
        where = f"{path}#{index}"
        try:
            ex = tfrecord.parse_example(data)
        except tfrecord.ExampleParseError as exc:
            raise ManifestError(f"{where}: record is not a tf.train.Example ({exc})") from None
        del data
        labels = ex.get("label")
        if not labels or len(labels) != 1:
            raise ManifestError(
                f"{where}: the record has no single 'label' value (features: "
                f"{', '.join(sorted(ex)) or 'none'})"
            )
        code = _code(labels[0], where)
        ln = ex.get("label_normal")
        label_normal = _check_label_normal(ln[0] if ln else None, code, where)
        rows.append(_row(path, index, code, label_normal, split, stem))
    return rows


def _npy_rows(data_path: Path, labels_path: Path, split: str, unresolved: list) -> list[dict]:
    try:
        data = np.load(data_path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - ValueError/OSError on a damaged header
        raise ManifestError(f"{data_path}: not a readable .npy array ({exc})") from None
    shape = data.shape
    del data
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise ManifestError(
            f"{data_path}: array of shape {shape}; expected (N, H, W) or (N, H, W, 1) patches"
        )
    try:
        labels = np.load(labels_path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise ManifestError(f"{labels_path}: not a readable .npy array ({exc})") from None
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.dtype.kind not in "iuf":
        raise ManifestError(
            f"{labels_path}: labels of shape {labels.shape} dtype {labels.dtype}; "
            "expected (N,) integer codes"
        )
    if labels.shape[0] != shape[0]:
        unresolved.append(
            {
                "image_id": "",
                "where": str(data_path),
                "reason": f"{shape[0]} patches but {labels.shape[0]} labels in {labels_path.name}",
            }
        )
        return []
    stem = _NPY_RE.match(data_path.name).group("stem")
    rows = []
    for index, value in enumerate(labels.tolist()):
        code = _code(value, f"{labels_path}#{index}")
        rows.append(_row(data_path, index, code, None, split, stem))
    return rows


def _find(root: Path) -> tuple[list[Path], dict[str, dict[str, Path]]]:
    tfrecords: list[Path] = []
    npys: dict[str, dict[str, Path]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            low = name.lower()
            if low.endswith(_TFRECORD_SUFFIXES):
                tfrecords.append(Path(dirpath) / name)
            m = _NPY_RE.match(name)
            if m:
                key = str(Path(dirpath) / m.group("stem"))
                npys.setdefault(key, {})[m.group("kind").lower()] = Path(dirpath) / name
    return tfrecords, npys


def build_ddsm_patches(root) -> tuple[pd.DataFrame, dict]:
    """A manifest of the Kaggle DDSM patch set under ``root``: (DataFrame, summary)."""
    root = abs_root(root, "DDSM patch set")
    tfrecords, npys = _find(root)
    rows: list[dict] = []
    unresolved: list[dict] = []
    ignored: list[str] = []
    per_file: dict[str, int] = {}
    for path in tfrecords:
        split = split_of(path.name)
        if split is None:
            ignored.append(str(path))
            continue
        got = _tfrecord_rows(path, split)
        per_file[str(path)] = len(got)
        rows.extend(got)
    for key, pair in sorted(npys.items()):
        data_path, labels_path = pair.get("data"), pair.get("labels")
        name = Path(key).name
        split = split_of(name)
        if split is None:
            ignored.extend(str(p) for p in pair.values())
            continue
        if data_path is None or labels_path is None:
            have = data_path or labels_path
            missing = f"{name}_{'labels' if data_path is not None else 'data'}.npy"
            unresolved.append(
                {"image_id": "", "where": str(have), "reason": f"{missing} not found beside it"}
            )
            continue
        got = _npy_rows(data_path, labels_path, split, unresolved)
        per_file[str(data_path)] = len(got)
        rows.extend(got)
    if not rows:
        raise ManifestError(
            f"{root}: no patches found (expected training10_*.tfrecords and/or "
            "cv10_data.npy + cv10_labels.npy, test10_data.npy + test10_labels.npy)"
        )
    df = manifest_frame(rows, EXTRA_COLUMNS)
    del rows
    split_counts = df["split"].value_counts().to_dict()
    codes = df.groupby(["split", "label_code"]).size()
    notes = [NO_PATIENT_NOTE]
    for split, expected in PUBLISHED.items():
        n = int(split_counts.get(split, 0))
        if n and n != expected:
            notes.append(f"{split}: {n:,} patches; the published files hold {expected:,}")
    if ignored:
        notes.append(f"{len(ignored)} file(s) whose name gives no split were left out")
    notes.append(
        "normals (DDSM, tiled) and abnormals (CBIS-DDSM ROIs, augmented) were made by two "
        "pipelines: a classifier can learn the source; test10's abnormals are masses only"
    )
    summary = summarize(
        df,
        root=root,
        source=SOURCE,
        label_rule=LABEL_RULE,
        unresolved=unresolved,
        notes=notes,
        files=per_file,
        label_codes={f"{s}:{int(c)}": int(n) for (s, c), n in codes.items()},
        ignored_files=ignored,
    )
    return df, summary


__all__ = ["CODES", "LABEL_RULE", "SOURCE", "build_ddsm_patches", "split_of"]
