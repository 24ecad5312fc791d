"""Fold-in of new users (and new movies) from a few ratings, without refitting.

A fitted :class:`~bayesmf.posterior.Posterior` holds draws
:math:`\\theta_s = (R, m, \\alpha, \\mu_L, \\Lambda_L, \\ldots)_s`. A new user
with ratings :math:`y_v` of movies :math:`v \\in I` has, under each draw, the
exact Gaussian conditional of the model (the Gibbs user update, computed by
:func:`bayesmf.conjugate.row_posterior`, never a second copy):

.. math::

    P_s &= \\Lambda_L + \\alpha \\sum_{v\\in I} R_v R_v^\\top, \\qquad
    \\hat L_s = P_s^{-1}\\Big(\\Lambda_L \\mu_L
        + \\alpha \\sum_{v\\in I} R_v (y_v - m_v)\\Big) \\\\
    L \\mid y, \\theta_s &\\sim \\mathcal N(\\hat L_s, P_s^{-1}), \\qquad
    r_j \\mid y, \\theta_s \\sim \\mathcal N\\big(m_j + R_j^\\top \\hat L_s,\\
        1/\\alpha + R_j^\\top P_s^{-1} R_j\\big)

and the predictive is the mixture :math:`\\sum_s w_s\\, \\mathcal N(\\cdot)`.

Weights. The draws come from :math:`p(\\theta \\mid D)`; the new ratings are
independent of the training ratings given :math:`\\theta`, so
:math:`p(\\theta \\mid D, y) \\propto p(\\theta \\mid D)\\, p(y \\mid \\theta)`
and the self-normalised importance weights are
:math:`w_s \\propto p(y \\mid \\theta_s)`, the closed-form marginal likelihood
:math:`y \\sim \\mathcal N(m_I + R_I \\mu_L,\\ R_I \\Lambda_L^{-1} R_I^\\top + I/\\alpha)`.
It is evaluated with the determinant lemma and Woodbury through the same
Cholesky factor of :math:`P_s`:

.. math::

    \\log p(y \\mid \\theta_s) = \\tfrac K2 \\log\\frac{\\alpha}{2\\pi}
      + \\tfrac12 \\log|\\Lambda_L| - \\tfrac12 \\log|P_s|
      - \\tfrac12\\big[\\alpha \\lVert y - m_I - R_I \\hat L_s\\rVert^2
      + (\\hat L_s - \\mu_L)^\\top \\Lambda_L (\\hat L_s - \\mu_L)\\big]

(both bracketed terms are non-negative, so there is no cancellation in
float32). ``weighting="equal"`` uses :math:`w_s = 1/S` instead: an
approximation that ignores what the user's ratings say about the shared
quantities (movie factors, noise, hyperparameters). One user among hundreds
moves those very little, while the importance weights lose effective sample
size as the user's ratings grow (check :attr:`FoldIn.effective_sample_size`).
``benchmarks/foldin_latency.py`` measures the gap on truly new ml-100k users
(200 draws): with 10 ratings the predictive means differ by 0.015 stars on
average (ESS median 158, min 34), with 20 by 0.036 (ESS min 1.5), and the
equal weights were marginally *better* on held-out ratings (RMSE 0.973 vs
0.975 at 10 ratings): the Monte Carlo noise of the weights outweighs the
small bias they remove.

A user with no ratings gets exactly the cold-start prior of
:meth:`Posterior.predict` for an unknown user (those rows are delegated to
:meth:`Posterior.components`, and their weights are exactly uniform). A
point estimate (MAP, one draw) gives the ridge solution with the MAP
precisions (the conditional mode) and its conditional covariance.

New movies (:func:`fold_in_items`) are the symmetric update of the Gibbs movie
block: factors and offset jointly, design :math:`(L_u, 1)`, prior
:math:`\\mathcal N((\\mu_R, \\mu_0), \\mathrm{blockdiag}(\\Lambda_R, \\tau_m)^{-1})`.
With ``offsets="empirical"`` the offset prior is the Gaussian the posterior
already uses for unseen movies (global mean, spread of the movie means).
"""

from __future__ import annotations

import functools
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from bayesmf.arrays import next_pow2
from bayesmf.conjugate import RowPosterior, draw_from, row_covariance, row_posterior
from bayesmf.featurerows import training_implicit_mean
from bayesmf.given import PaddedRatings  # noqa: F401 - part of this module's API (fold_in_users takes it)
from bayesmf.given import Given, frame_rows, pad_given, validate_given
from bayesmf.model import Params, user_row_prior
from bayesmf.posterior import Posterior
from bayesmf.predictive import (
    Components,
    Pairs,
    Prediction,
    check_prob,
    item_side,
    prediction,
    product_moments,
    row_side,
    sampled_means,
    user_side,
)

Array = jax.Array

WEIGHTINGS = ("importance", "equal")

# Largest number of floats of the gathered design (draws x users x ratings x
# dim) folded in at once: 2**23 floats (32 MB in float32) bounds the memory of
# a batch fold-in; 1,000 users with 10 ratings over 200 draws at rank 10 take
# 4 blocks.
FOLD_BLOCK_CELLS = 2**23


# Device copies of a posterior's flat draws, shared by every fold-in of it: the
# per-call transfer of the movie factors (13 MB at ml-100k size, 200 draws) would
# otherwise dominate a fold-in's prediction latency. Keyed weakly by the
# posterior; refreshed if its ``draws`` object is replaced.
_DEVICE_DRAWS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_IMPLICIT_CENTRES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _device_draws(posterior: Posterior) -> Params:
    return _device_cache(posterior)[0]


def _user_prior(posterior: Posterior) -> tuple:
    """:func:`bayesmf.model.user_row_prior` of the device draws, computed once per posterior (with user
    offsets it scatters into (S, k, k) arrays: milliseconds op by op, per fold-in call)."""
    return _device_cache(posterior)[1]


def _device_cache(posterior: Posterior) -> tuple:
    cached = _DEVICE_DRAWS.get(posterior)
    if cached is None or cached[0] is not posterior.draws:
        flat = jax.tree.map(jnp.asarray, posterior.flat_draws())
        cached = (posterior.draws, (flat, jax.jit(user_row_prior)(flat)))
        _DEVICE_DRAWS[posterior] = cached
    return cached[1]


@jax.jit
def _row_prior_means(prior_mean, link, used, x, rated, centre_shift):
    """Each row's prior mean per draw, ``mu + (B^T x, 0...)``, from the columns ``used``, less
    ``centre_shift`` on the ``rated`` rows: (S, k), (S, F, d), (c,), (R, c), (R,), (S, d) -> (S, R, k)."""
    shift = jnp.einsum("rf,sfd->srd", x, link[:, used]) - rated[None, :, None] * centre_shift[:, None, :]
    return prior_mean[:, None, :] + jnp.pad(shift, ((0, 0), (0, 0), (0, prior_mean.shape[-1] - shift.shape[-1])))


# --- the fold-in core: row conditional and marginal likelihood per draw -------------------


def _fold_one_draw(prior_precision, prior_mean, design, response, mask, noise_precision):
    """Conditional and log marginal likelihood of a batch of rows under one draw.

    Parameters
    ----------
    prior_precision : array, shape (d, d)
    prior_mean : array, shape (d,)
    design : array, shape (B, K, d)
        Design rows of the given ratings (padding rows arbitrary).
    response : array, shape (B, K)
    mask : array, shape (B, K)
        1 for a given rating, 0 for padding.
    noise_precision : array, shape ()

    Returns
    -------
    mean : array, shape (B, d)
    chol : array, shape (B, d, d)
        Lower Cholesky factor of the conditional precision.
    log_evidence : array, shape (B,)
        ``log p(y | draw)``; exactly 0 for a row with no ratings.
    """
    d = design.shape[-1]
    masked = design * mask[..., None]
    # sum_k z_k [z_k y_k]: the Gram (first d columns) and the right-hand side (last column) as one fused
    # multiply-and-reduce. On XLA:CPU this is several times faster than a batched matmul / einsum of these
    # tiny (d x K) blocks, and the (B, K, d, d + 1) product is never materialized.
    zy = jnp.concatenate([design, response[..., None]], axis=-1)
    products = jnp.sum(masked[..., :, None] * zy[..., None, :], axis=-3)
    gram, rhs = products[..., :d], products[..., d]
    post = row_posterior(prior_precision, prior_mean, gram, rhs, noise_precision)
    fitted = jnp.sum(design * post.mean[:, None, :], axis=-1)
    sse = jnp.sum(mask * (response - fitted) ** 2, axis=-1)
    dev = post.mean - prior_mean
    prior_quad = jnp.sum((dev @ prior_precision) * dev, axis=-1)
    count = jnp.sum(mask, axis=-1)
    logdet_prior = 2.0 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(prior_precision))))
    logdet_post = 2.0 * jnp.sum(jnp.log(jnp.diagonal(post.chol, axis1=-2, axis2=-1)), axis=-1)
    log_evidence = 0.5 * (
        count * (jnp.log(noise_precision) - jnp.log(2.0 * jnp.pi))
        + logdet_prior
        - logdet_post
        - noise_precision * sse
        - prior_quad
    )
    return post.mean, post.chol, jnp.where(count > 0, log_evidence, 0.0)


_fold_draws = jax.vmap(_fold_one_draw, in_axes=(0, 0, 0, 0, None, 0))


@functools.partial(jax.jit, static_argnames="with_one")
def _fold_users(prior_precision, prior_mean, item_factors, item_offsets, idx, ratings, mask, noise_precision, with_one):
    """All draws: users with ratings of movies ``idx`` (B, K); design ``R_v`` (``with_one``: ``(R_v, 1)``, the
    row ``(L, b)`` of a model with user offsets), response ``r - m_v``.

    The design is gathered once for all draws (``take`` along the movie axis:
    several times faster on XLA:CPU than a gather inside the vmap).
    """
    num_draws = item_factors.shape[0]
    design = jnp.take(item_factors, idx.reshape(-1), axis=1).reshape((num_draws,) + idx.shape + item_factors.shape[-1:])
    if with_one:
        design = jnp.concatenate([design, jnp.ones(design.shape[:-1] + (1,), design.dtype)], axis=-1)
    offsets = jnp.take(item_offsets, idx.reshape(-1), axis=1).reshape((num_draws,) + idx.shape)
    return _fold_draws(prior_precision, prior_mean, design, ratings - offsets, mask, noise_precision)


@jax.jit
def _fold_items(prior_precision, prior_mean, user_factors, user_offsets, idx, ratings, mask, noise_precision):
    """All draws: movies with ratings by users ``idx`` (B, K); design ``(L_u, 1)``, response ``r`` (``r - b_u``
    with ``user_offsets`` (S, N), else None)."""
    num_draws = user_factors.shape[0]
    factors = jnp.take(user_factors, idx.reshape(-1), axis=1).reshape((num_draws,) + idx.shape + user_factors.shape[-1:])
    design = jnp.concatenate([factors, jnp.ones(factors.shape[:-1] + (1,), factors.dtype)], axis=-1)
    offsets = 0.0 if user_offsets is None else jnp.take(user_offsets, idx.reshape(-1), axis=1).reshape(design.shape[:-1])
    response = jnp.broadcast_to(ratings - offsets, design.shape[:-1])
    return _fold_draws(prior_precision, prior_mean, design, response, mask, noise_precision)


# Jitted once per shape: called op by op, each would dispatch several primitives.
_covariance = jax.jit(lambda mean, chol: row_covariance(RowPosterior(mean, chol)))
_draw = jax.jit(draw_from)


def _fold(fold_fn, draw_args: tuple, noise_precision, idx, ratings, mask, num_draws: int, dim: int, dtype):
    """Run ``fold_fn(*draw_args, idx, ratings, mask, noise_precision)`` over
    blocks of rows padded to a power of two (few distinct compiled shapes).
    A prior mean per row (``draw_args[1]`` of shape (S, num_rows, dim): features) is cut into the same blocks.

    Returns
    -------
    mean : device array, shape (S, num_rows, dim)
    chol : device array, shape (S, num_rows, dim, dim)
    log_evidence : array, shape (num_rows, S), float64
    """
    num_rows, width = idx.shape
    block = max(1, FOLD_BLOCK_CELLS // max(num_draws * width * dim, 1))
    block = min(1 << (block.bit_length() - 1), next_pow2(num_rows))
    means, chols, logs = [], [], []
    for start in range(0, num_rows, block):
        stop = min(start + block, num_rows)
        pad = ((0, block - (stop - start)), (0, 0))
        # A per-row prior mean is cut like the rows (unless one block is exactly every row).
        per_row = draw_args[1].ndim == 3 and not (start == 0 and stop == num_rows == block)
        args = (draw_args[0], jnp.pad(draw_args[1][:, start:stop], ((0, 0),) + pad) if per_row else draw_args[1],
                *draw_args[2:])
        mean, chol, log_ev = fold_fn(
            *args,
            jnp.asarray(np.pad(idx[start:stop], pad), jnp.int32),
            jnp.asarray(np.pad(ratings[start:stop], pad), dtype),
            jnp.asarray(np.pad(mask[start:stop], pad), dtype),
            noise_precision,
        )
        means.append(mean[:, : stop - start])
        chols.append(chol[:, : stop - start])
        logs.append(log_ev[:, : stop - start])
    if len(means) == 1:
        return means[0], chols[0], np.asarray(logs[0], np.float64).T
    return jnp.concatenate(means, axis=1), jnp.concatenate(chols, axis=1), np.asarray(jnp.concatenate(logs, axis=1), np.float64).T


def _weights(log_evidence: np.ndarray, weighting: str) -> np.ndarray:
    """Self-normalised weights per row, shape (num_rows, S)."""
    if weighting == "equal":
        return np.full(log_evidence.shape, 1.0 / log_evidence.shape[1])
    shifted = np.exp(log_evidence - log_evidence.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# --- the result ---------------------------------------------------------------------------

SIDES = ("user", "item")


@functools.partial(jax.jit, static_argnames="side")
def _row_moments(mean, cov, flat: Params, other_index, side: str):
    """Component means and variances of one folded-in row against the other side, all draws.

    Parameters
    ----------
    mean : array, shape (S, k)
        The row's conditional mean under each draw (a user's ``L``, or a
        movie's ``(R, m)``).
    cov : array, shape (S, k, k)
        Its conditional covariance.
    flat : Params
        The flat draws (leading axis S).
    other_index : int array, shape (n,)
        Indices on the other side, ``-1`` for one the model has not seen.
    side : {"user", "item"}

    Returns
    -------
    mean, var : array, shape (S, n)
        Noise ``1/alpha`` included.
    """
    row = row_side(mean, cov, side, flat.user_offsets is not None)
    if side == "user":
        m, v = product_moments(row, item_side(flat, other_index))
    else:
        m, v = product_moments(user_side(flat, other_index), row)
    return m, v + (1.0 / flat.noise_precision)[:, None]


class FoldIn:
    """New users (``side="user"``) or new movies (``side="item"``) folded into a posterior.

    Made by :func:`fold_in_users` and :func:`fold_in_items`. It implements
    :class:`bayesmf.predictive.Predictor`: ``predict(users, items)`` in the
    same order as :meth:`Posterior.predict`, with fold-in labels on the
    folded-in side.

    Attributes
    ----------
    posterior : Posterior
    side : {"user", "item"}
    weights : array, shape (num_rows, S)
        Mixture weight of each posterior draw for each folded-in row (rows
        sum to 1; ``S`` = chains x draws).
    effective_sample_size : array, shape (num_rows,)
    log_evidence : array, shape (num_rows, S)
        ``log p(y_row | draw s)``; 0 for a row with no ratings.
    given_ids : list of arrays
        Per row, the external ids (movies for users, users for movies) whose
        ratings were used.
    ignored_ids : list of arrays
        Per row, unknown ids left out (``unknown="ignore"``).
    labels : array, shape (num_rows,)
        How predictions and ``recommend`` name the rows (0, 1, ... unless
        given).
    """

    def __init__(self, posterior: Posterior, side: str, given: Given, mean, chol, log_evidence, weighting: str, labels,
                 features=None):
        if side not in SIDES:
            raise ValueError(f"unknown side {side!r}; expected one of {SIDES}")
        self.posterior = posterior
        self.side = side
        self.weighting = weighting
        self._given = given
        self._mean = mean  # (S, rows, k) device
        self._chol = chol  # (S, rows, k, k) device
        self.log_evidence = log_evidence
        # Rows without ratings get exactly uniform weights: their log evidence is exactly 0.
        self.weights = _weights(log_evidence, weighting)
        self.num_given = np.array([len(i) for i in given.index])
        self.labels = np.arange(len(given.index)) if labels is None else np.asarray(labels)
        if self.labels.shape != (len(given.index),):
            raise ValueError(f"need one label per folded-in {side} ({len(given.index)}), got shape {self.labels.shape}")
        if len(np.unique(self.labels)) != len(self.labels):
            raise ValueError(f"labels of the folded-in {side}s must be distinct")
        self._position = {label.item() if hasattr(label, "item") else label: p for p, label in enumerate(self.labels)}
        self._cov = None
        self._x = features  # (rows, F) feature rows of a model with features, else None

    # -- shape -----------------------------------------------------------------
    scale = property(lambda self: self.posterior.scale)
    titles = property(lambda self: self.posterior.titles)
    item_vocab = property(lambda self: self.posterior.item_vocab)

    @property
    def num_rows(self) -> int:
        return len(self._given.index)

    @property
    def num_draws(self) -> int:
        """Number of mixture components (posterior draws, chains merged)."""
        return self.weights.shape[1]

    @property
    def effective_sample_size(self) -> np.ndarray:
        """Kish effective sample size ``1 / sum_s w_s^2`` of each row's weights, shape (num_rows,)."""
        return 1.0 / np.sum(self.weights**2, axis=1)

    @property
    def given_ids(self) -> list[np.ndarray]:
        return list(self._given.ids)

    @property
    def ignored_ids(self) -> list[np.ndarray]:
        """Per row, the unknown ids left out with ``unknown="ignore"`` (empty otherwise)."""
        return list(self._given.ignored)

    # -- conditional of the rows -------------------------------------------------
    @property
    def factor_mean(self) -> np.ndarray:
        """Conditional mean of each row under each draw, shape (S, num_rows, k)."""
        return np.asarray(self._mean)

    @property
    def factor_cov(self) -> np.ndarray:
        """Conditional covariance ``P_s^{-1}`` of each row under each draw, shape (S, num_rows, k, k)."""
        return np.asarray(self._cov_device())

    def _cov_device(self) -> Array:
        if self._cov is None:
            s, n, d = self._mean.shape
            self._cov = _covariance(self._mean.reshape(s * n, d), self._chol.reshape(s * n, d, d)).reshape(s, n, d, d)
        return self._cov

    def factor_draws(self, rng_key: Array) -> np.ndarray:
        """One draw of every row's factors from its conditional under every posterior draw.

        The draw for posterior draw ``s`` comes from ``N(mean_s, P_s^{-1})``;
        weight them with :attr:`weights` (or resample by them) to represent
        the fold-in posterior.

        Parameters
        ----------
        rng_key : jax.Array

        Returns
        -------
        array, shape (S, num_rows, k)
        """
        s, n, d = self._mean.shape
        post = RowPosterior(self._mean.reshape(s * n, d), self._chol.reshape(s * n, d, d))
        return np.asarray(_draw(rng_key, post)).reshape(s, n, d)

    def sample_factors(self, rng_key: Array, label) -> tuple[int, np.ndarray]:
        """One posterior draw ``s`` picked by the weights, then one draw of the row's
        factors from its conditional under ``s`` (Thompson sampling).

        Parameters
        ----------
        rng_key : jax.Array
        label
            The row (as labelled at fold-in; positions 0, 1, ... by default).

        Returns
        -------
        draw : int
            Index ``s`` into the flat (chain x draw) posterior draws.
        factors : array, shape (k,)
        """
        p = self.position(label)
        key_draw, key_row = jax.random.split(rng_key)
        s = int(jax.random.choice(key_draw, self.num_draws, p=jnp.asarray(self.weights[p])))
        post = RowPosterior(self._mean[s, p][None], self._chol[s, p][None])
        return s, np.asarray(_draw(key_row, post))[0]

    # -- labels ----------------------------------------------------------------
    def position(self, label) -> int:
        """The row index of a fold-in label (a KeyError naming it if there is none)."""
        key = label.item() if hasattr(label, "item") else label
        if key not in self._position:
            raise KeyError(f"{label!r} is not a folded-in {self.side}; labels are {self.labels.tolist()[:10]}")
        return self._position[key]

    def _positions(self, labels) -> np.ndarray:
        unique, inverse = np.unique(np.atleast_1d(np.asarray(labels)), return_inverse=True)
        return np.array([self.position(x) for x in unique], dtype=np.int64)[inverse.ravel()]

    def _labels_for(self, labels, others: np.ndarray) -> np.ndarray:
        """Fold-in labels broadcast to the other side's ids (None: the only row)."""
        if labels is None:
            if self.num_rows != 1:
                raise ValueError(f"this fold-in holds {self.num_rows} {self.side}s: say which with `{self.side}s=`")
            labels = self.labels[:1]
        labels = np.atleast_1d(np.asarray(labels))
        if labels.shape == (1,) and others.shape != (1,):
            labels = np.repeat(labels, others.shape[0])
        if labels.shape != others.shape:
            raise ValueError(f"users and items must have one shape, got {labels.shape} and {others.shape}")
        return labels

    # -- the Predictor protocol -----------------------------------------------
    def pairs(self, users, items) -> Pairs:
        """Resolve (user, item) pairs: fold-in labels on the folded-in side, external ids on the other.

        A single label (or None when one row was folded in) is broadcast.
        """
        if self.side == "user":
            items = np.atleast_1d(np.asarray(items))
            users = self._labels_for(users, items)
            positions = self._positions(users)
            index = np.asarray(self.posterior.item_vocab.index(items, missing="flag"), np.int64)
            return Pairs(users, items, positions, index, np.zeros(items.shape, bool), index >= 0, self.num_given[positions] > 0)
        users = np.atleast_1d(np.asarray(users))
        items = self._labels_for(items, users)
        positions = self._positions(items)
        index = np.asarray(self.posterior.user_vocab.index(users, missing="flag"), np.int64)
        return Pairs(users, items, index, positions, index >= 0, np.zeros(users.shape, bool), self.num_given[positions] > 0)

    def components(self, user_index, item_index, *, uncertainty: str = "posterior") -> Components:
        """Per-draw predictive components for index pairs, shape (S, n).

        Parameters
        ----------
        user_index, item_index : int array, shape (n,)
            On the folded-in side, positions of folded-in rows (0 ..
            num_rows - 1); on the other side, the posterior's indices
            (``-1`` for one it has not seen).
        uncertainty : {"posterior", "laplace"}
            Accepted for the protocol; a folded-in row's components already
            carry its conditional spread (for a point estimate too).

        Returns
        -------
        Components
            With each pair's weights (None when all are uniform).
        """
        user_index = np.asarray(user_index, np.int64)
        item_index = np.asarray(item_index, np.int64)
        positions, other = (user_index, item_index) if self.side == "user" else (item_index, user_index)
        n = positions.shape[0]
        mean = np.empty((self.num_draws, n))
        var = np.empty((self.num_draws, n))
        empty = self.num_given[positions] == 0
        if np.any(empty):
            # The cold-start prior, computed by the posterior itself: exactly its numbers.
            cold = np.full(int(empty.sum()), -1)
            x = None if self._x is None else self._x[positions[empty]]  # features: mu + B^T x
            prior = (self.posterior.components(cold, other[empty], user_x=x) if self.side == "user"
                     else self.posterior.components(other[empty], cold, item_x=x))
            mean[:, empty] = prior.mean
            var[:, empty] = prior.sd**2
        flat = _device_draws(self.posterior)
        for p in np.unique(positions[~empty]):
            cols = np.flatnonzero((positions == p) & ~empty)
            j = np.full(next_pow2(cols.size), -1, np.int64)
            j[: cols.size] = other[cols]
            m, v = _row_moments(self._mean[:, p], self._cov_device()[:, p], flat, jnp.asarray(j, jnp.int32), self.side)
            mean[:, cols] = np.asarray(m)[:, : cols.size]
            var[:, cols] = np.asarray(v)[:, : cols.size]
        noise_sd = 1.0 / np.sqrt(np.asarray(self.posterior.flat_draws().noise_precision, np.float64))
        weights = self.weights[positions]
        uniform = weights.size == 0 or bool(np.all(weights == weights.flat[0]))
        return Components(mean=mean, sd=np.sqrt(var), noise_sd=noise_sd, weights=None if uniform else weights.T)

    def predict(self, users, items, *, prob: float = 0.9, clip: bool = False,
                keep_components: bool = False) -> Prediction:
        """Predictive ratings for (user, item) pairs, the folded-in side by label.

        Parameters
        ----------
        users, items : array-like, shape (n,)
            For a user fold-in: fold-in labels (one label, or None when one
            user was folded in, is broadcast) and external movie ids (a movie
            the model has not seen gets the new-movie prior given the user's
            fold-in). For a movie fold-in: external user ids and labels.
        prob, clip, keep_components
            As in :meth:`Posterior.predict`.

        Returns
        -------
        Prediction
            ``known_user`` (or ``known_item``) False on the folded-in side;
            ``folded_in`` True for rows with at least one given rating.

        Examples
        --------
        >>> fold = fold_in_users(posterior, [([50, 172], [5.0, 4.0])])  # doctest: +SKIP
        >>> fold.predict(None, [181, 1]).mean  # doctest: +SKIP
        """
        prob = check_prob(prob)
        pairs = self.pairs(users, items)
        comps = self.components(pairs.user_index, pairs.item_index)
        return prediction(pairs, comps, prob=prob, clip=clip, scale=self.scale, keep_components=keep_components)

    # -- what recommend needs beyond the Predictor protocol ----------------------
    def _user_side_only(self, what: str) -> None:
        if self.side != "user":
            raise TypeError(f"{what} ranks movies for a user: this fold-in holds movies, not users")

    def seen_items(self, user) -> np.ndarray:
        """The movies a folded-in user was given ratings of."""
        self._user_side_only("recommend")
        return np.asarray(self._given.ids[self.position(user)])

    def sample_means(self, rng_key: Array, user, item_index: np.ndarray, **_) -> np.ndarray:
        """Mean ratings of known movies under one joint sample of a folded-in user, shape (n,).

        A posterior draw ``s`` by the user's weights, then the user's factors
        from the fold-in conditional under ``s`` (:meth:`sample_factors`).
        """
        self._user_side_only("recommend")
        s, factors = self.sample_factors(rng_key, user)
        return sampled_means(self.posterior.flat_draws(), s, factors, item_index)

    def __repr__(self) -> str:
        return (
            f"FoldIn(side={self.side!r}, rows={self.num_rows}, given={self.num_given.tolist()[:5]}, "
            f"weighting={self.weighting!r}, ess={np.round(self.effective_sample_size[:5], 1).tolist()} of {self.num_draws})"
        )


def fold_in_users(posterior: Posterior, ratings_per_user, *, weighting: str = "importance",
                  unknown: str = "raise", user_ids=None, user_features=None) -> FoldIn:
    """Fold new users into a fitted posterior from a few ratings each.

    Per posterior draw ``s`` the user's factors have the exact Gaussian
    conditional ``N(P_s^{-1} b_s, P_s^{-1})`` of the model (see the module
    docstring), computed for all users and draws at once (vmapped over draws,
    users padded to a common number of ratings with a mask). The predictive
    is the mixture over draws with :attr:`FoldIn.weights`. Each user is
    folded in on their own: one user's weights do not depend on the other
    users in the batch.

    Parameters
    ----------
    posterior : Posterior
        Any engine's posterior (a MAP point estimate gives the ridge
        solution with the MAP precisions and one weight of 1).
    ratings_per_user : list of (item_ids, ratings), PaddedRatings or pandas.DataFrame
        One entry per new user: external movie ids, shape (k_u,), and their
        ratings, shape (k_u,). ``k_u = 0`` is allowed (the cold-start prior).
        A DataFrame of (user, item, rating) rows (columns found as
        :func:`bayesmf.data.as_ratings` finds them) folds in each of its
        users, labelled by their ids.
    weighting : {"importance", "equal"}
        ``"importance"``: weights proportional to the marginal likelihood
        ``p(ratings | draw)`` (the exact posterior mixture given the training
        data and the new ratings, up to Monte Carlo error).
        ``"equal"``: uniform weights, an approximation that ignores what the
        new ratings say about the shared parameters.
    unknown : {"raise", "ignore"}
        Movies the model has not seen: a ValueError naming them, or leave
        them out and list them in :attr:`FoldIn.ignored_ids`.
    user_ids : array-like, shape (num_users,), optional
        Labels for the new users (default 0, 1, ...).
    user_features : pandas.DataFrame, optional
        A model fitted with user features: the new users' side features,
        indexed by their labels; each user's prior mean is then
        ``mu_L + B^T x_u`` per draw (without a frame, or for a model with
        implicit feedback only, the side part of ``x_u`` is zero). With
        implicit feedback ``x_u`` also has ``|I|^-1/2`` at the given movies.

    Returns
    -------
    FoldIn
        With ``side="user"``.

    Raises
    ------
    ValueError
        Unknown movies (``unknown="raise"``), ratings off the rating scale or
        not finite, duplicate movies for one user, mismatched lengths, an
        unknown ``weighting``.

    Examples
    --------
    >>> fold = fold_in_users(posterior, [([50, 172, 181], [5.0, 5.0, 4.0]), ([], [])])  # doctest: +SKIP
    >>> fold.predict(0, [1, 2]).mean, fold.effective_sample_size  # doctest: +SKIP
    """
    return _fold_in(posterior, "user", ratings_per_user, weighting, unknown, user_ids, user_features)


def fold_in_items(posterior: Posterior, ratings_per_item, *, weighting: str = "importance",
                  unknown: str = "raise", item_ids=None, item_features=None) -> FoldIn:
    """Fold new movies into a fitted posterior from a few ratings each.

    Per draw, the movie's factors and offset ``x = (R, m)`` have the Gibbs
    movie-block conditional: design ``z_u = (L_u, 1)`` for each rating user,
    prior ``N((mu_R, mu_0), blockdiag(Lambda_R, tau_m)^{-1})``,
    ``P = prior precision + alpha sum z_u z_u^T``; weights as in
    :func:`fold_in_users`.

    Parameters
    ----------
    posterior : Posterior
    ratings_per_item : list of (user_ids, ratings), PaddedRatings or pandas.DataFrame
        One entry per new movie: external ids of the (known) users who rated
        it and their ratings; or a DataFrame of (user, item, rating) rows,
        each of its movies labelled by its id.
    weighting : {"importance", "equal"}
    unknown : {"raise", "ignore"}
        Users the model has not seen (their factors are unknown).
    item_ids : array-like, shape (num_items,), optional
        Labels for the new movies (default 0, 1, ...).
    item_features : pandas.DataFrame, optional
        As ``user_features`` of :func:`fold_in_users`, for the new movies.

    Returns
    -------
    FoldIn
        With ``side="item"``; the conditional is over ``(R, m)`` jointly
        (``k = rank + 1``, the offset last).

    Examples
    --------
    >>> fold = fold_in_items(posterior, [([1, 2, 3], [4.0, 5.0, 3.0])])  # doctest: +SKIP
    >>> fold.predict([1, 4], None).mean  # doctest: +SKIP
    """
    return _fold_in(posterior, "item", ratings_per_item, weighting, unknown, item_ids, item_features)


def _feature_rows(posterior: Posterior, side: str, given: Given, labels, frame) -> tuple | None:
    """The new rows' features for their prior mean ``mu + B^T x``, or None (a model without features).

    Returns ``x`` (R, F): side columns from ``frame`` by label (zero without a
    frame) and ``|I|^-1/2`` at the given ratings' implicit columns; and
    ``rated`` (R,): the rows whose implicit row is centred, i.e. less the
    training rows' mean row, a dense term added per draw as ``B^T mean``
    (:func:`_centre_shift`) so that ``x`` stays sparse. A row without ratings
    has the mean implicit row: ``x = 0`` there.
    """
    spec = getattr(posterior.config, f"{side}_features")
    if spec is None:
        if frame is not None:
            raise ValueError(f"this model has no {side} features: it was fitted without {side}_features")
        return None
    labels = np.arange(len(given.index)) if labels is None else np.asarray(labels)
    x = posterior.feature_rows(side, labels, frame)
    rated = np.array([len(index) > 0 for index in given.index]) & spec.implicit
    for r in np.flatnonzero(rated):
        x[r, spec.num_side + given.index[r]] = 1.0 / np.sqrt(len(given.index[r]))
    return x, rated


def _centre_shift(posterior: Posterior, side: str) -> Array:
    """``B^T mean`` per draw, (S, d): the implicit part of the training rows' mean row
    (:func:`bayesmf.featurerows.training_implicit_mean`) through each draw's link matrix, cached per posterior."""
    cached = _IMPLICIT_CENTRES.setdefault(posterior, {})
    if side not in cached:
        train, spec = posterior.train, getattr(posterior.config, f"{side}_features")
        if train is None:
            raise ValueError("folding in with implicit feedback needs the training ratings (posterior.train)")
        link = getattr(_device_draws(posterior), f"{side}_link")[:, spec.num_side :]
        centre = jnp.asarray(training_implicit_mean(train, side), link.dtype)
        cached[side] = jnp.einsum("f,sfd->sd", centre, link)
    return cached[side]


def _fold_in(posterior: Posterior, side: str, rows, weighting: str, unknown: str, labels, frame=None) -> FoldIn:
    """What fold_in_users and fold_in_items share: checks, padding, and the fold over all draws.

    A user's design is ``R_v`` (response ``r - m_v``, prior ``N(mu_L,
    Lambda_L^-1)``); a movie's is ``(L_u, 1)`` (response ``r``, prior
    ``N((mu_R, mu_0), blockdiag(Lambda_R, tau_m)^-1)``).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
    if getattr(posterior.config, "likelihood", "gaussian") == "ordinal":
        raise ValueError("fold-in of a model with the ordinal likelihood is not built yet (its rows' conditional "
                         "needs the latent z); predict new users with posterior.predict (the cold-start prior)")
    if isinstance(rows, pd.DataFrame):
        if labels is not None:
            raise ValueError(f"a DataFrame's {side}s are labelled by their ids: leave {side}_ids out")
        rows, labels = frame_rows(rows, side)
    other = "item" if side == "user" else "user"
    given = validate_given(rows, getattr(posterior, f"{other}_vocab"), posterior.scale, unknown, other)
    idx, ratings, mask = pad_given(given)
    flat = _device_draws(posterior)
    num_draws, d = flat.user_mean.shape
    if side == "user":
        fold_fn = functools.partial(_fold_users, with_one=flat.user_offsets is not None)  # (L, b) with user offsets
        prior = _user_prior(posterior)
        args, dim = (*prior, flat.item_factors, flat.item_offsets), prior[1].shape[-1]
    else:
        prior = jnp.zeros((num_draws, d + 1, d + 1), flat.item_mean.dtype)
        prior = prior.at[:, :d, :d].set(flat.item_precision).at[:, d, d].set(flat.offset_precision)
        prior_mean = jnp.concatenate([flat.item_mean, flat.offset_mean[:, None]], axis=1)
        fold_fn, args, dim = _fold_items, (prior, prior_mean, flat.user_factors, flat.user_offsets), d + 1
    features = _feature_rows(posterior, side, given, labels, frame)
    x = None if features is None else features[0]
    if features is not None:  # each row's prior mean per draw, mu + (B^T x, 0...): (S, R, k)
        rated = features[1]
        # Only the columns some row uses (x is sparse: side features and the given ratings' implicit
        # columns), padded to a power of two with column 0 at weight 0 (few compiled shapes).
        nonzero = np.flatnonzero(np.any(x != 0, axis=0))
        used = np.zeros(next_pow2(max(nonzero.size, 1)), np.int64)
        used[: nonzero.size] = nonzero
        columns = np.zeros((x.shape[0], used.size), x.dtype)
        columns[:, : nonzero.size] = x[:, nonzero]
        link = getattr(flat, f"{side}_link")
        centre = _centre_shift(posterior, side) if rated.any() else jnp.zeros((num_draws, d), link.dtype)
        means = _row_prior_means(args[1], link, jnp.asarray(used, jnp.int32), jnp.asarray(columns, link.dtype),
                                 jnp.asarray(rated, link.dtype), centre)
        args = (args[0], means, *args[2:])
    mean, chol, log_ev = _fold(fold_fn, args, flat.noise_precision, idx, ratings, mask, num_draws, dim, flat.user_mean.dtype)
    # A row without ratings takes the cold-start prior (FoldIn.components); without a frame its side
    # features are unknown too, and the prior carries their spread (bayesmf.spread).
    return FoldIn(posterior, side, given, mean, chol, log_ev, weighting, labels, None if frame is None else x)
