"""One driver for every iterative engine: chains, chunks, warm-up, thinning,
progress, timing, streamed moments of tracked pairs, non-finite checks and
checkpoints.

An engine is a pure pair over NamedTuple states (the house contract, as in
BlackJAX and optax)::

    state = init(rng_key, data, config, ...)           # one chain
    state, info = step(rng_key, state, data, ...)      # one iteration

which the engine module hands to :func:`sample` as an :class:`Engine` (its
functions with the settings bound). The driver runs ``lax.scan`` of ``step``
over a chunk of draws, compiled once ahead of time (so compile and sampling
seconds are measured apart) with the data passed as an argument, never baked
into the program; warm-up runs through the same program when ``thin == 1``
(its draws are dropped). Between chunks it checks ``info.nonfinite``, updates
the progress bar and may write a checkpoint.

Chains: chain ``c`` has the key ``rng_keys[c]`` (engines pass
``chain_keys(rng_key, num_chains)``, so chain 0 means the same thing whatever
``num_chains`` is). ``init_fn`` gets that key; the step keys of chain ``c``
are ``split(fold_in(split(rng_keys[c])[1], chunk), length)``, one per kept
draw (split again into ``thin`` step keys). Engines whose state carries its
own key (NumPyro's kernels) ignore the step keys.

Checkpoints are one ``numpy.savez`` file (no pickle): the leaves of the
current state and Welford accumulators, the draws, infos and tracked means so
far, the group and chunk reached (the iteration: step keys are a function of
it), the seconds spent, the engine's signature of everything that determines
the draws (key, data, model and engine settings) and the driver's own
(chains, chunk, warm-up, thinning, what is kept, the tracked pairs); written
to a temporary file and moved into place with ``os.replace``, so a process
killed at any moment leaves either the previous checkpoint or the new one.
A run saves after a chunk once ``checkpoint_every`` iterations or
``checkpoint_seconds`` have passed since its last save (whichever comes
first), resumes from the file when it exists and both signatures match
(``ValueError`` naming the file otherwise) and deletes the file when it is
done. Step keys depend only on the chunk index, so a resumed run gives the
same draws as an uninterrupted one (bit for bit on the CPU; on a GPU with
``--xla_gpu_deterministic_ops=true``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayesmf.engines.common import TrackedMoments, progress, to_numpy
from bayesmf.memory import compile_program, release_freed

Array = jax.Array

CHAIN_METHODS = ("vectorized", "sequential", "parallel")
# Draws per compiled chunk: the progress bar, the non-finite check and
# checkpoints run between chunks, so a chunk is the latency of all three.
DEFAULT_CHUNK = 10
# A run with a checkpoint file saves its progress at most this often (seconds).
CHECKPOINT_SECONDS = 60.0
# Layout version of checkpoint files (2: the driver's own signature added).
CHECKPOINT_FORMAT = 2


def _identity_draw(state, context):
    return state


def _identity(tree):
    return tree


def _last_info(infos):
    """Info of ``thin`` steps (leading axis) -> one: the last value of every
    field, the worst ``nonfinite`` code."""
    last = jax.tree_util.tree_map(lambda x: x[-1], infos)
    return last._replace(nonfinite=jnp.max(infos.nonfinite))


class Engine(NamedTuple):
    """An engine's pure functions with its settings bound, as the driver runs them.

    Attributes
    ----------
    name : str
        Progress bar label and error prefix.
    init_fn : callable
        ``init_fn(chain_key) -> State`` for one chain.
    step_fn : callable
        ``step_fn(rng_key, state, context) -> (State, Info)``; ``Info`` is a
        NamedTuple with an int field ``nonfinite`` (index into ``blocks``, 0:
        all finite).
    draw_fn : callable
        ``draw_fn(state, context) -> draw``: what a kept draw stores
        (default: the state itself).
    track_fn : callable, optional
        ``track_fn(state, context, pairs) -> (means, noise_var)``: the
        predicted mean of each tracked pair, shape (n,), and the noise
        variance, shape (), at the current state.
    thin_info_fn : callable
        ``Info`` with a leading axis of ``thin`` steps -> one ``Info``.
    postfix_fn : callable, optional
        Host-side ``Info`` of a chunk, shape (chains, length) -> dict shown
        on the progress bar.
    blocks : tuple of str
        Names of the ``nonfinite`` codes.
    hint : str
        Advice appended to the non-finite error.
    phases : (str, str)
        How the error names an iteration of warm-up and of sampling.
    unit : str
        What the progress bar counts (one ``step_fn`` call: a sweep, a NUTS
        step), shown with its rate and the time left.
    place_fn : callable
        Places a group's stacked states and accumulators (leading chain
        axis) on devices before its first chunk (a device mesh:
        :func:`bayesmf.engines.sharding.on_mesh`); default as they are.
    """

    name: str
    init_fn: Callable
    step_fn: Callable
    draw_fn: Callable = _identity_draw
    track_fn: Callable | None = None
    thin_info_fn: Callable = _last_info
    postfix_fn: Callable | None = None
    blocks: tuple = ("none", "state")
    hint: str = ""
    phases: tuple = ("warmup draw", "sampling draw")
    unit: str = "it"
    place_fn: Callable = _identity


class Run(NamedTuple):
    """What :func:`sample` returns (NumPy arrays, leading chain axis).

    Attributes
    ----------
    draws : pytree, leading axes (num_chains, num_samples)
        Kept draws (``draw_fn``); with ``keep_draws=False`` the draw of the
        final state, leading axes (num_chains, 1).
    infos : Info, fields of shape (num_chains, num_samples)
    warmup_infos : Info, fields of shape (num_chains, num_warmup)
    tracked : TrackedMoments or None
        ``noise_sd`` is left None (the engine knows its noise parameter).
    final_state : State, leading axis num_chains
    timing : dict of str -> float
        ``init_seconds``, ``compile_seconds``, ``warmup_seconds``,
        ``draw_seconds``, ``sampling_seconds`` (their sum) and
        ``seconds_per_sample`` (sampling seconds per iteration of one
        program; chains in one vectorized program count once).
    chunk : int
        Draws per compiled chunk.
    """

    draws: Any
    infos: Any
    warmup_infos: Any
    tracked: TrackedMoments | None
    final_state: Any
    timing: dict
    chunk: int


# --- small helpers -----------------------------------------------------------------


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
    """Jit-compile ``fn`` for ``args`` ahead of time; return (compiled, seconds).

    By :func:`bayesmf.memory.compile_program`: a program this process has
    compiled before is reused (seconds: its lowering), and the compiler's
    freed working memory goes back to the operating system after a compile,
    so the first run's buffers do not stack on top of it in the peak.
    """
    start = time.perf_counter()
    compiled = compile_program(fn, *args)
    return compiled, time.perf_counter() - start


def stack_chains(states: list):
    """Stack per-chain pytrees (no chain axis) into one with a leading chain axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)


def concat_draws(chunks: list, axis: int = 1):
    """Concatenate a list of pytrees along ``axis`` (the draw axis)."""
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=axis), *chunks)


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


def check_pairs(track_pairs) -> tuple[Array, Array]:
    """``track_pairs`` as two int32 device arrays; ValueError unless two
    non-empty 1-D arrays of one length."""
    users, items = (jnp.asarray(np.asarray(x), jnp.int32) for x in track_pairs)
    if users.shape != items.shape or users.ndim != 1:
        raise ValueError("track_pairs must be two 1-D index arrays of one length")
    if users.size == 0:
        raise ValueError("track_pairs is empty: give at least one (user, item) pair or None")
    return users, items


def check_counts(num_samples: int, num_warmup: int, num_chains: int, thin: int) -> tuple[int, int, int, int]:
    """The sampler counts as ints; ValueError for non-positive ones (negative warm-up)."""
    for name, value in (("num_samples", num_samples), ("num_chains", num_chains), ("thin", thin)):
        if isinstance(value, bool) or int(value) <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if isinstance(num_warmup, bool) or int(num_warmup) < 0:
        raise ValueError(f"num_warmup must be >= 0, got {num_warmup}")
    return int(num_samples), int(num_warmup), int(num_chains), int(thin)


def signature(rng_key, settings: dict, *trees) -> str:
    """A digest of everything that determines a run's draws: key(s), settings
    (by ``repr``) and the arrays of ``trees`` (data, initial values)."""
    digest = hashlib.sha256()
    key = jax.random.key_data(rng_key) if jnp.issubdtype(rng_key.dtype, jax.dtypes.prng_key) else rng_key
    digest.update(np.asarray(key).tobytes())
    digest.update(repr(sorted((k, repr(v)) for k, v in settings.items())).encode())
    for x in jax.tree_util.tree_leaves(trees):
        digest.update(np.ascontiguousarray(np.asarray(x)).tobytes())
    return digest.hexdigest()


def moments_of(means: np.ndarray, noise_var: np.ndarray, keep_draws: bool = True) -> TrackedMoments:
    """Tracked moments of per-draw predicted means already computed.

    Parameters
    ----------
    means : array, shape (num_chains, num_draws, n)
    noise_var : array, shape (num_chains, num_draws)
    keep_draws : bool
        Keep ``means`` as ``draw_means``.
    """
    mean = means.mean(axis=1)
    return TrackedMoments(
        count=means.shape[1],
        mean=mean,
        m2=((means - mean[:, None]) ** 2).sum(axis=1),
        noise_var=noise_var.mean(axis=1),
        draw_means=means if keep_draws else None,
    )


# --- checkpoints -------------------------------------------------------------------


def _flat(prefix: str, tree) -> dict:
    return {f"{prefix}/{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(tree))}


def _unflat(prefix: str, arrays: dict, like):
    """Leaves ``prefix/i`` of ``arrays`` in the structure of ``like``; None when absent."""
    treedef = jax.tree_util.tree_structure(like)
    if f"{prefix}/0" not in arrays:
        return None
    return jax.tree_util.tree_unflatten(treedef, [arrays[f"{prefix}/{i}"] for i in range(treedef.num_leaves)])


def _partial_path(path) -> Path:
    """Where :func:`write_checkpoint` writes before replacing ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def write_checkpoint(path, arrays: dict) -> None:
    """Write ``arrays`` with ``numpy.savez`` to ``path`` atomically (temporary
    file in the same directory, then ``os.replace``)."""
    path = Path(path)
    tmp = _partial_path(path)
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def read_checkpoint(path, expected_signature: str, expected_run: str | None = None) -> dict | None:
    """The arrays of a checkpoint file (None when there is none); ValueError
    naming the file when it is not a checkpoint or belongs to another run
    (``signature``: the engine's; ``expected_run``: the driver's, checked
    when given)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = dict(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"checkpoint {os.fspath(path)!r} is not a bayesmf checkpoint file ({exc})") from None
    if (
        int(arrays.get("format", -1)) != CHECKPOINT_FORMAT
        or str(arrays.get("signature")) != expected_signature
        or (expected_run is not None and str(arrays.get("run_signature")) != expected_run)
    ):
        raise ValueError(
            f"checkpoint {os.fspath(path)!r} belongs to another run (other key, data or settings) "
            "or another checkpoint format; delete it or pass another path"
        )
    return arrays


# --- the driver ----------------------------------------------------------------------


def _chunk_fn(engine: Engine, thin: int, keep: bool, track: bool):
    """Build ``chunk(keys, state, acc, context, pairs) -> (state, acc, draws,
    infos, tracked)`` for one chain: one kept draw per key, ``thin`` steps each."""

    def chunk(keys, state, acc, context, pairs):
        def step(s, k):
            return engine.step_fn(k, s, context)

        def one(carry, key):
            state, acc = carry
            if thin == 1:  # no nested scan: it would double the compiled program
                state, info = step(state, key)
            else:
                state, infos = jax.lax.scan(step, state, jax.random.split(key, thin))
                info = engine.thin_info_fn(infos)
            tracked = None
            if track:
                tracked, noise_var = engine.track_fn(state, context, pairs)
                acc = welford_update(acc, tracked, noise_var)
            return (state, acc), (engine.draw_fn(state, context) if keep else None, info, tracked)

        (state, acc), (draws, infos, tracked) = jax.lax.scan(one, (state, acc), keys)
        return state, acc, draws, infos, tracked

    chunk.__name__ = chunk.__qualname__ = f"{engine.name}_chunk"  # what jax.log_compiles and profiles show
    return chunk


def _over_chains(chunk, width: int, method: str):
    """``chunk`` over a leading chain axis of its first three arguments.

    Several chains are vmapped (or pmapped). A single chain is run unbatched,
    its axis dropped and restored around the call: vmapping even a size-1
    axis batches every op of a Gibbs sweep and made XLA:CPU compile the
    MovieLens-100K rank-10 chunk about twice as long (measured 15.1 s
    against 6.6 s on a loaded 2-core machine). The random draws are the same
    either way (JAX's random functions give the same bits under vmap); the
    arithmetic of a batched and an unbatched program may differ in the last
    bit.
    """
    if width > 1:
        return (jax.pmap if method == "parallel" else jax.vmap)(chunk, in_axes=(0, 0, 0, None, None))

    @functools.wraps(chunk)
    def single(keys, state, acc, context, pairs):
        squeeze = functools.partial(jax.tree_util.tree_map, lambda x: x[0])
        out = chunk(squeeze(keys), squeeze(state), squeeze(acc), context, pairs)
        return jax.tree_util.tree_map(lambda x: x[None], out)

    return single


def _lengths(total: int, size: int) -> list[int]:
    return [size] * (total // size) + ([total % size] if total % size else [])


def sample(
    rng_keys: Array,
    engine: Engine,
    context,
    *,
    num_samples: int,
    num_warmup: int = 0,
    thin: int = 1,
    chain_method: str = "vectorized",
    chunk: int | None = None,
    keep_draws: bool = True,
    track_pairs: tuple | None = None,
    keep_track_draws: bool = True,
    track_dtype=jnp.float32,
    progress_bar: bool = True,
    checkpoint: tuple | None = None,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float | None = None,
    cache: dict | None = None,
) -> Run:
    """Run ``engine`` on one chain per key.

    Parameters
    ----------
    rng_keys : jax.Array, shape (num_chains, ...)
        One key per chain (``chain_keys(rng_key, num_chains)``).
    engine : Engine
    context : pytree
        Device data every step needs (passed to ``step_fn`` as an argument).
    num_samples : int
        Draws kept per chain (after thinning); 0 runs the warm-up alone
        (an optimizer).
    num_warmup : int
        Iterations discarded per chain before the first kept draw.
    thin : int
        Iterations per kept draw.
    chain_method : {"vectorized", "sequential", "parallel"}
        All chains in one vmapped program; one chain after another through
        one unbatched program; one chain per device (``pmap``; sequential,
        with a warning, when there are fewer devices than chains). One chain
        always runs unbatched.
    chunk : int, optional
        Draws per compiled chunk (warm-up iterations per chunk too). Default
        :func:`chunk_size` of ``num_warmup`` and ``num_samples``, which
        divides both (one program); otherwise a shorter last chunk compiles
        its own program.
    keep_draws : bool
        Keep every draw; otherwise only the final state's.
    track_pairs : (user_index, item_index) int arrays, shape (n,), optional
        Pairs whose predictive moments are streamed (Welford; needs
        ``engine.track_fn``).
    keep_track_draws : bool
        Also keep the per-draw predicted means of ``track_pairs``.
    track_dtype : dtype
        Of the Welford accumulators.
    progress_bar : bool
        A tqdm bar over all iterations (``engine.unit``), with their rate
        and the time left.
    checkpoint : (path, signature), optional
        Save progress to ``path`` (one ``numpy.savez`` file, replaced
        atomically); resume from it when it exists and its signature (the
        engine's, of key, data and settings) and the driver's settings
        match (ValueError naming the file otherwise); delete it when the run
        is done.
    checkpoint_every : int, optional
        Save after the first chunk that ends at least this many iterations
        (sweeps, NUTS steps; warm-up and thinned ones count) after the
        last save. Saves happen between chunks only: the chunk length is
        part of the random stream, so it is not changed to fit.
    checkpoint_seconds : float, optional
        Save after the first chunk that ends at least this many seconds
        after the last save; default :data:`CHECKPOINT_SECONDS`. Whichever
        of the two comes first triggers a save.
    cache : dict, optional
        Compiled programs by signature, reused across calls (an engine that
        keeps one per setting, as NUTS does, passes its own dict); their
        ``compile_seconds`` is then 0.

    Returns
    -------
    Run
    """
    num_chains = int(np.shape(rng_keys)[0])
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"unknown chain_method {chain_method!r}; expected one of {CHAIN_METHODS}")
    track = track_pairs is not None
    if track and engine.track_fn is None:
        raise ValueError(f"the {engine.name} engine cannot track pairs")
    pairs = check_pairs(track_pairs) if track else (jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32))
    if chain_method == "parallel" and jax.local_device_count() < num_chains:
        warnings.warn(
            f"chain_method='parallel' needs {num_chains} devices, found {jax.local_device_count()}; running sequentially",
            stacklevel=3,
        )
        chain_method = "sequential"
    size = int(chunk) if chunk is not None else chunk_size(num_warmup, num_samples)
    cache = {} if cache is None else cache
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or int(checkpoint_every) <= 0):
        raise ValueError(f"checkpoint_every must be a positive number of iterations, got {checkpoint_every!r}")
    if checkpoint_seconds is not None and not float(checkpoint_seconds) >= 0:
        raise ValueError(f"checkpoint_seconds must be >= 0, got {checkpoint_seconds!r}")

    # Initial states one chain at a time (the engine jits its own init): chain
    # c's start is the same under every chain_method and every num_chains.
    t0 = time.perf_counter()
    run_keys = jax.vmap(lambda k: jax.random.split(k)[1])(rng_keys)
    states = [engine.init_fn(rng_keys[c]) for c in range(num_chains)]
    jax.block_until_ready(states)
    init_seconds = time.perf_counter() - t0
    groups = [[c] for c in range(num_chains)] if chain_method == "sequential" else [list(range(num_chains))]
    starts = [engine.place_fn(stack_chains([states[c] for c in group])) for group in groups]
    accs = [engine.place_fn(jax.vmap(lambda _: welford_init(pairs[0].shape[0], track_dtype))(jnp.arange(len(g))))
            for g in groups]

    def keys_for(group: int, index: int, length: int):
        return jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, index), length))(run_keys[np.asarray(groups[group])])

    compile_seconds = 0.0

    def program(length: int, steps: int, keep: bool, group: int, state, acc):
        nonlocal compile_seconds
        width = len(groups[group])
        method = chain_method if width > 1 else "single"
        key = (length, steps, keep, track, method) + tuple(
            (x.shape, str(x.dtype)) for x in jax.tree_util.tree_leaves((state, acc, context, pairs))
        )
        if key not in cache:
            fn = _over_chains(_chunk_fn(engine, steps, keep, track), width, method)
            if method == "parallel":  # pmap compiles on its first call: that time lands in sampling
                cache[key] = fn
            else:
                cache[key], seconds = timed_compile(fn, keys_for(group, 0, length), state, acc, context, pairs)
                compile_seconds += seconds
        return cache[key]

    # One compiled program serves warm-up too when thin == 1 (its draws and
    # moments are dropped): a second program would double the compile time.
    warm_keep = keep_draws and num_samples > 0
    warm_lengths, draw_lengths = _lengths(num_warmup, size), _lengths(num_samples, size)
    plan = [("warmup", n) for n in warm_lengths] + [("sampling", n) for n in draw_lengths]
    run = _Progress.fresh()
    path = None
    if checkpoint is not None:
        path, expected = checkpoint
        # What the driver adds to the engine's signature: how the run is cut
        # into chains and chunks (step keys depend on it) and what it keeps.
        run_sig = signature(
            rng_keys,
            dict(num_chains=num_chains, chain_method=chain_method, chunk=size, num_warmup=num_warmup,
                 num_samples=num_samples, thin=thin, keep_draws=keep_draws, track=track,
                 keep_track_draws=keep_track_draws, track_dtype=str(jnp.dtype(track_dtype))),
            pairs if track else (),
        )
        saved = read_checkpoint(path, expected, run_sig)
        if saved is not None:
            run = _Progress.load(saved, starts, accs, _structures(engine, starts[0], context))
    # Compiled after the checkpoint is read: another run's file is refused at once.
    for phase, steps, keep, lengths in (("sampling", thin, keep_draws, draw_lengths), ("warmup", 1, warm_keep, warm_lengths)):
        for length in sorted(set(lengths)):
            program(length, steps, keep, 0, starts[0], accs[0])
    every = None if checkpoint_every is None else int(checkpoint_every)
    seconds = CHECKPOINT_SECONDS if checkpoint_seconds is None else float(checkpoint_seconds)
    per_chain = num_warmup + num_samples * thin  # iterations (step_fn calls)
    plan_steps = [n * (1 if phase == "warmup" else thin) for phase, n in plan]
    resumed = sum(len(group) for group in groups[: run.group]) * per_chain
    if run.group < len(groups):
        resumed += len(groups[run.group]) * sum(plan_steps[: run.chunk])
    bar = progress(num_chains * per_chain, engine.name, progress_bar)
    bar.unit = engine.unit
    if resumed:
        # As tqdm(initial=resumed): the rate and time left count this call's
        # iterations only.
        bar.n = bar.last_print_n = bar.initial = resumed
        bar.refresh()
    last_save, since_save = time.perf_counter(), 0
    try:
        for g in range(run.group, len(groups)):
            state, acc = (starts[g], accs[g]) if run.state is None else (engine.place_fn(run.state), engine.place_fn(run.acc))
            done = {"warmup": sum(n for phase, n in plan[: run.chunk] if phase == "warmup"),
                    "sampling": sum(n for phase, n in plan[: run.chunk] if phase == "sampling")}
            for k in range(run.chunk, len(plan)):
                phase, length = plan[k]
                start = time.perf_counter()
                if phase == "warmup":
                    fn = program(length, 1, warm_keep, g, state, acc)
                    state, _, _, infos, _ = fn(keys_for(g, k, length), state, acc, context, pairs)
                else:
                    fn = program(length, thin, keep_draws, g, state, acc)
                    state, acc, draws, infos, tracked = fn(keys_for(g, k, length), state, acc, context, pairs)
                # The previous chunk's draws move to the host while this one
                # runs (dispatch is asynchronous): moving them first left a GPU
                # idle for 40 of 160 ms per sweep at Netflix shape, rank 32.
                run.settle(num_samples, num_chains)
                infos = to_numpy(infos)
                _raise_nonfinite(engine, infos, groups[g], done[phase], phase)
                if phase == "warmup":
                    run.warm_infos.append(infos)
                    run.warmup_seconds += time.perf_counter() - start
                else:
                    run.infos.append(infos)
                    if keep_draws:
                        run.draws.append(draws)  # (on the device until the next chunk is dispatched)
                    if track and keep_track_draws:
                        run.tracked.append(np.asarray(tracked))
                    run.draw_seconds += time.perf_counter() - start
                done[phase] += length
                since_save += plan_steps[k] * len(groups[g])
                if engine.postfix_fn is not None:
                    bar.set_postfix(engine.postfix_fn(infos), refresh=False)
                bar.update(plan_steps[k] * len(groups[g]))
                run.chunk, run.state, run.acc = k + 1, state, acc
                if path is not None and (
                    time.perf_counter() - last_save >= seconds or (every is not None and since_save >= every)
                ):
                    run.group = g
                    run.settle(num_samples, num_chains)
                    write_checkpoint(path, run.arrays(expected, run_sig))
                    last_save, since_save = time.perf_counter(), 0
            jax.block_until_ready(state)
            run.settle(num_samples, num_chains)
            run.finish_group(jax.vmap(engine.draw_fn, in_axes=(0, None))(state, context), state, acc)
    finally:
        bar.close()

    out = run.concatenated()
    release_freed()  # the runs' freed buffers: evaluate's compile then starts lower (ML-1M shape: 477 MB to 390 MB)
    tracked = None
    if track:
        acc = out["acc"]
        tracked = TrackedMoments(
            count=int(num_samples), mean=acc.mean, m2=acc.m2, noise_var=acc.noise_var,
            draw_means=out["tracked"] if keep_track_draws else None,
        )
    sampling_seconds = run.warmup_seconds + run.draw_seconds
    iterations = len(groups) * per_chain
    if path is not None:
        # The checkpoint, and a partial write a kill may have left beside it.
        for leftover in (Path(path), _partial_path(path)):
            if leftover.exists():
                os.remove(leftover)
    return Run(
        draws=out["draws"] if keep_draws else jax.tree_util.tree_map(lambda x: x[:, None], out["final_draw"]),
        infos=out["infos"],
        warmup_infos=out["warm_infos"],
        tracked=tracked,
        final_state=out["final_state"],
        timing=dict(
            init_seconds=init_seconds,
            compile_seconds=compile_seconds,
            warmup_seconds=run.warmup_seconds,
            draw_seconds=run.draw_seconds,
            sampling_seconds=sampling_seconds,
            seconds_per_sample=sampling_seconds / max(iterations, 1),
        ),
        chunk=size,
    )


def _structures(engine: Engine, state, context):
    """(draw, info) of one chain at ``state`` as shapes: their pytree
    structure, for reading a checkpoint back."""
    one = jax.tree_util.tree_map(lambda x: x[0], state)
    draw = jax.eval_shape(engine.draw_fn, one, context)
    info = jax.eval_shape(lambda s: engine.step_fn(jax.random.PRNGKey(0), s, context)[1], one)
    return draw, info


def _raise_nonfinite(engine: Engine, infos, chains: list, start: int, phase: str):
    codes = np.asarray(infos.nonfinite)  # (chains, length)
    if codes.any():
        chain, index = np.argwhere(codes > 0)[0]
        where = engine.phases[0 if phase == "warmup" else 1]
        raise FloatingPointError(
            f"{engine.name} produced a non-finite value in the {engine.blocks[codes[chain, index]]} block at "
            f"{where} {start + index} of chain {chains[chain]}" + (f"; {engine.hint}" if engine.hint else "")
        )


class _Progress:
    """Host-side record of a run so far: completed chain groups, and the
    chunks of the group under way."""

    def __init__(self):
        self.group, self.chunk = 0, 0
        self.state = self.acc = None
        self.draws, self.infos, self.warm_infos, self.tracked = [], [], [], []
        # Kept draws on the host ((chains, draws, ...) per leaf), chains of the groups done, draws in this one.
        self.kept, self.offset, self.filled = None, 0, 0
        self.done = dict(draws=[], infos=[], warm_infos=[], tracked=[], acc=[], final_draw=[], final_state=[])
        self.warmup_seconds = self.draw_seconds = 0.0

    @classmethod
    def fresh(cls):
        return cls()

    def settle(self, capacity: int, chains: int | None = None) -> None:
        """Move the chunks of draws to the host, into one array per leaf for the ``capacity`` draws
        of each of the run's ``chains`` (default: this group's), allocated once: the host then holds
        the kept draws once and a chunk in transit, never the chunks and their concatenation together
        (ML-1M shape, rank 32, 100 draws: 128 MB, not 257), nor, with chains run one after another,
        every chain's draws and their join. ``draws`` becomes this group's filled part of it."""
        merged = 1 if self.kept is not None and self.filled else 0  # draws[0] is then the filled part already
        if len(self.draws) <= merged:
            return
        if self.kept is None:
            total = max(chains or 0, self.offset + jax.tree_util.tree_leaves(self.draws[0])[0].shape[0])
            self.kept = jax.tree_util.tree_map(lambda x: np.empty((total, capacity) + x.shape[2:], x.dtype),
                                               self.draws[0])
            if self.offset:  # the groups done before a resume, read back from the checkpoint as one array
                jax.tree_util.tree_map(lambda buf, x: buf.__setitem__(slice(0, self.offset), x), self.kept,
                                       self.done["draws"][0])
                self.done["draws"] = [jax.tree_util.tree_map(lambda buf: buf[: self.offset], self.kept)]
        for chunk in self.draws[merged:]:
            chunk, start, (width, length) = to_numpy(chunk), self.filled, jax.tree_util.tree_leaves(chunk)[0].shape[:2]
            rows, self.filled = slice(self.offset, self.offset + width), self.filled + length
            jax.tree_util.tree_map(lambda buf, x: buf.__setitem__((rows, slice(start, self.filled)), x),
                                   self.kept, chunk)
        self.draws = [jax.tree_util.tree_map(lambda buf: buf[rows, :self.filled], self.kept)]

    def _current(self) -> dict:
        def cat(chunks):
            return None if not chunks else chunks[0] if len(chunks) == 1 else concat_draws(chunks)

        return dict(draws=cat(self.draws), infos=cat(self.infos), warm_infos=cat(self.warm_infos),
                    tracked=np.concatenate(self.tracked, axis=1) if self.tracked else None)

    def finish_group(self, final_draw, state, acc):
        current = self._current()
        for name, value in current.items():
            self.done[name].append(value)
        self.done["acc"].append(to_numpy(acc))
        self.done["final_draw"].append(to_numpy(final_draw))
        self.done["final_state"].append(to_numpy(state))
        self.group += 1
        self.chunk, self.state, self.acc = 0, None, None
        self.draws, self.infos, self.warm_infos, self.tracked = [], [], [], []
        self.offset += jax.tree_util.tree_leaves(final_draw)[0].shape[0]
        self.filled = 0
        if self.kept is not None:  # the done groups' draws: the first rows of the one array, not a join
            self.done["draws"] = [jax.tree_util.tree_map(lambda buf: buf[: self.offset], self.kept)]

    def concatenated(self) -> dict:
        out = {}
        for name, values in self.done.items():
            out[name] = (None if values[0] is None else values[0] if len(values) == 1
                         else concat_draws(values, axis=0))
        return out

    def arrays(self, sig: str, run_sig: str) -> dict:
        """Everything as flat named arrays (the checkpoint file's content)."""
        arrays = dict(format=np.asarray(CHECKPOINT_FORMAT), signature=np.asarray(sig),
                      run_signature=np.asarray(run_sig), group=np.asarray(self.group),
                      chunk=np.asarray(self.chunk), warmup_seconds=np.asarray(self.warmup_seconds),
                      draw_seconds=np.asarray(self.draw_seconds))
        if self.state is not None:
            arrays.update(_flat("state", to_numpy(self.state)), **_flat("acc", to_numpy(self.acc)))
        for name, value in self._current().items():
            if value is not None:
                arrays.update(_flat(name, value))
        if self.group > 0:
            for name, value in self.concatenated().items():
                if value is not None:
                    arrays.update(_flat(f"done/{name}", value))
        return arrays

    @classmethod
    def load(cls, arrays: dict, starts: list, accs: list, structures: tuple) -> "_Progress":
        """Inverse of :meth:`arrays`; ``structures`` is (draw, info) of one
        chain (:func:`_structures`)."""
        run = cls()
        run.group, run.chunk = int(arrays["group"]), int(arrays["chunk"])
        run.warmup_seconds, run.draw_seconds = float(arrays["warmup_seconds"]), float(arrays["draw_seconds"])
        draw_like, info_like = structures
        like = dict(draws=draw_like, infos=info_like, warm_infos=info_like, tracked=np.zeros(0))
        for name in ("draws", "infos", "warm_infos", "tracked"):
            value = _unflat(name, arrays, like[name])
            if value is not None:
                getattr(run, name).append(value)
        if run.group < len(starts) and "state/0" in arrays:
            run.state = jax.tree_util.tree_map(jnp.asarray, _unflat("state", arrays, starts[run.group]))
            run.acc = jax.tree_util.tree_map(jnp.asarray, _unflat("acc", arrays, accs[run.group]))
        if run.group > 0:
            like.update(acc=accs[0], final_draw=draw_like, final_state=starts[0])
            for name in run.done:
                run.done[name].append(_unflat(f"done/{name}", arrays, like[name]))
            run.offset = jax.tree_util.tree_leaves(run.done["final_draw"][0])[0].shape[0]
        return run
