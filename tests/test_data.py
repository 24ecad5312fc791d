"""Ratings, vocabularies, scales, readers and the MovieLens cache (no network)."""

from __future__ import annotations

import doctest
import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesmf import data
from bayesmf.data import RatingScale, Ratings, Vocabulary


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach GroupLens fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(data.urllib.request, "urlopen", refuse)


def small() -> Ratings:
    return Ratings.from_arrays(
        [1, 1, 2, 3, 3, 3], [10, 20, 10, 10, 20, 30], [4.0, 3.0, 5.0, 1.0, 2.0, 5.0], [5, 6, 7, 8, 9, 10]
    )


def write(path: Path, text: str, newline: str = "\n", encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


def test_module_doctests():
    assert doctest.testmod(data).failed == 0


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


# --- readers -------------------------------------------------------------------------------------------


U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n196\t51\t2\t880606923\n"


def test_read_tab_u_data(tmp_path):
    r = data.read_ratings(write(tmp_path / "u.data", U_DATA))
    assert r.user_ids.tolist() == [196, 186, 22, 196] and r.item_ids.tolist() == [242, 302, 377, 51]
    assert r.rating.tolist() == [3, 3, 1, 2] and r.timestamp.tolist()[0] == 881250949
    assert r.scale == RatingScale(1, 5, 1) and r.user_vocab.ids.dtype == np.int64


def test_read_dat_half_stars(tmp_path):
    text = "1::122::5::838985046\n1::185::4.5::838983525\n2::122::0.5::868245920\n"
    r = data.read_ratings(write(tmp_path / "ratings.dat", text))
    assert r.rating.tolist() == [5.0, 4.5, 0.5] and r.scale == RatingScale(0.5, 5, 0.5)
    assert r.item_ids.tolist() == [122, 185, 122] and r.timestamp.tolist() == [838985046, 838983525, 868245920]


def test_read_movielens_csv_crlf_half_stars(tmp_path):
    text = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,3.5,964981247\n2,1,0.5,964982224\n"
    path = write(tmp_path / "ratings.csv", text, newline="\r\n")
    assert b"\r\n" in path.read_bytes()
    r = data.read_ratings(path)
    assert r.rating.tolist() == [4.0, 3.5, 0.5] and r.user_ids.tolist() == [1, 1, 2]
    assert r.timestamp.tolist() == [964982703, 964981247, 964982224]
    assert r.scale == RatingScale(0.5, 5, 0.5)


def test_read_generic_csv_with_string_ids_and_headerless(tmp_path):
    text = "user_id,item_id,rating,comment\nalice,The Matrix,5,great\nbob,Heat,3,\n"
    r = data.read_ratings(write(tmp_path / "mine.csv", text))
    assert r.user_vocab.ids.tolist() == ["alice", "bob"] and r.item_ids.tolist() == ["The Matrix", "Heat"]
    assert r.timestamp is None
    r2 = data.read_ratings(write(tmp_path / "plain.csv", "1,2,4\n3,4,5\n"))
    assert r2.user_ids.tolist() == [1, 3] and r2.rating.tolist() == [4, 5]
    r3 = data.read_ratings(write(tmp_path / "movie.csv", "User,Movie,Rating\n1,2,4\n"))
    assert r3.item_ids.tolist() == [2]


def test_format_round_trips(tmp_path):
    r = small()
    df = r.to_dataframe()
    df.to_csv(tmp_path / "out.csv", index=False)
    assert data.read_ratings(tmp_path / "out.csv") == r
    df.to_csv(tmp_path / "out.tsv", sep="\t", header=False, index=False)
    assert data.read_ratings(tmp_path / "out.tsv", format="tab") == r
    lines = "".join(f"{u}::{i}::{x:g}::{t}\n" for u, i, x, t in df.itertuples(index=False))
    assert data.read_ratings(write(tmp_path / "out.dat", lines)) == r


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("u.data", "1\t2\t3\t4\n5\t6\t7\n", r"line 2 is truncated or has an empty field \('5\\t6\\t7'\)"),
        ("u.data", "1\t2\t3\t4\n5\t6\t3\t8\t9\n", r"line 2 has more fields than line 1"),
        ("ratings.dat", "1::2::3::4\n5::6::3::8\n9::1\n", r"line 3 is truncated"),
        ("ratings.dat", "1::2::3::4\n5:6::3::8:\n", r"line 2 .* is not 'user::item::rating"),
        ("r.csv", "userId,movieId,rating\n1,2,4\n3,4,abc\n", r"line 3: rating 'abc' is not a number"),
        ("r.csv", "userId,movieId,rating\n1,2,4\n3,x,5\n", r"line 3: item id 'x' is not a number"),
        ("r.csv", "userId,movieId,rating\n1,2,4\n3,,5\n", r"line 3 is truncated or has an empty field"),
        ("r.csv", "person,movieId,rating\n1,2,4\n", r"no user column; the header has \['person', 'movieId', 'rat"),
        ("r.csv", "userId,movieId,rating\n1,2,4\n1,2,5\n", r"r.csv: 1 duplicate \(user, item\) pairs"),
        ("r.csv", "userId,movieId,rating\n", r"has no ratings"),
        ("u.data", "1\t2\n3\t4\n", r"line 1 has 2 fields"),
        ("x.txt", "1 2 3 4\n", r"x.txt: unrecognised ratings format .*expected tab-separated"),
        ("x.txt", "", r"x.txt: the file is empty"),
        ("x.txt", "\n\n", r"x.txt: the file has no data"),
    ],
)
def test_read_ratings_rejects_malformed_files(tmp_path, name, text, match):
    with pytest.raises(ValueError, match=match):
        data.read_ratings(write(tmp_path / name, text))


def test_read_ratings_missing_file_and_bad_format(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no ratings file at .*nothere\.csv"):
        data.read_ratings(tmp_path / "nothere.csv")
    write(tmp_path / "u.data", U_DATA)
    with pytest.raises(ValueError, match="format='parquet'"):
        data.read_ratings(tmp_path / "u.data", format="parquet")
    with pytest.raises(ValueError, match="outside the rating scale"):
        data.read_ratings(tmp_path / "u.data", scale=RatingScale(2, 5, 1))
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("u.data", U_DATA)
    with pytest.raises(ValueError, match="is a zip archive"):
        data.read_ratings(tmp_path / "a.zip")


def test_blank_lines_are_skipped_but_counted(tmp_path):
    r = data.read_ratings(write(tmp_path / "u.data", "1\t2\t3\t4\n\n5\t6\t4\t8\n\n"))
    assert r.nnz == 2
    with pytest.raises(ValueError, match="line 4 is truncated"):
        data.read_ratings(write(tmp_path / "v.data", "1\t2\t3\t4\n\n5\t6\t4\t8\n7\t8\n"))


def test_read_item_ratings(tmp_path):
    path = write(tmp_path / "new_user.csv", "movieId,rating\n1,5\n50,4.0\n")
    items, ratings = data.read_item_ratings(path, item_vocab=Vocabulary([1, 50]), scale=RatingScale(1, 5, 1))
    assert items.tolist() == [1, 50] and items.dtype == np.int64 and ratings.tolist() == [5.0, 4.0]
    items, _ = data.read_item_ratings(path, item_vocab=Vocabulary(["1", "2"]))
    assert items.tolist() == ["1", "50"]
    with pytest.raises(ValueError, match="outside the rating scale"):
        data.read_item_ratings(write(tmp_path / "bad.csv", "item,rating\n1,7\n"), scale=RatingScale(1, 5, 1))
    with pytest.raises(ValueError, match="no rating column"):
        data.read_item_ratings(write(tmp_path / "bad2.csv", "item,stars\n1,4\n"))


# --- directories, titles, checksums ------------------------------------------------------------------


def test_read_dataset_dir_layouts(tmp_path):
    write(tmp_path / "a" / "u.data", U_DATA)
    assert data.read_dataset_dir(tmp_path / "a").nnz == 4
    write(tmp_path / "b" / "ratings.dat", "1::1::5::1\n2::1::3::2\n")
    assert data.read_dataset_dir(tmp_path / "b").user_ids.tolist() == [1, 2]
    write(tmp_path / "c" / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,3.5,1\n", newline="\r\n")
    assert data.read_dataset_dir(tmp_path / "c").rating.tolist() == [3.5]
    write(tmp_path / "d" / "movies.dat", "1::Toy Story (1995)::Animation\n")
    with pytest.raises(FileNotFoundError, match="has movies.dat/users.dat but no ratings.dat"):
        data.read_dataset_dir(tmp_path / "d")
    (tmp_path / "e").mkdir()
    with pytest.raises(ValueError, match="no MovieLens ratings file in .*expected one of u.data"):
        data.read_dataset_dir(tmp_path / "e")
    with pytest.raises(FileNotFoundError, match="no MovieLens directory at"):
        data.read_dataset_dir(tmp_path / "missing")


def test_load_titles_formats(tmp_path):
    u_item = "1|Toy Story (1995)|01-Jan-1995||http://x|0|1\n2|Misérables, Les (1995)|x||y|0|0\n"
    write(tmp_path / "a" / "u.item", u_item, encoding="latin-1")
    assert data.load_titles(tmp_path / "a") == {1: "Toy Story (1995)", 2: "Misérables, Les (1995)"}
    write(tmp_path / "b" / "movies.dat", "1::Toy Story (1995)::Animation|Comedy\n2::Café au Lait (1993)::Comedy\n",
          encoding="latin-1")
    assert data.load_titles(tmp_path / "b")[2] == "Café au Lait (1993)"
    write(tmp_path / "c" / "movies.csv", 'movieId,title,genres\n1,"American President, The (1995)",Comedy\n')
    assert data.load_titles(tmp_path / "c") == {1: "American President, The (1995)"}
    (tmp_path / "d").mkdir()
    assert data.load_titles(tmp_path / "d") == {}


def test_checksums_table_and_mismatch(tmp_path):
    assert len(data.CHECKSUMS["ml-100k"]) == 21
    assert set(data.CHECKSUMS["ml-1m"]) == {"README", "movies.dat", "users.dat"}
    assert data.ARCHIVE_CHECKSUMS["ml-1m"] == "c4d9eecfca2ab87c1945afe126590906"
    directory = tmp_path / "ml-100k"
    write(directory / "u.info", "943 users\n1682 items\n99999 ratings\n")
    actual = hashlib.md5((directory / "u.info").read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=rf"u\.info: expected md5 6cae0afd8c0341aff31b631a192e57e6, got {actual}"):
        data.verify_checksums(directory, "ml-100k")
    # A directory named after the data set is verified before it is read; verify=False reads it anyway.
    write(directory / "u.data", U_DATA)
    with pytest.raises(ValueError, match="checksum mismatch"):
        data.read_dataset_dir(directory)
    assert data.read_dataset_dir(directory, verify=False).nnz == 4
    with pytest.raises(ValueError, match="unknown MovieLens data set 'ml-5k'; known: ml-100k, ml-1m"):
        data.verify_checksums(directory, "ml-5k")


def test_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("BAYESMF_DATA", str(tmp_path / "env"))
    assert data.data_home(tmp_path / "arg") == tmp_path / "arg"
    assert data.data_home() == tmp_path / "env"
    monkeypatch.delenv("BAYESMF_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.data_home() == tmp_path / ".cache" / "bayesmf"


# --- find_dataset / download (a local zip stands in for GroupLens) --------------------------------------


def make_zip(path: Path, top: str | None, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(f"{top}/{name}" if top else name, text)
    return path


def fake_fetch(monkeypatch, archive: Path) -> list:
    calls = []

    def fetch(url, destination):
        calls.append(url)
        shutil.copyfile(archive, destination)

    monkeypatch.setattr(data, "_fetch", fetch)
    return calls


def test_find_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown MovieLens data set 'ml-2k'; known: ml-100k, ml-1m, ml-10m"):
        data.find_dataset("ml-2k", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"ml-100k not found at .*set BAYESMF_DATA.*download=True"):
        data.find_dataset("ml-100k", tmp_path)
    write(tmp_path / "ml-1m" / "movies.dat", "1::Toy Story (1995)::Animation\n")
    with pytest.raises(FileNotFoundError, match="exists but has no ratings.dat: this copy of ml-1m is incomplete"):
        data.find_dataset("ml-1m", tmp_path, download=True)


def test_download_extracts_atomically_and_renames(tmp_path, monkeypatch):
    csv_text = "userId,movieId,rating,timestamp\r\n1,1,4.0,1\r\n1,2,3.5,2\r\n2,1,5.0,3\r\n"
    files = {"ratings.csv": csv_text, "movies.csv": "movieId,title\n1,A\n2,B\n"}
    archive = make_zip(tmp_path / "src.zip", "ml-latest-small", files)
    calls = fake_fetch(monkeypatch, archive)
    home = tmp_path / "home"
    path = data.find_dataset("ml-latest-small", home, download=True)
    assert path == home / "ml-latest-small" and (path / "ratings.csv").is_file()
    assert calls == ["https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"]
    assert [p.name for p in home.iterdir()] == ["ml-latest-small"]  # no temporary leftovers
    r = data.load_movielens("ml-latest-small", home, download=True)
    assert r.nnz == 3 and r.scale == RatingScale(0.5, 5, 0.5) and len(calls) == 1  # cached
    assert data.load_titles(path) == {1: "A", 2: "B"}
    # ml-10m unpacks to ml-10M100K/; it lands under its own name.
    fake_fetch(monkeypatch, make_zip(tmp_path / "ten.zip", "ml-10M100K", {"ratings.dat": "1::1::4.5::1\n"}))
    assert data.find_dataset("ml-10m", home, download=True) == home / "ml-10m"


def test_download_checksum_failures_leave_nothing(tmp_path, monkeypatch):
    home = tmp_path / "home"
    fake_fetch(monkeypatch, make_zip(tmp_path / "one.zip", "ml-1m", {"ratings.dat": "1::1::5::1\n"}))
    with pytest.raises(ValueError, match=r"checksum mismatch for the downloaded .*ml-1m.zip: expected md5 c4d9eecf"):
        data.find_dataset("ml-1m", home, download=True)
    fake_fetch(monkeypatch, make_zip(tmp_path / "hundred.zip", "ml-100k", {"u.data": U_DATA}))
    with pytest.raises(ValueError, match=r"checksum mismatch for .*u\.data: expected md5 6e47046882bad158b0ef"):
        data.find_dataset("ml-100k", home, download=True)
    fake_fetch(monkeypatch, make_zip(tmp_path / "empty.zip", "ml-20m", {"README.txt": "hi"}))
    with pytest.raises(ValueError, match="has no ratings.csv"):
        data.find_dataset("ml-20m", home, download=True)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    fake_fetch(monkeypatch, tmp_path / "junk.zip")
    with pytest.raises(ValueError, match="not a valid zip archive"):
        data.find_dataset("ml-25m", home, download=True)
    assert list(home.iterdir()) == []


def test_load_movielens_paths(tmp_path):
    write(tmp_path / "x" / "u.data", U_DATA)
    assert data.load_movielens(tmp_path / "x").nnz == 4
    assert data.load_movielens(str(tmp_path / "x" / "u.data")).nnz == 4
    with pytest.raises(FileNotFoundError, match="neither a known data set"):
        data.load_movielens(tmp_path / "nowhere")


# --- real MovieLens data ----------------------------------------------------------------------------------


def test_ml100k_u_data(ml100k_dir):
    r = data.read_dataset_dir(ml100k_dir)
    assert (r.num_users, r.num_items, r.nnz) == (943, 1682, 100000)
    assert r.user_vocab.ids.tolist() == list(range(1, 944)) and r.item_vocab.ids.tolist() == list(range(1, 1683))
    assert np.bincount(r.rating.astype(int)).tolist() == [0, 6110, 11370, 27145, 34174, 21201]
    assert (r.timestamp.min(), r.timestamp.max()) == (874724710, 893286638)
    assert r.user_degrees().min() == 20 and r.scale == RatingScale(1, 5, 1)
    assert sorted(data.verify_checksums(ml100k_dir, "ml-100k")) == sorted(data.CHECKSUMS["ml-100k"])
    titles = data.load_titles(ml100k_dir)
    assert len(titles) == 1682 and titles[1] == "Toy Story (1995)"


def test_truncated_real_file_fails_checksum(ml100k_dir, tmp_path):
    directory = tmp_path / "ml-100k"
    directory.mkdir()
    content = (ml100k_dir / "u.data").read_bytes()
    (directory / "u.data").write_bytes(content[: len(content) // 2])
    with pytest.raises(ValueError, match=r"u\.data: expected md5 6e47046882bad158b0efbb84cd5cb987, got [0-9a-f]{32}"):
        data.read_dataset_dir(directory)
    # Cut in the middle of a line, the file also fails to parse when read without verification.
    cut = content[: content.index(b"\n", 1000) + 3]
    (directory / "u.data").write_bytes(cut)
    with pytest.raises(ValueError, match=r"line \d+ is truncated"):
        data.read_dataset_dir(directory, verify=False)


def test_ml1m_without_ratings_is_unavailable(data_dir):
    directory = data_dir / "ml-1m"
    if not directory.is_dir() or (directory / "ratings.dat").exists():
        pytest.skip("needs the incomplete ml-1m copy (movies.dat, users.dat, no ratings.dat)")
    assert sorted(data.verify_checksums(directory, "ml-1m")) == ["README", "movies.dat", "users.dat"]
    with pytest.raises(FileNotFoundError, match="ml-1m is incomplete"):
        data.find_dataset("ml-1m", data_dir)
    with pytest.raises(FileNotFoundError, match="no ratings.dat"):
        data.load_movielens(directory)
    assert data.load_titles(directory)[1] == "Toy Story (1995)" and len(data.load_titles(directory)) == 3883


def test_dataframe_of_real_split_matches_pandas(ml100k_dir):
    df = pd.read_csv(ml100k_dir / "u1.test", sep="\t", names=["user", "item", "rating", "timestamp"])
    r = data.read_ratings(ml100k_dir / "u1.test")
    pd.testing.assert_frame_equal(r.to_dataframe(), df.astype({"rating": float}), check_dtype=False)
