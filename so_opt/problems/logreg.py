"""L2-regularized logistic regression on scikit-learn's breast-cancer table."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from so_opt.problems.base import (
    Problem,
    reference_dtype,
    split_indices,
    standardize,
)


def load_breast_cancer_arrays(
    seed: int = 0, test_fraction: float = 0.2
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Standardized features (30 columns) and 0/1 labels, split train/test."""
    from sklearn.datasets import load_breast_cancer  # study extra, imported on use

    data = load_breast_cancer()
    x = np.asarray(data.data, np.float64)
    y = np.asarray(data.target, np.float64)
    train, _, test = split_indices(len(y), seed, test_fraction, 0.0)
    x_train, x_test = standardize(x[train], x[test])
    return {"train": (x_train, y[train]), "test": (x_test, y[test])}


def _model(params, batch) -> dict[str, jax.Array]:
    # The weights pass through as a second output so that the ridge term sits
    # in the output loss: the Gauss-Newton matrix is then the exact Hessian.
    return {"logits": batch[0] @ params["w"] + params["b"], "w": params["w"]}


def _accuracy(outputs, batch) -> jax.Array:
    return jnp.mean((outputs["logits"] > 0) == (batch[1] > 0.5))


def breast_cancer_logreg(
    l2: float = 1e-2, dtype: str | jnp.dtype | None = None, split_seed: int = 0
) -> Problem:
    r"""Mean logistic loss plus a ridge penalty on the breast-cancer data.

    .. math::
      f(w, b) = \frac{1}{n} \sum_i \log(1 + e^{-s_i (x_i^\top w + b)})
        + \frac{\lambda}{2} \|w\|^2, \qquad s_i = 2 y_i - 1,

    strongly convex for :math:`\lambda > 0` (the bias is not penalized, but
    the standardized features make the loss strictly convex in it).

    Args:
      l2: ridge strength :math:`\lambda` >= 0.
      dtype: parameter and data dtype; None for float64 when JAX's x64 mode
        is on, else float32.
      split_seed: seed of the fixed 80/20 train/test split.

    Returns:
      A :class:`Problem` with params ``{"w": (30,), "b": ()}``.

    Examples:
      >>> from so_opt import problems
      >>> p = problems.breast_cancer_logreg(dtype="float32")
      >>> round(float(p.loss(p.init_params(0), p.train)), 5)  # log(2) at zero
      0.69315
    """
    if l2 < 0:
        raise ValueError(f"`l2` must be >= 0, got {l2}.")
    dtype = reference_dtype(dtype)
    arrays = load_breast_cancer_arrays(split_seed)
    to_device = lambda xy: (jnp.asarray(xy[0], dtype), jnp.asarray(xy[1], dtype))
    num_features = arrays["train"][0].shape[1]

    def init_params(seed: int):
        # The problem is convex: start at zero whatever the seed.
        del seed
        return {"w": jnp.zeros(num_features, dtype), "b": jnp.zeros((), dtype)}

    def output_loss_fn(outputs, batch):
        # log(1 + exp(-s z)) = softplus(-s z), stable for large |z|.
        signs = 2.0 * batch[1] - 1.0
        data = jnp.mean(jax.nn.softplus(-signs * outputs["logits"]))
        return data + 0.5 * l2 * jnp.sum(outputs["w"] ** 2)

    def loss(params, batch):
        return output_loss_fn(_model(params, batch), batch)

    return Problem(
        name="breast_cancer_logreg",
        init_params=init_params,
        loss=loss,
        train=to_device(arrays["train"]),
        test=to_device(arrays["test"]),
        model_fn=_model,
        output_loss_fn=output_loss_fn,
        accuracy_fn=_accuracy,
        config={"l2": l2, "dtype": dtype.name},
    )
