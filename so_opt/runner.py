"""Drive an optimizer on a :class:`~so_opt.problems.Problem` and record its costs.

The runner is the measuring instrument of the studies. Each step is one jitted
call: the loss and gradient on the current batch, then the optimizer's
``update`` with the so_opt extra arguments (``value``, ``grad``, ``value_fn``
and, where the problem has them, ``model_fn`` and ``output_loss_fn``). After
every step it blocks on the result and records the wall time and the work
counters: the driver's own gradient plus everything the optimizer counted in
its state (:func:`so_opt.costs`). Compilation happens in a warm-up call on a
throw-away copy, so it is not charged to any step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from so_opt import sharding
from so_opt._src import base
from so_opt.problems import Problem

logger = logging.getLogger(__name__)

REGIMES = ("full", "minibatch")
ValueAndGradMode = str  # "fresh" | "from_state"


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Budget and regime of one run.

    Attributes:
      regime: ``"full"`` (every step on the whole training set) or
        ``"minibatch"`` (shuffled batches, a new one each step).
      max_steps: step budget.
      max_seconds: wall-time budget (compilation excluded), or ``None``.
      batch_size: mini-batch size (``"minibatch"`` regime only).
      eval_every: in the mini-batch regime, evaluate the full training loss
        every this many steps (the full-batch regime records it every step).
      seed: seed of the initial params and of the batch order.
      max_grad_equivalents: work budget in gradient equivalents (needs the
        problem's measured cost ratios, see :func:`measure_cost_ratios`), or
        ``None``.

    The caps are checked after each step, and the step that crosses one is
    kept: a run overshoots a cap by at most one step, which matters for a
    method whose single step is dearer than the whole cap (exact Newton on a
    large k: one step, then ``status="max_grad_equivalents"``).
    """

    regime: str = "full"
    max_steps: int = 100
    max_seconds: float | None = None
    batch_size: int = 128
    eval_every: int = 10
    seed: int = 0
    max_grad_equivalents: float | None = None

    def __post_init__(self):
        if self.regime not in REGIMES:
            raise ValueError(
                f"`regime` must be one of {list(REGIMES)}, got {self.regime!r}."
            )
        base.check_int_at_least(self.max_steps, "max_steps", 1)
        base.check_int_at_least(self.batch_size, "batch_size", 1)
        base.check_int_at_least(self.eval_every, "eval_every", 1)
        if self.max_seconds is not None:
            base.check_positive(self.max_seconds, "max_seconds")
        if self.max_grad_equivalents is not None:
            base.check_positive(self.max_grad_equivalents, "max_grad_equivalents")


def _own_counts(state: Any) -> tuple[int, int, int]:
    """The optimizer's value, gradient and HVP counts, in one device transfer."""
    return tuple(int(n) for n in np.asarray(base.costs(state).counts))


def _wrap(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """Lets plain optax transforms (sgd, adam) ignore so_opt's extra args."""
    return optax.with_extra_args_support(optimizer)


def _state_value(state: Any) -> jax.Array | None:
    """The value an optax line search stored at the current params, if any."""
    return optax.tree_utils.tree_get(state, "value")


def make_step(
    problem: Problem,
    optimizer: optax.GradientTransformation,
    value_and_grad: ValueAndGradMode = "fresh",
    extra_arg_names: tuple[str, ...] | None = None,
) -> Callable:
    """Builds the jitted ``step(params, state, batch) -> (params, state, value, n)``.

    ``n`` is the number of gradients the driver itself evaluated (0 or 1):
    with ``value_and_grad="from_state"`` the value and gradient that optax's
    line searches store at the accepted point are reused, as optax documents
    for ``optax.lbfgs``, and only computed when the state has none.
    ``extra_arg_names`` restricts the closures passed to ``update`` (optax's
    line searches reject any they do not use); ``None`` passes all.
    """
    optimizer = _wrap(optimizer)

    def step(params, state, batch):
        value_fn = problem.value_fn(batch)
        if value_and_grad == "from_state":
            stored = _state_value(state)
            fresh = ~jnp.isfinite(stored)
            value, grad = optax.value_and_grad_from_state(value_fn)(params, state=state)
            driver_grads = fresh.astype(base.COUNTER_DTYPE)
        else:
            value, grad = jax.value_and_grad(value_fn)(params)
            driver_grads = jnp.ones((), base.COUNTER_DTYPE)
        extra = problem.extra_args(batch)
        if extra_arg_names is not None:
            extra = {k: v for k, v in extra.items() if k in extra_arg_names}
        updates, state = optimizer.update(
            grad, state, params, value=value, grad=grad, **extra
        )
        params = optax.apply_updates(params, updates)
        return params, state, value, driver_grads

    return jax.jit(step)


def _batches(problem: Problem, settings: RunSettings) -> Iterator[Any]:
    """Endless stream of batches for the regime (the full set, or shuffled)."""
    if settings.regime == "full" or problem.train is None:
        while True:
            yield problem.train
    epoch = 0
    while True:
        yield from problem.epoch_batches(settings.seed, epoch, settings.batch_size)
        epoch += 1


def run(
    problem: Problem,
    optimizer: optax.GradientTransformation,
    settings: RunSettings,
    *,
    value_and_grad: ValueAndGradMode = "fresh",
    extra_arg_names: tuple[str, ...] | None = None,
    peer_grad_evals: Callable[[Any], jax.Array] | None = None,
    progress: Callable[[int], None] | None = None,
    cost_ratios: dict[str, float] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
    """Runs ``optimizer`` on ``problem`` under ``settings`` and records history.

    Args:
      problem: the objective.
      optimizer: any optax transformation following the so_opt contract.
      settings: regime and budget.
      value_and_grad: ``"fresh"`` computes the loss and gradient every step;
        ``"from_state"`` reuses those stored by an optax line search.
      extra_arg_names: which problem closures ``update`` receives (``None``:
        ``value_fn`` and, where defined, ``model_fn`` and ``output_loss_fn``).
      peer_grad_evals: for peers that do not count their own work in an
        so_opt :class:`~so_opt.Costs` record, ``state -> gradients`` spent
        inside the last update (e.g. optax's zoom line-search steps).
      progress: called with the number of steps just finished (a tqdm hook).
      cost_ratios: the problem's measured cost ratios; required with
        ``settings.max_grad_equivalents``.
      mesh: a device mesh with a ``"data"`` axis
        (:func:`so_opt.sharding.make_mesh`): batches are sharded over it,
        params and optimizer state replicated. In the full-batch regime the
        training set must be a multiple of its device count (or pass a
        problem already trimmed by :func:`so_opt.sharding.shard_problem`
        with ``remainder="trim"``); in the mini-batch regime
        ``settings.batch_size`` must be, and a training set that does not
        divide is replicated. ``None``: the default device, unsharded.

    Returns:
      A JSON-ready dict: ``history`` (per recorded step: step, seconds, loss,
      train loss, value/gradient/HVP evaluations), ``final`` metrics,
      ``steps``, ``seconds``, ``status`` and the cumulative ``costs``.
    """
    if settings.max_grad_equivalents is not None and cost_ratios is None:
        raise ValueError(
            "`cost_ratios` is required when `settings.max_grad_equivalents` is set."
        )
    if mesh is not None:
        remainder = "error"
        if settings.regime == "minibatch":
            sharding.check_batch_size(settings.batch_size, mesh)
            # The whole set only feeds evaluations and the draw of batches
            # here, so one that does not divide is replicated, not refused.
            remainder = "replicate"
        problem = sharding.shard_problem(problem, mesh, remainder=remainder)
    params = problem.init_params(settings.seed)
    state = _wrap(optimizer).init(params)
    if mesh is not None:
        params, state = sharding.replicate((params, state), mesh)
    step = make_step(problem, optimizer, value_and_grad, extra_arg_names)
    batches = _batches(problem, settings)
    if mesh is not None:
        batches = (sharding.shard_batch(b, mesh) for b in batches)

    # Compile (and discard) two steps so that compilation is charged to nobody:
    # some states (optax's own line searches) change weak types after their
    # first update, which compiles a second version of the step.
    first = next(batches)
    warm = step(params, state, first)
    jax.block_until_ready(step(warm[0], warm[1], first))
    compiled = step._cache_size()

    history: dict[str, list] = {
        key: []
        for key in (
            "step",
            "seconds",
            "loss",
            "train_loss",
            "value_evals",
            "grad_evals",
            "hvp_evals",
        )
    }
    driver_grads = 0
    peer_grads = 0
    seconds = 0.0
    status = "max_steps"
    full_eval = jax.jit(problem.loss)
    batch = first
    steps = 0
    for steps in range(1, settings.max_steps + 1):
        start = time.perf_counter()
        params, state, value, n = step(params, state, batch)
        jax.block_until_ready((params, state))
        seconds += time.perf_counter() - start
        driver_grads += int(n)
        if peer_grad_evals is not None:
            peer_grads += int(peer_grad_evals(state))
        value = float(value)
        record = settings.regime == "full" or steps % settings.eval_every == 0
        own_values, own_grads, own_hvps = _own_counts(state)
        if record or steps == settings.max_steps:
            history["step"].append(steps)
            history["seconds"].append(seconds)
            history["loss"].append(value)
            if settings.regime == "full":
                # The step's value is the train loss at the params before it.
                history["train_loss"].append(value)
            else:
                history["train_loss"].append(float(full_eval(params, problem.train)))
            history["value_evals"].append(own_values)
            history["grad_evals"].append(driver_grads + peer_grads + own_grads)
            history["hvp_evals"].append(own_hvps)
        if progress is not None:
            progress(1)
        if not math.isfinite(value):
            status = "non_finite"
            break
        code = int(base.status(state))
        if code == base.StatusCode.LINE_SEARCH_FAILED:
            status = "line_search_failed"
            break
        if settings.max_seconds is not None and seconds >= settings.max_seconds:
            status = "max_seconds"
            break
        if settings.max_grad_equivalents is not None:
            work = gradient_equivalents(
                own_values, driver_grads + peer_grads + own_grads, own_hvps, cost_ratios
            )
            if work >= settings.max_grad_equivalents:
                status = "max_grad_equivalents"
                break
        batch = next(batches)

    if step._cache_size() > compiled:
        logger.warning(
            "the step recompiled during the run (state shapes or dtypes changed); "
            "that compilation time is in the recorded seconds"
        )
    final = problem.metrics(params)
    own_values, own_grads, own_hvps = _own_counts(state)
    costs = {
        "value_evals": own_values,
        "grad_evals": driver_grads + peer_grads + own_grads,
        "hvp_evals": own_hvps,
    }
    logger.debug("run finished: %d steps, %.2fs, %s", steps, seconds, status)
    return {
        "history": history,
        "final": final,
        "steps": steps,
        "seconds": seconds,
        "status": status,
        "costs": costs,
        "params_finite": bool(
            all(jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(params))
        ),
    }


def measure_cost_ratios(
    problem: Problem, seed: int = 0, repeats: int = 20
) -> dict[str, float]:
    """Measures the cost of a value and an HVP in gradients, on this problem.

    The study converts counters into gradient equivalents with these ratios,
    measured on the machine and problem at hand rather than assumed.
    Medians over ``repeats`` interleaved timings of jitted functions.
    """
    from so_opt._src.curvature import hvp

    params = problem.init_params(seed)
    batch = problem.train
    value = jax.jit(problem.loss)
    grad = jax.jit(jax.grad(problem.loss))
    product = jax.jit(lambda p, v, b: hvp(lambda q: problem.loss(q, b), p, v))
    calls = {
        "value": lambda: value(params, batch),
        "grad": lambda: grad(params, batch),
        "hvp": lambda: product(params, params, batch),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():
        jax.block_until_ready(fn())
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    return {
        "value_per_grad": median["value"] / median["grad"],
        "hvp_per_grad": median["hvp"] / median["grad"],
        "grad_seconds": median["grad"],
    }


def gradient_equivalents(
    value_evals: float, grad_evals: float, hvp_evals: float, ratios: dict
) -> float:
    """Work in gradients: ``grads + value_evals * r_v + hvp_evals * r_h``."""
    return (
        grad_evals
        + value_evals * ratios["value_per_grad"]
        + hvp_evals * ratios["hvp_per_grad"]
    )


def save_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON to ``path`` through a temporary file and an atomic rename.

    A reader (or a resumed study) sees either the old file or the complete
    new one, never a partial write, even if the process is killed midway.
    The file gets the mode a plain ``open(path, "w")`` would give it.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        # mkstemp creates the file 0600; give it the mode open() would (0666
        # less the umask), like every other output file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w") as handle:
            json.dump(obj, handle, indent=1, allow_nan=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
