"""What every engine returns, and the chunked ``lax.scan`` driver samplers share."""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from bayesmf.model import Params

Array = jax.Array

# Sweeps per compiled chunk: the progress bar and the NaN check run between
# chunks, so a chunk is the latency of both.
DEFAULT_CHUNK = 10


class EngineResult(NamedTuple):
    """Output of an engine run.

    Attributes
    ----------
    draws : Params
        Each field with leading ``(num_chains, num_draws)`` axes (a MAP fit
        has ``(1, 1)``). NumPy arrays.
    stats : dict of str -> array, shape (num_chains, num_draws)
        Per-draw diagnostics (e.g. ``train_rmse``, ``diverging``).
    timing : dict of str -> float
        ``fit_seconds`` and, for samplers, ``compile_seconds``,
        ``sampling_seconds``, ``seconds_per_sample``.
    tracked : TrackedMoments or None
        Streamed predictive moments of requested pairs (samplers only).
    info : dict
        Engine-specific extras (settings used, tuning tables).
    """

    draws: Params
    stats: dict
    timing: dict
    tracked: "TrackedMoments | None" = None
    info: dict = {}


class TrackedMoments(NamedTuple):
    """Predictive moments of fixed pairs, accumulated during sampling.

    Welford's online update keeps memory independent of the number of draws:
    O(num_chains x num_pairs) for the moments. ``draw_means`` and
    ``noise_sd`` keep the per-draw components of the predictive mixture
    (O(num_chains x num_draws x num_pairs)) when exact mixture quantiles, NLL
    or CRPS are wanted; they are None when not kept.

    Attributes
    ----------
    count : int
    mean : array, shape (num_chains, num_pairs)
        Mean over draws of the predicted mean rating.
    m2 : array, shape (num_chains, num_pairs)
        Sum of squared deviations of the predicted mean (Welford's M2).
    noise_var : array, shape (num_chains,)
        Mean over draws of the noise variance ``1 / alpha``.
    draw_means : array, shape (num_chains, num_draws, num_pairs) or None
    noise_sd : array, shape (num_chains, num_draws) or None
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray
    noise_var: np.ndarray
    draw_means: np.ndarray | None = None
    noise_sd: np.ndarray | None = None


class Welford(NamedTuple):
    count: Array  # ()
    mean: Array  # (n,)
    m2: Array  # (n,)
    noise_var: Array  # ()


def welford_init(num_pairs: int, dtype=jnp.float32) -> Welford:
    return Welford(jnp.zeros((), dtype), jnp.zeros(num_pairs, dtype), jnp.zeros(num_pairs, dtype), jnp.zeros((), dtype))


def welford_update(acc: Welford, value: Array, noise_var: Array) -> Welford:
    count = acc.count + 1
    delta = value - acc.mean
    mean = acc.mean + delta / count
    m2 = acc.m2 + delta * (value - mean)
    return Welford(count, mean, m2, acc.noise_var + (noise_var - acc.noise_var) / count)


def chunk_size(*counts: int, target: int = DEFAULT_CHUNK) -> int:
    """Largest chunk length <= target that divides every count (so one compile serves all)."""
    g = int(np.gcd.reduce([int(c) for c in counts if c > 0])) if any(c > 0 for c in counts) else 1
    for size in range(min(target, g), 0, -1):
        if g % size == 0:
            return size
    return 1


def chain_keys(rng_key: Array, num_chains: int) -> Array:
    """Per-chain keys by ``fold_in(rng_key, chain)``: chain c's stream does not
    depend on how many chains run, so a seed means the same thing for chain 0
    whatever ``num_chains`` is."""
    return jax.vmap(lambda c: jax.random.fold_in(rng_key, c))(jnp.arange(num_chains))


def timed_compile(fn: Callable, *args):
    """Jit-compile ``fn`` for ``args`` ahead of time; return (compiled, seconds)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="it")


def to_numpy(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def stack_chains(states: list):
    """Stack per-chain pytrees (no chain axis) into one with a leading chain axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)


def concat_draws(chunks: list, axis: int = 1):
    """Concatenate a list of pytrees along ``axis`` (the draw axis)."""
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=axis), *chunks)
