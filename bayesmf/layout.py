"""Sparse layouts for the per-row sufficient statistics of the row updates.

Every row update needs, per row ``u``, the Gram matrix
``G_u = sum_{v in I_u} z_v z_v^T`` and ``h_u = sum_{v in I_u} z_v y_uv``. A
naive per-rating outer-product sum materializes an ``nnz x d x d`` array
(about 4 GB at MovieLens-1M size with d = 32). Three layouts avoid it:

``"segment"`` (memory O(nnz) for the indices, plus a block of rows' statistics)
    Every row's ratings are cut into segments of one width (the last one
    padded); one loop body sums each chunk of segments' ``[z y]^T [z y]``
    into its rows' ``(d + 1)^2`` statistics, a second updates the rows in
    even chunks, so compile time does not depend on the degrees. The rows'
    statistics are held a block of rows at a time: one block while every
    row's fit in ``stats_bytes``, otherwise blocks of about equal rows and
    segments, one after another.
``"bucket"`` (degree-bucketed CSR, memory O(nnz) for the indices)
    Rows are grouped by degree into buckets of widths 1, 2, 4, 8, ...; each
    bucket is a padded ``(rows, width)`` block of column indices. Padding
    points at an extra all-zero design row, so it contributes nothing and no
    mask multiply is needed. Padding costs at most 2x the nonzeros. One
    batched matmul per bucket builds the Grams. Each bucket is cut into
    chunks of rows (``chunk_bytes``) that :func:`map_rows` takes one at a
    time, so the gathered design rows (``width x d`` floats per row) and the
    per-row ``d x d`` matrices exist for one chunk at once, never for all
    ``nnz`` ratings: the peak working memory is about ``chunk_bytes``
    whatever the data size (plus every row's ``(d + 1)^2`` statistics when
    they fit in ``stats_bytes`` and the row update runs in two stages).
    In one stage, each group of buckets compiles its own row update.
``"dense"`` (memory O(n m + nnz + m d^2))
    A 0/1 mask ``W`` (n, m): all Grams at once as one GEMM ``W @ (z ⊗ z)``
    over the ``d (d + 1) / 2`` distinct entries of each symmetric outer
    product, and ``h`` by a segment sum over the ratings. The fastest on
    small problems, but its memory grows with ``n x m`` (1.6 GB at
    MovieLens-10M size).

How each is cut, what it holds, and which one :func:`build_layout` with
``kind="auto"`` takes (:func:`bayesmf.layout_plan.resolve_kind`) live in
:mod:`bayesmf.layout_plan`: ``"dense"`` for small problems (see
``benchmarks/layout_crossover.py`` for the measured crossover), otherwise
``"segment"`` (in blocks of rows when every row's statistics do not fit), on
the CPU and on accelerators.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayesmf.arrays import stable_order
from bayesmf.layout_plan import (
    CHUNK_BYTES,
    STATS_BYTES,
    bucket_plan,
    bucket_widths,
    default_chunk_bytes,
    default_stats_bytes,
    resolve_kind,
    row_blocks,
    segment_plan,
    segment_width,
    segments_per_row,
    stage_rows,
)
from bayesmf.memory import to_device

Array = jax.Array



class Bucket(NamedTuple):
    """Rows of similar degree, padded to one width, in ``k`` chunks of ``c`` rows.

    Attributes
    ----------
    rows : int32 array, shape (k, c)
        Row ids in this bucket (``k c >= n_b``; padding rows repeat row 0 and
        own no entries; their outputs are never read).
    cols : int32 array, shape (k, c, width)
        Column ids of each row's entries; padding is ``num_cols``.
    entries : int32 array, shape (k, c, width)
        Positions of those entries in the rating arrays; padding is ``nnz``.
    """

    rows: Array
    cols: Array
    entries: Array


class BucketLayout(NamedTuple):
    """Buckets in groups (:func:`bucket_plan`): a tuple of tuples of :class:`Bucket`.

    With ``stage_index`` (two stages, :func:`stage_rows`), :func:`map_rows`
    computes every bucket's statistics first and then updates the rows in
    even chunks: ``stage_index`` (chunks, rows) holds each chunk's positions
    in the concatenated statistics (padding: one past the end, a zero row)
    and ``stage_order`` (num_rows,) each row's position in the chunks' output.
    """

    buckets: tuple
    order: Array  # (num_rows,) position of each row in the concatenated (padded) bucket output
    stage_index: Array | None = None
    stage_order: Array | None = None


class SegmentLayout(NamedTuple):
    """Every row's ratings in segments of one width, in blocks of rows, each in ``k`` chunks of ``c`` segments.

    :func:`map_rows` takes the blocks one after another (one loop body):
    it sums each chunk's per-segment statistics into the block's rows'
    ``(d + 1)^2`` statistics, then updates those rows in even chunks. One
    block holds every row, in order, while their statistics fit in
    ``stats_bytes``; otherwise blocks of about equal rows and segments
    (:func:`bayesmf.layout_plan.segment_plan`). Built by :func:`build_layout`
    with ``kind="segment"`` (or ``"auto"``: see
    :func:`bayesmf.layout_plan.resolve_kind`).

    Attributes
    ----------
    rows : int32 array, shape (blocks, k, c)
        Position of each segment's row in its block; padding segments point
        at ``R``, the block's padding row (``R = block_rows.shape[1] - 1``).
    cols : int32 array, shape (blocks, k, c, width)
        Column ids of the segment's entries; padding is ``num_cols``.
    entries : int32 array, shape (blocks, k, c, width)
        Positions of those entries in the rating arrays; padding is ``nnz``.
    row_chunks : int32 array, shape (chunks, rows_per_chunk)
        The positions ``0 .. R - 1`` of a block in even chunks for the row
        update; padding is ``R`` (a row of zero statistics).
    block_rows : int32 array, shape (blocks, R + 1)
        The row at each position of each block (padding: some real row, whose
        output is never read).
    order : int32 array, shape (num_rows,)
        Each row's position ``block * R + position`` in the blocks' outputs.
    num_rows : int32 array, shape (num_rows, 0)
        No data: carries the row count as a static shape through ``jit``.
    """

    rows: Array
    cols: Array
    entries: Array
    row_chunks: Array
    block_rows: Array
    order: Array
    num_rows: Array


class DenseLayout(NamedTuple):
    mask: Array  # (num_rows, num_cols) 0/1
    rows: Array  # (nnz,) int32 row of each rating
    cols: Array  # (nnz,) int32 column of each rating



def _bucket_layout(rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int,
                   design_width: int | None = None, chunk_bytes: int = CHUNK_BYTES,
                   stats_bytes: int = STATS_BYTES, itemsize: int = 4) -> BucketLayout:
    nnz = rows.size
    order = stable_order(rows, num_rows)
    degree = np.bincount(rows, minlength=num_rows)
    starts = np.concatenate([[0], np.cumsum(degree)[:-1]])
    width_of_row = bucket_widths(degree)
    groups = []
    position = np.empty(num_rows, dtype=np.int64)
    offset = 0
    plan = bucket_plan(degree, design_width, chunk_bytes, itemsize)
    for group in plan:
        buckets = []
        for shape in group:
            width, k, c = shape.width, shape.chunks, shape.chunk_rows
            members = np.flatnonzero(width_of_row == width)
            slot = np.arange(width)[None, :]
            valid = slot < degree[members, None]
            src = np.where(valid, starts[members, None] + slot, 0)
            entries = np.where(valid, order[src], nnz)
            bucket_cols = np.where(valid, cols[np.minimum(entries, nnz - 1)], num_cols)
            # k chunks of c rows (padding < k rows, repeating row 0 with no entries).
            pad = k * c - members.size
            members_p = np.concatenate([members, np.zeros(pad, members.dtype)])
            cols_p = np.concatenate([bucket_cols, np.full((pad, width), num_cols, bucket_cols.dtype)])
            entries_p = np.concatenate([entries, np.full((pad, width), nnz, entries.dtype)])
            buckets.append(
                Bucket(
                    rows=to_device(members_p.reshape(k, c), jnp.int32),
                    cols=to_device(cols_p.reshape(k, c, width), jnp.int32),
                    entries=to_device(entries_p.reshape(k, c, width), jnp.int32),
                )
            )
            position[members] = offset + np.arange(members.size)
            offset += k * c
        groups.append(tuple(buckets))
    per_chunk = stage_rows(plan, design_width, chunk_bytes, stats_bytes, itemsize)
    if per_chunk is None:
        return BucketLayout(buckets=tuple(groups), order=to_device(position, jnp.int32))
    # Second stage: the rows in the first stage's order, in even chunks
    # (padding points one past the statistics, at a zero row).
    real = np.sort(position)
    chunks = -(-real.size // min(real.size, per_chunk))
    per_chunk = -(-real.size // chunks)
    index = np.full(chunks * per_chunk, offset, np.int64)
    index[: real.size] = real
    stage_order = np.empty(num_rows, np.int64)
    stage_order[np.argsort(position, kind="stable")] = np.arange(num_rows)
    return BucketLayout(buckets=tuple(groups), order=to_device(position, jnp.int32),
                        stage_index=to_device(index.reshape(chunks, per_chunk), jnp.int32),
                        stage_order=to_device(stage_order, jnp.int32))


# Segment slots (ratings, padding included) :func:`_segment_layout` fills
# at once: its NumPy temporaries (a few int64 and int32 arrays per slot,
# under 200 MB for 2**22 slots) exist for one piece, not for every rating.
# ML-25M shape, rank 32: the build's host peak 2.5 GB before blocks (every
# segment at once), 1.96 GB in pieces, 6.3 instead of 11.5 s.
BUILD_SLOTS = 2**22


def _segment_layout(rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int, design_width: int,
                    chunk_bytes: int, stats_bytes: int, itemsize: int, segment: int | None = None) -> SegmentLayout:
    nnz = rows.size
    order = stable_order(rows, num_rows).astype(np.int32)
    degree = np.bincount(rows, minlength=num_rows)
    w = segment_width(degree) if segment is None else int(segment)
    shape = segment_plan(degree, design_width, chunk_bytes, stats_bytes, itemsize, w)
    blocks, size, k, c = shape.blocks, shape.block_rows, shape.chunks, shape.chunk_segments
    per_row = segments_per_row(degree, w)
    block, position = row_blocks(per_row, blocks)
    # The segments in their places: block by block, each block's rows by position.
    placed = np.argsort(block * size + position, kind="stable")
    seg_row = np.repeat(placed, per_row[placed])
    first = np.cumsum(per_row[placed]) - per_row[placed]
    ends = np.cumsum(degree)  # one past each row's last entry in the sorted order
    start = (ends - degree)[seg_row] + (np.arange(seg_row.size) - np.repeat(first, per_row[placed])) * w
    counts = np.bincount(block, per_row, minlength=blocks).astype(np.int64)
    seg_block = np.repeat(np.arange(blocks), counts)
    dest = seg_block * (k * c) + np.arange(seg_row.size) - np.repeat(np.cumsum(counts) - counts, counts)
    out_rows = np.full(blocks * k * c, size, np.int32)
    out_entries = np.full((blocks * k * c, w), nnz, np.int32)
    out_cols = np.full((blocks * k * c, w), num_cols, np.int32)
    out_rows[dest] = position[seg_row]
    step = max(1, BUILD_SLOTS // w)
    for lo in range(0, seg_row.size, step):
        piece = slice(lo, lo + step)
        slot = start[piece, None] + np.arange(w)
        valid = slot < ends[seg_row[piece], None]
        entries = np.where(valid, order[np.minimum(slot, max(nnz - 1, 0))], nnz)
        out_entries[dest[piece]] = entries
        out_cols[dest[piece]] = np.where(valid, cols[np.minimum(entries, max(nnz - 1, 0))], num_cols)
    members = np.zeros((blocks, size + 1), np.int32)
    members[block, position] = np.arange(num_rows)
    row_chunks = np.full(shape.row_chunks * shape.chunk_rows, size, np.int32)
    row_chunks[:size] = np.arange(size)
    return SegmentLayout(
        rows=to_device(out_rows.reshape(blocks, k, c)),
        cols=to_device(out_cols.reshape(blocks, k, c, w)),
        entries=to_device(out_entries.reshape(blocks, k, c, w)),
        row_chunks=to_device(row_chunks.reshape(shape.row_chunks, shape.chunk_rows)),
        block_rows=to_device(members),
        order=to_device(block * size + position, jnp.int32),
        num_rows=to_device(np.zeros((num_rows, 0), np.int32)),
    )


def _dense_layout(rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int) -> DenseLayout:
    # Counts, not ones: a repeated (row, col) pair counts in the Gram as often
    # as in the rhs and y'y (as it does in the bucketed layout).
    mask = np.zeros((num_rows, num_cols), np.float32)
    np.add.at(mask, (rows, cols), 1.0)
    return DenseLayout(mask=to_device(mask), rows=to_device(rows, jnp.int32), cols=to_device(cols, jnp.int32))


def build_layout(rows, cols, num_rows: int, num_cols: int, kind: str = "auto", width: int | None = None,
                 chunk_bytes: int | None = None, stats_bytes: int | None = None, itemsize: int = 4,
                 segment: int | None = None):
    """Layout of the entries ``(rows[j], cols[j])`` grouped by row.

    Parameters
    ----------
    rows, cols : int array, shape (nnz,)
    num_rows, num_cols : int
    kind : {"auto", "bucket", "segment", "dense"}
        :func:`resolve_kind` says what ``"auto"`` builds.
    width : int, optional
        Width ``w`` of the design rows the layout will be used with (the
        rank, or rank + 1 with an offset column); lets ``"auto"`` weigh the
        dense GEMM's cost (:data:`bayesmf.layout_plan.DENSE_MAX_WORK`) and the statistics'
        memory, and bounds the chunks (without it, each bucket is one chunk;
        ``"segment"`` needs it).
    chunk_bytes : int, optional
        Working memory of one chunk of rows in :func:`map_rows`; default
        :func:`default_chunk_bytes`.
    stats_bytes : int, optional
        Largest buffer of every row's statistics for the two-stage row
        update (:func:`stage_rows`) and for ``"auto"`` to choose
        ``"segment"``; default :func:`default_stats_bytes`.
    itemsize : int
        Bytes per float of the design rows the layout will be used with (4 or
        8): the chunks' sizes count them.
    segment : int, optional
        Ratings per segment of the ``"segment"`` layout (default
        :func:`segment_width`, which weighs padding against the per-segment
        cost of a Gram; :func:`row_sums` has none).

    Returns
    -------
    BucketLayout, SegmentLayout or DenseLayout
    """
    if stats_bytes is None:
        stats_bytes = default_stats_bytes()
    kind = resolve_kind(kind, num_rows, num_cols, width)
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    if kind == "dense":
        return _dense_layout(rows, cols, num_rows, num_cols)
    if chunk_bytes is None:
        chunk_bytes = default_chunk_bytes()
    if kind == "segment":
        if width is None:
            raise ValueError("the 'segment' layout needs the design width (width=)")
        return _segment_layout(rows, cols, num_rows, num_cols, int(width), int(chunk_bytes), int(stats_bytes),
                               int(itemsize), segment)
    return _bucket_layout(rows, cols, num_rows, num_cols, width, int(chunk_bytes), int(stats_bytes), int(itemsize))


def gram_and_rhs(layout, design: Array, response: Array) -> tuple[Array, Array]:
    """Per-row Gram matrices and right-hand sides.

    Parameters
    ----------
    layout : BucketLayout, SegmentLayout or DenseLayout
        Built for these rows and columns by :func:`build_layout`.
    design : array, shape (num_cols, d)
        One design row ``z_v`` per column.
    response : array, shape (nnz,)
        ``y`` per rating, in the order of the arrays the layout was built on.

    Returns
    -------
    gram : array, shape (num_rows, d, d)
    rhs : array, shape (num_rows, d)
    """
    d = design.shape[-1]
    if isinstance(layout, DenseLayout):
        n = layout.mask.shape[0]
        # The Gram is symmetric: the GEMM builds its d (d + 1) / 2 distinct
        # entries and a gather mirrors them. The rhs is a segment sum over
        # the ratings; a dense response matrix needed an n x m gather per
        # call. On MovieLens-100K, d = 10, 2 cores: users 6.3 -> 3.4 ms,
        # items (d = 11) 7.1 -> 5.0 ms (benchmarks/gibbs_sweep_parts.py).
        upper_i, upper_j = np.triu_indices(d)
        mirror = np.zeros((d, d), np.int32)
        mirror[upper_i, upper_j] = mirror[upper_j, upper_i] = np.arange(upper_i.size)
        outer = design[:, upper_i] * design[:, upper_j]
        gram = (layout.mask @ outer)[:, mirror.ravel()].reshape(n, d, d)
        rhs = jax.ops.segment_sum(response[:, None] * design[layout.cols], layout.rows, num_segments=n)
        return gram, rhs
    design_pad = jnp.concatenate([design, jnp.zeros((1, d), design.dtype)])
    response_pad = jnp.concatenate([response, jnp.zeros((1,), response.dtype)])
    if isinstance(layout, SegmentLayout):
        size = layout.block_rows.shape[1] - 1
        stats = _in_row_order(layout, _over_blocks(layout, lambda *b: _block_stats(design_pad, response_pad, size, *b)))
        return stats[:, :d, :d], stats[:, d, :d]
    # One batched matmul per bucket: with the response appended as an extra
    # column, [z y]^T [z y] holds the Gram (top-left block) and the rhs (last
    # column). matmul lowers to a faster batched GEMM than the equivalent
    # einsum on XLA:CPU (1.6 vs 2.7 ms per side on MovieLens-100K, d = 10).
    blocks = []
    for bucket in (b for group in layout.buckets for b in group):
        width = bucket.cols.shape[-1]
        blocks.append(_bucket_stats(design_pad, response_pad, bucket.cols.reshape(-1, width),
                                    bucket.entries.reshape(-1, width))[:, :, :d])
    stacked = jnp.concatenate(blocks)[layout.order]
    return stacked[:, :d, :], stacked[:, d, :]


def _bucket_stats(design_pad: Array, response_pad: Array, cols: Array, entries: Array) -> Array:
    """``[z y]^T [z y]`` of rows given by padded ``cols``/``entries`` (n, w):
    shape (n, d + 1, d + 1), the Gram ``G``, the rhs ``h`` and ``y^T y``."""
    zy = jnp.concatenate([design_pad[cols], response_pad[entries][..., None]], axis=-1)
    return jnp.matmul(jnp.swapaxes(zy, -1, -2), zy)


def _accumulate(acc: Array, rows: Array, cols: Array, entries: Array, part) -> Array:
    """``acc`` plus each chunk's ``part(cols, entries)`` added at its ``rows``:
    one loop over the chunks (``rows`` (k, c), ``cols`` and ``entries`` (k, c, width))."""

    def body(acc, chunk):
        rows, cols, entries = chunk
        return acc.at[rows].add(part(cols, entries)), None

    if rows.shape[0] == 1:
        return body(acc, (rows[0], cols[0], entries[0]))[0]
    return jax.lax.scan(body, acc, (rows, cols, entries))[0]


def _block_stats(design_pad: Array, response_pad: Array, size: int, rows: Array, cols: Array,
                 entries: Array) -> Array:
    """One block's ``[z y]^T [z y]`` per position, shape (size + 1, d + 1, d + 1),
    from its chunks of segments (:class:`SegmentLayout`'s fields of one
    block); position ``size`` takes the padding's zeros."""
    w = design_pad.shape[-1] + 1
    return _accumulate(jnp.zeros((size + 1, w, w), design_pad.dtype), rows, cols, entries,
                       lambda c, e: _bucket_stats(design_pad, response_pad, c, e))


def _over_blocks(layout: SegmentLayout, fn, *per_block):
    """``fn(rows, cols, entries, *x)`` for each block of ``layout`` (with
    ``per_block`` arrays' slices), stacked on a leading axis: a loop over the
    blocks, or one call for one block."""
    args = (layout.rows, layout.cols, layout.entries) + per_block
    if layout.rows.shape[0] == 1:
        return jax.tree.map(lambda a: a[None], fn(*(a[0] for a in args)))
    return jax.lax.map(lambda a: fn(*a), args)


def _in_row_order(layout: SegmentLayout, out):
    """The blocks' outputs, each (blocks, >= R, ...) by position, in row order: shape (num_rows, ...)."""
    n, size = layout.num_rows.shape[0], layout.block_rows.shape[1] - 1
    if layout.rows.shape[0] == 1:  # one block holds the rows in order
        return jax.tree.map(lambda a: a[0, :n], out)
    return jax.tree.map(lambda a: a[:, :size].reshape((-1,) + a.shape[2:])[layout.order], out)


def row_sums(layout: SegmentLayout, design: Array, weights: Array) -> Array:
    """``sum_j w_j z_{col_j}`` over each row's entries, shape (num_rows, d).

    The transpose of the gather ``design[cols]`` weighted per entry (the
    gradient of ``<L_u, R_v>`` with respect to ``L``, with ``design = R``),
    computed segment by segment: each chunk gathers its design rows, sums
    them per segment and adds ``segments x d`` values into the rows, where
    the gather's own transpose adds ``nnz x d`` values one by one (a
    scatter-add, element by element on XLA:CPU).

    Parameters
    ----------
    layout : SegmentLayout
        Built for these rows and columns by :func:`build_layout`.
    design : array, shape (num_cols, d)
    weights : array, shape (nnz,)
        ``w`` per entry, in the order of the arrays the layout was built on.
    """
    d = design.shape[-1]
    design_pad = jnp.concatenate([design, jnp.zeros((1, d), design.dtype)])
    weights_pad = jnp.concatenate([weights, jnp.zeros((1,), weights.dtype)])
    acc = jnp.zeros((layout.block_rows.shape[1], d), design.dtype)

    def block(rows, cols, entries):
        return _accumulate(acc, rows, cols, entries,
                           lambda c, e: jnp.einsum("cw,cwd->cd", weights_pad[e], design_pad[c]))

    return _in_row_order(layout, _over_blocks(layout, block))


def residual_sums(x: Array, gram: Array, rhs: Array, yy: Array) -> Array:
    """Per-row ``sum_j (y_j - z_j . x)^2 = y^T y - 2 x . h + x^T G x``, shape (n,).

    From the sufficient statistics alone, so the residuals of every rating
    need not be formed (an ``nnz x d`` gather per side). In float32 the
    cancellation costs ``eps * y^T y`` absolute per row (about 5e-3 for a
    movie with 3,000 ratings near 4 stars, against a residual sum near 2,400).

    Parameters
    ----------
    x : array, shape (n, d)
    gram : array, shape (n, d, d)
    rhs : array, shape (n, d)
    yy : array, shape (n,)
    """
    quad = jnp.einsum("ni,nij,nj->n", x, gram, x)
    return jnp.maximum(yy - 2.0 * jnp.sum(x * rhs, axis=-1) + quad, 0.0)


def map_rows(layout, design: Array, response: Array, fn, row_inputs: tuple = (), residuals: bool = False):
    """``x = fn(gram, rhs, *inputs)`` for every row, a chunk of rows at a time.

    The row update of Gibbs and ALS needs each row's Gram and right-hand side
    only to solve with them: computing both per chunk and handing them to
    ``fn`` at once bounds the working memory by the layout's chunks
    (``chunk_bytes`` of :func:`build_layout`), where :func:`gram_and_rhs`
    materialises all of them (and, bucketed, every rating's design row).
    Chunks within a bucket run one after another (``lax.map``).

    Parameters
    ----------
    layout : BucketLayout, SegmentLayout or DenseLayout
    design : array, shape (num_cols, d)
    response : array, shape (nnz,)
    fn : callable
        ``fn(gram (n, d, d), rhs (n, d), *inputs) -> x (n, d)``; row-wise
        (each output row depends on that row's arguments alone).
    row_inputs : tuple of arrays, each shape (num_rows, ...)
        Per-row arguments of ``fn`` (e.g. a draw's standard normals).
    residuals : bool
        Also return each row's residual sum of squares under its new ``x``
        (:func:`residual_sums`).

    Returns
    -------
    x : array, shape (num_rows, d)
    sse : array, shape (num_rows,)
        Only with ``residuals=True``.
    """
    d = design.shape[-1]

    def finish(gram, rhs, yy, inputs):
        x = fn(gram, rhs, *inputs)
        return (x, residual_sums(x, gram, rhs, yy)) if residuals else x

    if isinstance(layout, DenseLayout):
        gram, rhs = gram_and_rhs(layout, design, response)
        yy = jax.ops.segment_sum(response**2, layout.rows, num_segments=layout.mask.shape[0]) if residuals else None
        return finish(gram, rhs, yy, row_inputs)
    design_pad = jnp.concatenate([design, jnp.zeros((1, d), design.dtype)])
    response_pad = jnp.concatenate([response, jnp.zeros((1,), response.dtype)])

    def chunk(args):
        cols, entries, rows = args
        stats = _bucket_stats(design_pad, response_pad, cols, entries)
        return finish(stats[:, :d, :d], stats[:, d, :d], stats[:, d, d], tuple(x[rows] for x in row_inputs))

    if isinstance(layout, SegmentLayout):
        return _segment_rows(layout, design_pad, response_pad, finish, row_inputs)
    if layout.stage_index is not None:
        return _two_stage(layout, design_pad, response_pad, finish, row_inputs)
    # A group of one-chunk buckets is one call of ``fn`` on their rows
    # together (each call site of a batched Cholesky and its solves adds
    # compile time: one per bucket doubled the compile seconds at ML-1M
    # shape); a bucket of several chunks loops over them (bucket_plan).
    out_blocks = []
    for group in layout.buckets:
        if group[0].rows.shape[0] > 1:
            bucket = group[0]
            k, c = bucket.rows.shape
            out = jax.lax.map(chunk, (bucket.cols, bucket.entries, bucket.rows))
            out_blocks.append(jax.tree.map(lambda a: a.reshape((k * c,) + a.shape[2:]), out))
            continue
        stats = jnp.concatenate([_bucket_stats(design_pad, response_pad, b.cols[0], b.entries[0]) for b in group])
        rows = jnp.concatenate([b.rows[0] for b in group])
        out_blocks.append(finish(stats[:, :d, :d], stats[:, d, :d], stats[:, d, d], tuple(x[rows] for x in row_inputs)))
    return jax.tree.map(lambda *blocks: jnp.concatenate(blocks)[layout.order], *out_blocks)


def _segment_rows(layout: SegmentLayout, design_pad: Array, response_pad: Array, finish, row_inputs: tuple):
    """:func:`map_rows` with a :class:`SegmentLayout`: block by block, the
    block's rows' statistics (one loop over its segments), then ``finish``
    over even chunks of them."""

    def block(rows, cols, entries, members):
        stats = _block_stats(design_pad, response_pad, layout.block_rows.shape[1] - 1, rows, cols, entries)
        return _update_in_chunks(stats, members, layout.row_chunks, finish, row_inputs)

    return _in_row_order(layout, _over_blocks(layout, block, layout.block_rows))


def _update_in_chunks(stats: Array, rows: Array, index: Array, finish, row_inputs: tuple):
    """``finish`` over chunks of the statistics' rows: ``index`` (chunks, c)
    holds each chunk's positions in ``stats`` (m, d + 1, d + 1), ``rows``
    (m,) the row whose ``row_inputs`` each position takes. Shape (chunks c, ...)."""
    d = stats.shape[-1] - 1

    def chunk(positions):
        s = stats[positions]
        return finish(s[:, :d, :d], s[:, d, :d], s[:, d, d], tuple(x[rows[positions]] for x in row_inputs))

    if index.shape[0] == 1:
        return chunk(index[0])
    return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), jax.lax.map(chunk, index))


def _two_stage(layout: BucketLayout, design_pad: Array, response_pad: Array, finish, row_inputs: tuple):
    """:func:`map_rows` in two stages: every bucket's statistics, then the
    row update (``finish``) over the layout's even chunks of rows."""
    stats, rows = [], []
    for group in layout.buckets:
        for bucket in group:
            k, c, width = bucket.cols.shape
            if k == 1:
                block = _bucket_stats(design_pad, response_pad, bucket.cols[0], bucket.entries[0])
            else:
                block = jax.lax.map(lambda a: _bucket_stats(design_pad, response_pad, *a), (bucket.cols, bucket.entries))
                block = block.reshape((k * c,) + block.shape[2:])
            stats.append(block)
            rows.append(bucket.rows.reshape(-1))
    w = stats[0].shape[-1]
    stats = jnp.concatenate(stats + [jnp.zeros((1, w, w), stats[0].dtype)])
    rows = jnp.concatenate(rows + [jnp.zeros((1,), jnp.int32)])
    out = _update_in_chunks(stats, rows, layout.stage_index, finish, row_inputs)
    return jax.tree.map(lambda a: a[layout.stage_order], out)
