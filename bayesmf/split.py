"""Train/test splits of ratings: predefined, random, k-fold, per-user and cold start.

Every split is a :class:`Split` of two :class:`~bayesmf.data.Ratings`, each
compacted to the ids it contains. Test rows whose user or movie has no
training rating are *cold*: they are kept and flagged
(:attr:`Split.cold_user_mask`, :attr:`Split.cold_item_mask`), never dropped,
so that a model must say what it does with them.

Randomised splits take an explicit ``seed`` and draw from one
``np.random.default_rng(seed)``: the same seed gives the same split. The
temporal splits (:func:`temporal`) draw nothing: the latest ratings are the
test set.

>>> from bayesmf import synthetic
>>> from bayesmf.split import make_split
>>> ratings = synthetic.movielens_like(0, num_users=50, num_items=40, num_ratings=600, min_per_user=5).ratings
>>> s = make_split(ratings, "cold-users", test_fraction=0.2, seed=0, given=2)
>>> s.train.nnz + s.test.nnz == ratings.nnz
True
>>> s.num_cold_users  # the held-out users have their 2 revealed ratings in train
0
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from bayesmf.choices import PREDEFINED_SPLITS, SPLIT_NAMES
from bayesmf.data import Ratings, as_ratings, read_dataset_dir, read_ratings, verify_checksums

__all__ = [
    "PREDEFINED",
    "SPLIT_NAMES",
    "Split",
    "cold_items",
    "cold_users",
    "kfold",
    "leave_k_out",
    "make_split",
    "predefined",
    "random_holdout",
    "temporal",
    "validation_split",
]

# The ml-100k splits that GroupLens ships: u1..u5 (5-fold, 80/20) and ua/ub (10 test ratings per user).
PREDEFINED = PREDEFINED_SPLITS


class Split(NamedTuple):
    """A train/test split; both sides compacted to the ids they contain.

    Attributes
    ----------
    train, test : bayesmf.data.Ratings
    name : str
    """

    train: Ratings
    test: Ratings
    name: str

    @property
    def cold_user_mask(self) -> np.ndarray:
        """Test rows whose user has no training rating: bool array, shape (test.nnz,)."""
        return self.train.user_vocab.index(self.test.user_ids, missing="flag") < 0

    @property
    def cold_item_mask(self) -> np.ndarray:
        """Test rows whose item has no training rating: bool array, shape (test.nnz,)."""
        return self.train.item_vocab.index(self.test.item_ids, missing="flag") < 0

    @property
    def num_cold_users(self) -> int:
        """Distinct test users without training ratings."""
        return int(np.unique(self.test.user_index[self.cold_user_mask]).size)

    @property
    def num_cold_items(self) -> int:
        """Distinct test items without training ratings."""
        return int(np.unique(self.test.item_index[self.cold_item_mask]).size)

    @property
    def num_cold_rows(self) -> int:
        """Test rows whose user or item (or both) has no training rating."""
        return int(np.sum(self.cold_user_mask | self.cold_item_mask))

    def __repr__(self) -> str:
        return (
            f"Split(name={self.name!r}, train={self.train.nnz}, test={self.test.nnz}, "
            f"cold_users={self.num_cold_users}, cold_items={self.num_cold_items}, cold_rows={self.num_cold_rows})"
        )


# --- helpers ----------------------------------------------------------------------------------------


def _check_fraction(value, what: str = "test_fraction") -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in (0, 1), got {value!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"{what} must be in (0, 1), got {value}")
    return value


def _check_int(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def _check_ratings(ratings) -> Ratings:
    """``Ratings`` from ``Ratings`` or a pandas DataFrame (:func:`bayesmf.data.as_ratings`); at least 2 of them."""
    import pandas as pd

    if not isinstance(ratings, (Ratings, pd.DataFrame)):
        raise TypeError(f"expected bayesmf.data.Ratings or a pandas DataFrame, got {type(ratings).__name__}")
    ratings = as_ratings(ratings)
    if ratings.nnz < 2:
        raise ValueError(f"cannot split {ratings.nnz} rating(s): need at least 2")
    return ratings


def _from_mask(ratings: Ratings, test: np.ndarray, name: str) -> Split:
    if not test.any():
        raise ValueError(f"split {name!r} has no test ratings")
    if test.all():
        raise ValueError(f"split {name!r} has no training ratings")
    return Split(ratings.subset(~test), ratings.subset(test), name)


def _count(fraction: float, n: int) -> int:
    """round(fraction * n), at least 1 and at most n - 1."""
    return int(min(max(round(fraction * n), 1), n - 1))


def _random_rank(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row's position, in a random order, among the rows of its group: int64 array, shape (n,).

    A random permutation, then a stable sort by group (2.4x faster than a lexsort on random keys at 9M rows).
    """
    perm = rng.permutation(groups.size)
    order = perm[np.argsort(groups[perm], kind="stable")]
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    lengths = np.diff(np.r_[starts, groups.size])
    rank_sorted = np.arange(groups.size) - np.repeat(starts, lengths)
    rank = np.empty(groups.size, np.int64)
    rank[order] = rank_sorted
    return rank


def _random_member(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One row of each group, drawn uniformly: bool mask, shape (n,).

    The row of the lowest uniform key in each group, found without sorting
    (:func:`_random_rank` ``== 0`` sorts: 10 s of a validation split at
    ML-10M shape; this, 0.4 s a side). Two equal keys in a group (odds
    about ``n_g^2 / 2^54``) would both be taken.
    """
    key = rng.random(groups.size)
    lowest = np.full(int(groups.max()) + 1, np.inf)
    np.minimum.at(lowest, groups, key)
    return key == lowest[groups]


# --- splits -------------------------------------------------------------------------------------------


def predefined(data_dir, name: str) -> Split:
    """One of the splits GroupLens ships with ml-100k, from ``<name>.base`` / ``<name>.test``.

    Parameters
    ----------
    data_dir : str or Path
        The ml-100k directory (or its parent). When it is named ``ml-100k``
        the two files' md5s are checked.
    name : {"u1", "u2", "u3", "u4", "u5", "ua", "ub"}
        ``u1``..``u5``: the five 80/20 folds; ``ua``, ``ub``: 10 test ratings
        per user.

    Examples
    --------
    >>> s = predefined("ml-100k", "u1")  # doctest: +SKIP
    >>> s.train.nnz, s.test.nnz  # doctest: +SKIP
    (80000, 20000)
    """
    if name not in PREDEFINED:
        raise ValueError(f"unknown predefined split {name!r}; valid: {', '.join(PREDEFINED)}")
    directory = Path(data_dir).expanduser()
    if not (directory / f"{name}.base").is_file() and (directory / "ml-100k" / f"{name}.base").is_file():
        directory = directory / "ml-100k"
    base, test = directory / f"{name}.base", directory / f"{name}.test"
    for path in (base, test):
        if not path.is_file():
            raise FileNotFoundError(
                f"no {path.name} in {directory} (the ml-100k directory is needed for split {name!r})"
            )
    if directory.name == "ml-100k":
        verify_checksums(directory, "ml-100k", files=[base.name, test.name])
    return Split(read_ratings(base, format="tab"), read_ratings(test, format="tab"), name)


def random_holdout(ratings: Ratings, test_fraction: float, seed) -> Split:
    """A uniformly random ``test_fraction`` of the ratings as the test set.

    Users or movies whose ratings all land in the test set are cold (flagged).

    Parameters
    ----------
    ratings : Ratings, nnz >= 2
    test_fraction : float in (0, 1)
        ``round(test_fraction * nnz)`` test rows (at least 1, at most nnz - 1).
    seed : int
    """
    ratings = _check_ratings(ratings)
    fraction = _check_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    test = np.zeros(ratings.nnz, bool)
    test[rng.permutation(ratings.nnz)[: _count(fraction, ratings.nnz)]] = True
    return _from_mask(ratings, test, "random")


def kfold(ratings: Ratings, k: int, seed) -> list[Split]:
    """k splits whose test sets partition the ratings (random folds of near-equal size).

    Parameters
    ----------
    ratings : Ratings
    k : int, 2 <= k <= nnz
    seed : int

    Returns
    -------
    list of Split, length k
        Named ``"kfold-<i>-of-<k>"``.
    """
    k = _check_int(k, "k", 2)
    ratings = _check_ratings(ratings)  # once: a DataFrame is converted here, not per fold
    return [_fold(ratings, k, seed, i) for i in range(k)]


def _fold(ratings: Ratings, k: int, seed, fold: int) -> Split:
    """Fold ``fold`` of :func:`kfold` (the same permutation for every fold of one seed)."""
    ratings = _check_ratings(ratings)
    k = _check_int(k, "k", 2)
    fold = _check_int(fold, "fold", 0)
    if k > ratings.nnz:
        raise ValueError(f"k={k} folds need at least k ratings, got {ratings.nnz}")
    if fold >= k:
        raise ValueError(f"fold must be in 0..{k - 1} for k={k}, got {fold}")
    rows = np.array_split(np.random.default_rng(seed).permutation(ratings.nnz), k)[fold]
    test = np.zeros(ratings.nnz, bool)
    test[rows] = True
    return _from_mask(ratings, test, f"kfold-{fold}-of-{k}")


def leave_k_out(ratings: Ratings, k: int, seed) -> Split:
    """k random ratings of every user as the test set.

    A user with ``k`` or fewer ratings keeps at least one in the training
    set: only ``degree - 1`` of theirs are held out (none for a user with a
    single rating), so no test user is cold. Movies can still be cold.

    Parameters
    ----------
    ratings : Ratings
    k : int >= 1
    seed : int
    """
    ratings = _check_ratings(ratings)
    k = _check_int(k, "k", 1)
    rng = np.random.default_rng(seed)
    rank = _random_rank(ratings.user_index, rng)
    hold = np.minimum(k, ratings.user_degrees() - 1)
    test = rank < hold[ratings.user_index]
    return _from_mask(ratings, test, f"leave-{k}-out")


def _cold(ratings: Ratings, axis: str, test_fraction: float, seed, given: int) -> Split:
    ratings = _check_ratings(ratings)
    fraction = _check_fraction(test_fraction)
    given = _check_int(given, "given", 0)
    index = ratings.user_index if axis == "user" else ratings.item_index
    n = ratings.num_users if axis == "user" else ratings.num_items
    degree = np.bincount(index, minlength=n)
    if n < 2:
        raise ValueError(f"cold-{axis} splits need at least 2 {axis}s, got {n}")
    eligible = np.flatnonzero(degree > given)
    num_held = _count(fraction, n)
    if num_held > eligible.size:
        raise ValueError(
            f"cannot hold out {num_held} {axis}s (test_fraction={fraction} of {n}): only {eligible.size} have "
            f"more than given={given} ratings"
        )
    rng = np.random.default_rng(seed)
    held = np.zeros(n, bool)
    held[rng.choice(eligible, num_held, replace=False)] = True
    test = held[index]
    if given:
        test &= _random_rank(index, rng) >= given
    name = f"cold-{axis}s" + (f"-given-{given}" if given else "")
    return _from_mask(ratings, test, name)


def cold_users(ratings: Ratings, test_fraction: float, seed, given: int = 0) -> Split:
    """Whole users held out: the cold-start-user split.

    ``round(test_fraction * num_users)`` users are drawn among those with
    more than ``given`` ratings (so each keeps at least one test rating).
    With ``given=0`` all their ratings are the test set and they are cold;
    with ``given=k``, k of each one's ratings, drawn at random, are revealed
    and join the *training* set (the few-ratings fold-in setting) and the
    rest are the test set. Movies can be cold as a side effect.

    Parameters
    ----------
    ratings : Ratings
    test_fraction : float in (0, 1)
        Fraction of users held out.
    seed : int
    given : int >= 0

    Examples
    --------
    >>> s = cold_users(ratings, 0.1, seed=0)  # doctest: +SKIP
    >>> s.num_cold_users == round(0.1 * ratings.num_users)  # doctest: +SKIP
    True
    """
    return _cold(ratings, "user", test_fraction, seed, given)


def cold_items(ratings: Ratings, test_fraction: float, seed, given: int = 0) -> Split:
    """Whole movies held out; as :func:`cold_users` with the roles swapped.

    Parameters
    ----------
    ratings : Ratings
    test_fraction : float in (0, 1)
        Fraction of movies held out.
    seed : int
    given : int >= 0
        Ratings of each held-out movie revealed in the training set.
    """
    return _cold(ratings, "item", test_fraction, seed, given)


def temporal(ratings: Ratings, test_fraction: float, *, by: str = "global") -> Split:
    """The latest ratings by timestamp as the test set: train on the past, test on the future.

    ``by="global"``: the ``round(test_fraction * nnz)`` latest ratings (at
    least 1, at most nnz - 1) are the test set, so every test rating is at
    least as recent as every training rating. Users and movies first seen in
    the test period are cold (flagged).

    ``by="user"``: each user's ``round(test_fraction * degree)`` latest
    ratings are the test set, capped at ``degree - 1`` so that a user with
    two or more ratings keeps at least one in training (a user with a single
    rating keeps it there); per user, test ratings are at least as recent as
    training ones. No test user is cold; movies can be.

    Equal timestamps are ordered by user, then movie (in vocabulary order),
    so the split depends on the ratings alone, not on their row order.

    Parameters
    ----------
    ratings : Ratings, nnz >= 2, with ``timestamp``
    test_fraction : float in (0, 1)
    by : {"global", "user"}

    Returns
    -------
    Split
        Named ``"temporal"`` (global) or ``"temporal-user"``.

    Examples
    --------
    >>> r = Ratings.from_arrays([1, 1, 1, 2, 2], [10, 20, 30, 10, 20], [4, 3, 5, 2, 4], timestamps=[5, 1, 9, 3, 7])
    >>> s = temporal(r, 0.4)
    >>> sorted(s.test.timestamp.tolist()), int(s.train.timestamp.max())
    ([7, 9], 5)
    >>> u = temporal(r, 0.4, by="user")  # user 1's latest of 3 ratings, user 2's latest of 2
    >>> u.name, sorted(zip(u.test.user_ids.tolist(), u.test.timestamp.tolist()))
    ('temporal-user', [(1, 9), (2, 7)])
    """
    ratings = _check_ratings(ratings)
    fraction = _check_fraction(test_fraction)
    if by not in ("global", "user"):
        raise ValueError(f"by must be 'global' or 'user', got {by!r}")
    if ratings.timestamp is None:
        raise ValueError(
            "a temporal split needs timestamps and these ratings have none (pass timestamps= to "
            "Ratings.from_arrays, or read a file with a timestamp column)"
        )
    if by == "global":
        order = np.lexsort((ratings.item_index, ratings.user_index, ratings.timestamp))  # time, then user, movie
        test = np.zeros(ratings.nnz, bool)
        test[order[ratings.nnz - _count(fraction, ratings.nnz):]] = True
        return _from_mask(ratings, test, "temporal")
    order = np.lexsort((ratings.item_index, ratings.timestamp, ratings.user_index))  # per user: time, then movie
    users = ratings.user_index[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    degree = ratings.user_degrees()
    rank = np.empty(ratings.nnz, np.int64)  # position of each row in its user's time order
    rank[order] = np.arange(ratings.nnz) - np.repeat(starts, np.diff(np.r_[starts, ratings.nnz]))
    hold = np.minimum(np.rint(fraction * degree).astype(np.int64), degree - 1)
    test = rank >= (degree - hold)[ratings.user_index]
    return _from_mask(ratings, test, "temporal-user")


def validation_split(train: Ratings, fraction: float, seed) -> Split:
    """Carve a validation set out of a training set without making anything cold.

    One rating of every user and one of every movie (drawn at random) are
    protected; the validation set is ``round(fraction * nnz)`` ratings drawn
    from the rest (fewer if the rest is smaller). Every user and movie of
    ``train`` therefore keeps at least one rating in the new training set and
    the validation set has no cold rows.

    Parameters
    ----------
    train : Ratings
    fraction : float in (0, 1)
    seed : int

    Returns
    -------
    Split
        ``test`` is the validation set; named ``"validation"``.
    """
    train = _check_ratings(train)
    fraction = _check_fraction(fraction, "fraction")
    rng = np.random.default_rng(seed)
    protected = _random_member(train.user_index, rng) | _random_member(train.item_index, rng)
    candidates = np.flatnonzero(~protected)
    if candidates.size == 0:
        raise ValueError(
            "cannot carve a validation set: every rating is the only one (or the protected one) of its user or movie"
        )
    num_valid = min(max(round(fraction * train.nnz), 1), candidates.size)
    test = np.zeros(train.nnz, bool)
    test[rng.choice(candidates, num_valid, replace=False)] = True
    return _from_mask(train, test, "validation")


def make_split(
    ratings_or_dir, name: str, *, test_fraction: float = 0.2, seed=0, given: int = 0, k: int = 5, fold: int = 0,
) -> Split:
    """Any split by name.

    Parameters
    ----------
    ratings_or_dir : Ratings, or str / Path of a MovieLens directory
        The predefined ml-100k splits need the directory.
    name : str
        ``"u1"`` .. ``"u5"``, ``"ua"``, ``"ub"`` (:func:`predefined`),
        ``"random"`` (:func:`random_holdout`), ``"kfold"`` (fold ``fold`` of
        :func:`kfold` with ``k`` folds), ``"leave-k-out"``
        (:func:`leave_k_out` with ``k``), ``"cold-users"`` / ``"cold-items"``
        (:func:`cold_users` / :func:`cold_items` with ``given``),
        ``"temporal"`` / ``"temporal-user"`` (:func:`temporal` with
        ``by="global"`` / ``by="user"``; no randomness, ``seed`` unused).
    test_fraction : float in (0, 1)
    seed : int
    given, k, fold : int

    Examples
    --------
    >>> s = make_split("ml-100k", "u1")  # doctest: +SKIP
    >>> s = make_split(ratings, "kfold", k=5, fold=2, seed=1)  # doctest: +SKIP
    """
    if name not in SPLIT_NAMES:
        raise ValueError(f"unknown split {name!r}; valid names: {', '.join(SPLIT_NAMES)}")
    test_fraction = _check_fraction(test_fraction)
    if name in PREDEFINED:
        if isinstance(ratings_or_dir, Ratings):
            raise ValueError(f"the predefined split {name!r} is read from files: pass the ml-100k directory")
        return predefined(ratings_or_dir, name)
    ratings = ratings_or_dir if isinstance(ratings_or_dir, Ratings) else read_dataset_dir(ratings_or_dir)
    if name == "random":
        return random_holdout(ratings, test_fraction, seed)
    if name == "kfold":
        return _fold(ratings, k, seed, fold)
    if name == "leave-k-out":
        return leave_k_out(ratings, k, seed)
    if name == "cold-users":
        return cold_users(ratings, test_fraction, seed, given)
    if name == "temporal":
        return temporal(ratings, test_fraction, by="global")
    if name == "temporal-user":
        return temporal(ratings, test_fraction, by="user")
    return cold_items(ratings, test_fraction, seed, given)
