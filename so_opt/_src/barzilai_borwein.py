"""Barzilai-Borwein step sizes (long and short), bounded and reset-safe."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from so_opt._src import base

VARIANTS = ("long", "short")


class BarzilaiBorweinState(NamedTuple):
    """State of :func:`barzilai_borwein`.

    Attributes:
      learning_rate: step size of the last update.
      prev_params: params at the last update.
      prev_grad: gradient at the last update.
      count: updates made.
      reset: whether the last step size fell back to ``learning_rate``
        (first update, non-positive or non-finite curvature).
      costs: work counters (the rule itself evaluates nothing).
      status: ``NON_FINITE`` when the last gradient was not finite.
    """

    learning_rate: jax.Array
    prev_params: base.Params
    prev_grad: base.Updates
    count: jax.Array
    reset: jax.Array
    costs: base.Costs
    status: base.Status


def barzilai_borwein(
    learning_rate: float = 1e-3,
    variant: str = "long",
    min_learning_rate: float = 1e-10,
    max_learning_rate: float = 1e10,
) -> optax.GradientTransformationExtraArgs:
    r"""Gradient descent with the Barzilai-Borwein step size.

    With :math:`s = x_t - x_{t-1}` and :math:`y = g_t - g_{t-1}`, the long
    (BB1) and short (BB2) steps are

    .. math::
      \eta^{\text{long}} = \frac{s^\top s}{s^\top y}, \qquad
      \eta^{\text{short}} = \frac{s^\top y}{y^\top y}, \qquad
      u_t = -\operatorname{clip}(\eta, \eta_{\min}, \eta_{\max})\, g_t ,

    and :math:`\eta` falls back to ``learning_rate`` on the first update and
    whenever :math:`s^\top y \le 0` (no positive curvature along :math:`s`)
    or the ratio is not finite. A non-finite gradient gives a zero update
    with status ``NON_FINITE``. BB is a full-batch rule and not monotone: the
    loss may rise on some steps.

    Args:
      learning_rate: step of the first update and of every reset (> 0).
      variant: ``"long"`` (BB1) or ``"short"`` (BB2).
      min_learning_rate: lower safeguard (> 0).
      max_learning_rate: upper safeguard (>= ``min_learning_rate``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` giving the update (sign
      included); extra arguments of ``update`` are accepted and ignored;
      ``update`` needs ``params``.

    Raises:
      ValueError: for a hyperparameter outside its range.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, so_opt
      >>> f = lambda x: 0.5 * jnp.sum(jnp.array([1.0, 4.0]) * x ** 2)
      >>> opt = so_opt.barzilai_borwein(learning_rate=0.1)
      >>> x = jnp.ones(2); state = opt.init(x)
      >>> for _ in range(30):
      ...     u, state = opt.update(jax.grad(f)(x), state, x)
      ...     x = optax.apply_updates(x, u)
      >>> print(bool(f(x) < 1e-10))
      True

    References:
      Barzilai and Borwein, *Two-point step size gradient methods*, IMA
      Journal of Numerical Analysis, 1988.

      Raydan, *The Barzilai and Borwein gradient method for the large scale
      unconstrained minimization problem*, SIAM J. Optimization, 1997.
    """
    base.check_positive(learning_rate, "learning_rate")
    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be 'long' or 'short', got {variant!r}.")
    base.check_positive(min_learning_rate, "min_learning_rate")
    base.check_not_below(
        max_learning_rate, "max_learning_rate", min_learning_rate, "min_learning_rate"
    )

    def init_fn(params):
        dtype = base.params_dtype(params)
        return BarzilaiBorweinState(
            learning_rate=jnp.asarray(learning_rate, dtype),
            prev_params=otu.tree_zeros_like(params),
            prev_grad=otu.tree_zeros_like(params),
            count=jnp.zeros((), base.COUNTER_DTYPE),
            reset=jnp.asarray(True),
            costs=base.zero_costs(),
            status=base.ok_status(),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args  # accepted (value, grad, value_fn, ...) and unused
        if params is None:
            raise TypeError("`barzilai_borwein` needs `params` in `update`.")
        dtype = state.learning_rate.dtype
        s = otu.tree_sub(params, state.prev_params)
        y = otu.tree_sub(updates, state.prev_grad)
        sy = otu.tree_vdot(s, y).astype(dtype)
        if variant == "long":
            ratio = otu.tree_vdot(s, s).astype(dtype) / sy
        else:
            ratio = sy / otu.tree_vdot(y, y).astype(dtype)
        usable = (state.count > 0) & (sy > 0) & jnp.isfinite(ratio)
        rate = jnp.where(
            usable,
            jnp.clip(ratio, min_learning_rate, max_learning_rate),
            jnp.asarray(learning_rate, dtype),
        ).astype(dtype)

        finite = jnp.isfinite(otu.tree_vdot(updates, updates))
        new_updates = jax.tree_util.tree_map(
            lambda g: jnp.where(finite, -rate.astype(g.dtype) * g, jnp.zeros_like(g)),
            updates,
        )
        code = jnp.where(finite, base.StatusCode.RUNNING, base.StatusCode.NON_FINITE)
        new_state = BarzilaiBorweinState(
            learning_rate=rate,
            prev_params=params,
            prev_grad=updates,
            count=state.count + 1,
            reset=~usable,
            costs=state.costs,
            status=base.make_status(code),
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
