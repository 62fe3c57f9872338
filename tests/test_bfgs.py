"""Tests of `so_opt.bfgs`: the inverse update, convergence against scipy, budget."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from _qn_problems import standard_start

import so_opt
from so_opt import StatusCode
from so_opt._src import bfgs as bfgs_lib
from so_opt.problems import rosenbrock_value

BFGS = so_opt.bfgs()


def test_inverse_update_satisfies_secant_and_matches_the_product_form():
    rng = np.random.default_rng(0)
    dim = 5
    root = rng.normal(size=(dim, dim))
    h = root @ root.T + np.eye(dim)
    s, y = rng.normal(size=dim), rng.normal(size=dim)
    y = y if s @ y > 0 else -y
    got = np.asarray(bfgs_lib.bfgs_inverse_update(h, s, y, s @ y))
    # Product form (Nocedal and Wright, eq. 6.17) with explicit matrices.
    rho = 1.0 / (s @ y)
    left = np.eye(dim) - rho * np.outer(s, y)
    want = left @ h @ left.T + rho * np.outer(s, s)
    # Two algebraically equal forms differ by roundoff times cond(H) ~ 1e2.
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got @ y, s, rtol=1e-10)
    np.testing.assert_allclose(got, got.T, rtol=1e-12, atol=1e-14)
    assert np.all(np.linalg.eigvalsh(got) > 0)


def test_quadratic_minimizer_and_inverse_hessian():
    rng = np.random.default_rng(1)
    dim = 8
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    a = (q * np.geomspace(1.0, 100.0, dim)) @ q.T
    b = rng.normal(size=dim)
    aj, bj = jnp.asarray(a), jnp.asarray(b)
    f = lambda x: 0.5 * x @ (aj @ x) - bj @ x
    # Below |g| ~ 1e-8 the decrease f - f* ~ |g|^2 / 2 is roundoff in f ~ 1,
    # and a strict Armijo test can no longer see it; 1e-7 is still visible.
    res = so_opt.minimize(
        f, jnp.zeros(dim), BFGS, gtol=1e-7, max_steps=200, keep_state=True
    )
    assert int(res.status) == StatusCode.CONVERGED
    # |x - x*| <= |g| / lambda_min = 1e-7.
    np.testing.assert_allclose(res.params, np.linalg.solve(a, b), atol=1e-7)
    # BFGS on a quadratic learns the inverse Hessian along the steps taken:
    # H A s = s for the last step s (the secant condition y = A s).
    h = np.asarray(res.state.inv_hessian)
    s = np.asarray(res.state.cache.updates)
    np.testing.assert_allclose(h @ (a @ s), s, rtol=1e-6, atol=1e-6 * np.abs(s).max())
    assert np.all(np.linalg.eigvalsh(0.5 * (h + h.T)) > 0)


def test_rosenbrock_2d_against_scipy_bfgs():
    x0 = standard_start(2, jnp.float64)
    res = so_opt.minimize(rosenbrock_value, x0, BFGS, gtol=1e-6)
    ref = scipy.optimize.minimize(
        scipy.optimize.rosen,
        np.asarray(x0),
        jac=scipy.optimize.rosen_der,
        method="BFGS",
        options={"gtol": 1e-6},
    )
    assert int(res.status) == StatusCode.CONVERGED
    np.testing.assert_allclose(res.params, np.ones(2), atol=1e-6)
    # Same method, similar line search: iterations within 25% of scipy's.
    assert int(res.num_steps) <= 1.25 * ref.nit


def test_float32_pytree_params_keep_their_dtype():
    f = lambda p: jnp.sum((p["a"] - 2.0) ** 2) + jnp.sum(p["b"] ** 4)
    params = {"a": jnp.zeros(3, jnp.float32), "b": jnp.ones((2, 2), jnp.float32)}
    opt = so_opt.bfgs()
    state = opt.init(params)
    assert state.inv_hessian.dtype == jnp.float32
    assert state.inv_hessian.shape == (7, 7)

    @jax.jit
    def step(params, state):
        value, grad = jax.value_and_grad(f)(params)
        updates, state = opt.update(
            grad, state, params, value=value, grad=grad, value_fn=f
        )
        return jax.tree.map(jnp.add, params, updates), state

    for _ in range(15):
        params, state = step(params, state)
    assert params["a"].dtype == jnp.float32
    assert state.inv_hessian.dtype == jnp.float32
    # 15 float32 steps: a is decoupled from the slowly converging quartic b.
    np.testing.assert_allclose(params["a"], np.full(3, 2.0), atol=1e-4)
    assert float(jnp.max(jnp.abs(params["b"]))) < 0.1


def test_memory_budget_error_names_the_argument_and_the_size():
    opt = so_opt.bfgs(memory_budget_bytes=1000)
    with pytest.raises(ValueError, match=r"`memory_budget_bytes` is 1000.*k = 16 "):
        opt.init(jnp.zeros(16))
    opt.init(jnp.zeros(11))  # 11 * 11 * 8 = 968 bytes fit.


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"line_search": "exact"}, r"`line_search` must be one of"),
        ({"c1": 0.0}, r"`c1` must be in \(0.0, 1.0\), got 0.0\."),
        ({"memory_budget_bytes": 0}, r"`memory_budget_bytes` must be an integer"),
        ({"curvature_rtol": -0.5}, r"`curvature_rtol` must be >= 0, got -0.5\."),
        ({"curvature_rtol": 2.0}, r"`curvature_rtol` must be < 1 .*got 2.0\."),
    ],
)
def test_bad_hyperparameters_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        so_opt.bfgs(**kwargs)


def test_bad_params_and_missing_value_fn():
    with pytest.raises(TypeError, match=r"`params` must hold floating-point"):
        BFGS.init({"a": jnp.zeros(2, jnp.int32)})
    x = jnp.ones(2)
    with pytest.raises(TypeError, match=r"`bfgs` needs the extra argument `value_fn=`"):
        BFGS.update(x, BFGS.init(x), x, value=1.0, grad=x)
