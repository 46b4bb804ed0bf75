"""The extraction loop's paths: what is read, what is refused up front, what stops a run, how
batches reach the backbones (one copy, streamed), ``--workers auto``, ``hybrid:`` checkpoints,
predict.

Tiny PNG phantoms at 32-64 px and probe backbones (a few flops) keep these fast.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

import featmammo.extract as fx  # noqa: E402
from featmammo import store  # noqa: E402
from featmammo.errors import ConfigError, ImageReadError  # noqa: E402
from featmammo.preprocess import PreprocessConfig  # noqa: E402

CFG = PreprocessConfig(image_size=32)


@pytest.fixture(scope="module", autouse=True)
def _own_prepared_cache(tmp_path_factory):
    """The default prepared-image cache in a folder of this module's own (not ./cache)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATMAMMO_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def _phantom(rng, side: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    cy, cx = side / 2 + rng.integers(-4, 5), side / 3 + rng.integers(-3, 4)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (side / 5) ** 2))
    return (np.clip(blob + 0.1 * rng.random((side, side)), 0, 1) * 255).astype(np.uint8)


def _manifest(folder, n: int, *, masks: str | None = None, bad: int = 0):
    """n phantom PNGs (+ ``bad`` unreadable files); ``masks``: None (no column), "empty" (an
    all-zero mask, i.e. no foreground, for every row) or "lesion"."""
    from PIL import Image

    rng = np.random.default_rng(n)
    rows = []
    for i in range(n + bad):
        name = f"im{i:02d}.png"
        if i < n:
            Image.fromarray(_phantom(rng)).save(folder / name)
        else:
            (folder / name).write_bytes(b"not an image")
        row = {"image_id": f"im{i:02d}", "path": name, "label": "benign",
               "patient_id": f"P{i}", "laterality": "L", "view": "CC", "split": "train",
               "source": "synthetic"}  # fmt: skip
        if masks is not None:
            m = np.zeros((48, 48), np.uint8)
            if masks == "lesion":
                m[20:30, 10:20] = 255
            Image.fromarray(m).save(folder / f"mask{i:02d}.png")
            row["roi_mask_path"] = f"mask{i:02d}.png"
        rows.append(row)
    p = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


class Probe(torch.nn.Module):
    """A backbone of a few flops that records the storage of every input it sees."""

    def __init__(self, name: str, dim: int = 3, seen=None, sidecar=None):
        super().__init__()
        from featmammo.backbones import BackboneSpec

        self.spec = BackboneSpec(
            name=name, arch="probe", layer="penultimate", dim=dim, input_size=32,
            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), weights="random",
            weights_sha256=None,
        )  # fmt: skip
        self.w = torch.nn.Parameter(torch.linspace(0.5, 1.5, dim), requires_grad=False)
        self.seen = seen if seen is not None else []
        if sidecar is not None:
            self.sidecar = sidecar

    def forward(self, x):
        self.seen.append((x.data_ptr(), tuple(x.shape)))
        return x.mean(dim=(1, 2, 3))[:, None] * self.w


FAST = {"weights": "random", "threads": 1, "device": "cpu", "workers": 0}


# ----------------------------------------------------------------------------- what is read
def test_roi_full_never_opens_the_masks_and_an_empty_mask_does_not_fail(tmp_path, monkeypatch):
    manifest = _manifest(tmp_path, 4, masks="empty")
    import featmammo.io as fio

    opened = []
    real = fio.read_image

    def spy(path, *a, **k):
        opened.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(fio, "read_image", spy)
    s = fx.extract(manifest, tmp_path / "s.h5", backbones=[Probe("p")], preprocess=CFG, **FAST)
    assert (s.n_done, s.n_failed) == (4, 0)
    assert not [p for p in opened if "mask" in p]
    # crop reads them: an all-zero mask fails its image, with the reason
    crop = dataclasses.replace(CFG, roi="crop")
    with pytest.raises(fx.AllImagesFailed, match="no foreground"):
        fx.extract(manifest, tmp_path / "c.h5", backbones=[Probe("p")], preprocess=crop, **FAST)
    assert any("mask" in p for p in opened)


def test_roi_crop_or_patch_without_masks_is_refused_before_any_work(tmp_path):
    manifest = _manifest(tmp_path, 2)
    for roi in ("crop", "patch"):
        cfg = dataclasses.replace(CFG, roi=roi)
        with pytest.raises(ConfigError, match="roi_mask_path column"):
            fx.extract(manifest, tmp_path / "s.h5", backbones=[Probe("p")], preprocess=cfg, **FAST)
    assert not (tmp_path / "s.h5").exists()
    r = CliRunner().invoke(
        _cli(), ["extract", str(manifest), "-o", str(tmp_path / "c.h5"), "-b", "resnet18",
                 "--weights", "random", "--roi", "patch", "--device", "cpu"],
    )  # fmt: skip
    assert r.exit_code != 0 and "roi_mask_path" in str(r.exception or r.output)
    assert not (tmp_path / "c.h5").exists()


def _cli():
    from featmammo.cli.main import cli

    return cli


# ----------------------------------------------------------------------------- what stops a run
def test_every_image_failed_raises_and_the_cli_exits_non_zero(tmp_path):
    manifest = _manifest(tmp_path, 0, bad=3)
    with pytest.raises(fx.AllImagesFailed, match="every image failed") as info:
        fx.extract(manifest, tmp_path / "s.h5", backbones=[Probe("p")], preprocess=CFG, **FAST)
    assert info.value.summary.n_failed == 3
    from featmammo.errors import AllImagesFailed, FeatmammoError

    assert fx.AllImagesFailed is AllImagesFailed and isinstance(info.value, FeatmammoError)
    again = pickle.loads(pickle.dumps(info.value))  # crosses processes with its summary
    assert str(again) == str(info.value) and again.summary.n_failed == 3
    st = store.open(tmp_path / "s.h5")  # the failures are recorded
    assert len(st.failures) == 3 and not st.done("p").any()
    r = CliRunner().invoke(
        _cli(), ["extract", str(manifest), "-o", str(tmp_path / "c.h5"), "-b", "resnet18",
                 "--weights", "random", "--image-size", "32", "--device", "cpu"],
    )  # fmt: skip
    assert r.exit_code == 1, r.output
    assert "every image failed" in r.output


@pytest.mark.parametrize("workers", [0, 2])
def test_a_programming_error_stops_the_run_with_its_traceback(tmp_path, monkeypatch, workers):
    manifest = _manifest(tmp_path, 4, bad=1)

    def broken(*a, **k):
        raise TypeError("a bug, not a bad image")

    monkeypatch.setattr(fx.loading, "_load_prepared", broken)
    with pytest.raises(TypeError, match="a bug, not a bad image"):
        fx.extract(manifest, tmp_path / "s.h5", backbones=[Probe("p")], preprocess=CFG,
                   **{**FAST, "workers": workers})  # fmt: skip


def test_a_bad_image_among_good_ones_is_a_recorded_failure(tmp_path):
    manifest = _manifest(tmp_path, 3, bad=1)
    s = fx.extract(manifest, tmp_path / "s.h5", backbones=[Probe("p")], preprocess=CFG, **FAST)
    assert (s.n_done, s.n_failed) == (3, 1)


# ----------------------------------------------------------------------------- how batches flow
def test_one_device_copy_per_batch_shared_by_every_backbone(tmp_path):
    manifest = _manifest(tmp_path, 6)
    seen_a, seen_b = [], []
    models = [Probe("a", seen=seen_a), Probe("b", dim=5, seen=seen_b)]
    fx.extract(manifest, tmp_path / "s.h5", backbones=models, preprocess=CFG, batch_size=4,
               **FAST)  # fmt: skip
    assert [s[1][0] for s in seen_a] == [4, 2]
    assert seen_a == seen_b  # the same tensor (same storage) reached both backbones
    st = store.open(tmp_path / "s.h5")
    assert st.dim("a") == 3 and st.dim("b") == 5 and st.done("b").all()
    x = st.array("a")
    np.testing.assert_allclose(st.array("b")[:, 0], x[:, 0], rtol=1e-6)  # w[0] = 0.5 in both


def test_embed_streams_batches_and_matches_the_store(tmp_path, monkeypatch):
    manifest = _manifest(tmp_path, 12)
    df = pd.read_csv(manifest)
    paths = [tmp_path / p for p in df["path"]]
    fx.extract(manifest, tmp_path / "s.h5", backbones=[Probe("p")], preprocess=CFG, **FAST)
    reads = []
    real = fx._load_prepared
    monkeypatch.setattr(fx.loading, "_load_prepared", lambda *a: reads.append(a[0]) or real(*a))
    models = fx._make_models([Probe("p")], "random", torch.device("cpu"))
    stream = fx.embed_stream(paths, models, fx._resolve_preprocess(CFG, models), device="cpu",
                             batch_size=2, workers=0, lateralities=["L"] * 12)  # fmt: skip
    first = next(stream)
    assert first[0] == [0, 1] and first[1]["p"].shape == (2, 3) and not first[2]
    assert len(reads) <= 6  # the current batch and at most two read ahead, not all 12
    rest = list(stream)
    assert len(rest) == 5 and len(reads) == 12
    got = np.concatenate([first[1]["p"]] + [r[1]["p"] for r in rest])
    np.testing.assert_allclose(got, store.open(tmp_path / "s.h5").array("p"), rtol=1e-6)
    # embed: the same numbers; a bad file raises its ImageReadError
    out = fx.embed(paths, backbones=[Probe("p")], preprocess=CFG, device="cpu", batch_size=5,
                   lateralities=["L"] * 12, workers=0)  # fmt: skip
    np.testing.assert_allclose(out["p"], got, rtol=1e-6)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(ImageReadError, match="bad.png"):
        fx.embed([paths[0], bad], backbones=[Probe("p")], preprocess=CFG, device="cpu", workers=0)


def test_workers_auto(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert fx.resolve_workers("auto", cpu) == 0
    monkeypatch.setattr(fx.environment, "available_cores", lambda: 4)
    assert fx.resolve_workers("auto", cpu) == 0
    monkeypatch.setattr(fx.environment, "available_cores", lambda: 16)
    assert fx.resolve_workers("auto", cpu) == 4
    assert fx.resolve_workers("auto", cpu, local_world=4) == 0
    assert fx.resolve_workers("auto", cuda) == 15
    assert fx.resolve_workers("auto", cuda, local_world=4) == 3
    monkeypatch.setattr(fx.environment, "available_cores", lambda: 2)
    assert fx.resolve_workers("auto", cuda) == 2
    monkeypatch.setattr(fx.environment, "available_cores", lambda: 64)
    assert fx.resolve_workers(None, cuda) == fx.MAX_AUTO_WORKERS
    assert fx.resolve_workers(3, cuda) == 3 and fx.resolve_workers("2", cpu) == 2
    for bad in (-1, "many"):
        with pytest.raises(ConfigError, match="workers"):
            fx.resolve_workers(bad, cpu)
    from featmammo.cli.options import WorkersType

    assert WorkersType().convert("auto", None, None) == "auto"
    assert WorkersType().convert("3", None, None) == 3


def test_resolve_device_is_the_shared_one():
    from featmammo import devices

    assert fx.resolve_device is devices.resolve_device


# ----------------------------------------------------------------------------- hybrid: checkpoints
def test_a_hybrid_backbone_imposes_its_image_size_and_roi(tmp_path):
    manifest = _manifest(tmp_path, 3, masks="lesion")
    side = {"preprocess": {"image_size": 40, "roi": "crop", "patch_context": 0.5}}
    hyb = Probe("hybrid:run/checkpoint.pt", sidecar=side)
    assert fx.hybrid_preprocess([hyb, Probe("p")]) == {
        "image_size": 40, "roi": "crop", "patch_context": 0.5,
    }  # fmt: skip
    with pytest.raises(ConfigError, match=r"image_size 40 \(this run: 32\)"):
        fx.extract(manifest, tmp_path / "a.h5", backbones=[hyb], preprocess=CFG, **FAST)
    with pytest.raises(ConfigError, match=r"roi 'crop' \(this run: 'full'\)"):
        fx.extract(manifest, tmp_path / "b.h5", backbones=[hyb],
                   preprocess=dataclasses.replace(CFG, image_size=40), **FAST)  # fmt: skip
    s = fx.extract(manifest, tmp_path / "c.h5", backbones=[hyb, Probe("p")], **FAST)
    assert s.n_done == 3
    st = store.open(tmp_path / "c.h5")
    for name in st.backbones:
        pre = st.backbone_provenance(name)["preprocess"]
        assert (pre["image_size"], pre["roi"]) == (40, "crop")
    other = Probe("hybrid:other.pt", sidecar={"preprocess": {"image_size": 64, "roi": "full"}})
    with pytest.raises(ConfigError, match="different image sizes"):
        fx.hybrid_preprocess([hyb, other])


def _checkpoint(path, image_size: int = 32):
    from featmammo.nn import HybridNet, save_checkpoint

    net = HybridNet(["benign", "malignant"], trunks=("alexnet",), weights="random", seed=0,
                    hidden=8)  # fmt: skip
    pre = PreprocessConfig(image_size=image_size).to_dict()
    save_checkpoint(path, {"model": net.state_dict()},
                    {"model": net.config(), "classes": ["benign", "malignant"],
                     "preprocess": pre})  # fmt: skip
    return path


def test_predict_on_a_model_with_a_hybrid_block(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from featmammo.predict import predict_images

    ckpt = _checkpoint(tmp_path / "checkpoint.pt", image_size=64)
    manifest = _manifest(tmp_path, 6)
    name = f"hybrid:{ckpt}"
    # the checkpoint's image size (64) is taken, none being given
    r = CliRunner().invoke(
        _cli(), ["extract", str(manifest), "-o", str(tmp_path / "s.h5"), "-b", name,
                 "--device", "cpu", "--workers", "0"], catch_exceptions=False,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    st = store.open(tmp_path / "s.h5")
    assert st.backbones == [name] and st.backbone_provenance(name)["preprocess"]["image_size"] == 64
    x = st.array(name)
    y = np.array([0, 1] * 3)
    head = LogisticRegression().fit(x, y)
    head.classes_ = np.array(["benign", "malignant"], dtype=object)
    sidecar = {"classes": ["benign", "malignant"], "backbones": [name], "blocks": {name: [0, 8]},
               "backbone_provenance": {name: st.backbone_provenance(name)},
               "n_features": 8}  # fmt: skip
    df = pd.read_csv(manifest)
    out = predict_images(
        head,
        sidecar,
        [tmp_path / p for p in df["path"]],
        device="cpu",
        lateralities=df["laterality"].tolist(),
        workers=0,
        batch_size=4,
    )
    np.testing.assert_allclose(out[["p_benign", "p_malignant"]].to_numpy(),
                               head.predict_proba(x), atol=1e-5)  # fmt: skip
    # an --image-size that contradicts the checkpoint is refused
    r = CliRunner().invoke(
        _cli(), ["extract", str(manifest), "-o", str(tmp_path / "t.h5"), "-b", name,
                 "--image-size", "32", "--device", "cpu"],
    )  # fmt: skip
    assert r.exit_code != 0 and "image_size 64" in str(r.exception)


# ----------------------------------------------------------------------------- small frictions
def test_predict_warns_when_the_model_has_no_normal_class(caplog):
    from featmammo.predict import warn_missing_classes

    with caplog.at_level(logging.WARNING, logger="featmammo.predict"):
        msgs = warn_missing_classes(["normal", "benign", "NORMAL", ""], ["benign", "malignant"],
                                    "m.csv")  # fmt: skip
    assert len(msgs) == 1 and "2 image(s) labelled 'normal'" in msgs[0]
    assert "has no normal class" in caplog.text
    assert warn_missing_classes(["benign", "malignant"], ["normal", "abnormal"], "x") == []
    assert warn_missing_classes(["normal"], ["normal", "benign", "malignant"], "x") == []


# ----------------------------------------------------------------------------- DDSM calibration
def test_cli_ddsm_calibration_od_is_in_the_stores_preprocess_provenance(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from ljpeg_vectors import phantom, write_case
    finally:
        sys.path.pop(0)
    case = write_case(tmp_path / "case", "A-1001-1",
                      {"LEFT_CC": (phantom(90, 60, 12, seed=3), 7, 12, True)},
                      digitizer="DBA 21")  # fmt: skip
    rows = [{"image_id": "lj", "path": str(case["LEFT_CC"]), "label": "normal",
             "patient_id": "A-1001-1", "laterality": "L", "view": "CC", "split": "train",
             "source": "ddsm"}]  # fmt: skip
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    common = ["-b", "resnet18", "--weights", "random", "--image-size", "32", "--device", "cpu",
              "--workers", "0", "--no-cache"]  # fmt: skip
    stores = {}
    for calib in ("od", "none"):
        out = tmp_path / f"{calib}.h5"
        r = CliRunner().invoke(
            _cli(), ["extract", str(manifest), "-o", str(out), *common,
                     "--ddsm-calibration", calib],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        stores[calib] = store.open(out)
    prov = stores["od"].backbone_provenance("resnet18")
    assert prov["preprocess"]["ddsm_calibration"] == "od"
    assert (
        PreprocessConfig.from_dict(prov["preprocess"]).fingerprint()
        == (prov["preprocess_fingerprint"])
    )
    plain = stores["none"].backbone_provenance("resnet18")
    assert "ddsm_calibration" not in plain["preprocess"]  # the default keeps old fingerprints
    assert plain["preprocess_fingerprint"] != prov["preprocess_fingerprint"]
    assert not np.allclose(stores["od"].array("resnet18"), stores["none"].array("resnet18"))
    # od with a windowing is refused (calibration maps the digitiser's raw values)
    with pytest.raises(ConfigError, match="windowing"):
        CliRunner().invoke(
            _cli(), ["extract", str(manifest), "-o", str(tmp_path / "w.h5"), *common,
                     "--ddsm-calibration", "od", "--windowing", "percentile"],
            catch_exceptions=False,
        )  # fmt: skip
    assert not (tmp_path / "w.h5").exists()


# ----------------------------------------------------------------------------- prepared cache
def test_a_rerun_reads_prepared_pixels_and_no_cache_bypasses_them(tmp_path, monkeypatch):
    from featmammo.prepared import PreparedCache

    manifest = _manifest(tmp_path, 5)
    cache = PreparedCache(tmp_path / "prep", max_bytes=10**8)
    import featmammo.io as fio

    opened = []
    real = fio.read_image
    monkeypatch.setattr(fio, "read_image", lambda p, *a, **k: opened.append(p) or real(p, *a, **k))
    run = {"backbones": [Probe("p")], "preprocess": CFG, "cache": cache, **FAST}
    fx.extract(manifest, tmp_path / "a.h5", **run)
    assert len(opened) == 5 and cache.info()["entries"] == 5
    opened.clear()
    fx.extract(manifest, tmp_path / "b.h5", **run)
    assert opened == []  # every image came from the cache
    a, b = store.open(tmp_path / "a.h5"), store.open(tmp_path / "b.h5")
    assert np.array_equal(a.array("p"), b.array("p"))

    def no_reading(*a, **k):
        raise TypeError("read_image called")  # a bug-like error: it would stop the run

    with monkeypatch.context() as mp:
        mp.setattr(fio, "read_image", no_reading)
        fx.extract(manifest, tmp_path / "w.h5", **{**run, "workers": 2})  # workers: cache too
    assert np.array_equal(store.open(tmp_path / "w.h5").array("p"), a.array("p"))
    none = PreparedCache(tmp_path / "unused", max_bytes=10**8)
    monkeypatch.setenv("FEATMAMMO_CACHE", str(tmp_path / "unused-default"))
    fx.extract(manifest, tmp_path / "c.h5", **{**run, "cache": False})
    # no prepared-image cache (the file digest table of featmammo.extract.files is not one)
    assert len(opened) == 5 and not (tmp_path / "unused-default" / "prepared").exists()
    assert none.info()["entries"] == 0
    assert np.array_equal(store.open(tmp_path / "c.h5").array("p"), a.array("p"))
    r = CliRunner().invoke(
        _cli(), ["extract", str(manifest), "-o", str(tmp_path / "d.h5"), "-b", "resnet18",
                 "--weights", "random", "--image-size", "32", "--device", "cpu", "--no-cache"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "unused-default" / "prepared").exists()


class NanProbe(Probe):
    """Row 1 of every batch is NaN, row 2 overflows float16."""

    def forward(self, x):
        y = super().forward(x).clone()
        if len(y) > 1:
            y[1, 0] = float("nan")
        if len(y) > 2:
            y[2, 1] = 1e6
        return y


def test_non_finite_outputs_are_failures_with_their_reason(tmp_path):
    manifest = _manifest(tmp_path, 6, bad=1)
    s = fx.extract(manifest, tmp_path / "s.h5", backbones=[NanProbe("n")], preprocess=CFG,
                   batch_size=4, dtype="float16", **FAST)  # fmt: skip
    st = store.open(tmp_path / "s.h5")
    fails = st.failures.set_index("image_id")["reason"]
    assert set(fails.index) == {"im01", "im02", "im05", "im06"}, fails
    assert fails["im06"] and "n:" not in fails["im06"]  # the unreadable file: the reader's reason
    assert fails["im01"].startswith("n: ") and fails["im02"].startswith("n: ")
    assert fails["im01"] != fails["im02"]  # NaN vs float16 overflow
    done = st.done("n")
    assert list(np.flatnonzero(done)) == [0, 3, 4]
    assert np.isfinite(st.array("n")[done]).all() and np.isnan(st.array("n")[~done]).all()
    assert (s.n_done, s.n_failed) == (3, 4)


@pytest.mark.gpu
def test_gpu_pipelined_batches_match_the_cpu(tmp_path):
    """On CUDA batch k+1 is launched before batch k is read back (pinned memory, one copy each
    way, workers auto): every row must still land on its own image."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    manifest = _manifest(tmp_path, 11)
    paths = [tmp_path / p for p in pd.read_csv(manifest)["path"]]
    run = {"backbones": [Probe("a"), Probe("b", dim=5)], "preprocess": CFG, "batch_size": 3,
           "lateralities": ["L"] * 11, "precision": "float32"}  # fmt: skip
    cpu = fx.embed(paths, device="cpu", workers=0, **run)
    gpu = fx.embed(paths, device="cuda", workers="auto", **run)
    for name in ("a", "b"):
        np.testing.assert_allclose(gpu[name], cpu[name], rtol=1e-5, atol=1e-6)
    s = fx.extract(manifest, tmp_path / "g.h5", backbones=[Probe("a")], preprocess=CFG,
                   batch_size=3, weights="random", device="cuda", precision="float32")  # fmt: skip
    assert s.workers >= 2 and s.n_done == 11
    np.testing.assert_allclose(store.open(tmp_path / "g.h5").array("a"), cpu["a"], rtol=1e-5)
