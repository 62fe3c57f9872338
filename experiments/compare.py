"""The ``compare`` study: every registered optimizer on one problem, same budget.

Run ``python -m experiments.compare --help`` for the options. Results go to
``<out>/<run-id>/``: ``results.json`` (config, environment, measured cost
ratios, every run's per-step history), ``summary.md`` / ``summary.csv`` and
PNG plots of the train loss against steps, wall time and gradient
equivalents. Each finished (regime, optimizer, seed) run is also written on
its own under ``runs/`` the moment it ends, so a study that is killed resumes
where it stopped when started again with the same ``--run-id``.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
from tqdm.auto import tqdm

from experiments import provenance, registry, report
from so_opt import problems, runner

logger = logging.getLogger("experiments.compare")

DEFAULTS = {"steps": 200, "seconds": 20.0, "batch_size": 128}
QUICK = {"steps": 20, "seconds": 3.0}


def parse_value(text: str) -> Any:
    """A command-line value as a Python literal if it is one, else the string.

    ``"64,64"`` -> ``(64, 64)``, ``"1e-3"`` -> ``0.001``, ``"tanh"`` -> ``"tanh"``.
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_assignments(items: Sequence[str], what: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; a clear error otherwise."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"`{what}` expects KEY=VALUE, got {item!r}.")
        out[key.strip()] = parse_value(value.strip())
    return out


def parse_hparams(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["adam.learning_rate=0.003"]`` -> ``{"adam": {"learning_rate": 0.003}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_assignments(items, "--hparam").items():
        name, dot, hparam = key.partition(".")
        if not dot:
            raise ValueError(f"`--hparam` expects OPTIMIZER.NAME=VALUE, got {key!r}.")
        registry.get(name)
        out.setdefault(name, {})[hparam] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.compare",
        description=(
            "Run optimizers on one problem under the same budget and write "
            "results.json, a Markdown/CSV summary and loss plots."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--problem",
        default="digits_mlp",
        help=f"problem name; one of: {', '.join(problems.names())}",
    )
    parser.add_argument(
        "--problem-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument of the problem, repeatable (e.g. hidden=64,64)",
    )
    parser.add_argument(
        "--optimizers",
        default="all",
        help="comma-separated optimizer names, or 'all' for every one that runs "
        f"in the regime; known: {', '.join(registry.names())}",
    )
    parser.add_argument(
        "--hparam",
        action="append",
        default=[],
        metavar="OPT.NAME=VALUE",
        help="override an optimizer hyperparameter, repeatable "
        "(e.g. adam.learning_rate=0.003)",
    )
    parser.add_argument(
        "--regime",
        choices=("full", "minibatch", "both"),
        default="both",
        help="full-batch steps, shuffled mini-batches, or both",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help=f"steps per run [{DEFAULTS['steps']}]"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help=f"wall-time cap per run, compilation excluded [{DEFAULTS['seconds']}]; "
        "0 for none",
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULTS["batch_size"], help="mini-batch size"
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=5,
        help="mini-batch regime: record the full train loss every this many steps",
    )
    parser.add_argument(
        "--seeds", default="0", help="comma-separated seeds (init and batch order)"
    )
    parser.add_argument(
        "--target-loss",
        type=float,
        default=None,
        help="train loss for the time-to-target columns (default: the median "
        "final train loss of each regime)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke-test preset: {QUICK['steps']} steps, {QUICK['seconds']} s "
        "per run (explicit --steps/--seconds win)",
    )
    parser.add_argument("--out", default="results", help="directory for results")
    parser.add_argument(
        "--run-id",
        default=None,
        help="name of the result directory (default: problem and UTC time); "
        "reusing one resumes its unfinished runs",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide tqdm bar")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging level",
    )
    return parser


def make_config(args: argparse.Namespace) -> dict[str, Any]:
    """The study's full configuration from parsed arguments (validated)."""
    preset = QUICK if args.quick else DEFAULTS
    steps = args.steps if args.steps is not None else preset["steps"]
    seconds = args.seconds if args.seconds is not None else preset["seconds"]
    regimes = ["full", "minibatch"] if args.regime == "both" else [args.regime]
    if args.optimizers == "all":
        optimizers = registry.names()
    else:
        optimizers = [n.strip() for n in args.optimizers.split(",") if n.strip()]
        for name in optimizers:
            registry.get(name)
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    if not seeds:
        raise ValueError("`--seeds` must name at least one seed.")
    return {
        "problem": args.problem,
        "problem_args": parse_assignments(args.problem_arg, "--problem-arg"),
        "optimizers": optimizers,
        "hparams": parse_hparams(args.hparam),
        "regimes": regimes,
        "steps": steps,
        "seconds": seconds or None,
        "batch_size": args.batch_size,
        "eval_every": args.eval_every,
        "seeds": seeds,
        "target_loss": args.target_loss,
        "quick": bool(args.quick),
    }


def _run_file(directory: str, regime: str, name: str, seed: int) -> str:
    return os.path.join(directory, "runs", f"{regime}__{name}__seed{seed}.json")


def plan(config: dict[str, Any], problem: problems.Problem) -> list[dict[str, Any]]:
    """Every (regime, optimizer, seed) to run, or a reason it is skipped."""
    jobs = []
    for regime in config["regimes"]:
        for name in config["optimizers"]:
            method = registry.get(name)
            reason = None
            if regime not in method.regimes:
                reason = f"not run in the {regime} regime"
            elif regime == "minibatch" and problem.train is None:
                reason = "the problem has no data to batch"
            elif method.skip_reason is not None:
                reason = method.skip_reason(problem)
            for seed in config["seeds"]:
                jobs.append(
                    {"regime": regime, "optimizer": name, "seed": seed, "skip": reason}
                )
    return jobs


def run_one(
    job: dict[str, Any],
    config: dict[str, Any],
    problem: problems.Problem,
    progress: Any,
) -> dict[str, Any]:
    """Runs one (regime, optimizer, seed) and returns its JSON record."""
    method = registry.get(job["optimizer"])
    regime = job["regime"]
    steps_per_epoch = (
        max(problem.num_train // config["batch_size"], 1)
        if regime == "minibatch"
        else 1
    )
    hparams = {**method.defaults, **config["hparams"].get(method.name, {})}
    context = {"max_steps": config["steps"], "steps_per_epoch": steps_per_epoch}
    settings = runner.RunSettings(
        regime=regime,
        max_steps=config["steps"],
        max_seconds=config["seconds"],
        batch_size=config["batch_size"],
        eval_every=config["eval_every"],
        seed=job["seed"],
    )
    start = time.perf_counter()
    record = runner.run(
        problem,
        method.build(hparams, context),
        settings,
        value_and_grad=method.value_and_grad,
        extra_arg_names=method.extra_arg_names,
        peer_grad_evals=method.peer_grad_evals,
        progress=progress,
    )
    record.update(
        regime=regime,
        optimizer=method.name,
        seed=job["seed"],
        hparams=hparams,
        description=method.description,
        total_seconds=time.perf_counter() - start,
    )
    return record


class ResumeError(ValueError):
    """A ``--run-id`` that names a study with another configuration."""


def _check_resumable(directory: str, config: dict[str, Any]) -> None:
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        runner.save_json_atomic(path, config)
        return
    with open(path) as handle:
        old = json.load(handle)
    if old != json.loads(json.dumps(config)):
        raise ResumeError(
            f"`--run-id`: {directory} holds a study with another configuration; "
            "choose a new run id (or delete that directory)."
        )
    logger.info("resuming the study in %s", directory)


def study(config: dict[str, Any], out: str, run_id: str | None, progress: bool) -> str:
    """Runs (or resumes) the study and writes its results; returns the directory."""
    problem = problems.get(config["problem"], **config["problem_args"])
    if run_id is None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        run_id = f"{config['problem']}-{stamp}"
    directory = os.path.join(out, run_id)
    os.makedirs(os.path.join(directory, "runs"), exist_ok=True)
    _check_resumable(directory, config)

    k = problems.num_params(problem.init_params(config["seeds"][0]))
    logger.info("problem %s: k = %d params, backend %s", problem.name, k, jax.devices())
    ratios = runner.measure_cost_ratios(problem)
    logger.info(
        "measured costs: value = %.2f grads, HVP = %.2f grads",
        ratios["value_per_grad"],
        ratios["hvp_per_grad"],
    )

    jobs = plan(config, problem)
    pending = [
        j
        for j in jobs
        if j["skip"] is None
        and not os.path.exists(
            _run_file(directory, j["regime"], j["optimizer"], j["seed"])
        )
    ]
    bar = tqdm(
        total=len(pending) * config["steps"],
        disable=not progress,
        unit="step",
        desc="compare",
    )
    with bar:
        for job in pending:
            bar.set_postfix_str(f"{job['regime']}/{job['optimizer']}/{job['seed']}")
            done_before = bar.n
            record = run_one(job, config, problem, bar.update)
            # A run that stops early (converged, failed) frees its remaining steps.
            bar.update(config["steps"] - (bar.n - done_before))
            path = _run_file(directory, job["regime"], job["optimizer"], job["seed"])
            runner.save_json_atomic(path, record)
            logger.info(
                "%s/%s seed %d: %s after %d steps, train loss %.4g",
                job["regime"],
                job["optimizer"],
                job["seed"],
                record["status"],
                record["steps"],
                record["final"]["train_loss"],
            )

    runs = []
    for job in jobs:
        if job["skip"] is not None:
            runs.append({**{k: job[k] for k in ("regime", "optimizer", "seed")}})
            runs[-1]["skipped"] = job["skip"]
            continue
        path = _run_file(directory, job["regime"], job["optimizer"], job["seed"])
        with open(path) as handle:
            runs.append(json.load(handle))
    results = {
        "study": "compare",
        "run_id": run_id,
        "config": config,
        "num_params": k,
        "environment": provenance.environment(),
        "cost_ratios": ratios,
        "runs": runs,
    }
    runner.save_json_atomic(os.path.join(directory, "results.json"), results)
    report.write(directory, results)
    return directory


def main(argv: Sequence[str] | None = None) -> str:
    """Command-line entry point; returns the result directory."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        config = make_config(args)
        problems.get(config["problem"], **config["problem_args"])
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    try:
        directory = study(config, args.out, args.run_id, progress=not args.no_progress)
    except ResumeError as error:
        parser.error(str(error))
    with open(os.path.join(directory, "summary.md")) as handle:
        print(handle.read())
    print(f"Report: {os.path.join(directory, 'summary.md')}")
    return directory


if __name__ == "__main__":
    main()
