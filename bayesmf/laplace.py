"""The per-row Laplace spread of a point estimate: each known user's conditional given the movies.

A point estimate (MAP, one draw) has no posterior spread of its own;
``uncertainty="laplace"`` (:meth:`bayesmf.posterior.Posterior.predict`,
:func:`bayesmf.ranking.recommend`) takes the conditional of a known user's
row given the movies at the estimate, ``N(L_u, P_u^{-1})`` with
``P_u = Lambda_L + alpha sum_v r_v r_v^T`` over the user's training movies
(:func:`bayesmf.conjugate.row_posterior`; ``r_v`` is ``R_v``, or
``(R_v, 1)`` with user offsets: :func:`bayesmf.model.user_design`).

A single user's Gram is formed on the host. As eager device operations,
whose shapes follow the user's number of ratings, every new count compiled
programs of its own (as did :func:`bayesmf.predictive.sampled_means`' for
every new number of candidate movies, now padded): a Thompson ranking of
the 459 u1 test users of MovieLens-100K with a MAP posterior spent about
130 s compiling, and a lcb ranking formed every user's Gram for each user
ranked (18-24 s, now 2 s).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bayesmf.conjugate import RowPosterior, draw_from, row_covariance, row_posterior
from bayesmf.layout import build_layout, gram_and_rhs
from bayesmf.model import Params, user_design, user_row_prior

Array = jax.Array


def user_gram(design: np.ndarray, train, u: int) -> Array:
    """``sum_v r_v r_v^T`` over user ``u``'s training movies, shape (1, d, d).

    ``design`` is :func:`bayesmf.model.user_design` of the estimate on the
    host (num_items, d); ``train`` the :class:`bayesmf.data.Ratings` the
    estimate was fitted on (its indices are the estimate's); ``u`` a user
    index.
    """
    r = design[np.asarray(train.item_index)[np.asarray(train.user_index) == u]]
    return jnp.asarray((r.T @ r)[None])


def _conditional(point: Params, gram: Array) -> RowPosterior:
    """The rows' conditionals given the movies, from their Grams (n, d, d); only their precisions are read."""
    precision, mean = user_row_prior(point)
    zeros = jnp.zeros((gram.shape[0], mean.shape[-1]), mean.dtype)
    return row_posterior(precision, mean, gram, zeros, point.noise_precision)


def pair_variances(point: Params, train, u: np.ndarray, i: np.ndarray) -> np.ndarray:
    """``r_v^T P_u^{-1} r_v`` of the pairs ``(u, v)`` (indices; -1: unknown, variance 0), shape (n,)."""
    design = user_design(point)
    host = np.asarray(design)
    known = (u >= 0) & (i >= 0)
    users = np.unique(u[known])
    if users.size == 1:  # one user (a ranking's per-user path): its own Gram, not every user's
        gram, u = user_gram(host, train, int(users[0])), np.zeros_like(u)
    else:
        layout = build_layout(train.user_index, train.item_index, train.num_users, train.num_items, "bucket")
        gram, _ = gram_and_rhs(layout, design, jnp.zeros(len(train), point.item_factors.dtype))
    cov = np.asarray(row_covariance(_conditional(point, gram)))
    rv = host[np.where(known, i, 0)]
    var = np.einsum("ni,nij,nj->n", rv, cov[np.where(known, u, 0)], rv)
    return np.where(known, var, 0.0)


def conditional_noise(rng_key: Array, point: Params, train, u: int) -> np.ndarray:
    """A draw of ``N(0, P_u^{-1})`` for user index ``u``, shape (d,) (``d + 1`` with user offsets).

    ``rng_key`` is split as a fold-in's was (the choice of draw, then the row draw), and the second part used.
    """
    post = _conditional(point, user_gram(np.asarray(user_design(point)), train, u))
    _, key_row = jax.random.split(rng_key)
    return np.asarray(draw_from(key_row, RowPosterior(jnp.zeros_like(post.mean), post.chol)))[0]
