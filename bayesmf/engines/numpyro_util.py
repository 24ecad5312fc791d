"""What the NumPyro engines (NUTS and SVI) share: the model with its constant
normalizers computed on the host, NumPyro's checks off while their programs
are traced, and the init strategy.

Both engines run :func:`bayesmf.model.numpyro_model`; these helpers change how
fast it compiles and runs and where it starts, never its density.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import init_to_median
from numpyro.primitives import Messenger
from scipy import special

from bayesmf.model import ModelConfig

# Prior draws whose elementwise median starts each chain (NumPyro's default).
MEDIAN_INIT_DRAWS = 15


class _ConstantGamma(dist.Gamma):
    """``Gamma(a, b)`` with constant ``a, b`` whose log normalizer
    ``a log b - log Gamma(a)`` is computed once in NumPy (see
    :func:`host_normalized`)."""

    def __init__(self, concentration: float, rate: float):
        super().__init__(concentration, rate)
        self._shape, self._rate = float(concentration), float(rate)
        self._log_norm = self._shape * math.log(self._rate) - float(special.gammaln(self._shape))

    def log_prob(self, value):
        return (self._shape - 1.0) * jnp.log(value) - self._rate * value + self._log_norm


class _ConstantWishart(dist.Wishart):
    """``Wishart(nu, w I)`` with constant ``nu, w`` whose log normalizer
    ``-nu p/2 log 2 - nu p/2 log w - log Gamma_p(nu/2)`` is computed once in
    NumPy (see :func:`host_normalized`)::

        log p(Lambda) = (nu - p - 1)/2 log|Lambda| - tr(Lambda)/(2 w) + log normalizer
    """

    def __init__(self, nu: float, w0_scale: float, dim: int):
        super().__init__(nu, scale_matrix=w0_scale * np.eye(dim))
        self._nu, self._w, self._dim = float(nu), float(w0_scale), int(dim)
        self._log_norm = (
            -0.5 * self._nu * self._dim * (math.log(2.0) + math.log(self._w))
            - float(special.multigammaln(0.5 * self._nu, self._dim))
        )

    def log_prob(self, value):
        chol = jnp.linalg.cholesky(value)
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        trace = jnp.trace(value, axis1=-2, axis2=-1)
        return 0.5 * (self._nu - self._dim - 1.0) * logdet - 0.5 * trace / self._w + self._log_norm


class _HostNormalizers(Messenger):
    def __init__(self, fn, config: ModelConfig):
        self.config = config
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample" or self.config.priors != "hyper":
            return
        h, name, fn = self.config.hyper, msg["name"], msg["fn"]
        if name in ("user_precision", "item_precision") and type(fn) is dist.Wishart:
            msg["fn"] = _ConstantWishart(self.config.nu0, h.w0_scale, self.config.rank)
        elif name == "noise_precision" and type(fn) is dist.Gamma:
            msg["fn"] = _ConstantGamma(h.noise_shape, h.noise_rate)
        elif name == "offset_precision" and type(fn) is dist.Gamma:
            msg["fn"] = _ConstantGamma(h.offset_shape, h.offset_rate)


def host_normalized(model, config: ModelConfig):
    """The model with the same density, its constant log normalizers computed
    in NumPy instead of in every compiled program.

    NumPyro evaluates ``log Gamma(a)`` of the Gamma priors and the
    multivariate ``log Gamma_p(nu/2)`` of the Wishart priors inside the log
    density although their arguments are constants of :class:`ModelConfig`:
    those special functions are 60% of the HLO of the model's
    ``value_and_grad`` at rank 2 and made its compile 2-3x slower (3.4 s
    against 1.2 s; a NUTS fit compiles three such gradients, SVI two). The
    hyperprior sites (``config.priors == "hyper"``) get subclasses of
    ``dist.Gamma`` / ``dist.Wishart`` with the same parameters, sampler and
    support whose ``log_prob`` adds a precomputed constant; the log density is
    unchanged (tested against :func:`bayesmf.model.numpyro_model`).

    Parameters
    ----------
    model : callable
        ``numpyro_model`` with ``config`` bound (or a handler around it).
    config : ModelConfig
    """
    return _HostNormalizers(model, config)


def unchecked(fn):
    """``fn`` run with NumPyro's argument and support checks off (``numpyro.validation_enabled(False)``).

    NumPyro 0.22 turns the checks on by default, and under ``jit`` they do not
    raise: every ``log_prob`` gains a support test and a ``where`` that sets
    out-of-support values to ``-inf``. For SVI's guide that is an ``eigh`` of
    each Wishart precision per step (the ``positive_definite`` support) and its
    gradient. The engines' values are in support by construction (NumPyro's
    bijections), so the density is unchanged. With the checks off (2-core
    CPU), 250 SVI steps on a 150 x 100 problem at rank 4 took 0.08 s against
    0.15 s and compiled in 5 s against 7 s; on MovieLens-100K u1 at rank 10,
    where the factors' work dominates a step, 10.9 ms against 11.7 ms.

    Wrap every function that traces the model: its program is built while it
    runs, so the checks are off in the compiled program and on again after.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with numpyro.validation_enabled(False):
            return fn(*args, **kwargs)

    return wrapper


def init_to_prior_centre(site=None):
    """NumPyro init strategy: Gamma and Wishart sites at their prior mean, the
    other sites at NumPyro's ``init_to_median`` (elementwise median of
    :data:`MEDIAN_INIT_DRAWS` prior draws, which also puts the factors at small
    random values off the ``L = R = 0`` saddle).

    Drawing the Gamma and Wishart sites, as ``init_to_median`` would, compiles
    NumPyro's rejection Gamma sampler into the init program: about 30 s of
    compile time on a loaded 2-core CPU, for a starting point warmup forgets.
    """
    if site is None:
        return functools.partial(init_to_prior_centre)  # NumPyro expects a partial
    if site["type"] == "sample" and not site["is_observed"] and isinstance(site["fn"], (dist.Gamma, dist.Wishart)):
        return site["fn"].mean
    return init_to_median(site, num_samples=MEDIAN_INIT_DRAWS)
