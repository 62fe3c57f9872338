"""Test set-up: float64 available for references; seeded, quiet runs."""

import jax

# References are computed in float64; tests that target float32 say so
# explicitly through dtypes, so defaults never decide precision silently.
jax.config.update("jax_enable_x64", True)
