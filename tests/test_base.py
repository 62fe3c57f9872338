"""Shared helpers: argument checks (integers, reals) and scalar packing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import so_opt


@pytest.mark.parametrize("memory_size", [3, np.int64(3), np.int32(3)])
def test_numpy_integers_are_integers(memory_size):
    # A config read through numpy gives np.int64; it must work like an int.
    opt = so_opt.lbfgs(memory_size=memory_size)
    state = opt.init({"x": np.zeros(2)})
    assert so_opt.costs(state).grad_evals == 0


@pytest.mark.parametrize("memory_size", [True, np.bool_(True), 0, 2.5, "3"])
def test_bools_floats_strings_and_small_values_are_refused(memory_size):
    with pytest.raises(ValueError, match=r"`memory_size` must be an integer >= 1"):
        so_opt.lbfgs(memory_size=memory_size)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("0.1", TypeError, r"`learning_rate` must be a real number, got '0.1'"),
        (None, TypeError, r"`learning_rate` must be a real number, got None"),
        (True, TypeError, r"`learning_rate` must be a real number, got True"),
        (float("inf"), ValueError, r"`learning_rate` must be finite and > 0, got inf"),
        (float("nan"), ValueError, r"`learning_rate` must be finite and > 0, got nan"),
    ],
)
def test_rates_must_be_finite_positive_real_numbers(value, error, message):
    with pytest.raises(error, match=message) as info:
        so_opt.armijo_sgd(learning_rate=value)
    assert str(info.value).endswith(".")


@pytest.mark.parametrize("value", [0.1, 1, np.float32(0.1), np.float64(0.1)])
def test_real_numbers_of_any_kind_are_accepted(value):
    opt = so_opt.armijo_sgd(learning_rate=value)
    assert so_opt.costs(opt.init(np.zeros(2))).value_evals == 0
    so_opt.armijo_sgd(learning_rate=np.asarray(value))  # a 0-d array is a number


def test_interval_and_bound_checks_want_real_numbers_too():
    with pytest.raises(TypeError, match=r"`c1` must be a real number, got '0.1'"):
        so_opt.armijo_sgd(c1="0.1")
    with pytest.raises(TypeError, match=r"`max_learning_rate` must be a real"):
        so_opt.armijo_sgd(max_learning_rate="1")


def test_costs_docstring_makes_no_inject_hyperparams_claim():
    # so_opt's hyperparameter checks run in Python when the optimizer is built,
    # so optax.inject_hyperparams cannot drive them; the docstring says so.
    doc = so_opt.costs.__doc__
    assert "do not support ``optax.inject_hyperparams``" in doc


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pack_scalars_keeps_every_value_in_place(dtype):
    from so_opt._src.base import pack_scalars

    values = [3, True, False, -0.5, np.inf, -np.inf, np.nan, jnp.int32(7)]
    packed = jax.jit(lambda: pack_scalars(values, dtype))()
    assert packed.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(packed, np.asarray(values, dtype))


def test_upper_submodules_are_attributes_of_the_package():
    assert so_opt.problems.rosenbrock(2).name == "rosenbrock"
    assert callable(so_opt.runner.run)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        so_opt.nope  # noqa: B018
