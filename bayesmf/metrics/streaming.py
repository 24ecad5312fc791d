"""The per-row scores of :func:`bayesmf.metrics.score_rows` in JAX, for chunks of rows on a device.

:func:`chunk_scores` is the math of one chunk of ``c`` rows, a pure JAX
function of the mixture components ``mu``, ``var`` of shape ``(S, c)`` and
weights ``(S,)``, to be jitted by its caller together with whatever forms the
components on the device (:func:`bayesmf.predictive.stream_score_rows` does,
so that no ``S x n`` array of draws reaches the host: only ``n`` floats per
score). :func:`score_rows` applies it to host arrays in chunks, the same
call as :func:`bayesmf.metrics.score_rows`, and is what the tests compare
with that NumPy reference (:mod:`bayesmf.metrics.scores`, unchanged).

The scores are those of the reference, step for step:

- squared and absolute error of the mixture mean ``sum_s w_s mu_s``;
- NLL ``-logsumexp_s(log w_s + log N(y; mu_s, var_s))``;
- CRPS ``sum_s w_s A(y - mu_s, sd_s) - P / 2`` with ``A(m, s) = E|N(m, s^2)|``
  and the pairwise term ``P = sum_{s,t} w_s w_t A(mu_s - mu_t, sqrt(var_s + var_t))``.
  ``P`` is the sum over cyclic shifts ``k = 0..S-1`` of
  ``a_k = sum_j w_j w_{j+k} A_{j, j+k}`` (indices mod S). Exact
  (``shifts=None``): ``a_0 + 2 sum_{0<k<S/2} a_k (+ a_{S/2})``, using
  ``a_k = a_{S-k}``, ``S^2 / 2`` evaluations per row. Sampled
  (``shifts`` of shape ``(K, c)``): ``S a_k`` for ``K`` shifts ``k`` drawn uniformly and
  independently per row (on the host, by a NumPy generator seeded from a JAX
  key, :func:`chunk_shifts`), averaged, an unbiased estimate of
  ``P`` with standard error per row about ``sd_pairs(A) / sqrt(K S)`` (the
  reference's estimator, without its random reordering of the components,
  which unbiasedness does not need);
- central intervals from mixture quantiles by the reference's safeguarded
  Newton (:func:`bayesmf.metrics.quantile`): the same bracket,
  Newton/bisection rule and stopping rule per row, from a closer start
  (Cornish-Fisher instead of the moment-matched Normal), vectorised over rows and
  all ``2 x len(levels)`` quantiles at once in one ``lax.while_loop`` that
  stops when every row of the chunk has converged (at most the reference's
  ``2 ceil(log2(width / tol)) + 4`` iterations, so it jits with one compile
  per chunk shape). Converged rows are frozen, not dropped. A Gaussian
  (``S = 1``) takes the closed form;
- on a star scale (``cuts`` given), the star masses of the mixture by the
  reference's own kernel (:func:`bayesmf.metrics.stars.mixture_masses` with
  ``jax.numpy``), and from them the star scores by the reference's own
  :func:`bayesmf.metrics.stars.star_scores` (the one home of that math, with
  ``jax.numpy``: the same additions in the same order, so the prediction
  sets agree exactly given equal masses), on the device in the same program.

Dtype: the functions compute in the dtype of ``mu``. Under
``jax.enable_x64(True)`` with float64 components every score equals the
reference to float64 round-off (about 1e-12) and the quantiles agree to
within ``2 tol`` (both stop within ``tol`` of the root; measured ~1e-7 on
posterior-like mixtures), so coverage is identical except for a rating
within that distance of an interval's end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike
from scipy.special import ndtri

from bayesmf.metrics.scores import BRACKET_SDS, MAX_PAIRS, QUANTILE_TOL
from bayesmf.metrics.stars import level_tags, mixture_masses, star_cuts, star_index, star_keys, star_scores

Array = jax.Array

# Cells (components x rows) of one chunk on the CPU: 2**17 float64 cells are
# 1 MiB per (S, c) temporary; a chunk's program holds about 34 MB of them
# (XLA's temp_size_in_bytes at 20 draws, star masses included; 134 MB at
# 2**19, the previous size). At ML-10M shape, 1M test ratings x 100 draws,
# evaluate took 38.7-39.4 s warm with 2**17 cells, 44.9-48.6 with 2**18 and
# 42.0-45.7 with 2**19 (two alternating rounds, benchmarks/evaluate_scale.py
# --skip-old): no cost; at ML-1M shape, 20 draws, a fit's peak with evaluate
# after it fell from 620 MB (above the fit's 577) to the fit's 577.
CHUNK_CELLS = 2**17
# On a GPU (or TPU) 2**22, 32x that: there a chunk's arithmetic takes far less time than its fixed costs
# (the quantile loop's steps, each a few kernels and a predicate read by the host, and the
# chunk's transfers). On an H100 at ML-10M shape (1M ratings x 100 draws, 191 chunks of
# 2**19 cells) the scoring took 3.0 s, 16 ms per chunk, where the CPU's 2 cores take 190 ms for
# work that card does ~1,000x faster. 2**22 float64 cells are 32 MiB per (S, c) temporary and
# about 1 GiB for the quantile loop's (levels x S x c) ones. Not yet measured on a GPU
# (benchmarks/gpu_check.py --plan fifth times it against 2**19).
ACCELERATOR_CHUNK_CELLS = 2**22

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_LOG_2PI = math.log(2.0 * math.pi)


def row_keys(levels: Sequence[float], cuts: tuple[float, ...] | None = None) -> list[str]:
    """The keys of :func:`bayesmf.metrics.score_rows`, in its order (the star scores' with ``cuts``)."""
    return ["squared_error", "absolute_error", "nll", "crps",
            *(f"{kind}_{tag}" for tag in level_tags(levels) for kind in ("covered", "width")),
            *(star_keys(levels) if cuts is not None else ())]


def check_levels(levels) -> tuple[float, ...]:
    """``levels`` as a tuple of floats in (0, 1), or the reference's ValueError."""
    p = np.atleast_1d(np.asarray(levels, dtype=np.float64))
    if p.ndim != 1 or p.size == 0 or not np.all((p > 0.0) & (p < 1.0)):  # also rejects NaN
        raise ValueError(f"levels must be in the open interval (0, 1), got {levels}")
    return tuple(float(v) for v in p)


def num_shifts_for(num_components: int, num_rows: int, max_pairs: int | None = MAX_PAIRS) -> int | None:
    """The reference's budget rule: None (exact pair term) when ``S^2 n <= max_pairs``, else ``K`` shifts per row.

    ``K = max(1, max_pairs // (n S))``; ``max_pairs=None`` always asks for the exact term.
    """
    if max_pairs is None or num_components * num_components * num_rows <= max_pairs:
        return None
    if int(max_pairs) < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    return max(1, int(max_pairs) // (num_rows * num_components))


def _abs_mean(m: Array, s: Array) -> Array:
    """``A(m, s) = E|N(m, s^2)|``, elementwise."""
    z = m / s
    return m * jax.lax.erf(z / math.sqrt(2.0)) + 2.0 * s * jnp.exp(-0.5 * z * z) * _INV_SQRT_2PI


def _pair_term_exact(mu: Array, var: Array, w: Array) -> Array:
    """``sum_{s,t} w_s w_t A(mu_s - mu_t, sqrt(var_s + var_t))`` per row, (S, c) -> (c,)."""
    num_components = mu.shape[0]
    diag = jnp.sum((w * w)[:, None] * 2.0 * jnp.sqrt(2.0 * var) * _INV_SQRT_2PI, axis=0)
    if num_components == 1:
        return diag
    mu2, var2, w2 = (jnp.concatenate([x, x], axis=0) for x in (mu, var, w))

    def shift(k, total):
        m_k = jax.lax.dynamic_slice_in_dim(mu2, k, num_components, axis=0)
        v_k = jax.lax.dynamic_slice_in_dim(var2, k, num_components, axis=0)
        w_k = jax.lax.dynamic_slice_in_dim(w2, k, num_components, axis=0)
        a_k = jnp.sum((w * w_k)[:, None] * _abs_mean(mu - m_k, jnp.sqrt(var + v_k)), axis=0)
        return total + jnp.where(2 * k == num_components, 1.0, 2.0).astype(mu.dtype) * a_k

    return jax.lax.fori_loop(1, num_components // 2 + 1, shift, diag)


def _pair_term_sampled(shifts: Array, mu: Array, var: Array, w: Array) -> Array:
    """Unbiased estimate of :func:`_pair_term_exact` from the uniform shifts ``shifts`` (K, c) of each row."""
    num_components = mu.shape[0]
    base = jnp.arange(num_components)[:, None]

    def one(j, total):
        idx = (base + shifts[j][None, :]) % num_components  # (S, c)
        m_k = jnp.take_along_axis(mu, idx, axis=0)
        v_k = jnp.take_along_axis(var, idx, axis=0)
        a = _abs_mean(mu - m_k, jnp.sqrt(var + v_k))
        return total + num_components * jnp.sum(w[:, None] * w[idx] * a, axis=0)

    total = jax.lax.fori_loop(0, shifts.shape[0], one, jnp.zeros(mu.shape[1:], mu.dtype))
    return total / shifts.shape[0]


def shift_generator(rng_key: Array) -> np.random.Generator:
    """The NumPy generator of the sampled pair term's shifts, seeded by a JAX key (raw or typed)."""
    if jnp.issubdtype(rng_key.dtype, jax.dtypes.prng_key):
        rng_key = jax.random.key_data(rng_key)
    return np.random.default_rng(np.asarray(rng_key, np.uint32).ravel().tolist())


def chunk_shifts(rng: np.random.Generator, num_shifts: int | None, num_components: int, rows: int):
    """Uniform shifts ``(num_shifts, rows)`` int32 of :func:`chunk_scores`, or None (the exact pair term).

    Drawn on the host: ``jax.random`` inside the scoring program added about
    0.9 s to its compile on the CPU (2.6 s in all), for a few integers per row.
    """
    if num_shifts is None or num_components == 1:
        return None
    return rng.integers(0, num_components, (num_shifts, rows), dtype=np.int32)


def _quantiles(p: ArrayLike, mu: Array, sd: Array, w: Array, tol: float) -> Array:
    """Mixture quantiles at probabilities ``p`` (q,) for every row: (q, c); see the module docstring.

    ``p`` is a host array (the levels are static): its Normal quantiles are
    constants of the program, not ``ndtri`` in it (0.2 s of its compile on the CPU).
    """
    # z by a product with 1 / sd and the cdf by erf (not ndtr, which evaluates both erf and erfc
    # and selects): 7x less time per cdf evaluation in float64 on the CPU, the same values to
    # round-off (1e-16 absolute; the quantiles here are not in the far tails).
    m, inv = mu[None], (1.0 / sd)[None]  # (1, S, c)
    wq = w[None, :, None]
    w_inv = wq * inv
    p = np.asarray(p, np.float64)
    pq = jnp.asarray(p[:, None], mu.dtype)  # (q, 1)
    lo0 = jnp.min(mu - BRACKET_SDS * sd, axis=0)
    hi0 = jnp.max(mu + BRACKET_SDS * sd, axis=0)
    # Start: the Cornish-Fisher expansion of the mixture's quantile in its skewness g1 and excess
    # kurtosis g2 (exact central moments of the mixture), not the reference's moment-matched
    # Normal. For posterior mixtures, near Gaussian, it is within ~1e-6 of the root, so Newton
    # stops after one or two cdf evaluations instead of about four (the chunk's loop runs until its
    # slowest row is done); the bracket and the safeguard are the reference's, so the result is
    # within tol of the root however poor the start.
    wc = w[:, None]
    mean = jnp.sum(wc * mu, axis=0)
    dev, var = mu - mean, sd * sd
    m2 = jnp.sum(wc * (dev * dev + var), axis=0)
    m3 = jnp.sum(wc * dev * (dev * dev + 3.0 * var), axis=0)
    m4 = jnp.sum(wc * (dev**4 + 6.0 * dev * dev * var + 3.0 * var * var), axis=0)
    g1, g2 = m3 / m2**1.5, m4 / (m2 * m2) - 3.0
    z = jnp.asarray(ndtri(p)[:, None], mu.dtype)
    cf = z + (z * z - 1.0) * g1 / 6.0 + (z**3 - 3.0 * z) * g2 / 24.0 - (2.0 * z**3 - 5.0 * z) * g1 * g1 / 36.0
    x0 = jnp.clip(mean + jnp.sqrt(m2) * cf, lo0, hi0)
    shape = x0.shape
    lo, hi = jnp.broadcast_to(lo0, shape), jnp.broadcast_to(hi0, shape)
    width = jnp.max(hi0 - lo0)
    num_bisect = jnp.maximum(1, jnp.ceil(jnp.log2(jnp.maximum(width, tol) / tol)).astype(jnp.int32))
    max_iter = 2 * num_bisect + 4

    def body(state):
        it, x, lo, hi, last_step, out, done = state
        z = (x[:, None, :] - m) * inv
        cdf_x = 0.5 + 0.5 * jnp.sum(wq * jax.lax.erf(z * _INV_SQRT_2), axis=1)
        pdf_x = jnp.sum(w_inv * jnp.exp(-0.5 * z * z), axis=1) * _INV_SQRT_2PI
        below = cdf_x < pq
        lo_n = jnp.where(below, x, lo)
        hi_n = jnp.where(below, hi, x)
        newton = x - (cdf_x - pq) / pdf_x
        take = jnp.isfinite(newton) & (newton > lo_n) & (newton < hi_n) & (jnp.abs(newton - x) <= 0.5 * last_step)
        x_next = jnp.where(take, newton, 0.5 * (lo_n + hi_n))
        step = jnp.abs(x_next - x)
        now = (take & (step <= 0.5 * tol)) | (hi_n - lo_n <= tol)
        keep = lambda new, old: jnp.where(done, old, new)  # noqa: E731 - converged rows are frozen
        return it + 1, keep(x_next, x), keep(lo_n, lo), keep(hi_n, hi), keep(step, last_step), keep(x_next, out), done | now

    def cond(state):
        it, *_, done = state
        return (it < max_iter) & ~jnp.all(done)

    state = (jnp.int32(0), x0, lo, hi, hi - lo, x0, jnp.zeros(shape, bool))
    return jax.lax.while_loop(cond, body, state)[5]


def chunk_scores(
    y: Array,
    mu: Array,
    var: Array,
    w: Array,
    *,
    levels: Sequence[float],
    shifts: Array | None = None,
    tol: float = QUANTILE_TOL,
    cuts: tuple[float, ...] | None = None,
) -> dict[str, Array]:
    """Per-row scores of one chunk of mixtures (pure JAX; jit it with its caller).

    Parameters
    ----------
    y : array, shape (c,)
    mu, var : array, shape (S, c)
        Component means and variances (> 0).
    w : array, shape (S,)
        Component weights, summing to 1.
    levels : sequence of float (static)
        Central-interval probabilities.
    shifts : int array, shape (K, c), optional
        Shifts drawn uniformly from ``0..S-1`` per row (:func:`chunk_shifts`)
        for the sampled CRPS pair term; None for the exact one.
    tol : float (static)
        Absolute tolerance of the mixture quantiles.
    cuts : tuple of float (static), optional
        Star cut points (:func:`bayesmf.metrics.star_cuts`): also return
        the star scores of :func:`bayesmf.metrics.star_rows`.

    Returns
    -------
    dict of str to array, shape (c,)
        The keys of :func:`bayesmf.metrics.score_rows`, in its order (the
        star scores with ``cuts`` only).
    """
    num_components = mu.shape[0]
    sd = jnp.sqrt(var)
    wc = w[:, None]
    mean = jnp.sum(wc * mu, axis=0)
    error = y - mean
    z = (y - mu) / sd
    if num_components == 1:
        nll = 0.5 * _LOG_2PI + jnp.log(sd[0]) + 0.5 * z[0] * z[0]
        crps = _abs_mean(y - mu[0], sd[0]) - sd[0] / math.sqrt(math.pi)
    else:
        logpdf = -0.5 * z * z - jnp.log(sd) - 0.5 * _LOG_2PI
        nll = -jax.scipy.special.logsumexp(logpdf, axis=0, b=wc)
        first = jnp.sum(wc * _abs_mean(y - mu, sd), axis=0)
        pairs = _pair_term_exact(mu, var, w) if shifts is None else _pair_term_sampled(shifts, mu, var, w)
        crps = first - 0.5 * pairs
    rows = dict(squared_error=error * error, absolute_error=jnp.abs(error), nll=nll, crps=crps)
    p = np.asarray(levels, np.float64)
    if num_components == 1:
        zq = jnp.asarray(ndtri(0.5 + 0.5 * p)[:, None], mu.dtype)
        lower, upper = mu[0] - zq * sd[0], mu[0] + zq * sd[0]
    else:
        q = _quantiles(np.concatenate([0.5 - 0.5 * p, 0.5 + 0.5 * p]), mu, sd, w, tol)
        lower, upper = q[: len(levels)], q[len(levels):]
    for j, tag in enumerate(level_tags(levels)):
        rows[f"covered_{tag}"] = ((lower[j] <= y) & (y <= upper[j])).astype(mu.dtype)
        rows[f"width_{tag}"] = upper[j] - lower[j]
    if cuts is not None:
        masses = mixture_masses(mu, sd, w, cuts, xp=jnp)
        rows.update(star_scores(star_index(y, cuts, xp=jnp), masses, levels, xp=jnp))
    return rows


def _host_chunk(y, mu, var, w, shifts, *, levels, tol, cuts):
    return chunk_scores(y, mu, var, w, levels=levels, shifts=shifts, tol=tol, cuts=cuts)


_host_chunk_jit = jax.jit(_host_chunk, static_argnames=("levels", "tol", "cuts"))


def default_chunk_cells(platform: str | None = None) -> int:
    """Cells per chunk on ``platform`` (default: JAX's default backend's): :data:`CHUNK_CELLS` on the CPU,
    :data:`ACCELERATOR_CHUNK_CELLS` elsewhere (read at call time)."""
    platform = jax.default_backend() if platform is None else platform
    return CHUNK_CELLS if platform == "cpu" else ACCELERATOR_CHUNK_CELLS


def chunk_rows(num_components: int, chunk_cells: int = CHUNK_CELLS) -> int:
    """Rows per chunk for ``S`` components: ``chunk_cells // S``, at least 1."""
    return max(1, int(chunk_cells) // max(1, int(num_components)))


def score_rows(
    rng_key: Array | None,
    y: ArrayLike,
    mu: ArrayLike,
    sd: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95),
    max_pairs: int | None = MAX_PAIRS,
    tol: float = QUANTILE_TOL,
    chunk_cells: int = CHUNK_CELLS,
    scale=None,
) -> dict[str, np.ndarray]:
    """:func:`bayesmf.metrics.score_rows` of host arrays, chunked and jitted (float64).

    Parameters
    ----------
    rng_key : jax.Array or None
        Key of the sampled CRPS pair term (only used when ``S^2 n > max_pairs``;
        None: ``PRNGKey(0)``).
    y : array, shape (n,)
    mu : array, shape (n,) or (S, n)
    sd : array, broadcastable to the shape of ``mu``
    weights : array, shape (S,), optional
    levels : sequence of float
    max_pairs : int or None
        The reference's budget; None: always the exact pair term.
    tol : float
    chunk_cells : int
    scale : bayesmf.data.RatingScale, optional
        As in :func:`bayesmf.metrics.score_rows`: star scores on a star scale.

    Returns
    -------
    dict of str to array, shape (n,)

    Examples
    --------
    >>> rows = score_rows(None, [0.0, 2.0], [0.0, 0.0], 1.0, levels=(0.9,))
    >>> rows["covered_90"].tolist()
    [1.0, 0.0]
    """
    levels = check_levels(levels)
    m = np.asarray(mu, np.float64)
    m = m[None] if m.ndim == 1 else m
    s = np.broadcast_to(np.asarray(sd, np.float64), np.shape(mu)).reshape(m.shape)
    y = np.asarray(y, np.float64)
    num_components, n = m.shape
    if y.shape != (n,):
        raise ValueError(f"mismatched shapes: y {y.shape}, mu {np.shape(mu)}")
    w = np.full(num_components, 1.0 / num_components) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    num_shifts = num_shifts_for(num_components, n, max_pairs)
    rng = shift_generator(jax.random.PRNGKey(0) if rng_key is None else rng_key)
    size = min(n, chunk_rows(num_components, chunk_cells))
    cuts = star_cuts(scale)
    out = {name: np.empty(n) for name in row_keys(levels, cuts)}  # the reference's order (jit returns keys sorted)
    with jax.enable_x64(True):
        for start in range(0, n, size):
            stop = min(start + size, n)
            take = np.minimum(np.arange(start, start + size), n - 1)  # pad the last chunk with its last row
            part = _host_chunk_jit(
                jnp.asarray(y[take]), jnp.asarray(m[:, take]), jnp.asarray(s[:, take] ** 2), jnp.asarray(w),
                chunk_shifts(rng, num_shifts, num_components, size), levels=levels, tol=float(tol), cuts=cuts,
            )
            for name, values in part.items():
                out[name][start:stop] = np.asarray(values)[: stop - start]
    return out
