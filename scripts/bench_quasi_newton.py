"""Benchmark of so_opt's L-BFGS against optax, jaxopt and scipy, run to tolerance.

Four L-BFGS implementations, memory 10, float64, gradient-norm tolerance 1e-6:

  * ``so_opt``: ``so_opt.minimize(f, x0, so_opt.lbfgs())``, one compiled loop;
  * ``optax``: ``optax.lbfgs()`` in the loop optax documents, with
    ``optax.value_and_grad_from_state``, inside one jitted ``lax.while_loop``;
  * ``jaxopt``: ``jaxopt.LBFGS(...).run`` under ``jax.jit`` (if installed);
  * ``scipy``: ``scipy.optimize.minimize(method="L-BFGS-B")`` calling a jitted
    value-and-gradient, stopped by a callback at the same Euclidean gradient
    norm (its own ``gtol`` tests the max-norm).

Problems: Rosenbrock's function, chained (as ``scipy.optimize.rosen``) and
block-separable ("extended"), n = 2, 100, 1000 from the standard start, and
the breast-cancer logistic regression. For each it prints iterations,
value/gradient evaluations, the final value and gradient norm, the median wall
time to tolerance and per iteration, and so_opt's ratios to each peer.

Timing: compilation is excluded (each candidate runs once first; that first
call's extra time is reported as "compile"); candidates are interleaved
within each repeat and the median over repeats is reported, so drifting load
on a shared machine hits all of them alike.

"XLA flops" is the compiled program's own cost estimate (XLA's
``cost_analysis``, loops counted once). XLA:CPU runs a program whose estimate
is below 1,000 inline on the calling thread and hands any other to a worker
thread, a round trip that dominates runs of a few hundred microseconds.
``--sync-dispatch`` turns that hand-off off for every candidate
(``jax_cpu_enable_async_dispatch = False``), to separate the methods from it.

Scheduler: ``so_opt.minimize`` compiles ``so_opt.lbfgs``'s loop with XLA:CPU's
memory-optimized scheduler (``so_opt/_src/compile_options.py``); the peers
get XLA's default. ``--scheduler memory`` compiles the optax loop and
jaxopt's ``run`` with the same option, ``--scheduler default`` so_opt's loop
with the default, so that each side can be seen under the other's choice.

Usage:
  OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/bench_quasi_newton.py \
      [--repeats 5] [--problems rosen-chained-100 logreg ...] [--json out.json] \
      [--sync-dispatch] [--scheduler mixed|memory|default]
"""

from __future__ import annotations

import os

# One BLAS thread so that numpy/scipy do not fight XLA's own thread pool;
# must be set before numpy or jax is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import optax.tree_utils as otu  # noqa: E402
import scipy.optimize  # noqa: E402

import so_opt  # noqa: E402
from so_opt import problems  # noqa: E402
from so_opt._src import compile_options  # noqa: E402

GTOL = 1e-6
MEMORY = 10
MAX_STEPS = 20_000
# Set by --scheduler: XLA options of so_opt's loop (None: so_opt's choice)
# and of the peers' compiled programs (None: XLA's defaults).
SO_OPT_OPTIONS = None
PEER_OPTIONS = None


def make_problems():
    """Name -> (loss of params, initial params)."""
    out = {}
    for form in ("chained", "extended"):
        for n in (2, 100, 1000):
            if form == "extended" and n == 2:
                continue  # the same function as the chained one
            p = problems.rosenbrock(n=n, form=form)
            fun = lambda x, form=form: problems.rosenbrock_value(x, form)
            out[f"rosen-{form}-{n}"] = (fun, p.init_params(0))
    p = problems.breast_cancer_logreg()
    train = p.train
    out["logreg"] = (lambda params: p.loss(params, train), p.init_params(0))
    return out


def xla_flops(jitted, *args) -> float:
    """XLA's flop estimate of a jitted function's compiled program."""
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def run_so_opt(fun, x0):
    opt = so_opt.lbfgs(memory_size=MEMORY)
    program = jax.jit(
        lambda x: so_opt.minimize(fun, x, opt, max_steps=MAX_STEPS, gtol=GTOL)
    )

    def go():
        res = so_opt.minimize(
            fun,
            x0,
            opt,
            max_steps=MAX_STEPS,
            gtol=GTOL,
            compiler_options=SO_OPT_OPTIONS,
        )
        return jax.block_until_ready(res)

    def report(res):
        return {
            "iterations": int(res.num_steps),
            "value_evals": int(res.costs.grad_evals + res.costs.value_evals),
            "grad_evals": int(res.costs.grad_evals),
            "value": float(res.value),
            "grad_norm": float(res.grad_norm),
            "flops": xla_flops(program, x0),
        }

    return go, report


def run_optax(fun, x0):
    opt = optax.lbfgs(memory_size=MEMORY)
    value_and_grad = optax.value_and_grad_from_state(fun)

    # The loop of optax's documentation, with an evaluation counter added.
    def body(carry):
        params, state, evals = carry
        value, grad = value_and_grad(params, state=state)
        fresh = ~jnp.isfinite(otu.tree_get(state, "value"))
        updates, state = opt.update(
            grad, state, params, value=value, grad=grad, value_fn=fun
        )
        params = optax.apply_updates(params, updates)
        evals = evals + fresh + otu.tree_get(state, "num_linesearch_steps")
        return params, state, evals

    def cond(carry):
        _, state, _ = carry
        count = otu.tree_get(state, "count")
        err = otu.tree_norm(otu.tree_get(state, "grad"))
        return (count == 0) | ((count < MAX_STEPS) & (err >= GTOL))

    @functools.partial(jax.jit, compiler_options=PEER_OPTIONS)
    def solve(x0):
        return jax.lax.while_loop(cond, body, (x0, opt.init(x0), jnp.zeros((), int)))

    def go():
        return jax.block_until_ready(solve(x0))

    def report(out):
        params, state, evals = out
        return {
            "iterations": int(otu.tree_get(state, "count")),
            "value_evals": int(evals),
            "grad_evals": int(evals),
            "value": float(fun(params)),
            "grad_norm": float(otu.tree_norm(jax.grad(fun)(params))),
            "flops": xla_flops(solve, x0),
        }

    return go, report


def run_jaxopt(fun, x0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import jaxopt
    solver = jaxopt.LBFGS(fun=fun, maxiter=MAX_STEPS, tol=GTOL, history_size=MEMORY)
    solve = jax.jit(solver.run, compiler_options=PEER_OPTIONS)

    def go():
        return jax.block_until_ready(solve(x0))

    def report(out):
        params, state = out
        return {
            "iterations": int(state.iter_num),
            "value_evals": int(state.num_fun_eval),
            "grad_evals": int(state.num_grad_eval),
            "value": float(fun(params)),
            "grad_norm": float(otu.tree_norm(jax.grad(fun)(params))),
            "flops": xla_flops(solve, x0),
        }

    return go, report


def run_scipy(fun, x0):
    flat0, unravel = jax.flatten_util.ravel_pytree(x0)
    value_and_grad = jax.jit(
        lambda flat: jax.value_and_grad(lambda f: fun(unravel(f)))(flat)
    )
    last = {}

    def fg(x):
        value, grad = value_and_grad(x)
        grad = np.asarray(grad, np.float64)
        last["x"], last["grad"] = x.copy(), grad
        return float(value), grad

    # L-BFGS-B's gtol is on the max-norm of the projected gradient, which can
    # stop it at a Euclidean norm above GTOL; the callback stops it at the
    # same Euclidean test as the others. The gradient at the new iterate is
    # the one its line search evaluated last (checked, else evaluated).
    def stop_at_gtol(intermediate_result):
        x = intermediate_result.x
        grad = last["grad"] if np.array_equal(x, last["x"]) else fg(x)[1]
        if np.linalg.norm(grad) <= GTOL:
            raise StopIteration

    options = {"gtol": 0.0, "ftol": 0.0, "maxcor": MEMORY, "maxiter": MAX_STEPS}
    start = np.asarray(flat0, np.float64)

    def go():
        return scipy.optimize.minimize(
            fg,
            start,
            jac=True,
            method="L-BFGS-B",
            options=options,
            callback=stop_at_gtol,
        )

    def report(res):
        return {
            "iterations": int(res.nit),
            "value_evals": int(res.nfev),
            "grad_evals": int(res.njev),
            "value": float(res.fun),
            "grad_norm": float(np.linalg.norm(res.jac)),
            "flops": float("nan"),
        }

    return go, report


RUNNERS = {
    "so_opt": run_so_opt,
    "optax": run_optax,
    "jaxopt": run_jaxopt,
    "scipy": run_scipy,
}


def bench_problem(fun, x0, repeats, methods, min_seconds=0.05):
    """Figures for every method on one problem (interleaved median timings).

    Short runs are repeated within one timing until it lasts ``min_seconds``,
    so that dispatch jitter and timer resolution stay out of the medians.
    """
    candidates = {name: RUNNERS[name](fun, x0) for name in methods}
    rows, inner = {}, {}
    for name, (go, report) in candidates.items():
        start = time.perf_counter()
        out = go()
        first = time.perf_counter() - start
        start = time.perf_counter()
        go()
        once = time.perf_counter() - start
        inner[name] = max(1, int(min_seconds / max(once, 1e-7)))
        rows[name] = {**report(out), "first_call": first}
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, (go, _) in candidates.items():
            start = time.perf_counter()
            for _ in range(inner[name]):
                go()
            times[name].append((time.perf_counter() - start) / inner[name])
    for name, row in rows.items():
        row["seconds"] = statistics.median(times[name])
        row["compile"] = max(0.0, row.pop("first_call") - row["seconds"])
        row["per_iteration"] = row["seconds"] / max(row["iterations"], 1)
    return rows


def format_table(problem, rows):
    head = (
        f"| {problem} | iters | f evals | g evals | final f | grad norm | time s "
        "| us/iter | compile s | XLA flops | so_opt time / peer time |"
    )
    lines = [head, "|" + "---|" * 11]
    ours = rows.get("so_opt")
    for name, r in rows.items():
        ratio = ours["seconds"] / r["seconds"] if ours else float("nan")
        lines.append(
            f"| {name} | {r['iterations']} | {r['value_evals']} | "
            f"{r['grad_evals']} | {r['value']:.2e} | {r['grad_norm']:.1e} | "
            f"{r['seconds']:.4f} | {1e6 * r['per_iteration']:.1f} | "
            f"{r['compile']:.2f} | {r['flops']:,.0f} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--problems", nargs="*", default=None)
    parser.add_argument("--methods", nargs="*", default=list(RUNNERS))
    parser.add_argument("--json", default=None, help="write all figures here")
    parser.add_argument(
        "--sync-dispatch",
        action="store_true",
        help="run every compiled program on the calling thread",
    )
    parser.add_argument(
        "--scheduler",
        choices=("mixed", "memory", "default"),
        default="mixed",
        help="XLA:CPU scheduler: so_opt's choice for so_opt and the default for "
        "the peers (mixed), or the memory-optimized / default one for all",
    )
    args = parser.parse_args()
    global SO_OPT_OPTIONS, PEER_OPTIONS
    if args.scheduler == "memory":
        PEER_OPTIONS = dict(compile_options.LATENCY_OPTIONS)
    elif args.scheduler == "default":
        SO_OPT_OPTIONS = {}
    # Read when the CPU client starts, so before the first array is made.
    jax.config.update("jax_cpu_enable_async_dispatch", not args.sync_dispatch)

    all_problems = make_problems()
    chosen = args.problems or list(all_problems)
    print(
        f"jax {jax.__version__}, optax {optax.__version__}, scipy "
        f"{scipy.__version__}, {platform.processor() or platform.machine()}, "
        f"device {jax.devices()[0].platform}, OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS')}, repeats {args.repeats}, "
        f"async dispatch {'off' if args.sync_dispatch else 'on'}, "
        f"scheduler {args.scheduler}"
    )
    results = {}
    for name in chosen:
        fun, x0 = all_problems[name]
        rows = bench_problem(fun, x0, args.repeats, args.methods)
        results[name] = rows
        print()
        print(format_table(name, rows), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
