"""Pytree helpers that ``optax.tree_utils`` does not provide.

Arithmetic on trees (``tree_vdot``, ``tree_add_scale``, ``tree_norm``, ...) is
taken from ``optax.tree_utils``; this module only adds checks that a tree
matches another one leaf by leaf, which curvature products need before they
hand a vector to ``jax.jvp`` (whose own errors do not name our arguments, and
which would otherwise promote a float32 tangent silently in some paths).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _describe_leaf(leaf: Any) -> str:
    """Returns ``dtype[shape]`` for one leaf, e.g. ``float32[3, 2]``."""
    shape = ", ".join(str(n) for n in np.shape(leaf))
    return f"{jnp.result_type(leaf)}[{shape}]"


def check_tree_like(
    tree: Any,
    reference: Any,
    name: str,
    reference_name: str = "params",
    check_dtypes: bool = True,
) -> None:
    """Raises unless ``tree`` has the structure, shapes and dtypes of ``reference``.

    Works on concrete arrays and on tracers, so it is safe inside ``jit``.

    Args:
      tree: the tree to check (for example a tangent ``vector``).
      reference: the tree it must match (for example ``params``).
      name: the argument name of ``tree``, used in the message.
      reference_name: the argument name of ``reference``.
      check_dtypes: also require equal leaf dtypes (callers that cast the
        tree themselves pass False).

    Raises:
      ValueError: if the tree structures or the leaf shapes differ.
      TypeError: if a leaf dtype differs.
    """
    tree_def = jax.tree_util.tree_structure(tree)
    reference_def = jax.tree_util.tree_structure(reference)
    if tree_def != reference_def:
        raise ValueError(
            f"`{name}` must have the tree structure of `{reference_name}`; "
            f"got {tree_def}, expected {reference_def}."
        )
    paths_leaves = jax.tree_util.tree_leaves_with_path(tree)
    reference_leaves = jax.tree_util.tree_leaves(reference)
    for (path, leaf), ref in zip(paths_leaves, reference_leaves, strict=True):
        where = jax.tree_util.keystr(path) or "(root)"
        if np.shape(leaf) != np.shape(ref):
            raise ValueError(
                f"`{name}` must match the shapes of `{reference_name}`; at leaf "
                f"{where} got {_describe_leaf(leaf)}, expected {_describe_leaf(ref)}."
            )
        if check_dtypes and jnp.result_type(leaf) != jnp.result_type(ref):
            raise TypeError(
                f"`{name}` must match the dtypes of `{reference_name}`; at leaf "
                f"{where} got {_describe_leaf(leaf)}, expected {_describe_leaf(ref)}."
            )


def tree_common_dtype(tree: Any) -> np.dtype:
    """Returns the dtype all leaves of ``tree`` promote to."""
    return np.dtype(jnp.result_type(*jax.tree_util.tree_leaves(tree)))
