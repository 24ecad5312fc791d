"""Splits: partitions, determinism per seed, cold rows flagged, temporal order, ml-100k predefined splits."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayesmf import data, split
from bayesmf.data import Ratings


def make_ratings(seed: int, num_users: int = 30, num_items: int = 20, density: float = 0.3, str_ids: bool = False):
    """Random distinct pairs; user ids 100.., item ids 1.. (or strings)."""
    rng = np.random.default_rng(seed)
    mask = rng.random((num_users, num_items)) < density
    mask[np.arange(num_users), rng.integers(0, num_items, num_users)] = True  # every user rates something
    users, items = np.nonzero(mask)
    order = rng.permutation(users.size)
    users, items = users[order] + 100, items[order] + 1
    if str_ids:
        users, items = np.char.add("u", users.astype(str)), np.char.add("m", items.astype(str))
    ratings = rng.integers(1, 6, users.size).astype(float)
    return Ratings.from_arrays(users, items, ratings, np.arange(users.size) + 10**9)


def rows(r: Ratings) -> dict:
    """(user id, item id) -> (rating, timestamp) of every row."""
    keys = zip(r.user_ids.tolist(), r.item_ids.tolist())
    return dict(zip(keys, zip(r.rating.tolist(), r.timestamp.tolist())))


def table(r: Ratings) -> pd.DataFrame:
    """All rows in external ids, sorted by (user, item): a canonical form to compare."""
    return r.to_dataframe().sort_values(["user", "item"], ignore_index=True)


def assert_partition(s: split.Split, ratings: Ratings):
    train, test = rows(s.train), rows(s.test)
    assert len(train) == s.train.nnz and len(test) == s.test.nnz
    assert not train.keys() & test.keys()
    assert {**train, **test} == rows(ratings)
    # Compacted: every vocabulary id has a row.
    for r in (s.train, s.test):
        assert r.user_degrees().min() > 0 and r.item_degrees().min() > 0
    assert s.cold_user_mask.shape == s.cold_item_mask.shape == (s.test.nnz,)


# --- each split ------------------------------------------------------------------------------------


def test_random_holdout_size_partition_and_seed():
    r = make_ratings(0)
    s = split.random_holdout(r, 0.25, seed=3)
    assert s.name == "random" and s.test.nnz == round(0.25 * r.nnz)
    assert_partition(s, r)
    assert split.random_holdout(r, 0.25, seed=3) == s
    assert split.random_holdout(r, 0.25, seed=4).test != s.test


def test_cold_rows_are_flagged_not_dropped():
    # User 9 and movie 99 have one rating each: whichever side it lands on, nothing is lost.
    users = [1, 1, 2, 2, 3, 3, 9]
    items = [10, 20, 10, 20, 10, 20, 99]
    r = Ratings.from_arrays(users, items, [4, 3, 5, 1, 2, 2, 5], np.arange(7))
    seen_lonely = False
    for seed in range(20):
        s = split.random_holdout(r, 0.3, seed)
        assert s.train.nnz + s.test.nnz == 7
        cold_user = ~np.isin(s.test.user_ids, s.train.user_ids)
        cold_item = ~np.isin(s.test.item_ids, s.train.item_ids)
        assert np.array_equal(s.cold_user_mask, cold_user) and np.array_equal(s.cold_item_mask, cold_item)
        assert s.num_cold_users == np.unique(s.test.user_ids[cold_user]).size
        assert s.num_cold_items == np.unique(s.test.item_ids[cold_item]).size
        assert s.num_cold_rows == int((cold_user | cold_item).sum())
        lonely = s.test.user_ids == 9
        if lonely.any():
            seen_lonely = True
            assert s.cold_user_mask[lonely].all() and s.cold_item_mask[lonely].all()
    assert seen_lonely


def test_kfold_partitions_rows():
    r = make_ratings(1)
    folds = split.kfold(r, 4, seed=0)
    assert [f.name for f in folds] == [f"kfold-{i}-of-4" for i in range(4)]
    tests = [rows(f.test) for f in folds]
    assert sum(len(t) for t in tests) == r.nnz
    assert {k: v for t in tests for k, v in t.items()} == rows(r)
    assert max(f.test.nnz for f in folds) - min(f.test.nnz for f in folds) <= 1
    for f in folds:
        assert_partition(f, r)
    assert split.make_split(r, "kfold", k=4, fold=2, seed=0) == folds[2]


def test_leave_k_out_per_user():
    users = np.repeat([1, 2, 3, 4], [10, 3, 2, 1])
    items = np.concatenate([np.arange(10), np.arange(3), np.arange(2), np.arange(1)])
    r = Ratings.from_arrays(users, items, np.full(users.size, 3.0))
    s = split.leave_k_out(r, 3, seed=0)
    assert s.name == "leave-3-out"
    test_counts = pd.Series(s.test.user_ids).value_counts().to_dict()
    assert test_counts == {1: 3, 2: 2, 3: 1}  # users with <= 3 ratings keep one in train; user 4 has none held out
    assert s.num_cold_users == 0 and set(s.train.user_vocab.ids.tolist()) == {1, 2, 3, 4}
    assert_partition(split.leave_k_out(make_ratings(2, density=0.5), 2, seed=1), make_ratings(2, density=0.5))


def test_cold_users_whole_users_held_out():
    r = make_ratings(3)
    s = split.cold_users(r, 0.2, seed=5)
    assert s.name == "cold-users"
    assert_partition(s, r)
    assert s.num_cold_users == round(0.2 * r.num_users) == s.test.num_users
    assert s.cold_user_mask.all()


def test_cold_users_given_reveals_k_ratings_in_train():
    r = make_ratings(4, density=0.4)
    s = split.cold_users(r, 0.2, seed=5, given=3)
    assert s.name == "cold-users-given-3"
    assert_partition(s, r)
    held = s.test.user_vocab.ids
    assert held.size == round(0.2 * r.num_users)
    train_degree = dict(zip(s.train.user_vocab.ids.tolist(), s.train.user_degrees().tolist()))
    full_degree = dict(zip(r.user_vocab.ids.tolist(), r.user_degrees().tolist()))
    for user in held.tolist():
        assert train_degree[user] == 3  # revealed, in training
        assert full_degree[user] > 3
    assert s.num_cold_users == 0
    # Which ratings are revealed depends on the seed, and only on it.
    assert split.cold_users(r, 0.2, seed=5, given=3) == s
    assert split.cold_users(r, 0.2, seed=6, given=3) != s


def test_cold_items():
    r = make_ratings(5)
    s = split.cold_items(r, 0.25, seed=0)
    assert_partition(s, r)
    assert s.name == "cold-items" and s.cold_item_mask.all() and s.num_cold_items == round(0.25 * r.num_items)
    g = split.cold_items(r, 0.25, seed=0, given=1)
    assert_partition(g, r)
    assert g.num_cold_items == 0
    train_degree = dict(zip(g.train.item_vocab.ids.tolist(), g.train.item_degrees().tolist()))
    assert all(train_degree[i] == 1 for i in g.test.item_vocab.ids.tolist())


def test_validation_split_never_cold():
    r = make_ratings(6, density=0.15)
    s = split.validation_split(r, 0.3, seed=2)
    assert s.name == "validation"
    assert_partition(s, r)
    assert s.train.user_vocab == r.user_vocab and s.train.item_vocab == r.item_vocab
    assert s.num_cold_rows == 0 and s.test.nnz <= round(0.3 * r.nnz)
    assert split.validation_split(r, 0.3, seed=2) == s


def test_string_ids_split():
    r = make_ratings(7, str_ids=True)
    s = split.make_split(r, "cold-users", test_fraction=0.3, seed=1)
    assert s.test.user_vocab.ids.dtype == object and s.cold_user_mask.all()
    assert_partition(s, r)



def test_temporal_global_holds_out_the_latest_ratings():
    # Timestamps 0..9 in scrambled row order; ties at 7 broken by user, then movie.
    users = [1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    items = [10, 20, 30, 10, 20, 40, 10, 20, 30, 40]
    times = [3, 7, 0, 7, 1, 9, 5, 2, 8, 4]
    r = Ratings.from_arrays(users, items, np.full(10, 3.0), times)
    s = split.temporal(r, 0.3)
    assert s.name == "temporal" and s.test.nnz == 3
    assert sorted(zip(s.test.user_ids.tolist(), s.test.item_ids.tolist())) == [(2, 10), (2, 40), (3, 30)]
    assert_partition(s, r)
    # At 0.4 both rows at t=7 are in the test set; at 0.3 only user 2's, the later user, is.
    s4 = split.temporal(r, 0.4)
    assert sorted(s4.test.timestamp.tolist()) == [7, 7, 8, 9]
    assert split.temporal(r, 0.35) == s4  # round(3.5) = 4 (Python rounds half to even)
    assert sorted(split.temporal(r, 0.25).test.timestamp.tolist()) == [8, 9]  # round(2.5) = 2
    assert split.make_split(r, "temporal", test_fraction=0.3, seed=123) == s


def test_temporal_ties_go_by_user_then_movie():
    # Four ratings at the same instant: the later (user, movie) pairs are the "latest".
    r = Ratings.from_arrays([2, 1, 2, 1], [20, 20, 10, 10], [1.0, 2.0, 3.0, 4.0], [5, 5, 5, 5])
    s = split.temporal(r, 0.5)
    assert sorted(zip(s.test.user_ids.tolist(), s.test.item_ids.tolist())) == [(2, 10), (2, 20)]
    s1 = split.temporal(r, 0.25)
    assert list(zip(s1.test.user_ids.tolist(), s1.test.item_ids.tolist())) == [(2, 20)]


def test_temporal_per_user():
    users = np.repeat([1, 2, 3, 4], [10, 3, 2, 1])
    items = np.concatenate([np.arange(10), np.arange(3), np.arange(2), np.arange(1)])
    times = np.concatenate([np.arange(10)[::-1], [5, 6, 4], [1, 1], [0]])  # user 3's two ratings tie: movie order
    r = Ratings.from_arrays(users, items, np.full(users.size, 3.0), times)
    s = split.temporal(r, 0.3, by="user")
    assert s.name == "temporal-user"
    assert_partition(s, r)
    held = sorted(zip(s.test.user_ids.tolist(), s.test.item_ids.tolist()))
    # user 1: round(3.0) = 3 latest = movies 0, 1, 2 (times 9, 8, 7); user 2: round(0.9) = 1, movie 1 (t=6);
    # user 3: round(0.6) = 1, the tie at t=1 goes to the later movie, 1; user 4 keeps its only rating.
    assert held == [(1, 0), (1, 1), (1, 2), (2, 1), (3, 1)]
    assert s.num_cold_users == 0
    # A large fraction still leaves one rating per user in train.
    big = split.temporal(r, 0.99, by="user")
    assert pd.Series(big.train.user_ids).value_counts().to_dict() == {1: 1, 2: 1, 3: 1, 4: 1}
    assert split.make_split(r, "temporal-user", test_fraction=0.3) == s


# --- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda r: split.make_split(r, "holdout"),
            ValueError,
            r"unknown split 'holdout'; valid names: u1, .*cold-items",
        ),
        (lambda r: split.make_split(r, "random", test_fraction=0.0), ValueError, r"must be in \(0, 1\), got 0.0"),
        (lambda r: split.make_split(r, "random", test_fraction=1.0), ValueError, r"test_fraction must be in \(0, 1\)"),
        (lambda r: split.random_holdout(r, -0.1, 0), ValueError, r"test_fraction must be in \(0, 1\)"),
        (lambda r: split.cold_users(r, 1.5, 0), ValueError, r"test_fraction must be in \(0, 1\)"),
        (lambda r: split.make_split(r, "u1"), ValueError, "pass the ml-100k directory"),
        (lambda r: split.make_split(r, "kfold", k=3, fold=3), ValueError, r"fold must be in 0\.\.2 for k=3, got 3"),
        (lambda r: split.kfold(r, 1, 0), ValueError, "k must be >= 2, got 1"),
        (lambda r: split.kfold(r, r.nnz + 1, 0), ValueError, "folds need at least k ratings"),
        (lambda r: split.leave_k_out(r, 0, 0), ValueError, "k must be >= 1, got 0"),
        (lambda r: split.cold_users(r, 0.2, 0, given=-1), ValueError, "given must be >= 0"),
        (
            lambda r: split.cold_users(r, 0.5, 0, given=50),
            ValueError,
            r"hold out 15 users .* only 0 have more than given=50",
        ),
        (lambda r: split.validation_split(r, 1.0, 0), ValueError, r"fraction must be in \(0, 1\)"),
        (lambda r: split.temporal(r, 0.0), ValueError, r"test_fraction must be in \(0, 1\), got 0.0"),
        (lambda r: split.temporal(r, "most"), ValueError, r"test_fraction must be a number in \(0, 1\), got 'most'"),
        (lambda r: split.temporal(r, 0.2, by="item"), ValueError, r"by must be 'global' or 'user', got 'item'"),
        (lambda r: split.make_split(r, "temporal-user", test_fraction=1.0), ValueError, r"test_fraction must be in"),
        (
            lambda r: split.temporal(Ratings.from_arrays(r.user_ids, r.item_ids, r.rating), 0.2),
            ValueError,
            "a temporal split needs timestamps and these ratings have none",
        ),
        (
            lambda r: split.make_split(Ratings.from_arrays([1, 2], [1, 1], [3, 4]), "temporal-user"),
            ValueError,
            "needs timestamps",
        ),
        (  # each user has one rating: nothing can be held out per user
            lambda r: split.temporal(Ratings.from_arrays([1, 2], [1, 1], [3, 4], [0, 1]), 0.5, by="user"),
            ValueError,
            "split 'temporal-user' has no test ratings",
        ),
        (lambda r: split.temporal(list(r.rating), 0.2), TypeError, "expected bayesmf.data.Ratings or a pandas DataFrame"),
        (lambda r: split.random_holdout(r.subset(np.array([0])), 0.5, 0), ValueError, "need at least 2"),
        (lambda r: split.random_holdout(r.rating, 0.5, 0), TypeError, "expected bayesmf.data.Ratings or a pandas DataFrame"),
        (
            lambda r: split.predefined("/x", "u9"),
            ValueError,
            r"unknown predefined split 'u9'; valid: u1, u2, u3, u4, u5, ua, ub",
        ),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(make_ratings(8))


def test_validation_split_impossible():
    r = Ratings.from_arrays([1, 2, 3], [1, 2, 3], [3, 4, 5])  # each rating is its user's only one
    with pytest.raises(ValueError, match="cannot carve a validation set"):
        split.validation_split(r, 0.5, 0)


def test_predefined_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no u1\.base in .*needed for split 'u1'"):
        split.predefined(tmp_path, "u1")


def test_predefined_from_small_files(tmp_path):
    base = "1\t1\t5\t1\n1\t2\t4\t2\n2\t1\t3\t3\n"
    test = "2\t2\t4\t4\n3\t1\t2\t5\n"
    (tmp_path / "u1.base").write_text(base)
    (tmp_path / "u1.test").write_text(test)
    s = split.make_split(tmp_path, "u1")
    assert (s.train.nnz, s.test.nnz, s.name) == (3, 2, "u1")
    assert s.cold_user_mask.tolist() == [False, True] and s.num_cold_users == 1 and s.num_cold_rows == 1


# --- properties ------------------------------------------------------------------------------------------

SPLITTERS = {
    "random": lambda r, seed: split.random_holdout(r, 0.3, seed),
    "kfold": lambda r, seed: split.kfold(r, 3, seed)[seed % 3],
    "leave-k-out": lambda r, seed: split.leave_k_out(r, 2, seed),
    "cold-users": lambda r, seed: split.cold_users(r, 0.3, seed),
    "cold-users-given": lambda r, seed: split.cold_users(r, 0.3, seed, given=1),
    "cold-items": lambda r, seed: split.cold_items(r, 0.3, seed),
    "validation": lambda r, seed: split.validation_split(r, 0.3, seed),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data_seed=st.integers(0, 2**16),
    seed=st.integers(0, 2**32 - 1),
    num_users=st.integers(4, 25),
    num_items=st.integers(4, 25),
    density=st.floats(0.2, 0.9),
    kind=st.sampled_from(sorted(SPLITTERS)),
)
def test_splits_partition_and_are_reproducible(data_seed, seed, num_users, num_items, density, kind):
    r = make_ratings(data_seed, num_users, num_items, density)
    try:
        s = SPLITTERS[kind](r, seed)
    except ValueError as exc:  # tiny data can make some splits impossible; they must say so
        assert any(m in str(exc) for m in ("cannot", "no test ratings", "no training ratings", "at least"))
        return
    assert_partition(s, r)
    assert SPLITTERS[kind](r, seed) == s
    if kind in ("leave-k-out", "validation"):
        assert s.num_cold_users == 0
    if kind == "validation":
        assert s.num_cold_rows == 0


@settings(max_examples=25, deadline=None)
@given(data_seed=st.integers(0, 2**16), seed=st.integers(0, 2**32 - 1), k=st.integers(2, 6))
def test_kfold_tests_partition_everything(data_seed, seed, k):
    r = make_ratings(data_seed, 12, 10, 0.4)
    folds = split.kfold(r, k, seed)
    union = {}
    for f in folds:
        test = rows(f.test)
        assert not union.keys() & test.keys()
        union.update(test)
    assert union == rows(r)
    assert [f.test for f in split.kfold(r, k, seed)] == [f.test for f in folds]



def timed_ratings(seed: int, num_users: int, num_items: int, density: float, num_times: int) -> Ratings:
    """make_ratings with timestamps drawn from ``num_times`` values (few values: many ties)."""
    r = make_ratings(seed, num_users, num_items, density)
    times = np.random.default_rng(seed + 1).integers(0, num_times, r.nnz)
    return Ratings.from_arrays(r.user_ids, r.item_ids, r.rating, times)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data_seed=st.integers(0, 2**16),
    num_users=st.integers(2, 20),
    num_items=st.integers(2, 20),
    density=st.floats(0.1, 0.9),
    num_times=st.integers(1, 50),
    fraction=st.floats(0.01, 0.99),
    by=st.sampled_from(["global", "user"]),
)
def test_temporal_partitions_past_and_future(data_seed, num_users, num_items, density, num_times, fraction, by):
    r = timed_ratings(data_seed, num_users, num_items, density, num_times)
    try:
        s = split.temporal(r, fraction, by=by)
    except ValueError as exc:  # per user, tiny fractions can hold out nothing; it must say so
        assert by == "user" and "has no test ratings" in str(exc)
        assert np.all(np.rint(fraction * r.user_degrees()) == 0) or r.user_degrees().max() == 1
        return
    assert_partition(s, r)
    train, test = s.train.to_dataframe(), s.test.to_dataframe()
    if by == "global":
        assert s.test.nnz == min(max(round(fraction * r.nnz), 1), r.nnz - 1)
        assert test.timestamp.min() >= train.timestamp.max()
    else:
        latest_train = train.groupby("user").timestamp.max()
        earliest_test = test.groupby("user").timestamp.min()
        assert (earliest_test >= latest_train.reindex(earliest_test.index)).all()
        # Every user keeps a training rating; each holds out round(fraction * degree), capped at degree - 1.
        assert s.num_cold_users == 0 and s.train.num_users == r.num_users
        degree = pd.Series(r.user_degrees(), index=r.user_vocab.ids)
        held = test.user.value_counts().reindex(degree.index, fill_value=0)
        assert held.equals(np.minimum(np.rint(fraction * degree).astype(np.int64), degree - 1).rename("count"))
    # Deterministic, and blind to the order of the rows.
    assert split.temporal(r, fraction, by=by) == s
    shuffled = r.subset(np.random.default_rng(data_seed).permutation(r.nnz))
    t = split.temporal(shuffled, fraction, by=by)
    pd.testing.assert_frame_equal(table(t.test), table(s.test))
    pd.testing.assert_frame_equal(table(t.train), table(s.train))


# --- ml-100k -----------------------------------------------------------------------------------------------

# Cold test rows of the predefined splits: (distinct cold movies, rows with a cold user or movie).
# No split has cold users (every user has >= 20 ratings and at least one stays in every base file).
PREDEFINED_COLD = {
    "u1": (32, 32), "u2": (34, 36), "u3": (32, 36), "u4": (22, 27), "u5": (32, 36), "ua": (2, 2), "ub": (7, 7),
}


def _pandas_cold(directory, name):
    names = ["user", "item", "rating", "timestamp"]
    base = pd.read_csv(directory / f"{name}.base", sep="\t", names=names)
    test = pd.read_csv(directory / f"{name}.test", sep="\t", names=names)
    cold_user = ~test.user.isin(base.user)
    cold_item = ~test.item.isin(base.item)
    return test.user[cold_user].nunique(), test.item[cold_item].nunique(), int((cold_user | cold_item).sum())


@functools.cache
def full_ml100k(directory) -> Ratings:
    return data.read_ratings(directory / "u.data")


@pytest.mark.parametrize("name", split.PREDEFINED)
def test_predefined_ml100k(ml100k_dir, name):
    s = split.make_split(ml100k_dir, name)
    sizes = (80000, 20000) if name.startswith("u") and name[1].isdigit() else (90570, 9430)
    assert (s.train.nnz, s.test.nnz) == sizes and s.name == name
    assert (s.num_cold_users, s.num_cold_items, s.num_cold_rows) == (0, *PREDEFINED_COLD[name])
    assert (s.num_cold_users, s.num_cold_items, s.num_cold_rows) == _pandas_cold(ml100k_dir, name)
    if name in ("ua", "ub"):
        assert set(pd.Series(s.test.user_ids).value_counts().tolist()) == {10}
    # base + test is u.data exactly.
    pd.testing.assert_frame_equal(table(s.train.concat(s.test)), table(full_ml100k(ml100k_dir)))


def test_predefined_accepts_the_parent_directory(ml100k_dir):
    s = split.predefined(ml100k_dir.parent, "u1")
    assert s.train.num_users == 943 and s.test.nnz == 20000


def test_u1_to_u5_tests_partition_u_data(ml100k_dir):
    tests = [split.predefined(ml100k_dir, f"u{i}").test for i in range(1, 6)]
    union = tests[0].concat(tests[1]).concat(tests[2]).concat(tests[3]).concat(tests[4])  # concat rejects overlaps
    pd.testing.assert_frame_equal(table(union), table(full_ml100k(ml100k_dir)))


def test_random_splits_on_ml100k(ml100k_dir):
    r = full_ml100k(ml100k_dir)
    s = split.make_split(r, "cold-users", test_fraction=0.1, seed=0, given=5)
    assert s.test.num_users == round(0.1 * 943) and s.num_cold_users == 0
    assert s.train.nnz + s.test.nnz == 100000
    v = split.validation_split(s.train, 0.1, seed=0)
    assert v.num_cold_rows == 0 and v.train.num_users == s.train.num_users
    lko = split.make_split(r, "leave-k-out", k=10, seed=0)
    assert lko.test.nnz == 9430 and lko.num_cold_users == 0
    glob = split.make_split(r, "temporal", test_fraction=0.2)
    assert glob.test.nnz == 20000 and glob.test.timestamp.min() >= glob.train.timestamp.max()
    per_user = split.make_split(r, "temporal-user", test_fraction=0.2)
    assert per_user.num_cold_users == 0 and per_user.train.num_users == 943
    # Per user, ml-100k's users (20 to 737 ratings) each hold out round(0.2 * degree) of their latest ratings.
    assert per_user.test.nnz == int(np.rint(0.2 * r.user_degrees()).sum())


def test_module_doctests():
    import doctest

    assert doctest.testmod(split).failed == 0
