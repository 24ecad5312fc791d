"""Macau's link-matrix block (bayesmf.link): each conditional against its closed form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
from scipy import stats

from bayesmf import featurerows, link
from bayesmf.conjugate import normal_wishart_draw, wishart_chi2_shapes
from bayesmf.engines.gibbs import gamma_draw

# Monte Carlo tolerance in standard errors. Each check compares at most ~200
# entries; a |N(0,1)| beyond 4.5 has probability 6.8e-6, so a family of 200
# raises a false alarm with probability < 1.4e-3 (and the seeds are fixed).
K_SE = 4.5


def problem(seed=0, n=30, num_side=3, num_implicit=6, rank=2, pairs=60):
    """Side features (Gaussian) and implicit ones (from random pairs), with one group each."""
    rng = np.random.default_rng(seed)
    side = rng.normal(size=(n, num_side))
    implicit = featurerows.implicit_features(rng.integers(0, n, pairs), rng.integers(0, num_implicit, pairs), n, num_implicit)
    x = np.concatenate([side, implicit], axis=1)
    groups = np.r_[np.zeros(num_side, int), np.ones(num_implicit, int)]
    factors = rng.normal(size=(n, rank))
    mean = rng.normal(size=rank)
    a = rng.normal(size=(rank, rank))
    precision = a @ a.T + rank * np.eye(rank)
    return x, groups, factors, mean, precision


def kron_cov(system, precision, lam):
    """Cov(vec B) = Lambda^-1 (x) K^-1 for B row-major vec (index f * D + k)."""
    k = np.asarray(link.link_gram(system, jnp.asarray(lam)), np.float64)
    return np.kron(np.linalg.inv(k), np.linalg.inv(precision))


# --- the solve -----------------------------------------------------------------------


@pytest.mark.parametrize("case", ["two groups", "one group", "small group eigen", "sparse input", "wide implicit"])
def test_solve_matches_dense_solve(case, x64):
    num_implicit = 50 if case == "wide implicit" else 6  # more implicit columns than rows: X_e has a null space
    x, groups, *_ = problem(seed=1, num_implicit=num_implicit)
    kwargs = {}
    if case == "one group":
        groups = np.zeros_like(groups)
    elif case == "small group eigen":
        kwargs["eigen_group"] = 0
    features = scipy.sparse.csr_matrix(x) if case == "sparse input" else x
    system = link.link_system(features, groups, dtype=jnp.float64, **kwargs)
    lam = np.array([0.3, 4.0])[: groups.max() + 1]
    rhs = np.random.default_rng(2).normal(size=(x.shape[1], 3))
    got = np.asarray(link.link_solve(system, jnp.asarray(rhs), jnp.asarray(lam)))
    gram = x.T @ x + np.diag(lam[groups])
    np.testing.assert_allclose(got, np.linalg.solve(gram, rhs), rtol=1e-10, atol=1e-10)


def test_solve_in_float32_at_ml100k_like_conditioning():
    """Float32 (the default device type) stays close to the float64 solve
    when the implicit block alone could fit every row (F_e > n), the case where
    forming the Schur complement by subtraction would cancel."""
    x, groups, *_ = problem(seed=3, n=40, num_implicit=120, pairs=400)
    system = link.link_system(x, groups)
    lam = np.array([2.0, 0.5])
    rhs = np.random.default_rng(4).normal(size=(x.shape[1], 3))
    got = np.asarray(link.link_solve(system, jnp.asarray(rhs, jnp.float32), jnp.asarray(lam, jnp.float32)))
    want = np.linalg.solve(x.T @ x + np.diag(lam[groups]), rhs)
    # float32 round-off (eps 1.2e-7) amplified by cond(K) ~ 1e2 here.
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())


# --- the B draw ----------------------------------------------------------------------


def test_draw_with_given_variates_is_the_perturb_and_solve_formula(x64):
    """The block-eliminated draw equals the dense formula, variate for variate."""
    x, groups, factors, mean, precision = problem(seed=5)
    system = link.link_system(x, groups, dtype=jnp.float64)
    lam = np.array([0.8, 1.7])
    n, f = x.shape
    z = np.random.default_rng(6).normal(size=(n + f, 2))
    got = np.asarray(link.link_draw_from(jnp.asarray(z), system, jnp.asarray(factors), jnp.asarray(mean),
                                         jnp.asarray(precision), jnp.asarray(lam)))
    c = np.linalg.cholesky(precision)
    e, zf = z[:n], z[n:]
    c_inv = np.linalg.inv(c)  # rows of e @ C^-1 have covariance C^-T C^-1 = Lambda^-1
    gram = x.T @ x + np.diag(lam[groups])
    rhs = x.T @ (factors - mean + e @ c_inv) + np.sqrt(lam[groups])[:, None] * (zf @ c_inv)
    np.testing.assert_allclose(got, np.linalg.solve(gram, rhs), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("two_groups", [True, False])
def test_draw_matches_matrix_normal(two_groups):
    """20,000 draws of B (float32, the device default): mean and covariance of
    vec(B) against M and Lambda^-1 (x) K^-1 from NumPy, within K_SE standard errors."""
    x, groups, factors, mean, precision = problem(seed=7, n=25, num_side=2, num_implicit=4)
    if not two_groups:
        groups = np.zeros_like(groups)
    lam = np.array([0.6, 2.5])[: groups.max() + 1]
    system = link.link_system(x, groups)
    n, f = x.shape
    d = factors.shape[1]
    num = 20_000
    keys = jax.random.split(jax.random.PRNGKey(8), num)
    args = (system, jnp.asarray(factors, jnp.float32), jnp.asarray(mean, jnp.float32),
            jnp.asarray(precision, jnp.float32), jnp.asarray(lam, jnp.float32))
    draws = jax.jit(jax.vmap(lambda k: link.link_draw_from(jax.random.normal(k, (n + f, d)), *args)))(keys)
    vec = np.asarray(draws, np.float64).reshape(num, f * d)
    gram = x.T @ x + np.diag(lam[groups])
    m = np.linalg.solve(gram, x.T @ (factors - mean))
    cov = np.kron(np.linalg.inv(gram), np.linalg.inv(precision))
    np.testing.assert_allclose(cov, kron_cov(system, precision, lam), rtol=1e-5)
    # link_mean is M (float32 against float64: K's condition number here is ~10).
    np.testing.assert_allclose(np.asarray(link.link_mean(system, *args[1:3], args[4])), m, atol=1e-4 * np.abs(m).max())
    # Mean: the MCSE of each coordinate is sqrt(cov_ii / num).
    assert np.all(np.abs(vec.mean(0) - m.ravel()) <= K_SE * np.sqrt(np.diag(cov) / num))
    # Covariance: for Gaussian x, var(x_i x_j) = cov_ii cov_jj + cov_ij^2, so the
    # MCSE of a sample covariance entry is sqrt((cov_ii cov_jj + cov_ij^2) / num).
    diag = np.diag(cov)
    cov_mcse = np.sqrt((np.outer(diag, diag) + cov**2) / num)
    assert np.all(np.abs(np.cov(vec.T) - cov) <= K_SE * cov_mcse)


def test_rows_without_features_get_the_plain_prior_mean():
    x, groups, _, mean, _ = problem(seed=9)
    x[:4] = 0.0
    system = link.link_system(x, groups)
    coefficients = jnp.asarray(np.random.default_rng(10).normal(size=(x.shape[1], 2)), jnp.float32)
    prior_mean = np.asarray(link.link_prior_mean(system, coefficients, jnp.asarray(mean, jnp.float32)))
    np.testing.assert_array_equal(prior_mean[:4], np.broadcast_to(np.asarray(mean, np.float32), (4, 2)))


# --- (mu, Lambda) and lambda_g --------------------------------------------------------


def hyper_closed_form(x, groups, factors, coefficients, lam, beta0, nu0, w0_scale):
    """The Normal-Wishart posterior's (mu_n, beta_n, nu_n, W_n), written out in NumPy."""
    n, d = factors.shape
    res = factors - x @ coefficients
    xbar = res.mean(0)
    s = (res - xbar).T @ (res - xbar)
    extra = sum(lam[groups[f]] * np.outer(coefficients[f], coefficients[f]) for f in range(x.shape[1]))
    w_inv = np.eye(d) / w0_scale + s + beta0 * n / (beta0 + n) * np.outer(xbar, xbar) + extra
    return n * xbar / (beta0 + n), beta0 + n, nu0 + n + x.shape[1], np.linalg.inv(w_inv)


def test_normal_wishart_with_link_terms_is_the_models_conditional(x64):
    """The closed form is the model's conditional: log-density differences over
    (mu, Lambda) of the posterior equal those of prior x likelihood x B's prior."""
    x, groups, factors, _, _ = problem(seed=11)
    rng = np.random.default_rng(12)
    coefficients = rng.normal(size=(x.shape[1], 2))
    lam = np.array([0.7, 3.0])
    beta0, nu0, w0 = 2.0, 2.0, 1.0
    mu_n, beta_n, nu_n, w_n = hyper_closed_form(x, groups, factors, coefficients, lam, beta0, nu0, w0)

    def joint(mu, prec):
        cov = np.linalg.inv(prec)
        out = stats.wishart(nu0, w0 * np.eye(2)).logpdf(prec)
        out += stats.multivariate_normal(np.zeros(2), cov / beta0).logpdf(mu)
        out += stats.multivariate_normal(mu, cov).logpdf(factors - x @ coefficients).sum()
        out += sum(stats.multivariate_normal(np.zeros(2), cov / lam[groups[f]]).logpdf(coefficients[f])
                   for f in range(x.shape[1]))
        return out

    def posterior(mu, prec):
        return (stats.wishart(nu_n, w_n).logpdf(prec)
                + stats.multivariate_normal(mu_n, np.linalg.inv(beta_n * prec)).logpdf(mu))

    points = []
    for _ in range(4):
        a = rng.normal(size=(2, 2))
        points.append((rng.normal(size=2), a @ a.T + np.eye(2)))
    j = np.array([joint(*p) for p in points])
    q = np.array([posterior(*p) for p in points])
    np.testing.assert_allclose(q - q[0], j - j[0], rtol=1e-9, atol=1e-8)


def test_normal_wishart_draws_match_posterior_means():
    """E[Lambda] = nu_n W_n and E[mu] = mu_n over 20,000 draws (float32)."""
    x, groups, factors, _, _ = problem(seed=13)
    rng = np.random.default_rng(14)
    coefficients = 0.5 * rng.normal(size=(x.shape[1], 2))
    lam = np.array([0.7, 3.0])
    beta0, nu0, w0 = 2.0, 2.0, 1.0
    mu_n, beta_n, nu_n, w_n = hyper_closed_form(x, groups, factors, coefficients, lam, beta0, nu0, w0)
    system = link.link_system(x, groups)
    shapes = jnp.asarray(link.link_wishart_shapes(system, nu0, 2), jnp.float32)
    np.testing.assert_allclose(np.asarray(shapes), wishart_chi2_shapes(nu_n, 2))
    num = 20_000
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731

    def draw(key):
        key_n, key_g = jax.random.split(key)
        chi2 = 2.0 * gamma_draw(key_g, shapes)
        return link.link_hyper_draw_from(jax.random.normal(key_n, (6,)), chi2, system, f32(factors),
                                         f32(coefficients), f32(lam), beta0, nu0, w0)

    mus, precs = jax.jit(jax.vmap(draw))(jax.random.split(jax.random.PRNGKey(15), num))
    mus, precs = np.asarray(mus, np.float64), np.asarray(precs, np.float64)
    # Wishart entries: Var(Lambda_ij) = nu_n (W_ij^2 + W_ii W_jj).
    var = nu_n * (w_n**2 + np.outer(np.diag(w_n), np.diag(w_n)))
    assert np.all(np.abs(precs.mean(0) - nu_n * w_n) <= K_SE * np.sqrt(var / num))
    # mu marginally: E = mu_n, Var = E[Lambda^-1] / beta_n = W_n^-1 / ((nu_n - d - 1) beta_n).
    mu_var = np.diag(np.linalg.inv(w_n)) / ((nu_n - 3) * beta_n)
    assert np.all(np.abs(mus.mean(0) - mu_n) <= K_SE * np.sqrt(mu_var / num))


def test_default_normal_wishart_unchanged_by_extra_none():
    rng = np.random.default_rng(16)
    rows = jnp.asarray(rng.normal(size=(20, 3)), jnp.float32)
    normals = jnp.asarray(rng.normal(size=12), jnp.float32)
    chi2 = jnp.asarray(rng.chisquare(25, size=3), jnp.float32)
    a = normal_wishart_draw(normals, rows, chi2, 2.0, 3.0, 1.0)
    b = normal_wishart_draw(normals, rows, chi2, 2.0, 3.0, 1.0, extra_precision=None)
    c = normal_wishart_draw(normals, rows, chi2, 2.0, 3.0, 1.0, extra_precision=jnp.zeros((3, 3)))
    for u, v, w in zip(a, b, c):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
        np.testing.assert_array_equal(np.asarray(u), np.asarray(w))


def test_link_precision_conditional(x64):
    """Shapes and rates are the closed forms, and the Gamma they define is the
    model's conditional of lambda_g (log-density differences); draws have its mean."""
    x, groups, _, _, precision = problem(seed=17)
    system = link.link_system(x, groups, dtype=jnp.float64)
    rng = np.random.default_rng(18)
    coefficients = rng.normal(size=(x.shape[1], 2))
    a, b, d = 1.5, 0.5, 2
    shapes = link.link_precision_shapes(system, d, a)
    rates = np.asarray(link.link_precision_rates(system, jnp.asarray(coefficients), jnp.asarray(precision), b))
    sizes = np.bincount(groups)
    np.testing.assert_allclose(shapes, a + sizes * d / 2)
    want = [b + 0.5 * np.trace(coefficients[groups == g] @ precision @ coefficients[groups == g].T) for g in range(2)]
    np.testing.assert_allclose(rates, want, rtol=1e-12)
    # Against the model: log Gamma(lam; a, b) + sum_f log N(b_f; 0, (lam Lambda)^-1) in lam.
    cov = np.linalg.inv(precision)
    for g in range(2):
        lams = np.array([0.2, 0.9, 2.5, 6.0])
        joint = np.array([stats.gamma(a, scale=1 / b).logpdf(v) + sum(
            stats.multivariate_normal(np.zeros(d), cov / v).logpdf(coefficients[f]) for f in np.flatnonzero(groups == g))
            for v in lams])
        cond = stats.gamma(shapes[g], scale=1 / rates[g]).logpdf(lams)
        np.testing.assert_allclose(cond - cond[0], joint - joint[0], rtol=1e-10, atol=1e-9)
    # Draws through the sampler's Gamma variates: mean shape/rate, sd sqrt(shape)/rate.
    num = 20_000
    gammas = gamma_draw(jax.random.PRNGKey(19), jnp.tile(jnp.asarray(shapes), num)).reshape(num, 2)
    draws = np.asarray(jax.vmap(lambda gm: link.link_precision_from(
        gm, system, jnp.asarray(coefficients), jnp.asarray(precision), b))(gammas))
    assert np.all(np.abs(draws.mean(0) - shapes / rates) <= K_SE * np.sqrt(shapes) / rates / np.sqrt(num))


# --- the whole block ------------------------------------------------------------------


def test_link_block_leaves_the_prior_invariant():
    """SBC (Talts et al. 2018) of the block with the factors L fixed: truths
    (B, mu, Lambda, lambda) from the prior, L from the model, the chain started
    from an independent prior draw and burnt in; the rank of each truth among
    thinned draws is uniform (chi-square over 5 bins, p > 1e-3 for each of 5
    quantities: family-wise false alarm < 0.5%)."""
    n, num_side, num_implicit, d = 20, 2, 3, 2
    rng = np.random.default_rng(20)
    x, groups, *_ = problem(seed=20, n=n, num_side=num_side, num_implicit=num_implicit, rank=d, pairs=40)
    system = link.link_system(x, groups)
    f, num_groups = x.shape[1], 2
    beta0, nu0, w0, a, b = 2.0, 3.0, 1.0, 3.0, 3.0
    num_reps, burn, num_draws, thin = 400, 40, 20, 5

    def prior_draw(r):
        lam = r.gamma(a, 1 / b, size=num_groups)
        prec = stats.wishart(nu0, w0 * np.eye(d)).rvs(random_state=r)
        cov = np.linalg.inv(prec)
        mu = r.multivariate_normal(np.zeros(d), cov / beta0)
        coef = np.stack([r.multivariate_normal(np.zeros(d), cov / lam[groups[i]]) for i in range(f)])
        return coef, mu, prec, lam

    truths = [prior_draw(rng) for _ in range(num_reps)]
    starts = [prior_draw(rng) for _ in range(num_reps)]
    factors = np.stack([mu + x @ coef + rng.multivariate_normal(np.zeros(d), np.linalg.inv(prec), size=n)
                        for coef, mu, prec, _ in truths])
    stack = lambda i: jnp.asarray(np.stack([s[i] for s in starts]), jnp.float32)  # noqa: E731
    init = link.LinkState(stack(0), stack(1), stack(2), stack(3))
    chi2_shapes = jnp.asarray(link.link_wishart_shapes(system, nu0, d), jnp.float32)
    lam_shapes = jnp.asarray(link.link_precision_shapes(system, d, a), jnp.float32)

    def sweep(state, key, lf):
        k1, k2, k3 = jax.random.split(key, 3)
        gammas = gamma_draw(k3, jnp.concatenate([chi2_shapes, lam_shapes]))
        variates = link.LinkVariates(jax.random.normal(k1, (n + f, d)), jax.random.normal(k2, (d * d + d,)),
                                     2.0 * gammas[:d], gammas[d:])
        new = link.link_block_from(variates, system, lf, state, beta0=beta0, nu0=nu0, w0_scale=w0, prior_rate=b)
        return new

    def chain(key, state, lf):
        def body(s, k):
            s = sweep(s, k, lf)
            return s, s

        _, states = jax.lax.scan(body, state, jax.random.split(key, burn + num_draws * thin))
        return jax.tree_util.tree_map(lambda v: v[burn + thin - 1 :: thin], states)

    keys = jax.random.split(jax.random.PRNGKey(21), num_reps)
    draws = jax.jit(jax.vmap(chain))(keys, init, jnp.asarray(factors, jnp.float32))
    quantities = {
        "b_00": (draws.coefficients[:, :, 0, 0], [t[0][0, 0] for t in truths]),
        "b_last,1": (draws.coefficients[:, :, -1, 1], [t[0][-1, 1] for t in truths]),
        "mu_0": (draws.mean[:, :, 0], [t[1][0] for t in truths]),
        "Lambda_01": (draws.precision[:, :, 0, 1], [t[2][0, 1] for t in truths]),
        "lambda_1": (draws.link_precision[:, :, 1], [t[3][1] for t in truths]),
    }
    for name, (chain_draws, truth) in quantities.items():
        chain_draws = np.asarray(chain_draws)
        assert chain_draws.shape == (num_reps, num_draws) and np.all(np.isfinite(chain_draws))
        ranks = np.sum(chain_draws < np.asarray(truth)[:, None], axis=1)  # 0..num_draws
        counts = np.histogram(ranks, bins=5, range=(0, num_draws + 1))[0]
        p = stats.chisquare(counts).pvalue
        assert p > 1e-3, f"SBC ranks of {name} not uniform: counts {counts}, p = {p:.2g}"


def test_block_runs_jitted_with_the_system_as_an_argument():
    """The sampler passes the system as a traced argument (as GibbsContext):
    the static shapes still come from array shapes, and the block is finite."""
    x, groups, factors, *_ = problem(seed=23)
    system = link.link_system(x, groups)
    d = factors.shape[1]

    @jax.jit
    def block(key, sys, lf):
        shapes = link.link_variate_shapes(sys, d)
        gamma_shapes = jnp.concatenate([jnp.asarray(link.link_wishart_shapes(sys, 3.0, d), jnp.float32),
                                        jnp.asarray(link.link_precision_shapes(sys, d, 1.0), jnp.float32)])
        keys = jax.random.split(key, 3)
        gammas = gamma_draw(keys[2], gamma_shapes)
        variates = link.LinkVariates(jax.random.normal(keys[0], shapes["coefficients"]),
                                     jax.random.normal(keys[1], shapes["hyper"]), 2.0 * gammas[:d], gammas[d:])
        assert variates.chi2.shape == shapes["chi2"] and variates.gammas.shape == shapes["gammas"]
        f = sys.features.shape[1]
        state = link.LinkState(jnp.zeros((f, d)), jnp.zeros(d), jnp.eye(d), jnp.ones(len(sys.group_columns)))
        return link.link_block_from(variates, sys, lf, state, beta0=2.0, nu0=3.0, w0_scale=1.0, prior_rate=1.0)

    out = block(jax.random.PRNGKey(24), system, jnp.asarray(factors, jnp.float32))
    assert out.coefficients.shape == x.shape[1:] + (d,) and out.link_precision.shape == (2,)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in out)


# --- implicit features ----------------------------------------------------------------


def test_implicit_features_rows_and_pairs():
    rng = np.random.default_rng(22)
    num_rows, num_other = 15, 12
    cells = rng.choice(num_rows * num_other, size=40, replace=False)
    rows, cols = np.divmod(cells, num_other)
    rows, cols = rows[rows != 0], cols[rows != 0]  # row 0 has no pairs
    rows, cols = np.r_[rows, rows[:5]], np.r_[cols, cols[:5]]  # repeated pairs count once
    dense = featurerows.implicit_features(rows, cols, num_rows, num_other)
    sparse = featurerows.implicit_features(rows, cols, num_rows, num_other, sparse=True)
    assert scipy.sparse.issparse(sparse)
    np.testing.assert_array_equal(sparse.toarray(), dense)
    assert dense.shape == (num_rows, num_other)
    rated = np.zeros((num_rows, num_other), bool)
    rated[rows, cols] = True
    # Only the given pairs are non-zero, each |N(u)|^-1/2.
    np.testing.assert_array_equal(dense != 0, rated)
    counts = rated.sum(1)
    for u in range(num_rows):
        if counts[u]:
            np.testing.assert_allclose(dense[u, rated[u]], counts[u] ** -0.5)
    norms = np.linalg.norm(dense, axis=1)
    np.testing.assert_allclose(norms[counts > 0], 1.0)
    assert np.all(norms[counts == 0] == 0) and counts[0] == 0


def test_link_system_rejects_bad_groups():
    x = np.ones((4, 3))
    with pytest.raises(ValueError):
        link.link_system(x, np.array([0, 2, 2]))  # group 1 empty
    with pytest.raises(ValueError):
        link.link_system(x, np.array([0, 1]))
    with pytest.raises(ValueError):
        link.link_system(np.full((4, 3), np.nan), np.array([0, 0, 0]))


def test_module_doctests():
    import doctest

    assert doctest.testmod(link).failed == 0
