"""Gradient descent with Armijo backtracking line search."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from so_opt._src import base


class ArmijoState(NamedTuple):
    """State of :func:`scale_by_armijo`.

    Attributes:
      learning_rate: step accepted at the last update.
      num_trials: value evaluations spent by the last line search.
      costs: cumulative work counters.
      status: ``LINE_SEARCH_FAILED`` when the last search found no step.
    """

    learning_rate: jax.Array
    num_trials: jax.Array
    costs: base.Costs
    status: base.Status


def _armijo_search(
    value_fn, params, direction, value, slope, initial, c1, shrink, max_backtracks
):
    """Backtracks from ``initial`` until sufficient decrease holds.

    Returns the accepted learning rate (0 if none), the trials used and a flag.
    """
    dtype = jnp.result_type(value)

    def trial_ok(rate):
        trial = otu.tree_add_scale(params, rate, direction)
        trial_value = value_fn(trial)
        # A non-finite trial fails like any other: it never becomes a step.
        bound = value + c1 * rate * slope
        return jnp.isfinite(trial_value) & (trial_value <= bound)

    def cond(carry):
        _, trials, accepted = carry
        return (~accepted) & (trials < max_backtracks + 1)

    def body(carry):
        rate, trials, _ = carry
        rate = jnp.where(trials > 0, rate * shrink, rate)
        return rate, trials + 1, trial_ok(rate)

    init = (jnp.asarray(initial, dtype), jnp.zeros((), base.COUNTER_DTYPE), False)
    rate, trials, accepted = jax.lax.while_loop(cond, body, init)
    return jnp.where(accepted, rate, jnp.zeros_like(rate)), trials, accepted


def scale_by_armijo(
    learning_rate: float = 1.0,
    c1: float = 1e-4,
    shrink: float = 0.5,
    max_backtracks: int = 30,
) -> optax.GradientTransformationExtraArgs:
    r"""Scales the descent direction by a step found by Armijo backtracking.

    The incoming ``updates`` are taken as the direction :math:`d` (for plain
    gradient descent, the negative gradient). Starting from
    :math:`\eta_0` = ``learning_rate``, the step shrinks by ``shrink`` until

    .. math::
      f(x + \eta d) \le f(x) + c_1 \eta \langle \nabla f(x), d \rangle .

    A trial whose value is not finite is rejected. If no trial passes within
    ``max_backtracks`` shrinks, the update is zero and the state's status is
    ``LINE_SEARCH_FAILED``.

    Args:
      learning_rate: initial (and largest) step tried at every update.
      c1: sufficient-decrease constant in (0, 1).
      shrink: factor in (0, 1) applied after each failed trial.
      max_backtracks: number of shrinks allowed after the first trial.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs
      ``params`` and the extra arguments ``value``, ``grad`` and ``value_fn``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, so_opt
      >>> f = lambda x: jnp.sum((x - 1.0) ** 2)
      >>> opt = optax.chain(optax.scale(-1.0), so_opt.scale_by_armijo())
      >>> x = jnp.zeros(2); state = opt.init(x)
      >>> v, g = jax.value_and_grad(f)(x)
      >>> u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
      >>> print(optax.apply_updates(x, u))
      [1. 1.]

    References:
      Armijo, *Minimization of functions having Lipschitz continuous first
      partial derivatives*, Pacific Journal of Mathematics, 1966.
    """
    base.check_positive(learning_rate, "learning_rate")
    base.check_in_open_interval(c1, "c1", 0.0, 1.0)
    base.check_in_open_interval(shrink, "shrink", 0.0, 1.0)
    base.check_int_at_least(max_backtracks, "max_backtracks", 0)

    def init_fn(params):
        base.check_float_params(params)
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
        return ArmijoState(
            learning_rate=jnp.asarray(learning_rate, dtype),
            num_trials=jnp.zeros((), base.COUNTER_DTYPE),
            costs=base.zero_costs(),
            status=base.ok_status(),
        )

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise TypeError("`scale_by_armijo` needs `params` in `update`.")
        value = base.extra_arg(extra_args, "value", "scale_by_armijo")
        grad = base.extra_arg(extra_args, "grad", "scale_by_armijo")
        value_fn = base.extra_arg(extra_args, "value_fn", "scale_by_armijo")
        value = jnp.asarray(value)
        slope = otu.tree_vdot(grad, updates)
        rate, trials, accepted = _armijo_search(
            value_fn,
            params,
            updates,
            value,
            slope,
            learning_rate,
            c1,
            shrink,
            max_backtracks,
        )
        code = jnp.where(
            accepted, base.StatusCode.RUNNING, base.StatusCode.LINE_SEARCH_FAILED
        )
        new_state = ArmijoState(
            learning_rate=rate.astype(state.learning_rate.dtype),
            num_trials=trials,
            costs=base.add_costs(state.costs, value_evals=trials),
            status=base.make_status(code),
        )
        return otu.tree_scale(rate, updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def armijo_sgd(
    learning_rate: float = 1.0,
    c1: float = 1e-4,
    shrink: float = 0.5,
    max_backtracks: int = 30,
) -> optax.GradientTransformationExtraArgs:
    r"""Gradient descent with an Armijo backtracking line search.

    Each update steps along :math:`d = -\nabla f(x)` with the largest
    :math:`\eta = \eta_0\,\beta^j` (``shrink`` :math:`=\beta`) that satisfies

    .. math::
      f(x - \eta \nabla f(x)) \le f(x) - c_1 \eta \|\nabla f(x)\|^2 .

    Args:
      learning_rate: initial step :math:`\eta_0` tried at every update.
      c1: sufficient-decrease constant in (0, 1).
      shrink: backtracking factor in (0, 1).
      max_backtracks: number of shrinks allowed after the first trial.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``
      and the extra arguments ``value``, ``grad`` and ``value_fn``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, so_opt
      >>> f = lambda x: jnp.sum(x ** 2)
      >>> opt = so_opt.armijo_sgd(learning_rate=1.0)
      >>> x = jnp.ones(3); state = opt.init(x)
      >>> v, g = jax.value_and_grad(f)(x)
      >>> u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
      >>> print(optax.apply_updates(x, u))
      [0. 0. 0.]

    References:
      Armijo, *Minimization of functions having Lipschitz continuous first
      partial derivatives*, Pacific Journal of Mathematics, 1966.
    """
    return optax.chain(
        optax.scale(-1.0),
        scale_by_armijo(learning_rate, c1, shrink, max_backtracks),
    )
