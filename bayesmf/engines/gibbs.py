"""Blocked Gibbs sampling of the BPMF model (and of its fixed-precision PMF form).

One sweep draws every block from its exact conditional:

.. math::

    L_u \\mid \\cdot &\\sim \\mathcal N\\big(P_u^{-1}(\\Lambda_L\\mu_L
        + \\alpha \\textstyle\\sum_{v\\in I_u} R_v (r_{uv}-m_v)),\\ P_u^{-1}\\big),
    \\quad P_u = \\Lambda_L + \\alpha \\textstyle\\sum_{v\\in I_u} R_v R_v^\\top \\\\
    (R_v, m_v) \\mid \\cdot &\\sim \\text{the same update with design } (L_u, 1)
        \\text{ and prior } \\mathcal N((\\mu_R, \\mu_0), \\mathrm{diag}(\\Lambda_R, \\tau_m)^{-1}) \\\\
    (\\mu, \\Lambda) \\mid \\text{factors} &\\sim \\text{Normal-Wishart}(\\mu_n, \\beta_n, \\nu_n, W_n) \\\\
    \\mu_0, \\tau_m \\mid m &\\sim \\text{Normal}, \\text{Gamma}, \\qquad
    \\alpha \\mid \\cdot \\sim \\mathrm{Gamma}(a_0 + n/2,\\ b_0 + \\mathrm{SSE}/2)

Users are drawn all at once (a batched conjugate draw, the same row update that
ALS takes the mode of: :mod:`bayesmf.conjugate`), then movies jointly with
their offsets (estimated offsets: one (rank + 1)-dimensional block, which
removes the offset/factor correlation from the chain), then the
hyperparameters and the noise precision. With ``priors="fixed"`` only the
factor and offset blocks are drawn (and the factor means ``mu_L``, ``mu_R``
when ``config.fixed.mean_precision > 0``: Gaussian given the factors); with ``offsets="empirical"`` the offsets
stay at the movie means.

Engines follow the house contract: :func:`init` and :func:`step` are pure
functions over :class:`GibbsState`; :func:`sample` runs them through the one
driver (:mod:`bayesmf.engines.driver`: chains vmapped, chunks of one jitted
``lax.scan``, a single chain unbatched).

With ``likelihood="ordinal"`` (:mod:`bayesmf.ordinal`) a sweep first draws
the cut points by their Metropolis-Hastings step with ``z`` integrated out,
then ``z`` from its truncated normals given them, both given the current
state's means ``eta`` (:func:`ordinal_step`: a draw of ``(cuts, z) | eta``);
then the same Gaussian blocks with ``z`` as the response and the noise
precision fixed at 1 (no ``alpha`` draw). ``train_rmse`` is then the RMS of
``z - eta``, and ``GibbsInfo.cutpoint_accept`` the step's acceptance.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayesmf import memory, ordinal
from bayesmf.conjugate import normal_wishart_draw, row_draw_from, standard_normal, wishart_chi2_shapes
from bayesmf.featurerows import FeatureRows
from bayesmf.link import (
    LinkState,
    LinkVariates,
    link_block_from,
    link_precision_shapes,
    link_prior_mean,
    link_system,
    link_wishart_shapes,
)
from bayesmf.engines import driver, sharding
from bayesmf.engines.common import EngineResult
from bayesmf.engines.driver import Engine, chain_keys, check_counts, check_pairs
from bayesmf.layout import build_layout, map_rows
from bayesmf.layout_plan import (
    default_chunk_bytes,
    default_stats_bytes,
    padded_fraction,
    peak_working_bytes,
    resolve_kind,
    segment_plan,
    segment_working_bytes,
)
from bayesmf.model import (
    ModelConfig,
    ModelData,
    Params,
    fixed_values,
    predict_mean,
    present_fields,
    user_design,
    user_row_prior,
)

Array = jax.Array

GibbsState = Params
"""The Gibbs state is one value of every model quantity (:class:`Params`)."""

# Codes of the block that first produced a non-finite value in a sweep.
BLOCKS = ("none", "user factors", "item factors/offsets", "hyperparameters", "noise precision", "cut points/latent")


class GibbsInfo(NamedTuple):
    """Per-sweep diagnostics.

    Attributes
    ----------
    train_rmse : array, shape ()
        RMSE of the current state's mean on the training ratings.
    nonfinite : int array, shape ()
        Index into :data:`BLOCKS` of the first block with a NaN/inf (0: none).
    """

    train_rmse: Array
    nonfinite: Array
    cutpoint_accept: Array | None = None  # () the ordinal cut-point step's acceptance probability; None otherwise


class GibbsContext(NamedTuple):
    """Device-side data a sweep needs (passed as an argument, never baked into
    the compiled program as constants). ``user_link`` / ``item_link``: the
    once-factored :class:`bayesmf.link.LinkSystem` of a side with features
    (None otherwise)."""

    data: ModelData
    user_layout: object
    item_layout: object
    user_link: object = None
    item_link: object = None


def build_context(data: ModelData, layout: str = "auto", rank: int | None = None,
                  chunk_bytes: int | None = None, config: ModelConfig | None = None) -> GibbsContext:
    """Precompute the per-user and per-item layouts of the training ratings.

    ``rank`` lets ``layout="auto"`` weigh the dense layout's cost and bounds
    the bucketed layout's chunks of rows to ``chunk_bytes``
    (:func:`bayesmf.layout.build_layout`); without it only the size counts.
    With features (``config.user_features`` / ``item_features``) each side's
    feature Gram is factored once (:func:`bayesmf.link.link_system`).
    """
    u = np.asarray(data.user_index)
    v = np.asarray(data.item_index)
    item_width = None if rank is None else rank + 1
    sizes = dict(chunk_bytes=chunk_bytes, itemsize=np.dtype(data.rating.dtype).itemsize)
    links = {}
    for side, num_other in (("user", data.num_items), ("item", data.num_users)):
        spec = None if config is None else getattr(config, f"{side}_features")
        if spec is not None:
            features = getattr(data, f"{side}_features")
            if not isinstance(features, FeatureRows):
                features = np.asarray(features, np.float64)
            links[f"{side}_link"] = link_system(features, spec.groups(num_other), dtype=data.rating.dtype)
    return GibbsContext(
        data=data,
        user_layout=build_layout(u, v, data.num_users, data.num_items, layout, width=rank, **sizes),
        item_layout=build_layout(v, u, data.num_items, data.num_users, layout, width=item_width, **sizes),
        **links,
    )


def memory_plan(data: ModelData, config: ModelConfig, *, num_samples: int, num_chains: int = 1,
                keep_draws: bool = True, layout: str = "auto", chunk_bytes: int | None = None,
                num_tracked: int = 0, num_devices: int = 1) -> memory.MemoryPlan:
    """What :func:`sample` will hold in memory (:mod:`bayesmf.memory`), from
    the sizes and degrees alone (nothing is allocated); per device when the
    sweep is sharded over ``num_devices``."""
    user_degree, item_degree = np.asarray(data.user_degree), np.asarray(data.item_degree)
    itemsize = np.dtype(data.rating.dtype).itemsize
    chunk_bytes = default_chunk_bytes() if chunk_bytes is None else int(chunk_bytes)
    stats_bytes = default_stats_bytes()
    working, kinds, padded = 0, set(), 0.0
    for degree, rows, cols, width in ((user_degree, data.num_users, data.num_items, config.rank),
                                      (item_degree, data.num_items, data.num_users, config.rank + 1)):
        kind = resolve_kind(layout, rows, cols, width)
        kinds.add(kind)
        shape = segment_plan(degree, width, chunk_bytes, stats_bytes, itemsize) if kind == "segment" else None
        padded += padded_fraction(degree, kind, shape) / 2  # (each side indexes every rating)
        if kind == "bucket":
            working = max(working, peak_working_bytes(degree, width, chunk_bytes, itemsize, stats_bytes))
        elif kind == "segment":
            working = max(working, segment_working_bytes(shape, width, itemsize))
    return memory.gibbs_plan(
        data.num_users, data.num_items, data.nnz, config.rank, num_samples=num_samples, num_chains=num_chains,
        keep_draws=keep_draws, itemsize=itemsize,
        padded=padded,
        dense_cells=data.num_users * data.num_items if kinds == {"dense"} else None,
        working_bytes=working, num_tracked=num_tracked, num_devices=num_devices, links=_link_sizes(data, config),
    )


def _link_sizes(data: ModelData, config: ModelConfig) -> tuple:
    """``(rows, side columns, implicit columns, implicit entries)`` per side with features (the memory model's)."""
    out = []
    for side, rows in (("user", data.num_users), ("item", data.num_items)):
        spec, features = getattr(config, f"{side}_features"), getattr(data, f"{side}_features")
        if spec is not None and features is not None:
            implicit = features.shape[1] - spec.num_side
            entries = int(features.values.shape[0]) if isinstance(features, FeatureRows) else 0
            out.append((rows, spec.num_side, implicit, entries))
    return tuple(out)


def init(rng_key: Array, data: ModelData, config: ModelConfig, scale: float = 0.1) -> GibbsState:
    """Starting state: small random factors, offsets at the movie means,
    hyperparameters at their prior centre, noise at the residual variance.

    Parameters
    ----------
    rng_key : jax.Array
    data : ModelData
    config : ModelConfig
    scale : float
        Standard deviation of the initial factors.
    """
    d, dtype = config.rank, data.rating.dtype
    fixed = fixed_values(data, config)
    residual = data.rating - data.empirical_offsets[data.item_index]
    # One draw for both sides: each random call site compiles its own generator.
    factors = scale * standard_normal(rng_key, (data.num_users + data.num_items, d), dtype)
    state = dict(
        user_factors=factors[: data.num_users],
        item_factors=factors[data.num_users :],
        item_offsets=data.empirical_offsets,
        noise_precision=1.0 / jnp.maximum(jnp.var(residual), 1e-3),
        user_mean=jnp.zeros(d, dtype),
        user_precision=jnp.eye(d, dtype=dtype),
        item_mean=jnp.zeros(d, dtype),
        item_precision=jnp.eye(d, dtype=dtype),
        offset_mean=data.global_mean,
        offset_precision=data.empirical_offset_precision,
        user_offsets=jnp.zeros(data.num_users, dtype),
        user_offset_precision=jnp.asarray(config.hyper.user_offset_shape / config.hyper.user_offset_rate, dtype),
    )
    for side in ("user", "item"):  # Macau's link matrices start at zero, their precisions at the prior mean
        spec, features = getattr(config, f"{side}_features"), getattr(data, f"{side}_features")
        if spec is not None:
            state[f"{side}_link"] = jnp.zeros((features.shape[1], d), dtype)
            state[f"{side}_link_precision"] = jnp.full(spec.num_groups, spec.link_shape / spec.link_rate, dtype)
    if config.ordinal:  # cut points at their prior centre, c_k = k exp(m)
        state["cutpoints"] = ordinal.cuts_from_free(
            jnp.full(config.num_stars - 2, config.cutpoint_prior.log_increment_mean, dtype))
    state.update(fixed)
    return Params(**{k: jnp.asarray(state[k], dtype) for k in present_fields(config)})


_init_jit = jax.jit(init, static_argnums=(2,))


# Proposals per Gamma variate in gamma_draw. Marsaglia-Tsang accepts with
# probability > 0.95 for every shape >= 1 (> 0.999 for the shapes >= 50 a
# sweep needs), so all 8 proposals are rejected with probability < 0.05^8 = 4e-11.
GAMMA_PROPOSALS = 8


def gamma_draw(rng_key: Array, shape: Array) -> Array:
    """Gamma(shape, 1) variates by Marsaglia & Tsang (2000), vectorised.

    The method is exact: propose ``v = (1 + c x)^3`` with ``x ~ N(0, 1)`` and
    accept when ``log u < x^2/2 + d - d v + d log v`` (``d = a - 1/3``,
    ``c = 1 / sqrt(9 d)``). Instead of ``jax.random.gamma``'s while loop, a
    fixed number of proposals is drawn at once and the first accepted one is
    kept (the last one in the < 4e-11 event that none is): this compiles to a
    handful of elementwise ops, where ``jax.random.gamma`` cost ~1.5 s of
    compile time per sweep program on the CPU. Shapes below 1 use the boost
    ``Gamma(a) = Gamma(a + 1) U^(1/a)``.

    Parameters
    ----------
    rng_key : jax.Array
    shape : array, shape (n,)

    Returns
    -------
    array, shape (n,)
    """
    key_x, key_u = jax.random.split(rng_key)
    x = jax.random.normal(key_x, (GAMMA_PROPOSALS,) + shape.shape, shape.dtype)
    u = jax.random.uniform(key_u, (GAMMA_PROPOSALS + 1,) + shape.shape, shape.dtype, minval=jnp.finfo(shape.dtype).tiny)
    return gamma_from(x, u, shape)


def gamma_from(x: Array, u: Array, shape: Array) -> Array:
    """:func:`gamma_draw` given its variates.

    Parameters
    ----------
    x : array, shape (GAMMA_PROPOSALS, n)
        Standard normals (the proposals).
    u : array, shape (GAMMA_PROPOSALS + 1, n)
        Uniforms on (0, 1]: acceptance tests, then the boost for shapes < 1.
    shape : array, shape (n,)
    """
    a = jnp.where(shape < 1.0, shape + 1.0, shape)
    d = a - 1.0 / 3.0
    c = jax.lax.rsqrt(9.0 * d)
    u, boost_u = u[:GAMMA_PROPOSALS], u[GAMMA_PROPOSALS]
    v = (1.0 + c * x) ** 3
    safe_v = jnp.where(v > 0, v, 1.0)
    accept = (v > 0) & (jnp.log(u) < 0.5 * x**2 + d - d * safe_v + d * jnp.log(safe_v))
    first = jnp.where(jnp.any(accept, axis=0), jnp.argmax(accept, axis=0), GAMMA_PROPOSALS - 1)
    value = d * jnp.take_along_axis(safe_v, first[None], axis=0)[0]
    boost = boost_u ** (1.0 / shape)
    return jnp.where(shape < 1.0, value * boost, value)


def _code(block: int, value: Array) -> Array:
    return jnp.where(jnp.all(jnp.isfinite(value)), 0, block)


def _variate_shapes(data: ModelData, config: ModelConfig) -> tuple[dict, dict]:
    """Shapes of the standard normals and uniforms one sweep consumes (static)."""
    d = config.rank
    width = d + 1 if config.offsets == "estimated" else d
    user_width = d + 1 if config.user_offsets else d
    normals = {"users": (data.num_users, user_width), "items": (data.num_items, width)}
    uniforms = {}
    if config.priors == "hyper":
        num_gammas = 2 * d + 2 + int(config.user_offsets)
        for side, rows in (("user", data.num_users), ("item", data.num_items)):
            spec = getattr(config, f"{side}_features")
            if spec is not None:  # B's perturbations (link_variate_shapes) and one Gamma per group
                normals[f"{side}_link"] = (rows + getattr(data, f"{side}_features").shape[1], d)
                num_gammas += spec.num_groups
        normals.update(user_hyper=(d * d + d,), item_hyper=(d * d + d,), offset_mean=(), gamma=(GAMMA_PROPOSALS, num_gammas))
        uniforms["gamma"] = (GAMMA_PROPOSALS + 1, num_gammas)
    elif config.fixed.learns_means:
        normals.update(user_hyper=(d,), item_hyper=(d,))
    if config.ordinal:  # the cut-point step's normals and uniform, and one uniform per rating for z
        normals["cutpoints"] = (ordinal.num_cutpoint_variates(config.num_stars),)
        uniforms.update(cutpoints=(), latent=(data.nnz,))
    return normals, uniforms


def _carved(draw_flat, shapes: dict) -> dict:
    """``draw_flat(total)`` once, cut into arrays of ``shapes`` (name -> shape)."""
    sizes = [int(np.prod(shape)) for shape in shapes.values()]
    flat = draw_flat(sum(sizes))
    out, start = {}, 0
    for (name, shape), size in zip(shapes.items(), sizes):
        out[name] = flat[start : start + size].reshape(shape)
        start += size
    return out


def sweep_variates(rng_key: Array, data: ModelData, config: ModelConfig) -> tuple[dict, dict]:
    """Every random variate of one sweep, from one normal and one uniform call.

    Each random call site adds its own copy of the generator to the compiled
    program (about 0.07 s of XLA:CPU compile time each; a sweep had 13 of
    them), so the sweep draws two flat arrays and carves them into blocks.

    Returns
    -------
    normals, uniforms : dict of name -> array
        Shapes from :func:`_variate_shapes`.
    """
    normal_shapes, uniform_shapes = _variate_shapes(data, config)
    dtype = data.rating.dtype
    key_normal, key_uniform = jax.random.split(rng_key)
    normals = _carved(lambda total: standard_normal(key_normal, (total,), dtype), normal_shapes)
    uniforms = {}
    if uniform_shapes:
        tiny = jnp.finfo(dtype).tiny
        uniforms = _carved(lambda total: jax.random.uniform(key_uniform, (total,), dtype, minval=tiny), uniform_shapes)
    return normals, uniforms


def _row_draw(prior_precision: Array, prior_mean: Array, noise_precision: Array):
    """The row update map_rows calls, ``fn(gram, rhs, z[, means])``: the conditional draw with the
    shared prior mean, or each row's own (``row_means``) when it is passed."""
    def draw(gram, rhs, z, *means):
        return row_draw_from(z, prior_precision, means[0] if means else prior_mean, gram, rhs, noise_precision)

    return draw


def row_means(prior_mean: Array, system, coefficients) -> tuple:
    """Per-row prior means ``prior_mean + (B^T x, 0...)`` as a map_rows input, or ``()`` without features.

    ``prior_mean`` (k,) is the row's prior mean without features (``k >= rank``:
    an offset's mean may follow the factors' and gets no feature term).
    """
    if system is None:
        return ()
    shift = link_prior_mean(system, coefficients, jnp.zeros(coefficients.shape[1], coefficients.dtype))
    pad = prior_mean.shape[0] - shift.shape[1]
    return (prior_mean + jnp.pad(shift, ((0, 0), (0, pad))),)


def step(rng_key: Array, state: GibbsState, ctx: GibbsContext, config: ModelConfig) -> tuple[GibbsState, GibbsInfo]:
    """One blocked Gibbs sweep.

    Parameters
    ----------
    rng_key : jax.Array
    state : GibbsState
    ctx : GibbsContext
    config : ModelConfig
        Static (closed over by the driver).
    """
    data = ctx.data
    normals, uniforms = sweep_variates(rng_key, data, config)
    d, dtype = config.rank, data.rating.dtype
    estimated = config.offsets == "estimated"
    hyper = config.priors == "hyper"
    observed, cut_bad, cut_info = data.rating, 0, None
    if config.ordinal:  # (cuts, z) | eta, then the Gaussian blocks with z as the ratings
        state, observed, cut_info = ordinal_step(normals, uniforms, state, data, config)
        cut_bad = _code(5, jnp.concatenate([state.cutpoints, observed]))

    # Users | items, offsets.
    # Each row's Gram and rhs exist only for its chunk of rows (map_rows).
    response = observed - state.item_offsets[data.item_index]
    # With user offsets a user's row is (L_u, b_u), its design (R_v, 1) (model.user_row_prior);
    # with features each row has its own prior mean mu_L + B^T x_u (per-row inputs of map_rows).
    user_prior, user_prior_mean = user_row_prior(state)
    user_rows = row_means(user_prior_mean, ctx.user_link, state.user_link)
    block = map_rows(
        ctx.user_layout, user_design(state), response, _row_draw(user_prior, user_prior_mean, state.noise_precision),
        (normals["users"],) + user_rows,
    )
    bad = jnp.where(cut_bad > 0, cut_bad, _code(1, block)) if config.ordinal else _code(1, block)
    user_factors, user_offsets = (block[:, :d], block[:, d]) if config.user_offsets else (block, None)
    # The items' response: the ratings less the users' offsets (when the model has them).
    rating = observed if user_offsets is None else observed - user_offsets[data.user_index]

    # Items (and offsets, as one block) | users.
    if estimated:
        design = jnp.concatenate([user_factors, jnp.ones((data.num_users, 1), dtype)], axis=1)
        prior_precision = jnp.zeros((d + 1, d + 1), dtype)
        prior_precision = prior_precision.at[:d, :d].set(state.item_precision).at[d, d].set(state.offset_precision)
        prior_mean = jnp.concatenate([state.item_mean, state.offset_mean[None]])
        item_rows = row_means(prior_mean, ctx.item_link, state.item_link)
        block, row_sse = map_rows(
            ctx.item_layout, design, rating, _row_draw(prior_precision, prior_mean, state.noise_precision),
            (normals["items"],) + item_rows, residuals=True,
        )
        item_factors, item_offsets = block[:, :d], block[:, d]
    else:
        item_offsets = state.item_offsets
        item_rows = row_means(state.item_mean, ctx.item_link, state.item_link)
        item_factors, row_sse = map_rows(
            ctx.item_layout, user_factors, rating - item_offsets[data.item_index],
            _row_draw(state.item_precision, state.item_mean, state.noise_precision),
            (normals["items"],) + item_rows, residuals=True,
        )
    bad = jnp.where(bad > 0, bad, _code(2, jnp.concatenate([item_factors.ravel(), item_offsets])))

    new = state._replace(user_factors=user_factors, item_factors=item_factors, item_offsets=item_offsets,
                         user_offsets=user_offsets)
    # The residual sum of squares from the item side's statistics under the
    # new state (no nnz x rank gather of both sides' factors).
    sse = jnp.sum(row_sse)

    if hyper:
        h = config.hyper
        # Every Gamma variate of the sweep at once (see normal_wishart_draw).
        links = {side: (getattr(config, f"{side}_features"), getattr(ctx, f"{side}_link")) for side in ("user", "item")}

        def chi2_shapes(side, num_rows):
            spec, system = links[side]
            return (wishart_chi2_shapes(config.nu0 + num_rows, d) if spec is None
                    else link_wishart_shapes(system, config.nu0, d))

        link_shapes = [link_precision_shapes(system, d, spec.link_shape) for spec, system in links.values()
                       if spec is not None]
        shapes = np.concatenate(
            [
                chi2_shapes("user", data.num_users),
                chi2_shapes("item", data.num_items),
                [h.offset_shape + 0.5 * data.num_items, h.noise_shape + 0.5 * data.nnz],
                [h.user_offset_shape + 0.5 * data.num_users] if config.user_offsets else [],
                *link_shapes,
            ]
        )
        gammas = gamma_from(normals["gamma"], uniforms["gamma"], jnp.asarray(shapes, dtype))
        next_gamma = 2 * d + 2 + int(config.user_offsets)  # the link precisions' Gammas follow
        hyper_draws = {}
        for side, factors, chi2 in (("user", user_factors, gammas[:d]), ("item", item_factors, gammas[d : 2 * d])):
            spec, system = links[side]
            if spec is None:
                hyper_draws[side] = normal_wishart_draw(normals[f"{side}_hyper"], factors, 2.0 * chi2, h.beta0, config.nu0,
                                                        h.w0_scale)
                continue
            # Macau's block: B, then (mu, Lambda) on L - X B, then lambda_g (bayesmf.link).
            count = spec.num_groups
            variates = LinkVariates(normals[f"{side}_link"], normals[f"{side}_hyper"], 2.0 * chi2,
                                    gammas[next_gamma : next_gamma + count])
            next_gamma += count
            previous = LinkState(getattr(state, f"{side}_link"), getattr(state, f"{side}_mean"),
                                 getattr(state, f"{side}_precision"), getattr(state, f"{side}_link_precision"))
            drawn = link_block_from(variates, system, factors, previous, beta0=h.beta0, nu0=config.nu0,
                                    w0_scale=h.w0_scale, prior_rate=spec.link_rate)
            new = new._replace(**{f"{side}_link": drawn.coefficients, f"{side}_link_precision": drawn.link_precision})
            hyper_draws[side] = (drawn.mean, drawn.precision)
        (user_mean, user_precision), (item_mean, item_precision) = hyper_draws["user"], hyper_draws["item"]
        new = new._replace(
            user_mean=user_mean, user_precision=user_precision, item_mean=item_mean, item_precision=item_precision
        )
        if estimated:
            m = item_offsets
            num_items = m.shape[0]
            prior_prec = 1.0 / h.offset_mean_sd**2
            post_prec = prior_prec + state.offset_precision * num_items
            post_mean = (prior_prec * data.global_mean + state.offset_precision * jnp.sum(m)) / post_prec
            offset_mean = post_mean + normals["offset_mean"] * jax.lax.rsqrt(post_prec)
            rate = h.offset_rate + 0.5 * jnp.sum((m - offset_mean) ** 2)
            new = new._replace(offset_mean=offset_mean, offset_precision=gammas[2 * d] / rate)
        if config.user_offsets:
            # tau_b | b ~ Gamma(a_b + N/2, b_b + sum b_u^2 / 2).
            new = new._replace(user_offset_precision=gammas[2 * d + 2] / (h.user_offset_rate + 0.5 * jnp.sum(user_offsets**2)))
        hyper_values = jnp.concatenate(
            [user_mean, user_precision.ravel(), item_mean, item_precision.ravel(), new.offset_mean[None],
             new.offset_precision[None]] + ([new.user_offset_precision[None]] if config.user_offsets else [])
        )
        bad = jnp.where(bad > 0, bad, _code(3, hyper_values))
        if not config.ordinal:  # the ordinal model's noise precision stays at 1 (its Gamma variate goes unused)
            noise_precision = gammas[2 * d + 1] / (h.noise_rate + 0.5 * sse)
            new = new._replace(noise_precision=noise_precision)
            bad = jnp.where(bad > 0, bad, _code(4, noise_precision))

    elif config.fixed.learns_means:
        # mu | factors with Lambda = lambda I fixed and mu ~ N(0, (beta lambda)^-1 I):
        # N(sum_rows / (n + beta), ((n + beta) lambda)^-1 I).
        f = config.fixed
        draws = []
        for z, factors, precision in (
            (normals["user_hyper"], user_factors, f.user_precision),
            (normals["item_hyper"], item_factors, f.item_precision),
        ):
            n = factors.shape[0] + f.mean_precision
            noise = z * (n * precision) ** -0.5
            draws.append(jnp.sum(factors, axis=0) / n + noise)
        new = new._replace(user_mean=draws[0], item_mean=draws[1])
        bad = jnp.where(bad > 0, bad, _code(3, jnp.concatenate(draws)))

    info = GibbsInfo(train_rmse=jnp.sqrt(sse / data.nnz), nonfinite=bad.astype(jnp.int32),
                     cutpoint_accept=None if cut_info is None else cut_info.accept_prob)
    return new, info


def ordinal_step(normals: dict, uniforms: dict, state: GibbsState, data: ModelData,
                 config: ModelConfig) -> tuple[GibbsState, Array, ordinal.CutpointInfo]:
    """The ordinal sweep's first block: ``(cuts, z) | eta`` from the sweep's variates.

    The cut points' Metropolis-Hastings step with ``z`` integrated out
    (:func:`bayesmf.ordinal.cutpoint_step_from`), then ``z`` from ``N(eta, 1)``
    truncated to each star's cell under the new cut points
    (:func:`bayesmf.ordinal.latent_draw_from`), with ``eta`` the state's means.

    Parameters
    ----------
    normals, uniforms : dict
        The sweep's variates (:func:`sweep_variates`): ``normals["cutpoints"]``
        (K - 2 + PROPOSAL_DF,), ``uniforms["cutpoints"]`` () and
        ``uniforms["latent"]`` (nnz,).
    state : GibbsState
    data : ModelData
        With ``star``.
    config : ModelConfig

    Returns
    -------
    state : GibbsState
        With the new ``cutpoints``.
    z : array, shape (nnz,)
    info : bayesmf.ordinal.CutpointInfo
    """
    eta = predict_mean(state, data.user_index, data.item_index)
    free, info = ordinal.cutpoint_step_from(normals["cutpoints"], uniforms["cutpoints"],
                                            ordinal.free_from_cuts(state.cutpoints), eta, data.star,
                                            config.cutpoint_prior)
    cuts = ordinal.cuts_from_free(free)
    z = ordinal.latent_draw_from(uniforms["latent"], cuts, eta, data.star)
    return state._replace(cutpoints=cuts), z, info


def check_ordinal_data(data: ModelData, config: ModelConfig) -> None:
    """A clear ValueError when the ordinal likelihood lacks its stars or they exceed ``config.num_stars``."""
    if not config.ordinal:
        return
    if config.num_stars is None:
        raise ValueError("likelihood='ordinal' needs config.num_stars (the number of stars K)")
    if data.star is None:
        raise ValueError("likelihood='ordinal' needs the ratings' stars: build the data with model.star_model_data")
    star = np.asarray(data.star)
    if star.shape != (data.nnz,) or star.min() < 0 or star.max() >= config.num_stars:
        raise ValueError(f"data.star must hold one star in 0..{config.num_stars - 1} per rating")


def engine(data: ModelData, config: ModelConfig, init_params: Params | None = None) -> Engine:
    """The Gibbs engine for :func:`bayesmf.engines.driver.sample`: :func:`init`
    from each chain's key (or ``init_params`` for every chain) and
    :func:`step` over a :class:`GibbsContext`; kept draws are the states."""
    if init_params is None:

        def init_fn(chain_key):
            # One chain at a time through one jitted program (cached by config
            # and shapes): vmapped over the keys, the same program took 3.0 s
            # to compile on XLA:CPU against 0.4 s (ml-100k, rank 10).
            return _init_jit(jax.random.split(chain_key)[0], data, config)

    else:
        start = jax.tree.map(jnp.asarray, Params(*init_params))

        def init_fn(chain_key):
            return start

    return Engine(
        name="gibbs",
        init_fn=init_fn,
        step_fn=lambda rng_key, state, ctx: step(rng_key, state, ctx, config),
        track_fn=lambda state, ctx, pairs: (predict_mean(state, pairs[0], pairs[1]), 1.0 / state.noise_precision),
        postfix_fn=lambda infos: {"train_rmse": f"{float(np.mean(infos.train_rmse[:, -1])):.4f}"},
        blocks=BLOCKS,
        hint="try float64, a smaller rank or stronger priors",
        unit="sweep",
    )


def sample(
    rng_key: Array,
    data: ModelData,
    config: ModelConfig,
    *,
    num_samples: int = 200,
    num_warmup: int = 50,
    num_chains: int = 1,
    thin: int = 1,
    layout: str = "auto",
    keep_draws: bool = True,
    track_pairs: tuple | None = None,
    keep_track_draws: bool = True,
    init_params: Params | None = None,
    checkpoint=None,
    checkpoint_every: int | None = None,
    chunk_bytes: int | None = None,
    check_memory: bool = True,
    progress_bar: bool = True,
    devices=None,
    context: GibbsContext | None = None,
) -> EngineResult:
    """Run blocked Gibbs on ``num_chains`` chains (vmapped) through the driver.

    Parameters
    ----------
    rng_key : jax.Array
    data : ModelData
    config : ModelConfig
    num_samples : int
        Draws kept per chain (after thinning).
    num_warmup : int
        Sweeps discarded per chain.
    num_chains : int
    thin : int
        Sweeps per kept draw.
    layout : {"auto", "bucket", "segment", "dense"}
        Gram layout (:mod:`bayesmf.layout`).
    keep_draws : bool
        Keep every kept draw of all parameters (factors included):
        ``num_chains * num_samples * (num_users + num_items) * rank`` floats.
    track_pairs : (user_index, item_index) int arrays, shape (n,), optional
        Pairs whose predictive moments are streamed during sampling (Welford),
        independent of the number of draws.
    keep_track_draws : bool
        Also keep the per-draw predicted means of ``track_pairs``
        (``num_chains * num_samples * n`` floats) for exact mixture metrics.
    init_params : Params, optional
        Starting state (e.g. a MAP fit) shared by all chains.
    checkpoint : str or path-like, optional
        File where the run saves its progress (chain states, draws so far,
        seconds: :mod:`bayesmf.engines.driver`'s ``numpy.savez`` format,
        replaced atomically) every ``checkpoint_every`` sweeps, and at most
        every ``driver.CHECKPOINT_SECONDS`` otherwise. A later call with the
        same key, data and settings resumes from it and gives the same
        draws as an uninterrupted run (bit for bit on the CPU); a file from
        another key, data or settings is refused (``ValueError`` naming
        it). A finished run deletes the file.
    checkpoint_every : int, optional
        Sweeps (warm-up and thinned ones included) between saves, rounded
        up to the driver's chunk (``info["chunk"]`` draws).
    chunk_bytes : int, optional
        Working memory of one chunk of rows in the bucketed layout
        (:func:`bayesmf.layout.build_layout`; default
        :func:`bayesmf.layout_plan.default_chunk_bytes`: 4 MB on the CPU, 1/16 of
        an accelerator's memory).
    check_memory : bool
        Stop with a ``MemoryError`` that says what the fit needs, what there
        is and what to change, before allocating, when :func:`memory_plan`
        does not fit in the free device (and host) memory.
    progress_bar : bool
        Sweeps done, sweeps per second and the time left.
    devices : int, sequence of jax.Device or Mesh, optional
        Run the same sweep sharded by rows over these devices
        (:mod:`bayesmf.engines.sharding`; ``layout="auto"`` then means
        ``"bucket"``; a mesh with a ``"chains"`` axis also splits the
        chains); the draws equal the one-device run's up to float32
        reassociation. None: one device, as before.
    context : GibbsContext, optional
        :func:`build_context` of these ``data``, ``layout``, rank and
        ``config``, to reuse across runs (with features the link systems'
        factorization is then paid once); not checked against them.

    Returns
    -------
    EngineResult
        ``timing``: ``compile_seconds``, ``sampling_seconds``,
        ``seconds_per_sample`` (per sweep; vectorized chains count once),
        ``fit_seconds``. ``info["num_devices"]``: devices the sweep ran on.
    """
    num_samples, num_warmup, num_chains, thin = check_counts(num_samples, num_warmup, num_chains, thin)
    if track_pairs is not None:
        check_pairs(track_pairs)
    if config.user_features is not None or config.item_features is not None:
        if config.priors != "hyper":
            raise ValueError("Gibbs with features (Macau's prior) needs priors='hyper'; MAP takes them with 'fixed'")
        if devices is not None:
            raise ValueError("Gibbs with features runs on one device (devices=None)")
    check_ordinal_data(data, config)
    t0 = time.perf_counter()
    mesh = None if devices is None else sharding.make_mesh(devices)
    if checkpoint is not None and jax.process_count() > 1:
        raise ValueError("checkpoints are written by one process: a multi-process run takes no checkpoint")
    if mesh is not None and layout == "auto":
        layout = "bucket"
    if check_memory:
        memory.check(memory_plan(data, config, num_samples=num_samples, num_chains=num_chains, keep_draws=keep_draws,
                                 layout=layout, chunk_bytes=chunk_bytes,
                                 num_tracked=0 if track_pairs is None else len(track_pairs[0]),
                                 num_devices=1 if mesh is None else int(mesh.shape[sharding.ROWS])),
                     device=None if mesh is None else mesh.devices.flat[0])
    ctx = build_context(data, layout, config.rank, chunk_bytes, config) if context is None else context
    gibbs_engine = engine(data, config, init_params)
    if mesh is not None:
        ctx, gibbs_engine = sharding.shard_context(ctx, mesh), sharding.on_mesh(gibbs_engine, mesh)
    if checkpoint is not None:
        settings = dict(num_samples=num_samples, num_warmup=num_warmup, num_chains=num_chains, thin=thin,
                        layout=type(ctx.user_layout).__name__, keep_draws=bool(keep_draws),
                        keep_track_draws=bool(keep_track_draws), dtype=str(data.rating.dtype), config=config)
        start = None if init_params is None else jax.tree.map(np.asarray, Params(*init_params))
        checkpoint = (checkpoint, driver.signature(rng_key, settings, data, start))
    run = driver.sample(
        chain_keys(rng_key, num_chains),
        gibbs_engine,
        ctx,
        num_samples=num_samples,
        num_warmup=num_warmup,
        thin=thin,
        keep_draws=keep_draws,
        track_pairs=track_pairs,
        keep_track_draws=keep_track_draws,
        track_dtype=data.rating.dtype,
        progress_bar=progress_bar,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
    )
    tracked = run.tracked
    if tracked is not None and keep_track_draws and keep_draws:
        tracked = tracked._replace(noise_sd=1.0 / np.sqrt(np.asarray(run.draws.noise_precision)))
    timing = dict(
        compile_seconds=run.timing["compile_seconds"],
        sampling_seconds=run.timing["sampling_seconds"],
        seconds_per_sample=run.timing["seconds_per_sample"],
        fit_seconds=time.perf_counter() - t0,
    )
    stats = {"train_rmse": np.asarray(run.infos.train_rmse)}
    if config.ordinal:
        stats["cutpoint_accept"] = np.asarray(run.infos.cutpoint_accept)
    return EngineResult(
        draws=run.draws,
        stats=stats,
        timing=timing,
        tracked=tracked,
        info=dict(engine="gibbs", layout=type(ctx.user_layout).__name__, thin=thin, chunk=run.chunk,
                  num_devices=1 if mesh is None else int(mesh.devices.size)),
    )
