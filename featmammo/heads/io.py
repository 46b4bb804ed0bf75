"""Saving and loading fitted heads in formats that load without executing code.

A saved head is a few files side by side, all named after one stem (``models/hybrid__logreg``):

- ``<stem>.skops``: the scikit-learn pipeline, written by ``skops.io``. Loading it builds only
  types featmammo trusts: skops' own default list (builtins, numpy, the scikit-learn estimators),
  the few scikit-learn internals a fitted head holds (:data:`SKLEARN_INTERNALS`) and featmammo's
  own estimators as the head registry builds them (:func:`featmammo_types`); a file naming any
  other type is refused before anything is built, with the file and the types named
  (:class:`~featmammo.errors.UntrustedModelError`).
- ``<stem>.<n>.xgb.ubj``: each XGBoost model inside the pipeline, in XGBoost's own format (UBJSON);
  the pipeline holds a placeholder (:class:`ExternalPart`) with its parameters.
- ``<stem>.<n>.torch.pt``: each fitted torch refinement head (``refine-mlp``) as a state dict of
  tensors, loaded with ``torch.load(..., weights_only=True)``; its configuration (parameters,
  classes, training record) is JSON text in the placeholder.
- ``<stem>.json``: the sidecar: the head's parameters, the versions of featmammo / scikit-learn /
  XGBoost / torch / numpy / skops, whatever the caller passes (features, store provenance, config),
  the classes, and the SHA-256 of every file above. :func:`load` checks every hash first.

Models saved by featmammo before this format (``<stem>.joblib``, a pickle) load only with
``trust_pickle=True`` (``featmammo predict --trust-pickle``) and a warning: unpickling runs whatever
code the file holds, and a SHA-256 only proves the file is the one written beside its sidecar, not
that it is safe. Re-fit to get the safe format.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import logging
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..errors import ConfigError, UntrustedModelError, WeightsError
from ..hashing import sha256_file

log = logging.getLogger(__name__)

FORMAT = "featmammo-head"
FORMAT_VERSION = 2  # 1: one .joblib pickle; 2: .skops + native XGBoost / torch state dict files
MODEL_SUFFIX = ".skops"
LEGACY_SUFFIX = ".joblib"
_RESERVED = ("format", "format_version", "model_file", "sha256", "files", "created", "versions")

#: scikit-learn internals that fitted built-in heads hold and skops does not trust by default
#: (``tests/test_model_files.py`` fits every registered head and fails naming any type missing).
SKLEARN_INTERNALS = (
    "sklearn.tree._tree.Tree",  # rf: the fitted trees
    "sklearn.neighbors._kd_tree.KDTree",  # knn: the neighbour search tree
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",  # knn: the trees' metric
    "sklearn.metrics._dist_metrics.EuclideanDistance32",
    "sklearn.metrics._dist_metrics.ManhattanDistance64",
    "sklearn.metrics._dist_metrics.MinkowskiDistance64",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",  # mlp: optimiser state
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
)


# --- versions and JSON-friendly parameters -------------------------------------------------------


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
        "skops": _version("skops"),
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


# --- trusted types -------------------------------------------------------------------------------


def _type_name(obj) -> str:
    t = obj if isinstance(obj, type) else type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _estimators_in(obj, seen: set[int] | None = None):
    """Every estimator object reachable from ``obj`` through its parameters and pipeline steps."""
    from sklearn.base import BaseEstimator

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, BaseEstimator):
        yield obj
        for value in obj.get_params(deep=False).values():
            yield from _estimators_in(value, seen)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _estimators_in(value, seen)
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _estimators_in(value, seen)


@functools.lru_cache(maxsize=1)
def featmammo_types() -> frozenset[str]:
    """featmammo's own types a saved head may hold, taken from the head registry: every estimator
    :func:`featmammo.heads.make` builds for every registered head (one block, several blocks, and
    per-block PCA), plus :class:`ExternalPart`. Types of other packages are not taken from here."""
    from . import registry

    names = {_type_name(ExternalPart)}
    for head in registry.available():
        for kwargs in ({}, {"blocks": {"a": slice(0, 1), "b": slice(1, 2)}}, {"block_pca": 1}):
            for est in _estimators_in(registry.make(head, **kwargs)):
                name = _type_name(est)
                if name.startswith("featmammo."):
                    names.add(name)
    return frozenset(names)


def trusted_types() -> frozenset[str]:
    """The types :func:`load` lets skops build beyond skops' own default list (builtins, numpy,
    scipy sparse matrices and the scikit-learn estimators skops trusts by name):
    :data:`SKLEARN_INTERNALS` and :func:`featmammo_types`. Anything else is refused."""
    return frozenset(SKLEARN_INTERNALS) | featmammo_types()


def _untrusted(types) -> list[str]:
    allowed = trusted_types()
    return sorted(t for t in types if t not in allowed)


# --- parts kept in their own native files ------------------------------------------------------


class ExternalPart:
    """Placeholder in a saved pipeline for a part stored in its own file.

    ``kind``: ``"xgboost"`` (``file`` = the model in XGBoost's UBJSON format, or None for an
    unfitted template; ``params`` = its ``get_params()``) or ``"torch-refine"`` (``file`` = the
    state dict, ``config`` = JSON text with the parameters and fitted attributes).
    """

    def __init__(self, kind: str, file: str | None, params: dict | None = None, config: str = ""):
        self.kind = kind
        self.file = file
        self.params = params or {}
        self.config = config

    def __repr__(self) -> str:
        return f"ExternalPart({self.kind!r}, {self.file!r})"


def _is_xgboost(obj) -> bool:
    return _type_name(obj).startswith("xgboost.") and hasattr(obj, "get_xgb_params")


def _is_refine(obj) -> bool:
    from .refine import RefineMLPClassifier

    return isinstance(obj, RefineMLPClassifier) and hasattr(obj, "state_dict_")


def _walk(obj, seen: set[int]):
    """Objects reachable from ``obj`` through attributes, lists, tuples and dicts (read only)."""
    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, np.ndarray, type(None))):
        return
    seen.add(id(obj))
    yield obj
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        children = list(vars(obj).values())
    else:
        children = []
    for child in children:
        yield from _walk(child, seen)


def _refine_part(clf, file: str) -> tuple[ExternalPart, dict]:
    """The placeholder (parameters and fitted attributes as JSON) and the tensors (the network's
    state dict under ``net.``, numeric fitted arrays under ``attr.``) of a fitted refine-mlp."""
    import torch

    tensors = {
        f"net.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in clf.state_dict_.items()
    }
    arrays, attrs = {}, {}
    for name, value in vars(clf).items():
        if not name.endswith("_") or name == "state_dict_":
            continue
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            try:
                tensors[f"attr.{name}"] = torch.from_numpy(np.ascontiguousarray(value))
                continue
            except TypeError:  # a dtype torch has no tensor for
                pass
        if isinstance(value, np.ndarray):
            arrays[name] = {"values": _plain(value.tolist(), clf, name), "dtype": value.dtype.str}
        else:
            attrs[name] = _plain(value, clf, name)
    params = _plain(clf.get_params(deep=False), clf, "params")
    config = {"params": params, "arrays": arrays, "attrs": attrs}
    return ExternalPart("torch-refine", file, config=json.dumps(config, sort_keys=True)), tensors


def _plain(value, owner, name):
    """``value`` as JSON data (numpy scalars become Python numbers), or ConfigError: a fitted
    attribute that is not plain data cannot be saved without pickling it."""

    def default(v):
        if isinstance(v, np.generic):
            return v.item()
        raise TypeError(f"{type(v).__name__} is not plain data")

    try:
        return json.loads(json.dumps(value, default=default))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{type(owner).__name__}.{name}: {exc}; it cannot be saved as JSON beside the "
            "state dict"
        ) from exc


def _externalise(model, stem: str) -> tuple[Any, dict[str, bytes]]:
    """A copy of ``model`` with every XGBoost model and fitted refine-mlp replaced by an
    :class:`ExternalPart`, and the bytes of the files those parts name."""
    memo: dict[int, Any] = {}
    files: dict[str, bytes] = {}
    n = 0
    for obj in _walk(model, set()):
        if _is_xgboost(obj):
            fitted = getattr(obj, "_Booster", None) is not None
            name = f"{stem}.{n}.xgb.ubj" if fitted else None
            if fitted:
                files[name] = bytes(obj.get_booster().save_raw(raw_format="ubj"))
            params = {k: v for k, v in obj.get_params(deep=False).items() if v is not None}
            memo[id(obj)] = ExternalPart("xgboost", name, params=params)
            n += 1
        elif _is_refine(obj):
            import torch

            name = f"{stem}.{n}.torch.pt"
            memo[id(obj)], tensors = _refine_part(obj, name)
            buffer = io.BytesIO()
            torch.save(tensors, buffer)
            files[name] = buffer.getvalue()
            n += 1
    if not memo:
        return model, files
    return copy.deepcopy(model, memo), files


def _rebuild_part(part: ExternalPart, folder: Path, allowed: dict[str, str]):
    if part.file is not None and (Path(part.file).name != part.file or part.file not in allowed):
        raise UntrustedModelError(
            f"{folder}: the model names a part file {part.file!r} that its sidecar does not "
            "list (or that is outside the model's folder); not loading it"
        )
    if part.kind == "xgboost":
        from xgboost import XGBClassifier

        model = XGBClassifier(**part.params)
        if part.file is not None:
            model.load_model(bytearray((folder / part.file).read_bytes()))
        return model
    if part.kind == "torch-refine":
        import torch

        from .refine import RefineMLPClassifier

        config = json.loads(part.config)
        params = config["params"]
        if isinstance(params.get("hidden_layer_sizes"), list):
            params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
        clf = RefineMLPClassifier(**params)
        tensors = torch.load(folder / part.file, map_location="cpu", weights_only=True)
        clf.state_dict_ = {k[4:]: v.numpy() for k, v in tensors.items() if k.startswith("net.")}
        for key, value in tensors.items():
            if key.startswith("attr."):
                setattr(clf, key[5:], value.numpy())
        for name, spec in config["arrays"].items():
            setattr(clf, name, np.asarray(spec["values"], dtype=np.dtype(spec["dtype"])))
        for name, value in config["attrs"].items():
            setattr(clf, name, value)
        return clf
    raise UntrustedModelError(f"{folder}: unknown model part kind {part.kind!r}")


def _internalise(model, folder: Path, allowed: dict[str, str]):
    parts = [obj for obj in _walk(model, set()) if isinstance(obj, ExternalPart)]
    if not parts:
        return model
    memo = {id(p): _rebuild_part(p, folder, allowed) for p in parts}
    return copy.deepcopy(model, memo)


# --- paths ---------------------------------------------------------------------------------------


def _stem(path) -> Path:
    p = Path(path)
    if p.suffix in (MODEL_SUFFIX, LEGACY_SUFFIX, ".json"):
        return p.with_suffix("")
    return p


def _with(stem: Path, suffix: str) -> Path:
    """``<stem><suffix>``. Not ``stem.with_suffix``: a stem may hold a dot of its own
    (``mammoclip__ckpt.tar__logreg``, ``timm_convnext_atto.d2_in1k__knn``), which with_suffix
    would replace, so every head of that features set would write one file."""
    return stem.with_name(stem.name + suffix)


def _paths(path) -> tuple[Path, Path]:
    """``(model file, sidecar)`` for a model named by its file, its sidecar or its stem. The model
    file is the one the sidecar names when it exists (a model asked for by its old ``.joblib``
    name still resolves), else ``<stem>`` with that file's suffix (a renamed copy:
    ``m.skops`` + ``m.json``); without a sidecar, ``<stem>.skops`` or an old ``<stem>.joblib``."""
    stem = _stem(path)
    sidecar = _with(stem, ".json")
    model = _with(stem, MODEL_SUFFIX)
    if sidecar.exists():
        try:
            named = json.loads(sidecar.read_text()).get("model_file")
        except (OSError, ValueError, AttributeError):
            named = None
        if isinstance(named, str) and named and Path(named).name == named:
            suffix = (
                Path(named).suffix if Path(named).suffix in (MODEL_SUFFIX, LEGACY_SUFFIX) else ""
            )
            model = stem.parent / named
            if not model.exists() and suffix:
                model = _with(stem, suffix)
    elif not model.exists() and _with(stem, LEGACY_SUFFIX).exists():
        model = _with(stem, LEGACY_SUFFIX)
    return model, sidecar


# --- save / load ---------------------------------------------------------------------------------


def save(model, path, sidecar: dict | None = None) -> Path:
    """Write ``model`` as ``<stem>.skops`` (plus its XGBoost / torch part files) and the sidecar
    ``<stem>.json``; return the ``.skops`` path.

    ``path`` names the stem (a ``.skops``, ``.json`` or legacy ``.joblib`` suffix is replaced).
    ``sidecar``: the caller's provenance (features, store fingerprint/provenance, head name,
    config); featmammo adds the format, every file's SHA-256, the creation time, package versions,
    the head parameters and the classes. A model holding a type :func:`load` would refuse is not
    saved (ConfigError naming the types), so every saved head loads.
    """
    import skops.io as sio

    stem = _stem(path)
    model_path, sidecar_path = _with(stem, MODEL_SUFFIX), _with(stem, ".json")
    safe, parts = _externalise(model, stem.name)
    data = sio.dumps(safe)
    refused = _untrusted(sio.get_untrusted_types(data=data))
    if refused:
        raise ConfigError(
            f"{model_path}: the model holds types featmammo does not load ({', '.join(refused)}); "
            "only scikit-learn, numpy, XGBoost (native format), refine-mlp (state dict) and the "
            "estimators featmammo.heads.make builds can be saved"
        )
    files = {}
    for name, blob in parts.items():
        atomic_write(stem.parent / name, lambda f, blob=blob: f.write(blob))
        files[name] = sha256_file(stem.parent / name)
    atomic_write(model_path, lambda f: f.write(data))
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
            "files": files,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        }
    )
    text = json.dumps(info, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(sidecar_path, lambda f: f.write(text.encode()))
    # the folder may be a fit's staging folder: name the file only (fit names the run folder)
    log.debug("saved head %s (sha256 %s…)", model_path.name, digest[:12])
    return model_path


def model_files(path) -> list[Path]:
    """Every file of a saved head (model file, part files, sidecar), e.g. to copy a model."""
    model_path, sidecar_path = _paths(path)
    info = read_sidecar(model_path)
    return [model_path, *(model_path.parent / n for n in info.get("files", {})), sidecar_path]


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
    if not isinstance(info, dict) or info.get("format") != FORMAT or not info.get("sha256"):
        raise WeightsError(f"{sidecar_path}: not a featmammo head sidecar (format/sha256 missing)")
    return info


def _check_hash(path: Path, expected: str, sidecar_path: Path) -> None:
    if not path.exists():
        raise WeightsError(f"{path}: model file missing (sidecar {sidecar_path.name} exists)")
    digest = sha256_file(path)
    if digest != expected:
        raise WeightsError(
            f"{path}: SHA-256 mismatch (file {digest}, sidecar {sidecar_path.name} records "
            f"{expected}); the file was modified or corrupted after saving; not loading it"
        )


def load(path, *, trust_pickle: bool = False) -> tuple[Any, dict]:
    """Load a head saved by :func:`save`: ``(model, sidecar)``.

    ``path``: the ``.skops`` file, the sidecar or the stem. Every file's SHA-256 is checked against
    the sidecar first; then the skops file's types are checked against :func:`trusted_types` and any
    other type is refused (:class:`~featmammo.errors.UntrustedModelError` naming the file and the
    types) before anything is built. XGBoost parts load from their native files, refine-mlp parts
    with ``torch.load(weights_only=True)``.

    A model in the old pickle format (``.joblib``) is refused unless ``trust_pickle=True``: then
    it is unpickled after its hash check, with a warning (unpickling runs code from the file).
    """
    model_path, sidecar_path = _paths(path)
    info = read_sidecar(model_path)
    _check_hash(model_path, info["sha256"], sidecar_path)
    parts = info.get("files") or {}
    if not isinstance(parts, dict):
        raise WeightsError(f"{sidecar_path}: 'files' is not a mapping of file name to SHA-256")
    for name, digest in parts.items():
        if Path(name).name != name:
            raise UntrustedModelError(f"{sidecar_path}: part file {name!r} is outside its folder")
        _check_hash(model_path.parent / name, digest, sidecar_path)
    _warn_versions(model_path, info)
    if model_path.suffix == LEGACY_SUFFIX or info.get("format_version") == 1:
        return _load_pickle(model_path, trust_pickle), info
    if model_path.suffix != MODEL_SUFFIX:
        raise WeightsError(f"{model_path}: not a featmammo model file (expected {MODEL_SUFFIX})")
    return _load_skops(model_path, parts), info


def _load_skops(model_path: Path, parts: dict[str, str]):
    import skops.io as sio

    try:
        found = sio.get_untrusted_types(file=model_path)
    except Exception as exc:  # a zip that is not a skops file, a damaged archive
        raise WeightsError(f"{model_path}: not a readable skops model file ({exc})") from exc
    refused = _untrusted(found)
    if refused:
        raise UntrustedModelError(
            f"{model_path}: refusing to load: it holds types featmammo does not trust "
            f"({', '.join(refused)}). A head saved by featmammo holds only scikit-learn, numpy and "
            "featmammo types; this file was written by something else or altered. Trusted: "
            "featmammo.heads.io.trusted_types()"
        )
    try:
        model = sio.load(model_path, trusted=list(found))
    except Exception as exc:
        raise WeightsError(
            f"{model_path}: could not be loaded ({type(exc).__name__}: {exc})"
        ) from exc
    return _internalise(model, model_path.parent, parts)


def _load_pickle(model_path: Path, trust_pickle: bool):
    if not trust_pickle:
        raise UntrustedModelError(
            f"{model_path}: a pickle (the .joblib format of featmammo before skops): loading it "
            "runs whatever code the file holds, and its SHA-256 proves only that it is the file "
            "written beside its sidecar. Re-fit to get a safe .skops model, or, only if you trust "
            "where this file comes from, load it with trust_pickle=True (featmammo predict "
            "--trust-pickle)"
        )
    import joblib

    log.warning(
        "%s: unpickling a .joblib model because trust_pickle was given: this runs any code the "
        "file holds; re-fit to get a .skops model that loads without executing code",
        model_path,
    )
    return joblib.load(model_path)


def _warn_versions(model_path: Path, info: dict) -> None:
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
