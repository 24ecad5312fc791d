"""The searches over precision ratios (bayesmf.ratio_search), on made-up validation curves.

The searches only decide which points to fit; a tuner that scores a point
by a known curve stands in for the MAP fits, so what each search evaluates
and what it returns can be checked exactly.
"""

import math

import numpy as np
import pytest

from bayesmf import ratio_search
from bayesmf.ratio_search import COARSE_GRIDS, MAX_EXTENSIONS, Point


class _CurveTuner:
    """Stands in for bayesmf.tuning's tuner: the score is ``curve(point)``, each point's fit kept in ``fits``."""

    def __init__(self, curve):
        self.curve, self.fits, self.order = curve, {}, []

    def __call__(self, point):
        key = point.key()
        if key not in self.fits:
            self.fits[key] = dict(point=point, rmse=float(self.curve(point)))
            self.order.append(point)
        return self.fits[key]["rmse"]

    def evaluated(self, coordinate="user"):
        return sorted(round(getattr(p, coordinate), 6) for p in self.order)


def _parabola(minimum, offset_minimum=3.0, offset_weight=0.0):
    """A validation curve with its minimum at factor ratio ``minimum`` (a parabola in the log ratio)."""
    return lambda p: (1.0 + (math.log(p.user) - math.log(minimum)) ** 2
                      + offset_weight * (math.log(p.offset) - math.log(offset_minimum)) ** 2)


def test_parabolic_step_lands_on_the_vertex_of_a_parabola():
    tuner = _CurveTuner(_parabola(13.0))
    for ratio in (3.0, 10.0, 30.0):
        tuner(Point(ratio, ratio, 3.0))
    point = ratio_search.parabolic_step(tuner, Point(10.0, 10.0, 3.0), "factor")
    assert point.user == pytest.approx(13.0) and point.item == point.user and point.offset == 3.0
    assert len(tuner.fits) == 4
    # The next step stops: the vertex is already evaluated.
    ratio_search.parabolic_step(tuner, point, "factor")
    assert len(tuner.fits) == 4


@pytest.mark.parametrize("minimum, best, evaluated", [
    # Stronger first: 30 beats 10, 100 does not; the weaker side (3) is never fitted.
    (20.0, 30.0, [10.0, 30.0, 100.0]),
    # 30 loses to 10, so the walk turns to the weaker side and stops when it rises again.
    (5.0, 3.0, [0.9, 3.0, 10.0, 30.0]),
    (10.0, 10.0, [3.0, 10.0, 30.0]),
])
def test_bracket_walks_toward_lower_rmse_and_stops_when_it_rises(minimum, best, evaluated):
    tuner = _CurveTuner(_parabola(minimum))
    point = ratio_search.bracket(tuner, Point(10.0, 10.0, 3.0), "factor", COARSE_GRIDS["factor"])
    assert point.user == pytest.approx(best) and point.item == point.user
    assert tuner.evaluated() == pytest.approx(evaluated)
    # Stronger regularization before weaker: the second fit is the grid's next value up.
    assert tuner.order[1].user == 30.0


def test_bracket_stops_max_extensions_past_the_grid():
    tuner = _CurveTuner(_parabola(1e6))
    point = ratio_search.bracket(tuner, Point(10.0, 10.0, 3.0), "factor", COARSE_GRIDS["factor"])
    ratio = COARSE_GRIDS["factor"][1] / COARSE_GRIDS["factor"][0]
    assert point.user == pytest.approx(30.0 * ratio**MAX_EXTENSIONS)
    assert len(tuner.fits) == 2 + MAX_EXTENSIONS  # 10, 30 and the extensions; never the weaker side


@pytest.mark.parametrize("minimum", np.exp(np.linspace(np.log(0.05), np.log(5e4), 41)).tolist())
def test_bracket_finds_the_point_of_the_whole_line_with_fewer_fits(minimum):
    """On a unimodal curve the walk ends on the grid point the whole-line search picks (extensions included),
    and never fits more points than it."""
    walked, whole = _CurveTuner(_parabola(minimum)), _CurveTuner(_parabola(minimum))
    start = Point(10.0, 10.0, 3.0)
    a = ratio_search.bracket(walked, start, "factor", COARSE_GRIDS["factor"])
    b = ratio_search.line_search(whole, start, "factor", COARSE_GRIDS["factor"])
    assert a.user == pytest.approx(b.user)
    assert len(walked.fits) <= len(whole.fits)


def test_quick_search_holds_the_offset_ratio_and_thorough_searches_it():
    curve = _parabola(13.0, offset_minimum=0.3, offset_weight=1.0)
    quick, thorough = _CurveTuner(curve), _CurveTuner(curve)
    start = Point(10.0, 10.0, 3.0)
    ratio_search.adaptive_search(quick, start, ("factor", "offset"), "quick")
    ratio_search.adaptive_search(thorough, start, ("factor", "offset"), "thorough")
    assert set(quick.evaluated("offset")) == {3.0}
    assert 0.3 in thorough.evaluated("offset") and 30.0 in thorough.evaluated("offset")
    best = {name: min(t.fits.values(), key=lambda f: f["rmse"])["point"] for name, t in (("q", quick), ("t", thorough))}
    # Both refine the factor ratio to the curve's minimum (two parabolic steps on an exact parabola).
    assert best["q"].user == pytest.approx(13.0) and best["t"].user == pytest.approx(13.0)
    assert best["t"].offset == pytest.approx(0.3) and best["q"].offset == 3.0
    assert len(quick.fits) < len(thorough.fits)


def test_check_search_names_the_choices():
    ratio_search.check_search("quick")
    with pytest.raises(ValueError, match=r"search must be one of \('quick', 'thorough'\), got 'fast'"):
        ratio_search.check_search("fast")
