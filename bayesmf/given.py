"""New rows' ratings for fold-in: the accepted forms, their checks, and the padded batch.

:func:`bayesmf.fold_in_users` and :func:`bayesmf.fold_in_items` take one
``(ids, ratings)`` pair per new row, a :class:`PaddedRatings` batch, or a
DataFrame of (user, item, rating) rows; :func:`validate_given` checks them
against the model's vocabulary and rating scale and :func:`pad_given` lays
them out for the fold-in's fixed shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from bayesmf.arrays import next_pow2, stable_order
from bayesmf.data import as_ratings

UNKNOWN_MODES = ("raise", "ignore")


class PaddedRatings(NamedTuple):
    """A padded batch of new users' (or movies') ratings.

    Attributes
    ----------
    ids : array, shape (num_rows, max_given)
        External ids of the rated movies (users for :func:`fold_in_items`).
    ratings : float array, shape (num_rows, max_given)
    mask : bool array, shape (num_rows, max_given)
        True where an entry is a real rating; padding entries are ignored.
    """

    ids: np.ndarray
    ratings: np.ndarray
    mask: np.ndarray


# Fewest given ratings a batch is padded to: every batch of up to 8 ratings
# per row shares one compiled shape.
MIN_WIDTH = 8

class Given(NamedTuple):
    """Validated ratings of new rows: per row, the known indices, ratings, ids used and unknown ids ignored."""

    index: list  # per row: int array of known indices
    ratings: list  # per row: float64 array
    ids: list  # per row: external ids used
    ignored: list  # per row: unknown external ids ignored


def frame_rows(frame, side: str) -> tuple[list, np.ndarray]:
    """A DataFrame of (user, item, rating) rows as one (ids, ratings) entry per folded-in row, and the labels."""
    ratings = as_ratings(frame)
    own, other = (ratings.user_index, ratings.item_index) if side == "user" else (ratings.item_index, ratings.user_index)
    own, other = np.asarray(own), np.asarray(other)
    other_ids = np.asarray((ratings.item_vocab if side == "user" else ratings.user_vocab).ids)
    labels = np.asarray((ratings.user_vocab if side == "user" else ratings.item_vocab).ids)
    order = stable_order(own, labels.size)
    starts = np.searchsorted(own[order], np.arange(labels.size + 1))
    value = np.asarray(ratings.rating, np.float64)
    rows = [(other_ids[other[order[a:b]]], value[order[a:b]]) for a, b in zip(starts[:-1], starts[1:])]
    return rows, labels


def as_rows(given) -> list[tuple[np.ndarray, np.ndarray]]:
    if isinstance(given, PaddedRatings):
        ids, ratings, mask = (np.asarray(x) for x in given)
        if ids.ndim != 2 or ids.shape != ratings.shape or ids.shape != mask.shape:
            raise ValueError(
                f"PaddedRatings ids, ratings and mask must be 2-D of one shape, got {ids.shape}, {ratings.shape}, {mask.shape}"
            )
        mask = mask.astype(bool)
        return [(ids[r][mask[r]], ratings[r][mask[r]]) for r in range(ids.shape[0])]
    if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
        raise TypeError(
            "ratings must be a list of (ids, ratings) pairs, one per new row, or a PaddedRatings batch; "
            f"got {type(given).__name__}"
        )
    rows = []
    for r, pair in enumerate(given):
        try:
            ids, ratings = pair
        except (TypeError, ValueError):
            raise TypeError(f"entry {r} must be an (ids, ratings) pair, got {type(pair).__name__}") from None
        rows.append((np.atleast_1d(np.asarray(ids)), np.atleast_1d(np.asarray(ratings, dtype=np.float64))))
    return rows


def validate_given(given, vocab, scale, unknown: str, what: str) -> Given:
    """Check every row's ratings; map ids to indices (see fold_in_users for the rules)."""
    if unknown not in UNKNOWN_MODES:
        raise ValueError(f"unknown={unknown!r}; expected one of {UNKNOWN_MODES}")
    rows = as_rows(given)
    if not rows:
        raise ValueError("no rows to fold in: give at least one (ids, ratings) pair (it may be empty)")
    index, ratings_out, ids_out, ignored, missing = [], [], [], [], []
    for r, (ids, ratings) in enumerate(rows):
        if ids.ndim != 1 or ratings.ndim != 1 or ids.shape != ratings.shape:
            raise ValueError(f"row {r}: ids and ratings must be 1-D of one length, got shapes {ids.shape} and {ratings.shape}")
        ratings = ratings.astype(np.float64)
        if not np.all(np.isfinite(ratings)):
            raise ValueError(f"row {r}: ratings contain NaN or inf")
        if ratings.size:
            scale.validate(ratings)
        values, counts = np.unique(ids, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(f"row {r}: duplicate {what} ids {values[counts > 1].tolist()} (one rating per {what})")
        idx = np.asarray(vocab.index(ids, missing="flag"), dtype=np.int64) if ids.size else np.zeros(0, np.int64)
        bad = idx < 0
        if np.any(bad) and unknown == "raise":
            missing.append((r, ids[bad].tolist()))
        index.append(idx[~bad])
        ratings_out.append(ratings[~bad])
        ids_out.append(ids[~bad])
        ignored.append(ids[bad])
    if missing:
        listed = "; ".join(f"row {r}: {ids}" for r, ids in missing)
        raise ValueError(
            f"{what} ids unknown to the model ({listed}); pass unknown='ignore' to fold in without them "
            "(they are then listed in the result's ignored ids)"
        )
    return Given(index, ratings_out, ids_out, ignored)


def pad_given(given: Given) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    num_rows = len(given.index)
    width = next_pow2(max(max((len(i) for i in given.index), default=0), MIN_WIDTH))
    idx = np.zeros((num_rows, width), np.int64)
    ratings = np.zeros((num_rows, width), np.float64)
    mask = np.zeros((num_rows, width), bool)
    for r, (i, y) in enumerate(zip(given.index, given.ratings)):
        idx[r, : len(i)] = i
        ratings[r, : len(i)] = y
        mask[r, : len(i)] = True
    return idx, ratings, mask
