"""Delta-bar-delta: per-parameter rates steered by gradient-sign agreement."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from so_opt._src import base


class DeltaBarDeltaState(NamedTuple):
    """State of :func:`delta_bar_delta`.

    Attributes:
      learning_rate: per-parameter rates (a pytree like the params).
      grad_average: exponential average :math:`\\bar\\delta` of the gradient.
      costs: work counters (the rule itself evaluates nothing).
      status: ``NON_FINITE`` when the last gradient was not finite (the step
        was then zero and the state kept).
    """

    learning_rate: base.Updates
    grad_average: base.Updates
    costs: base.Costs
    status: base.Status


def delta_bar_delta(
    learning_rate: float = 0.01,
    kappa: float | None = None,
    phi: float = 0.1,
    theta: float = 0.7,
    max_learning_rate: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Per-parameter rates that grow additively and shrink multiplicatively.

    With :math:`\delta_t` the gradient and :math:`\bar\delta` its running
    average, every parameter's rate follows

    .. math::
      \eta_t = \begin{cases}
        \eta_{t-1} + \kappa & \bar\delta_{t-1} \delta_t > 0 \\
        (1 - \phi)\,\eta_{t-1} & \bar\delta_{t-1} \delta_t < 0 \\
        \eta_{t-1} & \text{otherwise,}
      \end{cases} \qquad
      \bar\delta_t = (1 - \theta)\,\delta_t + \theta\,\bar\delta_{t-1},
      \qquad u_t = -\eta_t \delta_t .

    Args:
      learning_rate: initial rate of every parameter (> 0).
      kappa: additive increase (> 0); defaults to ``learning_rate / 10``.
      phi: multiplicative decrease in (0, 1).
      theta: averaging weight in [0, 1).
      max_learning_rate: optional upper bound on every rate.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` giving the update (sign
      included); extra arguments of ``update`` are accepted and ignored.

    Raises:
      ValueError: for a hyperparameter outside its range.

    Examples:
      >>> import jax.numpy as jnp, so_opt
      >>> opt = so_opt.delta_bar_delta(learning_rate=0.1, kappa=0.05)
      >>> state = opt.init(jnp.zeros(2))
      >>> for g in [[1.0, 1.0], [1.0, -1.0]]:
      ...     u, state = opt.update(jnp.asarray(g), state)
      >>> print(state.learning_rate)
      [0.15 0.09]

    References:
      Jacobs, *Increased rates of convergence through learning rate
      adaptation*, Neural Networks, 1988.
    """
    base.check_positive(learning_rate, "learning_rate")
    if kappa is None:
        kappa = learning_rate / 10
    base.check_positive(kappa, "kappa")
    base.check_in_open_interval(phi, "phi", 0.0, 1.0)
    base.check_positive(theta, "theta", allow_zero=True)
    if not 0.0 <= theta < 1.0:
        raise ValueError(f"`theta` must be in [0, 1), got {theta}.")
    if max_learning_rate is not None:
        base.check_not_below(
            max_learning_rate, "max_learning_rate", learning_rate, "learning_rate"
        )
    cap = jnp.inf if max_learning_rate is None else max_learning_rate

    def init_fn(params):
        base.check_float_params(params)
        return DeltaBarDeltaState(
            learning_rate=jax.tree_util.tree_map(
                lambda p: jnp.full_like(p, learning_rate), params
            ),
            grad_average=jax.tree_util.tree_map(jnp.zeros_like, params),
            costs=base.zero_costs(),
            status=base.ok_status(),
        )

    def rate_leaf(rate, average, grad):
        agree = jnp.sign(average) * jnp.sign(grad)
        grown = jnp.minimum(rate + kappa, cap)
        return jnp.where(agree > 0, grown, jnp.where(agree < 0, rate * (1 - phi), rate))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args  # extra args are accepted and unused
        tree_map = jax.tree_util.tree_map
        rates = tree_map(rate_leaf, state.learning_rate, state.grad_average, updates)
        average = tree_map(
            lambda a, g: (1 - theta) * g + theta * a, state.grad_average, updates
        )
        new_updates = tree_map(lambda r, g: -r * g, rates, updates)
        new_state = state._replace(learning_rate=rates, grad_average=average)
        return base.refuse_non_finite(updates, new_updates, new_state, state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
