"""nnx_objective: the params and closures it builds agree with the model itself."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import so_opt


class _Net(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(3, 4, rngs=rngs)
        self.norm = nnx.BatchNorm(4, rngs=rngs)  # holds non-Param state
        self.b = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.b(jnp.tanh(self.norm(self.a(x))))


def _mse(outputs, batch):
    return jnp.mean((outputs - batch[1]) ** 2)


@pytest.fixture
def setup():
    model = _Net(nnx.Rngs(0))
    model.eval()  # batch statistics fixed: a pure function of the Params
    key_x, key_y = jax.random.split(jax.random.key(1))
    batch = (jax.random.normal(key_x, (16, 3)), jax.random.normal(key_y, (16, 2)))
    return model, batch


def test_closures_match_the_model(setup):
    model, batch = setup
    obj = so_opt.nnx_objective(model, _mse, batch)
    expected = float(_mse(model(batch[0]), batch))
    assert float(obj.value_fn(obj.params)) == pytest.approx(expected, rel=1e-12)
    outputs = obj.model_fn(obj.params)
    np.testing.assert_allclose(outputs, model(batch[0]), rtol=1e-12)
    assert float(obj.output_loss_fn(outputs)) == pytest.approx(expected, rel=1e-12)
    # Only nnx.Param variables are optimized; batch statistics stay out.
    leaves = jax.tree_util.tree_leaves(obj.params)
    assert sum(x.size for x in leaves) == (3 + 1) * 4 + 4 + 4 + (4 + 1) * 2
    assert set(obj.extra_args()) == {"value_fn", "model_fn", "output_loss_fn"}


def test_gradient_matches_nnx_grad(setup):
    model, batch = setup
    obj = so_opt.nnx_objective(model, _mse, batch)
    ours = jax.grad(obj.value_fn)(obj.params)
    theirs = nnx.grad(lambda m: _mse(m(batch[0]), batch))(model)
    for a, b in zip(
        jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_training_and_writing_params_back(setup):
    model, batch = setup
    obj = so_opt.nnx_objective(model, _mse, batch)
    opt = so_opt.armijo_sgd()
    params, state = obj.params, opt.init(obj.params)
    start = float(obj.value_fn(params))

    @jax.jit
    def step(params, state):
        value, grad = jax.value_and_grad(obj.value_fn)(params)
        updates, state = opt.update(
            grad, state, params, value=value, grad=grad, **obj.extra_args()
        )
        return optax.apply_updates(params, updates), state

    for _ in range(20):
        params, state = step(params, state)
    trained = float(obj.value_fn(params))
    assert trained < 0.9 * start
    fresh = obj.merge(params)
    assert float(_mse(fresh(batch[0]), batch)) == pytest.approx(trained, rel=1e-10)
    # merge leaves the original untouched; nnx.update writes in place.
    assert float(_mse(model(batch[0]), batch)) == pytest.approx(start, rel=1e-10)
    nnx.update(model, params)
    assert float(_mse(model(batch[0]), batch)) == pytest.approx(trained, rel=1e-10)


def test_with_batch_changes_only_the_data(setup):
    model, batch = setup
    obj = so_opt.nnx_objective(model, _mse, batch)
    other = (batch[0][:4], batch[1][:4])
    half = obj.with_batch(other)
    assert float(half.value_fn(obj.params)) == pytest.approx(
        float(_mse(model(other[0]), other)), rel=1e-12
    )
    assert half.graphdef is obj.graphdef


def test_bad_models_are_rejected():
    with pytest.raises(TypeError, match="model"):
        so_opt.nnx_objective(lambda x: x, _mse, (jnp.ones(2), jnp.ones(2)))

    class Empty(nnx.Module):
        def __call__(self, x):
            return x

    with pytest.raises(TypeError, match="nnx.Param"):
        so_opt.nnx_objective(Empty(), _mse, (jnp.ones(2), jnp.ones(2)))


def test_writing_trained_params_back_leaves_the_objective_as_built(setup):
    # nnx.split hands out the model's own Variables; without a copy,
    # nnx.update(model, trained) would move the objective's starting params
    # (and a second optimizer started from them would begin at the optimum).
    model, batch = setup
    obj = so_opt.nnx_objective(model, _mse, batch)
    start = float(obj.value_fn(obj.params))
    res = so_opt.minimize(obj.value_fn, obj.params, so_opt.lbfgs(), max_steps=20)
    assert float(res.value) < 0.5 * start
    nnx.update(model, res.params)
    assert float(obj.value_fn(obj.params)) == pytest.approx(start, rel=1e-12)
    # The model itself now holds the trained params (float32: eager and
    # compiled evaluations differ in the last bits).
    assert float(_mse(model(batch[0]), batch)) == pytest.approx(
        float(res.value), rel=1e-6
    )
