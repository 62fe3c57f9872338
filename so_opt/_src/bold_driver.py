"""The bold driver: grow the rate after a good step, undo and shrink after a bad one."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from so_opt._src import base
from so_opt._src.armijo import loss_only


class BoldDriverState(NamedTuple):
    """State of :func:`bold_driver`.

    Attributes:
      learning_rate: rate for the next trial step.
      accepted: whether the last trial step was kept.
      costs: work counters (one value evaluation per update).
      status: ``NON_FINITE`` when ``value`` or ``grad`` was not finite.
    """

    learning_rate: jax.Array
    accepted: jax.Array
    costs: base.Costs
    status: base.Status


def bold_driver(
    learning_rate: float = 0.1,
    increase: float = 1.1,
    decrease: float = 0.5,
    max_learning_rate: float | None = None,
    *,
    has_aux: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Gradient descent whose rate grows after good steps and halves after bad.

    Each update evaluates the trial :math:`x^+ = x - \eta \nabla f(x)` on
    ``value_fn`` (the same batch as ``value``) and then

    .. math::
      (u, \eta) \leftarrow \begin{cases}
        (x^+ - x,\ \rho^+ \eta) & f(x^+) < f(x) \\
        (x^+ - x,\ \eta) & f(x^+) = f(x) \\
        (0,\ \rho^- \eta) & f(x^+) > f(x),\ f(x^+) \text{ or } x^+ - x
          \text{ not finite.}
      \end{cases}

    A rejected step is undone before it is applied: the update is exactly 0,
    so ``optax.apply_updates`` leaves the params bit for bit as they were.
    (Undoing an applied step by adding its negative cannot promise that in
    floating point: a weight moved from 1e-8 to 0.1 and back loses its low
    bits.) The comparison is a difference, so the sign of the loss does not
    matter.

    Args:
      learning_rate: initial rate (> 0).
      increase: factor :math:`\rho^+ \ge 1` after a step that lowered the loss.
      decrease: factor :math:`\rho^-` in (0, 1) after a rejected step.
      max_learning_rate: optional upper bound on the rate.
      has_aux: ``value_fn`` returns ``(loss, aux)``; ``aux`` is ignored.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` giving the update (sign
      included); ``update`` needs ``params`` and the extra arguments
      ``value`` and ``value_fn``.

    Raises:
      ValueError: for a hyperparameter outside its range.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, so_opt
      >>> f = lambda x: jnp.sum(x ** 2)
      >>> opt = so_opt.bold_driver(learning_rate=2.0)
      >>> x = jnp.ones(2); state = opt.init(x)
      >>> v, g = jax.value_and_grad(f)(x)
      >>> u, state = opt.update(g, state, x, value=v, value_fn=f)
      >>> print(optax.apply_updates(x, u), state.learning_rate)
      [1. 1.] 1.0

    References:
      Vogl, Mangis, Rigler, Zink and Alkon, *Accelerating the convergence of
      the back-propagation method*, Biological Cybernetics, 1988.

      Battiti, *Accelerated backpropagation learning: two optimization
      methods*, Complex Systems, 1989.
    """
    base.check_bool(has_aux, "has_aux")
    base.check_positive(learning_rate, "learning_rate")
    base.check_positive(increase, "increase")  # a finite real number
    if not increase >= 1.0:
        raise ValueError(f"`increase` must be >= 1, got {increase}.")
    base.check_in_open_interval(decrease, "decrease", 0.0, 1.0)
    if max_learning_rate is not None:
        base.check_not_below(
            max_learning_rate, "max_learning_rate", learning_rate, "learning_rate"
        )
    cap = jnp.inf if max_learning_rate is None else max_learning_rate
    caller = "bold_driver"

    def init_fn(params):
        dtype = base.params_dtype(params)
        return BoldDriverState(
            learning_rate=jnp.asarray(learning_rate, dtype),
            accepted=jnp.asarray(True),
            costs=base.zero_costs(),
            status=base.ok_status(),
        )

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise TypeError(f"`{caller}` needs `params` in `update`.")
        fn = loss_only(base.extra_arg(extra_args, "value_fn", caller), has_aux)
        rate = state.learning_rate
        value = base.extra_arg(extra_args, "value", caller)
        value = base.check_scalar(value, "value", caller).astype(rate.dtype)
        finite = jnp.isfinite(value) & jnp.isfinite(otu.tree_vdot(updates, updates))

        step = otu.tree_scale(-rate, updates)
        trial = fn(otu.tree_add(params, step))
        trial = base.check_scalar(trial, "value_fn", caller).astype(rate.dtype)
        # A step that overflowed is refused even where ``value_fn`` is finite.
        step_finite = base.all_finite(step)
        accepted = finite & step_finite & jnp.isfinite(trial) & (trial <= value)
        lowered = accepted & (trial < value)
        new_rate = jnp.where(
            lowered,
            jnp.minimum(rate * increase, cap),
            jnp.where(accepted | ~finite, rate, rate * decrease),
        )
        code = jnp.where(finite, base.StatusCode.RUNNING, base.StatusCode.NON_FINITE)
        new_state = BoldDriverState(
            learning_rate=new_rate.astype(rate.dtype),
            accepted=accepted,
            costs=base.add_costs(state.costs, value_evals=1),
            status=base.make_status(code),
        )
        new_updates = jax.tree_util.tree_map(
            lambda s: jnp.where(accepted, s, jnp.zeros_like(s)), step
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
