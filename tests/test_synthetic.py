"""Synthetic data: shapes, distinct pairs, the minimum per user, determinism per seed,
stars on the scale, power-law skew, the without-replacement law of each user's
movies, and the expected rating against Monte Carlo."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesmf import synthetic
from bayesmf.synthetic import SHAPES, movielens_like, sample_pairs

# Monte Carlo checks pass when the error is within this many standard errors
# (a normal deviate beyond 5 sd has probability ~6e-7 per check).
Z_TOL = 5.0
# The skew asked of the MovieLens shapes: the 10% most active users (and the
# 10% most popular movies) hold more than this share of the ratings
# (ML-1M itself: 37% and 49%).
TOP_DECILE_SHARE = 0.30


def keys_of(users, items, num_items):
    return users.astype(np.int64) * num_items + items


@given(
    seed=st.integers(0, 2**31 - 1),
    num_users=st.integers(1, 40),
    num_items=st.integers(1, 30),
    density=st.floats(0.0, 1.0),
    min_share=st.floats(0.0, 1.0),
)
@settings(max_examples=150, deadline=None)
def test_pairs_distinct_sorted_in_range_with_minimum(seed, num_users, num_items, density, min_share):
    num_ratings = int(round(density * num_users * num_items))
    min_per_user = min(int(min_share * num_items), num_ratings // num_users)
    users, items = sample_pairs(seed, num_users, num_items, num_ratings, min_per_user=min_per_user)
    assert users.shape == items.shape == (num_ratings,)
    assert users.dtype == items.dtype == np.int32
    if num_ratings == 0:
        return
    assert 0 <= users.min() and users.max() < num_users
    assert 0 <= items.min() and items.max() < num_items
    keys = keys_of(users, items, num_items)
    assert np.all(np.diff(keys) > 0)  # sorted by (user, item), hence distinct
    counts = np.bincount(users, minlength=num_users)
    assert counts.min() >= min_per_user


def test_arguments_checked():
    with pytest.raises(ValueError, match="exceeds"):
        sample_pairs(0, 3, 4, 13)
    with pytest.raises(ValueError, match="min_per_user"):
        sample_pairs(0, 3, 4, 10, min_per_user=4)
    with pytest.raises(ValueError, match="min_per_user"):
        sample_pairs(0, 3, 4, 12, min_per_user=5)


def test_same_seed_same_pairs_other_seed_other_pairs():
    a = sample_pairs(7, 500, 300, 20_000, min_per_user=10)
    b = sample_pairs(7, 500, 300, 20_000, min_per_user=10)
    c = sample_pairs(8, 500, 300, 20_000, min_per_user=10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))
    small = dict(num_users=60, num_items=40, num_ratings=900, min_per_user=5)
    s1, s2 = movielens_like(3, **small), movielens_like(3, **small)
    np.testing.assert_array_equal(s1.ratings.rating, s2.ratings.rating)
    np.testing.assert_array_equal(s1.user_factors, s2.user_factors)


@pytest.mark.parametrize("name", ["ml-100k", "ml-1m"])
def test_movielens_shapes_are_skewed_like_movielens(name):
    shape = SHAPES[name]
    users, items = sample_pairs(0, shape.num_users, shape.num_items, shape.num_ratings, min_per_user=shape.min_per_user)
    assert users.shape == (shape.num_ratings,)
    user_counts = np.bincount(users, minlength=shape.num_users)
    item_counts = np.bincount(items, minlength=shape.num_items)
    assert user_counts.min() >= shape.min_per_user
    for counts in (user_counts, item_counts):
        top = np.sort(counts)[::-1][: counts.size // 10]
        assert top.sum() / shape.num_ratings > TOP_DECILE_SHARE
    assert len(np.unique(keys_of(users, items, shape.num_items))) == shape.num_ratings


def test_shapes_table():
    assert SHAPES["ml-10m"] == (69_878, 10_677, 10_000_000, 20)
    assert SHAPES["ml-25m"][:3] == (162_541, 59_047, 25_000_000)
    assert SHAPES["netflix"][:3] == (480_189, 17_770, 100_000_000)
    for shape in SHAPES.values():
        assert shape.min_per_user * shape.num_users <= shape.num_ratings <= shape.num_users * shape.num_items


@pytest.mark.parametrize("num_items", [40, 12], ids=["rejection-rounds", "dense-draw"])
def test_each_user_draws_movies_without_replacement_by_popularity(num_items):
    """Every user rates exactly 2 movies (num_ratings = 2 * num_users): movie i is
    among them with probability p_i + sum_{j != i} p_j p_i / (1 - p_j), the law of
    two successive draws without replacement proportional to popularity. With 12
    movies a user's 2 exceed an eighth of them and go through the dense path."""
    num_users, k, exponent = 20_000, 2, 0.9
    users, items = sample_pairs(0, num_users, num_items, k * num_users, min_per_user=k, item_exponent=exponent)
    freq = np.bincount(items, minlength=num_items) / num_users
    p = np.arange(1, num_items + 1, dtype=np.float64) ** -exponent
    p /= p.sum()
    inclusion = p + p * (np.sum(p / (1 - p)) - p / (1 - p))
    # popularity order is a random permutation: compare sorted (sorting is 1-Lipschitz in max norm)
    se = np.sqrt(inclusion * (1 - inclusion) / num_users)
    assert np.max(np.abs(np.sort(freq) - np.sort(inclusion))) < Z_TOL * se.max()


def test_movielens_like_stars_on_scale_and_truth_aligned():
    sim = movielens_like(0, num_users=200, num_items=150, num_ratings=6_000, rank=3, min_per_user=5)
    r = sim.ratings
    assert len(r) == 6_000
    assert set(np.unique(r.rating).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert (r.scale.low, r.scale.high, r.scale.step) == (1.0, 5.0, 1.0)
    assert sim.user_factors.shape == (r.num_users, 3) and sim.item_factors.shape == (r.num_items, 3)
    assert sim.item_offsets.shape == (r.num_items,)
    # stars are the rounded means plus noise: residual sd near the noise sd (0.9) plus rounding
    resid = r.rating - sim.true_mean(r.user_index, r.item_index)
    assert abs(np.mean(resid)) < 0.1 and 0.8 < np.std(resid) < 1.1
    cont = movielens_like(0, num_users=50, num_items=40, num_ratings=600, min_per_user=5, discretize=False)
    assert cont.ratings.scale.step is None
    assert len(np.unique(cont.ratings.rating)) > 500
    np.testing.assert_allclose(cont.expected_rating([0, 1], [2, 3]), cont.true_mean([0, 1], [2, 3]))


def test_users_without_ratings_keep_truth_by_id():
    """Without a minimum some users may rate nothing: the truth's rows follow the vocabulary."""
    sim = movielens_like(1, num_users=300, num_items=20, num_ratings=200, min_per_user=0, rank=2)
    ids = np.asarray(sim.ratings.user_vocab.ids)
    assert sim.user_factors.shape == (ids.size, 2)
    full = np.random.default_rng([1, 1]).normal(0.0, 0.5, (300, 2))
    np.testing.assert_array_equal(sim.user_factors, full[ids.astype(np.int64) - 1])


def test_truth_broadcasts_like_numpy_indexing():
    sim = movielens_like(4, num_users=30, num_items=20, num_ratings=300, min_per_user=5, rank=3)
    users, items = np.meshgrid(np.arange(30), np.arange(20), indexing="ij")
    grid = sim.true_mean(users, items)
    assert grid.shape == (30, 20)
    np.testing.assert_allclose(grid, sim.user_factors @ sim.item_factors.T + sim.item_offsets, rtol=1e-12)
    assert sim.expected_rating(users, items).shape == (30, 20)
    assert sim.true_mean(3, 4).shape == ()


def test_expected_rating_is_the_mean_of_rounded_clipped_draws():
    sim = movielens_like(2, num_users=30, num_items=20, num_ratings=300, min_per_user=5)
    u = np.arange(6) % 30
    i = np.arange(6) % 20
    mean = sim.true_mean(u, i)
    draws = 100_000
    rng = np.random.default_rng(0)
    stars = np.clip(np.round(mean[:, None] + rng.normal(0, sim.noise_sd, (6, draws))), 1, 5)
    se = stars.std(axis=1) / np.sqrt(draws)
    assert np.all(np.abs(sim.expected_rating(u, i) - stars.mean(axis=1)) < Z_TOL * se)


def test_module_lists_its_shapes_in_the_docstring():
    for name in SHAPES:
        assert name in synthetic.__doc__
