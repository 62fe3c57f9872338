"""Glue between Flax NNX modules and so_opt's functional optimizer contract.

so_opt optimizers want a params pytree and closures over it (``value_fn``, and
``model_fn`` / ``output_loss_fn`` for Gauss-Newton curvature). An
``nnx.Module`` holds its parameters as mutable state; :func:`nnx_objective`
splits it once into a static graph and the trainable ``nnx.Param`` state, and
builds those closures by merging them back inside the traced function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

Batch = Any


def _first(batch: Batch) -> Any:
    """Default model inputs: the first element of an ``(inputs, targets)`` batch."""
    return batch[0]


@dataclasses.dataclass(frozen=True)
class NNXObjective:
    """A loss over the ``nnx.Param`` state of an NNX model, on one batch.

    Attributes:
      params: the trainable parameters when the objective was built (an
        ``nnx.State``, a copy: ``nnx.update`` on the model leaves it as it
        is), the pytree to optimize.
      graphdef: the static structure of the model.
      rest: non-trainable variables (held fixed while optimizing).
      loss_fn: ``loss_fn(outputs, batch) -> scalar``.
      batch: the batch the closures evaluate on.
      inputs_fn: maps a batch to the model's inputs.
    """

    params: Any
    graphdef: Any
    rest: Any
    loss_fn: Callable[[Any, Batch], jax.Array]
    batch: Batch
    inputs_fn: Callable[[Batch], Any] = _first

    def apply(self, params: Any, inputs: Any) -> Any:
        """Runs the model with ``params`` on ``inputs`` (pure; jit-friendly)."""
        return self.merge(params)(inputs)

    def model_fn(self, params: Any) -> Any:
        """Model outputs on this objective's batch."""
        return self.apply(params, self.inputs_fn(self.batch))

    def output_loss_fn(self, outputs: Any) -> jax.Array:
        """Loss of ``outputs`` against this objective's batch."""
        return self.loss_fn(outputs, self.batch)

    def value_fn(self, params: Any) -> jax.Array:
        """The loss on this objective's batch: ``output_loss_fn(model_fn(params))``."""
        return self.output_loss_fn(self.model_fn(params))

    def extra_args(self) -> dict[str, Callable[..., Any]]:
        """The closures so_opt optimizers take as extra ``update`` arguments."""
        return {
            "value_fn": self.value_fn,
            "model_fn": self.model_fn,
            "output_loss_fn": self.output_loss_fn,
        }

    def merge(self, params: Any) -> nnx.Module:
        """A new model holding ``params`` (the original model is untouched).

        To write trained params into the original model in place instead,
        use ``nnx.update(model, params)``.
        """
        return nnx.merge(self.graphdef, params, self.rest)

    def with_batch(self, batch: Batch) -> NNXObjective:
        """The same objective on another batch (shares the graph, no copy)."""
        return dataclasses.replace(self, batch=batch)


def nnx_objective(
    model: nnx.Module,
    loss_fn: Callable[[Any, Batch], jax.Array],
    batch: Batch,
    *,
    inputs_fn: Callable[[Batch], Any] = _first,
) -> NNXObjective:
    """Builds params and loss closures for an NNX model, ready for so_opt.

    The model's ``nnx.Param`` variables become the params pytree; all other
    variables are held fixed. The closures are pure functions of params, so
    they can be passed to optimizers and differentiated for Hessian- and
    Gauss-Newton-vector products. Put trained params back with
    ``nnx.update(model, params)``. A model with batch statistics or dropout
    must be in evaluation mode (``model.eval()``) first: in training mode it
    updates its own state when called, which Flax refuses inside a trace.

    Args:
      model: an ``nnx.Module``.
      loss_fn: ``loss_fn(outputs, batch) -> scalar``, e.g. mean cross-entropy.
      batch: the batch to evaluate on; by default an ``(inputs, targets)``
        tuple whose first element is fed to the model.
      inputs_fn: maps a batch to the model's inputs, for other batch layouts.

    Returns:
      An :class:`NNXObjective` with ``params``, ``value_fn``, ``model_fn``,
      ``output_loss_fn`` and ``extra_args()``.

    Raises:
      TypeError: if ``model`` is not an ``nnx.Module`` or has no ``nnx.Param``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, so_opt
      >>> from flax import nnx
      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> x = jnp.ones((4, 2)); y = jnp.zeros((4, 1))
      >>> mse = lambda out, batch: jnp.mean((out - batch[1]) ** 2)
      >>> obj = so_opt.nnx_objective(model, mse, (x, y))
      >>> opt = so_opt.armijo_sgd()
      >>> params = obj.params; state = opt.init(params)
      >>> value, grad = jax.value_and_grad(obj.value_fn)(params)
      >>> updates, state = opt.update(grad, state, params, value=value,
      ...                             grad=grad, **obj.extra_args())
      >>> params = optax.apply_updates(params, updates)
      >>> nnx.update(model, params)
      >>> bool(obj.value_fn(params) < value)
      True
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(
            f"`model` must be a flax.nnx.Module, got {type(model).__name__}."
        )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if not jax.tree_util.tree_leaves(params):
        raise TypeError("`model` has no nnx.Param variables to optimize.")
    # nnx.split hands out the model's own Variable objects, which a later
    # nnx.update(model, ...) rewrites in place: the starting params (and the
    # held variables) are copied, so the objective stays what it was built as.
    params, rest = jax.tree.map(lambda x: x, (params, rest))
    return NNXObjective(params, graphdef, rest, loss_fn, batch, inputs_fn)
