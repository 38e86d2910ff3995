"""The Taylor model of the other rows' gradient for exact all-row leave-one-out of a
one-output GLM, and the bound that certifies a refit made with it.

:class:`TaylorGradient` expands ∇J(θ* + Δ) to degree d in Δ from moments of the design
built once in O(N q C); :class:`RemainderBound` bounds what the Lagrange remainder does to a
refit. Both take the :class:`~._linear_loo.LinearLOOContext` of the model; the refits, the
certification and the choice of the degree live in :mod:`._linear_loo` (its module notes).
"""

import math

import torch

from .._adapters._losses import BinaryLogLoss

#: the degrees of the Taylor model tried, smallest first (moments of order degree + 1)
TAYLOR_DEGREES = (2, 3, 4)
#: chord iterations the cost model assumes per row, on either path
ASSUMED_ITERATIONS = 3
#: factor on the remainder bound for the rounding of its own evaluation (relative ~1e-13)
BOUND_SAFETY = 1.01
#: removed (or training) rows per block of the Taylor path: its monomials stay cache-sized
TAYLOR_BLOCK = 1024


def _monomial_plans(width, degree):
    """For d = 1 … ``degree``: (ends, 1/α!) of the monomials x^α with |α| = d.

    The monomials of degree d are ordered by their last (largest) variable j, and those
    ending in j are x_j times the monomials of degree d − 1 whose last variable is ≤ j: the
    first ``ends[j]`` of them. Each x^α appears once; products of contiguous slices, no
    gather.
    """
    plans, previous = [], [()]
    for _ in range(degree):
        ends, monomials = [], []
        for variable in range(width):
            end = sum(1 for m in previous if not m or m[-1] <= variable)
            ends.append(end)
            monomials.extend((*m, variable) for m in previous[:end])
        inverse_factorials = [
            1.0 / math.prod(math.factorial(m.count(v)) for v in set(m)) for m in monomials
        ]
        plans.append((ends, inverse_factorials))
        previous = monomials
    return plans


def _monomials(x, plans):
    """[x^α for |α| = 1, …, len(plans)], each of shape (B, C_d), for the rows x (B, q)."""
    values, current = [], x.new_ones((len(x), 1))
    for ends, _ in plans:
        current = torch.cat([current[:, :end] * x[:, j, None] for j, end in enumerate(ends)], dim=1)
        values.append(current)
    return values


def _output_derivatives(loss, outputs, targets, degree):
    """γ⁽ᵈ⁾ = ∂ᵈ⁺¹L/∂hᵈ⁺¹ for d = 0 … ``degree``, each of shape (N,), in closed form."""
    h, y = outputs[:, 0], targets[:, 0]
    if isinstance(loss, BinaryLogLoss):
        # σ' = u, σ'' = u(1 − 2σ), σ''' = u(1 − 6u), σ'''' = u(1 − 2σ)(1 − 12u), u = σ(h)σ(−h)
        u, tilt = torch.sigmoid(h) * torch.sigmoid(-h), torch.sigmoid(-h) - torch.sigmoid(h)
        series = [torch.sigmoid(h) - y, u, u * tilt, u * (1 - 6 * u), u * tilt * (1 - 12 * u)]
        series.append(u * (1 - 30 * u + 120 * u * u))  # σ⁽⁵⁾
        return series[: degree + 1]
    if loss.link == "identity":  # p = 0: γ = h − y
        return [h - y, torch.ones_like(h)] + [torch.zeros_like(h)] * (degree - 1)
    # log link: γ = e^{(2−p)h} − y e^{(1−p)h}, whose d-th derivative scales each exponent by aᵈ
    a, b = 2 - loss.power, 1 - loss.power
    first, second = torch.exp(a * h), y * torch.exp(b * h)
    return [a**d * first - b**d * second for d in range(degree + 1)]


def _derivative_bound_parts(loss, outputs, targets, n):
    """(βᵢ (N,), s) with |γ⁽ⁿ⁾(hᵢ + t)| ≤ βᵢ e^{s|t|} for every t, 3 ≤ n ≤ 6.

    Logistic: σ⁽ⁿ⁾ = σ' Pₙ(σ) with |Pₙ| ≤ 1 on [0, 1] for n ≤ 5 (1 − 6u, (1 − 2σ)(1 − 12u),
    1 − 30u + 120u², u = σ(1 − σ) ≤ ¼) and |P₆| < 1.82, and σ'(h + t) ≤ σ'(h) e^{|t|}
    (|d log σ'/dh| = |1 − 2σ| ≤ 1). Log link: |aⁿe^{a(h+t)} − y bⁿe^{b(h+t)}| ≤
    (|a|ⁿe^{ah} + |y||b|ⁿe^{bh}) e^{s|t|}, s = max(|a|, |b|). Normal: γ⁽ⁿ⁾ = 0.
    """
    h, y = outputs[:, 0], targets[:, 0]
    if isinstance(loss, BinaryLogLoss):
        return (1.0 if n <= 5 else 2.0) * torch.sigmoid(h) * torch.sigmoid(-h), 1.0
    if loss.link == "identity":
        return torch.zeros_like(h), 0.0
    a, b = 2 - loss.power, 1 - loss.power
    bound = abs(a) ** n * torch.exp(a * h) + abs(b) ** n * y.abs() * torch.exp(b * h)
    return bound, max(abs(a), abs(b))


class TaylorGradient:
    """∇J(θ* + Δ) to degree d in Δ, for one-output GLMs (:func:`._linear_loo.supports_taylor`).

    With δᵢ = z̃ᵢ·Δ and γ⁽ʲ⁾ᵢ the j-th derivative of ∂L/∂h at hᵢ*,

        ∇J(θ* + Δ) = ∇J(θ*) + HΔ + Σ_{j=2..d} (1/N) Σᵢ w̃ᵢ γ⁽ʲ⁾ᵢ δᵢʲ/j! z̃ᵢ + R(Δ),

    and δᵢʲ/j! = Σ_{|α|=j} z̃ᵢ^α Δ^α / α!, so each term is the (q × C_j) moment
    Mⱼ = (1/N) Σᵢ w̃ᵢ γ⁽ʲ⁾ᵢ z̃ᵢ (z̃ᵢ^α/α!)_α times the monomials of Δ: O(N q C_j) once, then
    O(q C_j) per evaluation where the exact gradient costs O(N q). :class:`RemainderBound`
    bounds what R does to a refit.
    """

    def __init__(self, context, degree):
        self.degree = degree
        self.plans = _monomial_plans(context.width, degree)
        loss, z, n = context.adapter.loss, context.inputs, context.n_train
        derivatives = _output_derivatives(loss, context.outputs, context.targets, degree)
        weights = context.row_weights
        self.base = (z.T @ (weights * derivatives[0])) / n + context.penalty * context.theta
        self.moments = [z.new_zeros((context.width, len(plan[1]))) for plan in self.plans[1:]]
        columns = sum(len(plan[1]) for plan in self.plans)
        for block in context.block_rows(n, 2 * columns, max_rows=TAYLOR_BLOCK):
            powers = _monomials(z[block], self.plans)
            for moment, power, derivative in zip(
                self.moments, powers[1:], derivatives[2:], strict=True
            ):
                moment += z[block].T @ ((weights[block] * derivative[block])[:, None] * power)
        for moment, plan in zip(self.moments, self.plans[1:], strict=True):
            moment *= torch.tensor(plan[1], dtype=z.dtype, device=z.device) / n

    def gradients(self, context, thetas, rows, scales):
        """∇J_{-m}(θ_m) of the model for a block of removed rows, (B, p), as
        ``_linear_loo._loo_gradients`` (the removed row's own term and the penalty exact)."""
        shifts = thetas - context.theta
        total = self.base + shifts @ context.matrix
        for moment, power in zip(self.moments, _monomials(shifts, self.plans)[1:], strict=True):
            total = total + power @ moment.T
        z = context.inputs[rows]
        outputs = (z * thetas).sum(1, keepdim=True)
        own = context.adapter.loss.output_gradient(outputs, context.targets[rows])
        penalty = (scales - 1)[:, None] * context.penalty * thetas
        return total - context.epsilons[rows, None] * own * z + penalty


class RemainderBound:
    """Bound on ‖θ̂_m − θ_m‖_∞ between the refit θ̂_m = θ* + Δ of a degree-d
    :class:`TaylorGradient` and the exact refit θ_m, for each removed row m.

    Row i's Lagrange remainder is ρᵢ = γ⁽ⁿ⁾(ξᵢ)δᵢⁿ/n!, n = d + 1, with |ξᵢ − hᵢ| ≤ |δᵢ| ≤
    b = maxᵢ‖z̃ᵢ‖ ‖Δ‖ ≤ b̄ (``reach``, one bound for every refit of the call; a refit beyond
    it is not certified), so |γ⁽ⁿ⁾(ξᵢ)| ≤ |γ⁽ⁿ⁾(hᵢ)| + b̄ βᵢ e^{sb̄} with βᵢ, s the bound of
    γ⁽ⁿ⁺¹⁾ (:func:`_derivative_bound_parts`), and R = (1/N) Σᵢ w̃ᵢ ρᵢ z̃ᵢ. The refit's error
    is P⁻¹R to first order, with P = H − ε_m a_m z̃_m z̃_mᵀ the chord matrix (Woodbury:
    P⁻¹ = H⁻¹ + c u uᵀ, u = H⁻¹z̃_m,
    c = ε_m a_m/(1 − h_m)), so

        ‖P⁻¹R‖_∞ ≤ S (1 + |c| ‖u‖_∞ ‖z̃_m‖_{H⁻¹} κ),    S = (1/N) Σᵢ w̃ᵢ |ρᵢ| ‖H⁻¹z̃ᵢ‖_∞,

    with κ = maxᵢ ‖z̃ᵢ‖_{H⁻¹}/‖H⁻¹z̃ᵢ‖_∞ (from |z̃_mᵀH⁻¹z̃ᵢ| ≤ ‖z̃_m‖_{H⁻¹}‖z̃ᵢ‖_{H⁻¹}). S is an
    even power δᵢ²ʳ summed with positive weights: the quadratic form vᵀGv in the monomials v
    of Δ of degree r = ⌊n/2⌋ (an odd n spends one |δᵢ| ≤ ‖z̃ᵢ‖‖Δ‖), G (C_r × C_r) built once
    in O(N C_r²), O(C_r²) per row. The curvature of these families along the segment stays
    within a factor e^{sb} of P's (their output curvatures are positive and change by at
    most e^{s|t|}), which a factor e^{sb} covers; ``BOUND_SAFETY`` covers the bound's
    rounding. A refit is certified when the bound is below its rounding floor.
    """

    def __init__(self, context, order, reach):
        z, n, loss = context.inputs, context.n_train, context.adapter.loss
        outputs, targets = context.outputs, context.targets
        next_bound, self.rate = _derivative_bound_parts(loss, outputs, targets, order + 1)
        derivative = _output_derivatives(loss, outputs, targets, order)[-1]
        base = derivative.abs() + reach * next_bound * math.exp(self.rate * reach)
        self.order, self.half, self.reach = order, order // 2, reach
        self.zmax = float(z.norm(dim=1).max())
        projected = z @ context.inverse
        dual_norms = (projected * z).sum(1).clamp(min=0).sqrt()
        sup_norms = projected.abs().amax(1)
        self.kappa = float((dual_norms / sup_norms).max())
        weights = context.row_weights * base * sup_norms
        if order % 2:  # |δᵢ|ⁿ ≤ δᵢⁿ⁻¹ ‖z̃ᵢ‖ ‖Δ‖: the row's norm in G, ‖Δ‖ per refit
            weights = weights * z.norm(dim=1)
        self.plans = _monomial_plans(context.width, self.half)
        scale = torch.tensor(self.plans[-1][1], dtype=z.dtype, device=z.device)
        power_scale = scale * math.factorial(self.half)  # (z·Δ)ʳ = Σ (r!/α!) z^α Δ^α
        self.gram = z.new_zeros((len(scale), len(scale)))
        for block in context.block_rows(n, 2 * len(scale), max_rows=TAYLOR_BLOCK):
            power = _monomials(z[block], self.plans)[-1] * power_scale
            self.gram += power.T @ (weights[block, None] * power)
        self.gram /= n

    def __call__(self, context, shifts, rows):
        """The bound for each row of a block: shifts Δ (B, p) of the removed ``rows`` (B,)."""
        reach = self.zmax * shifts.norm(dim=1)
        power = _monomials(shifts, self.plans)[-1]
        even = ((power @ self.gram) * power).sum(1)
        if self.order % 2:
            even = even * shifts.norm(dim=1)
        growth = torch.exp(self.rate * reach)  # the curvature along the segment
        remainder = BOUND_SAFETY * growth * even / math.factorial(self.order)
        projected, _, scaled, gram = context.woodbury_parts(rows)
        leverage, room = (scaled * gram)[:, 0, 0], 1 - (scaled * gram)[:, 0, 0]
        coupling = (leverage / room).abs() * projected[:, 0].abs().amax(1) * self.kappa
        coupling = coupling / gram[:, 0, 0].clamp(min=0).sqrt()  # |c|‖u‖∞‖z‖_{H⁻¹}κ
        bound = remainder * (1 + coupling)
        return torch.where((room > 0) & (reach <= self.reach), bound, torch.inf)
