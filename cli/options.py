"""Options shared by several commands, defined once."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where models run (auto: CUDA when available).",
)
weights_option = click.option(
    "--weights",
    default="imagenet",
    show_default=True,
    help="imagenet | random | PATH to a state dict (.pth). 'random' must be asked for explicitly.",
)
output_option = click.option(
    "-o", "--output", "output", required=True, type=click.Path(), help="Output path."
)


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


class WorkersType(click.ParamType):
    """``auto`` or an integer >= 0."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        elif str(value).strip().lower() == "auto":
            return "auto"
        else:
            try:
                n = int(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is neither 'auto' nor an integer", param, ctx)
        if n < 0:
            self.fail(f"{value!r} is negative", param, ctx)
        return n


workers_option = click.option(
    "--workers",
    type=WorkersType(),
    default="auto",
    show_default=True,
    help="Processes that read and preprocess images. auto: one per spare core on a GPU; on a "
    "CPU 0 (the main process with a read-ahead thread: the least CPU time per image, measured) up "
    "to 4 cores, then one per 4 cores. See docs/speed.md.",
)
no_cache_option = click.option(
    "--no-cache",
    "no_cache",
    is_flag=True,
    help="Read and prepare every image afresh, bypassing the prepared-image cache "
    "(featmammo cache info|clear manages it).",
)
decoder_option = click.option(
    "--decoder",
    type=click.Choice(["cpu", "auto", "nvimagecodec"]),
    default="cpu",
    show_default=True,
    help="Decoder of JPEG 2000 DICOMs: cpu; nvimagecodec (GPU, pip install 'featmammo[gpu]'; "
    "refused before any work when it cannot run); auto (nvimagecodec when usable, else cpu). Same "
    "pixels either way: recorded in the store's provenance, not in the preprocessing fingerprint.",
)


# --- what a command shows: progress and stage lines (quiet by default, -v INFO, -q none) ---

_verbosity = 0  # -v count minus -q count, set by cli.main.configure_logging
_bars: list[ProgressBar] = []  # bars on screen: a stage line ends their line first


def set_verbosity(value: int) -> None:
    global _verbosity
    _verbosity = int(value)


def verbosity() -> int:
    """``-v`` count minus ``-q`` count of the running command (0 by default)."""
    return _verbosity


def stage(message: str) -> None:
    """One progress line on stderr (``extract: 1,200 images x 2 backbones``), the default way a
    command says what it is doing; silenced by ``-q``. stdout stays for results and ``--json``."""
    if _verbosity >= 0:
        for bar in _bars:
            bar.end_line()
        click.echo(message, err=True)


def bar_enabled() -> bool:
    """A progress bar is drawn only on a terminal and without ``-q`` (log files and CI stay
    clean)."""
    return _verbosity >= 0 and sys.stderr.isatty()


class ProgressBar(logging.Filter):
    """A click progress bar on stderr that keeps log lines on lines of their own.

    click draws the bar with a carriage return and no newline; a log record written while the bar is
    on screen would continue the bar's line. While active (a context manager), this filter sits on
    the ``featmammo`` logger's handlers and ends the bar's line before each record; the bar is
    redrawn below at the next update, and its line is ended once at the end.
    ``update(n, total)`` is the callback a long step calls (``extract(progress=...)``): n more
    items settled out of total (the bar is sized on first use, when the total is known).
    """

    def __init__(self, label: str, unit: str | None = None):
        super().__init__()
        item = (lambda rate: f"{rate:.2f} {unit}/s" if rate else None) if unit else None
        self.bar = click.progressbar(
            length=1, label=label, file=sys.stderr, show_pos=True, item_show_func=item
        )
        self.unit = unit
        self.open = False  # the bar's line is on screen without its newline
        self.started = False
        self.t0 = time.monotonic()
        self.n = 0
        self._handlers: list = []

    def filter(self, record) -> bool:
        self.end_line()
        return True

    def end_line(self) -> None:
        if self.open:
            self.bar.render_finish()  # click's line end (and the cursor shown again)
            self.open = False

    def update(self, n: int, total: int) -> None:
        if not self.started or total != self.bar.length:
            self.bar.length = max(1, total)
            self.started = True
        self.n += n
        rate = self.n / max(time.monotonic() - self.t0, 1e-9)
        self.bar.update(n, current_item=rate if self.unit else None)
        self.open = True

    def __enter__(self):
        # the handlers that write to the terminal (a log file or a collector has no bar to end)
        self._handlers = [
            h
            for h in logging.getLogger("featmammo").handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        ]
        for h in self._handlers:
            h.addFilter(self)
        _bars.append(self)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handlers:
            h.removeFilter(self)
        _bars.remove(self)
        self.end_line()


@contextlib.contextmanager
def progress(
    label: str, *, unit: str | None = None, show: bool | None = None
) -> Iterator[Callable[[int, int], None] | None]:
    """``with progress("extract", unit="images") as update: run(..., progress=update)``.

    Yields the ``update(n, total)`` callback of a :class:`ProgressBar` when a bar is shown
    (``show``, default :func:`bar_enabled`: a terminal and no ``-q``), else ``None``, which every
    long step takes as "no progress callback".
    """
    if not (bar_enabled() if show is None else show):
        yield None
        return
    with ProgressBar(label, unit) as bar:
        yield bar.update
