"""Where L-BFGS time per iteration goes: the method or the driver (issue 5).

Times four runs of L-BFGS (memory 10, float64) to gradient norm 1e-6 on the
chained Rosenbrock function: optax's documented loop in a jitted
``lax.while_loop``; ``so_opt.minimize`` driving ``optax.lbfgs``; the same
driving ``so_opt.lbfgs``; and ``jaxopt.LBFGS.run``. Same driver, two methods,
and same method, two drivers, separate the cost of so_opt's safeguards from
the cost of the loop around them. Candidates interleaved, medians of repeats.

The last column is the median over repeats of each run's time over jaxopt's
time in the same repeat (a paired ratio, steadier than a ratio of medians on a
shared machine). ``--n 0`` runs the breast-cancer logistic regression instead.

Usage: ``OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/bench_lbfgs_driver.py
[--n 100] [--repeats 15]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jaxopt
import optax
import optax.tree_utils as otu

import so_opt
from so_opt import problems

jax.config.update("jax_enable_x64", True)
GTOL, MAX_STEPS, MEMORY = 1e-6, 20000, 10


def optax_loop(fun, x0):
    opt = optax.lbfgs(memory_size=MEMORY)
    value_and_grad = optax.value_and_grad_from_state(fun)

    def body(carry):
        x, state = carry
        value, grad = value_and_grad(x, state=state)
        updates, state = opt.update(
            grad, state, x, value=value, grad=grad, value_fn=fun
        )
        return optax.apply_updates(x, updates), state

    def cond(carry):
        count = otu.tree_get(carry[1], "count")
        err = otu.tree_norm(otu.tree_get(carry[1], "grad"))
        return (count == 0) | ((count < MAX_STEPS) & (err >= GTOL))

    solve = jax.jit(lambda x: jax.lax.while_loop(cond, body, (x, opt.init(x))))
    return lambda: solve(x0), lambda out: int(otu.tree_get(out[1], "count"))


def minimize(fun, x0, opt):
    run = lambda: so_opt.minimize(fun, x0, opt, max_steps=MAX_STEPS, gtol=GTOL)
    return run, lambda res: int(res.num_steps)


def jaxopt_run(fun, x0):
    solver = jaxopt.LBFGS(fun=fun, maxiter=MAX_STEPS, tol=GTOL, history_size=MEMORY)
    solve = jax.jit(solver.run)
    return lambda: solve(x0), lambda out: int(out.state.iter_num)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if args.n:
        problem = problems.rosenbrock(args.n)
    else:
        problem = problems.breast_cancer_logreg()
    fun, x0 = problem.value_fn(), problem.init_params(0)
    candidates = {
        "optax loop, optax.lbfgs": optax_loop(fun, x0),
        "so_opt.minimize, optax.lbfgs": minimize(
            fun, x0, optax.lbfgs(memory_size=MEMORY)
        ),
        "so_opt.minimize, so_opt.lbfgs": minimize(
            fun, x0, so_opt.lbfgs(memory_size=MEMORY)
        ),
        "jaxopt.LBFGS.run": jaxopt_run(fun, x0),
    }
    iterations = {}
    for name, (run, count) in candidates.items():
        iterations[name] = count(jax.block_until_ready(run()))  # compiles
    seconds = {name: [] for name in candidates}
    names = list(candidates)
    for repeat in range(args.repeats):
        # Alternate who goes first, so that no candidate always runs warm.
        for name in names if repeat % 2 == 0 else names[::-1]:
            run = candidates[name][0]
            start = time.perf_counter()
            for _ in range(5):
                jax.block_until_ready(run())
            seconds[name].append((time.perf_counter() - start) / 5)
    label = f"chained Rosenbrock n = {args.n}" if args.n else "logistic regression"
    print(f"| {label} | iterations | ms | us/iter | paired ratio to jaxopt |")
    print("|---|---:|---:|---:|---:|")
    peer = seconds["jaxopt.LBFGS.run"]
    for name in candidates:
        median = statistics.median(seconds[name])
        per_iter = median / iterations[name] * 1e6
        paired = statistics.median(
            a / b for a, b in zip(seconds[name], peer, strict=True)
        )
        print(
            f"| {name} | {iterations[name]} | {median * 1e3:.2f} | {per_iter:.1f} "
            f"| {paired:.2f} |"
        )


if __name__ == "__main__":
    main()
