"""``--decoder cpu|auto|nvimagecodec``: threaded from the CLI to ``read_image``, resolved before any
work, recorded in the store's backbone provenance (not in the preprocessing fingerprint), and
DataLoader workers spawned (CUDA does not survive a fork) when the decoder is not the CPU's.

No GPU here: nvImageCodec's availability is faked where a test needs the GPU path chosen; the
images are PNGs, which ``read_image`` decodes on the CPU whatever the decoder.
"""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

import featmammo.extract as fx  # noqa: E402
import featmammo.io as fio  # noqa: E402
import featmammo.io.decoders as fdec  # noqa: E402
from featmammo import store  # noqa: E402
from featmammo.errors import ConfigError, StoreError  # noqa: E402
from featmammo.preprocess import PreprocessConfig  # noqa: E402

CFG = PreprocessConfig(image_size=32)
FAST = {"weights": "random", "threads": 1, "device": "cpu", "workers": 0, "cache": False}
NV_USABLE = fdec.nvimagecodec_status()[0]


@pytest.fixture(autouse=True)
def _own_prepared_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATMAMMO_CACHE", str(tmp_path / "prepared-cache"))


def _manifest(folder, n: int = 3):
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        img = np.zeros((40, 40), np.uint8)
        img[8:32, 4:24] = 200 + rng.integers(0, 50, (24, 20))
        Image.fromarray(img).save(folder / f"im{i}.png")
        rows.append({"image_id": f"im{i}", "path": f"im{i}.png", "label": "benign",
                     "patient_id": f"P{i}", "laterality": "L", "view": "CC", "split": "train",
                     "source": "synthetic"})  # fmt: skip
    p = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


def _probe(name: str = "p"):
    from featmammo.backbones import BackboneSpec

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.spec = BackboneSpec(
                name=name, arch="probe", layer="penultimate", dim=2, input_size=32,
                mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), weights="random",
                weights_sha256=None,
            )  # fmt: skip

        def forward(self, x):
            return torch.stack([x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3))], dim=1)

    return Probe()


@pytest.fixture
def fake_gpu_decoder(monkeypatch):
    """nvImageCodec 'usable' for the resolution (the PNGs still decode on the CPU)."""
    monkeypatch.setattr(fdec, "nvimagecodec_status", lambda: (True, "faked for the test"))


@pytest.fixture
def spy(monkeypatch):
    """Records the decoder argument of every read_image call."""
    seen = []
    real = fio.read_image

    def spying(path, *a, decoder="cpu", **k):
        seen.append(decoder)
        return real(path, *a, **k)  # PNGs: the CPU decoder either way

    monkeypatch.setattr(fio, "read_image", spying)
    return seen


# ----------------------------------------------------------------------------- resolution
@pytest.mark.skipif(NV_USABLE, reason="nvImageCodec and CUDA are usable here")
def test_auto_resolves_to_cpu_here_and_nvimagecodec_is_refused_with_the_reason():
    assert fx.resolve_decoder("auto") == "cpu"
    assert fx.resolve_decoder("cpu") == "cpu"
    with pytest.raises(ConfigError, match="nvimagecodec.*cannot run"):
        fx.resolve_decoder("nvimagecodec")
    with pytest.raises(ConfigError, match="decoder must be one of"):
        fx.resolve_decoder("gpu")


# ----------------------------------------------------------------------------- threading
def test_the_decoder_reaches_read_image_and_the_provenance(tmp_path, spy, monkeypatch):
    manifest = _manifest(tmp_path)
    s = fx.extract(manifest, tmp_path / "s.h5", backbones=[_probe()], preprocess=CFG, **FAST)
    assert set(spy) == {"cpu"} and len(spy) == 3
    assert s.decoder == "cpu"
    st = store.open(tmp_path / "s.h5")
    prov = st.backbone_provenance("p")
    assert prov["decoders"] == ["cpu"]
    assert "decoder" not in prov["preprocess"]  # an execution detail, not preprocessing
    assert st.provenance["runs"][-1]["decoder"] == "cpu"
    cpu_fp = prov["preprocess_fingerprint"]

    # a second run with the GPU decoder chosen (faked): the argument reaches read_image; the
    # preprocessing fingerprint is the same, the embeddings too (PNGs: no JPEG 2000 here)
    monkeypatch.setattr(fdec, "nvimagecodec_status", lambda: (True, "faked"))
    spy.clear()
    (tmp_path / "more").mkdir()
    m2 = _manifest(tmp_path / "more", 4)
    s2 = fx.extract(m2, tmp_path / "t.h5", backbones=[_probe()], preprocess=CFG,
                    **{**FAST, "decoder": "auto"})  # fmt: skip
    assert s2.decoder == "nvimagecodec" and set(spy) == {"nvimagecodec"} and len(spy) == 4
    st2 = store.open(tmp_path / "t.h5")
    assert st2.backbone_provenance("p")["preprocess_fingerprint"] == cpu_fp
    assert np.array_equal(st2.array("p")[:3], st.array("p"))  # same pixels, same embeddings
    assert "JPEG2000=nvimagecodec" in st2.backbone_provenance("p")["decoder_plugin"]
    # but which decoder reads lossy JPEG 2000 is part of the entry's identity (a GPU wavelet may
    # round otherwise): the first store refuses it, naming the field, or takes it under a suffix
    with pytest.raises(StoreError, match="decoder_plugin"):
        fx.extract(manifest, tmp_path / "s.h5", backbones=[_probe()], preprocess=CFG,
                   **{**FAST, "decoder": "nvimagecodec"})  # fmt: skip
    fx.extract(manifest, tmp_path / "s.h5", backbones=[_probe()], preprocess=CFG,
               backbone_suffix="-nv", **{**FAST, "decoder": "nvimagecodec"})  # fmt: skip
    st = store.open(tmp_path / "s.h5")
    assert st.backbone_provenance("p-nv")["decoders"] == ["nvimagecodec"]
    assert st.backbone_provenance("p")["decoders"] == ["cpu"]


def test_embed_and_the_prepared_cache_pass_the_decoder(tmp_path, spy, fake_gpu_decoder):
    from featmammo.prepared import PreparedCache

    _manifest(tmp_path)
    paths = [tmp_path / f"im{i}.png" for i in range(3)]
    cache = PreparedCache(tmp_path / "pc", max_bytes=2**30)
    a = fx.embed(paths, backbones=[_probe()], preprocess=CFG, device="cpu", workers=0,
                 cache=cache, decoder="nvimagecodec")  # fmt: skip
    assert spy == ["nvimagecodec"] * 3 and cache.stats["misses"] == 3
    # the decoder is not part of the cache key: the CPU decoder's run reads the same entries
    b = fx.embed(paths, backbones=[_probe()], preprocess=CFG, device="cpu", workers=0,
                 cache=cache, decoder="cpu")  # fmt: skip
    assert cache.stats["hits"] == 3 and len(spy) == 3
    assert np.array_equal(a["p"], b["p"])


# ----------------------------------------------------------------------------- workers
def test_a_gpu_decoder_spawns_workers_when_the_dataset_pickles(caplog):
    ds = fx._Images(["a.png"], [""], [""], CFG, None, "nvimagecodec")
    pickle.dumps(ds)  # what spawned workers receive
    assert fx._worker_context(ds, 2, "cpu") == (2, None)  # the CPU decoder keeps fork
    assert fx._worker_context(ds, 0, "nvimagecodec") == (0, None)
    with caplog.at_level(logging.INFO, logger="featmammo.extract"):
        assert fx._worker_context(ds, 2, "nvimagecodec") == (2, "spawn")
    assert "spawn" in caplog.text


def test_an_unpicklable_dataset_reads_in_the_main_process_and_says_why(caplog):
    ds = fx._Images(["a.png"], [""], [""], CFG, lambda: None, "nvimagecodec")
    with caplog.at_level(logging.INFO, logger="featmammo.extract"):
        assert fx._worker_context(ds, 3, "nvimagecodec") == (0, None)
    assert "workers=0" in caplog.text and "CUDA does not survive a fork" in caplog.text


def test_spawned_workers_embed_what_the_main_process_embeds(tmp_path, fake_gpu_decoder):
    _manifest(tmp_path)
    paths = [tmp_path / f"im{i}.png" for i in range(3)]
    run = {"backbones": [_probe()], "preprocess": CFG, "device": "cpu", "cache": False,
           "batch_size": 2, "decoder": "auto"}  # fmt: skip
    main = fx.embed(paths, workers=0, **run)
    spawned = fx.embed(paths, workers=1, **run)
    assert np.array_equal(main["p"], spawned["p"])


# ----------------------------------------------------------------------------- CLI
@pytest.mark.skipif(NV_USABLE, reason="nvImageCodec and CUDA are usable here")
def test_cli_nvimagecodec_here_exits_non_zero_with_the_reason_before_a_store(tmp_path, capsys):
    from featmammo.cli.main import main

    manifest = _manifest(tmp_path)
    out = tmp_path / "s.h5"
    with pytest.raises(SystemExit) as info:
        main(["extract", str(manifest), "-o", str(out), "-b", "resnet18", "--weights", "random",
              "--image-size", "32", "--device", "cpu", "--decoder", "nvimagecodec"])  # fmt: skip
    assert info.value.code != 0
    err = capsys.readouterr().err
    assert "nvimagecodec" in err and fdec.nvimagecodec_status()[1] in err
    assert not out.exists() and not list(tmp_path.glob("s.h5*"))
    # predict refuses it before the model is even opened
    with pytest.raises(SystemExit) as info:
        main(["predict", str(manifest), str(tmp_path / "im0.png"), "--decoder", "nvimagecodec"])
    assert info.value.code != 0
    assert fdec.nvimagecodec_status()[1] in capsys.readouterr().err


def test_cli_decoder_option_reaches_extract(tmp_path, spy):
    from click.testing import CliRunner

    from featmammo.cli.main import cli

    manifest = _manifest(tmp_path)
    r = CliRunner().invoke(
        cli, ["extract", str(manifest), "-o", str(tmp_path / "s.h5"), "-b", "resnet18",
              "--weights", "random", "--image-size", "32", "--device", "cpu", "--workers", "0",
              "--no-cache", "--decoder", "auto"],
        catch_exceptions=False,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    expected = fx.resolve_decoder("auto")
    assert set(spy) == {expected}
    assert store.open(tmp_path / "s.h5").backbone_provenance("resnet18")["decoders"] == [expected]


def test_a_bad_cache_bound_is_refused_before_any_work(tmp_path, monkeypatch):
    """FEATMAMMO_PREPARED_MAX_BYTES=garbage: one ConfigError up front, not a failure per image."""
    import pandas as pd
    from PIL import Image

    from featmammo.errors import ConfigError
    from featmammo.extract import extract

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "a.png")
    manifest = pd.DataFrame(
        [{"image_id": "a", "path": str(tmp_path / "a.png"), "label": "benign", "patient_id": "p",
          "laterality": "L", "view": "CC", "split": "train", "source": "t"}]
    )  # fmt: skip
    monkeypatch.setenv("FEATMAMMO_PREPARED_MAX_BYTES", "garbage")
    with pytest.raises(ConfigError, match="not a size in bytes"):
        extract(manifest, tmp_path / "s.h5", backbones=["alexnet"], weights="random")
    assert not (tmp_path / "s.h5").exists()
