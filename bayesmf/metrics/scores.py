"""Scores of a predictive distribution of ratings: point, Gaussian and Gaussian mixture.

Plain NumPy (and ``scipy.special``) array functions; nothing here draws from
a model, uses pandas or loops over rows in Python (work is done in blocks of
rows to bound memory). Every function validates its input and raises
``ValueError`` naming the problem (mismatched shapes, empty arrays,
``sd <= 0`` or non-finite values, a probability outside ``(0, 1)``).

One convention serves the Gaussian and the mixture: ``mu`` of shape ``(n,)``
is a Gaussian ``N(mu_i, sd_i^2)`` per row, and ``mu`` of shape ``(S, n)`` a
mixture of ``S`` components (one row of ``mu`` per component, e.g. per
posterior draw),

.. math::

    p(y_i) = \\sum_s w_s\\, \\mathcal N(y_i;\\ \\mu_{si},\\ \\sigma^2_{si}),
    \\qquad \\sum_s w_s = 1,

with ``sd`` broadcastable to the shape of ``mu`` and optional ``weights`` of
shape ``(S,)`` (normalised here; equal by default). A Gaussian is the
one-component mixture, and every function takes a closed-form fast path
when there is one component (``mu`` 1-D, or ``S = 1``).

CRPS uses the energy form ``CRPS(F, y) = E|X - y| - E|X - X'| / 2`` with
``X, X' ~ F`` independent, and for Normals the closed form of the mean
absolute value,

.. math::

    A(m, s) = E|N(m, s^2)| = m\\,(2\\Phi(m/s) - 1) + 2 s\\, \\varphi(m/s).

:func:`bayesmf.metrics.score_rows` applies them all in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

# Largest block of float64 cells (components x rows, or component pairs x
# rows) computed at once: 2**18 cells is 2 MiB per temporary, a few
# temporaries per block (measured faster than 8 MiB blocks, which spill the
# CPU cache).
CHUNK_CELLS = 2**18

# Default budget of (component pair, row) evaluations of the pairwise CRPS
# term. Above it the pairwise term is estimated from a random subset of pairs;
# one evaluation costs ~50 ns (scipy.special.erf dominates), so 1e7 take ~0.5 s.
MAX_PAIRS = 10_000_000

# Bisection bracket of the mixture quantile: min / max over components of
# mu -/+ BRACKET_SDS * sd. The mixture cdf at the lower end is below
# Phi(-10) ~ 8e-24.
BRACKET_SDS = 10.0

# Default absolute tolerance of the mixture quantile.
QUANTILE_TOL = 1e-6

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


def _components(
    mu: ArrayLike, sd: ArrayLike, weights: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated components: mu, sd of shape (S, n) (S = 1 for a 1-D mu) and weights (S,) summing to 1."""
    m = np.asarray(mu, dtype=np.float64)
    if m.ndim not in (1, 2):
        raise ValueError(f"mu must be 1-D (shape (n,)) or 2-D (shape (S, n)), got shape {m.shape}")
    if m.size == 0:
        raise ValueError(f"mu is empty (shape {m.shape})")
    if not np.all(np.isfinite(m)):
        raise ValueError("mu contains non-finite values")
    s = _sd("sd", sd, m.shape)
    if m.ndim == 1:
        m, s = m[None], s[None]
    num_components = m.shape[0]
    if weights is None:
        w = np.full(num_components, 1.0 / num_components)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (num_components,):
            raise ValueError(
                f"mismatched shapes: weights {w.shape}, expected ({num_components},) (one per row of mu)"
            )
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


def _row_probs(prob: ArrayLike, n: int) -> np.ndarray:
    """Probabilities in (0, 1), shape () or (n,) (a scalar stays a scalar)."""
    p = _prob(prob)
    if p.ndim != 0 and p.shape != (n,):
        raise ValueError(f"mismatched shapes: prob {p.shape}, expected () or ({n},)")
    return p


def _tol(tol: float) -> float:
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be > 0, got {tol}")
    return float(tol)


def _max_pairs(max_pairs: int) -> int:
    if int(max_pairs) < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    return int(max_pairs)


def _row_blocks(n: int, rows: int) -> Iterator[slice]:
    rows = max(1, int(rows))
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def _abs_mean(m: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``A(m, s) = E|N(m, s^2)|``, elementwise."""
    z = m / s
    return m * special.erf(z / math.sqrt(2.0)) + 2.0 * s * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


# --------------------------------------------------------------------------
# point scores


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


# --------------------------------------------------------------------------
# the predictive distribution: moments, cdf, quantiles, intervals


def moments(mu: ArrayLike, sd: ArrayLike, weights: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of the predictive: ``var = E_s[sd^2] + Var_s[mu]``.

    Parameters
    ----------
    mu : array, shape (n,) or (S, n)
        Gaussian means, or component means with one row per component.
    sd : array, broadcastable to the shape of ``mu``
        Gaussian / component sds, > 0.
    weights : array, shape (S,), optional
        Non-negative component weights (normalised here); equal by default.

    Returns
    -------
    mean, sd : array, shape (n,)

    Examples
    --------
    >>> m, s = moments([[-1.0], [1.0]], [[1.0], [1.0]])
    >>> float(m[0]), round(float(s[0] ** 2), 12)
    (0.0, 2.0)
    """
    mu, sd, w = _components(mu, sd, weights)
    return _moments(mu, sd, w)


def _moments(mu: np.ndarray, sd: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if mu.shape[0] == 1:
        return mu[0].copy(), sd[0].copy()
    mean = w @ mu
    var = w @ (sd * sd) + w @ ((mu - mean) ** 2)
    return mean, np.sqrt(var)


def cdf(x: ArrayLike, mu: ArrayLike, sd: ArrayLike, weights: ArrayLike | None = None) -> np.ndarray:
    """Predictive cdf ``sum_s w_s Phi((x - mu_s) / sd_s)`` per row.

    Parameters
    ----------
    x : array, shape (n,) or scalar
    mu : array, shape (n,) or (S, n)
    sd : array, broadcastable to the shape of ``mu``
    weights : array, shape (S,), optional

    Returns
    -------
    array, shape (n,)

    Examples
    --------
    >>> cdf(0.0, [[-1.0], [1.0]], [[1.0], [1.0]])
    array([0.5])
    """
    mu, sd, w = _components(mu, sd, weights)
    x = _row_target("x", x, mu.shape[1])
    return _cdf(x, mu, sd, w)


def _cdf(x: np.ndarray, mu: np.ndarray, sd: np.ndarray, w: np.ndarray) -> np.ndarray:
    num_components, n = mu.shape
    if num_components == 1:
        return special.ndtr((x - mu[0]) / sd[0])
    out = np.empty(n)
    for rows in _row_blocks(n, CHUNK_CELLS // num_components):
        out[rows] = w @ special.ndtr((x[rows] - mu[:, rows]) / sd[:, rows])
    return out


def quantile(
    prob: ArrayLike,
    mu: ArrayLike,
    sd: ArrayLike,
    weights: ArrayLike | None = None,
    tol: float = QUANTILE_TOL,
) -> np.ndarray:
    """Predictive quantile per row.

    A Gaussian (one component) has the closed form ``mu + sd Phi^{-1}(prob)``.
    A mixture is inverted by vectorised, Newton-accelerated bisection: each
    row keeps a bracket ``[lo, hi]`` with ``F(lo) < prob <= F(hi)``, starting
    from ``[min_s(mu_s - 10 sd_s), max_s(mu_s + 10 sd_s)]``, and every
    evaluation of the mixture cdf ``F`` shrinks it. The next point is the
    Newton step ``x - (F(x) - prob) / f(x)`` when it falls inside the bracket
    and is at most half the previous step, otherwise the bracket's midpoint
    (the safeguard of Numerical Recipes' ``rtsafe``), starting from the
    quantile of the moment-matched Normal. A row stops when its bracket is
    narrower than ``tol`` or its accepted Newton step is below ``tol / 2``
    (then the error is of order ``step^2``); plain bisection would need
    ``log2(width / tol)``, about 25, cdf evaluations of all ``S`` components
    per row, this typically 3 to 6. Probabilities below ``Phi(-10)`` or above
    ``Phi(10)`` clamp to the bracket's ends.

    Parameters
    ----------
    prob : float or array, shape (n,)
        In (0, 1).
    mu : array, shape (n,) or (S, n)
    sd : array, broadcastable to the shape of ``mu``
    weights : array, shape (S,), optional
    tol : float
        Absolute tolerance on a mixture quantile, > 0.

    Returns
    -------
    array, shape (n,)

    Examples
    --------
    >>> q = quantile(0.975, [[-1.0], [1.0]], [[1.0], [1.0]])
    >>> round(float(q[0]), 5)
    2.64615
    >>> round(float(quantile(0.975, [0.0], [1.0])[0]), 5)
    1.95996
    """
    mu, sd, w = _components(mu, sd, weights)
    p = _row_probs(prob, mu.shape[1])
    return _quantile(p, mu, sd, w, _tol(tol))


def _quantile(p: np.ndarray, mu: np.ndarray, sd: np.ndarray, w: np.ndarray, tol: float) -> np.ndarray:
    num_components, n = mu.shape
    if num_components == 1:
        return mu[0] + sd[0] * special.ndtri(p)
    p = np.broadcast_to(p, (n,))
    out = np.empty(n)
    for rows in _row_blocks(n, CHUNK_CELLS // num_components):
        out[rows] = _quantile_block(p[rows], mu[:, rows], sd[:, rows], w, tol)
    return out


def _quantile_block(p: np.ndarray, m: np.ndarray, s: np.ndarray, w: np.ndarray, tol: float) -> np.ndarray:
    """Safeguarded Newton on one block of rows; see :func:`quantile`."""
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
        cdf_x = w @ special.ndtr(z)
        pdf_x = w @ (np.exp(-0.5 * z * z) / s) / math.sqrt(2.0 * math.pi)
        below = cdf_x < p
        lo = np.where(below, x, lo)
        hi = np.where(below, hi, x)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = x - (cdf_x - p) / pdf_x
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


def interval(
    mu: ArrayLike,
    sd: ArrayLike,
    prob: ArrayLike,
    weights: ArrayLike | None = None,
    tol: float = QUANTILE_TOL,
) -> tuple[np.ndarray, np.ndarray]:
    """Central interval of probability ``prob`` of the predictive.

    The ``(1 - prob) / 2`` and ``(1 + prob) / 2`` quantiles
    (:func:`quantile`); for a Gaussian ``mu -/+ z sd`` with
    ``z = Phi^{-1}((1 + prob) / 2)``.

    Parameters
    ----------
    mu : array, shape (n,) or (S, n)
    sd : array, broadcastable to the shape of ``mu``
    prob : float or array, shape (n,)
        In (0, 1).
    weights : array, shape (S,), optional
    tol : float
        As in :func:`quantile` (mixtures only).

    Returns
    -------
    lower, upper : array, shape (n,)

    Examples
    --------
    >>> lo, hi = interval([0.0], [1.0], 0.95)
    >>> round(float(hi[0]), 4)
    1.96
    """
    mu, sd, w = _components(mu, sd, weights)
    return _interval(_row_probs(prob, mu.shape[1]), mu, sd, w, _tol(tol))


def _interval(
    p: np.ndarray, mu: np.ndarray, sd: np.ndarray, w: np.ndarray, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Central intervals for validated ``p`` of shape () or (n,); see :func:`interval`."""
    if mu.shape[0] == 1:
        z = special.ndtri(0.5 + 0.5 * p)
        return mu[0] - z * sd[0], mu[0] + z * sd[0]
    return _quantile(0.5 - 0.5 * p, mu, sd, w, tol), _quantile(0.5 + 0.5 * p, mu, sd, w, tol)


# --------------------------------------------------------------------------
# proper scores: negative log density and CRPS


def nll_per_row(y: ArrayLike, mu: ArrayLike, sd: ArrayLike, weights: ArrayLike | None = None) -> np.ndarray:
    """Negative log predictive density of ``y``, one value per row.

    A mixture is computed as ``-logsumexp_s(log w_s + log N(y; mu_s, sd_s^2))``,
    which stays finite when every component density underflows.

    Parameters
    ----------
    y : array, shape (n,)
    mu : array, shape (n,) or (S, n)
    sd : array, broadcastable to the shape of ``mu``
    weights : array, shape (S,), optional

    Returns
    -------
    array, shape (n,)
    """
    mu, sd, w = _components(mu, sd, weights)
    y = _row_target("y", y, mu.shape[1])
    return _nll(y, mu, sd, w)


def _nll(y: np.ndarray, mu: np.ndarray, sd: np.ndarray, w: np.ndarray) -> np.ndarray:
    num_components, n = mu.shape
    if num_components == 1:
        z = (y - mu[0]) / sd[0]
        return 0.5 * _LOG_2PI + np.log(sd[0]) + 0.5 * z * z
    out = np.empty(n)
    for rows in _row_blocks(n, CHUNK_CELLS // num_components):
        z = (y[rows] - mu[:, rows]) / sd[:, rows]
        logpdf = -0.5 * z * z - np.log(sd[:, rows]) - 0.5 * _LOG_2PI
        out[rows] = -special.logsumexp(logpdf, axis=0, b=w[:, None])
    return out


def nll(y: ArrayLike, mu: ArrayLike, sd: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Mean over rows of :func:`nll_per_row` (per rating).

    Parameters
    ----------
    y : array, shape (n,)
    mu : array, shape (n,) or (S, n)
    sd : array, broadcastable to the shape of ``mu``
    weights : array, shape (S,), optional

    Returns
    -------
    float

    Examples
    --------
    >>> round(nll([0.0], [0.0], [1.0]), 6)  # log(2 pi) / 2
    0.918939
    """
    return float(np.mean(nll_per_row(y, mu, sd, weights)))


def crps_per_row(
    y: ArrayLike,
    mu: ArrayLike,
    sd: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    max_pairs: int = MAX_PAIRS,
    seed: int | np.random.Generator = 0,
) -> np.ndarray:
    """Continuous ranked probability score of the predictive at ``y``, one value per row.

    A Gaussian has the closed form

    .. math::

        \\mathrm{CRPS} = \\sigma\\,\\big(z\\,(2\\Phi(z) - 1) + 2\\varphi(z) - 1/\\sqrt\\pi\\big),
        \\qquad z = (y - \\mu) / \\sigma,

    and a mixture

    .. math::

        \\mathrm{CRPS}_i = \\sum_s w_s A(y_i - \\mu_{si}, \\sigma_{si})
          - \\tfrac12 \\sum_{s,t} w_s w_t
            A\\big(\\mu_{si} - \\mu_{ti}, \\sqrt{\\sigma_{si}^2 + \\sigma_{ti}^2}\\big)

    with ``A(m, s) = E|N(m, s^2)|``. The first sum is exact (``O(S n)``).
    The pairwise sum costs ``S^2 n`` evaluations: it is exact when
    ``S^2 n <= max_pairs``. Otherwise it is estimated from a random but
    fixed (by ``seed``) subset of ``K S`` pairs per row,
    ``K = max(1, max_pairs // (n S))``: the components are put in one random
    order ``pi`` and row ``i`` takes ``K`` cyclic shifts ``k`` drawn uniformly
    from ``0..S-1``, independently of the other rows, each giving the ``S``
    pairs ``(pi(j), pi(j + k mod S))``. Because every ordered pair occurs in
    exactly one shift, ``S sum_j w w' A`` over a uniform shift is an unbiased
    estimate of the pairwise sum, and so is the CRPS. Its standard error per
    row is about ``sd_pairs(A) / (2 sqrt(K S))``, and about ``1 / sqrt(n)`` of
    that for the mean over rows (shifts are independent across rows). An
    estimated row can fall slightly below zero; it is not clipped, which
    would bias the mean. Work is done in blocks of about ``CHUNK_CELLS``
    cells (rows, and components), so memory stays bounded whatever ``S`` and
    ``n``.

    Parameters
    ----------
    y : array, shape (n,)
    mu : array, shape (n,) or (S, n)
    sd : array, broadcastable to the shape of ``mu``
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
    >>> crps_per_row([0.0], [0.0], [1.0]).round(4)
    array([0.2337])
    >>> crps_per_row([0.0], [[-1.0], [1.0]], [[0.5], [0.5]]).round(4)
    array([0.3672])
    """
    mu, sd, w = _components(mu, sd, weights)
    y = _row_target("y", y, mu.shape[1])
    return _crps(y, mu, sd, w, _max_pairs(max_pairs), seed)


def _crps(
    y: np.ndarray, mu: np.ndarray, sd: np.ndarray, w: np.ndarray, max_pairs: int, seed: int | np.random.Generator
) -> np.ndarray:
    num_components, n = mu.shape
    if num_components == 1:
        return _abs_mean(y - mu[0], sd[0]) - sd[0] * _INV_SQRT_PI
    first = np.empty(n)
    for rows in _row_blocks(n, CHUNK_CELLS // num_components):
        first[rows] = w @ _abs_mean(y[rows] - mu[:, rows], sd[:, rows])
    if num_components * num_components * n <= max_pairs:
        pairs = _pair_term_exact(mu, sd, w)
    else:
        num_shifts = max(1, max_pairs // (n * num_components))
        pairs = _pair_term_sampled(mu, sd, w, num_shifts, np.random.default_rng(seed))
    return first - 0.5 * pairs


def _pair_term_exact(mu: np.ndarray, sd: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_{s,t} w_s w_t A(mu_s - mu_t, sqrt(sd_s^2 + sd_t^2))`` per row, shape (n,)."""
    num_components, n = mu.shape
    var = sd * sd
    square = num_components * num_components
    rows_per_block = max(1, CHUNK_CELLS // square)
    components_per_block = num_components if square <= CHUNK_CELLS else max(1, CHUNK_CELLS // num_components)
    out = np.zeros(n)
    for rows in _row_blocks(n, rows_per_block):
        m, v = mu[:, rows], var[:, rows]
        for block in _row_blocks(num_components, components_per_block):
            diff = m[block, None, :] - m[None, :, :]  # (block, S, rows)
            scale = np.sqrt(v[block, None, :] + v[None, :, :])
            out[rows] += np.einsum("s,t,stc->c", w[block], w, _abs_mean(diff, scale))
    return out


def _pair_term_sampled(
    mu: np.ndarray, sd: np.ndarray, w: np.ndarray, num_shifts: int, rng: np.random.Generator
) -> np.ndarray:
    """Unbiased estimate of :func:`_pair_term_exact` from ``num_shifts`` cyclic shifts per row.

    With the components in a random order ``pi`` (one for all rows) the
    pairwise sum is ``sum_k a_k`` over shifts ``k = 0..S-1`` with
    ``a_k = sum_j w_pi(j) w_pi(j+k) A_pi(j),pi(j+k)`` (indices mod S), so
    ``S * a_k`` for a uniformly drawn ``k`` is unbiased; each row averages
    ``num_shifts`` independent such draws (``S`` pairs each). A shift reads
    contiguous memory, unlike independent random pairs.
    """
    num_components, n = mu.shape
    order = rng.permutation(num_components)
    uniform = bool(np.all(w == w[0]))
    w2 = np.concatenate([w[order], w[order]])
    base = np.arange(num_components)
    out = np.empty(n)
    for rows in _row_blocks(n, CHUNK_CELLS // num_components):
        m = np.ascontiguousarray(mu[order, rows].T)  # (rows, S)
        v = np.ascontiguousarray(sd[order, rows].T ** 2)
        m2, v2 = np.concatenate([m, m], axis=1), np.concatenate([v, v], axis=1)
        num_rows = m.shape[0]
        row = np.arange(num_rows)[:, None]
        total = np.zeros(num_rows)
        for _ in range(num_shifts):
            idx = rng.integers(num_components, size=num_rows)[:, None] + base  # (rows, S)
            a = _abs_mean(m - m2[row, idx], np.sqrt(v + v2[row, idx]))
            if uniform:
                total += np.mean(a, axis=1)
            else:
                total += num_components * np.sum(w2[:num_components] * w2[idx] * a, axis=1)
        out[rows] = total / num_shifts
    return out


def crps(
    y: ArrayLike,
    mu: ArrayLike,
    sd: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    max_pairs: int = MAX_PAIRS,
    seed: int | np.random.Generator = 0,
) -> float:
    """Mean over rows of :func:`crps_per_row` (see there for the estimate).

    Parameters
    ----------
    y : array, shape (n,)
    mu : array, shape (n,) or (S, n)
    sd : array, broadcastable to the shape of ``mu``
    weights : array, shape (S,), optional
    max_pairs : int
    seed : int or numpy.random.Generator

    Returns
    -------
    float

    Examples
    --------
    >>> round(crps([0.0, 0.0], [0.0, 0.0], 1.0), 4)
    0.2337
    """
    return float(np.mean(crps_per_row(y, mu, sd, weights, max_pairs=max_pairs, seed=seed)))


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
