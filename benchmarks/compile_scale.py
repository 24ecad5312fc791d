"""Compile time of a Gibbs sweep at every shape and rank of the scale targets, by layout.

Question: does a sweep compile in at most 3 s at ML-10M, ML-25M and Netflix
shape (rank 32) and at ML-10M shape, rank 512 (issue 18, item 5), with the
layout ``"auto"`` picks and with the degree buckets? Sweeps at Netflix shape
or rank 512 take minutes to hours on 2 CPU cores, but compiling one does
not: this compiles ``gibbs.step`` for the data's layouts ahead of time
(``jit(...).lower(...).compile()`` with the driver's compiler options, as
the driver compiles its chunks; the driver's program adds the draws' moments
to the same sweep) and never runs it, on whatever backend JAX finds.

Data: :func:`bayesmf.synthetic.movielens_like` at the shape's sizes (seed 0,
rank-8 truth), as ``benchmarks/scale.py``. Each shape and rank runs in a
child process under a watchdog (``--timeout``), which builds the layouts and
compiles once per ``--layouts`` entry, in turn.

Run::

    python benchmarks/compile_scale.py                       # ml-10m:32, ml-25m:32, netflix:32, ml-10m:512 (~10 min)
    python benchmarks/compile_scale.py --cases ml-10m:32 --layouts auto
    python benchmarks/compile_scale.py --tiny --out /tmp/compile_scale.json    # seconds (tests)

Writes ``results/benchmarks/compile_scale.json`` (a run replaces the cases it
ran on its backend and keeps the others).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

CASES = "ml-10m:32,ml-25m:32,netflix:32,ml-10m:512"
TINY_SHAPE = dict(num_users=150, num_items=90, num_ratings=4_000, min_per_user=5)


def describe(layout) -> str:
    """A layout's kind and how many loop bodies it compiles: blocks of
    segments, or groups of buckets (each with its own row update)."""
    name = type(layout).__name__
    if hasattr(layout, "block_rows"):
        return f"{name}, {layout.rows.shape[0]} block(s)"
    if hasattr(layout, "buckets"):
        return f"{name}, {len(layout.buckets)} group(s), {'two stages' if layout.stage_index is not None else 'one'}"
    return name


def child(args) -> dict:
    import jax

    from bayesmf import synthetic
    from bayesmf.engines import gibbs
    from bayesmf.memory import compiler_options
    from bayesmf.model import ModelConfig
    from bayesmf.modeldata import model_data_from_ratings

    shape = TINY_SHAPE if args.tiny else synthetic.SHAPES[args.shape]._asdict()
    start = time.perf_counter()
    data = model_data_from_ratings(synthetic.movielens_like(0, rank=8, **shape).ratings)
    out = dict(shape=args.shape, rank=args.rank, nnz=data.nnz, generation_seconds=time.perf_counter() - start,
               backend=jax.default_backend(), layouts={})
    config = ModelConfig(rank=args.rank)
    key = jax.random.PRNGKey(0)
    state = gibbs.init(key, data, config)
    for layout in args.layouts.split(","):
        start = time.perf_counter()
        ctx = gibbs.build_context(data, layout, args.rank, None, config)
        row = dict(layout_seconds=time.perf_counter() - start, users=describe(ctx.user_layout),
                   items=describe(ctx.item_layout))
        start = time.perf_counter()
        lowered = jax.jit(lambda k, s, c: gibbs.step(k, s, c, config)).lower(key, state, ctx)
        row["lower_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        lowered.compile(compiler_options=compiler_options() or None)
        row["compile_seconds"] = time.perf_counter() - start
        out["layouts"][layout] = row
        del ctx, lowered
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=CASES, help="comma-separated shape:rank (shapes of bayesmf.synthetic.SHAPES)")
    parser.add_argument("--layouts", default="auto,bucket", help="comma-separated layout options, compiled in turn")
    parser.add_argument("--timeout", type=float, default=900.0, help="watchdog per case, seconds")
    parser.add_argument("--tiny", action="store_true", help="a few thousand ratings per case (tests)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "compile_scale.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    import scale  # the machine and version records of the scale benchmark

    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result.update(command=" ".join(["compile_scale.py"] + (argv if argv is not None else sys.argv[1:])),
                  machine=scale.machine(), versions=scale.package_versions())
    cases = result.setdefault("cases", {})
    for case in args.cases.split(","):
        shape, rank = case.split(":")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--shape", shape, "--rank", rank,
               "--layouts", args.layouts] + (["--tiny"] if args.tiny else [])
        uptime = scale.uptime()
        row = scale.run_json_child(cmd, args.timeout, case)
        row["uptime"] = uptime
        cases[f"{case}:{row.get('backend', 'unknown')}"] = row
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
