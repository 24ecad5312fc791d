"""The MAP engine: its objective is the model's, its solvers agree, and bad
input fails clearly (tuning and the fit on ratings: test_tuning.py).

Tiny data drawn from the model (60 users x 40 movies, rank 3, continuous
ratings) keep every test fast; tolerances are named constants with their
source next to them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bayesmf.engines import map as map_engine
from bayesmf.engines import map_objective
from bayesmf.model import FixedPriors, ModelConfig, make_model_data, model_data_from_ratings, predict_mean

RANK = 3
# Precisions with ratios lambda / alpha = 0.5 (factors) and 0.25 (offsets):
# mild shrinkage, every rank direction stays in use on the tiny data.
PRIORS = FixedPriors(user_precision=2.0, item_precision=2.0, offset_precision=1.0, noise_precision=4.0)
CONFIG = ModelConfig(rank=RANK, priors="fixed", fixed=PRIORS)

# Float64 central differences with step 1e-5 have truncation error
# O(h^2 f''') ~ 1e-10 and round-off O(eps f / h) ~ 1e-11 relative: 1e-6 is
# loose for both and still catches any real gradient error.
FD_RTOL = 1e-6
# Two converged float32 solvers: the objective (per rating, ~0.86 here) is
# summed with round-off ~1e-7 relative and both stop at FTOL = 1e-7 per
# iteration, so they agree to a few 1e-6 (measured 5e-7); 1e-5 relative.
SOLVER_OBJECTIVE_RTOL = 1e-5
# Predictions at the two stopping points: measured RMS difference 3e-4 and max
# 3e-3 on ratings of sd ~1; 0.02 max is well above that and far below the
# noise sd (0.5).
SOLVER_PREDICTION_ATOL = 0.02
# Adam with a fixed step stops short of the exact mode (measured 4e-6
# relative above L-BFGS); it must be within 1e-4 relative.
ADAM_OBJECTIVE_RTOL = 1e-4


@pytest.fixture(scope="module")
def sim(map_sim):
    return map_sim


@pytest.fixture(scope="module")
def data(sim):
    return model_data_from_ratings(sim.ratings)


@pytest.fixture(scope="module")
def fits(data):
    key = jax.random.PRNGKey(0)
    return {solver: map_engine.fit(key, data, CONFIG, solver=solver) for solver in ("lbfgs", "als", "adam")}


def all_pairs_mean(result) -> np.ndarray:
    """Predicted mean of every (user, movie) cell: rotation-invariant."""
    params = jax.tree.map(lambda x: jnp.asarray(x[0, 0]), result.draws)
    users, items = np.meshgrid(
        np.arange(params.user_factors.shape[0]), np.arange(params.item_factors.shape[0]), indexing="ij"
    )
    return np.asarray(predict_mean(params, jnp.asarray(users.ravel()), jnp.asarray(items.ravel())))


# --- the objective is the model's ------------------------------------------------------------


LEARNED = FixedPriors(user_precision=2.0, item_precision=2.0, offset_precision=1.0, noise_precision=4.0,
                      mean_precision=2.0)


@pytest.mark.parametrize("offsets", ["estimated", "empirical"])
@pytest.mark.parametrize("mean_precision", [0.0, 2.0])
def test_gradient_matches_central_differences(offsets, mean_precision):
    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(1)
        users = rng.integers(0, 8, 40)
        items = rng.integers(0, 6, 40)
        keep = np.unique(users * 6 + items, return_index=True)[1]
        data = make_model_data(users[keep], items[keep], rng.normal(3.5, 1.0, keep.size), 8, 6, dtype=jnp.float64)
        config = CONFIG.replace(offsets=offsets, fixed=PRIORS._replace(mean_precision=mean_precision))
        latent = map_engine.init_latent(jax.random.PRNGKey(2), data, config, scale=0.7)
        latent = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), latent)
        if mean_precision:
            assert set(latent) >= {"user_mean", "item_mean"}
            latent["user_mean"] = latent["user_mean"] + 0.3  # off zero, so its prior term is exercised
        objective = jax.jit(map_engine.neg_log_joint, static_argnums=2)
        value, grad = jax.jit(jax.value_and_grad(map_engine.neg_log_joint), static_argnums=2)(latent, data, config)
        assert np.isfinite(float(value))
        h = 1e-5
        for k in range(5):
            direction = jax.tree_util.tree_map(
                lambda x: jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(3), k), x.shape, jnp.float64), latent
            )
            plus = jax.tree_util.tree_map(lambda x, d: x + h * d, latent, direction)
            minus = jax.tree_util.tree_map(lambda x, d: x - h * d, latent, direction)
            fd = (objective(plus, data, config) - objective(minus, data, config)) / (2 * h)
            analytic = sum(
                jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(direction))
            )
            np.testing.assert_allclose(float(fd), float(analytic), rtol=FD_RTOL)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_pair_mean_dense_gradient_equals_the_gathers():
    """At high rank ``pair_mean`` takes its gradient through a dense user x
    movie matrix; value and gradient must be those of the gathers (float64:
    the two sums differ only in order, ~1e-15 relative), also under vmap."""
    from bayesmf import model

    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(5)
        n, m, rank = 12, 9, model.DENSE_GRAD_MIN_RANK
        pairs = rng.choice(n * m, 60, replace=False)
        u, v = jnp.asarray(pairs // m, jnp.int32), jnp.asarray(pairs % m, jnp.int32)
        L, R = jnp.asarray(rng.normal(size=(n, rank))), jnp.asarray(rng.normal(size=(m, rank)))
        o, g = jnp.asarray(rng.normal(size=m)), jnp.asarray(rng.normal(size=pairs.size))

        def loss(fn):
            return lambda L, R, o: jnp.sum(g * fn(L, R, o, u, v) ** 2)

        dense = jax.value_and_grad(loss(model.pair_mean), (0, 1, 2))
        gathers = jax.value_and_grad(loss(model._pair_mean), (0, 1, 2))
        assert model.pair_mean(L, R, o, u, v).shape == (pairs.size,)
        for a, b in zip(jax.tree_util.tree_leaves(jax.jit(dense)(L, R, o)), jax.tree_util.tree_leaves(gathers(L, R, o))):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        batched = jax.vmap(jax.grad(loss(model.pair_mean), (0, 1, 2)))(L[None], R[None], o[None])
        for a, b in zip(batched, gathers(L, R, o)[1]):
            np.testing.assert_allclose(a[0], b, rtol=1e-12, atol=1e-12)
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("block_bytes", [None, 64])
def test_pair_mean_segment_layouts_equal_the_gathers(monkeypatch, block_bytes):
    """With the ratings' pair layouts ``pair_mean`` sums segments, in blocks
    of the other side's rows: value and gradient must be those of the
    gathers (float64: the sums differ only in order, ~1e-15 relative), with
    users and movies without ratings, a repeated pair, user offsets, many
    blocks (64 bytes: one or two rows per block) and under vmap."""
    from bayesmf import model, modeldata

    if block_bytes is not None:
        monkeypatch.setattr(modeldata, "PAIR_BLOCK_BYTES", block_bytes)
    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(6)
        n, m, rank = 14, 11, 4  # user 13 and movie 10 have no ratings
        pairs = np.concatenate([rng.choice((n - 1) * (m - 1), 70, replace=False), [5]])
        u, v = pairs // (m - 1), pairs % (m - 1)
        data = model.with_pair_layouts(make_model_data(u, v, rng.normal(size=pairs.size), n, m, jnp.float64), rank)
        layouts = data.pair_layouts
        assert layouts.users.num_rows.shape[0] // n > (1 if block_bytes else 0)
        u, v = data.user_index, data.item_index
        L, R = jnp.asarray(rng.normal(size=(n, rank))), jnp.asarray(rng.normal(size=(m, rank)))
        o, b, g = jnp.asarray(rng.normal(size=m)), jnp.asarray(rng.normal(size=n)), jnp.asarray(rng.normal(size=u.size))

        def loss(fn):
            return lambda L, R, o, b: jnp.sum(g * fn(L, R, o, u, v, b) ** 2)

        segments = jax.value_and_grad(loss(lambda *a: model.pair_mean(*a, layouts=layouts)), (0, 1, 2, 3))
        gathers = jax.value_and_grad(loss(model.pair_mean), (0, 1, 2, 3))
        expected = jax.tree_util.tree_leaves(gathers(L, R, o, b))
        for a, e in zip(jax.tree_util.tree_leaves(jax.jit(segments)(L, R, o, b)), expected):
            np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
        batched = jax.vmap(jax.grad(loss(lambda *a: model.pair_mean(*a, layouts=layouts)), (0, 1, 2, 3)))(
            L[None], R[None], o[None], b[None])
        for a, e in zip(batched, gathers(L, R, o, b)[1]):
            np.testing.assert_allclose(a[0], e, rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match="pair layouts built for"):
            model.pair_mean(L, R, o, u[:-1], v[:-1], layouts=layouts)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_lbfgs_reaches_the_same_mode_through_the_pair_layouts(data, monkeypatch):
    """From SEGMENT_GRAD_MIN_RANK the engine attaches the pair layouts: the
    same mode as through the scatter-adds, to the tolerances of two converged
    float32 solvers (the gradients differ only in summation order)."""
    from bayesmf.model import SEGMENT_GRAD_MIN_RANK

    config = CONFIG.replace(rank=SEGMENT_GRAD_MIN_RANK)
    key = jax.random.PRNGKey(3)
    assert map_engine.make_solver(data, config).ctx.data.pair_layouts is not None
    segments = map_engine.fit(key, data, config)
    monkeypatch.setattr(map_engine, "SEGMENT_GRAD_MIN_RANK", SEGMENT_GRAD_MIN_RANK + 1)
    assert map_engine.make_solver(data, config).ctx.data.pair_layouts is None
    scatter = map_engine.fit(key, data, config)
    assert segments.info["converged"] and scatter.info["converged"]
    np.testing.assert_allclose(segments.info["objective"], scatter.info["objective"], rtol=SOLVER_OBJECTIVE_RTOL)
    np.testing.assert_allclose(all_pairs_mean(segments), all_pairs_mean(scatter), atol=SOLVER_PREDICTION_ATOL)


@pytest.mark.parametrize("offsets", ["estimated", "empirical"])
@pytest.mark.parametrize("mean_precision", [0.0, 2.0])
def test_compiled_objective_has_the_model_gradient(data, offsets, mean_precision):
    """The loop evaluates the model at unit precisions with per-site scales;
    its gradient must equal that of the model's log joint at the precisions."""
    config = CONFIG.replace(offsets=offsets, fixed=FixedPriors(3.0, 0.5, 7.0, 2.5, mean_precision))
    latent = map_engine.init_latent(jax.random.PRNGKey(4), data, config, scale=0.5)
    if mean_precision:
        latent["user_mean"] = latent["user_mean"] + 0.3
        latent["item_mean"] = latent["item_mean"] - 0.2
    precisions = map_objective.precision_vector(config.fixed, jnp.float32)
    grad_loop = jax.jit(lambda x, p: jax.grad(map_objective.objective_fn(data, config, p))(x))(latent, precisions)
    grad_model = jax.jit(jax.grad(map_engine.neg_log_joint), static_argnums=2)(latent, data, config)
    for name in grad_model:
        # float32 gradients of one sum computed two ways: round-off ~1e-7 of
        # the largest entry; 1e-5 relative / 1e-7 absolute is loose for it.
        np.testing.assert_allclose(grad_loop[name], grad_model[name], rtol=1e-5, atol=1e-7)


# --- the solvers ---------------------------------------------------------------------------


def test_result_contract(fits, data):
    result = fits["lbfgs"]
    assert result.draws.user_factors.shape == (1, 1, data.num_users, RANK)
    assert result.draws.item_factors.shape == (1, 1, data.num_items, RANK)
    assert result.draws.item_offsets.shape == (1, 1, data.num_items)
    assert result.draws.noise_precision.shape == (1, 1)
    assert all(isinstance(x, np.ndarray) and np.all(np.isfinite(x)) for x in jax.tree.leaves(result.draws))
    assert result.draws.user_offsets is None  # the plain model has no user offsets
    assert result.stats["objective"].shape == (1, 1)
    assert result.info["solver"] == "lbfgs"
    assert result.info["converged"]
    trace = result.info["objective_trace"]
    assert trace.shape == (result.info["iterations"],) and np.all(np.isfinite(trace))
    assert result.timing["fit_seconds"] > 0
    np.testing.assert_allclose(result.draws.noise_precision[0, 0], PRIORS.noise_precision)


def test_als_and_lbfgs_reach_the_same_mode(fits):
    lbfgs, als = fits["lbfgs"], fits["als"]
    np.testing.assert_allclose(als.stats["objective"], lbfgs.stats["objective"], rtol=SOLVER_OBJECTIVE_RTOL)
    np.testing.assert_allclose(all_pairs_mean(als), all_pairs_mean(lbfgs), atol=SOLVER_PREDICTION_ATOL)


def test_learned_means_als_and_lbfgs_reach_the_same_mode(data):
    """With latent factor means ALS adds the exact mode of mu | factors to
    each sweep; it must reach the L-BFGS mode, and the means must be in use."""
    config = CONFIG.replace(fixed=LEARNED)
    key = jax.random.PRNGKey(0)
    lbfgs, als = (map_engine.fit(key, data, config, solver=solver) for solver in ("lbfgs", "als"))
    np.testing.assert_allclose(als.stats["objective"], lbfgs.stats["objective"], rtol=SOLVER_OBJECTIVE_RTOL)
    np.testing.assert_allclose(all_pairs_mean(als), all_pairs_mean(lbfgs), atol=SOLVER_PREDICTION_ATOL)
    assert np.all(np.diff(als.info["objective_trace"]) <= 1e-6 * np.abs(als.info["objective_trace"][1:]))
    # At the mode mu_R is the shrunk mean of the item rows: sum_v R_v / (M + beta).
    d = lbfgs.draws
    np.testing.assert_allclose(
        d.item_mean[0, 0], d.item_factors[0, 0].sum(0) / (data.num_items + LEARNED.mean_precision), atol=1e-3
    )
    assert float(np.linalg.norm(d.item_mean[0, 0])) > 0.01
    # The zero-mean model is this one restricted to mu = 0 (where the means'
    # prior term vanishes), so its mode scores no better under this objective.
    zero = map_engine.fit(key, data, config.replace(fixed=LEARNED._replace(mean_precision=0.0)), solver="lbfgs")
    at_zero = {k: jnp.asarray(getattr(zero.draws, k)[0, 0]) for k in ("user_factors", "item_factors", "item_offsets")}
    at_zero.update(user_mean=jnp.zeros(RANK), item_mean=jnp.zeros(RANK))
    zero_value = float(map_engine.neg_log_joint(at_zero, data, config))
    assert zero_value >= lbfgs.stats["objective"][0, 0] * (1 - SOLVER_OBJECTIVE_RTOL)


def test_jacobi_scales_follow_each_entry_curvature(data):
    """Scale ``sqrt(h_ref / h)`` with ``h`` the Gauss-Newton diagonal at the
    start: ``alpha n_u k_R + lambda_L`` for a user's entries, ``alpha n_v +
    tau_m`` for an offset, ``(N + beta) lambda`` for a learned mean."""
    config = CONFIG.replace(fixed=LEARNED)
    latent = map_engine.init_latent(jax.random.PRNGKey(0), data, config)
    precisions = map_objective.precision_vector(LEARNED, jnp.float32, config)
    scales = map_objective.jacobi_scales(latent, data, config, precisions)
    alpha, lam, tau = LEARNED.noise_precision, LEARNED.user_precision, LEARNED.offset_precision
    n_user, n_item = np.asarray(data.user_degree, np.float64), np.asarray(data.item_degree, np.float64)
    k_item = np.mean(np.asarray(latent["item_factors"], np.float64) ** 2)
    k_user = np.mean(np.asarray(latent["user_factors"], np.float64) ** 2)
    h_user = alpha * n_user * k_item + lam
    reference = h_user.mean()
    # float32 sums of ~100 terms: 1e-5 relative.
    np.testing.assert_allclose(scales["user_factors"][:, 0], np.sqrt(reference / h_user), rtol=1e-5)
    np.testing.assert_allclose(scales["item_factors"][:, 0], np.sqrt(reference / (alpha * n_item * k_user + lam)),
                               rtol=1e-5)
    np.testing.assert_allclose(scales["item_offsets"], np.sqrt(reference / (alpha * n_item + tau)), rtol=1e-5)
    np.testing.assert_allclose(scales["user_mean"], np.sqrt(reference / ((data.num_users + 2.0) * lam)), rtol=1e-5)
    assert set(scales) == {"user_factors", "item_factors", "item_offsets", "user_mean", "item_mean"}
    # scaled(., -1) undoes scaled(.); sites without a scale pass through.
    extra = dict(latent, other=jnp.ones(3))
    back = map_objective.scaled(map_objective.scaled(extra, scales, -1.0), scales)
    for name in extra:
        np.testing.assert_allclose(back[name], extra[name], rtol=1e-6)


@pytest.mark.parametrize("mean_precision", [0.0, 2.0])
def test_jacobi_scales_change_the_path_not_the_mode(mean_precision):
    """L-BFGS with and without the scales, on ratings whose rows' degrees
    spread as MovieLens's do, reaches one mode: the same objective and
    predictions.

    In float64 and run to a gradient norm of ~3e-7: in float32 both loops stop
    where the objective no longer resolves progress, and in this problem's
    flat directions (a user with two ratings of a movie with two) the two
    stopping points' predictions were measured up to 0.03 apart at objectives
    equal to 1e-7 -- the stopping rule's spread, not the mode's."""
    rng = np.random.default_rng(3)
    num_users, num_items = 80, 50
    # Zipf-like activity and popularity: degrees from a handful to most of the catalogue.
    user_weight = 1.0 / np.arange(1, num_users + 1) ** 0.8
    item_weight = 1.0 / np.arange(1, num_items + 1)
    pairs = {(int(rng.choice(num_users, p=user_weight / user_weight.sum())),
              int(rng.choice(num_items, p=item_weight / item_weight.sum()))) for _ in range(1500)}
    users, items = np.array(sorted(pairs)).T
    truth = rng.normal(size=(num_users, RANK)) @ rng.normal(size=(RANK, num_items)) / np.sqrt(RANK)
    ratings = 3.0 + truth[users, items] + 0.5 * rng.normal(size=users.size)
    config = CONFIG.replace(fixed=PRIORS._replace(mean_precision=mean_precision))
    key = jax.random.PRNGKey(0)
    with jax.enable_x64(True):
        data = make_model_data(users, items, ratings, num_users, num_items, dtype=jnp.float64)
        scaled, plain = (map_engine.fit(key, data, config, precondition=flag, tol=1e-9, ftol=1e-12, max_iters=3000)
                         for flag in (True, False))
        assert scaled.info["converged"] and plain.info["converged"]
        # Measured: objectives equal to 1e-11 relative, predictions to 3e-5 (max over the 4,000 pairs;
        # two seeds of the start). 1e-9 and 1e-3 leave 100x and 30x; the float32 stopping spread above
        # (0.03) would fail the second.
        np.testing.assert_allclose(scaled.stats["objective"], plain.stats["objective"], rtol=1e-9)
        np.testing.assert_allclose(all_pairs_mean(scaled), all_pairs_mean(plain), atol=1e-3)
        # The reported gradient norm is the model's, where the scaled coordinates' norm (scales
        # 0.09-1.1 here) differs by tens of percent; 1e-3 relative tells them apart.
        grad = jax.grad(map_engine.neg_log_joint)(_latent(scaled, config), data, config)
        np.testing.assert_allclose(scaled.info["grad_norm"], float(optax.tree_utils.tree_norm(grad)), rtol=1e-3)


def _latent(result, config) -> dict:
    """The latent sites of ``config`` from a MAP result's draws."""
    return {name: jnp.asarray(getattr(result.draws, name)[0, 0]) for name in map_engine.latent_sites(config)}


def test_als_never_increases_the_objective(fits):
    trace = fits["als"].info["objective_trace"]
    # Each half-sweep is an exact block minimization; float32 round-off of the
    # summed objective (~1e-7 relative) is the only allowed increase.
    assert np.all(np.diff(trace) <= 1e-6 * np.abs(trace[1:]))


def test_adam_gets_close_to_lbfgs(fits):
    adam, lbfgs = fits["adam"], fits["lbfgs"]
    assert adam.stats["objective"][0, 0] >= lbfgs.stats["objective"][0, 0] * (1 - SOLVER_OBJECTIVE_RTOL)
    np.testing.assert_allclose(adam.stats["objective"], lbfgs.stats["objective"], rtol=ADAM_OBJECTIVE_RTOL)


def test_optimizer_is_passed_in(data, fits):
    result = map_engine.fit(
        jax.random.PRNGKey(0), data, CONFIG, solver="adam", optimizer=optax.sgd(0.5, momentum=0.9), max_iters=3000
    )
    np.testing.assert_allclose(result.stats["objective"], fits["lbfgs"].stats["objective"], rtol=ADAM_OBJECTIVE_RTOL)


def test_a_user_optimizer_sees_the_sites(data, fits):
    """A user's optimizer gets the sites' dict, not the package's flat vector, so it may address them by name:
    momentum SGD on the factors and plain SGD on the offsets reach the L-BFGS mode too."""
    labels = {name: "offsets" if name == "item_offsets" else "factors" for name in map_engine.latent_sites(CONFIG)}
    optimizer = optax.multi_transform({"factors": optax.sgd(0.5, momentum=0.9), "offsets": optax.sgd(0.5)}, labels)
    result = map_engine.fit(jax.random.PRNGKey(0), data, CONFIG, solver="adam", optimizer=optimizer, max_iters=3000)
    np.testing.assert_allclose(result.stats["objective"], fits["lbfgs"].stats["objective"], rtol=ADAM_OBJECTIVE_RTOL)


@pytest.mark.parametrize("optimizer", ["optax-zoom", "lbfgs-memory-5"])
def test_other_lbfgs_optimizers_reach_the_same_mode(data, fits, optimizer):
    """optax.lbfgs() (its zoom line search, the previous default) and the package's L-BFGS with a
    shorter memory, each passed in as a user's optimizer (over the sites' dict): the default's mode,
    to the objective tolerance of two converged float32 solvers."""
    from bayesmf.engines import lbfgs

    chosen = optax.lbfgs() if optimizer == "optax-zoom" else lbfgs.Lbfgs(memory_size=5)
    result = map_engine.fit(jax.random.PRNGKey(0), data, CONFIG, optimizer=chosen)
    np.testing.assert_allclose(result.stats["objective"], fits["lbfgs"].stats["objective"],
                               rtol=SOLVER_OBJECTIVE_RTOL)
    np.testing.assert_allclose(all_pairs_mean(result), all_pairs_mean(fits["lbfgs"]), atol=SOLVER_PREDICTION_ATOL)


def test_warm_start_from_a_fit_stays_there(data, fits):
    result = map_engine.fit(jax.random.PRNGKey(9), data, CONFIG, solver="als", init_params=fits["als"].draws)
    assert result.info["iterations"] <= map_engine.FTOL_WINDOW + 1
    np.testing.assert_allclose(all_pairs_mean(result), all_pairs_mean(fits["als"]), atol=SOLVER_PREDICTION_ATOL)


def test_mode_recovers_the_truth(sim, fits):
    """At mild shrinkage the MAP means track the true means: RMSE well below
    the noise sd (0.5) on the cells of the truth."""
    true = sim.true_mean(*np.meshgrid(np.arange(60), np.arange(40), indexing="ij"))
    assert np.sqrt(np.mean((all_pairs_mean(fits["lbfgs"]) - true.ravel()) ** 2)) < 0.5


# --- the engine's pieces -------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["lbfgs", "als"])
def test_init_is_the_state_before_the_first_step(data, solver):
    key = jax.random.PRNGKey(0)
    state = map_engine.init(key, data, CONFIG, solver=solver, max_iters=50)
    assert isinstance(state, map_engine.MapState)
    latent = map_engine.init_latent(key, data, CONFIG)
    assert set(state.latent) == set(latent)
    for name in latent:
        np.testing.assert_array_equal(state.latent[name], latent[name])
    assert (state.opt_state is None) == (solver == "als")
    assert int(state.count) == 0 and np.isinf(state.value) and np.isinf(state.grad_norm)
    assert state.trace.shape == (50,) and np.all(np.isnan(state.trace))


def test_make_solver_and_solve_compose_to_fit(data, fits):
    """fit = make_solver + solve from init_latent + make_result: the same mode."""
    key = jax.random.PRNGKey(0)
    compiled = map_engine.make_solver(data, CONFIG, "als")
    latent, info = map_engine.solve(compiled, map_engine.init_latent(key, data, CONFIG), CONFIG.fixed)
    result = map_engine.make_result(latent, data, CONFIG, "als", info, 1.0)
    np.testing.assert_array_equal(result.stats["objective"], fits["als"].stats["objective"])
    assert info["iterations"] == fits["als"].info["iterations"]


@pytest.mark.parametrize("progress_bar", [True, False])
def test_fit_progress_bar(data, record_bars, progress_bar):
    """``progress_bar`` drives a one-tick tqdm bar around the compiled loop;
    enabled means ``disable=None`` (silent off a terminal)."""
    bars = record_bars(map_engine)
    map_engine.fit(jax.random.PRNGKey(0), data, CONFIG, solver="als", progress_bar=progress_bar)
    (bar,) = bars
    assert bar.kwargs["disable"] is (None if progress_bar else True)
    assert bar.n == 1 and bar.closed


def test_fit_progress_bar_is_silent_off_a_terminal(data, capsys):
    map_engine.fit(jax.random.PRNGKey(0), data, CONFIG, solver="als", progress_bar=True)
    assert capsys.readouterr().err == ""


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input(data):
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="unknown solver"):
        map_engine.fit(key, data, CONFIG, solver="newton")
    with pytest.raises(ValueError, match="degenerate"):
        map_engine.fit(key, data, CONFIG.replace(priors="hyper"))
    with pytest.raises(ValueError, match="degenerate"):
        map_engine.neg_log_joint({}, data, CONFIG.replace(priors="hyper"))
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="max_iters"):
            map_engine.fit(key, data, CONFIG, max_iters=bad)
    with pytest.raises(ValueError, match="takes no optimizer"):
        map_engine.fit(key, data, CONFIG, solver="als", optimizer=optax.adam(0.1))
    with pytest.raises(ValueError, match="init_params"):
        map_engine.fit(key, data, CONFIG, init_params={"user_factors": np.zeros((2, RANK))})


# --- rating weights and tolerances as data of the compiled loop ---------------------------------


def test_weighted_objective_drops_zero_weight_ratings(data):
    """Ratings of weight 0 (padding) leave the objective and its gradient
    those of the data without them: the same sums, divided by the weights'
    sum. Tolerance: float32 sums over 900 vs 1,200 terms in another order
    (relative round-off ~1e-6)."""
    extra = 300
    rng = np.random.default_rng(1)
    padded = data._replace(
        user_index=jnp.concatenate([data.user_index, jnp.asarray(rng.integers(0, data.num_users, extra), jnp.int32)]),
        item_index=jnp.concatenate([data.item_index, jnp.asarray(rng.integers(0, data.num_items, extra), jnp.int32)]),
        rating=jnp.concatenate([data.rating, jnp.asarray(rng.uniform(1, 5, extra), data.rating.dtype)]),
    )
    weights = jnp.concatenate([jnp.ones(data.nnz), jnp.zeros(extra)])
    latent = map_engine.init_latent(jax.random.PRNGKey(3), data, CONFIG, scale=0.5)
    precisions = map_objective.precision_vector(PRIORS, data.rating.dtype)
    plain = jax.value_and_grad(map_objective.objective_fn(data, CONFIG, precisions))(latent)
    weighted = jax.value_and_grad(map_objective.objective_fn(padded, CONFIG, precisions, weights))(latent)
    np.testing.assert_allclose(weighted[0], plain[0], rtol=1e-6)
    for name in latent:
        np.testing.assert_allclose(weighted[1][name], plain[1][name], rtol=1e-5, atol=1e-7)


def test_weights_need_an_optax_solver_and_the_data_shape(data):
    with pytest.raises(ValueError, match="weights need"):
        map_engine.make_solver(data, CONFIG, "als", weights=jnp.ones(data.nnz))
    with pytest.raises(ValueError, match="shape"):
        map_engine.make_solver(data, CONFIG, "lbfgs", weights=jnp.ones(data.nnz + 1))


def test_ftol_is_data_of_the_compiled_loop(data):
    """solve(..., ftol=x) on a loop made with another ftol is the fit of a loop
    made with x (identical iterates), and compiles nothing new."""
    start = map_engine.init_latent(jax.random.PRNGKey(0), data, CONFIG)
    loose = map_engine.make_solver(data, CONFIG, "lbfgs", ftol=1e-5)
    tight = map_engine.make_solver(data, CONFIG, "lbfgs", ftol=1e-7)
    assert loose.run is tight.run
    latent_tight, info_tight = map_engine.solve(tight, start, PRIORS)
    compiled = loose.run._cache_size()
    latent_override, info_override = map_engine.solve(loose, start, PRIORS, ftol=1e-7)
    assert loose.run._cache_size() == compiled
    assert info_override["iterations"] == info_tight["iterations"]
    for name in latent_tight:
        np.testing.assert_array_equal(latent_override[name], latent_tight[name])
    _, info_loose = map_engine.solve(loose, start, PRIORS)
    assert info_loose["iterations"] < info_tight["iterations"]
