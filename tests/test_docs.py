"""The documentation is true: every quoted ``featmammo`` command and flag exists, every relative
link (and anchor) resolves, and the generated CLI reference is current.

The markdown is parsed (fenced code blocks, except Python ones, and inline code spans), each
``featmammo ...`` command is resolved through click (``featmammo.cli.main.cli``), and each
``--flag`` / ``-x`` is checked against the resolved command's own parameters. Failures name the
file, the line and what is missing, so a typo in any helper's page points at itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from featmammo.cli import docs as cli_docs
from featmammo.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
GENERATED = {ROOT / "docs" / "cli.md"}  # generated from click: checked against click instead


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# --- markdown parsing --------------------------------------------------------------------------

SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass
class Snippet:
    path: Path
    line: int  # 1-based line where the snippet starts
    text: str
    kind: str  # "code" (a fenced block's logical line) or "inline"


def snippets(path: Path, text: str | None = None) -> list[Snippet]:
    """Logical lines of fenced shell code blocks (backslash continuations joined; Python and text
    blocks skipped)
    and inline code spans of the prose (a span may cross a line break, as markdown allows)."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    out: list[Snippet] = []
    fence: str | None = None
    lang = ""
    pending: list[str] = []
    pending_start = 0
    paragraph: list[str] = []
    paragraph_start = 0

    def flush_paragraph():
        if paragraph:
            joined = "\n".join(paragraph)
            for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", joined):
                line = paragraph_start + joined.count("\n", 0, m.start())
                out.append(Snippet(path, line, m.group(1).replace("\n", " "), "inline"))
            paragraph.clear()

    for number, line in enumerate(lines, 1):
        m = _FENCE.match(line)
        if fence is None and m:
            flush_paragraph()
            fence, lang = m.group(1), m.group(2).lower()
            continue
        if fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
                fence = None
                continue
            if lang not in SHELL_LANGS:  # Python, text (layouts, output): not command lines
                continue
            if not pending:
                pending_start = number
            stripped = line.rstrip()
            if stripped.endswith("\\"):
                pending.append(stripped[:-1])
                continue
            pending.append(stripped)
            out.append(Snippet(path, pending_start, " ".join(pending), "code"))
            pending.clear()
            continue
        if not line.strip():
            flush_paragraph()
            continue
        if not paragraph:
            paragraph_start = number
        paragraph.append(line)
    flush_paragraph()
    return out


# --- commands ------------------------------------------------------------------------------------

# ``featmammo`` as a program name: not part of a dotted/qualified name, a path or an extra
_INVOCATION = re.compile(r"(?<![\w./\-\[\"'=:])featmammo[ \t]+(?=\S)")
_FLAG = re.compile(r"^--?[A-Za-z][\w-]*$")


def _placeholder(token: str) -> bool:
    """COMMAND, <set>, ..., [OPTIONS]: stand-ins, not names."""
    bare = token.strip("[](),")
    return (
        not bare
        or bare.startswith("<")
        or bare.startswith("...")
        or bare.startswith("…")
        or (bare.isupper() and bare.replace("_", "").isalpha())
    )


def _tokens(command_text: str) -> list[str]:
    # a comment or a shell operator ends the command
    text = re.split(r"(?:^|\s)#|&&|\|\||;|\s\|\s|\$\(|`", command_text)[0]
    return text.split()


def _flag_names(token: str) -> list[str]:
    """``[--weights`` -> ``--weights``; ``-v/-q`` -> both; ``--tune=grid`` -> ``--tune``."""
    token = token.strip("[](),.;:")
    names = []
    for part in token.split("/"):
        part = part.split("=", 1)[0].strip("[](),.;:")
        if part.startswith("-") and _FLAG.match(part):
            names.append(part)
    return names


def _known(flag: str, known: set[str]) -> bool:
    """``flag`` is an option, or short options written together (``-vv``, ``-vq``) as click
    accepts them."""
    if flag in known:
        return True
    return not flag.startswith("--") and len(flag) > 2 and all(f"-{c}" in known for c in flag[1:])


def _params(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for p in command.params:
        names.update(p.opts)
        names.update(p.secondary_opts)
    return names


def check_command(text: str) -> list[str]:
    """Problems of one ``featmammo ...`` invocation (text after the program name)."""
    problems: list[str] = []
    tokens = _tokens(text)
    chain: list[tuple[str, click.Command]] = [("featmammo", cli)]
    i = 0
    ctx = click.Context(cli, info_name="featmammo")
    # options before the command belong to the group
    while i < len(tokens) and tokens[i].startswith("-"):
        for flag in _flag_names(tokens[i]):
            if not _known(flag, _params(cli)):
                problems.append(f"`featmammo` has no option {flag}")
        i += 1
    current: click.Command = cli
    while isinstance(current, click.Group) and i < len(tokens):
        token = tokens[i]
        if token.startswith("-") or token.startswith("["):
            break
        if _placeholder(token):
            return problems  # "featmammo COMMAND --help", "featmammo manifest <set>": no names
        alternatives = token.split("|")
        found = [current.get_command(ctx, name) for name in alternatives]
        missing = [n for n, c in zip(alternatives, found, strict=True) if c is None]
        where = " ".join(name for name, _ in chain)
        if missing:
            known = ", ".join(current.list_commands(ctx))
            problems.append(f"`{where}` has no command {'|'.join(missing)} (known: {known})")
            return problems
        if len(found) > 1:  # "cache info|clear": check the flags against each
            for name, sub in zip(alternatives, found, strict=True):
                problems += _check_flags(tokens[i + 1 :], sub, f"{where} {name}")
            return problems
        current = found[0]
        chain.append((token, current))
        ctx = click.Context(current, info_name=token, parent=ctx)
        i += 1
    return problems + _check_flags(tokens[i:], current, " ".join(n for n, _ in chain))


def _check_flags(tokens: list[str], command: click.Command, where: str) -> list[str]:
    known = _params(command)
    problems = []
    for token in tokens:
        for flag in _flag_names(token):
            if not _known(flag, known):
                options = ", ".join(sorted(o for o in known if o.startswith("--")))
                problems.append(f"`{where}` has no option {flag} (its options: {options})")
    return problems


def _all_flags() -> set[str]:
    flags: set[str] = set()
    for _path, ctx in cli_docs.iter_commands(cli):
        flags |= _params(ctx.command)
    return flags


def _script_flags(page_text: str) -> set[str]:
    """Options of the ``benchmarks/`` and ``examples/`` scripts the page names (argparse
    scripts: any ``--name`` string in their source)."""
    flags: set[str] = set()
    for rel in set(re.findall(r"(?:benchmarks|examples)/[\w/.-]+\.py", page_text)):
        script = ROOT / rel
        if script.exists():
            flags |= set(re.findall(r"[\"'](--?[A-Za-z][\w-]*)[\"']", script.read_text()))
    return flags


def command_problems(path: Path, text: str | None = None) -> list[str]:
    """Problems of every ``featmammo ...`` invocation, and of every flag quoted alone in inline
    code (``--tune grid``): it must be an option of some featmammo command or of a script the page
    names."""
    text = path.read_text(encoding="utf-8") if text is None else text
    out = []
    lone_ok: set[str] | None = None
    for snippet in snippets(path, text):
        where = f"{path.relative_to(ROOT)}:{snippet.line}"
        for m in _INVOCATION.finditer(snippet.text):
            rest = snippet.text[m.end() :]
            for problem in check_command(rest):
                shown = ("featmammo " + rest).strip()
                if len(shown) > 90:
                    shown = shown[:87] + "..."
                out.append(f"{where}: {problem}\n    in: {shown}")
        if snippet.kind == "inline" and snippet.text.startswith("-"):
            if lone_ok is None:
                lone_ok = _all_flags() | _script_flags(text)
            for token in snippet.text.split():
                for flag in _flag_names(token):
                    if not _known(flag, lone_ok):
                        out.append(
                            f"{where}: no featmammo command (nor a script this page names) has "
                            f"the option {flag}\n    in: `{snippet.text}`"
                        )
    return out


# --- links ---------------------------------------------------------------------------------------


def github_anchor(heading: str) -> str:
    """GitHub's heading id: lower case, punctuation dropped (hyphens and underscores kept),
    spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    fence = None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _FENCE.match(line)
        if m and (fence is None or line.strip().startswith(fence)):
            fence = None if fence else m.group(1)
            continue
        if fence is None and (h := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)):
            base = github_anchor(h.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        for a in re.finditer(r"<a\s+(?:name|id)=\"([^\"]+)\"", line):
            found.add(a.group(1))
    return found


_LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def link_problems(path: Path, root: Path = ROOT) -> list[str]:
    out = []
    fence = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = _FENCE.match(line)
        if m and (fence is None or line.strip().startswith(fence)):
            fence = None if fence else m.group(1)
            continue
        if fence is not None:
            continue
        prose = re.sub(r"`[^`]*`", "", line)
        for link in _LINK.finditer(prose):
            target = link.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, mailto:, ...
                continue
            file_part, _, fragment = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)}:{number}"
            if not resolved.exists():
                out.append(f"{where}: link {target!r}: {resolved} does not exist")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                out.append(
                    f"{where}: link {target!r}: no heading with anchor #{fragment} in "
                    f"{resolved.relative_to(root)}"
                )
    return out


# --- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_commands_and_flags_exist(path):
    if path in GENERATED:
        pytest.skip("generated from click's help (test_cli_reference_is_current)")
    problems = command_problems(path)
    assert not problems, "documented featmammo commands/flags that do not exist:\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    problems = link_problems(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_docs_quote_commands_at_all():
    """The checker sees the README's path (a parser that finds nothing would pass everything)."""
    found = [s.text for s in snippets(ROOT / "README.md") if _INVOCATION.search(s.text) is not None]
    assert any("fit cache/stores/cbis.h5" in t and "--test-split" in t for t in found), found


def test_cli_reference_is_current():
    page = ROOT / "docs" / "cli.md"
    assert page.exists(), f"{page} is missing: generate it with `{cli_docs.REGENERATE}`"
    assert page.read_text(encoding="utf-8") == cli_docs.render(), (
        f"{page.relative_to(ROOT)} is out of date with the commands' --help: "
        f"regenerate with `{cli_docs.REGENERATE}` and commit it"
    )


def test_cli_reference_lists_every_command():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for path, _ctx in cli_docs.iter_commands(cli):
        assert f"\n## {' '.join(path)}\n" in text, path


# --- the checker itself catches what it is for ---------------------------------------------------


def test_checker_reports_missing_flag_with_file_and_line():
    page = ROOT / "docs" / "_probe.md"  # named under ROOT for relative_to; never written
    text = (
        "# t\n\nRun it:\n\n```bash\nfeatmammo fit a.h5 -o run \\\n    --no-such-flag 3\n```\n\n"
        "And `featmammo extract m.csv -o s.h5 --bogus`, or `featmammo frobnicate x`, `--tune-grd`\n"
        "Fine: `featmammo -v extract m.csv -o s.h5 [--weights imagenet|random|PATH]`,\n"
        "`featmammo manifest <set>`, `featmammo COMMAND --help`, `featmammo cache info|clear`,\n"
        "`featmammo.fit.fit`, `pip install featmammo[gpu]`, `featmammo -vv fit`, `-vq`.\n"
        "```python\nfeatmammo fit --not-checked-in-python\n```\n"
    )
    problems = command_problems(page, text)
    assert len(problems) == 4, problems
    assert problems[0].startswith("docs/_probe.md:6: `featmammo fit` has no option --no-such-flag")
    assert problems[1].startswith("docs/_probe.md:10: `featmammo extract` has no option --bogus")
    assert problems[2].startswith("docs/_probe.md:10: `featmammo` has no command frobnicate")
    assert problems[3].startswith("docs/_probe.md:10: no featmammo command (nor a script this")
    assert "--tune-grd" in problems[3]


def test_checker_reports_inline_span_across_lines():
    page = ROOT / "docs" / "_probe.md"
    text = "Para `featmammo fit STORE -o\nRUN --nope` end.\n"
    problems = command_problems(page, text)
    assert len(problems) == 1 and "docs/_probe.md:1:" in problems[0] and "--nope" in problems[0]


def test_link_checker_finds_broken_file_and_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Page A\n\n## The `store` & more\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md) [ok2](docs/a.md#the-store--more) [self](#top) `[no](code.md)`\n"
        "[gone](docs/b.md) [bad](docs/a.md#nope) [web](https://x.org/y)\n"
        "# Top\n"
    )
    problems = link_problems(page, root=tmp_path)
    assert len(problems) == 2, problems
    assert problems[0].startswith("README.md:2: link 'docs/b.md'")
    assert problems[1].startswith("README.md:2: link 'docs/a.md#nope': no heading with anchor")
