"""Curvature tools on any pytree of floating-point params.

Hessian- and Gauss-Newton-vector products, the dense Hessian, its extremal
eigenvalues and its trace. The same names are exported at the top level
(``so_opt.hvp`` is ``so_opt.curvature.hvp``); this module groups them for
readers who want the curvature layer alone.
"""

from so_opt._src.curvature import (
    DEFAULT_MEMORY_BUDGET_BYTES as DEFAULT_MEMORY_BUDGET_BYTES,
)
from so_opt._src.curvature import HessianEigenvalues as HessianEigenvalues
from so_opt._src.curvature import HessianTrace as HessianTrace
from so_opt._src.curvature import ggn_vp as ggn_vp
from so_opt._src.curvature import hessian_eigenvalues as hessian_eigenvalues
from so_opt._src.curvature import hessian_matrix as hessian_matrix
from so_opt._src.curvature import hessian_trace as hessian_trace
from so_opt._src.curvature import hvp as hvp
from so_opt._src.curvature import linearize_ggn as linearize_ggn
from so_opt._src.curvature import linearize_hvp as linearize_hvp
