"""Curvature tools on any pytree of floating-point params.

Hessian- and Gauss-Newton-vector products, the dense Hessian, its extremal
eigenvalues and its trace. Products never form the matrix: a Hessian-vector
product is forward-mode differentiation of the gradient (``jax.jvp`` of
``jax.grad``); a Gauss-Newton product is a forward pass through the model's
linearization, the output loss's Hessian product and a reverse pass back.
Everything is jit-able; argument checks look only at shapes and dtypes, so
they run while tracing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu
from jax.flatten_util import ravel_pytree

from so_opt._src import base, lanczos, tree

Params = base.Params

DEFAULT_MEMORY_BUDGET_BYTES = 2**30  # 1 GiB: k = 16384 in float32.
_DEFAULT_CHUNK_SIZE = 256


def _checked_scalar_fun(fun: Callable[[Any], Any], name: str) -> Callable:
    """Wraps ``fun`` so that a non-scalar or non-float output raises at trace time."""

    def scalar_fun(x):
        value = fun(x)
        if not isinstance(value, (jax.Array, np.ndarray, np.generic, float)):
            raise TypeError(
                f"`{name}` must return a scalar array, got an object of type "
                f"{type(value).__name__}."
            )
        if np.shape(value) != ():
            raise ValueError(
                f"`{name}` must return a scalar, got an array of shape "
                f"{np.shape(value)}."
            )
        if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
            raise TypeError(
                f"`{name}` must return a floating-point scalar, got dtype "
                f"{jnp.result_type(value)}."
            )
        return value

    return scalar_fun


def _checked_linear_map(linear_fn: Callable, params: Params) -> Callable:
    """Wraps a linear map on params-shaped trees with the ``vector`` checks."""

    def checked(vector):
        tree.check_tree_like(vector, params, "vector")
        return linear_fn(vector)

    return checked


def _linearized_hvp(grad_fn: Callable, params: Params) -> tuple[Params, Callable]:
    """Returns ``(grad, v -> H v)`` from one ``jax.linearize`` of ``grad_fn``.

    The primal forward and backward passes run once, here; each product then
    replays only the tangent pass on the stored residuals. Inside a compiled
    loop XLA often hoists that primal work out of independent
    forward-over-reverse products as well, but not out of a product taken
    before the loop: truncated CG with a warm start (one product in a
    ``lax.cond``, then the loop) costs half a gradient more and a quarter more
    peak memory with independent products (BENCHMARKS.md).
    """
    return jax.linearize(grad_fn, params)


def hvp(fun: Callable[[Params], jax.Array], params: Params, vector: Params) -> Params:
    r"""Hessian-vector product of a scalar function, forward over reverse.

    .. math::
      H v = \nabla^2 f(x)\, v = \frac{d}{dt} \nabla f(x + t v) \Big|_{t=0}

    computed as ``jax.jvp(jax.grad(fun), (params,), (vector,))``: on the digits
    MLP 1.75 gradients of flops, 1.1 to 1.6 gradients of time and 2.5 times the
    gradient's temporary memory (BENCHMARKS.md). For many products at one point,
    :func:`linearize_hvp` runs the primal passes once.

    Args:
      fun: scalar function of ``params`` (the loss on the current batch).
      params: point of evaluation; any pytree of floating-point arrays.
      vector: direction with the tree structure, shapes and dtypes of ``params``.

    Returns:
      :math:`Hv`, a pytree like ``params``.

    Raises:
      TypeError: if ``params`` holds non-float leaves, a ``vector`` leaf has
        another dtype, or ``fun`` returns a non-float.
      ValueError: if ``vector`` differs from ``params`` in structure or shapes,
        or ``fun`` returns a non-scalar.

    Examples:
      >>> import jax.numpy as jnp, so_opt
      >>> f = lambda x: jnp.sum(x ** 3)
      >>> print(so_opt.hvp(f, jnp.array([1.0, 2.0]), jnp.array([1.0, 1.0])))
      [ 6. 12.]

    References:
      Pearlmutter, *Fast exact multiplication by the Hessian*, Neural
      Computation, 1994.
    """
    base.check_float_params(params)
    tree.check_tree_like(vector, params, "vector")
    grad_fn = jax.grad(_checked_scalar_fun(fun, "fun"))
    return jax.jvp(grad_fn, (params,), (vector,))[1]


def linearize_hvp(
    fun: Callable[[Params], jax.Array], params: Params
) -> tuple[Params, Callable[[Params], Params]]:
    r"""Returns the gradient at ``params`` and the map :math:`v \mapsto Hv`.

    The gradient map is linearized once (``jax.linearize``): the checks, the
    primal forward and backward passes and their residuals happen here, and
    each product replays one tangent pass. Use it when several products are
    taken at one point (CG, Lanczos): in so_opt's truncated CG with a warm
    start it saves half a gradient per solve and a fifth of the peak memory
    over independent products (``BENCHMARKS.md``).

    Args:
      fun: scalar function of ``params``.
      params: point of evaluation; any pytree of floating-point arrays.

    Returns:
      ``(grad, hvp_fn)``: :math:`\nabla f(x)` and a function that maps a vector
      like ``params`` to :math:`\nabla^2 f(x)\, v` (it checks the vector).

    Raises:
      TypeError: if ``params`` holds non-float leaves or ``fun`` returns a
        non-float.
      ValueError: if ``fun`` returns a non-scalar.

    Examples:
      >>> import jax.numpy as jnp, so_opt
      >>> f = lambda x: 0.5 * jnp.sum(jnp.array([1.0, 4.0]) * x ** 2)
      >>> grad, hvp_fn = so_opt.linearize_hvp(f, jnp.ones(2))
      >>> print(grad, hvp_fn(jnp.array([1.0, 0.0])))
      [1. 4.] [1. 0.]

    References:
      Pearlmutter, *Fast exact multiplication by the Hessian*, Neural
      Computation, 1994.
    """
    base.check_float_params(params)
    grad_fn = jax.grad(_checked_scalar_fun(fun, "fun"))
    grad, hvp_fn = _linearized_hvp(grad_fn, params)
    return grad, _checked_linear_map(hvp_fn, params)


def ggn_vp(
    model_fn: Callable[[Params], Any],
    output_loss_fn: Callable[[Any], jax.Array],
    params: Params,
    vector: Params,
) -> Params:
    r"""Generalized Gauss-Newton-vector product for ``output_loss_fn(model_fn(p))``.

    With :math:`J` the Jacobian of ``model_fn`` at ``params`` and :math:`H_L` the
    Hessian of ``output_loss_fn`` at the outputs,

    .. math::
      G v = J^\top H_L J v ,

    computed as a forward-mode product through the model, a Hessian-vector
    product of the output loss, and a reverse-mode product back (the transpose
    of the same linearization, so the model's primal pass runs once). :math:`G`
    is positive semi-definite whenever the output loss is convex (softmax
    cross-entropy, squared error), unlike the Hessian.

    Args:
      model_fn: maps ``params`` to outputs (any pytree of arrays).
      output_loss_fn: scalar function of the outputs.
      params: point of evaluation; any pytree of floating-point arrays.
      vector: direction with the tree structure, shapes and dtypes of ``params``.

    Returns:
      :math:`Gv`, a pytree like ``params``.

    Raises:
      ValueError: for a non-scalar ``output_loss_fn``, or a ``vector`` whose
        tree structure or leaf shapes are not those of ``params``.
      TypeError: for integer ``params``, a non-float ``output_loss_fn`` or a
        ``vector`` leaf whose dtype is not that of ``params``.

    Examples:
      >>> import jax.numpy as jnp, so_opt
      >>> model_fn = lambda w: jnp.array([[1.0, 2.0], [0.0, 1.0]]) @ w
      >>> output_loss_fn = lambda y: 0.5 * jnp.sum(y ** 2)
      >>> v = jnp.array([1.0, 0.0])
      >>> print(so_opt.ggn_vp(model_fn, output_loss_fn, jnp.zeros(2), v))
      [1. 2.]

    References:
      Schraudolph, *Fast curvature matrix-vector products for second-order
      gradient descent*, Neural Computation, 2002.
      Martens, *Deep learning via Hessian-free optimization*, ICML, 2010.
    """
    base.check_float_params(params)
    tree.check_tree_like(vector, params, "vector")
    return linearize_ggn(model_fn, output_loss_fn, params)(vector)


def linearize_ggn(
    model_fn: Callable[[Params], Any],
    output_loss_fn: Callable[[Any], jax.Array],
    params: Params,
) -> Callable[[Params], Params]:
    r"""Returns :math:`v \mapsto J^\top H_L J v` with the model linearized once.

    The model's primal pass and the output loss's Hessian linearization happen
    here; each product then costs one tangent pass, one output-loss Hessian
    product and one transposed (reverse) pass.

    Args:
      model_fn: maps ``params`` to outputs.
      output_loss_fn: scalar function of the outputs.
      params: point of evaluation; any pytree of floating-point arrays.

    Returns:
      A function mapping a vector like ``params`` to :math:`Gv` (it checks the
      vector's structure, shapes and dtypes).

    Raises:
      TypeError: if ``params`` holds non-float leaves or ``output_loss_fn``
        returns a non-float.
      ValueError: if ``output_loss_fn`` returns a non-scalar.

    Examples:
      >>> import jax.numpy as jnp, so_opt
      >>> loss = lambda y: jnp.sum(y ** 2)
      >>> ggn_fn = so_opt.linearize_ggn(jnp.sin, loss, jnp.zeros(2))
      >>> print(ggn_fn(jnp.array([1.0, 3.0])))
      [2. 6.]

    References:
      Schraudolph, *Fast curvature matrix-vector products for second-order
      gradient descent*, Neural Computation, 2002.
    """
    base.check_float_params(params)
    outputs, jvp_fn = jax.linearize(model_fn, params)
    # Transposing the linearization gives J^T without a second primal pass.
    vjp_fn = jax.linear_transpose(jvp_fn, params)
    loss_grad = jax.grad(_checked_scalar_fun(output_loss_fn, "output_loss_fn"))
    _, hess_out = jax.linearize(loss_grad, outputs)

    def ggn_fn(vector):
        return vjp_fn(hess_out(jvp_fn(vector)))[0]

    return _checked_linear_map(ggn_fn, params)


def _flat_problem(fun: Callable, params: Params):
    """Returns ``(x, flat_fun)``: ravelled params and ``fun`` on flat vectors."""
    base.check_float_params(params)
    x, unravel = ravel_pytree(params)
    return x, _checked_scalar_fun(lambda flat: fun(unravel(flat)), "fun")


def _balanced_chunks(k: int, chunk_size: int) -> tuple[int, int]:
    """Returns ``(num_chunks, rows)``: equal chunks of at most ``chunk_size`` rows.

    The last chunk is shifted back to end at row ``k``, so it recomputes
    ``num_chunks * rows - k < num_chunks`` rows. With chunks of exactly
    ``chunk_size`` rows it could redo almost a whole chunk: k = 610 in chunks
    of 256 took 768 products, 26% more work (BENCHMARKS.md).
    """
    num_chunks = math.ceil(k / chunk_size)
    return num_chunks, math.ceil(k / num_chunks)


def hessian_matrix(
    fun: Callable[[Params], jax.Array],
    params: Params,
    *,
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> jax.Array:
    r"""Dense Hessian of a scalar function on the flattened params.

    With :math:`x` = ``ravel_pytree(params)`` of size :math:`k`,

    .. math::
      H_{ij} = \frac{\partial^2 f}{\partial x_i \partial x_j}, \qquad
      H[i{:}i{+}c] = \big(H e_i, \dots, H e_{i+c-1}\big)^\top ,

    built ``chunk_size`` rows at a time from vmapped Hessian-vector products of
    the gradient map linearized once, written into one preallocated ``k x k``
    buffer.
    Peak memory is the matrix plus one chunk of products, instead of ``k``
    simultaneous products as in ``jax.hessian``. The size is checked
    against ``memory_budget_bytes`` before anything is allocated.

    Args:
      fun: scalar function of ``params``.
      params: point of evaluation; any pytree of floating-point arrays, ordered
        as ``jax.flatten_util.ravel_pytree`` orders them.
      chunk_size: most rows per batched product (default 256); the ``k``
        rows are split into ``ceil(k / chunk_size)`` chunks of equal size.
      memory_budget_bytes: largest allowed size of the matrix, in bytes. The
        working memory of one chunk of products is not counted in it (54 to
        194 MiB in all for k = 610 to 2,410 on the digits MLP); a smaller
        ``chunk_size`` lowers it.

    Returns:
      The ``(k, k)`` Hessian in the params' (promoted) dtype. It is symmetric
      up to rounding; it is not symmetrized, to avoid a second ``k x k`` buffer.

    Raises:
      ValueError: if ``k * k * itemsize`` exceeds ``memory_budget_bytes``, or
        ``chunk_size`` is not a positive integer, or ``fun`` is not scalar.
      TypeError: if ``params`` holds non-float leaves.

    Examples:
      >>> import jax.numpy as jnp, so_opt
      >>> f = lambda p: p["a"] ** 2 * p["b"]
      >>> print(so_opt.hessian_matrix(f, {"a": 1.0, "b": 2.0}))
      [[4. 2.]
       [2. 0.]]

    References:
      Pearlmutter, *Fast exact multiplication by the Hessian*, Neural
      Computation, 1994.
    """
    base.check_float_params(params)
    k = otu.tree_size(params)
    dtype = tree.tree_common_dtype(params)
    needed = k * k * dtype.itemsize
    base.check_int_at_least(memory_budget_bytes, "memory_budget_bytes", 1)
    if needed > memory_budget_bytes:
        raise ValueError(
            f"`memory_budget_bytes` is {memory_budget_bytes}, but the dense "
            f"Hessian of k={k} {dtype} params needs k*k*{dtype.itemsize} = "
            f"{needed} bytes; raise the budget, or use `hvp` or "
            f"`hessian_eigenvalues`, which never form the matrix."
        )
    if chunk_size is None:
        chunk_size = _DEFAULT_CHUNK_SIZE
    base.check_int_at_least(chunk_size, "chunk_size", 1)
    num_chunks, chunk_size = _balanced_chunks(k, chunk_size)

    x, flat_fun = _flat_problem(fun, params)
    batched_hvp = jax.vmap(_linearized_hvp(jax.grad(flat_fun), x)[1])

    def fill_rows(i, hessian):
        # The last chunk is shifted back to end at row k: it recomputes a few
        # rows rather than padding, so the buffer stays exactly k x k.
        start = jnp.minimum(i * chunk_size, k - chunk_size)
        rows = start + jnp.arange(chunk_size)
        basis = jax.nn.one_hot(rows, k, dtype=x.dtype)
        return jax.lax.dynamic_update_slice(hessian, batched_hvp(basis), (start, 0))

    hessian = jnp.zeros((k, k), x.dtype)
    return jax.lax.fori_loop(0, num_chunks, fill_rows, hessian)


class HessianEigenvalues(NamedTuple):
    r"""Extremal Hessian eigenvalues found by :func:`hessian_eigenvalues`.

    Attributes:
      eigenvalues: Ritz values in ascending order: the ``num`` smallest, the
        ``num`` largest, or both (``2 * num`` values) by ``which``.
      residuals: :math:`\|H y_i - \theta_i y_i\|` per eigenvalue; each
        eigenvalue is within its residual of a true eigenvalue of the Hessian.
      num_restarts: int32 count of Lanczos breakdowns (invariant subspaces).
    """

    eigenvalues: jax.Array
    residuals: jax.Array
    num_restarts: jax.Array


_WHICH = ("both", "largest", "smallest")


def hessian_eigenvalues(
    fun: Callable[[Params], jax.Array],
    params: Params,
    num: int,
    key: jax.Array,
    which: str = "both",
    *,
    num_iterations: int | None = None,
) -> HessianEigenvalues:
    r"""Extremal eigenvalues of the Hessian by Lanczos on Hessian-vector products.

    Runs ``num_iterations`` steps of :func:`lanczos` (full reorthogonalization)
    on :math:`v \mapsto \nabla^2 f(x) v` from a random normal start, then takes
    the eigenvalues :math:`\theta_i` of the tridiagonal :math:`T_m`. Extremal
    Ritz values converge first; each comes with the residual bound

    .. math::
      \min_j |\lambda_j - \theta_i| \le |\beta_m\, s_{m,i}| .

    Costs ``num_iterations`` Hessian-vector products (the gradient map is
    linearized once) and ``O(num_iterations * k)`` memory for the basis.

    Args:
      fun: scalar function of ``params``.
      params: point of evaluation; any pytree of floating-point arrays.
      num: how many eigenvalues to return at each requested end.
      key: PRNG key for the start vector.
      which: ``"largest"``, ``"smallest"`` or ``"both"``.
      num_iterations: Lanczos steps, at least ``num`` (``2 * num`` for
        ``"both"``) and at most ``k``; defaults to ``min(k, 2 * num + 40)``.

    Returns:
      A :class:`HessianEigenvalues` with ascending eigenvalues and residuals.

    Raises:
      ValueError: if ``which`` is unknown, ``num`` or ``num_iterations`` is out
        of range, or ``fun`` returns a non-scalar.
      TypeError: if ``params`` holds non-float leaves.

    Examples:
      >>> import jax, jax.numpy as jnp, so_opt
      >>> f = lambda x: 0.5 * jnp.sum(jnp.arange(1.0, 6.0) * x ** 2)
      >>> out = so_opt.hessian_eigenvalues(f, jnp.zeros(5), 1, jax.random.key(0))
      >>> print(jnp.round(out.eigenvalues, 6))
      [1. 5.]

    References:
      Lanczos, *An iteration method for the solution of the eigenvalue problem
      of linear differential and integral operators*, J. Res. NBS, 1950.
      Ghorbani, Krishnan, Xiao, *An investigation into neural net optimization
      via Hessian eigenvalue density*, ICML, 2019.
    """
    if which not in _WHICH:
        raise ValueError(f"`which` must be one of {_WHICH}, got {which!r}.")
    base.check_float_params(params)
    k = otu.tree_size(params)
    base.check_int_at_least(num, "num", 1)
    if num > k:
        raise ValueError(f"`num` must be at most the number of params {k}, got {num}.")
    if which == "both" and 2 * num > k:
        raise ValueError(
            f"`num` must be at most half the number of params {k} when `which` "
            f"is 'both', got {num}."
        )
    if num_iterations is None:
        num_iterations = min(k, 2 * num + 40)
    # "both" needs distinct Ritz values at each end.
    base.check_int_at_least(
        num_iterations, "num_iterations", 2 * num if which == "both" else num
    )

    x, flat_fun = _flat_problem(fun, params)
    _, flat_hvp = _linearized_hvp(jax.grad(flat_fun), x)
    v0 = jax.random.normal(key, x.shape, x.dtype)
    result = lanczos.lanczos(flat_hvp, v0, num_iterations)
    values, residuals = lanczos.ritz_values(result)

    if which == "largest":
        keep = slice(num_iterations - num, None)
    elif which == "smallest":
        keep = slice(0, num)
    else:
        idx = np.r_[0:num, num_iterations - num : num_iterations]
        return HessianEigenvalues(values[idx], residuals[idx], result.num_restarts)
    return HessianEigenvalues(values[keep], residuals[keep], result.num_restarts)


class HessianTrace(NamedTuple):
    r"""Hutchinson estimate of the Hessian trace from :func:`hessian_trace`.

    Attributes:
      estimate: mean of :math:`z^\top H z` over the probes.
      standard_error: sample standard deviation over :math:`\sqrt{n}`.
    """

    estimate: jax.Array
    standard_error: jax.Array


def hessian_trace(
    fun: Callable[[Params], jax.Array],
    params: Params,
    key: jax.Array,
    num_samples: int,
    *,
    batch_size: int = 8,
) -> HessianTrace:
    r"""Hutchinson's estimate of the Hessian trace, with its standard error.

    With Rademacher probes :math:`z_s \in \{-1, 1\}^k`,
    :math:`\mathbb{E}[z z^\top] = I`, so

    .. math::
      \operatorname{tr} H \approx \frac{1}{n} \sum_{s=1}^n z_s^\top H z_s ,
      \qquad \mathrm{SE} = \frac{\operatorname{std}(z_s^\top H z_s)}{\sqrt{n}} .

    Rademacher probes give the smallest variance among i.i.d. probes,
    :math:`2 \sum_{i \ne j} H_{ij}^2`. ``batch_size`` products are vmapped
    together.

    Args:
      fun: scalar function of ``params``.
      params: point of evaluation; any pytree of floating-point arrays.
      key: PRNG key for the probes.
      num_samples: number of probes :math:`n`, at least 2.
      batch_size: probes evaluated together (a memory-speed trade-off).

    Returns:
      A :class:`HessianTrace` with the estimate and its standard error.

    Raises:
      ValueError: if ``num_samples < 2`` or ``batch_size < 1``, or ``fun``
        returns a non-scalar.
      TypeError: if ``params`` holds non-float leaves.

    Examples:
      >>> import jax, jax.numpy as jnp, so_opt
      >>> f = lambda x: jnp.sum(x ** 2)
      >>> out = so_opt.hessian_trace(f, jnp.zeros(4), jax.random.key(0), 10)
      >>> print(out.estimate, out.standard_error)
      8.0 0.0

    References:
      Hutchinson, *A stochastic estimator of the trace of the influence matrix
      for Laplacian smoothing splines*, Communications in Statistics, 1990.
    """
    base.check_float_params(params)
    base.check_int_at_least(num_samples, "num_samples", 2)
    base.check_int_at_least(batch_size, "batch_size", 1)
    x, flat_fun = _flat_problem(fun, params)
    _, flat_hvp = _linearized_hvp(jax.grad(flat_fun), x)

    # Probes are drawn on the flat vector: one sampler per probe instead of
    # one per leaf, which also keeps the compiled loop small.
    def quadratic_form(probe_key):
        z = jax.random.rademacher(probe_key, x.shape, jnp.int8).astype(x.dtype)
        return jnp.vdot(z, flat_hvp(z))

    keys = jax.random.split(key, num_samples)
    samples = jax.lax.map(quadratic_form, keys, batch_size=min(batch_size, num_samples))
    estimate = jnp.mean(samples)
    standard_error = jnp.std(samples, ddof=1) / jnp.sqrt(num_samples)
    return HessianTrace(estimate, standard_error)
