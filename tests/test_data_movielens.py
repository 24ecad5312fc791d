"""MovieLens: directories, titles, checksums, the cache and download (bayesmf.data.movielens; no network)."""

from __future__ import annotations

import doctest
import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bayesmf import data
from bayesmf.data import RatingScale, movielens

U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n196\t51\t2\t880606923\n"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach GroupLens fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(movielens.urllib.request, "urlopen", refuse)


def write(path: Path, text: str, newline: str = "\n", encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


def test_module_doctests():
    assert doctest.testmod(movielens).failed == 0

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

    monkeypatch.setattr(movielens, "_fetch", fetch)
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
    # ml-10m unpacks to ml-10M100K/; it lands under its own name. (A fake archive cannot have the
    # published md5, so the archive check is lifted here; test_every_fixed_release_archive_is_verified.)
    monkeypatch.delitem(movielens.ARCHIVE_CHECKSUMS, "ml-10m")
    fake_fetch(monkeypatch, make_zip(tmp_path / "ten.zip", "ml-10M100K", {"ratings.dat": "1::1::4.5::1\n"}))
    assert data.find_dataset("ml-10m", home, download=True) == home / "ml-10m"


def test_download_checksum_failures_leave_nothing(tmp_path, monkeypatch):
    home = tmp_path / "home"
    fake_fetch(monkeypatch, make_zip(tmp_path / "one.zip", "ml-1m", {"ratings.dat": "1::1::5::1\n"}))
    with pytest.raises(ValueError, match=r"checksum mismatch for the downloaded .*ml-1m.zip: expected md5 c4d9eecf"):
        data.find_dataset("ml-1m", home, download=True)
    # Past the archive's md5 (lifted: a fake archive cannot have it), the files' md5s are checked.
    for name in ("ml-100k", "ml-20m", "ml-25m"):
        monkeypatch.delitem(movielens.ARCHIVE_CHECKSUMS, name)
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


# --- what is verified, scales of the releases, messages ------------------------------------------------


FIXED_RELEASES = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m")


def test_every_fixed_release_archive_is_verified(tmp_path, monkeypatch):
    assert set(data.ARCHIVE_CHECKSUMS) == set(FIXED_RELEASES)  # ml-latest-small changes in place: none
    assert all(len(md5) == 32 and int(md5, 16) >= 0 for md5 in data.ARCHIVE_CHECKSUMS.values())
    assert data.ARCHIVE_CHECKSUMS["ml-1m"] == "c4d9eecfca2ab87c1945afe126590906"
    home = tmp_path / "home"
    for name in FIXED_RELEASES:
        ratings_file = {"ml-100k": "u.data", "ml-1m": "ratings.dat", "ml-10m": "ratings.dat"}.get(name, "ratings.csv")
        fake_fetch(monkeypatch, make_zip(tmp_path / f"{name}.zip", name, {ratings_file: "1::1::5::1\n"}))
        expected = data.ARCHIVE_CHECKSUMS[name]
        with pytest.raises(ValueError, match=rf"checksum mismatch for the downloaded .*/{name}.zip: expected md5 {expected}"):
            data.find_dataset(name, home, download=True)
    assert list(home.iterdir()) == []


def test_releases_read_on_their_scale(tmp_path, monkeypatch):
    # A half-star release whose ratings happen to be whole stars stays on the half-star scale.
    csv_text = "userId,movieId,rating,timestamp\r\n1,1,4.0,1\r\n1,2,3.0,2\r\n2,1,5.0,3\r\n"
    fake_fetch(monkeypatch, make_zip(tmp_path / "small.zip", "ml-latest-small", {"ratings.csv": csv_text}))
    r = data.load_movielens("ml-latest-small", tmp_path / "home", download=True)
    assert r.scale == RatingScale(0.5, 5, 0.5) and r.rating.tolist() == [4.0, 3.0, 5.0]
    write(tmp_path / "ml-10M100K" / "ratings.dat", "1::1::5::1\n2::1::3::2\n")
    assert data.read_dataset_dir(tmp_path / "ml-10M100K").scale == RatingScale(0.5, 5, 0.5)
    write(tmp_path / "ml-1m-copy" / "ratings.dat", "1::1::5::1\n2::1::3::2\n")
    assert data.read_dataset_dir(tmp_path / "ml-1m-copy").scale == RatingScale(1, 5, 1)  # inferred
    assert set(data.SCALES) == set(data.DATASETS)


def test_messages_name_what_exists(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"call load_movielens\('ml-25m', download=True\)"):
        data.find_dataset("ml-25m", tmp_path)
