"""``featmammo cache info | clear``: the prepared-image cache (:mod:`featmammo.prepared`)."""

from __future__ import annotations

import click

from .options import echo_json, json_option

root_option = click.option(
    "--root",
    type=click.Path(file_okay=False),
    default=None,
    help="Cache folder (default: $FEATMAMMO_CACHE/prepared, else cache/prepared).",
)


def _cache(root):
    from featmammo.prepared import PreparedCache

    default = PreparedCache.default()
    if root is None:
        return default
    return PreparedCache(root, max_bytes=default.max_bytes)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


@click.group("cache", context_settings={"help_option_names": ["-h", "--help"]})
def command() -> None:
    """Inspect or empty the prepared-image cache.

    extract, train and predict keep each image's decoded, cropped, side-flipped and resized
    pixels there (keyed by the file and the preprocessing), so a second run with the same
    preprocessing skips decoding. --no-cache on those commands bypasses it; the size bound is
    FEATMAMMO_PREPARED_MAX_BYTES (default 10G), least recently used entries go first.
    """


@command.command("info")
@root_option
@json_option
def info_cmd(root, as_json: bool) -> None:
    """Where the cache is, its size and bound, and its entries per preprocessing."""
    info = _cache(root).info()
    if as_json:
        echo_json(info)
        return
    click.echo(f"folder: {info['root']}")
    click.echo(
        f"{info['entries']} entries, {_size(info['bytes'])} of {_size(info['max_bytes'])}"
        + (f"; {info['temp_files']} unfinished temp files" if info["temp_files"] else "")
    )
    if info["entries"]:
        click.echo(f"last used: {info['least_recent_use']} .. {info['most_recent_use']}")
    for row in info["configs"]:
        pre = row["preprocess"] or {}
        what = ", ".join(f"{k}={v}" for k, v in sorted(pre.items())) or "(config.json missing)"
        click.echo(
            f"  {row['fingerprint']}: {row['entries']} entries, {_size(row['bytes'])}: {what}"
        )


@command.command("clear")
@root_option
@json_option
def clear_cmd(root, as_json: bool) -> None:
    """Delete every entry (the cache refills on the next run)."""
    cache = _cache(root)
    removed = cache.clear()
    if as_json:
        echo_json({"root": str(cache.root), "removed": removed})
    else:
        click.echo(f"{cache.root}: removed {removed} entries")
