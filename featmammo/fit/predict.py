"""`featmammo predict`: classify new images (or store rows) with a model saved by `featmammo fit`
or a HybridNet checkpoint saved by `featmammo train`.

A model file (``RUN_DIR/models/<features>__<head>.skops``; older ``.joblib`` pickles load only
with ``trust_pickle=True``) comes with a sidecar that records the
classes, the features set, its backbone blocks and, per backbone, the provenance the store recorded
at extraction (spec with weights identity, SHA-256 and init seed, layer, preprocessing config and
fingerprint). Prediction reproduces exactly that:

- image files: each backbone is rebuilt from its recorded spec (``featmammo.backbones.make`` with
  the recorded weights, layer, seed and SHA-256; a rebuilt spec that differs from the recorded one
  is refused), every image is read and preprocessed with the recorded config, embedded with
  ``featmammo.extract.embed``, the blocks are concatenated in the recorded order and the head
  predicts. An unreadable image gets a row with its ``error`` instead of stopping the run.
- a store (``.h5``): every backbone of the model must be in the store with the same weights identity
  and preprocessing (else :class:`~featmammo.errors.StoreError`); its embeddings are used directly.

A HybridNet checkpoint (``RUN_DIR/checkpoint.pt`` + its ``.json`` sidecar) classifies image files,
folders and manifests end to end with the preprocessing recorded in its sidecar.

Every output has a ``trained_on`` column: True for rows the model was trained on (a fit head: the
training part of its run, read from the sidecar's ``trained_image_ids`` or the run folder; a
checkpoint: its training and validation images), whose scores are optimistic; a WARNING gives the
count. It is empty where that cannot be told (loose image files, whose ids are file names).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, StoreError, WeightsError
from ..plugins import HYBRID_PREFIX

log = logging.getLogger("featmammo.predict")  # the logger name before the move into featmammo.fit

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".pgm", ".tif", ".tiff")
#: spec fields that must match between the recorded backbone and the one rebuilt at predict time
SPEC_KEYS = ("name", "arch", "layer", "dim", "weights", "weights_sha256", "seed", "pool")


def load_model(path, *, trust_pickle: bool = False) -> tuple[object, dict]:
    """A fitted head and its sidecar; refuses sidecars that lack what prediction needs.

    ``trust_pickle``: load an old ``.joblib`` model (a pickle: loading runs any code it holds;
    featmammo.heads.load warns); without it such a file is refused (UntrustedModelError).
    """
    from .. import heads

    model, sidecar = heads.load(path, trust_pickle=trust_pickle)
    missing = [
        k for k in ("classes", "backbones", "blocks", "backbone_provenance") if k not in sidecar
    ]
    if missing:
        raise WeightsError(
            f"{path}: sidecar lacks {missing}; it was not written by `featmammo fit`, so the "
            "features it expects cannot be reproduced"
        )
    return model, sidecar


def _ordered_blocks(sidecar: dict) -> list[str]:
    blocks = sidecar["blocks"]
    return sorted(blocks, key=lambda n: blocks[n][0])


def _predict_matrix(model, X: np.ndarray, sidecar: dict) -> tuple[np.ndarray, np.ndarray]:
    classes = [str(c) for c in sidecar["classes"]]
    n_features = sidecar.get("n_features")
    if n_features is not None and X.shape[1] != n_features:
        raise ConfigError(
            f"feature matrix has {X.shape[1]} columns; the model expects {n_features}"
        )
    raw = np.asarray(model.predict_proba(X), dtype=float)
    proba = np.zeros((len(X), len(classes)))
    for j, c in enumerate(str(c) for c in model.classes_):
        proba[:, classes.index(c)] = raw[:, j]
    y_pred = np.asarray(classes, dtype=object)[proba.argmax(axis=1)] if len(X) else np.array([])
    return y_pred, proba


def _frame(ids, paths, y_pred, proba, classes, errors=None) -> pd.DataFrame:
    df = pd.DataFrame({"image_id": ids, "path": paths, "y_pred": y_pred})
    for j, c in enumerate(classes):
        df[f"p_{c}"] = proba[:, j]
    if errors is not None:
        df["error"] = errors
    return df


# --------------------------------------------------------------------------------------- stores
def check_store(store, sidecar: dict) -> None:
    """StoreError unless every backbone of the model is in ``store`` with the same provenance."""
    from ..fusion import preprocess_fingerprint, weights_identity

    for name in _ordered_blocks(sidecar):
        want = sidecar["backbone_provenance"].get(name)
        if name not in store.backbones:
            raise StoreError(
                f"{store.path}: backbone {name!r} of the model is not in this store "
                f"(it has {store.backbones})"
            )
        have = store.backbone_provenance(name)
        if want is None:
            raise WeightsError(f"model sidecar records no provenance for backbone {name!r}")
        if want.get("identity") and have.get("identity") == want.get("identity"):
            continue
        a = (weights_identity(want), preprocess_fingerprint(want))
        b = (weights_identity(have), preprocess_fingerprint(have))
        if a != b:
            raise StoreError(
                f"{store.path}: backbone {name!r} was extracted with other weights or "
                f"preprocessing than the model was fit on (model: weights {a[0]}, preprocess "
                f"{a[1]}; store: weights {b[0]}, preprocess {b[1]}); refusing to predict"
            )


def predict_store(model, sidecar: dict, store_path) -> pd.DataFrame:
    """Predictions for every row of a store done for all the model's backbones."""
    from .. import store as store_mod
    from ..fusion import fuse
    from .stores import FiniteStoreView

    store = FiniteStoreView(store_mod.open(store_path))  # NaN/inf rows get an error, not a stop
    check_store(store, sidecar)
    names = _ordered_blocks(sidecar)
    fused = fuse([store], names[0] if len(names) == 1 else "+".join(names))
    got = {k: [s.start, s.stop] for k, s in fused.blocks.items()}
    if got != {k: list(v) for k, v in sidecar["blocks"].items()}:
        raise StoreError(
            f"{store_path}: block layout {got} differs from the model's {sidecar['blocks']}"
        )
    y_pred, proba = _predict_matrix(model, fused.X, sidecar)
    paths = (
        fused.meta["path"].astype(str).to_numpy() if "path" in fused.meta else [""] * len(y_pred)
    )
    classes = [str(c) for c in sidecar["classes"]]
    out = _frame(fused.ids, paths, y_pred, proba, classes, [""] * len(y_pred))
    missing = _missing_rows(store, names, set(map(str, fused.ids)), classes)
    if len(missing):
        log.warning(
            "%s: %d row(s) have no usable embedding for %s; listed with their error",
            store_path, len(missing), "+".join(names),
        )  # fmt: skip
        out = pd.concat([out, missing], ignore_index=True)
    return out


def _missing_rows(store, names, predicted: set, classes) -> pd.DataFrame:
    """One row (no prediction, an ``error``) per store image the model's blocks lack."""
    from ..store import FAILED

    ids = np.asarray(store.ids).astype(str)
    todo = [k for k, i in enumerate(ids) if i not in predicted]
    if not todo:
        return pd.DataFrame()
    fails = store.failures
    reason_of = {(r.image_id, r.backbone): r.reason for r in fails.itertuples()}
    errors = []
    for k in todo:
        why = []
        for n in names:
            st = int(store.status(n)[k])
            if st == FAILED:
                why.append(f"{n} failed at extraction: {reason_of.get((ids[k], n), '')}")
            elif st != 1:
                why.append(f"{n} not extracted yet (pending)")
            else:
                why.append(f"{n} embedding is not finite")
        errors.append("; ".join(why))
    paths = store.meta["path"].astype(str).to_numpy()[todo] if "path" in store.meta else ""
    proba = np.full((len(todo), len(classes)), np.nan)
    return _frame(ids[todo], paths, np.full(len(todo), "", dtype=object), proba, classes, errors)


# --------------------------------------------------------------------------------------- images
def rebuild_backbones(sidecar: dict, device: str = "cpu") -> dict:
    """Rebuild each backbone from its recorded spec; WeightsError when the rebuilt spec differs.

    A ``hybrid:`` block is reloaded from its checkpoint (which carries its weights); the recorded
    SHA-256 must match the checkpoint's, as for any weights file.
    """
    from .. import backbones

    models = {}
    for name in _ordered_blocks(sidecar):
        prov = sidecar["backbone_provenance"][name]
        spec = prov.get("spec") or {}
        if not spec:
            raise WeightsError(f"model sidecar: backbone {name!r} has no recorded spec")
        arch_name = str(spec.get("name", name))
        if arch_name.startswith(HYBRID_PREFIX):
            model = backbones.make(arch_name, device=device)
        else:
            weights = spec.get("weights") or prov.get("weights")
            model = backbones.make(
                arch_name,
                weights=weights,
                layer=spec.get("layer"),
                seed=int(spec.get("seed") or 0),
                sha256=spec.get("weights_sha256") if weights not in (None, "random") else None,
                device=device,
                pool=spec.get("pool") or "avg",  # a GeM model is never rebuilt with avg pooling
            )
        rebuilt = model.spec.to_dict() if hasattr(model.spec, "to_dict") else vars(model.spec)
        diff = {
            k: (spec.get(k), rebuilt.get(k))
            for k in SPEC_KEYS
            if k in spec and str(spec.get(k)) != str(rebuilt.get(k))
        }
        if diff:
            raise WeightsError(
                f"backbone {name!r}: rebuilt spec differs from the recorded one {diff} "
                "(recorded, rebuilt); the model's features cannot be reproduced"
            )
        models[name] = model
    return models


def expand_inputs(inputs: Sequence) -> list[Path]:
    """Files as given; folders expanded to their image files (sorted, recursive)."""
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def _recorded_precision(provs: Sequence[dict], device: str) -> str:
    """The precision the embeddings were computed in: float32 on the CPU; on CUDA the recorded one
    (a model fit on float32 embeddings is not fed bfloat16 ones)."""
    if not device.startswith("cuda"):
        return "float32"
    recorded = {p.get("precision") for p in provs} - {None}
    return recorded.pop() if len(recorded) == 1 else "float32"


def predict_images(
    model,
    sidecar: dict,
    paths: Sequence,
    *,
    device: str = "auto",
    lateralities: Sequence[str | None] | None = None,
    roi_masks: Sequence | None = None,
    ids: Sequence[str] | None = None,
    batch_size: int = 16,
    workers="auto",
    cache=None,
    decoder: str = "cpu",
    where: str | None = None,
    progress=None,
) -> pd.DataFrame:
    """Read, preprocess (recorded config), embed (recorded backbones) and classify image files.

    ``lateralities`` ("L"/"R"/None per image) and ``roi_masks`` (mask paths) play the part of the
    manifest's ``laterality`` and ``roi_mask_path`` columns at extraction: without them the side
    comes from the DICOM header or, failing that, from where the tissue lies, which can differ from
    the side a manifest gave at extraction time. Images stream through in batches of
    ``batch_size`` (decoded by ``workers``, see ``featmammo.extract.resolve_workers``), each
    decoded once for every block of the model; ``cache``: the prepared-image cache (False: none);
    ``decoder``: ``cpu``, ``auto`` or ``nvimagecodec`` for JPEG 2000 DICOMs (resolved before the
    backbones are rebuilt; see ``featmammo.extract.resolve_decoder``). ``where``: the manifest the
    images come from (named in messages); ``progress(n, total)``: called after each batch.
    """
    from ..devices import resolve_device
    from ..extract import (
        _check_hybrid_preprocess,
        _make_models,
        _resolve_preprocess,
        resolve_decoder,
    )
    from ..preprocess import PreprocessConfig

    names = _ordered_blocks(sidecar)
    provs = [sidecar["backbone_provenance"][n] for n in names]
    configs = {p.get("preprocess_fingerprint") for p in provs}
    if len(configs) != 1:
        raise ConfigError(f"model blocks {names} were extracted with different preprocessing")
    config = PreprocessConfig.from_dict(dict(provs[0]["preprocess"]))
    recorded = provs[0].get("preprocess_fingerprint")
    if recorded and config.fingerprint() != recorded:
        raise ConfigError(
            f"preprocessing config fingerprint {config.fingerprint()} differs from the recorded "
            f"{recorded} (featmammo's preprocessing recipe changed since the model was fit)"
        )
    dev = resolve_device(device)
    dec = resolve_decoder(decoder)
    # store names (which may carry a suffix: resnet50_crop) -> rebuilt modules, in block order
    models = _make_models(rebuild_backbones(sidecar, device=str(dev)), "imagenet", dev)
    _check_hybrid_preprocess(config, models)
    config = _resolve_preprocess(config, models)

    def classify(emb):
        return _predict_matrix(
            model, np.concatenate([emb[name] for name in names], axis=1), sidecar
        )

    return _classify(
        paths, models, config, sidecar["classes"], classify, device=dev,
        precision=_recorded_precision(provs, str(dev)), lateralities=lateralities,
        roi_masks=roi_masks, ids=ids, batch_size=batch_size, workers=workers, cache=cache,
        decoder=dec, where=where, progress=progress,
    )  # fmt: skip


def _classify(
    paths, models, config, classes, classify, *, device, precision, lateralities=None,
    roi_masks=None, ids=None, batch_size=16, workers="auto", cache=None, decoder="cpu", where=None,
    progress=None,
) -> pd.DataFrame:  # fmt: skip
    """Stream ``paths`` through ``models`` (:func:`featmammo.extract.embed_stream`) and
    ``classify({name: outputs}) -> (y_pred, proba)`` per batch; an unreadable image gets a row
    with its ``error``. The one loop behind fit heads and HybridNet checkpoints."""
    from ..extract import embed_stream

    n = len(paths)
    lateralities = list(lateralities) if lateralities is not None else [None] * n
    roi_masks = list(roi_masks) if roi_masks is not None else [None] * n
    if len(lateralities) != n or len(roi_masks) != n:
        raise ConfigError(
            f"{len(lateralities)} lateralities / {len(roi_masks)} masks for {n} images"
        )
    _laterality_note(config, lateralities, where)
    classes = [str(c) for c in classes]
    y_pred = np.full(n, "", dtype=object)
    proba = np.full((n, len(classes)), np.nan)
    errors = [""] * n
    for ok, out, failed in embed_stream(
        [str(p) for p in paths], models, config, device=device, precision=precision,
        batch_size=batch_size, workers=workers, lateralities=lateralities, roi_masks=roi_masks,
        cache=cache, decoder=decoder,
    ):  # fmt: skip
        for i, exc in failed:
            log.warning("%s: skipped (%s)", paths[i], exc)
            errors[i] = str(exc)
        if ok:
            y_pred[ok], proba[ok] = classify(out)
        if progress is not None:
            progress(len(ok) + len(failed), n)
    ids = list(ids) if ids is not None else image_ids(paths)
    return _frame(ids, [str(p) for p in paths], y_pred, proba, classes, errors)


def image_ids(paths: Sequence) -> list[str]:
    """The ids of loose image files: the file name without suffix, the whole path where two
    files share a name (CBIS-DDSM's ``1-1.dcm`` in every folder)."""
    ids = [Path(p).stem for p in paths]
    seen = pd.Series(ids, dtype=object)
    if seen.duplicated(keep=False).any():
        dups = seen.duplicated(keep=False).to_numpy()
        ids = [str(p) if dup else i for i, p, dup in zip(ids, paths, dups, strict=True)]
    return ids


def _laterality_note(config, lateralities, where: str | None) -> None:
    """Say (INFO) where the canonical side comes from when no laterality is known, with the hint
    that fits the input: a manifest without sides, or loose files."""
    if not config.canonical_side or any(str(lat).upper() in ("L", "R") for lat in lateralities):
        return
    if where:
        log.info(
            "%s: no row has a laterality (L/R): the canonical side comes from DICOM headers or is "
            "inferred from the pixels (fill the manifest's laterality column to use known sides)",
            where,
        )
    else:
        log.info(
            "no laterality given: the canonical side comes from DICOM headers or is inferred from "
            "the pixels (pass a manifest CSV with a laterality column, or --laterality L|R, to "
            "use known sides)"
        )


def warn_missing_classes(labels, classes, where: str) -> list[str]:
    """Warn when labelled inputs hold a class the model cannot output (a ``normal`` image given to
    a benign/malignant model is called benign or malignant, never normal); returns the warnings."""
    from ..labels import normalize_label

    known = {str(c) for c in classes}
    counts: dict[str, int] = {}
    for v in labels:
        if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "":
            continue
        lab = normalize_label(v) or str(v).strip().lower()
        if lab == "abnormal" or (lab in ("benign", "malignant") and "abnormal" in known):
            continue
        if lab not in known:
            counts[lab] = counts.get(lab, 0) + 1
    out = []
    for lab, k in sorted(counts.items()):
        what = "has no normal class" if lab == "normal" else f"has no {lab!r} class"
        msg = (
            f"{where}: {k} image(s) labelled {lab!r}, but the model {what} (its classes: "
            f"{', '.join(sorted(known))}): each is predicted as one of those"
        )
        log.warning("%s", msg)
        out.append(msg)
    return out


def is_checkpoint(path) -> bool:
    """True for a HybridNet checkpoint (``NAME.pt`` whose sidecar ``NAME.json`` is a
    ``featmammo-hybridnet`` one, or is missing: loading then says so), False for a fit head."""
    p = Path(path)
    if p.suffix.lower() != ".pt":
        return False
    side = p.with_suffix(".json")
    if not side.is_file():
        return True
    try:
        import json

        from ..nn.checkpoint import FORMAT

        return json.loads(side.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return True  # unreadable: the checkpoint loader names the problem


def load_checkpoint_model(path, *, device: str = "auto"):
    """A HybridNet checkpoint for prediction: ``(module giving probabilities, sidecar,
    PreprocessConfig, device)``; a recorded preprocessing fingerprint must match this featmammo's
    recipe (the PREPROCESS_VERSION is part of it)."""
    from ..devices import resolve_device
    from ..nn.checkpoint import load_model as load_net
    from ..nn.model import Probabilities
    from ..preprocess import PreprocessConfig

    dev = resolve_device(device)
    net, meta = load_net(path, device=dev)
    recorded = meta.get("preprocess")
    if not isinstance(recorded, dict):
        raise WeightsError(f"{path}: the sidecar records no preprocessing; cannot predict")
    try:
        config = PreprocessConfig.from_dict(dict(recorded))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: recorded preprocessing {recorded} is invalid ({exc})") from exc
    want = meta.get("preprocess_fingerprint")
    if not want:
        log.warning(
            "%s: the sidecar records no preprocessing fingerprint (trained by an older "
            "featmammo): images are prepared by this version's recipe, which may differ from the "
            "one it was trained with",
            path,
        )
    elif config.fingerprint() != want:
        raise ConfigError(
            f"{path}: preprocessing fingerprint {config.fingerprint()} differs from the recorded "
            f"{want} (featmammo's preprocessing recipe changed since the network was trained): "
            "its images would be prepared differently; retrain it"
        )
    return Probabilities(net).to(dev), meta, config, dev


def predict_checkpoint_images(net, meta: dict, config, paths: Sequence, *, device, **kwargs):
    """A HybridNet checkpoint end to end on image files: read, preprocess with the checkpoint's
    recorded ``config``, forward, softmax (``net``, ``meta``, ``config``: from
    :func:`load_checkpoint_model`). Keywords and columns as :func:`predict_images`."""
    classes = np.asarray([str(c) for c in meta["classes"]], dtype=object)

    def classify(out):
        p = np.asarray(out["hybridnet"], dtype=float)
        return classes[p.argmax(axis=1)], p

    return _classify(
        paths, {"hybridnet": net}, config, classes, classify, device=device,
        precision="float32", **kwargs,
    )  # fmt: skip


# ----------------------------------------------------------------------------------- trained rows
def checkpoint_trained_ids(meta: dict) -> dict[str, set[str]] | None:
    """``{"train": ids, "validation": ids}`` a HybridNet sidecar records (None: not recorded)."""
    from ..nn.checkpoint import IMAGE_IDS_KEY

    ids = meta.get(IMAGE_IDS_KEY)
    if not isinstance(ids, dict):
        return None
    return {k: {str(i) for i in ids.get(k) or []} for k in ("train", "validation")}


def head_trained_ids(model_path, sidecar: dict) -> dict[str, set[str]] | None:
    """``{"train": ids}``: the images a fit head was trained on (the final model: the run's
    whole training part). From the sidecar's ``trained_image_ids`` when it records them, else
    from its run folder (``RUN_DIR/models/<model>``): ``images.csv`` (every image of the run)
    minus the ``test`` rows of ``predictions.csv``. None when neither can be read."""
    recorded = sidecar.get("trained_image_ids")
    if isinstance(recorded, list):
        return {"train": {str(i) for i in recorded}}
    run = Path(model_path).resolve().parent.parent
    images, preds, config = run / "images.csv", run / "predictions.csv", run / "config.json"
    if not (images.is_file() and preds.is_file() and config.is_file()):
        return None
    try:
        import json

        if json.loads(config.read_text()).get("command") != "fit":
            return None
        every = pd.read_csv(images, dtype={"image_id": str}, usecols=["image_id"])["image_id"]
        pred = pd.read_csv(
            preds, dtype={"image_id": str, "fold": str}, usecols=["image_id", "fold"]
        )
    except (OSError, ValueError, KeyError) as exc:
        log.info("%s: cannot tell which images the model was trained on (%s)", run, exc)
        return None
    test = set(pred.loc[pred["fold"] == "test", "image_id"])
    return {"train": set(every) - test}


def mark_trained(out: pd.DataFrame, trained: dict[str, set[str]] | None, known, what: str):
    """Add ``trained_on`` (True/False where ``known``, empty elsewhere) and warn with the count."""
    col = pd.Series(pd.NA, index=out.index, dtype="boolean")
    if trained is not None:
        every = set().union(*trained.values())
        ids = out["image_id"].astype(str)
        col[known] = ids[known].isin(every).to_numpy()
        hits = {k: int(ids[known].isin(v).sum()) for k, v in trained.items()}
        total = int(col.fillna(False).sum())
        if total:
            parts = ", ".join(f"{n} {k}" for k, n in hits.items() if n)
            log.warning(
                "%d of %d predicted row(s) are images %s was trained on (%s): their scores are "
                "optimistic, not an estimate (column trained_on)",
                total,
                int(known.sum()),
                what,
                parts,
            )
    elif known.any():
        log.info("%s records no training images: trained_on left empty", what)
    out["trained_on"] = col
    return out


def predict(
    model_path,
    inputs: Sequence,
    *,
    device: str = "auto",
    laterality: str | None = None,
    batch_size: int = 16,
    workers="auto",
    cache=None,
    decoder: str = "cpu",
    trust_pickle: bool = False,
    progress=None,
) -> pd.DataFrame:
    """Predict with a saved model on image files/folders, manifest CSVs and/or stores (.h5).

    ``model_path``: a fit head (``RUN_DIR/models/<features>__<head>.skops``) or a HybridNet
    checkpoint (``RUN_DIR/checkpoint.pt``, which takes images, folders and manifests, not
    stores). A manifest CSV (any CSV ``read_manifest`` accepts) gives each image its id,
    laterality and ROI mask as at extraction. ``laterality`` ("L"/"R") applies to loose image
    files. Labelled inputs (manifest ``label`` column, store metadata) with a class the model
    lacks are warned about. Rows of stores and manifests the model was trained on are marked in
    ``trained_on`` (and counted in a WARNING). ``trust_pickle``: load an old ``.joblib`` head
    (unpickling runs code; warned). ``batch_size``, ``workers``, ``cache``, ``decoder``: see
    :func:`predict_images`; ``progress(n, total)``: called as images are done.
    """
    from ..datasets import read_manifest
    from ..datasets.manifest import mask_column

    stores = [i for i in inputs if str(i).endswith((".h5", ".hdf5"))]
    manifests = [i for i in inputs if str(i).lower().endswith(".csv")]
    images = [i for i in inputs if i not in stores and i not in manifests]
    checkpoint = is_checkpoint(model_path)
    if checkpoint and stores:
        raise ConfigError(
            f"{stores[0]}: a HybridNet checkpoint ({model_path}) classifies images, not stored "
            "embeddings; pass the manifest (or the images) the store was extracted from"
        )
    if manifests or images:
        from ..io.decoders import resolve_decoder

        resolve_decoder(decoder)  # refused before any input is read

    if checkpoint:
        net, sidecar, config, dev = load_checkpoint_model(model_path, device=device)
        trained = checkpoint_trained_ids(sidecar)
        what = f"checkpoint {model_path}"

        def run_images(paths, **kw):
            return predict_checkpoint_images(net, sidecar, config, paths, device=dev, **kw)
    else:
        model, sidecar = load_model(model_path, trust_pickle=trust_pickle)
        trained = head_trained_ids(model_path, sidecar)
        what = f"model {Path(model_path).name}"

        def run_images(paths, **kw):
            return predict_images(model, sidecar, paths, device=device, **kw)

    classes = [str(c) for c in sidecar["classes"]]
    run = {"batch_size": batch_size, "workers": workers, "cache": cache, "decoder": decoder}
    tables = [(m, read_manifest(m, require_labels=False)) for m in manifests]
    loose = expand_inputs(images) if images else []
    if images and not loose:
        raise ConfigError(f"no image files in {list(map(str, images))}")
    total = sum(len(df) for _, df in tables) + len(loose)

    def tick(n, _of):  # one bar over every manifest and folder
        if progress is not None:
            progress(n, total)

    frames = []
    for s in stores:
        out = predict_store(model, sidecar, s)
        frames.append(mark_trained(out, trained, np.ones(len(out), dtype=bool), what))
        from .. import store as store_mod

        meta = store_mod.open(s).meta
        if "label" in meta:
            warn_missing_classes(meta["label"].tolist(), classes, str(s))
    for m, df in tables:
        if "label" in df:
            warn_missing_classes(df["label"].tolist(), classes, str(m))
        mask_col = mask_column(df)
        masks = df[mask_col].fillna("").tolist() if mask_col else None
        out = run_images(
            df["path"].tolist(), lateralities=df["laterality"].tolist(), roi_masks=masks,
            ids=df["image_id"].tolist(), where=str(m), progress=tick, **run,
        )  # fmt: skip
        frames.append(mark_trained(out, trained, np.ones(len(out), dtype=bool), what))
        if checkpoint and "patient_id" in df:
            _warn_trained_patients(df, sidecar, str(m), what)
    if loose:
        lats = [laterality] * len(loose) if laterality else None
        out = run_images(loose, lateralities=lats, progress=tick, **run)
        frames.append(mark_trained(out, None, np.zeros(len(out), dtype=bool), what))
    if not frames:
        raise ConfigError("predict: no input given")
    out = pd.concat(frames, ignore_index=True)
    if "error" in out.columns:
        out["error"] = out["error"].fillna("")
    return out


def _warn_trained_patients(df: pd.DataFrame, sidecar: dict, where: str, what: str) -> None:
    """Warn about manifest images of patients the checkpoint trained on (other views of them)."""
    from ..nn.checkpoint import PATIENT_IDS_KEY

    seen = sidecar.get(PATIENT_IDS_KEY)
    if not isinstance(seen, dict):
        return
    patients = {str(p) for k in ("train", "validation") for p in seen.get(k) or []}
    trained_ids = checkpoint_trained_ids(sidecar) or {}
    every = set().union(*trained_ids.values()) if trained_ids else set()
    rows = df[df["patient_id"].astype(str).isin(patients) & ~df["image_id"].astype(str).isin(every)]
    if len(rows):
        log.warning(
            "%s: %d image(s) not trained on belong to %d patient(s) %s trained or validated on: "
            "not independent of its training (patient-level leakage)",
            where,
            len(rows),
            rows["patient_id"].nunique(),
            what,
        )
