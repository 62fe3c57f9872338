"""Lanczos against numpy's dense symmetric eigensolver, in float64 and float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from so_opt import linalg


def _symmetric(seed, k, spectrum=None):
    """A random symmetric matrix, with a given spectrum if one is passed."""
    rng = np.random.default_rng(seed)
    if spectrum is None:
        a = rng.normal(size=(k, k))
        return (a + a.T) / 2
    q, _ = np.linalg.qr(rng.normal(size=(k, k)))
    return (q * np.asarray(spectrum)) @ q.T


def _run(a, m, dtype="float64", seed=0):
    a = jnp.asarray(a, dtype)
    v0 = jnp.asarray(np.random.default_rng(seed + 100).normal(size=a.shape[0]), dtype)
    run = jax.jit(lambda a, v0: linalg.lanczos(lambda v: a @ v, v0, m))
    return run(a, v0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_full_run_reproduces_the_spectrum(dtype):
    a = _symmetric(0, 30)
    out = _run(a, 30, dtype)
    values, residuals = linalg.ritz_values(out)
    # float32: eigenvalues carry ~eps * ||A|| absolute error.
    tol = {"float32": 1e-4, "float64": 1e-11}[dtype] * np.max(np.abs(a)) * 30
    np.testing.assert_allclose(values, np.linalg.eigvalsh(a), rtol=0, atol=tol)
    assert np.all(np.asarray(residuals) <= tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_basis_is_orthonormal_and_tridiagonalizes(dtype):
    # A V^T = V^T T + beta_m v_m e_m^T: checked through V A V^T = T.
    a = _symmetric(1, 40)
    out = _run(a, 15, dtype)
    basis = np.asarray(out.basis, np.float64)
    tol = {"float32": 1e-5, "float64": 1e-13}[dtype]
    np.testing.assert_allclose(basis @ basis.T, np.eye(15), rtol=0, atol=tol)
    t = np.asarray(linalg.tridiagonal(out), np.float64)
    np.testing.assert_allclose(basis @ a @ basis.T, t, rtol=0, atol=100 * tol)
    assert out.alphas.dtype == jnp.dtype(dtype) and int(out.num_restarts) == 0


def test_extremal_ritz_values_converge_first():
    # Well separated ends converge long before the interior does.
    spectrum = np.r_[-5.0, np.linspace(-1.0, 1.0, 198), 8.0]
    a = _symmetric(2, 200, spectrum)
    values, residuals = map(np.asarray, linalg.ritz_values(_run(a, 40)))
    np.testing.assert_allclose(values[[0, -1]], [-5.0, 8.0], rtol=1e-10)
    assert np.all(residuals[[0, -1]] < 1e-8)
    # Interior Ritz values lie within their residual of the spectrum.
    gaps = np.min(np.abs(values[:, None] - spectrum[None]), axis=1)
    assert np.all(gaps <= residuals + 1e-12)


def test_invariant_subspace_restarts_and_finds_multiplicities():
    # From the all-ones start, the Krylov space of diag(1,1,1,2,2,3) has
    # dimension 3; Lanczos must restart to reach the repeated eigenvalues.
    a = np.diag([1.0, 1.0, 1.0, 2.0, 2.0, 3.0])
    run = jax.jit(lambda v0: linalg.lanczos(lambda v: jnp.asarray(a) @ v, v0, 6))
    out = run(jnp.ones(6))
    values, _ = linalg.ritz_values(out)
    np.testing.assert_allclose(values, [1, 1, 1, 2, 2, 3], atol=1e-12)
    # Each Krylov space holds one direction per eigenspace, so the triple
    # eigenvalue needs at least two restarts; the last step's is not counted.
    assert 2 <= int(out.num_restarts) <= 4
    assert np.all(np.isfinite(np.asarray(out.basis)))
    basis = np.asarray(out.basis)
    np.testing.assert_allclose(basis @ basis.T, np.eye(6), atol=1e-12)


def test_zero_operator_gives_zero_ritz_values():
    out = linalg.lanczos(lambda v: 0.0 * v, jnp.ones(4), 3)
    values, _ = linalg.ritz_values(out)
    np.testing.assert_allclose(values, 0.0, atol=0)
    assert np.all(np.isfinite(np.asarray(out.basis)))


def test_one_step_is_the_rayleigh_quotient():
    a = _symmetric(3, 5)
    v0 = np.arange(1.0, 6.0)
    out = linalg.lanczos(lambda v: jnp.asarray(a) @ v, jnp.asarray(v0), 1)
    np.testing.assert_allclose(out.alphas[0], v0 @ a @ v0 / (v0 @ v0), rtol=1e-13)


@pytest.mark.parametrize(
    ("v0", "m", "error", "message"),
    [
        (jnp.ones((2, 2)), 1, ValueError, "`v0` must be a vector, got shape (2, 2)."),
        (jnp.ones(3, jnp.int32), 1, TypeError, "`v0` must be floating point"),
        (
            jnp.ones(3),
            0,
            ValueError,
            "`num_iterations` must be an integer >= 1, got 0.",
        ),
        (
            jnp.ones(3),
            4,
            ValueError,
            "`num_iterations` must be at most the dimension 3, got 4.",
        ),
    ],
)
def test_bad_input_raises(v0, m, error, message):
    with pytest.raises(error) as info:
        linalg.lanczos(lambda v: v, v0, m)
    assert str(info.value).startswith(message)
    assert str(info.value).endswith(".")
