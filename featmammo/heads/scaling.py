"""Per-block transformers inside every head's pipeline: :class:`BlockScaler` (the one scaling
rule) and :class:`BlockPCA`. scikit-learn estimator API; no torch.

They were defined in :mod:`featmammo.fusion` before and stay importable from there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data


def _normalise_blocks(blocks: Any, n_features: int) -> list[tuple[str, int, int]]:
    """``blocks`` (dict name -> slice | (start, stop), or a list of pairs, or None) as a sorted
    list of (name, start, stop) that tiles ``[0, n_features)`` exactly."""
    if blocks is None:
        return [("all", 0, n_features)]
    items = list(blocks.items()) if isinstance(blocks, Mapping) else list(enumerate(blocks))
    out = []
    for name, b in items:
        if isinstance(b, slice):
            start, stop = b.start or 0, b.stop
        else:
            start, stop = b
        out.append((str(name), int(start), int(stop)))
    out.sort(key=lambda t: t[1])
    pos = 0
    for name, start, stop in out:
        if start != pos or stop <= start:
            raise ValueError(
                f"blocks must tile the columns without gaps or overlaps; block {name!r} is "
                f"[{start}, {stop}) but the previous block ends at {pos}"
            )
        pos = stop
    if pos != n_features:
        raise ValueError(f"blocks cover {pos} columns but X has {n_features} features")
    return out


def _column_std(X: np.ndarray, mean: np.ndarray, rows: int = 4096) -> np.ndarray:
    """Population standard deviation of each column, ``rows`` rows at a time (``X.std(axis=0)``
    makes a temporary of X's size), accumulated in float64; returned in X's dtype."""
    acc = np.zeros(X.shape[1], dtype=np.float64)
    for start in range(0, len(X), rows):
        d = X[start : start + rows] - mean
        d *= d
        acc += d.sum(axis=0, dtype=np.float64)
    return np.sqrt(acc / len(X)).astype(X.dtype, copy=False)


class BlockScaler(TransformerMixin, BaseEstimator):
    """Standardise every feature, then (``balance=True``) divide each of the B blocks by
    sqrt(B x its width).

    After balancing each block carries the same total variance (1/B) and a row the total variance
    1 whatever the features set: a 4096-d AlexNet block does not outweigh a 2048-d ResNet50 block
    in distances or in an L2 penalty, and a one-block set (a single backbone) is scaled by the same
    rule as a hybrid, so a given C / alpha / gamma regularises both alike. ``blocks``: mapping
    name -> slice or (start, stop) (``FusedFeatures.blocks``), or None for one block.

    Constant columns (constant on the rows ``fit`` sees: dead units of a random-weight AlexNet
    are ~40 % of its columns) carry no information: they are set to 0 (on new rows too, so a
    value a column never showed in training cannot move a distance), and a block's width counts
    only its varying columns, so every block gets exactly 1/B of the variance; a block with no
    varying column is left out of B (``n_informative_``: varying columns per block).
    """

    def __init__(self, blocks=None, balance: bool = True):
        self.blocks = blocks
        self.balance = balance

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=[np.float32, np.float64])
        self.blocks_ = _normalise_blocks(self.blocks, X.shape[1])
        # the mean accumulated in float64 (a float32 sum drifts ~1e-5 of a constant's value over
        # 1,000 rows, and a constant column then looked like a varying one), kept in X's dtype
        self.mean_ = X.mean(axis=0, dtype=np.float64).astype(X.dtype, copy=False)
        std = _column_std(X, self.mean_)
        # constant up to rounding: a spread below what float error alone could make of the mean
        eps = np.finfo(X.dtype).eps
        constant = std <= 10 * eps * np.maximum(np.abs(self.mean_), 1.0)
        std[constant] = 1.0
        self.scale_ = std
        factor = np.where(constant, 0.0, 1.0).astype(X.dtype)
        widths = [int((~constant[start:stop]).sum()) for _, start, stop in self.blocks_]
        self.n_informative_ = {
            name: w for (name, _, _), w in zip(self.blocks_, widths, strict=True)
        }
        if self.balance:
            n_blocks = sum(w > 0 for w in widths)
            for (_, start, stop), width in zip(self.blocks_, widths, strict=True):
                if width:
                    factor[start:stop] /= np.sqrt(n_blocks * width)
        self.factor_ = factor
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        # one output array, operated on in place (chained operators made two temporaries of X's
        # size: with fit's own row copy, 4x the features at the peak of a fit)
        out = X - self.mean_
        out /= self.scale_
        out *= self.factor_
        return out.astype(X.dtype, copy=False)

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self)
        return np.array(
            [f"{name}:{i}" for name, start, stop in self.blocks_ for i in range(stop - start)],
            dtype=object,
        )


class BlockPCA(TransformerMixin, BaseEstimator):
    """PCA fitted separately on each block; outputs the components side by side.

    ``n_components``: components per block (capped by the block width and the number of samples).
    ``blocks_out_`` gives the output layout (name -> (start, stop)).
    """

    def __init__(self, blocks=None, n_components: int = 64, whiten: bool = False, random_state=0):
        self.blocks = blocks
        self.n_components = n_components
        self.whiten = whiten
        self.random_state = random_state

    def fit(self, X, y=None):
        from sklearn.decomposition import PCA

        X = validate_data(self, X, dtype=[np.float32, np.float64])
        if int(self.n_components) < 1:
            raise ValueError(f"n_components must be >= 1; got {self.n_components}")
        self.blocks_ = _normalise_blocks(self.blocks, X.shape[1])
        self.pcas_ = []
        self.blocks_out_ = {}
        col = 0
        for name, start, stop in self.blocks_:
            k = min(int(self.n_components), stop - start, X.shape[0])
            pca = PCA(n_components=k, whiten=self.whiten, random_state=self.random_state)
            pca.fit(X[:, start:stop])
            self.pcas_.append(pca)
            self.blocks_out_[name] = (col, col + k)
            col += k
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        out = [
            pca.transform(X[:, start:stop])
            for pca, (_, start, stop) in zip(self.pcas_, self.blocks_, strict=True)
        ]
        return np.concatenate(out, axis=1).astype(X.dtype, copy=False)

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self)
        return np.array(
            [f"{name}:pc{i}" for name, (a, b) in self.blocks_out_.items() for i in range(b - a)],
            dtype=object,
        )
