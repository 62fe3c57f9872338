"""Curvature-vector products (placeholder to be completed by the curvature issue)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax


def hvp(fun: Callable[[Any], jax.Array], params: Any, vector: Any) -> Any:
    """Hessian-vector product of ``fun`` at ``params`` (forward over reverse)."""
    return jax.jvp(jax.grad(fun), (params,), (vector,))[1]


def ggn_vp(
    model_fn: Callable[[Any], Any],
    output_loss_fn: Callable[[Any], jax.Array],
    params: Any,
    vector: Any,
) -> Any:
    """Generalized Gauss-Newton product ``J^T H_L J v``."""
    outputs, jv = jax.jvp(model_fn, (params,), (vector,))
    hjv = jax.jvp(jax.grad(output_loss_fn), (outputs,), (jv,))[1]
    _, vjp_fn = jax.vjp(model_fn, params)
    return vjp_fn(hjv)[0]


def linearize_hvp(fun: Callable[[Any], jax.Array], params: Any):
    """Returns ``(grad, hvp_fn)``: the gradient at ``params`` and ``v -> H v``.

    The gradient map is linearized once, so each product costs one tangent pass.
    """
    grad, hvp_fn = jax.linearize(jax.grad(fun), params)
    return grad, hvp_fn


def linearize_ggn(
    model_fn: Callable[[Any], Any],
    output_loss_fn: Callable[[Any], jax.Array],
    params: Any,
):
    """Returns ``v -> J^T H_L J v`` with the model linearized once at ``params``."""
    outputs, jvp_fn = jax.linearize(model_fn, params)
    _, vjp_fn = jax.vjp(model_fn, params)
    _, hess_out = jax.linearize(jax.grad(output_loss_fn), outputs)
    return lambda vector: vjp_fn(hess_out(jvp_fn(vector)))[0]
