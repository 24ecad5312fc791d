"""The per-row Laplace spread of a point estimate: each known user's conditional given the movies.

A point estimate (MAP, one draw) has no posterior spread of its own;
``uncertainty="laplace"`` (:meth:`bayesmf.posterior.Posterior.predict`,
:func:`bayesmf.ranking.recommend`) takes the conditional of a known user's
row given the movies at the estimate, ``N(L_u, P_u^{-1})`` with
``P_u = Lambda_L + alpha sum_v r_v r_v^T`` over the user's training movies
(:func:`bayesmf.conjugate.row_posterior`; ``r_v`` is ``R_v``, or
``(R_v, 1)`` with user offsets: :func:`bayesmf.model.user_design`).

Each user's Gram ``r^T r`` is formed on the host over the user's training
movies in training order, and a block of users' conditionals in one jitted
program (padded to a few sizes). A user's numbers do not depend on which
other users share the call (the Cholesky and the solves are per matrix),
so ranking one user gives the same scores, bit for bit, as ranking many
(:mod:`bayesmf.ranking`, whose batched path scores every movie for a
block of users with :func:`block_variances` and rescores its shortlists
with :func:`pair_variances`).

As eager device operations, whose shapes followed the user's number of
ratings, a single user's Gram compiled programs for every new count: a
Thompson ranking of the 459 u1 test users of MovieLens-100K with a MAP
posterior spent about 130 s compiling.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtri

from bayesmf.arrays import padded_count, stable_order
from bayesmf.conjugate import row_posterior
from bayesmf.model import Params, user_design, user_row_prior

Array = jax.Array

# Bytes of the float32 (d x d) matrices held at once: the covariances of a block of
# users, and their copies gathered per pair for the quadratic forms (61k at rank 32).
BLOCK_BYTES = 2**28


class TrainRows(NamedTuple):
    """Every user's training movies, CSR over the user indices."""

    indptr: np.ndarray  # (num_users + 1,)
    items: np.ndarray  # (nnz,) movie indices, each user's in training order


def csr_rows(user_index: np.ndarray, item_index: np.ndarray, num_users: int) -> TrainRows:
    """Each user's movies of rating pairs (user_index, item_index (nnz,)), in their order."""
    indptr = np.concatenate([[0], np.cumsum(np.bincount(user_index, minlength=num_users))])
    return TrainRows(indptr, np.asarray(item_index)[stable_order(user_index, num_users)])


def train_rows(train, only: int | None = None) -> TrainRows:
    """The CSR of :class:`bayesmf.data.Ratings` (its indices are the estimate's); with ``only``, that user's row
    alone (one scan, not a sort: the others are empty)."""
    u, i = np.asarray(train.user_index), np.asarray(train.item_index)
    if only is not None:
        items = i[u == only]
        indptr = np.zeros(train.num_users + 1, np.int64)
        indptr[only + 1 :] = items.size
        return TrainRows(indptr, items)
    return csr_rows(u, i, train.num_users)


def _rows(train, users: np.ndarray) -> TrainRows:
    if isinstance(train, TrainRows):
        return train
    return train_rows(train, int(users[0]) if np.unique(users).size == 1 else None)


def _per_block(d: int) -> int:
    return max(1, BLOCK_BYTES // (4 * d * d))


def user_grams(design: np.ndarray, rows: TrainRows, users) -> np.ndarray:
    """``sum_v r_v r_v^T`` over each user's training movies, shape (n, d, d), on the host.

    ``design`` is :func:`bayesmf.model.user_design` of the estimate on the
    host (num_items, d); ``users`` user indices, shape (n,).
    """
    users = np.atleast_1d(np.asarray(users))
    out = np.empty((users.size, design.shape[1], design.shape[1]), design.dtype)
    for n, user in enumerate(users):
        r = design[rows.items[rows.indptr[user] : rows.indptr[user + 1]]]
        out[n] = r.T @ r
    return out


@jax.jit
def _factors(prior_precision: Array, noise_precision: Array, gram: Array) -> tuple[Array, Array]:
    """Covariances ``P^{-1}`` and lower Cholesky factors of ``P`` of Grams (n, d, d), each (n, d, d)."""
    d = gram.shape[-1]
    zeros = jnp.zeros(gram.shape[:2], gram.dtype)
    post = row_posterior(prior_precision, zeros[0], gram, zeros, noise_precision)
    eye = jnp.broadcast_to(jnp.eye(d, dtype=gram.dtype), gram.shape)
    return jax.scipy.linalg.cho_solve((post.chol, True), eye), post.chol


def user_factors(point: Params, rows: TrainRows, users) -> tuple[np.ndarray, Array]:
    """Conditional covariances ``P_u^{-1}`` (host) and lower Cholesky factors of ``P_u`` (device) of user
    indices (n,), each (n, d, d) (``d = rank``, ``rank + 1`` with user offsets)."""
    grams = user_grams(np.asarray(user_design(point)), rows, users)
    n = grams.shape[0]
    padded = np.concatenate([grams, np.broadcast_to(np.eye(grams.shape[-1], dtype=grams.dtype),
                                                    (padded_count(n) - n,) + grams.shape[1:])])
    precision, _ = user_row_prior(point)
    cov, chol = _factors(precision, point.noise_precision, jnp.asarray(padded))
    return np.asarray(cov)[:n], chol[:n]


def pair_variances(point: Params, train, u: np.ndarray, i: np.ndarray) -> np.ndarray:
    """``r_v^T P_u^{-1} r_v`` of the pairs ``(u, v)`` (indices; -1: unknown, variance 0), shape (n,).

    ``train``: the :class:`bayesmf.data.Ratings` the estimate was fitted on, or their :class:`TrainRows`.
    """
    design = np.asarray(user_design(point))
    out = np.zeros(u.shape[0], design.dtype)
    known = np.flatnonzero((u >= 0) & (i >= 0))
    if known.size == 0:
        return out
    users, inverse = np.unique(u[known], return_inverse=True)
    rows, per = _rows(train, users), _per_block(design.shape[1])
    for b in range(0, users.size, per):
        cov, _ = user_factors(point, rows, users[b : b + per])
        pairs = np.flatnonzero((inverse >= b) & (inverse < b + per))
        for start in range(0, pairs.size, per):
            p = pairs[start : start + per]
            rv = design[i[known[p]]]
            out[known[p]] = np.einsum("ni,nij,nj->n", rv, cov[inverse[p] - b], rv)
    return out


@functools.partial(jax.jit, static_argnums=1)
def _row_bits(rng_keys: Array, d: int) -> Array:
    return jax.vmap(lambda key: jax.random.bits(jax.random.split(key)[1], (d,), jnp.uint32))(rng_keys)


def _row_normals(rng_keys: Array, d: int) -> np.ndarray:
    """Standard normals, shape (n, d), from the second half of a split of each row's key (as a fold-in splits
    its key: the choice of draw, then the row draw).

    Integer bits on the device, their normal quantiles (24-bit grid, mid
    points) on the host in float64. ``jax.random.normal`` of one row's key,
    compiled into the solve, gave other float32 bits for some values alone
    than among many rows (the same bits, transformed by programs of other
    shapes), and a Thompson ranking of one user differed from a batch's in
    the last bit (47 of 300 rows at rank 4).
    """
    bits = np.asarray(_row_bits(rng_keys, d))
    return ndtri((np.right_shift(bits, 8) + 0.5) / 2.0**24).astype(np.float32)


@jax.jit
def _solve_noise(chol: Array, z: Array) -> Array:
    """``C^{-T} z`` per row: a draw of ``N(0, P^{-1})`` from standard normals z (n, d)."""
    return jax.scipy.linalg.solve_triangular(chol, z[..., None], lower=True, trans="T")[..., 0]


def conditional_noise(rng_keys: Array, point: Params, train, users) -> np.ndarray:
    """A draw of ``N(0, P_u^{-1})`` per user index, shape (n, d) (``d + 1`` with user offsets).

    ``rng_keys`` (n keys) are split as a fold-in's was (the choice of draw,
    then the row draw), and the second part used. Each user's draw depends
    only on its own key and Gram. ``train`` as in :func:`pair_variances`.
    """
    users = np.atleast_1d(np.asarray(users))
    d = user_design(point).shape[-1]
    if users.size == 0:
        return np.zeros((0, d), np.float32)
    rows, per = _rows(train, users), _per_block(d)
    z = _row_normals(jnp.asarray(rng_keys), d)
    return np.concatenate([np.asarray(_solve_noise(user_factors(point, rows, users[b : b + per])[1], z[b : b + per]))
                           for b in range(0, users.size, per)])


@jax.jit
def block_variances(chol: Array, design: Array) -> Array:
    """``r_v^T P_u^{-1} r_v`` of every movie (design rows (M, d)) for a block of users (Cholesky factors of
    ``P_u``, (U, d, d)), float32, shape (U, M).

    As ``|C_u^{-1} r_v|^2`` (``P_u = C_u C_u^T``): a sum of squares, so a
    small variance keeps its relative precision (within 3e-7 of
    :func:`pair_variances` on the test posterior).
    """
    eye = jnp.broadcast_to(jnp.eye(chol.shape[-1], dtype=chol.dtype), chol.shape)
    inverse = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)
    return jnp.sum(jnp.einsum("uij,mj->umi", inverse, design) ** 2, axis=-1)
