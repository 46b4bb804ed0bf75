"""BlockScaler: constant columns (dead units of a random-weight AlexNet: ~40 % of its columns) do
not count toward a block's width, so every block carries exactly 1/B of the variance."""

from __future__ import annotations

import numpy as np
import pytest

from featmammo.heads.scaling import BlockScaler

BLOCKS = {"resnet50": slice(0, 30), "alexnet": slice(30, 80), "vgg16": slice(80, 100)}


def _with_dead_units(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.normal(1.0, 2.0, size=(n, 100)), 0).astype(np.float32) * 7
    X[:, 30:50] = 0.0  # 40 % of the alexnet block: dead ReLU units
    X[:, 5] = 3.25  # a constant that is not zero
    return X


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_block_gets_exactly_one_over_b_with_constant_columns(dtype):
    X = _with_dead_units().astype(dtype)
    scaler = BlockScaler(blocks=BLOCKS).fit(X)
    Z = scaler.transform(X)
    for name, cols in BLOCKS.items():
        np.testing.assert_allclose(Z[:, cols].var(axis=0).sum(), 1 / 3, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(Z.var(axis=0).sum(), 1.0, rtol=1e-5)
    assert scaler.n_informative_ == {"resnet50": 29, "alexnet": 30, "vgg16": 20}


def test_constant_columns_are_zero_on_new_rows_too():
    X = _with_dead_units()
    scaler = BlockScaler(blocks=BLOCKS).fit(X)
    new = _with_dead_units(n=10, seed=1)
    new[:, 30:50] = 5.0  # a unit that never fired in training fires now
    Z = scaler.transform(new)
    np.testing.assert_array_equal(Z[:, 30:50], 0.0)
    np.testing.assert_array_equal(Z[:, 5], 0.0)
    assert np.isfinite(Z).all()


def test_an_all_constant_block_is_left_out_of_b():
    X = _with_dead_units()
    X[:, 80:100] = 1.5
    scaler = BlockScaler(blocks=BLOCKS).fit(X)
    Z = scaler.transform(X)
    np.testing.assert_allclose(Z[:, BLOCKS["resnet50"]].var(axis=0).sum(), 0.5, rtol=1e-5)
    np.testing.assert_allclose(Z[:, BLOCKS["alexnet"]].var(axis=0).sum(), 0.5, rtol=1e-5)
    np.testing.assert_array_equal(Z[:, 80:100], 0.0)
    assert scaler.n_informative_["vgg16"] == 0


def test_unbalanced_scaling_standardises_and_zeroes_constants():
    X = _with_dead_units()
    Z = BlockScaler(blocks=BLOCKS, balance=False).fit_transform(X)
    var = Z.var(axis=0)
    constant = np.zeros(100, bool)
    constant[30:50] = constant[5] = True
    np.testing.assert_allclose(var[~constant], 1.0, rtol=1e-4)
    np.testing.assert_array_equal(var[constant], 0.0)
