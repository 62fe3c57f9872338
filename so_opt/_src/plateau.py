"""Reduce the learning rate on a plateau of the monitored loss, any sign."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from so_opt._src import base


class ReduceOnPlateauState(NamedTuple):
    """State of :func:`reduce_on_plateau`.

    Attributes:
      scale: factor applied to the incoming updates.
      best_value: best (lowest) averaged loss seen, ``inf`` before the first.
      plateau_count: averaged losses since the last improvement.
      cooldown_count: averaged losses left to ignore after a reduction.
      count: losses accumulated towards the next average.
      value_sum: sum of the accumulated losses.
      costs: work counters (the rule itself evaluates nothing).
      status: ``NON_FINITE`` when the last ``value`` or update was not
        finite (the update is then zero and nothing is counted).
    """

    scale: jax.Array
    best_value: jax.Array
    plateau_count: jax.Array
    cooldown_count: jax.Array
    count: jax.Array
    value_sum: jax.Array
    costs: base.Costs
    status: base.Status


def improves(value: jax.Array, best: jax.Array, rtol: float, atol: float) -> jax.Array:
    """Whether ``value`` beats ``best`` by ``rtol * |best| + atol``, any sign.

    The tolerance grows with :math:`|best|`, never with ``best`` itself, so a
    negative loss is held to the same standard as a positive one.
    """
    threshold = best - rtol * jnp.abs(best) - atol
    # Before the first value best is inf and inf - inf would be nan.
    threshold = jnp.where(jnp.isfinite(best), threshold, jnp.inf)
    return value < threshold


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    accumulation_size: int = 1,
    min_scale: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Scales updates down by ``factor`` when the loss stops improving.

    Every ``accumulation_size`` updates, the mean :math:`\bar f` of the
    ``value`` extra arguments is compared with the best mean so far,

    .. math::
      \bar f < f_{\text{best}} - \mathrm{rtol}\,|f_{\text{best}}|
        - \mathrm{atol} ,

    and after ``patience`` means without improvement the scale becomes
    :math:`\max(\text{factor} \cdot \text{scale}, \text{min\_scale})`, followed
    by ``cooldown`` means that are not counted. A non-finite ``value`` or
    incoming update gives a zero update and status ``NON_FINITE`` and is not
    counted. ``optax.contrib.reduce_on_plateau`` (0.2.8) multiplies the
    tolerance by ``best`` rather than :math:`|best|`; for a negative loss every
    flat value then counts as an improvement and the scale never drops (flat
    -1.0 for five updates, patience 1: optax keeps 1.0, this rule gives
    0.0625, as both give for flat +1.0).

    Args:
      factor: reduction factor in (0, 1).
      patience: means without improvement before a reduction (>= 1).
      rtol: relative tolerance (>= 0).
      atol: absolute tolerance (>= 0); ``rtol`` or ``atol`` must be > 0.
      cooldown: means ignored after a reduction (>= 0).
      accumulation_size: losses averaged into one mean (>= 1).
      min_scale: smallest scale (>= 0).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs the
      extra argument ``value``. Chain it after an optimizer.

    Raises:
      ValueError: for a hyperparameter outside its range.

    Examples:
      >>> import jax.numpy as jnp, optax, so_opt
      >>> opt = so_opt.reduce_on_plateau(factor=0.5, patience=1)
      >>> state = opt.init(jnp.zeros(2))
      >>> for _ in range(3):
      ...     u, state = opt.update(jnp.ones(2), state, value=-1.0)
      >>> print(state.scale)
      0.25

    References:
      PyTorch's ``ReduceLROnPlateau`` scheduler (2017) popularised the rule;
      Prechelt, *Early stopping - but when?*, Neural Networks: Tricks of the
      Trade, 1998, studies plateau criteria.
    """
    base.check_in_open_interval(factor, "factor", 0.0, 1.0)
    base.check_int_at_least(patience, "patience", 1)
    base.check_positive(rtol, "rtol", allow_zero=True)
    base.check_positive(atol, "atol", allow_zero=True)
    if rtol == 0.0 and atol == 0.0:
        raise ValueError("`rtol` or `atol` must be > 0, got both 0.")
    base.check_int_at_least(cooldown, "cooldown", 0)
    base.check_int_at_least(accumulation_size, "accumulation_size", 1)
    base.check_positive(min_scale, "min_scale", allow_zero=True)
    if min_scale > 1:
        raise ValueError(f"`min_scale` must be <= 1 (a reduction), got {min_scale}.")

    def init_fn(params):
        dtype = base.params_dtype(params)
        zero = jnp.zeros((), base.COUNTER_DTYPE)
        return ReduceOnPlateauState(
            scale=jnp.ones((), dtype),
            best_value=jnp.asarray(jnp.inf, dtype),
            plateau_count=zero,
            cooldown_count=zero,
            count=zero,
            value_sum=jnp.zeros((), dtype),
            costs=base.zero_costs(),
            status=base.ok_status(),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params
        value = base.extra_arg(extra_args, "value", "reduce_on_plateau")
        dtype = state.scale.dtype
        value = base.check_scalar(value, "value", "reduce_on_plateau").astype(dtype)
        # A non-finite value or update gives a zero update and NON_FINITE and
        # is not counted: the state is left as it was.
        finite = jnp.isfinite(value) & base.all_finite(updates)
        value_sum = state.value_sum + jnp.where(finite, value, 0.0)
        count = state.count + finite.astype(state.count.dtype)
        full = finite & (count >= accumulation_size)
        mean = value_sum / count.astype(dtype)

        better = improves(mean, state.best_value, rtol, atol)
        cooling = state.cooldown_count > 0
        plateau = jnp.where(better | cooling, 0, state.plateau_count + 1)
        reduce = ~better & ~cooling & (plateau >= patience)
        scale = jnp.where(
            reduce, jnp.maximum(state.scale * factor, min_scale), state.scale
        )
        cooldown_count = jnp.where(
            reduce, cooldown, jnp.maximum(state.cooldown_count - 1, 0)
        )
        plateau = jnp.where(reduce, 0, plateau)

        # Between full accumulations only the running sum moves.
        keep = lambda new, old: jnp.where(full, new, old).astype(old.dtype)
        new_state = ReduceOnPlateauState(
            scale=keep(scale, state.scale),
            best_value=keep(
                jnp.where(better, mean, state.best_value), state.best_value
            ),
            plateau_count=keep(plateau, state.plateau_count),
            cooldown_count=keep(cooldown_count, state.cooldown_count),
            count=jnp.where(full, 0, count).astype(base.COUNTER_DTYPE),
            value_sum=jnp.where(full, 0.0, value_sum).astype(dtype),
            costs=state.costs,
            status=base.make_status(
                jnp.where(finite, base.StatusCode.RUNNING, base.StatusCode.NON_FINITE)
            ),
        )
        new_updates = jax.tree_util.tree_map(
            lambda u: jnp.where(finite, new_state.scale.astype(u.dtype) * u, 0.0),
            updates,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
