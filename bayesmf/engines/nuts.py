"""NUTS (NumPyro) on the one model of :mod:`bayesmf.model`.

The sampler targets exactly :func:`bayesmf.model.numpyro_model` (either prior
mode, either offset mode); only the coordinates it moves in can change. With
``parameterization="noncentered"`` (the default) the movie offsets and the
factors are sampled as standard normals and mapped back deterministically:

.. math::

    m_v &= \\mu_0 + \\tau_m^{-1/2}\\, \\epsilon_v, \\qquad \\epsilon_v \\sim \\mathcal N(0, 1) \\\\
    L_u &= \\mu_L + S_L z_u, \\qquad R_v = \\mu_R + S_R w_v, \\qquad
    z_u, w_v \\sim \\mathcal N(0, I), \\quad S S^\\top = \\Lambda^{-1}

with :class:`numpyro.handlers.reparam` (``LocScaleReparam(centered=0)`` for
the offsets, :class:`FactorDecentering` for the multivariate-normal factor
sites). The model's own site names come back as deterministic sites, so the
draws are :class:`~bayesmf.model.Params` in either parameterization. Which
one mixes better on ml-100k is measured by ``benchmarks/nuts_vs_gibbs.py``
(figures at :data:`DEFAULT_PARAMETERIZATION`).

Engine layout (house style): :func:`init` and :func:`step` are the pure pair
over NumPyro's ``HMCState``, entering through NumPyro's kernel API
(``NUTS.init``, ``NUTS.sample``; the state carries its own key, NumPyro's
design, so the driver's step keys are unused); :func:`sample` runs them
through the one driver (:mod:`bayesmf.engines.driver`). Warmup (step size and
diagonal mass matrix adaptation, NumPyro's windowed scheme) is NumPyro's own:
it happens inside ``NUTS.sample`` during the first ``num_warmup`` iterations,
in the same compiled chunk, which the kernel switches off afterwards.

Chains: chain ``c`` starts from ``chain_keys(rng_key, num_chains)[c] =
fold_in(rng_key, c)``, so with ``chain_method="sequential"`` (or
``"parallel"``) chain 0's draws are bit-for-bit the same whatever
``num_chains`` is. ``"vectorized"`` (``vmap``) runs the same chains in lock
step; batched arithmetic can differ in the last bits from the unbatched
program, and NUTS trajectories amplify such differences, so there only the
distribution of chain 0 (not its bits) is the same.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import biject_to
from numpyro.handlers import reparam
from numpyro.infer import NUTS, init_to_uniform
from numpyro.infer.hmc import HMCState
from numpyro.infer.reparam import LocScaleReparam, Reparam

from bayesmf.engines import driver
from bayesmf.engines.common import EngineResult, to_numpy
from bayesmf.engines.driver import Engine, chain_keys, check_counts, check_pairs
from bayesmf.engines.numpyro_util import host_normalized, init_to_prior_centre, unchecked
from bayesmf.model import ModelConfig, ModelData, Params, latent_sites, numpyro_model, params_from_sites, predict_mean

Array = jax.Array

CHAIN_METHODS = ("sequential", "parallel", "vectorized")
PARAMETERIZATIONS = ("noncentered", "centered")
DEFAULT_PARAMETERIZATION = "noncentered"
"""Default coordinates. On ml-100k u1 (rank 10, hyper priors, 500 warmup +
300 draws) the non-centred form gave more effective samples per second of
the test predictions than the centred one; see ``benchmarks/nuts_vs_gibbs.py``
and its JSON for the figures."""

class NutsInfo(NamedTuple):
    """Per-draw diagnostics (over the ``thin`` NUTS steps behind a kept draw).

    Attributes
    ----------
    diverging : bool array, shape ()
        Any divergent trajectory.
    num_steps : int array, shape ()
        Leapfrog steps (gradient evaluations), summed.
    accept_prob : array, shape ()
        Mean acceptance statistic.
    step_size : array, shape ()
        Step size of the last trajectory.
    nonfinite : int array, shape ()
        1 when the position holds a NaN/inf (0: all finite).
    """

    diverging: Array
    num_steps: Array
    accept_prob: Array
    step_size: Array
    nonfinite: Array


class FactorDecentering(Reparam):
    """Non-centred form of a multivariate normal latent site.

    ``x ~ N(mu, Lambda^-1)`` becomes ``z ~ N(0, I)`` at ``<name>_decentered``
    and ``x = mu + S z`` with ``S`` the lower-triangular square root of the
    covariance that :class:`numpyro.distributions.MultivariateNormal` itself
    uses (``S S^T = Lambda^-1``). The Jacobian of ``z -> x`` does not depend
    on ``z``, so the target density is unchanged.
    """

    def __call__(self, name, fn, obs):
        if obs is not None:
            raise ValueError(f"FactorDecentering is for latent sites; {name!r} is observed")
        fn, expand_shape, event_dim = self._unwrap(fn)
        if not isinstance(fn, dist.MultivariateNormal):
            raise ValueError(f"FactorDecentering needs a MultivariateNormal at {name!r}, got {type(fn).__name__}")
        base = dist.Normal(jnp.zeros_like(fn.loc), 1.0)
        z = numpyro.sample(f"{name}_decentered", self._wrap(base.to_event(1), expand_shape, event_dim))
        value = fn.loc + jnp.einsum("...ij,...j->...i", fn.scale_tril, z)
        return None, value


def _decentered_sites(config: ModelConfig, parameterization: str) -> tuple[str, ...]:
    if parameterization == "centered":
        return ()
    sites = ["user_factors", "item_factors"]
    if config.offsets == "estimated":
        sites.append("item_offsets")
    return tuple(sites)


def reparameterized_model(config: ModelConfig, parameterization: str = DEFAULT_PARAMETERIZATION):
    """The model as a function of ``data`` alone, in the chosen coordinates.

    Parameters
    ----------
    config : ModelConfig
    parameterization : {"noncentered", "centered"}

    Returns
    -------
    callable
        ``model(data)``; the same joint density as ``numpyro_model(data, config)``.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}")
    model = host_normalized(functools.partial(numpyro_model, config=config), config)
    rules = {}
    for name in _decentered_sites(config, parameterization):
        rules[name] = LocScaleReparam(centered=0) if name == "item_offsets" else FactorDecentering()
    return reparam(model, config=rules) if rules else model


def sample_site_values(params: Params, config: ModelConfig, parameterization: str = DEFAULT_PARAMETERIZATION) -> dict:
    """Values of the sample sites of :func:`reparameterized_model` at ``params``
    (constrained space): the inverse of the non-centring maps.

    Parameters
    ----------
    params : Params
        One value of every model quantity (no leading axes), e.g. a MAP fit
        or a Gibbs draw.

    Returns
    -------
    dict of str -> array
    """
    values = {name: jnp.asarray(getattr(params, name)) for name in latent_sites(config)}
    for name in _decentered_sites(config, parameterization):
        x = values.pop(name)
        if name == "item_offsets":
            values[f"{name}_decentered"] = (x - params.offset_mean) * jnp.sqrt(params.offset_precision)
        else:
            mean, precision = (
                (params.user_mean, params.user_precision) if name == "user_factors" else (params.item_mean, params.item_precision)
            )
            scale_tril = dist.MultivariateNormal(jnp.asarray(mean), precision_matrix=jnp.asarray(precision)).scale_tril
            z = jax.scipy.linalg.solve_triangular(scale_tril, (x - mean).T, lower=True).T
            values[f"{name}_decentered"] = z
    return values


def _unconstrained(trace) -> dict:
    """Unconstrained values of the latent sample sites of a model trace."""
    return {
        name: biject_to(site["fn"].support).inv(site["value"])
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    }


def _thin_info(infos: NutsInfo) -> NutsInfo:
    return NutsInfo(
        jnp.any(infos.diverging), jnp.sum(infos.num_steps), jnp.mean(infos.accept_prob), infos.step_size[-1],
        jnp.max(infos.nonfinite),
    )


class NutsKernel:
    """A NumPyro NUTS kernel for one set of static settings, with its jitted
    init program and the driver's compiled chunk programs (``compiled``).

    Kept in a small cache (:func:`build_kernel`): NUTS programs take seconds
    to tens of seconds to compile on a CPU, and a later run with the same
    settings and data shapes (another seed, more draws, a test) reuses them.
    Data and initial values are arguments, never constants of a program.
    """

    def __init__(self, config, parameterization, target_accept_prob, max_tree_depth, dense_mass, num_warmup):
        self.config = config
        self.parameterization = parameterization
        self.model = reparameterized_model(config, parameterization)
        self.nuts = NUTS(
            self.model,
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
            dense_mass=[tuple(block) for block in dense_mass] if isinstance(dense_mass, tuple) else dense_mass,
            # Unused: init always passes unconstrained values.
            init_strategy=init_to_uniform,
        )
        self.num_warmup = num_warmup
        self.sites = latent_sites(config)
        self.init_program = jax.jit(unchecked(self._init))
        self.compiled = {}

    def _init(self, rng_key, params, data):
        key_z, key_kernel = jax.random.split(rng_key)
        if params is None:
            model = handlers.substitute(handlers.seed(self.model, key_z), substitute_fn=init_to_prior_centre())
        else:
            values = sample_site_values(params, self.config, self.parameterization)
            model = handlers.substitute(handlers.seed(self.model, key_z), data=values)
        z = _unconstrained(handlers.trace(model).get_trace(data))
        return self.nuts.init(key_kernel, self.num_warmup, z, (data,), {})


@functools.lru_cache(maxsize=8)
def build_kernel(
    config: ModelConfig,
    parameterization: str = DEFAULT_PARAMETERIZATION,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    dense_mass=False,
    num_warmup: int = 500,
) -> NutsKernel:
    """The (cached) :class:`NutsKernel` for these settings; ``dense_mass`` in
    hashable form (a bool or a tuple of tuples of site names)."""
    return NutsKernel(config, parameterization, target_accept_prob, max_tree_depth, dense_mass, num_warmup)


def init(rng_key: Array, data: ModelData, config: ModelConfig, kernel: NutsKernel, init_params: Params | None = None) -> HMCState:
    """Initial state of one chain.

    Parameters
    ----------
    rng_key : jax.Array
        Split into the key of the starting point and the kernel's own key.
    data : ModelData
    config : ModelConfig
        Must be ``kernel.config``.
    kernel : NutsKernel
        From :func:`build_kernel` (fixes ``num_warmup``, the adaptation schedule).
    init_params : Params, optional
        Starting point (a MAP fit, a Gibbs draw); default
        :func:`~bayesmf.engines.numpyro_util.init_to_prior_centre`.

    Returns
    -------
    numpyro.infer.hmc.HMCState
    """
    if config != kernel.config:
        raise ValueError("config differs from the kernel's")
    return kernel.init_program(rng_key, init_params, data)


def step(rng_key: Array, state: HMCState, data: ModelData, kernel: NutsKernel) -> tuple[HMCState, NutsInfo]:
    """One NUTS trajectory (``NUTS.sample``; adapting while
    ``state.i < num_warmup``). ``rng_key`` is unused: the state carries the
    kernel's key (NumPyro's design), which keeps the draws those of NumPyro."""
    s = kernel.nuts.sample(state, (data,), {})
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(s.z)]))
    info = NutsInfo(s.diverging, s.num_steps, s.accept_prob, s.adapt_state.step_size, jnp.where(finite, 0, 1))
    return s, info


def engine(data: ModelData, config: ModelConfig, kernel: NutsKernel, init_params: Params | None = None) -> Engine:
    """The NUTS engine for :func:`bayesmf.engines.driver.sample`: kept draws
    are the latent sites in constrained space (a dict)."""

    def draw_fn(state, data):
        values = kernel.nuts.postprocess_fn((data,), {})(state.z)
        return {name: values[name] for name in kernel.sites}

    def track_fn(state, data, pairs):
        params = params_from_sites(draw_fn(state, data), data, config)
        return predict_mean(params, pairs[0], pairs[1]), 1.0 / params.noise_precision

    return Engine(
        name="nuts",
        init_fn=lambda chain_key: init(chain_key, data, config, kernel, init_params),
        step_fn=unchecked(lambda rng_key, state, data: step(rng_key, state, data, kernel)),
        draw_fn=unchecked(draw_fn),
        track_fn=unchecked(track_fn),
        thin_info_fn=_thin_info,
        postfix_fn=lambda infos: {"step_size": f"{float(np.mean(infos.step_size[:, -1])):.3g}",
                                  "steps": int(np.max(infos.num_steps[:, -1]))},
        blocks=("none", "position"),
        hint="try a higher target_accept_prob, the other parameterization or stronger priors",
        unit="step",
    )


def _hashable_dense_mass(dense_mass):
    if isinstance(dense_mass, (bool, np.bool_)):
        return bool(dense_mass)
    try:
        return tuple(tuple(str(name) for name in block) for block in dense_mass)
    except TypeError:
        raise ValueError(f"dense_mass must be a bool or a list of tuples of site names, got {dense_mass!r}") from None


def sample(
    rng_key: Array,
    data: ModelData,
    config: ModelConfig,
    *,
    num_samples: int = 300,
    num_warmup: int = 500,
    num_chains: int = 1,
    thin: int = 1,
    chain_method: str = "sequential",
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    dense_mass=False,
    init="median",
    parameterization: str = DEFAULT_PARAMETERIZATION,
    track_pairs: tuple | None = None,
    keep_track_draws: bool = True,
    checkpoint=None,
    checkpoint_every: int | None = None,
    progress_bar: bool = True,
) -> EngineResult:
    """Run NUTS on ``num_chains`` chains of the model.

    Parameters
    ----------
    rng_key : jax.Array
    data : ModelData
    config : ModelConfig
    num_samples : int
        Draws kept per chain (after thinning).
    num_warmup : int
        Adaptation steps discarded per chain.
    num_chains : int
    thin : int
        NUTS steps per kept draw.
    chain_method : {"sequential", "parallel", "vectorized"}
        One chain after another through one compiled program; one chain per
        device (``pmap``; falls back to sequential with a warning when there
        are fewer devices than chains); or all chains in lock step (``vmap``).
    target_accept_prob : float
        Step size adaptation target.
    max_tree_depth : int
        At most ``2 ** max_tree_depth - 1`` leapfrog steps per draw.
    dense_mass : bool or list of tuple of str
        NumPyro's form: ``True`` is one dense matrix over every latent
        coordinate (28,000 of them at ml-100k size, rank 10: a 3 GB float32
        matrix, and a Cholesky of it per adaptation window); a list of site-name tuples
        gives dense blocks (e.g. over the hyperparameter sites), diagonal
        elsewhere.
    init : "median" or Params
        ``"median"``: :func:`~bayesmf.engines.numpyro_util.init_to_prior_centre`
        (NumPyro's prior-median start, with the Gamma and Wishart precisions
        at their prior mean), per chain; or a given state (a MAP fit, a Gibbs
        draw) shared by all chains.
    parameterization : {"noncentered", "centered"}
        Coordinates of the factors and offsets (module docstring).
    track_pairs : (user_index, item_index) int arrays, shape (n,), optional
        Pairs whose predictive moments the driver streams during sampling.
    keep_track_draws : bool
        Also keep the per-draw predicted means of ``track_pairs``.
    checkpoint : str or path-like, optional
        File where the run saves its progress (sampler state, draws so far,
        seconds; :mod:`bayesmf.engines.driver`'s ``numpy.savez`` format) at
        most every ``driver.CHECKPOINT_SECONDS`` (or ``checkpoint_every``
        steps); a later call with the same key, data and settings resumes
        from it, and a finished run deletes it; a file from another run is
        refused (``ValueError`` naming it). For long runs on machines where
        processes get killed. Resumed runs give the same draws as
        uninterrupted ones; their ``compile_seconds`` and ``init_seconds``
        are those of the last call.
    checkpoint_every : int, optional
        NUTS steps (warm-up included) between saves, rounded up to the
        driver's chunk.
    progress_bar : bool
        NUTS steps done, steps per second and the time left.

    Returns
    -------
    EngineResult
        ``draws``: :class:`~bayesmf.model.Params`, NumPy arrays with leading
        ``(num_chains, num_samples)`` axes. ``stats``: ``diverging``,
        ``num_steps``, ``accept_prob``, ``step_size``, arrays (num_chains,
        num_samples). ``timing``: ``compile_seconds`` (ahead-of-time compile
        of the chunk program; 0 when an earlier call compiled it),
        ``init_seconds`` (initial states, compile included),
        ``sampling_seconds`` (warmup and draws), ``warmup_seconds``,
        ``draw_seconds``, ``seconds_per_sample`` (per NUTS step, warmup
        included), ``seconds_per_leapfrog`` (kept draws' time over their
        leapfrog steps: one gradient each, plus NUTS's tree bookkeeping)
        and ``fit_seconds``.

    Examples
    --------
    >>> import jax
    >>> from bayesmf.model import ModelConfig, make_model_data
    >>> data = make_model_data([0, 0, 1, 2], [0, 1, 1, 0], [4.0, 3.0, 5.0, 2.0], 3, 2)
    >>> result = sample(jax.random.PRNGKey(0), data, ModelConfig(rank=1), num_samples=20,
    ...                 num_warmup=20, progress_bar=False)  # doctest: +SKIP
    >>> result.draws.user_factors.shape  # doctest: +SKIP
    (1, 20, 3, 1)
    """
    num_samples, num_warmup, num_chains, thin = check_counts(num_samples, num_warmup, num_chains, thin)
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"unknown chain_method {chain_method!r}; expected one of {CHAIN_METHODS}")
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}")
    if not 0.0 < float(target_accept_prob) < 1.0:
        raise ValueError(f"target_accept_prob must be in (0, 1), got {target_accept_prob}")
    if int(max_tree_depth) <= 0:
        raise ValueError(f"max_tree_depth must be > 0, got {max_tree_depth}")
    if not (isinstance(init, Params) or (isinstance(init, str) and init == "median")):
        raise ValueError(f"init must be 'median' or a Params, got {init!r}")
    if track_pairs is not None:
        check_pairs(track_pairs)

    t0 = time.perf_counter()
    init_params = None
    if isinstance(init, Params):
        dtype = data.rating.dtype
        init_params = jax.tree.map(lambda x: jnp.asarray(x, dtype), Params(*init))
    settings = dict(
        num_samples=num_samples,
        num_warmup=num_warmup,
        num_chains=num_chains,
        thin=thin,
        chain_method=chain_method,
        target_accept_prob=float(target_accept_prob),
        max_tree_depth=int(max_tree_depth),
        dense_mass=_hashable_dense_mass(dense_mass),
        init="median" if isinstance(init, str) else "params",
        parameterization=parameterization,
    )
    kernel = build_kernel(
        config, parameterization, float(target_accept_prob), int(max_tree_depth), settings["dense_mass"], num_warmup
    )
    if checkpoint is not None:
        checkpoint = (checkpoint, driver.signature(rng_key, dict(settings, config=config), data, init_params))
    run = driver.sample(
        chain_keys(rng_key, num_chains),
        engine(data, config, kernel, init_params),
        data,
        num_samples=num_samples,
        num_warmup=num_warmup,
        thin=thin,
        chain_method=chain_method,
        track_pairs=track_pairs,
        keep_track_draws=keep_track_draws,
        track_dtype=data.rating.dtype,
        progress_bar=progress_bar,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        cache=kernel.compiled,
    )
    out_draws = to_numpy(params_from_sites(run.draws, data, config))
    infos = run.infos
    draw_steps = int(np.sum(infos.num_steps))
    nuts_steps = num_chains * (num_warmup + num_samples * thin)
    sampling_seconds = run.timing["sampling_seconds"]
    timing = dict(
        compile_seconds=run.timing["compile_seconds"],
        init_seconds=run.timing["init_seconds"],
        sampling_seconds=sampling_seconds,
        warmup_seconds=run.timing["warmup_seconds"],
        draw_seconds=run.timing["draw_seconds"],
        seconds_per_sample=sampling_seconds / max(nuts_steps, 1),
        seconds_per_leapfrog=run.timing["draw_seconds"] / max(draw_steps, 1),
        fit_seconds=time.perf_counter() - t0,
    )
    stats = dict(
        diverging=np.asarray(infos.diverging, bool),
        num_steps=np.asarray(infos.num_steps),
        accept_prob=np.asarray(infos.accept_prob),
        step_size=np.asarray(infos.step_size),
    )
    tracked = run.tracked
    if tracked is not None and keep_track_draws:
        tracked = tracked._replace(noise_sd=1.0 / np.sqrt(out_draws.noise_precision))
    warm_steps = 0 if run.warmup_infos is None else int(np.sum(run.warmup_infos.num_steps))
    return EngineResult(
        draws=out_draws,
        stats=stats,
        timing=timing,
        tracked=tracked,
        info=dict(
            engine="nuts",
            settings=settings,
            num_divergences=int(stats["diverging"].sum()),
            warmup_num_steps=warm_steps,
            mean_num_steps=float(np.mean(stats["num_steps"])),
            chunk=run.chunk,
        ),
    )
