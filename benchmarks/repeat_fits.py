"""Repeated fits in one process: what the kept programs save.

Question: a researcher fits the same data again in one session (another
seed, a second look in a notebook, an experiment's seeds). Each fit builds
fresh closures, so JAX's own jit cache never hit and every fit compiled its
programs again. :func:`bayesmf.memory.compile_program` keeps each compiled
program by its lowered text: how long does a repeated fit take now, against
the same fit with the kept programs forgotten first
(:func:`bayesmf.memory.clear_programs`, the previous behaviour)?

In one process, per method: a first fit (compiles everything), then
``--rounds`` rounds of a fit with the kept programs forgotten ("cold") and a
fit with them kept ("kept"), alternating, each with a new seed. Per fit: wall
seconds, the fit's own ``compile_seconds``, and the number and seconds of
XLA's backend compiles (``jax.monitoring``). JAX's persistent compilation
cache is off here (it would serve the cold fits from disk).

Data: MovieLens-100K u1 (``--data`` holding ``ml-100k``), rank 10; Gibbs
100 draws after 20 sweeps, SVI 2,000 steps and 100 draws. ``--tiny``: a
small synthetic problem, for the smoke test.

Run::

    python benchmarks/repeat_fits.py --data ../shared/data
    python benchmarks/repeat_fits.py --tiny --out /tmp/repeat_fits.json

Writes ``results/benchmarks/repeat_fits.json`` (override with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SETTINGS = dict(gibbs=dict(num_samples=100, num_warmup=20), svi=dict(num_samples=100, num_steps=2000))
TINY_SETTINGS = dict(gibbs=dict(num_samples=20, num_warmup=10), svi=dict(num_samples=20, num_steps=200))

# Durations of XLA's backend compiles, appended by a jax.monitoring listener (registered in main).
_COMPILES: list[float] = []


def _record_compile(event: str, duration: float, **_) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES.append(duration)


def _versions() -> dict:
    import jax
    import numpyro

    import bayesmf

    return dict(bayesmf=bayesmf.__version__, jax=jax.__version__, numpyro=numpyro.__version__,
                python=platform.python_version())


def _train(args):
    from bayesmf import split, synthetic

    if args.tiny:
        sim = synthetic.movielens_like(0, num_users=60, num_items=40, num_ratings=900, rank=2, min_per_user=5)
        return split.random_holdout(sim.ratings, 0.2, 0).train, "synthetic 60 x 40, 720 training ratings"
    return split.predefined(Path(args.data) / "ml-100k", "u1").train, "ml-100k u1.base"


def _fit(method: str, rank: int, settings: dict, seed: int, train) -> dict:
    import bayesmf

    _COMPILES.clear()
    start = time.perf_counter()
    posterior = bayesmf.BayesMF(rank, method, progress_bar=False, **settings).fit(seed, train)
    wall = time.perf_counter() - start
    return dict(seed=seed, wall_s=round(wall, 3), fit_compile_s=round(posterior.timing["compile_seconds"], 3),
                xla_compiles=len(_COMPILES), xla_compile_s=round(sum(_COMPILES), 3))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("BAYESMF_DATA"), help="directory holding ml-100k")
    parser.add_argument("--methods", default="gibbs,svi")
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="cold / kept pairs of fits after the first")
    parser.add_argument("--tiny", action="store_true", help="a small synthetic problem, for the smoke test")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "benchmarks" / "repeat_fits.json"))
    args = parser.parse_args(argv)
    if not args.tiny and not (args.data and (Path(args.data) / "ml-100k" / "u1.base").exists()):
        parser.error("--data (or BAYESMF_DATA) must hold ml-100k; or pass --tiny")

    import jax

    from bayesmf import memory

    jax.config.update("jax_enable_compilation_cache", False)
    jax.monitoring.register_event_duration_secs_listener(_record_compile)
    train, described = _train(args)
    rank = 2 if args.tiny else args.rank
    out = dict(question="wall seconds of a repeated fit in one process, kept programs against forgotten ones",
               data=described, rank=rank, cpu_count=os.cpu_count(), device=jax.devices()[0].device_kind,
               versions=_versions(), command="python benchmarks/repeat_fits.py" + (" --tiny" if args.tiny else ""),
               methods={})
    for method in args.methods.split(","):
        settings = (TINY_SETTINGS if args.tiny else SETTINGS)[method]
        memory.clear_programs()
        first = _fit(method, rank, settings, 0, train)
        rounds = []
        for r in range(args.rounds):
            memory.clear_programs()
            cold = _fit(method, rank, settings, 2 * r + 1, train)
            kept = _fit(method, rank, settings, 2 * r + 2, train)
            rounds.append(dict(cold=cold, kept=kept, load=os.getloadavg()[0]))
            print(method, f"round {r}: cold {cold['wall_s']:.2f}s ({cold['xla_compiles']} compiles), "
                  f"kept {kept['wall_s']:.2f}s ({kept['xla_compiles']} compiles)", flush=True)
        ratios = [row["kept"]["wall_s"] / row["cold"]["wall_s"] for row in rounds]
        out["methods"][method] = dict(settings=settings, first=first, rounds=rounds,
                                      kept_over_cold=[round(x, 3) for x in ratios],
                                      median_kept_over_cold=float(np.median(ratios)) if ratios else None)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
