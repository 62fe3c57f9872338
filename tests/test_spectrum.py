"""The spectrum study: Lanczos extremes against a dense reference, and --quick."""

import json
import math
import os

import jax
import numpy as np
import pytest

import so_opt
from experiments import spectrum
from so_opt import problems

NUM = 3


def _probe_and_dense(lanczos_iterations):
    problem = problems.digits_mlp(hidden=(2,), dtype="float64")
    params = problem.init_params(0)
    config = {
        "num_eigs": NUM,
        "lanczos_iterations": lanczos_iterations,
        "trace_samples": 64,
    }
    probe = spectrum.make_probe(problem, config)
    figures = jax.device_get(probe(params, problem.train, jax.random.key(1)))
    hessian = so_opt.hessian_matrix(problem.value_fn(), params)
    dense = np.linalg.eigvalsh(0.5 * (hessian + hessian.T))
    return figures, dense


def test_full_lanczos_extremes_equal_dense_eigenvalues():
    # k = 64*2 + 2 + 2*10 + 10 = 160 Lanczos steps span the whole space.
    figures, dense = _probe_and_dense(lanczos_iterations=160)
    expected = np.concatenate([dense[:NUM], dense[-NUM:]])
    scale = np.max(np.abs(dense))
    np.testing.assert_allclose(figures["eigenvalues"], expected, atol=1e-8 * scale)


def test_default_lanczos_values_lie_within_their_residuals():
    figures, dense = _probe_and_dense(lanczos_iterations=None)
    values, residuals = figures["eigenvalues"], figures["residuals"]
    distance = np.min(np.abs(values[:, None] - dense[None, :]), axis=1)
    assert np.all(distance <= residuals + 1e-10)
    # The largest eigenvalue converges first; the smallest one is negative.
    np.testing.assert_allclose(values[-1], dense[-1], rtol=1e-6)
    assert values[0] < 0 and dense[0] < 0
    # Interlacing: negative Ritz values never outnumber negative eigenvalues.
    record = spectrum.checkpoint_record(0, figures)
    assert 1 <= record["num_negative"] <= np.sum(dense < 0)
    assert record["lambda_max"] == values[-1]
    # Hutchinson: unbiased, within 4 standard errors of the exact trace.
    assert abs(figures["trace"] - dense.sum()) <= 4 * figures["trace_se"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    argv = ["--quick", "--out", str(out), "--run-id", "quick"]
    directory = spectrum.main([*argv, "--no-progress", "--log-level", "WARNING"])
    with open(os.path.join(directory, "results.json")) as handle:
        return directory, json.load(handle)


def test_quick_preset_writes_finite_figures(quick):
    directory, results = quick
    for name in ("results.json", "summary.md", "summary.csv"):
        assert os.path.getsize(os.path.join(directory, name)) > 0
    with open(os.path.join(directory, "spectrum.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert results["config"]["quick"] and results["seed"] == 0
    assert results["environment"]["versions"]["jax"]
    with open(os.path.join(directory, "summary.md")) as handle:
        # The report says where it ran (issue 7: other hardware).
        assert f"Ran on {results['environment']['device_kind']}" in handle.read()
    points = results["checkpoints"]
    every, steps = spectrum.QUICK["every"], spectrum.QUICK["steps"]
    assert [c["step"] for c in points] == list(range(0, steps + 1, every))
    for c in points:
        values = c["eigenvalues"]
        assert len(values) == 2 * results["config"]["num_eigs"]
        assert values == sorted(values)
        assert all(math.isfinite(v) for v in [*values, c["trace"], c["loss"]])
        assert c["lambda_min"] < 0 < c["lambda_max"]
        assert 0 <= c["num_negative"] <= len(values)
    assert points[-1]["loss"] < points[0]["loss"]
    with open(os.path.join(directory, "summary.csv")) as handle:
        assert len(handle.read().strip().splitlines()) == len(points) + 1


def test_optimizer_must_run_full_batch():
    with pytest.raises(SystemExit):
        spectrum.main(["--quick", "--optimizer", "armijo_sgd_stochastic"])
