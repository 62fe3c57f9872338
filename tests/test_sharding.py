"""Data-parallel runs (issue 8): 4 CPU devices give the answers of 1 device.

The device count is fixed when JAX starts, so the 4-device checks run
``tests/_sharding_check.py`` once in a subprocess with
``--xla_force_host_platform_device_count=4`` and assert on its JSON. The rest
runs here, on the single default device.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from so_opt import problems, runner, sharding

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("armijo_sgd", "lbfgs", "hessian_free", "newton")
# Float32 sums split over 4 devices change the reduction order: a few ulps
# per step, which ten steps of a Newton solve can grow to about 4e-6.
RTOL = 1e-5


@pytest.fixture(scope="module")
def four_devices() -> dict:
    flags = [
        os.environ.get("XLA_FLAGS", ""),
        "--xla_force_host_platform_device_count=4",
        # Cuts compile time (most of this check) on a loaded 2-core machine;
        # both sides of every comparison are compiled the same way.
        "--xla_backend_optimization_level=0",
    ]
    env = {
        **os.environ,
        "XLA_FLAGS": " ".join(f for f in flags if f),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
        ),
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_sharding_check.py"), *METHODS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_training_batch_is_split_over_the_data_axis(four_devices):
    inputs, targets = four_devices["train"]
    assert inputs["spec"] == targets["spec"] == ["data"]
    assert inputs["devices"] == targets["devices"] == 4
    assert not inputs["replicated"]
    # 1256 = 4 x 314 examples: each device holds a quarter.
    assert inputs["shard_shapes"] == [[314, 64]]
    assert targets["shard_shapes"] == [[314]]


def test_evaluation_sets_keep_every_example(four_devices):
    # 180 validation examples divide over 4 devices; 359 test examples do not,
    # so the test set is replicated whole rather than trimmed.
    assert [leaf["shard_shapes"] for leaf in four_devices["valid"]] == [
        [[45, 64]],
        [[45]],
    ]
    for leaf in four_devices["test"]:
        assert leaf["replicated"]
        assert leaf["shard_shapes"][0][0] == 359


def test_trim_drops_the_remainder_and_says_so(four_devices):
    assert four_devices["num_train"] == [1258, 1256]
    (message,) = four_devices["warnings"]
    assert "dropping the last 2 of 1258 training examples" in message


def test_replicate_rule_keeps_every_training_example(four_devices):
    for leaf in four_devices["replicated_train"]:
        assert leaf["replicated"] and leaf["devices"] == 4
        assert leaf["shard_shapes"][0][0] == 1258


def test_compiled_step_splits_the_batch_and_reduces_over_devices(four_devices):
    assert four_devices["step_batch_specs"] == [["data"], ["data"]]
    # At least one all-reduce for the gradient and one inside the line-search
    # loop, whose trials are evaluated on the split batch too.
    assert four_devices["step_all_reduces"] >= 2
    for leaf in four_devices["step_params"]:
        assert leaf["replicated"] and leaf["devices"] == 4


def test_minibatch_run_on_an_indivisible_training_set(four_devices):
    # The same batches in the same order: the histories agree, including the
    # full training loss evaluated on the replicated set.
    one, four = four_devices["minibatch"]["one"], four_devices["minibatch"]["four"]
    assert one["step"] == four["step"] == [5, 10]
    assert one["value_evals"] == four["value_evals"]
    for key in ("loss", "train_loss"):
        np.testing.assert_allclose(four[key], one[key], rtol=RTOL, err_msg=key)
    assert one["train_loss"][-1] < one["train_loss"][0]


def test_indivisible_sizes_raise_clear_errors(four_devices):
    errors = four_devices["errors"]
    assert errors["batch"] == (
        "`batch_size` must be a multiple of the 4 devices on the mesh's `data` "
        "axis, got 30 (a batch leaf of shape (30, 64))."
    )
    assert errors["run"] == (
        "`batch_size` must be a multiple of the 4 devices on the mesh's `data` "
        "axis, got 30."
    )
    assert errors["problem"].startswith(
        "`problem.train` must be a multiple of the 4 devices on the mesh's `data` "
        "axis, got 1258 examples; pass `remainder='trim'` to drop the last 2"
    )


@pytest.mark.parametrize("name", METHODS)
def test_four_devices_match_one_device(four_devices, name):
    one, four = four_devices["runs"][name]["one"], four_devices["runs"][name]["four"]
    assert one["steps"] == four["steps"] == 10
    assert one["status"] == four["status"] == "max_steps"
    # The same line-search trials, CG steps and products on both sides.
    assert one["costs"] == four["costs"]
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=RTOL)
    for key, value in one["final"].items():
        np.testing.assert_allclose(four["final"][key], value, rtol=RTOL, err_msg=key)
    # Ten steps really trained: the loss fell.
    assert one["loss"][-1] < 0.8 * one["loss"][0]


# --- on the single default device ---------------------------------------------


def test_optimizers_hold_no_sharding_code():
    # Data parallelism lives in so_opt.sharding and the runner only: the
    # optimizers' code paths are the same sharded or not.
    words = (
        "jax.sharding",
        "NamedSharding",
        "PartitionSpec",
        "Mesh(",
        "shard_map",
        "with_sharding_constraint",
    )
    paths = sorted((ROOT / "so_opt" / "_src").rglob("*.py"))
    assert len(paths) > 10
    for path in paths:
        text = path.read_text()
        for word in words:
            assert word not in text, f"{word} in {path.relative_to(ROOT)}"


def test_make_mesh_rejects_device_counts_out_of_range():
    count = jax.device_count()
    for bad in (0, count + 1):
        with pytest.raises(ValueError, match=rf"`num_devices` must be in \[1, {count}"):
            sharding.make_mesh(bad)
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        sharding.make_mesh(count + 1, devices=jax.devices("cpu"))
    assert dict(sharding.make_mesh().shape) == {"data": count}


def test_bad_arguments_are_named():
    mesh = sharding.make_mesh(1)
    problem = problems.rosenbrock()
    with pytest.raises(ValueError, match="`remainder` must be one of"):
        sharding.shard_problem(problem, mesh, remainder="pad")
    with pytest.raises(ValueError, match="`mesh` must have an axis named 'batch'"):
        sharding.shard_batch(jnp.ones(4), mesh, axis_name="batch")
    with pytest.raises(ValueError, match="got a scalar"):
        sharding.shard_batch(jnp.ones(()), mesh)
    # Test functions have no data: nothing to place.
    assert sharding.shard_problem(problem, mesh) is problem


def test_run_on_a_one_device_mesh_is_the_plain_run():
    problem = problems.breast_cancer_logreg(dtype="float32")
    settings = runner.RunSettings(regime="minibatch", max_steps=4, batch_size=64)
    plain = runner.run(problem, optax.sgd(0.1), settings)
    meshed = runner.run(problem, optax.sgd(0.1), settings, mesh=sharding.make_mesh(1))
    assert meshed["history"]["loss"] == plain["history"]["loss"]
    assert meshed["final"] == plain["final"]


@pytest.mark.slow
def test_multihost_example_matches_one_process():
    # Two processes joined by jax.distributed on this machine (CPU, gloo):
    # the documented multi-host start, checked against a single process.
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "multihost_example.py"),
            "--local=2",
            "--method=hessian_free",
            "--steps=4",
            "--timeout=300",
        ],
        cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert "hessian_free: 2 processes x 1 devices against 1 process" in done.stdout
