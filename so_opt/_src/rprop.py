"""Resilient backpropagation (iRprop-) without the one-step lag of optax 0.2.8."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from so_opt._src import base


class RpropState(NamedTuple):
    """State of :func:`rprop`.

    Attributes:
      step_size: per-parameter step sizes (a pytree like the params).
      prev_grad: gradient of the last update, zeroed where its sign flipped.
      costs: work counters (the rule itself evaluates nothing).
      status: ``NON_FINITE`` when the last gradient was not finite (the step
        was then zero and the state kept).
    """

    step_size: base.Updates
    prev_grad: base.Updates
    costs: base.Costs
    status: base.Status


def _rprop_leaf(grad, prev_grad, step_size, eta_minus, eta_plus, low, high):
    """One iRprop- step on a single leaf: new step size, kept gradient, update."""
    agree = jnp.sign(grad) * jnp.sign(prev_grad)
    step_size = jnp.where(
        agree > 0,
        jnp.minimum(step_size * eta_plus, high),
        jnp.where(agree < 0, jnp.maximum(step_size * eta_minus, low), step_size),
    )
    # After a sign flip the step is skipped and the flip forgotten, so the
    # next update neither grows nor shrinks the (already shrunk) step.
    grad = jnp.where(agree < 0, jnp.zeros_like(grad), grad)
    update = jnp.where(grad == 0, jnp.zeros_like(grad), -jnp.sign(grad) * step_size)
    return step_size, grad, update


def rprop(
    learning_rate: float = 0.1,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_learning_rate: float = 1e-6,
    max_learning_rate: float = 50.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Rprop in its iRprop- form: per-parameter steps driven by gradient signs.

    For each parameter, with :math:`p = \operatorname{sign}(g_t)
    \operatorname{sign}(g_{t-1})`:

    .. math::
      \Delta_t = \begin{cases}
        \min(\eta^+ \Delta_{t-1}, \Delta_{\max}) & p > 0 \\
        \max(\eta^- \Delta_{t-1}, \Delta_{\min}) & p < 0 \\
        \Delta_{t-1} & p = 0
      \end{cases}, \qquad
      u_t = -\operatorname{sign}(g_t)\,\Delta_t ,

    and where :math:`p < 0` the gradient is stored as 0 and :math:`u_t = 0`.
    The step size found from :math:`g_t` is used at once, for :math:`g_t`.
    ``optax.scale_by_rprop`` (0.2.8) applies it one update late: with rate
    0.1 and scalar gradients 1, 1, 1, -1, 1 it moves by 0, 0.1, 0.12, 0, 0,
    where iRprop- moves by 0.1, 0.12, 0.144, 0, 0.072.

    Rprop is a full-batch rule: gradient signs from mini-batches are noise.

    Args:
      learning_rate: initial step size of every parameter.
      eta_minus: shrink factor in (0, 1) after a sign flip.
      eta_plus: growth factor > 1 while the sign holds.
      min_learning_rate: lower bound on a step size (> 0).
      max_learning_rate: upper bound on a step size.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` giving the update (sign
      included); extra arguments of ``update`` are accepted and ignored.

    Raises:
      ValueError: for a hyperparameter outside its range.

    Examples:
      >>> import jax.numpy as jnp, so_opt
      >>> opt = so_opt.rprop(0.1)
      >>> state = opt.init(jnp.zeros(()))
      >>> for g in [1.0, 1.0, -1.0]:
      ...     u, state = opt.update(jnp.asarray(g), state)
      ...     print(round(float(u), 4))
      -0.1
      -0.12
      0.0

    References:
      Riedmiller and Braun, *A direct adaptive method for faster
      backpropagation learning: the RPROP algorithm*, ICNN 1993.

      Igel and Huesken, *Improving the Rprop learning algorithm*, NC 2000.
    """
    base.check_positive(learning_rate, "learning_rate")
    base.check_in_open_interval(eta_minus, "eta_minus", 0.0, 1.0)
    base.check_positive(eta_plus, "eta_plus")  # a finite real number
    if not eta_plus > 1.0:
        raise ValueError(f"`eta_plus` must be > 1, got {eta_plus}.")
    base.check_positive(min_learning_rate, "min_learning_rate")
    base.check_positive(max_learning_rate, "max_learning_rate")
    if not max_learning_rate >= learning_rate >= min_learning_rate:
        raise ValueError(
            "`learning_rate` must lie in [`min_learning_rate`, "
            f"`max_learning_rate`] = [{min_learning_rate}, {max_learning_rate}], "
            f"got {learning_rate}."
        )

    def init_fn(params):
        base.check_float_params(params)
        return RpropState(
            step_size=jax.tree_util.tree_map(
                lambda p: jnp.full_like(p, learning_rate), params
            ),
            prev_grad=jax.tree_util.tree_map(jnp.zeros_like, params),
            costs=base.zero_costs(),
            status=base.ok_status(),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args  # extra args are accepted and unused
        leaf = lambda g, pg, s: _rprop_leaf(
            g, pg, s, eta_minus, eta_plus, min_learning_rate, max_learning_rate
        )
        out = jax.tree_util.tree_map(leaf, updates, state.prev_grad, state.step_size)
        treedef = jax.tree_util.tree_structure(updates)
        step_size, prev_grad, new_updates = (
            jax.tree_util.tree_unflatten(treedef, parts)
            for parts in zip(*treedef.flatten_up_to(out), strict=True)
        )
        new_state = RpropState(step_size, prev_grad, state.costs, state.status)
        return base.refuse_non_finite(updates, new_updates, new_state, state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
