"""Limited-memory BFGS on pytrees: two-loop recursion with a guarded memory."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from so_opt._src import base, compile_options, tree_rows, wolfe_loop
from so_opt._src import tree as tree_lib
from so_opt._src import wolfe as wolfe_lib

LINE_SEARCHES = ("strong_wolfe", "armijo")


class LBFGSState(NamedTuple):
    """State of :func:`lbfgs`.

    Attributes:
      count: number of updates made.
      s_memory: past steps :math:`s_i`, each leaf with a leading axis of
        length ``memory_size`` (a ring buffer).
      y_memory: past gradient differences :math:`y_i`, same layout.
      rho: :math:`1 / \\langle s_i, y_i \\rangle` per slot; 0 marks an empty
        slot, so the two-loop recursion skips it.
      head: slot the next pair is written to.
      gamma: initial inverse-Hessian scale from the newest pair.
      learning_rate: step accepted by the last line search.
      cache: value and gradient at the accepted point.
      costs: cumulative work counters.
      status: ``LINE_SEARCH_FAILED`` when the last update found no step,
        ``NON_FINITE`` when its value or gradient was not finite (or the
        squared gradient norm overflowed the dtype: in float32 a norm above
        about 1.8e19),
        ``CONVERGED`` when its gradient's squared norm was zero (a
        stationary point, not necessarily a minimum; in float32 a gradient
        norm below about 1e-19 rounds to it).
    """

    count: jax.Array
    s_memory: base.PyTree
    y_memory: base.PyTree
    rho: jax.Array
    head: jax.Array
    gamma: jax.Array
    learning_rate: jax.Array
    cache: wolfe_lib.ValueGradCache
    costs: base.Costs
    status: base.Status


def curvature_ok(sy, s_norm, y_norm, rtol) -> jax.Array:
    """Whether a pair's :math:`s^\\top y` is safely positive relative to |s||y|."""
    return jnp.isfinite(sy) & (sy > rtol * s_norm * y_norm) & (s_norm > 0)


def check_curvature_rtol(curvature_rtol: float | None) -> None:
    r"""Raises ``ValueError`` unless ``curvature_rtol`` is None or in [0, 1).

    By Cauchy-Schwarz :math:`s^\top y \le \|s\|\|y\|`, so a threshold of 1
    or more refuses every pair and the method silently becomes steepest
    descent.
    """
    if curvature_rtol is None:
        return
    base.check_positive(curvature_rtol, "curvature_rtol", allow_zero=True)
    if curvature_rtol >= 1:
        raise ValueError(
            "`curvature_rtol` must be < 1 (no pair has s'y >= |s||y|), got "
            f"{curvature_rtol}."
        )


def default_curvature_rtol(dtype, curvature_rtol: float | None) -> float:
    """The curvature threshold: ``curvature_rtol`` or the machine epsilon."""
    return float(jnp.finfo(dtype).eps) if curvature_rtol is None else curvature_rtol


def search_with_fallback(value_fn, params, direction, value, grad, has_memory, kw):
    """Line search along ``direction``, falling back to steepest descent.

    ``direction`` is replaced by :math:`-g \\min(1, 1/\\|g\\|)` without
    curvature memory (``has_memory`` false) or when it is not a descent
    direction, :math:`\\langle g, d \\rangle < -\\epsilon \\|g\\|
    \\|d\\|` with both finite; and when the search along it fails while
    curvature memory was in use (a stale memory is the likely cause), the
    same search loop restarts along steepest descent.

    Returns ``(result, updates, reset flag)``: the updates are the accepted
    step :math:`\\eta d` in the dtypes of ``params``. Where no step is found,
    the result's status says why: ``NON_FINITE`` for a non-finite ``value``
    or ``grad``, ``CONVERGED`` where :math:`\\|g\\|^2` is zero (a stationary
    point: there is no descent direction to search), else
    ``LINE_SEARCH_FAILED``.
    """
    dtype = base.params_dtype(params)
    # |g|^2, <g, d> and |d|^2 from one product of the stacked pair.
    gram = tree_rows.gram(tree_rows.stack(grad, direction), dtype)
    g_sq, slope, d_sq = gram[0, 0], gram[0, 1], gram[1, 1]
    eps = jnp.finfo(dtype).eps
    descent = (
        has_memory
        & jnp.isfinite(slope)
        & jnp.isfinite(d_sq)
        & (slope < -eps * jnp.sqrt(g_sq) * jnp.sqrt(d_sq))
    )
    scale = jnp.minimum(1.0, 1.0 / jnp.sqrt(g_sq)).astype(dtype)
    direction = otu.tree_where(descent, direction, otu.tree_scale(-scale, grad))
    out = wolfe_loop.search(
        value_fn,
        params,
        direction,
        value,
        grad,
        slope=jnp.where(descent, slope, -scale * g_sq),
        restart=descent,
        restart_scale=scale,
        **kw,
    )
    # The accepted trial's own step, so the cached value and gradient match;
    # zero when the search failed, also along a non-finite direction (a
    # non-finite gradient given to update), where 0 * d would be NaN.
    t = out.result.learning_rate
    updates = wolfe_loop.trial_step(t, out.a, out.b, params, direction, grad)
    updates = otu.tree_where(t > 0, updates, otu.tree_zeros_like(updates))
    code = jnp.select(
        [~jnp.isfinite(value) | ~jnp.isfinite(g_sq), g_sq == 0],
        [base.StatusCode.NON_FINITE, base.StatusCode.CONVERGED],
        out.result.status,
    ).astype(out.result.status.dtype)
    result = out.result._replace(status=code)
    return result, updates, ~descent | out.restarted


def checked_args(updates, params, extra_args, caller):
    """``value``, ``grad`` and ``value_fn`` of an update, checked at trace time.

    A non-scalar value or a gradient shaped unlike the params would otherwise
    broadcast inside the search and fail there without naming the argument.
    """
    value = base.extra_arg(extra_args, "value", caller)
    value = base.check_scalar(value, "value", caller)
    grad = base.extra_arg(extra_args, "grad", caller)
    value_fn = base.extra_arg(extra_args, "value_fn", caller)
    for tree, name in ((updates, "updates"), (grad, "grad")):
        tree_lib.check_tree_like(tree, params, name, check_dtypes=False)
    return value, grad, value_fn


def two_loop(grad, s_memory, y_memory, rho, head, gamma):
    """Returns :math:`H g` for the L-BFGS inverse Hessian :math:`H` (two loops)."""
    m = rho.shape[0]
    slot = lambda memory, i: jax.tree.map(lambda leaf: leaf[i], memory)
    # Slots from newest to oldest, scanned as data: an index computed inside
    # the loop body, and alphas written into a carried array, each cost a
    # kernel per trip on XLA:CPU.
    order = (head - 1 - jnp.arange(m)) % m

    # Newest to oldest: alpha_i = rho_i <s_i, q>, q <- q - alpha_i y_i.
    def backward(q, i):
        alpha = rho[i] * otu.tree_vdot(slot(s_memory, i), q)
        return otu.tree_add_scale(q, -alpha, slot(y_memory, i)), alpha

    q, alphas = jax.lax.scan(backward, grad, order)
    r = otu.tree_scale(gamma, q)

    # Oldest to newest: beta_i = rho_i <y_i, r>, r <- r + (alpha_i - beta_i) s_i.
    def forward(r, slot_alpha):
        i, alpha = slot_alpha
        beta = rho[i] * otu.tree_vdot(slot(y_memory, i), r)
        return otu.tree_add_scale(r, alpha - beta, slot(s_memory, i)), None

    r, _ = jax.lax.scan(forward, r, (order, alphas), reverse=True)
    return r


def _write_slot(memory, new, index, accept):
    """Writes ``new`` into slot ``index`` of each leaf when ``accept`` holds."""

    # A dynamic-update-slice, not ``.at[].set`` (a scatter): XLA:CPU fuses it
    # with the select feeding it into one in-place kernel per leaf.
    def write(leaf, x):
        old = jax.lax.dynamic_index_in_dim(leaf, index, keepdims=False)
        value = jnp.where(accept, x.astype(leaf.dtype), old)
        return jax.lax.dynamic_update_index_in_dim(leaf, value, index, 0)

    return jax.tree.map(write, memory, new)


def _lbfgs_update(updates, state, params, extra_args, kw, rtol):
    """One L-BFGS step: direction, line search, memory update."""
    value, grad, value_fn = checked_args(updates, params, extra_args, "lbfgs")
    dtype = state.rho.dtype
    has_memory = jnp.any(state.rho > 0)
    hg = two_loop(
        updates,
        state.s_memory,
        state.y_memory,
        state.rho,
        state.head,
        state.gamma,
    )
    # Without memory the search takes the bounded steepest step instead.
    direction = otu.tree_scale(-1.0, otu.tree_cast_like(hg, params))
    res, new_updates, reset = search_with_fallback(
        value_fn, params, direction, value, grad, has_memory, kw
    )

    # The new pair: s = eta d, y = g_new - g; kept only with safe curvature.
    y = otu.tree_sub(res.grad, grad)
    gram = tree_rows.gram(tree_rows.stack(new_updates, y), dtype)
    ss, sy, yy = gram[0, 0], gram[0, 1], gram[1, 1]
    accept = curvature_ok(sy, jnp.sqrt(ss), jnp.sqrt(yy), rtol)
    accept = accept & (res.learning_rate > 0)

    rho = jnp.where(reset, jnp.zeros_like(state.rho), state.rho)
    head = jnp.where(reset, 0, state.head)
    m = rho.shape[0]
    s_memory = _write_slot(state.s_memory, new_updates, head, accept)
    y_memory = _write_slot(state.y_memory, y, head, accept)
    new_gamma = jnp.where(accept, sy / yy, jnp.where(reset, 1.0, state.gamma))
    new_state = LBFGSState(
        count=state.count + 1,
        s_memory=s_memory,
        y_memory=y_memory,
        rho=rho.at[head].set(jnp.where(accept, 1.0 / sy, rho[head]).astype(dtype)),
        head=jnp.where(accept, (head + 1) % m, head).astype(state.head.dtype),
        gamma=new_gamma.astype(state.gamma.dtype),
        learning_rate=res.learning_rate.astype(state.learning_rate.dtype),
        cache=wolfe_lib.make_cache(new_updates, res, state.cache),
        costs=base.add_costs(state.costs, grad_evals=res.num_trials),
        status=base.make_status(res.status),
    )
    return new_updates, new_state


def lbfgs(
    memory_size: int = 10,
    line_search: str = "strong_wolfe",
    c1: float = 1e-4,
    c2: float = 0.9,
    max_trials: int = 30,
    curvature_rtol: float | None = None,
    has_aux: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Limited-memory BFGS with a strong Wolfe line search, on any pytree.

    The direction is :math:`d = -H g`, with :math:`H` the inverse-Hessian
    approximation built by the two-loop recursion from the last ``m`` pairs
    :math:`s_i = x_{i+1} - x_i`, :math:`y_i = g_{i+1} - g_i`, starting from
    :math:`H_0 = \gamma I` with the newest pair's scale:

    .. math::
      \gamma = \frac{s^\top y}{y^\top y}, \qquad
      H_{i+1} = (I - \rho_i s_i y_i^\top) H_i (I - \rho_i y_i s_i^\top)
        + \rho_i s_i s_i^\top, \quad \rho_i = 1 / s_i^\top y_i .

    Safeguards: a pair is stored only when
    :math:`s^\top y > \epsilon_c \|s\| \|y\|` (``curvature_rtol``, default
    the machine epsilon of the params' dtype), which keeps :math:`H`
    positive definite; a direction that is not a descent direction, or whose
    line search fails, is replaced by steepest descent and the memory is
    cleared. The first step has at most unit length. The accepted point's
    value and gradient stay in the state for :func:`so_opt.minimize`.

    Costs: each line-search trial is one value-and-gradient evaluation,
    counted in ``grad_evals``.

    Args:
      memory_size: number of pairs ``m`` kept, >= 1.
      line_search: ``"strong_wolfe"`` (default) or ``"armijo"``.
      c1: sufficient-decrease constant in (0, 1).
      c2: curvature constant in (``c1``, 1).
      max_trials: most evaluations per line-search attempt; a failed
        attempt with curvature memory restarts along steepest descent, so an
        update can spend up to twice this.
      curvature_rtol: relative threshold :math:`\epsilon_c` in [0, 1) of the
        curvature check; ``None`` for the dtype's machine epsilon.
      has_aux: whether ``value_fn`` returns ``(loss, aux)``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` takes the
      gradient as ``updates`` and needs ``params`` and the extra arguments
      ``value``, ``grad`` and ``value_fn``. It is marked latency-bound, so
      :func:`so_opt.minimize` compiles its loop with XLA:CPU's
      memory-optimized scheduler (``compiler_options``).

    Raises:
      ValueError: for hyperparameters out of range.
      TypeError: in ``init``, for params whose leaves mix floating dtypes.

    Examples:
      >>> import jax, jax.numpy as jnp, so_opt
      >>> f = lambda x: jnp.sum((x - 3.0) ** 2) + jnp.sum(x) ** 2
      >>> res = so_opt.minimize(f, jnp.zeros(3), so_opt.lbfgs(), max_steps=50)
      >>> print(res.status == so_opt.StatusCode.CONVERGED, res.params.round(4))
      True [0.75 0.75 0.75]

    References:
      Nocedal, *Updating quasi-Newton matrices with limited storage*,
      Mathematics of Computation, 1980; Liu and Nocedal, *On the limited
      memory BFGS method for large scale optimization*, Mathematical
      Programming, 1989.
    """
    base.check_int_at_least(memory_size, "memory_size", 1)
    if line_search not in LINE_SEARCHES:
        raise ValueError(
            f"`line_search` must be one of {list(LINE_SEARCHES)}, got {line_search!r}."
        )
    check_curvature_rtol(curvature_rtol)
    kw = dict(
        c1=c1, c2=c2, max_trials=max_trials, condition=line_search, has_aux=has_aux
    )
    wolfe_lib.check_line_search_args(c1, c2, max_trials, 2.0, line_search, has_aux)

    def init_fn(params):
        base.check_float_params(params)
        # The two-loop recursion carries its scalars in one dtype.
        base.check_one_dtype(params, "params", "lbfgs")
        dtype = base.params_dtype(params)
        memory = jax.tree.map(
            lambda p: jnp.zeros((memory_size, *jnp.shape(p)), jnp.result_type(p)),
            params,
        )
        return LBFGSState(
            count=jnp.zeros((), base.COUNTER_DTYPE),
            s_memory=memory,
            y_memory=memory,
            rho=jnp.zeros((memory_size,), dtype),
            head=jnp.zeros((), base.COUNTER_DTYPE),
            gamma=jnp.ones((), dtype),
            learning_rate=jnp.zeros((), dtype),
            cache=wolfe_lib.empty_cache(params),
            costs=base.zero_costs(),
            status=base.ok_status(),
        )

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise TypeError("`lbfgs` needs `params` in `update`.")
        rtol = default_curvature_rtol(state.rho.dtype, curvature_rtol)
        return _lbfgs_update(updates, state, params, extra_args, kw, rtol)

    # Marked so that so_opt.minimize compiles its loop for latency.
    return compile_options.LatencyBound(init_fn, update_fn)
