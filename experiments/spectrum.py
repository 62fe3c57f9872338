"""The ``spectrum`` study: Hessian eigenvalues along a training run.

A registered optimizer (default Adam) trains the digits MLP on the full
training set. Every ``--every`` steps, at the current params and on the full
training loss, the study records:

- the ``--num-eigs`` smallest and largest Hessian eigenvalues, by Lanczos on
  Hessian-vector products (``so_opt.hessian_eigenvalues``), each with its
  residual bound (every Ritz value lies within its residual of a true
  eigenvalue);
- Hutchinson's estimate of the Hessian trace and its standard error
  (``so_opt.hessian_trace``);
- how many of the Ritz values found are negative (a lower bound on the
  number of negative eigenvalues, by Cauchy interlacing), the ratio
  ``|lambda_min| / lambda_max``, the loss and the gradient norm.

Negative curvature that persists along training is why undamped Newton
steps (``-H^{-1} g``) go uphill or diverge on networks, and why so_opt's
``newton`` damps and ``hessian_free`` uses Gauss-Newton curvature.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax
import optax.tree_utils as otu
from tqdm.auto import tqdm

import so_opt
from experiments import outputs, registry
from so_opt import problems, runner

logger = logging.getLogger("experiments.spectrum")

DEFAULTS = {"hidden": [32], "steps": 300, "every": 25, "trace_samples": 32}
QUICK = {"hidden": [8], "steps": 30, "every": 10, "trace_samples": 16}


def make_probe(problem: problems.Problem, config: dict[str, Any]):
    """The jitted ``probe(params, batch, key) -> dict`` of curvature figures."""
    num = config["num_eigs"]

    def probe(params, batch, key):
        value_fn = lambda p: problem.loss(p, batch)
        eig_key, trace_key = jax.random.split(key)
        eigs = so_opt.hessian_eigenvalues(
            value_fn,
            params,
            num,
            eig_key,
            "both",
            num_iterations=config["lanczos_iterations"],
        )
        trace = so_opt.hessian_trace(
            value_fn, params, trace_key, config["trace_samples"]
        )
        value, grad = jax.value_and_grad(value_fn)(params)
        return {
            "loss": value,
            "grad_norm": otu.tree_norm(grad),
            "eigenvalues": eigs.eigenvalues,
            "residuals": eigs.residuals,
            "lanczos_restarts": eigs.num_restarts,
            "trace": trace.estimate,
            "trace_se": trace.standard_error,
        }

    return jax.jit(probe)


def checkpoint_record(step: int, figures: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready record of one probe, with the derived columns."""
    out = {"step": step}
    for name, value in figures.items():
        value = np.asarray(value)
        out[name] = value.tolist() if value.ndim else value.item()
    eigenvalues = np.asarray(out["eigenvalues"])
    lam_min, lam_max = float(eigenvalues[0]), float(eigenvalues[-1])
    out.update(
        lambda_min=lam_min,
        lambda_max=lam_max,
        num_negative=int(np.sum(eigenvalues < 0)),
        negative_ratio=abs(lam_min) / lam_max if lam_min < 0 < lam_max else 0.0,
    )
    return out


def train_and_probe(config: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Trains with the configured optimizer and probes every ``every`` steps."""
    problem = problems.digits_mlp(hidden=tuple(config["hidden"]), dtype=config["dtype"])
    method = registry.get(config["optimizer"])
    context = {"max_steps": config["steps"], "steps_per_epoch": 1}
    optimizer = method.build(config["hparams"], context)
    step_fn = runner.make_step(
        problem, optimizer, method.value_and_grad, method.extra_arg_names
    )
    probe = make_probe(problem, config)
    params = problem.init_params(config["seed"])
    state = optax.with_extra_args_support(optimizer).init(params)
    batch = problem.train
    key = jax.random.key(config["seed"])
    k = problems.num_params(params)
    logger.info("digits MLP %s: k = %d params", config["hidden"], k)

    checkpoints, probe_seconds = [], 0.0
    bar = tqdm(total=config["steps"], disable=not progress, desc="spectrum")
    with bar:
        for step in range(config["steps"] + 1):
            if step % config["every"] == 0 or step == config["steps"]:
                start = time.perf_counter()
                figures = jax.device_get(
                    probe(params, batch, jax.random.fold_in(key, step))
                )
                probe_seconds += time.perf_counter() - start
                checkpoints.append(checkpoint_record(step, figures))
                last = checkpoints[-1]
                bar.set_postfix(
                    loss=f"{last['loss']:.3g}",
                    lmin=f"{last['lambda_min']:.2g}",
                    lmax=f"{last['lambda_max']:.2g}",
                )
            if step < config["steps"]:
                params, state, _, _ = step_fn(params, state, batch)
                bar.update()
    return {
        "num_params": k,
        "hparams": {**method.defaults, **config["hparams"]},
        "probe_seconds": probe_seconds,
        "checkpoints": checkpoints,
    }


def plot(results: dict[str, Any], directory: str) -> str:
    """Ritz values, trace and negative count against the step; returns the path."""
    plt = outputs.pyplot()
    points = results["checkpoints"]
    steps = [c["step"] for c in points]
    eigenvalues = np.array([c["eigenvalues"] for c in points])
    num = eigenvalues.shape[1] // 2
    fig, axes = plt.subplots(3, 1, figsize=(7.5, 9), sharex=True, layout="constrained")

    ax = axes[0]
    for j in range(eigenvalues.shape[1]):
        colour = "tab:blue" if j < num else "tab:red"
        ax.plot(steps, eigenvalues[:, j], "o-", color=colour, markersize=3, lw=0.8)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylabel("Hessian eigenvalue")
    ax.set_title(
        f"digits MLP {results['config']['hidden']} (k = {results['num_params']}), "
        f"{results['config']['optimizer']}: {num} smallest (blue), "
        f"{num} largest (red)",
        fontsize="medium",
    )

    ax = axes[1]
    trace = [c["trace"] for c in points]
    ax.errorbar(steps, trace, yerr=[c["trace_se"] for c in points], fmt="o-", ms=3)
    ax.set_ylabel("Hutchinson trace ± SE")

    ax = axes[2]
    ax.plot(steps, [c["loss"] for c in points], "o-", color="black", ms=3)
    ax.set_yscale("log")
    ax.set_ylabel("train loss")
    twin = ax.twinx()
    twin.step(steps, [c["num_negative"] for c in points], where="mid", color="tab:blue")
    twin.set_ylabel(f"negative among {2 * num} found", color="tab:blue")
    twin.set_ylim(-0.2, 2 * num + 0.2)
    ax.set_xlabel("training step")
    for ax in axes:
        ax.grid(alpha=0.3)
    path = os.path.join(directory, "spectrum.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


_COLUMNS = (
    ("step", "step"),
    ("loss", "train loss"),
    ("grad_norm", "grad norm"),
    ("lambda_min", "λ_min"),
    ("lambda_max", "λ_max"),
    ("negative_ratio", "-λ_min/λ_max"),
    ("num_negative", "negative found"),
    ("trace", "trace"),
    ("trace_se", "trace SE"),
)


def report(directory: str, results: dict[str, Any]) -> str:
    """Writes summary.md/csv and the plot; returns the Markdown."""
    config, points = results["config"], results["checkpoints"]
    max_residual = max(max(c["residuals"]) for c in points)
    header = [
        f"# spectrum: digits MLP {config['hidden']} ({results['num_params']} "
        f"params), {config['optimizer']} {results['hparams']}",
        "",
        f"Full-batch training for {config['steps']} steps; every "
        f"{config['every']} steps, Lanczos ({config['lanczos_iterations'] or 'default'}"
        f" iterations) finds the {config['num_eigs']} smallest and largest "
        f"Hessian eigenvalues (largest residual bound {max_residual:.2g}); "
        f"'negative found' counts the negative ones among those "
        f"{2 * config['num_eigs']}, a lower bound on the Hessian's count (Cauchy "
        "interlacing: the j-th smallest Ritz value is at least the j-th smallest "
        "eigenvalue). The trace is Hutchinson's estimate with "
        f"{config['trace_samples']} Rademacher probes. {config['dtype']}, "
        f"seed {config['seed']}. {outputs.device_line(results)}.",
    ]
    text = outputs.write_summary(directory, header, _COLUMNS, points)
    plot(results, directory)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.spectrum",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--hidden",
        default=None,
        help=f"comma-separated hidden widths [{DEFAULTS['hidden'][0]}; quick: "
        f"{QUICK['hidden'][0]}]",
    )
    parser.add_argument(
        "--optimizer",
        default="adam",
        help="a registered optimizer that runs full batch; known: "
        + ", ".join(registry.names()),
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="override the optimizer's learning_rate (default: its registry value)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps [{DEFAULTS['steps']}; quick: {QUICK['steps']}]",
    )
    parser.add_argument(
        "--every",
        type=int,
        default=None,
        help=f"probe every this many steps [{DEFAULTS['every']}; quick: "
        f"{QUICK['every']}]",
    )
    parser.add_argument(
        "--num-eigs", type=int, default=10, help="eigenvalues found at each end"
    )
    parser.add_argument(
        "--lanczos-iterations",
        type=int,
        default=None,
        help="Lanczos steps (default: so_opt's, min(k, 2 num-eigs + 40))",
    )
    parser.add_argument(
        "--trace-samples",
        type=int,
        default=None,
        help=f"Hutchinson probes [{DEFAULTS['trace_samples']}; quick: "
        f"{QUICK['trace_samples']}]",
    )
    parser.add_argument("--dtype", default="float32", help="params and data dtype")
    outputs.add_common_arguments(
        parser,
        f"smoke-test preset: h = {QUICK['hidden']}, {QUICK['steps']} steps, a "
        f"probe every {QUICK['every']} (explicit options win)",
    )
    return parser


def make_config(args: argparse.Namespace) -> dict[str, Any]:
    """The validated configuration of the study."""
    preset = QUICK if args.quick else DEFAULTS
    pick = lambda name: (
        preset[name] if getattr(args, name) is None else getattr(args, name)
    )
    hidden = preset["hidden"]
    if args.hidden is not None:
        hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    method = registry.get(args.optimizer)
    if "full" not in method.regimes:
        raise ValueError(
            f"`--optimizer` must run full batch, got {args.optimizer!r} "
            f"(regimes {list(method.regimes)})."
        )
    hparams = {}
    if args.learning_rate is not None:
        if "learning_rate" not in method.defaults:
            raise ValueError(f"`--learning-rate`: {args.optimizer} has none.")
        hparams["learning_rate"] = args.learning_rate
    config = {
        "hidden": hidden,
        "optimizer": method.name,
        "hparams": hparams,
        "steps": pick("steps"),
        "every": pick("every"),
        "num_eigs": args.num_eigs,
        "lanczos_iterations": args.lanczos_iterations,
        "trace_samples": pick("trace_samples"),
        "dtype": np.dtype(args.dtype).name,
        "seed": args.seed,
        "quick": bool(args.quick),
    }
    for key in ("steps", "every", "num_eigs"):
        if config[key] < 1:
            raise ValueError(f"`--{key.replace('_', '-')}` must be >= 1.")
    if config["trace_samples"] < 2:
        raise ValueError("`--trace-samples` must be >= 2.")
    return config


def main(argv: Sequence[str] | None = None) -> str:
    """Command-line entry point; returns the result directory."""
    args, config, directory = outputs.start(
        build_parser(), make_config, argv, "spectrum"
    )
    measured = train_and_probe(config, progress=not args.no_progress)
    results = outputs.save_results(directory, "spectrum", config, **measured)
    text = report(directory, results)
    finite = all(
        math.isfinite(c[key])
        for c in results["checkpoints"]
        for key in ("loss", "lambda_min", "lambda_max", "trace")
    )
    if not finite:
        logger.warning("some probes are not finite; see %s", directory)
    print(text)
    print(f"Report: {os.path.join(directory, 'summary.md')}")
    return directory


if __name__ == "__main__":
    main()
