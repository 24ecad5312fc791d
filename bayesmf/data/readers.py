"""Ratings files: the MovieLens layouts and other delimited files.

========================  ==================================================
``u.data``, ``uN.base``   ml-100k: tab-separated ``user item rating time``
``ratings.dat``           ml-1m / ml-10m: ``user::item::rating::time``
``ratings.csv``           ml-latest(-small), ml-20m, ml-25m, ml-32m: header
                          ``userId,movieId,rating,timestamp``, half stars
any delimited file        ``::``, tab, comma, semicolon or spaces; a header
                          naming the columns, or ``user item rating [time]``
                          without one, or an explicit ``columns`` mapping
========================  ==================================================

Numeric files are parsed by pandas' C engine in chunks with fixed dtypes,
straight into preallocated int32 / float32 / int64 arrays (ML-25M's
``ratings.csv``: see ``benchmarks/parse_ratings.py``). Anything that does not
fit that path (string ids, blank lines, a malformed line) is read again
field by field, so that every error names the file and the line.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "mine.txt"
>>> _ = path.write_text("u52;m10;4\\nu7;m10;5\\n")
>>> r = read_ratings(path)
>>> r.user_vocab.ids.tolist(), r.item_ids.tolist()
(['u52', 'u7'], ['m10', 'm10'])
"""

from __future__ import annotations

import io
import itertools
import os
import re
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from bayesmf.data.ratings import DUPLICATE_POLICIES, RatingScale, Ratings
from bayesmf.data.vocabulary import Vocabulary, normalize_ids

__all__ = [
    "FORMATS",
    "ITEM_COLUMNS",
    "RATING_COLUMNS",
    "ROLES",
    "SEPARATORS",
    "TIMESTAMP_COLUMNS",
    "USER_COLUMNS",
    "as_pairs",
    "as_ratings",
    "pick_column",
    "read_item_ratings",
    "read_ratings",
]

# format= of earlier versions: the separator it stands for.
FORMATS = ("auto", "tab", "dat", "csv")
_FORMAT_SEPARATOR = {"tab": "\t", "dat": "::", "csv": ","}

# Separators sniffed from the first line, in this order; " " stands for any run of spaces or tabs.
SEPARATORS = ("::", "\t", ",", ";", " ")

# What the columns of a ratings file hold; the first three are required.
ROLES = ("user", "item", "rating", "timestamp")

# Accepted column names (lower case) of a file with a header, in order of preference.
USER_COLUMNS = ("user", "userid", "user_id", "users")
ITEM_COLUMNS = ("item", "movieid", "item_id", "movie", "movie_id", "itemid", "items")
RATING_COLUMNS = ("rating", "ratings", "score")
TIMESTAMP_COLUMNS = ("timestamp", "time", "ts")
_ACCEPTED = {"user": USER_COLUMNS, "item": ITEM_COLUMNS, "rating": RATING_COLUMNS, "timestamp": TIMESTAMP_COLUMNS}

_EXPECTED = (
    "tab-separated 'user item rating timestamp' (ml-100k u.data, uN.base, uN.test), "
    "'user::item::rating::timestamp' (ml-1m / ml-10m ratings.dat), or a CSV whose header names user, item "
    "and rating columns (e.g. MovieLens 'userId,movieId,rating,timestamp'); other separators (';', spaces) "
    "and headers work too (see read_ratings' sep, header and columns)"
)

# The fast path: rows per chunk (~5 MB of parsed columns at a time: on ML-25M's layout 128K-row
# chunks took ~4 s of CPU against ~5 s for 1M-row ones, the parser's buffers staying in cache),
# at most this many parts parsed in parallel, and no part under this many bytes.
_CHUNK_ROWS = 1 << 17
_MAX_PARTS = 4
_MIN_PART_BYTES = 1 << 24
_INT32 = np.iinfo(np.int32)


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
    lines = text.split("\n")
    if len(head) == 1 << 16 and len(lines) > 1:
        lines = lines[:-1]  # the last one may be cut short by the read
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if line.strip():
            return line, number
    raise ValueError(f"{path}: the file has no data; expected {_EXPECTED}")


def _split(line: str, sep: str) -> list[str]:
    return line.split() if sep == " " else line.split(sep)


def _sniff_separator(path: Path, line: str) -> str:
    """The first of :data:`SEPARATORS` that cuts the line into 3 or more fields (else one that cuts it at all)."""
    for sep in SEPARATORS:
        if len(_split(line, sep)) >= 3:
            return sep
    for sep in SEPARATORS[:-1]:
        if sep in line:
            return sep  # too few fields: the layout check says so, naming the line
    raise ValueError(f"{path}: unrecognised ratings format (first line {line[:80]!r}); expected {_EXPECTED}")


def _is_number(text: str) -> bool:
    try:
        float(text.strip().strip('"'))
    except ValueError:
        return False
    return True


def _name(field) -> str:
    return str(field).strip().strip('"').strip()


def _line_text(path: Path, number: int) -> str:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        line = next(itertools.islice(f, number - 1, None), "")
    return line.rstrip("\r\n")


def pick_column(columns, accepted, what: str, path: Path, required: bool = True):
    """The first of ``columns`` whose name (stripped, any case) is in ``accepted``; ``None`` when optional and absent.

    Raises ``ValueError`` naming the file, the header and the accepted names
    when a required column is missing.
    """
    lowered = {}
    for c in columns:
        lowered.setdefault(_name(c).lower(), c)
    for name in accepted:
        if name in lowered:
            return lowered[name]
    if required:
        raise ValueError(
            f"{path}: no {what} column; the header has {list(columns)}, accepted names are {list(accepted)} "
            "(any case); or say which column is which with columns={'user': ..., 'item': ..., 'rating': ...}"
        )
    return None


# --- the layout of a file: separator, header, which field holds what --------------------------------


class _Layout(NamedTuple):
    sep: str  # one of SEPARATORS, or what the caller gave
    header: bool
    first: int  # 1-based number of the first non-blank line (the header, if any)
    num_fields: int  # on the first line
    positions: dict  # role -> 0-based field
    description: str  # what every line should look like, for error messages

    @property
    def data_line(self) -> int:
        """1-based number of the first line of data."""
        return self.first + 1 if self.header else self.first

    @property
    def pandas_sep(self) -> str:
        # '::' is read as ':' with an empty field between any two values (pandas' C engine takes
        # one-character separators only); ' ' as runs of whitespace.
        return {"::": ":", " ": r"\s+"}.get(self.sep, self.sep)

    def pandas_field(self, field: int) -> int:
        return 2 * field if self.sep == "::" else field

    @property
    def pandas_num_fields(self) -> int:
        return 2 * self.num_fields - 1 if self.sep == "::" else self.num_fields


def _columns_mapping(columns) -> dict:
    if isinstance(columns, Mapping):
        mapping = dict(columns)
    elif isinstance(columns, (list, tuple)):
        if len(columns) not in (3, 4):
            raise ValueError(f"columns={columns!r}: a list gives the user, item, rating[, timestamp] columns (3 or 4)")
        mapping = dict(zip(ROLES, columns))
    else:
        raise TypeError(f"columns must be a dict or a list, got {type(columns).__name__}")
    unknown = sorted(set(mapping) - set(ROLES), key=str)
    if unknown:
        raise ValueError(f"columns has unknown keys {unknown}; the keys are {list(ROLES)}")
    missing = [role for role in ROLES[:3] if mapping.get(role) is None]
    if missing:
        raise ValueError(f"columns={columns!r} does not say which column holds the {', '.join(missing)}")
    for role, value in mapping.items():
        if not isinstance(value, (str, int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"columns[{role!r}] must be a column name (str) or a 0-based position (int), got {value!r}")
    return {role: value for role, value in mapping.items() if value is not None}


def _looks_like_header(fields: list[str], mapping: dict | None) -> bool:
    """A header names known columns, or has text where the rating should be."""
    if mapping and any(isinstance(v, str) for v in mapping.values()):
        return True
    names = {_name(f).lower() for f in fields}
    if any(names & set(accepted) for accepted in _ACCEPTED.values()):
        return True
    rating = mapping["rating"] if mapping else 2
    return rating < len(fields) and not _is_number(fields[rating])


def _layout(path: Path, line: str, first: int, sep: str, columns, header) -> _Layout:
    fields = _split(line, sep)
    if sep == "::" and any(":" in f for f in fields):
        raise ValueError(f"{path}: line {first} ({line[:80]!r}) is not 'user::item::rating[::timestamp]'")
    mapping = None if columns is None else _columns_mapping(columns)
    if header is None:
        header = _looks_like_header(fields, mapping)
    shown = {"\t": "<TAB>", " ": " "}.get(sep, sep)
    if header:
        description = "a header naming user, item and rating columns, then one rating per line"
        names = [_name(f) for f in fields]
        if mapping is None:
            mapping = {}
            for role, accepted in _ACCEPTED.items():
                name = pick_column(names, accepted, role, path, required=role != "timestamp")
                if name is not None:
                    mapping[role] = name
    else:
        description = f"'user{shown}item{shown}rating[{shown}timestamp]' on every line"
        if sep == " ":
            description = "whitespace-separated 'user item rating [timestamp]' on every line"
        if mapping is None:
            if len(fields) not in (3, 4):
                raise ValueError(
                    f"{path}: line {first} has {len(fields)} fields ({line[:80]!r}); expected {description} "
                    "(or pass columns= to say which fields hold the user, item and rating)"
                )
            mapping = dict(zip(ROLES, range(len(fields))))
    positions = {}
    for role, value in mapping.items():
        if isinstance(value, str):
            if not header:
                raise ValueError(
                    f"{path}: columns names {role} column {value!r}, but line {first} is not a header "
                    f"({line[:80]!r}); give 0-based positions instead, or pass header=True"
                )
            exact = [k for k, f in enumerate(fields) if _name(f) == value]
            loose = [k for k, f in enumerate(fields) if _name(f).lower() == value.strip().lower()]
            if not (exact or loose):
                raise ValueError(f"{path}: no column {value!r} (for the {role}); the header has {[_name(f) for f in fields]}")
            positions[role] = (exact or loose)[0]
        else:
            value = int(value)
            if not 0 <= value < len(fields):
                raise ValueError(
                    f"{path}: columns puts the {role} in field {value} (0-based), but line {first} has "
                    f"{len(fields)} fields ({line[:80]!r})"
                )
            positions[role] = value
    if len(set(positions.values())) != len(positions):
        raise ValueError(f"{path}: two roles share one column: {positions}")
    return _Layout(sep, bool(header), first, len(fields), positions, description)


# --- the fast path: numeric columns, parsed in chunks into preallocated arrays -----------------------


class _ByteRange(io.RawIOBase):
    """The bytes ``start .. end`` of a file, as a readable stream (one part of a file parsed in parallel)."""

    def __init__(self, path: Path, start: int, end: int):
        self._file = open(path, "rb", buffering=0)
        self._file.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        got = self._file.readinto(memoryview(buffer)[:n])
        self._left -= got
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


def _parts(path: Path, count: int) -> list[tuple[int, int]]:
    """Byte ranges that cut the file at line ends into about ``count`` equal parts."""
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        for k in range(1, count):
            f.seek(max(size * k // count, cuts[-1]))
            f.readline()
            if f.tell() < size and f.tell() > cuts[-1]:
                cuts.append(f.tell())
    cuts.append(size)
    return list(zip(cuts[:-1], cuts[1:]))


def _count_rows(path: Path, start: int, end: int) -> int:
    """Lines in the byte range ``start .. end`` (newlines, plus a last line without one)."""
    count, last = 0, b"\n"
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        left = end - start
        while left > 0:
            block = f.read(min(left, 1 << 24))
            if not block:
                break
            count += block.count(b"\n")
            left -= len(block)
            last = block[-1:]
    return count + (last != b"\n")


# What _parse_part returns when an id does not fit the int32 columns.
_WIDE = "wide"


def _parse_part(path: Path, start: int, end: int, skiprows: int, layout: _Layout, out: dict, offset: int,
                rows: int):
    """Parse one byte range into ``out[role][offset : offset + rows]``.

    Returns the number of rows, ``_WIDE`` for ids beyond int32 columns, or
    ``None`` at the first thing the fast path does not take.
    """
    fields = {role: layout.pandas_field(k) for role, k in layout.positions.items()}
    gaps = list(range(1, layout.pandas_num_fields, 2)) if layout.sep == "::" else []
    dtype = {k: np.float64 for k in gaps}
    dtype.update({k: (np.float64 if role == "rating" else np.int64) for role, k in fields.items()})
    filled = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            source = io.BufferedReader(_ByteRange(path, start, end), 1 << 20)
            reader = pd.read_csv(
                source, sep=layout.pandas_sep, header=None, skiprows=skiprows, dtype=dtype, chunksize=_CHUNK_ROWS,
                skip_blank_lines=False, index_col=False, engine="c", encoding="utf-8", low_memory=False,
            )
            with source, reader:
                for chunk in reader:
                    n = chunk.shape[0]
                    if chunk.shape[1] != layout.pandas_num_fields or filled + n > rows:
                        return None
                    if gaps and chunk[gaps].notna().to_numpy().any():
                        return None  # a single ':' where '::' belongs
                    rating = chunk[fields["rating"]].to_numpy()
                    if np.isnan(rating).any():
                        return None  # an empty field: named by the careful path
                    at = slice(offset + filled, offset + filled + n)
                    out["rating"][at] = rating
                    for role in ("user", "item"):
                        ids = chunk[fields[role]].to_numpy()
                        if out[role].dtype == np.int32 and (ids.min() < _INT32.min or ids.max() > _INT32.max):
                            return _WIDE
                        out[role][at] = ids
                    if "timestamp" in fields:
                        out["timestamp"][at] = chunk[fields["timestamp"]].to_numpy()
                    filled += n
    except (ValueError, OverflowError, TypeError, pd.errors.ParserError, pd.errors.ParserWarning):
        return None  # not numbers, a missing or extra field, ...: the careful path names the line
    return filled


def _read_fast(path: Path, layout: _Layout, id_dtype=np.int32) -> dict | None:
    """Columns of a file whose used fields are all numbers and whose every line is complete; else ``None``.

    The file is cut at line ends into one part per CPU core (up to
    ``_MAX_PARTS``; pandas' tokenizer and number parsing release the GIL).
    Each part's lines are counted first, so that the parts parse, in chunks
    of ``_CHUNK_ROWS`` rows with fixed dtypes, straight into their slices of
    preallocated columns: int32 ids (int64 where they do not fit), float32
    ratings, int64 timestamps. Nothing is concatenated, and the peak memory
    is the columns plus the parser's buffers.

    ``None`` sends the file to :func:`_read_careful`, which reads it again and
    names the line at fault (or reads string ids). Blank lines also take that
    path, so here row ``k`` is line ``layout.data_line + k``.
    """
    if sorted(layout.positions.values()) != list(range(layout.num_fields)):
        return None  # unused columns (e.g. a comment): the careful path checks them line by line
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    count = max(1, min(cores, _MAX_PARTS, path.stat().st_size // _MIN_PART_BYTES))
    ranges = _parts(path, count)
    skips = [layout.data_line - 1] + [0] * (len(ranges) - 1)
    with ThreadPoolExecutor(len(ranges)) as pool:
        lines = list(pool.map(lambda r: _count_rows(path, *r), ranges))
        rows = [n - skip for n, skip in zip(lines, skips)]
        if min(rows) < 0 or sum(rows) == 0:
            return None
        total = sum(rows)
        offsets = np.concatenate([[0], np.cumsum(rows)[:-1]]).tolist()
        out = {"user": np.empty(total, id_dtype), "item": np.empty(total, id_dtype),
               "rating": np.empty(total, np.float32)}
        if "timestamp" in layout.positions:
            out["timestamp"] = np.empty(total, np.int64)
        results = list(pool.map(
            lambda k: _parse_part(path, *ranges[k], skips[k], layout, out, offsets[k], rows[k]), range(len(ranges))
        ))
    if _WIDE in results and id_dtype == np.int32:
        del out
        return _read_fast(path, layout, np.int64)
    if results != rows:
        return None  # a part failed, or had fewer rows than lines (e.g. a quoted line break)
    return out


# --- the careful path: any ids, every problem named by its line ---------------------------------------


def _read_table(path: Path, sep: str, header: bool, num_fields: int, description: str, skiprows: int = 0,
                first: int = 1, dtype=None) -> pd.DataFrame:
    """Parse with pandas; a line with too many fields is a ``ValueError`` naming it."""
    kw = dict(sep=sep, index_col=False, skip_blank_lines=False, encoding="utf-8", encoding_errors="replace",
              skiprows=skiprows, keep_default_na=False, na_values=[""], dtype=dtype)
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
                f"{path}: line {line} has more fields than line {first} ({_line_text(path, line)!r}); "
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


def _read_careful(path: Path, layout: _Layout) -> tuple[dict, np.ndarray]:
    """Columns as numbers or strings, and each row's line number; ``ValueError`` naming the line at fault."""
    skip = layout.data_line - 1
    frame = _read_table(path, layout.pandas_sep, False, layout.pandas_num_fields, layout.description, skip,
                        layout.first)
    if layout.sep == "::":
        gaps = list(range(1, frame.shape[1], 2))
        if gaps and frame[gaps].notna().any(axis=None):
            row = int(np.flatnonzero(frame[gaps].notna().any(axis=1).to_numpy())[0])
            line = row + layout.data_line
            raise ValueError(f"{path}: line {line} ({_line_text(path, line)!r}) is not {layout.description}")
    picked = {role: layout.pandas_field(k) for role, k in layout.positions.items()}
    frame = frame[list(picked.values())]
    frame.columns = list(picked)
    frame = _check_complete(path, frame, list(picked), layout.data_line, layout.description, optional=("timestamp",))
    columns = {
        "user": _numeric_column(path, frame, "user", "user id", ids=True),
        "item": _numeric_column(path, frame, "item", "item id", ids=True),
        "rating": _numeric_column(path, frame, "rating", "rating", ids=False),
    }
    if "timestamp" in frame.columns and frame["timestamp"].notna().all():
        columns["timestamp"] = _numeric_column(path, frame, "timestamp", "timestamp", ids=False)
    return columns, frame.attrs["lines"]


def _as_scale(scale) -> RatingScale | None:
    if scale is None or isinstance(scale, RatingScale):
        return scale
    if isinstance(scale, (tuple, list)) and len(scale) in (2, 3):
        return RatingScale(*scale)
    raise TypeError(f"scale must be a RatingScale or (low, high[, step]), got {scale!r}")


def read_ratings(path, sep: str | None = None, columns=None, header: bool | None = None, duplicates: str = "error",
                 scale=None, *, format: str = "auto") -> Ratings:
    """Read a ratings file: a MovieLens layout or any delimited file of (user, item, rating[, timestamp]).

    Parameters
    ----------
    path : str or Path
    sep : str, optional
        The field separator: ``"::"`` (ml-1m / ml-10m ``ratings.dat``),
        ``"\\t"`` (ml-100k ``u.data``), ``","``, ``";"``, ``" "`` (any run of
        spaces and tabs), or any other single character. By default the first
        of ``"::"``, tab, ``","``, ``";"``, spaces that cuts the first line
        into three or more fields.
    columns : dict or list, optional
        Which column holds what: ``{"user": "customer", "item": "product",
        "rating": "stars"}`` (header names, matched exactly, else in any
        case) or 0-based positions (``{"user": 0, "item": 2, "rating": 3}``),
        with an optional ``"timestamp"``; a list gives the user, item, rating
        and optionally timestamp columns in that order. By default a header's
        names are matched against :data:`USER_COLUMNS`, :data:`ITEM_COLUMNS`,
        :data:`RATING_COLUMNS` and :data:`TIMESTAMP_COLUMNS` (any case), and a
        file without one is ``user item rating [timestamp]``.
    header : bool, optional
        Whether the first non-blank line is a header. By default it is when
        it names a known column (or one in ``columns``) or has text where the
        rating goes, so ``u52,m10,1`` is data with string ids.
    duplicates : {"error", "mean", "first", "last"}
        What to do with a (user, item) pair rated twice; see
        :meth:`Ratings.from_arrays`.
    scale : RatingScale or (low, high[, step]), optional
        The scale the ratings live on; by default inferred from the ratings
        (:meth:`RatingScale.infer`), which cannot tell a half-star data set
        whose ratings happen to be whole stars from a whole-star one: pass
        ``scale=(0.5, 5, 0.5)`` there (the MovieLens loaders do).
    format : {"auto", "tab", "dat", "csv"}
        Earlier versions' way of choosing the separator (keyword only):
        ``"tab"``, ``"dat"`` and ``"csv"`` are ``sep="\\t"``, ``"::"`` and
        ``","``; ``"auto"`` leaves it to ``sep``.

    Returns
    -------
    Ratings
        Integer ids where a column is all integers, else strings.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Naming the file and, where there is one, the line: an unknown
        argument, a line with a missing or extra field, a non-numeric rating,
        a column the header lacks, duplicate pairs, ratings off the scale.

    Examples
    --------
    >>> ratings = read_ratings("ml-100k/u1.base")  # doctest: +SKIP
    >>> ratings = read_ratings("shop.csv", columns={"user": "customer", "item": "product", "rating": "stars"},
    ...                        duplicates="last", scale=(1, 5, 1))  # doctest: +SKIP
    """
    path = Path(path).expanduser()
    if format not in FORMATS:
        raise ValueError(f"format={format!r}; expected one of {FORMATS}")
    if format != "auto":
        if sep is not None and sep != _FORMAT_SEPARATOR[format]:
            raise ValueError(f"format={format!r} means sep={_FORMAT_SEPARATOR[format]!r}, but sep={sep!r} was given")
        sep = _FORMAT_SEPARATOR[format]
    if sep is not None and (not isinstance(sep, str) or sep == "" or (len(sep) > 1 and sep not in ("::", r"\s+"))):
        raise ValueError(f"sep={sep!r}; expected one character, '::' or ' ' (any run of spaces)")
    sep = " " if sep == r"\s+" else sep
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates={duplicates!r}; expected one of {DUPLICATE_POLICIES}")
    if header not in (None, True, False):
        raise TypeError(f"header must be True, False or None, got {header!r}")
    scale = _as_scale(scale)
    if not path.exists():
        raise FileNotFoundError(f"no ratings file at {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; use read_dataset_dir for a MovieLens directory")
    line, first = _first_line(path)
    layout = _layout(path, line, first, sep or _sniff_separator(path, line), columns, header)
    parsed = _read_fast(path, layout)
    if parsed is not None:
        lines = None  # row k is line layout.data_line + k
    else:
        parsed, lines = _read_careful(path, layout)
    try:
        return Ratings.from_arrays(
            parsed["user"], parsed["item"], parsed["rating"], parsed.get("timestamp"),
            scale=scale, duplicates=duplicates,
        )
    except ValueError as exc:
        rows = getattr(exc, "rows", None)
        if not rows:
            raise ValueError(f"{path}: {exc}") from None
        at = [int(lines[k]) if lines is not None else k + layout.data_line for k in rows]
        message = str(exc)
        if f"rows {rows}" in message:
            message = message.replace(f"rows {rows}", f"lines {at}")
        else:
            message = f"{message} (lines {at})"
        raise ValueError(f"{path}: {message}") from None


def _header_table(path, roles: tuple[str, ...], description: str, missing: str) -> tuple[Path, pd.DataFrame]:
    """The ``roles`` columns of a CSV (or TSV) whose header names them, as text; a missing field names its line."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{missing} {path}")
    line, first = _first_line(path)
    sep = "\t" if "\t" in line and "," not in line else ","
    # As text: a string id such as "007" stays itself (pandas would read 7, or 7.0 beside a blank line).
    frame = _read_table(path, sep, True, len(line.split(sep)), description, skiprows=first - 1, dtype=str)
    frame = frame[[pick_column(frame.columns, _ACCEPTED[role], role, path) for role in roles]]
    frame.columns = list(roles)
    if frame.shape[0] == 0:
        raise ValueError(f"{path}: the file has a header and nothing under it; expected {description}")
    return path, _check_complete(path, frame, list(roles), first + 1, description)


def _ids(path: Path, frame: pd.DataFrame, role: str, vocab: Vocabulary | None) -> np.ndarray:
    """A role's ids as ``vocab``'s type (strings, or integers: a non-integer id names its line)."""
    if vocab is not None and vocab.is_string:
        return frame[role].astype(str).str.strip().to_numpy(dtype=object)
    what = f"{role} id" + ("" if vocab is None else " (this model's ids are integers)")
    return normalize_ids(_numeric_column(path, frame, role, what, ids=vocab is None), f"{role} ids")


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
    path, frame = _header_table(path, ("item", "rating"), "a header naming item and rating columns, and both on "
                                "every line", "no ratings file at")
    rating = _numeric_column(path, frame, "rating", "rating", ids=False).astype(np.float64)
    items = _ids(path, frame, "item", item_vocab)
    if not np.all(np.isfinite(rating)):
        raise ValueError(f"{path}: ratings must be finite")
    if scale is not None:
        try:
            scale.validate(rating)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return items, rating


def read_ids(path, roles: tuple[str, ...] = ("user", "item"), vocabs=None) -> tuple[np.ndarray, ...]:
    """Id columns of a CSV (or tab-separated) file whose header names them: users to rank, pairs to predict.

    ``roles``: of ``"user"``, ``"item"`` (columns named as :func:`read_ratings` accepts, e.g. ``userId``,
    ``movieId``; others ignored). ``vocabs``: a model's vocabularies, one per role, whose id types the ids take;
    ids they lack are kept (predict and recommend give them the cold-start prior). Returns an array (n,) per
    role. No file: ``FileNotFoundError``; an empty file, no column for a role, a missing field or a non-integer
    id for integer ids: ``ValueError`` naming the file and line.
    """
    path, frame = _header_table(path, tuple(roles), "a header naming " + " and ".join(roles) + " columns, and an "
                                "id in each on every line", "no file at")
    return tuple(_ids(path, frame, role, vocab) for role, vocab in zip(roles, vocabs or (None,) * len(roles)))


# --- ratings and pairs from what a user has in hand -------------------------------------------------


def _frame_columns(frame: pd.DataFrame, columns, roles: tuple[str, ...]) -> dict:
    """Role -> column label of ``frame``: from ``columns`` (names or positions) or the accepted aliases."""
    if columns is not None:
        mapping = _columns_mapping(columns)
        out = {}
        for role, value in mapping.items():
            if role not in roles:
                continue
            if isinstance(value, (int, np.integer)):
                if not 0 <= value < frame.shape[1]:
                    raise ValueError(f"columns[{role!r}] = {value}: the DataFrame has {frame.shape[1]} columns")
                value = frame.columns[value]
            elif value not in frame.columns:
                value = pick_column(frame.columns, (value.lower(),), role, "the DataFrame")
            out[role] = value
        return out
    out = {}
    for role in roles:
        label = pick_column(frame.columns, _ACCEPTED[role], role, "the DataFrame", required=role != "timestamp")
        if label is not None:
            out[role] = label
    return out


def as_ratings(data, *, columns=None, duplicates: str = "error", scale=None) -> Ratings:
    """:class:`Ratings` from a ``Ratings``, a pandas DataFrame or a ratings file.

    Parameters
    ----------
    data : Ratings, pandas.DataFrame, str or Path
        A ``Ratings`` is returned as it is; a DataFrame's columns are found by
        the names :func:`read_ratings` accepts (``user`` / ``userId`` /
        ``user_id``, ``item`` / ``movieId`` / ``item_id``, ``rating``,
        optionally ``timestamp``; any case) or by ``columns``; a path is read
        by :func:`read_ratings`.
    columns : dict or list, optional
        As in :func:`read_ratings` (names or 0-based positions).
    duplicates : {"error", "mean", "first", "last"}
    scale : RatingScale or (low, high[, step]), optional

    Returns
    -------
    Ratings

    Examples
    --------
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"userId": [1, 1, 2], "movieId": [10, 20, 10], "rating": [4.0, 3.0, 5.0]})
    >>> len(as_ratings(frame))
    3
    """
    if isinstance(data, Ratings):
        return data
    if isinstance(data, (str, os.PathLike)):
        return read_ratings(data, columns=columns, duplicates=duplicates, scale=scale)
    if isinstance(data, pd.DataFrame):
        found = _frame_columns(data, columns, ROLES)
        return Ratings.from_arrays(
            data[found["user"]], data[found["item"]], data[found["rating"]],
            data[found["timestamp"]] if "timestamp" in found else None,
            scale=_as_scale(scale), duplicates=duplicates,
        )
    raise TypeError(f"expected Ratings, a pandas DataFrame or a ratings file path, got {type(data).__name__}")


def as_pairs(frame: pd.DataFrame, columns=None) -> tuple[np.ndarray, np.ndarray]:
    """The (users, items) id columns of a DataFrame, found as :func:`as_ratings` finds them.

    Returns
    -------
    users, items : array, shape (n,)
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame of (user, item) pairs, got {type(frame).__name__}")
    if columns is not None and not isinstance(columns, Mapping):
        columns = dict(zip(ROLES, columns))
    if columns is not None:
        columns = {"rating": 0, **columns}  # pairs need no rating column; the mapping check wants one
    found = _frame_columns(frame, columns, ("user", "item"))
    return frame[found["user"]].to_numpy(), frame[found["item"]].to_numpy()
