"""Saving and loading fitted heads: ``<model>.joblib`` plus a ``<model>.json`` sidecar.

The sidecar records the head's parameters, the versions of featmammo / scikit-learn / XGBoost /
torch / numpy, whatever the caller passes (features, store fingerprint and provenance, config), the
classes, and the SHA-256 of the model file. :func:`load` recomputes the SHA-256 and refuses to
unpickle a file that does not match.

Security: a ``.joblib`` file is a pickle, and unpickling runs code chosen by whoever wrote the file.
Load only model files you (or someone you trust) produced. The hash check guards a *known* file
against corruption and tampering after it was saved (a changed file no longer matches its sidecar);
it is not a defence against a malicious file shipped together with a matching sidecar.
"""

from __future__ import annotations

import json
import logging
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..errors import WeightsError
from ..hashing import sha256_file

log = logging.getLogger(__name__)

FORMAT = "featmammo-head"
FORMAT_VERSION = 1
_RESERVED = ("format", "format_version", "model_file", "sha256", "created", "versions")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of the packages a saved head depends on (from metadata; torch is not imported)."""
    from .._version import __version__

    return {
        "featmammo": __version__,
        "scikit-learn": _version("scikit-learn"),
        "xgboost": _version("xgboost"),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "joblib": _version("joblib"),
        "python": platform.python_version(),
    }


def _jsonable(value: Any) -> Any:
    """JSON-friendly form of a parameter value (estimators and odd objects become their repr)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, slice):
        return [value.start, value.stop]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 1000 else f"<array {value.shape} {value.dtype}>"
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def head_params(model) -> dict[str, Any]:
    """The model's ``get_params(deep=True)`` without nested estimator objects, JSON-friendly."""
    from sklearn.base import BaseEstimator

    params = model.get_params(deep=True) if hasattr(model, "get_params") else {}
    out = {}
    for k, v in params.items():
        if isinstance(v, BaseEstimator) or k == "steps":
            continue
        out[k] = _jsonable(v)
    return out


def _paths(path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix == ".json":
        p = p.with_suffix(".joblib")
    elif p.suffix != ".joblib":
        p = p.with_name(p.name + ".joblib")
    return p, p.with_suffix(".json")


def save(model, path, sidecar: dict | None = None) -> Path:
    """Write ``model`` to ``<path>.joblib`` and a sidecar to ``<path>.json``; return the model path.

    ``path`` may end in ``.joblib`` (or name the stem). ``sidecar``: caller's provenance (features,
    store fingerprint/provenance, head name, config); featmammo adds the format, the model file's
    SHA-256, the creation time, package versions, the head parameters and the classes.
    """
    import joblib

    model_path, sidecar_path = _paths(path)
    atomic_write(model_path, lambda f: joblib.dump(model, f))
    digest = sha256_file(model_path)

    info: dict[str, Any] = {k: _jsonable(v) for k, v in dict(sidecar or {}).items()}
    clash = [k for k in _RESERVED if k in info]
    if clash:
        log.warning(
            "sidecar keys %s are written by featmammo; the caller's values are replaced", clash
        )
    info.setdefault("params", head_params(model))
    classes = getattr(model, "classes_", None)
    if classes is not None:
        info.setdefault("classes", _jsonable(list(classes)))
    info.update(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_file": model_path.name,
            "sha256": digest,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        }
    )
    text = json.dumps(info, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(sidecar_path, lambda f: f.write(text.encode()))
    log.info("saved head to %s (sha256 %s…)", model_path, digest[:12])
    return model_path


def read_sidecar(path) -> dict:
    """The JSON sidecar of a saved head (WeightsError if missing or unreadable)."""
    model_path, sidecar_path = _paths(path)
    if not sidecar_path.exists():
        raise WeightsError(
            f"{sidecar_path}: sidecar missing for {model_path.name}; without its recorded SHA-256 "
            "the model file cannot be verified, so it is not loaded"
        )
    try:
        info = json.loads(sidecar_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{sidecar_path}: unreadable sidecar ({exc})") from exc
    if info.get("format") != FORMAT or not info.get("sha256"):
        raise WeightsError(f"{sidecar_path}: not a featmammo head sidecar (format/sha256 missing)")
    return info


def load(path) -> tuple[Any, dict]:
    """Load a head saved by :func:`save`: ``(model, sidecar)``.

    The model file's SHA-256 is checked against the sidecar *before* unpickling; a mismatch raises
    WeightsError. Only load files you trust: joblib files are pickles (see the module docstring).
    """
    import joblib

    model_path, sidecar_path = _paths(path)
    info = read_sidecar(model_path)
    if not model_path.exists():
        raise WeightsError(f"{model_path}: model file missing (sidecar {sidecar_path.name} exists)")
    digest = sha256_file(model_path)
    if digest != info["sha256"]:
        raise WeightsError(
            f"{model_path}: SHA-256 mismatch (file {digest}, sidecar {sidecar_path.name} records "
            f"{info['sha256']}); the file was modified or corrupted after saving; not loading it"
        )
    now = versions()
    for pkg in ("scikit-learn", "xgboost"):
        saved = (info.get("versions") or {}).get(pkg)
        if saved and now.get(pkg) and saved != now[pkg]:
            log.warning(
                "%s: saved with %s %s, loading with %s; results may differ",
                model_path,
                pkg,
                saved,
                now[pkg],
            )
    model = joblib.load(model_path)
    return model, info
