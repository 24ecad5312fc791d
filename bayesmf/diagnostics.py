"""Convergence diagnostics (R-hat, ESS) through ArviZ, on identifiable quantities only.

Why not the raw factors
-----------------------
The model is invariant under a rotation of the latent space: for any
orthogonal ``Q``,

.. math::

    (L, R, \\mu_L, \\Lambda_L, \\mu_R, \\Lambda_R) \\mapsto
    (LQ,\\ RQ,\\ Q^\\top\\mu_L,\\ Q^\\top\\Lambda_L Q,\\ Q^\\top\\mu_R,\\ Q^\\top\\Lambda_R Q)

leaves ``L R^T`` (every prediction) and the likelihood unchanged, and the
priors too (the Wishart scale ``W0 = I``, the zero-centred means and the
fixed ``lambda I`` precisions are all rotation invariant). The posterior of a
single factor entry, of ``mu_L`` or of an entry of ``Lambda_L`` is therefore a
mixture over rotations (and over sign flips and permutations of the
factors). A chain drifts along these orbits without that changing any
prediction, so R-hat and ESS of raw factors flag "non-convergence" that does
not matter, and can look fine where something that matters has not mixed.
The diagnostics here are computed only on quantities every rotation leaves
unchanged:

=========================  ==============================  ====================================
name                       dims after (chain, draw)        value
=========================  ==============================  ====================================
``noise_sd``               ()                              ``1 / sqrt(alpha)``
``item_offsets``           (item,)                         ``m_v``
``offset_mean``            ()                              ``mu_0``
``offset_sd``              ()                              ``1 / sqrt(tau_m)``
``user_prior_trace_cov``   ()                              ``tr(Lambda_L^-1)``
``user_prior_eigvals``     (factor,)                       eigenvalues of ``Lambda_L^-1``, largest first
``user_mean_norm``         ()                              ``||mu_L||``
``item_prior_*``           as for users                    the same for ``Lambda_R``, ``mu_R``
``user_factors_norm``      ()                              ``||L||_F``
``item_factors_norm``      ()                              ``||R||_F``
``pred_fro_norm``          ()                              ``||L R^T||_F = sqrt(tr((L^T L)(R^T R)))``
``probe_pred``             (probe,)                        each draw's predictive mean on probe pairs
=========================  ==============================  ====================================

Quantities the model fixes in its mode (the hyperparameters with
``priors="fixed"``, the offsets with ``offsets="empirical"``) are not
random and are left out of the diagnostics.

The probe pairs are, by default, :data:`NUM_PROBE_PAIRS` training ratings
drawn by a NumPy generator seeded with :data:`PROBE_SEED` (uniform (user,
item) index pairs when the posterior has no training ratings), so the same
posterior always gets the same probes, before and after a save / load.
Each draw's prediction of a known pair is :func:`bayesmf.model.predict_mean`
(the likelihood's own ``<L_u, R_v> + m_v``) computed in float64.

``arviz_stats`` is imported by the functions that use it, not by this
module: :mod:`bayesmf.storage` imports it, and saving or loading a model
must work where ArviZ is not installed.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from bayesmf.model import Params, latent_sites, predict_mean

# Default probe set: how many pairs, and the seed of the generator that picks them.
NUM_PROBE_PAIRS = 50
PROBE_SEED = 0
# Largest (draws x (rows + pairs) x rank) block of factors the per-draw
# predictions hold in float64 at once (bounds their memory to ~8 * BLOCK_CELLS bytes).
BLOCK_CELLS = 4_000_000
# Split R-hat needs at least two draws per half chain.
MIN_DRAWS_FOR_RHAT = 4


class ConvergenceWarning(UserWarning):
    """R-hat above its threshold or an effective sample size too low."""


# --- identifiable quantities ---------------------------------------------------------


def default_probe_pairs(posterior, num_pairs: int = NUM_PROBE_PAIRS) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic probe pairs (indices) for the diagnostics.

    Parameters
    ----------
    posterior : bayesmf.posterior.Posterior
    num_pairs : int

    Returns
    -------
    user_index, item_index : int64 array, shape (min(num_pairs, nnz),)
        Distinct training ratings chosen by ``default_rng(PROBE_SEED)``, in
        training order; without training ratings, uniform index pairs.
    """
    rng = np.random.default_rng(PROBE_SEED)
    train = posterior.train
    if train is not None and len(train) > 0:
        rows = np.sort(rng.choice(len(train), size=min(num_pairs, len(train)), replace=False))
        return np.asarray(train.user_index, np.int64)[rows], np.asarray(train.item_index, np.int64)[rows]
    num_users, num_items = len(posterior.user_vocab), len(posterior.item_vocab)
    return rng.integers(0, num_users, num_pairs), rng.integers(0, num_items, num_pairs)


def _probes(posterior, probe_pairs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user_index, item_index, user ids, item ids) of the probe pairs (index -1: unseen id)."""
    if probe_pairs is None:
        u, i = default_probe_pairs(posterior)
        return u, i, np.asarray(posterior.user_vocab.ids)[u], np.asarray(posterior.item_vocab.ids)[i]
    users, items = (np.atleast_1d(np.asarray(x)) for x in probe_pairs)
    pairs = posterior.pairs(users, items)
    return np.asarray(pairs.user_index, np.int64), np.asarray(pairs.item_index, np.int64), users, items


# One draw's means for pairs, vmapped over a block of draws (the model's own <L_u, R_v> + m_v).
_block_means = jax.jit(jax.vmap(predict_mean, in_axes=(0, None, None)))


def _draw_means(posterior, user_index: np.ndarray, item_index: np.ndarray) -> np.ndarray:
    """Each draw's predictive mean for index pairs (``-1``: unseen), float64, shape (C, S, n).

    Known pairs go through :func:`bayesmf.model.predict_mean` in float64
    (64-bit JAX for this call only: R-hat and ESS of near-constant
    predictions need more than float32's 7 digits), on the rows the pairs
    touch, gathered first so that a block of draws holds only those; pairs
    with an unseen side go through ``posterior.components`` (the cold-start
    prior mean).
    """
    d = posterior.draws
    c, s = posterior.num_chains, posterior.num_draws
    out = np.empty((c * s, user_index.shape[0]), np.float64)
    known = (user_index >= 0) & (item_index >= 0)
    if known.any():
        rows_u, u = np.unique(user_index[known], return_inverse=True)
        rows_i, i = np.unique(item_index[known], return_inverse=True)
        factors_l = d.user_factors.reshape((c * s,) + d.user_factors.shape[2:])
        factors_r = d.item_factors.reshape((c * s,) + d.item_factors.shape[2:])
        offsets = d.item_offsets.reshape(c * s, -1)
        user_offsets = None if d.user_offsets is None else d.user_offsets.reshape(c * s, -1)
        cells = (rows_u.size + rows_i.size + 2 * u.shape[0]) * posterior.rank  # rows, then the gathered pairs
        block = max(1, BLOCK_CELLS // max(cells, 1))
        with jax.enable_x64(True):
            for start in range(0, c * s, block):
                part = slice(start, start + block)
                params = Params(
                    jnp.asarray(factors_l[part][:, rows_u], jnp.float64),
                    jnp.asarray(factors_r[part][:, rows_i], jnp.float64),
                    jnp.asarray(offsets[part][:, rows_i], jnp.float64),
                    *([None] * 7),  # the mean needs no hyperparameters
                    user_offsets=None if user_offsets is None else jnp.asarray(user_offsets[part][:, rows_u], jnp.float64),
                )
                out[part, known] = np.asarray(_block_means(params, jnp.asarray(u), jnp.asarray(i)))
    if (~known).any():
        out[:, ~known] = posterior.components(user_index[~known], item_index[~known]).mean
    return out.reshape(c, s, -1)


def _prior_summaries(mean: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(trace of Lambda^-1, eigenvalues of Lambda^-1 largest first, ||mu||) per draw."""
    eig = np.linalg.eigvalsh(precision.astype(np.float64))  # ascending eigenvalues of Lambda
    with np.errstate(divide="ignore"):
        cov_eig = 1.0 / eig  # descending eigenvalues of Lambda^-1
    return cov_eig.sum(-1), cov_eig, np.sqrt(np.sum(mean.astype(np.float64) ** 2, axis=-1))


def _gram(factors: np.ndarray) -> np.ndarray:
    """``F^T F`` per draw in float64: (C, S, N, D) -> (C, S, D, D).

    A batched BLAS matmul; ``np.einsum`` without BLAS took ~1 s for 200
    draws at rank 50 on ml-100k.
    """
    f = factors.astype(np.float64)
    return np.swapaxes(f, -1, -2) @ f


def identifiable_quantities(posterior, *, probe_pairs=None) -> tuple[xr.Dataset, xr.Dataset]:
    """Rotation-invariant quantities of every draw (see the module docstring).

    Parameters
    ----------
    posterior : bayesmf.posterior.Posterior
    probe_pairs : (users, items) external ids, each shape (n,), optional
        Pairs whose per-draw predictive means are reported as ``probe_pred``;
        default :func:`default_probe_pairs`.

    Returns
    -------
    sampled : xarray.Dataset
        Quantities that are random in this model mode, dims ``("chain",
        "draw", ...)``, float64; coords ``item`` (item ids), ``factor``,
        ``probe`` with ``probe_user`` / ``probe_item`` (external ids).
    fixed : xarray.Dataset
        Quantities the mode fixes (same names, no chain / draw dims).

    Examples
    --------
    >>> sampled, fixed = identifiable_quantities(posterior)  # doctest: +SKIP
    >>> sampled["noise_sd"].dims  # doctest: +SKIP
    ('chain', 'draw')
    """
    d = posterior.draws
    latent = set(latent_sites(posterior.config))
    sample = ("chain", "draw")
    values: dict[str, tuple[tuple[str, ...], np.ndarray, str]] = {}  # name -> (dims, value, source site)

    values["noise_sd"] = (sample, 1.0 / np.sqrt(d.noise_precision.astype(np.float64)), "noise_precision")
    values["item_offsets"] = (sample + ("item",), d.item_offsets.astype(np.float64), "item_offsets")
    values["offset_mean"] = (sample, d.offset_mean.astype(np.float64), "offset_mean")
    values["offset_sd"] = (sample, 1.0 / np.sqrt(d.offset_precision.astype(np.float64)), "offset_precision")
    if d.user_offsets is not None:
        values["user_offsets"] = (sample + ("user",), d.user_offsets.astype(np.float64), "user_offsets")
        values["user_offset_sd"] = (sample, 1.0 / np.sqrt(d.user_offset_precision.astype(np.float64)),
                                    "user_offset_precision")
    if d.cutpoints is not None:  # the ordinal cut points c_1..c_{K-2} (identified: c_0 = 0 is fixed)
        values["cutpoints"] = (sample + ("cut",), d.cutpoints[..., 1:].astype(np.float64), "cutpoints")
    for side in ("user", "item"):
        trace, eig, norm = _prior_summaries(getattr(d, f"{side}_mean"), getattr(d, f"{side}_precision"))
        values[f"{side}_prior_trace_cov"] = (sample, trace, f"{side}_precision")
        values[f"{side}_prior_eigvals"] = (sample + ("factor",), eig, f"{side}_precision")
        values[f"{side}_mean_norm"] = (sample, norm, f"{side}_mean")
    gram_l = _gram(d.user_factors)
    gram_r = _gram(d.item_factors)
    values["user_factors_norm"] = (sample, np.sqrt(np.trace(gram_l, axis1=-2, axis2=-1)), "user_factors")
    values["item_factors_norm"] = (sample, np.sqrt(np.trace(gram_r, axis1=-2, axis2=-1)), "item_factors")
    pred_sq = np.einsum("csde,csed->cs", gram_l, gram_r)
    values["pred_fro_norm"] = (sample, np.sqrt(np.maximum(pred_sq, 0.0)), "user_factors")
    u, i, probe_users, probe_items = _probes(posterior, probe_pairs)
    values["probe_pred"] = (sample + ("probe",), _draw_means(posterior, u, i), "user_factors")

    coords = dict(
        item=np.asarray(posterior.item_vocab.ids),
        user=np.asarray(posterior.user_vocab.ids),
        factor=np.arange(posterior.rank),
        probe=np.arange(u.shape[0]),
        probe_user=("probe", probe_users),
        probe_item=("probe", probe_items),
    )
    if d.cutpoints is not None:
        coords["cut"] = np.arange(1, d.cutpoints.shape[-1])
    sampled, fixed = {}, {}
    for name, (dims, value, site) in values.items():
        if site in latent:
            sampled[name] = (dims, value)
        else:
            fixed[name] = (dims[2:], value[0, 0])
    return _dataset(sampled, coords), _dataset(fixed, coords)


def _dataset(variables: dict, coords: dict) -> xr.Dataset:
    used = {dim for dims, _ in variables.values() for dim in dims}
    keep = {k: v for k, v in coords.items() if (v[0] if isinstance(v, tuple) else k) in used}
    return xr.Dataset(variables, coords=keep)


# --- summaries --------------------------------------------------------------------------


def label_probes(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with the ``probe`` dim labelled ``"<user id>:<item id>"`` and the
    ``probe_user`` / ``probe_item`` coords dropped.

    ArviZ's summary names its rows after index coordinates (``probe_pred[u:i]``)
    and refuses coordinates that only some variables have.

    Parameters
    ----------
    ds : xarray.Dataset
        As :func:`identifiable_quantities` returns it.

    Returns
    -------
    xarray.Dataset
    """
    if "probe" not in ds.dims:
        return ds
    labels = [f"{u}:{i}" for u, i in zip(ds["probe_user"].values, ds["probe_item"].values)]
    return ds.drop_vars(["probe_user", "probe_item"]).assign_coords(probe=labels)


def summary(posterior, *, probe_pairs=None) -> pd.DataFrame:
    """Posterior summary with R-hat and bulk / tail ESS of the identifiable quantities.

    R-hat is ArviZ's rank-normalized split R-hat (the maximum of the bulk and
    folded versions, Vehtari et al. 2021); ESS are bulk and tail ESS. With
    one chain, R-hat compares the chain's two halves (each split again, as
    split R-hat does), which ArviZ alone leaves undefined. Only
    rotation-invariant quantities are reported (see the module docstring:
    raw factors, ``mu_L`` and ``Lambda_L`` rotate freely, so their R-hat and
    ESS are meaningless), and only those that are random in the model's mode.

    Parameters
    ----------
    posterior : bayesmf.posterior.Posterior
    probe_pairs : (users, items) external ids, optional
        Pairs whose predictions are reported (``probe_pred[user:item]``);
        default :func:`default_probe_pairs`.

    Returns
    -------
    pandas.DataFrame
        One row per scalar (``item_offsets[<item id>]``,
        ``user_prior_eigvals[0]``, ...); columns ``mean``, ``sd``, the
        credible interval bounds, ``ess_bulk``, ``ess_tail``, ``r_hat``,
        ``mcse_mean``, ``mcse_sd``. Diagnostics are NaN with fewer than
        :data:`MIN_DRAWS_FOR_RHAT` draws per chain (e.g. a MAP fit).

    Examples
    --------
    >>> table = summary(posterior)  # doctest: +SKIP
    >>> table.loc["noise_sd", ["r_hat", "ess_bulk"]]  # doctest: +SKIP
    """
    return _table(posterior, probe_pairs, kind="all")


def _halves(ds: xr.Dataset) -> xr.Dataset:
    """One chain as two pseudo-chains (its halves), so that R-hat can compare them."""
    half = ds.sizes["draw"] // 2
    first = ds.isel(draw=slice(0, half))
    second = ds.isel(draw=slice(half, 2 * half)).assign_coords(draw=first["draw"])
    return xr.concat([first, second], dim="chain")


def _sampled(posterior, probe_pairs) -> xr.Dataset:
    """The sampled identifiable quantities, dims (chain, draw, ...)."""
    sampled, _ = identifiable_quantities(posterior, probe_pairs=probe_pairs)
    return label_probes(sampled).assign_coords(
        chain=np.arange(posterior.num_chains), draw=np.arange(posterior.num_draws)
    )


def _table(posterior, probe_pairs, kind: str) -> pd.DataFrame:
    """ArviZ summary of the sampled identifiable quantities, one row per scalar."""
    import arviz_stats as azs  # lazily: loading a model must not need ArviZ

    ds = _sampled(posterior, probe_pairs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        table = pd.DataFrame(azs.summary(ds, kind=kind, round_to="none"))
        if posterior.num_draws < MIN_DRAWS_FOR_RHAT:
            table[["ess_bulk", "ess_tail", "r_hat", "mcse_mean", "mcse_sd"]] = np.nan
        elif posterior.num_chains == 1:
            rhat = pd.DataFrame(azs.summary(_halves(ds), kind="diagnostics", round_to="none"))["r_hat"]
            table["r_hat"] = rhat.reindex(table.index)
    return table


def _diagnostics(posterior, probe_pairs=None) -> pd.DataFrame:
    """R-hat and ESS only (no intervals), one row per scalar."""
    return _table(posterior, probe_pairs, kind="diagnostics")


def max_rhat(posterior, *, probe_pairs=None) -> float:
    """Largest R-hat over the identifiable quantities (NaN when it cannot be computed).

    Parameters
    ----------
    posterior : bayesmf.posterior.Posterior
    probe_pairs : (users, items) external ids, optional

    Returns
    -------
    float
        NaN for a point estimate (one chain, one draw) or fewer than
        :data:`MIN_DRAWS_FOR_RHAT` draws per chain.
    """
    if posterior.num_draws < MIN_DRAWS_FOR_RHAT:
        return math.nan
    # R-hat alone (the same rank-normalized split R-hat as summary's r_hat):
    # the full diagnostics table also computes bulk and tail ESS of every
    # scalar, which made this 5-10 s per call on ml-100k.
    import arviz_stats as azs

    ds = _sampled(posterior, probe_pairs)
    if posterior.num_chains == 1:
        ds = _halves(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat = azs.rhat(ds)
    values = np.concatenate([np.ravel(rhat[name].values) for name in rhat.data_vars]).astype(np.float64)
    return float(np.nanmax(values)) if np.any(np.isfinite(values)) else math.nan


def _variable(label: str) -> str:
    return label.split("[", 1)[0]


def check(posterior, rhat_threshold: float = 1.01, min_ess: float = 100, *, probe_pairs=None) -> list[str]:
    """Convergence warnings on the identifiable quantities.

    One message per variable and problem (R-hat above ``rhat_threshold``;
    bulk or tail ESS below ``min_ess``), each also emitted as a
    :class:`ConvergenceWarning`. A point estimate or a run with fewer than
    :data:`MIN_DRAWS_FOR_RHAT` draws per chain has nothing to check: ``[]``.

    Parameters
    ----------
    posterior : bayesmf.posterior.Posterior
    rhat_threshold : float
        1.01 is the threshold of Vehtari et al. (2021).
    min_ess : float
        Minimum bulk and tail ESS (total over chains); 100 is their
        recommendation for 4 chains.
    probe_pairs : (users, items) external ids, optional

    Returns
    -------
    list of str

    Examples
    --------
    >>> for message in check(posterior):  # doctest: +SKIP
    ...     print(message)
    """
    if posterior.num_draws < MIN_DRAWS_FOR_RHAT:
        return []
    table = _diagnostics(posterior, probe_pairs)
    table["variable"] = [_variable(label) for label in table.index]
    messages = []
    for variable, rows in table.groupby("variable", sort=False):
        for column, bad, what in (
            ("r_hat", rows["r_hat"] > rhat_threshold, f"R-hat > {rhat_threshold}"),
            ("ess_bulk", rows["ess_bulk"] < min_ess, f"bulk ESS < {min_ess}"),
            ("ess_tail", rows["ess_tail"] < min_ess, f"tail ESS < {min_ess}"),
        ):
            if not bad.any():
                continue
            worst = rows.loc[bad, column].idxmax() if column == "r_hat" else rows.loc[bad, column].idxmin()
            value = rows.loc[worst, column]
            if len(rows) == 1:
                messages.append(f"{variable}: {what} ({column} = {value:.4g})")
            else:
                messages.append(
                    f"{variable}: {int(bad.sum())} of {len(rows)} values have {what} "
                    f"(worst {worst}: {column} = {value:.4g})"
                )
    for message in messages:
        warnings.warn(message, ConvergenceWarning, stacklevel=2)
    return messages


def ess_per_second(draws, seconds: float) -> float:
    """Median bulk ESS per second of sampling.

    Parameters
    ----------
    draws : array, shape (num_chains, num_draws, n)
        Per-draw values, e.g. the predicted means of test pairs.
    seconds : float
        Sampling time (> 0).

    Returns
    -------
    float
        ``median_n(ESS_bulk) / seconds``.

    Examples
    --------
    >>> ess_per_second(np.random.default_rng(0).normal(size=(4, 100, 3)), 2.0)  # doctest: +SKIP
    """
    draws = np.asarray(draws, np.float64)
    if draws.ndim != 3:
        raise ValueError(f"draws must have shape (num_chains, num_draws, n), got {draws.shape}")
    if not (np.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be a positive finite number, got {seconds}")
    import arviz_stats as azs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ess = np.asarray(azs.ess(draws, method="bulk", chain_axis=0, draw_axis=1), np.float64)
    return float(np.median(ess) / seconds)


def rmse_trace(posterior, users, items, ratings) -> np.ndarray:
    """RMSE of each draw's predictive mean on test ratings (a convergence trace).

    Parameters
    ----------
    posterior : bayesmf.posterior.Posterior
    users, items : array-like, shape (n,)
        External ids (unseen ids get the cold-start prior mean).
    ratings : array-like, shape (n,)

    Returns
    -------
    array, shape (num_chains, num_draws)

    Examples
    --------
    >>> trace = rmse_trace(posterior, test.user_ids, test.item_ids, test.rating)  # doctest: +SKIP
    """
    ratings = np.atleast_1d(np.asarray(ratings, np.float64))
    pairs = posterior.pairs(users, items)
    u, i = np.asarray(pairs.user_index, np.int64), np.asarray(pairs.item_index, np.int64)
    if ratings.shape != u.shape:
        raise ValueError(f"ratings must have the shape of users and items {u.shape}, got {ratings.shape}")
    if ratings.size == 0:
        raise ValueError("no ratings to score")
    means = _draw_means(posterior, u, i)
    return np.sqrt(np.mean((means - ratings) ** 2, axis=-1))
