"""Scale benchmark: the Gibbs fit, its evaluation and memory, and myFM, at MovieLens and Netflix shapes.

Question: how do seconds per sweep, compile time, peak memory and evaluation
time grow from ML-1M to Netflix shape, and does the fit recover the truth
(test RMSE against the best possible, 90% coverage)? (Issue 18, item 8.)

Data: synthetic, from :func:`bayesmf.synthetic.movielens_like` at the sizes of
:data:`bayesmf.synthetic.SHAPES` (power-law activity and popularity, at least
20 ratings per user at the MovieLens shapes), ratings drawn from a rank-8
model with noise sd 0.9, rounded and clipped to 1..5 stars; a uniformly random
10% of them is the test set (``split.random_holdout``). The RMSE floor is that
of the truth's expected rating (the best predictor in RMSE); the RMSE of the
true means is given as well.

Per shape and rank, each step runs in its own child process (so each peak
resident set is that step's own: ``VmHWM`` of ``/proc/self/status``, which
unlike ``ru_maxrss`` is not inherited from the parent across exec), under a
watchdog (``--timeout`` per child):

* ``generate``: draws the data, splits it, scores the floors, writes an .npz;
  ``generation_seconds`` is ``movielens_like`` alone.
* ``gibbs``: ``BayesMF(rank, "gibbs", num_samples=--sweeps,
  num_warmup=--warmup)`` fit (``posterior.timing``: compile seconds, seconds
  per sweep), then ``posterior.evaluate`` on the test set (seconds, RMSE,
  90% coverage), peak host RSS after the fit and after evaluation, and peak
  device memory where the backend reports it.
* ``map`` (``--map``): the tuned ``BayesMF(rank, "map")``: fit seconds, RMSE.
* ``myfm`` (CPU, shapes up to ``--myfm-max-ratings``): myFM on the same
  training ratings, same rank, ``--warmup + --sweeps`` sweeps, through
  ``benchmarks/peers.run_myfm_synthetic`` (its own spawned child; its peak
  is ``ru_maxrss``, so at least this parent's resident set, which stays small:
  the parent never imports jax).

Run::

    python benchmarks/scale.py                                    # ml-1m, rank 32, 20 sweeps after 5 (~3 min on 2 cores)
    python benchmarks/scale.py --shapes ml-1m,ml-10m --map
    python benchmarks/scale.py --shapes ml-10m,ml-25m,netflix --no-myfm   # on a GPU machine
    python benchmarks/scale.py --tiny --out /tmp/scale.json       # seconds, for tests

Writes ``results/benchmarks/scale.json`` (entries keyed by shape, rank and
device; a run replaces its own keys and keeps the others, so CPU and GPU runs
share one file) and ``scale.md`` beside it, a table made from the JSON
(``--table-only`` remakes it without running anything).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

TRUTH_RANK = 8
NOISE_SD = 0.9
TEST_FRACTION = 0.1
# --tiny: a few hundred ratings, for the test suite.
TINY_SHAPE = dict(num_users=120, num_items=80, num_ratings=3_000, min_per_user=5)


# --------------------------------------------------------------------------- helpers (all processes)


def _status_mb(field: str) -> float | None:
    """A field of ``/proc/self/status`` in MB (``VmRSS``, ``VmHWM``); None where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set in MB (VmHWM; ru_maxrss where /proc is missing)."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float | None:
    """This process's resident set now in MB (VmRSS; None where /proc is missing)."""
    return _status_mb("VmRSS")


def reset_peak_rss() -> bool:
    """Reset :func:`peak_rss_mb` to the current resident set (Linux: ``5`` to ``/proc/self/clear_refs``);
    False where the kernel does not offer it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def uptime() -> dict:
    out = dict(load_average=list(os.getloadavg()))
    try:
        out["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def machine() -> dict:
    out = dict(platform=platform.platform(), cpus=os.cpu_count(), python=platform.python_version())
    try:
        with open("/proc/cpuinfo") as f:
            out["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
        with open("/proc/meminfo") as f:
            out["mem_total_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return out


def package_versions() -> dict:
    out = {}
    for name in ("bayesmf", "jax", "jaxlib", "numpyro", "numpy", "scipy", "pandas", "myfm"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def shape_of(name: str, tiny: bool) -> dict:
    from bayesmf.synthetic import SHAPES

    return dict(TINY_SHAPE) if tiny else SHAPES[name]._asdict()


# --------------------------------------------------------------------------- children


def child_generate(args) -> dict:
    from bayesmf import split
    from bayesmf.synthetic import movielens_like

    shape = shape_of(args.shape, args.tiny)
    start = time.perf_counter()
    sim = movielens_like(args.seed, rank=TRUTH_RANK, noise_sd=NOISE_SD, **shape)
    generation_seconds = time.perf_counter() - start
    start = time.perf_counter()
    s = split.random_holdout(sim.ratings, TEST_FRACTION, args.seed)
    split_seconds = time.perf_counter() - start
    full = sim.ratings
    test_users = full.user_vocab.index(s.test.user_ids)
    test_items = full.item_vocab.index(s.test.item_ids)
    y = np.asarray(s.test.rating, np.float64)
    floor = float(np.sqrt(np.mean((sim.expected_rating(test_users, test_items) - y) ** 2)))
    true_mean = float(np.sqrt(np.mean((sim.true_mean(test_users, test_items) - y) ** 2)))
    np.savez(
        args.path,
        train_users=np.asarray(s.train.user_ids), train_items=np.asarray(s.train.item_ids),
        train_ratings=np.asarray(s.train.rating, np.float32),
        test_users=np.asarray(s.test.user_ids), test_items=np.asarray(s.test.item_ids),
        test_ratings=np.asarray(s.test.rating, np.float32),
    )
    return dict(
        **shape, num_train=len(s.train), num_test=len(s.test), generation_seconds=generation_seconds,
        split_seconds=split_seconds, rmse_floor=floor, rmse_true_mean=true_mean, truth_rank=TRUTH_RANK,
        noise_sd=NOISE_SD, peak_rss_mb=peak_rss_mb(),
    )


def _load(path):
    from bayesmf.data import RatingScale, Ratings

    arrays = np.load(path)
    scale = RatingScale(1.0, 5.0, 1.0)
    train = Ratings.from_arrays(arrays["train_users"], arrays["train_items"], arrays["train_ratings"], scale=scale)
    test = Ratings.from_arrays(arrays["test_users"], arrays["test_items"], arrays["test_ratings"], scale=scale)
    return train, test


def _device() -> dict:
    import jax

    dev = jax.devices()[0]
    stats = None
    try:
        stats = dev.memory_stats()
    except Exception:  # noqa: BLE001 - CPU devices may not report memory
        pass
    peak = None if not stats else stats.get("peak_bytes_in_use")
    return dict(device=jax.default_backend(), device_kind=dev.device_kind,
                peak_device_memory_mb=None if peak is None else peak / 2**20)


def _scores(posterior, test) -> tuple[dict, float]:
    start = time.perf_counter()
    table = posterior.evaluate(test)
    seconds = time.perf_counter() - start
    row = table.loc[("all", "all")]
    return dict(rmse=float(row["rmse"]), coverage_90=float(row["coverage_90"]),
                num_cold_rows=int(table.attrs.get("num_cold_rows", 0))), seconds


def child_fit(args) -> dict:
    import jax

    import bayesmf

    train, test = _load(args.path)
    baseline = peak_rss_mb()
    if args.step == "gibbs":
        model = bayesmf.BayesMF(rank=args.rank, method="gibbs", num_samples=args.sweeps, num_warmup=args.warmup,
                                progress_bar=False)
    else:
        model = bayesmf.BayesMF(rank=args.rank, method="map", progress_bar=False)
    posterior = model.fit(jax.random.PRNGKey(args.seed), train)
    fit_rss = peak_rss_mb()
    model_mb = None
    if args.step == "gibbs":  # the memory model's estimate of the same fit, beside the measured peak
        from bayesmf.engines.gibbs import memory_plan
        from bayesmf.model import ModelConfig, model_data_from_ratings

        plan = memory_plan(model_data_from_ratings(train), ModelConfig(rank=args.rank), num_samples=args.sweeps)
        model_mb = dict(device=plan.device_bytes / 2**20, host=plan.host_bytes / 2**20)
    out = dict(timing={k: float(v) for k, v in posterior.timing.items() if isinstance(v, (int, float))})
    out["fit_seconds"] = out["timing"].get("fit_seconds")
    if args.step == "gibbs":
        out["compile_seconds"] = out["timing"].get("compile_seconds")
        out["seconds_per_sweep"] = out["timing"].get("seconds_per_sample")
    scores, eval_seconds = _scores(posterior, test)
    out.update(scores, evaluate_seconds=eval_seconds, baseline_rss_mb=baseline, peak_rss_fit_mb=fit_rss, model_mb=model_mb,
               peak_rss_mb=peak_rss_mb(), **_device(), versions=package_versions())
    return out


def child_main(args) -> None:
    out = child_generate(args) if args.step == "generate" else child_fit(args)
    print(json.dumps(out), flush=True)


# --------------------------------------------------------------------------- parent


def run_json_child(cmd: list, timeout: float, label: str = "child") -> dict:
    """Run ``cmd`` (a benchmark's child process, ``label`` in messages) under a
    watchdog of ``timeout`` seconds; its last stdout line as JSON with
    ``wall_seconds``, or ``{"error": ...}`` (the watchdog, or the last lines of stderr)."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return dict(error=f"watchdog: {label} exceeded {timeout:.0f} s")
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:] if proc.stderr.strip() else [f"exit code {proc.returncode}"]
        return dict(error=" | ".join(tail), wall_seconds=wall)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_seconds"] = wall
    return out


def run_child(step: str, args, path: str, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--shape", args.current_shape,
           "--rank", str(args.current_rank), "--sweeps", str(args.sweeps), "--warmup", str(args.warmup),
           "--seed", str(args.seed), "--path", path] + (["--tiny"] if args.tiny else [])
    return run_json_child(cmd, timeout, step)


def run_myfm(path: str, rank: int, n_iter: int, seed: int, timeout: float) -> dict:
    import peers

    arrays = np.load(path)
    users = np.asarray(arrays["train_users"], np.int64)
    items = np.asarray(arrays["train_items"], np.int64)
    # external ids are 1..n: 0-based indices over the whole shape (test-only rows stay unobserved)
    num_users = int(max(users.max(), arrays["test_users"].max()))
    num_items = int(max(items.max(), arrays["test_items"].max()))
    try:
        return peers.run_myfm_synthetic(users - 1, items - 1, np.asarray(arrays["train_ratings"], np.float64),
                                        num_users, num_items, rank=rank, n_iter=n_iter, seed=seed, timeout=timeout)
    except (RuntimeError, TimeoutError) as exc:
        return dict(error=f"{type(exc).__name__}: {exc}")


def run_shape(shape: str, rank: int, args, tmp: str) -> dict:
    args.current_shape, args.current_rank = shape, rank
    path = os.path.join(tmp, f"{shape}.npz")
    entry = dict(shape=shape, rank=rank, sweeps=args.sweeps, warmup=args.warmup, seed=args.seed, start=uptime())
    print(f"[{shape} D={rank}] generate", flush=True)
    if not os.path.exists(path):
        args.generated[shape] = run_child("generate", args, path, args.timeout)
    entry["data"] = args.generated[shape]
    if "error" in entry["data"]:
        return entry
    print(f"[{shape} D={rank}] gibbs {args.sweeps} sweeps after {args.warmup}", flush=True)
    entry["gibbs"] = run_child("gibbs", args, path, args.timeout)
    entry["device"] = entry["gibbs"].get("device", "unknown")
    entry["device_kind"] = entry["gibbs"].get("device_kind")
    if args.map:
        print(f"[{shape} D={rank}] tuned MAP", flush=True)
        entry["map"] = run_child("map", args, path, args.timeout)
    if not args.no_myfm and entry["data"]["num_ratings"] <= args.myfm_max_ratings:
        print(f"[{shape} D={rank}] myFM {args.warmup + args.sweeps} sweeps", flush=True)
        entry["myfm"] = run_myfm(path, rank, args.warmup + args.sweeps, args.seed, args.timeout)
        g, m = entry["gibbs"], entry["myfm"]
        if "error" not in g and "error" not in m:
            entry["ratios"] = dict(seconds_per_sweep=g["seconds_per_sweep"] / m["seconds_per_sweep"],
                                   peak_rss=g["peak_rss_mb"] / m["peak_rss_mb"],
                                   peak_rss_fit=g["peak_rss_fit_mb"] / m["peak_rss_mb"])
    entry["end"] = uptime()
    return entry


def carry_map(previous: dict | None, entry: dict) -> dict:
    """A run without --map keeps the previous entry's MAP record, marked with that run's command and load."""
    if previous and "map" in previous and "map" not in entry:
        entry["map"] = dict(previous["map"], from_earlier_run=dict(command=previous.get("command"),
                                                                   start=previous.get("start")))
    return entry


def _fmt(value, digits=3):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 100 and digits else f"{value:,.0f}"
    return str(value)


def table(result: dict) -> str:
    lines = [
        "# Scale benchmark (`benchmarks/scale.py`)", "",
        "Synthetic ratings drawn from a rank-8 model (noise sd 0.9, 1..5 stars), random 90/10 split;",
        "Gibbs with the rank in the row. RMSE floor: the truth's expected rating on the test set.",
        "Peak RSS: the child process's VmHWM (fit and evaluation; `fit` = after the fit). myFM: same training",
        "ratings, rank and number of sweeps, one kept sample. Load: the 1-minute load average when the row started",
        "(2-core machines are shared: read timings with it). Each row's command, load and versions are in scale.json.",
        "",
        "| shape | D | sweeps (+warm-up) | device | gen s | s/sweep | compile s | peak RSS MB (fit) | eval s | RMSE | floor | cov90 | MAP s | MAP RMSE | myFM s/sweep | myFM RSS MB | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in result["entries"].values():
        d, g, mp, mf = entry.get("data", {}), entry.get("gibbs", {}), entry.get("map", {}), entry.get("myfm", {})
        device = entry.get("device", "")
        if entry.get("device_kind") and device != "cpu":
            device = f"{device} ({entry['device_kind']})"
        rss = f"{_fmt(g.get('peak_rss_mb'), 0)} ({_fmt(g.get('peak_rss_fit_mb'), 0)})" if "peak_rss_mb" in g else g.get("error", "")
        lines.append("| " + " | ".join([
            entry["shape"], str(entry["rank"]), f"{entry.get('sweeps')} (+{entry.get('warmup')})", device, _fmt(d.get("generation_seconds"), 1),
            _fmt(g.get("seconds_per_sweep")), _fmt(g.get("compile_seconds"), 1), rss, _fmt(g.get("evaluate_seconds"), 1),
            _fmt(g.get("rmse"), 4), _fmt(d.get("rmse_floor"), 4), _fmt(g.get("coverage_90")),
            (_fmt(mp.get("fit_seconds"), 1) if "error" not in mp else mp["error"][:40])
            + (" (an earlier run)" if "from_earlier_run" in mp else ""), _fmt(mp.get("rmse"), 4),
            _fmt(mf.get("seconds_per_sweep")) if "error" not in mf else mf["error"][:40], _fmt(mf.get("peak_rss_mb"), 0),
            _fmt(entry.get("start", {}).get("load_average", [None])[0], 1),
        ]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="ml-1m", help="comma-separated names of bayesmf.synthetic.SHAPES")
    parser.add_argument("--ranks", default="32", help="comma-separated ranks")
    parser.add_argument("--sweeps", type=int, default=20, help="kept Gibbs sweeps (num_samples)")
    parser.add_argument("--warmup", type=int, default=5, help="Gibbs warm-up sweeps (num_warmup)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--map", action="store_true", help="also time the tuned MAP")
    parser.add_argument("--no-myfm", action="store_true", help="skip myFM")
    parser.add_argument("--myfm-max-ratings", type=int, default=10_000_000,
                        help="run myFM up to this many ratings (default: ML-10M shape)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="watchdog: seconds per child process")
    parser.add_argument("--tiny", action="store_true", help="a few thousand ratings, seconds-long (tests)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "scale.json")
    parser.add_argument("--table-only", action="store_true", help="remake scale.md from the JSON")
    parser.add_argument("--child", choices=("generate", "gibbs", "map"), help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.step = args.child
        child_main(args)
        return None

    md = args.out.with_suffix(".md")
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result.setdefault("entries", {})
    if not args.table_only:
        args.generated = {}
        command = "python benchmarks/scale.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        shapes = args.shapes.split(",")
        ranks = [int(r) for r in args.ranks.split(",")]
        with tempfile.TemporaryDirectory() as tmp:
            for shape in shapes:
                for rank in ranks:
                    entry = run_shape(shape, rank, args, tmp)
                    entry.update(command=command, machine=machine(), versions=entry.get("gibbs", {}).pop(
                        "versions", package_versions()))
                    key = f"{'tiny' if args.tiny else shape}/D{rank}/{entry.get('device', 'unknown')}"
                    entry["shape"] = "tiny" if args.tiny else shape
                    result["entries"][key] = carry_map(result["entries"].get(key), entry)
                    print(json.dumps(entry, indent=1), flush=True)
                    result["description"] = __doc__.split("\n\n")[0]
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(result, indent=1) + "\n")
    md.write_text(table(result))
    print(f"wrote {args.out} and {md}")
    return result


if __name__ == "__main__":
    main()
