"""so_opt: second-order and line-search optimization of neural networks in JAX.

Every optimizer is an ``optax.GradientTransformationExtraArgs``; see the README
and ``DESIGN.md`` for the contract (``value``, ``grad``, ``value_fn`` extra
arguments, cost counters, status codes).
"""

from importlib import metadata as _metadata

# --- shared vocabulary -------------------------------------------------------
from so_opt._src.base import Costs as Costs
from so_opt._src.base import Status as Status
from so_opt._src.base import StatusCode as StatusCode
from so_opt._src.base import costs as costs
from so_opt._src.base import status as status

# --- curvature and linear algebra (issue 3) ----------------------------------
from so_opt._src.curvature import HessianEigenvalues as HessianEigenvalues
from so_opt._src.curvature import HessianTrace as HessianTrace
from so_opt._src.curvature import ggn_vp as ggn_vp
from so_opt._src.curvature import hessian_eigenvalues as hessian_eigenvalues
from so_opt._src.curvature import hessian_matrix as hessian_matrix
from so_opt._src.curvature import hessian_trace as hessian_trace
from so_opt._src.curvature import hvp as hvp
from so_opt._src.curvature import linearize_ggn as linearize_ggn
from so_opt._src.curvature import linearize_hvp as linearize_hvp
from so_opt._src.lanczos import LanczosResult as LanczosResult
from so_opt._src.lanczos import lanczos as lanczos
from so_opt._src.lanczos import tridiagonal as tridiagonal
from so_opt import curvature as curvature
from so_opt import linalg as linalg

# --- line searches and adaptive rates (issues 2, 4) --------------------------
from so_opt._src.armijo import ArmijoState as ArmijoState
from so_opt._src.armijo import armijo_sgd as armijo_sgd
from so_opt._src.armijo import scale_by_armijo as scale_by_armijo
from so_opt._src.barzilai_borwein import BarzilaiBorweinState as BarzilaiBorweinState
from so_opt._src.barzilai_borwein import barzilai_borwein as barzilai_borwein
from so_opt._src.bold_driver import BoldDriverState as BoldDriverState
from so_opt._src.bold_driver import bold_driver as bold_driver
from so_opt._src.delta_bar_delta import DeltaBarDeltaState as DeltaBarDeltaState
from so_opt._src.delta_bar_delta import delta_bar_delta as delta_bar_delta
from so_opt._src.newbob import NewbobState as NewbobState
from so_opt._src.newbob import newbob as newbob
from so_opt._src.plateau import ReduceOnPlateauState as ReduceOnPlateauState
from so_opt._src.plateau import reduce_on_plateau as reduce_on_plateau
from so_opt._src.rprop import RpropState as RpropState
from so_opt._src.rprop import rprop as rprop

# --- quasi-Newton and the full-batch driver (issue 5) ------------------------
from so_opt._src.bfgs import BFGSState as BFGSState
from so_opt._src.bfgs import bfgs as bfgs
from so_opt._src.lbfgs import LBFGSState as LBFGSState
from so_opt._src.lbfgs import lbfgs as lbfgs
from so_opt._src.minimize import MinimizeResult as MinimizeResult
from so_opt._src.minimize import minimize as minimize
from so_opt._src.wolfe import ValueGradCache as ValueGradCache
from so_opt._src.wolfe import WolfeResult as WolfeResult
from so_opt._src.wolfe import WolfeState as WolfeState
from so_opt._src.wolfe import scale_by_wolfe as scale_by_wolfe
from so_opt._src.wolfe import value_and_grad_from_state as value_and_grad_from_state
from so_opt._src.wolfe import wolfe_line_search as wolfe_line_search

# --- Newton's family (issue 6) -----------------------------------------------
from so_opt._src.cg import CGReason as CGReason
from so_opt._src.cg import CGResult as CGResult
from so_opt._src.cg import truncated_cg as truncated_cg
from so_opt._src.hessian_free import HessianFreeState as HessianFreeState
from so_opt._src.hessian_free import hessian_free as hessian_free
from so_opt._src.newton import NewtonState as NewtonState
from so_opt._src.newton import newton as newton

# --- Flax NNX glue (issue 2) -------------------------------------------------
from so_opt._src.nnx_glue import NNXObjective as NNXObjective
from so_opt._src.nnx_glue import nnx_objective as nnx_objective

try:
    __version__ = _metadata.version("so-opt")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"

# Submodules above the optimizers (problems and data sets, the runner, sharding)
# are imported on first use, so that `so_opt.problems` works after a plain
# `import so_opt` without loading them for users who never touch them.
_LAZY_SUBMODULES = ("problems", "runner", "sharding")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"so_opt.{name}")
    raise AttributeError(f"module 'so_opt' has no attribute {name!r}")
