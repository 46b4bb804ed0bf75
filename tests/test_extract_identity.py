"""Rows you can trace: precision and the DICOM decoder plugin are part of a backbone entry's
identity, and every run records package versions, device and precision in the store."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from featmammo import store  # noqa: E402
from featmammo.errors import ConfigError, StoreError  # noqa: E402
from featmammo.extract import extract  # noqa: E402
from featmammo.extract import run as run_mod  # noqa: E402
from featmammo.extract.environment import STANDARD_DECODER_PLUGIN, decoder_plugin  # noqa: E402
from featmammo.extract.models import backbone_provenance  # noqa: E402
from featmammo.preprocess import PreprocessConfig  # noqa: E402

CFG = PreprocessConfig(image_size=64)
FAST = {"weights": "random", "preprocess": CFG, "threads": 1, "device": "cpu", "cache": False}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATMAMMO_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def manifest(tmp_path):
    from test_extract_files import _dataset

    return _dataset(tmp_path / "data", n=4)


def test_a_bfloat16_run_is_refused_into_a_float32_entry(manifest, tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    extract(manifest, path, backbones=["alexnet"], **FAST)
    assert store.open(path).backbone_provenance("alexnet")["precision"] == "float32"
    # what a GPU run under bfloat16 autocast records (the CPU has no autocast: only the words)
    monkeypatch.setattr(run_mod, "resolve_precision", lambda precision, dev: "bfloat16")
    with pytest.raises(StoreError, match=r"precision \('float32' -> 'bfloat16'\)") as err:
        extract(manifest, path, backbones=["alexnet"], **FAST)
    assert "--backbone-suffix" in str(err.value)
    s = extract(manifest, path, backbones=["alexnet"], backbone_suffix="-bf16", **FAST)
    assert s.n_done == 4
    st = store.open(path)
    assert st.backbone_provenance("alexnet-bf16")["precision"] == "bfloat16"
    assert st.identity("alexnet-bf16") != st.identity("alexnet")
    assert st.provenance["runs"][-1]["precision"] == "bfloat16"


def test_another_decoder_plugin_is_another_identity(manifest, tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    extract(manifest, path, backbones=["alexnet"], **FAST)
    assert decoder_plugin() == STANDARD_DECODER_PLUGIN
    assert store.open(path).backbone_provenance("alexnet")["decoder_plugin"] == "pylibjpeg"

    import featmammo.io.dicom as dicom

    real = dicom.available_decoders
    jpeg2000 = "1.2.840.10008.1.2.4.91"
    monkeypatch.setattr(
        dicom, "available_decoders", lambda ts: ("pillow",) if ts == jpeg2000 else real(ts)
    )
    plugin = decoder_plugin()
    assert "JPEG2000=pillow" in plugin and "JPEGBaseline8Bit=pylibjpeg" in plugin
    with pytest.raises(StoreError, match="decoder_plugin"):
        extract(manifest, path, backbones=["alexnet"], **FAST)


def test_entries_made_before_these_keys_keep_their_identity():
    """A float32 run with the standard plugins has the identity an entry made before precision
    and decoder_plugin were recorded had: existing stores are resumed, not refused."""
    from featmammo.backbones import make

    model = make("alexnet", weights="random")
    old = backbone_provenance(model, CFG, "float32")
    new = backbone_provenance(model, CFG, "float32", precision="float32",
                              decoder_plugin=STANDARD_DECODER_PLUGIN)  # fmt: skip
    assert "precision" not in old and new["precision"] == "float32"
    assert store.backbone_identity(old) == store.backbone_identity(new)
    bf16 = backbone_provenance(model, CFG, "float32", precision="bfloat16",
                               decoder_plugin=STANDARD_DECODER_PLUGIN)  # fmt: skip
    assert store.backbone_identity(bf16) != store.backbone_identity(new)


def test_each_run_records_versions_device_and_precision(manifest, tmp_path):
    path = tmp_path / "s.h5"
    extract(manifest, path, backbones=["alexnet"], **FAST)
    run = store.open(path).provenance["runs"][-1]
    assert (run["device"], run["precision"], run["decoder_plugin"]) == ("cpu", "float32",
                                                                        "pylibjpeg")  # fmt: skip
    assert run["device_name"]
    versions = run["versions"]
    from importlib.metadata import version

    for pkg in ("featmammo", "torch", "torchvision", "pydicom", "numpy", "h5py", "pylibjpeg",
                "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "python"):  # fmt: skip
        assert versions.get(pkg), pkg
    assert versions["torch"] == version("torch")
    pytest.importorskip("timm")
    assert versions["timm"] == version("timm")


def test_ranks_disagreeing_on_precision_are_named():
    a = {"spec": {"name": "alexnet", "seed": 0}, "precision": "bfloat16", "dtype": "float32"}
    b = {**a, "precision": "float16"}
    with pytest.raises(ConfigError, match="precision 'bfloat16' on rank 0, 'float16' on rank 1"):
        run_mod._check_same_identities([[("alexnet", a)], [("alexnet", b)]])
    run_mod._check_same_identities([[("alexnet", a)], [("alexnet", dict(a))]])


def test_what_the_reader_applied_is_counted_per_run(manifest, tmp_path):
    path = tmp_path / "s.h5"
    s = extract(manifest, path, backbones=["alexnet"], **FAST)
    assert s.windowing_applied == {"none": 4}  # PGMs: no VOI tags, the stored range
    assert store.open(path).provenance["runs"][-1]["windowing_applied"] == {"none": 4}
    s = extract(manifest, path, backbones=["alexnet"], **FAST)
    assert s.windowing_applied == {}  # nothing read


def test_what_the_reader_applied_is_stored_per_row(tmp_path):
    """A DICOM with a VOI window and one without, under --windowing auto: each row says which."""
    import numpy as np
    import pandas as pd
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def dicom(path, window: bool):
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
        ds.Modality, ds.PhotometricInterpretation = "MG", "MONOCHROME2"
        ds.Rows = ds.Columns = 64
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
        yy, xx = np.mgrid[:64, :64]
        img = (4000 * np.exp(-((yy - 32) ** 2 + (xx - 20) ** 2) / 300)).astype(np.uint16)
        ds.PixelData = img.tobytes()
        if window:
            ds.WindowCenter, ds.WindowWidth = 2000, 4000
        ds.save_as(path, enforce_file_format=True)

    dicom(tmp_path / "w.dcm", True)
    dicom(tmp_path / "n.dcm", False)
    rows = [{"image_id": k, "path": f"{k}.dcm", "label": "benign"} for k in ("w", "n")]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    path = tmp_path / "s.h5"
    s = extract(tmp_path / "m.csv", path, backbones=["alexnet"], **FAST)
    assert s.windowing_applied == {"window": 1, "none": 1}
    meta = store.open(path).meta
    assert dict(zip(store.open(path).ids, meta["windowing_applied"], strict=True)) == {
        "w": "window", "n": "none"}  # fmt: skip
