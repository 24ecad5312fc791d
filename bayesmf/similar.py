"""Similar movies with uncertainty: the k nearest movies and the posterior probability of each being among them."""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

from bayesmf.choices import SIMILARITY_METRICS
from bayesmf.ranking import check_k, titled_frame

# Largest number of (draw x movie x factor) floats handled at once by similar_items.
SIMILAR_BLOCK_CELLS = 2**23


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
    k = check_k(k)
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
    return titled_frame(
        posterior,
        dict(item=ids[others[order]], distance=distance[order], prob_top_k=counts[order] / sq.shape[0]),
    )
