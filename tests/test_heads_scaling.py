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


def test_column_std_in_row_chunks_matches_numpy():
    """BlockScaler's std is accumulated a few rows at a time (X.std(axis=0) makes a temporary of
    X's size): the same figures as numpy's, in X's dtype, whatever the chunking."""
    from featmammo.heads.scaling import _column_std

    rng = np.random.default_rng(3)
    X = (rng.normal(size=(53, 9)) * [1, 10, 1e-3, 5, 0, 2, 3, 4, 1e4] + 7).astype(np.float32)
    for rows in (1, 7, 53, 4096):
        got = _column_std(X, X.mean(axis=0), rows=rows)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, X.astype(np.float64).std(axis=0), rtol=1e-5, atol=1e-6)
    assert _column_std(X, X.mean(axis=0))[4] == 0  # a constant column stays exactly 0


def test_transform_leaves_its_input_alone_and_keeps_its_dtype():
    from featmammo.heads.scaling import BlockScaler

    rng = np.random.default_rng(4)
    X = rng.normal(size=(40, 6)).astype(np.float32)
    before = X.copy()
    sc = BlockScaler(blocks={"a": slice(0, 2), "b": slice(2, 6)}).fit(X)
    out = sc.transform(X)
    np.testing.assert_array_equal(X, before)
    assert out.dtype == np.float32 and not np.shares_memory(out, X)
    expect = (X - sc.mean_) / sc.scale_ * sc.factor_
    np.testing.assert_array_equal(out, expect.astype(np.float32))


def test_a_constant_that_is_not_zero_is_found_over_many_rows():
    """A float32 mean drifts ~1e-5 of a constant's value over 1,000 rows: the column then looked
    varying, counted in its block's width, and a new row's 0 there became about -65,000."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1000, 3)).astype(np.float32)
    X[:, 0] = 3.7
    sc = BlockScaler(blocks={"a": slice(0, 3)}).fit(X)
    assert sc.factor_[0] == 0 and sc.n_informative_ == {"a": 2}
    assert np.all(sc.transform(np.zeros((1, 3), np.float32))[:, 0] == 0)
