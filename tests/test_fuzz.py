"""Bad input fuzzed: any bytes a user may hand bayesmf end in a correct load or a clear error.

``read_ratings`` either returns ``Ratings`` or raises ``ValueError`` /
``FileNotFoundError`` naming the file; the CLI exits with status 2 and one
``bayesmf: error:`` line, never a traceback. Hypothesis' deadline bounds each
example's time (the issue asks for 5 s for any input up to 1 MB).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayesmf import cli
from bayesmf.data import Ratings, read_ratings

DEADLINE_MS = 5000
FUZZ = settings(max_examples=60, deadline=DEADLINE_MS, suppress_health_check=[HealthCheck.function_scoped_fixture])

FIELDS = st.one_of(
    st.integers(-5, 10**6).map(str),
    st.integers(2**62, 2**70).map(str),  # ids beyond int64
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "", " ", "NaN", "1e309", "0.5", "4.5"]),
    st.text(alphabet="abcéü漢字🙂_-", min_size=1, max_size=6),
)
SEPARATORS = st.sampled_from(["\t", ",", "::", ";", " ", "|"])


@st.composite
def ratings_text(draw):
    """Lines of 2..5 fields joined by one separator or a mix, sometimes with a header and a cut-off end."""
    sep = draw(SEPARATORS)
    mixed = draw(st.booleans())
    lines = []
    if draw(st.booleans()):
        lines.append(sep.join(draw(st.sampled_from([["userId", "movieId", "rating", "timestamp"], ["user", "item", "rating"], ["a", "b"]]))))
    for _ in range(draw(st.integers(0, 25))):
        fields = draw(st.lists(FIELDS, min_size=2, max_size=5))
        lines.append((draw(SEPARATORS) if mixed else sep).join(fields))
    text = "\n".join(lines)
    if text and draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]  # truncated
    return text


def check_read(path):
    try:
        out = read_ratings(path)
    except (ValueError, FileNotFoundError) as exc:
        assert path.name in str(exc), f"error does not name the file: {exc}"
        return None
    assert isinstance(out, Ratings) and len(out) > 0
    assert np.all(np.isfinite(out.rating))
    return out


@FUZZ
@given(data=st.binary(max_size=2000))
def test_random_bytes(tmp_path, data):
    path = tmp_path / "ratings.bin"
    path.write_bytes(data)
    check_read(path)


@FUZZ
@given(text=ratings_text())
def test_structured_garbage(tmp_path, text):
    path = tmp_path / "ratings.txt"
    path.write_text(text, encoding="utf-8")
    check_read(path)


@settings(max_examples=3, deadline=DEADLINE_MS * 3, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad_row=st.integers(0, 40_000), token=st.sampled_from(["nan", "x", "", "1e400", "3::4", "é"]))
def test_one_megabyte_with_one_bad_line_names_the_line(tmp_path, bad_row, token):
    rng = np.random.default_rng(bad_row)
    rows = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in zip(rng.integers(1, 5000, 45_000), rng.integers(1, 3000, 45_000),
                                                      rng.integers(1, 6, 45_000), rng.integers(8 * 10**8, 9 * 10**8, 45_000))]
    fields = rows[bad_row].split("\t")
    fields[2] = token
    rows[bad_row] = "\t".join(fields)
    path = tmp_path / "big.data"
    path.write_text("\n".join(rows) + "\n")
    assert path.stat().st_size <= 1 << 20
    with pytest.raises(ValueError) as exc:
        read_ratings(path, duplicates="last")
    message = str(exc.value)
    assert path.name in message and str(bad_row + 1) in message, message


def run_cli(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
    return code, err.getvalue()


@FUZZ
@given(data=st.binary(min_size=1, max_size=2000))
def test_cli_on_a_corrupt_model_file_exits_2_without_a_traceback(tmp_path, data):
    path = tmp_path / "model.nc"
    path.write_bytes(data)
    code, err = run_cli(["predict", "--model", str(path), "--user", "1", "--item", "1"])
    assert code == 2 and err.startswith("bayesmf: error:") and "Traceback" not in err, err


@FUZZ
@given(text=ratings_text())
def test_cli_on_garbage_ratings_exits_2_or_reads_them(tmp_path, text):
    path = tmp_path / "train.txt"
    path.write_text(text, encoding="utf-8")
    try:
        read_ratings(path)
    except (ValueError, FileNotFoundError):
        code, err = run_cli(["fit", "--train", str(path), "--method", "map", "--out", str(tmp_path / "m.nc"), "--no-progress"])
        assert code == 2 and err.startswith("bayesmf: error:") and "Traceback" not in err, err
        assert not (tmp_path / "m.nc").exists()
