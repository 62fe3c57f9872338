"""The compare study end to end on its --quick preset, tuning, resume, determinism.

The quick study here runs with no wall-time cap (``--seconds 0``), so that two
runs of the same config must agree in every number that is not a timing.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import compare, registry, report
from so_opt import problems, runner

OPTIMIZERS = "sgd,adam,armijo_sgd"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tuning on: sgd tunes its learning rate; adam's is fixed, so it is not tuned.
ARGV = ["--quick", "--seconds", "0", "--tune", "--optimizers", OPTIMIZERS]
ARGV += ["--hparam", "adam.learning_rate=0.01", "--steps", "15"]
ARGV += ["--no-progress", "--log-level", "WARNING"]
TIMINGS = {"seconds", "total_seconds"}


def _load(directory):
    with open(os.path.join(directory, "results.json")) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    argv = [*ARGV, "--out", str(out), "--run-id", "quick"]
    directory = compare.main(argv)
    return directory, argv, _load(directory)


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
    assert results["config"]["seeds"] == [0] and results["mesh"] is None
    assert results["cost_ratios"]["value_per_grad"] > 0
    # Automatic targets: 1/10, 1/100, 1/1000 of the way from the loss at the
    # initial params to the lowest train loss any run of the regime recorded.
    problem = problems.get("digits_mlp")
    start = float(problem.loss(problem.init_params(0), problem.train))
    assert results["initial_train_loss"] == pytest.approx(start, rel=1e-6)
    assert results["targets_rule"] == report.TARGET_RULE
    for regime in ("full", "minibatch"):
        best = min(
            loss
            for r in results["runs"]
            if r["regime"] == regime and "skipped" not in r
            for loss in r["history"]["train_loss"]
        )
        targets = results["targets"][regime]
        assert len(targets) == 3
        for target, f in zip(targets, (0.1, 0.01, 0.001), strict=True):
            exact = best + (start - best) * f
            assert abs(target - exact) < 0.1 * (start - best) * f
        # The method that got lowest reaches every target.
        assert best <= targets[-1] < targets[1] < targets[0] < start
    # The saved JSON files get the mode a plain open() gives (umask applied).
    umask = os.umask(0)
    os.umask(umask)
    for name in ("results.json", "config.json", "cost_ratios.json", "summary.md"):
        mode = os.stat(os.path.join(directory, name)).st_mode & 0o777
        assert mode == 0o666 & ~umask, name


def test_quick_study_losses_fall_and_counters_add_up(study):
    _, _, results = study
    ran = [r for r in results["runs"] if "skipped" not in r]
    assert {(r["regime"], r["optimizer"]) for r in ran} == {
        ("full", "sgd"),
        ("full", "adam"),
        ("full", "armijo_sgd"),
        ("minibatch", "sgd"),
        ("minibatch", "adam"),
    }
    for run in ran:
        h = run["history"]
        assert h["train_loss"][-1] < h["train_loss"][0], run["optimizer"]
        assert run["final"]["train_loss"] < h["train_loss"][0]
        assert run["params_finite"] and run["steps"] == 15
        for key in ("seconds", "grad_evals", "value_evals", "step"):
            assert all(b >= a for a, b in zip(h[key], h[key][1:], strict=False))
        assert run["costs"]["grad_evals"] == h["grad_evals"][-1] >= 1
    by_name = {(r["regime"], r["optimizer"]): r for r in ran}
    # Plain gradient descent: exactly one gradient per step, no values.
    sgd = by_name[("full", "sgd")]
    assert sgd["costs"] == {"value_evals": 0, "grad_evals": 15, "hvp_evals": 0}
    # Armijo: the driver's gradient, plus at least one trial value per step.
    armijo = by_name[("full", "armijo_sgd")]
    assert armijo["costs"]["grad_evals"] == armijo["steps"]
    assert armijo["costs"]["value_evals"] >= armijo["steps"]
    skipped = {r["optimizer"] for r in results["runs"] if "skipped" in r}
    batch_only = {
        n for n in OPTIMIZERS.split(",") if "minibatch" not in registry.get(n).regimes
    }
    assert skipped == batch_only


def test_tuning_picks_the_lowest_validation_loss_and_is_recorded(study):
    directory, _, results = study
    tuning = {(t["regime"], t["optimizer"]): t for t in results["tuning"]}
    # adam's learning rate is fixed in the config; the others have no grid.
    assert set(tuning) == {("full", "sgd"), ("minibatch", "sgd")}
    runs = {(r["regime"], r["optimizer"]): r for r in results["runs"]}
    for key, t in tuning.items():
        grid = registry.get("sgd").grid["learning_rate"]
        assert [row["point"]["learning_rate"] for row in t["trials"]] == grid
        losses = [row["valid_loss"] for row in t["trials"]]
        assert t["selected"] == t["trials"][int(np.argmin(losses))]["point"]
        run = runs[key]
        assert run["hparams"]["learning_rate"] == t["selected"]["learning_rate"]
        assert run["final"]["valid_loss"] == min(losses)
    assert runs[("full", "adam")]["hparams"]["learning_rate"] == 0.01
    with open(os.path.join(directory, "summary.md")) as handle:
        text = handle.read()
    assert "Tuning (seed 0" in text and "(tuned)" in text


def test_summary_table_lists_every_run(study):
    directory, _, _ = study
    with open(os.path.join(directory, "summary.md")) as handle:
        text = handle.read()
    for name in OPTIMIZERS.split(","):
        assert f"| {name} |" in text
    assert "## full batch" in text and "## minibatch" in text
    assert "s to " in text and "grad-equiv to " in text


def test_rerun_with_same_id_resumes_without_rerunning(study):
    directory, argv, _ = study
    runs = os.path.join(directory, "runs")
    stamps = {f: os.path.getmtime(os.path.join(runs, f)) for f in os.listdir(runs)}
    compare.main(argv)
    assert stamps == {
        f: os.path.getmtime(os.path.join(runs, f)) for f in os.listdir(runs)
    }
    with pytest.raises(SystemExit):
        compare.main([*argv, "--steps", "7"])


def _run_files(directory):
    found = {}
    for root, _, files in os.walk(os.path.join(directory, "runs")):
        for name in files:
            path = os.path.join(root, name)
            # While the study runs, a temporary file listed here can be
            # renamed into place before it is stat'ed (the atomic write).
            try:
                found[path] = os.path.getmtime(path)
            except FileNotFoundError:
                continue
    return found


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The same study, SIGKILLed in a subprocess after its first run, then resumed."""
    out = tmp_path_factory.mktemp("killed")
    argv = [*ARGV, "--out", str(out), "--run-id", "killed"]
    directory = os.path.join(out, "killed")
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.compare", *argv],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            done = [p for p in _run_files(directory) if p.endswith(".json")]
            if any(not os.path.basename(p).startswith(".tmp-") for p in done):
                break
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_with = _run_files(directory)
    complete = os.path.exists(os.path.join(directory, "results.json"))
    # Every file the killed study left must be whole (or a temporary one).
    for path in killed_with:
        if not os.path.basename(path).startswith(".tmp-"):
            with open(path) as handle:
                json.load(handle)
    kept = {p: t for p, t in killed_with.items() if ".tmp-" not in p}
    compare.main(argv)
    return directory, kept, complete


def test_kill_and_resume_does_not_redo_finished_runs(resumed, study):
    directory, kept, complete = resumed
    assert kept and not complete, "the kill must land in the middle of the study"
    after = _run_files(directory)
    for path, mtime in kept.items():
        assert after[path] == mtime, path
    assert not [p for p in after if ".tmp-" in p]
    assert set(map(os.path.basename, after)) == set(
        map(os.path.basename, _run_files(study[0]))
    )


def _strip_timings(obj):
    if isinstance(obj, dict):
        return {k: _strip_timings(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [_strip_timings(v) for v in obj]
    return obj


def test_same_config_and_seed_give_identical_numbers(resumed, study):
    # The killed-and-resumed study against the uninterrupted one: same config.
    first, second = study[2], _load(resumed[0])
    assert first["config"] == second["config"]
    assert _strip_timings(first["runs"]) == _strip_timings(second["runs"])
    assert first["tuning"] == second["tuning"]


def test_work_budget_stops_at_the_first_step_past_it():
    problem = problems.get("digits_mlp", hidden=(8,))
    ratios = {"value_per_grad": 0.5, "hvp_per_grad": 2.0}
    settings = runner.RunSettings(max_steps=100, max_grad_equivalents=7.0)
    sgd = registry.get("sgd").build({}, {"max_steps": 100})
    record = runner.run(problem, sgd, settings, cost_ratios=ratios)
    assert (record["status"], record["steps"]) == ("max_grad_equivalents", 7)
    armijo = registry.get("armijo_sgd").build({}, {})
    record = runner.run(problem, armijo, settings, cost_ratios=ratios)
    h = record["history"]
    work = [
        g + 0.5 * v + 2.0 * n
        for g, v, n in zip(
            h["grad_evals"], h["value_evals"], h["hvp_evals"], strict=True
        )
    ]
    assert record["status"] == "max_grad_equivalents"
    assert work[-1] >= 7.0 > work[-2]
    with pytest.raises(ValueError, match="cost_ratios"):
        runner.run(problem, sgd, settings)


def _fake_run(regime, name, seed, losses, final_test):
    n = len(losses)
    return {
        "regime": regime,
        "optimizer": name,
        "seed": seed,
        "hparams": {},
        "status": "max_steps",
        "steps": n,
        "seconds": 0.1 * n,
        "history": {
            "step": list(range(1, n + 1)),
            "seconds": [0.1 * i for i in range(1, n + 1)],
            "train_loss": losses,
            "value_evals": [2 * i for i in range(1, n + 1)],
            "grad_evals": list(range(1, n + 1)),
            "hvp_evals": [0] * n,
        },
        "final": {"train_loss": losses[-1], **final_test},
        "costs": {"value_evals": 2 * n, "grad_evals": n, "hvp_evals": 0},
    }


def test_report_means_spreads_and_ranks_against_numpy():
    runs = [
        _fake_run("full", "a", 0, [1.0, 0.5, 0.2], {"test_accuracy": 0.9}),
        _fake_run("full", "a", 1, [1.0, 0.6, 0.3], {"test_accuracy": 0.8}),
        _fake_run("full", "b", 0, [1.0, 0.3, 0.1], {"test_accuracy": 0.95}),
        _fake_run("full", "b", 1, [1.0, 0.9, 0.7], {"test_accuracy": 0.97}),
    ]
    results = {
        "config": {"regimes": ["full"], "targets": [0.5, 0.25]},
        "cost_ratios": {"value_per_grad": 0.25, "hvp_per_grad": 2.0},
        "runs": runs,
    }
    rows = {r["optimizer"]: r for r in report.summarize(results)}
    a, b = rows["a"], rows["b"]
    assert a["test_accuracy_mean"] == pytest.approx(np.mean([0.9, 0.8]))
    assert report._mean_sd(a["test_accuracy"]) == (
        f"{np.mean([0.9, 0.8]):.4g} ± {np.std([0.9, 0.8], ddof=1):.2g}"
    )
    assert (b["test_accuracy_mean_rank"], a["test_accuracy_mean_rank"]) == (1, 2)
    # Target 0.5: a at steps 2 and 3 of its seeds; b at step 2 of seed 0 only.
    assert (a["reached_0"], b["reached_0"]) == (2, 1)
    assert a["seconds_0"] == pytest.approx(np.median([0.2, 0.3]))
    # Work at step i: i gradients + 2i values * 0.25 = 1.5 i.
    assert a["work_0"] == pytest.approx(np.median([3.0, 4.5]))
    assert a["ranked_seconds_0_rank"] == 1 and "ranked_seconds_0_rank" not in b
    # Target 0.25: each reaches it on one seed only, so no one is ranked.
    assert (a["reached_1"], b["reached_1"]) == (1, 1)
    assert "ranked_work_1_rank" not in a and "ranked_work_1_rank" not in b
    # Automatic: from the initial loss 1.0 to the lowest one recorded, 0.1.
    automatic = dict(results, config={"regimes": ["full"], "targets": None})
    assert report.targets_for(automatic, "full") == [0.19, 0.109, 0.1009]
    automatic["initial_train_loss"] = 2.0
    assert report.targets_for(automatic, "full") == [0.29, 0.119, 0.1019]
    # Targets recorded under this rule are reused; under an older one, redone.
    stale = dict(automatic, targets={"full": [0.2, 0.02, 0.002]})
    assert report.targets_for(stale, "full") == [0.29, 0.119, 0.1019]
    stale["targets_rule"] = report.TARGET_RULE
    assert report.targets_for(stale, "full") == [0.2, 0.02, 0.002]
    # Given targets win over recorded ones.
    assert report.targets_for(dict(stale, config=results["config"]), "full") == [
        0.5,
        0.25,
    ]
    ties = [{"x": 0.5}, {"x": 0.2}, {"x": 0.5}, {}]
    report._rank(ties, "x")
    assert [t.get("x_rank") for t in ties] == [2, 1, 2, None]


def test_report_rebuild_records_targets_of_older_results(study, tmp_path, capsys):
    directory, _, results = study
    old = dict(results, targets={"full": [9.0], "minibatch": [9.0]})
    del old["targets_rule"]
    (tmp_path / "results.json").write_text(json.dumps(old))
    report.main([str(tmp_path)])
    rebuilt = _load(str(tmp_path))
    assert rebuilt["targets"] == results["targets"]
    assert rebuilt["targets_rule"] == report.TARGET_RULE
    summary = (tmp_path / "summary.md").read_text()
    assert summary == capsys.readouterr().out.rstrip("\n") + "\n"
    assert f"s to {results['targets']['full'][-1]:g} |" in summary
    # Up to date: left as it is.
    assert not report.record_targets(rebuilt)


def test_automatic_targets_on_a_loss_with_a_positive_optimum():
    # breast_cancer_logreg-like: 0.693 at the start, optimum about 0.1008;
    # initial / 10 (0.0693) would be out of reach for every method.
    targets = report.automatic_targets(0.6931, 0.1008)
    gap = 0.6931 - 0.1008
    for target, f in zip(targets, (0.1, 0.01, 0.001), strict=True):
        assert target == pytest.approx(0.1008 + gap * f, abs=0.1 * gap * f)
    assert targets == [0.16, 0.1067, 0.10139]
    # A loss that reaches exactly 0: the initial loss / 10, / 100, / 1000.
    assert report.automatic_targets(2.4, 0.0) == [0.24, 0.024, 0.0024]
    # Nothing went below the start, or nothing finite: no targets.
    assert report.automatic_targets(1.0, 1.0) == []
    assert report.automatic_targets(1.0, None) == []


def test_plot_keeps_a_log_axis_when_a_loss_is_exactly_zero(tmp_path):
    import matplotlib.image

    runs = [
        _fake_run("full", f"m{i}", 0, [1.0, 10.0**-i, 0.0], {}) for i in range(1, 13)
    ]
    runs.append(_fake_run("minibatch", "m1", 0, [1.0, 0.5], {}))
    results = {
        "config": {
            "problem": "p",
            "regimes": ["full", "minibatch"],
            "targets": None,
            "batch_size": 32,
        },
        "cost_ratios": {"value_per_grad": 0.25, "hvp_per_grad": 2.0},
        "runs": runs,
    }
    # Smallest positive loss 1e-12: zeros are drawn a decade below, at 1e-13.
    assert report.log_floor([1.0, 1e-12, 0.0]) == pytest.approx(1e-13)
    assert report.log_floor([1.0, 0.5]) is None
    assert report.log_floor([0.0]) == 1e-8
    assert report._title(results, "full") == "p: full batch"
    assert report._title(results, "minibatch") == "p: mini-batch (batch size 32)"
    # 12 methods: the colours repeat after 10, with another line style.
    styles = report._styles(12)
    assert len(set(styles)) == 12 and len({c for c, _ in styles[:10]}) == 10
    assert styles[10] == (styles[0][0], "--")
    import matplotlib.pyplot as plt

    seen = {}
    original = plt.Figure.savefig

    def spy(fig, path, **kwargs):
        ax = fig.axes[0]
        lowest = min(min(line.get_ydata()) for line in ax.get_lines())
        seen[os.path.basename(path)] = (ax.get_yscale(), ax.get_ylabel(), lowest)
        return original(fig, path, **kwargs)

    plt.Figure.savefig = spy
    try:
        paths = report.plot(results, str(tmp_path))
    finally:
        plt.Figure.savefig = original
    assert len(paths) == 6
    scale, label, lowest = seen["full_loss_vs_steps.png"]
    assert scale == "log" and "<= 0 drawn at 1e-13" in label
    assert lowest == pytest.approx(1e-13)
    assert seen["minibatch_loss_vs_time.png"][:2] == ("log", "train loss (log)")
    assert matplotlib.image.imread(paths[0]).shape[2] in (3, 4)


# Slow: a second process with two forced CPU devices and a second study.
@pytest.mark.slow
def test_devices_option_shards_over_a_mesh_and_matches_one_device(tmp_path):
    argv = ["--quick", "--seconds", "0", "--optimizers", "sgd,armijo_sgd"]
    argv += ["--regime", "full", "--no-progress", "--log-level", "WARNING"]
    argv += ["--out", str(tmp_path)]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    subprocess.run(
        [sys.executable, "-m", "experiments.compare", *argv, "--devices", "2"]
        + ["--run-id", "two"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    two = _load(os.path.join(tmp_path, "two"))
    assert len(two["mesh"]["devices"]) == 2 and two["config"]["devices"] == 2
    with open(os.path.join(tmp_path, "two", "summary.md")) as handle:
        assert "data-parallel over 2 device(s)" in handle.read()
    one = _load(compare.main([*argv, "--run-id", "one"]))
    for a, b in zip(one["runs"], two["runs"], strict=True):
        # Sharding changes only the order of the float32 sums.
        np.testing.assert_allclose(
            a["history"]["train_loss"], b["history"]["train_loss"], rtol=1e-4
        )
        assert a["costs"] == b["costs"]


def test_tuning_table_flags_a_choice_on_the_grid_edge():
    grid = {"learning_rate": [0.03, 0.1, 0.3, 1.0]}
    assert report._at_grid_edge({"learning_rate": 1.0}, grid)
    assert report._at_grid_edge({"learning_rate": 0.03}, grid)
    assert not report._at_grid_edge({"learning_rate": 0.3}, grid)
    assert not report._at_grid_edge({"variant": "long"}, {"variant": ["long", "x"]})


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
    parser = compare.build_parser()
    text = parser.format_help()
    for action in parser._actions:
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
