"""Synthetic ratings drawn from the model itself, shaped like MovieLens.

MovieLens may not be shipped with bayesmf (GroupLens terms), so the demo and
the tests use data simulated from ``r_uv = <L_u, R_v> + m_v + noise`` with a
MovieLens-like sparsity pattern: power-law user activity and movie popularity
and a minimum number of ratings per user (20 in the MovieLens sets).

:data:`SHAPES` holds the sizes of the public sets (ml-100k, ml-1m, ml-10m,
ml-25m, netflix) for the scale benchmark (``benchmarks/scale.py``).

The pairs are drawn without a loop over users (10M pairs in a few seconds on
two cores): each user's number of ratings comes from the activity law, then
each user's movies are the first distinct ones in a sequence of draws from
the popularity law (sampling without replacement proportional to
popularity), in a few vectorised rounds over sorted int64 pair keys.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Shape(NamedTuple):
    """Size of a ratings data set.

    Attributes
    ----------
    num_users, num_items, num_ratings : int
    min_per_user : int
        Smallest number of ratings of a user.
    """

    num_users: int
    num_items: int
    num_ratings: int
    min_per_user: int


#: Sizes of the public rating sets (ratings rounded to the million). The
#: MovieLens sets keep users with at least 20 ratings; Netflix has users with one.
SHAPES: dict[str, Shape] = {
    "ml-100k": Shape(943, 1_682, 100_000, 20),
    "ml-1m": Shape(6_040, 3_706, 1_000_000, 20),
    "ml-10m": Shape(69_878, 10_677, 10_000_000, 20),
    "ml-25m": Shape(162_541, 59_047, 25_000_000, 20),
    "netflix": Shape(480_189, 17_770, 100_000_000, 1),
}

# A user asking for more than this share of the movies gets them in one
# weighted draw without replacement over all movies (exponential keys) rather
# than through rejection rounds, which slow down as the popular movies run out.
_DENSE_SHARE = 1 / 8
# Rejection rounds before the users still short of movies go to the dense path.
_ROUNDS = 6
# Rows of the dense path's (users x movies) key matrix are drawn this many entries at a time.
_DENSE_CHUNK = 1 << 23
# Pairs whose true mean is computed at once (bounds the (n, rank) temporaries).
_MEAN_CHUNK = 1 << 20


class Synthetic(NamedTuple):
    """Simulated ratings with the parameters that generated them.

    Attributes
    ----------
    ratings : bayesmf.data.Ratings
    user_factors : array, shape (num_users, rank)
    item_factors : array, shape (num_items, rank)
    item_offsets : array, shape (num_items,)
    noise_sd : float

    Rows of the truth follow ``ratings.user_vocab`` and ``ratings.item_vocab``.
    """

    ratings: object
    user_factors: np.ndarray
    item_factors: np.ndarray
    item_offsets: np.ndarray
    noise_sd: float

    def true_mean(self, user_index, item_index) -> np.ndarray:
        """Noise-free mean ``<L_u, R_v> + m_v`` of index pairs, shape of the broadcast indices."""
        users, items = np.broadcast_arrays(np.asarray(user_index), np.asarray(item_index))
        return _pair_means(self.user_factors, self.item_factors, self.item_offsets,
                           users.ravel(), items.ravel()).reshape(users.shape)

    def expected_rating(self, user_index, item_index) -> np.ndarray:
        """Expected observed rating of index pairs, shape of the broadcast indices: the best predictor in RMSE.

        On a continuous scale this is :meth:`true_mean`; on a grid it is the
        mean of the rounded and clipped draw,
        ``sum_k k P(round(mean + noise) clipped = k)``.
        """
        from scipy.special import ndtr

        mean = self.true_mean(user_index, item_index)
        scale = self.ratings.scale
        if scale.step is None:
            return mean
        levels = np.arange(scale.low, scale.high + scale.step / 2, scale.step)
        # E[X] for X on the levels = top - step * sum over the levels k below the top of
        # P(X <= k) = P(draw < k + step / 2), the rounding thresholds.
        out = np.full(mean.shape, float(scale.high))
        for level in levels[:-1]:
            out -= scale.step * ndtr((level + scale.step / 2 - mean) / self.noise_sd)
        return out


def _power_law_weights(rng, n: int, exponent: float) -> np.ndarray:
    weights = (np.arange(1, n + 1, dtype=np.float64)) ** (-exponent)
    return rng.permutation(weights / weights.sum())


def _pair_means(user_factors, item_factors, item_offsets, users, items) -> np.ndarray:
    out = np.empty(users.shape[0], np.result_type(user_factors, item_factors, item_offsets))
    for start in range(0, users.shape[0], _MEAN_CHUNK):
        u, i = users[start : start + _MEAN_CHUNK], items[start : start + _MEAN_CHUNK]
        out[start : start + _MEAN_CHUNK] = np.einsum("nk,nk->n", user_factors[u], item_factors[i]) + item_offsets[i]
    return out


def _user_counts(rng, p_user: np.ndarray, num_ratings: int, num_items: int, min_per_user: int) -> np.ndarray:
    """Ratings per user, shape (num_users,): the minimum plus a multinomial draw by activity, capped at num_items."""
    counts = np.full(p_user.shape[0], min_per_user, np.int64)
    extra = num_ratings - int(counts.sum())
    while extra > 0:
        room = num_items - counts
        if extra == int(room.sum()):  # the matrix is full
            return np.full_like(counts, num_items)
        weights = np.where(room > 0, p_user, 0.0)
        counts += rng.multinomial(extra, weights / weights.sum())
        over = np.maximum(counts - num_items, 0)
        counts -= over
        extra = int(over.sum())  # drawn again among the users with room
    return counts


def _alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table of a distribution (Vose's construction): accept probabilities and aliases, shape (n,)."""
    n = p.shape[0]
    scaled = p * (n / p.sum())
    accept = np.ones(n)
    alias = np.arange(n)
    small = [int(j) for j in np.flatnonzero(scaled < 1.0)]
    large = [int(j) for j in np.flatnonzero(scaled >= 1.0)]
    while small and large:
        s, g = small.pop(), large.pop()
        accept[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    return accept, alias  # leftovers (rounding) keep accept = 1


def _draw_items(rng, table: tuple[np.ndarray, np.ndarray], size: int) -> np.ndarray:
    """``size`` movie indices drawn with replacement by popularity (alias method), int64."""
    accept, alias = table
    slot = rng.integers(0, accept.shape[0], size)
    return np.where(rng.random(size) < accept[slot], slot, alias[slot])


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int64 array (a stable sort: fast on keys grouped by user)."""
    keys = np.sort(keys, kind="stable")
    keep = np.ones(keys.shape[0], bool)
    np.not_equal(keys[1:], keys[:-1], out=keep[1:])
    return keys[keep]


def _first_distinct(keys: np.ndarray, chosen: list[np.ndarray], need: np.ndarray, num_items: int) -> np.ndarray:
    """New keys of a round: per user, the first ``need[user]`` distinct keys not already chosen.

    ``keys`` (int64 ``user * num_items + item``) are grouped by user in draw
    order; ``chosen`` are sorted key arrays of earlier rounds.
    """
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    first = np.ones(keys.shape[0], bool)
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    uniq, first = ordered[first], order[first]  # distinct keys and where each first occurs
    fresh = np.ones(uniq.shape[0], bool)
    for done in chosen:  # non-empty
        pos = np.minimum(np.searchsorted(done, uniq), done.shape[0] - 1)
        fresh &= done[pos] != uniq
    kept = keys[np.sort(first[fresh])]  # grouped by user, in draw order
    users = kept // num_items
    rank_in_user = np.arange(kept.shape[0]) - np.searchsorted(users, users, side="left")
    return np.sort(kept[rank_in_user < need[users]], kind="stable")


def _keys_of_users(keys: np.ndarray, users: np.ndarray, num_items: int) -> np.ndarray:
    """The keys of sorted ``users`` in sorted ``keys`` (each user's keys are one contiguous range)."""
    lo = np.searchsorted(keys, users.astype(np.int64) * num_items)
    hi = np.searchsorted(keys, (users.astype(np.int64) + 1) * num_items)
    lengths = hi - lo
    # index of each wanted key: its range's start plus its place in the range
    offsets = np.repeat(lo - np.cumsum(lengths) + lengths, lengths)
    return keys[offsets + np.arange(offsets.shape[0])]


def _dense_draws(rng, users: np.ndarray, need: np.ndarray, p_item: np.ndarray,
                 chosen: list[np.ndarray]) -> np.ndarray:
    """Sorted keys: ``need[user]`` movies for each of ``users``, without replacement by popularity.

    Exponential keys ``E / p`` (Efraimidis-Spirakis): the ``n`` smallest are a
    draw of ``n`` movies without replacement proportional to ``p``; movies in
    ``chosen`` are excluded, which continues an interrupted draw exactly.
    """
    num_items = p_item.shape[0]
    done = [_keys_of_users(keys, users, num_items) for keys in chosen]
    done = np.sort(np.concatenate(done), kind="stable") if done else np.empty(0, np.int64)
    out = []
    rows = max(1, _DENSE_CHUNK // num_items)
    for start in range(0, users.shape[0], rows):
        block = users[start : start + rows]
        keys = rng.standard_exponential((block.shape[0], num_items)) / p_item
        mine = _keys_of_users(done, block, num_items)
        keys[np.searchsorted(block, mine // num_items), mine % num_items] = np.inf
        row, place = np.nonzero(np.arange(num_items) < need[block][:, None])  # the first need[u] places
        out.append(block[row].astype(np.int64) * num_items + np.argsort(keys, axis=1)[row, place])
    return np.sort(np.concatenate(out), kind="stable") if out else np.empty(0, np.int64)


def sample_pairs(seed: int, num_users: int, num_items: int, num_ratings: int, *, min_per_user: int = 0,
                 user_exponent: float = 0.8, item_exponent: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) index pairs with power-law activity and popularity.

    User ``u``'s activity weight and movie ``v``'s popularity are ranks of a
    Zipf law, ``k^-user_exponent`` and ``k^-item_exponent``, in random order.
    User ``u`` rates ``min_per_user`` movies plus a multinomial share of the
    rest by activity (at most ``num_items``); its movies are drawn without
    replacement proportionally to popularity.

    Parameters
    ----------
    seed : int
    num_users, num_items, num_ratings : int
    min_per_user : int
        Every user gets at least this many ratings.
    user_exponent, item_exponent : float
        Exponents of the activity and popularity laws.

    Returns
    -------
    users, items : int32 arrays, shape (num_ratings,)
        Sorted by user, then item.

    Examples
    --------
    >>> users, items = sample_pairs(0, 50, 40, 600, min_per_user=5)
    >>> users.shape, int(np.bincount(users).min()) >= 5
    ((600,), True)
    """
    if num_ratings > num_users * num_items:
        raise ValueError(f"num_ratings={num_ratings} exceeds num_users * num_items = {num_users * num_items}")
    if min_per_user * num_users > num_ratings or min_per_user > num_items:
        raise ValueError("min_per_user is too large for num_ratings / num_items")
    rng = np.random.default_rng(seed)
    p_user = _power_law_weights(rng, num_users, user_exponent)
    p_item = _power_law_weights(rng, num_items, item_exponent)
    counts = _user_counts(rng, p_user, num_ratings, num_items, min_per_user)
    table = _alias_table(p_item)

    dense = counts > _DENSE_SHARE * num_items
    need = np.where(dense, 0, counts)
    chosen: list[np.ndarray] = []
    for round_ in range(_ROUNDS):
        users = np.flatnonzero(need)
        if users.size == 0:
            break
        # The first round draws exactly what each user needs (duplicates are all
        # the waste); the top-ups draw twice the shortfall.
        draws = need[users] * (1 if round_ == 0 else 2)
        cand_users = np.repeat(users.astype(np.int64), draws)
        keys = cand_users * num_items + _draw_items(rng, table, cand_users.shape[0])
        new = _sorted_unique(keys) if round_ == 0 else _first_distinct(keys, chosen, need, num_items)
        if new.size:
            chosen.append(new)
        need -= np.bincount(new // num_items, minlength=num_users)
    short = np.flatnonzero(need)  # light users the rounds left short
    need[dense] = counts[dense]
    rest = np.union1d(short, np.flatnonzero(dense))
    if rest.size:
        chosen.append(_dense_draws(rng, rest, need, p_item, chosen))
    if not chosen:
        codes = np.empty(0, np.int64)
    else:
        codes = np.sort(np.concatenate(chosen), kind="stable") if len(chosen) > 1 else chosen[0]
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
    model's likelihood). Other shapes: ``movielens_like(0, **SHAPES["ml-10m"]._asdict())``.

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
    values = _pair_means(user_factors, item_factors, item_offsets, users, items)
    values += rng.normal(0.0, noise_sd, values.shape)
    if discretize:
        np.clip(np.round(values, out=values), 1, 5, out=values)
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
