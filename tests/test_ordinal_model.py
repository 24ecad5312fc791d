"""The ordinal likelihood in the model (``ModelConfig(likelihood="ordinal")``): the Gibbs blocks given
``z`` against the z-augmented model, the NumPyro model's cut-point site, the sampler by SBC and
against NUTS, the star predictive (evaluate, predict, exact cold-start masses), files and bad input.

Tolerances are multiples of a Monte Carlo standard error (or a test's false-alarm rate), stated
where they are used; seeds are fixed, so each test is deterministic.
"""

import json

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import sbc_pvalue
from scipy import stats

from bayesmf import BayesMF, load, ordinal, save
from bayesmf.conjugate import row_draw_from, row_posterior
from bayesmf.data import RatingScale, Ratings
from bayesmf.engines import gibbs, nuts
from bayesmf.layout import build_layout, gram_and_rhs
from bayesmf.model import (
    FixedPriors,
    HyperPriors,
    ModelConfig,
    latent_sites,
    log_joint,
    make_model_data,
    numpyro_model,
    predict_mean,
    present_fields,
    star_model_data,
    user_design,
    user_row_prior,
)
from bayesmf.ordinal_model import stars_of
from bayesmf.predictive import pair_moments

# 4 standard errors: a two-sided false alarm rate of 6e-5 per compared number.
Z = 4.0
K = 5
CUTS = np.array([0.0, 0.9, 2.0, 3.0])


def ordinal_problem(seed=0, num_users=30, num_items=20, nnz=300, num_test=5):
    """Stars 0..4 from an ordered probit on a rank-2 latent mean (factor sd 0.7, offsets N(1.5, 0.5^2)),
    as ModelData (``star_model_data``'s conventions), and ``num_test`` held-out index pairs."""
    rng = np.random.default_rng(seed)
    cells = rng.permutation(num_users * num_items)
    users, items = np.divmod(cells[:nnz], num_items)
    lu, rv = rng.normal(0, 0.7, (num_users, 2)), rng.normal(0, 0.7, (num_items, 2))
    m = rng.normal(1.5, 0.5, num_items)
    eta = np.sum(lu[users] * rv[items], 1) + m[items]
    star = np.searchsorted(CUTS, eta + rng.normal(size=nnz)).astype(np.int32)
    data = make_model_data(users, items, star - 0.5, num_users, num_items)._replace(star=jnp.asarray(star))
    test_users, test_items = np.divmod(cells[nnz : nnz + num_test], num_items)
    return data, (test_users.astype(np.int32), test_items.astype(np.int32))


def star_frame(seed=0, num_users=40, num_items=30, nnz=500):
    """The same kind of data as a DataFrame of 1..5 star ratings (distinct pairs)."""
    data, _ = ordinal_problem(seed, num_users, num_items, nnz)
    return pd.DataFrame(dict(user=np.asarray(data.user_index), item=np.asarray(data.item_index),
                             rating=np.asarray(data.star) + 1.0))


CONFIG = ModelConfig(rank=2, likelihood="ordinal", num_stars=K)


# --- the configuration, the data and the NumPyro model ------------------------------------


def test_config_fields_and_sites():
    assert "cutpoints" in present_fields(CONFIG) and "cutpoints" not in present_fields(ModelConfig(rank=2))
    sites = latent_sites(CONFIG)
    assert "cutpoints" in sites and "noise_precision" not in sites


@pytest.mark.parametrize("changes, match", [
    (dict(likelihood="logit"), "unknown likelihood"),
    (dict(likelihood="ordinal", num_stars=5, priors="fixed", fixed=FixedPriors(1.0, 1.0, 1.0, 2.0)),
     "noise_precision = 1"),
    (dict(likelihood="ordinal", num_stars=5, offsets="empirical"), "offsets='estimated'"),
    (dict(likelihood="ordinal", num_stars=2), "num_stars"),
    (dict(num_stars=5), "num_stars"),
    (dict(likelihood="ordinal", cutpoint_prior=ordinal.CutpointPrior(0.0, -1.0)), "cutpoint_prior"),
])
def test_bad_config(changes, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(rank=2, **changes)


def test_als_refuses_the_ordinal_likelihood():
    with pytest.raises(ValueError, match="'map' or 'map-adam'"):
        BayesMF(rank=2, method="als", likelihood="ordinal")


def test_map_fits_the_ordinal_likelihood():
    """Tuned MAP of the ordered probit on stars drawn from a rank-2 model: ordered cut points from c_0 = 0,
    noise held at 1, a stationary point of the model's own log joint, and a predictive mean that beats
    each movie's training mean on held-out stars (measured 0.93 against 1.07 here)."""
    import jax
    import jax.numpy as jnp

    from bayesmf import split
    from bayesmf.engines import map as map_engine
    from bayesmf.engines import map_objective
    from bayesmf.model import star_model_data
    from bayesmf.synthetic import movielens_like

    sim = movielens_like(0, num_users=80, num_items=40, num_ratings=2400, rank=2, min_per_user=10, factor_sd=1.0)
    parts = split.random_holdout(sim.ratings, 0.2, 0)
    post = BayesMF(rank=2, method="map", likelihood="ordinal", progress_bar=False).fit(0, parts.train)
    cuts = np.asarray(post.draws.cutpoints[0, 0])
    assert cuts[0] == 0.0 and np.all(np.diff(cuts) > 0)
    config = post.config
    assert config.fixed.noise_precision == 1.0
    # Run to a tight tolerance from the tuned fit (the tuned refit stops at the tuning tolerance): the
    # gradient of the model's own negative log joint, in the cut points themselves, vanishes there.
    data = star_model_data(parts.train)
    fit = map_engine.fit(jax.random.PRNGKey(0), data, config, init_params=post.draws, tol=1e-7, ftol=0.0,
                         max_iters=3000)
    names = ("user_factors", "item_factors", "item_offsets", "user_mean", "item_mean", "cutpoints")
    latent = {name: jnp.asarray(getattr(fit.draws, name)[0, 0]) for name in names}
    # The scale of "vanishes": a random start's gradient, 0.25 here (the tuned fit's own stop depends
    # on its tolerance and start, so it is no yardstick: its norm was 4e-4 to 1e-3 by the start
    # drawn). The tight run gets to 2.6e-5, float32 round-off of this per-rating objective's gradient.
    start = map_engine.init_latent(jax.random.PRNGKey(0), data, config)
    start = {name: start[name] for name in names}

    def grad_norm(values):  # c_0 = 0 is not free: its derivative is left out
        grad = jax.grad(map_objective.neg_log_joint)(values, data, config)
        grad["cutpoints"] = grad["cutpoints"][1:]
        return float(sum(jnp.sum(g**2) for g in jax.tree.leaves(grad))) ** 0.5

    assert grad_norm(latent) < 2e-4 and grad_norm(latent) < 1e-3 * grad_norm(start)
    rmse = float(post.evaluate(parts.test)["rmse"].iloc[0])
    train = parts.train
    means = pd.Series(np.asarray(train.rating)).groupby(np.asarray(train.item_ids)).mean()
    baseline = means.reindex(np.asarray(parts.test.item_ids)).fillna(float(np.mean(train.rating))).to_numpy()
    baseline_rmse = float(np.sqrt(np.mean((np.asarray(parts.test.rating) - baseline) ** 2)))
    assert rmse < baseline_rmse - 0.05, (rmse, baseline_rmse)


def _cold_ordinal_problem():
    """Stars of a rank-3 model (300 users, 150 movies, 12,000 ratings) and the tuning's default config
    with user offsets, for cold MAP fits."""
    from bayesmf.synthetic import movielens_like

    sim = movielens_like(0, num_users=300, num_items=150, num_ratings=12000, rank=3, min_per_user=10, factor_sd=1.0)
    config = BayesMF(rank=3, method="map", likelihood="ordinal", user_offsets=True).config.replace(num_stars=K)
    return star_model_data(sim.ratings), config


def test_cut_point_scales_follow_their_curvature():
    """A free cut point f_i (moving cuts c_{i+1}.. by Delta_i = exp(f_i)) gets the Jacobi scale
    sqrt(h_ref / h) with h = alpha Delta_i^2 n_{>i}, the ratings of a star above i: written out in
    NumPy, and within a factor of 2 of the objective's exact Hessian diagonal (times n) at a cold start.
    h counts one unit of curvature per rating, as for a Gaussian; the ordered probit's own is near that
    and above it for a star whose interval is narrow (measured h / exact 0.63-0.79 here, 0.90-0.96 on
    MovieLens-100K u5). A Jacobi scale needs only the order of magnitude: on u5 (rank 10, all features)
    cut curvatures taken 0.05 to 1 times h gave cold fits of 219-224 iterations."""
    from bayesmf.engines import map as map_engine
    from bayesmf.engines import map_objective

    data, config = _cold_ordinal_problem()
    start = map_objective.to_optimizer(map_engine.init_latent(jax.random.PRNGKey(0), data, config), data, config)
    precisions = map_objective.precision_vector(config.fixed, jnp.float32, config)
    scales = map_objective.jacobi_scales(start, data, config, precisions)
    star = np.asarray(data.star)
    above = np.array([np.sum(star > i) for i in range(K - 2)], np.float64)
    h = config.fixed.noise_precision * np.exp(2.0 * np.asarray(start["cutpoints"], np.float64)) * above
    k_item = np.mean(np.asarray(start["item_factors"], np.float64) ** 2)
    reference = np.mean(np.asarray(data.user_degree) * k_item + config.fixed.user_precision)
    np.testing.assert_allclose(scales["cutpoints"], np.sqrt(reference / h), rtol=1e-5)  # float32 sums
    objective = map_objective.objective_fn(data, config, precisions)
    hessian = jax.hessian(lambda free: objective(dict(start, cutpoints=free)))(start["cutpoints"])
    ratio = h / (np.diag(np.asarray(hessian)) * data.nnz)
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio


def test_a_cold_ordinal_fit_reaches_its_mode_in_few_iterations():
    """With the cut points' scales a cold fit at the default tolerances took 81 iterations here (73-81
    over seeds 0-2 of the data) to the objective of a run with no ftol (to 1e-7). Unscaled, the cut
    points' curvature was 290-500 times the users' mean here (~3,600 times on MovieLens-100K u5) and
    the same fits took 274-299 iterations, stopping 0.5e-6 to 9e-6 per rating above their own tight
    runs; 150 and 1e-7 separate the two."""
    from bayesmf.engines import map as map_engine

    data, config = _cold_ordinal_problem()
    fit = map_engine.fit(jax.random.PRNGKey(0), data, config)
    tight = map_engine.fit(jax.random.PRNGKey(0), data, config, tol=1e-7, ftol=0.0, max_iters=3000)
    assert fit.info["iterations"] < 150
    assert float(fit.stats["objective"][0, 0]) - float(tight.stats["objective"][0, 0]) < 1e-7


def test_stars_of_the_scale_and_off_grid_ratings():
    scale = RatingScale(0.5, 5.0, 0.5)
    assert stars_of([0.5, 1.0, 5.0, 3.5], scale).tolist() == [0, 1, 9, 6]
    with pytest.raises(ValueError, match="off the star grid"):
        stars_of([1.0, 2.25], scale)
    with pytest.raises(ValueError, match="off the star grid"):
        stars_of([5.5], scale)
    with pytest.raises(ValueError, match="star scale with a step"):
        stars_of([1.0], RatingScale(1.0, 5.0, None))


def test_fit_refuses_bad_ratings():
    frame = star_frame(nnz=100)
    model = BayesMF(rank=2, likelihood="ordinal", num_samples=2, num_warmup=1, progress_bar=False)
    continuous = frame.assign(rating=frame.rating + 0.01 * np.arange(len(frame)) / len(frame))
    with pytest.raises(ValueError, match="star scale with a step"):
        model.fit(0, continuous)
    # (A Ratings with a star scale holds only ratings on its grid: Ratings itself refuses the others.)
    data, _ = ordinal_problem(nnz=50)
    with pytest.raises(ValueError, match="stars"):
        gibbs.sample(jax.random.PRNGKey(0), data._replace(star=None), CONFIG, num_samples=2, progress_bar=False)


def test_star_model_data_holds_the_stars():
    frame = star_frame(nnz=100)
    ratings = Ratings.from_arrays(frame.user.to_numpy(), frame.item.to_numpy(), frame.rating.to_numpy())
    data = star_model_data(ratings)
    np.testing.assert_array_equal(np.asarray(data.star), np.asarray(ratings.rating) - 1)
    np.testing.assert_allclose(np.asarray(data.rating), np.asarray(data.star) - 0.5)


def test_log_joint_scores_the_marginal_ordered_probit_and_the_cut_prior():
    """Changing only the cut points changes the log joint by the change in the marginal
    likelihood plus the change in log p(cuts[1:]) = log_prior(free) - sum(free)."""
    with jax.enable_x64(True):
        data, _ = ordinal_problem(nnz=80)
        state = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), gibbs.init(jax.random.PRNGKey(1), data, CONFIG, 0.5))
        eta = predict_mean(state, data.user_index, data.item_index)

        def expected(cuts):
            free = ordinal.free_from_cuts(cuts)
            return ordinal.marginal_loglik(cuts, eta, data.star) + ordinal.log_prior(free) - jnp.sum(free)

        a, b = jnp.asarray([0.0, 1.0, 2.0, 3.0]), jnp.asarray([0.0, 0.7, 2.5, 2.9])
        got = log_joint(state._replace(cutpoints=b), data, CONFIG) - log_joint(state._replace(cutpoints=a), data, CONFIG)
        np.testing.assert_allclose(float(got), float(expected(b) - expected(a)), rtol=1e-10)


# --- the Gibbs sweep --------------------------------------------------------------------


def test_user_block_given_z_is_the_z_augmented_models_conditional():
    """Given z, the user rows' conditional is the Gaussian model's with z as the ratings and unit
    noise: (1) that closed form against the log density of the z-augmented model (the Gaussian
    model at noise precision 1, ratings z: the cells' indicators are constant in L_u) up to a
    constant, (2) the sweep's user rows are exactly that conditional's draw from the sweep's
    variates and its z, and its noise precision stays 1 (no alpha draw)."""
    with jax.enable_x64(True):
        data, _ = ordinal_problem(nnz=80)
        data = jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, data)
        state = gibbs.init(jax.random.PRNGKey(1), data, CONFIG, 0.5)
        key = jax.random.PRNGKey(7)
        normals, uniforms = gibbs.sweep_variates(key, data, CONFIG)
        cut_state, z, _ = gibbs.ordinal_step(normals, uniforms, state, data, CONFIG)
        cuts = np.r_[-np.inf, np.asarray(cut_state.cutpoints), np.inf]
        star = np.asarray(data.star)
        assert np.all((cuts[star] < np.asarray(z)) & (np.asarray(z) <= cuts[star + 1]))
        layout = build_layout(np.asarray(data.user_index), np.asarray(data.item_index), data.num_users,
                              data.num_items, "bucket")
        gram, rhs = gram_and_rhs(layout, user_design(state), z - state.item_offsets[data.item_index])
        post = row_posterior(*user_row_prior(state), gram, rhs, jnp.asarray(1.0))
        u, d = 4, 2
        cov = np.linalg.inv(np.asarray(post.chol[u] @ post.chol[u].T))
        values = np.asarray(post.mean[u]) + np.random.default_rng(2).normal(size=(5, d))
        cond = stats.multivariate_normal(np.asarray(post.mean[u]), cov).logpdf(values)
        gaussian = ModelConfig(rank=2)
        z_data = data._replace(rating=z, star=None)
        joint = np.array([float(log_joint(state._replace(user_factors=state.user_factors.at[u].set(x), cutpoints=None),
                                          z_data, gaussian)) for x in values])
        np.testing.assert_allclose(cond - cond[0], joint - joint[0], rtol=1e-8, atol=1e-8)

        new, info = gibbs.step(key, state, gibbs.build_context(data, "bucket", 2), CONFIG)
        expected = row_draw_from(normals["users"], *user_row_prior(state), gram, rhs, jnp.asarray(1.0))
        np.testing.assert_allclose(np.asarray(new.user_factors), np.asarray(expected), rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(np.asarray(new.cutpoints), np.asarray(cut_state.cutpoints))
        assert float(new.noise_precision) == 1.0 and int(info.nonfinite) == 0
        assert 0.0 <= float(info.cutpoint_accept) <= 1.0


def _latent_mean(states, u, v):
    return jnp.sum(states.user_factors[..., u, :] * states.item_factors[..., v, :], -1) + states.item_offsets[..., v]


# SBC's model: tighter hyperpriors than the defaults (the truths come from the same prior, so the
# check stays exact). With the default ones (offset precision Gamma(1, 0.1), Wishart nu0 = rank,
# cut log increments N(0, 1)) truths reach latent scales of 10-20 on 40 ratings, and the chains
# move along the joint scale of the cut points and the latent means slowly: at 400 sweeps the
# ranks of c_2 piled up at the top (counts [20 23 31 31 95]), at 4,000 less so ([28 31 41 45 55]).
SBC_CONFIG = ModelConfig(
    rank=2, likelihood="ordinal", num_stars=K, cutpoint_prior=ordinal.CutpointPrior(0.0, 0.5),
    hyper=HyperPriors(nu0_extra=8.0, w0_scale=0.4, offset_shape=10.0, offset_rate=2.5, offset_mean_sd=0.5),
)


@pytest.mark.slow
def test_simulation_based_calibration():
    """SBC (Talts et al. 2018) of the ordinal Gibbs sampler: truths (cut points, factors,
    offsets, hyperparameters) from the prior and stars given them (the NumPyro model's prior
    predictive); the rank of each true quantity among 19 thinned posterior draws is uniform.
    Quantities: the free cut points c_1, c_2, c_3 and one prediction's latent mean
    L_u . R_v + m_v (rotation invariant). Chi-square on 5 bins at p < 1e-3 each: a
    family-wise false-alarm rate of 0.4%. 3,000 sweeps thinned by 150 (see SBC_CONFIG);
    at 400 sweeps thinned by 20 c_2's p was 0.024, at 1,000 by 50 0.08, here 0.27."""
    from numpyro.infer import Predictive

    num_reps, num_sweeps, thin = 200, 3000, 150
    config = SBC_CONFIG
    base, _ = ordinal_problem(seed=24, num_users=8, num_items=6, nnz=40)
    base = base._replace(global_mean=jnp.asarray(1.5, jnp.float32), empirical_offsets=jnp.full(6, 1.5, jnp.float32))
    truths = Predictive(numpyro_model, num_samples=num_reps)(jax.random.PRNGKey(25), base, config, observed=False)
    u, v = int(base.user_index[0]), int(base.item_index[0])
    true_pred = np.asarray(jnp.sum(truths["user_factors"][:, u] * truths["item_factors"][:, v], -1)
                           + truths["item_offsets"][:, v])
    ctx = gibbs.build_context(base, "dense")

    def fit(key, stars):
        data = base._replace(star=stars.astype(jnp.int32))
        state = gibbs.init(jax.random.fold_in(key, 0), data, config)
        run_ctx = ctx._replace(data=data)

        def body(s, k):
            s, _ = gibbs.step(k, s, run_ctx, config)
            return s, (s.cutpoints[1:], _latent_mean(s, u, v))

        _, out = jax.lax.scan(body, state, jax.random.split(jax.random.fold_in(key, 1), num_sweeps))
        return tuple(x[::thin] for x in out)

    cuts, pred = jax.jit(jax.vmap(fit))(jax.random.split(jax.random.PRNGKey(26), num_reps), truths["obs"])
    checks = [(f"cutpoints[{k + 1}]", cuts[..., k], truths["cutpoints"][:, k + 1]) for k in range(K - 2)]
    for name, draws, truth in checks + [("latent mean", pred, true_pred)]:
        assert np.all(np.isfinite(np.asarray(draws)))
        counts, p = sbc_pvalue(draws, truth)  # 19 kept draws after the first
        assert p > 1e-3, f"SBC ranks of {name} not uniform: counts {counts}, p = {p:.2g}"


def _star_probabilities(draws, pairs):
    """Per-draw star masses of held-out pairs, (chain, draw, n * K), float64."""
    eta = jax.vmap(jax.vmap(predict_mean, in_axes=(0, None, None)), in_axes=(0, None, None))(
        jax.tree.map(jnp.asarray, draws), pairs[0], pairs[1])
    masses = ordinal.star_masses(jnp.asarray(draws.cutpoints)[:, :, None, :], eta[..., None])[..., 0, :]
    return np.asarray(masses, np.float64).reshape(masses.shape[:2] + (-1,))


@pytest.mark.slow
def test_nuts_and_gibbs_agree_on_the_star_probabilities():
    """Both engines sample the one NumPyro model's posterior, so their posterior means of the
    held-out pairs' star probabilities, and of the cut points, differ by Monte Carlo error
    only: |diff| <= 4 sqrt(mcse_a^2 + mcse_b^2), each MCSE from its own ESS (ArviZ)."""
    data, pairs = ordinal_problem(seed=3, num_test=3)
    kw = dict(num_chains=2, progress_bar=False)
    ref = gibbs.sample(jax.random.PRNGKey(1), data, CONFIG, num_samples=600, num_warmup=100, **kw)
    run = nuts.sample(jax.random.PRNGKey(2), data, CONFIG, num_samples=150, num_warmup=150, **kw)
    for a, b in ((_star_probabilities(ref.draws, pairs), _star_probabilities(run.draws, pairs)),
                 (np.asarray(ref.draws.cutpoints[..., 1:], np.float64), np.asarray(run.draws.cutpoints[..., 1:], np.float64))):
        bound = Z * np.sqrt(np.square(np.asarray(az.mcse(a))) + np.square(np.asarray(az.mcse(b))))
        diff = np.abs(a.mean(axis=(0, 1)) - b.mean(axis=(0, 1)))
        assert np.all(diff <= bound), (diff, bound)


# --- the star predictive, files ------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    frame = star_frame()
    post = BayesMF(rank=2, likelihood="ordinal", num_samples=60, num_warmup=60, progress_bar=False).fit(0, frame[:450])
    return post, frame[450:]


def test_evaluate_scores_the_star_distribution(fitted):
    post, test = fitted
    table = post.evaluate(test)
    row = table.loc[("all", "all")]
    assert np.isnan(row["nll"]) and np.isfinite(row["star_nll"])
    np.testing.assert_allclose(row["crps"], row["rps"] * 1.0)  # step 1: the star CRPS in rating units
    for tag in ("50", "80", "90", "95"):
        assert row[f"width_{tag}"] >= 0 and 0.0 <= row[f"coverage_{tag}"] <= 1.0
    pred = post.predict(test.user.to_numpy(), test.item.to_numpy(), prob=0.9)
    y = test.rating.to_numpy()
    np.testing.assert_allclose(row["rmse"], np.sqrt(np.mean((y - pred.mean) ** 2)), rtol=1e-12)
    np.testing.assert_allclose(row["coverage_90"], np.mean((pred.lower <= y) & (y <= pred.upper)), rtol=1e-12)


def test_predict_gives_star_distributions(fitted):
    post, _ = fitted
    pred = post.predict([0, 1, 12345], [0, 3, 4], prob=0.8)
    values = np.arange(1.0, 6.0)
    np.testing.assert_array_equal(pred.star_values, values)
    np.testing.assert_allclose(pred.star_masses.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(pred.mean, pred.star_masses @ values, rtol=1e-12)
    var = pred.star_masses @ values**2 - pred.mean**2
    np.testing.assert_allclose(pred.sd, np.sqrt(var), rtol=1e-10)
    np.testing.assert_allclose(pred.epistemic_sd**2 + pred.noise_sd**2, pred.sd**2, rtol=1e-8)
    cdf = np.cumsum(pred.star_masses, axis=1)
    lo, hi = (pred.lower - 1).astype(int), (pred.upper - 1).astype(int)
    rows = np.arange(3)
    assert np.all(cdf[rows, hi] >= 0.9 - 1e-12) and np.all((lo == 0) | (cdf[rows, lo - 1] < 0.1))
    np.testing.assert_array_equal(pred.interval(0.8)[0], pred.lower)
    assert not pred.known_user[2]


def test_cold_start_masses_are_exact(fitted):
    """A new user's star masses under one draw are Phi((c_k - m)/sqrt(1 + v)) differences, with
    (m, v) the latent mean's cold-start moments: against the average of the ordered-probit masses
    over 40,000 draws of the user's factors from the prior, within 5 standard errors."""
    post, _ = fitted
    with jax.enable_x64(True):
        draw = jax.tree.map(lambda x: jnp.asarray(x[0, -1], jnp.float64), post.draws)
        m, v = pair_moments(draw, jnp.asarray([-1]), jnp.asarray([2]))
        exact = np.asarray(ordinal.normal_star_masses(draw.cutpoints, m, v))[0]
        chol = jnp.linalg.cholesky(jnp.linalg.inv(draw.user_precision))
        factors = draw.user_mean + jax.random.normal(jax.random.PRNGKey(0), (40_000, 2), jnp.float64) @ chol.T
        eta = factors @ draw.item_factors[2] + draw.item_offsets[2]
        sampled = np.asarray(ordinal.star_masses(draw.cutpoints, eta))
        se = sampled.std(axis=0) / np.sqrt(sampled.shape[0])
        assert np.all(np.abs(sampled.mean(axis=0) - exact) <= 5 * se + 1e-12), (sampled.mean(axis=0), exact, se)
        pred = post.predict([12345], [post.item_vocab.ids[2]])
        flat = post.flat_draws()
        per_draw = []
        for s in range(flat.cutpoints.shape[0]):
            d = jax.tree.map(lambda x: jnp.asarray(x[s], jnp.float64), flat)
            m, v = pair_moments(d, jnp.asarray([-1]), jnp.asarray([2]))
            per_draw.append(np.asarray(ordinal.normal_star_masses(d.cutpoints, m, v))[0])
        np.testing.assert_allclose(pred.star_masses[0], np.mean(per_draw, axis=0), rtol=1e-5, atol=1e-7)


def test_saved_and_loaded_with_the_cutpoints(fitted, tmp_path):
    post, test = fitted
    path = tmp_path / "ordinal.nc"
    save(post, path)
    back = load(path)
    assert back.config == post.config
    np.testing.assert_array_equal(back.draws.cutpoints, post.draws.cutpoints)
    a = post.predict(test.user.to_numpy()[:5], test.item.to_numpy()[:5])
    b = back.predict(test.user.to_numpy()[:5], test.item.to_numpy()[:5])
    np.testing.assert_array_equal(a.star_masses, b.star_masses)


def test_files_without_a_likelihood_are_gaussian():
    from bayesmf.storage import _config_from_json  # the file format's reader (older files lack the key)
    from bayesmf.encoding import to_jsonable

    raw = to_jsonable(ModelConfig(rank=3))
    for key in ("likelihood", "num_stars", "cutpoint_prior"):
        raw.pop(key)
    assert _config_from_json(json.dumps(raw)) == ModelConfig(rank=3)


def test_ordinal_with_user_offsets_runs():
    """The parts compose: with user offsets the blocks take z less b_u as well; a short run stays finite."""
    data, _ = ordinal_problem(nnz=120)
    config = CONFIG.replace(user_offsets=True)
    run = gibbs.sample(jax.random.PRNGKey(0), data, config, num_samples=20, num_warmup=10, progress_bar=False)
    assert np.all(np.isfinite(run.draws.user_offsets)) and np.all(np.diff(run.draws.cutpoints, axis=-1) > 0)
    assert np.all(run.draws.noise_precision == 1.0)


def test_ranking_uses_the_star_distribution(fitted):
    """recommend on an ordinal model scores from the star distribution: prob_above is the mass of
    the stars at or above the threshold, mean the expected star (Posterior.predict's), and a
    fold-in (not built for the ordinal likelihood) is refused with a clear error."""
    from bayesmf import fold_in_users, recommend

    post, _ = fitted
    user = np.asarray(post.user_vocab.ids)[0]
    top = recommend(post, user, k=3, strategy="prob_above", threshold=4.0, exclude_seen=False)
    pred = post.predict(np.repeat(user, 3), top["item"].to_numpy())
    expected = pred.star_masses[:, pred.star_values >= 4.0].sum(axis=1)
    np.testing.assert_allclose(top["score"].to_numpy(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(top["mean"].to_numpy(), pred.mean, rtol=1e-9)
    top_mean = recommend(post, user, k=3, strategy="mean", exclude_seen=False)
    assert np.all(np.diff(top_mean["score"].to_numpy()) <= 0) and top_mean["score"].max() <= pred.star_values[-1]
    with pytest.raises(ValueError, match="ordinal"):
        fold_in_users(post, [([], [])])
