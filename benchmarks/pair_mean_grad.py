"""The gradient of ``pair_mean``: which form, at which rank and size.

Two questions, one per mode.

Default mode -- milliseconds of ``pair_mean`` and its gradient on the ml-100k
u1 training pairs, by rank: from which rank is the gradient of ``<L_u, R_v> +
m_v`` over the 80k training pairs cheaper through a dense user x movie matrix
(scatter nnz scalars, two GEMMs) than through the row gathers' transpose (a
scatter-add of nnz x D values), and where do the ratings' segments stand
(``bayesmf.model.with_pair_layouts``)? It set
``bayesmf.model.DENSE_GRAD_MIN_RANK``. Each form is timed inside one compiled
loop of 30 calls (a loop reuses its buffers; separate calls of a program with
outputs of hundreds of MB pay page faults for each).

``--loop`` -- milliseconds per L-BFGS iteration of the MAP objective (the
engine's compiled loop, ``bayesmf.engines.map``), through the scatter-adds and
through the pair layouts, on synthetic ratings of a shape
(``bayesmf.synthetic.SHAPES``; ``--shape``), by rank: it sets
``bayesmf.model.SEGMENT_GRAD_MIN_RANK``, ``bayesmf.modeldata.PAIR_SEGMENT_WIDTH``
(``--segment-widths``) and ``PAIR_BLOCK_BYTES`` (``--block-bytes``). Each
measurement is a fresh process (its own compile) that runs a one-iteration fit
first, then times ``--iterations`` iterations from the same random start at
factor ratio 30 (``tol = ftol = 0``: exactly that many); the variants
alternate within each of ``--repeats`` rounds, so that a change in the
machine's load hits all of them alike.

Run::

    python benchmarks/pair_mean_grad.py 10 20 30 40 50 100     # u1, ranks; ~1 min
    python benchmarks/pair_mean_grad.py --loop --shape ml-1m --ranks 10 16 32 --iterations 150   # ~6 min

    python benchmarks/pair_mean_grad.py --loop --shape ml-10m --ranks 32 --iterations 20 --repeats 2 \
        --block-bytes 1048576 1099511627776    # blocks of ~1 MB against none; ~15 min
    python benchmarks/pair_mean_grad.py --loop --shape ml-1m --ranks 32 --segment-widths 16 32 64 128 \
        --label ml-1m/widths    # ~3 min

Data: ``BAYESMF_DATA`` or ``../shared/data`` (default mode). ``--loop`` writes
``results/benchmarks/pair_mean_grad.json`` (``--out``), one key per shape (or
``--label``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ms_in_loop(fn, args, n=30) -> float:
    """Milliseconds per call of ``fn(*args)`` inside one compiled loop of ``n`` calls."""
    import jax
    import jax.numpy as jnp

    def body(_, acc):
        out = fn(*args[:-1], args[-1] + acc * 1e-9)
        return acc + sum(jnp.sum(x[:1]) for x in jax.tree_util.tree_leaves(out))

    run = jax.jit(lambda: jax.lax.fori_loop(0, n, body, jnp.zeros((), args[-1].dtype)))
    jax.block_until_ready(run())
    start = time.perf_counter()
    jax.block_until_ready(run())
    return (time.perf_counter() - start) / n * 1e3


def by_rank(ranks) -> None:
    import jax
    import jax.numpy as jnp

    from bayesmf import model, split
    from bayesmf.model import model_data_from_ratings, with_pair_layouts

    data_dir = Path(os.environ.get("BAYESMF_DATA", str(ROOT.parent / "shared" / "data")))
    d = model_data_from_ratings(split.make_split(data_dir / "ml-100k", "u1").train)
    u, v = d.user_index, d.item_index
    offsets = jnp.zeros(d.num_items)
    g = jax.random.normal(jax.random.PRNGKey(0), (d.nnz,))

    def vjp(fn):
        # The indices are arguments, as in the engines (data is never a constant of a program).
        return lambda L, R, g: jax.vjp(lambda L, R: fn(L, R, offsets, u, v), L, R)[1](g)

    for rank in ranks:
        layouts = with_pair_layouts(d, rank).pair_layouts
        L = jax.random.normal(jax.random.PRNGKey(1), (d.num_users, rank))
        R = jax.random.normal(jax.random.PRNGKey(2), (d.num_items, rank))
        gathers = ms_in_loop(vjp(model._pair_mean), (L, R, g))
        dense = ms_in_loop(vjp(model._pair_mean_dense_grad), (L, R, g))
        segments = ms_in_loop(vjp(lambda *a: model.pair_mean(*a, layouts=layouts)), (L, R, g))
        value = ms_in_loop(lambda L, R: model._pair_mean(L, R, offsets, u, v), (L, R))
        print(f"rank {rank:4d}  value {value:6.2f} ms  gradient: gathers {gathers:6.2f} ms, dense {dense:6.2f} ms, "
              f"segments {segments:6.2f} ms", flush=True)


def loop_child(shape: str, rank: int, iterations: int, path: str, width: int | None, block_bytes: int | None) -> dict:
    """One measurement of ``--loop`` (run in a fresh process)."""
    import jax

    from bayesmf import modeldata
    from bayesmf.engines import map as map_engine
    from bayesmf.model import FixedPriors, ModelConfig, model_data_from_ratings
    from bayesmf.synthetic import SHAPES, movielens_like

    if width is not None:
        modeldata.PAIR_SEGMENT_WIDTH = width
    if block_bytes is not None:
        modeldata.PAIR_BLOCK_BYTES = block_bytes
    if path == "scatter":
        map_engine.SEGMENT_GRAD_MIN_RANK = 10**9  # the engine attaches no layouts
    elif rank < map_engine.SEGMENT_GRAD_MIN_RANK:
        map_engine.SEGMENT_GRAD_MIN_RANK = rank
    data = model_data_from_ratings(movielens_like(0, **{**SHAPES[shape]._asdict(), "rank": 8}).ratings)
    config = ModelConfig(rank=rank, priors="fixed", fixed=FixedPriors(30.0, 30.0, 3.0, 1.0, 2.0))
    latent = map_engine.init_latent(jax.random.PRNGKey(0), data, config)
    start = time.perf_counter()
    solver = map_engine.make_solver(data, config, max_iters=iterations, tol=1e30, ftol=0.0)  # one iteration
    setup = time.perf_counter() - start
    assert (solver.ctx.data.pair_layouts is None) == (path == "scatter")
    map_engine.solve(solver, latent, config.fixed)
    start = time.perf_counter()
    _, info = map_engine.solve(solver._replace(tol=0.0), latent, config.fixed)
    seconds = time.perf_counter() - start
    layouts = solver.ctx.data.pair_layouts
    blocks = None if layouts is None else [layouts.users.num_rows.shape[0] // data.num_users,
                                          layouts.items.num_rows.shape[0] // data.num_items]
    return dict(shape=shape, rank=rank, path=path, segment_width=None if layouts is None else modeldata.PAIR_SEGMENT_WIDTH,
                block_bytes=None if layouts is None else modeldata.PAIR_BLOCK_BYTES, blocks=blocks,
                iterations=info["iterations"], ms_per_iteration=seconds / info["iterations"] * 1e3,
                final_value=info["final_value"], layout_seconds=setup)


def loop(args) -> None:
    variants = [("scatter", None, None)]
    for width in args.segment_widths or [None]:
        for block in args.block_bytes or [None]:
            variants.append(("segments", width, block))
    rows = []
    for round_ in range(args.repeats):
        for rank in args.ranks:
            for path, width, block in variants:
                spec = json.dumps([args.shape, rank, args.iterations, path, width, block])
                out = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True,
                                     timeout=args.timeout, cwd=ROOT)
                if out.returncode:
                    raise RuntimeError(f"child {spec} failed:\n{out.stderr[-3000:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row.update(round=round_, uptime=subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
                rows.append(row)
                print(f"{args.shape} rank {rank:3d} {path:8s} width {row['segment_width']} blocks {row['blocks']}: "
                      f"{row['ms_per_iteration']:7.1f} ms/iteration", flush=True)
    path = Path(args.out)
    results = json.loads(path.read_text()) if path.exists() else {}
    results["question"] = ("ms per L-BFGS iteration of the MAP objective through the scatter-adds and through the "
                           "pair layouts (benchmarks/pair_mean_grad.py --loop)")
    results[args.label or args.shape] = dict(cpus=os.cpu_count(), iterations=args.iterations, rows=rows)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ranks_u1", nargs="*", type=int, help="ranks of the default (u1) mode")
    parser.add_argument("--loop", action="store_true")
    parser.add_argument("--shape", default="ml-1m")
    parser.add_argument("--ranks", nargs="+", type=int, default=[10, 16, 32])
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--segment-widths", nargs="+", type=int)
    parser.add_argument("--block-bytes", nargs="+", type=int)
    parser.add_argument("--label", help="key of the results (default: the shape)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "pair_mean_grad.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(loop_child(*json.loads(args.child))))
    elif args.loop:
        loop(args)
    else:
        by_rank(args.ranks_u1 or [10, 20, 30, 40, 50, 100])


if __name__ == "__main__":
    main()
