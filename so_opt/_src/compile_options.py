"""XLA compile options for the loops that run an optimizer to convergence.

XLA:CPU schedules a program for concurrency by default: its thunk executor
hands part of its ready queue to a pool thread whenever more than eight
kernels are ready at once. An L-BFGS step on a pytree of several small leaves
is a chain of microsecond kernels whose per-leaf copies become ready side by
side, so those hand-offs (a thread wake-up each, tens of microseconds on a
shared machine) cost more than the overlap gives. XLA's memory-optimized
scheduler orders the same kernels so that far fewer are ready together.

It is not a free win everywhere: in the Hessian-free CG loop on the digits
autoencoder the concurrency pays, and the memory-optimized order was slower
(measured in BENCHMARKS.md, issue 5; ``scripts/bench_scheduler.py``). So
the choice is per optimizer: a transformation marks itself with
:class:`LatencyBound` (``lbfgs``, ``bfgs`` and ``newton``, which never lost
beyond the machine's noise in that A/B), and :func:`so_opt.minimize` compiles
its loop with :data:`LATENCY_OPTIONS`. The measurements are XLA:CPU's, and
the option is an XLA:CPU one, so the choice is made only for params on the
CPU; on a GPU or TPU the loop gets that backend's defaults.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

import jax
import optax

# jax.jit refuses compiler options on a jit traced inside another one; the
# outer jit's options then apply. JAX has no public test for "inside a trace",
# so use its internal one when present, else look for traced params.
try:
    from jax._src.core import trace_state_clean as _trace_state_clean
except ImportError:  # pragma: no cover - a jax without it
    _trace_state_clean = None

logger = logging.getLogger(__name__)

LATENCY_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}

Frozen = tuple[tuple[str, str], ...]


class LatencyBound(optax.GradientTransformationExtraArgs):
    """An optimizer whose step is a chain of small kernels.

    The same ``(init, update)`` pair as ``optax.GradientTransformationExtraArgs``
    (and an instance of it); :func:`so_opt.minimize` compiles a loop over it
    with :data:`LATENCY_OPTIONS`.
    """

    __slots__ = ()


def freeze(options: Any, name: str = "compiler_options") -> Frozen:
    """Validates a mapping of XLA options and returns it as a hashable tuple.

    Values are passed on as the strings XLA parses (``jax.jit`` would make
    the same ones). Converting first matters for caching: ``True`` and ``1``
    are equal and hash alike in Python, so a cache keyed on the raw values
    (``jax.jit``'s own included) would hand the program compiled for one to
    a call with the other, while XLA takes only ``"True"`` for a boolean
    option. Values must be Python ``str``, ``bool``, ``int`` or ``float``
    (numpy floats, which subclass ``float``, count).
    """
    if not isinstance(options, Mapping):
        raise TypeError(
            f"`{name}` must be a mapping of XLA option names to values, got "
            f"{type(options).__name__}."
        )
    items = []
    for key, value in options.items():
        if not isinstance(key, str):
            raise TypeError(f"`{name}` keys must be strings, got {key!r}.")
        if isinstance(value, float):
            text = repr(float(value))
        elif isinstance(value, str | bool | int):
            text = str(value)
        else:
            where = type(value).__module__
            given = type(value).__qualname__
            given = given if where == "builtins" else f"{where}.{given}"
            raise TypeError(
                f"`{name}[{key!r}]` must be a Python str, bool, int or float, got "
                f"{given}."
            )
        items.append((key, text))
    return tuple(sorted(items))


@functools.cache
def supported(options: Frozen) -> bool:
    """Whether this jax and XLA accept ``options`` (probed once on a tiny program).

    The scheduler option is recent; with an older jaxlib the loop is compiled
    with XLA's defaults instead of failing.
    """
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(1.0).compile()
    except Exception as err:  # TypeError (old jax.jit) or XLA's INVALID_ARGUMENT
        logger.info(
            "XLA options %s not accepted here (%s); using defaults.", options, err
        )
        return False
    return True


def traced(params) -> bool:
    """Whether the caller is inside a JAX transformation (``jit``, ``vmap``...)."""
    if _trace_state_clean is not None:
        return not _trace_state_clean()
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(params))


def on_cpu(params) -> bool:
    """Whether ``params`` live on the CPU (numpy leaves: the default backend)."""
    platforms = {
        device.platform
        for leaf in jax.tree.leaves(params)
        if isinstance(leaf, jax.Array)
        for device in leaf.devices()
    }
    return platforms == {"cpu"} or (not platforms and jax.default_backend() == "cpu")


def for_optimizer(optimizer, options: Any | None, params=None) -> Frozen:
    """The options to compile ``optimizer``'s loop with.

    ``options`` given by the caller win, validated; ``None`` picks
    :data:`LATENCY_OPTIONS` for a :class:`LatencyBound` optimizer on params
    on the CPU, when this jaxlib supports them, and XLA's defaults
    otherwise. Inside another transformation the loop is part of the
    caller's program, which the caller compiles: no options then (given ones
    raise, naming why).
    """
    inside = traced(params)
    if options is not None:
        frozen = freeze(options)
        if frozen and inside:
            raise ValueError(
                "`compiler_options` apply to a top-level call of `minimize`; "
                "inside `jax.jit` or another transformation, pass them to the "
                "outermost `jax.jit` instead."
            )
        return frozen
    if inside:
        return ()
    if isinstance(optimizer, LatencyBound) and on_cpu(params) and supported(_LATENCY):
        return _LATENCY
    return ()


_LATENCY = freeze(LATENCY_OPTIONS)
