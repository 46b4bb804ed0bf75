"""Issue 15: a store that stays right under reuse and at scale.

Identity (leftovers of a deleted store), changed images, snapshot readers, chunked reads, typed
metadata, a full disk, symlinks and temporary files, the format-1 upgrade, pack and compaction.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pandas as pd
import pytest

from featmammo import store
from featmammo.errors import StoreError, StoreSpaceError

DIM = 4


def _prov(size=64):
    return {
        "spec": {"name": "toy"},
        "layer": "p",
        "weights": "random",
        "weights_sha256": None,
        "preprocess": {"image_size": size},
        "preprocess_fingerprint": f"fp{size}",
    }


def _entry(name="toy", dim=DIM):
    return store.BackboneEntry(name, dim, _prov())


def _meta(n, root="/x", identity=None, extra=None):
    ids = [f"img{i:03d}" for i in range(n)]
    df = pd.DataFrame(
        {
            "image_id": ids,
            "label": "benign",
            "patient_id": [f"P{i}" for i in range(n)],
            "path": [f"{root}/{i}.png" for i in ids],
        }
    )
    if identity is not None:
        df["file_identity"] = [f"{identity}{i}" for i in range(n)]
    for k, v in (extra or {}).items():
        df[k] = v
    return df


def _x(n, offset=0.0, dim=DIM):
    return np.arange(n * dim, dtype=np.float32).reshape(n, dim) + offset


def _shard(path, ids, x, e, status=None, reasons=None):
    n = len(ids)
    status = np.ones(n, np.int8) if status is None else np.asarray(status, np.int8)
    reasons = [""] * n if reasons is None else reasons
    return store.write_shard(path, ids, {e.name: (x, status, reasons)}, {e.name: e.identity})


def _extract(path, meta, x, e=None, batch=5, merge_every=2):
    """What an extraction does with the store: prepare, shards, merges, final merge."""
    e = e or _entry()
    st = store.prepare(path, meta["image_id"], meta, [e], {"id_hashing": None})
    index = {i: k for k, i in enumerate(st.ids)}
    todo = [i for i in meta["image_id"] if not st.done(e.name)[index[i]]]
    pos = {i: k for k, i in enumerate(meta["image_id"])}
    for k, a in enumerate(range(0, len(todo), batch)):
        ids = todo[a : a + batch]
        _shard(path, ids, x[[pos[i] for i in ids]], e)
        if merge_every and k % merge_every == merge_every - 1:
            store.consolidate(path)
    store.consolidate(path, store_provenance_update={"runs": [{"n": len(todo)}]})
    store.cleanup_parts(path)
    return st


# ------------------------------------------------------------------------------------ identity
def test_leftovers_of_a_deleted_store_never_enter_the_next_one(tmp_path, caplog):
    """Kill a run on data X, rm store.h5, extract data Y with the same ids to the same path."""
    path = tmp_path / "store.h5"
    n = 30
    e = _entry()
    meta_x = _meta(n, "/x")
    store.prepare(path, meta_x["image_id"], meta_x, [e], {"id_hashing": None})
    for a in range(0, 20, 5):  # X's run: two merged, two still in shards when it is killed
        _shard(path, list(meta_x["image_id"][a : a + 5]), _x(5, 1000.0), e)
        if a == 5:
            store.consolidate(path)
    assert store.list_shards(path) and store.segments_dir(path).is_dir()
    path.unlink()  # the user deletes the store; its .parts and .segments folders stay

    meta_y = _meta(n, "/y")
    with caplog.at_level(logging.WARNING, logger="featmammo.store"):
        _extract(path, meta_y, _x(n))
    st = store.open(path)
    assert st.done("toy").all()
    np.testing.assert_array_equal(st.array("toy"), _x(n))  # none of X's rows
    assert (st.meta["path"].str.startswith("/y/")).all()
    text = caplog.text
    assert "discarding" in text and "shard" in text and "segment file" in text
    assert not store.parts_dir(path).exists()
    # nothing of X is left on disk: every segment file belongs to this store
    names = [p.name for p in store.segments_dir(path).iterdir()]
    assert names and all(nm.startswith(st.uuid) for nm in names)


def test_a_shard_of_another_store_is_discarded_at_merge(tmp_path, caplog):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    e = _entry()
    meta = _meta(6)
    for p in (a, b):
        store.prepare(p, meta["image_id"], meta, [e], {"id_hashing": None})
    shard = _shard(a, list(meta["image_id"][:3]), _x(3), e)
    store.parts_dir(b).mkdir()
    os.replace(shard, store.parts_dir(b) / shard.name)  # a shard of a's run in b's folder
    with caplog.at_level(logging.WARNING, logger="featmammo.store"):
        assert store.consolidate(b) == 1
    assert store.open(b).done("toy").sum() == 0
    assert "written for another store" in caplog.text
    assert store.open(a).uuid != store.open(b).uuid and len(store.open(a).uuid) == 32


def test_a_renamed_store_keeps_its_segments_when_a_new_store_takes_the_name(tmp_path):
    path = tmp_path / "store.h5"
    _extract(path, _meta(12), _x(12))
    os.replace(path, tmp_path / "old.h5")  # mv store.h5 old.h5: old.h5 reads store.h5.segments/
    _extract(path, _meta(12, "/y"), _x(12, 5.0))
    np.testing.assert_array_equal(store.open(tmp_path / "old.h5").array("toy"), _x(12))
    np.testing.assert_array_equal(store.open(path).array("toy"), _x(12, 5.0))


# ---------------------------------------------------------------------------- changed images
def test_a_changed_image_is_embedded_again(tmp_path, caplog):
    path = tmp_path / "s.h5"
    n = 10
    _extract(path, _meta(n, identity="v1-"), _x(n))
    meta = _meta(n, identity="v1-")
    meta.loc[2, "file_identity"] = "v2-2"  # same path, new content (cp -p, rsync -t)
    meta.loc[7, "path"] = "/elsewhere/img007.png"  # the same content moved: kept
    with caplog.at_level(logging.WARNING, logger="featmammo.store"):
        st = store.prepare(path, meta["image_id"], meta, [_entry()], {"id_hashing": None})
    assert st.changed_images == ["img002"]
    assert st.status("toy").tolist() == [0 if i == 2 else 1 for i in range(n)]
    assert np.isnan(st.array("toy")[2]).all()
    assert st.meta.loc["img002", "file_identity"] == "v2-2"
    assert st.meta.loc["img007", "path"] == "/elsewhere/img007.png"
    assert "1 image(s) changed since they were embedded" in caplog.text
    assert "img002" in caplog.text
    with h5py.File(path) as f:  # plain h5py sees the pending row as NaN too
        assert np.isnan(f["backbones/toy/embeddings"][2]).all()
    # the rerun embeds it again; unchanged rows are untouched
    _extract(path, meta, _x(n, 100.0))
    got = store.open(path).array("toy")
    np.testing.assert_array_equal(got[2], _x(n, 100.0)[2])
    np.testing.assert_array_equal(np.delete(got, 2, 0), np.delete(_x(n), 2, 0))
    # an empty incoming identity falls back on the path, which is unchanged: nothing happens
    st = store.prepare(
        path, meta["image_id"], meta.assign(file_identity=""), [_entry()], {"id_hashing": None}
    )
    assert st.changed_images == [] and st.done("toy").all()


def test_the_mask_part_of_an_identity_concerns_the_entries_that_read_masks(tmp_path):
    """A --roi full entry and a --roi crop entry of one store: runs of either must not reset the
    other's rows (the crop run's identity also covers the mask; they invalidated each other), and
    a changed mask re-embeds the crop entry's row only."""
    path = tmp_path / "s.h5"
    full = store.BackboneEntry("full", DIM, _prov())
    crop = store.BackboneEntry("crop", DIM, {**_prov(), "preprocess": {"roi": "crop"}})
    _extract(path, _meta(4, identity="sha256:i"), _x(4), e=full)
    masked = _meta(4).assign(file_identity=[f"sha256:i{i} mask:m{i}" for i in range(4)])
    _extract(path, masked, _x(4), e=crop)
    st = store.open(path)
    assert st.done("full").all() and st.done("crop").all()
    assert st.meta.loc["img001", "file_identity"] == "sha256:i1 mask:m1"
    st = store.prepare(path, masked["image_id"], _meta(4, identity="sha256:i"), [full], {})
    assert st.changed_images == [] and st.done("crop").all()  # a full run reads no mask
    assert st.meta.loc["img001", "file_identity"] == "sha256:i1 mask:m1"  # the part is kept
    masked.loc[2, "file_identity"] = "sha256:i2 mask:CHANGED"
    st = store.prepare(path, masked["image_id"], masked, [crop], {})
    assert st.changed_images == ["img002"]
    assert st.status("crop").tolist() == [1, 1, 0, 1] and st.done("full").all()
    masked.loc[3, "file_identity"] = "sha256:NEW mask:m3"  # the image itself: every entry
    st = store.prepare(path, masked["image_id"], masked, [crop], {})
    assert st.status("full").tolist() == [1, 1, 1, 0] and st.status("crop").tolist() == [1, 1, 0, 0]


def test_without_identities_a_new_path_means_a_new_image(tmp_path):
    path = tmp_path / "s.h5"
    _extract(path, _meta(4), _x(4))
    meta = _meta(4)
    meta.loc[1, "path"] = "/y/img001.png"
    st = store.prepare(path, meta["image_id"], meta, [_entry()], {"id_hashing": None})
    assert st.changed_images == ["img001"] and st.status("toy").tolist() == [1, 0, 1, 1]


def test_a_copied_dataset_keeps_its_rows(tmp_path):
    path = tmp_path / "s.h5"
    _extract(path, _meta(6, "/x", identity="h"), _x(6))
    st = store.prepare(
        path,
        _meta(6)["image_id"],
        _meta(6, "/copy", identity="h"),
        [_entry()],
        {"id_hashing": None},
    )
    assert st.changed_images == [] and st.done("toy").all()
    assert st.meta["path"].str.startswith("/copy/").all()


def test_identities_are_recorded_for_a_store_that_had_none(tmp_path, caplog):
    path = tmp_path / "s.h5"
    _extract(path, _meta(5), _x(5))  # no file_identity given
    with caplog.at_level(logging.WARNING, logger="featmammo.store"):
        st = store.prepare(
            path, _meta(5)["image_id"], _meta(5, identity="h"), [_entry()], {"id_hashing": None}
        )
    assert st.changed_images == [] and st.done("toy").all()
    assert st.meta["file_identity"].tolist() == [f"h{i}" for i in range(5)]
    assert "had no recorded" in caplog.text


def test_a_changed_image_does_not_get_its_old_embedding_back_from_a_shard(tmp_path):
    path = tmp_path / "s.h5"
    e = _entry()
    meta = _meta(6, identity="a")
    store.prepare(path, meta["image_id"], meta, [e], {"id_hashing": None})
    _shard(path, list(meta["image_id"][:3]), _x(3), e)  # the run is killed before a merge
    meta.loc[1, "file_identity"] = "b1"
    st = store.prepare(path, meta["image_id"], meta, [e], {"id_hashing": None})
    assert st.status("toy").tolist() == [1, 0, 1, 0, 0, 0]
    assert st.changed_images == ["img001"]


# ------------------------------------------------------------------------------------ readers
def test_a_store_is_one_snapshot_while_the_file_is_replaced(tmp_path):
    path = tmp_path / "s.h5"
    n = 12
    meta = _meta(n)
    _extract(path, meta, _x(n))
    st = store.open(path)
    # another process rewrites the store: more images first, other embeddings under the ids
    bigger = _meta(n + 5).iloc[::-1].reset_index(drop=True)
    store.write(path, bigger["image_id"], bigger, {"toy": _x(n + 5, -50.0)}, {"toy": _prov()})
    assert len(st.ids) == n
    np.testing.assert_array_equal(st.array("toy"), _x(n))  # no IndexError, no new rows
    np.testing.assert_array_equal(st.array("toy", rows=[3, 1]), _x(n)[[3, 1]])
    st.close()
    with pytest.raises(StoreError, match="closed"):
        st.array("toy")
    assert len(store.open(path).ids) == n + 5


def test_chunked_reads_rows_and_blocks(tmp_path):
    path = tmp_path / "s.h5"
    n = 50
    x = _x(n)
    e = _entry()
    meta = _meta(n)
    store.prepare(path, meta["image_id"], meta, [e], {"id_hashing": None})
    order = np.random.default_rng(0).permutation(n)
    for a in range(0, n, 7):  # rows land in several segments, in no particular order
        r = np.sort(order[a : a + 7])
        _shard(path, list(meta["image_id"][r]), x[r], e)
        store.consolidate(path)
    with store.open(path) as st:
        assert st.n_segments >= 7
        np.testing.assert_array_equal(st.array("toy"), x)
        rows = [49, 0, 17, 17, 3]
        np.testing.assert_array_equal(st.array("toy", rows=rows), x[rows])
        mask = np.arange(n) % 3 == 0
        np.testing.assert_array_equal(st.array("toy", rows=mask), x[mask])
        got = list(st.blocks("toy", block_rows=8))
        assert len(got) == 7 and all(len(r) <= 8 for r, _ in got)
        np.testing.assert_array_equal(np.concatenate([b for _, b in got]), x)
        with pytest.raises(StoreError, match="out of range"):
            st.array("toy", rows=[n])


def test_meta_returns_numbers_where_the_manifest_had_numbers(tmp_path):
    meta = _meta(
        4,
        extra={
            "x": ["1", "20", "", "3"],
            "radius": ["1.5", "2", "3e1", "4"],
            "study": ["007", "8", "9", "10"],
            "birads": ["4a", "2", "1", "0"],
        },
    )
    meta["label"] = ["1", "0", "1", "0"]  # a required column stays text even when numeric
    st = store.write(tmp_path / "s.h5", meta["image_id"], meta, {}, {})
    m = store.open(st.path).meta
    assert m["x"].dtype == float and np.isnan(m.loc["img002", "x"]) and m.loc["img001", "x"] == 20
    assert m["radius"].tolist() == [1.5, 2.0, 30.0, 4.0]
    assert m["study"].tolist() == ["007", "8", "9", "10"]  # a leading zero: an identifier
    assert not pd.api.types.is_numeric_dtype(m["birads"])
    assert m["label"].tolist() == ["1", "0", "1", "0"]
    assert store.open(st.path).raw_meta()["x"].tolist() == ["1", "20", "", "3"]


def test_a_missing_segment_is_an_error_never_fill_values(tmp_path):
    path = tmp_path / "s.h5"
    _extract(path, _meta(10), _x(10))
    seg = next(p for p in store.segments_dir(path).iterdir() if p.name.endswith(".h5"))
    seg.unlink()
    with pytest.raises(StoreError, match="segment file .* is missing"):
        store.open(path)


def test_an_open_store_keeps_reading_a_segment_deleted_meanwhile(tmp_path):
    path = tmp_path / "s.h5"
    _extract(path, _meta(10), _x(10))
    with store.open(path) as st:
        for p in store.segments_dir(path).iterdir():
            p.unlink()
        np.testing.assert_array_equal(st.array("toy"), _x(10))


# ---------------------------------------------------------------------------------- disk full
_FULL = textwrap.dedent(
    """
    import resource, sys, numpy as np
    from featmammo import store
    from featmammo.errors import StoreSpaceError
    path, limit, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if what.endswith("-unchecked"):  # the write itself hits the limit (no estimate stops it)
        from featmammo.store import files
        files.check_space = lambda *a, **k: None
        what = what[: -len("-unchecked")]
    e = store.BackboneEntry("toy", {dim}, {prov!r})
    st = store.open(path)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        if what == "consolidate":
            store.consolidate(path)
        else:
            ids = list(st.ids)
            store.write_shard(path, ids, {{"toy": (np.ones((len(ids), {dim})), np.ones(len(ids)),
                              [""] * len(ids))}}, {{"toy": e.identity}})
    except StoreSpaceError as exc:
        print("SPACE", exc)
        sys.exit(3)
    """
)


@pytest.mark.parametrize(
    "what", ["consolidate", "shard", "consolidate-unchecked", "shard-unchecked"]
)
def test_a_full_disk_is_a_store_error_and_the_store_stays_whole(tmp_path, what):
    """RLIMIT_FSIZE makes writes past the limit fail with EFBIG, as ENOSPC would."""
    path = tmp_path / "s.h5"
    n, dim = 2000, 256
    e = store.BackboneEntry("toy", dim, _prov())
    meta = _meta(n)
    store.prepare(path, meta["image_id"], meta, [e], {"id_hashing": None}, compression="none")
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((500, dim)).astype(np.float32)
    _shard(path, list(meta["image_id"][:500]), x0, e)
    store.consolidate(path)  # 500 rows done before the disk fills
    for a in range(500, n, 500):
        _shard(path, list(meta["image_id"][a : a + 500]), rng.standard_normal((500, dim)), e)
    code = _FULL.format(dim=dim, prov=_prov())
    r = subprocess.run(
        [sys.executable, "-c", code, str(path), str(300_000), what], capture_output=True, text=True
    )
    assert r.returncode == 3, (r.returncode, r.stderr[-2000:])  # no signal, our error
    assert "SPACE" in r.stdout and str(path) in r.stdout
    assert ("needs about" in r.stdout) or ("File too large" in r.stdout)
    st = store.open(path)  # readable, with every row done before
    assert st.done("toy").sum() == 500
    np.testing.assert_array_equal(st.array("toy", rows=np.arange(500)), x0)
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert len(store.list_shards(path)) == 3  # still there for the rerun
    store.consolidate(path)  # with room again, the rerun completes
    assert store.open(path).done("toy").all()


def test_a_write_that_fails_midway_leaves_no_temporary_file(tmp_path, monkeypatch):
    """The guarded writer itself: an ENOSPC from the OS in the middle of an HDF5 file."""
    import errno

    from featmammo.store import files

    real_pwrite = os.pwrite
    calls = {"n": 0}

    def pwrite(fd, data, offset):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(files.os, "pwrite", pwrite)
    target = tmp_path / "f.h5"
    with pytest.raises(StoreSpaceError, match="No space left on device"):
        files.write_h5(
            target,
            lambda f: f.create_dataset("x", data=np.ones((1000, 100))),
            store=tmp_path / "s.h5",
            needed=0,
            what="testing",
        )
    assert list(tmp_path.iterdir()) == []


def test_free_space_is_checked_before_a_merge(tmp_path, monkeypatch):
    from featmammo.store import files

    path = tmp_path / "s.h5"
    e = _entry()
    meta = _meta(8)
    store.prepare(path, meta["image_id"], meta, [e], {"id_hashing": None})
    _shard(path, list(meta["image_id"]), _x(8), e)
    monkeypatch.setattr(files, "free_bytes", lambda folder: 1000)
    with pytest.raises(StoreSpaceError, match=r"only 1000 bytes is free"):
        store.consolidate(path)
    monkeypatch.undo()
    assert store.open(path).done("toy").sum() == 0 and len(store.list_shards(path)) == 1


# ---------------------------------------------------------------------- symlinks and temp files
def test_a_symlinked_store_is_written_through_and_stays_a_link(tmp_path):
    real_dir = tmp_path / "data"
    real_dir.mkdir()
    link = tmp_path / "link.h5"
    os.symlink(real_dir / "store.h5", link)  # dangling until the store is created
    _extract(link, _meta(6), _x(6))
    assert link.is_symlink() and (real_dir / "store.h5").is_file()
    assert (real_dir / "store.h5.segments").is_dir() and not (
        tmp_path / "link.h5.segments"
    ).exists()
    store.write(link, ["a"], None, {"toy": np.ones((1, DIM))}, {"toy": _prov()})
    assert link.is_symlink() and list(store.open(real_dir / "store.h5").ids) == ["a"]


def test_temporary_files_of_killed_writers_are_removed(tmp_path):
    path = tmp_path / "s.h5"
    _extract(path, _meta(4), _x(4))
    stale = [
        tmp_path / "s.h5.tmp",
        tmp_path / ".s.h5.abc123.tmp",
        store.segments_dir(path) / ".x.h5.def456.tmp",
    ]
    for p in stale:
        p.write_bytes(b"partial")
    meta = _meta(5)
    store.prepare(path, meta["image_id"], meta, [_entry()], {"id_hashing": None})
    assert not any(p.exists() for p in stale)


def test_a_kill_during_any_store_write_leaves_a_unique_temporary_name(tmp_path):
    from test_store import _in_child

    path = tmp_path / "s.h5"
    meta = _meta(4)

    def create():
        store.prepare(path, meta["image_id"], meta, [_entry()], {"id_hashing": None})

    assert _in_child(create, env={"FEATMAMMO_TEST_KILL": "create-tmp:1"}) == -9
    tmps = [p.name for p in tmp_path.glob(".s.h5.*.tmp")]
    assert len(tmps) == 1 and tmps[0] != ".s.h5.tmp"  # unique, never the fixed name
    assert not path.exists()
    create()
    assert not list(tmp_path.glob("*.tmp")) and len(store.open(path)) == 4


# ------------------------------------------------------------------------- format 1, pack, gc
def _v1_store(path, n=6, shards=True):
    """A format-1 store (one self-contained file) and shards without a store UUID."""
    st = store.write(
        path, _meta(n)["image_id"], _meta(n), {"toy": np.full((n, DIM), np.nan)}, {"toy": _prov()}
    )
    st.close()
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 1
        del f.attrs["store_uuid"]
        for c in json.loads(f["meta"].attrs["columns"]):
            if c == "file_identity":
                del f["meta"][c]
        f["meta"].attrs["columns"] = json.dumps(
            [c for c in json.loads(f["meta"].attrs["columns"]) if c != "file_identity"]
        )
        g = f["backbones/toy"]
        g["embeddings"][:3] = _x(n)[:3]
        g["status"][:3] = 1
    if shards:
        store.write_shard(
            path,
            list(st.ids[3:5]),
            {"toy": (_x(n)[3:5], np.ones(2), ["", ""])},
            {"toy": _entry().identity},
            store_uuid="",
        )
    return st


def test_a_format_1_store_is_read_and_upgraded_in_place_of_a_copy(tmp_path):
    path = tmp_path / "v1.h5"
    _v1_store(path)
    st = store.open(path)
    assert st.format_version == 1 and st.uuid == "" and st.done("toy").sum() == 3
    assert "file_identity" in st.meta.columns  # required columns always present
    inode = path.stat().st_ino
    assert store.consolidate(path) == 1  # its own shards (no UUID, older than the upgrade)
    st = store.open(path)
    assert st.format_version == 2 and len(st.uuid) == 32
    assert st.status("toy").tolist() == [1, 1, 1, 1, 1, 0]
    np.testing.assert_array_equal(st.array("toy")[:5], _x(6)[:5])
    base = [p for p in store.segments_dir(path).iterdir() if p.name.endswith("-base.h5")]
    assert len(base) == 1 and base[0].stat().st_ino == inode  # a hard link, not a copy
    with h5py.File(path) as f:  # plain h5py reads the upgraded store as before
        np.testing.assert_array_equal(f["backbones/toy/embeddings"][:5], _x(6)[:5])


def test_pack_makes_one_self_contained_file(tmp_path):
    path = tmp_path / "s.h5"
    meta = _meta(20, extra={"x": [str(i) for i in range(20)]})
    _extract(path, meta, _x(20))
    out = store.pack(path, tmp_path / "shared" / "packed.h5")
    before = store.open(path)
    os.replace(out, tmp_path / "alone.h5")  # the file alone, no folder beside it
    p = store.open(tmp_path / "alone.h5")
    assert p.n_segments == 0 and p.uuid != before.uuid
    assert p.provenance["packed_from"]["store_uuid"] == before.uuid
    np.testing.assert_array_equal(p.array("toy"), before.array("toy"))
    pd.testing.assert_frame_equal(p.meta, before.meta)
    assert p.identity("toy") == before.identity("toy")
    with h5py.File(tmp_path / "alone.h5") as f:
        assert not f["backbones/toy/embeddings"].is_virtual
    with pytest.raises(StoreError, match="already exists"):
        store.pack(path, tmp_path / "alone.h5")


def test_pack_in_place_and_compact_change_nothing_a_reader_sees(tmp_path):
    path = tmp_path / "s.h5"
    meta = _meta(40)
    _extract(path, meta, _x(40), batch=3, merge_every=1)
    before = store.open(path)
    assert before.n_segments > 10
    assert store.compact(path, everything=True) > 10
    st = store.open(path)
    assert st.n_segments == 1
    np.testing.assert_array_equal(st.array("toy"), before.array("toy"))
    np.testing.assert_array_equal(before.array("toy"), _x(40))  # the old snapshot still reads
    store.pack(path)
    st = store.open(path)
    assert st.n_segments == 0 and st.uuid == before.uuid
    np.testing.assert_array_equal(st.array("toy"), _x(40))


def test_compaction_keeps_segments_an_open_reader_still_maps(tmp_path):
    """A plain h5py reader of the old main file never reads fill values after a compaction."""
    path = tmp_path / "s.h5"
    _extract(path, _meta(30), _x(30), batch=3, merge_every=1)
    with h5py.File(path, "r") as old:  # opened before the compaction, read after it
        store.compact(path, everything=True)
        from featmammo.store import segments

        segments.collect(path, _state(path), min_age_s=0.0)  # the garbage collection runs now
        np.testing.assert_array_equal(old["backbones/toy/embeddings"][()], _x(30))
    segments.collect(path, _state(path), min_age_s=0.0)  # closed: the old segments go
    files = [p.name for p in store.segments_dir(path).iterdir()]
    assert len(files) == 1 and not files[0].startswith("retired-")
    np.testing.assert_array_equal(store.open(path).array("toy"), _x(30))


def test_pack_in_place_keeps_segments_a_plain_h5py_reader_still_maps(tmp_path, caplog):
    """The docs' plain h5py reading, open while another call packs the store in place: it keeps
    reading its rows (pack holds the store open itself: the old index must still be retired)."""
    path = tmp_path / "s.h5"
    _extract(path, _meta(30), _x(30), batch=3, merge_every=1)
    with h5py.File(path, "r") as old, caplog.at_level(logging.WARNING, "featmammo.store"):
        store.pack(path)
        np.testing.assert_array_equal(old["backbones/toy/embeddings"][()], _x(30))
        assert old["ids"].asstr()[0] == "img000"
    assert "no longer exists" not in caplog.text  # its own segments, not another store's
    from featmammo.store import segments

    segments.collect(path, None, min_age_s=0.0, own_uuid=store.open(path).uuid)  # reader gone
    assert not store.segments_dir(path).exists()
    np.testing.assert_array_equal(store.open(path).array("toy"), _x(30))


def test_a_copy_of_the_main_file_keeps_the_segments_it_reads(tmp_path):
    """``cp store.h5 backup.h5`` (one file was a whole store before format 2): the copy reads the
    original's segments folder; compacting the original must not delete what the copy reads."""
    import shutil

    path = tmp_path / "s.h5"
    _extract(path, _meta(30), _x(30), batch=3, merge_every=1)
    shutil.copy2(path, tmp_path / "backup.h5")
    store.compact(path, everything=True)
    from featmammo.store import segments

    segments.collect(path, _state(path), min_age_s=0.0)  # an hour later
    with store.open(tmp_path / "backup.h5") as b:
        np.testing.assert_array_equal(b.array("toy"), _x(30))
    (tmp_path / "backup.h5").unlink()  # the copy gone: so are the segments only it read
    segments.collect(path, _state(path), min_age_s=0.0)
    assert len(list(store.segments_dir(path).iterdir())) == 1
    np.testing.assert_array_equal(store.open(path).array("toy"), _x(30))


def _state(path):
    from featmammo.store.index import editing

    with editing(path) as (state, _files):
        return state


def test_consolidate_compacts_when_segments_pile_up(tmp_path, monkeypatch):
    from featmammo.store import compaction

    monkeypatch.setattr(compaction, "MAX_SEGMENTS", 6)
    monkeypatch.setattr(compaction, "TARGET_SEGMENTS", 3)
    path = tmp_path / "s.h5"
    _extract(path, _meta(40), _x(40), batch=2, merge_every=1)
    st = store.open(path)
    assert st.n_segments <= 6
    np.testing.assert_array_equal(st.array("toy"), _x(40))


# ------------------------------------------------------------------------------------ info
def test_info_says_whether_a_run_is_writing_and_counts_failures_per_image(tmp_path):
    from click.testing import CliRunner

    from featmammo.cli.info import command

    path = tmp_path / "s.h5"
    e, e2 = _entry(), _entry("other")
    meta = _meta(6)
    store.prepare(path, meta["image_id"], meta, [e, e2], {"id_hashing": None})
    bad = {"status": [1, 2, 2], "reasons": ["", "unreadable", "empty"]}
    for b in (e, e2):
        store.write_shard(
            path,
            list(meta["image_id"][:3]),
            {b.name: (_x(3), bad["status"], bad["reasons"])},
            {b.name: b.identity},
        )
    store.consolidate(path)
    _shard(path, list(meta["image_id"][3:]), _x(3), e)  # written, not merged
    out = CliRunner().invoke(command, [str(path)]).output
    assert "failed     4 image x backbone pairs (2 images)" in out
    assert "interrupted extraction" in out and "1 shards (3 rows)" in out
    with store.lock(path):
        out = CliRunner().invoke(command, [str(path)]).output
    assert "an extraction is writing this store now" in out and "interrupted" not in out
    keys = json.loads(CliRunner().invoke(command, [str(path), "--json"]).output)
    assert list(keys) == ["n_images", "backbones", "n_done", "failed", "provenance"]


def test_a_segment_no_row_reads_any_more_is_dropped_without_a_rewrite(tmp_path):
    path = tmp_path / "s.h5"
    e = _entry()
    meta = _meta(8)
    store.prepare(path, meta["image_id"], meta, [e], {"id_hashing": None})
    first = {p.name for p in store.segments_dir(path).iterdir()}  # the ids and metadata
    ids = list(meta["image_id"])
    store.write_shard(path, ids, {"toy": (_x(8), np.ones(8), [""] * 8)}, {"toy": e.identity},
                      row_meta={"windowing_applied": ["none"] * 8})  # fmt: skip
    store.consolidate(path)  # every row's record now lives in the merge's segment
    st = store.open(path)
    assert st.n_segments == 1  # dropped from the index, not rewritten
    st.close()
    from featmammo.store import segments

    segments.collect(path, _state(path), min_age_s=0.0)  # no reader: the file goes too
    assert not first & {p.name for p in store.segments_dir(path).iterdir()}
    st = store.open(path)
    np.testing.assert_array_equal(st.array("toy"), _x(8))
    assert st.meta["windowing_applied"].tolist() == ["none"] * 8
    assert st.meta["path"].tolist() == list(meta["path"])
