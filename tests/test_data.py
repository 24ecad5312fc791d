"""The data model: vocabularies, rating scales and Ratings (bayesmf.data.vocabulary, bayesmf.data.ratings)."""

from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesmf import data
from bayesmf.data import RatingScale, Ratings, Vocabulary
from bayesmf.data import ratings as ratings_module
from bayesmf.data import vocabulary as vocabulary_module


def small() -> Ratings:
    return Ratings.from_arrays(
        [1, 1, 2, 3, 3, 3], [10, 20, 10, 10, 20, 30], [4.0, 3.0, 5.0, 1.0, 2.0, 5.0], [5, 6, 7, 8, 9, 10]
    )


def test_module_doctests():
    assert doctest.testmod(data).failed == 0
    assert doctest.testmod(ratings_module).failed == 0
    assert doctest.testmod(vocabulary_module).failed == 0


# --- Vocabulary ----------------------------------------------------------------------------------


def test_vocabulary_from_values_int_and_str():
    vocab, codes = Vocabulary.from_values([30, 10, 30, 20])
    assert vocab.ids.dtype == np.int64 and vocab.ids.tolist() == [10, 20, 30]
    assert codes.dtype == np.int32 and codes.tolist() == [2, 0, 2, 1]
    svocab, scodes = Vocabulary.from_values(np.array(["b", "a", "b"]))
    assert svocab.ids.dtype == object and svocab.ids.tolist() == ["a", "b"]
    assert scodes.tolist() == [1, 0, 1]
    assert len(vocab) == 3 and 20 in vocab and 25 not in vocab and "20" not in vocab
    assert "a" in svocab and 1 not in svocab


def test_vocabulary_index_flag_raise_and_types():
    vocab = Vocabulary([5, 7, 9])
    assert vocab.index([np.int32(9), 5]).tolist() == [2, 0]  # NumPy and Python ints alike
    assert vocab.index(np.array([[7, 9], [5, 7]])).tolist() == [[1, 2], [0, 1]]  # shape kept
    assert vocab.index([7, 8, "7"], missing="flag").tolist() == [1, -1, -1]  # "7" is not 7
    with pytest.raises(KeyError, match=r"2 of 3 ids are not in the vocabulary .*integers.*\[8, 99\]"):
        vocab.index([5, 8, 99])
    with pytest.raises(ValueError, match="missing="):
        vocab.index([5], missing="ignore")
    assert vocab.lookup([2, 0]).tolist() == [9, 5]
    with pytest.raises(IndexError, match=r"outside 0\.\.2"):
        vocab.lookup([3])
    with pytest.raises(IndexError, match="outside"):
        vocab.lookup([-1])


def test_vocabulary_rejects_duplicates_and_mixed_ids():
    with pytest.raises(ValueError, match=r"must be unique; 1 are repeated, e.g. \[3\]"):
        Vocabulary([1, 3, 3])
    with pytest.raises(ValueError, match="all integers or all strings"):
        Vocabulary(np.array([1, "a"], dtype=object))
    with pytest.raises(ValueError, match="not integers"):
        Vocabulary([1.0, 2.5])
    with pytest.raises(ValueError, match="booleans"):
        Vocabulary([True, False])


def test_vocabulary_equality_and_immutability():
    a, b = Vocabulary([1, 2]), Vocabulary(np.array([1, 2], dtype=np.int32))
    assert a == b and a != Vocabulary([2, 1]) and a != Vocabulary(["1", "2"])
    with pytest.raises(ValueError):
        a.ids[0] = 5
    assert a.union(Vocabulary([3, 1])).ids.tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="integer ids with one of string ids"):
        a.union(Vocabulary(["x"]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**62), unique=True, max_size=50), st.randoms(use_true_random=False))
def test_vocabulary_round_trip_int(ids, random):
    vocab = Vocabulary(ids)
    indices = np.arange(len(ids))
    random.shuffle(ids)
    assert np.array_equal(vocab.index(vocab.lookup(indices)), indices)
    assert vocab.lookup(vocab.index(ids)).tolist() == ids


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet="abxyz019 :-_éü", max_size=8), unique=True, max_size=50))
def test_vocabulary_round_trip_str(ids):
    vocab, codes = Vocabulary.from_values(ids) if ids else (Vocabulary(np.array([], dtype=object)), None)
    indices = np.arange(len(vocab))
    assert np.array_equal(vocab.index(vocab.lookup(indices)), indices)
    if ids:
        assert vocab.lookup(codes).tolist() == ids
        assert np.array_equal(vocab.index(ids), codes)


# --- RatingScale ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, expected",
    [
        ([1, 3, 5, 4], (1.0, 5.0, 1.0)),
        ([2, 3, 4], (1.0, 5.0, 1.0)),  # a subset of the star scale is still the star scale
        ([0, 10, 7], (0.0, 10.0, 1.0)),
        ([0.5, 3.5, 5.0], (0.5, 5.0, 0.5)),
        ([1.5, 4.0], (0.5, 5.0, 0.5)),  # likewise for half stars
        ([0.5, 7.5], (0.5, 7.5, 0.5)),
        ([0.1, 2.7], (0.1, 2.7, None)),
    ],
)
def test_scale_infer(values, expected):
    scale = RatingScale.infer(values)
    assert (scale.low, scale.high, scale.step) == expected


def test_scale_validate_clip_and_bad_scales():
    scale = RatingScale(1, 5, 1)
    scale.validate([1, 2, 5])
    match = r"2 ratings are outside the rating scale \[1, 5\] in steps of 1, e.g. \[0.0, 3.5\]"
    with pytest.raises(ValueError, match=match):
        scale.validate([0, 3, 3.5])
    RatingScale(0.5, 5, 0.5).validate([0.5, 3.5, 5.0])
    assert RatingScale(1, 5, None).clip(np.array([0.2, 3.3, 7.0])).tolist() == [1.0, 3.3, 5.0]
    assert scale.contains([1, 1.5, 6]).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="low <= high"):
        RatingScale(5, 1, 1)
    with pytest.raises(ValueError, match="step must be positive"):
        RatingScale(1, 5, 0)
    with pytest.raises(ValueError, match="no ratings"):
        RatingScale.infer([])


# --- Ratings: construction and validation --------------------------------------------------------


def test_from_arrays_builds_sorted_vocabularies():
    r = Ratings.from_arrays([20, 10, 20], ["b", "a", "a"], [4, 3, 5], [1, 2, 3])
    assert r.user_vocab.ids.tolist() == [10, 20] and r.item_vocab.ids.tolist() == ["a", "b"]
    assert r.user_index.dtype == np.int32 and r.item_index.dtype == np.int32
    assert r.rating.dtype == np.float32 and r.timestamp.dtype == np.int64
    assert r.user_ids.tolist() == [20, 10, 20] and r.item_ids.tolist() == ["b", "a", "a"]
    assert (r.num_users, r.num_items, r.nnz, len(r)) == (2, 2, 3, 3)
    assert r.global_mean == pytest.approx(4.0)
    assert r.scale == RatingScale(1, 5, 1)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([1, 2, 3], [1, 2], [4, 4, 4]), {}, r"one length, got users: 3, items: 2, ratings: 3"),
        (([1, 2], [1, 2], [4, 4], [1]), {}, r"users: 2, items: 2, ratings: 2, timestamps: 1"),
        (([], [], []), {}, "no ratings"),
        (
            ([1, 2, 3, 4], [1, 2, 3, 4], [4, np.nan, 3, np.inf]), {},
            r"2 ratings are NaN or infinite, first at rows \[1, 3\]",
        ),
        (
            ([1, 2], [1, 2], [4, 6]), {"scale": RatingScale(1, 5, 1)},
            r"1 ratings are outside the rating scale \[1, 5\].*\[6.0\]",
        ),
        (([1, 2], [1, 2], [4, 3.5]), {"scale": RatingScale(1, 5, 1)}, "outside the rating scale"),
        (([1, -3], [1, 2], [4, 4]), {}, r"1 user ids are negative \(e.g. \[-3\] at rows \[1\]\)"),
        (([1, 2], [1.5, 2.0], [4, 4]), {}, r"1 item ids are not integers \(e.g. \[1.5\]"),
        (([1, 2], [1, np.nan], [4, 4]), {}, r"1 item ids are missing .*first at rows \[1\]"),
        ((["a", None], [1, 2], [4, 4]), {}, r"1 user ids are missing \(None or NaN\)"),
        (([1, "a"], [1, 2], [4, 4]), {}, "all integers or all strings"),
        (
            ([1, 2, 1], [10, 20, 10], [4, 4, 5]), {},
            r"1 duplicate \(user, item\) pairs, e.g. user 1 and item 10 at rows \[0, 2\]",
        ),
        (([1, 2], [1, 2], ["x", "y"]), {}, "ratings must be numbers"),
        (([1, 2], [1, 2], [4, 4], [1.5, 2]), {}, "timestamps are missing or not whole seconds"),
        (([1, 2], [1, 2], [4, 4]), {"duplicates": "sum"}, r"duplicates='sum'"),
        (
            ([1, 2], [1, 2], [4, 4]), {"user_vocab": Vocabulary([1, 3])},
            r"1 user ids are not in the given user_vocab, e.g. \[2\]",
        ),
        (([[1, 2]], [[1, 2]], [[4, 4]]), {}, "must be 1-D"),
    ],
)
def test_from_arrays_rejects_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Ratings.from_arrays(*args, **kwargs)


def test_duplicate_policies():
    users, items, ratings, times = [1, 2, 1, 1], [10, 10, 10, 20], [4.0, 2.0, 5.0, 3.0], [1, 2, 3, 4]
    first = Ratings.from_arrays(users, items, ratings, times, duplicates="first")
    last = Ratings.from_arrays(users, items, ratings, times, duplicates="last")
    mean = Ratings.from_arrays(users, items, ratings, times, duplicates="mean")
    assert first.rating.tolist() == [4.0, 2.0, 3.0] and first.timestamp.tolist() == [1, 2, 4]
    assert last.rating.tolist() == [2.0, 5.0, 3.0] and last.timestamp.tolist() == [2, 3, 4]
    assert mean.rating.tolist() == [4.5, 2.0, 3.0] and mean.timestamp.tolist() == [3, 2, 4]
    assert mean.user_ids.tolist() == [1, 2, 1] and mean.item_ids.tolist() == [10, 10, 20]


def test_constructor_checks_indices():
    vocab = Vocabulary([1, 2])
    with pytest.raises(ValueError, match=r"user_index has values outside 0\.\.1"):
        Ratings(np.array([0, 2]), np.array([0, 1]), np.array([3.0, 4.0]), vocab, vocab, RatingScale(1, 5, 1))
    with pytest.raises(ValueError, match="one length"):
        Ratings(np.array([0]), np.array([0, 1]), np.array([3.0, 4.0]), vocab, vocab, RatingScale(1, 5, 1))


def test_given_vocabularies_are_kept():
    items = Vocabulary([30, 20, 10])
    r = Ratings.from_arrays([1, 1], [10, 20], [4, 5], item_vocab=items)
    assert r.item_vocab is items and r.item_index.tolist() == [2, 1] and r.num_items == 3
    assert r.item_degrees().tolist() == [0, 1, 1]
    assert r.item_means().tolist() == [4.5, 5.0, 4.0]  # global mean for the unrated item


def test_dataframe_round_trip_and_missing_column():
    r = small()
    df = r.to_dataframe()
    assert list(df.columns) == ["user", "item", "rating", "timestamp"]
    assert Ratings.from_dataframe(df, timestamp="timestamp") == r
    renamed = df.rename(columns={"user": "userId", "item": "movieId"})
    assert Ratings.from_dataframe(renamed, user="userId", item="movieId", timestamp="timestamp") == r
    with pytest.raises(ValueError, match=r"no column\(s\) \['item'\]"):
        Ratings.from_dataframe(renamed, user="userId")


def test_degrees_and_means():
    r = small()
    assert r.user_degrees().tolist() == [2, 1, 3]
    assert r.item_degrees().tolist() == [3, 2, 1]
    assert r.item_means().tolist() == pytest.approx([10 / 3, 2.5, 5.0])


def test_subset_compact_and_not():
    r = small()
    mask = r.user_ids != 2
    sub = r.subset(mask)
    assert sub.user_vocab.ids.tolist() == [1, 3] and sub.nnz == 5
    assert sub.user_ids.tolist() == r.user_ids[mask].tolist()
    assert sub.timestamp.tolist() == r.timestamp[mask].tolist()
    kept = r.subset(np.array([5, 0]), compact=False)
    assert kept.user_vocab == r.user_vocab and kept.item_vocab == r.item_vocab
    assert kept.item_ids.tolist() == [30, 10] and kept.user_degrees().tolist() == [1, 0, 1]
    only = r.subset(np.array([5]))
    assert only.item_vocab.ids.tolist() == [30] and only.item_index.tolist() == [0]
    with pytest.raises(ValueError, match=r"mask must have shape \(6,\)"):
        r.subset(np.ones(4, bool))


def test_concat_unions_vocabularies():
    r = small()
    mask = np.array([True, False, True, False, True, False])
    a, b = r.subset(mask), r.subset(~mask)
    both = a.concat(b)
    assert both.nnz == r.nnz and both.user_vocab.ids[: a.num_users].tolist() == a.user_vocab.ids.tolist()
    assert set(zip(both.user_ids.tolist(), both.item_ids.tolist(), both.rating.tolist())) == set(
        zip(r.user_ids.tolist(), r.item_ids.tolist(), r.rating.tolist())
    )
    with pytest.raises(ValueError, match="duplicate"):
        a.concat(a)


def test_concat_duplicate_error_offers_no_missing_parameter():
    # Ratings.concat has no duplicates= parameter: its error used to say "pass duplicates='mean'".
    a = Ratings.from_arrays([1, 2], [1, 1], [4.0, 5.0])
    with pytest.raises(ValueError, match="a pair may be in one of the two only") as info:
        a.concat(a)
    assert "pass duplicates=" not in str(info.value)


def test_sorted_input_with_an_adjacent_duplicate():
    # Sorted pairs skip the hash of every pair; a repeat next to itself is still found.
    with pytest.raises(ValueError, match=r"1 duplicate \(user, item\) pairs, e.g. user 1 and item 2 at rows \[1, 2\]"):
        Ratings.from_arrays([1, 1, 1, 2], [1, 2, 2, 1], [4.0, 3.0, 5.0, 1.0])
    r = Ratings.from_arrays(np.array([1, 1, 2], np.int32), np.array([1, 2, 1], np.int32), np.float32([4, 3, 5]))
    assert r.user_vocab.ids.dtype == np.int64 and r.rating.dtype == np.float32 and r.nnz == 3


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 2**40), min_size=1, max_size=60),
    st.sampled_from([np.int32, np.int64, np.uint16, np.uint32]),
    st.booleans(),
)
def test_from_values_matches_pandas_factorize(values, dtype, small):
    """The lookup-table path (small ids) and pandas' path give pandas' sorted factorization."""
    ids = np.asarray(values) % (2**15 if small else np.iinfo(dtype).max)
    ids = ids.astype(dtype)
    vocab, codes = Vocabulary.from_values(ids)
    expected_codes, expected_uniques = pd.factorize(ids.astype(np.int64), sort=True)
    assert vocab.ids.dtype == np.int64 and codes.dtype == np.int32
    assert vocab.ids.tolist() == expected_uniques.tolist() and codes.tolist() == expected_codes.tolist()


def test_from_values_rejects_ids_beyond_int64():
    with pytest.raises(ValueError, match="exceed the int64 range"):
        Vocabulary.from_values(np.array([1, 2**63], dtype=np.uint64))
