"""Study configurations: TOML files, command-line overrides, validation.

A configuration is a flat table of the keys in :data:`SCHEMA`. It is built
in layers, each overriding the previous one: the defaults, a TOML file
(``--config``), the ``--quick`` preset, then options given on the command
line. It is validated as a whole before any work starts, and a bad key,
value type, optimizer or problem name is reported by name.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from experiments import registry
from so_opt import problems

CONFIG_DIR = __file__.rsplit("/", 1)[0] + "/configs"


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
    "hparams": Key(
        {},
        lambda v: (
            isinstance(v, Mapping) and all(isinstance(x, Mapping) for x in v.values())
        ),
        "a table of tables",
        "hyperparameter overrides per optimizer",
    ),
    "regimes": Key(
        ["full", "minibatch"],
        lambda v: _list_of(lambda x: x in ("full", "minibatch"))(v) and len(v) > 0,
        'a non-empty list of "full"/"minibatch"',
        "regimes",
    ),
    "steps": Key(200, lambda v: _is_int(v) and v >= 1, "an integer >= 1", "steps"),
    "seconds": Key(
        10.0,
        _optional(lambda v: _is_number(v) and v > 0),
        "a number > 0 or omitted",
        "wall-time cap per run",
    ),
    "grad_equivalents": Key(
        None,
        _optional(lambda v: _is_number(v) and v > 0),
        "a number > 0 or omitted",
        "work cap per run, in gradient equivalents",
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
        _optional(lambda v: _list_of(_is_number)(v) and len(v) > 0),
        "a non-empty list of numbers or omitted",
        "target train losses",
    ),
    "tune": Key(False, lambda v: isinstance(v, bool), "true or false", "tune rates"),
}

QUICK = {"steps": 20, "seconds": 3.0, "grad_equivalents": None, "tune": False}


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key."""


def load_toml(path: str) -> dict[str, Any]:
    """Reads a TOML config file (a flat table of :data:`SCHEMA` keys)."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"`--config`: cannot read {path!r}: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"`--config`: {path!r} is not valid TOML: {error}") from error


def build(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overridden by each layer in turn, then validated."""
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
    config["optimizers"] = list(config["optimizers"])
    config["regimes"] = list(config["regimes"])
    config["seeds"] = list(config["seeds"])
    config["problem_args"] = dict(config["problem_args"])
    config["hparams"] = {k: dict(v) for k, v in config["hparams"].items()}
    return config


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
    for name in [*(names if names != "all" else []), *config["hparams"]]:
        if name not in registry.REGISTRY:
            raise ConfigError(
                f"config key 'optimizers'/'hparams': unknown optimizer {name!r}; "
                f"valid optimizers are: {', '.join(registry.names())}."
            )
    for name, overrides in config["hparams"].items():
        known = registry.get(name).defaults
        for hparam in overrides:
            if hparam not in known:
                raise ConfigError(
                    f"config key 'hparams.{name}': unknown hyperparameter "
                    f"{hparam!r}; {name} has: {', '.join(known) or 'none'}."
                )
