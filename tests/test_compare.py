"""The compare study end to end on its --quick preset, and its command line."""

import json
import os

import pytest

from experiments import compare, registry

OPTIMIZERS = "sgd,adam,armijo_sgd,optax_lbfgs"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    argv = ["--quick", "--optimizers", OPTIMIZERS, "--out", str(out)]
    argv += ["--run-id", "quick", "--no-progress", "--log-level", "WARNING"]
    directory = compare.main(argv)
    with open(os.path.join(directory, "results.json")) as handle:
        return directory, argv, json.load(handle)


def test_quick_study_writes_every_file(study):
    directory, _, results = study
    for name in ("results.json", "summary.md", "summary.csv", "config.json"):
        assert os.path.getsize(os.path.join(directory, name)) > 0
    for regime in ("full", "minibatch"):
        for axis in ("steps", "time", "grad_equivalents"):
            path = os.path.join(directory, f"{regime}_loss_vs_{axis}.png")
            with open(path, "rb") as handle:
                assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    env = results["environment"]
    assert env["versions"]["jax"] and env["devices"] and "commit" in env["git"]
    assert results["config"]["seeds"] == [0]
    assert results["cost_ratios"]["value_per_grad"] > 0


def test_quick_study_losses_fall_and_counters_add_up(study):
    _, _, results = study
    ran = [r for r in results["runs"] if "skipped" not in r]
    assert {(r["regime"], r["optimizer"]) for r in ran} >= {
        ("full", "sgd"),
        ("full", "adam"),
        ("full", "armijo_sgd"),
        ("full", "optax_lbfgs"),
        ("minibatch", "sgd"),
        ("minibatch", "adam"),
    }
    for run in ran:
        h = run["history"]
        assert h["train_loss"][-1] < h["train_loss"][0], run["optimizer"]
        assert run["final"]["train_loss"] < h["train_loss"][0]
        assert run["params_finite"]
        for key in ("seconds", "grad_evals", "value_evals", "step"):
            assert all(b >= a for a, b in zip(h[key], h[key][1:], strict=False))
        assert run["costs"]["grad_evals"] == h["grad_evals"][-1] >= 1
    by_name = {(r["regime"], r["optimizer"]): r for r in ran}
    # Plain gradient descent: exactly one gradient per step, no values.
    sgd = by_name[("full", "sgd")]
    assert sgd["costs"] == {
        "value_evals": 0,
        "grad_evals": sgd["steps"],
        "hvp_evals": 0,
    }
    # Armijo: the driver's gradient, plus at least one trial value per step.
    armijo = by_name[("full", "armijo_sgd")]
    assert armijo["costs"]["grad_evals"] == armijo["steps"]
    assert armijo["costs"]["value_evals"] >= armijo["steps"]
    skipped = {r["optimizer"] for r in results["runs"] if "skipped" in r}
    batch_only = {
        n for n in OPTIMIZERS.split(",") if "minibatch" not in registry.get(n).regimes
    }
    assert skipped == batch_only


def test_summary_table_lists_every_run(study):
    directory, _, _ = study
    with open(os.path.join(directory, "summary.md")) as handle:
        text = handle.read()
    for name in OPTIMIZERS.split(","):
        assert f"| {name} |" in text
    assert "## full batch" in text and "## minibatch" in text


def test_rerun_with_same_id_resumes_without_rerunning(study, caplog):
    directory, argv, _ = study
    runs = os.path.join(directory, "runs")
    stamps = {f: os.path.getmtime(os.path.join(runs, f)) for f in os.listdir(runs)}
    compare.main(argv)
    assert stamps == {
        f: os.path.getmtime(os.path.join(runs, f)) for f in os.listdir(runs)
    }
    with pytest.raises(SystemExit):
        compare.main([*argv, "--steps", "7"])


def test_unknown_names_fail_listing_valid_ones(capsys):
    with pytest.raises(SystemExit):
        compare.main(["--optimizers", "adam,newtonn"])
    err = capsys.readouterr().err
    assert "newtonn" in err and "armijo_sgd" in err and "optax_lbfgs" in err
    with pytest.raises(SystemExit):
        compare.main(["--problem", "mnist"])
    assert "digits_mlp" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(["--hparam", "adam=0.1"])
    assert "OPTIMIZER.NAME=VALUE" in capsys.readouterr().err


def test_help_documents_every_option():
    text = compare.build_parser().format_help()
    for action in compare.build_parser()._actions:
        for option in action.option_strings:
            assert option in text
        assert action.help


def test_command_line_values_are_parsed_as_literals():
    assert compare.parse_value("64,64") == (64, 64)
    assert compare.parse_value("1e-3") == 1e-3
    assert compare.parse_value("tanh") == "tanh"
    assert compare.parse_hparams(["adam.learning_rate=0.1"]) == {
        "adam": {"learning_rate": 0.1}
    }
