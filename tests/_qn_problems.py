"""References shared by the quasi-Newton and driver tests (issue 5)."""

import jax.numpy as jnp
import numpy as np
import scipy.optimize
import scipy.special


def standard_start(n, dtype):
    """Rosenbrock's standard start (-1.2, 1, -1.2, 1, ...)."""
    return jnp.where(jnp.arange(n) % 2 == 0, -1.2, 1.0).astype(dtype)


def logreg_reference(problem):
    """The logistic-regression minimizer: scipy BFGS and Newton, on NumPy."""
    x, y = (np.asarray(a) for a in problem.train)
    signs = 2.0 * y - 1.0
    l2 = problem.config["l2"]

    def fun(theta):
        w, b = theta[:-1], theta[-1]
        z = -signs * (x @ w + b)
        value = np.mean(np.logaddexp(0.0, z)) + 0.5 * l2 * w @ w
        weight = -signs * scipy.special.expit(z) / len(y)
        return value, np.append(x.T @ weight + l2 * w, weight.sum())

    start = np.zeros(x.shape[1] + 1)
    ref = scipy.optimize.minimize(fun, start, jac=True, method="BFGS")
    # scipy stops near |g| = 1e-9 (precision loss); exact Newton steps on the
    # NumPy Hessian X' diag(p (1 - p)) X / n + l2 polish it to roundoff.
    theta = ref.x
    design = np.hstack([x, np.ones((len(y), 1))])
    for _ in range(3):
        p = scipy.special.expit(design @ theta)
        hess = design.T @ (design * (p * (1 - p) / len(y))[:, None])
        hess[:-1, :-1] += l2 * np.eye(x.shape[1])
        theta = theta - np.linalg.solve(hess, fun(theta)[1])
    assert np.linalg.norm(fun(theta)[1]) < 1e-12
    return theta[:-1], theta[-1]
