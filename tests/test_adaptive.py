"""Adaptive learning-rate rules: bold driver, newbob, delta-bar-delta, BB."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _ls_problems import mlp_data, mlp_loss, mlp_params, quadratic
from hypothesis import given, settings
from hypothesis import strategies as st

import so_opt
from so_opt import StatusCode

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)


def mlp_problem(params, data):
    return mlp_loss(params, *data)


def _bold_step(params, state, data, rate):
    """One bold-driver step on the MLP (rate passed in to force rejections)."""
    opt = so_opt.bold_driver(1.0, 1.1, 0.5)
    f = lambda p: mlp_problem(p, data)
    value, grad = jax.value_and_grad(f)(params)
    state = state._replace(learning_rate=rate.astype(state.learning_rate.dtype))
    updates, state = opt.update(grad, state, params, value=value, value_fn=f)
    return optax.apply_updates(params, updates), state, value


bold_step = jax.jit(_bold_step)


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    log_rate=st.floats(-3.0, 3.0),
    dtype=st.sampled_from([jnp.float32, jnp.float64]),
)
def test_bold_driver_keeps_good_steps_and_undoes_bad_ones_exactly(
    seed, log_rate, dtype
):
    params = mlp_params(seed, dtype)
    data = mlp_data(seed, dtype)
    rate = jnp.asarray(10.0**log_rate, dtype)
    state = so_opt.bold_driver(1.0).init(params)
    new_params, state, value = bold_step(params, state, data, rate)
    new_value = mlp_problem(new_params, data)
    if bool(state.accepted):
        # Kept: the loss did not rise, and the rate grew (or held at equality).
        assert float(new_value) <= float(value)
        assert float(state.learning_rate) >= float(rate)
    else:
        # Rejected: params are bit for bit as they were, and the rate halved.
        for old, new in zip(
            jax.tree_util.tree_leaves(params),
            jax.tree_util.tree_leaves(new_params),
            strict=True,
        ):
            np.testing.assert_array_equal(np.asarray(old), np.asarray(new))
        np.testing.assert_allclose(float(state.learning_rate), 0.5 * float(rate))
    assert int(so_opt.costs(state).value_evals) == 1


def test_bold_driver_rate_sequence_on_a_negative_loss():
    # f(x) = x^2 - 5 (negative near 0) from x = 1: rate 1.5 overshoots to -2
    # (f = -1 > -4, rejected), 0.75 lands at -0.5 (accepted, grows to 0.825).
    f = lambda x: jnp.sum(x**2) - 5.0
    opt = so_opt.bold_driver(1.5, 1.1, 0.5)
    x = jnp.ones(1)
    state = opt.init(x)
    rates, xs = [], []
    for _ in range(2):
        v, g = jax.value_and_grad(f)(x)
        u, state = opt.update(g, state, x, value=v, value_fn=f)
        x = optax.apply_updates(x, u)
        rates.append(float(state.learning_rate))
        xs.append(float(x[0]))
    np.testing.assert_allclose(rates, [0.75, 0.825])
    np.testing.assert_allclose(xs, [1.0, -0.5])


def test_bold_driver_has_aux_and_non_finite_loss():
    f = lambda x: (jnp.sum(x**2), {"n": 1})
    opt = so_opt.bold_driver(0.1, has_aux=True)
    x = jnp.ones(2)
    g = 2 * x
    u, state = opt.update(g, opt.init(x), x, value=2.0, value_fn=f)
    np.testing.assert_allclose(u, -0.2 * jnp.ones(2))
    # A non-finite value gives a zero update and says why; the rate is kept.
    u, state = opt.update(g, state, x, value=jnp.nan, value_fn=f)
    np.testing.assert_array_equal(u, jnp.zeros(2))
    assert int(so_opt.status(state)) == StatusCode.NON_FINITE
    assert float(state.learning_rate) == pytest.approx(0.11)


def newbob_reference(monitored, rate, start, stop, factor):
    """The newbob schedule in plain Python; returns (rates, stop flags)."""
    prev, ramping, should_stop = None, False, False
    rates, stops = [], []
    for h in monitored:
        if prev is not None:
            gain = (prev - h) / abs(prev)
            should_stop = should_stop or (ramping and gain < stop)
            ramping = ramping or gain < start
        if ramping:
            rate *= factor
        prev = h
        rates.append(rate)
        stops.append(should_stop)
    return rates, stops


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    offset=st.sampled_from([0.0, -3.0]),
)
def test_newbob_follows_the_schedule_for_either_sign(seed, offset):
    rng = np.random.default_rng(seed)
    # Held-out losses that improve fast, then slowly; shifted below zero too.
    gains = np.concatenate([rng.uniform(0.1, 0.3, 3), rng.uniform(0, 0.004, 4)])
    heldout = offset + 1.0 + np.cumsum(-gains)
    opt = so_opt.newbob(0.1, 0.005, 0.001)
    state = opt.init(jnp.zeros(2))
    rates, stops = [], []
    for h in heldout:
        u, state = opt.update(jnp.ones(2), state, heldout_value=h)
        np.testing.assert_allclose(u, -state.learning_rate * np.ones(2))
        rates.append(float(state.learning_rate))
        stops.append(bool(state.should_stop))
    ref_rates, ref_stops = newbob_reference(heldout, 0.1, 0.005, 0.001, 0.5)
    np.testing.assert_allclose(rates, ref_rates, rtol=1e-12)
    assert stops == ref_stops
    assert (int(so_opt.status(state)) == StatusCode.CONVERGED) == ref_stops[-1]


def test_newbob_improvement_is_relative_to_the_magnitude():
    # -2 -> -2.001 is a 0.05% improvement: ramping starts, as for 2 -> 1.999.
    for sequence in ([-2.0, -2.001], [2.0, 1.999]):
        opt = so_opt.newbob(0.1)
        state = opt.init(jnp.zeros(1))
        for h in sequence:
            _, state = opt.update(jnp.ones(1), state, heldout_value=h)
        assert bool(state.ramping)
        assert float(state.improvement) == pytest.approx(5e-4)


def test_newbob_monitors_the_epoch_mean_training_loss_without_heldout():
    opt = so_opt.newbob(0.1, steps_per_epoch=3)
    state = opt.init(jnp.zeros(1))
    # Epoch means 2.0 then 1.9999: the second boundary starts ramping.
    for value in [3.0, 2.0, 1.0, 1.9999, 1.9999, 1.9999]:
        _, state = opt.update(jnp.ones(1), state, value=value)
    assert int(state.epochs) == 2 and bool(state.ramping)
    assert float(state.learning_rate) == pytest.approx(0.05)
    np.testing.assert_allclose(float(state.prev_monitored), 1.9999)
    with pytest.raises(TypeError, match="`heldout_value=`"):
        opt.update(jnp.ones(1), state)


def delta_bar_delta_reference(grads, rate, kappa, phi, theta):
    """Jacobs' delta-bar-delta in NumPy, one row of ``grads`` per step."""
    rates = np.full(grads.shape[1], rate)
    average = np.zeros(grads.shape[1])
    updates = []
    for grad in grads:
        agree = average * grad
        rates = np.where(agree > 0, rates + kappa, rates)
        rates = np.where(agree < 0, rates * (1 - phi), rates)
        average = (1 - theta) * grad + theta * average
        updates.append(-rates * grad)
    return np.array(updates)


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    kappa=st.floats(1e-3, 0.1),
    phi=st.floats(0.05, 0.9),
    theta=st.floats(0.0, 0.95),
)
def test_delta_bar_delta_matches_a_numpy_reference(seed, kappa, phi, theta):
    rng = np.random.default_rng(seed)
    grads = rng.normal(size=(8, 4))
    opt = so_opt.delta_bar_delta(0.05, kappa, phi, theta)
    state = opt.init(jnp.zeros(4))
    got = []
    for grad in grads:
        u, state = opt.update(jnp.asarray(grad), state)
        got.append(np.asarray(u))
    expected = delta_bar_delta_reference(grads, 0.05, kappa, phi, theta)
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-12)


@pytest.mark.parametrize("variant", ["long", "short"])
def test_barzilai_borwein_steps_equal_the_formulas(variant):
    f, x, a, b = quadratic(5, 4, 20.0, jnp.float64)
    opt = so_opt.barzilai_borwein(0.01, variant)
    state = opt.init(x)
    prev = None
    for i in range(6):
        g = jax.grad(f)(x)
        u, state = opt.update(g, state, x)
        if prev is None:
            expected = 0.01
        else:
            s, y = np.asarray(x - prev[0]), np.asarray(g - prev[1])
            expected = s @ s / (s @ y) if variant == "long" else s @ y / (y @ y)
        np.testing.assert_allclose(float(state.learning_rate), expected, rtol=1e-10)
        assert bool(state.reset) == (i == 0)
        prev = (x, g)
        x = optax.apply_updates(x, u)
    # On a quadratic both steps lie in [1/L, 1/mu] (Rayleigh quotients).
    assert 1 / 20.0 - 1e-12 <= float(state.learning_rate) <= 1.0 + 1e-12


def test_barzilai_borwein_resets_on_negative_curvature():
    # f = -x^2 has s'y < 0 everywhere: every step falls back to the rate.
    f = lambda x: -jnp.sum(x**2)
    opt = so_opt.barzilai_borwein(0.1)
    x = jnp.ones(2)
    state = opt.init(x)
    for _ in range(3):
        u, state = opt.update(jax.grad(f)(x), state, x)
        x = optax.apply_updates(x, u)
        assert bool(state.reset) and float(state.learning_rate) == 0.1
    u, state = opt.update(jnp.array([jnp.inf, 0.0]), state, x)
    np.testing.assert_array_equal(u, jnp.zeros(2))
    assert int(so_opt.status(state)) == StatusCode.NON_FINITE


@pytest.mark.parametrize(
    "make",
    [
        lambda: so_opt.bold_driver(0.5),
        lambda: so_opt.newbob(0.5, steps_per_epoch=2),
        lambda: so_opt.delta_bar_delta(0.1),
        lambda: so_opt.barzilai_borwein(0.1),
    ],
    ids=["bold_driver", "newbob", "delta_bar_delta", "barzilai_borwein"],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_rules_descend_jit_once_and_keep_dtypes(make, dtype):
    opt = optax.with_extra_args_support(make())
    data = mlp_data(0, dtype)
    f = lambda p: mlp_problem(p, data)
    params = mlp_params(0, dtype)
    state = opt.init(params)
    dtypes0 = [x.dtype for x in jax.tree_util.tree_leaves(state)]

    @jax.jit
    def step(params, state):
        v, g = jax.value_and_grad(f)(params)
        u, state = opt.update(g, state, params, value=v, value_fn=f)
        return optax.apply_updates(params, u), state

    start = float(f(params))
    for _ in range(20):
        params, state = step(params, state)
    assert float(f(params)) < 0.9 * start
    assert step._cache_size() == 1
    assert [x.dtype for x in jax.tree_util.tree_leaves(state)] == dtypes0


ERRORS = [
    (so_opt.bold_driver, dict(learning_rate=0.0), r"`learning_rate` must be > 0"),
    (so_opt.bold_driver, dict(increase=0.9), r"`increase` must be >= 1, got 0.9\."),
    (so_opt.bold_driver, dict(decrease=1.0), r"`decrease` must be in \(0.0, 1.0\)"),
    (so_opt.bold_driver, dict(max_learning_rate=0.01), r"`max_learning_rate` must"),
    (so_opt.newbob, dict(factor=0.0), r"`factor` must be in \(0.0, 1.0\)"),
    (so_opt.newbob, dict(stop_threshold=0.1), r"`stop_threshold` must be in"),
    (so_opt.newbob, dict(steps_per_epoch=0), r"`steps_per_epoch` must be an int"),
    (so_opt.delta_bar_delta, dict(phi=1.0), r"`phi` must be in \(0.0, 1.0\)"),
    (so_opt.delta_bar_delta, dict(theta=1.0), r"`theta` must be in \[0, 1\)"),
    (so_opt.delta_bar_delta, dict(kappa=-1.0), r"`kappa` must be > 0, got -1.0\."),
    (so_opt.barzilai_borwein, dict(variant="mid"), r"`variant` must be 'long'"),
    (
        so_opt.barzilai_borwein,
        dict(max_learning_rate=1e-12),
        r"`max_learning_rate` must be >= `min_learning_rate` \(1e-10\)",
    ),
]


@pytest.mark.parametrize(("factory", "kwargs", "message"), ERRORS)
def test_impossible_hyperparameters_raise_clear_errors(factory, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        factory(**kwargs)
    assert str(info.value).endswith(".")


def _factories():
    """Every public so_opt factory annotated to return an optax transform."""
    names = []
    for name in sorted(dir(so_opt)):
        obj = getattr(so_opt, name)
        if name.startswith("_") or not inspect.isfunction(obj):
            continue
        if "GradientTransformation" in str(inspect.signature(obj).return_annotation):
            names.append(name)
    return names


def test_every_optimizer_is_listed_for_the_extra_args_check():
    assert set(_factories()) == set(EXTRA_ARGS_FACTORIES)


# Each public optimizer factory, built with its defaults or close to them.
EXTRA_ARGS_FACTORIES = {
    "armijo_sgd": lambda: so_opt.armijo_sgd(),
    "barzilai_borwein": lambda: so_opt.barzilai_borwein(0.1),
    "bfgs": lambda: so_opt.bfgs(),
    "bold_driver": lambda: so_opt.bold_driver(0.1),
    "delta_bar_delta": lambda: so_opt.delta_bar_delta(0.1),
    "hessian_free": lambda: so_opt.hessian_free(curvature="hessian"),
    "lbfgs": lambda: so_opt.lbfgs(),
    "newbob": lambda: so_opt.newbob(0.1),
    "newton": lambda: so_opt.newton(),
    "reduce_on_plateau": lambda: so_opt.reduce_on_plateau(),
    "rprop": lambda: so_opt.rprop(0.1),
    # Building blocks that scale a direction: fed -grad below.
    "scale_by_armijo": lambda: so_opt.scale_by_armijo(),
    "scale_by_wolfe": lambda: so_opt.scale_by_wolfe(),
}


@pytest.mark.parametrize("name", sorted(EXTRA_ARGS_FACTORIES))
def test_update_accepts_the_readme_extra_args(name):
    # The README's step: update(g, s, x, value=v, grad=g, value_fn=f) works for
    # every optimizer, which ignores the extra args it does not use.
    opt = EXTRA_ARGS_FACTORIES[name]()
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    # Not a quadratic, so that no method lands on the minimum in one step.
    f = lambda x: jnp.sum(jnp.exp(x) - 2.0 * x)
    x = jnp.zeros(3)
    state = opt.init(x)
    for _ in range(2):
        v, g = jax.value_and_grad(f)(x)
        direction = -g if name.startswith("scale_by") else g
        u, state = opt.update(direction, state, x, value=v, grad=g, value_fn=f)
        assert u.shape == x.shape and bool(jnp.all(jnp.isfinite(u)))
        x = optax.apply_updates(x, u)
    assert int(so_opt.status(state)) in (StatusCode.RUNNING, StatusCode.CONVERGED)


def _run_newbob(learning_rate, f, steps):
    """Full-batch newbob from zeros; returns params, losses and statuses."""
    opt = so_opt.newbob(learning_rate=learning_rate)
    x = jnp.zeros(3, jnp.float32)
    state = opt.init(x)
    losses, codes = [], []
    for _ in range(steps):
        v, g = jax.value_and_grad(f)(x)
        u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
        x = optax.apply_updates(x, u)
        losses.append(float(v))
        codes.append(int(so_opt.status(state)))
    return x, losses, codes, state


def test_newbob_overflowing_step_is_non_finite_not_converged():
    f = lambda x: jnp.sum((x - 1.0) ** 2)
    x, _, codes, state = _run_newbob(1e30, f, 10)
    assert bool(jnp.all(jnp.isfinite(x)))
    assert codes[-1] == StatusCode.NON_FINITE
    assert StatusCode.CONVERGED not in codes and not bool(state.should_stop)


def test_newbob_diverging_run_never_claims_convergence():
    # Rate 10 on a quadratic of curvature 2: the loss grows 361-fold per step
    # until ramping has cut the rate; it then settles far above the start.
    f = lambda x: jnp.sum((x - 1.0) ** 2)
    x, losses, codes, state = _run_newbob(10.0, f, 40)
    assert losses[3] > 1e5 * losses[0] and losses[-1] > 100 * losses[0]
    assert StatusCode.CONVERGED not in codes and not bool(state.should_stop)
    assert bool(jnp.all(jnp.isfinite(x)))


def test_newbob_nan_loss_past_a_radius_gives_a_zero_update_and_non_finite():
    f = lambda x: jnp.where(jnp.any(x > 2.0), jnp.nan, jnp.sum((x - 1.0) ** 2))
    x, losses, codes, _ = _run_newbob(10.0, f, 10)
    assert np.isnan(losses[-1])
    assert codes[-1] == StatusCode.NON_FINITE and StatusCode.CONVERGED not in codes
    np.testing.assert_array_equal(x, jnp.full(3, 20.0))  # no step after the NaN


def test_newbob_converging_run_still_stops():
    # Held-out losses that fall, then flatten: ramping, then a stop.
    opt = so_opt.newbob(0.1)
    state = opt.init(jnp.zeros(1))
    for h in [1.0, 0.5, 0.499, 0.4989, 0.49889]:
        _, state = opt.update(jnp.ones(1), state, heldout_value=h)
    assert int(so_opt.status(state)) == StatusCode.CONVERGED
    # A NaN held-out value is not read as the end of training.
    u, state = opt.update(jnp.ones(1), state, heldout_value=jnp.nan)
    np.testing.assert_array_equal(u, jnp.zeros(1))
    assert int(so_opt.status(state)) == StatusCode.NON_FINITE


def test_newbob_rise_while_ramping_is_no_stop():
    # 0.499 starts ramping; a 10% rise next is a regression, not a plateau.
    opt = so_opt.newbob(0.1)
    state = opt.init(jnp.zeros(1))
    for h in [1.0, 0.5, 0.499, 0.55]:
        _, state = opt.update(jnp.ones(1), state, heldout_value=h)
    assert bool(state.ramping) and not bool(state.should_stop)
    assert int(so_opt.status(state)) == StatusCode.RUNNING


def test_bold_driver_refuses_an_overflowing_step_where_value_fn_is_finite():
    # f is bounded, so f(x - rate * g) is finite even when the step is inf.
    f = lambda x: -jnp.sum(jnp.tanh(x)) * 1e10
    x = jnp.zeros(2, jnp.float32)
    opt = so_opt.bold_driver(learning_rate=1e38)
    state = opt.init(x)
    v, g = jax.value_and_grad(f)(x)
    u, state = opt.update(g, state, x, value=v, grad=g, value_fn=f)
    np.testing.assert_array_equal(u, jnp.zeros(2))
    assert not bool(state.accepted)
    assert bool(jnp.all(jnp.isfinite(optax.apply_updates(x, u))))


@pytest.mark.parametrize(
    "make", [so_opt.rprop, so_opt.delta_bar_delta], ids=["rprop", "delta_bar_delta"]
)
def test_elementwise_rules_refuse_a_non_finite_gradient(make):
    opt = make()
    state = opt.init(jnp.ones(2))
    # One ordinary step first, so the refused one has a state to keep.
    _, state = opt.update(jnp.array([1.0, -2.0]), state)
    for bad in (jnp.nan, jnp.inf):
        updates, refused = opt.update(jnp.array([bad, 1.0]), state)
        np.testing.assert_array_equal(updates, [0.0, 0.0])
        assert int(so_opt.status(refused)) == StatusCode.NON_FINITE
        # The adaptation is not poisoned: the next finite step is the one the
        # state before the bad gradient would have given.
        expected, _ = opt.update(jnp.array([1.0, 1.0]), state)
        got, after = opt.update(jnp.array([1.0, 1.0]), refused)
        np.testing.assert_array_equal(got, expected)
        assert int(so_opt.status(after)) == StatusCode.RUNNING


@pytest.mark.parametrize(
    "opt",
    [so_opt.bold_driver(), so_opt.reduce_on_plateau(), so_opt.newbob()],
    ids=["bold_driver", "reduce_on_plateau", "newbob"],
)
def test_an_unreduced_loss_is_refused_before_it_reshapes_the_params(opt):
    params = jnp.ones(1)
    per_example = lambda p: p**2 * jnp.ones(3)  # forgot the .mean()
    state = opt.init(params)
    grad = jax.grad(lambda p: per_example(p).sum())(params)
    with pytest.raises(ValueError, match="needs a scalar loss in `value`"):
        opt.update(grad, state, params, value=per_example(params), value_fn=per_example)


@pytest.mark.parametrize(
    "make, kwargs, error, match",
    [
        (so_opt.rprop, {"eta_plus": "2"}, TypeError, "`eta_plus` must be a real"),
        (
            so_opt.rprop,
            {"eta_plus": float("inf")},
            ValueError,
            "`eta_plus` must be fin",
        ),
        (so_opt.rprop, {"max_learning_rate": float("nan")}, ValueError, "`max_learn"),
        (so_opt.bold_driver, {"increase": "2"}, TypeError, "`increase` must be a real"),
        (so_opt.bold_driver, {"increase": float("inf")}, ValueError, "`increase` mu"),
        (so_opt.delta_bar_delta, {"theta": "0.5"}, TypeError, "`theta` must be a real"),
        (so_opt.newbob, {"stop_threshold": "0"}, TypeError, "`stop_threshold` must"),
        (so_opt.reduce_on_plateau, {"min_scale": 2.0}, ValueError, "`min_scale` must"),
    ],
)
def test_hyperparameters_of_the_wrong_kind_or_out_of_range_are_named(
    make, kwargs, error, match
):
    with pytest.raises(error, match=match):
        make(**kwargs)
