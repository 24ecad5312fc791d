"""Synthetic ratings drawn from the model itself, shaped like MovieLens.

MovieLens may not be shipped with bayesmf (GroupLens terms), so the demo and
the tests use data simulated from ``r_uv = <L_u, R_v> + m_v + noise`` with a
MovieLens-like sparsity pattern: power-law user activity and movie popularity
and a minimum number of ratings per user (20 in ml-100k).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Synthetic(NamedTuple):
    """Simulated ratings with the parameters that generated them.

    Attributes
    ----------
    ratings : bayesmf.data.Ratings
    user_factors : array, shape (num_users, rank)
    item_factors : array, shape (num_items, rank)
    item_offsets : array, shape (num_items,)
    noise_sd : float
    """

    ratings: object
    user_factors: np.ndarray
    item_factors: np.ndarray
    item_offsets: np.ndarray
    noise_sd: float

    def true_mean(self, user_index, item_index) -> np.ndarray:
        """Noise-free mean rating of index pairs, shape (n,)."""
        return (
            np.sum(self.user_factors[user_index] * self.item_factors[item_index], axis=-1)
            + self.item_offsets[item_index]
        )


def _power_law_weights(rng, n: int, exponent: float) -> np.ndarray:
    weights = (np.arange(1, n + 1, dtype=np.float64)) ** (-exponent)
    return rng.permutation(weights / weights.sum())


def sample_pairs(seed: int, num_users: int, num_items: int, num_ratings: int, *, min_per_user: int = 0,
                 user_exponent: float = 0.8, item_exponent: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) index pairs with power-law activity and popularity.

    Parameters
    ----------
    seed : int
    num_users, num_items, num_ratings : int
    min_per_user : int
        Every user gets at least this many ratings.

    Returns
    -------
    users, items : int32 arrays, shape (num_ratings,)
    """
    if num_ratings > num_users * num_items:
        raise ValueError(f"num_ratings={num_ratings} exceeds num_users * num_items = {num_users * num_items}")
    if min_per_user * num_users > num_ratings or min_per_user > num_items:
        raise ValueError("min_per_user is too large for num_ratings / num_items")
    rng = np.random.default_rng(seed)
    p_user = _power_law_weights(rng, num_users, user_exponent)
    p_item = _power_law_weights(rng, num_items, item_exponent)
    chosen: set[int] = set()
    users, items = [], []
    # The guaranteed minimum per user, each user's items drawn by popularity.
    for u in range(num_users) if min_per_user else ():
        picks = rng.choice(num_items, size=min_per_user, replace=False, p=p_item)
        for v in picks:
            chosen.add(u * num_items + int(v))
    need = num_ratings - len(chosen)
    while need > 0:
        batch = max(2 * need, 1024)
        cand = rng.choice(num_users, size=batch, p=p_user).astype(np.int64) * num_items + rng.choice(
            num_items, size=batch, p=p_item
        )
        cand = np.unique(cand)
        cand = cand[~np.isin(cand, np.fromiter(chosen, np.int64, len(chosen)))] if chosen else cand
        cand = rng.permutation(cand)[:need]
        chosen.update(int(c) for c in cand)
        need = num_ratings - len(chosen)
    codes = np.sort(np.fromiter(chosen, np.int64, len(chosen)))
    users, items = np.divmod(codes, num_items)
    return users.astype(np.int32), items.astype(np.int32)


def movielens_like(
    seed: int = 0,
    *,
    num_users: int = 943,
    num_items: int = 1682,
    num_ratings: int = 100_000,
    rank: int = 5,
    factor_sd: float = 0.5,
    offset_mean: float = 3.5,
    offset_sd: float = 0.5,
    noise_sd: float = 0.9,
    min_per_user: int = 20,
    discretize: bool = True,
) -> Synthetic:
    """A MovieLens-shaped data set drawn from the model.

    Defaults match MovieLens-100K: 943 users, 1,682 movies, 100,000 ratings,
    at least 20 per user, integer stars 1..5 (``discretize=True`` rounds and
    clips the Gaussian draws; ``False`` keeps them continuous, exactly the
    model's likelihood).

    Parameters
    ----------
    seed : int
    num_users, num_items, num_ratings, rank : int
    factor_sd : float
        Standard deviation of each true factor entry.
    offset_mean, offset_sd : float
        Distribution of the true movie offsets.
    noise_sd : float
    min_per_user : int
    discretize : bool

    Returns
    -------
    Synthetic

    Examples
    --------
    >>> sim = movielens_like(0, num_users=50, num_items=40, num_ratings=600, min_per_user=5)
    >>> len(sim.ratings)
    600
    """
    from bayesmf.data import RatingScale, Ratings

    users, items = sample_pairs(seed, num_users, num_items, num_ratings, min_per_user=min_per_user)
    rng = np.random.default_rng([seed, 1])
    user_factors = rng.normal(0.0, factor_sd, (num_users, rank))
    item_factors = rng.normal(0.0, factor_sd, (num_items, rank))
    item_offsets = rng.normal(offset_mean, offset_sd, num_items)
    mean = np.sum(user_factors[users] * item_factors[items], axis=1) + item_offsets[items]
    values = mean + rng.normal(0.0, noise_sd, mean.shape)
    if discretize:
        values = np.clip(np.round(values), 1, 5)
        scale = RatingScale(1.0, 5.0, 1.0)
    else:
        scale = RatingScale(float(values.min()), float(values.max()), None)
    # External ids 1..n like MovieLens.
    ratings = Ratings.from_arrays(users + 1, items + 1, values, scale=scale)
    # from_arrays indexes sorted unique ids; users/items absent from the sample
    # (possible without min_per_user) would shift indices, so map truth by id.
    user_rows = ratings.user_vocab.ids.astype(np.int64) - 1
    item_rows = ratings.item_vocab.ids.astype(np.int64) - 1
    return Synthetic(
        ratings=ratings,
        user_factors=user_factors[user_rows],
        item_factors=item_factors[item_rows],
        item_offsets=item_offsets[item_rows],
        noise_sd=noise_sd,
    )
