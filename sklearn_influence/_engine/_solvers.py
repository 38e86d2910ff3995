"""The solver registry: :data:`SOLVERS`, the factory :func:`make_solver` and ``"auto"``.

Every solver follows the contract of :class:`~sklearn_influence._engine._solver_base.Solver`
(prepare / solve / quadratic) and is built from a curvature object alone (training gradients
are streamed by the engine, never given to a solver):

==============  ===============================================  ===============
name            method                                           module
==============  ===============================================  ===============
``direct``      eigendecomposition of the dense C, kept for λ    ``_direct.py``
``cholesky``    Cholesky factor of C + λI per damping            ``_cholesky.py``
``cg``          preconditioned block CG, matrix-free             ``_cg.py``
``lissa``       stochastic Neumann series, matrix-free           ``_lissa.py``
``factored``    a factored curvature's own inverse (K-FAC, ...)  ``_factored.py``
``near_exact``  CG on the exact Gauss-Newton, rank-true tol      ``_near_exact.py``
==============  ===============================================  ===============

A new solver is one module plus one line in :data:`SOLVERS`.
"""

import os

from ._capabilities import check_pairing
from ._cg import CGSolver
from ._cholesky import CholeskySolver
from ._curvature_base import DENSE_LIMIT_BYTES
from ._direct import DirectSolver
from ._factored import FactoredSolver
from ._lissa import LissaSolver
from ._near_exact import NearExactSolver
from ._solver_base import DenseSolver, Solver

#: name → solver class
SOLVERS = {
    "direct": DirectSolver,
    "cholesky": CholeskySolver,
    "cg": CGSolver,
    "lissa": LissaSolver,
    "factored": FactoredSolver,
    "near_exact": NearExactSolver,
}


def make_solver(name, curvature, options=None):
    """Build the solver ``name`` (or ``"auto"``) for a curvature object.

    Parameters
    ----------
    name : str
        A key of :data:`SOLVERS`, or ``"auto"`` (see :func:`resolve_solver_name`).
    curvature : Curvature
    options : dict or None
        The solver's keyword options (``solver_options`` plus the internal ``seed``); an
        unknown option is a TypeError naming the accepted ones.

    Returns
    -------
    solver : Solver
        Its ``name`` attribute is the resolved name.

    Examples
    --------
    >>> from sklearn_influence._engine._solvers import make_solver
    >>> make_solver("newton", None)
    Traceback (most recent call last):
    ...
    ValueError: Unknown solver 'newton'; choose 'auto' or one of ['cg', 'cholesky', ...].
    """
    if name == "auto":
        resolved = resolve_solver_name(
            name, curvature.n_params, factored=curvature.factored, curvature_name=curvature.name
        )
    else:
        resolved = name
    if resolved not in SOLVERS:
        raise ValueError(f"Unknown solver {name!r}; choose 'auto' or one of {sorted(SOLVERS)}.")
    check_pairing(type(curvature), SOLVERS[resolved])
    return SOLVERS[resolved](curvature, **(options or {}))


def _available_memory_bytes():
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not available on this platform
        return None


def dense_fits_comfortably(n_params):
    """Whether a dense solve (matrix, eigenvectors, workspace: 3 float64 p × p) fits easily.

    The budget is the dense limit and a quarter of the memory available now.
    """
    needed = 3 * n_params * n_params * 8
    budget = DENSE_LIMIT_BYTES
    available = _available_memory_bytes()
    if available is not None:
        budget = min(budget, available // 4)
    return n_params <= AUTO_DIRECT_MAX_PARAMS and needed <= budget


def resolve_solver_name(name, n_params, factored=False, curvature_name="gauss_newton"):
    """``"auto"`` → ``"factored"`` for a factored curvature (K-FAC, EK-FAC: its own inverse,
    fast and approximate); otherwise ``"direct"`` when the dense matrix fits comfortably in
    memory, else ``"near_exact"`` for the Gauss-Newton matrix (block CG to the tolerance the
    rankings need: 5 instead of 7 iterations on the digits LeNet at Pearson 1.0000 with the
    exact answer) and ``"cg"`` for the other curvatures."""
    if name != "auto":
        return name
    if factored:
        return "factored"
    if dense_fits_comfortably(n_params):
        return "direct"
    return "near_exact" if curvature_name == "gauss_newton" else "cg"


#: largest parameter count for which ``solver="auto"`` forms and factorizes a dense matrix:
#: its eigendecomposition takes seconds (p = 9,610 took 6 minutes on a 2-core CPU, while
#: preconditioned CG answered the same influence matrix in about 2 s)
AUTO_DIRECT_MAX_PARAMS = 4_000


__all__ = [
    "SOLVERS",
    "CGSolver",
    "CholeskySolver",
    "DenseSolver",
    "DirectSolver",
    "FactoredSolver",
    "LissaSolver",
    "NearExactSolver",
    "Solver",
    "make_solver",
    "resolve_solver_name",
]
