"""bayesmf: Bayesian matrix factorization of ratings in JAX.

Fit ``r_uv ~ Normal(<L_u, R_v> + m_v, 1/alpha)`` by MAP, blocked Gibbs (BPMF),
NUTS or mean-field VI, and predict ratings with uncertainty, including the
mean-based cold-start prior for new users and fold-in without refitting.

The names below are what a user needs; they are imported on first use, so
``import bayesmf`` (and the command line's ``--help``) does not pay for JAX.

Examples
--------
>>> import bayesmf
>>> sim = bayesmf.synthetic.movielens_like(0, num_users=60, num_items=40, num_ratings=900, min_per_user=5)
>>> model = bayesmf.BayesMF(rank=2, method="gibbs", num_samples=20, num_warmup=10, progress_bar=False)
>>> posterior = model.fit(0, sim.ratings)  # doctest: +SKIP
>>> bayesmf.recommend(posterior, 1, k=5, strategy="lcb")  # doctest: +SKIP
>>> bayesmf.save(posterior, "model.nc"); bayesmf.load("model.nc")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module that owns it (or (module, name there)).
_EXPORTS = {
    "BayesMF": "bayesmf.estimator",
    "FixedPriors": "bayesmf.model",
    "HyperPriors": "bayesmf.model",
    "ModelConfig": "bayesmf.model",
    "Posterior": "bayesmf.posterior",
    "Prediction": "bayesmf.predictive",
    "Predictor": "bayesmf.predictive",
    "FoldIn": "bayesmf.coldstart",
    "fold_in_users": "bayesmf.coldstart",
    "fold_in_items": "bayesmf.coldstart",
    "recommend": "bayesmf.ranking",
    "similar_items": "bayesmf.similar",
    "evaluate_ranking": "bayesmf.ranking",
    "save": "bayesmf.storage",
    "load": "bayesmf.storage",
    "to_arviz": ("bayesmf.storage", "to_datatree"),
    "RatingScale": "bayesmf.data",
    "Ratings": "bayesmf.data",
    "Vocabulary": "bayesmf.data",
    "load_movielens": "bayesmf.data",
    "read_ratings": "bayesmf.data",
    "FeatureEncoder": "bayesmf.data",
    "fit_features": "bayesmf.data",
    "encode_features": "bayesmf.data",
    "load_movielens_features": "bayesmf.data",
    "cross_validate": "bayesmf.crossval",
    "compare": "bayesmf.crossval",
}
_SUBMODULES = ("data", "diagnostics", "metrics", "split", "synthetic", "storage", "coldstart", "ranking", "predictive", "crossval")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attr = _EXPORTS[name] if isinstance(_EXPORTS[name], tuple) else (_EXPORTS[name], name)
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"bayesmf.{name}")
    raise AttributeError(f"module 'bayesmf' has no attribute {name!r}")


def __dir__():
    return __all__
