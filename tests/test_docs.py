"""The API reference builds from the docstrings (docs/build_api.py, pdoc)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("pdoc") is None, reason="pdoc is not installed (pip install -e '.[docs]')")
def test_api_reference_builds(tmp_path):
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import build_api
    finally:
        sys.path.pop(0)
    pages = build_api.build(tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in pages}
    for module in ("bayesmf/estimator.html", "bayesmf/posterior.html", "bayesmf/coldstart.html", "bayesmf/ranking.html"):
        assert module in names, sorted(names)
    # The public entry points are documented with their docstrings.
    estimator = (tmp_path / "bayesmf" / "estimator.html").read_text()
    assert "BayesMF" in estimator and "Bayesian matrix factorization of ratings" in estimator
    coldstart = (tmp_path / "bayesmf" / "coldstart.html").read_text()
    assert "fold_in_users" in coldstart and "exact Gaussian" in coldstart
