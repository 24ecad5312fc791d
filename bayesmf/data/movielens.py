"""MovieLens data sets: where they live, download, checksums, titles.

MovieLens belongs to GroupLens and must not be shipped with bayesmf: the
data is found at run time under :func:`data_home` (``$BAYESMF_DATA`` or
``~/.cache/bayesmf``) and, on request, downloaded from GroupLens with its
checksum verified.

What is verified:

* a download of any of the fixed releases ml-100k, ml-1m, ml-10m, ml-20m,
  ml-25m and ml-32m: the zip archive's md5 against the one GroupLens
  publishes beside it (``<name>.zip.md5``), before anything is extracted
  (:data:`ARCHIVE_CHECKSUMS`);
* a copy already on disk, each time it is read: the md5 of every ml-100k
  file, and of ml-1m's ``README``, ``movies.dat`` and ``users.dat``
  (:data:`CHECKSUMS`; no verified md5 of ml-1m's ``ratings.dat`` is known).
  Copies of ml-10m, ml-20m, ml-25m and ml-32m on disk are read unverified.
* ``ml-latest-small`` is not verified at all: GroupLens updates it in place,
  so no checksum stays valid.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd

from bayesmf.data.ratings import RatingScale, Ratings
from bayesmf.data.readers import ITEM_COLUMNS, pick_column, read_ratings
from bayesmf.data.vocabulary import normalize_ids

__all__ = [
    "ARCHIVE_CHECKSUMS",
    "CHECKSUMS",
    "DATASETS",
    "DOWNLOAD_URL",
    "SCALES",
    "data_home",
    "find_dataset",
    "load_movielens",
    "load_titles",
    "read_dataset_dir",
    "verify_checksums",
]



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

# The rating scale of each release (ml-10m and the CSV releases: half stars). Passed to
# read_ratings, so that a subset whose ratings happen to be whole stars keeps the half-star scale.
SCALES: dict[str, RatingScale] = {
    "ml-100k": RatingScale(1, 5, 1),
    "ml-1m": RatingScale(1, 5, 1),
    "ml-10m": RatingScale(0.5, 5, 0.5),
    "ml-latest-small": RatingScale(0.5, 5, 0.5),
    "ml-20m": RatingScale(0.5, 5, 0.5),
    "ml-25m": RatingScale(0.5, 5, 0.5),
    "ml-32m": RatingScale(0.5, 5, 0.5),
}

# Directory names of releases as their archives unpack (ml-10m.zip holds ml-10M100K/).
_ALIASES = {"ml-10M100K": "ml-10m"}

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

# md5 of the official zip archives of the fixed releases, as GroupLens publishes them in
# https://files.grouplens.org/datasets/movielens/<name>.zip.md5 (cross-checked: each value appears,
# for the same URL, in several independent public projects that verify their downloads with it).
# ml-latest-small has none: GroupLens updates it in place.
ARCHIVE_CHECKSUMS: dict[str, str] = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-10m": "ce571fd55effeba0271552578f2648bd",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
    "ml-32m": "d472be332d4daa821edc399621853b57",
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


def _home(path) -> Path:
    if path is None:
        path = os.environ.get("BAYESMF_DATA") or Path("~") / ".cache" / "bayesmf"
    return Path(path).expanduser()


def data_home(data_home=None) -> Path:
    """Where MovieLens copies live: the argument, else ``$BAYESMF_DATA``, else ``~/.cache/bayesmf``."""
    return _home(data_home)  # the functions whose argument is named data_home call _home too


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
    home = _home(data_home)
    target = home / name
    ratings_file = _RATINGS_FILE[name]
    url = DOWNLOAD_URL.format(name=name)
    if (target / ratings_file).is_file():
        return target
    if target.exists():
        raise FileNotFoundError(
            f"{target} exists but has no {ratings_file}: this copy of {name} is incomplete, so {name} is "
            f"unavailable; add a verified {ratings_file} there, or point find_dataset / load_movielens at a "
            "directory without this incomplete copy (data_home=, or $BAYESMF_DATA) and call it with download=True"
        )
    if not download:
        raise FileNotFoundError(
            f"MovieLens {name} not found at {target}; set BAYESMF_DATA (or pass data_home= to find_dataset / "
            f"load_movielens) to a directory holding {name}/, or call load_movielens({name!r}, download=True) to "
            f"fetch it from {url}"
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
    ``verify`` is true, every file with a known md5 is checked first. When it
    is named after a release (:data:`DATASETS`, or ``ml-10M100K``), the
    ratings are read on that release's scale (:data:`SCALES`), else the scale
    is inferred from them.

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
    release = _ALIASES.get(path.name, path.name)
    scale = SCALES.get(release)
    for filename, sep in (("u.data", "\t"), ("ratings.dat", "::"), ("ratings.csv", ",")):
        if (path / filename).is_file():
            return read_ratings(path / filename, sep=sep, scale=scale)
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
        item_col = pick_column(frame.columns, ITEM_COLUMNS, "item", path)
        title_col = pick_column(frame.columns, ("title", "name"), "title", path)
        frame = frame[[item_col, title_col]]
        frame.columns = ["item", "title"]
    else:
        raise ValueError(f"{path}: expected u.item, movies.dat or movies.csv")
    frame = frame.dropna(subset=["item"])
    items = normalize_ids(frame["item"], "item ids")
    titles = frame["title"].fillna("").astype(str).tolist()
    return dict(zip(items.tolist(), titles))
