"""The command-line shell: help, version, logging flags, lazy imports."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from featmammo import __version__
from featmammo.cli.main import COMMANDS, cli


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    for name in COMMANDS:
        assert name in result.output


def test_every_command_has_help():
    runner = CliRunner()
    for name in COMMANDS:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage" in result.output


def test_import_featmammo_does_not_import_torch():
    code = (
        "import sys, featmammo, featmammo.cli.main;"
        "from featmammo.cli.main import cli;"
        "assert 'torch' not in sys.modules, 'torch imported';"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from featmammo.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_featmammo_error_becomes_clean_message(tmp_path):
    missing = tmp_path / "nope.h5"
    out = subprocess.run(
        [sys.executable, "-m", "featmammo.cli.main", "info", str(missing)],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "nope.h5" in out.stderr


def test_public_lazy_names_resolve_and_store_side_stays_torch_free():
    code = (
        "import sys, featmammo\n"
        "for name in ('open_store', 'read_manifest', 'read_image', 'PreprocessConfig', 'fuse',"
        " 'make_head'):\n"
        "    assert callable(getattr(featmammo, name)), name\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert callable(featmammo.make_backbone)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
