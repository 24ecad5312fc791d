"""Statistical correctness of the blocked Gibbs engine.

Every tolerance is a multiple of a Monte Carlo standard error (or a test's
false-alarm rate) stated next to it; seeds are fixed, so each test is
deterministic.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from bayesmf.conjugate import row_draw, row_posterior
from bayesmf.engines import gibbs
from bayesmf.layout import build_layout, gram_and_rhs
from bayesmf.model import ModelConfig, log_joint, numpyro_model
from conftest import sbc_pvalue

# 4 standard errors: a two-sided false alarm rate of 6e-5 per compared number.
Z = 4.0


def random_state(key, data, config):
    state = gibbs.init(key, data, config, scale=0.5)
    return state


# --- the conditionals agree with the NumPyro model --------------------------------


@pytest.mark.parametrize("offsets", ["estimated", "empirical"])
@pytest.mark.parametrize("priors", ["hyper", "fixed"])
def test_user_conditional_matches_model_log_density(offsets, priors, make_tiny_data):
    """log p(L_u | rest) from the closed form and log p(joint) from the NumPyro
    model differ by a constant in L_u (the normalizer): compare differences
    between several values of one user's row."""
    jax.config.update("jax_enable_x64", True)
    try:
        data = make_tiny_data()
        data = data._replace(rating=data.rating.astype(jnp.float64))
        config = ModelConfig(rank=2, offsets=offsets, priors=priors)
        state = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), random_state(jax.random.PRNGKey(1), data, config))
        layout = build_layout(np.asarray(data.user_index), np.asarray(data.item_index), data.num_users, data.num_items, "bucket")
        gram, rhs = gram_and_rhs(layout, state.item_factors, data.rating - state.item_offsets[data.item_index])
        post = row_posterior(state.user_precision, state.user_mean, gram, rhs, state.noise_precision)
        u = 3
        cov = np.linalg.inv(np.asarray(post.chol[u] @ post.chol[u].T))
        values = np.random.default_rng(2).normal(size=(5, 2))
        cond = stats.multivariate_normal(np.asarray(post.mean[u]), cov).logpdf(values)
        joint = np.array(
            [float(log_joint(state._replace(user_factors=state.user_factors.at[u].set(v)), data, config)) for v in values]
        )
        np.testing.assert_allclose(cond - cond[0], joint - joint[0], rtol=1e-8, atol=1e-8)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_item_offset_block_conditional_matches_model_log_density(make_tiny_data):
    """The joint (R_v, m_v) block with design [L_u, 1] against the model."""
    jax.config.update("jax_enable_x64", True)
    try:
        data = make_tiny_data(seed=3)
        data = data._replace(rating=data.rating.astype(jnp.float64))
        config = ModelConfig(rank=2)
        state = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), random_state(jax.random.PRNGKey(4), data, config))
        d = 2
        layout = build_layout(np.asarray(data.item_index), np.asarray(data.user_index), data.num_items, data.num_users, "bucket")
        design = jnp.concatenate([state.user_factors, jnp.ones((data.num_users, 1))], 1)
        prior = jnp.zeros((d + 1, d + 1)).at[:d, :d].set(state.item_precision).at[d, d].set(state.offset_precision)
        mean0 = jnp.concatenate([state.item_mean, state.offset_mean[None]])
        gram, rhs = gram_and_rhs(layout, design, data.rating)
        post = row_posterior(prior, mean0, gram, rhs, state.noise_precision)
        v = 2
        cov = np.linalg.inv(np.asarray(post.chol[v] @ post.chol[v].T))
        values = np.asarray(post.mean[v]) + np.random.default_rng(5).normal(size=(5, d + 1))
        cond = stats.multivariate_normal(np.asarray(post.mean[v]), cov).logpdf(values)
        joint = np.array(
            [
                float(
                    log_joint(
                        state._replace(
                            item_factors=state.item_factors.at[v].set(x[:d]), item_offsets=state.item_offsets.at[v].set(x[d])
                        ),
                        data,
                        config,
                    )
                )
                for x in values
            ]
        )
        np.testing.assert_allclose(cond - cond[0], joint - joint[0], rtol=1e-8, atol=1e-8)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_row_draws_match_closed_form_gaussian(make_tiny_data):
    """Thousands of draws of one user's row (others fixed) match the closed-form
    conditional mean and covariance computed independently in NumPy."""
    data = make_tiny_data(seed=6)
    config = ModelConfig(rank=2)
    state = random_state(jax.random.PRNGKey(7), data, config)
    layout = build_layout(np.asarray(data.user_index), np.asarray(data.item_index), data.num_users, data.num_items, "dense")
    gram, rhs = gram_and_rhs(layout, state.item_factors, data.rating - state.item_offsets[data.item_index])
    n = 20_000
    keys = jax.random.split(jax.random.PRNGKey(8), n)
    draws = jax.vmap(lambda k: row_draw(k, state.user_precision, state.user_mean, gram, rhs, state.noise_precision))(keys)
    u = 0
    x = np.asarray(draws[:, u], np.float64)
    # Closed form, independently: P = Lambda + alpha sum R R^T, b = Lambda mu + alpha sum R (r - m).
    users = np.asarray(data.user_index)
    rows = np.flatnonzero(users == u)
    rv = np.asarray(state.item_factors, np.float64)[np.asarray(data.item_index)[rows]]
    y = np.asarray(data.rating, np.float64)[rows] - np.asarray(state.item_offsets, np.float64)[np.asarray(data.item_index)[rows]]
    alpha = float(state.noise_precision)
    lam = np.asarray(state.user_precision, np.float64)
    p = lam + alpha * rv.T @ rv
    cov = np.linalg.inv(p)
    mean = cov @ (lam @ np.asarray(state.user_mean, np.float64) + alpha * rv.T @ y)
    # Mean: MCSE of each coordinate is sqrt(cov_ii / n).
    mcse = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) <= Z * mcse)
    # Covariance entries: for Gaussian x, var(x_i x_j) = cov_ii cov_jj + cov_ij^2,
    # so the MCSE of the sample covariance entry is sqrt((cov_ii cov_jj + cov_ij^2) / n).
    sample_cov = np.cov(x.T)
    cov_mcse = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(sample_cov - cov) <= Z * cov_mcse)


def test_learned_factor_means_conditional(make_tiny_data):
    """Fixed precisions with learned means (FixedPriors.mean_precision > 0):
    the draws of mu_L | L in a sweep match the Gaussian that the NumPyro
    model's log density implies (its log-density differences in mu_L are
    those of the closed form, checked in float64), within MCSE."""
    from bayesmf.model import FixedPriors

    data = make_tiny_data(seed=9)
    config = ModelConfig(rank=2, priors="fixed", fixed=FixedPriors(3.0, 2.0, 1.0, 4.0, mean_precision=2.0))
    state = random_state(jax.random.PRNGKey(10), data, config)
    ctx = gibbs.build_context(data, "dense")
    n = 20_000
    keys = jax.random.split(jax.random.PRNGKey(11), n)
    f = config.fixed
    draws = jax.vmap(lambda k: gibbs.step(k, state, ctx, config)[0])(keys)
    # A sweep redraws the user rows before mu_L, so centre each mu_L draw on
    # sum(L) / (N + beta) of its own rows: the residual is N(0, ((N + beta) lambda)^-1 I).
    nb = data.num_users + f.mean_precision
    centred = np.asarray(draws.user_mean, np.float64) - np.asarray(draws.user_factors, np.float64).sum(1) / nb
    sd = (nb * f.user_precision) ** -0.5
    assert np.all(np.abs(centred.mean(0)) <= Z * sd / np.sqrt(n))
    # Variance: MCSE of a Gaussian sample variance is sd^2 sqrt(2 / n).
    assert np.all(np.abs(centred.var(0) - sd**2) <= Z * sd**2 * np.sqrt(2 / n))
    # The closed form against the model, in float64.
    jax.config.update("jax_enable_x64", True)
    try:
        data64 = data._replace(rating=data.rating.astype(jnp.float64))
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), state)
        mean = np.asarray(state.user_factors, np.float64).sum(0) / nb
        values = np.random.default_rng(13).normal(size=(5, 2))
        cond = stats.multivariate_normal(mean, sd**2 * np.eye(2)).logpdf(values)
        joint = np.array([float(log_joint(params._replace(user_mean=jnp.asarray(v)), data64, config)) for v in values])
        np.testing.assert_allclose(cond - cond[0], joint - joint[0], rtol=1e-8, atol=1e-8)
    finally:
        jax.config.update("jax_enable_x64", False)


# --- the whole sampler ---------------------------------------------------------------


def _run_chain(config, data, key, num_sweeps, thin):
    """Pure-function driver: init + lax.scan of step, returning thinned draws."""
    state = gibbs.init(jax.random.fold_in(key, 0), data, config)
    ctx = gibbs.build_context(data, "dense")

    def body(s, k):
        s, info = gibbs.step(k, s, ctx, config)
        return s, (s.noise_precision, s.item_offsets, s)

    keys = jax.random.split(jax.random.fold_in(key, 1), num_sweeps)
    _, (alpha, offsets, states) = jax.lax.scan(body, state, keys)
    return alpha[::thin], offsets[::thin], jax.tree_util.tree_map(lambda x: x[::thin], states)


@pytest.mark.slow
def test_simulation_based_calibration(make_tiny_data):
    """SBC (Talts et al. 2018): for truths drawn from the prior and data drawn
    given them, the rank of each true quantity among posterior draws is uniform.
    Quantities: the noise precision, one movie offset, and one prediction
    <L_u, R_v> + m_v (rotation invariant). Replicates share the rating pattern
    and are vmapped: one compile for all of them."""
    from numpyro.infer import Predictive

    num_reps, num_sweeps, thin = 200, 400, 20  # 20 near-independent draws per rep (rank 0..20)
    base = make_tiny_data(seed=10, num_users=8, num_items=6, nnz=30)
    # A fixed prior: global_mean is data-dependent in make_model_data, so pin it.
    base = base._replace(global_mean=jnp.asarray(3.0, jnp.float32), empirical_offsets=jnp.full(6, 3.0, jnp.float32))
    config = ModelConfig(rank=2, priors="hyper", offsets="estimated")
    truths = Predictive(numpyro_model, num_samples=num_reps)(jax.random.PRNGKey(11), base, config, observed=False)
    u, v = int(base.user_index[0]), int(base.item_index[0])
    true_pred = np.asarray(
        jnp.sum(truths["user_factors"][:, u] * truths["item_factors"][:, v], -1) + truths["item_offsets"][:, v]
    )

    def fit(key, ratings):
        data = base._replace(rating=ratings)
        alpha, offsets, states = _run_chain(config, data, key, num_sweeps, thin)
        pred = jnp.sum(states.user_factors[:, u] * states.item_factors[:, v], -1) + states.item_offsets[:, v]
        return alpha, offsets[:, 0], pred

    keys = jax.random.split(jax.random.PRNGKey(12), num_reps)
    alpha, off0, pred = jax.jit(jax.vmap(fit))(keys, truths["obs"])
    assert np.all(np.isfinite(alpha)) and np.all(np.isfinite(pred))
    for name, draws, truth in (
        ("noise_precision", alpha, truths["noise_precision"]),
        ("item_offsets[0]", off0, truths["item_offsets"][:, 0]),
        ("prediction", pred, true_pred),
    ):
        # Chi-square test on 5 equal bins of the rank (19 draws after the first,
        # conftest.sbc_pvalue); with 3 quantities the family-wise false alarm
        # rate at p < 1e-3 is 0.3%.
        counts, p = sbc_pvalue(draws, truth)
        assert p > 1e-3, f"SBC ranks of {name} not uniform: counts {counts}, p = {p:.2g}"


def test_same_seed_same_draws_and_chain_zero_independent_of_chain_count(make_tiny_data):
    data = make_tiny_data(seed=20)
    config = ModelConfig(rank=2)
    kw = dict(num_samples=10, num_warmup=10, progress_bar=False)
    a = gibbs.sample(jax.random.PRNGKey(0), data, config, num_chains=1, **kw)
    b = gibbs.sample(jax.random.PRNGKey(0), data, config, num_chains=1, **kw)
    c = gibbs.sample(jax.random.PRNGKey(0), data, config, num_chains=3, **kw)
    d = gibbs.sample(jax.random.PRNGKey(1), data, config, num_chains=1, **kw)
    np.testing.assert_array_equal(a.draws.user_factors, b.draws.user_factors)
    # Chain c's key is fold_in(key, c): chain 0 means the same with 1 or 3 chains
    # (vmapped and single programs may round differently in the last bit).
    np.testing.assert_allclose(a.draws.noise_precision[0], c.draws.noise_precision[0], rtol=1e-4)
    assert not np.allclose(a.draws.noise_precision, d.draws.noise_precision)
    assert a.draws.user_factors.shape == (1, 10, data.num_users, 2)
    assert c.stats["train_rmse"].shape == (3, 10)


@pytest.mark.parametrize("rank", [10, 50])
def test_no_cholesky_failures_over_100_seeds(rank, make_tiny_data):
    """Float32 with symmetrization + jitter: 100 chains (seeds) of a rank-10 and
    a rank-50 model on data sparser than the rank never produce a NaN (the
    driver raises FloatingPointError naming the block if they do)."""
    data = make_tiny_data(seed=30, num_users=80, num_items=60, nnz=900, rank=3)
    res = gibbs.sample(
        jax.random.PRNGKey(31), data, ModelConfig(rank=rank), num_samples=5, num_warmup=5, num_chains=100,
        keep_draws=False, progress_bar=False,
    )
    assert np.all(np.isfinite(res.stats["train_rmse"]))


@pytest.mark.parametrize("priors,offsets,mean_precision",
                         [("fixed", "estimated", 0.0), ("hyper", "empirical", 0.0), ("fixed", "empirical", 0.0),
                          ("fixed", "estimated", 2.0)])
def test_other_modes_sample_and_fit(priors, offsets, mean_precision, make_tiny_data):
    """PMF (fixed precisions, zero or learned factor means) and empirical offsets are sampled too."""
    from bayesmf.model import FixedPriors

    data = make_tiny_data(seed=40, num_users=30, num_items=20, nnz=300)
    config = ModelConfig(rank=2, priors=priors, offsets=offsets, fixed=FixedPriors(mean_precision=mean_precision))
    res = gibbs.sample(jax.random.PRNGKey(41), data, config, num_samples=20, num_warmup=20, progress_bar=False)
    assert np.all(np.isfinite(res.draws.user_factors))
    if offsets == "empirical":
        np.testing.assert_allclose(res.draws.item_offsets[0, -1], np.asarray(data.empirical_offsets))
    if priors == "fixed":
        np.testing.assert_allclose(res.draws.noise_precision, config.fixed.noise_precision)
    # The posterior-mean fit beats the global-mean baseline on the training data.
    d = res.draws
    u, i = np.asarray(data.user_index), np.asarray(data.item_index)
    fit = (np.sum(d.user_factors[0][:, u] * d.item_factors[0][:, i], -1) + d.item_offsets[0][:, i]).mean(0)
    r = np.asarray(data.rating)
    assert np.sqrt(np.mean((fit - r) ** 2)) < np.std(r)


def test_bad_input(make_tiny_data):
    data = make_tiny_data()
    config = ModelConfig(rank=2)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="num_samples must be > 0"):
        gibbs.sample(key, data, config, num_samples=0)
    with pytest.raises(ValueError, match="num_chains must be > 0"):
        gibbs.sample(key, data, config, num_chains=0)
    with pytest.raises(ValueError, match="track_pairs is empty"):
        gibbs.sample(key, data, config, track_pairs=(np.array([], int), np.array([], int)))
    with pytest.raises(ValueError, match="rank must be > 0"):
        ModelConfig(rank=0)
    bad = data._replace(rating=data.rating.at[0].set(jnp.nan))
    with pytest.raises(FloatingPointError, match="user factors block at warmup draw 0 of chain 0"):
        gibbs.sample(key, bad, config, num_samples=5, num_warmup=5, progress_bar=False)


@pytest.mark.parametrize("shape", [0.3, 1.0, 4.5, 480.0, 40000.0])
def test_gamma_draw_matches_gamma_distribution(shape):
    """The vectorised Marsaglia-Tsang sampler against Gamma(shape, 1): mean and
    variance within 4 Monte Carlo standard errors, and a KS test."""
    n = 200_000
    x = np.asarray(gibbs.gamma_draw(jax.random.PRNGKey(3), jnp.full(n, shape, jnp.float32)), np.float64)
    assert np.all(np.isfinite(x)) and np.all(x > 0)
    # MCSE of the mean: sqrt(var / n) = sqrt(shape / n).
    assert abs(x.mean() - shape) <= Z * np.sqrt(shape / n)
    # MCSE of the sample variance: sqrt((mu4 - var^2) / n), mu4 = 3 a^2 + 6 a for Gamma(a, 1).
    assert abs(x.var() - shape) <= Z * np.sqrt((3 * shape**2 + 6 * shape - shape**2) / n)
    # KS at the float32 resolution of the draws; p > 1e-4 per shape.
    assert stats.kstest(x, stats.gamma(shape).cdf).pvalue > 1e-4
