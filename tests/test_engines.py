"""The contract every engine passes, and the one driver the samplers share.

Part 1 runs every method through :class:`bayesmf.BayesMF` on one small problem
drawn from the model (``tests/conftest.py``: 30 users x 20 movies, 300
ratings, rank 2, noise sd 0.5; the other 300 cells held out): shapes and
finiteness of the draws, unknown ids, a save/load round trip, an RMSE band,
and the tracked pairs. Part 2 checks the raw engine results of the samplers
(Gibbs, NUTS, SVI). Part 3 tests the driver itself on a toy engine whose
compile takes a fraction of a second: the key schedule, thinning, chunking,
chain methods, the non-finite check and checkpoints.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayesmf
from bayesmf import storage
from bayesmf.engines import driver, gibbs, nuts, svi
from bayesmf.engines.common import EngineResult
from bayesmf.model import OPTIONAL_FIELDS, ModelConfig, Params, model_data_from_ratings, predict_mean

METHODS = ("gibbs", "nuts", "svi", "map", "als")
SAMPLING = ("gibbs", "nuts", "svi")
# Settings per method: small, and for NUTS those of tests/test_nuts.py
# (rank 2, 150 warm-up steps, chunks of 10), so that its compiled kernel
# serves both files.
SETTINGS = dict(
    gibbs=dict(num_samples=100, num_warmup=50),
    nuts=dict(num_samples=50, num_warmup=150),
    svi=dict(num_samples=100, num_steps=1000),
    map=dict(tune=False),
    als=dict(tune=False),
)
RANK = 2
UNKNOWN_USER, UNKNOWN_ITEM = 10_000, 10_000

# RMSE band on the held-out ratings, against the generating model's noise sd
# sigma. Lower: even the true means have RMSE^2 / sigma^2 ~ chi2_n / n (sd
# sqrt(2 / n), n = 300 cells), so an RMSE below sigma (1 - 4 sqrt(1 / (2 n)))
# means the held-out ratings leaked into the fit. Upper: of the excess
# squared error the global mean leaves above the noise (its RMSE^2 -
# sigma^2, ~0.49 here), at most RMSE_UPPER_FRACTION may remain. Measured:
# samplers 0.576-0.583 (fraction ~0.17), MAP and ALS with untuned precisions
# 0.688 (~0.45); the bound is 0.74.
RMSE_UPPER_FRACTION = 0.6


def _fit(method, problem):
    model = bayesmf.BayesMF(rank=RANK, method=method, progress_bar=False, **SETTINGS[method])
    track = (problem.test_users, problem.test_items) if method in SAMPLING else None
    return model.fit(0, problem.train, track=track)


@pytest.fixture(scope="module", params=METHODS)
def fitted(request, synthetic_ratings):
    return request.param, _fit(request.param, synthetic_ratings)


# --- part 1: the contract, through the estimator --------------------------------------


def test_draws_have_the_contract_shapes_and_are_finite(fitted, synthetic_ratings):
    method, posterior = fitted
    train = synthetic_ratings.train
    draws = posterior.draws
    chains = draws.noise_precision.shape[0]
    num_draws = 1 if method in ("map", "als") else SETTINGS[method]["num_samples"]
    lead = (chains, num_draws)
    d = RANK
    expected = dict(
        user_factors=(train.num_users, d), item_factors=(train.num_items, d), item_offsets=(train.num_items,),
        noise_precision=(), user_mean=(d,), user_precision=(d, d), item_mean=(d,), item_precision=(d, d),
        offset_mean=(), offset_precision=(),
    )
    assert chains == 1
    for name, shape in expected.items():
        value = getattr(draws, name)
        assert isinstance(value, np.ndarray), name
        assert value.shape == lead + shape, (name, value.shape)
        assert np.all(np.isfinite(value)), name
    assert np.all(draws.noise_precision > 0)
    assert np.all(np.linalg.eigvalsh(draws.user_precision) > 0)
    assert np.all(np.linalg.eigvalsh(draws.item_precision) > 0)
    assert np.isfinite(posterior.timing["fit_seconds"]) and posterior.timing["fit_seconds"] >= 0


def test_unknown_ids_get_a_finite_flagged_prediction(fitted, synthetic_ratings):
    """Cold-start users and movies are predicted (prior predictive), never a
    silent zero, and flagged as unknown."""
    _, posterior = fitted
    known_user, known_item = synthetic_ratings.test_users[0], synthetic_ratings.test_items[0]
    pred = posterior.predict([UNKNOWN_USER, known_user, UNKNOWN_USER], [known_item, UNKNOWN_ITEM, UNKNOWN_ITEM])
    assert np.all(np.isfinite(pred.mean)) and np.all(np.isfinite(pred.sd)) and np.all(np.asarray(pred.sd) > 0)
    np.testing.assert_array_equal(pred.known_user, [False, True, False])
    # Known pairs predict within the rating range's neighbourhood, cold ones too.
    assert np.all(np.abs(np.asarray(pred.mean) - 3.5) < 3.0)


def test_save_load_round_trip_predicts_the_same(fitted, synthetic_ratings, tmp_path):
    _, posterior = fitted
    users = np.concatenate([synthetic_ratings.test_users[:20], [UNKNOWN_USER]])
    items = np.concatenate([synthetic_ratings.test_items[:20], [synthetic_ratings.test_items[0]]])
    path = storage.save(posterior, tmp_path / "model.nc")
    loaded = storage.load(path)
    before, after = posterior.predict(users, items), loaded.predict(users, items)
    np.testing.assert_array_equal(np.asarray(after.mean), np.asarray(before.mean))
    np.testing.assert_array_equal(np.asarray(after.sd), np.asarray(before.sd))
    np.testing.assert_array_equal(np.asarray(after.known_user), np.asarray(before.known_user))


def test_rmse_within_the_band_of_the_generating_noise(fitted, synthetic_ratings):
    _, posterior = fitted
    problem = synthetic_ratings
    y, sigma, n = problem.test_ratings, problem.noise_sd, problem.test_ratings.size
    pred = np.asarray(posterior.predict(problem.test_users, problem.test_items).mean)
    rmse = np.sqrt(np.mean((pred - y) ** 2))
    baseline = np.sqrt(np.mean((y - np.mean(np.asarray(problem.train.rating))) ** 2))
    lower = sigma * (1 - 4 * np.sqrt(1 / (2 * n)))
    upper = np.sqrt(sigma**2 + RMSE_UPPER_FRACTION * (baseline**2 - sigma**2))
    assert lower <= rmse <= upper, (rmse, lower, upper)


def test_tracked_pairs_are_the_moments_of_the_draws(fitted, synthetic_ratings):
    """``fit(track=...)`` is honoured by every sampling method (it was
    silently ignored for NUTS and SVI): the tracked moments are those of the
    per-draw predicted means of the pairs."""
    method, posterior = fitted
    if method not in SAMPLING:
        # A point estimate has no draws to stream over: asking is an error, not silence.
        with pytest.raises(ValueError, match="no draws to stream"):
            bayesmf.BayesMF(rank=RANK, method=method, progress_bar=False, **SETTINGS[method]).fit(
                0, synthetic_ratings.train, track=(synthetic_ratings.test_users, synthetic_ratings.test_items))
        return
    tracked = posterior.tracked
    assert tracked is not None
    train = synthetic_ratings.train
    u = train.user_vocab.index(synthetic_ratings.test_users)
    i = train.item_vocab.index(synthetic_ratings.test_items)
    fn = jax.vmap(jax.vmap(predict_mean, in_axes=(0, None, None)), in_axes=(0, None, None))
    means = np.asarray(fn(posterior.draws, u, i))
    assert tracked.count == means.shape[1]
    np.testing.assert_allclose(tracked.mean, means.mean(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tracked.m2 / tracked.count, means.var(1), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(tracked.draw_means, means, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tracked.noise_var, (1 / posterior.draws.noise_precision).mean(1), rtol=1e-5)


@pytest.mark.parametrize("setting", [dict(num_chains=2), dict(thin=2), dict(num_warmup=10)])
def test_svi_rejects_sampler_settings_it_cannot_honour(setting, synthetic_ratings):
    """SVI used to drop num_chains, num_warmup and thin silently."""
    model = bayesmf.BayesMF(rank=RANK, method="svi", num_steps=10, progress_bar=False, **setting)
    with pytest.raises(ValueError, match=f"method='svi' takes no {next(iter(setting))}"):
        model.fit(0, synthetic_ratings.train)


def test_engine_result_info_default_is_not_a_shared_mutable_dict():
    a = EngineResult(draws=None, stats={}, timing={})
    with pytest.raises(TypeError):
        a.info["engine"] = "x"
    assert dict(EngineResult(draws=None, stats={}, timing={}).info) == {}


# --- part 2: the raw results of the sampling engines -----------------------------------


@pytest.fixture(scope="module")
def engine_results(synthetic_ratings):
    """EngineResult of each sampling engine (2 chains where the engine has chains)."""
    data = model_data_from_ratings(synthetic_ratings.train)
    config = ModelConfig(rank=RANK)
    key = jax.random.PRNGKey(3)
    return data, {
        "gibbs": gibbs.sample(key, data, config, num_samples=20, num_warmup=10, num_chains=2, progress_bar=False),
        "nuts": nuts.sample(key, data, config, num_samples=20, num_warmup=150, num_chains=2, progress_bar=False),
        "svi": svi.fit(key, data, config, num_samples=20, num_steps=100, progress_bar=False),
    }


@pytest.mark.parametrize("name", SAMPLING)
def test_engine_result_contract(engine_results, name):
    data, results = engine_results
    result = results[name]
    chains = 1 if name == "svi" else 2
    lead = (chains, 20)
    assert isinstance(result.draws, Params)
    for field, value in result.draws._asdict().items():
        if field in OPTIONAL_FIELDS:  # the plain model has none of them
            assert value is None, field
            continue
        assert isinstance(value, np.ndarray) and value.shape[:2] == lead, field
        assert np.all(np.isfinite(value)), field
    assert result.draws.user_factors.shape == lead + (data.num_users, RANK)
    for key, value in result.stats.items():
        assert value.shape == lead, key
    for key in ("compile_seconds", "fit_seconds"):
        assert np.isfinite(result.timing[key]) and result.timing[key] >= 0, key
    assert result.info["engine"] == name


def test_a_repeated_fit_reuses_its_compiled_sweep(synthetic_ratings, caplog):
    """Each fit builds fresh closures, but the same engine on the same data
    lowers to the same program, which the process keeps
    (:func:`bayesmf.memory.compile_program`): a second Gibbs fit compiles no
    sweep and, with the same key, gives the first fit's draws. A config that
    changes the sweep (hyper-prior values, which the trace bakes in) lowers to
    another program and compiles it."""
    import logging

    data = model_data_from_ratings(synthetic_ratings.train)

    def fit(config):
        caplog.clear()
        with jax.log_compiles(), caplog.at_level(logging.WARNING):
            result = gibbs.sample(jax.random.PRNGKey(11), data, config, num_samples=7, num_warmup=3,
                                  progress_bar=False)
        return result, sum("XLA compilation of jit(gibbs_chunk)" in r.getMessage() for r in caplog.records)

    config = ModelConfig(rank=RANK)
    first, _ = fit(config)
    again, compiled = fit(config)
    assert compiled == 0
    np.testing.assert_array_equal(again.draws.user_factors, first.draws.user_factors)
    other = config.replace(hyper=config.hyper._replace(noise_rate=7.0))
    moved, compiled = fit(other)
    assert compiled == 1
    assert not np.array_equal(moved.draws.noise_precision, first.draws.noise_precision)


# --- part 3: the driver, on a toy engine -------------------------------------------------


class ToyInfo(NamedTuple):
    value: jax.Array
    nonfinite: jax.Array


def toy_step(rng_key, x, context):
    """x' = a x + N(0, 1) (an AR(1) chain); NaN once x passes ``context[1]``."""
    a, blow_up = context
    x = a * x + jax.random.normal(rng_key)
    x = jnp.where(x > blow_up, jnp.nan, x)
    return x, ToyInfo(x, jnp.where(jnp.isfinite(x), 0, 1))


TOY = driver.Engine(
    name="toy",
    init_fn=lambda chain_key: jax.random.normal(jax.random.split(chain_key)[0]),
    step_fn=toy_step,
    track_fn=lambda x, context, pairs: (x + pairs[0].astype(jnp.float32), jnp.asarray(1.0)),
)
CONTEXT = (jnp.asarray(0.5), jnp.asarray(np.inf, jnp.float32))


def toy_reference(rng_key, num_chains, num_warmup, num_samples, thin, chunk):
    """The draws the driver's documented key schedule gives, by a plain loop."""
    out = np.zeros((num_chains, num_samples))
    for c in range(num_chains):
        chain_key = jax.random.fold_in(rng_key, c)
        x = TOY.init_fn(chain_key)
        run_key = jax.random.split(chain_key)[1]
        plan = [(True, n) for n in driver._lengths(num_warmup, chunk)] + [(False, n) for n in driver._lengths(num_samples, chunk)]
        kept = 0
        for index, (warm, length) in enumerate(plan):
            for key in jax.random.split(jax.random.fold_in(run_key, index), length):
                for k in [key] if warm or thin == 1 else jax.random.split(key, thin):
                    x, _ = toy_step(k, x, CONTEXT)
                if not warm:
                    out[c, kept] = float(x)
                    kept += 1
    return out


@pytest.mark.parametrize("chain_method", ["vectorized", "sequential"])
@pytest.mark.parametrize("thin,chunk", [(1, None), (3, 4)])
def test_driver_follows_its_key_schedule(chain_method, thin, chunk):
    key = jax.random.PRNGKey(7)
    run = driver.sample(driver.chain_keys(key, 2), TOY, CONTEXT, num_samples=10, num_warmup=6, thin=thin,
                        chunk=chunk, chain_method=chain_method, progress_bar=False)
    expected = toy_reference(key, 2, 6, 10, thin, run.chunk)
    np.testing.assert_allclose(run.draws, expected, rtol=1e-5, atol=1e-6)
    assert run.infos.value.shape == (2, 10) and run.warmup_infos.value.shape == (2, 6)
    np.testing.assert_allclose(run.infos.value, run.draws)
    assert run.chunk == (chunk or driver.chunk_size(6, 10))
    assert run.timing["compile_seconds"] > 0 and run.timing["sampling_seconds"] > 0


def test_driver_keep_draws_false_returns_the_final_draw_and_streams_moments():
    key = jax.random.PRNGKey(8)
    pairs = (np.array([0, 2]), np.array([1, 1]))
    full = driver.sample(driver.chain_keys(key, 2), TOY, CONTEXT, num_samples=12, num_warmup=4,
                         track_pairs=pairs, progress_bar=False)
    lean = driver.sample(driver.chain_keys(key, 2), TOY, CONTEXT, num_samples=12, num_warmup=4, keep_draws=False,
                         track_pairs=pairs, keep_track_draws=False, progress_bar=False)
    np.testing.assert_allclose(lean.draws[:, 0], full.draws[:, -1])
    means = full.draws[:, :, None] + pairs[0]
    np.testing.assert_allclose(full.tracked.draw_means, means, rtol=1e-6)
    for run in (full, lean):
        np.testing.assert_allclose(run.tracked.mean, means.mean(1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(run.tracked.m2 / 12, means.var(1), rtol=1e-4, atol=1e-6)
    assert lean.tracked.draw_means is None


def test_driver_names_the_block_and_phase_of_a_non_finite_value():
    context = (jnp.asarray(0.5), jnp.asarray(-1e9, jnp.float32))  # every step blows up
    keys = driver.chain_keys(jax.random.PRNGKey(0), 2)
    with pytest.raises(FloatingPointError, match="toy produced a non-finite value in the state block at warmup draw 0 of chain 0"):
        driver.sample(keys, TOY, context, num_samples=4, num_warmup=4, progress_bar=False)
    with pytest.raises(FloatingPointError, match="state block at sampling draw 0 of chain 0; try this"):
        driver.sample(keys, TOY._replace(hint="try this"), context, num_samples=4, chain_method="sequential",
                      progress_bar=False)


class _Killed(Exception):
    pass


@pytest.mark.parametrize("chain_method,kill_at,reached,draws_so_far",
                         [("sequential", 8, (1, 2), "done/draws/0"), ("sequential", 10, (1, 4), "draws/0"),
                          ("vectorized", 5, (0, 5), "draws/0")])
def test_driver_checkpoint_resumes_to_the_same_draws_without_pickle(tmp_path, monkeypatch, chain_method, kill_at,
                                                                    reached, draws_so_far):
    """A run killed after some chunks resumes from its checkpoint file to the
    draws, infos and tracked moments of an uninterrupted run; the file is a
    plain ``numpy.savez`` archive (readable with ``allow_pickle=False``) that
    holds the state, the chunk reached and the draws so far; a finished run
    deletes it; another run's file is refused."""
    key = jax.random.PRNGKey(11)
    keys = driver.chain_keys(key, 2)
    pairs = (np.array([0, 1]), np.array([0, 0]))
    kwargs = dict(num_samples=12, num_warmup=6, thin=2, chunk=3, chain_method=chain_method, track_pairs=pairs,
                  progress_bar=False)
    uninterrupted = driver.sample(keys, TOY, CONTEXT, **kwargs)
    path = tmp_path / "run.ckpt"
    write = driver.write_checkpoint
    saves = []

    def write_then_die(*args):
        write(*args)
        saves.append(1)
        # 6 chunks per chain (2 of warm-up): sequential dies in chain 1's warm-up (8) or draws (10), vectorized
        # in the draws.
        if len(saves) == kill_at:
            raise _Killed

    monkeypatch.setattr(driver, "CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(driver, "write_checkpoint", write_then_die)
    sig = driver.signature(key, dict(kwargs, chain_method=chain_method))
    with pytest.raises(_Killed):
        driver.sample(keys, TOY, CONTEXT, checkpoint=(path, sig), **kwargs)
    with np.load(path, allow_pickle=False) as saved:
        assert (int(saved["group"]), int(saved["chunk"])) == reached
        assert "state/0" in saved and draws_so_far in saved
        assert str(saved["signature"]) == sig
    monkeypatch.setattr(driver, "write_checkpoint", write)
    with pytest.raises(ValueError, match="another run"):
        driver.sample(keys, TOY, CONTEXT, checkpoint=(path, "other"), **kwargs)
    resumed = driver.sample(keys, TOY, CONTEXT, checkpoint=(path, sig), **kwargs)
    np.testing.assert_array_equal(resumed.draws, uninterrupted.draws)
    np.testing.assert_array_equal(resumed.infos.value, uninterrupted.infos.value)
    np.testing.assert_array_equal(resumed.warmup_infos.value, uninterrupted.warmup_infos.value)
    np.testing.assert_array_equal(resumed.tracked.mean, uninterrupted.tracked.mean)
    np.testing.assert_array_equal(resumed.tracked.draw_means, uninterrupted.tracked.draw_means)
    assert not path.exists()
