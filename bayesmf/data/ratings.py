"""The data model: ratings and rating scales (id vocabularies: :mod:`bayesmf.data.vocabulary`).

A :class:`Ratings` holds one rating per (user, movie) pair as three parallel
arrays of length ``nnz``: contiguous ``user_index`` and ``item_index``
(0 .. num_users - 1, 0 .. num_items - 1) and the ``rating`` itself, plus the
two :class:`Vocabulary` objects that map those indices back to the external
ids of the data set (all integers or all strings) and the
:class:`RatingScale` the ratings live on. Everything that builds one checks
its input and raises ``ValueError`` naming the problem.

Files are read by :mod:`bayesmf.data.readers`; MovieLens data sets are found,
downloaded and verified by :mod:`bayesmf.data.movielens`.

>>> from bayesmf.data import Ratings
>>> r = Ratings.from_arrays([10, 10, 20], ["a", "b", "a"], [4.0, 3.0, 5.0])
>>> r.num_users, r.num_items, r.nnz
(2, 2, 3)
>>> r.item_vocab.index(["b", "a"]).tolist()
[1, 0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bayesmf.data.vocabulary import EXAMPLES, Vocabulary, as_array, examples, normalize_ids

__all__ = [
    "DUPLICATE_POLICIES",
    "RatingScale",
    "Ratings",
]

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
            raise _row_error(
                f"{rows.size} ratings are outside the rating scale [{self.low:g}, {self.high:g}]{grid}, "
                f"e.g. {examples(v[rows])} at rows {examples(rows)}",
                rows,
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

DUPLICATE_POLICIES = ("error", "mean", "first", "last")


def _pair_keys(user_index: np.ndarray, item_index: np.ndarray, num_items: int) -> np.ndarray:
    return user_index.astype(np.int64) * max(int(num_items), 1) + item_index.astype(np.int64)


def _row_error(message: str, rows) -> ValueError:
    """A ``ValueError`` whose ``rows`` attribute holds the offending row positions (readers turn them into lines)."""
    exc = ValueError(message)
    exc.rows = np.asarray(rows)[:EXAMPLES].tolist()
    return exc


def _duplicate_error(keys, user_ids, item_ids, hint: str) -> ValueError:
    dup = pd.Index(keys).duplicated(keep="first")
    first = int(np.flatnonzero(dup)[0])
    rows = np.flatnonzero(keys == keys[first])[:EXAMPLES]
    user, item = user_ids[first : first + 1].tolist()[0], item_ids[first : first + 1].tolist()[0]
    return _row_error(
        f"{int(dup.sum())} duplicate (user, item) pairs, e.g. user {user!r} and item {item!r} at rows "
        f"{rows.tolist()}; {hint}",
        rows,
    )


def _pairs_sorted(user_index: np.ndarray, item_index: np.ndarray) -> bool:
    """Whether the (user, item) pairs strictly increase (then none repeats): MovieLens files are sorted so.

    Comparing neighbours costs a few passes over int32 arrays; a hash of every
    pair (the general check) costs ~10x more time and ~0.5 GB on 25M ratings.
    """
    if user_index.size < 2:
        return True
    u0, u1 = user_index[:-1], user_index[1:]
    return bool(np.all((u1 > u0) | ((u1 == u0) & (item_index[1:] > item_index[:-1]))))


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
            row per pair: at the pair's first row, the mean rating (and the
            latest timestamp); the first row; or the last row. Means may fall
            between the steps of the scale.
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
        if duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates={duplicates!r}; expected one of {DUPLICATE_POLICIES}")
        arrays = {"users": users, "items": items, "ratings": ratings}
        if timestamps is not None:
            arrays["timestamps"] = timestamps
        arrays = {k: as_array(v) for k, v in arrays.items()}
        for k, v in arrays.items():
            if v.ndim != 1:
                raise ValueError(f"{k} must be 1-D, got shape {v.shape}")
        lengths = {k: v.shape[0] for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            listed = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise ValueError(f"users, items, ratings and timestamps must have one length, got {listed}")
        if lengths["users"] == 0:
            raise ValueError("no ratings: users, items and ratings are empty")
        r = arrays["ratings"]
        if r.dtype.kind != "f":  # float32 and float64 stay as they are (no copy of a large column)
            try:
                r = r.astype(np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"ratings must be numbers, got dtype {arrays['ratings'].dtype}") from None
        finite = np.isfinite(r)
        if not finite.all():
            rows = np.flatnonzero(~finite)
            raise _row_error(f"{rows.size} ratings are NaN or infinite, first at rows {examples(rows)}", rows)
        del finite
        t = None
        if timestamps is not None:
            t = _as_timestamps(arrays["timestamps"])
        user_index, user_vocab = _encode(arrays["users"], user_vocab, "user")
        item_index, item_vocab = _encode(arrays["items"], item_vocab, "item")
        distinct = pd.unique(r)  # a rating scale has few values: infer and check on those
        if scale is None:
            scale = RatingScale.infer(distinct)
        elif not isinstance(scale, RatingScale):
            raise TypeError(f"scale must be a RatingScale, got {type(scale).__name__}")
        if not scale.contains(distinct).all():
            scale.validate(r)  # raises, naming the rows
        if not _pairs_sorted(user_index, item_index):
            keys = _pair_keys(user_index, item_index, len(item_vocab))
            dup = pd.Index(keys).duplicated(keep="first")
            if dup.any():
                if duplicates == "error":
                    hint = "pass duplicates='mean', 'first' or 'last' to keep one rating per pair"
                    raise _duplicate_error(keys, user_vocab.ids[user_index], item_vocab.ids[item_index], hint)
                r = r.astype(np.float64)  # means in double precision
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
            hint = "a pair may be in one of the two only (drop it from one, or combine them with from_arrays' duplicates=)"
            raise _duplicate_error(keys, user_vocab.ids[u], item_vocab.ids[i], hint)
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
    if values.dtype.kind in "iu":
        return values.astype(np.int64, copy=False)
    try:
        t = values.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"timestamps must be integers (seconds), got dtype {values.dtype}") from None
    bad = ~np.isfinite(t) | (t != np.round(t))
    if bad.any():
        rows = np.flatnonzero(bad)
        raise _row_error(f"{rows.size} timestamps are missing or not whole seconds, first at rows {examples(rows)}", rows)
    return values.astype(np.int64)



def _encode(values: np.ndarray, vocab: Vocabulary | None, what: str) -> tuple[np.ndarray, Vocabulary]:
    ids = normalize_ids(values, f"{what} ids")
    if ids.dtype != object and ids.size and ids.min() < 0:
        rows = np.flatnonzero(ids < 0)
        raise _row_error(
            f"{rows.size} {what} ids are negative (e.g. {examples(ids[rows])} at rows {examples(rows)}); "
            "numeric ids must be non-negative integers",
            rows,
        )
    if vocab is None:
        vocab, codes = Vocabulary.from_values(ids)
        return codes, vocab
    codes = vocab.index(ids, missing="flag")
    if (codes < 0).any():
        rows = np.flatnonzero(codes < 0)
        raise _row_error(
            f"{rows.size} {what} ids are not in the given {what}_vocab, e.g. {examples(ids[rows])} "
            f"at rows {examples(rows)}",
            rows,
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
