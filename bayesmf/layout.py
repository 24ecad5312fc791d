"""Sparse layouts for the per-row sufficient statistics of the row updates.

Every row update needs, per row ``u``, the Gram matrix
``G_u = sum_{v in I_u} z_v z_v^T`` and ``h_u = sum_{v in I_u} z_v y_uv``. A
naive per-rating outer-product sum materializes an ``nnz x d x d`` array
(about 4 GB at MovieLens-1M size with d = 32). Two layouts avoid it:

``"bucket"`` (degree-bucketed CSR, memory O(nnz d + n d^2))
    Rows are grouped by degree into buckets of widths 1, 2, 4, 8, ...; each
    bucket is a padded ``(rows, width)`` block of column indices. Padding
    points at an extra all-zero design row, so it contributes nothing and no
    mask multiply is needed. Padding costs at most 2x the nonzeros. One
    batched matmul per bucket builds the Grams.
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

LAYOUTS = ("auto", "bucket", "dense")


class Bucket(NamedTuple):
    """Rows of similar degree, padded to one width.

    Attributes
    ----------
    rows : int32 array, shape (n_b,)
        Row ids in this bucket.
    cols : int32 array, shape (n_b, width)
        Column ids of each row's entries; padding is ``num_cols``.
    entries : int32 array, shape (n_b, width)
        Positions of those entries in the rating arrays; padding is ``nnz``.
    """

    rows: Array
    cols: Array
    entries: Array


class BucketLayout(NamedTuple):
    buckets: tuple
    order: Array  # (num_rows,) position of each row in the concatenated bucket output


class DenseLayout(NamedTuple):
    mask: Array  # (num_rows, num_cols) 0/1
    rows: Array  # (nnz,) int32 row of each rating
    cols: Array  # (nnz,) int32 column of each rating


def _bucket_layout(rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int) -> BucketLayout:
    nnz = rows.size
    order = np.argsort(rows, kind="stable")
    degree = np.bincount(rows, minlength=num_rows)
    starts = np.concatenate([[0], np.cumsum(degree)[:-1]])
    width_of_row = np.where(degree > 0, 2 ** np.ceil(np.log2(np.maximum(degree, 1))).astype(np.int64), 1)
    buckets = []
    position = np.empty(num_rows, dtype=np.int64)
    offset = 0
    for width in np.unique(width_of_row):
        members = np.flatnonzero(width_of_row == width)
        slot = np.arange(width)[None, :]
        valid = slot < degree[members, None]
        src = np.where(valid, starts[members, None] + slot, 0)
        entries = np.where(valid, order[src], nnz)
        bucket_cols = np.where(valid, cols[np.minimum(entries, nnz - 1)], num_cols)
        buckets.append(
            Bucket(
                rows=jnp.asarray(members, jnp.int32),
                cols=jnp.asarray(bucket_cols, jnp.int32),
                entries=jnp.asarray(entries, jnp.int32),
            )
        )
        position[members] = offset + np.arange(members.size)
        offset += members.size
    return BucketLayout(buckets=tuple(buckets), order=jnp.asarray(position, jnp.int32))


def _dense_layout(rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int) -> DenseLayout:
    mask = np.zeros((num_rows, num_cols), np.float32)
    mask[rows, cols] = 1.0
    return DenseLayout(mask=jnp.asarray(mask), rows=jnp.asarray(rows, jnp.int32), cols=jnp.asarray(cols, jnp.int32))


def build_layout(rows, cols, num_rows: int, num_cols: int, kind: str = "auto", width: int | None = None):
    """Layout of the entries ``(rows[j], cols[j])`` grouped by row.

    Parameters
    ----------
    rows, cols : int array, shape (nnz,)
    num_rows, num_cols : int
    kind : {"auto", "bucket", "dense"}
    width : int, optional
        Width ``w`` of the design rows the layout will be used with (the
        rank, or rank + 1 with an offset column); lets ``"auto"`` weigh the
        dense GEMM's cost (:data:`DENSE_MAX_WORK`).

    Returns
    -------
    BucketLayout or DenseLayout
    """
    if kind not in LAYOUTS:
        raise ValueError(f"unknown layout {kind!r}; expected one of {LAYOUTS}")
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    if kind == "auto":
        cells = num_rows * num_cols
        small = cells <= DENSE_MAX_CELLS and (width is None or cells * width**2 <= DENSE_MAX_WORK)
        kind = "dense" if small else "bucket"
    if kind == "dense":
        return _dense_layout(rows, cols, num_rows, num_cols)
    return _bucket_layout(rows, cols, num_rows, num_cols)


def gram_and_rhs(layout, design: Array, response: Array) -> tuple[Array, Array]:
    """Per-row Gram matrices and right-hand sides.

    Parameters
    ----------
    layout : BucketLayout or DenseLayout
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
    # One batched matmul per bucket: with the response appended as an extra
    # column, [z y]^T [z y] holds the Gram (top-left block) and the rhs (last
    # column). matmul lowers to a faster batched GEMM than the equivalent
    # einsum on XLA:CPU (1.6 vs 2.7 ms per side on MovieLens-100K, d = 10).
    blocks = []
    for bucket in layout.buckets:
        zy = jnp.concatenate([design_pad[bucket.cols], response_pad[bucket.entries][..., None]], axis=-1)
        blocks.append(jnp.matmul(jnp.swapaxes(zy, -1, -2), zy[..., :d]))
    stacked = jnp.concatenate(blocks)[layout.order]
    return stacked[:, :d, :], stacked[:, d, :]
