"""Write ``docs/cli.md``, the CLI reference, from click's own help.

Run ``python -m featmammo.cli.docs`` after changing a command or an option;
``python -m featmammo.cli.docs --check`` exits 1 when the committed page is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

WIDTH = 100
DEFAULT_PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
REGENERATE = "python -m featmammo.cli.docs"

_HEADER = """\
# CLI reference

Every `featmammo` command and option, as `featmammo COMMAND --help` prints it.
This page is generated: do not edit it by hand; after changing a command run
`{regenerate}` (a test fails while it is stale).
Options given before the command (`-v`, `-q`) apply to every command: `featmammo -v extract ...`.

"""


def iter_commands(command: click.Command, path=("featmammo",), parent=None):
    """(path, context) for the command and every subcommand, depth first, in name order.

    Each context has the real parent chain (help option names, fixed width), as the command line
    builds it, so ``command.get_help(ctx)`` prints what ``featmammo ... --help`` prints.
    """
    settings = dict(command.context_settings)
    settings.setdefault("terminal_width", WIDTH)
    settings.setdefault("max_content_width", WIDTH)
    ctx = click.Context(command, info_name=path[-1], parent=parent, **settings)
    yield path, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False):
                yield from iter_commands(sub, (*path, name), ctx)


def anchor(path: tuple[str, ...]) -> str:
    """The GitHub-style anchor of a command's heading (``featmammo manifest cbis-ddsm``)."""
    return "-".join(path)


def render() -> str:
    from featmammo.cli.main import cli

    commands = list(iter_commands(cli))
    parts = [_HEADER.format(regenerate=REGENERATE)]
    for path, _ in commands[1:]:
        indent = "  " * (len(path) - 2)
        parts.append(f"{indent}- [`{' '.join(path)}`](#{anchor(path)})\n")
    for path, ctx in commands:
        parts.append(f"\n## {' '.join(path)}\n\n```text\n{ctx.command.get_help(ctx)}\n```\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    check = "--check" in args
    rest = [a for a in args if a != "--check"]
    page = Path(rest[0]) if rest else DEFAULT_PAGE
    text = render()
    if check:
        current = page.read_text(encoding="utf-8") if page.exists() else ""
        if current != text:
            sys.stderr.write(f"{page} is out of date: regenerate with `{REGENERATE}`\n")
            return 1
        return 0
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text, encoding="utf-8")
    sys.stdout.write(f"wrote {page}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
