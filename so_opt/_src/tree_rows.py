"""Stacks of pytrees ("rows") and their inner products, as few kernels as possible.

A reduction over a vector compiles on XLA:CPU to up to three kernels (a
multiply, a partial reduce-window and a final reduce). Stacking ``k`` pytrees
leaf by leaf into one pytree with a leading axis of length ``k`` turns ``k``
inner products with a common pytree into one fused reduction per leaf.
The products are written as
multiply-and-sum, not ``jnp.dot``: on XLA:CPU a small matrix-vector product
goes to a library call that costs several times a fused reduction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from so_opt._src import base


def _sum_trailing(x: jax.Array, keep: int) -> jax.Array:
    """Sums ``x`` over all axes after the first ``keep``."""
    return jnp.sum(x, axis=tuple(range(keep, x.ndim)))


def stack(*trees: base.PyTree) -> base.PyTree:
    """Leaf-wise stack: each leaf gains a leading axis of length ``len(trees)``."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def row_dots(rows: base.PyTree, tree: base.PyTree, dtype) -> jax.Array:
    """The inner products :math:`\\langle r_i, x \\rangle` of the rows with ``x``."""
    parts = [
        _sum_trailing(r * x[None], 1).astype(dtype)
        for r, x in zip(
            jax.tree_util.tree_leaves(rows),
            jax.tree_util.tree_leaves(tree),
            strict=True,
        )
    ]
    return sum(parts[1:], parts[0])


def cross(rows: base.PyTree, others: base.PyTree, dtype) -> jax.Array:
    """The matrix of :math:`\\langle r_i, o_k \\rangle` for two stacks of rows."""
    parts = [
        _sum_trailing(r[:, None] * o[None, :], 2).astype(dtype)
        for r, o in zip(
            jax.tree_util.tree_leaves(rows),
            jax.tree_util.tree_leaves(others),
            strict=True,
        )
    ]
    return sum(parts[1:], parts[0])


def gram(rows: base.PyTree, dtype) -> jax.Array:
    """The matrix of :math:`\\langle r_i, r_j \\rangle` over the rows."""
    return cross(rows, rows, dtype)
