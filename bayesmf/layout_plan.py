"""How each layout of :mod:`bayesmf.layout` cuts rows, and the memory it takes.

Pure NumPy over the rows' degrees (no JAX arrays): the automatic choice of a
layout (:func:`resolve_kind`), the segment width (:func:`segment_width`), the
bucket widths and their groups of chunks (:func:`bucket_plan`,
:func:`stage_rows`), the chunks of segments (:func:`segment_plan`), the
working memory each holds at once (:func:`peak_working_bytes`,
:func:`segment_working_bytes`, read by :func:`bayesmf.engines.gibbs.memory_plan`),
and the default chunk and statistics sizes of a device
(:func:`default_chunk_bytes`, :func:`default_stats_bytes`).
:mod:`bayesmf.layout` builds the layouts from these plans and runs them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bayesmf.memory import device_limit

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


def segments_per_row(degree: np.ndarray, width: int) -> np.ndarray:
    """Segments of ``width`` ratings each row of these degrees takes (the last one padded)."""
    return -(-np.asarray(degree, np.int64) // width)


def segment_width(degree: np.ndarray) -> int:
    """Ratings per segment for rows of these degrees (see :data:`SEGMENT_WIDTHS`)."""
    if SEGMENT_WIDTH is not None:
        return int(SEGMENT_WIDTH)
    costs = [int(segments_per_row(degree, w).sum()) * (w + SEGMENT_OVERHEAD) for w in SEGMENT_WIDTHS]
    return SEGMENT_WIDTHS[int(np.argmin(costs))]


# Working memory one chunk of rows (or segments) may take in :func:`bayesmf.layout.map_rows`
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
# :func:`bayesmf.layout.map_rows` runs in two stages (the buckets' statistics first, then
# the row update over even chunks of rows: one call site of the Cholesky and
# its solves, each of which costs ~0.35 s of XLA:CPU compile time, instead
# of one per group): 512 MB on the CPU, 1/32 of an accelerator's memory.
STATS_BYTES = 512 * 2**20
DEVICE_STATS_FRACTION = 1 / 32


def bucket_widths(degree: np.ndarray) -> np.ndarray:
    """Bucket width of rows of these degrees: the next power of 2 (1 for an empty row)."""
    degree = np.asarray(degree, np.int64)
    return np.where(degree > 0, 2 ** np.ceil(np.log2(np.maximum(degree, 1))).astype(np.int64), 1)


def padded_fraction(degree: np.ndarray, kind: str = "bucket", shape: SegmentShape | None = None) -> float:
    """Entries of a layout (padding included) per entry, for rows of these
    degrees: ``"bucket"`` 1 to 2 (widths up to the next power of 2),
    ``"segment"`` (segments of :func:`segment_width`) at least
    ``1 + (width - 1) rows / nnz``.

    With the segment layout's ``shape`` (:func:`segment_plan`) the count is
    the layout's own, ``blocks * chunks * chunk_segments * width``: every
    block padded to the largest and its segments rounded up to whole chunks.
    Without it, the segments alone, which at ML-10M shape, rank 512 (138
    blocks of users) was 1.425 where the layout holds 1.463 per rating."""
    degree = np.asarray(degree, np.int64)
    total = int(degree.sum())
    if not total:
        return 1.0
    if kind == "segment":
        if shape is not None:
            return float(shape.blocks * shape.chunks * shape.chunk_segments * shape.width / total)
        width = segment_width(degree)
        return float(segments_per_row(degree, width).sum() * width / total)
    return float(bucket_widths(degree[degree > 0]).sum() / total)


def resolve_kind(kind: str, num_rows: int, num_cols: int, width: int | None = None) -> str:
    """The layout ``build_layout(kind=...)`` builds: ``"auto"`` resolved by size and design width.

    ``"auto"`` is ``"dense"`` for small problems (:data:`DENSE_MAX_CELLS`,
    :data:`DENSE_MAX_WORK`); otherwise ``"segment"``: every row's
    ``(w + 1)^2`` statistics at once when they fit in ``stats_bytes``
    (default :func:`default_stats_bytes`), else in blocks of rows
    (:func:`segment_plan`). One loop body whatever the degrees, where the
    buckets' groups each compile a row update: on the CPU, ML-25M shape,
    rank 32, a sweep compiled in 2.6 s against 5.2; on an H200 at Netflix
    shape, rank 32, in 2.0 s against 5.4 and swept in 0.104 s against 0.114;
    at ML-10M shape, rank 512 (blocks), in 3.3 s against 12.2, sweeping in
    1.29 s against 1.13 (``benchmarks/gpu_check.py``, fifth run). Without the
    width, ``"bucket"``.
    """
    if kind not in LAYOUTS:
        raise ValueError(f"unknown layout {kind!r}; expected one of {LAYOUTS}")
    if kind != "auto":
        return kind
    cells = num_rows * num_cols
    if cells <= DENSE_MAX_CELLS and (width is None or cells * width**2 <= DENSE_MAX_WORK):
        return "dense"
    return "bucket" if width is None else "segment"


def segment_stats_bytes(num_rows: int, design_width: int, itemsize: int = 4) -> int:
    """Every row's ``(d + 1)^2`` statistics in the ``"segment"`` layout (one padding row included)."""
    return (num_rows + 1) * (design_width + 1) ** 2 * itemsize


def row_bytes(width: int, design_width: int | None, itemsize: int = 4) -> int:
    """Working memory of one row of a bucket of ``width`` entries in :func:`bayesmf.layout.map_rows`.

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
    """How :func:`bayesmf.layout.build_layout` cuts rows of these degrees: groups of buckets.

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
    """Rows per chunk of the second stage of :func:`bayesmf.layout.map_rows`, or None for one stage.

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
    """What :func:`bayesmf.layout.map_rows` holds at once: the largest group's working memory
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


class SegmentShape(NamedTuple):
    """How :func:`bayesmf.layout.build_layout` cuts rows into a ``"segment"`` layout
    (:func:`segment_plan`): ``blocks`` blocks of at most ``block_rows`` rows,
    each holding ``chunks`` chunks of ``chunk_segments`` segments of ``width``
    ratings (padding included), and updating its rows in ``row_chunks``
    chunks of ``chunk_rows`` rows."""

    width: int
    blocks: int
    block_rows: int
    chunks: int
    chunk_segments: int
    row_chunks: int
    chunk_rows: int


def rows_per_block(design_width: int, stats_bytes: int, itemsize: int = 4) -> int:
    """Most rows of a block whose ``(d + 1)^2`` statistics, with a padding
    row's, fit in ``stats_bytes`` (at least 1)."""
    return max(1, int(stats_bytes) // ((int(design_width) + 1) ** 2 * itemsize) - 1)


def row_blocks(per_row: np.ndarray, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's block and position in it, for rows of ``per_row`` segments.

    One block keeps the rows in order. Several deal the rows by decreasing
    segments in a snake (0, 1, .., B - 1, B - 1, .., 0, ...), so every block
    holds ``ceil(n / B)`` or ``floor(n / B)`` rows and about the same number
    of segments, whatever the order of the rows' ids (each block is padded
    to the largest count).

    Returns
    -------
    block, position : int arrays, shape (num_rows,)
    """
    per_row = np.asarray(per_row, np.int64)
    n = per_row.size
    if blocks == 1:
        return np.zeros(n, np.int64), np.arange(n, dtype=np.int64)
    lap, slot = np.divmod(np.arange(n, dtype=np.int64), blocks)
    by_size = np.argsort(-per_row, kind="stable")
    block, position = np.empty(n, np.int64), np.empty(n, np.int64)
    block[by_size] = np.where(lap % 2 == 0, slot, blocks - 1 - slot)
    position[by_size] = lap
    return block, position


def segment_plan(degree: np.ndarray, design_width: int, chunk_bytes: int, stats_bytes: int | None = None,
                 itemsize: int = 4, width: int | None = None) -> SegmentShape:
    """How :func:`bayesmf.layout.build_layout` cuts rows of these degrees into a ``"segment"`` layout.

    Every row's statistics in one block while they fit in ``stats_bytes``
    (default :func:`default_stats_bytes`); otherwise the fewest even blocks
    of rows (:func:`rows_per_block`, dealt by :func:`row_blocks`) whose
    statistics do, one after another. Chunks of segments and of rows take
    about ``chunk_bytes`` each.

    Parameters
    ----------
    degree : int array, shape (num_rows,)
    design_width : int
    chunk_bytes : int
    stats_bytes : int, optional
    itemsize : int
    width : int, optional
        Ratings per segment (default :func:`segment_width`).
    """
    degree = np.asarray(degree, np.int64)
    d = int(design_width)
    width = segment_width(degree) if width is None else int(width)
    stats_bytes = default_stats_bytes() if stats_bytes is None else stats_bytes
    per_row = segments_per_row(degree, width)
    n = max(1, degree.size)
    blocks = -(-n // min(n, rows_per_block(d, stats_bytes, itemsize)))
    rows = -(-n // blocks)
    block, _ = row_blocks(per_row, blocks)
    segments = max(1, int(np.bincount(block, per_row, minlength=blocks).max()) if degree.size else 1)
    k = -(-segments // min(segments, max(1, chunk_bytes // _segment_bytes(width, d, itemsize))))
    r = -(-rows // min(rows, max(1, chunk_bytes // row_bytes(0, d, itemsize))))
    return SegmentShape(width, blocks, rows, k, -(-segments // k), r, -(-rows // r))


def segment_working_bytes(shape: SegmentShape, design_width: int, itemsize: int = 4) -> int:
    """What :func:`bayesmf.layout.map_rows` holds at once with a ``"segment"`` layout of this plan
    (:func:`segment_plan`): one block's statistics plus the larger of a chunk of segments and a chunk of rows."""
    d = int(design_width)
    seg = shape.chunk_segments * _segment_bytes(shape.width, d, itemsize)
    stats = (shape.block_rows + 1) * (d + 1) ** 2 * itemsize
    return stats + max(seg, shape.chunk_rows * row_bytes(0, d, itemsize))


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
