"""Ratings files: the MovieLens layouts and generic delimited files.

========================  ==================================================
``u.data``, ``uN.base``   ml-100k: tab-separated ``user item rating time``
``ratings.dat``           ml-1m / ml-10m: ``user::item::rating::time``
``ratings.csv``           ml-latest(-small), ml-20m, ml-25m, ml-32m: header
                          ``userId,movieId,rating,timestamp``, half stars
any ``.csv``              a header naming user, item and rating columns
========================  ==================================================
"""

from __future__ import annotations

import itertools
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bayesmf.data.ratings import RatingScale, Ratings, Vocabulary, normalize_ids

__all__ = [
    "FORMATS",
    "ITEM_COLUMNS",
    "RATING_COLUMNS",
    "TIMESTAMP_COLUMNS",
    "USER_COLUMNS",
    "pick_column",
    "read_item_ratings",
    "read_ratings",
]



FORMATS = ("auto", "tab", "dat", "csv")

# Accepted column names (lower case) of a generic ratings CSV, in order of preference.
USER_COLUMNS = ("user", "userid", "user_id", "users")
ITEM_COLUMNS = ("item", "movieid", "item_id", "movie", "movie_id", "itemid", "items")
RATING_COLUMNS = ("rating", "ratings", "score")
TIMESTAMP_COLUMNS = ("timestamp", "time", "ts")

_EXPECTED = (
    "tab-separated 'user item rating timestamp' (ml-100k u.data, uN.base, uN.test), "
    "'user::item::rating::timestamp' (ml-1m / ml-10m ratings.dat), or a CSV whose header names user, item "
    "and rating columns (e.g. MovieLens 'userId,movieId,rating,timestamp')"
)


def _first_line(path: Path) -> tuple[str, int]:
    """The first non-blank line of a file and its 1-based number."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not head:
        raise ValueError(f"{path}: the file is empty; expected {_EXPECTED}")
    if head.startswith(b"PK\x03\x04"):
        raise ValueError(f"{path} is a zip archive; extract it first (or use find_dataset / load_movielens)")
    if b"\x00" in head:
        raise ValueError(f"{path} is a binary file; expected {_EXPECTED}")
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            return line, number
    raise ValueError(f"{path}: the file has no data; expected {_EXPECTED}")


def _sniff_format(path: Path, line: str) -> str:
    if "::" in line:
        return "dat"
    if "\t" in line:
        return "tab"
    if "," in line:
        return "csv"
    raise ValueError(f"{path}: unrecognised ratings format (first line {line[:80]!r}); expected {_EXPECTED}")


def _is_number(text: str) -> bool:
    try:
        float(text.strip().strip('"'))
    except ValueError:
        return False
    return True


def _line_text(path: Path, number: int) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        line = next(itertools.islice(f, number - 1, None), "")
    return line.rstrip("\r\n")


def _read_table(path: Path, sep: str, header: bool, num_fields: int, description: str) -> pd.DataFrame:
    """Parse with pandas; a line with too many fields is a ``ValueError`` naming it."""
    kw = dict(sep=sep, index_col=False, skip_blank_lines=False, encoding="utf-8", encoding_errors="replace")
    if header:
        kw["header"] = 0
    else:
        kw.update(header=None, names=list(range(num_fields)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, **kw)
    except pd.errors.ParserError as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if match:
            line = int(match.group(2))
            raise ValueError(
                f"{path}: line {line} has more fields than line 1 ({_line_text(path, line)!r}); "
                f"expected {description}"
            ) from None
        raise ValueError(f"{path}: cannot parse ({exc}); expected {description}") from None
    except pd.errors.ParserWarning as exc:
        raise ValueError(f"{path}: {exc}; expected {description}") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file has no data; expected {description}") from None


def _check_complete(path: Path, frame: pd.DataFrame, columns: list, first_line: int, description: str,
                    optional=()) -> pd.DataFrame:
    """Drop blank lines; a row with a missing field is a ``ValueError`` naming its line."""
    blank = frame.isna().all(axis=1).to_numpy()
    lines = np.arange(frame.shape[0]) + first_line
    frame, lines = frame.loc[~blank], lines[~blank]
    required = [c for c in columns if c not in optional]
    for c in optional:
        if c in frame.columns and frame[c].notna().any():
            required.append(c)  # a column given on some lines must be on all
    missing = frame[required].isna().any(axis=1).to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        line = int(lines[row])
        raise ValueError(
            f"{path}: line {line} is truncated or has an empty field ({_line_text(path, line)!r}); "
            f"expected {description}"
        )
    if frame.shape[0] == 0:
        raise ValueError(f"{path}: the file has no ratings; expected {description}")
    frame = frame.reset_index(drop=True)
    frame.attrs["lines"] = lines
    return frame


def _numeric_column(path: Path, frame: pd.DataFrame, column, what: str, ids: bool) -> np.ndarray:
    """A column as numbers (or, for ids, as strings when no value is numeric)."""
    series = frame[column]
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        return series.to_numpy()
    text = series.astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    bad = numbers.isna().to_numpy()
    if ids and bad.all():
        return text.to_numpy(dtype=object)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        line = int(frame.attrs["lines"][row])
        raise ValueError(f"{path}: line {line}: {what} {text.iloc[row]!r} is not a number")
    return numbers.to_numpy()


def pick_column(columns, accepted, what: str, path: Path, required: bool = True):
    lowered = {str(c).strip().lower(): c for c in columns}
    for name in accepted:
        if name in lowered:
            return lowered[name]
    if required:
        raise ValueError(
            f"{path}: no {what} column; the header has {list(columns)}, accepted names are {list(accepted)} "
            "(any case)"
        )
    return None


def read_ratings(path, format: str = "auto", scale: RatingScale | None = None) -> Ratings:
    """Read a ratings file in a MovieLens format or a generic CSV.

    Parameters
    ----------
    path : str or Path
    format : {"auto", "tab", "dat", "csv"}
        ``"tab"``: ml-100k ``u.data`` / ``uN.base`` / ``uN.test``
        (``user item rating timestamp``, no header); ``"dat"``: ml-1m /
        ml-10m ``ratings.dat`` (``user::item::rating::timestamp``);
        ``"csv"``: a header naming user (user, userId, user_id), item (item,
        movieId, item_id, movie) and rating columns, optionally timestamp,
        LF or CRLF; a CSV without a header is read as
        ``user,item,rating[,timestamp]``. ``"auto"`` looks at the first line.
    scale : RatingScale, optional
        Inferred from the ratings when not given.

    Returns
    -------
    Ratings
        Integer ids for the MovieLens formats; a CSV's non-numeric ids stay strings.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        An unknown format, a line with a missing or extra field, a
        non-numeric rating, or bad ratings (see :meth:`Ratings.from_arrays`).

    Examples
    --------
    >>> ratings = read_ratings("ml-100k/u1.base")  # doctest: +SKIP
    """
    path = Path(path).expanduser()
    if format not in FORMATS:
        raise ValueError(f"format={format!r}; expected one of {FORMATS}")
    if not path.exists():
        raise FileNotFoundError(f"no ratings file at {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; use read_dataset_dir for a MovieLens directory")
    line, first = _first_line(path)
    if format == "auto":
        format = _sniff_format(path, line)
    if format == "dat":
        fields = line.split(":")
        description = "'user::item::rating[::timestamp]' on every line"
        if len(fields) not in (5, 7) or any(f != "" for f in fields[1::2]):
            raise ValueError(f"{path}: line {first} ({line[:80]!r}) is not {description}")
        frame = _read_table(path, ":", False, len(fields), description)
        if frame.shape[1] > 1 and frame[list(range(1, frame.shape[1], 2))].notna().any(axis=None):
            bad = int(np.flatnonzero(frame[list(range(1, frame.shape[1], 2))].notna().any(axis=1).to_numpy())[0])
            raise ValueError(
                f"{path}: line {bad + 1} ({_line_text(path, bad + 1)!r}) is not {description}"
            )
        frame = frame[list(range(0, frame.shape[1], 2))]
        frame.columns = ["user", "item", "rating", "timestamp"][: frame.shape[1]]
        header = False
    else:
        sep = "\t" if format == "tab" else ","
        fields = line.split(sep)
        header = not _is_number(fields[0])
        if header:
            frame = _read_table(path, sep, True, len(fields), "a header naming user, item and rating columns")
            user_col = pick_column(frame.columns, USER_COLUMNS, "user", path)
            item_col = pick_column(frame.columns, ITEM_COLUMNS, "item", path)
            rating_col = pick_column(frame.columns, RATING_COLUMNS, "rating", path)
            time_col = pick_column(frame.columns, TIMESTAMP_COLUMNS, "timestamp", path, required=False)
            picked = [user_col, item_col, rating_col] + ([time_col] if time_col is not None else [])
            frame = frame[picked]
            frame.columns = ["user", "item", "rating", "timestamp"][: len(picked)]
        else:
            description = f"'user{sep}item{sep}rating[{sep}timestamp]' on every line".replace("\t", "<TAB>")
            if len(fields) not in (3, 4):
                raise ValueError(
                    f"{path}: line {first} has {len(fields)} fields ({line[:80]!r}); expected {description}"
                )
            frame = _read_table(path, sep, False, len(fields), description)
            frame.columns = ["user", "item", "rating", "timestamp"][: len(fields)]
    description = {
        "dat": "'user::item::rating::timestamp'",
        "tab": "tab-separated 'user item rating timestamp'",
        "csv": "comma-separated user, item, rating[, timestamp]",
    }[format]
    frame = _check_complete(path, frame, list(frame.columns), 2 if header else 1, description, optional=("timestamp",))
    users = _numeric_column(path, frame, "user", "user id", ids=True)
    items = _numeric_column(path, frame, "item", "item id", ids=True)
    rating = _numeric_column(path, frame, "rating", "rating", ids=False)
    timestamp = None
    if "timestamp" in frame.columns and frame["timestamp"].notna().all():
        timestamp = _numeric_column(path, frame, "timestamp", "timestamp", ids=False)
    try:
        return Ratings.from_arrays(users, items, rating, timestamp, scale=scale)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def read_item_ratings(path, item_vocab: Vocabulary | None = None, scale: RatingScale | None = None):
    """One new user's ratings from a CSV with item and rating columns (for fold-in).

    Parameters
    ----------
    path : str or Path
        Header naming an item column (item, movieId, item_id, movie) and a
        rating column; other columns are ignored.
    item_vocab : Vocabulary, optional
        A model's movie vocabulary: ids are read as its type (integers or
        strings). Ids it lacks are kept (the fold-in decides what to do).
    scale : RatingScale, optional
        When given, every rating must lie on it.

    Returns
    -------
    item_ids : array, shape (n,)
    ratings : float64 array, shape (n,)
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no ratings file at {path}")
    line, _ = _first_line(path)
    sep = "\t" if "\t" in line and "," not in line else ","
    frame = _read_table(path, sep, True, len(line.split(sep)), "a header naming item and rating columns")
    item_col = pick_column(frame.columns, ITEM_COLUMNS, "item", path)
    rating_col = pick_column(frame.columns, RATING_COLUMNS, "rating", path)
    frame = frame[[item_col, rating_col]]
    frame.columns = ["item", "rating"]
    frame = _check_complete(path, frame, ["item", "rating"], 2, "item and rating on every line")
    rating = _numeric_column(path, frame, "rating", "rating", ids=False).astype(np.float64)
    if item_vocab is not None and item_vocab.is_string:
        items = frame["item"].astype(str).str.strip().to_numpy(dtype=object)
    else:
        items = normalize_ids(_numeric_column(path, frame, "item", "item id", ids=item_vocab is None), "item ids")
    if not np.all(np.isfinite(rating)):
        raise ValueError(f"{path}: ratings must be finite")
    if scale is not None:
        try:
            scale.validate(rating)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return items, rating
