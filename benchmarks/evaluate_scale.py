"""Evaluate at ML-10M shape: the streamed, jitted scoring against the host NumPy path.

Question (issue 18, item 2): how long does ``Posterior.evaluate`` take on
1M test ratings with 100 posterior draws, all metrics (RMSE, MAE, NLL, CRPS,
coverage and width at four levels from exact mixture quantiles), at
MovieLens-10M shape (69,878 users x 10,677 movies, rank 32)? Target: at most
60 s on the 2-core CPU (4 s on one H100/H200).

Data: no sampler is run. The draws are random ``Params`` (factors
``N(0, 0.15^2)``, offsets ``N(3.6, 0.3^2)``, noise precision ``Gamma``
around 1.2, each draw independent); the test ratings are ``--num-test``
uniformly random (user, movie) pairs of known ids (and ``--num-cold`` pairs
of a new user, which take the cold-start path) with ratings 1..5. Scoring
cost depends on shapes, not on what the draws look like.

``new`` is ``Posterior.evaluate`` (timed twice: the first call includes
compilation). ``old`` is the path it replaced: ``Posterior.components``
(draws x pairs float64 on the host) then
``bayesmf.predictive.score_rows`` (NumPy) and ``metrics.summarize``; skip
it with ``--skip-old`` (it takes minutes and ~3 GB). Each timing records the
process's RSS before the call and its peak during the call (the peak is
reset before each, Linux only) and XLA's backend compiles during it (count,
total and largest seconds, from ``jax.monitoring``). When both run, their
tables are compared: the largest absolute difference per column is written.
The CRPS pair term is estimated in both at this size (draws^2 x rows >
``metrics.MAX_PAIRS``), each with its own random shifts, so CRPS agrees to
Monte Carlo error only.

Run::

    python benchmarks/evaluate_scale.py              # ~1-5 min on 2 busy cores
    python benchmarks/evaluate_scale.py --skip-old
    python benchmarks/evaluate_scale.py --tiny       # seconds, for the smoke test

Writes ``results/benchmarks/evaluate_scale.json`` (override with ``--out``),
with the machine load (``uptime``) before and after.
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
sys.path.insert(0, str(HERE))
from scale import peak_rss_mb, reset_peak_rss, rss_mb  # noqa: E402  (this benchmark's sibling: stdlib and NumPy)
TARGET_CPU_S = 60.0


def _versions() -> dict:
    import jax

    import bayesmf

    return dict(bayesmf=bayesmf.__version__, jax=jax.__version__, numpy=np.__version__, python=platform.python_version(),
                backend=jax.default_backend(), devices=[str(d) for d in jax.devices()])


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def make_posterior(seed: int, num_users: int, num_items: int, rank: int, num_draws: int):
    """A Posterior of ``num_draws`` random draws (one chain) over integer ids ``1..N`` / ``1..M``."""
    from bayesmf.data import RatingScale, Vocabulary
    from bayesmf.model import ModelConfig, Params
    from bayesmf.posterior import Posterior

    rng = np.random.default_rng(seed)
    shape = (1, num_draws)
    eye = np.broadcast_to(np.eye(rank, dtype=np.float32), shape + (rank, rank))
    draws = Params(
        user_factors=rng.standard_normal(shape + (num_users, rank), np.float32) * np.float32(0.15),
        item_factors=rng.standard_normal(shape + (num_items, rank), np.float32) * np.float32(0.15),
        item_offsets=np.float32(3.6) + rng.standard_normal(shape + (num_items,), np.float32) * np.float32(0.3),
        noise_precision=rng.gamma(50.0, 1.2 / 50.0, shape).astype(np.float32),
        user_mean=np.zeros(shape + (rank,), np.float32),
        user_precision=eye,
        item_mean=np.zeros(shape + (rank,), np.float32),
        item_precision=eye,
        offset_mean=np.full(shape, 3.6, np.float32),
        offset_precision=np.full(shape, 4.0, np.float32),
    )
    user_vocab, item_vocab = Vocabulary(np.arange(1, num_users + 1)), Vocabulary(np.arange(1, num_items + 1))
    return Posterior(draws, ModelConfig(rank=rank), user_vocab, item_vocab, RatingScale(1.0, 5.0, 1.0), method="synthetic")


def make_test(seed: int, num_users: int, num_items: int, num_test: int, num_cold: int):
    """``num_test`` distinct random known pairs and ``num_cold`` pairs of user ``num_users + 1`` (unseen), ratings 1..5."""
    from bayesmf.data import RatingScale, Ratings

    rng = np.random.default_rng(seed + 1)
    cells = rng.choice(num_users * num_items, num_test, replace=False)  # distinct known pairs
    known_users, known_items = np.divmod(cells, num_items)
    users = np.concatenate([known_users + 1, np.full(num_cold, num_users + 1)])
    items = np.concatenate([known_items + 1, rng.choice(num_items, num_cold, replace=False) + 1])
    ratings = rng.integers(1, 6, num_test + num_cold).astype(np.float32)
    return Ratings.from_arrays(users, items, ratings, scale=RatingScale(1.0, 5.0, 1.0))


def old_evaluate(posterior, test, levels):
    """The path evaluate replaced: host components (draws x pairs), NumPy scores, summarize."""
    from bayesmf import metrics
    from bayesmf.predictive import score_rows

    pairs = posterior.pairs(test.user_ids, test.item_ids)
    comps = posterior.components(pairs.user_index, pairs.item_index)
    rows = score_rows(np.asarray(test.rating, np.float64), comps, levels)
    return metrics.summarize(rows)


# Durations of XLA's backend compiles, appended by a jax.monitoring listener (registered in main).
_COMPILES: list[float] = []


def _record_compile(event: str, duration: float, **_) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES.append(duration)


def _timed(fn):
    load = os.getloadavg()[0]
    reset_peak_rss()
    rss = rss_mb()
    _COMPILES.clear()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = peak_rss_mb()
    return out, dict(wall_s=round(wall, 3), cpu_s=round(cpu, 3), load_before=load, load_after=os.getloadavg()[0],
                     rss_before_mb=rss, peak_rss_mb=peak, num_compiles=len(_COMPILES),
                     compile_s=round(sum(_COMPILES), 3), largest_compile_s=round(max(_COMPILES, default=0.0), 3))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a small model, for the smoke test")
    parser.add_argument("--num-test", type=int, default=1_000_000)
    parser.add_argument("--num-cold", type=int, default=1000, help="test pairs of an unseen user")
    parser.add_argument("--skip-old", action="store_true", help="do not time the host NumPy path")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "benchmarks" / "evaluate_scale.json"))
    args = parser.parse_args(argv)

    import jax

    from bayesmf import metrics

    jax.monitoring.register_event_duration_secs_listener(_record_compile)
    levels = metrics.DEFAULT_LEVELS
    shape = dict(num_users=69_878, num_items=10_677, rank=32, num_draws=100)
    num_test, num_cold = args.num_test, args.num_cold
    if args.tiny:
        shape = dict(num_users=300, num_items=200, rank=4, num_draws=20)
        num_test, num_cold = 5000, 20
    uptime_before = _uptime()
    posterior, t_make = _timed(lambda: make_posterior(args.seed, **shape))
    test = make_test(args.seed, shape["num_users"], shape["num_items"], num_test, num_cold)
    runs = {}
    table, runs["new_first"] = _timed(lambda: posterior.evaluate(test, levels=levels, expect_cold=True))
    table, runs["new"] = _timed(lambda: posterior.evaluate(test, levels=levels, expect_cold=True))
    overall = table.loc[("all", "all")]
    result = dict(
        question="Posterior.evaluate on 1M test ratings, 100 draws, all metrics, ML-10M shape",
        shape=dict(shape, num_test=num_test, num_cold=num_cold), levels=list(levels), seed=args.seed,
        target_cpu_s=TARGET_CPU_S, make_posterior=t_make, timings=runs,
        new_scores={k: float(v) for k, v in overall.items()},
    )
    if not args.skip_old:
        old, runs["old"] = _timed(lambda: old_evaluate(posterior, test, levels))
        old_row = old.loc["all"]
        result["old_scores"] = {k: float(v) for k, v in old_row.items()}
        result["max_abs_difference"] = {k: float(abs(old_row[k] - overall[k])) for k in old_row.index}
    result.update(uptime_before=uptime_before, uptime_after=_uptime(), versions=_versions(),
                  machine=dict(cpus=os.cpu_count(), platform=platform.platform()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(dict(timings=runs, new=result["new_scores"], diff=result.get("max_abs_difference")), indent=1))
    return result


if __name__ == "__main__":
    main()
