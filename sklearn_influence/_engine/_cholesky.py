"""The ``cholesky`` solver: exact solves through a Cholesky factor of C + λI per damping."""

import torch

from ._solver_base import DenseSolver


class CholeskySolver(DenseSolver):
    """Exact solves through a Cholesky factor of C + λI, kept for each damping seen.

    Several times cheaper than an eigendecomposition for one damping value; each new damping
    costs a new (cheap) factorization. Prefer ``"direct"`` to sweep many dampings on one
    fitted object. :meth:`quadratic` is ‖L⁻¹ gᵀ‖² per row g, with L the factor of C + λI
    (one triangular solve). Factors are built under the solver's lock, so concurrent first
    calls factorize once. Needs C + λI positive definite (use a positive damping for a singular
    curvature).

    Parameters
    ----------
    curvature : Curvature
        Its dense matrix C is formed when the solver is built.
    seed : int or None
        Accepted for a uniform interface; unused.
    """

    name = "cholesky"

    def _init_factors(self):
        self._factors = {}

    def _factor(self, damping):
        key = float(damping)
        factor = self._factors.get(key)
        if factor is not None:
            return factor
        with self._locked():
            return self._factor_locked(damping, key)

    def _factor_locked(self, damping, key):
        if key not in self._factors:
            damped = 0.5 * (self.matrix + self.matrix.T)
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
        factor = self._factor(damping)
        return torch.cholesky_solve(rhs.to(factor.dtype).T, factor).T

    def quadratic(self, gradients, damping):
        factor = self._factor(damping)
        whitened = torch.linalg.solve_triangular(factor, gradients.to(factor.dtype).T, upper=False)
        return (whitened**2).sum(0)
