"""Where does the dense Gram layout stop paying? Dense vs degree-bucketed, measured in one run.

Question: ``bayesmf.layout`` builds the per-row Gram matrices of the Gibbs
sweep either from a dense 0/1 mask (two GEMMs, memory ``n x m``) or from a
sorted, degree-bucketed layout (memory O(nnz)). ``build_layout(kind="auto")``
takes the dense one while ``n * m <= DENSE_MAX_CELLS``. Is that threshold
where the measured crossover is?

Protocol: synthetic MovieLens-shaped data (``bayesmf.synthetic.movielens_like``)
scaled from ml-100k's shape (943 x 1682, 100k ratings) by a factor ``f`` in
users and movies and ``f^1.5`` in ratings (density falls with size, as from
ml-100k to ml-1m), rank ``--rank``. For each size and layout, one chain of
Gibbs (``bayesmf.engines.gibbs.sample``): compile seconds, and seconds per
sweep over ``--sweeps`` sweeps after compilation. Both layouts run in the same
process, one after the other at each size, so their ratio is what to read
(the machine is shared and noisy). The dense layout's ``n x m`` float32 mask
(one per side) is reported as its memory.

Run::

    python benchmarks/layout_crossover.py                 # ~5 min on 2 cores
    python benchmarks/layout_crossover.py --factors 0.5,1,2 --sweeps 20

Writes ``results/benchmarks/layout_crossover.json`` (override with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_size(factor: float, rank: int, sweeps: int, seed: int) -> dict:
    import jax

    from bayesmf.engines import gibbs
    from bayesmf.layout_plan import DENSE_MAX_CELLS
    from bayesmf.model import ModelConfig, model_data_from_ratings
    from bayesmf.synthetic import movielens_like

    num_users, num_items = round(943 * factor), round(1682 * factor)
    num_ratings = round(100_000 * factor**1.5)
    sim = movielens_like(seed, num_users=num_users, num_items=num_items, num_ratings=num_ratings, rank=5,
                         min_per_user=min(20, num_ratings // num_users))
    data = model_data_from_ratings(sim.ratings)
    cells = data.num_users * data.num_items
    row = dict(factor=factor, num_users=data.num_users, num_items=data.num_items, nnz=data.nnz, cells=cells,
               dense_bytes=4 * cells, auto="dense" if cells <= DENSE_MAX_CELLS else "bucket")
    for layout in ("dense", "bucket"):
        res = gibbs.sample(jax.random.PRNGKey(seed), data, ModelConfig(rank=rank), num_samples=sweeps, num_warmup=0,
                           layout=layout, keep_draws=False, progress_bar=False)
        row[f"{layout}_compile_seconds"] = res.timing["compile_seconds"]
        row[f"{layout}_seconds_per_sweep"] = res.timing["seconds_per_sample"]
    row["dense_over_bucket"] = row["dense_seconds_per_sweep"] / row["bucket_seconds_per_sweep"]
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", default="0.5,1,1.5,2,3", help="size factors relative to ml-100k's shape")
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--sweeps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=1800, help="watchdog: abort after this many seconds")
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "benchmarks" / "layout_crossover.json")
    args = parser.parse_args(argv)
    signal.alarm(args.timeout)

    import jax

    import bayesmf
    from bayesmf.layout_plan import DENSE_MAX_CELLS

    result = dict(
        config=dict(factors=args.factors, rank=args.rank, sweeps=args.sweeps, seed=args.seed),
        versions=dict(bayesmf=bayesmf.__version__, jax=jax.__version__, python=platform.python_version()),
        machine=dict(cpus=os.cpu_count(), platform=platform.platform(), load_average_start=os.getloadavg()),
        dense_max_cells=DENSE_MAX_CELLS,
        sizes=[],
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for factor in (float(x) for x in args.factors.split(",")):
        result["sizes"].append(run_size(factor, args.rank, args.sweeps, args.seed))
        args.out.write_text(json.dumps(result, indent=1))  # a run stopped by the watchdog keeps what it finished
    slower = [r["cells"] for r in result["sizes"] if r["dense_over_bucket"] > 1.0]
    faster = [r["cells"] for r in result["sizes"] if r["dense_over_bucket"] <= 1.0]
    result["crossover_cells"] = dict(
        largest_where_dense_is_faster=max(faster) if faster else None,
        smallest_where_bucket_is_faster=min(slower) if slower else None,
    )
    result["machine"]["load_average_end"] = os.getloadavg()
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\n{'cells':>12}{'nnz':>10}{'dense s/sweep':>15}{'bucket s/sweep':>16}{'dense/bucket':>14}{'auto':>8}")
    for r in result["sizes"]:
        print(f"{r['cells']:>12}{r['nnz']:>10}{r['dense_seconds_per_sweep']:>15.4f}{r['bucket_seconds_per_sweep']:>16.4f}"
              f"{r['dense_over_bucket']:>14.2f}{r['auto']:>8}")
    print(f"crossover: {result['crossover_cells']}; DENSE_MAX_CELLS = {DENSE_MAX_CELLS}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
