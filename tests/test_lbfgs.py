"""Tests of `so_opt.lbfgs`: convergence against scipy, the ring buffer, safeguards."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from _qn_problems import logreg_reference, standard_start

import so_opt
from so_opt import StatusCode
from so_opt._src import lbfgs as lbfgs_lib
from so_opt.problems import breast_cancer_logreg, rosenbrock_value

GTOL = 1e-6


def scipy_lbfgs_iterations(n):
    """Iterations scipy's L-BFGS-B (memory 10) needs on the chained function."""
    ref = scipy.optimize.minimize(
        scipy.optimize.rosen,
        np.asarray(standard_start(n, jnp.float64)),
        jac=scipy.optimize.rosen_der,
        method="L-BFGS-B",
        options={"gtol": GTOL, "ftol": 0.0, "maxcor": 10, "maxiter": 10_000},
    )
    assert ref.success
    return ref.nit


# One optimizer object for the whole file: minimize reuses its compilation.
LBFGS = so_opt.lbfgs()


def run_rosenbrock(n, dtype, gtol=GTOL):
    # The same static arguments everywhere, so each (n, dtype) compiles once.
    return so_opt.minimize(
        rosenbrock_value,
        standard_start(n, dtype),
        LBFGS,
        max_steps=2000,
        gtol=gtol,
        record_history=True,
        keep_state=True,
    )


@pytest.mark.parametrize("n", [2, 100])
def test_chained_rosenbrock_reaches_all_ones_in_float64(n):
    res = run_rosenbrock(n, jnp.float64)
    assert int(res.status) == StatusCode.CONVERGED
    assert float(res.grad_norm) <= GTOL
    np.testing.assert_allclose(res.params, np.ones(n), atol=1e-6)
    # No more iterations than scipy's L-BFGS-B needs, within 10%.
    assert int(res.num_steps) <= 1.1 * scipy_lbfgs_iterations(n)
    # Each step costs its line-search trials; the driver adds the start only.
    trials = int(so_opt.costs(res.state).grad_evals)
    assert int(res.costs.grad_evals) == trials + 1
    assert trials <= 1.3 * int(res.num_steps)


def test_float32_needs_at_most_ten_percent_more_iterations_than_float64():
    steps = {}
    for dtype in (jnp.float64, jnp.float32):
        # float32 cannot reach a gradient norm of 1e-6 on this scale.
        res = run_rosenbrock(100, dtype, gtol=GTOL if dtype == jnp.float64 else 1e-4)
        assert res.params.dtype == dtype
        assert res.history.dtype == dtype
        below = np.flatnonzero(np.asarray(res.history) < 1e-6)
        assert below.size, f"{dtype} never reached f < 1e-6"
        steps[dtype] = int(below[0])
    assert steps[jnp.float32] <= 1.1 * steps[jnp.float64]


@pytest.mark.parametrize("name", ["lbfgs", "bfgs"])
def test_logistic_regression_minimizer_matches_scipy(name):
    problem = breast_cancer_logreg()
    w_ref, b_ref = logreg_reference(problem)
    loss = lambda p: problem.loss(p, problem.train)
    opt = LBFGS if name == "lbfgs" else so_opt.bfgs()
    res = so_opt.minimize(loss, problem.init_params(0), opt, gtol=1e-9)
    assert int(res.status) == StatusCode.CONVERGED
    # The loss is strongly convex (l2 = 1e-2): |x - x*| <= |g| / l2 = 1e-7.
    np.testing.assert_allclose(res.params["w"], w_ref, atol=1e-6)
    np.testing.assert_allclose(res.params["b"], b_ref, atol=1e-6)


def _dense_lbfgs_inverse(pairs, dim):
    """H from the textbook recursion on the pairs, oldest first, H0 = gamma I."""
    s_new, y_new = pairs[-1]
    h = (s_new @ y_new) / (y_new @ y_new) * np.eye(dim)
    for s, y in pairs:
        rho = 1.0 / (s @ y)
        v = np.eye(dim) - rho * np.outer(y, s)
        h = v.T @ h @ v + rho * np.outer(s, s)
    return h


@pytest.mark.parametrize("memory_size", [1, 3])
def test_ring_buffer_direction_matches_dense_recursion(memory_size):
    # Strongly convex quadratic: every pair has s'y > 0 and is stored.
    rng = np.random.default_rng(0)
    dim = 6
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    a = (q * np.geomspace(1.0, 50.0, dim)) @ q.T
    b = rng.normal(size=dim)
    f = lambda x: 0.5 * x @ (jnp.asarray(a) @ x) - jnp.asarray(b) @ x
    opt = so_opt.lbfgs(memory_size=memory_size)
    update = jax.jit(
        lambda g, s, x, v: opt.update(g, s, x, value=v, grad=g, value_fn=f)
    )
    x = jnp.asarray(rng.normal(size=dim))
    state = opt.init(x)
    pairs = []
    # More steps than slots: the buffer wraps around at least twice.
    for _ in range(2 * memory_size + 3):
        value, grad = jax.value_and_grad(f)(x)
        updates, state = update(grad, state, x, value)
        eta = float(state.learning_rate)
        assert eta > 0
        if pairs:
            h = _dense_lbfgs_inverse(pairs[-memory_size:], dim)
            np.testing.assert_allclose(
                np.asarray(updates) / eta, -h @ np.asarray(grad), rtol=1e-9
            )
        new_x = x + updates
        pairs.append((np.asarray(updates), np.asarray(f_grad(a, b, new_x, x))))
        x = new_x
    assert int(jnp.sum(state.rho > 0)) == memory_size


def f_grad(a, b, new_x, x):
    """Gradient difference of the quadratic, computed by hand: A (x+ - x)."""
    del b
    return a @ (np.asarray(new_x) - np.asarray(x))


def _steepest_update(opt, f, state, x):
    """One jitted update from ``x``; asserts it went along -g and decreased f."""
    value, grad = jax.value_and_grad(f)(x)
    update = jax.jit(
        lambda g, s, x, v: opt.update(g, s, x, value=v, grad=g, value_fn=f)
    )
    updates, new_state = update(grad, state, x, value)
    cos = jnp.vdot(updates, -grad) / (jnp.linalg.norm(updates) * jnp.linalg.norm(grad))
    np.testing.assert_allclose(cos, 1.0, rtol=1e-12)
    assert float(f(x + updates)) < float(value)
    return updates, new_state


def test_non_descent_memory_falls_back_to_steepest_descent_and_resets():
    f = lambda x: jnp.sum((x - 1.0) ** 2)
    x = jnp.zeros(3)
    opt = so_opt.lbfgs(memory_size=2)
    # A stored pair in slot 1 and an overflowed (NaN) scale: -H g is not finite.
    pair = jnp.zeros((2, 3)).at[1].set(jnp.ones(3))
    state = opt.init(x)._replace(
        s_memory=pair,
        y_memory=pair,
        rho=jnp.array([0.0, 1.0 / 3.0]),
        gamma=jnp.asarray(jnp.nan),
    )
    _, new_state = _steepest_update(opt, f, state, x)
    # The memory was cleared: only the new pair is kept, in slot 0.
    assert float(new_state.rho[0]) > 0 and float(new_state.rho[1]) == 0.0
    assert int(new_state.head) == 1
    assert np.isfinite(float(new_state.gamma))


def test_failed_search_with_memory_restarts_along_steepest_descent():
    # One stored pair s = e0, y = (1, 3, 0) gives at x = 0 the descent
    # direction -H g = (3.2, -0.4, 0.2) (worked by hand with H0 = s'y/y'y I);
    # every step along it enters the NaN region x1 < 0, the steepest one not.
    def f(x):
        return jnp.where(x[1] < 0.0, jnp.nan, jnp.sum((x - 1.0) ** 2))

    x = jnp.zeros(3)
    s, y = jnp.array([1.0, 0.0, 0.0]), jnp.array([1.0, 3.0, 0.0])
    opt = so_opt.lbfgs(memory_size=1, max_trials=10)
    state = opt.init(x)._replace(
        s_memory=s[None],
        y_memory=y[None],
        rho=jnp.array([1.0]),
        gamma=jnp.asarray(0.1),
        head=jnp.asarray(0, jnp.int32),
    )
    grad = jax.grad(f)(x)
    hg = lbfgs_lib.two_loop(grad, state.s_memory, state.y_memory, state.rho, 0, 0.1)
    np.testing.assert_allclose(-hg, [3.2, -0.4, 0.2], rtol=1e-12)
    updates, new_state = _steepest_update(opt, f, state, x)
    assert int(new_state.status.code) == StatusCode.RUNNING
    # Both attempts are paid for: all 10 trials of the first, then the restart.
    assert int(new_state.costs.grad_evals) > 10
    # The memory was cleared and holds the new pair only.
    np.testing.assert_allclose(new_state.s_memory[0], updates, rtol=1e-12)


def test_nan_region_never_produces_non_finite_params():
    # NaN outside the ball of radius 2, minimum at (1.5, 0) just inside.
    def f(x):
        inside = jnp.sum(x**2) < 4.0
        return jnp.where(inside, jnp.sum((x - jnp.array([1.5, 0.0])) ** 2), jnp.nan)

    # The first trial steps (unit length, then doubled) leave the ball.
    res = so_opt.minimize(f, jnp.array([-1.0, 0.5]), LBFGS, gtol=1e-10)
    assert int(res.status) == StatusCode.CONVERGED
    np.testing.assert_allclose(res.params, [1.5, 0.0], atol=1e-8)
    # Step by step in a Python loop, every iterate stays finite.
    step = jax.jit(
        lambda g, s, x, v: LBFGS.update(g, s, x, value=v, grad=g, value_fn=f)
    )
    x = jnp.array([-1.0, 0.5])
    state = LBFGS.init(x)
    for _ in range(int(res.num_steps)):
        value, grad = jax.value_and_grad(f)(x)
        updates, state = step(grad, state, x, value)
        x = optax.apply_updates(x, updates)
        assert bool(jnp.all(jnp.isfinite(x)))
    np.testing.assert_allclose(x, res.params, atol=1e-12)


def _x_log_x(x):
    # Finite value everywhere, NaN gradient for x < 0: the where() pitfall.
    entropy = jnp.where(x > 0, x * jnp.log(x), 0.0)
    return jnp.sum(entropy) + jnp.sum((x - 0.5) ** 2)


@pytest.mark.parametrize("opt", [so_opt.lbfgs(), so_opt.bfgs()], ids=["lbfgs", "bfgs"])
def test_trial_with_finite_value_and_nan_gradient_is_refused(opt):
    # The unit first step from 5 lands at x < 0 (finite value, NaN gradient).
    # Minimizer: log x + 1 + 2 (x - 1/2) = 0, solved by scipy.
    root = scipy.optimize.brentq(lambda x: np.log(x) + 2 * x, 1e-3, 1.0)
    res = so_opt.minimize(_x_log_x, jnp.array([5.0, 5.0]), opt, gtol=1e-8)
    assert int(res.status) == StatusCode.CONVERGED
    np.testing.assert_allclose(res.params, [root, root], rtol=1e-7)
    # In a manual loop every update is finite too.
    x, state = jnp.array([5.0, 5.0]), opt.init(jnp.array([5.0, 5.0]))
    for _ in range(int(res.num_steps)):
        value, grad = jax.value_and_grad(_x_log_x)(x)
        updates, state = opt.update(
            grad, state, x, value=value, grad=grad, value_fn=_x_log_x
        )
        assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
        x = optax.apply_updates(x, updates)
    np.testing.assert_allclose(x, res.params, atol=1e-12)


@pytest.mark.parametrize("make", [so_opt.lbfgs, so_opt.bfgs], ids=["lbfgs", "bfgs"])
@pytest.mark.parametrize(
    "value, grad, code",
    [
        (5.0, [jnp.nan, 1.0], StatusCode.NON_FINITE),
        (5.0, [jnp.inf, 1.0], StatusCode.NON_FINITE),
        (jnp.nan, [1.0, 1.0], StatusCode.NON_FINITE),
        # A stationary point: no descent direction, and nothing failed.
        (5.0, [0.0, 0.0], StatusCode.CONVERGED),
    ],
)
def test_an_update_that_cannot_search_is_a_zero_step_that_says_why(
    make, value, grad, code
):
    opt, x, grad = make(), jnp.array([1.0, 2.0]), jnp.array(grad)
    updates, state = opt.update(
        grad,
        opt.init(x),
        x,
        value=jnp.asarray(value),
        grad=grad,
        value_fn=lambda p: jnp.sum(p**2),
    )
    np.testing.assert_array_equal(updates, [0.0, 0.0])
    assert int(so_opt.status(state)) == code
    assert int(so_opt.costs(state).grad_evals) == 0


def test_armijo_line_search_and_has_aux():
    def f(x):
        loss = jnp.sum((x - 2.0) ** 2) + 0.1 * jnp.sum(x**4)
        return loss, {"loss_again": loss}

    opt = so_opt.lbfgs(line_search="armijo", has_aux=True)

    @jax.jit
    def step(x, state):
        (value, _), grad = jax.value_and_grad(f, has_aux=True)(x)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
        return optax.apply_updates(x, updates), state

    x = jnp.zeros(4, jnp.float32)
    state = opt.init(x)
    for _ in range(30):
        x, state = step(x, state)
    assert x.dtype == jnp.float32
    assert state.rho.dtype == jnp.float32
    # Stationary point of (x - 2)^2 + 0.1 x^4: 2 (x - 2) + 0.4 x^3 = 0.
    root = scipy.optimize.brentq(lambda t: 2 * (t - 2) + 0.4 * t**3, 0.0, 2.0)
    np.testing.assert_allclose(x, np.full(4, root), rtol=1e-5)


@pytest.mark.parametrize("line_search", ["armijo", "strong_wolfe"])
@pytest.mark.parametrize("make", [so_opt.lbfgs, so_opt.bfgs], ids=["lbfgs", "bfgs"])
def test_a_step_below_the_resolution_of_the_params_is_a_failure(make, line_search):
    # From x = 3 every point ahead is NaN, and any step that stays finite is
    # below the float32 spacing at 3 (2.4e-7): x, f and g come back unchanged.
    # Such a step must be refused (LINE_SEARCH_FAILED), not accepted again and
    # again on the roundoff rule until max_steps.
    wall = lambda x: jnp.sum(jnp.where(x > 3.0, jnp.nan, (x - 5.0) ** 2))
    res = so_opt.minimize(
        wall, jnp.zeros(1, jnp.float32), make(line_search=line_search)
    )
    assert int(res.status) == StatusCode.LINE_SEARCH_FAILED
    assert int(res.num_steps) <= 3
    np.testing.assert_array_equal(res.params, [3.0])
    # One failed update (two attempts of at most max_trials each) per step.
    assert int(res.costs.grad_evals) <= 1 + 2 * 30 * (int(res.num_steps) + 1)


@pytest.mark.parametrize("make", [so_opt.lbfgs, so_opt.bfgs], ids=["lbfgs", "bfgs"])
def test_armijo_steps_lower_the_value_strictly_and_stop_at_the_floor(make):
    # float32 logistic regression asked for |g| <= 1e-9, far below what its
    # values can resolve: every accepted step lowers the loss, and the run
    # ends LINE_SEARCH_FAILED at the floor instead of MAX_STEPS (before, steps
    # that changed nothing, or values that rose and fell by an ulp, went on).
    p = breast_cancer_logreg(dtype="float32")
    fun = lambda params: p.loss(params, p.train)
    opt = make(line_search="armijo")
    res = so_opt.minimize(
        fun, p.init_params(0), opt, gtol=1e-9, max_steps=1000, record_history=True
    )
    assert int(res.status) == StatusCode.LINE_SEARCH_FAILED
    steps = int(res.num_steps)
    assert steps < 200
    history = np.asarray(res.history[: steps + 1])
    assert np.all(np.diff(history) < 0)
    # Stopped at the minimum value to float32 accuracy (float64 reference).
    p64 = breast_cancer_logreg(dtype="float64")
    w_ref, b_ref = logreg_reference(p64)
    best = float(p64.loss({"w": w_ref, "b": b_ref}, p64.train))
    assert float(res.value) == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize("make", [so_opt.lbfgs, so_opt.bfgs], ids=["lbfgs", "bfgs"])
def test_strong_wolfe_stops_at_the_floor_too(make):
    # The roundoff rule must not take a trial whose value and slope equal the
    # reference as lower (the point did not move): without that guard both
    # methods ran this float32 problem to max_steps at the floor.
    p = breast_cancer_logreg(dtype="float32")
    fun = lambda params: p.loss(params, p.train)
    res = so_opt.minimize(fun, p.init_params(0), make(), gtol=1e-9, max_steps=1000)
    assert int(res.status) == StatusCode.LINE_SEARCH_FAILED
    assert int(res.num_steps) < 300
    # The roundoff rule got it below what the values alone resolve.
    assert float(res.grad_norm) < 1e-8


def test_two_loop_helper_matches_dense_inverse():
    rng = np.random.default_rng(3)
    dim, m = 5, 4
    s = rng.normal(size=(m, dim))
    y = s + 0.1 * rng.normal(size=(m, dim))
    rho = 1.0 / np.sum(s * y, axis=1)
    assert np.all(rho > 0)
    g = rng.normal(size=dim)
    # Slot order: head = 2 means slots 2, 3, 0, 1 from oldest to newest.
    head = 2
    order = [(head + j) % m for j in range(m)]
    gamma = (s[order[-1]] @ y[order[-1]]) / (y[order[-1]] @ y[order[-1]])
    h = _dense_lbfgs_inverse([(s[i], y[i]) for i in order], dim)
    got = lbfgs_lib.two_loop(
        jnp.asarray(g),
        jnp.asarray(s),
        jnp.asarray(y),
        jnp.asarray(rho),
        jnp.asarray(head),
        jnp.asarray(gamma),
    )
    np.testing.assert_allclose(got, h @ g, rtol=1e-10)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"memory_size": 0}, ValueError, r"`memory_size` must be an integer >= 1"),
        ({"line_search": "exact"}, ValueError, r"`line_search` must be one of"),
        ({"c1": 1.5}, ValueError, r"`c1` must be in \(0.0, 1.0\), got 1.5\."),
        ({"c2": 1e-5}, ValueError, r"`c2` must be greater than `c1`"),
        ({"max_trials": 0}, ValueError, r"`max_trials` must be an integer >= 1"),
        ({"curvature_rtol": -1.0}, ValueError, r"`curvature_rtol` must be >= 0"),
        ({"curvature_rtol": 1.0}, ValueError, r"`curvature_rtol` must be < 1"),
    ],
)
def test_bad_hyperparameters_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        so_opt.lbfgs(**kwargs)


def test_bad_params_and_missing_extra_args_name_the_argument():
    opt = so_opt.lbfgs()
    with pytest.raises(TypeError, match=r"`params` must hold floating-point"):
        opt.init(jnp.arange(3))
    x = jnp.ones(2)
    with pytest.raises(TypeError, match=r"`value_fn=`"):
        opt.update(x, opt.init(x), x, value=1.0, grad=x)
    with pytest.raises(TypeError, match=r"`lbfgs` needs `params`"):
        opt.update(x, opt.init(x))


@pytest.mark.parametrize("make", [so_opt.lbfgs, so_opt.bfgs], ids=["lbfgs", "bfgs"])
@pytest.mark.parametrize(
    "extra, error, match",
    [
        ({"value": jnp.ones(3)}, ValueError, r"needs a scalar loss in `value`"),
        ({"grad": jnp.ones(3)}, ValueError, r"`grad` .*shape"),
        ({"grad": [jnp.ones(2)]}, ValueError, r"`grad` must have the tree structure"),
        ({"value_fn": 3.0}, TypeError, r"a function of the params as `value_fn=`"),
    ],
)
def test_misused_update_arguments_are_named(make, extra, error, match):
    # Each would otherwise broadcast or fail deep inside the line search.
    opt, x = make(), jnp.ones(2)
    kwargs = {
        "value": jnp.asarray(2.0),
        "grad": x,
        "value_fn": lambda p: jnp.sum(p**2),
        **extra,
    }
    with pytest.raises(error, match=match):
        opt.update(x, opt.init(x), x, **kwargs)


@pytest.mark.parametrize("make", [so_opt.lbfgs, so_opt.bfgs], ids=["lbfgs", "bfgs"])
def test_has_aux_must_be_a_bool(make):
    with pytest.raises(TypeError, match=r"`has_aux` must be True or False, got 1 "):
        make(has_aux=1)


def test_params_of_mixed_dtypes_are_refused_in_init():
    params = {"a": jnp.zeros(2, jnp.float32), "b": jnp.zeros(2, jnp.float64)}
    with pytest.raises(TypeError, match=r"`params` of `lbfgs` must hold leaves of one"):
        so_opt.lbfgs().init(params)
