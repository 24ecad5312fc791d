"""Feature rows with implicit feedback, kept sparse: ``X = [S | N - 1 c^T]``.

A side's feature matrix (:class:`bayesmf.model.FeatureSpec`) is its side
features ``S`` (n, F_s), dense and narrow, followed by the implicit-feedback
columns: ``N`` (n, F_e) with ``|N(u)|^-1/2`` at the columns row ``u`` has a
training pair with, centred on the training rows by its column means ``c``
(F_e,). Dense, ``N - 1 c^T`` has no zeros left and takes ``n F_e`` floats:
3 GB per side at ML-10M's shape (69,878 x 10,677), where ``N`` has 9M
entries. :class:`FeatureRows` keeps ``S``, the entries of ``N`` and ``c``,
and multiplies through them in O(n F_s + nnz + F_e) per column:

.. math::

    X B = S B_s + N B_e - 1 (c^T B_e), \\qquad
    X^\\top Y = \\begin{bmatrix} S^\\top Y \\\\ N^\\top Y - c\\, (1^\\top Y)\\end{bmatrix}

``x @ b`` and ``x.T @ y`` work as for an array (and so does ``x.shape``), so
the NumPyro model, MAP and the Gibbs link block take either; ``np.asarray(x)``
gives the dense matrix for small checks.

Examples
--------
>>> import numpy as np
>>> x = implicit_rows(np.array([0, 0, 1]), np.array([0, 1, 1]), 2, 2)
>>> np.asarray(x).round(3)
array([[ 0.354, -0.146],
       [-0.354,  0.146]], dtype=float32)
>>> np.asarray(x @ np.eye(2, dtype=np.float32)).round(3)
array([[ 0.354, -0.146],
       [-0.354,  0.146]], dtype=float32)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

Array = jax.Array


class FeatureRows(NamedTuple):
    """``X = [S | N - 1 c^T]``, shape (n, F_s + F_e) (see the module docstring).

    Attributes
    ----------
    side : array, shape (n, F_s)
        Side features ``S`` (F_s may be 0).
    rows, cols : int32 arrays, shape (m,)
        Row and implicit column of each entry of ``N``, sorted by row.
    values : array, shape (m,)
        The entries of ``N``.
    centre : array, shape (F_e,)
        ``c``, subtracted from every row's implicit columns.
    """

    side: Array
    rows: Array
    cols: Array
    values: Array
    centre: Array

    @property
    def shape(self) -> tuple[int, int]:
        return (self.side.shape[0], self.side.shape[1] + self.centre.shape[0])

    @property
    def dtype(self):
        return self.side.dtype

    @property
    def num_side(self) -> int:
        return self.side.shape[1]

    @property
    def T(self) -> _Transposed:  # noqa: N802 -- as an array's .T
        return _Transposed(self)

    def __matmul__(self, coefficients):
        """``X @ B``, shape (n, D) for ``B`` (F, D)."""
        coefficients = jnp.asarray(coefficients)
        k = self.num_side
        return self.side @ coefficients[:k] + self.implicit_matmul(coefficients[k:])

    def implicit_matmul(self, v) -> Array:
        """``(N - 1 c^T) V`` for ``V`` (F_e, D), shape (n, D)."""
        gathered = self.values[:, None] * v[self.cols]
        summed = jax.ops.segment_sum(gathered, self.rows, num_segments=self.shape[0], indices_are_sorted=True)
        return summed - self.centre @ v

    def implicit_rmatmul(self, y) -> Array:
        """``(N - 1 c^T)^T Y`` for ``Y`` (n, D), shape (F_e, D)."""
        gathered = self.values[:, None] * y[self.rows]
        summed = jax.ops.segment_sum(gathered, self.cols, num_segments=self.centre.shape[0])
        return summed - self.centre[:, None] * jnp.sum(y, axis=0)

    def __array__(self, dtype=None, copy=None):
        dense = np.concatenate([np.asarray(self.side), implicit_dense(self)], axis=1)
        return dense if dtype is None else dense.astype(dtype)

    def host_parts(self) -> tuple[np.ndarray, scipy.sparse.csr_matrix, np.ndarray]:
        """``(S, N, c)`` on the host in float64: ``S`` dense, ``N`` CSR."""
        n, f_e = self.shape[0], self.centre.shape[0]
        matrix = scipy.sparse.csr_matrix(
            (np.asarray(self.values, np.float64), (np.asarray(self.rows), np.asarray(self.cols))), shape=(n, f_e)
        )
        return np.asarray(self.side, np.float64), matrix, np.asarray(self.centre, np.float64)


class _Transposed(NamedTuple):
    rows: FeatureRows

    def __matmul__(self, y):
        """``X^T @ Y``, shape (F, D) for ``Y`` (n, D)."""
        x = self.rows
        y = jnp.asarray(y)
        return jnp.concatenate([x.side.T @ y, x.implicit_rmatmul(y)], axis=0)


def column_square_sums(x, weights) -> Array:
    """``sum_u w_u X_uf^2`` per column ``f`` of a feature matrix, shape (F,).

    ``x`` is a dense array (n, F) or a :class:`FeatureRows`; ``weights`` has
    shape (n,). For :class:`FeatureRows` the implicit columns' squares
    ``(N_uf - c_f)^2`` are summed over the entries of ``N`` and the centre's
    part ``c_f^2 sum_u w_u`` added, without forming ``N - 1 c^T``.
    """
    if not isinstance(x, FeatureRows):
        x = jnp.asarray(x)
        return jnp.square(x).T @ weights
    w = weights[x.rows]
    entries = jax.ops.segment_sum(w * x.values * (x.values - 2 * x.centre[x.cols]), x.cols,
                                  num_segments=x.centre.shape[0])
    implicit = entries + jnp.square(x.centre) * jnp.sum(weights)
    return jnp.concatenate([jnp.square(x.side).T @ weights, implicit])


def implicit_dense(x: FeatureRows) -> np.ndarray:
    """The implicit columns ``N - 1 c^T`` as a dense host array, shape (n, F_e) (small problems)."""
    _, matrix, centre = x.host_parts()
    return (matrix.toarray() - centre[None, :]).astype(np.asarray(x.values).dtype)


def implicit_entries(index, other_index, num_rows: int, num_other: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries of ``N``: rows, columns (sorted by row) and ``|N(u)|^-1/2`` (float64), each shape (m,).

    ``N(u)`` is the set of columns row ``u`` has a pair with (training pairs
    only); repeated pairs count once.
    """
    index = np.asarray(index, dtype=np.int64)
    other_index = np.asarray(other_index, dtype=np.int64)
    if index.shape != other_index.shape:
        raise ValueError("index and other_index must have the same shape")
    keys = np.unique(index * num_other + other_index)
    rows, cols = keys // num_other, keys % num_other
    counts = np.bincount(rows, minlength=num_rows)
    return rows, cols, 1.0 / np.sqrt(counts[rows])


def implicit_features(index, other_index, num_rows: int, num_other: int, *, sparse: bool = False,
                      dtype=np.float64):
    """Implicit-feedback features: ``n_u`` with ``|N(u)|^-1/2`` at the rated columns.

    ``N(u)`` is the set of columns row ``u`` has a pair with (training pairs
    only: pass the training split's indices). Repeated pairs count once.
    Rows without pairs are all zero, so they get the plain prior mean.
    The dense result takes ``num_rows * num_other * itemsize`` bytes
    (ml-100k users: 943 x 1,682 x 8 = 12.7 MB); ``sparse=True`` returns a
    CSR matrix of the same values (``nnz`` entries), which :func:`link_system`
    also accepts.

    Parameters
    ----------
    index : int array, shape (nnz,)
        Row (e.g. user) of each pair.
    other_index : int array, shape (nnz,)
        Column (e.g. movie) of each pair.
    num_rows, num_other : int

    Returns
    -------
    ndarray or scipy.sparse.csr_matrix, shape (num_rows, num_other)

    Examples
    --------
    >>> implicit_features(np.array([0, 0, 2]), np.array([1, 2, 0]), 3, 3)
    array([[0.        , 0.70710678, 0.70710678],
           [0.        , 0.        , 0.        ],
           [1.        , 0.        , 0.        ]])
    """
    rows, cols, values = implicit_entries(index, other_index, num_rows, num_other)
    matrix = scipy.sparse.csr_matrix((values.astype(dtype), (rows, cols)), shape=(num_rows, num_other), dtype=dtype)
    return matrix if sparse else matrix.toarray()


def implicit_mean(index, other_index, num_rows: int, num_other: int) -> np.ndarray:
    """The column means of :func:`implicit_features` over all ``num_rows`` rows, shape (num_other,), float64.

    ``mean_v = (1 / num_rows) sum_{u: (u, v) a pair} |N(u)|^-1/2`` (repeated
    pairs once), in O(nnz): the centre of the implicit columns, so that a row
    with no pairs can be given the average row (``x = 0`` after centring).
    """
    _, cols, values = implicit_entries(index, other_index, num_rows, num_other)
    return _column_mean(cols, values, num_rows, num_other)


def _column_mean(cols: np.ndarray, values: np.ndarray, num_rows: int, num_other: int) -> np.ndarray:
    return np.bincount(cols, weights=values, minlength=num_other) / max(num_rows, 1)


def with_empty_entries(x: FeatureRows, count: int) -> FeatureRows:
    """``x`` with ``count`` more entries of ``N``, each 0 (at the last row, column 0): the same matrix.

    For array shapes that match another data set's (the tuning's sub-train
    rows padded to the refit's, one compiled loop for both). The rows stay
    sorted.
    """
    if count <= 0 or x.centre.shape[0] == 0:
        return x
    last = max(x.side.shape[0] - 1, 0)

    def appended(field, value):  # on the host: an eager jnp.concatenate compiles a program per field
        return jnp.asarray(np.concatenate([np.asarray(field), np.full(count, value, field.dtype)]))

    return x._replace(rows=appended(x.rows, last), cols=appended(x.cols, 0), values=appended(x.values, 0))


def implicit_rows(index, other_index, num_rows: int, num_other: int, side=None, dtype=jnp.float32) -> FeatureRows:
    """:class:`FeatureRows` of implicit feedback from the training pairs, centred on the training rows.

    ``N`` has ``|N(u)|^-1/2`` at the columns row ``u`` has a pair with
    (repeated pairs once); ``c`` is its column mean over all ``num_rows``
    rows, so a row with no pairs sits at ``-c`` and the average row at 0.

    Parameters
    ----------
    index, other_index : int arrays, shape (nnz,)
        Row and column of each training pair.
    num_rows, num_other : int
    side : array, shape (num_rows, F_s), optional
        Side features in front of the implicit columns.
    dtype

    Returns
    -------
    FeatureRows
    """
    rows, cols, values = implicit_entries(index, other_index, num_rows, num_other)
    centre = _column_mean(cols, values, num_rows, num_other)
    side = np.zeros((num_rows, 0)) if side is None else np.asarray(side, np.float64)
    return FeatureRows(
        side=jnp.asarray(side, dtype),
        rows=jnp.asarray(rows, jnp.int32),
        cols=jnp.asarray(cols, jnp.int32),
        values=jnp.asarray(values, dtype),
        centre=jnp.asarray(centre, dtype),
    )


def _side_pairs(train, side: str) -> tuple:
    """``(index, other_index, num_rows, num_other)`` of a Ratings' ``side`` (``"user"`` or ``"item"``)."""
    own, other = (train.user_index, train.item_index) if side == "user" else (train.item_index, train.user_index)
    sizes = (train.num_users, train.num_items) if side == "user" else (train.num_items, train.num_users)
    return own, other, *sizes


def training_implicit_rows(train, side: str, dtype=jnp.float32) -> FeatureRows:
    """:func:`implicit_rows` of a :class:`bayesmf.data.Ratings`' ``side`` (``"user"`` or ``"item"``), no side columns."""
    return implicit_rows(*_side_pairs(train, side), dtype=dtype)


def training_implicit_mean(train, side: str) -> np.ndarray:
    """The centre of :func:`training_implicit_rows` (:func:`implicit_mean`), float64 on the host, without
    the rows themselves."""
    return implicit_mean(*_side_pairs(train, side))
