"""Ranking metrics of top-k lists against held-out relevant items.

Binary relevance; plain NumPy after one factorisation of the item ids
(pandas), so a batch of many users is scored without a Python loop per user.
Every metric takes the same input (``recommended``, ``relevant``, ``k``) and
``per_user=``; users with no relevant item are left out of the mean.
"""

from __future__ import annotations

import itertools

import numpy as np


def _hit_matrix(recommended, relevant, k) -> tuple[np.ndarray, np.ndarray]:
    """Hits of each user's top-k, shape (U, k), and the number of relevant items, shape (U,)."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    num_users = len(recommended)
    if num_users == 0:
        raise ValueError("recommended is empty (no users)")
    if len(relevant) != num_users:
        raise ValueError(f"mismatched lengths: recommended has {num_users} users, relevant {len(relevant)}")

    rec_arr = recommended if isinstance(recommended, np.ndarray) and recommended.ndim == 2 else None
    if rec_arr is not None:
        rec_len = np.full(num_users, rec_arr.shape[1])
        rec_flat = rec_arr.ravel()
    else:
        rec_len = np.fromiter(map(len, recommended), dtype=np.int64, count=num_users)
        rec_flat = np.fromiter(itertools.chain.from_iterable(recommended), dtype=object, count=int(rec_len.sum()))
    rel_len = np.fromiter(map(len, relevant), dtype=np.int64, count=num_users)
    rel_flat = np.fromiter(itertools.chain.from_iterable(relevant), dtype=object, count=int(rel_len.sum()))

    rec_user = np.repeat(np.arange(num_users), rec_len)
    rec_rank = np.arange(rec_user.size) - np.repeat(np.cumsum(rec_len) - rec_len, rec_len)
    keep = rec_rank < k
    rec_user, rec_rank = rec_user[keep], rec_rank[keep]
    rel_user = np.repeat(np.arange(num_users), rel_len)

    import pandas as pd

    codes, uniques = pd.factorize(np.concatenate([np.asarray(rec_flat, dtype=object)[keep], rel_flat]))
    num_codes = max(1, len(uniques))
    rec_key = rec_user * num_codes + codes[: rec_user.size]
    rel_key = np.unique(rel_user * num_codes + codes[rec_user.size :])
    if np.unique(rec_key).size != rec_key.size:
        raise ValueError("recommended has a duplicate item in some user's top k")

    hits = np.zeros((num_users, k), dtype=bool)
    hits[rec_user, rec_rank] = np.isin(rec_key, rel_key)
    num_relevant = np.bincount(rel_key // num_codes, minlength=num_users)
    return hits, num_relevant


def _finish(per_user: np.ndarray, num_relevant: np.ndarray, want_per_user: bool):
    per_user = np.where(num_relevant > 0, per_user, np.nan)
    if want_per_user:
        return per_user
    scored = num_relevant > 0
    return float(np.mean(per_user[scored])) if np.any(scored) else float("nan")


_RANKING_DOC = """
    Users without any relevant item are left out of the mean (their
    per-user value is NaN); if no user has one the mean is NaN. Items past
    rank ``k`` are ignored; a list shorter than ``k`` counts its missing
    ranks as misses. Relevance is binary.

    Parameters
    ----------
    recommended : sequence of sequences, or array of shape (U, m)
        Ranked item ids per user, best first (any hashable ids).
    relevant : sequence of sets, length U
        The relevant (e.g. held-out, liked) item ids per user.
    k : int
        Cut-off, > 0.
    per_user : bool
        Return the per-user values instead of their mean.

    Returns
    -------
    float, or array of shape (U,) with ``per_user``
"""


def precision_at_k(recommended, relevant, k: int, *, per_user: bool = False):
    hits, num_relevant = _hit_matrix(recommended, relevant, k)
    return _finish(hits.sum(1) / k, num_relevant, per_user)


def recall_at_k(recommended, relevant, k: int, *, per_user: bool = False):
    hits, num_relevant = _hit_matrix(recommended, relevant, k)
    return _finish(hits.sum(1) / np.maximum(num_relevant, 1), num_relevant, per_user)


def ndcg_at_k(recommended, relevant, k: int, *, per_user: bool = False):
    hits, num_relevant = _hit_matrix(recommended, relevant, k)
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    ideal = np.cumsum(discount)[np.clip(num_relevant, 1, k) - 1]
    return _finish((hits @ discount) / ideal, num_relevant, per_user)


def mrr_at_k(recommended, relevant, k: int, *, per_user: bool = False):
    hits, num_relevant = _hit_matrix(recommended, relevant, k)
    found = hits.any(axis=1)
    first = np.argmax(hits, axis=1)  # rank of the first hit (0 when there is none)
    return _finish(np.where(found, 1.0 / (first + 1.0), 0.0), num_relevant, per_user)


def hit_rate_at_k(recommended, relevant, k: int, *, per_user: bool = False):
    hits, num_relevant = _hit_matrix(recommended, relevant, k)
    return _finish(hits.any(axis=1).astype(np.float64), num_relevant, per_user)


precision_at_k.__doc__ = (
    """Precision at k: the fraction of the top ``k`` that is relevant (divided by ``k``).
"""
    + _RANKING_DOC
    + """
    Examples
    --------
    >>> precision_at_k([[1, 2, 3], [4, 5]], [{1, 3}, {9}], 2)
    0.25
"""
)
recall_at_k.__doc__ = (
    """Recall at k: the fraction of a user's relevant items found in the top ``k``.
"""
    + _RANKING_DOC
    + """
    Examples
    --------
    >>> recall_at_k([[1, 2, 3], [4, 5]], [{1, 3}, {9}], 2)
    0.25
"""
)
ndcg_at_k.__doc__ = (
    """Normalised discounted cumulative gain at k, binary relevance.

    ``DCG = sum_{r < k} hit_r / log2(r + 2)`` over ranks ``r = 0, 1, ...``,
    divided by the DCG of a perfect list (``min(k, |relevant|)`` hits first).
"""
    + _RANKING_DOC
    + """
    Examples
    --------
    >>> ndcg_at_k([[1, 2, 3]], [{1, 2}], 3)
    1.0
"""
)
mrr_at_k.__doc__ = (
    """Mean reciprocal rank at k: ``1 / (r + 1)`` for the first relevant item at rank ``r = 0, 1, ...``.

    A user with no relevant item in the top ``k`` scores 0.
"""
    + _RANKING_DOC
    + """
    Examples
    --------
    >>> mrr_at_k([[1, 2, 3], [4, 5]], [{2, 3}, {9}], 3)
    0.25
"""
)
hit_rate_at_k.__doc__ = (
    """Hit rate at k: 1 if any relevant item is in the top ``k``, else 0.
"""
    + _RANKING_DOC
    + """
    Examples
    --------
    >>> hit_rate_at_k([[1, 2, 3], [4, 5]], [{2, 3}, {9}], 3)
    0.5
"""
)
