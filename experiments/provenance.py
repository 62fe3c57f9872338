"""What a cited result needs besides its numbers: versions, device, commit."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from typing import Any

import jax

_PACKAGES = ("so-opt", "jax", "jaxlib", "optax", "flax", "numpy", "scipy")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(directory: str | None = None) -> dict[str, Any]:
    """The commit of the source tree and whether it has uncommitted changes.

    Both are ``None`` outside a git checkout (an installed wheel, an archive).
    """
    directory = directory or os.path.dirname(os.path.abspath(__file__))

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=directory,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if dirty is None else bool(dirty)}


def environment() -> dict[str, Any]:
    """Versions, device, host and time of this process, JSON-ready."""
    devices = jax.devices()
    return {
        "versions": {name: _version(name) for name in _PACKAGES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "cpu_count": os.cpu_count(),
        "x64": bool(jax.config.jax_enable_x64),
        "git": git_commit(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
