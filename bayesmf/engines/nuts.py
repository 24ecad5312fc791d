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

Engine layout (house style): NumPyro's NUTS kernel supplies the pure pair
``init(rng_key) -> HMCState`` and ``sample(state) -> HMCState`` (its state
carries its own key, NumPyro's design); :func:`sample` is the one jitted,
chunked ``lax.scan`` driver around it, compiled ahead of time so that compile
and sampling seconds are measured separately. Warmup (step size and diagonal
mass matrix adaptation, NumPyro's windowed scheme) happens inside the same
compiled chunk, which the kernel switches off after ``num_warmup`` steps.

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
import hashlib
import math
import os
import pickle
import time
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import biject_to
from numpyro.handlers import reparam
from numpyro.infer import NUTS, init_to_median, init_to_uniform
from numpyro.infer.reparam import LocScaleReparam, Reparam
from numpyro.primitives import Messenger
from scipy import special

from bayesmf.engines.common import (
    EngineResult,
    TrackedMoments,
    chain_keys,
    chunk_size,
    concat_draws,
    progress,
    stack_chains,
    timed_compile,
    to_numpy,
)
from bayesmf.model import ModelConfig, ModelData, Params, latent_sites, numpyro_model, params_from_sites, predict_mean

Array = jax.Array

CHAIN_METHODS = ("sequential", "parallel", "vectorized")
PARAMETERIZATIONS = ("noncentered", "centered")
DEFAULT_PARAMETERIZATION = "noncentered"
"""Default coordinates. On ml-100k u1 (rank 10, hyper priors, 500 warmup +
300 draws) the non-centred form gave more effective samples per second of
the test predictions than the centred one; see ``benchmarks/nuts_vs_gibbs.py``
and its JSON for the figures."""

# Prior draws whose elementwise median starts each chain (NumPyro's default).
MEDIAN_INIT_DRAWS = 15


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
    """

    diverging: Array
    num_steps: Array
    accept_prob: Array
    step_size: Array


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


class _ConstantGamma(dist.Gamma):
    """``Gamma(a, b)`` with constant ``a, b`` whose log normalizer
    ``a log b - log Gamma(a)`` is computed once in NumPy (see
    :func:`host_normalized`)."""

    def __init__(self, concentration: float, rate: float):
        super().__init__(concentration, rate)
        self._shape, self._rate = float(concentration), float(rate)
        self._log_norm = self._shape * math.log(self._rate) - float(special.gammaln(self._shape))

    def log_prob(self, value):
        return (self._shape - 1.0) * jnp.log(value) - self._rate * value + self._log_norm


class _ConstantWishart(dist.Wishart):
    """``Wishart(nu, w I)`` with constant ``nu, w`` whose log normalizer
    ``-nu p/2 log 2 - nu p/2 log w - log Gamma_p(nu/2)`` is computed once in
    NumPy (see :func:`host_normalized`)::

        log p(Lambda) = (nu - p - 1)/2 log|Lambda| - tr(Lambda)/(2 w) + log normalizer
    """

    def __init__(self, nu: float, w0_scale: float, dim: int):
        super().__init__(nu, scale_matrix=w0_scale * np.eye(dim))
        self._nu, self._w, self._dim = float(nu), float(w0_scale), int(dim)
        self._log_norm = (
            -0.5 * self._nu * self._dim * (math.log(2.0) + math.log(self._w))
            - float(special.multigammaln(0.5 * self._nu, self._dim))
        )

    def log_prob(self, value):
        chol = jnp.linalg.cholesky(value)
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        trace = jnp.trace(value, axis1=-2, axis2=-1)
        return 0.5 * (self._nu - self._dim - 1.0) * logdet - 0.5 * trace / self._w + self._log_norm


class _HostNormalizers(Messenger):
    def __init__(self, fn, config: ModelConfig):
        self.config = config
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample" or self.config.priors != "hyper":
            return
        h, name, fn = self.config.hyper, msg["name"], msg["fn"]
        if name in ("user_precision", "item_precision") and type(fn) is dist.Wishart:
            msg["fn"] = _ConstantWishart(self.config.nu0, h.w0_scale, self.config.rank)
        elif name == "noise_precision" and type(fn) is dist.Gamma:
            msg["fn"] = _ConstantGamma(h.noise_shape, h.noise_rate)
        elif name == "offset_precision" and type(fn) is dist.Gamma:
            msg["fn"] = _ConstantGamma(h.offset_shape, h.offset_rate)


def host_normalized(model, config: ModelConfig):
    """The model with the same density, its constant log normalizers computed
    in NumPy instead of in every compiled program.

    NumPyro evaluates ``log Gamma(a)`` of the Gamma priors and the
    multivariate ``log Gamma_p(nu/2)`` of the Wishart priors inside the log
    density although their arguments are constants of :class:`ModelConfig`:
    those special functions are 60% of the HLO of the model's
    ``value_and_grad`` at rank 2 and made its compile 2-3x slower (3.4 s
    against 1.2 s; a NUTS fit compiles three such gradients, SVI two). The
    hyperprior sites (``config.priors == "hyper"``) get subclasses of
    ``dist.Gamma`` / ``dist.Wishart`` with the same parameters, sampler and
    support whose ``log_prob`` adds a precomputed constant; the log density is
    unchanged (tested against :func:`bayesmf.model.numpyro_model`).

    Parameters
    ----------
    model : callable
        ``numpyro_model`` with ``config`` bound (or a handler around it).
    config : ModelConfig
    """
    return _HostNormalizers(model, config)


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


def _chunk_fn(kernel: NUTS, sites: tuple[str, ...], size: int, thin: int):
    """Build ``chunk(state, data) -> (state, draws, infos)`` for one chain:
    ``size`` kept draws, ``thin`` NUTS steps each."""

    def chunk(state, data):
        model_args = (data,)
        constrain = kernel.postprocess_fn(model_args, {})

        def nuts_step(s, _):
            s = kernel.sample(s, model_args, {})
            return s, NutsInfo(s.diverging, s.num_steps, s.accept_prob, s.adapt_state.step_size)

        def one(s, _):
            if thin == 1:  # no nested scan: it would double the compiled program
                s, info = nuts_step(s, None)
            else:
                s, infos = jax.lax.scan(nuts_step, s, None, length=thin)
                info = NutsInfo(
                    jnp.any(infos.diverging), jnp.sum(infos.num_steps), jnp.mean(infos.accept_prob), infos.step_size[-1]
                )
            values = constrain(s.z)
            return s, ({name: values[name] for name in sites}, info)

        state, (draws, infos) = jax.lax.scan(one, state, None, length=size)
        return state, draws, infos

    return chunk


def _one_of_batch(one_chain):
    """Run a one-chain chunk on a leading axis of size one (sequential chains)."""

    def fn(state, data):
        state, draws, infos = one_chain(jax.tree_util.tree_map(lambda x: x[0], state), data)
        add = functools.partial(jax.tree_util.tree_map, lambda x: x[None])
        return add(state), add(draws), add(infos)

    return fn


def init_to_prior_centre(site=None):
    """NumPyro init strategy: Gamma and Wishart sites at their prior mean, the
    other sites at NumPyro's ``init_to_median`` (elementwise median of
    :data:`MEDIAN_INIT_DRAWS` prior draws, which also puts the factors at small
    random values off the ``L = R = 0`` saddle).

    Drawing the Gamma and Wishart sites, as ``init_to_median`` would, compiles
    NumPyro's rejection Gamma sampler into the init program: about 30 s of
    compile time on a loaded 2-core CPU, for a starting point warmup forgets.
    """
    if site is None:
        return functools.partial(init_to_prior_centre)  # NumPyro expects a partial
    if site["type"] == "sample" and not site["is_observed"] and isinstance(site["fn"], (dist.Gamma, dist.Wishart)):
        return site["fn"].mean
    return init_to_median(site, num_samples=MEDIAN_INIT_DRAWS)


class _Programs:
    """A NUTS kernel with its jitted init and chunk programs, for one set of
    static settings.

    Kept in a small cache (:func:`_programs`): NUTS programs take seconds to
    tens of seconds to compile on a CPU, and a later run with the same
    settings and data shapes (another seed, more draws, a test) reuses them.
    Data and initial values are arguments, never constants of a program.
    """

    def __init__(self, config, parameterization, target_accept_prob, max_tree_depth, dense_mass, num_warmup):
        self.config = config
        self.parameterization = parameterization
        self.model = reparameterized_model(config, parameterization)
        self.kernel = NUTS(
            self.model,
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
            dense_mass=[tuple(block) for block in dense_mass] if isinstance(dense_mass, tuple) else dense_mass,
            # Unused: the init program below always passes unconstrained values.
            init_strategy=init_to_uniform,
        )
        self.num_warmup = num_warmup
        self.init = jax.jit(self._init)
        self.compiled = {}

    def _init(self, rng_key, params, data):
        """Initial HMCState of one chain, from ``params`` (a Params) or, when
        None, from :func:`init_to_prior_centre`."""
        key_z, key_kernel = jax.random.split(rng_key)
        if params is None:
            model = handlers.substitute(handlers.seed(self.model, key_z), substitute_fn=init_to_prior_centre())
        else:
            values = sample_site_values(params, self.config, self.parameterization)
            model = handlers.substitute(handlers.seed(self.model, key_z), data=values)
        z = _unconstrained(handlers.trace(model).get_trace(data))
        return self.kernel.init(key_kernel, self.num_warmup, z, (data,), {})

    def chunk(self, which: str, size: int, thin: int, chain_method: str, state, data):
        """(program, compile seconds) for ``size`` kept draws of ``thin`` steps:
        compiled ahead of time on first use for these shapes, then 0 seconds."""
        signature = (which, size, thin, chain_method) + tuple(
            (x.shape, str(x.dtype)) for x in jax.tree_util.tree_leaves((state, data))
        )
        if signature in self.compiled:
            return self.compiled[signature], 0.0
        one_chain = _chunk_fn(self.kernel, latent_sites(self.config), size, thin)
        if chain_method == "sequential":
            fn = _one_of_batch(one_chain)
        else:
            fn = (jax.vmap if chain_method == "vectorized" else jax.pmap)(one_chain, in_axes=(0, None))
        if chain_method == "parallel":
            # pmap compiles on its first call: that time lands in sampling.
            program, seconds = fn, float("nan")
        else:
            program, seconds = timed_compile(fn, state, data)
        self.compiled[signature] = program
        return program, seconds


@functools.lru_cache(maxsize=8)
def _programs(*settings) -> _Programs:
    return _Programs(*settings)


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
    checkpoint=None,
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
        ``"median"``: :func:`init_to_prior_centre` (NumPyro's prior-median
        start, with the Gamma and Wishart precisions at their prior mean),
        per chain; or a given state (a MAP fit, a Gibbs draw) shared by all
        chains.
    parameterization : {"noncentered", "centered"}
        Coordinates of the factors and offsets (module docstring).
    track_pairs : (user_index, item_index) int arrays, shape (n,), optional
        Pairs whose per-draw predicted means are returned in ``tracked``
        (computed from the kept draws; the Gibbs engine streams them).
    checkpoint : str or path-like, optional
        File where the run saves its progress (sampler state, draws so far,
        seconds) at most every :data:`CHECKPOINT_SECONDS`; a later call with
        the same key, data and settings resumes from it, and a finished run
        deletes it. For long runs on machines where processes get killed.
        Resumed runs give the same draws as uninterrupted ones; their
        ``compile_seconds`` and ``init_seconds`` are those of the last call.
    progress_bar : bool

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
    for name, value in (("num_samples", num_samples), ("num_chains", num_chains), ("thin", thin)):
        if isinstance(value, bool) or int(value) <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if int(num_warmup) < 0:
        raise ValueError(f"num_warmup must be >= 0, got {num_warmup}")
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
    num_samples, num_warmup, num_chains, thin = int(num_samples), int(num_warmup), int(num_chains), int(thin)
    if track_pairs is not None:
        pairs = (np.asarray(track_pairs[0], np.int32), np.asarray(track_pairs[1], np.int32))
        if pairs[0].shape != pairs[1].shape or pairs[0].ndim != 1 or pairs[0].size == 0:
            raise ValueError("track_pairs must be two non-empty 1-D index arrays of one length")
    if chain_method == "parallel" and jax.local_device_count() < num_chains:
        warnings.warn(
            f"chain_method='parallel' needs {num_chains} devices, found {jax.local_device_count()}; running sequentially",
            stacklevel=2,
        )
        chain_method = "sequential"

    t0 = time.perf_counter()
    init_params = None
    if isinstance(init, Params):
        dtype = data.rating.dtype
        init_params = Params(*(jnp.asarray(x, dtype) for x in init))
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
    run = _fresh_progress()
    if checkpoint is not None:
        signature = _signature(rng_key, data, dict(settings, config=config), init_params)
        run = _read_checkpoint(checkpoint, signature) or run
    size = chunk_size(num_warmup, num_samples)
    programs = _programs(
        config, parameterization, float(target_accept_prob), int(max_tree_depth), _hashable_dense_mass(dense_mass), num_warmup
    )

    # Initial states one chain at a time through one program, so chain c's
    # start is the same under every chain_method and every num_chains.
    keys = chain_keys(rng_key, num_chains)
    states = [programs.init(keys[c], init_params, data) for c in range(num_chains)]
    jax.block_until_ready(states)
    init_seconds = time.perf_counter() - t0
    if chain_method == "sequential":
        groups = [jax.tree_util.tree_map(lambda x: x[None], s) for s in states]
    else:
        groups = [stack_chains(states)]

    draw_program, compile_seconds = programs.chunk("draw", size, thin, chain_method, groups[0], data)
    warm_program = draw_program  # one program serves warmup too when thin == 1 (its draws are dropped)
    if num_warmup > 0 and thin != 1:
        warm_program, seconds = programs.chunk("warm", size, 1, chain_method, groups[0], data)
        compile_seconds += seconds

    num_warm_chunks, num_chunks = num_warmup // size, (num_warmup + num_samples) // size
    bar = progress(num_chains * (num_warmup + num_samples), "nuts", progress_bar)
    width = 1 if chain_method == "sequential" else num_chains
    bar.update(size * width * (run["group"] * num_chunks + run["chunk"]))
    last_save = time.perf_counter()
    try:
        for g in range(run["group"], len(groups)):
            state = groups[g] if run["state"] is None else jax.tree_util.tree_map(jnp.asarray, run["state"])
            width = jax.tree_util.tree_leaves(state)[0].shape[0]
            for k in range(run["chunk"], num_chunks):
                start = time.perf_counter()
                if k < num_warm_chunks:
                    state, _, infos = warm_program(state, data)
                    run["steps"].append(np.asarray(infos.num_steps))
                    run["warmup_seconds"] += time.perf_counter() - start
                else:
                    state, chunk_draws, infos = draw_program(state, data)
                    run["draws"].append(to_numpy(chunk_draws))
                    run["infos"].append(to_numpy(infos))
                    run["draw_seconds"] += time.perf_counter() - start
                    bar.set_postfix(step_size=f"{float(np.mean(infos.step_size[:, -1])):.3g}",
                                    steps=int(np.max(infos.num_steps[:, -1])))
                bar.update(size * width)
                run["chunk"] = k + 1
                if checkpoint is not None and time.perf_counter() - last_save > CHECKPOINT_SECONDS:
                    run["group"], run["state"] = g, to_numpy(state)
                    _write_checkpoint(checkpoint, signature, run)
                    last_save = time.perf_counter()
            steps = np.concatenate(run["steps"], axis=1) if run["steps"] else np.zeros((width, 0), np.int64)
            run["done"].append((concat_draws(run["draws"]), concat_draws(run["infos"]), steps))
            run.update(group=g + 1, chunk=0, state=None, draws=[], infos=[], steps=[])
    finally:
        bar.close()
    draws_by_group = [done[0] for done in run["done"]]
    infos_by_group = [done[1] for done in run["done"]]
    warm_steps = [done[2] for done in run["done"]]
    warmup_seconds, draw_seconds = run["warmup_seconds"], run["draw_seconds"]
    sampling_seconds = warmup_seconds + draw_seconds

    site_draws = concat_draws(draws_by_group, axis=0)
    infos = concat_draws(infos_by_group, axis=0)
    warm_steps = np.concatenate(warm_steps, axis=0)
    out_draws = to_numpy(params_from_sites(site_draws, data, config))
    draw_steps = int(np.sum(infos.num_steps))
    nuts_steps = num_chains * (num_warmup + num_samples * thin)
    timing = dict(
        compile_seconds=compile_seconds,
        init_seconds=init_seconds,
        sampling_seconds=sampling_seconds,
        warmup_seconds=warmup_seconds,
        draw_seconds=draw_seconds,
        seconds_per_sample=sampling_seconds / max(nuts_steps, 1),
        seconds_per_leapfrog=draw_seconds / max(draw_steps, 1),
        fit_seconds=time.perf_counter() - t0,
    )
    stats = dict(
        diverging=np.asarray(infos.diverging, bool),
        num_steps=np.asarray(infos.num_steps),
        accept_prob=np.asarray(infos.accept_prob),
        step_size=np.asarray(infos.step_size),
    )
    tracked = _predictive_moments(out_draws, pairs) if track_pairs is not None else None
    if checkpoint is not None and os.path.exists(checkpoint):
        os.remove(checkpoint)
    return EngineResult(
        draws=out_draws,
        stats=stats,
        timing=timing,
        tracked=tracked,
        info=dict(
            engine="nuts",
            settings=settings,
            num_divergences=int(stats["diverging"].sum()),
            warmup_num_steps=int(np.sum(warm_steps)),
            mean_num_steps=float(np.mean(stats["num_steps"])),
            chunk=size,
        ),
    )


def _predictive_moments(draws: Params, pairs) -> TrackedMoments:
    """Moments of the predicted means of ``pairs`` over the kept draws."""
    fn = jax.jit(jax.vmap(jax.vmap(predict_mean, in_axes=(0, None, None)), in_axes=(0, None, None)))
    means = np.asarray(fn(draws, pairs[0], pairs[1]))  # (chains, draws, n)
    count = means.shape[1]
    mean = means.mean(axis=1)
    noise_var = 1.0 / np.asarray(draws.noise_precision)
    return TrackedMoments(
        count=count,
        mean=mean,
        m2=((means - mean[:, None]) ** 2).sum(axis=1),
        noise_var=noise_var.mean(axis=1),
        draw_means=means,
        noise_sd=np.sqrt(noise_var),
    )


# A run with a checkpoint file saves its progress at most this often (seconds).
CHECKPOINT_SECONDS = 60.0


def _fresh_progress() -> dict:
    return dict(group=0, chunk=0, state=None, draws=[], infos=[], steps=[], done=[],
                warmup_seconds=0.0, draw_seconds=0.0)


def _signature(rng_key, data: ModelData, settings: dict, init_params) -> str:
    """A digest of everything that determines a run's draws."""
    digest = hashlib.sha256()
    key = jax.random.key_data(rng_key) if jnp.issubdtype(rng_key.dtype, jax.dtypes.prng_key) else rng_key
    digest.update(np.asarray(key).tobytes())
    digest.update(repr(sorted((k, repr(v)) for k, v in settings.items())).encode())
    for x in jax.tree_util.tree_leaves((data, init_params)):
        digest.update(np.ascontiguousarray(np.asarray(x)).tobytes())
    return digest.hexdigest()


def _read_checkpoint(path, signature: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        saved = pickle.load(f)
    if saved.get("signature") != signature:
        raise ValueError(
            f"checkpoint {os.fspath(path)!r} belongs to another run (other key, data or settings); "
            "delete it or pass another path"
        )
    return saved["progress"]


def _write_checkpoint(path, signature: str, progress_state: dict) -> None:
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(dict(signature=signature, progress=progress_state), f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
