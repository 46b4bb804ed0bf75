"""Caveats: what must travel with every saved result (report head, figure footers, warnings)."""

from __future__ import annotations

# --------------------------------------------------------------------------------------------------
# caveats: what must travel with every saved result


EVAL_LABEL = {
    "cv": "pooled out-of-fold CV",
    "test": "held-out test",
    "validation": "HybridNet validation (chose the stopping epoch: optimistic)",
}


def describe_weights(weights, sha256=None, *, seed=None, hybrid: bool = False) -> str:
    """How a backbone's weights were obtained, as ``config.json["caveats"]["weights"]`` states it
    (the one formatter ``fit`` and ``train`` share): ``random (seed N)``, ``imagenet (torchvision
    ENUM.MEMBER, sha256 PREFIX)``, ``file PATH (sha256 PREFIX)`` or ``hybrid checkpoint PATH (sha256
    PREFIX)``."""
    weights = str(weights or "unknown")
    sha = str(sha256 or "")[:12] or "unknown"
    if hybrid:
        return f"hybrid checkpoint {weights} (sha256 {sha})"
    if weights == "random":
        return f"random (seed {seed if seed is not None else 'unknown'})"
    if weights.startswith("imagenet:timm/"):
        return f"pretrained (timm {weights.split('/', 1)[1]}, sha256 {sha})"
    if weights.startswith("imagenet"):
        which = weights.split(":", 1)[1] if ":" in weights else "default"
        return f"imagenet (torchvision {which}, sha256 {sha})"
    return f"file {weights} (sha256 {sha})"


def caveat_lines(config: dict) -> list[str]:
    """The run's caveats (``config["caveats"]``: weights per backbone, data sources, warnings) as
    markdown lines; a run that records none says so."""
    cav = config.get("caveats")
    if not cav:
        return [
            "config.json records no caveats (backbone weights, data sources, warnings): the run "
            "predates them or its writer did not record them; check the store's provenance "
            "(`featmammo info STORE`) before sharing these numbers"
        ]
    lines = []
    weights = cav.get("weights") or {}
    if weights:
        lines.append("Backbone weights: " + "; ".join(f"{b}: {w}" for b, w in weights.items()))
        random = [b for b, w in weights.items() if str(w).lower().startswith("random")]
        said = any("random weights" in str(w).lower() for w in cav.get("warnings") or [])
        if random and not said:
            lines.append(
                f"**Random weights** for {', '.join(random)}: these features come from untrained "
                "networks; the numbers below say nothing about pretrained (ImageNet) features. "
                "Get real weights with `featmammo weights fetch NAME`."
            )
    else:
        lines.append("Backbone weights: not recorded")
    sources = cav.get("sources") or {}
    if sources:
        lines.append(
            "Data sources: "
            + ", ".join(f"{s or '(no source)'} ({n} images)" for s, n in sources.items())
        )
    else:
        lines.append("Data sources: not recorded")
    lines += [f"Warning: {w}" for w in cav.get("warnings") or []]
    return lines


def footer_text(config: dict, extra: list[str] | None = None) -> list[str]:
    """Short caveat paragraphs printed under every figure."""
    cav = config.get("caveats") or {}
    out = []
    weights = cav.get("weights") or {}
    out.append(
        "weights: " + "; ".join(f"{b} {w}" for b, w in weights.items())
        if weights
        else "weights: not recorded in config.json"
    )
    sources = cav.get("sources") or {}
    out.append(
        "sources: " + ", ".join(f"{s or '(none)'} {n}" for s, n in sources.items())
        if sources
        else "sources: not recorded"
    )
    out += [f"warning: {w}" for w in cav.get("warnings") or []]
    out += list(extra or [])
    return out


def source_statement(config: dict) -> tuple[str, bool]:
    """What the run's split audit says about labels confounded with data sources.

    Returns (sentence, is_warning). ``split_audit.source_confounding == {}`` means checked, none.
    """
    audit = config.get("split_audit")
    if not isinstance(audit, dict):
        return "Source confounding: not checked (config.json has no split_audit).", True
    if "source_confounding" not in audit:
        return "Source confounding: not checked (the split audit has no source check).", True
    if audit.get("source_confounding") is None:
        return "Source confounding: not checked (the images carry no source column).", True
    found = audit.get("source_confounding") or {}
    partial = audit.get("single_source_labels") or {}
    sources = ((config.get("caveats") or {}).get("sources")) or {}
    if not found and partial:
        parts = [f"every {label!r} image comes from {src!r}" for label, src in partial.items()]
        return (
            "Source confounding: checked: **" + "; ".join(parts) + "** (which other labels share): "
            "the source partly predicts the label, so a classifier can score by recognising the "
            "source; compare within one source where you can.",
            True,
        )
    if not found:
        if len(sources) == 1:
            only = next(iter(sources))
            return (
                f"Source confounding: checked: every image comes from one source ({only!r}), so "
                "labels cannot be told apart by source; nor do the results say anything beyond "
                "that source.",
                False,
            )
        return (
            "Source confounding: checked: no label comes from a source that no other label "
            "shares" + (f" (sources: {', '.join(map(str, sources))})." if sources else "."),
            False,
        )
    parts = [f"every {label!r} image comes from {src!r}" for label, src in found.items()]
    return (
        "Source confounding: checked: **" + "; ".join(parts) + "** and no other label does: a "
        "classifier can learn the acquisition pipeline instead of the pathology, so these "
        "numbers overstate what it learned about lesions.",
        True,
    )


def report_warnings(config, metrics, audit, checks) -> list[str]:
    """Warnings derived from the results themselves (metrics.json ``warnings``)."""
    out = []
    small = [r for r in metrics["results"] if r.get("ci_note")]
    if small:
        examples = ", ".join(
            f"{r['features']}/{r['head']}/{r['evaluation']} {r['ci_note']}" for r in small[:3]
        )
        out.append(
            f"small samples: {len(small)} of {len(metrics['results'])} result(s) have fewer than "
            f"{metrics['min_patients_per_class']} patients in some class, so no confidence "
            f"interval is given for them (e.g. {examples}); their point estimates are fragile"
        )
    if metrics.get("optimistic_features"):
        out.append(
            f"optimistic: features {', '.join(metrics['optimistic_features'])} were evaluated on "
            "images their embeddings were trained on"
            + (f" ({config['optimistic_reason']})" if config.get("optimistic_reason") else "")
            + "; their rows are marked optimistic"
        )
    constant = [r for r in metrics["results"] if r.get("constant_predictions")]
    if constant:
        examples = "; ".join(
            f"{r['features']}/{r['head']}/{r['evaluation']}"
            + ("" if r.get("level", "image") == "image" else f"/{r['level']}")
            + f": {r['constant_predictions']}"
            for r in constant[:4]
        )
        out.append(
            f"constant predictions: {len(constant)} result(s) predict (nearly) one class for "
            f"every unit ({examples}); they say nothing about their features set and are left "
            "out of every 'better in N' count"
        )
    if any(r["evaluation"] == "validation" for r in metrics["results"]):
        out.append(
            "HybridNet validation rows chose the stopping epoch (early stopping): they are "
            "optimistic, shown apart, not ranked and not compared; only test rows estimate "
            "performance"
        )
    if any(not a["ok"] for a in audit):
        out.append("leakage audit failed: patients shared between folds or train and test")
    failed = [c["check"] for c in checks if not c["ok"]]
    if failed:
        out.append(f"consistency checks failed: {'; '.join(failed)}")
    return out


def footer_warnings(config: dict, metrics: dict) -> list[str]:
    """Short forms of the report's own warnings for the figure footers (the report has the rest)."""
    out = []
    small = [r for r in metrics["results"] if r.get("ci_note")]
    if small:
        out.append(
            f"small samples: no CI for {len(small)} of {len(metrics['results'])} results (fewer "
            f"than {metrics['min_patients_per_class']} patients in some class; see report.md)"
        )
    if metrics.get("optimistic_features"):
        out.append(
            f"optimistic: {', '.join(metrics['optimistic_features'])} evaluated on images its "
            "embeddings trained on"
        )
    if any(r.get("constant_predictions") for r in metrics["results"]):
        out.append("constant predictions flagged: see report.md")
    if any(r["evaluation"] == "validation" for r in metrics["results"]):
        out.append("validation rows chose the stopping epoch: optimistic")
    found = ((config.get("split_audit") or {}).get("source_confounding")) or {}
    said = " ".join(str(w) for w in (config.get("caveats") or {}).get("warnings") or [])
    for label, src in found.items():
        if not (str(label) in said and str(src) in said):
            out.append(f"source confounding: every {label!r} image comes from {src!r} alone")
    text, warn = source_statement(config)
    if warn and not found:
        out.append(text)
    failed = [c["check"] for c in metrics.get("consistency") or [] if not c["ok"]]
    if failed:
        out.append(f"{len(failed)} consistency check(s) FAILED: see report.md")
    return [f"warning: {w}" for w in out]


# --------------------------------------------------------------------------------------------------
# markdown
