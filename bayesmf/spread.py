"""The prior spread that features add to a new row whose features are unknown.

With features (Macau's prior, :mod:`bayesmf.link`) a row's factors are
``L_u = mu + B^T x_u + e_u`` with ``e_u ~ N(0, Lambda^-1)``. A new user's
prior mean takes ``x_u`` from what is known about them; what is not known
must be integrated over the population of rows, as the plain model's
``Lambda^-1`` already integrates over the users' factors. Over the training
rows (centred, so the unknown block's mean is the average row, ``x = 0``)
that adds

.. math::

    \\mathrm{Cov}(B_U^\\top x_U) = B_U^\\top \\Sigma_U B_U, \\qquad
    \\Sigma_U = \\tfrac1n X_U^\\top X_U

for the unknown columns ``U`` of each draw's ``B``. A new user with no
ratings has unknown implicit-feedback columns (``Sigma`` through the sparse
training rows, :class:`bayesmf.featurerows.FeatureRows`: ``V = X_e B_e``,
``V^T V / n``, per draw); when no side features are given, the side columns
are unknown too (``Sigma_s`` from the encoder,
:attr:`bayesmf.data.FeatureEncoder.covariance`). The blocks are treated as
independent (their cross-covariance is left out).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bayesmf.featurerows import FeatureRows, training_implicit_rows

Array = jax.Array


@jax.jit
def _implicit_spread(link: Array, rows: FeatureRows) -> Array:
    def one(b):
        v = rows.implicit_matmul(b)
        return v.T @ v / v.shape[0]

    return jax.lax.map(one, link)


def feature_spread(link: Array, num_side: int, *, side_covariance=None, implicit: FeatureRows | None = None) -> Array:
    """``B_U^T Sigma_U B_U`` per draw for the unknown blocks, shape (S, D, D).

    Parameters
    ----------
    link : array, shape (S, F, D)
        The link matrices ``B`` (side columns first).
    num_side : int
        ``F_s``, the side columns.
    side_covariance : array, shape (F_s, F_s), optional
        The side columns' training covariance when they are unknown (None:
        they are known, or their spread is not available).
    implicit : FeatureRows, optional
        The training implicit rows when those columns are unknown.
    """
    link = jnp.asarray(link)
    total = jnp.zeros((link.shape[0], link.shape[2], link.shape[2]), link.dtype)
    if side_covariance is not None and num_side:
        sigma = jnp.asarray(side_covariance, link.dtype)
        b_side = link[:, :num_side]
        total = total + jnp.einsum("sfd,fg,sge->sde", b_side, sigma, b_side)
    if implicit is not None:
        total = total + _implicit_spread(link[:, num_side:], implicit)
    return total


def side_spread(posterior, side: str, side_known: bool) -> np.ndarray | None:
    """:func:`feature_spread` of a posterior's new ``side`` rows, (C * S, D, D); None without features.

    A new row's implicit columns are unknown (it has no ratings); its side
    columns are unknown unless ``side_known``.
    """
    spec = getattr(posterior.config, f"{side}_features")
    if spec is None:
        return None
    link = getattr(posterior.flat_draws(), f"{side}_link")
    encoder = posterior.features.get(side)
    covariance = None if side_known or encoder is None else encoder.covariance
    implicit = None
    if spec.implicit:
        if posterior.train is None:
            raise ValueError("the prior of a new row with implicit feedback needs the training ratings (posterior.train)")
        implicit = training_implicit_rows(posterior.train, side, jnp.asarray(link).dtype)
    return np.asarray(feature_spread(link, spec.num_side, side_covariance=covariance, implicit=implicit))
