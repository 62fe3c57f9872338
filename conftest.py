"""Test set-up: float64 available for references; seeded, quiet runs."""

import os

import jax

# References are computed in float64; tests that target float32 say so
# explicitly through dtypes, so defaults never decide precision silently.
# SO_OPT_X64=0 keeps JAX's default (float32 only), as users run the
# docstring examples; tests/test_doctests.py runs those that way.
jax.config.update("jax_enable_x64", os.environ.get("SO_OPT_X64", "1") != "0")
