"""Tests of `so_opt.minimize`: stopping rules, statuses, costs, history, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import so_opt
from so_opt import StatusCode

TARGET = jnp.array([1.0, -2.0, 0.5])


def half_square(x):
    return 0.5 * jnp.sum((x - TARGET) ** 2)


SGD = optax.sgd(0.5)


def test_plain_optax_sgd_stops_at_the_predicted_step():
    # Gradient descent with rate 1/2 on 0.5 |x - c|^2 halves |g| each step:
    # |g_t| = |c| 2^-t <= gtol first at t = ceil(log2(|c| / gtol)).
    gtol = 1e-6
    res = so_opt.minimize(half_square, jnp.zeros(3), SGD, gtol=gtol, max_steps=100)
    expected = int(np.ceil(np.log2(float(jnp.linalg.norm(TARGET)) / gtol)))
    assert int(res.status) == StatusCode.CONVERGED
    assert int(res.num_steps) == expected
    np.testing.assert_allclose(res.grad_norm, np.linalg.norm(TARGET) * 2.0**-expected)
    np.testing.assert_allclose(res.params, TARGET, atol=gtol)
    # optax reports no costs: the driver's gradients are the whole bill.
    assert int(res.costs.grad_evals) == expected + 1


def test_max_steps_status_and_history():
    res = so_opt.minimize(
        half_square, jnp.zeros(3), SGD, gtol=0.0, max_steps=5, record_history=True
    )
    assert int(res.status) == StatusCode.MAX_STEPS
    assert int(res.num_steps) == 5
    # value_t = 0.5 |c|^2 4^-t, recomputed by hand.
    want = 0.5 * float(jnp.sum(TARGET**2)) * 0.25 ** np.arange(6)
    np.testing.assert_allclose(res.history, want, rtol=1e-12)


def test_history_is_nan_past_the_last_step():
    res = so_opt.minimize(
        half_square,
        jnp.zeros(3),
        so_opt.lbfgs(),
        gtol=1e-8,
        max_steps=20,
        record_history=True,
    )
    steps = int(res.num_steps)
    assert int(res.status) == StatusCode.CONVERGED and steps < 20
    assert np.all(np.isfinite(res.history[: steps + 1]))
    assert np.all(np.isnan(res.history[steps + 1 :]))
    np.testing.assert_allclose(res.history[steps], res.value)


def test_jit_driver_matches_a_python_loop_and_counts_costs():
    f = lambda x: jnp.sum((x - 1.0) ** 2) + jnp.sum(x**4) + x[0] * x[1]
    opt = so_opt.lbfgs(memory_size=3)
    x0 = jnp.array([2.0, -1.0, 0.5])
    res = so_opt.minimize(f, x0, opt, gtol=1e-7, max_steps=100)
    assert int(res.status) == StatusCode.CONVERGED

    step = jax.jit(lambda g, s, x, v: opt.update(g, s, x, value=v, grad=g, value_fn=f))
    x, state = x0, opt.init(x0)
    evals = 0
    for _ in range(int(res.num_steps)):
        value, grad = jax.value_and_grad(f)(x)
        evals += 1
        updates, state = step(grad, state, x, value)
        x = optax.apply_updates(x, updates)
    np.testing.assert_allclose(x, res.params, rtol=1e-12)
    # The loop spends a gradient per step; the driver reuses the line search's.
    own = int(so_opt.costs(state).grad_evals)
    assert int(res.costs.grad_evals) == own + 1
    assert evals + own > int(res.costs.grad_evals)


def test_non_finite_step_is_rejected_and_reported():
    # Finite only for |x| < 3: a too-long plain step lands in the NaN region.
    f = lambda x: jnp.where(jnp.sum(x**2) < 9.0, jnp.sum(x**2), jnp.nan)
    res = so_opt.minimize(f, jnp.array([2.0, 0.0]), optax.sgd(2.0), max_steps=10)
    assert int(res.status) == StatusCode.NON_FINITE
    assert int(res.num_steps) == 0
    np.testing.assert_allclose(res.params, [2.0, 0.0])
    assert np.isfinite(float(res.value))


def test_step_to_infinite_params_is_rejected_even_with_finite_value_and_grad():
    # tanh(-inf) = -1 and its gradient 1 - tanh^2 = 0 are finite: only the
    # params show that the infinite step left the finite region.
    f = lambda x: jnp.sum(jnp.tanh(x))
    res = so_opt.minimize(f, jnp.zeros(2), optax.sgd(float("inf")), max_steps=5)
    assert int(res.status) == StatusCode.NON_FINITE
    assert int(res.num_steps) == 0
    np.testing.assert_allclose(res.params, [0.0, 0.0])
    np.testing.assert_allclose(res.grad_norm, np.sqrt(2.0))


def test_line_search_failure_stops_with_its_status():
    # f(x) = -sum(x), but stop_gradient makes the gradient +1: every trial
    # along -g raises the loss, so no step can be accepted.
    f = lambda x: jnp.sum(x - 2.0 * jax.lax.stop_gradient(x))
    res = so_opt.minimize(f, jnp.array([1.0, 1.0]), so_opt.lbfgs(), max_steps=10)
    assert int(res.status) == StatusCode.LINE_SEARCH_FAILED
    np.testing.assert_allclose(res.params, [1.0, 1.0])
    assert int(res.num_steps) == 0


def test_start_at_the_minimum_converges_without_steps():
    res = so_opt.minimize(half_square, TARGET, so_opt.bfgs())
    assert int(res.status) == StatusCode.CONVERGED
    assert int(res.num_steps) == 0
    assert int(res.costs.grad_evals) == 1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"max_steps": 0}, ValueError, r"`max_steps` must be an integer >= 1, got 0"),
        ({"gtol": -1.0}, ValueError, r"`gtol` must be >= 0, got -1.0\."),
        ({"params": jnp.arange(3)}, TypeError, r"`params` must hold floating-point"),
        ({"params": {}}, ValueError, r"`params` must hold at least one array"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, error, match):
    args = {"params": jnp.zeros(3), **kwargs}
    params = args.pop("params")
    with pytest.raises(error, match=match):
        so_opt.minimize(half_square, params, SGD, **args)


def _optax_documented_loop(opt, fun, x0, num_steps, from_state=True):
    """optax's own loop (value and gradient from its state), in Python."""
    from_state_fn = optax.value_and_grad_from_state(fun)
    x, state = x0, opt.init(x0)
    steps = []
    for _ in range(num_steps):
        if from_state:
            value, grad = from_state_fn(x, state=state)
        else:
            value, grad = jax.value_and_grad(fun)(x)
        u, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=fun)
        x = optax.apply_updates(x, u)
        steps.append(int(optax.tree_utils.tree_get(state, "num_linesearch_steps")))
    return x, steps


def test_optax_lbfgs_reuses_its_line_search_value_and_counts_its_steps():
    fun = lambda x: jnp.sum((x[1:] - x[:-1] ** 2) ** 2) + jnp.sum((1 - x) ** 2)
    x0 = jnp.array([-1.2, 1.0, -1.2, 1.0])
    res = so_opt.minimize(fun, x0, optax.lbfgs(), max_steps=12, gtol=0.0)
    x, steps = _optax_documented_loop(optax.lbfgs(), fun, x0, 12)
    # The same iterates as optax's documented loop, to the last bit.
    np.testing.assert_array_equal(res.params, x)
    # One evaluation at the start, then only the line search's own.
    assert int(res.costs.grad_evals) == 1 + sum(steps)
    assert int(res.costs.value_evals) == 0


@pytest.mark.parametrize("store_grad", [True, False])
def test_optax_backtracking_costs_are_values_per_step(store_grad):
    fun = lambda x: jnp.sum(x**4) + jnp.sum((x - 1.0) ** 2)
    x0 = jnp.array([2.0, -3.0])
    search = optax.scale_by_backtracking_linesearch(30, store_grad=store_grad)
    opt = optax.chain(optax.sgd(1.0), search)
    res = so_opt.minimize(fun, x0, opt, max_steps=8, gtol=0.0)
    x, steps = _optax_documented_loop(opt, fun, x0, 8, from_state=store_grad)
    np.testing.assert_array_equal(res.params, x)
    # Each backtracking step is one value; the gradient at the accepted point
    # is either stored by the search or computed by the driver.
    assert int(res.costs.value_evals) == sum(steps)
    assert int(res.costs.grad_evals) == 1 + int(res.num_steps)


def test_final_state_is_returned_only_on_request():
    opt = so_opt.lbfgs()
    lean = so_opt.minimize(half_square, jnp.zeros(3), opt, gtol=1e-8)
    full = so_opt.minimize(half_square, jnp.zeros(3), opt, gtol=1e-8, keep_state=True)
    assert lean.state is None
    # The same run either way; the kept state holds the line search's
    # evaluations, and the driver adds only the one at the start.
    np.testing.assert_array_equal(lean.params, full.params)
    assert int(lean.num_steps) == int(full.num_steps)
    assert isinstance(full.state, so_opt.LBFGSState)
    spent = int(so_opt.costs(full.state).grad_evals)
    assert int(full.costs.grad_evals) == spent + 1 == int(lean.costs.grad_evals)


@pytest.mark.parametrize("name", ["record_history", "keep_state", "verbose"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_flags_that_are_not_bools_name_the_argument(name, value):
    with pytest.raises(TypeError, match=f"`{name}` must be True or False"):
        so_opt.minimize(half_square, jnp.zeros(3), SGD, **{name: value})


@pytest.mark.parametrize(
    "fun",
    [
        lambda x: (jnp.sum(x**2), {"aux": x}),  # a has_aux loss
        lambda x: jnp.sum(x**2, keepdims=True),  # shape (1,)
        lambda x: jnp.sum(x > 0),  # integer
    ],
    ids=["aux", "vector", "integer"],
)
def test_a_loss_that_is_not_a_real_scalar_names_fun(fun):
    with pytest.raises(TypeError, match="`fun` must return a floating-point scalar"):
        so_opt.minimize(fun, jnp.ones(3), SGD)


def _weighted_square(x, target, weight):
    return 0.5 * weight * jnp.sum((x - target) ** 2)


def test_args_are_traced_so_new_data_reuse_the_compiled_loop():
    from so_opt._src import minimize as minimize_lib

    opt = so_opt.lbfgs()
    run = lambda target, weight: so_opt.minimize(
        _weighted_square, jnp.zeros(3), opt, args=(target, weight), gtol=1e-10
    )
    first = run(TARGET, jnp.asarray(2.0))
    jitted = minimize_lib._compiled(compile_options_for(opt))
    compiled = jitted._cache_size()
    second = run(-2.0 * TARGET, jnp.asarray(3.0))
    # The minimizer is each call's own target: nothing is frozen from the first.
    np.testing.assert_allclose(first.params, TARGET, atol=1e-9)
    np.testing.assert_allclose(second.params, -2.0 * TARGET, atol=1e-9)
    np.testing.assert_allclose(second.value, 0.0, atol=1e-18)
    assert jitted._cache_size() == compiled


def compile_options_for(opt):
    from so_opt._src import compile_options

    return compile_options.for_optimizer(opt, None, jnp.zeros(3))


@pytest.mark.parametrize(
    "fun, optimizer, args, match",
    [
        (
            half_square,
            so_opt.lbfgs,
            (),
            r"`optimizer` must be an optax.*`lbfgs\(\.\.\.\)`",
        ),
        (half_square, None, (), r"`optimizer` must be an optax .*got None\.$"),
        (3.0, SGD, (), r"`fun` must be a function of the params, got 3\.0"),
        (half_square, SGD, [TARGET], r"`args` must be a tuple .*got list"),
    ],
)
def test_bad_fun_optimizer_and_args_name_the_argument(fun, optimizer, args, match):
    with pytest.raises(TypeError, match=match):
        so_opt.minimize(fun, jnp.zeros(3), optimizer, args=args)


def test_an_unhashable_fun_is_named_with_a_remedy():
    class Loss:  # a mutable callable: no __hash__
        __hash__ = None

        def __call__(self, x):
            return half_square(x)

    with pytest.raises(TypeError, match=r"`fun` must be hashable.*lambda p: fun"):
        so_opt.minimize(Loss(), jnp.zeros(3), SGD)
    loss = Loss()
    res = so_opt.minimize(lambda p: loss(p), jnp.zeros(3), SGD, max_steps=50)
    np.testing.assert_allclose(res.params, TARGET, atol=1e-6)


def test_a_float32_gradient_norm_past_the_range_is_reported_not_stepped_on():
    # |g| = 2e20 * sqrt(3): finite entries, but |g|^2 overflows float32. The
    # documented outcome is NON_FINITE at the start, the params untouched.
    fun = lambda x: 1e20 * jnp.sum((x - 1.0) ** 2)
    res = so_opt.minimize(fun, jnp.zeros(3, jnp.float32), so_opt.lbfgs())
    assert int(res.status) == StatusCode.NON_FINITE
    assert int(res.num_steps) == 0
    np.testing.assert_array_equal(res.params, np.zeros(3, np.float32))
    # In float64 the same loss is an ordinary quadratic.
    res = so_opt.minimize(fun, jnp.zeros(3), so_opt.lbfgs(), gtol=1e-2)
    assert int(res.status) == StatusCode.CONVERGED
    np.testing.assert_allclose(res.params, 1.0, rtol=1e-12)


def test_optax_multisteps_is_taken_as_optax_takes_it():
    # optax.MultiSteps has init and update but is no GradientTransformation
    # NamedTuple: two accumulated half-steps of sgd(0.5) per update.
    res = so_opt.minimize(
        half_square, jnp.zeros(3), optax.MultiSteps(SGD, 2), max_steps=200
    )
    assert int(res.status) == StatusCode.CONVERGED
    np.testing.assert_allclose(res.params, TARGET, atol=1e-6)


def test_gauss_newton_closures_reach_the_optimizer_with_the_args():
    # hessian_free's default curvature needs model_fn and output_loss_fn;
    # minimize binds them to the same traced args as fun and must follow a
    # manual loop given the problem's own closures on that batch, step for step.
    from so_opt.problems import digits_mlp

    problem = digits_mlp(hidden=(8,), dtype="float64")
    batch = problem.train
    opt = so_opt.hessian_free()
    x0 = problem.init_params(0)
    res = so_opt.minimize(
        problem.loss,
        x0,
        opt,
        args=(batch,),
        model_fn=problem.model_fn,
        output_loss_fn=problem.output_loss_fn,
        max_steps=4,
        gtol=0.0,
    )
    assert int(res.status) == StatusCode.MAX_STEPS

    fun, extra = problem.value_fn(batch), problem.extra_args(batch)
    step = jax.jit(lambda g, s, x, v: opt.update(g, s, x, value=v, grad=g, **extra))
    x, state = x0, opt.init(x0)
    for _ in range(4):
        value, grad = jax.value_and_grad(fun)(x)
        updates, state = step(grad, state, x, value)
        x = optax.apply_updates(x, updates)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10), x, res.params
    )
    assert int(res.costs.hvp_evals) == int(so_opt.costs(state).hvp_evals) > 0
    assert float(res.value) < 0.5 * float(fun(x0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model_fn": lambda p, b: p}, r"`model_fn` and `output_loss_fn` go together"),
        ({"output_loss_fn": half_square}, r"got only `output_loss_fn`"),
        (
            {"model_fn": 1.0, "output_loss_fn": half_square},
            r"`model_fn` must be a function of the params, got 1\.0",
        ),
    ],
)
def test_gauss_newton_closures_are_checked(kwargs, match):
    with pytest.raises(TypeError, match=match):
        so_opt.minimize(half_square, jnp.zeros(3), SGD, **kwargs)
