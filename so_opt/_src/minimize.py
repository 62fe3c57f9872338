"""Full-batch driver: any contract-following optimizer in one ``lax.while_loop``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from so_opt._src import base, compile_options
from so_opt._src import wolfe as wolfe_lib

# Wrapping makes a new object; caching it keeps the compiled loop reusable.
_with_extra_args = functools.lru_cache(maxsize=64)(optax.with_extra_args_support)

# Codes at or above this one, found in an optimizer state, stop the run.
_FIRST_FAILURE = base.StatusCode.LINE_SEARCH_FAILED


class MinimizeResult(NamedTuple):
    """Result of :func:`minimize`.

    Attributes:
      params: last params with a finite value and gradient.
      value: loss at ``params``.
      grad_norm: Euclidean norm of the gradient at ``params``.
      num_steps: optimizer updates accepted.
      status: a :class:`so_opt.StatusCode` (int32): ``CONVERGED``,
        ``MAX_STEPS``, ``LINE_SEARCH_FAILED``, ``NON_FINITE`` or another
        failure code reported by the optimizer. The driver's verdict on the
        run: the optimizer's own status of its last step,
        ``so_opt.status(result.state)``, stays ``RUNNING`` when the run
        ends by the driver's tests (``CONVERGED``, ``MAX_STEPS``).
      costs: the optimizer's counters plus the driver's own evaluations,
        and for optax's line searches, which keep no counters, the
        evaluations their steps imply (a zoom step: one value and gradient;
        a backtracking step: one value, plus one gradient with
        ``store_grad``).
      state: final optimizer state, or ``None`` unless ``keep_state``.
      history: loss at the start and after each step, length
        ``max_steps + 1``, NaN past the end; ``None`` unless requested.
    """

    params: base.Params
    value: jax.Array
    grad_norm: jax.Array
    num_steps: jax.Array
    status: jax.Array
    costs: base.Costs
    state: base.PyTree
    history: jax.Array | None


class _Carry(NamedTuple):
    params: base.Params
    state: base.PyTree
    value: jax.Array
    grad: base.PyTree
    grad_norm: jax.Array
    step: jax.Array
    status: jax.Array
    driver_evals: jax.Array
    peer_evals: jax.Array
    history: jax.Array | None


def _norm_if_finite(grad, params) -> jax.Array:
    """:math:`\\|g\\|`, or NaN when ``params`` hold a non-finite entry.

    One reduction serves both: :math:`0 \\cdot x` is zero for a finite
    :math:`x` (so the sum of squares is unchanged) and NaN otherwise.
    """
    parts = [
        jnp.sum(g * g + 0 * x.astype(g.dtype))
        for g, x in zip(
            jax.tree_util.tree_leaves(grad),
            jax.tree_util.tree_leaves(params),
            strict=True,
        )
    ]
    return jnp.sqrt(sum(parts[1:], parts[0]))


def _optax_line_search_evals(state) -> jax.Array:
    """``[value, gradient]`` evaluations of optax's line searches in an update.

    optax keeps no cost counters; its line-search info holds the steps of the
    last search. A zoom step evaluates the value and the gradient; a
    backtracking step the value only, and with ``store_grad`` the gradient
    once more at the accepted point.
    """
    counts = jnp.zeros(2, base.COUNTER_DTYPE)
    for ls in wolfe_lib.optax_line_search_states(state):
        steps = jnp.asarray(ls.info.num_linesearch_steps).astype(counts.dtype)
        if isinstance(ls, optax.ScaleByZoomLinesearchState):
            counts = counts + base.pack_scalars([0, steps], counts.dtype)
        else:
            grads = 0 if ls.grad is None else 1
            counts = counts + base.pack_scalars([steps, grads], counts.dtype)
    return counts


def _body(carry: _Carry, *, fun, extra, optimizer, max_steps, gtol, verbose) -> _Carry:
    """One optimizer step, with the checks that decide whether to go on."""
    updates, state = optimizer.update(
        carry.grad,
        carry.state,
        carry.params,
        value=carry.value,
        grad=carry.grad,
        value_fn=fun,
        **extra,
    )
    params = optax.apply_updates(carry.params, updates)
    value, grad, reused = wolfe_lib.value_and_grad_from_state(
        fun, params, updates, state
    )
    grad = otu.tree_cast_like(grad, carry.grad)
    value = jnp.asarray(value).astype(carry.value.dtype)
    grad_norm = _norm_if_finite(grad, params)

    # Reject a step that leaves the finite region; stop on optimizer failure.
    opt_code = base.status(state)
    failed = opt_code >= _FIRST_FAILURE
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
    take = finite & ~failed
    step = carry.step + take.astype(carry.step.dtype)
    code = jnp.select(
        [failed, ~finite, grad_norm <= gtol, step >= max_steps],
        [
            opt_code,
            base.StatusCode.NON_FINITE,
            base.StatusCode.CONVERGED,
            base.StatusCode.MAX_STEPS,
        ],
        base.StatusCode.RUNNING,
    ).astype(carry.status.dtype)
    if verbose:
        jax.debug.print(
            "so_opt.minimize: step {s} value {v} grad norm {g} status {c}",
            s=step,
            v=value,
            g=grad_norm,
            c=code,
        )

    keep = lambda new, old: otu.tree_where(take, new, old)
    history = carry.history
    if history is not None:
        history = history.at[step].set(jnp.where(take, value, history[step]))
    return _Carry(
        params=keep(params, carry.params),
        state=state,
        value=keep(value, carry.value),
        grad=keep(grad, carry.grad),
        grad_norm=keep(grad_norm, carry.grad_norm),
        step=step,
        status=code,
        driver_evals=carry.driver_evals + (~reused).astype(carry.driver_evals.dtype),
        peer_evals=carry.peer_evals + _optax_line_search_evals(state),
        history=history,
    )


def _check_scalar_loss(fun, params) -> None:
    """Raises ``TypeError`` unless ``fun(params)`` is a floating-point scalar."""
    out = jax.eval_shape(fun, params)
    leaves = jax.tree.leaves(out)
    scalar = (
        len(leaves) == 1
        and leaves[0] is out
        and out.shape == ()
        and jnp.issubdtype(out.dtype, jnp.floating)
    )
    if not scalar:
        raise TypeError(
            "`fun` must return a floating-point scalar loss, got "
            f"{jax.tree.map(lambda x: f'{x.dtype}{list(x.shape)}', out)}. A loss "
            "with auxiliary outputs is for manual loops; give `minimize` "
            "`lambda p: fun(p)[0]` and an optimizer built without `has_aux`."
        )


def bind_args(fn, args, x):
    """``fn(x, *args)``: a closure of the contract as a function of ``x`` alone."""
    return fn(x, *args)


def _check_function(fn, name: str, of: str = "the params") -> None:
    """Raises ``TypeError`` unless ``fn`` is a hashable callable.

    The functions are static arguments of the compiled loop, so they must be
    hashable.
    """
    if not callable(fn):
        raise TypeError(f"`{name}` must be a function of {of}, got {fn!r:.60}.")
    try:
        hash(fn)
    except TypeError:
        raise TypeError(
            f"`{name}` must be hashable (a static argument of the compiled loop), "
            f"got an unhashable {type(fn).__name__}; wrap it in a function, "
            f"e.g. `lambda p: {name}(p)`."
        ) from None


def _check_static_args(fun, optimizer, model_fn, output_loss_fn) -> None:
    """Raises ``TypeError`` for functions or an ``optimizer`` the loop cannot take.

    An optimizer factory passed uncalled (``so_opt.lbfgs``) is named as such.
    """
    _check_function(fun, "fun")
    if (model_fn is None) != (output_loss_fn is None):
        raise TypeError(
            "`model_fn` and `output_loss_fn` go together (Gauss-Newton "
            "curvature needs both), got only "
            f"`{'model_fn' if output_loss_fn is None else 'output_loss_fn'}`."
        )
    if model_fn is not None:
        _check_function(model_fn, "model_fn")
        _check_function(output_loss_fn, "output_loss_fn", "the model outputs")
    # Duck-typed as optax itself is: optax.MultiSteps is no NamedTuple.
    has = lambda name: callable(getattr(optimizer, name, None))
    if not (has("init") and has("update")):
        # A module-level factory passed uncalled (so_opt.lbfgs, optax.adam).
        qualname = getattr(optimizer, "__qualname__", "<locals>")
        hint = "" if "<locals>" in qualname else f"; call it: `{qualname}(...)`"
        given = repr(optimizer)
        given = given if len(given) <= 60 else f"a {type(optimizer).__name__}"
        raise TypeError(
            "`optimizer` must be an optax GradientTransformation (with `init` "
            f"and `update`), got {given}{hint}."
        )


def _loop(
    fun,
    params,
    args,
    optimizer,
    gtol,
    max_steps,
    record_history,
    keep_state,
    verbose,
    gauss_newton,
):
    """The loop behind :func:`minimize`, compiled by :func:`_compiled`."""
    # The data in ``args`` are traced: one compilation serves any values.
    fun = functools.partial(bind_args, fun, args)
    extra = {}
    if gauss_newton is not None:
        model_fn, output_loss_fn = gauss_newton
        extra = {
            "model_fn": functools.partial(bind_args, model_fn, args),
            "output_loss_fn": functools.partial(bind_args, output_loss_fn, args),
        }
    _check_scalar_loss(fun, params)
    value, grad = jax.value_and_grad(fun)(params)
    value = jnp.asarray(value)
    grad_norm = otu.tree_norm(grad)
    history = None
    if record_history:
        history = jnp.full((max_steps + 1,), jnp.nan, value.dtype).at[0].set(value)
    start_code = jnp.select(
        [~jnp.isfinite(value) | ~jnp.isfinite(grad_norm), grad_norm <= gtol],
        [base.StatusCode.NON_FINITE, base.StatusCode.CONVERGED],
        base.StatusCode.RUNNING,
    )
    carry = _Carry(
        params=params,
        state=optimizer.init(params),
        value=value,
        grad=grad,
        grad_norm=grad_norm,
        step=jnp.zeros((), base.COUNTER_DTYPE),
        status=jnp.asarray(start_code, base.COUNTER_DTYPE),
        driver_evals=jnp.ones((), base.COUNTER_DTYPE),
        peer_evals=jnp.zeros(2, base.COUNTER_DTYPE),
        history=history,
    )
    body = functools.partial(
        _body,
        fun=fun,
        extra=extra,
        optimizer=optimizer,
        max_steps=max_steps,
        gtol=gtol,
        verbose=verbose,
    )
    cond = lambda c: c.status == base.StatusCode.RUNNING
    final = jax.lax.while_loop(cond, body, carry)
    costs = base.add_costs(
        base.costs(final.state),
        value_evals=final.peer_evals[0],
        grad_evals=final.driver_evals + final.peer_evals[1],
    )
    return MinimizeResult(
        params=final.params,
        value=final.value,
        grad_norm=final.grad_norm,
        num_steps=final.step,
        status=final.status,
        costs=costs,
        state=final.state if keep_state else None,
        history=final.history,
    )


@functools.cache
def _compiled(options: compile_options.Frozen):
    """The jit-compiled loop for one set of XLA compile options."""
    return jax.jit(
        _loop,
        compiler_options=dict(options) or None,
        static_argnames=(
            "fun",
            "optimizer",
            "max_steps",
            "record_history",
            "keep_state",
            "verbose",
            "gauss_newton",
        ),
    )


def minimize(
    fun: Callable[[base.Params], jax.Array],
    params: base.Params,
    optimizer: optax.GradientTransformation,
    *,
    args: tuple[Any, ...] = (),
    model_fn: Callable[..., Any] | None = None,
    output_loss_fn: Callable[..., jax.Array] | None = None,
    max_steps: int = 1000,
    gtol: float = 1e-6,
    record_history: bool = False,
    keep_state: bool = False,
    verbose: bool = False,
    compiler_options: Mapping[str, Any] | None = None,
) -> MinimizeResult:
    r"""Runs an optimizer on a full-batch loss until convergence, all under ``jit``.

    Starting from :math:`x_0`, each step calls
    ``optimizer.update(g, state, x, value=f(x), grad=g, value_fn=fun)`` and
    applies the updates, until

    .. math::
      \|\nabla f(x_t)\|_2 \le \texttt{gtol} \quad\text{or}\quad
      t = \texttt{max\_steps},

    or the optimizer reports a failure in its state (``so_opt.status``), or
    a step reaches a non-finite loss, gradient or params (the step is then
    not taken: the result keeps the last finite point). The whole loop is
    one ``jax.lax.while_loop`` in one compiled function.

    Norms are computed in the params' dtype, without rescaling: in float32 a
    gradient norm above about 1.8e19 overflows (the start or step counts as
    non-finite) and one below about 1e-19 underflows to zero (counts as
    converged). Rescale such a loss, or run it in float64.

    Compilation: ``params``, ``args`` and ``gtol`` are traced, so a call with
    new values of the same shapes and dtypes reuses the compiled loop (to
    ``jax.jit`` a Python float, a numpy scalar and a 0-d array are three
    different types). ``fun``,
    ``optimizer``, ``max_steps`` and the flags are static: a new object (a
    fresh ``lambda`` or ``so_opt.lbfgs()``) or a new value compiles again,
    and whatever ``fun`` reads from its closure is frozen into the program
    when it is first compiled. Pass data that changes between calls in
    ``args`` (or call ``minimize`` inside your own ``jax.jit``).

    Evaluations: the driver computes the value and gradient at the start and
    after each step, except when the optimizer's state holds them for the
    new point (so_opt's line searches do, and so do optax's zoom and
    backtracking line searches; see :func:`so_opt.value_and_grad_from_state`).
    Plain optax transforms
    (``optax.sgd``) are wrapped with ``optax.with_extra_args_support``, so
    they ignore the extra arguments. With ``model_fn`` and
    ``output_loss_fn`` given, they are passed too, as the Gauss-Newton
    curvature of :func:`so_opt.hessian_free` needs.

    Args:
      fun: loss ``fun(params, *args)``, returning a scalar; must be hashable
        (a function), as it is a static argument of the compiled loop.
      params: initial params, a pytree of floating arrays.
      optimizer: an optax ``GradientTransformation`` (so_opt or optax).
      args: a tuple of further arguments of ``fun`` (data, targets), traced:
        new values of the same shapes reuse the compiled loop.
      model_fn: ``model_fn(params, *args) -> outputs``, for Gauss-Newton
        curvature; give it with ``output_loss_fn``, such that
        ``fun(params, *args) == output_loss_fn(model_fn(params, *args), *args)``.
      output_loss_fn: ``output_loss_fn(outputs, *args) -> scalar``.
      max_steps: most optimizer updates, >= 1.
      gtol: stop when the gradient's Euclidean norm is at most this, >= 0.
      record_history: keep the loss after every step in ``history``.
      keep_state: return the final optimizer state in ``state``. Off by
        default: every array a compiled call returns is an output buffer of
        its own, a few microseconds each on a CPU, and an L-BFGS state holds
        a dozen, which a run of a few hundred microseconds would notice.
      verbose: print one line per step with ``jax.debug.print``.
      compiler_options: XLA options for compiling the loop, as in
        ``jax.jit(..., compiler_options=...)``. ``None`` (default) lets the
        optimizer choose: :func:`so_opt.lbfgs`, :func:`so_opt.bfgs` and
        :func:`so_opt.newton`, with params on the CPU, ask XLA:CPU for its
        memory-optimized scheduler, which hands fewer of its small kernels
        to other threads (see ``so_opt/_src/compile_options.py``); any other
        optimizer, ``so_opt.lbfgs`` inside ``optax.chain`` included, gets
        XLA's defaults. ``{}`` forces the defaults.

    Returns:
      A :class:`MinimizeResult`.

    Raises:
      ValueError: for ``max_steps`` < 1, negative ``gtol``, empty params, or
        non-empty ``compiler_options`` inside ``jax.jit`` or another
        transformation (there the caller's outermost ``jax.jit`` compiles
        the loop, and so_opt's own choice is dropped too).
      TypeError: for a ``fun`` that is not a hashable function or does not
        return a floating-point scalar, a ``model_fn`` or ``output_loss_fn``
        alone or not a hashable function, an ``optimizer`` that is not a
        ``GradientTransformation``, ``args`` that are not a tuple, params
        that are not floating point, flags that are
        not bools, or ``compiler_options`` that are not a mapping of names
        to str, bool, int or float values.

    Examples:
      >>> import jax.numpy as jnp, so_opt
      >>> f = lambda x: jnp.sum((x - 1.0) ** 2)
      >>> res = so_opt.minimize(f, jnp.zeros(2), so_opt.lbfgs(), gtol=1e-8)
      >>> print(res.params, int(res.num_steps), int(res.status))
      [1. 1.] 2 1

    References:
      Nocedal and Wright, *Numerical Optimization*, 2nd ed., Springer, 2006,
      Chapter 3 (line-search methods and their stopping tests).
    """
    _check_static_args(fun, optimizer, model_fn, output_loss_fn)
    if not isinstance(args, tuple):
        raise TypeError(
            f"`args` must be a tuple of extra arguments of `fun`, got "
            f"{type(args).__name__}; for one argument write `args=(x,)`."
        )
    base.check_int_at_least(max_steps, "max_steps", 1)
    base.check_positive(gtol, "gtol", allow_zero=True)
    base.check_float_params(params)
    for flag, name in (
        (record_history, "record_history"),
        (keep_state, "keep_state"),
        (verbose, "verbose"),
    ):
        base.check_bool(flag, name)
    if not isinstance(optimizer, optax.GradientTransformationExtraArgs):
        optimizer = _with_extra_args(optimizer)
    run = _compiled(compile_options.for_optimizer(optimizer, compiler_options, params))
    return run(
        fun,
        params,
        args,
        optimizer,
        gtol,
        max_steps,
        bool(record_history),
        bool(keep_state),
        bool(verbose),
        None if model_fn is None else (model_fn, output_loss_fn),
    )
