"""Peak memory of ``bayesmf fit`` on a ratings file, as a user runs it.

Question (issue 18, item 4): what does the whole command -- parse a CSV,
fit Gibbs keeping every draw, save the model file -- hold at its peak, and
how does that compare with the memory model's estimate? The targets of the
issue are for the fit alone (``benchmarks/scale.py``, few kept draws); this
measures the path with the draws a user keeps (100 by default).

Data: ratings drawn from the model at a MovieLens shape
(``bayesmf.synthetic.movielens_like``, true rank 8, noise sd 0.9, rounded to
stars), written as ``user,item,rating`` CSV. Each measured checkout runs in
its own process, which runs ``bayesmf.cli.main`` and reports the peak RSS of
each phase (start-up and parsing, fit, save): the kernel's high-water mark,
reset at each phase's start (Linux's ``/proc/self/clear_refs``). ``--source DIR`` measures another checkout of the
package (for example the previous commit, from ``git worktree add``) in the
same run, one after the other.

Run::

    python benchmarks/fit_memory.py --shape ml-1m                    # ~1 min on 2 cores
    python benchmarks/fit_memory.py --shape ml-10m --source /tmp/old # ~10 min: this checkout and another
    python benchmarks/fit_memory.py --tiny                           # seconds, a smoke run

Writes ``results/benchmarks/fit_memory_<shape>.json`` (override with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(source: str, argv: list) -> dict:
    """Run ``bayesmf.cli.main(argv)`` from the checkout ``source``; the peak RSS of each phase (MiB): the
    kernel's high-water mark (VmHWM), read at the phase's end and reset at its start."""
    sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]  # not an installed bayesmf
    sys.path.insert(0, source)
    from scale import peak_rss_mb, reset_peak_rss  # this benchmark's sibling: stdlib and NumPy only

    if not reset_peak_rss():
        raise RuntimeError("per-phase peaks need /proc/self/clear_refs (Linux)")
    phases, current = {}, ["start", time.perf_counter()]

    def mark(name: str) -> None:
        phases[current[0]] = dict(seconds=round(time.perf_counter() - current[1], 2), peak_mib=round(peak_rss_mb()))
        reset_peak_rss()
        current[:] = [name, time.perf_counter()]

    import bayesmf
    from bayesmf import cli, estimator, storage

    def marked(name, fn):
        def wrapper(*args, **kwargs):
            mark(name)
            try:
                return fn(*args, **kwargs)
            finally:
                mark(f"after {name}")
        return wrapper

    storage.save = marked("save", storage.save)
    estimator.BayesMF.fit = marked("fit", estimator.BayesMF.fit)
    code = cli.main(argv)
    mark("end")
    return dict(source=source, bayesmf_file=bayesmf.__file__, exit_code=code,
                peak_mib=max(p["peak_mib"] for p in phases.values()), phases=phases)


def estimate_mib(csv: Path, rank: int, num_samples: int) -> int:
    """The memory model's total (host + device, one memory on the CPU) for the file's ratings, read as
    ``bayesmf fit`` reads them."""
    from bayesmf.data import read_ratings
    from bayesmf.engines import gibbs
    from bayesmf.model import ModelConfig
    from bayesmf.modeldata import model_data_from_ratings

    ratings = read_ratings(csv)
    plan = gibbs.memory_plan(model_data_from_ratings(ratings), ModelConfig(rank=rank), num_samples=num_samples)
    return round((sum(plan.device.values()) + sum(plan.host.values())) / 2**20)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="ml-1m", help="a name of bayesmf.synthetic.SHAPES")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--num-warmup", type=int, default=20)
    parser.add_argument("--source", action="append", default=[], help="another checkout to measure (repeatable)")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1:])))
        return {}

    import numpy as np

    from bayesmf import synthetic

    shape = synthetic.SHAPES[args.shape]._asdict()
    if args.tiny:
        shape = dict(num_users=300, num_items=200, num_ratings=12_000, min_per_user=10)
        args.rank, args.num_samples, args.num_warmup = 4, 10, 5
    out_path = args.out or ROOT / "results" / "benchmarks" / f"fit_memory_{'tiny' if args.tiny else args.shape}.json"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        sim = synthetic.movielens_like(0, rank=8, noise_sd=0.9, **shape)
        r = sim.ratings
        csv = Path(tmp) / "ratings.csv"
        import pandas as pd

        pd.DataFrame({"user": np.asarray(r.user_vocab.ids)[np.asarray(r.user_index)],
                      "item": np.asarray(r.item_vocab.ids)[np.asarray(r.item_index)],
                      "rating": np.asarray(r.rating)}).to_csv(csv, index=False)
        write_seconds = time.perf_counter() - t0
        del sim, r
        fit = ["fit", "--data", str(csv), "--rank", str(args.rank), "--num-samples", str(args.num_samples),
               "--num-warmup", str(args.num_warmup), "--no-progress", "--out", str(Path(tmp) / "model.nc")]
        for source in [str(ROOT), *args.source]:
            proc = subprocess.run([sys.executable, __file__, "--child", source, *fit], capture_output=True, text=True,
                                  timeout=3600)
            if proc.returncode != 0:
                raise RuntimeError(f"the fit from {source} failed:\n{proc.stderr[-3000:]}")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            print(run["source"], run["peak_mib"], "MiB peak", run["phases"], flush=True)
            runs.append(run)
        estimate = estimate_mib(csv, args.rank, args.num_samples)
    out = dict(
        question="peak RSS of bayesmf fit on a CSV (parse, Gibbs keeping every draw, save), against the memory model",
        command="python benchmarks/fit_memory.py --shape " + args.shape + (" --tiny" if args.tiny else "")
                + "".join(f" --source {s}" for s in args.source),
        data=dict(generator="bayesmf.synthetic.movielens_like", true_rank=8, noise_sd=0.9, **shape,
                  csv_write_seconds=round(write_seconds, 1)),
        fit=dict(rank=args.rank, num_samples=args.num_samples, num_warmup=args.num_warmup, method="gibbs"),
        memory_model_mib=estimate,
        runs=runs,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    print("wrote", out_path)
    return out


if __name__ == "__main__":
    main()
