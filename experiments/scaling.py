"""The ``scaling`` study: cost of one step of Newton, Hessian-free and L-BFGS in k.

For the digits MLP with one hidden layer of width h (k = 75 h + 10 params),
each component below is compiled once per k (compilation excluded), then
timed in interleaved repeats: every repeat visits every (k, component) in a
fresh random order, so load drift hits all of them alike; a sample of a
short call is a batch of calls lasting at least ``--min-sample-seconds``,
and a (k, component) stops once its samples add up to ``--max-seconds``
(a call that long is timed once, by its warm-up call). The dense Newton
parts stop at ``--newton-max-k``; the matrix-free ones go on to larger k,
where their per-call overheads no longer hide the linear growth.

- ``newton_step``: one full step of ``so_opt.newton`` (gradient, dense
  Hessian, damped Cholesky solve, line search);
- ``newton_hessian``: the dense Hessian alone (k Hessian-vector products);
- ``newton_solve``: the dense solve alone, a Cholesky factorization and
  solve (or ``eigh``, with ``--solver eigh``) of a k x k SPD matrix;
- ``hessian_free_step``: one step of ``so_opt.hessian_free`` with exactly
  ``--cg-steps`` CG iterations (``cg_tol=0``, ``progress_tol=0``);
- ``cg_product``: one Gauss-Newton-vector product, the work of one CG step
  (the model linearized once, its cost spread over ``--products`` products);
- ``lbfgs_step``: one step of ``so_opt.lbfgs`` (gradient, two-loop
  recursion, strong Wolfe line search).

Steps start from the initial params and optimizer state. Memory is the
compiled executable's XLA memory analysis (argument + output + temporary
buffers, less aliased ones): the peak the step can need, on any backend.
On GPU/TPU, the device's process-wide peak (``memory_stats``) is recorded too.

Linear algebra is timed single-threaded: run as a script, the module
restarts itself with ``OPENBLAS_NUM_THREADS=1`` (and MKL/OMP alike) and XLA's
CPU thread pool at one thread, unless those variables are already set; set
them yourself to measure another configuration. The fitted log-log slopes
(least squares on log time against log k, with a 95 % confidence interval
from the slope's standard error) are expected near 2 for the Hessian, 3 for
the dense solve and 1 for the CG product and the L-BFGS step.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu
from tqdm.auto import tqdm

import so_opt
from experiments import outputs
from so_opt import problems, runner

logger = logging.getLogger("experiments.scaling")

THREAD_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}
DEFAULTS = {
    # k = 310 to 76,810; the dense Newton parts stop at newton_max_k.
    "hidden": [4, 8, 16, 32, 64, 128, 256, 512, 1024],
    "newton_max_k": 10_000,
    "repeats": 5,
    "min_sample_seconds": 0.05,
    "max_seconds": 20.0,
    "cg_steps": 10,
    # Below about 1000 params fixed per-call overheads flatten every curve.
    "fit_min_k": 1000,
}
QUICK = {
    "hidden": [2, 4, 8],
    "newton_max_k": 400,
    "repeats": 2,
    "min_sample_seconds": 0.01,
    "max_seconds": 1.0,
    "cg_steps": 5,
    "fit_min_k": 0,
}

# name: (what is timed, the slope the textbook predicts)
COMPONENTS = {
    "newton_step": ("one exact Newton step", "2 to 3"),
    "newton_hessian": ("dense Hessian (k HVPs)", "2"),
    "newton_solve": ("dense k x k solve", "3"),
    "hessian_free_step": ("one Hessian-free step", "1"),
    "cg_product": ("one CG step (one GGN product)", "1"),
    "lbfgs_step": ("one L-BFGS step", "1"),
}
NEWTON = ("newton_step", "newton_hessian", "newton_solve")
MEMORY_SOURCE = (
    "XLA memory analysis of the compiled step: argument + output + temporary "
    "- aliased bytes"
)


def fit_power_law(
    ks: Sequence[float], seconds: Sequence[float], level: float = 0.95
) -> dict[str, Any]:
    """Least-squares fit of ``log t = a + b log k``: slope, its SE and CI.

    The interval is ``b +- t_{n-2} SE(b)`` (Student t, ``n - 2`` degrees of
    freedom); with two points the slope is exact and the interval undefined.
    """
    from scipy import stats

    x, y = np.log(np.asarray(ks, float)), np.log(np.asarray(seconds, float))
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError(f"`ks` needs two distinct values, got {list(ks)}.")
    fit = stats.linregress(x, y)
    se = float(fit.stderr) if x.size > 2 else math.nan
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 2)) * se if x.size > 2 else 0
    return {
        "slope": float(fit.slope),
        "slope_se": se,
        "ci_low": float(fit.slope) - half if x.size > 2 else math.nan,
        "ci_high": float(fit.slope) + half if x.size > 2 else math.nan,
        "intercept": float(fit.intercept),
        "r2": float(fit.rvalue**2),
        "num_points": int(x.size),
    }


def crossover(
    ks: Sequence[float], slow: Sequence[float], fast: Sequence[float]
) -> float | None:
    """The first k where ``slow`` exceeds ``fast``, interpolated in log-log.

    Returns ``ks[0]`` when it already does at the smallest k, ``None`` when
    it never does in the range.
    """
    gap = np.log(np.asarray(slow, float)) - np.log(np.asarray(fast, float))
    above = np.flatnonzero(gap > 0)
    if above.size == 0:
        return None
    i = int(above[0])
    if i == 0:
        return float(ks[0])
    lo, hi = math.log(ks[i - 1]), math.log(ks[i])
    return math.exp(lo + (hi - lo) * (-gap[i - 1]) / (gap[i] - gap[i - 1]))


def _spd_matrix(k: int, seed: int, dtype) -> jax.Array:
    """A symmetric, diagonally dominant (so positive definite) k x k matrix."""
    rng = np.random.default_rng(seed)
    r = rng.uniform(-1.0, 1.0, (k, k)).astype(dtype)
    return jnp.asarray((r + r.T) / 2 + k * np.eye(k, dtype=dtype))


def _solve_fn(solver: str):
    def solve(matrix, g):
        if solver == "eigh":
            w, v = jnp.linalg.eigh(matrix)
            return v @ ((v.T @ g) / jnp.abs(w))
        chol = jnp.linalg.cholesky(matrix)
        return jax.scipy.linalg.cho_solve((chol, True), g)

    return jax.jit(solve)


def _products_fn(problem: problems.Problem, num: int):
    """``num`` chained Gauss-Newton products after one linearization."""

    def products(params, vector, batch):
        model_fn = lambda p: problem.model_fn(p, batch)
        loss_fn = lambda out: problem.output_loss_fn(out, batch)
        product = so_opt.linearize_ggn(model_fn, loss_fn, params)

        def body(_, v):
            w = product(v)
            return otu.tree_scale(1.0 / otu.tree_norm(w), w)

        return jax.lax.fori_loop(0, num, body, vector)

    return jax.jit(products)


def components(
    problem: problems.Problem, config: dict[str, Any]
) -> dict[str, tuple[Any, tuple]]:
    """Each component's jitted function and the arguments it is timed on."""
    params = problem.init_params(config["seed"])
    batch = problem.train
    budget = int(config["memory_budget_gb"] * 2**30)
    k = problems.num_params(params)
    dtype = np.dtype(config["dtype"])

    def step_of(optimizer):
        state = optimizer.init(params)
        return runner.make_step(problem, optimizer), (params, state, batch)

    def hessian(p, b):
        value_fn = lambda q: problem.loss(q, b)
        return so_opt.hessian_matrix(value_fn, p, memory_budget_bytes=budget)

    hf = so_opt.hessian_free(
        max_cg_steps=config["cg_steps"], cg_tol=0.0, progress_tol=0.0
    )
    out = {
        "hessian_free_step": step_of(hf),
        "cg_product": (
            _products_fn(problem, config["products"]),
            (params, params, batch),
        ),
        "lbfgs_step": step_of(so_opt.lbfgs()),
    }
    if k <= config["newton_max_k"] and 3 * k * k * dtype.itemsize <= budget:
        out["newton_step"] = step_of(so_opt.newton(memory_budget_bytes=budget))
        out["newton_hessian"] = (jax.jit(hessian), (params, batch))
        matrix = _spd_matrix(k, config["seed"], dtype)
        out["newton_solve"] = (_solve_fn(config["solver"]), (matrix, matrix[0]))
    return out


def _memory(compiled) -> dict[str, int] | None:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    parts = {
        name: int(getattr(analysis, f"{name}_size_in_bytes"))
        for name in ("argument", "output", "temp", "alias", "generated_code")
    }
    parts["peak"] = parts["argument"] + parts["output"] + parts["temp"] - parts["alias"]
    return parts


def _time(fn, args, calls: int = 1) -> float:
    """Seconds per call of ``calls`` back-to-back calls of ``fn(*args)``."""
    start = time.perf_counter()
    for _ in range(calls):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


def _compile(job: dict[str, Any], config: dict[str, Any]) -> None:
    """Compiles a job, times its warm-up call and chooses calls per sample.

    A call that takes ``max_seconds`` or longer is not called again: its
    warm-up call (compilation is already done by then) is its only sample.
    """
    fn, args = job["parts"]
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    job.update(
        fn=compiled,
        args=args,
        memory=_memory(compiled),
        compile_seconds=time.perf_counter() - start,
    )
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    warm = time.perf_counter() - start
    if job["component"] == "hessian_free_step":
        job["cg_steps"] = int(out[1].cg_steps)
    # Calls of a few milliseconds are timed in batches: one call alone is at
    # the mercy of the scheduler on a shared machine.
    job["calls"] = max(1, min(1000, math.ceil(config["min_sample_seconds"] / warm)))
    job["seconds"], job["spent"] = [], 0.0
    job["warm_up_only"] = warm >= config["max_seconds"]
    if job["warm_up_only"]:
        job["seconds"], job["spent"] = [warm], warm


def measure(config: dict[str, Any], progress: bool) -> list[dict[str, Any]]:
    """Compiles every (k, component), then times them in interleaved repeats.

    Each repeat visits every unfinished job once, in a fresh random order, so
    that load drift on a shared machine hits all of them alike. A job stops
    after ``repeats`` samples or once its samples add up to ``max_seconds``.
    """
    jobs = {}
    for h in config["hidden"]:
        problem = problems.digits_mlp(hidden=(h,), dtype=config["dtype"])
        parts = components(problem, config)
        k = problems.num_params(problem.init_params(config["seed"]))
        for name in COMPONENTS:
            if name not in parts:
                logger.info(
                    "k = %d: %s skipped (over --newton-max-k or memory)", k, name
                )
                continue
            jobs[(k, name)] = {"hidden": h, "component": name, "parts": parts[name]}
    bar = tqdm(
        total=len(jobs) * (1 + config["repeats"]),
        disable=not progress,
        desc="scaling",
        unit="sample",
    )
    with bar:
        for (k, name), job in jobs.items():
            bar.set_postfix_str(f"compile k={k} {name}")
            _compile(job, config)
            bar.update()
        rng = np.random.default_rng(config["seed"])
        keys = list(jobs)
        for repeat in range(config["repeats"]):
            for i in rng.permutation(len(keys)):
                job = jobs[keys[i]]
                if (
                    len(job["seconds"]) > repeat
                    or job["spent"] >= config["max_seconds"]
                ):
                    bar.update()
                    continue
                bar.set_postfix_str(f"repeat {repeat + 1} k={keys[i][0]} {keys[i][1]}")
                seconds = _time(job["fn"], job["args"], job["calls"])
                job["seconds"].append(seconds)
                job["spent"] += seconds * job["calls"]
                bar.update()

    records = []
    for (k, name), job in jobs.items():
        per = config["products"] if name == "cg_product" else 1
        seconds = [s / per for s in job["seconds"]]
        record = {
            "component": name,
            "hidden": job["hidden"],
            "k": k,
            "seconds": seconds,
            "median_seconds": statistics.median(seconds),
            "calls_per_sample": job["calls"],
            "warm_up_only": job["warm_up_only"],
            "compile_seconds": job["compile_seconds"],
            "memory": job["memory"],
        }
        if "cg_steps" in job:
            record["cg_steps"] = job["cg_steps"]
        records.append(record)
    return records


def analyse(records: list[dict[str, Any]], config: dict[str, Any]) -> dict:
    """Fitted slopes per component and the Newton / Hessian-free crossover."""
    fits = {}
    for name in COMPONENTS:
        mine = [
            r
            for r in records
            if r["component"] == name and r["k"] >= config["fit_min_k"]
        ]
        if len({r["k"] for r in mine}) >= 2:
            ks = [r["k"] for r in mine]
            fits[name] = fit_power_law(ks, [r["median_seconds"] for r in mine])
    by = {(r["component"], r["k"]): r["median_seconds"] for r in records}
    ks = sorted(k for (name, k) in by if name == "newton_step")
    ks = [k for k in ks if ("hessian_free_step", k) in by]
    measured = None
    if ks:
        measured = crossover(
            ks,
            [by["newton_step", k] for k in ks],
            [by["hessian_free_step", k] for k in ks],
        )
    fitted = None
    if "newton_step" in fits and "hessian_free_step" in fits:
        n, h = fits["newton_step"], fits["hessian_free_step"]
        if n["slope"] > h["slope"]:
            fitted = math.exp(
                (h["intercept"] - n["intercept"]) / (n["slope"] - h["slope"])
            )
    return {
        "fits": fits,
        "crossover_k": {"measured": measured, "fitted_lines": fitted},
    }


def plot(records: list[dict[str, Any]], analysis: dict, directory: str) -> list[str]:
    """Log-log time (with fitted lines) and memory against k; returns paths."""
    plt = outputs.pyplot()
    colours = plt.get_cmap("tab10")
    paths = []
    for key, ylabel, filename in (
        ("median_seconds", "median seconds per call", "scaling_time.png"),
        ("peak_bytes", "peak bytes (XLA memory analysis)", "scaling_memory.png"),
    ):
        fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
        for index, name in enumerate(COMPONENTS):
            mine = sorted(
                (r for r in records if r["component"] == name), key=lambda r: r["k"]
            )
            if key == "peak_bytes":
                mine = [r for r in mine if r["memory"]]
                ys = [r["memory"]["peak"] for r in mine]
            else:
                ys = [r[key] for r in mine]
            if not mine:
                continue
            ks = np.array([r["k"] for r in mine], float)
            label = name
            fit = analysis["fits"].get(name)
            if key == "median_seconds" and fit:
                label += f": slope {fit['slope']:.2f}"
                if not math.isnan(fit["ci_low"]):
                    label += f" [{fit['ci_low']:.2f}, {fit['ci_high']:.2f}]"
                # The fitted line spans only the k it was fitted on.
                fitted = ks[ks >= analysis["config"]["fit_min_k"]]
                line = np.exp(fit["intercept"]) * fitted ** fit["slope"]
                ax.plot(fitted, line, "--", color=colours(index), linewidth=1.2)
            ax.plot(ks, ys, "o-", color=colours(index), label=label, linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("number of params k")
        ax.set_ylabel(ylabel)
        ax.set_title(
            "digits MLP: time per call against k (dashed: fitted power law)"
            if key == "median_seconds"
            else "digits MLP: memory per call against k"
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
        path = os.path.join(directory, filename)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


_COLUMNS = (
    ("component", "component"),
    ("description", "what"),
    ("expected", "expected slope"),
    ("slope", "fitted slope"),
    ("ci_low", "95% CI low"),
    ("ci_high", "95% CI high"),
    ("seconds_min_k", "s at min k"),
    ("seconds_max_k", "s at max k"),
    ("peak_mib_max_k", "peak MiB at max k"),
)


def summary_rows(records: list[dict[str, Any]], analysis: dict) -> list[dict]:
    rows = []
    for name, (description, expected) in COMPONENTS.items():
        mine = sorted(
            (r for r in records if r["component"] == name), key=lambda r: r["k"]
        )
        if not mine:
            continue
        memory = mine[-1]["memory"]
        rows.append(
            {
                "component": name,
                "description": description,
                "expected": expected,
                **analysis["fits"].get(name, {}),
                "seconds_min_k": mine[0]["median_seconds"],
                "seconds_max_k": mine[-1]["median_seconds"],
                "peak_mib_max_k": memory["peak"] / 2**20 if memory else None,
            }
        )
    return rows


def report(directory: str, results: dict[str, Any]) -> str:
    """Writes summary.md/csv, measurements.csv and the plots; returns Markdown."""
    records, analysis, config = results["records"], results, results["config"]
    ks = sorted({r["k"] for r in records})
    cross = analysis["crossover_k"]
    measured = cross["measured"]
    header = [
        f"# scaling: digits MLP, k = {ks[0]} to {ks[-1]}",
        "",
        f"Median of up to {config['repeats']} interleaved samples per (k, "
        f"component) (a sample lasts at least {config['min_sample_seconds']} s; "
        f"sampling stops after {config['max_seconds']} s), compilation excluded; "
        f"dense Newton parts up to k = {config['newton_max_k']}; "
        f"{config['dtype']}; Hessian-free with exactly "
        f"{config['cg_steps']} CG steps; solve by {config['solver']}; slopes "
        f"fitted on k >= {config['fit_min_k']}. Threads: "
        + ", ".join(f"{k}={v}" for k, v in results["threads"].items())
        + f". Memory: {MEMORY_SOURCE}. {outputs.device_line(results)}.",
        "",
        "Newton's step costs more than a Hessian-free step from k = "
        + (
            "(not reached in the range)"
            if measured is None
            else f"{measured:.0f}" + (" (the smallest k)" if measured == ks[0] else "")
        )
        + " (measured); "
        + (
            f"the fitted lines cross at k = {cross['fitted_lines']:.0f}."
            if cross["fitted_lines"]
            else "the fitted lines do not cross."
        ),
    ]
    table = [
        {
            "k": k,
            **{r["component"]: r["median_seconds"] for r in records if r["k"] == k},
        }
        for k in ks
    ]
    columns = [("k", "k"), *((n, n) for n in COMPONENTS if any(n in t for t in table))]
    footer = [
        "",
        "Median seconds per call:",
        "",
        *outputs.markdown_table(columns, table),
    ]
    text = outputs.write_summary(
        directory, header, _COLUMNS, summary_rows(records, analysis), footer
    )
    outputs.write_csv(
        os.path.join(directory, "measurements.csv"),
        [(key, key) for key in ("component", "hidden", "k", "median_seconds")]
        + [("peak_bytes", "peak_bytes"), ("compile_seconds", "compile_seconds")],
        [{**r, "peak_bytes": (r["memory"] or {}).get("peak")} for r in records],
    )
    plot(records, analysis, directory)
    return text


# Options with a preset value: (flag, type, help). Their defaults come from
# DEFAULTS or, with --quick, from QUICK.
_PRESET_OPTIONS = {
    "hidden": ("--hidden", str, "comma-separated hidden widths h (k = 75 h + 10)"),
    "newton_max_k": (
        "--newton-max-k",
        int,
        "time the dense Newton parts only up to this k (a step at k = 10^4 "
        "takes about a minute on one CPU core)",
    ),
    "repeats": ("--repeats", int, "timed samples per (k, component) at most"),
    "min_sample_seconds": (
        "--min-sample-seconds",
        float,
        "one sample repeats a short call until it lasts this long",
    ),
    "max_seconds": (
        "--max-seconds",
        float,
        "stop sampling a (k, component) once its samples add up to this; a call "
        "this long is timed once",
    ),
    "cg_steps": ("--cg-steps", int, "CG iterations per Hessian-free step"),
    "fit_min_k": ("--fit-min-k", int, "fit slopes on k >= this only"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.scaling",
        description=__doc__.split("\n\n")[0],
        epilog="Run as a script, linear algebra is single-threaded unless "
        + ", ".join(THREAD_ENV)
        + " are set in the environment.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for key, (flag, kind, text) in _PRESET_OPTIONS.items():
        shown = lambda v: ",".join(map(str, v)) if isinstance(v, list) else v
        parser.add_argument(
            flag,
            type=kind,
            default=None,
            help=f"{text} [{shown(DEFAULTS[key])}; quick: {shown(QUICK[key])}]",
        )
    parser.add_argument(
        "--products",
        type=int,
        default=20,
        help="GGN products per cg_product call (the timing is divided by it)",
    )
    parser.add_argument(
        "--solver",
        choices=("cholesky", "eigh"),
        default="cholesky",
        help="dense solve to time (Newton's, or saddle-free Newton's)",
    )
    parser.add_argument("--dtype", default="float32", help="params and data dtype")
    parser.add_argument(
        "--memory-budget-gb",
        type=float,
        default=16.0,
        help="dense Newton parts are skipped where 3 k x k matrices exceed it",
    )
    outputs.add_common_arguments(
        parser,
        f"smoke-test preset: h = {QUICK['hidden']}, Newton up to k = "
        f"{QUICK['newton_max_k']}, {QUICK['repeats']} repeats (explicit options "
        "win)",
    )
    return parser


def make_config(args: argparse.Namespace) -> dict[str, Any]:
    """The validated configuration of the study."""
    preset = QUICK if args.quick else DEFAULTS
    config = {
        key: preset[key] if getattr(args, key) is None else getattr(args, key)
        for key in _PRESET_OPTIONS
    }
    hidden = config["hidden"]
    if isinstance(hidden, str):
        try:
            hidden = [int(h) for h in hidden.split(",") if h.strip()]
        except ValueError:
            raise ValueError(
                f"`--hidden` must be comma-separated integers, got {hidden!r}."
            ) from None
    config.update(
        hidden=sorted(set(hidden)),
        products=args.products,
        solver=args.solver,
        dtype=np.dtype(args.dtype).name,
        memory_budget_gb=args.memory_budget_gb,
        seed=args.seed,
        quick=bool(args.quick),
    )
    if len(config["hidden"]) < 2 or min(config["hidden"]) < 1:
        raise ValueError(
            f"`--hidden` needs at least two distinct widths >= 1, got {hidden}."
        )
    for key in ("repeats", "cg_steps", "products"):
        if config[key] < 1:
            raise ValueError(
                f"`--{key.replace('_', '-')}` must be >= 1, got {config[key]}."
            )
    for key in ("min_sample_seconds", "max_seconds"):
        if not config[key] > 0:
            raise ValueError(
                f"`--{key.replace('_', '-')}` must be > 0, got {config[key]}."
            )
    return config


def main(argv: Sequence[str] | None = None) -> str:
    """Command-line entry point; returns the result directory."""
    args, config, directory = outputs.start(
        build_parser(), make_config, argv, "scaling"
    )
    records = measure(config, progress=not args.no_progress)
    device_stats = jax.devices()[0].memory_stats()
    results = outputs.save_results(
        directory,
        "scaling",
        config,
        threads={name: os.environ.get(name) for name in THREAD_ENV},
        memory_source=MEMORY_SOURCE,
        device_peak_bytes=(device_stats or {}).get("peak_bytes_in_use"),
        records=records,
        **analyse(records, config),
    )
    text = report(directory, results)
    print(text)
    print(f"Report: {os.path.join(directory, 'summary.md')}")
    return directory


def _single_threaded() -> None:
    """Restarts this script with single-threaded BLAS and XLA unless set."""
    missing = {k: v for k, v in THREAD_ENV.items() if k not in os.environ}
    if missing:
        env = {**os.environ, **missing}
        argv = [sys.executable, "-m", "experiments.scaling", *sys.argv[1:]]
        os.execve(sys.executable, argv, env)


if __name__ == "__main__":
    _single_threaded()
    main()
