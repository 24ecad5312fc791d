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
``epistemic="laplace"`` adds the conditional (per-row Laplace) variance of
the user's factors, ``R_v^T P_u^{-1} R_v``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from bayesmf.model import ModelConfig, Params, predict_mean

Array = jax.Array

# Largest (draws x pairs) block computed at once when predicting; bounds the
# memory of a prediction to ~4 * 3 * DRAW_BLOCK_CELLS bytes.
DRAW_BLOCK_CELLS = 4_000_000


class Components(NamedTuple):
    """Per-draw components of the predictive mixture.

    Attributes
    ----------
    mean : array, shape (num_draws, n)
    sd : array, shape (num_draws, n)
        Total sd of each component (noise and prior spread of unseen sides).
    noise_sd : array, shape (num_draws,)
    """

    mean: np.ndarray
    sd: np.ndarray
    noise_sd: np.ndarray


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Predictive ratings for n (user, item) pairs.

    Attributes
    ----------
    mean, sd : array, shape (n,)
        Predictive mean and sd (noise included).
    epistemic_sd : array, shape (n,)
        The part of ``sd`` not due to rating noise: ``sqrt(sd^2 - noise_sd^2)``.
    noise_sd : array, shape (n,)
    lower, upper : array, shape (n,)
        Central interval of probability ``prob`` (mixture quantiles).
    prob : float
    known_user, known_item : bool array, shape (n,)
        False where the prediction is a cold-start prior.
    users, items : array, shape (n,)
        External ids.
    components : Components or None
        Per-draw mixture components (for exact mixture NLL / CRPS / quantiles).
    """

    mean: np.ndarray
    sd: np.ndarray
    epistemic_sd: np.ndarray
    noise_sd: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    prob: float
    known_user: np.ndarray
    known_item: np.ndarray
    users: np.ndarray
    items: np.ndarray
    components: Components | None = None

    def __len__(self) -> int:
        return self.mean.shape[0]

    def interval(self, prob: float) -> tuple[np.ndarray, np.ndarray]:
        """Central predictive interval at another probability, shape (n,) each."""
        return _interval(self.components, self.mean, self.sd, prob)

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(
            dict(
                user=self.users,
                item=self.items,
                mean=self.mean,
                sd=self.sd,
                lower=self.lower,
                upper=self.upper,
                known_user=self.known_user,
                known_item=self.known_item,
            )
        )


def _interval_prob(prob) -> float:
    """``prob`` as a float in (0, 1), or a ValueError naming it."""
    if isinstance(prob, bool) or not isinstance(prob, (int, float, np.floating, np.integer)) or not 0.0 < prob < 1.0:
        raise ValueError(f"interval probability must be a number in (0, 1), got {prob!r}")
    return float(prob)


def _interval(components, mean, sd, prob):
    prob = _interval_prob(prob)
    from bayesmf import metrics

    if components is None or components.mean.shape[0] == 1:
        return metrics.gaussian_interval(mean, sd, prob)
    return metrics.mixture_interval(components.mean, components.sd, prob)


def component_moments(params: Params, user_index: Array, item_index: Array) -> tuple[Array, Array]:
    """Mean and variance of one draw's predictive for index pairs.

    Parameters
    ----------
    params : Params
        One draw (no leading axes).
    user_index, item_index : int array, shape (n,)
        ``-1`` marks a user / item the model has not seen.

    Returns
    -------
    mean, var : array, shape (n,)
    """
    known_u = user_index >= 0
    known_i = item_index >= 0
    u = jnp.where(known_u, user_index, 0)
    i = jnp.where(known_i, item_index, 0)
    eye = jnp.eye(params.user_mean.shape[0], dtype=params.user_mean.dtype)
    cov_l = jnp.linalg.solve(params.user_precision, eye)
    cov_r = jnp.linalg.solve(params.item_precision, eye)
    lu = params.user_factors[u]
    rv = params.item_factors[i]
    m = params.item_offsets[i]
    noise = 1.0 / params.noise_precision
    offset_var = 1.0 / params.offset_precision

    mean_kk = jnp.sum(lu * rv, -1) + m
    mean_nk = m + rv @ params.user_mean
    var_nk = jnp.einsum("ni,ij,nj->n", rv, cov_l, rv)
    mean_kn = params.offset_mean + lu @ params.item_mean
    var_kn = offset_var + jnp.einsum("ni,ij,nj->n", lu, cov_r, lu)
    mean_nn = params.offset_mean + params.user_mean @ params.item_mean
    var_nn = (
        offset_var
        + params.user_mean @ cov_r @ params.user_mean
        + params.item_mean @ cov_l @ params.item_mean
        + jnp.trace(cov_l @ cov_r)
    )
    mean = jnp.where(known_u, jnp.where(known_i, mean_kk, mean_kn), jnp.where(known_i, mean_nk, mean_nn))
    extra = jnp.where(known_u, jnp.where(known_i, 0.0, var_kn), jnp.where(known_i, var_nk, var_nn))
    return mean, noise + extra


def known_moments(params: Params, user_index: Array, item_index: Array) -> tuple[Array, Array]:
    """:func:`component_moments` for pairs whose user and item are both known.

    The same mean ``<L_u, R_v> + m_v`` and variance ``1 / alpha`` without the
    cold-start branches, whose ``rank x rank`` quadratic forms per pair made
    scoring a test set cost more than the pairs' inner products (11 s for
    200 draws of 20,000 pairs at rank 100). The mean is the likelihood's own
    :func:`bayesmf.model.predict_mean`.

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


_batched_moments = jax.jit(jax.vmap(component_moments, in_axes=(0, None, None)))
_batched_known = jax.jit(jax.vmap(known_moments, in_axes=(0, None, None)))


class Posterior:
    """Draws of the model (or a point estimate) with id vocabularies.

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
    ):
        self.draws = Params(*(np.asarray(x) for x in draws))
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
        return Params(*(x.reshape((-1,) + x.shape[2:]) for x in self.draws))

    # -- ids -----------------------------------------------------------------
    def index_pairs(self, users, items) -> tuple[np.ndarray, np.ndarray]:
        """External ids -> indices, ``-1`` for ids the model has not seen."""
        users = np.atleast_1d(np.asarray(users))
        items = np.atleast_1d(np.asarray(items))
        if users.shape != items.shape:
            raise ValueError(f"users and items must have one shape, got {users.shape} and {items.shape}")
        return self.user_vocab.index(users, missing="flag"), self.item_vocab.index(items, missing="flag")

    # -- prediction ------------------------------------------------------------
    def components(self, user_index, item_index) -> Components:
        """Per-draw predictive components for index pairs (``-1``: unseen).

        Parameters
        ----------
        user_index, item_index : int array, shape (n,)

        Returns
        -------
        Components
            ``mean`` and ``sd`` of shape (C * S, n).
        """
        flat = self.flat_draws()
        user_index = np.asarray(user_index, np.int32)
        item_index = np.asarray(item_index, np.int32)
        total = flat.user_factors.shape[0]
        n = user_index.shape[0]
        known = (user_index >= 0) & (item_index >= 0)
        # Known pairs (nearly all of a test set) skip the cold-start branches.
        parts = [(np.flatnonzero(known), _batched_known), (np.flatnonzero(~known), _batched_moments)]
        mean = np.empty((total, n), np.float64)
        var = np.empty((total, n), np.float64)
        block = max(1, DRAW_BLOCK_CELLS // max(n, 1))
        for start in range(0, total, block):
            draws = Params(*(jnp.asarray(x[start : start + block]) for x in flat))
            for rows, fn in parts:
                if rows.size:
                    m, v = fn(draws, jnp.asarray(user_index[rows]), jnp.asarray(item_index[rows]))
                    mean[start : start + block, rows] = np.asarray(m)
                    var[start : start + block, rows] = np.asarray(v)
        noise_sd = 1.0 / np.sqrt(flat.noise_precision.astype(np.float64))
        return Components(mean=mean, sd=np.sqrt(var), noise_sd=noise_sd)

    def predict(
        self,
        users,
        items,
        *,
        prob: float = 0.9,
        clip: bool = False,
        keep_components: bool = False,
        epistemic: str = "posterior",
    ) -> Prediction:
        """Predictive ratings with uncertainty for (user, item) pairs by external id.

        Parameters
        ----------
        users, items : array-like, shape (n,)
            External ids (as in the training data). Unknown ids get the
            cold-start prior (flagged in ``known_user`` / ``known_item``).
        prob : float
            Probability of the central interval.
        clip : bool
            Clip mean and interval to the rating scale (off by default: metrics
            should see the model's own predictive).
        keep_components : bool
            Keep the per-draw components (memory C * S * n * 2 floats).
        epistemic : {"posterior", "laplace"}
            ``"laplace"`` adds, for a point estimate, the conditional variance
            of each known user's factors given the movies (a per-row Laplace
            approximation); with several draws it is ignored.

        Returns
        -------
        Prediction

        Examples
        --------
        >>> pred = posterior.predict([1, 2], [50, 172])  # doctest: +SKIP
        >>> pred.mean, pred.lower, pred.upper  # doctest: +SKIP
        """
        return self._predict(users, items, _interval_prob(prob), clip, keep_components, epistemic)

    def _predict(self, users, items, prob, clip, keep_components, epistemic) -> Prediction:
        """:meth:`predict`; with ``prob=None`` the interval is not computed
        (``lower`` / ``upper`` are None): :meth:`evaluate` scores its own
        levels, and mixture quantiles are most of its cost."""
        if epistemic not in ("posterior", "laplace"):
            raise ValueError(f"unknown epistemic mode {epistemic!r}; expected 'posterior' or 'laplace'")
        users = np.atleast_1d(np.asarray(users))
        items = np.atleast_1d(np.asarray(items))
        u, i = self.index_pairs(users, items)
        comps = self.components(u, i)
        if epistemic == "laplace" and comps.mean.shape[0] == 1:
            comps = comps._replace(sd=np.sqrt(comps.sd**2 + self._laplace_var(u, i)[None]))
        weights = None
        mean = comps.mean.mean(axis=0) if weights is None else weights @ comps.mean
        var = (comps.sd**2).mean(axis=0) + comps.mean.var(axis=0)
        sd = np.sqrt(var)
        noise_var = np.mean(comps.noise_sd**2)
        epistemic_sd = np.sqrt(np.maximum(var - noise_var, 0.0))
        lower = upper = None
        if prob is not None:
            lower, upper = _interval(comps, mean, sd, prob)
        if clip:
            mean = self.scale.clip(mean)
            lower, upper = (None if x is None else self.scale.clip(x) for x in (lower, upper))
        return Prediction(
            mean=mean,
            sd=sd,
            epistemic_sd=epistemic_sd,
            noise_sd=np.full(mean.shape, np.sqrt(noise_var)),
            lower=lower,
            upper=upper,
            prob=prob,
            known_user=u >= 0,
            known_item=i >= 0,
            users=users,
            items=items,
            components=comps if keep_components else None,
        )

    def _laplace_var(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        """``R_v^T P_u^{-1} R_v`` for known pairs of a point estimate (0 elsewhere)."""
        if self.train is None:
            raise ValueError("epistemic='laplace' needs the training ratings (posterior.train)")
        from bayesmf.conjugate import row_covariance, row_posterior
        from bayesmf.layout import build_layout, gram_and_rhs

        p = Params(*(jnp.asarray(x[0, 0]) for x in self.draws))
        layout = build_layout(self.train.user_index, self.train.item_index, self.train.num_users, self.train.num_items, "bucket")
        response = jnp.zeros(len(self.train), p.item_factors.dtype)
        gram, rhs = gram_and_rhs(layout, p.item_factors, response)
        cov = np.asarray(row_covariance(row_posterior(p.user_precision, p.user_mean, gram, rhs, p.noise_precision)))
        known = (u >= 0) & (i >= 0)
        rv = np.asarray(p.item_factors)[np.where(known, i, 0)]
        var = np.einsum("ni,nij,nj->n", rv, cov[np.where(known, u, 0)], rv)
        return np.where(known, var, 0.0)

    def evaluate(self, test, *, levels=(0.5, 0.8, 0.9, 0.95), by=None):
        """Score the predictive on held-out ratings.

        Parameters
        ----------
        test : bayesmf.data.Ratings
            Held-out ratings (external ids; unknown users or movies get the
            cold-start prior and are counted, never dropped).
        levels : tuple of float
            Central-interval probabilities whose coverage is reported.
        by : {None, "user_activity", "item_popularity", "cold"} or a sequence of them
            Also break the metrics down by the number of training ratings of
            the user (buckets <=20, 21-50, 51-100, 101-200, >200) or movie, or
            by known / cold-start status. The test pairs are predicted and
            scored once, whatever the number of breakdowns.

        Returns
        -------
        dict, (dict, pandas.DataFrame) or (dict, dict of str to pandas.DataFrame)
            Metrics (rmse, mae, nll, crps, coverage_*, width_*) plus counts;
            with one ``by``, also its per-group table; with a sequence, a
            table per breakdown, keyed by its name.
        """
        from bayesmf import metrics

        if len(test) == 0:
            raise ValueError("the test set is empty")
        breakdowns = [] if by is None else [by] if isinstance(by, str) else list(by)
        pred = self._predict(test.user_ids, test.item_ids, None, False, True, "posterior")
        groups = {name: self._groups(pred, name) for name in breakdowns}  # bad names fail before scoring
        y = np.asarray(test.rating, np.float64)
        comps = pred.components
        multi = comps.mean.shape[0] > 1
        kw = dict(mu=comps.mean, sds=comps.sd) if multi else {}
        rows = metrics.score_rows(y, pred.mean, pred.sd, levels=levels, **kw)
        result = metrics.aggregate_rows(rows)
        result.update(
            num_test=int(len(test)),
            num_cold_rows=int(np.sum(~(pred.known_user & pred.known_item))),
            num_cold_users=int(len(np.unique(test.user_ids[~pred.known_user]))),
            num_cold_items=int(len(np.unique(test.item_ids[~pred.known_item]))),
        )
        if by is None:
            return result
        tables = {name: metrics.group_rows(labels, rows) for name, labels in groups.items()}
        return (result, tables[by]) if isinstance(by, str) else (result, tables)

    def _groups(self, pred: Prediction, by: str) -> np.ndarray:
        from bayesmf import metrics

        if by == "cold":
            return np.where(
                pred.known_user & pred.known_item, "known",
                np.where(~pred.known_user & pred.known_item, "new user",
                         np.where(pred.known_user, "new item", "new user+item")),
            )
        if self.train is None:
            raise ValueError(f"by={by!r} needs the training ratings (posterior.train)")
        if by == "user_activity":
            degree = self.train.user_degrees()
            idx, known = self.user_vocab.index(pred.users, missing="flag"), pred.known_user
        elif by == "item_popularity":
            degree = self.train.item_degrees()
            idx, known = self.item_vocab.index(pred.items, missing="flag"), pred.known_item
        else:
            raise ValueError(f"unknown breakdown {by!r}; expected 'user_activity', 'item_popularity' or 'cold'")
        counts = np.where(known, degree[np.where(known, idx, 0)], 0)
        return metrics.activity_bucket(counts)

    # -- delegation to the modules that own each concept ------------------------------
    def to_arviz(self, pairs=None, observed=None, *, keep_factors: bool = True, probe_pairs=None):
        """ArviZ 1.x DataTree (see :func:`bayesmf.storage.to_datatree`)."""
        from bayesmf import storage

        return storage.to_datatree(self, pairs, observed, keep_factors=keep_factors, probe_pairs=probe_pairs)

    def save(self, path):
        """Write the whole fitted model to one netCDF file, atomically (:func:`bayesmf.storage.save`)."""
        from bayesmf import storage

        return storage.save(self, path)

    @staticmethod
    def load(path) -> "Posterior":
        """Read a model written by :meth:`save` (:func:`bayesmf.storage.load`)."""
        from bayesmf import storage

        return storage.load(path)

    def fold_in(self, ratings_per_user, **kwargs):
        """Posterior predictive of new users from a few ratings, without refitting
        (:func:`bayesmf.coldstart.fold_in_users`)."""
        from bayesmf import coldstart

        return coldstart.fold_in_users(self, ratings_per_user, **kwargs)

    def recommend(self, user, k: int = 10, **kwargs):
        """Top-k movies for a user (:func:`bayesmf.recommend.recommend`)."""
        from bayesmf import recommend

        return recommend.recommend(self, user, k, **kwargs)

    def similar_items(self, item, k: int = 10, **kwargs):
        """Movies closest to ``item`` (:func:`bayesmf.recommend.similar_items`)."""
        from bayesmf import recommend

        return recommend.similar_items(self, item, k, **kwargs)

    def diagnostics(self, **kwargs):
        """R-hat and ESS of identifiable quantities (:func:`bayesmf.diagnostics.summary`)."""
        from bayesmf import diagnostics

        return diagnostics.summary(self, **kwargs)

    def __repr__(self) -> str:
        return (
            f"Posterior(method={self.method!r}, rank={self.rank}, chains={self.num_chains}, draws={self.num_draws}, "
            f"users={len(self.user_vocab)}, items={len(self.item_vocab)})"
        )
