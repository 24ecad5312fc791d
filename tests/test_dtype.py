"""``BayesMF(dtype="float64")``: the samplers run in 64-bit arithmetic, keep
float64 draws that save and load as such, and agree with the float32 fit."""

import numpy as np
import pytest

import bayesmf
from bayesmf import split
from bayesmf.synthetic import movielens_like


@pytest.fixture(scope="module")
def problem():
    sim = movielens_like(0, rank=3, noise_sd=0.5, num_users=150, num_items=100, num_ratings=4000, min_per_user=5)
    return split.random_holdout(sim.ratings, 0.15, 0)


@pytest.mark.parametrize("method", ["gibbs", "svi"])
def test_float64_fit_keeps_float64_draws_and_agrees(problem, method, tmp_path):
    kwargs = dict(num_samples=100, progress_bar=False)
    if method == "svi":
        kwargs["num_steps"] = 1500
    else:
        kwargs["num_warmup"] = 50
    scores = {}
    for dtype in ("float32", "float64"):
        post = bayesmf.BayesMF(4, method, dtype=dtype, **kwargs).fit(0, problem.train)
        assert post.draws.user_factors.dtype == np.dtype(dtype)
        assert np.isfinite(post.draws.user_factors).all()
        scores[dtype] = post.evaluate(problem.test).loc[("all", "all")]
        path = tmp_path / f"{dtype}.nc"
        bayesmf.save(post, path)
        assert bayesmf.load(path).draws.user_factors.dtype == np.dtype(dtype)
    # Two runs whose chains part ways at the first rounding difference: the
    # test RMSE of a 100-draw posterior mean differs by its Monte Carlo error,
    # about the predictive-mean sd (~0.1 here) / sqrt(ESS ~ 30) per pair and
    # far less averaged over 600 pairs; 0.02 is a loose bound on it.
    assert abs(scores["float64"]["rmse"] - scores["float32"]["rmse"]) < 0.02
    assert abs(scores["float64"]["coverage_90"] - scores["float32"]["coverage_90"]) < 0.05


def test_dtype_is_checked():
    with pytest.raises(ValueError, match="dtype must be one of"):
        bayesmf.BayesMF(4, "gibbs", dtype="float16")
    with pytest.raises(ValueError, match="is for the samplers"):
        bayesmf.BayesMF(4, "map", dtype="float64")
