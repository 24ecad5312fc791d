"""Segments against buckets (and the CPU chunk size), alternating in one run.

Question: does the ``"segment"`` layout (every row's ratings in segments of
one width per side, one loop body for the statistics whatever the degrees)
compile faster than the degree-bucketed one, and at what cost in seconds
per sweep and peak memory? And which CPU chunk size (``chunk_bytes``) is
fastest with segments? (Issue 18, item 5: compile <= 3 s, 2 s per sweep at
ML-10M shape on 2 cores.)

Data: :func:`bayesmf.synthetic.movielens_like` at the shape's sizes (seed 0,
rank-8 truth, as ``benchmarks/scale.py``). Each configuration runs in a
fresh child process (so compile times are cold and each peak ``VmHWM`` is
the configuration's own): ``gibbs.sample`` with ``--sweeps`` kept draws
after 2 warm-up sweeps, ``keep_draws=False``. Configurations alternate over
``--repeats`` rounds, since the shared machine drifts.

Run::

    python benchmarks/segment_layout.py --shape ml-1m --repeats 3
    python benchmarks/segment_layout.py --shape ml-10m --repeats 2 --sweeps 6
    python benchmarks/segment_layout.py --tiny --out /tmp/segment_layout.json      # seconds (tests)

Writes ``results/benchmarks/segment_layout_<shape>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

# (name, layout, chunk MB): buckets and segments at the CPU default (4 MB),
# and both at the previous default (16 MB).
CONFIGS = [("segment-4MB", "segment", 4), ("bucket-4MB", "bucket", 4), ("segment-16MB", "segment", 16),
           ("bucket-16MB", "bucket", 16)]
TINY_SHAPE = dict(num_users=150, num_items=90, num_ratings=4_000, min_per_user=5)


def child(args) -> dict:
    import jax
    import numpy as np

    import scale  # its peak-RSS reader

    from bayesmf import synthetic
    from bayesmf.engines import gibbs
    from bayesmf.model import ModelConfig
    from bayesmf.modeldata import model_data_from_ratings

    shape = TINY_SHAPE if args.tiny else synthetic.SHAPES[args.shape]._asdict()
    data = model_data_from_ratings(synthetic.movielens_like(0, rank=8, **shape).ratings)
    start = time.perf_counter()
    ctx = gibbs.build_context(data, args.layout, args.rank, args.chunk_mb * 2**20)
    out = dict(layout=type(ctx.user_layout).__name__, layout_seconds=time.perf_counter() - start)
    result = gibbs.sample(jax.random.PRNGKey(0), data, ModelConfig(rank=args.rank), num_samples=args.sweeps,
                          num_warmup=2, keep_draws=False, progress_bar=False, layout=args.layout, context=ctx)
    out.update(compile_seconds=result.timing["compile_seconds"], seconds_per_sweep=result.timing["seconds_per_sample"],
               train_rmse_last=float(np.asarray(result.stats["train_rmse"])[0, -1]),
               peak_rss_mb=scale.peak_rss_mb())
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="ml-1m", help="a name of bayesmf.synthetic.SHAPES")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--sweeps", type=int, default=10, help="kept sweeps per child (after 2 warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the configurations")
    parser.add_argument("--tiny", action="store_true", help="a few thousand ratings (tests)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=900.0, help="watchdog per child, seconds")
    parser.add_argument("--configs", default=",".join(c[0] for c in CONFIGS), help="comma-separated subset")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--layout", help=argparse.SUPPRESS)
    parser.add_argument("--chunk-mb", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    import scale  # the machine and version records of the scale benchmark

    out_path = args.out or ROOT / "results" / "benchmarks" / f"segment_layout_{args.shape}.json"
    result = dict(command=" ".join(["segment_layout.py"] + (argv if argv is not None else sys.argv[1:])),
                  shape=args.shape, rank=args.rank, sweeps=args.sweeps, machine=scale.machine(),
                  versions=scale.package_versions(), runs=[])
    for round_ in range(args.repeats):
        for name, layout, chunk_mb in [c for c in CONFIGS if c[0] in args.configs.split(",")]:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--shape", args.shape, "--rank",
                   str(args.rank), "--sweeps", str(args.sweeps), "--layout", layout, "--chunk-mb", str(chunk_mb)]
            if args.tiny:
                cmd.append("--tiny")
            uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
                row = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else dict(
                    error=proc.stderr.strip()[-1000:])
            except subprocess.TimeoutExpired:
                row = dict(error=f"watchdog: exceeded {args.timeout:.0f} s")
            row.update(config=name, round=round_, uptime=uptime)
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(result, indent=1) + "\n")
    summary = {}
    for name, *_ in CONFIGS:
        rows = [r for r in result["runs"] if r["config"] == name and "error" not in r]
        if rows:
            summary[name] = {k: sorted(r[k] for r in rows) for k in ("compile_seconds", "seconds_per_sweep",
                                                                      "peak_rss_mb")}
    result["summary"] = summary
    out_path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
