"""The optimizers the studies know, by name, with declared tuning grids.

Each :class:`Method` builds an optax transformation from hyperparameters and
the run's context (step budget, steps per epoch), says in which regimes it
makes sense, and how the runner must drive it. Later methods join by adding
an entry here; :func:`get` and :func:`names` are all the studies use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import optax

import so_opt

Context = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered optimizer.

    Attributes:
      name: registry name.
      make: ``make(hparams, context) -> optax transformation``; ``context``
        has ``max_steps`` and ``steps_per_epoch``.
      regimes: the regimes it is run in (``"full"``, ``"minibatch"``).
      defaults: hyperparameters used when not tuned.
      grid: declared tuning grid, ``{name: [values]}`` (empty: nothing to tune).
      description: one line for reports.
      value_and_grad: runner mode, ``"fresh"`` or ``"from_state"``.
      extra_arg_names: closures passed to ``update`` (``None``: all).
      peer_grad_evals: for peers without so_opt counters, ``state -> grads``
        spent inside the last update.
      skip_reason: ``skip_reason(problem) -> str | None``: why the method
        cannot run on a problem (e.g. its dense Hessian would not fit in
        memory), or ``None`` when it can. The study skips it and says why.
    """

    name: str
    make: Callable[[dict[str, Any], Context], optax.GradientTransformation]
    regimes: tuple[str, ...]
    defaults: dict[str, Any]
    grid: dict[str, list[Any]]
    description: str
    value_and_grad: str = "fresh"
    extra_arg_names: tuple[str, ...] | None = None
    peer_grad_evals: Callable[[Any], Any] | None = None
    skip_reason: Callable[[Any], str | None] | None = None

    def build(
        self, hparams: dict[str, Any] | None, context: Context
    ) -> optax.GradientTransformation:
        """The optimizer with ``defaults`` updated by ``hparams``."""
        return self.make({**self.defaults, **(hparams or {})}, context)


def _annealed_sgd(h: dict[str, Any], ctx: Context) -> optax.GradientTransformation:
    # Cosine annealing to zero over the run's step budget (Loshchilov & Hutter).
    schedule = optax.cosine_decay_schedule(h["learning_rate"], ctx["max_steps"])
    return optax.sgd(schedule)


def _zoom_steps(state: Any) -> Any:
    # optax's zoom line search evaluates value and gradient once per step.
    return optax.tree_utils.tree_get(state, "num_linesearch_steps")


_LR_GRID = [0.03, 0.1, 0.3, 1.0]

_METHODS = [
    Method(
        name="sgd",
        make=lambda h, ctx: optax.sgd(h["learning_rate"]),
        regimes=("full", "minibatch"),
        defaults={"learning_rate": 0.3},
        grid={"learning_rate": _LR_GRID},
        description="gradient descent, fixed learning rate",
    ),
    Method(
        name="sgd_annealed",
        make=_annealed_sgd,
        regimes=("full", "minibatch"),
        defaults={"learning_rate": 0.3},
        grid={"learning_rate": _LR_GRID},
        description="gradient descent, cosine-annealed learning rate",
    ),
    Method(
        name="adam",
        make=lambda h, ctx: optax.adam(h["learning_rate"]),
        regimes=("full", "minibatch"),
        defaults={"learning_rate": 0.01},
        grid={"learning_rate": [0.001, 0.003, 0.01, 0.03]},
        description="Adam (optax)",
    ),
    Method(
        name="optax_lbfgs",
        make=lambda h, ctx: optax.lbfgs(memory_size=h["memory_size"]),
        regimes=("full",),
        defaults={"memory_size": 10},
        grid={},
        description="L-BFGS with zoom line search (optax, peer)",
        value_and_grad="from_state",
        extra_arg_names=("value_fn",),
        peer_grad_evals=_zoom_steps,
    ),
    Method(
        name="armijo_sgd",
        make=lambda h, ctx: so_opt.armijo_sgd(
            learning_rate=h["learning_rate"], c1=h["c1"], shrink=h["shrink"]
        ),
        regimes=("full",),
        defaults={"learning_rate": 1.0, "c1": 1e-4, "shrink": 0.5},
        grid={},
        description="gradient descent with Armijo backtracking (so_opt)",
    ),
]

# --- line searches and adaptive rates (issue 4) ------------------------------


def _stochastic_armijo(h: dict[str, Any], ctx: Context) -> Any:
    # Vaswani et al. (2019): grow the last step by 2^(1/batches per epoch).
    return so_opt.armijo_sgd(
        learning_rate=h["learning_rate"],
        c1=h["c1"],
        shrink=h["shrink"],
        reset="grow",
        growth=2.0 ** (1.0 / ctx["steps_per_epoch"]),
        max_learning_rate=h["max_learning_rate"],
    )


def _sgd_plateau(h: dict[str, Any], ctx: Context) -> Any:
    # Patience in epochs: the rule averages one epoch of batch losses at a time.
    return optax.chain(
        optax.sgd(h["learning_rate"]),
        so_opt.reduce_on_plateau(
            factor=h["factor"],
            patience=h["patience"],
            accumulation_size=ctx["steps_per_epoch"],
        ),
    )


_METHODS += [
    Method(
        name="armijo_sgd_stochastic",
        make=_stochastic_armijo,
        regimes=("minibatch",),
        defaults={
            "learning_rate": 1.0,
            "c1": 0.1,
            "shrink": 0.9,
            "max_learning_rate": 10.0,
        },
        grid={"c1": [0.01, 0.1, 0.3]},
        description="stochastic Armijo line search, grow reset (so_opt)",
    ),
    Method(
        name="armijo_goldstein",
        make=lambda h, ctx: so_opt.armijo_sgd(
            learning_rate=h["learning_rate"],
            c1=h["c1"],
            condition="goldstein",
            reset="keep",
            max_learning_rate=h["max_learning_rate"],
        ),
        regimes=("full",),
        defaults={"learning_rate": 1.0, "c1": 0.25, "max_learning_rate": 100.0},
        grid={},
        description="gradient descent with a Goldstein line search (so_opt)",
    ),
    Method(
        name="bold_driver",
        make=lambda h, ctx: so_opt.bold_driver(
            h["learning_rate"], h["increase"], h["decrease"]
        ),
        regimes=("full", "minibatch"),
        defaults={"learning_rate": 0.3, "increase": 1.1, "decrease": 0.5},
        grid={"increase": [1.02, 1.05, 1.1]},
        description="bold driver: grow after a good step, undo and halve (so_opt)",
    ),
    Method(
        name="newbob",
        make=lambda h, ctx: so_opt.newbob(
            h["learning_rate"],
            h["start_threshold"],
            h["stop_threshold"],
            steps_per_epoch=ctx["steps_per_epoch"],
        ),
        regimes=("full", "minibatch"),
        defaults={
            "learning_rate": 0.3,
            "start_threshold": 0.005,
            "stop_threshold": 0.001,
        },
        grid={"learning_rate": _LR_GRID},
        description="newbob on the epoch's mean training loss (so_opt)",
    ),
    Method(
        name="delta_bar_delta",
        make=lambda h, ctx: so_opt.delta_bar_delta(
            h["learning_rate"], h["kappa"], h["phi"], h["theta"]
        ),
        regimes=("full", "minibatch"),
        defaults={"learning_rate": 0.1, "kappa": 0.01, "phi": 0.1, "theta": 0.7},
        grid={"learning_rate": [0.01, 0.03, 0.1, 0.3]},
        description="delta-bar-delta per-parameter rates (so_opt)",
    ),
    Method(
        name="barzilai_borwein",
        make=lambda h, ctx: so_opt.barzilai_borwein(
            h["learning_rate"], h["variant"], max_learning_rate=h["max_learning_rate"]
        ),
        regimes=("full",),
        defaults={"learning_rate": 0.1, "variant": "long", "max_learning_rate": 100.0},
        grid={"variant": ["long", "short"]},
        description="Barzilai-Borwein step, safeguarded (so_opt)",
    ),
    Method(
        name="rprop",
        make=lambda h, ctx: so_opt.rprop(h["learning_rate"]),
        regimes=("full",),
        defaults={"learning_rate": 0.01},
        grid={"learning_rate": [0.001, 0.01, 0.1]},
        description="iRprop- without optax 0.2.8's one-step lag (so_opt)",
    ),
    Method(
        name="sgd_plateau",
        make=_sgd_plateau,
        regimes=("full", "minibatch"),
        defaults={"learning_rate": 0.3, "factor": 0.5, "patience": 3},
        grid={"learning_rate": _LR_GRID},
        description="SGD with reduce-on-plateau, any loss sign (so_opt)",
    ),
]

# --- quasi-Newton (issue 5) ---------------------------------------------------


def _bfgs_skip(problem: Any) -> str | None:
    # The same test bfgs's init makes, without allocating the k x k matrix.
    from jax.flatten_util import ravel_pytree

    from so_opt._src.bfgs import DEFAULT_MEMORY_BUDGET_BYTES, check_dense_size

    flat = ravel_pytree(problem.init_params(0))[0]
    try:
        check_dense_size(flat.size, flat.dtype, DEFAULT_MEMORY_BUDGET_BYTES)
    except ValueError as error:
        return str(error)
    return None


# The line search keeps the value and gradient at the accepted point in the
# state, so the runner reads them there ("from_state") instead of paying a
# fresh gradient per step; its trials are counted in so_opt's own counters.
_METHODS += [
    Method(
        name="lbfgs",
        make=lambda h, ctx: so_opt.lbfgs(memory_size=h["memory_size"]),
        regimes=("full",),
        defaults={"memory_size": 10},
        grid={},
        description="L-BFGS with strong Wolfe line search (so_opt)",
        value_and_grad="from_state",
    ),
    Method(
        name="bfgs",
        make=lambda h, ctx: so_opt.bfgs(),
        regimes=("full",),
        defaults={},
        grid={},
        description="dense BFGS with strong Wolfe line search (so_opt)",
        value_and_grad="from_state",
        skip_reason=_bfgs_skip,
    ),
]

# --- Newton's family (issue 6) ------------------------------------------------
# Dense Newton in the studies: its k x k work must fit in 128 MiB (k about
# 2,900 in float64, 4,000 in float32), or a study step would take minutes.
_NEWTON_BUDGET_BYTES = 2**27


def _newton(h: dict[str, Any], ctx: Context) -> optax.GradientTransformation:
    return so_opt.newton(
        damping=h["damping"],
        saddle_free=h["saddle_free"],
        memory_budget_bytes=_NEWTON_BUDGET_BYTES,
    )


def _newton_skip(problem: Any) -> str | None:
    # newton's init checks the memory before allocating anything dense.
    try:
        _newton({"damping": 1e-2, "saddle_free": False}, {}).init(
            problem.init_params(0)
        )
    except ValueError as error:
        return str(error)
    return None


def _hessian_free(curvature: str):
    def make(h: dict[str, Any], ctx: Context) -> optax.GradientTransformation:
        return so_opt.hessian_free(
            curvature, damping=h["damping"], max_cg_steps=h["max_cg_steps"]
        )

    return make


def _gauss_newton_skip(problem: Any) -> str | None:
    if problem.model_fn is None or problem.output_loss_fn is None:
        return "the loss has no model_fn / output_loss_fn split for Gauss-Newton"
    return None


_METHODS += [
    Method(
        name="newton",
        make=_newton,
        regimes=("full",),
        defaults={"damping": 1e-2, "saddle_free": False},
        grid={"damping": [1e-3, 1e-2, 1e-1]},
        description="exact Newton, dense Hessian, damped Cholesky (so_opt)",
        skip_reason=_newton_skip,
    ),
    Method(
        name="newton_saddle_free",
        make=_newton,
        regimes=("full",),
        defaults={"damping": 1e-2, "saddle_free": True},
        grid={"damping": [1e-3, 1e-2, 1e-1]},
        description="saddle-free Newton, |H| from a dense eigendecomposition (so_opt)",
        skip_reason=_newton_skip,
    ),
    Method(
        name="hessian_free",
        make=_hessian_free("gauss_newton"),
        regimes=("full", "minibatch"),
        defaults={"damping": 1.0, "max_cg_steps": 250},
        grid={"damping": [0.1, 1.0, 10.0]},
        description="Hessian-free, Gauss-Newton products, Martens' CG (so_opt)",
        skip_reason=_gauss_newton_skip,
    ),
    Method(
        name="hessian_free_hessian",
        make=_hessian_free("hessian"),
        regimes=("full",),
        defaults={"damping": 1.0, "max_cg_steps": 250},
        grid={"damping": [0.1, 1.0, 10.0]},
        description="Hessian-free, Hessian products, Steihaug truncation (so_opt)",
    ),
]

REGISTRY: dict[str, Method] = {m.name: m for m in _METHODS}


def names(regime: str | None = None) -> list[str]:
    """Registered method names (those run in ``regime``, if given), sorted."""
    return sorted(n for n, m in REGISTRY.items() if regime in (None, *m.regimes))


def get(name: str) -> Method:
    """The method registered under ``name``.

    Raises:
      ValueError: for an unknown name; the message lists the valid ones.
    """
    if name not in REGISTRY:
        raise ValueError(
            f"Unknown optimizer {name!r}; valid optimizers are: {', '.join(names())}."
        )
    return REGISTRY[name]
