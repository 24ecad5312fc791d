"""The ordered-probit likelihood (bayesmf.ordinal): cell masses against scipy, the truncated-normal latent
draw against scipy.stats.truncnorm, the cut-point step by SBC and ESS, the (cuts, z) pair by SBC, and the
NumPyro distribution."""

from __future__ import annotations

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.diagnostics import effective_sample_size
from numpyro.infer.util import log_density
from scipy import special, stats

from bayesmf import ordinal
from bayesmf.metrics import stars

FREE = np.array([0.1, -0.2, 0.3])  # K = 5 stars; cuts 0, 1.11, 2.02, 3.37
ETAS = (-30.0, -3.0, 0.0, 1.7, 30.0)
# float64 agreement with scipy's independent log_ndtr / log-sf: both are accurate to a few ulps in value,
# and a cell's log mass is a difference of two such values (relative error amplified at most ~10x here).
RTOL64 = 1e-10


def reference_log_mass(cuts, eta, k):
    """log(Phi(b) - Phi(a)) from scipy's logcdf / logsf, on the side of the smaller tail."""
    ext = np.r_[-np.inf, cuts, np.inf]
    a, b = ext[k] - eta, ext[k + 1] - eta
    if a + b > 0:  # the cell lies above eta: upper-tail probabilities
        hi, lo = stats.norm.logsf(a), stats.norm.logsf(b)
    else:
        hi, lo = stats.norm.logcdf(b), stats.norm.logcdf(a)
    return hi + np.log1p(-np.exp(lo - hi))


def test_module_doctests():
    assert doctest.testmod(ordinal).failed == 0


# --- cut points ------------------------------------------------------------------------------------


def test_cuts_round_trip_and_jacobian(x64):
    free = jnp.asarray(FREE)
    cuts = ordinal.cuts_from_free(free)
    np.testing.assert_allclose(cuts, np.r_[0.0, np.cumsum(np.exp(FREE))], rtol=1e-14)
    np.testing.assert_allclose(ordinal.free_from_cuts(cuts), FREE, rtol=1e-14)
    jac = jax.jacfwd(lambda f: ordinal.cuts_from_free(f)[1:])(free)
    np.testing.assert_allclose(ordinal.log_abs_det_jacobian(free), np.linalg.slogdet(np.asarray(jac))[1], rtol=1e-14)
    batch = ordinal.cuts_from_free(jnp.zeros((4, 3)))
    assert batch.shape == (4, 4) and np.all(np.diff(batch, axis=-1) > 0)


def test_log_prior_is_independent_normals(x64):
    prior = ordinal.CutpointPrior(0.5, 2.0)
    expected = stats.norm(0.5, 2.0).logpdf(FREE).sum()
    np.testing.assert_allclose(ordinal.log_prior(jnp.asarray(FREE), prior), expected, rtol=1e-14)


# --- cell masses ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", ETAS)
def test_log_star_prob_matches_scipy_in_the_tails(eta, x64):
    cuts = ordinal.cuts_from_free(jnp.asarray(FREE))
    got = ordinal.log_star_prob(cuts, jnp.full(5, eta), jnp.arange(5))
    expected = [reference_log_mass(np.asarray(cuts), eta, k) for k in range(5)]
    np.testing.assert_allclose(got, expected, rtol=RTOL64)
    if abs(eta) <= 2:  # every mass > 1e-4, so the naive difference of cdfs keeps 1e-12: an independent check
        ext = np.r_[-np.inf, np.asarray(cuts), np.inf]
        naive = np.log(stats.norm.cdf(ext[1:] - eta) - stats.norm.cdf(ext[:-1] - eta))
        np.testing.assert_allclose(got, naive, rtol=1e-12)


def test_marginal_loglik_sums_rows_and_honours_the_mask(x64):
    rng = np.random.default_rng(0)
    cuts = ordinal.cuts_from_free(jnp.asarray(FREE))
    eta, star = rng.normal(1.5, 2.0, 50), rng.integers(0, 5, 50)
    total = sum(reference_log_mass(np.asarray(cuts), e, k) for e, k in zip(eta, star))
    np.testing.assert_allclose(ordinal.marginal_loglik(cuts, eta, star), total, rtol=1e-12)
    mask = np.arange(50) < 30
    part = sum(reference_log_mass(np.asarray(cuts), e, k) for e, k in zip(eta[:30], star[:30]))
    np.testing.assert_allclose(ordinal.marginal_loglik(cuts, eta, star, mask), part, rtol=1e-12)


def test_star_masses_match_scipy_and_the_star_scale(x64):
    cuts = ordinal.cuts_from_free(jnp.asarray(FREE))
    eta = np.array(ETAS)
    masses = np.asarray(ordinal.star_masses(cuts, eta))
    assert masses.shape == (len(ETAS), 5)
    np.testing.assert_allclose(masses.sum(-1), 1.0, atol=1e-14)
    expected = [[reference_log_mass(np.asarray(cuts), e, k) for k in range(5)] for e in eta]
    # Compared in logs: exp turns a 1e-12 relative error of a log mass near -455 into 5e-10 of the mass.
    # (atol: a mass of 1 - 5e-198 is 1.0 in float64, its log 0 against -5e-198.)
    np.testing.assert_allclose(np.log(masses), expected, rtol=RTOL64, atol=1e-15)
    assert masses[-1, 0] > 0 and masses[0, -1] > 0  # 1e-198 and 1e-239: kept, not underflowed
    # The same cells as the Gaussian predictive's star masses with unit sd and these cut points.
    np.testing.assert_allclose(masses, stars.star_masses(eta, 1.0, tuple(np.asarray(cuts))), rtol=1e-9)
    # A batch of cut points (one per draw) against a batch of means.
    batch = ordinal.star_masses(jnp.stack([cuts, cuts + 0.0]), jnp.stack([eta, eta]))
    np.testing.assert_allclose(batch, np.stack([masses, masses]), rtol=1e-14)


def test_gradients_are_finite_and_exact(x64):
    """The NumPyro model and the Newton steps differentiate the marginal likelihood in eta and the cuts."""
    free = jnp.asarray(FREE)
    star = jnp.arange(5)

    def loglik(f, e):
        return ordinal.marginal_loglik(ordinal.cuts_from_free(f), e, star)

    for eta in ETAS:
        g_free, g_eta = jax.grad(loglik, argnums=(0, 1))(free, jnp.full(5, eta))
        assert np.all(np.isfinite(g_free)) and np.all(np.isfinite(g_eta))
    eta = jnp.full(5, 0.7)
    ext = np.r_[-np.inf, np.asarray(ordinal.cuts_from_free(free)), np.inf]
    a, b = ext[:-1] - 0.7, ext[1:] - 0.7
    closed = -(stats.norm.pdf(b) - stats.norm.pdf(a)) / (stats.norm.cdf(b) - stats.norm.cdf(a))
    np.testing.assert_allclose(jax.grad(loglik, argnums=1)(free, eta), closed, rtol=1e-10)


def test_two_stars():
    cuts = ordinal.cuts_from_free(jnp.zeros(0))
    assert cuts.tolist() == [0.0]
    np.testing.assert_allclose(ordinal.star_masses(cuts, jnp.array([0.0])), [[0.5, 0.5]], rtol=1e-6)
    free, info = ordinal.cutpoint_step(jax.random.PRNGKey(0), jnp.zeros(0), jnp.zeros(3), jnp.array([0, 1, 1]))
    assert free.shape == (0,) and bool(info.accepted)


# --- the latent draw -----------------------------------------------------------------------------------

# (eta, star) with cuts from FREE: interior cells near and 28-30 sds from eta, open end cells near and far.
CELLS = [(1.0, 1), (0.0, 0), (2.5, 4), (30.0, 2), (30.0, 0), (-30.0, 4), (-30.0, 1)]
NUM_DRAWS = 4000
# Pass when the KS p-value exceeds this (fixed seed; a correct sampler fails one cell with prob. 0.001).
KS_ALPHA = 1e-3
# Means within this many Monte Carlo standard errors (sd / sqrt(NUM_DRAWS)): two-sided prob. 6e-5 to fail.
MEAN_Z = 4.0


@pytest.mark.parametrize("eta, star", CELLS)
def test_latent_draw_matches_truncnorm(eta, star, x64):
    cuts = np.asarray(ordinal.cuts_from_free(jnp.asarray(FREE)))
    ext = np.r_[-np.inf, cuts, np.inf]
    key = jax.random.fold_in(jax.random.PRNGKey(3), 10 * star + int(eta) + 100)
    z = np.asarray(ordinal.latent_draw(key, jnp.asarray(cuts), jnp.full(NUM_DRAWS, eta), jnp.full(NUM_DRAWS, star)))
    assert np.all(z > ext[star]) and np.all(z <= ext[star + 1])
    reference = stats.truncnorm(ext[star] - eta, ext[star + 1] - eta, loc=eta)
    assert stats.kstest(z, reference.cdf).pvalue > KS_ALPHA
    assert abs(z.mean() - reference.mean()) < MEAN_Z * reference.std() / np.sqrt(NUM_DRAWS)


def test_latent_draw_is_the_inverse_cdf(x64):
    """Bottom cell: z = eta + Phi^{-1}(u Phi(c_0 - eta)), against scipy's ndtri_exp (log p down to -1e3)."""
    u = np.array([1e-300, 1e-10, 0.3, 0.999])
    for eta in (-2.0, 10.0, 44.0):
        got = ordinal.latent_draw_from(u, jnp.asarray([0.0, 1.0]), jnp.full(4, eta), jnp.zeros(4, int))
        expected = eta + special.ndtri_exp(np.log(u) + stats.norm.logcdf(-eta))
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_latent_draw_float32_tails():
    """In float32 (the engines' default) cells 15-30 sds out are drawn finite, inside the cell, and right."""
    cuts = ordinal.cuts_from_free(jnp.asarray(FREE, jnp.float32))
    for eta, star in [(30.0, 0), (-30.0, 4), (15.0, 0), (30.0, 2)]:
        z = ordinal.latent_draw(jax.random.PRNGKey(4), cuts, jnp.full(NUM_DRAWS, eta, jnp.float32), jnp.full(NUM_DRAWS, star))
        assert z.dtype == jnp.float32 and np.all(np.isfinite(z))
        ext = np.r_[-np.inf, np.asarray(cuts, np.float64), np.inf]
        z = np.asarray(z, np.float64)
        # Clipped to the cell in float32: compare with the float32 rounding of its ends.
        assert np.all(z >= np.float32(ext[star])) and np.all(z <= np.float32(ext[star + 1]))
        reference = stats.truncnorm(ext[star] - eta, ext[star + 1] - eta, loc=eta)
        assert stats.kstest(z, reference.cdf).pvalue > KS_ALPHA


# --- the NumPyro distribution -----------------------------------------------------------------------------


def test_ordered_probit_distribution(x64):
    cuts = ordinal.cuts_from_free(jnp.asarray(FREE))
    eta = jnp.array([-1.0, 0.5, 2.0, 30.0])
    d = ordinal.OrderedProbit(eta, cuts, validate_args=True)
    assert d.batch_shape == (4,) and d.event_shape == ()
    np.testing.assert_allclose(d.log_prob(jnp.array([0, 1, 4, 2])), ordinal.log_star_prob(cuts, eta, jnp.array([0, 1, 4, 2])))
    support = d.enumerate_support()
    assert support.shape == (5, 4)
    np.testing.assert_allclose(jnp.exp(d.log_prob(support)).sum(0), 1.0, atol=1e-14)
    np.testing.assert_allclose(d.probs, ordinal.star_masses(cuts, eta), rtol=1e-14)
    # A batch of cut points (one per draw) against a batch of means.
    batched = ordinal.OrderedProbit(jnp.zeros((2, 3)), jnp.stack([cuts, cuts + 0.5])[:, None, :])
    assert batched.batch_shape == (2, 3) and batched.probs.shape == (2, 3, 5)
    np.testing.assert_allclose(batched.probs[1], ordinal.star_masses(cuts, jnp.full(3, -0.5)), rtol=1e-14)
    # Sampling through the latent normal gives the star masses (chi-square, fixed seed, alpha 0.001).
    draws = np.asarray(ordinal.OrderedProbit(0.5, cuts).sample(jax.random.PRNGKey(5), (20000,)))
    counts = np.bincount(draws, minlength=5)
    expected = 20000 * np.asarray(ordinal.star_masses(cuts, jnp.array([0.5])))[0]
    assert stats.chisquare(counts, expected).pvalue > 1e-3


def test_ordered_probit_scores_a_numpyro_model():
    """The marginal likelihood in a NumPyro model: finite log density and gradients in the free cut points."""
    star = jnp.array([0, 1, 2, 3, 4, 4])
    eta = jnp.array([-1.0, 0.0, 1.0, 2.0, 3.0, 9.0])

    def model():
        free = numpyro.sample("free", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        numpyro.sample("star", ordinal.OrderedProbit(eta, ordinal.cuts_from_free(free)), obs=star)

    def value(free):
        return log_density(model, (), {}, {"free": free})[0]

    free = jnp.asarray(FREE, jnp.float32)
    expected = ordinal.log_posterior(free, eta, star)
    np.testing.assert_allclose(value(free), expected, rtol=1e-5)
    assert np.all(np.isfinite(jax.grad(value)(free)))


# --- the cut-point step -------------------------------------------------------------------------------------


def test_the_mask_leaves_padding_out():
    """Padded rows (any eta, any star) with mask False give the step of the unpadded rows, variates equal."""
    rng = np.random.default_rng(6)
    eta = jnp.asarray(rng.normal(1.5, 1.0, 200), jnp.float32)
    star = ordinal.OrderedProbit(eta, ordinal.cuts_from_free(jnp.asarray(FREE, jnp.float32))).sample(jax.random.PRNGKey(7))
    z, u = ordinal.cutpoint_variates(jax.random.PRNGKey(8), 5)
    free0 = jnp.zeros(3)
    step = jax.jit(ordinal.cutpoint_step_from)
    plain = step(z, u, free0, eta, star)
    padded = step(
        z, u, free0, jnp.r_[eta, jnp.full(56, 40.0)], jnp.r_[star, jnp.zeros(56, star.dtype)], mask=jnp.arange(256) < 200
    )
    np.testing.assert_allclose(padded[0], plain[0], rtol=1e-6)
    assert bool(padded[1].accepted) == bool(plain[1].accepted)


# SBC: eta known and fixed, n ratings on K stars; free ~ prior, z ~ N(eta, 1), stars from (z, cuts); then
# (free, z) is an exact draw from their posterior given the stars. The chain of pairs starts at the prior
# mean, drops SBC_WARMUP steps and keeps every SBC_THIN-th of the next SBC_DRAWS * SBC_THIN: the rank of
# the truth among the SBC_DRAWS kept is uniform on 0..SBC_DRAWS when the pair leaves the posterior invariant.
SBC_N, SBC_K = 300, 5
SBC_REPLICATIONS, SBC_DRAWS, SBC_THIN, SBC_WARMUP = 200, 9, 2, 6
# Fixed seed; a correct sampler fails one statistic's chi-square test with prob. 0.001 (five statistics).
SBC_ALPHA = 1e-3


@pytest.fixture(scope="module")
def sbc_ranks():
    rng = np.random.default_rng(9)
    eta = jnp.asarray(rng.normal(1.0, 1.0, SBC_N), jnp.float32)
    prior = ordinal.CutpointPrior()

    def statistics(free, z):  # the three free parameters, the mean residual and one rating's z
        return jnp.concatenate([free, jnp.array([jnp.mean(z - eta), z[0]])])

    def replication(key):
        key_free, key_z, key_chain = jax.random.split(key, 3)
        free_true = prior.log_increment_mean + prior.log_increment_sd * jax.random.normal(key_free, (SBC_K - 2,))
        z_true = eta + jax.random.normal(key_z, (SBC_N,))
        star = jnp.sum(z_true[:, None] > ordinal.cuts_from_free(free_true), axis=-1)

        def step(free, k):
            free, z, info = ordinal.cutpoint_latent_step(k, free, eta, star, prior)
            return free, (statistics(free, z), info.accepted)

        keys = jax.random.split(key_chain, SBC_WARMUP + SBC_DRAWS * SBC_THIN)
        _, (stats_chain, accepted) = jax.lax.scan(step, jnp.zeros(SBC_K - 2), keys)
        kept = stats_chain[SBC_WARMUP + SBC_THIN - 1 :: SBC_THIN]
        return jnp.sum(kept < statistics(free_true, z_true), axis=0), jnp.mean(accepted[SBC_WARMUP:])

    ranks, acceptance = jax.jit(jax.vmap(replication))(jax.random.split(jax.random.PRNGKey(10), SBC_REPLICATIONS))
    return np.asarray(ranks), np.asarray(acceptance)


def rank_pvalues(ranks):
    counts = np.stack([np.bincount(r, minlength=SBC_DRAWS + 1) for r in ranks.T])
    return stats.chisquare(counts, axis=1).pvalue


def test_cutpoint_step_sbc(sbc_ranks):
    """SBC of the MH step with z integrated out: each free parameter's rank is uniform."""
    ranks, acceptance = sbc_ranks
    pvalues = rank_pvalues(ranks[:, :3])
    assert np.all(pvalues > SBC_ALPHA), pvalues
    assert acceptance.mean() > 0.5  # measured 0.8 with 300 ratings: the t proposal fits the posterior


def test_cutpoint_latent_pair_sbc(sbc_ranks):
    """SBC over z too: the pair (cut step, then z given the new cuts) leaves the joint posterior invariant."""
    ranks, _ = sbc_ranks
    pvalues = rank_pvalues(ranks[:, 3:])
    assert np.all(pvalues > SBC_ALPHA), pvalues


# ml-100k size: the step's mixing where the 1993 uniform full conditional barely moves.
ESS_N = 80_000
ESS_WARMUP, ESS_DRAWS = 20, 200
# ESS per iteration bound. An independence-type MH step with acceptance a has ESS/iter near a / (2 - a)
# (measured 0.72-0.88 at a = 0.89); the ESS estimate from 200 draws has a relative sd of about 15%, so
# 0.3 fails only when the proposal stops fitting the posterior (acceptance near 0.45 or below) or the step
# degrades into a random walk (ESS/iter ~0.1 or less in 3 dimensions), not by chance.
ESS_PER_ITER = 0.3
ACCEPTANCE = 0.7  # measured 0.89; the acceptance rate over 200 steps has a binomial sd of 0.02


def test_cutpoint_step_mixes_at_ml100k_size():
    rng = np.random.default_rng(11)
    eta = jnp.asarray(rng.normal(1.5, 1.0, ESS_N), jnp.float32)
    free_true = jnp.asarray(FREE, jnp.float32)
    star = ordinal.OrderedProbit(eta, ordinal.cuts_from_free(free_true)).sample(jax.random.PRNGKey(12))

    def step(free, key):
        free, info = ordinal.cutpoint_step(key, free, eta, star)
        return free, (free, info.accepted)

    keys = jax.random.split(jax.random.PRNGKey(13), ESS_WARMUP + ESS_DRAWS)
    last, (chain, accepted) = jax.jit(lambda f, k: jax.lax.scan(step, f, k))(jnp.zeros(3), keys)
    chain = np.asarray(chain[ESS_WARMUP:], np.float64)
    acceptance = float(np.mean(accepted[ESS_WARMUP:]))
    ess_per_iter = effective_sample_size(chain[None]) / ESS_DRAWS
    assert acceptance > ACCEPTANCE, acceptance
    assert np.all(ess_per_iter > ESS_PER_ITER), ess_per_iter
    posterior_sd = chain.std(0)
    # Posterior mean within 5 posterior sds of the truth: a check that the chain found the mode.
    assert np.all(np.abs(chain.mean(0) - FREE) < 5 * posterior_sd)
    # Albert & Chib (1993): given z, c_k is uniform between the largest z of star k and the smallest of
    # star k + 1. That gap bounds its move per sweep; measured 0.003-0.046 posterior sds here (a random
    # walk of such steps needs > (1/0.1)^2 = 100 sweeps per posterior sd, where this step needs about one).
    cuts_sd = np.asarray(ordinal.cuts_from_free(jnp.asarray(chain))).std(0)[1:]
    z = np.asarray(ordinal.latent_draw(jax.random.PRNGKey(14), ordinal.cuts_from_free(last), eta, star))
    star = np.asarray(star)
    gaps = np.array([z[star == k + 1].min() - z[star == k].max() for k in range(1, SBC_K - 1)])
    assert np.all(gaps < 0.1 * cuts_sd), (gaps, cuts_sd)
