"""Runs so_opt on 1 and on 4 CPU devices and prints the results as JSON.

``tests/test_sharding.py`` starts this script in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the device count is
fixed when JAX starts, so it cannot change inside the test process) and
asserts on what it prints.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings

import jax

jax.config.update("jax_enable_x64", True)  # as the test suite runs

import numpy as np  # noqa: E402
import optax  # noqa: E402

import so_opt  # noqa: E402
from so_opt import problems, runner, sharding  # noqa: E402

STEPS = 10
METHODS = {
    "armijo_sgd": lambda: so_opt.armijo_sgd(),
    "lbfgs": lambda: so_opt.lbfgs(memory_size=5),
    "hessian_free": lambda: so_opt.hessian_free("gauss_newton", max_cg_steps=20),
    "newton": lambda: so_opt.newton(),
}


def _describe(x: jax.Array) -> dict:
    spec = getattr(x.sharding, "spec", None)
    return {
        "spec": None if spec is None else list(spec),
        "devices": len(x.sharding.device_set),
        "shard_shapes": sorted({tuple(s.data.shape) for s in x.addressable_shards}),
        "replicated": bool(x.sharding.is_fully_replicated),
    }


def _error(fn) -> str | None:
    try:
        fn()
    except ValueError as error:
        return str(error)
    return None


def main(names: list[str]) -> None:
    assert jax.device_count() == 4, jax.devices()
    mesh = sharding.make_mesh(4)
    problem = problems.digits_mlp(hidden=(2,), dtype="float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sharded = sharding.shard_problem(problem, mesh, remainder="trim")
    # The unsharded reference trains on the same (trimmed) examples.
    size = sharded.num_train
    trimmed = dataclasses.replace(
        problem, train=jax.tree_util.tree_map(lambda a: a[:size], problem.train)
    )
    out: dict = {
        "num_train": [problem.num_train, sharded.num_train],
        "warnings": [str(w.message) for w in caught],
        "train": [_describe(x) for x in sharded.train],
        "test": [_describe(x) for x in sharded.test],
        "valid": [_describe(x) for x in sharded.valid],
        "replicated_train": [
            _describe(x)
            for x in sharding.shard_problem(problem, mesh, remainder="replicate").train
        ],
        "errors": {
            "problem": _error(lambda: sharding.shard_problem(problem, mesh)),
            "batch": _error(
                lambda: sharding.shard_batch(
                    jax.tree_util.tree_map(lambda a: a[:30], problem.train), mesh
                )
            ),
            "run": _error(
                lambda: runner.run(
                    sharded,
                    optax.sgd(0.1),
                    runner.RunSettings(regime="minibatch", batch_size=30),
                    mesh=mesh,
                )
            ),
        },
        "runs": {},
    }

    # One step by hand: the compiled step takes the batch split and the params
    # whole, XLA put the reductions in, and the params stay whole after it.
    step = runner.make_step(sharded, so_opt.armijo_sgd())
    params = sharding.replicate(sharded.init_params(0), mesh)
    state = sharding.replicate(so_opt.armijo_sgd().init(params), mesh)
    compiled = step.lower(params, state, sharded.train).compile()
    batch_in = jax.tree_util.tree_leaves(compiled.input_shardings[0][2])
    out["step_batch_specs"] = [list(s.spec) for s in batch_in]
    out["step_all_reduces"] = compiled.as_text().count("all-reduce(")
    params, state, _, _ = compiled(params, state, sharded.train)
    out["step_params"] = [_describe(x) for x in jax.tree_util.tree_leaves(params)]

    # Mini-batches on the untrimmed problem: 1258 examples do not divide over
    # 4 devices, so the whole set is replicated and only the batches split.
    minibatch = runner.RunSettings(
        regime="minibatch", max_steps=STEPS, batch_size=64, eval_every=5
    )
    out["minibatch"] = {
        key: runner.run(problem, so_opt.armijo_sgd(), minibatch, mesh=m)["history"]
        for key, m in (("one", None), ("four", mesh))
    }

    settings = runner.RunSettings(regime="full", max_steps=STEPS)
    for name in names:
        record = {}
        for key, mesh_or_none, data in (
            ("one", None, trimmed),
            ("four", mesh, sharded),
        ):
            result = runner.run(data, METHODS[name](), settings, mesh=mesh_or_none)
            record[key] = {
                "loss": result["history"]["loss"],
                "final": result["final"],
                "costs": result["costs"],
                "status": result["status"],
                "steps": result["steps"],
            }
        out["runs"][name] = record
    print(json.dumps(out, default=lambda x: np.asarray(x).tolist()))


if __name__ == "__main__":
    main(sys.argv[1:] or list(METHODS))
