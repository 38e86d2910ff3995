"""The Hessian curvature H = ∇²J(θ) of the training objective (it needs the targets).

Products are reverse-over-reverse Hessian-vector products of each batch's summed loss
(H v = ∇_θ ⟨∇_θ L, v⟩), vmapped over a block of vectors; the dense matrix is built batch by
batch with ``jacrev(grad)``. H can be indefinite away from a minimum.

Reverse over reverse, not forward over reverse: PyTorch's forward-mode derivative of
``layer_norm``'s backward is wrong when both the normalised input and the LayerNorm weight
depend on θ (torch 2.13: F(p) = Σ layer_norm(x·a, w)³ with p = (a, w) gives a
``torch.func.hessian`` off by O(1) from the reverse-over-reverse one, which is symmetric and
agrees with finite differences), which is the case in every Transformer.
"""

import torch
from torch.func import grad, jacrev, vmap

from ._curvature_base import Curvature
from ._gradients import batch_slices


class Hessian(Curvature):
    """Hessian of the training objective (1/N) Σ w_i L_i + R.

    See :class:`~sklearn_influence._engine._curvature_base.Curvature` for the parameters;
    ``targets`` must be given.

    Examples
    --------
    >>> import torch
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn_influence._adapters import make_adapter
    >>> from sklearn_influence._engine._curvature import make_curvature
    >>> X, y = torch.randn(30, 3).numpy(), (torch.arange(30) % 2).numpy()
    >>> adapter = make_adapter(LogisticRegression().fit(X, y), 30, torch.device("cpu"))
    >>> theta, inputs, targets = adapter.parameters(), adapter.inputs(X), adapter.targets(y)
    >>> hessian = make_curvature("hessian", adapter, theta, inputs, targets)
    >>> gauss_newton = make_curvature("gauss_newton", adapter, theta, inputs, targets)
    >>> bool(torch.allclose(hessian.dense(), gauss_newton.dense()))  # linear model: equal
    True
    """

    name = "hessian"
    requires = frozenset({"targets"})

    def __init__(self, adapter, theta, inputs, targets=None, **settings):
        if targets is None:
            raise ValueError("The Hessian of the training objective needs the training targets.")
        super().__init__(adapter, theta, inputs, targets, **settings)

    def _batch_losses(self):
        """One function θ ↦ Σ_{i in batch} w_i L_i(θ) per batch of rows."""
        adapter, inputs, targets, weights = self.adapter, self.inputs, self.targets, self.weights
        for rows in batch_slices(self.n_train, self.batch_size):

            def batch_loss(theta_, rows=rows):
                losses = adapter.loss(adapter.outputs(theta_, inputs[rows]), targets[rows])
                return losses.sum() if weights is None else (losses * weights[rows]).sum()

            yield batch_loss

    def _products(self, block):
        theta = self.theta
        total = block.new_zeros(block.shape)
        for batch_loss in self._batch_losses():
            gradient = grad(batch_loss)

            def directional(theta_, v, g=gradient):
                return torch.dot(g(theta_), v)

            total += vmap(grad(directional), in_dims=(None, 0))(theta, block)
        return self._finish(total, block)

    def _dense(self):
        total = self.theta.new_zeros((self.n_params, self.n_params))
        for batch_loss in self._batch_losses():
            total += jacrev(grad(batch_loss))(self.theta)
        total /= self.n_train
        total.diagonal().add_(self.adapter.regularizer_diagonal())
        return total
