"""The single-call-site L-BFGS (bayesmf.engines.lbfgs): it minimizes, every
accepted step meets the weak Wolfe conditions, it survives non-finite trial
values, it gives up cleanly where no step decreases, and the MAP loop built on
it holds one copy of the objective's gradient where optax's zoom line search
holds three."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bayesmf.engines import lbfgs
from bayesmf.engines import map as map_engine
from bayesmf.engines.map_objective import precision_vector, unit_config
from bayesmf.model import FixedPriors, ModelConfig, model_data_from_ratings


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def run(fn, x, evaluations):
    """Drive the state machine as the MAP loop does, until it fails or the gradient vanishes
    (float32 reaches exact zeros at a minimum); the accepted points and the last state."""
    state = lbfgs.init(x)
    value_and_grad, update = jax.jit(jax.value_and_grad(fn)), jax.jit(lbfgs.update)
    accepted_points = []
    for _ in range(evaluations):
        point = lbfgs.trial_point(x, state)
        value, grad = value_and_grad(point)
        previous = state
        x, state, accepted = update(state, x, point, value, grad)
        if accepted:
            accepted_points.append((previous, np.asarray(point), float(value), np.asarray(grad)))
        if state.failed or not np.any(np.asarray(state.grad)):
            break
    return x, state, accepted_points


def test_minimizes_the_rosenbrock_function():
    """The classic curved valley from the classic start (-1.2, 1, ...): float32
    resolves x to ~1e-3 there (f ~ 1e-7 at |x - 1| ~ 3e-4 along the valley)."""
    x0 = jnp.asarray([-1.2, 1.0, -1.2, 1.0], jnp.float32)
    x, state, _ = run(rosenbrock, x0, 400)
    np.testing.assert_allclose(x, 1.0, atol=1e-3)
    assert float(state.value) < 1e-6


def test_the_first_accepted_point_is_the_start():
    x0 = jnp.asarray([3.0, -2.0], jnp.float32)
    _, _, points = run(lambda x: jnp.sum(x**2), x0, 3)
    np.testing.assert_array_equal(points[0][1], x0)
    assert points[0][2] == 13.0


def test_every_accepted_step_meets_the_wolfe_conditions():
    """Sufficient decrease (or its approximate form) and curvature, hence
    s . y > 0 for every pair L-BFGS keeps: its inverse Hessian stays positive
    definite and each direction descends."""
    x0 = jnp.asarray([-1.2, 1.0, 0.5, -0.5, 2.0], jnp.float32)
    _, _, points = run(rosenbrock, x0, 300)
    assert len(points) > 20
    for (before, point, value, grad), (_, next_point, _, next_grad) in zip(points[1:], points[2:]):
        slope = float(np.dot(before.grad, before.direction))
        assert slope < 0
        assert value <= float(before.value) + lbfgs.APPROX_DECREASE * abs(float(before.value))
        assert float(np.dot(grad, before.direction)) >= lbfgs.CURVATURE * slope
    for (_, point, _, grad), (_, next_point, _, next_grad) in zip(points[1:], points[2:]):
        assert float(np.dot(next_point - point, next_grad - grad)) > 0


def test_a_non_finite_trial_value_shortens_the_step():
    """The objective is NaN beyond |x| = 2: the first step from x = 1.9 along
    -grad of (x - 10)^2 lands there and must be bisected back, not accepted."""
    fn = lambda x: jnp.where(jnp.abs(x[0]) < 2.0, (x[0] + 10.0) ** 2, jnp.nan)  # noqa: E731
    x, state, points = run(fn, jnp.asarray([1.9], jnp.float32), 60)
    assert all(np.isfinite(p[2]) for p in points)
    assert abs(float(x[0])) < 2.0 and float(x[0]) < 1.9


def test_gives_up_where_no_step_decreases():
    """A 'gradient' that points uphill: no trial step decreases, so the line
    search fails after MAX_TRIALS trials and says so."""
    fn = jax.custom_jvp(lambda x: jnp.sum(x**2))
    fn.defjvp(lambda primals, tangents: (jnp.sum(primals[0] ** 2), -2.0 * jnp.dot(primals[0], tangents[0])))
    _, state, points = run(fn, jnp.asarray([1.0, 2.0], jnp.float32), 200)
    assert bool(state.failed) and int(state.trials) == lbfgs.MAX_TRIALS
    assert len(points) == 1  # only the start


@pytest.fixture(scope="module")
def loop_inputs(map_sim):
    data = model_data_from_ratings(map_sim.ratings)
    priors = FixedPriors(2.0, 2.0, 1.0, 4.0, mean_precision=2.0)
    config = ModelConfig(rank=3, priors="fixed", fixed=priors)
    latent = map_engine.init_latent(jax.random.PRNGKey(0), data, config)
    args = (latent, precision_vector(priors, jnp.float32, config),
            map_engine.make_solver(data, config).ctx, map_engine._stop_thresholds(1e-5, 1e-7, jnp.float32))
    return config, args


def test_the_map_loop_holds_one_copy_of_the_gradient(loop_inputs):
    """The reason for the module: optax.lbfgs()'s zoom line search evaluates
    the objective in both branches of a cond, and its loop once before, so its
    program holds three copies of the gradient's scatter-adds; this loop's one."""
    config, args = loop_inputs

    def scatters(optimizer):  # in the compiled program, after XLA has inlined every call
        run_fn = map_engine._run_fn(unit_config(config), "lbfgs", optimizer, 100)
        return run_fn.lower(*args).compile().as_text().count(" scatter(")

    ours, optax_zoom = scatters(lbfgs.Lbfgs()), scatters(optax.lbfgs())
    assert ours > 0 and optax_zoom == 3 * ours


def test_the_map_loop_stops_when_the_line_search_fails(loop_inputs, monkeypatch):
    """A failed line search ends the loop (it would otherwise spin at count
    0 for ever): with every trial step refused, the fit stops after the start."""
    config, args = loop_inputs
    # No step can decrease by ARMIJO t slope (slope < 0) once ARMIJO is huge; only the start, with
    # its zero direction, is accepted.
    monkeypatch.setattr(lbfgs, "ARMIJO", 1e9)
    run_fn = map_engine._run_fn(unit_config(config), "lbfgs", lbfgs.Lbfgs(), 100)
    state, value, _ = run_fn(*args)
    assert int(state.count) == 1 and bool(state.opt_state.failed)
    assert np.isfinite(float(value))


def test_module_doctest():
    """The module's example (the state machine driven by hand to a minimum) runs as written."""
    import doctest

    assert doctest.testmod(lbfgs).failed == 0
