"""NUTS against blocked Gibbs on the same BPMF model, measured in one run.

Question: on ml-100k u1 at rank 10 (hyper priors, estimated offsets), does
NUTS on the NumPyro model reach Gibbs' test RMSE (target: within 0.005) and
calibration, at what cost in seconds and in effective samples per second of
the test predictions; and where a gap remains, is it the model or mixing?

Runs (``--runs``, comma separated; default: all of them, in this order):

``leapfrog``
    Cost of one NUTS leapfrog step (one gradient) in our engine and in
    NumPyro's own ``MCMC`` driver, against a plain jitted
    ``jax.value_and_grad`` of the same potential: checks the NumPyro 0.21 /
    JAX 0.10 regression (NumPyro issue 2225, NUTS 100-200x slower) is absent.
``gibbs``
    Gibbs, 200 draws after 50 burn-in, one chain.
``nuts``
    NUTS, 500 warmup + 300 draws, one chain, the default (non-centred) coordinates.
``nuts_centered``
    The same in the centred coordinates: which mixes better (ESS/s)?
``nuts_from_gibbs``
    NUTS started at the last Gibbs draw (``--gibbs-init-warmup`` warmup):
    a short warmup from the posterior's bulk separates slow convergence
    from a model difference.
``gibbs_long``
    Gibbs, 1,000 draws after 200 burn-in: the model's RMSE with little
    Monte Carlo error left.

For every run: test RMSE and 90% coverage of the posterior predictive
mixture (``Posterior.evaluate``: cold-start test pairs included), seconds,
and effective samples per second of the test predictions (median over the
known test pairs of the bulk ESS of each draw's predicted mean, divided by
the sampling seconds of the kept draws, and by all sampling seconds
warmup included).

Run::

    python benchmarks/nuts_vs_gibbs.py --data ../shared/data     # everything (hours on 2 busy cores)
    python benchmarks/nuts_vs_gibbs.py --quick                   # a few minutes: tiny runs of each kind
    python benchmarks/nuts_vs_gibbs.py --runs leapfrog,gibbs,nuts

Writes ``results/benchmarks/nuts_vs_gibbs.json`` (``--out``) after every
run, so a run stopped by the watchdog (``--timeout``, ``signal.alarm``;
it fires between compiled chunks) keeps what it finished; a NUTS run that
is killed resumes from its checkpoint (``--checkpoint-dir``) when the same
command is run again, and runs of other invocations can be merged in
(``--merge``), so the long runs can go to separate processes. Timings on a
shared machine are noisy: the JSON records the load average next to them,
and CPU seconds of this process next to wall-clock seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RUNS = ("leapfrog", "gibbs", "nuts", "nuts_centered", "nuts_from_gibbs", "gibbs_long")
RANK = 10


def _versions() -> dict:
    import jax
    import numpyro

    import bayesmf

    return dict(bayesmf=bayesmf.__version__, jax=jax.__version__, numpyro=numpyro.__version__,
                python=platform.python_version())


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


class Problem:
    """ml-100k u1 as the engines and the posterior see it."""

    def __init__(self, data_dir: Path):
        from bayesmf import split
        from bayesmf.model import ModelConfig, model_data_from_ratings

        self.split = split.make_split(data_dir / "ml-100k", "u1")
        self.data = model_data_from_ratings(self.split.train)
        self.config = ModelConfig(rank=RANK)
        train, test = self.split.train, self.split.test
        u = train.user_vocab.index(np.asarray(test.user_ids), missing="flag")
        i = train.item_vocab.index(np.asarray(test.item_ids), missing="flag")
        known = (u >= 0) & (i >= 0)
        self.pairs = (u[known].astype(np.int32), i[known].astype(np.int32))

    def score(self, result, method: str, num_warmup: int, num_samples: int, draw_seconds: float | None = None) -> dict:
        """Test metrics, timings and ESS/s of an EngineResult."""
        import jax

        from bayesmf.diagnostics import ess_per_second
        from bayesmf.model import predict_mean
        from bayesmf.posterior import Posterior

        train = self.split.train
        post = Posterior(result.draws, self.config, train.user_vocab, train.item_vocab, train.scale, method=method)
        ev = post.evaluate(self.split.test).loc[("all", "all")]
        fn = jax.jit(jax.vmap(jax.vmap(predict_mean, in_axes=(0, None, None)), in_axes=(0, None, None)))
        draw_means = np.asarray(fn(result.draws, *self.pairs))
        timing = result.timing
        sampling = timing["sampling_seconds"]
        if draw_seconds is None:  # Gibbs: sweeps cost the same in warmup and sampling
            draw_seconds = sampling * num_samples / (num_samples + num_warmup)
        import arviz_stats as azs

        ess = np.asarray(azs.ess(draw_means.astype(np.float64), method="bulk", chain_axis=0, draw_axis=1))
        out = dict(
            rmse=ev["rmse"],
            coverage_90=ev["coverage_90"],
            nll=ev["nll"],
            width_90=ev.get("width_90"),
            noise_sd=float(np.mean(1.0 / np.sqrt(result.draws.noise_precision))),
            num_warmup=num_warmup,
            num_samples=num_samples,
            compile_seconds=timing.get("compile_seconds"),
            sampling_seconds=sampling,
            draw_seconds=draw_seconds,
            fit_seconds=timing["fit_seconds"],
            seconds_per_sample=timing["seconds_per_sample"],
            median_ess=float(np.median(ess)),
            min_ess=float(np.min(ess)),
            ess_per_second=ess_per_second(draw_means, draw_seconds),
            ess_per_second_with_warmup=ess_per_second(draw_means, sampling),
            load_average=_load(),
        )
        # RMSE of the running posterior mean after each half of the draws: a
        # still-drifting chain shows up as a difference.
        half = max(1, num_samples // 2)
        y = np.asarray(self.split.test.rating, np.float64)
        known = (self.split.train.user_vocab.index(np.asarray(self.split.test.user_ids), missing="flag") >= 0) & (
            self.split.train.item_vocab.index(np.asarray(self.split.test.item_ids), missing="flag") >= 0
        )
        for name, block in (("first_half", slice(0, half)), ("second_half", slice(half, None))):
            mean = draw_means[:, block].mean(axis=(0, 1))
            out[f"rmse_known_{name}"] = float(np.sqrt(np.mean((mean - y[known]) ** 2)))
        return out


def run_leapfrog(problem: Problem, seed: int, steps: int, repeats: int = 3) -> dict:
    """ms per leapfrog step: our driver, NumPyro's MCMC, a plain jitted gradient.

    Trees are capped at depth 5 (31 leapfrog steps), so a probe costs about
    ``4 * steps * 31`` gradients whatever the step size. Every figure is
    measured ``repeats`` times after a first, compiling call, and the minimum
    is reported (the machine is shared: the minimum is the least disturbed).

    * plain: ``jax.jit(jax.value_and_grad(potential))`` of the same model,
      blocks of 20 calls.
    * engine: ``nuts.sample`` with ``steps`` warmup and ``4 * steps`` draws;
      its ``seconds_per_leapfrog`` (kept draws' seconds over their leapfrog
      steps). Repeated calls reuse the compiled program.
    * NumPyro ``MCMC``: default settings as a user would run them, no warmup
      (so every leapfrog step is counted in ``num_steps``), ``4 * steps``
      draws; seconds of ``run`` over leapfrog steps. Its first call
      compiles; later calls with the same settings reuse the program.
    """
    import jax
    from numpyro.infer import MCMC, NUTS
    from numpyro.infer.util import potential_energy

    from bayesmf.engines import nuts
    from bayesmf.engines.numpyro_util import init_to_prior_centre

    data, config = problem.data, problem.config
    engine_ms, compile_seconds, init_seconds = [], None, None
    for rep in range(repeats + 1):
        res = nuts.sample(jax.random.PRNGKey(seed + rep), data, config, num_warmup=steps, num_samples=4 * steps,
                          max_tree_depth=5, progress_bar=False)
        if rep == 0:
            compile_seconds, init_seconds = res.timing["compile_seconds"], res.timing["init_seconds"]
        engine_ms.append(1000 * res.timing["seconds_per_leapfrog"])

    kernel = nuts.build_kernel(config, nuts.DEFAULT_PARAMETERIZATION, 0.8, 5, False, steps)
    state = nuts.init(jax.random.PRNGKey(seed), data, config, kernel)
    model = kernel.model
    grad = jax.jit(jax.value_and_grad(lambda z, d: potential_energy(model, (d,), {}, z)))
    compiled = grad.lower(state.z, data).compile()
    jax.block_until_ready(compiled(state.z, data))
    plain_ms = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        for _ in range(20):
            out = compiled(state.z, data)
        jax.block_until_ready(out)
        plain_ms.append(1000 * (time.perf_counter() - start) / 20)

    numpyro_kernel = NUTS(model, max_tree_depth=5, init_strategy=init_to_prior_centre())
    mcmc = MCMC(numpyro_kernel, num_warmup=0, num_samples=4 * steps, progress_bar=False)
    numpyro_ms, numpyro_first_seconds = [], None
    for rep in range(repeats + 1):
        start = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(seed + rep), data, extra_fields=("num_steps",))
        jax.block_until_ready(mcmc.last_state.z)
        seconds = time.perf_counter() - start
        if rep == 0:
            numpyro_first_seconds = seconds
        else:
            numpyro_ms.append(1000 * seconds / max(int(np.sum(mcmc.get_extra_fields()["num_steps"])), 1))
    engine, plain, numpyro_mcmc = min(engine_ms[1:]), min(plain_ms), min(numpyro_ms)
    return dict(
        plain_value_and_grad_ms=plain,
        engine_ms_per_leapfrog=engine,
        numpyro_mcmc_ms_per_leapfrog=numpyro_mcmc,
        engine_over_plain=engine / plain,
        numpyro_mcmc_over_plain=numpyro_mcmc / plain,
        all_ms=dict(plain=plain_ms, engine=engine_ms, numpyro_mcmc=numpyro_ms),
        numpyro_mcmc_first_run_seconds=numpyro_first_seconds,
        engine_compile_seconds=compile_seconds,
        engine_init_seconds=init_seconds,
        steps=steps,
        max_tree_depth=5,
        load_average=_load(),
    )


def run_gibbs(problem: Problem, seed: int, num_samples: int, num_warmup: int, keep: dict) -> dict:
    import jax

    from bayesmf.engines import gibbs

    res = gibbs.sample(jax.random.PRNGKey(seed), problem.data, problem.config, num_samples=num_samples,
                       num_warmup=num_warmup, progress_bar=False)
    keep["gibbs_last"] = jax.tree_util.tree_map(lambda x: np.asarray(x)[0, -1], res.draws)
    return problem.score(res, "gibbs", num_warmup, num_samples)


def run_nuts(problem: Problem, seed: int, num_samples: int, num_warmup: int, progress_bar: bool,
             checkpoint: Path | None = None, **options) -> dict:
    import jax

    from bayesmf.engines import nuts

    res = nuts.sample(jax.random.PRNGKey(seed), problem.data, problem.config, num_samples=num_samples,
                      num_warmup=num_warmup, progress_bar=progress_bar, checkpoint=checkpoint, **options)
    out = problem.score(res, "nuts", num_warmup, num_samples, draw_seconds=res.timing["draw_seconds"])
    out.update(
        num_divergences=res.info["num_divergences"],
        mean_num_steps=res.info["mean_num_steps"],
        mean_warmup_num_steps=res.info["warmup_num_steps"] / max(num_warmup, 1),
        final_step_size=float(res.stats["step_size"][0, -1]),
        mean_accept_prob=float(np.mean(res.stats["accept_prob"])),
        seconds_per_leapfrog=res.timing["seconds_per_leapfrog"],
        init_seconds=res.timing["init_seconds"],
        warmup_seconds=res.timing["warmup_seconds"],
        settings={k: v for k, v in res.info["settings"].items() if k != "dense_mass"},
    )
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("BAYESMF_DATA") or HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {RUNS}")
    parser.add_argument("--quick", action="store_true", help="tiny runs of each kind (minutes)")
    parser.add_argument("--gibbs-samples", type=int, default=200)
    parser.add_argument("--gibbs-warmup", type=int, default=50)
    parser.add_argument("--nuts-samples", type=int, default=300)
    parser.add_argument("--nuts-warmup", type=int, default=500)
    parser.add_argument("--gibbs-init-warmup", type=int, default=100,
                        help="warmup of NUTS started from the last Gibbs draw")
    parser.add_argument("--long-samples", type=int, default=1000)
    parser.add_argument("--long-warmup", type=int, default=200)
    parser.add_argument("--leapfrog-steps", type=int, default=20)
    parser.add_argument("--progress", action="store_true", help="NUTS progress bars")
    parser.add_argument("--checkpoint-dir", type=Path, default=Path(tempfile.gettempdir()) / "bayesmf_nuts_vs_gibbs",
                        help="NUTS runs save their progress here and resume from it when restarted "
                             "(a killed run loses at most a minute); files are deleted when a run finishes")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="JSON files of earlier invocations (e.g. runs split over processes) whose runs to keep")
    parser.add_argument("--timeout", type=int, default=6 * 3600, help="watchdog: abort after this many seconds")
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "benchmarks" / "nuts_vs_gibbs.json")
    args = parser.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {RUNS}")
    if args.quick:
        args.gibbs_samples, args.gibbs_warmup = 20, 10
        args.nuts_samples, args.nuts_warmup, args.gibbs_init_warmup = 10, 20, 10
        args.long_samples, args.long_warmup, args.leapfrog_steps = 40, 10, 5

    def alarm(*_):
        raise TimeoutError(f"benchmark exceeded its {args.timeout} s watchdog")

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(args.timeout)

    result = dict(
        question=__doc__.split("\n\n")[1],
        config=vars(args) | dict(data=str(args.data), out=str(args.out), runs=runs, rank=RANK),
        seed=args.seed,
        versions=_versions(),
        machine=dict(cpus=os.cpu_count(), platform=platform.platform(), load_average_start=_load()),
    )
    # Keep the runs of earlier invocations (this --out, then --merge files)
    # that this one does not redo; each run records its own settings and load.
    for path in [args.out] + list(args.merge):
        if path.exists():
            try:
                previous = json.loads(path.read_text())
            except (json.JSONDecodeError, OSError):
                continue
            for k in RUNS:
                if k in previous and k not in runs:
                    result[k] = dict(previous[k], source=str(path), source_versions=previous.get("versions"))
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        args.out.write_text(json.dumps(result, indent=1, default=str))

    problem = Problem(args.data)
    keep: dict = {}
    quick_tree = dict(max_tree_depth=6) if args.quick else {}
    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    tag = "quick" if args.quick else "full"

    def ckpt(name):
        return args.checkpoint_dir / f"{name}_{tag}_seed{args.seed}.ckpt"

    try:
        for name in runs:
            start, cpu = time.perf_counter(), time.process_time()
            print(f"== {name}", flush=True)
            if name == "leapfrog":
                out = run_leapfrog(problem, args.seed, args.leapfrog_steps)
            elif name == "gibbs":
                out = run_gibbs(problem, args.seed, args.gibbs_samples, args.gibbs_warmup, keep)
            elif name == "gibbs_long":
                out = run_gibbs(problem, args.seed + 1, args.long_samples, args.long_warmup, {})
            elif name == "nuts":
                out = run_nuts(problem, args.seed, args.nuts_samples, args.nuts_warmup, args.progress, ckpt(name),
                               **quick_tree)
            elif name == "nuts_centered":
                out = run_nuts(problem, args.seed, args.nuts_samples, args.nuts_warmup, args.progress, ckpt(name),
                               parameterization="centered", **quick_tree)
            else:  # nuts_from_gibbs
                if "gibbs_last" not in keep:
                    run_gibbs(problem, args.seed, args.gibbs_samples, args.gibbs_warmup, keep)
                from bayesmf.model import Params

                out = run_nuts(problem, args.seed, args.nuts_samples, args.gibbs_init_warmup, args.progress,
                               ckpt(name), init=Params(*keep["gibbs_last"]), **quick_tree)
            out["wall_seconds"] = time.perf_counter() - start
            out["cpu_seconds"] = time.process_time() - cpu
            result[name] = out
            print(json.dumps(out, indent=1, default=str), flush=True)
            save()
    except TimeoutError as exc:
        result["aborted"] = str(exc)
        save()
        print(exc, file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
    for name in ("nuts", "nuts_centered", "nuts_from_gibbs", "gibbs_long"):
        if "gibbs" in result and name in result:
            result[f"{name}_minus_gibbs_rmse"] = result[name]["rmse"] - result["gibbs"]["rmse"]
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
