"""Shared plumbing of the experiment scripts: arguments, run records, tables, figures.

Nothing here models anything: fitting, prediction and scoring go through the
public API of :mod:`bayesmf`. This module only

* adds the arguments every script takes (``--seed``, ``--out``, ``--data``,
  ``--tiny``, ``--plot-only``, ``--timeout``) and arms the watchdog;
* writes ``config.json`` (arguments, seed, package versions, machine, wall
  time), ``metrics.csv`` (long format) and ``summary.md``;
* scores a predictive (:class:`bayesmf.posterior.Prediction` or a fold-in
  prediction whose mixture weights differ per row) with
  :mod:`bayesmf.metrics`, one row per group of rows sharing a weight vector;
* sets one plotting style so that figures of all scripts look alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

LEVELS = (0.5, 0.8, 0.9, 0.95)
PACKAGES = ("bayesmf", "jax", "jaxlib", "numpyro", "numpy", "scipy", "pandas", "arviz", "arviz-stats", "optax", "matplotlib")
REPO = Path(__file__).resolve().parents[1]


# --- arguments and the run record ------------------------------------------------------------


def base_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """Parser with the arguments every experiment takes."""
    parser = argparse.ArgumentParser(
        prog=f"experiments/{name}.py",
        description=(doc or "").strip().splitlines()[0] if doc else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every split, fit and simulation")
    parser.add_argument("--out", type=Path, default=REPO / "results" / name, help="output directory")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ["BAYESMF_DATA"]) if os.environ.get("BAYESMF_DATA") else None,
        help="directory holding ml-100k/ (default: $BAYESMF_DATA)",
    )
    parser.add_argument("--tiny", action="store_true", help="seconds-long run on small synthetic data (tests)")
    parser.add_argument("--plot-only", action="store_true", help="redraw figures and summary from the saved CSVs")
    parser.add_argument("--timeout", type=float, default=0, help="watchdog: abort after this many seconds (0: none)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return parser


def int_list(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def str_list(text: str) -> list[str]:
    return [x.strip() for x in str(text).split(",") if x.strip()]


class WatchdogTimeout(Exception):
    """The run exceeded ``--timeout`` seconds."""


@contextlib.contextmanager
def watchdog(seconds: float):
    """Raise :class:`WatchdogTimeout` in the main thread after ``seconds`` (0: disabled)."""
    if not seconds or seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _fire(signum, frame):
        raise WatchdogTimeout(f"watchdog: run exceeded --timeout {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _fire)
    signal.alarm(max(1, int(math.ceil(seconds))))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    info = dict(
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        hostname_hash=hash(platform.node()) & 0xFFFF,
    )
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        import jax

        info["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception as exc:  # noqa: BLE001 - the record should never fail the run
        info["jax_devices"] = f"unavailable: {exc}"
    try:
        import subprocess

        info["git_commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception:  # noqa: BLE001
        info["git_commit"] = None
    return info


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_config(out: Path, args: argparse.Namespace, *, argv, wall_seconds: float, status: str, extra: dict | None = None) -> Path:
    """``config.json``: arguments, seed, versions, machine, wall time (merged with a previous run's record)."""
    path = Path(out) / "config.json"
    record = dict(
        script=sys.argv[0] if argv is None else None,
        argv=list(sys.argv[1:] if argv is None else argv),
        args=_jsonable(vars(args)),
        seed=args.seed,
        status=status,
        wall_seconds=round(float(wall_seconds), 2),
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        versions=versions(),
        machine=machine(),
    )
    if extra:
        record.update(_jsonable(extra))
    if path.exists():
        try:
            previous = json.loads(path.read_text())
            history = previous.pop("previous_runs", [])
            history.append({k: previous.get(k) for k in ("argv", "status", "wall_seconds", "finished")})
            record["previous_runs"] = history
        except (json.JSONDecodeError, OSError):
            pass
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def enable_compile_cache() -> None:
    """Persistent XLA compilation cache (samplers compile for 20-40 s on 2 CPU cores).

    Only a cache of compiled programs: results are bit-identical with or
    without it. Set ``BAYESMF_JAX_CACHE=""`` to disable.
    """
    where = os.environ.get("BAYESMF_JAX_CACHE", str(Path.home() / ".cache" / "bayesmf-experiments" / "jax"))
    if not where:
        return
    import jax

    Path(where).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def progress(iterable=None, *, total=None, desc=None, disable=False):
    """A tqdm bar on stderr; ``disable=False`` means tqdm's ``disable=None`` (silent off a terminal)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=True if disable else None, dynamic_ncols=True, file=sys.stderr)


def ml100k_dir(args) -> Path:
    """The ml-100k directory under ``--data`` (found through bayesmf.data when present)."""
    if args.data is None:
        raise SystemExit("no data: pass --data DIR (holding ml-100k/) or set BAYESMF_DATA; or use --tiny")
    path = Path(args.data)
    if (path / "u.data").exists():
        return path
    if (path / "ml-100k" / "u.data").exists():
        return path / "ml-100k"
    raise SystemExit(f"--data {path}: no ml-100k/u.data under it")


def feature_frames(args, num_users: int, num_items: int):
    """(users, movies) side-feature DataFrames by id: ml-100k's u.user and u.item, or (``--tiny``)
    random ones for the synthetic data's ids 1..num_users and 1..num_items."""
    if args.tiny:
        rng = np.random.default_rng(args.seed)
        users = pd.DataFrame({"job": rng.choice(["a", "b", "c"], num_users), "age": rng.normal(30, 8, num_users)},
                             index=np.arange(1, num_users + 1))
        items = pd.DataFrame({"genre": rng.choice(["x", "y"], num_items)}, index=np.arange(1, num_items + 1))
        return users, items
    from bayesmf import load_movielens_features

    return load_movielens_features(ml100k_dir(args))


def get_estimator():
    """``bayesmf.BayesMF`` (re-exported at top level once the package curates its API)."""
    import bayesmf

    if hasattr(bayesmf, "BayesMF"):
        return bayesmf.BayesMF
    from bayesmf.estimator import BayesMF

    return BayesMF


# --- tables ------------------------------------------------------------------------------------


def append_rows(path: Path, rows: Sequence[dict]) -> None:
    """Append rows to a CSV (header from the union of columns; rewrites when columns change)."""
    if not rows:
        return
    new = pd.DataFrame(list(rows))
    if path.exists():
        old = pd.read_csv(path)
        frame = pd.concat([old, new], ignore_index=True)
    else:
        frame = new
    frame.to_csv(path, index=False)


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in frame.iterrows():
        cells = []
        for value in row:
            if isinstance(value, (float, np.floating)):
                cells.append("" if not np.isfinite(value) else format(value, floatfmt))
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_sd(values: Iterable[float], fmt: str = ".4f") -> str:
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if v.size == 0:
        return "n/a"
    if v.size == 1:
        return f"{v[0]:{fmt}} (1 fold)"
    return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}"


# --- scoring -----------------------------------------------------------------------------------


def score(y, pred, levels: Sequence[float] = LEVELS, groups=None) -> pd.DataFrame | dict:
    """Point, probabilistic and interval scores of a prediction, via :mod:`bayesmf.metrics`.

    ``pred`` is a :class:`bayesmf.Prediction` made with ``keep_components=True``
    (its mixture, fold-in weights included, is scored by
    :func:`bayesmf.predictive.score_rows`), or any object with ``mean`` and
    ``sd`` and no components (a Gaussian predictive, e.g. an inline baseline).

    Returns a dict (``groups`` None) or a DataFrame indexed by group with
    ``count`` and the columns of :func:`bayesmf.metrics.summarize`.
    """
    from bayesmf import metrics, predictive

    y = np.asarray(y, np.float64)
    comps = getattr(pred, "components", None)
    if comps is None:
        sd = np.broadcast_to(np.asarray(pred.sd, np.float64), y.shape)
        rows = metrics.score_rows(y, np.asarray(pred.mean, np.float64), sd, levels=levels)
    else:
        rows = predictive.score_rows(y, comps, levels)
    if groups is None:
        out = metrics.summarize(rows).iloc[0].to_dict()
        return {**out, "count": int(out["count"])}
    return metrics.summarize(rows, groups)


class GaussianBaseline:
    """Inline trivial predictive ``N(mean, sd^2)`` (the package has no baseline predictors)."""

    def __init__(self, mean, sd, n: int):
        self.mean = np.broadcast_to(np.asarray(mean, np.float64), (n,)).copy()
        self.sd = np.broadcast_to(np.asarray(sd, np.float64), (n,)).copy()
        self.components = None


# --- figures -----------------------------------------------------------------------------------

METHOD_COLORS = {
    "map": "#1f77b4",
    "map-fixed": "#aec7e8",
    "gibbs": "#d62728",
    "gibbs-fixed": "#ff9896",
    "nuts": "#2ca02c",
    "svi": "#9467bd",
    "zero": "#7f7f7f",
    "global-mean": "#bcbd22",
    "prior-map": "#17becf",
    "prior-gibbs": "#ff7f0e",
    "foldin-map": "#1f77b4",
    "foldin-gibbs": "#d62728",
    "mean": "#1f77b4",
    "thompson": "#d62728",
    "ucb": "#2ca02c",
    "random": "#7f7f7f",
}
METHOD_MARKERS = {
    "map": "o", "map-fixed": "s", "gibbs": "^", "gibbs-fixed": "v", "nuts": "D", "svi": "P",
    "zero": "x", "global-mean": "+", "prior-map": "<", "prior-gibbs": ">", "foldin-map": "o", "foldin-gibbs": "^",
}


def color(method: str) -> str:
    return METHOD_COLORS.get(method, "black")


def marker(method: str) -> str:
    return METHOD_MARKERS.get(method, "o")


def plt():
    """Matplotlib with the Agg backend and the house figure style."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as pyplot

    pyplot.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 130,
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 8.5,
            "legend.framealpha": 0.85,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    return pyplot


def savefig(fig, path: Path) -> Path:
    """Save with a tight bounding box (nothing clipped) and close."""
    fig.savefig(path, bbox_inches="tight", pad_inches=0.1)
    import matplotlib.pyplot as pyplot

    pyplot.close(fig)
    return path


def finish_run(out: Path, args, argv, start: float, status: str, extra: dict | None = None) -> None:
    write_config(out, args, argv=argv, wall_seconds=time.perf_counter() - start, status=status, extra=extra)
