"""Randomized Nyström preconditioner of the damped Gauss-Newton matrix, for block CG.

Built from Gauss-Newton-vector products only (a
:class:`~sklearn_influence._engine._gauss_newton.GaussNewton` curvature object), on the
training rows that carry most of the curvature.
"""

import math

import torch
from torch.func import jvp, vmap

from .._torch_utils import FORWARD_AD_LOCK, orthonormal_rows, small_dense_algebra
from ._curvature_base import DENSE_LIMIT_BYTES
from ._gauss_newton import GaussNewton
from ._gradients import batch_slices
from ._pinv import cutoff
from ._solver_base import LockedState


class NystromPreconditioner(LockedState):
    """Randomized Nyström preconditioner for C + λI (Frangella, Tropp & Udell, 2023).

    The damped curvature is split as C + λI = K + μI with μ = λ + r_min, r_min ≥ 0 the
    smallest coefficient of the regularizer's diagonal R, and K = (data term) + (R − r_min I)
    positive semi-definite. So the whole damped curvature enters, weight decay included: a
    uniform weight decay is part of the shift μ exactly like the damping, and the same
    matrix written as (weight decay λ, damping 0) or (weight decay 0, damping λ) gets the
    same preconditioner.

    A sketch Y = K̂ Ω of an approximation K̂ of K (Ω: orthonormal Gaussian columns) gives
    K̂ ≈ U diag(L) Uᵀ, and

        P⁻¹ = (L_s + μ) U (diag(L) + μI)⁻¹ Uᵀ + (I − UUᵀ),

    which maps the top s eigenvalues of K + μI close to L_s + μ. The sketch does not depend
    on λ, so a smaller damping later reuses and extends it.

    **Rank.** Block CG with m right-hand sides already resolves about m eigenvalues itself,
    so with the sketch of rank s its iterations grow like √((L_{s+m} + μ)/μ) · ln(2/tol)/2
    (L_j beyond the sketch extrapolated from the decay between L_{s/2} and L_s). The rank
    doubles from 64 while the products a doubling saves in that solve (m per iteration, over
    all N rows) exceed the s new sketch products it costs (on the sketch's rows only), up to
    ``max_rank``: a preconditioner sized by what it saves, not grown to its cap.

    K̂ is the data term restricted to the training rows that carry ``coverage`` of its trace
    (estimated with a few random Jacobian-vector products): for a well-fitted model most rows
    have a nearly zero output Hessian, so the sketch costs a fraction of a full product. The
    rows left out only make the preconditioner less exact, never the solution.

    Parameters
    ----------
    curvature : Curvature
        The full curvature (of any kind); its adapter, θ, rows and weights define the
        Gauss-Newton sketch.
    rank : "auto" or int
        Fixed sketch size, or "auto" for the rule above.
    max_rank : int
    coverage : float in (0, 1]
    seed : int
    tol : float, default=1e-3
        The CG tolerance the savings are estimated for.

    Notes
    -----
    The sketch grows lazily with the dampings it is used for. :meth:`for_damping` grows it
    under a lock and returns a snapshot of the factors, so concurrent solves (threads) each
    use complete factors that no other thread changes under them.
    """

    initial_rank = 64

    def __init__(self, curvature, *, rank="auto", max_rank=512, coverage=0.95, seed=0, tol=1e-3):
        self._init_lock()
        self.curvature = curvature
        self.rank = rank
        self.max_rank = int(max_rank)
        self.coverage = float(coverage)
        self.seed = int(seed)
        self.tol = float(tol)
        regularizer = curvature.adapter.regularizer_diagonal()
        #: r_min, the isotropic part of the regularizer: it joins the damping in the shift μ
        self.floor = float(regularizer.min().clamp_min(0.0)) if regularizer.numel() else 0.0
        self.n_sketch_rows = None
        self._sketch_operator = None
        self._omega = None
        self._sketch = None
        self._basis = None
        self._eigenvalues = None
        self._tail = None

    # -- sketch -------------------------------------------------------------------------
    def _rank_cap(self):
        """Largest sketch that keeps three p × s float64 arrays under 1/8 of the dense limit."""
        p = self.curvature.n_params
        cap = max(1, DENSE_LIMIT_BYTES // (8 * 3 * 8 * p))
        return int(min(self.max_rank, cap, p))

    def _build_sketch_operator(self):
        curvature = self.curvature
        rows = _rows_carrying_curvature(curvature, self.coverage, self.seed)
        # a fresh curvature whatever the given one holds, so that the sketch does not depend
        # on whether another thread has built the stored Jacobians yet (bitwise answers)
        sub = GaussNewton(
            curvature.adapter,
            curvature.theta,
            curvature.inputs[rows],
            curvature.targets_of(rows),
            batch_size=curvature.batch_size,
            weights=None if curvature.weights is None else curvature.weights[rows],
        )
        fraction = len(rows) / curvature.n_train
        # K = data term + (R − r_min I); sub.matmul adds R once, which is taken back out
        anisotropic = curvature.adapter.regularizer_diagonal() - self.floor
        regularizer = curvature.adapter.regularizer_diagonal()

        def sketch(block):
            # data term over the kept rows, scaled to the full 1/N, plus R − r_min I
            data = sub.matmul(block) - block * regularizer
            return fraction * data + block * anisotropic

        self.n_sketch_rows = len(rows)
        return sketch

    def _extend(self, new_rank):
        theta = self.curvature.theta
        p = theta.numel()
        old = 0 if self._omega is None else self._omega.shape[0]
        generator = torch.Generator().manual_seed(self.seed + 7919 * old)
        fresh = torch.randn(new_rank - old, p, generator=generator, dtype=torch.float64)
        fresh = fresh.to(theta.device)
        if self._omega is not None:
            previous = self._omega.to(torch.float64)
            for _ in range(2):  # twice is enough for orthogonality in floating point
                fresh = fresh - (fresh @ previous.T) @ previous
        fresh = orthonormal_rows(fresh)  # Cholesky-QR: far cheaper than a p × s Householder QR
        if self._sketch_operator is None:
            self._sketch_operator = self._build_sketch_operator()
        products = self._sketch_operator(fresh.to(theta.dtype)).to(torch.float64)
        if self._omega is None:
            self._omega, self._sketch = fresh, products
        else:
            self._omega = torch.cat([self._omega.to(torch.float64), fresh])
            self._sketch = torch.cat([self._sketch, products])
        self._factor()

    def _factor(self):
        """Stable Nyström factors from (Ω, Y) with a small shift ν (Algorithm 2.1 of the paper)."""
        omega, sketch = self._omega, self._sketch  # rows: (s, p)
        shift = math.sqrt(omega.shape[1]) * torch.finfo(self.curvature.theta.dtype).eps
        shift = shift * float(sketch.norm())
        shifted = sketch + shift * omega
        core = omega @ shifted.T
        core = 0.5 * (core + core.T)
        with small_dense_algebra():
            factor, info = torch.linalg.cholesky_ex(core)
            if int(info) != 0:  # not positive definite at this shift: raise it until it is
                jitter = float(torch.linalg.eigvalsh(core)[0].abs()) + shift
                core.diagonal().add_(2 * jitter)
                factor = torch.linalg.cholesky(core)
                shift += 2 * jitter
            whitened = torch.linalg.solve_triangular(factor, shifted, upper=False)  # (s, p)
            # SVD of the tall whitenedᵀ through its small Gram matrix (much cheaper than gesdd)
            squares, right = torch.linalg.eigh(whitened @ whitened.T)
        squares, right = squares.flip(0).clamp_min(0.0), right.flip(1)
        kept = squares > float(squares[0]) * torch.finfo(torch.float64).eps * len(squares)
        squares, right = squares[kept], right[:, kept]
        basis = (right.T @ whitened) / squares.sqrt().unsqueeze(1)
        self._basis = basis.to(self.curvature.theta.dtype)  # (s, p), orthonormal rows
        self._eigenvalues = torch.clamp(squares - shift, min=0.0)
        # a sketch wider than the rank of Ĉ recovers it exactly; its s-th eigenvalue is then 0
        self._tail = 0.0 if not bool(kept.all()) else float(self._eigenvalues[-1])

    def _ensure(self, damping, n_rhs):
        cap = self._rank_cap()
        if self.rank != "auto":
            target = min(int(self.rank), cap)
            if self._omega is None or self._omega.shape[0] < target:
                self._extend(target)
            return
        if self._omega is None:
            self._extend(min(self.initial_rank, cap))
        shift = damping + self.floor
        while self._omega.shape[0] < cap and self._doubling_pays(shift, n_rhs, cap):
            self._extend(min(2 * self._omega.shape[0], cap))

    def _doubling_pays(self, shift, n_rhs, cap):
        """Whether doubling the rank saves more CG products than its sketch costs.

        Savings: ``n_rhs`` products per iteration, times the iterations it removes under
        the model of the class docstring. Cost: the new sketch columns, each a product on
        the sketch's rows only (a fraction of a full product over the N rows).
        """
        rank, values = self._omega.shape[0], self._eigenvalues
        tail = self._tail
        if tail <= 0.25 * shift or len(values) < 2:
            return False  # already resolved (or the sketch found the whole rank)
        new = min(2 * rank, cap)
        half = float(values[max(len(values) // 2 - 1, 0)])
        # power-law decay L_j ≈ L_s (j/s)^(−α), α from L_{s/2} → L_s (α = 0 when flat)
        alpha = max(math.log(max(half, tail) / tail) / math.log(2.0), 0.0)

        def iterations(extra):  # √κ · ln(2/tol)/2 with L_{rank + extra} extrapolated
            value = tail * ((rank + extra) / rank) ** (-alpha)
            return math.sqrt((value + shift) / max(shift, 1e-300)) * math.log(2 / self.tol) / 2

        saved = n_rhs * (iterations(n_rhs) - iterations(new - rank + n_rhs))
        cost = (new - rank) * self.n_sketch_rows / max(self.curvature.n_train, 1)
        return saved > cost

    @property
    def sketch_rank(self):
        return 0 if self._omega is None else self._omega.shape[0]

    def for_damping(self, damping, n_rhs=1):
        """The map R ↦ R P⁻¹ for this damping, on a snapshot of the current factors.

        The sketch is grown (under the lock) as the damping and the number of right-hand
        sides solved together (``n_rhs``) make worthwhile; the returned function keeps its
        own references, so later growth for another damping does not change it.
        """
        with self._lock:
            self._ensure(damping, n_rhs)
            basis, eigenvalues, tail = self._basis, self._eigenvalues, self._tail
        eigenvalues = eigenvalues.to(basis.dtype)
        shift = damping + self.floor
        # the shared pseudo-inverse rule (:mod:`._pinv`): sketch eigenvalues at round-off
        # level are no curvature; their directions join the complement (scale 1), so that a
        # singular curvature at damping 0 never has its null space amplified
        threshold = cutoff(float(eigenvalues[0]), self.curvature.n_params, basis.dtype)
        resolved = eigenvalues > threshold
        if not bool(resolved.all()):
            basis, eigenvalues, tail = basis[resolved], eigenvalues[resolved], 0.0
        if shift <= threshold and len(eigenvalues):
            # no damping on a singular curvature: the smallest resolved eigenvalue stands in
            # for μ, which keeps P⁻¹ within [2 L_r / (L_0 + L_r), 1] on every direction
            shift = float(eigenvalues[-1])
        shift = max(shift, 1e-30)
        scale = (tail + shift) / (eigenvalues + shift)

        def apply(residuals):
            coefficients = residuals @ basis.T
            return residuals + (coefficients * scale - coefficients) @ basis

        return apply

    def apply(self, residuals, damping):
        """Rows of R P⁻¹ (the sketch sized for as many right-hand sides as rows of R)."""
        return self.for_damping(damping, len(residuals))(residuals)


def _rows_carrying_curvature(curvature, coverage, seed, n_probes=4):
    """Training rows that carry ``coverage`` of the Gauss-Newton trace, largest first.

    Row i contributes tr(A_i J_i J_iᵀ A_iᵀ); it is estimated as the mean of ‖A_i J_i ω‖² over
    a few Rademacher vectors ω (one vmapped forward-mode pass over the data).
    """
    adapter, theta, inputs = curvature.adapter, curvature.theta, curvature.inputs
    n = len(inputs)
    if coverage >= 1.0 or n == 0:
        return torch.arange(n, device=inputs.device)
    generator = torch.Generator().manual_seed(seed + 1)
    probes = torch.randint(0, 2, (n_probes, theta.numel()), generator=generator)
    probes = (2.0 * probes - 1.0).to(theta.device, theta.dtype)
    contributions = []
    for rows in batch_slices(n, curvature.batch_size):
        batch = inputs[rows]

        def outputs(theta_, batch=batch):
            return adapter.outputs(theta_, batch)

        with torch.no_grad(), FORWARD_AD_LOCK:
            values, pushed = vmap(lambda v, f=outputs: jvp(f, (theta,), (v,)))(probes)
            factor = adapter.loss.hessian_factor(values[0], curvature.targets_of(rows))
            curved = torch.einsum("brk,mbk->mbr", factor, pushed)
            contribution = (curved**2).sum(-1).mean(0)
        if curvature.weights is not None:
            contribution = contribution * curvature.weights[rows]
        contributions.append(contribution)
    return _covering(torch.cat(contributions), coverage, n)


def _covering(contributions, coverage, n):
    """The rows with the largest contributions that together carry ``coverage`` of the sum."""
    order = torch.argsort(contributions, descending=True)
    total = float(contributions.sum())
    if total <= 0:
        return order[:1]
    cumulative = torch.cumsum(contributions[order], 0)
    count = int((cumulative < coverage * total).sum()) + 1
    return order[: min(count, n)]
