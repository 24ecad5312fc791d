"""Your data in, answers out: DataFrames wherever ratings or pairs go in, loud id-type mistakes."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pandas as pd
import pytest

import bayesmf
from bayesmf import split, synthetic
from bayesmf.data import IdTypeWarning

FAST = dict(rank=2, method="gibbs", num_samples=20, num_warmup=10, progress_bar=False)


@pytest.fixture(scope="module")
def frames():
    sim = synthetic.movielens_like(0, num_users=60, num_items=40, num_ratings=900, min_per_user=5)
    s = split.random_holdout(sim.ratings, 0.2, 0)
    # MovieLens' CSV names, as a user's pandas.read_csv would give them.
    rename = {"user": "userId", "item": "movieId"}
    return s.train, s.test, s.train.to_dataframe().rename(columns=rename), s.test.to_dataframe().rename(columns=rename)


@pytest.fixture(scope="module")
def posterior(frames):
    train, _, _, _ = frames
    return bayesmf.BayesMF(**FAST).fit(0, train)


def test_fit_on_a_dataframe_equals_fit_on_ratings(frames, posterior):
    _, _, train_df, _ = frames
    again = bayesmf.BayesMF(**FAST).fit(0, train_df)
    for a, b in zip(jax.tree.leaves(again.draws), jax.tree.leaves(posterior.draws)):
        np.testing.assert_array_equal(a, b)


def test_evaluate_predict_and_split_take_dataframes(frames, posterior):
    _, test, _, test_df = frames
    pd.testing.assert_frame_equal(posterior.evaluate(test_df), posterior.evaluate(test))
    a = posterior.predict(test_df)
    b = posterior.predict(test.user_ids, test.item_ids)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert list(a.to_dataframe().columns[:2]) == ["user", "item"]
    s1, s2 = split.random_holdout(test_df, 0.5, 3), split.random_holdout(test, 0.5, 3)
    assert s1.train == s2.train and s1.test == s2.test


def test_explicit_column_names(frames, posterior):
    _, test, _, test_df = frames
    shop = test_df.rename(columns={"userId": "customer", "movieId": "product", "rating": "stars"})
    table = posterior.evaluate(bayesmf.data.as_ratings(shop, columns={"user": "customer", "item": "product", "rating": "stars"}))
    pd.testing.assert_frame_equal(table, posterior.evaluate(test))
    with pytest.raises(ValueError, match="no user column"):
        posterior.evaluate(shop)


def test_fold_in_from_a_dataframe(posterior):
    items = posterior.item_vocab.ids
    frame = pd.DataFrame({"user": ["new-a", "new-a", "new-b"], "item": items[[0, 1, 2]], "rating": [5.0, 1.0, 4.0]})
    fold = bayesmf.fold_in_users(posterior, frame)
    listed = bayesmf.fold_in_users(posterior, [(items[[0, 1]], [5.0, 1.0]), (items[[2]], [4.0])], user_ids=["new-a", "new-b"])
    assert fold.labels.tolist() == ["new-a", "new-b"]
    np.testing.assert_array_equal(fold.predict("new-b", items).mean, listed.predict("new-b", items).mean)


def test_string_ids_are_matched_to_an_integer_model_with_one_warning(frames, posterior):
    """Test ids read as strings once made every row a silent cold start (RMSE 1.01 -> 1.36)."""
    _, test, _, _ = frames
    as_strings = bayesmf.Ratings.from_arrays(test.user_ids.astype(str), test.item_ids.astype(str), test.rating,
                                             scale=test.scale)
    with pytest.warns(IdTypeWarning, match="strings were matched"):
        table = posterior.evaluate(as_strings)
    assert table.attrs["num_cold_rows"] == posterior.evaluate(test).attrs["num_cold_rows"]
    pd.testing.assert_frame_equal(table, posterior.evaluate(test), check_like=True)
    user, item = int(test.user_ids[0]), int(test.item_ids[0])
    with pytest.warns(IdTypeWarning):
        pred = posterior.predict([str(user)], [item])
    assert pred.known_user[0] and pred.mean[0] == posterior.predict([user], [item]).mean[0]
    with pytest.warns(IdTypeWarning):
        top = bayesmf.recommend(posterior, str(user), 5)
    assert top["item"].tolist() == bayesmf.recommend(posterior, user, 5)["item"].tolist()


def test_ids_that_do_not_convert_are_an_error_naming_both_types(posterior):
    with pytest.raises(TypeError, match="strings but this vocabulary's ids are integers"):
        posterior.predict(["u1"], [posterior.item_vocab.ids[0]])
    with pytest.raises(TypeError, match="strings"):
        bayesmf.recommend(posterior, "stranger", 3)


def test_integer_ids_against_a_string_model():
    ratings = bayesmf.Ratings.from_arrays(["1", "2", "2", "3"], ["a", "a", "b", "b"], [4.0, 3.0, 5.0, 2.0])
    vocab = ratings.user_vocab
    with pytest.warns(IdTypeWarning, match="integers were matched"):
        assert vocab.index([2, 3]).tolist() == [1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert vocab.index(["2"]).tolist() == [1]
