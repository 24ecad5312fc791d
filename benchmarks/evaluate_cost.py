"""Seconds of fit, of map_vs_mcmc's evaluation (overall + user and movie buckets) and of its
``diagnostics.max_rhat`` (MCMC methods only) on ml-100k u1.

Run::

    python benchmarks/evaluate_cost.py gibbs:10 svi:10     # method:rank pairs

Data: ``BAYESMF_DATA`` or ``../shared/data``.
"""
import os
from pathlib import Path
import sys, time
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import map_vs_mcmc as m
from bayesmf import diagnostics
import argparse
args = m.resolve(m.build_parser().parse_args(["--data", os.environ.get("BAYESMF_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")), "--folds", "u1"]))
folds = m.load_folds(args)
train, test = folds["u1"]
for method, rank in [(x.split(":")[0], int(x.split(":")[1])) for x in sys.argv[1:]]:
    model = m.make_model(method, rank, args)
    t = time.perf_counter(); post = model.fit(0, train); t1 = time.perf_counter()
    rows = m.evaluate(post, test); t2 = time.perf_counter()
    rhat = float(diagnostics.max_rhat(post)) if method in m.MCMC else float("nan"); t3 = time.perf_counter()
    print(method, rank, "fit", round(t1-t, 1), "timing", {k: round(v, 2) for k, v in post.timing.items() if isinstance(v, float)},
          "eval", round(t2-t1, 1), "max_rhat", round(rhat, 3), "rhat s", round(t3-t2, 1), "rmse", rows[0]["rmse"], flush=True)
