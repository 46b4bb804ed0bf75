"""Patient-grouped, stratified splits and the leakage audit.

Owns :func:`grouped_kfold` (scikit-learn ``StratifiedGroupKFold``, shuffled and seeded),
:func:`grouped_holdout` (whole patients drawn at random, stratified by class, so any ``test_size``
is honoured and both sides hold the same kind of patient: never filled by patient size) and
:func:`audit`, which reports patients shared between splits (and between CV folds when a ``fold``
column exists), duplicated files and duplicated patient/side/view images.

No torch. Errors: ``ConfigError`` for impossible requests (fewer patients than folds, bad sizes).
A class absent from a fold's validation or training side is a warning, not an error.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd

from featmammo.errors import ConfigError, ManifestError

log = logging.getLogger(__name__)


def _as_arrays(labels, groups) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=object)
    g = np.asarray(groups, dtype=object)
    if y.ndim != 1 or g.ndim != 1 or len(y) != len(g):
        raise ConfigError(f"labels ({y.shape}) and groups ({g.shape}) must be 1-D of equal length")
    if len(y) == 0:
        raise ConfigError("cannot split an empty set")
    missing = [i for i, v in enumerate(g) if v is None or str(v).strip() in ("", "nan", "NaN")]
    if missing:
        raise ManifestError(f"row(s) {missing[:10]} have no patient/group id")
    return y, g


def _warn_missing_classes(
    y: np.ndarray, train: np.ndarray, val: np.ndarray, name: str, held_out: str = "validation"
) -> None:
    classes = sorted(set(y.tolist()), key=str)
    for side, idx in ((held_out, val), ("training", train)):
        present = set(y[idx].tolist())
        absent = [c for c in classes if c not in present]
        if absent:
            log.warning("%s: class(es) %s absent from the %s side", name, absent, side)


def grouped_kfold(labels: Sequence, groups: Sequence, k: int = 5, seed: int = 0):
    """Stratified, patient-disjoint k-fold: a list of ``(train_idx, val_idx)`` int arrays.

    Every group (patient) lands in exactly one validation fold. Raises ConfigError when ``k < 2``
    or there are fewer groups than folds; warns when a class is absent from a fold.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    y, g = _as_arrays(labels, groups)
    k = int(k)
    if k < 2:
        raise ConfigError(f"k-fold needs k >= 2 (got {k})")
    n_groups = len(set(g.tolist()))
    if n_groups < k:
        raise ConfigError(
            f"cannot make {k} patient-disjoint folds from {n_groups} patient(s); "
            f"use k <= {n_groups}"
        )
    _, y_codes = np.unique(y.astype(str), return_inverse=True)
    _, g_codes = np.unique(g.astype(str), return_inverse=True)
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folds = [
            (np.sort(tr).astype(np.int64), np.sort(va).astype(np.int64))
            for tr, va in cv.split(np.zeros(len(y)), y_codes, g_codes)
        ]
    for w in caught:
        log.warning("grouped_kfold: %s", w.message)
    for i, (tr, va) in enumerate(folds):
        if set(g[tr].tolist()) & set(g[va].tolist()):  # pragma: no cover - sklearn guarantees it
            raise RuntimeError(f"fold {i} is not patient-disjoint")
        if len(va) == 0:
            raise ConfigError(f"fold {i} is empty: too few patients for k={k}")
        _warn_missing_classes(y, tr, va, f"fold {i}")
    return folds


def _random_group_split(y: np.ndarray, g: np.ndarray, test_size: float, seed) -> np.ndarray:
    """Boolean mask of the held-out rows: whole patients drawn at random, stratified by class.

    Every patient belongs to the stratum of its most frequent label (ties: the first label in
    sorted order). Within a stratum the patients are put in a seeded random order and the
    held-out side takes the first ``test_size`` x (the stratum's patients) of that order (rounded
    at random, so the expected fraction is exact). Neither the order nor the number depends on
    patient size, so the held-out and kept patients come from the same population (same images
    per patient in expectation, however few patients a class has).
    """
    classes, y_codes = np.unique(y.astype(str), return_inverse=True)
    uniq, g_codes = np.unique(g.astype(str), return_inverse=True)
    counts = np.zeros((len(uniq), len(classes)), dtype=np.int64)
    np.add.at(counts, (g_codes, y_codes), 1)
    stratum = counts.argmax(axis=1)  # first maximum: the first class in sorted order on ties
    rng = np.random.default_rng(seed)
    in_test = np.zeros(len(uniq), dtype=bool)
    for s in range(len(classes)):
        members = rng.permutation(np.flatnonzero(stratum == s))
        if not len(members):
            continue
        # a number of patients fixed before looking at their sizes (``test_size`` x the stratum's
        # patients, rounded at random so that the expectation is exact): choosing the prefix by
        # image count instead would skip a large patient drawn first and favour small ones
        take = int(np.floor(float(test_size) * len(members) + rng.random()))
        in_test[members[:take]] = True
    if not in_test.any():  # tiny sets: one random patient goes to the held-out side
        in_test[rng.integers(len(uniq))] = True
    if in_test.all():
        in_test[rng.choice(np.flatnonzero(in_test))] = False
    return in_test[g_codes]


def grouped_holdout(
    labels: Sequence,
    groups: Sequence,
    test_size: float = 0.2,
    seed: int = 0,
    *,
    held_out: str = "test",
):
    """Patient-disjoint, stratified hold-out split: ``(train_idx, test_idx)``.

    ``held_out`` names the held-out side in the log and warnings (``test``, or ``validation``
    for an early-stopping split: ``featmammo train``).

    Whole patients are drawn at random (seeded), stratified by class (each patient counts in the
    class of most of its images): within each class a random ``test_size`` share of the patients
    goes to the test side. Patients are never chosen by size, so both sides hold the same kind of
    patient. Raises ConfigError for a
    ``test_size`` outside (0, 1) or fewer than two patients; warns when a class is absent from
    one side.
    """
    y, g = _as_arrays(labels, groups)
    if not 0.0 < float(test_size) < 1.0:
        raise ConfigError(f"test_size must be in (0, 1) (got {test_size})")
    n_groups = len(set(g.astype(str).tolist()))
    if n_groups < 2:
        raise ConfigError(f"a hold-out split needs at least 2 patients (got {n_groups})")
    test_mask = _random_group_split(y, g, test_size, seed)
    train_idx = np.flatnonzero(~test_mask).astype(np.int64)
    test_idx = np.flatnonzero(test_mask).astype(np.int64)
    _warn_missing_classes(y, train_idx, test_idx, "hold-out", held_out)
    log.info(
        "hold-out: %d train / %d %s images (%.3f %s; asked %.3f)",
        len(train_idx),
        len(test_idx),
        held_out,
        len(test_idx) / len(y),
        held_out,
        test_size,
    )
    return train_idx, test_idx


@dataclass
class AuditReport:
    """Leakage audit of a manifest-like frame. ``ok`` is True when no patient is shared."""

    n_images: int
    n_patients: int
    splits: dict = field(default_factory=dict)  # split -> {"images", "patients", "labels"}
    shared: dict = field(default_factory=dict)  # "a|b" -> sorted shared patient ids
    folds: dict = field(default_factory=dict)  # fold -> {"images", "patients"}
    fold_shared: dict = field(default_factory=dict)  # "a|b" -> sorted shared patient ids
    duplicate_paths: list = field(default_factory=list)
    duplicate_views: int = 0  # patient/side/view combinations with more than one row
    source_confounding: dict = field(
        default_factory=dict
    )  # label -> its only source (no other label)
    # label -> its only source, which other labels share (partly confounded: the label's share of
    # that source's images still tells the classifier something about the source)
    single_source_labels: dict = field(default_factory=dict)
    unassigned: int = 0  # rows with an empty split

    @property
    def n_shared(self) -> int:
        return len({p for v in self.shared.values() for p in v})

    @property
    def n_fold_shared(self) -> int:
        return len({p for v in self.fold_shared.values() for p in v})

    @property
    def ok(self) -> bool:
        return self.n_shared == 0 and self.n_fold_shared == 0

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "n_images": self.n_images,
            "n_patients": self.n_patients,
            "splits": self.splits,
            "unassigned": self.unassigned,
            "shared_patients": self.n_shared,
            "shared": self.shared,
            "folds": self.folds,
            "fold_shared_patients": self.n_fold_shared,
            "fold_shared": self.fold_shared,
            "duplicate_paths": self.duplicate_paths,
            "duplicate_views": self.duplicate_views,
            "source_confounding": self.source_confounding,
            "single_source_labels": self.single_source_labels,
        }

    def format(self, max_ids: int = 10) -> str:
        lines = [f"Leakage audit: {self.n_images} images, {self.n_patients} patients"]
        for s, d in self.splits.items():
            labels = ", ".join(f"{k} {v}" for k, v in d["labels"].items())
            lines.append(
                f"  split {s or '(none)'}: {d['images']} images, {d['patients']} patients"
                + (f" ({labels})" if labels else "")
            )
        if self.unassigned:
            lines.append(f"  {self.unassigned} image(s) without a split")
        for pair, ids in self.shared.items():
            shown = ", ".join(ids[:max_ids]) + (" ..." if len(ids) > max_ids else "")
            lines.append(
                f"  LEAK: {len(ids)} patient(s) in both {pair.replace('|', ' and ')}: {shown}"
            )
        for pair, ids in self.fold_shared.items():
            shown = ", ".join(ids[:max_ids]) + (" ..." if len(ids) > max_ids else "")
            lines.append(
                f"  LEAK: {len(ids)} patient(s) in folds {pair.replace('|', ' and ')}: {shown}"
            )
        if self.duplicate_paths:
            lines.append(f"  {len(self.duplicate_paths)} file(s) listed more than once")
        if self.duplicate_views:
            lines.append(
                f"  {self.duplicate_views} patient/side/view combination(s) with several "
                "rows (same breast view twice: possibly the same pixels)"
            )
        for label, source in self.source_confounding.items():
            lines.append(
                f"  WARNING: every {label!r} image comes from source {source!r} and no other "
                "label does: a classifier can learn the acquisition pipeline instead of the "
                "pathology (e.g. DDSM normals + CBIS-DDSM lesions)"
            )
        for label, source in self.single_source_labels.items():
            lines.append(
                f"  WARNING: every {label!r} image comes from source {source!r} (other labels come "
                "from it too, and from other sources): the source partly predicts the label"
            )
        lines.append(
            "  OK: no patient shared between splits"
            if self.ok
            else f"  NOT OK: {self.n_shared + self.n_fold_shared} shared patient(s)"
        )
        return "\n".join(lines)

    __str__ = format


def _shared_pairs(df: pd.DataFrame, col: str, group_col: str, values: list) -> dict:
    members = {v: set(df.loc[df[col] == v, group_col]) for v in values}
    out = {}
    for a, b in combinations(values, 2):
        common = sorted(members[a] & members[b])
        if common:
            out[f"{a}|{b}"] = common
    return out


def audit(df: pd.DataFrame, split_col: str = "split", group_col: str = "patient_id") -> AuditReport:
    """Report patients shared between splits (and CV folds, when a ``fold`` column exists)."""
    if group_col not in df.columns:
        raise ManifestError(f"audit: no {group_col!r} column")
    frame = df.copy()
    for c in (split_col, group_col, "fold", "label", "path", "laterality", "view", "source"):
        if c in frame.columns:
            frame[c] = [
                "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                for v in frame[c]
            ]
    report = AuditReport(n_images=int(len(frame)), n_patients=int(frame[group_col].nunique()))
    if split_col in frame.columns:
        values = sorted(v for v in frame[split_col].unique() if v != "")
        report.unassigned = int((frame[split_col] == "").sum())
        for v in values:
            sub = frame[frame[split_col] == v]
            labels = (
                {k: int(n) for k, n in sub["label"].value_counts().sort_index().items()}
                if "label" in sub.columns
                else {}
            )
            report.splits[v] = {
                "images": int(len(sub)),
                "patients": int(sub[group_col].nunique()),
                "labels": labels,
            }
        report.shared = _shared_pairs(frame, split_col, group_col, values)
    if "fold" in frame.columns:
        values = sorted((v for v in frame["fold"].unique() if v != ""), key=_fold_key)
        for v in values:
            sub = frame[frame["fold"] == v]
            report.folds[v] = {"images": int(len(sub)), "patients": int(sub[group_col].nunique())}
        report.fold_shared = _shared_pairs(frame, "fold", group_col, values)
    if "path" in frame.columns:
        counts = frame.loc[frame["path"] != "", "path"].value_counts()
        report.duplicate_paths = sorted(counts[counts > 1].index.tolist())
    if {"laterality", "view"} <= set(frame.columns):
        known = frame[(frame["laterality"] != "") & (frame["view"] != "")]
        report.duplicate_views = int(
            (known.groupby([group_col, "laterality", "view"]).size() > 1).sum()
        )
    if {"source", "label"} <= set(frame.columns) and frame["source"].nunique() > 1:
        by_label = frame.groupby("label")["source"].unique()
        for label, sources in by_label.items():
            if len(sources) == 1:
                others = frame.loc[frame["label"] != label, "source"]
                if not (others == sources[0]).any():
                    report.source_confounding[str(label)] = str(sources[0])
                else:
                    report.single_source_labels[str(label)] = str(sources[0])
        if report.source_confounding:
            log.warning("labels confounded with sources: %s", report.source_confounding)
        if report.single_source_labels:
            log.warning("labels from one source only: %s", report.single_source_labels)
    if not report.ok:
        log.warning(
            "leakage audit: %d patient(s) shared between splits, %d between folds",
            report.n_shared,
            report.n_fold_shared,
        )
    return report


def _fold_key(v: str):
    try:
        return (0, int(v), "")
    except ValueError:
        return (1, 0, v)
