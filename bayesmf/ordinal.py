"""The ordered-probit likelihood for star ratings: cut points, cell masses, latent draws and the cut-point step.

The model (issue 20, part 4): each rating has a latent Gaussian utility
with the noise precision fixed at 1, and the star is the cell it falls in,

.. math::

    z_{uv} \\sim \\mathcal N(\\eta_{uv}, 1),\\qquad
    y_{uv} = k \\iff c_{k-1} < z_{uv} \\le c_k,\\quad k = 0, \\dots, K-1,

with ``c_{-1} = -inf``, ``c_{K-1} = +inf`` and ``K - 1`` finite cut points
``c_0 < ... < c_{K-2}``, so that ``P(y = k | eta) = Phi(c_k - eta) -
Phi(c_{k-1} - eta)``. Cells are right-closed, as in
:func:`bayesmf.metrics.stars.star_index`.

**Location and scale.** Adding a constant to every cut point and to every
``eta`` changes no rating, and neither does a common scale (absorbed by the
fixed unit noise). The scale is fixed by the unit noise; the location by
``c_0 = 0``. The mean of the movie offsets ``mu_0`` therefore stays free and
carries the level: it is the latent utility relative to the boundary between
the lowest two stars.

**Free parameters and prior.** With ``c_0 = 0`` the remaining cut points are
cumulative sums of positive increments; the free parameters are their logs,

.. math::

    \\theta_k = \\log(c_k - c_{k-1}),\\quad k = 1, \\dots, K-2,\\qquad
    \\theta_k \\sim \\mathcal N(m, s^2)\\ \\text{independently}

(:class:`CutpointPrior`: ``m = 0``, ``s = 1`` by default, i.e. a cell one
noise sd wide a priori, within a factor of ``e`` either way with prob. 0.68).
A proper prior on unconstrained parameters keeps the posterior proper
whatever the stars: an empty middle star has a bounded cell.

**The cut-point step** (Albert & Chib 2001; myFM does the same): the latent
``z`` is integrated out, and the free parameters get a Metropolis-Hastings
step on their marginal posterior ``p(theta | eta, y)``. The proposal is a
Laplace approximation reached by a fixed number of Newton steps from the
current value (gradient and Hessian by JAX, ``K - 2`` dimensions): a
multivariate t with ``PROPOSAL_DF`` degrees of freedom centred at the Newton
iterate with the scale matrix from the negated Hessian (eigenvalues taken in
absolute value and floored at the prior precision, so it is always positive
definite). The proposal depends on the current value only through the Newton
start, so it is nearly an independence sampler; the acceptance ratio is the
full one, with the reverse proposal density from Newton steps started at the
proposed value. The uniform full conditional of Albert & Chib (1993), given
``z``, barely moves with 80,000 ratings (its interval is the gap between the
largest ``z`` of one star and the smallest of the next). After the step,
:func:`latent_draw_from` draws ``z`` given the new cut points: the pair is a
draw of ``(cuts, z) | eta`` that leaves their joint posterior invariant
(:func:`cutpoint_latent_step`).

Every function is pure, over arrays, jittable with the number of stars static
(it is the length of the ``free`` or ``cuts`` axis); the ``*_from`` functions
take their variates as arguments so that a sweep can draw them all at once.
:class:`OrderedProbit` is the NumPyro distribution (marginal likelihood as
``log_prob``, sampling through the latent normal) for the NumPyro model and
simulation-based checks.

Examples
--------
>>> import jax.numpy as jnp
>>> cuts = cuts_from_free(jnp.zeros(3))
>>> cuts.tolist()
[0.0, 1.0, 2.0, 3.0]
>>> masses = star_masses(cuts, jnp.array([0.5, 2.5]))
>>> masses.shape, bool(jnp.allclose(masses.sum(-1), 1.0))
((2, 5), True)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, ndtri
from numpyro.distributions import Distribution, constraints

Array = jax.Array

# Newton steps from the current value before the proposal is formed (each one evaluates the marginal
# log posterior, its gradient and its (K-2)-dim Hessian over all ratings, once from the current and once
# from the proposed value). At stationarity the current value is within a few posterior sds of the mode,
# where one step lands on it to far below the posterior sd: at 80,000 ratings the acceptance rate was 0.886
# with one step and 0.893 with two (t proposal, 8 df), at 1.5x the cost. The t tails, not the Newton
# steps, limit the acceptance; one step also took a start 40 posterior sds away to the mode at once.
NUM_NEWTON_STEPS = 1
# Degrees of freedom of the t proposal: heavier tails than the Laplace normal, so that a start (or a
# posterior with few ratings per star) in a tail heavier than the Laplace normal's is still covered. With
# a normal proposal a start 40 posterior sds from the mode (80,000 ratings) was never left in 300 steps;
# with 8 df it was left at once, and the acceptance at the mode is 0.89 (0.97 with 30 df).
PROPOSAL_DF = 8
# Largest Newton move per step in each log increment (a factor e^3 in a cell's width): a bound against a
# wild step from a start far in the tail; it never binds near the mode.
MAX_NEWTON_STEP = 3.0
# The damped Newton step takes the full step when it raises the log posterior, else the best of the
# shorter fractions (values only, one batched pass): far from the mode (a sparse star, a start in the
# tail) the full step can overshoot; without this SBC at 300 ratings failed (chains stuck at the start).
STEP_FRACTIONS = (1.0, 0.5, 0.25, 0.125)
# Below this log-probability the normal quantile is found from the log-probability itself (asymptotic
# start, Newton steps on log_ndtr) instead of ndtri(exp(.)): exp(.) stays a normal float32 number above it.
_LOG_P_DIRECT = -20.0
_NEWTON_QUANTILE_STEPS = 3
_LN2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class CutpointPrior(NamedTuple):
    """Independent normal prior on the log increments ``log(c_k - c_{k-1})``, ``k = 1..K-2``."""

    log_increment_mean: float = 0.0
    log_increment_sd: float = 1.0


class CutpointInfo(NamedTuple):
    """Diagnostics of one cut-point step."""

    accepted: Array  # () bool
    accept_prob: Array  # () min(1, MH ratio)


# --- cut points -------------------------------------------------------------------------------------


def cuts_from_free(free: Array) -> Array:
    """Cut points from the free parameters: ``c_0 = 0``, ``c_k = c_{k-1} + exp(free_k)``.

    Parameters
    ----------
    free : array, shape (..., K - 2)
        Log increments.

    Returns
    -------
    array, shape (..., K - 1)
        Increasing cut points, the first 0.
    """
    free = jnp.asarray(free)
    zero = jnp.zeros(free.shape[:-1] + (1,), free.dtype)
    return jnp.concatenate([zero, jnp.cumsum(jnp.exp(free), axis=-1)], axis=-1)


def free_from_cuts(cuts: Array) -> Array:
    """Free parameters (log increments) of cut points; the inverse of :func:`cuts_from_free` when ``c_0 = 0``.

    Parameters
    ----------
    cuts : array, shape (..., K - 1)
        Increasing; ``cuts[..., 0]`` is taken to be 0 (not checked: it is dropped).

    Returns
    -------
    array, shape (..., K - 2)
    """
    return jnp.log(jnp.diff(jnp.asarray(cuts), axis=-1))


def log_abs_det_jacobian(free: Array) -> Array:
    """``log |d cuts[1:] / d free|`` (triangular Jacobian, diagonal ``exp(free)``): ``sum(free)``.

    Parameters
    ----------
    free : array, shape (..., K - 2)

    Returns
    -------
    array, shape (...)
    """
    return jnp.sum(free, axis=-1)


def log_prior(free: Array, prior: CutpointPrior = CutpointPrior()) -> Array:
    """Log density of the free parameters under :class:`CutpointPrior`.

    Parameters
    ----------
    free : array, shape (..., K - 2)
    prior : CutpointPrior

    Returns
    -------
    array, shape (...)
    """
    scaled = (free - prior.log_increment_mean) / prior.log_increment_sd
    per = -0.5 * scaled**2 - math.log(prior.log_increment_sd) - _HALF_LOG_2PI
    return jnp.sum(per, axis=-1)


# --- cell probabilities ---------------------------------------------------------------------------------


def _log1mexp(d):
    """``log(1 - exp(d))`` for ``d < 0``, accurate on both sides of ``-log 2``; finite gradients everywhere."""
    near = d > -_LN2
    from_near = jnp.log(-jnp.expm1(jnp.where(near, d, -1.0)))
    from_far = jnp.log1p(-jnp.exp(jnp.where(near, -1.0, d)))
    return jnp.where(near, from_near, from_far)


def _cell(cuts, eta, star):
    """Standardised cell ends ``a = c_{k-1} - eta``, ``b = c_k - eta`` (finite stand-ins where open) and which are finite."""
    cuts = jnp.asarray(cuts)
    eta = jnp.asarray(eta, cuts.dtype)
    star = jnp.asarray(star).astype(jnp.int32)
    num_cuts = cuts.shape[-1]
    lo_idx = jnp.clip(star - 1, 0, num_cuts - 1)
    hi_idx = jnp.clip(star, 0, num_cuts - 1)
    if cuts.ndim == 1:
        lo, hi = cuts[lo_idx], cuts[hi_idx]
    else:
        shape = jnp.broadcast_shapes(cuts.shape[:-1], eta.shape, star.shape)
        full = jnp.broadcast_to(cuts, shape + (num_cuts,))

        def take(idx):
            return jnp.take_along_axis(full, jnp.broadcast_to(idx, shape)[..., None], axis=-1)[..., 0]

        lo, hi = take(lo_idx), take(hi_idx)
    return lo - eta, hi - eta, star > 0, star < num_cuts


def _oriented(a, b, has_lo, has_hi):
    """The cell on the side of its smaller tail: ``x`` in ``(lo, hi]`` with ``x = z - eta`` or ``x = eta - z`` (flip).

    The top cell is always flipped and the bottom one never; a middle cell is
    flipped when its midpoint lies above ``eta``. Then ``Phi(lo)`` and
    ``Phi(hi)`` are lower-tail probabilities, which ``log_ndtr`` keeps to full
    relative precision however far out.
    """
    flip = has_lo & (~has_hi | (a + b > 0))
    lo = jnp.where(flip, -b, a)
    hi = jnp.where(flip, -a, b)
    has_lo_o = jnp.where(flip, has_hi, has_lo)
    return flip, lo, hi, has_lo_o


def log_star_prob(cuts: Array, eta: Array, star: Array) -> Array:
    """Per-rating log probability of the observed star, ``log(Phi(c_k - eta) - Phi(c_{k-1} - eta))``.

    Computed as ``log Phi(hi) + log(1 - exp(log Phi(lo) - log Phi(hi)))`` on
    the cell's smaller-tail side (signs flipped for a cell above ``eta``), so
    it keeps its relative precision far in the tails (``eta = +-30`` included)
    and its gradients are finite for every star.

    Parameters
    ----------
    cuts : array, shape (K - 1,) or (..., K - 1)
        Increasing cut points (broadcast against ``eta``).
    eta : array, shape (...)
        Latent means.
    star : int array, shape (...)
        Observed stars, ``0..K-1``.

    Returns
    -------
    array, shape (...)
    """
    a, b, has_lo, has_hi = _cell(cuts, eta, star)
    _, lo, hi, has_lo_o = _oriented(a, b, has_lo, has_hi)
    log_hi = log_ndtr(hi)
    gap = jnp.where(has_lo_o, log_ndtr(lo) - log_hi, -1.0)
    return log_hi + jnp.where(has_lo_o, _log1mexp(gap), 0.0)


def marginal_loglik(cuts: Array, eta: Array, star: Array, mask: Array | None = None) -> Array:
    """The ordered-probit log likelihood with ``z`` integrated out: the sum of :func:`log_star_prob`.

    Parameters
    ----------
    cuts : array, shape (K - 1,)
    eta : array, shape (n,)
    star : int array, shape (n,)
    mask : bool array, shape (n,), optional
        Rows to count (padding rows False).

    Returns
    -------
    array, shape ()
    """
    per_row = log_star_prob(cuts, eta, star)
    if mask is not None:
        per_row = jnp.where(mask, per_row, 0.0)
    return jnp.sum(per_row)


def star_masses(cuts: Array, eta: Array) -> Array:
    """The predictive mass of every star for each latent mean: ``(n, K)`` rows summing to 1.

    One posterior draw's predictive; the caller averages over draws and hands
    the ``(n, K)`` mixture to :func:`bayesmf.metrics.stars.star_rows`.

    Parameters
    ----------
    cuts : array, shape (K - 1,) or (..., K - 1)
        Cut points (a leading batch broadcasts against ``eta``'s leading axes).
    eta : array, shape (..., n)

    Returns
    -------
    array, shape (..., n, K)
    """
    cuts = jnp.asarray(cuts)
    eta = jnp.asarray(eta)
    stars = jnp.arange(cuts.shape[-1] + 1)
    if cuts.ndim > 1:  # batch (...) against eta's (..., n, 1) with the stars on the last axis
        cuts = cuts[..., None, None, :]
    return jnp.exp(log_star_prob(cuts, eta[..., None], stars))


# --- the latent draw ---------------------------------------------------------------------------------


def _ndtri_log(log_p):
    """Standard normal quantile of ``exp(log_p)``, accurate for ``log_p`` far below float underflow.

    The far-tail branch runs (``lax.cond``) only when some ``log_p`` needs it.
    """
    direct = ndtri(jnp.exp(jnp.maximum(log_p, _LOG_P_DIRECT)))

    def tail(_):
        # Phi(x) ~ phi(x)/|x| gives x^2 ~ t - log(2 pi t), t = -2 log p; then Newton on log_ndtr(x) = log p
        # (log_ndtr is concave: after the first step the iterates approach the root from below, quadratically).
        target = jnp.minimum(log_p, _LOG_P_DIRECT)
        t = -2.0 * target
        x = -jnp.sqrt(t - jnp.log(2.0 * math.pi * t))
        for _ in range(_NEWTON_QUANTILE_STEPS):
            log_cdf = log_ndtr(x)
            slope = jnp.exp(-0.5 * x**2 - _HALF_LOG_2PI - log_cdf)
            x = x - (log_cdf - target) / slope
        return jnp.where(log_p > _LOG_P_DIRECT, direct, x)

    return jax.lax.cond(jnp.any(log_p <= _LOG_P_DIRECT), tail, lambda _: direct, None)


def latent_draw_from(u: Array, cuts: Array, eta: Array, star: Array) -> Array:
    """Latent utilities from ``N(eta, 1)`` truncated to each star's cell, by inverse cdf of given uniforms.

    On the cell's smaller-tail side (see :func:`log_star_prob`) the quantile is
    ``Phi^{-1}(Phi(lo) + u (Phi(hi) - Phi(lo)))``, formed in logs as
    ``log Phi(hi) + log(u + (1 - u) Phi(lo)/Phi(hi))`` and inverted from the
    log-probability, so a cell 30 sds out is drawn as accurately as one at
    the mean; the result is clipped to the cell.

    Parameters
    ----------
    u : array, shape (...)
        Uniforms in ``(0, 1)`` (0 itself would give the open end of an end cell).
    cuts : array, shape (K - 1,) or (..., K - 1)
    eta : array, shape (...)
    star : int array, shape (...)

    Returns
    -------
    array, shape (...)
        ``z`` with ``c_{k-1} < z <= c_k`` (up to rounding at the ends).
    """
    eta = jnp.asarray(eta, jnp.asarray(cuts).dtype)
    a, b, has_lo, has_hi = _cell(cuts, eta, star)
    flip, lo, hi, has_lo_o = _oriented(a, b, has_lo, has_hi)
    u = jnp.asarray(u, eta.dtype)
    log_hi = log_ndtr(hi)
    ratio = jnp.where(has_lo_o, jnp.exp(log_ndtr(lo) - log_hi), 0.0)  # Phi(lo) / Phi(hi) in [0, 1]
    x = _ndtri_log(log_hi + jnp.log(u + (1.0 - u) * ratio))
    x = jnp.minimum(jnp.where(has_lo_o, jnp.maximum(x, lo), x), hi)
    return eta + jnp.where(flip, -x, x)


def latent_draw(rng_key: Array, cuts: Array, eta: Array, star: Array) -> Array:
    """:func:`latent_draw_from` with its uniforms drawn from ``rng_key`` (shape of ``eta``)."""
    eta = jnp.asarray(eta, jnp.asarray(cuts).dtype)
    tiny = jnp.finfo(eta.dtype).tiny
    u = jax.random.uniform(rng_key, jnp.broadcast_shapes(eta.shape, jnp.shape(star)), eta.dtype, minval=tiny)
    return latent_draw_from(u, cuts, eta, star)


# --- the cut-point step ----------------------------------------------------------------------------------


def log_posterior(
    free: Array, eta: Array, star: Array, prior: CutpointPrior = CutpointPrior(), mask: Array | None = None
) -> Array:
    """The marginal log posterior of the free parameters given ``eta`` (up to a constant).

    Parameters
    ----------
    free : array, shape (K - 2,)
    eta : array, shape (n,)
    star : int array, shape (n,)
    prior : CutpointPrior
    mask : bool array, shape (n,), optional

    Returns
    -------
    array, shape ()
    """
    return marginal_loglik(cuts_from_free(free), eta, star, mask) + log_prior(free, prior)


class _Laplace(NamedTuple):
    value: Array  # () log posterior at the Newton start
    mean: Array  # (m,) Newton iterate
    vectors: Array  # (m, m) eigenvectors of the proposal precision
    eigenvalues: Array  # (m,) > 0


def _damped(value_fn, point, value, step, fractions):
    """``point + f * step`` for the first fraction ``f`` whose value beats ``value`` (``point`` if none).

    The full step is evaluated alone; the shorter ones only when it does not
    improve (``lax.cond``: near the mode one value evaluation per step).
    """

    def value_or_worst(t):
        v = value_fn(t)
        return jnp.where(jnp.isnan(v), -jnp.inf, v)

    def shorter(_):
        candidates = point + fractions[1:, None] * step
        values = jax.vmap(value_or_worst)(candidates)
        best = jnp.argmax(values)
        return jnp.where(values[best] > value, candidates[best], point)

    full = point + step
    return jax.lax.cond(value_or_worst(full) > value, lambda _: full, shorter, None)


def _laplace(free, eta, star, prior, mask, num_newton):
    """Damped Newton steps from ``free``; the proposal's centre and precision (eigen-form) and the start's value.

    Each step evaluates the value, gradient and Hessian at the current point,
    then moves to the full Newton point if its value is higher, else to the
    best of the shorter ``STEP_FRACTIONS`` of the step if that is higher,
    else stays. The precision is the last Hessian's (see
    :func:`cutpoint_step_from`); the centre is the last point reached.
    """
    floor = 1.0 / prior.log_increment_sd**2
    fractions = jnp.asarray(STEP_FRACTIONS, free.dtype)

    def value_fn(t):
        return log_posterior(t, eta, star, prior, mask)

    def grad_aux(t):
        value, grad = jax.value_and_grad(value_fn)(t)
        return grad, (value, grad)

    point = free
    value = None
    for i in range(num_newton):
        hessian, (v, grad) = jax.jacfwd(grad_aux, has_aux=True)(point)
        if i == 0:
            value = v
        eigenvalues, vectors = jnp.linalg.eigh(-0.5 * (hessian + hessian.T))
        eigenvalues = jnp.maximum(jnp.abs(eigenvalues), floor)
        step = jnp.clip(vectors @ ((vectors.T @ grad) / eigenvalues), -MAX_NEWTON_STEP, MAX_NEWTON_STEP)
        point = _damped(value_fn, point, v, step, fractions)
    return _Laplace(value, point, vectors, eigenvalues)


def _log_proposal(x, laplace, df):
    """Log density (up to a constant shared by every call) of the proposal at ``x``: multivariate t, or normal (df 0)."""
    y = laplace.vectors.T @ (x - laplace.mean)
    quad = jnp.sum(laplace.eigenvalues * y**2)
    half_log_det = 0.5 * jnp.sum(jnp.log(laplace.eigenvalues))
    if df == 0:
        return half_log_det - 0.5 * quad
    return half_log_det - 0.5 * (df + x.shape[-1]) * jnp.log1p(quad / df)


def num_cutpoint_variates(num_stars: int) -> int:
    """Length of the normal variates :func:`cutpoint_step_from` takes: ``K - 2`` plus ``PROPOSAL_DF``."""
    return num_stars - 2 + PROPOSAL_DF


def cutpoint_variates(rng_key: Array, num_stars: int) -> tuple[Array, Array]:
    """The variates of one :func:`cutpoint_step_from`: normals ``(K - 2 + PROPOSAL_DF,)`` and a uniform ``()``."""
    key_normal, key_uniform = jax.random.split(rng_key)
    return jax.random.normal(key_normal, (num_cutpoint_variates(num_stars),)), jax.random.uniform(key_uniform)


def cutpoint_step_from(
    z: Array,
    u: Array,
    free: Array,
    eta: Array,
    star: Array,
    prior: CutpointPrior = CutpointPrior(),
    *,
    mask: Array | None = None,
    num_newton: int = NUM_NEWTON_STEPS,
) -> tuple[Array, CutpointInfo]:
    """One Metropolis-Hastings step on the free cut-point parameters with ``z`` integrated out.

    .. math::

        \\theta' = \\hat\\theta(\\theta) + \\sqrt{\\nu / w}\\; V \\Lambda^{-1/2} \\epsilon,\\quad
        \\epsilon = z_{1..m},\\ w = \\textstyle\\sum z_{m+1..}^2 \\sim \\chi^2_\\nu,\\\\
        \\log \\alpha = \\log p(\\theta' \\mid \\eta, y) - \\log p(\\theta \\mid \\eta, y)
        + \\log q(\\theta \\mid \\theta') - \\log q(\\theta' \\mid \\theta),

    where ``hat theta(theta)`` is ``num_newton`` damped Newton steps from ``theta``
    on the marginal log posterior and ``V Lambda V^T`` its negated Hessian at
    the last Newton start (eigenvalues in absolute value, floored at the
    prior precision): a t proposal with ``nu = len(z) - m`` degrees of
    freedom, a normal one when ``len(z) == m``. Accept when ``log u < log
    alpha``.

    Parameters
    ----------
    z : array, shape (K - 2 + nu,)
        Standard normals (:func:`cutpoint_variates` draws ``nu = PROPOSAL_DF``).
    u : array, shape ()
        Uniform in ``(0, 1)``.
    free : array, shape (K - 2,)
        Current log increments.
    eta : array, shape (n,)
        Latent means of the ratings.
    star : int array, shape (n,)
        Their stars, ``0..K-1``.
    prior : CutpointPrior
    mask : bool array, shape (n,), optional
        Rows to count (padding rows False).
    num_newton : int
        Newton steps (static).

    Returns
    -------
    free : array, shape (K - 2,)
        The new value (the old one when rejected).
    info : CutpointInfo
    """
    free = jnp.asarray(free)
    m = free.shape[-1]
    if m == 0:  # two stars: the one cut point is the location, nothing is free
        return free, CutpointInfo(jnp.asarray(True), jnp.asarray(1.0, free.dtype))
    z = jnp.asarray(z, free.dtype)
    df = z.shape[-1] - m
    current = _laplace(free, eta, star, prior, mask, num_newton)
    scale = jnp.sqrt(df / jnp.sum(z[m:] ** 2)) if df else 1.0
    proposal = current.mean + scale * (current.vectors @ (z[:m] / jnp.sqrt(current.eigenvalues)))
    reverse = _laplace(proposal, eta, star, prior, mask, num_newton)
    log_ratio = reverse.value - current.value + _log_proposal(free, reverse, df) - _log_proposal(proposal, current, df)
    log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
    accepted = jnp.log(u) < log_ratio
    info = CutpointInfo(accepted, jnp.exp(jnp.minimum(log_ratio, 0.0)))
    return jnp.where(accepted, proposal, free), info


def cutpoint_step(
    rng_key: Array, free: Array, eta: Array, star: Array, prior: CutpointPrior = CutpointPrior(), *, mask: Array | None = None
) -> tuple[Array, CutpointInfo]:
    """:func:`cutpoint_step_from` with its variates drawn from ``rng_key``."""
    z, u = cutpoint_variates(rng_key, jnp.shape(free)[-1] + 2)
    return cutpoint_step_from(z, u, free, eta, star, prior, mask=mask)


def cutpoint_latent_step(
    rng_key: Array, free: Array, eta: Array, star: Array, prior: CutpointPrior = CutpointPrior(), *, mask: Array | None = None
) -> tuple[Array, Array, CutpointInfo]:
    """The ordinal Gibbs pair given ``eta``: the cut-point step, then ``z`` given the new cut points.

    Parameters
    ----------
    rng_key : jax.random.PRNGKey
    free : array, shape (K - 2,)
    eta : array, shape (n,)
    star : int array, shape (n,)
    prior : CutpointPrior
    mask : bool array, shape (n,), optional

    Returns
    -------
    free : array, shape (K - 2,)
    z : array, shape (n,)
        Latent utilities drawn given the new cut points.
    info : CutpointInfo
    """
    key_cuts, key_latent = jax.random.split(rng_key)
    free, info = cutpoint_step(key_cuts, free, eta, star, prior, mask=mask)
    return free, latent_draw(key_latent, cuts_from_free(free), eta, star), info


# --- NumPyro -----------------------------------------------------------------------------------------------


class OrderedProbit(Distribution):
    """Ordered probit over stars ``0..K-1``: ``P(k) = Phi(c_k - eta) - Phi(c_{k-1} - eta)``.

    ``log_prob`` is :func:`log_star_prob` (the marginal likelihood, finite
    gradients in ``eta`` and ``cuts``); ``sample`` draws the latent
    ``N(eta, 1)`` and counts the cut points below it. NumPyro has
    ``OrderedLogistic`` but no probit.

    Parameters
    ----------
    eta : array, shape (...)
        Latent means.
    cuts : array, shape (..., K - 1)
        Increasing cut points (batch broadcast against ``eta``).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> d = OrderedProbit(jnp.array([0.0, 3.0]), jnp.array([0.0, 1.0, 2.0]))
    >>> d.batch_shape, d.sample(jax.random.PRNGKey(0), (5,)).shape
    ((2,), (5, 2))
    """

    arg_constraints = {"eta": constraints.real, "cuts": constraints.ordered_vector}
    has_enumerate_support = True
    pytree_data_fields = ("eta", "cuts")

    def __init__(self, eta, cuts, *, validate_args=None):
        self.eta = jnp.asarray(eta)
        self.cuts = jnp.asarray(cuts)
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(self.eta), jnp.shape(self.cuts)[:-1])
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, jnp.shape(self.cuts)[-1])

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        latent = self.eta + jax.random.normal(key, shape, jnp.result_type(self.eta, self.cuts, float))
        return jnp.sum(latent[..., None] > self.cuts, axis=-1)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return log_star_prob(self.cuts, self.eta, value)

    @property
    def probs(self):
        """Star masses, shape ``batch_shape + (K,)``."""
        stars = jnp.arange(jnp.shape(self.cuts)[-1] + 1)
        return jnp.exp(log_star_prob(self.cuts[..., None, :], self.eta[..., None], stars))

    def enumerate_support(self, expand=True):
        values = jnp.arange(jnp.shape(self.cuts)[-1] + 1).reshape((-1,) + (1,) * len(self.batch_shape))
        if expand:
            values = jnp.broadcast_to(values, values.shape[:1] + self.batch_shape)
        return values


def normal_star_masses(cuts: Array, mean: Array, var: Array) -> Array:
    """Star masses of a latent ``z ~ N(mean, var)``: ``Phi((c_k - mean)/sqrt(var))`` differences, tail-stable.

    With ``var = 1`` these are :func:`star_masses`; a latent mean that is
    itself ``N(m, v)`` (a cold-start pair's, from
    :func:`bayesmf.predictive.pair_moments`, whose variance already holds
    the unit noise) gives ``var = v + 1``: exact, no sampling.

    Parameters
    ----------
    cuts : array, shape (..., K - 1)
        One draw's cut points per leading index (or one shared ``(K - 1,)``).
    mean, var : array, shape (..., n)
        ``var > 0``.

    Returns
    -------
    array, shape (..., n, K)
    """
    cuts = jnp.asarray(cuts)
    mean = jnp.asarray(mean, cuts.dtype)
    sd = jnp.sqrt(jnp.asarray(var, cuts.dtype))
    stars = jnp.arange(cuts.shape[-1] + 1)
    scaled = cuts[..., None, :] / sd[..., None]  # (..., n, K - 1)
    return jnp.exp(log_star_prob(scaled[..., None, :], (mean / sd)[..., None], stars))
