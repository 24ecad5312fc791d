"""bayesmf: Bayesian matrix factorization of ratings in JAX.

Fit ``r_uv ~ Normal(<L_u, R_v> + m_v, 1/alpha)`` by MAP, blocked Gibbs (BPMF),
NUTS or mean-field VI, and predict ratings with uncertainty, including the
mean-based cold-start prior for new users and fold-in without refitting.

Examples
--------
>>> import bayesmf
>>> sim = bayesmf.synthetic.movielens_like(0, num_users=60, num_items=40, num_ratings=900, min_per_user=5)
>>> model = bayesmf.BayesMF(rank=2, method="gibbs", num_samples=20, num_warmup=10, progress_bar=False)
>>> posterior = model.fit(0, sim.ratings)  # doctest: +SKIP
"""

__version__ = "0.1.0"

from bayesmf import data, metrics, split, synthetic
from bayesmf.data import RatingScale, Ratings, Vocabulary, load_movielens
from bayesmf.estimator import BayesMF
from bayesmf.model import FixedPriors, HyperPriors, ModelConfig
from bayesmf.posterior import Posterior, Prediction

__all__ = [
    "BayesMF",
    "FixedPriors",
    "HyperPriors",
    "ModelConfig",
    "Posterior",
    "Prediction",
    "RatingScale",
    "Ratings",
    "Vocabulary",
    "data",
    "load_movielens",
    "metrics",
    "split",
    "synthetic",
    "__version__",
]
