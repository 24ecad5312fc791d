"""Sharding benchmark: seconds per Gibbs sweep and bytes communicated against the number of devices.

Question: what does running the same Gibbs sweep sharded over N devices
(:mod:`bayesmf.engines.sharding`) cost, how many bytes do its collectives
move per sweep, and how evenly are the ratings spread over the shards?
(Issue 19, item 5.)

Data: synthetic, :func:`bayesmf.synthetic.movielens_like` at a shape of
:data:`bayesmf.synthetic.SHAPES` (default ``ml-10m``: 69,878 users, 10,677
movies, 10M ratings), rank ``--rank`` (default 32), bucketed layout.

Each device count runs in its own child process started with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (JAX fixes the count
when its backend starts) under a watchdog (``--timeout`` seconds). The child
compiles one sweep (:func:`bayesmf.engines.gibbs.step` under ``jax.jit`` with
the context placed by :func:`bayesmf.engines.sharding.shard_context`), reads
the collectives' bytes from the compiled program
(:func:`bayesmf.engines.sharding.collective_bytes`: the result size of each
collective, which for an all-reduce or all-gather is what every device ends
up holding; a ring moves about ``2 (N - 1) / N`` times that per device for an
all-reduce, ``(N - 1) / N`` for an all-gather), then times ``--sweeps`` sweeps
after one untimed sweep.

On a CPU the N "devices" share this machine's cores (2 here): the figures
measure the overhead of sharding, not a speed-up. On a machine with N GPUs the
same script measures the speed-up (``JAX_PLATFORMS`` and the devices are
whatever JAX finds; the forced host count only affects the CPU).

Run::

    python benchmarks/sharding.py                               # ml-10m, rank 32, 1/2/4/8 devices
    python benchmarks/sharding.py --shape ml-1m --devices 1,2
    python benchmarks/sharding.py --tiny --out /tmp/sharding.json  # seconds, for tests
    python benchmarks/sharding.py --probe      # collective bytes: today's step vs per-bucket row solves

``--probe`` compiles, on a 300 x 200 problem at rank 4 and 2, 4 and 8
devices, today's step and a stand-in for a per-bucket row update (each
bucket's rows solved in bucket order and scattered into the factors; not a
sampler) and writes the bytes of their collectives to
``sharding_probe.json`` beside the output.

Writes ``results/benchmarks/sharding.json``.
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

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "benchmarks" / "sharding.json"

CHILD = r"""
import json, sys, time
import jax, numpy as np
from bayesmf import synthetic
from bayesmf.engines import gibbs, sharding
from bayesmf.model import ModelConfig, model_data_from_ratings

shape, rank, sweeps, num_devices, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sizes = synthetic.SHAPES[shape]._asdict() if shape in synthetic.SHAPES else json.loads(shape)
t0 = time.perf_counter()
data = model_data_from_ratings(synthetic.movielens_like(seed, **sizes).ratings)
generate = time.perf_counter() - t0
config = ModelConfig(rank=rank)
ctx = gibbs.build_context(data, "bucket", rank)
mesh = sharding.make_mesh(num_devices)
placed = sharding.shard_context(ctx, mesh)
state = sharding.replicate(gibbs.init(jax.random.PRNGKey(seed), data, config), mesh)
t0 = time.perf_counter()
compiled = jax.jit(lambda k, s, c: gibbs.step(k, s, c, config)).lower(jax.random.PRNGKey(0), state, placed).compile()
compile_seconds = time.perf_counter() - t0
state, info = compiled(jax.random.PRNGKey(0), state, placed)
jax.block_until_ready(state)
times = []
for i in range(sweeps):
    t0 = time.perf_counter()
    state, info = compiled(jax.random.PRNGKey(i + 1), state, placed)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
layout_bytes = sum(int(np.asarray(x).nbytes) for x in jax.tree_util.tree_leaves((placed.user_layout, placed.item_layout)))
print(json.dumps(dict(
    num_devices=num_devices, device=str(jax.devices()[0].platform), generation_seconds=generate,
    compile_seconds=compile_seconds, seconds_per_sweep=times, median_seconds_per_sweep=float(np.median(times)),
    collective_bytes=sharding.collective_bytes(compiled),
    user_ratings_per_shard=sharding.ratings_per_shard(ctx.user_layout, num_devices, data.nnz).tolist(),
    item_ratings_per_shard=sharding.ratings_per_shard(ctx.item_layout, num_devices, data.nnz).tolist(),
    layout_bytes_per_device=layout_bytes // num_devices,
    train_rmse=float(info.train_rmse),
    num_users=data.num_users, num_items=data.num_items, nnz=data.nnz,
)))
"""


PROBE = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from bayesmf import synthetic
from bayesmf.engines import gibbs, sharding
from bayesmf.model import ModelConfig, model_data_from_ratings

# Not a sampler: a probe of what GSPMD communicates when each bucket's rows
# are solved in bucket order and scattered into the factors (the per-bucket
# row update a chunked step would do), against today's step.
num_devices, rank = int(sys.argv[1]), int(sys.argv[2])
data = model_data_from_ratings(synthetic.movielens_like(0, num_users=300, num_items=200, num_ratings=6000,
                                                        min_per_user=5).ratings)
mesh = sharding.make_mesh(num_devices)
placed = sharding.shard_context(gibbs.build_context(data, "bucket", rank), mesh)
replicated = NamedSharding(mesh, PartitionSpec())

def half(layout, design, response, n):
    design_pad = jnp.concatenate([design, jnp.zeros((1, design.shape[1]))])
    response_pad = jnp.concatenate([response, jnp.zeros(1)])
    out = jnp.zeros((n, design.shape[1]))
    for (b,) in layout.buckets:  # (sharded: one bucket per group)
        for i in range(b.rows.shape[0]):  # chunks of rows
            z = design_pad[b.cols[i]]
            gram = jnp.einsum("rwi,rwj->rij", z, z) + jnp.eye(design.shape[1])
            rhs = jnp.einsum("rwi,rw->ri", z, response_pad[b.entries[i]])
            out = out.at[b.rows[i]].set(jnp.linalg.solve(gram, rhs[..., None])[..., 0])
    return jax.lax.with_sharding_constraint(out, replicated)

def per_bucket(items, c):
    users = half(c.user_layout, items, c.data.rating, c.data.num_users)
    return half(c.item_layout, users, c.data.rating, c.data.num_items)

items = sharding.replicate(jnp.ones((data.num_items, rank)), mesh)
probe = jax.jit(per_bucket).lower(items, placed).compile()
config = ModelConfig(rank=rank)
state = sharding.replicate(gibbs.init(jax.random.PRNGKey(0), data, config), mesh)
step = jax.jit(lambda k, s, c: gibbs.step(k, s, c, config)).lower(jax.random.PRNGKey(0), state, placed).compile()
print(json.dumps(dict(num_devices=num_devices, rank=rank, num_users=data.num_users, num_items=data.num_items,
                      factor_bytes=(data.num_users + data.num_items) * rank * 4,
                      per_bucket_collective_bytes=sharding.collective_bytes(probe),
                      step_collective_bytes=sharding.collective_bytes(step))))
"""


def run_probe(devices: int, rank: int, timeout: float) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    done = subprocess.run([sys.executable, "-c", PROBE, str(devices), str(rank)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        return dict(num_devices=devices, error=done.stderr.strip().splitlines()[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_child(shape: str, rank: int, sweeps: int, devices: int, seed: int, timeout: float) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, shape, str(rank), str(sweeps), str(devices), str(seed)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(num_devices=devices, error=f"watchdog: exceeded {timeout:.0f} s")
    if done.returncode != 0:
        return dict(num_devices=devices, error=done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["child_seconds"] = time.perf_counter() - start
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="ml-10m", help="a key of bayesmf.synthetic.SHAPES")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts")
    parser.add_argument("--sweeps", type=int, default=3, help="timed sweeps after one untimed sweep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900.0, help="watchdog per child (seconds)")
    parser.add_argument("--tiny", action="store_true", help="a 300 x 200 problem with 6,000 ratings, 1 and 2 devices")
    parser.add_argument("--probe", action="store_true",
                        help="only the communication probe: today's step against per-bucket row solves (small problem)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.probe:
        rows = [run_probe(n, 4, args.timeout) for n in (2, 4, 8)]
        for row in rows:
            print(json.dumps(row))
        path = args.out.with_name(args.out.stem + "_probe.json")
        path.write_text(json.dumps(dict(command="python benchmarks/sharding.py --probe", rows=rows), indent=1) + "\n")
        print(f"wrote {path}")
        return 0
    shape, counts = args.shape, [int(x) for x in args.devices.split(",")]
    if args.tiny:
        shape = json.dumps(dict(num_users=300, num_items=200, num_ratings=6000, min_per_user=5))
        counts, args.rank, args.sweeps = [1, 2], 4, 1
    rows = []
    for n in counts:
        row = run_child(shape, args.rank, args.sweeps, n, args.seed, args.timeout)
        print(json.dumps({k: v for k, v in row.items() if "per_shard" not in k}), flush=True)
        rows.append(row)
    base = next((r["median_seconds_per_sweep"] for r in rows if r.get("num_devices") == 1 and "error" not in r), None)
    for row in rows:
        if base and "error" not in row:
            row["sweep_time_ratio_to_1_device"] = row["median_seconds_per_sweep"] / base
    result = dict(
        question="seconds per sweep and bytes communicated by the sharded Gibbs sweep against the number of devices",
        shape=args.shape if not args.tiny else "tiny", rank=args.rank, seed=args.seed, sweeps=args.sweeps,
        command="python benchmarks/sharding.py " + " ".join(sys.argv[1:] if argv is None else argv),
        note=("forced CPU devices share the machine's cores: these figures measure the overhead of sharding, "
              "not a speed-up"),
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(), load_1min=os.getloadavg()[0]),
        rows=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
