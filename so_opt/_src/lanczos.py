"""Lanczos tridiagonalization with full reorthogonalization, on flat vectors.

The curvature tools use it to find extremal Hessian eigenvalues from
Hessian-vector products alone. Vectors are flat: a pytree operator is wrapped
with ``jax.flatten_util.ravel_pytree`` by the caller (one copy per product, far
cheaper than the product itself), which keeps the Krylov basis a single
``(num_iterations + 1, k)`` array so that reorthogonalization is two matrix
products.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from so_opt._src import base

# A residual norm at most this many machine epsilons times the operator-norm
# estimate means the Krylov space is (numerically) invariant; the next basis
# vector is then a fresh direction rather than rounding noise divided by ~0.
_BREAKDOWN_EPS = 100.0


class LanczosResult(NamedTuple):
    r"""Output of :func:`lanczos`: ``A V^T = V^T T + beta_m v_m e_m^T``.

    Attributes:
      alphas: diagonal of the tridiagonal matrix :math:`T`, shape ``(m,)``.
      betas: ``betas[j]`` is the norm of the residual after step ``j``, shape
        ``(m,)``; ``betas[:-1]`` is the off-diagonal of :math:`T` and
        ``betas[-1]`` bounds the Ritz residuals. A zero marks a restart.
      basis: orthonormal Lanczos vectors as rows, shape ``(m, k)``.
      num_restarts: int32 count of invariant subspaces met (and restarted).
    """

    alphas: jax.Array
    betas: jax.Array
    basis: jax.Array
    num_restarts: jax.Array


def _project_out(basis: jax.Array, w: jax.Array) -> jax.Array:
    """Removes from ``w`` its components along the rows of ``basis``, twice.

    Classical Gram-Schmidt applied twice ("twice is enough") keeps the basis
    orthogonal to working precision at the price of two matrix products.
    """
    w = w - basis.T @ (basis @ w)
    return w - basis.T @ (basis @ w)


def _fresh_direction(basis: jax.Array) -> jax.Array:
    """Returns a unit vector orthogonal to the rows of ``basis``.

    The coordinate vector least represented in the span is used: with r < k
    orthonormal rows, the squared column norms of ``basis`` sum to r, so the
    smallest is at most r / k < 1 and its complement is bounded away from zero.
    No random key is needed, so restarts are deterministic.
    """
    k = basis.shape[1]
    coverage = jnp.sum(basis * basis, axis=0)
    e = jax.nn.one_hot(jnp.argmin(coverage), k, dtype=basis.dtype)
    r = _project_out(basis, e)
    return r / jnp.linalg.norm(r)


def lanczos(
    matvec: Callable[[jax.Array], jax.Array],
    v0: jax.ArrayLike,
    num_iterations: int,
) -> LanczosResult:
    r"""Runs Lanczos with full reorthogonalization from ``v0``.

    For a symmetric operator :math:`A` and :math:`v_0 = v0/\|v0\|`, each step

    .. math::
      w = A v_j - \beta_{j-1} v_{j-1}, \quad \alpha_j = v_j^\top w, \quad
      \beta_j = \|(I - V V^\top)\, w\|, \quad v_{j+1} = (I - V V^\top) w / \beta_j

    with :math:`V` every Lanczos vector so far (projected twice). Eigenvalues of
    the tridiagonal :math:`T_m` (Ritz values) approximate the extremal
    eigenvalues of :math:`A`; the residual of the Ritz pair
    :math:`(\theta_i, V^\top s_i)` is :math:`|\beta_{m-1} s_{m-1,i}|`. When
    :math:`\beta_j` vanishes (an invariant subspace), the next vector is a fresh
    orthogonal direction and :math:`\beta_j = 0`, so repeated eigenvalues are
    found too once ``num_iterations`` reaches their multiplicity.

    Costs ``num_iterations`` products with ``matvec``; jit-able, static shapes.

    Args:
      matvec: symmetric linear map on vectors of shape ``(k,)``.
      v0: nonzero starting vector of shape ``(k,)`` (its dtype is kept).
      num_iterations: number of steps ``m``, between 1 and ``k``.

    Returns:
      A :class:`LanczosResult`.

    Raises:
      ValueError: if ``v0`` is not a vector or ``num_iterations`` is out of range.
      TypeError: if ``v0`` is not floating point.

    Examples:
      >>> import jax.numpy as jnp, so_opt
      >>> a = jnp.diag(jnp.array([1.0, 2.0, 3.0]))
      >>> out = so_opt.lanczos(lambda v: a @ v, jnp.ones(3), 3)
      >>> print(jnp.round(jnp.linalg.eigvalsh(so_opt.tridiagonal(out)), 6))
      [1. 2. 3.]

    References:
      Lanczos, *An iteration method for the solution of the eigenvalue problem
      of linear differential and integral operators*, J. Res. NBS, 1950.
      Parlett, *The Symmetric Eigenvalue Problem*, SIAM, 1998 (chapter 13).
    """
    v0 = jnp.asarray(v0)
    if v0.ndim != 1:
        raise ValueError(f"`v0` must be a vector, got shape {v0.shape}.")
    if not jnp.issubdtype(v0.dtype, jnp.floating):
        raise TypeError(f"`v0` must be floating point, got dtype {v0.dtype}.")
    k = v0.shape[0]
    base.check_int_at_least(num_iterations, "num_iterations", 1)
    if num_iterations > k:
        raise ValueError(
            f"`num_iterations` must be at most the dimension {k}, got {num_iterations}."
        )
    dtype = v0.dtype
    eps = jnp.finfo(dtype).eps
    m = num_iterations

    # Row m of the basis holds the last residual direction; it keeps every
    # update a fixed-shape write and is dropped from the result.
    basis = jnp.zeros((m + 1, k), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    zeros = jnp.zeros((m,), dtype)

    def step(j, carry):
        basis, alphas, betas, anorm, restarts = carry
        v = basis[j]
        beta_prev = jnp.where(j > 0, betas[j - 1], 0.0).astype(dtype)
        w = matvec(v) - beta_prev * basis[j - 1]
        alpha = jnp.vdot(v, w)
        w = _project_out(basis, w - alpha * v)
        beta = jnp.linalg.norm(w)

        # Breakdown test relative to a running estimate of ||A||.
        anorm = jnp.maximum(anorm, jnp.abs(alpha) + beta + beta_prev)
        breakdown = beta <= _BREAKDOWN_EPS * eps * anorm
        safe_beta = jnp.where(breakdown, 1.0, beta)
        next_v = jax.lax.cond(
            breakdown, _fresh_direction, lambda b: w / safe_beta, basis
        )
        return (
            basis.at[j + 1].set(next_v),
            alphas.at[j].set(alpha),
            betas.at[j].set(jnp.where(breakdown, 0.0, beta)),
            anorm,
            # The last residual is dropped, so a breakdown there is no restart.
            restarts + (breakdown & (j < m - 1)).astype(base.COUNTER_DTYPE),
        )

    init = (basis, zeros, zeros, jnp.zeros((), dtype), jnp.zeros((), jnp.int32))
    basis, alphas, betas, _, restarts = jax.lax.fori_loop(0, m, step, init)
    return LanczosResult(alphas, betas, basis[:m], restarts)


def tridiagonal(result: LanczosResult) -> jax.Array:
    """Returns the dense ``m x m`` tridiagonal matrix of a :class:`LanczosResult`.

    Args:
      result: output of :func:`lanczos`.

    Returns:
      :math:`T_m` with ``alphas`` on the diagonal and ``betas[:-1]`` beside it.

    Examples:
      >>> import jax.numpy as jnp, so_opt
      >>> out = so_opt.lanczos(lambda v: 2.0 * v, jnp.ones(2), 1)
      >>> print(so_opt.tridiagonal(out).round(4))
      [[2.]]
    """
    off = result.betas[:-1]
    return jnp.diag(result.alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)


def ritz_values(result: LanczosResult) -> tuple[jax.Array, jax.Array]:
    r"""Returns the Ritz values (ascending) and their residual norms.

    The residual :math:`\|A y_i - \theta_i y_i\| = |\beta_{m-1} s_{m-1,i}|`
    bounds the distance from :math:`\theta_i` to the spectrum of :math:`A`.

    Args:
      result: output of :func:`lanczos`.

    Returns:
      ``(values, residuals)``, each of shape ``(m,)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from so_opt import linalg
      >>> a = jnp.diag(jnp.array([1.0, 2.0, 3.0, 4.0]))
      >>> values, residuals = linalg.ritz_values(
      ...     linalg.lanczos(lambda v: a @ v, jnp.ones(4), 4)
      ... )
      >>> print(jnp.round(values, 6), bool(jnp.all(residuals < 1e-6)))
      [1. 2. 3. 4.] True
    """
    values, vectors = jnp.linalg.eigh(tridiagonal(result))
    return values, jnp.abs(result.betas[-1] * vectors[-1])
