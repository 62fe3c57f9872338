"""Strong Wolfe line search (bracketing and zoom) for quasi-Newton and Newton.

so_opt writes its own search instead of wrapping ``optax.scale_by_zoom_linesearch``
because the optax one does not fit the so_opt contract in four places (optax
0.2.8): when it fails it still takes its last trial step, which may raise the
loss, and reports the failure only through a ``verbose`` print; its
``value_fn`` cannot return ``(loss, aux)``; it raises on any extra argument
that ``value_fn`` does not accept, so it cannot sit in an update that also
carries ``model_fn`` or ``output_loss_fn``; and by default it accepts the
approximate (Hager-Zhang) decrease test, so an accepted step need not satisfy
the Armijo inequality. The algorithm is the textbook one (Nocedal and
Wright, Algorithms 3.5 and 3.6) in a single ``lax.while_loop``, in
``wolfe_loop.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from so_opt._src import base, tree, wolfe_loop
from so_opt._src.wolfe_loop import CONDITIONS as CONDITIONS
from so_opt._src.wolfe_loop import WolfeResult as WolfeResult


class ValueGradCache(NamedTuple):
    """Value and gradient at ``params + updates``, kept in an optimizer state.

    A line search evaluates the loss and gradient at the point it accepts; a
    driver that needs them for the next step reads them here instead of
    evaluating again (see :func:`value_and_grad_from_state`).

    Attributes:
      updates: the updates the transform returned with this cache.
      value: loss at ``params + updates``.
      grad: gradient at ``params + updates``.
    """

    updates: base.Updates
    value: jax.Array
    grad: base.PyTree


class WolfeState(NamedTuple):
    """State of :func:`scale_by_wolfe`.

    Attributes:
      learning_rate: step accepted at the last update.
      num_trials: evaluations spent by the last line search.
      wolfe: whether the last step met the full condition.
      cache: value and gradient at the accepted point.
      costs: cumulative work counters.
      status: ``LINE_SEARCH_FAILED`` when the last search found no step.
    """

    learning_rate: jax.Array
    num_trials: jax.Array
    wolfe: jax.Array
    cache: ValueGradCache
    costs: base.Costs
    status: base.Status


def check_line_search_args(
    c1: float,
    c2: float,
    max_trials: int,
    increase_factor: float,
    condition: str,
    has_aux: bool = False,
) -> None:
    """Validates line-search hyperparameters eagerly (Python values only)."""
    base.check_bool(has_aux, "has_aux")
    base.check_in_open_interval(c1, "c1", 0.0, 1.0)
    base.check_in_open_interval(c2, "c2", 0.0, 1.0)
    if not c1 < c2:
        raise ValueError(f"`c2` must be greater than `c1` = {c1}, got {c2}.")
    base.check_int_at_least(max_trials, "max_trials", 1)
    if not increase_factor > 1.0:
        raise ValueError(f"`increase_factor` must be > 1, got {increase_factor}.")
    if condition not in CONDITIONS:
        raise ValueError(
            f"`condition` must be one of {list(CONDITIONS)}, got {condition!r}."
        )


def wolfe_line_search(
    value_fn: Callable[[base.Params], Any],
    params: base.Params,
    direction: base.Updates,
    value: jax.typing.ArrayLike,
    grad: base.PyTree,
    *,
    learning_rate: jax.typing.ArrayLike = 1.0,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_trials: int = 30,
    increase_factor: float = 2.0,
    max_learning_rate: float | None = None,
    condition: str = "strong_wolfe",
    has_aux: bool = False,
) -> WolfeResult:
    r"""Finds a step along ``direction`` that meets the strong Wolfe conditions.

    With :math:`\phi(\eta) = f(x + \eta d)` and :math:`\phi'(0) = \langle
    \nabla f(x), d \rangle < 0`, an accepted step satisfies

    .. math::
      \phi(\eta) \le \phi(0) + c_1 \eta \phi'(0), \qquad
      |\phi'(\eta)| \le c_2 |\phi'(0)| .

    The search starts at ``learning_rate``, grows the step by
    ``increase_factor`` until a bracket is found, then zooms with safeguarded
    cubic interpolation. Every trial is one value-and-gradient evaluation.
    Non-finite trial values count as too high. Where a trial's value is
    within roundoff of the value it is compared with (10 ulps of
    :math:`|\phi(0)|`), the comparison also accepts the secant estimate
    :math:`\phi(\eta) - \phi(0) \approx \eta (\phi'(0) + \phi'(\eta)) / 2`,
    so that a run can reach gradients whose decrease is below an ulp of the
    loss; a measurable rise is never accepted. If ``max_trials`` run out, the
    lowest trial that met sufficient decrease is returned (``wolfe`` False);
    if there is none, the step is 0 and the status ``LINE_SEARCH_FAILED``.
    With ``condition="armijo"`` only the first inequality is required (the
    same loop then backtracks by interpolation), and the accepted value must
    be strictly lower than :math:`\phi(0)`: at the precision floor of the
    loss, where no trial can show a decrease, the search fails instead of
    taking steps that change nothing.

    Args:
      value_fn: loss of the params (``(loss, aux)`` with ``has_aux``).
      params: current point :math:`x`.
      direction: search direction :math:`d`; must be a descent direction.
      value: :math:`f(x)`.
      grad: :math:`\nabla f(x)`.
      learning_rate: first trial step.
      c1: sufficient-decrease constant in (0, 1).
      c2: curvature constant in (``c1``, 1); 0.9 suits quasi-Newton.
      max_trials: most evaluations allowed.
      increase_factor: growth of the trial step while bracketing, > 1.
      max_learning_rate: largest step tried (no bound when ``None``).
      condition: ``"strong_wolfe"`` or ``"armijo"``.
      has_aux: whether ``value_fn`` returns ``(loss, aux)``.

    Returns:
      A :class:`WolfeResult`.

    Raises:
      ValueError: for constants out of range (checked unless traced), or a
        ``direction`` whose structure or shapes differ from ``params``.

    Examples:
      >>> import jax, jax.numpy as jnp, so_opt
      >>> f = lambda x: jnp.sum((x - 2.0) ** 2)
      >>> x = jnp.zeros(2); v, g = jax.value_and_grad(f)(x)
      >>> res = so_opt.wolfe_line_search(f, x, -g, v, g)  # 1.0 overshoots
      >>> print(res.learning_rate, res.value, bool(res.wolfe))
      0.5 0.0 True
      >>> res = so_opt.wolfe_line_search(f, x, -g, v, g, learning_rate=0.1)
      >>> print(res.learning_rate, int(res.num_trials))  # already strong Wolfe
      0.1 1

    References:
      Nocedal and Wright, *Numerical Optimization*, 2nd ed., Springer, 2006,
      Algorithms 3.5 and 3.6; Wolfe, *Convergence conditions for ascent
      methods*, SIAM Review, 1969.
    """
    check_line_search_args(c1, c2, max_trials, increase_factor, condition, has_aux)
    base.check_positive_unless_traced(learning_rate, "learning_rate")
    if max_learning_rate is not None:
        base.check_positive_unless_traced(max_learning_rate, "max_learning_rate")
    # The search casts the direction to the gradient's dtypes itself.
    tree.check_tree_like(direction, params, "direction", check_dtypes=False)
    return wolfe_loop.search(
        value_fn,
        params,
        direction,
        value,
        grad,
        learning_rate=learning_rate,
        c1=c1,
        c2=c2,
        max_trials=max_trials,
        increase_factor=increase_factor,
        max_learning_rate=max_learning_rate,
        condition=condition,
        has_aux=has_aux,
    ).result


def scale_by_wolfe(
    learning_rate: float = 1.0,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_trials: int = 30,
    increase_factor: float = 2.0,
    max_learning_rate: float | None = None,
    condition: str = "strong_wolfe",
    has_aux: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Scales a descent direction by a step meeting the strong Wolfe conditions.

    The incoming ``updates`` are the direction :math:`d` (a Newton or
    quasi-Newton step, or the negative gradient); the output is
    :math:`\eta d` with :math:`\eta` from :func:`wolfe_line_search`:

    .. math::
      f(x + \eta d) \le f(x) + c_1 \eta \langle \nabla f(x), d \rangle,
      \qquad |\langle \nabla f(x + \eta d), d \rangle| \le
      c_2 |\langle \nabla f(x), d \rangle| .

    A failed search gives a zero update and ``LINE_SEARCH_FAILED``. The value
    and gradient at the accepted point are kept in the state
    (:class:`ValueGradCache`), so :func:`so_opt.minimize` does not evaluate
    them again. Each trial counts as one gradient evaluation.

    Args:
      learning_rate: first trial step at every update (1 for Newton-type
        directions).
      c1: sufficient-decrease constant in (0, 1).
      c2: curvature constant in (``c1``, 1).
      max_trials: most value-and-gradient evaluations per update.
      increase_factor: growth of the trial step while bracketing, > 1.
      max_learning_rate: largest step tried (no bound when ``None``).
      condition: ``"strong_wolfe"`` or ``"armijo"``.
      has_aux: whether ``value_fn`` returns ``(loss, aux)``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs
      ``params`` and the extra arguments ``value``, ``grad`` and ``value_fn``.

    Raises:
      ValueError: for constants out of range.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, so_opt
      >>> loss = lambda w: 0.25 * jnp.sum(w**4) + 0.5 * jnp.sum(w**2)
      >>> descent = optax.chain(optax.scale(-1.0), so_opt.scale_by_wolfe(c2=0.1))
      >>> w = jnp.array([1.0, -2.0]); state = descent.init(w)
      >>> v, g = jax.value_and_grad(loss)(w)
      >>> u, state = descent.update(g, state, w, value=v, grad=g, value_fn=loss)
      >>> print(f"{state[1].learning_rate:.4f}", so_opt.costs(state).grad_evals)
      0.2177 3

    References:
      Nocedal and Wright, *Numerical Optimization*, 2nd ed., Springer, 2006,
      Section 3.5.
    """
    check_line_search_args(c1, c2, max_trials, increase_factor, condition, has_aux)
    base.check_positive(learning_rate, "learning_rate")
    search_args = dict(
        c1=c1,
        c2=c2,
        max_trials=max_trials,
        increase_factor=increase_factor,
        max_learning_rate=max_learning_rate,
        condition=condition,
        has_aux=has_aux,
    )

    def init_fn(params):
        base.check_float_params(params)
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
        return WolfeState(
            learning_rate=jnp.zeros((), dtype),
            num_trials=jnp.zeros((), base.COUNTER_DTYPE),
            wolfe=jnp.asarray(False),
            cache=empty_cache(params),
            costs=base.zero_costs(),
            status=base.ok_status(),
        )

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise TypeError("`scale_by_wolfe` needs `params` in `update`.")
        value = base.extra_arg(extra_args, "value", "scale_by_wolfe")
        grad = base.extra_arg(extra_args, "grad", "scale_by_wolfe")
        value_fn = base.extra_arg(extra_args, "value_fn", "scale_by_wolfe")
        res = wolfe_line_search(
            value_fn,
            params,
            updates,
            value,
            grad,
            learning_rate=learning_rate,
            **search_args,
        )
        new_updates = otu.tree_scale(res.learning_rate, updates)
        new_state = WolfeState(
            learning_rate=res.learning_rate.astype(state.learning_rate.dtype),
            num_trials=res.num_trials,
            wolfe=res.wolfe,
            cache=make_cache(new_updates, res, state.cache),
            costs=base.add_costs(state.costs, grad_evals=res.num_trials),
            status=base.make_status(res.status),
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def empty_cache(params: base.Params) -> ValueGradCache:
    """A cache that matches no update (its value is NaN)."""
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    return ValueGradCache(
        updates=otu.tree_zeros_like(params),
        value=jnp.asarray(jnp.nan, dtype),
        grad=otu.tree_zeros_like(params),
    )


def make_cache(
    updates: base.Updates, res: WolfeResult, old: ValueGradCache
) -> ValueGradCache:
    """The cache after a line search, cast to the dtypes of the old one."""
    return ValueGradCache(
        updates=otu.tree_cast_like(updates, old.updates),
        value=res.value.astype(old.value.dtype),
        grad=otu.tree_cast_like(res.grad, old.grad),
    )


def value_and_grad_from_state(
    value_fn: Callable[[base.Params], jax.Array],
    params: base.Params,
    updates: base.Updates,
    state: base.PyTree,
    has_aux: bool = False,
) -> tuple[jax.Array, base.PyTree, jax.Array]:
    r"""Loss and gradient at ``params``, reused from a line search when possible.

    ``params`` must be the point just reached, :math:`x + u` for the
    ``updates`` :math:`u` returned with ``state``. When the state holds a
    :class:`ValueGradCache` whose updates equal :math:`u` exactly (the line
    search's step went through unchanged), its value and gradient are
    returned (when :math:`u` is the cached array itself, as traced, without
    any runtime test); otherwise ``jax.value_and_grad(value_fn)(params)`` runs (inside
    ``lax.cond``, so only one branch costs anything). A state with no so_opt
    cache but one optax line search (``scale_by_zoom_linesearch``, or
    ``scale_by_backtracking_linesearch(store_grad=True)``), which must end its
    chain, gives the value and gradient that search stored, when finite, as
    ``optax.value_and_grad_from_state`` does.

    Args:
      value_fn: loss of the params, returning a scalar.
      params: the new params :math:`x + u`.
      updates: the updates :math:`u` returned by the optimizer.
      state: the optimizer state returned with them.
      has_aux: whether ``value_fn`` returns ``(loss, aux)``; the aux is
        dropped (the cache does not keep it).

    Returns:
      ``(value, grad, reused)``; ``reused`` is a bool scalar, ``True`` when no
      evaluation was spent.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, so_opt
      >>> f = lambda x: jnp.sum(x ** 2)
      >>> opt = so_opt.lbfgs(); x = jnp.ones(2); state = opt.init(x)
      >>> v, g = jax.value_and_grad(f)(x)
      >>> u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
      >>> x = optax.apply_updates(x, u)
      >>> v, g, reused = so_opt.value_and_grad_from_state(f, x, u, state)
      >>> bool(reused)
      True

    References:
      The same idea as ``optax.value_and_grad_from_state`` (optax, 2024),
      guarded here by an exact check of the updates.
    """
    caches = [
        leaf
        for leaf in jax.tree_util.tree_leaves(
            state, is_leaf=lambda x: isinstance(x, ValueGradCache)
        )
        if isinstance(leaf, ValueGradCache)
    ]
    loss_fn = (lambda p: value_fn(p)[0]) if has_aux else value_fn
    compute = lambda: jax.value_and_grad(loss_fn)(params)
    if not caches:
        return _from_optax_line_search(compute, params, state)
    if len(caches) != 1:
        value, grad = compute()
        return value, grad, jnp.asarray(False)
    cache = caches[0]
    cached, given = (jax.tree_util.tree_leaves(t) for t in (cache.updates, updates))
    if all(a is b for a, b in zip(cached, given, strict=True)):
        # The transform returned its cached step as traced: the match is known
        # while tracing, and no comparison or branch is compiled.
        return cache.value, otu.tree_cast_like(cache.grad, params), jnp.asarray(True)
    same = [
        jnp.all(jnp.asarray(a) == jnp.asarray(b))
        for a, b in zip(
            jax.tree_util.tree_leaves(cache.updates),
            jax.tree_util.tree_leaves(updates),
            strict=True,
        )
    ]
    hit = jnp.all(jnp.stack(same)) & jnp.isfinite(cache.value)
    value, grad = jax.lax.cond(
        hit,
        lambda: (cache.value, otu.tree_cast_like(cache.grad, params)),
        lambda: tuple(compute()),
    )
    return value, grad, hit


# optax's line searches keep the value and gradient at the point they accept.
_OPTAX_LINE_SEARCH_STATES = (
    optax.ScaleByZoomLinesearchState,
    optax.ScaleByBacktrackingLinesearchState,
)


def optax_line_search_states(state: base.PyTree) -> list[Any]:
    """The optax line-search states (zoom, backtracking) found in ``state``."""
    is_ls = lambda x: isinstance(x, _OPTAX_LINE_SEARCH_STATES)
    leaves = jax.tree_util.tree_leaves(state, is_leaf=is_ls)
    return [leaf for leaf in leaves if is_ls(leaf)]


def _from_optax_line_search(compute, params, state):
    """The value and gradient stored by an optax line search, else ``compute()``.

    The line search must end the chain (optax requires it), so that its stored
    point is ``params``; this is what ``optax.value_and_grad_from_state``
    assumes too. Its state starts with an infinite value, and the backtracking
    search stores no gradient unless built with ``store_grad=True``: then the
    value and gradient are computed.
    """
    found = [ls for ls in optax_line_search_states(state) if ls.grad is not None]
    if len(found) != 1:
        value, grad = compute()
        return value, grad, jnp.asarray(False)
    stored = found[0]
    # optax keeps the value in the params' dtype; the fresh branch matches it.
    dtype = jnp.result_type(stored.value)

    def fresh():
        value, grad = compute()
        return jnp.asarray(value).astype(dtype), otu.tree_cast_like(grad, params)

    hit = jnp.isfinite(stored.value)
    value, grad = jax.lax.cond(
        hit,
        lambda: (
            jnp.asarray(stored.value).astype(dtype),
            otu.tree_cast_like(stored.grad, params),
        ),
        fresh,
    )
    return value, grad, hit
