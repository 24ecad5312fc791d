"""The ordinal model's predictive: a distribution over the stars, mixed over posterior draws, and its scores.

Under ``likelihood="ordinal"`` (:mod:`bayesmf.ordinal`) a draw ``s`` predicts
for a pair the latent ``z ~ N(m_s, v_s + 1)``, with ``m_s`` and ``v_s`` the
mean and variance of the latent mean ``eta`` that
:func:`bayesmf.predictive.pair_moments` gives (``v_s = 0`` for a known pair;
the prior's spread for a new user or movie; the unit noise is the model's
``1 / noise_precision``), and so the star masses

.. math::

    P_s(\\text{star } k) = \\Phi\\Big(\\frac{c_{s,k} - m_s}{\\sqrt{1 + v_s}}\\Big)
        - \\Phi\\Big(\\frac{c_{s,k-1} - m_s}{\\sqrt{1 + v_s}}\\Big),

exactly (a normal mean under a probit link; no sampling). The predictive is
their mixture over the draws, ``P(k) = mean_s P_s(k)`` (or the weighted mean
for weighted components), a distribution on the star values
``low, low + step, ..., high`` (:func:`bayesmf.ordinal_model.star_grid`).

What :meth:`bayesmf.posterior.Posterior.predict` and ``evaluate`` report for
it:

- ``mean``: the expected star value; ``sd``: the star distribution's sd;
  ``epistemic_sd``: the sd over draws of each draw's expected star (the law
  of total variance; for a cold pair the new side's prior spread is inside
  each draw's distribution, so it counts in ``noise_sd``, the rest);
- ``lower`` / ``upper``: the central interval of the star distribution, the
  ``(1 - p)/2`` and ``(1 + p)/2`` quantiles (smallest star with cdf at least
  that), so its coverage is at least ``p`` by construction;
- scores: ``rmse`` / ``mae`` of the expected star value; ``crps`` the CRPS of
  the star distribution in rating units (``step * rps``, comparable with a
  Gaussian model's ``crps``); ``coverage_<p>`` / ``width_<p>`` of the
  central interval above; ``nll`` is NaN: a distribution on the stars has no
  density on the rating line (its log score is ``star_nll``, comparable
  across every model on the star scale); ``star_nll``, ``rps`` and the
  prediction sets from the masses (:func:`bayesmf.metrics.star_rows`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bayesmf.metrics import star_cuts, star_rows
from bayesmf.metrics.stars import level_tags
from bayesmf.ordinal_model import star_grid
from bayesmf.ordinal import normal_star_masses
from bayesmf.predictive import Components, Pairs, Prediction, star_interval

# Draws x pairs x stars cells computed at once when mixing the star masses.
MASS_BLOCK_CELLS = 4_000_000


@jax.jit
def _mixed(cuts, mean, var, weights):
    """sum_s w_s P_s(k): cuts (S, K-1), mean/var/weights (S, c) -> (c, K)."""
    return jnp.einsum("sn,snk->nk", weights, normal_star_masses(cuts, mean, var))


def mixture_masses(cuts: np.ndarray, comps: Components) -> np.ndarray:
    """Star masses of each pair's predictive mixture, computed in float64.

    Parameters
    ----------
    cuts : array, shape (S, K - 1)
        Each draw's cut points.
    comps : Components
        The draws' latent components (S, n): ``mean`` the latent mean,
        ``sd`` its total sd (unit noise included).

    Returns
    -------
    array, shape (n, K)
        Rows summing to 1.
    """
    cuts = np.asarray(cuts, np.float64)
    num_draws, n = comps.mean.shape
    weights = np.full((num_draws, n), 1.0 / num_draws) if comps.weights is None else np.asarray(comps.weights)
    out = np.empty((n, cuts.shape[-1] + 1))
    block = max(1, MASS_BLOCK_CELLS // (num_draws * out.shape[1]))
    with jax.enable_x64(True):
        for start in range(0, n, block):
            cols = slice(start, min(start + block, n))
            out[cols] = np.asarray(_mixed(cuts, np.asarray(comps.mean[:, cols], np.float64),
                                          np.asarray(comps.sd[:, cols], np.float64) ** 2, weights[:, cols]))
    return out


def draw_star_means(cuts: np.ndarray, comps: Components, values: np.ndarray) -> np.ndarray:
    """Each draw's expected star value, shape (S, n) (for the epistemic sd)."""
    num_draws, n = comps.mean.shape
    out = np.empty((num_draws, n))
    block = max(1, MASS_BLOCK_CELLS // (num_draws * values.size))
    with jax.enable_x64(True):
        for start in range(0, n, block):
            cols = slice(start, min(start + block, n))
            masses = normal_star_masses(np.asarray(cuts, np.float64), np.asarray(comps.mean[:, cols], np.float64),
                                        np.asarray(comps.sd[:, cols], np.float64) ** 2)
            out[:, cols] = np.asarray(masses @ values)
    return out


def star_moments(masses: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of star distributions: masses (n, K), values (K,) -> (n,), (n,)."""
    mean = masses @ values
    return mean, np.maximum(masses @ values**2 - mean**2, 0.0)


def score_rows(y: np.ndarray, masses: np.ndarray, scale, levels) -> dict:
    """Per-row scores of ratings ``y`` (n,) under star masses (n, K): the keys of :func:`bayesmf.metrics.score_rows`.

    See the module docstring for what each means here; ``y`` must lie on the
    star grid of ``scale``.
    """
    values = star_grid(scale)
    y = np.asarray(y, np.float64)
    mean, _ = star_moments(masses, values)
    stars = star_rows(y, masses, star_cuts(scale), levels)
    rows = dict(squared_error=(y - mean) ** 2, absolute_error=np.abs(y - mean), nll=np.full(y.shape, np.nan),
                crps=scale.step * stars["rps"])
    tol = 1e-6 * scale.step
    for p, tag in zip(levels, level_tags(levels)):
        lower, upper = star_interval(masses, values, p)
        rows[f"covered_{tag}"] = ((lower - tol <= y) & (y <= upper + tol)).astype(np.float64)
        rows[f"width_{tag}"] = upper - lower
    rows.update(stars)
    return rows


def prediction(pairs: Pairs, comps: Components, cuts: np.ndarray, *, prob: float | None, clip: bool, scale,
               keep_components: bool) -> Prediction:
    """The :class:`bayesmf.predictive.Prediction` of the ordinal model (see the module docstring).

    ``star_masses`` (n, K) and ``star_values`` (K,) are set; ``clip`` changes
    nothing (every value lies on the scale already).
    """
    values = star_grid(scale)
    masses = mixture_masses(cuts, comps)
    mean, var = star_moments(masses, values)
    draw_means = draw_star_means(cuts, comps, values)
    w = np.full(draw_means.shape, 1.0 / draw_means.shape[0]) if comps.weights is None else np.asarray(comps.weights)
    epistemic_var = np.sum(w * (draw_means - np.sum(w * draw_means, axis=0)) ** 2, axis=0)
    lower = upper = None
    if prob is not None:
        lower, upper = star_interval(masses, values, prob)
    return Prediction(
        mean=mean,
        sd=np.sqrt(var),
        epistemic_sd=np.sqrt(np.minimum(epistemic_var, var)),
        noise_sd=np.sqrt(np.maximum(var - epistemic_var, 0.0)),
        lower=lower,
        upper=upper,
        prob=prob,
        known_user=pairs.known_user,
        known_item=pairs.known_item,
        users=pairs.users,
        items=pairs.items,
        components=comps if keep_components else None,
        folded_in=pairs.folded_in,
        star_masses=masses,
        star_values=values,
    )
