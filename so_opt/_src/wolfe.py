"""Strong Wolfe line search (bracketing and zoom) for quasi-Newton and Newton.

so_opt writes its own search instead of wrapping ``optax.scale_by_zoom_linesearch``
because the optax one does not fit the so_opt contract in four places (optax
0.2.8): when it fails it still takes its last trial step, which may raise the
loss, and reports the failure only through a ``verbose`` print; its
``value_fn`` cannot return ``(loss, aux)``; it raises on any extra argument
that ``value_fn`` does not accept, so it cannot sit in an update that also
carries ``model_fn`` or ``output_loss_fn``; and by default it accepts the
approximate (Hager-Zhang) decrease test, so an accepted step need not satisfy
the Armijo inequality. The algorithm below is the textbook one (Nocedal and
Wright, Algorithms 3.5 and 3.6) in a single ``lax.while_loop``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from so_opt._src import base

CONDITIONS = ("strong_wolfe", "armijo")

# Phases of the search loop.
_BRACKET, _ZOOM = 0, 1

# Values closer than this many ulps of |f(x)| are taken as equal up to
# roundoff (a loss summed over a data set shows 1-2 ulps of noise), and the
# decrease is then judged from the slopes. Known shortcoming: the scale is
# |f(x)|, so a loss near zero made of large cancelling terms is not covered.
_ROUNDOFF_ULPS = 10


class WolfeResult(NamedTuple):
    """Outcome of :func:`wolfe_line_search`.

    Attributes:
      learning_rate: accepted step :math:`\\eta` (0 when the search failed).
      value: loss at ``params + learning_rate * direction``.
      grad: gradient there.
      aux: auxiliary output of ``value_fn`` there (``None`` without
        ``has_aux``; the ``aux`` of the start is not known, so a failed
        search returns the aux of its last trial).
      num_trials: value-and-gradient evaluations spent.
      wolfe: whether the accepted step meets the requested condition in full
        (both strong Wolfe inequalities, or Armijo's); when ``False`` but the
        step is positive, it meets sufficient decrease only.
      status: ``StatusCode.RUNNING`` when a step was accepted,
        ``LINE_SEARCH_FAILED`` when none decreased the loss (also when the
        direction is not a descent direction).
    """

    learning_rate: jax.Array
    value: jax.Array
    grad: base.PyTree
    aux: Any
    num_trials: jax.Array
    wolfe: jax.Array
    status: jax.Array


class ValueGradCache(NamedTuple):
    """Value and gradient at ``params + updates``, kept in an optimizer state.

    A line search evaluates the loss and gradient at the point it accepts; a
    driver that needs them for the next step reads them here instead of
    evaluating again (see :func:`value_and_grad_from_state`).

    Attributes:
      updates: the updates the transform returned with this cache.
      value: loss at ``params + updates``.
      grad: gradient at ``params + updates``.
    """

    updates: base.Updates
    value: jax.Array
    grad: base.PyTree


class WolfeState(NamedTuple):
    """State of :func:`scale_by_wolfe`.

    Attributes:
      learning_rate: step accepted at the last update.
      num_trials: evaluations spent by the last line search.
      wolfe: whether the last step met the full condition.
      cache: value and gradient at the accepted point.
      costs: cumulative work counters.
      status: ``LINE_SEARCH_FAILED`` when the last search found no step.
    """

    learning_rate: jax.Array
    num_trials: jax.Array
    wolfe: jax.Array
    cache: ValueGradCache
    costs: base.Costs
    status: base.Status


def check_line_search_args(
    c1: float, c2: float, max_trials: int, increase_factor: float, condition: str
) -> None:
    """Validates line-search hyperparameters eagerly (Python values only)."""
    base.check_in_open_interval(c1, "c1", 0.0, 1.0)
    base.check_in_open_interval(c2, "c2", 0.0, 1.0)
    if not c1 < c2:
        raise ValueError(f"`c2` must be greater than `c1` = {c1}, got {c2}.")
    base.check_int_at_least(max_trials, "max_trials", 1)
    if not increase_factor > 1.0:
        raise ValueError(f"`increase_factor` must be > 1, got {increase_factor}.")
    if condition not in CONDITIONS:
        raise ValueError(
            f"`condition` must be one of {list(CONDITIONS)}, got {condition!r}."
        )


def _interpolate(lo, f_lo, d_lo, hi, f_hi, d_hi):
    """Safeguarded cubic (then quadratic, then bisection) minimizer in [lo, hi]."""
    width = hi - lo
    # Cubic through (lo, f_lo, d_lo) and (hi, f_hi, d_hi).
    d1 = d_lo + d_hi - 3.0 * (f_lo - f_hi) / (lo - hi)
    # A negative radicand means the cubic has no minimizer: NaN falls through.
    d2 = jnp.sign(width) * jnp.sqrt(d1 * d1 - d_lo * d_hi)
    cubic = hi - width * (d_hi + d2 - d1) / (d_hi - d_lo + 2.0 * d2)
    # Quadratic through f_lo, d_lo and f_hi (no slope at hi needed).
    curv = f_hi - f_lo - d_lo * width
    quad = jnp.where(curv > 0, lo - 0.5 * d_lo * width * width / curv, jnp.nan)

    # Keep trials away from the ends so the interval shrinks geometrically.
    a, b = jnp.minimum(lo, hi), jnp.maximum(lo, hi)
    margin = 0.1 * (b - a)

    def inside(t):
        return jnp.isfinite(t) & (t >= a + margin) & (t <= b - margin)

    middle = lo + 0.5 * width
    return jnp.where(inside(cubic), cubic, jnp.where(inside(quad), quad, middle))


def _secant_lower(f, f_ref, dt, slope, d_ref, noise, bound):
    r"""Whether values within ``noise`` of each other still show a change <= bound.

    The change :math:`\phi(t) - \phi(t_r)` is estimated by the secant rule
    :math:`(t - t_r)(\phi'(t) + \phi'(t_r)) / 2`, exact for a quadratic, and
    used only where the two values differ by no more than their roundoff.
    """
    within = jnp.abs(f - f_ref) <= noise
    return within & (0.5 * dt * (slope + d_ref) <= bound) & jnp.isfinite(slope)


class _Search(NamedTuple):
    """Loop carry of the line search."""

    trials: jax.Array
    phase: jax.Array
    done: jax.Array
    t_next: jax.Array
    t_prev: jax.Array
    f_prev: jax.Array
    lo: jax.Array
    f_lo: jax.Array
    d_lo: jax.Array
    hi: jax.Array
    f_hi: jax.Array
    d_hi: jax.Array
    t_best: jax.Array
    f_best: jax.Array
    g_best: base.PyTree
    aux: Any


def _search_step(carry: _Search, *, evaluate, f0, d0, c1, c2, curvature, grow, t_max):
    """One trial of the bracketing (Alg. 3.5) or zoom (Alg. 3.6) phase."""
    zoom = carry.phase == _ZOOM
    interp = _interpolate(
        carry.lo, carry.f_lo, carry.d_lo, carry.hi, carry.f_hi, carry.d_hi
    )
    t = jnp.where(zoom, interp, carry.t_next)
    f, g, slope, aux = evaluate(t)

    # A non-finite trial fails the decrease test, so the search moves away.
    # Within roundoff of f(x) the values cannot show the decrease; there the
    # secant estimate of the change, exact for a quadratic, is used as well.
    noise = _ROUNDOFF_ULPS * jnp.finfo(f0.dtype).eps * jnp.abs(f0)
    secant_drop = _secant_lower(f, f0, t, slope, d0, noise, c1 * t * d0)
    decrease = jnp.isfinite(f) & ((f <= f0 + c1 * t * d0) | secant_drop)
    flat = jnp.abs(slope) <= -c2 * d0 if curvature else jnp.asarray(True)
    f_ref = jnp.where(zoom, carry.f_lo, carry.f_prev)
    t_ref = jnp.where(zoom, carry.lo, carry.t_prev)
    # In both phases d_lo holds the slope at the reference point.
    lower = _secant_lower(f, f_ref, t - t_ref, slope, carry.d_lo, noise, 0.0)
    first = (carry.trials == 0) & ~zoom
    too_high = ~decrease | ((f >= f_ref) & ~lower & ~first)
    accept = ~too_high & flat
    improves = (decrease & (f < carry.f_best)) | accept

    # Bracketing: a too-high trial or a rising slope closes the bracket.
    rising = ~too_high & ~flat & (slope >= 0)
    new_lo = jnp.where(zoom, carry.lo, jnp.where(rising, t, carry.t_prev))
    new_f_lo = jnp.where(zoom, carry.f_lo, jnp.where(rising, f, carry.f_prev))
    new_d_lo = jnp.where(zoom, carry.d_lo, jnp.where(rising, slope, carry.d_lo))
    new_hi = jnp.where(zoom, carry.hi, jnp.where(rising, carry.t_prev, t))
    new_f_hi = jnp.where(zoom, carry.f_hi, jnp.where(rising, carry.f_prev, f))
    new_d_hi = jnp.where(zoom, carry.d_hi, jnp.where(rising, carry.d_lo, slope))
    # In the bracketing phase d_lo holds the slope at t_prev.
    bracket_d_lo = jnp.where(~zoom & ~too_high & ~rising, slope, new_d_lo)

    # Zoom: shrink [lo, hi] around the trial.
    move_hi = zoom & too_high
    swap = zoom & ~too_high & ~flat & (slope * (carry.hi - carry.lo) >= 0)
    move_lo = zoom & ~too_high & ~flat
    new_hi = jnp.where(move_hi, t, jnp.where(swap, carry.lo, new_hi))
    new_f_hi = jnp.where(move_hi, f, jnp.where(swap, carry.f_lo, new_f_hi))
    new_d_hi = jnp.where(move_hi, slope, jnp.where(swap, carry.d_lo, new_d_hi))
    new_lo = jnp.where(move_lo, t, new_lo)
    new_f_lo = jnp.where(move_lo, f, new_f_lo)
    new_d_lo = jnp.where(move_lo, slope, bracket_d_lo)

    to_zoom = zoom | too_high | rising
    eps = jnp.finfo(t.dtype).eps
    tiny = jnp.abs(new_hi - new_lo) <= eps * jnp.maximum(new_lo, new_hi)
    capped = ~to_zoom & (t >= t_max)
    new = _Search(
        trials=carry.trials + 1,
        phase=jnp.where(to_zoom, _ZOOM, _BRACKET),
        done=accept | (to_zoom & tiny) | capped,
        t_next=jnp.minimum(t * grow, t_max),
        t_prev=t,
        f_prev=f,
        lo=new_lo,
        f_lo=new_f_lo,
        d_lo=new_d_lo,
        hi=new_hi,
        f_hi=new_f_hi,
        d_hi=new_d_hi,
        t_best=jnp.where(improves, t, carry.t_best),
        f_best=jnp.where(improves, f, carry.f_best),
        g_best=otu.tree_where(improves, g, carry.g_best),
        aux=aux,
    )
    # Integer and Python-scalar promotion must not change the carry's dtypes.
    return otu.tree_cast_like(new, carry), accept


def wolfe_line_search(
    value_fn: Callable[[base.Params], Any],
    params: base.Params,
    direction: base.Updates,
    value: jax.typing.ArrayLike,
    grad: base.PyTree,
    *,
    learning_rate: jax.typing.ArrayLike = 1.0,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_trials: int = 30,
    increase_factor: float = 2.0,
    max_learning_rate: float | None = None,
    condition: str = "strong_wolfe",
    has_aux: bool = False,
) -> WolfeResult:
    r"""Finds a step along ``direction`` that meets the strong Wolfe conditions.

    With :math:`\phi(\eta) = f(x + \eta d)` and :math:`\phi'(0) = \langle
    \nabla f(x), d \rangle < 0`, an accepted step satisfies

    .. math::
      \phi(\eta) \le \phi(0) + c_1 \eta \phi'(0), \qquad
      |\phi'(\eta)| \le c_2 |\phi'(0)| .

    The search starts at ``learning_rate``, grows the step by
    ``increase_factor`` until a bracket is found, then zooms with safeguarded
    cubic interpolation. Every trial is one value-and-gradient evaluation.
    Non-finite trial values count as too high. Where a trial's value is
    within roundoff of the value it is compared with (10 ulps of
    :math:`|\phi(0)|`), the comparison also accepts the secant estimate
    :math:`\phi(\eta) - \phi(0) \approx \eta (\phi'(0) + \phi'(\eta)) / 2`,
    so that a run can reach gradients whose decrease is below an ulp of the
    loss; a measurable rise is never accepted. If ``max_trials`` run out, the
    lowest trial that met sufficient decrease is returned (``wolfe`` False);
    if there is none, the step is 0 and the status ``LINE_SEARCH_FAILED``.
    With ``condition="armijo"`` only the first inequality is required (the
    same loop then backtracks by interpolation).

    Args:
      value_fn: loss of the params (``(loss, aux)`` with ``has_aux``).
      params: current point :math:`x`.
      direction: search direction :math:`d`; must be a descent direction.
      value: :math:`f(x)`.
      grad: :math:`\nabla f(x)`.
      learning_rate: first trial step.
      c1: sufficient-decrease constant in (0, 1).
      c2: curvature constant in (``c1``, 1); 0.9 suits quasi-Newton.
      max_trials: most evaluations allowed.
      increase_factor: growth of the trial step while bracketing, > 1.
      max_learning_rate: largest step tried (no bound when ``None``).
      condition: ``"strong_wolfe"`` or ``"armijo"``.
      has_aux: whether ``value_fn`` returns ``(loss, aux)``.

    Returns:
      A :class:`WolfeResult`.

    Raises:
      ValueError: for constants out of range (checked for Python numbers).

    Examples:
      >>> import jax, jax.numpy as jnp, so_opt
      >>> f = lambda x: jnp.sum((x - 2.0) ** 2)
      >>> x = jnp.zeros(2); v, g = jax.value_and_grad(f)(x)
      >>> res = so_opt.wolfe_line_search(f, x, -g, v, g)  # 1.0 overshoots
      >>> print(res.learning_rate, res.value, bool(res.wolfe))
      0.5 0.0 True
      >>> res = so_opt.wolfe_line_search(f, x, -g, v, g, learning_rate=0.1)
      >>> print(res.learning_rate, int(res.num_trials))  # already strong Wolfe
      0.1 1

    References:
      Nocedal and Wright, *Numerical Optimization*, 2nd ed., Springer, 2006,
      Algorithms 3.5 and 3.6; Wolfe, *Convergence conditions for ascent
      methods*, SIAM Review, 1969.
    """
    check_line_search_args(c1, c2, max_trials, increase_factor, condition)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    f0 = jnp.asarray(value).astype(dtype)
    d0 = otu.tree_vdot(grad, direction).astype(dtype)
    t_max = jnp.asarray(jnp.inf if max_learning_rate is None else max_learning_rate)
    t_max = t_max.astype(dtype)
    vg = jax.value_and_grad(value_fn, has_aux=has_aux)

    def evaluate(t):
        trial = jax.tree.map(
            lambda p, d: (p + t * d).astype(p.dtype), params, direction
        )
        out, g = vg(trial)
        f, aux = out if has_aux else (out, None)
        g = otu.tree_cast_like(g, grad)
        return f.astype(dtype), g, otu.tree_vdot(g, direction).astype(dtype), aux

    # The aux of the start point is unknown: take its shape from a trace.
    aux0 = None
    if has_aux:
        aux_shape = jax.eval_shape(lambda: vg(params)[0][1])
        aux0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)

    zero = jnp.zeros((), dtype)
    descent = jnp.isfinite(d0) & (d0 < 0) & jnp.isfinite(f0)
    init = _Search(
        trials=jnp.zeros((), base.COUNTER_DTYPE),
        phase=jnp.asarray(_BRACKET, base.COUNTER_DTYPE),
        done=~descent,
        t_next=jnp.minimum(jnp.asarray(learning_rate, dtype), t_max),
        t_prev=zero,
        f_prev=f0,
        lo=zero,
        f_lo=f0,
        d_lo=d0,
        hi=zero,
        f_hi=f0,
        d_hi=d0,
        t_best=zero,
        f_best=f0,
        g_best=grad,
        aux=aux0,
    )
    step = lambda c: _search_step(
        c[0],
        evaluate=evaluate,
        f0=f0,
        d0=d0,
        c1=c1,
        c2=c2,
        curvature=condition == "strong_wolfe",
        grow=increase_factor,
        t_max=t_max,
    )
    cond = lambda c: ~c[0].done & (c[0].trials < max_trials)
    final, accepted = jax.lax.while_loop(cond, step, (init, jnp.asarray(False)))

    found = final.t_best > 0
    code = jnp.where(found, base.StatusCode.RUNNING, base.StatusCode.LINE_SEARCH_FAILED)
    return WolfeResult(
        learning_rate=final.t_best,
        value=final.f_best,
        grad=final.g_best,
        aux=final.aux,
        num_trials=final.trials,
        wolfe=accepted & found,
        status=jnp.asarray(code, base.COUNTER_DTYPE),
    )


def scale_by_wolfe(
    learning_rate: float = 1.0,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_trials: int = 30,
    increase_factor: float = 2.0,
    max_learning_rate: float | None = None,
    condition: str = "strong_wolfe",
    has_aux: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Scales a descent direction by a step meeting the strong Wolfe conditions.

    The incoming ``updates`` are the direction :math:`d` (a Newton or
    quasi-Newton step, or the negative gradient); the output is
    :math:`\eta d` with :math:`\eta` from :func:`wolfe_line_search`:

    .. math::
      f(x + \eta d) \le f(x) + c_1 \eta \langle \nabla f(x), d \rangle,
      \qquad |\langle \nabla f(x + \eta d), d \rangle| \le
      c_2 |\langle \nabla f(x), d \rangle| .

    A failed search gives a zero update and ``LINE_SEARCH_FAILED``. The value
    and gradient at the accepted point are kept in the state
    (:class:`ValueGradCache`), so :func:`so_opt.minimize` does not evaluate
    them again. Each trial counts as one gradient evaluation.

    Args:
      learning_rate: first trial step at every update (1 for Newton-type
        directions).
      c1: sufficient-decrease constant in (0, 1).
      c2: curvature constant in (``c1``, 1).
      max_trials: most value-and-gradient evaluations per update.
      increase_factor: growth of the trial step while bracketing, > 1.
      max_learning_rate: largest step tried (no bound when ``None``).
      condition: ``"strong_wolfe"`` or ``"armijo"``.
      has_aux: whether ``value_fn`` returns ``(loss, aux)``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs
      ``params`` and the extra arguments ``value``, ``grad`` and ``value_fn``.

    Raises:
      ValueError: for constants out of range.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, so_opt
      >>> loss = lambda w: 0.25 * jnp.sum(w**4) + 0.5 * jnp.sum(w**2)
      >>> descent = optax.chain(optax.scale(-1.0), so_opt.scale_by_wolfe(c2=0.1))
      >>> w = jnp.array([1.0, -2.0]); state = descent.init(w)
      >>> v, g = jax.value_and_grad(loss)(w)
      >>> u, state = descent.update(g, state, w, value=v, grad=g, value_fn=loss)
      >>> print(state[1].learning_rate.round(4), so_opt.costs(state).grad_evals)
      0.2177 3

    References:
      Nocedal and Wright, *Numerical Optimization*, 2nd ed., Springer, 2006,
      Section 3.5.
    """
    check_line_search_args(c1, c2, max_trials, increase_factor, condition)
    base.check_positive(learning_rate, "learning_rate")
    search_args = dict(
        c1=c1,
        c2=c2,
        max_trials=max_trials,
        increase_factor=increase_factor,
        max_learning_rate=max_learning_rate,
        condition=condition,
        has_aux=has_aux,
    )

    def init_fn(params):
        base.check_float_params(params)
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
        return WolfeState(
            learning_rate=jnp.zeros((), dtype),
            num_trials=jnp.zeros((), base.COUNTER_DTYPE),
            wolfe=jnp.asarray(False),
            cache=empty_cache(params),
            costs=base.zero_costs(),
            status=base.ok_status(),
        )

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise TypeError("`scale_by_wolfe` needs `params` in `update`.")
        value = base.extra_arg(extra_args, "value", "scale_by_wolfe")
        grad = base.extra_arg(extra_args, "grad", "scale_by_wolfe")
        value_fn = base.extra_arg(extra_args, "value_fn", "scale_by_wolfe")
        res = wolfe_line_search(
            value_fn,
            params,
            updates,
            value,
            grad,
            learning_rate=learning_rate,
            **search_args,
        )
        new_updates = otu.tree_scale(res.learning_rate, updates)
        new_state = WolfeState(
            learning_rate=res.learning_rate.astype(state.learning_rate.dtype),
            num_trials=res.num_trials,
            wolfe=res.wolfe,
            cache=make_cache(new_updates, res, state.cache),
            costs=base.add_costs(state.costs, grad_evals=res.num_trials),
            status=base.make_status(res.status),
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def empty_cache(params: base.Params) -> ValueGradCache:
    """A cache that matches no update (its value is NaN)."""
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    return ValueGradCache(
        updates=otu.tree_zeros_like(params),
        value=jnp.asarray(jnp.nan, dtype),
        grad=otu.tree_zeros_like(params),
    )


def make_cache(
    updates: base.Updates, res: WolfeResult, old: ValueGradCache
) -> ValueGradCache:
    """The cache after a line search, cast to the dtypes of the old one."""
    return ValueGradCache(
        updates=otu.tree_cast_like(updates, old.updates),
        value=res.value.astype(old.value.dtype),
        grad=otu.tree_cast_like(res.grad, old.grad),
    )


def value_and_grad_from_state(
    value_fn: Callable[[base.Params], jax.Array],
    params: base.Params,
    updates: base.Updates,
    state: base.PyTree,
    has_aux: bool = False,
) -> tuple[jax.Array, base.PyTree, jax.Array]:
    r"""Loss and gradient at ``params``, reused from a line search when possible.

    ``params`` must be the point just reached, :math:`x + u` for the
    ``updates`` :math:`u` returned with ``state``. When the state holds a
    :class:`ValueGradCache` whose updates equal :math:`u` exactly (the line
    search's step went through unchanged), its value and gradient are
    returned; otherwise ``jax.value_and_grad(value_fn)(params)`` runs (inside
    ``lax.cond``, so only one branch costs anything).

    Args:
      value_fn: loss of the params, returning a scalar.
      params: the new params :math:`x + u`.
      updates: the updates :math:`u` returned by the optimizer.
      state: the optimizer state returned with them.
      has_aux: whether ``value_fn`` returns ``(loss, aux)``; the aux is
        dropped (the cache does not keep it).

    Returns:
      ``(value, grad, reused)``; ``reused`` is a bool scalar, ``True`` when no
      evaluation was spent.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, so_opt
      >>> f = lambda x: jnp.sum(x ** 2)
      >>> opt = so_opt.lbfgs(); x = jnp.ones(2); state = opt.init(x)
      >>> v, g = jax.value_and_grad(f)(x)
      >>> u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
      >>> x = optax.apply_updates(x, u)
      >>> v, g, reused = so_opt.value_and_grad_from_state(f, x, u, state)
      >>> bool(reused)
      True

    References:
      The same idea as ``optax.value_and_grad_from_state`` (optax, 2024),
      guarded here by an exact check of the updates.
    """
    caches = [
        leaf
        for leaf in jax.tree_util.tree_leaves(
            state, is_leaf=lambda x: isinstance(x, ValueGradCache)
        )
        if isinstance(leaf, ValueGradCache)
    ]
    loss_fn = (lambda p: value_fn(p)[0]) if has_aux else value_fn
    compute = lambda: jax.value_and_grad(loss_fn)(params)
    if len(caches) != 1:
        value, grad = compute()
        return value, grad, jnp.asarray(False)
    cache = caches[0]
    same = [
        jnp.all(jnp.asarray(a) == jnp.asarray(b))
        for a, b in zip(
            jax.tree_util.tree_leaves(cache.updates),
            jax.tree_util.tree_leaves(updates),
            strict=True,
        )
    ]
    hit = jnp.all(jnp.stack(same)) & jnp.isfinite(cache.value)
    value, grad = jax.lax.cond(
        hit,
        lambda: (cache.value, otu.tree_cast_like(cache.grad, params)),
        lambda: tuple(compute()),
    )
    return value, grad, hit
