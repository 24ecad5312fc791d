"""Blocked Gibbs against myFM (the C++ reference BPMF), measured in one run.

Question: is bayesmf's Gibbs sampler as accurate and calibrated as myFM's, and
how fast is it per sweep and per effective sample, on 2 CPU cores?

Figures (issue: MCMC, section 5):

* ml-100k u1, rank 10, 200 draws after 50 burn-in, one chain: test RMSE,
  90% coverage, seconds per sweep and effective samples per second of the
  test predictions, for bayesmf and myFM; ratios bayesmf / myFM.
* Robustness: chains from 100 seeds at rank 10 and 50 on ml-100k, counting
  Cholesky failures / NaNs (the sampler raises on the first one).
* Scale: an ML-1M-sized synthetic problem (6,040 x 3,706, 1M ratings, rank
  32): seconds per sweep and peak memory of each sampler in its own process.

Run::

    python benchmarks/gibbs_ml100k.py --data ../shared/data          # everything (~10 min)
    python benchmarks/gibbs_ml100k.py --skip-scale --skip-seeds      # the u1 comparison only

Writes ``results/benchmarks/gibbs_ml100k.json`` (override with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _versions():
    import jax
    import numpyro

    import bayesmf

    out = dict(bayesmf=bayesmf.__version__, jax=jax.__version__, numpyro=numpyro.__version__, python=platform.python_version())
    try:
        import myfm

        out["myfm"] = getattr(myfm, "__version__", "?")
    except ImportError:
        out["myfm"] = None
    return out


def ess_per_second(draw_means: np.ndarray, seconds: float) -> float:
    """Median over test pairs of the bulk ESS of the per-draw predicted means, per second."""
    from bayesmf.diagnostics import ess_per_second as eps

    return eps(draw_means, seconds)


def run_u1(data_dir: Path, seed: int, num_samples: int, num_warmup: int) -> dict:
    import jax

    import bayesmf
    from bayesmf import split

    s = split.make_split(data_dir / "ml-100k", "u1")
    model = bayesmf.BayesMF(rank=10, method="gibbs", num_samples=num_samples, num_warmup=num_warmup, progress_bar=False)
    # Warm-up fit on a few sweeps so first-call costs (imports, tracing caches) are excluded, as for myFM.
    bayesmf.BayesMF(rank=10, method="gibbs", num_samples=2, num_warmup=0, progress_bar=False).fit(0, s.train)
    post = model.fit(jax.random.PRNGKey(seed), s.train, track=(s.test.user_ids, s.test.item_ids))
    ev = post.evaluate(s.test).loc[("all", "all")]
    tracked = post.tracked
    sampling = post.timing["sampling_seconds"] * num_samples / (num_samples + num_warmup)
    ours = dict(
        rmse=ev["rmse"],
        coverage_90=ev["coverage_90"],
        nll=ev["nll"],
        crps=ev["crps"],
        seconds_per_sweep=post.timing["seconds_per_sample"],
        compile_seconds=post.timing["compile_seconds"],
        fit_seconds=post.timing["fit_seconds"],
        ess_per_second=ess_per_second(tracked.draw_means, sampling),
    )
    out = dict(bayesmf=ours)
    try:
        import peers

        train_df, test_df = peers.load_ml100k_split(data_dir / "ml-100k", "u1")
        theirs = peers.run_myfm_bpmf(train_df, test_df, rank=10, n_iter=num_samples + num_warmup, n_kept=num_samples, seed=seed)
        out["myfm"] = theirs
        out["ratios"] = dict(
            seconds_per_sweep=ours["seconds_per_sweep"] / theirs["seconds_per_sweep"],
            ess_per_second=(ours["ess_per_second"] / theirs["ess_per_second"]) if theirs.get("ess_per_second") else None,
        )
    except ImportError as exc:
        out["myfm"] = f"not measured: {exc}"
    return out


def run_seeds(data_dir: Path, ranks=(10, 50), num_seeds: int = 100, sweeps: int = 20, batch: int = 10) -> dict:
    import jax

    from bayesmf import split
    from bayesmf.engines import gibbs
    from bayesmf.model import ModelConfig, model_data_from_ratings

    train = split.make_split(data_dir / "ml-100k", "u1").train
    data = model_data_from_ratings(train)
    out = {}
    for rank in ranks:
        failures = 0
        start = time.perf_counter()
        for first in range(0, num_seeds, batch):
            try:
                gibbs.sample(
                    jax.random.PRNGKey(first), data, ModelConfig(rank=rank), num_samples=sweeps // 2,
                    num_warmup=sweeps // 2, num_chains=batch, keep_draws=False, progress_bar=False,
                )
            except FloatingPointError:
                failures += 1
        out[f"rank_{rank}"] = dict(
            seeds=num_seeds, sweeps_per_seed=sweeps, failed_batches=failures, seconds=time.perf_counter() - start
        )
    return out


# Each sampler runs in a fresh process that loads the same ratings from an .npz
# written by the parent: generating the 1M pairs peaks at ~1.5 GB, which
# would otherwise mask both samplers' own peaks (ru_maxrss never falls).
SCALE_CHILD = r"""
import json, resource, sys, time
import numpy as np
which, seed, sweeps, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[5]
arrays = np.load(path)
u, i, r = arrays["u"], arrays["i"], arrays["r"]
if which == "bayesmf":
    import jax
    from bayesmf.engines import gibbs
    from bayesmf.model import ModelConfig, make_model_data
    data = make_model_data(u, i, r, 6040, 3706)
    res = gibbs.sample(jax.random.PRNGKey(seed), data, ModelConfig(rank=32), num_samples=sweeps, num_warmup=0,
                       keep_draws=False, progress_bar=False)
    sps = res.timing["seconds_per_sample"]
else:
    sys.path.insert(0, sys.argv[4])
    import peers
    res = peers.run_myfm_synthetic(u, i, r, 6040, 3706, rank=32, n_iter=sweeps, seed=seed)
    # myFM fits in its own spawned process (which also holds the arrays): its peak is the one to compare.
    print(json.dumps(dict(seconds_per_sweep=res["seconds_per_sweep"], peak_rss_mb=res["peak_rss_mb"])))
    sys.exit(0)
print(json.dumps(dict(seconds_per_sweep=sps, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def run_scale(seed: int, sweeps: int) -> dict:
    import tempfile

    from bayesmf import synthetic

    u, i = synthetic.sample_pairs(seed, 6040, 3706, 1_000_000, min_per_user=20)
    rng = np.random.default_rng(seed)
    r = np.clip(np.round(3.6 + rng.normal(0, 1.0, u.size)), 1, 5)
    out = {"load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ratings.npz")
        np.savez(path, u=u, i=i, r=r)
        for which in ("bayesmf", "myfm"):
            proc = subprocess.run(
                [sys.executable, "-c", SCALE_CHILD, which, str(seed), str(sweeps), str(HERE), path],
                capture_output=True, text=True, timeout=1800,
            )
            out[which] = _child_result(proc)
    out["load_average_end"] = os.getloadavg()
    if isinstance(out.get("bayesmf"), dict) and isinstance(out.get("myfm"), dict):
        out["ratios"] = dict(
            seconds_per_sweep=out["bayesmf"]["seconds_per_sweep"] / out["myfm"]["seconds_per_sweep"],
            peak_rss=out["bayesmf"]["peak_rss_mb"] / out["myfm"]["peak_rss_mb"],
        )
    return out


def _child_result(proc):
    if proc.returncode != 0:
        return f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("BAYESMF_DATA", HERE.parent.parent / "shared" / "data")))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--num-warmup", type=int, default=50)
    parser.add_argument("--skip-seeds", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--only-scale", action="store_true", help="run the ML-1M-sized synthetic figure alone")
    parser.add_argument("--scale-sweeps", type=int, default=20)
    parser.add_argument("--timeout", type=int, default=3600, help="watchdog: abort after this many seconds")
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "benchmarks" / "gibbs_ml100k.json")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError(f"benchmark exceeded {args.timeout}s")))
    signal.alarm(args.timeout)

    result = dict(config=vars(args) | dict(data=str(args.data), out=str(args.out)), versions=_versions(),
                  machine=dict(cpus=os.cpu_count(), platform=platform.platform()))
    if not args.only_scale:
        result["u1"] = run_u1(args.data, args.seed, args.num_samples, args.num_warmup)
        print(json.dumps(result["u1"], indent=1, default=str), flush=True)
    if not (args.skip_seeds or args.only_scale):
        result["seeds"] = run_seeds(args.data)
        print(json.dumps(result["seeds"], indent=1), flush=True)
    if not args.skip_scale:
        result["scale_ml1m_synthetic"] = run_scale(args.seed, args.scale_sweeps)
        print(json.dumps(result["scale_ml1m_synthetic"], indent=1), flush=True)
    result["peak_rss_mb_parent"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
