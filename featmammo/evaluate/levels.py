"""Breast and exam level: image predictions aggregated the way screening is read (issue 16 item 8).

A screening exam is read per breast and per exam, not per image: NYU's and RSNA's evaluations
score breasts (patient + laterality), PERFORMS scores exams. From the image rows of
``predictions.csv`` (which then carry ``exam_id`` and ``laterality``):

- **breast** = one patient's views of one side in one exam (``patient_id, exam_id, laterality``).
  Its probabilities are the mean of its views' (``aggregate="mean"``), or the probabilities of its
  most suspicious view, the one with the highest positive-class probability (``"max"``: the
  positive-class score is then the maximum over views, and the row still sums to 1). Its label
  is the most severe of its views' labels (classes are ordered least to most severe:
  normal < benign < malignant, normal < abnormal).
- **exam** = one patient's exam (``patient_id, exam_id``): the probabilities of its
  highest-scoring breast (highest positive-class probability: cancer in either breast makes the
  exam positive); label the most severe of its breasts'.
- ``y_pred`` is the argmax of the aggregated probabilities (the one decision rule);
  ``n_views`` counts the images behind a row.

Images without a laterality belong to no breast: they are left out of both levels and counted.
Images without an ``exam_id`` (or a manifest without the column) count their patient as one exam
(RSNA, CMMD: one exam per patient), which :func:`exam_note` says.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .kernels import positive_class

LEVELS = ("image", "breast", "exam")
AGGREGATES = ("mean", "max")
#: the predictions file of each level, in a run folder
LEVEL_FILES = {
    "image": "predictions.csv",
    "breast": "predictions_breast.csv",
    "exam": "predictions_exam.csv",
}
#: columns the image rows need for the breast and exam levels
LEVEL_COLUMNS = ("exam_id", "laterality")
_GROUP = ("features", "head", "fold", "patient_id", "exam_id")


def parse_levels(levels: Sequence[str] | None) -> list[str]:
    """Validated, ordered, deduplicated levels (image first); ConfigError on an unknown one."""
    out = []
    for lv in levels or ():
        lv = str(lv).strip().lower()
        if lv not in LEVELS:
            raise ConfigError(f"--level {lv!r}: choose image, breast or exam")
        if lv not in out:
            out.append(lv)
    return sorted(out, key=LEVELS.index)


def default_levels(meta: pd.DataFrame) -> list[str]:
    """image, plus breast and exam when the images carry a laterality and an ``exam_id``."""
    if {"laterality", "exam_id"} <= set(meta.columns):
        lat = meta["laterality"].fillna("").astype(str).str.strip().str.upper()
        if lat.isin(["L", "R"]).any():
            return list(LEVELS)
    return ["image"]


def level_keys_for(meta: pd.DataFrame) -> pd.DataFrame:
    """``exam_id`` and ``laterality`` per image (aligned with ``meta``): laterality as L/R or "",
    a missing or empty exam_id replaced by the patient id (one exam per patient)."""
    patient = meta["patient_id"].astype(str)
    if "exam_id" in meta.columns:
        exam = meta["exam_id"].fillna("").astype(str).str.strip()
        exam = exam.where(exam != "", patient)
    else:
        exam = patient
    if "laterality" in meta.columns:
        lat = meta["laterality"].fillna("").astype(str).str.strip().str.upper()
        lat = lat.where(lat.isin(["L", "R"]), "")
    else:
        lat = pd.Series("", index=meta.index)
    return pd.DataFrame({"exam_id": exam.to_numpy(), "laterality": lat.to_numpy()})


def exam_note(meta: pd.DataFrame) -> str:
    """How exams were formed (for config.json notes and the report)."""
    if "exam_id" not in meta.columns:
        return "the images carry no exam_id: each patient counts as one exam"
    empty = int((meta["exam_id"].fillna("").astype(str).str.strip() == "").sum())
    if empty:
        return f"{empty} image(s) have no exam_id: each of their patients counts as one exam"
    return ""


def _severity(labels: pd.Series, classes: Sequence[str]) -> pd.Series:
    order = {c: i for i, c in enumerate(classes)}
    codes = labels.astype(str).map(order)
    if codes.isna().any():
        bad = labels[codes.isna()].iloc[0]
        raise ConfigError(f"label {bad!r} is not one of the classes {tuple(classes)}")
    return codes.astype(int)


def _argmax_labels(p: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    return np.asarray(classes, dtype=object)[p.argmax(axis=1)]


def aggregate_predictions(
    predictions: pd.DataFrame,
    classes: Sequence[str],
    level: str,
    *,
    aggregate: str = "mean",
    positive: str | None = None,
) -> pd.DataFrame:
    """Image rows (with ``exam_id`` and ``laterality``) -> the rows of ``level``.

    Output columns: ``patient_id, exam_id, [laterality,] evaluation, fold, features, head,
    y_true, y_pred, p_<class>..., n_views`` (laterality for breasts only), sorted by features,
    head, fold, patient, exam (, laterality). ``level="image"`` returns ``predictions`` as is.
    """
    from .table import evaluation_of

    if level not in LEVELS:
        raise ConfigError(f"level {level!r}: choose one of {LEVELS}")
    if level == "image":
        return predictions
    if aggregate not in AGGREGATES:
        raise ConfigError(f"--aggregate {aggregate!r}: choose mean or max")
    classes = [str(c) for c in classes]
    positive = positive or positive_class(classes)
    pcols = [f"p_{c}" for c in classes]
    missing = [c for c in (*LEVEL_COLUMNS, "patient_id", "fold", "features", "head", "y_true",
                           *pcols) if c not in predictions.columns]  # fmt: skip
    if missing:
        raise ConfigError(
            f"{level}-level predictions need the image rows' {missing} (fit writes exam_id and "
            "laterality into predictions.csv when it evaluates breasts or exams)"
        )
    df = predictions.copy()
    df["laterality"] = df["laterality"].fillna("").astype(str).str.strip().str.upper()
    df["exam_id"] = df["exam_id"].fillna("").astype(str)
    df = df[df["laterality"].isin(["L", "R"])]
    df["_sev"] = _severity(df["y_true"], classes)
    pos = f"p_{positive}"
    rep = ["repeat"] if "repeat" in df.columns else []  # CV repeats stay apart
    keys = [*_GROUP, *rep, "laterality"]
    g = df.groupby(keys, sort=True, dropna=False)
    if aggregate == "mean":
        breast = g[pcols].mean()
    else:  # the most suspicious view: highest positive-class probability (first on ties)
        top = df.loc[g[pos].idxmax()].set_index(keys)
        breast = top[pcols]
    breast = breast.join(g["_sev"].max()).join(g.size().rename("n_views")).reset_index()
    if level == "exam":
        ekeys = [*_GROUP, *rep]
        ge = breast.groupby(ekeys, sort=True, dropna=False)
        top = breast.loc[ge[pos].idxmax()].set_index(ekeys)[pcols]
        exam = top.join(ge["_sev"].max()).join(ge["n_views"].sum()).reset_index()
        out = exam
    else:
        out = breast
    out["y_true"] = np.asarray(classes, dtype=object)[out["_sev"].to_numpy()]
    out["y_pred"] = _argmax_labels(out[pcols].to_numpy(float), classes)
    out["evaluation"] = out["fold"].astype(str).map(evaluation_of)
    lead = ["patient_id", "exam_id", *(["laterality"] if level == "breast" else [])]
    cols = [*lead, "evaluation", "fold", "features", "head", "y_true", "y_pred", *pcols,
            "n_views", *rep]  # fmt: skip
    return out[cols].reset_index(drop=True)


def dropped_without_laterality(predictions: pd.DataFrame) -> int:
    """Distinct images left out of the breast and exam levels (no L/R laterality)."""
    if "laterality" not in predictions.columns:
        return int(predictions["image_id"].nunique()) if "image_id" in predictions else 0
    lat = predictions["laterality"].fillna("").astype(str).str.strip().str.upper()
    return int(predictions.loc[~lat.isin(["L", "R"]), "image_id"].nunique())


def read_level_predictions(path) -> pd.DataFrame:
    """A predictions_<level>.csv with identifiers kept as text."""
    text = {c: str for c in ("patient_id", "exam_id", "laterality", "evaluation", "fold",
                             "features", "head", "y_true", "y_pred")}  # fmt: skip
    return pd.read_csv(path, dtype=text, keep_default_na=False)
