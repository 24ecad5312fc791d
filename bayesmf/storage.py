"""A fitted posterior to ArviZ, and to and from one netCDF file.

:func:`to_datatree` gives the ArviZ 1.x view of a posterior (an
:class:`xarray.DataTree`): its ``posterior`` group holds the identifiable
quantities of :mod:`bayesmf.diagnostics` (the raw draws only on request), so
``arviz.summary`` / ``rhat`` / ``ess`` on it are meaningful, and with
observed ratings it has the ``log_likelihood`` that ``arviz.loo`` needs.
:func:`load_datatree` is the same view of a saved model file.

:func:`save` / :func:`load` keep a whole :class:`~bayesmf.posterior.Posterior`
in one netCDF-4 (HDF5) file, bit for bit. Layout of format version 2:

======================  ================================================================
node                    content
======================  ================================================================
``/`` (attributes)      ``format = "bayesmf-posterior"``, ``format_version = 2``,
                        ``bayesmf_version``, ``method``, and JSON strings ``config``
                        (ModelConfig with FixedPriors / HyperPriors), ``scale``,
                        ``timing``, ``info`` (its JSON-able entries; the names of the
                        others in ``info_dropped``)
``/posterior``          every :class:`~bayesmf.model.Params` field in its own dtype,
                        dims ``(chain, draw, user | item, factor[, factor_col])`` with
                        coords ``chain``, ``draw``, ``factor``, ``factor_col`` (0, 1, ...)
                        and ``user``, ``item``: the external ids (attribute ``kind``
                        says how to restore their Python type)
``/sample_stats``       ``posterior.stats`` (arrays, own dtypes; per-draw ones with dims
                        ``(chain, draw, ...)``)
``/train``              ``user_index``, ``item_index``, ``rating`` (and ``timestamp``)
                        of the training ratings, dim ``row``
``/titles``             ``item_id``, ``title`` (dim ``title``), when there are titles
======================  ================================================================

So ``xarray.open_datatree(path, engine="h5netcdf")`` opens a model file as an
ArviZ-shaped tree of the raw draws; those rotate freely (see
:mod:`bayesmf.diagnostics`), so judge convergence on :func:`load_datatree`
instead. Format version 1 (bayesmf 0.1.0) kept the draws in ``/draws``
without coordinates and the ids in ``/vocab`` (``user_id (user)``,
``item_id (item)``); :func:`load` reads both versions (:data:`READ_VERSIONS`)
and refuses any other with an error naming the version found.

:func:`save` can also write smaller files (all read by the same :func:`load`):

* ``thin=k`` keeps every ``k``-th draw of each chain, ``num_draws=n`` keeps
  ``n`` evenly spaced draws of each chain (:func:`draw_indices`); the file
  predicts exactly as ``thinned(posterior, ...)`` does in memory.
* ``serving=True`` keeps only what ``predict``, ``recommend`` and fold-in
  read: the draws, config, vocabularies, scale, titles and the training
  ratings' ``user_index`` / ``item_index`` / ``rating`` (stored in the
  smallest dtype that holds them exactly, restored on load, and
  gzip-compressed with the HDF5 shuffle filter). It drops
  ``sample_stats``, ``timing``, ``info`` and the training timestamps; its
  predictions, top-k lists and fold-ins are identical to the full file's.
* ``dtype="float16"`` stores ``user_factors`` and ``item_factors`` in IEEE
  half precision (relative error at most ``2**-11`` per entry of magnitude
  at least ``2**-14``, absolute error at most ``2**-25`` below); they load
  back in their original dtype (attribute ``bayesmf_dtype``).
* ``dtype="int8"`` stores them as 8-bit codes (:mod:`bayesmf.compact`): per
  chain and row a float32 centre (``<field>_centre``, the row's mean over
  all the draws, also when fewer are kept) and step (``<field>_scale``),
  and each kept draw's deviation from the kept draws' mean in int8 steps;
  a quarter of float32's bytes, each entry within half a step (1/254 of the
  row's largest deviation) of the kept draw moved to the full mean.

The root attributes ``contents`` (``"full"`` or ``"serving"``),
``factor_dtype`` (the stored dtype of the factors) and ``draws_kept`` (JSON:
``thin``, ``num_draws``, ``source_num_draws`` and the kept ``indices``) say
what a file holds; they are informative, :func:`load` does not need them.

Numeric arrays are written without fill values and with HDF5 Fletcher-32
checksums, so a flipped bit in the data is an error on load, never a silently
different model. ``posterior.tracked`` (moments streamed during sampling for
pairs the file could not identify) is not stored: a loaded posterior has
``tracked = None``. ArviZ is imported only by :func:`to_datatree`:
:func:`save` and :func:`load` work without it.
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from pathlib import Path

import numpy as np
import xarray as xr

from bayesmf import compact
from bayesmf.choices import FACTOR_DTYPES  # noqa: F401  (public here too)
from bayesmf.compact import DTYPE_ATTR, FACTOR_FIELDS
from bayesmf.data import RatingScale, Ratings, Vocabulary, encoder_from_dict, encoder_to_dict
from bayesmf.diagnostics import identifiable_quantities, label_probes
from bayesmf.encoding import to_jsonable
from bayesmf.model import OPTIONAL_FIELDS, FeatureSpec, FixedPriors, HyperPriors, ModelConfig, Params, latent_sites
from bayesmf.ordinal import CutpointPrior
from bayesmf.posterior import Posterior, draw_indices, thinned

FORMAT = "bayesmf-posterior"
# The version save writes, and every version load reads (1: bayesmf 0.1.0).
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
ENGINE = "h5netcdf"

# Suffixes of the per-row variables beside int8 factor codes (bayesmf.compact.Quantized).
CENTRE, SCALE = "_centre", "_scale"
# ArviZ dims of each Params field after (chain, draw).
PARAM_DIMS = dict(
    user_factors=("user", "factor"),
    item_factors=("item", "factor"),
    item_offsets=("item",),
    noise_precision=(),
    user_mean=("factor",),
    user_precision=("factor", "factor_col"),
    item_mean=("factor",),
    item_precision=("factor", "factor_col"),
    offset_mean=(),
    offset_precision=(),
    user_offsets=("user",),
    user_offset_precision=(),
    user_link=("user_feature", "factor"),
    user_link_precision=("user_feature_group",),
    item_link=("item_feature", "factor"),
    item_link_precision=("item_feature_group",),
    cutpoints=("cut",),  # the ordinal likelihood's K - 1 cut points
)
SAMPLE_DIMS = ("chain", "draw")
# Identifiable quantities already carry these names (same values) in the posterior group.
# (cutpoints: the identifiable c_1.., without the fixed c_0 = 0.)
_SHARED_NAMES = ("item_offsets", "offset_mean", "user_offsets", "cutpoints")
# Ids of the probe pairs, kept beside the (labelled) probe_pred in constant_data.
_PROBE_IDS = ("probe_user", "probe_item")


def _version() -> str:
    import bayesmf

    return bayesmf.__version__


# --- ArviZ ------------------------------------------------------------------------------


def _parse_pairs(pairs, observed):
    if pairs is None:
        if observed is not None:
            raise ValueError("observed ratings were given without pairs")
        return None, None, None
    if hasattr(pairs, "user_ids") and hasattr(pairs, "rating"):  # bayesmf.data.Ratings
        users, items, rating = pairs.user_ids, pairs.item_ids, pairs.rating
    elif len(pairs) == 3:
        users, items, rating = pairs
    elif len(pairs) == 2:
        (users, items), rating = pairs, None
    else:
        raise ValueError("pairs must be (users, items), (users, items, ratings) or a Ratings")
    if rating is not None and observed is not None:
        raise ValueError("observed ratings were given twice (in pairs and as observed)")
    rating = observed if rating is None else rating
    users, items = np.atleast_1d(np.asarray(users)), np.atleast_1d(np.asarray(items))
    if rating is not None:
        rating = np.atleast_1d(np.asarray(rating, np.float64))
        if rating.shape != users.shape:
            raise ValueError(f"observed ratings must have the shape of the pairs {users.shape}, got {rating.shape}")
    return users, items, rating


def to_datatree(posterior, pairs=None, observed=None, *, keep_factors: bool = False, probe_pairs=None) -> xr.DataTree:
    """The posterior as an ArviZ 1.x :class:`xarray.DataTree`.

    ``arviz.summary``, ``arviz.rhat``, ``arviz.ess`` (and ``arviz_plots``)
    work on the result as on any ArviZ tree, for a sampler's draws and for a
    point estimate (one chain, one draw: its diagnostics are NaN);
    ``arviz.loo`` works when observed ratings are given.

    Parameters
    ----------
    posterior : bayesmf.posterior.Posterior
    pairs : (users, items), (users, items, ratings) or bayesmf.data.Ratings, optional
        Pairs (external ids, each shape (n,); unknown ids get the cold-start
        prior) for the ``posterior_predictive`` group; with ratings, also
        ``log_likelihood`` and ``observed_data`` (for ``arviz.loo``).
    observed : array-like, shape (n,), optional
        The ratings of ``pairs`` when ``pairs`` is ``(users, items)``.
    keep_factors : bool
        Also put the raw draws (``user_factors`` ``(chain, draw, user,
        factor)``, ``item_factors``, ``user_mean``, ``user_precision``
        ``(chain, draw, factor, factor_col)``, ...) in ``posterior``. Off by
        default: they rotate freely (see :mod:`bayesmf.diagnostics`), so their
        R-hat and ESS say nothing about convergence, and they would pull down
        the relative efficiency ``arviz.loo`` estimates from every
        ``posterior`` variable.
    probe_pairs : (users, items) external ids, optional
        Pairs of ``probe_pred``; default
        :func:`bayesmf.diagnostics.default_probe_pairs`.

    Returns
    -------
    xarray.DataTree
        Groups:

        ``posterior``
            Identifiable quantities
            (:func:`~bayesmf.diagnostics.identifiable_quantities`) that are
            random in the model's mode, float64, dims ``(chain, draw, ...)``:
            ``noise_sd``, ``offset_mean``, ``offset_sd``, ``item_offsets``
            ``(item)``, the user and item prior summaries
            ``user_prior_trace_cov``, ``user_prior_eigvals`` ``(factor)``,
            ``user_mean_norm`` (and ``item_*``), ``user_factors_norm``,
            ``item_factors_norm``, ``pred_fro_norm`` and ``probe_pred``
            ``(probe)``, each draw's predicted mean rating of the probe pairs.
            Coords: ``item`` (item ids), ``factor``, and ``probe``, labelled
            ``"<user id>:<item id>"`` (so summary rows read
            ``probe_pred[<user>:<item>]``). With ``keep_factors``, also the
            raw draws (coords ``user``, ``factor_col``).
        ``constant_data``
            ``probe_user`` and ``probe_item`` ``(probe)``: the probe pairs'
            ids in their own type; and the identifiable quantities the mode
            fixes (e.g. the precisions with ``priors="fixed"``), without
            chain / draw dims.
        ``sample_stats``
            The per-draw ``posterior.stats`` (e.g. ``train_rmse``).
        ``posterior_predictive`` (with ``pairs``)
            ``rating_mean`` and ``rating_sd`` ``(chain, draw, pair)``: each
            draw's predictive mean and sd (deterministic: no predictive draws).
        ``log_likelihood``, ``observed_data`` (with observed ratings)
            ``rating`` ``(chain, draw, pair)``: ``log N(r; mean_s, sd_s)``;
            ``rating`` ``(pair,)``. Pairs have coords ``pair_user``,
            ``pair_item``.

    Examples
    --------
    >>> import arviz as az  # doctest: +SKIP
    >>> az.summary(to_datatree(posterior))  # doctest: +SKIP
    >>> az.loo(to_datatree(posterior, (test.user_ids, test.item_ids, test.rating)))  # doctest: +SKIP
    """
    users, items, rating = _parse_pairs(pairs, observed)
    sampled, fixed = identifiable_quantities(posterior, probe_pairs=probe_pairs)
    # ArviZ refuses coords that only some variables have: probe_pred's are labels,
    # the ids themselves constant data.
    probe_ids = {name: ("probe", sampled[name].values) for name in _PROBE_IDS}
    sampled, fixed = label_probes(sampled), label_probes(fixed)
    fixed = fixed.assign(probe_ids).assign_coords(probe=sampled["probe"].values)
    d = posterior.draws
    if keep_factors:
        latent = set(latent_sites(posterior.config))
        raw_sampled, raw_fixed = {}, {}
        for name, dims in PARAM_DIMS.items():
            if name in _SHARED_NAMES:
                continue
            value = getattr(d, name)
            if value is None:  # a field this model does not have (bayesmf.model.OPTIONAL_FIELDS)
                continue
            if name in latent:
                raw_sampled[name] = (SAMPLE_DIMS + dims, value)
            else:
                raw_fixed[name] = (dims, value[0, 0])
        id_coords = _param_coords(posterior)
        sampled = sampled.assign(raw_sampled).assign_coords(_used(id_coords, raw_sampled))
        fixed = fixed.assign(raw_fixed).assign_coords(_used(id_coords, raw_fixed))
    sampled = sampled.assign_coords(_sample_coords(posterior))
    groups = {
        "posterior": _with_attrs(sampled, posterior),
        "constant_data": _with_attrs(fixed, posterior, sample=False),
    }
    stats = {
        name: (SAMPLE_DIMS + tuple(f"{name}_dim_{k}" for k in range(np.ndim(v) - 2)), np.asarray(v))
        for name, v in posterior.stats.items()
        if np.shape(v)[:2] == (posterior.num_chains, posterior.num_draws)
    }
    if stats:
        groups["sample_stats"] = _with_attrs(xr.Dataset(stats, coords=_sample_coords(posterior)), posterior)
    if users is not None:
        from scipy import stats as sps

        resolved = posterior.pairs(users, items)
        comps = posterior.components(resolved.user_index, resolved.item_index)
        shape = (posterior.num_chains, posterior.num_draws, users.shape[0])
        mean, sd = comps.mean.reshape(shape), comps.sd.reshape(shape)
        pair_coords = dict(pair=np.arange(users.shape[0]), pair_user=("pair", users), pair_item=("pair", items))
        dims = SAMPLE_DIMS + ("pair",)
        coords = {**_sample_coords(posterior), **pair_coords}
        groups["posterior_predictive"] = _with_attrs(
            xr.Dataset(dict(rating_mean=(dims, mean), rating_sd=(dims, sd)), coords=coords), posterior
        )
        if rating is not None:
            loglik = sps.norm.logpdf(rating, loc=mean, scale=sd)
            groups["log_likelihood"] = _with_attrs(xr.Dataset(dict(rating=(dims, loglik)), coords=coords), posterior)
            groups["observed_data"] = _with_attrs(
                xr.Dataset(dict(rating=(("pair",), rating)), coords=pair_coords), posterior, sample=False
            )
    tree = xr.DataTree.from_dict(groups)
    tree.attrs = dict(bayesmf_version=_version(), method=posterior.method)
    return tree


def load_datatree(path, pairs=None, observed=None, *, keep_factors: bool = False, probe_pairs=None) -> xr.DataTree:
    """:func:`to_datatree` of the model saved at ``path``: the ArviZ view of a model file.

    ``xarray.open_datatree(path, engine="h5netcdf")`` reads the file itself
    (raw draws in its ``posterior`` group); this gives the identifiable
    quantities that convergence is judged on.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save` (any version :func:`load` reads).
    pairs, observed, keep_factors, probe_pairs
        As for :func:`to_datatree`.

    Returns
    -------
    xarray.DataTree

    Examples
    --------
    >>> import arviz as az  # doctest: +SKIP
    >>> az.summary(load_datatree("model.nc"))  # doctest: +SKIP
    """
    return to_datatree(load(path), pairs, observed, keep_factors=keep_factors, probe_pairs=probe_pairs)


def _param_coords(posterior) -> dict:
    """Coords of the dims of :data:`PARAM_DIMS` (ids as the vocabularies hold them)."""
    return dict(
        user=np.asarray(posterior.user_vocab.ids),
        item=np.asarray(posterior.item_vocab.ids),
        factor=np.arange(posterior.rank),
        factor_col=np.arange(posterior.rank),
    )


def _used(coords: dict, variables: dict) -> dict:
    dims = {dim for dims, _ in variables.values() for dim in dims}
    return {k: v for k, v in coords.items() if k in dims}


def _sample_coords(posterior) -> dict:
    return dict(chain=np.arange(posterior.num_chains), draw=np.arange(posterior.num_draws))


def _with_attrs(ds: xr.Dataset, posterior, sample: bool = True) -> xr.Dataset:
    import arviz_base  # lazily: save / load work without ArviZ

    attrs = arviz_base.make_attrs(
        attrs=dict(inference_library="bayesmf", inference_library_version=_version(), method=posterior.method),
        sample_dims=list(SAMPLE_DIMS) if sample else None,
    )
    return ds.assign_attrs(attrs)


# --- save -------------------------------------------------------------------------------


def _config_json(config: ModelConfig) -> str:
    return json.dumps(to_jsonable(config))


def _config_from_json(text: str) -> ModelConfig:
    raw = json.loads(text)
    return ModelConfig(
        rank=int(raw["rank"]),
        offsets=raw["offsets"],
        priors=raw["priors"],
        fixed=FixedPriors(**raw["fixed"]),
        hyper=HyperPriors(**raw["hyper"]),
        user_offsets=bool(raw.get("user_offsets", False)),  # files before user offsets have none
        **{f"{side}_features": None if raw.get(f"{side}_features") is None else FeatureSpec(**raw[f"{side}_features"])
           for side in ("user", "item")},
        # files before the ordinal likelihood are Gaussian
        likelihood=raw.get("likelihood", "gaussian"),
        num_stars=raw.get("num_stars"),
        cutpoint_prior=CutpointPrior(**raw.get("cutpoint_prior", {})),
    )


def _encode_ids(ids) -> tuple[np.ndarray, str]:
    """Ids as a netCDF-able array and the kind that :func:`_decode_ids` restores."""
    ids = np.asarray(ids)
    if ids.dtype.kind in "biuf":
        return ids, "numeric"
    if ids.dtype.kind == "U":
        return ids, f"fixed-str:{ids.dtype.str}"
    if ids.dtype.kind == "O":
        if all(isinstance(x, str) for x in ids):
            return ids.astype(str) if ids.size else np.zeros(0, "<U1"), "object-str"
        if all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in ids):
            return ids.astype(np.int64), "object-int"
    raise TypeError(f"ids must be all integers or all strings to be saved, got dtype {ids.dtype}")


def _decode_ids(values: np.ndarray, kind: str) -> np.ndarray:
    if kind == "numeric":
        return values
    if kind.startswith("fixed-str:"):
        return values.astype(kind.split(":", 1)[1])
    if kind == "object-str":
        return values.astype(str).astype(object)
    if kind == "object-int":
        return np.array([int(x) for x in values], dtype=object)
    raise ValueError(f"unknown id kind {kind!r}")


def _numeric_encoding(ds: xr.Dataset) -> dict:
    """No fill values (exact round trip of NaN and of every other value) and Fletcher-32
    checksums on chunkable numeric arrays."""
    out = {}
    for name, var in ds.variables.items():
        if var.dtype.kind in "iuf":
            enc = {"_FillValue": None}
            if var.ndim > 0 and var.size > 0:
                enc["fletcher32"] = True
            out[name] = enc
    return out


# --- smaller files ---------------------------------------------------------------------

def _file_tree(posterior, *, factor_dtype: np.dtype | None = None, serving: bool = False,
               draws_kept: dict | None = None, centres: dict | None = None) -> tuple[xr.DataTree, dict]:
    """The tree :func:`save` writes, and its encoding (``centres``: the int8 codes' centre per factor field)."""
    user_ids, user_kind = _encode_ids(posterior.user_vocab.ids)
    item_ids, item_kind = _encode_ids(posterior.item_vocab.ids)
    coords = dict(
        _param_coords(posterior),
        **_sample_coords(posterior),
        user=("user", user_ids, {"kind": user_kind}),
        item=("item", item_ids, {"kind": item_kind}),
    )
    fields = {}
    for name in Params._fields:
        if getattr(posterior.draws, name) is None:  # a field this model does not have
            continue
        value, attrs = np.asarray(getattr(posterior.draws, name)), {}
        if factor_dtype == np.int8 and name in FACTOR_FIELDS:
            q = compact.quantize_rows(value, (centres or {}).get(name), name)
            fields[name + CENTRE] = (SAMPLE_DIMS[:1] + PARAM_DIMS[name], q.centre)
            fields[name + SCALE] = (SAMPLE_DIMS[:1] + PARAM_DIMS[name][:1], q.scale)
            value, attrs = q.codes, {DTYPE_ATTR: value.dtype.str}
        elif factor_dtype is not None and name in FACTOR_FIELDS:
            value, attrs = compact.narrow_factors(name, value, factor_dtype)
        fields[name] = (SAMPLE_DIMS + PARAM_DIMS[name], value, attrs)
    draws = xr.Dataset(fields, coords=coords)
    nodes = {"/posterior": draws}
    stats = {}
    for name, value in ({} if serving else posterior.stats).items():
        value = np.asarray(value)
        lead = SAMPLE_DIMS if value.shape[:2] == (posterior.num_chains, posterior.num_draws) else ()
        stats[name] = (lead + tuple(f"{name}_dim_{k}" for k in range(value.ndim - len(lead))), value)
    if stats:
        nodes["/sample_stats"] = xr.Dataset(stats, coords=_used(_sample_coords(posterior), stats))
    train = posterior.train
    if train is not None:
        columns = dict(
            user_index=("row", np.asarray(train.user_index)),
            item_index=("row", np.asarray(train.item_index)),
            rating=("row", np.asarray(train.rating)),
        )
        if serving:  # predict, recommend and fold-in read no timestamps; store the rest exactly but small
            columns = {k: ("row", *compact.narrow_lossless(v)) for k, (_, v) in columns.items()}
        elif getattr(train, "timestamp", None) is not None:
            columns["timestamp"] = ("row", np.asarray(train.timestamp))
        nodes["/train"] = xr.Dataset(columns)
    if posterior.titles:
        keys, key_kind = _encode_ids(np.array(list(posterior.titles.keys()), dtype=object))
        titles = np.array([str(v) for v in posterior.titles.values()], dtype=str)
        nodes["/titles"] = xr.Dataset(dict(item_id=("title", keys, {"kind": key_kind}), title=("title", titles)))

    info, dropped = {}, []
    for key, value in ({} if serving else posterior.info).items():
        try:
            info[str(key)] = to_jsonable(value)
            json.dumps(info[str(key)])
        except (TypeError, ValueError):
            info.pop(str(key), None)
            dropped.append(str(key))
    attrs = dict(
        format=FORMAT,
        format_version=np.int64(FORMAT_VERSION),
        bayesmf_version=_version(),
        method=str(posterior.method),
        config=_config_json(posterior.config),
        scale=json.dumps(to_jsonable(posterior.scale)),
        timing=json.dumps(to_jsonable({} if serving else posterior.timing)),
        info=json.dumps(info),
        info_dropped=json.dumps(dropped),
        contents="serving" if serving else "full",
        factor_dtype=str(np.dtype(factor_dtype or posterior.draws.user_factors.dtype).name),
        features=json.dumps({side: encoder_to_dict(e) for side, e in getattr(posterior, "features", {}).items()}),
    )
    if draws_kept is not None:
        attrs["draws_kept"] = json.dumps(draws_kept)
    nodes["/"] = xr.Dataset(attrs=attrs)
    tree = xr.DataTree.from_dict(nodes)
    encoding = {path: _numeric_encoding(ds) for path, ds in nodes.items() if path != "/"}
    # One chunk per draw of each per-row field: no padding of partial edge chunks (5% of a file's
    # factor bytes with the default chunk shapes), and a draw is read in one piece.
    for name, var in draws.data_vars.items():
        if var.dims[:2] == SAMPLE_DIMS and var.ndim > 2 and var.size > 0:
            encoding["/posterior"][name]["chunksizes"] = (1, 1) + var.shape[2:]
    if serving and "/train" in encoding:  # lossless: shuffled gzip shrinks sorted indices and few distinct stars
        for enc in encoding["/train"].values():
            if "fletcher32" in enc:
                enc.update(zlib=True, complevel=4, shuffle=True)
    return tree, encoding


def _write_tree(tree: xr.DataTree, path: str, encoding: dict) -> None:
    """Write ``tree`` to ``path`` (the one place that writes; tests replace it to simulate a crash)."""
    tree.to_netcdf(path, engine=ENGINE, encoding=encoding)


def _fsync_path(path, directory: bool = False) -> None:
    if directory and os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY if directory else os.O_RDWR)
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def save(posterior, path, *, thin: int | None = None, num_draws: int | None = None, dtype=None,
         serving: bool = False) -> Path:
    """Save a posterior (draws, ids, config, training ratings, ...) to one netCDF file.

    The write is atomic: the file is written to a temporary file in the same
    directory, flushed to disk (fsync) and renamed over ``path``, so a crash
    mid-save leaves any existing file at ``path`` intact. By default arrays
    keep their dtypes: :func:`load` gives back a posterior whose predictions
    are bit-identical. The keywords write smaller files (see the module
    docstring for what each keeps).

    Parameters
    ----------
    posterior : bayesmf.posterior.Posterior
    path : str or os.PathLike
        Target file (conventionally ``*.nc``); its directory must exist.
    thin : int, optional
        Keep every ``thin``-th draw of each chain (draws ``0, thin, ...``).
    num_draws : int, optional
        Keep this many evenly spaced draws of each chain (first and last
        included). At most one of ``thin`` and ``num_draws``; the file
        predicts exactly as :func:`thinned` with the same argument.
    dtype : {"int8", "float16", "float32", "float64"}, optional
        Store ``user_factors`` and ``item_factors`` in this dtype (rounded to
        nearest); they load back in their original dtype. ``"float16"``
        halves a float32 file's factor bytes: each entry changes by at most
        ``2**-11`` of its magnitude (``2**-25`` absolutely below ``2**-14``);
        factors beyond float16's range (65504) are an error. ``"int8"``
        stores a quarter of float32's bytes as per-row 8-bit codes (see the
        module docstring); with ``thin`` / ``num_draws`` the kept draws
        take, per row, the mean of all the draws.
    serving : bool
        Keep only what ``predict``, ``recommend`` and fold-in need: drop
        ``stats``, ``timing``, ``info`` and the training timestamps, and
        store the training ratings' columns in the smallest dtype that holds
        them exactly, gzip-compressed (lossless). Predictions, top-k lists and fold-ins from the file
        are identical to the full file's.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> save(posterior, "model.nc")  # doctest: +SKIP
    >>> load("model.nc").predict([1], [50]).mean  # doctest: +SKIP
    >>> save(posterior, "serve.nc", serving=True, num_draws=25, dtype="float16")  # doctest: +SKIP
    """
    path = Path(path)
    factor_dtype = compact.check_factor_dtype(dtype)
    draws_kept = None
    centres = None
    if thin is not None or num_draws is not None:
        if factor_dtype == np.int8:  # the kept draws take the mean of all the draws (see bayesmf.compact)
            centres = {name: compact.chain_means(getattr(posterior.draws, name)) for name in FACTOR_FIELDS}
        source = posterior.num_draws
        posterior = thinned(posterior, thin=thin, num_draws=num_draws)
        index = draw_indices(source, thin=thin, keep=num_draws)
        draws_kept = dict(thin=thin, num_draws=num_draws, source_num_draws=source, indices=index.tolist())
    tree, encoding = _file_tree(posterior, factor_dtype=factor_dtype, serving=bool(serving), draws_kept=draws_kept,
                                centres=centres)
    directory = path.parent
    tmp = directory / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        _write_tree(tree, str(tmp), encoding)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_path(directory, directory=True)
    return path


# --- load -------------------------------------------------------------------------------


def _read_tree(path: Path) -> xr.DataTree:
    with xr.open_datatree(path, engine=ENGINE) as tree:
        return tree.load()


def _check_format(tree: xr.DataTree, path: Path) -> int:
    """The file's format version, or a ValueError naming it and :data:`READ_VERSIONS`."""
    marker = tree.attrs.get("format")
    if marker != FORMAT:
        raise ValueError(
            f"{path} is not a bayesmf model file: its 'format' attribute is {marker!r}, "
            f"expected {FORMAT!r} (a netCDF file written by another tool?)"
        )
    version = tree.attrs.get("format_version")
    writer = tree.attrs.get("bayesmf_version", "an unknown version")
    try:
        version = np.asarray(version)
        if version.size != 1 or version.dtype.kind not in "iu":
            raise TypeError
        version = int(version.reshape(()))
    except (TypeError, ValueError):
        raise ValueError(f"{path} has an unreadable bayesmf format version {version!r}") from None
    if version not in READ_VERSIONS:
        advice = "upgrade bayesmf" if version > max(READ_VERSIONS) else "refit or re-save it with a matching bayesmf"
        readable = ", ".join(str(v) for v in READ_VERSIONS)
        raise ValueError(
            f"{path} has bayesmf model format version {version} (written by bayesmf {writer}), but this "
            f"bayesmf ({_version()}) reads format versions {readable}; {advice}"
        )
    return version


def _node(tree: xr.DataTree, name: str) -> xr.Dataset | None:
    return tree[name].to_dataset() if name in tree.children else None


def _draws_and_ids(tree: xr.DataTree, version: int) -> tuple[xr.Dataset, xr.DataArray, xr.DataArray]:
    """The draws and the (encoded) user and item ids, wherever the version keeps them."""
    if version == 1:
        draws, vocab = _node(tree, "draws"), _node(tree, "vocab")
        if draws is None or vocab is None:
            raise KeyError("the draws or vocab group is missing")
        return draws, vocab["user_id"], vocab["item_id"]
    draws = _node(tree, "posterior")
    if draws is None:
        raise KeyError("the posterior group is missing")
    return draws, draws["user"], draws["item"]


def _restored(var: xr.DataArray) -> np.ndarray:
    """A stored array in the dtype it was saved from (attribute :data:`DTYPE_ATTR`), else as stored."""
    return compact.restored(var.values, var.attrs)


def _field(draws: xr.Dataset, name: str) -> np.ndarray:
    """A Params field of the stored draws, decoded from int8 codes where the file has them."""
    if name + SCALE not in draws:
        return _restored(draws[name])
    quantized = compact.Quantized(draws[name].values, draws[name + CENTRE].values, draws[name + SCALE].values)
    return compact.dequantize_rows(quantized, np.dtype(str(draws[name].attrs[DTYPE_ATTR])))


def _posterior_from_tree(tree: xr.DataTree, version: int) -> Posterior:
    attrs = tree.attrs
    draws_ds, user_ids, item_ids = _draws_and_ids(tree, version)
    draws = Params(**{name: _field(draws_ds, name) for name in Params._fields
                      if name in draws_ds or name not in OPTIONAL_FIELDS})
    user_vocab = Vocabulary(_decode_ids(user_ids.values, user_ids.attrs["kind"]))
    item_vocab = Vocabulary(_decode_ids(item_ids.values, item_ids.attrs["kind"]))
    scale_fields = json.loads(attrs["scale"])
    scale = None if scale_fields is None else RatingScale(**scale_fields)
    stats_ds = _node(tree, "sample_stats")
    stats = {name: var.values for name, var in stats_ds.data_vars.items()} if stats_ds is not None else {}
    train = None
    train_ds = _node(tree, "train")
    if train_ds is not None:
        train = Ratings(
            user_index=_restored(train_ds["user_index"]),
            item_index=_restored(train_ds["item_index"]),
            rating=_restored(train_ds["rating"]),
            timestamp=train_ds["timestamp"].values if "timestamp" in train_ds else None,
            user_vocab=user_vocab,
            item_vocab=item_vocab,
            scale=scale,
        )
    titles = {}
    titles_ds = _node(tree, "titles")
    if titles_ds is not None:
        keys = _decode_ids(titles_ds["item_id"].values, titles_ds["item_id"].attrs["kind"])
        titles = {_python_id(k): str(t) for k, t in zip(keys, titles_ds["title"].values)}
    return Posterior(
        draws,
        _config_from_json(attrs["config"]),
        user_vocab,
        item_vocab,
        scale,
        method=str(attrs["method"]),
        stats=stats,
        timing=json.loads(attrs["timing"]),
        train=train,
        titles=titles,
        info=json.loads(attrs["info"]),
        features={side: encoder_from_dict(d) for side, d in json.loads(attrs.get("features", "{}")).items()},
    )


def _python_id(x):
    return x.item() if isinstance(x, np.generic) else x


def load(path) -> Posterior:
    """Load a posterior written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    bayesmf.posterior.Posterior
        With ``tracked = None`` (not stored) and ``info`` holding the
        JSON-able entries that were saved (arrays come back as lists).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is truncated or corrupt ("... is not a readable bayesmf
        model file: ..."), is not a bayesmf file (a netCDF file from another
        tool: "... is not a bayesmf model file ..."), or has a format version
        this bayesmf does not read (the version found and
        :data:`READ_VERSIONS` are named).

    Examples
    --------
    >>> posterior = load("model.nc")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no bayesmf model file", str(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a directory, not a bayesmf model file", str(path))
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:3] == b"CDF":
        raise ValueError(
            f"{path} is not a bayesmf model file: it is a netCDF-3 file "
            f"(bayesmf writes netCDF-4 files marked format={FORMAT!r})"
        )
    try:
        tree = _read_tree(path)
    except PermissionError:
        raise
    except Exception as err:
        raise ValueError(f"{path} is not a readable bayesmf model file: {type(err).__name__}: {err}") from err
    version = _check_format(tree, path)
    try:
        return _posterior_from_tree(tree, version)
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable bayesmf model file: {type(err).__name__}: {err}") from err
