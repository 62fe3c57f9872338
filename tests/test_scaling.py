"""The scaling study: slope fits, the crossover, the dense solve and --quick."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import scaling
from so_opt import problems


def test_fit_recovers_the_exponent_of_a_noisy_power_law():
    rng = np.random.default_rng(0)
    ks = np.geomspace(300, 10_000, 8)
    seconds = 2e-9 * ks**3 * np.exp(rng.normal(0.0, 0.05, ks.size))
    fit = scaling.fit_power_law(ks, seconds)
    assert fit["ci_low"] < 3.0 < fit["ci_high"]
    assert abs(fit["slope"] - 3.0) < 0.1 and fit["slope_se"] < 0.05
    exact = scaling.fit_power_law(ks, 5e-4 * ks)
    assert exact["slope"] == pytest.approx(1.0, abs=1e-12)
    assert exact["intercept"] == pytest.approx(math.log(5e-4), abs=1e-9)
    assert exact["slope_se"] < 1e-6  # round-off only


def test_fit_needs_two_distinct_sizes():
    with pytest.raises(ValueError, match="`ks`"):
        scaling.fit_power_law([100, 100], [1.0, 2.0])


def test_crossover_interpolates_in_log_log():
    ks = [100, 300, 3000, 10_000]
    slow = [1e-6 * k**2 for k in ks]  # crosses 1e-3 * k at k = 1000
    fast = [1e-3 * k for k in ks]
    assert scaling.crossover(ks, slow, fast) == pytest.approx(1000.0, rel=1e-9)
    assert scaling.crossover(ks, fast, slow) == 100
    assert scaling.crossover(ks, [1.0] * 4, [2.0] * 4) is None


def test_timed_solve_solves_the_system():
    config = {
        "seed": 0,
        "memory_budget_gb": 1.0,
        "dtype": "float64",
        "cg_steps": 3,
        "products": 2,
        "solver": "cholesky",
        "newton_max_k": 10_000,
    }
    parts = scaling.components(problems.digits_mlp(hidden=(1,)), config)
    assert set(parts) == set(scaling.COMPONENTS)
    for solver in ("cholesky", "eigh"):
        fn = scaling._solve_fn(solver)
        matrix, g = parts["newton_solve"][1]
        np.testing.assert_allclose(matrix @ fn(matrix, g), g, atol=1e-10)
    # Dense parts are skipped when three k x k matrices exceed the budget, or
    # above the k cap (k = 85 here).
    for change in ({"memory_budget_gb": 1e-4}, {"newton_max_k": 84}):
        small = scaling.components(problems.digits_mlp(hidden=(1,)), config | change)
        assert set(small) == set(scaling.COMPONENTS) - set(scaling.NEWTON)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    argv = ["--quick", "--out", str(out), "--run-id", "quick"]
    directory = scaling.main([*argv, "--no-progress", "--log-level", "WARNING"])
    with open(os.path.join(directory, "results.json")) as handle:
        return directory, json.load(handle)


def test_quick_preset_writes_finite_measurements(quick):
    directory, results = quick
    for name in ("results.json", "summary.md", "summary.csv", "measurements.csv"):
        assert os.path.getsize(os.path.join(directory, name)) > 0
    for name in ("scaling_time.png", "scaling_memory.png"):
        with open(os.path.join(directory, name), "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    config = results["config"]
    assert config["quick"] and results["seed"] == 0
    assert results["environment"]["versions"]["jax"]
    with open(os.path.join(directory, "summary.md")) as handle:
        # The report says where it ran (issue 7: other hardware).
        assert f"Ran on {results['environment']['device_kind']}" in handle.read()
    records = results["records"]
    ks = [75 * h + 10 for h in scaling.QUICK["hidden"]]
    dense_ks = [k for k in ks if k <= scaling.QUICK["newton_max_k"]]
    assert 2 <= len(dense_ks) < len(ks)  # the preset exercises the Newton cap
    expected = {
        (name, k)
        for name in scaling.COMPONENTS
        for k in (dense_ks if name in scaling.NEWTON else ks)
    }
    assert {(r["component"], r["k"]) for r in records} == expected
    for r in records:
        assert r["k"] == 75 * r["hidden"] + 10
        assert 1 <= len(r["seconds"]) <= config["repeats"]
        assert all(math.isfinite(s) and s > 0 for s in r["seconds"])
        assert r["median_seconds"] == np.median(r["seconds"])
        assert r["calls_per_sample"] >= 1 and r["memory"]["peak"] > 0
        # The dense Hessian and the solved matrix are in memory at once.
        if r["component"] in ("newton_hessian", "newton_solve"):
            assert r["memory"]["peak"] >= r["k"] ** 2 * jnp.dtype("float32").itemsize
        if r["component"] == "hessian_free_step":
            assert r["cg_steps"] == scaling.QUICK["cg_steps"]
    for name in scaling.COMPONENTS:
        fit = results["fits"][name]
        points = len(dense_ks) if name in scaling.NEWTON else len(ks)
        assert fit["num_points"] == points and math.isfinite(fit["slope"])
        # Two points fix the line exactly: no interval; three give one.
        assert math.isfinite(fit["ci_low"]) == (points > 2)
    crossing = results["crossover_k"]["measured"]
    assert crossing is None or min(dense_ks) <= crossing <= max(dense_ks)


def test_batched_samples_time_one_call(tmp_path):
    calls = []

    def fn(x):
        calls.append(x)
        return x

    assert scaling._time(fn, (jnp.ones(3),), calls=4) > 0
    assert len(calls) == 4


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--hidden", "8"], "`--hidden` needs at least two"),
        (["--hidden", "8,x"], "`--hidden` must be comma-separated integers"),
        (["--repeats", "0"], "`--repeats` must be >= 1, got 0"),
        (["--max-seconds", "0"], "`--max-seconds` must be > 0, got 0.0"),
    ],
)
def test_bad_options_name_the_option(argv, match):
    args = scaling.build_parser().parse_args(argv)
    with pytest.raises(ValueError, match=match):
        scaling.make_config(args)
