"""Scores for predictive ratings: point, Gaussian, Gaussian-mixture and ranking.

Plain NumPy (and ``scipy.special``); nothing here draws from a model. Every
function validates its input and raises ``ValueError`` naming the problem
(mismatched shapes, empty arrays, ``sd <= 0`` or non-finite values, a
probability outside ``(0, 1)``, ``k <= 0``).

The posterior predictive of a sampler is an equal-weight mixture over its
``S`` draws (or, with importance weights, a weighted one):

.. math::

    p(y_i) = \\sum_s w_s\\, \\mathcal N(y_i;\\ \\mu_{si},\\ \\sigma^2_{si}),
    \\qquad \\sum_s w_s = 1,

so the mixture functions take ``mu`` and ``sd`` of shape ``(S, n)`` and an
optional ``weights`` of shape ``(S,)`` (normalised here). The Gaussian
functions score the moment-matched single Normal instead; the two agree for a
point estimate (``S = 1``).

CRPS uses the energy form ``CRPS(F, y) = E|X - y| - E|X - X'| / 2`` with
``X, X' ~ F`` independent, and for Normals the closed form of the mean
absolute value,

.. math::

    A(m, s) = E|N(m, s^2)| = m\\,(2\\Phi(m/s) - 1) + 2 s\\, \\varphi(m/s).

Summary tables (:func:`summarize`, :func:`summarize_by`) use the keys
``rmse, mae, nll, crps, coverage_50, width_50, ...``; both average the
per-row scores of :func:`score_rows`, so one scoring pass serves any number
of breakdowns (:func:`group_rows`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import special

# Largest block of float64 cells (draws x rows, or draw pairs x rows) computed
# at once: 2**18 cells is 2 MiB per temporary, a few temporaries per block
# (measured faster than 8 MiB blocks, which spill the CPU cache).
CHUNK_CELLS = 2**18

# Default budget of (draw pair, row) evaluations of the pairwise CRPS term.
# Above it the pairwise term is estimated from a random subset of pairs; one
# evaluation costs ~50 ns (scipy.special.erf dominates), so 1e7 take ~0.5 s.
MAX_PAIRS = 10_000_000

# Bisection bracket: min / max over draws of mu -/+ BRACKET_SDS * sd. The
# mixture cdf at the lower end is below Phi(-10) ~ 8e-24.
BRACKET_SDS = 10.0

# Default central-interval probabilities reported by summarize.
DEFAULT_LEVELS = (0.5, 0.8, 0.9, 0.95)

# Default activity-bucket edges (number of training ratings).
DEFAULT_EDGES = (20, 50, 100, 200)

_LOG_2PI = math.log(2.0 * math.pi)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)


# --------------------------------------------------------------------------
# validation helpers


def _vector(name: str, x: ArrayLike) -> np.ndarray:
    """``x`` as a non-empty, finite float64 vector."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (shape (n,)), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values")
    return a


def _same_length(**arrays: np.ndarray) -> int:
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"mismatched shapes: {listed}")
    return next(iter(shapes.values()))[0]


def _sd(name: str, sd: ArrayLike, shape: tuple[int, ...]) -> np.ndarray:
    """``sd`` broadcast to ``shape``; finite and strictly positive."""
    a = np.asarray(sd, dtype=np.float64)
    try:
        a = np.broadcast_to(a, shape)
    except ValueError:
        raise ValueError(f"mismatched shapes: {name} {a.shape} does not broadcast to {shape}") from None
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values")
    if not np.all(a > 0):
        raise ValueError(f"{name} must be > 0 everywhere, got min {a.min()}")
    return a


def _prob(prob: ArrayLike, name: str = "prob") -> np.ndarray:
    p = np.asarray(prob, dtype=np.float64)
    if p.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all((p > 0.0) & (p < 1.0)):  # also rejects NaN
        raise ValueError(f"{name} must be in the open interval (0, 1), got {prob}")
    return p


def _gaussian(y: ArrayLike, mean: ArrayLike, sd: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = _vector("y", y)
    mean = _vector("mean", mean)
    _same_length(y=y, mean=mean)
    return y, mean, _sd("sd", sd, y.shape)


def _components(
    mu: ArrayLike, sd: ArrayLike, weights: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated mixture components: mu, sd of shape (S, n) and weights (S,) summing to 1."""
    m = np.asarray(mu, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"mu must be 2-D (shape (num_draws, n)), got shape {m.shape}")
    if m.size == 0:
        raise ValueError(f"mu is empty (shape {m.shape})")
    if not np.all(np.isfinite(m)):
        raise ValueError("mu contains non-finite values")
    s = _sd("sd", sd, m.shape)
    num_draws = m.shape[0]
    if weights is None:
        w = np.full(num_draws, 1.0 / num_draws)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (num_draws,):
            raise ValueError(f"mismatched shapes: weights {w.shape}, expected ({num_draws},) (one per draw of mu)")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights must be finite and >= 0")
        total = w.sum()
        if not total > 0:
            raise ValueError("weights sum to zero")
        w = w / total
    return m, s, w


def _row_target(name: str, x: ArrayLike, n: int) -> np.ndarray:
    """A per-row vector of length n (a scalar is broadcast)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0:
        a = np.full(n, float(a))
    a = _vector(name, a)
    if a.shape != (n,):
        raise ValueError(f"mismatched shapes: {name} {a.shape}, expected ({n},) (columns of mu)")
    return a


def _row_blocks(n: int, rows: int) -> Iterator[slice]:
    rows = max(1, int(rows))
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def _abs_mean(m: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``A(m, s) = E|N(m, s^2)|``, elementwise."""
    z = m / s
    return m * special.erf(z / math.sqrt(2.0)) + 2.0 * s * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


# --------------------------------------------------------------------------
# point and Gaussian scores


def rmse(y: ArrayLike, mean: ArrayLike) -> float:
    """Root mean squared error.

    Parameters
    ----------
    y : array, shape (n,)
        Observed ratings.
    mean : array, shape (n,)
        Point predictions.

    Returns
    -------
    float

    Examples
    --------
    >>> rmse([1.0, 2.0], [1.0, 4.0])
    1.4142135623730951
    """
    y = _vector("y", y)
    mean = _vector("mean", mean)
    _same_length(y=y, mean=mean)
    return float(np.sqrt(np.mean((y - mean) ** 2)))


def mae(y: ArrayLike, mean: ArrayLike) -> float:
    """Mean absolute error.

    Parameters
    ----------
    y : array, shape (n,)
    mean : array, shape (n,)

    Returns
    -------
    float

    Examples
    --------
    >>> mae([1.0, 2.0], [1.0, 4.0])
    1.0
    """
    y = _vector("y", y)
    mean = _vector("mean", mean)
    _same_length(y=y, mean=mean)
    return float(np.mean(np.abs(y - mean)))


def gaussian_nll_per_row(y: ArrayLike, mean: ArrayLike, sd: ArrayLike) -> np.ndarray:
    """Negative log density of ``y`` under ``N(mean, sd^2)``, one value per row.

    Parameters
    ----------
    y : array, shape (n,)
    mean : array, shape (n,)
    sd : array, shape (n,) or scalar
        Predictive standard deviations, > 0.

    Returns
    -------
    array, shape (n,)
    """
    y, mean, sd = _gaussian(y, mean, sd)
    z = (y - mean) / sd
    return 0.5 * _LOG_2PI + np.log(sd) + 0.5 * z * z


def gaussian_nll(y: ArrayLike, mean: ArrayLike, sd: ArrayLike) -> float:
    """Mean negative log density of ``y`` under ``N(mean, sd^2)``, per rating.

    Parameters
    ----------
    y : array, shape (n,)
    mean : array, shape (n,)
    sd : array, shape (n,) or scalar
        Predictive standard deviations, > 0.

    Returns
    -------
    float

    Examples
    --------
    >>> round(gaussian_nll([0.0], [0.0], [1.0]), 6)  # log(2 pi) / 2
    0.918939
    """
    return float(np.mean(gaussian_nll_per_row(y, mean, sd)))


def gaussian_interval(mean: ArrayLike, sd: ArrayLike, prob: float) -> tuple[np.ndarray, np.ndarray]:
    """Central interval of probability ``prob`` of ``N(mean, sd^2)``.

    Parameters
    ----------
    mean : array, shape (n,)
    sd : array, shape (n,) or scalar
    prob : float or array, shape (n,)
        In (0, 1).

    Returns
    -------
    lower, upper : array, shape (n,)

    Examples
    --------
    >>> lo, hi = gaussian_interval([0.0], [1.0], 0.95)
    >>> round(float(hi[0]), 4)
    1.96
    """
    mean = _vector("mean", mean)
    sd = _sd("sd", sd, mean.shape)
    z = special.ndtri(0.5 + 0.5 * _prob(prob))
    return mean - z * sd, mean + z * sd


def coverage(y: ArrayLike, lower: ArrayLike, upper: ArrayLike) -> float:
    """Fraction of ``y`` inside ``[lower, upper]`` (both ends included).

    Parameters
    ----------
    y, lower, upper : array, shape (n,)

    Returns
    -------
    float

    Examples
    --------
    >>> coverage([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    0.6666666666666666
    """
    y = _vector("y", y)
    lower = _vector("lower", lower)
    upper = _vector("upper", upper)
    _same_length(y=y, lower=lower, upper=upper)
    if np.any(lower > upper):
        raise ValueError("lower > upper for some rows")
    return float(np.mean((lower <= y) & (y <= upper)))


def crps_gaussian_per_row(y: ArrayLike, mean: ArrayLike, sd: ArrayLike) -> np.ndarray:
    """Closed-form CRPS of ``N(mean, sd^2)`` at ``y``, one value per row.

    .. math::

        \\mathrm{CRPS} = \\sigma\\,\\big(z\\,(2\\Phi(z) - 1) + 2\\varphi(z) - 1/\\sqrt\\pi\\big),
        \\qquad z = (y - \\mu) / \\sigma.

    Parameters
    ----------
    y : array, shape (n,)
    mean : array, shape (n,)
    sd : array, shape (n,) or scalar

    Returns
    -------
    array, shape (n,)

    Examples
    --------
    >>> crps_gaussian_per_row([0.0], [0.0], [1.0]).round(4)
    array([0.2337])
    """
    y, mean, sd = _gaussian(y, mean, sd)
    return _abs_mean(y - mean, sd) - sd * _INV_SQRT_PI


def crps_gaussian(y: ArrayLike, mean: ArrayLike, sd: ArrayLike) -> float:
    """Mean over rows of :func:`crps_gaussian_per_row`.

    Parameters
    ----------
    y : array, shape (n,)
    mean : array, shape (n,)
    sd : array, shape (n,) or scalar

    Returns
    -------
    float

    Examples
    --------
    >>> round(crps_gaussian([0.0, 0.0], [0.0, 0.0], 1.0), 4)
    0.2337
    """
    return float(np.mean(crps_gaussian_per_row(y, mean, sd)))


# --------------------------------------------------------------------------
# Gaussian mixtures


def mixture_moments(
    mu: ArrayLike, sd: ArrayLike, weights: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of the mixture: ``var = E_s[sd^2] + Var_s[mu]``.

    Parameters
    ----------
    mu : array, shape (S, n)
        Component means, one row per draw.
    sd : array, shape (S, n) or broadcastable to it
        Component sds, > 0.
    weights : array, shape (S,), optional
        Non-negative draw weights (normalised here); equal by default.

    Returns
    -------
    mean, sd : array, shape (n,)

    Examples
    --------
    >>> m, s = mixture_moments([[-1.0], [1.0]], [[1.0], [1.0]])
    >>> float(m[0]), round(float(s[0] ** 2), 12)
    (0.0, 2.0)
    """
    mu, sd, w = _components(mu, sd, weights)
    mean = w @ mu
    var = w @ (sd * sd) + w @ ((mu - mean) ** 2)
    return mean, np.sqrt(var)


def mixture_nll_per_row(
    y: ArrayLike, mu: ArrayLike, sd: ArrayLike, weights: ArrayLike | None = None
) -> np.ndarray:
    """Negative log density of ``y`` under the mixture, one value per row.

    Computed as ``-logsumexp_s(log w_s + log N(y; mu_s, sd_s^2))``, which stays
    finite when every component density underflows.

    Parameters
    ----------
    y : array, shape (n,)
    mu : array, shape (S, n)
    sd : array, shape (S, n) or broadcastable to it
    weights : array, shape (S,), optional

    Returns
    -------
    array, shape (n,)
    """
    mu, sd, w = _components(mu, sd, weights)
    num_draws, n = mu.shape
    y = _row_target("y", y, n)
    out = np.empty(n)
    for rows in _row_blocks(n, CHUNK_CELLS // num_draws):
        z = (y[rows] - mu[:, rows]) / sd[:, rows]
        logpdf = -0.5 * z * z - np.log(sd[:, rows]) - 0.5 * _LOG_2PI
        out[rows] = -special.logsumexp(logpdf, axis=0, b=w[:, None])
    return out


def mixture_nll(y: ArrayLike, mu: ArrayLike, sd: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Mean over rows of :func:`mixture_nll_per_row`.

    Parameters
    ----------
    y : array, shape (n,)
    mu : array, shape (S, n)
    sd : array, shape (S, n) or broadcastable to it
    weights : array, shape (S,), optional

    Returns
    -------
    float

    Examples
    --------
    >>> round(mixture_nll([0.0], [[0.0]], [[1.0]]), 6)  # one component: Gaussian
    0.918939
    """
    return float(np.mean(mixture_nll_per_row(y, mu, sd, weights)))


def mixture_cdf(x: ArrayLike, mu: ArrayLike, sd: ArrayLike, weights: ArrayLike | None = None) -> np.ndarray:
    """Mixture cdf ``sum_s w_s Phi((x - mu_s) / sd_s)`` per row.

    Parameters
    ----------
    x : array, shape (n,) or scalar
    mu : array, shape (S, n)
    sd : array, shape (S, n) or broadcastable to it
    weights : array, shape (S,), optional

    Returns
    -------
    array, shape (n,)

    Examples
    --------
    >>> mixture_cdf(0.0, [[-1.0], [1.0]], [[1.0], [1.0]])
    array([0.5])
    """
    mu, sd, w = _components(mu, sd, weights)
    num_draws, n = mu.shape
    x = _row_target("x", x, n)
    out = np.empty(n)
    for rows in _row_blocks(n, CHUNK_CELLS // num_draws):
        out[rows] = w @ special.ndtr((x[rows] - mu[:, rows]) / sd[:, rows])
    return out


def mixture_quantile(
    prob: ArrayLike,
    mu: ArrayLike,
    sd: ArrayLike,
    weights: ArrayLike | None = None,
    tol: float = 1e-6,
) -> np.ndarray:
    """Mixture quantile per row by vectorised, Newton-accelerated bisection.

    Each row keeps a bracket ``[lo, hi]`` with ``F(lo) < prob <= F(hi)``,
    starting from ``[min_s(mu_s - 10 sd_s), max_s(mu_s + 10 sd_s)]``, and
    every evaluation of the mixture cdf ``F`` shrinks it. The next point is
    the Newton step ``x - (F(x) - prob) / f(x)`` when it falls inside the
    bracket and is at most half the previous step, otherwise the bracket's
    midpoint (the safeguard of Numerical Recipes' ``rtsafe``), starting from
    the quantile of the moment-matched Normal. A row stops when its bracket is
    narrower than ``tol`` or its accepted Newton step is below ``tol / 2``
    (then the error is of order ``step^2``); plain bisection would need
    ``log2(width / tol)``, about 25, cdf evaluations of all ``S`` components
    per row, this typically 3 to 6. Probabilities below ``Phi(-10)`` or above
    ``Phi(10)`` clamp to the bracket's ends.

    Parameters
    ----------
    prob : float or array, shape (n,)
        In (0, 1).
    mu : array, shape (S, n)
    sd : array, shape (S, n) or broadcastable to it
    weights : array, shape (S,), optional
    tol : float
        Absolute tolerance on the quantile, > 0.

    Returns
    -------
    array, shape (n,)

    Examples
    --------
    >>> q = mixture_quantile(0.975, [[0.0]], [[1.0]])
    >>> round(float(q[0]), 5)
    1.95996
    """
    mu, sd, w = _components(mu, sd, weights)
    num_draws, n = mu.shape
    p = np.broadcast_to(_prob(prob), (n,)) if np.ndim(prob) == 0 else _prob(prob)
    if p.shape != (n,):
        raise ValueError(f"mismatched shapes: prob {p.shape}, expected () or ({n},)")
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be > 0, got {tol}")
    out = np.empty(n)
    for rows in _row_blocks(n, CHUNK_CELLS // num_draws):
        out[rows] = _quantile_block(p[rows], mu[:, rows], sd[:, rows], w, tol)
    return out


def _quantile_block(p: np.ndarray, m: np.ndarray, s: np.ndarray, w: np.ndarray, tol: float) -> np.ndarray:
    """Safeguarded Newton on one block of rows; see :func:`mixture_quantile`."""
    lo = np.min(m - BRACKET_SDS * s, axis=0)
    hi = np.max(m + BRACKET_SDS * s, axis=0)
    mean = w @ m
    x = np.clip(mean + np.sqrt(w @ (s * s) + w @ (m - mean) ** 2) * special.ndtri(p), lo, hi)
    last_step = hi - lo
    # Bisection alone needs num_bisect steps; each Newton step that is not taken
    # is a bisection, so twice that (plus slack) always suffices.
    num_bisect = max(1, math.ceil(math.log2(max(np.max(hi - lo), tol) / tol)))
    out = np.empty_like(x)
    active = np.arange(x.size)
    for _ in range(2 * num_bisect + 4):
        z = (x - m) / s
        cdf = w @ special.ndtr(z)
        pdf = w @ (np.exp(-0.5 * z * z) / s) / math.sqrt(2.0 * math.pi)
        below = cdf < p
        lo = np.where(below, x, lo)
        hi = np.where(below, hi, x)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = x - (cdf - p) / pdf
        take = np.isfinite(newton) & (newton > lo) & (newton < hi) & (np.abs(newton - x) <= 0.5 * last_step)
        x_next = np.where(take, newton, 0.5 * (lo + hi))
        last_step = np.abs(x_next - x)
        done = (take & (last_step <= 0.5 * tol)) | (hi - lo <= tol)
        out[active[done]] = x_next[done]
        if np.all(done):
            return out
        if np.any(done):
            keep = ~done
            active, p, m, s = active[keep], p[keep], m[:, keep], s[:, keep]
            lo, hi, last_step, x_next = lo[keep], hi[keep], last_step[keep], x_next[keep]
        x = x_next
    out[active] = x
    return out


def mixture_interval(
    mu: ArrayLike, sd: ArrayLike, prob: float, weights: ArrayLike | None = None, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Central interval of probability ``prob`` of the mixture.

    The ``(1 - prob) / 2`` and ``(1 + prob) / 2`` quantiles from
    :func:`mixture_quantile`.

    Parameters
    ----------
    mu : array, shape (S, n)
    sd : array, shape (S, n) or broadcastable to it
    prob : float or array, shape (n,)
        In (0, 1).
    weights : array, shape (S,), optional
    tol : float

    Returns
    -------
    lower, upper : array, shape (n,)

    Examples
    --------
    >>> lo, hi = mixture_interval([[0.0]], [[1.0]], 0.95)
    >>> round(float(hi[0]), 5)
    1.95996
    """
    p = _prob(prob)
    return (
        mixture_quantile(0.5 - 0.5 * p, mu, sd, weights, tol),
        mixture_quantile(0.5 + 0.5 * p, mu, sd, weights, tol),
    )


def crps_mixture_per_row(
    y: ArrayLike,
    mu: ArrayLike,
    sd: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    max_pairs: int = MAX_PAIRS,
    seed: int | np.random.Generator = 0,
) -> np.ndarray:
    """CRPS of the Gaussian mixture at ``y``, one value per row.

    .. math::

        \\mathrm{CRPS}_i = \\sum_s w_s A(y_i - \\mu_{si}, \\sigma_{si})
          - \\tfrac12 \\sum_{s,t} w_s w_t
            A\\big(\\mu_{si} - \\mu_{ti}, \\sqrt{\\sigma_{si}^2 + \\sigma_{ti}^2}\\big)

    with ``A(m, s) = E|N(m, s^2)|``. The first sum is exact (``O(S n)``).
    The pairwise sum costs ``S^2 n`` evaluations: it is exact when
    ``S^2 n <= max_pairs``. Otherwise it is estimated from a random but
    fixed (by ``seed``) subset of ``K S`` pairs per row,
    ``K = max(1, max_pairs // (n S))``: the draws are put in one random order
    ``pi`` and row ``i`` takes ``K`` cyclic shifts ``k`` drawn uniformly from
    ``0..S-1``, independently of the other rows, each giving the ``S`` pairs
    ``(pi(j), pi(j + k mod S))``. Because every ordered pair occurs in
    exactly one shift, ``S sum_j w w' A`` over a uniform shift is an unbiased
    estimate of the pairwise sum, and so is the CRPS. Its standard error per
    row is about ``sd_pairs(A) / (2 sqrt(K S))``, and about ``1 / sqrt(n)`` of
    that for the mean over rows (shifts are independent across rows). An
    estimated row can fall slightly below zero; it is not clipped, which
    would bias the mean. Work is done in blocks of about ``CHUNK_CELLS``
    cells (rows, and draws), so memory stays bounded whatever ``S`` and ``n``.

    Parameters
    ----------
    y : array, shape (n,)
    mu : array, shape (S, n)
    sd : array, shape (S, n) or broadcastable to it
    weights : array, shape (S,), optional
    max_pairs : int
        Budget of (pair, row) evaluations of the pairwise term; above it the
        term is estimated (with at least ``S`` pairs per row).
    seed : int or numpy.random.Generator
        Seeds the pair subset (used only when the budget is exceeded), so the
        result is reproducible.

    Returns
    -------
    array, shape (n,)

    Examples
    --------
    >>> crps_mixture_per_row([0.0], [[0.0]], [[1.0]]).round(4)  # = crps_gaussian
    array([0.2337])
    """
    mu, sd, w = _components(mu, sd, weights)
    num_draws, n = mu.shape
    y = _row_target("y", y, n)
    if int(max_pairs) < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    first = np.empty(n)
    for rows in _row_blocks(n, CHUNK_CELLS // num_draws):
        first[rows] = w @ _abs_mean(y[rows] - mu[:, rows], sd[:, rows])
    if num_draws * num_draws * n <= max_pairs:
        pairs = _pair_term_exact(mu, sd, w)
    else:
        num_shifts = max(1, int(max_pairs) // (n * num_draws))
        pairs = _pair_term_sampled(mu, sd, w, num_shifts, np.random.default_rng(seed))
    return first - 0.5 * pairs


def _pair_term_exact(mu: np.ndarray, sd: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_{s,t} w_s w_t A(mu_s - mu_t, sqrt(sd_s^2 + sd_t^2))`` per row, shape (n,)."""
    num_draws, n = mu.shape
    var = sd * sd
    square = num_draws * num_draws
    rows_per_block = max(1, CHUNK_CELLS // square)
    draws_per_block = num_draws if square <= CHUNK_CELLS else max(1, CHUNK_CELLS // num_draws)
    out = np.zeros(n)
    for rows in _row_blocks(n, rows_per_block):
        m, v = mu[:, rows], var[:, rows]
        for block in _row_blocks(num_draws, draws_per_block):
            diff = m[block, None, :] - m[None, :, :]  # (block, S, rows)
            scale = np.sqrt(v[block, None, :] + v[None, :, :])
            out[rows] += np.einsum("s,t,stc->c", w[block], w, _abs_mean(diff, scale))
    return out


def _pair_term_sampled(
    mu: np.ndarray, sd: np.ndarray, w: np.ndarray, num_shifts: int, rng: np.random.Generator
) -> np.ndarray:
    """Unbiased estimate of :func:`_pair_term_exact` from ``num_shifts`` cyclic shifts per row.

    With the draws in a random order ``pi`` (one for all rows) the pairwise
    sum is ``sum_k a_k`` over shifts ``k = 0..S-1`` with
    ``a_k = sum_j w_pi(j) w_pi(j+k) A_pi(j),pi(j+k)`` (indices mod S), so
    ``S * a_k`` for a uniformly drawn ``k`` is unbiased; each row averages
    ``num_shifts`` independent such draws (``S`` pairs each). A shift reads
    contiguous memory, unlike independent random pairs.
    """
    num_draws, n = mu.shape
    order = rng.permutation(num_draws)
    uniform = bool(np.all(w == w[0]))
    w2 = np.concatenate([w[order], w[order]])
    base = np.arange(num_draws)
    out = np.empty(n)
    for rows in _row_blocks(n, CHUNK_CELLS // num_draws):
        m = np.ascontiguousarray(mu[order, rows].T)  # (rows, S)
        v = np.ascontiguousarray(sd[order, rows].T ** 2)
        m2, v2 = np.concatenate([m, m], axis=1), np.concatenate([v, v], axis=1)
        num_rows = m.shape[0]
        row = np.arange(num_rows)[:, None]
        total = np.zeros(num_rows)
        for _ in range(num_shifts):
            idx = rng.integers(num_draws, size=num_rows)[:, None] + base  # (rows, S)
            a = _abs_mean(m - m2[row, idx], np.sqrt(v + v2[row, idx]))
            if uniform:
                total += np.mean(a, axis=1)
            else:
                total += num_draws * np.sum(w2[:num_draws] * w2[idx] * a, axis=1)
        out[rows] = total / num_shifts
    return out


def crps_mixture(
    y: ArrayLike,
    mu: ArrayLike,
    sd: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    max_pairs: int = MAX_PAIRS,
    seed: int | np.random.Generator = 0,
) -> float:
    """Mean over rows of :func:`crps_mixture_per_row` (see there for the estimate).

    Parameters
    ----------
    y : array, shape (n,)
    mu : array, shape (S, n)
    sd : array, shape (S, n) or broadcastable to it
    weights : array, shape (S,), optional
    max_pairs : int
    seed : int or numpy.random.Generator

    Returns
    -------
    float

    Examples
    --------
    >>> round(crps_mixture([0.0], [[-1.0], [1.0]], [[0.5], [0.5]]), 4)
    0.3672
    """
    return float(np.mean(crps_mixture_per_row(y, mu, sd, weights, max_pairs=max_pairs, seed=seed)))


def crps_samples_per_row(y: ArrayLike, samples: ArrayLike, *, fair: bool = False) -> np.ndarray:
    """CRPS from predictive draws, energy form, one value per row.

    ``mean_s |x_s - y| - sum_{s,t} |x_s - x_t| / (2 D)`` with ``D = S^2``
    (the CRPS of the empirical distribution of the draws) or, with ``fair``,
    ``D = S (S - 1)`` (an unbiased estimate of the CRPS of the distribution
    the draws come from). The pairwise sum uses the sorted draws,
    ``sum_{s,t} |x_s - x_t| = 2 sum_i (2 i - S - 1) x_(i)``, so the cost is
    ``O(S log S n)``.

    Parameters
    ----------
    y : array, shape (n,)
    samples : array, shape (S, n)
        Draws from the predictive, one row per draw.
    fair : bool

    Returns
    -------
    array, shape (n,)

    Examples
    --------
    >>> crps_samples_per_row([0.0], [[-1.0], [1.0]])
    array([0.5])
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"samples must be 2-D (shape (num_draws, n)), got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"samples is empty (shape {x.shape})")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples contains non-finite values")
    num_draws, n = x.shape
    y = _row_target("y", y, n)
    if fair and num_draws < 2:
        raise ValueError("fair CRPS needs at least 2 draws")
    denom = num_draws * (num_draws - 1) if fair else num_draws * num_draws
    rank_coef = 2.0 * np.arange(1, num_draws + 1) - num_draws - 1.0  # (S,)
    out = np.empty(n)
    for rows in _row_blocks(n, CHUNK_CELLS // num_draws):
        xs = np.sort(x[:, rows], axis=0)
        pair_sum = 2.0 * (rank_coef @ xs)
        out[rows] = np.mean(np.abs(xs - y[rows]), axis=0) - pair_sum / (2.0 * denom)
    return out


def crps_samples(y: ArrayLike, samples: ArrayLike, *, fair: bool = False) -> float:
    """Mean over rows of :func:`crps_samples_per_row`; a reference for the closed forms.

    Parameters
    ----------
    y : array, shape (n,)
    samples : array, shape (S, n)
    fair : bool

    Returns
    -------
    float

    Examples
    --------
    >>> crps_samples([0.0], [[-1.0], [1.0]], fair=True)
    0.0
    """
    return float(np.mean(crps_samples_per_row(y, samples, fair=fair)))


# --------------------------------------------------------------------------
# breakdowns


def _edges(edges: Sequence[int]) -> np.ndarray:
    e = np.asarray(edges)
    if e.ndim != 1 or e.size == 0:
        raise ValueError(f"edges must be a non-empty 1-D sequence, got {edges!r}")
    if not np.issubdtype(e.dtype, np.integer):
        if not (np.issubdtype(e.dtype, np.floating) and np.all(np.isfinite(e)) and np.all(e == np.round(e))):
            raise ValueError(f"edges must be integers, got {edges!r}")
        e = e.astype(np.int64)
    if np.any(np.diff(e) <= 0):
        raise ValueError(f"edges must be strictly increasing, got {edges!r}")
    return e


def activity_labels(edges: Sequence[int] = DEFAULT_EDGES) -> list[str]:
    """The bucket labels of :func:`activity_bucket`, in increasing order.

    Parameters
    ----------
    edges : sequence of int, strictly increasing

    Returns
    -------
    list of str, length ``len(edges) + 1``

    Examples
    --------
    >>> activity_labels()
    ['<=20', '21-50', '51-100', '101-200', '>200']
    >>> activity_labels((1, 2))
    ['<=1', '2', '>2']
    """
    e = [int(v) for v in _edges(edges)]
    middle = [f"{lo + 1}" if lo + 1 == hi else f"{lo + 1}-{hi}" for lo, hi in zip(e[:-1], e[1:])]
    return [f"<={e[0]}", *middle, f">{e[-1]}"]


def activity_bucket(counts: ArrayLike, edges: Sequence[int] = DEFAULT_EDGES) -> np.ndarray:
    """Label each count by the bucket of ``edges`` it falls in.

    Buckets are ``<= e0``, ``e0+1 - e1``, ..., ``> e_last`` (upper ends
    included), labelled as by :func:`activity_labels`.

    Parameters
    ----------
    counts : int array, shape (n,)
        E.g. the number of training ratings of each test row's user.
    edges : sequence of int, strictly increasing

    Returns
    -------
    str array, shape (n,)

    Examples
    --------
    >>> activity_bucket([0, 20, 21, 200, 201]).tolist()
    ['<=20', '<=20', '21-50', '101-200', '>200']
    """
    labels = np.asarray(activity_labels(edges))
    c = np.asarray(counts)
    if c.ndim != 1:
        raise ValueError(f"counts must be 1-D (shape (n,)), got shape {c.shape}")
    if c.size == 0:
        raise ValueError("counts is empty")
    if not np.issubdtype(c.dtype, np.integer):
        if not (np.issubdtype(c.dtype, np.number) and np.all(np.isfinite(c)) and np.all(c == np.round(c))):
            raise ValueError("counts must be integers")
    return labels[np.searchsorted(_edges(edges), c, side="left")]


def score_rows(
    y: ArrayLike,
    mean: ArrayLike | None,
    sd: ArrayLike | None,
    *,
    mu: ArrayLike | None = None,
    sds: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    levels: Sequence[float] = DEFAULT_LEVELS,
    max_pairs: int = MAX_PAIRS,
    seed: int | np.random.Generator = 0,
) -> dict[str, np.ndarray]:
    """Per-row scores whose means over rows are the metrics of :func:`summarize`.

    Scoring once per row and averaging within groups (:func:`aggregate_rows`,
    :func:`group_rows`) costs one pass over the predictive however many
    breakdowns are reported; the mixture quantiles and the pairwise CRPS
    term dominate that pass.

    Parameters
    ----------
    y, mean, sd, mu, sds, weights, levels, max_pairs, seed
        As in :func:`summarize`.

    Returns
    -------
    dict of str to array, shape (n,)
        ``squared_error`` and ``absolute_error`` (of ``mean``), ``nll``,
        ``crps``, and per level ``p`` ``covered_<100p>`` (1.0 inside the
        central interval, else 0.0) and ``width_<100p>``.

    Examples
    --------
    >>> rows = score_rows([0.0, 2.0], [0.0, 0.0], 1.0, levels=(0.9,))
    >>> rows["covered_90"].tolist()
    [1.0, 0.0]
    """
    if (mu is None) != (sds is None):
        raise ValueError("give both mu and sds (the mixture components) or neither")
    if weights is not None and mu is None:
        raise ValueError("weights need the mixture components mu and sds")
    levels = [float(p) for p in np.atleast_1d(_prob(levels, "levels"))]
    y = _vector("y", y)
    if mu is not None:
        mu, sds, weights = _components(mu, sds, weights)
        if mu.shape[1] != y.shape[0]:
            raise ValueError(f"mismatched shapes: y {y.shape}, mu {mu.shape}")
        if mean is None or sd is None:
            mix_mean, mix_sd = mixture_moments(mu, sds, weights)
            mean = mix_mean if mean is None else mean
            sd = mix_sd if sd is None else sd
    elif mean is None or sd is None:
        raise ValueError("mean and sd are required without the mixture components mu and sds")
    y, mean, sd = _gaussian(y, mean, sd)

    error = y - mean
    rows = dict(squared_error=error * error, absolute_error=np.abs(error))
    if mu is None:
        rows.update(nll=gaussian_nll_per_row(y, mean, sd), crps=crps_gaussian_per_row(y, mean, sd))
    else:
        rows.update(
            nll=mixture_nll_per_row(y, mu, sds, weights),
            crps=crps_mixture_per_row(y, mu, sds, weights, max_pairs=max_pairs, seed=seed),
        )
    for p in levels:
        lower, upper = gaussian_interval(mean, sd, p) if mu is None else mixture_interval(mu, sds, p, weights)
        tag = f"{100 * p:g}"
        rows[f"covered_{tag}"] = ((lower <= y) & (y <= upper)).astype(np.float64)
        rows[f"width_{tag}"] = upper - lower
    return rows


def aggregate_rows(rows: dict[str, np.ndarray], index: np.ndarray | None = None) -> dict[str, float]:
    """The metrics of :func:`summarize` from :func:`score_rows` output.

    Parameters
    ----------
    rows : dict of str to array, shape (n,)
    index : int array, optional
        The rows to aggregate (default all); must be non-empty.

    Returns
    -------
    dict of str to float
        ``rmse`` (root of the mean squared error), ``mae``, ``nll``, ``crps``,
        ``coverage_<100p>`` and ``width_<100p>`` (means over the rows).
    """
    def mean(name):
        values = rows[name] if index is None else rows[name][index]
        if values.size == 0:
            raise ValueError("no rows to aggregate")
        return float(np.mean(values))

    out = dict(rmse=math.sqrt(mean("squared_error")), mae=mean("absolute_error"), nll=mean("nll"), crps=mean("crps"))
    for name in rows:
        if name.startswith("covered_"):
            tag = name[len("covered_"):]
            out[f"coverage_{tag}"] = mean(name)
            out[f"width_{tag}"] = mean(f"width_{tag}")
    return out


def summarize(
    y: ArrayLike,
    mean: ArrayLike | None,
    sd: ArrayLike | None,
    *,
    mu: ArrayLike | None = None,
    sds: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    levels: Sequence[float] = DEFAULT_LEVELS,
    max_pairs: int = MAX_PAIRS,
    seed: int | np.random.Generator = 0,
) -> dict[str, float]:
    """Point, probabilistic and interval scores of a predictive in one dict.

    Keys: ``rmse``, ``mae``, ``nll``, ``crps``, and for each level ``p``
    ``coverage_<100p>`` and ``width_<100p>`` (mean interval width), e.g.
    ``coverage_90``. With the per-draw components ``mu`` and ``sds`` the
    NLL, CRPS and intervals are those of the mixture; otherwise those of
    ``N(mean, sd^2)``. RMSE and MAE always score ``mean``.

    Parameters
    ----------
    y : array, shape (n,)
    mean : array, shape (n,), or None
        Predictive mean; None computes it from the components.
    sd : array, shape (n,) or scalar, or None
        Predictive sd; None computes it from the components.
    mu : array, shape (S, n), optional
        Component means.
    sds : array, shape (S, n) or broadcastable to it, optional
        Component sds (given with ``mu``).
    weights : array, shape (S,), optional
        Draw weights (only with ``mu``).
    levels : sequence of float
        Central-interval probabilities, in (0, 1).
    max_pairs, seed
        Passed to :func:`crps_mixture`.

    Returns
    -------
    dict of str to float

    Examples
    --------
    >>> out = summarize([0.0, 1.0], [0.0, 0.0], [1.0, 1.0], levels=(0.9,))
    >>> sorted(out)
    ['coverage_90', 'crps', 'mae', 'nll', 'rmse', 'width_90']
    """
    return aggregate_rows(
        score_rows(y, mean, sd, mu=mu, sds=sds, weights=weights, levels=levels, max_pairs=max_pairs, seed=seed)
    )


_BUCKET_LABEL = re.compile(r"^(?:<=(\d+)|(\d+)(?:-\d+)?|>(\d+))$")


def _label_key(label) -> tuple:
    """Sort key: activity-bucket labels by their range, then others as strings."""
    match = _BUCKET_LABEL.match(str(label))
    if match is None:
        return (1, 0.0, str(label))
    at_most, start, above = match.groups()
    if at_most is not None:
        return (0, float(at_most) - 0.5, "")
    if start is not None:
        return (0, float(start), "")
    return (0, float(above) + 0.5, "")


def summarize_by(
    groups: ArrayLike,
    y: ArrayLike,
    mean: ArrayLike | None,
    sd: ArrayLike | None,
    *,
    order: Sequence | None = None,
    mu: ArrayLike | None = None,
    sds: ArrayLike | None = None,
    **kw,
) -> pd.DataFrame:
    """:func:`summarize` within each group of rows.

    The rows are scored once (:func:`score_rows`) and the scores averaged per
    group. Every score but the sampled pairwise CRPS term is a per-row
    quantity, so a group's entry equals :func:`summarize` on its rows alone;
    when the CRPS pair term is estimated (``S^2 n > max_pairs``) its pair
    budget is that of all ``n`` rows, which leaves each row's estimate
    unbiased.

    Parameters
    ----------
    groups : array, shape (n,)
        A label per row, e.g. from :func:`activity_bucket`.
    y : array, shape (n,)
    mean : array, shape (n,), or None
    sd : array, shape (n,) or scalar, or None
    order : sequence, optional
        The groups to report, in order; a label in ``groups`` missing from it
        raises. A listed label with no rows gets ``count`` 0 and NaN scores.
        By default: the categories of a categorical ``groups``, else the
        labels present, activity-bucket labels by range and others sorted
        as strings.
    mu : array, shape (S, n), optional
    sds : array, shape (S, n) or broadcastable to it, optional
    **kw
        Passed to :func:`score_rows` (``weights``, ``levels``, ``max_pairs``,
        ``seed``).

    Returns
    -------
    pandas.DataFrame
        Indexed by group label (index name ``group``); columns ``count``
        then the keys of :func:`summarize`.

    Examples
    --------
    >>> table = summarize_by(["a", "b", "a"], [0.0, 1.0, 2.0], [0.0, 1.0, 1.0], 1.0, levels=(0.5,))
    >>> table["count"].tolist()
    [2, 1]
    """
    return group_rows(groups, score_rows(y, mean, sd, mu=mu, sds=sds, **kw), order=order)


def group_rows(groups: ArrayLike, rows: dict[str, np.ndarray], *, order: Sequence | None = None) -> pd.DataFrame:
    """:func:`aggregate_rows` within each group: the table of :func:`summarize_by`.

    Parameters
    ----------
    groups : array, shape (n,)
        A label per row.
    rows : dict of str to array, shape (n,)
        From :func:`score_rows`.
    order : sequence, optional
        As in :func:`summarize_by`.

    Returns
    -------
    pandas.DataFrame
    """
    n = len(next(iter(rows.values())))
    if np.ndim(groups) != 1 or len(groups) != n:
        raise ValueError(f"mismatched shapes: groups {np.shape(groups)}, y ({n},)")
    g = groups if isinstance(groups, (pd.Series, pd.Categorical)) else np.asarray(groups)
    if order is None:
        if isinstance(g, pd.Categorical) or isinstance(getattr(g, "dtype", None), pd.CategoricalDtype):
            order = list(pd.Categorical(g).categories)
        else:
            order = sorted(pd.unique(pd.Series(g)), key=_label_key)
    order = list(order)
    codes = pd.Index(order).get_indexer(pd.Series(np.asarray(g, dtype=object)))
    if np.any(codes < 0):
        missing = sorted({str(v) for v in np.asarray(g)[codes < 0]})
        raise ValueError(f"groups has labels not in order: {missing}")
    result_rows = []
    columns = None
    for j, label in enumerate(order):
        idx = np.flatnonzero(codes == j)
        if idx.size == 0:
            result_rows.append((label, {"count": 0}))
            continue
        row = aggregate_rows(rows, idx)
        columns = columns or ["count", *row]
        result_rows.append((label, {"count": int(idx.size), **row}))
    table = pd.DataFrame([r for _, r in result_rows], index=pd.Index([lbl for lbl, _ in result_rows], name="group"))
    if columns is not None:
        table = table.reindex(columns=columns)
    table["count"] = table["count"].astype(np.int64)
    return table


# --------------------------------------------------------------------------
# ranking


def _hit_matrix(recommended, relevant, k) -> tuple[np.ndarray, np.ndarray]:
    """Hits of each user's top-k, shape (U, k), and the number of relevant items, shape (U,)."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    num_users = len(recommended)
    if num_users == 0:
        raise ValueError("recommended is empty (no users)")
    if len(relevant) != num_users:
        raise ValueError(f"mismatched lengths: recommended has {num_users} users, relevant {len(relevant)}")

    rec_arr = recommended if isinstance(recommended, np.ndarray) and recommended.ndim == 2 else None
    if rec_arr is not None:
        rec_len = np.full(num_users, rec_arr.shape[1])
        rec_flat = rec_arr.ravel()
    else:
        rec_len = np.fromiter(map(len, recommended), dtype=np.int64, count=num_users)
        rec_flat = np.fromiter(itertools.chain.from_iterable(recommended), dtype=object, count=int(rec_len.sum()))
    rel_len = np.fromiter(map(len, relevant), dtype=np.int64, count=num_users)
    rel_flat = np.fromiter(itertools.chain.from_iterable(relevant), dtype=object, count=int(rel_len.sum()))

    rec_user = np.repeat(np.arange(num_users), rec_len)
    rec_rank = np.arange(rec_user.size) - np.repeat(np.cumsum(rec_len) - rec_len, rec_len)
    keep = rec_rank < k
    rec_user, rec_rank = rec_user[keep], rec_rank[keep]
    rel_user = np.repeat(np.arange(num_users), rel_len)

    codes, uniques = pd.factorize(np.concatenate([np.asarray(rec_flat, dtype=object)[keep], rel_flat]))
    num_codes = max(1, len(uniques))
    rec_key = rec_user * num_codes + codes[: rec_user.size]
    rel_key = np.unique(rel_user * num_codes + codes[rec_user.size :])
    if np.unique(rec_key).size != rec_key.size:
        raise ValueError("recommended has a duplicate item in some user's top k")

    hits = np.zeros((num_users, k), dtype=bool)
    hits[rec_user, rec_rank] = np.isin(rec_key, rel_key)
    num_relevant = np.bincount(rel_key // num_codes, minlength=num_users)
    return hits, num_relevant


def _finish(per_user: np.ndarray, num_relevant: np.ndarray, want_per_user: bool):
    per_user = np.where(num_relevant > 0, per_user, np.nan)
    if want_per_user:
        return per_user
    scored = num_relevant > 0
    return float(np.mean(per_user[scored])) if np.any(scored) else float("nan")


_RANKING_DOC = """
    Users without any relevant item are left out of the mean (their
    per-user value is NaN); if no user has one the mean is NaN. Items past
    rank ``k`` are ignored; a list shorter than ``k`` counts its missing
    ranks as misses. Relevance is binary.

    Parameters
    ----------
    recommended : sequence of sequences, or array of shape (U, m)
        Ranked item ids per user, best first (any hashable ids).
    relevant : sequence of sets, length U
        The relevant (e.g. held-out, liked) item ids per user.
    k : int
        Cut-off, > 0.
    per_user : bool
        Return the per-user values instead of their mean.

    Returns
    -------
    float, or array of shape (U,) with ``per_user``
"""


def precision_at_k(recommended, relevant, k: int, *, per_user: bool = False):
    hits, num_relevant = _hit_matrix(recommended, relevant, k)
    return _finish(hits.sum(1) / k, num_relevant, per_user)


def recall_at_k(recommended, relevant, k: int, *, per_user: bool = False):
    hits, num_relevant = _hit_matrix(recommended, relevant, k)
    return _finish(hits.sum(1) / np.maximum(num_relevant, 1), num_relevant, per_user)


def ndcg_at_k(recommended, relevant, k: int, *, per_user: bool = False):
    hits, num_relevant = _hit_matrix(recommended, relevant, k)
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    ideal = np.cumsum(discount)[np.clip(num_relevant, 1, k) - 1]
    return _finish((hits @ discount) / ideal, num_relevant, per_user)


precision_at_k.__doc__ = (
    """Precision at k: the fraction of the top ``k`` that is relevant (divided by ``k``).
"""
    + _RANKING_DOC
    + """
    Examples
    --------
    >>> precision_at_k([[1, 2, 3], [4, 5]], [{1, 3}, {9}], 2)
    0.25
"""
)
recall_at_k.__doc__ = (
    """Recall at k: the fraction of a user's relevant items found in the top ``k``.
"""
    + _RANKING_DOC
    + """
    Examples
    --------
    >>> recall_at_k([[1, 2, 3], [4, 5]], [{1, 3}, {9}], 2)
    0.25
"""
)
ndcg_at_k.__doc__ = (
    """Normalised discounted cumulative gain at k, binary relevance.

    ``DCG = sum_{r < k} hit_r / log2(r + 2)`` over ranks ``r = 0, 1, ...``,
    divided by the DCG of a perfect list (``min(k, |relevant|)`` hits first).
"""
    + _RANKING_DOC
    + """
    Examples
    --------
    >>> ndcg_at_k([[1, 2, 3]], [{1, 2}], 3)
    1.0
"""
)
