"""Grad-CAM for HybridNet and the ``featmammo explain`` workflow (owned by featmammo.nn).

Grad-CAM (Selvaraju et al. 2017): for a target class, the gradient of its logit with respect to a
convolutional map, averaged over space, weights that map's channels; the ReLU of the weighted sum,
upsampled to the input size and scaled to [0, 1], is the heatmap. HybridNet gives one heatmap per
trunk (ResNet50 ``layer4``, AlexNet's last convolution) and, with feature-map fusion, one for the
refined fused map. Figures are drawn with matplotlib's object API (Figure + FigureCanvasAgg): the
global pyplot backend is never changed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from featmammo.errors import ConfigError

from .model import HybridNet

log = logging.getLogger(__name__)


def grad_cam(
    model: HybridNet, x: torch.Tensor, target: int | list[int] | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Grad-CAM heatmaps of ``x`` (B,3,H,W) for ``target`` (default: the predicted class).

    Returns ``(heatmaps, proba, targets)``: ``heatmaps[layer]`` is (B,H,W) float32 in [0, 1] for
    each layer of :meth:`HybridNet.forward_maps` (``resnet50``, ``alexnet``, ``fused``), ``proba``
    (B,K) the softmax and ``targets`` (B,) the explained class indices. The model is used in eval
    mode.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = x.detach()
            maps = model.forward_maps(x)
            logits = model.forward_from_maps(maps)
            proba = torch.softmax(logits.detach().float(), dim=1)
            if target is None:
                tgt = proba.argmax(1)
            else:
                tgt = torch.as_tensor(target, device=x.device).reshape(-1).expand(x.shape[0])
                if int(tgt.max()) >= logits.shape[1] or int(tgt.min()) < 0:
                    raise ConfigError(
                        f"target class {target} out of range 0..{logits.shape[1] - 1}"
                    )
            score = logits.gather(1, tgt[:, None]).sum()
            names = list(maps)
            grads = torch.autograd.grad(score, [maps[n] for n in names])
        out = {}
        for name, g in zip(names, grads, strict=True):
            a = maps[name].detach().float()
            w = g.float().mean(dim=(2, 3), keepdim=True)
            cam = F.relu((w * a).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
            out[name] = (cam / peak).clamp(0, 1).cpu().numpy().astype(np.float32)
        return out, proba.cpu().numpy(), tgt.cpu().numpy()
    finally:
        model.train(was_training)


def _display_image(x: np.ndarray, mean, std) -> np.ndarray:
    """(3,H,W) normalised input -> (H,W) grey image in [0, 1] for display."""
    g = x[0] * float(std[0]) + float(mean[0])
    lo, hi = float(np.min(g)), float(np.max(g))
    return np.clip((g - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(g)


def overlay(grey: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """(H,W) grey + (H,W) heatmap -> (H,W,3) uint8 RGB (jet colour map)."""
    from matplotlib import colormaps

    heat = colormaps["jet"](cam)[..., :3]
    rgb = (1 - alpha) * grey[..., None] + alpha * heat
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


#: what an all-zero map says on the figure (and in explanations.json)
NO_SIGNAL = "no gradient signal"
#: the Grad-CAM line every figure's footer carries after the run's caveats
GRADCAM_NOTE = (
    "Grad-CAM: where the explained class's gradient-weighted activations are positive in each "
    "layer, each map scaled to its own maximum (maps are not comparable in absolute size); it "
    "shows what drove this network's score, not where a lesion is."
)


def is_empty(cam: np.ndarray) -> bool:
    """True when a heatmap is zero everywhere (no positive evidence for the class in that layer:
    common for an untrained or barely trained network); such a map is never drawn in colour."""
    return not bool(np.any(np.asarray(cam) > 1e-6))


def caveats_of(checkpoint, meta: dict) -> dict:
    """The caveats of checkpoint ``checkpoint`` (``{"weights", "sources", "warnings"}``, the
    format of ``config.json``): from its sidecar (``featmammo train`` records them), else from
    the run's ``config.json`` beside it, else the trunk weights the sidecar records."""
    cav = meta.get("caveats")
    if isinstance(cav, dict) and cav:
        return cav
    config = Path(checkpoint).parent / "config.json"
    if config.is_file():
        try:
            cav = json.loads(config.read_text()).get("caveats")
        except (OSError, ValueError):
            cav = None
        if isinstance(cav, dict) and cav:
            return cav
    from .outputs import weights_caveat

    weights = {a: weights_caveat(a, i) for a, i in (meta.get("trunk_weights") or {}).items()}
    return {"weights": weights, "sources": {}, "warnings": []}


def footer_of(caveats: dict, empty: list[str]) -> list[str]:
    """The footer under a Grad-CAM figure: the run's caveats (weights, sources, warnings, as
    under every report figure), the Grad-CAM note and, when maps are empty, which."""
    from featmammo.report.caveats import footer_text

    extra = [GRADCAM_NOTE]
    if empty:
        extra.append(
            f"{NO_SIGNAL} in {', '.join(empty)}: the map is zero everywhere (no positive "
            "evidence for the class in that layer); drawn grey, not normalised into colour"
        )
    return footer_text({"caveats": caveats}, extra)


def _panel(path: Path, grey, cams: dict, title: str, footer: list[str]) -> None:
    from featmammo.plots import CURVE_SIZE, FOOTER_WIDTH, _figure, _save, footer_lines

    n = 1 + len(cams)
    width = 3.2 * n
    lines = footer_lines(footer, width=int(FOOTER_WIDTH * width / CURVE_SIZE[0]))
    fig = _figure(width, 3.4 + 0.16 * len(lines) + 0.1)  # the footer below, not over the images
    axes = fig.subplots(1, n)
    axes[0].imshow(grey, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("input", fontsize=9)
    for ax, (name, cam) in zip(axes[1:], cams.items(), strict=True):
        if is_empty(cam):  # nothing to colour: the input in grey and the reason across it
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
            ax.text(
                0.5, 0.5, f"{NO_SIGNAL}\n(zero everywhere)", transform=ax.transAxes, ha="center",
                va="center", fontsize=9, color="white", bbox={"facecolor": "black", "alpha": 0.7},
            )  # fmt: skip
            ax.set_title(f"Grad-CAM: {name} ({NO_SIGNAL})", fontsize=9)
        else:
            ax.imshow(overlay(grey, cam))
            ax.set_title(f"Grad-CAM: {name}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    _save(fig, path, footer=footer, left=0.02, right=0.98, top=0.85, wspace=0.08)


def explain(
    checkpoint,
    images,
    out_dir,
    *,
    device: str = "cpu",
    target: str | None = None,
    laterality: str | None = None,
    progress=None,
) -> list[dict]:
    """Grad-CAM heatmaps of a trained HybridNet for image files; writes PNGs and
    ``explanations.json``.

    For each image: ``<stem>_gradcam.png`` (input + one overlay per layer, the caveats of the
    checkpoint's run in a footer: weights, sources, warnings), ``<stem>_<layer>.png`` (overlay at
    the preprocessed input size) and ``<stem>_heatmaps.npz`` (raw heatmaps in [0, 1]). A map that
    is zero everywhere is drawn grey and marked "no gradient signal" (never normalised into
    colour) and listed in ``empty_heatmaps``.
    ``target`` names a class to explain instead of the predicted one; ``progress(1, total)`` is
    called after each image. Returns the JSON records.
    """
    from matplotlib.image import imsave

    from featmammo.devices import resolve_device
    from featmammo.preprocess import PreprocessConfig, load_and_preprocess

    from .checkpoint import load_model

    dev = resolve_device(device)
    model, meta = load_model(checkpoint, device=dev)
    classes = list(model.classes)
    tgt = None
    if target is not None:
        if target not in classes:
            raise ConfigError(
                f"--target {target!r} is not one of the checkpoint's classes {classes}"
            )
        tgt = classes.index(target)
    pre = PreprocessConfig.from_dict(meta["preprocess"])
    caveats = caveats_of(checkpoint, meta)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records, seen = [], {}
    images = list(images)
    for path in images:
        path = Path(path)
        stem = path.stem if path.suffix else path.name
        seen[stem] = seen.get(stem, 0) + 1
        if seen[stem] > 1:  # two inputs with the same file name
            stem = f"{stem}-{seen[stem]}"
        x = np.asarray(load_and_preprocess(path, pre, laterality=laterality), dtype=np.float32)
        cams, proba, tg = grad_cam(model, torch.from_numpy(x)[None].to(dev), tgt)
        grey = _display_image(x, pre.mean, pre.std)
        # an all-zero map: no positive evidence for the class in that layer (common when untrained)
        empty = [k for k, v in cams.items() if is_empty(v[0])]
        files = {}
        for name, cam in cams.items():
            f = out_dir / f"{stem}_{name}.png"
            # an empty map is saved as the grey input: normalised colour would show a pattern
            rgb = np.repeat(grey[..., None], 3, axis=2) if name in empty else overlay(grey, cam[0])
            imsave(f, rgb)
            files[name] = f.name
        np.savez_compressed(out_dir / f"{stem}_heatmaps.npz", **{k: v[0] for k, v in cams.items()})
        pred = classes[int(proba[0].argmax())]
        if empty:
            log.warning(
                "%s: Grad-CAM is zero everywhere for %s (%s: drawn grey, marked on the figure)",
                path.name,
                ", ".join(empty),
                NO_SIGNAL,
            )
        panel = out_dir / f"{stem}_gradcam.png"
        _panel(
            panel,
            grey,
            {k: v[0] for k, v in cams.items()},
            f"{path.name}: predicted {pred} ({proba[0].max():.2f}); "
            f"explained {classes[int(tg[0])]}",
            footer_of(caveats, empty),
        )
        records.append(
            {
                "image": str(path),
                "predicted": pred,
                "probabilities": {c: float(p) for c, p in zip(classes, proba[0], strict=True)},
                "explained_class": classes[int(tg[0])],
                "input_size": list(x.shape[-2:]),
                "heatmaps": files,
                "heatmaps_npz": f"{stem}_heatmaps.npz",
                "empty_heatmaps": empty,
                "panel": panel.name,
            }
        )
        log.info("%s: %s (p=%.3f)", path.name, pred, proba[0].max())
        if progress is not None:
            progress(1, len(images))
    doc = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": meta["sha256"],
        "classes": classes,
        "caveats": caveats,
        "images": records,
    }
    (out_dir / "explanations.json").write_text(json.dumps(doc, indent=2))
    return records
