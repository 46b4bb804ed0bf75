"""The command-line shell: help, version, logging flags, lazy imports."""

from __future__ import annotations

import os
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


# --- quiet by default: progress and warnings; INFO with -v; errors only with -q ---


def _probe_command(monkeypatch):
    """A throwaway subcommand that logs at every level and prints a stage line."""
    import logging
    import types

    import click

    from featmammo.cli import main as cli_main
    from featmammo.cli.options import stage

    @click.command("probe")
    def command():
        log = logging.getLogger("featmammo.probe")
        stage("probe: stage line")
        log.debug("debug line")
        log.info("info line")
        log.warning("warning line")
        log.error("error line")
        click.echo("result line")

    module = types.ModuleType("featmammo.cli._probe")
    module.command = command
    monkeypatch.setitem(sys.modules, "featmammo.cli._probe", module)
    monkeypatch.setitem(cli_main.COMMANDS, "probe", "_probe")


def test_default_shows_stage_lines_and_warnings_but_no_info(monkeypatch):
    _probe_command(monkeypatch)
    out = CliRunner().invoke(cli, ["probe"]).output
    assert "probe: stage line" in out and "result line" in out
    assert "WARNING: warning line" in out and "ERROR: error line" in out
    assert "info line" not in out and "debug line" not in out


def test_verbose_adds_info_then_debug_with_logger_names(monkeypatch):
    _probe_command(monkeypatch)
    out = CliRunner().invoke(cli, ["-v", "probe"]).output
    assert "INFO featmammo.probe: info line" in out
    assert "WARNING featmammo.probe: warning line" in out
    assert "debug line" not in out
    assert "DEBUG featmammo.probe: debug line" in CliRunner().invoke(cli, ["-vv", "probe"]).output


def test_quiet_keeps_errors_and_results_only(monkeypatch):
    _probe_command(monkeypatch)
    out = CliRunner().invoke(cli, ["-q", "probe"]).output
    assert "result line" in out and "error line" in out
    assert "stage line" not in out and "warning line" not in out and "info line" not in out


def test_progress_bar_only_on_a_terminal_and_keeps_log_lines_apart(monkeypatch, capsys):
    import logging

    from featmammo.cli import options
    from featmammo.cli.main import configure_logging

    configure_logging(0, 0)
    with options.progress("work") as update:  # pytest's stderr is not a terminal
        assert update is None
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert options.bar_enabled()
    with options.progress("work", unit="images") as update:
        update(2, 4)
        logging.getLogger("featmammo.probe").warning("in the middle")
        update(2, 4)
        options.stage("next stage")
    err = capsys.readouterr().err
    # the warning and the stage line start on lines of their own, not after the bar's \r text
    lines = err.replace("\r", "\n").splitlines()
    assert "WARNING: in the middle" in lines
    assert "next stage" in lines
    assert "4/4" in err
    # a log file at INFO beside the terminal at WARNING (as the demo has): the file's records do
    # not break the bar's line
    logger = logging.getLogger("featmammo")
    for h in logger.handlers:
        h.setLevel(logging.WARNING)
    file_handler = logging.FileHandler(os.devnull)
    logger.addHandler(file_handler)
    logger.setLevel(logging.INFO)
    try:
        with options.progress("more") as update:
            update(1, 3)
            logging.getLogger("featmammo.probe").info("to the file only")
            update(1, 3)
    finally:
        logging.getLogger("featmammo").removeHandler(file_handler)
        file_handler.close()
    err = capsys.readouterr().err
    assert "\n" not in err.rstrip("\n").split("more", 1)[1], repr(err)  # one line, redrawn
    configure_logging(0, 1)  # -q: no bar even on a terminal
    assert not options.bar_enabled()
    with options.progress("work") as update:
        assert update is None
    configure_logging(0, 0)
