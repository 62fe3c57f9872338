"""Tests of the strong Wolfe line search and the `scale_by_wolfe` transform."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st

import so_opt
import so_opt.problems
from so_opt import StatusCode

C1, C2 = 1e-4, 0.9
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def assert_strong_wolfe(f, x, d, res, c1=C1, c2=C2, rtol=1e-10):
    """Checks both strong Wolfe inequalities, recomputed independently."""
    value, grad = jax.value_and_grad(f)(x)
    slope0 = float(otu.tree_vdot(grad, d))
    eta = float(res.learning_rate)
    new_x = otu.tree_add_scale(x, eta, d)
    new_value, new_grad = jax.value_and_grad(f)(new_x)
    slack = rtol * max(1.0, abs(float(value)))
    assert eta > 0
    assert float(new_value) <= float(value) + c1 * eta * slope0 + slack
    assert abs(float(otu.tree_vdot(new_grad, d))) <= c2 * abs(slope0) + slack
    # The returned value and gradient are those at the accepted point.
    np.testing.assert_allclose(res.value, new_value, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        otu.tree_norm(otu.tree_sub(res.grad, new_grad)), 0.0, atol=1e-10
    )


DIM, WIDTH = 5, 6


def _quadratic(a, b, x):
    return 0.5 * x @ a @ x - b @ x


@jax.jit
def _search_quadratic(a, b, x0, d, rate):
    # Data enter as arguments so that every example reuses one compilation.
    f = lambda x: _quadratic(a, b, x)
    value, grad = jax.value_and_grad(f)(x0)
    return so_opt.wolfe_line_search(f, x0, d, value, grad, learning_rate=rate)


@st.composite
def quadratics(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    log_cond = draw(st.floats(0.0, 4.0))
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
    a = (q * np.logspace(0.0, log_cond, DIM)) @ q.T
    b = rng.normal(size=DIM)
    x0 = rng.normal(size=DIM) * 3.0
    mix = rng.normal(size=DIM)
    rate = 10.0 ** draw(st.floats(-3.0, 1.5))
    return a, b, x0, mix, rate


@SETTINGS
@given(quadratics(), st.booleans())
def test_strong_wolfe_on_random_convex_quadratics(problem, steepest):
    a, b, x0, mix, rate = problem
    grad = a @ x0 - b
    # Either steepest descent or a random descent direction.
    d = -grad
    if not steepest:
        d = d + 0.5 * np.linalg.norm(grad) * mix / np.linalg.norm(mix)
    assert d @ grad < 0
    res = _search_quadratic(a, b, x0, d, rate)
    assert int(res.status) == StatusCode.RUNNING
    assert bool(res.wolfe)
    f = lambda x: _quadratic(jnp.asarray(a), jnp.asarray(b), x)
    assert_strong_wolfe(f, jnp.asarray(x0), jnp.asarray(d), res)


def _mlp_loss(p, inputs, targets):
    hidden = jnp.tanh(inputs @ p["w1"] + p["b1"])
    return jnp.mean((hidden @ p["w2"] - targets) ** 2)


@jax.jit
def _search_mlp(params, inputs, targets, rate):
    loss = lambda p: _mlp_loss(p, inputs, targets)
    value, grad = jax.value_and_grad(loss)(params)
    d = otu.tree_scale(-1.0, grad)
    return so_opt.wolfe_line_search(loss, params, d, value, grad, learning_rate=rate)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.floats(-2.0, 1.0))
def test_strong_wolfe_on_random_mlp_losses(seed, log_rate):
    rng = np.random.default_rng(seed)
    inputs = jnp.asarray(rng.normal(size=(16, 3)))
    targets = jnp.asarray(rng.normal(size=(16, 1)))
    params = {
        "w1": jnp.asarray(rng.normal(size=(3, WIDTH))),
        "b1": jnp.asarray(rng.normal(size=(WIDTH,)) * 0.1),
        "w2": jnp.asarray(rng.normal(size=(WIDTH, 1)) / np.sqrt(WIDTH)),
    }
    res = _search_mlp(params, inputs, targets, 10.0**log_rate)
    assert bool(res.wolfe)
    loss = lambda p: _mlp_loss(p, inputs, targets)
    d = otu.tree_scale(-1.0, jax.grad(loss)(params))
    assert_strong_wolfe(loss, params, d, res)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_agrees_with_scipy_line_search_conditions(dtype):
    f_np = scipy.optimize.rosen
    x0 = np.array([-1.2, 1.0])
    d = -scipy.optimize.rosen_der(x0)
    ref = scipy.optimize.line_search(f_np, scipy.optimize.rosen_der, x0, d, c2=C2)
    assert ref[0] is not None
    f = lambda x: so_opt.problems.rosenbrock_value(x)
    x = jnp.asarray(x0, dtype)
    value, grad = jax.value_and_grad(f)(x)
    res = so_opt.wolfe_line_search(f, x, -grad, value, grad)
    assert res.learning_rate.dtype == dtype
    assert bool(res.wolfe)
    # Both steps meet the conditions; the values they reach are comparable.
    assert float(res.value) <= f_np(x0 + ref[0] * d) * 1.5 + 1e-3


def test_armijo_condition_only_needs_decrease():
    f = lambda x: jnp.sum(x**4)
    x = jnp.array([1.0, -2.0])
    value, grad = jax.value_and_grad(f)(x)
    res = so_opt.wolfe_line_search(f, x, -grad, value, grad, condition="armijo")
    eta = float(res.learning_rate)
    slope0 = float(grad @ -grad)
    assert bool(res.wolfe) and eta > 0
    assert float(f(x - eta * grad)) <= float(value) + C1 * eta * slope0


def test_nan_region_is_never_accepted():
    # Finite inside the unit ball, NaN outside; the first trials overshoot.
    f = lambda x: jnp.where(jnp.sum(x**2) < 1.0, jnp.sum((x - 0.9) ** 2), jnp.nan)
    x = jnp.array([0.0, 0.0])
    value, grad = jax.value_and_grad(f)(x)
    res = so_opt.wolfe_line_search(f, x, -grad, value, grad, learning_rate=100.0)
    assert float(res.learning_rate) > 0
    assert np.isfinite(float(res.value))
    assert bool(jnp.all(jnp.isfinite(x - res.learning_rate * grad)))


@pytest.mark.parametrize("offset_ulps, found", [(2, True), (100, False)])
def test_decrease_below_roundoff_is_judged_by_the_slopes(offset_ulps, found):
    # f = 1 + |x|^2 / 2 near x = 0: the true decrease of the step to the
    # minimizer, 1.25e-17, is below half an ulp of 1, so f(x0) rounds to 1.
    # Every other point reads `offset_ulps` ulps high, a stand-in for
    # roundoff the gradient does not see.
    x0 = jnp.array([3e-9, -4e-9])
    eps = float(jnp.finfo(jnp.float64).eps)

    def f(x):
        at_start = jnp.all(x == x0)
        noise = jnp.where(at_start, 0.0, offset_ulps * eps)
        return 1.0 + 0.5 * jnp.sum(x**2) + jax.lax.stop_gradient(noise)

    value, grad = jax.value_and_grad(f)(x0)
    assert float(value) == 1.0
    res = so_opt.wolfe_line_search(f, x0, -grad, value, grad)
    if found:
        # Within the roundoff band the secant rule sees the decrease
        # (phi'(0) + phi'(1)) / 2 = -|x0|^2 / 2 and the zero slope at t = 1.
        assert int(res.status) == StatusCode.RUNNING and bool(res.wolfe)
        assert float(res.learning_rate) == 1.0
        assert int(res.num_trials) == 1
    else:
        # A rise of 100 ulps is measurable: never accepted, whatever the slopes.
        assert int(res.status) == StatusCode.LINE_SEARCH_FAILED
        assert float(res.learning_rate) == 0.0


def test_ascent_direction_fails_without_evaluating():
    f = lambda x: jnp.sum(x**2)
    x = jnp.array([1.0, 1.0])
    value, grad = jax.value_and_grad(f)(x)
    res = so_opt.wolfe_line_search(f, x, grad, value, grad)
    assert int(res.status) == StatusCode.LINE_SEARCH_FAILED
    assert float(res.learning_rate) == 0.0
    assert int(res.num_trials) == 0


def test_scale_by_wolfe_counts_costs_and_caches_value():
    f = lambda x: jnp.sum((x - 1.0) ** 2) + jnp.sum(x**4)
    opt = optax.chain(optax.scale(-1.0), so_opt.scale_by_wolfe())
    x = jnp.array([2.0, -1.0])
    state = opt.init(x)
    value, grad = jax.value_and_grad(f)(x)
    # value_fn is a closure, not an array: it is bound outside the jit.
    update = jax.jit(
        lambda g, s, p, v: opt.update(g, s, p, value=v, grad=g, value_fn=f)
    )
    u, state = update(grad, state, x, value)
    new_x = optax.apply_updates(x, u)
    trials = int(state[1].num_trials)
    assert trials >= 1
    assert int(so_opt.costs(state).grad_evals) == trials
    v, g, reused = so_opt.value_and_grad_from_state(f, new_x, u, state)
    assert bool(reused)
    np.testing.assert_allclose(v, f(new_x), rtol=1e-12)
    np.testing.assert_allclose(g, jax.grad(f)(new_x), rtol=1e-10)
    # A changed update does not match the cache: the value is recomputed.
    half = otu.tree_scale(0.5, u)
    v2, _, reused2 = so_opt.value_and_grad_from_state(f, x + half, half, state)
    assert not bool(reused2)
    np.testing.assert_allclose(v2, f(x + half), rtol=1e-12)


def test_has_aux_returns_aux_at_accepted_point():
    f = lambda x: (jnp.sum(x**2), {"norm": jnp.linalg.norm(x)})
    x = jnp.array([3.0, 4.0])
    (value, _), grad = jax.value_and_grad(f, has_aux=True)(x)
    res = so_opt.wolfe_line_search(f, x, -grad, value, grad, has_aux=True)
    new_x = x - res.learning_rate * grad
    np.testing.assert_allclose(res.aux["norm"], jnp.linalg.norm(new_x), rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"c1": 0.0}, r"`c1` must be in \(0.0, 1.0\), got 0.0\."),
        ({"c2": 1e-5}, r"`c2` must be greater than `c1` = 0.0001, got 1e-05\."),
        ({"max_trials": 0}, r"`max_trials` must be an integer >= 1, got 0\."),
        ({"increase_factor": 1.0}, r"`increase_factor` must be > 1, got 1.0\."),
        ({"condition": "weak"}, r"`condition` must be one of .*, got 'weak'\."),
        ({"learning_rate": -1.0}, r"`learning_rate` must be > 0, got -1.0\."),
    ],
)
def test_bad_hyperparameters_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        so_opt.scale_by_wolfe(**kwargs)


def test_missing_value_fn_names_the_argument():
    opt = so_opt.scale_by_wolfe()
    x = jnp.ones(2)
    with pytest.raises(TypeError, match=r"`value_fn=`.*\.$"):
        opt.update(x, opt.init(x), x, value=1.0, grad=x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"learning_rate": -1.0}, r"`learning_rate` must be > 0, got -1.0\."),
        ({"learning_rate": float("nan")}, r"`learning_rate` must be finite"),
        ({"max_learning_rate": 0.0}, r"`max_learning_rate` must be > 0, got 0.0\."),
        ({"direction": jnp.ones(3)}, r"`direction` must match the shapes"),
        ({"direction": {"a": jnp.ones(2)}}, r"`direction` must have the tree"),
    ],
)
def test_line_search_arguments_are_checked_before_any_trial(kwargs, match):
    f = lambda x: jnp.sum(x**2)
    x = jnp.ones(2)
    args = {"direction": -x, **kwargs}
    direction = args.pop("direction")
    with pytest.raises(ValueError, match=match):
        so_opt.wolfe_line_search(f, x, direction, 2.0, 2 * x, **args)


@pytest.mark.parametrize("make", ["search", "lbfgs"])
def test_aux_may_hold_python_numbers(make):
    # A Python int or float in aux is a constant of the trace; it used to
    # fail the cast of the loop carry.
    f = lambda x: (jnp.sum((x - 1.0) ** 2), {"n": 3, "scale": 1.0, "x0": x[0]})
    x = jnp.zeros(2)
    (value, _), grad = jax.value_and_grad(f, has_aux=True)(x)
    if make == "search":
        res = so_opt.wolfe_line_search(f, x, -grad, value, grad, has_aux=True)
        new_x, aux = x - res.learning_rate * grad, res.aux
    else:
        opt = so_opt.lbfgs(has_aux=True)
        u, state = opt.update(grad, opt.init(x), x, value=value, grad=grad, value_fn=f)
        new_x, aux = x + u, None
        assert so_opt.status(state) == StatusCode.RUNNING
    assert float(f(new_x)[0]) < float(value)
    if aux is not None:
        assert int(aux["n"]) == 3 and float(aux["scale"]) == 1.0
        np.testing.assert_allclose(aux["x0"], new_x[0], rtol=1e-12)
