"""Study configurations: TOML files, command-line overrides, validation.

A configuration is a flat table of the keys in :data:`SCHEMA` (``hparams``
and ``problem_args`` hold sub-tables). It is built in layers, each overriding
the previous one: the defaults, a TOML file (``--config``), the ``--quick``
preset, then the options given on the command line. :func:`build` checks the
result as a whole and :func:`check_runnable` builds the problem and every
optimizer from it, so a bad key, value type, optimizer, hyperparameter or
problem argument is reported by name before any work starts.

TOML has no null: ``seconds = 0`` and ``grad_equivalents = 0`` mean "no such
cap"; ``targets``, ``devices`` left out mean "automatic" and "the default
device, no mesh".
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import jax

from experiments import registry
from so_opt import problems

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


@dataclasses.dataclass(frozen=True)
class Key:
    """One configuration key: its default, a type check and a description."""

    default: Any
    check: Callable[[Any], bool]
    expected: str
    help: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return _is_int(v) or isinstance(v, float)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list | tuple) and all(check(x) for x in v)


def _cap(v: Any) -> bool:
    return v is None or (_is_number(v) and v >= 0)


SCHEMA: dict[str, Key] = {
    "problem": Key("digits_mlp", lambda v: isinstance(v, str), "a string", "problem"),
    "problem_args": Key(
        {}, lambda v: isinstance(v, Mapping), "a table", "problem keyword arguments"
    ),
    "optimizers": Key(
        "all",
        lambda v: v == "all" or _list_of(lambda x: isinstance(x, str))(v),
        '"all" or a list of names',
        "optimizers to run",
    ),
    "exclude": Key(
        [],
        _list_of(lambda x: isinstance(x, str)),
        "a list of names",
        "optimizers left out of `optimizers`",
    ),
    "hparams": Key(
        {},
        lambda v: (
            isinstance(v, Mapping) and all(isinstance(x, Mapping) for x in v.values())
        ),
        "a table of tables",
        "fixed hyperparameters per optimizer (never tuned)",
    ),
    "regimes": Key(
        ["full", "minibatch"],
        lambda v: _list_of(lambda x: x in ("full", "minibatch"))(v) and len(v) > 0,
        'a non-empty list of "full"/"minibatch"',
        "regimes",
    ),
    "steps": Key(200, lambda v: _is_int(v) and v >= 1, "an integer >= 1", "steps"),
    "seconds": Key(5.0, _cap, "a number >= 0 (0: no cap)", "wall-time cap per run"),
    "grad_equivalents": Key(
        None, _cap, "a number >= 0 (0: no cap)", "work cap per run"
    ),
    "batch_size": Key(
        128, lambda v: _is_int(v) and v >= 1, "an integer >= 1", "mini-batch size"
    ),
    "eval_every": Key(
        5, lambda v: _is_int(v) and v >= 1, "an integer >= 1", "record interval"
    ),
    "seeds": Key(
        [0],
        lambda v: _list_of(_is_int)(v) and len(v) > 0,
        "a non-empty list of integers",
        "seeds",
    ),
    "targets": Key(
        None,
        _optional(
            lambda v: (
                _list_of(lambda t: _is_number(t) and math.isfinite(t))(v) and len(v) > 0
            )
        ),
        "a non-empty list of finite numbers or omitted",
        "target train losses",
    ),
    "tune": Key(False, lambda v: isinstance(v, bool), "true or false", "tune rates"),
    "devices": Key(
        None,
        _optional(lambda v: _is_int(v) and v >= 1),
        "an integer >= 1 or omitted",
        "data-parallel devices",
    ),
}

QUICK = {"steps": 20, "seconds": 3.0, "grad_equivalents": 0, "tune": False}


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key."""


def load_toml(path: str) -> dict[str, Any]:
    """Reads a TOML config file (a table of :data:`SCHEMA` keys)."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"`--config`: cannot read {path!r}: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"`--config`: {path!r} is not valid TOML: {error}") from error


def build(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overridden by each layer in turn, validated and normalized."""
    config = {name: key.default for name, key in SCHEMA.items()}
    for layer in layers:
        for name, value in layer.items():
            if name not in SCHEMA:
                raise ConfigError(
                    f"unknown config key {name!r}; valid keys are: {', '.join(SCHEMA)}."
                )
            config[name] = value
    validate(config)
    if config["optimizers"] == "all":
        config["optimizers"] = registry.names()
    config["optimizers"] = [
        n for n in config["optimizers"] if n not in config["exclude"]
    ]
    if not config["optimizers"]:
        raise ConfigError("config keys 'optimizers'/'exclude' leave no optimizer.")
    for name in ("optimizers", "exclude", "regimes", "seeds"):
        config[name] = list(config[name])
    if config["targets"] is not None:
        config["targets"] = sorted({float(t) for t in config["targets"]}, reverse=True)
    for name in ("seconds", "grad_equivalents"):
        config[name] = float(config[name]) if config[name] else None
    config["problem_args"] = dict(config["problem_args"])
    config["hparams"] = {k: dict(v) for k, v in config["hparams"].items()}
    return config


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return _is_number(value)
    return type(value) is type(default)


def validate(config: Mapping[str, Any]) -> None:
    """Checks types and names; raises :class:`ConfigError` naming the key."""
    for name, key in SCHEMA.items():
        if not key.check(config[name]):
            raise ConfigError(
                f"config key {name!r} must be {key.expected}, got {config[name]!r}."
            )
    if config["problem"] not in problems.names():
        raise ConfigError(
            f"config key 'problem': unknown problem {config['problem']!r}; valid "
            f"problems are: {', '.join(problems.names())}."
        )
    names = config["optimizers"]
    for where, listed in (
        ("optimizers", names),
        ("exclude", config["exclude"]),
        ("hparams", config["hparams"]),
    ):
        for name in listed if listed != "all" else []:
            if name not in registry.REGISTRY:
                raise ConfigError(
                    f"config key {where!r}: unknown optimizer {name!r}; "
                    f"valid optimizers are: {', '.join(registry.names())}."
                )
    for name, overrides in config["hparams"].items():
        known = registry.get(name).defaults
        for hparam, value in overrides.items():
            if hparam not in known:
                raise ConfigError(
                    f"config key 'hparams.{name}': unknown hyperparameter "
                    f"{hparam!r}; {name} has: {', '.join(known) or 'none'}."
                )
            if not _same_kind(value, known[hparam]):
                raise ConfigError(
                    f"config key 'hparams.{name}.{hparam}' must be of the kind of "
                    f"its default {known[hparam]!r}, got {value!r}."
                )


def grid_points(method: registry.Method, fixed: Mapping[str, Any]) -> list[dict]:
    """The method's declared grid without the fixed keys, as a list of points.

    A hyperparameter fixed in the config is not tuned. ``[]``: nothing to tune.
    """
    grid = {k: v for k, v in method.grid.items() if k not in fixed}
    if not grid:
        return []
    keys = list(grid)
    return [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*grid.values())
    ]


def check_runnable(config: Mapping[str, Any]) -> problems.Problem:
    """Builds the problem and every optimizer in the study; returns the problem.

    Every optimizer the study runs is built (with each tuning grid point), and
    so is every optimizer named in ``hparams``, selected or not.

    Raises:
      ConfigError: naming the key whose value cannot run: a problem argument
        the problem does not take, a hyperparameter an optimizer rejects,
        ``tune`` on a problem without a validation split, more ``devices``
        than there are, or a ``batch_size`` they do not divide.
    """
    try:
        problem = problems.get(config["problem"], **config["problem_args"])
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config key 'problem_args': {error}") from error
    if config["tune"] and problem.valid is None:
        raise ConfigError(
            f"config key 'tune': problem {problem.name!r} has no validation split "
            "to tune on; set tune = false."
        )
    if "minibatch" in config["regimes"] and problem.train is not None:
        if config["batch_size"] > problem.num_train:
            raise ConfigError(
                f"config key 'batch_size' must be at most the {problem.num_train} "
                f"training examples, got {config['batch_size']}."
            )
    context = {"max_steps": config["steps"], "steps_per_epoch": 1}
    # Every optimizer with hyperparameters in the config is built with them,
    # also one not selected to run: a bad value is an error, never ignored.
    for name in dict.fromkeys([*config["optimizers"], *config["hparams"]]):
        method = registry.get(name)
        fixed = config["hparams"].get(name, {})
        selected = name in config["optimizers"]
        points = grid_points(method, fixed) if config["tune"] and selected else []
        for point in points or [{}]:
            try:
                method.build({**fixed, **point}, context)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"config key 'hparams.{name}': {error}") from error
    devices = config["devices"]
    if devices is not None:
        if devices > jax.device_count():
            raise ConfigError(
                f"config key 'devices' must be at most the {jax.device_count()} "
                f"available device(s), got {devices}."
            )
        if "minibatch" in config["regimes"] and config["batch_size"] % devices:
            raise ConfigError(
                f"config key 'batch_size' must be a multiple of `devices` "
                f"({devices}) in the minibatch regime, got {config['batch_size']}."
            )
    return problem
