"""The strong Wolfe search loop shared by :func:`so_opt.wolfe_line_search` and
the quasi-Newton methods: bracketing and zoom (Nocedal and Wright, Algorithms
3.5 and 3.6) in one ``lax.while_loop``, with an optional restart along a
second direction when the first attempt finds no step.

The loop is written for a low count of compiled kernels per trial, which is
what a trial costs on a CPU for small problems: the scalar state is a handful
of fused selects, and the trial's slope comes from one matrix-vector product
with the stacked search direction and gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from so_opt._src import base, tree_rows

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
    Equal values and equal slopes are no evidence of a change: that is what a
    step below the resolution of the params gives (the point did not move),
    and the secant rule would then vouch for a decrease of
    :math:`(t - t_r)\phi'(t_r)` that never happened.
    """
    within = jnp.abs(f - f_ref) <= noise
    moved = (f != f_ref) | (slope != d_ref)
    drop = 0.5 * dt * (slope + d_ref) <= bound
    return within & moved & drop & jnp.isfinite(slope)


def trial_step(t, a, b, params, direction, grad) -> base.Updates:
    """The step :math:`t (a d + b g)` of a trial, in the dtypes of ``params``.

    Callers that turn an accepted trial into updates use this same expression,
    so that ``params + updates`` is the point whose value the search cached.
    """
    return jax.tree.map(
        lambda p, d, g: (t * (a * d + b * g)).astype(p.dtype), params, direction, grad
    )


class _Search(NamedTuple):
    """Loop carry of the line search.

    The trial direction is ``a * direction + b * grad``; ``d0`` is its slope
    at the start. ``trials`` counts the trials of the current attempt and
    ``total`` those of all attempts.
    """

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
    accepted: jax.Array
    a: jax.Array
    b: jax.Array
    d0: jax.Array
    attempt: jax.Array
    total: jax.Array


_SCALARS = tuple(k for k in _Search._fields if k not in ("g_best", "aux"))


def _pack(carry: _Search, dtype) -> tuple[jax.Array, base.PyTree, Any]:
    """The carry as one vector of its scalars, ``g_best`` and ``aux``.

    Each field of a loop carry is a buffer of its own, and every buffer that
    a trial rewrites costs a kernel; one vector of all the scalars is written
    by a single fused kernel (:func:`so_opt._src.base.pack_scalars`).
    Counters and flags are small integers, exact in any float dtype.
    """
    vec = base.pack_scalars([getattr(carry, k) for k in _SCALARS], dtype)
    return vec, carry.g_best, carry.aux


def _unpack(packed, like: _Search) -> _Search:
    """Inverse of :func:`_pack`, with the dtypes of ``like``."""
    vec, g_best, aux = packed
    fields = {
        k: vec[i].astype(jnp.result_type(getattr(like, k)))
        for i, k in enumerate(_SCALARS)
    }
    return _Search(g_best=g_best, aux=aux, **fields)


def _search_step(carry: _Search, *, evaluate, f0, c1, c2, curvature, grow, t_max):
    """One trial of the bracketing (Alg. 3.5) or zoom (Alg. 3.6) phase."""
    zoom = carry.phase == _ZOOM
    interp = _interpolate(
        carry.lo, carry.f_lo, carry.d_lo, carry.hi, carry.f_hi, carry.d_hi
    )
    t = jnp.where(zoom, interp, carry.t_next)
    f, g, slope, aux = evaluate(t, carry.a, carry.b)
    d0 = carry.d0

    # A non-finite trial fails the decrease test, so the search moves away:
    # a non-finite value, and a finite value whose gradient is not (the slope
    # is then NaN or infinite), as in jnp.where(x > 0, x * log(x), 0) at x < 0.
    # Within roundoff of f(x) the values cannot show the decrease; there the
    # secant estimate of the change, exact for a quadratic, is used as well.
    noise = _ROUNDOFF_ULPS * jnp.finfo(f0.dtype).eps * jnp.abs(f0)
    secant_drop = _secant_lower(f, f0, t, slope, d0, noise, c1 * t * d0)
    finite = jnp.isfinite(f) & jnp.isfinite(slope)
    decrease = finite & ((f <= f0 + c1 * t * d0) | secant_drop)
    if curvature:
        flat = jnp.abs(slope) <= -c2 * d0
    else:
        # Without the curvature test nothing else stops a search at the
        # precision floor: there c1 t d0 is below an ulp of f0, so an unchanged
        # value passes the test above, and values within roundoff can rise
        # and fall by an ulp forever. An Armijo step must lower the value.
        decrease = decrease & (f < f0)
        flat = jnp.asarray(True)
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
        accepted=accept,
        a=carry.a,
        b=carry.b,
        d0=d0,
        attempt=carry.attempt,
        total=carry.total + 1,
    )
    # Integer and Python-scalar promotion must not change the carry's dtypes.
    return otu.tree_cast_like(new, carry)


class SearchOutcome(NamedTuple):
    """What :func:`search` found.

    Attributes:
      result: the :class:`WolfeResult`; ``num_trials`` counts all attempts.
      a: coefficient of ``direction`` in the direction searched last.
      b: coefficient of ``grad`` in it.
      restarted: whether the restart direction was used.
    """

    result: WolfeResult
    a: jax.Array
    b: jax.Array
    restarted: jax.Array


def search(
    value_fn: Callable[[base.Params], Any],
    params: base.Params,
    direction: base.Updates,
    value: jax.Array,
    grad: base.PyTree,
    *,
    slope: jax.Array | None = None,
    restart: jax.Array | None = None,
    restart_scale: jax.Array | None = None,
    learning_rate: jax.typing.ArrayLike = 1.0,
    c1: float,
    c2: float,
    max_trials: int,
    increase_factor: float = 2.0,
    max_learning_rate: float | None = None,
    condition: str = "strong_wolfe",
    has_aux: bool = False,
) -> SearchOutcome:
    """Strong Wolfe search along ``direction``, optionally restarted once.

    Args:
      value_fn, params, direction, value, grad: as in
        :func:`so_opt.wolfe_line_search`; ``direction`` must be finite.
      slope: :math:`\\langle g, d \\rangle` when the caller has it.
      restart: bool scalar; when the first attempt finds no step and this
        holds, the search starts again along ``-restart_scale * grad``.
      restart_scale: positive scale of the restart direction.
      learning_rate, c1, c2, max_trials, increase_factor, max_learning_rate,
        condition, has_aux: as in :func:`so_opt.wolfe_line_search`;
        ``max_trials`` bounds each attempt.

    Returns:
      A :class:`SearchOutcome`.
    """
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    f0 = jnp.asarray(value).astype(dtype)
    # One product per trial gives the slopes along the direction and -grad.
    basis = tree_rows.stack(otu.tree_cast_like(direction, grad), grad)
    if slope is None:
        slope = tree_rows.row_dots(basis, grad, dtype)[0]
    d0 = jnp.asarray(slope).astype(dtype)
    t_max = jnp.asarray(jnp.inf if max_learning_rate is None else max_learning_rate)
    t_max = t_max.astype(dtype)
    vg = jax.value_and_grad(value_fn, has_aux=has_aux)

    def evaluate(t, a, b):
        trial = otu.tree_add(params, trial_step(t, a, b, params, direction, grad))
        out, g = vg(trial)
        f, aux = out if has_aux else (out, None)
        # Python numbers in aux become arrays, so the carry can be cast.
        aux = jax.tree.map(jnp.asarray, aux)
        g = otu.tree_cast_like(g, grad)
        along = tree_rows.row_dots(basis, g, dtype)
        return f.astype(dtype), g, a * along[0] + b * along[1], aux

    # The aux of the start point is unknown: take its shape from a trace.
    aux0 = None
    if has_aux:
        aux_shape = jax.eval_shape(lambda: vg(params)[0][1])
        aux0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)

    zero = jnp.zeros((), dtype)
    one = jnp.ones((), dtype)
    counter = jnp.zeros((), base.COUNTER_DTYPE)

    def start(d0, a, b, attempt, total):
        descent = jnp.isfinite(d0) & (d0 < 0) & jnp.isfinite(f0)
        return _Search(
            trials=counter,
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
            accepted=jnp.asarray(False),
            a=a,
            b=b,
            d0=d0,
            attempt=jnp.asarray(attempt, base.COUNTER_DTYPE),
            total=total,
        )

    init = start(d0, one, zero, 0, counter)
    step = lambda c: _search_step(
        c,
        evaluate=evaluate,
        f0=f0,
        c1=c1,
        c2=c2,
        curvature=condition == "strong_wolfe",
        grow=increase_factor,
        t_max=t_max,
    )
    if restart is None:
        body = lambda packed: _pack(step(_unpack(packed, init)), dtype)
    else:
        # Restart along -scale * grad, whose slope is -scale |g|^2.
        scale = jnp.asarray(restart_scale).astype(dtype)
        g_sq = tree_rows.row_dots(basis, grad, dtype)[1]
        again = start(-scale * g_sq, zero, -scale, 1, counter)

        def body(packed):
            new = step(_unpack(packed, init))
            over = new.done | (new.trials >= max_trials)
            fresh = restart & (new.attempt == 0) & over & (new.t_best <= 0)
            vec, g_best, aux = _pack(new, dtype)
            vec = jnp.where(fresh, _pack(again, dtype)[0], vec)
            # A fresh attempt keeps the count of all trials so far.
            vec = vec.at[_SCALARS.index("total")].set(new.total.astype(dtype))
            return vec, otu.tree_where(fresh, grad, g_best), aux

    def cond(packed):
        carry = _unpack(packed, init)
        return ~carry.done & (carry.trials < max_trials)

    final = _unpack(jax.lax.while_loop(cond, body, _pack(init, dtype)), init)

    found = final.t_best > 0
    code = jnp.where(found, base.StatusCode.RUNNING, base.StatusCode.LINE_SEARCH_FAILED)
    result = WolfeResult(
        learning_rate=final.t_best,
        value=final.f_best,
        grad=final.g_best,
        aux=final.aux,
        num_trials=final.total,
        wolfe=final.accepted & found,
        status=jnp.asarray(code, base.COUNTER_DTYPE),
    )
    return SearchOutcome(result, final.a, final.b, final.attempt > 0)
