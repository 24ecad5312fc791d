"""Features through the user-facing API: BayesMF.fit(user_features=, item_features=), implicit=True,
predictions and fold-ins of new users and movies with features, files, and bad input."""

import numpy as np
import pandas as pd
import pytest

from bayesmf import BayesMF, fold_in_users, load, save
from bayesmf.featurerows import implicit_mean


@pytest.fixture(scope="module")
def frames(synthetic_ratings):
    train = synthetic_ratings.train
    rng = np.random.default_rng(0)
    users = pd.DataFrame({"job": rng.choice(["a", "b", "c"], len(train.user_vocab)),
                          "age": rng.normal(30, 8, len(train.user_vocab))}, index=np.asarray(train.user_vocab.ids))
    items = pd.DataFrame({"genre": rng.choice(["x", "y"], len(train.item_vocab))}, index=np.asarray(train.item_vocab.ids))
    return users, items


@pytest.fixture(scope="module")
def fitted(synthetic_ratings, frames):
    users, items = frames
    model = BayesMF(rank=2, num_samples=40, num_warmup=40, implicit=True, progress_bar=False)
    return model.fit(0, synthetic_ratings.train, user_features=users, item_features=items)


def test_fit_keeps_encoders_and_link_draws(fitted):
    spec = fitted.config.user_features
    assert spec.num_side == 4 and spec.implicit  # job: 3 centred one-hot columns, age: 1
    assert fitted.config.item_features.num_side == 2
    assert set(fitted.features) == {"user", "item"}
    num_items = len(fitted.item_vocab)
    assert fitted.draws.user_link.shape == (1, 40, 4 + num_items, 2)
    assert fitted.draws.user_link_precision.shape == (1, 40, 2)
    assert np.all(np.isfinite(fitted.draws.item_link))


def test_new_user_prior_mean_comes_from_features(fitted, frames):
    """A new user's predictive mean under each draw is m_v + (mu_L + B_side^T x) . R_v, x encoded
    by the training encoder (implicit part zero: no ratings); without features it is m_v + mu_L . R_v."""
    users, _ = frames
    new = users.iloc[:1].copy()
    new.index = [9001]
    item = np.asarray(fitted.item_vocab.ids)[3]
    comps = fitted.components(np.array([-1]), np.array([3]), user_x=fitted.feature_rows("user", [9001], new))
    flat = fitted.flat_draws()
    x = fitted.feature_rows("user", [9001], new)[0]
    assert np.all(x[4:] == 0) and np.any(x[:4] != 0)
    mu = flat.user_mean + np.einsum("f,sfd->sd", x, flat.user_link)
    expected = flat.item_offsets[:, 3] + np.sum(mu * flat.item_factors[:, 3], axis=1)
    np.testing.assert_allclose(comps.mean[:, 0], expected, rtol=1e-5, atol=1e-5)
    with_features = fitted.predict([9001], [item], user_features=new)
    plain = fitted.predict([9001], [item])
    np.testing.assert_allclose(with_features.mean, expected.mean(), rtol=1e-5)
    assert not np.allclose(with_features.mean, plain.mean)


def test_fold_in_with_features(fitted, frames):
    """With no ratings a folded-in user is exactly the feature prior of predict; with ratings,
    each draw's conditional mean is the closed form with prior mean mu_L + B^T x, where x has the
    side features and |I|^-1/2 at the given movies less the training users' mean implicit row."""
    users, _ = frames
    new = users.iloc[:2].copy()
    new.index = [9002, 9003]
    items = np.asarray(fitted.item_vocab.ids)
    fold = fold_in_users(fitted, [([], []), (items[:3], [4.0, 2.0, 5.0])], user_ids=[9002, 9003], user_features=new)
    np.testing.assert_array_equal(fold.predict([9002], [items[5]]).mean,
                                  fitted.predict([9002], [items[5]], user_features=new).mean)
    flat = fitted.flat_draws()
    x = fitted.feature_rows("user", [9003], new)[0]
    train = fitted.train  # implicit columns: centred on the training users' mean row
    x[4:] = -implicit_mean(train.user_index, train.item_index, train.num_users, train.num_items)
    x[4 + np.arange(3)] += 1.0 / np.sqrt(3.0)
    comps = fold.components(np.array([1]), np.array([5]))
    for s in (0, 21, 39):
        r = flat.item_factors[s][:3].astype(np.float64)
        prior = flat.user_precision[s].astype(np.float64)
        mu = flat.user_mean[s] + x @ flat.user_link[s]
        alpha = float(flat.noise_precision[s])
        y = np.array([4.0, 2.0, 5.0]) - flat.item_offsets[s][:3]
        row = np.linalg.solve(prior + alpha * r.T @ r, prior @ mu + alpha * r.T @ y)
        np.testing.assert_allclose(comps.mean[s, 0], row @ flat.item_factors[s][5] + flat.item_offsets[s][5],
                                   rtol=2e-4, atol=2e-4)


def test_fold_in_with_features_in_several_blocks(fitted, frames, monkeypatch):
    """Rows folded in over several blocks (FOLD_BLOCK_CELLS forced small) get each its own prior
    mean: the same predictions as folding each row in alone."""
    from bayesmf import coldstart

    users, _ = frames
    new = users.iloc[:5].copy()
    new.index = [9101, 9102, 9103, 9104, 9105]
    items = np.asarray(fitted.item_vocab.ids)
    rows = [(items[j : j + 2], [4.0, 2.0]) for j in range(5)]
    alone = [fold_in_users(fitted, [row], user_ids=[u], user_features=new).predict([u], items[10:12]).mean
             for row, u in zip(rows, new.index)]
    monkeypatch.setattr(coldstart, "FOLD_BLOCK_CELLS", 1)
    together = fold_in_users(fitted, rows, user_ids=list(new.index), user_features=new)
    for u, expected in zip(new.index, alone):
        np.testing.assert_allclose(together.predict([u, u], items[10:12]).mean, expected, rtol=1e-5, atol=1e-5)


def test_saved_with_encoders(fitted, frames, tmp_path):
    users, _ = frames
    save(fitted, tmp_path / "m.nc")
    back = load(tmp_path / "m.nc")
    assert back.config == fitted.config
    np.testing.assert_array_equal(back.draws.user_link, fitted.draws.user_link)
    new = users.iloc[:1].copy()
    new.index = [9001]
    item = np.asarray(fitted.item_vocab.ids)[:1]
    np.testing.assert_array_equal(back.predict([9001], item, user_features=new).mean,
                                  fitted.predict([9001], item, user_features=new).mean)


def test_bad_feature_input(synthetic_ratings, frames, fitted):
    users, items = frames
    train = synthetic_ratings.train
    quick = dict(rank=2, num_samples=2, num_warmup=1, progress_bar=False)
    with pytest.raises(KeyError, match="no feature row"):
        BayesMF(**quick).fit(0, train, user_features=users.iloc[1:])
    with pytest.raises(ValueError, match="no link-matrix block"):
        BayesMF(rank=2, method="als", progress_bar=False).fit(0, train, user_features=users)
    plain = BayesMF(**quick).fit(0, train)
    with pytest.raises(ValueError, match="no user features"):
        plain.predict([9001], np.asarray(train.item_vocab.ids)[:1], user_features=users.iloc[:1])
    with pytest.raises(ValueError, match="no user features"):
        fold_in_users(plain, [([], [])], user_features=users.iloc[:1])
    unseen = users.iloc[:1].copy()
    unseen.index = [9001]
    unseen["job"] = "never seen"
    with pytest.raises(ValueError, match="never seen"):
        fitted.predict([9001], np.asarray(train.item_vocab.ids)[:1], user_features=unseen)


def test_new_user_prior_carries_the_spread_of_unknown_features(fitted, synthetic_ratings, frames):
    """A new user's prior covariance is Lambda^-1 + B_e^T Sigma_e B_e (implicit columns unknown: no ratings),
    plus B_s^T Sigma_s B_s when no side features are given; Sigma over the training rows, each draw's B.
    Checked draw by draw against the dense training feature rows."""
    from bayesmf.featurerows import implicit_features

    train = synthetic_ratings.train
    users, _ = frames
    flat = fitted.flat_draws()
    spec = fitted.config.user_features
    k = spec.num_side
    implicit = implicit_features(train.user_index, train.item_index, train.num_users, train.num_items)
    implicit = implicit - implicit.mean(axis=0)
    sigma_e = implicit.T @ implicit / len(implicit)
    side = _encoded(fitted, users, train)
    sigma_s = side.T @ side / len(side)
    v = 3
    new = users.iloc[:1].copy()
    new.index = [9001]
    for frame, blocks in ((new, ("implicit",)), (None, ("implicit", "side"))):
        x = None if frame is None else fitted.feature_rows("user", [9001], frame)
        comps = fitted.components(np.array([-1]), np.array([v]), user_x=x)
        for s in (0, 7, 39):
            b = np.asarray(flat.user_link[s], np.float64)
            cov = np.linalg.inv(np.asarray(flat.user_precision[s], np.float64)) + b[k:].T @ sigma_e @ b[k:]
            if "side" in blocks:
                cov = cov + b[:k].T @ sigma_s @ b[:k]
            r = np.asarray(flat.item_factors[s, v], np.float64)
            noise = 1.0 / float(flat.noise_precision[s])
            expected = r @ cov @ r + noise
            np.testing.assert_allclose(comps.sd[s, 0] ** 2, expected, rtol=2e-4)
            plain = r @ np.linalg.inv(np.asarray(flat.user_precision[s], np.float64)) @ r + noise
            assert expected > plain * 1.001  # the spread is not negligible here


def _encoded(posterior, frame, train):
    from bayesmf.data import encode_features

    return encode_features(posterior.features["user"], frame, np.asarray(train.user_vocab.ids)).astype(np.float64)
