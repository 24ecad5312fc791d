"""A fitted model: parameter draws (or a point estimate) and what they predict.

:class:`Posterior` holds ``Params`` with leading ``(chain, draw)`` axes; a MAP
fit is the special case of one chain with one draw. Every prediction is the
posterior predictive mixture over draws:

.. math::

    p(r \\mid u, v) = \\frac1S \\sum_s \\mathcal N(r;\\ \\mu_s,\\ \\sigma^2_s)

with mean ``mean_s(mu_s)`` and variance ``mean_s(sigma_s^2) + var_s(mu_s)``
(the epistemic part is the variance of the means plus, for unseen users or
movies, the prior's spread inside ``sigma_s^2``). Per draw:

========================  ==========================================  =========================================================
pair                      mean ``mu_s``                               variance ``sigma_s^2``
========================  ==========================================  =========================================================
known user, known movie   ``L_u . R_v + m_v``                         ``1/alpha``
new user, known movie     ``m_v + mu_L . R_v``                        ``1/alpha + R_v^T Lambda_L^-1 R_v``
known user, new movie     ``mu_0 + L_u . mu_R``                       ``1/alpha + 1/tau_m + L_u^T Lambda_R^-1 L_u``
new user, new movie       ``mu_0 + mu_L . mu_R``                      ``1/alpha + 1/tau_m + mu_L^T S_R mu_L + mu_R^T S_L mu_R + tr(S_L S_R)``
========================  ==========================================  =========================================================

(``S = Lambda^-1``). The new-user row is the mean-based cold-start prior: the
movie's offset, never a silent zero. For a new user and a new movie the
product ``L . R`` of two Gaussians is not Gaussian; its exact mean and
variance are used.

For MAP the noise variance is the plug-in ``1/alpha`` estimated from
validation residuals (train residuals are optimistic), and the epistemic part
is zero for known pairs; :meth:`Posterior.predict` with
``uncertainty="laplace"`` adds the conditional (per-row Laplace) variance of
the user's factors, ``R_v^T P_u^{-1} R_v``.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from bayesmf import laplace, metrics, ordinal_predictive
from bayesmf.arrays import padded_count, stable_order
from bayesmf.choices import BREAKDOWNS, UNCERTAINTIES
from bayesmf.conjugate import RowPosterior, draw_from
from bayesmf.data import as_pairs, as_ratings
from bayesmf.memory import device_limit, to_device
from bayesmf.model import ModelConfig, Params, pair_mean, predict_mean, user_row_prior
from bayesmf.predictive import (
    Components,
    Pairs,
    Prediction,
    check_prob,
    pair_moments,
    prediction,
    sampled_means,
    stream_score_rows,
)

Array = jax.Array

# Largest (draws x pairs) block computed at once when predicting; bounds the
# memory of a prediction to ~4 * 3 * DRAW_BLOCK_CELLS bytes.
DRAW_BLOCK_CELLS = 4_000_000

COLD_GROUPS = ("known", "new user", "new item", "new user+item")

# evaluate warns when more than this fraction of its test rows are cold-start
# predictions and the caller did not say they are expected (an id-type
# mismatch between training and test ids makes every row cold).
COLD_WARN_FRACTION = 0.05


def known_moments(params: Params, user_index: Array, item_index: Array) -> tuple[Array, Array]:
    """:func:`bayesmf.predictive.pair_moments` for pairs whose user and item are both known.

    The same mean ``<L_u, R_v> + m_v`` (the likelihood's own
    :func:`bayesmf.model.predict_mean`) and variance ``1 / alpha`` without
    the cold-start terms, whose ``rank x rank`` quadratic forms per pair made
    scoring a test set cost more than the pairs' inner products (11 s for
    200 draws of 20,000 pairs at rank 100).

    Parameters
    ----------
    params : Params
        One draw (no leading axes).
    user_index, item_index : int array, shape (n,)
        All ``>= 0``.

    Returns
    -------
    mean, var : array, shape (n,)
    """
    mean = predict_mean(params, user_index, item_index)
    return mean, jnp.broadcast_to(1.0 / params.noise_precision, mean.shape)


class DrawMinor(NamedTuple):
    """The draws a known pair's mean needs, draw-minor: a row's ``S`` draws are contiguous.

    Attributes
    ----------
    user_factors : array, shape (num_users * S, D)
        Row ``u * S + s`` is ``L_u`` under draw ``s``.
    item_factors : array, shape (num_items * S, D)
    item_offsets : array, shape (num_items * S,)
    noise_precision : array, shape (S,)
    user_offsets : array, shape (num_users * S,), or None
        Without user offsets in the model, None.
    """

    user_factors: Array
    item_factors: Array
    item_offsets: Array
    noise_precision: Array
    user_offsets: Array | None = None


# Draw-major bytes on the device at once in draw_minor on the CPU (an accelerator: 1/16 of its memory).
DRAW_MINOR_PIECE_BYTES = 64 * 2**20
_transposed = jax.jit(lambda x: jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:]))  # (S, n, ...) -> (n S, ...)


@functools.partial(jax.jit, donate_argnums=0)
def _put_draw_minor(out: Array, start: Array, x: Array) -> Array:
    """``out`` (N * S, ...) with ``x`` (S, n, ...) draw-minor from row ``start`` on, in place."""
    return jax.lax.dynamic_update_slice_in_dim(out, _transposed(x), start, 0)


def _rows_draw_minor(x) -> Array:
    """(S, N, ...) -> (N * S, ...) on the device (row ``n * S + s`` is ``x[s, n]``), in place piece by piece."""
    num_draws, n = x.shape[:2]
    limit = device_limit()
    piece = DRAW_MINOR_PIECE_BYTES if limit is None else limit // 16
    step = max(1, min(n, piece * max(n, 1) // max(x.nbytes, 1)))
    if step == n:  # one piece: the transpose alone, one program
        return _transposed(to_device(x))
    out = jnp.zeros((n * num_draws,) + x.shape[2:], x.dtype)
    for end in range(step, n + step, step):
        start = min(end, n) - step  # (the last piece overlaps the one before: one shape, one compile)
        out = _put_draw_minor(out, np.int32(start * num_draws), to_device(x[:, start : start + step]))
    return out


def draw_minor(user_factors, item_factors, item_offsets, noise_precision, user_offsets=None) -> DrawMinor:
    """:class:`DrawMinor` from draw-major (S, N, D), (S, M, D), (S, M), (S,) (and (S, N) or None), in pieces."""
    return DrawMinor(
        _rows_draw_minor(user_factors),
        _rows_draw_minor(item_factors),
        _rows_draw_minor(item_offsets),
        to_device(noise_precision).reshape(-1),
        None if user_offsets is None else _rows_draw_minor(user_offsets),
    )


def cold_draws(flat: Params, user_index: np.ndarray, item_index: np.ndarray) -> tuple[Params, np.ndarray, np.ndarray]:
    """The draws of the rows a few pairs touch, with the pairs' indices into them (``-1`` kept).

    Cold pairs are few; their moments (:func:`bayesmf.predictive.pair_moments`)
    need the known side's factors and every hyperparameter, not all rows.

    Returns
    -------
    params : Params
        ``flat`` with its user / item rows cut to those touched (row 0 always
        kept, so that no table is empty).
    user_index, item_index : int array, shape (n,)
    """
    users = np.union1d(user_index[user_index >= 0], [0])
    items = np.union1d(item_index[item_index >= 0], [0])
    u = np.where(user_index >= 0, np.searchsorted(users, user_index), -1)
    i = np.where(item_index >= 0, np.searchsorted(items, item_index), -1)
    params = flat._replace(user_factors=flat.user_factors[:, users], item_factors=flat.item_factors[:, items],
                           item_offsets=flat.item_offsets[:, items],
                           user_offsets=None if flat.user_offsets is None else flat.user_offsets[:, users])
    return params, u, i


def known_moments_draw_minor(draws: DrawMinor, user_index: Array, item_index: Array) -> tuple[Array, Array]:
    """:func:`known_moments` under every draw, from the draw-minor layout: (S, n) each.

    The same :func:`bayesmf.model.pair_mean`, on the tables of all (row, draw)
    pairs: a pair's ``S`` user rows and ``S`` movie rows are contiguous
    gathers. Gathering one row per draw from ``(S, N, D)`` instead (the
    vmapped :func:`known_moments`) took 24 s per million test pairs at 100
    draws, rank 32, 69,878 users on the 2-core CPU.
    """
    num_draws = draws.noise_precision.shape[0]
    s = jnp.arange(num_draws, dtype=jnp.int64)
    users = (user_index.astype(jnp.int64)[:, None] * num_draws + s).reshape(-1)
    items = (item_index.astype(jnp.int64)[:, None] * num_draws + s).reshape(-1)
    mean = pair_mean(draws.user_factors, draws.item_factors, draws.item_offsets, users, items, draws.user_offsets)
    mean = mean.reshape(-1, num_draws).T
    return mean, jnp.broadcast_to((1.0 / draws.noise_precision)[:, None], mean.shape)


_draws_cold = jax.vmap(pair_moments, in_axes=(0, None, None))
_draws_known = jax.vmap(known_moments, in_axes=(0, None, None))
# With feature rows, and the per-draw spread of unknown features (bayesmf.spread).
_batched_moments = jax.jit(jax.vmap(pair_moments, in_axes=(0, None, None, None, None, 0, 0)))
_batched_known = jax.jit(_draws_known)

# Seed of the key of evaluate's sampled CRPS pair term (used only when
# draws^2 x test rows exceeds metrics.MAX_PAIRS).
CRPS_SEED = 0


def check_uncertainty(uncertainty: str) -> str:
    if uncertainty not in UNCERTAINTIES:
        raise ValueError(f"unknown uncertainty {uncertainty!r}; expected one of {UNCERTAINTIES}")
    return uncertainty


class Posterior:
    """Draws of the model (or a point estimate) with id vocabularies: a value that predicts.

    It owns :meth:`predict` and :meth:`evaluate`; what else one does with a
    posterior lives in the module that owns it and takes the posterior as
    its first argument (all re-exported at the package top):
    :func:`bayesmf.fold_in_users` / :func:`bayesmf.fold_in_items`,
    :func:`bayesmf.recommend`, :func:`bayesmf.similar_items`,
    :func:`bayesmf.save` / :func:`bayesmf.load`, :func:`bayesmf.to_arviz`
    and :func:`bayesmf.diagnostics.summary`. It implements
    :class:`bayesmf.predictive.Predictor`.

    Parameters
    ----------
    draws : Params
        Fields with leading ``(num_chains, num_draws)`` axes.
    config : ModelConfig
    user_vocab, item_vocab : bayesmf.data.Vocabulary
        The training data's ids; index ``i`` of the factors is ``vocab.ids[i]``.
    scale : bayesmf.data.RatingScale
    method : str
        The engine that produced the draws.
    stats : dict, optional
        Per-draw diagnostics, arrays (num_chains, num_draws).
    timing : dict, optional
    train : bayesmf.data.Ratings, optional
        Training ratings (what ``recommend`` excludes as seen).
    titles : dict, optional
        External item id -> title.
    info : dict, optional
        Engine settings and extras (e.g. MAP's tuned precisions).
    tracked : TrackedMoments, optional
        Streamed predictive moments of pairs tracked during sampling.
    features : dict, optional
        ``"user"`` / ``"item"`` -> the :class:`bayesmf.data.FeatureEncoder` of
        that side's side features (models with ``config.user_features`` /
        ``item_features``): new users' and movies' features are encoded with it.
    """

    def __init__(
        self,
        draws: Params,
        config: ModelConfig,
        user_vocab,
        item_vocab,
        scale,
        *,
        method: str,
        stats: dict | None = None,
        timing: dict | None = None,
        train=None,
        titles: dict | None = None,
        info: dict | None = None,
        tracked=None,
        features: dict | None = None,
    ):
        self.draws = jax.tree.map(np.asarray, Params(*draws))
        if self.draws.user_factors.ndim != 4:
            raise ValueError("draws must have leading (chain, draw) axes: user_factors of shape (C, S, N, D)")
        self.config = config
        self.user_vocab = user_vocab
        self.item_vocab = item_vocab
        self.scale = scale
        self.method = method
        self.stats = dict(stats or {})
        self.timing = dict(timing or {})
        self.train = train
        self.titles = dict(titles or {})
        self.info = dict(info or {})
        self.tracked = tracked
        self.features = dict(features or {})
        self._spreads = (None, {})  # (the draws they were computed from, {(side, side_known): (S, d, d)})

    # -- shape ---------------------------------------------------------------
    @property
    def num_chains(self) -> int:
        return self.draws.user_factors.shape[0]

    @property
    def num_draws(self) -> int:
        return self.draws.user_factors.shape[1]

    @property
    def rank(self) -> int:
        return self.config.rank

    def flat_draws(self) -> Params:
        """Draws with ``(chain, draw)`` merged into one axis of length C * S."""
        return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), self.draws)

    # -- the Predictor protocol -----------------------------------------------
    def pairs(self, users, items) -> Pairs:
        """External ids -> index pairs, ``-1`` for ids the model has not seen.

        Parameters
        ----------
        users, items : array-like, shape (n,)

        Returns
        -------
        Pairs
        """
        users = np.atleast_1d(np.asarray(users))
        items = np.atleast_1d(np.asarray(items))
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError(f"users and items must be 1-D of one shape, got {users.shape} and {items.shape}")
        u = np.asarray(self.user_vocab.index(users, missing="flag"), np.int64)
        i = np.asarray(self.item_vocab.index(items, missing="flag"), np.int64)
        return Pairs(users, items, u, i, u >= 0, i >= 0)

    def components(self, user_index, item_index, *, uncertainty: str = "posterior", user_x=None,
                   item_x=None) -> Components:
        """Per-draw predictive components for index pairs (``-1``: unseen).

        Parameters
        ----------
        user_index, item_index : int array, shape (n,)
        uncertainty : {"posterior", "laplace"}
            As in :meth:`predict`.
        user_x, item_x : array, shape (n, F), optional
            Models with features: the pairs' feature rows (:meth:`feature_rows`);
            a new user's (movie's) prior mean is then ``mu + B^T x``. Its
            prior covariance gains the spread of the features it lacks
            (:func:`bayesmf.spread.side_spread`: the implicit columns, and
            the side columns unless ``x`` is given).

        Returns
        -------
        Components
            ``mean`` and ``sd`` of shape (C * S, n), uniform weights. For an
            ordinal model these are the latent utility's (its unit noise
            included), not ratings: :meth:`predict` turns them into stars.
        """
        with_laplace = check_uncertainty(uncertainty) == "laplace"  # a bad value fails before any work
        flat = self.flat_draws()
        user_index = np.asarray(user_index, np.int32)
        item_index = np.asarray(item_index, np.int32)
        total = flat.user_factors.shape[0]
        n = user_index.shape[0]
        known = (user_index >= 0) & (item_index >= 0)
        # The spread of unknown features, for the sides that have new rows here.
        spreads = [self._spread(side, x is not None) if (index < 0).any() else None
                   for side, x, index in (("user", user_x, user_index), ("item", item_x, item_index))]
        mean = np.empty((total, n), np.float64)
        var = np.empty((total, n), np.float64)
        # Known pairs (nearly all of a test set) skip the cold-start terms. Each part is padded with its last
        # pair to a few sizes, so that other pair counts reuse its compiled program; its pairs and feature
        # rows go to the device once, not once per block of draws.
        parts = []
        for rows, fn in ((np.flatnonzero(known), _batched_known), (np.flatnonzero(~known), _batched_moments)):
            if rows.size:
                take = rows[np.minimum(np.arange(padded_count(rows.size)), rows.size - 1)]
                parts.append((rows, fn, [None if a is None else to_device(a[take]) for a in (user_index, item_index, user_x, item_x)]))
        block = max(1, DRAW_BLOCK_CELLS // max(sum(pairs[0].shape[0] for _, _, pairs in parts), 1))
        for start in range(0, total, block):
            draws = jax.tree.map(lambda x: to_device(x[start : start + block]), flat)
            spread = [None if a is None else to_device(a[start : start + block]) for a in spreads]
            for rows, fn, pairs in parts:
                m, v = fn(draws, *pairs[:2]) if fn is _batched_known else fn(draws, *pairs, *spread)
                mean[start : start + block, rows] = np.asarray(m)[:, : rows.size]
                var[start : start + block, rows] = np.asarray(v)[:, : rows.size]
        if with_laplace and total == 1:
            var = var + laplace.pair_variances(self._point(), self._laplace_train(), user_index, item_index)[None]
        noise_sd = 1.0 / np.sqrt(flat.noise_precision.astype(np.float64))
        return Components(mean=mean, sd=np.sqrt(var), noise_sd=noise_sd)

    # -- prediction ------------------------------------------------------------
    def predict(
        self,
        users,
        items=None,
        *,
        prob: float = 0.9,
        clip: bool = False,
        keep_components: bool = False,
        uncertainty: str = "posterior",
        user_features=None,
        item_features=None,
    ) -> Prediction:
        """Predictive ratings with uncertainty for (user, item) pairs by external id.

        Parameters
        ----------
        users, items : array-like, shape (n,)
            External ids (as in the training data). Unknown ids get the
            cold-start prior (flagged in ``known_user`` / ``known_item``).
            Or ``users`` a pandas DataFrame of pairs (``user`` / ``userId``
            and ``item`` / ``movieId`` columns) and ``items`` None.
        prob : float
            Probability of the central interval.
        clip : bool
            Clip mean and interval to the rating scale (off by default: metrics
            should see the model's own predictive).
        keep_components : bool
            Keep the per-draw components (memory C * S * n * 2 floats).
        uncertainty : {"posterior", "laplace"}
            ``"laplace"`` adds, for a point estimate, the conditional variance
            of each known user's factors given the movies (a per-row Laplace
            approximation); with several draws it changes nothing. The same
            option, with the same default, as :func:`bayesmf.recommend`.

        Returns
        -------
        Prediction

        Examples
        --------
        >>> pred = posterior.predict([1, 2], [50, 172])  # doctest: +SKIP
        >>> pred.mean, pred.lower, pred.upper  # doctest: +SKIP
        """
        return self._predict(users, items, check_prob(prob), clip, keep_components, check_uncertainty(uncertainty),
                             user_features, item_features)

    def _predict(self, users, items, prob, clip, keep_components, uncertainty, user_features=None,
                 item_features=None) -> Prediction:
        if isinstance(users, pd.DataFrame) and items is None:
            users, items = as_pairs(users)
        elif items is None:
            raise TypeError("predict needs items (or a DataFrame of (user, item) pairs as its only argument)")
        pairs = self.pairs(users, items)
        x = {side: None if frame is None else self.feature_rows(side, ids, frame, new)
             for side, ids, frame, new in (("user", pairs.users, user_features, ~pairs.known_user),
                                           ("item", pairs.items, item_features, ~pairs.known_item))}
        comps = self.components(pairs.user_index, pairs.item_index, uncertainty=uncertainty, user_x=x["user"],
                                item_x=x["item"])
        if self.config.ordinal:  # a distribution over the stars (bayesmf.ordinal_predictive)
            return ordinal_predictive.prediction(pairs, comps, self.flat_draws().cutpoints, prob=prob, clip=clip,
                                                 scale=self.scale, keep_components=keep_components)
        return prediction(pairs, comps, prob=prob, clip=clip, scale=self.scale, keep_components=keep_components)

    def _spread(self, side: str, side_known: bool):
        """:func:`bayesmf.spread.side_spread`, cached per draws."""
        from bayesmf.spread import side_spread

        key = (side, side_known)
        if self._spreads[0] is not self.draws:
            self._spreads = (self.draws, {})
        if key not in self._spreads[1]:
            self._spreads[1][key] = side_spread(self, side, side_known)
        return self._spreads[1][key]

    def feature_rows(self, side: str, ids, frame=None, rows=None) -> np.ndarray:
        """Feature rows ``x`` of ``ids`` for the prior mean ``mu + B^T x`` of new users or movies.

        Side features are encoded with the training encoder (``self.features``);
        the implicit-feedback columns of a row with no ratings are zero.

        Parameters
        ----------
        side : {"user", "item"}
        ids : array-like, shape (n,)
        frame : DataFrame, optional
            Features indexed by id (as given to ``fit``); it must hold every id in ``rows``.
            None: zero side features (the average row).
        rows : bool array, shape (n,), optional
            The ids to encode (default: all); the others get zero rows.

        Returns
        -------
        array, shape (n, F)
        """
        from bayesmf.data import encode_features

        spec = getattr(self.config, f"{side}_features")
        if spec is None:
            raise ValueError(f"this model has no {side} features: fit it with {side}_features to use them")
        ids = np.atleast_1d(np.asarray(ids))
        rows = np.ones(ids.shape, bool) if rows is None else np.asarray(rows, bool)
        num_other = len(self.item_vocab if side == "user" else self.user_vocab)
        out = np.zeros((ids.shape[0], spec.num_side + (num_other if spec.implicit else 0)), np.float32)
        if frame is not None and spec.num_side and rows.any():
            out[rows, : spec.num_side] = encode_features(self.features[side], frame, ids[rows])
        return out

    def _point(self) -> Params:
        return jax.tree.map(lambda x: jnp.asarray(x[0, 0]), self.draws)

    def _laplace_train(self):
        """The training ratings, which a point estimate's Laplace spread (:mod:`bayesmf.laplace`) is formed from."""
        if self.train is None:
            raise ValueError("uncertainty='laplace' needs the training ratings (posterior.train)")
        return self.train

    # -- what recommend needs beyond the Predictor protocol ----------------------
    def seen_items(self, user) -> np.ndarray:
        """External ids of the movies a user rated in the training data (empty for a new user)."""
        return self._train_rows(user)[0]

    def _train_rows(self, user) -> tuple[np.ndarray, np.ndarray]:
        if self.train is None:
            raise ValueError("this posterior has no training ratings (posterior.train): cannot tell the user's seen movies")
        train = self.train
        u = int(np.asarray(train.user_vocab.index(np.atleast_1d(np.asarray(user)), missing="flag"))[0])
        if u < 0:
            return np.zeros(0, dtype=np.asarray(train.item_vocab.ids).dtype), np.zeros(0)
        rows = np.flatnonzero(np.asarray(train.user_index) == u)
        return np.asarray(train.item_vocab.ids)[np.asarray(train.item_index)[rows]], np.asarray(train.rating, np.float64)[rows]

    def sample_means(self, rng_key: Array, user, item_index: np.ndarray, *, uncertainty: str = "posterior") -> np.ndarray:
        """Mean ratings of movies under one joint posterior sample (Thompson sampling).

        One draw ``s`` uniformly, then the user's factors under ``s``: the
        draw's own for a known user, one draw from the prior
        ``N(mu_L, Lambda_L^-1)`` for a new one. For a point estimate with
        ``uncertainty="laplace"`` the known user's factors are drawn from the
        conditional ``N(L_u, P_u^{-1})`` given the movies.

        Parameters
        ----------
        rng_key : jax.Array
        user
            External user id.
        item_index : int array, shape (n,)
            Known movies.

        Returns
        -------
        array, shape (n,)
        """
        with_laplace = check_uncertainty(uncertainty) == "laplace"
        flat = self.flat_draws()
        num_draws = flat.noise_precision.shape[0]
        key_draw, key_row = jax.random.split(rng_key)
        s = int(jax.random.randint(key_draw, (), 0, num_draws))
        u = int(np.asarray(self.user_vocab.index(np.atleast_1d(np.asarray(user)), missing="flag"))[0])
        draw = jax.tree.map(lambda x: x[s], flat)
        if u >= 0:
            # The user's row: L_u, or (L_u, b_u) with user offsets.
            factors = np.asarray(flat.user_factors[s, u])
            if flat.user_offsets is not None:
                factors = np.append(factors, flat.user_offsets[s, u])
            if num_draws == 1 and with_laplace:
                factors = factors + laplace.conditional_noise(key_row[None], self._point(), self._laplace_train(), [u])[0]
        else:
            precision, mean = user_row_prior(jax.tree.map(jnp.asarray, draw))
            chol = jnp.linalg.cholesky(precision)[None]
            factors = np.asarray(draw_from(key_row, RowPosterior(mean[None], chol)))[0]
        return sampled_means(flat, s, factors, item_index)

    # -- scoring ------------------------------------------------------------------
    def evaluate(self, test, *, levels=metrics.DEFAULT_LEVELS, by=None, expect_cold: bool = False) -> pd.DataFrame:
        """Score the predictive on held-out ratings.

        Parameters
        ----------
        test : bayesmf.data.Ratings or pandas.DataFrame
            Held-out ratings (external ids; unknown users or movies get the
            cold-start prior and are counted, never dropped); a DataFrame's
            columns are found as :func:`bayesmf.data.as_ratings` finds them.
        levels : tuple of float
            Central-interval probabilities whose coverage is reported.
        by : {None, "user_activity", "item_popularity", "cold"} or a sequence of them
            Also break the metrics down by the number of training ratings of
            the user (buckets <=20, 21-50, 51-100, 101-200, >200) or movie, or
            by known / cold-start status. The test pairs are predicted and
            scored once, whatever the number of breakdowns.
        expect_cold : bool
            Cold-start rows are expected (a cold-start split): no warning when
            more than 5% of the rows are cold.

        Returns
        -------
        pandas.DataFrame
            One row per group, indexed by ``(by, group)``: the overall row
            ``("all", "all")`` first, then each breakdown's groups in order.
            Columns ``count``, ``rmse``, ``mae``, ``nll``, ``crps``,
            ``coverage_<100p>`` and ``width_<100p>``; on a star scale
            (``self.scale.step`` set) then the scores of the star masses
            (:mod:`bayesmf.metrics.stars`): ``star_nll``, ``rps`` and per
            level ``set_coverage_<100p>``, ``set_mass_<100p>``,
            ``set_size_<100p>`` of the shortest run of stars with mass at
            least ``p``; a continuous scale has none of these columns.
            ``frame.attrs`` holds ``num_cold_rows``, ``num_cold_users`` and
            ``num_cold_items``. An ordinal model (``config.likelihood ==
            "ordinal"``) is scored from its star distribution: ``nll`` is NaN,
            ``crps`` is ``step * rps`` and the intervals are the star
            distribution's (:mod:`bayesmf.ordinal_predictive`).

        Notes
        -----
        The pairs are scored in chunks on the JAX device
        (:func:`bayesmf.predictive.stream_score_rows`): per chunk the draws'
        means are formed there (known pairs from the draw-minor layout,
        :func:`known_moments_draw_minor`; cold pairs by
        :func:`bayesmf.predictive.pair_moments`) and scored in float64 in
        the same jitted program; no draws x pairs array reaches the host.
        The scores are those of :func:`bayesmf.metrics.score_rows` on
        :meth:`components` to float64 round-off of the float32 means, the
        interval ends to ``metrics.QUANTILE_TOL``; when draws^2 x rows
        exceeds ``metrics.MAX_PAIRS`` the CRPS pair term is the same
        unbiased shift estimate, drawn with a fixed JAX key
        (:data:`CRPS_SEED`) instead of NumPy's generator.

        Examples
        --------
        >>> table = posterior.evaluate(test, by="user_activity")  # doctest: +SKIP
        >>> table.loc[("all", "all"), "rmse"]  # doctest: +SKIP
        """
        if isinstance(test, pd.DataFrame) and len(test) == 0:
            raise ValueError("the test set is empty")
        test = as_ratings(test)
        if len(test) == 0:
            raise ValueError("the test set is empty")
        breakdowns = [] if by is None else [by] if isinstance(by, str) else list(by)
        for name in breakdowns:
            if name not in BREAKDOWNS:
                raise ValueError(f"unknown breakdown {name!r}; expected one of {BREAKDOWNS}")
        pairs = self.pairs(test.user_ids, test.item_ids)
        cold = ~(pairs.known_user & pairs.known_item)
        if not expect_cold and cold.mean() > COLD_WARN_FRACTION:
            warnings.warn(
                f"{int(cold.sum())} of {cold.size} test rows ({cold.mean():.0%}) are cold-start predictions (user or movie "
                f"not in the training data; training ids are {self.user_vocab.ids.dtype} / {self.item_vocab.ids.dtype}, "
                f"test ids {np.asarray(test.user_ids).dtype} / {np.asarray(test.item_ids).dtype}); pass expect_cold=True "
                "if that is intended",
                stacklevel=2,
            )
        groups = {name: self._groups(pairs, name) for name in breakdowns}
        flat, order = self.flat_draws(), np.arange(len(test))
        user_index, item_index = pairs.user_index.copy(), pairs.item_index.copy()
        if self.config.ordinal:  # the star distribution's scores (bayesmf.ordinal_predictive)
            rows = self._ordinal_rows(pairs, test, levels)
        else:
            parts = []
            if not cold.all():
                known = draw_minor(flat.user_factors, flat.item_factors, flat.item_offsets, flat.noise_precision,
                                   flat.user_offsets)
                rows = np.flatnonzero(~cold)  # in movie order: a chunk reads few movies' draws, which stay in cache
                parts.append((rows[stable_order(item_index[rows], len(self.item_vocab))], known_moments_draw_minor, known))
            if cold.any():
                rows = np.flatnonzero(cold)
                params, user_index[rows], item_index[rows] = cold_draws(flat, user_index[rows], item_index[rows])
                parts.append((rows, _draws_cold, jax.tree.map(to_device, params)))
            # Scored and summarized in the parts' order, each part a slice of it: putting every score
            # back in the test set's order was a scatter, 0.8-1.0 s per 1M rows on the CPU host.
            order, ends = np.concatenate([r for r, *_ in parts]), np.cumsum([r.size for r, *_ in parts])
            parts = [(np.arange(end - r.size, end), *rest) for (r, *rest), end in zip(parts, ends)]
            rows = stream_score_rows(jax.random.PRNGKey(CRPS_SEED), flat, user_index[order], item_index[order],
                                     np.asarray(test.rating, np.float64)[order], parts, levels, scale=self.scale)
        frames = {"all": metrics.summarize(rows)}
        frames.update({name: metrics.summarize(rows, labels[order]) for name, labels in groups.items()})
        table = pd.concat(frames, names=["by", "group"])
        table.attrs.update(
            num_cold_rows=int(cold.sum()),
            num_cold_users=int(len(np.unique(np.asarray(test.user_ids)[~pairs.known_user]))),
            num_cold_items=int(len(np.unique(np.asarray(test.item_ids)[~pairs.known_item]))),
        )
        return table

    def _ordinal_rows(self, pairs: Pairs, test, levels) -> dict:
        """Per-row scores of the ordinal model's star distributions (:func:`bayesmf.ordinal_predictive.score_rows`).

        The draws' latent components come from :meth:`components` (host
        arrays of draws x rows), mixed into star masses in chunks.
        """
        comps = self.components(pairs.user_index, pairs.item_index)
        masses = ordinal_predictive.mixture_masses(self.flat_draws().cutpoints, comps)
        return ordinal_predictive.score_rows(np.asarray(test.rating, np.float64), masses, self.scale, levels)

    def _groups(self, pairs: Pairs, by: str):
        if by == "cold":
            labels = np.where(
                pairs.known_user & pairs.known_item, COLD_GROUPS[0],
                np.where(~pairs.known_user & pairs.known_item, COLD_GROUPS[1],
                         np.where(pairs.known_user, COLD_GROUPS[2], COLD_GROUPS[3])),
            )
            return pd.Categorical(labels, categories=COLD_GROUPS, ordered=True)
        if self.train is None:
            raise ValueError(f"by={by!r} needs the training ratings (posterior.train)")
        if by == "user_activity":
            degree, idx, known = self.train.user_degrees(), pairs.user_index, pairs.known_user
        else:
            degree, idx, known = self.train.item_degrees(), pairs.item_index, pairs.known_item
        return metrics.activity_bucket(np.where(known, degree[np.where(known, idx, 0)], 0))

    def __repr__(self) -> str:
        return (f"Posterior(method={self.method!r}, rank={self.rank}, chains={self.num_chains}, "
                f"draws={self.num_draws}, users={len(self.user_vocab)}, items={len(self.item_vocab)})")


# --- thinning -------------------------------------------------------------------------------


def draw_indices(num_draws: int, *, thin: int | None = None, keep: int | None = None) -> np.ndarray:
    """Indices (within each chain) of the draws that thinning keeps.

    Parameters
    ----------
    num_draws : int
        Draws per chain.
    thin : int, optional
        Keep draws ``0, thin, 2 * thin, ...``.
    keep : int, optional
        Keep ``keep`` draws evenly spaced over the chain, first and last
        included (``round(linspace(0, num_draws - 1, keep))``); at most
        ``num_draws``. At most one of ``thin`` and ``keep``.

    Returns
    -------
    numpy.ndarray, shape (k,), int64
        Increasing indices; all of them when neither is given.
    """
    if thin is not None and keep is not None:
        raise ValueError("give thin or num_draws, not both")
    if thin is not None:
        if isinstance(thin, bool) or not isinstance(thin, (int, np.integer)) or thin < 1:
            raise ValueError(f"thin must be a positive integer (keep every thin-th draw), got {thin!r}")
        return np.arange(0, num_draws, int(thin), dtype=np.int64)
    if keep is not None:
        if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or not 1 <= keep <= num_draws:
            raise ValueError(f"num_draws must be an integer from 1 to the draws per chain ({num_draws}), got {keep!r}")
        if keep == 1:
            return np.zeros(1, np.int64)
        return np.round(np.linspace(0, num_draws - 1, int(keep))).astype(np.int64)
    return np.arange(num_draws, dtype=np.int64)


def thinned(posterior, *, thin: int | None = None, num_draws: int | None = None) -> Posterior:
    """The posterior with the draws :func:`draw_indices` keeps in each chain.

    Per-draw ``stats`` (leading ``(chain, draw)`` axes) are thinned alike;
    everything else is shared with ``posterior``. This is what
    :func:`bayesmf.save` writes with ``thin=...`` / ``num_draws=...``.

    Parameters
    ----------
    posterior : Posterior
    thin, num_draws : int, optional
        See :func:`draw_indices` (``num_draws`` is its ``keep``).

    Returns
    -------
    Posterior
        ``posterior`` itself when neither is given.
    """
    if thin is None and num_draws is None:
        return posterior
    c, s = posterior.num_chains, posterior.num_draws
    index = draw_indices(s, thin=thin, keep=num_draws)
    stats = {k: (np.asarray(v)[:, index] if np.shape(v)[:2] == (c, s) else v) for k, v in posterior.stats.items()}
    return Posterior(
        jax.tree.map(lambda x: np.asarray(x)[:, index], posterior.draws),
        posterior.config,
        posterior.user_vocab,
        posterior.item_vocab,
        posterior.scale,
        method=posterior.method,
        stats=stats,
        timing=posterior.timing,
        train=posterior.train,
        titles=posterior.titles,
        info=posterior.info,
        tracked=posterior.tracked,
    )
