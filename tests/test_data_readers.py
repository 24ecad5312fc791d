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




def test_dataframe_of_real_split_matches_pandas(ml100k_dir):
    df = pd.read_csv(ml100k_dir / "u1.test", sep="\t", names=["user", "item", "rating", "timestamp"])
    r = data.read_ratings(ml100k_dir / "u1.test")
    pd.testing.assert_frame_equal(r.to_dataframe(), df.astype({"rating": float}), check_dtype=False)
