"""Gradient descent with an Armijo (or Goldstein) backtracking line search.

One transform, :func:`scale_by_armijo`, covers the deterministic rule (every
search starts from the largest step) and the stochastic line search of
Vaswani et al. (2019), where each mini-batch gets its own search and the first
trial step is carried over from the previous batch by a reset rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from so_opt._src import base

RESETS = ("max", "keep", "grow")
CONDITIONS = ("armijo", "goldstein")
# Default search depth: shrink until the step is this fraction of the first.
SMALLEST_FRACTION = 1e-9


class ArmijoState(NamedTuple):
    """State of :func:`scale_by_armijo`.

    Attributes:
      learning_rate: step accepted at the last update (0 when none was); the
        next search starts from it under the ``"keep"`` and ``"grow"`` rules.
      num_trials: value evaluations spent by the last update.
      direction_reset: whether the last direction was not a descent direction,
        so the negative gradient was searched instead; None with
        ``trust_direction``, where no direction is ever replaced.
      used_fallback: whether the last step is the checked fallback step; None
        when no ``fallback_learning_rate`` is set. (A flag that cannot change
        is left out of the state: on a tiny problem each state leaf costs
        about a microsecond of dispatch per jitted step.)
      costs: cumulative work counters.
      status: ``LINE_SEARCH_FAILED`` when the last update is zero because no
        step passed; ``NON_FINITE`` when ``value``, ``grad`` or the direction
        were not finite.
    """

    learning_rate: jax.Array
    num_trials: jax.Array
    direction_reset: jax.Array
    used_fallback: jax.Array
    costs: base.Costs
    status: base.Status


def _check_choice(value: str, name: str, choices: tuple[str, ...]) -> None:
    """Raises ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}.")


def loss_only(value_fn: Callable[..., Any], has_aux: bool) -> Callable[..., Any]:
    """Returns ``value_fn`` reduced to its loss when it returns ``(loss, aux)``."""
    if not has_aux:
        return value_fn
    return lambda params: value_fn(params)[0]


def _search(fn, params, direction, value, slope, initial, cap, active, config):
    """Backtracks (Armijo) or brackets (Goldstein) along ``direction``.

    Returns the accepted learning rate (0 if none), the trials used and the
    status code: ``RUNNING`` for a step, ``LINE_SEARCH_FAILED`` when no trial
    passed, ``NON_FINITE`` when the search was not ``active``.
    """
    c1, shrink, max_trials, goldstein = config
    dtype = value.dtype
    ok, failed, non_finite = (
        jnp.asarray(int(code), base.COUNTER_DTYPE)
        for code in (
            base.StatusCode.RUNNING,
            base.StatusCode.LINE_SEARCH_FAILED,
            base.StatusCode.NON_FINITE,
        )
    )

    def armijo_test(rate):
        trial_value = jnp.asarray(fn(otu.tree_add_scale(params, rate, direction)))
        trial_value = trial_value.astype(dtype)
        # A non-finite trial fails like any other: it never becomes a step.
        passed = trial_value <= value + c1 * rate * slope
        return jnp.isfinite(trial_value) & passed, trial_value

    def backtrack(carry):
        rate, trials, _ = carry
        passed, _ = armijo_test(rate)
        return jnp.where(passed, rate, rate * shrink), trials + 1, passed

    def bracket(carry):
        rate, trials, _, low, high = carry
        passed, trial_value = armijo_test(rate)
        # Goldstein's lower bound rejects steps that are too short, unless the
        # step already sits at the upper bound and cannot grow.
        short = trial_value < value + (1.0 - c1) * rate * slope
        too_short = passed & short & (rate < cap)
        low = jnp.where(passed, rate, low)
        high = jnp.where(passed, high, rate)
        # Expand until the step is bracketed, then bisect the bracket.
        grown = jnp.where(
            jnp.isinf(high), jnp.minimum(rate / shrink, cap), 0.5 * (low + high)
        )
        cut = jnp.where(low > 0, 0.5 * (low + high), rate * shrink)
        next_rate = jnp.where(passed & ~too_short, rate, jnp.where(passed, grown, cut))
        return next_rate, trials + 1, passed & ~too_short, low, high

    zero = jnp.zeros((), dtype)
    no_trials = jnp.zeros((), base.COUNTER_DTYPE)
    if goldstein:
        start, no_bound = jnp.asarray(initial, dtype), jnp.asarray(jnp.inf, dtype)
        init = (start, no_trials, jnp.asarray(False), zero, no_bound)
        rate, trials, accepted, low, _ = jax.lax.while_loop(
            lambda carry: active & ~carry[2] & (carry[1] < max_trials), bracket, init
        )
        # At the trial cap Goldstein falls back on the longest step that
        # passed the sufficient-decrease half of its test.
        rate = jnp.where(accepted, rate, low)
        accepted = active & (rate > 0)
        code = jnp.where(accepted, ok, jnp.where(active, failed, non_finite))
        return jnp.where(accepted, rate, zero), trials, code

    # An inactive search starts at rate 0 and never runs: the finiteness test
    # then fuses into the kernel of the first trial instead of a kernel (and a
    # loop-carried flag) of its own, and the trial count tells the status.
    init = (jnp.where(active, jnp.asarray(initial, dtype), zero), no_trials)
    rate, trials, accepted = jax.lax.while_loop(
        lambda carry: (carry[0] > 0) & ~carry[2] & (carry[1] < max_trials),
        backtrack,
        (*init, jnp.asarray(False)),
    )
    code = jnp.where(accepted, ok, jnp.where(trials > 0, failed, non_finite))
    return jnp.where(accepted, rate, zero), trials, code


def _direction(updates, grad, dtype, trust_direction):
    """Search direction, its slope, whether it was kept, whether all is finite.

    The direction is ``updates``, or ``-grad`` when ``updates`` does not
    descend. Slopes are finite only if grad and direction are: a nan or an
    inf entry (even facing a zero) makes the products nan or inf.
    """
    given_slope = otu.tree_vdot(grad, updates).astype(dtype)
    if trust_direction:
        return updates, given_slope, jnp.asarray(True), jnp.isfinite(given_slope)
    grad_slope = -otu.tree_vdot(grad, grad).astype(dtype)
    descent = given_slope < 0
    direction = jax.tree_util.tree_map(
        lambda d, g: jnp.where(descent, d, -g), updates, grad
    )
    slope = jnp.where(descent, given_slope, grad_slope)
    return direction, slope, descent, jnp.isfinite(given_slope + grad_slope)


def default_backtracks(shrink: float) -> int:
    """Shrinks needed to cut a step to ``SMALLEST_FRACTION`` of the first."""
    return math.ceil(math.log(SMALLEST_FRACTION) / math.log(shrink))


def _initial_rate(previous, learning_rate, cap, reset, growth):
    """First trial of a search under the chosen reset rule."""
    # A failed search leaves 0 behind; the next search starts over from the top.
    previous = jnp.where(previous > 0, previous, learning_rate)
    if reset == "max":
        return jnp.minimum(jnp.asarray(learning_rate, previous.dtype), cap)
    if reset == "keep":
        return jnp.minimum(previous, cap)
    return jnp.minimum(previous * growth, cap)


def scale_by_armijo(
    learning_rate: float = 1.0,
    c1: float = 1e-4,
    shrink: float = 0.5,
    max_backtracks: int | None = None,
    *,
    reset: str = "max",
    growth: float = 2.0,
    max_learning_rate: float | None = None,
    condition: str = "armijo",
    fallback_learning_rate: float | None = None,
    independent_batch: bool = False,
    has_aux: bool = False,
    trust_direction: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Scales the descent direction by a step found by Armijo backtracking.

    The incoming ``updates`` are the direction :math:`d` (for plain gradient
    descent, the negative gradient). The step starts at :math:`\eta_0` and is
    multiplied by ``shrink`` :math:`=\beta` until sufficient decrease holds:

    .. math::
      f(x + \eta d) \le f(x) + c_1 \eta \langle \nabla f(x), d \rangle .

    With ``condition="goldstein"`` the step must also not be too short,
    :math:`f(x + \eta d) \ge f(x) + (1 - c_1) \eta \langle \nabla f(x), d
    \rangle`; the search then expands by :math:`1/\beta` and bisects.

    The first trial :math:`\eta_0` follows ``reset``: ``"max"`` restarts from
    ``learning_rate`` (deterministic descent); ``"keep"`` reuses the last
    accepted step; ``"grow"`` multiplies it by ``growth`` (Vaswani et al. use
    :math:`2^{1/\text{batches per epoch}}`). No trial exceeds
    ``max_learning_rate``.

    Safeguards: a trial whose value is not finite is rejected; a direction
    with :math:`\langle \nabla f, d \rangle \ge 0` (e.g. a momentum direction
    pointing uphill) is replaced by :math:`-\nabla f`; non-finite ``value``,
    ``grad`` or direction give a zero update with status ``NON_FINITE``. If no
    trial passes within ``max_backtracks`` shrinks, the optional
    ``fallback_learning_rate`` is tried and kept only if its value is finite
    and not above :math:`f(x)`; otherwise the update is zero with status
    ``LINE_SEARCH_FAILED``. No step is ever taken unchecked.

    Independent search batch: ``value_fn`` may close over a different batch
    than the one ``grad`` came from. Set ``independent_batch=True`` and the
    reference :math:`f(x)` is then evaluated with ``value_fn`` (one extra
    forward pass, counted), so ``value`` is not needed.

    Args:
      learning_rate: first trial step (and, by default, the largest step).
      c1: sufficient-decrease constant in (0, 1); in (0, 1/2) for Goldstein.
      shrink: factor in (0, 1) applied after each failed trial.
      max_backtracks: number of trials allowed after the first one; None
        allows enough to shrink the step by 1e-9 (30 for ``shrink=0.5``, 197
        for ``shrink=0.9``).
      reset: how a search's first trial follows from the last accepted step:
        ``"max"``, ``"keep"`` or ``"grow"``.
      growth: factor >= 1 of the ``"grow"`` rule.
      max_learning_rate: upper bound on every step; defaults to
        ``learning_rate``.
      condition: ``"armijo"`` or ``"goldstein"``.
      fallback_learning_rate: checked step tried when the search fails; None
        means a zero update instead.
      independent_batch: evaluate the reference value with ``value_fn``.
      has_aux: ``value_fn`` returns ``(loss, aux)``; ``aux`` is ignored.
      trust_direction: skip the descent test and the switch to
        :math:`-\nabla f`, for callers whose ``updates`` are :math:`-\nabla f`
        already (one product and one pass over the params fewer per update).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs
      ``params`` and the extra arguments ``grad``, ``value_fn`` and (unless
      ``independent_batch``) ``value``.

    Raises:
      ValueError: for a hyperparameter outside its range.

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

      Goldstein, *On steepest descent*, SIAM Journal on Control, 1965.

      Vaswani, Mishkin, Laradji, Schmidt, Gidel, Lacoste-Julien, *Painless
      stochastic gradient: interpolation, line-search, and convergence rates*,
      NeurIPS 2019.
    """
    for flag, name in (
        (independent_batch, "independent_batch"),
        (has_aux, "has_aux"),
        (trust_direction, "trust_direction"),
    ):
        base.check_bool(flag, name)
    base.check_positive(learning_rate, "learning_rate")
    _check_choice(condition, "condition", CONDITIONS)
    if condition == "goldstein":
        base.check_in_open_interval(c1, "c1", 0.0, 0.5)
    else:
        base.check_in_open_interval(c1, "c1", 0.0, 1.0)
    base.check_in_open_interval(shrink, "shrink", 0.0, 1.0)
    if max_backtracks is None:
        max_backtracks = default_backtracks(shrink)
    base.check_int_at_least(max_backtracks, "max_backtracks", 0)
    _check_choice(reset, "reset", RESETS)
    base.check_real(growth, "growth")
    if not growth >= 1.0:
        raise ValueError(f"`growth` must be >= 1, got {growth}.")
    if max_learning_rate is None:
        max_learning_rate = learning_rate
    else:
        base.check_not_below(
            max_learning_rate, "max_learning_rate", learning_rate, "learning_rate"
        )
    if fallback_learning_rate is not None:
        base.check_positive(fallback_learning_rate, "fallback_learning_rate")
    caller = "scale_by_armijo"
    goldstein = condition == "goldstein"

    def init_fn(params):
        dtype = base.params_dtype(params)
        return ArmijoState(
            learning_rate=jnp.asarray(learning_rate, dtype),
            num_trials=jnp.zeros((), base.COUNTER_DTYPE),
            direction_reset=None if trust_direction else jnp.asarray(False),
            used_fallback=(
                None if fallback_learning_rate is None else jnp.asarray(False)
            ),
            costs=base.zero_costs(),
            status=base.ok_status(),
        )

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise TypeError(f"`{caller}` needs `params` in `update`.")
        grad = base.extra_arg(extra_args, "grad", caller)
        fn = loss_only(base.extra_arg(extra_args, "value_fn", caller), has_aux)
        dtype = state.learning_rate.dtype
        if independent_batch:
            value = jnp.asarray(fn(params), dtype)
        else:
            value = base.extra_arg(extra_args, "value", caller)
            value = base.check_scalar(value, "value", caller).astype(dtype)

        direction, slope, descent, finite = _direction(
            updates, grad, dtype, trust_direction
        )
        finite = finite & jnp.isfinite(value)
        # A trusted direction is -grad only when nothing before this search in
        # a chain changed the updates (weight decay, clipping of a different
        # gradient...); one that does not descend is refused, not searched,
        # since Armijo's test would then accept an increase.
        uphill = finite & (slope >= 0) if trust_direction else None

        cap = jnp.asarray(max_learning_rate, dtype)
        initial = _initial_rate(state.learning_rate, learning_rate, cap, reset, growth)
        config = (c1, shrink, max_backtracks + 1, goldstein)
        searchable = finite if uphill is None else finite & ~uphill
        rate, trials, code = _search(
            fn, params, direction, value, slope, initial, cap, searchable, config
        )
        if uphill is not None:
            code = jnp.where(uphill, base.StatusCode.LINE_SEARCH_FAILED, code)
            code = code.astype(base.COUNTER_DTYPE)
        accepted = code == base.StatusCode.RUNNING

        used_fallback = None
        if fallback_learning_rate is not None:
            # The fallback is a real trial: finite and no increase, or nothing.
            tiny = jnp.asarray(fallback_learning_rate, dtype)

            def try_fallback():
                trial = fn(otu.tree_add_scale(params, tiny, direction))
                trial = jnp.asarray(trial, dtype)
                return jnp.isfinite(trial) & (trial <= value)

            need = code == base.StatusCode.LINE_SEARCH_FAILED
            used_fallback = jax.lax.cond(need, try_fallback, lambda: jnp.asarray(False))
            trials = trials + need.astype(base.COUNTER_DTYPE)
            rate = jnp.where(used_fallback, tiny, rate)
            code = jnp.where(used_fallback, base.StatusCode.RUNNING, code)
            accepted = accepted | used_fallback

        spent = trials + (1 if independent_batch else 0)
        # Only value evaluations are spent here (the gradient comes with the
        # call).
        new_state = ArmijoState(
            learning_rate=rate.astype(dtype),
            num_trials=spent.astype(base.COUNTER_DTYPE),
            direction_reset=None if trust_direction else ~descent,
            used_fallback=used_fallback,
            costs=base.add_costs(state.costs, value_evals=spent),
            status=base.make_status(code),
        )
        # jnp.where, not a product: 0 * nan would leak a non-finite update.
        new_updates = jax.tree_util.tree_map(
            lambda d: jnp.where(accepted, rate.astype(d.dtype) * d, jnp.zeros_like(d)),
            direction,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def armijo_sgd(
    learning_rate: float = 1.0,
    c1: float = 1e-4,
    shrink: float = 0.5,
    max_backtracks: int | None = None,
    *,
    momentum: float = 0.0,
    nesterov: bool = False,
    **search_options: Any,
) -> optax.GradientTransformationExtraArgs:
    r"""Gradient descent with an Armijo backtracking line search.

    Each update steps along :math:`d = -\nabla f(x)` (or a heavy-ball or
    Nesterov momentum direction, see ``momentum``) with the largest
    :math:`\eta = \eta_0\,\beta^j` (``shrink`` :math:`=\beta`) that satisfies

    .. math::
      f(x + \eta d) \le f(x) + c_1 \eta \langle \nabla f(x), d \rangle .

    The defaults give deterministic (full-batch) descent. For the stochastic
    line search of Vaswani et al. (2019), pass ``value_fn`` on the current
    mini-batch and use ``c1=0.1, shrink=0.9, reset="grow",
    growth=2 ** (1 / batches_per_epoch)``.

    Args:
      learning_rate: first trial step :math:`\eta_0`.
      c1: sufficient-decrease constant in (0, 1).
      shrink: backtracking factor in (0, 1).
      max_backtracks: number of shrinks allowed after the first trial; None
        allows enough to shrink the step by 1e-9, whatever ``shrink`` is.
      momentum: momentum decay in [0, 1); 0 means plain gradient descent. The
        search runs along the momentum direction, or along the negative
        gradient when that direction does not descend.
      nesterov: use Nesterov's look-ahead form of momentum.
      **search_options: keyword options of :func:`scale_by_armijo` (``reset``,
        ``growth``, ``max_learning_rate``, ``condition``,
        ``fallback_learning_rate``, ``independent_batch``, ``has_aux``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``
      and the extra arguments ``value``, ``grad`` and ``value_fn``.

    Raises:
      ValueError: for a hyperparameter outside its range.

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

      Vaswani et al., *Painless stochastic gradient: interpolation,
      line-search, and convergence rates*, NeurIPS 2019.
    """
    base.check_bool(nesterov, "nesterov")
    base.check_real(momentum, "momentum")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"`momentum` must be in [0, 1), got {momentum}.")
    # Without momentum the direction is -grad by construction: no descent test.
    search = scale_by_armijo(
        learning_rate,
        c1,
        shrink,
        max_backtracks,
        trust_direction=momentum == 0.0,
        **search_options,
    )
    if momentum == 0.0:
        return optax.chain(optax.scale(-1.0), search)
    return optax.chain(
        optax.trace(decay=momentum, nesterov=nesterov), optax.scale(-1.0), search
    )
