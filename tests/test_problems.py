"""Each problem's loss and gradient against an independent float64 computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from jax.flatten_util import ravel_pytree

from so_opt import problems


def _central_differences(fun, x, eps=1e-6):
    """Gradient of ``fun: R^k -> R`` by central differences, in numpy."""
    grad = np.zeros_like(x)
    for i in range(x.size):
        step = np.zeros_like(x)
        step[i] = eps
        grad[i] = (fun(x + step) - fun(x - step)) / (2 * eps)
    return grad


def _numpy_mlp_loss(weights, x, y, activation=np.tanh):
    """Softmax cross-entropy of an MLP given as [(kernel, bias), ...]."""
    h = x
    for kernel, bias in weights[:-1]:
        h = activation(h @ kernel + bias)
    logits = h @ weights[-1][0] + weights[-1][1]
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.mean(log_probs[np.arange(len(y)), y])


def _layers(params):
    layers = params["layers"]
    return [
        (np.asarray(layers[i]["kernel"].value), np.asarray(layers[i]["bias"].value))
        for i in sorted(layers.keys())
    ]


def test_digits_data_split_and_standardization():
    p = problems.digits_mlp()
    sizes = [p.train[0].shape[0], p.valid[0].shape[0], p.test[0].shape[0]]
    assert sum(sizes) == 1797 and sizes == [1258, 180, 359]
    assert p.train[0].shape[1] == 64
    assert set(np.unique(np.asarray(p.train[1]))) == set(range(10))
    # Standardized with training statistics: zero mean, unit (or constant) scale.
    x = np.asarray(p.train[0], np.float64)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    assert np.all(np.isclose(x.std(axis=0), 1.0, atol=1e-4) | (x.std(axis=0) == 0))


def test_digits_split_is_fixed_by_seed():
    a, b = problems.digits_mlp(), problems.digits_mlp()
    np.testing.assert_array_equal(np.asarray(a.test[1]), np.asarray(b.test[1]))
    c = problems.digits_mlp(split_seed=1)
    assert not np.array_equal(np.asarray(a.test[1]), np.asarray(c.test[1]))


@pytest.mark.parametrize("hidden", [(8,), (6, 5)])
def test_digits_loss_and_grad_match_numpy(hidden):
    p = problems.digits_mlp(hidden=hidden, dtype="float64")
    params = p.init_params(3)
    x, y = (np.asarray(a) for a in p.train)
    x, y = x[:64], y[:64]
    batch = (jnp.asarray(x), jnp.asarray(y))
    layers = _layers(params)
    loss, grad = jax.jit(jax.value_and_grad(p.loss))(params, batch)
    assert float(loss) == pytest.approx(_numpy_mlp_loss(layers, x, y), rel=1e-12)

    # Central differences of the numpy loss at random coordinates of each array.
    rng = np.random.default_rng(0)
    grads = _layers(grad)
    eps = 1e-6
    for i, arrays in enumerate(layers):
        for j, array in enumerate(arrays):
            for index in rng.integers(0, array.size, size=8):
                shifted = [[a.copy() for a in pair] for pair in layers]
                shifted[i][j].flat[index] += eps
                up = _numpy_mlp_loss(shifted, x, y)
                shifted[i][j].flat[index] -= 2 * eps
                down = _numpy_mlp_loss(shifted, x, y)
                assert grads[i][j].flat[index] == pytest.approx(
                    (up - down) / (2 * eps), rel=1e-6, abs=1e-9
                )
    assert problems.num_params(params) == ravel_pytree(params)[0].size


def test_digits_metrics_and_model_loss_split():
    p = problems.digits_mlp(hidden=(8,))
    params = p.init_params(0)
    m = p.metrics(params)
    assert set(m) >= {"train_loss", "test_loss", "test_accuracy"}
    assert 0.0 <= m["test_accuracy"] <= 1.0
    outputs = p.model_fn(params, p.test)
    assert float(p.output_loss_fn(outputs, p.test)) == pytest.approx(m["test_loss"])
    # Initial loss of a near-uniform classifier is close to log(10).
    assert abs(m["train_loss"] - np.log(10)) < 0.5


def test_logreg_loss_and_grad_match_numpy_and_scipy_minimum():
    l2 = 1e-2
    p = problems.breast_cancer_logreg(l2=l2)
    x, y = (np.asarray(a, np.float64) for a in p.train)

    def numpy_loss(v):
        w, b = v[:-1], v[-1]
        z = x @ w + b
        data = np.mean(np.logaddexp(0.0, z) - y * z)
        return data + 0.5 * l2 * w @ w

    rng = np.random.default_rng(0)
    v = rng.normal(size=x.shape[1] + 1) * 0.1
    params = {"w": jnp.asarray(v[:-1]), "b": jnp.asarray(v[-1])}
    assert float(p.loss(params, p.train)) == pytest.approx(numpy_loss(v), rel=1e-12)
    grad = jax.grad(p.loss)(params, p.train)
    ours = np.concatenate([np.asarray(grad["w"]), [float(grad["b"])]])
    np.testing.assert_allclose(ours, _central_differences(numpy_loss, v), rtol=1e-6)

    # The problem's minimum value is scipy's.
    best = scipy.optimize.minimize(numpy_loss, np.zeros_like(v), method="BFGS")
    at = {"w": jnp.asarray(best.x[:-1]), "b": jnp.asarray(best.x[-1])}
    assert float(p.loss(at, p.train)) == pytest.approx(best.fun, rel=1e-9)
    assert 0.9 < p.metrics(at)["test_accuracy"] <= 1.0


@pytest.mark.parametrize("n", [2, 7, 100])
def test_chained_rosenbrock_matches_scipy(n):
    p = problems.rosenbrock(n=n, form="chained")
    x0 = np.asarray(p.init_params(0))
    expected_start = np.where(np.arange(n) % 2 == 0, -1.2, 1.0)
    np.testing.assert_array_equal(x0, expected_start)
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    assert float(p.loss(jnp.asarray(x), None)) == pytest.approx(
        scipy.optimize.rosen(x), rel=1e-12
    )
    np.testing.assert_allclose(
        jax.grad(p.loss)(jnp.asarray(x), None), scipy.optimize.rosen_der(x), rtol=1e-12
    )
    assert float(p.loss(jnp.ones(n), None)) == 0.0 == p.minimum


def test_extended_rosenbrock_is_independent_pairs():
    n = 6
    p = problems.rosenbrock(n=n, form="extended")
    rng = np.random.default_rng(1)
    x = rng.normal(size=n)
    pairs = sum(scipy.optimize.rosen(x[i : i + 2]) for i in range(0, n, 2))
    assert float(p.loss(jnp.asarray(x), None)) == pytest.approx(pairs, rel=1e-12)
    assert float(p.loss(jnp.ones(n), None)) == 0.0


def test_minibatches_cover_the_training_set_each_epoch():
    p = problems.digits_mlp(hidden=(4,))
    batches = list(p.epoch_batches(seed=0, epoch=0, batch_size=100))
    assert len(batches) == p.num_train // 100
    assert all(b[0].shape == (100, 64) for b in batches)
    again = list(p.epoch_batches(seed=0, epoch=0, batch_size=100))
    np.testing.assert_array_equal(batches[0][1], again[0][1])
    other = next(p.epoch_batches(seed=0, epoch=1, batch_size=100))
    assert not np.array_equal(np.asarray(batches[0][1]), np.asarray(other[1]))


def test_bad_names_and_arguments_list_what_is_valid():
    with pytest.raises(ValueError, match="digits_mlp.*rosenbrock"):
        problems.get("mnist")
    with pytest.raises(ValueError, match="activation"):
        problems.digits_mlp(activation="gelu")
    with pytest.raises(ValueError, match="hidden"):
        problems.digits_mlp(hidden=(0,))
    with pytest.raises(ValueError, match="l2"):
        problems.breast_cancer_logreg(l2=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        next(problems.digits_mlp(hidden=(4,)).epoch_batches(0, 0, 0))


@pytest.mark.parametrize("x64", [True, False])
def test_reference_problems_default_to_the_precision_jax_offers(x64):
    # float64 when x64 is on; without it float32, and no truncation warning
    # (the suite turns warnings into errors).
    want = jnp.float64 if x64 else jnp.float32
    with jax.enable_x64(x64):
        for problem in (problems.rosenbrock(4), problems.breast_cancer_logreg()):
            leaves = jax.tree.leaves(problem.init_params(0))
            assert all(leaf.dtype == want for leaf in leaves)
            assert problem.config["dtype"] == jnp.dtype(want).name
            assert jnp.isfinite(problem.value_fn()(problem.init_params(0)))
