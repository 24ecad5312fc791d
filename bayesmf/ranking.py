"""Ranking with uncertainty: top-k movies, similar movies, offline ranking metrics.

Every score comes from a :class:`bayesmf.predictive.Predictor`: a fitted
:class:`~bayesmf.posterior.Posterior` or users folded into one
(:func:`bayesmf.coldstart.fold_in_users`). Ranking uses the protocol only
(``pairs``, ``components``) plus what a ranking needs of a user: the movies
to exclude as seen (``seen_items``) and one joint posterior sample of the
mean ratings (``sample_means``, for Thompson sampling).

==============  ===============================================================
strategy        score of movie j for the user
==============  ===============================================================
``mean``        predictive mean ``E[r_j]``
``lcb``         ``E[r_j] - beta * sd_j`` (cautious: penalise uncertain movies)
``ucb``         ``E[r_j] + beta * sd_j`` (optimistic: explore uncertain movies)
``thompson``    the mean rating under one posterior sample: one draw ``s``
                (by the mixture weights), then the user's factors from that
                draw (exact for a known user, the prior for an unknown one,
                the fold-in conditional for a folded-in one),
                ``m_j^s + R_j^s . L``: one coherent sample across movies
``prob_above``  ``P(r_j >= threshold)`` under the predictive mixture
==============  ===============================================================

``sd_j`` is by default the *epistemic* sd (``spread="epistemic"``): the
uncertainty about the user's mean rating of the movie, which is what a
confidence bound on a recommendation is about. The noise part of the
predictive sd is the same for every movie of a user (``E_s[1/alpha_s]``), so
it only shifts the predictive sd toward a constant; ``spread="predictive"``
uses the full predictive sd instead.

A point estimate (MAP, one draw) has no epistemic spread, so lcb/ucb collapse
to the mean and Thompson sampling to the mean ranking unless
``uncertainty="laplace"`` (the same option, with the same default, as
:meth:`Posterior.predict`): then the conditional (per-row Laplace) variance
of the user's factors given the movies, ``R_j^T P_u^{-1} R_j``, is used, and
Thompson samples the user's factors from ``N(L_u, P_u^{-1})``.

Ties are broken by movie index ascending (a stable sort of candidates in
index order), so rankings are deterministic.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import numpy as np
import pandas as pd
from scipy.special import ndtr

from bayesmf import metrics
from bayesmf.choices import SIMILARITY_METRICS, SPREADS, STRATEGIES
from bayesmf.posterior import check_uncertainty
from bayesmf.predictive import Components, mixture_moments

Array = jax.Array

# The components are float32 computations: 1/alpha inside a component's variance
# carries a relative round-off of ~eps32 = 1.2e-7 against the float64 noise
# variance it is compared with. An epistemic variance below this many eps32 of
# the noise variance is round-off (a point estimate's plug-in predictive has
# none at all) and counts as 0, so that it cannot reorder ties.
EPISTEMIC_FLOOR_EPS = 64

# Largest number of (draw x movie x factor) floats handled at once by similar_items.
SIMILAR_BLOCK_CELLS = 2**23


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    return int(k)


def _check_options(strategy, beta, threshold, rng_key, spread, uncertainty):
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    if strategy == "thompson" and rng_key is None:
        raise ValueError(
            "strategy='thompson' draws from the posterior: pass rng_key=jax.random.PRNGKey(seed) "
            "(one key per call; the same key gives the same ranking)"
        )
    if spread not in SPREADS:
        raise ValueError(f"unknown spread {spread!r}; expected one of {SPREADS}")
    check_uncertainty(uncertainty)


def _candidates(target, items) -> tuple[np.ndarray, np.ndarray]:
    """Candidate external ids and their indices, in index order (the tie-break order)."""
    vocab = target.item_vocab
    if items is None:
        index = np.arange(len(vocab))
        return np.asarray(vocab.ids)[index], index
    items = np.atleast_1d(np.asarray(items))
    if items.ndim != 1:
        raise ValueError(f"items must be 1-D, got shape {items.shape}")
    values, counts = np.unique(items, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"duplicate candidate items {values[counts > 1].tolist()}")
    index = np.asarray(vocab.index(items, missing="flag"), np.int64)
    if np.any(index < 0):
        raise ValueError(
            f"candidate items unknown to the model: {items[index < 0].tolist()}; recommend ranks movies the "
            "model has seen (fold new movies in with bayesmf.fold_in_items to predict them)"
        )
    order = np.argsort(index, kind="stable")
    return items[order], index[order]


class _Scored(NamedTuple):
    mean: np.ndarray  # (n,)
    sd: np.ndarray  # (n,)
    epistemic_sd: np.ndarray  # (n,)
    components: Components  # (S, n)


def _predictive(target, user, ids: np.ndarray, uncertainty: str) -> _Scored:
    """Mixture moments of the candidates' predictive for one user.

    The same components as ``predict``, but without the mixture quantiles of
    the predictive interval, which ranking does not need and which cost more
    than everything else (a bisection over all draws and movies).
    """
    pairs = target.pairs(np.repeat(np.asarray([user]), ids.shape[0]), ids)
    comps = target.components(pairs.user_index, pairs.item_index, uncertainty=uncertainty)
    if ids.shape[0] == 0:
        empty = np.zeros(0)
        return _Scored(empty, empty, empty, comps)
    mean, var, noise_var = mixture_moments(comps)
    epistemic_var = var - noise_var
    floor = EPISTEMIC_FLOOR_EPS * np.finfo(np.float32).eps * noise_var
    epistemic_sd = np.sqrt(np.where(epistemic_var > floor, epistemic_var, 0.0))
    return _Scored(mean, np.sqrt(var), epistemic_sd, comps)


def _prob_above(comps: Components, threshold: float) -> np.ndarray:
    """``P(r >= threshold)`` under the mixture, shape (n,)."""
    tail = ndtr((comps.mean - threshold) / comps.sd)  # per component, (S, n)
    if comps.weights is None:
        return tail.mean(axis=0)
    return np.sum(comps.weights * tail, axis=0)


def _frame(target, columns: dict) -> pd.DataFrame:
    frame = pd.DataFrame(columns)
    if target.titles:
        frame["title"] = [target.titles.get(x.item() if hasattr(x, "item") else x) for x in frame["item"]]
    return frame


def _one_user(target, user, k, strategy, beta, threshold, exclude_seen, rng_key, items, uncertainty, spread) -> dict:
    ids, index = _candidates(target, items)
    if exclude_seen:
        keep = ~np.isin(ids, target.seen_items(user))
        ids, index = ids[keep], index[keep]
    pred = _predictive(target, user, ids, uncertainty)
    sd = pred.epistemic_sd if spread == "epistemic" else pred.sd
    if strategy == "mean":
        score = pred.mean
    elif strategy == "lcb":
        score = pred.mean - beta * sd
    elif strategy == "ucb":
        score = pred.mean + beta * sd
    elif strategy == "prob_above":
        score = _prob_above(pred.components, threshold)
    else:
        score = target.sample_means(rng_key, user, index, uncertainty=uncertainty)
    score = np.asarray(score, np.float64)
    order = np.argsort(-score, kind="stable")[:k]
    return dict(
        item=ids[order], score=score[order], mean=pred.mean[order], sd=pred.sd[order],
        epistemic_sd=pred.epistemic_sd[order],
    )


def recommend(
    target,
    users=None,
    k: int = 10,
    *,
    strategy: str = "mean",
    beta: float = 1.0,
    threshold: float = 4.0,
    exclude_seen: bool = True,
    rng_key: Array | None = None,
    items=None,
    uncertainty: str = "posterior",
    spread: str = "epistemic",
) -> pd.DataFrame:
    """Top-k movies for one user or many, ranked with or without uncertainty.

    Parameters
    ----------
    target : Posterior or FoldIn
        A fitted posterior (``users`` are external user ids; an unknown id
        gets the cold-start prior) or a fold-in of new users (``users`` are
        its labels: 0, 1, ... unless given).
    users : id, array-like of ids, or None
        One user, several, or None for every user (every training user of a
        posterior, every folded-in user of a fold-in).
    k : int
        Number of movies per user (> 0; fewer come back if fewer candidates
        remain).
    strategy : {"mean", "lcb", "ucb", "thompson", "prob_above"}
        See the module docstring.
    beta : float
        Width of the lcb / ucb bound in sds (>= 0).
    threshold : float
        Rating threshold of ``prob_above`` (``P(r >= threshold)`` under the
        continuous Gaussian predictive: on an integer scale, 3.5 counts
        ratings that round to 4 or more).
    exclude_seen : bool
        Leave out the user's training movies (``posterior.train``) or a
        folded-in user's given movies.
    rng_key : jax.Array, optional
        Required by ``strategy="thompson"``: the same key gives the same
        ranking, another key another sample (user ``n`` of the list gets
        ``fold_in(rng_key, n)`` when several users are ranked).
    items : array-like, optional
        Candidate movies (external ids, all known to the model); default
        every movie.
    uncertainty : {"posterior", "laplace"}
        For a point estimate: ``"laplace"`` adds the conditional variance of
        the user's factors so that lcb / ucb / thompson differ from the mean
        ranking; ``"posterior"`` (default, as in ``predict``) keeps the
        plug-in (noise-only) sd. Changes nothing with several draws.
    spread : {"epistemic", "predictive"}
        Which sd lcb / ucb use (see the module docstring).

    Returns
    -------
    pandas.DataFrame
        Columns ``user``, ``rank`` (1..k), ``item``, ``score``, ``mean``,
        ``sd`` (predictive), ``epistemic_sd`` and ``title`` (when the
        posterior has titles): k rows per user in the order the users were
        given, each user's sorted by score descending (ties: movie index
        ascending).

    Raises
    ------
    ValueError
        ``k <= 0``, an unknown strategy, ``beta < 0``, thompson without
        ``rng_key``, unknown or duplicate candidate items.

    Examples
    --------
    >>> recommend(posterior, 1, k=5, strategy="lcb", beta=1.0)  # doctest: +SKIP
    >>> recommend(posterior, [1, 2], strategy="thompson", rng_key=jax.random.PRNGKey(0))  # doctest: +SKIP
    """
    k = _check_k(k)
    _check_options(strategy, beta, threshold, rng_key, spread, uncertainty)
    for method in ("pairs", "components", "seen_items", "sample_means"):
        if not callable(getattr(target, method, None)):
            raise TypeError(f"expected a Posterior or a FoldIn of users, got {type(target).__name__}")
    if getattr(target, "side", "user") != "user":
        raise TypeError("recommend ranks movies for a user: pass a Posterior or a FoldIn of users, not one of movies")
    single = users is not None and np.ndim(users) == 0
    if users is None:
        users = target.labels if hasattr(target, "labels") else target.user_vocab.ids
    users = np.atleast_1d(np.asarray(users))
    if hasattr(target, "position"):
        for user in users:
            target.position(user)  # a clear KeyError for an unknown label, before any work
    parts = []
    for n, user in enumerate(users):
        key = rng_key if single or rng_key is None else jax.random.fold_in(rng_key, n)
        top = _one_user(target, user, k, strategy, beta, threshold, exclude_seen, key, items, uncertainty, spread)
        size = top["item"].shape[0]
        parts.append(dict(user=np.repeat(users[n : n + 1], size), rank=np.arange(1, size + 1), **top))
    columns = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return _frame(target, columns)


# --- similar movies -----------------------------------------------------------------------


def _draw_subset(num_total: int, num_draws) -> np.ndarray:
    if num_draws is None or num_draws >= num_total:
        return np.arange(num_total)
    if isinstance(num_draws, bool) or not isinstance(num_draws, numbers.Integral) or num_draws <= 0:
        raise ValueError(f"num_draws must be a positive integer or None, got {num_draws!r}")
    return np.unique(np.linspace(0, num_total - 1, int(num_draws)).round().astype(np.int64))


def _squared_distances(flat, draws: np.ndarray, i: int, metric: str) -> np.ndarray:
    """Per draw, the squared distance of movie ``i`` to every movie, shape (len(draws), num_items)."""
    num_items, d = flat.item_factors.shape[1:]
    block = max(1, SIMILAR_BLOCK_CELLS // max(num_items * d, 1))
    out = []
    for start in range(0, draws.size, block):
        s = draws[start : start + block]
        r = flat.item_factors[s].astype(np.float64)  # (b, M, d)
        diff = r - r[:, i : i + 1]
        if metric == "euclidean":
            out.append(np.sum(diff**2, axis=-1))
            continue
        l = flat.user_factors[s].astype(np.float64)  # (b, N, d)
        gram = np.einsum("bnd,bne->bde", l, l) / l.shape[1]  # E_u[L_u L_u^T] per draw
        sq = np.einsum("bmd,bde,bme->bm", diff, gram, diff)
        if metric == "profile":
            m = flat.item_offsets[s].astype(np.float64)
            dm = m - m[:, i : i + 1]
            sq = sq + 2.0 * dm * np.einsum("bmd,bd->bm", diff, l.mean(axis=1)) + dm**2
        out.append(sq)
    return np.maximum(np.concatenate(out), 0.0)


def similar_items(posterior, item, k: int = 10, *, metric: str = "invariant", num_draws: int | None = None) -> pd.DataFrame:
    """The k movies nearest to a movie, with the posterior probability of each being among them.

    Metrics (per draw ``s``, then averaged over draws):

    ``"invariant"`` (default)
        ``(R_i - R_j)^T G_s (R_i - R_j)`` with ``G_s = L_s^T L_s / N``: the
        mean over the training users of the squared difference of the two
        movies' predicted ratings (without offsets). The factors are only
        identified up to ``L -> L A``, ``R -> R A^{-T}`` for any invertible
        ``A``; predictions ``L R^T`` and hence this distance do not change,
        while plain Euclidean distance survives only orthogonal ``A`` and
        can differ between two equally good fits. It answers "do users rate
        these two movies alike?".
    ``"euclidean"``
        ``||R_i - R_j||^2``: not invariant, for comparison.
    ``"profile"``
        The mean squared difference of the full predicted rating profiles,
        offsets included: ``invariant + 2 (m_i - m_j) (R_i - R_j) . Lbar +
        (m_i - m_j)^2``; also invariant, and counts a better- or
        worse-liked movie as farther.

    Parameters
    ----------
    posterior : Posterior
    item
        External id of a movie the model has seen.
    k : int
        Number of neighbours (> 0).
    metric : {"invariant", "euclidean", "profile"}
    num_draws : int, optional
        Use this many evenly spaced posterior draws (default all).

    Returns
    -------
    pandas.DataFrame
        Columns ``item``, ``distance`` (square root of the draw-averaged
        squared distance: in rating units for the invariant metrics),
        ``prob_top_k`` (fraction of draws in which the movie is among the k
        nearest) and ``title`` when available; sorted by distance ascending
        (ties: movie index ascending), the movie itself excluded.

    Examples
    --------
    >>> similar_items(posterior, 50, k=5)  # doctest: +SKIP
    """
    k = _check_k(k)
    if metric not in SIMILARITY_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {SIMILARITY_METRICS}")
    i = int(np.asarray(posterior.item_vocab.index(np.atleast_1d(np.asarray(item)), missing="flag"))[0])
    if i < 0:
        raise ValueError(f"item {item!r} is unknown to the model; fold it in first (bayesmf.fold_in_items)")
    flat = posterior.flat_draws()
    draws = _draw_subset(flat.noise_precision.shape[0], num_draws)
    sq = _squared_distances(flat, draws, i, metric)  # (S', M)
    num_items = sq.shape[1]
    others = np.delete(np.arange(num_items), i)
    sq = sq[:, others]
    k = min(k, others.size)
    # Per draw, the k nearest (ties at the boundary are measure-zero with continuous draws).
    nearest = np.argpartition(sq, k - 1, axis=1)[:, :k] if k < others.size else np.tile(np.arange(others.size), (sq.shape[0], 1))
    counts = np.bincount(nearest.ravel(), minlength=others.size)
    distance = np.sqrt(sq.mean(axis=0))
    order = np.argsort(distance, kind="stable")[:k]
    ids = np.asarray(posterior.item_vocab.ids)
    return _frame(
        posterior,
        dict(item=ids[others[order]], distance=distance[order], prob_top_k=counts[order] / sq.shape[0]),
    )


# --- offline evaluation ---------------------------------------------------------------------


def evaluate_ranking(
    posterior,
    test_users,
    test_items,
    test_ratings,
    k: int = 10,
    strategy: str = "mean",
    relevance_threshold: float = 4.0,
    *,
    beta: float = 1.0,
    threshold: float = 4.0,
    exclude_seen: bool = True,
    rng_key: Array | None = None,
    uncertainty: str = "posterior",
    spread: str = "epistemic",
) -> dict:
    """Top-k ranking quality on held-out ratings.

    For each test user with at least one relevant test movie (rating >=
    ``relevance_threshold``), rank every movie the model knows except the
    user's training movies (``exclude_seen``) with :func:`recommend` and
    score the top k against the relevant test movies. Test users unknown to
    the model are ranked by the cold-start prior and counted.

    Parameters
    ----------
    posterior : Posterior
    test_users, test_items : array-like, shape (n,)
        External ids.
    test_ratings : array-like, shape (n,)
    k : int
    strategy : str
        As in :func:`recommend` (``thompson`` needs ``rng_key``; user ``i``
        of the sorted test users gets ``fold_in(rng_key, i)``).
    relevance_threshold : float
        A test rating at or above it is relevant.
    beta, threshold, exclude_seen, rng_key, uncertainty, spread
        Passed to :func:`recommend`.

    Returns
    -------
    dict
        ``precision_at_k``, ``recall_at_k``, ``ndcg_at_k`` (means over the
        evaluated users), ``k``, ``strategy``, ``num_users`` (evaluated),
        ``num_users_skipped`` (no relevant test movie), ``num_cold_users``.
    """
    k = _check_k(k)
    _check_options(strategy, beta, threshold, rng_key, spread, uncertainty)
    test_users = np.atleast_1d(np.asarray(test_users))
    test_items = np.atleast_1d(np.asarray(test_items))
    test_ratings = np.atleast_1d(np.asarray(test_ratings, np.float64))
    if not (test_users.shape == test_items.shape == test_ratings.shape) or test_users.ndim != 1:
        raise ValueError(
            f"test_users, test_items and test_ratings must be 1-D of one length, got {test_users.shape}, "
            f"{test_items.shape}, {test_ratings.shape}"
        )
    if test_users.size == 0:
        raise ValueError("the test set is empty")
    recommended, relevant, cold, skipped = [], [], 0, 0
    for n, user in enumerate(np.unique(test_users)):
        rows = test_users == user
        good = test_items[rows][test_ratings[rows] >= relevance_threshold]
        if good.size == 0:
            skipped += 1
            continue
        key = None if rng_key is None else jax.random.fold_in(rng_key, n)
        top = recommend(
            posterior, user, k, strategy=strategy, beta=beta, threshold=threshold, exclude_seen=exclude_seen,
            rng_key=key, uncertainty=uncertainty, spread=spread,
        )
        recommended.append(top["item"].to_numpy())
        relevant.append(good)
        cold += int(np.asarray(posterior.user_vocab.index(np.atleast_1d(user), missing="flag"))[0] < 0)
    if not recommended:
        raise ValueError(f"no test user has a rating >= {relevance_threshold}: nothing to rank")
    return dict(
        precision_at_k=float(metrics.precision_at_k(recommended, relevant, k)),
        recall_at_k=float(metrics.recall_at_k(recommended, relevant, k)),
        ndcg_at_k=float(metrics.ndcg_at_k(recommended, relevant, k)),
        k=k,
        strategy=strategy,
        num_users=len(recommended),
        num_users_skipped=skipped,
        num_cold_users=cold,
    )
