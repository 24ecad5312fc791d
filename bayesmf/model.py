"""The Bayesian matrix factorization model, written once.

.. math::

    r_{uv} &\\sim \\mathcal N(\\langle L_u, R_v\\rangle + m_v,\\ \\alpha^{-1}) \\\\
    L_u &\\sim \\mathcal N(\\mu_L, \\Lambda_L^{-1}), \\qquad
    R_v \\sim \\mathcal N(\\mu_R, \\Lambda_R^{-1}) \\\\
    m_v &\\sim \\mathcal N(\\mu_0, \\tau_m^{-1})

With ``ModelConfig(user_offsets=True)`` each user also gets an offset,
:math:`r_{uv} \\sim \\mathcal N(\\langle L_u, R_v\\rangle + m_v + b_u, \\alpha^{-1})`,
:math:`b_u \\sim \\mathcal N(0, \\tau_b^{-1})`. Its mean is zero: the global
level stays in the movie offsets' :math:`\\mu_0` (a free mean would not be
identified: adding c to every :math:`m_v` and subtracting it from every
:math:`b_u` changes no rating). :math:`\\tau_b \\sim \\mathrm{Gamma}` in the
``"hyper"`` mode, fixed (``FixedPriors.user_offset_precision``) in the
``"fixed"`` mode. A new user keeps the mean-based prior
:math:`m_v + \\mu_L \\cdot R_v`; its variance gains :math:`1/\\tau_b`.

Priors come in two modes:

``"hyper"`` (BPMF, Salakhutdinov & Mnih 2008)
    Normal-Wishart hyperpriors
    :math:`\\Lambda \\sim \\mathcal W(\\nu_0, W_0)`,
    :math:`\\mu \\mid \\Lambda \\sim \\mathcal N(0, (\\beta_0\\Lambda)^{-1})` on
    each side, :math:`\\alpha \\sim \\mathrm{Gamma}(a_0, b_0)`,
    :math:`\\mu_0 \\sim \\mathcal N(\\bar r, s_0^2)` and
    :math:`\\tau_m \\sim \\mathrm{Gamma}(a_m, b_m)`.
``"fixed"`` (PMF)
    :math:`\\mu_L = \\mu_R = 0`, :math:`\\Lambda_L = \\lambda_L I`,
    :math:`\\Lambda_R = \\lambda_R I`, :math:`\\mu_0 = \\bar r`,
    :math:`\\tau_m = \\lambda_m` and :math:`\\alpha` fixed.

Movie offsets come in two modes: ``"estimated"`` (the Bayesian offset above,
shrunk toward :math:`\\mu_0` for movies with few ratings) and ``"empirical"``
(mean normalization exactly: :math:`m_v` fixed to movie v's mean training
rating, the global mean for a movie with none).

With ``ModelConfig(likelihood="ordinal", num_stars=K)`` the ratings are stars
(:func:`star_model_data`) under an ordered probit on the same mean, with the
noise precision fixed at 1 (:mod:`bayesmf.ordinal_model`).

:func:`numpyro_model` is the single source of the log joint: MAP optimizes it,
NUTS samples it, and the closed-form conditionals of the Gibbs engine are
tested against it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from bayesmf import ordinal_model
from bayesmf.layout import row_sums

# The training data as the model sees them live in bayesmf.modeldata; re-exported here.
from bayesmf.modeldata import (  # noqa: F401
    ModelData,
    PairLayouts,
    make_model_data,
    model_data_from_ratings,
    star_model_data,
    with_features,
    with_pair_layouts,
)
from bayesmf.ordinal import CutpointPrior

Array = jax.Array

OFFSET_MODES = ("estimated", "empirical")
PRIOR_MODES = ("hyper", "fixed")


class FixedPriors(NamedTuple):
    """Fixed precisions of the PMF model (the ``"fixed"`` prior mode).

    With a MAP fit only the ratios ``user_precision / noise_precision`` etc.
    matter: they are the usual L2 regularization strengths.

    ``mean_precision`` (``beta``) decides the prior means of the factors. At
    0 (the default, plain PMF) they are fixed at zero. When it is positive
    they are latent, ``mu_L ~ Normal(0, (beta lambda_L)^-1 I)`` and the same
    for ``mu_R``: this is the Normal half of BPMF's Normal-Wishart hyperprior
    with the precision ``Lambda_L = lambda_L I`` held fixed. A learned
    ``mu_R`` gives every user a bias ``L_u . mu_R`` that is shrunk toward
    ``mu_L . mu_R``, a bias the zero-mean model lacks. On MovieLens-100K u1
    at rank 10 the tuned MAP reaches a test RMSE of 0.922 with learned means
    and 0.951 with zero means (``benchmarks/map_ml100k.py``).
    """

    user_precision: float = 20.0
    item_precision: float = 20.0
    offset_precision: float = 4.0
    noise_precision: float = 1.0
    mean_precision: float = 0.0
    user_offset_precision: float = 4.0

    @property
    def learns_means(self) -> bool:
        return self.mean_precision > 0


class HyperPriors(NamedTuple):
    """Constants of the BPMF hyperpriors (the ``"hyper"`` prior mode).

    The defaults follow Salakhutdinov & Mnih (2008): ``beta0 = 2``,
    ``nu0 = rank`` and ``W0 = I``. The noise precision and the offset
    hyperparameters get weak Gamma / Normal priors; the offset mean is centred
    on the global mean rating of the training data.
    """

    beta0: float = 2.0
    nu0_extra: float = 0.0
    w0_scale: float = 1.0
    noise_shape: float = 1.0
    noise_rate: float = 1.0
    offset_mean_sd: float = 1.0
    offset_shape: float = 1.0
    offset_rate: float = 0.1
    user_offset_shape: float = 1.0
    user_offset_rate: float = 0.1


class FeatureSpec(NamedTuple):
    """Features of one side (users or movies) in its factors' prior mean (Macau's prior).

    ``L_u ~ N(mu_L + B^T x_u, Lambda_L^-1)``, the rows of ``B`` (F, rank)
    ``b_f ~ N(0, (lambda_g(f) Lambda_L)^-1)``, one precision ``lambda_g`` per
    group of columns (:mod:`bayesmf.link`). ``x_u`` is the side feature row
    (``num_side`` encoded columns, :mod:`bayesmf.data.features`: centred on
    the training rows, so that ``x = 0`` is the mean-based prior) followed,
    with ``implicit``, by the implicit-feedback row ``n_u`` (``|N(u)|^-1/2`` at
    the movies the user rated in the training data; for movies, at their
    raters), centred on the training rows as the side columns are: SVD++'s
    ``L_u = p_u + Y^T n_u`` with ``Y`` the last rows of ``B``. Side and
    implicit columns are separate groups.

    Attributes
    ----------
    num_side : int
        Side feature columns (>= 0).
    implicit : bool
        Append the implicit-feedback columns.
    link_shape, link_rate : float
        ``lambda_g ~ Gamma(link_shape, link_rate)`` (the ``"hyper"`` mode).
    link_precision, implicit_precision : float
        ``lambda_g`` of the side and of the implicit group in the ``"fixed"``
        mode (a ratio: ``b_f``'s precision is ``lambda_g`` times the factors').
    """

    num_side: int = 0
    implicit: bool = False
    link_shape: float = 1.0
    link_rate: float = 1.0
    link_precision: float = 1.0
    implicit_precision: float = 1.0

    def groups(self, num_other: int) -> np.ndarray:
        """Group of each column, shape (num_side + num_other * implicit,): side 0, implicit next."""
        side = np.zeros(self.num_side, np.int32)
        implicit = np.full(num_other if self.implicit else 0, int(self.num_side > 0), np.int32)
        return np.concatenate([side, implicit])

    @property
    def num_groups(self) -> int:
        return int(self.num_side > 0) + int(self.implicit)

    def fixed_precisions(self) -> np.ndarray:
        """``lambda_g`` per group in the ``"fixed"`` mode, shape (num_groups,): side first, implicit next."""
        return np.asarray([self.link_precision] * (self.num_side > 0) + [self.implicit_precision] * self.implicit)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static description of the model.

    Parameters
    ----------
    rank : int
        Number of latent factors ``D`` (> 0).
    offsets : {"estimated", "empirical"}
        How the movie offsets ``m_v`` are treated (see the module docstring).
    priors : {"hyper", "fixed"}
        BPMF hyperpriors or PMF fixed precisions.
    fixed : FixedPriors
        Precisions used when ``priors == "fixed"``.
    hyper : HyperPriors
        Hyperprior constants used when ``priors == "hyper"``.
    user_offsets : bool
        Give each user an offset ``b_u ~ Normal(0, 1/tau_b)`` (see the module
        docstring). Off by default: the plain model.
    user_features, item_features : FeatureSpec, optional
        Features in the users' (movies') prior mean; the feature rows come in
        ``ModelData.user_features`` (``item_features``). None: none.
    likelihood : {"gaussian", "ordinal"}
        Gaussian ratings (the default), or the ordered probit over stars
        (module docstring); ``"ordinal"`` needs ``priors="hyper"`` and
        ``offsets="estimated"``.
    num_stars : int or None
        ``K`` (>= 3) of the ordinal likelihood; None for a Gaussian one (an
        estimator fills it in from the training data's scale).
    cutpoint_prior : bayesmf.ordinal.CutpointPrior
        Prior of the ordinal cut points' log increments.
    """

    rank: int = 10
    offsets: str = "estimated"
    priors: str = "hyper"
    fixed: FixedPriors = FixedPriors()
    hyper: HyperPriors = HyperPriors()
    user_offsets: bool = False
    user_features: FeatureSpec | None = None
    item_features: FeatureSpec | None = None
    # --- ordinal likelihood (issue 20, part 4) ---
    likelihood: str = "gaussian"
    num_stars: int | None = None
    cutpoint_prior: CutpointPrior = CutpointPrior()

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, (int, np.integer)):
            raise TypeError(f"rank must be an integer, got {self.rank!r}")
        if self.rank <= 0:
            raise ValueError(f"rank must be > 0, got {self.rank}")
        if self.offsets not in OFFSET_MODES:
            raise ValueError(f"unknown offsets mode {self.offsets!r}; expected one of {OFFSET_MODES}")
        if not isinstance(self.user_offsets, (bool, np.bool_)):
            raise TypeError(f"user_offsets must be True or False, got {self.user_offsets!r}")
        if self.priors not in PRIOR_MODES:
            raise ValueError(f"unknown priors mode {self.priors!r}; expected one of {PRIOR_MODES}")
        for side in ("user", "item"):
            spec = getattr(self, f"{side}_features")
            if spec is None:
                continue
            if not isinstance(spec, FeatureSpec):
                raise TypeError(f"{side}_features must be a FeatureSpec or None, got {spec!r}")
            if isinstance(spec.num_side, bool) or not isinstance(spec.num_side, (int, np.integer)) or spec.num_side < 0:
                raise ValueError(f"{side}_features.num_side must be an integer >= 0, got {spec.num_side!r}")
            if spec.num_groups == 0:
                raise ValueError(f"{side}_features has no columns: give num_side > 0 or implicit=True (or None)")
            for name in ("link_shape", "link_rate", "link_precision", "implicit_precision"):
                value = getattr(spec, name)
                if not np.isfinite(value) or value <= 0:
                    raise ValueError(f"{side}_features.{name} must be a positive finite number, got {value}")
        for name, value in self.fixed._asdict().items():
            if name == "mean_precision":
                if not np.isfinite(value) or value < 0:
                    raise ValueError(f"fixed prior mean_precision must be a finite number >= 0, got {value}")
            elif not np.isfinite(value) or value <= 0:
                raise ValueError(f"fixed prior {name} must be a positive finite number, got {value}")
        if self.priors == "hyper" and self.rank + self.hyper.nu0_extra <= self.rank - 1:
            raise ValueError("Wishart degrees of freedom nu0 = rank + nu0_extra must exceed rank - 1")
        ordinal_model.check_likelihood(self)

    @property
    def nu0(self) -> float:
        return float(self.rank) + float(self.hyper.nu0_extra)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @property
    def ordinal(self) -> bool:
        """Whether the likelihood is the ordered probit."""
        return self.likelihood == "ordinal"


class Params(NamedTuple):
    """One value of every model quantity (a MAP estimate or one posterior draw).

    Engines carry this as their state and posteriors stack it with leading
    ``(chain, draw)`` axes. In the ``"fixed"`` prior mode the hyperparameter
    fields hold the fixed constants; with ``"empirical"`` offsets
    ``item_offsets`` holds the movie means.

    Attributes
    ----------
    user_factors : array, shape (num_users, rank)
    item_factors : array, shape (num_items, rank)
    item_offsets : array, shape (num_items,)
    noise_precision : array, shape ()
    user_mean : array, shape (rank,)
    user_precision : array, shape (rank, rank)
    item_mean : array, shape (rank,)
    item_precision : array, shape (rank, rank)
    offset_mean : array, shape ()
    offset_precision : array, shape ()
    user_offsets : array, shape (num_users,), or None
        ``b_u``; None unless ``config.user_offsets`` (the plain model has no
        such field, so its arrays, files and results are unchanged).
    user_offset_precision : array, shape (), or None
        ``tau_b``; None unless ``config.user_offsets``.
    user_link, item_link : array, shape (F_u, rank) / (F_v, rank), or None
        The link matrices ``B`` of Macau's prior (:class:`FeatureSpec`); None
        unless the config has ``user_features`` / ``item_features``. With them
        ``user_mean`` / ``item_mean`` are ``mu`` of ``mu + B^T x``.
    user_link_precision, item_link_precision : array, shape (G,), or None
        ``lambda_g`` per group of feature columns.
    cutpoints : array, shape (K - 1,), or None
        The ordinal likelihood's cut points, ``cutpoints[0] = 0``; None
        unless ``config.likelihood == "ordinal"`` (then ``noise_precision``
        holds the fixed 1.0).

    Fields that are None are empty pytree nodes: ``jax.tree.map`` (and so
    every transform) skips them. Convert a whole Params with
    ``jax.tree.map(fn, params)``, never field by field.
    """

    user_factors: Array
    item_factors: Array
    item_offsets: Array
    noise_precision: Array
    user_mean: Array
    user_precision: Array
    item_mean: Array
    item_precision: Array
    offset_mean: Array
    offset_precision: Array
    user_offsets: Array | None = None
    user_offset_precision: Array | None = None
    user_link: Array | None = None
    user_link_precision: Array | None = None
    item_link: Array | None = None
    item_link_precision: Array | None = None
    cutpoints: Array | None = None


# Fields that exist only when the config switches them on (None otherwise): name -> switch.
OPTIONAL_FIELDS = {
    "user_offsets": lambda config: config.user_offsets,
    "user_offset_precision": lambda config: config.user_offsets,
    "user_link": lambda config: config.user_features is not None,
    "user_link_precision": lambda config: config.user_features is not None,
    "item_link": lambda config: config.item_features is not None,
    "item_link_precision": lambda config: config.item_features is not None,
    "cutpoints": lambda config: config.ordinal,
}


def present_fields(config: ModelConfig) -> tuple[str, ...]:
    """Fields of :class:`Params` that hold arrays under ``config``."""
    return tuple(name for name in Params._fields if name not in OPTIONAL_FIELDS or OPTIONAL_FIELDS[name](config))


# Sites of the NumPyro model that are latent in each mode.
def latent_sites(config: ModelConfig) -> tuple[str, ...]:
    sites = ["user_factors", "item_factors"]
    if config.offsets == "estimated":
        sites.append("item_offsets")
    if config.priors == "hyper":
        sites += ["user_mean", "user_precision", "item_mean", "item_precision", "noise_precision"]
        if config.offsets == "estimated":
            sites += ["offset_mean", "offset_precision"]
    elif config.fixed.learns_means:
        sites += ["user_mean", "item_mean"]
    if config.user_offsets:
        sites.append("user_offsets")
        if config.priors == "hyper":
            sites.append("user_offset_precision")
    for side in ("user", "item"):
        if getattr(config, f"{side}_features") is not None:
            sites.append(f"{side}_link")
            if config.priors == "hyper":
                sites.append(f"{side}_link_precision")
    if config.ordinal:  # the noise precision is fixed at 1; the cut points are latent
        sites = [name for name in sites if name != "noise_precision"] + ["cutpoints"]
    return tuple(sites)


def fixed_values(data: ModelData, config: ModelConfig) -> dict:
    """Values of the non-latent fields of :class:`Params` in this mode."""
    d = config.rank
    dtype = data.rating.dtype
    out = {}
    if config.priors == "fixed":
        f = config.fixed
        out.update(
            user_mean=jnp.zeros(d, dtype),
            user_precision=f.user_precision * jnp.eye(d, dtype=dtype),
            item_mean=jnp.zeros(d, dtype),
            item_precision=f.item_precision * jnp.eye(d, dtype=dtype),
            noise_precision=jnp.asarray(f.noise_precision, dtype),
        )
        if config.offsets == "estimated":
            out.update(offset_mean=data.global_mean, offset_precision=jnp.asarray(f.offset_precision, dtype))
        if config.user_offsets:
            out.update(user_offset_precision=jnp.asarray(f.user_offset_precision, dtype))
        for side in ("user", "item"):
            spec = getattr(config, f"{side}_features")
            if spec is not None:
                out[f"{side}_link_precision"] = jnp.asarray(spec.fixed_precisions(), dtype)
    if config.offsets == "empirical":
        out.update(
            item_offsets=data.empirical_offsets,
            offset_mean=data.global_mean,
            offset_precision=data.empirical_offset_precision,
        )
    if config.ordinal:
        out.update(noise_precision=jnp.ones((), dtype))
    return out


def params_from_sites(sites: dict, data: ModelData, config: ModelConfig) -> Params:
    """Complete a dict of latent site values into :class:`Params`.

    Works with leading batch axes on the site values (e.g. ``(chain, draw)``)
    only for the latent fields; fixed fields are broadcast to match.
    """
    fixed = fixed_values(data, config)
    batch = jnp.shape(sites["user_factors"])[:-2]
    full = {}
    for name in present_fields(config):
        if name in sites:
            full[name] = jnp.asarray(sites[name])
        else:
            value = jnp.asarray(fixed[name])
            full[name] = jnp.broadcast_to(value, batch + value.shape)
    return Params(**full)


def user_row_prior(params: Params) -> tuple[Array, Array]:
    """Prior precision and mean of a user's row in a row update (Gibbs, ALS, fold-in).

    The row is ``L_u ~ N(mu_L, Lambda_L^-1)``, or with user offsets the
    ``(rank + 1)``-row ``(L_u, b_u) ~ N((mu_L, 0), blockdiag(Lambda_L, tau_b)^-1)``,
    whose design rows are :func:`user_design`.

    Parameters
    ----------
    params : Params
        One draw, or draws with leading axes.

    Returns
    -------
    precision : array, shape (..., k, k)
    mean : array, shape (..., k)
        ``k = rank`` or ``rank + 1``.
    """
    if params.user_offsets is None:
        return params.user_precision, params.user_mean
    precision, mean = params.user_precision, params.user_mean
    d = precision.shape[-1]
    out = jnp.zeros(precision.shape[:-2] + (d + 1, d + 1), precision.dtype)
    out = out.at[..., :d, :d].set(precision).at[..., d, d].set(params.user_offset_precision)
    return out, jnp.concatenate([mean, jnp.zeros(mean.shape[:-1] + (1,), mean.dtype)], axis=-1)


def user_design(params: Params) -> Array:
    """Design rows of the users' row update: ``R_v``, or ``(R_v, 1)`` with user offsets.

    Returns
    -------
    array, shape (..., num_items, k)
    """
    factors = params.item_factors
    if params.user_offsets is None:
        return factors
    return jnp.concatenate([factors, jnp.ones(factors.shape[:-1] + (1,), factors.dtype)], axis=-1)


def augmented_factors(params: Params, user_index=None) -> tuple[Array, Array]:
    """User and movie factors with the user offsets folded in as one more column.

    ``L' = (L, b)`` and ``R' = (R, 1)``, so that ``L'_u . R'_v + m_v`` is the
    model's mean ``L_u . R_v + m_v + b_u``: code that scores many pairs by
    matrix products needs no separate offset term. Without user offsets the
    factors themselves.

    Parameters
    ----------
    params : Params
        One draw, or draws with leading axes.
    user_index : int array, shape (n,), optional
        Only these users' rows (all users by default).

    Returns
    -------
    user_factors : array, shape (..., num_users or n, k)
    item_factors : array, shape (..., num_items, k)
        ``k = rank``, or ``rank + 1`` with user offsets.
    """
    users = params.user_factors if user_index is None else params.user_factors[..., user_index, :]
    if params.user_offsets is None:
        return users, params.item_factors
    offsets = params.user_offsets if user_index is None else params.user_offsets[..., user_index]
    return jnp.concatenate([users, offsets[..., None]], axis=-1), user_design(params)


def predict_mean(params: Params, user_index: Array, item_index: Array) -> Array:
    """Mean rating ``<L_u, R_v> + m_v (+ b_u)`` for index pairs, shape (n,)."""
    return pair_mean(params.user_factors, params.item_factors, params.item_offsets, user_index, item_index,
                     params.user_offsets)


# The gradient of ``pair_mean`` goes through a dense n x m matrix when the rank
# is at least DENSE_GRAD_MIN_RANK, the matrix has at most DENSE_GRAD_MAX_CELLS
# cells and the pairs fill at least 1 / DENSE_GRAD_MAX_FILL of it. Measured on
# the MovieLens-100K u1 training pairs (943 x 1650, 80k pairs, 2 CPU cores,
# ``python benchmarks/pair_mean_grad.py``): the transpose of the row gathers
# is a scatter-add of nnz x D values, which XLA:CPU runs element by element
# (36 ms at rank 100, 11 ms at 50, 5.5 ms at 30); the dense form scatters nnz
# scalars and does two GEMMs (7.3, 4.8 and 3.2 ms). At ranks 10 and 20 the
# gathers were faster (dense / gathers 1.15 and 1.39).
DENSE_GRAD_MIN_RANK = 30
DENSE_GRAD_MAX_CELLS = 4_000_000
DENSE_GRAD_MAX_FILL = 64
# With the ratings' pair layouts (``layouts``, :func:`with_pair_layouts`) the
# gradient sums each row's segments instead (:func:`bayesmf.layout.row_sums`),
# whatever the grid's size. Per L-BFGS iteration of the MAP objective on 2 CPU
# cores, scatter-adds against segments, two alternating rounds
# (``benchmarks/pair_mean_grad.py --loop``): ML-1M shape (1M ratings) 117/132
# -> 63/70 ms at rank 32, 62/61 -> 44/54 at rank 16, 47/48 -> 41/38 at rank
# 10; MovieLens-100K shape 6.0/6.6 -> 5.3/5.7 ms at rank 16, 5.7/4.8 ->
# 4.6/4.9 at rank 10 (level). Where the dense form applies it is as fast or
# faster (u1, the gradient alone: 4.5 against 4.7 ms at rank 32, 4.6 against
# 10.4 at rank 64). The MAP engine attaches the layouts from this rank where
# the dense form does not apply.
SEGMENT_GRAD_MIN_RANK = 16


def dense_gradient_applies(num_users: int, num_items: int, rank: int, nnz: int) -> bool:
    """Whether :func:`pair_mean` without layouts takes its gradient through the dense user x movie matrix."""
    cells = num_users * num_items
    return rank >= DENSE_GRAD_MIN_RANK and cells <= DENSE_GRAD_MAX_CELLS and cells <= DENSE_GRAD_MAX_FILL * nnz


def pair_mean(user_factors: Array, item_factors: Array, item_offsets: Array, user_index: Array, item_index: Array,
              user_offsets: Array | None = None, layouts: PairLayouts | None = None) -> Array:
    """``<L_u, R_v> + m_v (+ b_u)`` from the arrays themselves, shape (n,).

    The row dot products are a matvec with ones, not ``jnp.sum(axis=-1)``:
    XLA:CPU reduces a short last axis element by element; the matvec took
    0.5 ms against 1.2 ms for the 80k training pairs of MovieLens-100K at
    rank 10 (``benchmarks/gibbs_sweep_parts.py``). The gradient goes
    through ``layouts`` when given, else at high rank on a small user x
    movie grid through a dense matrix (see :data:`DENSE_GRAD_MIN_RANK`); the
    value is the same either way.

    Parameters
    ----------
    user_factors : array, shape (num_users, D)
    item_factors : array, shape (num_items, D)
    item_offsets : array, shape (num_items,)
    user_index, item_index : int array, shape (n,)
        In range (not checked).
    user_offsets : array, shape (num_users,), optional
        ``b_u`` (models with user offsets); None adds nothing.
    layouts : PairLayouts, optional
        Built on these very index arrays (:func:`with_pair_layouts`; their
        sizes are checked).
    """
    if user_offsets is not None:
        return pair_mean(user_factors, item_factors, item_offsets, user_index, item_index,
                         layouts=layouts) + user_offsets[user_index]
    (num_users, rank), num_items = user_factors.shape, item_factors.shape[0]
    if layouts is not None:
        built = (layouts.users.num_rows.shape[0], layouts.items.num_rows.shape[0], layouts.nnz.shape[0])
        if built[0] % num_users or built[1] % num_items or built[2] != user_index.shape[0]:
            raise ValueError(f"pair layouts built for (users, items, ratings) {built}, used with "
                             f"{(num_users, num_items, user_index.shape[0])}: rebuild them (with_pair_layouts)")
        return _pair_mean_segment_grad(user_factors, item_factors, item_offsets, user_index, item_index, layouts)
    if dense_gradient_applies(num_users, num_items, rank, user_index.shape[0]):
        return _pair_mean_dense_grad(user_factors, item_factors, item_offsets, user_index, item_index)
    return _pair_mean(user_factors, item_factors, item_offsets, user_index, item_index)


def _pair_mean(user_factors, item_factors, item_offsets, user_index, item_index):
    products = user_factors[user_index] * item_factors[item_index]
    return products @ jnp.ones(products.shape[-1], products.dtype) + item_offsets[item_index]


def _no_cotangent(tree):
    """Zero cotangents (``float0``) of integer arguments of a ``custom_vjp``."""
    return jax.tree_util.tree_map(lambda x: np.zeros(x.shape, jax.dtypes.float0), tree)


@jax.custom_vjp
def _pair_mean_dense_grad(user_factors, item_factors, item_offsets, user_index, item_index):
    return _pair_mean(user_factors, item_factors, item_offsets, user_index, item_index)


def _pair_mean_fwd(user_factors, item_factors, item_offsets, user_index, item_index):
    value = _pair_mean(user_factors, item_factors, item_offsets, user_index, item_index)
    return value, (user_factors, item_factors, item_offsets, user_index, item_index)


def _pair_mean_bwd(residuals, g):
    user_factors, item_factors, item_offsets, user_index, item_index = residuals
    grid = jnp.zeros((user_factors.shape[0], item_factors.shape[0]), g.dtype).at[user_index, item_index].add(g)
    return (
        (grid @ item_factors).astype(user_factors.dtype),
        (grid.T @ user_factors).astype(item_factors.dtype),
        jax.ops.segment_sum(g, item_index, item_offsets.shape[0]).astype(item_offsets.dtype),
        *_no_cotangent((user_index, item_index)),
    )


_pair_mean_dense_grad.defvjp(_pair_mean_fwd, _pair_mean_bwd)


def _block_sums(layout, design, g, num_rows):
    """:func:`bayesmf.layout.row_sums` over a pair layout's blocks, summed per row, shape (num_rows, d)."""
    sums = row_sums(layout, design, g)
    return sums.reshape(-1, num_rows, sums.shape[-1]).sum(axis=0)


@jax.custom_vjp
def _pair_mean_segment_grad(user_factors, item_factors, item_offsets, user_index, item_index, layouts):
    return _pair_mean(user_factors, item_factors, item_offsets, user_index, item_index)


def _segment_fwd(user_factors, item_factors, item_offsets, user_index, item_index, layouts):
    value = _pair_mean(user_factors, item_factors, item_offsets, user_index, item_index)
    return value, (user_factors, item_factors, user_index, item_index, layouts)


def _segment_bwd(residuals, g):
    user_factors, item_factors, user_index, item_index, layouts = residuals
    # Each movie's design row [L_u, 1]: the last column sums g, the offsets' gradient.
    ones = jnp.ones((user_factors.shape[0], 1), user_factors.dtype)
    item_sums = _block_sums(layouts.items, jnp.concatenate([user_factors, ones], axis=1), g, item_factors.shape[0])
    return (
        _block_sums(layouts.users, item_factors, g, user_factors.shape[0]),
        item_sums[:, :-1],
        item_sums[:, -1],
        *_no_cotangent((user_index, item_index, layouts)),
    )


_pair_mean_segment_grad.defvjp(_segment_fwd, _segment_bwd)


def numpyro_model(data: ModelData, config: ModelConfig, observed: bool = True):
    """The NumPyro model function: the one definition of the log joint.

    Parameters
    ----------
    data : ModelData
        Training ratings. With ``observed=False`` the ratings are drawn (prior
        predictive), which simulation-based calibration uses.
    config : ModelConfig
    observed : bool
        Condition on ``data.rating``.

    Sites: ``user_factors`` (num_users, rank), ``item_factors``
    (num_items, rank), ``item_offsets`` (num_items,) when estimated,
    hyperparameters when ``priors == "hyper"`` (with fixed priors, only
    ``user_mean`` and ``item_mean`` (rank,) when
    ``config.fixed.mean_precision > 0``), ``user_offsets`` (num_users,) and
    (hyper mode) ``user_offset_precision`` () when ``config.user_offsets``,
    and ``obs`` (nnz,). With ``likelihood="ordinal"``: no
    ``noise_precision`` (fixed at 1), ``cutpoints`` (K - 1,), and ``obs``
    the stars (``data.star``) under :class:`bayesmf.ordinal.OrderedProbit`.
    """
    d = config.rank
    dtype = data.rating.dtype
    num_users, num_items = data.num_users, data.num_items
    fixed = fixed_values(data, config)
    if config.priors == "hyper":
        h = config.hyper
        scale = h.w0_scale * jnp.eye(d, dtype=dtype)
        user_precision = numpyro.sample("user_precision", dist.Wishart(config.nu0, scale_matrix=scale))
        user_mean = numpyro.sample(
            "user_mean", dist.MultivariateNormal(jnp.zeros(d, dtype), precision_matrix=h.beta0 * user_precision)
        )
        item_precision = numpyro.sample("item_precision", dist.Wishart(config.nu0, scale_matrix=scale))
        item_mean = numpyro.sample(
            "item_mean", dist.MultivariateNormal(jnp.zeros(d, dtype), precision_matrix=h.beta0 * item_precision)
        )
        if config.ordinal:  # fixed at 1: the latent scale's unit
            noise_precision = fixed["noise_precision"]
        else:
            noise_precision = numpyro.sample("noise_precision", dist.Gamma(h.noise_shape, h.noise_rate))
        if config.offsets == "estimated":
            offset_mean = numpyro.sample("offset_mean", dist.Normal(data.global_mean, h.offset_mean_sd))
            offset_precision = numpyro.sample("offset_precision", dist.Gamma(h.offset_shape, h.offset_rate))
    else:
        user_mean, user_precision = fixed["user_mean"], fixed["user_precision"]
        item_mean, item_precision = fixed["item_mean"], fixed["item_precision"]
        f = config.fixed
        if f.learns_means:
            user_mean = numpyro.sample(
                "user_mean",
                dist.Normal(jnp.zeros(d, dtype), (f.mean_precision * f.user_precision) ** -0.5).to_event(1),
            )
            item_mean = numpyro.sample(
                "item_mean",
                dist.Normal(jnp.zeros(d, dtype), (f.mean_precision * f.item_precision) ** -0.5).to_event(1),
            )
        noise_precision = fixed["noise_precision"]
        if config.offsets == "estimated":
            offset_mean, offset_precision = fixed["offset_mean"], fixed["offset_precision"]

    user_offsets = None
    if config.user_offsets:
        if config.priors == "hyper":
            user_offset_precision = numpyro.sample(
                "user_offset_precision", dist.Gamma(config.hyper.user_offset_shape, config.hyper.user_offset_rate)
            )
        else:
            user_offset_precision = fixed["user_offset_precision"]
    user_loc = _link_prior("user", config, data.user_features, data.num_items, user_mean, user_precision, fixed)
    item_loc = _link_prior("item", config, data.item_features, data.num_users, item_mean, item_precision, fixed)
    with numpyro.plate("users", num_users, dim=-1):
        user_factors = numpyro.sample("user_factors", _gaussian(user_loc, user_precision, _scalar(config, "user")))
        if config.user_offsets:
            user_offsets = numpyro.sample(
                "user_offsets", dist.Normal(jnp.zeros((), dtype), jax.lax.rsqrt(user_offset_precision))
            )
    with numpyro.plate("items", num_items, dim=-1):
        item_factors = numpyro.sample("item_factors", _gaussian(item_loc, item_precision, _scalar(config, "item")))
        if config.offsets == "estimated":
            item_offsets = numpyro.sample(
                "item_offsets", dist.Normal(offset_mean, jax.lax.rsqrt(offset_precision))
            )
        else:
            item_offsets = fixed["item_offsets"]
    mean = pair_mean(user_factors, item_factors, item_offsets, data.user_index, data.item_index, user_offsets,
                     data.pair_layouts)
    if config.ordinal:
        ordinal_model.observe_stars(mean, data.star, data.nnz, config, observed)
        return
    with numpyro.plate("ratings", data.nnz, dim=-1):
        numpyro.sample("obs", dist.Normal(mean, jax.lax.rsqrt(noise_precision)), obs=data.rating if observed else None)


def _link_prior(side: str, config: ModelConfig, features, num_other: int, mean, precision, fixed: dict):
    """The prior mean of one side's factors: ``mu`` (no features), or ``mu + X B`` with Macau's
    ``b_f ~ N(0, (lambda_g(f) Lambda)^-1)`` and ``lambda_g ~ Gamma`` (fixed in the ``"fixed"`` mode).

    Returns an array of shape (rank,) or (num_rows, rank).
    """
    spec = getattr(config, f"{side}_features")
    if spec is None:
        return mean
    if features is None:
        raise ValueError(f"config.{side}_features is set but the data has no {side} feature rows (with_features)")
    dtype = features.dtype
    if config.priors == "hyper":
        link_precision = numpyro.sample(
            f"{side}_link_precision",
            dist.Gamma(jnp.full(spec.num_groups, spec.link_shape, dtype), spec.link_rate).to_event(1),
        )
    else:
        link_precision = fixed[f"{side}_link_precision"]
    column_precision = link_precision[jnp.asarray(spec.groups(num_other))]
    scalar = _scalar(config, side)
    with numpyro.plate(f"{side}_feature_columns", features.shape[1], dim=-1):
        link = numpyro.sample(f"{side}_link", _gaussian(
            jnp.zeros(config.rank, dtype), column_precision[:, None, None] * precision,
            None if scalar is None else column_precision[:, None] * scalar))
    return mean + features @ link


def _scalar(config: ModelConfig, side: str):
    """The fixed mode's factor precision of one side (its precision matrix is this times I); None with hyperpriors."""
    return getattr(config.fixed, f"{side}_precision") if config.priors == "fixed" else None


def _gaussian(loc, precision, scalar=None):
    """``N(loc, precision^-1)`` over the last axis; where ``precision`` is ``scalar I`` (``scalar`` given, broadcasting
    against ``loc``'s batch axes with a trailing 1), as independent Normals: the same density without the
    Cholesky factor and the batched triangular solves of ``MultivariateNormal``, which were ~60 of ~68 ms of a
    MAP value-and-gradient on MovieLens-100K (XLA:CPU) and most of the compile of :func:`log_joint`."""
    if scalar is None:
        return dist.MultivariateNormal(loc, precision_matrix=precision)
    return dist.Normal(loc, jnp.asarray(scalar, jnp.result_type(loc)) ** -0.5).to_event(1)


def log_joint(params: Params, data: ModelData, config: ModelConfig) -> Array:
    """Log joint density of the latent sites of ``params`` (constrained space).

    The value comes from :func:`numpyro_model` itself, so every engine scores
    states against the same model.
    """
    from numpyro.infer.util import log_density

    values = {name: getattr(params, name) for name in latent_sites(config)}
    with numpyro.validation_enabled(False):  # NumPyro's support checks: ops in every program, never raised in one
        value, _ = log_density(numpyro_model, (data, config), {}, values)
    return value
