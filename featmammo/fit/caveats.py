"""What a reader of a fit must be told: ``config.json["caveats"]`` (:func:`caveats_from_stores`)
and the refusal of ``hybrid:`` embeddings trained on the images a run evaluates."""

from __future__ import annotations

import logging

import pandas as pd

from ..errors import ConfigError
from ..plugins import HYBRID_PREFIX

log = logging.getLogger("featmammo.fit")  # the logger name of the fit run, as before the split


def _hybrid_blocks(store_list, used) -> dict:
    """backbone name -> checkpoint path for the ``hybrid:`` blocks among ``used``."""
    out = {}
    for name in used:
        for s in store_list:
            if name not in s.backbones:
                continue
            prov = s.backbone_provenance(name) or {}
            spec = prov.get("spec") or {}
            if not (str(name).startswith(HYBRID_PREFIX) or spec.get("arch") == "hybridnet"):
                break
            from ..nn.checkpoint import checkpoint_of  # torch-free JSON reading, only when needed

            path = checkpoint_of(prov)
            if path is not None:
                out[name] = path
            break
    return out


def _trained_embeddings(store_list, fused, ids, *, allow: bool) -> dict:
    """Refuse (ConfigError) features sets whose ``hybrid:`` embeddings were trained on images this
    run evaluates; with ``allow`` return them as ``{"features": [...], "reason": str}``."""
    used = list(dict.fromkeys(b for fz in fused.values() for b in fz.blocks))
    ckpts = _hybrid_blocks(store_list, used)
    if not ckpts:
        return {"features": [], "reason": None}
    from ..nn.checkpoint import trained_image_ids

    run_ids = set(map(str, ids))
    overlap = {}
    for name, path in ckpts.items():
        seen = trained_image_ids(path)
        n_train = len(run_ids & set(seen["train"]))
        n_val = len(run_ids & set(seen["validation"]))
        if n_train or n_val:
            overlap[name] = (path, n_train, n_val)
    if not overlap:
        return {"features": [], "reason": None}
    said = "; ".join(
        f"{name}: checkpoint {path} trained on {a} and validated on {b} of the {len(run_ids)} "
        "images this run evaluates"
        for name, (path, a, b) in overlap.items()
    )
    if not allow:
        raise ConfigError(
            f"trained embeddings: {said}. Its embeddings of those images are fitted to their "
            "labels, so cross-validating on them is optimistic; fit on images the checkpoint never "
            "saw (e.g. its test split) or pass --allow-trained-embeddings to run anyway (the rows "
            "are marked optimistic)"
        )
    feats = [f for f, fz in fused.items() if set(fz.blocks) & set(overlap)]
    reason = (
        f"optimistic: {said}; features {', '.join(feats)} are evaluated on images their "
        "embeddings were trained on (--allow-trained-embeddings)"
    )
    log.warning("%s", reason)
    return {"features": feats, "reason": reason}


def _weights_caveat(name: str, prov: dict) -> str:
    from ..report.caveats import describe_weights

    spec = prov.get("spec") or {}
    return describe_weights(
        spec.get("weights") or prov.get("weights"),
        prov.get("weights_sha256") or spec.get("weights_sha256"),
        seed=spec.get("seed", prov.get("seed")),
        hybrid=str(name).startswith(HYBRID_PREFIX) or spec.get("arch") == "hybridnet",
    )


def caveats_from_stores(stores, meta: pd.DataFrame) -> dict:
    """``{"weights": {backbone: str}, "sources": {source: n_images}, "warnings": [str]}`` for
    ``config.json["caveats"]`` (INTERFACES I2): how every backbone's weights were obtained, where
    the run's images come from, and warnings a reader of the results must see (random weights,
    a label that comes from one source only, no source column)."""
    weights, warnings = {}, []
    for s in stores:
        for name in s.backbones:
            if name in weights:
                continue
            weights[name] = _weights_caveat(name, dict(s.backbone_provenance(name) or {}))
    random = [n for n, w in weights.items() if w.startswith("random")]
    if random:
        warnings.append(
            f"backbone(s) {', '.join(random)} ran with random weights: the embeddings carry no "
            "learnt image features and the results say nothing about real backbones "
            "(`featmammo weights fetch NAME` gets torchvision's ImageNet weights)"
        )
    sources = {}
    if "source" in meta.columns:
        col = meta["source"].fillna("").astype(str).replace("", "(none)")
        sources = {str(k): int(v) for k, v in col.value_counts().items()}
        if "label" in meta.columns and len(sources) > 1:
            by_label = meta.assign(_s=col).groupby("label")["_s"].unique()
            for label, srcs in by_label.items():
                others = col[meta["label"] != label]
                if len(srcs) == 1 and not (others == srcs[0]).any():
                    warnings.append(
                        f"every {label!r} image comes from source {srcs[0]!r} and no other label "
                        "does: a head can learn the acquisition instead of the pathology"
                    )
    else:
        warnings.append("the store has no 'source' column: source confounding was not checked")
    return {"weights": weights, "sources": sources, "warnings": warnings}
