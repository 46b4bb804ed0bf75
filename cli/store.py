"""``featmammo store ...``: maintenance of an embedding store (pack, compact)."""

from __future__ import annotations

import click


@click.group("store")
def command() -> None:
    """Maintain an embedding store: one self-contained file for sharing, fewer segment files.

    A store is one .h5 path (open it with featmammo.store.open or plain h5py) that reads its rows
    from segment files in the STORE.h5.segments folder beside it; keep the two together.
    """


@command.command("pack")
@click.argument("store_path", metavar="STORE", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o", "--output", "output", type=click.Path(dir_okay=False),
    help="Write the self-contained file here (a new store). Default: replace STORE in place.",
)  # fmt: skip
def pack_command(store_path: str, output: str | None) -> None:
    """Write STORE as one self-contained HDF5 file (no segment files), e.g. to share it.

    Every dataset of the packed file is real, so it can be copied alone and read anywhere. With
    -o the original store is left as it is; in place, its segment files are deleted once no
    reader has the old version open.
    """
    from featmammo.store import pack, store_bytes

    out = pack(store_path, output)
    click.echo(f"packed {store_path} -> {out} ({store_bytes(out) / 1e6:.1f} MB, one file)")


@command.command("compact")
@click.argument("store_path", metavar="STORE", type=click.Path(exists=True, dir_okay=False))
def compact_command(store_path: str) -> None:
    """Rewrite STORE's rows into one segment file (never needed for correctness).

    Extractions compact small segments on their own; this rewrites every live row once, dropping
    rows that later runs replaced. Old segment files are deleted once no reader has the old
    version open.
    """
    from featmammo.store import compact, open, store_bytes

    n = compact(store_path, everything=True)
    with open(store_path) as st:
        segments = st.n_segments
    click.echo(
        f"compacted {store_path}: {n} segment file(s) rewritten into {segments}; "
        f"{store_bytes(store_path) / 1e6:.1f} MB"
    )
