"""L-BFGS whose loop evaluates the objective at one place.

``optax.lbfgs()`` chains :func:`optax.scale_by_lbfgs` (the quasi-Newton
direction) with a zoom line search that evaluates the objective's value and
gradient in both branches of a ``lax.cond``, and a loop around it needs them
once more before its first step. Each call site compiles its own copy of the
objective's gradient, which for this package's objective is most of the
program: on MovieLens-100K u1 at rank 10 the MAP loop compiled in 1.2-1.5 s
on the 2-core CPU with three copies (237 fusions, 9 scatter-adds), against
0.9 s with one (157 fusions, 3 scatter-adds), and compiling is what the tuned MAP's first fit spends most of
its time on, on a GPU above all.

Here the line search is a state machine instead, driven one trial point per
iteration of the caller's loop: the loop body computes the value and
gradient at :func:`trial_point` once, and :func:`update` either accepts the
point or moves the trial step. The direction is still optax's
(:func:`optax.scale_by_lbfgs`, ten curvature pairs, the first step scaled to
length at most 1); only the step length is this module's.

The line search is the weak Wolfe bisection of Lewis & Overton (2013,
"Nonsmooth optimization via quasi-Newton methods", Math. Program. 141): with
``f`` and ``g`` at the accepted point ``x``, direction ``d`` and slope ``s =
g . d < 0``, a trial step ``t`` is accepted when

.. math::

    f(x + t d) \\le f(x) + c_1 t s \\quad\\text{and}\\quad \\nabla f(x + t d) \\cdot d \\ge c_2 s;

or under the approximate Wolfe conditions (:data:`APPROX_DECREASE`);
when the first fails the step is too long (``high = t``, bisect), when the
second fails it is too short (``low = t``, double until a ``high`` is known,
then bisect). The curvature condition keeps every pair's ``s . y`` positive,
so the inverse-Hessian approximation stays positive definite and each
direction is a descent direction (should round-off ever make one ascend, the
memory restarts from the scaled gradient). A trial value that is not finite
counts as too long. :data:`MAX_TRIALS` trials without acceptance mark the
state ``failed``: the objective no longer resolves a decrease along ``d``
(float32 round-off at a mode), and the caller stops.

Every state starts with a zero direction, so the first trial point is the
start itself and its evaluation fills in the value and gradient there (no
separate call before the loop): the first accepted "step" is the start.

Examples
--------
>>> import jax, jax.numpy as jnp
>>> f = lambda x: jnp.sum((x - 3.0) ** 2)
>>> state, x = init(jnp.zeros(2)), jnp.zeros(2)
>>> for _ in range(20):
...     point = trial_point(x, state)
...     x, state, accepted = update(state, x, point, *jax.value_and_grad(f)(point))
>>> bool(jnp.allclose(x, 3.0))
True
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array

# Sufficient decrease and curvature constants (Nocedal & Wright's usual values for quasi-Newton steps).
ARMIJO = 1e-4
CURVATURE = 0.9
# Trials per line search before giving up: 2**-30 of a step is below float32's resolution of the
# point at any useful scale, and a step doubled 30 times is past any finite objective's region.
MAX_TRIALS = 30
# Near a mode the decrease ``c_1 t s`` falls below a float32 objective's round-off, and the sufficient
# decrease test reads noise: there a step is also accepted under Hager & Zhang's (2005) approximate
# Wolfe conditions, ``f(x + t d) <= f(x) + eps |f(x)|`` and ``(2 c_1 - 1) s >= grad . d >= c_2 s``
# (eps as optax's zoom line search's ``approx_dec_rtol``).
APPROX_DECREASE = 1e-6
MEMORY_SIZE = 10


class LbfgsState(NamedTuple):
    """The line search's and the direction's state between trial points.

    Attributes
    ----------
    memory : optax.ScaleByLBFGSState
        :func:`optax.scale_by_lbfgs`'s curvature pairs.
    value : array, shape ()
        Objective at the accepted point (inf before the first evaluation).
    grad : pytree like the parameters
        Its gradient (zeros before the first evaluation).
    direction : pytree like the parameters
        Search direction from the accepted point (zeros at the start).
    step, low, high : arrays, shape ()
        Trial step and the bracket known to hold an acceptable one (``high``
        inf until a step was too long).
    trials : int32 array, shape ()
        Trials of the current line search.
    failed : bool array, shape ()
        :data:`MAX_TRIALS` trials found no acceptable step.
    """

    memory: Any
    value: Array
    grad: Any
    direction: Any
    step: Array
    low: Array
    high: Array
    trials: Array
    failed: Array


def _direction_fn(memory_size: int):
    return optax.scale_by_lbfgs(memory_size=memory_size)


def init(params, memory_size: int = MEMORY_SIZE) -> LbfgsState:
    """The state before the first evaluation, at ``params`` (any pytree of float arrays)."""
    dtype = jax.tree.leaves(params)[0].dtype
    zeros = optax.tree.zeros_like(params)
    return LbfgsState(
        memory=_direction_fn(memory_size).init(params),
        value=jnp.asarray(jnp.inf, dtype),
        grad=zeros,
        direction=zeros,
        step=jnp.ones((), dtype),
        low=jnp.zeros((), dtype),
        high=jnp.asarray(jnp.inf, dtype),
        trials=jnp.zeros((), jnp.int32),
        failed=jnp.zeros((), bool),
    )


def trial_point(params, state: LbfgsState):
    """The point whose value and gradient :func:`update` needs next: ``params + step * direction``."""
    return optax.tree.add_scale(params, state.step, state.direction)


def update(state: LbfgsState, params, point, value: Array, grad) -> tuple[Any, LbfgsState, Array]:
    """Take the value and gradient at ``point`` (from :func:`trial_point`).

    Parameters
    ----------
    state : LbfgsState
    params : pytree
        The accepted point.
    point : pytree
        ``trial_point(params, state)``.
    value : array, shape ()
    grad : pytree like ``params``
        Value and gradient of the objective at ``point``.

    Returns
    -------
    params : pytree
        ``point`` if accepted, else ``params``.
    state : LbfgsState
    accepted : bool array, shape ()
    """
    memory_size = state.memory.weights_memory.shape[0]
    slope = optax.tree.vdot(state.grad, state.direction)  # 0 at the start: any finite value is accepted
    slope_at = optax.tree.vdot(grad, state.direction)
    decrease = value <= state.value + ARMIJO * state.step * slope  # False for a NaN value
    # Hager & Zhang's approximate decrease, for decreases below the objective's round-off.
    approximate = (value <= state.value + APPROX_DECREASE * jnp.abs(state.value)) & (
        slope_at <= (2 * ARMIJO - 1) * slope)
    short_enough = (decrease | approximate) & jnp.isfinite(value)
    accepted = short_enough & (slope_at >= CURVATURE * slope)
    too_long = ~short_enough

    direction_fn = _direction_fn(memory_size)

    def restart():  # the scaled gradient step from an empty memory
        direction, memory = direction_fn.update(grad, direction_fn.init(point), point)
        return optax.tree.scale(-1.0, direction), memory

    def take():  # the next direction from the pair (point - params, grad - state.grad)
        direction, memory = direction_fn.update(grad, state.memory, point)
        direction = optax.tree.scale(-1.0, direction)
        # Round-off can make a direction ascend where the curvature pairs are nearly degenerate.
        ascends = optax.tree.vdot(grad, direction) >= 0
        direction, memory = jax.lax.cond(ascends, restart, lambda: (direction, memory))
        return LbfgsState(
            memory=memory, value=value, grad=grad, direction=direction, step=jnp.ones_like(state.step),
            low=jnp.zeros_like(state.low), high=jnp.full_like(state.high, jnp.inf),
            trials=jnp.zeros_like(state.trials), failed=jnp.zeros_like(state.failed))

    def move():  # the trial step within its bracket
        high = jnp.where(too_long, state.step, state.high)
        low = jnp.where(too_long, state.low, state.step)
        step = jnp.where(jnp.isinf(high), 2 * state.step, (low + high) / 2)
        return state._replace(step=step, low=low, high=high, trials=state.trials + 1,
                              failed=state.trials + 1 >= MAX_TRIALS)

    new_state = jax.lax.cond(accepted, take, move)
    new_params = jax.tree.map(lambda a, b: jnp.where(accepted, a, b), point, params)
    return new_params, new_state, accepted


class Lbfgs(NamedTuple):
    """The optimizer object of a MAP fit (hashable, so compiled loops are reused): :func:`init` with its memory."""

    memory_size: int = MEMORY_SIZE

    def init(self, params) -> LbfgsState:
        return init(params, self.memory_size)
