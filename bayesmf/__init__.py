"""bayesmf: Bayesian matrix factorization of ratings in JAX."""

__version__ = "0.1.0"
