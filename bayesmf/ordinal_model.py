"""The ordinal likelihood's place in the model: its settings, the stars of a rating scale, and its NumPyro sites.

:class:`bayesmf.model.ModelConfig` with ``likelihood="ordinal"`` (and
``num_stars=K``) replaces the Gaussian likelihood by the ordered probit of
:mod:`bayesmf.ordinal`: a latent ``z ~ N(eta, 1)`` with the model's mean
``eta = <L_u, R_v> + m_v (+ b_u)``, star ``k`` when ``c_{k-1} < z <= c_k``,
``c_0 = 0`` (the location; the scale is the unit noise, so the noise
precision is fixed at 1 and ``Params.noise_precision`` holds 1.0), and the
normal prior of :class:`bayesmf.ordinal.CutpointPrior` on the cut points'
log increments (``config.cutpoint_prior``). The movie offsets' mean ``mu_0``
carries the level. It needs ``priors="hyper"`` and estimated offsets.

Here: :func:`check_likelihood` (called by ``ModelConfig``),
:func:`star_grid` / :func:`stars_of` (a discrete rating scale's stars; a
rating off the grid is a ValueError), the cut points as a NumPyro site
(:class:`CutpointTransform`, :func:`cutpoint_distribution`: NUTS moves in
the free log increments) and :func:`observe_stars` (the sites
:func:`bayesmf.model.numpyro_model` adds). This module imports nothing from
the model; the model imports it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.distributions import Normal, TransformedDistribution, constraints, transforms

from bayesmf.ordinal import (
    CutpointPrior,
    OrderedProbit,
    cuts_from_free,
    free_from_cuts,
    log_abs_det_jacobian,
)

Array = jax.Array

LIKELIHOODS = ("gaussian", "ordinal")


def check_likelihood(config) -> None:
    """A :class:`bayesmf.model.ModelConfig`'s likelihood settings: a clear ValueError for each combination not supported."""
    if config.likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {config.likelihood!r}; expected one of {LIKELIHOODS}")
    k = config.num_stars
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 3):
        raise ValueError(f"num_stars must be an integer >= 3 (or None), got {k!r}")
    if config.likelihood != "ordinal":
        if k is not None:
            raise ValueError("num_stars is a setting of the ordinal likelihood; the gaussian one takes none")
        return
    if config.priors == "fixed" and config.fixed.noise_precision != 1.0:
        raise ValueError("likelihood='ordinal' with priors='fixed' needs fixed.noise_precision = 1 (the latent "
                         f"scale's unit), got {config.fixed.noise_precision}")
    if config.offsets != "estimated":
        raise ValueError("likelihood='ordinal' needs offsets='estimated' (empirical offsets are mean ratings, "
                         "not latent utilities)")
    p = config.cutpoint_prior
    if not isinstance(p, CutpointPrior) or not np.isfinite(p.log_increment_mean) or not (
            np.isfinite(p.log_increment_sd) and p.log_increment_sd > 0):
        raise ValueError(f"cutpoint_prior must be a CutpointPrior with a finite mean and a positive sd, got {p!r}")


def star_grid(scale) -> np.ndarray:
    """The star values ``low, low + step, ..., high`` of a discrete scale, shape (K,).

    Raises
    ------
    ValueError
        A continuous scale (``step`` None), or one with fewer than 3 stars.
    """
    if scale is None or scale.step is None:
        raise ValueError(f"the ordinal likelihood needs a star scale with a step, got {scale!r} (continuous ratings "
                         "have no stars: use likelihood='gaussian')")
    num_stars = int(round((scale.high - scale.low) / scale.step)) + 1
    if num_stars < 3:
        raise ValueError(f"the ordinal likelihood needs at least 3 stars, the scale {scale!r} has {num_stars}")
    return scale.low + scale.step * np.arange(num_stars)


def stars_of(rating, scale) -> np.ndarray:
    """Each rating's star index ``0..K-1`` on a discrete scale, or a ValueError for a rating off the grid.

    Parameters
    ----------
    rating : float array, shape (n,)
    scale : bayesmf.data.RatingScale
        With a step.

    Returns
    -------
    int32 array, shape (n,)
    """
    grid = star_grid(scale)
    rating = np.asarray(rating, np.float64)
    k = np.rint((rating - scale.low) / scale.step)
    off = ~np.isfinite(rating) | (k < 0) | (k >= grid.size) | (np.abs(rating - (scale.low + scale.step * k)) > 1e-6)
    if np.any(off):
        bad = rating[off][:5].tolist()
        raise ValueError(f"{int(off.sum())} ratings are off the star grid {grid.tolist()} (e.g. {bad}): the ordinal "
                         "likelihood takes ratings on the scale's stars only")
    return k.astype(np.int32)


# --- the cut points as a NumPyro site ---


class _CutpointVector(constraints.ParameterFreeConstraint):
    """Increasing vectors whose first element is 0: the support of the ``cutpoints`` site."""

    event_dim = 1

    def __call__(self, x):
        x = jnp.asarray(x)
        return (x[..., 0] == 0) & jnp.all(x[..., 1:] > x[..., :-1], axis=-1)

    def feasible_like(self, prototype):
        return jnp.broadcast_to(jnp.arange(prototype.shape[-1], dtype=jnp.result_type(prototype, float)), prototype.shape)


cutpoint_vector = _CutpointVector()
"""The constraint ``c_0 = 0 < c_1 < ... < c_{K-2}`` (shape ``(K - 1,)``)."""


class CutpointTransform(transforms.ParameterFreeTransform):
    """Free parameters ``(K - 2,)`` to cut points ``(K - 1,)``: :func:`cuts_from_free` as a NumPyro transform.

    The image is the ``(K - 2)``-dimensional set :data:`cutpoint_vector`; its
    log Jacobian is that of the map onto ``cuts[1:]``
    (:func:`bayesmf.ordinal.log_abs_det_jacobian`), so a density on the free parameters
    becomes the density of ``cuts[1:]`` (``c_0 = 0`` is fixed).
    """

    domain = constraints.real_vector
    codomain = cutpoint_vector

    def __call__(self, x):
        return cuts_from_free(x)

    def _inverse(self, y):
        return free_from_cuts(y)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        return log_abs_det_jacobian(x)

    def forward_shape(self, shape):
        return shape[:-1] + (shape[-1] + 1,)

    def inverse_shape(self, shape):
        return shape[:-1] + (shape[-1] - 1,)


@transforms.biject_to.register(_CutpointVector)
def _biject_to_cutpoints(constraint):
    return CutpointTransform()


def cutpoint_distribution(num_stars: int, prior: CutpointPrior = CutpointPrior()) -> TransformedDistribution:
    """The prior of the cut points ``(K - 1,)`` as a NumPyro distribution (log increments normal, ``c_0 = 0``).

    Its ``log_prob`` at ``cuts`` is :func:`bayesmf.ordinal.log_prior` of
    ``free_from_cuts(cuts)`` less ``log_abs_det_jacobian``; NUTS moves in
    the free parameters (``biject_to`` of its support is
    :class:`CutpointTransform`).

    Parameters
    ----------
    num_stars : int
        ``K`` (>= 3).
    prior : CutpointPrior

    Returns
    -------
    numpyro.distributions.TransformedDistribution
        Event shape ``(K - 1,)``.
    """
    base = Normal(prior.log_increment_mean, prior.log_increment_sd).expand((num_stars - 2,)).to_event(1)
    return TransformedDistribution(base, CutpointTransform())


def observe_stars(mean: Array, star: Array | None, nnz: int, config, observed: bool) -> None:
    """The ordinal likelihood's NumPyro sites: ``cutpoints`` (K - 1,) and ``obs`` (nnz,), the marginal ordered probit.

    Parameters
    ----------
    mean : array, shape (nnz,)
        The latent means ``eta``.
    star : int array, shape (nnz,), or None
        The observed stars (``ModelData.star``); None only with ``observed=False``.
    nnz : int
    config : bayesmf.model.ModelConfig
    observed : bool
        Condition on ``star`` (else the stars are drawn: the prior predictive).
    """
    if config.num_stars is None:
        raise ValueError("likelihood='ordinal' needs config.num_stars (the number of stars K)")
    cutpoints = numpyro.sample("cutpoints", cutpoint_distribution(config.num_stars, config.cutpoint_prior))
    if observed and star is None:
        raise ValueError("likelihood='ordinal' needs the ratings' stars: build the data with bayesmf.model.star_model_data")
    with numpyro.plate("ratings", nnz, dim=-1):
        numpyro.sample("obs", OrderedProbit(mean, cutpoints), obs=star if observed else None)
