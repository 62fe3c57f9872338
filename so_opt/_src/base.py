"""Shared vocabulary of so_opt: tree aliases, cost counters and step status.

Every so_opt optimizer state carries a :class:`Costs` record of the work the
optimizer itself performed (line-search trials, extra gradients, curvature
products) and a :class:`Status` code. The gradient handed to ``update`` by the
caller is *not* counted by the optimizer: the loop that computed it (the
caller, :func:`so_opt.minimize` or the study runner) adds its own evaluations.
"""

from __future__ import annotations

import enum
import functools
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Params = Any
Updates = Any
PyTree = Any

COUNTER_DTYPE = jnp.int32


class Costs(NamedTuple):
    """Work counters kept in an optimizer state.

    The three counts live in one int32 vector: a jitted step then carries one
    state buffer for them instead of three, which is measurable on steps of a
    few microseconds. Read them by name.

    Attributes:
      counts: int32 ``[value_evals, grad_evals, hvp_evals]``.
      value_evals: evaluations of ``value_fn`` (a forward pass each).
      grad_evals: evaluations of the gradient (a forward and a backward pass).
      hvp_evals: Hessian- or Gauss-Newton-vector products.
    """

    counts: jax.Array

    @property
    def value_evals(self) -> jax.Array:
        return self.counts[0]

    @property
    def grad_evals(self) -> jax.Array:
        return self.counts[1]

    @property
    def hvp_evals(self) -> jax.Array:
        return self.counts[2]

    def __repr__(self) -> str:
        try:
            value, grad, hvp = (int(c) for c in self.counts)
        except TypeError:  # traced counts (jax's conversion errors subclass it)
            return f"Costs(counts={self.counts!r})"
        return f"Costs(value_evals={value}, grad_evals={grad}, hvp_evals={hvp})"


def zero_costs() -> Costs:
    """Returns a :class:`Costs` record with all counters at zero."""
    return Costs(jnp.zeros(3, COUNTER_DTYPE))


def add_costs(
    costs: Costs, value_evals: Any = 0, grad_evals: Any = 0, hvp_evals: Any = 0
) -> Costs:
    """Returns ``costs`` with the given counts added, keeping the counter dtype."""
    added = pack_scalars((value_evals, grad_evals, hvp_evals), COUNTER_DTYPE)
    return Costs(costs.counts + added)


def pack_scalars(values: Any, dtype: Any) -> jax.Array:
    """Stacks scalars into one vector of ``dtype`` that XLA:CPU builds in one kernel.

    The vector is assembled by selects against its index rather than by
    ``jnp.stack``: a stack of computed scalars compiles on XLA:CPU to one
    kernel per scalar plus a concatenate, and a dozen tiny kernels ready at
    once make the thunk executor hand half of them to its thread pool, which
    costs more than the kernels do. The selects, with the scalar arithmetic
    feeding them, fuse into one kernel.
    """
    # The masks are numpy constants: built with jnp they are loop-invariant
    # computations that XLA hoists out of a loop as one kernel each.
    index = np.arange(len(values))
    vec = jnp.zeros(len(values), dtype)
    for i, value in enumerate(values):
        vec = jnp.where(index == i, jnp.asarray(value).astype(dtype), vec)
    return vec


def costs(state: PyTree) -> Costs:
    """Sums every :class:`Costs` record found in an optimizer state.

    Works on a single so_opt state and on states nested in ``optax.chain``
    and other combinators that keep their inner states in a pytree. (so_opt
    optimizers do not support ``optax.inject_hyperparams``: their
    hyperparameters are checked in Python when the optimizer is built.) A
    state with no so_opt component gives zeros.

    Args:
      state: any optimizer state pytree.

    Returns:
      A :class:`Costs` with the summed counters.

    Examples:
      >>> import jax.numpy as jnp, so_opt
      >>> opt = so_opt.armijo_sgd()
      >>> int(so_opt.costs(opt.init(jnp.zeros(3))).value_evals)
      0
    """
    found = [
        leaf
        for leaf in jax.tree_util.tree_leaves(
            state, is_leaf=lambda x: isinstance(x, Costs)
        )
        if isinstance(leaf, Costs)
    ]
    if not found:
        return zero_costs()
    return Costs(sum((record.counts for record in found[1:]), found[0].counts))


class StatusCode(enum.IntEnum):
    """Outcome of an optimizer step or of a :func:`so_opt.minimize` run."""

    RUNNING = 0
    CONVERGED = 1
    MAX_STEPS = 2
    LINE_SEARCH_FAILED = 3
    NON_FINITE = 4
    CURVATURE_FAILED = 5


class Status(NamedTuple):
    """Status of the latest step of an so_opt optimizer (a :class:`StatusCode`).

    Attributes:
      code: int32 scalar; ``StatusCode.RUNNING`` when the last step went well.
    """

    code: jax.Array


def ok_status() -> Status:
    """Returns a :class:`Status` holding ``StatusCode.RUNNING``."""
    return Status(jnp.asarray(int(StatusCode.RUNNING), COUNTER_DTYPE))


def make_status(code: Any) -> Status:
    """Wraps an int (or traced int) status code with the counter dtype."""
    return Status(jnp.asarray(code, COUNTER_DTYPE))


def all_finite(tree: PyTree) -> jax.Array:
    """Whether every entry of every leaf of ``tree`` is finite (True if empty)."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def refuse_non_finite(grad: PyTree, updates: Updates, new_state, old_state):
    """A rule's step, or a zero step and its old state if ``grad`` is not finite.

    For the element-wise rules (Rprop, delta-bar-delta): a NaN or infinite
    gradient entry would otherwise become a NaN step and, kept in the state,
    poison that entry's adaptation for good. The refused step reports
    ``NON_FINITE`` in the state's ``status`` field.

    Returns:
      ``(updates, state)``.
    """
    finite = all_finite(grad)
    updates = jax.tree_util.tree_map(lambda u: jnp.where(finite, u, 0), updates)
    kept = jax.tree_util.tree_map(
        lambda a, b: jnp.where(finite, a, b), new_state, old_state
    )
    code = jnp.where(finite, StatusCode.RUNNING, StatusCode.NON_FINITE)
    return updates, kept._replace(status=make_status(code))


def status(state: PyTree) -> jax.Array:
    """Returns the worst (largest) :class:`StatusCode` found in a state.

    Args:
      state: any optimizer state pytree.

    Returns:
      An int32 scalar; ``StatusCode.RUNNING`` (0) when no component failed or
      when the state holds no so_opt component.
    """
    codes = [
        leaf.code
        for leaf in jax.tree_util.tree_leaves(
            state, is_leaf=lambda x: isinstance(x, Status)
        )
        if isinstance(leaf, Status)
    ]
    worst = jnp.zeros((), COUNTER_DTYPE)
    for code in codes:
        worst = jnp.maximum(worst, code)
    return worst


# Extra arguments of ``update`` that are functions, not values.
_CLOSURE_ARGS = frozenset(
    {
        "value_fn",
        "model_fn",
        "output_loss_fn",
        "curvature_value_fn",
        "curvature_model_fn",
        "curvature_output_loss_fn",
    }
)


def extra_arg(extra_args: dict[str, Any], name: str, caller: str) -> Any:
    """Fetches a required extra argument of ``update`` or raises a clear error.

    The closures of the contract (``value_fn``, ``model_fn``,
    ``output_loss_fn``) must be callable: a number passed by mistake would
    otherwise fail deep inside a trace, without naming the argument.
    """
    if name not in extra_args or extra_args[name] is None:
        given = sorted(k for k, v in extra_args.items() if v is not None) or "none"
        raise TypeError(
            f"`{caller}` needs the extra argument `{name}=` in `update`; "
            f"received extra arguments: {given}."
        )
    arg = extra_args[name]
    if name in _CLOSURE_ARGS and not callable(arg):
        raise TypeError(
            f"`{caller}` needs a function of the params as `{name}=`, got "
            f"{type(arg).__name__} {arg!r:.60}."
        )
    return arg


def check_scalar(value: Any, name: str, caller: str) -> jax.Array:
    """Returns ``value`` as an array, raising ``ValueError`` unless it is 0-d.

    A loss left unreduced (a missing ``.mean()``) would otherwise broadcast
    into the step and silently change the shape of the params.
    """
    value = jnp.asarray(value)
    if value.ndim:
        raise ValueError(
            f"`{caller}` needs a scalar loss in `{name}`, got shape {value.shape} "
            "(reduce the per-example losses, e.g. with .mean())."
        )
    return value


def check_float_params(params: PyTree, name: str = "params") -> None:
    """Raises ``TypeError`` unless every leaf of ``params`` is floating point."""
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError(f"`{name}` must hold at least one array, got {params!r}.")
    for leaf in leaves:
        # An array's own dtype is read directly: jnp.result_type costs tens of
        # microseconds per call, which a short jitted run would notice.
        dtype = getattr(leaf, "dtype", None)
        dtype = jnp.result_type(leaf) if dtype is None else dtype
        if not _is_floating(dtype):
            raise TypeError(
                f"`{name}` must hold floating-point arrays, got a leaf of dtype "
                f"{dtype}."
            )


@functools.lru_cache(maxsize=64)
def _is_floating(dtype: Any) -> bool:
    # Cached: jnp.issubdtype takes microseconds, and so_opt.minimize checks
    # every leaf on every call.
    return bool(jnp.issubdtype(dtype, jnp.floating))


def check_one_dtype(tree: PyTree, name: str, caller: str) -> None:
    """Raises ``TypeError`` unless the leaves of ``tree`` share one dtype.

    For methods whose loops carry scalars, or mix leaves in sums, in a single
    dtype: mixed leaves would otherwise fail deep inside ``jax.lax``.
    """
    dtypes = sorted({str(jnp.result_type(leaf)) for leaf in jax.tree.leaves(tree)})
    if len(dtypes) > 1:
        raise TypeError(
            f"`{name}` of `{caller}` must hold leaves of one floating dtype; got "
            f"leaves of dtypes {', '.join(dtypes)}. Cast them to one dtype."
        )


def check_bool(value: Any, name: str) -> None:
    """Raises ``TypeError`` unless ``value`` is a bool (Python or numpy)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(
            f"`{name}` must be True or False, got {value!r} of type "
            f"{type(value).__name__}."
        )


def check_real(value: Any, name: str) -> None:
    """Raises ``TypeError`` unless ``value`` is a real number (not a bool).

    Python and numpy numbers count, and so do 0-d numeric arrays.
    """
    if isinstance(value, bool | np.bool_):
        ok = False
    elif isinstance(value, numbers.Real):
        ok = True
    else:
        dtype = getattr(value, "dtype", None)
        ok = (
            dtype is not None
            and np.ndim(value) == 0
            and (
                jnp.issubdtype(dtype, jnp.floating)
                or jnp.issubdtype(dtype, jnp.integer)
            )
        )
    if not ok:
        raise TypeError(
            f"`{name}` must be a real number, got {value!r} of type "
            f"{type(value).__name__}."
        )


def check_in_open_interval(value: float, name: str, low: float, high: float) -> None:
    """Raises unless ``value`` is a real number with ``low < value < high``.

    ``TypeError`` for a value that is not a real number, ``ValueError`` for
    one outside the interval.
    """
    check_real(value, name)
    if not low < value < high:
        raise ValueError(f"`{name}` must be in ({low}, {high}), got {value}.")


def check_positive(value: float, name: str, allow_zero: bool = False) -> None:
    """Raises unless ``value`` is a finite real ``> 0`` (or ``>= 0`` if allowed).

    ``TypeError`` for a value that is not a real number, ``ValueError`` for
    one that is not finite or out of range.
    """
    if type(value) is float or type(value) is int:
        finite = math.isfinite(value)  # the common case, without numpy
    else:
        check_real(value, name)
        finite = np.isfinite(value)
    bound = ">= 0" if allow_zero else "> 0"
    if not finite:
        raise ValueError(f"`{name}` must be finite and {bound}, got {value}.")
    if not (value >= 0 if allow_zero else value > 0):
        raise ValueError(f"`{name}` must be {bound}, got {value}.")


def check_positive_unless_traced(
    value: Any, name: str, allow_zero: bool = False
) -> None:
    """:func:`check_positive` for a value that may also be traced under jit.

    A traced value cannot be inspected while tracing, so it is let through;
    everything else (Python and numpy numbers, concrete 0-d arrays, and wrong
    kinds such as strings or ``None``) is checked.
    """
    if not isinstance(value, jax.core.Tracer):
        check_positive(value, name, allow_zero)


def check_int_at_least(value: int, name: str, low: int) -> None:
    """Raises ``ValueError`` unless ``value`` is an integer with ``value >= low``.

    numpy integers count (a config read with numpy gives ``np.int64``); bools
    do not, although Python treats them as integers.
    """
    is_int = isinstance(value, numbers.Integral) and not isinstance(
        value, bool | np.bool_
    )
    if not is_int or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")


def params_dtype(params: PyTree) -> jnp.dtype:
    """Checks that ``params`` are floating point; returns their common dtype."""
    check_float_params(params)
    return jnp.result_type(*jax.tree_util.tree_leaves(params))


def check_not_below(value: float, name: str, bound: float, bound_name: str) -> None:
    """Raises unless ``value`` is a real number ``>= bound`` (another argument)."""
    check_real(value, name)
    if not value >= bound:
        raise ValueError(f"`{name}` must be >= `{bound_name}` ({bound}), got {value}.")
