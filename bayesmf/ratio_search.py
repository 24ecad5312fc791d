"""The searches over precision ratios that :func:`bayesmf.tuning.tune` runs: which points to fit, in which order.

A *tuner* is what the searches evaluate: a callable ``tuner(point) ->
validation RMSE`` (float) over :class:`Point` s, cached, that keeps every fit
in ``tuner.fits`` (a dict of ``{"point": Point, "rmse": float, ...}``);
:class:`bayesmf.tuning` supplies it (the MAP fits, each warm-started). The
searches here only decide the points, so they are pure logic over that
callable and are tested on made-up validation curves.

:func:`adaptive_search` is the search without an explicit grid, in two
flavours (:data:`bayesmf.choices.MAP_SEARCHES`): ``"quick"`` (the default of
:func:`bayesmf.tuning.fit_ratings`) and ``"thorough"``; :func:`grid_points`
lists an explicit grid's points.

Examples
--------
>>> scores = {}
>>> def tuner(point):  # a made-up validation curve with its minimum at ratio 20
...     scores[point.key()] = dict(point=point, rmse=(math.log(point.user) - math.log(20.0)) ** 2)
...     return scores[point.key()]["rmse"]
>>> tuner.fits = scores
>>> best = bracket(tuner, Point(10.0, 10.0, 3.0), "factor", COARSE_GRIDS["factor"])
>>> best.user, sorted(round(f["point"].user, 1) for f in scores.values())
(30.0, [10.0, 30.0, 100.0])
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np

from bayesmf.choices import MAP_SEARCHES
from bayesmf.model import FixedPriors, ModelConfig

# Precision ratios searched by bayesmf.tuning.tune (rho = lambda / alpha, in units of
# squared error): a coarse log grid per coordinate, extended past an end while
# the best point is on it (at most MAX_EXTENSIONS times). The thorough search
# takes the offset ratio's line at the middle factor ratio, then the factor
# ratio's line at the best offset ratio; the quick one holds the offset ratio
# at its middle value and walks the factor grid from its middle only in the
# direction that lowers the validation RMSE (bracket). Both then take
# REFINE_STEPS steps of successive parabolic interpolation of the
# validation RMSE in the log factor ratio. On MovieLens-100K (rank 10) the
# validation RMSE varies by ~0.001 between factor ratios 3^(1/4) apart near
# the optimum (~11-13), which a parabola through three grid points resolves;
# the offset ratio matters less (0.3 to 30 within 0.0025) and keeps its coarse
# grid. On u1 and on the ML-1M shape (rank 32) the thorough search picks the
# middle offset ratio, and the quick one skips the offset line (two fits) and
# the weaker end of the factor line there (at ML-1M a 236-iteration fit):
# 54.4 s against 76.5 s at ML-1M and 7.8 s against 9.0 s on u1, the same
# ratios and test RMSE (benchmarks/map_speed.py). A finer search would chase differences below
# what the tuning tolerance (bayesmf.tuning.TUNE_FTOL) resolves on the
# validation RMSE (~5e-4).
#
# With features the link precisions (each group's lambda_g, a ratio to the
# factor precision, shared by users and movies) are searched too, side
# features before implicit feedback, after the offset ratio: on
# MovieLens-100K u1 at rank 10 the test RMSE of MAP with side features goes
# from 0.929 at lambda_g = 3 to 0.907 at 300, and with implicit feedback from
# 0.919 at 1000 to 0.886 at 1 (Gibbs learns ~15-30 and ~0.6-0.9).
COARSE_GRIDS = {"factor": (3.0, 10.0, 30.0), "offset": (0.3, 3.0, 30.0), "side": (10.0, 100.0, 1000.0),
                "implicit": (0.1, 1.0, 10.0)}
REFINE_STEPS = 2
MAX_EXTENSIONS = 3


class Point(NamedTuple):
    """Precision ratios ``lambda / alpha`` of one tuning point."""

    user: float
    item: float
    offset: float
    side: float = 1.0
    implicit: float = 1.0

    def links(self, config: ModelConfig) -> ModelConfig:
        """``config`` with this point's link precisions in its feature specs."""
        specs = {f"{side}_features": getattr(config, f"{side}_features") for side in ("user", "item")}
        return config.replace(**{name: spec._replace(link_precision=self.side, implicit_precision=self.implicit)
                                 for name, spec in specs.items() if spec is not None})

    def priors(self, noise_precision: float = 1.0, mean_precision: float = 0.0,
               user_offset: float = FixedPriors().user_offset_precision) -> FixedPriors:
        """The precisions at noise precision ``noise_precision``; ``user_offset`` is the ratio
        ``tau_b / alpha`` of the user offsets' precision, which is held, not tuned."""
        return FixedPriors(
            self.user * noise_precision, self.item * noise_precision, self.offset * noise_precision, noise_precision,
            mean_precision, user_offset * noise_precision,
        )

    def key(self) -> tuple:
        return tuple(round(math.log(x), 6) for x in self)


def with_value(point: Point, coordinate: str, value: float) -> Point:
    """``point`` with ``coordinate`` set to ``value`` (``"factor"``: the user and the item ratio both)."""
    if coordinate == "factor":
        return point._replace(user=value, item=value)
    return point._replace(**{coordinate: value})


def coordinate_value(point: Point, coordinate: str) -> float:
    """``point``'s value of ``coordinate`` (``"factor"``: the user ratio)."""
    return point.user if coordinate == "factor" else getattr(point, coordinate)


def line_search(tuner, point: Point, coordinate: str, grid) -> Point:
    """Best point along one coordinate over ``grid`` (ascending, evenly spaced
    on a log scale), extending the grid past an end while the best value is
    on it (at most :data:`MAX_EXTENSIONS` times)."""
    values = sorted(float(v) for v in grid)
    ratio = values[1] / values[0]
    # Nearest to the current value first, so that warm starts chain outward.
    here = math.log(coordinate_value(point, coordinate))
    for value in sorted(values, key=lambda v: abs(math.log(v) - here)):
        tuner(with_value(point, coordinate, value))
    for extension in range(MAX_EXTENSIONS + 1):
        scores = [tuner(with_value(point, coordinate, v)) for v in values]
        best = int(np.argmin(scores))
        if extension == MAX_EXTENSIONS or 0 < best < len(values) - 1:
            break
        if best == 0:
            values.insert(0, values[0] / ratio)
        else:
            values.append(values[-1] * ratio)
    return with_value(point, coordinate, values[best])


def grid_value(values: list, k: int) -> float:
    """The ``k``-th value of an ascending log grid, continued past either end at the ratio of its first two
    values (as :func:`line_search` extends it)."""
    ratio = values[1] / values[0]
    if k < 0:
        return values[0] / ratio ** (-k)
    if k >= len(values):
        return values[-1] * ratio ** (k - len(values) + 1)
    return values[k]


def bracket(tuner, point: Point, coordinate: str, grid) -> Point:
    """Best point along one coordinate by walking ``grid`` (ascending, at
    least two values) from its middle value: first toward stronger
    regularization (those fits warm-start on the shrinkage path), or, when
    that step does not lower the validation RMSE, toward weaker; on while each
    step lowers it, at most :data:`MAX_EXTENSIONS` values past an end. The
    point returned has evaluated neighbours on both sides unless the walk
    reached that limit, so :func:`parabolic_step` can refine it. Where the
    validation RMSE is unimodal along the line it finds the grid point that
    :func:`line_search` finds, without evaluating the far side."""
    values = sorted(float(v) for v in grid)
    lowest, highest = -MAX_EXTENSIONS, len(values) - 1 + MAX_EXTENSIONS

    def at(k: int) -> Point:
        return with_value(point, coordinate, grid_value(values, k))

    best = len(values) // 2
    tuner(at(best))
    for step in (1, -1):
        k, moved = best + step, False
        while lowest <= k <= highest and tuner(at(k)) < tuner(at(best)):
            best, k, moved = k, k + step, True
        if moved:
            break
    return at(best)


def parabolic_step(tuner, point: Point, coordinate: str) -> Point:
    """One step of successive parabolic interpolation along ``coordinate``.

    Through the best evaluated point on this line (the other coordinates as in
    ``point``) and its nearest evaluated neighbours on either side, a parabola
    in the log ratio; its vertex (which lies between the neighbours when the
    middle point is the lowest) is evaluated, unless it is within
    :data:`MIN_LOG_STEP` of a point already evaluated. Returns the best point
    on the line afterwards."""
    line = {}
    for fit in tuner.fits.values():
        if with_value(fit["point"], coordinate, 1.0) == with_value(point, coordinate, 1.0):
            line[math.log(coordinate_value(fit["point"], coordinate))] = fit["rmse"]
    xs = sorted(line)
    best = min(range(len(xs)), key=lambda k: line[xs[k]])
    if 0 < best < len(xs) - 1:
        (x0, y0), (x1, y1), (x2, y2) = ((xs[k], line[xs[k]]) for k in (best - 1, best, best + 1))
        numerator = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
        denominator = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
        if denominator != 0:
            vertex = x1 - 0.5 * numerator / denominator
            if min(abs(vertex - x) for x in xs) > MIN_LOG_STEP:
                line[vertex] = tuner(with_value(point, coordinate, math.exp(vertex)))
    return with_value(point, coordinate, math.exp(min(line, key=line.get)))


# Parabolic steps closer than this (in log ratio) to an evaluated point are
# not taken: ratios 3^(1/16) apart differ by less than the tuning tolerance
# resolves on MovieLens-100K.
MIN_LOG_STEP = math.log(3.0) / 16


def adaptive_search(tuner, start: Point, coordinates: tuple, search: str = "quick") -> None:
    """The search without an explicit grid: fits ``tuner`` at the points it chooses, from ``start``.

    ``coordinates``: those searched, from ``"factor"`` (shared) or
    ``"user"`` and ``"item"``, ``"offset"``, ``"side"``, ``"implicit"``.
    ``search``: ``"quick"`` or ``"thorough"`` (the module's comment above
    :data:`COARSE_GRIDS`). The best point is the tuner's lowest score.
    """
    # Coarse: the offset ratio over its grid at the middle factor ratio
    # ("thorough" only), then the factor ratio(s) at the best offset ratio
    # (the offset ratio matters least, so the factor line is searched last,
    # where it is refined): its whole line ("thorough") or a walk from its
    # middle (bracket, "quick"). With features, the link precisions after
    # the offset ratio.
    point = start
    for coordinate in ("offset", "side", "implicit"):
        if coordinate in coordinates and not (coordinate == "offset" and search == "quick"):
            point = line_search(tuner, point, coordinate, COARSE_GRIDS[coordinate])
    factor_line = bracket if search == "quick" else line_search
    point = factor_line(tuner, point, "factor", COARSE_GRIDS["factor"])
    factors = [c for c in coordinates if c not in ("offset", "side", "implicit")]
    if factors != ["factor"]:
        # Separate user and item ratios: a line of three around the shared best, each.
        step = math.sqrt(COARSE_GRIDS["factor"][1] / COARSE_GRIDS["factor"][0])
        for coordinate in factors:
            value = coordinate_value(point, coordinate)
            point = line_search(tuner, point, coordinate, (value / step, value, value * step))
    # Refine the factor ratio(s) by successive parabolic interpolation.
    for _ in range(REFINE_STEPS):
        for coordinate in factors:
            point = parabolic_step(tuner, point, coordinate)
    # The link precisions and the factor ratio interact (a link row's
    # precision is their product): once more each link line around its best
    # value at the refined factor ratio, then the factor line again.
    links = [c for c in coordinates if c in ("side", "implicit")]
    if links:
        for coordinate in links:
            value = coordinate_value(point, coordinate)
            point = line_search(tuner, point, coordinate, (value / 3.0, value, value * 3.0))
        for coordinate in factors:
            value = coordinate_value(point, coordinate)
            point = line_search(tuner, point, coordinate, (value / 1.5, value, value * 1.5))


def check_search(search: str) -> None:
    """Raise ``ValueError`` unless ``search`` is one of :data:`bayesmf.choices.MAP_SEARCHES`."""
    if search not in MAP_SEARCHES:
        raise ValueError(f"search must be one of {MAP_SEARCHES}, got {search!r}")


def grid_points(grid: dict, start: Point, estimated: bool) -> list:
    """The points of an explicit ``grid`` (all combinations of its ratios; ``start`` fills the coordinates it
    leaves out, and the offset ratio unless ``estimated``), weakest factor regularization first."""
    allowed = {"factor", "user", "item", "offset", "side", "implicit"}
    unknown = set(grid) - allowed
    if unknown:
        raise ValueError(f"unknown grid keys {sorted(unknown)}; expected some of {sorted(allowed)}")
    if "factor" in grid and ({"user", "item"} & set(grid)):
        raise ValueError("give grid['factor'] (shared user/item ratio) or grid['user'] / grid['item'], not both")
    for name, values in grid.items():
        values = np.asarray(values, dtype=float)
        if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError(f"grid[{name!r}] must be a non-empty list of positive finite ratios, got {grid[name]!r}")
    offsets = [float(x) for x in grid.get("offset", [start.offset])] if estimated else [start.offset]
    if "factor" in grid:
        pairs = [(float(x), float(x)) for x in grid["factor"]]
    else:
        pairs = list(itertools.product(grid.get("user", [start.user]), grid.get("item", [start.item])))
    links = itertools.product(grid.get("side", [start.side]), grid.get("implicit", [start.implicit]))
    points = [Point(float(u), float(i), m, float(a), float(b))
              for (u, i), m, (a, b) in itertools.product(pairs, offsets, links)]
    # Weakest factor regularization first, so that warm starts follow the shrinkage path.
    return sorted(points, key=lambda p: (p.user * p.item, p.offset, -p.side, -p.implicit))
