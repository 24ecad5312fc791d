"""The MAP objective: the model's negative log joint at fixed precisions, and its compiled form.

The objective is the negative log joint of :func:`bayesmf.model.numpyro_model`
in the ``"fixed"`` prior mode, divided by the number of training ratings:

.. math::

    f(L, R, m) &= -\\frac{1}{n} \\log p(r, L, R, m) \\\\
        &= \\frac{1}{n}\\Big[\\frac{\\alpha}{2} \\sum_{(u,v)}
            \\big(r_{uv} - \\langle L_u, R_v\\rangle - m_v\\big)^2
          + \\frac{\\lambda_L}{2}\\lVert L\\rVert_F^2
          + \\frac{\\lambda_R}{2}\\lVert R\\rVert_F^2
          + \\frac{\\tau_m}{2}\\lVert m - \\bar r\\rVert^2\\Big] + \\text{const}

(with ``"empirical"`` offsets ``m`` is fixed at the movie means and the last
term drops). The ``1/n`` changes nothing about the mode; it keeps the
objective and its gradient O(1) whatever the data size, so that a learning
rate, a gradient-norm tolerance and L-BFGS's initial step mean the same thing
on 1,000 or 1,000,000 ratings. The mode depends on the precisions only through
the ratios ``lambda_L / alpha``, ``lambda_R / alpha`` and ``tau_m / alpha``
(L2 strengths in units of squared error).

With features (Macau's prior, :mod:`bayesmf.link`) the factor penalty is
centred on the features' prediction, ``lambda_L ||L - 1 mu_L^T - X B||^2``,
and the link matrix gets ``lambda_g lambda_L ||B_g||^2`` per group of feature
columns, with ``lambda_g`` the :class:`bayesmf.model.FeatureSpec`'s
``link_precision`` (held, not tuned: a ratio to the factor precision).
User offsets add ``tau_b ||b||^2``.

Precisions are data of the compiled loop, not constants baked into it:
:func:`objective_fn` evaluates the model at unit precisions with each site's
log density scaled by its precision (a NumPyro ``scale`` per site). For a
Gaussian site that is the log density at that precision up to a constant, so
the gradient and the mode are exactly those of the model (tested against
:func:`neg_log_joint`); one compilation then serves every point of a tuning
grid. (The fixed mode's factor and link priors are independent Normals in
the model itself, :func:`bayesmf.model.numpyro_model`.)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer.util import log_density
from numpyro.primitives import Messenger

from bayesmf import ordinal
from bayesmf.featurerows import column_square_sums
from bayesmf.model import FixedPriors, ModelConfig, ModelData, log_joint, numpyro_model, params_from_sites

Array = jax.Array


def check_config(config: ModelConfig) -> None:
    """Raise ``ValueError`` unless ``config.priors`` is ``"fixed"`` (the only mode with a proper MAP)."""
    if config.priors != "fixed":
        raise ValueError(
            f"MAP needs priors='fixed', got {config.priors!r}: the MAP of the hierarchical (BPMF) model is "
            "degenerate (the factor precisions grow without bound as the factors shrink to zero, so the "
            "log joint is unbounded); use fixed precisions tuned on validation ratings (bayesmf.tuning)"
        )


def link_precisions(config: ModelConfig) -> tuple[float, float, float, float]:
    """The fixed-mode ``lambda_g`` ``(user side, user implicit, item side, item implicit)`` of ``config``'s
    feature specs (:class:`bayesmf.model.FeatureSpec`; 1 where a side has none)."""
    out = []
    for side in ("user", "item"):
        spec = getattr(config, f"{side}_features")
        out += [1.0, 1.0] if spec is None else [float(spec.link_precision), float(spec.implicit_precision)]
    return tuple(out)


def precision_vector(priors: FixedPriors, dtype, config: ModelConfig | None = None) -> Array:
    """``[lambda_L, lambda_R, tau_m, alpha, tau_b]`` and :func:`link_precisions` of ``config`` as one array,
    shape (9,)."""
    links = (1.0,) * 4 if config is None else link_precisions(config)
    return jnp.asarray([priors.user_precision, priors.item_precision, priors.offset_precision,
                        priors.noise_precision, priors.user_offset_precision, *links], dtype)


def neg_log_joint(latent: dict, data: ModelData, config: ModelConfig) -> Array:
    """Negative log joint of the model per training rating.

    Parameters
    ----------
    latent : dict of str -> array
        ``user_factors`` (num_users, rank), ``item_factors`` (num_items, rank)
        and, with estimated offsets, ``item_offsets`` (num_items,).
    data : ModelData
    config : ModelConfig
        ``priors`` must be ``"fixed"``.

    Returns
    -------
    array, shape ()
        ``-log p(r, latent) / nnz`` from :func:`bayesmf.model.log_joint`
        (divided by the number of ratings for optimizer conditioning; the
        mode is unchanged).

    Examples
    --------
    >>> value, grad = jax.value_and_grad(neg_log_joint)(latent, data, config)  # doctest: +SKIP
    """
    check_config(config)
    with numpyro.validation_enabled(False):  # as in objective_fn: the fixed priors' constants are valid
        return -log_joint(params_from_sites(latent, data, config), data, config) / data.nnz


class _scaled_unit_model(Messenger):
    """Run the model at unit precisions with per-site log-density scales.

    ``weights`` maps site names to the factor their log density is multiplied
    by (NumPyro's ``scale``, per site); a weighted Normal site's density
    loses its log normalizer (:class:`_Quadratic`, see :func:`objective_fn`).
    Only valid with the unit-precision config (:func:`unit_config`).
    """

    def __init__(self, fn, weights: dict):
        self.weights = weights
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample":
            return
        weight = self.weights.get(msg["name"])
        if weight is not None:
            msg["scale"] = weight if msg.get("scale") is None else weight * msg["scale"]
            msg["fn"] = _without_normalizer(msg["fn"])


class _Product(NamedTuple):
    """A side's feature rows ``X`` with the product ``X B`` already formed at the objective's link matrix ``B``.

    The model's prior mean ``mu + X B`` then reads the product that the
    coordinate change ``L = z + X B`` formed (:func:`objective_fn`), and the
    gradient passes through one product, not two (XLA merged neither the
    products nor their transposes). With implicit feedback on both sides,
    2-core CPU: on MovieLens-100K u1 at rank 50 a value and gradient in the
    loop took 13-14 ms against 27-31 ms, and a tuned MAP fit (thorough
    search) 49 s against 78-103 s; at ML-1M shape, rank 32, 40 L-BFGS
    iterations 7.7 s against 10.8 s. Any other matrix is multiplied by
    ``X`` itself.
    """

    rows: Any
    link: Array
    product: Array

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.shape

    @property
    def dtype(self):
        return self.rows.dtype

    def __matmul__(self, link):
        return self.product if link is self.link else self.rows @ link


def _prior_shift(latent: dict, data: ModelData, config: ModelConfig, sign: float) -> tuple[dict, ModelData]:
    """The shifted sites, and ``data`` with each side's feature rows as a :class:`_Product` at ``latent``'s link."""
    out, products = dict(latent), {}
    for side in ("user", "item"):
        if getattr(config, f"{side}_features") is not None:
            rows, link = getattr(data, f"{side}_features"), latent[f"{side}_link"]
            shift = rows @ link
            out[f"{side}_factors"] = latent[f"{side}_factors"] + sign * shift
            products[f"{side}_features"] = _Product(rows, link, shift)
    if config.ordinal and "cutpoints" in latent:  # ordered cut points <-> their free log increments
        out["cutpoints"] = (ordinal.free_from_cuts if sign < 0 else ordinal.cuts_from_free)(latent["cutpoints"])
    return out, data._replace(**products)


def to_optimizer(latent: dict, data: ModelData, config: ModelConfig) -> dict:
    """The optimizer's coordinates of ``latent``: each side's factors less their features' part, ``L - X B``.

    With features the loops run over ``(L - X B, B)`` instead of ``(L, B)``
    (SVD++'s parametrization): a linear change of variables with unit
    Jacobian, so the mode is the same, but ``B`` then reaches the ratings
    directly and L-BFGS converges in a fraction of the iterations. The
    ordinal likelihood's cut points run as their free log increments
    (:func:`bayesmf.ordinal.free_from_cuts`), so every step keeps them
    ordered; the objective is the density of the cut points themselves, so
    the mode is theirs. No-op without features or cut points.
    :func:`from_optimizer` is its inverse.
    """
    return _prior_shift(latent, data, config, -1.0)[0]


def from_optimizer(latent: dict, data: ModelData, config: ModelConfig) -> dict:
    """The model's latent sites from the optimizer's coordinates (:func:`to_optimizer`)."""
    return _prior_shift(latent, data, config, 1.0)[0]


def jacobi_scales(coordinates: dict, data: ModelData, config: ModelConfig, precisions: Array) -> dict:
    """Jacobi scales of the optimizer's coordinates: ``x = s * z``, ``s = sqrt(h_ref / h)`` per entry.

    ``h`` estimates the diagonal of the objective's (Gauss-Newton) Hessian
    (times ``n``) at ``coordinates``, the loop's start:

    - a user's factor entry ``alpha n_u k_R + lambda_L`` (``n_u`` its
      ratings, ``k_R`` the movie factors' mean squared entry; a movie's the
      same way round);
    - a movie offset ``alpha n_v + tau_m``, a user offset ``alpha n_u + tau_b``;
    - a learned factor mean ``(N + beta) lambda`` (``N`` the side's rows):
      the centred prior ties it to every row of its side;
    - a link entry ``b_fd`` (row ``f`` of ``B``, optimizer coordinates
      ``(L - X B, B)``) ``alpha k_R sum_u X_uf^2 n_u + lambda_g lambda``:
      it moves every row's factor by ``X_uf``, so every rating of those
      rows, and its prior's precision is the row group's ``lambda_g`` times
      the side's factor precision. At a tuning point's ``lambda_g`` of 1e6
      the links were the stiffest entries by that factor, unscaled;
    - the ordinal likelihood's free cut point ``f_i`` (the log increment
      that moves cuts ``c_{i+1}, ...`` by ``Delta_i = exp(f_i)``)
      ``alpha Delta_i^2 n_{>i}``, ``n_{>i}`` the ratings of a star above
      ``i``: each has a cut it uses moved by ``Delta_i``, as a shift of its
      mean by ``Delta_i`` would (one unit of curvature per rating, as for a
      Gaussian; the ordered probit's is near it). At a cold start on
      MovieLens-100K u5 this was 0.90-0.96 of the Hessian's diagonal (75,048
      against 78,216 for ``f_0``), about 3,600 times the users' mean factor
      curvature. Unscaled, a cold ordinal fit there (rank 10, all features,
      offset ratio 3) took 495 iterations where the scaled one takes 218, and
      its refit stopped 0.0023 per rating above the scaled refit's objective.

    ``h_ref`` is the users' mean factor curvature. The loop minimizes
    ``f(s * z)`` over ``z``: the same mode, with curvatures that spread over
    orders of magnitude (a movie with one rating against one with thousands, a
    mean tied to every row) brought to one scale. L-BFGS keeps ten
    curvature pairs, far too few to learn such a spread itself: on
    MovieLens-100K u1 at rank 10 with learned means a cold fit at factor ratio
    10 (``ftol`` 1e-5) took 446 iterations without the scales and 180 with
    them, to a lower objective (4.32454 against 4.32512); at the ML-1M shape,
    rank 32, 93 against 432 (4.47447 against 4.47684).

    Parameters
    ----------
    coordinates : dict of str -> array
        The optimizer's coordinates (:func:`to_optimizer`) at the start.
    data : ModelData
    config : ModelConfig
    precisions : array, shape (9,)
        :func:`precision_vector`.

    Returns
    -------
    dict of str -> array
        Per site, an array that broadcasts against it: ``(num_users, 1)``
        for the user factors, ``(num_items,)`` for the offsets, ``()`` for a mean.
    """
    dtype = data.rating.dtype
    lam_user, lam_item, tau_m, alpha, tau_b = (precisions[k] for k in range(5))
    n_user = data.user_degree.astype(dtype)
    n_item = data.item_degree.astype(dtype)
    k_item = jnp.mean(jnp.square(coordinates["item_factors"]))
    k_user = jnp.mean(jnp.square(coordinates["user_factors"]))
    curvature = {
        "user_factors": (alpha * n_user * k_item + lam_user)[:, None],
        "item_factors": (alpha * n_item * k_user + lam_item)[:, None],
    }
    if "item_offsets" in coordinates:
        curvature["item_offsets"] = alpha * n_item + tau_m
    if "user_offsets" in coordinates:
        curvature["user_offsets"] = alpha * n_user + tau_b
    links = link_weights(data, config, precisions)
    for side, degree, k_other in (("user", n_user, k_item), ("item", n_item, k_user)):
        # A link entry b_fd moves every row's factor by X_uf, so every rating of those rows:
        # alpha sum_u X_uf^2 n_u k_other, plus its prior's lambda_g lambda.
        if f"{side}_link" in coordinates:
            data_part = alpha * k_other * column_square_sums(getattr(data, f"{side}_features"), degree)
            curvature[f"{side}_link"] = (data_part + links[f"{side}_link"])[:, None]
    if "cutpoints" in coordinates:
        stars = jnp.bincount(data.star, length=config.num_stars).astype(dtype)
        above = (data.nnz - jnp.cumsum(stars))[:-2]  # n_{>i}, i = 0..K-3: ratings of star i+1 or above
        curvature["cutpoints"] = alpha * jnp.exp(2.0 * coordinates["cutpoints"]) * above
    if "user_mean" in coordinates:
        beta = config.fixed.mean_precision
        curvature["user_mean"] = (data.num_users + beta) * lam_user
        curvature["item_mean"] = (data.num_items + beta) * lam_item
    reference = jnp.mean(curvature["user_factors"])
    return {name: jnp.sqrt(reference / h) for name, h in curvature.items()}


def scaled(coordinates: dict, scales: dict, power: float = 1.0) -> dict:
    """``coordinates`` with each site in ``scales`` multiplied by its scale to ``power`` (``-1``: divided)."""
    return {name: value * scales[name] ** power if name in scales else value for name, value in coordinates.items()}


def unit_config(config: ModelConfig) -> ModelConfig:
    """``config`` at unit precisions (link precisions included): the model :func:`objective_fn` scales."""
    # mean_precision is relative to the factor precisions, so it stays.
    unit = config.replace(fixed=FixedPriors(1.0, 1.0, 1.0, 1.0, config.fixed.mean_precision, 1.0))
    for side in ("user", "item"):
        spec = getattr(config, f"{side}_features")
        if spec is not None:
            unit = unit.replace(**{f"{side}_features": spec._replace(link_precision=1.0, implicit_precision=1.0)})
    return unit


def link_weights(data: ModelData, config: ModelConfig, precisions: Array) -> dict:
    """Each link matrix's row precisions ``lambda_g lambda`` (``lambda_g`` of the row's group, side or
    implicit, from ``precisions[5:9]``; ``lambda`` the side's factor precision): ``{"user_link": array
    (F_u,), "item_link": array (F_v,)}`` for the sides with features."""
    out = {}
    for k, (side, num_other) in enumerate((("user", data.num_items), ("item", data.num_users))):
        spec = getattr(config, f"{side}_features")
        if spec is not None:
            kinds = np.asarray([0] * (spec.num_side > 0) + [1] * spec.implicit)[spec.groups(num_other)]
            out[f"{side}_link"] = precisions[k] * precisions[5 + 2 * k + jnp.asarray(kinds)]
    return out


def objective_fn(data: ModelData, config: ModelConfig, precisions: Array, rating_weights=None):
    """``f(latent)`` at the precisions of :func:`precision_vector` (traced, shape (9,)).

    The model at unit precisions with each site's log density multiplied by
    its precision: for a Gaussian site, ``w log N(x; mu, 1)`` is
    ``log N(x; mu, 1/w)`` up to a constant, so this equals
    :func:`neg_log_joint` at those precisions up to an additive constant and
    has the same gradient (tested). The weighted Gaussian sites' log
    normalizers (their log density at the mean, times ``w``) are left out:
    kept, they grow with the precisions (``w`` times ``-log(2 pi) / 2`` per
    entry: ~2e6 per rating for MovieLens-100K's implicit-feedback links at
    a tuning point's ratio 1e6) and float32 no longer resolves the loop's
    progress, where without them ``f`` is the weighted squared residuals,
    ~0.5-2 per rating at any precision. A link matrix's rows
    have precision ``lambda_g lambda`` (``lambda_g`` of the row's group,
    ``precisions[5:9]``; ``config``'s own are not read). ``rating_weights``
    (nnz,): each rating's term times its weight, over the weights' sum.
    """
    unit = unit_config(config)
    weights = {
        "user_factors": precisions[0],
        "item_factors": precisions[1],
        "user_mean": precisions[0],  # N(0, 1/beta) at unit precision: beta * lambda_L after scaling
        "item_mean": precisions[1],
        "item_offsets": precisions[2], "user_offsets": precisions[4],
        "obs": precisions[3] if rating_weights is None else precisions[3] * rating_weights,
    }
    weights.update(link_weights(data, config, precisions))
    model = _scaled_unit_model(numpyro_model, weights)
    count = data.nnz if rating_weights is None else jnp.sum(rating_weights)

    def objective(coordinates):
        """``f`` at the optimizer's coordinates (:func:`to_optimizer`)."""
        # NumPyro validates a distribution's concrete arguments eagerly even while
        # tracing; here they are the config's constants (I, 0, 1), always valid,
        # and checking them compiled ~20 one-op programs per process (0.3 s).
        with numpyro.validation_enabled(False):
            latent, with_products = _prior_shift(coordinates, data, unit, 1.0)
            value, _ = log_density(model, (with_products, unit), {}, latent)
        return -value / count

    return objective


class _Quadratic(dist.Normal):
    """``N(loc, scale)`` without its log normalizer: ``log_prob`` is ``-((x - loc) / scale)^2 / 2``."""

    def log_prob(self, value):
        return -0.5 * jnp.square((value - self.loc) / self.scale)


def _without_normalizer(fn):
    """``fn`` with its Normal base as :class:`_Quadratic` (through ``to_event``); other distributions as they are."""
    if isinstance(fn, dist.Independent):
        base = _without_normalizer(fn.base_dist)
        return fn if base is fn.base_dist else dist.Independent(base, fn.reinterpreted_batch_ndims)
    if type(fn) is dist.Normal:
        return _Quadratic(fn.loc, fn.scale)
    return fn


