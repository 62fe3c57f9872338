"""Exact Newton against scipy, on quadratic-rate, saddle and cost properties."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
import pytest
import scipy.optimize

import so_opt
from so_opt import problems


def _run(opt, fun, params, num_steps, gtol=0.0):
    """Jitted steps; returns params, state, values and gradient norms."""

    @jax.jit
    def step(params, state):
        value, grad = jax.value_and_grad(fun)(params)
        updates, state = opt.update(
            grad, state, params, value=value, grad=grad, value_fn=fun
        )
        return optax.apply_updates(params, updates), state, value, otu.tree_norm(grad)

    state = opt.init(params)
    values, norms = [], []
    for _ in range(num_steps):
        new_params, new_state, value, norm = step(params, state)
        values.append(float(value))
        norms.append(float(norm))
        if norms[-1] <= gtol:
            break
        params, state = new_params, new_state
    return params, state, np.asarray(values), np.asarray(norms)


@pytest.fixture(scope="module")
def logreg():
    return problems.breast_cancer_logreg()


def test_quadratic_convergence_on_logistic_regression(logreg):
    fun = logreg.value_fn()
    params, state, _, norms = _run(
        so_opt.newton(), fun, logreg.init_params(0), 12, gtol=1e-10
    )
    # gtol 1e-10 within 12 steps (the last entry is the norm at the result).
    assert norms[-1] <= 1e-10 and len(norms) <= 12
    # Quadratic rate measured on the sequence: |g+| <= C |g|^2 near the solution.
    near = np.nonzero(norms[:-1] < 1e-2)[0]
    assert len(near) >= 2
    ratios = norms[near + 1] / norms[near] ** 2
    assert np.all(ratios <= 100.0), ratios
    assert int(so_opt.status(state)) == so_opt.StatusCode.RUNNING

    # The minimizer matches scipy's (trust-exact, with the exact Hessian).
    flat0, unravel = jax.flatten_util.ravel_pytree(logreg.init_params(0))
    flat_fun = jax.jit(lambda x: fun(unravel(x)))
    ref = scipy.optimize.minimize(
        lambda x: float(flat_fun(x)),
        np.asarray(flat0),
        jac=jax.jit(jax.grad(flat_fun)),
        hess=jax.jit(jax.hessian(flat_fun)),
        method="trust-exact",
        options={"gtol": 1e-11},
    )
    got = jax.flatten_util.ravel_pytree(params)[0]
    np.testing.assert_allclose(got, ref.x, rtol=0, atol=1e-8)


def _saddle(x):
    # Saddle at the origin; minima at (0, +-sqrt(2)), value -1.
    return x[0] ** 2 - x[1] ** 2 + 0.25 * x[1] ** 4


@pytest.mark.parametrize("saddle_free", [True, False])
def test_escapes_a_saddle(saddle_free):
    start = jnp.array([0.5, 1e-3])
    opt = so_opt.newton(saddle_free=saddle_free)
    params, state, values, _ = _run(opt, _saddle, start, 30)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(params))
    assert np.all(np.diff(values) <= 0.0)
    # It leaves the saddle (value 0.25 at the start) for a minimum at -1.
    np.testing.assert_allclose(_saddle(params), -1.0, atol=1e-10)
    np.testing.assert_allclose(jnp.abs(params[1]), np.sqrt(2.0), atol=1e-6)


def test_cholesky_raises_the_shift_on_indefinite_curvature():
    opt = so_opt.newton(damping=1e-6)
    _, state, _, _ = _run(opt, _saddle, jnp.array([0.5, 1e-3]), 1)
    # H = diag(2, -2 + 3e-6): the shift must exceed 2 - 3e-6 to factor.
    assert int(state.num_factorizations) > 1
    assert float(state.shift) > 2.0 - 3e-6
    assert float(state.learning_rate) > 0.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_pytree_params_keep_dtype_and_count_costs(dtype):
    target = {"a": jnp.arange(3.0, dtype=dtype), "b": jnp.ones((2, 2), dtype)}

    def fun(p):
        d = otu.tree_sub(p, target)
        return otu.tree_vdot(d, d) + 0.1 * otu.tree_sum(otu.tree_mul(d, d)) ** 2

    params = otu.tree_zeros_like(target)
    opt = so_opt.newton()
    state = opt.init(params)
    new_params, state, values, _ = _run(opt, fun, params, 4)
    assert jax.tree.map(lambda x: x.dtype, new_params) == {"a": dtype, "b": dtype}
    assert state.damping.dtype == dtype
    assert values[-1] < values[0]
    costs = so_opt.costs(state)
    # k = 7 Hessian-vector products per step, at least one value per step.
    assert int(costs.hvp_evals) == 7 * 4
    assert int(costs.value_evals) >= 4


def test_dense_hessian_matches_jax_hessian():
    from so_opt._src.newton import dense_hessian

    x = jnp.array([0.3, -1.2, 2.0])
    fun = lambda x: jnp.sum(jnp.sin(x) * x[::-1]) + jnp.prod(x) ** 2
    got = dense_hessian(fun, x, chunk_size=2, budget=2**20)
    np.testing.assert_allclose(got, jax.hessian(fun)(x), rtol=1e-12)


def test_memory_budget_is_checked_before_allocating():
    opt = so_opt.newton(memory_budget_bytes=1000)
    with pytest.raises(ValueError, match="`memory_budget_bytes`"):
        opt.init(jnp.zeros(20))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"damping": -1.0}, "damping"),
        ({"damping": 0.0}, "damping"),
        ({"damping_factor": 1.0}, "damping_factor"),
        ({"c1": 1.5}, "c1"),
        ({"max_backtracks": -1}, "max_backtracks"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"min_damping": 10.0, "max_damping": 1.0}, "max_damping"),
        ({"damping": float("inf")}, "damping"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        so_opt.newton(**kwargs)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_params_are_refused_in_init(dtype):
    # LAPACK has no half-precision kernels: refuse before any update.
    with pytest.raises(TypeError, match=r"`params` of `newton` must be float32"):
        so_opt.newton().init(jnp.zeros(3, dtype))


def test_missing_value_fn_is_a_clear_error():
    opt = so_opt.newton()
    x = jnp.zeros(2)
    with pytest.raises(TypeError, match="`value_fn=`"):
        opt.update(x, opt.init(x), x, value=0.0, grad=x)


@pytest.mark.parametrize(
    "make",
    [
        lambda: so_opt.newton(),
        lambda: so_opt.hessian_free("hessian"),
        lambda: so_opt.hessian_free("hessian", cg_norm="l1"),
    ],
    ids=["newton", "hessian_free", "hessian_free_l1"],
)
def test_precision_floor_ends_in_a_failed_search_not_endless_steps(make):
    # float32 quadratic asked for a gradient below what float32 resolves:
    # once a step changes neither the value nor the gradient, the method must
    # say so (zero update, LINE_SEARCH_FAILED), not repeat useless steps.
    a = jnp.arange(1.0, 11.0, dtype=jnp.float32)
    f = lambda x: 0.5 * jnp.sum(a * x * x) - jnp.sum(x)
    res = so_opt.minimize(f, jnp.zeros(10, jnp.float32), make(), gtol=1e-9)
    assert int(res.status) == so_opt.StatusCode.LINE_SEARCH_FAILED
    assert int(res.num_steps) < 20
    assert int(res.costs.value_evals) < 200
    # Where it stopped is the minimizer 1 / a, to float32 accuracy.
    np.testing.assert_allclose(res.params, 1.0 / np.arange(1.0, 11.0), rtol=3e-5)
    assert float(res.grad_norm) < 1e-4


def test_a_stalled_point_keeps_failing_in_a_loop_of_steps():
    # A manual loop (no driver to stop it): once newton has reported that
    # no measurable progress is left, the same point gets zero updates and
    # the same status, instead of alternating no-op steps and failures.
    a = jnp.arange(1.0, 11.0, dtype=jnp.float32)
    f = lambda x: 0.5 * jnp.sum(a * x * x) - jnp.sum(x)
    opt = so_opt.newton()
    step = jax.jit(lambda g, s, x, v: opt.update(g, s, x, value=v, grad=g, value_fn=f))
    x = jnp.zeros(10, jnp.float32)
    state, codes, sizes = opt.init(x), [], []
    for _ in range(12):
        value, grad = jax.value_and_grad(f)(x)
        updates, state = step(grad, state, x, value)
        x = optax.apply_updates(x, updates)
        codes.append(int(so_opt.status(state)))
        sizes.append(float(jnp.linalg.norm(updates)))
    failed = codes.index(so_opt.StatusCode.LINE_SEARCH_FAILED)
    assert failed < 8
    assert set(codes[failed:]) == {so_opt.StatusCode.LINE_SEARCH_FAILED}
    assert all(size == 0.0 for size in sizes[failed:])
