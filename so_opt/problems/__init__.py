"""Standard objectives: Flax NNX models on real data and classic test functions.

Every problem is a :class:`Problem`; :func:`get` builds one by registry name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from so_opt.problems.autoencoder import digits_autoencoder as digits_autoencoder
from so_opt.problems.base import Problem as Problem
from so_opt.problems.digits import digits_mlp as digits_mlp
from so_opt.problems.logreg import breast_cancer_logreg as breast_cancer_logreg
from so_opt.problems.rosenbrock import rosenbrock as rosenbrock
from so_opt.problems.rosenbrock import rosenbrock_value as rosenbrock_value

REGISTRY: dict[str, Callable[..., Problem]] = {
    "digits_mlp": digits_mlp,
    "digits_autoencoder": digits_autoencoder,
    "breast_cancer_logreg": breast_cancer_logreg,
    "rosenbrock": rosenbrock,
}


def names() -> list[str]:
    """The registered problem names, sorted."""
    return sorted(REGISTRY)


def get(name: str, **kwargs: Any) -> Problem:
    """Builds the problem registered under ``name`` with keyword overrides.

    Raises:
      ValueError: for an unknown name; the message lists the valid ones.
    """
    if name not in REGISTRY:
        raise ValueError(
            f"Unknown problem {name!r}; valid problems are: {', '.join(names())}."
        )
    return REGISTRY[name](**kwargs)


def num_params(params: Any) -> int:
    """The number of scalar parameters k in a params pytree."""
    return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))
