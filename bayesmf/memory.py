"""What a Gibbs fit needs in memory, and a check before it allocates.

The memory model counts the arrays a fit holds, in bytes (``f`` = bytes per
float: 4 in float32, 8 in float64; ``D`` = rank; ``n``, ``m`` = users,
movies; ``p`` = the layouts' padded entries per rating, between 1 and 2 for
the bucketed layout, computed from the degrees by
:func:`bayesmf.layout_plan.padded_fraction`):

========================  =====================================================
on the device             bytes
========================  =====================================================
ratings                   ``(8 + f) nnz`` (two int32 indices and the rating)
layouts (bucket, segment) ``16 p nnz`` (column and entry indices, both orders)
layouts (dense)           ``4 n m + 8 nnz`` per side
per-rating temporaries    ``3 f nnz`` (responses of a half-sweep)
per-row state             ``4 f (n + m)(D + 1)`` per chain (state, variates,
                          new rows, one spare)
row chunks                twice the largest group's working memory
                          (:func:`bayesmf.layout_plan.peak_working_bytes`: at
                          most ``chunk_bytes``; with segments, a block of
                          rows' statistics (at most ``stats_bytes``) and a
                          chunk, :func:`bayesmf.layout_plan.segment_working_bytes`)
draws in flight           ``2 k f (n + m)(D + 1)`` per chain (two driver chunks of
                          ``k`` kept draws: one moves to the host while the
                          next runs)
features (per side)       ``f r F_s + 12 e + f F_e``: ``r`` rows, ``F_s`` side
                          columns, ``e`` implicit entries (two int32 indices
                          and a value), ``F_e`` implicit columns
link system (per side)    ``f (b^2 + F_s b + F_s^2)``, ``b = min(r, F_e)``
                          (the eigenbasis, :mod:`bayesmf.link`)
link matrices             ``4 f (F_u + F_v) D`` per chain, and ``(F_u + F_v) D f``
                          per draw in flight
========================  =====================================================

On the host, the kept draws, ``C S f (n + m)(D + 1)`` for ``C`` chains of
``S`` draws (written into one array for all the chains as the chunks
arrive, also when chains run one after another; with features
``C S f (F_u + F_v) D`` more for the link matrices), plus the process itself
(:data:`RUNTIME_BYTES`: Python, JAX, XLA's compiler), and with features the
one-off factorization of the larger side's Gram, ``3 * 8 b^2`` (the float64
Gram, its eigenvectors and LAPACK's workspace). On the CPU, host and device
are one memory and the two sums add.

``benchmarks/scale.py`` records this estimate beside the measured peak at
every shape it runs, so the model is checked where it is used.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
from typing import NamedTuple

import jax
import numpy as np

# The process before any data: Python, NumPy, pandas, JAX with XLA:CPU and
# the package (~280 MB measured), and XLA's compiler working memory for a
# sweep program at scale (~250-300 MB at ML-1M shape, rank 32).
RUNTIME_BYTES = 600 * 2**20

# Draws kept on the device before they move to the host: two driver chunks
# (bayesmf.engines.driver.DEFAULT_CHUNK), since a chunk's draws move while
# the next chunk runs.
DRAWS_IN_FLIGHT = 20


class MemoryPlan(NamedTuple):
    """Bytes a fit needs, by part.

    Attributes
    ----------
    device : dict of str -> int
    host : dict of str -> int
    """

    device: dict
    host: dict
    num_devices: int = 1

    @property
    def device_bytes(self) -> int:
        return int(sum(self.device.values()))

    @property
    def host_bytes(self) -> int:
        return int(sum(self.host.values()))


def gibbs_plan(
    num_users: int,
    num_items: int,
    nnz: int,
    rank: int,
    *,
    num_samples: int,
    num_chains: int = 1,
    keep_draws: bool = True,
    itemsize: int = 4,
    padded: float | None = None,
    dense_cells: int | None = None,
    working_bytes: int = 0,
    num_tracked: int = 0,
    num_devices: int = 1,
    links: tuple = (),
) -> MemoryPlan:
    """The memory model of a Gibbs fit (see the module docstring).

    Parameters
    ----------
    num_users, num_items, nnz, rank : int
    num_samples, num_chains : int
        Kept draws per chain and chains.
    keep_draws : bool
        Without kept draws only the last one is returned.
    itemsize : int
        Bytes per float (4 or 8).
    padded : float, optional
        Padded entries per rating of the bucketed layout (both sides'
        average; default 2, the bound).
    dense_cells : int, optional
        ``n m`` when the layout is dense (replaces the bucketed indices).
    working_bytes : int
        Working memory of the largest group of rows :func:`bayesmf.layout.map_rows`
        takes at once (:func:`bayesmf.layout_plan.peak_working_bytes`).
    num_tracked : int
        Tracked pairs (their moments, and per-draw means when kept).
    num_devices : int
        Devices a sharded sweep runs on (:mod:`bayesmf.engines.sharding`):
        the layouts and the row chunks split over them, the ratings, the
        state and the draws are replicated; ``device`` is per device.
    links : tuple of (rows, side columns, implicit columns, implicit entries)
        One per side with features (Macau's prior).

    Returns
    -------
    MemoryPlan
    """
    rows = (num_users + num_items) * (rank + 1) * itemsize
    if dense_cells is not None:
        layouts = 2 * (4 * dense_cells + 8 * nnz)
    else:
        layouts = 16 * (2.0 if padded is None else padded) * nnz
    draws = num_chains * num_samples if keep_draws else num_chains
    link_rows = sum(side + implicit for _, side, implicit, _ in links) * rank * itemsize
    bases = [min(rows_, implicit) if implicit else side for rows_, side, implicit, _ in links]
    device_links = dict(
        features=sum(itemsize * (r * f_s + f_e) + 12 * e for r, f_s, f_e, e in links),
        link_systems=sum(itemsize * (b * b + f_s * b + f_s * f_s) for b, (_, f_s, _, _) in zip(bases, links)),
        link_matrices=4 * num_chains * link_rows + min(draws, num_chains * DRAWS_IN_FLIGHT) * link_rows,
    ) if links else {}
    host_links = dict(kept_link_draws=draws * link_rows, link_factorization=3 * 8 * max(bases) ** 2) if links else {}
    device = dict(
        ratings=(8 + itemsize) * nnz,
        layouts=layouts / num_devices,
        per_rating_temporaries=3 * itemsize * nnz,
        per_row_state=4 * num_chains * rows,
        row_chunks=2 * working_bytes / num_devices,
        draws_in_flight=min(draws, num_chains * DRAWS_IN_FLIGHT) * rows,
        tracked=(3 + DRAWS_IN_FLIGHT) * num_chains * num_tracked * itemsize,
        **device_links,
    )
    host = dict(
        runtime=RUNTIME_BYTES,
        kept_draws=draws * rows,
        tracked_draws=2 * draws * num_tracked * itemsize,
        **host_links,
    )
    return MemoryPlan(device={k: int(v) for k, v in device.items()}, host={k: int(v) for k, v in host.items()},
                      num_devices=int(num_devices))


def host_available() -> int | None:
    """Bytes the host can still give (``MemAvailable`` of ``/proc/meminfo``), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: no malloc_trim
        return None


def release_freed() -> bool:
    """Give the C heap's freed memory back to the operating system (glibc's
    ``malloc_trim``); False where there is no such call (not glibc).

    XLA's compiler frees its working memory when a program is compiled, but
    glibc keeps the freed pages in its arenas, so the first run's buffers come
    on top of them: at ML-1M shape, rank 32, the process stood at 575 MB after
    compiling the sweep program and peaked at 665 MB sampling; trimmed after
    the compile, it stood at 390 MB and the compile's 567 MB was the peak.
    Cheap (milliseconds); the driver calls it after every compile.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


# XLA options for the package's heavy programs on a GPU (the sampling sweeps, the
# MAP loop, evaluate's scoring). XLA's GEMM autotuning took about 9 of the 14 s
# of compiling an ML-10M-shaped Gibbs sweep on an H200, and without it the
# sweep ran as fast (29.3 against 27.8-31.9 ms at ML-10M shape, 0.152 against
# 0.154 s at Netflix shape: "third_run" of results/benchmarks/gpu_check.json).
# An ``xla_gpu_autotune_level`` in ``XLA_FLAGS`` takes precedence.
GPU_COMPILER_OPTIONS = {"xla_gpu_autotune_level": 0}


def compiler_options() -> dict:
    """XLA options for the package's compiles on the default backend (:data:`GPU_COMPILER_OPTIONS` on a GPU,
    none elsewhere or where ``XLA_FLAGS`` sets the autotuning level)."""
    if jax.default_backend() != "gpu" or "xla_gpu_autotune_level" in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(GPU_COMPILER_OPTIONS)


def _compile(lowered):
    """``lowered`` compiled with :func:`compiler_options`, the compiler's freed memory released after it."""
    program = lowered.compile(compiler_options=compiler_options() or None)
    release_freed()
    return program


# Programs :func:`compile_program` keeps for the process's later fits; the least recently used goes first.
PROGRAMS_KEPT = 16
_programs: dict = {}


def compile_program(fn, *args):
    """``jax.jit(fn)`` lowered for ``args`` and compiled ahead of time with
    :func:`compiler_options`, or the program this process compiled before
    from the same lowered text, for arguments placed the same, with the same
    options.

    A fit builds fresh closures around the same engine functions, so jit's
    own cache never sees the same function twice: every Gibbs fit compiled
    its sweep again, even on the same data (ml-100k u1, rank 10: 1.2-3.6 s
    of each fit). The lowered StableHLO is the program itself (every shape,
    dtype, constant and matmul precision the trace baked in); lowering costs
    about a tenth of compiling (0.13-0.21 s against 1.25 s there). Programs
    with host callbacks are not kept: their text names the callback by
    position, not by the Python function it calls. The compiler's freed
    memory is released after each compile (:func:`release_freed`).
    """
    lowered = jax.jit(fn).lower(*args)
    text = lowered.as_text()
    key = (
        hashlib.sha256(text.encode()).digest(),
        jax.default_backend(),
        tuple(sorted(compiler_options().items())),
        tuple(getattr(x, "sharding", None) for x in jax.tree.leaves(args)),
    )
    program = _programs.pop(key, None)
    if program is None:
        program = _compile(lowered)
        if "callback" in text:
            return program
        if len(_programs) >= PROGRAMS_KEPT:
            _programs.pop(next(iter(_programs)))
    _programs[key] = program  # the most recently used last
    return program


def clear_programs() -> None:
    """Forget the programs :func:`compile_program` keeps (``jax.clear_caches``
    does not reach them): the next fit compiles afresh, as a new process would."""
    _programs.clear()


class Programs:
    """A jitted function compiled ahead of time, once per static arguments and
    argument types (with :func:`compiler_options`), with the compiler's freed
    memory released after each compile (:func:`release_freed`).

    Called as the jitted function is (``programs(*args, **static)``). Jit's
    implicit compile runs the program at once, so its buffers stack on the
    compiler's retained memory: ``evaluate`` at ML-1M shape (rank 32, 20
    draws, 100,000 test ratings) peaked at 767 MB that way, 627 MB with
    this.

    Parameters
    ----------
    jitted : jax.stages.Wrapped
        ``jax.jit(fn, static_argnames=...)``; static arguments passed by name.
    max_size : int
        Programs kept; the oldest goes first.
    """

    def __init__(self, jitted, max_size: int = 64):
        self.jitted, self.max_size, self.compiled = jitted, int(max_size), {}

    def __call__(self, *args, **static):
        leaves, tree = jax.tree.flatten(args)
        key = (tuple(sorted(static.items())), tree, bool(jax.config.jax_enable_x64), tuple(
            (np.shape(x), x.dtype if hasattr(x, "dtype") else np.result_type(x), bool(getattr(x, "weak_type", False)),
             getattr(x, "sharding", None))
            for x in leaves
        ))
        program = self.compiled.get(key)
        if program is None:
            program = _compile(self.jitted.lower(*args, **static))
            if len(self.compiled) >= self.max_size:
                self.compiled.pop(next(iter(self.compiled)))
            self.compiled[key] = program
        return program(*args)


def _accelerator_stats(device) -> dict:
    if device.platform == "cpu":
        return {}
    try:
        return device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - a backend without memory statistics
        return {}


def device_limit(device=None) -> int | None:
    """Memory an accelerator lets JAX use (``bytes_limit``); None on the CPU or when unknown."""
    limit = _accelerator_stats(device if device is not None else jax.devices()[0]).get("bytes_limit")
    return None if limit is None else int(limit)


def to_device(x, dtype=None) -> jax.Array:
    """A host array on JAX's default device, as ``jnp.asarray(x, dtype)`` gives it (the dtype canonical:
    float32 / int32 unless x64 is on).

    By ``jax.device_put``: under jax 0.12 ``jnp.asarray`` compiles a copy
    program per new shape (17 ms at small shapes on the CPU, about 0.1 s at
    ML-10M shape's layouts: 1.5 s of a MAP solver's set-up there). A JAX
    array is returned as it is (cast when ``dtype`` differs).
    """
    if isinstance(x, jax.Array):
        return x if dtype is None or x.dtype == dtype else x.astype(dtype)
    return jax.device_put(np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype))


def device_available(device=None) -> int | None:
    """Free bytes of an accelerator that reports its memory (``bytes_limit -
    bytes_in_use``); None on the CPU (the host's memory) or when unknown."""
    stats = _accelerator_stats(device if device is not None else jax.devices()[0])
    if "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def _gb(x: float) -> str:
    return f"{x / 2**30:.2f} GB"


def _parts(parts: dict) -> str:
    big = sorted(parts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name.replace('_', ' ')} {_gb(v)}" for name, v in big if v >= 2**20)


ADVICE = ("lower the rank, keep fewer draws (num_samples, or thin more), pass keep_draws=False (the last draw "
          "only), run fewer chains, or pass a smaller chunk_bytes")


def check(plan: MemoryPlan, device=None, *, host_free: int | None = None, device_free: int | None = None) -> None:
    """Raise ``MemoryError`` before allocating when ``plan`` cannot fit.

    On an accelerator the device part (per device) is checked against the
    first device's free memory and the host part against the host's; on the
    CPU the devices' parts and the host part together are checked against
    the host's. Unknown free memory is not checked.

    Parameters
    ----------
    plan : MemoryPlan
    device : jax.Device, optional
        Default: the first device.
    host_free, device_free : int, optional
        Free bytes (default: :func:`host_available`, :func:`device_available`).
    """
    device = device if device is not None else jax.devices()[0]
    host_free = host_available() if host_free is None else host_free
    if device.platform == "cpu":  # host memory holds every (forced) CPU device's share
        need = plan.num_devices * plan.device_bytes + plan.host_bytes
        if host_free is not None and need > host_free:
            raise MemoryError(
                f"this fit needs about {_gb(need)} of memory ({_parts({**plan.device, **plan.host})}) but the "
                f"host has {_gb(host_free)} available; {ADVICE}"
            )
        return
    device_free = device_available(device) if device_free is None else device_free
    if device_free is not None and plan.device_bytes > device_free:
        raise MemoryError(
            f"this fit needs about {_gb(plan.device_bytes)} of {device.platform.upper()} memory "
            f"({_parts(plan.device)}) but {device} has {_gb(device_free)} free; {ADVICE}"
        )
    if host_free is not None and plan.host_bytes > host_free:
        raise MemoryError(
            f"this fit needs about {_gb(plan.host_bytes)} of host memory ({_parts(plan.host)}) but the host has "
            f"{_gb(host_free)} available; {ADVICE}"
        )
