"""Truncated conjugate gradient (Steihaug) on pytrees."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu

from so_opt._src import base

NORMS = ("l2", "l1")


def _residual_measure(norm: str) -> Callable[[Any], jax.Array]:
    """The squared ``norm`` of a pytree: what the CG stopping test compares."""
    if norm == "l1":
        return lambda v: jnp.square(otu.tree_l1_norm(v))
    return lambda v: otu.tree_vdot(v, v)


class CGReason(enum.IntEnum):
    """Why :func:`truncated_cg` stopped."""

    CONVERGED = 0
    RELATIVE_PROGRESS = 1
    MAX_STEPS = 2
    NEGATIVE_CURVATURE = 3
    BOUNDARY = 4
    NON_FINITE = 5


class CGResult(NamedTuple):
    """Outcome of :func:`truncated_cg`.

    Attributes:
      x: the returned approximate solution (a pytree shaped like ``b``).
      num_steps: CG iterations run (one operator product each).
      num_matvecs: operator products in all (one more with a warm start).
      reason: a :class:`CGReason` code (int32).
      negative_curvature: True when a direction with :math:`p^\\top A p \\le 0`
        was met.
      curvature_direction: that direction (zeros when none was met).
      curvature_value: its Rayleigh quotient :math:`p^\\top A p / p^\\top p`
        (0 when none was met).
      model_value: :math:`\\phi(x) = \\tfrac12 x^\\top A x - b^\\top x` at ``x``.
      residual_norm: :math:`\\|b - A x_i\\|` at the last regular iterate.
      iterates: saved iterates stacked on a leading axis (for backtracking),
        or None when ``save_iterates`` is False.
      iterate_steps: int32 array, the CG step of each saved iterate; a slot
        is valid when its step is below ``num_steps``.
      iterate_model_values: :math:`\\phi` at each saved iterate.
    """

    x: base.PyTree
    num_steps: jax.Array
    num_matvecs: jax.Array
    reason: jax.Array
    negative_curvature: jax.Array
    curvature_direction: base.PyTree
    curvature_value: jax.Array
    model_value: jax.Array
    residual_norm: jax.Array
    iterates: base.PyTree
    iterate_steps: jax.Array | None
    iterate_model_values: jax.Array | None


class _Carry(NamedTuple):
    x: Any
    r: Any
    z: Any
    p: Any
    rz: jax.Array
    step: jax.Array
    done: jax.Array
    reason: jax.Array
    phis: jax.Array
    phi_final: jax.Array
    nc_dir: Any
    nc_value: jax.Array
    saved: Any


def save_steps(max_steps: int, growth: float = 1.3) -> np.ndarray:
    """CG steps whose iterates are kept for backtracking: ceil(growth^j)."""
    steps, j = [], 0
    while True:
        step = math.ceil(growth**j)
        if step > max_steps:
            return np.asarray(sorted(set(steps)), np.int32)
        steps.append(step)
        j += 1


def _boundary_tau(x, p, radius):
    """Largest tau >= 0 with ||x + tau p|| = radius (0 if x is outside)."""
    xp, pp, xx = otu.tree_vdot(x, p), otu.tree_vdot(p, p), otu.tree_vdot(x, x)
    disc = jnp.maximum(xp**2 + pp * (radius**2 - xx), 0.0)
    tau = (-xp + jnp.sqrt(disc)) / jnp.where(pp > 0, pp, 1.0)
    return jnp.maximum(tau, 0.0)


def _cg_step(carry, matvec, precond, b, radius, tol_sq, measure, progress_tol, slots):
    """One CG iteration; stops on curvature, boundary, tolerance or progress."""
    x, r, p, step = carry.x, carry.r, carry.p, carry.step
    ap = matvec(p)
    pap = otu.tree_vdot(p, ap)
    finite_curv = jnp.isfinite(pap)
    negative = finite_curv & (pap <= 0)

    # Regular CG update, used when the curvature along p is positive.
    alpha = carry.rz / jnp.where(pap > 0, pap, 1.0)
    x_next = otu.tree_add_scale(x, alpha, p)
    r_next = otu.tree_add_scale(r, -alpha, ap)
    z_next = precond(r_next)
    rz_next = otu.tree_vdot(r_next, z_next)
    phi_next = -0.5 * otu.tree_vdot(x_next, otu.tree_add(b, r_next))
    crossing = jnp.zeros((), bool)
    if radius is not None:
        crossing = otu.tree_vdot(x_next, x_next) >= radius**2

    # Steihaug: at negative curvature or a boundary crossing, walk along p to
    # the boundary; with no radius keep x_i (or x_0 + p at the first step, so
    # that a descent direction is still returned).
    if radius is not None:
        tau = _boundary_tau(x, p, radius)
    else:
        tau = jnp.where(step == 0, 1.0, 0.0).astype(pap.dtype)
    x_trunc = otu.tree_add_scale(x, tau, p)
    phi_trunc = carry.phis[step] - tau * otu.tree_vdot(r, p) + 0.5 * tau**2 * pap

    # Stopping tests on the new iterate (Martens' relative progress rule).
    i = step + 1
    window = jnp.maximum(10, i // 10)
    phi_old = carry.phis[jnp.maximum(i - window, 0)]
    stalled = (
        (progress_tol > 0)
        & (i > window)
        & (phi_next < 0)
        & ((phi_next - phi_old) < phi_next * window * progress_tol)
    )
    converged = measure(r_next) <= tol_sq
    max_hit = i >= carry.phis.shape[0] - 1
    finite = finite_curv & jnp.isfinite(rz_next) & jnp.isfinite(phi_next)

    truncate = negative | crossing
    regular = finite & ~truncate
    reason = jnp.select(
        [~finite_curv, negative, ~finite, crossing, converged, stalled, max_hit],
        [
            CGReason.NON_FINITE,
            CGReason.NEGATIVE_CURVATURE,
            CGReason.NON_FINITE,
            CGReason.BOUNDARY,
            CGReason.CONVERGED,
            CGReason.RELATIVE_PROGRESS,
            CGReason.MAX_STEPS,
        ],
        -1,
    ).astype(base.COUNTER_DTYPE)
    done = reason >= 0

    pick = lambda a, b_, c: jax.tree.map(
        lambda u, v, w: jnp.where(truncate, v, jnp.where(regular, u, w)), a, b_, c
    )
    new_x = pick(x_next, x_trunc, x)
    phi_final = jnp.where(
        truncate, phi_trunc, jnp.where(regular, phi_next, carry.phis[step])
    )
    beta = rz_next / jnp.where(carry.rz != 0, carry.rz, 1.0)
    p_next = otu.tree_add_scale(z_next, beta, p)
    nc_dir = jax.tree.map(lambda u, v: jnp.where(negative, u, v), p, carry.nc_dir)
    pp = otu.tree_vdot(p, p)
    nc_value = jnp.where(negative, pap / jnp.where(pp > 0, pp, 1.0), carry.nc_value)

    saved = carry.saved
    if saved is not None:
        slot = slots[jnp.minimum(i, slots.shape[0] - 1)]
        keep = regular & (slot >= 0)
        slot = jnp.maximum(slot, 0)
        saved = jax.tree.map(
            lambda buf, leaf: buf.at[slot].set(jnp.where(keep, leaf, buf[slot])),
            saved,
            x_next,
        )
    return _Carry(
        x=new_x,
        r=jax.tree.map(lambda u, v: jnp.where(regular, u, v), r_next, r),
        z=z_next,
        p=p_next,
        rz=rz_next,
        step=i,
        done=done,
        reason=jnp.where(done, reason, carry.reason),
        phis=carry.phis.at[i].set(jnp.where(regular, phi_next, phi_final)),
        phi_final=phi_final,
        nc_dir=nc_dir,
        nc_value=nc_value,
        saved=saved,
    )


def truncated_cg(
    matvec: Callable[[Any], Any],
    b: Any,
    x0: Any | None = None,
    *,
    max_steps: int = 250,
    tol: float = 1e-10,
    atol: jax.typing.ArrayLike = 0.0,
    norm: str = "l2",
    progress_tol: float = 5e-4,
    precond: Callable[[Any], Any] | None = None,
    radius: jax.typing.ArrayLike | None = None,
    save_iterates: bool = False,
    save_growth: float = 1.3,
) -> CGResult:
    r"""Solves :math:`A x = b` by truncated, preconditioned conjugate gradient.

    CG minimizes the quadratic model

    .. math::
      \phi(x) = \tfrac12 x^\top A x - b^\top x

    and stops at the first of: :math:`\|b - A x_i\| \le \max(`
    ``tol`` :math:`\|b\|,` ``atol`` :math:`)`;
    Martens' relative-progress rule, with :math:`w = \max(10, \lfloor i/10
    \rfloor)`,

    .. math::
      i > w,\quad \phi(x_i) < 0,\quad
      \frac{\phi(x_i) - \phi(x_{i-w})}{\phi(x_i)} < w\,\epsilon ;

    ``max_steps`` iterations; a direction with :math:`p^\top A p \le 0`
    (negative curvature, reported); or, when ``radius`` is given, an iterate
    leaving the ball :math:`\|x\| \le \Delta` (Steihaug). At negative curvature
    or the boundary the step is carried along :math:`p` to the boundary; with
    no radius, :math:`x_i` is kept (:math:`x_0 + p_0` at the first step).

    Args:
      matvec: the operator :math:`v \mapsto A v` on pytrees shaped like ``b``.
      b: right-hand side (a pytree of floating arrays).
      x0: warm start (zeros when None); costs one extra product unless it
        is zero. A warm start with :math:`\phi(x_0) \ge 0` is replaced by
        zeros.
      max_steps: cap on CG iterations, at least 1.
      tol: relative residual tolerance (>= 0).
      atol: absolute residual tolerance (>= 0): a floor under the relative
        one, so that a solve asked for far more accuracy than its caller
        can use (a Newton system near the outer tolerance) stops early.
      norm: ``"l2"`` (Euclidean) or ``"l1"``: the norm of :math:`r` and
        :math:`b` in the residual test (``residual_norm`` is Euclidean
        either way). scipy's Newton-CG tests in the L1 norm.
      progress_tol: :math:`\epsilon` of the relative-progress rule; 0 turns
        the rule off.
      precond: :math:`r \mapsto M^{-1} r` for a positive definite :math:`M`.
      radius: trust-region radius :math:`\Delta` (Euclidean), or None.
      save_iterates: keep the iterates of steps :math:`\lceil \gamma^j \rceil`
        (``save_growth`` :math:`=\gamma`) for backtracking.
      save_growth: growth factor :math:`\gamma > 1` of the saved steps.

    Returns:
      A :class:`CGResult`.

    Raises:
      ValueError: if ``max_steps < 1``, ``tol < 0``, ``atol < 0`` or
        ``progress_tol < 0``, or ``tol`` or ``atol`` is not finite (values
        traced under jit are not checked), or ``norm`` is unknown.
      TypeError: if ``tol`` or ``atol`` is not a real number, or the leaves
        of ``b`` are not floating point of one dtype.

    Examples:
      >>> import jax.numpy as jnp, so_opt
      >>> a = jnp.array([[4.0, 1.0], [1.0, 3.0]])
      >>> res = so_opt.truncated_cg(lambda v: a @ v, jnp.array([1.0, 2.0]), tol=1e-6)
      >>> print(jnp.round(res.x, 4), int(res.num_steps))
      [0.0909 0.6364] 2

    References:
      Steihaug, *The conjugate gradient method and trust regions in large
      scale optimization*, SIAM J. Numer. Anal., 1983. Martens, *Deep
      learning via Hessian-free optimization*, ICML, 2010.
    """
    base.check_int_at_least(max_steps, "max_steps", 1)
    base.check_positive_unless_traced(tol, "tol", allow_zero=True)
    base.check_positive_unless_traced(atol, "atol", allow_zero=True)
    base.check_positive(progress_tol, "progress_tol", allow_zero=True)
    if norm not in NORMS:
        raise ValueError(
            f"`norm` must be one of {', '.join(map(repr, NORMS))}, got {norm!r}."
        )
    measure = _residual_measure(norm)
    if save_growth <= 1:
        raise ValueError(f"`save_growth` must be > 1, got {save_growth}.")
    base.check_float_params(b, "b")
    base.check_one_dtype(b, "b", "truncated_cg")
    precond = precond if precond is not None else (lambda r: r)
    dtype = jnp.result_type(*jax.tree.leaves(b))

    if x0 is None:
        x0, r0, matvecs = otu.tree_zeros_like(b), b, 0
        phi0 = jnp.zeros((), dtype)
    else:
        # A zero warm start (the first step of an optimizer) costs no product.
        zero_start = otu.tree_vdot(x0, x0) == 0
        ax0 = jax.lax.cond(zero_start, lambda v: otu.tree_zeros_like(v), matvec, x0)
        r0 = otu.tree_sub(b, ax0)
        matvecs = jnp.where(zero_start, 0, 1).astype(base.COUNTER_DTYPE)
        phi0 = -0.5 * otu.tree_vdot(x0, otu.tree_add(b, r0))
        # A warm start worse than zero for the model (or not finite) is dropped.
        cold = ~(phi0 < 0)
        x0 = jax.tree.map(lambda u: jnp.where(cold, 0.0, u).astype(u.dtype), x0)
        r0 = jax.tree.map(lambda u, v: jnp.where(cold, u, v), b, r0)
        phi0 = jnp.where(cold, 0.0, phi0)
    z0 = precond(r0)
    rz0 = otu.tree_vdot(r0, z0)
    tol_sq = jnp.maximum((tol**2) * measure(b), jnp.square(atol))
    if radius is not None:
        radius = jnp.asarray(radius, dtype)

    steps = save_steps(max_steps, save_growth)
    slots = np.full(max_steps + 1, -1, np.int32)
    slots[steps] = np.arange(len(steps), dtype=np.int32)
    saved = None
    if save_iterates:
        saved = jax.tree.map(
            lambda leaf: jnp.zeros((len(steps), *leaf.shape), leaf.dtype), b
        )

    start_done = measure(r0) <= tol_sq
    carry = _Carry(
        x=x0,
        r=r0,
        z=z0,
        p=z0,
        rz=rz0,
        step=jnp.zeros((), base.COUNTER_DTYPE),
        done=start_done,
        reason=jnp.asarray(CGReason.CONVERGED, base.COUNTER_DTYPE),
        phis=jnp.zeros(max_steps + 1, dtype).at[0].set(phi0),
        phi_final=phi0.astype(dtype),
        nc_dir=otu.tree_zeros_like(b),
        nc_value=jnp.zeros((), dtype),
        saved=saved,
    )
    slots_arr = jnp.asarray(slots)
    body = lambda c: _cg_step(
        c, matvec, precond, b, radius, tol_sq, measure, progress_tol, slots_arr
    )
    out = jax.lax.while_loop(lambda c: ~c.done, body, carry)

    negative = out.reason == CGReason.NEGATIVE_CURVATURE
    return CGResult(
        x=out.x,
        num_steps=out.step,
        num_matvecs=out.step + matvecs,
        reason=out.reason,
        negative_curvature=negative,
        curvature_direction=out.nc_dir,
        curvature_value=out.nc_value,
        model_value=out.phi_final,
        residual_norm=jnp.sqrt(otu.tree_vdot(out.r, out.r)),
        iterates=out.saved,
        iterate_steps=jnp.asarray(steps) if save_iterates else None,
        iterate_model_values=out.phis[steps] if save_iterates else None,
    )
