"""The one JSON encoder of bayesmf: Python and NumPy values to what :func:`json.dumps` takes.

Used by :mod:`bayesmf.storage` (the JSON attributes of a model file) and by
:mod:`bayesmf.cli` (``--json`` output).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def to_jsonable(value, *, nonfinite_as_null: bool = False):
    """A JSON-able copy of ``value``, or a TypeError naming what is not JSON-able.

    NumPy scalars become Python numbers, numeric / boolean NumPy arrays
    nested lists, NamedTuples and dataclasses dicts of their fields, tuples
    lists; dicts (string keys only), lists, strings, numbers, booleans and
    None are copied through.

    Parameters
    ----------
    value : object
    nonfinite_as_null : bool
        Write NaN and +-inf as ``None`` (``null``), as strict JSON requires
        (the CLI's ``--json``). Off by default: :func:`json.dumps` writes
        them as ``NaN`` / ``Infinity`` and :func:`json.loads` reads them
        back, so a model file's attributes round-trip exactly.

    Returns
    -------
    None, bool, int, float, str, list or dict

    Raises
    ------
    TypeError
        ``value`` holds something else (a callable, an object array, a dict
        with non-string keys, ...).

    Examples
    --------
    >>> to_jsonable({"rmse": np.float32(0.5), "levels": np.array([0.5, 0.9])})
    {'rmse': 0.5, 'levels': [0.5, 0.9]}
    >>> to_jsonable([float("nan")], nonfinite_as_null=True)
    [None]
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        value = value.item()
        if not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"NumPy scalar of type {type(value).__name__} is not JSON-able")
        return to_jsonable(value, nonfinite_as_null=nonfinite_as_null)
    if isinstance(value, (int, float)):
        if nonfinite_as_null and isinstance(value, float) and not math.isfinite(value):
            return None
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"an array of dtype {value.dtype} is not JSON-able")
        return to_jsonable(value.tolist(), nonfinite_as_null=True) if nonfinite_as_null else value.tolist()
    if hasattr(value, "_asdict"):  # NamedTuple
        return {k: to_jsonable(v, nonfinite_as_null=nonfinite_as_null) for k, v in value._asdict().items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_jsonable(getattr(value, f.name), nonfinite_as_null=nonfinite_as_null)
            for f in dataclasses.fields(value)
        }
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("dict keys must be strings to be JSON-able")
        return {k: to_jsonable(v, nonfinite_as_null=nonfinite_as_null) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, nonfinite_as_null=nonfinite_as_null) for v in value]
    raise TypeError(f"{type(value).__name__} is not JSON-able")
