"""mini-MIAS manifests: ``mdb001.pgm`` ... ``mdb322.pgm`` + ``Info.txt``.

Rules (documented choices):

- ``Info.txt`` table lines read ``REFNUM BG CLASS [SEVERITY X Y RADIUS]`` (``mdb001 G CIRC B 535
  425 197``, ``mdb003 D NORM``); any other line (title, notes) is ignored. A film with several
  abnormalities has several lines. BG must be F, G or D; CLASS one of CALC, CIRC, SPIC, MISC,
  ARCH, ASYM, NORM; SEVERITY B or M for every abnormal line. Anything else stops with the file and
  line. Coordinates that are not numbers (some lines carry none) are left empty.
- Image-level label: any SEVERITY M -> ``malignant``, else any B -> ``benign``; CLASS NORM ->
  ``normal``.
- Films come in consecutive pairs, the two breasts of one woman: ``patient_id`` =
  ``exam_id`` = ``mdb001-002`` for mdb001 and mdb002 (so a patient-grouped split keeps them
  together; one exam per woman).
- Laterality from the file number, as ``Info.txt``'s notes say: "each pair represents the left
  (even filename numbers) and right mammograms (odd filename numbers)" -> even ``L``, odd ``R``.
  View ``MLO`` (mini-MIAS holds mediolateral oblique films only).
- Lesion geometry: ``x``, ``y``, ``radius`` are the numbers ``Info.txt`` gives for the film's
  primary abnormality (the first malignant, else the first; empty when the line gives none:
  widely distributed calcifications; all three or none: a line with only some is kept without
  any and listed in ``incomplete_coordinates``), ``circles`` all of them (``x y radius``,
  ``;``-joined, empty entries where omitted). MIAS puts the origin at the image's
  **bottom-left** corner; the masks flip it: row = height - 1 - y (height read from the PGM
  header, 1024 for every mini-MIAS film). With ``mask_dir``, each circle becomes a mask
  ``<mask_dir>/<ref>.<k>.png`` (pixels within ``radius`` of the centre); ``roi_mask_path`` is the
  primary one, ``roi_mask_paths`` all, so ``--roi crop|patch`` runs on MIAS. A circle without
  coordinates is in ``mask_errors``.
- No official split (``split`` empty).
- A film in the table without its PGM is an unresolved row (reason given); PGMs not in the table
  are counted in the summary. A malformed or incomplete last line of an ``Info.txt`` that does
  not end with a line break (a truncated file) is an unresolved row, not a stop or a guess.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from featmammo.datasets.base import abs_root, find_file, manifest_frame, summarize, walk_files
from featmammo.datasets.masks import (
    MaskGeometryError,
    MaskWriter,
    disk_mask,
    mask_notes,
    no_masks_summary,
)
from featmammo.errors import ManifestError

log = logging.getLogger(__name__)

SOURCE = "mias"
BACKGROUNDS = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
CLASSES = ("CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM")
SEVERITIES = {"B": "benign", "M": "malignant"}
LABEL_RULE = "image-level: any SEVERITY M -> malignant, else B -> benign; CLASS NORM -> normal"
EXTRA_COLUMNS = [
    "label_rule",
    "exam_id",
    "background",
    "abnormality_class",
    "severity",
    "x",
    "y",
    "radius",
    "circles",
    "n_abnormalities",
    "roi_mask_path",
    "roi_mask_paths",
]
VIEW = "MLO"
LATERALITY_RULE = "Info.txt: even file numbers are left breasts, odd ones right"
_REF_RE = re.compile(r"^mdb(\d{3})$", re.IGNORECASE)


def read_info(path, cut: list[dict] | None = None) -> dict[str, dict]:
    """Parse ``Info.txt`` -> ``{refnum: {"background", "lines": [{class, severity, x, y, radius,
    line, coordinates}]}}`` in file order. Raises ManifestError (file + line) on an unknown value.

    Coordinates are all three numbers or none: a line with some of them (or text in their place)
    keeps none, and says so in ``coordinates`` (never a half-filled circle). ``cut``: when given,
    the file's last table line, if the file does not end with a line break and that line is
    malformed or its coordinates incomplete (most likely a truncated file), is appended there
    (``{"image_id", "where", "reason"}``) instead of raising or being used.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read Info.txt ({exc})") from exc
    films: dict[str, dict] = {}
    lines = text.splitlines()
    last = max((k for k, ln in enumerate(lines, 1) if ln.split()), default=0)
    open_end = bool(text) and not text.endswith(("\n", "\r")) and cut is not None
    for lineno, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens or not tokens[0].lower().startswith("mdb"):
            continue
        try:
            parsed = _info_line(path, lineno, line, tokens)
        except ManifestError as exc:
            if not (open_end and lineno == last):
                raise
            cut.append(_cut(path, lineno, tokens, str(exc)))
            continue
        ref, bg, entry = parsed
        if open_end and lineno == last and entry["coordinates"]:
            cut.append(_cut(path, lineno, tokens, entry["coordinates"]))
            continue
        film = films.setdefault(ref, {"background": bg, "lines": []})
        if film["background"] != bg:
            raise ManifestError(
                f"{path}: line {lineno}: background {bg} differs from {film['background']} on "
                "an earlier line"
            )
        film["lines"].append(entry)
    if not films:
        raise ManifestError(f"{path}: no table line ('mdbNNN BG CLASS ...') in the file")
    return films


def _cut(path, lineno: int, tokens: list[str], problem: str) -> dict:
    return {
        "image_id": tokens[0].lower(),
        "where": f"{path}: line {lineno}",
        "reason": f"{problem} (the file's last line, without a line break: cut short?)",
    }


def _info_line(path, lineno: int, line: str, tokens: list[str]) -> tuple[str, str, dict]:
    where = f"{path}: line {lineno}"
    if not _REF_RE.match(tokens[0]):
        # a table line with a mangled reference (mdb02, mdb004,D,NORM): never skipped silently
        raise ManifestError(
            f"{where}: {tokens[0]!r} is not a reference number (expected mdbNNN followed by "
            "space-separated fields)"
        )
    if len(tokens) < 3:
        raise ManifestError(f"{where}: expected 'REFNUM BG CLASS ...', got {line.strip()!r}")
    bg, cls = tokens[1].upper(), tokens[2].upper()
    if bg not in BACKGROUNDS:
        raise ManifestError(f"{where}: unknown background {tokens[1]!r} (expected F, G or D)")
    if cls not in CLASSES:
        raise ManifestError(
            f"{where}: unknown class {tokens[2]!r} (expected one of {', '.join(CLASSES)})"
        )
    sev = tokens[3].upper() if len(tokens) > 3 else ""
    if cls == "NORM":
        if sev:
            raise ManifestError(f"{where}: a NORM film with severity {tokens[3]!r}")
    elif sev not in SEVERITIES:
        what = f"unknown severity {tokens[3]!r}" if sev else "no severity"
        raise ManifestError(f"{where}: {what} for class {cls} (expected B or M)")
    given = tokens[4:7]
    numeric = [t for t in given if t.replace(".", "", 1).isdigit()]
    problem = ""
    if given and len(numeric) < 3:
        problem = f"line {lineno}: incomplete coordinates {' '.join(given)!r} (expected X Y RADIUS)"
    nums = given if len(numeric) == 3 else ["", "", ""]
    entry = {"class": cls, "severity": sev, "x": nums[0], "y": nums[1], "radius": nums[2],
             "line": lineno, "coordinates": problem}  # fmt: skip
    return tokens[0].lower(), bg, entry


def _label(lines: list[dict], where: str) -> str:
    abnormal = [ln for ln in lines if ln["class"] != "NORM"]
    if abnormal and len(abnormal) != len(lines):
        raise ManifestError(f"{where}: the film is listed both as NORM and with an abnormality")
    if not abnormal:
        return "normal"
    sev = {ln["severity"] for ln in abnormal}
    return "malignant" if "M" in sev else "benign"


def laterality_of(ref: str) -> str:
    """``L`` for an even file number (``mdb002``), ``R`` for an odd one (``mdb001``)."""
    m = _REF_RE.match(ref)
    if m is None:
        raise ValueError(f"{ref!r} is not a mini-MIAS reference (mdbNNN)")
    return "R" if int(m.group(1)) % 2 else "L"


def _pgm_size(path: Path) -> tuple[int, int]:
    """(rows, columns) from the PGM header (no pixels read)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            w, h = im.size
    except Exception as exc:  # noqa: BLE001 - any unreadable header is one listed mask error
        raise MaskGeometryError(f"cannot read the image size from {path.name} ({exc})") from None
    return h, w


def _film_masks(ref, path, abn, writer: MaskWriter | None, info_path) -> list[str]:
    if writer is None or not abn:
        return []
    size: list = []

    def shape():
        if not size:
            size.append(_pgm_size(path))
        return size[0]

    def circle(ln):
        if not (ln["x"] and ln["y"] and ln["radius"]):
            raise MaskGeometryError("Info.txt gives no centre/radius for this abnormality")
        return float(ln["x"]), float(ln["y"]), float(ln["radius"])

    def make(ln):
        h, w = shape()
        x, y, r = circle(ln)
        return disk_mask([(x, h - 1 - y, r)], (h, w))  # origin bottom-left -> row from the top

    return [
        writer.write(
            f"{ref}.{k}.png",
            lambda ln=ln: make(ln),
            key=lambda ln=ln: {"circle": circle(ln), "shape": shape()},
            image_id=ref,
            what=f"{info_path.name} line {ln['line']}",
        )
        for k, ln in enumerate(abn, start=1)
    ]


def build_mias(root, *, info=None, mask_dir=None) -> tuple[pd.DataFrame, dict]:
    """A manifest of a mini-MIAS folder: (DataFrame, summary). ``info``: the ``Info.txt``
    (default: found under ``root`` by name, any case); ``mask_dir``: where the abnormality
    circles are written as ROI mask PNGs (None: no masks)."""
    root = abs_root(root, "mini-MIAS")
    info_path = find_file(root, ["Info.txt"], "mini-MIAS Info.txt", info)
    cut: list[dict] = []
    films = read_info(info_path, cut)
    writer = MaskWriter(mask_dir) if mask_dir is not None else None
    pgms: dict[str, Path] = {}
    for path in walk_files(root, (".pgm",)):
        if _REF_RE.match(path.stem):
            pgms.setdefault(path.stem.lower(), path)
    rows, unresolved = [], list(cut)
    incomplete = [
        {"image_id": ref, "where": f"{info_path}: {ln['coordinates']}"}
        for ref, film in films.items()
        for ln in film["lines"]
        if ln["coordinates"]
    ]
    for ref, film in films.items():
        where = f"{info_path}: line {film['lines'][0]['line']}"
        label = _label(film["lines"], where)
        n = int(_REF_RE.match(ref).group(1))
        first = n if n % 2 else n - 1
        patient = f"mdb{first:03d}-{first + 1:03d}"
        path = pgms.get(ref)
        if path is None:
            unresolved.append(
                {"image_id": ref, "where": where, "reason": f"{ref}.pgm not found under ROOT"}
            )
            continue
        abn = [ln for ln in film["lines"] if ln["class"] != "NORM"]
        primary = next((k for k, ln in enumerate(abn) if ln["severity"] == "M"), 0)
        masks = _film_masks(ref, path, abn, writer, info_path)
        lead = abn[primary] if abn else {"x": "", "y": "", "radius": ""}
        rows.append(
            {
                "image_id": ref,
                "path": str(path),
                "label": label,
                "patient_id": patient,
                "laterality": laterality_of(ref),
                "view": VIEW,
                "split": "",
                "source": SOURCE,
                "label_rule": LABEL_RULE,
                "exam_id": patient,
                "background": film["background"],
                "abnormality_class": ";".join(ln["class"] for ln in abn) or "NORM",
                "severity": ";".join(ln["severity"] for ln in abn),
                "x": lead["x"],
                "y": lead["y"],
                "radius": lead["radius"],
                "circles": ";".join(
                    " ".join(ln[k] for k in ("x", "y", "radius")).strip() for ln in abn
                ),
                "n_abnormalities": len(abn),
                "roi_mask_path": masks[primary] if masks else "",
                "roi_mask_paths": ";".join(masks),
            }
        )
    extra_files = sorted(set(pgms) - set(films))
    df = manifest_frame(rows, EXTRA_COLUMNS)
    if df.empty:
        raise ManifestError(
            f"{root}: none of the {len(films)} films in {info_path} has its PGM under ROOT "
            f"(found {len(pgms)} mdbNNN.pgm files)"
        )
    masks = writer.summary() if writer is not None else no_masks_summary()
    summary = summarize(
        df,
        root=root,
        source=SOURCE,
        label_rule=LABEL_RULE,
        unresolved=unresolved,
        notes=[
            f"laterality from the file number ({LATERALITY_RULE}); view MLO (mini-MIAS films "
            "are all mediolateral oblique)",
            "x/y as Info.txt writes them: origin at the bottom-left corner (the masks flip y)",
            "consecutive films mdbNNN/mdbNNN+1 are one woman's two breasts (one patient_id)",
        ]
        + mask_notes(masks)
        + (
            [
                f"{len(incomplete)} line(s) with incomplete coordinates: kept without any "
                "(listed in incomplete_coordinates)"
            ]  # fmt: skip
            if incomplete
            else []
        )
        + (
            [f"{len(extra_files)} PGM file(s) not in Info.txt (not in the manifest)"]
            if extra_files
            else []
        ),
        info=str(info_path),
        laterality_rule=LATERALITY_RULE,
        incomplete_coordinates=incomplete,
        films_in_table=len(films),
        pgm_files=len(pgms),
        pgm_not_in_table=extra_files,
        **masks,
    )
    return df, summary
