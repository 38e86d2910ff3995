"""The identity curvature C = I: influence as a plain gradient dot product (a baseline)."""

import torch

from ._curvature_base import Curvature


class Identity(Curvature):
    """C = I (no data term, no regularizer); needs neither targets nor a pass over the data.

    See :class:`~sklearn_influence._engine._curvature_base.Curvature` for the parameters.
    """

    name = "identity"
    needs_preconditioner = False

    def _products(self, block):
        return block.clone()

    def diagonal(self):
        return torch.ones_like(self.theta)

    def mean_eigenvalue(self, n_probes=4, seed=0):
        return 1.0

    def _dense(self):
        return torch.eye(self.n_params, dtype=self.dtype, device=self.device)
