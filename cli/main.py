"""The ``featmammo`` click group. Subcommands are loaded lazily from one module each."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from featmammo._version import __version__

from .options import set_verbosity

# command name -> module in featmammo.cli exposing a click ``command`` object
COMMANDS = {
    "manifest": "manifest",
    "audit": "audit",
    "synth": "synth",
    "extract": "extract",
    "info": "info",
    "weights": "weights",
    "fit": "fit",
    "predict": "predict",
    "report": "report",
    "demo": "demo",
    "train": "train",
    "explain": "explain",
    "cache": "cache",
    "store": "store",
    "compare": "compare",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        module = COMMANDS.get(name)
        if module is None:
            return None
        mod = importlib.import_module(f"featmammo.cli.{module}")
        return mod.command


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (CliRunner and pytest swap it)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def configure_logging(verbose: int, quiet: int) -> None:
    """One stderr handler on the ``featmammo`` logger.

    Quiet by default: warnings and errors only (what a user must read); ``-v`` adds INFO lines
    (what each stage did), ``-vv`` DEBUG; ``-q`` keeps errors only and silences the progress lines
    of ``cli.options`` too. With ``-v`` each line names its logger.
    """
    set_verbosity(verbose - quiet)
    level = max(logging.DEBUG, min(logging.CRITICAL, logging.WARNING + 10 * (quiet - verbose)))
    root = logging.getLogger("featmammo")
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StderrHandler)]
    handler = _StderrHandler()
    fmt = "%(levelname)s %(name)s: %(message)s" if verbose > 0 else "%(levelname)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="featmammo")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Show INFO log lines (what each stage did); -vv adds DEBUG. Default: progress, warnings.",
)
@click.option("-q", "--quiet", count=True, help="Errors only: no progress lines or warnings.")
def cli(verbose: int, quiet: int) -> None:
    """featmammo: deep features from mammograms and honest classifier comparisons.

    Typical path: manifest -> extract -> fit (-> predict), or `featmammo demo`.
    """
    configure_logging(verbose, quiet)


def main(argv=None) -> None:
    from featmammo.errors import FeatmammoError

    try:
        rv = cli.main(args=argv, prog_name="featmammo", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except FeatmammoError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    if isinstance(rv, int) and rv:  # ctx.exit(n) returns n in non-standalone mode
        sys.exit(rv)


if __name__ == "__main__":
    main()
