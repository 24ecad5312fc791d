"""The choices the API and the command line accept, each defined once.

This module imports nothing, so the command line can build its parser (and
answer ``--help``) without importing JAX or pandas; the modules that act on a
choice import it from here.
"""

#: Inference engines of :class:`bayesmf.BayesMF`.
METHODS = ("map", "map-adam", "als", "gibbs", "nuts", "svi")
#: Engines that draw from the posterior by MCMC (R-hat is meaningful for them).
SAMPLERS = ("gibbs", "nuts")
#: Engines that give a point estimate.
MAP_METHODS = ("map", "map-adam", "als")
#: How MAP tunes its precisions on the validation split (:func:`bayesmf.tuning.tune`): ``"quick"``
#: brackets the factor ratio and holds the offset ratio; ``"thorough"`` also searches the offset ratio
#: and the whole coarse factor grid. The first is the default.
MAP_SEARCHES = ("quick", "thorough")
#: The default engine, in Python and on the command line alike.
DEFAULT_METHOD = "gibbs"

#: MovieLens-100K's predefined splits.
PREDEFINED_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
#: Every split :func:`bayesmf.split.make_split` makes.
SPLIT_NAMES = PREDEFINED_SPLITS + ("random", "kfold", "leave-k-out", "cold-users", "cold-items", "temporal", "temporal-user")

#: Ranking strategies of :func:`bayesmf.recommend`.
STRATEGIES = ("mean", "lcb", "ucb", "thompson", "prob_above")
#: Which sd lcb / ucb use.
SPREADS = ("epistemic", "predictive")
#: Distances of :func:`bayesmf.similar_items`.
SIMILARITY_METRICS = ("invariant", "euclidean", "profile")
#: Where a point estimate's epistemic uncertainty comes from (predict and recommend).
UNCERTAINTIES = ("posterior", "laplace")
#: Breakdowns of :meth:`bayesmf.Posterior.evaluate`.
BREAKDOWNS = ("user_activity", "item_popularity", "cold")
#: Dtypes a model file can store the factor draws in (:func:`bayesmf.save`; int8: per-row 8-bit codes,
#: :mod:`bayesmf.compact`; bfloat16 is not an HDF5 / netCDF type).
FACTOR_DTYPES = ("int8", "float16", "float32", "float64")
