"""`featmammo demo` end to end on a tiny configuration (the real DICOMs + a few phantoms)."""

from __future__ import annotations

import pandas as pd
from click.testing import CliRunner

from featmammo.cli.main import cli


def test_demo_runs_end_to_end_and_says_random_weights(tmp_path, monkeypatch):
    # no ImageNet files in an empty TORCH_HOME: the demo must say it runs with random weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "weights"))
    monkeypatch.setenv("FEATMAMMO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        cli,
        [
            "demo",
            "-o",
            str(out),
            "--n-synthetic",
            "24",
            "--image-size",
            "64",
            "--head",
            "logreg",
            "--cv",
            "2",
            "--n-boot",
            "20",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "RANDOM weights" in result.output
    assert "8 real CBIS-DDSM images" in result.output
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    real = manifest[manifest["source"] == "cbis-ddsm"]
    assert len(real) == 8
    # labels come from the official CSV rows: P_00820's left views are malignant, the rest benign
    malignant = set(real.loc[real["label"] == "malignant", "image_id"])
    assert malignant == {"P_00820_LEFT_CC", "P_00820_LEFT_MLO"}
    lb = pd.read_csv(out / "run" / "leaderboard.csv")
    assert set(lb["features"]) == {"resnet50", "alexnet", "hybrid"}
    assert set(lb["evaluation"]) == {"cv", "test"}
    assert (out / "run" / "report.md").exists()
    preds = pd.read_csv(out / "run" / "predictions.csv", dtype={"fold": str})
    # every real image is in the official test split, so it is predicted on the held-out test
    test_ids = set(preds.loc[preds["fold"] == "test", "image_id"])
    assert set(real["image_id"]) <= test_ids
