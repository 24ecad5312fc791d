"""Sparse layouts for the per-row sufficient statistics of the row updates.

Every row update needs, per row ``u``, the Gram matrix
``G_u = sum_{v in I_u} z_v z_v^T`` and ``h_u = sum_{v in I_u} z_v y_uv``. A
naive per-rating outer-product sum materializes an ``nnz x d x d`` array
(about 4 GB at MovieLens-1M size with d = 32). Two layouts avoid it:

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
``"dense"`` (memory O(n m + nnz + m d^2))
    A 0/1 mask ``W`` (n, m): all Grams at once as one GEMM ``W @ (z ⊗ z)``
    over the ``d (d + 1) / 2`` distinct entries of each symmetric outer
    product, and ``h`` by a segment sum over the ratings. The fastest on
    small problems, but its memory grows with ``n x m`` (1.6 GB at
    MovieLens-10M size).

:func:`build_layout` with ``kind="auto"`` takes ``"dense"`` while
``n * m <= DENSE_MAX_CELLS`` and, when the design width ``w`` is given,
``n * m * w^2 <= DENSE_MAX_WORK`` (the dense GEMM's flops grow with ``n m w^2``,
the bucketed layout's with ``nnz w^2``); see ``benchmarks/layout_crossover.py``
for the measured crossover.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayesmf.memory import device_limit

Array = jax.Array

# Largest n * m for which the automatic choice is the dense layout. The
# crossover measured by benchmarks/layout_crossover.py on 2 CPU cores is
# reported in the README; 4e6 cells (16 MB per float32 matrix) keeps the dense
# matrices small while covering MovieLens-100K (943 x 1682 = 1.6e6).
DENSE_MAX_CELLS = 4_000_000
# Largest n * m * w^2 for which the automatic choice is dense. On the
# MovieLens-100K shape (1.6e6 cells) the two layouts were level at rank 10
# (dense / bucket seconds per sweep 1.13, measured on a loaded 2-core
# machine) and the bucketed one 1.8x faster at rank 50
# (benchmarks/layout_crossover.py): 2e8 keeps rank 10 (1.6e6 x 11^2 = 1.9e8)
# dense and takes buckets from rank ~12 up. Since the dense GEMM builds only
# the symmetric half of each Gram, the two were level at rank 20 (dense /
# bucket 1.02) and the bucketed one still 1.7x faster at rank 50
# (``--factors 1 --rank 20`` and ``--rank 50``, quiet machine), so the
# threshold stands.
DENSE_MAX_WORK = 2e8

LAYOUTS = ("auto", "bucket", "segment", "dense")

# Ratings per segment of the ``"segment"`` layout: every row's ratings are cut
# into segments of one width per side (the last one padded), so the
# statistics of any data set run through one loop body of one shape per side
# (compile time does not grow with the degree distribution, as one body per
# bucket width did). :func:`segment_width` picks the power of 2 within these
# bounds that minimises ``segments x (width + SEGMENT_OVERHEAD)``: padding
# costs its slots, and each segment a fixed overhead (adding its statistics
# into its row, a small GEMM's setup) worth about 32 slots on the 2-core CPU:
# at ML-1M shape, rank 32, widths 16/32/64/128 for both sides gave
# 0.301/0.307/0.281/0.256 s per sweep, padding 4.5/9/20/33% on the users' side.
SEGMENT_WIDTHS = (16, 32, 64, 128, 256, 512)
SEGMENT_OVERHEAD = 32
# A fixed width for every side instead (None: :func:`segment_width` decides).
SEGMENT_WIDTH = None


def _segments_per_row(degree: np.ndarray, width: int) -> np.ndarray:
    """Segments of ``width`` ratings each row of these degrees takes (the last one padded)."""
    return -(-np.asarray(degree, np.int64) // width)


def segment_width(degree: np.ndarray) -> int:
    """Ratings per segment for rows of these degrees (see :data:`SEGMENT_WIDTHS`)."""
    if SEGMENT_WIDTH is not None:
        return int(SEGMENT_WIDTH)
    costs = [int(_segments_per_row(degree, w).sum()) * (w + SEGMENT_OVERHEAD) for w in SEGMENT_WIDTHS]
    return SEGMENT_WIDTHS[int(np.argmin(costs))]


# Working memory one chunk of rows (or segments) may take in :func:`map_rows`
# on the CPU (the gathered design rows and the per-row d x d matrices),
# bytes. At the ML-1M shape, rank 32 (2 cores, loaded), XLA's temporary
# buffers per sweep were 213 MB with 64 MB chunks, 49 MB with 16 MB and 19 MB
# with 4 MB. With segments, 4 MB chunks (which stay in cache) are also the
# fastest on the quiet 2-core CPU (benchmarks/segment_layout.py, alternating
# fresh processes, rank 32): ML-1M shape 0.221 s/sweep against 0.281-0.290
# with 16 MB (1 MB: 0.237, 2 MB: 0.230 in a probe); ML-10M shape 1.99-2.11
# against 2.38-2.52. On an accelerator the chunk is a fraction of the device's
# memory instead (:func:`default_chunk_bytes`): large chunks keep its
# batched kernels full.
CHUNK_BYTES = 4 * 2**20
# Fraction of an accelerator's memory one chunk may take.
DEVICE_CHUNK_FRACTION = 1 / 16
# Largest buffer of every row's statistics (n (d + 1)^2 floats) for which
# :func:`map_rows` runs in two stages (the buckets' statistics first, then
# the row update over even chunks of rows: one call site of the Cholesky and
# its solves, each of which costs ~0.35 s of XLA:CPU compile time, instead
# of one per group): 512 MB on the CPU, 1/32 of an accelerator's memory.
STATS_BYTES = 512 * 2**20
DEVICE_STATS_FRACTION = 1 / 32


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
    """Every row's ratings in segments of one width, in ``k`` chunks of ``c`` segments.

    :func:`map_rows` sums each chunk's per-segment statistics into every
    row's ``(d + 1)^2`` statistics (one loop body), then updates the rows in
    even chunks (a second loop body). Built by :func:`build_layout` with
    ``kind="segment"`` (or ``"auto"`` where every row's statistics fit in
    ``stats_bytes``).

    Attributes
    ----------
    rows : int32 array, shape (k, c)
        Row of each segment; padding segments point at ``num_rows``.
    cols : int32 array, shape (k, c, width)
        Column ids of the segment's entries; padding is ``num_cols``.
    entries : int32 array, shape (k, c, width)
        Positions of those entries in the rating arrays; padding is ``nnz``.
    row_chunks : int32 array, shape (chunks, rows_per_chunk)
        The rows ``0 .. num_rows - 1`` in even chunks for the row update;
        padding is ``num_rows`` (a row of zero statistics).
    num_rows : int32 array, shape (num_rows, 0)
        No data: carries the row count as a static shape through ``jit``.
    """

    rows: Array
    cols: Array
    entries: Array
    row_chunks: Array
    num_rows: Array


class DenseLayout(NamedTuple):
    mask: Array  # (num_rows, num_cols) 0/1
    rows: Array  # (nnz,) int32 row of each rating
    cols: Array  # (nnz,) int32 column of each rating


def bucket_widths(degree: np.ndarray) -> np.ndarray:
    """Bucket width of rows of these degrees: the next power of 2 (1 for an empty row)."""
    degree = np.asarray(degree, np.int64)
    return np.where(degree > 0, 2 ** np.ceil(np.log2(np.maximum(degree, 1))).astype(np.int64), 1)


def padded_fraction(degree: np.ndarray, kind: str = "bucket") -> float:
    """Entries of a layout (padding included) per entry, for rows of these
    degrees: ``"bucket"`` 1 to 2 (widths up to the next power of 2),
    ``"segment"`` (segments of :func:`segment_width`) at most
    ``1 + (width - 1) rows / nnz``."""
    degree = np.asarray(degree, np.int64)
    total = int(degree.sum())
    if not total:
        return 1.0
    if kind == "segment":
        width = segment_width(degree)
        return float(_segments_per_row(degree, width).sum() * width / total)
    return float(bucket_widths(degree[degree > 0]).sum() / total)


def resolve_kind(kind: str, num_rows: int, num_cols: int, width: int | None = None,
                 stats_bytes: int | None = None, itemsize: int = 4) -> str:
    """The layout ``build_layout(kind=...)`` builds: ``"auto"`` resolved by size and design width.

    ``"auto"`` is ``"dense"`` for small problems (:data:`DENSE_MAX_CELLS`,
    :data:`DENSE_MAX_WORK`); otherwise ``"segment"`` when every row's
    ``(w + 1)^2`` statistics fit in ``stats_bytes`` (default
    :func:`default_stats_bytes`), else ``"bucket"`` (chunks of rows, whose
    working memory is bounded whatever the rank).
    """
    if kind not in LAYOUTS:
        raise ValueError(f"unknown layout {kind!r}; expected one of {LAYOUTS}")
    if kind != "auto":
        return kind
    cells = num_rows * num_cols
    if cells <= DENSE_MAX_CELLS and (width is None or cells * width**2 <= DENSE_MAX_WORK):
        return "dense"
    if width is None:
        return "bucket"
    stats_bytes = default_stats_bytes() if stats_bytes is None else stats_bytes
    return "segment" if segment_stats_bytes(num_rows, width, itemsize) <= stats_bytes else "bucket"


def segment_stats_bytes(num_rows: int, design_width: int, itemsize: int = 4) -> int:
    """Every row's ``(d + 1)^2`` statistics in the ``"segment"`` layout (one padding row included)."""
    return (num_rows + 1) * (design_width + 1) ** 2 * itemsize


def row_bytes(width: int, design_width: int | None, itemsize: int = 4) -> int:
    """Working memory of one row of a bucket of ``width`` entries in :func:`map_rows`.

    The gathered design rows with the response, ``width (d + 1)`` floats;
    the matmul's ``(d + 1)^2``; the precision, its Cholesky factor and the
    solves' temporaries, ``3 d^2`` (``d`` = ``design_width``; without it,
    0: no bound).
    """
    if design_width is None:
        return 0
    d = int(design_width)
    return itemsize * (width * (d + 1) + (d + 1) ** 2 + 3 * d * d)


class BucketShape(NamedTuple):
    """One bucket of the plan: ``rows`` rows of ``width`` entries in ``chunks``
    chunks of ``chunk_rows`` rows, each taking ``working_bytes``."""

    width: int
    rows: int
    chunks: int
    chunk_rows: int
    working_bytes: int


def bucket_plan(degree: np.ndarray, design_width: int | None, chunk_bytes: int,
                itemsize: int = 4) -> tuple[tuple[BucketShape, ...], ...]:
    """How :func:`build_layout` cuts rows of these degrees: groups of buckets.

    A bucket whose rows' working memory exceeds ``chunk_bytes`` is cut into
    the fewest even chunks within it and forms a group of its own (a loop
    over its chunks); consecutive buckets that fit in one chunk share a
    group while their sum does (one batched call for all of them: each call
    site of the Cholesky and its solves adds compile time). So no group
    holds more than ``chunk_bytes`` of working memory, except a single row
    wider than it.

    Parameters
    ----------
    degree : int array, shape (num_rows,)
    design_width : int or None
    chunk_bytes : int
    itemsize : int

    Returns
    -------
    tuple of tuples of BucketShape, in increasing width
    """
    widths = bucket_widths(degree)
    values, counts = np.unique(widths, return_counts=True)
    groups, current, current_bytes = [], [], 0
    for width, n_b in zip(values.tolist(), counts.tolist()):
        per_row = row_bytes(width, design_width, itemsize)
        most = max(1, chunk_bytes // per_row) if per_row else n_b
        k = -(-n_b // min(n_b, most))
        c = -(-n_b // k)
        shape = BucketShape(width, n_b, k, c, c * per_row)
        if k > 1 or (current and current_bytes + shape.working_bytes > chunk_bytes):
            if current:
                groups.append(tuple(current))
            current, current_bytes = [], 0
        if k > 1:
            groups.append((shape,))
        else:
            current.append(shape)
            current_bytes += shape.working_bytes
    if current:
        groups.append(tuple(current))
    return tuple(groups)


def stage_rows(plan: tuple, design_width: int | None, chunk_bytes: int, stats_bytes: int,
               itemsize: int = 4) -> int | None:
    """Rows per chunk of the second stage of :func:`map_rows`, or None for one stage.

    Two stages when there is more than one group (so one call site of the
    row update replaces several) and every row's statistics, padding
    included, fit in ``stats_bytes``; a chunk of rows then takes
    ``chunk_bytes`` of working memory for the row update.
    """
    if design_width is None or len(plan) < 2:
        return None
    d = int(design_width)
    if _padded_rows(plan) * (d + 1) ** 2 * itemsize > stats_bytes:
        return None
    return max(1, chunk_bytes // row_bytes(0, d, itemsize))


def peak_working_bytes(degree: np.ndarray, design_width: int | None, chunk_bytes: int, itemsize: int = 4,
                       stats_bytes: int | None = None) -> int:
    """What :func:`map_rows` holds at once: the largest group's working memory
    in :func:`bucket_plan`; with two stages (:func:`stage_rows`), every row's
    statistics plus the larger of that and a second-stage chunk."""
    plan = bucket_plan(degree, design_width, chunk_bytes, itemsize)
    group_bytes = max((sum(b.working_bytes for b in group) for group in plan), default=0)
    stats_bytes = STATS_BYTES if stats_bytes is None else stats_bytes
    per_chunk = stage_rows(plan, design_width, chunk_bytes, stats_bytes, itemsize)
    if per_chunk is None:
        return group_bytes
    d = int(design_width)
    return _padded_rows(plan) * (d + 1) ** 2 * itemsize + max(group_bytes, per_chunk * row_bytes(0, d, itemsize))


def segment_chunks(degree: np.ndarray, design_width: int, chunk_bytes: int, itemsize: int = 4,
                   width: int | None = None) -> tuple[int, int, int, int]:
    """How :func:`build_layout` cuts rows of these degrees into a ``"segment"`` layout.

    Returns
    -------
    (chunks, segments per chunk, row chunks, rows per row chunk)
    """
    degree = np.asarray(degree, np.int64)
    width = segment_width(degree) if width is None else int(width)
    segments = max(1, int(_segments_per_row(degree, width).sum()))
    k = -(-segments // min(segments, max(1, chunk_bytes // _segment_bytes(width, design_width, itemsize))))
    rows = max(1, degree.size)
    r = -(-rows // min(rows, max(1, chunk_bytes // row_bytes(0, design_width, itemsize))))
    return k, -(-segments // k), r, -(-rows // r)


def segment_working_bytes(degree: np.ndarray, design_width: int, chunk_bytes: int, itemsize: int = 4) -> int:
    """What :func:`map_rows` holds at once with a ``"segment"`` layout: every
    row's statistics plus the larger of a chunk of segments and a chunk of rows."""
    width = segment_width(degree)
    _, c, _, per_chunk = segment_chunks(degree, design_width, chunk_bytes, itemsize, width)
    d = int(design_width)
    seg = c * _segment_bytes(width, d, itemsize)
    return segment_stats_bytes(np.size(degree), d, itemsize) + max(seg, per_chunk * row_bytes(0, d, itemsize))


def _segment_bytes(width: int, design_width: int, itemsize: int = 4) -> int:
    """Working memory of one segment of ``width`` ratings: its gathered design
    rows with the response and its ``(d + 1)^2`` statistics."""
    d = int(design_width)
    return itemsize * (width * (d + 1) + (d + 1) ** 2)


def _padded_rows(plan: tuple) -> int:
    """Rows of a :func:`bucket_plan`, chunk padding included."""
    return sum(b.chunks * b.chunk_rows for group in plan for b in group)


def default_chunk_bytes(device=None) -> int:
    """:data:`CHUNK_BYTES` on the CPU; on an accelerator that reports its
    memory, :data:`DEVICE_CHUNK_FRACTION` of it."""
    limit = device_limit(device)
    return int(limit * DEVICE_CHUNK_FRACTION) if limit else CHUNK_BYTES


def default_stats_bytes(device=None) -> int:
    """:data:`STATS_BYTES` on the CPU; on an accelerator that reports its
    memory, :data:`DEVICE_STATS_FRACTION` of it."""
    limit = device_limit(device)
    return int(limit * DEVICE_STATS_FRACTION) if limit else STATS_BYTES


def _bucket_layout(rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int,
                   design_width: int | None = None, chunk_bytes: int = CHUNK_BYTES,
                   stats_bytes: int = STATS_BYTES, itemsize: int = 4) -> BucketLayout:
    nnz = rows.size
    order = np.argsort(rows, kind="stable")
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
                    rows=jnp.asarray(members_p.reshape(k, c), jnp.int32),
                    cols=jnp.asarray(cols_p.reshape(k, c, width), jnp.int32),
                    entries=jnp.asarray(entries_p.reshape(k, c, width), jnp.int32),
                )
            )
            position[members] = offset + np.arange(members.size)
            offset += k * c
        groups.append(tuple(buckets))
    per_chunk = stage_rows(plan, design_width, chunk_bytes, stats_bytes, itemsize)
    if per_chunk is None:
        return BucketLayout(buckets=tuple(groups), order=jnp.asarray(position, jnp.int32))
    # Second stage: the rows in the first stage's order, in even chunks
    # (padding points one past the statistics, at a zero row).
    real = np.sort(position)
    chunks = -(-real.size // min(real.size, per_chunk))
    per_chunk = -(-real.size // chunks)
    index = np.full(chunks * per_chunk, offset, np.int64)
    index[: real.size] = real
    stage_order = np.empty(num_rows, np.int64)
    stage_order[np.argsort(position, kind="stable")] = np.arange(num_rows)
    return BucketLayout(buckets=tuple(groups), order=jnp.asarray(position, jnp.int32),
                        stage_index=jnp.asarray(index.reshape(chunks, per_chunk), jnp.int32),
                        stage_order=jnp.asarray(stage_order, jnp.int32))


def _segment_layout(rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int, design_width: int,
                    chunk_bytes: int, itemsize: int, segment: int | None = None) -> SegmentLayout:
    nnz = rows.size
    order = np.argsort(rows, kind="stable")
    degree = np.bincount(rows, minlength=num_rows)
    w = segment_width(degree) if segment is None else int(segment)
    k, c, r, per_chunk = segment_chunks(degree, design_width, chunk_bytes, itemsize, w)
    per_row = _segments_per_row(degree, w)
    seg_row = np.repeat(np.arange(num_rows), per_row)
    first = np.cumsum(per_row) - per_row  # each row's first segment
    ends = np.cumsum(degree)  # one past each row's last entry in the sorted order
    start = (ends - degree)[seg_row] + (np.arange(seg_row.size) - first[seg_row]) * w
    end = ends[seg_row]
    slot = start[:, None] + np.arange(w)[None, :]
    valid = slot < end[:, None]
    entries = np.where(valid, order[np.minimum(slot, max(nnz - 1, 0))], nnz)
    seg_cols = np.where(valid, cols[np.minimum(entries, max(nnz - 1, 0))], num_cols)
    pad = k * c - seg_row.size
    seg_row = np.concatenate([seg_row, np.full(pad, num_rows, np.int64)])
    entries = np.concatenate([entries, np.full((pad, w), nnz, np.int64)])
    seg_cols = np.concatenate([seg_cols, np.full((pad, w), num_cols, np.int64)])
    row_chunks = np.full(r * per_chunk, num_rows, np.int64)
    row_chunks[:num_rows] = np.arange(num_rows)
    return SegmentLayout(
        rows=jnp.asarray(seg_row.reshape(k, c), jnp.int32),
        cols=jnp.asarray(seg_cols.reshape(k, c, w), jnp.int32),
        entries=jnp.asarray(entries.reshape(k, c, w), jnp.int32),
        row_chunks=jnp.asarray(row_chunks.reshape(r, per_chunk), jnp.int32),
        num_rows=jnp.zeros((num_rows, 0), jnp.int32),
    )


def _dense_layout(rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int) -> DenseLayout:
    # Counts, not ones: a repeated (row, col) pair counts in the Gram as often
    # as in the rhs and y'y (as it does in the bucketed layout).
    mask = np.zeros((num_rows, num_cols), np.float32)
    np.add.at(mask, (rows, cols), 1.0)
    return DenseLayout(mask=jnp.asarray(mask), rows=jnp.asarray(rows, jnp.int32), cols=jnp.asarray(cols, jnp.int32))


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
        dense GEMM's cost (:data:`DENSE_MAX_WORK`) and the statistics'
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
    kind = resolve_kind(kind, num_rows, num_cols, width, stats_bytes, itemsize)
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    if kind == "dense":
        return _dense_layout(rows, cols, num_rows, num_cols)
    if chunk_bytes is None:
        chunk_bytes = default_chunk_bytes()
    if kind == "segment":
        if width is None:
            raise ValueError("the 'segment' layout needs the design width (width=)")
        return _segment_layout(rows, cols, num_rows, num_cols, int(width), int(chunk_bytes), int(itemsize), segment)
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
        stats = _segment_stats(layout, design_pad, response_pad)[:-1]
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


def _segment_stats(layout: SegmentLayout, design_pad: Array, response_pad: Array) -> Array:
    """Every row's ``[z y]^T [z y]`` (num_rows + 1, d + 1, d + 1) from a
    :class:`SegmentLayout`: one loop over its chunks of segments, each
    chunk's statistics added into their rows (the last row takes the
    padding's zeros)."""
    w = design_pad.shape[-1] + 1

    def body(acc, chunk):
        rows, cols, entries = chunk
        return acc.at[rows].add(_bucket_stats(design_pad, response_pad, cols, entries)), None

    acc = jnp.zeros((layout.num_rows.shape[0] + 1, w, w), design_pad.dtype)
    if layout.rows.shape[0] == 1:
        acc, _ = body(acc, (layout.rows[0], layout.cols[0], layout.entries[0]))
        return acc
    acc, _ = jax.lax.scan(body, acc, (layout.rows, layout.cols, layout.entries))
    return acc


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

    def body(acc, chunk):
        rows, cols, entries = chunk
        return acc.at[rows].add(jnp.einsum("cw,cwd->cd", weights_pad[entries], design_pad[cols])), None

    acc = jnp.zeros((layout.num_rows.shape[0] + 1, d), design.dtype)
    acc, _ = jax.lax.scan(body, acc, (layout.rows, layout.cols, layout.entries))
    return acc[:-1]


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
    """:func:`map_rows` with a :class:`SegmentLayout`: every row's statistics
    (one loop over the segments), then ``finish`` over even chunks of rows."""
    stats = _segment_stats(layout, design_pad, response_pad)
    n = layout.num_rows.shape[0]
    rows = jnp.minimum(jnp.arange(n + 1, dtype=jnp.int32), n - 1)  # (the padding row's inputs: any row's)
    out = _update_in_chunks(stats, rows, layout.row_chunks, finish, row_inputs)
    return jax.tree.map(lambda a: a[:n], out)


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
