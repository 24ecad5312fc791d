"""Wall time of the tuned MAP fit against a 250-sweep Gibbs fit, measured in one run.

Question (issue 18, item 3): is ``BayesMF(method="map")`` -- precisions tuned
on a validation split, then a refit on all ratings -- the cheap baseline it
should be, i.e. no slower than ``BayesMF(method="gibbs", num_samples=200,
num_warmup=50)``, and at what test RMSE?

Every fit runs in a fresh Python process (compilation included, as a user's
first fit), and the methods alternate (``--repeats`` rounds of Gibbs, MAP
and, with ``--old-search``, MAP with the previous search: offset ratio
refined like the factor ratio and tuning fits run to ``ftol``), so that a
change in the machine's load hits all of them alike. For each MAP fit the
tuning table gives the number of tuning fits, their iterations and seconds.

Shapes: ml-100k u1 at rank 10 (``--data``), and with ``--ml1m`` the ML-1M
shape drawn by :func:`bayesmf.synthetic.movielens_like` (a rank-8 model)
at rank 32 (a 10% test split by :func:`bayesmf.split.validation_split`).

Run::

    python benchmarks/map_speed.py --data ../shared/data --old-search   # ~4 min on 2 cores

Writes ``results/benchmarks/map_speed.json`` (override with ``--out``),
with ``uptime`` before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GIBBS = dict(num_samples=200, num_warmup=50)


def _split(shape: str, data_dir: Path):
    if shape == "ml-100k-u1":
        from bayesmf.split import make_split

        return make_split(data_dir / "ml-100k", "u1"), 10
    from bayesmf.split import validation_split
    from bayesmf.synthetic import SHAPES, movielens_like

    ratings = movielens_like(0, **SHAPES["ml-1m"]._asdict(), rank=8).ratings
    return validation_split(ratings, 0.1, 0), 32


def one(shape: str, method: str, data_dir: Path) -> dict:
    """One fit in this process; the measurement printed as JSON."""
    import bayesmf
    from bayesmf import tuning

    if method == "map-old":
        tuning.OFFSET_REFINE_POWERS = tuning.REFINE_POWERS
        tuning.TUNE_FTOL_FACTOR = 1.0
    split, rank = _split(shape, data_dir)
    options = GIBBS if method == "gibbs" else {}
    model = bayesmf.BayesMF(rank=rank, method="gibbs" if method == "gibbs" else "map", progress_bar=False, **options)
    start = time.perf_counter()
    posterior = model.fit(0, split.train)
    seconds = time.perf_counter() - start
    y = np.asarray(split.test.rating, np.float64)
    mean = posterior.predict(split.test.user_ids, split.test.item_ids).mean
    out = dict(shape=shape, method=method, rank=rank, fit_seconds=seconds,
               rmse=float(np.sqrt(np.mean((np.asarray(mean) - y) ** 2))))
    if method != "gibbs":
        table = posterior.info["tuning"]
        out.update(
            ratios=posterior.info["ratios"],
            validation_rmse=posterior.info["validation_rmse"],
            tune_seconds=posterior.timing["tune_seconds"],
            refit_seconds=posterior.timing["refit_seconds"],
            refit_iterations=posterior.info["iterations"],
            tuning_fits=len(table),
            tuning_iterations=int(sum(row["iterations"] for row in table)),
            tuning_table=table,
        )
    return out


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("BAYESMF_DATA", "data")))
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "benchmarks" / "map_speed.json")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--old-search", action="store_true", help="also time the previous tuning search")
    parser.add_argument("--ml1m", action="store_true", help="also the ML-1M shape at rank 32 (long)")
    parser.add_argument("--one", nargs=2, metavar=("SHAPE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.data)))
        return
    methods = ["gibbs", "map"] + (["map-old"] if args.old_search else [])
    shapes = ["ml-100k-u1"] + (["ml-1m-synthetic"] if args.ml1m else [])
    result = dict(question=__doc__.split("\n\n")[1], uptime_start=_uptime(), cpus=os.cpu_count(),
                  platform=platform.platform(), runs=[])
    for shape in shapes:
        for round_ in range(args.repeats):
            for method in methods:
                cmd = [sys.executable, __file__, "--data", str(args.data), "--one", shape, method]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row.update(round=round_, uptime=_uptime())
                result["runs"].append(row)
                extra = f" tune {row['tune_seconds']:.1f}s ({row['tuning_fits']} fits, {row['tuning_iterations']} its)" \
                    f" refit {row['refit_seconds']:.1f}s" if method != "gibbs" else ""
                print(f"{shape} {method:8s} {row['fit_seconds']:7.1f}s rmse {row['rmse']:.4f}{extra}", flush=True)
    summary = {}
    for shape in shapes:
        for method in methods:
            rows = [r for r in result["runs"] if r["shape"] == shape and r["method"] == method]
            summary[f"{shape}/{method}"] = dict(
                fit_seconds_median=float(np.median([r["fit_seconds"] for r in rows])),
                rmse=[r["rmse"] for r in rows],
            )
    result["summary"] = summary
    result["uptime_end"] = _uptime()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
