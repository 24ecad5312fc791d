"""The sharded Gibbs sweep (bayesmf.engines.sharding) against the one-device run.

JAX fixes its CPU device count when its backend starts, so the runs on 2, 4
and 8 devices happen in child processes started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; each child runs the
one-device reference and the sharded runs in one process (one import, one
data set) and prints its figures as JSON, which the tests check here.
The two-process test starts two CLI processes joined by
``jax.distributed.initialize`` on a loopback coordinator.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from bayesmf import BayesMF, cli
from bayesmf.engines import gibbs, sharding
from bayesmf.layout import gram_and_rhs
from bayesmf.model import ModelConfig
from conftest import tiny_data

REPO = Path(__file__).resolve().parents[1]
DEVICE_COUNTS = (2, 4, 8)
# Per-draw predicted means of a sharded run against the one-device run (the
# issue's tolerance): the variates are identical, so the states differ only by
# float32 reassociation of the Gram sums, ~1e-6 relative per sweep and
# growing slowly along the chain (measured <= 4e-6 after 20 sweeps).
DRAW_TOL = 1e-3
# Test RMSE and 90% coverage on ml-100k u1 (the tolerance).
METRIC_TOL = 1e-4
# Bytes of a sharded sweep's collectives over the drawn factors' bytes (see
# test_sweep_communicates_drawn_rows_not_grams).
COMM_RATIO = 1.5
# Seconds before a child process is killed (the issue: the two-process run
# stops by itself within 120 s).
CHILD_TIMEOUT = 120
# Most / fewest ratings per shard. Rows are dealt heaviest first to the least
# loaded shard, one per shard and round, so shards differ by about one heavy
# row: measured 1.14 (users) and 1.09 (movies) at 8 shards of ~750 ratings
# where one user has 200 and one movie 257 ratings (an even split of each
# bucket in row order gave 1.6).
BALANCE_RATIO = 1.25


def _child(script: str, *args: str, devices: int = 8, timeout: int = CHILD_TIMEOUT) -> dict:
    """Run ``script`` in a fresh interpreter with ``devices`` forced CPU
    devices; its last stdout line is JSON."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


SYNTHETIC = r"""
import json, sys
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from bayesmf import synthetic
from bayesmf.engines import gibbs, sharding
from bayesmf.model import ModelConfig, model_data_from_ratings

syn = synthetic.movielens_like(0, num_users=300, num_items=200, num_ratings=6000, min_per_user=5)
data = model_data_from_ratings(syn.ratings)
config = ModelConfig(rank=4)
pairs = (np.arange(500) % data.num_users, (7 * np.arange(500)) % data.num_items)
def run(devices):
    return gibbs.sample(jax.random.PRNGKey(1), data, config, num_samples=10, num_warmup=10, num_chains=2,
                        layout="bucket", track_pairs=pairs, progress_bar=False, devices=devices)
ref = run(None)
out = {"devices": len(jax.devices()), "runs": {}}
ctx = gibbs.build_context(data, "bucket", config.rank)
for n in [2, 4, 8]:
    r = run(n)
    out["runs"][n] = dict(
        num_devices=r.info["num_devices"],
        max_draw_diff=float(np.abs(r.tracked.draw_means - ref.tracked.draw_means).max()),
        max_noise_rel_diff=float(np.abs(r.draws.noise_precision / ref.draws.noise_precision - 1).max()),
        user_ratings=sharding.ratings_per_shard(ctx.user_layout, n, data.nnz).tolist(),
        item_ratings=sharding.ratings_per_shard(ctx.item_layout, n, data.nnz).tolist(),
    )
# Chains on a second mesh axis: 2 groups of 4 devices, one chain each.
r = run(sharding.make_mesh(8, chains=2))
out["chains_mesh"] = dict(num_devices=r.info["num_devices"],
                          max_draw_diff=float(np.abs(r.tracked.draw_means - ref.tracked.draw_means).max()))
# jax.random's values do not depend on the sharding of its output.
mesh = sharding.make_mesh(8)
key = jax.random.PRNGKey(3)
plain = jax.random.normal(key, (4096,))
split = jax.jit(lambda k: jax.random.normal(k, (4096,)), out_shardings=NamedSharding(mesh, PartitionSpec("rows")))(key)
out["random_equal"] = bool(np.array_equal(np.asarray(plain), np.asarray(split)))
out["nnz"] = int(data.nnz)
# What the compiled sweep communicates on 8 devices.
placed = sharding.shard_context(ctx, mesh)
state = sharding.replicate(gibbs.init(jax.random.PRNGKey(0), data, config), mesh)
step = jax.jit(lambda k, s, c: gibbs.step(k, s, c, config)).lower(jax.random.PRNGKey(0), state, placed).compile()
out["collective_bytes"] = sum(sharding.collective_bytes(step).values())
out["factor_bytes"] = (data.num_users * config.rank + data.num_items * (config.rank + 1)) * 4
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def synthetic_runs():
    # Five sampler runs (1, 2, 4, 8 devices and a chains mesh), each compiled for its
    # mesh: ~60 s on a quiet 2-core machine, over 120 s when it is shared (CI run here).
    return _child(SYNTHETIC, timeout=300)


def test_sharded_draws_equal_one_device(synthetic_runs):
    """2, 4 and 8 devices give the one-device run's per-draw predictions (2
    chains, 20 sweeps) within float32 reassociation."""
    assert synthetic_runs["devices"] == 8
    for n in DEVICE_COUNTS:
        run = synthetic_runs["runs"][str(n)]
        assert run["num_devices"] == n
        assert run["max_draw_diff"] < DRAW_TOL, (n, run)
        assert run["max_noise_rel_diff"] < DRAW_TOL, (n, run)


def test_chains_on_a_second_mesh_axis(synthetic_runs):
    """A (chains=2, rows=4) mesh: each chain on its own group of 4 devices,
    the same draws as one device."""
    run = synthetic_runs["chains_mesh"]
    assert run["num_devices"] == 8
    assert run["max_draw_diff"] < DRAW_TOL, run


def test_sweep_communicates_drawn_rows_not_grams(synthetic_runs):
    """The collectives of one sharded sweep move about the drawn factors
    (users' d and movies' d + 1 floats per row), not the per-row Grams
    ((d + 1)^2 floats: 5x more at rank 4)."""
    # Besides the factors: an int32 row id per row and a residual sum per
    # movie (+25-30% at rank 4), and chunk padding; measured 1.19x.
    assert synthetic_runs["collective_bytes"] < COMM_RATIO * synthetic_runs["factor_bytes"], synthetic_runs


def test_random_values_do_not_depend_on_sharding(synthetic_runs):
    assert synthetic_runs["random_equal"]


def test_shards_balanced_by_ratings(synthetic_runs):
    """Every rating lands on exactly one shard per side, and shards hold
    similar numbers of ratings."""
    for n in DEVICE_COUNTS:
        run = synthetic_runs["runs"][str(n)]
        for side in ("user_ratings", "item_ratings"):
            counts = np.asarray(run[side])
            assert counts.size == n and counts.sum() == synthetic_runs["nnz"]
            assert counts.max() < BALANCE_RATIO * counts.min(), (n, side, counts)


def test_padded_layout_gives_the_same_grams():
    """Padding rows contribute nothing and are never selected by ``order``."""
    data = tiny_data(num_users=13, num_items=7, nnz=50)
    ctx = gibbs.build_context(data, "bucket", 2)
    design = jax.random.normal(jax.random.PRNGKey(0), (data.num_items, 3))
    padded = sharding.pad_bucket_layout(ctx.user_layout, 4, data.num_items, data.nnz)
    # (chunks, rows of a chunk): rows split 4 ways, at least two chunks.
    assert all(np.shape(b.rows)[1] % 4 == 0 and np.shape(b.rows)[0] >= 2 for (b,) in padded.buckets)
    want = gram_and_rhs(ctx.user_layout, design, data.rating)
    got = gram_and_rhs(jax.tree_util.tree_map(jax.numpy.asarray, padded), design, data.rating)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(np.asarray(w), np.asarray(g))


def test_ratings_per_shard_counts_every_rating_once():
    data = tiny_data(num_users=13, num_items=7, nnz=50)
    ctx = gibbs.build_context(data, "bucket", 2)
    for n in (1, 3, 5):
        counts = sharding.ratings_per_shard(ctx.user_layout, n, data.nnz)
        assert counts.shape == (n,) and counts.sum() == data.nnz


def test_one_device_mesh_runs_in_process():
    """``devices=1`` (a one-device mesh) runs in this process and reports it."""
    data = tiny_data()
    result = gibbs.sample(jax.random.PRNGKey(0), data, ModelConfig(rank=2), num_samples=2, num_warmup=1,
                          progress_bar=False, devices=1)
    assert result.info["num_devices"] == 1
    assert np.all(np.isfinite(result.draws.user_factors))


def test_devices_are_checked():
    with pytest.raises(ValueError, match="devices"):
        sharding.make_mesh(len(jax.devices()) + 1)
    with pytest.raises(ValueError, match="Gibbs"):
        BayesMF(method="map", devices=2)
    with pytest.raises(ValueError, match="chains"):
        sharding.make_mesh(1, chains=2)


def test_cli_device_flags_are_checked(capsys):
    assert cli.main(["evaluate", "--method", "map", "--devices", "2", "--data", "x"]) == 2
    assert "--method gibbs" in capsys.readouterr().err
    assert cli.main(["evaluate", "--method", "gibbs", "--coordinator", "127.0.0.1:1", "--data", "x"]) == 2
    assert "--num-processes" in capsys.readouterr().err


ML100K = r"""
import json, sys
from bayesmf import BayesMF, split
s = split.predefined(sys.argv[1], "u1")
out = {}
for n in [None, 2, 4, 8]:
    posterior = BayesMF(rank=10, method="gibbs", num_samples=20, num_warmup=10, progress_bar=False, devices=n,
                        layout="bucket").fit(0, s.train)
    row = posterior.evaluate(s.test).loc[("all", "all")]
    out[str(n)] = dict(rmse=float(row["rmse"]), coverage_90=float(row["coverage_90"]),
                       num_devices=posterior.info["num_devices"])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_ml100k_u1_sharded_metrics_equal_one_device(ml100k_dir):
    """Test RMSE and 90% coverage on ml-100k u1 (rank 10, 20 draws after 10
    sweeps) on 2, 4 and 8 devices equal the one-device run's within 1e-4."""
    out = _child(ML100K, str(ml100k_dir), timeout=300)
    ref = out["None"]
    for n in DEVICE_COUNTS:
        run = out[str(n)]
        assert run["num_devices"] == n
        assert abs(run["rmse"] - ref["rmse"]) < METRIC_TOL, (n, run, ref)
        assert abs(run["coverage_90"] - ref["coverage_90"]) < METRIC_TOL, (n, run, ref)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ratings_files(tmp_path: Path) -> tuple[Path, Path]:
    from bayesmf import synthetic

    ratings = synthetic.movielens_like(0, num_users=200, num_items=120, num_ratings=4000, min_per_user=5).ratings
    rng = np.random.default_rng(0)
    test = rng.random(ratings.nnz) < 0.1
    users, items = ratings.user_vocab.ids[ratings.user_index], ratings.item_vocab.ids[ratings.item_index]
    paths = []
    for name, keep in (("train.csv", ~test), ("test.csv", test)):
        path = tmp_path / name
        rows = np.column_stack([users[keep], items[keep], ratings.rating[keep]])
        np.savetxt(path, rows, fmt=["%d", "%d", "%g"], delimiter=",", header="user,item,rating", comments="")
        paths.append(path)
    return paths[0], paths[1]


def test_two_processes_match_one_process(tmp_path):
    """Two processes (one CPU device each) joined by jax.distributed on a
    loopback coordinator give the one-process result; process 0 alone
    prints; both stop within CHILD_TIMEOUT seconds."""
    train, test = _ratings_files(tmp_path)
    base = [sys.executable, "-m", "bayesmf.cli", "evaluate", "--train", str(train), "--test", str(test),
            "--method", "gibbs", "--rank", "3", "--num-samples", "10", "--num-warmup", "10", "--no-progress", "--json",
            "--devices", "1"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    # The reference: one process, one device (the same bucket layout).
    one = subprocess.run(base, cwd=REPO, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert one.returncode == 0, one.stderr[-3000:]
    reference = json.loads(one.stdout.strip().splitlines()[-1])
    port = _free_port()
    children = [
        subprocess.Popen(base + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                 "--process-id", str(k)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for k in range(2)
    ]
    outputs = []
    try:
        for child in children:
            outputs.append(child.communicate(timeout=CHILD_TIMEOUT))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert [c.returncode for c in children] == [0, 0], [err[-2000:] for _, err in outputs]
    lines = [line for line in outputs[0][0].splitlines() if line.startswith("{")]
    result = json.loads(lines[-1])
    assert not [line for line in outputs[1][0].splitlines() if line.startswith("{")]  # process 1 prints nothing
    assert (result["num_devices"], result["num_processes"]) == (2, 2)
    assert (reference["num_devices"], reference["num_processes"]) == (1, 1)
    for name in ("rmse", "coverage_90"):
        assert abs(result[name] - reference[name]) < METRIC_TOL, (name, result[name], reference[name])
