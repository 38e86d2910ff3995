"""Exact minimisation of convex training objectives (linear models) in torch.

Used for leave-one-out targets: the reference optimum of J and, for many removed points at
once, the optima of the leave-one-out objectives J_{-m} = (1/N) Σ_{i≠m} L_i + R. For linear
models the Gauss-Newton matrix is the Hessian, so Newton's method is exact and fast.
"""

import warnings

import torch
from torch.func import grad, vmap

from ._curvature import dense_curvature
from ._solvers import DirectSolver

#: gradient-norm tolerance of the convex solves
CONVEX_TOL = 1e-12


def _check_convex(adapter):
    if not adapter.linear_layout:
        raise ValueError(
            f"Exact convex minimisation needs a model linear in its parameters; "
            f"{type(adapter).__name__} is not. Use the iterative response functions instead."
        )


def _pseudo_inverse(matrix):
    """A solver applying the (pseudo-)inverse of a symmetric PSD matrix."""
    return DirectSolver(matrix, matrix.new_zeros((0, matrix.shape[0])))


def minimize_convex(adapter, theta, inputs, targets, weights=None, *, tol=CONVEX_TOL, max_iter=100):
    """Newton's method with backtracking from ``theta`` on (1/N) Σ w_i L_i + R.

    Returns the minimiser; warns with the final gradient norm if ``tol`` was not reached.
    """
    _check_convex(adapter)

    def objective(theta_):
        return adapter.objective(theta_, inputs, targets, weights)

    theta = theta.detach().clone()
    for _ in range(max_iter):
        gradient = grad(objective)(theta)
        if float(gradient.norm()) <= tol:
            return theta
        hessian = dense_curvature(adapter, theta, inputs, targets, "gauss_newton", weights=weights)
        step = _pseudo_inverse(hessian).solve(gradient.unsqueeze(0), 0.0)[0]
        value, slope, size = float(objective(theta)), float(gradient @ step), 1.0
        while size > 1e-10 and float(objective(theta - size * step)) > value - 1e-4 * size * slope:
            size *= 0.5
        theta = theta - size * step
    warnings.warn(
        f"Newton's method stopped after {max_iter} iterations with gradient norm "
        f"{float(grad(objective)(theta).norm()):.3g} > {tol:g}.",
        UserWarning,
        stacklevel=2,
    )
    return theta


def leave_one_out_optima(
    adapter, reference, inputs, targets, removed, *, tol=CONVEX_TOL, max_iter=100
):
    """Minimisers of J_{-m} for every m in ``removed``, all at once, shape (len(removed), p).

    ``reference`` must minimise the full objective. Each θ_m is iterated as
    θ_m ← θ_m − P⁻¹ ∇J_{-m}(θ_m) with the fixed preconditioner P = ∇²J(reference); since
    J_{-m} differs from J by one example's term, the contraction per step is of order
    leverage/N, and the fixed point is the exact minimiser of J_{-m}.
    """
    _check_convex(adapter)
    n_removed = len(removed)
    weights = inputs.new_ones((n_removed, len(inputs)))
    weights[torch.arange(n_removed), torch.as_tensor(removed, device=inputs.device)] = 0.0
    preconditioner = _pseudo_inverse(
        dense_curvature(adapter, reference, inputs, targets, "gauss_newton")
    )

    def objective(theta, weight):
        return adapter.objective(theta, inputs, targets, weight)

    gradients = vmap(grad(objective))
    thetas = reference.detach().unsqueeze(0).repeat(n_removed, 1)
    for _ in range(max_iter):
        step_gradients = gradients(thetas, weights)
        if float(step_gradients.norm(dim=1).max()) <= tol:
            return thetas
        thetas = thetas - preconditioner.solve(step_gradients, 0.0)
    warnings.warn(
        f"Leave-one-out refits stopped after {max_iter} iterations with gradient norm "
        f"{float(step_gradients.norm(dim=1).max()):.3g} > {tol:g}.",
        UserWarning,
        stacklevel=2,
    )
    return thetas
