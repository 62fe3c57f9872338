"""The Rosenbrock function in n dimensions, chained and block-separable forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from so_opt.problems.base import Problem, reference_dtype

FORMS = ("chained", "extended")


def rosenbrock_value(x: jax.Array, form: str = "chained") -> jax.Array:
    r"""Rosenbrock's function of a flat array ``x``.

    Chained (as ``scipy.optimize.rosen``):

    .. math::
      f(x) = \sum_{i=1}^{n-1} 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2 ;

    extended (Moré, Garbow and Hillstrom 1981, independent pairs, n even):

    .. math::
      f(x) = \sum_{j=1}^{n/2} 100 (x_{2j} - x_{2j-1}^2)^2 + (1 - x_{2j-1})^2 .

    Both have their minimum 0 at the all-ones vector.
    """
    if form == "chained":
        head, tail = x[:-1], x[1:]
    else:
        head, tail = x[0::2], x[1::2]
    return jnp.sum(100.0 * (tail - head**2) ** 2 + (1.0 - head) ** 2)


def rosenbrock(
    n: int = 100, form: str = "chained", dtype: str | jnp.dtype | None = None
) -> Problem:
    """Rosenbrock's function from the standard start ``(-1.2, 1, -1.2, 1, ...)``.

    Args:
      n: dimension, >= 2 (even for the extended form).
      form: ``"chained"`` (the hard one: hundreds of L-BFGS steps at n = 100)
        or ``"extended"`` (n/2 independent 2-D problems).
      dtype: parameter dtype; None for float64 when JAX's x64 mode is on,
        else float32.

    Returns:
      A :class:`Problem` without data; the batch argument of its loss is
      ignored. Params are a flat array of length ``n``.

    Examples:
      >>> from so_opt import problems
      >>> p = problems.rosenbrock(n=2, dtype="float32")
      >>> round(float(p.loss(p.init_params(0), None)), 4)  # 100 (1 - 1.44)^2 + 2.2^2
      24.2
    """
    if form not in FORMS:
        raise ValueError(f"`form` must be one of {list(FORMS)}, got {form!r}.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"`n` must be an integer >= 2, got {n!r}.")
    if form == "extended" and n % 2:
        raise ValueError(f"`n` must be even for the extended form, got {n}.")
    dtype = reference_dtype(dtype)

    def init_params(seed: int) -> jax.Array:
        # The standard start is deterministic; the seed does not move it.
        del seed
        start = jnp.where(jnp.arange(n) % 2 == 0, -1.2, 1.0)
        return start.astype(dtype)

    def loss(params, batch=None):
        del batch
        return rosenbrock_value(params, form)

    return Problem(
        name="rosenbrock",
        init_params=init_params,
        loss=loss,
        minimum=0.0,
        config={"n": n, "form": form, "dtype": dtype.name},
    )
