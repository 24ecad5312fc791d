"""Fold-in of new users and movies: exactness against the cold-start prior and
the Gibbs conditionals, the marginal likelihood behind the importance
weights, Monte Carlo checks of the factor draws, and input validation.

One Gibbs posterior on tiny synthetic data (40 users x 30 movies, rank 2,
100 draws) serves the whole module.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from bayesmf import coldstart
from bayesmf.conjugate import row_covariance, row_posterior
from bayesmf.data import RatingScale, Ratings
from bayesmf.engines import gibbs
from bayesmf.layout import build_layout, gram_and_rhs
from bayesmf.model import ModelConfig, model_data_from_ratings
from bayesmf.posterior import Posterior

# 4 standard errors: a two-sided false-alarm rate of 6e-5 per compared number.
Z = 4.0
# float32 agreement of two computations of one conditional that differ only in
# summation order (einsum over a padded mask vs the Gibbs layouts): a few
# hundred float32 ulps of O(1) quantities.
F32_RTOL = 1e-4
F32_ATOL = 1e-5
# The conjugate update adds a jitter of 16 eps (1.9e-6 relative) of the mean
# diagonal to every precision (bayesmf.conjugate.JITTER_EPS); with no ratings
# the row conditional is the prior up to that jitter.
JITTER_RTOL = 2e-5

NUM_USERS, NUM_ITEMS, RANK, NUM_DRAWS = 40, 30, 2, 100


def make_ratings(seed=0, nnz=500, noise_sd=0.5):
    rng = np.random.default_rng(seed)
    cells = rng.choice(NUM_USERS * NUM_ITEMS, size=nnz, replace=False)
    users, items = np.divmod(cells, NUM_ITEMS)
    lu = rng.normal(0, 0.7, (NUM_USERS, RANK))
    rv = rng.normal(0, 0.7, (NUM_ITEMS, RANK))
    m = rng.normal(3.0, 0.5, NUM_ITEMS)
    r = np.clip(np.sum(lu[users] * rv[items], 1) + m[items] + rng.normal(0, noise_sd, nnz), 1.0, 5.0)
    # External ids 101.. and 1..: distinct from positions, so an id/index mix-up fails.
    return Ratings.from_arrays(users + 101, items + 1, r, scale=RatingScale(1.0, 5.0, None))


@pytest.fixture(scope="module")
def posterior():
    ratings = make_ratings()
    data = model_data_from_ratings(ratings)
    config = ModelConfig(rank=RANK)
    result = gibbs.sample(jax.random.PRNGKey(0), data, config, num_samples=NUM_DRAWS, num_warmup=50, progress_bar=False)
    return Posterior(
        result.draws, config, ratings.user_vocab, ratings.item_vocab, ratings.scale, method="gibbs", train=ratings
    )


@pytest.fixture(scope="module")
def map_posterior(posterior):
    """A point estimate: the last Gibbs draw as a (1, 1) posterior."""
    draws = jax.tree.map(lambda x: x[:, -1:], posterior.draws)
    return Posterior(
        draws, posterior.config, posterior.user_vocab, posterior.item_vocab, posterior.scale, method="map",
        train=posterior.train,
    )


def user_training(posterior, user_id):
    train = posterior.train
    u = int(train.user_vocab.index([user_id], missing="flag")[0])
    rows = np.flatnonzero(np.asarray(train.user_index) == u)
    return u, np.asarray(train.item_vocab.ids)[np.asarray(train.item_index)[rows]], np.asarray(train.rating)[rows]


ALL_FIELDS = ("mean", "sd", "epistemic_sd", "noise_sd", "lower", "upper")


# --- zero ratings: exactly the cold-start prior -----------------------------------------------


@pytest.mark.parametrize("weighting", ["importance", "equal"])
def test_empty_fold_in_is_exactly_the_cold_start_prior(posterior, weighting):
    items = np.append(posterior.item_vocab.ids, 9999)  # and a movie the model has not seen
    fold = coldstart.fold_in_users(posterior, [([], [])], weighting=weighting)
    got = fold.predict(None, items)
    want = posterior.predict(np.full(items.shape, -12345), items)
    for field in ALL_FIELDS:
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    assert not got.known_user.any() and not got.folded_in.any()
    np.testing.assert_array_equal(got.known_item, want.known_item)
    np.testing.assert_array_equal(fold.weights, np.full((1, posterior.num_draws), 1.0 / posterior.num_draws))
    assert fold.effective_sample_size[0] == pytest.approx(posterior.num_draws, rel=1e-12)
    np.testing.assert_array_equal(fold.log_evidence, 0.0)


def test_empty_row_conditional_is_the_prior(posterior):
    """The generic path (row_posterior with no ratings) gives N(mu_L, Lambda_L^-1)
    up to the conjugate update's jitter."""
    fold = coldstart.fold_in_users(posterior, [([], [])])
    flat = posterior.flat_draws()
    np.testing.assert_allclose(fold.factor_mean[:, 0], flat.user_mean, rtol=JITTER_RTOL, atol=JITTER_RTOL)
    np.testing.assert_allclose(
        fold.factor_cov[:, 0], np.linalg.inv(flat.user_precision.astype(np.float64)), rtol=JITTER_RTOL * 10, atol=JITTER_RTOL
    )


def test_empty_item_fold_in_is_exactly_the_new_movie_prior(posterior):
    users = np.append(posterior.user_vocab.ids[:10], -5)
    fold = coldstart.fold_in_items(posterior, [([], [])])
    got = fold.predict(users, None)
    want = posterior.predict(users, np.full(users.shape, 9999))
    for field in ALL_FIELDS:
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)


# --- a training user's own ratings: the Gibbs conditional -------------------------------------


def test_fold_in_of_a_training_user_is_the_gibbs_conditional(posterior):
    user_id = posterior.user_vocab.ids[5]
    u, items, ratings = user_training(posterior, user_id)
    fold = coldstart.fold_in_users(posterior, [(items, ratings)])
    flat = posterior.flat_draws()
    train = posterior.train
    layout = build_layout(np.asarray(train.user_index), np.asarray(train.item_index), train.num_users, train.num_items, "bucket")
    rating, item_index = jnp.asarray(train.rating, jnp.float32), jnp.asarray(train.item_index)

    @jax.jit
    def users_block(item_factors, item_offsets, user_precision, user_mean, noise_precision):
        # What gibbs.step computes for the users block under one draw.
        gram, rhs = gram_and_rhs(layout, item_factors, rating - item_offsets[item_index])
        cond = row_posterior(user_precision, user_mean, gram, rhs, noise_precision)
        return cond.mean, row_covariance(cond)

    for s in (0, NUM_DRAWS - 1):
        mean, cov = users_block(
            flat.item_factors[s], flat.item_offsets[s], flat.user_precision[s], flat.user_mean[s], flat.noise_precision[s]
        )
        np.testing.assert_allclose(fold.factor_mean[s, 0], mean[u], rtol=F32_RTOL, atol=F32_ATOL)
        np.testing.assert_allclose(fold.factor_cov[s, 0], cov[u], rtol=F32_RTOL, atol=F32_ATOL)


def test_predictive_components_are_the_closed_form(posterior):
    """Per draw: mean m_j + R_j . mean_s, variance 1/alpha + R_j^T P_s^-1 R_j (known
    movie); for an unseen movie the new-movie prior given the user's conditional."""
    fold = coldstart.fold_in_users(posterior, [([1, 2, 3, 4], [5.0, 4.0, 2.0, 1.0])])
    flat = jax.tree.map(lambda x: np.asarray(x, np.float64), posterior.flat_draws())
    items = np.array([7, 1, 9999])
    pred = fold.predict(None, items, keep_components=True)
    j = posterior.item_vocab.index(items[:2], missing="flag")
    mean, cov = fold.factor_mean[:, 0].astype(np.float64), fold.factor_cov[:, 0].astype(np.float64)
    r = flat.item_factors[:, j]  # (S, 2, d)
    want_mean = flat.item_offsets[:, j] + np.einsum("snd,sd->sn", r, mean)
    want_var = 1.0 / flat.noise_precision[:, None] + np.einsum("snd,sde,sne->sn", r, cov, r)
    np.testing.assert_allclose(pred.components.mean[:, :2], want_mean, rtol=F32_RTOL)
    np.testing.assert_allclose(pred.components.sd[:, :2] ** 2, want_var, rtol=F32_RTOL)
    cov_r = np.linalg.inv(flat.item_precision)
    new_mean = flat.offset_mean + np.einsum("sd,sd->s", mean, flat.item_mean)
    new_var = (
        1.0 / flat.noise_precision + 1.0 / flat.offset_precision + np.einsum("sd,sde,se->s", mean, cov_r, mean)
        + np.einsum("sd,sde,se->s", flat.item_mean, cov, flat.item_mean) + np.einsum("sde,sed->s", cov, cov_r)
    )
    np.testing.assert_allclose(pred.components.mean[:, 2], new_mean, rtol=F32_RTOL)
    np.testing.assert_allclose(pred.components.sd[:, 2] ** 2, new_var, rtol=F32_RTOL)
    assert pred.known_item.tolist() == [True, True, False]
    # The mixture uses the importance weights.
    w = fold.weights[0]
    np.testing.assert_allclose(pred.mean, w @ pred.components.mean, rtol=1e-12)
    np.testing.assert_allclose(pred.components.weights[:, 0], w)


def test_posterior_components_cover_known_and_cold_pairs(posterior):
    """Posterior.components scores known pairs on a fast path and cold pairs with
    the cold-start branches; every case, interleaved, is the closed form per draw:
    known user and movie m_v + L_u . R_v (variance 1/alpha); new user
    m_v + mu_L . R_v (+ R_v^T Lambda_L^-1 R_v); new movie mu_m + L_u . mu_R
    (+ 1/tau + L_u^T Lambda_R^-1 L_u); both new mu_m + mu_L . mu_R (+ 1/tau +
    mu_L^T Lambda_R^-1 mu_L + mu_R^T Lambda_L^-1 mu_R + tr(Lambda_L^-1 Lambda_R^-1))."""
    flat = jax.tree.map(lambda x: np.asarray(x, np.float64), posterior.flat_draws())
    u = np.array([0, -1, 3, -1, 5, 2])
    i = np.array([1, 4, -1, -1, 0, 7])
    comps = posterior.components(u, i)
    cov_l, cov_r = np.linalg.inv(flat.user_precision), np.linalg.inv(flat.item_precision)
    noise, tau = 1.0 / flat.noise_precision, 1.0 / flat.offset_precision
    for k in range(u.size):
        lu = flat.user_factors[:, u[k]] if u[k] >= 0 else flat.user_mean
        rv = flat.item_factors[:, i[k]] if i[k] >= 0 else flat.item_mean
        m = flat.item_offsets[:, i[k]] if i[k] >= 0 else flat.offset_mean
        var = noise.copy()
        if u[k] < 0:
            var += np.einsum("sd,sde,se->s", rv, cov_l, rv)
        if i[k] < 0:
            var += tau + np.einsum("sd,sde,se->s", lu, cov_r, lu)
        if u[k] < 0 and i[k] < 0:
            var += np.einsum("sde,sed->s", cov_l, cov_r)
        np.testing.assert_allclose(comps.mean[:, k], m + np.einsum("sd,sd->s", lu, rv), rtol=F32_RTOL, atol=F32_ATOL)
        np.testing.assert_allclose(comps.sd[:, k] ** 2, var, rtol=F32_RTOL)


def test_factor_draws_match_the_conditional_within_mcse(posterior):
    """4,000 draws of one user's factors under one posterior draw against the
    closed-form mean and covariance. MCSE of a mean: sqrt(S_ii / n); of a
    covariance entry of a Gaussian: sqrt((S_ii S_jj + S_ij^2) / n).

    The user is folded in 1,000 times over (identical rows, independent
    draws), so four calls of ``factor_draws`` give 4,000 draws per posterior draw.
    """
    copies, calls = 1000, 4
    n = copies * calls
    fold = coldstart.fold_in_users(posterior, [([1, 2, 3], [5.0, 1.0, 4.0])] * copies)
    keys = jax.random.split(jax.random.PRNGKey(42), calls)
    draws = np.concatenate([fold.factor_draws(k) for k in keys], axis=1).astype(np.float64)  # (S, n, d)
    assert draws.shape == (NUM_DRAWS, n, RANK)
    for s in (11, 80):
        x = draws[s]
        mean = fold.factor_mean[s, 0].astype(np.float64)
        cov = fold.factor_cov[s, 0].astype(np.float64)
        assert np.all(np.abs(x.mean(0) - mean) <= Z * np.sqrt(np.diag(cov) / n))
        emp = np.cov(x, rowvar=False)
        se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
        assert np.all(np.abs(emp - cov) <= Z * se), (emp, cov)


# --- the importance weights ---------------------------------------------------------------------


def test_log_evidence_is_the_gaussian_marginal_likelihood(posterior):
    """y ~ N(m + R mu_L, R Lambda_L^-1 R^T + I/alpha), directly in float64."""
    items, y = np.array([3, 8, 12, 20]), np.array([4.0, 2.0, 5.0, 3.0])
    fold = coldstart.fold_in_users(posterior, [(items, y)])
    flat = jax.tree.map(lambda x: np.asarray(x, np.float64), posterior.flat_draws())
    j = posterior.item_vocab.index(items, missing="flag")
    for s in (0, 50, 99):
        r = flat.item_factors[s, j]
        cov = r @ np.linalg.inv(flat.user_precision[s]) @ r.T + np.eye(len(j)) / flat.noise_precision[s]
        want = stats.multivariate_normal(flat.item_offsets[s, j] + r @ flat.user_mean[s], cov).logpdf(y)
        # float32 evaluation of an O(10) log density.
        assert fold.log_evidence[0, s] == pytest.approx(want, abs=2e-3)


def test_item_log_evidence_is_the_gaussian_marginal_likelihood(posterior):
    users, y = posterior.user_vocab.ids[[0, 3, 9]], np.array([4.0, 2.0, 5.0])
    fold = coldstart.fold_in_items(posterior, [(users, y)])
    flat = jax.tree.map(lambda x: np.asarray(x, np.float64), posterior.flat_draws())
    u = posterior.user_vocab.index(users, missing="flag")
    for s in (0, 99):
        z = np.concatenate([flat.user_factors[s, u], np.ones((3, 1))], axis=1)
        prior_cov = np.zeros((RANK + 1, RANK + 1))
        prior_cov[:RANK, :RANK] = np.linalg.inv(flat.item_precision[s])
        prior_cov[RANK, RANK] = 1.0 / flat.offset_precision[s]
        prior_mean = np.append(flat.item_mean[s], flat.offset_mean[s])
        cov = z @ prior_cov @ z.T + np.eye(3) / flat.noise_precision[s]
        want = stats.multivariate_normal(z @ prior_mean, cov).logpdf(y)
        assert fold.log_evidence[0, s] == pytest.approx(want, abs=2e-3)


def test_weights_sum_to_one_and_are_uniform_when_empty(posterior):
    fold = coldstart.fold_in_users(posterior, [([1, 2], [5.0, 1.0]), ([], []), ([4], [3.0])])
    np.testing.assert_allclose(fold.weights.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(fold.weights >= 0)
    np.testing.assert_array_equal(fold.weights[1], 1.0 / posterior.num_draws)
    assert np.all(fold.effective_sample_size <= posterior.num_draws + 1e-9)
    assert fold.effective_sample_size[0] < posterior.num_draws  # two informative ratings move the weights
    w = fold.weights[0]
    want = np.exp(fold.log_evidence[0] - fold.log_evidence[0].max())
    np.testing.assert_allclose(w, want / want.sum(), rtol=1e-12)
    equal = coldstart.fold_in_users(posterior, [([1, 2], [5.0, 1.0])], weighting="equal")
    np.testing.assert_array_equal(equal.weights, 1.0 / posterior.num_draws)


def test_batch_equals_one_user_at_a_time(posterior):
    given = [([1, 2, 3], [5.0, 4.0, 1.0]), ([5], [2.0]), ([], []), (list(range(1, 21)), [3.0] * 20)]
    batch = coldstart.fold_in_users(posterior, given)
    for p, g in enumerate(given):
        one = coldstart.fold_in_users(posterior, [g])
        np.testing.assert_allclose(batch.factor_mean[:, p], one.factor_mean[:, 0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(batch.log_evidence[p], one.log_evidence[0], rtol=1e-6, atol=1e-5)
        a, b = batch.predict(p, [1, 9, 30]), one.predict(None, [1, 9, 30])
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-6)
        np.testing.assert_allclose(a.sd, b.sd, rtol=1e-6)
    padded = coldstart.PaddedRatings(
        ids=np.array([[1, 2, 3], [5, 0, 0]]), ratings=np.array([[5.0, 4.0, 1.0], [2.0, 0.0, 0.0]]),
        mask=np.array([[1, 1, 1], [1, 0, 0]], bool),
    )
    from_padded = coldstart.fold_in_users(posterior, padded)
    # Padded to width 3 here and to 20 (the longest list) above: the masked
    # sums reduce over different lengths, so they agree to float32 rounding,
    # not bitwise (measured 6e-7 apart on one CPU, equal on another).
    np.testing.assert_allclose(from_padded.factor_mean, batch.factor_mean[:, :2], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(from_padded.given_ids[1], [5])


def test_predict_pairs_across_users_and_labels(posterior):
    fold = coldstart.fold_in_users(posterior, [([1], [5.0]), ([2], [1.0])], user_ids=["ann", "bob"])
    pred = fold.predict(["bob", "ann", "bob"], [1, 2, 3], keep_components=True)
    np.testing.assert_allclose(pred.mean[[0, 2]], fold.predict("bob", [1, 3]).mean, rtol=1e-12)
    assert pred.mean[1] == pytest.approx(fold.predict("ann", [2]).mean[0], rel=1e-12)
    assert list(pred.users) == ["bob", "ann", "bob"] and pred.folded_in.all() and not pred.known_user.any()
    with pytest.raises(ValueError, match="say which"):
        fold.predict(None, [1, 2])
    with pytest.raises(KeyError, match="carl"):
        fold.predict("carl", [1])
    frame = pred.to_dataframe()
    assert "folded_in" in frame.columns
    lo, hi = pred.interval(0.5)  # from the kept components: the weighted mixture's quantiles
    assert np.all(lo <= hi)
    with pytest.raises(ValueError, match="keep_components"):
        fold.predict("bob", [1]).interval(0.5)


def test_weighted_interval_is_the_weighted_mixture_quantile(posterior):
    fold = coldstart.fold_in_users(posterior, [([1, 2, 3], [5.0, 5.0, 1.0])])
    pred = fold.predict(None, [4, 5], prob=0.8, keep_components=True)
    c = pred.components
    for q, bound in ((0.1, pred.lower), (0.9, pred.upper)):
        cdf = np.sum(fold.weights[0][:, None] * stats.norm.cdf((bound[None] - c.mean) / c.sd), axis=0)
        np.testing.assert_allclose(cdf, q, atol=1e-5)


# --- point estimates --------------------------------------------------------------------------


def test_map_fold_in_is_the_ridge_solution(map_posterior):
    items, y = np.array([2, 4, 6, 8, 10]), np.array([5.0, 1.0, 4.0, 3.0, 2.0])
    fold = coldstart.fold_in_users(map_posterior, [(items, y)])
    p = jax.tree.map(lambda x: np.asarray(x[0, 0], np.float64), map_posterior.draws)
    j = map_posterior.item_vocab.index(items, missing="flag")
    r = p.item_factors[j]
    precision = p.user_precision + p.noise_precision * r.T @ r
    ridge = np.linalg.solve(precision, p.user_precision @ p.user_mean + p.noise_precision * r.T @ (y - p.item_offsets[j]))
    np.testing.assert_allclose(fold.factor_mean[0, 0], ridge, rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(fold.factor_cov[0, 0], np.linalg.inv(precision), rtol=F32_RTOL, atol=F32_ATOL)
    assert fold.weights.tolist() == [[1.0]] and fold.effective_sample_size[0] == 1.0
    pred = fold.predict(None, [1])
    want_sd = np.sqrt(1.0 / p.noise_precision + p.item_factors[0] @ np.linalg.inv(precision) @ p.item_factors[0])
    assert pred.sd[0] == pytest.approx(want_sd, rel=F32_RTOL)


# --- movies ---------------------------------------------------------------------------------


def test_fold_in_of_a_training_movie_is_the_gibbs_item_block(posterior):
    train = posterior.train
    v = 4
    rows = np.flatnonzero(np.asarray(train.item_index) == v)
    users = np.asarray(train.user_vocab.ids)[np.asarray(train.user_index)[rows]]
    fold = coldstart.fold_in_items(posterior, [(users, np.asarray(train.rating)[rows])])
    flat = posterior.flat_draws()
    layout = build_layout(np.asarray(train.item_index), np.asarray(train.user_index), train.num_items, train.num_users, "bucket")
    d = RANK
    rating = jnp.asarray(train.rating, jnp.float32)

    @jax.jit
    def items_block(user_factors, item_precision, offset_precision, item_mean, offset_mean, noise_precision):
        # What gibbs.step computes for the movie (factors, offset) block under one draw.
        design = jnp.concatenate([user_factors, jnp.ones((train.num_users, 1))], axis=1)
        prior = jnp.zeros((d + 1, d + 1)).at[:d, :d].set(item_precision).at[d, d].set(offset_precision)
        prior_mean = jnp.concatenate([item_mean, offset_mean[None]])
        gram, rhs = gram_and_rhs(layout, design, rating)
        cond = row_posterior(prior, prior_mean, gram, rhs, noise_precision)
        return cond.mean, row_covariance(cond)

    for s in (3, 64):
        mean, cov = items_block(
            flat.user_factors[s], flat.item_precision[s], flat.offset_precision[s], flat.item_mean[s],
            flat.offset_mean[s], flat.noise_precision[s],
        )
        np.testing.assert_allclose(fold.factor_mean[s, 0], mean[v], rtol=F32_RTOL, atol=F32_ATOL)
        np.testing.assert_allclose(fold.factor_cov[s, 0], cov[v], rtol=F32_RTOL, atol=F32_ATOL)
    pred = fold.predict(users[:3], None, keep_components=True)
    x = fold.factor_mean[:, 0]
    u = posterior.user_vocab.index(users[:3], missing="flag")
    want = np.einsum("snd,sd->sn", flat.user_factors[:, u], x[:, :d]) + x[:, d:]
    np.testing.assert_allclose(pred.components.mean, want, rtol=F32_RTOL)
    assert fold.given_ids[0].tolist() == users.tolist()


# --- bad input ----------------------------------------------------------------------------------


def test_unknown_items_are_reported_never_dropped(posterior):
    with pytest.raises(ValueError, match=r"\[777, 888\]"):
        coldstart.fold_in_users(posterior, [([1, 777, 2, 888], [5.0, 4.0, 3.0, 2.0])])
    fold = coldstart.fold_in_users(posterior, [([1, 777, 2], [5.0, 4.0, 3.0])], unknown="ignore")
    assert fold.ignored_ids[0].tolist() == [777]
    assert fold.given_ids[0].tolist() == [1, 2]
    clean = coldstart.fold_in_users(posterior, [([1, 2], [5.0, 3.0])])
    np.testing.assert_array_equal(fold.factor_mean, clean.factor_mean)
    with pytest.raises(ValueError, match="unknown"):
        coldstart.fold_in_users(posterior, [([1], [5.0])], unknown="drop")
    with pytest.raises(ValueError, match=r"\[-3\]"):
        coldstart.fold_in_items(posterior, [([posterior.user_vocab.ids[0], -3], [5.0, 4.0])])


@pytest.mark.parametrize(
    "given, match",
    [
        ([([1, 2], [5.0, 7.0])], None),  # off the 1..5 scale
        ([([1, 2], [0.0, 3.0])], None),
        ([([1, 2], [5.0, np.nan])], "NaN"),
        ([([1, 2, 1], [5.0, 4.0, 3.0])], r"duplicate item ids \[1\]"),
        ([([1, 2], [5.0])], "one length"),
        ([], "no rows"),
    ],
)
def test_bad_ratings_raise(posterior, given, match):
    with pytest.raises(ValueError, match=match):
        coldstart.fold_in_users(posterior, given)


def test_bad_options_raise(posterior):
    with pytest.raises(ValueError, match="weighting"):
        coldstart.fold_in_users(posterior, [([1], [5.0])], weighting="uniform")
    with pytest.raises(TypeError, match="pairs"):
        coldstart.fold_in_users(posterior, "1,5")
    with pytest.raises(ValueError, match="distinct"):
        coldstart.fold_in_users(posterior, [([1], [5.0]), ([2], [4.0])], user_ids=["a", "a"])
