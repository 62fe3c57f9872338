"""Exact Newton's method on the dense Hessian, damped or saddle-free."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu
from jax.flatten_util import ravel_pytree

from so_opt._src import base, compile_options, curvature

# Dense workspace, in k x k matrices, besides the Hessian itself: the Cholesky
# factor, or the eigenvectors plus eigh's own scratch.
_WORKSPACE = {False: 2, True: 3}
_MAX_FACTORIZATIONS = 24


class NewtonState(NamedTuple):
    r"""State of :func:`newton`.

    Attributes:
      damping: damping coefficient :math:`\mu` for the next step.
      shift: shift :math:`\lambda` added to the curvature at the last step.
      learning_rate: step accepted by the last line search (0 if none).
      reduction_ratio: actual over predicted reduction at the last step.
      num_factorizations: Cholesky attempts at the last step.
      flat_grad_norm: the gradient norm before the last step when that step
        left the value unchanged (infinity otherwise): the next gradient
        must fall below it (see :func:`stalled`).
      costs: cumulative work counters.
      status: ``CURVATURE_FAILED``, ``NON_FINITE`` or ``LINE_SEARCH_FAILED``
        when the last step was refused (also when no measurable progress
        was left).
    """

    damping: jax.Array
    shift: jax.Array
    learning_rate: jax.Array
    reduction_ratio: jax.Array
    num_factorizations: jax.Array
    flat_grad_norm: jax.Array
    costs: base.Costs
    status: base.Status


def check_dense_fits(num_params: int, itemsize: int, budget: int, saddle_free: bool):
    """Raises ``ValueError`` before allocation when the k x k work is too big."""
    needed = _WORKSPACE[saddle_free] * num_params**2 * itemsize
    if needed > budget:
        raise ValueError(
            f"`newton` needs about {needed} bytes for dense {num_params} x "
            f"{num_params} matrices, over `memory_budget_bytes`={budget}; "
            "raise the budget or use `hessian_free`."
        )


def dense_hessian(value_fn, params, chunk_size: int | None, budget: int):
    """Dense, symmetrized Hessian of ``value_fn`` on the ravelled params."""
    hess = curvature.hessian_matrix(
        value_fn, params, chunk_size=chunk_size, memory_budget_bytes=budget
    )
    # The rows are Hessian-vector products; average away round-off asymmetry.
    return 0.5 * (hess + hess.T)


def _damped_cholesky(hess, shift, floor):
    """Cholesky of ``hess + shift I``, raising the shift until it succeeds."""
    eye = jnp.eye(hess.shape[0], dtype=hess.dtype)

    def cond(carry):
        _, _, tries, ok = carry
        return (~ok) & (tries < _MAX_FACTORIZATIONS)

    def body(carry):
        lam, _, tries, _ = carry
        lam = jnp.where(tries == 0, lam, jnp.maximum(10.0 * lam, floor))
        chol = jnp.linalg.cholesky(hess + lam * eye)
        return lam, chol, tries + 1, jnp.all(jnp.isfinite(chol))

    init = (shift, jnp.zeros_like(hess), jnp.zeros((), base.COUNTER_DTYPE), False)
    return jax.lax.while_loop(cond, body, init)


def _newton_direction(hess, g, shift, saddle_free):
    """Solves the damped (or absolute-value) Newton system for the direction."""
    if saddle_free:
        # Saddle-free Newton: replace each eigenvalue by its absolute value.
        eigvals, eigvecs = jnp.linalg.eigh(hess)
        denom = jnp.abs(eigvals) + shift
        coef = (eigvecs.T @ g) / jnp.where(denom > 0, denom, 1.0)
        coef = jnp.where(denom > 0, coef, 0.0)
        ok = jnp.all(jnp.isfinite(eigvals))
        return -(eigvecs @ coef), shift, jnp.ones((), base.COUNTER_DTYPE), ok
    scale = jnp.max(jnp.abs(jnp.diag(hess)))
    floor = 1e-3 * jnp.maximum(scale, jnp.finfo(hess.dtype).tiny)
    lam, chol, tries, ok = _damped_cholesky(hess, shift, floor)
    direction = -jax.scipy.linalg.cho_solve((chol, True), g)
    return direction, lam, tries, ok


def _armijo_loop(value_fn, params, direction, value, slope, c1, shrink, trials):
    """Tries rates shrink, shrink^2, ... until sufficient decrease holds.

    A shortened step must lower the value strictly: at the precision floor
    the Armijo bound rounds to the value itself, and a tiny step whose
    value merely rounds to it would pass as progress, at every later step
    again, instead of ending the run with a failed search. (The full step
    keeps the plain test: near a minimum a Newton step can cut the
    gradient while the value cannot show it.)
    """

    def cond(carry):
        _, used, accepted = carry
        return (~accepted) & (used < trials)

    def body(carry):
        rate, used, _ = carry
        rate = rate * shrink
        trial = value_fn(otu.tree_add_scale(params, rate, direction))
        ok = (
            jnp.isfinite(trial) & (trial <= value + c1 * rate * slope) & (trial < value)
        )
        return rate, used + 1, ok

    one = jnp.ones((), jnp.result_type(value))
    init = (one, jnp.zeros((), base.COUNTER_DTYPE), jnp.zeros((), bool))
    rate, used, accepted = jax.lax.while_loop(cond, body, init)
    return jnp.where(accepted, rate, 0.0), used, accepted


def backtrack(value_fn, params, direction, value, slope, full_value, ls_args):
    """Armijo backtracking from 1, reusing the value known at the full step.

    Returns the accepted learning rate (0 if none), extra trials and a flag.
    """
    c1, shrink, max_backtracks = ls_args
    # A direction that is not strictly downhill (negative curvature at a
    # saddle) must still lower the value.
    slope = jnp.minimum(slope, 0.0)
    full_ok = jnp.isfinite(full_value) & (full_value <= value + c1 * slope)
    one = jnp.ones((), jnp.result_type(value))
    no_trials = jnp.zeros((), base.COUNTER_DTYPE)
    return jax.lax.cond(
        full_ok,
        lambda: (one, no_trials, full_ok),
        lambda: _armijo_loop(
            value_fn, params, direction, value, slope, c1, shrink, max_backtracks
        ),
    )


def flat_grad_norm(bound, stuck, accepted, rate, new_value, value, grad_norm):
    """The gradient norm the next step must beat (see :func:`stalled`).

    The current ``bound`` while stalled, so that the same point keeps
    failing; ``grad_norm`` if the step taken left the value unchanged (only
    a full step can: a shortened one must lower the value strictly);
    infinity otherwise.
    """
    flat = accepted & (rate == 1) & (new_value >= value)
    return jnp.where(stuck, bound, jnp.where(flat, grad_norm, jnp.inf))


def stalled(state_flat_grad_norm, grad_norm):
    """Whether the last step changed neither the value nor lowered the gradient.

    At the precision floor a full Newton step can round to the same value
    at every step; such a step still counts while it cuts the gradient (near
    a minimum the value cannot show the gain), and once it no longer does
    there is no measurable progress left: the step is refused with
    ``LINE_SEARCH_FAILED`` instead of repeating forever.
    """
    return grad_norm >= state_flat_grad_norm


def update_damping(damping, rho, factor, low, high):
    """Levenberg-Marquardt rule: shrink on a good model fit, grow on a bad one."""
    damping = jnp.where(rho > 0.75, damping / factor, damping)
    damping = jnp.where(rho < 0.25, damping * factor, damping)
    return jnp.clip(damping, low, high)


def reduction_ratio(value, new_value, predicted):
    """Actual over predicted reduction; -1 when the trial is not finite."""
    actual = value - new_value
    rho = actual / jnp.where(predicted > 0, predicted, 1.0)
    rho = jnp.where(predicted > 0, rho, jnp.where(actual > 0, 1.0, -1.0))
    return jnp.where(jnp.isfinite(new_value), rho, -1.0)


def _status_code(finite, solved, accepted, line_search, stuck):
    """Picks the status of a Newton-type step, worst cause first."""
    code = jnp.where(
        (line_search & ~accepted) | stuck,
        base.StatusCode.LINE_SEARCH_FAILED,
        base.StatusCode.RUNNING,
    )
    code = jnp.where(solved, code, base.StatusCode.CURVATURE_FAILED)
    return base.make_status(jnp.where(finite, code, base.StatusCode.NON_FINITE))


def newton(
    damping: float = 1e-2,
    *,
    saddle_free: bool = False,
    line_search: bool = True,
    damping_factor: float = 4.0,
    min_damping: float = 1e-12,
    max_damping: float = 1e12,
    c1: float = 1e-4,
    shrink: float = 0.5,
    max_backtracks: int = 30,
    memory_budget_bytes: int = 2**30,
    chunk_size: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Exact Newton's method on the dense Hessian, with damping and line search.

    With :math:`g = \nabla f(x)`, :math:`H = \nabla^2 f(x)` (dense, on the
    ravelled params) and the shift :math:`\lambda = \mu \|g\|`, the direction
    is

    .. math::
      d = -(H + \lambda I)^{-1} g \quad\text{or, saddle-free,}\quad
      d = -(|H| + \lambda I)^{-1} g,\; |H| = V |\Lambda| V^\top ,

    solved by Cholesky (the shift is raised tenfold while the factorization
    fails) or by ``eigh``. Scaling the shift by :math:`\|g\|` keeps the
    quadratic rate near a minimum. The damping :math:`\mu` follows the ratio
    :math:`\rho` of actual to predicted reduction of :math:`q(d) = g^\top d +
    \tfrac12 d^\top H d` (divided by ``damping_factor`` when
    :math:`\rho > 3/4`, multiplied when :math:`\rho < 1/4`), and an Armijo
    line search from step 1 picks the learning rate. A step that cannot be
    made is a zero update with a status.

    Each step counts k Hessian-vector products (the dense Hessian) and the
    value evaluations of the line search.

    Args:
      damping: initial damping coefficient :math:`\mu_0 > 0`.
      saddle_free: use :math:`|H|` from an eigendecomposition, so negative
        curvature is escaped rather than followed.
      line_search: backtrack (Armijo) from the full step; when False a step
        is taken only if it lowers the value.
      damping_factor: factor > 1 of the damping updates.
      min_damping: lower bound on :math:`\mu` (>= 0).
      max_damping: upper bound on :math:`\mu`.
      c1: sufficient-decrease constant in (0, 1).
      shrink: backtracking factor in (0, 1).
      max_backtracks: shrinks allowed after the full step.
      memory_budget_bytes: bytes allowed for the dense k x k work.
      chunk_size: Hessian columns computed at once (all when None).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs
      ``params`` and the extra arguments ``value``, ``grad`` and ``value_fn``.
      It is marked latency-bound, so :func:`so_opt.minimize` compiles its
      loop with XLA:CPU's memory-optimized scheduler (``compiler_options``).

    Raises:
      ValueError: for a negative or zero ``damping``, out-of-range constants,
        ``min_damping > max_damping``, or (in ``init``) when the dense
        matrices exceed ``memory_budget_bytes``.
      TypeError: in ``init``, for params that are not float32 or float64
        (LAPACK has no half-precision factorizations).

    Examples:
      >>> import jax, jax.numpy as jnp, optax, so_opt
      >>> f = lambda x: jnp.sum((x - 1.0) ** 2) + 0.1 * jnp.sum(x**4)
      >>> opt = so_opt.newton()
      >>> x = jnp.zeros(3); state = opt.init(x)
      >>> for _ in range(8):
      ...     v, g = jax.value_and_grad(f)(x)
      ...     u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
      ...     x = optax.apply_updates(x, u)
      >>> print(jnp.round(x, 4))
      [0.8688 0.8688 0.8688]

    References:
      Levenberg, *A method for the solution of certain non-linear problems in
      least squares*, 1944; Li, Fukushima, Qi and Yamashita, *Regularized
      Newton methods for convex minimization problems with singular
      solutions*, 2004; Dauphin et al., *Identifying and attacking the saddle
      point problem in high-dimensional non-convex optimization*, 2014.
    """
    base.check_positive(damping, "damping")
    base.check_positive(min_damping, "min_damping", allow_zero=True)
    base.check_positive(max_damping, "max_damping")
    base.check_not_below(max_damping, "max_damping", min_damping, "min_damping")
    if damping_factor <= 1:
        raise ValueError(f"`damping_factor` must be > 1, got {damping_factor}.")
    base.check_in_open_interval(c1, "c1", 0.0, 1.0)
    base.check_in_open_interval(shrink, "shrink", 0.0, 1.0)
    base.check_int_at_least(max_backtracks, "max_backtracks", 0)
    base.check_int_at_least(memory_budget_bytes, "memory_budget_bytes", 1)
    if chunk_size is not None:
        base.check_int_at_least(chunk_size, "chunk_size", 1)
    ls_args = (c1, shrink, max_backtracks)

    def init_fn(params):
        base.check_float_params(params)
        flat, _ = ravel_pytree(params)
        if flat.dtype not in (jnp.float32, jnp.float64):
            # The dense factorizations run on LAPACK, which has no kernels for
            # half-precision floats.
            raise TypeError(
                "`params` of `newton` must be float32 or float64 (the dense "
                f"Hessian is factorized by LAPACK); got dtype {flat.dtype}. "
                "Cast the params, or use `hessian_free` or `lbfgs`."
            )
        check_dense_fits(
            flat.shape[0], flat.dtype.itemsize, memory_budget_bytes, saddle_free
        )
        zero = jnp.zeros((), flat.dtype)
        return NewtonState(
            damping=jnp.asarray(damping, flat.dtype),
            shift=zero,
            learning_rate=zero,
            reduction_ratio=zero,
            num_factorizations=jnp.zeros((), base.COUNTER_DTYPE),
            flat_grad_norm=jnp.asarray(jnp.inf, flat.dtype),
            costs=base.zero_costs(),
            status=base.ok_status(),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del updates
        if params is None:
            raise TypeError("`newton` needs `params` in `update`.")
        value = jnp.asarray(base.extra_arg(extra_args, "value", "newton"))
        grad = base.extra_arg(extra_args, "grad", "newton")
        value_fn = base.extra_arg(extra_args, "value_fn", "newton")
        g, unravel = ravel_pytree(grad)
        dtype = state.damping.dtype
        g = g.astype(dtype)

        # Dense curvature and the damped (or saddle-free) Newton direction.
        hess = dense_hessian(value_fn, params, chunk_size, memory_budget_bytes)
        hess = hess.astype(dtype)
        finite = jnp.all(jnp.isfinite(hess)) & jnp.all(jnp.isfinite(g))
        grad_norm = jnp.linalg.norm(g)
        shift = state.damping * grad_norm
        d, shift, tries, solved = _newton_direction(hess, g, shift, saddle_free)
        solved = solved & finite & jnp.all(jnp.isfinite(d))
        d = jnp.where(solved, d, 0.0)
        predicted = -(g @ d + 0.5 * d @ (hess @ d))

        # Trial at the full step: reduction ratio, then the line search.
        direction = unravel(d)
        full_value = value_fn(otu.tree_add(params, direction))
        rho = reduction_ratio(value, full_value, predicted)
        if line_search:
            slope = g @ d
            rate, trials, accepted = backtrack(
                value_fn, params, direction, value, slope, full_value, ls_args
            )
        else:
            accepted = jnp.isfinite(full_value) & (full_value <= value)
            rate = jnp.where(accepted, 1.0, 0.0).astype(dtype)
            trials = jnp.zeros((), base.COUNTER_DTYPE)
        stuck = stalled(state.flat_grad_norm, grad_norm)
        accepted = accepted & solved & ~stuck
        rate = jnp.where(accepted, rate, 0.0).astype(dtype)

        rho = jnp.where(solved, rho, -1.0).astype(dtype)
        new_damping = update_damping(
            state.damping, rho, damping_factor, min_damping, max_damping
        )
        new_state = NewtonState(
            damping=new_damping.astype(dtype),
            shift=shift.astype(dtype),
            learning_rate=rate,
            reduction_ratio=rho,
            num_factorizations=tries.astype(base.COUNTER_DTYPE),
            flat_grad_norm=flat_grad_norm(
                state.flat_grad_norm,
                stuck,
                accepted,
                rate,
                full_value,
                value,
                grad_norm,
            ).astype(dtype),
            costs=base.add_costs(
                state.costs, value_evals=1 + trials, hvp_evals=g.shape[0]
            ),
            status=_status_code(finite, solved, accepted, line_search, stuck),
        )
        return otu.tree_scale(rate, direction), new_state

    # Marked so that so_opt.minimize compiles its loop for latency.
    return compile_options.LatencyBound(init_fn, update_fn)
