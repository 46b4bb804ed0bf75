"""``featmammo weights list | verify | import | fetch``: torchvision's ImageNet weight files (and
the pretrained files of ``timm:NAME`` backbones).

Files live in torch's hub folder (``$TORCH_HOME/hub/checkpoints``, TORCH_HOME defaulting to
``~/.cache/torch``), where torchvision keeps them; timm's in the Hugging Face hub cache. Only
``fetch`` downloads, and only when asked. The work is done by :mod:`featmammo.backbones.manage`.
"""

from __future__ import annotations

import click

from .options import bar_enabled, echo_json, json_option


@click.group("weights")
def command() -> None:
    """List, verify, fetch and import the ImageNet weight files the backbones use.

    Files live where torchvision keeps them: TORCH_HOME/hub/checkpoints (TORCH_HOME defaults to
    ~/.cache/torch). `featmammo weights fetch resnet50 alexnet` downloads them (sha256 checked);
    on an offline machine copy a downloaded file in with `featmammo weights import FILE`.
    timm:NAME backbones read timm's pretrained files from the Hugging Face hub cache
    (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub): `featmammo weights fetch
    timm:convnext_tiny` downloads one there.
    """


@command.command("list")
@click.option(
    "--all", "all_models", is_flag=True, help="Every torchvision classifier, not just the three."
)
@click.option("--no-hash", is_flag=True, help="Skip hashing present files (faster).")
@json_option
def list_cmd(all_models: bool, no_hash: bool, as_json: bool) -> None:
    """Known backbones, the file each expects, and whether it is present and intact."""
    from featmammo.backbones.manage import list_weights

    rows = list_weights(all_models=all_models, check_hash=not no_hash)
    if as_json:
        echo_json(rows)
        return
    if rows:
        click.echo(f"folder: {rows[0]['folder']}")
    for r in rows:
        if not r["present"]:
            state = "absent"
        elif r["sha256_ok"] is None:
            state = "present"
        else:
            state = "present, sha256 ok" if r["sha256_ok"] else "present, SHA256 MISMATCH"
        click.echo(f"{r['name']:<20} {r['file']:<44} {state:<24} {r['weights']}")


@command.command("verify")
@click.argument("target", required=False, metavar="[NAME|FILE]")
@click.option("--name", default=None, help="For a FILE: also check its keys fit this backbone.")
@click.option("--sha256", default=None, help="Expected sha256 (or a prefix of >= 8 hex) of FILE.")
@json_option
@click.pass_context
def verify_cmd(ctx, target: str | None, name: str | None, sha256: str | None, as_json) -> None:
    """Recompute sha256 and compare it with the expected hash (exit 1 on mismatch or missing file).

    NAME checks that backbone's ImageNet file in the checkpoints folder (timm:NAME: its pretrained
    file in the Hugging Face cache, against the SHA-256 the cache names it by); FILE checks a file
    against its .sha256 sidecar, --sha256, or the hash in its torchvision file name; no argument
    checks every file present in the checkpoints folder.
    """
    from featmammo.backbones.manage import verify

    rows = verify(target, name=name, sha256=sha256)
    if as_json:
        echo_json(rows)
    else:
        if not rows:
            click.echo("no weight files present")
        for r in rows:
            line = f"{r['status'].upper():<11} {r['file']}"
            if r.get("sha256"):
                line += f"  sha256 {r['sha256']}"
            click.echo(line)
            if r.get("reason"):
                click.echo(f"            {r['reason']}")
    if any(not r["ok"] for r in rows):
        ctx.exit(1)


@command.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", default=None, help="Backbone the file is for (e.g. resnet50).")
@json_option
def import_cmd(file: str, name: str | None, as_json: bool) -> None:
    """Copy a downloaded torchvision .pth into the checkpoints folder after verifying it.

    The sha256 must match the hash torchvision embeds in the file name (found from FILE's own
    name, from --name, or by matching every torchvision file) and the keys must fit the
    architecture; anything else is refused and nothing is copied.
    """
    from featmammo.backbones.manage import import_file
    from featmammo.errors import WeightsError

    try:
        row = import_file(file, name=name)
    except WeightsError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        echo_json(row)
    else:
        click.echo(f"{row['status']}: {row['dest']} ({row['weights']}, sha256 {row['sha256']})")


@command.command("fetch")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--no-progress", is_flag=True, help="No download progress bar.")
@json_option
def fetch_cmd(names: tuple[str, ...], no_progress: bool, as_json: bool) -> None:
    """Download torchvision's ImageNet weights for backbones NAME... (e.g. resnet50 alexnet).

    Files go to torch's hub folder (see `featmammo weights list`); a file is kept only if its
    sha256 starts with the hash torchvision embeds in its name. Present, intact files are kept.
    timm:NAME[.TAG] fetches that timm model's pretrained file (default tag without .TAG) into the
    Hugging Face hub cache, where `-b timm:NAME --weights imagenet` reads it offline.
    """
    from featmammo.backbones.manage import fetch
    from featmammo.errors import ConfigError, WeightsError

    try:
        rows = fetch(list(names), progress=not no_progress and not as_json and bar_enabled())
    except (WeightsError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        click.echo(f"{r['status']}: {r['dest']} ({r['weights']}, sha256 {r['sha256']})")
