"""Correctness of the predictive metrics.

Closed forms are checked against scipy (densities, quantiles, quadrature of
the CRPS integral) and against Monte Carlo with a tolerance of ``Z`` standard
errors computed in the test from the same draws. Seeds are fixed, so each
test is deterministic.
"""

import doctest
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from bayesmf import metrics

# 4 standard errors: a two-sided false alarm rate of 6e-5 per compared number.
Z = 4.0

# Agreement of two exact computations of the same number (float64 round-off,
# or scipy.integrate.quad's default tolerance of 1.5e-8).
EXACT = 1e-10
QUAD = 1e-7


def test_module_doctests():
    for module in (metrics, metrics.scores, metrics.summary, metrics.ranking):
        assert doctest.testmod(module).failed == 0, module.__name__


def random_mixture(seed, num_draws=6, n=5, weighted=False):
    rng = np.random.default_rng(seed)
    mu = rng.normal(3.0, 1.0, (num_draws, n))
    sd = rng.uniform(0.3, 1.2, (num_draws, n))
    w = rng.uniform(0.1, 1.0, num_draws) if weighted else None
    return mu, sd, w


def draw_mixture(rng, mu, sd, w, size):
    """``size`` draws per row from the mixture, shape (size, n)."""
    num_draws, n = mu.shape
    p = np.full(num_draws, 1.0 / num_draws) if w is None else w / w.sum()
    comp = rng.choice(num_draws, size=(size, n), p=p)
    cols = np.arange(n)
    return rng.normal(mu[comp, cols], sd[comp, cols])


def crps_samples_se(y, samples):
    """Standard error of the fair energy CRPS estimate, per row.

    The estimate is a U-statistic with kernel
    ``(|x - y| + |x' - y| - |x - x'|) / 2``; its variance is ``Var(g(X)) / S``
    to first order with ``g(x) = |x - y| - E|x - X'|``, estimated here from the
    draws (``E|x_i - X'|`` by the mean over the other draws, via sorting).
    """
    num_draws = samples.shape[0]
    xs = np.sort(samples, axis=0)
    i = np.arange(num_draws)[:, None]
    below = np.cumsum(xs, axis=0) - xs  # sum of draws below x_(i)
    total = xs.sum(0)
    mean_abs = (xs * i - below + (total - below - xs) - xs * (num_draws - 1 - i)) / (num_draws - 1)
    g = np.abs(xs - y) - mean_abs
    return g.std(axis=0, ddof=1) / np.sqrt(num_draws)


def crps_by_quadrature(y, cdf):
    """``int (F(x) - 1{x >= y})^2 dx`` for a scalar y."""
    left = integrate.quad(lambda x: cdf(x) ** 2, -np.inf, y)[0]
    right = integrate.quad(lambda x: (1.0 - cdf(x)) ** 2, y, np.inf)[0]
    return left + right


# --------------------------------------------------------------------------
# point and Gaussian


def test_rmse_mae_known_values():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    m = np.array([2.0, 2.0, 1.0, 4.0])
    assert metrics.rmse(y, m) == pytest.approx(np.sqrt(5 / 4))
    assert metrics.mae(y, m) == pytest.approx(3 / 4)


def test_gaussian_nll_matches_scipy():
    rng = np.random.default_rng(0)
    y, m, s = rng.normal(size=50), rng.normal(size=50), rng.uniform(0.2, 2.0, 50)
    expected = -np.mean(stats.norm.logpdf(y, m, s))
    assert metrics.nll(y, m, s) == pytest.approx(expected, abs=EXACT)
    # A scalar sd broadcasts.
    assert metrics.nll(y, m, 0.7) == pytest.approx(-np.mean(stats.norm.logpdf(y, m, 0.7)), abs=EXACT)


def test_gaussian_interval_matches_scipy():
    m, s = np.array([0.0, 3.0, -2.0]), np.array([1.0, 0.5, 2.0])
    for prob in (0.5, 0.9, 0.99):
        lo, hi = metrics.interval(m, s, prob)
        elo, ehi = stats.norm.interval(prob, m, s)
        np.testing.assert_allclose(lo, elo, atol=EXACT)
        np.testing.assert_allclose(hi, ehi, atol=EXACT)


def test_gaussian_cdf_and_quantile_match_scipy():
    m, s = np.array([0.0, 3.0, -2.0]), np.array([1.0, 0.5, 2.0])
    x = np.array([0.3, 2.0, 1.0])
    np.testing.assert_allclose(metrics.cdf(x, m, s), stats.norm.cdf(x, m, s), atol=EXACT)
    for prob in (0.01, 0.5, 0.975):
        np.testing.assert_allclose(metrics.quantile(prob, m, s), stats.norm.ppf(prob, m, s), atol=EXACT)
    # One probability per row.
    p = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(metrics.quantile(p, m, s), stats.norm.ppf(p, m, s), atol=EXACT)
    lo, hi = metrics.interval(m, s, p)
    np.testing.assert_allclose(hi - lo, 2 * stats.norm.ppf(0.5 + 0.5 * p) * s, atol=EXACT)


def test_coverage_counts_both_ends():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    assert metrics.coverage(y, np.full(4, 1.0), np.full(4, 2.0)) == 0.5
    assert metrics.coverage(y, y, y) == 1.0


def test_crps_gaussian_matches_quadrature():
    for y, m, s in [(0.0, 0.0, 1.0), (2.5, 1.0, 0.3), (-4.0, 1.0, 2.0)]:
        expected = crps_by_quadrature(y, lambda x: stats.norm.cdf(x, m, s))
        assert metrics.crps([y], [m], [s]) == pytest.approx(expected, abs=QUAD)


def test_crps_gaussian_matches_sample_energy_form():
    rng = np.random.default_rng(1)
    y = np.array([0.0, 1.5, 4.0, -1.0, 3.2])
    m = np.array([0.0, 1.0, 3.5, 1.0, 3.0])
    s = np.array([1.0, 0.5, 0.8, 0.4, 1.5])
    samples = rng.normal(m, s, size=(200_000, 5))
    estimate = metrics.crps_samples_per_row(y, samples, fair=True)
    se = crps_samples_se(y, samples)
    exact = metrics.crps_per_row(y, m, s)
    assert np.all(np.abs(estimate - exact) <= Z * se), (estimate - exact) / se


def test_crps_samples_matches_brute_force():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(7, 4)), rng.normal(size=4)
    first = np.mean(np.abs(x - y), axis=0)
    pair_sum = np.abs(x[:, None, :] - x[None, :, :]).sum((0, 1))
    np.testing.assert_allclose(metrics.crps_samples_per_row(y, x), first - pair_sum / (2 * 49), atol=EXACT)
    np.testing.assert_allclose(metrics.crps_samples_per_row(y, x, fair=True), first - pair_sum / (2 * 42), atol=EXACT)
    assert metrics.crps_samples(y, x) == pytest.approx(np.mean(first - pair_sum / 98), abs=EXACT)


def test_gaussian_interval_coverage_is_nominal_on_a_correct_model():
    rng = np.random.default_rng(3)
    n = 20_000
    m, s = rng.normal(3.5, 1.0, n), rng.uniform(0.3, 1.5, n)
    y = rng.normal(m, s)
    for prob in (0.5, 0.8, 0.9, 0.95):
        cov = metrics.coverage(y, *metrics.interval(m, s, prob))
        assert abs(cov - prob) <= Z * np.sqrt(prob * (1 - prob) / n)  # binomial sd


# --------------------------------------------------------------------------
# mixtures


def test_one_component_mixture_equals_gaussian():
    # A 1-D mu, a (1, n) mu and S identical components are the same Gaussian;
    # the first two take the closed-form path, the last the mixture path.
    rng = np.random.default_rng(4)
    y, m, s = rng.normal(size=30), rng.normal(size=30), rng.uniform(0.2, 2.0, 30)
    mu, sd = m[None], s[None]
    mean, mix_sd = metrics.moments(mu, sd)
    np.testing.assert_allclose(mean, m, atol=EXACT)
    np.testing.assert_allclose(mix_sd, s, atol=EXACT)
    assert metrics.nll(y, mu, sd) == pytest.approx(metrics.nll(y, m, s), abs=EXACT)
    np.testing.assert_allclose(metrics.crps_per_row(y, mu, sd), metrics.crps_per_row(y, m, s), atol=EXACT)
    np.testing.assert_allclose(metrics.cdf(y, mu, sd), stats.norm.cdf(y, m, s), atol=EXACT)
    lo, hi = metrics.interval(mu, sd, 0.9, tol=1e-9)
    elo, ehi = metrics.interval(m, s, 0.9)
    np.testing.assert_allclose(lo, elo, atol=1e-9)
    np.testing.assert_allclose(hi, ehi, atol=1e-9)
    # Identical components are also one Gaussian, whatever the weights.
    mu3, sd3, w3 = np.repeat(mu, 3, 0), np.repeat(sd, 3, 0), [0.2, 0.3, 0.5]
    assert metrics.crps(y, mu3, sd3, w3) == pytest.approx(metrics.crps(y, m, s), abs=EXACT)
    mean3, sd3_mix = metrics.moments(mu3, sd3, w3)
    np.testing.assert_allclose(mean3, m, atol=EXACT)
    np.testing.assert_allclose(sd3_mix, s, atol=EXACT)
    np.testing.assert_allclose(metrics.nll_per_row(y, mu3, sd3, w3), metrics.nll_per_row(y, m, s), atol=EXACT)
    np.testing.assert_allclose(metrics.cdf(y, mu3, sd3, w3), stats.norm.cdf(y, m, s), atol=EXACT)
    lo3, hi3 = metrics.interval(mu3, sd3, 0.9, w3, tol=1e-9)
    np.testing.assert_allclose(lo3, elo, atol=1e-9)
    np.testing.assert_allclose(hi3, ehi, atol=1e-9)


def test_sd_broadcasts_over_components():
    # One sd per row (shape (n,)) serves every component of a (S, n) mu.
    mu, sd, w = random_mixture(21, num_draws=4, n=5, weighted=True)
    y = np.linspace(2.0, 4.0, 5)
    row_sd = sd[0]
    full = np.broadcast_to(row_sd, mu.shape)
    np.testing.assert_array_equal(metrics.crps_per_row(y, mu, row_sd, w), metrics.crps_per_row(y, mu, full, w))
    np.testing.assert_array_equal(metrics.nll_per_row(y, mu, row_sd, w), metrics.nll_per_row(y, mu, full, w))


@pytest.mark.parametrize("weighted", [False, True])
def test_mixture_cdf_and_nll_match_scipy(weighted):
    mu, sd, w = random_mixture(5, weighted=weighted)
    p = np.full(mu.shape[0], 1 / mu.shape[0]) if w is None else w / w.sum()
    x = np.array([1.0, 2.5, 3.0, 4.0, 6.0])
    np.testing.assert_allclose(metrics.cdf(x, mu, sd, w), p @ stats.norm.cdf(x, mu, sd), atol=EXACT)
    expected = -np.log(p @ stats.norm.pdf(x, mu, sd))
    np.testing.assert_allclose(metrics.nll_per_row(x, mu, sd, w), expected, atol=EXACT)


def test_mixture_nll_is_stable_far_in_the_tail():
    # Every component density underflows to 0 at y = 1000, but the log is finite.
    mu, sd = np.array([[0.0], [0.0]]), np.array([[1.0], [1.0]])
    nll = metrics.nll([1000.0], mu, sd)
    assert nll == pytest.approx(0.5 * np.log(2 * np.pi) + 0.5 * 1000.0**2, rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_mixture_moments_match_sampling(weighted):
    mu, sd, w = random_mixture(6, weighted=weighted)
    mean, mix_sd = metrics.moments(mu, sd, w)
    size = 200_000
    x = draw_mixture(np.random.default_rng(7), mu, sd, w, size)
    sample_var = x.var(axis=0, ddof=1)
    mean_se = np.sqrt(sample_var / size)
    centred = x - x.mean(0)
    var_se = np.sqrt((np.mean(centred**4, 0) - sample_var**2) / size)  # delta method for the sample variance
    assert np.all(np.abs(x.mean(0) - mean) <= Z * mean_se)
    assert np.all(np.abs(sample_var - mix_sd**2) <= Z * var_se)


@pytest.mark.parametrize("weighted", [False, True])
def test_mixture_quantile_inverts_cdf(weighted):
    mu, sd, w = random_mixture(8, num_draws=4, n=6, weighted=weighted)
    tol = 1e-8
    for prob in (0.01, 0.2, 0.5, 0.9, 0.999):
        q = metrics.quantile(prob, mu, sd, w, tol=tol)
        p = np.full(mu.shape[0], 1 / mu.shape[0]) if w is None else w / w.sum()
        density = p @ stats.norm.pdf(q, mu, sd)
        # |F(q) - prob| <= max density * |q - q*| <= density * tol / 2 (to first order)
        assert np.all(np.abs(metrics.cdf(q, mu, sd, w) - prob) <= density * tol)
    x = np.array([1.0, 2.0, 3.0, 3.5, 4.0, 5.0])
    back = metrics.quantile(metrics.cdf(x, mu, sd, w), mu, sd, w, tol=tol)
    np.testing.assert_allclose(back, x, atol=tol)


def test_mixture_interval_coverage_is_nominal_on_a_correct_model():
    rng = np.random.default_rng(9)
    n, num_draws = 20_000, 3
    mu = rng.normal(3.5, 1.0, (num_draws, n))
    sd = rng.uniform(0.2, 1.0, (num_draws, n))
    y = draw_mixture(rng, mu, sd, None, 1)[0]
    for prob in (0.5, 0.9):
        cov = metrics.coverage(y, *metrics.interval(mu, sd, prob))
        assert abs(cov - prob) <= Z * np.sqrt(prob * (1 - prob) / n)  # binomial sd


@pytest.mark.parametrize("weighted", [False, True])
def test_crps_mixture_matches_quadrature(weighted):
    mu, sd, w = random_mixture(10, num_draws=5, n=3, weighted=weighted)
    p = np.full(mu.shape[0], 1 / mu.shape[0]) if w is None else w / w.sum()
    y = np.array([2.0, 3.3, 7.0])
    got = metrics.crps_per_row(y, mu, sd, w)
    for i in range(3):
        expected = crps_by_quadrature(y[i], lambda x: p @ stats.norm.cdf(x, mu[:, i], sd[:, i]))
        assert got[i] == pytest.approx(expected, abs=QUAD)


def test_crps_mixture_matches_sample_energy_form():
    mu, sd, w = random_mixture(11, num_draws=4, n=4, weighted=True)
    y = np.array([2.0, 3.0, 4.0, 5.5])
    samples = draw_mixture(np.random.default_rng(12), mu, sd, w, 200_000)
    estimate = metrics.crps_samples_per_row(y, samples, fair=True)
    se = crps_samples_se(y, samples)
    exact = metrics.crps_per_row(y, mu, sd, w)
    assert np.all(np.abs(estimate - exact) <= Z * se), (estimate - exact) / se


def test_crps_mixture_blocking_does_not_change_the_result(monkeypatch):
    mu, sd, w = random_mixture(13, num_draws=30, n=50, weighted=True)
    y = np.random.default_rng(14).normal(3.0, 1.0, 50)
    whole = metrics.crps_per_row(y, mu, sd, w)
    nll, q = metrics.nll_per_row(y, mu, sd, w), metrics.quantile(0.3, mu, sd, w)
    # Blocks of 1 row x 10 draws (30^2 > 300 cells): both loops of the exact pairwise term.
    monkeypatch.setattr(metrics.scores, "CHUNK_CELLS", 300)
    np.testing.assert_allclose(metrics.crps_per_row(y, mu, sd, w), whole, atol=EXACT)
    np.testing.assert_allclose(metrics.nll_per_row(y, mu, sd, w), nll, atol=EXACT)
    np.testing.assert_allclose(metrics.quantile(0.3, mu, sd, w), q, atol=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_crps_mixture_pair_subsample_is_unbiased_within_its_se(weighted):
    num_draws, n, num_shifts, num_seeds = 40, 2_000, 2, 30
    mu, sd, w = random_mixture(15, num_draws=num_draws, n=n, weighted=weighted)
    y = np.random.default_rng(16).normal(3.0, 1.5, n)
    exact = metrics.crps(y, mu, sd, w)
    budget = num_shifts * num_draws * n  # 2 shifts of 40 pairs per row, 1/20 of all pairs
    estimates = np.array([metrics.crps(y, mu, sd, w, max_pairs=budget, seed=k) for k in range(num_seeds)])
    spread = estimates.std(ddof=1)
    assert spread > 0  # the subsample was used
    assert abs(estimates.mean() - exact) <= Z * spread / np.sqrt(num_seeds)
    # Not much noisier than the same number of independent pairs from w (x) w: the
    # pairwise term averages 80 pairs per row with variance Var_pairs(A) / 80,
    # computed exactly here from all S^2 pairs; rows are independent.
    p = np.full(num_draws, 1 / num_draws) if w is None else w / w.sum()
    diff = mu[:, None, :] - mu[None, :, :]
    scale = np.sqrt(sd[:, None, :] ** 2 + sd[None, :, :] ** 2)
    a = diff * (2 * stats.norm.cdf(diff / scale) - 1) + 2 * scale * stats.norm.pdf(diff / scale)
    pw = p[:, None, None] * p[None, :, None]
    var_a = np.sum(pw * a**2, (0, 1)) - np.sum(pw * a, (0, 1)) ** 2
    iid_se = 0.5 * np.sqrt(np.sum(var_a / (num_shifts * num_draws))) / n
    assert spread <= 2 * iid_se  # measured 1.1-1.15x; the sd of 30 estimates is within ~13%
    # Fixed by the seed.
    assert metrics.crps(y, mu, sd, w, max_pairs=budget, seed=3) == estimates[3]


# --------------------------------------------------------------------------
# breakdowns


def test_activity_bucket_labels_and_edges():
    counts = np.array([0, 20, 21, 50, 51, 100, 101, 200, 201, 5000])
    labels = metrics.activity_bucket(counts)
    assert labels.tolist() == [
        "<=20", "<=20", "21-50", "21-50", "51-100", "51-100", "101-200", "101-200", ">200", ">200"
    ]
    assert metrics.activity_bucket([0, 1, 2, 3, 9], edges=(1, 2, 5)).tolist() == ["<=1", "<=1", "2", "3-5", ">5"]
    assert metrics.activity_labels((10,)) == ["<=10", ">10"]
    # An ordered categorical whose categories are every bucket, in range order.
    assert isinstance(labels, pd.Categorical) and labels.ordered
    assert list(labels.categories) == ["<=20", "21-50", "51-100", "101-200", ">200"]
    assert list(metrics.activity_bucket([3], edges=(1, 2, 5)).categories) == ["<=1", "2", "3-5", ">5"]
    assert pd.Series(labels[::-1]).sort_values().tolist() == labels.tolist()  # sorts by range, not as strings


def test_summarize_gaussian_and_mixture_paths():
    rng = np.random.default_rng(17)
    n = 200
    m, s = rng.normal(3.5, 1.0, n), rng.uniform(0.5, 1.0, n)
    y = rng.normal(m, s)
    table = metrics.summarize(metrics.score_rows(y, m, s))
    assert list(table.columns) == [
        "count", "rmse", "mae", "nll", "crps",
        "coverage_50", "width_50", "coverage_80", "width_80",
        "coverage_90", "width_90", "coverage_95", "width_95",
    ]  # fmt: skip
    assert list(table.index) == ["all"] and table.index.name == "group"
    g = table.loc["all"]
    assert g["count"] == n
    assert g["rmse"] == pytest.approx(metrics.rmse(y, m))
    assert g["mae"] == pytest.approx(metrics.mae(y, m))
    assert g["nll"] == pytest.approx(metrics.nll(y, m, s))
    assert g["crps"] == pytest.approx(metrics.crps(y, m, s))
    z90 = stats.norm.ppf(0.95)
    assert g["width_90"] == pytest.approx(2 * z90 * s.mean())
    # A mixture of copies of the Gaussian gives the same numbers.
    mix = metrics.summarize(metrics.score_rows(y, np.stack([m, m]), np.stack([s, s]))).loc["all"]
    for key in g.index:
        assert mix[key] == pytest.approx(g[key], abs=1e-5), key  # quantiles by bisection, tol 1e-6
    # A real mixture uses the mixture scores; RMSE and MAE score its mean.
    mu, sd, _ = random_mixture(18, num_draws=5, n=n)
    out = metrics.summarize(metrics.score_rows(y, mu, sd, levels=(0.9,))).loc["all"]
    mean, _ = metrics.moments(mu, sd)
    assert out["rmse"] == pytest.approx(metrics.rmse(y, mean))
    assert out["mae"] == pytest.approx(metrics.mae(y, mean))
    assert out["nll"] == pytest.approx(metrics.nll(y, mu, sd))
    assert out["crps"] == pytest.approx(metrics.crps(y, mu, sd))
    lo, hi = metrics.interval(mu, sd, 0.9)
    assert out["coverage_90"] == metrics.coverage(y, lo, hi)
    assert out["width_90"] == pytest.approx(np.mean(hi - lo))


def test_summarize_groups_match_summarize_on_subsets():
    rng = np.random.default_rng(19)
    n = 300
    counts = rng.integers(21, 400, n)  # no user in the first bucket, <=20
    mu, sd, w = random_mixture(20, num_draws=3, n=n, weighted=True)
    y = rng.normal(3.5, 1.0, n)
    groups = metrics.activity_bucket(counts)
    rows = metrics.score_rows(y, mu, sd, weights=w, levels=(0.8,))
    table = metrics.summarize(rows, groups)
    # Every bucket in range order (not the string order '101-200' < '21-50' < ...), the empty one too.
    assert list(table.index) == metrics.activity_labels() and table.index.name == "group"
    assert list(table.columns) == ["count", "rmse", "mae", "nll", "crps", "coverage_80", "width_80"]
    assert table["count"].sum() == n
    assert table.loc["<=20", "count"] == 0 and table.loc["<=20", table.columns[1:]].isna().all()
    for label, row in table.iloc[1:].iterrows():
        idx = np.asarray(groups == label)
        expected = metrics.summarize(metrics.score_rows(y[idx], mu[:, idx], sd[:, idx], weights=w, levels=(0.8,)))
        for key, value in expected.loc["all"].items():
            assert row[key] == pytest.approx(value, abs=EXACT), (label, key)
    # A categorical Series works as the Categorical does.
    pd.testing.assert_frame_equal(metrics.summarize(rows, pd.Series(groups)), table)
    # Other labels in pandas' sort order; only those present.
    two = np.where(counts > 200, "b", "a")
    assert list(metrics.summarize(rows, two[::-1]).index) == ["a", "b"]
    assert list(metrics.summarize(rows, counts % 3).index) == [0, 1, 2]
    # An explicit order; an empty group gets count 0 and NaN scores.
    table = metrics.summarize(rows, two, order=["b", "a", "c"])
    assert list(table.index) == ["b", "a", "c"]
    assert table.loc["c", "count"] == 0 and np.isnan(table.loc["c", "rmse"])
    assert table.loc["a", "count"] == np.sum(two == "a")
    with pytest.raises(ValueError, match="not in order"):
        metrics.summarize(rows, two, order=["a"])


# --------------------------------------------------------------------------
# ranking


def test_perfect_ranking_has_ndcg_one():
    relevant = [{3, 1, 7}, {"x"}, {10, 11}]
    recommended = [[1, 7, 3, 4, 5], ["x", "y"], [11, 10, 12]]
    assert metrics.ndcg_at_k(recommended, relevant, 3) == pytest.approx(1.0)
    assert metrics.ndcg_at_k(recommended, relevant, 5) == pytest.approx(1.0)
    assert metrics.recall_at_k(recommended, relevant, 3) == pytest.approx(1.0)


def test_ranking_metrics_by_hand():
    recommended = np.array([[5, 1, 9, 2], [7, 8, 6, 3], [1, 2, 3, 4]])
    relevant = [{1, 2, 4}, {6}, set()]  # the third user has nothing relevant: left out
    k = 3
    prec = metrics.precision_at_k(recommended, relevant, k, per_user=True)
    rec = metrics.recall_at_k(recommended, relevant, k, per_user=True)
    ndcg = metrics.ndcg_at_k(recommended, relevant, k, per_user=True)
    np.testing.assert_allclose(prec[:2], [1 / 3, 1 / 3])
    np.testing.assert_allclose(rec[:2], [1 / 3, 1.0])
    ideal0 = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    np.testing.assert_allclose(ndcg[:2], [(1 / np.log2(3)) / ideal0, (1 / np.log2(4)) / 1.0])
    assert np.isnan(prec[2]) and np.isnan(rec[2]) and np.isnan(ndcg[2])
    assert metrics.precision_at_k(recommended, relevant, k) == pytest.approx(1 / 3)
    assert metrics.recall_at_k(recommended, relevant, k) == pytest.approx(2 / 3)
    assert metrics.ndcg_at_k(recommended, relevant, k) == pytest.approx(np.mean(ndcg[:2]))
    assert np.isnan(metrics.ndcg_at_k([[1]], [set()], 1))
    # First relevant item at rank 1 (user 0) and rank 2 (user 1).
    mrr = metrics.mrr_at_k(recommended, relevant, k, per_user=True)
    hit = metrics.hit_rate_at_k(recommended, relevant, k, per_user=True)
    np.testing.assert_allclose(mrr[:2], [1 / 2, 1 / 3])
    np.testing.assert_allclose(hit[:2], [1.0, 1.0])
    assert np.isnan(mrr[2]) and np.isnan(hit[2])
    assert metrics.mrr_at_k(recommended, relevant, k) == pytest.approx(5 / 12)
    assert metrics.mrr_at_k(recommended, relevant, 1) == 0.0
    assert metrics.hit_rate_at_k(recommended, relevant, 1) == 0.0
    assert metrics.hit_rate_at_k(recommended, relevant, 2) == 0.5


def test_short_lists_count_missing_ranks_as_misses():
    assert metrics.precision_at_k([[1]], [{1}], 4) == pytest.approx(0.25)
    assert metrics.recall_at_k([[1]], [{1, 2}], 4) == pytest.approx(0.5)
    assert metrics.ndcg_at_k([[], [1]], [{1}, {1}], 2, per_user=True).tolist() == [0.0, 1.0]
    assert metrics.mrr_at_k([[], [2, 1]], [{1}, {1}], 4, per_user=True).tolist() == [0.0, 0.5]
    assert metrics.hit_rate_at_k([[], [2, 1]], [{1}, {1}], 4, per_user=True).tolist() == [0.0, 1.0]


def reference_ranking(recommended, relevant, k):
    """Per-user precision, recall, NDCG, MRR and hit rate at k, one user at a time, written from the definitions."""
    out = {name: [] for name in ("precision_at_k", "recall_at_k", "ndcg_at_k", "mrr_at_k", "hit_rate_at_k")}
    for rec, rel in zip(recommended, relevant):
        if not rel:
            for values in out.values():
                values.append(float("nan"))
            continue
        top = list(rec)[:k]
        hits = [item in rel for item in top]
        dcg = sum(1.0 / math.log2(rank + 2) for rank, hit in enumerate(hits) if hit)
        ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, len(rel))))
        first = next((rank for rank, hit in enumerate(hits) if hit), None)
        out["precision_at_k"].append(sum(hits) / k)
        out["recall_at_k"].append(sum(hits) / len(rel))
        out["ndcg_at_k"].append(dcg / ideal)
        out["mrr_at_k"].append(0.0 if first is None else 1.0 / (first + 1))
        out["hit_rate_at_k"].append(float(any(hits)))
    return {name: np.array(values) for name, values in out.items()}


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.one_of(st.integers(0, 30), st.sampled_from(["a", "b", "c"])), max_size=12, unique=True),
            st.sets(st.one_of(st.integers(0, 30), st.sampled_from(["a", "b", "c"])), max_size=8),
        ),
        min_size=1,
        max_size=8,
    ),
    st.integers(1, 12),
)
def test_ranking_metrics_match_a_reference_implementation(users, k):
    recommended = [rec for rec, _ in users]
    relevant = [rel for _, rel in users]
    expected = reference_ranking(recommended, relevant, k)
    scored = np.array([len(rel) > 0 for rel in relevant])
    for name, values in expected.items():
        fn = getattr(metrics, name)
        np.testing.assert_allclose(fn(recommended, relevant, k, per_user=True), values, atol=EXACT, err_msg=name)
        mean = fn(recommended, relevant, k)
        if scored.any():
            assert mean == pytest.approx(np.mean(values[scored]), abs=EXACT), name
        else:
            assert np.isnan(mean), name


def test_ranking_metrics_take_a_2d_array_as_lists():
    rng = np.random.default_rng(22)
    recommended = np.array([rng.permutation(50)[:10] for _ in range(40)])
    relevant = [set(rng.choice(50, rng.integers(0, 8), replace=False).tolist()) for _ in range(40)]
    for k in (1, 5, 10, 15):
        expected = reference_ranking(recommended.tolist(), relevant, k)
        for name, values in expected.items():
            got = getattr(metrics, name)(recommended, relevant, k, per_user=True)
            np.testing.assert_allclose(got, values, atol=EXACT, err_msg=f"{name} k={k}")


# --------------------------------------------------------------------------
# regression: the values of the functions this API replaced


# Inputs and outputs of the 0.1.0 functions (commit 89fb805: gaussian_nll_per_row,
# crps_gaussian_per_row, gaussian_interval, mixture_moments, mixture_cdf,
# mixture_quantile, mixture_interval, mixture_nll_per_row, crps_mixture_per_row,
# summarize), printed with repr. The new functions reproduce them to float64
# round-off: the old mixture paths normalised the weights twice, which moves the
# last bit or two.
STORED = 1e-12

REF_Y = np.array([2.548, 3.789, 1.224, 5.175, 4.266])
REF_M = np.array([3.266, 3.25, 3.743, 3.286, 3.319])
REF_S = np.array([1.27, 1.228, 0.972, 1.077, 0.864])
REF_MU = np.array([
    3.009, 3.177, 3.939, 3.396, 2.4, 3.118, 4.025, 3.314, 3.381, 4.013, 4.96, 2.929, 4.579, 2.516, 3.64,
]).reshape(3, 5)
REF_SD = np.array([
    0.588, 1.187, 1.118, 0.946, 0.711, 1.252, 0.907, 0.789, 1.21, 0.687, 1.026, 0.682, 0.635, 1.031, 0.605,
]).reshape(3, 5)
REF_W = np.array([0.594, 0.664, 0.351])
# mixture_summary: rmse, mae, nll, crps, coverage_50, width_50, coverage_90, width_90.
REFERENCE = {
    "gaussian_nll": [1.3177681933006917, 1.220652976485205, 4.248640487157632, 2.5312814741474896, 1.3734350621641083],
    "gaussian_crps": [
        0.4545537006063425, 0.3798728756752293, 1.9735308982489959, 1.3158671122805101, 0.5790401612825056,
    ],
    "gaussian_lower_80": [
        1.6384295117583576, 1.6762546775112308, 2.497331878290648, 1.9057689639084654, 2.211739447369465,
    ],
    "gaussian_upper_80": [
        4.893570488241642, 4.823745322488769, 4.988668121709352, 4.666231036091535, 4.426260552630534,
    ],
    "mixture_mean": [
        3.4795885643256677, 3.4728508390304538, 3.8206904909881914, 3.1978396519577372, 3.3361541330018643,
    ],
    "mixture_sd": [1.271991329605439, 1.088006229360962, 1.0212058510507716, 1.1385182681363426, 0.9969846155602282],
    "mixture_cdf": [
        0.21587130329626214, 0.6168031786880104, 0.004465211639526738, 0.959328375139055, 0.8185356229886869,
    ],
    "mixture_quantile_30": [
        2.7942491557358924, 2.8993008680786776, 3.261353151279846, 2.60976771833996, 2.809717778020661,
    ],
    "mixture_lower_80": [
        2.0454897320293894, 2.1082264046652974, 2.5053308737787576, 1.7389958573770858, 1.9593263311457245,
    ],
    "mixture_upper_80": [5.277814005422707, 4.878555402281794, 5.126675738696496, 4.643905179268338, 4.57053850092915],
    "mixture_nll": [1.1773240738013708, 1.0737338592149976, 4.331134101891637, 2.5911923958790157, 1.1559162206432365],
    "mixture_crps": [0.4985514274460081, 0.2930763311815965, 2.0215768969072596, 1.3752228459016715, 0.521492898400143],
    "mixture_crps_sampled": [
        0.6265232758994683, 0.31593572078961596, 2.0008201932142367, 1.3796437734426696, 0.6773303785455056,
    ],
    "mixture_summary": [
        1.5801509693315203, 1.3502868862647606, 2.0658601302860515, 0.9419840799673358, 0.2, 1.486953725366013,
        0.6, 3.6157265668042475,
    ],
}


def test_values_match_the_functions_they_replace():
    y, m, s, mu, sd, w = REF_Y, REF_M, REF_S, REF_MU, REF_SD, REF_W
    lo, hi = metrics.interval(m, s, 0.8)
    mean, mix_sd = metrics.moments(mu, sd, w)
    mlo, mhi = metrics.interval(mu, sd, 0.8, w)
    rows = metrics.score_rows(y, mu, sd, weights=w, levels=(0.5, 0.9))
    summary = metrics.summarize(rows).loc["all"]
    got = {
        "gaussian_nll": metrics.nll_per_row(y, m, s),
        "gaussian_crps": metrics.crps_per_row(y, m, s),
        "gaussian_lower_80": lo,
        "gaussian_upper_80": hi,
        "mixture_mean": mean,
        "mixture_sd": mix_sd,
        "mixture_cdf": metrics.cdf(y, mu, sd, w),
        "mixture_quantile_30": metrics.quantile(0.3, mu, sd, w),
        "mixture_lower_80": mlo,
        "mixture_upper_80": mhi,
        "mixture_nll": metrics.nll_per_row(y, mu, sd, w),
        "mixture_crps": metrics.crps_per_row(y, mu, sd, w),
        "mixture_crps_sampled": metrics.crps_per_row(y, mu, sd, w, max_pairs=mu.size, seed=1),
        "mixture_summary": summary[
            ["rmse", "mae", "nll", "crps", "coverage_50", "width_50", "coverage_90", "width_90"]
        ].to_numpy(float),
    }
    assert set(got) == set(REFERENCE)
    for name, expected in REFERENCE.items():
        np.testing.assert_allclose(got[name], expected, rtol=STORED, atol=0, err_msg=name)
    # The per-row twins and the means agree.
    assert metrics.nll(y, mu, sd, w) == pytest.approx(np.mean(REFERENCE["mixture_nll"]), rel=STORED)
    assert metrics.crps(y, m, s) == pytest.approx(np.mean(REFERENCE["gaussian_crps"]), rel=STORED)


# --------------------------------------------------------------------------
# cross-checks against an independent library (scoringrules, in the test extra)


def test_crps_matches_scoringrules():
    sr = pytest.importorskip("scoringrules")
    rng = np.random.default_rng(23)
    n = 200
    y = rng.normal(3.5, 1.5, n)
    m, s = rng.normal(3.5, 1.0, n), rng.uniform(0.2, 2.0, n)
    np.testing.assert_allclose(metrics.crps_per_row(y, m, s), sr.crps_normal(y, m, s), rtol=EXACT, atol=EXACT)
    for weighted in (False, True):
        mu, sd, w = random_mixture(24, num_draws=7, n=n, weighted=weighted)
        p = np.full(mu.shape[0], 1 / mu.shape[0]) if w is None else w / w.sum()
        # scoringrules puts the components on the last axis, with one weight vector per row.
        expected = sr.crps_mixnorm(y, mu.T, sd.T, np.broadcast_to(p, (n, mu.shape[0])))
        np.testing.assert_allclose(metrics.crps_per_row(y, mu, sd, w), expected, rtol=EXACT, atol=EXACT)
    # Ensembles: the energy form over all pairs (D = S^2) and the fair one (D = S (S - 1)).
    samples = rng.normal(3.5, 1.0, (25, n))
    for fair, estimator in ((False, "nrg"), (True, "fair")):
        expected = sr.crps_ensemble(y, samples.T, estimator=estimator)
        np.testing.assert_allclose(
            metrics.crps_samples_per_row(y, samples, fair=fair), expected, rtol=EXACT, atol=EXACT, err_msg=estimator
        )


# --------------------------------------------------------------------------
# properties


mixtures = st.integers(0, 2**32 - 1).map(lambda seed: random_mixture(seed, num_draws=4, n=3, weighted=True))


@settings(max_examples=40, deadline=None)
@given(mixtures, st.floats(0.001, 0.999), st.floats(0.001, 0.999))
def test_mixture_quantile_is_monotone_in_prob(mix, p1, p2):
    mu, sd, w = mix
    lo, hi = sorted((p1, p2))
    q_lo = metrics.quantile(lo, mu, sd, w)
    q_hi = metrics.quantile(hi, mu, sd, w)
    assert np.all(q_lo <= q_hi + 1e-6)  # each within tol / 2 of the exact quantile


@settings(max_examples=40, deadline=None)
@given(mixtures, st.lists(st.floats(-20, 20), min_size=3, max_size=3))
def test_crps_is_nonnegative(mix, y):
    mu, sd, w = mix
    y = np.array(y)
    assert np.all(metrics.crps_per_row(y, mu, sd, w) >= -1e-12)
    assert np.all(metrics.crps_per_row(y, mu[0], sd[0]) >= -1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 15), max_size=8, unique=True), min_size=1, max_size=6),
    st.lists(st.sets(st.integers(0, 15), max_size=5), min_size=6, max_size=6),
    st.integers(1, 10),
)
def test_ranking_metrics_lie_in_unit_interval(recommended, relevant, k):
    relevant = relevant[: len(recommended)]
    for fn in (metrics.precision_at_k, metrics.recall_at_k, metrics.ndcg_at_k, metrics.mrr_at_k, metrics.hit_rate_at_k):
        values = fn(recommended, relevant, k, per_user=True)
        scored = np.array([len(r) > 0 for r in relevant])
        assert np.all(np.isnan(values) == ~scored)
        assert np.all((values[scored] >= 0) & (values[scored] <= 1 + 1e-12))


# --------------------------------------------------------------------------
# bad input


GOOD_MU = np.zeros((2, 3))
GOOD_SD = np.ones((2, 3))
GOOD_ROWS = metrics.score_rows([1.0, 2.0], [1.0, 2.0], 1.0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.rmse([1.0, 2.0], [1.0]), "mismatched shapes"),
        (lambda: metrics.mae([], []), "empty"),
        (lambda: metrics.rmse([1.0, np.nan], [1.0, 2.0]), "non-finite"),
        (lambda: metrics.nll([1.0], [1.0], [0.0]), "sd must be > 0"),
        (lambda: metrics.nll([1.0], [1.0], [np.inf]), "non-finite"),
        (lambda: metrics.crps([1.0, 2.0], [1.0, 2.0], [1.0, 1.0, 1.0]), "mismatched shapes"),
        (lambda: metrics.interval([1.0], [1.0], 1.0), r"prob must be in the open interval \(0, 1\)"),
        (lambda: metrics.interval([1.0], [1.0], 0.0), r"prob must be in the open interval"),
        (lambda: metrics.coverage([1.0], [2.0], [1.0]), "lower > upper"),
        (lambda: metrics.nll([1.0], np.zeros((2, 1, 1)), 1.0), r"mu must be 1-D \(shape \(n,\)\) or 2-D"),
        (lambda: metrics.nll([1.0, 2.0], [1.0, 2.0], np.ones((2, 2))), "mismatched shapes: sd"),
        (lambda: metrics.nll([1.0], [1.0], 1.0, [0.5, 0.5]), "mismatched shapes: weights"),
        (lambda: metrics.nll([1.0, 2.0], GOOD_MU, GOOD_SD), "mismatched shapes"),
        (lambda: metrics.cdf(0.0, GOOD_MU, -GOOD_SD), "sd must be > 0"),
        (lambda: metrics.moments(GOOD_MU, GOOD_SD, [1.0, 2.0, 3.0]), "mismatched shapes: weights"),
        (lambda: metrics.moments(GOOD_MU, GOOD_SD, [1.0, -1.0]), "weights must be finite and >= 0"),
        (lambda: metrics.moments(GOOD_MU, GOOD_SD, [0.0, 0.0]), "weights sum to zero"),
        (lambda: metrics.moments(np.zeros((0, 3)), GOOD_SD[:0]), "mu is empty"),
        (lambda: metrics.quantile(1.5, GOOD_MU, GOOD_SD), "prob must be in the open interval"),
        (lambda: metrics.quantile(0.5, GOOD_MU, GOOD_SD, tol=0.0), "tol must be > 0"),
        (lambda: metrics.quantile(np.full(2, 0.5), GOOD_MU, GOOD_SD), "mismatched shapes: prob"),
        (lambda: metrics.interval([1.0, 2.0], 1.0, [0.5, 0.5, 0.5]), "mismatched shapes: prob"),
        (lambda: metrics.interval(GOOD_MU, GOOD_SD, -0.1), "prob must be in the open interval"),
        (lambda: metrics.crps(np.zeros(3), GOOD_MU, GOOD_SD, max_pairs=0), "max_pairs must be >= 1"),
        (lambda: metrics.crps_samples(np.zeros(3), np.zeros((1, 3)), fair=True), "at least 2 draws"),
        (lambda: metrics.score_rows([1.0], [1.0], [1.0], levels=(0.9, 1.0)), "levels must be in"),
        (lambda: metrics.score_rows([1.0, 2.0], [1.0], [1.0]), "mismatched shapes: y"),
        (lambda: metrics.score_rows([1.0, np.nan], [1.0, 2.0], 1.0), "non-finite"),
        (lambda: metrics.score_rows([1.0], [[1.0]], [[1.0]], max_pairs=0), "max_pairs must be >= 1"),
        (lambda: metrics.summarize({"nll": np.zeros(2)}), "rows lacks"),
        (lambda: metrics.summarize(GOOD_ROWS, ["a"]), "mismatched shapes: groups"),
        (lambda: metrics.summarize(GOOD_ROWS, order=["a"]), "order needs groups"),
        (lambda: metrics.summarize(GOOD_ROWS, ["a", "b"], order=["a", "a", "b"]), "duplicate"),
        (lambda: metrics.summarize(GOOD_ROWS, ["a", None]), "missing labels"),
        (lambda: metrics.activity_bucket([1, 2], edges=(5, 5)), "strictly increasing"),
        (lambda: metrics.activity_bucket([1.5]), "counts must be integers"),
        (lambda: metrics.activity_bucket([]), "counts is empty"),
        (lambda: metrics.precision_at_k([[1]], [{1}], 0), "k must be > 0"),
        (lambda: metrics.recall_at_k([[1]], [{1}], 2.0), "k must be a positive integer"),
        (lambda: metrics.ndcg_at_k([[1], [2]], [{1}], 1), "mismatched lengths"),
        (lambda: metrics.ndcg_at_k([], [], 1), "no users"),
        (lambda: metrics.ndcg_at_k([[1, 1]], [{1}], 2), "duplicate"),
        (lambda: metrics.mrr_at_k([[1]], [{1}], 0), "k must be > 0"),
        (lambda: metrics.hit_rate_at_k([[1], [2]], [{1}], 1), "mismatched lengths"),
    ],
)
def test_bad_input_raises(call, message):
    with pytest.raises(ValueError, match=message):
        call()
