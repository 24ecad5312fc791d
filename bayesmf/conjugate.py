"""The conjugate Gaussian row update, written once.

With every other quantity fixed, one row ``x`` (a user's factors, or a movie's
factors and offset) of a Gaussian linear model has the Gaussian conditional

.. math::

    P &= \\Lambda + \\alpha \\sum_j z_j z_j^\\top, \\qquad
    b = \\Lambda \\mu + \\alpha \\sum_j z_j y_j \\\\
    x \\mid \\cdot &\\sim \\mathcal N(P^{-1} b,\\ P^{-1})

where ``z_j`` are the design rows (the other side's factors) and ``y_j`` the
responses. ALS takes its mean (:func:`row_mean`), Gibbs draws from it
(:func:`row_draw`), and fold-in of a new user uses it per posterior draw.
The Normal-Wishart conditional of a side's ``(mu, Lambda)`` given its rows
(:func:`normal_wishart_draw`) lives here too, beside the row update it feeds.

Float32 Cholesky of ``P`` can fail when ``P`` is badly scaled. ``P`` is
symmetrized and a jitter proportional to its mean diagonal is added
(``JITTER_EPS`` machine epsilons of it, far below the prior's own contribution), which keeps
every factorization finite without changing the conditional measurably.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Relative diagonal jitter, in units of the dtype's machine epsilon: P already
# contains the prior precision, so this only guards round-off. In float32
# (eps 1.2e-7) it is 1.9e-6 of the mean diagonal, far below a unit-scale prior
# term; in float64 it is ~4e-15 and the update is exact to round-off.
JITTER_EPS = 16.0


class RowPosterior(NamedTuple):
    """Gaussian conditional of a batch of rows.

    Attributes
    ----------
    mean : array, shape (n, d)
    chol : array, shape (n, d, d)
        Lower Cholesky factor of the precision ``P``.
    """

    mean: Array
    chol: Array


def _batched_prior(prior_precision: Array, n: int) -> Array:
    if prior_precision.ndim == 2:
        return jnp.broadcast_to(prior_precision, (n,) + prior_precision.shape)
    return prior_precision


def row_posterior(
    prior_precision: Array, prior_mean: Array, gram: Array, rhs: Array, noise_precision: Array
) -> RowPosterior:
    """Conditional of every row at once.

    Parameters
    ----------
    prior_precision : array, shape (d, d) or (n, d, d)
    prior_mean : array, shape (d,) or (n, d)
    gram : array, shape (n, d, d)
        ``sum_j z_j z_j^T`` per row.
    rhs : array, shape (n, d)
        ``sum_j z_j y_j`` per row.
    noise_precision : array, shape ()

    Returns
    -------
    RowPosterior
    """
    precision, shift = _precision_and_shift(prior_precision, prior_mean, gram, rhs, noise_precision)
    chol = jnp.linalg.cholesky(precision)
    mean = jax.scipy.linalg.cho_solve((chol, True), shift[..., None])[..., 0]
    return RowPosterior(mean=mean, chol=chol)


def row_mean(prior_precision, prior_mean, gram, rhs, noise_precision) -> Array:
    """Conditional mode (= mean) of every row: the ALS update. Shape (n, d)."""
    return row_posterior(prior_precision, prior_mean, gram, rhs, noise_precision).mean


def standard_normal(rng_key: Array, shape: tuple, dtype) -> Array:
    """``jax.random.normal(rng_key, shape, dtype)``, the same values, faster on the CPU.

    XLA:CPU fuses the generator with a 2-D output into a slow loop: a
    (943, 10) draw took 0.8 ms against 0.2 ms for the same 9,430 values
    drawn flat and reshaped behind an optimization barrier
    (``benchmarks/gibbs_sweep_parts.py``). Threefry's bits depend only on
    the total size, so the draws are identical.
    """
    flat = jax.random.normal(rng_key, (int(np.prod(shape)),), dtype)
    return jax.lax.optimization_barrier(flat).reshape(shape)


def draw_from(rng_key: Array, posterior: RowPosterior) -> Array:
    """One draw per row from ``N(mean, P^{-1})``, shape (n, d).

    ``x = mean + C^{-T} z`` with ``P = C C^T`` and ``z ~ N(0, I)``.
    """
    z = standard_normal(rng_key, posterior.mean.shape, posterior.mean.dtype)
    noise = jax.scipy.linalg.solve_triangular(posterior.chol, z[..., None], lower=True, trans="T")[..., 0]
    return posterior.mean + noise


def _precision_and_shift(prior_precision, prior_mean, gram, rhs, noise_precision):
    n, d = rhs.shape
    lam = _batched_prior(prior_precision, n)
    precision = lam + noise_precision * gram
    precision = 0.5 * (precision + jnp.swapaxes(precision, -1, -2))
    scale = jnp.mean(jnp.diagonal(precision, axis1=-2, axis2=-1), axis=-1)
    jitter = JITTER_EPS * jnp.finfo(precision.dtype).eps
    precision = precision + (jitter * scale)[:, None, None] * jnp.eye(d, dtype=precision.dtype)
    shift = jnp.einsum("nij,nj->ni", lam, jnp.broadcast_to(prior_mean, (n, d))) + noise_precision * rhs
    return precision, shift


def row_draw(rng_key, prior_precision, prior_mean, gram, rhs, noise_precision) -> Array:
    """One draw of every row from its conditional: the Gibbs update. Shape (n, d).

    ``x = C^{-T} (C^{-1} b + z)`` with ``P = C C^T``: two triangular solves
    (mean and noise share the second one), where :func:`draw_from` needs three.
    """
    z = standard_normal(rng_key, rhs.shape, rhs.dtype)
    return row_draw_from(z, prior_precision, prior_mean, gram, rhs, noise_precision)


def row_draw_from(z, prior_precision, prior_mean, gram, rhs, noise_precision) -> Array:
    """:func:`row_draw` given its standard normal variates ``z``, shape (n, d).

    For samplers that draw every variate of a sweep in one call (each random
    call site adds compile time: :func:`bayesmf.engines.gibbs.step`).
    """
    precision, shift = _precision_and_shift(prior_precision, prior_mean, gram, rhs, noise_precision)
    chol = jnp.linalg.cholesky(precision)
    half = jax.scipy.linalg.solve_triangular(chol, shift[..., None], lower=True)[..., 0]
    return jax.scipy.linalg.solve_triangular(chol, (half + z)[..., None], lower=True, trans="T")[..., 0]


def row_covariance(posterior: RowPosterior) -> Array:
    """Conditional covariances ``P^{-1}``, shape (n, d, d)."""
    n, d = posterior.mean.shape
    eye = jnp.broadcast_to(jnp.eye(d, dtype=posterior.mean.dtype), (n, d, d))
    return jax.scipy.linalg.cho_solve((posterior.chol, True), eye)


def normal_wishart_draw(
    normals: Array, x: Array, chi2: Array, beta0: float, nu0: float, w0_scale: float,
    extra_precision: Array | None = None,
) -> tuple[Array, Array]:
    """Draw ``(mu, Lambda)`` from the Normal-Wishart conditional given rows ``x``.

    Prior ``Lambda ~ W(nu0, w0_scale I)``, ``mu | Lambda ~ N(0, (beta0 Lambda)^-1)``;
    posterior ``Lambda ~ W(nu0 + n, W_n)`` with
    ``W_n^-1 = I / w0_scale + S + beta0 n / (beta0 + n) xbar xbar^T`` and
    ``mu | Lambda ~ N(n xbar / (beta0 + n), ((beta0 + n) Lambda)^-1)``.

    The Wishart draw uses Bartlett's decomposition, ``Lambda = C A A^T C^T``
    with ``W_n = C C^T``, ``A`` lower triangular, ``A_ii^2 ~ chi2(nu_n - i)``
    and standard normals below the diagonal. The variates come in (standard
    normals and chi-squares) so that one call per sweep draws them all: each
    random call site adds compile time on the CPU
    (see :func:`bayesmf.engines.gibbs.step`).

    ``extra_precision`` is added to ``W_n^-1``: terms of the likelihood of
    ``Lambda`` beyond the rows ``x``, such as Macau's link-matrix prior
    ``sum_f lambda_f b_f b_f^T`` (:mod:`bayesmf.link`). Their degrees of freedom
    come in through ``chi2`` (``wishart_chi2_shapes(nu0 + n + F, d)``).

    Parameters
    ----------
    normals : array, shape (d * d + d,)
        Standard normal variates.
    x : array, shape (n, d)
    chi2 : array, shape (d,)
        ``chi2[i] ~ chi2(nu0 + n - i)`` (see :func:`wishart_chi2_shapes`).
    beta0, nu0, w0_scale : float
        The Normal-Wishart prior (``nu0`` is documentation here: the degrees
        of freedom enter through ``chi2``).
    extra_precision : array, shape (d, d), optional
        Added to ``W_n^-1``; ``None`` adds nothing.

    Returns
    -------
    mu : array, shape (d,)
    precision : array, shape (d, d)
    """
    n, d = x.shape
    dtype = x.dtype
    xbar = jnp.mean(x, axis=0)
    centred = x - xbar
    beta_n = beta0 + n
    mu_n = n * xbar / beta_n
    w_inv = jnp.eye(d, dtype=dtype) / w0_scale + centred.T @ centred + (beta0 * n / beta_n) * jnp.outer(xbar, xbar)
    if extra_precision is not None:
        w_inv = w_inv + extra_precision
    w_inv = 0.5 * (w_inv + w_inv.T)
    eye = jnp.eye(d, dtype=dtype)
    w_n = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(w_inv), True), eye)
    chol_w = jnp.linalg.cholesky(0.5 * (w_n + w_n.T))
    below = jnp.tril(normals[: d * d].reshape(d, d), k=-1)
    bartlett = below + jnp.diag(jnp.sqrt(chi2))
    factor = chol_w @ bartlett
    precision = factor @ factor.T
    chol_prec = jnp.sqrt(beta_n) * factor  # beta_n * Lambda = (sqrt(beta_n) C A)(...)^T, lower triangular
    z = normals[d * d :]
    mu = mu_n + jax.scipy.linalg.solve_triangular(chol_prec, z, lower=True, trans="T")
    return mu, precision


def wishart_chi2_shapes(nu: float, d: int) -> np.ndarray:
    """Gamma shapes whose draws, doubled, are the Bartlett chi-squares ``chi2(nu - i)``."""
    return 0.5 * (nu - np.arange(d))
