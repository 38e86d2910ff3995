"""Shared plumbing of the matrix-free solvers (:mod:`._cg`, :mod:`._lissa`).

They only need curvature-vector products (``curvature.matmul``), so the p × p matrix is
never formed; right-hand sides are solved in blocks of ``block_size`` rows.
"""

from numbers import Integral

import torch
from sklearn.utils._param_validation import Interval

from ._gradients import batch_slices
from ._solver_base import Solver


class IterativeSolver(Solver):
    """Base of the matrix-free solvers: subclasses implement ``_solve_block(B, damping)``.

    Options: ``block_size`` (right-hand sides solved together, default 128) and ``seed``
    (seeds any randomness; None means 0).
    """

    options = {**Solver.options, "block_size": 128}
    option_constraints = {
        **Solver.option_constraints,
        "block_size": [Interval(Integral, 1, None, closed="left")],
    }

    def _setup(self):
        block_size = self.settings["block_size"]
        self.block_size = int(block_size)
        seed = self.settings["seed"]
        self.seed = 0 if seed is None else int(seed)

    def solve(self, rhs, damping):
        """Rows of B (C + λI)⁻¹, for B of shape (m, p)."""
        rhs = self._checked_rhs(rhs, damping)
        if len(rhs) == 0:
            return rhs.clone()
        return torch.cat(
            [
                self._solve_block(rhs[rows], float(damping))
                for rows in batch_slices(len(rhs), self.block_size)
            ]
        )

    def _solve_block(self, rhs, damping):
        raise NotImplementedError
