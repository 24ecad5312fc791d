"""Peak host memory of a multi-chain run: chains one after another against vectorized chains.

Question (scale issue, item 4, memory): do chains run one after another
(``chain_method="sequential"``, NUTS's default, and what ``"parallel"``
falls back to on one device) hold their kept draws once, as vectorized
chains do, or every chain's draws and their join at the end?

Each run is blocked Gibbs through the driver (``bayesmf.engines.driver.sample``
with the Gibbs engine) on synthetic ratings drawn from a rank-8 model
(``bayesmf.synthetic.movielens_like``), in a fresh process per chain method
and per source tree (``--source`` adds another checkout, e.g. ``git archive
e4ed1f0 bayesmf | tar -x -C /tmp/old``), under a watchdog. Reported per run:
the megabytes of kept draws (all fields), the process's resident set before
the run and its peak during it (the kernel's high-water mark, reset before
the run; Linux), the peak over the before, and a checksum of the draws (the
same from every tree for one method; vectorized and sequential chains differ
in float32 round-off, one vmapped program against one per chain).

Run::

    python benchmarks/chain_memory.py                        # ~4 min on 2 cores
    python benchmarks/chain_memory.py --source /tmp/old      # and the tree before
    python benchmarks/chain_memory.py --tiny --out /tmp/c.json   # seconds, for tests

Writes ``results/benchmarks/chain_memory.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT = dict(num_users=3000, num_items=2000, num_ratings=300_000, rank=32, chains=4, draws=200, warmup=5)
TINY = dict(num_users=60, num_items=40, num_ratings=1_500, rank=4, chains=2, draws=6, warmup=2)


def child(source: str, method: str, sizes: dict) -> dict:
    """One run in this process, with ``source``'s bayesmf."""
    sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]  # not an installed bayesmf
    sys.path[:0] = [source, str(HERE)]
    import jax
    import numpy as np
    from scale import peak_rss_mb, reset_peak_rss, rss_mb  # this benchmark's sibling: stdlib and NumPy only

    import bayesmf
    from bayesmf.engines import driver, gibbs
    from bayesmf.model import ModelConfig, model_data_from_ratings
    from bayesmf.synthetic import movielens_like

    sim = movielens_like(0, rank=8, noise_sd=0.9, num_users=sizes["num_users"], num_items=sizes["num_items"],
                         num_ratings=sizes["num_ratings"])
    data = model_data_from_ratings(sim.ratings)
    config = ModelConfig(rank=sizes["rank"])
    context = gibbs.build_context(data, "auto", config.rank, None, config)
    keys = driver.chain_keys(jax.random.PRNGKey(0), sizes["chains"])
    reset_peak_rss()
    before = rss_mb()
    run = driver.sample(keys, gibbs.engine(data, config), context, num_samples=sizes["draws"],
                        num_warmup=sizes["warmup"], chain_method=method, progress_bar=False)
    peak = peak_rss_mb()
    leaves = jax.tree_util.tree_leaves(run.draws)
    return dict(method=method, source=source, bayesmf_file=bayesmf.__file__,
                draws_mb=sum(np.asarray(x).nbytes for x in leaves) / 2**20, rss_before_mb=before, peak_rss_mb=peak,
                peak_over_before_mb=peak - before,
                checksum=float(sum(np.asarray(x, np.float64).sum() for x in leaves)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", action="append", default=[], help="another checkout to measure (repeatable)")
    parser.add_argument("--methods", default="vectorized,sequential")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--timeout", type=float, default=1200.0, help="watchdog per run, seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "chain_memory.json")
    parser.add_argument("--child", nargs=2, metavar=("SOURCE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else DEFAULT
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], sizes)))
        return {}
    runs = []
    for source in [str(ROOT)] + args.source:
        for method in args.methods.split(","):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", source, method] + (["--tiny"] if args.tiny else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
            if proc.returncode != 0:
                raise RuntimeError(f"{method} run from {source} failed: {proc.stderr.strip()[-2000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print({k: round(v, 1) if isinstance(v, float) else v for k, v in runs[-1].items()}, flush=True)
    result = dict(question=__doc__.split("\n\n")[1], sizes=sizes, cpus=os.cpu_count(), runs=runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
