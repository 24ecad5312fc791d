"""Convergence diagnostics on identifiable quantities.

Posteriors are built directly from synthetic draws of known structure
(i.i.d. chains, chains with shifted means, rotated copies), plus one short
Gibbs run on tiny data; every seed is fixed, so each test is deterministic.
"""

import warnings

import jax
import numpy as np
import pytest
from scipy.stats import ortho_group

from bayesmf import diagnostics, storage
from bayesmf.data import RatingScale, Ratings
from bayesmf.diagnostics import ConvergenceWarning
from bayesmf.engines import gibbs
from bayesmf.model import ModelConfig, Params, model_data_from_ratings
from bayesmf.posterior import Posterior

NUM_USERS, NUM_ITEMS, RANK = 30, 20, 2

# Largest R-hat of i.i.d. chains: with 4 chains of 1000 draws the rank
# R-hat of an i.i.d. quantity exceeds 1 by O(1/draws); over the ~100
# quantities reported its maximum stays well below the 1.01 threshold
# (Vehtari et al. 2021, fig. 3), so 1.01 itself is the bound.
IID_RHAT_MAX = 1.01
# A shift of one chain by 2 posterior sds gives R-hat ~ 1.2 for 4 chains: far above 1.01.
SHIFT_SDS = 2.0
# Bulk ESS of N i.i.d. draws is N up to sampling error; +-30% is > 5 standard errors at N = 1000.
ESS_IID_RTOL = 0.3
# Rotations change float64 sums only by rounding.
INVARIANCE_RTOL = 1e-9


def make_ratings(seed=0, nnz=300, str_ids=False):
    rng = np.random.default_rng(seed)
    cells = rng.choice(NUM_USERS * NUM_ITEMS, size=nnz, replace=False)
    users, items = np.divmod(cells, NUM_ITEMS)
    lu = rng.normal(0, 0.7, (NUM_USERS, RANK))
    rv = rng.normal(0, 0.7, (NUM_ITEMS, RANK))
    m = rng.normal(3.0, 0.5, NUM_ITEMS)
    r = np.clip(np.sum(lu[users] * rv[items], 1) + m[items] + rng.normal(0, 0.5, nnz), 1, 5)
    if str_ids:
        users = np.array([f"u{u}" for u in users], dtype=object)
        items = np.array([f"i{i}" for i in items], dtype=object)
    else:
        users, items = users + 101, items + 1
    return Ratings.from_arrays(users, items, r, scale=RatingScale(1.0, 5.0, None))


def random_spd(rng, shape, d):
    a = rng.normal(size=shape + (d, d))
    return np.einsum("...ij,...kj->...ik", a, a) + d * np.eye(d)


def iid_draws(seed=0, num_chains=4, num_draws=1000, dtype=np.float64) -> Params:
    """I.i.d. draws around a fixed truth: every chain samples the same distribution."""
    rng = np.random.default_rng(seed)
    c, s = num_chains, num_draws
    truth_l = rng.normal(0, 0.7, (NUM_USERS, RANK))
    truth_r = rng.normal(0, 0.7, (NUM_ITEMS, RANK))
    draws = Params(
        user_factors=truth_l + 0.1 * rng.normal(size=(c, s, NUM_USERS, RANK)),
        item_factors=truth_r + 0.1 * rng.normal(size=(c, s, NUM_ITEMS, RANK)),
        item_offsets=3.0 + 0.1 * rng.normal(size=(c, s, NUM_ITEMS)),
        noise_precision=4.0 + 0.2 * rng.normal(size=(c, s)),
        user_mean=0.2 * rng.normal(size=(c, s, RANK)),
        user_precision=random_spd(rng, (c, s), RANK),
        item_mean=0.2 * rng.normal(size=(c, s, RANK)),
        item_precision=random_spd(rng, (c, s), RANK),
        offset_mean=3.0 + 0.05 * rng.normal(size=(c, s)),
        offset_precision=4.0 + 0.2 * rng.normal(size=(c, s)),
    )
    return jax.tree.map(lambda x: np.asarray(x, dtype), draws)


def make_posterior(draws, ratings=None, config=None, method="gibbs"):
    ratings = make_ratings() if ratings is None else ratings
    return Posterior(
        draws, config or ModelConfig(rank=RANK), ratings.user_vocab, ratings.item_vocab, ratings.scale,
        method=method, train=ratings,
    )


@pytest.fixture(scope="module")
def iid_posterior():
    return make_posterior(iid_draws())


# --- identifiable quantities -------------------------------------------------------


def test_identifiable_quantities_values(iid_posterior):
    p = iid_posterior
    sampled, fixed = diagnostics.identifiable_quantities(p)
    assert not fixed.data_vars  # hyper priors, estimated offsets: everything is random
    d = p.draws
    c, s = 1, 7
    l, r = d.user_factors[c, s], d.item_factors[c, s]
    cov = np.linalg.inv(d.user_precision[c, s])
    np.testing.assert_allclose(sampled["noise_sd"][c, s], 1 / np.sqrt(d.noise_precision[c, s]))
    np.testing.assert_allclose(sampled["item_offsets"][c, s], d.item_offsets[c, s])
    np.testing.assert_allclose(sampled["offset_sd"][c, s], 1 / np.sqrt(d.offset_precision[c, s]))
    np.testing.assert_allclose(sampled["user_prior_trace_cov"][c, s], np.trace(cov))
    np.testing.assert_allclose(sampled["user_prior_eigvals"][c, s], np.sort(np.linalg.eigvalsh(cov))[::-1])
    np.testing.assert_allclose(sampled["user_mean_norm"][c, s], np.linalg.norm(d.user_mean[c, s]))
    np.testing.assert_allclose(sampled["user_factors_norm"][c, s], np.linalg.norm(l))
    np.testing.assert_allclose(sampled["item_factors_norm"][c, s], np.linalg.norm(r))
    np.testing.assert_allclose(sampled["pred_fro_norm"][c, s], np.linalg.norm(l @ r.T))
    assert sampled["probe_pred"].dims == ("chain", "draw", "probe")
    assert sampled.sizes["probe"] == diagnostics.NUM_PROBE_PAIRS
    u = p.user_vocab.index(sampled["probe_user"].values)
    i = p.item_vocab.index(sampled["probe_item"].values)
    np.testing.assert_allclose(sampled["probe_pred"][c, s], np.sum(l[u] * r[i], 1) + d.item_offsets[c, s, i])
    # The probes are training ratings, the same ones every time.
    train_pairs = set(zip(p.train.user_index.tolist(), p.train.item_index.tolist()))
    assert set(zip(u.tolist(), i.tolist())) <= train_pairs
    again, _ = diagnostics.identifiable_quantities(p)
    np.testing.assert_array_equal(again["probe_user"], sampled["probe_user"])


def test_given_probe_pairs_keep_their_ids(iid_posterior):
    p = iid_posterior
    users = np.array([p.user_vocab.ids[3], 424242])
    items = np.array([p.item_vocab.ids[5], p.item_vocab.ids[6]])
    sampled, _ = diagnostics.identifiable_quantities(p, probe_pairs=(users, items))
    assert sampled["probe_user"].values.tolist() == users.tolist()
    d = p.draws
    np.testing.assert_allclose(
        sampled["probe_pred"][:, :, 0],
        np.einsum("csd,csd->cs", d.user_factors[:, :, 3], d.item_factors[:, :, 5]) + d.item_offsets[:, :, 5],
    )
    # The unseen user gets the cold-start prior mean m_v + mu_L . R_v (through Posterior.components, float32).
    cold = d.item_offsets[:, :, 6] + np.einsum("csd,csd->cs", d.user_mean, d.item_factors[:, :, 6])
    np.testing.assert_allclose(sampled["probe_pred"][:, :, 1], cold, rtol=1e-5)
    assert "probe_pred[424242:" + str(items[1]) + "]" in diagnostics.summary(p, probe_pairs=(users, items)).index


def test_fixed_mode_quantities_are_constant_data():
    draws = iid_draws(num_draws=20)
    config = ModelConfig(rank=RANK, priors="fixed", offsets="empirical")
    sampled, fixed = diagnostics.identifiable_quantities(make_posterior(draws, config=config))
    assert set(fixed.data_vars) == {
        "noise_sd", "item_offsets", "offset_mean", "offset_sd", "user_prior_trace_cov", "user_prior_eigvals",
        "user_mean_norm", "item_prior_trace_cov", "item_prior_eigvals", "item_mean_norm",
    }
    assert set(sampled.data_vars) == {"user_factors_norm", "item_factors_norm", "pred_fro_norm", "probe_pred"}
    assert fixed["user_prior_eigvals"].dims == ("factor",)


def test_summary_reports_identifiable_quantities_only(iid_posterior):
    table = diagnostics.summary(iid_posterior)
    names = {label.split("[")[0] for label in table.index}
    assert names == {
        "noise_sd", "item_offsets", "offset_mean", "offset_sd", "user_prior_trace_cov", "user_prior_eigvals",
        "user_mean_norm", "item_prior_trace_cov", "item_prior_eigvals", "item_mean_norm", "user_factors_norm",
        "item_factors_norm", "pred_fro_norm", "probe_pred",
    }
    assert {"r_hat", "ess_bulk", "ess_tail", "mean", "sd"} <= set(table.columns)
    assert "item_offsets[1]" in table.index  # external item ids label the rows
    some_probe = [label for label in table.index if label.startswith("probe_pred[")][0]
    assert ":" in some_probe  # user:item ids


# --- R-hat and ESS on known structure ------------------------------------------------


def test_rhat_near_one_for_iid_chains(iid_posterior):
    rhat = diagnostics.max_rhat(iid_posterior)
    assert 1.0 - 0.01 < rhat < IID_RHAT_MAX
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert diagnostics.check(iid_posterior) == []


@pytest.mark.filterwarnings("ignore::bayesmf.diagnostics.ConvergenceWarning")
def test_shifted_chain_is_flagged():
    draws = iid_draws(num_draws=400)
    sd = draws.noise_precision.std()
    shifted = draws.noise_precision.copy()
    shifted[0] += SHIFT_SDS * sd
    posterior = make_posterior(draws._replace(noise_precision=shifted))
    table = diagnostics.summary(posterior)
    assert table.loc["noise_sd", "r_hat"] > 1.1
    assert diagnostics.max_rhat(posterior) > 1.01
    with pytest.warns(ConvergenceWarning, match="noise_sd: R-hat"):
        messages = diagnostics.check(posterior)
    assert any(m.startswith("noise_sd: R-hat") for m in messages)
    assert not any(m.startswith("item_offsets: R-hat") for m in messages)


@pytest.mark.filterwarnings("ignore::bayesmf.diagnostics.ConvergenceWarning")
def test_shifted_offsets_report_count_and_worst_item():
    draws = iid_draws(num_draws=400)
    offsets = draws.item_offsets.copy()
    offsets[1, :, 3] += 1.0  # 10 posterior sds, one chain, item id 4
    posterior = make_posterior(draws._replace(item_offsets=offsets))
    with pytest.warns(ConvergenceWarning):
        messages = diagnostics.check(posterior)
    (message,) = [m for m in messages if m.startswith("item_offsets: ") and "R-hat" in m]
    assert "1 of 20 values have R-hat > 1.01" in message and "item_offsets[4]" in message


@pytest.mark.filterwarnings("ignore::bayesmf.diagnostics.ConvergenceWarning")
def test_low_ess_is_flagged():
    """A random walk (strongly autocorrelated chains) has a tiny ESS."""
    draws = iid_draws(num_draws=200)
    rng = np.random.default_rng(5)
    walk = 4.0 + 0.05 * np.cumsum(rng.normal(size=draws.noise_precision.shape), axis=1)
    posterior = make_posterior(draws._replace(noise_precision=walk))
    with pytest.warns(ConvergenceWarning, match="noise_sd: bulk ESS < 100"):
        diagnostics.check(posterior, rhat_threshold=np.inf)


def test_point_estimate_has_no_diagnostics():
    posterior = make_posterior(iid_draws(num_chains=1, num_draws=1), method="map")
    assert np.isnan(diagnostics.max_rhat(posterior))
    assert diagnostics.check(posterior) == []
    table = diagnostics.summary(posterior)
    assert table["r_hat"].isna().all()


def test_one_chain_still_gets_split_rhat():
    posterior = make_posterior(iid_draws(num_chains=1, num_draws=400))
    assert np.isfinite(diagnostics.max_rhat(posterior))


@pytest.mark.parametrize("num_chains", [1, 3])
def test_max_rhat_is_the_largest_r_hat_of_the_summary(num_chains):
    """max_rhat computes R-hat alone; it must equal the maximum of the
    summary table's r_hat (one chain: over its halves)."""
    draws = iid_draws(num_chains=num_chains, num_draws=120)
    draws.item_offsets[0, 60:] += 0.5  # a drift, so the maximum is not a tie near 1
    posterior = make_posterior(draws)
    table = diagnostics.summary(posterior)
    assert diagnostics.max_rhat(posterior) == pytest.approx(float(np.nanmax(table["r_hat"])), rel=1e-12)


# --- rotation invariance ------------------------------------------------------------


def rotate(draws: Params, chain: int, draw: int, q: np.ndarray) -> Params:
    """Rotate one draw's latent space: L -> LQ, R -> RQ, mu -> Q^T mu, Lambda -> Q^T Lambda Q."""
    out = jax.tree.map(lambda x: x.copy(), draws)
    out.user_factors[chain, draw] = draws.user_factors[chain, draw] @ q
    out.item_factors[chain, draw] = draws.item_factors[chain, draw] @ q
    out.user_mean[chain, draw] = q.T @ draws.user_mean[chain, draw]
    out.item_mean[chain, draw] = q.T @ draws.item_mean[chain, draw]
    out.user_precision[chain, draw] = q.T @ draws.user_precision[chain, draw] @ q
    out.item_precision[chain, draw] = q.T @ draws.item_precision[chain, draw] @ q
    return out


def test_rotation_leaves_every_diagnostic_unchanged():
    draws = iid_draws(num_draws=100)
    base = make_posterior(draws)
    rotated = draws
    for k, (c, s) in enumerate([(0, 3), (2, 50), (3, 99)]):
        rotated = rotate(rotated, c, s, ortho_group.rvs(RANK, random_state=k))
    assert not np.allclose(rotated.user_factors, draws.user_factors)
    turned = make_posterior(rotated)
    a, _ = diagnostics.identifiable_quantities(base)
    b, _ = diagnostics.identifiable_quantities(turned)
    for name in a.data_vars:
        np.testing.assert_allclose(b[name], a[name], rtol=INVARIANCE_RTOL, atol=1e-12, err_msg=name)
    ta, tb = diagnostics.summary(base), diagnostics.summary(turned)
    np.testing.assert_allclose(tb.to_numpy(float), ta.to_numpy(float), rtol=INVARIANCE_RTOL)
    assert diagnostics.max_rhat(turned) == pytest.approx(diagnostics.max_rhat(base), rel=INVARIANCE_RTOL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert diagnostics.check(turned, min_ess=10**4) == diagnostics.check(base, min_ess=10**4)
    # The ArviZ view holds the same identifiable quantities.
    tree_a = storage.to_datatree(base, keep_factors=False)["posterior"]
    tree_b = storage.to_datatree(turned, keep_factors=False)["posterior"]
    assert set(tree_a.data_vars) == set(a.data_vars)
    for name in tree_a.data_vars:
        np.testing.assert_allclose(tree_b[name], tree_a[name], rtol=INVARIANCE_RTOL, atol=1e-12, err_msg=name)
    users, items = base.train.user_ids[:40], base.train.item_ids[:40]
    y = np.asarray(base.train.rating[:40])
    np.testing.assert_allclose(
        diagnostics.rmse_trace(turned, users, items, y), diagnostics.rmse_trace(base, users, items, y),
        rtol=INVARIANCE_RTOL,
    )


# --- ESS per second and RMSE traces -------------------------------------------------


def test_ess_per_second_of_iid_draws():
    draws = np.random.default_rng(2).normal(size=(4, 250, 12))
    value = diagnostics.ess_per_second(draws, 2.0)
    assert value == pytest.approx(1000 / 2.0, rel=ESS_IID_RTOL)
    with pytest.raises(ValueError, match="shape"):
        diagnostics.ess_per_second(draws[0], 2.0)
    with pytest.raises(ValueError, match="seconds"):
        diagnostics.ess_per_second(draws, 0.0)


def test_rmse_trace_matches_per_draw_means(iid_posterior):
    p = iid_posterior
    rng = np.random.default_rng(3)
    u = rng.integers(0, NUM_USERS, 25)
    i = rng.integers(0, NUM_ITEMS, 25)
    users, items = p.user_vocab.ids[u], p.item_vocab.ids[i]
    y = rng.uniform(1, 5, 25)
    trace = diagnostics.rmse_trace(p, users, items, y)
    assert trace.shape == (p.num_chains, p.num_draws)
    d = p.draws
    mean = np.einsum("csnd,csnd->csn", d.user_factors[:, :, u], d.item_factors[:, :, i]) + d.item_offsets[:, :, i]
    np.testing.assert_allclose(trace, np.sqrt(np.mean((mean - y) ** 2, -1)), rtol=1e-12)


def test_rmse_trace_uses_cold_start_mean_for_unknown_ids(iid_posterior):
    p = iid_posterior
    item = p.item_vocab.ids[2]
    trace = diagnostics.rmse_trace(p, [999_999], [item], [4.0])
    d = p.draws
    expected = np.abs(d.item_offsets[:, :, 2] + np.einsum("csd,csd->cs", d.item_factors[:, :, 2], d.user_mean) - 4.0)
    np.testing.assert_allclose(trace, expected, rtol=1e-5)  # via Posterior.components in float32
    with pytest.raises(ValueError, match="shape"):
        diagnostics.rmse_trace(p, [999_999], [item], [4.0, 3.0])


# --- a real sampler -------------------------------------------------------------------


def test_gibbs_run_on_tiny_data_converges():
    ratings = make_ratings(seed=4)
    config = ModelConfig(rank=RANK)
    result = gibbs.sample(
        jax.random.PRNGKey(0), model_data_from_ratings(ratings), config,
        num_samples=50, num_warmup=100, num_chains=2, progress_bar=False,
    )
    posterior = Posterior(
        result.draws, config, ratings.user_vocab, ratings.item_vocab, ratings.scale, method="gibbs",
        stats=result.stats, train=ratings,
    )
    table = diagnostics.summary(posterior)
    assert np.isfinite(table["r_hat"]).all()
    # 2 x 50 draws: R-hat of the noise and the probes is near 1 (loose: short chains).
    assert table.loc["noise_sd", "r_hat"] < 1.1
    assert np.median(table.loc[[k for k in table.index if k.startswith("probe_pred")], "r_hat"]) < 1.05
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        messages = diagnostics.check(posterior)
    assert all(isinstance(m, str) for m in messages)


def test_one_chain_with_a_drift_is_flagged():
    draws = iid_draws(num_chains=1, num_draws=400)
    drifting = draws.noise_precision.copy()
    drifting[0, 200:] += SHIFT_SDS * drifting.std()
    posterior = make_posterior(draws._replace(noise_precision=drifting))
    assert diagnostics.summary(posterior).loc["noise_sd", "r_hat"] > 1.1
