"""Side features of users or movies, encoded for a feature-informed (Macau) prior.

A features table is a ``pandas.DataFrame`` whose index is the user (or movie)
id. :func:`fit_features` learns a :class:`FeatureEncoder` from the rows of
the *training* ids: each categorical column becomes one-hot columns (one per
level seen in training), each numeric column is standardised with its
training mean and standard deviation, and then every encoded column is
centred on the training rows, so that its training mean is exactly 0.
:func:`encode_features` applies the encoder to any rows, giving a float32
matrix ``X`` of shape ``(n, F)``.

Why centre: in a Macau prior the mean of a row's factors is ``mu + B x``.
With centred columns, ``x = 0`` is the average training row, so a user whose
features are average, or missing and handled as below, gets exactly the plain
mean-based prior ``mu`` of the model without features. Every categorical
level keeps its column (no reference level is dropped); after centring each
block's columns sum to 0 on every row, a linear dependence the Gaussian prior
on ``B`` resolves like a ridge penalty.

Handling of imperfect data (every case is tested):

* **NaN values** (numeric or categorical) are imputed at the training mean
  of their columns: the encoded block is 0 after centring. Training means,
  standard deviations and level frequencies are computed over the training
  rows with a value, so imputing never moves them.
* **Ids with no feature row**: ``missing="raise"`` (the default) is a
  ``KeyError`` naming them; ``missing="mean"`` encodes them as ``x = 0`` (the
  mean-based prior) and reports them in a :class:`FeatureWarning`.
* **Categories not seen in training**: ``unseen="raise"`` (the default) is a
  ``ValueError`` naming the column and the values; ``unseen="mean"`` gives
  the column's block its training mean, i.e. 0 after centring (the row is
  treated as if that value were missing), with a :class:`FeatureWarning`.
* **Constant columns** on the training rows (a numeric column with standard
  deviation 0, a categorical column with one level) would encode as all
  zeros: they are dropped, and listed in :attr:`FeatureEncoder.dropped`.
  A numeric column with no value at all in training is a ``ValueError``.
* **Ids**: the frame's index and the ids must be all integers or all strings
  (:class:`~bayesmf.data.vocabulary.Vocabulary` rules: ids of the other type
  that convert exactly match with an ``IdTypeWarning``, others are a
  ``TypeError``); a duplicated id in the frame's index, or among the
  training ids, is a ``ValueError`` naming it. Infinite numeric values are
  a ``ValueError``.

:func:`encoder_to_dict` and :func:`encoder_from_dict` turn an encoder into
JSON-safe values and back, for the model file; the round trip encodes
identically.

:func:`load_movielens_features` reads ml-100k's ``u.user`` and ``u.item``, or ml-1m's
``users.dat`` and ``movies.dat``.

>>> import pandas as pd
>>> frame = pd.DataFrame({"gender": ["F", "M", "M", "M"], "age": [20.0, 30.0, 40.0, 50.0]},
...                      index=pd.Index([1, 2, 3, 4], name="user"))
>>> encoder = fit_features(frame)
>>> encoder.names
('gender=F', 'gender=M', 'age')
>>> x = encode_features(encoder, frame, [1, 4])
>>> x.dtype, x.astype(float).round(3).tolist()
(dtype('float32'), [[0.75, -0.75, -1.342], [-0.25, 0.25, 1.342]])
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from bayesmf.data.movielens import CHECKSUMS, verify_checksums
from bayesmf.data.movielens import data_home as movielens_home
from bayesmf.data.vocabulary import Vocabulary, examples, normalize_ids

__all__ = [
    "AGE_BUCKETS",
    "ENCODER_FORMAT",
    "GENRES",
    "FeatureEncoder",
    "FeatureWarning",
    "encode_features",
    "encoder_from_dict",
    "encoder_to_dict",
    "fit_features",
    "load_movielens_features",
    "read_item_features",
    "read_user_features",
]

# The tag and version of encoder_to_dict's output.
ENCODER_FORMAT = ("bayesmf.features", 1)

_POLICIES = ("raise", "mean")


# Encoders of at most this many columns keep their training rows' covariance
# (F^2 floats in the model file's attributes).
MAX_COVARIANCE_FEATURES = 1024


class FeatureWarning(UserWarning):
    """Rows encoded at the training mean (``x = 0``): ids without a feature row, or unseen categories."""


class FeatureEncoder(NamedTuple):
    """What :func:`fit_features` learned from the training rows; applied by :func:`encode_features`.

    The encoded columns are, in order, one block per categorical column (one
    column per level) and then one column per numeric column.

    Attributes
    ----------
    categorical : tuple of str, shape (num_categorical,)
        Categorical column names.
    levels : tuple of tuples
        The training levels of each categorical column (Python str, int,
        float or bool), in column order.
    frequencies : tuple of float64 arrays, each shape (num_levels,)
        Each level's share of the training rows with a value: the one-hot
        block's training mean, subtracted to centre it.
    numeric : tuple of str, shape (num_numeric,)
        Numeric column names.
    means : float64 array, shape (num_numeric,)
        Training means (over rows with a value).
    scales : float64 array, shape (num_numeric,)
        Training standard deviations (``ddof=0``), or 1 for ``unscaled``
        columns, which are only centred.
    dropped : tuple of str
        Columns constant on the training rows, left out of the encoding.
    covariance : float64 array, shape (num_features, num_features), or None
        ``x^T x / n`` over the encoded training rows (centred, so their
        covariance): the spread of ``B^T x`` that a new row whose features
        are unknown gets in its prior (:mod:`bayesmf.spread`). None above
        :data:`MAX_COVARIANCE_FEATURES` columns, or from older files.
    """

    categorical: tuple
    levels: tuple
    frequencies: tuple
    numeric: tuple
    means: np.ndarray
    scales: np.ndarray
    dropped: tuple = ()
    covariance: np.ndarray | None = None

    @property
    def names(self) -> tuple:
        """Encoded column names, ``"column=level"`` for one-hot columns: shape (num_features,)."""
        onehot = [f"{c}={level}" for c, lv in zip(self.categorical, self.levels) for level in lv]
        return tuple(onehot) + tuple(self.numeric)

    @property
    def num_features(self) -> int:
        """``F``, the number of encoded columns."""
        return sum(len(lv) for lv in self.levels) + len(self.numeric)


def _check_policy(name: str, value: str) -> None:
    if value not in _POLICIES:
        raise ValueError(f"{name}={value!r}; expected one of {_POLICIES}")


def _frame_vocabulary(frame: pd.DataFrame) -> Vocabulary:
    """The frame's index as a Vocabulary; a duplicated id is a ValueError naming it."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"features must be a pandas DataFrame indexed by id, got {type(frame).__name__}")
    index = normalize_ids(frame.index, "feature ids (the frame's index)")
    dup = pd.Index(index)[pd.Index(index).duplicated()].unique()
    if dup.size:
        raise ValueError(f"the features frame has {dup.size} ids on more than one row, e.g. {examples(dup)}; "
                         "keep one row per id")
    return Vocabulary(index)


def _ids_of(ids, frame: pd.DataFrame) -> np.ndarray:
    if ids is None:
        return normalize_ids(frame.index, "feature ids (the frame's index)")
    if isinstance(ids, Vocabulary):
        return ids.ids
    return normalize_ids(ids, "ids")


def _rows(frame: pd.DataFrame, ids, missing: str) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of ``ids`` in ``frame`` (-1: no row) and the ids, applying the ``missing`` policy."""
    _check_policy("missing", missing)
    vocab = _frame_vocabulary(frame)
    ids = _ids_of(ids, frame)
    rows = vocab.index(ids, missing="flag")
    absent = rows < 0
    if absent.any():
        message = f"{int(absent.sum())} of {ids.size} ids have no feature row, e.g. {examples(ids[absent])}"
        if missing == "raise":
            raise KeyError(f"{message}; pass missing='mean' to encode them at the training mean (x = 0)")
        warnings.warn(f"{message}; they are encoded at the training mean (x = 0, the mean-based prior)",
                      FeatureWarning, stacklevel=3)
    return rows, ids


def _infer_columns(frame: pd.DataFrame, categorical, numeric) -> tuple[list, list]:
    if categorical is None and numeric is None:
        numeric = [c for c in frame.columns if _is_numeric(frame[c])]
        categorical = [c for c in frame.columns if c not in numeric]
    categorical, numeric = list(categorical or ()), list(numeric or ())
    both = set(categorical) & set(numeric)
    if both:
        raise ValueError(f"columns {sorted(map(str, both))} are named both categorical and numeric")
    absent = [c for c in categorical + numeric if c not in frame.columns]
    if absent:
        raise KeyError(f"the features frame has no columns {absent}; it has {list(frame.columns)}")
    wrong = [c for c in numeric if not _is_numeric(frame[c])]
    if wrong:
        raise TypeError(f"numeric columns {wrong} do not hold numbers (dtypes {[str(frame[c].dtype) for c in wrong]}); "
                        "name them categorical")
    return categorical, numeric


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _python(value):
    """A level as a plain Python scalar (JSON-safe)."""
    return value.item() if isinstance(value, np.generic) else value


def _levels(values: pd.Series, name: str) -> tuple:
    present = values[values.notna()]
    if isinstance(values.dtype, pd.CategoricalDtype):
        seen = set(present.unique())
        return tuple(_python(v) for v in values.dtype.categories if v in seen)
    try:
        return tuple(sorted(_python(v) for v in present.unique()))
    except TypeError:
        raise TypeError(f"categorical column {name!r} mixes value types "
                        f"({sorted({type(v).__name__ for v in present})})") from None


def _numeric_values(frame: pd.DataFrame, column, rows: np.ndarray) -> np.ndarray:
    values = np.full(rows.size, np.nan)
    known = rows >= 0
    values[known] = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)[rows[known]]
    if np.isinf(values).any():
        raise ValueError(f"numeric column {column!r} has infinite values; use NaN for a missing value")
    return values


def _level_codes(frame: pd.DataFrame, column, levels: tuple, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's level index (-1: none) and whether it holds a value not among ``levels``."""
    codes = np.full(rows.size, -1, np.int64)
    unseen = np.zeros(rows.size, bool)
    known = rows >= 0
    raw = frame[column].to_numpy(dtype=object)[rows[known]]
    found = pd.Index(levels, dtype=object).get_indexer(raw)
    codes[known] = found
    unseen[np.flatnonzero(known)[(found < 0) & ~pd.isna(raw)]] = True
    return codes, unseen


def fit_features(frame: pd.DataFrame, ids=None, *, categorical=None, numeric=None, unscaled=(),
                 missing: str = "raise") -> FeatureEncoder:
    """Learn a :class:`FeatureEncoder` from the training rows of a features table.

    Parameters
    ----------
    frame : DataFrame, shape (num_rows, num_columns)
        Indexed by id (integers or strings, one row per id).
    ids : array-like, shape (n,), or Vocabulary, optional
        The training ids (e.g. ``ratings.user_vocab``): levels, means,
        standard deviations and centres come from their rows only, each id
        counted once. Default: every row of ``frame``.
    categorical, numeric : list of str, optional
        The columns to one-hot encode and to standardise. When both are
        omitted, every column is used: numeric dtypes (not bool) as numeric,
        the rest as categorical. When either is given, only the named
        columns are used.
    unscaled : list of str
        Numeric columns to centre without dividing by their standard
        deviation (e.g. genre shares, already on a common 0-1 scale).
    missing : {"raise", "mean"}
        Training ids without a row: an error, or rows at ``x = 0`` (see the
        module notes).

    Returns
    -------
    FeatureEncoder

    Examples
    --------
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"job": ["a", "b", "b"], "year": [1990.0, None, 2000.0]}, index=[7, 8, 9])
    >>> encoder = fit_features(frame, [7, 8])
    >>> encoder.levels, encoder.means.tolist(), encoder.dropped
    ((('a', 'b'),), [], ('year',))
    """
    _frame_vocabulary(frame)  # a DataFrame with unique ids, before its columns are read
    categorical, numeric = _infer_columns(frame, categorical, numeric)
    unscaled = set(unscaled)
    stray = unscaled - set(numeric)
    if stray:
        raise ValueError(f"unscaled columns {sorted(map(str, stray))} are not numeric columns")
    rows, ids = _rows(frame, ids, missing)
    dup = pd.Index(ids)[pd.Index(ids).duplicated()].unique()
    if dup.size:
        raise ValueError(f"{dup.size} training ids are repeated, e.g. {examples(dup)}; each id counts once")
    known = rows[rows >= 0]
    dropped, kept_cat, levels, frequencies = [], [], [], []
    for column in categorical:
        lv = _levels(frame[column].iloc[known], column)
        if len(lv) < 2:
            dropped.append(column)
            continue
        codes, _ = _level_codes(frame, column, lv, known)
        counts = np.bincount(codes[codes >= 0], minlength=len(lv)).astype(np.float64)
        kept_cat.append(column)
        levels.append(lv)
        frequencies.append(counts / counts.sum())
    kept_num, means, scales = [], [], []
    for column in numeric:
        values = _numeric_values(frame, column, known)
        values = values[~np.isnan(values)]
        if values.size == 0:
            raise ValueError(f"numeric column {column!r} has no value on the training rows")
        sd = float(values.std())
        if sd == 0.0:
            dropped.append(column)
            continue
        kept_num.append(column)
        means.append(float(values.mean()))
        scales.append(1.0 if column in unscaled else sd)
    encoder = FeatureEncoder(tuple(kept_cat), tuple(levels), tuple(frequencies), tuple(kept_num),
                             np.asarray(means, np.float64), np.asarray(scales, np.float64), tuple(dropped))
    if 0 < encoder.num_features <= MAX_COVARIANCE_FEATURES and known.size:
        x = encode_features(encoder, frame, frame.index[known]).astype(np.float64)
        encoder = encoder._replace(covariance=x.T @ x / len(x))
    return encoder


def encode_features(encoder: FeatureEncoder, frame: pd.DataFrame, ids=None, *, missing: str = "raise",
                    unseen: str = "raise") -> np.ndarray:
    """The encoded features ``x`` of the rows of ``ids``.

    Parameters
    ----------
    encoder : FeatureEncoder
    frame : DataFrame
        Indexed by id; must hold the encoder's columns (others are ignored).
    ids : array-like, shape (n,), or Vocabulary, optional
        Default: every row of ``frame``, in order.
    missing : {"raise", "mean"}
        Ids without a row: an error, or ``x = 0`` with a :class:`FeatureWarning`.
    unseen : {"raise", "mean"}
        Categorical values absent from training: an error, or the block's
        training mean (0 after centring) with a :class:`FeatureWarning`.

    Returns
    -------
    float32 array, shape (n, encoder.num_features)
        Centred: the training rows' column means are 0.
    """
    _check_policy("unseen", unseen)
    columns = list(encoder.categorical) + list(encoder.numeric)
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise KeyError(f"the features frame lacks the encoder's columns {absent}")
    rows, _ = _rows(frame, ids, missing)
    blocks = []
    for column, lv, freq in zip(encoder.categorical, encoder.levels, encoder.frequencies):
        codes, new = _level_codes(frame, column, lv, rows)
        if new.any():
            values = frame[column].to_numpy(dtype=object)[rows[new]]
            message = f"column {column!r} has {int(new.sum())} values not seen in training, e.g. {examples(values)}"
            if unseen == "raise":
                raise ValueError(f"{message} (training levels: {list(lv)}); pass unseen='mean' to encode them "
                                 "at the training mean of the column")
            warnings.warn(f"{message}; encoded at the training mean of the column", FeatureWarning, stacklevel=2)
        block = np.zeros((rows.size, len(lv)))
        has = codes >= 0
        block[np.flatnonzero(has), codes[has]] = 1.0
        block[has] -= np.asarray(freq)
        blocks.append(block)
    if encoder.numeric:
        values = np.stack([_numeric_values(frame, c, rows) for c in encoder.numeric], axis=1)
        values = (values - encoder.means) / encoder.scales
        blocks.append(np.where(np.isnan(values), 0.0, values))
    if not blocks:
        return np.zeros((rows.size, 0), np.float32)
    return np.concatenate(blocks, axis=1).astype(np.float32)


def encoder_to_dict(encoder: FeatureEncoder) -> dict:
    """The encoder as JSON-safe values (lists, str, float, int, bool), for the model file."""
    tag, version = ENCODER_FORMAT
    return {
        "format": tag,
        "version": version,
        "categorical": [_python(c) for c in encoder.categorical],
        "levels": [[_python(v) for v in lv] for lv in encoder.levels],
        "frequencies": [[float(f) for f in freq] for freq in encoder.frequencies],
        "numeric": [_python(c) for c in encoder.numeric],
        "means": [float(m) for m in encoder.means],
        "scales": [float(s) for s in encoder.scales],
        "dropped": [_python(c) for c in encoder.dropped],
        "covariance": None if encoder.covariance is None else np.asarray(encoder.covariance).tolist(),
    }


def encoder_from_dict(d: dict) -> FeatureEncoder:
    """The inverse of :func:`encoder_to_dict` (also after a JSON round trip)."""
    tag, version = ENCODER_FORMAT
    if d.get("format") != tag or d.get("version") != version:
        raise ValueError(f"not a feature encoder of format {tag!r} version {version}: "
                         f"got {d.get('format')!r} version {d.get('version')!r}")
    if len(d["levels"]) != len(d["categorical"]) or len(d["means"]) != len(d["numeric"]):
        raise ValueError("a feature encoder's levels or means do not match its columns")
    return FeatureEncoder(
        tuple(d["categorical"]),
        tuple(tuple(lv) for lv in d["levels"]),
        tuple(np.asarray(f, np.float64) for f in d["frequencies"]),
        tuple(d["numeric"]),
        np.asarray(d["means"], np.float64),
        np.asarray(d["scales"], np.float64),
        tuple(d.get("dropped", ())),
        None if d.get("covariance") is None else np.asarray(d["covariance"], np.float64),
    )


# --- MovieLens 100K and 1M -------------------------------------------------------------

# ML-1M's age groups (its README), applied to ml-100k's ages in years.
AGE_BUCKETS = ("under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
_AGE_EDGES = (-np.inf, 17, 24, 34, 44, 49, 55, np.inf)
# ml-1m's users.dat codes each group by its lower bound (1 for under 18).
_AGE_CODES = dict(zip((1, 18, 25, 35, 45, 50, 56), AGE_BUCKETS))

# ml-100k's 19 genre flags in file order (u.genre); ml-1m uses the last 18 (no "unknown").
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")

# ml-1m's occupation codes 0-20 (its README).
_OCCUPATIONS_1M = ("other", "academic/educator", "artist", "clerical/admin", "college/grad student",
                   "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
                   "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist", "self-employed",
                   "technician/engineer", "tradesman/craftsman", "unemployed", "writer")


def _is_dat(path) -> bool:
    return Path(path).suffix == ".dat"


def _read_dat(path, names: list) -> pd.DataFrame:
    return pd.read_csv(path, sep="::", engine="python", header=None, names=names, dtype=str,
                       encoding="latin-1", quoting=csv.QUOTE_NONE)


def read_user_features(path) -> pd.DataFrame:
    """User features from ml-100k's ``u.user`` or ml-1m's ``users.dat``.

    ``u.user`` is ``user id | age | gender | occupation | zip code``, the age
    in years; ``users.dat`` (any ``.dat`` file) is
    ``UserID::Gender::Age::Occupation::Zip-code``, the age and occupation as
    ML-1M's codes.

    Returns
    -------
    DataFrame, shape (num_users, 3), indexed by ``user`` (int64)
        ``age``: ordered categorical of :data:`AGE_BUCKETS` (ML-1M's groups);
        ``gender`` and ``occupation`` (ml-1m: the README's names): strings.
        The zip code is not used.
    """
    if _is_dat(path):
        frame = _read_dat(path, ["user", "gender", "age", "occupation", "zip"])
        age = frame["age"].astype(np.int64).map(_AGE_CODES)
        code = frame["occupation"].astype(np.int64)
        bad = ~code.between(0, len(_OCCUPATIONS_1M) - 1) | age.isna()
        if bad.any():
            raise ValueError(f"{path}: {int(bad.sum())} users have an age or occupation code outside ML-1M's, "
                             f"e.g. users {examples(frame['user'][bad])}")
        occupation = code.map(dict(enumerate(_OCCUPATIONS_1M)))
    else:
        frame = pd.read_csv(path, sep="|", header=None, names=["user", "age", "gender", "occupation", "zip"],
                            dtype={"user": np.int64, "age": np.int64, "gender": str, "occupation": str, "zip": str},
                            encoding="latin-1", quoting=csv.QUOTE_NONE)
        age = pd.cut(frame["age"], bins=list(_AGE_EDGES), labels=list(AGE_BUCKETS), right=True)
        occupation = frame["occupation"]
    out = pd.DataFrame({"age": age.astype(pd.CategoricalDtype(AGE_BUCKETS, ordered=True)),
                        "gender": frame["gender"].astype(str), "occupation": occupation.astype(str)})
    out.index = pd.Index(frame["user"].astype(np.int64).to_numpy(), name="user")
    return out


def read_item_features(path) -> pd.DataFrame:
    """Movie features from ml-100k's ``u.item`` or ml-1m's ``movies.dat``.

    ``u.item`` (Latin-1) is ``movie id | title | release date (dd-Mon-yyyy) |
    video release date | URL | 19 genre flags``; ``movies.dat`` (any ``.dat``
    file, Latin-1) is ``MovieID::Title (year)::Genre|Genre|...``.

    Returns
    -------
    DataFrame, indexed by ``item`` (int64)
        One column per genre: :data:`GENRES` for ml-100k (shape
        (num_items, 20)), the 18 after ``"unknown"`` for ml-1m (shape
        (num_items, 19)). Each is the movie's flag divided by its number of
        genres, so a row sums to 1; a movie with no genre would be all zeros
        (none in ml-100k, where the one untitled movie, 267, is flagged
        ``unknown``, nor in ml-1m). ``year``: the release date's year (ml-1m:
        the year in the title) as a float, NaN where it is missing (ml-100k's
        movie 267).
    """
    if _is_dat(path):
        frame = _read_dat(path, ["item", "title", "genres"])
        genres = GENRES[1:]
        flags = frame["genres"].fillna("").str.get_dummies(sep="|")
        unknown = sorted(set(flags.columns) - set(genres))
        if unknown:
            raise ValueError(f"{path}: genres {unknown} are not ML-1M's")
        flags = flags.reindex(columns=list(genres), fill_value=0)
        year = frame["title"].str.extract(r"\((\d{4})\)\s*$")[0].astype(np.float64)
    else:
        genres = GENRES
        names = ["item", "title", "release", "video", "url", *genres]
        frame = pd.read_csv(path, sep="|", header=None, names=names, encoding="latin-1", quoting=csv.QUOTE_NONE,
                            dtype={"item": np.int64, "title": str, "release": str, "video": str, "url": str},
                            index_col=False)
        flags = frame[list(genres)]
        year = pd.to_datetime(frame["release"], format="%d-%b-%Y").dt.year.astype(np.float64)
    flags = flags.to_numpy(dtype=np.float64)
    count = flags.sum(axis=1, keepdims=True)
    shares = np.divide(flags, count, out=np.zeros_like(flags), where=count > 0)
    out = pd.DataFrame(shares, columns=list(genres))
    out["year"] = year.to_numpy()
    out.index = pd.Index(frame["item"].astype(np.int64).to_numpy(), name="item")
    return out


# The features files of each layout: (users, movies).
_FEATURE_FILES = (("u.user", "u.item"), ("users.dat", "movies.dat"))


def load_movielens_features(name_or_path="ml-100k", data_home=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """User and movie features of ml-100k or ml-1m in one call.

    Parameters
    ----------
    name_or_path : str or Path
        ``"ml-100k"`` or ``"ml-1m"``, found at ``<data_home>/<name>`` (see
        :func:`~bayesmf.data.movielens.data_home`: the argument,
        ``$BAYESMF_DATA`` or the cache), or a directory holding ``u.user``
        and ``u.item`` (ml-100k) or ``users.dat`` and ``movies.dat`` (ml-1m).
        A directory named ``ml-100k`` or ``ml-1m`` has the two files' md5
        verified. Only the features files are read: no ratings are needed.
    data_home : str or Path, optional

    Returns
    -------
    users : DataFrame
        See :func:`read_user_features`; ml-100k: shape (943, 3).
    items : DataFrame
        See :func:`read_item_features`; ml-100k: shape (1682, 20).

    Examples
    --------
    >>> users, items = load_movielens_features("ml-100k")  # doctest: +SKIP
    >>> encoder = fit_features(users)  # doctest: +SKIP
    >>> encoder.num_features  # 7 age groups + 2 genders + 21 occupations  # doctest: +SKIP
    30
    """
    if isinstance(name_or_path, str) and name_or_path.startswith("ml-") and not Path(name_or_path).is_dir():
        if name_or_path not in ("ml-100k", "ml-1m"):
            raise ValueError(f"features are read for ml-100k and ml-1m only, not {name_or_path!r}")
        directory = movielens_home(data_home) / name_or_path
    else:
        directory = Path(name_or_path).expanduser()
    for files in _FEATURE_FILES:
        if all((directory / f).is_file() for f in files):
            break
    else:
        raise FileNotFoundError(f"no features files in {directory}: expected ml-100k's u.user and u.item, or "
                                "ml-1m's users.dat and movies.dat (set BAYESMF_DATA or pass data_home=)")
    if directory.name in CHECKSUMS:
        verify_checksums(directory, directory.name, files=list(files))
    return read_user_features(directory / files[0]), read_item_features(directory / files[1])


def read_features(path, side: str) -> pd.DataFrame:
    """One side's features table from a file or a MovieLens directory (what the CLI's
    ``--user-features`` / ``--item-features`` take).

    A directory: :func:`load_movielens_features`'s table for ``side``.
    ``u.user`` / ``users.dat`` (``u.item`` / ``movies.dat``): read as
    :func:`read_user_features` (:func:`read_item_features`) read them. Any
    other file: a CSV whose first column holds the ids (one row per id).

    Parameters
    ----------
    path : str or Path
    side : {"user", "item"}

    Returns
    -------
    DataFrame indexed by id
    """
    if side not in ("user", "item"):
        raise ValueError(f"side must be 'user' or 'item', got {side!r}")
    path = Path(path).expanduser()
    if path.is_dir():
        return load_movielens_features(path)[0 if side == "user" else 1]
    if not path.is_file():
        raise FileNotFoundError(f"{side} features file {str(path)!r} does not exist")
    names = {name for files in _FEATURE_FILES for name in files}
    if path.name in names:
        return read_user_features(path) if side == "user" else read_item_features(path)
    frame = pd.read_csv(path, index_col=0)
    if frame.empty or frame.shape[1] == 0:
        raise ValueError(f"{side} features file {str(path)!r} has no feature columns (expected: id, then features)")
    return frame
