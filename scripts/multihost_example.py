"""A data-parallel so_opt run over several processes (hosts) with JAX.

Every process runs this same script. ``jax.distributed.initialize`` joins
them into one JAX runtime; :func:`so_opt.sharding.make_mesh` then spans the
devices of all processes, each process builds the same problem from its own
copy of the data, and :func:`so_opt.runner.run` shards the training set over
the mesh's ``"data"`` axis. XLA runs the step on the local shards and does
the cross-host reductions; every process gets the same result, and process 0
writes it.

Usage:
  # On each of P hosts, the same command with its own --process-id (0..P-1);
  # HOST0 is the machine of process 0, PORT any free port there:
  python scripts/multihost_example.py --coordinator HOST0:PORT \\
      --num-processes P --process-id I [--method lbfgs] [--out result.json]

  # Under SLURM, Open MPI or on Cloud TPU, JAX finds all three itself:
  python scripts/multihost_example.py --auto

  # Try it on one machine: starts P local processes on CPU devices (gloo
  # collectives) and checks their losses against a single-process run:
  python scripts/multihost_example.py --local 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile

logger = logging.getLogger("multihost_example")

METHODS = ("armijo_sgd", "lbfgs", "hessian_free", "newton")
# Float32 reductions split over processes change the summation order only.
RTOL = 1e-5


def _optimizer(name: str):
    import so_opt

    return {
        "armijo_sgd": lambda: so_opt.armijo_sgd(),
        "lbfgs": lambda: so_opt.lbfgs(memory_size=5),
        "hessian_free": lambda: so_opt.hessian_free("gauss_newton", max_cg_steps=20),
        "newton": lambda: so_opt.newton(),
    }[name]()


def _use_cpu(local_devices: int) -> None:
    """Runs JAX on ``local_devices`` CPU devices; call before importing jax."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    flag = f"--xla_force_host_platform_device_count={local_devices}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


def _train(args: argparse.Namespace, num_train: int | None = None) -> dict:
    """Ten (``--steps``) full-batch steps, on the mesh or, without one, alone.

    ``num_train`` trims the single-process reference to the examples the
    sharded run kept.
    """
    import dataclasses

    import jax

    from so_opt import problems, runner, sharding

    problem = problems.digits_mlp(hidden=(args.hidden,), dtype="float32")
    mesh = None
    if num_train is not None:
        train = jax.tree_util.tree_map(lambda a: a[:num_train], problem.train)
        problem = dataclasses.replace(problem, train=train)
    else:
        mesh = sharding.make_mesh()
        # Drop (and warn about) the examples that do not divide over the
        # devices, so that every device holds the same number.
        problem = sharding.shard_problem(problem, mesh, remainder="trim")
    settings = runner.RunSettings(regime="full", max_steps=args.steps)
    result = runner.run(problem, _optimizer(args.method), settings, mesh=mesh)
    return {
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "num_train": problem.num_train,
        "loss": result["history"]["loss"],
        "final": result["final"],
        "costs": result["costs"],
        "status": result["status"],
    }


def worker(args: argparse.Namespace) -> None:
    """One process of the distributed run."""
    if args.cpu:
        _use_cpu(args.local_devices)
    import jax

    if args.cpu:
        # Cross-process collectives on CPU go through gloo.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.auto:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    logger.info(
        "process %d of %d: %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    out = _train(args)
    if jax.process_index() == 0:
        logger.info("loss %s, status %s", out["loss"][-1], out["status"])
        if args.out:
            with open(args.out, "w") as handle:
                json.dump(out, handle)
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def local(args: argparse.Namespace) -> int:
    """Starts ``--local`` processes here and checks them against one process.

    Returns:
      The exit status: 0 when every loss agrees to ``RTOL``.
    """
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        common = [
            sys.executable,
            os.path.abspath(__file__),
            "--cpu",
            f"--coordinator=localhost:{port}",
            f"--num-processes={args.local}",
            f"--local-devices={args.local_devices}",
            f"--method={args.method}",
            f"--steps={args.steps}",
            f"--hidden={args.hidden}",
        ]
        children = [
            subprocess.Popen([*common, f"--process-id={i}", f"--out={out}"])
            for i in range(args.local)
        ]
        codes = [child.wait(timeout=args.timeout) for child in children]
        if any(codes):
            logger.error("worker exit codes %s", codes)
            return 1
        with open(out) as handle:
            distributed = json.load(handle)

    _use_cpu(1)
    import numpy as np

    alone = _train(args, num_train=distributed["num_train"])
    loss, reference = np.asarray(distributed["loss"]), np.asarray(alone["loss"])
    worst = float(np.max(np.abs(loss - reference) / np.abs(reference)))
    print(
        f"{args.method}: {distributed['processes']} processes x "
        f"{args.local_devices} devices against 1 process, {args.steps} steps on "
        f"{distributed['num_train']} examples: final loss {loss[-1]:.7g} / "
        f"{reference[-1]:.7g}, max relative difference {worst:.2e} "
        f"(tolerance {RTOL:g})"
    )
    return 0 if worst <= RTOL and distributed["costs"] == alone["costs"] else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    start = parser.add_argument_group("how the processes find each other")
    start.add_argument("--coordinator", help="HOST:PORT of process 0")
    start.add_argument("--num-processes", type=int, help="number of processes")
    start.add_argument("--process-id", type=int, help="this process, 0-based")
    start.add_argument(
        "--auto",
        action="store_true",
        help="let JAX read them from the cluster (SLURM, Open MPI, Cloud TPU)",
    )
    start.add_argument(
        "--local",
        type=int,
        metavar="P",
        help="start P processes on this machine and check them against one",
    )
    parser.add_argument("--method", choices=METHODS, default="lbfgs")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=8, help="MLP hidden width")
    parser.add_argument("--out", help="process 0 writes its result (JSON) here")
    parser.add_argument(
        "--cpu", action="store_true", help="run on CPU devices (gloo collectives)"
    )
    parser.add_argument(
        "--local-devices",
        type=int,
        default=1,
        help="with --cpu or --local: CPU devices per process",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="for --local")
    args = parser.parse_args(argv)
    explicit = (args.coordinator, args.num_processes, args.process_id)
    modes = [args.auto, args.local is not None, all(x is not None for x in explicit)]
    if sum(modes) != 1:
        parser.error(
            "give exactly one of `--auto`, `--local P`, or all three of "
            "`--coordinator`, `--num-processes` and `--process-id`"
        )
    if args.local is not None and args.local < 1:
        parser.error(f"`--local` must be >= 1, got {args.local}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = parse_args(argv)
    if args.local is not None:
        return local(args)
    worker(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
