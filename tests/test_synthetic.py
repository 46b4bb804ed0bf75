"""featmammo.datasets.synthetic: phantoms, in-memory set, CBIS-DDSM-shaped tree, `synth` CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from featmammo.datasets import phantoms
from featmammo.datasets import synthetic as syn
from featmammo.errors import ConfigError
from featmammo.preprocess import largest_component_bbox

SIZE = (96, 64)

# ----------------------------------------------------------------------------------------- phantoms


@pytest.mark.parametrize("label", syn.LABELS)
@pytest.mark.parametrize("view,side", [("CC", "L"), ("MLO", "R")])
def test_phantom_shapes_dtypes_and_mask(label, view, side):
    img, mask = syn.make_phantom(label, size=SIZE, view=view, laterality=side, rng=3)
    assert img.shape == SIZE and img.dtype == np.uint16 and img.max() <= 4095
    if label == "normal":
        assert mask is None
    else:
        assert mask.shape == SIZE and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
        assert 4 <= mask.sum() < 0.25 * mask.size
    # chest wall (tissue) on the breast's side
    half = SIZE[1] // 2
    left, right = img[:, :half].mean(), img[:, half:].mean()
    assert (left > right) == (side == "L")


def test_bits_stored_16_uses_the_range():
    img, _ = syn.make_phantom("benign", size=SIZE, bits_stored=16, rng=0)
    assert img.max() > 4095 * 4
    with pytest.raises(ConfigError):
        syn.make_phantom("benign", bits_stored=10)
    with pytest.raises(ConfigError):
        syn.make_phantom("cancer")
    with pytest.raises(ConfigError):
        syn.make_phantom("benign", difficulty=1.5)


def test_phantom_determinism():
    a = syn.make_phantom("malignant", size=SIZE, rng=42)
    b = syn.make_phantom("malignant", size=SIZE, rng=np.random.default_rng(42))
    c = syn.make_phantom("malignant", size=SIZE, rng=43)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_mlo_has_pectoral_muscle():
    # bright, uniform triangle in the upper chest-wall corner
    cc = np.mean(
        [
            syn.make_phantom("normal", size=SIZE, view="CC", rng=i)[0][:8, :6].mean()
            for i in range(5)
        ]
    )
    mlo = np.mean(
        [
            syn.make_phantom("normal", size=SIZE, view="MLO", rng=i)[0][:8, :6].mean()
            for i in range(5)
        ]
    )
    assert mlo > 1.5 * cc


def test_texture_power_law_slope():
    rng = np.random.default_rng(0)
    field = phantoms._power_law_noise((128, 128), 3.0, rng)
    spec = np.abs(np.fft.fft2(field)) ** 2
    fy = np.fft.fftfreq(128)[:, None]
    fx = np.fft.fftfreq(128)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    sel = (f > 0.02) & (f < 0.4)
    slope = np.polyfit(np.log(f[sel]), np.log(spec[sel]), 1)[0]
    assert -3.4 < slope < -2.6


def _compactness(mask):
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:-1, 1:-1] &= m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    boundary = (m & ~inner).sum()
    return boundary / np.sqrt(m.sum())


def test_class_morphology_differs():
    # masses: malignant outlines are irregular (more boundary per area) and carry spicules
    benign = [
        syn.render_phantom("benign", size=(256, 160), lesion_type="mass", difficulty=0.2, rng=i)
        for i in range(6)
    ]
    malignant = [
        syn.render_phantom("malignant", size=(256, 160), lesion_type="mass", difficulty=0.2, rng=i)
        for i in range(6)
    ]
    cb = np.mean([_compactness(p.mask) for p in benign])
    cm = np.mean([_compactness(p.mask) for p in malignant])
    assert cm > 1.08 * cb, (cb, cm)
    assert {p.info["margins"] for p in benign} == {"CIRCUMSCRIBED"}
    assert {p.info["margins"] for p in malignant} <= {"SPICULATED", "ILL_DEFINED"}
    # calcifications: few coarse specks vs many fine ones, visible inside the ROI
    for label, lo, hi in (("benign", 3, 7), ("malignant", 12, 30)):
        for i in range(4):
            p = syn.render_phantom(
                label, size=(256, 160), lesion_type="calc", difficulty=0.2, rng=i
            )
            assert lo <= p.info["n_calcs"] <= hi
            inside = p.image[p.mask.astype(bool)]
            assert inside.max() > np.median(inside) + 200


def _lesion_contrast(p):
    m = p.mask.astype(bool)
    y0, x0, y1, x1 = largest_component_bbox(m)
    ring = np.zeros_like(m)
    ring[max(0, y0 - 6) : y1 + 6, max(0, x0 - 6) : x1 + 6] = True
    ring &= ~m
    return float(p.image[m].mean()) - float(p.image[ring].mean())


def test_difficulty_controls_contrast_and_size():
    easy = [
        syn.render_phantom("benign", size=(192, 128), lesion_type="mass", difficulty=0.0, rng=i)
        for i in range(6)
    ]
    hard = [
        syn.render_phantom("benign", size=(192, 128), lesion_type="mass", difficulty=1.0, rng=i)
        for i in range(6)
    ]
    assert np.mean([_lesion_contrast(p) for p in easy]) > 2 * np.mean(
        [_lesion_contrast(p) for p in hard]
    )
    assert np.mean([p.mask.sum() for p in easy]) > 2 * np.mean([p.mask.sum() for p in hard])


def test_make_dataset():
    ds = syn.make_dataset(9, seed=1, size=(48, 32))
    assert ds.images.shape == (9, 48, 32) and ds.images.dtype == np.uint16
    assert ds.masks.shape == (9, 48, 32) and len(ds) == 9
    assert set(ds.labels) == set(syn.LABELS)
    assert list(ds.meta.columns[:5]) == ["image_id", "label", "patient_id", "laterality", "view"]
    normal = ds.labels == "normal"
    assert ds.masks[normal].sum() == 0 and all(
        ds.masks[i].sum() > 0 for i in np.flatnonzero(~normal)
    )
    # two views of one breast per patient, same label
    g = ds.meta.groupby("patient_id")
    assert g["label"].nunique().max() == 1 and g["laterality"].nunique().max() == 1
    again = syn.make_dataset(9, seed=1, size=(48, 32))
    assert np.array_equal(ds.images, again.images)
    assert not np.array_equal(ds.images, syn.make_dataset(9, seed=2, size=(48, 32)).images)


# -------------------------------------------------------------------------------------- CBIS tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "cbis"
    summary = syn.write_synthetic_cbis(out, n=24, seed=7, size=(64, 48), test_fraction=0.3)
    return out, summary


def test_tree_summary_and_manifest(tree):
    out, summary = tree
    assert summary["n_images"] == 24
    m = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert list(m.columns[:8]) == [
        "image_id",
        "path",
        "label",
        "patient_id",
        "laterality",
        "view",
        "split",
        "source",
    ]
    assert len(m) == 24 and m["image_id"].is_unique
    assert set(m["label"]) == set(syn.LABELS)
    assert set(m["split"]) == {"train", "test"}
    assert all((out / p).is_file() for p in m["path"])
    # honest sources: normals are not CBIS-DDSM
    assert set(m.loc[m.label == "normal", "source"]) == {"synthetic-normal"}
    assert set(m.loc[m.label != "normal", "source"]) == {"synthetic-cbis"}
    assert all(p.startswith("normals/") for p in m.loc[m.label == "normal", "path"])
    # patients: 2-4 views, one split each (patient-disjoint)
    per = m.groupby("patient_id")
    assert per.size().between(2, 4).all()
    assert per["split"].nunique().max() == 1
    assert set(m["photometric"]) == {"MONOCHROME1", "MONOCHROME2"}


def test_manifest_validates_with_reader(tree):
    manifest = pytest.importorskip("featmammo.datasets.manifest")
    out, _ = tree
    df = manifest.read_manifest(out / "manifest.csv")
    assert len(df) == 24


def test_case_csvs_match_official_headers(tree, cbis_csv_dir):
    out, _ = tree
    for name in syn.CSV_NAMES.values():
        with open(cbis_csv_dir / name, newline="") as f:
            official = next(csv.reader(f))
        with open(out / name, newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == official, name
        kind = "mass" if name.startswith("mass") else "calc"
        for row in rows[1:]:
            rec = dict(zip(rows[0], row, strict=True))
            # the official newline quirk: crop cell (calc) / ROI cell (mass) ends with "\n"
            quirk = "ROI mask file path" if kind == "mass" else "cropped image file path"
            assert rec[quirk].endswith("\n")
            assert rec["pathology"] in ("BENIGN", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT")
            assert rec["abnormality type"] == ("mass" if kind == "mass" else "calcification")
            split_word = "Training" if "train" in name else "Test"
            assert rec["image file path"].startswith(
                f"{kind.capitalize()}-{split_word}_{rec['patient_id']}_"
            )
            for col in ("image file path", "cropped image file path", "ROI mask file path"):
                parts = rec[col].strip().split("/")
                assert len(parts) == 4 and parts[3] in ("000000.dcm", "000001.dcm")
                assert (out / rec[col].strip()).is_file()
    # pandas reads them the way users do
    df = pd.read_csv(out / "mass_case_description_train_set.csv")
    assert "breast_density" in df.columns
    df = pd.read_csv(out / "calc_case_description_train_set.csv")
    assert "breast density" in df.columns


def test_official_split_patient_disjoint(tree):
    out, _ = tree
    train, test = set(), set()
    for (_kind, split), name in syn.CSV_NAMES.items():
        ids = set(pd.read_csv(out / name)["patient_id"])
        (train if split == "train" else test).update(ids)
    normals = pd.read_csv(out / "normal_cases.csv")
    train |= set(normals.loc[normals.split == "train", "patient_id"])
    test |= set(normals.loc[normals.split == "test", "patient_id"])
    assert train and test and not (train & test)


def test_dicom_tags_and_pixels(tree):
    out, _ = tree
    m = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    seen_photometric = set()
    for _, r in m.iterrows():
        ds = pydicom.dcmread(out / r["path"])
        subject = Path(r["path"]).parts[-4]
        assert ds.Modality == "MG"
        assert ds.PatientID == subject
        assert ds.ImageLaterality == ds.Laterality == r["laterality"]
        assert ds.ViewPosition == r["view"]
        assert ds.BitsStored == r["bits_stored"] in (12, 16) and ds.BitsAllocated == 16
        assert ds.SeriesDescription == "full mammogram images"
        assert pydicom.uid.UID(ds.StudyInstanceUID).is_valid
        assert str(ds.StudyInstanceUID) == Path(r["path"]).parts[-3]
        assert str(ds.SeriesInstanceUID) == Path(r["path"]).parts[-2]
        px = ds.pixel_array
        assert px.shape == (64, 48) and px.max() < 2**ds.BitsStored
        corner = int(px[:4, -4:].mean()) if r["laterality"] == "L" else int(px[:4, :4].mean())
        top = 2**ds.BitsStored - 1
        # background is dark in MONOCHROME2, stored inverted (bright) in MONOCHROME1
        if ds.PhotometricInterpretation == "MONOCHROME1":
            assert corner > 0.8 * top
        else:
            assert corner < 0.2 * top
        seen_photometric.add(ds.PhotometricInterpretation)
        if r["roi_mask_path"]:
            mask = pydicom.dcmread(out / r["roi_mask_path"])
            assert mask.SeriesDescription == "ROI mask images"
            assert mask.pixel_array.shape == px.shape
            assert set(np.unique(mask.pixel_array)) == {0, 255}
            crop_dir = (out / r["roi_mask_path"]).parent
            crops = [p for p in crop_dir.iterdir() if p != out / r["roi_mask_path"]]
            assert len(crops) == 1
            crop = pydicom.dcmread(crops[0])
            assert crop.SeriesDescription == "cropped images"
            assert crop.pixel_array.size < px.size
    assert seen_photometric == {"MONOCHROME1", "MONOCHROME2"}


def test_cbis_builder_reads_the_tree(tree):
    cbis = pytest.importorskip("featmammo.datasets.cbis_ddsm")
    out, summary = tree
    df, info = cbis.build_cbis_ddsm(out, cache=False)
    m = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    abnormal = m[m.label != "normal"]
    assert len(df) == len(abnormal)
    assert info.get("unresolved", 0) == 0
    merged = df.merge(abnormal, on=["patient_id", "laterality", "view"], suffixes=("", "_syn"))
    assert len(merged) == len(abnormal)
    assert (merged["label"] == merged["label_syn"]).all()
    assert (merged["split"] == merged["split_syn"]).all()


def test_writer_determinism_and_refusal(tmp_path):
    a = syn.write_synthetic_cbis(tmp_path / "a", n=5, seed=3, size=(48, 32))
    syn.write_synthetic_cbis(tmp_path / "b", n=5, seed=3, size=(48, 32))
    ma = (tmp_path / "a" / "manifest.csv").read_bytes()
    assert ma == (tmp_path / "b" / "manifest.csv").read_bytes()
    first = pd.read_csv(tmp_path / "a" / "manifest.csv")["path"][0]
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()
    c = syn.write_synthetic_cbis(tmp_path / "c", n=5, seed=4, size=(48, 32))
    assert (tmp_path / "c" / "manifest.csv").read_bytes() != ma
    assert a["n_images"] == c["n_images"] == 5
    with pytest.raises(ConfigError, match="not empty"):
        syn.write_synthetic_cbis(tmp_path / "a", n=5, seed=3, size=(48, 32))


def test_synth_cli(tmp_path):
    from click.testing import CliRunner

    from featmammo.cli.synth import command

    res = CliRunner().invoke(
        command, [str(tmp_path / "o"), "--n", "6", "--size", "48x32", "--seed", "1", "--json"]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["n_images"] == 6 and summary["size"] == [48, 32]
    assert (tmp_path / "o" / "manifest.csv").is_file()
    res = CliRunner().invoke(command, [str(tmp_path / "p"), "--size", "48by32"])
    assert res.exit_code != 0 and "HxW" in res.output
