"""Dense BFGS: the full inverse-Hessian approximation on the flattened params."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from so_opt._src import base, compile_options
from so_opt._src import lbfgs as lbfgs_lib
from so_opt._src import wolfe as wolfe_lib

DEFAULT_MEMORY_BUDGET_BYTES = 2**30


class BFGSState(NamedTuple):
    """State of :func:`bfgs`.

    Attributes:
      count: number of updates made.
      inv_hessian: the k x k inverse-Hessian approximation :math:`H`.
      has_pairs: whether :math:`H` holds curvature (else the next step is
        steepest descent and the next pair sets the initial scale).
      learning_rate: step accepted by the last line search.
      cache: value and gradient at the accepted point.
      costs: cumulative work counters.
      status: as in :class:`so_opt.LBFGSState` (``LINE_SEARCH_FAILED``,
        ``NON_FINITE`` or ``CONVERGED`` when the last update took no step).
    """

    count: jax.Array
    inv_hessian: jax.Array
    has_pairs: jax.Array
    learning_rate: jax.Array
    cache: wolfe_lib.ValueGradCache
    costs: base.Costs
    status: base.Status


def check_dense_size(num_params: int, dtype, memory_budget_bytes: int) -> None:
    """Raises ``ValueError`` when a k x k matrix would exceed the budget."""
    need = num_params * num_params * jnp.dtype(dtype).itemsize
    if need > memory_budget_bytes:
        raise ValueError(
            f"`memory_budget_bytes` is {memory_budget_bytes}, but dense BFGS on "
            f"k = {num_params} parameters needs a k x k {jnp.dtype(dtype).name} "
            f"matrix of {need} bytes; use `so_opt.lbfgs` or raise the budget."
        )


def bfgs_inverse_update(h, s, y, sy):
    r"""Returns :math:`(I - \rho s y^\top) H (I - \rho y s^\top) + \rho s s^\top`."""
    rho = 1.0 / sy
    hy = h @ y
    yhy = y @ hy
    # Expanded form: O(k^2) outer products, no k x k matrix products.
    h = h - rho * (jnp.outer(s, hy) + jnp.outer(hy, s))
    return h + (rho * rho * yhy + rho) * jnp.outer(s, s)


def _bfgs_update(updates, state, params, extra_args, kw, rtol):
    """One BFGS step: direction, line search, inverse-Hessian update."""
    value, grad, value_fn = lbfgs_lib.checked_args(updates, params, extra_args, "bfgs")
    flat_updates, unravel = ravel_pytree(updates)
    h = state.inv_hessian
    # Without pairs the search takes the bounded steepest step instead.
    direction = unravel(-(h @ flat_updates.astype(h.dtype)))
    res, new_updates, reset = lbfgs_lib.search_with_fallback(
        value_fn, params, direction, value, grad, state.has_pairs, kw
    )

    s = ravel_pytree(new_updates)[0].astype(h.dtype)
    y = (ravel_pytree(res.grad)[0] - ravel_pytree(grad)[0]).astype(h.dtype)
    sy, yy = s @ y, y @ y
    accept = lbfgs_lib.curvature_ok(sy, jnp.linalg.norm(s), jnp.sqrt(yy), rtol)
    accept = accept & (res.learning_rate > 0)

    # Before the first pair (or after a reset) H0 = (s'y / y'y) I.
    has_pairs = state.has_pairs & ~reset
    h0 = jnp.where(has_pairs, h, (sy / yy) * jnp.eye(h.shape[0], dtype=h.dtype))
    safe_sy = jnp.where(accept, sy, 1.0)
    h_new = jnp.where(accept, bfgs_inverse_update(h0, s, y, safe_sy), h)
    new_state = BFGSState(
        count=state.count + 1,
        inv_hessian=h_new.astype(h.dtype),
        has_pairs=has_pairs | accept,
        learning_rate=res.learning_rate.astype(state.learning_rate.dtype),
        cache=wolfe_lib.make_cache(new_updates, res, state.cache),
        costs=base.add_costs(state.costs, grad_evals=res.num_trials),
        status=base.make_status(res.status),
    )
    return new_updates, new_state


def bfgs(
    line_search: str = "strong_wolfe",
    c1: float = 1e-4,
    c2: float = 0.9,
    max_trials: int = 30,
    curvature_rtol: float | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    has_aux: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Dense BFGS with a strong Wolfe line search, for small parameter counts.

    The params are flattened with ``jax.flatten_util.ravel_pytree``; the
    k x k inverse-Hessian approximation :math:`H` gives the direction
    :math:`d = -H g` and is updated after each step with
    :math:`s = x_{+} - x`, :math:`y = g_{+} - g`, :math:`\rho = 1/s^\top y`:

    .. math::
      H_{+} = (I - \rho s y^\top) H (I - \rho y s^\top) + \rho s s^\top ,

    starting from :math:`H_0 = (s^\top y / y^\top y) I` at the first pair.
    The safeguards are those of :func:`so_opt.lbfgs`: a pair is used only
    when :math:`s^\top y > \epsilon_c \|s\|\|y\|`; a non-descent direction or
    a failed search falls back to steepest descent and resets :math:`H`.
    Memory is :math:`O(k^2)` and each update :math:`O(k^2)` work.

    Args:
      line_search: ``"strong_wolfe"`` (default) or ``"armijo"``.
      c1: sufficient-decrease constant in (0, 1).
      c2: curvature constant in (``c1``, 1).
      max_trials: most evaluations per line-search attempt; a failed
        attempt with curvature memory restarts along steepest descent, so an
        update can spend up to twice this.
      curvature_rtol: relative threshold :math:`\epsilon_c` in [0, 1) of the
        curvature check; ``None`` for the dtype's machine epsilon.
      memory_budget_bytes: largest size of :math:`H` allowed; ``init``
        raises beyond it (default 1 GiB). A compiled step holds about three
        times :math:`H` at its peak (the carried matrix, the updated one and
        a temporary product), so budget for that.
      has_aux: whether ``value_fn`` returns ``(loss, aux)``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` takes the
      gradient as ``updates`` and needs ``params`` and the extra arguments
      ``value``, ``grad`` and ``value_fn``. It is marked latency-bound, so
      :func:`so_opt.minimize` compiles its loop with XLA:CPU's
      memory-optimized scheduler (``compiler_options``).

    Raises:
      ValueError: for hyperparameters out of range, and from ``init`` when
        :math:`H` would exceed ``memory_budget_bytes``.

    Examples:
      >>> import jax.numpy as jnp, so_opt
      >>> f = lambda p: jnp.sum((p["a"] - 2.0) ** 2) + (p["b"] + 1.0) ** 2
      >>> x = {"a": jnp.zeros(2), "b": jnp.zeros(())}
      >>> res = so_opt.minimize(f, x, so_opt.bfgs(), gtol=1e-8)
      >>> print(res.params["a"].round(6), res.params["b"].round(6))
      [2. 2.] -1.0

    References:
      Broyden, 1970; Fletcher, 1970; Goldfarb, 1970; Shanno, 1970 (four
      papers, Mathematics of Computation and The Computer Journal); Nocedal
      and Wright, *Numerical Optimization*, 2nd ed., 2006, Section 6.1.
    """
    if line_search not in lbfgs_lib.LINE_SEARCHES:
        raise ValueError(
            f"`line_search` must be one of {list(lbfgs_lib.LINE_SEARCHES)}, "
            f"got {line_search!r}."
        )
    wolfe_lib.check_line_search_args(c1, c2, max_trials, 2.0, line_search, has_aux)
    lbfgs_lib.check_curvature_rtol(curvature_rtol)
    base.check_int_at_least(memory_budget_bytes, "memory_budget_bytes", 1)
    kw = dict(
        c1=c1, c2=c2, max_trials=max_trials, condition=line_search, has_aux=has_aux
    )

    def init_fn(params):
        base.check_float_params(params)
        dtype = base.params_dtype(params)
        k = ravel_pytree(params)[0].size
        check_dense_size(k, dtype, memory_budget_bytes)
        return BFGSState(
            count=jnp.zeros((), base.COUNTER_DTYPE),
            inv_hessian=jnp.eye(k, dtype=dtype),
            has_pairs=jnp.asarray(False),
            learning_rate=jnp.zeros((), dtype),
            cache=wolfe_lib.empty_cache(params),
            costs=base.zero_costs(),
            status=base.ok_status(),
        )

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise TypeError("`bfgs` needs `params` in `update`.")
        rtol = lbfgs_lib.default_curvature_rtol(state.inv_hessian.dtype, curvature_rtol)
        return _bfgs_update(updates, state, params, extra_args, kw, rtol)

    # Marked so that so_opt.minimize compiles its loop for latency.
    return compile_options.LatencyBound(init_fn, update_fn)
