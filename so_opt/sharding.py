"""Data-parallel runs over a device mesh with :mod:`jax.sharding`.

so_opt's optimizers need no change to run data-parallel: the loss is a mean
over the batch, so sharding the batch over a ``"data"`` mesh axis and
replicating params and optimizer state lets XLA split every forward pass,
gradient, line-search trial, Hessian-vector product and CG step over the
devices and insert the all-reduces itself. The answers are those of one
device up to the order of float reductions.

The rules:

- A batch is sharded along its leading (example) axis with
  ``NamedSharding(mesh, P("data"))``; its size must be a multiple of the
  number of devices on the axis, or :func:`shard_batch` raises. Nothing is
  padded and nothing is dropped silently.
- A problem's full training set (the full-batch regime) follows the same
  rule; :func:`shard_problem` with ``remainder="trim"`` instead drops the
  last ``num_train % num_devices`` examples with a :class:`UserWarning`
  that says how many. In the mini-batch regime the whole training set only
  feeds evaluations and the draw of batches, so the runner asks for
  ``remainder="replicate"``: kept whole on every device when it does not
  divide.
- Validation and test sets only feed metrics: they are sharded when their
  size divides, and replicated otherwise, so no example is ever left out of
  an evaluation.
- Params and optimizer state are replicated (:func:`replicate`).

Known shortcoming: nothing is sharded but the data. Params and optimizer
state are always replicated, so a model too large for one device does not
fit here either, and dense ``newton`` holds its k x k Hessian and repeats
its Cholesky solve on every device (the Hessian-vector products that build
the matrix are split over the batch; the solve is not).

On several hosts, call :func:`jax.distributed.initialize` first (see
``scripts/multihost_example.py``); :func:`make_mesh` then spans the devices
of every process, and each process builds the same global arrays here from
its own copy of the data.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from so_opt.problems import Problem

DATA_AXIS = "data"
REMAINDERS = ("error", "trim", "replicate")

_MSG_NOT_DIVISIBLE = (
    "`{name}` must be a multiple of the {devices} devices on the mesh's "
    "`{axis}` axis, got {size}{detail}."
)


def make_mesh(
    num_devices: int | None = None,
    *,
    devices: Sequence[jax.Device] | None = None,
    axis_name: str = DATA_AXIS,
) -> Mesh:
    """A one-axis data-parallel mesh over the first ``num_devices`` devices.

    Args:
      num_devices: how many devices the data axis spans; ``None`` takes all
        of ``devices``.
      devices: the devices to choose from; default :func:`jax.devices` (on
        several hosts, the devices of every process).
      axis_name: name of the mesh axis the batches are sharded over.

    Returns:
      A :class:`jax.sharding.Mesh` with the single axis ``axis_name``.

    Raises:
      ValueError: if ``num_devices`` is not in ``[1, len(devices)]``.

    Examples:
      >>> from so_opt import sharding
      >>> mesh = sharding.make_mesh(1)
      >>> dict(mesh.shape)
      {'data': 1}
    """
    devices = list(jax.devices() if devices is None else devices)
    if num_devices is None:
        num_devices = len(devices)
    if isinstance(num_devices, bool) or not 1 <= num_devices <= len(devices):
        hint = ""
        if devices[0].platform == "cpu":
            hint = (
                "; for more CPU devices set XLA_FLAGS="
                "--xla_force_host_platform_device_count=N before JAX starts"
            )
        raise ValueError(
            f"`num_devices` must be in [1, {len(devices)}] (the devices "
            f"available), got {num_devices!r}{hint}."
        )
    return Mesh(np.asarray(devices[:num_devices]), (axis_name,))


def data_size(mesh: Mesh, axis_name: str = DATA_AXIS) -> int:
    """Number of devices on the data axis of ``mesh``.

    Raises:
      ValueError: if ``mesh`` has no axis named ``axis_name``.
    """
    if axis_name not in mesh.shape:
        raise ValueError(
            f"`mesh` must have an axis named {axis_name!r}, got axes "
            f"{tuple(mesh.axis_names)}."
        )
    return int(mesh.shape[axis_name])


def check_batch_size(
    batch_size: int, mesh: Mesh, axis_name: str = DATA_AXIS, name: str = "batch_size"
) -> None:
    """Raises unless ``batch_size`` divides evenly over the data axis.

    Raises:
      ValueError: naming ``name``, the device count and the size received.
    """
    devices = data_size(mesh, axis_name)
    if batch_size % devices:
        raise ValueError(
            _MSG_NOT_DIVISIBLE.format(
                name=name, devices=devices, axis=axis_name, size=batch_size, detail=""
            )
        )


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    """Places one array under ``sharding``, on one host or on several."""
    if jax.process_count() == 1 or (
        isinstance(x, jax.Array) and not x.is_fully_addressable
    ):
        return jax.device_put(x, sharding)
    # Several processes, each with the same host copy: each one fills only
    # the shards of its own devices.
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])


def shard_batch(
    batch: Any, mesh: Mesh, axis_name: str = DATA_AXIS, name: str = "batch_size"
) -> Any:
    """Shards every leaf of ``batch`` along its leading axis over ``axis_name``.

    Args:
      batch: a pytree of arrays with a common leading (example) axis, such
        as ``(inputs, targets)``; ``None`` (no data) is returned as is.
      mesh: the device mesh.
      axis_name: the mesh axis to shard over.
      name: the name the error uses for the batch size.

    Returns:
      The same pytree, each leaf under ``NamedSharding(mesh, P(axis_name))``.

    Raises:
      ValueError: if a leaf's leading size is not a multiple of the number
        of devices on ``axis_name`` (examples are never dropped silently).

    Examples:
      >>> import jax.numpy as jnp
      >>> from so_opt import sharding
      >>> mesh = sharding.make_mesh(1)
      >>> x, y = sharding.shard_batch((jnp.ones((8, 3)), jnp.zeros(8)), mesh)
      >>> tuple(x.sharding.spec)
      ('data',)
    """
    devices = data_size(mesh, axis_name)
    spec = NamedSharding(mesh, PartitionSpec(axis_name))

    def place(x):
        shape = np.shape(x)
        if not shape or shape[0] % devices:
            size = shape[0] if shape else "a scalar"
            raise ValueError(
                _MSG_NOT_DIVISIBLE.format(
                    name=name,
                    devices=devices,
                    axis=axis_name,
                    size=size,
                    detail=f" (a batch leaf of shape {shape})",
                )
            )
        return _put(x, spec)

    return jax.tree_util.tree_map(place, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a full copy of every leaf of ``tree`` on every device of ``mesh``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from so_opt import sharding
      >>> params = sharding.replicate({"w": jnp.ones(3)}, sharding.make_mesh(1))
      >>> params["w"].sharding.is_fully_replicated
      True
    """
    spec = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda x: _put(x, spec), tree)


def _trim(batch: Any, size: int) -> Any:
    return jax.tree_util.tree_map(lambda x: x[:size], batch)


def _num_examples(batch: Any) -> int:
    return int(np.shape(jax.tree_util.tree_leaves(batch)[0])[0])


def shard_problem(
    problem: Problem,
    mesh: Mesh,
    *,
    remainder: str = "error",
    axis_name: str = DATA_AXIS,
) -> Problem:
    """The problem with its data sharded over the data axis of ``mesh``.

    The training set is sharded with :func:`shard_batch`. When its size is
    not a multiple of the device count ``n``, ``remainder`` decides:
    ``"error"`` raises, ``"trim"`` drops the last ``num_train % n`` examples
    (in the stored order) and warns how many, ``"replicate"`` keeps every
    example with a full copy on each device (for a training set that only
    feeds evaluations and the draw of mini-batches). Validation and test
    sets are sharded when their size divides by ``n`` and replicated
    otherwise, so metrics always use every example. Test functions (no data) come back
    unchanged.

    Args:
      problem: the objective.
      mesh: the device mesh.
      remainder: ``"error"``, ``"trim"`` or ``"replicate"``.
      axis_name: the mesh axis to shard over.

    Returns:
      A copy of ``problem`` with placed ``train``, ``valid`` and ``test``.

    Raises:
      ValueError: for an unknown ``remainder``, or with ``"error"`` a
        training set that does not divide over the axis.

    Examples:
      >>> from so_opt import problems, sharding
      >>> mesh = sharding.make_mesh(1)
      >>> p = sharding.shard_problem(problems.digits_mlp(hidden=(4,)), mesh)
      >>> p.num_train, tuple(p.train[0].sharding.spec)
      (1258, ('data',))
    """
    if remainder not in REMAINDERS:
        raise ValueError(
            f"`remainder` must be one of {list(REMAINDERS)}, got {remainder!r}."
        )
    if problem.train is None:
        return problem
    devices = data_size(mesh, axis_name)
    train = problem.train
    num_train = problem.num_train
    extra = num_train % devices
    if extra and remainder == "error":
        raise ValueError(
            _MSG_NOT_DIVISIBLE.format(
                name="problem.train",
                devices=devices,
                axis=axis_name,
                size=f"{num_train} examples",
                detail=(
                    f"; pass `remainder='trim'` to drop the last {extra} of them, "
                    "or use a device count that divides the training set"
                ),
            )
        )
    if extra and remainder == "trim":
        warnings.warn(
            f"shard_problem: dropping the last {extra} of {num_train} training "
            f"examples of `{problem.name}` so that the training set divides over "
            f"{devices} devices (remainder='trim').",
            UserWarning,
            stacklevel=2,
        )
        train = _trim(train, num_train - extra)

    def place(batch, name):
        # Shard what divides, replicate what does not: never drop an example.
        if batch is None:
            return None
        if _num_examples(batch) % devices:
            return replicate(batch, mesh)
        return shard_batch(batch, mesh, axis_name, name=name)

    return dataclasses.replace(
        problem,
        train=place(train, "problem.train"),
        valid=place(problem.valid, "problem.valid"),
        test=place(problem.test, "problem.test"),
    )
