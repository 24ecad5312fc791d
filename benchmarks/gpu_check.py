"""The GPU check: every user-facing path on an accelerator, and the scale figures, in one short run.

Question: do fit, evaluate, predict, fold-in, recommend and save/load work on
the device jax finds, what do the matmul precision (TF32 is JAX's default for
float32 on Hopper) and float64 do to RMSE, coverage and time, and how fast and
how large is the Gibbs sweep at ML-10M, Netflix and high-rank shapes?
(Issue 18, items 1, 2, 4 and 5.)

Each step runs in its own child process under a watchdog (so each device
peak is that step's own, and one failure or hang costs only its step); the
parent writes ``gpu_check.json`` after every step, so a run cut short keeps
what it measured.

* ``paths`` (ml-100k u1, rank 10, 200 draws after 50; ``--data``):
  ``BayesMF`` Gibbs fit, ``evaluate``, ``predict`` of 10,000 pairs,
  ``fold_in_users`` of a new user with 10 ratings, ``recommend`` top 10 for
  every user, ``save`` / ``load`` and the loaded model's predictions
  (identical), the tuned MAP fit; per matmul precision (``default``: JAX's
  choice, TF32 on Ampere and later; ``highest``: full float32).
* ``scale``: synthetic ratings from a rank-8 model (noise sd 0.9, stars;
  :func:`bayesmf.synthetic.movielens_like`), random 90/10 split, Gibbs at
  the given rank: generation, compile and per-sweep seconds, peak device
  memory against the memory model (:func:`bayesmf.engines.gibbs.memory_plan`),
  optionally ``evaluate`` on the test ratings and save / load.

Run (the GPU machine runs the package from source; see README, "GPU"; `--plan fourth`,
`fourth-2`, `fourth-3` are the H100 runs of `fourth_run` in the JSON; `--plan fifth`
is prepared for the next device: evaluate's chunks, the scaled MAP, blocks of segments)::

    python benchmarks/gpu_check.py --data ../shared/data --out results/benchmarks/gpu_check.json
    python benchmarks/gpu_check.py --tiny --out /tmp/gpu_check.json      # seconds, on any backend (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

TRUTH_RANK, NOISE_SD, TEST_FRACTION = 8, 0.9, 0.1
TINY_SHAPE = dict(num_users=150, num_items=90, num_ratings=4_000, min_per_user=5)

# (name, child arguments, watchdog seconds), most wanted first: the default plan, under 9 minutes
# on an H200 even if every step runs into its watchdog.
PLAN = [
    ("paths-default", ["paths", "--precision", "default", "--map"], 120),
    ("ml-10m-d32", ["scale", "--shape", "ml-10m", "--rank", "32", "--warmup", "20", "--sweeps", "100",
                    "--evaluate", "--save"], 120),
    ("netflix-d32", ["engine", "--shape", "netflix", "--rank", "32", "--warmup", "3", "--sweeps", "10"], 150),
    ("ml-10m-d512", ["engine", "--shape", "ml-10m", "--rank", "512", "--warmup", "1", "--sweeps", "3",
                     "--no-keep"], 100),
    ("paths-highest", ["paths", "--precision", "highest"], 45),
    ("ml-10m-d32-highest", ["engine", "--shape", "ml-10m", "--rank", "32", "--warmup", "2", "--sweeps", "10",
                            "--precision", "highest"], 45),
    ("ml-10m-d32-float64", ["engine", "--shape", "ml-10m", "--rank", "32", "--warmup", "2", "--sweeps", "10",
                            "--dtype", "float64"], 60),
]

# The second run: chunk budgets on the GPU (1/16 of the memory is the
# default; 1.0 bounds nothing, the layout of the previous release), and the
# rank-512 sweep with its kernels timed apart.
SECOND_PLAN = [
    ("linalg-d512", ["linalg", "--rank", "512"], 60),
    ("ml-10m-d32-chunk-1/64", ["engine", "--shape", "ml-10m", "--rank", "32", "--warmup", "2", "--sweeps", "10",
                               "--chunk-fraction", "0.015625"], 45),
    ("ml-10m-d32-chunk-unbounded", ["engine", "--shape", "ml-10m", "--rank", "32", "--warmup", "2", "--sweeps", "10",
                                    "--chunk-fraction", "1.0"], 45),
    ("ml-10m-d32-chunk-1/16", ["engine", "--shape", "ml-10m", "--rank", "32", "--warmup", "2", "--sweeps", "10"], 45),
    ("ml-10m-d512-chunk-1/64", ["engine", "--shape", "ml-10m", "--rank", "512", "--warmup", "0", "--sweeps", "2",
                                "--no-keep", "--chunk-fraction", "0.015625", "--progress"], 150),
]

# The third run: where the GPU compile time goes (XLA's GEMM autotuning, and
# JAX's persistent compilation cache on a second fit of the same shapes).
_D32 = ["engine", "--shape", "ml-10m", "--rank", "32", "--warmup", "2", "--sweeps", "10"]
_CACHE = {"JAX_COMPILATION_CACHE_DIR": "/tmp/bayesmf-jax-cache", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
THIRD_PLAN = [
    ("ml-10m-d32-cache-cold", _D32, 45, _CACHE),
    ("ml-10m-d32-cache-warm", _D32, 45, _CACHE),
    ("ml-10m-d32-autotune-0", _D32, 45, {"XLA_FLAGS": "--xla_gpu_autotune_level=0"}),
    ("netflix-d32-autotune-0", ["engine", "--shape", "netflix", "--rank", "32", "--warmup", "3", "--sweeps", "10"],
     110, {"XLA_FLAGS": "--xla_gpu_autotune_level=0"}),
]


# The fourth run (an H100): the segment layout (one loop body per side,
# whatever the degrees) against buckets, compile with XLA's GEMM autotuning
# off from the package (memory.compiler_options), where a Netflix
# sweep's time goes, evaluate with the star-scale scores, the tuned MAP
# against 250 Gibbs sweeps, and rank 512 on an H100's 80 GB.
_NETFLIX = ["engine", "--shape", "netflix", "--rank", "32", "--warmup", "3", "--sweeps", "10"]
FOURTH_PLAN = [
    ("netflix-d32-segment", _NETFLIX + ["--layout", "segment"], 90),
    ("netflix-d32-parts", ["parts", "--shape", "netflix", "--rank", "32", "--layouts", "segment"], 100),
    ("ml-10m-d32-map", ["scale", "--shape", "ml-10m", "--rank", "32", "--warmup", "20", "--sweeps", "100",
                        "--evaluate", "--map"], 150),
    ("ml-10m-d512-h100", ["engine", "--shape", "ml-10m", "--rank", "512", "--warmup", "0", "--sweeps", "2",
                          "--no-keep", "--chunk-fraction", "0.015625"], 90),
    ("paths-default", ["paths", "--precision", "default", "--map"], 80),
    ("netflix-d32-bucket", _NETFLIX + ["--layout", "bucket"], 80),
]
# Its second part: a Netflix sweep compiled alone against the driver's, the
# evaluation's compile and scoring apart (with autotuning off), and rank 512
# on the H100 at larger chunks.
FOURTH_PLAN_2 = [
    ("netflix-d32-step-segment", ["step", "--shape", "netflix", "--rank", "32", "--layout", "segment"], 100),
    ("ml-10m-d32-evaluate-autotune-0", ["scale", "--shape", "ml-10m", "--rank", "32", "--warmup", "2", "--sweeps",
                                        "100", "--evaluate", "--evaluate-twice"], 80,
     {"XLA_FLAGS": "--xla_gpu_autotune_level=0"}),
    ("ml-10m-d512-h100-chunk-1/16", ["engine", "--shape", "ml-10m", "--rank", "512", "--warmup", "0", "--sweeps", "2",
                                     "--no-keep", "--chunk-fraction", "0.0625"], 70),
    ("ml-10m-d512-h100-chunk-1/32", ["engine", "--shape", "ml-10m", "--rank", "512", "--warmup", "0", "--sweeps", "2",
                                     "--no-keep", "--chunk-fraction", "0.03125"], 70),
    ("netflix-d32-step-bucket", ["step", "--shape", "netflix", "--rank", "32", "--layout", "bucket"], 100),
]
# Its third part, the code as it lands: segments sized per side
# (layout_plan.segment_width), kept draws moving to the host while the next chunk
# runs (driver), the default chunk at rank 512, every user path.
FOURTH_PLAN_3 = [
    ("netflix-d32-step-auto", ["step", "--shape", "netflix", "--rank", "32"], 75),
    ("ml-10m-d32-final", ["scale", "--shape", "ml-10m", "--rank", "32", "--warmup", "20", "--sweeps", "100",
                          "--evaluate", "--evaluate-twice", "--save"], 80),
    ("netflix-d32-bucket-final", _NETFLIX + ["--layout", "bucket"], 60),
    ("ml-10m-d512-h100-default", ["engine", "--shape", "ml-10m", "--rank", "512", "--warmup", "0", "--sweeps", "2",
                                  "--no-keep"], 60),
    ("paths-final", ["paths", "--precision", "default"], 45),
]
# The fifth (prepared, not yet run: no device was lent since): evaluate's one
# scoring program for known and cold pairs and its chunks of
# streaming.ACCELERATOR_CHUNK_CELLS on a GPU, against chunks of the CPU's
# size; the tuned MAP with the Jacobi-scaled L-BFGS against 250 Gibbs sweeps,
# at ML-10M shape and on u1; segments in blocks of rows (layout="segment"
# where every row's statistics exceed 1/32 of the memory) at Netflix shape
# and rank 512, whose buckets compiled for 4.3-6.0 and 12 s: on the CPU
# blocks compiled a sweep in 3.2 s against 5.7 (Netflix) and 2.6 against
# 5.3 (rank 512).
_ML10M_EVAL = ["scale", "--shape", "ml-10m", "--rank", "32", "--warmup", "20", "--sweeps", "100", "--evaluate",
               "--evaluate-twice"]
FIFTH_PLAN = [
    ("ml-10m-d32-evaluate-map", _ML10M_EVAL + ["--map"], 120),
    ("netflix-d32-segment-blocks", _NETFLIX + ["--layout", "segment"], 80),
    ("netflix-d32-bucket-peer", _NETFLIX + ["--layout", "bucket"], 70),
    ("ml-10m-d512-segment-blocks", ["engine", "--shape", "ml-10m", "--rank", "512", "--warmup", "0", "--sweeps", "2",
                                    "--no-keep", "--layout", "segment"], 60),
    ("ml-10m-d512-bucket-peer", ["engine", "--shape", "ml-10m", "--rank", "512", "--warmup", "0", "--sweeps", "2",
                                 "--no-keep", "--layout", "bucket"], 55),
    ("paths-map", ["paths", "--precision", "default", "--map"], 60),
    ("ml-10m-d32-evaluate-cpu-chunks", _ML10M_EVAL + ["--evaluate-chunk-cells", str(2**19)], 70),
]
# The sixth, after the fifth (H200): evaluate's scoring program without
# jax.random, the star masses' cut points and ndtri in it (its CPU compile
# 2.2-2.4 -> 1.0-1.3 s), the tuned MAP's fits apart, and "auto" taking
# segments on accelerators too (in blocks at rank 512).
SIXTH_PLAN = [
    ("ml-10m-d32-evaluate-map-6", _ML10M_EVAL + ["--map"], 110),
    ("netflix-d32-auto-6", _NETFLIX, 70),
    ("ml-10m-d512-auto-6", ["engine", "--shape", "ml-10m", "--rank", "512", "--warmup", "0", "--sweeps", "2",
                            "--no-keep"], 50),
    ("paths-map-6", ["paths", "--precision", "default", "--map"], 50),
]
# The seventh, after the sixth: the tuned MAP's set-up outside its fits (the
# validation split without sorting, host arrays by device_put), the star
# scores' prediction sets found once for all levels, the sweep at Netflix shape again.
SEVENTH_PLAN = [
    ("ml-10m-d32-evaluate-map-7", _ML10M_EVAL + ["--map"], 110),
    ("paths-map-7", ["paths", "--precision", "default", "--map"], 50),
    ("netflix-d32-auto-7", _NETFLIX, 70),
]
# The eighth: the validation split by the lowest random key of each user and
# movie instead of a permutation (ML-10M shape on the CPU: 2.7 -> 0.8 s).
EIGHTH_PLAN = [
    ("ml-10m-d32-evaluate-map-8", _ML10M_EVAL + ["--map"], 100),
    ("paths-map-8", ["paths", "--precision", "default", "--map"], 50),
]

# The ninth (prepared, not yet run: no device lent since): the MAP loop over
# one flat vector with L-BFGS's value and gradient stored before the loop (its
# CPU compile 3.8-4.3 -> 2.7-3.2 s on u1), the fixed priors as independent
# Normals (the summary's compile 0.67 -> 0.22 s), the MAP loop and evaluate's
# scoring compiled without GEMM autotuning as the sweeps are; and the fair peer, a whole
# 250-sweep Gibbs fit timed in the same warm process after jax.clear_caches()
# (--gibbs-wall), beside the compile + 250 x sweep figure of the runs before.
# Since prepared: evaluate's star scores computed on the device (0.58-0.64 s of
# host time in the eighth run's warm call) and its scores kept in the scoring
# order (no scatter back into the test set's order), both in its profile.
# And the MAP loop's L-BFGS with one call site of the objective (bayesmf.engines.lbfgs: one compiled
# copy of its gradient where optax.lbfgs()'s zoom line search compiled three; on the CPU, u1, the loop
# compiles in 0.9 against 1.2 s, the tuned fit 2.7 against 3.3 s), against the zoom loop in the same
# warm process (--map-zoom). And the MAP point estimate's batched ranking with its Laplace spread (lcb,
# Thompson; on the CPU all 6,040 users of an ML-1M shape in 2.0-3.7 s), checked against one user at a time.
NINTH_PLAN = [
    ("ml-10m-d32-evaluate-map-9", _ML10M_EVAL + ["--map", "--gibbs-wall", "--map-zoom"], 120),
    ("paths-map-9", ["paths", "--precision", "default", "--map", "--gibbs-wall", "--map-zoom"], 70),
]

# Every run's plan by name (--plan); --only picks steps from all of them.
PLANS = {"first": PLAN, "second": SECOND_PLAN, "third": THIRD_PLAN, "fourth": FOURTH_PLAN, "fourth-2": FOURTH_PLAN_2,
         "fourth-3": FOURTH_PLAN_3, "fifth": FIFTH_PLAN, "sixth": SIXTH_PLAN, "seventh": SEVENTH_PLAN,
         "eighth": EIGHTH_PLAN, "ninth": NINTH_PLAN}


def _device() -> dict:
    import jax

    dev = jax.devices()[0]
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # noqa: BLE001 - the CPU may report nothing
        stats = {}
    peak = stats.get("peak_bytes_in_use")
    return dict(backend=jax.default_backend(), device_kind=dev.device_kind, jax=jax.__version__,
                peak_device_mb=None if peak is None else peak / 2**20)


def emit(out: dict) -> None:
    """Print what a child has measured so far (the parent keeps the last line, even after its watchdog)."""
    print(json.dumps(out), flush=True)


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _summary(table) -> dict:
    row = table.loc[("all", "all")]
    return dict(rmse=float(row["rmse"]), coverage_90=float(row["coverage_90"]))


def _map_parts(post) -> dict:
    """Where a tuned MAP fit's time went: the tuning grid's fits and the refit on all ratings."""
    fits = [{k: row.get(k) for k in ("user_ratio", "offset_ratio", "valid_rmse", "iterations", "seconds")}
            for row in post.info.get("tuning") or ()]
    return dict(map_tune_seconds=post.timing.get("tune_seconds"), map_refit_seconds=post.timing.get("refit_seconds"),
                map_tuning_fits=len(fits), map_fits=fits)


def _forget_programs() -> None:
    """Clear JAX's caches and the package's kept programs (``memory.clear_programs``, which
    ``jax.clear_caches`` does not reach): the next fit compiles afresh, as in a new process."""
    import jax

    from bayesmf import memory

    jax.clear_caches()
    memory.clear_programs()


def _gibbs_wall(rng_key, train, rank: int, **options) -> float:
    """Wall seconds of a whole 250-sweep Gibbs fit (200 kept after 50) in this warm process, its programs
    compiled afresh (``jax.clear_caches`` and the package's kept programs, ``memory.clear_programs``): the tuned
    MAP's peer, set-up included. The caches are cleared again after it, so that the MAP fit timed next compiles
    its own programs too."""
    import bayesmf

    _forget_programs()
    model = bayesmf.BayesMF(rank, "gibbs", num_samples=200, num_warmup=50, progress_bar=False, **options)
    post, seconds = _timed(model.fit, rng_key, train)
    del post
    _forget_programs()
    return seconds


def _laplace_ranking(map_post) -> dict:
    """Every user's top 10 of the MAP point estimate with its Laplace spread (the batched path: lcb, then
    Thompson), and whether 5 users' lists and scores equal ranking them one at a time on this device."""
    import jax

    import bayesmf
    from topn import OneAtATime

    kw = dict(k=10, uncertainty="laplace", rng_key=jax.random.PRNGKey(0))
    out = {}
    for strategy in ("lcb", "thompson"):
        frame, out[f"map_laplace_{strategy}_seconds"] = _timed(bayesmf.recommend, map_post, strategy=strategy, **kw)
        same = True
        for n, user in enumerate(map_post.user_vocab.ids[:5]):
            key = jax.random.fold_in(kw["rng_key"], n)  # user n of the whole list's key
            one = bayesmf.recommend(OneAtATime(map_post), user, strategy=strategy, **dict(kw, rng_key=key))
            batch = frame[frame["user"] == user]
            same &= one["item"].tolist() == batch["item"].tolist() and bool(np.array_equal(one["score"], batch["score"]))
        out[f"map_laplace_{strategy}_equal_to_per_user"] = same
    return out


def _map_zoom_peer(rng_key, train, rank: int, test) -> dict:
    """The tuned MAP with the previous release's loop, optax.lbfgs() (its zoom line search) over the same
    flat vector, its programs compiled afresh in this warm process: the peer of the package's loop
    (bayesmf.engines.lbfgs). The engine's default optimizer is swapped for the one fit (a benchmark's
    reach into the engine: the estimator hands a user's optimizer the sites' dict, another loop)."""
    import optax

    import bayesmf
    from bayesmf.engines import map as map_engine

    _forget_programs()
    default, zoom = map_engine._default_optimizer_for, optax.lbfgs()
    map_engine._default_optimizer_for = lambda solver: zoom if solver == "lbfgs" else default(solver)
    try:
        post, seconds = _timed(bayesmf.BayesMF(rank, "map", progress_bar=False).fit, rng_key, train)
    finally:
        map_engine._default_optimizer_for = default
    out = {f"zoom_{k}": v for k, v in _map_parts(post).items()}
    out.update(zoom_map_fit_seconds=seconds, zoom_map_rmse=_summary(post.evaluate(test))["rmse"])
    _forget_programs()
    return out


def child_paths(args) -> dict:
    import jax

    if args.precision != "default":
        jax.config.update("jax_default_matmul_precision", args.precision)
    import bayesmf
    from bayesmf.data import read_ratings

    if args.tiny:
        from bayesmf import split
        from bayesmf.synthetic import movielens_like

        s = split.random_holdout(movielens_like(0, rank=3, noise_sd=0.5, **TINY_SHAPE).ratings, 0.1, 0)
        train, test, rank, draws, warmup = s.train, s.test, 4, 20, 10
    else:
        home = Path(args.data) / "ml-100k"
        train, test = read_ratings(home / "u1.base"), read_ratings(home / "u1.test")
        rank, draws, warmup = 10, 200, 50
    out = dict(precision=args.precision)
    model = bayesmf.BayesMF(rank, "gibbs", num_samples=draws, num_warmup=warmup, progress_bar=False)
    post, out["fit_seconds"] = _timed(model.fit, 0, train)
    out["compile_seconds"] = post.timing["compile_seconds"]
    out["seconds_per_sweep"] = post.timing["seconds_per_sample"]
    emit(out)
    table, out["evaluate_seconds"] = _timed(post.evaluate, test)
    out.update(_summary(table))
    # The same fit again with another seed: its programs are kept (memory.compile_program), nothing compiles.
    _, out["refit_seconds"] = _timed(model.fit, 1, train)
    emit(out)
    if args.precision == "default":
        n = min(10_000, len(test))
        users, items = np.asarray(test.user_ids)[:n], np.asarray(test.item_ids)[:n]
        pred, out["predict_seconds"] = _timed(post.predict, users, items)
        known = np.asarray(train.item_ids)[:10]
        new = pd.DataFrame(dict(user=["new"] * 10, item=known, rating=np.asarray(train.rating)[:10]))
        folded, out["fold_in_seconds"] = _timed(bayesmf.fold_in_users, post, new)
        folded_pred, out["fold_in_predict_seconds"] = _timed(folded.predict, ["new"] * 5, known[:5])
        out["fold_in_finite"] = bool(np.isfinite(folded_pred.mean).all())
        recs, out["recommend_seconds"] = _timed(bayesmf.recommend, post, k=10)
        out["recommend_rows"] = int(len(recs))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.nc"
            _, out["save_seconds"] = _timed(bayesmf.save, post, path)
            loaded, out["load_seconds"] = _timed(bayesmf.load, path)
            again = loaded.predict(users, items)
            out["loaded_predictions_identical"] = bool(np.array_equal(again.mean, pred.mean)
                                                       and np.array_equal(again.sd, pred.sd))
        emit(out)
        if args.map:
            if args.gibbs_wall:
                out["gibbs_250_wall_seconds"] = _gibbs_wall(0, train, rank)
            map_model = bayesmf.BayesMF(rank, "map", progress_bar=False)
            map_post, out["map_fit_seconds"] = _timed(map_model.fit, 0, train)
            out.update(_map_parts(map_post))
            out["map_rmse"] = _summary(map_post.evaluate(test))["rmse"]
            emit(out)
            out.update(_laplace_ranking(map_post))
            if args.map_zoom:
                emit(out)
                out.update(_map_zoom_peer(0, train, rank, test))
    out.update(_device())
    return out


def child_scale(args) -> dict:
    import jax

    import bayesmf
    from bayesmf import split
    from bayesmf.engines import gibbs
    from bayesmf.model import ModelConfig, model_data_from_ratings
    from bayesmf.synthetic import SHAPES, movielens_like

    shape = dict(TINY_SHAPE) if args.tiny else SHAPES[args.shape]._asdict()
    out = dict(shape=args.shape, rank=args.rank, dtype=args.dtype, warmup=args.warmup, sweeps=args.sweeps, **shape)
    sim, out["generation_seconds"] = _timed(movielens_like, args.seed, rank=TRUTH_RANK, noise_sd=NOISE_SD, **shape)
    s, out["split_seconds"] = _timed(split.random_holdout, sim.ratings, TEST_FRACTION, args.seed)
    del sim
    emit(out)
    plan = gibbs.memory_plan(model_data_from_ratings(s.train), ModelConfig(rank=args.rank), num_samples=args.sweeps,
                             keep_draws=not args.no_keep)
    out["model_device_mb"] = plan.device_bytes / 2**20
    out["model_host_mb"] = plan.host_bytes / 2**20
    model = bayesmf.BayesMF(args.rank, "gibbs", num_samples=args.sweeps, num_warmup=args.warmup, progress_bar=False,
                            dtype=args.dtype, keep_draws=not args.no_keep)
    post, out["fit_seconds"] = _timed(model.fit, jax.random.PRNGKey(args.seed), s.train)
    out["compile_seconds"] = post.timing["compile_seconds"]
    out["seconds_per_sweep"] = post.timing["seconds_per_sample"]
    out["train_rmse_last"] = float(np.asarray(post.stats["train_rmse"])[0, -1])
    out["peak_after_fit"] = _device()
    emit(out)
    if args.evaluate:
        from bayesmf.metrics import streaming

        if args.evaluate_chunk_cells:  # evaluate's chunks on an accelerator (the CPU's size for comparison)
            streaming.ACCELERATOR_CHUNK_CELLS = args.evaluate_chunk_cells
        out["evaluate_chunk_cells"] = streaming.default_chunk_cells()
        table, out["evaluate_seconds"] = _timed(post.evaluate, s.test)
        out.update(_summary(table), num_test=len(s.test))
        emit(out)
        if args.evaluate_twice:  # compiled already: the scoring alone, and where its time goes
            import cProfile
            import pstats

            profile = cProfile.Profile()
            _, out["evaluate_again_seconds"] = _timed(profile.runcall, post.evaluate, s.test)
            top = sorted(pstats.Stats(profile).stats.items(), key=lambda kv: -kv[1][3])[:25]  # by cumulative time
            out["evaluate_again_profile"] = [f"{fn[2]} ({Path(fn[0]).name}:{fn[1]}) {st[3]:.3f}s cum, {st[2]:.3f}s own"
                                             for fn, st in top]
            emit(out)
    if args.save:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.nc"
            _, out["save_seconds"] = _timed(bayesmf.save, post, path)
            out["file_mb"] = path.stat().st_size / 2**20
            _, out["load_seconds"] = _timed(bayesmf.load, path)
            emit(out)
    if args.map:  # the tuned MAP against a 250-sweep Gibbs fit (compile + 250 sweeps at the rate above)
        del post
        out["gibbs_250_seconds"] = out["compile_seconds"] + 250 * out["seconds_per_sweep"]
        if args.gibbs_wall:
            out["gibbs_250_wall_seconds"] = _gibbs_wall(jax.random.PRNGKey(args.seed), s.train, args.rank,
                                                        dtype=args.dtype)
            emit(out)
        map_post, out["map_fit_seconds"] = _timed(bayesmf.BayesMF(args.rank, "map", progress_bar=False).fit,
                                                  jax.random.PRNGKey(args.seed), s.train)
        out.update(_map_parts(map_post))
        out["map_rmse"] = _summary(map_post.evaluate(s.test))["rmse"]
        if args.map_zoom:
            del map_post
            emit(out)
            out.update(_map_zoom_peer(jax.random.PRNGKey(args.seed), s.train, args.rank, s.test))
    out.update(_device())
    return out


def _last_json(text: str) -> dict:
    for line in reversed((text or "").strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return {}


def fast_pairs(seed: int, num_users: int, num_items: int, num_ratings: int, min_per_user: int):
    """Timing-only data on the device, in seconds even at 100M ratings: power-law
    activity and popularity as in :func:`bayesmf.synthetic.sample_pairs`, but
    movies drawn with replacement and repeats dropped (heavy users end with
    fewer ratings than drawn: ``nnz`` is reported), ratings from a rank-8
    truth rounded to stars. (:func:`bayesmf.synthetic.movielens_like`
    took 199 s at the Netflix shape on the loaded 2-core CPU.)

    Returns
    -------
    ModelData
    """
    import jax
    import jax.numpy as jnp

    from bayesmf.model import make_model_data

    rng = np.random.default_rng(seed)
    p_user = rng.permutation(np.arange(1, num_users + 1) ** -0.8)
    p_item = rng.permutation(np.arange(1, num_items + 1) ** -0.9)
    counts = min_per_user + rng.multinomial(num_ratings - min_per_user * num_users, p_user / p_user.sum())
    users = np.repeat(np.arange(num_users, dtype=np.int32), counts)
    key_items, key_u, key_v, key_noise = jax.random.split(jax.random.PRNGKey(seed), 4)
    items = jax.random.choice(key_items, num_items, (num_ratings,), p=jnp.asarray(p_item / p_item.sum()))
    truth_u = 0.5 * jax.random.normal(key_u, (num_users, TRUTH_RANK))
    truth_v = 0.5 * jax.random.normal(key_v, (num_items, TRUTH_RANK))
    # Distinct pairs (sorted on the device): a repeated pair is no MovieLens
    # rating, and the dense layout would count it once in the Gram, twice in the rhs.
    users_d = jnp.asarray(users)
    order = jnp.lexsort((items, users_d))
    users_d, items = users_d[order], items[order]
    keep = np.asarray(jnp.concatenate([jnp.ones(1, bool), (users_d[1:] != users_d[:-1]) | (items[1:] != items[:-1])]))
    mean = 3.5 + jnp.sum(truth_u[users_d] * truth_v[items], axis=1)
    stars = jnp.clip(jnp.round(mean + NOISE_SD * jax.random.normal(key_noise, (num_ratings,))), 1, 5)
    return make_model_data(np.asarray(users_d)[keep], np.asarray(items, np.int32)[keep], np.asarray(stars)[keep],
                           num_users, num_items)


def child_engine(args) -> dict:
    """The Gibbs engine alone on :func:`fast_pairs` data (no split, no evaluation)."""
    import jax

    if args.precision != "default":
        jax.config.update("jax_default_matmul_precision", args.precision)

    from bayesmf.engines import gibbs
    from bayesmf.model import ModelConfig
    from bayesmf.synthetic import SHAPES

    shape = dict(TINY_SHAPE) if args.tiny else SHAPES[args.shape]._asdict()
    out = dict(shape=args.shape, rank=args.rank, dtype=args.dtype, precision=args.precision, warmup=args.warmup,
               sweeps=args.sweeps, data="fast_pairs", layout_option=args.layout, **shape)
    with jax.enable_x64(args.dtype == "float64"):
        data, out["generation_seconds"] = _timed(fast_pairs, args.seed, **shape)
        out["nnz"] = data.nnz
        if args.dtype == "float64":
            data = data._replace(**{k: getattr(data, k).astype(np.float64) for k in
                                    ("rating", "global_mean", "empirical_offsets", "empirical_offset_precision")})
        config = ModelConfig(rank=args.rank)
        options = {} if args.layout == "auto" else dict(layout=args.layout)
        if args.chunk_fraction:
            from bayesmf.memory import device_limit

            limit = device_limit() or 2**30  # (the CPU reports none)
            options["chunk_bytes"] = out["chunk_bytes"] = int(limit * args.chunk_fraction)
        if hasattr(gibbs, "memory_plan"):  # (a baseline run of an older package has none)
            plan = gibbs.memory_plan(data, config, num_samples=args.sweeps, keep_draws=not args.no_keep, **options)
            out.update(model_device_mb=plan.device_bytes / 2**20, model_host_mb=plan.host_bytes / 2**20)
        emit(out)
        result, out["fit_seconds"] = _timed(gibbs.sample, jax.random.PRNGKey(args.seed), data, config,
                                            num_samples=args.sweeps, num_warmup=args.warmup,
                                            keep_draws=not args.no_keep, progress_bar=args.progress, **options)
    out["compile_seconds"] = result.timing["compile_seconds"]
    out["seconds_per_sweep"] = result.timing["seconds_per_sample"]
    out["train_rmse_last"] = float(np.asarray(result.stats["train_rmse"])[0, -1])
    out["layout"] = result.info["layout"]
    try:  # segments hold every row's statistics at once up to this, in blocks of rows beyond (an older package: none)
        from bayesmf.layout_plan import default_stats_bytes

        out["stats_budget_mb"] = default_stats_bytes() / 2**20
    except ImportError:
        pass
    out.update(_device())
    return out


def child_step(args) -> dict:
    """One Gibbs sweep compiled alone (``gibbs.step`` under ``jit``) against
    the driver's sweep with and without kept draws, on :func:`fast_pairs` data."""
    import jax

    from bayesmf.engines import gibbs
    from bayesmf.memory import compiler_options
    from bayesmf.model import ModelConfig
    from bayesmf.synthetic import SHAPES

    shape = dict(TINY_SHAPE) if args.tiny else SHAPES[args.shape]._asdict()
    out = dict(shape=args.shape, rank=args.rank, layout_option=args.layout, **shape)
    data, out["generation_seconds"] = _timed(fast_pairs, args.seed, **shape)
    config = ModelConfig(rank=args.rank)
    ctx, out["layout_seconds"] = _timed(gibbs.build_context, data, args.layout, args.rank, None, config)
    out["layout"] = type(ctx.user_layout).__name__
    key = jax.random.PRNGKey(0)
    state = gibbs.init(key, data, config)
    start = time.perf_counter()
    step = jax.jit(lambda k, s, c: gibbs.step(k, s, c, config)).lower(key, state, ctx).compile(
        compiler_options=compiler_options() or None)
    out["step_compile_seconds"] = time.perf_counter() - start
    state, _ = jax.block_until_ready(step(key, state, ctx))
    start = time.perf_counter()
    for i in range(5):
        state, _ = step(jax.random.fold_in(key, i), state, ctx)
    jax.block_until_ready(state)
    out["step_seconds"] = (time.perf_counter() - start) / 5
    emit(out)
    for keep in (False, True):
        result = gibbs.sample(key, data, config, num_samples=10, num_warmup=2, keep_draws=keep, progress_bar=False,
                              context=ctx, layout=args.layout)
        out[f"driver_keep_{keep}_seconds_per_sweep"] = result.timing["seconds_per_sample"]
        out[f"driver_keep_{keep}_compile_seconds"] = result.timing["compile_seconds"]
        emit(out)
    out.update(_device())
    return out


def child_parts(args) -> dict:
    """Where a sweep's time goes, per layout: each side's statistics alone
    (``map_rows`` handing back the rhs) and with the row draw (Cholesky and
    two triangular solves), on :func:`fast_pairs` data."""
    import jax
    import jax.numpy as jnp

    from bayesmf.conjugate import row_draw_from
    from bayesmf.layout import build_layout, map_rows
    from bayesmf.synthetic import SHAPES

    shape = dict(TINY_SHAPE) if args.tiny else SHAPES[args.shape]._asdict()
    out = dict(shape=args.shape, rank=args.rank, **shape)
    data, out["generation_seconds"] = _timed(fast_pairs, args.seed, **shape)
    out["nnz"] = data.nnz
    emit(out)
    d = args.rank
    u, v = np.asarray(data.user_index), np.asarray(data.item_index)
    for kind in args.layouts.split(","):
        for side, rows, cols, n_rows, n_cols, width in (("users", u, v, data.num_users, data.num_items, d),
                                                        ("items", v, u, data.num_items, data.num_users, d + 1)):
            layout, out[f"{kind}_{side}_build_seconds"] = _timed(build_layout, rows, cols, n_rows, n_cols, kind,
                                                                width=width)
            design = 0.3 * jax.random.normal(jax.random.PRNGKey(1), (n_cols, width))
            z = jax.random.normal(jax.random.PRNGKey(2), (n_rows, width))
            prior = jnp.eye(width)
            mean = jnp.zeros(width)
            fns = dict(stats=lambda g, h, z: h,
                       draw=lambda g, h, z: row_draw_from(z, prior, mean, g, h, jnp.asarray(1.0)))
            for name, fn in fns.items():
                run = jax.jit(lambda lay, x, y, zz, fn=fn: map_rows(lay, x, y, fn, (zz,)))
                start = time.perf_counter()
                compiled = run.lower(layout, design, data.rating, z).compile()
                out[f"{kind}_{side}_{name}_compile_seconds"] = time.perf_counter() - start
                jax.block_until_ready(compiled(layout, design, data.rating, z))
                start = time.perf_counter()
                for _ in range(3):
                    jax.block_until_ready(compiled(layout, design, data.rating, z))
                out[f"{kind}_{side}_{name}_seconds"] = (time.perf_counter() - start) / 3
            del layout
            emit(out)
    out.update(_device())
    return out


def child_linalg(args) -> dict:
    """The row update's kernels alone at rank ``--rank``: batched Gram
    (matmul), Cholesky and the two triangular solves, per row."""
    import jax
    import jax.numpy as jnp

    d, out = args.rank, dict(rank=args.rank)
    for n, width in ((8, 16), (32, 16)) if args.tiny else ((256, 128), (2048, 128)):
        key = jax.random.PRNGKey(n)
        z = jax.random.normal(key, (n, width, d + 1))
        gram = jax.jit(lambda z: jnp.matmul(jnp.swapaxes(z, -1, -2), z))
        p = gram(z)[:, :d, :d] + width * jnp.eye(d)
        b = jnp.ones((n, d, 1))
        chol = jax.jit(jnp.linalg.cholesky)
        c = chol(p)
        solve = jax.jit(lambda c, b: jax.scipy.linalg.solve_triangular(
            c, jax.scipy.linalg.solve_triangular(c, b, lower=True), lower=True, trans="T"))
        for name, fn, fargs in (("gram", gram, (z,)), ("cholesky", chol, (p,)), ("solves", solve, (c, b))):
            jax.block_until_ready(fn(*fargs))
            start = time.perf_counter()
            for _ in range(3):
                jax.block_until_ready(fn(*fargs))
            out[f"{name}_ms_per_row_n{n}"] = (time.perf_counter() - start) / 3 / n * 1e3
        emit(out)
    out.update(_device())
    return out


def run_child(name: str, child_args: list, timeout: float, args, env: dict | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *child_args, "--seed", str(args.seed)]
    if args.data:
        cmd += ["--data", str(args.data)]
    if args.tiny:
        cmd += ["--tiny"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env=None if env is None else {**os.environ, **env})
    except subprocess.TimeoutExpired as exc:
        text = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return dict(_last_json(text), error=f"watchdog: exceeded {timeout:.0f} s", stderr_tail=err[-600:])
    out = _last_json(proc.stdout)
    out["wall_seconds"] = time.perf_counter() - start
    if proc.returncode != 0:
        out["error"] = proc.stderr.strip()[-1500:] or f"exit code {proc.returncode}"
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("BAYESMF_DATA"), help="folder holding ml-100k/")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "gpu_check.json")
    parser.add_argument("--only", help="comma-separated step names of the plan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a few thousand ratings per step (tests)")
    parser.add_argument("--baseline", help="PYTHONPATH of an older package to run the unbounded-chunk step against")
    parser.add_argument("--child", choices=("paths", "scale", "engine", "linalg", "parts", "step"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--layout", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--layouts", default="segment,bucket", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--map", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plan", choices=tuple(PLANS), default="first",
                        help="the steps to run: the first run's plan, or a later run's (see the JSON's runs)")
    parser.add_argument("--shape", default="ml-10m", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--sweeps", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--no-keep", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--evaluate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--evaluate-twice", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--evaluate-chunk-cells", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk-fraction", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gibbs-wall", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--map-zoom", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        emit(dict(paths=child_paths, scale=child_scale, engine=child_engine, linalg=child_linalg,
                  parts=child_parts, step=child_step)[args.child](args))
        return
    if not args.tiny and not args.data:
        parser.error("--data (or BAYESMF_DATA) must name the folder holding ml-100k/")
    plan = [step for steps in PLANS.values() for step in steps]
    if args.baseline:  # the same sweep by an older package (its own layout; it takes no chunk option)
        plan = plan + [("ml-10m-d32-baseline", ["engine", "--shape", "ml-10m", "--rank", "32", "--warmup", "2",
                                                "--sweeps", "10"], 45, {"PYTHONPATH": args.baseline})]
    steps = PLANS[args.plan]
    if args.only:  # (a name in two plans runs once)
        steps = list({p[0]: p for p in plan if p[0] in args.only.split(",")}.values())
    import scale  # the machine and version records of the scale benchmark

    result = dict(command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]), machine=scale.machine(),
                  versions=scale.package_versions(), steps={})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, child_args, timeout, *env in steps:
        print(f"[{name}] {' '.join(child_args)}", flush=True)
        result["steps"][name] = run_child(name, child_args, timeout * (0.5 if args.tiny else 1), args, *env)
        print(json.dumps(result["steps"][name])[:600], flush=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
