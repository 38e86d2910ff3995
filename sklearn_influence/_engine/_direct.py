"""The ``direct`` solver: exact solves through one cached eigendecomposition of C."""

import torch

from ._pinv import cutoff, inverse_eigenvalues
from ._solver_base import DenseSolver


class DirectSolver(DenseSolver):
    """Exact solves through one cached eigendecomposition C = V diag(w) Vᵀ.

    The eigendecomposition is computed on first use (or by :meth:`prepare`, under the
    solver's lock, so concurrent first calls factorize once) and kept, so a new damping costs
    matrix products only, never a new factorization. :meth:`quadratic` works in the
    eigenbasis: diag(G V diag(1/(w + λ)) Vᵀ Gᵀ) = Σ_j (G V)²_j / (w_j + λ). Eigenvalues
    below the shared cut-off relative to the largest (:mod:`._pinv`, numpy's ``pinv`` rule)
    are treated as zero (a pseudo-inverse), which makes ``damping=0`` well defined for
    singular curvature; a clearly negative w + λ (an indefinite Hessian) is an error.

    Parameters
    ----------
    curvature : Curvature
        Its dense matrix C is formed when the solver is built.
    seed : int or None
        Accepted for a uniform interface; unused.

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence._engine._direct import DirectSolver
    >>> M = torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)  # singular
    >>> DirectSolver.from_matrix(M).solve(torch.ones(1, 2, dtype=torch.float64), 0.0)
    tensor([[0.5000, 0.0000]], dtype=torch.float64)
    """

    name = "direct"

    def _init_factors(self):
        self._eigenvalues = None
        self._eigenvectors = None

    def prepare(self):
        """Factorize now (for example before the solver is cached or sent to workers)."""
        self._factor()
        return self

    def _factor(self):
        factors = self._eigenvalues, self._eigenvectors
        if factors[0] is None:
            with self._locked():
                if self._eigenvalues is None:
                    symmetric = 0.5 * (self.matrix + self.matrix.T)
                    eigenvalues, eigenvectors = torch.linalg.eigh(symmetric)
                    # publish the vectors first: readers test the values
                    self._eigenvectors = eigenvectors
                    self._eigenvalues = eigenvalues
                    self.n_factorizations += 1
                factors = self._eigenvalues, self._eigenvectors
        return factors

    def _inverse_eigenvalues(self, damping):
        eigenvalues, eigenvectors = self._factor()
        shifted = eigenvalues + damping
        largest = float(shifted.abs().max()) if shifted.numel() else 0.0
        tolerance = cutoff(largest, eigenvalues.numel(), eigenvalues.dtype)
        if float(shifted.min()) < -tolerance:
            raise ValueError(
                f"The damped curvature is not positive definite: its smallest eigenvalue is "
                f"{float(shifted.min()):.3g}. Use curvature='gauss_newton' or a damping larger "
                f"than {-float(eigenvalues.min()):.3g}."
            )
        return inverse_eigenvalues(shifted, tolerance), eigenvectors

    def solve(self, rhs, damping):
        inverse, vectors = self._inverse_eigenvalues(damping)
        return ((rhs.to(vectors.dtype) @ vectors) * inverse) @ vectors.T

    def quadratic(self, gradients, damping):
        inverse, vectors = self._inverse_eigenvalues(damping)
        return ((gradients.to(vectors.dtype) @ vectors) ** 2 * inverse).sum(1)
