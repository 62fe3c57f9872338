"""Hessian-free (truncated Newton-CG) optimization in the manner of Martens."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from so_opt._src import base, curvature
from so_opt._src.cg import NORMS, CGReason, truncated_cg
from so_opt._src.newton import (
    backtrack,
    flat_grad_norm,
    reduction_ratio,
    stalled,
    update_damping,
)

CURVATURES = ("gauss_newton", "hessian")
_CALLER = "hessian_free"


class HessianFreeState(NamedTuple):
    r"""State of :func:`hessian_free`.

    Attributes:
      damping: Levenberg-Marquardt damping :math:`\lambda` for the next step.
      radius: Steihaug trust radius (used with ``curvature="hessian"``).
      warm_start: last CG solution, decayed to start the next CG run.
      precond_diag: running mean of squared gradients for the diagonal
        preconditioner (None when it is off).
      learning_rate: step accepted by the last line search (0 if none).
      reduction_ratio: actual over predicted reduction at the last step.
      cg_steps: CG iterations of the last step.
      total_cg_steps: CG iterations over all steps.
      negative_curvature: whether the last CG run met negative curvature.
      flat_grad_norm: the gradient norm before the last step when that step
        left the value unchanged (infinity otherwise): the next gradient
        must fall below it (see :func:`so_opt._src.newton.stalled`).
      costs: cumulative work counters.
      status: ``NON_FINITE`` or ``LINE_SEARCH_FAILED`` when the last step was
        refused (also when no measurable progress was left).
    """

    damping: jax.Array
    radius: jax.Array
    warm_start: base.Params
    precond_diag: base.Params | None
    learning_rate: jax.Array
    reduction_ratio: jax.Array
    cg_steps: jax.Array
    total_cg_steps: jax.Array
    negative_curvature: jax.Array
    flat_grad_norm: jax.Array
    costs: base.Costs
    status: base.Status


class _Config(NamedTuple):
    curvature: str
    damping_factor: float
    damping_bounds: tuple[float, float]
    max_cg_steps: int
    cg_tol: float | None
    cg_atol: float
    cg_norm: str
    progress_tol: float
    warm_start_decay: float
    backtrack_iterates: bool
    line_search: bool
    ls_args: tuple[float, float, int]
    preconditioner: bool
    precond_exponent: float
    precond_decay: float
    max_radius: float
    trust_region: bool


def _operator(config: _Config, params, extra_args):
    """Curvature product v -> C v, linearized once at ``params``."""

    def fetch(name, fallback, caller):
        chosen = name if extra_args.get(name) is not None else fallback
        return base.extra_arg(extra_args, chosen, caller)

    if config.curvature == "hessian":
        fun = fetch("curvature_value_fn", "value_fn", _CALLER)
        return curvature.linearize_hvp(fun, params)[1]
    caller = f'{_CALLER}(curvature="gauss_newton")'
    model_fn = fetch("curvature_model_fn", "model_fn", caller)
    loss_fn = fetch("curvature_output_loss_fn", "output_loss_fn", caller)
    return curvature.linearize_ggn(model_fn, loss_fn, params)


def _preconditioner(config: _Config, state, grad, damping, extra_args):
    """Martens' diagonal preconditioner (diag + lambda)^xi, and its new mean."""
    if not config.preconditioner:
        return None, None
    beta = config.precond_decay
    first = otu.tree_sum(otu.tree_mul(state.precond_diag, state.precond_diag)) == 0
    squares = otu.tree_mul(grad, grad)
    mean = jax.tree.map(
        lambda m, s: jnp.where(first, s, beta * m + (1 - beta) * s),
        state.precond_diag,
        squares,
    )
    diag = extra_args.get("precond_diag")
    diag = mean if diag is None else diag
    xi = config.precond_exponent
    scale = jax.tree.map(lambda d: (d + damping) ** xi, diag)
    return (lambda r: jax.tree.map(jnp.divide, r, scale)), mean


def _backtrack_iterates(value_fn, params, result):
    """Martens' backtracking: walk back over saved CG iterates while f drops.

    Returns the chosen iterate, its value, its model value, the evaluations
    and the value at the final CG point.
    """
    f_final = value_fn(otu.tree_add(params, result.x))
    if result.iterates is None:
        one = jnp.ones((), base.COUNTER_DTYPE)
        return result.x, f_final, result.model_value, one, f_final
    valid = result.iterate_steps < result.num_steps
    take = lambda j: jax.tree.map(lambda s: s[j], result.iterates)

    def cond(carry):
        j, _, _, _, stop = carry
        return (~stop) & (j >= 0)

    def body(carry):
        j, best, f_best, evals, _ = carry
        f_j = value_fn(otu.tree_add(params, take(j)))
        better = jnp.isfinite(f_j) & ((f_j < f_best) | ~jnp.isfinite(f_best))
        best = jnp.where(better, j, best)
        f_best = jnp.where(better, f_j, f_best)
        return j - 1, best, f_best, evals + 1, ~better

    j0 = jnp.sum(valid).astype(base.COUNTER_DTYPE) - 1
    init = (j0, jnp.asarray(-1, j0.dtype), f_final, jnp.ones((), j0.dtype), False)
    _, best, f_best, evals, _ = jax.lax.while_loop(cond, body, init)
    chosen = take(jnp.maximum(best, 0))
    x = jax.tree.map(lambda a, b: jnp.where(best < 0, a, b), result.x, chosen)
    phi = jnp.where(
        best < 0,
        result.model_value,
        result.iterate_model_values[jnp.maximum(best, 0)],
    )
    return x, f_best, phi, evals, f_final


def _new_radius(radius, rho, step_norm, max_radius):
    """Trust-radius rule for Steihaug's truncation (grow only at the boundary)."""
    grow = (rho > 0.75) & (step_norm >= 0.8 * radius)
    radius = jnp.where(grow, 2.0 * radius, radius)
    radius = jnp.where(rho < 0.25, 0.25 * jnp.maximum(step_norm, 1e-3 * radius), radius)
    return jnp.clip(radius, jnp.finfo(radius.dtype).tiny, max_radius)


def _hf_update(config: _Config, state, params, extra_args):
    """One Hessian-free step: CG on the damped model, backtracking, search."""
    value = jnp.asarray(base.extra_arg(extra_args, "value", _CALLER))
    grad = base.extra_arg(extra_args, "grad", _CALLER)
    value_fn = base.extra_arg(extra_args, "value_fn", _CALLER)
    lam = state.damping
    dtype = lam.dtype

    # CG on (C + lambda I) x = -g, warm-started from the decayed last solution.
    product = _operator(config, params, extra_args)
    matvec = lambda v: otu.tree_add_scale(product(v), lam, v)
    precond, precond_diag = _preconditioner(config, state, grad, lam, extra_args)
    grad_norm = otu.tree_norm(grad)
    # The forcing term and the floor's cap in the norm of CG's residual test.
    test_norm = otu.tree_l1_norm(grad) if config.cg_norm == "l1" else grad_norm
    # A non-finite gradient ends in a NON_FINITE status below; the tolerances
    # are kept finite so that CG's own argument checks pass outside jit.
    test_norm = jnp.where(jnp.isfinite(test_norm), test_norm, 0.0)
    tol = config.cg_tol
    if tol is None:
        # Forcing term min(1/2, sqrt(|g|)): superlinear convergence near a minimum.
        tol = jnp.minimum(0.5, jnp.sqrt(test_norm))
    # The floor never asks for less than halving the residual: with |g| at
    # or below cg_atol, CG would otherwise stop at x = 0 and every later
    # update would be zero, a silent stall.
    atol = jnp.minimum(config.cg_atol, 0.5 * test_norm)
    warm = None
    if config.warm_start_decay > 0:
        warm = otu.tree_scale(config.warm_start_decay, state.warm_start)
    radius = None
    if config.curvature == "hessian" and config.trust_region:
        radius = state.radius
    if radius is not None and warm is not None:
        # Keep the warm start well inside the trust region.
        warm_norm = otu.tree_norm(warm)
        fit = jnp.minimum(1.0, 0.5 * radius / jnp.maximum(warm_norm, 1e-30))
        warm = otu.tree_scale(fit, warm)
    result = truncated_cg(
        matvec,
        otu.tree_scale(-1.0, grad),
        warm,
        max_steps=config.max_cg_steps,
        tol=tol,
        atol=atol,
        norm=config.cg_norm,
        progress_tol=config.progress_tol,
        precond=precond,
        radius=radius,
        save_iterates=config.backtrack_iterates,
    )

    # Backtrack over CG iterates; the ratio uses the undamped model there.
    step, new_value, phi, evals, f_final = _backtrack_iterates(value_fn, params, result)
    step_sq = otu.tree_vdot(step, step)
    predicted = -(phi - 0.5 * lam * step_sq)
    rho = reduction_ratio(value, new_value, predicted).astype(dtype)
    # The trust radius judges the model at the final CG point, wherever
    # backtracking went: a boundary point that fails shrinks the radius.
    final_sq = otu.tree_vdot(result.x, result.x)
    final_predicted = -(result.model_value - 0.5 * lam * final_sq)
    rho_final = reduction_ratio(value, f_final, final_predicted)
    finite = jnp.isfinite(grad_norm) & jnp.isfinite(step_sq)
    step = jax.tree.map(lambda s: jnp.where(finite, s, 0.0), step)

    # Final Armijo line search from the full step (or accept only a decrease).
    if config.line_search:
        slope = otu.tree_vdot(grad, step)
        rate, trials, accepted = backtrack(
            value_fn, params, step, value, slope, new_value, config.ls_args
        )
    else:
        accepted = jnp.isfinite(new_value) & (new_value <= value)
        rate, trials = jnp.where(accepted, 1.0, 0.0), jnp.zeros((), jnp.int32)
    stuck = stalled(state.flat_grad_norm, grad_norm)
    accepted = accepted & finite & ~stuck
    rate = jnp.where(accepted, rate, 0.0).astype(dtype)

    code = jnp.where(
        (config.line_search & ~accepted) | stuck,
        base.StatusCode.LINE_SEARCH_FAILED,
        base.StatusCode.RUNNING,
    )
    code = jnp.where(finite, code, base.StatusCode.NON_FINITE)
    # Warm start from the CG solution; after a truncation (negative curvature
    # or the boundary) that point is far along one direction, so restart from
    # the step actually chosen instead.
    keep = finite & (result.reason != CGReason.NON_FINITE)
    truncated = result.reason >= CGReason.NEGATIVE_CURVATURE
    warm = jax.tree.map(
        lambda x, s: jnp.where(keep, jnp.where(truncated, s, x), 0.0),
        result.x,
        step,
    )
    # After negative curvature, damp at least twice past the curvature met,
    # so that the next model is convex along that direction.
    new_lam = update_damping(lam, rho, config.damping_factor, *config.damping_bounds)
    past = 2.0 * (lam - result.curvature_value)
    new_lam = jnp.where(result.negative_curvature, jnp.maximum(new_lam, past), new_lam)
    new_state = HessianFreeState(
        damping=jnp.minimum(new_lam, config.damping_bounds[1]).astype(dtype),
        radius=_new_radius(
            state.radius,
            rho_final,
            jnp.sqrt(final_sq),
            config.max_radius,
        ).astype(dtype),
        warm_start=warm,
        precond_diag=precond_diag,
        learning_rate=rate,
        reduction_ratio=rho,
        cg_steps=result.num_steps,
        total_cg_steps=state.total_cg_steps + result.num_steps,
        negative_curvature=result.negative_curvature,
        flat_grad_norm=flat_grad_norm(
            state.flat_grad_norm, stuck, accepted, rate, new_value, value, grad_norm
        ).astype(dtype),
        costs=base.add_costs(
            state.costs,
            value_evals=evals + trials,
            grad_evals=1,
            hvp_evals=result.num_matvecs,
        ),
        status=base.make_status(code),
    )
    return otu.tree_scale(rate, step), new_state


def hessian_free(
    curvature: str = "gauss_newton",
    *,
    damping: float = 1.0,
    damping_factor: float = 1.5,
    min_damping: float = 1e-10,
    max_damping: float = 1e10,
    max_cg_steps: int = 250,
    cg_tol: float | None = None,
    cg_atol: float = 0.0,
    cg_norm: str = "l2",
    progress_tol: float = 5e-4,
    warm_start_decay: float = 0.95,
    backtrack_iterates: bool = True,
    line_search: bool = True,
    c1: float = 1e-2,
    shrink: float = 0.8,
    max_backtracks: int = 40,
    preconditioner: bool = False,
    precond_exponent: float = 0.75,
    precond_decay: float = 0.95,
    initial_radius: float | None = None,
    max_radius: float = 1e8,
) -> optax.GradientTransformationExtraArgs:
    r"""Hessian-free optimization: truncated Newton-CG with damping.

    Each step linearizes the curvature :math:`C` (the Gauss-Newton matrix
    :math:`J^\top H_L J` or the Hessian) once and runs preconditioned CG,
    warm-started from the decayed last solution, on the damped model

    .. math::
      q(s) = g^\top s + \tfrac12 s^\top (C + \lambda I) s ,

    stopping on Martens' relative-progress rule, on the residual tolerance
    :math:`\|r\| \le \max(\eta \|g\|, \epsilon_a)` (:math:`\eta` is
    ``cg_tol``, or the forcing term :math:`\min(\tfrac12, \sqrt{\|g\|})`
    when None; :math:`\epsilon_a` is ``cg_atol``; norms as ``cg_norm``), on
    ``max_cg_steps``, or, for the Hessian, on negative curvature or the trust
    radius (Steihaug). It then backtracks over the CG iterates saved at steps
    :math:`\lceil 1.3^j \rceil` while the value drops, sets :math:`\lambda`
    from the ratio :math:`\rho` of actual to predicted (undamped) reduction
    (divided by ``damping_factor`` when :math:`\rho > 3/4`, multiplied when
    :math:`\rho < 1/4`), and takes an Armijo line search from the full step.

    ``update`` needs ``params`` and the extra arguments ``value``, ``grad``
    and ``value_fn``; for ``"gauss_newton"`` also ``model_fn`` and
    ``output_loss_fn`` (closures with ``value_fn = output_loss_fn ∘
    model_fn``). For mini-batches the curvature may use another batch:
    pass ``curvature_value_fn`` (Hessian) or ``curvature_model_fn`` and
    ``curvature_output_loss_fn`` (Gauss-Newton). ``precond_diag`` (a pytree
    like params, e.g. summed squared per-example gradients) replaces the
    running mean of squared gradients in the preconditioner.

    Costs per step: one gradient evaluation (the linearization), one product
    per CG iteration (plus one with a warm start), and the value
    evaluations of backtracking and line search.

    Args:
      curvature: ``"gauss_newton"`` or ``"hessian"``.
      damping: initial damping :math:`\lambda_0 > 0`.
      damping_factor: factor > 1 of the damping updates (Martens: 3/2).
      min_damping: lower bound on :math:`\lambda` (>= 0).
      max_damping: upper bound on :math:`\lambda`.
      max_cg_steps: cap on CG iterations per step, at least 1.
      cg_tol: relative CG residual tolerance, or None for the forcing term.
      cg_atol: absolute CG residual floor >= 0. After a full step the new
        gradient is about the CG residual, so when the run stops at a
        gradient norm ``gtol`` (:func:`so_opt.minimize`), ``cg_atol`` of
        about ``gtol / 2`` spares the last solve the accuracy that the
        forcing term would ask and the stopping test cannot use. The floor
        is capped at :math:`\|g\| / 2`, so a step is still taken once the
        gradient is below it. 0 (the default) keeps the forcing term alone.
      cg_norm: the norm of the residual and the gradient in the CG stopping
        test and the forcing term: ``"l2"`` (Euclidean, as in Nocedal and
        Wright's Newton-CG) or ``"l1"``, the measure scipy's Newton-CG
        uses, for like-for-like comparisons with it (which also need its
        classical settings: small ``damping``, ``warm_start_decay=0`` and
        ``backtrack_iterates=False``, as in ``scripts/bench_newton.py``).
        For a dense vector of k entries
        :math:`\|v\|_1 \approx \sqrt{k}\, \|v\|_2`, so the L1 forcing
        term is looser by about :math:`k^{1/4}` and grows looser with the
        size of the model.
      progress_tol: :math:`\epsilon` of the relative-progress rule (0: off).
      warm_start_decay: factor in [0, 1] applied to the last CG solution.
      backtrack_iterates: backtrack over saved CG iterates.
      line_search: Armijo line search; when False a step is taken only if
        it lowers the value.
      c1: sufficient-decrease constant in (0, 1).
      shrink: backtracking factor in (0, 1).
      max_backtracks: shrinks allowed after the full step.
      preconditioner: use the diagonal preconditioner
        :math:`(\mathrm{diag} + \lambda)^{\xi}`.
      precond_exponent: :math:`\xi` in (0, 1].
      precond_decay: decay in [0, 1) of the running mean of squared grads.
      initial_radius: initial trust radius for ``"hessian"``.
      max_radius: largest trust radius.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Raises:
      ValueError: for an unknown ``curvature``, a negative or zero
        ``damping``, ``max_cg_steps < 1``, ``min_damping > max_damping`` or
        other out-of-range constants.
      TypeError: in ``update``, when a required extra argument is missing.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, so_opt
      >>> f = lambda x: jnp.sum((x - 1.0) ** 2) + 0.1 * jnp.sum(x**4)
      >>> opt = so_opt.hessian_free("hessian", damping=1e-3)
      >>> x = jnp.zeros(3); state = opt.init(x)
      >>> for _ in range(10):
      ...     v, g = jax.value_and_grad(f)(x)
      ...     u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
      ...     x = optax.apply_updates(x, u)
      >>> print(jnp.round(x, 4))
      [0.8688 0.8688 0.8688]

    References:
      Martens, *Deep learning via Hessian-free optimization*, ICML, 2010.
      Steihaug, *The conjugate gradient method and trust regions in large
      scale optimization*, SIAM J. Numer. Anal., 1983.
    """
    if curvature not in CURVATURES:
        raise ValueError(
            f"`curvature` must be one of {', '.join(map(repr, CURVATURES))}, "
            f"got {curvature!r}."
        )
    base.check_positive(damping, "damping")
    if damping_factor <= 1:
        raise ValueError(f"`damping_factor` must be > 1, got {damping_factor}.")
    base.check_positive(min_damping, "min_damping", allow_zero=True)
    base.check_positive(max_damping, "max_damping")
    base.check_not_below(max_damping, "max_damping", min_damping, "min_damping")
    base.check_int_at_least(max_cg_steps, "max_cg_steps", 1)
    if cg_tol is not None:
        base.check_positive(cg_tol, "cg_tol", allow_zero=True)
    base.check_positive(cg_atol, "cg_atol", allow_zero=True)
    if cg_norm not in NORMS:
        raise ValueError(
            f"`cg_norm` must be one of {', '.join(map(repr, NORMS))}, got {cg_norm!r}."
        )
    base.check_positive(progress_tol, "progress_tol", allow_zero=True)
    if not 0 <= warm_start_decay <= 1:
        raise ValueError(
            f"`warm_start_decay` must be in [0, 1], got {warm_start_decay}."
        )
    base.check_in_open_interval(c1, "c1", 0.0, 1.0)
    base.check_in_open_interval(shrink, "shrink", 0.0, 1.0)
    base.check_int_at_least(max_backtracks, "max_backtracks", 0)
    if not 0 < precond_exponent <= 1:
        raise ValueError(
            f"`precond_exponent` must be in (0, 1], got {precond_exponent}."
        )
    if not 0 <= precond_decay < 1:
        raise ValueError(f"`precond_decay` must be in [0, 1), got {precond_decay}.")
    if initial_radius is not None:
        base.check_positive(initial_radius, "initial_radius")
    base.check_positive(max_radius, "max_radius")
    config = _Config(
        curvature=curvature,
        damping_factor=damping_factor,
        damping_bounds=(min_damping, max_damping),
        max_cg_steps=max_cg_steps,
        cg_tol=cg_tol,
        cg_atol=cg_atol,
        cg_norm=cg_norm,
        progress_tol=progress_tol,
        warm_start_decay=warm_start_decay,
        backtrack_iterates=backtrack_iterates,
        line_search=line_search,
        ls_args=(c1, shrink, max_backtracks),
        preconditioner=preconditioner,
        precond_exponent=precond_exponent,
        precond_decay=precond_decay,
        max_radius=max_radius,
        trust_region=initial_radius is not None,
    )

    def init_fn(params):
        base.check_float_params(params)
        # CG sums products of all leaves into scalars of one dtype.
        base.check_one_dtype(params, "params", "hessian_free")
        dtype = jnp.result_type(*jax.tree.leaves(params))
        zero = jnp.zeros((), dtype)
        zeros = otu.tree_zeros_like(params)
        return HessianFreeState(
            damping=jnp.asarray(damping, dtype),
            radius=jnp.asarray(initial_radius or jnp.inf, dtype),
            warm_start=zeros,
            precond_diag=zeros if preconditioner else None,
            learning_rate=zero,
            reduction_ratio=zero,
            cg_steps=jnp.zeros((), base.COUNTER_DTYPE),
            total_cg_steps=jnp.zeros((), base.COUNTER_DTYPE),
            negative_curvature=jnp.zeros((), bool),
            flat_grad_norm=jnp.asarray(jnp.inf, dtype),
            costs=base.zero_costs(),
            status=base.ok_status(),
        )

    def update_fn(updates, state, params=None, **extra_args: Any):
        del updates
        if params is None:
            raise TypeError("`hessian_free` needs `params` in `update`.")
        return _hf_update(config, state, params, extra_args)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
