"""Damped Gauss-Newton for the response objectives, on the engine's products and CG.

The PBRF objective is a mean of convex output-space divergences plus quadratic terms, so its
Gauss-Newton matrix at any θ,

    G_F(θ) = (1/N) Σ_i J_iᵀ H_h,i J_i − ε J_mᵀ H_h,m J_m + diag(r) + λI,

(J_i = ∂h(θ, x_i)/∂θ, H_h = ∇²_h L at h(θ, x_i)) is positive semi-definite plus λI: the
removed point's own term only cancels its share of the sum (ε ≤ w_m/W). The PRF and warm
leave-one-out have the same Gauss-Newton matrix (that of the loss). Each step solves
G_F(θ_j) δ_j = −∇F_j(θ_j) for every removed point j at its own iterate θ_j by batched
conjugate gradient (:func:`~sklearn_influence._engine._cg.batched_conjugate_gradient`) on
the engine's Gauss-Newton products
(:func:`~sklearn_influence._engine._gauss_newton.gauss_newton_products_at`), to a relative
residual that tightens as the gradient falls (an inexact Newton method), then backtracks
along δ_j (Armijo). At θˢ the first PBRF step is exactly the linearized PBRF
θˢ + ε(G + λI)⁻¹∇L_m, so the response starts where the influence estimate stops and the
steps after it measure the nonlinearity.

Non-smooth objectives (ReLU, max-pool): a minimiser can sit on an activation kink, where the
gradient jumps and never becomes small. When the line search stalls, the copy is certified
by the minimum-norm element of the convex hull of gradients sampled in a small ball around
it (gradient sampling; Burke, Lewis & Overton, 2005), an estimate of the distance of 0 from
the Clarke subdifferential.
"""

import torch

from .._engine._cg import batched_conjugate_gradient
from .._engine._gauss_newton import activation_bytes_per_row, gauss_newton_products_at

#: gradients sampled around a stalled copy for its non-smooth certificate
N_SAMPLES = 8
#: radius of the sampling ball, relative to the copy's move ‖θ − θˢ‖
SAMPLE_RADIUS = 1e-3


class GaussNewtonModel:
    """Products with G_F(θ_j) for copies j of one response objective (see module doc).

    Parameters
    ----------
    adapter : ModelAdapter
    inputs : Tensor
        All training inputs (the data term averages over them).
    removed_inputs : Tensor
        Each copy's removed rows, shape (k, s, ...) (s = 1 for single points).
    removed_weights : Tensor of shape (k, s)
        w_m / W of each removed row (0 pads a group smaller than s): its Gauss-Newton share
        of the data term, taken out.
    removed_term : callable or None
        ``removed_term(thetas, vectors, copies)``: exact Hessian-vector products of what the
        removed rows contribute to the objective (their data term minus ε L_m). For the
        PBRF that is a *linear* function of the removed row's outputs, whose Gauss-Newton
        part is zero but whose Hessian −ε Σ_k ∂L/∂h_k(θˢ) ∇²h_k is not: with a small λ it
        decides the step, so it is kept exactly (one row per copy, cheap).
    damping : float
        λ.
    row_weights : Tensor or None
        w̃_i (mean 1) of a weighted model.
    """

    def __init__(self, adapter, inputs, removed_inputs, removed_weights, damping, row_weights=None,
                 *, dtype=None, preconditioner=None, removed_term=None):  # fmt: skip
        self.adapter = adapter
        self.removed_term = removed_term
        self.dtype = inputs.dtype if dtype is None else dtype
        self.inputs = inputs.to(self.dtype)
        self.removed_inputs = removed_inputs.to(self.dtype)
        self.removed_weights = removed_weights.to(self.dtype)
        self.row_weights = None if row_weights is None else row_weights.to(self.dtype)
        self.damping = float(damping)
        self.reg = adapter.regularizer_diagonal().to(self.dtype)
        self.preconditioner = preconditioner
        self._per_row = None

    def precondition(self, residuals, copies):
        """Rows of P⁻¹ r (the same P for every copy: a factored curvature at θˢ)."""
        if self.preconditioner is None:
            return residuals
        return self.preconditioner(residuals.to(self.dtype)).to(residuals.dtype)

    def _rows(self, theta, k):
        # k copies × rows × (primal, tangent, cotangent) activations under about 256 MiB
        if self._per_row is None:
            per_row = activation_bytes_per_row(self.adapter, theta, self.inputs[:2])
            self._per_row = max(per_row, 1.0)
        return max(64, int(2**28 // (4 * k * self._per_row)))

    def matmul(self, thetas, vectors, copies):
        """Rows of G_F(θ_j) v_j for the copies ``copies`` at ``thetas`` (their iterates)."""
        out_dtype = vectors.dtype
        thetas, vectors = thetas.to(self.dtype), vectors.to(self.dtype)
        rows = self._rows(thetas[0], len(thetas))
        data = gauss_newton_products_at(
            self.adapter, thetas, vectors, self.inputs, row_weights=self.row_weights,
            rows_per_batch=rows,
        )  # fmt: skip
        removed = gauss_newton_products_at(
            self.adapter, thetas, vectors, self.removed_inputs[copies],
            row_weights=self.removed_weights[copies], inputs_per_copy=True,
        )  # fmt: skip
        n = len(self.inputs)
        total = data / n - removed + (self.reg + self.damping) * vectors
        if self.removed_term is not None:
            total = total + self.removed_term(thetas, vectors, copies)
        return total.to(out_dtype)


def gauss_newton_minimize(
    full, model, reference, thetas, values, gradients, threshold, active, n_steps, *, n_iter,
    cg_maxiter=200, cg_tol=0.1, max_halvings=30, progress=None, backtrack, check=None,
    max_step=None,
):  # fmt: skip
    """Damped (line-searched) Gauss-Newton steps for every copy until it reaches its threshold.

    ``full(thetas, copies)`` gives values and gradients; ``model.matmul`` the Gauss-Newton
    products; ``backtrack`` the per-copy Armijo search (``_backtrack_copies``). ``active``
    and ``n_steps`` are updated in place.

    Returns ``(thetas, gradients, info)``: ``info`` holds ``first_step`` (the norm of each
    copy's first step, the linearized response), ``certified`` (bool, copies certified by
    sampled gradients at a kink), ``stalled`` (the line search could not decrease the
    objective) and ``n_products`` (Gauss-Newton products per copy).
    """
    k = len(thetas)
    device = thetas.device
    first_step = torch.zeros(k, dtype=thetas.dtype, device=device)
    stalled = torch.zeros(k, dtype=torch.bool, device=device)
    certified = torch.zeros(k, dtype=torch.bool, device=device)
    n_products = torch.zeros(k, dtype=torch.long, device=device)
    slack_factor = 64 * torch.finfo(thetas.dtype).eps
    active &= gradients.norm(dim=1) > threshold
    initial = gradients.norm(dim=1).clamp_min(1e-300)
    for step in range(1, n_iter + 1):
        rows = (active & ~stalled).nonzero().squeeze(1)
        if not len(rows):
            break
        # forcing term of the inexact Newton method: loose far from the optimum, tight
        # (superlinear convergence) near it
        ratio = gradients[rows].norm(dim=1) / initial[rows]
        forcing = torch.clamp(ratio.sqrt(), max=cg_tol) * 0.5

        def apply(vectors, part, rows=rows):
            return model.matmul(thetas[rows[part]], vectors, rows[part])

        def precondition(residuals, part, rows=rows):
            return model.precondition(residuals, rows[part])

        direction, _, products = batched_conjugate_gradient(
            apply, -gradients[rows], tol=forcing, maxiter=cg_maxiter, precondition=precondition
        )
        n_products[rows] += products // max(1, len(rows))
        first = first_step[rows] == 0
        first_step[rows[first]] = direction[first].norm(dim=1)
        slope = (gradients[rows] * direction).sum(1)
        descent = slope < 0
        # a direction that does not descend (rounding at the optimum): steepest descent
        direction[~descent] = -gradients[rows][~descent]
        if max_step is not None:  # the trust region of the PBRF
            length = direction.norm(dim=1).clamp_min(1e-300)
            direction *= (max_step[rows] / length).clamp(max=1.0).unsqueeze(1)
        slope = (gradients[rows] * direction).sum(1)
        new_thetas, new_values, new_gradients, accepted = backtrack(
            full, rows, thetas[rows], values[rows], slope, direction, slack_factor, max_halvings
        )
        n_steps[rows] += 1
        done = rows[accepted]
        thetas[done], values[done], gradients[done] = (
            new_thetas[accepted], new_values[accepted], new_gradients[accepted],
        )  # fmt: skip
        stalled[rows[~accepted]] = True
        active &= gradients.norm(dim=1) > threshold
        if check is not None:
            check(thetas, values, active)
        if progress is not None:
            progress(step, int(k - (active & ~stalled).sum()))
    # copies whose line search stalled above the threshold: the non-smooth certificate
    pending = (active & stalled).nonzero().squeeze(1)
    if len(pending):
        norms = sampled_gradient_norm(full, reference, thetas[pending], gradients[pending], pending)
        ok = norms <= threshold[pending]
        certified[pending[ok]] = True
        active[pending[ok]] = False
    info = {"first_step": first_step, "certified": certified, "stalled": stalled,
            "n_products": n_products}  # fmt: skip
    return thetas, gradients, info


def sampled_gradient_norm(full, reference, thetas, gradients, copies, *, n_samples=N_SAMPLES,
                          radius=SAMPLE_RADIUS, seed=0):  # fmt: skip
    """‖min-norm element of conv{∇F(θ), ∇F(θ + r u_1), …}‖ per copy (gradient sampling).

    The u_i are random directions of norm 1 (seeded), r = ``radius`` · ‖θ − θˢ‖. At a
    point on a kink of a piecewise-smooth objective the gradients on the two sides point in
    opposite directions and their convex hull contains a small vector although each gradient
    is large; at a point that is not (nearly) Clarke-stationary within r no combination is
    small. The minimum-norm element is found by Frank-Wolfe iterations on the simplex of the
    small Gram matrix (exact line search, a few hundred iterations: the Gram matrix has only
    ``n_samples + 1`` rows).
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    k, p = thetas.shape
    scale = radius * (thetas - reference).norm(dim=1).clamp_min(1e-12)
    samples = [gradients]
    for _ in range(n_samples):
        direction = torch.randn(k, p, generator=generator, dtype=thetas.dtype).to(thetas.device)
        direction *= (scale / direction.norm(dim=1)).unsqueeze(1)
        samples.append(full(thetas + direction, copies)[1])
    stacked = torch.stack(samples, 1)  # (k, m, p)
    gram = stacked @ stacked.transpose(1, 2)  # (k, m, m)
    weights = torch.zeros(k, stacked.shape[1], dtype=thetas.dtype, device=thetas.device)
    weights[:, 0] = 1.0
    for _ in range(300):
        grad = torch.einsum("kij,kj->ki", gram, weights)  # ∇ of ½ wᵀ Γ w
        vertex = grad.argmin(1)
        target = torch.nn.functional.one_hot(vertex, stacked.shape[1]).to(weights.dtype)
        delta = target - weights
        curvature = torch.einsum("ki,kij,kj->k", delta, gram, delta)
        slope = (grad * delta).sum(1)
        step = torch.where(curvature > 0, (-slope / curvature.clamp_min(1e-300)), 0.0)
        weights = weights + step.clamp(0.0, 1.0).unsqueeze(1) * delta
    value = torch.einsum("ki,kij,kj->k", weights, gram, weights).clamp_min(0.0)
    return value.sqrt()
