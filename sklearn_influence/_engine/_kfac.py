"""K-FAC: the Gauss-Newton matrix as one Kronecker product S ⊗ A per layer (Martens & Grosse
2015; convolutions as in KFC, Grosse & Martens 2016). Factors: :mod:`._kronecker`."""

from ._kronecker import KroneckerFactoredCurvature


class KFAC(KroneckerFactoredCurvature):
    """Kronecker-factored Gauss-Newton curvature, block-diagonal over layers.

    Each ``nn.Linear``/``nn.Conv2d`` layer's block of the true Gauss-Newton matrix is
    approximated by S ⊗ A (output-gradient factor ⊗ input factor, θ's row-major (out, in)
    layout), held in the eigenbases of S and A with eigenvalues λ_S λ_Aᵀ plus the regularizer's
    diagonal in that basis; other parameters get the exact diagonal block. For a linear
    model with squared loss this is the Gauss-Newton matrix exactly. See
    :mod:`sklearn_influence._engine._kronecker` for the conventions and
    :class:`~sklearn_influence._engine._kronecker.KroneckerFactoredCurvature` for the
    attributes; ``inverse_matmul(V, damping)`` is the cheap damped inverse.

    Examples
    --------
    >>> import torch
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence._adapters import make_adapter
    >>> from sklearn_influence._engine._curvature import make_curvature
    >>> X, y = torch.randn(30, 3).numpy(), torch.randn(30).numpy()
    >>> adapter = make_adapter(Ridge(alpha=1.0).fit(X, y), 30, torch.device("cpu"))
    >>> theta, inputs = adapter.parameters(), adapter.inputs(X)
    >>> kfac = make_curvature("kfac", adapter, theta, inputs, None)
    >>> exact = make_curvature("gauss_newton", adapter, theta, inputs, None)
    >>> bool(torch.allclose(kfac.dense(), exact.dense()))  # exact for squared loss
    True
    >>> v = torch.randn(theta.numel(), dtype=theta.dtype)
    >>> x = kfac.inverse_matmul(v, damping=0.1)
    >>> bool(torch.allclose(kfac.matmul(x) + 0.1 * x, v))
    True
    """

    name = "kfac"

    def _eigenvalues(self, layers, kept):
        for factors in layers:
            product = factors.eigenvalues_S.unsqueeze(1) * factors.eigenvalues_A.unsqueeze(0)
            rest = 0.0 if factors.folded else self.regularizer_in_eigenbasis(factors)
            factors.eigenvalues = product + rest
