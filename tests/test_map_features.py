"""MAP with features (Macau's prior, implicit feedback): the objective, the mode, tuned link precisions, the API."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from bayesmf import BayesMF, load, save
from bayesmf.engines import map as map_engine
from bayesmf.engines import map_objective
from bayesmf.model import FeatureSpec, FixedPriors, ModelConfig, model_data_from_ratings, with_features

PRIORS = FixedPriors(8.0, 6.0, 2.0, 4.0, 2.0, 3.0)


@pytest.fixture(scope="module")
def problem(map_sim):
    """The MAP tests' ratings with 3 side columns per user, 2 per movie and implicit feedback on both sides."""
    rng = np.random.default_rng(1)
    data = model_data_from_ratings(map_sim.ratings)
    config = ModelConfig(rank=3, priors="fixed", fixed=PRIORS, user_offsets=True,
                         user_features=FeatureSpec(num_side=3, implicit=True, link_precision=5.0, implicit_precision=0.5),
                         item_features=FeatureSpec(num_side=2, implicit=True, link_precision=2.0, implicit_precision=3.0))
    data = with_features(data, config, rng.normal(size=(data.num_users, 3)), rng.normal(size=(data.num_items, 2)))
    return data, config


def test_coordinates_round_trip(problem):
    data, config = problem
    latent = map_engine.init_latent(jax.random.PRNGKey(0), data, config, scale=0.5)
    latent["user_link"] = jax.random.normal(jax.random.PRNGKey(1), latent["user_link"].shape)
    back = map_objective.from_optimizer(map_objective.to_optimizer(latent, data, config), data, config)
    for name in latent:
        np.testing.assert_allclose(back[name], latent[name], atol=1e-5)


def _grad_norm(latent, data, config) -> float:
    grad = jax.grad(map_objective.neg_log_joint)(latent, data, config)
    return float(sum(jnp.sum(g**2) for g in jax.tree.leaves(grad))) ** 0.5


def test_fit_is_a_stationary_point_of_the_model(problem):
    """The loop scales each site's unit-precision density, link rows by lambda_g * lambda, and runs in the
    coordinates (L - X B, B): at its solution the gradient of the model's own negative log joint (in (L, B),
    at the config's precisions) must be at the loop's float32 floor (~2e-4 here, against ~0.1 at the start),
    and far below the gradient of the same point under a model whose link precisions differ by 2x (what a
    wrong weight would have optimized)."""
    data, config = problem
    fit = map_engine.fit(jax.random.PRNGKey(0), data, config, tol=1e-7, ftol=0.0, max_iters=3000)
    sites = map_engine.init_latent(jax.random.PRNGKey(0), data, config)
    latent = {name: jnp.asarray(getattr(fit.draws, name)[0, 0]) for name in sites}
    norm = _grad_norm(latent, data, config)
    assert norm < 5e-3 * _grad_norm(sites, data, config)
    for side in ("user", "item"):
        spec = getattr(config, f"{side}_features")
        for name in ("link_precision", "implicit_precision"):
            wrong = config.replace(**{f"{side}_features": spec._replace(**{name: 2 * getattr(spec, name)})})
            assert _grad_norm(latent, data, wrong) > 10 * norm, (side, name)


def test_objective_has_the_model_gradient_in_optimizer_coordinates(problem):
    """The loop's objective at z = (L - X B, B) is the model's negative log joint at from_optimizer(z), up to an
    additive constant, with the same gradient: the model's prior mean mu + X B reads the product the coordinate
    change formed (one product per side), and must still be that product."""
    data, config = problem
    latent = map_engine.init_latent(jax.random.PRNGKey(2), data, config, scale=0.5)
    for name in ("user_link", "item_link"):
        latent[name] = 0.3 * jax.random.normal(jax.random.PRNGKey(len(name)), latent[name].shape)
    z = map_objective.to_optimizer(latent, data, config)
    precisions = map_objective.precision_vector(config.fixed, jnp.float32, config)
    loop = jax.grad(map_objective.objective_fn(data, config, precisions))(z)
    model = jax.grad(lambda z: map_objective.neg_log_joint(map_objective.from_optimizer(z, data, config),
                                                           data, config))(z)
    for name in model:
        # One float32 sum taken two ways: round-off ~1e-7 of the largest entry.
        np.testing.assert_allclose(loop[name], model[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_objective_forms_each_sides_feature_product_once(problem, monkeypatch):
    """X B is formed once per side per evaluation (a sparse product and its transpose on every iteration)."""
    from bayesmf.featurerows import FeatureRows

    data, config = problem
    calls = []
    product = FeatureRows.__matmul__
    monkeypatch.setattr(FeatureRows, "__matmul__", lambda x, b: calls.append(x.shape) or product(x, b))
    z = map_objective.to_optimizer(map_engine.init_latent(jax.random.PRNGKey(0), data, config), data, config)
    calls.clear()
    precisions = map_objective.precision_vector(config.fixed, jnp.float32, config)
    jax.value_and_grad(map_objective.objective_fn(data, config, precisions))(z)
    assert sorted(calls) == sorted([data.user_features.shape, data.item_features.shape])


def test_link_precisions_enter_the_loop_as_data(problem):
    """Two fits at different link precisions share one compiled loop and give different modes."""
    data, config = problem
    solver = map_engine.make_solver(data, config)
    start = map_engine.init_latent(jax.random.PRNGKey(0), data, config)
    weak, _ = map_engine.solve(solver, start, PRIORS)
    strong_config = config.replace(user_features=config.user_features._replace(link_precision=500.0))
    strong, _ = map_engine.solve(solver, start, PRIORS, config=strong_config)
    assert map_engine.make_solver(data, strong_config).run is solver.run
    side = slice(0, 3)
    assert float(jnp.linalg.norm(strong["user_link"][side])) < 0.5 * float(jnp.linalg.norm(weak["user_link"][side]))


def test_link_jacobi_scales_follow_the_rows_their_features_reach(problem):
    """A link entry's scale is sqrt(h_ref / h) with h = alpha k_other sum_u X_uf^2 n_u (the ratings of the
    rows its feature moves) plus its prior's lambda_g lambda, for side and implicit columns alike."""
    data, config = problem
    start = map_objective.to_optimizer(map_engine.init_latent(jax.random.PRNGKey(0), data, config), data, config)
    precisions = map_objective.precision_vector(PRIORS, jnp.float32, config)
    scales = map_objective.jacobi_scales(start, data, config, precisions)
    alpha = PRIORS.noise_precision
    k = {side: np.mean(np.asarray(start[f"{side}_factors"], np.float64) ** 2) for side in ("user", "item")}
    reference = np.mean(alpha * np.asarray(data.user_degree) * k["item"] + PRIORS.user_precision)
    for side, other, lam, num_other in (("user", "item", PRIORS.user_precision, data.num_items),
                                        ("item", "user", PRIORS.item_precision, data.num_users)):
        spec = getattr(config, f"{side}_features")
        x = np.asarray(getattr(data, f"{side}_features"), np.float64)
        degree = np.asarray(getattr(data, f"{side}_degree"), np.float64)
        group = np.where(np.arange(x.shape[1]) < spec.num_side, spec.link_precision, spec.implicit_precision)
        assert x.shape[1] == len(spec.groups(num_other))
        h = alpha * k[other] * (x**2).T @ degree + group * lam
        # float32 sums over 40-60 rows: 1e-5 relative.
        np.testing.assert_allclose(scales[f"{side}_link"][:, 0], np.sqrt(reference / h), rtol=1e-5)


def test_a_warm_start_into_a_stiff_link_prior_reaches_its_mode(problem):
    """The tuning's warm start: from the mode at the problem's link precisions to one at 1e6 times them (the
    search reaches such ratios). The loop must run to its float32 floor (measured: the model's gradient norm
    4.7e-5 at the stop; a cold fit at link precisions 1e3-1e6 run with tol 1e-7 and no ftol reaches 1e-5 to
    3e-5). With the Gaussian normalizers in the objective (w log(2 pi) / 2 per link entry, ~1e6 per rating)
    float32 no longer resolved its progress and this warm fit stopped at a gradient norm of 2.3 (without the
    links' Jacobi scales, 0.054); the cold fit at link precision 1e6 stopped at 11."""
    data, config = problem
    solver = map_engine.make_solver(data, config)
    weak, _ = map_engine.solve(solver, map_engine.init_latent(jax.random.PRNGKey(0), data, config), PRIORS)
    stiff = config.replace(**{f"{side}_features": getattr(config, f"{side}_features")._replace(
        link_precision=1e6 * getattr(config, f"{side}_features").link_precision,
        implicit_precision=1e6 * getattr(config, f"{side}_features").implicit_precision) for side in ("user", "item")})
    warm, info = map_engine.solve(solver, weak, PRIORS, config=stiff)
    assert info["iterations"] > map_engine.FTOL_WINDOW + 1
    assert _grad_norm(warm, data, stiff) < 1e-3


def _informative(seed: int = 0):
    """Users whose factors are set by a 4-level category (plus small noise), with few ratings each."""
    from bayesmf.data import Ratings

    rng = np.random.default_rng(seed)
    num_users, num_items, rank = 200, 60, 2
    groups = rng.integers(0, 4, num_users)
    centres = rng.normal(0, 1.0, (4, rank))
    users = centres[groups] + 0.1 * rng.normal(size=(num_users, rank))
    items = rng.normal(0, 1.0, (num_items, rank))
    rows = [(u, v) for u in range(num_users) for v in rng.choice(num_items, 8, replace=False)]
    u, v = np.asarray(rows).T
    r = np.sum(users[u] * items[v], axis=1) + 3.0 + 0.3 * rng.normal(size=len(u))
    ratings = Ratings.from_arrays(u + 1, v + 1, r)
    frame = pd.DataFrame({"group": np.asarray(list("abcd"))[groups]}, index=np.arange(1, num_users + 1))
    return ratings, frame


def test_side_features_help_map_where_they_inform(tmp_path):
    """Each user has 6 training ratings; their category sets their factors. MAP with the category as a side
    feature pools the users of a category, so its held-out RMSE is lower than plain MAP's. Over seeds 0-3 of
    this design the gain was 0.040, 0.109, 0.171 and 0.075 (noise sd 0.3); 0.02 leaves a margin for a real
    effect and none for a link that does nothing."""
    from bayesmf import split

    ratings, frame = _informative()
    parts = split.make_split(ratings, "leave-k-out", k=2, seed=0)
    plain = BayesMF(rank=2, method="map", progress_bar=False).fit(0, parts.train)
    model = BayesMF(rank=2, method="map", progress_bar=False)
    side = model.fit(0, parts.train, user_features=frame)
    rmse = {name: float(post.evaluate(parts.test)["rmse"].iloc[0]) for name, post in (("plain", plain), ("side", side))}
    assert rmse["side"] < rmse["plain"] - 0.02, rmse
    # The tuned link precision is in the model and in the tuning table.
    assert side.config.user_features.link_precision == pytest.approx(side.info["ratios"]["side"])
    assert "side_ratio" in pd.DataFrame(side.info["tuning"]).columns
    # A new user's prediction comes from their category, and the file keeps it.
    new = frame.iloc[:1].copy()
    new.index = [9001]
    item = np.asarray(parts.train.item_vocab.ids)[:3]
    path = tmp_path / "map_side.nc"
    save(side, path)
    np.testing.assert_allclose(load(path).predict([9001] * 3, item, user_features=new).mean,
                               side.predict([9001] * 3, item, user_features=new).mean, rtol=1e-6)


def test_map_with_implicit_feedback_runs_end_to_end(map_sim):
    post = BayesMF(rank=3, method="map", implicit=True, user_offsets=True, progress_bar=False).fit(0, map_sim.ratings)
    assert "implicit" in post.info["ratios"] and post.config.item_features.implicit
    assert np.isfinite(post.info["validation_rmse"])
    assert post.draws.user_link.shape == (1, 1, map_sim.ratings.num_items, 3)


def test_tuned_implicit_feedback_map_compiles_its_loop_once(caplog):
    """The tuning fits and the refit share one compiled L-BFGS loop with implicit-feedback rows too:
    the sub-train's implicit entries are padded with zero entries to the refit's count."""
    import logging

    from bayesmf import BayesMF, split
    from bayesmf.synthetic import movielens_like

    sim = movielens_like(5, num_users=31, num_items=23, num_ratings=500, rank=2, min_per_user=6)
    train = split.make_split(sim.ratings, "random", test_fraction=0.2, seed=5).train
    model = BayesMF(rank=2, method="map", implicit=True, progress_bar=False, grid={"factor": [3.0, 30.0], "offset": [10.0]})
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        model.fit(5, train)
    compiles = [r.getMessage() for r in caplog.records if "XLA compilation of jit(run)" in r.getMessage()]
    assert len(compiles) == 1, compiles


def test_fixed_mode_log_joint_is_the_gaussian_density_written_out(problem):
    """The fixed mode's factor and link priors are ``MultivariateNormal(loc, (lambda I)^-1)``, which the model
    evaluates as independent Normals (no Cholesky factors): its log joint must equal the density written out
    with SciPy's multivariate normal, term by term (float64, so 1e-9 relative is round-off)."""
    from scipy import stats

    data32, config = problem
    rng = np.random.default_rng(5)
    f = config.fixed
    with jax.enable_x64(True):
        data = jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, data32)
        latent = {name: jnp.asarray(rng.normal(scale=0.7, size=np.shape(value)))
                  for name, value in map_engine.init_latent(jax.random.PRNGKey(0), data, config).items()}
        got = -float(map_objective.neg_log_joint(latent, data, config)) * data.nnz
    x = {name: np.asarray(value, np.float64) for name, value in latent.items()}
    expected = 0.0
    for side, precision, other in (("user", f.user_precision, data.num_items), ("item", f.item_precision, data.num_users)):
        spec = getattr(config, f"{side}_features")
        column_precision = spec.fixed_precisions()[spec.groups(other)] * precision
        for row, lam in zip(x[f"{side}_link"], column_precision):
            expected += stats.multivariate_normal.logpdf(row, np.zeros(config.rank), np.eye(config.rank) / lam)
        mean_cov = np.eye(config.rank) / (f.mean_precision * precision)
        expected += stats.multivariate_normal.logpdf(x[f"{side}_mean"], np.zeros(config.rank), mean_cov)
        loc = x[f"{side}_mean"] + np.asarray(getattr(data, f"{side}_features"), np.float64) @ x[f"{side}_link"]
        expected += sum(stats.multivariate_normal.logpdf(row, mu, np.eye(config.rank) / precision)
                        for row, mu in zip(x[f"{side}_factors"], loc))
    expected += stats.norm.logpdf(x["item_offsets"], float(data.global_mean), f.offset_precision ** -0.5).sum()
    expected += stats.norm.logpdf(x["user_offsets"], 0.0, f.user_offset_precision ** -0.5).sum()
    u, v = np.asarray(data.user_index), np.asarray(data.item_index)
    mean = np.sum(x["user_factors"][u] * x["item_factors"][v], axis=1) + x["item_offsets"][v] + x["user_offsets"][u]
    expected += stats.norm.logpdf(np.asarray(data.rating, np.float64), mean, f.noise_precision ** -0.5).sum()
    np.testing.assert_allclose(got, expected, rtol=1e-9)
