"""Solvers for damped curvature systems (C + λI) x = b.

A solver is built once per fit from the curvature and the training gradients T (N × p), and
then answers for any damping λ:

* ``solve(B, λ)``         → B (C + λI)⁻¹ for row vectors B (m × p);
* ``bilinear(Q, λ)``      → Q (C + λI)⁻¹ Tᵀ (m × N);
* ``self_quadratic(λ)``   → diag(T (C + λI)⁻¹ Tᵀ) (N,);
* ``prepare()``           → do any one-off work now (factorizations), returns the solver.

``direct`` and ``cholesky`` form the dense curvature; ``cg`` and ``lissa`` only need
curvature-vector products (:class:`~sklearn_influence._engine._curvature.CurvatureOperator`).

Scaling by 1/N and the sign convention belong to the scores module, not here.
"""

import math
import os

import torch

from ._curvature import DENSE_LIMIT_BYTES, dense_curvature
from ._iterative import CGSolver, LissaSolver


class DenseSolver:
    """Shared plumbing of the solvers that work on the dense curvature matrix."""

    def __init__(self, curvature, train_gradients):
        self.curvature = curvature
        self.train_gradients = train_gradients
        self.n_factorizations = 0

    @classmethod
    def build(cls, adapter, theta, inputs, targets, train_gradients, *, curvature, batch_size, **_):
        """Form the dense curvature on the training data and wrap it."""
        matrix = dense_curvature(adapter, theta, inputs, targets, curvature, batch_size)
        return cls(matrix, train_gradients)

    def bilinear(self, queries, damping):
        # solving for the queries (usually fewer than the training points) is the cheap side
        return self.solve(queries, damping) @ self.train_gradients.T


class DirectSolver(DenseSolver):
    """Exact solves through one cached eigendecomposition C = V diag(w) Vᵀ.

    The eigendecomposition is computed on first use (or by :meth:`prepare`) and kept, so a
    new damping costs matrix products only, never a new factorization. Eigenvalues with
    |w + λ| at round-off level are treated as zero (a pseudo-inverse), which makes
    ``damping=0`` well defined for singular curvature; a clearly negative w + λ (an
    indefinite Hessian) is an error.

    Parameters
    ----------
    curvature : Tensor of shape (p, p)
        Symmetric curvature matrix C.
    train_gradients : Tensor of shape (N, p)
    """

    name = "direct"

    def __init__(self, curvature, train_gradients):
        super().__init__(curvature, train_gradients)
        self._eigenvalues = None
        self._eigenvectors = None
        self._projected_train = None

    def prepare(self):
        """Factorize now (for example before the solver is cached or sent to workers)."""
        self._factor()
        return self

    def _factor(self):
        if self._eigenvalues is None:
            symmetric = 0.5 * (self.curvature + self.curvature.T)
            self._eigenvalues, self._eigenvectors = torch.linalg.eigh(symmetric)
            self.n_factorizations += 1
        return self._eigenvalues, self._eigenvectors

    def _inverse_eigenvalues(self, damping):
        eigenvalues, _ = self._factor()
        shifted = eigenvalues + damping
        scale = max(float(eigenvalues.abs().max()), float(damping), 1.0)
        tolerance = scale * _round_off_factor(eigenvalues) * torch.finfo(eigenvalues.dtype).eps
        if float(shifted.min()) < -tolerance:
            raise ValueError(
                f"The damped curvature is not positive definite: its smallest eigenvalue is "
                f"{float(shifted.min()):.3g}. Use curvature='gauss_newton' or a damping larger "
                f"than {-float(eigenvalues.min()):.3g}."
            )
        inverse = torch.zeros_like(shifted)
        kept = shifted > tolerance
        inverse[kept] = 1.0 / shifted[kept]
        return inverse

    def solve(self, rhs, damping):
        inverse = self._inverse_eigenvalues(damping)
        vectors = self._eigenvectors
        return ((rhs @ vectors) * inverse) @ vectors.T

    def self_quadratic(self, damping):
        inverse = self._inverse_eigenvalues(damping)
        if self._projected_train is None:
            self._projected_train = self.train_gradients @ self._eigenvectors
        return (self._projected_train**2 * inverse).sum(1)


def _round_off_factor(eigenvalues):
    """How many ε·scale the eigenvalues of a symmetric p × p matrix may be off.

    p (the classical worst case) in float64. In float32 — the curvature of a float32 network
    — p·ε grows to 1e-3 for p = 10⁴, the size of a typical damping, which would discard all
    the small eigenvalues that the damping is meant to regularise; the typical error of a
    backward-stable eigensolver, √p·ε, is used instead.
    """
    p = eigenvalues.numel()
    return p if eigenvalues.dtype == torch.float64 else math.sqrt(p)


class CholeskySolver(DenseSolver):
    """Exact solves through a Cholesky factor of C + λI, kept for each damping seen.

    Several times cheaper than an eigendecomposition for one damping value; each new damping
    costs a new (cheap) factorization. Prefer ``"direct"`` to sweep many dampings on one
    fitted object. Needs C + λI positive definite (use a positive damping for a singular
    curvature).
    """

    name = "cholesky"

    def __init__(self, curvature, train_gradients):
        super().__init__(curvature, train_gradients)
        self._factors = {}

    def prepare(self):
        return self

    def _factor(self, damping):
        key = float(damping)
        if key not in self._factors:
            damped = 0.5 * (self.curvature + self.curvature.T)
            damped.diagonal().add_(damping)
            factor, info = torch.linalg.cholesky_ex(damped)
            pivots = factor.diagonal() ** 2
            # a factor of a (numerically) singular matrix exists but amplifies round-off
            singular = float(pivots.min()) <= (
                len(pivots) * torch.finfo(pivots.dtype).eps * float(pivots.max())
            )
            if int(info) != 0 or singular:
                raise ValueError(
                    f"The damped curvature is singular or not positive definite at "
                    f"damping={damping:g}, so solver='cholesky' cannot factor it. Use a larger "
                    "damping, curvature='gauss_newton', or solver='direct' (a pseudo-inverse)."
                )
            self._factors[key] = factor
            self.n_factorizations += 1
        return self._factors[key]

    def solve(self, rhs, damping):
        return torch.cholesky_solve(rhs.T, self._factor(damping)).T

    def self_quadratic(self, damping):
        whitened = torch.linalg.solve_triangular(
            self._factor(damping), self.train_gradients.T, upper=False
        )
        return (whitened**2).sum(0)


SOLVERS = {
    "direct": DirectSolver,
    "cholesky": CholeskySolver,
    "cg": CGSolver,
    "lissa": LissaSolver,
}


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


def resolve_solver_name(name, n_params):
    """``"auto"`` → ``"direct"`` when the dense matrix fits comfortably in memory, else ``"cg"``."""
    if name != "auto":
        return name
    return "direct" if dense_fits_comfortably(n_params) else "cg"


#: largest parameter count for which ``solver="auto"`` forms and factorizes a dense matrix:
#: its eigendecomposition takes seconds (p = 9,610 took 6 minutes on a 2-core CPU, while
#: preconditioned CG answered the same influence matrix in about 2 s)
AUTO_DIRECT_MAX_PARAMS = 4_000
