"""The torch refinement head: a small MLP trained on fused embeddings, with the estimator API.

:class:`RefineMLPClassifier` stores only its parameters in ``__init__``; everything learnt ends in
``_``; ``clone()`` works; ``predict_proba`` returns one column per ``classes_`` (any label type).
Training: Linear -> BatchNorm -> ReLU -> Dropout blocks, AdamW, class-weighted cross-entropy,
early stopping on held-out *patients* (``fit(X, y, groups=patient_ids)``; stratified, random;
without ``groups`` every row counts as its own patient), seeded (same data + seed -> same model
on the CPU), on the CPU or a CUDA device. torch is imported inside ``fit``/``predict_proba`` only;
the fitted network is kept as numpy arrays, so a pickled model is device-independent.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from . import sklearn_heads  # noqa: F401  (registration order: the scikit-learn heads first)
from .registry import register
from .wrappers import class_weights

log = logging.getLogger(__name__)


class RefineMLPClassifier(ClassifierMixin, BaseEstimator):
    """Small MLP on embeddings (scikit-learn API, torch inside).

    Parameters: ``hidden_layer_sizes`` (tuple of widths; empty -> linear softmax), ``dropout``,
    ``batch_norm``, ``learning_rate``, ``weight_decay`` (AdamW), ``batch_size``, ``max_epochs``,
    ``patience`` (epochs without validation-loss improvement before stopping; the best epoch's
    weights are kept), ``validation_fraction`` (0 disables early stopping), ``class_weight``
    (``"balanced"``, dict label -> weight, or None), ``balance`` (``"weights"``: the class
    weights weight the cross-entropy; ``"prior"``: plain cross-entropy, and ``predict_proba``
    multiplies the probabilities by the class weights and renormalises -- the training prior
    divided out, as :class:`~featmammo.heads.wrappers.BalancedClassifier` does; the
    ``refine-mlp`` head uses ``"prior"``), ``standardize`` (z-score inputs with training
    statistics; off by default: inside :func:`featmammo.heads.make` the pipeline's block-balanced
    scaling is the input, and re-standardising would undo the block balance), ``device``
    (``auto``/``cpu``/``cuda``; :func:`featmammo.devices.resolve_device`), ``n_jobs`` (torch CPU
    threads while fitting and predicting; None leaves torch's setting -- 1 is often fastest for
    small MLPs on a busy machine), ``random_state``.
    """

    def __init__(
        self,
        hidden_layer_sizes=(256,),
        dropout: float = 0.3,
        batch_norm: bool = True,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        max_epochs: int = 200,
        patience: int = 15,
        validation_fraction: float = 0.15,
        class_weight="balanced",
        standardize: bool = False,
        device: str = "auto",
        n_jobs: int | None = None,
        random_state: int | None = 0,
        balance: str = "weights",
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight
        self.standardize = standardize
        self.device = device
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.balance = balance

    # ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _threads(self):
        """Use ``n_jobs`` torch threads inside the block, then restore the previous setting."""
        import torch

        if self.n_jobs is None:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(max(1, int(self.n_jobs)))
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _build(self, n_in: int, n_out: int):
        import torch.nn as nn

        layers: list = []
        width = n_in
        for h in tuple(self.hidden_layer_sizes or ()):
            layers.append(nn.Linear(width, int(h)))
            if self.batch_norm:
                layers.append(nn.BatchNorm1d(int(h)))
            layers.append(nn.ReLU())
            if self.dropout:
                layers.append(nn.Dropout(float(self.dropout)))
            width = int(h)
        layers.append(nn.Linear(width, n_out))
        return nn.Sequential(*layers)

    def _resolve_device(self) -> str:
        from ..devices import resolve_device

        return str(resolve_device(self.device))

    def _validate_params(self) -> None:
        if not 0.0 <= float(self.validation_fraction) < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1); got {self.validation_fraction}"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if int(self.batch_size) < 2:
            raise ValueError(f"batch_size must be >= 2; got {self.batch_size}")
        if int(self.max_epochs) < 1:
            raise ValueError(f"max_epochs must be >= 1; got {self.max_epochs}")
        if self.balance not in ("weights", "prior"):
            raise ValueError(f"balance must be 'weights' or 'prior'; got {self.balance!r}")

    def _split(self, y_enc: np.ndarray, groups, seed: int):
        """Train/validation indices holding out whole patients; no validation when too few."""
        from .wrappers import patient_holdout

        split = patient_holdout(y_enc, groups, float(self.validation_fraction), seed)
        if split is None:
            if float(self.validation_fraction) > 0:
                log.warning(
                    "refine-mlp: too few patients per class for an early-stopping hold-out; "
                    "training %d epochs without early stopping",
                    int(self.max_epochs),
                )
            return np.arange(len(y_enc)), np.array([], dtype=int)
        return split

    def fit(self, X, y, groups=None):
        """Fit; ``groups`` (patient ids) make the early-stopping hold-out patient-disjoint."""
        import torch

        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"RefineMLPClassifier needs at least 2 classes; got 1 class ({self.classes_[0]!r})"
            )
        X = np.asarray(X, dtype=np.float32)
        if self.standardize:
            self.mean_ = X.mean(axis=0)
            std = X.std(axis=0)
            std[std < 1e-6] = 1.0
            self.scale_ = std.astype(np.float32)
        else:
            self.mean_ = np.zeros(X.shape[1], dtype=np.float32)
            self.scale_ = np.ones(X.shape[1], dtype=np.float32)
        Xs = (X - self.mean_) / self.scale_

        cw = class_weights(y_enc, len(self.classes_), self.class_weight, self.classes_)
        self.class_weight_ = cw
        if self.balance == "prior":
            cw = np.ones(len(self.classes_))  # plain cross-entropy; the prior goes at predict

        seed = 0 if self.random_state is None else int(self.random_state)
        train_idx, val_idx = self._split(y_enc, groups, seed)
        self.validation_index_ = val_idx  # rows held out for early stopping
        device = self._resolve_device()
        self.device_ = device

        with torch.random.fork_rng(devices=[]), self._threads():
            torch.manual_seed(seed)
            net = self._build(X.shape[1], len(self.classes_)).to(device)
            xt = torch.from_numpy(np.ascontiguousarray(Xs)).to(device)
            yt = torch.from_numpy(y_enc.astype(np.int64)).to(device)
            loss_fn = torch.nn.CrossEntropyLoss(
                weight=torch.tensor(cw, dtype=torch.float32, device=device)
            )
            opt = torch.optim.AdamW(
                net.parameters(),
                lr=float(self.learning_rate),
                weight_decay=float(self.weight_decay),
            )
            gen = torch.Generator().manual_seed(seed)
            bs = int(self.batch_size)
            best_loss, best_state, best_epoch, bad = np.inf, None, 0, 0
            history = []
            epoch = 0
            for epoch in range(1, int(self.max_epochs) + 1):
                net.train()
                perm = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=gen)]
                total = 0.0
                for start in range(0, len(perm), bs):
                    batch = perm[start : start + bs]
                    if len(batch) < 2 and self.batch_norm and len(perm) >= 2:
                        continue  # BatchNorm cannot train on a batch of one
                    batch = batch.to(device)
                    opt.zero_grad()
                    loss = loss_fn(net(xt[batch]), yt[batch])
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(batch)
                train_loss = total / max(len(perm), 1)
                if len(val_idx):
                    net.eval()
                    with torch.no_grad():
                        vi = torch.from_numpy(val_idx).to(device)
                        monitor = float(loss_fn(net(xt[vi]), yt[vi]))
                else:
                    monitor = train_loss
                history.append((train_loss, monitor))
                if monitor < best_loss - 1e-6:
                    best_loss, best_epoch, bad = monitor, epoch, 0
                    best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                else:
                    bad += 1
                    if len(val_idx) and bad >= int(self.patience):
                        break
        if best_state is None:  # the monitored loss was never finite
            raise ValueError(
                "RefineMLPClassifier: the loss was not finite in any epoch "
                f"(last train/monitor loss {history[-1]}); lower learning_rate or check the inputs"
            )
        self.n_iter_ = epoch
        self.best_epoch_ = best_epoch
        self.loss_curve_ = [h[0] for h in history]
        self.validation_scores_ = [h[1] for h in history] if len(val_idx) else None
        self.state_dict_ = {k: v.numpy() for k, v in best_state.items()}
        self.n_layers_ = len(tuple(self.hidden_layer_sizes or ())) + 1
        log.debug(
            "refine-mlp: %d epochs (best %d, monitor loss %.4f) on %s",
            epoch,
            best_epoch,
            best_loss,
            device,
        )
        return self

    def predict_proba(self, X):
        import torch

        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        Xs = (np.asarray(X, dtype=np.float32) - self.mean_) / self.scale_
        net = self._build(self.n_features_in_, len(self.classes_))
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.state_dict_.items()})
        net.eval()
        with torch.no_grad(), self._threads():
            logits = net(torch.from_numpy(np.ascontiguousarray(Xs)))
            proba = torch.softmax(logits.double(), dim=1).numpy()
        if getattr(self, "balance", "weights") == "prior":  # models saved before: "weights"
            proba = proba * self.class_weight_
            proba /= proba.sum(axis=1, keepdims=True)
        return proba

    def predict(self, X):
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


@register(
    "refine-mlp",
    description="torch MLP refinement head (BatchNorm, dropout, early stopping; CPU or CUDA)",
    imbalance="trained with plain cross-entropy; class_weight='balanced' divides the training "
    "prior out of the probabilities (balance='prior')",
    probabilities="softmax, prior-corrected",
    aliases=("mlp-torch",),
)
def _refine_mlp(*, seed: int = 0, **params):
    from .registry import set_routed_params

    return set_routed_params(RefineMLPClassifier(random_state=seed, balance="prior"), params)
