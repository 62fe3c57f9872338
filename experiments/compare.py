"""The ``compare`` study: every registered optimizer on one problem, same budget.

Run ``python -m experiments.compare --help`` for the options. A study is set
by a TOML config (``--config``, default ``experiments/configs/default.toml``)
with command-line overrides; the whole config is checked, and the problem and
every optimizer built, before any work starts.

With ``tune = true`` every method with a declared grid (``registry``) runs
each grid point once, on the first seed and under the same budget as every
other run, and keeps the point with the lowest final validation loss; the
trials and the choice go into ``results.json`` and the report. The chosen
point then runs on every seed (the first seed's trial is reused as its run).

Results go to ``<out>/<run-id>/``: ``results.json`` (config, environment,
measured cost ratios, tuning, every run's per-step history), ``summary.md`` /
``summary.csv`` and PNG plots. Each finished trial and run is written on its
own under ``runs/`` the moment it ends, so a study that is killed resumes
where it stopped when started again with the same ``--run-id``.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import glob
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from experiments import config as configs
from experiments import provenance, registry, report
from so_opt import problems, runner, sharding

logger = logging.getLogger("experiments.compare")

DEFAULT_CONFIG = os.path.join(configs.CONFIG_DIR, "default.toml")

# The record of one (regime, optimizer, hyperparameters, seed) run.
Job = dict[str, Any]


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
        out.setdefault(name, {})[hparam] = value
    return out


def _csv(text: str, kind: type, option: str) -> list:
    """A comma-separated option value as a list of ``kind``, naming ``option``."""
    out = []
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            out.append(kind(item.strip()))
        except ValueError:
            what = {int: "integers", float: "numbers"}.get(kind, "values")
            raise ValueError(
                f"`{option}` expects comma-separated {what}, got {item.strip()!r} "
                f"in {text!r}."
            ) from None
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.compare",
        description=(
            "Run optimizers on one problem under the same budget and write "
            "results.json, a Markdown/CSV summary and loss plots. Options given "
            "here override the config file, which overrides the built-in defaults."
        ),
    )
    add = parser.add_argument
    add("--config", default=DEFAULT_CONFIG, help="TOML config file [%(default)s]")
    add("--problem", help=f"problem name; one of: {', '.join(problems.names())}")
    add(
        "--problem-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument of the problem, repeatable (e.g. hidden=64,64)",
    )
    add(
        "--optimizers",
        help="comma-separated optimizer names, or 'all' (each runs in the "
        f"regimes it makes sense in); known: {', '.join(registry.names())}",
    )
    add(
        "--hparam",
        action="append",
        default=[],
        metavar="OPT.NAME=VALUE",
        help="fix an optimizer hyperparameter (it is then not tuned), repeatable "
        "(e.g. adam.learning_rate=0.003)",
    )
    add("--regime", choices=("full", "minibatch", "both"), help="regimes to run")
    add("--steps", type=int, help="step cap per run")
    add(
        "--seconds",
        type=float,
        help="wall-time cap per run, compilation excluded; 0: none",
    )
    add(
        "--grad-equivalents",
        type=float,
        help="work cap per run in gradient equivalents (measured ratios); 0: none",
    )
    add("--batch-size", type=int, help="mini-batch size")
    add("--eval-every", type=int, help="minibatch: full train loss every N steps")
    add("--seeds", help="comma-separated seeds (init and batch order)")
    add("--targets", help="comma-separated target train losses (default: automatic)")
    add(
        "--tune",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tune each method's declared grid on the validation split",
    )
    add("--devices", type=int, help="shard the data over this many devices (a mesh)")
    add(
        "--quick",
        action="store_true",
        help=f"smoke-test preset {configs.QUICK} over the config file "
        "(explicit options win)",
    )
    add("--out", default="results", help="directory for results [%(default)s]")
    add(
        "--run-id",
        help="name of the result directory (default: problem and UTC time); "
        "reusing one resumes its unfinished runs",
    )
    add("--no-progress", action="store_true", help="hide the tqdm bar")
    add(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging level [%(default)s]",
    )
    return parser


def _merged(base: Any, extra: dict[str, Any]) -> Any:
    # Command-line tables add to (not replace) the file's; a bad file value is
    # left for validation to report.
    return {**base, **extra} if isinstance(base, Mapping) else extra


def make_config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults < config file < ``--quick`` < options: the validated config.

    Raises:
      configs.ConfigError: naming the key that is wrong.
    """
    layer = configs.load_toml(args.config)
    cli: dict[str, Any] = {}
    simple = {
        "problem": args.problem,
        "steps": args.steps,
        "seconds": args.seconds,
        "grad_equivalents": args.grad_equivalents,
        "batch_size": args.batch_size,
        "eval_every": args.eval_every,
        "tune": args.tune,
        "devices": args.devices,
    }
    cli.update({k: v for k, v in simple.items() if v is not None})
    try:
        if args.problem_arg:
            extra = parse_assignments(args.problem_arg, "--problem-arg")
            cli["problem_args"] = _merged(layer.get("problem_args", {}), extra)
        if args.hparam:
            hparams = dict(layer.get("hparams", {}))
            for name, extra in parse_hparams(args.hparam).items():
                hparams[name] = _merged(hparams.get(name, {}), extra)
            cli["hparams"] = hparams
        if args.optimizers is not None:
            names = args.optimizers.strip()
            cli["optimizers"] = (
                "all" if names == "all" else _csv(names, str, "--optimizers")
            )
            cli["exclude"] = []
        if args.regime is not None:
            both = ["full", "minibatch"]
            cli["regimes"] = both if args.regime == "both" else [args.regime]
        if args.seeds is not None:
            cli["seeds"] = _csv(args.seeds, int, "--seeds")
        if args.targets is not None:
            cli["targets"] = _csv(args.targets, float, "--targets")
    except ValueError as error:
        raise configs.ConfigError(str(error)) from error
    return configs.build(layer, configs.QUICK if args.quick else {}, cli)


def _run_file(directory: str, job: Job) -> str:
    tag = f"{job['regime']}__{job['optimizer']}"
    if job.get("trial") is not None:
        return os.path.join(directory, "runs", "tune", f"{tag}__{job['trial']}.json")
    return os.path.join(directory, "runs", f"{tag}__seed{job['seed']}.json")


def plan(config: dict[str, Any], problem: problems.Problem) -> list[Job]:
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


def tuning_trials(config: dict[str, Any], jobs: list[Job]) -> list[Job]:
    """One job per grid point of each method that runs and has a grid to tune."""
    if not config["tune"]:
        return []
    trials = []
    for job in jobs:
        if job["skip"] is not None or job["seed"] != config["seeds"][0]:
            continue
        method = registry.get(job["optimizer"])
        fixed = config["hparams"].get(method.name, {})
        for index, point in enumerate(configs.grid_points(method, fixed)):
            trials.append({**job, "trial": index, "point": point})
    return trials


def hparams_of(config: dict[str, Any], job: Job) -> dict[str, Any]:
    """Defaults < fixed config values < the job's grid point (if any)."""
    method = registry.get(job["optimizer"])
    fixed = config["hparams"].get(method.name, {})
    return {**method.defaults, **fixed, **job.get("point", {})}


def run_one(
    job: Job,
    config: dict[str, Any],
    problem: problems.Problem,
    ratios: dict[str, float],
    progress: Any,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
    """Runs one job under the study's budget and returns its JSON record."""
    method = registry.get(job["optimizer"])
    regime = job["regime"]
    steps_per_epoch = (
        max(problem.num_train // config["batch_size"], 1)
        if regime == "minibatch"
        else 1
    )
    hparams = hparams_of(config, job)
    context = {"max_steps": config["steps"], "steps_per_epoch": steps_per_epoch}
    settings = runner.RunSettings(
        regime=regime,
        max_steps=config["steps"],
        max_seconds=config["seconds"],
        max_grad_equivalents=config["grad_equivalents"],
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
        cost_ratios=ratios,
        mesh=mesh,
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


def select(config: dict[str, Any], trials: list[Job], records: list[dict]) -> list:
    """The tuning result per (regime, optimizer): trials and the chosen point.

    The point with the lowest final validation loss wins (the first on ties);
    a trial that diverged (non-finite loss or params) cannot win.
    """
    groups: dict[tuple[str, str], list] = {}
    for trial, record in zip(trials, records, strict=True):
        groups.setdefault((trial["regime"], trial["optimizer"]), []).append(
            (trial, record)
        )
    out = []
    for (regime, name), pairs in groups.items():
        rows = []
        for trial, record in pairs:
            final = record["final"]
            rows.append(
                {
                    "point": trial["point"],
                    "valid_loss": final.get("valid_loss"),
                    "valid_accuracy": final.get("valid_accuracy"),
                    "train_loss": final.get("train_loss"),
                    "status": record["status"],
                    "steps": record["steps"],
                }
            )
        finite = [
            i
            for i, (row, (_, record)) in enumerate(zip(rows, pairs, strict=True))
            if record["params_finite"] and math.isfinite(row["valid_loss"])
        ]
        best = min(finite, key=lambda i: rows[i]["valid_loss"]) if finite else None
        method = registry.get(name)
        out.append(
            {
                "regime": regime,
                "optimizer": name,
                "metric": "valid_loss",
                "grid": {k: v for k, v in method.grid.items() if k in rows[0]["point"]},
                "fixed": config["hparams"].get(name, {}),
                "trials": rows,
                "selected": None if best is None else rows[best]["point"],
                "selected_trial": best,
            }
        )
    return out


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


def _load(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def _cost_ratios(directory: str, problem: problems.Problem) -> dict[str, float]:
    # Measured once per study and kept, so that a resumed study converts work
    # (and applies a `grad_equivalents` cap) with the same ratios throughout.
    path = os.path.join(directory, "cost_ratios.json")
    ratios = _load(path)
    if ratios is None:
        ratios = runner.measure_cost_ratios(problem)
        runner.save_json_atomic(path, ratios)
    logger.info(
        "measured costs: value = %.2f grads, HVP = %.2f grads",
        ratios["value_per_grad"],
        ratios["hvp_per_grad"],
    )
    return ratios


class _Driver:
    """Runs jobs not yet on disk, saving each record atomically as it ends."""

    def __init__(self, directory, config, problem, ratios, mesh, bar):
        self.directory, self.config, self.problem = directory, config, problem
        self.ratios, self.mesh, self.bar = ratios, mesh, bar

    def __call__(self, job: Job) -> dict[str, Any]:
        path = _run_file(self.directory, job)
        record = _load(path)
        if record is not None:
            return record
        label = job["optimizer"] + (
            f" {job['point']}" if job.get("trial") is not None else ""
        )
        self.bar.set_postfix_str(f"{job['regime']}/{label}/seed {job['seed']}")
        done_before = self.bar.n
        record = run_one(
            job, self.config, self.problem, self.ratios, self.bar.update, self.mesh
        )
        # A run that stops early (converged, failed, capped) frees its steps.
        self.bar.update(self.config["steps"] - (self.bar.n - done_before))
        runner.save_json_atomic(path, record)
        logger.info(
            "%s/%s seed %d: %s after %d steps, train loss %.4g",
            job["regime"],
            label,
            job["seed"],
            record["status"],
            record["steps"],
            record["final"]["train_loss"],
        )
        return record


def study(
    config: dict[str, Any],
    out: str,
    run_id: str | None,
    progress: bool,
    problem: problems.Problem | None = None,
) -> str:
    """Runs (or resumes) the study and writes its results; returns the directory."""
    if problem is None:
        problem = configs.check_runnable(config)
    mesh = None
    if config["devices"] is not None:
        mesh = sharding.make_mesh(config["devices"])
        problem = sharding.shard_problem(problem, mesh, remainder="trim")
    if run_id is None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        run_id = f"{config['problem']}-{stamp}"
    directory = os.path.join(out, run_id)
    os.makedirs(os.path.join(directory, "runs", "tune"), exist_ok=True)
    _check_resumable(directory, config)
    # A kill during an atomic write leaves only its temporary file behind.
    for stale in glob.glob(os.path.join(directory, "**", ".tmp-*"), recursive=True):
        os.remove(stale)

    k = problems.num_params(problem.init_params(config["seeds"][0]))
    logger.info("problem %s: k = %d params, devices %s", problem.name, k, jax.devices())
    ratios = _cost_ratios(directory, problem)

    jobs = plan(config, problem)
    trials = tuning_trials(config, jobs)
    todo = [j for j in trials if not os.path.exists(_run_file(directory, j))]
    mains = [j for j in jobs if j["skip"] is None]
    tuned = {(t["regime"], t["optimizer"]) for t in trials}
    # The first seed's run of a tuned method is its winning trial: no steps.
    todo += [
        j
        for j in mains
        if not os.path.exists(_run_file(directory, j))
        and not (
            j["seed"] == config["seeds"][0] and (j["regime"], j["optimizer"]) in tuned
        )
    ]
    bar = tqdm(
        total=len(todo) * config["steps"],
        disable=not progress,
        unit="step",
        desc="compare",
    )
    with bar:
        drive = _Driver(directory, config, problem, ratios, mesh, bar)
        tuning = select(config, trials, [drive(t) for t in trials])
        chosen = {(t["regime"], t["optimizer"]): t for t in tuning}
        for job in mains:
            result = chosen.get((job["regime"], job["optimizer"]))
            if result is not None and result["selected"] is not None:
                job["point"] = result["selected"]
                if job["seed"] == config["seeds"][0]:
                    # The first seed's run is the winning trial itself.
                    trial = {**job, "trial": result["selected_trial"]}
                    path = _run_file(directory, job)
                    if not os.path.exists(path):
                        runner.save_json_atomic(path, drive(trial))
            drive(job)

    runs = []
    for job in jobs:
        if job["skip"] is not None:
            keys = ("regime", "optimizer", "seed")
            runs.append({**{k: job[k] for k in keys}, "skipped": job["skip"]})
        else:
            runs.append(_load(_run_file(directory, job)))
    results = {
        "study": "compare",
        "run_id": run_id,
        "config": config,
        "num_params": k,
        "environment": provenance.environment(),
        "mesh": None
        if mesh is None
        else {"devices": [str(d) for d in mesh.devices.flat], "axis": "data"},
        "cost_ratios": ratios,
        "tuning": tuning,
        "runs": runs,
    }
    # The loss at the initial params, where the automatic targets start from
    # (a mini-batch history starts `eval_every` steps in).
    loss = jax.jit(problem.loss)
    results["initial_train_loss"] = float(
        np.median(
            [
                float(loss(problem.init_params(s), problem.train))
                for s in config["seeds"]
            ]
        )
    )
    # Recorded so that every reader (the README's Findings) uses the same ones;
    # automatic ones with their rule: best + (initial - best) * 10^-j, from
    # the initial loss to the lowest train loss any run of the regime reached.
    report.record_targets(results)
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
        problem = configs.check_runnable(config)
    except configs.ConfigError as error:
        parser.error(str(error))
    if args.run_id is not None and (
        not args.run_id.strip()
        or args.run_id != os.path.basename(args.run_id)
        or args.run_id in (".", "..")
    ):
        parser.error(f"`--run-id` must be a plain folder name, got {args.run_id!r}.")
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as error:
        parser.error(f"`--out` {args.out!r} cannot be created: {error.strerror}.")
    try:
        directory = study(config, args.out, args.run_id, not args.no_progress, problem)
    except ResumeError as error:
        parser.error(str(error))
    with open(os.path.join(directory, "summary.md")) as handle:
        print(handle.read())
    print(f"Report: {os.path.join(directory, 'summary.md')}")
    return directory


if __name__ == "__main__":
    main()
