"""Atomic run folders: a fit's run is staged beside RUN_DIR and swapped in whole, so a crash at
any moment leaves the earlier run or the new one, never half of each."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from featmammo.fit import outputs


def _write_run(folder: Path, tag: str) -> None:
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "figures").mkdir(exist_ok=True)
    for name in ("predictions.csv", "leaderboard.csv", "config.json", "report.md"):
        (folder / name).write_text(f"{tag} {name}\n")
    (folder / "models" / "hybrid__logreg.skops").write_text(f"{tag} model\n")
    (folder / "models" / "hybrid__logreg.json").write_text(f"{tag} sidecar\n")
    (folder / "figures" / "roc.png").write_text(f"{tag} figure\n")
    if tag == "old":  # outputs the new run does not write: they must go with the old run
        for name in ("tuning.csv", "predictions_breast.csv", "predictions_exam.csv",
                     "predictions_repeats.csv", "comparisons.csv"):  # fmt: skip
            (folder / name).write_text(f"old {name}\n")
        (folder / "models" / "alexnet__knn.skops").write_text("old model\n")


def _snapshot(folder: Path) -> dict[str, str] | None:
    if not folder.is_dir():
        return None
    return {
        str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _leftovers(final: Path) -> list[str]:
    return sorted(p.name for p in final.parent.iterdir() if p.name.startswith(f".{final.name}."))


@pytest.fixture
def runs(tmp_path):
    """RUN_DIR holding an earlier run plus a user's file, and the snapshots expected after."""
    final = tmp_path / "runs" / "cbis"
    _write_run(final, "old")
    (final / "my_notes.txt").write_text("mine\n")
    (final / "extra").mkdir()
    (final / "extra" / "plot.svg").write_text("mine too\n")
    old = _snapshot(final)
    expected_new = tmp_path / "expected"
    _write_run(expected_new, "new")
    (expected_new / "my_notes.txt").write_text("mine\n")
    (expected_new / "extra").mkdir()
    (expected_new / "extra" / "plot.svg").write_text("mine too\n")
    return final, old, _snapshot(expected_new)


def test_install_swaps_the_run_in_whole_and_keeps_the_users_files(runs):
    final, old, new = runs
    staging = outputs._staging_dir(final)
    assert staging.parent == final.parent and staging.name.startswith(".cbis.partial-")
    _write_run(staging, "new")
    assert _snapshot(final) == old  # untouched while the new run is written
    outputs._install_run(staging, final)
    assert _snapshot(final) == new
    assert _leftovers(final) == []


def test_install_into_a_new_folder(tmp_path):
    final = tmp_path / "a" / "run"
    staging = outputs._staging_dir(final)
    _write_run(staging, "new")
    outputs._install_run(staging, final)
    assert _snapshot(final)["report.md"] == "new report.md\n"
    assert _leftovers(final) == []


def _install_in_child(final: Path, mode: str, crash_at: int) -> int:
    """Fork; the child stages a new run, then installs it with its ``crash_at``-th file-system
    change replaced by SIGKILL. Returns the number of changes the child made before it died (or
    -1 when it finished)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            staging = outputs._staging_dir(final)
            _write_run(staging, "new")
            count = [0]

            def step(fn):
                def wrapped(*args, **kwargs):
                    if count[0] == crash_at:
                        os.write(write, str(count[0]).encode())
                        os.kill(os.getpid(), signal.SIGKILL)
                    count[0] += 1
                    return fn(*args, **kwargs)

                return wrapped

            for name in ("rename", "link", "copy", "mkdir", "symlink", "rmtree"):
                setattr(outputs._fs, name, staticmethod(step(getattr(outputs._fs, name))))
            exchange = outputs._fs.exchange if mode == "exchange" else (lambda a, b: False)
            outputs._fs.exchange = staticmethod(step(exchange))
            outputs._install_run(staging, final)
            os.write(write, b"-1")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)  # reaped: its pid no longer counts as a live process
    message = os.read(read, 64).decode()
    os.close(read)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert killed == (message != "-1"), (status, message)
    return int(message)


@pytest.mark.parametrize("mode", ["exchange", "fallback"])
def test_a_kill_at_any_step_leaves_the_old_run_or_the_new_one_whole(runs, mode):
    final, old, new = runs
    outcomes = []
    for crash_at in range(100):
        # start each round from the earlier run, as the user left it
        outputs._fs.rmtree(final)
        final.mkdir()
        for rel, text in old.items():
            (final / rel).parent.mkdir(parents=True, exist_ok=True)
            (final / rel).write_text(text)
        died_at = _install_in_child(final, mode, crash_at)
        now = _snapshot(final)
        if mode == "exchange":  # RUN_DIR is whole at every moment, before any recovery
            assert now in (old, new), (crash_at, now)
        outputs.recover_run_dir(final)  # what the next fit does first
        after = _snapshot(final)
        assert after in (old, new), (mode, crash_at, after)
        assert _leftovers(final) == [], (crash_at, _leftovers(final))
        if mode == "exchange":
            assert after == now  # recovery only tidies up
        outcomes.append("new" if after == new else "old")
        if died_at == -1:
            break
    else:
        pytest.fail("the install never finished within 100 file-system changes")
    assert outcomes[-1] == "new" and outcomes[0] == "old", outcomes
    assert len(outcomes) > 5  # carrying the user's files, the renames, the deletion: each a step


def test_recovery_installs_a_complete_run_left_without_run_dir(runs):
    final, old, new = runs
    staging = outputs._staging_dir(final)
    _write_run(staging, "new")
    real = outputs._fs.exchange
    outputs._fs.exchange = staticmethod(lambda a, b: False)
    try:
        calls = []
        rename = outputs._fs.rename

        def rename_then_stop(a, b):
            calls.append((a, b))
            rename(a, b)
            if len(calls) == 2:  # ready named, RUN_DIR moved aside: no RUN_DIR now
                raise KeyboardInterrupt

        outputs._fs.rename = staticmethod(rename_then_stop)
        with pytest.raises(KeyboardInterrupt):
            outputs._install_run(staging, final)
    finally:
        outputs._fs.exchange = staticmethod(real)
        outputs._fs.rename = staticmethod(rename)
    assert not final.exists()
    # this process is alive: its folders are left alone (a fit still installing)
    assert outputs.recover_run_dir(final) is None and not final.exists()
    for p in final.parent.iterdir():  # as if the process had died: a pid that is not running
        p.rename(p.with_name(p.name.replace(f"-{os.getpid()}-", "-999999999-")))
    assert outputs.recover_run_dir(final) == final
    assert _snapshot(final) == new and _leftovers(final) == []


def test_a_symlinked_run_dir_keeps_its_link(tmp_path, runs):
    final, old, new = runs
    link = tmp_path / "latest"
    link.symlink_to(final)
    staging = outputs._staging_dir(link)
    _write_run(staging, "new")
    outputs._install_run(staging, link)
    assert link.is_symlink() and _snapshot(link) == new


def test_run_dir_holding_the_working_directory_is_updated_in_place(runs, monkeypatch):
    final, old, new = runs
    monkeypatch.chdir(final / "extra")
    staging = outputs._staging_dir(final)
    _write_run(staging, "new")
    outputs._install_run(staging, final)
    assert _snapshot(final) == new and Path.cwd() == final / "extra"
    assert _leftovers(final) == []


def test_a_partial_run_of_a_dead_process_is_removed_even_before_run_dir_exists(tmp_path):
    final = tmp_path / "run"
    dead = tmp_path / ".run.partial-999999999-deadbeef"
    dead.mkdir()
    (dead / "predictions.csv").write_text("half")
    staging = outputs._staging_dir(final)  # RUN_DIR does not exist yet
    assert not dead.exists() and staging.exists()
    _write_run(staging, "new")
    outputs._install_run(staging, final)
    assert _leftovers(final) == []


def test_every_file_a_run_writes_is_a_run_output():
    """A file the report writes but RUN_OUTPUTS lacks was kept from the earlier run as if it were
    the user's: a fit at --level image into a folder of a fit at three levels kept the old
    predictions_exam.csv beside the new run."""
    from featmammo.evaluate.levels import LEVEL_FILES
    from featmammo.report import files
    from featmammo.report.inputs import REPEATS

    written = {*LEVEL_FILES.values(), REPEATS, files.PREDICTIONS, files.CONFIG, files.LEADERBOARD,
               files.METRICS, files.REPORT, files.TUNING, files.COMPARISONS, files.IMAGES,
               files.FIGURES, outputs.MODELS}  # fmt: skip
    assert written <= set(outputs.RUN_OUTPUTS), written - set(outputs.RUN_OUTPUTS)
