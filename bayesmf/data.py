"""Ratings, id vocabularies, rating scales and the MovieLens readers.

A :class:`Ratings` holds one rating per (user, movie) pair as three parallel
arrays of length ``nnz``: contiguous ``user_index`` and ``item_index``
(0 .. num_users - 1, 0 .. num_items - 1) and the ``rating`` itself, plus the
two :class:`Vocabulary` objects that map those indices back to the external
ids of the data set (all integers or all strings) and the
:class:`RatingScale` the ratings live on. Everything that builds one checks
its input and raises ``ValueError`` naming the problem.

Readers (pandas) cover the MovieLens layouts:

========================  ==================================================
``u.data``, ``uN.base``   ml-100k: tab-separated ``user item rating time``
``ratings.dat``           ml-1m / ml-10m: ``user::item::rating::time``
``ratings.csv``           ml-latest(-small), ml-20m, ml-25m, ml-32m: header
                          ``userId,movieId,rating,timestamp``, half stars
any ``.csv``              a header naming user, item and rating columns
========================  ==================================================

MovieLens belongs to GroupLens and must not be shipped with bayesmf: the
data is found at run time under :func:`data_home` (``$BAYESMF_DATA`` or
``~/.cache/bayesmf``) and, on request, downloaded from GroupLens with its
checksum verified.

>>> from bayesmf.data import Ratings
>>> r = Ratings.from_arrays([10, 10, 20], ["a", "b", "a"], [4.0, 3.0, 5.0])
>>> r.num_users, r.num_items, r.nnz
(2, 2, 3)
>>> r.item_vocab.index(["b", "a"]).tolist()
[1, 0]
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import os
import re
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "ARCHIVE_CHECKSUMS",
    "CHECKSUMS",
    "DATASETS",
    "RatingScale",
    "Ratings",
    "Vocabulary",
    "data_home",
    "find_dataset",
    "load_movielens",
    "load_titles",
    "read_dataset_dir",
    "read_item_ratings",
    "read_ratings",
    "verify_checksums",
]

# How many offending values or rows an error message lists.
_EXAMPLES = 5


def _examples(values) -> list:
    return np.asarray(values)[:_EXAMPLES].tolist()


# --- ids ------------------------------------------------------------------------------------


def _as_array(values) -> np.ndarray:
    """``np.asarray``, except that a flat list keeps each element's type.

    ``np.asarray([7, "a"])`` would silently turn 7 into "7".
    """
    if isinstance(values, (pd.Series, pd.Index)):
        return values.to_numpy()
    if isinstance(values, (list, tuple)) and values and all(np.ndim(v) == 0 for v in values[:1000]):
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        inferred = pd.api.types.infer_dtype(arr, skipna=False)
        if inferred == "integer":
            return arr.astype(np.int64)
        if inferred == "floating":
            return arr.astype(np.float64)
        if inferred == "boolean":
            return arr.astype(bool)
        return arr
    return np.asarray(values)


def _normalize_ids(values, what: str = "ids") -> np.ndarray:
    """External ids as a 1-D int64 array or an object array of ``str``.

    Integer-valued floats (as pandas makes of an id column with gaps) become
    integers; anything else that is neither all integers nor all strings is
    a ``ValueError``.
    """
    arr = _as_array(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1) if arr.ndim == 0 else arr
        if arr.ndim != 1:
            raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    kind = arr.dtype.kind
    if arr.size == 0:
        return np.zeros(0, np.int64) if kind not in "OUS" else np.zeros(0, object)
    if kind in "iu":
        if kind == "u" and arr.dtype.itemsize == 8 and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{what} exceed the int64 range")
        return arr.astype(np.int64)
    if kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise ValueError(f"{bad.size} {what} are missing (NaN) or infinite, first at rows {_examples(bad)}")
        frac = arr != np.round(arr)
        if frac.any():
            bad = np.flatnonzero(frac)
            raise ValueError(
                f"{bad.size} {what} are not integers (e.g. {_examples(arr[bad])} at rows {_examples(bad)}); "
                "numeric ids must be whole numbers"
            )
        return arr.astype(np.int64)
    if kind == "U":
        return arr.astype(object)
    if kind == "S":
        return np.array([v.decode() for v in arr], dtype=object)
    if kind == "O":
        missing = pd.isna(arr)
        if missing.any():
            bad = np.flatnonzero(missing)
            raise ValueError(f"{bad.size} {what} are missing (None or NaN), first at rows {_examples(bad)}")
        inferred = pd.api.types.infer_dtype(arr, skipna=False)
        if inferred == "string":
            return arr.astype(object)
        if inferred == "integer":
            return _normalize_ids(arr.astype(np.int64), what)
        if inferred in ("floating", "mixed-integer-float"):
            return _normalize_ids(arr.astype(np.float64), what)
        if inferred in ("mixed", "mixed-integer"):
            types = sorted({type(v).__name__ for v in arr[:1000]})
            raise ValueError(f"{what} must be all integers or all strings, got a mix of {types}")
    if kind == "b":
        raise ValueError(f"{what} must be integers or strings, got booleans")
    raise ValueError(f"{what} must be integers or strings, got dtype {arr.dtype}")


class Vocabulary:
    """A bijection between external ids and contiguous indices ``0 .. n - 1``.

    Parameters
    ----------
    ids : array-like, shape (n,)
        Unique external ids, all integers or all strings; position ``k``
        gets index ``k``.

    Raises
    ------
    ValueError
        On duplicate ids, or ids that are neither all integers nor all strings.

    Examples
    --------
    >>> vocab, codes = Vocabulary.from_values([30, 10, 30, 20])
    >>> vocab.ids.tolist(), codes.tolist()
    ([10, 20, 30], [2, 0, 2, 1])
    >>> vocab.index([20, 99], missing="flag").tolist()
    [1, -1]
    >>> vocab.lookup([2, 0]).tolist()
    [30, 10]
    """

    __slots__ = ("_ids", "_index")

    def __init__(self, ids):
        arr = _normalize_ids(ids, "vocabulary ids").copy()
        index = pd.Index(arr, dtype=arr.dtype, copy=False)
        if not index.is_unique:
            dup = index[index.duplicated()].unique()
            raise ValueError(f"vocabulary ids must be unique; {dup.size} are repeated, e.g. {_examples(dup)}")
        arr.flags.writeable = False
        self._ids = arr
        self._index = index

    @classmethod
    def from_values(cls, values) -> tuple[Vocabulary, np.ndarray]:
        """Vocabulary of the sorted unique values and each value's index.

        Parameters
        ----------
        values : array-like, shape (n,)
            External ids, repeats allowed.

        Returns
        -------
        vocab : Vocabulary
        codes : int32 array, shape (n,)
            ``vocab.ids[codes] == values``.
        """
        arr = _normalize_ids(values, "ids")
        codes, uniques = pd.factorize(arr, sort=True)
        vocab = cls(np.asarray(uniques, dtype=arr.dtype))
        return vocab, codes.astype(np.int32)

    @property
    def ids(self) -> np.ndarray:
        """External ids in index order: int64 or object (str) array, shape (n,); read-only."""
        return self._ids

    def __len__(self) -> int:
        return self._ids.shape[0]

    def __contains__(self, external_id) -> bool:
        try:
            return bool(self.index([external_id], missing="flag")[0] >= 0)
        except (TypeError, ValueError):
            return False

    def __eq__(self, other) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._ids.dtype == other._ids.dtype and np.array_equal(self._ids, other._ids)

    __hash__ = None

    def __repr__(self) -> str:
        head = ", ".join(repr(v) for v in self._ids[:5].tolist())
        more = ", ..." if len(self) > 5 else ""
        return f"Vocabulary(n={len(self)}, ids=[{head}{more}])"

    @property
    def is_string(self) -> bool:
        """Whether the ids are strings (else integers)."""
        return self._ids.dtype == object

    def index(self, external_ids, missing: str = "raise") -> np.ndarray:
        """Indices of external ids (vectorised hash lookup).

        Parameters
        ----------
        external_ids : array-like, shape (...)
            Ids of the vocabulary's type; NumPy and Python integers are
            interchangeable, but the string ``"5"`` is not the integer ``5``.
        missing : {"raise", "flag"}
            ``"raise"``: unknown ids raise ``KeyError``; ``"flag"``: they get -1.

        Returns
        -------
        int64 array, shape (...)
        """
        if missing not in ("raise", "flag"):
            raise ValueError(f"missing={missing!r}; expected 'raise' or 'flag'")
        if isinstance(external_ids, (pd.Series, pd.Index)):
            external_ids = external_ids.to_numpy()
        query = _as_array(external_ids)
        shape = query.shape
        flat = query.reshape(-1)
        if flat.dtype.kind == "U":
            flat = flat.astype(object)
        elif flat.dtype.kind == "b":
            flat = flat.astype(object)  # True is not the id 1
        if flat.size == 0:
            return np.zeros(shape, np.int64)
        out = self._index.get_indexer(flat).astype(np.int64)
        if flat.dtype == object and not self.is_string:
            # pandas may match the Python bool True to the integer 1; ids must match in type.
            is_bool = np.fromiter((isinstance(v, (bool, np.bool_)) for v in flat), bool, flat.size)
            out[is_bool] = -1
        if missing == "raise":
            unknown = out < 0
            if unknown.any():
                bad = flat[unknown]
                kind = "strings" if self.is_string else "integers"
                raise KeyError(
                    f"{int(unknown.sum())} of {flat.size} ids are not in the vocabulary (its ids are {kind}), "
                    f"e.g. {_examples(bad)}; pass missing='flag' to get -1 for them"
                )
        return out.reshape(shape)

    def lookup(self, indices) -> np.ndarray:
        """External ids of indices.

        Parameters
        ----------
        indices : int array-like, shape (...)
            Values in ``0 .. len(self) - 1``.

        Returns
        -------
        array, shape (...)
            int64 or object (str), like :attr:`ids`.
        """
        idx = np.asarray(indices)
        if idx.size and idx.dtype.kind not in "iu":
            raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            bad = idx[(idx < 0) | (idx >= len(self))]
            raise IndexError(f"{bad.size} indices are outside 0..{len(self) - 1}, e.g. {_examples(bad.reshape(-1))}")
        return self._ids[idx.astype(np.intp)]

    def union(self, other: Vocabulary) -> Vocabulary:
        """This vocabulary followed by the ids of ``other`` it lacks (indices of ``self`` unchanged)."""
        if len(self) and len(other) and self.is_string != other.is_string:
            raise ValueError("cannot join a vocabulary of integer ids with one of string ids")
        new = other.ids[self.index(other.ids, missing="flag") < 0]
        if not new.size:
            return self
        dtype = self._ids.dtype if len(self) else other.ids.dtype
        return Vocabulary(np.concatenate([self._ids, new]).astype(dtype))


# --- rating scale ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RatingScale:
    """The interval, and optionally the grid, that ratings live on.

    Parameters
    ----------
    low, high : float
        Smallest and largest possible rating.
    step : float or None
        Ratings are ``low + k * step`` (MovieLens: 1 or 0.5); ``None`` for a
        continuous scale.

    Examples
    --------
    >>> RatingScale.infer([1, 3, 5, 4])
    RatingScale(low=1.0, high=5.0, step=1.0)
    >>> RatingScale.infer([0.5, 3.5, 5.0])
    RatingScale(low=0.5, high=5.0, step=0.5)
    """

    low: float
    high: float
    step: float | None = None

    # Ratings this close to the interval or the grid count as on it (float32 storage).
    TOLERANCE = 1e-6

    def __post_init__(self):
        low, high = float(self.low), float(self.high)
        step = None if self.step is None else float(self.step)
        if not (np.isfinite(low) and np.isfinite(high)) or low > high:
            raise ValueError(f"a rating scale needs finite low <= high, got low={self.low}, high={self.high}")
        if step is not None and not (np.isfinite(step) and step > 0):
            raise ValueError(f"the scale's step must be positive or None, got {self.step}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "step", step)

    @classmethod
    def infer(cls, values) -> RatingScale:
        """The scale the values look like they come from.

        * all integers: ``(1, 5, 1)`` when they lie in 1..5 (the usual star
          scale, also for a subset that lacks some stars), else
          ``(min, max, 1)``;
        * multiples of 0.5, not all integers: ``(min(0.5, min), max(5, max), 0.5)``
          (the MovieLens half-star scale, also for a subset without 5s);
        * otherwise continuous: ``(min, max, None)``.

        Parameters
        ----------
        values : float array-like, shape (n,)
            Finite, non-empty.
        """
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.size == 0:
            raise ValueError("cannot infer a rating scale from no ratings")
        if not np.all(np.isfinite(v)):
            raise ValueError("cannot infer a rating scale from NaN or infinite ratings")
        lo, hi = float(v.min()), float(v.max())
        if np.all(v == np.round(v)):
            if lo >= 1.0 and hi <= 5.0:
                return cls(1.0, 5.0, 1.0)
            return cls(lo, hi, 1.0)
        if np.all(2.0 * v == np.round(2.0 * v)):
            return cls(min(0.5, lo), max(5.0, hi), 0.5)
        return cls(lo, hi, None)

    def _invalid(self, v: np.ndarray) -> np.ndarray:
        tol = self.TOLERANCE
        bad = ~((v >= self.low - tol) & (v <= self.high + tol))  # NaN is invalid too
        if self.step is not None:
            k = (v - self.low) / self.step
            bad |= np.abs(k - np.round(k)) > tol
        return bad

    def validate(self, values) -> None:
        """Raise ``ValueError`` if any rating is off the scale.

        Parameters
        ----------
        values : float array-like, shape (n,)
        """
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        bad = self._invalid(v)
        if bad.any():
            rows = np.flatnonzero(bad)
            grid = "" if self.step is None else f" in steps of {self.step:g}"
            raise ValueError(
                f"{rows.size} ratings are outside the rating scale [{self.low:g}, {self.high:g}]{grid}, "
                f"e.g. {_examples(v[rows])} at rows {_examples(rows)}"
            )

    def contains(self, values) -> np.ndarray:
        """Whether each rating is on the scale: bool array, shape (n,)."""
        return ~self._invalid(np.asarray(values, dtype=np.float64))

    def clip(self, values):
        """Values clipped to ``[low, high]`` (same type and shape; JAX arrays stay JAX arrays)."""
        if hasattr(values, "clip") and not isinstance(values, (list, tuple)):
            return values.clip(self.low, self.high)
        return np.clip(np.asarray(values, dtype=np.float64), self.low, self.high)


# --- ratings ---------------------------------------------------------------------------------------

_DUPLICATE_POLICIES = ("error", "mean", "first", "last")


def _pair_keys(user_index: np.ndarray, item_index: np.ndarray, num_items: int) -> np.ndarray:
    return user_index.astype(np.int64) * max(int(num_items), 1) + item_index.astype(np.int64)


def _duplicate_error(keys, user_ids, item_ids) -> ValueError:
    dup = pd.Index(keys).duplicated(keep="first")
    first = int(np.flatnonzero(dup)[0])
    rows = np.flatnonzero(keys == keys[first])[:_EXAMPLES]
    user, item = user_ids[first : first + 1].tolist()[0], item_ids[first : first + 1].tolist()[0]
    return ValueError(
        f"{int(dup.sum())} duplicate (user, item) pairs, e.g. user {user!r} and item {item!r} at rows "
        f"{rows.tolist()}; pass duplicates='mean', 'first' or 'last' to keep one "
        "rating per pair"
    )


@dataclass(frozen=True, eq=False)
class Ratings:
    """Explicit ratings: one per (user, item) pair, with id vocabularies and a scale.

    Build one with :meth:`from_arrays`, :meth:`from_dataframe` or a reader
    (:func:`read_ratings`, :func:`load_movielens`); the constructor only
    coerces dtypes and checks shapes and index ranges.

    Attributes
    ----------
    user_index : int32 array, shape (nnz,)
        Row of each rating's user in ``user_vocab``.
    item_index : int32 array, shape (nnz,)
        Row of each rating's item in ``item_vocab``.
    rating : float32 array, shape (nnz,)
    user_vocab, item_vocab : Vocabulary
        May hold ids with no rating here (after ``subset(compact=False)``).
    scale : RatingScale
    timestamp : int64 array, shape (nnz,), or None
        Seconds since the epoch, when the source has them.

    Examples
    --------
    >>> r = Ratings.from_arrays([1, 1, 2], [10, 20, 10], [4.0, 3.0, 5.0])
    >>> r.user_degrees().tolist(), r.item_means().tolist()
    ([2, 1], [4.5, 3.0])
    """

    user_index: np.ndarray
    item_index: np.ndarray
    rating: np.ndarray
    user_vocab: Vocabulary
    item_vocab: Vocabulary
    scale: RatingScale
    timestamp: np.ndarray | None = None

    def __post_init__(self):
        u = np.asarray(self.user_index).astype(np.int32, copy=False).reshape(-1)
        i = np.asarray(self.item_index).astype(np.int32, copy=False).reshape(-1)
        r = np.asarray(self.rating).astype(np.float32, copy=False).reshape(-1)
        t = None if self.timestamp is None else np.asarray(self.timestamp).astype(np.int64, copy=False).reshape(-1)
        lengths = [u.size, i.size, r.size] + ([] if t is None else [t.size])
        if len(set(lengths)) != 1:
            raise ValueError(f"user_index, item_index, rating (and timestamp) must have one length, got {lengths}")
        if not isinstance(self.user_vocab, Vocabulary) or not isinstance(self.item_vocab, Vocabulary):
            raise TypeError("user_vocab and item_vocab must be Vocabulary objects")
        if not isinstance(self.scale, RatingScale):
            raise TypeError(f"scale must be a RatingScale, got {type(self.scale).__name__}")
        for name, idx, n in (("user_index", u, len(self.user_vocab)), ("item_index", i, len(self.item_vocab))):
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"{name} has values outside 0..{n - 1} (the vocabulary has {n} ids)")
        object.__setattr__(self, "user_index", u)
        object.__setattr__(self, "item_index", i)
        object.__setattr__(self, "rating", r)
        object.__setattr__(self, "timestamp", t)

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_arrays(
        cls,
        users,
        items,
        ratings,
        timestamps=None,
        *,
        scale: RatingScale | None = None,
        duplicates: str = "error",
        user_vocab: Vocabulary | None = None,
        item_vocab: Vocabulary | None = None,
    ) -> Ratings:
        """Ratings from parallel arrays of external ids, checked.

        Parameters
        ----------
        users, items : array-like, shape (nnz,)
            External ids: non-negative integers or strings.
        ratings : float array-like, shape (nnz,)
        timestamps : int array-like, shape (nnz,), optional
        scale : RatingScale, optional
            Inferred with :meth:`RatingScale.infer` when not given.
        duplicates : {"error", "mean", "first", "last"}
            What to do with repeated (user, item) pairs: raise, or keep one
            row per pair (at its first position) with the mean rating (and
            the latest timestamp), the first or the last rating. Means may
            fall between the steps of the scale.
        user_vocab, item_vocab : Vocabulary, optional
            Fixed vocabularies (ids not in them are an error); by default the
            sorted unique ids of the data.

        Raises
        ------
        ValueError
            Mismatched lengths, no ratings, NaN or infinite ratings, ratings
            off the scale, negative or non-integer numeric ids, ids missing
            from a given vocabulary, or duplicate pairs with
            ``duplicates="error"``.
        """
        if duplicates not in _DUPLICATE_POLICIES:
            raise ValueError(f"duplicates={duplicates!r}; expected one of {_DUPLICATE_POLICIES}")
        arrays = {"users": users, "items": items, "ratings": ratings}
        if timestamps is not None:
            arrays["timestamps"] = timestamps
        arrays = {k: _as_array(v) for k, v in arrays.items()}
        for k, v in arrays.items():
            if v.ndim != 1:
                raise ValueError(f"{k} must be 1-D, got shape {v.shape}")
        lengths = {k: v.shape[0] for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            listed = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise ValueError(f"users, items, ratings and timestamps must have one length, got {listed}")
        if lengths["users"] == 0:
            raise ValueError("no ratings: users, items and ratings are empty")
        try:
            r = arrays["ratings"].astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"ratings must be numbers, got dtype {arrays['ratings'].dtype}") from None
        finite = np.isfinite(r)
        if not finite.all():
            rows = np.flatnonzero(~finite)
            raise ValueError(f"{rows.size} ratings are NaN or infinite, first at rows {_examples(rows)}")
        t = None
        if timestamps is not None:
            t = _as_timestamps(arrays["timestamps"])
        user_index, user_vocab = _encode(arrays["users"], user_vocab, "user")
        item_index, item_vocab = _encode(arrays["items"], item_vocab, "item")
        if scale is None:
            scale = RatingScale.infer(r)
        elif not isinstance(scale, RatingScale):
            raise TypeError(f"scale must be a RatingScale, got {type(scale).__name__}")
        scale.validate(r)
        keys = _pair_keys(user_index, item_index, len(item_vocab))
        dup = pd.Index(keys).duplicated(keep="first")
        if dup.any():
            if duplicates == "error":
                raise _duplicate_error(keys, user_vocab.ids[user_index], item_vocab.ids[item_index])
            user_index, item_index, r, t = _dedupe(keys, user_index, item_index, r, t, duplicates)
        return cls(user_index, item_index, r, user_vocab, item_vocab, scale, t)

    @classmethod
    def from_dataframe(
        cls, df: pd.DataFrame, user: str = "user", item: str = "item", rating: str = "rating",
        timestamp: str | None = None, **kw,
    ) -> Ratings:
        """Ratings from DataFrame columns (see :meth:`from_arrays` for ``kw``).

        Parameters
        ----------
        df : pandas.DataFrame, nnz rows
        user, item, rating, timestamp : str
            Column names; ``timestamp=None`` ignores time.
        """
        wanted = [c for c in (user, item, rating, timestamp) if c is not None]
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            raise ValueError(f"the DataFrame has no column(s) {missing}; its columns are {list(df.columns)}")
        return cls.from_arrays(
            df[user], df[item], df[rating], None if timestamp is None else df[timestamp], **kw
        )

    def to_dataframe(self) -> pd.DataFrame:
        """Columns ``user, item, rating[, timestamp]`` in external ids, one row per rating."""
        out = {
            "user": self.user_ids,
            "item": self.item_ids,
            "rating": self.rating.astype(np.float64),
        }
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp
        return pd.DataFrame(out)

    # -- sizes and views -------------------------------------------------------------------------------

    @property
    def num_users(self) -> int:
        return len(self.user_vocab)

    @property
    def num_items(self) -> int:
        return len(self.item_vocab)

    @property
    def nnz(self) -> int:
        return int(self.rating.shape[0])

    def __len__(self) -> int:
        return self.nnz

    @property
    def user_ids(self) -> np.ndarray:
        """External user id of each rating, shape (nnz,)."""
        return self.user_vocab.ids[self.user_index]

    @property
    def item_ids(self) -> np.ndarray:
        """External item id of each rating, shape (nnz,)."""
        return self.item_vocab.ids[self.item_index]

    @property
    def global_mean(self) -> float:
        """Mean rating (NaN for no ratings)."""
        return float(np.mean(self.rating, dtype=np.float64)) if self.nnz else float("nan")

    def __repr__(self) -> str:
        time = ", timestamps" if self.timestamp is not None else ""
        return (
            f"Ratings(nnz={self.nnz}, num_users={self.num_users}, num_items={self.num_items}, "
            f"scale={self.scale}{time})"
        )

    def __eq__(self, other) -> bool:
        if not isinstance(other, Ratings):
            return NotImplemented
        same_time = (self.timestamp is None) == (other.timestamp is None) and (
            self.timestamp is None or np.array_equal(self.timestamp, other.timestamp)
        )
        return (
            self.user_vocab == other.user_vocab
            and self.item_vocab == other.item_vocab
            and self.scale == other.scale
            and np.array_equal(self.user_index, other.user_index)
            and np.array_equal(self.item_index, other.item_index)
            and np.array_equal(self.rating, other.rating)
            and same_time
        )

    __hash__ = None

    # -- derived ---------------------------------------------------------------------------------------

    def subset(self, rows, compact: bool = True) -> Ratings:
        """Some of the ratings.

        Parameters
        ----------
        rows : bool array, shape (nnz,), or int array, shape (m,)
            A mask or row positions (in the order wanted).
        compact : bool
            Restrict the vocabularies to the ids present in the subset (in
            their original order, indices renumbered); else keep them.
        """
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (self.nnz,):
                raise ValueError(f"a row mask must have shape ({self.nnz},), got {rows.shape}")
            rows = np.flatnonzero(rows)
        elif rows.size == 0:
            rows = np.zeros(0, np.int64)
        elif rows.dtype.kind not in "iu":
            raise TypeError(f"rows must be a bool mask or integer positions, got dtype {rows.dtype}")
        elif rows.min() < -self.nnz or rows.max() >= self.nnz:
            raise IndexError(f"row positions must be in 0..{self.nnz - 1}")
        u, i, r = self.user_index[rows], self.item_index[rows], self.rating[rows]
        t = None if self.timestamp is None else self.timestamp[rows]
        user_vocab, item_vocab = self.user_vocab, self.item_vocab
        if compact:
            u, user_vocab = _compact(u, user_vocab)
            i, item_vocab = _compact(i, item_vocab)
        return Ratings(u, i, r, user_vocab, item_vocab, self.scale, t)

    def concat(self, other: Ratings) -> Ratings:
        """These ratings followed by ``other``'s, over the union of the vocabularies.

        Indices of ``self`` are unchanged; ids only in ``other`` are appended.
        The scale is the common one (or the span of both). Raises
        ``ValueError`` on a (user, item) pair present in both.
        """
        if not isinstance(other, Ratings):
            raise TypeError(f"can only concat Ratings, got {type(other).__name__}")
        user_vocab = self.user_vocab.union(other.user_vocab)
        item_vocab = self.item_vocab.union(other.item_vocab)
        u = np.concatenate([self.user_index, user_vocab.index(other.user_ids)])
        i = np.concatenate([self.item_index, item_vocab.index(other.item_ids)])
        r = np.concatenate([self.rating, other.rating])
        t = None
        if self.timestamp is not None and other.timestamp is not None:
            t = np.concatenate([self.timestamp, other.timestamp])
        scale = self.scale
        if other.scale != scale:
            step = scale.step if scale.step == other.scale.step else None
            scale = RatingScale(min(scale.low, other.scale.low), max(scale.high, other.scale.high), step)
        keys = _pair_keys(u, i, len(item_vocab))
        if pd.Index(keys).duplicated().any():
            raise _duplicate_error(keys, user_vocab.ids[u], item_vocab.ids[i])
        return Ratings(u, i, r, user_vocab, item_vocab, scale, t)

    def user_degrees(self) -> np.ndarray:
        """Number of ratings per user: int64 array, shape (num_users,)."""
        return np.bincount(self.user_index, minlength=self.num_users).astype(np.int64)

    def item_degrees(self) -> np.ndarray:
        """Number of ratings per item: int64 array, shape (num_items,)."""
        return np.bincount(self.item_index, minlength=self.num_items).astype(np.int64)

    def item_means(self) -> np.ndarray:
        """Mean rating per item, the global mean where an item has none: float64 array, shape (num_items,)."""
        sums = np.bincount(self.item_index, weights=self.rating.astype(np.float64), minlength=self.num_items)
        degree = self.item_degrees()
        return np.where(degree > 0, sums / np.maximum(degree, 1), self.global_mean)


def _as_timestamps(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "M":
        return values.astype("datetime64[s]").astype(np.int64)
    try:
        t = values.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"timestamps must be integers (seconds), got dtype {values.dtype}") from None
    bad = ~np.isfinite(t) | (t != np.round(t))
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"{rows.size} timestamps are missing or not whole seconds, first at rows {_examples(rows)}")
    return values.astype(np.int64)


def _encode(values: np.ndarray, vocab: Vocabulary | None, what: str) -> tuple[np.ndarray, Vocabulary]:
    ids = _normalize_ids(values, f"{what} ids")
    if ids.dtype != object and ids.size and ids.min() < 0:
        rows = np.flatnonzero(ids < 0)
        raise ValueError(
            f"{rows.size} {what} ids are negative (e.g. {_examples(ids[rows])} at rows {_examples(rows)}); "
            "numeric ids must be non-negative integers"
        )
    if vocab is None:
        vocab, codes = Vocabulary.from_values(ids)
        return codes, vocab
    codes = vocab.index(ids, missing="flag")
    if (codes < 0).any():
        rows = np.flatnonzero(codes < 0)
        raise ValueError(
            f"{rows.size} {what} ids are not in the given {what}_vocab, e.g. {_examples(ids[rows])} "
            f"at rows {_examples(rows)}"
        )
    return codes.astype(np.int32), vocab


def _dedupe(keys, u, i, r, t, policy: str):
    frame = pd.DataFrame({"key": keys, "r": r})
    if policy in ("first", "last"):
        keep = np.flatnonzero(~pd.Index(keys).duplicated(keep=policy))
        return u[keep], i[keep], r[keep], None if t is None else t[keep]
    keep = np.flatnonzero(~pd.Index(keys).duplicated(keep="first"))
    groups = frame.groupby("key", sort=False)
    mean = groups["r"].transform("mean").to_numpy()
    t_out = None
    if t is not None:
        t_out = pd.Series(t).groupby(keys, sort=False).transform("max").to_numpy()[keep]
    return u[keep], i[keep], mean[keep], t_out


def _compact(index: np.ndarray, vocab: Vocabulary) -> tuple[np.ndarray, Vocabulary]:
    used = np.zeros(len(vocab), bool)
    used[index] = True
    if used.all():
        return index, vocab
    remap = np.cumsum(used) - 1
    return remap[index].astype(np.int32), Vocabulary(vocab.ids[used])


# --- readers ----------------------------------------------------------------------------------------

FORMATS = ("auto", "tab", "dat", "csv")

# Accepted column names (lower case) of a generic ratings CSV, in order of preference.
USER_COLUMNS = ("user", "userid", "user_id", "users")
ITEM_COLUMNS = ("item", "movieid", "item_id", "movie", "movie_id", "itemid", "items")
RATING_COLUMNS = ("rating", "ratings", "score")
TIMESTAMP_COLUMNS = ("timestamp", "time", "ts")

_EXPECTED = (
    "tab-separated 'user item rating timestamp' (ml-100k u.data, uN.base, uN.test), "
    "'user::item::rating::timestamp' (ml-1m / ml-10m ratings.dat), or a CSV whose header names user, item "
    "and rating columns (e.g. MovieLens 'userId,movieId,rating,timestamp')"
)


def _first_line(path: Path) -> tuple[str, int]:
    """The first non-blank line of a file and its 1-based number."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not head:
        raise ValueError(f"{path}: the file is empty; expected {_EXPECTED}")
    if head.startswith(b"PK\x03\x04"):
        raise ValueError(f"{path} is a zip archive; extract it first (or use find_dataset / load_movielens)")
    if b"\x00" in head:
        raise ValueError(f"{path} is a binary file; expected {_EXPECTED}")
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            return line, number
    raise ValueError(f"{path}: the file has no data; expected {_EXPECTED}")


def _sniff_format(path: Path, line: str) -> str:
    if "::" in line:
        return "dat"
    if "\t" in line:
        return "tab"
    if "," in line:
        return "csv"
    raise ValueError(f"{path}: unrecognised ratings format (first line {line[:80]!r}); expected {_EXPECTED}")


def _is_number(text: str) -> bool:
    try:
        float(text.strip().strip('"'))
    except ValueError:
        return False
    return True


def _line_text(path: Path, number: int) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        line = next(itertools.islice(f, number - 1, None), "")
    return line.rstrip("\r\n")


def _read_table(path: Path, sep: str, header: bool, num_fields: int, description: str) -> pd.DataFrame:
    """Parse with pandas; a line with too many fields is a ``ValueError`` naming it."""
    kw = dict(sep=sep, index_col=False, skip_blank_lines=False, encoding="utf-8", encoding_errors="replace")
    if header:
        kw["header"] = 0
    else:
        kw.update(header=None, names=list(range(num_fields)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, **kw)
    except pd.errors.ParserError as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if match:
            line = int(match.group(2))
            raise ValueError(
                f"{path}: line {line} has more fields than line 1 ({_line_text(path, line)!r}); "
                f"expected {description}"
            ) from None
        raise ValueError(f"{path}: cannot parse ({exc}); expected {description}") from None
    except pd.errors.ParserWarning as exc:
        raise ValueError(f"{path}: {exc}; expected {description}") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file has no data; expected {description}") from None


def _check_complete(path: Path, frame: pd.DataFrame, columns: list, first_line: int, description: str,
                    optional=()) -> pd.DataFrame:
    """Drop blank lines; a row with a missing field is a ``ValueError`` naming its line."""
    blank = frame.isna().all(axis=1).to_numpy()
    lines = np.arange(frame.shape[0]) + first_line
    frame, lines = frame.loc[~blank], lines[~blank]
    required = [c for c in columns if c not in optional]
    for c in optional:
        if c in frame.columns and frame[c].notna().any():
            required.append(c)  # a column given on some lines must be on all
    missing = frame[required].isna().any(axis=1).to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        line = int(lines[row])
        raise ValueError(
            f"{path}: line {line} is truncated or has an empty field ({_line_text(path, line)!r}); "
            f"expected {description}"
        )
    if frame.shape[0] == 0:
        raise ValueError(f"{path}: the file has no ratings; expected {description}")
    frame = frame.reset_index(drop=True)
    frame.attrs["lines"] = lines
    return frame


def _numeric_column(path: Path, frame: pd.DataFrame, column, what: str, ids: bool) -> np.ndarray:
    """A column as numbers (or, for ids, as strings when no value is numeric)."""
    series = frame[column]
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        return series.to_numpy()
    text = series.astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    bad = numbers.isna().to_numpy()
    if ids and bad.all():
        return text.to_numpy(dtype=object)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        line = int(frame.attrs["lines"][row])
        raise ValueError(f"{path}: line {line}: {what} {text.iloc[row]!r} is not a number")
    return numbers.to_numpy()


def _pick_column(columns, accepted, what: str, path: Path, required: bool = True):
    lowered = {str(c).strip().lower(): c for c in columns}
    for name in accepted:
        if name in lowered:
            return lowered[name]
    if required:
        raise ValueError(
            f"{path}: no {what} column; the header has {list(columns)}, accepted names are {list(accepted)} "
            "(any case)"
        )
    return None


def read_ratings(path, format: str = "auto", scale: RatingScale | None = None) -> Ratings:
    """Read a ratings file in a MovieLens format or a generic CSV.

    Parameters
    ----------
    path : str or Path
    format : {"auto", "tab", "dat", "csv"}
        ``"tab"``: ml-100k ``u.data`` / ``uN.base`` / ``uN.test``
        (``user item rating timestamp``, no header); ``"dat"``: ml-1m /
        ml-10m ``ratings.dat`` (``user::item::rating::timestamp``);
        ``"csv"``: a header naming user (user, userId, user_id), item (item,
        movieId, item_id, movie) and rating columns, optionally timestamp,
        LF or CRLF; a CSV without a header is read as
        ``user,item,rating[,timestamp]``. ``"auto"`` looks at the first line.
    scale : RatingScale, optional
        Inferred from the ratings when not given.

    Returns
    -------
    Ratings
        Integer ids for the MovieLens formats; a CSV's non-numeric ids stay strings.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        An unknown format, a line with a missing or extra field, a
        non-numeric rating, or bad ratings (see :meth:`Ratings.from_arrays`).

    Examples
    --------
    >>> ratings = read_ratings("ml-100k/u1.base")  # doctest: +SKIP
    """
    path = Path(path).expanduser()
    if format not in FORMATS:
        raise ValueError(f"format={format!r}; expected one of {FORMATS}")
    if not path.exists():
        raise FileNotFoundError(f"no ratings file at {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; use read_dataset_dir for a MovieLens directory")
    line, first = _first_line(path)
    if format == "auto":
        format = _sniff_format(path, line)
    if format == "dat":
        fields = line.split(":")
        description = "'user::item::rating[::timestamp]' on every line"
        if len(fields) not in (5, 7) or any(f != "" for f in fields[1::2]):
            raise ValueError(f"{path}: line {first} ({line[:80]!r}) is not {description}")
        frame = _read_table(path, ":", False, len(fields), description)
        if frame.shape[1] > 1 and frame[list(range(1, frame.shape[1], 2))].notna().any(axis=None):
            bad = int(np.flatnonzero(frame[list(range(1, frame.shape[1], 2))].notna().any(axis=1).to_numpy())[0])
            raise ValueError(
                f"{path}: line {bad + 1} ({_line_text(path, bad + 1)!r}) is not {description}"
            )
        frame = frame[list(range(0, frame.shape[1], 2))]
        frame.columns = ["user", "item", "rating", "timestamp"][: frame.shape[1]]
        header = False
    else:
        sep = "\t" if format == "tab" else ","
        fields = line.split(sep)
        header = not _is_number(fields[0])
        if header:
            frame = _read_table(path, sep, True, len(fields), "a header naming user, item and rating columns")
            user_col = _pick_column(frame.columns, USER_COLUMNS, "user", path)
            item_col = _pick_column(frame.columns, ITEM_COLUMNS, "item", path)
            rating_col = _pick_column(frame.columns, RATING_COLUMNS, "rating", path)
            time_col = _pick_column(frame.columns, TIMESTAMP_COLUMNS, "timestamp", path, required=False)
            picked = [user_col, item_col, rating_col] + ([time_col] if time_col is not None else [])
            frame = frame[picked]
            frame.columns = ["user", "item", "rating", "timestamp"][: len(picked)]
        else:
            description = f"'user{sep}item{sep}rating[{sep}timestamp]' on every line".replace("\t", "<TAB>")
            if len(fields) not in (3, 4):
                raise ValueError(
                    f"{path}: line {first} has {len(fields)} fields ({line[:80]!r}); expected {description}"
                )
            frame = _read_table(path, sep, False, len(fields), description)
            frame.columns = ["user", "item", "rating", "timestamp"][: len(fields)]
    description = {
        "dat": "'user::item::rating::timestamp'",
        "tab": "tab-separated 'user item rating timestamp'",
        "csv": "comma-separated user, item, rating[, timestamp]",
    }[format]
    frame = _check_complete(path, frame, list(frame.columns), 2 if header else 1, description, optional=("timestamp",))
    users = _numeric_column(path, frame, "user", "user id", ids=True)
    items = _numeric_column(path, frame, "item", "item id", ids=True)
    rating = _numeric_column(path, frame, "rating", "rating", ids=False)
    timestamp = None
    if "timestamp" in frame.columns and frame["timestamp"].notna().all():
        timestamp = _numeric_column(path, frame, "timestamp", "timestamp", ids=False)
    try:
        return Ratings.from_arrays(users, items, rating, timestamp, scale=scale)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def read_item_ratings(path, item_vocab: Vocabulary | None = None, scale: RatingScale | None = None):
    """One new user's ratings from a CSV with item and rating columns (for fold-in).

    Parameters
    ----------
    path : str or Path
        Header naming an item column (item, movieId, item_id, movie) and a
        rating column; other columns are ignored.
    item_vocab : Vocabulary, optional
        A model's movie vocabulary: ids are read as its type (integers or
        strings). Ids it lacks are kept (the fold-in decides what to do).
    scale : RatingScale, optional
        When given, every rating must lie on it.

    Returns
    -------
    item_ids : array, shape (n,)
    ratings : float64 array, shape (n,)
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no ratings file at {path}")
    line, _ = _first_line(path)
    sep = "\t" if "\t" in line and "," not in line else ","
    frame = _read_table(path, sep, True, len(line.split(sep)), "a header naming item and rating columns")
    item_col = _pick_column(frame.columns, ITEM_COLUMNS, "item", path)
    rating_col = _pick_column(frame.columns, RATING_COLUMNS, "rating", path)
    frame = frame[[item_col, rating_col]]
    frame.columns = ["item", "rating"]
    frame = _check_complete(path, frame, ["item", "rating"], 2, "item and rating on every line")
    rating = _numeric_column(path, frame, "rating", "rating", ids=False).astype(np.float64)
    if item_vocab is not None and item_vocab.is_string:
        items = frame["item"].astype(str).str.strip().to_numpy(dtype=object)
    else:
        items = _normalize_ids(_numeric_column(path, frame, "item", "item id", ids=item_vocab is None), "item ids")
    if not np.all(np.isfinite(rating)):
        raise ValueError(f"{path}: ratings must be finite")
    if scale is not None:
        try:
            scale.validate(rating)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return items, rating


# --- MovieLens data sets --------------------------------------------------------------------------

DATASETS = ("ml-100k", "ml-1m", "ml-10m", "ml-latest-small", "ml-20m", "ml-25m", "ml-32m")

# The ratings file that makes a copy of each data set usable.
_RATINGS_FILE = {
    "ml-100k": "u.data",
    "ml-1m": "ratings.dat",
    "ml-10m": "ratings.dat",
    "ml-latest-small": "ratings.csv",
    "ml-20m": "ratings.csv",
    "ml-25m": "ratings.csv",
    "ml-32m": "ratings.csv",
}

DOWNLOAD_URL = "https://files.grouplens.org/datasets/movielens/{name}.zip"

# md5 of the files GroupLens released, as verified in shared/data/README.md.
CHECKSUMS: dict[str, dict[str, str]] = {
    "ml-100k": {
        "README": "364aae5a5037ed015864d55c04f1f476",
        "u.data": "6e47046882bad158b0efbb84cd5cb987",
        "u.genre": "a7578bdb37758741ae9429d2c736af18",
        "u.info": "6cae0afd8c0341aff31b631a192e57e6",
        "u.item": "c9e7f390115d79079537301d5204f3f7",
        "u.occupation": "035abaa2165f35cebce4b91e03481e0a",
        "u.user": "1b53539edc13caad0282c8500608a319",
        "u1.base": "4325f44281c9f8c119a3694662d63fc2",
        "u1.test": "62d5d837e7c8e36550cc956b09c2ecc8",
        "u2.base": "79541afecccbd5365bb2c09b123a01c7",
        "u2.test": "1951a71b7e1f4ed254508007fa2f6b70",
        "u3.base": "55c67a63f516fa9e593d68c3be779970",
        "u3.test": "cb3e4d0a9152041772285232ca002d4f",
        "u4.base": "66f64a75eeeffd20ff09533bcd31adcf",
        "u4.test": "328acfca94e85d01b1d7e92c7d73df3b",
        "u5.base": "0becb3392339231c08ba316944c79095",
        "u5.test": "bec898f7091dba3b7bdf793d1998d2d6",
        "ua.base": "346eb46a756be3b382bdef4f7dcf3a01",
        "ua.test": "52e5d0355092dc1596899855b220508f",
        "ub.base": "e4ce94f6e01e45f65b91a70bb9e8da2f",
        "ub.test": "5292d1e388d156aa0c19c384cdf35aca",
    },
    "ml-1m": {
        "README": "6a3f626147ec67b732a69beccae0aaa8",
        "movies.dat": "ef9fd9ff8d1b33faf73e2122c371e910",
        "users.dat": "681c0711d0d4548cd3d4718a49c2dcd8",
    },
}

# md5 of the official zip archives, where known.
ARCHIVE_CHECKSUMS: dict[str, str] = {
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
}


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown MovieLens data set {name!r}; known: {', '.join(DATASETS)}")


def verify_checksums(directory, name: str, files=None) -> list[str]:
    """Check the md5 of a data set's files against the published values.

    Parameters
    ----------
    directory : str or Path
    name : str
        One of :data:`DATASETS`; those without known checksums check nothing.
    files : list of str, optional
        Only these files (default: every file with a known checksum that
        is present).

    Returns
    -------
    list of str
        The files that were checked.

    Raises
    ------
    ValueError
        Naming the file, the expected and the actual md5, when they differ
        (a truncated, re-encoded or otherwise changed file).
    """
    _check_name(name)
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no directory at {directory}")
    known = CHECKSUMS.get(name, {})
    names = sorted(known) if files is None else [f for f in files if f in known]
    checked = []
    for filename in names:
        path = directory / filename
        if not path.is_file():
            continue
        actual = _md5(path)
        if actual != known[filename]:
            raise ValueError(
                f"checksum mismatch for {path}: expected md5 {known[filename]}, got {actual}; the file is "
                f"not the one GroupLens released for {name} (truncated or changed?)"
            )
        checked.append(filename)
    return checked


def data_home(data_home=None) -> Path:
    """Where MovieLens copies live: the argument, else ``$BAYESMF_DATA``, else ``~/.cache/bayesmf``."""
    if data_home is None:
        data_home = os.environ.get("BAYESMF_DATA") or Path("~") / ".cache" / "bayesmf"
    return Path(data_home).expanduser()


_resolve_home = data_home  # find_dataset's argument shadows the function


def _fetch(url: str, destination: Path) -> None:
    """Download ``url`` to ``destination`` (the one place that touches the network)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def _extract(archive: Path, into: Path) -> Path:
    """Unzip into ``into``; the data set's directory (the archive's single top folder, if any)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                target = (into / member).resolve()
                if not target.is_relative_to(into.resolve()):
                    raise ValueError(f"{archive}: member {member!r} would extract outside the target directory")
            zf.extractall(into)
    except zipfile.BadZipFile:
        raise ValueError(f"{archive} is not a valid zip archive") from None
    entries = [p for p in into.iterdir() if not p.name.startswith("__MACOSX")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return into


def find_dataset(name: str, data_home=None, download: bool = False) -> Path:
    """The directory of a MovieLens data set, ``<data_home>/<name>/``.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    data_home : str or Path, optional
        See :func:`data_home`.
    download : bool
        Fetch ``https://files.grouplens.org/datasets/movielens/<name>.zip``
        when the data set is missing: verify the archive's md5 where known,
        extract into a temporary directory beside the cache, verify the
        files' md5s, then rename it into place (atomic).

    Raises
    ------
    ValueError
        An unknown name, or a download whose checksum does not match.
    FileNotFoundError
        The data set is missing (or lacks its ratings file) and
        ``download`` is false.

    Examples
    --------
    >>> find_dataset("ml-100k")  # doctest: +SKIP
    PosixPath('/home/me/.cache/bayesmf/ml-100k')
    """
    _check_name(name)
    home = _resolve_home(data_home)
    target = home / name
    ratings_file = _RATINGS_FILE[name]
    url = DOWNLOAD_URL.format(name=name)
    if (target / ratings_file).is_file():
        return target
    if target.exists():
        raise FileNotFoundError(
            f"{target} exists but has no {ratings_file}: this copy of {name} is incomplete, so {name} is "
            f"unavailable; add a verified {ratings_file} there, or set BAYESMF_DATA (or pass data_home) to a "
            "directory without this incomplete copy and pass download=True"
        )
    if not download:
        raise FileNotFoundError(
            f"MovieLens {name} not found at {target}; set BAYESMF_DATA (or pass data_home) to a directory "
            f"holding {name}/, or pass download=True to fetch it from {url}"
        )
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home, prefix=f".{name}-download-") as tmp:
        archive = Path(tmp) / f"{name}.zip"
        _fetch(url, archive)
        expected = ARCHIVE_CHECKSUMS.get(name)
        if expected is not None:
            actual = _md5(archive)
            if actual != expected:
                raise ValueError(f"checksum mismatch for the downloaded {url}: expected md5 {expected}, got {actual}")
        extracted = Path(tmp) / "extracted"
        extracted.mkdir()
        root = _extract(archive, extracted)
        if not (root / ratings_file).is_file():
            raise ValueError(f"the archive from {url} has no {ratings_file}")
        verify_checksums(root, name)
        try:
            os.rename(root, target)
        except OSError:
            if not (target / ratings_file).is_file():  # else another process put it there first
                raise
    return target


def read_dataset_dir(path, verify: bool = True) -> Ratings:
    """All ratings of a directory in a MovieLens layout.

    Looks for ``u.data`` (ml-100k), ``ratings.dat`` (ml-1m, ml-10m) or
    ``ratings.csv`` (the CSV releases), in that order. When the directory is
    named after a data set with known checksums (``ml-100k``, ``ml-1m``) and
    ``verify`` is true, every file with a known md5 is checked first.

    Parameters
    ----------
    path : str or Path
    verify : bool

    Raises
    ------
    FileNotFoundError
        No such directory, or an ml-1m-like directory without ``ratings.dat``.
    ValueError
        No ratings file, or a checksum mismatch.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"no MovieLens directory at {path}")
    if verify and path.name in CHECKSUMS:
        verify_checksums(path, path.name)
    for filename, format in (("u.data", "tab"), ("ratings.dat", "dat"), ("ratings.csv", "csv")):
        if (path / filename).is_file():
            return read_ratings(path / filename, format=format)
    if (path / "movies.dat").is_file() or (path / "users.dat").is_file():
        raise FileNotFoundError(
            f"{path} has movies.dat/users.dat but no ratings.dat: this ml-1m-style copy is incomplete and "
            "cannot be used (the official ratings.dat has 1,000,209 ratings)"
        )
    raise ValueError(f"no MovieLens ratings file in {path}; expected one of u.data, ratings.dat, ratings.csv")


def load_movielens(name_or_path, data_home=None, download: bool = False) -> Ratings:
    """Ratings of a MovieLens data set by name (see :func:`find_dataset`) or from a directory or file.

    Examples
    --------
    >>> ratings = load_movielens("ml-100k")  # doctest: +SKIP
    >>> ratings.num_users, ratings.num_items, ratings.nnz  # doctest: +SKIP
    (943, 1682, 100000)
    """
    if isinstance(name_or_path, str) and name_or_path in DATASETS:
        return read_dataset_dir(find_dataset(name_or_path, data_home, download))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return read_dataset_dir(path)
    if path.is_file():
        return read_ratings(path)
    raise FileNotFoundError(f"{name_or_path!r} is neither a known data set ({', '.join(DATASETS)}) nor a path")


def _read_titles_dat(path: Path) -> pd.DataFrame:
    kw = dict(sep="::", engine="python", header=None, usecols=[0, 1], names=["item", "title", "genres"],
              quoting=csv.QUOTE_NONE, dtype={1: str})
    try:
        return pd.read_csv(path, encoding="utf-8", **kw)
    except UnicodeDecodeError:  # ml-1m's movies.dat is Latin-1
        return pd.read_csv(path, encoding="latin-1", **kw)


def load_titles(path) -> dict:
    """Movie titles: external item id -> title.

    Parameters
    ----------
    path : str or Path
        A MovieLens directory, or one of its ``u.item`` (ml-100k, Latin-1,
        ``|``-separated), ``movies.dat`` (``::``; Latin-1 in ml-1m) or
        ``movies.csv`` files.

    Returns
    -------
    dict
        Empty when the directory has none of these files.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        for filename in ("u.item", "movies.dat", "movies.csv"):
            if (path / filename).is_file():
                return load_titles(path / filename)
        return {}
    if not path.is_file():
        raise FileNotFoundError(f"no titles file at {path}")
    if path.name == "u.item" or path.suffix == ".item":
        frame = pd.read_csv(path, sep="|", header=None, usecols=[0, 1], names=["item", "title"],
                            encoding="latin-1", quoting=csv.QUOTE_NONE, dtype={1: str}, index_col=False)
    elif path.suffix == ".dat":
        frame = _read_titles_dat(path)
    elif path.suffix == ".csv":
        frame = pd.read_csv(path, encoding="utf-8")
        item_col = _pick_column(frame.columns, ITEM_COLUMNS, "item", path)
        title_col = _pick_column(frame.columns, ("title", "name"), "title", path)
        frame = frame[[item_col, title_col]]
        frame.columns = ["item", "title"]
    else:
        raise ValueError(f"{path}: expected u.item, movies.dat or movies.csv")
    frame = frame.dropna(subset=["item"])
    items = _normalize_ids(frame["item"], "item ids")
    titles = frame["title"].fillna("").astype(str).tolist()
    return dict(zip(items.tolist(), titles))
