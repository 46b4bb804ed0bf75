"""The Kaggle "DDSM Mammography" patch set as distributed: one manifest row per 299 x 299 patch.

Files (found anywhere under ROOT): ``training10_0.tfrecords`` ... ``training10_4.tfrecords`` (one
``tf.train.Example`` per patch: ``label``, ``label_normal``, ``image`` = raw uint8 bytes) and the
pairs ``cv10_data.npy`` / ``cv10_labels.npy`` and ``test10_data.npy`` / ``test10_labels.npy``
(``(N, 299, 299, 1)`` uint8 and ``(N,)`` integer codes).

Rules (documented choices):

- A row's ``path`` addresses one patch: ``<file>#<index>`` (0-based record / array index),
  readable by :func:`featmammo.io.read_image`. TFRecords are streamed record by record (CRCs
  checked); ``.npy`` data arrays are only memory-mapped to check their shape, dtype and count,
  never loaded. Memory stays flat whatever the set's size.
- Damage (``corrupt_records``, CLI ``--corrupt-records``): ``skip`` (default) lists each unusable
  record as an unresolved row naming the file, the record and its byte offset and goes on: past a
  record whose data CRC fails or that is not a ``tf.train.Example`` with one ``label``; a damaged
  or truncated record header ends that file (where the next record starts is unknown: the
  records before it stay, the rest is one listed entry). ``stop`` raises the first damage
  (ImageReadError naming the file, record and offset). A ``.npy`` pair that cannot be used --
  unreadable, not ``(N, H, W[, 1])``, not uint8/uint16 patches (a float32 copy: every read
  would fail), labels not ``(N,)`` integer codes, or a length mismatch -- is one unresolved
  entry saying which, never a guess.
- Label codes: 0 normal; 1 benign calcification, 2 benign mass, 3 malignant calcification,
  4 malignant mass -> ``label`` normal/benign/malignant and ``abnormality_type`` calc/mass
  (empty for normal). Any other code stops the build naming the file and record. A record whose
  ``label_normal`` contradicts its code (``label_normal`` must be 0 for code 0, else 1) stops too.
- Splits (``patch_splits``, CLI ``--patch-splits``): ``training10*`` -> train always. The set's
  own README says its test/validation split "was done incorrectly": ``test10`` holds only masses
  and ``cv10`` only calcifications among the abnormal patches, and they "should be combined".
  ``combined`` (the default) puts ``cv10`` and ``test10`` together as ``test`` (both lesion types;
  no ``val`` rows: a validation split is then drawn from the training rows); ``official`` keeps
  ``cv10`` -> val and ``test10`` -> test as distributed (a model chosen on val has seen
  calcifications only, and test scores masses only). The summary says which, with the caveat.
  Other ``.tfrecords`` / ``*_data.npy`` files are listed in the summary and left out.
- The set records no patient, no source image and no laterality/view: ``patient_id`` is the
  patch's own id, so patient-grouped CV cannot keep a woman's patches (or the augmented copies
  of one lesion) together; the summary says so. Its counts are compared with the published ones.
- A ``*_data.npy`` without its ``*_labels.npy`` (or the reverse) is an unresolved entry too.
  When nothing usable is found the error says what was found and why none of it could be used.
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
PATCH_SPLITS = ("combined", "official")
CORRUPT_POLICIES = ("skip", "stop")
SPLIT_CAVEAT = (
    "the set's own README says its test/validation split was done incorrectly: test10 holds only "
    "masses and cv10 only calcifications among the abnormal patches, and they should be combined"
)
SPLIT_NOTES = {
    "combined": "--patch-splits combined: cv10 + test10 -> test (masses and calcifications); no "
    "val rows: a validation split is drawn from the training rows",
    "official": "--patch-splits official: cv10 -> val holds calcifications only and test10 -> test "
    "masses only: a model chosen on val never saw a mass there, and test scores masses only "
    "(--patch-splits combined merges them into one test split)",
}
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
#: how to extract the patches: the default breast crop (Otsu's largest component) is for whole
#: mammograms; in a patch full of tissue it picks a bright mass or a dense blob, a zoom that
#: differs with the label
CROP_NOTE = (
    "these are 299x299 patches, not whole mammograms: run `featmammo extract` on them with "
    "--crop none (the default breast crop finds the largest bright region, which in a patch full "
    "of tissue is a mass or a dense blob: a zoom that differs with the label)"
)


def split_of(name: str, patch_splits: str = "official") -> str | None:
    """``train``/``val``/``test`` from a file name (``training10_3.tfrecords`` -> train); with
    ``patch_splits="combined"``, ``cv10`` files are ``test`` too."""
    low = name.lower()
    for prefix, split in SPLIT_PREFIXES:
        if low.startswith(prefix):
            return "test" if split == "val" and patch_splits == "combined" else split
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


def _tfrecord_rows(path: Path, split: str, unresolved: list, corrupt: str) -> list[dict]:
    from featmammo.errors import ImageReadError
    from featmammo.io import tfrecord

    rows = []
    stem = path.name.split(".")[0]
    seen = 0
    try:
        records = tfrecord.iter_records(path, errors="raise" if corrupt == "stop" else "yield")
        for index, offset, data in records:
            seen += 1
            where = f"{path}#{index}"
            if isinstance(data, ImageReadError):
                unresolved.append(_damaged(path, index, offset, data.reason))
                continue
            try:
                ex = tfrecord.parse_example(data)
            except tfrecord.ExampleParseError as exc:
                problem = f"record is not a tf.train.Example ({exc})"
                if corrupt == "stop":
                    raise ManifestError(f"{where}: {problem}") from None
                unresolved.append(_damaged(path, index, offset, problem))
                continue
            del data
            labels = ex.get("label")
            if not labels or len(labels) != 1:
                problem = (
                    "the record has no single 'label' value (features: "
                    f"{', '.join(sorted(ex)) or 'none'})"
                )
                if corrupt == "stop":
                    raise ManifestError(f"{where}: {problem}")
                unresolved.append(_damaged(path, index, offset, problem))
                continue
            code = _code(labels[0], where)
            ln = ex.get("label_normal")
            label_normal = _check_label_normal(ln[0] if ln else None, code, where)
            rows.append(_row(path, index, code, label_normal, split, stem))
    except ImageReadError as exc:
        if corrupt == "stop" or exc.path != str(path):
            raise
        # the file cannot be opened at all (gzip-compressed, unreadable): one listed entry
        unresolved.append({"image_id": "", "where": str(path), "reason": exc.reason})
        return rows
    if not seen:
        reason = "the file holds no records (0 bytes: a failed or unfinished download?)"
        if corrupt == "stop":
            raise ManifestError(f"{path}: {reason}")
        unresolved.append({"image_id": "", "where": str(path), "reason": reason})
    return rows


def _damaged(path: Path, index: int, offset: int, problem: str) -> dict:
    if problem.startswith(f"record {index} at byte"):
        problem = problem.split(": ", 1)[1]
    if "record header" in problem or "past the end" in problem:
        problem += "; the records after it cannot be located (the file is read up to here)"
    return {
        "image_id": f"{path.name.split('.')[0]}-{index:05d}",
        "where": f"{path}#{index}",
        "reason": f"record {index} at byte {offset}: {problem}",
    }


def _load(path: Path, **kwargs) -> tuple[np.ndarray | None, str]:
    try:
        return np.load(path, allow_pickle=False, **kwargs), ""
    except Exception as exc:  # noqa: BLE001 - ValueError/OSError/EOFError on a damaged file
        return None, f"{path.name}: not a readable .npy array ({exc})"


def _npy_rows(data_path: Path, labels_path: Path, split: str, unresolved: list) -> list[dict]:
    def unusable(reason: str) -> list:
        unresolved.append({"image_id": "", "where": str(data_path), "reason": reason})
        return []

    data, problem = _load(data_path, mmap_mode="r")
    if data is None:
        return unusable(problem)
    shape, dtype = data.shape, data.dtype
    del data
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        return unusable(
            f"{data_path.name}: array of shape {shape}; expected (N, H, W) or (N, H, W, 1) patches"
        )
    if dtype not in (np.uint8, np.uint16):
        return unusable(
            f"{data_path.name}: patches of dtype {dtype}; the reader takes uint8 or uint16 "
            "(every read of this file would fail: convert it, e.g. to uint8 as distributed)"
        )
    labels, problem = _load(labels_path)
    if labels is None:
        return unusable(problem)
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.dtype.kind not in "iuf":
        return unusable(
            f"{labels_path.name}: labels of shape {labels.shape} dtype {labels.dtype}; "
            "expected (N,) integer codes"
        )
    if labels.shape[0] != shape[0]:
        return unusable(
            f"length mismatch: {data_path.name} holds {shape[0]} patches but "
            f"{labels_path.name} {labels.shape[0]} labels"
        )
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


def build_ddsm_patches(
    root, *, patch_splits: str = "combined", corrupt_records: str = "skip"
) -> tuple[pd.DataFrame, dict]:
    """A manifest of the Kaggle DDSM patch set under ``root``: (DataFrame, summary).

    ``patch_splits``: ``combined`` (cv10 + test10 -> test) or ``official`` (cv10 -> val);
    ``corrupt_records``: ``skip`` (list damaged records, go on) or ``stop``. See the module
    docstring."""
    from featmammo.errors import ConfigError

    if patch_splits not in PATCH_SPLITS:
        raise ConfigError(f"patch_splits={patch_splits!r}: expected one of {PATCH_SPLITS}")
    if corrupt_records not in CORRUPT_POLICIES:
        raise ConfigError(f"corrupt_records={corrupt_records!r}: expected {CORRUPT_POLICIES}")
    root = abs_root(root, "DDSM patch set")
    tfrecords, npys = _find(root)
    rows: list[dict] = []
    unresolved: list[dict] = []
    ignored: list[str] = []
    per_file: dict[str, int] = {}
    for path in tfrecords:
        split = split_of(path.name, patch_splits)
        if split is None:
            ignored.append(str(path))
            continue
        got = _tfrecord_rows(path, split, unresolved, corrupt_records)
        per_file[str(path)] = len(got)
        rows.extend(got)
    for key, pair in sorted(npys.items()):
        data_path, labels_path = pair.get("data"), pair.get("labels")
        name = Path(key).name
        split = split_of(name, patch_splits)
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
        raise ManifestError(_nothing_found(root, tfrecords, npys, ignored, unresolved))
    df = manifest_frame(rows, EXTRA_COLUMNS)
    del rows
    split_counts = df["split"].value_counts().to_dict()
    codes = df.groupby(["split", "label_code"]).size()
    notes = [NO_PATIENT_NOTE, SPLIT_CAVEAT, SPLIT_NOTES[patch_splits], CROP_NOTE]
    published = dict(PUBLISHED)
    if patch_splits == "combined":
        published = {"train": PUBLISHED["train"], "test": PUBLISHED["val"] + PUBLISHED["test"]}
    for split, expected in published.items():
        n = int(split_counts.get(split, 0))
        if n and n != expected:
            notes.append(f"{split}: {n:,} patches; the published files hold {expected:,}")
    if ignored:
        notes.append(f"{len(ignored)} file(s) whose name gives no split were left out")
    damaged = sum(1 for u in unresolved if "#" in u["where"])
    if damaged:
        notes.append(
            f"{damaged} damaged record(s) left out and listed (--corrupt-records stop stops "
            "at the first)"
        )
    notes.append(
        "normals (DDSM, tiled) and abnormals (CBIS-DDSM ROIs, augmented) were made by two "
        "pipelines: a classifier can learn the source"
    )
    summary = summarize(
        df,
        root=root,
        source=SOURCE,
        label_rule=LABEL_RULE,
        unresolved=unresolved,
        notes=notes,
        reason_kind=_reason_kind,
        patch_splits=patch_splits,
        split_caveat=SPLIT_CAVEAT,
        corrupt_records=corrupt_records,
        files=per_file,
        label_codes={f"{s}:{int(c)}": int(n) for (s, c), n in codes.items()},
        ignored_files=ignored,
    )
    return df, summary


def _reason_kind(reason: str) -> str:
    if reason.startswith("record "):
        return "damaged record"
    for key, kind in (
        ("holds no records", "empty file"),
        ("not found beside it", "unpaired .npy"),
        ("length mismatch", "data/labels length mismatch"),
        ("patches of dtype", "patches not uint8/uint16"),
        ("not a readable .npy", "unreadable .npy"),
    ):
        if key in reason:
            return kind
    return "unusable file"


def _nothing_found(root, tfrecords, npys, ignored, unresolved) -> str:
    """Why no patch made it: nothing named like the set, or what was wrong with what was."""
    if not unresolved:
        what = (
            f"; {len(ignored)} file(s) whose name gives no split (training10_*, cv10_*, test10_*)"
            if ignored
            else ""
        )
        return (
            f"{root}: no patches found (expected training10_*.tfrecords and/or "
            "cv10_data.npy + cv10_labels.npy, test10_data.npy + test10_labels.npy)" + what
        )
    shown = "; ".join(f"{u['where']}: {u['reason']}" for u in unresolved[:3])
    more = f"; and {len(unresolved) - 3} more" if len(unresolved) > 3 else ""
    return (
        f"{root}: no usable patch: {len(tfrecords)} TFRecord file(s) and {len(npys)} .npy "
        f"pair(s) found, none usable: {shown}{more}"
    )


__all__ = [
    "CODES",
    "CORRUPT_POLICIES",
    "LABEL_RULE",
    "PATCH_SPLITS",
    "SOURCE",
    "SPLIT_CAVEAT",
    "build_ddsm_patches",
    "split_of",
]
