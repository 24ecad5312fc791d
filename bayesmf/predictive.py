"""What everything that predicts shares: mixture components, the prediction built from them, one protocol.

A fitted :class:`~bayesmf.posterior.Posterior`, new users folded into it and
new movies folded into it all predict a rating by a mixture over posterior
draws ``s = 1..S``:

.. math::

    p(r \\mid u, v) = \\sum_s w_s\\, \\mathcal N(r;\\ \\mu_s,\\ \\sigma^2_s)

with weights ``w_s = 1/S`` for a posterior (and for a fold-in under
``weighting="equal"``) and importance weights for a fold-in otherwise. Each
of them implements :class:`Predictor`: it maps external ids to indices
(:meth:`Predictor.pairs`) and gives the per-draw components for index pairs
(:meth:`Predictor.components`). :func:`prediction` turns components into a
:class:`Prediction` (moments and mixture-quantile interval);
:mod:`bayesmf.recommend` ranks and :meth:`Posterior.evaluate` scores through
the same protocol, never through a class's internals.

Every per-draw mean and variance of a pair is the mean and variance of a
product of two independent Gaussian vectors (:func:`product_moments`): the
user side ``a = (L_u, 1)`` and the movie side ``b = (R_v, m_v)``, each either
known under the draw (zero covariance) or random (a new user's prior
``N((mu_L, 1), blockdiag(Lambda_L^-1, 0))``, a new movie's
``N((mu_R, mu_0), blockdiag(Lambda_R^-1, 1/tau_m))``, or a folded-in row's
conditional). :func:`user_side` and :func:`item_side` build the two sides
from a draw.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from bayesmf import metrics
from bayesmf.arrays import next_pow2, padded_count
from bayesmf.metrics import streaming
from bayesmf.memory import Programs, to_device
from bayesmf.model import Params, pair_mean

Array = jax.Array


class Components(NamedTuple):
    """Per-draw components of the predictive mixture of n pairs.

    Attributes
    ----------
    mean : array, shape (S, n)
    sd : array, shape (S, n)
        Total sd of each component (noise and the spread of unseen or
        folded-in sides).
    noise_sd : array, shape (S,)
    weights : array, shape (S, n), or None
        Mixture weight of each component of each pair (columns sum to 1);
        None for uniform weights ``1/S``.
    """

    mean: np.ndarray
    sd: np.ndarray
    noise_sd: np.ndarray
    weights: np.ndarray | None = None


class Pairs(NamedTuple):
    """(user, item) pairs as a predictor resolves them.

    Attributes
    ----------
    users, items : array, shape (n,)
        External ids (or fold-in labels for the folded-in side).
    user_index, item_index : int array, shape (n,)
        What :meth:`Predictor.components` takes (``-1``: not seen).
    known_user, known_item : bool array, shape (n,)
        False where the side is a cold-start prior or a folded-in row.
    folded_in : bool array, shape (n,), or None
        For a fold-in: True where the prediction conditions on given ratings.
    """

    users: np.ndarray
    items: np.ndarray
    user_index: np.ndarray
    item_index: np.ndarray
    known_user: np.ndarray
    known_item: np.ndarray
    folded_in: np.ndarray | None = None


@runtime_checkable
class Predictor(Protocol):
    """What predicts ratings: a posterior, or users or movies folded into one.

    Attributes
    ----------
    scale : bayesmf.data.RatingScale
    """

    scale: object

    def pairs(self, users, items) -> Pairs:
        """Resolve external ids (or fold-in labels) to index pairs."""
        ...

    def components(self, user_index, item_index) -> Components:
        """Per-draw predictive components for index pairs, shape (S, n) each."""
        ...


def check_prob(prob) -> float:
    """``prob`` as a float in (0, 1), or a ValueError naming it."""
    if isinstance(prob, bool) or not isinstance(prob, (int, float, np.floating, np.integer)) or not 0.0 < prob < 1.0:
        raise ValueError(f"interval probability must be a number in (0, 1), got {prob!r}")
    return float(prob)


# --- the math of one pair under one draw --------------------------------------------------


class Side(NamedTuple):
    """One side of a pair under one draw (or a batch of draws).

    Attributes
    ----------
    vec : array, shape (..., n, k) or (..., 1, k)
        Mean of the side's augmented vector (``(L_u, 1)`` or ``(R_v, m_v)``).
    cov : array, shape (..., k, k)
        Covariance of the vector where it is random.
    random : bool array, shape (n,) or ()
        Whether the side is random for each pair (else known: zero covariance).
    """

    vec: Array
    cov: Array
    random: Array


def _quad(x: Array, cov: Array) -> Array:
    """``x^T C x`` over the last axis: x (..., n, k), C (..., k, k) -> (..., n)."""
    return jnp.sum(jnp.matmul(x, cov) * x, axis=-1)


def product_moments(a: Side, b: Side) -> tuple[Array, Array]:
    """Mean and variance of ``x . y`` for independent ``x ~ a``, ``y ~ b``.

    .. math::

        E[x^\\top y] = a^\\top b, \\qquad
        \\mathrm{Var}[x^\\top y] = b^\\top A b + a^\\top B a + \\mathrm{tr}(A B)

    where a known side has zero covariance (its terms drop).

    Returns
    -------
    mean, var : array, shape (..., n)
    """
    mean = jnp.sum(a.vec * b.vec, axis=-1)
    trace = jnp.sum(a.cov * jnp.swapaxes(b.cov, -1, -2), axis=(-1, -2))[..., None]
    var = (
        jnp.where(a.random, _quad(b.vec, a.cov), 0.0)
        + jnp.where(b.random, _quad(a.vec, b.cov), 0.0)
        + jnp.where(a.random & b.random, trace, 0.0)
    )
    return mean, var


def _pad_cov(cov: Array, corner: Array) -> Array:
    """``blockdiag(cov, corner)``: (..., d, d), (...,) -> (..., d + 1, d + 1)."""
    d = cov.shape[-1]
    out = jnp.zeros(cov.shape[:-2] + (d + 1, d + 1), cov.dtype)
    return out.at[..., :d, :d].set(cov).at[..., d, d].set(corner)


def _with_one(x: Array, value) -> Array:
    """Append ``value`` on the last axis: (..., d) -> (..., d + 1)."""
    return jnp.concatenate([x, jnp.broadcast_to(jnp.asarray(value, x.dtype), x.shape[:-1] + (1,))], axis=-1)


def _inverse(precision: Array) -> Array:
    eye = jnp.eye(precision.shape[-1], dtype=precision.dtype)
    return jnp.linalg.solve(precision, jnp.broadcast_to(eye, precision.shape))


def _insert_one(vec: Array, cov: Array) -> tuple[Array, Array]:
    """``(x, m) -> (x, 1, m)`` and its covariance with a zero row and column for the 1.

    vec (..., k), cov (..., k, k) -> (..., k + 1), (..., k + 1, k + 1): the
    movie side's augmented vector when users have offsets.
    """
    d = vec.shape[-1] - 1
    vec = jnp.concatenate([_with_one(vec[..., :d], 1.0), vec[..., d:]], axis=-1)
    out = jnp.zeros(cov.shape[:-2] + (d + 2, d + 2), cov.dtype)
    keep = np.r_[0:d, d + 1]
    out = out.at[..., keep[:, None], keep[None, :]].set(cov)
    return vec, out


def _feature_mean(mean: Array, link, x) -> Array:
    """A new row's prior mean with a pair axis: ``mu`` shared by every pair, or with features ``mu + B^T x`` per pair.

    mean (..., d), link (..., F, d) or None, x (n, F) or None -> (..., 1, d) or (..., n, d).
    """
    if link is None or x is None:
        return mean[..., None, :]
    return mean[..., None, :] + jnp.einsum("nf,...fd->...nd", x, link)


def user_side(params: Params, user_index: Array, user_x: Array | None = None, user_spread=None) -> Side:
    """``(L_u, 1)`` for known users, the prior ``N((mu_L, 1), blockdiag(Lambda_L^-1, 0))`` for ``-1``.

    With user offsets the vector is ``(L_u, b_u, 1)``, and the prior
    ``N((mu_L, 0, 1), blockdiag(Lambda_L^-1, 1/tau_b, 0))`` (matched by
    :func:`item_side`'s ``(R_v, 1, m_v)``).

    Parameters
    ----------
    params : Params
        One draw, or draws with leading axes (factors ``(..., N, d)``).
    user_index : int array, shape (n,)
    user_x : array, shape (n, F_u), optional
        With features (``params.user_link``): each pair's user feature row;
        a new user's prior mean is then ``mu_L + B^T x`` (zero rows: ``mu_L``).
    user_spread : array, shape (..., d, d), optional
        Added to a new user's prior covariance: the spread of ``B^T x`` over
        the features that are not known (:mod:`bayesmf.spread`).
    """
    known = user_index >= 0
    index = jnp.where(known, user_index, 0)
    factors = jnp.take(params.user_factors, index, axis=-2)
    cov = _inverse(params.user_precision)
    if user_spread is not None:
        cov = cov + user_spread
    mean = _feature_mean(params.user_mean, params.user_link, user_x)
    if params.user_offsets is not None:
        factors = jnp.concatenate([factors, jnp.take(params.user_offsets, index, axis=-1)[..., None]], axis=-1)
        mean = _with_one(mean, 0.0)
        cov = _pad_cov(cov, 1.0 / params.user_offset_precision)
    vec = jnp.where(known[:, None], _with_one(factors, 1.0), _with_one(mean, 1.0))
    cov = _pad_cov(cov, jnp.zeros_like(params.offset_precision))
    return Side(vec, cov, ~known)


def item_side(params: Params, item_index: Array, item_x: Array | None = None, item_spread=None) -> Side:
    """``(R_v, m_v)`` for known movies, ``N((mu_R, mu_0), blockdiag(Lambda_R^-1, 1/tau_m))`` for ``-1``.

    With user offsets, ``(R_v, 1, m_v)`` and ``N((mu_R, 1, mu_0), blockdiag(Lambda_R^-1, 0, 1/tau_m))``.
    With features and ``item_x`` (n, F_v), a new movie's ``mu_R`` is ``mu_R + B^T z``; ``item_spread``
    (..., d, d) is added to ``Lambda_R^-1`` (as :func:`user_side`'s).
    """
    known = item_index >= 0
    i = jnp.where(known, item_index, 0)
    factors = jnp.take(params.item_factors, i, axis=-2)
    offsets = jnp.take(params.item_offsets, i, axis=-1)
    vec_known = jnp.concatenate([factors, offsets[..., None]], axis=-1)
    mean = _feature_mean(params.item_mean, params.item_link, item_x)
    offset_mean = jnp.broadcast_to(params.offset_mean[..., None, None], mean.shape[:-1] + (1,))
    vec = jnp.where(known[:, None], vec_known, jnp.concatenate([mean, offset_mean], axis=-1))
    factor_cov = _inverse(params.item_precision)
    if item_spread is not None:
        factor_cov = factor_cov + item_spread
    cov = _pad_cov(factor_cov, 1.0 / params.offset_precision)
    if params.user_offsets is not None:
        vec, cov = _insert_one(vec, cov)
    return Side(vec, cov, ~known)


def row_side(mean: Array, cov: Array, side: str, user_offsets: bool = False) -> Side:
    """A folded-in row's conditional ``N(mean, cov)`` under each draw as a :class:`Side`.

    Parameters
    ----------
    mean : array, shape (S, k)
        ``k = d`` for a user (its side is ``(L, 1)``), ``d + 1`` for a movie
        (``(R, m)``, the offset last). With user offsets a user's row is
        ``(L, b)`` (``k = d + 1``; side ``(L, b, 1)``) and a movie's side
        becomes ``(R, 1, m)``.
    cov : array, shape (S, k, k)
    side : {"user", "item"}
    user_offsets : bool
        Whether the model has user offsets.
    """
    if side == "user":
        return Side(_with_one(mean, 1.0)[:, None, :], _pad_cov(cov, jnp.zeros(cov.shape[:-2], cov.dtype)), jnp.array(True))
    if user_offsets:
        mean, cov = _insert_one(mean, cov)
    return Side(mean[:, None, :], cov, jnp.array(True))


def pair_moments(params: Params, user_index: Array, item_index: Array, user_x: Array | None = None,
                 item_x: Array | None = None, user_spread=None, item_spread=None) -> tuple[Array, Array]:
    """Mean and variance of one draw's predictive for index pairs (``-1``: unseen).

    Parameters
    ----------
    params : Params
        One draw (no leading axes).
    user_index, item_index : int array, shape (n,)
    user_x, item_x : array, shape (n, F), optional
        Feature rows of the pairs' users / movies: a new one's prior mean is
        ``mu + B^T x`` (models with features; ignored for known rows).
    user_spread, item_spread : array, shape (d, d), optional
        Added to a new row's prior covariance (:func:`user_side`).

    Returns
    -------
    mean, var : array, shape (n,)
        Noise ``1/alpha`` included in ``var``.
    """
    mean, var = product_moments(user_side(params, user_index, user_x, user_spread),
                                item_side(params, item_index, item_x, item_spread))
    return mean, var + 1.0 / params.noise_precision


def sampled_means(flat: Params, draw: int, factors, item_index) -> np.ndarray:
    """``<L, R_j> + m_j (+ b)`` under posterior draw ``draw`` for one user's sampled row.

    Parameters
    ----------
    flat : Params
        Draws with one leading axis.
    draw : int
    factors : array, shape (d,), or (d + 1,) with user offsets
        ``L``, or ``(L, b)`` when the model has user offsets.
    item_index : int array, shape (n,)
        Known movies.

    Returns
    -------
    array, shape (n,)
    """
    item_index = np.asarray(item_index, np.int32)
    n = item_index.shape[0]
    if n == 0:
        return np.zeros(0)
    # Padded with its last movie to a few sizes: one compiled program per size, not per user's count.
    padded = item_index[np.minimum(np.arange(padded_count(n)), n - 1)]
    mean = _draw_means(jnp.asarray(factors, flat.item_factors.dtype), jnp.asarray(flat.item_factors[draw]),
                       jnp.asarray(flat.item_offsets[draw]), jnp.asarray(padded), flat.user_offsets is not None)
    return np.asarray(mean, np.float64)[:n]


@functools.partial(jax.jit, static_argnums=4)
def _draw_means(factors, item_factors, item_offsets, item_index, with_offset: bool):
    d = item_factors.shape[-1]
    return pair_mean(factors[None, :d], item_factors, item_offsets, jnp.zeros_like(item_index), item_index,
                     factors[d:] if with_offset else None)


# --- from components to a prediction --------------------------------------------------------


def _weight_groups(weights: np.ndarray):
    """Columns of a (S, n) weight matrix that share one weight vector: yields (cols, w (S,))."""
    if np.all(weights == weights[:, :1]):
        yield np.arange(weights.shape[1]), weights[:, 0]
        return
    _, first, inverse = np.unique(weights.T, axis=0, return_index=True, return_inverse=True)
    for g, col in enumerate(first):
        yield np.flatnonzero(inverse.ravel() == g), weights[:, col]


def mixture_moments(comps: Components) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, variance and noise variance of each pair's mixture, shape (n,) each."""
    if comps.weights is None:
        mean = comps.mean.mean(axis=0)
        var = (comps.sd**2).mean(axis=0) + comps.mean.var(axis=0)
        noise_var = np.full(mean.shape, np.mean(comps.noise_sd**2))
        return mean, var, noise_var
    w = comps.weights
    mean = np.sum(w * comps.mean, axis=0)
    var = np.sum(w * (comps.sd**2 + (comps.mean - mean) ** 2), axis=0)
    return mean, var, w.T @ comps.noise_sd**2


def mixture_interval(comps: Components, prob: float) -> tuple[np.ndarray, np.ndarray]:
    """Central interval of probability ``prob`` of each pair's mixture (exact quantiles), shape (n,) each."""
    prob = check_prob(prob)
    if comps.weights is None:
        return metrics.interval(comps.mean, comps.sd, prob)
    lower, upper = np.empty(comps.mean.shape[1]), np.empty(comps.mean.shape[1])
    for cols, w in _weight_groups(comps.weights):
        lower[cols], upper[cols] = metrics.interval(comps.mean[:, cols], comps.sd[:, cols], prob, weights=w)
    return lower, upper


def score_rows(y: np.ndarray, comps: Components, levels, *, scale=None) -> dict:
    """Per-row scores of ratings ``y`` (n,) under the mixture (see :func:`bayesmf.metrics.score_rows`).

    On a star ``scale`` (a :class:`bayesmf.data.RatingScale` with a step) the
    star scores too.
    """
    if comps.weights is None:
        return metrics.score_rows(y, comps.mean, comps.sd, levels=levels, scale=scale)
    rows = {}
    for cols, w in _weight_groups(comps.weights):
        part = metrics.score_rows(
            y[cols], comps.mean[:, cols], comps.sd[:, cols], weights=w, levels=levels, scale=scale
        )
        for name, values in part.items():
            rows.setdefault(name, np.empty(y.shape[0]))[cols] = values
    return rows


def _score_chunk(tables, user_index, item_index, y, shifts, part, *, moments_fns, levels, tol, cuts):
    """Form a chunk's components on the device with ``moments_fns[part]`` (of ``tables[part]``) and score them.

    Uniform weights; scored in the dtype of ``y`` (float64, as the host
    reference does). One program for every part: the parts' moments are the
    branches of a ``lax.switch`` on ``part``, so the scoring, most of the
    compile, is compiled once however many parts (known and cold pairs)
    there are. Separate programs for the moments would share it too, but
    cost 10% more per chunk on the CPU (the moments no longer fuse into the
    scoring: 209-234 against 187-203 ms per chunk of 5,242 pairs x 100
    draws at rank 32); the switch costs nothing measurable there.
    """

    def moments(fn, table):
        mean, var = fn(table, user_index, item_index)  # (S, c) each
        return mean.astype(y.dtype), var.astype(y.dtype)

    branches = [functools.partial(moments, fn, table) for fn, table in zip(moments_fns, tables)]
    mean, var = branches[0]() if len(branches) == 1 else jax.lax.switch(part, branches)
    w = jnp.full(mean.shape[0], 1.0 / mean.shape[0], y.dtype)
    rows = streaming.chunk_scores(y, mean, var, w, levels=levels, shifts=shifts, tol=tol, cuts=cuts)
    return jnp.stack([rows[name] for name in streaming.row_keys(levels, cuts)])  # (scores, c): one copy to the host


# Chunks of stream_score_rows dispatched ahead of the one whose scores it copies to the host.
CHUNKS_IN_FLIGHT = 4
_score_chunk_jit = Programs(jax.jit(_score_chunk, static_argnames=("moments_fns", "levels", "tol", "cuts")))


def stream_score_rows(
    rng_key: Array,
    params: Params,
    user_index: np.ndarray,
    item_index: np.ndarray,
    y: np.ndarray,
    parts,
    levels,
    *,
    max_pairs: int | None = metrics.MAX_PAIRS,
    tol: float = metrics.QUANTILE_TOL,
    chunk_cells: int | None = None,
    scale=None,
) -> dict:
    """Per-row scores of ratings ``y`` under a uniform mixture over draws, streamed over the pairs on the device.

    What :func:`score_rows` of ``components(user_index, item_index)`` gives
    (the same keys, the same values to float64 round-off, see
    :mod:`bayesmf.metrics.streaming`), without the ``(S, n)`` components on
    the host: the pairs go through in chunks of ``chunk_cells // S`` rows,
    one chunk shape for every part (the last chunk of each padded). In each
    chunk the part's ``moments_fn`` forms the per-draw means and variances on
    the device, in the draws' dtype, and the scores are computed from them in
    float64 in the same jitted program, one program for all the parts (so a
    first call compiles the scoring once). Only ``n`` floats per score come
    back.

    Parameters
    ----------
    rng_key : jax.Array
        Seeds the shifts of the sampled CRPS pair term (used only when
        ``S^2 n > max_pairs``; :func:`bayesmf.metrics.streaming.chunk_shifts`).
    params : Params
        Draws with one leading axis ``S`` (device or host arrays); only
        copied to the device when a part uses them.
    user_index, item_index : int array, shape (n,)
    y : array, shape (n,)
    parts : sequence of (rows, moments_fn) or (rows, moments_fn, part_params)
        Disjoint row sets covering ``0..n-1`` and the function giving their
        components: ``moments_fn(part_params, u, i) -> (mean, var)``, each
        (S, c), a hashable (module-level) function such as a vmapped
        :func:`pair_moments`; ``part_params`` (any pytree of arrays, e.g.
        the draws in another layout) defaults to ``params``.
    levels : sequence of float
    max_pairs : int or None
        Budget of the CRPS pair term over all ``n`` rows (the reference's rule,
        :func:`bayesmf.metrics.streaming.num_shifts_for`); None: exact.
    tol : float
        Absolute tolerance of the mixture quantiles.
    chunk_cells : int, optional
        Components x rows per chunk; default
        :func:`bayesmf.metrics.streaming.default_chunk_cells` of the backend.
    scale : bayesmf.data.RatingScale, optional
        On a star scale the star masses and the star scores are formed on
        the device too (:func:`bayesmf.metrics.stars.star_scores`, the math
        :func:`score_rows` uses on the host).

    Returns
    -------
    dict of str to array, shape (n,)
    """
    levels = streaming.check_levels(levels)
    cuts = metrics.star_cuts(scale)
    y = np.asarray(y, np.float64)
    n = y.shape[0]
    num_draws = params.noise_precision.shape[0]
    num_shifts = streaming.num_shifts_for(num_draws, n, max_pairs)
    rng = streaming.shift_generator(rng_key)
    size = streaming.chunk_rows(num_draws, streaming.default_chunk_cells() if chunk_cells is None else chunk_cells)
    parts = [(np.asarray(rows), moments_fn, own[0] if own else None) for rows, moments_fn, *own in parts]
    parts = [part for part in parts if part[0].size]
    # One chunk shape for every part, so that one program serves them all: a short evaluate
    # pads to a power of two (few shapes), a short part to the others' chunk.
    c = min(size, next_pow2(max((rows.size for rows, _, _ in parts), default=1)))
    on_device = jax.tree.map(to_device, params) if any(own is None for _, _, own in parts) else None
    tables = tuple(on_device if own is None else own for _, _, own in parts)
    moments_fns = tuple(moments_fn for _, moments_fn, _ in parts)
    keys = streaming.row_keys(levels, cuts)  # score_rows' order
    out = np.empty((len(keys), n))

    def collect(keep, scores):
        # A part's rows in order (as evaluate passes them) take a slice: a scatter into the
        # test set's order cost 0.8-1.0 s per 1M rows of 26 scores on the CPU host.
        scores = np.asarray(scores)
        if keep[-1] - keep[0] == keep.size - 1 and np.all(np.diff(keep) == 1):
            out[:, keep[0] : keep[-1] + 1] = scores[:, : keep.size]
        else:
            out[:, keep] = scores[:, : keep.size]

    pending = collections.deque()
    with jax.enable_x64(True):
        for j, (rows, *_) in enumerate(parts):
            for start in range(0, rows.size, c):
                take = rows[np.minimum(np.arange(start, start + c), rows.size - 1)]  # pad with the last row
                scores = _score_chunk_jit(
                    tables, to_device(user_index[take], jnp.int32), to_device(item_index[take], jnp.int32),
                    to_device(y[take]), streaming.chunk_shifts(rng, num_shifts, num_draws, c), np.int32(j),
                    moments_fns=moments_fns, levels=levels, tol=float(tol), cuts=cuts,
                )
                # Collected CHUNKS_IN_FLIGHT chunks later: the device (or the CPU client's threads)
                # runs chunks back to back while Python prepares the next, and only those chunks'
                # scores wait on the device (all of them did: 1M rows, ~200 MB).
                pending.append((rows[start : start + c], scores))
                if len(pending) > CHUNKS_IN_FLIGHT:
                    collect(*pending.popleft())
        while pending:
            collect(*pending.popleft())
    return dict(zip(keys, out))


def star_interval(masses: np.ndarray, values: np.ndarray, prob: float) -> tuple[np.ndarray, np.ndarray]:
    """Central interval of star distributions: the ``(1 - p)/2`` and ``(1 + p)/2`` quantiles, shape (n,) each.

    Each end is the smallest star value whose cdf reaches its level (with a
    1e-12 slack for round-off), so the interval holds mass at least ``p``.

    Parameters
    ----------
    masses : array, shape (n, K)
    values : array, shape (K,)
        The star values.
    prob : float
    """
    prob = check_prob(prob)
    cdf = np.cumsum(masses, axis=1)
    cdf[:, -1] = np.inf  # the top star reaches every level
    lower = np.argmax(cdf >= 0.5 * (1.0 - prob) - 1e-12, axis=1)
    upper = np.argmax(cdf >= 0.5 * (1.0 + prob) - 1e-12, axis=1)
    return values[lower], values[upper]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Predictive ratings for n (user, item) pairs.

    Attributes
    ----------
    mean, sd : array, shape (n,)
        Predictive mean and sd (noise included).
    epistemic_sd : array, shape (n,)
        The part of ``sd`` not due to rating noise: ``sqrt(sd^2 - noise_sd^2)``.
    noise_sd : array, shape (n,)
    lower, upper : array, shape (n,)
        Central interval of probability ``prob`` (exact mixture quantiles).
    prob : float
    known_user, known_item : bool array, shape (n,)
        False where the prediction is a cold-start prior or a folded-in row.
    users, items : array, shape (n,)
        External ids (fold-in labels on a folded-in side).
    components : Components or None
        Per-draw mixture components (``keep_components=True``).
    folded_in : bool array, shape (n,), or None
        For a fold-in: True where the prediction conditions on given ratings.
    star_masses : array, shape (n, K), or None
        The ordinal model's predictive: the mass of each star
        (:mod:`bayesmf.ordinal_predictive`); None for a Gaussian one.
    star_values : array, shape (K,), or None
        The star values of ``star_masses``' columns.
    """

    mean: np.ndarray
    sd: np.ndarray
    epistemic_sd: np.ndarray
    noise_sd: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    prob: float
    known_user: np.ndarray
    known_item: np.ndarray
    users: np.ndarray
    items: np.ndarray
    components: Components | None = None
    folded_in: np.ndarray | None = None
    star_masses: np.ndarray | None = None
    star_values: np.ndarray | None = None

    def __len__(self) -> int:
        return self.mean.shape[0]

    def interval(self, prob: float) -> tuple[np.ndarray, np.ndarray]:
        """Central predictive interval at another probability (exact mixture quantiles), shape (n,) each.

        Raises
        ------
        ValueError
            When the components were not kept: the interval of a mixture
            needs them (predict with ``keep_components=True``, or with
            ``prob=`` set to the level wanted).
        """
        prob = check_prob(prob)
        if self.star_masses is not None:  # a star distribution: its central interval
            return star_interval(self.star_masses, self.star_values, prob)
        if self.components is None:
            raise ValueError(
                "Prediction.interval needs the mixture components: predict with keep_components=True, "
                f"or pass prob={prob} to predict"
            )
        return mixture_interval(self.components, prob)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per pair: ids, mean, sd, epistemic_sd, interval, flags."""
        frame = pd.DataFrame(
            dict(
                user=self.users,
                item=self.items,
                mean=self.mean,
                sd=self.sd,
                epistemic_sd=self.epistemic_sd,
                lower=self.lower,
                upper=self.upper,
                known_user=self.known_user,
                known_item=self.known_item,
            )
        )
        if self.folded_in is not None:
            frame["folded_in"] = self.folded_in
        return frame


def prediction(pairs: Pairs, comps: Components, *, prob: float | None, clip: bool, scale,
               keep_components: bool) -> Prediction:
    """The :class:`Prediction` of a mixture.

    Parameters
    ----------
    pairs : Pairs
    comps : Components
        Shape (S, n).
    prob : float or None
        Interval probability; None leaves ``lower`` / ``upper`` unset (scores
        compute their own levels, and mixture quantiles cost the most).
    clip : bool
        Clip mean and interval to the rating scale.
    scale : bayesmf.data.RatingScale
    keep_components : bool
    """
    mean, var, noise_var = mixture_moments(comps)
    sd = np.sqrt(var)
    lower = upper = None
    if prob is not None:
        lower, upper = mixture_interval(comps, prob)
    if clip:
        mean = scale.clip(mean)
        lower, upper = (None if x is None else scale.clip(x) for x in (lower, upper))
    return Prediction(
        mean=mean,
        sd=sd,
        epistemic_sd=np.sqrt(np.maximum(var - noise_var, 0.0)),
        noise_sd=np.sqrt(noise_var),
        lower=lower,
        upper=upper,
        prob=prob,
        known_user=pairs.known_user,
        known_item=pairs.known_item,
        users=pairs.users,
        items=pairs.items,
        components=comps if keep_components else None,
        folded_in=pairs.folded_in,
    )


def predict(predictor: Predictor, users, items, *, prob: float = 0.9, clip: bool = False,
            keep_components: bool = False) -> Prediction:
    """Predictive ratings of any :class:`Predictor` for (user, item) pairs.

    Parameters
    ----------
    predictor : Predictor
    users, items : array-like, shape (n,)
        External ids (fold-in labels on a folded-in side).
    prob : float
        Probability of the central interval.
    clip : bool
        Clip mean and interval to the rating scale.
    keep_components : bool
        Keep the per-draw components (memory S * n * 2 floats).

    Returns
    -------
    Prediction
    """
    prob = check_prob(prob)
    pairs = predictor.pairs(users, items)
    comps = predictor.components(pairs.user_index, pairs.item_index)
    return prediction(pairs, comps, prob=prob, clip=clip, scale=predictor.scale, keep_components=keep_components)
