"""Rows whose image changed: the ``file_identity`` extract records for every store row.

A replacement with other content at the same size and mtime (``cp -p``, ``rsync -t``, ``tar x``)
is embedded again with the new file's pixels; copying the dataset elsewhere, ``chmod`` or
``touch`` change nothing. Images are 8-bit PGMs (raw pixels: every image of one shape has the same
size in bytes, which is what makes the replacement indistinguishable by size).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from featmammo import store  # noqa: E402
from featmammo.extract import embed, extract  # noqa: E402
from featmammo.extract import files as fmod  # noqa: E402
from featmammo.extract.files import DigestCache, file_identities  # noqa: E402
from featmammo.preprocess import PreprocessConfig  # noqa: E402

CFG = PreprocessConfig(image_size=64)
FAST = {"weights": "random", "preprocess": CFG, "threads": 1, "device": "cpu", "cache": False}
N = 8


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """The digest table (and everything else under FEATMAMMO_CACHE) in this test's folder."""
    monkeypatch.setenv("FEATMAMMO_CACHE", str(tmp_path / "cache"))


def _pgm(path: Path, seed: int, side: int = 48) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    blob = np.exp(-((yy - side / 2) ** 2 + (xx - side / 3 - seed % 7) ** 2) / (2 * (side / 5) ** 2))
    img = (np.clip(blob + 0.2 * rng.random((side, side)), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(img).save(path)


def _dataset(folder: Path, n: int = N) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        _pgm(folder / f"img{i}.pgm", seed=i)
        rows.append(
            {"image_id": f"img{i}", "path": f"img{i}.pgm", "label": "benign",
             "patient_id": f"P{i}", "laterality": "L", "view": "CC", "split": "train",
             "source": "synthetic"}
        )  # fmt: skip
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def _replace_keeping_size_and_mtime(path: Path, seed: int) -> None:
    """What ``cp -p other path`` does: other bytes, same size, the old mtime put back."""
    st = path.stat()
    tmp = path.with_suffix(".new.pgm")
    _pgm(tmp, seed=seed)
    assert tmp.stat().st_size == st.st_size
    os.replace(tmp, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


# ------------------------------------------------------------------------------ the identity
def test_identity_follows_content_not_path_stat_or_mode(tmp_path):
    manifest = _dataset(tmp_path / "a")
    paths = [str(tmp_path / "a" / f"img{i}.pgm") for i in range(N)]
    first = file_identities(paths)
    assert all(v.startswith("sha256:") and len(v) == 7 + 32 for v in first)
    assert len(set(first)) == N
    # copied elsewhere (new paths, inodes, times), chmod: the same identities
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    os.chmod(tmp_path / "b" / "img0.pgm", 0o600)
    assert file_identities([p.replace("/a/", "/b/") for p in paths]) == first
    # same size, same mtime, other content: another identity, for that row only
    _replace_keeping_size_and_mtime(Path(paths[2]), seed=100)
    again = file_identities(paths)
    assert again[2] != first[2]
    assert again[:2] + again[3:] == first[:2] + first[3:]
    # a missing file has no identity (it fails to read anyway)
    assert file_identities([str(tmp_path / "nope.pgm")]) == [""]
    assert manifest.exists()


def test_identity_under_hash_ids_is_keyed_and_names_nothing(tmp_path):
    _dataset(tmp_path)
    paths = [str(tmp_path / "img0.pgm")]
    plain = file_identities(paths)[0]
    k1 = file_identities(paths, key=b"k" * 32)[0]
    k2 = file_identities(paths, key=b"j" * 32)[0]
    assert k1.startswith("hmac:") and k1 != k2
    assert plain[7:] != k1[5:]  # not the public digest under another prefix
    from featmammo.hashing import sha256_file

    assert sha256_file(paths[0])[:32] not in k1 and "img0" not in k1


def test_identity_of_records_ljpeg_ics_and_masks(tmp_path):
    box = tmp_path / "records.bin"
    box.write_bytes(b"x" * 100)
    a, b = file_identities([f"{box}#1", f"{box}#2"])
    assert a and b and a != b  # the record number counts
    box.write_bytes(b"y" * 100)
    assert file_identities([f"{box}#1"])[0] != a  # and the container's bytes
    case = tmp_path / "case"
    case.mkdir()
    (case / "A_0001_1.LEFT_CC.LJPEG").write_bytes(b"ljpeg bytes")
    (case / "A-0001-1.ics").write_text("filename A-0001-1\nDIGITIZER LUMISYS\n")
    lj = str(case / "A_0001_1.LEFT_CC.LJPEG")
    before = file_identities([lj])[0]
    (case / "A-0001-1.ics").write_text("filename A-0001-1\nDIGITIZER HOWTEK\n")
    assert file_identities([lj])[0] != before  # the .ics decides shape and calibration
    img, mask = tmp_path / "i.pgm", tmp_path / "m.png"
    _pgm(img, 0)
    mask.write_bytes(b"mask one")
    with_mask = file_identities([str(img)], [str(mask)])[0]
    assert with_mask != file_identities([str(img)])[0]
    mask.write_bytes(b"mask two")
    assert file_identities([str(img)], [str(mask)])[0] != with_mask


def test_unchanged_files_are_not_read_again(tmp_path, monkeypatch):
    _dataset(tmp_path)
    paths = [str(tmp_path / f"img{i}.pgm") for i in range(N)]
    reads = []
    real = fmod.sha256_file
    monkeypatch.setattr(fmod, "sha256_file", lambda p: reads.append(p) or real(p))
    monkeypatch.setattr(fmod, "RACY_NS", 0)  # files written just now count as settled here
    first = file_identities(paths)
    assert len(reads) == N
    reads.clear()
    assert file_identities(paths) == first and reads == []  # stat only
    os.chmod(paths[0], 0o600)  # a new ctime: read once more, same identity
    assert file_identities(paths) == first and len(reads) == 1
    # an unusable table is only slower: every file read, the same identities
    reads.clear()
    (tmp_path / "not-a-db").write_text("garbage")
    broken = DigestCache(tmp_path / "not-a-db")
    assert file_identities(paths, cache=broken) == first and len(reads) == N


def test_a_change_within_one_timestamp_tick_is_not_served_from_the_table(tmp_path, monkeypatch):
    """On a file system whose timestamps are coarse (a kernel's coarse clock; FAT's 2 s), a file
    rewritten at the same size right after its digest was taken keeps its stat signature: the
    table served the first content's digest, so the row would keep its old embedding."""
    real_signature = fmod._signature

    def coarse(path):  # timestamps in whole seconds, as such a file system reports them
        got = real_signature(path)
        if got is None:
            return None
        head = got[1].split(":")
        return got[0], ":".join([*head[:3], *(str(int(t) // 10**9 * 10**9) for t in head[3:])])

    monkeypatch.setattr(fmod, "_signature", coarse)
    img = tmp_path / "img.pgm"
    _pgm(img, seed=1)
    first = file_identities([str(img)])[0]
    before = coarse(img)
    _pgm(img, seed=2)  # same size, other pixels, at once (usually the same second)
    if coarse(img) != before:
        pytest.skip("the rewrite crossed a second boundary: the signature moved anyway")
    assert file_identities([str(img)])[0] != first


# ------------------------------------------------------------------------------ extract
def test_replaced_images_are_embedded_again_with_their_new_pixels(tmp_path):
    manifest = _dataset(tmp_path / "data")
    path = tmp_path / "s.h5"
    s = extract(manifest, path, backbones=["alexnet"], **FAST)
    assert (s.n_done, s.n_reembedded) == (N, 0)
    before = store.open(path).array("alexnet")
    fid = store.open(path).meta["file_identity"].tolist()
    assert all(v.startswith("sha256:") for v in fid)

    changed = [1, 4, 6]
    for i in changed:
        _replace_keeping_size_and_mtime(tmp_path / "data" / f"img{i}.pgm", seed=50 + i)
    s = extract(manifest, path, backbones=["alexnet"], **FAST)
    assert (s.n_done, s.n_skipped, s.n_reembedded) == (3, N - 3, 3)
    st = store.open(path)
    after = st.array("alexnet")
    fresh = embed([tmp_path / "data" / f"img{i}.pgm" for i in changed], backbones=["alexnet"],
                  weights="random", preprocess=CFG, device="cpu", lateralities=["L"] * 3,
                  workers=0, cache=False)["alexnet"]  # fmt: skip
    # the new files' pixels (to float rounding: oneDNN's kernels may sum in another order for
    # another batch composition, ~3e-8 here)
    np.testing.assert_allclose(after[changed], fresh, rtol=1e-4, atol=1e-6)
    keep = [i for i in range(N) if i not in changed]
    np.testing.assert_array_equal(after[keep], before[keep])
    assert not np.allclose(after[changed], before[changed])
    assert st.provenance["runs"][-1]["n_reembedded"] == 3

    # unchanged: a rerun embeds nothing
    s = extract(manifest, path, backbones=["alexnet"], **FAST)
    assert (s.n_done, s.n_skipped, s.n_reembedded) == (0, N, 0)


def test_a_copied_dataset_is_not_embedded_again(tmp_path):
    manifest = _dataset(tmp_path / "data")
    path = tmp_path / "s.h5"
    extract(manifest, path, backbones=["alexnet"], **FAST)
    shutil.copytree(tmp_path / "data", tmp_path / "moved")
    for p in (tmp_path / "moved").glob("*.pgm"):
        os.chmod(p, 0o640)
    s = extract(tmp_path / "moved" / "manifest.csv", path, backbones=["alexnet"], **FAST)
    assert (s.n_done, s.n_skipped, s.n_reembedded) == (0, N, 0)


def test_hash_ids_store_no_path_in_file_identity(tmp_path):
    manifest = _dataset(tmp_path / "data")
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    path = tmp_path / "s.h5"
    extract(manifest, path, backbones=["alexnet"], hash_ids=key, **FAST)
    fid = store.open(path).meta["file_identity"].tolist()
    assert all(v.startswith("hmac:") for v in fid)
    assert not any("img" in v or "data" in v for v in fid)


# ------------------------------------------------------------------------------ failure reasons
def _with_masks(folder: Path) -> Path:
    """The dataset with a ROI mask column: row 0's mask is missing, row 1 has none."""
    from PIL import Image

    manifest = _dataset(folder, n=4)
    df = pd.read_csv(manifest)
    for i in range(4):
        Image.fromarray(np.full((48, 48), 255, np.uint8)).save(folder / f"mask{i}.png")
    df["roi_mask_path"] = ["gone.png", "", "mask2.png", "mask3.png"]
    df.to_csv(manifest, index=False)
    return manifest


def test_failure_reasons_say_which_file_and_hash_ids_keeps_every_path_out(tmp_path):
    """A failure's reason is stored beside the row: it names the ROI mask when the mask failed,
    does not repeat the image's path, and under --hash-ids holds no path at all (a reason
    used to carry the image's full path, patient id included, into a hashed store)."""
    manifest = _with_masks(tmp_path / "data")
    crop = {**FAST, "preprocess": PreprocessConfig(image_size=64, roi="crop")}
    extract(manifest, tmp_path / "plain.h5", backbones=["alexnet"], **crop)
    with store.open(tmp_path / "plain.h5") as st:
        why = dict(zip(st.failures["image_id"], st.failures["reason"], strict=True))
    assert set(why) == {"img0", "img1"}
    assert why["img0"].startswith("ROI mask ") and "gone.png" in why["img0"]
    assert "img1.pgm" not in why["img1"] and "needs a lesion mask" in why["img1"]
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    path = tmp_path / "hashed.h5"
    extract(manifest, path, backbones=["alexnet"], hash_ids=key, **crop)
    with store.open(path) as st:
        reasons = st.failures["reason"].tolist()
    assert sorted(reasons) == sorted(
        ["ROI mask: file does not exist", "roi='crop' needs a lesion mask or bbox (roi_mask)"]
    ), reasons
    for f in [path, *store.segments_dir(path).iterdir()]:
        raw = f.read_bytes()
        assert str(tmp_path).encode() not in raw and b"img1" not in raw and b"gone" not in raw, f


def test_patches_extracted_with_the_breast_crop_are_warned_about(tmp_path, caplog):
    """readers-review: the DDSM patch set's 299x299 patches are full of tissue; --crop breast keeps
    the largest bright region (the mass, on a mass patch). Said once, naming the manifest."""
    import logging

    manifest = _dataset(tmp_path / "data", n=2)
    df = pd.read_csv(manifest).assign(source="ddsm-patches")
    df.to_csv(manifest, index=False)
    with caplog.at_level(logging.WARNING, "featmammo.extract"):
        extract(manifest, tmp_path / "a.h5", backbones=["alexnet"], **FAST)
    said = [r.getMessage() for r in caplog.records if "DDSM patch set" in r.getMessage()]
    assert len(said) == 1 and str(manifest) in said[0] and "--crop none" in said[0]
    caplog.clear()
    none = {**FAST, "preprocess": PreprocessConfig(image_size=64, crop="none")}
    with caplog.at_level(logging.WARNING, "featmammo.extract"):
        extract(manifest, tmp_path / "b.h5", backbones=["alexnet"], **none)
    assert "DDSM patch set" not in caplog.text


def test_a_full_and_a_crop_entry_of_one_store_keep_each_others_rows(tmp_path):
    """docs: 'another preprocessing of a backbone the store already holds' goes under
    --backbone-suffix. A --roi crop run's identities cover the masks, a full run's do not: each
    run saw every masked row as changed and reset the other entry's rows (reproduced with the CLI
    on synth data: alexnet 7/24 done after the crop run, alexnet_crop 0/24 after the full rerun)."""
    from PIL import Image

    folder = tmp_path / "data"
    manifest = _dataset(folder, n=4)
    for i in range(4):
        Image.fromarray(np.full((48, 48), 255, np.uint8)).save(folder / f"mask{i}.png")
    pd.read_csv(manifest).assign(roi_mask_path=[f"mask{i}.png" for i in range(4)]).to_csv(
        manifest, index=False
    )
    crop = {**FAST, "preprocess": PreprocessConfig(image_size=64, roi="crop")}
    path = tmp_path / "s.h5"
    extract(manifest, path, backbones=["alexnet"], **FAST)
    s = extract(manifest, path, backbones=["alexnet"], backbone_suffix="_crop", **crop)
    assert (s.n_done, s.n_reembedded) == (4, 0)
    s = extract(manifest, path, backbones=["alexnet"], **FAST)
    assert (s.n_done, s.n_skipped, s.n_reembedded) == (0, 4, 0)
    with store.open(path) as st:
        assert st.n_done() == {"alexnet": 4, "alexnet_crop": 4}
    redrawn = np.zeros((48, 48), np.uint8)
    redrawn[8:30, 10:40] = 255
    Image.fromarray(redrawn).save(folder / "mask1.png")  # the crop entry's row only
    s = extract(manifest, path, backbones=["alexnet"], backbone_suffix="_crop", **crop)
    assert (s.n_done, s.n_reembedded) == (1, 1)
    with store.open(path) as st:
        assert st.n_done() == {"alexnet": 4, "alexnet_crop": 4}
