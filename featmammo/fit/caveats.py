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


#: the checkpoint sidecar key holding the patients a HybridNet trained and validated on
PATIENT_IDS_KEY = "trained_patient_ids"


def _patients_seen(path, seen_ids: dict, id_to_patient: dict) -> dict[str, set]:
    """``{"train": {patient...}, "validation": {...}}`` a checkpoint saw: the sidecar's
    ``trained_patient_ids`` when it records them, united with its trained image ids mapped to
    patients through the stores' metadata (images of the run's stores)."""
    from ..nn import checkpoint as ck

    recorded = None
    reader = getattr(ck, "trained_patient_ids", None)
    if reader is not None:
        recorded = reader(path)
    else:
        meta = ck.read_sidecar(path)
        value = meta.get(PATIENT_IDS_KEY)
        if isinstance(value, dict):
            recorded = value
    out = {}
    for part in ("train", "validation"):
        patients = {id_to_patient[i] for i in seen_ids[part] if i in id_to_patient}
        if recorded and isinstance(recorded.get(part), list):
            patients |= {str(p) for p in recorded[part]}
        out[part] = patients
    return out


def _trained_embeddings(store_list, fused, ids, groups=None, *, allow: bool) -> dict:
    """Refuse (ConfigError) features sets whose ``hybrid:`` embeddings come from a checkpoint that
    saw -- trained or validated on -- any *patient* this run evaluates (another view of a breast
    the network learnt from is not an unseen image); with ``allow`` return them as
    ``{"features": [...], "reason": str}``.

    ``ids``/``groups``: the image ids this run evaluates and their patients. The checkpoint's
    patients come from its sidecar (``trained_patient_ids``) and from its trained image ids
    joined with the stores' metadata (image_id -> patient_id).
    """
    used = list(dict.fromkeys(b for fz in fused.values() for b in fz.blocks))
    ckpts = _hybrid_blocks(store_list, used)
    if not ckpts:
        return {"features": [], "reason": None}
    from ..nn.checkpoint import trained_image_ids

    ids = [str(i) for i in ids]
    groups = [str(g) for g in groups] if groups is not None else None
    run_ids = set(ids)
    run_patients = set(groups) if groups is not None else set()
    id_to_patient = {}
    for s in store_list:
        meta = s.meta
        if "patient_id" in meta.columns:
            id_to_patient.update(zip(map(str, s.ids), meta["patient_id"].astype(str), strict=True))
    overlap = {}
    for name, path in ckpts.items():
        seen = trained_image_ids(path)
        n_train = len(run_ids & set(seen["train"]))
        n_val = len(run_ids & set(seen["validation"]))
        pats = _patients_seen(path, seen, id_to_patient)
        p_train = run_patients & pats["train"]
        p_val = (run_patients & pats["validation"]) - p_train
        if n_train or n_val or p_train or p_val:
            overlap[name] = (path, n_train, n_val, len(p_train), len(p_val))
    if not overlap:
        return {"features": [], "reason": None}
    said = "; ".join(
        f"{name}: checkpoint {path} trained on {a} and validated on {b} of the {len(run_ids)} "
        f"images this run evaluates, and saw {pa} (training) and {pb} (validation) of its "
        f"{len(run_patients)} patients"
        for name, (path, a, b, pa, pb) in overlap.items()
    )
    if not allow:
        raise ConfigError(
            f"trained embeddings: {said}. The network learnt from those patients (any view of "
            "them), so cross-validating on them is optimistic; fit on patients the checkpoint "
            "never saw (e.g. its test split) or pass --allow-trained-embeddings to run anyway "
            "(the rows are marked optimistic)"
        )
    feats = [f for f, fz in fused.items() if set(fz.blocks) & set(overlap)]
    reason = (
        f"optimistic: {said}; features {', '.join(feats)} are evaluated on patients their "
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
