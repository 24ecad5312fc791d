"""Wall time of the tuned MAP fit against a 250-sweep Gibbs fit, measured in one run.

Question (scale issue, item 3): is ``BayesMF(method="map")`` -- precisions
tuned on a validation split, then a refit on all ratings -- the cheap
baseline it should be, i.e. no slower than ``BayesMF(method="gibbs",
num_samples=200, num_warmup=50)`` on the same data and device, and at what
test RMSE?

Every fit runs in a fresh Python process (compilation included, as a user's
first fit) under a watchdog (``--timeout`` seconds), and the methods
alternate within each of ``--repeats`` rounds, so that a change in the
machine's load hits all of them alike; each row records ``uptime`` after it.
Reported per MAP fit: the tuning table (fits, iterations, seconds), the
refit's iterations and the XLA compile seconds and count of the child
process (``jax.monitoring``; the fit's, plus the few of the ``predict`` that
scores it), so that each lever shows: the search (fewer fits), the
tuning tolerance (fewer iterations per fit), one compiled loop for the tuning
fits and the refit (compile seconds).

Methods (``--methods``, comma-separated):

``gibbs``
    250 sweeps (200 kept after 50 of warm-up), one chain.
``map``
    The tuned MAP as shipped (``search="quick"``, :mod:`bayesmf.ratio_search`).
``map-thorough``
    The thorough search (``search="thorough"``: the offset ratio's line and
    the whole coarse factor line too), the default before it and what the
    experiments use.
``map-tune-ftol-1e-6``, ``map-tune-ftol-1e-7``
    The same search with the tuning fits run to a tighter tolerance
    (``tune_ftol``): the price of the default :data:`bayesmf.tuning.TUNE_FTOL`.
``map-baseline``
    The tuned MAP of another source tree (``--baseline-src``, e.g. the
    package as of the commit before this search: ``git archive c1aff76
    bayesmf | tar -x -C /tmp/base``), run with that tree first on the
    child's ``sys.path``.

Shapes (``--shape``):

``ml-100k-u1``
    MovieLens-100K fold u1 (``--data``), rank 10.
``ml-1m``, ``ml-10m``
    Synthetic ratings at those sizes (:data:`bayesmf.synthetic.SHAPES`) drawn
    as ``benchmarks/scale.py`` draws them -- a rank-8 model, noise sd 0.9,
    rounded to 1..5 stars, a uniformly random 10% test split -- fitted at
    rank 32 (``--rank``). Drawn once per run into a temporary file.

Run::

    python benchmarks/map_speed.py --data ../shared/data --methods gibbs,map,map-thorough  # u1, ~3 min on 2 cores
    python benchmarks/map_speed.py --shape ml-1m --repeats 1 --methods gibbs,map,map-thorough  # ~5 min on 2 cores
    # On a GPU machine (the lead's check; ~10 min on one H100/H200):
    python benchmarks/map_speed.py --shape ml-10m --repeats 1 --methods gibbs,map \\
        --out results/benchmarks/map_speed_ml10m_gpu.json

``--gap FACTOR OFFSET`` (synthetic shapes) times nothing: it asks where the
tuned MAP's test RMSE comes from -- the tuning's ratios against an oracle that
picks them on the test set, the validation curve the tuning sees, and MAP at
the truth's rank 8 (:func:`gap`)::

    python benchmarks/map_speed.py --shape ml-1m --gap 13.4 3.0   # the tuned ratios of the timing run; ~15 min

``--trace FACTOR`` times nothing either: it follows the quick search's first
fit -- from random factors at that factor ratio, offset ratio 3 -- along its
L-BFGS path and scores the validation ratings at ``--trace-stops``
iterations, against the fit as the tuning stops it (:func:`trace`): does a
tuning fit stopped earlier only cost less, or does it fit something else?
::

    python benchmarks/map_speed.py --shape ml-1m --trace 10    # ~3 min on 2 cores
    python benchmarks/map_speed.py --data ../shared/data --trace 10   # u1, ~1 min

Writes ``results/benchmarks/map_speed.json`` (``--out``); rows of other shapes
already there are kept, rows of the shapes run are replaced; ``--gap`` and
``--trace`` results go under ``gap`` and ``trace``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# This checkout's bayesmf, also where another is installed; a child is told its tree (map-baseline's, run_child).
sys.path.insert(0, os.environ.get("MAP_SPEED_SOURCE") or str(ROOT))
GIBBS = dict(num_samples=200, num_warmup=50)
TUNE_FTOL_VARIANTS = {"map-tune-ftol-1e-6": 1e-6, "map-tune-ftol-1e-7": 1e-7, "map-tune-ftol-3e-5": 3e-5,
                      "map-tune-ftol-1e-4": 1e-4}
METHODS = ("gibbs", "map", "map-thorough", *TUNE_FTOL_VARIANTS, "map-baseline")
# benchmarks/scale.py's recipe for the synthetic shapes.
TRUTH_RANK, NOISE_SD, TEST_FRACTION = 8, 0.9, 0.1


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def generate(shape: str, seed: int, path: Path) -> dict:
    """Draw a synthetic shape as benchmarks/scale.py does; save the split to ``path`` (.npz)."""
    from bayesmf.split import random_holdout
    from bayesmf.synthetic import SHAPES, movielens_like

    sim = movielens_like(seed, rank=TRUTH_RANK, noise_sd=NOISE_SD, **SHAPES[shape]._asdict())
    split = random_holdout(sim.ratings, TEST_FRACTION, seed)
    users = sim.ratings.user_vocab.index(split.test.user_ids)
    items = sim.ratings.item_vocab.index(split.test.item_ids)
    y = np.asarray(split.test.rating, np.float64)
    np.savez(
        path,
        train_users=np.asarray(split.train.user_ids), train_items=np.asarray(split.train.item_ids),
        train_ratings=np.asarray(split.train.rating, np.float32),
        test_users=np.asarray(split.test.user_ids), test_items=np.asarray(split.test.item_ids),
        test_ratings=np.asarray(split.test.rating, np.float32),
    )
    floor = float(np.sqrt(np.mean((sim.expected_rating(users, items) - y) ** 2)))
    return dict(num_train=len(split.train), num_test=len(split.test), rmse_floor=floor, truth_rank=TRUTH_RANK,
                noise_sd=NOISE_SD, seed=seed)


def load(shape: str, data_dir: Path, path: Path | None):
    """(train, test) Ratings of a shape."""
    if shape == "ml-100k-u1":
        from bayesmf.split import make_split

        split = make_split(data_dir / "ml-100k", "u1")
        return split.train, split.test
    from bayesmf.data import RatingScale, Ratings

    arrays = np.load(path)
    scale = RatingScale(1.0, 5.0, 1.0)
    train = Ratings.from_arrays(arrays["train_users"], arrays["train_items"], arrays["train_ratings"], scale=scale)
    test = Ratings.from_arrays(arrays["test_users"], arrays["test_items"], arrays["test_ratings"], scale=scale)
    return train, test


def one(shape: str, method: str, rank: int, data_dir: Path, path: Path | None) -> dict:
    """One fit in this process; the measurement as a dict."""
    import jax
    import jax.monitoring

    import bayesmf

    compiles = []

    def listen(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    train, test = load(shape, data_dir, path)
    if method == "gibbs":
        model = bayesmf.BayesMF(rank=rank, method="gibbs", progress_bar=False, **GIBBS)
    else:
        options = {"tune_ftol": TUNE_FTOL_VARIANTS[method]} if method in TUNE_FTOL_VARIANTS else {}
        if method == "map-thorough":
            options = {"search": "thorough"}
        model = bayesmf.BayesMF(rank=rank, method="map", progress_bar=False, **options)
    start = time.perf_counter()
    posterior = model.fit(jax.random.PRNGKey(0), train)
    seconds = time.perf_counter() - start
    compile_count, compile_seconds = len(compiles), float(sum(compiles))
    y = np.asarray(test.rating, np.float64)
    mean = np.asarray(posterior.predict(test.user_ids, test.item_ids).mean, np.float64)
    out = dict(shape=shape, method=method, rank=rank, fit_seconds=seconds, rmse=float(np.sqrt(np.mean((mean - y) ** 2))),
               xla_compiles=compile_count, xla_compile_seconds=compile_seconds, device=jax.default_backend(),
               device_kind=jax.devices()[0].device_kind, bayesmf_file=bayesmf.__file__)
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
    else:
        out.update(compile_seconds=posterior.timing.get("compile_seconds"),
                   seconds_per_sweep=posterior.timing.get("seconds_per_sample"))
    return out


def gap(shape: str, rank: int, data_dir: Path, path: Path | None, factor: float, offset: float) -> dict:
    """Where the tuned MAP's test RMSE comes from (``--gap``): around the
    tuned ratios ``factor`` and ``offset``, the test RMSE of MAP fits on all
    the training ratings (an oracle that tunes on the test set: the best any
    choice of precisions can do, at the tuning tolerance), a factor-ratio
    line at ``offset`` and an offset-ratio line at ``factor``; and the tuned
    MAP at the truth's rank (:data:`TRUTH_RANK`). The validation RMSEs the
    tuning saw are in the timing run's ``tuning_table``."""
    import jax

    from bayesmf import tuning
    from bayesmf.model import FixedPriors, ModelConfig, model_data_from_ratings

    train, test = load(shape, data_dir, path)
    config = ModelConfig(rank=rank, priors="fixed", fixed=FixedPriors(mean_precision=2.0))
    known = np.isin(test.user_ids, train.user_vocab.ids) & np.isin(test.item_ids, train.item_vocab.ids)
    test_pairs = (train.user_vocab.index(test.user_ids[known]), train.item_vocab.index(test.item_ids[known]))
    factors = [factor * 2.0**k for k in (-2, -1, 0, 1, 2)]  # 7.5 .. 120 around 30
    offsets = [offset / 10, offset, offset * 10]
    out = dict(factor=factor, offset=offset, num_test_known=int(known.sum()))
    for name, data, pairs, ratings in (
        ("oracle_test", model_data_from_ratings(train), test_pairs, np.asarray(test.rating)[known]),
    ):
        rows = []
        for grid in ({"factor": factors, "offset": [offset]}, {"factor": [factor], "offset": offsets}):
            start = time.perf_counter()
            result = tuning.tune(jax.random.PRNGKey(0), data, pairs, ratings, config, grid=grid,
                                 ftol=tuning.REFIT_FTOL)
            rows += result["table"].to_dict("records")
            print(f"{name} {grid}: {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
        out[name] = rows
    import bayesmf

    start = time.perf_counter()
    posterior = bayesmf.BayesMF(rank=TRUTH_RANK, method="map", progress_bar=False).fit(jax.random.PRNGKey(0), train)
    mean = np.asarray(posterior.predict(test.user_ids, test.item_ids).mean, np.float64)
    out["map_at_truth_rank"] = dict(rank=TRUTH_RANK, ratios=posterior.info["ratios"], fit_seconds=time.perf_counter() - start,
                                    rmse=float(np.sqrt(np.mean((mean - np.asarray(test.rating, np.float64)) ** 2))))
    return out


def trace(shape: str, rank: int, data_dir: Path, path: Path | None, factor: float, checkpoints) -> dict:
    """The validation RMSE along one tuning fit's L-BFGS path (``--trace``):
    the first fit of the quick search -- from random factors, factor ratio
    ``factor``, offset ratio 3, on the tuning's sub-train split -- stopped
    after each of ``checkpoints`` iterations (``tol = ftol = 0``; the path is
    deterministic, so each stop is a point of the one path), with the
    objective per rating there. Also the fit as the tuning stops it
    (``TUNE_FTOL``). Does stopping the tuning fits earlier only save time,
    or does it change what is fitted?"""
    import jax
    import jax.numpy as jnp

    from bayesmf import tuning
    from bayesmf.engines import map as map_engine
    from bayesmf.model import FixedPriors, ModelConfig, model_data_from_ratings, params_from_sites, predict_mean
    from bayesmf.ratio_search import Point
    from bayesmf.split import validation_split

    train, _ = load(shape, data_dir, path)
    split = validation_split(train, 0.1, 0)  # fit_ratings's defaults
    data = model_data_from_ratings(split.train)
    config = ModelConfig(rank=rank, priors="fixed", fixed=FixedPriors(mean_precision=2.0))
    pairs = (jnp.asarray(split.train.user_vocab.index(split.test.user_ids), jnp.int32),
             jnp.asarray(split.train.item_vocab.index(split.test.item_ids), jnp.int32))
    valid = np.asarray(split.test.rating, np.float64)
    priors = Point(factor, factor, 3.0).priors(user_offset=config.fixed.user_offset_precision / config.fixed.noise_precision)
    start = map_engine.init_latent(jax.random.PRNGKey(0), data, config)

    def scored(latent, info, seconds) -> dict:
        mean = np.asarray(predict_mean(params_from_sites(latent, data, config), *pairs), np.float64)
        return dict(iterations=info["iterations"], valid_rmse=float(np.sqrt(np.mean((mean - valid) ** 2))),
                    objective=info["final_value"], seconds=seconds)

    rows = []
    for stop in checkpoints:
        solver = map_engine.make_solver(data, config, "lbfgs", max_iters=stop, tol=0.0, ftol=0.0)
        begin = time.perf_counter()
        latent, info = map_engine.solve(solver, start, priors)
        rows.append(scored(latent, info, time.perf_counter() - begin))
        print(f"trace {factor} {rows[-1]}", file=sys.stderr, flush=True)
    solver = map_engine.make_solver(data, config, "lbfgs", ftol=tuning.TUNE_FTOL)
    begin = time.perf_counter()
    latent, info = map_engine.solve(solver, start, priors)
    return dict(factor=factor, offset=3.0, num_validation=len(valid), path=rows,
                tuning_stop=scored(latent, info, time.perf_counter() - begin))


def run_child(args, shape: str, method: str, rank: int, path: Path | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--data", str(args.data), "--one", shape, method,
           "--rank", str(rank)] + (["--path", str(path)] if path else [])
    env = dict(os.environ, MAP_SPEED_SOURCE=str(args.baseline_src if method == "map-baseline" else ROOT))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return dict(shape=shape, method=method, rank=rank, error=f"watchdog: over {args.timeout} s")
    if proc.returncode != 0:
        return dict(shape=shape, method=method, rank=rank, error=proc.stderr.strip().splitlines()[-3:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(runs: list) -> dict:
    """Per shape and method: median fit seconds and test RMSEs; per MAP method
    the median of its ratio to the Gibbs fit of the same round."""
    summary = {}
    for shape in sorted({r["shape"] for r in runs}):
        rows = [r for r in runs if r["shape"] == shape and "error" not in r]
        gibbs = {r["round"]: r["fit_seconds"] for r in rows if r["method"] == "gibbs"}
        for method in sorted({r["method"] for r in rows}):
            mine = [r for r in rows if r["method"] == method]
            entry = dict(fit_seconds_median=float(np.median([r["fit_seconds"] for r in mine])),
                         fit_seconds=[r["fit_seconds"] for r in mine], rmse=[r["rmse"] for r in mine])
            ratios = [r["fit_seconds"] / gibbs[r["round"]] for r in mine if r["round"] in gibbs]
            if method != "gibbs" and ratios:
                entry["ratio_to_gibbs_same_round"] = ratios
                entry["ratio_to_gibbs_median"] = float(np.median(ratios))
            summary[f"{shape}/{method}"] = entry
    return summary


def table_md(summary: dict) -> str:
    lines = ["| shape | method | fit s (median) | MAP / Gibbs (same round) | test RMSE |", "|---|---|---|---|---|"]
    for key, entry in summary.items():
        shape, method = key.split("/", 1)
        ratio = entry.get("ratio_to_gibbs_median")
        lines.append(f"| {shape} | {method} | {entry['fit_seconds_median']:.1f} | "
                     f"{'' if ratio is None else f'{ratio:.2f}'} | {', '.join(f'{x:.4f}' for x in entry['rmse'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("BAYESMF_DATA", "data")))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "map_speed.json")
    parser.add_argument("--shape", default="ml-100k-u1", choices=("ml-100k-u1", "ml-100k", "ml-1m", "ml-10m"))
    parser.add_argument("--rank", type=int, default=None, help="default 10 on ml-100k-u1, 32 on the synthetic shapes")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--methods", default="gibbs,map", help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--baseline-src", type=Path, default=None, help="source tree for map-baseline")
    parser.add_argument("--timeout", type=float, default=1800.0, help="watchdog per fit, seconds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and its split")
    parser.add_argument("--gap", nargs=2, type=float, metavar=("FACTOR", "OFFSET"),
                        help="instead of timing: the oracle / validation RMSE curves around these tuned ratios "
                             "and MAP at the truth's rank (synthetic shapes; written under 'gap' in --out)")
    parser.add_argument("--trace", type=float, metavar="FACTOR", default=None,
                        help="instead of timing: the validation RMSE along the first tuning fit's L-BFGS path at "
                             "this factor ratio (written under 'trace' in --out)")
    parser.add_argument("--trace-stops", default="25,50,75,100,125,150,200,300,400,500",
                        help="iterations at which --trace scores the path")
    parser.add_argument("--one", nargs=2, metavar=("SHAPE", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    rank = args.rank or (10 if (args.one[0] if args.one else args.shape) == "ml-100k-u1" else 32)
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], rank, args.data, args.path), default=float))
        return
    if args.gap or args.trace:
        start_uptime = _uptime()
        with tempfile.TemporaryDirectory() as tmp:
            path = None if args.shape == "ml-100k-u1" else Path(tmp) / "split.npz"
            generated = {} if path is None else generate(args.shape, args.seed, path)
            if args.gap:
                section, found = "gap", gap(args.shape, rank, args.data, path, *args.gap)
            else:
                stops = [int(x) for x in args.trace_stops.split(",")]
                section, found = "trace", trace(args.shape, rank, args.data, path, args.trace, stops)
            out = dict(generated, **found, uptime_start=start_uptime, uptime_end=_uptime())
        result = json.loads(args.out.read_text()) if args.out.exists() else {}
        key = f"{args.shape}/rank{rank}" + (f"/factor{args.trace:g}" if args.trace else "")
        result.setdefault(section, {})[key] = out
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
        print(json.dumps(out, indent=1, default=float))
        return
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown or ("map-baseline" in methods and args.baseline_src is None):
        raise SystemExit(f"unknown methods {sorted(unknown)} or map-baseline without --baseline-src")
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    # A shape's runs are replaced; the replaced ones move to earlier_runs (the
    # README cites some), and the --gap and --trace analyses stay.
    result = dict(question=__doc__.split("\n\n")[1], cpus=os.cpu_count(), platform=platform.platform(),
                  runs=[r for r in previous.get("runs", []) if r["shape"] != args.shape],
                  earlier_runs=previous.get("earlier_runs", [])
                  + [r for r in previous.get("runs", []) if r["shape"] == args.shape])
    for section in ("gap", "trace"):
        if section in previous:
            result[section] = previous[section]
    result.setdefault("generated", {}).update(previous.get("generated", {}))
    result["uptime_start"] = {**previous.get("uptime_start", {}), args.shape: _uptime()}
    with tempfile.TemporaryDirectory() as tmp:
        path = None
        if args.shape != "ml-100k-u1":
            path = Path(tmp) / "split.npz"
            result["generated"][args.shape] = generate(args.shape, args.seed, path)
        for round_ in range(args.repeats):
            for method in methods:
                row = run_child(args, args.shape, method, rank, path)
                row.update(round=round_, uptime=_uptime())
                result["runs"].append(row)
                if "error" in row:
                    print(f"{args.shape} {method}: {row['error']}", flush=True)
                    continue
                extra = (f" tune {row['tune_seconds']:.1f}s ({row['tuning_fits']} fits, {row['tuning_iterations']} its)"
                         f" refit {row['refit_seconds']:.1f}s ({row['refit_iterations']} its)") if method != "gibbs" else ""
                print(f"{args.shape} {method:20s} {row['fit_seconds']:7.1f}s rmse {row['rmse']:.4f} "
                      f"compile {row['xla_compile_seconds']:.1f}s/{row['xla_compiles']}{extra}", flush=True)
    result["summary"] = summarize(result["runs"])
    result["table"] = table_md(result["summary"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(result["table"])


if __name__ == "__main__":
    main()
