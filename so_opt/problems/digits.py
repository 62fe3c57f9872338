"""A Flax NNX MLP classifier on scikit-learn's bundled 8x8 handwritten digits."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from so_opt._src.nnx_glue import nnx_objective
from so_opt.problems.base import Problem, split_indices, standardize

_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}


class MLP(nnx.Module):
    """A fully connected network: ``Linear -> act -> ... -> Linear``."""

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        self.layers = nnx.List(
            [
                nnx.Linear(a, b, dtype=dtype, param_dtype=dtype, rngs=rngs)
                for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            ]
        )
        self.activation = _ACTIVATIONS[activation]

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


def load_digits_arrays(
    seed: int = 0, test_fraction: float = 0.2, valid_fraction: float = 0.1
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The digits as standardized float64 arrays, split train/valid/test."""
    from sklearn.datasets import load_digits  # study extra, imported on use

    data = load_digits()
    x = np.asarray(data.data, np.float64)
    y = np.asarray(data.target, np.int32)
    train, valid, test = split_indices(len(y), seed, test_fraction, valid_fraction)
    x_train, x_valid, x_test = standardize(x[train], x[valid], x[test])
    return {
        "train": (x_train, y[train]),
        "valid": (x_valid, y[valid]),
        "test": (x_test, y[test]),
    }


def _cross_entropy(logits: jax.Array, batch) -> jax.Array:
    """Mean softmax cross-entropy of integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()


def _accuracy(logits: jax.Array, batch) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, axis=-1) == batch[1])


def digits_mlp(
    hidden: Sequence[int] = (32,),
    activation: str = "tanh",
    dtype: str | jnp.dtype = "float32",
    split_seed: int = 0,
) -> Problem:
    """Softmax cross-entropy of an NNX MLP on the 8x8 digits (1,797 images).

    Inputs are standardized with training statistics; the train/valid/test
    split (70/10/20 %) is fixed by ``split_seed``. The parameter count is
    ``sum((a + 1) * b)`` over consecutive layer sizes ``64, *hidden, 10``.

    Args:
      hidden: hidden layer widths; vary them to vary the parameter count k.
      activation: ``"tanh"``, ``"relu"`` or ``"sigmoid"``.
      dtype: parameter and data dtype.
      split_seed: seed of the fixed data split.

    Returns:
      A :class:`Problem` whose params are an ``nnx.State``.

    Examples:
      >>> from so_opt import problems
      >>> p = problems.digits_mlp(hidden=(16,))
      >>> params = p.init_params(0)
      >>> p.num_train, problems.num_params(params)
      (1258, 1210)
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {activation!r}."
        )
    hidden = tuple(int(h) for h in hidden)
    if any(h < 1 for h in hidden):
        raise ValueError(f"`hidden` widths must be >= 1, got {hidden}.")
    dtype = jnp.dtype(dtype)
    arrays = load_digits_arrays(split_seed)
    to_device = lambda xy: (jnp.asarray(xy[0], dtype), jnp.asarray(xy[1]))
    sizes = (64, *hidden, 10)

    def make_model(seed: int) -> MLP:
        return MLP(sizes, activation, dtype, nnx.Rngs(seed))

    train = to_device(arrays["train"])
    template = nnx_objective(make_model(0), _cross_entropy, train)

    def init_params(seed: int):
        return nnx.split(make_model(seed), nnx.Param, ...)[1]

    def model_fn(params, batch):
        return template.apply(params, batch[0])

    def loss(params, batch):
        return _cross_entropy(model_fn(params, batch), batch)

    return Problem(
        name="digits_mlp",
        init_params=init_params,
        loss=loss,
        train=train,
        valid=to_device(arrays["valid"]),
        test=to_device(arrays["test"]),
        model_fn=model_fn,
        output_loss_fn=_cross_entropy,
        accuracy_fn=_accuracy,
        config={"hidden": list(hidden), "activation": activation, "dtype": dtype.name},
    )
