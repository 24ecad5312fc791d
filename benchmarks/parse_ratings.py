"""How fast does ``read_ratings`` turn an ML-25M-sized ``ratings.csv`` into ``Ratings``?

Question: parse a file in MovieLens 25M's ``ratings.csv`` layout (25,000,095
rows in the real set; header ``userId,movieId,rating,timestamp``, CRLF line
endings, rows sorted by user then movie, half-star ratings written ``4.0`` /
``3.5``, ten-digit timestamps) into a :class:`bayesmf.data.Ratings`. Target on
this 2-core machine: under 5 s, and a peak resident set of at most 1.5 GB for
the whole process doing the read.

Data: synthetic, written by this script (MovieLens may not be copied, and
ML-25M is not in the test data). 162,541 users (ML-25M's count) with at least
20 ratings each and a heavy-tailed number beyond, 62,423 distinct movie ids
drawn from 1..209,171 (as in ML-25M), ratings and timestamps from fixed
distributions. The writer formats the digits with NumPy (no Python loop over
rows) and is timed separately.

The read runs in a fresh child process (``--child``) so that its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is the read's, not the
writer's; the child also reports its RSS after the imports, before reading
(``import bayesmf.data`` imports the whole package, JAX included), its CPU
seconds (all threads) and the 1-minute load average before the read, since
wall-clock seconds on a shared 2-core machine depend on what else runs.

Run::

    python benchmarks/parse_ratings.py                  # 25,000,000 rows, ~0.7 GB file in a temp dir
    python benchmarks/parse_ratings.py --rows 1000000   # quicker
    python benchmarks/parse_ratings.py --tiny           # seconds, for a smoke test

Writes ``results/benchmarks/parse_ratings.json`` (override with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

NUM_USERS = 162_541  # ML-25M
NUM_MOVIES = 62_423  # distinct movie ids in ML-25M
MAX_MOVIE_ID = 209_171  # largest movie id in ML-25M
MIN_PER_USER = 20  # every MovieLens user has at least 20 ratings
TARGET_SECONDS = 5.0
TARGET_PEAK_MB = 1536.0
HEADER = b"userId,movieId,rating,timestamp\r\n"
CHUNK_ROWS = 2_000_000


def _versions() -> dict:
    import pandas as pd

    import bayesmf

    return dict(bayesmf=bayesmf.__version__, numpy=np.__version__, pandas=pd.__version__,
                python=platform.python_version())


def synthetic_columns(seed: int, rows: int) -> dict[str, np.ndarray]:
    """The four columns of a ratings.csv in ML-25M's layout, sorted by user then movie.

    Returns
    -------
    dict of arrays, each shape (rows,)
        ``userId`` (int64), ``movieId`` (int64), ``rating`` (float64, half
        stars 0.5..5), ``timestamp`` (int64 seconds).
    """
    rng = np.random.default_rng(seed)
    num_users = min(NUM_USERS, max(1, rows // MIN_PER_USER))
    num_movies = min(NUM_MOVIES, max(rows // 10, 50))
    # Heavy-tailed degrees: MIN_PER_USER each, the rest spread by lognormal weights.
    extra = rows - num_users * min(MIN_PER_USER, rows // num_users)
    weights = rng.lognormal(0.0, 1.2, num_users)
    degrees = min(MIN_PER_USER, rows // num_users) + rng.multinomial(extra, weights / weights.sum())
    degrees = np.minimum(degrees, num_movies)
    short = rows - int(degrees.sum())
    while short > 0:  # clipped users (rare): hand their surplus to users with room
        room = np.flatnonzero(degrees < num_movies)
        take = rng.choice(room, size=min(short, room.size), replace=False)
        degrees[take] += 1
        short -= take.size
    users = np.repeat(np.arange(1, num_users + 1, dtype=np.int64), degrees)
    # Movies per user: one draw in each of `degree` equal strata of the movie list (cut at
    # whole positions), so they are distinct and increasing within a user.
    starts = np.repeat(np.cumsum(degrees) - degrees, degrees)
    rank = np.arange(rows, dtype=np.int64) - starts
    per_user = np.repeat(degrees, degrees).astype(np.float64)
    lo = np.floor(rank * (num_movies / per_user)).astype(np.int64)
    hi = np.floor((rank + 1) * (num_movies / per_user)).astype(np.int64)  # > lo: degrees <= num_movies
    position = lo + np.floor(rng.random(rows) * (hi - lo)).astype(np.int64)
    movie_ids = np.sort(rng.choice(np.arange(1, MAX_MOVIE_ID + 1), size=num_movies, replace=False))
    stars = np.arange(1, 11) / 2.0
    probs = np.array([1.6, 3.1, 1.6, 6.6, 4.8, 19.4, 13.1, 26.6, 8.5, 14.4])  # ML-25M-like histogram
    rating = stars[np.searchsorted(np.cumsum(probs) / probs.sum(), rng.random(rows), side="right").clip(0, 9)]
    timestamp = rng.integers(1_000_000_000, 1_574_327_703, size=rows)  # ten digits
    return {"userId": users, "movieId": movie_ids[position], "rating": rating, "timestamp": timestamp}


def _num_digits(values: np.ndarray) -> np.ndarray:
    return np.maximum(np.floor(np.log10(np.maximum(values, 1))).astype(np.int64) + 1, 1)


def _put_uint(buf: np.ndarray, start: np.ndarray, values: np.ndarray, digits: np.ndarray) -> None:
    """Write non-negative integers as ASCII digits at ``buf[start:start + digits]``."""
    rest = values.copy()
    for k in range(int(digits.max()) - 1, -1, -1):  # last digit first
        if k < digits.min():  # every value has this digit: no mask
            rest, digit = np.divmod(rest, 10)
            buf[start + k] = digit.astype(np.uint8) + 48
            continue
        live = k < digits
        rest[live], digit = np.divmod(rest[live], 10)
        buf[start[live] + k] = digit.astype(np.uint8) + 48


def format_lines(columns: dict[str, np.ndarray]) -> bytes:
    """``userId,movieId,rating,timestamp`` lines with CRLF, formatted with array operations."""
    user, movie, rating, ts = columns["userId"], columns["movieId"], columns["rating"], columns["timestamp"]
    du, dm, dt = _num_digits(user), _num_digits(movie), _num_digits(ts)
    length = du + 1 + dm + 1 + 3 + 1 + dt + 2  # rating is always d.d
    end = np.cumsum(length)
    start = end - length
    buf = np.empty(int(end[-1]), np.uint8)
    _put_uint(buf, start, user, du)
    pos = start + du
    buf[pos] = ord(",")
    _put_uint(buf, pos + 1, movie, dm)
    pos = pos + 1 + dm
    buf[pos] = ord(",")
    whole = np.floor(rating).astype(np.int64)
    buf[pos + 1] = (whole + 48).astype(np.uint8)
    buf[pos + 2] = ord(".")
    buf[pos + 3] = np.where(rating > whole, ord("5"), ord("0")).astype(np.uint8)
    buf[pos + 4] = ord(",")
    _put_uint(buf, pos + 5, ts, dt)
    pos = pos + 5 + dt
    buf[pos] = ord("\r")
    buf[pos + 1] = ord("\n")
    return buf.tobytes()


def write_file(path: Path, seed: int, rows: int) -> dict:
    """Write the synthetic file; the seconds spent generating and formatting + writing."""
    t0 = time.perf_counter()
    columns = synthetic_columns(seed, rows)
    t1 = time.perf_counter()
    with open(path, "wb") as f:
        f.write(HEADER)
        for lo in range(0, rows, CHUNK_ROWS):
            f.write(format_lines({k: v[lo : lo + CHUNK_ROWS] for k, v in columns.items()}))
    t2 = time.perf_counter()
    return dict(
        generate_seconds=t1 - t0, write_seconds=t2 - t1, bytes=path.stat().st_size,
        num_users=int(np.unique(columns["userId"]).size), num_items=int(np.unique(columns["movieId"]).size),
    )


def _peak_rss_mb() -> float:
    """This process's peak resident set, MB: ``ru_maxrss`` (Linux carries it over ``exec`` from the
    process that forked, so the parent forks while small), and ``VmHWM`` where /proc has it."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, float(line.split()[1]) / 1024)
    except OSError:
        pass
    return peak


def child(path: str) -> None:
    """Run in a fresh process: import, read once, print seconds and peak RSS as JSON."""
    from bayesmf.data import readers

    imported_mb = _peak_rss_mb()
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    ratings = readers.read_ratings(path)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak_mb = _peak_rss_mb()
    print(json.dumps(dict(
        seconds=seconds, cpu_seconds=cpu_seconds, peak_mb=peak_mb, rss_after_imports_mb=imported_mb,
        load_average_before=load, nnz=ratings.nnz,
        num_users=ratings.num_users, num_items=ratings.num_items, scale=str(ratings.scale),
        has_timestamps=ratings.timestamp is not None,
    )))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=25_000_000, help="rows of the synthetic file (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic file (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="reads, each in a fresh process (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="20,000 rows, for a smoke test")
    parser.add_argument("--dir", default=None, help="where to write the file (default: a temporary directory)")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "benchmarks" / "parse_ratings.json"),
                        help="result JSON (default: %(default)s)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--write", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return {}
    rows = 20_000 if args.tiny else args.rows
    if args.write:
        print(json.dumps(write_file(Path(args.write), args.seed, rows)))
        return {}
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="parse-ratings-") as tmp:
        path = Path(tmp) / "ratings.csv"
        # The writer runs in its own process too: this one stays small, so the readers it forks
        # start from a small ru_maxrss.
        proc = subprocess.run([sys.executable, __file__, "--write", str(path), "--rows", str(rows),
                               "--seed", str(args.seed)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"writing the file failed:\n{proc.stderr}")
        written = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"wrote {rows:,} rows ({written['bytes'] / 1e6:.0f} MB) in {written['write_seconds']:.1f} s "
              f"(+{written['generate_seconds']:.1f} s generating)", file=sys.stderr)
        reads = []
        for _ in range(args.repeats):
            proc = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True,
                                  cwd=HERE.parent, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"the read failed:\n{proc.stderr}")
            reads.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = min(reads, key=lambda r: r["seconds"])
    result = dict(
        question="seconds and peak RSS of read_ratings on an ML-25M-layout ratings.csv",
        data="synthetic, written by this script in ML-25M's ratings.csv layout",
        config=dict(rows=rows, seed=args.seed, repeats=args.repeats, tiny=args.tiny),
        file=written,
        reads=reads,
        seconds=best["seconds"],
        peak_mb=max(r["peak_mb"] for r in reads),
        targets=dict(seconds=TARGET_SECONDS, peak_mb=TARGET_PEAK_MB),
        meets_targets=bool(best["seconds"] < TARGET_SECONDS and max(r["peak_mb"] for r in reads) <= TARGET_PEAK_MB),
        machine=dict(cpus=os.cpu_count(), platform=platform.platform()),
        versions=_versions(),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("config", "seconds", "peak_mb", "meets_targets")}, indent=2))
    return result


if __name__ == "__main__":
    main()
