"""``featmammo info STORE``: what a store holds (images, backbones, failures, provenance)."""

from __future__ import annotations

import click

from .options import echo_json, json_option


@click.command("info")
@click.argument("store_path", metavar="STORE", type=click.Path(exists=True, dir_okay=False))
@json_option
@click.option("--max-failures-shown", default=20, show_default=True, help="Failures listed.")
def command(store_path: str, as_json: bool, max_failures_shown: int) -> None:
    """Summarise an embedding store: images, backbones and dims, done counts, failures, provenance.

    With --json the keys are n_images, backbones (name -> dim), n_done (name -> count), failed
    (list of {image_id, path, backbone, reason}) and provenance.
    """
    from featmammo.store import open as open_store

    with open_store(store_path) as st:
        summary = st.summary()
        pending_rows = st.pending_shard_rows() if summary["pending_shards"] else 0
    if as_json:
        keys = ("n_images", "backbones", "n_done", "failed", "provenance")
        echo_json({k: summary[k] for k in keys})
        return
    prov = summary["provenance"]
    click.echo(f"store      {store_path}")
    click.echo(f"images     {summary['n_images']}")
    hashing = prov.get("id_hashing")
    click.echo(f"ids        {'keyed hashes (' + hashing['method'] + ')' if hashing else 'plain'}")
    click.echo(f"manifest   {prov.get('manifest_hash') or '-'}")
    versions = ", ".join(
        f"{k} {prov.get(k)}"
        for k in ("featmammo", "torch", "torchvision", "pydicom")
        if prov.get(k)
    )
    click.echo(f"versions   {versions}")
    click.echo(f"created    {prov.get('created', '-')}   updated {prov.get('updated', '-')}")
    click.echo("backbones")
    for name, dim in summary["backbones"].items():
        bp = prov["backbones"][name]
        pre = bp.get("preprocess") or {}
        sha = bp.get("weights_sha256") or "-"
        click.echo(
            f"  {name:<22} dim {dim:<5} done {summary['n_done'][name]}/{summary['n_images']}  "
            f"{bp.get('dtype')}  weights {bp.get('weights')} (sha256 {str(sha)[:12]})"
        )
        click.echo(
            f"  {'':<22} layer {bp.get('layer')}  preprocess {bp.get('preprocess_fingerprint')} "
            f"(size {pre.get('image_size')}, {pre.get('resize')}, {pre.get('normalize')}, "
            f"crop {pre.get('crop')}, roi {pre.get('roi')})  devices {bp.get('devices', [])}"
        )
    click.echo(
        f"format     {summary['format_version']} (uuid {summary['store_uuid'] or '-'}, "
        f"{summary['segments']} segment files)"
    )
    if summary["writing"]:
        click.echo(
            f"running    an extraction is writing this store now (its lock is held); "
            f"{summary['pending_shards']} shards ({pending_rows} rows) written, not merged yet"
        )
    elif summary["pending_shards"]:
        click.echo(
            f"unmerged   {summary['pending_shards']} shards ({pending_rows} rows) of an "
            "interrupted extraction (rerun the same extract command to merge them)"
        )
    fails = summary["failed"]
    n_img = summary["failed_images"]
    click.echo(
        f"failed     {len(fails)} image x backbone pair{'s' if len(fails) != 1 else ''} "
        f"({n_img} image{'s' if n_img != 1 else ''})"
    )
    for rec in fails[:max_failures_shown]:
        where = rec["path"] or rec["image_id"]
        click.echo(f"  {rec['backbone']}: {where}: {rec['reason']}")
    if len(fails) > max_failures_shown:
        click.echo(f"  ... {len(fails) - max_failures_shown} more (--json lists all)")
    runs = prov.get("runs") or []
    if runs:
        last = runs[-1]
        click.echo(
            f"last run   {last.get('time')} on {last.get('device')} ({last.get('precision')}), "
            f"{last.get('n_done')} done, {last.get('n_failed')} failed, {last.get('seconds')} s"
        )
