"""Cross-validation and comparison: folds, mean/sd rows, seeds, clones, paired differences.

Most tests use a stand-in model (a Gaussian at the training mean, nudged by its
fit key) that fits in microseconds, so the bookkeeping is checked exactly;
the rest run :class:`bayesmf.BayesMF` (MAP, rank 2, no tuning) on 900
synthetic ratings.
"""

from __future__ import annotations

import doctest

import jax
import numpy as np
import pandas as pd
import pytest

import bayesmf
from bayesmf import crossval, metrics, split
from bayesmf.crossval import compare, cross_validate

METRICS = ["rmse", "mae", "nll", "crps", "coverage_50", "width_50", "coverage_80", "width_80", "coverage_90",
           "width_90", "coverage_95", "width_95"]
FOLD_COLUMNS = [*METRICS, "fit_seconds", "num_train", "num_test", "num_cold_rows"]


@pytest.fixture(scope="module")
def ratings():
    return bayesmf.synthetic.movielens_like(0, num_users=60, num_items=40, num_ratings=900, min_per_user=5).ratings


class MeanPosterior:
    """Predicts every rating as Normal(center, sd): evaluate's table, shaped as Posterior.evaluate's."""

    def __init__(self, center: float, sd: float):
        self.center, self.sd = center, sd

    def evaluate(self, test, *, levels=metrics.DEFAULT_LEVELS, by=None, expect_cold=False):
        assert expect_cold  # cross-validation expects cold rows and counts them
        rows = metrics.score_rows(test.rating, np.full(len(test), self.center), self.sd, levels=levels)
        return pd.concat({"all": metrics.summarize(rows)}, names=["by", "group"])


class MeanModel:
    """A stand-in estimator: the training mean plus ``shift`` plus a nudge drawn from the fit key.

    ``log`` (shared by clones, as get_params hands it on) records each fit:
    (the model object's id, shift, the key's data, the training ratings).
    """

    def __init__(self, shift: float = 0.0, log: list | None = None):
        self.shift = shift
        self.log = [] if log is None else log

    def get_params(self):
        return {"shift": self.shift, "log": self.log}

    def fit(self, rng_key, ratings):
        self.log.append((id(self), self.shift, np.asarray(jax.random.key_data(rng_key)).tolist(), ratings))
        nudge = 0.01 * float(jax.random.normal(rng_key))
        self.posterior_ = MeanPosterior(float(np.mean(ratings.rating)) + self.shift + nudge, float(np.std(ratings.rating)))
        return self.posterior_


class DeepcopyModel(MeanModel):
    """The same without get_params: clone falls back to deepcopy (the log is then per clone)."""

    get_params = None


def fold_rows(table):
    return table.drop(index=list(crossval.SUMMARY_ROWS))


def without_time(frame):
    return frame.drop(columns="fit_seconds")


def key_data(key):
    return np.asarray(jax.random.key_data(key)).tolist()


# --- cross_validate ------------------------------------------------------------------------------------


def test_cross_validate_table_shape_and_mean_sd_rows(ratings):
    table = cross_validate(MeanModel(), ratings, folds=4, seed=3)
    assert table.index.tolist() == [0, 1, 2, 3, "mean", "sd"] and table.index.name == "fold"
    assert table.columns.tolist() == FOLD_COLUMNS
    folds = fold_rows(table)
    pd.testing.assert_series_equal(table.loc["mean"], folds.mean(), check_names=False)
    pd.testing.assert_series_equal(table.loc["sd"], folds.std(ddof=1), check_names=False)
    # The sd is the sample sd over folds, computed by hand.
    rmse = folds["rmse"].to_numpy(np.float64)
    assert table.loc["sd", "rmse"] == pytest.approx(np.sqrt(np.sum((rmse - rmse.mean()) ** 2) / 3), rel=1e-12)
    assert table.attrs == {"seed": 3, "splits": [f"kfold-{i}-of-4" for i in range(4)]}


def test_cross_validate_folds_partition_the_ratings(ratings):
    model = MeanModel()
    table = cross_validate(model, ratings, folds=4, seed=3)
    folds = fold_rows(table)
    assert int(folds["num_test"].sum()) == len(ratings)
    assert (folds["num_train"] + folds["num_test"] == len(ratings)).all()
    # Each fold trained on exactly the complement of kfold's test set for that seed.
    expected = split.kfold(ratings, 4, seed=3)
    trained = [entry[3] for entry in model.log]
    assert len(trained) == 4
    for train, s in zip(trained, expected):
        assert train == s.train
    assert folds["num_cold_rows"].tolist() == [s.num_cold_rows for s in expected]


def test_cross_validate_rows_are_the_folds_scores(ratings):
    table = cross_validate(MeanModel(), ratings, folds=3, seed=1, levels=(0.5, 0.9))
    assert [c for c in table.columns if c.startswith("coverage")] == ["coverage_50", "coverage_90"]
    for fold, s in enumerate(split.kfold(ratings, 3, seed=1)):
        key = jax.random.fold_in(jax.random.PRNGKey(1), fold)
        direct = MeanModel().fit(key, s.train).evaluate(s.test, levels=(0.5, 0.9), expect_cold=True)
        expected = direct.loc[("all", "all")].drop("count")
        pd.testing.assert_series_equal(table.loc[fold, expected.index], expected, check_names=False)


def test_cross_validate_fit_keys_and_clones(ratings):
    model = MeanModel()
    cross_validate(model, ratings, folds=3, seed=7)
    keys = [entry[2] for entry in model.log]
    assert keys == [key_data(jax.random.fold_in(jax.random.PRNGKey(7), f)) for f in range(3)]
    # A fresh clone per fold; the caller's model is never fitted.
    assert len({entry[0] for entry in model.log}) == 3 and id(model) not in {entry[0] for entry in model.log}
    assert not hasattr(model, "posterior_")


def test_cross_validate_deepcopy_clone(ratings):
    model = DeepcopyModel(shift=0.5)
    model.posterior_ = "fitted earlier"
    table = cross_validate(model, ratings, folds=2, seed=0)
    assert model.posterior_ == "fitted earlier" and model.log == []  # deep copies logged into their own lists
    fresh = crossval.clone(model)
    assert not hasattr(fresh, "posterior_") and fresh.shift == 0.5 and fresh is not model
    # The shift reached the clones: scores differ from the unshifted model's.
    assert table.loc["mean", "mae"] != cross_validate(DeepcopyModel(), ratings, folds=2, seed=0).loc["mean", "mae"]


def test_cross_validate_same_seed_same_table(ratings):
    a = cross_validate(MeanModel(), ratings, folds=3, seed=11)
    b = cross_validate(MeanModel(), ratings, folds=3, seed=11)
    pd.testing.assert_frame_equal(without_time(a), without_time(b))
    c = cross_validate(MeanModel(), ratings, folds=3, seed=12)
    assert not np.allclose(fold_rows(a)["rmse"], fold_rows(c)["rmse"])


def test_cross_validate_explicit_splits(ratings):
    timed = bayesmf.Ratings.from_arrays(ratings.user_ids, ratings.item_ids, ratings.rating, np.arange(len(ratings)))
    splits = [split.temporal(timed, 0.2), split.temporal(timed, 0.2, by="user"), split.random_holdout(timed, 0.1, 4)]
    table = cross_validate(MeanModel(), None, split=splits)
    assert table.index.tolist() == [0, 1, 2, "mean", "sd"]
    assert fold_rows(table)["num_test"].tolist() == [s.test.nnz for s in splits]
    assert table.attrs["splits"] == ["temporal", "temporal-user", "random"]
    one = cross_validate(MeanModel(), None, split=splits[:1])
    assert np.isnan(one.loc["sd", "rmse"])  # one fold: no spread


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda r: cross_validate(MeanModel(), r, folds=1), ValueError, "k must be >= 2, got 1"),
        (lambda r: cross_validate(MeanModel(), r, seed=1.5), TypeError, "seed must be an int"),
        (lambda r: cross_validate(MeanModel(), r, seed=jax.random.PRNGKey(0)), TypeError, "seed must be an int"),
        (lambda r: cross_validate(MeanModel(), r, split="random"), ValueError, "unknown split 'random'"),
        (lambda r: cross_validate(MeanModel(), list(r.rating)), TypeError, "expected bayesmf.data.Ratings or a pandas DataFrame"),
        (lambda r: cross_validate(MeanModel(), None), TypeError, "expected bayesmf.data.Ratings or a pandas DataFrame, got NoneType"),
        (
            lambda r: cross_validate(MeanModel(), r, split=split.kfold(r, 2, 0)),
            ValueError,
            "pass either ratings .* or a sequence of splits, not both",
        ),
        (lambda r: cross_validate(MeanModel(), None, folds=2, split=split.kfold(r, 2, 0)), ValueError, "leave it out"),
        (lambda r: cross_validate(MeanModel(), None, split=[]), TypeError, "non-empty sequence"),
        (lambda r: cross_validate(MeanModel(), None, split=[r]), TypeError, "non-empty sequence"),
        (lambda r: cross_validate(object(), r), TypeError, "model has no fit method"),
        (lambda r: compare({}, r), TypeError, "non-empty mapping"),
        (lambda r: compare([MeanModel()], r), TypeError, "non-empty mapping"),
        (lambda r: compare({1: MeanModel()}, r), TypeError, "model names must be strings, got 1"),
        (lambda r: compare({"a": MeanModel(), "b": "x"}, r), TypeError, "model 'b' has no fit method"),
    ],
)
def test_bad_input(ratings, call, error, match):
    with pytest.raises(error, match=match):
        call(ratings)


# --- compare -------------------------------------------------------------------------------------------


def test_compare_paired_folds_and_summary(ratings):
    log = []
    models = {"base": MeanModel(0.0, log), "high": MeanModel(0.4, log), "low": MeanModel(-0.2, log)}
    result = compare(models, ratings, folds=4, seed=5)
    tidy = result.folds
    assert tidy.columns.tolist() == ["model", "fold", *FOLD_COLUMNS]
    assert tidy[["model", "fold"]].values.tolist() == [[m, f] for m in models for f in range(4)]
    assert tidy.attrs["splits"] == [f"kfold-{i}-of-4" for i in range(4)]
    # Paired: every model trained on the same folds with the same key per fold.
    by_fold = {}
    for _, shift, key, train in log:
        by_fold.setdefault(shift, []).append((key, train))
    assert len(by_fold) == 3
    for shift in (0.4, -0.2):
        for (key, train), (base_key, base_train) in zip(by_fold[shift], by_fold[0.0]):
            assert key == base_key and train == base_train
    # Each model's rows are exactly its cross_validate rows.
    for name, model in models.items():
        alone = fold_rows(cross_validate(MeanModel(model.shift), ratings, folds=4, seed=5))
        mine = tidy[tidy.model == name].set_index("fold").drop(columns="model").astype(np.float64)
        pd.testing.assert_frame_equal(without_time(mine), without_time(alone), check_index_type=False)
    # The summary: mean and sd over folds, paired differences against the first model, by hand.
    summary = result.summary
    assert summary.index.names == ["model", "metric"] and summary.columns.tolist() == ["mean", "sd", "diff", "diff_sd"]
    assert summary.index.get_level_values("model").unique().tolist() == ["base", "high", "low"]
    assert summary.loc["base"].index.tolist() == [*METRICS, "fit_seconds"]
    base = tidy[tidy.model == "base"].set_index("fold")
    for name in models:
        rows = tidy[tidy.model == name].set_index("fold")
        for metric in METRICS:
            diff = rows[metric].to_numpy() - base[metric].to_numpy()
            got = summary.loc[(name, metric)]
            assert got["mean"] == pytest.approx(rows[metric].mean(), rel=1e-12)
            assert got["sd"] == pytest.approx(rows[metric].std(ddof=1), rel=1e-12)
            assert got["diff"] == pytest.approx(np.mean(diff), rel=1e-12, abs=1e-15)
            assert got["diff_sd"] == pytest.approx(np.std(diff, ddof=1), rel=1e-12, abs=1e-15)
    assert (summary.loc["base", ["diff", "diff_sd"]] == 0).all().all()
    # Shifting the prediction by 0.4 moves the MAE on every fold: its paired difference is nonzero and larger
    # than its spread would allow by chance, while each model's own sd carries the fold-to-fold variation.
    high = summary.loc[("high", "mae")]
    assert high["diff"] != 0 and abs(high["diff"]) > high["diff_sd"]


def test_compare_format(ratings):
    result = compare({"base": MeanModel(), "high": MeanModel(0.4)}, ratings, folds=3, seed=0)
    text = result.format(["rmse", "mae"], digits=2)
    assert text.index.tolist() == ["base", "high"] and text.columns.tolist() == ["rmse", "mae"]
    s = result.summary.loc[("high", "mae")]
    assert text.loc["high", "mae"] == f"{s['mean']:.2f} ± {s['sd']:.2f} ({s['diff']:+.2f} ± {s['diff_sd']:.2f})"
    assert text.loc["base", "rmse"].count("±") == 1
    with pytest.raises(ValueError, match=r"unknown metrics \['recall'\]"):
        result.format(["recall"])


# --- BayesMF -----------------------------------------------------------------------------------------


def map_model(**kw):
    return bayesmf.BayesMF(rank=2, method="map", tune=False, progress_bar=False, **kw)


def test_bayesmf_cross_validate(ratings):
    model = map_model()
    table = cross_validate(model, ratings, folds=3, seed=0)
    assert not hasattr(model, "posterior_")
    folds = fold_rows(table)
    pd.testing.assert_series_equal(table.loc["mean"], folds.mean(), check_names=False)
    pd.testing.assert_series_equal(table.loc["sd"], folds.std(ddof=1), check_names=False)
    assert np.isfinite(folds[METRICS].to_numpy(np.float64)).all()
    assert (folds["rmse"] > 0.5).all() and (folds["rmse"] < 1.5).all()  # ratings 1..5 with noise sd 0.9
    # Fold 1 is a fit of a fresh model with fold 1's key on fold 1's training set.
    s = split.kfold(ratings, 3, seed=0)[1]
    direct = map_model().fit(jax.random.fold_in(jax.random.PRNGKey(0), 1), s.train).evaluate(s.test, expect_cold=True)
    expected = direct.loc[("all", "all")].drop("count")
    pd.testing.assert_series_equal(table.loc[1, expected.index], expected, check_names=False)
    # Same seed, same table.
    pd.testing.assert_frame_equal(without_time(cross_validate(model, ratings, folds=3, seed=0)), without_time(table))


def test_bayesmf_compare(ratings):
    # Stronger shrinkage; learned factor means like the default's, so the compiled MAP objective is shared
    # (a zero-mean FixedPriors() compiles another and costs ~20 s more on a 2-core machine).
    strong = bayesmf.FixedPriors(user_precision=50.0, item_precision=50.0, mean_precision=2.0)
    models = {"map": map_model(), "strong": map_model(fixed=strong)}
    result = compare(models, ratings, folds=3, seed=0)
    alone = fold_rows(cross_validate(map_model(fixed=strong), ratings, folds=3, seed=0))
    mine = result.folds[result.folds.model == "strong"].set_index("fold").drop(columns="model").astype(np.float64)
    pd.testing.assert_frame_equal(without_time(mine), without_time(alone), check_index_type=False)
    diff = mine["rmse"].to_numpy() - result.folds[result.folds.model == "map"]["rmse"].to_numpy()
    assert np.all(diff != 0)  # the priors reached the clones
    assert result.summary.loc[("strong", "rmse"), "diff"] == pytest.approx(diff.mean(), rel=1e-12, abs=1e-15)


def test_module_doctests():
    assert doctest.testmod(crossval).failed == 0


def test_cross_validate_takes_a_dataframe(ratings):
    """A DataFrame of ratings folds exactly as the Ratings it holds."""
    frame = ratings.to_dataframe().rename(columns={"user": "userId", "item": "movieId"})
    a = cross_validate(MeanModel(), frame, folds=3, seed=1).drop(columns="fit_seconds")
    pd.testing.assert_frame_equal(a, cross_validate(MeanModel(), ratings, folds=3, seed=1).drop(columns="fit_seconds"))
