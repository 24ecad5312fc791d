"""The user-facing object: validate input, run an engine, return a Posterior.

Examples
--------
>>> import jax, bayesmf
>>> train = bayesmf.Ratings.from_arrays([1, 1, 2], [10, 20, 10], [4.0, 3.0, 5.0])
>>> model = bayesmf.BayesMF(rank=2, method="gibbs", num_samples=20, num_warmup=10, progress_bar=False)
>>> posterior = model.fit(jax.random.PRNGKey(0), train)  # doctest: +SKIP
>>> posterior.predict([1, 3], [20, 10]).mean  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import time

import jax
import numpy as np

from bayesmf.choices import DEFAULT_METHOD, MAP_METHODS, METHODS, SAMPLERS
from bayesmf.data import as_ratings
from bayesmf.model import (
    FeatureSpec,
    FixedPriors,
    HyperPriors,
    ModelConfig,
    Params,
    model_data_from_ratings,
    star_model_data,
    with_features,
)
from bayesmf.ordinal_model import star_grid
from bayesmf.posterior import Posterior
# MAP's default: learned factor means (beta = 2, BPMF's beta0), which give
# every user a shrunk bias L_u . mu_R; see FixedPriors.
MAP_FIXED_PRIORS = FixedPriors(mean_precision=2.0)


def as_key(rng_key) -> jax.Array:
    """A JAX key from a key or an int seed (a ``ValueError`` for anything else)."""
    if isinstance(rng_key, (int, np.integer)) and not isinstance(rng_key, bool):
        return jax.random.PRNGKey(int(rng_key))
    if isinstance(rng_key, jax.Array) and (
        jax.dtypes.issubdtype(rng_key.dtype, jax.dtypes.prng_key) or (rng_key.dtype == np.uint32 and rng_key.shape == (2,))
    ):
        return rng_key
    raise ValueError(f"rng_key must be a JAX key (jax.random.PRNGKey(seed)) or an int seed, got {rng_key!r}")


def start_from(rng_key, posterior: Posterior, ratings, config: ModelConfig) -> Params:
    """A sampler's starting state on ``ratings`` from a fitted model: its last
    draw of chain 0, rows matched by external id.

    Users and movies the model knows keep their factors and offsets; new
    ones are drawn from that draw's prior, ``L_u ~ N(mu_L, Lambda_L^-1)``,
    ``R_v ~ N(mu_R, Lambda_R^-1)``, ``m_v ~ N(mu_m, 1 / lambda_m)`` (with
    empirical offsets, the new data's movie means). Hyperparameters and
    the noise precision are the draw's.

    Parameters
    ----------
    rng_key : jax.Array
    posterior : Posterior
        The fitted model; its rank, offsets and priors must be ``config``'s.
    ratings : bayesmf.data.Ratings
        The ratings of the new fit.
    config : ModelConfig

    Returns
    -------
    Params
        ``user_factors`` (num_users, rank), ``item_factors`` (num_items,
        rank), ``item_offsets`` (num_items,) over ``ratings``' vocabularies.
    """
    from bayesmf.conjugate import row_draw

    old = posterior.config
    for name in ("rank", "offsets", "priors", "user_offsets", "likelihood", "num_stars"):
        if getattr(old, name) != getattr(config, name):
            raise ValueError(
                f"init_from: the model has {name}={getattr(old, name)!r}, this fit {name}={getattr(config, name)!r}; "
                "continue with the model's settings"
            )
    draw = jax.tree.map(lambda x: np.asarray(x[0, -1]), posterior.draws)
    dtype = draw.user_factors.dtype
    key_users, key_items, key_offsets = jax.random.split(rng_key, 3)

    def rows(key, known, vocab, old_vocab, mean, precision):
        index = old_vocab.index(vocab.ids, missing="flag")
        new = index < 0
        out = known[np.maximum(index, 0)].copy()
        if new.any():
            n, d = int(new.sum()), known.shape[1]
            zeros = np.zeros((n, d), dtype)
            out[new] = np.asarray(row_draw(key, precision, mean, np.zeros((n, d, d), dtype), zeros, np.ones((), dtype)))
        return out

    users = rows(key_users, draw.user_factors, ratings.user_vocab, posterior.user_vocab, draw.user_mean,
                 draw.user_precision)
    items = rows(key_items, draw.item_factors, ratings.item_vocab, posterior.item_vocab, draw.item_mean,
                 draw.item_precision)
    if config.offsets == "empirical":
        offsets = np.asarray(model_data_from_ratings(ratings, dtype=dtype).empirical_offsets)
    else:
        offsets = rows(key_offsets, draw.item_offsets[:, None], ratings.item_vocab, posterior.item_vocab,
                       np.reshape(draw.offset_mean, (1,)), np.reshape(draw.offset_precision, (1, 1)))[:, 0]
    user_offsets = draw.user_offsets
    if user_offsets is not None:  # b_u ~ N(0, 1/tau_b) for a new user
        user_offsets = rows(jax.random.fold_in(key_users, 1), draw.user_offsets[:, None], ratings.user_vocab,
                            posterior.user_vocab, np.zeros(1, dtype), np.reshape(draw.user_offset_precision, (1, 1)))[:, 0]
    return draw._replace(user_factors=users, item_factors=items, item_offsets=offsets, user_offsets=user_offsets)


# Floating-point types of the samplers' arithmetic (BayesMF(dtype=...)).
DTYPES = ("float32", "float64")

# Samplers' warm-up when num_warmup is left at None.
DEFAULT_WARMUP = 50


class BayesMF:
    """Bayesian matrix factorization of ratings: the estimator.

    Construct it with the model and engine settings (stored unchanged, as
    scikit-learn's estimators do: :meth:`get_params` / :meth:`set_params`),
    then :meth:`fit` returns a :class:`~bayesmf.posterior.Posterior`, the
    fitted model (also kept as ``self.posterior_``): predict, evaluate,
    recommend, fold in and save go through it.

    Parameters
    ----------
    rank : int
        Number of latent factors.
    method : {"map", "map-adam", "als", "gibbs", "nuts", "svi"}
        ``"map"``: L-BFGS on the log joint with per-group precisions tuned on a
        validation split carved from the training data (``"map-adam"``: Adam;
        ``"als"``: alternating exact conditional modes). ``"gibbs"``: blocked
        Gibbs (BPMF). ``"nuts"``: NumPyro NUTS on the same model. ``"svi"``:
        mean-field variational inference (AutoNormal). Default ``"gibbs"``,
        as on the command line (:data:`bayesmf.choices.DEFAULT_METHOD`).
    offsets : {"estimated", "empirical"}
    user_offsets : bool
        Give each user an offset ``b_u ~ N(0, 1/tau_b)`` as well
        (:class:`bayesmf.model.ModelConfig`); off by default (the plain model).
        MAP holds ``tau_b`` at ``fixed.user_offset_precision`` (not tuned).
    implicit : bool
        Implicit feedback in both sides' priors (SVD++-style, Macau's prior:
        :class:`bayesmf.model.FeatureSpec`): each user's factors get the prior
        mean ``mu_L + Y^T n_u`` from the movies they rated in the training
        data, each movie's from its raters. Gibbs needs ``priors="hyper"``;
        MAP (``"map"``, ``"map-adam"``, not ``"als"``) holds each group's link
        precision at its ratio to the factor precision
        (``FeatureSpec.link_precision``, not tuned). Side features come to
        :meth:`fit`.
    likelihood : {"gaussian", "ordinal"}
        ``"ordinal"``: the ordered probit over the stars of the training
        ratings' scale (:mod:`bayesmf.ordinal`; the scale needs a step and
        every rating on its grid); fitted by ``"gibbs"``, ``"nuts"``, ``"map"`` or
        ``"map-adam"`` (MAP tunes the factor precisions on the validation RMSE
        of the star distribution's mean; the noise stays 1).
    priors : {"hyper", "fixed"} or None
        None picks ``"fixed"`` for MAP-type methods (tuned precisions) and
        ``"hyper"`` (BPMF) for the samplers and SVI.
    fixed : FixedPriors, optional
        Precisions for ``priors="fixed"`` (MAP tunes them unless ``tune=False``).
        Default: :data:`MAP_FIXED_PRIORS` (learned factor means) for the MAP
        methods, ``FixedPriors()`` (plain PMF, zero means) for the samplers.
    hyper : HyperPriors, optional
    num_samples : int
        Kept draws (samplers, and SVI's draws from its guide).
    num_warmup : int or None
        Samplers' warm-up; None means 50. SVI takes none (its optimizer
        steps are ``num_steps``).
    num_chains, thin : int
        Samplers only.
    tune : bool
        MAP only: select the precisions on a validation split; the engine
        option ``search="quick"`` (default) or ``"thorough"`` picks the
        search (:func:`bayesmf.tuning.tune`; the thorough one also tunes the
        offset ratio and fits the whole coarse factor line, about 1.4x the
        time at the ML-1M shape).
    validation_fraction : float
        MAP only: fraction of the training ratings held out for tuning and for
        the plug-in noise sd.
    progress_bar : bool
    dtype : {"float32", "float64"}
        Floating-point type of the samplers' arithmetic (Gibbs, NUTS, SVI).
        float64 runs the fit with JAX's 64-bit mode on for its duration
        (``jax.enable_x64``) and keeps float64 draws; it costs about 2x the
        time and memory on the CPU and far more on most GPUs
        (``benchmarks/scale.py --dtype float64``). For ill-conditioned
        problems (high rank, weak priors) where float32 Cholesky factors
        fail. Predictions from the draws are formed in float32 unless 64-bit
        mode is on.
    devices : int, sequence of jax.Device or jax.sharding.Mesh, optional
        Gibbs only: run the sweep sharded by rows over this many local
        devices (or these devices, or this mesh; after
        ``jax.distributed.initialize`` ``jax.devices()`` spans every
        process): :mod:`bayesmf.engines.sharding`. The draws equal the
        one-device run's up to float32 reassociation. None: one device.
    **engine_options
        Passed to the engine (e.g. ``layout="bucket"`` for Gibbs,
        ``num_steps`` for SVI, ``max_tree_depth`` for NUTS).

    Examples
    --------
    >>> model = BayesMF(rank=10, method="gibbs", num_samples=100)
    >>> model
    BayesMF(rank=10, num_samples=100)
    >>> model.set_params(rank=20).get_params()["rank"]
    20
    """

    def __init__(
        self,
        rank: int = 10,
        method: str = DEFAULT_METHOD,
        *,
        offsets: str = "estimated",
        user_offsets: bool = False,
        implicit: bool = False,
        likelihood: str = "gaussian",
        priors: str | None = None,
        fixed: FixedPriors | None = None,
        hyper: HyperPriors | None = None,
        num_samples: int = 200,
        num_warmup: int | None = None,
        num_chains: int = 1,
        thin: int = 1,
        tune: bool = True,
        validation_fraction: float = 0.1,
        progress_bar: bool = True,
        dtype: str = "float32",
        devices=None,
        **engine_options,
    ):
        self.rank = rank
        self.method = method
        self.offsets = offsets
        self.user_offsets = user_offsets
        self.implicit = implicit
        self.likelihood = likelihood
        self.priors = priors
        self.fixed = fixed
        self.hyper = hyper
        self.num_samples = num_samples
        self.num_warmup = num_warmup
        self.num_chains = num_chains
        self.thin = thin
        self.tune = tune
        self.validation_fraction = validation_fraction
        self.progress_bar = progress_bar
        self.dtype = dtype
        self.devices = devices
        self.engine_options = dict(engine_options)
        self._check()

    # -- parameters (scikit-learn's protocol) --------------------------------------
    _PARAMS = (
        "rank", "method", "offsets", "user_offsets", "implicit", "likelihood", "priors", "fixed", "hyper", "num_samples",
        "num_warmup", "num_chains", "thin",
        "tune", "validation_fraction", "progress_bar", "dtype", "devices",
    )

    def get_params(self, deep: bool = True) -> dict:
        """The constructor arguments, as given (engine options included)."""
        return {**{name: getattr(self, name) for name in self._PARAMS}, **self.engine_options}

    def set_params(self, **params) -> "BayesMF":
        """Change constructor arguments (checked as the constructor checks them); returns ``self``."""
        before = dict(self.__dict__, engine_options=dict(self.engine_options))
        for name, value in params.items():
            if name in self._PARAMS:
                setattr(self, name, value)
            else:
                self.engine_options[name] = value
        try:
            self._check()
        except Exception:
            self.__dict__.update(before)  # a rejected change leaves the estimator as it was
            raise
        return self

    def __repr__(self) -> str:
        defaults = BayesMF()
        shown = [f"{name}={value!r}" for name, value in self.get_params().items()
                 if name in ("rank",) or name not in self._PARAMS or value != getattr(defaults, name)]
        return f"BayesMF({', '.join(shown)})"

    def _check(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        for name in ("num_samples", "num_chains", "thin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_warmup is not None and (
            isinstance(self.num_warmup, bool) or not isinstance(self.num_warmup, (int, np.integer)) or self.num_warmup < 0
        ):
            raise ValueError(f"num_warmup must be an integer >= 0 or None, got {self.num_warmup!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.dtype != "float32" and self.method in MAP_METHODS:
            raise ValueError(f"dtype={self.dtype!r} is for the samplers (gibbs, nuts, svi); method={self.method!r} "
                             "runs in float32")
        if self.devices is not None and self.method != "gibbs":
            raise ValueError(f"devices= shards the Gibbs sweep only; method={self.method!r} runs on one device")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.likelihood == "ordinal" and self.method not in ("gibbs", "nuts", "map", "map-adam"):
            raise ValueError(f"likelihood='ordinal' is fitted by method='gibbs', 'nuts', 'map' or 'map-adam', "
                             f"not {self.method!r}")
        self.config  # checks offsets, priors and the prior settings

    @property
    def config(self) -> ModelConfig:
        """The model the settings describe (priors and precisions resolved for the method)."""
        map_like = self.method in MAP_METHODS
        priors = self.priors if self.priors is not None else ("fixed" if map_like else "hyper")
        fixed = self.fixed if self.fixed is not None else (MAP_FIXED_PRIORS if map_like else FixedPriors())
        return ModelConfig(rank=self.rank, offsets=self.offsets, priors=priors, fixed=fixed,
                           hyper=self.hyper or HyperPriors(), user_offsets=self.user_offsets,
                           likelihood=self.likelihood)

    def _with_stars(self, ratings, config: ModelConfig) -> ModelConfig:
        """``config`` with the ordinal likelihood's number of stars from the training ratings' scale."""
        if self.likelihood != "ordinal":
            return config
        return config.replace(num_stars=len(star_grid(ratings.scale)))

    def fit(self, rng_key, ratings, *, titles: dict | None = None, track=None, checkpoint=None,
            checkpoint_every: int | None = None, init_from: Posterior | None = None, user_features=None,
            item_features=None) -> Posterior:
        """Fit to training ratings.

        Parameters
        ----------
        rng_key : jax.Array or int
        ratings : bayesmf.data.Ratings or pandas.DataFrame
            Training ratings (compact vocabularies: every id has a rating); a
            DataFrame's columns are found as :func:`bayesmf.read_ratings`
            finds a file's (``user`` / ``userId``, ``item`` / ``movieId``,
            ``rating``; :func:`bayesmf.data.as_ratings`).
        titles : dict, optional
            External item id -> title, kept for recommendations.
        user_features, item_features : pandas.DataFrame, optional
            Side features indexed by user (movie) id, one row per id: a
            categorical column is one-hot encoded (every level), a numeric
            one standardised, both centred on the training rows (:func:`bayesmf.data.fit_features`; the encoder is
            kept in ``posterior.features`` and saved with the model). They
            enter the factors' prior mean through Macau's prior (samplers with
            ``priors="hyper"``); every training id needs a row (a NaN value
            imputes the training mean). New users' (movies') features then
            give their prior mean: ``posterior.predict(...,
            user_features=frame)``, ``fold_in_users(..., user_features=frame)``.
        track : (users, items) external ids, optional
            Pairs (e.g. a test set) whose predictive moments Gibbs and NUTS
            stream during sampling and SVI computes over its guide draws (see
            ``Posterior.tracked``; the MAP methods have no draws to stream);
            unknown ids are ignored there (predict them through
            ``Posterior.predict``).
        checkpoint : str or path-like, optional
            Gibbs and NUTS: a file where the run saves its progress (one
            ``numpy.savez`` archive, replaced atomically; no pickle). If the
            process is killed, calling ``fit`` again with the same seed,
            ratings, settings and file resumes the run from it, and the
            draws are the same as an uninterrupted run's (bit for bit on the
            CPU). A file written by another seed, other ratings or other
            settings is refused with a ``ValueError`` that names it. The
            file is deleted when the run finishes.
        checkpoint_every : int, optional
            Sweeps (Gibbs) or NUTS steps between saves, warm-up included,
            rounded up to the engine's chunk of draws; without it the run
            saves about once a minute (``driver.CHECKPOINT_SECONDS``).
        init_from : Posterior, optional
            Gibbs and NUTS: continue from a fitted model (e.g. one loaded
            with :func:`bayesmf.load`) on new or more ratings, instead of
            starting over. Every chain starts from its last draw of chain 0:
            users and movies it knows keep their factors (and offsets);
            new ones start from a draw of that draw's prior (the factor
            means and precisions, the offset mean and precision), see
            :func:`start_from`. Its rank, offsets and priors must be this
            estimator's. The warm-up still runs (set ``num_warmup`` small
            to save sweeps).

        Returns
        -------
        Posterior
            Also stored as ``self.posterior_``.
        """
        rng_key = as_key(rng_key)
        if (checkpoint is not None or checkpoint_every is not None) and self.method not in SAMPLERS:
            raise ValueError(
                f"method={self.method!r} takes no checkpoint: only the samplers (gibbs, nuts) save and resume runs"
            )
        if checkpoint_every is not None and checkpoint is None:
            raise ValueError("checkpoint_every needs a checkpoint file: pass checkpoint=PATH")
        if init_from is not None and self.method not in SAMPLERS:
            raise ValueError(f"method={self.method!r} takes no init_from: only the samplers (gibbs, nuts) continue a model")
        ratings = as_ratings(ratings)
        if len(ratings) == 0:
            raise ValueError("cannot fit to empty ratings")
        start = time.perf_counter()
        config, encoders, sides = self._features(ratings, user_features, item_features)
        config = self._with_stars(ratings, config)
        if self.method in MAP_METHODS:
            if track is not None:
                raise ValueError(
                    f"method={self.method!r} gives a point estimate: there are no draws to stream the tracked pairs "
                    "over; predict them with posterior.predict(users, items)"
                )
            result = self._fit_map(rng_key, ratings, config, sides)
        else:
            init_params = None
            if init_from is not None:
                key_start, rng_key = jax.random.split(rng_key)
                if config != self._with_stars(ratings, self.config):
                    raise ValueError("init_from does not continue a model with features; fit it again")
                init_params = start_from(key_start, init_from, ratings, config)
            with jax.enable_x64(True) if self.dtype == "float64" else contextlib.nullcontext():
                result = self._fit_sampler(rng_key, ratings, track, checkpoint, checkpoint_every, init_params,
                                           config, sides)
        timing = dict(result.timing)
        timing["fit_seconds"] = time.perf_counter() - start
        self.posterior_ = Posterior(
            result.draws,
            config if "config" not in result.info else result.info["config"],
            ratings.user_vocab,
            ratings.item_vocab,
            ratings.scale,
            method=self.method,
            stats=result.stats,
            timing=timing,
            train=ratings,
            titles=titles,
            info={k: v for k, v in result.info.items() if k != "config"},
            tracked=result.tracked,
            features=encoders,
        )
        return self.posterior_

    def _features(self, ratings, user_frame, item_frame):
        """The config with each side's :class:`FeatureSpec`, the side encoders and the encoded training rows."""
        from bayesmf.data import encode_features, fit_features

        specs, encoders, sides = {}, {}, {}
        for side, frame, vocab in (("user", user_frame, ratings.user_vocab), ("item", item_frame, ratings.item_vocab)):
            num_side = 0
            if frame is not None:
                encoders[side] = fit_features(frame, vocab)
                sides[side] = encode_features(encoders[side], frame, vocab)
                num_side = sides[side].shape[1]
            if num_side or self.implicit:
                specs[side] = FeatureSpec(num_side=num_side, implicit=bool(self.implicit))
        config = self.config.replace(user_features=specs.get("user"), item_features=specs.get("item"))
        return config, encoders, sides

    def _fit_sampler(self, rng_key, ratings, track, checkpoint=None, checkpoint_every=None, init_params=None,
                     config=None, sides=None):
        config = self.config if config is None else config
        sides = sides or {}
        if self.method == "svi":
            # SVI draws independent draws from one fitted guide: no chains to
            # run, no warm-up to discard (its optimizer steps are
            # ``num_steps``), nothing to thin. Refuse those settings rather
            # than drop them.
            for name, value, default in (("num_chains", self.num_chains, 1), ("thin", self.thin, 1),
                                         ("num_warmup", self.num_warmup, None)):
                if value != default:
                    raise ValueError(
                        f"method='svi' takes no {name} (got {value}): it fits one guide and draws num_samples "
                        f"independent draws from it; set its optimizer steps with num_steps"
                    )
        if config.ordinal:
            data = star_model_data(ratings, dtype=np.dtype(self.dtype))
        else:
            data = model_data_from_ratings(ratings, dtype=np.dtype(self.dtype))
        data = with_features(data, config, sides.get("user"), sides.get("item"))
        track_pairs = None
        if track is not None:
            u = ratings.user_vocab.index(np.asarray(track[0]), missing="flag")
            i = ratings.item_vocab.index(np.asarray(track[1]), missing="flag")
            keep = (u >= 0) & (i >= 0)
            # All-cold pairs have nothing to stream (their predictive is the prior).
            track_pairs = (u[keep], i[keep]) if keep.any() else None
        common = dict(
            num_samples=int(self.num_samples), track_pairs=track_pairs, progress_bar=self.progress_bar, **self.engine_options
        )
        if self.method == "svi":
            from bayesmf.engines import svi

            return svi.fit(rng_key, data, config, **common)
        warmup = DEFAULT_WARMUP if self.num_warmup is None else int(self.num_warmup)
        chains = dict(num_warmup=warmup, num_chains=int(self.num_chains), thin=int(self.thin))
        if checkpoint is not None:
            chains.update(checkpoint=checkpoint, checkpoint_every=checkpoint_every)
        if init_params is not None:
            chains.update({"init_params" if self.method == "gibbs" else "init": init_params})
        if self.method == "gibbs":
            from bayesmf.engines import gibbs

            if self.devices is not None:
                chains.update(devices=self.devices)
            return gibbs.sample(rng_key, data, config, **chains, **common)
        from bayesmf.engines import nuts

        return nuts.sample(rng_key, data, config, **chains, **common)

    def _fit_map(self, rng_key, ratings, config, sides):
        from bayesmf import tuning

        solver = {"map": "lbfgs", "map-adam": "adam", "als": "als"}[self.method]
        return tuning.fit_ratings(
            rng_key,
            ratings,
            config,
            sides=sides,
            solver=solver,
            tune=self.tune,
            validation_fraction=self.validation_fraction,
            progress_bar=self.progress_bar,
            **self.engine_options,
        )
