"""Truncated CG against numpy solves, on random SPD and indefinite systems."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import so_opt
from so_opt._src.cg import CGReason


def _spd(seed, dim, condition):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    eig = np.geomspace(1.0, condition, dim)
    return (q * eig) @ q.T, rng.normal(size=dim)


_solve = jax.jit(
    lambda a, b, tol: so_opt.truncated_cg(
        lambda v: a @ v, b, max_steps=200, tol=tol, progress_tol=0.0
    )
)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tol", [1e-6, 1e-10])
def test_solves_spd_systems_to_tolerance(seed, tol):
    a, b = _spd(seed, 30, 1e3)
    res = _solve(jnp.asarray(a), jnp.asarray(b), tol)
    x = np.asarray(res.x)
    assert int(res.reason) == CGReason.CONVERGED
    assert np.linalg.norm(b - a @ x) <= tol * np.linalg.norm(b) * (1 + 1e-6)
    # The forward error is bounded by the condition number times the residual.
    exact = np.linalg.solve(a, b)
    assert np.linalg.norm(x - exact) <= 1e3 * tol * np.linalg.norm(exact) * 10
    assert not bool(res.negative_curvature)


def test_pytree_operator_matches_flat_solve():
    a, b = _spd(3, 8, 50.0)
    split = lambda v: {"u": v[:5], "w": v[5:].reshape(3, 1)}
    flat = lambda t: jnp.concatenate([t["u"], t["w"].ravel()])
    matvec = lambda t: split(jnp.asarray(a) @ flat(t))
    res = so_opt.truncated_cg(matvec, split(jnp.asarray(b)), tol=1e-12)
    np.testing.assert_allclose(flat(res.x), np.linalg.solve(a, b), rtol=1e-9)


def test_reports_negative_curvature_on_indefinite_system():
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    eig = np.linspace(-2.0, 5.0, 20)
    a = jnp.asarray((q * eig) @ q.T)
    b = jnp.asarray(rng.normal(size=20))
    res = so_opt.truncated_cg(lambda v: a @ v, b, max_steps=100, tol=1e-12)
    assert bool(res.negative_curvature)
    assert int(res.reason) == CGReason.NEGATIVE_CURVATURE
    d = res.curvature_direction
    # The reported direction really has non-positive curvature.
    assert float(d @ (a @ d)) <= 0.0
    np.testing.assert_allclose(res.curvature_value, d @ (a @ d) / (d @ d), rtol=1e-8)
    # The returned point still lowers the quadratic model.
    x = res.x
    assert float(0.5 * x @ (a @ x) - b @ x) < 0.0


def test_steihaug_stops_on_the_boundary():
    a, b = _spd(5, 10, 10.0)
    radius = 0.1 * np.linalg.norm(np.linalg.solve(a, b))
    res = so_opt.truncated_cg(
        lambda v: jnp.asarray(a) @ v, jnp.asarray(b), radius=radius, tol=1e-12
    )
    assert int(res.reason) == CGReason.BOUNDARY
    np.testing.assert_allclose(np.linalg.norm(res.x), radius, rtol=1e-10)


def test_relative_progress_rule_stops_early():
    a, b = _spd(6, 200, 1e6)
    a, b = jnp.asarray(a), jnp.asarray(b)
    full = so_opt.truncated_cg(
        lambda v: a @ v, b, max_steps=200, tol=0.0, progress_tol=0
    )
    early = so_opt.truncated_cg(lambda v: a @ v, b, max_steps=200, tol=0.0)
    assert int(early.reason) == CGReason.RELATIVE_PROGRESS
    assert 10 < int(early.num_steps) < int(full.num_steps)
    # Model value phi(x) = x'Ax/2 - b'x, checked against its definition.
    x = early.x
    np.testing.assert_allclose(early.model_value, 0.5 * x @ (a @ x) - b @ x, rtol=1e-8)


def test_warm_start_costs_one_product_and_zero_costs_none():
    a, b = _spd(7, 60, 100.0)
    a, b = jnp.asarray(a), jnp.asarray(b)
    exact = jnp.linalg.solve(a, b)
    cold = so_opt.truncated_cg(
        lambda v: a @ v, b, jnp.zeros(60), tol=1e-4, progress_tol=0
    )
    warm = so_opt.truncated_cg(
        lambda v: a @ v, b, 0.999 * exact, tol=1e-4, progress_tol=0
    )
    assert int(cold.num_matvecs) == int(cold.num_steps)
    assert int(warm.num_matvecs) == int(warm.num_steps) + 1
    assert int(warm.num_steps) < int(cold.num_steps)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_steps": 0}, "max_steps"),
        ({"tol": -1.0}, "tol"),
        ({"atol": -1e-8}, "atol"),
        ({"atol": jnp.asarray(-1.0)}, "atol"),
        ({"atol": float("nan")}, "atol"),
        ({"progress_tol": -1e-3}, "progress_tol"),
        ({"norm": "linf"}, "norm"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        so_opt.truncated_cg(lambda v: v, jnp.ones(2), **kwargs)


@pytest.mark.parametrize("kwargs", [{"atol": "x"}, {"atol": None}, {"tol": "x"}])
def test_tolerances_that_are_not_numbers_name_the_argument(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(TypeError, match=f"`{name}` must be a real number"):
        so_opt.truncated_cg(lambda v: v, jnp.ones(2), **kwargs)


def _unprogressive_solver(seed):
    """A random SPD system and CG on it without the relative-progress rule."""
    a, b = _spd(seed, 30, 1e3)
    a, b = jnp.asarray(a), jnp.asarray(b)
    solve = lambda max_steps=200, **kw: so_opt.truncated_cg(
        lambda v: a @ v, b, max_steps=max_steps, progress_tol=0.0, **kw
    )
    return a, b, solve


@pytest.mark.parametrize("atol", [1e-2, 1e-4])
def test_absolute_floor_stops_at_the_first_residual_below_it(atol):
    a, b, solve = _unprogressive_solver(5)
    res = solve(tol=1e-12, atol=atol)
    steps = int(res.num_steps)
    assert int(res.reason) == CGReason.CONVERGED
    # The residual is recomputed from the matrix, not read from the solver.
    assert np.linalg.norm(b - a @ res.x) <= atol * (1 + 1e-6)
    # One step fewer (no floor, the same iterates) is still above it.
    before = solve(tol=0.0, max_steps=steps - 1)
    assert np.linalg.norm(b - a @ before.x) > atol
    # A floor below the relative tolerance changes nothing.
    tight = solve(tol=1e-6, atol=1e-12)
    assert int(tight.num_steps) == int(solve(tol=1e-6).num_steps)


@pytest.mark.parametrize("tol", [1e-2, 1e-5])
def test_l1_test_stops_at_the_first_iterate_whose_l1_residual_meets_it(tol):
    a, b, solve = _unprogressive_solver(6)
    res = solve(tol=tol, norm="l1")
    steps = int(res.num_steps)
    assert int(res.reason) == CGReason.CONVERGED
    l1 = lambda x: np.abs(np.asarray(b - a @ x)).sum()
    bound = tol * np.abs(np.asarray(b)).sum()
    # Residuals recomputed from the matrix: met now, not one step earlier
    # (the iterates do not depend on the norm of the test).
    assert l1(res.x) <= bound * (1 + 1e-6)
    assert l1(solve(tol=0.0, max_steps=steps - 1).x) > bound


def test_right_hand_side_of_mixed_dtypes_is_a_clear_error():
    b = {"a": jnp.ones(2, jnp.float32), "b": jnp.ones(2, jnp.float64)}
    with pytest.raises(TypeError, match="`b` of `truncated_cg`.*one floating dtype"):
        so_opt.truncated_cg(lambda v: v, b)
