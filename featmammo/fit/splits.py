"""The splits of :func:`featmammo.fit.fit`: held-out test + patient-grouped folds, their audit,
the inner folds of nested tuning, and the single-class checks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ConfigError, ManifestError

TEST_SPLITS = ("official", "grouped", "none")


def _assign_splits(meta, labels, groups, *, cv, test_split, test_size, seed):
    """Per image: ``fold`` ("1".."k" for training rows, "test" for the held-out rows)."""
    from .. import splits

    n = len(labels)
    is_test = np.zeros(n, dtype=bool)
    if test_split == "official":
        if "split" not in meta.columns:
            raise ManifestError("--test-split official: the store has no 'split' column")
        split = meta["split"].astype(str).str.strip().str.lower().to_numpy()
        is_test = split == "test"
        if not is_test.any():
            raise ManifestError(
                "--test-split official: no row has split == 'test' in the store's metadata; "
                "use --test-split grouped (patient-grouped hold-out) or none (CV only)"
            )
    elif test_split == "grouped":
        _, test_idx = splits.grouped_holdout(labels, groups, test_size, seed)
        is_test[np.asarray(test_idx, dtype=int)] = True
    elif test_split != "none":
        raise ConfigError(f"--test-split {test_split!r}: choose one of {TEST_SPLITS}")
    fold = np.where(is_test, "test", "").astype(object)
    train_idx = np.flatnonzero(~is_test)
    _check_trainable(labels[train_idx], groups[train_idx], "the training part", test_split)
    if cv >= 2:
        n_pat = len(set(groups[train_idx]))
        if n_pat < cv:
            raise ConfigError(
                f"--cv {cv}: the training part has only {n_pat} patient(s) "
                f"({len(train_idx)} images); patient-grouped CV needs at least one patient per "
                f"fold: use --cv {n_pat} or fewer"
                + (" (at least 2)" if n_pat < 2 else "")
                + ", or --cv 0 to skip CV"
            )
        folds = splits.grouped_kfold(labels[train_idx], groups[train_idx], cv, seed)
        for k, (_, val) in enumerate(folds, start=1):
            fold[train_idx[np.asarray(val, dtype=int)]] = str(k)
        if (fold[train_idx] == "").any():
            raise ConfigError("grouped_kfold left training rows without a fold")
        for k in range(1, cv + 1):
            rest = train_idx[fold[train_idx] != str(k)]
            _check_trainable(labels[rest], groups[rest], f"CV fold {k}'s training side", None, cv)
    elif cv != 0:
        raise ConfigError(f"--cv {cv}: use 0 (no CV) or at least 2 folds")
    elif test_split == "none":
        raise ConfigError("--cv 0 with --test-split none evaluates nothing")
    return fold


def _repeat_folds(labels, groups, is_test, cv: int, seed: int, repeat: int) -> np.ndarray:
    """The fold labels ("1".."k", "test", "") of CV repeat ``repeat`` (>= 2): the same training
    part and test rows, the training patients split anew (seed ``seed + repeat - 1``)."""
    from .. import splits

    fold = np.where(is_test, "test", "").astype(object)
    train_idx = np.flatnonzero(~is_test)
    folds = splits.grouped_kfold(labels[train_idx], groups[train_idx], cv, seed + repeat - 1)
    for k, (_, val) in enumerate(folds, start=1):
        fold[train_idx[np.asarray(val, dtype=int)]] = str(k)
    for k in range(1, cv + 1):
        rest = train_idx[fold[train_idx] != str(k)]
        _check_trainable(labels[rest], groups[rest], f"CV fold {k}'s training side (repeat "
                         f"{repeat})", None, cv)  # fmt: skip
    return fold


def _check_trainable(labels, groups, where: str, test_split, cv: int | None = None) -> None:
    """ConfigError unless ``labels`` hold at least two classes (a head cannot fit on one)."""
    present = pd.Series(labels).value_counts()
    if len(present) >= 2:
        return
    what = {str(k): int(v) for k, v in present.items()} if len(present) else "no images"
    hint = (
        f"with {len(set(groups))} patient(s) the folds cannot all hold two classes: use fewer "
        "folds (--cv) or --cv 0"
        if cv
        else "use another --test-split (or, for --test-split grouped, a smaller --test-size)"
        if test_split != "none"
        else "the store needs images of at least two classes"
    )
    raise ConfigError(
        f"{where} holds a single class ({what} over {len(set(groups))} patient(s)); no head can "
        f"be fit on one class; {hint}"
    )


def _audits(ids, groups, fold, meta) -> dict:
    """featmammo.splits.audit of the train/test split and the CV folds (shared patients, views)."""
    from .. import splits

    df = pd.DataFrame(
        {
            "image_id": ids,
            "patient_id": groups,
            "split": np.where(fold == "test", "test", "train"),
            "fold": np.where(fold == "test", "", fold),
        }
    )
    for col in ("label", "path", "laterality", "view", "source"):
        if col in meta.columns:
            df[col] = meta[col].astype(str).to_numpy()
    report = splits.audit(df, split_col="split", group_col="patient_id")
    d = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    d["ok"] = bool(getattr(report, "ok", d.get("ok", True)))
    if "source" not in meta.columns:  # not checked: None, never {} (which means "checked, clean")
        d["source_confounding"] = None
    return d


def _inner_splits(labels, groups, inner_cv: int, seed: int, run):
    """``(folds, None)``: the inner patient-grouped folds of one training part (the same for every
    features set), or ``(None, reason)`` when that part is too small for them."""
    from .. import splits

    n_pat = len(set(groups))
    where = "the training part" if run == "test" else f"CV fold {run}'s training side"
    if n_pat < inner_cv:
        return None, f"{where} has {n_pat} patient(s), fewer than --inner-cv {inner_cv}"
    folds = splits.grouped_kfold(labels, groups, inner_cv, seed)
    for i, (tr, _) in enumerate(folds, start=1):
        if len(set(labels[tr])) < 2:
            return None, f"inner fold {i} of {where} ({n_pat} patients) trains on a single class"
    return folds, None
