"""Precisions of the MAP estimate chosen on validation ratings, and the MAP fit on ratings.

The layer above the MAP engine (:mod:`bayesmf.engines.map`, which finds the
mode at given precisions): it decides which precisions, on which ratings.

:func:`tune` picks ``lambda_L / alpha = lambda_R / alpha`` (or the two
separately) and ``tau_m / alpha`` by validation RMSE on a log scale, each fit
warm-started from a nearby earlier solution, all through one compiled loop
(:func:`bayesmf.engines.map.make_solver`) that the refit of
:func:`fit_ratings` shares. Two searches (``search``):
``"quick"`` (the default) walks the coarse factor grid from its middle toward
lower validation RMSE until it rises, then refines the factor ratio by
parabolic interpolation, holding the offset ratio at its middle value;
``"thorough"`` searches the offset ratio's line first and evaluates the whole
coarse factor line (:mod:`bayesmf.ratio_search` holds the searches).
Separate user and item ratios rarely pay: the objective is invariant under ``L -> cL, R -> R / c`` with
``lambda_L -> lambda_L / c^2, lambda_R -> lambda_R c^2``, so the MAP
predictions depend on the product ``lambda_L lambda_R`` only.

:func:`fit_ratings` (the MAP path of :class:`bayesmf.BayesMF`) tunes on a
validation split carved from the training ratings
(:func:`bayesmf.split.validation_split`), estimates the noise precision from
the validation residuals, and refits on all the ratings, warm-started from
the sub-train fit (its rows moved to the full vocabularies by external id).

Examples
--------
>>> import jax, bayesmf
>>> from bayesmf.model import ModelConfig
>>> from bayesmf.synthetic import movielens_like
>>> train = movielens_like(0, num_users=30, num_items=20, num_ratings=300, rank=2).ratings  # doctest: +SKIP
>>> result = fit_ratings(jax.random.PRNGKey(0), train, ModelConfig(rank=2, priors="fixed"))  # doctest: +SKIP
>>> result.info["ratios"]  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from bayesmf import ordinal
from bayesmf.engines import map as map_engine
from bayesmf.engines.common import EngineResult
from bayesmf.featurerows import FeatureRows, with_empty_entries
from bayesmf.memory import to_device
from bayesmf.model import (
    FixedPriors,
    ModelConfig,
    ModelData,
    latent_sites,
    model_data_from_ratings,
    pair_mean,
    star_model_data,
    with_features,
)
from bayesmf.ordinal_model import star_grid
from bayesmf.ratio_search import COARSE_GRIDS, Point, adaptive_search, check_search, grid_points
from bayesmf.split import validation_split

Array = jax.Array

# Stopping tolerances of the tuned path (the objective per rating fell by less
# than this per iteration over the last FTOL_WINDOW iterations; data of the
# compiled loop, so the tuning fits and the refit share one compilation).
# Tuning fits only rank the points: on MovieLens-100K u1 at rank 10 a
# warm-started fit stopped after ~50 iterations at 1e-5 against ~120 at 1e-6
# and ~500 at 1e-7 (DEFAULT_FTOL; unscaled path), its validation RMSE within ~1e-3 of theirs,
# the spread of fits to 1e-7 from two initializations. The refit runs to the
# same tolerance, so that the model returned is stopped where the fits that
# chose its precisions were: further iterations need not help, and on the
# ML-1M shape (rank 32 on a rank-8 truth) they hurt -- at ratio 30 the
# validation RMSE went from 0.960 after 200 iterations to 0.984 after 800
# on the unscaled path (benchmarks/map_speed.py). Since L-BFGS runs over
# Jacobi-scaled coordinates (bayesmf.engines.map_objective.jacobi_scales)
# a fit at this tolerance stops much nearer the mode (at ML-1M shape, ratio
# 10: objective 4.47447 after 93 iterations against 4.47684 after 432), so
# that early stop no longer regularizes the rank-32 fits: their tuned test
# RMSE there is 0.9892 against 0.9799 before, at a lower objective.
TUNE_FTOL = 1e-5
REFIT_FTOL = TUNE_FTOL
# A rank direction counts as switched off by the regularization when its
# singular value is below this fraction of the largest (switched-off
# directions shrink to ~1e-3 of it and below in float32).
ALIVE_RATIO = 1e-2


# -- tuning on validation ratings -----------------------------------------------------------


def _ratios(priors: FixedPriors, config: ModelConfig | None = None) -> Point:
    a = priors.noise_precision
    point = Point(priors.user_precision / a, priors.item_precision / a, priors.offset_precision / a)
    specs = [] if config is None else [s for s in (config.user_features, config.item_features) if s is not None]
    return point._replace(side=specs[0].link_precision, implicit=specs[0].implicit_precision) if specs else point


def _user_offset_ratio(priors: FixedPriors) -> float:
    """``tau_b / alpha``: the user offsets' precision relative to the noise, held while tuning."""
    return priors.user_offset_precision / priors.noise_precision


def _validation_rmse(latent: dict, data: ModelData, config: ModelConfig, pairs, ratings, star_values=None) -> float:
    """RMSE of the validation ratings' predictive means; with the ordinal likelihood the mean of the star
    distribution (``star_values`` (K,): each star's rating)."""
    return float(_validation_rmse_program(latent, data.empirical_offsets, config, pairs, ratings, star_values))


@functools.partial(jax.jit, static_argnums=2)
def _validation_rmse_program(latent: dict, empirical_offsets, config: ModelConfig, pairs, ratings, star_values):
    """:func:`_validation_rmse` as one compiled program: its eager operations compiled one by one took 0.4 s
    of a tuned MAP fit on MovieLens-100K u1."""
    offsets = latent.get("item_offsets", empirical_offsets)
    mean = pair_mean(latent["user_factors"], latent["item_factors"], offsets, pairs[0], pairs[1],
                     latent.get("user_offsets"))
    if config.ordinal:
        mean = ordinal.star_masses(latent["cutpoints"], mean) @ jnp.asarray(star_values, mean.dtype)
    return jnp.sqrt(jnp.mean((ratings - mean) ** 2))


def _noise_precision(validation_rmse: float, config: ModelConfig) -> float:
    """The plug-in noise precision: ``1 / RMSE^2`` of the validation residuals, or 1 (the latent scale's unit)
    with the ordinal likelihood, whose noise is fixed."""
    return 1.0 if config.ordinal else 1.0 / validation_rmse**2


def _all_components_alive(latent: dict) -> bool:
    """Whether every one of the rank directions of both factor matrices is in
    use (smallest singular value above :data:`ALIVE_RATIO` of the largest).

    The squared singular values are the eigenvalues of the (rank, rank) Gram
    in float64 (resolved down to ~1e-8 of the largest singular value, far
    below the threshold): 8-10 ms against 50-140 ms for the SVD of ML-10M
    shape's 69,878 x 32 user factors, once per tuning fit."""
    for name in ("user_factors", "item_factors"):
        x = np.asarray(latent[name], np.float64)
        squared = np.linalg.eigvalsh(x.T @ x)[-min(x.shape):]  # ascending; the SVD's min(n, rank) of them
        if not squared[0] > ALIVE_RATIO**2 * squared[-1]:
            return False
    return True


def _padded(data: ModelData, pairs, ratings, star_values=None) -> tuple[ModelData, Array]:
    """``data`` with the validation ratings appended at weight 0, and the weights (nnz + n_valid,).

    The objective with these weights is that of ``data`` (the statistics the
    model reads from the data -- degrees, means -- stay those of ``data``),
    and the arrays have the shapes of all the ratings, so the tuning fits and
    the refit on all ratings share one compiled loop.
    """
    dtype = data.rating.dtype

    def appended(field, values):  # on the host: eager concatenations compiled one program each
        return to_device(np.concatenate([np.asarray(field), np.asarray(values, field.dtype)]))

    padded = data._replace(
        user_index=appended(data.user_index, pairs[0]),
        item_index=appended(data.item_index, pairs[1]),
        rating=appended(data.rating, ratings),
    )
    if data.star is not None:  # the ordinal likelihood reads the stars (star_model_data's stand-in ratings)
        stars = np.abs(np.asarray(ratings)[:, None] - np.asarray(star_values)[None, :]).argmin(axis=1)
        padded = padded._replace(star=appended(data.star, stars), rating=appended(data.rating, stars - 0.5))
    # Implicit-feedback rows have an entry per distinct training pair: the refit's have as many
    # more as there are validation pairs (when pairs are distinct), so pad them with zero entries
    # too, or the refit compiles the loop again (4.6 s of a tiny implicit-feedback MAP fit's 14 s).
    for side in ("user_features", "item_features"):
        rows = getattr(padded, side)
        if isinstance(rows, FeatureRows):
            padded = padded._replace(**{side: with_empty_entries(rows, len(ratings))})
    weights = to_device(np.concatenate([np.ones(data.nnz, dtype), np.zeros(len(ratings), dtype)]))
    return padded, weights


class _Tuner:
    """Fits at precision ratios on one data set, cached, each warm-started
    from the nearest evaluated point (on a log scale) that cannot trap it.

    Strong factor regularization switches rank directions off entirely (on
    MovieLens-100K at rank 10, a ratio of 30 leaves 3 of 10 in use and 100
    none): a switched-off direction sits at the saddle point ``L_k = R_k = 0``
    where the gradient vanishes, so a fit started there never uses it again.
    A start is therefore eligible when all its directions are in use, or
    when its factor regularization is no stronger than the target's
    (shrinkage only switches directions off as the ratio grows)."""

    def __init__(self, init, data, config, solver, pairs, ratings, progress_bar, star_values=None):
        self.data, self.config, self.solver = data, config, solver
        self.star_values = star_values
        self.pairs = (to_device(pairs[0], jnp.int32), to_device(pairs[1], jnp.int32))
        self.ratings = to_device(ratings, data.rating.dtype)
        self.init = init
        self.fits: dict = {}
        self.rows: list = []
        self.bar = tqdm(desc="map tune", unit="fit", leave=False, disable=None if progress_bar else True)

    def _start(self, point: Point) -> dict:
        target = np.log(np.asarray(point))
        best, best_distance = self.init, np.inf
        for fit in self.fits.values():
            weaker = fit["point"].user <= point.user * (1 + 1e-9) and fit["point"].item <= point.item * (1 + 1e-9)
            if fit["alive"] or weaker:
                distance = np.abs(np.log(np.asarray(fit["point"])) - target).sum()
                if distance < best_distance:
                    best, best_distance = fit["latent"], distance
        return best

    def __call__(self, point: Point) -> float:
        key = point.key()
        if key not in self.fits:
            start = time.perf_counter()
            latent, info = map_engine.solve(self.solver, self._start(point),
                                            point.priors(user_offset=_user_offset_ratio(self.config.fixed)),
                                            config=point.links(self.config))
            rmse = _validation_rmse(latent, self.data, self.config, self.pairs, self.ratings, self.star_values)
            seconds = time.perf_counter() - start
            self.fits[key] = dict(point=point, latent=latent, rmse=rmse, info=info, alive=_all_components_alive(latent))
            self.rows.append(
                dict(
                    user_ratio=point.user,
                    item_ratio=point.item,
                    offset_ratio=point.offset,
                    **self._link_columns(point),
                    valid_rmse=rmse,
                    iterations=info["iterations"],
                    seconds=seconds,
                )
            )
            self.bar.update(1)
            self.bar.set_postfix(valid_rmse=f"{rmse:.4f}")
        return self.fits[key]["rmse"]

    def _link_columns(self, point: Point) -> dict:
        return {f"{name}_ratio": getattr(point, name) for name in _link_coordinates(self.config)}

    def best(self) -> dict:
        return min(self.fits.values(), key=lambda fit: fit["rmse"])

    def best_config(self) -> tuple[dict, ModelConfig]:
        """The best fit and its config: its precisions, the noise from its validation RMSE, and its link precisions."""
        best = self.best()
        priors = best["point"].priors(_noise_precision(best["rmse"], self.config), self.config.fixed.mean_precision,
                                      _user_offset_ratio(self.config.fixed))
        return best, best["point"].links(self.config).replace(fixed=priors)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows).sort_values("valid_rmse", kind="stable").reset_index(drop=True)


def _link_coordinates(config: ModelConfig) -> tuple:
    """The link-precision coordinates the search takes: ``"side"`` and ``"implicit"`` where a side has them."""
    specs = [s for s in (config.user_features, config.item_features) if s is not None]
    return tuple(name for name, present in (("side", any(s.num_side for s in specs)),
                                             ("implicit", any(s.implicit for s in specs))) if present)


def tune(
    rng_key: Array,
    data: ModelData,
    valid_pairs,
    valid_ratings,
    config: ModelConfig,
    *,
    solver: str = "lbfgs",
    grid: dict | None = None,
    shared: bool = True,
    search: str = "quick",
    optimizer=None,
    max_iters: int | None = None,
    tol: float = map_engine.DEFAULT_TOL,
    ftol: float = TUNE_FTOL,
    layout: str = "auto",
    progress_bar: bool = False,
    star_values=None,
) -> dict:
    """Select the precisions by validation RMSE.

    The MAP depends on the precisions only through the ratios
    ``rho = lambda / alpha``; the search runs over ``rho_L`` and ``rho_R``
    (equal when ``shared``) and ``rho_m`` on a log scale. Without ``grid`` it
    starts on a coarse grid (:data:`COARSE_GRIDS`): with ``search="quick"``
    a walk along the factor ratio's grid from its middle value in the
    direction that lowers the validation RMSE, the offset ratio held at its
    middle value; with ``"thorough"`` the offset ratio's line at the middle
    factor ratio, then the factor ratio's whole line at the best offset ratio,
    each extended past an end while the best point sits on it. Then
    :data:`bayesmf.ratio_search.REFINE_STEPS` steps of successive parabolic
    interpolation in the log factor ratio;
    every fit is warm-started from the nearest evaluated point with weaker
    factor regularization, and one compiled loop serves all of them (with
    ``"lbfgs"`` and ``"adam"`` the training ratings are padded with the
    validation ratings at weight 0, so that the loop has the shapes of the
    refit on all of them in :func:`fit_ratings`). Typically 4-5 fits
    (quick) or 6-8 (thorough), at the tolerance :data:`TUNE_FTOL`.

    ``shared=False`` also searches ``rho_L`` and ``rho_R`` separately, which
    rarely pays: the objective is invariant under ``L -> cL, R -> R/c`` with
    ``lambda_L -> lambda_L / c^2, lambda_R -> lambda_R c^2``, so the MAP
    predictions depend on ``rho_L rho_R`` only; the split matters only for the
    prior spread of cold-start users and movies.

    Parameters
    ----------
    rng_key : jax.Array
        Initial factors of the first fit.
    data : ModelData
        Training ratings (without the validation ratings).
    valid_pairs : (user_index, item_index) int arrays, shape (n_valid,) each
        Validation pairs, indexed like ``data``.
    valid_ratings : float array, shape (n_valid,)
    config : ModelConfig
        ``priors="fixed"``; the ratios of ``config.fixed`` fill the
        coordinates an explicit ``grid`` leaves out (and the offset ratio with
        ``"empirical"`` offsets, where it does not change the fit).
    solver : {"lbfgs", "adam", "als"}
    grid : dict, optional
        Explicit ratios to try (all combinations, no refinement):
        ``{"factor": [...], "offset": [...]}`` or
        ``{"user": [...], "item": [...], "offset": [...]}``.
    shared : bool
        Tie ``rho_L = rho_R`` in the adaptive search.
    search : {"quick", "thorough"}
        The adaptive search (ignored with ``grid``): see above.
    optimizer, max_iters, tol, layout
        As in :func:`bayesmf.engines.map.fit`.
    ftol : float
        As in :func:`bayesmf.engines.map.fit`; default :data:`TUNE_FTOL`.
    progress_bar : bool
        A ``tqdm.auto`` bar with one tick per fit (no output when stderr is
        not a terminal).
    star_values : array, shape (K,), optional
        With the ordinal likelihood (``data`` from
        :func:`bayesmf.model.star_model_data`): each star's rating, for the
        validation RMSE of the star distribution's mean. Its noise precision
        stays 1.

    Returns
    -------
    dict
        ``priors``: the best :class:`FixedPriors`, scaled so that
        ``noise_precision`` is the validation estimate
        ``1 / mean(validation residual^2)`` of the best fit (the ratios, hence
        the mode, are the tuned ones); ``ratios``: the best ``rho`` (dict);
        ``validation_rmse``; ``table``: a DataFrame with one row per fit
        (``user_ratio``, ``item_ratio``, ``offset_ratio``, ``valid_rmse``,
        ``iterations``, ``seconds``), sorted by ``valid_rmse``; ``result``: the
        best fit as an :class:`EngineResult` (on ``data``, at ``priors``).

    Examples
    --------
    >>> out = tune(jax.random.PRNGKey(0), train_data, (vu, vi), vr, config)  # doctest: +SKIP
    >>> out["priors"], out["table"].head()  # doctest: +SKIP
    """
    start_time = time.perf_counter()
    tuner = _search(
        rng_key, data, valid_pairs, valid_ratings, config, solver=solver, grid=grid, shared=shared, search=search,
        options=dict(optimizer=optimizer, max_iters=max_iters, tol=tol, ftol=ftol, layout=layout),
        progress_bar=progress_bar, star_values=star_values,
    )
    best, best_config = tuner.best_config()
    priors = best_config.fixed
    result = map_engine.make_result(
        best["latent"], data, best_config, solver, dict(best["info"]), time.perf_counter() - start_time
    )
    return dict(
        priors=priors,
        ratios=best["point"]._asdict(),
        validation_rmse=best["rmse"],
        table=tuner.table(),
        result=result,
    )


def _search(rng_key, data, valid_pairs, valid_ratings, config, *, solver, grid, shared, options, progress_bar,
            search="quick", pad_to=None, star_values=None) -> _Tuner:
    """The search of :func:`tune`; returns the tuner with every fit.

    ``pad_to``: the ``(num_users, num_items)`` of the data the caller will
    refit on; the training ratings are padded (:func:`_padded`) when the
    solver takes rating weights and these match ``data``'s (always, without
    ``pad_to``)."""
    map_engine.check_config(config)
    map_engine.check_solver(solver)
    check_search(search)
    if config.ordinal and (star_values is None or data.star is None):
        raise ValueError("the ordinal likelihood needs the stars: data from star_model_data and star_values")
    valid_u = np.asarray(valid_pairs[0])
    valid_i = np.asarray(valid_pairs[1])
    valid_r = np.asarray(valid_ratings, dtype=np.float64)
    if not (valid_u.shape == valid_i.shape == valid_r.shape) or valid_r.ndim != 1 or valid_r.size == 0:
        raise ValueError("valid_pairs and valid_ratings must be non-empty 1-D arrays of one length")
    if valid_u.min() < 0 or valid_u.max() >= data.num_users or valid_i.min() < 0 or valid_i.max() >= data.num_items:
        raise ValueError("validation pairs must index users and items of the training data (no cold rows)")
    init = map_engine.init_latent(rng_key, data, config)
    if solver != "als" and (pad_to is None or pad_to == (data.num_users, data.num_items)):
        padded, weights = _padded(data, (valid_u, valid_i), valid_r, star_values)
        compiled = map_engine.make_solver(padded, config, solver, weights=weights, **options)
    else:
        compiled = map_engine.make_solver(data, config, solver, **options)
    estimated = config.offsets == "estimated"
    tuner = _Tuner(init, data, config, compiled, (valid_u, valid_i), valid_r, progress_bar, star_values)
    middle = {name: grid[len(grid) // 2] for name, grid in COARSE_GRIDS.items()}
    start = Point(middle["factor"], middle["factor"], middle["offset"] if estimated else _ratios(config.fixed).offset,
                   middle["side"], middle["implicit"])
    try:
        if grid is not None:
            for point in grid_points(grid, _ratios(config.fixed, config), estimated):
                tuner(point)
        else:
            coordinates = ("factor",) if shared else ("user", "item")
            coordinates += ("offset",) if estimated else ()
            coordinates += _link_coordinates(config)
            adaptive_search(tuner, start, coordinates, search)
    finally:
        tuner.bar.close()
    return tuner


# -- fit on ratings: validation split, plug-in noise, refit --------------------------------------


def _transfer(latent: dict, source_vocabs, target_vocabs, base: dict) -> dict:
    """Copy the rows of ``latent`` (indexed by ``source_vocabs``) into ``base``
    (indexed by ``target_vocabs``) by external id (on the host: the same values, without compiling a scatter
    per site)."""
    out = dict(base)
    rows = {"user": target_vocabs[0].index(source_vocabs[0].ids), "item": target_vocabs[1].index(source_vocabs[1].ids)}
    for name, side in (("user_factors", "user"), ("item_factors", "item"), ("item_offsets", "item"),
                       ("user_offsets", "user")):
        if name in base:
            values = np.array(base[name])
            values[rows[side]] = np.asarray(latent[name])
            out[name] = to_device(values)
    for name in ("user_mean", "item_mean"):
        if name in base:
            out[name] = latent[name]
    # A link matrix's implicit rows are indexed by the other side's vocabulary:
    # it carries over when the vocabularies are the same (the validation split
    # keeps every user and movie), else it starts from the base.
    same = all(len(s) == len(t) for s, t in zip(source_vocabs, target_vocabs))
    for name in ("user_link", "item_link"):
        if name in base and same:
            out[name] = latent[name]
    return out


def _feature_data(data: ModelData, ratings, config: ModelConfig, sides: dict, source) -> ModelData:
    """``data`` (of ``ratings``) with the feature rows of ``config``: the side rows of ``sides`` (indexed by
    ``source``'s vocabularies) taken by id, the implicit rows built from ``ratings``' own pairs."""
    rows = {}
    for side, vocab, source_vocab in (("user", ratings.user_vocab, source.user_vocab),
                                      ("item", ratings.item_vocab, source.item_vocab)):
        if sides.get(side) is not None:
            rows[side] = np.asarray(sides[side])[source_vocab.index(vocab.ids)]
    return with_features(data, config, rows.get("user"), rows.get("item"))


def _fit_sub_train(rng_key, sub_data, pairs, valid_rating, config, *, tuned, solver, grid, shared, search,
                   progress_bar, options, pad_to, star_values=None) -> tuple:
    """Steps 2 and 3 of :func:`fit_ratings` on the sub-train data: the
    config (precisions: tuned ratios, or those of ``config``, times the
    validation noise precision; tuned link precisions), the sub-train fit's
    latent sites, the tuning table and the validation RMSE."""
    if tuned:
        tuner = _search(
            rng_key, sub_data, pairs, valid_rating, config,
            solver=solver, grid=grid, shared=shared, search=search, options=options, progress_bar=progress_bar,
            pad_to=pad_to,
            star_values=star_values,
        )
        best, best_config = tuner.best_config()
        return best_config, best["latent"], tuner.table(), best["rmse"]
    sub_fit = map_engine.fit(rng_key, sub_data, config, solver=solver, progress_bar=progress_bar, **options)
    latent = {k: jnp.asarray(getattr(sub_fit.draws, k)[0, 0]) for k in latent_sites(config)}
    validation_rmse = _validation_rmse(
        latent, sub_data, config, tuple(jnp.asarray(p, jnp.int32) for p in pairs), jnp.asarray(valid_rating),
        star_values,
    )
    priors = _ratios(config.fixed).priors(_noise_precision(validation_rmse, config), config.fixed.mean_precision,
                                          _user_offset_ratio(config.fixed))
    return config.replace(fixed=priors), latent, pd.DataFrame(), validation_rmse


def fit_ratings(
    rng_key: Array,
    ratings,
    config: ModelConfig,
    *,
    solver: str = "lbfgs",
    tune: bool = True,
    validation_fraction: float = 0.1,
    progress_bar: bool = False,
    seed: int = 0,
    grid: dict | None = None,
    shared: bool = True,
    search: str = "quick",
    optimizer=None,
    max_iters: int | None = None,
    tol: float = map_engine.DEFAULT_TOL,
    ftol: float | None = None,
    layout: str = "auto",
    tune_ftol: float | None = None,
    sides: dict | None = None,
) -> EngineResult:
    """MAP fit of :class:`bayesmf.data.Ratings` with validation-tuned precisions.

    1. Carve a validation set from ``ratings``
       (:func:`bayesmf.split.validation_split`, every user and movie keeps a
       training rating).
    2. With ``tune``, select the precision ratios on it (:func:`tune`);
       otherwise use the ratios of ``config.fixed``.
    3. Estimate the noise precision as ``1 / mean(residual^2)`` over the
       validation ratings of the sub-train fit at those ratios. Training
       residuals would be optimistic: the fit has adapted to them (on
       MovieLens-100K u1 the training RMSE is 0.79 against 0.935 held out), and
       a predictive sd from them would be far too narrow (with the
       validation estimate, 90% intervals cover 89.8% of the u1 test set).
    4. Refit on all of ``ratings`` at the same ratios, warm-started from the
       sub-train fit. With ``tune`` and ``"lbfgs"`` / ``"adam"`` the refit
       runs the tuning fits' compiled loop (:func:`tune` pads the sub-train
       ratings to the shapes of all of them), so a tuned fit compiles once.

    The returned precisions are the ratios times the estimated noise
    precision, so that ``Params`` and ``info["config"]`` describe one
    coherent model (the prior spread of cold-start users and movies is
    ``1 / lambda``), and the mode is the one tuned.

    Parameters
    ----------
    rng_key : jax.Array
    ratings : bayesmf.data.Ratings
    config : ModelConfig
        ``priors="fixed"``.
    solver : {"lbfgs", "adam", "als"}
    tune : bool
    validation_fraction : float in (0, 1)
    progress_bar : bool
        Progress bars (``tqdm.auto``, no output when stderr is not a
        terminal) over the tuning fits and for the refit.
    seed : int
        Seed of the validation split.
    grid, shared, search
        Passed to :func:`tune`.
    optimizer, max_iters, tol, layout
        Passed to :func:`bayesmf.engines.map.fit` and :func:`tune`.
    ftol : float, optional
        ``ftol`` of the refit (and of the sub-train fit without ``tune``);
        default :data:`REFIT_FTOL` with ``tune``,
        :data:`bayesmf.engines.map.DEFAULT_FTOL` without.
    tune_ftol : float, optional
        ``ftol`` of the tuning fits (default :data:`TUNE_FTOL`): they only
        rank the points. The tolerance is data of the compiled loop, so the
        refit at ``ftol`` compiles nothing new.
    sides : dict, optional
        ``{"user": array (num_users, F_u), "item": array (num_items, F_v)}``:
        the encoded side features, rows in ``ratings``' vocabulary order,
        when ``config`` has :class:`bayesmf.model.FeatureSpec` s. The tuning
        fits take the implicit rows (``FeatureSpec.implicit``) of the
        sub-train pairs, the refit those of all ``ratings``; each side's
        ``link_precision`` is held (a ratio to the factor precision).

    Returns
    -------
    EngineResult
        The refit on all ratings (indices of ``ratings``), with
        ``noise_precision`` the validation estimate. ``info`` adds
        ``config`` (with the tuned :class:`FixedPriors`), ``tuning`` (the
        table as records, empty with ``tune=False``), ``ratios``,
        ``noise_source = "validation residuals"``, ``validation_rmse``,
        ``num_validation``; ``timing`` adds ``tune_seconds`` and
        ``refit_seconds``.

    Examples
    --------
    >>> result = fit_ratings(jax.random.PRNGKey(0), train, ModelConfig(rank=10, priors="fixed"))  # doctest: +SKIP
    >>> result.info["config"].fixed, np.sqrt(1 / result.draws.noise_precision)  # doctest: +SKIP
    """
    start_time = time.perf_counter()
    map_engine.check_config(config)
    map_engine.check_solver(solver)
    check_search(search)
    if ftol is None:
        ftol = REFIT_FTOL if tune else map_engine.DEFAULT_FTOL
    options = dict(optimizer=optimizer, max_iters=max_iters, tol=tol, ftol=ftol, layout=layout)
    tune_options = dict(options, ftol=TUNE_FTOL if tune_ftol is None else tune_ftol)
    key_tune, key_refit = jax.random.split(rng_key)
    split = validation_split(ratings, validation_fraction, seed)
    sub, valid = split.train, split.test
    sides = sides or {}
    star_values = star_grid(ratings.scale) if config.ordinal else None
    as_data = star_model_data if config.ordinal else model_data_from_ratings
    sub_data = _feature_data(as_data(sub), sub, config, sides, ratings)
    pairs = (sub.user_vocab.index(valid.user_ids), sub.item_vocab.index(valid.item_ids))
    final_config, sub_latent, table, validation_rmse = _fit_sub_train(
        key_tune, sub_data, pairs, valid.rating, config,
        tuned=tune, solver=solver, grid=grid, shared=shared, search=search, progress_bar=progress_bar,
        options=tune_options if tune else options, pad_to=(ratings.num_users, ratings.num_items),
        star_values=star_values,
    )
    tune_seconds = time.perf_counter() - start_time

    data = _feature_data(as_data(ratings), ratings, config, sides, ratings)
    init = _transfer(
        sub_latent, (sub.user_vocab, sub.item_vocab), (ratings.user_vocab, ratings.item_vocab),
        map_engine.init_latent(key_refit, data, final_config),
    )
    # Unit weights: the same objective as none, and the tuning fits' compiled loop.
    weights = np.ones(data.nnz, data.rating.dtype) if tune and solver != "als" else None
    result = map_engine.fit(
        key_refit, data, final_config, solver=solver, init_params=init, progress_bar=progress_bar, weights=weights,
        **options,
    )
    info = dict(
        result.info,
        config=final_config,
        tuning=table.to_dict("records"),
        ratios=_ratios(final_config.fixed, final_config)._asdict(),
        noise_source="validation residuals",
        validation_rmse=validation_rmse,
        num_validation=int(len(valid)),
        validation_fraction=validation_fraction,
        validation_seed=seed,
        tuned=bool(tune),
        search=search if tune and grid is None else None,
    )
    timing = dict(
        fit_seconds=time.perf_counter() - start_time,
        tune_seconds=tune_seconds,
        refit_seconds=result.timing["fit_seconds"],
    )
    return result._replace(info=info, timing=timing)
