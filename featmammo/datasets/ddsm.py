"""Original DDSM (USF) manifests: ``cases/<type>/<volume>/caseNNNN/`` with ``A-0002-1.ics``,
``A_0002_1.LEFT_CC.LJPEG`` and ``A_0002_1.LEFT_CC.OVERLAY`` (any of them possibly gzipped).

Rules (documented choices):

- ROOT may be any level of the tree: the DDSM top folder, ``cases/``, ``cases/normals`` (the
  usual download for the normal class), one volume or one case folder. A case folder is any
  folder holding an ``.ics`` or an ``.LJPEG``; its type is taken from its own absolute path (the
  nearest folder named ``normals``, ``benigns``, ``cancers`` or ``benign_without_callbacks``, any
  case; the resolved path when ROOT is a symlink), its volume the folder below that. Views come
  from the ``.ics`` view lines (:func:`featmammo.io.ddsm.read_ics`); each view is one row whose
  image is
  ``<case>.<VIEW>.LJPEG`` (or ``.LJPEG.gz``, read in memory by :mod:`featmammo.io.ljpeg`).
- Labels (``label_rule`` says which applied): views of ``normals`` volumes -> ``normal``. Views
  with an overlay -> from its pathologies: any MALIGNANT -> ``malignant``; BENIGN and
  BENIGN_WITHOUT_CALLBACK -> ``benign`` (as in CBIS-DDSM); UNPROVEN -> ``unproven``
  (``exclude`` by default, or ``benign``/``malignant``). Views without an overlay in an abnormal
  case are unverified: left out and listed by default (``unverified_views="exclude"``) or
  ``normal`` on request.
- ``patient_id`` = ``exam_id`` = the case (``A-0002-1``: one screening exam); ``image_id`` =
  ``A_0002_1.LEFT_CC``; laterality and view from the view name; no official split (``split``
  empty). Columns: ``case_type``, ``volume``, ``institution`` (A-D), ``digitizer``,
  ``density``, ``age``, ``lesion_type``, ``abnormality_type``, ``assessment``, ``subtlety``,
  ``pathology`` (``;``-joined per abnormality), ``lines``/``pixels_per_line``/
  ``bits_per_pixel``/``resolution`` (from the .ics), ``ics_path``, ``overlay_path``.
- ROI masks: with ``mask_dir``, every overlay's BOUNDARY outlines are filled into full-size PNG
  masks ``<mask_dir>/<image_id>.<k>.png`` (one per abnormality, 1-bit); ``roi_mask_path`` is the
  abnormality that decides the label (first malignant, else first), ``roi_mask_paths`` all of
  them, ``;``-joined: usable by ``--roi crop|patch``. A mask drawn from the same outline and
  image size is reused (:class:`~featmammo.datasets.masks.MaskWriter`: not by file times).
- Never a crash on a missing or broken file: a view whose LJPEG is missing, a case whose .ics is
  missing or unreadable (a damaged gzip stream included), an LJPEG whose view is not in the .ics,
  an overlay the .ics announces but that is not there, and an overlay that cannot be read (damaged
  gzip stream, malformed chain code, unknown PATHOLOGY: the view is listed with the overlay's file
  and line) are unresolved rows; an outline that cannot become a mask is in ``mask_errors``.
  Gzipped files are counted in the summary. Only an unwritable mask folder stops the build.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from featmammo.datasets.base import abs_root, manifest_frame, summarize, walk_files
from featmammo.datasets.ddsm_overlay import outline_mask, read_overlay
from featmammo.datasets.masks import MaskWriter, default_mask_dir, mask_notes, no_masks_summary
from featmammo.errors import ConfigError, ManifestError

log = logging.getLogger(__name__)

SOURCE = "ddsm"
CASE_TYPES = {
    "normals": "normals",
    "benigns": "benigns",
    "cancers": "cancers",
    "benign_without_callbacks": "benign_without_callbacks",
}
UNVERIFIED_POLICIES = ("exclude", "normal")
UNPROVEN_POLICIES = ("exclude", "benign", "malignant")
EXTRA_COLUMNS = [
    "label_rule",
    "exam_id",
    "case_type",
    "volume",
    "institution",
    "digitizer",
    "density",
    "age",
    "lesion_type",
    "abnormality_type",
    "assessment",
    "subtlety",
    "pathology",
    "n_abnormalities",
    "lines",
    "pixels_per_line",
    "bits_per_pixel",
    "resolution",
    "roi_mask_path",
    "roi_mask_paths",
    "overlay_path",
    "ics_path",
]
_FILE_RE = re.compile(
    r"^(?P<case>[A-Da-d]_\d{4}_\d+)\.(?P<view>(?:LEFT|RIGHT)_[A-Z]+)\.(?P<kind>LJPEG|OVERLAY)"
    r"(?P<gz>\.GZ)?$",
    re.IGNORECASE,
)
_ICS_RE = re.compile(r"^[A-Da-d][-_]\d{4}[-_]\d+\.ics(\.gz)?$", re.IGNORECASE)


def label_rule(unverified_views: str, unproven: str) -> str:
    return (
        "normals volume -> normal; overlay: any MALIGNANT -> malignant, BENIGN/"
        f"BENIGN_WITHOUT_CALLBACK -> benign, UNPROVEN -> {unproven}; abnormal-case view "
        f"without overlay -> {unverified_views}"
    )


def _case_type(folder: Path) -> tuple[str, str]:
    """(type, volume) of a case folder from its own absolute path: the nearest folder named like a
    case type (``normals``, ...; any case) and the folder below it, so ROOT may be any level of
    the tree (the DDSM top folder, ``cases/``, ``cases/normals``, a volume, one case folder). When
    the path as given holds none (ROOT reached through a symlink), the resolved path is tried."""
    for parts in (folder.parts, Path(os.path.realpath(folder)).parts):
        for k in range(len(parts) - 1, -1, -1):
            t = CASE_TYPES.get(parts[k].lower())
            if t is not None:
                volume = parts[k + 1] if k + 1 < len(parts) else ""
                return t, volume
    return "", ""


def _scan(root: Path) -> dict[Path, dict]:
    """Case folders -> {"ics": [paths], "ljpeg": {VIEW: path}, "overlay": {VIEW: path}, "case"}."""
    cases: dict[Path, dict] = {}
    for path in walk_files(root):
        d, name = path.parent, path.name
        if _ICS_RE.match(name):
            cases.setdefault(d, {"ics": [], "ljpeg": {}, "overlay": {}})["ics"].append(path)
            continue
        m = _FILE_RE.match(name)
        if m:
            c = cases.setdefault(d, {"ics": [], "ljpeg": {}, "overlay": {}})
            kind = m.group("kind").lower()
            view = m.group("view").upper()
            prev = c[kind].get(view)
            if prev is None or (prev.name.lower().endswith(".gz") and not m.group("gz")):
                c[kind][view] = path  # plain preferred over gzipped
    return cases


def _view_label(
    case_type: str,
    abnormalities: list[dict] | None,
    unverified_views: str,
    unproven: str,
) -> tuple[str, str]:
    """(label or ``exclude``, why)."""
    if case_type == "normals":
        return "normal", "normals volume"
    if abnormalities is None:
        return unverified_views, "abnormal case, view without overlay (unverified)"
    mapped = set()
    for a in abnormalities:
        p = a["pathology"]
        if p == "MALIGNANT":
            mapped.add("malignant")
        elif p in ("BENIGN", "BENIGN_WITHOUT_CALLBACK"):
            mapped.add("benign")
        elif unproven != "exclude":
            mapped.add(unproven)
    if "malignant" in mapped:
        return "malignant", "overlay"
    if "benign" in mapped:
        return "benign", "overlay"
    return "exclude", "overlay with UNPROVEN pathology only (--unproven exclude)"


def build_ddsm(
    root,
    *,
    unverified_views: str = "exclude",
    unproven: str = "exclude",
    mask_dir=None,
    case_types=None,
    progress=None,
) -> tuple[pd.DataFrame, dict]:
    """A manifest of an original DDSM tree: (DataFrame, summary). See the module docstring.

    ``mask_dir``: where ROI mask PNGs are written (None: no masks, ``roi_mask_path`` empty).
    ``case_types``: only these volumes (e.g. ``["normals"]`` for the paper's normal class); the
    cases of other types are counted in ``cases_skipped``, not listed as unresolved.
    ``progress``: an ``update(n, total)`` callback told of every case folder done (CLI bar).
    """
    from featmammo.io.ddsm import read_ics

    if unverified_views not in UNVERIFIED_POLICIES:
        raise ConfigError(f"unverified_views={unverified_views!r}: expected {UNVERIFIED_POLICIES}")
    if unproven not in UNPROVEN_POLICIES:
        raise ConfigError(f"unproven={unproven!r}: expected one of {UNPROVEN_POLICIES}")
    if case_types is not None:
        case_types = [case_types] if isinstance(case_types, str) else list(case_types)
        unknown = [t for t in case_types if t not in CASE_TYPES]
        if unknown or not case_types:
            raise ConfigError(
                f"case_types {unknown or case_types!r}: expected some of {', '.join(CASE_TYPES)}"
            )
    root = abs_root(root, "DDSM")
    rule = label_rule(unverified_views, unproven)
    writer = MaskWriter(mask_dir) if mask_dir is not None else None
    cases = _scan(root)
    if not cases:
        raise ManifestError(
            f"{root}: no DDSM case found: no .ics or .LJPEG file (plain or .gz, named like "
            "A-0002-1.ics / A_0002_1.LEFT_CC.LJPEG) anywhere under this folder; ROOT may be the "
            "DDSM top folder, cases/, cases/<normals|benigns|cancers|benign_without_callbacks>, "
            "one volume or one case folder"
        )
    rows, unresolved, excluded = [], [], []
    counts: Counter = Counter()
    gzipped: list[str] = []
    for folder in sorted(cases):
        if progress is not None:
            progress(1, len(cases))
        c = cases[folder]
        case_type, volume = _case_type(folder)
        where = str(folder)
        if not case_type:
            unresolved.append(
                {
                    "image_id": "",
                    "where": where,
                    "reason": "case folder not under normals/benigns/cancers/"
                    "benign_without_callbacks: type unknown",
                }
            )
            continue
        if case_types is not None and case_type not in case_types:
            counts["cases_skipped"] += 1
            continue
        counts[f"cases_{case_type}"] += 1
        for p in [*c["ics"], *c["ljpeg"].values(), *c["overlay"].values()]:
            if p.name.lower().endswith(".gz"):
                gzipped.append(str(p))
        if not c["ics"]:
            for _view, p in sorted(c["ljpeg"].items()):
                unresolved.append(
                    {
                        "image_id": _image_id(p),
                        "where": where,
                        "reason": "no .ics in the case folder",
                    }
                )
            continue
        ics_path = sorted(c["ics"], key=lambda q: (q.name.lower().endswith(".gz"), q.name))[0]
        try:
            ics = read_ics(ics_path)
        except ManifestError as exc:
            for _view, p in sorted(c["ljpeg"].items()):
                unresolved.append(
                    {"image_id": _image_id(p), "where": str(ics_path), "reason": str(exc)}
                )
            if not c["ljpeg"]:
                unresolved.append({"image_id": "", "where": str(ics_path), "reason": str(exc)})
            continue
        case = ics.get("case") or folder.name
        stem = case.replace("-", "_")
        cut_views = ics.get("cut_views", {})
        for view in sorted(set(c["ljpeg"]) & set(cut_views)):
            unresolved.append(
                {"image_id": f"{stem}.{view}", "where": str(ics_path), "reason": cut_views[view]}
            )
        for view in sorted(set(c["ljpeg"]) - set(ics["views"]) - set(cut_views)):
            unresolved.append(
                {
                    "image_id": f"{stem}.{view}",
                    "where": str(c["ljpeg"][view]),
                    "reason": f"view {view} is not in {ics_path.name}",
                }
            )
        for view, vinfo in sorted(ics["views"].items()):
            image_id = f"{stem}.{view}"
            ljpeg = c["ljpeg"].get(view)
            overlay = c["overlay"].get(view)
            if ljpeg is None:
                counts["missing_ljpeg"] += 1
                unresolved.append(
                    {
                        "image_id": image_id,
                        "where": str(ics_path),
                        "reason": f"LJPEG missing: {image_id}.LJPEG not in the case folder",
                    }
                )
                continue
            if vinfo.get("overlay") and overlay is None:
                unresolved.append(
                    {
                        "image_id": image_id,
                        "where": str(ics_path),
                        "reason": f".ics says OVERLAY but {image_id}.OVERLAY is missing",
                    }
                )
                continue
            if overlay is not None and not vinfo.get("overlay"):
                counts["overlay_not_in_ics"] += 1
            try:
                abns = read_overlay(overlay) if overlay is not None else None
            except ManifestError as exc:  # damaged gzip, bad chain code, unknown PATHOLOGY
                unresolved.append(
                    {"image_id": image_id, "where": str(overlay), "reason": f"overlay: {exc}"}
                )
                continue
            if case_type == "normals" and abns:
                counts["normals_with_overlay"] += 1
            label, why = _view_label(case_type, abns, unverified_views, unproven)
            if label == "exclude":
                counts["excluded_" + ("unverified" if abns is None else "unproven")] += 1
                excluded.append({"image_id": image_id, "where": str(ljpeg), "reason": why})
                continue
            side, _, vname = view.partition("_")
            abns = abns or []
            masks = _masks(image_id, abns, overlay, vinfo, writer)
            primary = next((k for k, a in enumerate(abns) if a["pathology"] == "MALIGNANT"), 0)
            rows.append(
                {
                    "image_id": image_id,
                    "path": str(ljpeg),
                    "label": label,
                    "patient_id": case,
                    "laterality": side[0],
                    "view": vname,
                    "split": "",
                    "source": SOURCE,
                    "label_rule": rule,
                    "exam_id": case,
                    "case_type": case_type,
                    "volume": volume,
                    "institution": ics.get("institution") or "",
                    "digitizer": ics.get("digitizer") or "",
                    "density": _str(ics.get("density")),
                    "age": _str(ics.get("patient_age")),
                    "lesion_type": ";".join(" / ".join(a["lesion_types"]) for a in abns),
                    "abnormality_type": ";".join(
                        t
                        for t in ("mass", "calcification")
                        if any(t in a["abnormality_type"].split(";") for a in abns)
                    ),
                    "assessment": ";".join(a["assessment"] for a in abns),
                    "subtlety": ";".join(a["subtlety"] for a in abns),
                    "pathology": ";".join(a["pathology"] for a in abns),
                    "n_abnormalities": len(abns),
                    "lines": _str(vinfo.get("lines")),
                    "pixels_per_line": _str(vinfo.get("pixels_per_line")),
                    "bits_per_pixel": _str(vinfo.get("bits_per_pixel")),
                    "resolution": _str(vinfo.get("resolution")),
                    "roi_mask_path": masks[primary] if masks else "",
                    "roi_mask_paths": ";".join(masks),
                    "overlay_path": str(overlay) if overlay is not None else "",
                    "ics_path": str(ics_path),
                }
            )
    df = manifest_frame(rows, EXTRA_COLUMNS)
    if df.empty:
        raise ManifestError(_nothing_usable(root, cases, counts, unresolved, excluded, case_types))
    notes = []
    if gzipped:
        notes.append(f"{len(gzipped)} gzipped file(s) (read in memory; listed in 'gzipped')")
    if counts["excluded_unverified"]:
        notes.append(
            f"{counts['excluded_unverified']} view(s) without an overlay in abnormal cases left "
            "out (unverified; --unverified-views normal keeps them as normal)"
        )
    if counts["excluded_unproven"]:
        notes.append(f"{counts['excluded_unproven']} view(s) with UNPROVEN pathology only left out")
    masks = writer.summary() if writer is not None else no_masks_summary()
    notes.extend(mask_notes(masks))
    summary = summarize(
        df,
        root=root,
        source=SOURCE,
        label_rule=rule,
        unresolved=unresolved,
        notes=notes,
        reason_kind=_reason_kind,
        unverified_views=unverified_views,
        unproven=unproven,
        case_folders=len(cases),
        case_types={
            k[6:]: v
            for k, v in sorted(counts.items())
            if k.startswith("cases_") and k != "cases_skipped"
        },
        cases_skipped=counts["cases_skipped"],
        only_case_types=case_types or [],
        missing_ljpeg=counts["missing_ljpeg"],
        excluded=excluded,
        gzipped=gzipped,
        **masks,
        overlay_not_in_ics=counts["overlay_not_in_ics"],
        normals_with_overlay=counts["normals_with_overlay"],
    )
    return df, summary


def _nothing_usable(root, cases, counts, unresolved, excluded, case_types) -> str:
    """Why no view made it into the manifest, in the words that fit what was found."""
    head = f"{root}: no DDSM view could be used ({len(cases)} case folder(s) found"
    if (
        case_types is not None
        and counts["cases_skipped"]
        and not any(k.startswith("cases_") and k != "cases_skipped" for k in counts)
    ):
        return (
            f"{head}; all {counts['cases_skipped']} are of other types than "
            f"{', '.join(case_types)}: choose other --case-types)"
        )
    if unresolved and all("type unknown" in u["reason"] for u in unresolved):
        return (
            f"{head}, but none lies under a folder named normals, benigns, cancers or "
            "benign_without_callbacks, so no label can be given; keep the DDSM folder names)"
        )
    why = unresolved[0]["reason"] if unresolved else excluded[0]["reason"] if excluded else ""
    return (
        f"{head}; {len(unresolved)} unresolved, {len(excluded)} excluded, listed in the "
        f"summary); e.g. {why}"
    )


def _str(v) -> str:
    return "" if v is None else str(v)


def _image_id(ljpeg: Path) -> str:
    m = _FILE_RE.match(ljpeg.name)
    return f"{m.group('case').upper()}.{m.group('view').upper()}" if m else ljpeg.name


def _masks(
    image_id: str, abns: list[dict], overlay: Path | None, vinfo: dict, writer: MaskWriter | None
) -> list[str]:
    """One mask PNG per abnormality (paths; ``""`` where an abnormality has no usable BOUNDARY)."""
    if writer is None or overlay is None or not abns:
        return []
    shape = (int(vinfo["lines"]), int(vinfo["pixels_per_line"]))
    out = []
    for k, a in enumerate(abns, start=1):
        if not any(o["kind"] == "BOUNDARY" for o in a["outlines"]):
            writer.error(image_id, "no BOUNDARY", abnormality=a["index"])
            out.append("")
            continue
        out.append(
            writer.write(
                f"{image_id}.{k}.png",
                lambda a=a: outline_mask(a["outlines"], shape),
                key={
                    "boundaries": [
                        np.asarray(o["points"]).tolist()
                        for o in a["outlines"]
                        if o["kind"] == "BOUNDARY"
                    ],
                    "shape": shape,
                },
                image_id=image_id,
                what="outline",
                abnormality=a["index"],
            )
        )
    return out


def _reason_kind(reason: str) -> str:
    if reason.startswith("LJPEG missing"):
        return "LJPEG missing"
    if ".ics says OVERLAY" in reason:
        return "overlay missing"
    if "no .ics" in reason:
        return "no .ics"
    if "is not in" in reason:
        return "view not in the .ics"
    if "type unknown" in reason:
        return "case type unknown"
    if reason.startswith("overlay:"):
        return "unreadable overlay"
    if "cut short" in reason:
        return ".ics cut short"
    return "unreadable .ics"


__all__ = ["build_ddsm", "default_mask_dir", "label_rule"]
