"""The encodings that make model files smaller: narrower dtypes and 8-bit factor draws.

:func:`bayesmf.storage.save` writes with these and :func:`bayesmf.storage.load`
reads them back; they are plain NumPy on host arrays.

* :func:`narrow_factors`: factor draws rounded to another float dtype
  (float16 halves a float32 file's factor bytes).
* :func:`narrow_lossless`: a column in the smallest dtype that holds it
  exactly (the training ratings of a serving file).
* :func:`quantize_rows` / :func:`dequantize_rows`: factor draws as 8-bit
  codes, a quarter of float32. Per chain and row, the stored centre is the
  row's mean over the draws the centre was taken from (all the sampler's
  draws, when the file keeps fewer); each kept draw's deviation from the
  kept draws' own mean is stored in int8 steps of the row's scale, the
  largest deviation over the row's draws and factors divided by 127. So a
  loaded entry is within half a step of the kept draw shifted by (centre -
  kept mean): per row, the kept draws keep their spread and take the mean of
  all the draws, which removes most of the Monte Carlo error that thinning
  adds to posterior-mean predictions.

Examples
--------
>>> import numpy as np
>>> draws = np.random.default_rng(0).normal(size=(1, 50, 4, 3)).astype(np.float32)  # (C, S, N, D)
>>> q = quantize_rows(draws)
>>> q.codes.dtype, q.centre.shape, q.scale.shape
(dtype('int8'), (1, 4, 3), (1, 4))
>>> bool(np.all(np.abs(dequantize_rows(q, np.float32) - draws) <= q.scale[:, None, :, None] / 2 + 1e-6))
True
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bayesmf.choices import FACTOR_DTYPES

# Params fields that ``dtype=`` narrows (the factor draws: almost all of a model file).
FACTOR_FIELDS = ("user_factors", "item_factors")
# Variable attribute naming the dtype an array is restored to on load.
DTYPE_ATTR = "bayesmf_dtype"
# Largest code magnitude of quantize_rows (symmetric, so -128 is unused).
CODE_MAX = 127


def check_factor_dtype(dtype) -> np.dtype | None:
    """``dtype`` as a NumPy dtype, or a ValueError naming :data:`FACTOR_DTYPES`; None stays None."""
    if dtype is None:
        return None
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in FACTOR_DTYPES:
        raise ValueError(f"dtype must be one of {FACTOR_DTYPES} (the stored dtype of the factor draws), got {dtype!r}")
    return np.dtype(name)


def narrow_factors(name: str, value: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, dict]:
    """``value`` cast to the float ``dtype`` (rounded to nearest) and the attribute that restores its dtype."""
    if value.dtype == dtype:
        return value, {}
    with np.errstate(over="ignore"):  # overflow is reported below, with the largest magnitude
        out = value.astype(dtype)
    if not np.array_equal(np.isfinite(out), np.isfinite(value)):
        raise ValueError(
            f"{name} has entries beyond the range of {dtype.name} (largest magnitude "
            f"{np.nanmax(np.abs(np.where(np.isfinite(value), value, 0))):.4g}); save it in a wider dtype"
        )
    return out, {DTYPE_ATTR: value.dtype.str}


def narrow_lossless(value: np.ndarray) -> tuple[np.ndarray, dict]:
    """``value`` in the smallest dtype that holds it exactly (ints: int16 / int32; floats: float16 /
    float32), with the attribute that restores its dtype; unchanged when nothing smaller fits."""
    value = np.asarray(value)
    if value.size == 0 or value.dtype.kind not in "iuf":
        return value, {}
    candidates = ("int16", "int32") if value.dtype.kind in "iu" else ("float16", "float32")
    for name in candidates:
        target = np.dtype(name)
        if target.itemsize >= value.dtype.itemsize:
            break
        if value.dtype.kind in "iu":
            info = np.iinfo(target)
            if value.min() < info.min or value.max() > info.max:
                continue
            return value.astype(target), {DTYPE_ATTR: value.dtype.str}
        with np.errstate(over="ignore"):
            narrow = value.astype(target)
        if np.array_equal(narrow.astype(value.dtype), value, equal_nan=True):
            return narrow, {DTYPE_ATTR: value.dtype.str}
    return value, {}


def restored(value: np.ndarray, attrs: dict) -> np.ndarray:
    """A stored array in the dtype it was saved from (attribute :data:`DTYPE_ATTR`), else as stored."""
    original = attrs.get(DTYPE_ATTR)
    return value if original is None else value.astype(np.dtype(str(original)))


class Quantized(NamedTuple):
    """Factor draws as 8-bit codes (see the module docstring)."""

    codes: np.ndarray   # (C, S, N, D) int8, in [-CODE_MAX, CODE_MAX]
    centre: np.ndarray  # (C, N, D) float32: per chain and row, the mean the loaded draws have
    scale: np.ndarray   # (C, N) float32: one code step; 0 where the kept draws do not vary


def chain_means(draws: np.ndarray) -> np.ndarray:
    """(C, S, N, D) -> (C, N, D): each chain's mean over its draws, accumulated in float64."""
    draws = np.asarray(draws)
    total = np.zeros(draws.shape[:1] + draws.shape[2:], np.float64)
    for s in range(draws.shape[1]):  # draw by draw: no float64 copy of all the draws
        total += draws[:, s]
    return (total / max(draws.shape[1], 1)).astype(np.float32)


def quantize_rows(draws: np.ndarray, centre: np.ndarray | None = None, name: str = "factors") -> Quantized:
    """8-bit codes of factor draws.

    Parameters
    ----------
    draws : array (C, S, N, D)
        Chains x draws x rows x factors, finite.
    centre : array (C, N, D), optional
        The mean the decoded draws take per chain and row: the mean over all
        the sampler's draws when ``draws`` are a thinned subset of them.
        Default: the mean of ``draws``.
    name : str
        Named in the error for non-finite draws.

    Returns
    -------
    Quantized
        Decoded by :func:`dequantize_rows` to within half a step
        (``scale / 2``, at most 1/254 of the row's largest deviation from
        the mean of ``draws``) of ``draws - mean(draws) + centre``.
    """
    draws = np.asarray(draws)
    if draws.ndim != 4:
        raise ValueError(f"{name} must have shape (chains, draws, rows, factors), got {draws.shape}")
    if not np.all(np.isfinite(draws)):
        raise ValueError(f"{name} has non-finite entries, which int8 codes cannot hold; save them as float32")
    own = chain_means(draws)
    centre = own if centre is None else np.asarray(centre, np.float32)
    if centre.shape != own.shape:
        raise ValueError(f"the centre of {name} must have shape {own.shape}, got {centre.shape}")
    largest = np.zeros(own.shape[:2], np.float32)  # (C, N)
    for s in range(draws.shape[1]):
        largest = np.maximum(largest, np.abs(draws[:, s] - own).max(axis=-1))
    scale = largest / CODE_MAX
    step = np.where(scale > 0, scale, 1.0)[..., None]  # (C, N, 1)
    codes = np.empty(draws.shape, np.int8)
    for s in range(draws.shape[1]):
        codes[:, s] = np.clip(np.rint((draws[:, s] - own) / step), -CODE_MAX, CODE_MAX)
    return Quantized(codes, centre, scale.astype(np.float32))


def dequantize_rows(quantized: Quantized, dtype) -> np.ndarray:
    """(C, S, N, D) draws in ``dtype`` from :func:`quantize_rows`'s codes: ``centre + code * scale``."""
    codes, centre, scale = (np.asarray(x) for x in quantized)
    out = codes.astype(dtype)
    out *= scale[:, None, :, None].astype(dtype)
    out += centre[:, None].astype(dtype)
    return out
