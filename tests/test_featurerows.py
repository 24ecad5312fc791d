"""Sparse feature rows (bayesmf.featurerows) and the link block on them: the same numbers as the dense matrix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayesmf import featurerows, link
from bayesmf.featurerows import FeatureRows, implicit_rows


def rows(seed=0, n=30, num_other=12, pairs=80, num_side=3, dtype=jnp.float32) -> FeatureRows:
    rng = np.random.default_rng(seed)
    side = rng.normal(size=(n, num_side)) if num_side else None
    # Repeated pairs count once; rows 0-1 get no pairs (they sit at -c).
    return implicit_rows(rng.integers(2, n, pairs), rng.integers(0, num_other, pairs), n, num_other, side, dtype)


def test_implicit_rows_match_the_dense_definition():
    x = rows()
    dense = np.asarray(x, np.float64)
    expected = featurerows.implicit_features(*_pairs(0, 30, 12, 80), 30, 12) - featurerows.implicit_mean(*_pairs(0, 30, 12, 80), 30, 12)
    np.testing.assert_allclose(dense[:, 3:], expected, atol=1e-6)
    np.testing.assert_allclose(dense[:, 3:].mean(axis=0), 0.0, atol=1e-6)  # centred on the training rows
    assert x.shape == (30, 15) and x.num_side == 3


@pytest.mark.parametrize("side", ["user", "item"])
def test_training_implicit_mean_is_the_centre_of_the_training_rows(side):
    from bayesmf.synthetic import movielens_like

    train = movielens_like(0, num_users=40, num_items=25, num_ratings=400, rank=2, min_per_user=3).ratings
    centre = featurerows.training_implicit_mean(train, side)
    assert centre.dtype == np.float64 and centre.shape == ((train.num_items,) if side == "user" else (train.num_users,))
    np.testing.assert_array_equal(jnp.asarray(centre, jnp.float32), featurerows.training_implicit_rows(train, side).centre)


def _pairs(seed, n, num_other, pairs):
    rng = np.random.default_rng(seed)
    rng.normal(size=(n, 3))  # the side draw of rows(), so that the pairs are the same
    return rng.integers(2, n, pairs), rng.integers(0, num_other, pairs)


@pytest.mark.parametrize("num_side", [0, 3])
def test_products_match_the_dense_matrix(num_side):
    x = rows(num_side=num_side)
    dense = np.asarray(x, np.float64)
    rng = np.random.default_rng(1)
    b = rng.normal(size=(x.shape[1], 4)).astype(np.float32)
    y = rng.normal(size=(x.shape[0], 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(x @ b), dense @ b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(x.T @ y), dense.T @ y, rtol=1e-5, atol=1e-5)
    # Under jit, as a pytree argument.
    np.testing.assert_allclose(np.asarray(jax.jit(lambda m, v: m @ v)(x, b)), dense @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_side", [0, 3])
def test_column_square_sums_match_the_dense_matrix(num_side):
    """sum_u w_u X_uf^2 from the entries and the centre equals the dense columns' (rows 0-1 have no
    entries, so only the centre's part reaches them). float32 sums of 30 terms: 1e-5 relative."""
    x = rows(num_side=num_side)
    dense = np.asarray(x, np.float64)
    w = np.random.default_rng(2).integers(1, 50, x.shape[0]).astype(np.float32)
    expected = (dense**2).T @ w
    np.testing.assert_allclose(featurerows.column_square_sums(x, jnp.asarray(w)), expected, rtol=1e-5)
    np.testing.assert_allclose(featurerows.column_square_sums(dense.astype(np.float32), jnp.asarray(w)), expected,
                               rtol=1e-5)


@pytest.mark.parametrize("n, num_other", [(30, 12), (12, 30)], ids=["primal", "dual"])
@pytest.mark.parametrize("num_side", [0, 3])
def test_link_system_on_feature_rows_solves_as_the_dense_one(x64, n, num_other, num_side):
    """Primal (F_e <= n: X_e^T X_e eigendecomposed) and dual (F_e > n: X_e X_e^T) against NumPy's dense
    solve of K = X^T X + diag(lambda), with and without side columns."""
    x = rows(n=n, num_other=num_other, pairs=3 * n, num_side=num_side, dtype=jnp.float64)
    groups = np.r_[np.zeros(num_side, int), np.full(num_other, int(num_side > 0))]
    system = link.link_system(x, groups, dtype=jnp.float64)
    assert system.primal == (num_other <= n)
    assert system.basis.shape == (min(n, num_other),) * 2
    lam = np.array([0.7, 2.3])[: groups.max() + 1]
    dense = np.asarray(x, np.float64)
    rng = np.random.default_rng(2)
    rhs = rng.normal(size=(x.shape[1], 3))
    expected = np.linalg.solve(dense.T @ dense + np.diag(lam[groups]), rhs)
    np.testing.assert_allclose(np.asarray(link.link_solve(system, jnp.asarray(rhs), jnp.asarray(lam))), expected,
                               rtol=1e-8, atol=1e-8)
    # A draw with given variates is the perturb-and-solve formula on the dense matrix.
    factors, mean = rng.normal(size=(n, 2)), rng.normal(size=2)
    precision = np.array([[2.0, 0.3], [0.3, 1.5]])
    z = rng.normal(size=(n + x.shape[1], 2))
    got = link.link_draw_from(jnp.asarray(z), system, jnp.asarray(factors), jnp.asarray(mean),
                              jnp.asarray(precision), jnp.asarray(lam))
    c_inv = np.linalg.inv(np.linalg.cholesky(precision))
    rhs = dense.T @ (factors - mean + z[:n] @ c_inv) + np.sqrt(lam[groups])[:, None] * (z[n:] @ c_inv)
    np.testing.assert_allclose(np.asarray(got), np.linalg.solve(dense.T @ dense + np.diag(lam[groups]), rhs),
                               rtol=1e-8, atol=1e-8)


def test_dual_solve_in_float32():
    """The dual form subtracts before dividing by lambda_e; in float32 at lambda_e = 0.5 its solve stays
    within 1e-3 (relative to the solution's scale) of the float64 dense solve."""
    x = rows(n=40, num_other=120, pairs=400, num_side=2)
    groups = np.r_[np.zeros(2, int), np.ones(120, int)]
    system = link.link_system(x, groups)
    assert not system.primal
    lam = np.array([3.0, 0.5])
    dense = np.asarray(x, np.float64)
    rhs = np.random.default_rng(3).normal(size=(x.shape[1], 4))
    expected = np.linalg.solve(dense.T @ dense + np.diag(lam[groups]), rhs)
    got = np.asarray(link.link_solve(system, jnp.asarray(rhs, jnp.float32), jnp.asarray(lam, jnp.float32)))
    assert np.max(np.abs(got - expected)) < 1e-3 * np.max(np.abs(expected))
