"""Benchmark of Newton's family (issue 6).

Part 1: Hessian-vector products and wall time to gtol 1e-6 of
``so_opt.hessian_free("hessian")`` (the whole run jitted by ``so_opt.minimize``),
with the forcing term alone, with ``cg_atol = gtol / 2``, and with the CG test
in scipy's L1 norm (``cg_norm="l1"``), against ``scipy.optimize.minimize``
Newton-CG and trust-ncg given a jitted ``hessp``, on the breast-cancer logistic
regression and the chained Rosenbrock function (n = 100, 1000). A textbook
line-search Newton-CG written here in numpy (Nocedal and Wright, Algorithm 7.1,
Armijo backtracking) runs with its forcing term in the L2 and in the L1 norm,
to separate the method from the norm. Every run stops at the first iterate
whose Euclidean gradient norm is at most gtol (scipy's through a callback that
reads the cached gradient), so all answer the same question. Timings are
medians of interleaved repeats, compile excluded.

Part 2: per-step time of ``so_opt.newton`` against k on the digits MLP: the
dense Hessian (k products) and the Cholesky solve timed apart, next to one
Hessian-free step (Gauss-Newton, 20 CG steps).

Run with ``OPENBLAS_NUM_THREADS=1 python scripts/bench_newton.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
from jax.flatten_util import ravel_pytree

import so_opt
from so_opt import problems

jax.config.update("jax_enable_x64", True)

GTOL = 1e-6
HF_SETTINGS = {"damping": 1e-4, "warm_start_decay": 0.0, "backtrack_iterates": False}


def _flat(problem):
    """Flat start and jitted value-and-gradient and HVP, compiled."""
    fun = problem.value_fn()
    flat0, unravel = ravel_pytree(problem.init_params(0))
    flat_fun = lambda x: fun(unravel(x))
    value_and_grad = jax.jit(jax.value_and_grad(flat_fun))
    hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(flat_fun), (x,), (v,))[1])
    x0 = np.asarray(flat0)
    value_and_grad(x0)
    hvp(x0, x0)
    return x0, value_and_grad, hvp


def newton_cg(x0, value_and_grad, hvp, order, max_steps=20000):
    r"""Nocedal and Wright's line-search Newton-CG, forcing term in the ``order`` norm.

    CG from zero until :math:`\|r\| \le \min(\tfrac12, \sqrt{\|g\|})
    \|g\|` (both norms of order ``order``), steepest descent at negative
    curvature on the first CG step, then Armijo backtracking from the full
    step. Returns ``(hvps, steps, final Euclidean gradient norm)``.
    """
    norm = lambda v: np.linalg.norm(v, ord=order)
    x, hvps = x0.copy(), 0
    value, grad = (np.asarray(a) for a in value_and_grad(x))
    for step in range(max_steps):
        if np.linalg.norm(grad) <= GTOL:
            return hvps, step, np.linalg.norm(grad)
        target = min(0.5, np.sqrt(norm(grad))) * norm(grad)
        s, r = np.zeros_like(x), -grad
        p = r.copy()
        while True:
            hp = np.asarray(hvp(x, p))
            hvps += 1
            curv = p @ hp
            if curv <= 0:
                s = p if not s.any() else s
                break
            alpha = (r @ r) / curv
            s = s + alpha * p
            r_new = r - alpha * hp
            if norm(r_new) <= target:
                break
            p = r_new + (r_new @ r_new) / (r @ r) * p
            r = r_new
        slope, rate = grad @ s, 1.0
        while True:
            trial = x + rate * s
            new_value, new_grad = (np.asarray(a) for a in value_and_grad(trial))
            if new_value <= value + 1e-4 * rate * slope or rate < 1e-12:
                break
            rate *= 0.5
        x, value, grad = trial, new_value, new_grad
    return hvps, max_steps, np.linalg.norm(grad)


def _numpy_runner(problem):
    """The numpy Newton-CG to gtol; ``run(order) -> (seconds, hvps, steps, ok)``."""
    x0, value_and_grad, hvp = _flat(problem)

    def run(order):
        start = time.perf_counter()
        hvps, steps, grad_norm = newton_cg(x0, value_and_grad, hvp, order)
        return time.perf_counter() - start, hvps, steps, grad_norm <= GTOL

    return run


def _scipy_runner(problem):
    """A scipy run to gtol; returns ``run(method) -> (seconds, hvps, steps)``."""
    x0, value_and_grad, hvp = _flat(problem)

    def run(method):
        count = {"hvp": 0, "nit": 0}
        norms = {}

        def fg(x):
            value, grad = value_and_grad(x)
            grad = np.asarray(grad)
            norms[x.tobytes()] = np.linalg.norm(grad)
            return float(value), grad

        def hessp(x, v):
            count["hvp"] += 1
            return np.asarray(hvp(x, v))

        def callback(intermediate_result):
            count["nit"] += 1
            key = intermediate_result.x.tobytes()
            if norms.get(key, np.inf) <= GTOL:
                raise StopIteration

        options = {"maxiter": 20000}
        options.update({"xtol": 1e-30} if method == "Newton-CG" else {"gtol": 0.0})
        start = time.perf_counter()
        res = scipy.optimize.minimize(
            fg, x0, jac=True, hessp=hessp, method=method, callback=callback,
            options=options,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        reached = np.linalg.norm(fg(res.x)[1]) <= GTOL
        return seconds, count["hvp"], count["nit"], reached

    return run


def _so_opt_runner(problem, **settings):
    fun = problem.value_fn()
    params = problem.init_params(0)
    opt = so_opt.hessian_free("hessian", **HF_SETTINGS, **settings)
    so_opt.minimize(fun, params, opt, max_steps=20000, gtol=GTOL)  # compile

    def run(_):
        start = time.perf_counter()
        res = so_opt.minimize(fun, params, opt, max_steps=20000, gtol=GTOL)
        jax.block_until_ready(res.params)
        seconds = time.perf_counter() - start
        reached = float(res.grad_norm) <= GTOL
        return seconds, int(res.costs.hvp_evals), int(res.num_steps), reached

    return run


def bench_hvps(repeats: int) -> list[dict]:
    cases = {
        "breast_cancer_logreg": problems.breast_cancer_logreg(),
        "rosenbrock n=100": problems.rosenbrock(100),
        "rosenbrock n=1000": problems.rosenbrock(1000),
    }
    rows = []
    for name, problem in cases.items():
        runners = {
            "so_opt hessian_free": (_so_opt_runner(problem), None),
            # The same with the CG residual floored at half the outer gtol:
            # the last solve stops once it can meet the stopping test.
            "so_opt hf cg_atol": (_so_opt_runner(problem, cg_atol=GTOL / 2), None),
            # scipy's measure: forcing term and CG residual in the L1 norm.
            "so_opt hf cg_norm=l1": (_so_opt_runner(problem, cg_norm="l1"), None),
            "numpy Newton-CG L2": (_numpy_runner(problem), 2),
            "numpy Newton-CG L1": (_numpy_runner(problem), 1),
            "scipy Newton-CG": (_scipy_runner(problem), "Newton-CG"),
            "scipy trust-ncg": (_scipy_runner(problem), "trust-ncg"),
        }
        times = {key: [] for key in runners}
        info = {}
        for _ in range(repeats):  # interleaved repeats
            for key, (run, method) in runners.items():
                seconds, hvps, steps, reached = run(method)
                times[key].append(seconds)
                info[key] = (hvps, steps, reached)
        for key in runners:
            hvps, steps, reached = info[key]
            rows.append(
                {
                    "problem": name,
                    "method": key,
                    "hvps": hvps,
                    "steps": steps,
                    "reached": reached,
                    "seconds": statistics.median(times[key]),
                }
            )
            print(
                f"{name:22s} {key:20s} hvps={hvps:6d} steps={steps:5d} "
                f"reached={reached} median={rows[-1]['seconds'] * 1e3:9.2f} ms",
                flush=True,
            )
    return rows


def _time(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # compile
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def _scaling_row(width: int, repeats: int) -> dict:
    """Times one dense Newton step (Hessian, Cholesky) and one HF step."""
    problem = problems.digits_mlp(hidden=(width,), dtype="float32")
    params = problem.init_params(0)
    fun = problem.value_fn()
    k = problems.num_params(params)
    hessian = jax.jit(
        lambda p: so_opt.hessian_matrix(fun, p, memory_budget_bytes=2**31)
    )
    h = hessian(params)
    g = ravel_pytree(jax.grad(fun)(params))[0]
    # Shift to positive definite so that the timed factorization succeeds.
    h = h + (1e-2 + jnp.abs(jnp.linalg.eigvalsh(h)[0])) * jnp.eye(k, dtype=h.dtype)

    @jax.jit
    def solve(h, g):
        chol = jnp.linalg.cholesky(h)
        return jax.scipy.linalg.cho_solve((chol, True), g)

    opt = so_opt.hessian_free(max_cg_steps=20, cg_tol=0.0, progress_tol=0.0)
    extra = problem.extra_args()

    @jax.jit
    def hf_step(p, s):
        value, grad = jax.value_and_grad(fun)(p)
        updates, s = opt.update(grad, s, p, value=value, grad=grad, **extra)
        return optax.apply_updates(p, updates), s

    r = repeats if k < 4000 else 1
    row = {
        "k": k,
        "hessian_s": _time(hessian, params, repeats=r),
        "cholesky_s": _time(solve, h, g, repeats=r),
        "hf_step_s": _time(hf_step, params, opt.init(params), repeats=repeats),
    }
    row["newton_step_s"] = row["hessian_s"] + row["cholesky_s"]
    return row


def bench_newton_scaling(widths, repeats: int) -> list[dict]:
    rows = []
    for width in widths:
        row = _scaling_row(width, repeats)
        rows.append(row)
        print(
            f"k={row['k']:6d} hessian={row['hessian_s']:8.3f}s "
            f"cholesky={row['cholesky_s']:8.4f}s "
            f"newton={row['newton_step_s']:8.3f}s "
            f"hf(20 CG)={row['hf_step_s']:8.4f}s",
            flush=True,
        )
    ks = np.log([r["k"] for r in rows])
    for key in ("hessian_s", "cholesky_s"):
        slope = np.polyfit(ks, np.log([r[key] for r in rows]), 1)[0]
        print(f"log-log slope of {key}: {slope:.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--widths", type=int, nargs="*", default=[4, 8, 16, 32, 64])
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()
    print(f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")
    print(f"jax {jax.__version__}, scipy {scipy.__version__}, {jax.devices()[0]}")
    bench_hvps(args.repeats)
    if not args.skip_scaling:
        bench_newton_scaling(args.widths, args.repeats)


if __name__ == "__main__":
    main()
