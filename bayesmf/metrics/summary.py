"""The scoring pass and its tables: per-row scores, averaged overall or per group.

:func:`score_rows` scores every row once (the cost is in the mixture
quantiles and the pairwise CRPS term); :func:`summarize` averages those rows
into a table, one row per group, so any number of breakdowns (activity
buckets from :func:`activity_bucket`, cold-start status, folds) cost no
second pass. Every score but the sampled pairwise CRPS term is a per-row
quantity, so a group's entry equals :func:`summarize` of :func:`score_rows`
on its rows alone; when the CRPS pair term is estimated
(``S^2 n > max_pairs``) its pair budget is that of all ``n`` rows, which
leaves each row's estimate unbiased.

pandas is imported where a table or a categorical is built, not at import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from bayesmf.arrays import stable_order
from bayesmf.metrics.scores import MAX_PAIRS, crps_per_row, interval, moments, nll_per_row
from bayesmf.metrics.stars import star_cuts, star_masses, star_rows

# Default central-interval probabilities scored by score_rows.
DEFAULT_LEVELS = (0.5, 0.8, 0.9, 0.95)

# Default activity-bucket edges (number of training ratings).
DEFAULT_EDGES = (20, 50, 100, 200)

# The per-row scores every score_rows output carries (besides covered_/width_).
_ROW_KEYS = ("squared_error", "absolute_error", "nll", "crps")


def score_rows(
    y: ArrayLike,
    mu: ArrayLike,
    sd: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    levels: Sequence[float] = DEFAULT_LEVELS,
    max_pairs: int = MAX_PAIRS,
    seed: int | np.random.Generator = 0,
    scale=None,
) -> dict[str, np.ndarray]:
    """Point, probabilistic, interval and (on a star scale) star scores of the predictive, per row.

    Parameters
    ----------
    y : array, shape (n,)
        Observed ratings.
    mu : array, shape (n,) or (S, n)
        Gaussian means, or mixture component means (one row per component);
        see :mod:`bayesmf.metrics.scores` for the convention.
    sd : array, broadcastable to the shape of ``mu``
    weights : array, shape (S,), optional
        Component weights; equal by default.
    levels : sequence of float
        Central-interval probabilities, in (0, 1).
    max_pairs, seed
        As in :func:`bayesmf.metrics.crps_per_row`.
    scale : bayesmf.data.RatingScale, optional
        With a discrete scale (``step`` set) the star scores of
        :func:`bayesmf.metrics.star_rows` are added, from the star masses of
        the predictive (:func:`bayesmf.metrics.star_masses`), with the
        prediction sets at ``levels``; None or a continuous scale adds none.

    Returns
    -------
    dict of str to array, shape (n,)
        ``squared_error`` and ``absolute_error`` of the predictive mean
        (:func:`bayesmf.metrics.moments`), ``nll``, ``crps``, and per level
        ``p`` ``covered_<100p>`` (1.0 inside the central interval, ends
        included, else 0.0) and ``width_<100p>``; then, on a star scale,
        ``star_nll``, ``rps`` and per level ``set_covered_<100p>``,
        ``set_mass_<100p>``, ``set_size_<100p>``.

    Examples
    --------
    >>> rows = score_rows([0.0, 2.0], [0.0, 0.0], 1.0, levels=(0.9,))
    >>> list(rows)
    ['squared_error', 'absolute_error', 'nll', 'crps', 'covered_90', 'width_90']
    >>> rows["covered_90"].tolist()
    [1.0, 0.0]
    """
    p = np.atleast_1d(np.asarray(levels, dtype=np.float64))
    if p.ndim != 1 or p.size == 0 or not np.all((p > 0.0) & (p < 1.0)):  # also rejects NaN
        raise ValueError(f"levels must be in the open interval (0, 1), got {levels}")
    levels = [float(v) for v in p]
    mu, sd = np.asarray(mu, dtype=np.float64), np.asarray(sd, dtype=np.float64)  # convert once, not per score
    mean, _ = moments(mu, sd, weights)
    y = np.asarray(y, dtype=np.float64)
    if y.shape != mean.shape:  # finiteness is checked by nll_per_row
        raise ValueError(f"mismatched shapes: y {y.shape}, mu {np.shape(mu)}")
    error = y - mean
    rows = dict(
        squared_error=error * error,
        absolute_error=np.abs(error),
        nll=nll_per_row(y, mu, sd, weights),
        crps=crps_per_row(y, mu, sd, weights, max_pairs=max_pairs, seed=seed),
    )
    for p in levels:
        lower, upper = interval(mu, sd, p, weights)
        tag = f"{100 * p:g}"
        rows[f"covered_{tag}"] = ((lower <= y) & (y <= upper)).astype(np.float64)
        rows[f"width_{tag}"] = upper - lower
    cuts = star_cuts(scale)
    if cuts is not None:
        rows.update(star_rows(y, star_masses(mu, sd, cuts, weights), cuts, levels))
    return rows


def summarize(rows: dict[str, np.ndarray], groups: ArrayLike | None = None, *, order: Sequence | None = None):
    """Average the per-row scores of :func:`score_rows` overall or within each group.

    Parameters
    ----------
    rows : dict of str to array, shape (n,)
        From :func:`score_rows`.
    groups : array, shape (n,), optional
        A label per row, e.g. from :func:`activity_bucket`; a
        ``pandas.Categorical`` (or categorical Series) reports its
        categories in their order, empty ones included. Without ``groups``
        the table has one row, labelled ``all``.
    order : sequence, optional
        The groups to report, in order (only with ``groups``); a label in
        ``groups`` missing from it raises. By default: the categories of a
        categorical ``groups``, else the labels present as pandas sorts them.
        A listed label with no rows gets ``count`` 0 and NaN scores.

    Returns
    -------
    pandas.DataFrame
        One row per group (index name ``group``); columns ``count``,
        ``rmse`` (root of the mean squared error), ``mae``, ``nll``,
        ``crps``, and per level ``coverage_<100p>`` and ``width_<100p>``
        (means over the group's rows); when ``rows`` has star scores
        (:func:`score_rows` with a star scale) also ``star_nll``, ``rps`` and
        per level ``set_coverage_<100p>``, ``set_mass_<100p>`` (mean
        predicted mass of the prediction set; calibrated when within 0.01 of
        the coverage) and ``set_size_<100p>`` (mean number of stars).

    Examples
    --------
    >>> rows = score_rows([0.0, 1.0, 2.0], [0.0, 1.0, 1.0], 1.0, levels=(0.5,))
    >>> summarize(rows)["count"].tolist()
    [3]
    >>> table = summarize(rows, ["b", "a", "b"])
    >>> table.index.tolist(), table["count"].tolist()
    (['a', 'b'], [1, 2])
    """
    import pandas as pd

    missing = [key for key in _ROW_KEYS if key not in rows]
    if missing:
        raise ValueError(f"rows lacks {missing} (expected the output of score_rows)")
    tags = [key[len("covered_"):] for key in rows if key.startswith("covered_")]
    set_tags = [key[len("set_covered_"):] for key in rows if key.startswith("set_covered_")]
    star_keys = [key for key in ("star_nll", "rps") if key in rows]
    star_keys += [f"set_{kind}_{tag}" for tag in set_tags for kind in ("covered", "mass", "size")]
    n = len(rows["squared_error"])
    if n == 0:
        raise ValueError("rows is empty (no rows to summarize)")
    for key in (*_ROW_KEYS, *(f"{kind}_{tag}" for tag in tags for kind in ("covered", "width")), *star_keys):
        if np.shape(rows[key]) != (n,):
            raise ValueError(f"mismatched shapes: rows[{key!r}] {np.shape(rows[key])}, expected ({n},)")

    if groups is None:
        if order is not None:
            raise ValueError("order needs groups")
        labels, members = ["all"], [np.arange(n)]
    else:
        codes, labels = _group_codes(groups, n, order)
        # A stable sort keeps each group's rows in their original order, so a
        # group's means are those of its rows alone, to the last bit.
        by_group = stable_order(codes, len(labels))
        ends = np.cumsum(np.bincount(codes, minlength=len(labels)))
        members = np.split(by_group, ends[:-1])

    def mean(key, idx):
        return float(np.mean(rows[key][idx])) if idx.size else math.nan

    table = []
    for idx in members:
        entry = dict(
            count=int(idx.size),
            rmse=math.sqrt(mean("squared_error", idx)),
            mae=mean("absolute_error", idx),
            nll=mean("nll", idx),
            crps=mean("crps", idx),
        )
        for tag in tags:
            entry[f"coverage_{tag}"] = mean(f"covered_{tag}", idx)
            entry[f"width_{tag}"] = mean(f"width_{tag}", idx)
        for key in star_keys:
            entry[key.replace("set_covered_", "set_coverage_")] = mean(key, idx)
        table.append(entry)
    out = pd.DataFrame(table, index=pd.Index(labels, name="group"))
    out["count"] = out["count"].astype(np.int64)
    return out


def _group_codes(groups, n: int, order: Sequence | None) -> tuple[np.ndarray, list]:
    """Group number per row, shape (n,), and the group labels in report order."""
    import pandas as pd

    values = groups.array if isinstance(groups, pd.Series) else groups
    if not isinstance(values, pd.Categorical):
        values = np.asarray(values)
    if np.ndim(values) != 1 or len(values) != n:
        raise ValueError(f"mismatched shapes: groups {np.shape(groups)}, rows ({n},)")
    if order is not None:
        labels = list(order)
        index = pd.Index(labels)
        if not index.is_unique:
            raise ValueError(f"order has duplicate labels: {labels}")
        codes = index.get_indexer(np.asarray(values, dtype=object))
        if np.any(codes < 0):
            absent = sorted({str(v) for v in np.asarray(values, dtype=object)[codes < 0]})
            raise ValueError(f"groups has labels not in order: {absent}")
    elif isinstance(values, pd.Categorical):
        labels, codes = list(values.categories), np.asarray(values.codes)
    else:
        codes, uniques = pd.factorize(values, sort=True)
        labels = np.asarray(uniques).tolist()  # Python scalars, not NumPy ones
    if np.any(codes < 0):
        raise ValueError("groups has missing labels (NaN or None)")
    return codes.astype(np.int64), labels


def _edges(edges: Sequence[int]) -> np.ndarray:
    e = np.asarray(edges)
    if e.ndim != 1 or e.size == 0:
        raise ValueError(f"edges must be a non-empty 1-D sequence, got {edges!r}")
    if not np.issubdtype(e.dtype, np.integer):
        if not (np.issubdtype(e.dtype, np.floating) and np.all(np.isfinite(e)) and np.all(e == np.round(e))):
            raise ValueError(f"edges must be integers, got {edges!r}")
        e = e.astype(np.int64)
    if np.any(np.diff(e) <= 0):
        raise ValueError(f"edges must be strictly increasing, got {edges!r}")
    return e


def activity_labels(edges: Sequence[int] = DEFAULT_EDGES) -> list[str]:
    """The bucket labels of :func:`activity_bucket`, in increasing order.

    Parameters
    ----------
    edges : sequence of int, strictly increasing

    Returns
    -------
    list of str, length ``len(edges) + 1``

    Examples
    --------
    >>> activity_labels()
    ['<=20', '21-50', '51-100', '101-200', '>200']
    >>> activity_labels((1, 2))
    ['<=1', '2', '>2']
    """
    e = [int(v) for v in _edges(edges)]
    middle = [f"{lo + 1}" if lo + 1 == hi else f"{lo + 1}-{hi}" for lo, hi in zip(e[:-1], e[1:])]
    return [f"<={e[0]}", *middle, f">{e[-1]}"]


def activity_bucket(counts: ArrayLike, edges: Sequence[int] = DEFAULT_EDGES):
    """The bucket of ``edges`` each count falls in, as an ordered categorical.

    Buckets are ``<= e0``, ``e0+1 - e1``, ..., ``> e_last`` (upper ends
    included), labelled as by :func:`activity_labels`; the categories are
    all the buckets in increasing order, so :func:`summarize` reports them
    in that order (an empty bucket with ``count`` 0).

    Parameters
    ----------
    counts : int array, shape (n,)
        E.g. the number of training ratings of each test row's user.
    edges : sequence of int, strictly increasing

    Returns
    -------
    pandas.Categorical, length n, ordered

    Examples
    --------
    >>> buckets = activity_bucket([0, 20, 21, 200, 201])
    >>> buckets.tolist()
    ['<=20', '<=20', '21-50', '101-200', '>200']
    >>> list(buckets.categories)
    ['<=20', '21-50', '51-100', '101-200', '>200']
    """
    import pandas as pd

    labels = activity_labels(edges)
    c = np.asarray(counts)
    if c.ndim != 1:
        raise ValueError(f"counts must be 1-D (shape (n,)), got shape {c.shape}")
    if c.size == 0:
        raise ValueError("counts is empty")
    if not np.issubdtype(c.dtype, np.integer):
        if not (np.issubdtype(c.dtype, np.number) and np.all(np.isfinite(c)) and np.all(c == np.round(c))):
            raise ValueError("counts must be integers")
    codes = np.searchsorted(_edges(edges), c, side="left")
    return pd.Categorical.from_codes(codes, categories=labels, ordered=True)
