"""Benchmark of data-parallel so_opt steps: 1 device against N devices.

For ``armijo_sgd``, ``lbfgs``, ``hessian_free`` and ``newton`` (and plain
``optax.sgd``, one loss and gradient a step) on the digits MLP, full
training batch, float32: the median time of one jitted runner step with the
batch on 1 device and sharded over N devices (params and state replicated),
the ratio, and the largest relative difference between the two steps'
outputs (a check that both computed the same step).

Both sides run in one process on the same warm state (three steps into
training, so line searches and CG do their usual work), interleaved within
every repeat, and the median over repeats is reported. On a CPU the N
devices are forced host devices (``--xla_force_host_platform_device_count``)
sharing the machine's cores: that proves the sharded path runs, not that it
is faster. On a machine with N accelerators the same command gives the real
figures.

Usage:
  .venv/bin/python scripts/bench_sharding.py [--devices 4] [--repeats 15] \\
      [--hidden 16] [--methods armijo_sgd lbfgs hessian_free newton]
"""

from __future__ import annotations

import argparse
import os
import sys

METHODS = ("sgd", "armijo_sgd", "lbfgs", "hessian_free", "newton")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=4, help="N")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=16, help="MLP hidden width")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    args = parser.parse_args()
    if args.devices < 2:
        parser.error(f"`--devices` must be >= 2, got {args.devices}")
    if args.repeats < 1:
        parser.error(f"`--repeats` must be >= 1, got {args.repeats}")
    return args


ARGS = parse_args()
# Set before numpy and jax are imported: one BLAS thread so numpy does not
# fight XLA's thread pool, and N host devices where the platform is the CPU
# (the flag does nothing for accelerators).
os.environ["OPENBLAS_NUM_THREADS"] = "1"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={ARGS.devices}"
    ).strip()

import dataclasses  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import optax.tree_utils as otu  # noqa: E402

import so_opt  # noqa: E402
from so_opt import problems, runner, sharding  # noqa: E402

WARM_STEPS = 3
MIN_SECONDS = 0.02  # one timing lasts at least this, above timer resolution


def _optimizer(name: str):
    return {
        # One loss and gradient a step: the floor of every method.
        "sgd": lambda: optax.sgd(0.1),
        "armijo_sgd": lambda: so_opt.armijo_sgd(),
        "lbfgs": lambda: so_opt.lbfgs(memory_size=10),
        "hessian_free": lambda: so_opt.hessian_free("gauss_newton", max_cg_steps=20),
        "newton": lambda: so_opt.newton(),
    }[name]()


def _relative_difference(a, b) -> float:
    a = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(a)])
    b = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(b)])
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def time_interleaved(calls: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each zero-argument callable, interleaved."""
    inner = {}
    for name, fn in calls.items():
        jax.block_until_ready(fn())
        start = time.perf_counter()
        jax.block_until_ready(fn())
        inner[name] = max(1, int(MIN_SECONDS / max(time.perf_counter() - start, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            for _ in range(inner[name]):
                out = fn()
            jax.block_until_ready(out)
            samples[name].append((time.perf_counter() - start) / inner[name])
    return {name: statistics.median(s) for name, s in samples.items()}


def bench(name: str, meshes: dict, placed: dict, repeats: int) -> dict:
    """Times one runner step of ``name`` on every mesh from one warm state."""
    base = placed[1]
    optimizer = _optimizer(name)
    step = runner.make_step(base, optimizer)
    params = base.init_params(0)
    state = optimizer.init(params)
    for _ in range(WARM_STEPS):
        params, state, _, _ = step(params, state, base.train)

    calls, outputs = {}, {}
    for count, mesh in meshes.items():
        problem = placed[count]
        on_mesh = runner.make_step(problem, optimizer)
        args = (*sharding.replicate((params, state), mesh), problem.train)
        calls[count] = lambda f=on_mesh, a=args: f(*a)
        new_params, _, value, _ = on_mesh(*args)
        outputs[count] = (new_params, value)
    seconds = time_interleaved(calls, repeats)
    single, many = min(meshes), max(meshes)
    return {
        "k": otu.tree_size(params),
        "seconds": seconds,
        "difference": _relative_difference(outputs[many], outputs[single]),
    }


def main() -> None:
    count = ARGS.devices
    if jax.device_count() < count:
        sys.exit(f"`--devices` {count} asked for, {jax.device_count()} available.")
    meshes = {1: sharding.make_mesh(1), count: sharding.make_mesh(count)}
    problem = problems.digits_mlp(hidden=(ARGS.hidden,), dtype="float32")
    with warnings.catch_warnings():
        # The trim warning says what the header below prints.
        warnings.simplefilter("ignore", UserWarning)
        wide = sharding.shard_problem(problem, meshes[count], remainder="trim")
    size = wide.num_train
    trimmed = dataclasses.replace(
        problem, train=jax.tree_util.tree_map(lambda a: a[:size], problem.train)
    )
    placed = {1: sharding.shard_problem(trimmed, meshes[1]), count: wide}

    device = jax.devices()[0]
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()} "
        f"({device.device_kind}), {jax.device_count()} devices, "
        f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}"
    )
    print(
        f"digits MLP hidden {ARGS.hidden}, {size} of {problem.num_train} training "
        f"examples ({size // count} a device on {count}), float32, "
        f"{ARGS.repeats} repeats, OPENBLAS_NUM_THREADS="
        f"{os.environ['OPENBLAS_NUM_THREADS']}"
    )
    print()
    print(f"| step | k | 1 device | {count} devices | 1 / {count} | max rel. diff |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in ARGS.methods:
        out = bench(name, meshes, placed, ARGS.repeats)
        one, many = out["seconds"][1], out["seconds"][count]
        print(
            f"| {name} | {out['k']:,} | {one * 1e3:.2f} ms | {many * 1e3:.2f} ms | "
            f"{one / many:.2f} | {out['difference']:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
