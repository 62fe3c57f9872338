"""Benchmark of so_opt's Armijo line search against optax's backtracking search.

Both run the same rule on the same full-batch problems: first trial
``min(growth * last accepted step, 1)``, shrink by ``shrink`` until
``f(x - eta g) <= f(x) - c1 eta |g|^2``. Printed per problem and rule: value
evaluations per step (trials, the first one included, from each optimizer's
own state) and the median wall time of one jitted step (value and gradient,
line search, params update).

Every step is jitted and compiled before timing; the two candidates take
their steps in turn (interleaved, alternating who goes first) along their own
trajectories, so drifting load on a shared machine hits both alike. A step is
a pure function of (params, state), so each one is timed ``--repeats`` times
from the same input and the fastest kept: on a loaded machine that strips the
waits for a core, which dwarf a 0.1 ms step. Medians over steps are reported,
and the paired ratio: the median over steps of so_opt's time over optax's on
the same step (both follow the same trajectory, so step i is the same work).

Usage:
  .venv/bin/python scripts/bench_linesearch.py [--steps 60] [--repeats 5]
      [--problems ...]
"""

from __future__ import annotations

import os

# One BLAS thread so that numpy does not fight XLA's own thread pool; must be
# set before numpy or jax is imported.
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import optax  # noqa: E402

import so_opt  # noqa: E402
from so_opt import problems  # noqa: E402

# (label, shrink, growth): optax's defaults, and the textbook reset to the max.
RULES = [("shrink 0.8, grow 1.5", 0.8, 1.5), ("shrink 0.5, reset to max", 0.5, 1e10)]
MAX_BACKTRACKS = 30
C1 = 1e-4


def candidates(shrink: float, growth: float) -> dict[str, tuple]:
    """The two optimizers for one rule, with a reader of the last trial count."""
    ours = so_opt.armijo_sgd(
        1.0,
        C1,
        shrink,
        MAX_BACKTRACKS,
        reset="max" if growth > 1e9 else "grow",
        growth=min(growth, 1e9),
    )
    theirs = optax.chain(
        optax.sgd(1.0),
        optax.scale_by_backtracking_linesearch(
            MAX_BACKTRACKS + 1,
            slope_rtol=C1,
            decrease_factor=shrink,
            increase_factor=growth,
            max_learning_rate=1.0,
        ),
    )
    return {
        "so_opt": (ours, lambda s: s[-1].num_trials),
        "optax": (theirs, lambda s: s[-1].info.num_linesearch_steps),
    }


def jitted_step(problem: problems.Problem, opt: optax.GradientTransformation):
    """``step(params, state) -> (params, state)`` on the full training batch."""
    value_fn = problem.value_fn()

    @jax.jit
    def step(params, state):
        value, grad = jax.value_and_grad(value_fn)(params)
        updates, state = opt.update(
            grad, state, params, value=value, grad=grad, value_fn=value_fn
        )
        return optax.apply_updates(params, updates), state

    return step


def bench(
    problem: problems.Problem, shrink: float, growth: float, steps: int, repeats: int
):
    """Per candidate: mean trials, step times, final loss."""
    runs = {}
    for name, (opt, trials_of) in candidates(shrink, growth).items():
        params = problem.init_params(0)
        step = jitted_step(problem, opt)
        state = opt.init(params)
        jax.block_until_ready(step(params, state))  # compile, discarded
        runs[name] = [step, params, state, trials_of, [], []]
    for i in range(steps):
        # Alternate who goes first, so neither gains from the other's warm cache.
        for run in list(runs.values())[:: 1 if i % 2 else -1]:
            step, params, state, trials_of, times, trials = run
            best = math.inf
            for _ in range(repeats):
                start = time.perf_counter()
                out = jax.block_until_ready(step(params, state))
                best = min(best, time.perf_counter() - start)
            times.append(best)
            params, state = out
            trials.append(int(trials_of(state)))
            run[1], run[2] = params, state
    return {
        name: (
            statistics.fmean(trials),
            times,
            float(problem.loss(params, problem.train)),
        )
        for name, (_, params, _, _, times, trials) in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--problems",
        nargs="+",
        default=["digits_mlp", "breast_cancer_logreg", "rosenbrock"],
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"`--repeats` must be >= 1, got {args.repeats}.")
    print(
        f"jax {jax.__version__}, optax {optax.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.steps} steps, best of {args.repeats} per step, medians"
    )
    print(
        "| problem | rule | evals/step so_opt | evals/step optax "
        "| ms/step so_opt | ms/step optax | ratio | paired ratio "
        "| final loss so_opt | optax |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.problems:
        # float32, as the issue asks (the problems default to float64).
        problem = problems.get(name, dtype="float32")
        for label, shrink, growth in RULES:
            out = bench(problem, shrink, growth, args.steps, args.repeats)
            (t_ours, times_ours, f_ours), (t_opt, times_opt, f_opt) = (
                out["so_opt"],
                out["optax"],
            )
            s_ours, s_opt = map(statistics.median, (times_ours, times_opt))
            paired = statistics.median(
                a / b for a, b in zip(times_ours, times_opt, strict=True)
            )
            print(
                f"| {name} | {label} | {t_ours:.2f} | {t_opt:.2f} "
                f"| {1e3 * s_ours:.3f} | {1e3 * s_opt:.3f} | {s_ours / s_opt:.2f} "
                f"| {paired:.2f} | {f_ours:.4g} | {f_opt:.4g} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
