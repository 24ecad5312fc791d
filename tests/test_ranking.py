"""Top-k recommendation with uncertainty, similar movies, ranking evaluation.

One Gibbs posterior on tiny synthetic data (40 users x 30 movies, rank 2,
100 draws) serves the module; a point estimate is its last draw.
"""

import warnings

import jax
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from bayesmf import coldstart, metrics
from bayesmf.data import RatingScale, Ratings
from bayesmf.engines import gibbs
from bayesmf.model import ModelConfig, model_data_from_ratings
from bayesmf.posterior import Posterior
from bayesmf.ranking import STRATEGIES, evaluate_ranking, recommend
from bayesmf.similar import similar_items

NUM_USERS, NUM_ITEMS, RANK, NUM_DRAWS = 40, 30, 2, 100
# Rotation-invariant distances before/after a change of factor basis agree to
# float64 round-off of O(1) numbers (the draws are float32 but the transform
# and the distance are evaluated in float64).
INVARIANCE_RTOL = 1e-6


def make_ratings(seed=1, nnz=500):
    rng = np.random.default_rng(seed)
    cells = rng.choice(NUM_USERS * NUM_ITEMS, size=nnz, replace=False)
    users, items = np.divmod(cells, NUM_ITEMS)
    lu = rng.normal(0, 0.7, (NUM_USERS, RANK))
    rv = rng.normal(0, 0.7, (NUM_ITEMS, RANK))
    m = rng.normal(3.0, 0.5, NUM_ITEMS)
    r = np.clip(np.round(np.sum(lu[users] * rv[items], 1) + m[items] + rng.normal(0, 0.5, nnz)), 1, 5)
    return Ratings.from_arrays(users + 101, items + 1, r, scale=RatingScale(1.0, 5.0, 1.0))


def with_draws(posterior, draws, **kw):
    return Posterior(
        draws, posterior.config, posterior.user_vocab, posterior.item_vocab, posterior.scale,
        method=kw.pop("method", posterior.method), train=posterior.train, titles=posterior.titles, **kw,
    )


@pytest.fixture(scope="module")
def posterior():
    ratings = make_ratings()
    config = ModelConfig(rank=RANK)
    result = gibbs.sample(
        jax.random.PRNGKey(3), model_data_from_ratings(ratings), config, num_samples=NUM_DRAWS, num_warmup=50,
        progress_bar=False,
    )
    titles = {int(i): f"Movie {i}" for i in ratings.item_vocab.ids}
    return Posterior(
        result.draws, config, ratings.user_vocab, ratings.item_vocab, ratings.scale, method="gibbs", train=ratings,
        titles=titles,
    )


@pytest.fixture(scope="module")
def map_posterior(posterior):
    return with_draws(posterior, jax.tree.map(lambda x: x[:, -1:], posterior.draws), method="map")


def seen_items(posterior, user_id):
    train = posterior.train
    u = int(train.user_vocab.index([user_id], missing="flag")[0])
    return set(np.asarray(train.item_vocab.ids)[np.asarray(train.item_index)[np.asarray(train.user_index) == u]].tolist())


USER = 105


# --- top-k --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_top_k_is_sorted_and_excludes_seen(posterior, strategy):
    top = recommend(posterior, USER, 7, strategy=strategy, rng_key=jax.random.PRNGKey(0))
    assert list(top.columns[:7]) == ["user", "rank", "item", "score", "mean", "sd", "epistemic_sd"] and "title" in top.columns
    assert top["user"].tolist() == [USER] * 7 and top["rank"].tolist() == list(range(1, 8))
    assert len(top) == 7
    assert np.all(np.diff(top["score"].to_numpy()) <= 0)
    assert not set(top["item"].tolist()) & seen_items(posterior, USER)
    assert top["title"].tolist() == [f"Movie {i}" for i in top["item"]]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    user=st.sampled_from([101, 110, 125, 140, -1]),
    k=st.integers(1, 40),
    strategy=st.sampled_from(STRATEGIES),
    seed=st.integers(0, 2**31 - 1),
)
def test_top_k_property(posterior, user, k, strategy, seed):
    top = recommend(posterior, user, k, strategy=strategy, rng_key=jax.random.PRNGKey(seed))
    seen = seen_items(posterior, user) if user > 0 else set()
    assert len(top) == min(k, NUM_ITEMS - len(seen))
    assert np.all(np.diff(top["score"].to_numpy()) <= 0)
    assert not set(top["item"].tolist()) & seen
    assert top["item"].is_unique


def test_exclude_seen_off_keeps_everything(posterior):
    top = recommend(posterior, USER, 100, exclude_seen=False)
    assert sorted(top["item"].tolist()) == sorted(posterior.item_vocab.ids.tolist())


def test_ties_are_broken_by_item_index(posterior):
    """Movies with identical draws score identically; they come out in index
    order whatever order the candidates are given in."""
    draws = posterior.draws
    tied = [4, 11, 19, 25]  # item indices
    item_factors, item_offsets = draws.item_factors.copy(), draws.item_offsets.copy()
    item_factors[:, :, tied] = item_factors[:, :, [4]]
    item_offsets[:, :, tied] = item_offsets[:, :, [4]] + 10.0  # far above the rest: the top 4
    post = with_draws(posterior, draws._replace(item_factors=item_factors, item_offsets=item_offsets))
    ids = post.item_vocab.ids
    for strategy in ("mean", "lcb", "ucb", "prob_above"):
        top = recommend(post, -1, 4, strategy=strategy, items=ids[::-1], threshold=1.0)
        assert top["item"].tolist() == ids[tied].tolist(), strategy
        assert top["score"].nunique() == 1


def test_thompson_is_reproducible_per_key(posterior):
    def run(seed, user=USER, target=posterior):
        return recommend(target, user, 10, strategy="thompson", rng_key=jax.random.PRNGKey(seed))

    pd.testing.assert_frame_equal(run(0), run(0))
    assert not run(0)["score"].equals(run(1)["score"])
    pd.testing.assert_frame_equal(run(5, user=-1), run(5, user=-1))
    fold = coldstart.fold_in_users(posterior, [([1, 2, 3], [5.0, 1.0, 4.0])])
    pd.testing.assert_frame_equal(run(2, user=0, target=fold), run(2, user=0, target=fold))
    assert not run(2, user=0, target=fold)["score"].equals(run(3, user=0, target=fold)["score"])


def test_thompson_scores_are_one_posterior_draw(posterior):
    """A known user's Thompson scores are exactly the mean ratings of one draw."""
    top = recommend(posterior, USER, 30, strategy="thompson", rng_key=jax.random.PRNGKey(9), exclude_seen=False)
    flat = posterior.flat_draws()
    u = int(posterior.user_vocab.index([USER], missing="flag")[0])
    j = posterior.item_vocab.index(top["item"].to_numpy(), missing="flag")
    per_draw = flat.item_offsets[:, j] + np.einsum("sjd,sd->sj", flat.item_factors[:, j], flat.user_factors[:, u])
    err = np.max(np.abs(per_draw - top["score"].to_numpy()[None]), axis=1)
    assert err.min() < 1e-5


def test_bounds_bracket_the_mean(posterior):
    frames = {
        s: recommend(posterior, USER, 100, strategy=s, beta=1.5, exclude_seen=False).set_index("item").sort_index()
        for s in ("mean", "lcb", "ucb")
    }
    mean, lcb, ucb = (frames[s]["score"].to_numpy() for s in ("mean", "lcb", "ucb"))
    assert np.all(lcb <= mean) and np.all(mean <= ucb) and np.any(lcb < mean)
    sd = frames["mean"]["epistemic_sd"].to_numpy()
    np.testing.assert_allclose(ucb - mean, 1.5 * sd, rtol=1e-12)
    pred = recommend(posterior, USER, 100, strategy="lcb", spread="predictive", exclude_seen=False)
    np.testing.assert_allclose(pred["score"], pred["mean"] - pred["sd"], rtol=1e-12)


def test_prob_above_is_the_mixture_tail(posterior):
    top = recommend(posterior, USER, 100, strategy="prob_above", threshold=3.5, exclude_seen=False)
    assert np.all((top["score"] >= 0) & (top["score"] <= 1))
    pred = posterior.predict(np.full(len(top), USER), top["item"].to_numpy(), keep_components=True)
    want = stats.norm.sf((3.5 - pred.components.mean) / pred.components.sd).mean(axis=0)
    np.testing.assert_allclose(top["score"], want, rtol=1e-10)


def test_unknown_user_gets_the_cold_start_ranking(posterior):
    top = recommend(posterior, -1, 100)
    ids = posterior.item_vocab.ids
    want = posterior.predict(np.full(ids.shape, -1), ids)
    order = np.argsort(-want.mean, kind="stable")
    assert top["item"].tolist() == ids[order].tolist()


def test_folded_in_user(posterior):
    fold = coldstart.fold_in_users(posterior, [([1, 2, 3], [5.0, 1.0, 4.0]), ([], [])], user_ids=["a", "b"])
    top = recommend(fold, "a", 100)
    assert not {1, 2, 3} & set(top["item"].tolist()) and len(top) == NUM_ITEMS - 3
    np.testing.assert_allclose(top["mean"], fold.predict("a", top["item"]).mean, rtol=1e-12)
    empty = recommend(fold, "b", 100)
    cold = recommend(posterior, -1, 100)
    # no ratings: exactly the cold-start ranking
    pd.testing.assert_frame_equal(empty.drop(columns="user"), cold.drop(columns="user"))
    for strategy in ("lcb", "prob_above"):
        assert len(recommend(fold, "a", 5, strategy=strategy)) == 5


def test_point_estimate_uses_the_laplace_spread(map_posterior):
    lcb = recommend(map_posterior, USER, 100, strategy="lcb", uncertainty="laplace")
    assert np.all(lcb["epistemic_sd"] > 0) and lcb["epistemic_sd"].nunique() > 1
    # The same option, with the same default, as predict: the sds agree.
    pred = map_posterior.predict(np.full(len(lcb), USER), lcb["item"].to_numpy(), uncertainty="laplace")
    np.testing.assert_allclose(lcb["sd"], pred.sd, rtol=1e-12)
    plug_in = recommend(map_posterior, USER, 100, strategy="lcb")
    np.testing.assert_array_equal(plug_in["epistemic_sd"], 0.0)  # collapses to the mean without Laplace
    np.testing.assert_array_equal(plug_in["score"], plug_in["mean"])
    np.testing.assert_allclose(plug_in["sd"], map_posterior.predict(np.full(len(plug_in), USER), plug_in["item"].to_numpy()).sd, rtol=1e-12)
    a = recommend(map_posterior, USER, 10, strategy="thompson", rng_key=jax.random.PRNGKey(0), uncertainty="laplace")
    b = recommend(map_posterior, USER, 10, strategy="thompson", rng_key=jax.random.PRNGKey(1), uncertainty="laplace")
    assert not a["score"].equals(b["score"])


def test_one_users_laplace_spread_is_every_users_restricted_to_it(map_posterior):
    """A user's variances and Thompson row draw do not depend on which other users share the call, to the
    last bit (the batched ranking rescores through the same functions as one user at a time)."""
    from bayesmf import laplace

    point, train = map_posterior._point(), map_posterior.train
    users = np.arange(NUM_USERS)
    u, i = np.repeat(users, NUM_ITEMS), np.tile(np.arange(NUM_ITEMS), NUM_USERS)
    every = laplace.pair_variances(point, train, u, i)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(5), users)
    noise = laplace.conditional_noise(keys, point, train, users)
    for user in (0, 3, 7, NUM_USERS - 1):
        own = laplace.pair_variances(point, train, u[u == user], i[u == user])
        np.testing.assert_array_equal(own, every[u == user])
        np.testing.assert_array_equal(laplace.conditional_noise(keys[user : user + 1], point, train, [user])[0], noise[user])
    assert np.all(every > 0)
    # The bulk variances of the batched ranking: float32 products, a sum of squares (~1e-7 relative; 1e-5 is the
    # tenth of the guard's tolerance that the other bulk scores are held to).
    rows = laplace.train_rows(train)
    bulk = np.asarray(laplace.block_variances(laplace.user_factors(point, rows, users)[1], laplace.user_design(point)))
    np.testing.assert_allclose(bulk.ravel(), every, rtol=1e-5)
    # The row draws have the conditional covariance: the sample covariance of 4,000 draws for one user is within
    # 4 standard errors of P^{-1} (each entry's se <= sqrt(2 / n) times the diagonal scale).
    many = laplace.conditional_noise(jax.random.split(jax.random.PRNGKey(6), 4000), point, train, np.full(4000, 3))
    cov = laplace.user_factors(point, rows, [3])[0][0]
    scale = np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    assert np.all(np.abs(np.cov(many.T) - cov) < 4 * np.sqrt(2 / 4000) * scale)


def test_laplace_ranking_of_many_users_compiles_nothing_per_user(map_posterior, caplog):
    """Users with different numbers of ratings must not each compile programs (host Grams, fixed shapes).
    The users share one padded candidate count, so predict's own programs are those of the warm-up call."""
    import logging

    from bayesmf.arrays import padded_count

    users = np.asarray(map_posterior.user_vocab.ids)
    counts = np.bincount(np.asarray(map_posterior.train.user_index), minlength=len(users))
    pads = np.asarray([padded_count(NUM_ITEMS - c) for c in counts])
    same = pads == np.bincount(pads).argmax()
    chosen = users[same][np.unique(counts[same], return_index=True)[1]]  # one user per distinct count
    assert len(chosen) >= 6
    one_at_a_time = OneAtATime(map_posterior)  # the per-user path (ordinal models, fold-ins take it too)
    for strategy in ("lcb", "thompson"):
        recommend(one_at_a_time, chosen[:2], 5, strategy=strategy, rng_key=jax.random.PRNGKey(0), uncertainty="laplace")
        with jax.log_compiles(), caplog.at_level(logging.WARNING):
            caplog.clear()
            recommend(one_at_a_time, chosen[2:], 5, strategy=strategy, rng_key=jax.random.PRNGKey(1),
                      uncertainty="laplace")
        compiles = [r.getMessage() for r in caplog.records if "XLA compilation" in r.getMessage()]
        assert compiles == [], (strategy, compiles)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "k must be > 0"),
        (dict(k=-3), "k must be > 0"),
        (dict(k=2.5), "positive integer"),
        (dict(strategy="best"), "unknown strategy 'best'"),
        (dict(beta=-1.0), "beta must be"),
        (dict(strategy="thompson"), "rng_key"),
        (dict(items=[1, 2, 999]), r"unknown to the model: \[999\]"),
        (dict(items=[1, 1]), "duplicate"),
        (dict(spread="total"), "spread"),
        (dict(uncertainty="total"), "uncertainty"),
    ],
)
def test_bad_input_raises(posterior, kwargs, match):
    kwargs = dict(kwargs)
    k = kwargs.pop("k", 5)
    with pytest.raises(ValueError, match=match):
        recommend(posterior, USER, k, **kwargs)


@pytest.mark.parametrize("prob", [None, 0.0, 1.0, 1.5, "0.9", True])
def test_predict_rejects_a_bad_interval_probability(posterior, prob):
    with pytest.raises(ValueError, match="interval probability"):
        posterior.predict([USER], [1], prob=prob)


def test_evaluate_scores_the_same_intervals_as_predict(posterior):
    """evaluate skips predict's own interval; its coverage must still be that
    of predict's interval at the same level."""
    test = make_ratings(seed=7, nnz=80)
    known = np.isin(test.user_ids, posterior.user_vocab.ids) & np.isin(test.item_ids, posterior.item_vocab.ids)
    pred = posterior.predict(test.user_ids, test.item_ids, prob=0.8)
    inside = (pred.lower <= test.rating) & (test.rating <= pred.upper)
    assert known.any()
    table = posterior.evaluate(test, levels=(0.8,), expect_cold=True)
    assert table.loc[("all", "all"), "coverage_80"] == pytest.approx(inside.mean(), abs=1e-12)


def test_bad_targets_raise(posterior):
    with pytest.raises(TypeError, match="not one of movies"):
        recommend(coldstart.fold_in_items(posterior, [([101], [4.0])]), 0)
    with pytest.raises(KeyError):
        recommend(coldstart.fold_in_users(posterior, [([1], [4.0])]), 7)


# --- similar movies ---------------------------------------------------------------------------


def test_invariant_distance_survives_any_change_of_basis(posterior):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(RANK, RANK)) + 2.0 * np.eye(RANK)  # invertible, not orthogonal
    assert abs(np.linalg.det(a)) > 0.1 and not np.allclose(a @ a.T, np.eye(RANK))
    d = posterior.draws
    d64 = d._replace(**{f: np.asarray(getattr(d, f), np.float64) for f in ("user_factors", "item_factors", "item_offsets")})
    moved = d64._replace(user_factors=d64.user_factors @ a, item_factors=d64.item_factors @ np.linalg.inv(a).T)
    before, after = with_draws(posterior, d64), with_draws(posterior, moved)
    for metric in ("invariant", "profile"):
        x, y = similar_items(before, 7, 29, metric=metric), similar_items(after, 7, 29, metric=metric)
        assert x["item"].tolist() == y["item"].tolist(), metric
        np.testing.assert_allclose(x["distance"], y["distance"], rtol=INVARIANCE_RTOL)
        np.testing.assert_array_equal(x["prob_top_k"], y["prob_top_k"])
    e1 = similar_items(before, 7, 29, metric="euclidean").sort_values("item")["distance"].to_numpy()
    e2 = similar_items(after, 7, 29, metric="euclidean").sort_values("item")["distance"].to_numpy()
    assert np.max(np.abs(e1 / e2 - 1)) > 0.1


def test_similar_items_output(posterior):
    top = similar_items(posterior, 7, 5)
    assert list(top.columns) == ["item", "distance", "prob_top_k", "title"]
    assert len(top) == 5 and 7 not in top["item"].tolist()
    assert np.all(np.diff(top["distance"].to_numpy()) >= 0)
    assert np.all((top["prob_top_k"] >= 0) & (top["prob_top_k"] <= 1))
    full = similar_items(posterior, 7, 29)
    assert full["prob_top_k"].sum() == pytest.approx(29)
    k5 = similar_items(posterior, 7, 5, num_draws=10)
    assert np.all(np.isin(k5["prob_top_k"] * 10, np.arange(11)))
    # invariant distance is the RMS difference of predicted (offset-free) ratings over training users
    flat = posterior.flat_draws()
    i, j = posterior.item_vocab.index([7, top["item"].iloc[0]], missing="flag")
    diff = np.einsum("snd,sd->sn", flat.user_factors.astype(np.float64), (flat.item_factors[:, i] - flat.item_factors[:, j]).astype(np.float64))
    # Both sides are float64, but the engine goes through G = E[L L^T] and
    # diff^T G diff: G has a large eigenvalue along the users' common
    # component (the sampled mu_L), and a diff nearly orthogonal to it loses
    # digits to cancellation (measured 1.6e-9 relative on Python 3.13's
    # numpy). 1e-7 is still far below any real formula error.
    assert top["distance"].iloc[0] == pytest.approx(np.sqrt(np.mean(diff**2)), rel=1e-7)
    with pytest.raises(ValueError, match="unknown"):
        similar_items(posterior, 999)
    with pytest.raises(ValueError, match="metric"):
        similar_items(posterior, 7, metric="cosine")
    with pytest.raises(ValueError, match="k must"):
        similar_items(posterior, 7, 0)


# --- offline evaluation ------------------------------------------------------------------------


def test_evaluate_ranking_matches_the_metrics(posterior):
    rng = np.random.default_rng(5)
    users = rng.choice([101, 102, 103, 104, 105, -7], size=60)
    items = rng.integers(1, NUM_ITEMS + 1, size=60)
    ratings = rng.integers(1, 6, size=60).astype(float)
    out = evaluate_ranking(posterior, users, items, ratings, k=5, strategy="mean")
    recommended, relevant = [], []
    for u in np.unique(users):
        good = items[(users == u) & (ratings >= 4.0)]
        if good.size:
            recommended.append(recommend(posterior, u, 5)["item"].to_numpy())
            relevant.append(good)
    assert out["precision_at_k"] == pytest.approx(metrics.precision_at_k(recommended, relevant, 5))
    assert out["recall_at_k"] == pytest.approx(metrics.recall_at_k(recommended, relevant, 5))
    assert out["ndcg_at_k"] == pytest.approx(metrics.ndcg_at_k(recommended, relevant, 5))
    assert out["mrr_at_k"] == pytest.approx(metrics.mrr_at_k(recommended, relevant, 5))
    assert out["hit_rate_at_k"] == pytest.approx(metrics.hit_rate_at_k(recommended, relevant, 5))
    assert out["num_users"] == len(recommended) and out["num_cold_users"] == int(-7 in users and len(relevant) > 0 and any(
        (users == -7) & (ratings >= 4.0)))
    t1 = evaluate_ranking(posterior, users, items, ratings, k=5, strategy="thompson", rng_key=jax.random.PRNGKey(0))
    t2 = evaluate_ranking(posterior, users, items, ratings, k=5, strategy="thompson", rng_key=jax.random.PRNGKey(0))
    assert t1 == t2
    with pytest.raises(ValueError, match="rng_key"):
        evaluate_ranking(posterior, users, items, ratings, strategy="thompson")
    with pytest.raises(ValueError, match="one length"):
        evaluate_ranking(posterior, users, items[:3], ratings)


# --------------------------------------------------------------------------
# Posterior.evaluate with breakdowns (the fixture has the training ratings the buckets need)


def test_evaluate_breakdowns_score_once_and_match_summarize(posterior):
    test = make_ratings(seed=7, nnz=300)
    overall = posterior.evaluate(test, expect_cold=True)
    both = posterior.evaluate(test, by=("user_activity", "item_popularity"), expect_cold=True)
    user_table = posterior.evaluate(test, by="user_activity", expect_cold=True)
    assert isinstance(both, pd.DataFrame) and both.index.names == ["by", "group"]
    pd.testing.assert_frame_equal(both.loc[["all"]], overall)
    pd.testing.assert_frame_equal(both.loc[["all", "user_activity"]], user_table)
    tables = {name: both.loc[name] for name in ("user_activity", "item_popularity")}
    pred = posterior.predict(test.user_ids, test.item_ids, keep_components=True)
    y = np.asarray(test.rating, np.float64)
    comps = pred.components
    degree = posterior.train.item_degrees()
    idx = posterior.item_vocab.index(test.item_ids, missing="flag")
    labels = metrics.activity_bucket(np.where(pred.known_item, degree[np.where(pred.known_item, idx, 0)], 0))
    table = tables["item_popularity"]
    assert table["count"].sum() == len(test)
    # 100 draws x 300 rows is under the exact-CRPS budget, so every group equals summarize on its rows alone.
    for label, row in table[table["count"] > 0].iterrows():
        rows = np.asarray(labels) == label
        expected = metrics.summarize(metrics.score_rows(y[rows], comps.mean[:, rows], comps.sd[:, rows])).iloc[0]
        for key, value in expected.items():
            assert row[key] == pytest.approx(value), (label, key)
    rmse = overall.loc[("all", "all"), "rmse"]
    assert rmse == pytest.approx(np.sqrt(np.sum(table["count"] * table["rmse"] ** 2) / len(test)))
    with pytest.raises(ValueError, match="unknown breakdown"):
        posterior.evaluate(test, by=("user_activity", "genre"))


def test_recommend_for_several_users_returns_every_list(posterior):
    """recommend([u1, u2]) once returned only u1's list."""
    users = posterior.user_vocab.ids[:3]
    frame = recommend(posterior, list(users), 4)
    assert frame["user"].tolist() == np.repeat(users, 4).tolist()
    assert frame["rank"].tolist() == [1, 2, 3, 4] * 3
    for u in users:
        pd.testing.assert_frame_equal(frame[frame["user"] == u].reset_index(drop=True), recommend(posterior, u, 4))
    everyone = recommend(posterior, None, 2)
    assert set(everyone["user"]) == set(posterior.user_vocab.ids) and len(everyone) == 2 * len(posterior.user_vocab)


def test_evaluate_warns_when_many_rows_are_cold(posterior):
    test = make_ratings(seed=7, nnz=80)
    strangers = Ratings.from_arrays(test.user_ids + 10_000, test.item_ids, test.rating, scale=test.scale)
    with pytest.warns(UserWarning, match="cold-start predictions"):
        table = posterior.evaluate(strangers)
    assert table.attrs["num_cold_rows"] == len(strangers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        posterior.evaluate(strangers, expect_cold=True)


# --- many users at once: the batched path equals one user at a time ------------------------------


class OneAtATime:
    """The posterior behind the bare protocol, so recommend ranks it one user at a time (the reference)."""

    def __init__(self, posterior):
        self._posterior = posterior

    def __getattr__(self, name):
        return getattr(self._posterior, name)


# The batch rescores its shortlist through the per-user path's own functions, so
# the scores agree to the last bits; 1e-9 leaves room for a different blocking of
# the float32 inner products (the bar is float32 round-off, ~1e-5).
BATCH_RTOL = 1e-9


def assert_same_ranking(batch, one):
    assert batch["item"].tolist() == one["item"].tolist()
    assert batch["user"].tolist() == one["user"].tolist() and batch["rank"].tolist() == one["rank"].tolist()
    for column in ("score", "mean", "sd", "epistemic_sd"):
        np.testing.assert_allclose(batch[column], one[column], rtol=BATCH_RTOL, atol=1e-12, err_msg=column)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("candidates", [None, "some"])
def test_batch_equals_one_user_at_a_time(posterior, strategy, exclude_seen, candidates):
    items = None if candidates is None else posterior.item_vocab.ids[::-3]  # reversed: not in index order
    users = [105, 101, -1, 140, 123, 101]  # an unknown user and a repeat among known ones
    kw = dict(strategy=strategy, exclude_seen=exclude_seen, items=items, rng_key=jax.random.PRNGKey(4), beta=0.7,
              threshold=3.5)
    for k in (1, 5, 40):
        assert_same_ranking(recommend(posterior, users, k, **kw), recommend(OneAtATime(posterior), users, k, **kw))
    assert_same_ranking(recommend(posterior, None, 3, **kw), recommend(OneAtATime(posterior), None, 3, **kw))
    assert_same_ranking(recommend(posterior, 110, 4, **kw), recommend(OneAtATime(posterior), 110, 4, **kw))


@pytest.mark.parametrize("uncertainty", ["posterior", "laplace"])
@pytest.mark.parametrize("strategy", STRATEGIES + ("predictive",))
def test_batch_equals_one_user_at_a_time_for_a_point_estimate(map_posterior, strategy, uncertainty):
    kw = dict(strategy="lcb" if strategy == "predictive" else strategy, rng_key=jax.random.PRNGKey(1), threshold=3.5,
              spread="predictive" if strategy == "predictive" else "epistemic", uncertainty=uncertainty)
    users = [105, 101, -1, 140, 123, 101]  # an unknown user and a repeat among known ones
    for k in (1, 6):
        batch = recommend(map_posterior, users, k, **kw)
        assert_same_ranking(batch, recommend(OneAtATime(map_posterior), users, k, **kw))
    assert_same_ranking(recommend(map_posterior, None, 4, **kw), recommend(OneAtATime(map_posterior), None, 4, **kw))
    assert_same_ranking(recommend(map_posterior, 110, 4, **kw), recommend(OneAtATime(map_posterior), 110, 4, **kw))
    known = batch[batch["user"] != -1]
    if strategy == "lcb" and uncertainty == "posterior":
        np.testing.assert_array_equal(known["epistemic_sd"], 0.0)  # the floor, as one user at a time
    if uncertainty == "laplace":
        assert np.all(known["epistemic_sd"] > 0)


@pytest.fixture(scope="module")
def offsets_posterior():
    ratings = make_ratings()
    config = ModelConfig(rank=RANK, user_offsets=True)
    result = gibbs.sample(jax.random.PRNGKey(3), model_data_from_ratings(ratings), config, num_samples=30,
                          num_warmup=30, progress_bar=False)
    return Posterior(result.draws, config, ratings.user_vocab, ratings.item_vocab, ratings.scale, method="gibbs",
                     train=ratings)


@pytest.mark.parametrize("point", [False, True], ids=["draws", "laplace"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batch_equals_one_user_at_a_time_with_user_offsets(offsets_posterior, strategy, point):
    """The exact rescoring adds ``b_u`` after ``L . R + m``, as the per-user path does (the augmented
    ``(L, b) . (R, 1)`` of the bulk scores differed from it in the last bit)."""
    target = with_draws(offsets_posterior, jax.tree.map(lambda x: x[:, -1:], offsets_posterior.draws), method="map") \
        if point else offsets_posterior
    kw = dict(strategy=strategy, rng_key=jax.random.PRNGKey(4), threshold=3.5,
              uncertainty="laplace" if point else "posterior")
    users = [105, 101, -1, 140, 123, 101]
    assert_same_ranking(recommend(target, users, 5, **kw), recommend(OneAtATime(target), users, 5, **kw))
    assert_same_ranking(recommend(target, None, 3, **kw), recommend(OneAtATime(target), None, 3, **kw))


def test_batch_keeps_the_tie_rule_across_the_shortlist_edge(posterior):
    """25 identical movies far above the rest: the shortlist (k + SHORTLIST_EXTRA) cuts through the
    tie, the guard sends the users to the per-user path, and the ties still come out in index order."""
    draws = posterior.draws
    tied = np.arange(2, 27)
    item_factors, item_offsets = draws.item_factors.copy(), draws.item_offsets.copy()
    item_factors[:, :, tied] = item_factors[:, :, [2]]
    item_offsets[:, :, tied] = item_offsets[:, :, [2]] + 10.0
    post = with_draws(posterior, draws._replace(item_factors=item_factors, item_offsets=item_offsets))
    users = post.user_vocab.ids[:5]
    for strategy in ("mean", "lcb", "ucb", "prob_above"):
        top = recommend(post, users, 3, strategy=strategy, threshold=1.0, exclude_seen=False)
        assert_same_ranking(top, recommend(OneAtATime(post), users, 3, strategy=strategy, threshold=1.0, exclude_seen=False))
        assert top["item"].tolist() == post.item_vocab.ids[tied[:3]].tolist() * 5, strategy


@pytest.mark.parametrize("point", [False, True], ids=["draws", "laplace"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bulk_scores_are_within_the_guard_tolerance(posterior, map_posterior, strategy, point):
    """White box: the float32 bulk scores of the shortlist against the exact scores of the same pairs
    (for a point estimate, with its Laplace spread)."""
    from bayesmf import laplace, ranking

    target = map_posterior if point else posterior
    user_index = np.arange(len(target.user_vocab))
    key = jax.random.PRNGKey(2)
    draw = ranking._thompson_draws(key, user_index, target.num_draws, False)
    lap = ranking._laplace_of(target, user_index, key, user_index, False, strategy) if point else None
    candidate = np.ones(NUM_ITEMS, bool)
    dev = ranking._device_draws(target, user_index)
    values, movies = ranking._shortlists(target, dev, user_index, draw, NUM_ITEMS, strategy, 1.0, 3.5, "epistemic",
                                         candidate, None, lap)
    u, j = np.repeat(user_index, NUM_ITEMS), movies.ravel()
    if strategy == "thompson":
        exact = ranking._thompson_exact(target, np.repeat(draw, NUM_ITEMS), u, j, lap.noise[u] if point else None)
    else:
        extra = laplace.pair_variances(lap.point, lap.rows, u, j) if point else None
        exact = ranking._exact(target, dev, u, j, strategy, 1.0, 3.5, "epistemic", extra)[3]
    err = np.abs(values.ravel() - exact) / np.maximum(1.0, np.abs(exact))
    assert err.max() < ranking.BULK_SCORE_TOL / 10


def test_batch_needs_the_training_ratings_to_exclude_seen(posterior):
    bare = Posterior(posterior.draws, posterior.config, posterior.user_vocab, posterior.item_vocab, posterior.scale,
                     method="gibbs")
    with pytest.raises(ValueError, match="no training ratings"):
        recommend(bare, [101, 102], 3)
    assert len(recommend(bare, [101, 102], 3, exclude_seen=False)) == 6


def test_laplace_spread_without_training_ratings_says_so(map_posterior):
    bare = Posterior(map_posterior.draws, map_posterior.config, map_posterior.user_vocab, map_posterior.item_vocab,
                     map_posterior.scale, method="map")
    for strategy in ("lcb", "thompson"):
        with pytest.raises(ValueError, match="uncertainty='laplace' needs the training ratings"):
            recommend(bare, USER, 3, strategy=strategy, rng_key=jax.random.PRNGKey(0), uncertainty="laplace",
                      exclude_seen=False)


@pytest.mark.parametrize("strategy", ["thompson", "prob_above"])
def test_evaluate_ranking_equals_one_user_at_a_time(posterior, strategy):
    """The batch call keeps the keys of the per-user loop it replaced: user n of the sorted test users
    (skipped ones included) gets fold_in(rng_key, n)."""
    rng = np.random.default_rng(8)
    users = rng.choice(posterior.user_vocab.ids, size=200)
    items = rng.integers(1, NUM_ITEMS + 1, size=200)
    ratings = rng.integers(1, 6, size=200).astype(float)
    key = jax.random.PRNGKey(3)
    out = evaluate_ranking(posterior, users, items, ratings, k=4, strategy=strategy, rng_key=key, threshold=3.5)
    recommended, relevant = [], []
    for n, u in enumerate(np.unique(users)):
        good = items[(users == u) & (ratings >= 4.0)]
        if good.size:
            top = recommend(OneAtATime(posterior), u, 4, strategy=strategy, rng_key=jax.random.fold_in(key, n), threshold=3.5)
            recommended.append(top["item"].to_numpy())
            relevant.append(good)
    assert out["num_users"] == len(recommended) and out["num_users_skipped"] == len(np.unique(users)) - len(recommended)
    for name in ("precision", "recall", "ndcg", "mrr", "hit_rate"):
        want = getattr(metrics, f"{name}_at_k")(recommended, relevant, 4)
        assert out[f"{name}_at_k"] == pytest.approx(want, rel=1e-12), name


def test_topn_benchmark_runs_tiny(tmp_path):
    """benchmarks/topn.py --tiny: every strategy, and the batch equals the per-user path on its sample."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "topn.py"
    spec = importlib.util.spec_from_file_location("topn_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for point in ([], ["--point"]):  # a posterior's draws; a point estimate with its Laplace spread
        out = module.main(["--tiny", "--check-users", "20", "--out", str(tmp_path / "topn.json"), *point])
        assert set(out["seconds"]) == set(STRATEGIES)
        assert all(t["equal_to_per_user_path"] for t in out["timings"].values()), point
        assert (tmp_path / "topn.json").is_file()
