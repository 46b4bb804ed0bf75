"""Merging manifests of several sets into one (e.g. the paper's three-class set: DDSM normals +
CBIS-DDSM benign/malignant), keeping ``source``.

Rules (documented choices):

- Each input is read with :func:`~featmammo.datasets.manifest.read_manifest` (paths resolved
  against its own folder; files checked unless ``check_paths=False``); columns are the union,
  missing cells empty. Rows keep their ``source`` (an input without one gets ``csv``, as
  ``read_manifest`` says).
- ``image_id`` must stay unique: a clash between inputs stops with both files named, unless
  ``prefix_ids=True``, which writes every id as ``<source>/<image_id>``.
- ``patient_id`` values shared by different sources are different women in different sets: they
  are prefixed ``<source>:`` (said in the notes), so the leakage audit does not join them. (The
  original DDSM and CBIS-DDSM hold the same films under different ids, and the Kaggle patch set
  was cut from DDSM normals and CBIS-DDSM lesions: a woman can be in two of them, and no id links
  them; the notes say so for every such pair merged, :data:`SAME_FILMS`.)
- The summary has labels per source; the audit flags a label whose every image comes from one
  source that no other label uses (a classifier can learn the pipeline), and the notes name every
  label that comes from a single source.
- ``split`` values are kept; inputs with and without an official split are noted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from featmammo.datasets.base import summarize
from featmammo.datasets.manifest import REQUIRED_COLUMNS, read_manifest
from featmammo.errors import ManifestError

log = logging.getLogger(__name__)

#: sources made from the same films (under different ids): CBIS-DDSM is a curated subset of the
#: original DDSM, and the Kaggle patch set was cut from DDSM normals and CBIS-DDSM lesions
SAME_FILMS = {
    frozenset({"ddsm", "cbis-ddsm"}),
    frozenset({"ddsm", "cbis-ddsm-jpeg"}),
    frozenset({"ddsm-patches", "ddsm"}),
    frozenset({"ddsm-patches", "cbis-ddsm"}),
    frozenset({"ddsm-patches", "cbis-ddsm-jpeg"}),
}


def merge_manifests(
    inputs, *, prefix_ids: bool = False, check_paths: bool = True
) -> tuple[pd.DataFrame, dict]:
    """Concatenate manifests (paths or DataFrames): (DataFrame, summary)."""
    inputs = list(inputs)
    if len(inputs) < 2:
        raise ManifestError(f"merge needs at least two manifests (got {len(inputs)})")
    frames, names = [], []
    for item in inputs:
        name = "DataFrame" if isinstance(item, pd.DataFrame) else str(Path(item))
        df = read_manifest(item, check_paths=check_paths, numeric=False)
        df["_input"] = name
        frames.append(df)
        names.append(name)
    if prefix_ids:
        for df in frames:
            df["image_id"] = [f"{s}/{i}" for s, i in zip(df["source"], df["image_id"], strict=True)]
    first: dict[str, int] = {}
    for k, df in enumerate(frames):
        for i in df["image_id"]:
            if i in first and first[i] != k:
                raise ManifestError(
                    f"image_id {i!r} is in both {names[first[i]]} (input {first[i] + 1}) and "
                    f"{names[k]} (input {k + 1}); use --prefix-ids (ids become "
                    "<source>/<image_id>)"
                )
            first.setdefault(i, k)
    cols = REQUIRED_COLUMNS + sorted(
        {c for df in frames for c in df.columns if c not in REQUIRED_COLUMNS and c != "_input"}
    )
    merged = pd.concat(frames, ignore_index=True)
    for c in cols:
        merged[c] = merged[c].fillna("").astype(str) if c in merged.columns else ""
    sources_of = merged.groupby("patient_id")["source"].unique()
    clash = {p for p, s in sources_of.items() if len(s) > 1}
    notes = []
    if clash:
        mask = merged["patient_id"].isin(clash)
        merged.loc[mask, "patient_id"] = (
            merged.loc[mask, "source"] + ":" + merged.loc[mask, "patient_id"]
        )
        notes.append(
            f"{len(clash)} patient_id value(s) used by several sources were prefixed "
            "<source>: (different sets, different women)"
        )
    sources = sorted(merged["source"].unique())
    for pair in SAME_FILMS:
        if pair <= set(sources):
            notes.append(
                f"{' and '.join(sorted(pair))} come from the same films under different ids: a "
                "woman can be in both and no split can be proven patient-disjoint across them"
            )
    by_label = {
        lab: sorted(merged.loc[merged["label"] == lab, "source"].unique())
        for lab in sorted(merged["label"].unique())
    }
    for lab, srcs in by_label.items():
        if len(srcs) == 1 and len(sources) > 1:
            notes.append(
                f"every {lab!r} image comes from {srcs[0]!r}: a classifier can learn the source "
                "instead of the label"
            )
    with_split = sorted(
        {s for s in sources if (merged.loc[merged.source == s, "split"] != "").any()}
    )
    if with_split and len(with_split) < len(sources):
        notes.append(
            "official splits only for " + ", ".join(with_split) + "; other rows have no split"
        )
    merged = merged[cols]
    table = merged.groupby(["source", "label"]).size().unstack(fill_value=0).astype(int)
    summary = summarize(
        merged,
        root=", ".join(names),
        source="+".join(sources),
        label_rule="; ".join(sorted(set(merged["label_rule"]) - {""}))
        if "label_rule" in merged.columns
        else "",
        unresolved=[],
        notes=notes,
        inputs=names,
        sources={s: int((merged["source"] == s).sum()) for s in sources},
        labels_by_source={s: {k: int(v) for k, v in row.items()} for s, row in table.iterrows()},
        label_sources=by_label,
        prefixed_patients=len(clash),
    )
    return merged, summary


def format_lines(summary: dict) -> list[str]:
    """The merge-specific lines of the printed summary (labels per source)."""
    out = []
    for src, labels in summary["labels_by_source"].items():
        out.append(f"source     {src}: " + ", ".join(f"{k} {v}" for k, v in labels.items() if v))
    return out
