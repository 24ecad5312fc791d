"""The NUTS engine: its own fields, determinism, checkpoints, exact reparameterization, and
agreement with the blocked Gibbs sampler on tiny data within Monte Carlo error.

One NUTS program (rank 2, hyper priors, estimated offsets, 150 warmup steps,
chunks of 10) is compiled once per session and shared by every run here: a
NUTS compile costs seconds to tens of seconds on a CPU, sampling the tiny
problem a few seconds.
"""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayesmf.engines import driver, gibbs, nuts
from bayesmf.model import ModelConfig, Params, latent_sites, numpyro_model, predict_mean

# 4 Monte Carlo standard errors: a two-sided false-alarm rate of 6e-5 per
# compared number (11 numbers in the agreement test: < 1e-3 in all).
Z = 4.0
NUM_WARMUP = 150
NUM_SAMPLES = 150
NUM_CHAINS = 2
NUM_TEST_PAIRS = 5
CONFIG = ModelConfig(rank=2)


@pytest.fixture(scope="module")
def problem(make_tiny_problem):
    return make_tiny_problem(num_test=NUM_TEST_PAIRS)


@pytest.fixture(scope="module")
def nuts_run(problem):
    data, _ = problem
    return nuts.sample(
        jax.random.PRNGKey(2), data, CONFIG, num_samples=NUM_SAMPLES, num_warmup=NUM_WARMUP,
        num_chains=NUM_CHAINS, progress_bar=False,
    )


def test_stats_timing_and_info(nuts_run):
    """NUTS's own fields (shapes and finiteness of the draws: tests/test_engines.py)."""
    lead = (NUM_CHAINS, NUM_SAMPLES)
    assert set(nuts_run.stats) == {"diverging", "num_steps", "accept_prob", "step_size"}
    for value in nuts_run.stats.values():
        assert value.shape == lead
    assert nuts_run.stats["diverging"].dtype == bool
    assert np.all(nuts_run.stats["num_steps"] >= 1)
    for key in ("compile_seconds", "sampling_seconds", "seconds_per_sample", "fit_seconds"):
        assert np.isfinite(nuts_run.timing[key]) and nuts_run.timing[key] >= 0
    assert nuts_run.info["engine"] == "nuts"
    assert nuts_run.info["num_divergences"] == int(nuts_run.stats["diverging"].sum())
    assert nuts_run.info["settings"]["parameterization"] == nuts.DEFAULT_PARAMETERIZATION
    # Precisions stay symmetric positive definite.
    assert np.all(np.linalg.eigvalsh(nuts_run.draws.user_precision) > 0)


def test_same_seed_same_draws_and_chain0_independent_of_num_chains(problem, nuts_run):
    """Chain c runs from fold_in(key, c): one chain with the same key repeats
    chain 0 of the two-chain run bit for bit (same compiled program: same
    warmup, same chunk length), and so does a second call."""
    data, _ = problem
    kwargs = dict(num_samples=10, num_warmup=NUM_WARMUP, num_chains=1, progress_bar=False)
    first = nuts.sample(jax.random.PRNGKey(2), data, CONFIG, **kwargs)
    again = nuts.sample(jax.random.PRNGKey(2), data, CONFIG, **kwargs)
    for a, b, c in zip(jax.tree.leaves(first.draws), jax.tree.leaves(again.draws), jax.tree.leaves(nuts_run.draws)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a[0], c[0, :10])
    # ... and chain 1 is another stream.
    assert not np.array_equal(nuts_run.draws.user_factors[1, :10], first.draws.user_factors[0])


class _Killed(Exception):
    pass


def test_checkpoint_resume_gives_the_same_draws(problem, tmp_path, monkeypatch):
    """A run killed after a few chunks and started again with the same
    checkpoint file continues where it stopped: the draws equal those of an
    uninterrupted run, and the finished run deletes the file. The file is
    the driver's ``numpy.savez`` archive (no pickle)."""
    data, _ = problem
    kwargs = dict(num_samples=20, num_warmup=NUM_WARMUP, num_chains=1, progress_bar=False)
    uninterrupted = nuts.sample(jax.random.PRNGKey(2), data, CONFIG, **kwargs)
    path = tmp_path / "run.ckpt"
    write = driver.write_checkpoint
    saves = []

    def write_then_die(*args):
        write(*args)
        saves.append(1)
        if len(saves) == 16:  # after 16 of the 17 chunks: warmup done, one draw chunk
            raise _Killed

    monkeypatch.setattr(driver, "CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(driver, "write_checkpoint", write_then_die)
    with pytest.raises(_Killed):
        nuts.sample(jax.random.PRNGKey(2), data, CONFIG, checkpoint=path, **kwargs)
    assert path.exists()
    with np.load(path, allow_pickle=False) as saved:
        assert int(saved["chunk"]) == 16
    monkeypatch.setattr(driver, "write_checkpoint", write)
    with pytest.raises(ValueError, match="another run"):
        nuts.sample(jax.random.PRNGKey(9), data, CONFIG, checkpoint=path, **kwargs)
    resumed = nuts.sample(jax.random.PRNGKey(2), data, CONFIG, checkpoint=path, **kwargs)
    for a, b in zip(jax.tree.leaves(resumed.draws), jax.tree.leaves(uninterrupted.draws)):
        np.testing.assert_array_equal(a, b)
    assert not path.exists()


def _moments(draws: Params, pairs) -> dict:
    """Posterior predictive summaries of the held-out pairs and their MCSEs.

    mean: E[mu] with mu = L_u . R_v + m_v per draw; MCSE from ArviZ (ESS-based).
    sd: the predictive sd sqrt(E[1/alpha] + Var[mu]). Its MCSE by the delta
    method, d sd = (d E[1/alpha] + 2 sd(mu) d sd(mu)) / (2 sd), adding the two
    MCSEs (not in quadrature: the two estimates may be correlated, and
    |a + b| <= |a| + |b| bounds any correlation).
    noise: E[1/sqrt(alpha)].
    """
    fn = jax.vmap(jax.vmap(predict_mean, in_axes=(0, None, None)), in_axes=(0, None, None))
    mu = np.asarray(fn(draws, pairs[0], pairs[1]), np.float64)  # (chain, draw, pair)
    var = 1.0 / np.asarray(draws.noise_precision, np.float64)  # (chain, draw)
    spread = mu.std(axis=(0, 1))
    spread_se = np.asarray(az.mcse(mu, method="sd"))
    noise_var, noise_var_se = var.mean(), float(az.mcse(var))
    sd = np.sqrt(noise_var + spread**2)
    return dict(
        mean=(mu.mean(axis=(0, 1)), np.asarray(az.mcse(mu))),
        sd=(sd, (noise_var_se + 2 * spread * spread_se) / (2 * sd)),
        noise=(np.sqrt(var).mean(), float(az.mcse(np.sqrt(var)))),
    )


def test_agrees_with_gibbs_within_monte_carlo_error(problem, nuts_run):
    """Both engines sample the same posterior, so their estimates of a
    posterior expectation differ only by Monte Carlo error. Each estimate's
    MCSE comes from its own effective sample size (ArviZ, arrays shaped
    (chain, draw)); the chains of the two engines are independent, so the
    difference has standard error sqrt(mcse_a^2 + mcse_b^2), and |diff| <= Z
    times that fails by chance with probability ~6e-5 per number. Seeds are
    fixed, so the test is deterministic."""
    data, pairs = problem
    ref = gibbs.sample(
        jax.random.PRNGKey(1), data, CONFIG, num_samples=600, num_warmup=100, num_chains=2, progress_bar=False
    )
    a, b = _moments(ref.draws, pairs), _moments(nuts_run.draws, pairs)
    for name in ("mean", "sd", "noise"):
        (est_a, se_a), (est_b, se_b) = a[name], b[name]
        bound = Z * np.sqrt(np.square(se_a) + np.square(se_b))
        assert np.all(np.abs(est_a - est_b) <= bound), (name, est_a, est_b, bound)
    # The check has power: the MCSEs are small next to the quantities compared.
    assert np.all(b["mean"][1] < 0.05) and np.all(b["sd"][1] < 0.05)


def test_sampled_model_is_the_same_density(problem):
    """NUTS samples ``reparameterized_model``: the model with its constant
    normalizers precomputed (``host_normalized``) and, non-centred, in the
    coordinates (z, w, eps). Centred, its log density equals the model's;
    non-centred, the map to (L, R, m) has a Jacobian that does not depend on
    (z, w, eps): log p_nc = log p + n_users log|S_L| + n_items (log|S_R| +
    log tau^-1/2) with S S^T = Lambda^-1."""
    from numpyro.infer.util import log_density

    data, _ = problem
    params = gibbs.init(jax.random.PRNGKey(5), data, CONFIG, scale=0.5)
    lam = jnp.array([[2.0, 0.3], [0.3, 1.5]])
    params = params._replace(user_precision=lam, item_precision=2 * lam, user_mean=jnp.array([0.1, -0.2]),
                             offset_precision=jnp.asarray(3.0), noise_precision=jnp.asarray(2.5))
    centred_model = nuts.reparameterized_model(CONFIG, "centered")
    nc_model = nuts.reparameterized_model(CONFIG, "noncentered")

    @jax.jit
    def densities(params):
        latent = {k: getattr(params, k) for k in latent_sites(CONFIG)}
        reference, _ = log_density(numpyro_model, (data, CONFIG), {}, latent)
        centred, _ = log_density(centred_model, (data,), {}, latent)
        nc, trace = log_density(nc_model, (data,), {}, nuts.sample_site_values(params, CONFIG, "noncentered"))
        return reference, centred, nc, trace["user_factors"]["value"], trace["item_offsets"]["value"]

    reference, centred, nc, user_factors, offsets = densities(params)
    np.testing.assert_allclose(float(centred), float(reference), rtol=1e-6)
    np.testing.assert_allclose(user_factors, params.user_factors, atol=1e-5)
    np.testing.assert_allclose(offsets, params.item_offsets, atol=1e-5)

    def log_sqrt_cov(precision):  # log|S| = -1/2 log|Lambda|
        return -0.5 * np.linalg.slogdet(np.asarray(precision, np.float64))[1]

    jacobian = (
        data.num_users * log_sqrt_cov(params.user_precision)
        + data.num_items * log_sqrt_cov(params.item_precision)
        - 0.5 * data.num_items * np.log(float(params.offset_precision))
    )
    np.testing.assert_allclose(float(nc), float(reference) + jacobian, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_samples=0),
        dict(num_samples=-3),
        dict(num_chains=0),
        dict(num_warmup=-1),
        dict(thin=0),
        dict(chain_method="threads"),
        dict(parameterization="partial"),
        dict(target_accept_prob=1.0),
        dict(max_tree_depth=0),
        dict(init="prior"),
        dict(dense_mass=3),
        dict(track_pairs=([0, 1], [0])),
    ],
)
def test_bad_input(problem, kwargs):
    data, _ = problem
    with pytest.raises(ValueError):
        nuts.sample(jax.random.PRNGKey(0), data, CONFIG, progress_bar=False, **kwargs)
