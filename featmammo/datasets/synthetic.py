"""A CBIS-DDSM-shaped synthetic data set on disk, made of phantoms (tests, demo, benchmarks).

This module owns the writer of a synthetic tree in the official CBIS-DDSM "classic" layout; the
phantoms themselves come from :mod:`featmammo.datasets.phantoms` (not patient data: labels are
carried by lesion morphology).

``write_synthetic_cbis`` writes (all under ``out_dir``):

- ``<Subject>/<StudyUID>/<SeriesUID>/000000.dcm`` full images, and for each lesion a crop and a ROI
  mask sharing one series folder of ``<Subject>_1`` (mass rows: crop ``000000.dcm``, mask
  ``000001.dcm``; calc rows the opposite, as in the official CSVs);
- the four official case-description CSVs with the official headers (``breast_density`` in mass
  files, ``breast density`` in calc files; ``N/A`` descriptors; the trailing newline the official
  files carry inside the crop cell of calc rows and the ROI cell of mass rows);
- normals, which CBIS-DDSM does not have, in a separate, clearly marked source: ``normals/`` (same
  classic layout, subjects ``Normal-{Training|Test}_P_xxxxx_{LEFT|RIGHT}_{CC|MLO}``) described by
  ``normal_cases.csv`` (paths relative to ``normals/``);
- ``manifest.csv`` (the featmammo manifest columns + ``abnormality_type``, ``roi_mask_path``,
  ``photometric``, ``bits_stored``; ``source`` is ``synthetic-cbis`` or ``synthetic-normal``);
- ``README.md`` saying what the folder is.

DICOMs: Modality MG, Secondary Capture SOP class (as CBIS-DDSM), explicit VR little endian,
BitsStored 12 or 16 (BitsAllocated 16), about a quarter of the full images MONOCHROME1 with inverted
stored values, ``Laterality``/``ImageLaterality``, ``ViewPosition``, ``PatientOrientation`` (the
view, as CBIS-DDSM), ``PatientID`` = subject folder name (as CBIS-DDSM), UIDs from
``pydicom.uid.generate_uid`` with entropy from the seed (same seed -> same UIDs). Patients have 2-4
views; the train/test split is by patient.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..labels import LABELS
from .manifest import REQUIRED_COLUMNS
from .phantoms import (
    SIDES,
    VIEWS,
    Phantom,
    SyntheticDataset,
    make_dataset,
    make_phantom,
    render_phantom,
)

log = logging.getLogger(__name__)

__all__ = [
    "LABELS",
    "Phantom",
    "SIDES",
    "SyntheticDataset",
    "VIEWS",
    "make_dataset",
    "make_phantom",
    "render_phantom",
    "write_synthetic_cbis",
]

MASS_COLUMNS = [
    "patient_id",
    "breast_density",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "mass shape",
    "mass margins",
    "assessment",
    "pathology",
    "subtlety",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
]
CALC_COLUMNS = [
    "patient_id",
    "breast density",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "calc type",
    "calc distribution",
    "assessment",
    "pathology",
    "subtlety",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
]
CSV_NAMES = {
    ("mass", "train"): "mass_case_description_train_set.csv",
    ("mass", "test"): "mass_case_description_test_set.csv",
    ("calc", "train"): "calc_case_description_train_set.csv",
    ("calc", "test"): "calc_case_description_test_set.csv",
}
NORMAL_COLUMNS = [
    "patient_id",
    "breast density",
    "left or right breast",
    "image view",
    "pathology",
    "split",
    "image file path",
]
MANIFEST_COLUMNS = [
    *REQUIRED_COLUMNS,
    "abnormality_type",
    "roi_mask_path",
    "photometric",
    "bits_stored",
]
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's registered root for generated UIDs


# --------------------------------------------------------------------------------------------------
# rendering


def _uid(seed: int, *parts) -> str:
    from pydicom.uid import generate_uid

    return str(
        generate_uid(prefix=UID_ROOT, entropy_srcs=["featmammo-synth", str(seed), *map(str, parts)])
    )


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    bits_stored: int,
    photometric: str,
    subject: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    laterality: str,
    view: str,
    description: str,
    instance: int,
) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20160101"
    ds.Modality = "MG"
    ds.ConversionType = "WSD"
    ds.SeriesDescription = description
    ds.PatientName = subject
    ds.PatientID = subject
    ds.BodyPartExamined = "BREAST"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "DDSM"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.PatientOrientation = view  # CBIS-DDSM stores the view here
    ds.Laterality = laterality
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.ImageComments = "featmammo synthetic phantom (not patient data)"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(s) for s in pixels.shape)
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if pixels.dtype != np.uint8:
        ds.WindowCenter = str(1 << (bits_stored - 1))
        ds.WindowWidth = str(1 << bits_stored)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _split_views(rng, n_views: int) -> list[tuple[str, str]]:
    """(side, view) pairs for one patient: 2 = one breast, 3 = one breast + one view, 4 = both."""
    first = str(rng.choice(SIDES))
    other = "R" if first == "L" else "L"
    pairs = [(first, "CC"), (first, "MLO")]
    if n_views >= 3:
        pairs.append((other, str(rng.choice(VIEWS))))
    if n_views == 4:
        pairs = [(first, "CC"), (first, "MLO"), (other, "CC"), (other, "MLO")]
    return pairs[:n_views]


def _views_per_patient(rng, n: int) -> list[int]:
    counts, left = [], n
    while left > 0:
        k = int(rng.integers(2, 5))
        if left <= 4:
            k = left
        elif left - k == 1:
            k = k - 1 if k > 2 else k + 1
        counts.append(k)
        left -= k
    return counts


def write_synthetic_cbis(
    out_dir,
    n: int = 300,
    *,
    seed: int = 0,
    size: tuple[int, int] = (512, 320),
    classes: tuple[str, ...] = LABELS,
    difficulty: float = 0.5,
    test_fraction: float = 0.2,
    monochrome1_fraction: float = 0.25,
    bits16_fraction: float = 0.5,
    benign_without_callback_fraction: float = 0.15,
) -> dict:
    """Write ``n`` full images (plus lesion crops and masks) as a CBIS-DDSM-shaped tree.

    Returns a summary dict (counts per class/split/source, paths of the CSVs and the manifest).
    ``out_dir`` must be empty or not exist. Same arguments -> byte-identical files.
    """
    import pandas as pd

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: output folder is not empty (refusing to mix data sets)")
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    bad = [c for c in classes if c not in LABELS]
    if bad or not classes:
        raise ConfigError(f"classes must be a non-empty subset of {LABELS}, got {classes}")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction}")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 11]))
    counts = _views_per_patient(rng, n)
    n_pat = len(counts)
    pat_class = [classes[i % len(classes)] for i in range(n_pat)]
    rng.shuffle(pat_class)
    # patient-disjoint split, stratified by class: every class gets ~test_fraction of its patients
    pat_split = ["train"] * n_pat
    for c in classes:
        idx = [i for i in range(n_pat) if pat_class[i] == c]
        rng.shuffle(idx)
        for i in idx[: int(round(test_fraction * len(idx)))]:
            pat_split[i] = "test"

    case_rows: dict[tuple[str, str], list[dict]] = {k: [] for k in CSV_NAMES}
    normal_rows, manifest_rows = [], []
    img_index = 0
    for p in range(n_pat):
        pid = f"P_{p + 1:05d}"
        label, split = pat_class[p], pat_split[p]
        density = int(rng.integers(1, 5))
        pairs = _split_views(rng, counts[p])
        breast_type = {s: ("mass" if rng.random() < 0.5 else "calc") for s in SIDES}
        for side, view in pairs:
            img_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 13, img_index]))
            img_index += 1
            bits = 16 if img_rng.random() < bits16_fraction else 12
            photometric = (
                "MONOCHROME1" if img_rng.random() < monochrome1_fraction else "MONOCHROME2"
            )
            diff = float(np.clip(difficulty + img_rng.normal(0, 0.08), 0, 1))
            ph = render_phantom(
                label,
                size=size,
                view=view,
                laterality=side,
                difficulty=diff,
                rng=img_rng,
                bits_stored=bits,
                lesion_type=None if label == "normal" else breast_type[side],
                density=density,
            )
            side_word = "LEFT" if side == "L" else "RIGHT"
            split_word = "Training" if split == "train" else "Test"
            top = (1 << bits) - 1
            stored = (
                ph.image if photometric == "MONOCHROME2" else (top - ph.image).astype(np.uint16)
            )
            if label == "normal":
                subject = f"Normal-{split_word}_{pid}_{side_word}_{view}"
                base = out / "normals"
                source = "synthetic-normal"
            else:
                kind = "Mass" if ph.lesion_type == "mass" else "Calc"
                subject = f"{kind}-{split_word}_{pid}_{side_word}_{view}"
                base = out
                source = "synthetic-cbis"
            study = _uid(seed, subject, "study")
            series = _uid(seed, subject, "series")
            rel = f"{subject}/{study}/{series}/000000.dcm"
            common = dict(laterality=side, view=view, subject=subject)
            _write_dicom(
                base / rel,
                stored,
                bits_stored=bits,
                photometric=photometric,
                study_uid=study,
                series_uid=series,
                sop_uid=_uid(seed, subject, "sop"),
                description="full mammogram images",
                instance=1,
                **common,
            )
            manifest_path = rel if base == out else f"normals/{rel}"
            mask_manifest = ""
            if label == "normal":
                normal_rows.append(
                    {
                        "patient_id": pid,
                        "breast density": density,
                        "left or right breast": side_word,
                        "image view": view,
                        "pathology": "NORMAL",
                        "split": split,
                        "image file path": rel,
                    }
                )
            else:
                sub = f"{subject}_1"
                sub_study = _uid(seed, sub, "study")
                sub_series = _uid(seed, sub, "series")
                mass = ph.lesion_type == "mass"
                crop_name, mask_name = (
                    ("000000.dcm", "000001.dcm") if mass else ("000001.dcm", "000000.dcm")
                )
                ys, xs = np.nonzero(ph.mask)
                pad = max(2, int(0.1 * max(np.ptp(ys) + 1, np.ptp(xs) + 1)))
                y0, y1 = max(0, ys.min() - pad), min(size[0], ys.max() + 1 + pad)
                x0, x1 = max(0, xs.min() - pad), min(size[1], xs.max() + 1 + pad)
                crop_rel = f"{sub}/{sub_study}/{sub_series}/{crop_name}"
                mask_rel = f"{sub}/{sub_study}/{sub_series}/{mask_name}"
                sub_common = dict(laterality=side, view=view, subject=sub)
                _write_dicom(
                    out / crop_rel,
                    ph.image[y0:y1, x0:x1],
                    bits_stored=bits,
                    photometric="MONOCHROME2",
                    study_uid=sub_study,
                    series_uid=sub_series,
                    sop_uid=_uid(seed, sub, "crop"),
                    description="cropped images",
                    instance=1 if mass else 2,
                    **sub_common,
                )
                _write_dicom(
                    out / mask_rel,
                    (ph.mask * 255).astype(np.uint8),
                    bits_stored=8,
                    photometric="MONOCHROME2",
                    study_uid=sub_study,
                    series_uid=sub_series,
                    sop_uid=_uid(seed, sub, "mask"),
                    description="ROI mask images",
                    instance=2 if mass else 1,
                    **sub_common,
                )
                mask_manifest = mask_rel
                pathology = "MALIGNANT"
                if label == "benign":
                    pathology = (
                        "BENIGN_WITHOUT_CALLBACK"
                        if img_rng.random() < benign_without_callback_fraction
                        else "BENIGN"
                    )
                if label == "malignant":
                    assessment = int(img_rng.choice([4, 5, 5]))
                else:
                    assessment = int(img_rng.choice([2, 3, 4]))
                row = {
                    "patient_id": pid,
                    "left or right breast": side_word,
                    "image view": view,
                    "abnormality id": 1,
                    "abnormality type": "mass" if mass else "calcification",
                    "assessment": assessment,
                    "pathology": pathology,
                    "subtlety": ph.info["subtlety"],
                    "image file path": rel,
                    # the official files carry a newline inside these cells (crop for calc rows,
                    # ROI mask for mass rows); reproduce it so readers must strip cells
                    "cropped image file path": crop_rel if mass else crop_rel + "\n",
                    "ROI mask file path": mask_rel + "\n" if mass else mask_rel,
                }
                if mass:
                    row["breast_density"] = density
                    row["mass shape"] = ph.info["shape"]
                    row["mass margins"] = ph.info["margins"]
                else:
                    row["breast density"] = density
                    row["calc type"] = ph.info["calc_type"]
                    row["calc distribution"] = ph.info["distribution"]
                case_rows[("mass" if mass else "calc", split)].append(row)
            manifest_rows.append(
                {
                    # same id as featmammo.datasets.cbis_ddsm gives the view (patient_side_view)
                    "image_id": f"{pid}_{side_word}_{view}",
                    "path": manifest_path,
                    "label": label,
                    "patient_id": pid,
                    "laterality": side,
                    "view": view,
                    "split": split,
                    "source": source,
                    "abnormality_type": ph.lesion_type or "",
                    "roi_mask_path": mask_manifest,
                    "photometric": photometric,
                    "bits_stored": bits,
                }
            )

    def sort_key(r):
        return (r["patient_id"], r["left or right breast"], r["image view"])

    csv_paths = {}
    for (kind, split), name in CSV_NAMES.items():
        cols = MASS_COLUMNS if kind == "mass" else CALC_COLUMNS
        path = out / name
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
            writer.writeheader()
            writer.writerows(sorted(case_rows[(kind, split)], key=sort_key))
        csv_paths[name] = str(path)
    normal_csv = out / "normal_cases.csv"
    with open(normal_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=NORMAL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(normal_rows, key=sort_key))
    manifest = pd.DataFrame(manifest_rows, columns=MANIFEST_COLUMNS)
    manifest_path = out / "manifest.csv"
    manifest.to_csv(manifest_path, index=False, lineterminator="\n")
    (out / "README.md").write_text(_README.format(n=n, seed=seed, size=size, difficulty=difficulty))

    summary = {
        "out_dir": str(out),
        "n_images": len(manifest),
        "n_patients": n_pat,
        "seed": seed,
        "size": list(size),
        "difficulty": difficulty,
        "by_label": {k: int(v) for k, v in manifest["label"].value_counts().sort_index().items()},
        "by_split": {k: int(v) for k, v in manifest["split"].value_counts().sort_index().items()},
        "by_source": {k: int(v) for k, v in manifest["source"].value_counts().sort_index().items()},
        "by_abnormality": {name: len(case_rows[key]) for key, name in CSV_NAMES.items()},
        "monochrome1": int((manifest["photometric"] == "MONOCHROME1").sum()),
        "manifest": str(manifest_path),
        "case_csvs": csv_paths,
        "normal_csv": str(normal_csv),
    }
    log.info("wrote %d synthetic images (%d patients) to %s", len(manifest), n_pat, out)
    return summary


_README = """# Synthetic CBIS-DDSM-shaped data (featmammo phantoms, NOT patient data)

Written by `featmammo synth` / `featmammo.datasets.synthetic.write_synthetic_cbis`
(n={n}, seed={seed}, size={size}, difficulty={difficulty}).

- `<Subject>/<StudyUID>/<SeriesUID>/*.dcm` and the four `*_case_description_*_set.csv` files follow
  the official CBIS-DDSM classic layout and headers (benign/malignant masses and calcifications).
- `normals/` + `normal_cases.csv`: normal phantoms. CBIS-DDSM has no normal images; these are a
  separate, synthetic source (manifest `source` = `synthetic-normal`). Paths in `normal_cases.csv`
  are relative to `normals/`.
- `manifest.csv`: one row per full image, featmammo manifest columns, paths relative to this folder.

Class is carried by lesion morphology: benign = circumscribed oval masses or coarse calcifications,
malignant = spiculated/irregular masses or clustered fine pleomorphic calcifications.
"""
