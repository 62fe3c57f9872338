"""The digits autoencoder against a numpy implementation, and its curvature."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import so_opt
from so_opt import problems


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _numpy_loss(layers, x, activation, loss):
    """Reconstruction loss of ``64 -> ... -> 64``, the code layer linear."""
    code_index = len(layers) // 2 - 1
    h = x
    for i, (kernel, bias) in enumerate(layers):
        h = h @ kernel + bias
        if i not in (code_index, len(layers) - 1):
            h = _sigmoid(h) if activation == "sigmoid" else np.tanh(h)
    if loss == "bernoulli":
        # log(1 + e^z) - x z, the cross-entropy of sigmoid(z) against x.
        per_pixel = np.logaddexp(0.0, h) - x * h
    else:
        per_pixel = 0.5 * (_sigmoid(h) - x) ** 2
    return per_pixel.sum(axis=1).mean()


def _layers(params):
    layers = params["layers"]
    return [
        (np.asarray(layers[i]["kernel"].value), np.asarray(layers[i]["bias"].value))
        for i in sorted(layers.keys())
    ]


@pytest.mark.parametrize(
    "activation, loss", [("sigmoid", "bernoulli"), ("tanh", "squared")]
)
def test_loss_and_grad_match_numpy(activation, loss):
    p = problems.digits_autoencoder(
        encoder=(12,), code=3, activation=activation, loss=loss, dtype="float64"
    )
    params = p.init_params(1)
    x = np.asarray(p.train[0])[:50]
    batch = (jnp.asarray(x), jnp.asarray(x))
    layers = _layers(params)
    assert [k.shape for k, _ in layers] == [(64, 12), (12, 3), (3, 12), (12, 64)]
    value, grad = jax.value_and_grad(p.loss)(params, batch)
    reference = _numpy_loss(layers, x, activation, loss)
    assert float(value) == pytest.approx(reference, rel=1e-12)

    # Central differences of the numpy loss at random coordinates of each array.
    rng = np.random.default_rng(0)
    grads, eps = _layers(grad), 1e-6
    for i, pair in enumerate(layers):
        for j, array in enumerate(pair):
            for index in rng.integers(0, array.size, size=5):
                shifted = [[a.copy() for a in q] for q in layers]
                shifted[i][j].flat[index] += eps
                up = _numpy_loss(shifted, x, activation, loss)
                shifted[i][j].flat[index] -= 2 * eps
                down = _numpy_loss(shifted, x, activation, loss)
                assert grads[i][j].flat[index] == pytest.approx(
                    (up - down) / (2 * eps), rel=1e-6, abs=1e-9
                )


def test_data_is_pixels_in_the_unit_interval_split_70_10_20():
    p = problems.digits_autoencoder()
    sizes = [p.train[0].shape[0], p.valid[0].shape[0], p.test[0].shape[0]]
    assert sizes == [1258, 180, 359]
    x = np.asarray(p.train[0])
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(x, np.asarray(p.train[1]))


def test_bernoulli_gauss_newton_is_psd_and_matches_dense_jt_h_j():
    # The Bernoulli loss is convex in the logits, so J^T H_L J is PSD while
    # the Hessian of the network is not.
    p = problems.digits_autoencoder(encoder=(6,), code=2, dtype="float64")
    params = p.init_params(0)
    batch = (p.train[0][:40], p.train[1][:40])
    flat, unravel = ravel_pytree(params)
    model = lambda w: p.model_fn(unravel(w), batch)
    out_loss = lambda z: p.output_loss_fn(z, batch)
    jac = jax.jacfwd(model)(flat).reshape(-1, flat.size)
    logits = model(flat)
    h_out = jax.hessian(lambda z: out_loss(z.reshape(logits.shape)))(logits.ravel())
    dense = jac.T @ h_out @ jac
    v = jax.random.normal(jax.random.key(0), flat.shape, flat.dtype)
    got = so_opt.ggn_vp(model, out_loss, flat, v)
    np.testing.assert_allclose(got, dense @ v, rtol=1e-9, atol=1e-12)
    assert np.linalg.eigvalsh(np.asarray(dense)).min() > -1e-10
    hessian = jax.hessian(lambda w: out_loss(model(w)))(flat)
    assert np.linalg.eigvalsh(np.asarray(hessian)).min() < -1e-6


def test_hessian_free_lowers_the_reconstruction_loss():
    p = problems.digits_autoencoder(encoder=(16,), code=4)
    params = p.init_params(0)
    opt = so_opt.hessian_free()
    state = opt.init(params)
    extra = p.extra_args()

    @jax.jit
    def step(params, state):
        value, grad = jax.value_and_grad(extra["value_fn"])(params)
        updates, state = opt.update(
            grad, state, params, value=value, grad=grad, **extra
        )
        return jax.tree.map(jnp.add, params, updates), state, value

    first = None
    for _ in range(10):
        params, state, value = step(params, state)
        first = float(value) if first is None else first
    final = float(extra["value_fn"](params))
    assert np.isfinite(final) and final < 0.8 * first
    assert int(so_opt.costs(state).hvp_evals) >= 10


@pytest.mark.parametrize(
    "kwargs, name",
    [({"activation": "relu"}, "activation"), ({"loss": "l1"}, "loss"),
     ({"code": 0}, "code")],
)  # fmt: skip
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        problems.digits_autoencoder(**kwargs)
