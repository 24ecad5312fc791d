"""The Gibbs sweep on a mesh of devices: the same step, its data sharded by rows.

No second copy of the mathematics: :func:`bayesmf.engines.gibbs.step` runs
unchanged under ``jax.jit``; only where its arguments live changes. Each
chunk of rows of each bucket of the per-user layout
(:class:`bayesmf.layout.BucketLayout`: rows of one degree class padded to one
width, in chunks) is split evenly over the ``"rows"`` axis of a
:class:`jax.sharding.Mesh`, and so is each of the per-item layout:
the ratings are kept in both orders, each device holding its rows' ratings.
XLA's SPMD partitioner (GSPMD) then splits the row updates of every chunk
over the devices and inserts the collectives the step needs (the
sufficient statistics of the hyperparameter and noise draws are reductions
over rows, which it partitions with an all-reduce). The model state and the
small arrays (ratings, offsets) are replicated, so every kept draw is
already on every device and every process: process 0 writes the files and
evaluation, fold-in and storage work on the result unchanged.

Load balance: rows within a bucket have degrees within a factor of 2 of each
other, and each bucket's rows are dealt to the devices by decreasing
degree, the heaviest to the device with the fewest ratings so far, so
devices hold similar numbers of ratings, not just of rows
(:func:`ratings_per_shard` counts them; the test suite and
``benchmarks/sharding.py`` report them). A chunk's row count is padded to a
multiple of the number of devices; padding rows point at the zero design
row and the dummy rating (as the layout's own width padding does), and the
layout's ``order`` never selects them, so their output is dropped.

Random draws: every variate of a sweep comes from one ``jax.random`` call over
a flat array (:func:`bayesmf.engines.gibbs.sweep_variates`); with
``jax_threefry_partitionable`` (JAX's default) its values do not depend on how
the output is sharded, so a run on N devices draws the same variates as the
one-device run and its states differ only by float32 reassociation.

What the partitioner communicates: the step updates rows a chunk at a time
(:func:`bayesmf.layout.map_rows`) and each chunk's rows are split over the
devices, so a device builds the statistics of its own rows, draws them, and
only the drawn rows (with an int32 row id each, and the movies' residual
sums) are all-gathered: about ``(N d + M (d + 1)) x 4`` bytes per sweep.
:func:`pad_bucket_layout` gives every bucket at least two chunks, because
``map_rows`` fuses one-chunk buckets by concatenating their statistics,
which the partitioner could only re-shard by all-gathering them.
:func:`collective_bytes` counts the bytes from the compiled program
(``benchmarks/sharding.py``, ``tests/test_sharding.py``; ``docs/scaling.md``
has the figures).

Chains: a mesh with a second axis, ``("chains", "rows")``
(``make_mesh(devices, chains=C)``), splits the driver's vmapped chain axis
over ``C`` groups of devices, each group splitting its chains' rows.

Multi-host: after ``jax.distributed.initialize`` (:func:`initialize`),
``jax.devices()`` lists every process's devices; the mesh spans them and
:func:`place` builds global arrays with ``jax.make_array_from_callback`` from
the host copy every process holds.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bayesmf.layout import Bucket, BucketLayout, DenseLayout

Array = jax.Array

#: Name of the mesh axis the rows (users for the user half-sweep, movies for
#: the movie half-sweep) are split over.
ROWS = "rows"
#: Name of the optional mesh axis the chains are split over.
CHAINS = "chains"

# Collective ops whose result sizes :func:`collective_bytes` adds up.
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")


def make_mesh(devices: int | Sequence | Mesh | None = None, chains: int = 1) -> Mesh:
    """A ``("rows",)`` mesh, or ``("chains", "rows")`` with ``chains > 1``.

    Parameters
    ----------
    devices : int, sequence of jax.Device, Mesh or None
        The first ``devices`` of ``jax.devices()`` (every process's devices
        after ``jax.distributed.initialize``), these devices, a mesh with a
        ``"rows"`` axis (returned as is) or None for all devices.
    chains : int
        Size of the ``"chains"`` axis: the devices form a (chains, rows)
        grid, each group of ``len(devices) / chains`` devices running its
        share of the chains with their rows split over it.

    Examples
    --------
    >>> make_mesh(1).shape["rows"]
    1
    """
    if isinstance(devices, Mesh):
        if ROWS not in devices.axis_names:
            raise ValueError(f"the mesh needs a {ROWS!r} axis, got axes {devices.axis_names}")
        return devices
    available = jax.devices()
    if devices is None:
        chosen = available
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= int(devices) <= len(available):
            raise ValueError(f"devices={devices} but {len(available)} device(s) are available: {available}")
        chosen = available[: int(devices)]
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("devices is an empty sequence")
    if chains == 1:
        return Mesh(np.asarray(chosen), (ROWS,))
    if isinstance(chains, bool) or chains < 1 or len(chosen) % chains:
        raise ValueError(f"chains={chains} does not divide the {len(chosen)} devices into equal groups")
    return Mesh(np.asarray(chosen).reshape(chains, -1), (CHAINS, ROWS))


def place(x, sharding: NamedSharding) -> Array:
    """``x`` (the same host value on every process) as a global array with ``sharding``."""
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def pad_bucket_layout(layout: BucketLayout, multiple: int, num_cols: int, nnz: int) -> BucketLayout:
    """Every bucket's chunks widened to a multiple of ``multiple`` rows, the
    rows arranged so that the ``multiple`` equal slices of each chunk (one
    per device) hold similar numbers of ratings.

    A bucket of ``k`` chunks of ``c`` rows (:class:`bayesmf.layout.Bucket`)
    holding ``n`` rows becomes ``k'`` chunks of ``c'`` rows, ``c'`` the
    multiple of ``multiple`` at or above ``n / k`` and ``k' = ceil(n / c')``
    (so a device's slice of a chunk is about ``c / multiple`` rows). The rows
    are dealt by decreasing degree in rounds of one row per device, the
    heaviest row of a round to the device with the fewest ratings so far
    (widest buckets first, over all buckets), padding rows last; each row's
    update is computed as before, only its position changes. Padding rows
    have row id 0, columns ``num_cols`` (the zero design row) and entries
    ``nnz`` (the dummy rating); ``order`` is remapped to the new positions
    and never points at them.

    Parameters
    ----------
    layout : BucketLayout
    multiple : int
        Number of devices the chunks' rows are split over.
    num_cols, nnz : int
        The layout's padding values (columns of the other side, ratings).

    Returns
    -------
    BucketLayout (NumPy arrays)
    """
    order = np.asarray(layout.order)
    flat = [bucket for group in layout.buckets for bucket in group]  # (groups: bayesmf.layout_plan.bucket_plan)
    sizes = [int(np.prod(np.shape(bucket.rows))) for bucket in flat]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    real = np.zeros(starts[-1], bool)
    real[order] = True
    load = np.zeros(multiple, np.int64)
    plans = {}
    # The widest (heaviest) buckets first, so the many light rows of the
    # narrow ones even out what their few heavy rows leave.
    for b in reversed(range(len(flat))):
        bucket = flat[b]
        k = np.shape(bucket.rows)[0]
        width = np.shape(bucket.cols)[-1]
        members = np.flatnonzero(real[starts[b] : starts[b + 1]])  # flat positions of real rows
        n = members.size
        # At least two chunks when split: map_rows fuses the one-chunk
        # buckets into one batch by concatenating their statistics, which
        # the partitioner can only re-shard by all-gathering them ((d + 1)^2
        # floats per row); a bucket of several chunks is updated chunk by
        # chunk where its rows live and only the drawn rows are gathered.
        k = max(k, 2) if multiple > 1 else k
        per_chunk = -(-max(-(-n // k), 1) // multiple) * multiple
        chunks = max(-(-n // per_chunk), 2 if multiple > 1 else 1)
        share = per_chunk // multiple  # rows of one device in one chunk
        degree = (np.asarray(bucket.entries).reshape(-1, width)[members] < nnz).sum(axis=1)
        by_degree = np.argsort(-degree, kind="stable")
        rounds = chunks * share
        target = np.full(rounds * multiple, -1, np.int64)  # new flat slot of each member (by degree)
        for r in range(rounds):
            picked = by_degree[r * multiple : (r + 1) * multiple]
            devices = np.argsort(load, kind="stable")[: picked.size]
            chunk, place = divmod(r, share)
            target[r * multiple : r * multiple + picked.size] = chunk * per_chunk + devices * share + place
            load[devices] += degree[picked]
        slot_of = np.empty(n, np.int64)
        slot_of[by_degree] = target[:n]
        plans[b] = (members, slot_of, chunks, per_chunk)
    buckets, new_position, offset = [], np.empty(starts[-1], np.int64), 0
    for b, bucket in enumerate(flat):
        members, slot_of, chunks, per_chunk = plans[b]
        width = np.shape(bucket.cols)[-1]
        total = chunks * per_chunk
        rows = np.zeros(total, np.int32)
        cols = np.full((total, width), num_cols, np.int32)
        entries = np.full((total, width), nnz, np.int32)
        rows[slot_of] = np.asarray(bucket.rows).reshape(-1)[members]
        cols[slot_of] = np.asarray(bucket.cols).reshape(-1, width)[members]
        entries[slot_of] = np.asarray(bucket.entries).reshape(-1, width)[members]
        buckets.append(Bucket(rows=rows.reshape(chunks, per_chunk), cols=cols.reshape(chunks, per_chunk, width),
                              entries=entries.reshape(chunks, per_chunk, width)))
        new_position[starts[b] + members] = offset + slot_of
        offset += total
    # Each bucket a group of its own: split, every bucket has several chunks
    # and map_rows loops over them where their rows live.
    return BucketLayout(buckets=tuple((bucket,) for bucket in buckets), order=new_position[order].astype(np.int32))


def ratings_per_shard(layout: BucketLayout, num_shards: int, nnz: int) -> np.ndarray:
    """Ratings each device holds when ``layout``'s chunks are split over
    ``num_shards`` devices (after :func:`pad_bucket_layout`).

    Parameters
    ----------
    layout : BucketLayout
        Unpadded (from :func:`bayesmf.layout.build_layout`).
    num_shards : int
    nnz : int
        Number of ratings (the layout's entry padding value).

    Returns
    -------
    int array, shape (num_shards,)
    """
    padded = pad_bucket_layout(layout, num_shards, 0, nnz)
    counts = np.zeros(num_shards, np.int64)
    for (bucket,) in padded.buckets:
        k, c, width = np.shape(bucket.entries)
        valid = np.asarray(bucket.entries).reshape(k, num_shards, c // num_shards, width) < nnz
        counts += valid.sum(axis=(0, 2, 3))
    return counts


def _shard_layout(layout, mesh: Mesh, num_cols: int, nnz: int):
    rows, replicated = NamedSharding(mesh, PartitionSpec(ROWS)), NamedSharding(mesh, PartitionSpec())
    chunk_rows = NamedSharding(mesh, PartitionSpec(None, ROWS))  # (chunks, rows of a chunk, ...)
    if isinstance(layout, DenseLayout):
        extra = -layout.mask.shape[0] % mesh.shape[ROWS]
        if extra:
            raise ValueError(
                f"the dense layout's {layout.mask.shape[0]} rows do not split over {mesh.shape[ROWS]} devices; "
                "use layout='bucket'"
            )
        return DenseLayout(mask=place(layout.mask, rows), rows=place(layout.rows, replicated),
                           cols=place(layout.cols, replicated))
    padded = pad_bucket_layout(layout, mesh.shape[ROWS], num_cols, nnz)
    return BucketLayout(
        buckets=tuple((Bucket(*(place(x, chunk_rows) for x in bucket)),) for (bucket,) in padded.buckets),
        order=place(padded.order, replicated),
    )


def shard_context(ctx, mesh: Mesh):
    """A :class:`bayesmf.engines.gibbs.GibbsContext` placed on ``mesh``.

    Layout blocks are split by rows over the ``"rows"`` axis (buckets padded
    by :func:`pad_bucket_layout`); the ratings and the per-row vectors are
    replicated.

    Parameters
    ----------
    ctx : GibbsContext
        From :func:`bayesmf.engines.gibbs.build_context` (host or device arrays).
    mesh : Mesh
        With a ``"rows"`` axis (:func:`make_mesh`).

    Returns
    -------
    GibbsContext
        Same structure, global arrays.
    """
    data = ctx.data
    return type(ctx)(
        data=replicate(data, mesh),
        user_layout=_shard_layout(ctx.user_layout, mesh, data.num_items, data.nnz),
        item_layout=_shard_layout(ctx.item_layout, mesh, data.num_users, data.nnz),
    )


def replicate(tree, mesh: Mesh):
    """Every leaf of ``tree`` replicated on ``mesh`` (global arrays)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda x: place(x, replicated), tree)


def collective_bytes(compiled) -> dict:
    """Bytes of the results of the collectives in a compiled program, by op.

    Parameters
    ----------
    compiled : jax.stages.Compiled

    Returns
    -------
    dict of str -> int
        ``{op: bytes}`` over :data:`COLLECTIVES` (result size of each op
        instance as written in the optimized HLO; a collective inside a
        loop body counts once per iteration of the program text, not per
        trip).
    """
    import re

    sizes = {"f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "pred": 1, "u8": 1, "s8": 1}
    out = {op: 0 for op in COLLECTIVES}
    pattern = re.compile(r"= \(?([a-z0-9]+)\[([0-9,]*)\][^ ]* (" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
    for dtype, dims, op in pattern.findall(compiled.as_text()):
        count = int(np.prod([int(x) for x in dims.split(",") if x])) if dims else 1
        out[op] += count * sizes.get(dtype, 4)
    return out


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join a multi-process run (``jax.distributed.initialize``), CPU collectives through gloo.

    Call before anything else touches JAX's devices.

    Parameters
    ----------
    coordinator : str
        ``HOST:PORT`` of process 0's coordinator.
    num_processes, process_id : int
    """
    # Cross-process collectives of the CPU backend (a no-op for GPU runs).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def place_chains(tree, mesh: Mesh):
    """Leaves of ``tree`` (leading chain axis) split over the mesh's
    ``"chains"`` axis where it has one and it divides the chain count;
    replicated otherwise."""
    width = mesh.shape.get(CHAINS, 1)

    def one(x):
        split = width > 1 and np.ndim(x) > 0 and np.shape(x)[0] % width == 0
        return place(x, NamedSharding(mesh, PartitionSpec(CHAINS) if split else PartitionSpec()))

    return jax.tree_util.tree_map(one, tree)


def on_mesh(engine, mesh: Mesh):
    """``engine`` (a :class:`bayesmf.engines.driver.Engine`) with its states
    placed on ``mesh``: each chain's initial state replicated, the driver's
    stacked states and accumulators split over the ``"chains"`` axis
    (:func:`place_chains`), so its compiled chunks take and return arrays of
    one sharding."""
    init_fn = engine.init_fn
    return engine._replace(init_fn=lambda chain_key: replicate(init_fn(chain_key), mesh),
                           place_fn=lambda tree: place_chains(tree, mesh))
