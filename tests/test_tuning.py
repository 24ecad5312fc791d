"""Precision tuning on validation ratings and the MAP fit on ratings
(:mod:`bayesmf.tuning`): tuning picks a finite best and the noise from the
validation residuals, ``fit_ratings`` refits on all ratings, progress bars
tick, bad input fails clearly, and on MovieLens-100K the tuned MAP reaches
its RMSE band.

The tiny data are those of test_map.py (60 users x 40 movies, rank 3,
continuous ratings), drawn the same way.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayesmf import tuning
from bayesmf.model import FixedPriors, ModelConfig, model_data_from_ratings, predict_mean
from bayesmf.split import validation_split

RANK = 3
# Precisions with ratios lambda / alpha = 0.5 (factors) and 0.25 (offsets):
# mild shrinkage, every rank direction stays in use on the tiny data.
PRIORS = FixedPriors(user_precision=2.0, item_precision=2.0, offset_precision=1.0, noise_precision=4.0)
CONFIG = ModelConfig(rank=RANK, priors="fixed", fixed=PRIORS)
# 180 of the 900 ratings: enough to rank precisions on; the same fraction
# everywhere, so that one compiled loop serves the tuning and fit_ratings tests.
VALIDATION_FRACTION = 0.2


@pytest.fixture(scope="module")
def sim(map_sim):
    return map_sim


@pytest.fixture(scope="module")
def data(sim):
    return model_data_from_ratings(sim.ratings)


# --- tuning and the plug-in noise ----------------------------------------------------------------


@pytest.fixture(scope="module")
def validation(sim):
    split = validation_split(sim.ratings, VALIDATION_FRACTION, 0)
    sub = split.train
    pairs = (sub.user_vocab.index(split.test.user_ids), sub.item_vocab.index(split.test.item_ids))
    return model_data_from_ratings(sub), pairs, split.test.rating


def test_tune_picks_a_finite_best_and_the_noise_from_validation(validation):
    sub_data, pairs, valid_rating = validation
    out = tuning.tune(jax.random.PRNGKey(0), sub_data, pairs, valid_rating, CONFIG, solver="als", search="thorough")
    table = out["table"]
    assert len(table) >= 7 and np.all(np.isfinite(table["valid_rmse"]))
    assert table["valid_rmse"].is_monotonic_increasing
    best = table.iloc[0]
    assert out["validation_rmse"] == pytest.approx(best["valid_rmse"])
    assert out["ratios"]["user"] == pytest.approx(best["user_ratio"])
    priors = out["priors"]
    assert all(np.isfinite(x) and x > 0 for x in priors[:4])
    assert priors.mean_precision == CONFIG.fixed.mean_precision
    # The noise precision is 1 / mean(validation residual^2) of the best fit,
    # recomputed here from its draws.
    params = jax.tree.map(lambda x: jnp.asarray(x[0, 0]), out["result"].draws)
    residual = np.asarray(valid_rating) - np.asarray(predict_mean(params, jnp.asarray(pairs[0]), jnp.asarray(pairs[1])))
    np.testing.assert_allclose(priors.noise_precision, 1.0 / np.mean(residual**2), rtol=1e-5)
    # The ratios (hence the mode) are the tuned ones.
    assert priors.user_precision / priors.noise_precision == pytest.approx(best["user_ratio"])
    assert priors.offset_precision / priors.noise_precision == pytest.approx(best["offset_ratio"])
    # Validation residuals are held out: larger than the training residuals.
    assert out["validation_rmse"] > out["result"].stats["train_rmse"][0, 0]


def test_tune_with_an_explicit_grid(validation):
    sub_data, pairs, valid_rating = validation
    grid = {"factor": [0.3, 3.0], "offset": [0.1, 1.0]}
    out = tuning.tune(jax.random.PRNGKey(0), sub_data, pairs, valid_rating, CONFIG, solver="als", grid=grid)
    assert sorted(zip(out["table"]["user_ratio"], out["table"]["offset_ratio"])) == [
        (0.3, 0.1), (0.3, 1.0), (3.0, 0.1), (3.0, 1.0)
    ]
    assert out["ratios"]["user"] == out["ratios"]["item"]


def test_fit_ratings_refits_on_all_ratings_with_validation_noise(sim):
    ratings = sim.ratings
    result = tuning.fit_ratings(
        jax.random.PRNGKey(0), ratings, CONFIG, solver="als", validation_fraction=VALIDATION_FRACTION
    )
    info = result.info
    assert result.draws.user_factors.shape == (1, 1, ratings.num_users, RANK)
    assert info["noise_source"] == "validation residuals"
    noise_sd = 1.0 / np.sqrt(result.draws.noise_precision[0, 0])
    assert noise_sd == pytest.approx(info["validation_rmse"], rel=1e-5)
    assert noise_sd > result.stats["train_rmse"][0, 0]
    # The returned config carries the tuned precisions, consistent with the draws.
    fixed = info["config"].fixed
    assert fixed.noise_precision == pytest.approx(result.draws.noise_precision[0, 0], rel=1e-6)
    np.testing.assert_allclose(result.draws.user_precision[0, 0], fixed.user_precision * np.eye(RANK), rtol=1e-6)
    assert fixed.user_precision / fixed.noise_precision == pytest.approx(info["tuning"][0]["user_ratio"])
    assert info["num_validation"] == round(VALIDATION_FRACTION * len(ratings))
    assert result.timing["fit_seconds"] >= result.timing["tune_seconds"]


def test_fit_ratings_without_tuning_keeps_the_ratios(sim):
    result = tuning.fit_ratings(
        jax.random.PRNGKey(0), sim.ratings, CONFIG, solver="als", tune=False, validation_fraction=VALIDATION_FRACTION
    )
    ratios = result.info["ratios"]
    assert ratios["user"] == pytest.approx(PRIORS.user_precision / PRIORS.noise_precision)
    assert ratios["offset"] == pytest.approx(PRIORS.offset_precision / PRIORS.noise_precision)
    assert result.info["tuning"] == []
    assert 1.0 / np.sqrt(result.draws.noise_precision[0, 0]) == pytest.approx(result.info["validation_rmse"], rel=1e-5)


# --- progress bars -------------------------------------------------------------------------------


@pytest.mark.parametrize("progress_bar", [True, False])
def test_tune_progress_bar_ticks_once_per_fit(validation, record_bars, progress_bar):
    """``progress_bar`` drives a tqdm bar, one tick per tuning fit; enabled
    means ``disable=None`` (tqdm then stays silent off a terminal)."""
    sub_data, pairs, valid_rating = validation
    bars = record_bars(tuning)
    out = tuning.tune(
        jax.random.PRNGKey(0), sub_data, pairs, valid_rating, CONFIG, solver="als", grid={"factor": [0.3, 3.0]},
        progress_bar=progress_bar,
    )
    (bar,) = bars
    assert bar.kwargs["disable"] is (None if progress_bar else True)
    assert bar.n == len(out["table"]) == 2
    assert bar.closed


def test_fit_ratings_progress_bar_covers_tuning_and_refit(sim, record_bars):
    from bayesmf.engines import map as map_engine

    tune_bars, fit_bars = record_bars(tuning), record_bars(map_engine)
    result = tuning.fit_ratings(
        jax.random.PRNGKey(0), sim.ratings, CONFIG, solver="als", validation_fraction=VALIDATION_FRACTION,
        grid={"factor": [0.3, 3.0]}, progress_bar=True,
    )
    assert [bar.n for bar in tune_bars] == [len(result.info["tuning"])] == [2]
    assert [bar.n for bar in fit_bars] == [1]  # the refit
    assert all(bar.kwargs["disable"] is None and bar.closed for bar in tune_bars + fit_bars)


def test_progress_bar_is_silent_off_a_terminal(validation, capsys):
    """Captured stderr is not a terminal: an enabled bar writes nothing (no
    carriage returns in logs)."""
    sub_data, pairs, valid_rating = validation
    tuning.tune(
        jax.random.PRNGKey(0), sub_data, pairs, valid_rating, CONFIG, solver="als", grid={"factor": [0.3, 3.0]},
        progress_bar=True,
    )
    captured = capsys.readouterr()
    assert captured.err == "" and "\r" not in captured.out


# --- bad input ------------------------------------------------------------------------------------


def test_quick_search_holds_the_offset_ratio_and_fits_fewer_points(sim):
    """The default search holds the offset ratio at the middle of its grid and fits fewer points; the
    thorough one fits the offset line too. Both refit, and record which search chose the ratios."""
    common = dict(validation_fraction=VALIDATION_FRACTION, solver="als")
    quick = tuning.fit_ratings(jax.random.PRNGKey(0), sim.ratings, CONFIG, **common)
    thorough = tuning.fit_ratings(jax.random.PRNGKey(0), sim.ratings, CONFIG, search="thorough", **common)
    assert quick.info["search"] == "quick" and thorough.info["search"] == "thorough"
    offsets = {name: {row["offset_ratio"] for row in r.info["tuning"]} for name, r in (("q", quick), ("t", thorough))}
    middle = tuning.COARSE_GRIDS["offset"][1]
    assert offsets["q"] == {middle} and len(offsets["t"]) >= 3
    assert 3 <= len(quick.info["tuning"]) < len(thorough.info["tuning"])
    assert quick.info["ratios"]["offset"] == middle
    assert tuning.fit_ratings(jax.random.PRNGKey(0), sim.ratings, CONFIG, tune=False, **common).info["search"] is None


def test_bad_input(data, sim):
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="search must be one of"):
        tuning.fit_ratings(key, sim.ratings, CONFIG, search="fast")
    with pytest.raises(ValueError, match="unknown solver"):
        tuning.fit_ratings(key, sim.ratings, CONFIG, solver="sgd")
    with pytest.raises(ValueError, match="degenerate"):
        tuning.fit_ratings(key, sim.ratings, CONFIG.replace(priors="hyper"), solver="lbfgs")
    with pytest.raises(ValueError, match="unknown grid keys"):
        tuning.tune(key, data, ([0], [0]), [3.0], CONFIG, grid={"users": [1.0]})
    with pytest.raises(ValueError, match="no cold rows"):
        tuning.tune(key, data, ([data.num_users], [0]), [3.0], CONFIG)


# --- MovieLens-100K ----------------------------------------------------------------------------------

# Test RMSE of tuned MAP at rank 10 on u1 (unclipped predictions) with the
# default learned factor means: 0.9216 (L-BFGS, seed 0) and 0.9215 (ALS);
# with zero means 0.9513, level with Surprise SVD. The bound is the issue's
# target, 0.935: ~0.013 above the measurement, several times the spread over
# initialization and validation seeds seen with zero means (0.002).
ML100K_RMSE_MAX = 0.935


@pytest.mark.slow
def test_ml100k_u1_rmse_band(ml100k_dir):
    import bayesmf
    from bayesmf.split import make_split

    split = make_split(ml100k_dir, "u1")
    model = bayesmf.BayesMF(rank=10, method="map", progress_bar=False)
    posterior = model.fit(0, split.train)
    prediction = posterior.predict(split.test.user_ids, split.test.item_ids)
    rmse = float(np.sqrt(np.mean((prediction.mean - split.test.rating) ** 2)))
    assert rmse <= ML100K_RMSE_MAX
    assert prediction.noise_sd[0] > posterior.stats["train_rmse"][0, 0]


# --- one compiled loop, the padded tuning fits, the parabolic refinement --------------------------


def test_a_tuned_fit_compiles_one_loop(sim):
    """The tuning fits (sub-train ratings padded with the validation ratings
    at weight 0) and the refit on all ratings (weight 1) run one compiled
    loop, at two tolerances (data of the loop). A max_iters no other test
    uses gives a fresh jitted loop to count the compilations of."""
    from bayesmf.engines import map as map_engine

    config = CONFIG.replace(fixed=PRIORS._replace(mean_precision=2.0))
    result = tuning.fit_ratings(jax.random.PRNGKey(0), sim.ratings, config, validation_fraction=VALIDATION_FRACTION,
                                max_iters=777)
    run = map_engine.make_solver(model_data_from_ratings(sim.ratings), config, "lbfgs", max_iters=777).run
    assert run._cache_size() == 1
    assert len(result.info["tuning"]) >= 5 and result.info["iterations"] > 0


def test_padded_tuning_fits_are_the_unpadded_ones(validation):
    """Padding changes only the arrays' shapes: on a grid, fits to the same
    objective value and validation RMSE. Tolerances: the sums run in another
    order, and round-off moves the L-BFGS iterates along the flat directions
    of the weakly regularized fits (ratio 0.3: 300 parameters on 720
    ratings); even run to the gradient tolerance (ftol 0) their validation
    RMSEs then differ by ~1e-4, at objective values equal to ~1e-6."""
    sub_data, pairs, valid_rating = validation
    grid = {"factor": [0.3, 1.0, 3.0], "offset": [0.1, 1.0]}
    common = dict(solver="lbfgs", grid=grid, shared=True, options=dict(ftol=0.0), progress_bar=False)
    padded = tuning._search(jax.random.PRNGKey(0), sub_data, pairs, valid_rating, CONFIG, **common)
    plain = tuning._search(jax.random.PRNGKey(0), sub_data, pairs, valid_rating, CONFIG, pad_to=(-1, -1), **common)
    assert padded.solver.ctx.weights is not None and plain.solver.ctx.weights is None
    assert padded.solver.ctx.data.nnz == sub_data.nnz + len(valid_rating) and plain.solver.ctx.data.nnz == sub_data.nnz
    assert padded.fits.keys() == plain.fits.keys() and len(padded.fits) == 6
    for key, fit in padded.fits.items():
        other = plain.fits[key]
        np.testing.assert_allclose(fit["info"]["final_value"], other["info"]["final_value"], rtol=1e-5)
        np.testing.assert_allclose(fit["rmse"], other["rmse"], atol=3e-4)


@pytest.mark.parametrize("rows", [2, 3, 500])
def test_alive_directions_follow_the_singular_values(rows):
    """A fit counts as alive when both factor matrices' smallest singular value is above ALIVE_RATIO of the
    largest, as NumPy's SVD gives them (also with fewer rows than the rank, where there are ``rows`` of them)."""
    rng = np.random.default_rng(0)
    rank = 3
    for weakest in (1.5 * tuning.ALIVE_RATIO, 0.5 * tuning.ALIVE_RATIO):
        basis = np.linalg.qr(rng.normal(size=(rows, rank)))[0]  # orthonormal columns (rows x min(rows, rank))
        spread = np.array([3.0, 1.0, 3.0 * weakest])[: basis.shape[1]]
        factors = (basis * spread) @ np.linalg.qr(rng.normal(size=(rank, rank)))[0][: basis.shape[1]]
        sv = np.linalg.svd(factors, compute_uv=False)
        latent = {"user_factors": factors.astype(np.float32), "item_factors": rng.normal(size=(50, rank))}
        assert tuning._all_components_alive(latent) == bool(sv[-1] > tuning.ALIVE_RATIO * sv[0]), (rows, weakest)
