"""One star scale for every predictive: the mass of each star, and the scores computed from those masses.

A discrete :class:`bayesmf.data.RatingScale` (``step`` set) has ``K`` stars
``low, low + step, ..., high``. A predictive with a continuous density (the
Gaussian, or a Gaussian mixture over posterior draws) gives star ``k`` the
mass of its cell, with the cut points at the midpoints between stars and
open ends,

.. math::

    P(\\text{star } k) = F(c_k) - F(c_{k-1}),\\qquad
    c_k = \\text{low} + (k + \\tfrac12)\\,\\text{step},\\quad c_{-1} = -\\infty,\\ c_{K-1} = +\\infty,

i.e. the cells ``(-inf, 1.5], (1.5, 2.5], ..., (4.5, inf)`` on the 1..5
scale (right-closed: a rating on a cut point belongs to the lower star).
:func:`star_masses` computes them (NumPy), :func:`mixture_masses` is the
same kernel for any array namespace, as :func:`star_scores` is for the
scores below (evaluate's jitted streaming path calls both with
``jax.numpy``, on the device). A model that predicts stars directly (an ordinal model)
hands in its own ``(n, K)`` masses to :func:`star_rows`; every score below is
a function of the masses and the observed star only, so every variant is
scored on the same footing:

- ``star_nll``: the log score, negated so that lower is better as for
  ``nll``: ``-log P(observed star)``;
- ``rps``: the ranked probability score
  ``sum_{k=0}^{K-2} (F_k - 1[y <= star k])^2`` with ``F_k`` the mass of the
  stars up to ``k``; not divided by ``K - 1`` (the ``k = K-1`` term is always
  0). Multiplied by ``step`` it is the CRPS of the star distribution in
  rating units, so on the whole-star scale it is directly comparable to
  ``crps``;
- per level ``p``, the level-``p`` prediction set (:func:`prediction_set`):
  the shortest run of consecutive stars with mass at least ``p``; among runs
  of that length the one with the largest mass, then the lowest. Its rows:
  ``set_covered_<100p>`` (1.0 when the observed star is in the set),
  ``set_mass_<100p>`` (its predicted mass) and ``set_size_<100p>`` (its
  number of stars). A level is calibrated when the coverage (mean of
  ``set_covered``) is within 0.01 of the mean predicted mass (mean of
  ``set_mass``), not of ``p``: a discrete set's mass overshoots ``p``.

A continuous scale (``step`` None) has no stars: :func:`star_cuts` returns
None and the scoring functions then add no star rows or columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from bayesmf.metrics.scores import CHUNK_CELLS

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)

# Masses handed to star_rows must sum to 1 within this per row (float32 models included).
MASS_TOL = 1e-6


def star_cuts(scale) -> tuple[float, ...] | None:
    """Cut points between consecutive stars of a discrete scale; None for a continuous one.

    Parameters
    ----------
    scale : bayesmf.data.RatingScale or None
        Anything with ``low``, ``high`` and ``step`` (None: continuous).

    Returns
    -------
    tuple of float, length K - 1, or None
        ``low + (k + 1/2) step`` for ``k = 0..K-2``, with
        ``K = round((high - low) / step) + 1`` stars.

    Examples
    --------
    >>> from bayesmf.data import RatingScale
    >>> star_cuts(RatingScale(1.0, 5.0, 1.0))
    (1.5, 2.5, 3.5, 4.5)
    >>> star_cuts(RatingScale(1.0, 5.0, None)) is None
    True
    """
    if scale is None or scale.step is None:
        return None
    num_stars = int(round((scale.high - scale.low) / scale.step)) + 1
    return tuple(float(scale.low + (k + 0.5) * scale.step) for k in range(num_stars - 1))


def star_index(y: ArrayLike, cuts: Sequence[float], *, xp=np):
    """The star (0-based, from the lowest) whose cell holds each rating: the number of cut points below it.

    Parameters
    ----------
    y : array, shape (n,)
    cuts : sequence of float, length K - 1, increasing
    xp : module
        ``numpy`` (``y`` is taken as float64) or ``jax.numpy`` (traceable;
        the cut points in ``y``'s dtype).

    Returns
    -------
    int array, shape (n,), values in 0..K-1

    Examples
    --------
    >>> star_index([1.0, 1.5, 1.6, 5.0], (1.5, 2.5, 3.5, 4.5)).tolist()
    [0, 0, 1, 4]
    """
    if xp is np:
        y = np.asarray(y, np.float64)
    below = xp.asarray(cuts, dtype=y.dtype)[:, None] < y[None, :]  # (K - 1, n); a rating on a cut is the lower star
    return xp.sum(below, axis=0, dtype=np.int32)


def mixture_masses(mu, sd, weights, cuts: Sequence[float], *, xp=np):
    """Star masses of Gaussian mixtures, ``(S, n)`` components to ``(n, K)`` masses (no validation).

    Each component's cell mass is a difference of Normal cdfs, taken from the
    upper tail (``Phi(-z_lo) - Phi(-z_hi)``) for a cell above the component's
    mean and from the lower tail otherwise, both from the one tail
    probability ``Phi(-|z|) = erfc(|z| / sqrt 2) / 2`` per cut point (one
    special-function evaluation; far-tail masses keep their relative
    precision); the mixture mass is ``sum_s w_s`` of them.

    Parameters
    ----------
    mu, sd : array, shape (S, n)
        Component means and sds (> 0).
    weights : array, shape (S,)
        Summing to 1.
    cuts : sequence of float, length K - 1
    xp : module
        ``numpy`` or ``jax.numpy`` (then traceable under ``jax.jit``).

    Returns
    -------
    array, shape (n, K)
    """
    if xp is np:
        erfc = special.erfc
    else:
        import jax.scipy.special

        erfc = jax.scipy.special.erfc
    # The tails of all cut points in one special-function evaluation, (K - 1, S, n): in a jitted
    # program one per cut point, unrolled, took 0.5 s more to compile in evaluate's scoring (CPU).
    z = (xp.asarray(cuts, dtype=mu.dtype)[:, None, None] - mu[None]) / sd[None]
    tail = 0.5 * erfc(xp.abs(z) * _INV_SQRT_2)  # Phi(-|z|)
    below = xp.where(z < 0, tail, 1.0 - tail)  # P(X <= c)
    above = xp.where(z > 0, tail, 1.0 - tail)  # P(X > c)
    num_stars = len(cuts) + 1
    masses = []
    for k in range(num_stars):
        if k == 0:
            cell = below[0] if cuts else xp.ones_like(mu)
        elif k == num_stars - 1:
            cell = above[k - 1]
        else:
            cell = xp.where(z[k - 1] > 0, above[k - 1] - above[k], below[k] - below[k - 1])
        masses.append(weights @ cell)
    return xp.stack(masses, axis=1)


def star_masses(mu: ArrayLike, sd: ArrayLike, cuts: Sequence[float], weights: ArrayLike | None = None) -> np.ndarray:
    """Mass of each star under a Gaussian or Gaussian-mixture predictive, per row.

    Parameters
    ----------
    mu : array, shape (n,) or (S, n)
        Gaussian means, or mixture component means (one row per component).
    sd : array, broadcastable to the shape of ``mu``
        > 0.
    cuts : sequence of float, length K - 1
        From :func:`star_cuts`.
    weights : array, shape (S,), optional
        Non-negative component weights (normalised here); equal by default.

    Returns
    -------
    array, shape (n, K)
        Rows sum to 1 (to round-off).

    Examples
    --------
    >>> m = star_masses([3.0], [1e-3], (1.5, 2.5, 3.5, 4.5))
    >>> m.round(6).tolist()
    [[0.0, 0.0, 1.0, 0.0, 0.0]]
    """
    m = np.asarray(mu, np.float64)
    if m.ndim not in (1, 2) or m.size == 0 or not np.all(np.isfinite(m)):
        raise ValueError(f"mu must be a non-empty finite array of shape (n,) or (S, n), got shape {m.shape}")
    try:
        s = np.broadcast_to(np.asarray(sd, np.float64), m.shape)
    except ValueError:
        raise ValueError(f"mismatched shapes: sd {np.shape(sd)} does not broadcast to {m.shape}") from None
    if not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError("sd must be finite and > 0 everywhere")
    if m.ndim == 1:
        m, s = m[None], s[None]
    num_components, n = m.shape
    if weights is None:
        w = np.full(num_components, 1.0 / num_components)
    else:
        w = np.asarray(weights, np.float64)
        if w.shape != (num_components,) or not np.all(np.isfinite(w) & (w >= 0)) or not w.sum() > 0:
            raise ValueError(f"weights must be finite, >= 0, not all 0, of shape ({num_components},)")
        w = w / w.sum()
    c = np.asarray(cuts, np.float64)
    if c.ndim != 1 or np.any(np.diff(c) <= 0):
        raise ValueError(f"cuts must be a strictly increasing 1-D sequence, got {cuts!r}")
    out = np.empty((n, c.size + 1))
    rows = max(1, CHUNK_CELLS // (num_components * (c.size + 1)))
    for start in range(0, n, rows):
        block = slice(start, min(start + rows, n))
        out[block] = mixture_masses(m[:, block], s[:, block], w, tuple(c))
    return out


def prediction_set(masses: ArrayLike, prob: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The level-``prob`` prediction set of each row: the shortest run of consecutive stars with mass >= ``prob``.

    Among the runs of the shortest length the one with the largest mass is
    taken, and among equal masses the lowest. Run masses are summed left to
    right (no cumulative-sum differences), and compared with ``prob`` exactly.

    Parameters
    ----------
    masses : array, shape (n, K)
    prob : float
        In (0, 1).

    Returns
    -------
    start : int array, shape (n,)
        Lowest star of the set (0-based).
    size : int array, shape (n,)
        Number of stars in the set, 1..K.
    mass : array, shape (n,)
        Predicted mass of the set.

    Examples
    --------
    >>> start, size, mass = prediction_set([[0.1, 0.2, 0.4, 0.2, 0.1]], 0.75)
    >>> start.tolist(), size.tolist(), mass.round(12).tolist()
    ([1], [3], [0.8])
    """
    m = np.asarray(masses, np.float64)
    if m.ndim != 2 or m.shape[1] == 0:
        raise ValueError(f"masses must have shape (n, K), got {m.shape}")
    if not 0.0 < prob < 1.0:
        raise ValueError(f"prob must be in the open interval (0, 1), got {prob}")
    start, size, mass = (x[0] for x in _set_at(*_best_runs(np.ascontiguousarray(m.T)), (prob,)))
    return start.astype(np.int64), size.astype(np.int64), mass


def _best_runs(stars, *, xp=np) -> tuple[list, list]:
    """The heaviest run of each length 1..K (the first maximum: the lowest of equal masses) of every row:
    its start and its mass, two lists of K arrays of shape (n,) -- what every level's prediction set is
    chosen from.

    ``stars`` is star-major, ``(K, n)``: the runs' sums and the comparisons
    between the candidates are whole-array operations (NumPy's ``argmax``
    along a row's K stars ran row by row), written for any array namespace
    ``xp`` (``numpy``, or ``jax.numpy`` inside evaluate's jitted scoring),
    with the same additions in the same order in both."""
    num_stars = stars.shape[0]
    starts, masses = [], []
    run = stars  # run[a] = mass of the stars a..a+length-1
    for length in range(1, num_stars + 1):
        if length > 1:
            run = run[:-1] + stars[length - 1 :]
        best, start = run[0], xp.zeros(run.shape[1:], np.int32)
        for a in range(1, run.shape[0]):  # strictly heavier: the lowest start keeps a tie
            start = xp.where(run[a] > best, np.int32(a), start)
            best = xp.maximum(best, run[a])
        starts.append(start)
        masses.append(best)
    return starts, masses


def _set_at(starts: list, masses: list, probs: Sequence[float], *, xp=np) -> tuple:
    """:func:`prediction_set` from :func:`_best_runs` at every level of ``probs`` at once: the shortest
    length whose heaviest run reaches the level. Three arrays of shape (len(probs), n)."""
    num_stars = len(starts)
    levels = xp.asarray(np.asarray(probs, np.float64)[:, None], dtype=masses[-1].dtype)  # (L, 1)
    shape = (levels.shape[0],) + tuple(starts[-1].shape)
    length = xp.full(shape, np.int32(num_stars - 1))  # the whole scale always qualifies
    start, mass = xp.broadcast_to(starts[-1], shape), xp.broadcast_to(masses[-1], shape)
    for shorter in range(num_stars - 2, -1, -1):  # the shortest qualifying length is the last one set
        reaches = masses[shorter] >= levels
        length = xp.where(reaches, np.int32(shorter), length)
        start = xp.where(reaches, starts[shorter], start)
        mass = xp.where(reaches, masses[shorter], mass)
    return start, length + 1, mass


def level_tags(levels: Sequence[float]) -> list[str]:
    """The ``<100p>`` tags of the per-level keys (as for the central intervals)."""
    return [f"{100 * p:g}" for p in levels]


def star_rows(y: ArrayLike, masses: ArrayLike, cuts: Sequence[float], levels: Sequence[float]) -> dict[str, np.ndarray]:
    """Per-row star scores of observed ratings under predicted star masses (any model's).

    Parameters
    ----------
    y : array, shape (n,)
        Observed ratings (each is scored as the star whose cell holds it,
        :func:`star_index`).
    masses : array, shape (n, K)
        Predicted star masses, >= 0, rows summing to 1 within ``MASS_TOL``
        (from :func:`star_masses`, or handed in by a model that predicts
        stars).
    cuts : sequence of float, length K - 1
    levels : sequence of float
        Prediction-set levels, in (0, 1).

    Returns
    -------
    dict of str to array, shape (n,)
        ``star_nll``, ``rps`` and per level ``set_covered_<100p>``,
        ``set_mass_<100p>``, ``set_size_<100p>`` (see the module docstring).

    Examples
    --------
    >>> rows = star_rows([2.0], [[0.25, 0.5, 0.25]], (1.5, 2.5), (0.5,))
    >>> {k: float(v[0]) for k, v in rows.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'star_nll': 0.6931471805599453, 'rps': 0.125, 'set_covered_50': 1.0, 'set_mass_50': 0.5,
     'set_size_50': 1.0}
    """
    m = np.asarray(masses, np.float64)
    c = np.asarray(cuts, np.float64)
    y = np.asarray(y, np.float64)
    if m.ndim != 2 or m.shape != (y.shape[0], c.size + 1) or y.ndim != 1:
        raise ValueError(
            f"mismatched shapes: y {y.shape}, masses {m.shape}, {c.size} cuts (expected (n, {c.size + 1}))"
        )
    if not np.all(np.isfinite(m) & (m >= 0)) or np.any(np.abs(m.sum(axis=1) - 1.0) > MASS_TOL):
        raise ValueError(f"masses must be finite, >= 0 and sum to 1 (within {MASS_TOL}) in every row")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains non-finite values")
    return star_scores(star_index(y, c), m, levels)


def star_scores(star, masses, levels: Sequence[float], *, xp=np) -> dict:
    """:func:`star_rows` from the observed stars, without validation, for any array namespace.

    The one home of the star scores' math: :func:`star_rows` calls it with
    NumPy, evaluate's jitted scoring (:mod:`bayesmf.metrics.streaming`) with
    ``jax.numpy`` on the device, the same additions in the same order (the
    cumulative masses and the runs left to right, the prediction sets'
    comparisons exact), so the prediction sets agree exactly given equal
    masses.

    Parameters
    ----------
    star : int array, shape (n,)
        The observed stars, 0-based (:func:`star_index`).
    masses : array, shape (n, K)
        Predicted star masses.
    levels : sequence of float
        Prediction-set levels, in (0, 1).
    xp : module
        ``numpy`` or ``jax.numpy``.

    Returns
    -------
    dict of str to array, shape (n,), in ``masses``' dtype
        The keys of :func:`star_rows`, in its order.
    """
    stars = np.ascontiguousarray(masses.T) if xp is np else masses.T  # (K, n): whole-row operations
    num_stars = stars.shape[0]
    observed = xp.take_along_axis(masses, star[:, None], axis=1)[:, 0]
    if xp is np:
        with np.errstate(divide="ignore"):
            out = {"star_nll": -np.log(observed)}
    else:
        out = {"star_nll": -xp.log(observed)}
    # rps: sum over k = 0..K-2 of (F_k - 1[y <= star k])^2, F_k summed down the stars.
    cumulative, rps = None, xp.zeros_like(observed)
    for k in range(num_stars - 1):
        cumulative = stars[0] if k == 0 else cumulative + stars[k]
        term = cumulative - (star <= k).astype(masses.dtype)
        rps = term * term if k == 0 else rps + term * term
    out["rps"] = rps
    if not len(levels):
        return out
    start, size, mass = _set_at(*_best_runs(stars, xp=xp), levels, xp=xp)  # (L, n) each
    covered = ((start <= star) & (star < start + size)).astype(masses.dtype)
    size = size.astype(masses.dtype)
    for j, tag in enumerate(level_tags(levels)):
        out[f"set_covered_{tag}"], out[f"set_mass_{tag}"], out[f"set_size_{tag}"] = covered[j], mass[j], size[j]
    return out


def star_keys(levels: Sequence[float]) -> list[str]:
    """The keys of :func:`star_rows` (and :func:`star_scores`), in their order."""
    return ["star_nll", "rps", *(f"set_{kind}_{tag}" for tag in level_tags(levels)
                                 for kind in ("covered", "mass", "size"))]
