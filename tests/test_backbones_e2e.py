"""The README's path with the new backbone families: manifest -> extract (``timm:``,
``mammoclip:``, ``--pool gem``) -> fit ``--features hybrid`` -> predict on image files, which
rebuilds both backbones from the recorded specs and reproduces the fit's test predictions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("timm")

from test_backbones_mammoclip import B2, write_checkpoint  # noqa: E402
from test_fit_cli import _cli, _png_manifest  # noqa: E402

from featmammo import store  # noqa: E402


@pytest.mark.slow
def test_timm_and_mammoclip_through_extract_fit_predict(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    manifest = _png_manifest(tmp_path)
    ckpt = tmp_path / "mc" / "b2-model-best-epoch-10.tar"
    ckpt.parent.mkdir()
    write_checkpoint(ckpt, B2)
    names = ["timm:convnext_atto", f"mammoclip:{ckpt}"]
    st = tmp_path / "store.h5"
    # zscore: one normalisation for both (their own mean/std differ), so one run and one fusion
    r = _cli(["extract", manifest, "-o", st, "-b", names[0], "-b", names[1], "--weights", "random",
              "--pool", "gem", "--normalize", "zscore", "--image-size", "64", "--device", "cpu"],
             catch=False)  # fmt: skip
    assert r.exit_code == 0, r.output
    with store.open(st) as s:
        assert sorted(s.backbones) == sorted(names)
        specs = {n: s.backbone_provenance(n)["spec"] for n in names}
    assert {sp["pool"] for sp in specs.values()} == {"gem"}
    assert specs[names[1]]["weights_sha256"] and specs[names[0]]["weights"] == "random"
    run = tmp_path / "run"
    r = _cli(["fit", st, "-o", run, "--features", "hybrid", "--head", "logreg", "--cv", "2",
              "--n-boot", "10", "--no-figures"], catch=False)  # fmt: skip
    assert r.exit_code == 0, r.output
    model = run / "models" / "hybrid__logreg.skops"
    sidecar = json.loads(model.with_suffix(".json").read_text())
    assert sorted(sidecar["blocks"]) == sorted(names)
    pred = pd.read_csv(run / "predictions.csv", dtype={"fold": str})
    test = pred[(pred["features"] == "hybrid") & (pred["fold"] == "test")].set_index("image_id")
    images = [tmp_path / "im16.png", tmp_path / "im18.png"]
    r = _cli(["predict", model, *images, "--device", "cpu", "--json"], catch=False)
    assert r.exit_code == 0, r.output
    got = pd.DataFrame(json.loads(r.stdout[r.stdout.index("[") :])).set_index("image_id")
    cols = ["p_benign", "p_malignant"]
    assert (got["error"] == "").all()
    np.testing.assert_allclose(
        got[cols].to_numpy(float), test.loc[["im16", "im18"], cols].to_numpy(), atol=1e-5
    )
