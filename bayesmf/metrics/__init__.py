"""Scores for predictive ratings: point, Gaussian / Gaussian-mixture and ranking.

Plain NumPy array functions (pandas only for the tables of
:func:`summarize` and the categorical of :func:`activity_bucket`); nothing
here draws from a model.

One convention serves every predictive: ``mu`` of shape ``(n,)`` is a
Gaussian per row, ``mu`` of shape ``(S, n)`` a mixture of ``S`` components
(one row per component, e.g. per posterior draw) with ``sd`` broadcastable
to its shape and optional ``weights`` of shape ``(S,)``. A Gaussian is a
one-component mixture, with a closed-form fast path inside each function.

- :mod:`~bayesmf.metrics.scores`: :func:`rmse`, :func:`mae`,
  :func:`coverage`, :func:`moments`, :func:`cdf`, :func:`quantile`,
  :func:`interval`, :func:`nll` / :func:`nll_per_row`, :func:`crps` /
  :func:`crps_per_row`, :func:`crps_samples` / :func:`crps_samples_per_row`.
- :mod:`~bayesmf.metrics.stars`: :func:`star_cuts`, :func:`star_index`,
  :func:`star_masses` (the mass of each star of a discrete scale),
  :func:`star_rows` (log score, ranked probability score and prediction sets
  from any model's star masses), :func:`prediction_set`.
- :mod:`~bayesmf.metrics.summary`: :func:`score_rows` (the one scoring
  pass), :func:`summarize` (the one aggregation: a table per group, or one
  row ``all``), :func:`activity_bucket` (an ordered categorical).
- :mod:`~bayesmf.metrics.ranking`: :func:`precision_at_k`,
  :func:`recall_at_k`, :func:`ndcg_at_k`, :func:`mrr_at_k`,
  :func:`hit_rate_at_k`.

Examples
--------
>>> from bayesmf import metrics
>>> rows = metrics.score_rows([3.0, 4.0], [[3.2, 3.9], [2.8, 4.3]], 0.5, levels=(0.9,))
>>> table = metrics.summarize(rows)
>>> list(table.columns)
['count', 'rmse', 'mae', 'nll', 'crps', 'coverage_90', 'width_90']
"""

from bayesmf.metrics.ranking import hit_rate_at_k, mrr_at_k, ndcg_at_k, precision_at_k, recall_at_k
from bayesmf.metrics.scores import (
    MAX_PAIRS,
    QUANTILE_TOL,
    cdf,
    coverage,
    crps,
    crps_per_row,
    crps_samples,
    crps_samples_per_row,
    interval,
    mae,
    moments,
    nll,
    nll_per_row,
    quantile,
    rmse,
)
from bayesmf.metrics.stars import prediction_set, star_cuts, star_index, star_masses, star_rows
from bayesmf.metrics.summary import (
    DEFAULT_EDGES,
    DEFAULT_LEVELS,
    activity_bucket,
    activity_labels,
    score_rows,
    summarize,
)

__all__ = [
    "DEFAULT_EDGES",
    "DEFAULT_LEVELS",
    "MAX_PAIRS",
    "QUANTILE_TOL",
    "activity_bucket",
    "activity_labels",
    "cdf",
    "coverage",
    "crps",
    "crps_per_row",
    "crps_samples",
    "crps_samples_per_row",
    "hit_rate_at_k",
    "interval",
    "mae",
    "moments",
    "mrr_at_k",
    "ndcg_at_k",
    "nll",
    "nll_per_row",
    "precision_at_k",
    "prediction_set",
    "quantile",
    "recall_at_k",
    "rmse",
    "score_rows",
    "star_cuts",
    "star_index",
    "star_masses",
    "star_rows",
    "summarize",
]
