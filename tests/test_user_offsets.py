"""User offsets (``ModelConfig(user_offsets=True)``): the Gibbs blocks against the model, the
sampler against NUTS and by SBC, and what the offsets change downstream (cold start, fold-in,
ranking, files, MAP).

Tolerances are multiples of a Monte Carlo standard error (or a test's false-alarm rate),
stated where they are used; seeds are fixed, so each test is deterministic.
"""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from bayesmf import BayesMF, fold_in_users, load, recommend, save
from bayesmf.conjugate import row_posterior
from bayesmf.engines import gibbs, nuts
from bayesmf.layout import build_layout, gram_and_rhs
from bayesmf.model import (
    FixedPriors,
    ModelConfig,
    Params,
    log_joint,
    numpyro_model,
    predict_mean,
    user_design,
    user_row_prior,
)
from bayesmf.predictive import pair_moments
from conftest import sbc_pvalue

# 4 standard errors: a two-sided false alarm rate of 6e-5 per compared number.
Z = 4.0


def _float64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


# --- the Gibbs blocks against the NumPyro model -----------------------------------------


@pytest.mark.parametrize("priors", ["hyper", "fixed"])
def test_user_row_block_matches_model_log_density(priors, make_tiny_data):
    """log p((L_u, b_u) | rest) in closed form (design (R_v, 1), prior N((mu_L, 0),
    blockdiag(Lambda_L, tau_b)^-1)) and the NumPyro model's log joint differ by a
    constant in the row: compare differences over several values, in float64."""
    with jax.enable_x64(True):
        data = make_tiny_data(seed=21)
        data = data._replace(rating=data.rating.astype(jnp.float64))
        config = ModelConfig(rank=2, priors=priors, user_offsets=True)
        state = _float64(gibbs.init(jax.random.PRNGKey(1), data, config, scale=0.5))
        state = state._replace(user_offsets=jnp.linspace(-0.5, 0.5, data.num_users),
                               user_offset_precision=jnp.asarray(3.0) if priors == "hyper" else state.user_offset_precision)
        layout = build_layout(np.asarray(data.user_index), np.asarray(data.item_index), data.num_users, data.num_items,
                              "bucket")
        gram, rhs = gram_and_rhs(layout, user_design(state), data.rating - state.item_offsets[data.item_index])
        post = row_posterior(*user_row_prior(state), gram, rhs, state.noise_precision)
        u, d = 3, 2
        cov = np.linalg.inv(np.asarray(post.chol[u] @ post.chol[u].T))
        values = np.asarray(post.mean[u]) + np.random.default_rng(2).normal(size=(5, d + 1))
        cond = stats.multivariate_normal(np.asarray(post.mean[u]), cov).logpdf(values)
        joint = np.array([
            float(log_joint(state._replace(user_factors=state.user_factors.at[u].set(x[:d]),
                                           user_offsets=state.user_offsets.at[u].set(x[d])), data, config))
            for x in values
        ])
        np.testing.assert_allclose(cond - cond[0], joint - joint[0], rtol=1e-8, atol=1e-8)


def test_item_block_sees_ratings_less_user_offsets(make_tiny_data):
    """The (R_v, m_v) block's response is r - b_u: its closed form against the model."""
    with jax.enable_x64(True):
        data = make_tiny_data(seed=22)
        data = data._replace(rating=data.rating.astype(jnp.float64))
        config = ModelConfig(rank=2, user_offsets=True)
        state = _float64(gibbs.init(jax.random.PRNGKey(4), data, config, scale=0.5))
        state = state._replace(user_offsets=jnp.linspace(-1.0, 1.0, data.num_users))
        d = 2
        layout = build_layout(np.asarray(data.item_index), np.asarray(data.user_index), data.num_items, data.num_users,
                              "bucket")
        design = jnp.concatenate([state.user_factors, jnp.ones((data.num_users, 1))], 1)
        prior = jnp.zeros((d + 1, d + 1)).at[:d, :d].set(state.item_precision).at[d, d].set(state.offset_precision)
        mean0 = jnp.concatenate([state.item_mean, state.offset_mean[None]])
        gram, rhs = gram_and_rhs(layout, design, data.rating - state.user_offsets[data.user_index])
        post = row_posterior(prior, mean0, gram, rhs, state.noise_precision)
        v = 2
        cov = np.linalg.inv(np.asarray(post.chol[v] @ post.chol[v].T))
        values = np.asarray(post.mean[v]) + np.random.default_rng(5).normal(size=(5, d + 1))
        cond = stats.multivariate_normal(np.asarray(post.mean[v]), cov).logpdf(values)
        joint = np.array([
            float(log_joint(state._replace(item_factors=state.item_factors.at[v].set(x[:d]),
                                           item_offsets=state.item_offsets.at[v].set(x[d])), data, config))
            for x in values
        ])
        np.testing.assert_allclose(cond - cond[0], joint - joint[0], rtol=1e-8, atol=1e-8)


def test_offset_precision_draw_is_its_gamma_conditional(make_tiny_data):
    """tau_b | b ~ Gamma(a + N/2, b0 + sum b_u^2 / 2), drawn after the user rows in a
    sweep: tau_b times its rate (from the same sweep's b) is Gamma(a + N/2, 1). Its
    mean and variance over 20,000 sweeps from one state within 4 MCSE; and the
    model's log density in tau_b differs from the Gamma's by a constant."""
    data = make_tiny_data(seed=23)
    config = ModelConfig(rank=2, user_offsets=True)
    h = config.hyper
    state = gibbs.init(jax.random.PRNGKey(6), data, config, scale=0.5)
    ctx = gibbs.build_context(data, "dense")
    n = 20_000
    draws = jax.vmap(lambda k: gibbs.step(k, state, ctx, config)[0])(jax.random.split(jax.random.PRNGKey(7), n))
    shape = h.user_offset_shape + 0.5 * data.num_users
    rate = h.user_offset_rate + 0.5 * np.sum(np.asarray(draws.user_offsets, np.float64) ** 2, axis=1)
    g = np.asarray(draws.user_offset_precision, np.float64) * rate
    # Gamma(k, 1): mean k, variance k; MCSE of the mean sqrt(k / n), of the
    # variance sqrt((mu4 - k^2) / n) with mu4 = 3 k^2 + 6 k.
    assert abs(g.mean() - shape) <= Z * np.sqrt(shape / n)
    assert abs(g.var() - shape) <= Z * np.sqrt((3 * shape**2 + 6 * shape - shape**2) / n)
    with jax.enable_x64(True):
        data64 = data._replace(rating=data.rating.astype(jnp.float64))
        params = _float64(state)._replace(user_offsets=jnp.linspace(-0.4, 0.6, data.num_users))
        b = np.asarray(params.user_offsets)
        values = np.array([0.5, 1.0, 2.0, 4.0, 9.0])
        cond = stats.gamma(shape, scale=1.0 / (h.user_offset_rate + 0.5 * np.sum(b**2))).logpdf(values)
        joint = np.array([float(log_joint(params._replace(user_offset_precision=jnp.asarray(t)), data64, config))
                          for t in values])
        np.testing.assert_allclose(cond - cond[0], joint - joint[0], rtol=1e-8, atol=1e-8)


# --- the whole sampler ------------------------------------------------------------------


def _prediction(states, u, v):
    return (jnp.sum(states.user_factors[..., u, :] * states.item_factors[..., v, :], -1)
            + states.item_offsets[..., v] + states.user_offsets[..., u])


@pytest.mark.slow
def test_simulation_based_calibration(make_tiny_data):
    """SBC (Talts et al. 2018) of the sampler with user offsets: for truths from the
    prior and data given them, the rank of each true quantity among the posterior
    draws is uniform. Quantities: tau_b, one user's offset and one prediction
    L_u . R_v + m_v + b_u (rotation invariant). Chi-square on 5 bins at p < 1e-3
    each: a family-wise false-alarm rate of 0.3%."""
    from numpyro.infer import Predictive

    num_reps, num_sweeps, thin = 200, 400, 20
    base = make_tiny_data(seed=24, num_users=8, num_items=6, nnz=30)
    base = base._replace(global_mean=jnp.asarray(3.0, jnp.float32), empirical_offsets=jnp.full(6, 3.0, jnp.float32))
    config = ModelConfig(rank=2, user_offsets=True)
    truths = Predictive(numpyro_model, num_samples=num_reps)(jax.random.PRNGKey(25), base, config, observed=False)
    u, v = int(base.user_index[0]), int(base.item_index[0])
    true_pred = np.asarray(_prediction(Params(**{k: truths.get(k) for k in ("user_factors", "item_factors",
                                                                            "item_offsets", "user_offsets")},
                                              **{k: None for k in ("noise_precision", "user_mean", "user_precision",
                                                                   "item_mean", "item_precision", "offset_mean",
                                                                   "offset_precision")}), u, v))
    ctx = gibbs.build_context(base, "dense")

    def fit(key, ratings):
        data = base._replace(rating=ratings)
        state = gibbs.init(jax.random.fold_in(key, 0), data, config)
        run_ctx = ctx._replace(data=data)

        def body(s, k):
            s, _ = gibbs.step(k, s, run_ctx, config)
            return s, (s.user_offset_precision, s.user_offsets[u], _prediction(s, u, v))

        _, out = jax.lax.scan(body, state, jax.random.split(jax.random.fold_in(key, 1), num_sweeps))
        return tuple(x[::thin] for x in out)

    tau, b_u, pred = jax.jit(jax.vmap(fit))(jax.random.split(jax.random.PRNGKey(26), num_reps), truths["obs"])
    for name, draws, truth in (("user_offset_precision", tau, truths["user_offset_precision"]),
                               ("user_offsets[u]", b_u, truths["user_offsets"][:, u]),
                               ("prediction", pred, true_pred)):
        assert np.all(np.isfinite(np.asarray(draws)))
        counts, p = sbc_pvalue(draws, truth)
        assert p > 1e-3, f"SBC ranks of {name} not uniform: counts {counts}, p = {p:.2g}"


@pytest.mark.slow
def test_nuts_and_gibbs_agree_on_the_predictive_mean(make_tiny_problem):
    """Both engines sample the same posterior (the one NumPyro model), so their
    posterior means of held-out predictions and of the offsets' sd 1/sqrt(tau_b)
    differ by Monte Carlo error only: |diff| <= 4 sqrt(mcse_a^2 + mcse_b^2), each
    MCSE from its own ESS (ArviZ)."""
    data, pairs = make_tiny_problem(num_test=5)
    config = ModelConfig(rank=2, user_offsets=True)
    kw = dict(num_chains=2, progress_bar=False)
    ref = gibbs.sample(jax.random.PRNGKey(1), data, config, num_samples=600, num_warmup=100, **kw)
    run = nuts.sample(jax.random.PRNGKey(2), data, config, num_samples=150, num_warmup=150, **kw)
    fn = jax.vmap(jax.vmap(predict_mean, in_axes=(0, None, None)), in_axes=(0, None, None))

    def summary(draws):
        mu = np.asarray(fn(jax.tree.map(jnp.asarray, draws), pairs[0], pairs[1]), np.float64)
        sd_b = 1.0 / np.sqrt(np.asarray(draws.user_offset_precision, np.float64))
        return [(mu.mean(axis=(0, 1)), np.asarray(az.mcse(mu))), (sd_b.mean(), float(az.mcse(sd_b)))]

    for (a, se_a), (b, se_b) in zip(summary(ref.draws), summary(run.draws)):
        bound = Z * np.sqrt(np.square(se_a) + np.square(se_b))
        assert np.all(np.abs(a - b) <= bound), (a, b, bound)


# --- downstream: cold start, fold-in, ranking, files, MAP -------------------------------


@pytest.fixture(scope="module")
def fitted(synthetic_ratings):
    return BayesMF(rank=2, num_samples=60, num_warmup=60, user_offsets=True, progress_bar=False).fit(
        0, synthetic_ratings.train)


def test_new_user_keeps_the_mean_and_gains_the_offset_variance(fitted):
    """A new user's mean is m_v + mu_L . R_v under each draw (the offset's prior mean is 0)
    and the variance is the plain model's plus 1/tau_b, exactly."""
    draw = jax.tree.map(lambda x: jnp.asarray(x[0, 3]), fitted.draws)
    users, items = jnp.array([-1, -1, 0]), jnp.array([0, -1, 1])
    mean, var = pair_moments(draw, users, items)
    plain_mean, plain_var = pair_moments(draw._replace(user_offsets=None, user_offset_precision=None), users, items)
    np.testing.assert_allclose(mean[:2], plain_mean[:2], rtol=1e-6)
    np.testing.assert_allclose(var[:2] - plain_var[:2], 1.0 / float(draw.user_offset_precision), rtol=1e-4)
    # A known user's mean carries its own offset, with no extra variance.
    np.testing.assert_allclose(mean[2], plain_mean[2] + draw.user_offsets[0], rtol=1e-6)
    np.testing.assert_allclose(var[2], plain_var[2], rtol=1e-6)


def test_fold_in_draws_the_users_offset_with_its_factors(fitted):
    """A folded-in user's row is (L, b) with design (R_v, 1): under each draw its
    conditional mean is the closed form, so the fold-in's per-draw predictive mean is
    R_j . L + m_j + b (checked against NumPy for every draw)."""
    items = np.asarray(fitted.item_vocab.ids)[:4]
    ratings = np.array([4.5, 1.0, 3.0, 5.0])
    fold = fold_in_users(fitted, [(items, ratings)])
    comps = fold.components(np.zeros(2, np.int64), fitted.item_vocab.index(items[:2]))
    flat = fitted.flat_draws()
    idx = fitted.item_vocab.index(items)
    for s in (0, 17, 59):
        d = flat.item_factors.shape[-1]
        design = np.hstack([flat.item_factors[s][idx], np.ones((4, 1))]).astype(np.float64)
        prior = np.zeros((d + 1, d + 1))
        prior[:d, :d], prior[d, d] = flat.user_precision[s], flat.user_offset_precision[s]
        prior_mean = np.append(flat.user_mean[s], 0.0)
        alpha = float(flat.noise_precision[s])
        precision = prior + alpha * design.T @ design
        row = np.linalg.solve(precision, prior @ prior_mean + alpha * design.T @ (ratings - flat.item_offsets[s][idx]))
        expected = design[:2] @ row + flat.item_offsets[s][idx[:2]]
        np.testing.assert_allclose(comps.mean[s], expected, rtol=2e-4, atol=2e-4)


def test_ranking_scores_include_the_users_offset(fitted):
    """The batched ranking path (matrix products over all movies) and the model's
    predictive agree: recommend's means are Posterior.predict's, offset included."""
    users = np.asarray(fitted.user_vocab.ids)[:3]
    top = recommend(fitted, users, k=4, strategy="mean")
    pred = fitted.predict(top["user"].to_numpy(), top["item"].to_numpy())
    np.testing.assert_allclose(top["mean"].to_numpy(), pred.mean, rtol=1e-5, atol=1e-5)
    top = recommend(fitted, users, k=4, strategy="prob_above", threshold=3.5)
    pred = fitted.predict(top["user"].to_numpy(), top["item"].to_numpy())
    np.testing.assert_allclose(top["mean"].to_numpy(), pred.mean, rtol=1e-5, atol=1e-5)


def test_saved_and_loaded_with_the_offsets(fitted, tmp_path):
    path = tmp_path / "model.nc"
    save(fitted, path)
    back = load(path)
    assert back.config.user_offsets
    np.testing.assert_array_equal(back.draws.user_offsets, fitted.draws.user_offsets)
    np.testing.assert_array_equal(back.draws.user_offset_precision, fitted.draws.user_offset_precision)
    users, items = np.asarray(fitted.user_vocab.ids)[:3], np.asarray(fitted.item_vocab.ids)[:3]
    np.testing.assert_array_equal(back.predict(users, items).mean, fitted.predict(users, items).mean)


def test_plain_model_has_no_offset_fields(synthetic_ratings, tmp_path):
    """The plain model's Params carry None (no arrays, nothing saved)."""
    post = BayesMF(rank=2, num_samples=5, num_warmup=5, progress_bar=False).fit(0, synthetic_ratings.train)
    assert post.draws.user_offsets is None and post.draws.user_offset_precision is None
    save(post, tmp_path / "plain.nc")
    import xarray as xr

    tree = xr.open_datatree(tmp_path / "plain.nc")
    assert "user_offsets" not in tree["posterior"].data_vars
    assert load(tmp_path / "plain.nc").draws.user_offsets is None


def test_map_fits_the_offsets(map_sim):
    """MAP with user offsets: offsets that track the users' mean residuals under the
    plain model's structure (the truth has none, so they stay small), one per user."""
    post = BayesMF(rank=3, method="map", user_offsets=True, progress_bar=False).fit(0, map_sim.ratings)
    b = post.draws.user_offsets[0, 0]
    assert b.shape == (len(post.user_vocab),) and np.all(np.isfinite(b))
    assert post.config.fixed.user_offset_precision > 0
    with pytest.raises(ValueError, match="user-offset"):
        BayesMF(rank=3, method="als", user_offsets=True, progress_bar=False).fit(0, map_sim.ratings)


def test_bad_setting():
    with pytest.raises(TypeError, match="user_offsets"):
        ModelConfig(user_offsets="yes")
    with pytest.raises(ValueError, match="user_offset_precision"):
        ModelConfig(priors="fixed", fixed=FixedPriors(user_offset_precision=0.0))
