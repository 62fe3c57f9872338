"""A/B of XLA:CPU's schedulers for ``so_opt.minimize``'s compiled loop.

For each problem and optimizer it times the same ``so_opt.minimize`` call
compiled with XLA's default scheduler (``compiler_options={}``) and with the
memory-optimized one (``so_opt/_src/compile_options.py``), interleaved within
each repeat, and prints the medians and their ratio (below 1: the
memory-optimized scheduler is faster). This is the evidence behind which
so_opt optimizers are marked latency-bound (BENCHMARKS.md, issue 5).

Usage:
  OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/bench_scheduler.py \
      [--repeats 9] [--problems logreg rosen-100 ...] [--optimizers lbfgs hf ...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import so_opt  # noqa: E402
from so_opt import problems  # noqa: E402
from so_opt._src import compile_options  # noqa: E402

OPTIMIZERS = {
    "lbfgs": so_opt.lbfgs,
    "hf": lambda: so_opt.hessian_free(curvature="hessian"),
    "newton": so_opt.newton,
    "bfgs": so_opt.bfgs,
}


def make_problems():
    """Name -> (loss, initial params, gtol, max_steps, dense methods allowed)."""
    out = {}
    p = problems.breast_cancer_logreg()
    out["logreg"] = (lambda x, p=p, t=p.train: p.loss(x, t), p.init_params(0))
    out["logreg"] += (1e-6, 20_000, True)
    for n in (100, 1000):
        fun = lambda x: problems.rosenbrock_value(x, "chained")
        out[f"rosen-{n}"] = (fun, problems.rosenbrock(n=n).init_params(0))
        out[f"rosen-{n}"] += (1e-6, 20_000, n <= 100)
    # Networks in float32, a fixed number of steps (gtol 0); the dense
    # methods only on the smallest (k = 1,210).
    for name, p, steps, dense in (
        ("mlp-16", problems.digits_mlp(hidden=(16,)), 20, True),
        ("mlp-32", problems.digits_mlp(hidden=(32,)), 50, False),
        ("autoencoder", problems.digits_autoencoder(), 30, False),
        ("mlp-256-256", problems.digits_mlp(hidden=(256, 256)), 20, False),
    ):
        fun = lambda x, p=p, t=p.train: p.loss(x, t)
        out[name] = (fun, p.init_params(0), 0.0, steps, dense)
    return out


def candidate(fun, x0, opt, gtol, max_steps, options):
    def go():
        res = so_opt.minimize(
            fun,
            x0,
            opt,
            gtol=gtol,
            max_steps=max_steps,
            compiler_options=options,
        )
        return jax.block_until_ready(res.params)

    return go


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--problems", nargs="*", default=None)
    parser.add_argument("--optimizers", nargs="*", default=list(OPTIMIZERS))
    args = parser.parse_args()
    all_problems = make_problems()
    chosen = args.problems or list(all_problems)
    schedulers = {"default": {}, "memory": dict(compile_options.LATENCY_OPTIONS)}
    cands = {}
    for pname in chosen:
        fun, x0, gtol, steps, dense = all_problems[pname]
        for oname in args.optimizers:
            if oname in ("newton", "bfgs") and not dense:
                continue
            # One optimizer object for both, so only the options differ.
            opt = OPTIMIZERS[oname]()
            steps_here = steps if gtol > 0 or oname == "lbfgs" else max(5, steps // 5)
            for sname, options in schedulers.items():
                go = candidate(fun, x0, opt, gtol, steps_here, options)
                cands[(pname, oname, sname)] = go
    # Warm up (compile), then size each timing to last about 30 ms.
    reps = {}
    for key, go in cands.items():
        go()
        start = time.perf_counter()
        go()
        reps[key] = max(1, int(0.03 / (time.perf_counter() - start)))
    times = {key: [] for key in cands}
    for _ in range(args.repeats):
        for key, go in cands.items():
            start = time.perf_counter()
            for _ in range(reps[key]):
                go()
            times[key].append((time.perf_counter() - start) / reps[key])
    print(f"jax {jax.__version__}, repeats {args.repeats}, medians")
    print(
        "| problem | optimizer | default ms | memory-optimized ms | memory / default |"
    )
    print("|---|---|---:|---:|---:|")
    for pname, oname, sname in cands:
        if sname != "default":
            continue
        base = statistics.median(times[(pname, oname, "default")])
        mem = statistics.median(times[(pname, oname, "memory")])
        print(
            f"| {pname} | {oname} | {base * 1e3:.3f} | {mem * 1e3:.3f} | "
            f"{mem / base:.2f} |"
        )


if __name__ == "__main__":
    main()
