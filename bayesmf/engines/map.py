"""MAP estimation of the fixed-precision (PMF) model: its initialization and the solvers.

This is an engine: it finds the mode at given precisions and nothing else.
Choosing the precisions on validation ratings, the plug-in noise estimate and
the fit on :class:`bayesmf.data.Ratings` live in :mod:`bayesmf.tuning`.

The objective, the model's negative log joint per rating at fixed precisions, and
its compiled form live in :mod:`bayesmf.engines.map_objective`.

With ``config.fixed.mean_precision = beta > 0`` the factor
penalties are centred on learned means, ``lambda_L ||L - 1 mu_L^T||^2 +
beta lambda_L ||mu_L||^2`` (and the same for ``R``), and ``mu_L``, ``mu_R``
are optimized with the factors; :class:`bayesmf.BayesMF` does this by
default for MAP (``beta = 2``): on MovieLens-100K u1 at rank 10 it takes the
tuned test RMSE from 0.951 to 0.922 (``benchmarks/map_ml100k.py``).

Solvers:

``"lbfgs"`` (default)
    :mod:`bayesmf.engines.lbfgs`: optax's L-BFGS directions
    (``optax.scale_by_lbfgs``) and a weak Wolfe line search whose trial
    points the one ``jax.lax.while_loop`` evaluates at one call site (optax's
    zoom line search compiles two more copies of the objective's gradient),
    over one flat vector of the sites (their dict
    for a user's ``optimizer``), in coordinates divided by their Jacobi
    scales (:func:`bayesmf.engines.map_objective.jacobi_scales`: each
    entry's curvature from its row's ratings and its prior, the learned
    means' from their tie to every row, a link row's from the ratings of the
    rows its feature reaches), so that one movie's rating and another's
    thousands, a mean and a row, or a link held near 0 by a tuning point's
    precision and a factor, are on one scale for L-BFGS's ten curvature
    pairs.
``"adam"``
    Any optax ``GradientTransformation`` (default ``optax.adam``) in the same
    loop.
``"als"``
    Alternating exact conditional modes: the blocks Gibbs draws
    (:mod:`bayesmf.engines.gibbs`), with :func:`bayesmf.conjugate.row_mean`
    taking their mean instead: users given movies and offsets, then movies
    jointly with their offsets (design ``[L_u, 1]``, prior
    ``blockdiag(lambda_R I, tau_m)`` with mean ``[0, rbar]``) given users.
    Each half-step solves its block exactly, so the objective never increases.

Every loop stops at ``max_iters``, when the gradient norm of ``f`` falls
below ``tol``, or when ``f`` fell by less than ``ftol`` per iteration over the
last :data:`FTOL_WINDOW` iterations. There is no host synchronization inside
a fit.

Precisions are data of the compiled loop, not constants baked into it
(:func:`bayesmf.engines.map_objective.objective_fn`): one compilation serves
every point of a tuning grid.

The engine's pieces: :func:`init` (the loop's :class:`MapState` before its
first step), :func:`make_solver` (the compiled loop for one data set, any
precisions), :func:`solve` (one fit of it from a starting point) and
:func:`make_result`; :func:`fit` composes them. :func:`bayesmf.tuning.tune`
runs one :class:`Solver` at many precisions, warm-starting each fit.

Examples
--------
>>> import jax
>>> from bayesmf.engines import map as map_engine
>>> from bayesmf.model import FixedPriors, ModelConfig, make_model_data
>>> data = make_model_data([0, 0, 1, 2], [0, 1, 1, 0], [4.0, 3.0, 5.0, 2.0], 3, 2)
>>> config = ModelConfig(rank=2, priors="fixed", fixed=FixedPriors(5.0, 5.0, 1.0, 1.0))
>>> result = map_engine.fit(jax.random.PRNGKey(0), data, config)
>>> result.draws.user_factors.shape
(1, 1, 3, 2)
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from tqdm.auto import tqdm

from bayesmf import ordinal
from bayesmf.conjugate import row_mean
from bayesmf.engines import lbfgs
from bayesmf.engines.common import EngineResult, to_numpy
from bayesmf.engines.map_objective import (
    check_config,
    from_optimizer,
    jacobi_scales,
    neg_log_joint,
    objective_fn,
    precision_vector,
    scaled,
    to_optimizer,
    unit_config,
)
from bayesmf.layout import build_layout, gram_and_rhs
from bayesmf.memory import compiler_options, to_device
from bayesmf.model import (
    SEGMENT_GRAD_MIN_RANK,
    FixedPriors,
    ModelConfig,
    ModelData,
    Params,
    dense_gradient_applies,
    fixed_values,
    latent_sites,
    params_from_sites,
    predict_mean,
    with_pair_layouts,
)

Array = jax.Array

SOLVERS = ("lbfgs", "adam", "als")

# Iteration caps per solver. On MovieLens-100K at rank 10 (learned means,
# ftol 1e-5), L-BFGS stops after ~200 iterations from a random start and
# 30-80 warm-started (~450 and 40-110 without the Jacobi scales); an ALS
# sweep solves whole blocks exactly and needs ~100 sweeps cold, 20-60 warm;
# Adam needs thousands of first-order steps.
DEFAULT_MAX_ITERS = {"lbfgs": 1000, "adam": 5000, "als": 300}
# Stop when the gradient norm of the 1/n-scaled objective is below TOL ...
DEFAULT_TOL = 1e-5
# ... or when the objective fell by less than FTOL per iteration on average
# over the last FTOL_WINDOW iterations (a window, because a single short
# line-search step or a float32 tie would stop a per-iteration test early).
# The objective is per rating and summed in float32; without the Gaussian
# normalizers (map_objective.objective_fn) it is ~0.5-2, so its round-off is
# ~1e-7 and FTOL = 1e-7
# amounts to "until float32 stops resolving progress" (on MovieLens-100K the
# validation RMSE is then within ~1e-4 of a fit run to a complete stall).
DEFAULT_FTOL = 1e-7
FTOL_WINDOW = 10
# Adam's default step for factors of size O(0.1-1) under the scaled objective.
DEFAULT_ADAM_LEARNING_RATE = 0.01
# Standard deviation of the random initial factors: small, to start near the
# prior mode, but away from the saddle point at L = R = 0.
INIT_SCALE = 0.1


class MapState(NamedTuple):
    """Carry of the optimization loop.

    Attributes
    ----------
    latent : dict of str -> array
        The latent sites (``user_factors`` (num_users, rank),
        ``item_factors`` (num_items, rank), ``item_offsets`` (num_items,)
        when estimated); inside the compiled loop of an optax solver, their
        flat vector in the optimizer's coordinates.
    opt_state : optax state or None
        None for ALS.
    count : int array, shape ()
        Iterations done.
    value : array, shape ()
        Objective at ``latent`` (for L-BFGS / Adam: at the point the last
        gradient was taken).
    grad_norm : array, shape ()
        Norm of the last gradient (inf for ALS, which takes none).
    trace : array, shape (max_iters,)
        Objective per iteration (NaN after the last).
    """

    latent: dict
    opt_state: Any
    count: Array
    value: Array
    grad_norm: Array
    trace: Array


class MapContext(NamedTuple):
    """Device-side data a fit needs (arguments of the compiled loop); ``weights``: see :func:`make_solver`."""

    data: ModelData
    user_layout: Any
    item_layout: Any
    weights: Any = None


def check_solver(solver: str) -> None:
    """Raise ``ValueError`` unless ``solver`` is one of :data:`SOLVERS`."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")


# -- initialization ----------------------------------------------------------------


def init_latent(rng_key: Array, data: ModelData, config: ModelConfig, scale: float = INIT_SCALE) -> dict:
    """Small random factors, offsets at the empirical movie means.

    Parameters
    ----------
    rng_key : jax.Array
    data : ModelData
    config : ModelConfig
    scale : float
        Standard deviation of the initial factors.

    Returns
    -------
    dict of str -> array
        The latent sites of ``config``.
    """
    users, items = _initial_factors(rng_key, data.num_users, data.num_items, config.rank, data.rating.dtype, float(scale))
    return _latent_with(users, items, data, config)


def _latent_with(users: Array, items: Array, data: ModelData, config: ModelConfig) -> dict:
    """:func:`init_latent`'s sites around given factors (num_users, rank), (num_items, rank)."""
    dtype = data.rating.dtype
    latent = dict(user_factors=users, item_factors=items)
    if config.offsets == "estimated":
        latent["item_offsets"] = data.empirical_offsets
    if config.fixed.learns_means:
        latent["user_mean"] = latent["item_mean"] = jnp.zeros(config.rank, dtype)
    if config.user_offsets:
        latent["user_offsets"] = jnp.zeros(data.num_users, dtype)
    for side in ("user", "item"):
        features = getattr(data, f"{side}_features")
        if getattr(config, f"{side}_features") is not None and features is not None:
            latent[f"{side}_link"] = jnp.zeros((features.shape[1], config.rank), dtype)
    if config.ordinal:  # cut points at their prior centre, c_k = k exp(m) (as Gibbs starts)
        latent["cutpoints"] = ordinal.cuts_from_free(
            jnp.full(config.num_stars - 2, config.cutpoint_prior.log_increment_mean, dtype))
    return latent


def _initial_factors(rng_key: Array, num_users: int, num_items: int, rank: int, dtype, scale: float):
    """``scale`` times standard normals, (num_users, rank) and (num_items, rank), drawn by NumPy from
    a generator seeded with the key's data (the same key, the same start). Not ``jax.random``: its
    threefry bits compiled for 0.75-1.07 s on the 2-core CPU, a tenth of a tuned MAP fit on
    MovieLens-100K u1 (8-10 s), for a start that needs no device program."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(rng_key)).ravel())
    draw = np.float32 if np.dtype(dtype) == np.float32 else np.float64  # the dtypes NumPy draws in
    users = rng.standard_normal((num_users, rank), dtype=draw) * draw(scale)
    items = rng.standard_normal((num_items, rank), dtype=draw) * draw(scale)
    return jnp.asarray(users, dtype), jnp.asarray(items, dtype)


def _latent_from(init_params, data: ModelData, config: ModelConfig) -> dict:
    """Latent sites from a Params (optionally with leading (1, 1) axes) or a dict."""
    if isinstance(init_params, Params):
        init_params = init_params._asdict()
    latent = {}
    factors = [jax.ShapeDtypeStruct((n, config.rank), data.rating.dtype) for n in (data.num_users, data.num_items)]
    shapes = jax.eval_shape(lambda u, v: _latent_with(u, v, data, config), *factors)  # the sites' shapes
    for name in latent_sites(config):
        if name not in init_params:
            raise ValueError(f"init_params lacks the latent site {name!r}")
        value = jnp.asarray(init_params[name], data.rating.dtype)
        expected = shapes[name].shape
        value = value.reshape(value.shape[-len(expected):]) if value.size == math.prod(expected) else value
        if value.shape != expected:
            raise ValueError(f"init_params[{name!r}] has shape {tuple(value.shape)}, expected {expected}")
        latent[name] = value
    return latent


def _start_latent(rng_key: Array, data: ModelData, config: ModelConfig, init_params=None) -> dict:
    return init_latent(rng_key, data, config) if init_params is None else _latent_from(init_params, data, config)


def init(
    rng_key: Array,
    data: ModelData,
    config: ModelConfig,
    *,
    solver: str = "lbfgs",
    optimizer=None,
    max_iters: int | None = None,
    init_params=None,
) -> MapState:
    """The state of a solver's loop before its first step.

    :func:`fit` (through :func:`make_solver` and :func:`solve`) builds the
    same state inside its compiled loop; this is the engine's ``init`` for
    callers that inspect or drive the state themselves.

    Parameters
    ----------
    rng_key : jax.Array
        Draws the initial factors (ignored with ``init_params``).
    data : ModelData
    config : ModelConfig
        ``priors="fixed"``.
    solver, optimizer, max_iters, init_params
        As in :func:`fit`.

    Returns
    -------
    MapState
        ``latent`` from :func:`init_latent` (or ``init_params``),
        ``opt_state`` from ``optimizer.init`` (None for ALS), ``count`` 0,
        ``value`` and ``grad_norm`` inf, ``trace`` NaN, shape (max_iters,).

    Examples
    --------
    >>> state = init(jax.random.PRNGKey(0), data, config)  # doctest: +SKIP
    >>> state.latent["user_factors"].shape  # doctest: +SKIP
    """
    check_config(config)
    check_solver(solver)
    if solver == "als" and optimizer is not None:
        raise ValueError("solver='als' takes no optimizer (its steps are exact block solves)")
    latent = _start_latent(rng_key, data, config, init_params)
    optimizer = _default_optimizer(solver, optimizer)
    return _initial_state(latent, optimizer, _max_iters(solver, max_iters), data.rating.dtype)


# -- the solvers ---------------------------------------------------------------------


def _initial_state(latent: dict, optimizer, max_iters: int, dtype) -> MapState:
    """The loop's state before its first step (``optimizer`` None for ALS)."""
    inf = jnp.asarray(jnp.inf, dtype)
    return MapState(
        latent=latent,
        opt_state=None if optimizer is None else optimizer.init(latent),
        count=jnp.zeros((), jnp.int32),
        value=inf,
        grad_norm=inf,
        trace=jnp.full((max_iters,), jnp.nan, dtype),
    )


def _stop_thresholds(tol: float, ftol: float, dtype) -> Array:
    """``[tol, FTOL_WINDOW * ftol]``, shape (2,): data of the loop (one compilation, any tolerance)."""
    return jnp.asarray([tol, FTOL_WINDOW * ftol], dtype)


def _continuing(state: MapState, max_iters: int, thresholds: Array) -> Array:
    # Objective FTOL_WINDOW iterations ago (inf until there is one).
    k = state.count - 1 - FTOL_WINDOW
    earlier = jnp.where(k >= 0, state.trace[jnp.maximum(k, 0)], jnp.inf)
    moving = ~(earlier - state.value <= thresholds[1])
    going = (state.count == 0) | ((state.count < max_iters) & (state.grad_norm > thresholds[0]) & moving)
    return going & ~state.opt_state.failed if isinstance(state.opt_state, lbfgs.LbfgsState) else going


def _record(state: MapState, latent, opt_state, value, grad_norm) -> MapState:
    return MapState(
        latent=latent,
        opt_state=opt_state,
        count=state.count + 1,
        value=value,
        grad_norm=grad_norm,
        trace=state.trace.at[state.count].set(value),
    )


def _optax_step_fn(optimizer, objective, grad_norm=optax.tree_utils.tree_norm):
    """One step of optax's loop. A line search's state (``optax.lbfgs()``'s) holds the accepted
    point's value and gradient (the start's filled in before the loop): read there, as
    ``optax.value_and_grad_from_state`` without its fallback branch (another compiled copy of the
    gradient). ``grad_norm(grad)``: what the stopping rule reads (in the model's coordinates)."""
    plain = jax.value_and_grad(objective)

    def step(state: MapState) -> MapState:
        if _stores_value(state.opt_state):
            value, grad = _stored(state.opt_state)
        else:
            value, grad = plain(state.latent)
        if isinstance(optimizer, optax.GradientTransformationExtraArgs):
            updates, opt_state = optimizer.update(
                grad, state.opt_state, state.latent, value=value, grad=grad, value_fn=objective
            )
        else:
            updates, opt_state = optimizer.update(grad, state.opt_state, state.latent)
        latent = optax.apply_updates(state.latent, updates)
        return _record(state, latent, opt_state, value, grad_norm(grad))

    return step


def _stores_value(opt_state) -> bool:
    return opt_state is not None and optax.tree_utils.tree_get(opt_state, "value") is not None


def _lbfgs_step_fn(objective, grad_norm):
    """One trial point of :mod:`bayesmf.engines.lbfgs`: the objective's only call site in the loop,
    an iteration recorded when the point is accepted."""
    value_and_grad = jax.value_and_grad(objective)

    def step(state: MapState) -> MapState:
        point = lbfgs.trial_point(state.latent, state.opt_state)
        value, grad = value_and_grad(point)
        latent, opt_state, accepted = lbfgs.update(state.opt_state, state.latent, point, value, grad)
        recorded = _record(state, latent, opt_state, value, grad_norm(grad))
        return jax.tree.map(lambda a, b: jnp.where(accepted, a, b), recorded, state._replace(opt_state=opt_state))

    return step


def _stored(opt_state):
    return optax.tree_utils.tree_get(opt_state, "value"), optax.tree_utils.tree_get(opt_state, "grad")


def _als_step_fn(ctx: MapContext, config: ModelConfig, precisions: Array, objective):
    """One ALS sweep: every block set to its exact conditional mode."""
    data = ctx.data
    d, dtype = config.rank, data.rating.dtype
    lam_user, lam_item, tau, alpha = precisions[0], precisions[1], precisions[2], precisions[3]
    eye = jnp.eye(d, dtype=dtype)
    fixed_means = fixed_values(data, config)  # the model's prior means (0 for factors, rbar for offsets)
    learned = config.fixed.learns_means
    beta = config.fixed.mean_precision

    def step(state: MapState) -> MapState:
        latent = dict(state.latent)
        means = dict(fixed_means)
        if learned:
            means["user_mean"], means["item_mean"] = latent["user_mean"], latent["item_mean"]
        offsets = latent["item_offsets"] if config.offsets == "estimated" else data.empirical_offsets
        # Users | items, offsets.
        gram, rhs = gram_and_rhs(ctx.user_layout, latent["item_factors"], data.rating - offsets[data.item_index])
        users = row_mean(lam_user * eye, means["user_mean"], gram, rhs, alpha)
        latent["user_factors"] = users
        if learned:
            # mu_L | L: the mode of prod_u N(L_u; mu, 1/lambda) N(mu; 0, 1/(beta lambda)).
            latent["user_mean"] = jnp.sum(users, axis=0) / (data.num_users + beta)
            means["user_mean"] = latent["user_mean"]
        # Items (and offsets, as one block) | users.
        if config.offsets == "estimated":
            design = jnp.concatenate([users, jnp.ones((data.num_users, 1), dtype)], axis=1)
            prior_precision = jnp.zeros((d + 1, d + 1), dtype).at[:d, :d].set(lam_item * eye).at[d, d].set(tau)
            prior_mean = jnp.concatenate([means["item_mean"], jnp.reshape(means["offset_mean"], (1,))])
            gram, rhs = gram_and_rhs(ctx.item_layout, design, data.rating)
            block = row_mean(prior_precision, prior_mean, gram, rhs, alpha)
            latent["item_factors"], latent["item_offsets"] = block[:, :d], block[:, d]
        else:
            gram, rhs = gram_and_rhs(ctx.item_layout, users, data.rating - offsets[data.item_index])
            latent["item_factors"] = row_mean(lam_item * eye, means["item_mean"], gram, rhs, alpha)
        if learned:
            latent["item_mean"] = jnp.sum(latent["item_factors"], axis=0) / (data.num_items + beta)
        value = objective(latent)
        return _record(state, latent, None, value, jnp.asarray(jnp.inf, dtype))

    return step


def _run_fn(config: ModelConfig, solver: str, optimizer, max_iters: int, precondition: bool = True,
            flat: bool = True):
    """Build ``run(latent, precisions, ctx, thresholds) -> (MapState, value, grad_norm)``, jitted.

    ``precisions`` is ``[lambda_L, lambda_R, tau_m, alpha]`` and
    ``thresholds`` the stopping rule's (:func:`_stop_thresholds`), both
    traced, so one compilation serves every precision of a tuning grid and
    every tolerance on one data shape.
    ``config`` should be the unit-precision config (:func:`_unit_config`):
    the loop does not read its precisions, and the cache of
    :func:`_cached_run_fn` then serves every fit with the same static settings.
    ``flat``: the optax loop runs over one flat vector (the package's own
    optimizers: :func:`make_solver`); False keeps the sites' dict, which a
    user's optimizer may address site by site (``optax.multi_transform``,
    ``optax.masked``).
    """

    def run(latent, precisions, ctx, thresholds):
        # Jitted, so that the optimizer's several calls (its value and gradient, the line
        # search's, the final ones) trace the NumPyro model once, not five times: 1.1 s to
        # 0.2 s of tracing on MovieLens-100K u1, with the same iterates bit for bit.
        plain = objective_fn(ctx.data, config, precisions, ctx.weights)
        # The loop runs in the optimizer's coordinates (L - X B with features),
        # for L-BFGS divided by their Jacobi scales (jacobi_scales; none for ALS
        # and Adam, where the objective below is the plain one).
        start = to_optimizer(latent, ctx.data, config)
        scales = jacobi_scales(start, ctx.data, config, precisions) if solver == "lbfgs" and precondition else {}
        objective = jax.jit(lambda z: plain(scaled(z, scales)))

        def grad_norm(grad):  # the model's gradient norm: d f / d x = (d f / d z) / s
            return optax.tree_utils.tree_norm(scaled(grad, scales, -1.0))

        z0, unravel = scaled(start, scales, -1.0), lambda z: z
        if solver == "als":
            step = _als_step_fn(ctx, config, precisions, objective)
        else:
            if flat:
                # One flat vector: the optimizer's per-iteration work (L-BFGS's ten curvature pairs,
                # dot products, line-search updates) is then one array operation each, not one per site.
                z0, unravel = ravel_pytree(z0)
                of_sites = objective
                objective = jax.jit(lambda z: of_sites(unravel(z)))
            model_norm = lambda g: grad_norm(unravel(g))  # noqa: E731
            step = (_lbfgs_step_fn(objective, model_norm) if isinstance(optimizer, lbfgs.Lbfgs)
                    else _optax_step_fn(optimizer, objective, model_norm))
        state = _initial_state(z0, optimizer, max_iters, ctx.data.rating.dtype)
        if _stores_value(state.opt_state) and not isinstance(optimizer, lbfgs.Lbfgs):  # optax's line search
            value, grad = jax.value_and_grad(objective)(z0)
            state = state._replace(opt_state=optax.tree_utils.tree_set(state.opt_state, value=value, grad=grad))
        state = jax.lax.while_loop(lambda s: _continuing(s, max_iters, thresholds), step, state)
        if _stores_value(state.opt_state):  # a line-search optimizer's (ALS has no state)
            final_value, final_grad = _stored(state.opt_state)
        else:
            final_value, final_grad = jax.value_and_grad(objective)(state.latent)
        state = state._replace(latent=from_optimizer(scaled(unravel(state.latent), scales), ctx.data, config))
        return state, final_value, grad_norm(unravel(final_grad))

    return jax.jit(run, compiler_options=compiler_options() or None)  # no GEMM autotuning on a GPU


_cached_run_fn = functools.lru_cache(maxsize=32)(_run_fn)


@functools.cache
def _default_optimizer_for(solver: str):
    # One instance per solver, so that compiled loops are reused across fits.
    if solver == "lbfgs":
        return lbfgs.Lbfgs()
    if solver == "adam":
        return optax.adam(DEFAULT_ADAM_LEARNING_RATE)
    return None


def _default_optimizer(solver: str, optimizer):
    return _default_optimizer_for(solver) if optimizer is None else optimizer


def _pair_layouts_pay(data: ModelData, rank: int | None) -> bool:
    """Whether the loop's data should carry the ratings' pair layouts (:func:`bayesmf.model.with_pair_layouts`).

    Every step takes the gradient of the pair means; on the CPU from
    :data:`bayesmf.model.SEGMENT_GRAD_MIN_RANK` it is faster through the
    ratings' segments than through scatter-adds (L-BFGS iterations 1.7-1.9x
    faster at ML-1M and ML-10M shapes, rank 32), unless the grid is small
    enough for the dense form (:func:`bayesmf.model.dense_gradient_applies`).
    On an accelerator the scatter-adds stay: the segments were not measured
    there.
    """
    if rank is None or rank < SEGMENT_GRAD_MIN_RANK or data.pair_layouts is not None:
        return False
    dense = dense_gradient_applies(data.num_users, data.num_items, rank, data.nnz)
    return not dense and jax.default_backend() == "cpu"


def _build_context(
    data: ModelData, solver: str, layout: str = "auto", rank: int | None = None, weights=None
) -> MapContext:
    if solver != "als":
        if _pair_layouts_pay(data, rank):
            data = with_pair_layouts(data, rank)
        return MapContext(data=data, user_layout=None, item_layout=None, weights=weights)
    u = np.asarray(data.user_index)
    v = np.asarray(data.item_index)
    return MapContext(
        data=data,
        user_layout=build_layout(u, v, data.num_users, data.num_items, layout, width=rank),
        item_layout=build_layout(v, u, data.num_items, data.num_users, layout, width=None if rank is None else rank + 1),
    )


class Solver(NamedTuple):
    """A compiled loop for one data shape, reused across precisions (from :func:`make_solver`).

    Attributes
    ----------
    run : callable
        ``run(latent, precisions, ctx, thresholds) -> (MapState, value,
        grad_norm)``, jitted; ``precisions`` is ``[lambda_L, lambda_R, tau_m,
        alpha]``, ``thresholds`` ``[tol, FTOL_WINDOW * ftol]``.
    ctx : MapContext
    config : ModelConfig
    solver : str
    tol, ftol : float
        The stopping rule's (:func:`solve` can override ``ftol``).
    """

    run: Any
    ctx: MapContext
    config: ModelConfig
    solver: str
    tol: float = DEFAULT_TOL
    ftol: float = DEFAULT_FTOL


def _max_iters(solver: str, max_iters) -> int:
    if max_iters is None:
        return DEFAULT_MAX_ITERS[solver]
    if isinstance(max_iters, bool) or int(max_iters) != max_iters or max_iters <= 0:
        raise ValueError(f"max_iters must be a positive integer, got {max_iters!r}")
    return int(max_iters)


def make_solver(
    data: ModelData,
    config: ModelConfig,
    solver: str = "lbfgs",
    optimizer=None,
    max_iters: int | None = None,
    tol: float = DEFAULT_TOL,
    ftol: float = DEFAULT_FTOL,
    layout: str = "auto",
    weights=None,
    precondition: bool = True,
) -> Solver:
    """Compile (or reuse) the loop of one solver for one data set.

    The precisions are arguments of the compiled loop, not constants in it,
    so one :class:`Solver` serves every precision of a tuning grid
    (:func:`solve`); loops are cached across calls with the same static
    settings (a hashable ``optimizer``), and the data are arguments too, so
    two data sets of the same shapes share one compiled loop.

    Parameters
    ----------
    data : ModelData
    config : ModelConfig
        ``priors="fixed"`` (its precisions are not read here).
    solver, optimizer, max_iters, tol, ftol, layout
        As in :func:`fit`.
    weights : float array, shape (nnz,), optional
        Per-rating likelihood weights (``"lbfgs"``, ``"adam"``): the weighted
        sum over the weights' sum, so ratings of weight 0 drop out
        (:func:`bayesmf.tuning.tune` pads its ratings with them to the shapes
        of the refit on all ratings, which has weights 1: one compiled loop).
    precondition : bool
        ``"lbfgs"`` runs in Jacobi-scaled coordinates
        (:func:`bayesmf.engines.map_objective.jacobi_scales`): the same mode
        in a fraction of the iterations. False: the unscaled loop (for
        comparisons). No effect on ``"adam"`` and ``"als"``.

    Returns
    -------
    Solver
    """
    check_config(config)
    check_solver(solver)
    max_iters = _max_iters(solver, max_iters)
    if not (tol >= 0 and ftol >= 0):
        raise ValueError(f"tol and ftol must be >= 0, got {tol} and {ftol}")
    if solver == "als" and (optimizer is not None or config.user_offsets):
        raise ValueError("solver='als' takes no optimizer (its steps are exact block solves)" if optimizer is not None
                         else "solver='als' has no user-offset block; use 'lbfgs' or 'adam' with user_offsets=True")
    if solver == "als" and (config.user_features is not None or config.item_features is not None):
        raise ValueError("solver='als' has no link-matrix block; use 'lbfgs' or 'adam' with features")
    if solver == "als" and config.ordinal:
        raise ValueError("solver='als' has no ordinal likelihood; use 'lbfgs' or 'adam'")
    if weights is not None:
        if solver == "als":
            raise ValueError("weights need solver='lbfgs' or 'adam' (ALS's block solves take no rating weights)")
        weights = to_device(weights, data.rating.dtype)
        if weights.shape != (data.nnz,):
            raise ValueError(f"weights must have shape ({data.nnz},), got {tuple(weights.shape)}")
    # The flat vector for the package's own optimizers; a user's sees the sites' dict.
    flat = optimizer is None
    args = (unit_config(config), solver, _default_optimizer(solver, optimizer), int(max_iters), bool(precondition),
            flat)
    try:
        run = _cached_run_fn(*args)
    except TypeError:  # an unhashable optimizer: compile for this fit only
        run = _run_fn(*args)
    ctx = _build_context(data, solver, layout, config.rank, weights)
    return Solver(run=run, ctx=ctx, config=config, solver=solver, tol=float(tol), ftol=float(ftol))


def solve(solver: Solver, latent: dict, priors: FixedPriors, ftol: float | None = None,
          config: ModelConfig | None = None) -> tuple[dict, dict]:
    """Run one fit of a compiled loop from ``latent`` at the precisions ``priors``.

    Parameters
    ----------
    solver : Solver
        From :func:`make_solver`.
    latent : dict of str -> array
        Starting point (the latent sites, as from :func:`init_latent`).
    priors : FixedPriors
    ftol : float, optional
        This fit's ``ftol`` (default ``solver.ftol``); compiles nothing.
    config : ModelConfig, optional
        Its feature specs' link precisions (default ``solver.config``'s);
        compiles nothing.

    Returns
    -------
    latent : dict of str -> array
        The solution (device arrays).
    info : dict
        Host values: ``iterations``, ``objective_trace`` (iterations,),
        ``grad_norm`` and ``final_value`` at the solution.
    """
    dtype = solver.ctx.data.rating.dtype
    ftol = solver.ftol if ftol is None else float(ftol)
    if not ftol >= 0:
        raise ValueError(f"ftol must be >= 0, got {ftol}")
    thresholds = _stop_thresholds(solver.tol, ftol, dtype)
    precisions = precision_vector(priors, dtype, config or solver.config)
    state, final_value, final_grad_norm = solver.run(latent, precisions, solver.ctx, thresholds)
    count = int(state.count)
    return state.latent, dict(
        iterations=count,
        objective_trace=np.asarray(state.trace)[:count],
        grad_norm=float(final_grad_norm),
        final_value=float(final_value),
    )


@functools.partial(jax.jit, static_argnums=2)
def _summary(latent: dict, data: ModelData, config: ModelConfig):
    """Params, exact objective and training RMSE of a solution (one compiled call)."""
    params = params_from_sites(latent, data, config)
    residual = data.rating - predict_mean(params, data.user_index, data.item_index)
    return params, neg_log_joint(latent, data, config), jnp.sqrt(jnp.mean(residual**2))


def make_result(
    latent: dict, data: ModelData, config: ModelConfig, solver: str, info: dict, seconds: float
) -> EngineResult:
    """Package a solution as the engine's :class:`EngineResult` (see :func:`fit`).

    ``draws`` are the :class:`Params` at ``latent`` with leading (1, 1)
    axes, ``stats`` the exact :func:`neg_log_joint` and the training RMSE;
    ``info`` adds ``engine``, ``solver`` and ``objective`` to ``info``.
    """
    params, objective, train_rmse = _summary(latent, data, config)
    draws = jax.tree_util.tree_map(lambda x: x[None, None], to_numpy(params))  # on the host: no program per site
    stats = {"objective": np.full((1, 1), float(objective)), "train_rmse": np.full((1, 1), float(train_rmse))}
    info = dict(info, engine="map", solver=solver, objective=float(objective))
    return EngineResult(draws=draws, stats=stats, timing={"fit_seconds": seconds}, tracked=None, info=info)


def fit(
    rng_key: Array,
    data: ModelData,
    config: ModelConfig,
    *,
    solver: str = "lbfgs",
    optimizer=None,
    max_iters: int | None = None,
    tol: float = DEFAULT_TOL,
    ftol: float = DEFAULT_FTOL,
    init_params=None,
    layout: str = "auto",
    progress_bar: bool = False,
    weights=None,
    precondition: bool = True,
) -> EngineResult:
    """MAP estimate of the fixed-precision model.

    Parameters
    ----------
    rng_key : jax.Array
        Draws the initial factors (ignored with ``init_params``).
    data : ModelData
    config : ModelConfig
        ``priors="fixed"``; ``config.fixed`` holds the precisions.
    solver : {"lbfgs", "adam", "als"}
    optimizer : optax.GradientTransformation, optional
        The optimizer of ``"lbfgs"`` (default :class:`bayesmf.engines.lbfgs.Lbfgs`; ``optax.lbfgs()``
        runs optax's zoom line search) or ``"adam"`` (default ``optax.adam(0.01)``); any optax
        transformation works.
    max_iters : int, optional
        Iteration cap (default per solver: :data:`DEFAULT_MAX_ITERS`).
    tol : float
        Stop when the gradient norm of the scaled objective is below this.
    ftol : float
        Stop when the objective (per rating) fell by less than ``ftol`` per
        iteration over the last :data:`FTOL_WINDOW` iterations.
    init_params : Params or dict, optional
        Starting point (e.g. a previous fit, with or without leading (1, 1)
        axes). Default: :func:`init_latent`.
    layout : {"auto", "bucket", "dense"}
        Gram layout for ALS (:mod:`bayesmf.layout`).
    progress_bar : bool
        Show a one-tick bar (``tqdm.auto``, silent when the output is not a
        terminal) while the loop runs: the fit is one compiled loop with no
        host synchronization, so it reports when it is done, with the
        iteration count.
    weights : float array, shape (nnz,), optional
        Per-rating likelihood weights (:func:`make_solver`).
    precondition : bool
        L-BFGS in Jacobi-scaled coordinates (:func:`make_solver`).

    Returns
    -------
    EngineResult
        ``draws``: :class:`Params` with leading (1, 1) axes (NumPy);
        ``stats``: ``objective`` (the exact :func:`neg_log_joint`) and
        ``train_rmse``, each (1, 1); ``timing``: ``fit_seconds``; ``info``:
        ``solver``, ``iterations``, ``objective_trace`` (iterations,),
        ``grad_norm``, ``converged``.

    Examples
    --------
    >>> result = fit(jax.random.PRNGKey(0), data, config, solver="als")  # doctest: +SKIP
    >>> result.stats["objective"]  # doctest: +SKIP
    """
    start = time.perf_counter()
    compiled = make_solver(data, config, solver, optimizer, max_iters, tol, ftol, layout, weights, precondition)
    latent = _start_latent(rng_key, data, config, init_params)
    with tqdm(total=1, desc=f"map {solver}", unit="fit", leave=False, disable=None if progress_bar else True) as bar:
        latent, info = solve(compiled, latent, config.fixed)
        bar.set_postfix(iterations=info["iterations"], refresh=False)
        bar.update(1)
    info["converged"] = info["iterations"] < _max_iters(solver, max_iters)
    return make_result(latent, data, config, solver, info, time.perf_counter() - start)
