"""Star masses of a Gaussian (mixture) predictive and the scores computed from them (bayesmf.metrics.stars)."""

import numpy as np
import pytest
from scipy import stats

from bayesmf import metrics
from bayesmf.data import RatingScale
from bayesmf.metrics import streaming

STARS = RatingScale(1.0, 5.0, 1.0)
HALF_STARS = RatingScale(0.5, 5.0, 0.5)
CUTS = (1.5, 2.5, 3.5, 4.5)
LEVELS = (0.5, 0.8, 0.9, 0.95)
# Two float64 programs (NumPy and XLA) computing the same O(1) sums: round-off.
ROUND_OFF = 1e-10


def normal_cells(mu, sd, cuts):
    """Cell masses by scipy.stats.norm cdf differences, shape (n, K)."""
    edges = np.concatenate([[-np.inf], cuts, [np.inf]])
    return np.diff(stats.norm.cdf(edges[None, :], np.asarray(mu)[:, None], np.asarray(sd)[:, None]), axis=1)


def mixture(seed, num_components, n):
    rng = np.random.default_rng(seed)
    mu = rng.normal(3.5, 0.3, (num_components, n)) + rng.normal(0, 0.6, n)
    sd = rng.uniform(0.5, 1.0, (num_components, n))
    w = rng.uniform(0.1, 1.0, num_components)
    return mu, sd, w / w.sum()


# --- the scale's cells --------------------------------------------------------------------------


def test_cuts_are_the_midpoints_between_stars():
    assert metrics.star_cuts(STARS) == CUTS
    assert metrics.star_cuts(HALF_STARS) == tuple(0.75 + 0.5 * k for k in range(9))
    assert metrics.star_cuts(RatingScale(1.0, 5.0, None)) is None and metrics.star_cuts(None) is None
    # Right-closed cells: a rating on a cut point is the lower star.
    assert metrics.star_index([0.0, 1.0, 1.5, 1.5000001, 2.0, 4.5, 5.0, 9.0], CUTS).tolist() == [0, 0, 0, 1, 1, 3, 4, 4]


# --- star masses --------------------------------------------------------------------------------


def test_masses_of_a_gaussian_are_normal_cdf_differences():
    rng = np.random.default_rng(0)
    mu, sd = rng.normal(3.5, 1.0, 200), rng.uniform(0.3, 1.5, 200)
    for scale in (STARS, HALF_STARS):
        cuts = metrics.star_cuts(scale)
        masses = metrics.star_masses(mu, sd, cuts)
        assert masses.shape == (200, len(cuts) + 1)
        np.testing.assert_allclose(masses.sum(axis=1), 1.0, rtol=0, atol=1e-14)
        np.testing.assert_allclose(masses, normal_cells(mu, sd, cuts), rtol=0, atol=1e-14)
        # A (1, n) mixture is the same Gaussian.
        np.testing.assert_allclose(metrics.star_masses(mu[None], sd[None], cuts), masses, rtol=0, atol=1e-15)


def test_masses_of_a_weighted_mixture_are_the_weighted_cell_masses():
    mu, sd, w = mixture(1, 5, 150)
    masses = metrics.star_masses(mu, sd, CUTS, weights=3.0 * w)  # weights are normalised
    expected = sum(w[s] * normal_cells(mu[s], sd[s], CUTS) for s in range(5))
    np.testing.assert_allclose(masses, expected, rtol=0, atol=1e-14)
    np.testing.assert_allclose(masses.sum(axis=1), 1.0, rtol=0, atol=1e-14)
    # Equal weights by default.
    np.testing.assert_allclose(metrics.star_masses(mu, sd, CUTS), metrics.star_masses(mu, sd, CUTS, np.ones(5)), atol=0)


def test_far_tail_masses_keep_their_relative_precision():
    # The top cell of N(2, 0.2^2) has mass sf(12.5) ~ 4e-36: 1 - cdf would round it to 0.
    masses = metrics.star_masses([2.0], [0.2], CUTS)
    assert masses[0, 4] == pytest.approx(stats.norm.sf(4.5, 2.0, 0.2), rel=1e-12)
    assert masses[0, 0] == pytest.approx(stats.norm.cdf(1.5, 2.0, 0.2), rel=1e-12)


# --- scores from masses -------------------------------------------------------------------------


def test_log_score_and_rps_by_hand():
    masses = np.array([[0.1, 0.2, 0.3, 0.25, 0.15], [0.5, 0.5, 0.0, 0.0, 0.0]])
    rows = metrics.star_rows([4.0, 1.0], masses, CUTS, (0.9,))
    # Row 0, star 4 (index 3): F = .1, .3, .6, .85 against 1[y <= k] = 0, 0, 0, 1.
    assert rows["star_nll"][0] == pytest.approx(-np.log(0.25), rel=1e-15)
    assert rows["rps"][0] == pytest.approx(0.1**2 + 0.3**2 + 0.6**2 + 0.15**2, rel=1e-14)
    # Row 1, star 1: F = .5, 1, 1, 1 against 1, 1, 1, 1.
    assert rows["star_nll"][1] == pytest.approx(np.log(2.0), rel=1e-15)
    assert rows["rps"][1] == pytest.approx(0.25, rel=1e-15)
    # A star given no mass: an infinite log score, not an error.
    assert metrics.star_rows([3.0], masses[1:], CUTS, (0.9,))["star_nll"][0] == np.inf


def test_rps_times_step_is_the_crps_of_the_star_distribution():
    """The normalisation: step x RPS = E|X - y| - E|X - X'| / 2 for X on the stars."""
    rng = np.random.default_rng(2)
    cuts = metrics.star_cuts(HALF_STARS)
    stars_values = 0.5 + 0.5 * np.arange(10)
    masses = rng.dirichlet(np.ones(10), 50)
    y = rng.choice(stars_values, 50)
    rps = metrics.star_rows(y, masses, cuts, (0.5,))["rps"]
    gap = np.abs(stars_values[:, None] - stars_values[None, :])
    first = np.sum(masses * np.abs(stars_values[None] - y[:, None]), 1)
    crps = first - 0.5 * np.einsum("ni,ij,nj->n", masses, gap, masses)
    np.testing.assert_allclose(0.5 * rps, crps, rtol=1e-12, atol=1e-14)


def test_prediction_set_is_the_shortest_run_with_enough_mass():
    # Masses in multiples of 1/16: run sums are exact, so ties are exact.
    masses = np.array([
        [0.1, 0.2, 0.4, 0.2, 0.1],              # p .75: stars 2-4 (mass .8)
        [0.375, 0.125, 0.0, 0.125, 0.375],      # p .3: two single stars of .375: the lowest
        [0.0625, 0.3125, 0.0, 0.1875, 0.4375],  # p .3: two single stars qualify: the larger mass (star 5)
        [0.25, 0.25, 0.0, 0.25, 0.25],          # p .5: pairs (1,2) and (4,5) of .5: the lowest
        [0.0, 0.0, 1.0, 0.0, 0.0],              # p .99: one star
        [0.2, 0.2, 0.2, 0.2, 0.2],              # p .99: the whole scale
    ])
    probs = [0.75, 0.3, 0.3, 0.5, 0.99, 0.99]
    expected = [(1, 3, 0.8), (0, 1, 0.375), (4, 1, 0.4375), (0, 2, 0.5), (2, 1, 1.0), (0, 5, 1.0)]
    for row, prob, (start, size, mass) in zip(masses, probs, expected):
        got = metrics.prediction_set(row[None], prob)
        assert (int(got[0][0]), int(got[1][0])) == (start, size), (row, prob)
        assert got[2][0] == pytest.approx(mass, abs=1e-15)
    # The set's rows: coverage of the observed star, mass and size.
    rows = metrics.star_rows([2.0, 1.0], masses[[0, 2]], CUTS, (0.75,))
    assert rows["set_covered_75"].tolist() == [1.0, 0.0]  # stars 2-4 hold 2; stars 2-5 (mass .9375) miss 1
    assert rows["set_size_75"].tolist() == [3.0, 4.0]
    assert rows["set_mass_75"] == pytest.approx([0.8, 0.9375], abs=1e-15)


def test_prediction_sets_of_many_rows_equal_the_search_written_out():
    """The vectorized search against the definition, row by row: the shortest run of consecutive stars with
    mass >= p, the heaviest of that length, the lowest of equal ones. Masses in eighths, so that ties are
    frequent and exact; K = 2..6."""
    rng = np.random.default_rng(4)
    for num_stars in range(2, 7):
        masses = rng.multinomial(8, np.ones(num_stars) / num_stars, size=400) / 8.0
        for prob in (0.2, 0.5, 0.75, 0.99):
            start, size, mass = metrics.prediction_set(masses, prob)
            for row, got in zip(masses, zip(start, size, mass)):
                runs = [(length, -row[a : a + length].sum(), a) for length in range(1, num_stars + 1)
                        for a in range(num_stars - length + 1) if row[a : a + length].sum() >= prob or length == num_stars]
                length, neg_mass, a = min(runs)
                assert (int(got[0]), int(got[1]), float(got[2])) == (a, length, -neg_mass), (row, prob)


@pytest.mark.parametrize("num_stars", [2, 5, 10])
def test_star_scores_under_jit_equal_the_numpy_ones_exactly(num_stars):
    """evaluate scores stars on the device with the same kernel (metrics.stars.star_scores with jax.numpy,
    jitted, float64): given the same masses the prediction sets equal star_rows' bit for bit (their run
    masses are additions in the same order, compared exactly), with exact ties (masses in eighths) and
    masses exactly at a level (0.5 and 0.75 are eighths); the log score and the rps to round-off (XLA's
    log and its fused multiply-adds differ from NumPy's in the last bit). K = 2, 5 and 10 (half stars)."""
    import jax
    import jax.numpy as jnp

    from bayesmf.metrics.stars import star_index, star_keys, star_scores

    rng = np.random.default_rng(num_stars)
    tied = rng.multinomial(8, np.ones(num_stars) / num_stars, size=300) / 8.0
    masses = np.concatenate([tied, rng.dirichlet(np.full(num_stars, 0.7), size=300)])
    cuts = tuple(1.5 + np.arange(num_stars - 1.0))
    y = rng.integers(1, num_stars + 1, len(masses)).astype(np.float64)
    y[:7] = cuts[0]  # on a cut point: the lower star
    levels = (0.5, 0.75, 0.9)
    want = metrics.star_rows(y, masses, cuts, levels)
    with jax.enable_x64(True):
        program = jax.jit(lambda y, m: star_scores(star_index(y, cuts, xp=jnp), m, levels, xp=jnp))
        got = program(jnp.asarray(y), jnp.asarray(masses))
    assert list(want) == star_keys(levels) and set(got) == set(want)
    for name in want:
        assert got[name].dtype == np.float64, name
        if name in ("star_nll", "rps"):
            np.testing.assert_allclose(np.asarray(got[name]), want[name], rtol=ROUND_OFF, atol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(np.asarray(got[name]), want[name], err_msg=name)
    assert np.array_equal(want["set_size_50"] > 1, masses.max(axis=1) < 0.5)  # the sets did vary


def test_sets_are_calibrated_on_ratings_drawn_from_the_predictive():
    """Stars drawn from each row's own predictive: coverage matches the mean predicted mass.

    The set covers row i's star with probability m_i (its mass), independently
    over rows, so coverage - mean(m) has sd sqrt(sum m_i (1 - m_i)) / n
    (at most 0.5 / sqrt(n) = 0.0035 for n = 20,000); 4 sd bound a false
    failure by 6e-5 and stay inside the 0.01 that defines calibration.
    """
    n, num_components = 20_000, 3
    mu, sd, w = mixture(3, num_components, n)
    rng = np.random.default_rng(4)
    component = rng.choice(num_components, size=n, p=w)
    x = rng.normal(mu[component, np.arange(n)], sd[component, np.arange(n)])
    y = 1.0 + metrics.star_index(x, CUTS)  # the star whose cell holds the draw
    rows = metrics.score_rows(y, mu, sd, weights=w, levels=LEVELS, scale=STARS)
    for p in LEVELS:
        tag = f"{100 * p:g}"
        mass = rows[f"set_mass_{tag}"]
        assert np.all(mass >= p)
        se = np.sqrt(np.sum(mass * (1.0 - mass))) / n
        gap = abs(rows[f"set_covered_{tag}"].mean() - mass.mean())
        assert gap <= 4.0 * se and gap <= 0.01, (p, gap, se)


def test_star_rows_validates_masses():
    with pytest.raises(ValueError, match="sum to 1"):
        metrics.star_rows([1.0], [[0.5, 0.4, 0, 0, 0]], CUTS, (0.5,))
    with pytest.raises(ValueError, match="mismatched shapes"):
        metrics.star_rows([1.0], [[0.5, 0.5]], CUTS, (0.5,))
    with pytest.raises(ValueError, match="open interval"):
        metrics.prediction_set([[1.0]], 1.0)


# --- wiring: score_rows, summarize, streaming ---------------------------------------------------


def test_score_rows_and_summarize_add_star_columns_on_a_star_scale_only():
    mu, sd, w = mixture(5, 4, 120)
    y = np.clip(np.round(mu[0]), 1, 5)
    plain = metrics.score_rows(y, mu, sd, weights=w, levels=(0.5, 0.9))
    rows = metrics.score_rows(y, mu, sd, weights=w, levels=(0.5, 0.9), scale=STARS)
    assert list(rows) == [*plain, "star_nll", "rps", "set_covered_50", "set_mass_50", "set_size_50",
                          "set_covered_90", "set_mass_90", "set_size_90"]
    for key, values in plain.items():  # the existing scores are untouched
        assert np.array_equal(rows[key], values), key
    table = metrics.summarize(rows)
    assert list(table.columns) == [*metrics.summarize(plain).columns, "star_nll", "rps", "set_coverage_50",
                                   "set_mass_50", "set_size_50", "set_coverage_90", "set_mass_90", "set_size_90"]
    assert table["set_coverage_90"].iloc[0] == rows["set_covered_90"].mean()
    assert table["rps"].iloc[0] == rows["rps"].mean()
    # A continuous scale has no stars: no star rows, no star columns.
    continuous = metrics.score_rows(y, mu, sd, weights=w, levels=(0.5, 0.9), scale=RatingScale(1.0, 5.0, None))
    assert list(continuous) == list(plain)
    assert list(streaming.score_rows(None, y, mu, sd, weights=w, levels=(0.5, 0.9),
                                     scale=RatingScale(1.0, 5.0, None))) == list(plain)


@pytest.mark.parametrize("num_components", [1, 6])
@pytest.mark.parametrize("scale", [STARS, HALF_STARS], ids=["stars", "half-stars"])
def test_streamed_star_scores_equal_the_numpy_path(num_components, scale):
    mu, sd, w = mixture(num_components, num_components, 211)
    y = np.clip(np.round(mu[0] / scale.step) * scale.step, scale.low, scale.high)
    ref = metrics.score_rows(y, mu, sd, weights=w, levels=LEVELS, scale=scale, max_pairs=10**9)
    new = streaming.score_rows(None, y, mu, sd, weights=w, levels=LEVELS, scale=scale, max_pairs=None, chunk_cells=97)
    assert list(new) == list(ref)
    for key in ("star_nll", "rps", *(k for k in ref if k.startswith("set_mass"))):
        np.testing.assert_allclose(new[key], ref[key], rtol=0, atol=ROUND_OFF, err_msg=key)
    for key in (k for k in ref if k.startswith(("set_covered", "set_size"))):
        assert np.array_equal(new[key], ref[key]), key
    # The streamed existing scores are bit-identical with and without the star masses in the program.
    plain = streaming.score_rows(None, y, mu, sd, weights=w, levels=LEVELS, max_pairs=None, chunk_cells=97)
    for key, values in plain.items():
        assert np.array_equal(new[key], values), key
