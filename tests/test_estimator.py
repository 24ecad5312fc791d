"""The estimator feels like scikit-learn's: parameters stored as given, get/set_params, a readable repr, seeds or keys."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import bayesmf
from bayesmf import synthetic
from bayesmf.model import FixedPriors


@pytest.fixture(scope="module")
def ratings():
    return synthetic.movielens_like(0, num_users=40, num_items=30, num_ratings=500, min_per_user=5).ratings


def test_constructor_arguments_are_stored_unchanged():
    model = bayesmf.BayesMF(rank=3, method="map", tune=False, layout="bucket")
    params = model.get_params()
    assert params["priors"] is None and params["fixed"] is None and params["num_warmup"] is None
    assert params["rank"] == 3 and params["layout"] == "bucket"
    # The resolved model is derived, not stored over the arguments.
    assert model.config.priors == "fixed" and model.config.fixed.mean_precision == 2.0
    clone = type(model)(**params)
    assert clone.get_params() == params


def test_set_params_checks_and_leaves_a_rejected_change_out():
    model = bayesmf.BayesMF(rank=4)
    assert model.set_params(rank=6, num_samples=30) is model and model.rank == 6
    with pytest.raises(ValueError, match="num_chains"):
        model.set_params(rank=8, num_chains=0)
    assert model.rank == 6 and model.num_chains == 1
    with pytest.raises(ValueError, match="unknown method"):
        bayesmf.BayesMF(method="mcmc")


def test_repr_shows_what_differs_from_the_defaults():
    assert repr(bayesmf.BayesMF()) == "BayesMF(rank=10)"
    assert repr(bayesmf.BayesMF(rank=5, method="map", fixed=FixedPriors())) == (
        "BayesMF(rank=5, method='map', fixed=FixedPriors(user_precision=20.0, item_precision=20.0, "
        "offset_precision=4.0, noise_precision=1.0, mean_precision=0.0, user_offset_precision=4.0))"
    )
    assert repr(bayesmf.BayesMF(user_offsets=True)) == "BayesMF(rank=10, user_offsets=True)"


def test_fit_takes_a_seed_or_a_key_and_returns_the_posterior(ratings):
    model = bayesmf.BayesMF(rank=2, num_samples=10, num_warmup=5, progress_bar=False)
    a = model.fit(3, ratings)
    assert isinstance(a, bayesmf.Posterior) and model.posterior_ is a
    b = model.fit(jax.random.PRNGKey(3), ratings)
    np.testing.assert_array_equal(a.draws.user_factors, b.draws.user_factors)
    for bad in (3.5, None, "3"):
        with pytest.raises(ValueError, match="rng_key"):
            model.fit(bad, ratings)


def test_svi_refuses_settings_it_would_drop(ratings):
    with pytest.raises(ValueError, match="num_warmup"):
        bayesmf.BayesMF(rank=2, method="svi", num_warmup=10, progress_bar=False).fit(0, ratings)
