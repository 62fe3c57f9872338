"""Study configs: the shipped TOML files, layering, and errors that name the key."""

import os

import pytest

from experiments import compare, registry
from experiments import config as configs


def _config_from(tmp_path, text, *argv):
    path = tmp_path / "study.toml"
    path.write_text(text)
    args = compare.build_parser().parse_args(["--config", str(path), *argv])
    return compare.make_config(args)


def test_shipped_default_config_is_the_schema_default_but_one_exclusion():
    default = configs.build(configs.load_toml(compare.DEFAULT_CONFIG))
    assert default["optimizers"] == [
        n for n in registry.names() if n != "newton_saddle_free"
    ]
    assert default["regimes"] == ["full", "minibatch"]
    assert default["seeds"] == [0] and default["tune"] is False
    assert default["grad_equivalents"] is None  # 0 in TOML: no cap
    assert default["steps"] == 200 and default["seconds"] == 5.0


def test_shipped_full_config_tunes_every_method_on_three_seeds():
    full = configs.build(
        configs.load_toml(os.path.join(configs.CONFIG_DIR, "full.toml"))
    )
    assert full["optimizers"] == registry.names()
    assert full["regimes"] == ["full", "minibatch"]
    assert full["seeds"] == [0, 1, 2] and full["tune"] is True
    assert full["grad_equivalents"] == 3000.0 and full["seconds"] == 10.0
    configs.check_runnable(full)


def test_layers_defaults_file_quick_then_options(tmp_path):
    text = (
        "steps = 50\nseconds = 8\nseeds = [3, 4]\n[hparams.adam]\nlearning_rate = 0.1\n"
    )
    config = _config_from(tmp_path, text)
    assert (config["steps"], config["seconds"], config["seeds"]) == (50, 8.0, [3, 4])
    assert config["batch_size"] == configs.SCHEMA["batch_size"].default
    quick = _config_from(tmp_path, text, "--quick")
    assert (quick["steps"], quick["seconds"]) == (20, 3.0)
    assert quick["seeds"] == [3, 4]
    cli = _config_from(tmp_path, text, "--quick", "--steps", "7", "--seeds", "9")
    assert (cli["steps"], cli["seconds"], cli["seeds"]) == (7, 3.0, [9])
    assert cli["hparams"] == {"adam": {"learning_rate": 0.1}}


def test_command_line_tables_add_to_the_file(tmp_path):
    text = "[hparams.sgd]\nlearning_rate = 0.1\n[problem_args]\nhidden = [8]\n"
    config = _config_from(
        tmp_path,
        text,
        "--hparam",
        "adam.learning_rate=0.02",
        "--problem-arg",
        "activation=relu",
    )
    assert config["hparams"] == {
        "sgd": {"learning_rate": 0.1},
        "adam": {"learning_rate": 0.02},
    }
    assert config["problem_args"] == {"hidden": [8], "activation": "relu"}


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("stepz = 3\n", "'stepz'"),
        ('optimizers = ["adam", "newtonn"]\n', "'optimizers'"),
        ('exclude = ["sgdd"]\n', "'exclude'"),
        ("[hparams.adamm]\nlearning_rate = 0.1\n", "'hparams'"),
        ("[hparams.adam]\nlr = 0.1\n", "'hparams.adam'"),
        ('[hparams.adam]\nlearning_rate = "fast"\n', "'hparams.adam.learning_rate'"),
        ('steps = "many"\n', "'steps'"),
        ("steps = 0\n", "'steps'"),
        ("seeds = 1\n", "'seeds'"),
        ("seeds = [0.5]\n", "'seeds'"),
        ('regimes = ["full", "online"]\n', "'regimes'"),
        ("tune = 1\n", "'tune'"),
        ("seconds = -1\n", "'seconds'"),
        ('problem = "mnist"\n', "'problem'"),
        ("targets = []\n", "'targets'"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, key):
    with pytest.raises(configs.ConfigError, match=key):
        _config_from(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[problem_args]\nhiden = [8]\n", "'problem_args'"),
        ('problem = "rosenbrock"\ntune = true\n', "'tune'"),
        ("devices = 64\n", "'devices'"),
        ("batch_size = 100000\n", "'batch_size'"),
        ("[hparams.armijo_sgd]\nshrink = 1.5\n", "'hparams.armijo_sgd'"),
        # An optimizer that is not selected still has its values checked.
        (
            'optimizers = ["lbfgs"]\n[hparams.armijo_sgd]\nc1 = 1.5\n',
            "'hparams.armijo_sgd': `c1`",
        ),
    ],
)
def test_config_that_cannot_run_names_the_key(tmp_path, text, key):
    config = _config_from(tmp_path, text)
    with pytest.raises(configs.ConfigError, match=key):
        configs.check_runnable(config)


def test_bad_config_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "results"
    path = tmp_path / "bad.toml"
    path.write_text('optimizers = ["adam"]\n[hparams.adam]\nlearning_rate = "x"\n')
    with pytest.raises(SystemExit):
        compare.main(["--config", str(path), "--out", str(out)])
    assert "hparams.adam.learning_rate" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        compare.main(["--config", str(tmp_path / "missing.toml"), "--out", str(out)])
    assert "--config" in capsys.readouterr().err
    path.write_text("steps = [")
    with pytest.raises(SystemExit):
        compare.main(["--config", str(path), "--out", str(out)])
    assert "not valid TOML" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--seeds", "0,x"], "`--seeds` expects comma-separated integers, got 'x'"),
        (["--targets", "0.1,low"], "`--targets` expects comma-separated numbers"),
        (["--problem-arg", "hidden"], "`--problem-arg` expects KEY=VALUE"),
        (["--hparam", "learning_rate=0.1"], "`--hparam` expects OPTIMIZER.NAME"),
        (["--targets", "0.1,nan"], "'targets' must be a non-empty list of finite"),
        (["--run-id", "../elsewhere"], "`--run-id` must be a plain folder name"),
        (["--run-id", ""], "`--run-id` must be a plain folder name"),
    ],
)
def test_bad_option_value_names_the_option(tmp_path, capsys, argv, option):
    out = tmp_path / "results"
    with pytest.raises(SystemExit):
        compare.main([*argv, "--out", str(out)])
    assert option in capsys.readouterr().err
    assert not out.exists()


def test_unselected_optimizer_hparams_fail_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "results"
    argv = ["--optimizers", "lbfgs", "--hparam", "armijo_sgd.c1=1.5"]
    with pytest.raises(SystemExit):
        compare.main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert "hparams.armijo_sgd" in err and "c1" in err
    assert not out.exists()


def test_grid_points_leave_out_fixed_hyperparameters():
    method = registry.Method(
        name="m",
        make=lambda h, ctx: None,
        regimes=("full",),
        defaults={"a": 1.0, "b": 2},
        grid={"a": [0.1, 0.2], "b": [1, 2, 3]},
        description="",
    )
    points = configs.grid_points(method, {})
    assert len(points) == 6 and {"a": 0.2, "b": 3} in points
    assert configs.grid_points(method, {"b": 5}) == [{"a": 0.1}, {"a": 0.2}]
    assert configs.grid_points(method, {"a": 0.3, "b": 5}) == []


def test_an_out_folder_that_cannot_be_made_is_a_usage_error(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit):
        compare.main(["--quick", "--out", str(blocker / "results")])
    assert "`--out`" in capsys.readouterr().err
