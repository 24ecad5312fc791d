"""The memory model and the check before allocation: a fit that cannot fit
stops at once with an error that says what it needs, what there is and what
to change; the model's parts scale as documented."""

import numpy as np
import pytest

import bayesmf
from bayesmf import memory
from bayesmf.engines import gibbs
from bayesmf.layout_plan import default_stats_bytes, padded_fraction, peak_working_bytes
from bayesmf.model import ModelConfig, model_data_from_ratings
from bayesmf.synthetic import movielens_like


@pytest.fixture(scope="module")
def ratings():
    return movielens_like(0, rank=2, noise_sd=0.5, num_users=60, num_items=40, num_ratings=900, min_per_user=3).ratings


def test_plan_scales_with_draws_rank_and_ratings():
    base = dict(num_samples=100, padded=1.5, working_bytes=2**24)
    plan = memory.gibbs_plan(1000, 500, 50_000, 10, **base)
    # Kept draws on the host: one array, written as the chunks arrive, (n + m)(D + 1) floats each.
    assert plan.host["kept_draws"] == 100 * 1500 * 11 * 4
    assert memory.gibbs_plan(1000, 500, 50_000, 10, **{**base, "num_samples": 200}).host["kept_draws"] == 2 * plan.host["kept_draws"]
    assert memory.gibbs_plan(1000, 500, 50_000, 10, keep_draws=False, **base).host["kept_draws"] == 1500 * 11 * 4
    assert memory.gibbs_plan(1000, 500, 50_000, 10, itemsize=8, **base).host["kept_draws"] == 2 * plan.host["kept_draws"]
    # Ratings and layouts grow with nnz alone.
    more = memory.gibbs_plan(1000, 500, 100_000, 10, **base)
    assert more.device["ratings"] == 2 * plan.device["ratings"]
    assert more.device["layouts"] == 2 * plan.device["layouts"] == 2 * int(16 * 1.5 * 50_000)


def test_padded_fraction_is_between_one_and_two():
    assert padded_fraction(np.array([1, 2, 4, 8])) == 1.0
    assert padded_fraction(np.array([3])) == pytest.approx(4 / 3)
    assert padded_fraction(np.array([0, 5, 9])) == pytest.approx((8 + 16) / 14)
    assert 1.0 <= padded_fraction(np.random.default_rng(0).integers(1, 1000, 500)) <= 2.0


def test_segment_padding_counts_the_layouts_own_slots():
    """With its plan, a segment layout's padded fraction is the built layout's slots per rating: every block
    padded to the largest and rounded up to whole chunks, which the segments alone leave out (a few percent
    at ML-10M shape, rank 512). A small stats budget forces blocks here."""
    from bayesmf.layout import build_layout
    from bayesmf.layout_plan import segment_plan

    rng = np.random.default_rng(0)
    degree = np.minimum(rng.zipf(1.6, 300), 400)
    rows = np.repeat(np.arange(degree.size), degree)
    cols = rng.integers(0, 500, rows.size)
    width, chunk_bytes, stats_bytes = 8, 2**14, 20 * 81 * 4
    layout = build_layout(rows, cols, degree.size, 500, "segment", width=width, chunk_bytes=chunk_bytes,
                          stats_bytes=stats_bytes)
    shape = segment_plan(degree, width, chunk_bytes, stats_bytes)
    assert shape.blocks > 1 and layout.entries.shape[0] == shape.blocks
    exact = padded_fraction(degree, "segment", shape)
    assert exact == layout.entries.size / rows.size
    assert exact > padded_fraction(degree, "segment")


def test_check_names_need_have_and_advice():
    plan = memory.gibbs_plan(10**6, 10**5, 10**8, 512, num_samples=1000)
    with pytest.raises(MemoryError) as info:
        memory.check(plan, host_free=2**30)
    text = str(info.value)
    assert "needs about" in text and "1.00 GB available" in text
    assert "kept draws" in text and "lower the rank" in text and "keep_draws=False" in text
    memory.check(memory.gibbs_plan(100, 100, 1000, 2, num_samples=10), host_free=2**40)  # fits: no error


def test_fit_that_cannot_fit_stops_before_allocating(ratings, monkeypatch):
    monkeypatch.setattr(memory, "host_available", lambda: 10 * 2**20)  # 10 MB free
    model = bayesmf.BayesMF(4, "gibbs", num_samples=20, num_warmup=5, progress_bar=False)
    with pytest.raises(MemoryError, match="host has 0.01 GB available"):
        model.fit(0, ratings)
    # The check can be turned off (an engine option) and the same fit runs.
    post = bayesmf.BayesMF(4, "gibbs", num_samples=20, num_warmup=5, progress_bar=False, check_memory=False).fit(0, ratings)
    assert np.isfinite(post.draws.user_factors).all()


def test_gibbs_plan_reflects_the_layout_and_dtype(ratings):
    data = model_data_from_ratings(ratings)
    config = ModelConfig(rank=4)
    dense = gibbs.memory_plan(data, config, num_samples=10, layout="dense")
    bucket = gibbs.memory_plan(data, config, num_samples=10, layout="bucket", chunk_bytes=2**20)
    small = gibbs.memory_plan(data, config, num_samples=10, layout="bucket", chunk_bytes=2**12)
    assert dense.device["layouts"] == 2 * (4 * 60 * 40 + 8 * len(ratings))
    # The working memory is what map_rows holds at once on either side (bayesmf.layout_plan.peak_working_bytes,
    # tested there), twice: 900 ratings need far less than a 1 MB chunk.
    assert 0 < bucket.device["row_chunks"] < 2 * 2**20
    want = max(peak_working_bytes(np.asarray(data.user_degree), 4, 2**12, 4, default_stats_bytes()),
               peak_working_bytes(np.asarray(data.item_degree), 5, 2**12, 4, default_stats_bytes()))
    assert small.device["row_chunks"] == 2 * want
    assert bucket.device["layouts"] < dense.device["layouts"]  # 60 x 40 cells dwarf 900 ratings' indices


def test_sharded_plan_splits_layouts_and_chunks_over_devices():
    one = memory.gibbs_plan(1000, 500, 50_000, 10, num_samples=10, padded=1.5, working_bytes=2**20)
    four = memory.gibbs_plan(1000, 500, 50_000, 10, num_samples=10, padded=1.5, working_bytes=2**20, num_devices=4)
    assert four.device["layouts"] == one.device["layouts"] // 4
    assert four.device["row_chunks"] == one.device["row_chunks"] // 4
    assert four.device["ratings"] == one.device["ratings"]  # replicated
    # On the CPU the host holds every device's share.
    need = 4 * four.device_bytes + four.host_bytes
    with pytest.raises(MemoryError):
        memory.check(four, host_free=need - 1)
    memory.check(four, host_free=need)


def test_plan_counts_features_and_link_matrices(ratings):
    """With implicit feedback on both sides the plan adds the sparse feature rows, the eigenbases
    (min(rows, columns)^2 floats per side, not rows x columns) and the link draws."""
    from bayesmf.model import FeatureSpec, with_features

    data = model_data_from_ratings(ratings)
    plain = ModelConfig(rank=4)
    config = plain.replace(user_features=FeatureSpec(implicit=True), item_features=FeatureSpec(implicit=True))
    full = with_features(data, config)
    n, m = data.num_users, data.num_items
    base = gibbs.memory_plan(data, plain, num_samples=50)
    plan = gibbs.memory_plan(full, config, num_samples=50)
    assert plan.device["link_systems"] == 4 * 2 * min(n, m) ** 2
    entries = int(full.user_features.values.shape[0])
    assert plan.device["features"] == 4 * (m + n) + 2 * 12 * entries
    assert plan.host["kept_link_draws"] == 50 * (m + n) * 4 * 4
    assert plan.host["link_factorization"] == 3 * 8 * min(n, m) ** 2
    assert plan.device_bytes > base.device_bytes and plan.host_bytes > base.host_bytes


def test_programs_compile_once_per_static_arguments_and_types():
    import jax
    import jax.numpy as jnp

    lowered = []

    class Counting:  # counts ahead-of-time compiles
        def __init__(self, jitted):
            self.jitted = jitted

        def lower(self, *args, **static):
            lowered.append(static["power"])
            return self.jitted.lower(*args, **static)

    programs = memory.Programs(Counting(jax.jit(lambda x, *, power: x**power, static_argnames=("power",))), max_size=2)
    x = jnp.arange(4.0)
    np.testing.assert_array_equal(programs(x, power=2), x**2)
    np.testing.assert_array_equal(programs(x + 1, power=2), (x + 1) ** 2)  # same types: no new compile
    assert lowered == [2]
    np.testing.assert_array_equal(programs(x, power=3), x**3)  # another static argument
    programs(jnp.arange(5.0), power=2)  # another shape; the oldest program goes (max_size=2)
    assert lowered == [2, 3, 2] and len(programs.compiled) == 2
    programs(x, power=3)
    assert lowered == [2, 3, 2]
    np.testing.assert_array_equal(programs(x, power=2), x**2)  # evicted: compiled again
    assert lowered == [2, 3, 2, 2]
    # New-style (typed) keys have no NumPy dtype; they key the cache by theirs.
    draw = memory.Programs(jax.jit(lambda key, *, n: jax.random.normal(key, (n,)), static_argnames=("n",)))
    np.testing.assert_array_equal(draw(jax.random.key(1), n=3), jax.random.normal(jax.random.key(1), (3,)))


def test_release_freed_is_safe_to_call():
    # glibc (Linux CI) has malloc_trim; elsewhere it is a no-op that says so.
    assert memory.release_freed() in (True, False)


def test_kept_draws_are_written_into_one_array_as_chunks_arrive():
    """The driver holds the kept draws once: each chunk (on the device, or read back from a
    checkpoint) is copied into one array per leaf, allocated for all the group's draws."""
    import jax

    from bayesmf.engines.driver import _Progress

    rng = np.random.default_rng(0)
    chunks = [dict(a=rng.normal(size=(2, n, 3)), b=rng.normal(size=(2, n))) for n in (4, 4, 2)]
    chunks = [{k: v.astype(np.float32) for k, v in c.items()} for c in chunks]  # as the device holds them
    run = _Progress.fresh()
    run.draws.append(chunks[0])  # a partial group read back from a checkpoint (host arrays)
    run.draws.append(jax.device_put(chunks[1]))
    run.settle(10)
    assert len(run.draws) == 1 and run.filled == 8
    run.settle(10)  # nothing new: unchanged
    run.draws.append(jax.device_put(chunks[2]))
    run.settle(10)
    out = run.draws[0]
    for name in ("a", "b"):
        np.testing.assert_array_equal(out[name], np.concatenate([np.asarray(c[name]) for c in chunks], axis=1))
        assert out[name].base is run.kept[name]  # a view of the one array, not a copy
        assert out[name].dtype == chunks[0][name].dtype


def test_chains_run_one_after_another_fill_one_array_without_a_join():
    """With chains run one after another (``chain_method="sequential"``), each chain's draws go into
    its rows of one array allocated for all the chains: the run's draws are that array, not a
    concatenation of per-chain arrays made at the end (which held every draw twice)."""
    import jax

    from bayesmf.engines.driver import _Progress

    rng = np.random.default_rng(1)
    chains = [[rng.normal(size=(1, n, 3)).astype(np.float32) for n in (4, 2)] for _ in range(3)]
    run = _Progress.fresh()
    for chunks in chains:
        for chunk in chunks:
            run.draws.append(jax.device_put(chunk))
            run.settle(6, 3)
        run.finish_group(np.zeros((1, 3), np.float32), np.zeros(1), np.zeros(1))
    out = run.concatenated()["draws"]
    np.testing.assert_array_equal(out, np.concatenate([np.concatenate(c, axis=1) for c in chains], axis=0))
    assert out.base is run.kept  # the one array's rows, not a join
    assert run.kept.shape == (3, 6, 3) and run.offset == 3


def test_chain_memory_benchmark_runs_tiny(tmp_path):
    """benchmarks/chain_memory.py --tiny: both chain methods run in their own process and keep the
    same draws up to float32 round-off (one vmapped program against one per chain)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "chain_memory.py"
    spec = importlib.util.spec_from_file_location("chain_memory_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--tiny", "--out", str(tmp_path / "chain_memory.json")])
    assert json.loads((tmp_path / "chain_memory.json").read_text())["runs"] == out["runs"]
    vectorized, sequential = out["runs"]
    assert (vectorized["method"], sequential["method"]) == ("vectorized", "sequential")
    assert vectorized["draws_mb"] == sequential["draws_mb"] > 0
    assert sequential["checksum"] == pytest.approx(vectorized["checksum"], rel=1e-4)


def test_to_device_gives_what_jnp_asarray_gives():
    """memory.to_device: the device array jnp.asarray would give (canonical dtype), by device_put."""
    import jax
    import jax.numpy as jnp

    for x, dtype in ((np.arange(6, dtype=np.int64).reshape(2, 3), None), (np.linspace(0, 1, 5), None),
                     (np.arange(4), jnp.float32), ([1.5, 2.5], jnp.int32)):
        got, want = memory.to_device(x, dtype), jnp.asarray(x, dtype)
        assert isinstance(got, jax.Array) and got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    already = jnp.ones(3)
    assert memory.to_device(already) is already
    assert memory.to_device(already, jnp.int32).dtype == jnp.int32


def test_compiler_options_turn_gemm_autotuning_off_on_a_gpu_only(monkeypatch):
    """No options on the CPU; on a GPU autotuning off, unless XLA_FLAGS sets its level (the user's choice wins)."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert memory.compiler_options() == ({} if memory.jax.default_backend() != "gpu" else memory.GPU_COMPILER_OPTIONS)
    monkeypatch.setattr(memory.jax, "default_backend", lambda: "gpu")
    assert memory.compiler_options() == {"xla_gpu_autotune_level": 0}
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_autotune_level=4")
    assert memory.compiler_options() == {}


def test_compile_program_keeps_programs_by_their_lowered_text(monkeypatch):
    """compile_program reuses a program for a fresh closure that lowers to the same text, compiles
    another for a closure over other constants, and forgets the least recently used past PROGRAMS_KEPT."""
    import jax.numpy as jnp

    def closure(constant):
        return lambda x: x * constant + 1.0

    x = jnp.arange(4.0)
    memory.clear_programs()
    monkeypatch.setattr(memory, "PROGRAMS_KEPT", 2)
    two = memory.compile_program(closure(2.0), x)
    assert memory.compile_program(closure(2.0), x) is two  # a new closure, the same program
    three = memory.compile_program(closure(3.0), x)
    assert three is not two and float(three(x)[1]) == 4.0 and float(two(x)[1]) == 3.0
    assert memory.compile_program(closure(2.0), x) is two  # used last: 3.0 is now the least recent
    memory.compile_program(closure(5.0), x)  # a third program: 3.0's goes
    assert memory.compile_program(closure(2.0), x) is two
    assert memory.compile_program(closure(3.0), x) is not three
    memory.clear_programs()
    assert memory.compile_program(closure(2.0), x) is not two
