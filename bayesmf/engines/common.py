"""What every engine returns (the driver that samplers share is :mod:`bayesmf.engines.driver`)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, NamedTuple

import jax
import numpy as np
from tqdm.auto import tqdm

from bayesmf.model import Params


class EngineResult(NamedTuple):
    """Output of an engine run.

    Attributes
    ----------
    draws : Params
        Each field with leading ``(num_chains, num_draws)`` axes (a MAP fit
        has ``(1, 1)``). NumPy arrays.
    stats : dict of str -> array, shape (num_chains, num_draws)
        Per-draw diagnostics (e.g. ``train_rmse``, ``diverging``).
    timing : dict of str -> float
        ``fit_seconds`` and, for samplers, ``compile_seconds``,
        ``sampling_seconds``, ``seconds_per_sample``.
    tracked : TrackedMoments or None
        Streamed predictive moments of requested pairs (samplers only).
    info : mapping
        Engine-specific extras (settings used, tuning tables); by default an
        empty read-only mapping (a shared ``{}`` default would be mutable).
    """

    draws: Params
    stats: dict
    timing: dict
    tracked: "TrackedMoments | None" = None
    info: Mapping = MappingProxyType({})


class TrackedMoments(NamedTuple):
    """Predictive moments of fixed pairs, accumulated during sampling.

    Welford's online update keeps memory independent of the number of draws:
    O(num_chains x num_pairs) for the moments. ``draw_means`` and
    ``noise_sd`` keep the per-draw components of the predictive mixture
    (O(num_chains x num_draws x num_pairs)) when exact mixture quantiles, NLL
    or CRPS are wanted; they are None when not kept.

    Attributes
    ----------
    count : int
    mean : array, shape (num_chains, num_pairs)
        Mean over draws of the predicted mean rating.
    m2 : array, shape (num_chains, num_pairs)
        Sum of squared deviations of the predicted mean (Welford's M2).
    noise_var : array, shape (num_chains,)
        Mean over draws of the noise variance ``1 / alpha``.
    draw_means : array, shape (num_chains, num_draws, num_pairs) or None
    noise_sd : array, shape (num_chains, num_draws) or None
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray
    noise_var: np.ndarray
    draw_means: np.ndarray | None = None
    noise_sd: np.ndarray | None = None


def progress(total: int, desc: str, enabled: bool):
    """A tqdm bar (iterations per second shown) when ``enabled``; tqdm's
    ``disable=None`` turns it off where the output is not a terminal."""
    return tqdm(total=total, desc=desc, disable=None if enabled else True, leave=False, unit="it")


def to_numpy(tree):
    return jax.tree_util.tree_map(np.asarray, tree)
