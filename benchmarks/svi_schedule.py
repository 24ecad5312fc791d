"""SVI step-size schedules on ml-100k u1: final loss, test RMSE and seconds of one fit.

Gives the figures in bayesmf.engines.svi's docstring. Run::

    python benchmarks/svi_schedule.py RANK STEPS LR0 LR_FINAL     # e.g. 10 2000 0.05 0.005 (the default)
    python benchmarks/svi_schedule.py 100 5000 0.01 0.01          # the old constant-rate default

Data: ``BAYESMF_DATA`` or ``../shared/data``.
"""
import os
from pathlib import Path
import sys, time, numpy as np, optax, jax
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import map_vs_mcmc as m
from bayesmf.engines import svi
from bayesmf.model import ModelConfig, model_data_from_ratings
from bayesmf.posterior import Posterior
args = m.resolve(m.build_parser().parse_args(["--data", os.environ.get("BAYESMF_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")), "--folds", "u1"]))
train, test = m.load_folds(args)["u1"]
data = model_data_from_ratings(train)
rank, steps, lr0, lr1 = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
sched = optax.exponential_decay(lr0, steps, lr1 / lr0) if lr1 != lr0 else lr0
cfg = m.make_model("svi", rank, args).config
t = time.perf_counter()
res = svi.fit(jax.random.PRNGKey(0), data, cfg, num_steps=steps, optimizer=optax.adam(sched), progress_bar=False)
sec = time.perf_counter() - t
post = Posterior(res.draws, cfg, train.user_vocab, train.item_vocab, train.scale, method="svi", train=train)
e = post.evaluate(test).loc[("all", "all")]
l = res.info["losses"]
print(rank, steps, lr0, lr1, "sec", round(sec, 1), "final", round(res.info["final_loss"], 1), "rmse", round(e["rmse"], 4), "nll", round(e["nll"], 4), flush=True)
