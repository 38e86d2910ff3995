"""Exact leave-one-out of every training row of a linear model or GLM, at about a fit's cost.

For a model linear in its parameters (outputs h = W̃ z̃, DESIGN.md §2) the objective is
J(θ) = (1/N) Σ_i w̃_i L(h_i, t_i) + ½ θᵀDθ, and removing row m gives

    J_{-m}(θ) = J(θ) − ε_m L_m(θ) + (c_m − 1) ½ θᵀDθ,      ε_m = w̃_m / N,

with c_m = 1 (the penalty kept as it is: the package's leave-one-out objective) or the
factor by which scikit-learn's own refit rescales its penalty (``penalty="refit"``: 1 for
the sum-form objectives of ``LinearRegression``, ``Ridge`` and ``LogisticRegression``,
1 − ε_m for the GLMs' weighted means, (N − 1)/N for SGD's plain mean).

**One step (Sherman–Morrison / Woodbury).** With H = ∇²J(θ*) at the optimum θ*, the row's
output curvature A_m = ∇²_h L_m (k × k), its Jacobian J_m = I_k ⊗ z̃_mᵀ and its output
gradient γ_m = ∇_h L_m, the Newton step of J_{-m} from θ* with J_{-m}'s own Hessian
H − ε_m J_mᵀA_mJ_m is, by the push-through identity,

    Δ_m = ε_m (H⁻¹J_mᵀ) (I_k − ε_m A_m M_m)⁻¹ γ_m,      M_m = J_m H⁻¹ J_mᵀ,

(k = 1: Δ_m = ε_m γ_m H⁻¹z̃_m / (1 − h_m) with the leverage h_m = ε_m a_m z̃_mᵀH⁻¹z̃_m).
It needs one p × p inverse and O(p²) work per row: O(N p²) for all rows, in blocks of
rows sized by scikit-learn's ``working_memory``. For a squared loss with c_m = 1 the
leave-one-out objective is quadratic and this step is its exact minimiser (the closed form
of least squares and ridge regression).

**Exact refinement.** Otherwise (log-loss, softmax, Poisson, Gamma, Tweedie) the step is
refined by chord-Newton iterations θ ← θ − P_m⁻¹∇J_{-m}(θ) with the same Woodbury matrix
P_m (the exact Hessian, not the Fisher matrix, for non-canonical links). Each iteration
shrinks the error by a factor of order max leverage (the refit is O(1/N) away from θ*), so
two or three suffice. A row stops when its step falls below the rounding level of θ or the
step stalls there (no warnings for refits converged to round-off); rows whose iteration
does not contract are refit one by one by damped Newton (:func:`._newton.minimize_convex`),
and a :class:`~sklearn_influence.exceptions.ResponseConvergenceWarning` is issued only for a
refit that truly misses its tolerance.

*Exact gradients* (``refinement="exact"``, every model): the gradients of a block of B
removed rows are two matrix products with the N × q design (N × B·k outputs at once): an
iteration costs 4 N B k q flops, 4 N² k q for all rows — BLAS-3 work with a small constant
(a few seconds for all rows at N = 5,000, q = 21 on one core), but quadratic in N.

*Taylor model* (single-output GLMs: binary log-loss, Poisson, Gamma and Tweedie with the log
link, the normal GLM; chosen by ``refinement="auto"`` when cheaper): the other rows enter
∇J_{-m}(θ* + Δ) only through γ(hᵢ + z̃ᵢ·Δ), and Δ = O(1/N), so the gradient is expanded to
degree d = 2, 3 or 4 in Δ (:class:`._loo_taylor.TaylorGradient`): moments of the design
weighted by the derivatives of γ, over the C = Σ_{j≤d} C(q + j − 1, j) monomials of Δ, built
once in O(N q C) and evaluated in O(q C) per row and iteration — linear in N. Truncating at
degree 2 (the third-moment tensor) leaves errors of 1e-10 to 1e-12 at N = 5,000 … 20,000, q
= 21, far above round-off, so the degree is chosen per problem by a cost model
(:func:`_choose_taylor`). :class:`._loo_taylor.RemainderBound` bounds, in O(C_r²) per row,
the effect on each refit of the Lagrange remainder (sup of γ⁽ᵈ⁺¹⁾ over the segment,
propagated through the Woodbury-solved step); a refit is *certified* when the bound is below
its rounding floor (``ROUNDING_ULPS``), and the others are redone with the exact gradients
from the model's refit. As Δ shrinks as 1/N the certified fraction grows with N (for
logistic regression on N × 20: about 40 % at degree 3 for N = 10,000, 90 % for N = 20,000),
and the exact path's N² cost falls on the uncertified rows only. The cost in q grows as
q^(d+1)/d!: models whose moments exceed ``working_memory``, or for which the exact path is
cheaper (small N, large q), and softmax (k > 1) keep the exact gradients.
"""

import math
import warnings

import numpy as np
import torch
from sklearn import get_config
from sklearn.linear_model import SGDClassifier, SGDRegressor
from sklearn.utils import Bunch, gen_batches
from sklearn.utils._chunking import get_chunk_n_rows
from torch.func import jacrev, vmap

from .._adapters._glm import GeneralizedLinearModelAdapter, TweedieHalfDeviance
from .._adapters._losses import BinaryLogLoss, SignedSquaredError, SquaredError
from ..exceptions import NumericalWarning, ResponseConvergenceWarning
from ._groups import RemovedGroups, exact_group_refits
from ._loo_taylor import (
    ASSUMED_ITERATIONS,
    TAYLOR_BLOCK,
    TAYLOR_DEGREES,
    RemainderBound,
    TaylorGradient,
)
from ._newton import minimize_convex

#: chord-Newton iterations before a row is handed to the per-row damped Newton
MAX_CHORD_ITER = 8
#: a step is at the rounding level when below this many ulps of the parameters' scale
ROUNDING_ULPS = 64
PENALTIES = ("fixed", "refit")
REFINEMENTS = ("auto", "exact", "taylor")


# -- the model's pieces --------------------------------------------------------------------
class LinearLOOContext:
    """θ*, the design, weights and the curvature shared by every row's leave-one-out.

    Parameters
    ----------
    adapter : LinearModelAdapter
        A model linear in its parameters (``adapter.linear_layout``).
    theta : Tensor of shape (p,)
        The exact optimum θ* of the full objective (:func:`._newton.minimize_convex`).
    inputs, targets : Tensor
        The training rows as the adapter encodes them (z̃ with its ones column; (N, k)).
    curvature : {"gauss_newton", "hessian"}
        Output curvature of H and A_m: the Gauss-Newton (Fisher) weights of the one-step
        diagnostics, or the exact Hessian of the refinement (they differ only for a GLM
        with a non-canonical link).
    """

    def __init__(self, adapter, theta, inputs, targets, *, curvature="hessian"):
        self.adapter, self.theta = adapter, theta
        self.inputs, self.targets = inputs, targets
        self.n_train, self.width = inputs.shape
        self.n_outputs = adapter.n_outputs
        self.row_weights = (
            inputs.new_ones(self.n_train)
            if adapter.row_weights is None
            else adapter.row_weights.to(inputs.dtype)
        )
        self.epsilons = self.row_weights / self.n_train
        self.penalty = adapter.regularizer_diagonal().to(theta.dtype)
        self.kind = curvature if needs_exact_hessian(adapter) else "gauss_newton"
        with torch.no_grad():
            self.outputs = adapter.outputs(theta, inputs)
            self.curvatures = output_curvatures(adapter.loss, self.outputs, targets, self.kind)
            self.matrix = dense_curvature(inputs, self.row_weights, self.curvatures, self.penalty)
            self.inverse = symmetric_inverse(self.matrix)

    @property
    def is_quadratic(self):
        """Whether L is a squared error (its one step is its exact leave-one-out)."""
        return isinstance(self.adapter.loss, (SquaredError, SignedSquaredError))

    def block_rows(self, n_rows, vectors_per_row, max_rows=None):
        """Slices of ``n_rows`` removed rows whose working tensors fit ``working_memory``
        (``vectors_per_row`` float64 numbers per row), at most ``max_rows`` each."""
        row_bytes = 8 * max(1, vectors_per_row)
        chunk = get_chunk_n_rows(row_bytes=row_bytes, max_n_rows=max_rows or n_rows)
        return list(gen_batches(n_rows, max(1, chunk)))

    def woodbury_parts(self, rows):
        """(H⁻¹J_mᵀ of shape (B, k, p), (I − ε A M)⁻¹ of shape (B, k, k), ε A, M) for ``rows``."""
        k, q = self.n_outputs, self.width
        z = self.inputs[rows]
        # (H⁻¹ J_mᵀ)[b, a, :] = H⁻¹ (e_a ⊗ z_b): columns of H⁻¹ indexed (a, j), contracted on j
        columns = self.inverse.reshape(k, q, k * q).permute(1, 0, 2).reshape(q, k * k * q)
        projected = (z @ columns).reshape(len(z), k, k * q)
        gram = (projected.reshape(len(z), k * k, q) @ z.unsqueeze(-1)).reshape(len(z), k, k)
        scaled = self.epsilons[rows, None, None] * self.curvatures[rows]
        eye = torch.eye(k, dtype=z.dtype, device=z.device)
        return projected, torch.linalg.inv(eye - scaled @ gram), scaled, gram


def needs_exact_hessian(adapter):
    """Whether the output Hessian of L depends on the label (a non-canonical GLM link)."""
    loss = adapter.loss
    if not isinstance(loss, TweedieHalfDeviance):
        return False
    canonical = (loss.power == 1 and loss.link == "log") or (
        loss.power == 0 and loss.link == "identity"
    )
    return not canonical


def output_curvatures(loss, outputs, targets, kind):
    """∇²_h L per row, shape (N, k, k): Gauss-Newton (label-free) or the exact Hessian."""
    if kind == "gauss_newton":
        return loss.output_hessian(outputs)
    return vmap(jacrev(loss.output_gradient))(outputs, targets)


def dense_curvature(inputs, row_weights, curvatures, penalty, block=4096):
    """H = (1/N) Σ_i w̃_i J_iᵀ A_i J_i + diag(penalty), shape (k q, k q), in row blocks."""
    n, q = inputs.shape
    k = curvatures.shape[-1]
    total = inputs.new_zeros((k * k, q, q))
    for start in range(0, n, block):
        z = inputs[start : start + block]
        a = row_weights[start : start + block, None, None] * curvatures[start : start + block]
        weighted = a.reshape(len(z), k * k, 1) * z.unsqueeze(1)  # (B, k², q)
        total += torch.einsum("bcj,bl->cjl", weighted, z)
    matrix = total.reshape(k, k, q, q).permute(0, 2, 1, 3).reshape(k * q, k * q) / n
    return matrix + torch.diag(penalty)


def symmetric_inverse(matrix):
    """(Pseudo-)inverse of a symmetric PSD matrix by its eigendecomposition.

    Eigenvalues below p · eps times the largest are treated as zero, so that an unidentified
    direction (the softmax's common intercept shift) stays out of every step.
    """
    values, vectors = torch.linalg.eigh(matrix)
    cutoff = matrix.shape[0] * torch.finfo(matrix.dtype).eps * values.abs().max()
    kept = values > cutoff
    inverse_values = torch.where(kept, 1.0 / torch.where(kept, values, 1.0), 0.0)
    return (vectors * inverse_values) @ vectors.T


def penalty_scales(adapter, epsilons, penalty):
    """c_m for each removed row (see the module notes): ones for ``penalty="fixed"``."""
    if penalty not in PENALTIES:
        raise ValueError(f"Unknown penalty {penalty!r}; choose one of {PENALTIES}.")
    ones = torch.ones_like(epsilons)
    if penalty == "fixed":
        return ones
    if isinstance(adapter, GeneralizedLinearModelAdapter):
        return 1.0 - epsilons
    if isinstance(adapter.fixed_model, (SGDClassifier, SGDRegressor)):
        return ones * (adapter.n_train - 1) / adapter.n_train
    return ones


# -- one step ------------------------------------------------------------------------------
def one_step(context, removed):
    """Sherman–Morrison / Woodbury step and leverage of every row in ``removed``.

    Returns
    -------
    Bunch
        ``shifts`` (len(removed), p): Δ_m = θ_m − θ* of the one-step refit;
        ``leverages`` (len(removed),): the generalised leverage ε_m tr(A_m M_m), the
        diagonal of the (Fisher-weighted) hat matrix.
    """
    removed = torch.as_tensor(np.asarray(removed, dtype=np.int64), device=context.inputs.device)
    k, p = context.n_outputs, context.theta.numel()
    shifts = context.theta.new_empty((len(removed), p))
    leverages = context.theta.new_empty(len(removed))
    with torch.no_grad():
        gradients = context.adapter.loss.output_gradient(context.outputs, context.targets)
        for block in context.block_rows(len(removed), 3 * k * p + 2 * k * k):
            rows = removed[block]
            projected, inverse, scaled, gram = context.woodbury_parts(rows)
            coefficients = (inverse @ gradients[rows].unsqueeze(-1))[..., 0]  # (B, k)
            shifts[block] = context.epsilons[rows, None] * torch.einsum(
                "ba,bap->bp", coefficients, projected
            )
            leverages[block] = torch.diagonal(scaled @ gram, dim1=-2, dim2=-1).sum(-1)
    return Bunch(shifts=shifts, leverages=leverages)


# -- exact refinement ----------------------------------------------------------------------
def _loo_gradients(context, thetas, rows, scales):
    """∇J_{-m}(θ_m) for a block of removed rows: (B, p), two products with the design."""
    k, q, n = context.n_outputs, context.width, context.n_train
    adapter, z = context.adapter, context.inputs
    outputs = (z @ thetas.reshape(-1, q).T).reshape(n, len(rows), k)
    gammas = adapter.loss.output_gradient(outputs, context.targets.unsqueeze(1))
    own = gammas[rows, torch.arange(len(rows), device=z.device)]  # (B, k): row m at θ_m
    weighted = (context.row_weights[:, None, None] * gammas).reshape(n, -1)
    data = (z.T @ weighted).reshape(q, len(rows), k).permute(1, 2, 0).reshape(len(rows), -1) / n
    own_gradient = (own.unsqueeze(-1) * z[rows].unsqueeze(1)).reshape(len(rows), -1)
    penalty = context.penalty * thetas
    return data - context.epsilons[rows, None] * own_gradient + scales[:, None] * penalty


def _woodbury_solve(context, parts, rows, vectors):
    """P_m⁻¹ r_m for each row, P_m = H − ε_m J_mᵀ A_m J_m (push-through identity)."""
    projected, inverse, scaled, _ = parts
    base = vectors @ context.inverse  # H⁻¹ r (H symmetric)
    coupling = torch.einsum("bap,bp->ba", projected, vectors)  # J_m H⁻¹ r
    correction = (inverse @ (scaled @ coupling.unsqueeze(-1)))[..., 0]
    return base + torch.einsum("ba,bap->bp", correction, projected)


def _rounding_floor(context, thetas):
    """Per row, the size below which a chord step (or a refit's error) is rounding noise."""
    eps = torch.finfo(thetas.dtype).eps
    return ROUNDING_ULPS * eps * (thetas.abs().amax(1) + context.rounding_scale)


def _refine_block(context, start_shifts, rows, scales, gradient=_loo_gradients):
    """Chord-Newton from θ* + Δ⁰ for one block; (thetas, converged, iterations).

    ``gradient(context, thetas, rows, scales)`` gives ∇J_{-m}: exact (:func:`_loo_gradients`)
    or a :meth:`TaylorGradient.gradients` model.
    """
    thetas = context.theta + start_shifts
    parts = context.woodbury_parts(rows)
    floor = _rounding_floor(context, thetas)
    previous = torch.full_like(floor, float("inf"))
    converged = torch.zeros(len(rows), dtype=torch.bool, device=thetas.device)
    diverging = torch.zeros_like(converged)
    iterations = torch.zeros(len(rows), dtype=torch.int64, device=thetas.device)
    for _ in range(MAX_CHORD_ITER):
        active = torch.nonzero(~(converged | diverging))[:, 0]
        if not len(active):
            break
        subset = tuple(part[active] for part in parts)
        gradients = gradient(context, thetas[active], rows[active], scales[active])
        steps = _woodbury_solve(context, subset, rows[active], gradients)
        size, last = steps.abs().amax(1), previous[active]
        # a step that stalls within 1000 ulps of the floor is rounding noise: converged
        stalled = (size > 0.5 * last) & (size <= 1000 * floor[active])
        growing = (size > last) & ~stalled
        update = active[~growing]
        diverging[active[growing]] = True
        thetas[update] = thetas[update] - steps[~growing]
        iterations[update] += 1
        # after this step the error is about ρ·size, ρ = size / last the contraction rate
        predicted = torch.where(torch.isfinite(last), size * size / last, size)
        done = (size <= floor[active]) | stalled | (predicted <= floor[active])
        converged[active[done & ~growing]] = True
        previous[update] = size[~growing]
    return thetas, converged, iterations


def _rounding_scale(context):
    """‖H⁻¹ s‖_∞ with s the absolute-value scale of the gradient's terms at θ*.

    The gradient of J_{-m} is a sum of N terms of the size of s (its entries up to the
    summation's rounding), so a chord step cannot resolve θ better than eps · ‖H⁻¹s‖.
    """
    gradients = context.adapter.loss.output_gradient(context.outputs, context.targets)
    terms = (context.row_weights[:, None] * gradients.abs()).T @ context.inputs.abs()
    scale = terms.reshape(-1) / context.n_train + (context.penalty * context.theta).abs()
    return float((context.inverse.abs() @ scale).max())


def _newton_row(context, m, scale, theta, max_iter=30):
    """Full Newton on one row's leave-one-out objective, from ``theta``; (θ, converged).

    For the rare row whose chord iteration contracts slowly (a high-leverage outlier whose
    removal moves the curvature of the other rows): each step forms the exact Hessian of
    J_{-m} at the iterate, O(N p²).
    """
    adapter, loss = context.adapter, context.adapter.loss
    weights = context.row_weights.clone()
    weights[m] = 0.0
    row = torch.as_tensor([m], device=theta.device)
    floor = (
        ROUNDING_ULPS
        * torch.finfo(theta.dtype).eps
        * (float(theta.abs().max()) + context.rounding_scale)
    )
    previous = float("inf")
    for _ in range(max_iter):
        gradient = _loo_gradients(context, theta[None], row, theta.new_full((1,), scale))[0]
        outputs = adapter.outputs(theta, context.inputs)
        curvatures = output_curvatures(loss, outputs, context.targets, context.kind)
        matrix = dense_curvature(context.inputs, weights, curvatures, scale * context.penalty)
        step = symmetric_inverse(matrix) @ gradient
        size = float(step.abs().max())
        if size > previous and size > 1000 * floor:
            return theta, False
        theta = theta - step
        if size <= floor or (size > 0.5 * previous and size <= 1000 * floor):
            return theta, True
        previous = size
    return theta, False


# -- Taylor refinement (single-output GLMs; the model: ._loo_taylor) --------------------
def supports_taylor(context):
    """The Taylor refinement's models: one output, binary log-loss or a log-link Tweedie
    GLM (Poisson, Gamma, compound Poisson) or the normal one, H the exact Hessian (not the
    Fisher matrix of a non-canonical link: the model's linear term) and definite."""
    loss = context.adapter.loss
    family = isinstance(loss, BinaryLogLoss) or (
        isinstance(loss, TweedieHalfDeviance)
        and (loss.link == "log" or (loss.link == "identity" and loss.power == 0))
    )
    exact_hessian = context.kind == "hessian" or not needs_exact_hessian(context.adapter)
    if context.n_outputs != 1 or not family or not exact_hessian:
        return False
    return bool(torch.linalg.eigvalsh(context.matrix).min() > 0)


def exact_refits(context, removed, *, penalty="fixed", start=None, refinement="auto"):
    """Exact minimisers of J_{-m} for every m in ``removed``: Bunch(parameters, converged,
    n_iter, certified, taylor_degree), ``parameters`` of shape (len(removed), p).

    ``start`` is the one-step Bunch of :func:`one_step` on the same ``context`` (computed
    when None). ``refinement`` chooses the gradients of the chord iterations: ``"exact"``
    (every row's, O(N) per refit), ``"taylor"`` (the :class:`TaylorGradient` model, its
    uncertified refits redone exactly) or ``"auto"`` (the cheaper of the two by the cost
    model of :func:`_choose_taylor`). ``certified`` marks the refits of the Taylor model
    whose :class:`RemainderBound` is below the rounding floor; ``taylor_degree`` is its
    degree (0: not used).
    """
    if refinement not in REFINEMENTS:
        raise ValueError(f"Unknown refinement {refinement!r}; choose one of {REFINEMENTS}.")
    removed = np.asarray(removed, dtype=np.int64)
    index = torch.as_tensor(removed, device=context.inputs.device)
    if start is None:
        start = one_step(context, removed)
    scales = penalty_scales(context.adapter, context.epsilons[index], penalty)
    n = len(removed)
    certified = np.zeros(n, dtype=bool)
    if context.is_quadratic and bool((scales == 1).all()):
        parameters, converged = context.theta + start.shifts, np.ones(n, dtype=bool)
        _fallback(context, removed, scales, parameters, converged)
        return Bunch(
            parameters=parameters, converged=converged, n_iter=np.zeros(n, dtype=int),
            certified=certified, taylor_degree=0,
        )  # fmt: skip
    context.rounding_scale = _rounding_scale(context)
    with torch.no_grad():
        chosen = _choose_taylor(context, start.shifts, index, refinement)
        if chosen is None:
            parameters, converged, n_iter = _refine_rows(context, start.shifts, index, scales)
        else:
            model, bound = chosen
            parameters, converged, n_iter = _refine_rows(
                context, start.shifts, index, scales, model.gradients, model.degree
            )
            certified = converged & _certify(context, bound, parameters, index)
            redo = np.flatnonzero(~certified)
            if len(redo):  # exactly, from the model's refit (or the one step if it failed)
                shifts = parameters[redo] - context.theta
                usable = torch.isfinite(shifts).all(1) & torch.as_tensor(converged[redo])
                shifts = torch.where(usable[:, None], shifts, start.shifts[redo])
                parameters[redo], converged[redo], extra = _refine_rows(
                    context, shifts, index[redo], scales[redo]
                )
                n_iter[redo] += extra
    _fallback(context, removed, scales, parameters, converged)
    return Bunch(
        parameters=parameters, converged=converged, n_iter=n_iter, certified=certified,
        taylor_degree=0 if chosen is None else chosen[0].degree,
    )  # fmt: skip


def _refine_rows(context, shifts, index, scales, gradient=_loo_gradients, degree=0):
    """Chord-Newton for the removed rows ``index`` in row blocks: (θ_m, converged, n_iter)."""
    n = len(index)
    parameters = context.theta.new_empty((n, context.theta.numel()))
    converged = np.zeros(n, dtype=bool)
    n_iter = np.zeros(n, dtype=int)
    if degree:  # the model's monomials of each row, a few times over
        per_row = 4 * _monomial_count(context.width, degree) + 4 * context.theta.numel()
        cache_rows = TAYLOR_BLOCK
    else:  # the exact gradients: blocks of at most ~2²¹ outputs (cache-sized products)
        per_row = context.n_train * context.n_outputs * 4 + 4 * context.theta.numel()
        cache_rows = max(16, (1 << 21) // (context.n_train * context.n_outputs))
    for block in context.block_rows(n, per_row, cache_rows):
        thetas, done, steps = _refine_block(
            context, shifts[block], index[block], scales[block], gradient
        )
        parameters[block], converged[block], n_iter[block] = (
            thetas, done.cpu().numpy(), steps.cpu().numpy()
        )  # fmt: skip
    return parameters, converged, n_iter


def _certify(context, bound, parameters, index):
    """Whether each refit's :class:`RemainderBound` is below its rounding floor."""
    certified = np.zeros(len(index), dtype=bool)
    for block in context.block_rows(len(index), 4 * bound.gram.shape[0], TAYLOR_BLOCK):
        thetas = parameters[block]
        bounds = bound(context, thetas - context.theta, index[block])
        certified[block] = (bounds <= _rounding_floor(context, thetas)).cpu().numpy()
    return certified


def _monomial_count(width, degree):
    """Σ_{j=1..degree} C(width + j − 1, j): the monomials of a Taylor model of that degree."""
    return sum(math.comb(width + j - 1, j) for j in range(1, degree + 1))


#: removed rows whose one-step bound predicts the certified fraction in _choose_taylor
PREDICTION_ROWS = 512
#: the predicted certified fraction a Taylor model needs to be used (below it the model
#: is only a better start than the one step, and small problems keep the exact path)
MIN_CERTIFIED = 0.1


def _choose_taylor(context, shifts, index, refinement):
    """(TaylorGradient, RemainderBound) of the cheapest degree, or None for the exact path.

    Cost model in flops, with I = ``ASSUMED_ITERATIONS``: the exact path 4NqI per removed
    row; the degree-d model 2NqC (its moments, C = :func:`_monomial_count`) + 2N C_r² (the
    bound's G) + per row 2qC·I + 2C_r² (iterations and certificate) + 4Nq for the fraction
    1 − f of refits that the bound, evaluated at the one-step shifts of up to
    ``PREDICTION_ROWS`` rows, predicts uncertified (redone exactly: from the model's refit,
    one exact chord step usually reaches the rounding floor). ``"auto"`` takes the
    cheapest, among the degrees that certify at least ``MIN_CERTIFIED`` of the sample, if
    cheaper than the exact path; ``"taylor"`` the smallest degree that certifies half (else the
    largest that fits). Degrees whose moments exceed ``working_memory`` are skipped.
    """
    if refinement == "exact" or not supports_taylor(context):
        if refinement == "taylor":
            raise ValueError(
                "refinement='taylor' needs a single-output binary log-loss or log-link (or "
                "normal) GLM and a context with its exact, positive definite Hessian "
                "(curvature='hessian'); use refinement='exact'."
            )
        return None
    n, q, rows = context.n_train, context.width, len(index)
    best_cost = rows * 4 * n * q * ASSUMED_ITERATIONS if refinement == "auto" else math.inf
    budget = get_config()["working_memory"] * 2**20
    sample = torch.as_tensor(
        np.linspace(0, rows - 1, min(rows, PREDICTION_ROWS)).astype(np.int64),
        device=index.device,
    )
    floor = _rounding_floor(context, context.theta + shifts[sample])
    # b̄ of RemainderBound: twice the one-step reach of 99 % of the rows (a refit is within
    # O(h) of its one step); an outlier beyond it is not certified rather than loosening all
    sizes = shifts.norm(dim=1)
    reach = 2 * float(context.inputs.norm(dim=1).max() * torch.quantile(sizes, 0.99))
    chosen = None
    for degree in TAYLOR_DEGREES:
        columns = _monomial_count(q, degree)
        half_columns = math.comb(q + (degree + 1) // 2 - 1, (degree + 1) // 2)
        if 8 * (q * columns + half_columns**2) > budget:
            break
        fixed = 2 * n * (q * columns + half_columns**2)
        per_row = 2 * q * columns * ASSUMED_ITERATIONS + 2 * half_columns**2
        if fixed + rows * per_row >= best_cost:
            break  # a higher degree costs more still
        bound = RemainderBound(context, degree + 1, reach)
        predicted = bound(context, shifts[sample], index[sample]) <= floor
        fraction = float(predicted.double().mean())
        cost = fixed + rows * (per_row + (1 - fraction) * 4 * n * q)
        if refinement == "taylor":
            chosen = (degree, bound)
            if fraction >= 0.5:
                break
        elif fraction >= MIN_CERTIFIED and cost < best_cost:
            best_cost, chosen = cost, (degree, bound)
    if chosen is None:
        return None
    return TaylorGradient(context, chosen[0]), chosen[1]


def _fallback(context, removed, scales, parameters, converged):
    """Full Newton for the rows whose chord iteration did not converge; warn if any fail."""
    for position in np.flatnonzero(~converged):
        parameters[position], converged[position] = _newton_row(
            context, int(removed[position]), float(scales[position]), parameters[position]
        )
    finite = torch.isfinite(parameters).all(1).cpu().numpy()
    converged &= finite
    missed = np.flatnonzero(~converged)
    if not finite.all():
        warnings.warn(
            f"{int((~finite).sum())} leave-one-out refits are not defined (rows "
            f"{removed[~finite][:5].tolist()}): those rows have leverage 1, so the model "
            "without them is not identified and their refits are reported as nan or inf. "
            "Remove the features only they span, or regularize (Ridge, a smaller C).",
            NumericalWarning,
            stacklevel=3,
        )
    elif len(missed):
        warnings.warn(
            f"{len(missed)} of {len(removed)} leave-one-out refits did not reach the rounding "
            f"level of their parameters (rows {removed[missed[:5]].tolist()}"
            f"{', …' if len(missed) > 5 else ''}); their refits are approximate. This happens "
            "when removing a row leaves a nearly separable or singular problem: regularize "
            "more (a smaller C, a larger alpha).",
            ResponseConvergenceWarning,
            stacklevel=3,
        )


def leave_one_out_all_rows(
    adapter, theta, inputs, targets, removed, *, penalty="fixed", reference_is_optimum=False
):
    """``(reference, thetas, converged)``: θ* and the exact leave-one-out optima of ``removed``.

    ``theta`` is first refined to the exact optimum θ* of the full objective (unless
    ``reference_is_optimum``); the refits follow :func:`exact_refits`.
    """
    weights = adapter.row_weights
    reference = (
        theta if reference_is_optimum else minimize_convex(adapter, theta, inputs, targets, weights)
    )
    context = LinearLOOContext(adapter, reference, inputs, targets, curvature="hessian")
    result = exact_refits(context, removed, penalty=penalty)
    return reference, result.parameters, result.converged


def exact_leave_one_out(problem, indices, *, warm_start):
    """The leave-one-out response of :class:`~sklearn_influence.LeaveOneOut` for a convex
    linear model or GLM, all rows at once; None where it does not apply.

    A cold start is scikit-learn's refit (``penalty="refit"``: its penalty rescaled as its
    own objective rescales it); a warm start minimises J − ε_m L_m from θˢ (the package's
    objective, the penalty kept). SGD models are refit by SGD when cold (their refit is not
    an optimum), and non-convex GLMs keep the iterative path: both return None.
    """
    adapter = problem.adapter
    if not (adapter.linear_layout and adapter.is_convex):
        return None
    sgd = isinstance(getattr(adapter, "fixed_model", None), (SGDClassifier, SGDRegressor))
    if sgd and not warm_start:
        return None
    if isinstance(indices, RemovedGroups):  # a group: Newton on its own objective
        penalty = "fixed" if warm_start else "refit"
        scales = penalty_scales(adapter, indices.epsilons(problem), penalty)
        return exact_group_refits(problem, indices, scales)
    _, thetas, converged = leave_one_out_all_rows(
        adapter, problem.theta, problem.inputs, problem.targets, indices,
        penalty="fixed" if warm_start else "refit",
    )  # fmt: skip
    return Bunch(parameters=thetas, converged=converged)
