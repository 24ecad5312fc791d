"""The training ratings as the model sees them: :class:`ModelData` and its builders.

Split from :mod:`bayesmf.model` (which re-exports every name): the arrays a
fit conditions on, built from index arrays (:func:`make_model_data`), from a
:class:`bayesmf.data.Ratings` (:func:`model_data_from_ratings`,
:func:`star_model_data` for the ordinal likelihood), with each side's feature
rows appended (:func:`with_features`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayesmf import ordinal_model
from bayesmf.layout import SegmentLayout, build_layout
from bayesmf.layout_plan import segment_stats_bytes
from bayesmf.memory import to_device

Array = jax.Array


class PairLayouts(NamedTuple):
    """The ratings grouped in segments by user and by movie (:func:`with_pair_layouts`).

    The gradient of the pair means ``<L_u, R_v> + m_v`` with respect to
    ``L`` sums each user's ``g_uv R_v`` (and to ``R`` and ``m`` each
    movie's): :func:`bayesmf.layout.row_sums` over these layouts, instead of
    the gathers' transposes (scatter-adds of ``nnz x D`` values, element by
    element on XLA:CPU). The means themselves still come from the plain
    gathers, which fuse with the likelihood: computed segment by segment (one
    ``L_u`` per segment) or in chunks of 8,192 ratings they were faster alone
    but slower in probes of the L-BFGS loop at ML-10M shape, rank 32
    (1,015-1,101 against 803-942 ms per iteration; chunks 946-948 against
    747-801).
    Each side's rows are split by blocks of the other side's rows
    (``row = block * num_rows + row``), so that the rows a chunk gathers come
    from one block of about :data:`PAIR_BLOCK_BYTES`, which stays in cache.

    Attributes
    ----------
    users : SegmentLayout
        Rows ``user_blocks x num_users`` (each user's ratings of one block of
        movies), columns the movies.
    items : SegmentLayout
        Rows ``item_blocks x num_items``, columns the users.
    nnz : int32 array, shape (nnz, 0)
        No data: the number of ratings they were built on, as a static shape
        (checked against the ratings where they are used).
    """

    users: SegmentLayout
    items: SegmentLayout
    nnz: Array


# Ratings per segment of the pair layouts. The per-segment cost is one small
# add into the row (no Gram, as in the Gibbs layouts, whose width weighs one),
# and the width matters little: L-BFGS iterations of the MAP objective at ML-1M
# shape (6,040 x 3,706, 1M ratings), rank 32, on 2 CPU cores took 84 / 92 / 80
# / 87 ms with segments of 16 / 32 / 64 / 128 ratings, against 147 ms through
# the scatter-adds in the same run (``benchmarks/pair_mean_grad.py --loop
# --segment-widths``).
PAIR_SEGMENT_WIDTH = 32
# Bytes of the other side's factor rows one block holds. At ML-10M shape, rank
# 32 (the 69,878 users' factors are 8.9 MB), an L-BFGS iteration took 841 /
# 1,018 ms with blocks of ~1 MB (2 blocks of movies, 9 of users), 1,278 /
# 1,550 ms without, and 1,443 / 1,727 ms through the scatter-adds, in two
# alternating rounds on 2 CPU cores (``benchmarks/pair_mean_grad.py --loop
# --block-bytes``): the rows a chunk gathers then stay in cache.
PAIR_BLOCK_BYTES = 2**20


class ModelData(NamedTuple):
    """Training ratings as the model sees them (device arrays).

    Attributes
    ----------
    user_index : int32 array, shape (nnz,)
    item_index : int32 array, shape (nnz,)
    rating : float array, shape (nnz,)
    user_degree : int32 array, shape (num_users,)
        Number of training ratings per user; its shape fixes ``num_users``.
    item_degree : int32 array, shape (num_items,)
    global_mean : float array, shape ()
    empirical_offsets : float array, shape (num_items,)
        Each movie's mean training rating (global mean for a movie with none).
    empirical_offset_precision : float array, shape ()
        ``1 / var(movie means)``: the spread used for an unseen movie when the
        offsets are empirical.
    user_features, item_features : float array, shape (num_users, F_u) / (num_items, F_v), or None
        Each row's features (side columns, then implicit-feedback columns) when
        the config has ``user_features`` / ``item_features``
        (:func:`with_features`).
    star : int32 array, shape (nnz,), or None
        Each rating's star ``0..K-1`` for the ordinal likelihood
        (:func:`star_model_data`); None otherwise.
    pair_layouts : PairLayouts or None
        The ratings grouped by user and by movie, for the gradient of the
        pair means (:func:`with_pair_layouts`); None: the gradient scatters.
        Built on these index arrays: replacing them needs new layouts.
    """

    user_index: Array
    item_index: Array
    rating: Array
    user_degree: Array
    item_degree: Array
    global_mean: Array
    empirical_offsets: Array
    empirical_offset_precision: Array
    user_features: Array | None = None
    item_features: Array | None = None
    star: Array | None = None
    pair_layouts: PairLayouts | None = None

    @property
    def num_users(self) -> int:
        return self.user_degree.shape[0]

    @property
    def num_items(self) -> int:
        return self.item_degree.shape[0]

    @property
    def nnz(self) -> int:
        return self.rating.shape[0]


def make_model_data(user_index, item_index, rating, num_users: int, num_items: int, dtype=jnp.float32) -> ModelData:
    """Build :class:`ModelData` from index arrays.

    Parameters
    ----------
    user_index, item_index : int array, shape (nnz,)
    rating : float array, shape (nnz,)
    num_users, num_items : int
    """
    user_index = np.asarray(user_index, dtype=np.int32)
    item_index = np.asarray(item_index, dtype=np.int32)
    rating = np.asarray(rating, dtype=np.float64)
    if not (user_index.shape == item_index.shape == rating.shape) or rating.ndim != 1:
        raise ValueError(
            f"user_index, item_index and rating must be 1-D of one length, got shapes "
            f"{user_index.shape}, {item_index.shape}, {rating.shape}"
        )
    if rating.size == 0:
        raise ValueError("cannot build a model from empty ratings")
    if not np.all(np.isfinite(rating)):
        raise ValueError(f"ratings contain {np.sum(~np.isfinite(rating))} NaN or inf values")
    user_degree = np.bincount(user_index, minlength=num_users)
    item_degree = np.bincount(item_index, minlength=num_items)
    if user_degree.size != num_users or item_degree.size != num_items:
        raise ValueError("an index is out of range for num_users / num_items")
    global_mean = rating.mean()
    sums = np.bincount(item_index, weights=rating, minlength=num_items)
    means = np.where(item_degree > 0, sums / np.maximum(item_degree, 1), global_mean)
    seen_means = means[item_degree > 0]
    spread = seen_means.var() if seen_means.size > 1 else 1.0
    return ModelData(
        user_index=to_device(user_index),
        item_index=to_device(item_index),
        rating=to_device(rating, dtype=dtype),
        user_degree=to_device(user_degree, dtype=jnp.int32),
        item_degree=to_device(item_degree, dtype=jnp.int32),
        global_mean=to_device(global_mean, dtype=dtype),
        empirical_offsets=to_device(means, dtype=dtype),
        empirical_offset_precision=to_device(1.0 / max(spread, 1e-6), dtype=dtype),
    )


def with_features(data: ModelData, config, user_side=None, item_side=None) -> ModelData:
    """``data`` with the feature rows the config's :class:`FeatureSpec` s ask for.

    Each side's rows are its side features (``num_side`` columns, encoded by
    :func:`bayesmf.data.encode_features`) followed, with ``implicit``, by the
    implicit-feedback rows built from the training pairs (never from test
    ratings), centred on the training rows like the side features: a row at
    ``x = 0`` is the average row, so a new user with no ratings and no
    features gets exactly the mean-based prior. With ``implicit`` the rows
    are a :class:`bayesmf.featurerows.FeatureRows` (sparse implicit part;
    ``x @ b``, ``x.T @ y`` and ``np.asarray(x)`` work as for an array),
    else an array.

    Parameters
    ----------
    data : ModelData
    config : bayesmf.model.ModelConfig
    user_side : array, shape (num_users, num_side), optional
        Needed when ``config.user_features.num_side > 0``.
    item_side : array, shape (num_items, num_side), optional

    Returns
    -------
    ModelData
    """
    from bayesmf.featurerows import implicit_rows

    dtype = data.rating.dtype
    users, items = np.asarray(data.user_index), np.asarray(data.item_index)
    out = {}
    for side, side_rows, index, other, num_rows, num_other in (
        ("user", user_side, users, items, data.num_users, data.num_items),
        ("item", item_side, items, users, data.num_items, data.num_users),
    ):
        spec = getattr(config, f"{side}_features")
        if spec is None:
            if side_rows is not None:
                raise ValueError(f"{side} features were given but the config has no {side}_features")
            continue
        side_part = np.zeros((num_rows, 0))
        if spec.num_side:
            side_part = None if side_rows is None else np.asarray(side_rows, np.float64)
            if side_part is None or side_part.shape != (num_rows, spec.num_side):
                got = None if side_part is None else side_part.shape
                raise ValueError(f"{side} side features must have shape ({num_rows}, {spec.num_side}), got {got}")
            if not np.all(np.isfinite(side_part)):
                raise ValueError(f"{side} side features contain NaN or inf (encode them with bayesmf.data.encode_features)")
        if spec.implicit:  # kept sparse: N - 1 c^T (FeatureRows)
            out[f"{side}_features"] = implicit_rows(index, other, num_rows, num_other, side_part, dtype)
        else:
            out[f"{side}_features"] = to_device(side_part, dtype)
    return data._replace(**out)


def with_pair_layouts(data: ModelData, rank: int) -> ModelData:
    """``data`` with the :class:`PairLayouts` of its ratings (built on the host, O(nnz) memory).

    The pair means' gradient then goes through them
    (:func:`bayesmf.model.pair_mean`); the values are the same, summed in
    another order.

    Parameters
    ----------
    data : ModelData
    rank : int
        The factors' rank: sizes the blocks (:data:`PAIR_BLOCK_BYTES`) and
        the chunks of segments (about :data:`bayesmf.layout_plan.CHUNK_BYTES` of
        gathered factor rows each on the CPU).

    Returns
    -------
    ModelData
    """
    users, items = np.asarray(data.user_index, np.int64), np.asarray(data.item_index, np.int64)
    itemsize = data.rating.dtype.itemsize

    def side(rows, cols, num_rows, num_cols):
        blocks = max(1, -(-num_cols * (int(rank) + 1) * itemsize // PAIR_BLOCK_BYTES))
        block_rows = (cols // -(-num_cols // blocks)) * num_rows + rows
        # One block of rows: row_sums holds d floats per row, not the Gibbs
        # layouts' (d + 1)^2 statistics that blocks bound.
        return build_layout(block_rows, cols, blocks * num_rows, num_cols, kind="segment", width=int(rank) + 1,
                            itemsize=itemsize, segment=PAIR_SEGMENT_WIDTH,
                            stats_bytes=segment_stats_bytes(blocks * num_rows, int(rank) + 1, itemsize))

    return data._replace(pair_layouts=PairLayouts(
        users=side(users, items, data.num_users, data.num_items),
        items=side(items, users, data.num_items, data.num_users),
        nnz=to_device(np.zeros((data.nnz, 0), np.int32)),
    ))


def model_data_from_ratings(ratings, dtype=jnp.float32) -> ModelData:
    """:class:`ModelData` from a :class:`bayesmf.data.Ratings`."""
    return make_model_data(
        ratings.user_index, ratings.item_index, ratings.rating, ratings.num_users, ratings.num_items, dtype=dtype
    )


def star_model_data(ratings, dtype=jnp.float32) -> ModelData:
    """:class:`ModelData` for the ordinal likelihood from a :class:`bayesmf.data.Ratings` on a star scale.

    ``star`` is each rating's star index; ``rating`` (and so ``global_mean``
    and the empirical offsets, which only start the sampler and centre the
    offset mean's prior) holds the star index less 1/2, the middle of its
    cell when the cut points sit at their prior centre ``0, 1, 2, ...``: a
    stand-in on the latent scale. ``K = len(ordinal_model.star_grid(ratings.scale))``.

    Raises
    ------
    ValueError
        A continuous scale, or ratings off the star grid.
    """
    star = ordinal_model.stars_of(ratings.rating, ratings.scale)
    data = make_model_data(ratings.user_index, ratings.item_index, star - 0.5, ratings.num_users, ratings.num_items,
                           dtype=dtype)
    return data._replace(star=to_device(star))
