"""A deep Flax NNX autoencoder on scikit-learn's bundled 8x8 digits.

The small-scale form of the deep autoencoders (Hinton and Salakhutdinov, 2006)
on which Hessian-free optimization famously beat gradient descent (Martens,
2010): a narrowing stack of logistic layers, a linear code layer, and the
mirror image back to the 64 pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from so_opt._src.nnx_glue import nnx_objective
from so_opt.problems.base import Problem, split_indices

_ACTIVATIONS = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}
LOSSES = ("bernoulli", "squared")


class Autoencoder(nnx.Module):
    """``64 -> *encoder -> code -> *reversed(encoder) -> 64`` with a linear code.

    Hidden layers use ``activation``; the code layer and the output layer are
    linear (the output is a logit or a pre-activation, squashed by the loss).
    """

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
        self.code_index = (len(sizes) - 1) // 2 - 1
        self.activation = _ACTIVATIONS[activation]

    def __call__(self, x: jax.Array) -> jax.Array:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i not in (self.code_index, last):
                x = self.activation(x)
        return x


def load_digit_pixels(
    seed: int = 0, test_fraction: float = 0.2, valid_fraction: float = 0.1
) -> dict[str, np.ndarray]:
    """The digits' pixels scaled to [0, 1] (float64), split train/valid/test."""
    from sklearn.datasets import load_digits  # study extra, imported on use

    pixels = np.asarray(load_digits().data, np.float64) / 16.0
    train, valid, test = split_indices(len(pixels), seed, test_fraction, valid_fraction)
    return {"train": pixels[train], "valid": pixels[valid], "test": pixels[test]}


def _bernoulli(logits: jax.Array, batch) -> jax.Array:
    # Pixel intensities in [0, 1] are the Bernoulli targets; summed over pixels.
    loss = optax.sigmoid_binary_cross_entropy(logits, batch[1])
    return jnp.mean(jnp.sum(loss, axis=-1))


def _squared(outputs: jax.Array, batch) -> jax.Array:
    # Half the squared reconstruction error of the logistic outputs.
    return 0.5 * jnp.mean(jnp.sum((outputs - batch[1]) ** 2, axis=-1))


def digits_autoencoder(
    encoder: Sequence[int] = (32, 16),
    code: int = 6,
    activation: str = "sigmoid",
    loss: str = "bernoulli",
    dtype: str | jnp.dtype = "float32",
    split_seed: int = 0,
) -> Problem:
    r"""Reconstruction loss of a deep NNX autoencoder on the 8x8 digits.

    The layer sizes are ``64, *encoder, code, *reversed(encoder), 64``; the
    hidden units use ``activation``, the code units are linear. With the
    logistic output :math:`\hat x = \sigma(z)` and pixels :math:`x \in [0,
    1]^{64}`, the per-image losses are

    .. math::
      \ell_{\rm bernoulli} = -\sum_j x_j \log \hat x_j + (1 - x_j)
      \log(1 - \hat x_j), \qquad
      \ell_{\rm squared} = \tfrac12 \sum_j (\hat x_j - x_j)^2 ,

    averaged over the batch. The Bernoulli loss is convex in the logits
    :math:`z`, so ``model_fn`` returns logits and the Gauss-Newton matrix is
    positive semi-definite; for the squared loss ``model_fn`` returns
    :math:`\hat x`. Batches are ``(pixels, pixels)``.

    Args:
      encoder: widths of the encoder's hidden layers (mirrored in the decoder).
      code: width of the linear code layer.
      activation: ``"sigmoid"`` or ``"tanh"``.
      loss: ``"bernoulli"`` or ``"squared"``.
      dtype: parameter and data dtype.
      split_seed: seed of the fixed 70/10/20 % train/valid/test split.

    Returns:
      A :class:`Problem` whose params are an ``nnx.State``.

    Raises:
      ValueError: for an unknown ``activation`` or ``loss``, or a width < 1.

    Examples:
      >>> from so_opt import problems
      >>> p = problems.digits_autoencoder()
      >>> p.num_train, problems.num_params(p.init_params(0))
      (1258, 5478)

    References:
      Hinton and Salakhutdinov, *Reducing the dimensionality of data with
      neural networks*, Science, 2006. Martens, *Deep learning via
      Hessian-free optimization*, ICML, 2010.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {activation!r}."
        )
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {list(LOSSES)}, got {loss!r}.")
    encoder = tuple(int(h) for h in encoder)
    if any(h < 1 for h in (*encoder, int(code))):
        raise ValueError(
            f"`encoder` and `code` widths must be >= 1, got {encoder} and {code}."
        )
    code = int(code)
    dtype = jnp.dtype(dtype)
    pixels = load_digit_pixels(split_seed)
    to_device = lambda x: (jnp.asarray(x, dtype), jnp.asarray(x, dtype))
    sizes = (64, *encoder, code, *reversed(encoder), 64)
    output_loss_fn = _bernoulli if loss == "bernoulli" else _squared

    def make_model(seed: int) -> Autoencoder:
        return Autoencoder(sizes, activation, dtype, nnx.Rngs(seed))

    train = to_device(pixels["train"])
    template = nnx_objective(make_model(0), output_loss_fn, train)

    def init_params(seed: int):
        return nnx.split(make_model(seed), nnx.Param, ...)[1]

    def model_fn(params, batch):
        outputs = template.apply(params, batch[0])
        return outputs if loss == "bernoulli" else jax.nn.sigmoid(outputs)

    def loss_fn(params, batch):
        return output_loss_fn(model_fn(params, batch), batch)

    return Problem(
        name="digits_autoencoder",
        init_params=init_params,
        loss=loss_fn,
        train=train,
        valid=to_device(pixels["valid"]),
        test=to_device(pixels["test"]),
        model_fn=model_fn,
        output_loss_fn=output_loss_fn,
        config={
            "encoder": list(encoder),
            "code": code,
            "activation": activation,
            "loss": loss,
            "dtype": dtype.name,
        },
    )
