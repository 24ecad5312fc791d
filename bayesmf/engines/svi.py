"""Mean-field variational inference (NumPyro SVI, ``AutoNormal``) on the one model.

The guide is a fully factorized Gaussian over every latent site of
:func:`bayesmf.model.numpyro_model`, each in its unconstrained space (the
Wishart precisions through NumPyro's Cholesky bijection, the Gamma precisions
through ``log``):

.. math::

    q(\\theta) = \\prod_j \\mathcal N(T^{-1}(\\theta)_j;\\ \\mu_j, \\sigma_j^2),
    \\qquad \\max_{\\mu, \\sigma}\\ \\mathrm{ELBO}
        = \\mathbb E_q[\\log p(r, \\theta) - \\log q(\\theta)]

maximized with Adam on a one-sample reparameterized ELBO estimate
(``Trace_ELBO``), its step size decaying exponentially from
``learning_rate`` to ``learning_rate * decay`` over the run. On
MovieLens-100K u1 that schedule (0.05 to 0.005 over 2,000 steps) reached a
lower loss than a constant 0.01 over 5,000 steps at rank 10 (109,593 against
109,803) and at rank 100 (132,582 against 135,343, where the constant rate
had not converged), in 40% of the steps, and test RMSE 0.9146 / 0.928
against 0.9167 / 0.954 (measured before SVI's start moved to the prior mean with host-drawn
noise; :func:`init`).

Draws are sampled from the fitted guide and returned as
:class:`~bayesmf.model.Params` with leading axes ``(1, num_samples)``, so a
VI fit is used like one chain of draws. Mean-field VI underestimates
posterior spread (it ignores the correlations between ``L`` and ``R``); its
predictive sd is mostly the noise term.

Engine layout (house style): :func:`init` and :func:`step` (one
``SVI.update``) are the pure pair over NumPyro's ``SVIState`` (which carries
its own key); :func:`fit` runs the steps through the one driver
(:mod:`bayesmf.engines.driver`: chunks of one jitted ``lax.scan`` with the
data as an argument, progress, timing, the non-finite check) as a warm-up
with no kept draws, then draws from the fitted guide.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_mean
from numpyro.infer.svi import SVIState
from numpyro.optim import optax_to_numpyro

from bayesmf.engines import driver
from bayesmf.engines.common import EngineResult, to_numpy
from bayesmf.engines.driver import Engine
from bayesmf.engines.numpyro_util import host_normalized, unchecked
from bayesmf.memory import compile_program, to_device
from bayesmf.model import ModelConfig, ModelData, latent_sites, numpyro_model, params_from_sites, predict_mean

Array = jax.Array

# Optimizer steps per compiled chunk (progress bar and NaN check run between chunks).
STEPS_PER_CHUNK = 250
# Points kept of the loss trace in ``info["losses"]``.
MAX_LOSS_POINTS = 500
# Initial sd of every guide coordinate (NumPyro's default).
INIT_SCALE = 0.1
# The factor sites whose starting locations get noise (at their prior mean, L = R = 0, a saddle) ...
JITTER_SITES = ("user_factors", "item_factors")
# ... of this many prior sds: the spread of the median of numpyro_util.MEDIAN_INIT_DRAWS standard normals
# (0.319 for 15, by simulation; sqrt(pi / 2n) asymptotically), where NumPyro's init_to_median started them.
START_SPREAD = 0.319


# Each draw's predicted means of the tracked pairs, draws with leading axes (chains, draws).
_draw_means = jax.jit(jax.vmap(jax.vmap(predict_mean, in_axes=(0, None, None)), in_axes=(0, None, None)))


class SviInfo(NamedTuple):
    """Per-step diagnostics.

    Attributes
    ----------
    loss : array, shape ()
        The one-sample negative ELBO estimate of the step.
    nonfinite : int array, shape ()
        1 when the loss is NaN/inf (0: finite).
    """

    loss: Array
    nonfinite: Array


def build(
    config: ModelConfig,
    *,
    num_steps: int,
    learning_rate: float = 0.05,
    decay: float = 0.1,
    optimizer=None,
    init_scale: float = INIT_SCALE,
) -> SVI:
    """NumPyro's ``SVI`` for the model: an ``AutoNormal`` guide started at
    NumPyro's ``init_to_mean`` (every site at its prior mean given its parents';
    :func:`init` adds the factors' noise), ``Trace_ELBO`` and ``optimizer`` (default ``optax.adam`` with its step size decaying
    exponentially from ``learning_rate`` to ``learning_rate * decay`` over
    ``num_steps``)."""
    # The same density with its constant normalizers precomputed (compiles faster).
    model = host_normalized(functools.partial(numpyro_model, config=config), config)
    guide = AutoNormal(model, init_loc_fn=init_to_mean, init_scale=init_scale)
    if optimizer is None:
        schedule = optax.exponential_decay(learning_rate, num_steps, decay) if decay < 1 else learning_rate
        optimizer = optax.adam(schedule)
    return SVI(model, guide, optax_to_numpyro(optimizer), Trace_ELBO())


def init(rng_key: Array, data: ModelData, config: ModelConfig, svi: SVI, normals: dict | None = None) -> SVIState:
    """Guide parameters and optimizer state at the start (``SVI.init``).

    ``config`` is the one ``svi`` was built for (:func:`build`). The guide
    starts every site at its prior mean; ``normals`` (site -> standard
    normals of its shape, for :data:`JITTER_SITES`: :func:`start_normals`)
    move the factors' locations off the ``L = R = 0`` saddle by
    :data:`START_SPREAD` prior sds, the spread at which NumPyro's
    ``init_to_median`` (the median of
    :data:`~bayesmf.engines.numpyro_util.MEDIAN_INIT_DRAWS` prior draws)
    had started them. Its per-site prior draws had compiled into 4.8-5.0 s of
    this program's 5.3 s on u1 at rank 10 (2-core CPU); the noise now comes in
    as data.
    """
    state = svi.init(rng_key, data)
    if not normals:
        return state
    params = svi.optim.get_params(state.optim_state)  # unconstrained; a location's is itself
    for site, z in normals.items():
        spread = START_SPREAD * jnp.sqrt(svi.guide.prototype_trace[site]["fn"].variance)
        params[f"{site}_{svi.guide.prefix}_loc"] = params[f"{site}_{svi.guide.prefix}_loc"] + spread * z
    return SVIState(svi.optim.init(params), state.mutable_state, state.rng_key)


def start_normals(rng_key: Array, data: ModelData, config: ModelConfig) -> dict:
    """Standard normals for :func:`init`'s factor noise, drawn by NumPy from a generator seeded with
    the key's data (as MAP's start is: no device program): site -> (num_users or num_items, rank)."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(rng_key)).ravel())
    draw = np.float32 if np.dtype(data.rating.dtype) == np.float32 else np.float64
    rows = dict(user_factors=data.num_users, item_factors=data.num_items)
    return {site: to_device(rng.standard_normal((rows[site], config.rank), dtype=draw), data.rating.dtype)
            for site in JITTER_SITES}


def step(rng_key: Array, state: SVIState, data: ModelData, svi: SVI) -> tuple[SVIState, SviInfo]:
    """One optimizer step on the ELBO (``SVI.update``). ``rng_key`` is
    unused: the state carries NumPyro's key."""
    state, loss = svi.update(state, data)
    return state, SviInfo(loss, jnp.where(jnp.isfinite(loss), 0, 1))


def engine(data: ModelData, config: ModelConfig, svi: SVI) -> Engine:
    """The SVI engine for :func:`bayesmf.engines.driver.sample` (run as a
    warm-up of ``num_steps`` iterations with no kept draws)."""
    # Compiled through the process's kept programs: a later fit with the same
    # settings and data shapes sets up without compiling (about 6 s of a small fit).
    @unchecked
    def svi_init(chain_key, data, normals):
        return init(chain_key, data, config, svi, normals)

    def init_fn(chain_key):
        normals = start_normals(chain_key, data, config)
        return compile_program(svi_init, chain_key, data, normals)(chain_key, data, normals)

    return Engine(
        name="svi",
        init_fn=init_fn,
        step_fn=unchecked(lambda rng_key, state, data: step(rng_key, state, data, svi)),
        postfix_fn=lambda infos: {"loss": f"{float(infos.loss[0, -1]):.4g}"},
        blocks=("none", "ELBO loss"),
        hint="try a smaller learning_rate or init_scale",
        phases=("optimization step", "draw"),
    )


def fit(
    rng_key: Array,
    data: ModelData,
    config: ModelConfig,
    *,
    num_samples: int = 200,
    num_steps: int = 2000,
    learning_rate: float = 0.05,
    decay: float = 0.1,
    optimizer=None,
    init_scale: float = INIT_SCALE,
    track_pairs: tuple | None = None,
    keep_track_draws: bool = True,
    progress_bar: bool = True,
) -> EngineResult:
    """Fit a mean-field Gaussian guide by SVI and draw from it.

    Parameters
    ----------
    rng_key : jax.Array
    data : ModelData
    config : ModelConfig
    num_samples : int
        Draws from the fitted guide.
    num_steps : int
        Optimizer steps.
    learning_rate : float
        Adam's initial step size (ignored when ``optimizer`` is given).
    decay : float
        Ratio of the final to the initial step size, in (0, 1]; the step
        size decays exponentially in between (1 keeps it constant).
    optimizer : optax.GradientTransformation, optional
        Default ``optax.adam(optax.exponential_decay(learning_rate,
        num_steps, decay))``.
    init_scale : float
        Initial sd of the guide in unconstrained space.
    track_pairs : (user_index, item_index) int arrays, shape (n,), optional
        Pairs whose predictive moments over the guide's draws are returned
        in ``tracked``.
    keep_track_draws : bool
        Also keep the per-draw predicted means of ``track_pairs``.
    progress_bar : bool

    Returns
    -------
    EngineResult
        ``draws``: Params with leading axes ``(1, num_samples)``.
        ``stats["elbo_loss"]``: the final loss (negative ELBO, mean of the
        last ``min(100, num_steps)`` steps), shape ``(1, num_samples)``.
        ``info["losses"]``: the loss trace at every ``info["loss_every"]``-th
        step. ``timing``: ``compile_seconds`` (the optimizer chunk, ahead of
        time), ``init_seconds`` (guide set-up, compile included),
        ``optimize_seconds``, ``seconds_per_step``, ``fit_seconds``.

    Examples
    --------
    >>> import jax
    >>> from bayesmf.model import ModelConfig, make_model_data
    >>> data = make_model_data([0, 0, 1, 2], [0, 1, 1, 0], [4.0, 3.0, 5.0, 2.0], 3, 2)
    >>> result = fit(jax.random.PRNGKey(0), data, ModelConfig(rank=1), num_steps=500,
    ...              progress_bar=False)  # doctest: +SKIP
    >>> result.draws.item_offsets.shape  # doctest: +SKIP
    (1, 200, 2)
    """
    for name, value in (("num_samples", num_samples), ("num_steps", num_steps)):
        if isinstance(value, bool) or int(value) <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if optimizer is None and not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive finite number, got {learning_rate}")
    if optimizer is None and not (np.isfinite(decay) and 0 < decay <= 1):
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    if not (np.isfinite(init_scale) and init_scale > 0):
        raise ValueError(f"init_scale must be a positive finite number, got {init_scale}")
    if track_pairs is not None:
        pairs = driver.check_pairs(track_pairs)
    num_samples, num_steps = int(num_samples), int(num_steps)
    t0 = time.perf_counter()
    key_init, key_draws = jax.random.split(rng_key)
    svi = build(config, num_steps=num_steps, learning_rate=learning_rate, decay=decay, optimizer=optimizer,
                init_scale=init_scale)
    # The optimization is the driver's warm-up of one chain (no kept draws);
    # the chain's key is the guide's init key.
    run = driver.sample(
        key_init[None],
        engine(data, config, svi),
        data,
        num_samples=0,
        num_warmup=num_steps,
        chunk=min(STEPS_PER_CHUNK, num_steps),
        keep_draws=False,
        progress_bar=progress_bar,
    )
    losses = run.warmup_infos.loss[0]
    state = jax.tree_util.tree_map(lambda x: jnp.asarray(x[0]), run.final_state)

    guide_params = svi.get_params(state)
    sites = latent_sites(config)

    @unchecked
    def guide_draws(key, params):
        return svi.guide.sample_posterior(key, params, sample_shape=(num_samples,))

    samples = compile_program(guide_draws, key_draws, guide_params)(key_draws, guide_params)
    draws = params_from_sites({name: samples[name][None] for name in sites}, data, config)
    draws = to_numpy(draws)

    tracked = None
    if track_pairs is not None:
        means = np.asarray(_draw_means(draws, pairs[0], pairs[1]))  # (1, num_samples, n)
        tracked = driver.moments_of(means, 1.0 / draws.noise_precision, keep_track_draws)
        if keep_track_draws:
            tracked = tracked._replace(noise_sd=1.0 / np.sqrt(draws.noise_precision))

    every = max(1, -(-num_steps // MAX_LOSS_POINTS))
    final = float(np.mean(losses[-min(100, num_steps):]))
    optimize_seconds = run.timing["warmup_seconds"]
    timing = dict(
        compile_seconds=run.timing["compile_seconds"],
        init_seconds=run.timing["init_seconds"],
        optimize_seconds=optimize_seconds,
        seconds_per_step=optimize_seconds / num_steps,
        fit_seconds=time.perf_counter() - t0,
    )
    return EngineResult(
        draws=draws,
        stats={"elbo_loss": np.full((1, num_samples), final)},
        timing=timing,
        tracked=tracked,
        info=dict(
            engine="svi",
            guide="AutoNormal",
            num_steps=num_steps,
            learning_rate=float(learning_rate) if optimizer is None else None,
            decay=float(decay) if optimizer is None else None,
            losses=losses[::every],
            loss_every=every,
            final_loss=final,
            guide_params={k: np.asarray(v) for k, v in guide_params.items()},
        ),
    )
