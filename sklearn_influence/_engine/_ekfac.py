"""EK-FAC: K-FAC's Kronecker eigenbasis with eigenvalues re-fitted to the exact Gauss-Newton
diagonal in that basis (George et al. 2018; Grosse et al. 2023). Factors: :mod:`._kronecker`."""

from ._gradients import batch_slices
from ._kronecker import _REFIT_ELEMENTS, KroneckerFactoredCurvature


class EKFAC(KroneckerFactoredCurvature):
    """Eigenvalue-corrected Kronecker-factored Gauss-Newton curvature, block-diagonal over layers.

    The eigenbasis Q_S ⊗ Q_A of K-FAC is kept and the eigenvalues are re-fitted, in a second
    pass over the training rows, to the diagonal of the layer's true Gauss-Newton block in
    that basis, from per-example, per-Hessian-factor-row layer gradients G_{i,r}:

        Λ*_{jk} = (1/N) Σ_i w_i Σ_r (Q_Sᵀ G_{i,r} Q_A)²_{jk}

    plus the regularizer's diagonal in the same basis. In that basis this is the
    Frobenius-closest diagonal, so each layer block is at least as close to the Gauss-Newton
    block as K-FAC's. ``data_eigenvalues`` of each entry of ``layers`` holds Λ*. Parameters
    and attributes as :class:`~sklearn_influence._engine._kfac.KFAC`.

    Examples
    --------
    >>> import torch
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn_influence._adapters import make_adapter
    >>> from sklearn_influence._engine._curvature import make_curvature
    >>> X = torch.randn(40, 3).numpy()
    >>> y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    >>> adapter = make_adapter(LogisticRegression().fit(X, y), 40, torch.device("cpu"))
    >>> theta, inputs, targets = adapter.parameters(), adapter.inputs(X), adapter.targets(y)
    >>> ekfac = make_curvature("ekfac", adapter, theta, inputs, targets)
    >>> exact = make_curvature("gauss_newton", adapter, theta, inputs, targets).dense()
    >>> kfac = make_curvature("kfac", adapter, theta, inputs, targets).dense()
    >>> bool(torch.dist(ekfac.dense(), exact) <= torch.dist(kfac, exact))
    True
    """

    name = "ekfac"

    def _eigenvalues(self, layers, kept):
        totals = [factors.A.new_zeros(factors.shape) for factors in layers]
        for squares in self.over_blocks(_eigenvalue_sums, kept, layers):
            for total, square in zip(totals, squares, strict=True):
                total += square
        for total, factors in zip(totals, layers, strict=True):
            factors.data_eigenvalues = total / max(self.n_train, 1)
            factors.eigenvalues = factors.data_eigenvalues + self.regularizer_in_eigenbasis(factors)


def _eigenvalue_sums(curvature, rows, kept, layers):
    """[Σ (Q_Sᵀ G Q_A)² per layer] of one training batch (a parallel task)."""
    pairs = curvature.block_pairs(rows, kept)
    return [_rotated_squares(factors, a, g) for factors, (a, g) in zip(layers, pairs, strict=True)]


def _rotated_squares(factors, a, g):
    """Σ over the batch's (i, r) of (Q_Sᵀ G_{i,r} Q_A)², G_{i,r} = Σ_t g_{i,r,t} ā_{i,t}ᵀ.

    ``a`` is (n, T, in+1) per example, ``g`` (n·r, T, out) per factor row (example-major).
    With one position, G is rank one and the square factorises into two small matmuls.
    """
    repeats = len(g) // max(len(a), 1)
    rotated_a = a @ factors.QA  # (n, T, in+1)
    rotated_g = g @ factors.QS  # (n·r, T, out)
    if a.shape[1] == 1:
        weights = (rotated_g[:, 0] ** 2).reshape(len(a), repeats, -1).sum(1)  # (n, out)
        return weights.T @ rotated_a[:, 0] ** 2
    out, width = factors.shape
    total = a.new_zeros(factors.shape)
    chunk = max(1, _REFIT_ELEMENTS // max(1, out * width * repeats))
    for examples in batch_slices(len(a), chunk):
        rows = slice(examples.start * repeats, examples.stop * repeats)
        expanded_a = rotated_a[examples].repeat_interleave(repeats, 0)  # (c·r, T, in+1)
        gradients = rotated_g[rows].transpose(1, 2) @ expanded_a  # (c·r, out, in+1)
        total += (gradients**2).sum(0)
    return total
