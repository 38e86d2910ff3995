"""Exact minimisation of convex training objectives (linear models) in torch.

Used for leave-one-out targets: the reference optimum of J and, for many removed points at
once, the optima of the leave-one-out objectives J_{-m} = (1/N) Σ_{i≠m} L_i + R. For linear
models the Gauss-Newton matrix is the Hessian, so Newton's method is exact and fast.
"""

import warnings

import torch
from torch.func import grad, vmap

from .._engine._curvature import make_curvature
from .._engine._direct import DirectSolver
from ..exceptions import ResponseConvergenceWarning

#: gradient-norm tolerance of the convex solves
CONVEX_TOL = 1e-12


def _warn_not_converged(what, max_iter, gradient_norm, tol):
    """The one warning of the convex solves that missed ``tol``, with what a user can do."""
    warnings.warn(
        f"{what} stopped after {max_iter} iterations with gradient norm {gradient_norm:.3g} > "
        f"{tol:g}. The minimum may not exist or be badly conditioned (separable classes, "
        "collinear features): regularise the model more (a larger alpha, a smaller C) or "
        "standardise the features, then refit.",
        ResponseConvergenceWarning,
        stacklevel=3,
    )


def _check_convex(adapter):
    if not adapter.linear_layout:
        raise ValueError(
            f"Exact convex minimisation needs a model linear in its parameters; "
            f"{type(adapter).__name__} is not. Use the iterative response functions instead."
        )


def _pseudo_inverse(matrix):
    """A solver applying the (pseudo-)inverse of a symmetric PSD matrix."""
    return DirectSolver.from_matrix(matrix)


def minimize_convex(adapter, theta, inputs, targets, weights=None, *, tol=CONVEX_TOL, max_iter=100):
    """Newton's method with backtracking from ``theta`` on (1/N) Σ w_i L_i + R.

    Returns the minimiser; warns with the final gradient norm if ``tol`` was not reached and
    the objective could still decrease by more than its rounding error.
    """
    _check_convex(adapter)

    def objective(theta_):
        return adapter.objective(theta_, inputs, targets, weights)

    theta = theta.detach().clone()
    for _ in range(max_iter):
        gradient = grad(objective)(theta)
        if float(gradient.norm()) <= tol:
            return theta
        hessian = make_curvature(
            "gauss_newton", adapter, theta, inputs, targets, weights=weights
        ).dense()
        step = _pseudo_inverse(hessian).solve(gradient.unsqueeze(0), 0.0)[0]
        value, slope, size = float(objective(theta)), float(gradient @ step), 1.0
        if _at_rounding_level(value, slope, gradient, tol):
            return theta
        while size > 1e-10 and float(objective(theta - size * step)) > value - 1e-4 * size * slope:
            size *= 0.5
        theta = theta - size * step
    _warn_not_converged("Newton's method", max_iter, float(grad(objective)(theta).norm()), tol)
    return theta


def _at_rounding_level(value, newton_decrement, gradient, tol):
    """Whether a Newton step could lower the objective only below its float rounding error.

    Near the optimum J(θ) − J* ≈ ½ gᵀH⁻¹g (the Newton decrement); once that is a few ulps of
    J the gradient norm cannot fall further (a large objective or badly scaled features put
    its floor above ``tol``). The gradient must also be small, so that a direction the
    curvature does not see (where the decrement says nothing) is not mistaken for convergence.
    """
    eps = torch.finfo(gradient.dtype).eps
    small_gradient = float(gradient.norm()) <= max(tol, 1e-6)
    return small_gradient and newton_decrement <= 16 * eps * max(abs(value), 1.0)


def leave_one_out_optima(
    adapter, reference, inputs, targets, removed, *, tol=CONVEX_TOL, max_iter=100,
    row_weights=None,
):  # fmt: skip
    """Minimisers of J_{-m} for every m in ``removed``, all at once, shape (len(removed), p).

    ``reference`` must minimise the full objective. Each θ_m is iterated as
    θ_m ← θ_m − P⁻¹ ∇J_{-m}(θ_m) with the fixed preconditioner P = ∇²J(reference); since
    J_{-m} differs from J by one example's term, the contraction per step is of order
    leverage/N, and the fixed point is the exact minimiser of J_{-m}. ``row_weights`` (w̃,
    or None) are the rows' weights of a weighted model; m's is set to zero.
    """
    _check_convex(adapter)
    n_removed = len(removed)
    weights = inputs.new_ones((n_removed, len(inputs)))
    if row_weights is not None:
        weights = weights * row_weights.to(inputs.dtype)
    weights[torch.arange(n_removed), torch.as_tensor(removed, device=inputs.device)] = 0.0
    preconditioner = _pseudo_inverse(
        make_curvature(
            "gauss_newton", adapter, reference, inputs, targets, weights=row_weights
        ).dense()
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
    _warn_not_converged(
        "Leave-one-out refits", max_iter, float(step_gradients.norm(dim=1).max()), tol
    )
    return thetas


def minimize_convex_batched(
    objective, starts, per_copy, curvature_at, *, tol=CONVEX_TOL, max_iter=100
):
    """Minimise ``objective(θ, *per_copy_j)`` for every copy j at once, from ``starts[j]``.

    A damped Newton method for a family of convex objectives that differ little from one
    another (one removed point each): every step uses one shared Newton matrix
    ``curvature_at(θ̄)``, evaluated at the mean iterate θ̄ and refreshed whenever an iteration
    fails to shrink the largest gradient norm tenfold, followed by a backtracking line search
    per copy. Objectives and gradients of all copies are evaluated together with
    :func:`torch.func.vmap`.

    Parameters
    ----------
    objective : callable
        ``objective(theta, *args) -> scalar`` for one copy.
    starts : Tensor of shape (k, p)
    per_copy : tuple of Tensor
        Arguments of ``objective`` with a leading axis of length k.
    curvature_at : callable
        ``curvature_at(theta) -> (p, p)`` positive semi-definite matrix close to the Hessian.
    tol : float
        Stop when every copy's gradient norm is at most ``tol``.
    max_iter : int

    Returns
    -------
    thetas : Tensor of shape (k, p)
    gradient_norms : Tensor of shape (k,)
        Final gradient norm of each copy (a warning is raised when one exceeds ``tol``).
    n_iter : int
        Newton iterations performed.
    """
    in_dims = (0,) * (1 + len(per_copy))
    values = vmap(objective, in_dims=in_dims)
    gradients = vmap(grad(objective), in_dims=in_dims)
    thetas = starts.detach().clone()
    preconditioner, previous = None, float("inf")
    for iteration in range(max_iter + 1):
        step_gradients = gradients(thetas, *per_copy)
        norms = step_gradients.norm(dim=1)
        largest = float(norms.max()) if len(norms) else 0.0
        if largest <= tol or iteration == max_iter:
            break
        if preconditioner is None or largest > 0.1 * previous:
            preconditioner = _pseudo_inverse(curvature_at(thetas.mean(0)))
        previous = largest
        steps = preconditioner.solve(step_gradients, 0.0)
        thetas = _backtrack(values, thetas, steps, step_gradients, per_copy)
    if largest > tol:
        _warn_not_converged("Batched Newton minimisation", max_iter, largest, tol)
    return thetas, norms, iteration


def _backtrack(values, thetas, steps, step_gradients, per_copy, max_halvings=40):
    """θ − s·step per copy with the largest s ∈ {1, ½, ¼, …} giving sufficient decrease.

    Near the optimum the objective changes by less than its rounding error, so a step that
    raises it by no more than a few ulps is accepted rather than halved to nothing.
    """
    current = values(thetas, *per_copy)
    slope = (step_gradients * steps).sum(1)
    slack = 16 * torch.finfo(current.dtype).eps * current.abs().clamp_min(1.0)
    sizes = torch.ones_like(current)
    for _ in range(max_halvings):
        trial = thetas - sizes.unsqueeze(1) * steps
        accepted = values(trial, *per_copy) <= current - 1e-4 * sizes * slope + slack
        if bool(accepted.all()):
            break
        sizes = torch.where(accepted, sizes, 0.5 * sizes)
    return thetas - sizes.unsqueeze(1) * steps
