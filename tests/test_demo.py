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
    # one screen: what ran, the caveats, the leaderboard, where the report is; no INFO lines
    lines = result.output.splitlines()
    assert len(lines) <= 40, result.output
    assert not any(line.startswith("INFO") for line in lines), result.output
    assert "fitting" not in result.output  # per-fold lines are INFO: in demo.log, not on screen
    for stage in ("demo set:", "extract:", "fit:", "Caveats", "Leaderboard", "Report:"):
        assert stage in result.output, stage
    assert "labels confounded with sources" in result.output  # a warning, shown as a caveat
    assert str(out / "run" / "report.md") in result.output
    log = (out / "demo.log").read_text()
    assert any("INFO featmammo.fit:" in line and "fitting" in line for line in log.splitlines())
    assert "WARNING" in log
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


def test_summary_table_ranks_by_cv_and_puts_evaluations_side_by_side():
    from featmammo.demo import summary_table

    lb = pd.DataFrame(
        {
            "features": ["a", "b", "a", "b", "a"],
            "head": ["logreg"] * 5,
            "evaluation": ["test", "test", "cv", "cv", "validation"],
            "balanced_accuracy": [0.9, 0.5, 0.4, 0.6, 1.0],
            "roc_auc_ovr": [0.95, 0.55, 0.45, 0.65, 1.0],
            "n_images": [10, 10, 40, 40, 5],
            "n_patients": [5, 5, 20, 20, 2],
        }
    )
    table, notes = summary_table(lb, ["benign", "malignant"])
    assert list(table["features"]) == ["b", "a"]  # CV decides, not the test
    assert list(table.columns) == [
        "features", "head", "cv bal.acc", "cv roc-auc", "test bal.acc", "test roc-auc"
    ]  # fmt: skip
    assert table.loc[1, "test bal.acc"] == 0.9
    assert notes == [
        "cv: 40 images, 20 patients", "test: 10 images, 5 patients",
        "chance: bal.acc 0.500, roc-auc 0.500",
    ]  # fmt: skip


def test_caveats_keep_distinct_warnings_of_one_format_apart(tmp_path, monkeypatch, capsys):
    """The report logs every warning as "%s: %s": grouped by format string, the demo showed the
    small-samples caveat with "(and 1 more like it)" cut off by its [...] and never the
    constant-predictions one."""
    import logging
    import os

    from featmammo.cli import demo

    monkeypatch.setattr(
        demo.shutil, "get_terminal_size", lambda fallback: os.terminal_size((100, 40))
    )

    def record(name, msg, *args):
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)

    caveats = demo._Caveats()
    long = "have fewer than 10 patients in some class, so no confidence interval is given " * 3
    caveats.records = [
        record("featmammo.report", "%s: %s", tmp_path / "run", f"small samples: 27 of 54 {long}"),
        record("featmammo.report", "%s: %s", tmp_path / "run", "constant predictions: 1 result"),
        *(record("featmammo.fit", "%s / %s, fold %d: " + long, "a", "logreg", k) for k in (1, 2)),
    ]
    demo._show_caveats(caveats, "imagenet", tmp_path / "demo.log")
    out = capsys.readouterr().out
    assert "run: small samples: 27 of 54" in out and "run: constant predictions: 1" in out
    assert out.count("fold") == 1 and "(and 1 more like it)" in out  # folds 1, 2: one caveat
    assert all(len(line) <= 100 for line in out.splitlines() if line.startswith(" "))


def test_caveats_on_a_narrow_terminal_do_not_crash(tmp_path, monkeypatch, capsys):
    """textwrap refuses a placeholder wider than its width: ' [...] (and 1 more like it)' on a
    24-column terminal raised ValueError at the demo's last step."""
    import logging
    import os

    from featmammo.cli import demo

    monkeypatch.setattr(
        demo.shutil, "get_terminal_size", lambda fallback: os.terminal_size((24, 40))
    )
    caveats = demo._Caveats()
    caveats.records = [
        logging.LogRecord("featmammo.fit", logging.WARNING, __file__, 1,
                          "fold %d: a caveat long enough to be cut " * 4, (k,) * 4, None)
        for k in (1, 2)
    ]  # fmt: skip
    demo._show_caveats(caveats, "imagenet", tmp_path / "demo.log")
    assert "(and 1 more like it)" in capsys.readouterr().out
