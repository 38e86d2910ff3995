"""Curvature of the training objective at θˢ: Gauss-Newton, Hessian or identity.

G = (1/N) Σ_i J_iᵀ H_h,i J_i + ∇²R   (J_i = ∂h/∂θ, H_h = ∇²_h L)
H = ∇²J(θˢ)
Dense matrices are built in batches of training points; their size is checked first.
"""

import torch
from torch.func import hessian, jacrev, vmap

from ._gradients import batch_slices

CURVATURES = ("gauss_newton", "hessian", "identity")

#: default ceiling for one dense p × p matrix (bytes)
DENSE_LIMIT_BYTES = 2 * 1024**3


def check_dense_size(n_params, dtype, limit_bytes=DENSE_LIMIT_BYTES):
    """Refuse to allocate a p × p matrix that does not fit under ``limit_bytes``."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    needed = n_params * n_params * itemsize
    if needed > limit_bytes:
        raise MemoryError(
            f"A dense {n_params} × {n_params} curvature matrix needs {needed / 1024**3:.1f} GiB, "
            f"more than the {limit_bytes / 1024**3:.1f} GiB allowed. Use solver='cg' or "
            "solver='lissa', which only need curvature-vector products."
        )
    return needed


def dense_curvature(adapter, theta, inputs, targets, kind, batch_size=1024, weights=None):
    """The (p, p) curvature matrix of ``kind`` at ``theta`` on the training data.

    ``weights`` (shape (N,)) weight each example's term, as in the weighted objective
    (1/N) Σ w_i L_i + R; None means all ones.
    """
    n_params = theta.numel()
    check_dense_size(n_params, theta.dtype)
    if kind == "identity":
        return torch.eye(n_params, dtype=theta.dtype, device=theta.device)
    if kind == "gauss_newton":
        if adapter.linear_layout:
            data_term = _linear_gauss_newton(adapter, theta, inputs, weights, batch_size)
        else:
            data_term = _generic_gauss_newton(adapter, theta, inputs, weights, batch_size)
    elif kind == "hessian":
        data_term = _data_hessian(adapter, theta, inputs, targets, weights, batch_size)
    else:
        raise ValueError(f"Unknown curvature {kind!r}; choose one of {CURVATURES}.")
    data_term /= len(inputs)
    data_term.diagonal().add_(adapter.regularizer_diagonal())
    return data_term


def _linear_gauss_newton(adapter, theta, inputs, weights, batch_size):
    """Σ_i H_i ⊗ z̃_i z̃_iᵀ for h = W̃ z̃ — the Kronecker structure makes it one matmul."""
    k, width = adapter.n_outputs, inputs.shape[1]
    total = theta.new_zeros((width, k * k * width))
    for rows in batch_slices(len(inputs), batch_size):
        Z = inputs[rows]
        H = adapter.loss.output_hessian(adapter.outputs(theta, Z))  # (b, k, k)
        if weights is not None:
            H = H * weights[rows].reshape(-1, 1, 1)
        weighted = (H.reshape(len(Z), k * k, 1) * Z.unsqueeze(1)).reshape(len(Z), -1)
        total += Z.T @ weighted
    # total[e, (a, b, f)] = Σ H[a, b] z_e z_f  →  G[(a, e), (b, f)]
    return total.reshape(width, k, k, width).permute(1, 0, 2, 3).reshape(k * width, k * width)


def output_jacobians(adapter, theta, inputs):
    """J_i = ∂h(θ, x_i)/∂θ for each row, shape (n, k, p)."""

    def single(theta_, x):
        return adapter.outputs(theta_, x.unsqueeze(0))[0]

    return vmap(jacrev(single), in_dims=(None, 0))(theta, inputs)


def _generic_gauss_newton(adapter, theta, inputs, weights, batch_size):
    """Σ_i (A_i J_i)ᵀ(A_i J_i) with A_iᵀA_i = H_h,i, for any model."""
    n_params = theta.numel()
    total = theta.new_zeros((n_params, n_params))
    for rows in batch_slices(len(inputs), batch_size):
        jacobians = output_jacobians(adapter, theta, inputs[rows])
        with torch.no_grad():
            factor = adapter.loss.hessian_factor(adapter.outputs(theta, inputs[rows]))
            if weights is not None:
                factor = factor * weights[rows].sqrt().reshape(-1, 1, 1)
        stacked = (factor @ jacobians).reshape(-1, n_params)
        total += stacked.T @ stacked
    return total


def _data_hessian(adapter, theta, inputs, targets, weights, batch_size):
    """Σ_i ∇²_θ L_i by forward-over-reverse differentiation of each batch's summed loss."""
    n_params = theta.numel()
    total = theta.new_zeros((n_params, n_params))
    for rows in batch_slices(len(inputs), batch_size):

        def batch_loss(theta_, rows=rows):
            losses = adapter.loss(adapter.outputs(theta_, inputs[rows]), targets[rows])
            return losses.sum() if weights is None else (losses * weights[rows]).sum()

        total += hessian(batch_loss)(theta)
    return total
