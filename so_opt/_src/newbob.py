"""Newbob: hold the rate, then halve it every epoch once held-out gains fade."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from so_opt._src import base


class NewbobState(NamedTuple):
    """State of :func:`newbob`.

    Attributes:
      learning_rate: rate of the current epoch.
      prev_monitored: monitored loss of the previous epoch (``inf`` before
        one).
      best_monitored: lowest monitored loss of any epoch (``inf`` before one).
      improvement: relative improvement measured at the last epoch boundary.
      ramping: whether the rate is being cut every epoch.
      should_stop: whether, while ramping, the monitored loss changed by less
        than ``stop_threshold`` (relative) and was not worse than the best
        by more than that; the status is then ``CONVERGED``.
      epochs: epoch boundaries seen.
      count: updates since the last epoch boundary.
      value_sum: sum of their ``value`` arguments (the monitored loss, as a
        mean, when no ``heldout_value`` is passed).
      costs: work counters (the rule itself evaluates nothing).
      status: ``NON_FINITE`` after a non-finite input or step, else
        ``CONVERGED`` once ``should_stop`` is set.
    """

    learning_rate: jax.Array
    prev_monitored: jax.Array
    best_monitored: jax.Array
    improvement: jax.Array
    ramping: jax.Array
    should_stop: jax.Array
    epochs: jax.Array
    count: jax.Array
    value_sum: jax.Array
    costs: base.Costs
    status: base.Status


def relative_improvement(previous: jax.Array, current: jax.Array) -> jax.Array:
    """``(previous - current) / |previous|``: positive when the loss fell.

    Dividing by :math:`|f|` rather than :math:`f` keeps the sign meaningful
    for negative losses (log-likelihoods). The first value improves by
    ``inf``; a non-finite value improves by ``-inf``.
    """
    tiny = jnp.finfo(current.dtype).tiny
    gain = (previous - current) / jnp.maximum(jnp.abs(previous), tiny)
    gain = jnp.where(jnp.isfinite(previous), gain, jnp.inf)
    return jnp.where(jnp.isfinite(current), gain, -jnp.inf)


def _monitored(state, extra_args, steps_per_epoch, dtype):
    """The epoch's monitored loss, whether this update ends an epoch, value sum."""
    heldout = extra_args.get("heldout_value")
    value = extra_args.get("value")
    if heldout is None and value is None:
        base.extra_arg(extra_args, "heldout_value", "newbob")
    if value is not None:
        value = base.check_scalar(value, "value", "newbob")
    if heldout is not None:
        heldout = base.check_scalar(heldout, "heldout_value", "newbob")
    value_sum = state.value_sum
    if value is not None:
        value_sum = value_sum + jnp.asarray(value, dtype)
    if "new_epoch" in extra_args:
        new_epoch = jnp.asarray(extra_args["new_epoch"], bool)
    elif steps_per_epoch is not None:
        new_epoch = state.count + 1 >= steps_per_epoch
    else:
        new_epoch = jnp.asarray(True)
    if heldout is not None:
        monitored = jnp.asarray(heldout, dtype)
    else:
        # The mean training loss of the epoch, measured along the way.
        monitored = value_sum / (state.count + 1).astype(dtype)
    return monitored, new_epoch, value_sum


def _rate_after(new_epoch: jax.Array, rate: jax.Array, state: NewbobState):
    """The rate of this update: the new epoch's rate on a boundary."""
    return jnp.where(new_epoch, rate, state.learning_rate).astype(rate.dtype)


def newbob(
    learning_rate: float = 0.1,
    start_threshold: float = 0.005,
    stop_threshold: float = 0.001,
    factor: float = 0.5,
    *,
    steps_per_epoch: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""SGD whose rate is halved every epoch once held-out improvement stalls.

    At each epoch boundary the monitored loss :math:`h_e` gives the relative
    improvement :math:`r_e = (h_{e-1} - h_e) / |h_{e-1}|`. The rate is kept
    until :math:`r_e` < ``start_threshold``; from then on ("ramping") it is
    multiplied by ``factor`` at every boundary:

    .. math::
      \eta_e = \begin{cases} \eta_{e-1} & \text{not ramping} \\
      \text{factor} \cdot \eta_{e-1} & \text{ramping,} \end{cases}
      \qquad u = -\eta_e \nabla f .

    When the monitored loss of a ramping epoch moves by less than
    ``stop_threshold`` (relative, :math:`|r_e|`) and is within that much of
    the best monitored loss so far, the state sets ``should_stop`` and
    reports ``StatusCode.CONVERGED``. A larger rise, or a loss stuck above an
    earlier best (a run that diverged), is no convergence: the rate keeps
    being cut and no stop is claimed. A non-finite ``value``,
    ``heldout_value``, gradient or step gives a zero update and
    ``StatusCode.NON_FINITE``, and leaves the schedule unchanged.

    Feeding it, through extra arguments of ``update``:

    - ``heldout_value``: the held-out loss at the current params, the
      monitored loss of the original rule. Without it, the mean of the
      ``value`` arguments over the epoch (the training loss) is monitored.
    - ``new_epoch`` (bool): whether this update ends an epoch. By default
      every ``steps_per_epoch``-th update does, or every update when
      ``steps_per_epoch`` is None (full batch). Only the boundary's
      ``heldout_value`` is read.

    Args:
      learning_rate: rate before ramping (> 0).
      start_threshold: relative improvement under which ramping starts.
      stop_threshold: relative improvement under which, while ramping, the
        rule asks to stop; must not exceed ``start_threshold``.
      factor: per-epoch cut in (0, 1) while ramping.
      steps_per_epoch: updates per epoch (>= 1), or None.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` giving the update (sign
      included); ``update`` needs the extra argument ``heldout_value`` or
      ``value``.

    Raises:
      ValueError: for a hyperparameter outside its range.

    Examples:
      >>> import jax.numpy as jnp, so_opt
      >>> opt = so_opt.newbob(learning_rate=0.1)
      >>> state = opt.init(jnp.zeros(2))
      >>> for h in [1.0, 0.5, 0.499, 0.4989]:
      ...     u, state = opt.update(jnp.ones(2), state, heldout_value=h)
      >>> print(round(float(state.learning_rate), 3), bool(state.should_stop))
      0.025 True

    References:
      Bourlard and Morgan, *Connectionist Speech Recognition: A Hybrid
      Approach*, Kluwer, 1994 (the ICSI "newbob" schedule).
    """
    base.check_positive(learning_rate, "learning_rate")
    base.check_positive(start_threshold, "start_threshold", allow_zero=True)
    base.check_positive(stop_threshold, "stop_threshold", allow_zero=True)
    if not 0.0 <= stop_threshold <= start_threshold:
        raise ValueError(
            f"`stop_threshold` must be in [0, `start_threshold`] = "
            f"[0, {start_threshold}], got {stop_threshold}."
        )
    base.check_in_open_interval(factor, "factor", 0.0, 1.0)
    if steps_per_epoch is not None:
        base.check_int_at_least(steps_per_epoch, "steps_per_epoch", 1)

    def init_fn(params):
        dtype = base.params_dtype(params)
        zero = jnp.zeros((), base.COUNTER_DTYPE)
        return NewbobState(
            learning_rate=jnp.asarray(learning_rate, dtype),
            prev_monitored=jnp.asarray(jnp.inf, dtype),
            best_monitored=jnp.asarray(jnp.inf, dtype),
            improvement=jnp.asarray(jnp.inf, dtype),
            ramping=jnp.asarray(False),
            should_stop=jnp.asarray(False),
            epochs=zero,
            count=zero,
            value_sum=jnp.zeros((), dtype),
            costs=base.zero_costs(),
            status=base.ok_status(),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params
        dtype = state.learning_rate.dtype
        monitored, new_epoch, value_sum = _monitored(
            state, extra_args, steps_per_epoch, dtype
        )

        # Relative improvement, then the ramp and stop decisions of the rule.
        gain = relative_improvement(state.prev_monitored, monitored)
        ramping = state.ramping | (gain < start_threshold)
        # Only a loss that stays put, at its best so far, asks to stop: a rise
        # is a regression (a diverging run), not convergence.
        from_best = relative_improvement(state.best_monitored, monitored)
        stalled = (jnp.abs(gain) < stop_threshold) & (from_best > -stop_threshold)
        stop = state.should_stop | (state.ramping & stalled)
        rate = jnp.where(ramping, state.learning_rate * factor, state.learning_rate)

        # A non-finite value, held-out value, gradient or step gives a zero
        # update and NON_FINITE, and leaves the schedule as it was.
        step = otu.tree_scale(-_rate_after(new_epoch, rate, state), updates)
        finite = base.all_finite(step) & base.all_finite(updates)
        if extra_args.get("value") is not None:
            finite = finite & jnp.isfinite(jnp.asarray(extra_args["value"]))
        if extra_args.get("heldout_value") is not None:
            # Only the boundary's held-out value is read.
            finite = finite & (~new_epoch | jnp.isfinite(monitored))
        new_epoch = new_epoch & finite

        on_epoch = lambda new, old: jnp.where(new_epoch, new, old).astype(old.dtype)
        should_stop = on_epoch(stop, state.should_stop)
        code = jnp.where(
            should_stop, base.StatusCode.CONVERGED, base.StatusCode.RUNNING
        )
        code = jnp.where(finite, code, base.StatusCode.NON_FINITE)
        new_state = NewbobState(
            learning_rate=on_epoch(rate, state.learning_rate),
            prev_monitored=on_epoch(monitored, state.prev_monitored),
            best_monitored=on_epoch(
                jnp.minimum(monitored, state.best_monitored), state.best_monitored
            ),
            improvement=on_epoch(gain, state.improvement),
            ramping=on_epoch(ramping, state.ramping),
            should_stop=should_stop,
            epochs=state.epochs + new_epoch.astype(base.COUNTER_DTYPE),
            count=jnp.where(
                new_epoch, 0, jnp.where(finite, state.count + 1, state.count)
            ).astype(state.count.dtype),
            value_sum=jnp.where(
                new_epoch, 0.0, jnp.where(finite, value_sum, state.value_sum)
            ).astype(dtype),
            costs=state.costs,
            status=base.make_status(code),
        )
        new_updates = jax.tree_util.tree_map(
            lambda u: jnp.where(finite, u, jnp.zeros_like(u)), step
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
