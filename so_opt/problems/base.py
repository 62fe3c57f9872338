"""The :class:`Problem` record shared by every objective in so_opt.problems."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Batch = Any
Params = Any


@dataclasses.dataclass(frozen=True)
class Problem:
    """An objective to minimize: initial params, a loss on batches, data, metrics.

    Data problems hold ``(inputs, targets)`` batches as device arrays; test
    functions (Rosenbrock) have no data and ignore the batch argument.

    Attributes:
      name: registry name.
      init_params: ``init_params(seed) -> params``.
      loss: ``loss(params, batch) -> scalar`` (mean over the batch).
      train: the full training batch, or ``None`` for test functions.
      valid: a held-out validation batch (for tuning), or ``None``.
      test: the test batch, or ``None``.
      model_fn: ``model_fn(params, batch) -> outputs``, for Gauss-Newton
        curvature; ``None`` where the loss has no model/loss split.
      output_loss_fn: ``output_loss_fn(outputs, batch) -> scalar``.
      accuracy_fn: ``accuracy_fn(outputs, batch) -> scalar`` for classifiers.
      minimum: the known minimal value, if any.
      config: the keyword arguments that built the problem (for reports).
    """

    name: str
    init_params: Callable[[int], Params]
    loss: Callable[[Params, Batch], jax.Array]
    train: Batch | None = None
    valid: Batch | None = None
    test: Batch | None = None
    model_fn: Callable[[Params, Batch], Any] | None = None
    output_loss_fn: Callable[[Any, Batch], jax.Array] | None = None
    accuracy_fn: Callable[[Any, Batch], jax.Array] | None = None
    minimum: float | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_train(self) -> int:
        """Number of training examples (0 for test functions)."""
        return 0 if self.train is None else int(self.train[0].shape[0])

    def value_fn(self, batch: Batch | None = None) -> Callable[[Params], jax.Array]:
        """The loss as a function of params on ``batch`` (default: full train)."""
        batch = self.train if batch is None else batch
        return lambda params: self.loss(params, batch)

    def extra_args(self, batch: Batch | None = None) -> dict[str, Callable]:
        """Closures for ``update``: ``value_fn`` and, if split, Gauss-Newton ones."""
        batch = self.train if batch is None else batch
        args: dict[str, Callable] = {"value_fn": self.value_fn(batch)}
        if self.model_fn is not None and self.output_loss_fn is not None:
            model_fn, output_loss_fn = self.model_fn, self.output_loss_fn
            args["model_fn"] = lambda params: model_fn(params, batch)
            args["output_loss_fn"] = lambda outputs: output_loss_fn(outputs, batch)
        return args

    def epoch_batches(self, seed: int, epoch: int, batch_size: int) -> Iterator[Batch]:
        """Shuffled mini-batches of the training set for one epoch.

        The permutation depends only on ``(seed, epoch)``. A remainder smaller
        than ``batch_size`` is dropped for this epoch only: the order changes
        every epoch, so every example is still seen.

        Raises:
          ValueError: for test functions, or a ``batch_size`` outside
            ``[1, num_train]``.
        """
        if self.train is None:
            raise ValueError(f"Problem `{self.name}` has no data to batch.")
        if not 1 <= batch_size <= self.num_train:
            raise ValueError(
                f"`batch_size` must be in [1, {self.num_train}], got {batch_size}."
            )
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(self.num_train)
        for start in range(0, self.num_train - batch_size + 1, batch_size):
            index = jnp.asarray(order[start : start + batch_size])
            yield jax.tree_util.tree_map(lambda a, i=index: a[i], self.train)

    @functools.cached_property
    def _jitted_metrics(self) -> Callable[[Params, Batch], dict[str, jax.Array]]:
        # One compiled program instead of op-by-op dispatch, which is slow.
        def evaluate(params, batch):
            out = {"loss": self.loss(params, batch)}
            if self.accuracy_fn is not None and self.model_fn is not None:
                out["accuracy"] = self.accuracy_fn(self.model_fn(params, batch), batch)
            return out

        return jax.jit(evaluate)

    def metrics(self, params: Params) -> dict[str, float]:
        """Train loss and, where there is data, test loss and accuracy."""
        out = {}
        for split, batch in (
            ("train", self.train),
            ("valid", self.valid),
            ("test", self.test),
        ):
            if batch is None and split != "train":
                continue
            values = self._jitted_metrics(params, batch)
            out[f"{split}_loss"] = float(values["loss"])
            if split != "train" and "accuracy" in values:
                out[f"{split}_accuracy"] = float(values["accuracy"])
        return out


def reference_dtype(dtype: str | jnp.dtype | None) -> jnp.dtype:
    """``dtype``, or when None float64 if JAX's x64 mode is on, else float32.

    The convex reference problems are meant for float64; without x64 JAX
    would truncate a float64 request to float32 with a warning, so the
    default follows the mode instead.
    """
    if dtype is not None:
        return jnp.dtype(dtype)
    return jnp.dtype("float64" if jax.config.jax_enable_x64 else "float32")


def split_indices(
    num: int, seed: int, test_fraction: float, valid_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed, seeded train/validation/test split of ``range(num)``."""
    order = np.random.default_rng(seed).permutation(num)
    num_test = int(round(test_fraction * num))
    num_valid = int(round(valid_fraction * num))
    test = np.sort(order[:num_test])
    valid = np.sort(order[num_test : num_test + num_valid])
    train = np.sort(order[num_test + num_valid :])
    return train, valid, test


def standardize(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Standardizes columns with the training mean and standard deviation.

    Constant columns (the digits' always-blank border pixels) keep scale 1
    instead of dividing by zero.
    """
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return tuple((a - mean) / std for a in (train, *others))
