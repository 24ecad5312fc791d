"""Cross-validation of one model and paired comparison of several, on the same folds.

:func:`cross_validate` fits a fresh copy of a model on each fold's training
ratings and scores the held-out ratings with ``Posterior.evaluate``: one row
of metrics per fold, then their ``mean`` and ``sd`` (as Surprise's
``cross_validate`` reports). :func:`compare` does the same for several models
on the *same* folds with the *same* fit key per fold, so that per-fold
differences are paired, and returns one tidy table plus a summary (as
Cornac's ``Experiment``).

What a model needs: ``model.fit(rng_key, train)`` returning a fitted posterior
(:meth:`bayesmf.BayesMF.fit` returns a :class:`bayesmf.Posterior`) with
``evaluate(test, levels=..., expect_cold=...)``. The caller's model is never
fitted: each fold fits a clone (:func:`clone`).

Randomness: ``seed`` (an int) draws the folds (``bayesmf.split.kfold(ratings,
folds, seed)``) and the fit keys, ``jax.random.fold_in(PRNGKey(seed), fold)``
for fold ``0, 1, ...``. The same seed gives the same table, except for
``fit_seconds``.

Examples
--------
>>> import bayesmf
>>> from bayesmf.crossval import compare, cross_validate
>>> ratings = bayesmf.synthetic.movielens_like(0, num_users=60, num_items=40, num_ratings=900,
...                                            min_per_user=5).ratings
>>> model = bayesmf.BayesMF(rank=2, method="map", tune=False, progress_bar=False)
>>> table = cross_validate(model, ratings, folds=3, seed=0)
>>> table.index.tolist()
[0, 1, 2, 'mean', 'sd']
>>> int(table.loc[[0, 1, 2], "num_test"].sum()) == len(ratings)
True
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from bayesmf.metrics import DEFAULT_LEVELS
from bayesmf.split import Split, kfold

__all__ = ["Comparison", "clone", "compare", "cross_validate"]

#: Columns a fold row carries besides the metrics of ``Posterior.evaluate``.
FOLD_COLUMNS = ("fit_seconds", "num_train", "num_test", "num_cold_rows")
#: Rows :func:`cross_validate` appends to the fold rows.
SUMMARY_ROWS = ("mean", "sd")


class Comparison(NamedTuple):
    """What :func:`compare` returns: every fold of every model, and a summary.

    Attributes
    ----------
    folds : pandas.DataFrame
        Tidy: one row per (model, fold), columns ``model``, ``fold``, the
        metrics of ``Posterior.evaluate`` (``rmse``, ``mae``, ``nll``,
        ``crps``, ``coverage_<100p>``, ``width_<100p>``), ``fit_seconds``,
        ``num_train``, ``num_test``, ``num_cold_rows``.
    summary : pandas.DataFrame
        Indexed by ``(model, metric)`` (models in the order given); columns
        ``mean`` and ``sd`` over folds, ``diff``, the mean over folds of the
        model's score minus the first model's on the same fold, and
        ``diff_sd``, the sd of those paired differences (both 0 for the first
        model). ``summary["mean"].unstack()`` is the model x metric table.
    """

    folds: object
    summary: object

    def format(self, metrics: Sequence[str] = ("rmse", "mae", "nll", "crps"), digits: int = 3):
        """The summary as text, model x metric: ``mean ± sd``, then ``(diff ± diff_sd)`` against the first model.

        Parameters
        ----------
        metrics : sequence of str
            Columns of the summary's ``metric`` level to show.
        digits : int
            Decimal places.

        Returns
        -------
        pandas.DataFrame of str, shape (num_models, len(metrics))
        """
        import pandas as pd

        known = self.summary.index.get_level_values("metric").unique().tolist()
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; the summary has {known}")
        models = self.summary.index.get_level_values("model").unique()
        base = models[0]
        cells = {}
        for model in models:
            row = {}
            for metric in metrics:
                s = self.summary.loc[(model, metric)]
                text = f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"
                if model != base:
                    text += f" ({s['diff']:+.{digits}f} ± {s['diff_sd']:.{digits}f})"
                row[metric] = text
            cells[model] = row
        return pd.DataFrame.from_dict(cells, orient="index").rename_axis("model")


def clone(model):
    """An unfitted copy of ``model`` with the same settings.

    ``type(model)(**model.get_params())`` when the model has scikit-learn's
    ``get_params``, otherwise ``copy.deepcopy(model)`` with any fitted
    attribute (``posterior_``) dropped.

    Parameters
    ----------
    model : object with ``fit``

    Returns
    -------
    object of the same type
    """
    get_params = getattr(model, "get_params", None)
    if callable(get_params):
        return type(model)(**get_params())
    fresh = copy.deepcopy(model)
    if hasattr(fresh, "posterior_"):
        del fresh.posterior_
    return fresh


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int (it draws the folds and the fit keys), got {type(seed).__name__}")
    return int(seed)


def _check_model(model, name: str = "model"):
    if not callable(getattr(model, "fit", None)):
        raise TypeError(f"{name} has no fit method: expected an estimator such as bayesmf.BayesMF, got {type(model).__name__}")
    return model


def _splits(ratings, folds, seed: int, split) -> list[Split]:
    """The folds: k-fold of ``ratings``, or the given sequence of splits."""
    if isinstance(split, str):
        if split != "kfold":
            raise ValueError(f"unknown split {split!r}: pass 'kfold' or a sequence of bayesmf.split.Split")
        return kfold(ratings, 5 if folds is None else folds, seed)
    if ratings is not None:
        raise ValueError("pass either ratings (split into k folds) or a sequence of splits, not both")
    if folds is not None:
        raise ValueError("folds counts k-fold folds; with a sequence of splits leave it out (their number is len(split))")
    splits = list(split)
    if not splits or not all(isinstance(s, Split) for s in splits):
        raise TypeError("split must be 'kfold' or a non-empty sequence of bayesmf.split.Split")
    return splits


def _fold_keys(seed: int, num_folds: int) -> list:
    import jax

    key = jax.random.PRNGKey(seed)
    return [jax.random.fold_in(key, fold) for fold in range(num_folds)]


def _score_folds(model, splits: list[Split], keys: list, levels) -> list[dict]:
    """Fit a clone of ``model`` on each split's training ratings and score its test ratings: one dict per fold."""
    rows = []
    for fold, (s, key) in enumerate(zip(splits, keys)):
        fresh = clone(model)
        start = time.perf_counter()
        posterior = fresh.fit(key, s.train)
        fit_seconds = time.perf_counter() - start
        # Folds drawn from one Ratings share its id types, so cold rows here are real (a user or movie whose
        # ratings all fell in the test fold): expected, counted in num_cold_rows rather than warned about.
        table = posterior.evaluate(s.test, levels=levels, expect_cold=True)
        scores = table.loc[("all", "all")].drop("count")
        rows.append(
            dict(fold=fold, **scores.to_dict(), fit_seconds=fit_seconds, num_train=len(s.train), num_test=len(s.test),
                 num_cold_rows=s.num_cold_rows)
        )
    return rows


def _add_mean_sd(table):
    """Append the ``mean`` and ``sd`` (ddof=1) rows over the fold rows."""
    import pandas as pd

    summary = pd.DataFrame([table.mean(), table.std(ddof=1)], index=list(SUMMARY_ROWS))
    out = pd.concat([table.astype(np.float64), summary])
    out.index.name = "fold"
    return out


def cross_validate(model, ratings, *, folds: int | None = None, seed: int = 0, levels=DEFAULT_LEVELS,
                   split="kfold"):
    """Fit and score a model on k folds: metrics per fold, their mean and sd.

    Each fold fits :func:`clone` ``(model)`` (the caller's model stays
    unfitted) with the key ``jax.random.fold_in(jax.random.PRNGKey(seed),
    fold)`` on the fold's training ratings, and scores its test ratings with
    ``posterior.evaluate(test, levels=levels, expect_cold=True)``. k-fold
    test sets can hold a user or movie none of whose ratings is in the
    training set: those rows get the cold-start prior, are scored, and are
    counted in ``num_cold_rows``.

    Parameters
    ----------
    model : bayesmf.BayesMF, or any object whose ``fit(rng_key, train)`` returns a posterior with ``evaluate``
    ratings : bayesmf.data.Ratings, or None with a sequence of splits
    folds : int >= 2, optional
        Number of k-fold folds (default 5).
    seed : int
        Draws the folds (:func:`bayesmf.split.kfold`) and the fit keys.
    levels : tuple of float
        Central-interval probabilities whose coverage and width are reported.
    split : "kfold" or sequence of bayesmf.split.Split
        ``"kfold"``: :func:`bayesmf.split.kfold` ``(ratings, folds, seed)``.
        A sequence: these splits as the folds (e.g. ml-100k's ``u1`` ..
        ``u5``, or repeated random or temporal splits), with ``ratings=None``.

    Returns
    -------
    pandas.DataFrame, shape (num_folds + 2, num_columns)
        Indexed by ``fold``: ``0 .. num_folds - 1``, then ``"mean"`` and
        ``"sd"`` (the sample standard deviation over folds, ddof=1; Surprise
        prints ddof=0). Columns: the metrics of ``Posterior.evaluate``
        (``rmse``, ``mae``, ``nll``, ``crps``, ``coverage_<100p>``,
        ``width_<100p>``) of the fold's test set, ``fit_seconds`` (wall time
        of ``fit``; the first fold includes JAX's compilation), ``num_train``,
        ``num_test``, ``num_cold_rows``. ``attrs`` holds ``seed`` and the
        split names.

    Examples
    --------
    >>> import bayesmf
    >>> from bayesmf import split
    >>> ratings = bayesmf.synthetic.movielens_like(0, num_users=60, num_items=40, num_ratings=900,
    ...                                            min_per_user=5).ratings
    >>> model = bayesmf.BayesMF(rank=2, method="map", tune=False, progress_bar=False)
    >>> table = cross_validate(model, ratings, folds=3, seed=0)
    >>> bool(table.loc["mean", "rmse"] == table.loc[[0, 1, 2], "rmse"].mean())
    True
    >>> hasattr(model, "posterior_")  # each fold fitted a clone
    False

    Explicit folds, e.g. two random holdouts of a third of the ratings:

    >>> holdouts = [split.random_holdout(ratings, 1 / 3, seed=s) for s in (1, 2)]
    >>> cross_validate(model, None, split=holdouts).attrs["splits"]
    ['random', 'random']
    """
    import pandas as pd

    _check_model(model)
    seed = _check_seed(seed)
    splits = _splits(ratings, folds, seed, split)
    rows = _score_folds(model, splits, _fold_keys(seed, len(splits)), levels)
    table = _add_mean_sd(pd.DataFrame(rows).set_index("fold"))
    table.attrs.update(seed=seed, splits=[s.name for s in splits])
    return table


def compare(models: Mapping, ratings, *, folds: int | None = None, seed: int = 0, levels=DEFAULT_LEVELS,
            split="kfold") -> Comparison:
    """Cross-validate several models on the same folds: one tidy table and a paired summary.

    Every model is fitted (as a clone) on the same folds with the same key
    per fold as in :func:`cross_validate`, so each model's fold rows are
    exactly what :func:`cross_validate` gives it, and differences between two
    models on one fold are paired: the fold-to-fold variation they share
    cancels, and ``diff_sd`` is usually far below either model's ``sd``.

    Parameters
    ----------
    models : mapping of str to model
        Names (the ``model`` column) to models, in order; the first is the
        baseline of the paired differences.
    ratings, folds, seed, levels, split
        As in :func:`cross_validate`.

    Returns
    -------
    Comparison
        ``folds`` (tidy, one row per model and fold) and ``summary`` (indexed
        by model and metric: ``mean``, ``sd``, ``diff``, ``diff_sd``); see
        :class:`Comparison`. The sd of a difference over k folds is a spread,
        not a standard error: the folds' training sets overlap, so the folds
        are not independent.

    Examples
    --------
    >>> import bayesmf
    >>> ratings = bayesmf.synthetic.movielens_like(0, num_users=60, num_items=40, num_ratings=900,
    ...                                            min_per_user=5).ratings
    >>> strong = bayesmf.FixedPriors(user_precision=50.0, item_precision=50.0, mean_precision=2.0)
    >>> result = compare({
    ...     "map": bayesmf.BayesMF(rank=2, method="map", tune=False, progress_bar=False),
    ...     "map-strong": bayesmf.BayesMF(rank=2, method="map", tune=False, fixed=strong, progress_bar=False),
    ... }, ratings, folds=3, seed=0)
    >>> result.folds[["model", "fold"]].values.tolist()
    [['map', 0], ['map', 1], ['map', 2], ['map-strong', 0], ['map-strong', 1], ['map-strong', 2]]
    >>> result.summary.columns.tolist()
    ['mean', 'sd', 'diff', 'diff_sd']
    >>> result.format(["rmse", "crps"]).shape
    (2, 2)
    """
    import pandas as pd

    if not isinstance(models, Mapping) or not models:
        raise TypeError("models must be a non-empty mapping of names to models, e.g. {'gibbs': BayesMF(...)}")
    for name, model in models.items():
        if not isinstance(name, str):
            raise TypeError(f"model names must be strings, got {name!r}")
        _check_model(model, f"model {name!r}")
    seed = _check_seed(seed)
    splits = _splits(ratings, folds, seed, split)
    keys = _fold_keys(seed, len(splits))
    frames = [pd.DataFrame(_score_folds(model, splits, keys, levels)).assign(model=name) for name, model in models.items()]
    tidy = pd.concat(frames, ignore_index=True)
    tidy = tidy[["model", *[c for c in tidy.columns if c != "model"]]]
    tidy.attrs.update(seed=seed, splits=[s.name for s in splits])
    return Comparison(tidy, _summary(tidy, list(models)))


def _summary(tidy, names: list[str]):
    """Mean and sd over folds per model and metric, and the paired difference against the first model."""
    import pandas as pd

    metrics = [c for c in tidy.columns if c not in ("model", "fold", "num_train", "num_test", "num_cold_rows")]
    wide = {name: tidy[tidy["model"] == name].set_index("fold")[metrics] for name in names}
    base = wide[names[0]]
    parts = []
    for name in names:
        diff = wide[name] - base
        parts.append(pd.DataFrame({
            "mean": wide[name].mean(), "sd": wide[name].std(ddof=1), "diff": diff.mean(), "diff_sd": diff.std(ddof=1),
        }).rename_axis("metric"))
    return pd.concat(parts, keys=names, names=["model", "metric"])  # one fold: sd and diff_sd are NaN
