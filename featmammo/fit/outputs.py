"""The run folder of :func:`featmammo.fit.fit`: staging, installing over an earlier run, model
file names and the sidecar saved beside every model."""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from pathlib import Path

from ..atomic import fsync_dir
from ..errors import ConfigError

log = logging.getLogger("featmammo.fit")  # the logger name of the fit run, as before the split

MODELS = "models"


def model_filename(features: str, head: str) -> str:
    """``<features>__<head>.skops`` (:func:`featmammo.heads.save`'s format) with characters unsafe
    in file names replaced."""
    from ..heads.io import MODEL_SUFFIX

    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{features}__{head}")
    return f"{safe}{MODEL_SUFFIX}"


#: what a fit (or compare) writes into RUN_DIR, including files only some runs write (breast/exam
#: levels, CV repeats): replaced as a whole by the next run into the same folder. Anything else in
#: RUN_DIR is the user's and is kept; an output missing here would be kept too, stale, beside the
#: new run (tests/test_run_folder.py checks this list against the report's file names)
RUN_OUTPUTS = ("predictions.csv", "predictions_breast.csv", "predictions_exam.csv",
               "predictions_repeats.csv", "tuning.csv", "images.csv", "config.json",
               "leaderboard.csv", "comparisons.csv", "metrics.json", "report.md", "figures",
               MODELS)  # fmt: skip


# --- atomic run folders ---------------------------------------------------------------------------
#
# A run is written into a staging folder beside RUN_DIR, then swapped in whole:
#   1. `.<name>.partial-<pid>-<tag>/`  the run being written (a crash: garbage, RUN_DIR untouched)
#   2. files of RUN_DIR that are not run outputs (notes, ...) are hard-linked (or copied) into it
#   3. renamed `.<name>.ready-<pid>-<tag>/`  (complete: recovery may install it)
#   4. exchanged with RUN_DIR in one renameat2(RENAME_EXCHANGE) call, so RUN_DIR is at every
#      moment the old run or the new one; the old run, now under the ready name, is renamed
#      `.<name>.old-<pid>-<tag>/` and deleted. Where the exchange is not available: RUN_DIR is
#      renamed `.old-...`, then the ready folder renamed RUN_DIR; a crash between the two leaves no
#      RUN_DIR, and :func:`recover_run_dir` (run by the next fit, or by hand) installs the ready run
#      (or puts the old one back).
# Every change to the file system goes through `_fs`, so tests can stop the process at each step.

_PARTIAL, _READY, _OLD = "partial", "ready", "old"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, f"cannot exchange {a} and {b}: {os.strerror(err)}")


class _fs:  # noqa: N801  (a namespace: the file-system changes an install makes, one call each)
    rename = staticmethod(os.rename)
    exchange = staticmethod(_exchange)
    link = staticmethod(os.link)
    copy = staticmethod(shutil.copy2)
    mkdir = staticmethod(os.mkdir)
    symlink = staticmethod(os.symlink)
    rmtree = staticmethod(shutil.rmtree)


def _target(final_dir) -> Path:
    """RUN_DIR as an absolute path, through a symlink to the folder it names (the folder is what
    gets replaced, the link stays)."""
    final = Path(final_dir).absolute()
    if final.is_symlink():
        final = final.resolve()
    return final


def _sibling(final: Path, kind: str, tag: str | None = None) -> Path:
    tag = tag or f"{os.getpid()}-{secrets.token_hex(4)}"
    return final.parent / f".{final.name}.{kind}-{tag}"


def _siblings(final: Path, kind: str) -> list[Path]:
    prefix = f".{final.name}.{kind}-"
    if not final.parent.is_dir():
        return []
    return sorted(p for p in final.parent.iterdir() if p.name.startswith(prefix) and p.is_dir())


def _pid_of(path: Path) -> int | None:
    try:
        return int(path.name.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_run_dir(final_dir) -> Path | None:
    """Finish or undo an install that a crash interrupted; return the folder put in place, if any.

    RUN_DIR missing but a complete (``ready``) run beside it: that run is installed; else an
    ``old`` run beside it is put back (only folders of processes that no longer run: a fit still
    installing is left alone). Leftovers of processes that no longer run (partial, ready and old
    folders) are deleted. Safe to call at any time; :func:`_staging_dir` calls it.
    """
    final = _target(final_dir)
    placed = None
    if not final.exists():
        ready = [p for p in _siblings(final, _READY) if not _alive(_pid_of(p))]
        old = [p for p in _siblings(final, _OLD) if not _alive(_pid_of(p))]
        newest = sorted(ready, key=lambda p: p.stat().st_mtime) or sorted(
            old, key=lambda p: p.stat().st_mtime
        )
        source = newest[-1] if newest else None
        if source is not None:
            _fs.rename(source, final)
            fsync_dir(final.parent)
            placed = final
            log.warning(
                "%s: an earlier fit was interrupted while installing its run; %s", final,
                "its complete new run is now installed" if source in ready
                else "the run before it is back in place",
            )  # fmt: skip
    # a partial run is never whole: gone once its process is; ready/old ones only with RUN_DIR back
    for kind in (_PARTIAL, _READY, _OLD) if final.exists() else (_PARTIAL,):
        for leftover in _siblings(final, kind):
            if not _alive(_pid_of(leftover)):
                _fs.rmtree(leftover, ignore_errors=True)
                log.info("%s: removed %s left by an interrupted fit", final, leftover.name)
    return placed


def _staging_dir(final_dir: Path) -> Path:
    """A fresh sibling folder of RUN_DIR to write the run into (same file system: atomic renames);
    an install an earlier crash interrupted is finished or undone first."""
    final = _target(final_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not final.is_dir():
        raise ConfigError(f"-o {final_dir}: exists and is not a folder")
    recover_run_dir(final)
    staging = _sibling(final, _PARTIAL)
    staging.mkdir()
    return staging


def _carry(src: Path, dst: Path) -> None:
    """Put ``src`` (a file, link or folder tree of RUN_DIR that is not a run output) at ``dst``
    in the new run: hard links where possible (no data copied), else copies."""
    if src.is_symlink():
        _fs.symlink(os.readlink(src), dst)
    elif src.is_dir():
        _fs.mkdir(dst)
        for child in sorted(src.iterdir()):
            _carry(child, dst / child.name)
    else:
        try:
            _fs.link(src, dst)
        except OSError:
            _fs.copy(src, dst)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def _install_run(staging: Path, final_dir: Path) -> None:
    """Swap the finished run in ``staging`` in as RUN_DIR, atomically: at any moment RUN_DIR holds
    the earlier run or this one, whole (see the comment above). Files of RUN_DIR that are not run
    outputs (:data:`RUN_OUTPUTS`) are kept."""
    final = _target(final_dir)
    if final.exists():
        old_outputs = [n for n in RUN_OUTPUTS if (final / n).exists()]
        if old_outputs:
            log.warning("%s: replacing the outputs of an earlier fit (%s)", final,
                        ", ".join(old_outputs))  # fmt: skip
        for item in sorted(final.iterdir()):
            if item.name not in RUN_OUTPUTS and not (staging / item.name).exists():
                _carry(item, staging / item.name)
    tag = staging.name.rsplit(f".{_PARTIAL}-", 1)[-1]
    ready = _sibling(final, _READY, tag)
    _fs.rename(staging, ready)
    if not final.exists():
        _fs.rename(ready, final)
        fsync_dir(final.parent)
        return
    old = _sibling(final, _OLD, tag)
    if _inside(Path.cwd().absolute(), final):
        _install_in_place(ready, final, old)
        return
    if _fs.exchange(ready, final):
        _fs.rename(ready, old)  # the exchange put the earlier run under the ready name
    else:
        _fs.rename(final, old)  # no exchange here: a crash now leaves no RUN_DIR until recovery
        _fs.rename(ready, final)
    fsync_dir(final.parent)
    _fs.rmtree(old, ignore_errors=True)


def _install_in_place(ready: Path, final: Path, old: Path) -> None:
    """RUN_DIR is the working directory (or holds it): it cannot be swapped without pulling the
    folder from under the process, so its run outputs are replaced one rename at a time (not
    atomic as a whole; said in the log)."""
    log.warning(
        "%s: the run folder is (or contains) the working directory, so it is updated in place, "
        "one output at a time, instead of swapped whole", final,
    )  # fmt: skip
    _fs.mkdir(old)
    for name in RUN_OUTPUTS:
        if (final / name).exists():
            _fs.rename(final / name, old / name)
    for item in sorted(ready.iterdir()):
        if item.name in RUN_OUTPUTS:
            _fs.rename(item, final / item.name)
    _fs.rmtree(ready, ignore_errors=True)
    _fs.rmtree(old, ignore_errors=True)


def _sidecar(
    features, head, fused, classes, stores_info, seed, head_params, block_scaling, counts,
    *, tuned=None, tune="none",
):  # fmt: skip
    provenance = {k: v for k, v in fused.provenance.items() if k != "_stores"}
    return {
        "kind": "featmammo.fit",
        "head": head,
        "head_params": {**head_params.get(head, {}), **(tuned or {})},
        "tuned_params": dict(tuned or {}),
        "tune": tune,
        "features": features,
        "backbones": list(fused.blocks),
        "blocks": {k: [s.start, s.stop] for k, s in fused.blocks.items()},
        "n_features": int(fused.X.shape[1]),
        "classes": list(classes),
        "backbone_provenance": provenance,
        "stores": stores_info,
        "block_stores": fused.provenance.get("_stores", {}),
        "seed": seed,
        "block_scaling": block_scaling,
        "train_class_counts": {str(k): int(v) for k, v in counts.items()},
    }
