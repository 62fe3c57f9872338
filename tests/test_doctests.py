"""The docstring examples also hold in JAX's default float32 mode."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_docstring_examples_hold_without_x64():
    # The main suite turns x64 on (conftest.py), so its doctest pass sees
    # float64 defaults; a user pasting an example usually has float32 only.
    env = {**os.environ, "SO_OPT_X64": "0"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["-o", "addopts=", "--doctest-modules", "so_opt"]
    out = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
