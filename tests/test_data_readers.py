"""Ratings files: the MovieLens layouts and generic delimited files (bayesmf.data.readers)."""

from __future__ import annotations

import doctest
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayesmf import data
from bayesmf.data import RatingScale, Ratings, Vocabulary, readers

U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n196\t51\t2\t880606923\n"


def small() -> Ratings:
    return Ratings.from_arrays(
        [1, 1, 2, 3, 3, 3], [10, 20, 10, 10, 20, 30], [4.0, 3.0, 5.0, 1.0, 2.0, 5.0], [5, 6, 7, 8, 9, 10]
    )


def write(path: Path, text: str, newline: str = "\n", encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


def test_module_doctests():
    assert doctest.testmod(readers).failed == 0



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
        # (a space-separated "1 2 3 4" is read now: see test_separators_sniffed)
        ("x.txt", "12345\n", r"x.txt: unrecognised ratings format .*expected tab-separated"),
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


def test_read_ids(tmp_path):
    """Users to rank and (user, item) pairs to predict: the columns found by name, typed as a model's ids."""
    path = write(tmp_path / "pairs.csv", "\nuserId,movieId,rating\n1,5,3\n\n7,50,4\n")  # a blank line before the header
    users, items = data.read_ids(path)
    assert users.tolist() == [1, 7] and items.tolist() == [5, 50] and users.dtype.kind == "i"
    users, items = data.read_ids(path, vocabs=(Vocabulary(["1", "7"]), Vocabulary([5, 50])))
    assert users.tolist() == ["1", "7"] and items.tolist() == [5, 50]
    (users,) = data.read_ids(write(tmp_path / "padded.csv", "user\n007\n\n8\n"), ("user",), (Vocabulary(["007"]),))
    assert users.tolist() == ["007", "8"]  # the text, not the number
    (users,) = data.read_ids(write(tmp_path / "users.tsv", "user\tname\na1\tx\nb2\ty\n"), ("user",))
    assert users.tolist() == ["a1", "b2"]
    with pytest.raises(ValueError, match=r"line 3: item id \(this model's ids are integers\) 'x' is not a number"):
        data.read_ids(write(tmp_path / "bad.csv", "user,item\n1,2\n3,x\n"), vocabs=(None, Vocabulary([2])))
    with pytest.raises(ValueError, match="line 3 is truncated or has an empty field"):
        data.read_ids(write(tmp_path / "short.csv", "user,item\n1,2\n3,\n"))
    with pytest.raises(ValueError, match="a header and nothing under it"):
        data.read_ids(write(tmp_path / "header.csv", "user,item\n"))
    with pytest.raises(ValueError, match="no item column"):
        data.read_ids(write(tmp_path / "noitem.csv", "user,rating\n1,4\n"))
    with pytest.raises(ValueError, match="empty"):
        data.read_ids(write(tmp_path / "empty.csv", ""))
    with pytest.raises(FileNotFoundError, match="no file at"):
        data.read_ids(tmp_path / "missing.csv")




def test_dataframe_of_real_split_matches_pandas(ml100k_dir):
    df = pd.read_csv(ml100k_dir / "u1.test", sep="\t", names=["user", "item", "rating", "timestamp"])
    r = data.read_ratings(ml100k_dir / "u1.test")
    pd.testing.assert_frame_equal(r.to_dataframe(), df.astype({"rating": float}), check_dtype=False)


# --- any delimited file: separators, headers, column mappings, duplicates, scales ----------------------


def test_headerless_file_with_string_ids(tmp_path):
    # Was refused with "no user column; the header has ['u52', 'm10', '1']".
    r = data.read_ratings(write(tmp_path / "plain.csv", "u52,m10,1\nu7,m10,5\nu52,m3,4\n"))
    assert r.user_ids.tolist() == ["u52", "u7", "u52"] and r.item_ids.tolist() == ["m10", "m10", "m3"]
    assert r.rating.tolist() == [1, 5, 4] and r.user_vocab.is_string and r.item_vocab.is_string
    with_time = data.read_ratings(write(tmp_path / "t.csv", "u52,m10,1,100\nu7,m10,5,200\n"))
    assert with_time.timestamp.tolist() == [100, 200]
    # Forced either way.
    assert data.read_ratings(tmp_path / "plain.csv", header=False).nnz == 3
    with pytest.raises(ValueError, match=r"plain.csv: no user column; the header has \['u52', 'm10', '1'\]"):
        data.read_ratings(tmp_path / "plain.csv", header=True)


@pytest.mark.parametrize(
    "text, sep",
    [
        ("1;10;4;100\n2;10;3;200\n", ";"),
        ("1 10 4 100\n2  10\t3 200\n", " "),  # runs of spaces and tabs
        ("userId;movieId;rating;timestamp\n1;10;4;100\n2;10;3;200\n", ";"),
        ("user item rating timestamp\n1 10 4 100\n2 10 3 200\n", " "),
        ("user::item::rating::timestamp\n1::10::4::100\n2::10::3::200\n", "::"),
    ],
)
def test_separators_sniffed_or_given(tmp_path, text, sep):
    path = write(tmp_path / "r.txt", text)
    for r in (data.read_ratings(path), data.read_ratings(path, sep=sep)):
        assert r.user_ids.tolist() == [1, 2] and r.item_ids.tolist() == [10, 10]
        assert r.rating.tolist() == [4, 3] and r.timestamp.tolist() == [100, 200]


def test_semicolon_file_with_decimal_points_is_not_split_at_commas(tmp_path):
    r = data.read_ratings(write(tmp_path / "r.txt", "a;x,y;3.5\nb;z;4\n"))
    assert r.item_ids.tolist() == ["x,y", "z"] and r.rating.tolist() == [3.5, 4.0]


def test_column_mapping_by_name_and_position(tmp_path):
    text = "when,customer,product,stars,note\n100,alice,tea,5,ok\n200,bob,tea,3,\n300,alice,cake,4,nice\n"
    path = write(tmp_path / "shop.csv", text)
    by_name = data.read_ratings(path, columns={"user": "customer", "item": "product", "rating": "stars",
                                               "timestamp": "when"})
    assert by_name.user_ids.tolist() == ["alice", "bob", "alice"] and by_name.rating.tolist() == [5, 3, 4]
    assert by_name.timestamp.tolist() == [100, 200, 300]
    without_time = Ratings.from_arrays(by_name.user_ids, by_name.item_ids, by_name.rating)
    assert data.read_ratings(path, columns=["Customer", "PRODUCT", "stars"]) == without_time  # any case
    by_position = data.read_ratings(path, columns={"user": 1, "item": 2, "rating": 3, "timestamp": 0})
    assert by_position == by_name
    headerless = write(tmp_path / "plain.txt", "tea;4.5;alice;x\ncake;3;bob;y\n")
    r = data.read_ratings(headerless, columns=[2, 0, 1])
    assert r.user_ids.tolist() == ["alice", "bob"] and r.item_ids.tolist() == ["tea", "cake"]
    assert r.rating.tolist() == [4.5, 3.0]


@pytest.mark.parametrize(
    "columns, error, match",
    [
        ({"user": "customer", "item": "product", "rating": "score"}, ValueError,
         r"shop.csv: no column 'score' \(for the rating\); the header has \['customer', 'product', 'stars'\]"),
        ({"user": 0, "item": 1, "rating": 7}, ValueError, r"shop.csv: columns puts the rating in field 7"),
        ({"user": 0, "item": 1}, ValueError, "does not say which column holds the rating"),
        ({"user": 0, "item": 1, "rating": 2, "stars": 2}, ValueError, r"unknown keys \['stars'\]"),
        ({"user": 0, "item": 0, "rating": 2}, ValueError, "two roles share one column"),
        ([0, 1], ValueError, "3 or 4"),
        ({"user": 0, "item": 1.5, "rating": 2}, TypeError, "name .* or a 0-based position"),
        ("customer", TypeError, "columns must be a dict or a list"),
    ],
)
def test_column_mapping_errors(tmp_path, columns, error, match):
    path = write(tmp_path / "shop.csv", "customer,product,stars\nalice,tea,5\n")
    with pytest.raises(error, match=match):
        data.read_ratings(path, columns=columns)


def test_column_names_need_a_header(tmp_path):
    path = write(tmp_path / "plain.csv", "1,2,4\n")
    with pytest.raises(ValueError, match=r"plain.csv: columns names user column 'customer', but line 1 is not a header"):
        data.read_ratings(path, columns={"user": "customer", "item": 1, "rating": 2}, header=False)


def test_duplicates_policy(tmp_path):
    path = write(tmp_path / "r.csv", "userId,movieId,rating,timestamp\n1,2,4,10\n1,3,2,11\n1,2,5,12\n")
    # The error's advice names a parameter read_ratings has, and the file's lines.
    match = r"r.csv: 1 duplicate \(user, item\) pairs, e.g. user 1 and item 2 at lines \[2, 4\]; pass duplicates="
    with pytest.raises(ValueError, match=match):
        data.read_ratings(path)
    assert data.read_ratings(path, duplicates="last").rating.tolist() == [2, 5]  # the last row is kept
    assert data.read_ratings(path, duplicates="first").rating.tolist() == [4, 2]
    mean = data.read_ratings(path, duplicates="mean")
    assert mean.rating.tolist() == [4.5, 2] and mean.timestamp.tolist() == [12, 11]
    with pytest.raises(ValueError, match=r"duplicates='max'; expected one of"):
        data.read_ratings(path, duplicates="max")


def test_explicit_scale(tmp_path):
    # A half-star data set whose sample has only whole stars: inferred whole-star, unless told.
    path = write(tmp_path / "ratings.csv", "userId,movieId,rating\n1,1,4.0\n1,2,3.0\n2,1,5.0\n")
    assert data.read_ratings(path).scale == RatingScale(1, 5, 1)
    assert data.read_ratings(path, scale=(0.5, 5, 0.5)).scale == RatingScale(0.5, 5, 0.5)
    assert data.read_ratings(path, scale=RatingScale(0, 10, None)).scale == RatingScale(0, 10, None)
    assert data.read_ratings(path, scale=[1, 5]).scale == RatingScale(1, 5, None)
    with pytest.raises(ValueError, match=r"ratings.csv: 1 ratings are outside the rating scale \[1, 4\].* at lines \[4\]"):
        data.read_ratings(path, scale=(1, 4, 1))
    with pytest.raises(TypeError, match="scale must be a RatingScale or"):
        data.read_ratings(path, scale="half stars")


@pytest.mark.parametrize(
    "text, match",
    [
        ("userId,movieId,rating\n1,2,4\n3,4,inf\n", r"1 ratings are NaN or infinite, first at lines \[3\]"),
        ("userId,movieId,rating\n1,2,4\n3,4,nan\n", r"line 3: rating 'nan' is not a number"),
        ("userId,movieId,rating\n1,2,4\n-3,4,5\n", r"1 user ids are negative \(e.g. \[-3\] at lines \[3\]\)"),
        ("userId,movieId,rating\n1,2,4\n\n3,4,5\n3,x\n", r"line 5 is truncated"),
        ("1,2,4\n3,4,5,6\n", r"line 2 has more fields than line 1"),
        ("1:2::4\n", r"line 1 .* is not 'user::item::rating"),
        ("1::2::4\n1::2::5::3::9\n", r"line 2 has more fields"),
    ],
)
def test_errors_name_the_file_and_line(tmp_path, text, match):
    with pytest.raises(ValueError, match=r"r.txt: .*" + match):
        data.read_ratings(write(tmp_path / "r.txt", text))


def test_format_keeps_working_and_conflicts_with_sep(tmp_path):
    path = write(tmp_path / "u.data", U_DATA)
    assert data.read_ratings(path, format="tab") == data.read_ratings(path, sep="\t") == data.read_ratings(path)
    with pytest.raises(ValueError, match=r"format='tab' means sep='\\t', but sep=',' was given"):
        data.read_ratings(path, format="tab", sep=",")
    with pytest.raises(ValueError, match=r"sep='ab'; expected one character"):
        data.read_ratings(path, sep="ab")


def test_ids_beyond_int32(tmp_path):
    r = data.read_ratings(write(tmp_path / "r.csv", "3000000000,1,4\n1,5000000000,5\n"))
    assert r.user_ids.tolist() == [3000000000, 1] and r.item_ids.tolist() == [1, 5000000000]


def test_fast_and_careful_paths_agree(tmp_path, monkeypatch):
    """A numeric file parsed in parallel parts and small chunks equals its field-by-field reading."""
    rng = np.random.default_rng(0)
    n = 20_000
    users = np.repeat(np.arange(1, 401), n // 400) * 7
    items = np.tile(np.arange(n // 400), 400) * 3 + 1
    frame = pd.DataFrame({"userId": users, "movieId": items, "rating": rng.integers(1, 11, n) / 2,
                          "timestamp": rng.integers(10**9, 2 * 10**9, n)})
    path = tmp_path / "ratings.csv"
    frame.to_csv(path, index=False, lineterminator="\r\n")
    monkeypatch.setattr(readers, "_CHUNK_ROWS", 1000)
    monkeypatch.setattr(readers, "_MIN_PART_BYTES", 1000)
    monkeypatch.setattr(readers, "_MAX_PARTS", 3)
    monkeypatch.setattr(readers.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    line, first = readers._first_line(path)
    layout = readers._layout(path, line, first, ",", None, None)
    assert len(readers._parts(path, 3)) == 3
    fast = readers._read_fast(path, layout)
    assert fast is not None and fast["user"].dtype == np.int32 and fast["rating"].dtype == np.float32
    careful, lines = readers._read_careful(path, layout)
    assert lines.tolist() == list(range(2, n + 2))
    for role in ("user", "item", "rating", "timestamp"):
        np.testing.assert_array_equal(fast[role], careful[role])
    r = data.read_ratings(path)
    assert r.nnz == n and r.scale == RatingScale(0.5, 5, 0.5)
    np.testing.assert_array_equal(r.to_dataframe().to_numpy(), frame.to_numpy())
    # A blank line sends the file to the careful path; the result is the same.
    path.write_bytes(path.read_bytes() + b"\r\n")
    assert readers._read_fast(path, layout) is None and data.read_ratings(path) == r
