"""Shared argument checks: what counts as an integer hyperparameter."""

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
