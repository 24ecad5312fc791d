"""Streamed, jitted scoring (bayesmf.metrics.streaming, predictive.stream_score_rows) against the NumPy reference.

The reference is ``bayesmf.metrics.score_rows`` (float64 NumPy); the
streamed path computes the same scores in float64 under
``jax.enable_x64``, chunk by chunk, so the scores agree to round-off, the
mixture quantiles to their tolerance, and the sampled CRPS pair term to its
Monte Carlo error.
"""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from bayesmf import metrics
from bayesmf.data import RatingScale, Ratings
from bayesmf.engines import gibbs
from bayesmf.metrics import streaming
from bayesmf.model import ModelConfig, model_data_from_ratings
from bayesmf.posterior import Posterior, draw_minor, known_moments_draw_minor
from bayesmf.predictive import pair_moments, score_rows, stream_score_rows

# Scores of O(1) numbers computed in float64 by two programs (NumPy and XLA:
# different summation orders, erf implementations, z by division or by a
# reciprocal): round-off, measured at most 2e-14; 1e-10 leaves room.
ROUND_OFF = 1e-10
# Both quantile solvers stop within metrics.QUANTILE_TOL of the root, so two
# of them differ by at most twice that.
QUANTILE_GAP = 2 * metrics.QUANTILE_TOL
# evaluate's per-draw means are float32 (the draws' dtype) in both paths;
# scores of O(1) ratings agree well inside this (the 1e-6).
EVALUATE_ATOL = 1e-6
# A sampled pair term is unbiased: its mean over rows is within this many
# standard errors (estimated from the rows) of the exact one.
MC_SIGMAS = 5.0
LEVELS = (0.5, 0.8, 0.9, 0.95)


def mixture(seed, num_components, n, spread=0.3):
    rng = np.random.default_rng(seed)
    mu = rng.normal(3.5, spread, (num_components, n)) + rng.normal(0, 0.5, n)
    sd = np.broadcast_to(rng.uniform(0.6, 1.0, (num_components, 1)), (num_components, n)).copy()
    y = np.clip(np.round(rng.normal(3.5, 1.0, n)), 1, 5)
    return y, mu, sd


def assert_rows_match(new, ref, y, mu, sd, weights=None, atol=ROUND_OFF):
    assert list(new) == list(ref)
    for key in ("squared_error", "absolute_error", "nll", "crps"):
        np.testing.assert_allclose(new[key], ref[key], rtol=0, atol=atol, err_msg=key)
    for p in LEVELS:
        tag = f"{100 * p:g}"
        np.testing.assert_allclose(new[f"width_{tag}"], ref[f"width_{tag}"], rtol=0, atol=2 * QUANTILE_GAP)
        differ = new[f"covered_{tag}"] != ref[f"covered_{tag}"]
        if differ.any():  # only where a rating lies within the tolerance of a bound
            lo, hi = metrics.interval(mu[:, differ], sd[:, differ], p, weights)
            gap = np.minimum(np.abs(y[differ] - lo), np.abs(y[differ] - hi))
            assert np.all(gap <= QUANTILE_GAP)


@pytest.mark.parametrize("num_components", [1, 2, 7, 40])
@pytest.mark.parametrize("weighted", [False, True])
def test_chunks_equal_the_numpy_reference(num_components, weighted):
    y, mu, sd = mixture(num_components, num_components, 301)
    w = np.random.default_rng(1).uniform(0.1, 1.0, num_components) if weighted else None
    ref = metrics.score_rows(y, mu, sd, weights=w, levels=LEVELS, max_pairs=10**9)
    # 97 cells: several chunks of a few rows and a padded last chunk.
    new = streaming.score_rows(None, y, mu, sd, weights=w, levels=LEVELS, max_pairs=None, chunk_cells=97)
    assert_rows_match(new, ref, y, mu, sd, w)
    one = streaming.score_rows(None, y, mu, sd, weights=w, levels=LEVELS, max_pairs=None, chunk_cells=10**6)
    for key in new:
        np.testing.assert_allclose(one[key], new[key], rtol=0, atol=ROUND_OFF, err_msg=key)


def test_a_gaussian_row_vector_is_a_one_component_mixture():
    y, mu, sd = mixture(0, 1, 50)
    ref = metrics.score_rows(y, mu[0], sd[0], levels=LEVELS)
    new = streaming.score_rows(None, y, mu[0], sd[0], levels=LEVELS)
    assert_rows_match(new, ref, y, mu, sd)


def test_quantiles_of_a_bimodal_mixture_are_within_the_tolerance():
    """Two groups of components 6 sds apart: Newton fails near the gap and the bisection takes over."""
    rng = np.random.default_rng(3)
    n = 200
    mu = np.concatenate([rng.normal(0.0, 0.1, (10, n)), rng.normal(6.0, 0.1, (10, n))])
    sd = np.full_like(mu, 1.0)
    y = rng.normal(3.0, 3.0, n)
    probs = (0.3, 0.5, 0.6, 0.9)
    new = streaming.score_rows(None, y, mu, sd, levels=probs, max_pairs=None)
    for p in probs:
        lo, hi = metrics.interval(mu, sd, p)
        np.testing.assert_allclose(new[f"width_{100 * p:g}"], hi - lo, rtol=0, atol=2 * QUANTILE_GAP)
    # The streamed quantiles themselves: the cdf there is the probability, to tol times the density.
    with jax.enable_x64(True):
        p = jnp.asarray([0.2, 0.5, 0.8])
        q = np.asarray(streaming._quantiles(p, jnp.asarray(mu), jnp.asarray(sd), jnp.full(20, 1 / 20), metrics.QUANTILE_TOL))
    for j, pj in enumerate((0.2, 0.5, 0.8)):
        np.testing.assert_allclose(q[j], metrics.quantile(pj, mu, sd), rtol=0, atol=QUANTILE_GAP)
        assert np.all(np.abs(metrics.cdf(q[j], mu, sd) - pj) <= metrics.QUANTILE_TOL)  # density <= 0.4


def test_sampled_pair_term_is_unbiased():
    y, mu, sd = mixture(5, 30, 4000, spread=0.5)
    exact = streaming.score_rows(None, y, mu, sd, levels=(0.9,), max_pairs=None)["crps"]
    # 30^2 x 4000 = 3.6e6 pairs > 1e5: one shift (30 pairs) per row, as the reference's rule gives.
    assert streaming.num_shifts_for(30, 4000, 10**5) == 1
    sampled = streaming.score_rows(jax.random.PRNGKey(1), y, mu, sd, levels=(0.9,), max_pairs=10**5)["crps"]
    diff = sampled - exact
    assert np.any(diff != 0)
    assert abs(diff.mean()) <= MC_SIGMAS * diff.std() / np.sqrt(diff.size)
    reference = metrics.crps_per_row(y, mu, sd, max_pairs=10**5, seed=0)
    gap = reference - sampled  # two independent unbiased estimates
    assert abs(gap.mean()) <= MC_SIGMAS * gap.std() / np.sqrt(gap.size)


def test_sampled_shifts_follow_the_key():
    """The shifts are drawn on the host from the key: the same key gives the same scores, another key others;
    each shift lies in 0..S-1, and a typed key seeds as its raw data does."""
    y, mu, sd = mixture(6, 30, 500, spread=0.5)
    crps = [streaming.score_rows(key, y, mu, sd, levels=(0.9,), max_pairs=10**4)["crps"]
            for key in (jax.random.PRNGKey(3), jax.random.PRNGKey(3), jax.random.PRNGKey(4))]
    np.testing.assert_array_equal(crps[0], crps[1])
    assert np.any(crps[0] != crps[2])
    shifts = streaming.chunk_shifts(streaming.shift_generator(jax.random.PRNGKey(3)), 7, 30, 1000)
    assert shifts.shape == (7, 1000) and shifts.dtype == np.int32 and shifts.min() >= 0 and shifts.max() <= 29
    typed = streaming.chunk_shifts(streaming.shift_generator(jax.random.key(3)), 7, 30, 1000)
    np.testing.assert_array_equal(shifts, typed)
    assert streaming.chunk_shifts(streaming.shift_generator(jax.random.PRNGKey(3)), None, 30, 1000) is None


# --- Posterior.evaluate --------------------------------------------------------------------------


def make_ratings(seed, nnz, num_users=40, num_items=30):
    rng = np.random.default_rng(seed)
    cells = rng.choice(num_users * num_items, size=nnz, replace=False)
    users, items = np.divmod(cells, num_items)
    lu = rng.normal(0, 0.7, (num_users, 2))
    rv = rng.normal(0, 0.7, (num_items, 2))
    m = rng.normal(3.0, 0.5, num_items)
    r = np.clip(np.round(np.sum(lu[users] * rv[items], 1) + m[items] + rng.normal(0, 0.5, nnz)), 1, 5)
    return Ratings.from_arrays(users + 101, items + 1, r, scale=RatingScale(1.0, 5.0, 1.0))


@pytest.fixture(scope="module")
def posterior():
    ratings = make_ratings(1, 500, num_users=36, num_items=27)  # test ratings of ids above have cold rows
    config = ModelConfig(rank=2)
    result = gibbs.sample(jax.random.PRNGKey(3), model_data_from_ratings(ratings), config, num_samples=60,
                          num_warmup=40, progress_bar=False)
    return Posterior(result.draws, config, ratings.user_vocab, ratings.item_vocab, ratings.scale, method="gibbs",
                     train=ratings)


def host_path(posterior, test, levels):
    """What evaluate did before: components (draws x pairs) on the host, NumPy scores."""
    pairs = posterior.pairs(test.user_ids, test.item_ids)
    comps = posterior.components(pairs.user_index, pairs.item_index)
    return score_rows(np.asarray(test.rating, np.float64), comps, levels), comps


def test_evaluate_equals_the_host_path(posterior, monkeypatch):
    test = make_ratings(7, 400)
    cold = ~(np.isin(test.user_ids, posterior.user_vocab.ids) & np.isin(test.item_ids, posterior.item_vocab.ids))
    assert 0 < cold.sum() < len(test)
    rows, comps = host_path(posterior, test, LEVELS)  # 60^2 x 400 pairs: under the budget, exact CRPS
    expected = metrics.summarize(rows).iloc[0]

    def forbidden(*args, **kwargs):
        raise AssertionError("evaluate must not build draws x pairs components on the host")

    monkeypatch.setattr(Posterior, "components", forbidden)
    table = posterior.evaluate(test, levels=LEVELS, by=("cold", "user_activity"), expect_cold=True)
    got = table.loc[("all", "all")]
    assert got["count"] == expected["count"]
    for key, value in expected.items():
        if key.startswith("coverage"):
            assert got[key] == value, key
        else:
            assert got[key] == pytest.approx(value, rel=0, abs=EVALUATE_ATOL), key
    assert table.loc["cold", "count"].sum() == len(test)


def test_evaluate_star_scores_equal_the_host_path(posterior):
    """The star columns (bayesmf.metrics.stars) of the streamed evaluate are those of the in-memory path."""
    import copy

    test = make_ratings(7, 400)
    pairs = posterior.pairs(test.user_ids, test.item_ids)
    comps = posterior.components(pairs.user_index, pairs.item_index)
    rows = score_rows(np.asarray(test.rating, np.float64), comps, LEVELS, scale=posterior.scale)
    expected = metrics.summarize(rows).iloc[0]
    table = posterior.evaluate(test, levels=LEVELS, by="cold", expect_cold=True)
    got = table.loc[("all", "all")]
    kinds = ("coverage", "mass", "size")
    star_columns = ["star_nll", "rps", *(f"set_{kind}_{100 * p:g}" for p in LEVELS for kind in kinds)]
    assert list(table.columns[-len(star_columns):]) == star_columns and list(got.index) == list(expected.index)
    for key in star_columns:
        if key.startswith(("set_coverage", "set_size")):
            assert got[key] == expected[key], key
        else:
            assert got[key] == pytest.approx(expected[key], rel=0, abs=EVALUATE_ATOL), key
    # A continuous scale has no stars: evaluate has no star columns, and the others are unchanged.
    continuous = copy.copy(posterior)
    continuous.scale = RatingScale(1.0, 5.0, None)
    plain = continuous.evaluate(test, levels=LEVELS, by="cold", expect_cold=True)
    assert list(plain.columns) == list(table.columns[: -len(star_columns)])
    pd.testing.assert_frame_equal(plain, table[plain.columns], check_exact=True)


def test_evaluate_compiles_one_scoring_program_for_known_and_cold_pairs(posterior, caplog):
    """Known and cold pairs are the branches of one program: a first evaluate compiles the scoring once.

    A program per part compiled the scoring (most of a first call's compile) once per part.
    """
    import logging

    test = make_ratings(7, 400)
    cold = ~(np.isin(test.user_ids, posterior.user_vocab.ids) & np.isin(test.item_ids, posterior.item_vocab.ids))
    assert 0 < cold.sum() < len(test)
    levels = (0.7,)  # no other test scores at these levels: the programs are compiled here
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        table = posterior.evaluate(test, levels=levels, expect_cold=True)
    compiles = [r.getMessage() for r in caplog.records if "XLA compilation of jit(_score_chunk)" in r.getMessage()]
    assert len(compiles) == 1, compiles
    rows, _ = host_path(posterior, test, levels)
    assert table.loc[("all", "all"), "coverage_70"] == metrics.summarize(rows).iloc[0]["coverage_70"]


def test_components_of_other_pair_counts_reuse_the_compiled_programs(posterior, caplog):
    """components pads its known and its cold pairs to a few sizes (a power of two here): other pair
    counts of one size compile nothing, and every pair gets the moments it gets in any other call
    (float32 round-off: each pair's mean is its own D-term dot product)."""
    import logging

    test = make_ratings(7, 400)
    pairs = posterior.pairs(test.user_ids, test.item_ids)
    u, i = pairs.user_index, pairs.item_index
    assert 0 < (u < 0).sum() < len(u)
    whole = posterior.components(u, i)
    for n in (1, 37, 200):  # known and cold pairs mixed: each part padded on its own
        part = posterior.components(u[-n:], i[-n:])
        np.testing.assert_allclose(part.mean, whole.mean[:, -n:], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(part.sd, whole.sd[:, -n:], rtol=1e-6, atol=1e-6)
    known = np.flatnonzero((u >= 0) & (i >= 0))
    first = posterior.components(u[known[:33]], i[known[:33]])  # padded to 64
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        for n in (40, 64, 50):
            again = posterior.components(u[known[:n]], i[known[:n]])
    assert [r.getMessage() for r in caplog.records if "XLA compilation" in r.getMessage()] == []
    np.testing.assert_array_equal(again.mean[:, :33], first.mean)


def test_stream_score_rows_is_the_same_in_any_chunking(posterior):
    test = make_ratings(9, 300)
    pairs = posterior.pairs(test.user_ids, test.item_ids)
    flat = posterior.flat_draws()
    known = pairs.known_user & pairs.known_item
    dm = draw_minor(*(jnp.asarray(x) for x in (flat.user_factors, flat.item_factors, flat.item_offsets, flat.noise_precision)))
    parts = [(np.flatnonzero(known), known_moments_draw_minor, dm),
             (np.flatnonzero(~known), jax.vmap(pair_moments, in_axes=(0, None, None)))]
    y = np.asarray(test.rating, np.float64)
    args = (jax.random.PRNGKey(0), flat, pairs.user_index, pairs.item_index, y, parts, LEVELS)
    small, large = stream_score_rows(*args, chunk_cells=60 * 7), stream_score_rows(*args, chunk_cells=10**7)
    ref, comps = host_path(posterior, test, LEVELS)
    for key in small:  # the float32 per-draw means may round differently in another chunk shape
        np.testing.assert_allclose(small[key], large[key], rtol=0, atol=EVALUATE_ATOL, err_msg=key)
    assert_rows_match(small, ref, y, comps.mean, comps.sd, atol=EVALUATE_ATOL)


def test_evaluate_estimates_the_pair_term_past_the_budget(posterior, monkeypatch):
    """Past metrics.MAX_PAIRS the CRPS pair term is sampled (here a budget of 1e5 for 60 draws x 400 rows)."""
    import bayesmf.predictive as predictive

    test = make_ratings(7, 400)
    exact = posterior.evaluate(test, levels=LEVELS, expect_cold=True).loc[("all", "all")]
    defaults = list(predictive.stream_score_rows.__kwdefaults__.items())
    monkeypatch.setattr(predictive.stream_score_rows, "__kwdefaults__", dict(defaults, max_pairs=10**5))
    sampled = posterior.evaluate(test, levels=LEVELS, expect_cold=True).loc[("all", "all")]
    for key, value in exact.items():
        if key != "crps":
            assert sampled[key] == value, key
    # One shift of 60 pairs per row: per-row sd of the estimate below 0.05, so 400 rows give an SE below 0.0025.
    assert sampled["crps"] != exact["crps"]
    assert sampled["crps"] == pytest.approx(exact["crps"], abs=MC_SIGMAS * 0.0025)


def test_evaluate_scale_benchmark_runs_tiny(tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "evaluate_scale.py"
    spec = importlib.util.spec_from_file_location("evaluate_scale_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--tiny", "--out", str(tmp_path / "evaluate_scale.json")])
    assert (tmp_path / "evaluate_scale.json").is_file()
    for key, gap in out["max_abs_difference"].items():
        assert gap <= EVALUATE_ATOL, key
    assert isinstance(pd.Series(out["new_scores"]), pd.Series)


def test_chunks_are_larger_on_an_accelerator():
    """The CPU's chunks bound a chunk's temporaries; a GPU's are 32x larger, to spread the fixed costs of a chunk."""
    assert streaming.default_chunk_cells("cpu") == streaming.CHUNK_CELLS
    assert streaming.default_chunk_cells("gpu") == streaming.ACCELERATOR_CHUNK_CELLS == 32 * streaming.CHUNK_CELLS
    assert streaming.default_chunk_cells() == (streaming.CHUNK_CELLS if jax.default_backend() == "cpu"
                                               else streaming.ACCELERATOR_CHUNK_CELLS)


@pytest.mark.parametrize("piece_bytes", [1, 700, 10**9])
def test_draw_minor_is_the_transpose_in_any_pieces(monkeypatch, piece_bytes):
    """The draw-minor layout is written in place a piece of rows at a time (a
    row per piece at 1 byte; pieces that do not divide the rows overlap the
    one before): the same array as one transpose, exactly (copies, no arithmetic)."""
    monkeypatch.setattr("bayesmf.posterior.DRAW_MINOR_PIECE_BYTES", piece_bytes)
    rng = np.random.default_rng(4)
    factors, offsets = rng.normal(size=(6, 11, 3)).astype(np.float32), rng.normal(size=(6, 11)).astype(np.float32)
    dm = draw_minor(factors, factors[:, :5], offsets, np.ones(6, np.float32), offsets)
    np.testing.assert_array_equal(dm.user_factors, np.swapaxes(factors, 0, 1).reshape(-1, 3))
    np.testing.assert_array_equal(dm.item_factors, np.swapaxes(factors[:, :5], 0, 1).reshape(-1, 3))
    np.testing.assert_array_equal(dm.item_offsets, np.swapaxes(offsets, 0, 1).reshape(-1))
    np.testing.assert_array_equal(dm.user_offsets, dm.item_offsets)
