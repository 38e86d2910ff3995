"""Curvature of the training objective at θˢ: Gauss-Newton, Hessian or identity.

G = (1/N) Σ_i J_iᵀ H_h,i J_i + ∇²R   (J_i = ∂h/∂θ, H_h = ∇²_h L)
H = ∇²J(θˢ)
Dense matrices are built in batches of training points; their size is checked first.
"""

import torch
from torch.func import grad, hessian, jacrev, jvp, vjp, vmap

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
    """Σ_i H_i ⊗ z̃_i z̃_iᵀ for h = W̃ z̃ — the Kronecker structure makes it one matmul.

    Only the output pairs a ≤ b are computed (H_i is symmetric); the other half of the
    blocks are their transposes.
    """
    k, width = adapter.n_outputs, inputs.shape[1]
    first, second = torch.triu_indices(k, k, device=inputs.device)
    total = theta.new_zeros((width, len(first) * width))
    for rows in batch_slices(len(inputs), batch_size):
        Z = inputs[rows]
        H = adapter.loss.output_hessian(adapter.outputs(theta, Z))  # (b, k, k)
        if weights is not None:
            H = H * weights[rows].reshape(-1, 1, 1)
        weighted = (H[:, first, second].unsqueeze(2) * Z.unsqueeze(1)).reshape(len(Z), -1)
        total += Z.T @ weighted
    # total[e, (pair, f)] = Σ_i H_i[a, b] z_e z_f for pair = (a, b), a ≤ b
    blocks = total.reshape(width, len(first), width).transpose(0, 1)
    matrix = theta.new_zeros((k, k, width, width))
    matrix[first, second] = blocks
    matrix[second, first] = blocks.transpose(1, 2)
    return matrix.permute(0, 2, 1, 3).reshape(k * width, k * width)


def output_jacobians(adapter, theta, inputs):
    """J_i = ∂h(θ, x_i)/∂θ for each row, shape (n, k, p)."""

    def single(theta_, x):
        return adapter.outputs(theta_, x.unsqueeze(0))[0]

    return vmap(jacrev(single), in_dims=(None, 0))(theta, inputs)


def _whitened_jacobians(adapter, theta, inputs, weights, rows_per_batch):
    """A_i J_i per batch of rows, shape (b, k, p), with A_iᵀA_i = w_i H_h,i."""
    for rows in batch_slices(len(inputs), rows_per_batch):
        jacobians = output_jacobians(adapter, theta, inputs[rows])
        with torch.no_grad():
            factor = adapter.loss.hessian_factor(adapter.outputs(theta, inputs[rows]))
            if weights is not None:
                factor = factor * weights[rows].sqrt().reshape(-1, 1, 1)
            whitened = factor @ jacobians
        # yield outside no_grad: a suspended generator would leave grad mode off for the caller
        yield whitened


def _generic_gauss_newton(adapter, theta, inputs, weights, batch_size):
    """Σ_i (A_i J_i)ᵀ(A_i J_i) with A_iᵀA_i = H_h,i, for any model."""
    n_params = theta.numel()
    total = theta.new_zeros((n_params, n_params))
    for whitened in _whitened_jacobians(adapter, theta, inputs, weights, batch_size):
        stacked = whitened.reshape(-1, n_params)
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


# -- matrix-free products -----------------------------------------------------------------
def gauss_newton_products(adapter, theta, inputs, vectors, batch_size=1024, weights=None):
    """Rows of V G for a block of vectors V (m, p), without forming G.

    G = (1/N) Σ_i w_i J_iᵀ H_h,i J_i + diag(r). Per batch of training rows: one forward
    pass, the output Jacobian applied to all m vectors at once (forward mode, vmapped), the
    output Hessians, and the transposed Jacobian (reverse mode, vmapped over the m rows).
    """
    vectors = _as_block(vectors, theta)
    total = torch.zeros_like(vectors)
    for rows in batch_slices(len(inputs), batch_size):
        batch = inputs[rows]

        def outputs(theta_, batch=batch):
            return adapter.outputs(theta_, batch)

        values, pullback = vjp(outputs, theta)
        pushed = vmap(lambda v, f=outputs: jvp(f, (theta,), (v,))[1])(vectors)  # (m, b, k)
        with torch.no_grad():
            output_hessian = adapter.loss.output_hessian(values.detach())  # (b, k, k)
            if weights is not None:
                output_hessian = output_hessian * weights[rows].reshape(-1, 1, 1)
        curved = torch.einsum("bkl,mbl->mbk", output_hessian, pushed)
        total += vmap(pullback)(curved)[0]
    return _finish_products(adapter, total, vectors, len(inputs))


def hessian_products(adapter, theta, inputs, targets, vectors, batch_size=1024, weights=None):
    """Rows of V H for the Hessian H of the training objective (forward-over-reverse)."""
    vectors = _as_block(vectors, theta)
    total = torch.zeros_like(vectors)
    for rows in batch_slices(len(inputs), batch_size):

        def batch_loss(theta_, rows=rows):
            losses = adapter.loss(adapter.outputs(theta_, inputs[rows]), targets[rows])
            return losses.sum() if weights is None else (losses * weights[rows]).sum()

        gradient = grad(batch_loss)
        total += vmap(lambda v, g=gradient: jvp(g, (theta,), (v,))[1])(vectors)
    return _finish_products(adapter, total, vectors, len(inputs))


def gauss_newton_diagonal(adapter, theta, inputs, batch_size=1024, weights=None):
    """diag(G), exactly, from per-example output Jacobians (batched; memory b·k·p)."""
    total = torch.zeros_like(theta)
    rows_per_batch = _jacobian_rows(adapter, theta, batch_size)
    for whitened in _whitened_jacobians(adapter, theta, inputs, weights, rows_per_batch):
        total += (whitened**2).sum((0, 1))
    return total / len(inputs) + adapter.regularizer_diagonal()


class CurvatureOperator:
    """The curvature C at θ on the training set as a matrix-free symmetric operator.

    ``matmul(V)`` returns the rows of V C for V of shape (m, p) (or (p,)); C is the same
    matrix as :func:`dense_curvature` of the same ``kind`` builds (data term averaged over
    the N training rows, plus the regularizer), but it is never formed.

    Parameters
    ----------
    adapter : ModelAdapter
    theta : Tensor of shape (p,)
    inputs, targets : Tensor
        Training inputs and targets (targets are only used by ``kind="hessian"``).
    kind : {"gauss_newton", "hessian", "identity"}
    batch_size : int
        Training rows per batch of a product.
    weights : Tensor of shape (N,) or None

    Examples
    --------
    >>> import torch
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence._adapters import make_adapter
    >>> from sklearn_influence._engine._curvature import CurvatureOperator, dense_curvature
    >>> X, y = torch.randn(20, 3).numpy(), torch.randn(20).numpy()
    >>> adapter = make_adapter(Ridge().fit(X, y), 20, torch.device("cpu"))
    >>> theta, inputs = adapter.parameters(), adapter.inputs(X)
    >>> operator = CurvatureOperator(adapter, theta, inputs, None, "gauss_newton")
    >>> V = torch.randn(2, theta.numel(), dtype=theta.dtype)
    >>> dense = dense_curvature(adapter, theta, inputs, None, "gauss_newton")
    >>> bool(torch.allclose(operator.matmul(V), V @ dense))
    True
    """

    def __init__(self, adapter, theta, inputs, targets, kind, batch_size=1024, weights=None):
        if kind not in CURVATURES:
            raise ValueError(f"Unknown curvature {kind!r}; choose one of {CURVATURES}.")
        if kind == "hessian" and targets is None:
            raise ValueError("The Hessian of the training objective needs the training targets.")
        self.adapter = adapter
        self.theta = theta
        self.inputs = inputs
        self.targets = targets
        self.kind = kind
        self.batch_size = batch_size
        self.weights = weights
        self.n_params = theta.numel()
        self.n_products = 0  # number of curvature-vector products so far (one per vector)

    def matmul(self, vectors):
        block = _as_block(vectors, self.theta)
        self.n_products += len(block)
        if self.kind == "identity":
            result = block.clone()
        elif self.kind == "gauss_newton":
            result = gauss_newton_products(
                self.adapter, self.theta, self.inputs, block, self.batch_size, self.weights
            )
        else:
            result = hessian_products(
                self.adapter,
                self.theta,
                self.inputs,
                self.targets,
                block,
                self.batch_size,
                self.weights,
            )
        return result if vectors.dim() == 2 else result[0]

    def subset(self, rows):
        """The same operator on a subset of the training rows (a stochastic estimate of C)."""
        return CurvatureOperator(
            self.adapter,
            self.theta,
            self.inputs[rows],
            None if self.targets is None else self.targets[rows],
            self.kind,
            self.batch_size,
            None if self.weights is None else self.weights[rows],
        )


def _as_block(vectors, theta):
    vectors = vectors.to(theta.dtype)
    return vectors.unsqueeze(0) if vectors.dim() == 1 else vectors


def _finish_products(adapter, total, vectors, n_train):
    return total / n_train + vectors * adapter.regularizer_diagonal()


def _jacobian_rows(adapter, theta, batch_size, limit_bytes=256 * 1024**2):
    """Rows per batch so that one batch of output Jacobians (b, k, p) stays under the limit."""
    itemsize = theta.element_size()
    per_row = max(1, adapter.n_outputs * theta.numel() * itemsize)
    return max(1, min(int(batch_size), limit_bytes // per_row))
