"""Ranking with uncertainty: top-k movies and offline ranking metrics (similar movies: :mod:`bayesmf.similar`).

Every score comes from a :class:`bayesmf.predictive.Predictor`: a fitted
:class:`~bayesmf.posterior.Posterior` or users folded into one
(:func:`bayesmf.coldstart.fold_in_users`). Ranking uses the protocol only
(``pairs``, ``components``) plus what a ranking needs of a user: the movies
to exclude as seen (``seen_items``) and one joint posterior sample of the
mean ratings (``sample_means``, for Thompson sampling).

==============  ===============================================================
strategy        score of movie j for the user
==============  ===============================================================
``mean``        predictive mean ``E[r_j]``
``lcb``         ``E[r_j] - beta * sd_j`` (cautious: penalise uncertain movies)
``ucb``         ``E[r_j] + beta * sd_j`` (optimistic: explore uncertain movies)
``thompson``    the mean rating under one posterior sample: one draw ``s``
                (by the mixture weights), then the user's factors from that
                draw (exact for a known user, the prior for an unknown one,
                the fold-in conditional for a folded-in one),
                ``m_j^s + R_j^s . L``: one coherent sample across movies
``prob_above``  ``P(r_j >= threshold)`` under the predictive mixture
==============  ===============================================================

``sd_j`` is by default the *epistemic* sd (``spread="epistemic"``): the
uncertainty about the user's mean rating of the movie, which is what a
confidence bound on a recommendation is about. The noise part of the
predictive sd is the same for every movie of a user (``E_s[1/alpha_s]``), so
it only shifts the predictive sd toward a constant; ``spread="predictive"``
uses the full predictive sd instead.

A point estimate (MAP, one draw) has no epistemic spread, so lcb/ucb collapse
to the mean and Thompson sampling to the mean ranking unless
``uncertainty="laplace"`` (the same option, with the same default, as
:meth:`Posterior.predict`): then the conditional (per-row Laplace) variance
of the user's factors given the movies, ``R_j^T P_u^{-1} R_j``, is used, and
Thompson samples the user's factors from ``N(L_u, P_u^{-1})``.

Ties are broken by movie index ascending (a stable sort of candidates in
index order), so rankings are deterministic.

Known users of a :class:`~bayesmf.posterior.Posterior` are ranked in blocks
(:func:`recommend` for many users at once), with no Python loop per user:

1. *bulk scores* of every candidate movie for a block of users, in float32
   on the JAX device: for ``mean`` one matmul over all draws at once
   (``[L_u^1 .. L_u^S] . [R_j^1 .. R_j^S] / S + mean_s m_j^s``); for
   ``lcb`` / ``ucb`` a scan over draws accumulating the sums of
   ``mu_s - mu_1`` and its square (shifted data: no cancellation), giving
   the mixture mean, the epistemic variance ``var_s(mu_s)`` (floored as in
   the per-user path) and the predictive variance (plus ``E_s[1/alpha_s]``);
   for ``prob_above`` a scan accumulating ``ndtr((mu_s - t) sqrt(alpha_s))``;
   for ``thompson`` each user's own draw ``s_n`` (the same key stream as one
   user at a time). A point estimate with ``uncertainty="laplace"`` takes,
   per block, its users' conditional variances of every movie
   (:func:`bayesmf.laplace.block_variances`), or for Thompson their row
   draws (:func:`bayesmf.laplace.conditional_noise`, exact). Seen movies
   and non-candidates are masked out and the best ``k + SHORTLIST_EXTRA``
   (plus one, the *bound*) kept per user;
2. *exact rescoring* of the shortlist: the per-draw means in the arithmetic
   of :func:`bayesmf.model.pair_mean` (as :meth:`Posterior.components` has
   them for known pairs), the Laplace variances as the per-user path forms
   them (:func:`bayesmf.laplace.pair_variances`), and the per-user path's own
   float64 moments and scores, then the stable tie rule;
3. a *guard*: every movie left out of the shortlist has a bulk score at most
   the bound, hence an exact score at most ``bound + BULK_SCORE_TOL * max(1,
   |bound|)``; a user whose k-th exact score is not above that (a near-tie
   across the shortlist's edge) is ranked again by the per-user path.

So the batch returns exactly what ranking the users one at a time returns.
Unknown users (cold start), fold-ins and ordinal models take the per-user
path.
"""

from __future__ import annotations

import functools
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.scipy.special import ndtr as device_ndtr
from scipy.special import ndtr
from tqdm.auto import tqdm

from bayesmf import laplace, metrics
from bayesmf.arrays import next_pow2
from bayesmf.choices import SPREADS, STRATEGIES
from bayesmf.model import Params, augmented_factors, pair_mean
from bayesmf.ordinal_model import star_grid
from bayesmf.ordinal_predictive import draw_star_means, mixture_masses, star_moments
from bayesmf.posterior import Posterior, check_uncertainty
from bayesmf.predictive import Components, mixture_moments

Array = jax.Array

# The components are float32 computations: 1/alpha inside a component's variance
# carries a relative round-off of ~eps32 = 1.2e-7 against the float64 noise
# variance it is compared with. An epistemic variance below this many eps32 of
# the noise variance is round-off (a point estimate's plug-in predictive has
# none at all) and counts as 0, so that it cannot reorder ties.
EPISTEMIC_FLOOR_EPS = 64

# --- the batched path (see the module docstring) ---
# Bytes of float32 that one block of the bulk scores may hold on the device
# (inputs gathered for the block, its (users x movies) accumulators).
BATCH_BLOCK_BYTES = 256 * 2**20
# Users per block of the scans over draws (lcb / ucb / prob_above): four
# (users x movies) float32 arrays live per step; 256 x 3,706 movies keeps them
# near the cache (on 2 cores: 128-256 ran 1.3-2x faster than 1,024).
SCAN_BLOCK_USERS = 256
# Most users per block of the single-matmul mean and of Thompson sampling.
MEAN_BLOCK_USERS = 1024
THOMPSON_BLOCK_USERS = 128
# Candidates beyond k that are rescored exactly per user.
SHORTLIST_EXTRA = 10
# Bound on |bulk score - exact score| relative to max(1, |score|). The bulk
# scores are float32 sums over draws of float32 inner products (the exact
# ones: float64 moments of the same float32 per-draw means); on the test
# posterior they stay below 1e-6 for every strategy (a test asserts < 1e-5),
# so 1e-4 leaves a factor of 100.
BULK_SCORE_TOL = 1e-4
# Largest (draws x pairs) block of the exact rescoring (float64: 8 bytes a cell),
# and users per device block of its per-draw means (32 x 20 movies x 200 draws
# x rank 32 floats gathered: 16 MB; 128 ran 2.5x slower on 2 cores).
RESCORE_CELLS = 2**23
RESCORE_BLOCK_USERS = 32


def check_k(k) -> int:
    """``k`` of a top-k list as an int, or a ValueError naming it."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    return int(k)


def _check_options(strategy, beta, threshold, rng_key, spread, uncertainty):
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    if strategy == "thompson" and rng_key is None:
        raise ValueError(
            "strategy='thompson' draws from the posterior: pass rng_key=jax.random.PRNGKey(seed) "
            "(one key per call; the same key gives the same ranking)"
        )
    if spread not in SPREADS:
        raise ValueError(f"unknown spread {spread!r}; expected one of {SPREADS}")
    check_uncertainty(uncertainty)


def _candidates(target, items) -> tuple[np.ndarray, np.ndarray]:
    """Candidate external ids and their indices, in index order (the tie-break order)."""
    vocab = target.item_vocab
    if items is None:
        index = np.arange(len(vocab))
        return np.asarray(vocab.ids)[index], index
    items = np.atleast_1d(np.asarray(items))
    if items.ndim != 1:
        raise ValueError(f"items must be 1-D, got shape {items.shape}")
    values, counts = np.unique(items, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"duplicate candidate items {values[counts > 1].tolist()}")
    index = np.asarray(vocab.index(items, missing="flag"), np.int64)
    if np.any(index < 0):
        raise ValueError(
            f"candidate items unknown to the model: {items[index < 0].tolist()}; recommend ranks movies the "
            "model has seen (fold new movies in with bayesmf.fold_in_items to predict them)"
        )
    order = np.argsort(index, kind="stable")
    return items[order], index[order]


class _Scored(NamedTuple):
    mean: np.ndarray  # (n,)
    sd: np.ndarray  # (n,)
    epistemic_sd: np.ndarray  # (n,)
    components: Components  # (S, n)
    tail: np.ndarray | None = None  # (n, K): an ordinal model's P(star >= each star value), else None
    values: np.ndarray | None = None  # (K,): its star values


def _moments(comps: Components) -> _Scored:
    """Mixture mean, predictive sd and epistemic sd (floored, see EPISTEMIC_FLOOR_EPS) of components (S, n)."""
    if comps.mean.shape[1] == 0:
        empty = np.zeros(0)
        return _Scored(empty, empty, empty, comps)
    mean, var, noise_var = mixture_moments(comps)
    epistemic_var = var - noise_var
    floor = EPISTEMIC_FLOOR_EPS * np.finfo(np.float32).eps * noise_var
    epistemic_sd = np.sqrt(np.where(epistemic_var > floor, epistemic_var, 0.0))
    return _Scored(mean, np.sqrt(var), epistemic_sd, comps)


def _predictive(target, user, ids: np.ndarray, uncertainty: str) -> _Scored:
    """Mixture moments of the candidates' predictive for one user.

    The same components as ``predict``, but without the mixture quantiles of
    the predictive interval, which ranking does not need and which cost more
    than everything else (a bisection over all draws and movies).
    """
    pairs = target.pairs(np.repeat(np.asarray([user]), ids.shape[0]), ids)
    comps = target.components(pairs.user_index, pairs.item_index, uncertainty=uncertainty)
    if not _ordinal(target):
        return _moments(comps)
    # An ordinal model predicts stars: its scores come from the star distribution, not the latent components.
    cuts, values = target.flat_draws().cutpoints, star_grid(target.scale)
    masses = mixture_masses(cuts, comps)
    mean, var = star_moments(masses, values)
    epistemic = np.std(draw_star_means(cuts, comps, values), axis=0)
    return _Scored(mean, np.sqrt(var), epistemic, comps, np.cumsum(masses[:, ::-1], axis=1)[:, ::-1], values)


def _ordinal(target) -> bool:
    return getattr(getattr(target, "config", None), "likelihood", "gaussian") == "ordinal"


def _prob_above(comps: Components, threshold: float) -> np.ndarray:
    """``P(r >= threshold)`` under the mixture, shape (n,)."""
    tail = ndtr((comps.mean - threshold) / comps.sd)  # per component, (S, n)
    if comps.weights is None:
        return tail.mean(axis=0)
    return np.sum(comps.weights * tail, axis=0)


def _score(pred: _Scored, strategy, beta, threshold, spread) -> np.ndarray:
    """The score of every strategy but Thompson's from the predictive, shape (n,)."""
    sd = pred.epistemic_sd if spread == "epistemic" else pred.sd
    if strategy == "mean":
        return pred.mean
    if strategy == "lcb":
        return pred.mean - beta * sd
    if strategy == "ucb":
        return pred.mean + beta * sd
    if pred.tail is not None:  # P(star >= threshold): the mass of the stars at or above it
        first = int(np.sum(pred.values < threshold))  # the lowest star >= threshold (K: none)
        return pred.tail[:, first] if first < pred.tail.shape[1] else np.zeros(pred.tail.shape[0])
    return _prob_above(pred.components, threshold)


def titled_frame(target, columns: dict) -> pd.DataFrame:
    """``columns`` as a DataFrame, with a ``title`` column when ``target`` has titles."""
    frame = pd.DataFrame(columns)
    if target.titles:
        frame["title"] = [target.titles.get(x.item() if hasattr(x, "item") else x) for x in frame["item"]]
    return frame


def _one_user(target, user, k, strategy, beta, threshold, exclude_seen, rng_key, items, uncertainty, spread) -> dict:
    ids, index = _candidates(target, items)
    if exclude_seen:
        keep = ~np.isin(ids, target.seen_items(user))
        ids, index = ids[keep], index[keep]
    pred = _predictive(target, user, ids, uncertainty)
    if strategy == "thompson":
        score = target.sample_means(rng_key, user, index, uncertainty=uncertainty)
    else:
        score = _score(pred, strategy, beta, threshold, spread)
    score = np.asarray(score, np.float64)
    order = np.argsort(-score, kind="stable")[:k]
    return dict(
        item=ids[order], score=score[order], mean=pred.mean[order], sd=pred.sd[order],
        epistemic_sd=pred.epistemic_sd[order],
    )


# --- many known users of a posterior at once (see the module docstring) ----------------------


@jax.jit
def _mean_block(user_cat: Array, item_cat: Array, item_offsets: Array) -> Array:
    """Mixture means by one matmul over all draws: user_cat (U, S * D), item_cat (M, S * D), item_offsets (S, M) -> (U, M)."""
    return (user_cat @ item_cat.T) / item_offsets.shape[0] + jnp.mean(item_offsets, axis=0)


@jax.jit
def _moments_block(user_factors: Array, item_factors: Array, item_offsets: Array) -> tuple[Array, Array]:
    """Mixture mean and ``var_s(mu_s)`` of (S, U, D) x (S, M, D) per-draw means, shifted by draw 0: (U, M) each."""
    shift = user_factors[0] @ item_factors[0].T + item_offsets[0]

    def step(carry, draw):
        l, r, m = draw
        d = l @ r.T + m - shift
        return (carry[0] + d, carry[1] + d * d), None

    zeros = jnp.zeros_like(shift)
    (total, squares), _ = jax.lax.scan(step, (zeros, zeros), (user_factors[1:], item_factors[1:], item_offsets[1:]))
    num_draws = user_factors.shape[0]
    offset = total / num_draws
    return shift + offset, jnp.maximum(squares / num_draws - offset * offset, 0.0)


@jax.jit
def _prob_block(user_factors: Array, item_factors: Array, item_offsets: Array, noise_precision: Array,
                threshold: Array) -> Array:
    """``mean_s ndtr((mu_s - t) sqrt(alpha_s))`` (known pairs: ``sd_s^2 = 1/alpha_s``), shape (U, M)."""
    def step(acc, draw):
        l, r, m, root_alpha = draw
        return acc + device_ndtr((l @ r.T + (m - threshold)) * root_alpha), None

    zeros = jnp.zeros((user_factors.shape[1], item_factors.shape[1]), item_factors.dtype)
    acc, _ = jax.lax.scan(step, zeros, (user_factors, item_factors, item_offsets, jnp.sqrt(noise_precision)))
    return acc / user_factors.shape[0]


@jax.jit
def _thompson_block(factors: Array, item_factors: Array, item_offsets: Array, draw: Array) -> Array:
    """Each user's means under its own draw: factors (U, D), draw (U,) -> (U, M)."""
    return jnp.einsum("ud,umd->um", factors, item_factors[draw]) + item_offsets[draw]


@jax.jit
def _bound_block(mean: Array, var: Array, noise_var: Array, signed_beta: Array, predictive: bool) -> Array:
    """``mean +/- beta * sd`` with the epistemic floor of the per-user path, (U, M)."""
    floor = EPISTEMIC_FLOOR_EPS * np.finfo(np.float32).eps * noise_var
    sd = jnp.where(predictive, jnp.sqrt(var + noise_var), jnp.sqrt(jnp.where(var > floor, var, 0.0)))
    return mean + signed_beta * sd


@functools.partial(jax.jit, static_argnames="with_offset")
def _pair_means_block(user_factors: Array, item_factors: Array, item_offsets: Array, movies: Array,
                      with_offset: bool = False) -> Array:
    """Per-draw means ``<L_u^s, R_j^s> + m_j^s (+ b_u^s)`` of each user's movies: (U, S, D), (M, S, D), (M, S),
    (U, K) -> (U, K, S); with ``with_offset`` the last column of the augmented factors is ``(b_u, 1)``.

    Draw-minor layouts: a movie's draws are one contiguous gather (3x faster
    on 2 cores than gathering one row per draw and pair).
    """
    d = user_factors.shape[-1] - with_offset
    products = user_factors[:, None, :, :d] * item_factors[movies][..., :d]  # the arithmetic of bayesmf.model.pair_mean
    mean = products @ jnp.ones(d, products.dtype) + item_offsets[movies]
    return mean + user_factors[:, None, :, d] if with_offset else mean


@functools.partial(jax.jit, static_argnames="size")
def _masked_top(scores: Array, valid: Array, size: int) -> tuple[Array, Array]:
    return jax.lax.top_k(jnp.where(valid, scores, -jnp.inf), size)


def _seen_lists(posterior) -> laplace.TrainRows:
    """Training movies of every user over the posterior's indices, CSR: indptr (N + 1,), item index (nnz,)."""
    train = posterior.train
    u = np.asarray(posterior.user_vocab.index(train.user_vocab.ids, missing="flag"))[np.asarray(train.user_index)]
    i = np.asarray(posterior.item_vocab.index(train.item_vocab.ids, missing="flag"))[np.asarray(train.item_index)]
    keep = (u >= 0) & (i >= 0)
    return laplace.csr_rows(u[keep], i[keep], len(posterior.user_vocab))


def _valid(user_index: np.ndarray, candidate: np.ndarray, seen) -> np.ndarray:
    """Candidates not seen, (U, M) bool."""
    valid = np.repeat(candidate[None], user_index.shape[0], axis=0)
    if seen is not None:
        indptr, items = seen
        start, count = indptr[user_index], indptr[user_index + 1] - indptr[user_index]
        within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        valid[np.repeat(np.arange(user_index.shape[0]), count), items[np.repeat(start, count) + within]] = False
    return valid


def _block_size(n: int, most: int) -> int:
    """Users per block: a power of two (few compiled shapes), at most ``most``."""
    return int(min(most, next_pow2(n)))


def _user_keys(rng_key, positions: np.ndarray, single: bool) -> Array:
    """Each user's key, as the per-user loop gives it: ``fold_in(rng_key, n)`` (the key itself for one user)."""
    return jnp.expand_dims(rng_key, 0) if single else jax.vmap(jax.random.fold_in, (None, 0))(rng_key, jnp.asarray(positions))


def _thompson_draws(rng_key, positions: np.ndarray, num_draws: int, single: bool) -> np.ndarray:
    """The draw ``s`` of each user, as :meth:`Posterior.sample_means` picks it from the user's key."""
    pick = jax.vmap(lambda key: jax.random.randint(jax.random.split(key)[0], (), 0, num_draws))
    return np.asarray(pick(_user_keys(rng_key, positions, single)), np.int64)


class _Laplace(NamedTuple):
    """A point estimate's Laplace spread for the batched path (:mod:`bayesmf.laplace`)."""

    point: Params  # the estimate, one draw
    rows: laplace.TrainRows  # every user's training movies
    noise: np.ndarray | None  # (n, k): Thompson's row draw of each ranked user, as Posterior.sample_means draws it


def _laplace_of(posterior, user_index, rng_key, positions, single, strategy) -> _Laplace:
    point = jax.tree.map(lambda x: jnp.asarray(x[0]), posterior.flat_draws())
    rows = _seen_lists(posterior)
    noise = None
    if strategy == "thompson":  # sample_means splits each user's key: the draw's choice, then the row draw
        keys = jax.vmap(lambda key: jax.random.split(key)[1])(_user_keys(rng_key, positions, single))
        noise = laplace.conditional_noise(keys, point, rows, user_index)
    return _Laplace(point, rows, noise)


class _Draws(NamedTuple):
    """The draws on the device, float32, in the layouts the blocks read."""

    users: Array  # (n, S, D): the ranked users' factors, draw-minor
    item_factors: Array  # (S, M, D)
    item_offsets: Array  # (S, M)
    items_by_movie: Array  # (M, S, D)
    offsets_by_movie: Array  # (M, S)
    noise_precision: Array  # (S,)


def _device_draws(posterior, user_index) -> _Draws:
    flat = posterior.flat_draws()  # with user offsets (L, b) . (R, 1) + m: the blocks need no offset term
    user_factors, item_factors = augmented_factors(flat, user_index)
    r, m = (jnp.asarray(x, jnp.float32) for x in (item_factors, flat.item_offsets))
    users = jnp.asarray(np.swapaxes(np.asarray(user_factors), 0, 1), jnp.float32)
    return _Draws(users, r, m, jnp.swapaxes(r, 0, 1), m.T, jnp.asarray(flat.noise_precision, jnp.float32))


def _shortlists(posterior, dev: _Draws, user_index, draw, size, strategy, beta, threshold, spread, candidate, seen,
                lap: _Laplace | None = None, progress_bar: bool = False):
    """Bulk scores on the device, masked, the best ``size`` per user: values (n, size) float32, movies (n, size)."""
    num_draws, num_items, rank = dev.item_factors.shape
    if lap is not None and strategy != "mean":  # (U, M, k) products per block
        most = min(SCAN_BLOCK_USERS, BATCH_BLOCK_BYTES // (4 * num_items * (rank + 8)))
    elif strategy == "mean":
        most = min(MEAN_BLOCK_USERS, BATCH_BLOCK_BYTES // (4 * (num_draws * rank + num_items)))
        item_cat = dev.items_by_movie.reshape(num_items, -1)
    elif strategy == "thompson":
        most = min(THOMPSON_BLOCK_USERS, BATCH_BLOCK_BYTES // (4 * num_items * (rank + 2)))
    else:
        most = min(SCAN_BLOCK_USERS, BATCH_BLOCK_BYTES // (4 * num_items * 8))
    n = user_index.shape[0]
    block = _block_size(n, max(1, most))
    values, movies = np.empty((n, size), np.float32), np.empty((n, size), np.int64)
    noise_var = np.float32(np.mean(1.0 / np.asarray(posterior.flat_draws().noise_precision, np.float64)))
    for start in tqdm(range(0, n, block), desc="recommend", unit="block", leave=False,
                      disable=None if progress_bar else True):
        rows = np.arange(start, min(start + block, n))
        rows = np.concatenate([rows, np.full(block - rows.size, rows[-1])])  # one compiled shape
        factors = dev.users[rows]  # (U, S, D)
        if lap is not None and strategy != "mean":
            scores = _laplace_block(dev, lap, factors[:, 0], rows, user_index, strategy, beta, threshold, spread, noise_var)
        elif strategy == "thompson":
            scores = _thompson_block(factors[np.arange(block), draw[rows]], dev.item_factors, dev.item_offsets,
                                     jnp.asarray(draw[rows]))
        elif strategy == "mean":
            scores = _mean_block(factors.reshape(block, -1), item_cat, dev.item_offsets)
        else:
            factors = jnp.swapaxes(factors, 0, 1)
            if strategy == "prob_above":
                scores = _prob_block(factors, dev.item_factors, dev.item_offsets, dev.noise_precision, jnp.float32(threshold))
            else:
                mean, var = _moments_block(factors, dev.item_factors, dev.item_offsets)
                signed = jnp.float32(beta if strategy == "ucb" else -beta)
                scores = _bound_block(mean, var, noise_var, signed, spread == "predictive")
        top_values, top_movies = _masked_top(scores, jnp.asarray(_valid(user_index[rows], candidate, seen)), size)
        keep = slice(0, min(block, n - start))
        values[start : start + block], movies[start : start + block] = np.asarray(top_values)[keep], np.asarray(top_movies)[keep]
    return values, movies


def _laplace_block(dev: _Draws, lap: _Laplace, factors, rows, user_index, strategy, beta, threshold, spread, noise_var):
    """Bulk scores of a point estimate with the Laplace spread for a block of users (factors (U, k)): (U, M)."""
    design = dev.item_factors[0]
    if strategy == "thompson":
        return _thompson_block(factors + jnp.asarray(lap.noise[rows]), dev.item_factors, dev.item_offsets,
                               jnp.zeros(rows.shape[0], jnp.int32))
    var = laplace.block_variances(laplace.user_factors(lap.point, lap.rows, user_index[rows])[1], design)
    mean = _mean_block(factors, design, dev.item_offsets)
    if strategy == "prob_above":
        return device_ndtr((mean - jnp.float32(threshold)) / jnp.sqrt(var + noise_var))
    return _bound_block(mean, var, noise_var, jnp.float32(beta if strategy == "ucb" else -beta), spread == "predictive")


def _exact(posterior, dev: _Draws, row, item_index, strategy, beta, threshold, spread, extra_var=None):
    """Moments and score of pairs (row of ``dev.users``, movie) as the per-user path computes them for known
    pairs (float64 moments of the float32 per-draw means, component variance ``1/alpha_s``, plus a point
    estimate's Laplace variance ``extra_var`` (n,) when given), in blocks.

    Returns mean, sd, epistemic_sd and score (None for Thompson), shape (n,) each.
    """
    noise_precision = np.asarray(posterior.flat_draws().noise_precision)
    with_offset = posterior.flat_draws().user_offsets is not None
    var = np.asarray(1.0 / jnp.asarray(noise_precision), np.float64)  # as Posterior.components: 1/alpha in float32
    noise_sd = 1.0 / np.sqrt(noise_precision.astype(np.float64))
    step = max(1, RESCORE_CELLS // var.shape[0])
    parts = []
    for i in range(0, row.shape[0], step):
        users, inverse = np.unique(row[i : i + step], return_inverse=True)  # row is sorted
        within = np.arange(inverse.shape[0]) - np.searchsorted(inverse, inverse)
        block = _block_size(users.shape[0], RESCORE_BLOCK_USERS)
        padded = -(-users.shape[0] // block) * block  # each user's movies in one row of a table
        table = np.zeros((padded, int(within.max()) + 1), np.int64)
        table[inverse, within] = item_index[i : i + step]
        who = np.concatenate([users, np.full(padded - users.shape[0], users[-1])])
        means = [np.asarray(_pair_means_block(dev.users[who[b : b + block]], dev.items_by_movie, dev.offsets_by_movie,
                                              jnp.asarray(table[b : b + block]), with_offset))
                 for b in range(0, padded, block)]
        mu = np.concatenate(means)[inverse, within].astype(np.float64).T  # (S, pairs)
        sd = np.broadcast_to(np.sqrt(var)[:, None], mu.shape)
        if extra_var is not None:  # as Posterior.components adds it (S = 1)
            sd = np.sqrt(var[:, None] + extra_var[i : i + step][None])
        comps = Components(mean=mu, sd=sd, noise_sd=noise_sd)
        pred = _moments(comps)
        score = None if strategy == "thompson" else _score(pred, strategy, beta, threshold, spread)
        parts.append((pred.mean, pred.sd, pred.epistemic_sd, score))
    parts = parts or [(np.zeros(0),) * 3 + (None if strategy == "thompson" else np.zeros(0),)]
    return tuple(None if p[0] is None else np.concatenate(p) for p in zip(*parts))


def _thompson_exact(posterior, draw, user_index, item_index, noise=None) -> np.ndarray:
    """``<L_u^s, R_j^s> + m_j^s`` of pairs under each pair's draw ``s`` (the arithmetic of
    :func:`bayesmf.predictive.sampled_means`; a point estimate's Laplace row draws ``noise`` (n, k) added to
    ``L_u`` as :meth:`Posterior.sample_means` adds them), float64 (n,)."""
    flat = posterior.flat_draws()
    user_factors, item_factors = (np.asarray(x) for x in augmented_factors(flat))
    num_items, rank = item_factors.shape[1:]
    factors = user_factors[draw, user_index]
    factors = jnp.asarray(factors if noise is None else factors + noise, item_factors.dtype)
    d = rank - (flat.user_offsets is not None)  # (L, b) . (R, 1) as pair_mean adds it: L . R + m, then + b
    mean = pair_mean(factors[:, :d], jnp.asarray(item_factors[..., :d].reshape(-1, d)),
                     jnp.asarray(flat.item_offsets.reshape(-1)), jnp.arange(draw.shape[0], dtype=jnp.int32),
                     jnp.asarray(draw * num_items + item_index, jnp.int32), factors[:, d] if d < rank else None)
    return np.asarray(mean, np.float64)


def _batched(posterior, users, user_index, positions, single, k, strategy, beta, threshold, exclude_seen, rng_key, items,
             uncertainty, spread, progress_bar=False) -> tuple[dict, np.ndarray]:
    """Top k of known users of a posterior (user_index (n,), at ``positions`` of the caller's list).

    Returns
    -------
    rows : dict of flat arrays
        ``position``, ``rank``, ``item``, ``score``, ``mean``, ``sd``, ``epistemic_sd``.
    redo : int array
        Positions that the guard sends to the per-user path.
    """
    ids, index = _candidates(posterior, items)
    num_items = len(posterior.item_vocab)
    candidate = np.zeros(num_items, bool)
    candidate[index] = True
    id_of = np.empty(num_items, ids.dtype)
    id_of[index] = ids
    seen = None
    if exclude_seen:
        if posterior.train is None:
            posterior.seen_items(users[positions[0]])  # raises the posterior's own error
        seen = _seen_lists(posterior)
    num_draws = posterior.num_chains * posterior.num_draws
    draw = _thompson_draws(rng_key, positions, num_draws, single) if strategy == "thompson" else None
    num_short = min(k + SHORTLIST_EXTRA, num_items)
    size = min(num_short + 1, num_items)
    dev = _device_draws(posterior, user_index)
    lap = None
    if uncertainty == "laplace" and num_draws == 1:
        lap = _laplace_of(posterior, user_index, rng_key, positions, single, strategy)
    values, movies = _shortlists(posterior, dev, user_index, draw, size, strategy, beta, threshold, spread, candidate, seen,
                                 lap, progress_bar)
    row, slot = np.nonzero(np.isfinite(values[:, :num_short]))
    u, j = user_index[row], movies[row, slot]

    def laplace_var(u, j):  # the exact Laplace variances of pairs, as the per-user path forms them
        return None if lap is None else laplace.pair_variances(lap.point, lap.rows, u, j)

    if strategy == "thompson":
        score = _thompson_exact(posterior, draw[row], u, j, None if lap is None else lap.noise[row])
    else:
        mean, sd, epistemic_sd, score = _exact(posterior, dev, row, j, strategy, beta, threshold, spread, laplace_var(u, j))
    order = np.lexsort((j, -score, row))  # by user, score descending, movie index ascending
    row, u, j, score = row[order], u[order], j[order], score[order]
    rank = np.arange(row.shape[0]) - np.searchsorted(row, row)
    # The guard: a movie outside the shortlist scored at most `bound` in bulk.
    bound = values[:, num_short] if size > num_short else np.full(values.shape[0], -np.inf, np.float32)
    kth = np.full(values.shape[0], np.inf)
    kth[row[rank == k - 1]] = score[rank == k - 1]
    finite = np.isfinite(bound)
    edge = np.where(finite, bound, 0.0).astype(np.float64)
    unsure = finite & ~(kth > edge + BULK_SCORE_TOL * np.maximum(1.0, np.abs(edge)))
    keep = (rank < k) & ~unsure[row]
    if strategy == "thompson":
        mean, sd, epistemic_sd, _ = _exact(posterior, dev, row[keep], j[keep], strategy, beta, threshold, spread,
                                           laplace_var(u[keep], j[keep]))
    else:
        mean, sd, epistemic_sd = (x[order][keep] for x in (mean, sd, epistemic_sd))
    rows = dict(position=positions[row[keep]], rank=rank[keep] + 1, item=id_of[j[keep]], score=score[keep], mean=mean,
                sd=sd, epistemic_sd=epistemic_sd)
    return rows, positions[unsure]


def recommend(
    target,
    users=None,
    k: int = 10,
    *,
    strategy: str = "mean",
    beta: float = 1.0,
    threshold: float = 4.0,
    exclude_seen: bool = True,
    rng_key: Array | None = None,
    items=None,
    uncertainty: str = "posterior",
    spread: str = "epistemic",
    progress_bar: bool = False,
) -> pd.DataFrame:
    """Top-k movies for one user or many, ranked with or without uncertainty.

    Parameters
    ----------
    target : Posterior or FoldIn
        A fitted posterior (``users`` are external user ids; an unknown id
        gets the cold-start prior) or a fold-in of new users (``users`` are
        its labels: 0, 1, ... unless given).
    users : id, array-like of ids, or None
        One user, several, or None for every user (every training user of a
        posterior, every folded-in user of a fold-in).
    k : int
        Number of movies per user (> 0; fewer come back if fewer candidates
        remain).
    strategy : {"mean", "lcb", "ucb", "thompson", "prob_above"}
        See the module docstring.
    beta : float
        Width of the lcb / ucb bound in sds (>= 0).
    threshold : float
        Rating threshold of ``prob_above`` (``P(r >= threshold)`` under the
        continuous Gaussian predictive: on an integer scale, 3.5 counts
        ratings that round to 4 or more).
    exclude_seen : bool
        Leave out the user's training movies (``posterior.train``) or a
        folded-in user's given movies.
    rng_key : jax.Array, optional
        Required by ``strategy="thompson"``: the same key gives the same
        ranking, another key another sample (user ``n`` of the list gets
        ``fold_in(rng_key, n)`` when several users are ranked).
    items : array-like, optional
        Candidate movies (external ids, all known to the model); default
        every movie.
    uncertainty : {"posterior", "laplace"}
        For a point estimate: ``"laplace"`` adds the conditional variance of
        the user's factors so that lcb / ucb / thompson differ from the mean
        ranking; ``"posterior"`` (default, as in ``predict``) keeps the
        plug-in (noise-only) sd. Changes nothing with several draws.
    spread : {"epistemic", "predictive"}
        Which sd lcb / ucb use (see the module docstring).
    progress_bar : bool
        A ``tqdm.auto`` bar over the blocks of known users (no output when
        stderr is not a terminal).

    Returns
    -------
    pandas.DataFrame
        Columns ``user``, ``rank`` (1..k), ``item``, ``score``, ``mean``,
        ``sd`` (predictive), ``epistemic_sd`` and ``title`` (when the
        posterior has titles): k rows per user in the order the users were
        given, each user's sorted by score descending (ties: movie index
        ascending).

    Raises
    ------
    ValueError
        ``k <= 0``, an unknown strategy, ``beta < 0``, thompson without
        ``rng_key``, unknown or duplicate candidate items.

    Examples
    --------
    >>> recommend(posterior, 1, k=5, strategy="lcb", beta=1.0)  # doctest: +SKIP
    >>> recommend(posterior, [1, 2], strategy="thompson", rng_key=jax.random.PRNGKey(0))  # doctest: +SKIP
    """
    k = check_k(k)
    _check_options(strategy, beta, threshold, rng_key, spread, uncertainty)
    for method in ("pairs", "components", "seen_items", "sample_means"):
        if not callable(getattr(target, method, None)):
            raise TypeError(f"expected a Posterior or a FoldIn of users, got {type(target).__name__}")
    if getattr(target, "side", "user") != "user":
        raise TypeError("recommend ranks movies for a user: pass a Posterior or a FoldIn of users, not one of movies")
    single = users is not None and np.ndim(users) == 0
    if users is None:
        users = target.labels if hasattr(target, "labels") else target.user_vocab.ids
    users = np.atleast_1d(np.asarray(users))
    if hasattr(target, "position"):
        for user in users:
            target.position(user)  # a clear KeyError for an unknown label, before any work
    batched = np.zeros(users.shape[0], bool)
    if isinstance(target, Posterior) and not _ordinal(target) and not (
            uncertainty == "laplace" and target.num_chains * target.num_draws == 1 and target.train is None):
        first = np.repeat(np.asarray(target.item_vocab.ids)[:1], users.shape[0])
        user_index = np.asarray(target.pairs(users, first).user_index)
        batched = user_index >= 0
    parts, redo = [], np.flatnonzero(~batched)
    if batched.any():
        rows, again = _batched(target, users, user_index[batched], np.flatnonzero(batched), single, k, strategy, beta,
                               threshold, exclude_seen, rng_key, items, uncertainty, spread, progress_bar)
        parts.append(rows)
        redo = np.sort(np.concatenate([redo, again]))
    for n in redo:
        key = rng_key if single or rng_key is None else jax.random.fold_in(rng_key, n)
        top = _one_user(target, users[n], k, strategy, beta, threshold, exclude_seen, key, items, uncertainty, spread)
        size = top["item"].shape[0]
        parts.append(dict(position=np.full(size, n), rank=np.arange(1, size + 1), **top))
    columns = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    position = columns.pop("position")
    order = np.argsort(position, kind="stable")
    columns = dict(user=users[position[order]], **{name: values[order] for name, values in columns.items()})
    return titled_frame(target, columns)


# --- offline evaluation ---------------------------------------------------------------------


def evaluate_ranking(
    posterior,
    test_users,
    test_items,
    test_ratings,
    k: int = 10,
    strategy: str = "mean",
    relevance_threshold: float = 4.0,
    *,
    beta: float = 1.0,
    threshold: float = 4.0,
    exclude_seen: bool = True,
    rng_key: Array | None = None,
    uncertainty: str = "posterior",
    spread: str = "epistemic",
) -> dict:
    """Top-k ranking quality on held-out ratings.

    For each test user with at least one relevant test movie (rating >=
    ``relevance_threshold``), rank every movie the model knows except the
    user's training movies (``exclude_seen``) with :func:`recommend` (one
    call for all test users: the batched path) and score the top k against
    the relevant test movies. Test users unknown to the model are ranked by
    the cold-start prior and counted.

    Parameters
    ----------
    posterior : Posterior
    test_users, test_items : array-like, shape (n,)
        External ids.
    test_ratings : array-like, shape (n,)
    k : int
    strategy : str
        As in :func:`recommend` (``thompson`` needs ``rng_key``; user ``i``
        of the sorted test users gets ``fold_in(rng_key, i)``).
    relevance_threshold : float
        A test rating at or above it is relevant.
    beta, threshold, exclude_seen, rng_key, uncertainty, spread
        Passed to :func:`recommend`.

    Returns
    -------
    dict
        ``precision_at_k``, ``recall_at_k``, ``ndcg_at_k``, ``mrr_at_k``,
        ``hit_rate_at_k`` (means over the evaluated users), ``k``, ``strategy``, ``num_users`` (evaluated),
        ``num_users_skipped`` (no relevant test movie), ``num_cold_users``.
    """
    k = check_k(k)
    _check_options(strategy, beta, threshold, rng_key, spread, uncertainty)
    test_users = np.atleast_1d(np.asarray(test_users))
    test_items = np.atleast_1d(np.asarray(test_items))
    test_ratings = np.atleast_1d(np.asarray(test_ratings, np.float64))
    if not (test_users.shape == test_items.shape == test_ratings.shape) or test_users.ndim != 1:
        raise ValueError(
            f"test_users, test_items and test_ratings must be 1-D of one length, got {test_users.shape}, "
            f"{test_items.shape}, {test_ratings.shape}"
        )
    if test_users.size == 0:
        raise ValueError("the test set is empty")
    users = np.unique(test_users)
    liked = test_ratings >= relevance_threshold
    relevant = pd.Series(test_items[liked]).groupby(test_users[liked], sort=True).agg(list)
    scored = np.isin(users, relevant.index.to_numpy())
    if not scored.any():
        raise ValueError(f"no test user has a rating >= {relevance_threshold}: nothing to rank")
    # Every test user is ranked (user n of the sorted list gets fold_in(rng_key, n), as one at a time).
    top = recommend(
        posterior, users, k, strategy=strategy, beta=beta, threshold=threshold, exclude_seen=exclude_seen,
        rng_key=rng_key, uncertainty=uncertainty, spread=spread,
    )
    lists = top.groupby("user", sort=False)["item"].agg(list).reindex(users[scored])
    recommended = [x if isinstance(x, list) else [] for x in lists]
    relevant = list(relevant.reindex(users[scored]))
    cold = int(np.sum(np.asarray(posterior.user_vocab.index(users[scored], missing="flag")) < 0))
    scores = {
        f"{name}_at_k": float(fn(recommended, relevant, k))
        for name, fn in (("precision", metrics.precision_at_k), ("recall", metrics.recall_at_k),
                         ("ndcg", metrics.ndcg_at_k), ("mrr", metrics.mrr_at_k), ("hit_rate", metrics.hit_rate_at_k))
    }
    return dict(**scores, k=k, strategy=strategy, num_users=len(recommended), num_users_skipped=int((~scored).sum()),
                num_cold_users=cold)
