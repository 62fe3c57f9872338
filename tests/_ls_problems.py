"""Small seeded test objectives shared by the line-search and adaptive tests."""

import jax
import jax.numpy as jnp
import numpy as np


def quadratic(seed, dim, condition, dtype):
    """Random convex quadratic 0.5 x'Ax - b'x with eigenvalues in [1, condition]."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    eig = np.geomspace(1.0, condition, dim)
    a = jnp.asarray((q * eig) @ q.T, dtype)
    b = jnp.asarray(rng.normal(size=dim), dtype)
    x0 = jnp.asarray(rng.normal(size=dim) * 3.0, dtype)
    return (lambda x: 0.5 * x @ (a @ x) - b @ x), x0, a, b


def mlp_params(seed, dtype, hidden=5, inputs=4):
    """Params of a one-hidden-layer tanh network."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {
        "w1": jax.random.normal(k1, (inputs, hidden), dtype) / 2,
        "b1": jnp.zeros((hidden,), dtype),
        "w2": jax.random.normal(k2, (hidden, 1), dtype) / 2,
        "b2": jnp.zeros((1,), dtype),
    }


def mlp_data(seed, dtype, n=16, inputs=4):
    """Regression data with a nonlinear target."""
    rng = np.random.default_rng(seed + 1000)
    x = rng.normal(size=(n, inputs))
    y = np.sin(x @ rng.normal(size=inputs))
    return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def mlp_loss(params, x, y):
    """Mean squared error of the network."""
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    out = (hidden @ params["w2"] + params["b2"])[:, 0]
    return jnp.mean((out - y) ** 2)
