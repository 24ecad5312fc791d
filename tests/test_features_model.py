"""Side and implicit features in the model (Macau's prior, ``ModelConfig(user_features=FeatureSpec(...))``):
the Gibbs blocks against the NumPyro model's log density, the sampler by SBC and against NUTS.

Tolerances are multiples of a Monte Carlo standard error or a test's false-alarm rate, stated where
they are used; seeds are fixed, so each test is deterministic.
"""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from bayesmf.conjugate import row_posterior
from bayesmf.engines import gibbs, nuts
from bayesmf.layout import build_layout, gram_and_rhs
from bayesmf.link import link_gram, link_mean
from bayesmf.model import FeatureSpec, ModelConfig, log_joint, make_model_data, numpyro_model, predict_mean, with_features
from conftest import sbc_pvalue

Z = 4.0  # 4 standard errors: a two-sided false-alarm rate of 6e-5 per compared number


def problem(seed=0, num_users=20, num_items=12, nnz=120, rank=2, num_side=3):
    """Ratings from a rank-2 model whose user factors depend on 3 centred side features."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(num_users * num_items, nnz, replace=False)
    users, items = np.divmod(cells, num_items)
    side = rng.normal(size=(num_users, num_side))
    side -= side.mean(0)
    factors = side @ rng.normal(0, 0.5, (num_side, rank)) + rng.normal(0, 0.5, (num_users, rank))
    movies = rng.normal(0, 0.7, (num_items, rank))
    r = 3.5 + np.sum(factors[users] * movies[items], 1) + rng.normal(0, 0.5, nnz)
    return make_model_data(users, items, r, num_users, num_items), side


CONFIG = ModelConfig(rank=2, user_features=FeatureSpec(num_side=3, implicit=True),
                     item_features=FeatureSpec(implicit=True))


def state64(data, config, seed=1):
    state = gibbs.init(jax.random.PRNGKey(seed), data, config, scale=0.5)
    rng = np.random.default_rng(seed)
    state = state._replace(user_link=jnp.asarray(rng.normal(0, 0.3, state.user_link.shape)),
                           item_link=jnp.asarray(rng.normal(0, 0.3, state.item_link.shape)),
                           user_link_precision=jnp.asarray([2.0, 5.0]), item_link_precision=jnp.asarray([3.0]))
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), state)


def test_user_rows_have_their_feature_prior_mean():
    """log p(L_u | rest) in closed form, with the prior mean mu_L + B^T x_u, against the
    model's log joint: equal up to a constant in L_u (float64)."""
    with jax.enable_x64(True):
        data, side = problem()
        data = with_features(data._replace(rating=data.rating.astype(jnp.float64)), CONFIG, user_side=side)
        state = state64(data, CONFIG)
        layout = build_layout(np.asarray(data.user_index), np.asarray(data.item_index), data.num_users,
                              data.num_items, "bucket")
        gram, rhs = gram_and_rhs(layout, state.item_factors, data.rating - state.item_offsets[data.item_index])
        prior_mean = state.user_mean + data.user_features @ state.user_link
        post = row_posterior(state.user_precision, prior_mean, gram, rhs, state.noise_precision)
        u = 4
        cov = np.linalg.inv(np.asarray(post.chol[u] @ post.chol[u].T))
        values = np.asarray(post.mean[u]) + np.random.default_rng(2).normal(size=(5, 2))
        cond = stats.multivariate_normal(np.asarray(post.mean[u]), cov).logpdf(values)
        joint = np.array([float(log_joint(state._replace(user_factors=state.user_factors.at[u].set(x)), data, CONFIG))
                          for x in values])
        np.testing.assert_allclose(cond - cond[0], joint - joint[0], rtol=1e-8, atol=1e-8)


def test_link_matrix_conditional_is_the_models():
    """B | L, mu, Lambda, lambda is matrix normal MN(M, K^-1, Lambda^-1) (bayesmf.link):
    its log density in vec(B) against the model's log joint, up to a constant (float64)."""
    with jax.enable_x64(True):
        data, side = problem(seed=3)
        data = with_features(data._replace(rating=data.rating.astype(jnp.float64)), CONFIG, user_side=side)
        state = state64(data, CONFIG, seed=4)
        ctx = gibbs.build_context(data, "dense", 2, config=CONFIG)
        system = ctx.user_link
        mean = np.asarray(link_mean(system, state.user_factors, state.user_mean, state.user_link_precision))
        k = np.asarray(link_gram(system, state.user_link_precision))
        cov = np.kron(np.linalg.inv(k), np.linalg.inv(np.asarray(state.user_precision)))  # row-major vec(B)
        rng = np.random.default_rng(5)
        values = [mean + 0.2 * rng.normal(size=mean.shape) for _ in range(4)]
        precision = np.linalg.inv(cov)
        cond = np.array([-0.5 * (v - mean).ravel() @ precision @ (v - mean).ravel() for v in values])
        joint = np.array([float(log_joint(state._replace(user_link=jnp.asarray(v)), data, CONFIG)) for v in values])
        np.testing.assert_allclose(cond - cond[0], joint - joint[0], rtol=1e-7, atol=1e-6)


def test_mean_and_link_precision_conditionals_are_the_models():
    """mu | Lambda, L, B ~ N(sum_u (L_u - B^T x_u) / (beta0 + n), ((beta0 + n) Lambda)^-1) and
    lambda_g | B, Lambda ~ Gamma(a + F_g D / 2, b + tr(B_g Lambda B_g^T) / 2): their log
    densities against the model's log joint, up to constants (float64)."""
    with jax.enable_x64(True):
        data, side = problem(seed=6)
        data = with_features(data._replace(rating=data.rating.astype(jnp.float64)), CONFIG, user_side=side)
        state = state64(data, CONFIG, seed=7)
        h, spec = CONFIG.hyper, CONFIG.user_features
        n = data.num_users
        residual = np.asarray(state.user_factors - data.user_features @ state.user_link)
        lam = np.asarray(state.user_precision)
        mu_n = residual.sum(0) / (h.beta0 + n)
        values = [mu_n + 0.1 * np.random.default_rng(8 + i).normal(size=2) for i in range(4)]
        cond = stats.multivariate_normal(mu_n, np.linalg.inv((h.beta0 + n) * lam)).logpdf(values)
        joint = np.array([float(log_joint(state._replace(user_mean=jnp.asarray(v)), data, CONFIG)) for v in values])
        np.testing.assert_allclose(cond - cond[0], joint - joint[0], rtol=1e-8, atol=1e-8)
        groups = spec.groups(data.num_items)
        b = np.asarray(state.user_link)
        quad = np.einsum("fd,de,fe->f", b, lam, b)
        for g, other in ((0, 1), (1, 0)):
            size = int(np.sum(groups == g))
            shape, rate = spec.link_shape + 0.5 * size * 2, spec.link_rate + 0.5 * quad[groups == g].sum()
            grid = np.array([0.5, 1.0, 3.0, 8.0])
            cond = stats.gamma(shape, scale=1.0 / rate).logpdf(grid)
            joint = []
            for t in grid:
                value = np.asarray(state.user_link_precision).copy()
                value[g] = t
                joint.append(float(log_joint(state._replace(user_link_precision=jnp.asarray(value)), data, CONFIG)))
            np.testing.assert_allclose(cond - cond[0], np.array(joint) - joint[0], rtol=1e-8, atol=1e-8)


def test_rows_without_features_get_the_plain_prior_mean():
    """A user whose feature row is zero (no side features, no ratings) has prior mean mu_L exactly."""
    data, side = problem(seed=9)
    side[0] = 0.0
    config = ModelConfig(rank=2, user_features=FeatureSpec(num_side=3))
    data = with_features(data, config, user_side=side)
    state = gibbs.init(jax.random.PRNGKey(0), data, config)
    state = state._replace(user_link=jnp.ones_like(state.user_link))
    ctx = gibbs.build_context(data, "dense", 2, config=config)
    means = gibbs.row_means(state.user_mean, ctx.user_link, state.user_link)[0]
    np.testing.assert_array_equal(means[0], state.user_mean)
    assert not np.allclose(means[1], state.user_mean)


def test_bad_feature_input():
    data, side = problem()
    config = ModelConfig(rank=2, user_features=FeatureSpec(num_side=3))
    with pytest.raises(ValueError, match=r"shape \(20, 3\)"):
        with_features(data, config, user_side=side[:, :2])
    bad = side.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        with_features(data, config, user_side=bad)
    with pytest.raises(ValueError, match="no item_features"):
        with_features(data, config, user_side=side, item_side=side[:12])
    with pytest.raises(ValueError, match="no columns"):
        ModelConfig(user_features=FeatureSpec())
    with pytest.raises(ValueError, match="needs priors='hyper'"):
        gibbs.sample(jax.random.PRNGKey(0), with_features(data, config, user_side=side), config.replace(priors="fixed"),
                     num_samples=2, num_warmup=0, progress_bar=False)


# --- the whole sampler ------------------------------------------------------------------


def test_a_built_context_is_reused_with_the_same_draws():
    """gibbs.sample(context=) skips build_context (the link systems' factorization); the draws are the same."""
    data, side = problem()
    data = with_features(data, CONFIG, user_side=side)
    ctx = gibbs.build_context(data, "auto", CONFIG.rank, config=CONFIG)
    runs = [gibbs.sample(jax.random.PRNGKey(3), data, CONFIG, num_samples=3, num_warmup=2, progress_bar=False,
                         context=context) for context in (None, ctx)]
    np.testing.assert_array_equal(runs[0].draws.user_link, runs[1].draws.user_link)
    np.testing.assert_array_equal(runs[0].draws.user_factors, runs[1].draws.user_factors)



@pytest.mark.slow
def test_simulation_based_calibration():
    """SBC of the sampler with side and implicit features on both sides' priors: the rank
    of each true quantity among 19 posterior draws is uniform over 200 replicates (chi-square
    on 5 bins of 4 rank values, p > 1e-3 each: family-wise 0.4% for 4 quantities).
    Quantities: the users' side-group and the movies' implicit-group lambda_g, one
    prediction, and the features' part of it, (B^T x_u) . R_v (invariant under L -> L A,
    R -> R A^-T, B -> B A, as a prediction is; norms of B or L are not, and their slowly
    mixing scale fails SBC in the plain model too)."""
    from numpyro.infer import Predictive

    num_reps, num_sweeps, thin = 200, 400, 20
    base, side = problem(seed=11, num_users=8, num_items=6, nnz=30, num_side=2)
    config = ModelConfig(rank=2, user_features=FeatureSpec(num_side=2, implicit=True),
                         item_features=FeatureSpec(implicit=True))
    base = with_features(base._replace(global_mean=jnp.asarray(3.0, jnp.float32),
                                       empirical_offsets=jnp.full(6, 3.0, jnp.float32)), config, user_side=side)
    truths = Predictive(numpyro_model, num_samples=num_reps)(jax.random.PRNGKey(12), base, config, observed=False)
    u, v = int(base.user_index[0]), int(base.item_index[0])
    ctx = gibbs.build_context(base, "dense", 2, config=config)
    row_u = jnp.asarray(np.asarray(base.user_features)[u])  # x_u, dense

    def quantities(user_factors, item_factors, item_offsets, user_link, link_precision, item_link_precision):
        pred = jnp.sum(user_factors[..., u, :] * item_factors[..., v, :], -1) + item_offsets[..., v]
        shift = jnp.einsum("f,...fd->...d", row_u, user_link)  # B^T x_u
        return (link_precision[..., 0], item_link_precision[..., 0], pred,
                jnp.sum(shift * item_factors[..., v, :], -1))

    truth = quantities(truths["user_factors"], truths["item_factors"], truths["item_offsets"], truths["user_link"],
                       truths["user_link_precision"], truths["item_link_precision"])

    def fit(key, ratings):
        data = base._replace(rating=ratings)
        state = gibbs.init(jax.random.fold_in(key, 0), data, config)
        run_ctx = ctx._replace(data=data)

        def body(s, k):
            s, _ = gibbs.step(k, s, run_ctx, config)
            return s, quantities(s.user_factors, s.item_factors, s.item_offsets, s.user_link, s.user_link_precision,
                                 s.item_link_precision)

        _, out = jax.lax.scan(body, state, jax.random.split(jax.random.fold_in(key, 1), num_sweeps))
        return tuple(x[::thin] for x in out)

    draws = jax.jit(jax.vmap(fit))(jax.random.split(jax.random.PRNGKey(13), num_reps), truths["obs"])
    names = ("user lambda (side)", "item lambda (implicit)", "prediction", "feature part of the prediction")
    for name, drawn, true in zip(names, draws, truth):
        assert np.all(np.isfinite(np.asarray(drawn)))
        counts, p = sbc_pvalue(drawn, true)
        assert p > 1e-3, f"SBC ranks of {name} not uniform: counts {counts}, p = {p:.2g}"


@pytest.mark.slow
def test_nuts_and_gibbs_agree_on_the_predictive_mean():
    """Both engines sample the one NumPyro model, so their posterior means of held-out
    predictions differ by Monte Carlo error only: |diff| <= 4 sqrt(mcse_a^2 + mcse_b^2)."""
    data, side = problem(seed=14, num_users=25, num_items=15, nnz=200)
    data = with_features(data, CONFIG, user_side=side)
    rng = np.random.default_rng(15)
    pairs = (jnp.asarray(rng.integers(0, 25, 5), jnp.int32), jnp.asarray(rng.integers(0, 15, 5), jnp.int32))
    kw = dict(num_chains=2, progress_bar=False)
    ref = gibbs.sample(jax.random.PRNGKey(1), data, CONFIG, num_samples=600, num_warmup=100, **kw)
    run = nuts.sample(jax.random.PRNGKey(2), data, CONFIG, num_samples=150, num_warmup=150, **kw)
    fn = jax.vmap(jax.vmap(predict_mean, in_axes=(0, None, None)), in_axes=(0, None, None))

    def summary(draws):
        mu = np.asarray(fn(jax.tree.map(jnp.asarray, draws), *pairs), np.float64)
        return mu.mean(axis=(0, 1)), np.asarray(az.mcse(mu))

    (a, se_a), (b, se_b) = summary(ref.draws), summary(run.draws)
    bound = Z * np.sqrt(se_a**2 + se_b**2)
    assert np.all(np.abs(a - b) <= bound), (a, b, bound)


def test_implicit_columns_are_centred():
    """Implicit rows are centred on the training rows (bayesmf.featurerows.implicit_mean), like side
    features: the mean row is 0, so a row without ratings at x = 0 is the average row."""
    data, side = problem(seed=16)
    config = ModelConfig(rank=2, user_features=FeatureSpec(num_side=3, implicit=True),
                         item_features=FeatureSpec(implicit=True))
    out = with_features(data, config, user_side=side)
    np.testing.assert_allclose(np.asarray(out.user_features).mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.item_features).mean(0), 0.0, atol=1e-6)
