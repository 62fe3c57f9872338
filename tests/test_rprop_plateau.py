"""Rprop and reduce-on-plateau: the right values, and optax 0.2.8's wrong ones."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import so_opt

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)
SIGNS = [1.0, 1.0, 1.0, -1.0, 1.0]


def irprop_minus(grads, rate, eta_minus, eta_plus, low, high):
    """iRprop- (Igel and Huesken, 2000) written out in NumPy, one row a step."""
    step = np.full(grads.shape[1], rate)
    prev = np.zeros(grads.shape[1])
    updates = []
    for grad in grads:
        agree = np.sign(grad) * np.sign(prev)
        step = np.where(agree > 0, np.minimum(step * eta_plus, high), step)
        step = np.where(agree < 0, np.maximum(step * eta_minus, low), step)
        grad = np.where(agree < 0, 0.0, grad)
        updates.append(-np.sign(grad) * step)
        prev = grad
    return np.array(updates)


def run(opt, sequence, extra_name=None):
    """Feeds scalars as gradients (or as ``extra_name`` with unit gradients)."""
    state = opt.init(jnp.zeros(()))
    out = []
    for item in sequence:
        if extra_name is None:
            u, state = opt.update(jnp.asarray(item), state)
        else:
            u, state = opt.update(jnp.ones(()), state, **{extra_name: item})
        out.append(float(u))
    return np.array(out), state


def test_rprop_moves_by_the_irprop_minus_magnitudes():
    ours, _ = run(so_opt.rprop(0.1, 0.5, 1.2), SIGNS)
    np.testing.assert_allclose(np.abs(ours), [0.1, 0.12, 0.144, 0.0, 0.072])
    np.testing.assert_allclose(ours, -np.abs(ours) * np.sign(SIGNS))


def test_optax_rprop_lags_one_step():
    # optax 0.2.8's magnitudes: the step found from g_t is used at t + 1.
    lagging, _ = run(optax.scale_by_rprop(0.1, 0.5, 1.2), SIGNS)
    np.testing.assert_allclose(np.abs(lagging), [0.0, 0.1, 0.12, 0.0, 0.0])


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    rate=st.floats(1e-3, 1.0),
    eta_minus=st.floats(0.1, 0.9),
    eta_plus=st.floats(1.05, 2.0),
)
def test_rprop_matches_a_numpy_reference(seed, rate, eta_minus, eta_plus):
    rng = np.random.default_rng(seed)
    # Integer-valued gradients make exact zeros (no sign) part of the draw.
    grads = rng.integers(-2, 3, size=(8, 5)).astype(np.float64)
    tree = {"a": jnp.zeros(2), "b": jnp.zeros(3)}
    opt = so_opt.rprop(rate, eta_minus, eta_plus, 1e-4, 5.0)
    state = opt.init(tree)
    got = []
    for grad in grads:
        u, state = opt.update({"a": grad[:2], "b": grad[2:]}, state)
        got.append(np.concatenate([u["a"], u["b"]]))
    expected = irprop_minus(grads, rate, eta_minus, eta_plus, 1e-4, 5.0)
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-12)


def plateau_reference(values, factor, patience, rtol, atol, cooldown):
    """PyTorch-style ReduceLROnPlateau (mode min, relative threshold), in Python."""
    scale, best, bad, cool = 1.0, float("inf"), 0, 0
    scales = []
    for value in values:
        if best == float("inf") or value < best - rtol * abs(best) - atol:
            best, bad = value, 0
        else:
            bad += 1
        if cool > 0:
            cool, bad = cool - 1, 0
        if bad >= patience:
            scale, cool, bad = scale * factor, cooldown, 0
        scales.append(scale)
    return scales


@pytest.mark.parametrize("value", [-1.0, 1.0])
def test_plateau_lowers_the_rate_for_any_sign(value):
    ours, state = run(so_opt.reduce_on_plateau(0.5, 1), [value] * 5, "value")
    assert float(state.scale) == 0.0625
    np.testing.assert_allclose(ours, [1.0, 0.5, 0.25, 0.125, 0.0625])


def test_optax_plateau_ignores_negative_losses():
    optax_scale = {}
    for value in (-1.0, 1.0):
        opt = optax.contrib.reduce_on_plateau(factor=0.5, patience=1)
        _, state = run(opt, [jnp.asarray(value)] * 5, "value")
        optax_scale[value] = float(state.scale)
    # optax 0.2.8: a flat negative loss "improves" forever; a positive one halves.
    assert optax_scale == {-1.0: 1.0, 1.0: 0.0625}


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    shift=st.floats(-100.0, 100.0),
    patience=st.integers(1, 3),
    cooldown=st.integers(0, 2),
)
def test_plateau_matches_a_reference_and_ignores_the_loss_sign(
    seed, shift, patience, cooldown
):
    rng = np.random.default_rng(seed)
    # A loss that falls, stalls and wobbles, moved to either sign by `shift`.
    values = shift + np.concatenate([np.linspace(1, 0, 6), rng.normal(0, 1e-3, 10)])
    opt = so_opt.reduce_on_plateau(0.5, patience, 0.0, 1e-2, cooldown)
    got, _ = run(opt, values, "value")
    expected = plateau_reference(values, 0.5, patience, 0.0, 1e-2, cooldown)
    np.testing.assert_array_equal(got, expected)
    # With an absolute tolerance only, the rule cannot see where zero is.
    unshifted, _ = run(opt, values - shift, "value")
    np.testing.assert_array_equal(got, unshifted)


def test_plateau_averages_accumulated_values():
    opt = so_opt.reduce_on_plateau(0.5, 1, accumulation_size=2)
    # Means 2.0 (best), then 2.0 again (no gain): one cut at the 4th update.
    got, _ = run(opt, [1.0, 3.0, 3.0, 1.0, 0.0, 0.0], "value")
    np.testing.assert_array_equal(got, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5])


def test_both_compose_in_a_jitted_chain():
    opt = optax.chain(so_opt.rprop(0.1), so_opt.reduce_on_plateau(0.5, 5))
    f = lambda x: jnp.sum((x - 3.0) ** 2) - 10.0  # negative near the minimum
    x = jnp.zeros(3)
    state = opt.init(x)

    @jax.jit
    def step(x, state):
        v, g = jax.value_and_grad(f)(x)
        u, state = opt.update(g, state, x, value=v)
        return optax.apply_updates(x, u), state

    for _ in range(60):
        x, state = step(x, state)
    np.testing.assert_allclose(x, 3.0, atol=1e-2)
    assert step._cache_size() == 1


ERRORS = [
    (so_opt.rprop, dict(eta_minus=1.0), r"`eta_minus` must be in \(0.0, 1.0\)"),
    (so_opt.rprop, dict(eta_plus=1.0), r"`eta_plus` must be > 1, got 1.0\."),
    (so_opt.rprop, dict(learning_rate=0.0), r"`learning_rate` must be > 0, got 0"),
    (so_opt.rprop, dict(learning_rate=100.0), r"`learning_rate` must lie in"),
    (so_opt.reduce_on_plateau, dict(factor=1.0), r"`factor` must be in \(0.0, 1.0\)"),
    (so_opt.reduce_on_plateau, dict(patience=0), r"`patience` must be an integer"),
    (so_opt.reduce_on_plateau, dict(rtol=-1.0), r"`rtol` must be >= 0, got -1.0\."),
    (so_opt.reduce_on_plateau, dict(rtol=0.0), r"`rtol` or `atol` must be > 0"),
    (so_opt.reduce_on_plateau, dict(cooldown=-1), r"`cooldown` must be an integer"),
]


@pytest.mark.parametrize(("factory", "kwargs", "message"), ERRORS)
def test_impossible_hyperparameters_raise_clear_errors(factory, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        factory(**kwargs)
    assert str(info.value).endswith(".")


def test_plateau_non_finite_value_gives_a_zero_update_and_is_not_counted():
    opt = so_opt.reduce_on_plateau(factor=0.5, patience=1)
    state = opt.init(jnp.zeros(2))
    _, state = opt.update(jnp.ones(2), state, value=1.0)
    for value, grad in [(jnp.nan, 1.0), (jnp.inf, 1.0), (1.0, jnp.nan)]:
        u, new = opt.update(jnp.full(2, grad), state, value=value)
        np.testing.assert_array_equal(u, jnp.zeros(2))
        assert int(so_opt.status(new)) == so_opt.StatusCode.NON_FINITE
        assert float(new.scale) == 1.0 and int(new.plateau_count) == 0
    # A finite value afterwards is counted as usual and the status clears.
    u, state = opt.update(jnp.ones(2), new, value=1.0)
    assert float(state.scale) == 0.5 and int(so_opt.status(state)) == 0
    np.testing.assert_array_equal(u, 0.5 * jnp.ones(2))
