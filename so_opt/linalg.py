"""Krylov linear algebra on curvature operators: Lanczos and truncated CG.

Lanczos (with full reorthogonalization) works on flat vectors and backs
:func:`so_opt.hessian_eigenvalues`; truncated CG (Steihaug) works on pytrees
and backs :func:`so_opt.hessian_free`. ``check_tree_like`` is the argument check
the curvature products apply to a ``vector`` against ``params``.
"""

from so_opt._src.cg import CGReason as CGReason
from so_opt._src.cg import CGResult as CGResult
from so_opt._src.cg import truncated_cg as truncated_cg
from so_opt._src.lanczos import LanczosResult as LanczosResult
from so_opt._src.lanczos import lanczos as lanczos
from so_opt._src.lanczos import ritz_values as ritz_values
from so_opt._src.lanczos import tridiagonal as tridiagonal
from so_opt._src.tree import check_tree_like as check_tree_like
