"""Solvers for damped curvature systems (C + λI) x = b.

A solver is built once per fit from the curvature and the training gradients T (N × p), and
then answers for any damping λ:

* ``solve(B, λ)``         → B (C + λI)⁻¹ for row vectors B (m × p);
* ``bilinear(Q, λ)``      → Q (C + λI)⁻¹ Tᵀ (m × N);
* ``self_quadratic(λ)``   → diag(T (C + λI)⁻¹ Tᵀ) (N,);
* ``prepare()``           → do any one-off work now (factorizations), returns the solver.

``direct`` and ``cholesky`` form the dense curvature; ``cg`` and ``lissa`` only need
curvature-vector products (:class:`~sklearn_influence._curvature.CurvatureOperator`).

Scaling by 1/N and the sign convention belong to the scores module, not here.
"""

import contextlib
import math
import os
import threading
import warnings

import torch
from sklearn.exceptions import ConvergenceWarning
from torch.func import jvp, vmap

from ._curvature import DENSE_LIMIT_BYTES, CurvatureOperator, dense_curvature
from ._gradients import batch_slices


class DenseSolver:
    """Shared plumbing of the solvers that work on the dense curvature matrix."""

    def __init__(self, curvature, train_gradients):
        self.curvature = curvature
        self.train_gradients = train_gradients
        self.n_factorizations = 0

    @classmethod
    def build(cls, adapter, theta, inputs, targets, train_gradients, *, curvature, batch_size, **_):
        """Form the dense curvature on the training data and wrap it."""
        matrix = dense_curvature(adapter, theta, inputs, targets, curvature, batch_size)
        return cls(matrix, train_gradients)

    def bilinear(self, queries, damping):
        # solving for the queries (usually fewer than the training points) is the cheap side
        return self.solve(queries, damping) @ self.train_gradients.T


class DirectSolver(DenseSolver):
    """Exact solves through one cached eigendecomposition C = V diag(w) Vᵀ.

    The eigendecomposition is computed on first use (or by :meth:`prepare`) and kept, so a
    new damping costs matrix products only, never a new factorization. Eigenvalues with
    |w + λ| at round-off level are treated as zero (a pseudo-inverse), which makes
    ``damping=0`` well defined for singular curvature; a clearly negative w + λ (an
    indefinite Hessian) is an error.

    Parameters
    ----------
    curvature : Tensor of shape (p, p)
        Symmetric curvature matrix C.
    train_gradients : Tensor of shape (N, p)
    """

    name = "direct"

    def __init__(self, curvature, train_gradients):
        super().__init__(curvature, train_gradients)
        self._eigenvalues = None
        self._eigenvectors = None
        self._projected_train = None

    def prepare(self):
        """Factorize now (for example before the solver is cached or sent to workers)."""
        self._factor()
        return self

    def _factor(self):
        if self._eigenvalues is None:
            symmetric = 0.5 * (self.curvature + self.curvature.T)
            self._eigenvalues, self._eigenvectors = torch.linalg.eigh(symmetric)
            self.n_factorizations += 1
        return self._eigenvalues, self._eigenvectors

    def _inverse_eigenvalues(self, damping):
        eigenvalues, _ = self._factor()
        shifted = eigenvalues + damping
        scale = max(float(eigenvalues.abs().max()), float(damping), 1.0)
        tolerance = scale * _round_off_factor(eigenvalues) * torch.finfo(eigenvalues.dtype).eps
        if float(shifted.min()) < -tolerance:
            raise ValueError(
                f"The damped curvature is not positive definite: its smallest eigenvalue is "
                f"{float(shifted.min()):.3g}. Use curvature='gauss_newton' or a damping larger "
                f"than {-float(eigenvalues.min()):.3g}."
            )
        inverse = torch.zeros_like(shifted)
        kept = shifted > tolerance
        inverse[kept] = 1.0 / shifted[kept]
        return inverse

    def solve(self, rhs, damping):
        inverse = self._inverse_eigenvalues(damping)
        vectors = self._eigenvectors
        return ((rhs @ vectors) * inverse) @ vectors.T

    def self_quadratic(self, damping):
        inverse = self._inverse_eigenvalues(damping)
        if self._projected_train is None:
            self._projected_train = self.train_gradients @ self._eigenvectors
        return (self._projected_train**2 * inverse).sum(1)


def _round_off_factor(eigenvalues):
    """How many ε·scale the eigenvalues of a symmetric p × p matrix may be off.

    p (the classical worst case) in float64. In float32 — the curvature of a float32 network
    — p·ε grows to 1e-3 for p = 10⁴, the size of a typical damping, which would discard all
    the small eigenvalues that the damping is meant to regularise; the typical error of a
    backward-stable eigensolver, √p·ε, is used instead.
    """
    p = eigenvalues.numel()
    return p if eigenvalues.dtype == torch.float64 else math.sqrt(p)


class CholeskySolver(DenseSolver):
    """Exact solves through a Cholesky factor of C + λI, kept for each damping seen.

    Several times cheaper than an eigendecomposition for one damping value; each new damping
    costs a new (cheap) factorization. Prefer ``"direct"`` to sweep many dampings on one
    fitted object. Needs C + λI positive definite (use a positive damping for a singular
    curvature).
    """

    name = "cholesky"

    def __init__(self, curvature, train_gradients):
        super().__init__(curvature, train_gradients)
        self._factors = {}

    def prepare(self):
        return self

    def _factor(self, damping):
        key = float(damping)
        if key not in self._factors:
            damped = 0.5 * (self.curvature + self.curvature.T)
            damped.diagonal().add_(damping)
            factor, info = torch.linalg.cholesky_ex(damped)
            pivots = factor.diagonal() ** 2
            # a factor of a (numerically) singular matrix exists but amplifies round-off
            singular = float(pivots.min()) <= (
                len(pivots) * torch.finfo(pivots.dtype).eps * float(pivots.max())
            )
            if int(info) != 0 or singular:
                raise ValueError(
                    f"The damped curvature is singular or not positive definite at "
                    f"damping={damping:g}, so solver='cholesky' cannot factor it. Use a larger "
                    "damping, curvature='gauss_newton', or solver='direct' (a pseudo-inverse)."
                )
            self._factors[key] = factor
            self.n_factorizations += 1
        return self._factors[key]

    def solve(self, rhs, damping):
        return torch.cholesky_solve(rhs.T, self._factor(damping)).T

    def self_quadratic(self, damping):
        whitened = torch.linalg.solve_triangular(
            self._factor(damping), self.train_gradients.T, upper=False
        )
        return (whitened**2).sum(0)


class IterativeSolver:
    """Shared plumbing of the matrix-free solvers: right-hand sides are solved in blocks.

    Subclasses implement ``_solve_block(B, damping)`` for at most ``block_size`` rows.
    """

    def __init__(self, operator, train_gradients, *, block_size=128, seed=None):
        if int(block_size) < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}.")
        self.operator = operator
        self.train_gradients = train_gradients
        self.block_size = int(block_size)
        self.seed = 0 if seed is None else int(seed)
        self.n_factorizations = 0  # nothing is ever factorized; kept for a uniform interface

    def prepare(self):
        return self

    def solve(self, rhs, damping):
        """Rows of B (C + λI)⁻¹, for B of shape (m, p)."""
        if float(damping) < 0:
            raise ValueError(f"damping must be >= 0, got {damping!r}.")
        rhs = rhs.to(self.operator.theta.dtype)
        if len(rhs) == 0:
            return rhs.clone()
        return torch.cat(
            [self._solve_block(rhs[rows], float(damping)) for rows in _slices(rhs, self.block_size)]
        )

    def bilinear(self, queries, damping):
        return self.solve(queries, damping) @ self.train_gradients.T

    def self_quadratic(self, damping):
        """diag(T (C + λI)⁻¹ Tᵀ): one solve per training point (in blocks), so N solves."""
        T = self.train_gradients
        if len(T) == 0:
            return T.new_zeros((0,))
        return torch.cat(
            [(self.solve(T[rows], damping) * T[rows]).sum(1) for rows in _slices(T, 1024)]
        )


def _slices(tensor, size):
    return batch_slices(len(tensor), size)


_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"depth": 0, "saved": None}


@contextlib.contextmanager
def small_dense_algebra():
    """Run small factorizations (m × m, s × s) on one thread.

    Multi-threaded LAPACK on matrices of a few hundred rows is dominated by thread barriers;
    on a busy machine each barrier can cost a scheduler time slice (a 100 × 100 eigh went
    from 1 ms to 0.8 s on a loaded 2-core machine). Nested and concurrent uses share one
    saved thread count, restored by the last to leave.
    """
    with _THREADS_LOCK:
        if _THREADS_STATE["depth"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _THREADS_STATE["depth"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["depth"] -= 1
            if _THREADS_STATE["depth"] == 0:
                torch.set_num_threads(_THREADS_STATE["saved"])


def _check_options(name, options, allowed):
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"Unknown solver_options {unknown} for solver={name!r}; it accepts {sorted(allowed)}."
        )


# -- conjugate gradient -------------------------------------------------------------------
class NystromPreconditioner:
    """Randomized Nyström preconditioner for C + λI (Frangella, Tropp & Udell, 2023).

    A sketch Y = Ĉ Ω of an approximation Ĉ of the Gauss-Newton matrix (Ω: orthonormal
    Gaussian columns) gives Ĉ ≈ U diag(L) Uᵀ, and

        P⁻¹ = (L_s + λ) U (diag(L) + λI)⁻¹ Uᵀ + (I − UUᵀ),

    which maps the top s eigenvalues of C + λI close to L_s + λ, so the preconditioned
    condition number is about (L_s + λ)/(λ + r_min), with r_min the smallest regularizer
    coefficient (a floor under the spectrum). The sketch does not depend on λ; its rank
    doubles from 64 until L_s ≤ λ/4 + r_min or ``max_rank`` is reached, so a smaller damping
    later reuses and extends it.

    Ĉ is the Gauss-Newton data term restricted to the training rows that carry ``coverage``
    of its trace (estimated with a few random Jacobian-vector products): for a well-fitted
    model most rows have a nearly zero output Hessian, so the sketch costs a fraction of a
    full product. The rows left out only make the preconditioner less exact, never the
    solution.

    Parameters
    ----------
    operator : CurvatureOperator
        The full curvature; its adapter, θ and inputs define the Gauss-Newton sketch.
    rank : "auto" or int
        Fixed sketch size, or "auto" for the adaptive rule above.
    max_rank : int
    coverage : float in (0, 1]
    seed : int
    """

    initial_rank = 64

    def __init__(self, operator, *, rank="auto", max_rank=512, coverage=0.95, seed=0):
        self.operator = operator
        self.rank = rank
        self.max_rank = int(max_rank)
        self.coverage = float(coverage)
        self.seed = int(seed)
        self._sketch_operator = None
        self._omega = None
        self._sketch = None
        self._basis = None
        self._eigenvalues = None
        self._tail = None

    # -- sketch -------------------------------------------------------------------------
    def _rank_cap(self):
        """Largest sketch that keeps three p × s float64 arrays under 1/8 of the dense limit."""
        p = self.operator.n_params
        cap = max(1, DENSE_LIMIT_BYTES // (8 * 3 * 8 * p))
        return int(min(self.max_rank, cap, p))

    def _build_sketch_operator(self):
        operator = self.operator
        rows = _rows_carrying_curvature(operator, self.coverage, self.seed)
        sub = CurvatureOperator(
            operator.adapter,
            operator.theta,
            operator.inputs[rows],
            None,
            "gauss_newton",
            operator.batch_size,
            None if operator.weights is None else operator.weights[rows],
        )
        fraction = len(rows) / len(operator.inputs)
        regularizer = operator.adapter.regularizer_diagonal()

        def sketch(block):
            # data term over the kept rows, scaled to the full 1/N, plus the full regularizer
            return fraction * sub.matmul(block) + (1.0 - fraction) * block * regularizer

        self.n_sketch_rows = len(rows)
        return sketch

    def _extend(self, new_rank):
        theta = self.operator.theta
        p = theta.numel()
        old = 0 if self._omega is None else self._omega.shape[0]
        generator = torch.Generator().manual_seed(self.seed + 7919 * old)
        fresh = torch.randn(new_rank - old, p, generator=generator, dtype=torch.float64)
        fresh = fresh.to(theta.device)
        if self._omega is not None:
            previous = self._omega.to(torch.float64)
            for _ in range(2):  # twice is enough for orthogonality in floating point
                fresh = fresh - (fresh @ previous.T) @ previous
        fresh = _orthonormal_rows(fresh)  # Cholesky-QR: far cheaper than a p × s Householder QR
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
        shift = math.sqrt(omega.shape[1]) * torch.finfo(self.operator.theta.dtype).eps
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
        self._basis = basis.to(self.operator.theta.dtype)  # (s, p), orthonormal rows
        self._eigenvalues = torch.clamp(squares - shift, min=0.0)
        # a sketch wider than the rank of Ĉ recovers it exactly; its s-th eigenvalue is then 0
        self._tail = 0.0 if not bool(kept.all()) else float(self._eigenvalues[-1])

    def _ensure(self, damping):
        cap = self._rank_cap()
        if self.rank != "auto":
            target = min(int(self.rank), cap)
            if self._omega is None or self._omega.shape[0] < target:
                self._extend(target)
            return
        if self._omega is None:
            self._extend(min(self.initial_rank, cap))
        # the preconditioned condition number is about (L_s + λ)/(λ + r_min), r_min the floor
        # that the regularizer puts under the spectrum: grow until L_s ≤ λ/4 + r_min
        floor = float(self.operator.adapter.regularizer_diagonal().min().clamp_min(0.0))
        while self._omega.shape[0] < cap and self._tail > 0.25 * damping + floor:
            self._extend(min(2 * self._omega.shape[0], cap))

    @property
    def sketch_rank(self):
        return 0 if self._omega is None else self._omega.shape[0]

    def apply(self, residuals, damping):
        """Rows of R P⁻¹."""
        self._ensure(damping)
        basis = self._basis
        eigenvalues = self._eigenvalues.to(basis.dtype)
        damping = max(damping, float(eigenvalues[0]) * torch.finfo(basis.dtype).eps, 1e-30)
        coefficients = residuals @ basis.T
        scaled = coefficients * ((self._tail + damping) / (eigenvalues + damping))
        return residuals + (scaled - coefficients) @ basis


def _rows_carrying_curvature(operator, coverage, seed, n_probes=4):
    """Training rows that carry ``coverage`` of the Gauss-Newton trace, largest first.

    Row i contributes tr(A_i J_i J_iᵀ A_iᵀ); it is estimated as the mean of ‖A_i J_i ω‖² over
    a few Rademacher vectors ω (one vmapped forward-mode pass over the data).
    """
    adapter, theta, inputs = operator.adapter, operator.theta, operator.inputs
    n = len(inputs)
    if coverage >= 1.0 or n == 0:
        return torch.arange(n, device=inputs.device)
    generator = torch.Generator().manual_seed(seed + 1)
    probes = torch.randint(0, 2, (n_probes, theta.numel()), generator=generator)
    probes = (2.0 * probes - 1.0).to(theta.device, theta.dtype)
    contributions = []
    for rows in batch_slices(n, operator.batch_size):
        batch = inputs[rows]

        def outputs(theta_, batch=batch):
            return adapter.outputs(theta_, batch)

        with torch.no_grad():
            values, pushed = vmap(lambda v, f=outputs: jvp(f, (theta,), (v,)))(probes)
            factor = adapter.loss.hessian_factor(values[0])  # (b, r, k)
            curved = torch.einsum("brk,mbk->mbr", factor, pushed)
            contribution = (curved**2).sum(-1).mean(0)
        if operator.weights is not None:
            contribution = contribution * operator.weights[rows]
        contributions.append(contribution)
    contributions = torch.cat(contributions)
    order = torch.argsort(contributions, descending=True)
    total = float(contributions.sum())
    if total <= 0:
        return order[:1]
    cumulative = torch.cumsum(contributions[order], 0)
    count = int((cumulative < coverage * total).sum()) + 1
    return order[: min(count, n)]


def _orthonormal_rows(block):
    """Orthonormal rows spanning the rows of ``block``; numerically dependent rows are dropped.

    Cholesky-QR of the (float64) Gram matrix, applied twice; when the rows are close to
    dependent, an eigendecomposition of the Gram matrix drops the dependent directions.
    """
    for _ in range(2):
        wide = block.to(torch.float64)
        gram = wide @ wide.T
        floor = (100 * torch.finfo(block.dtype).eps) ** 2
        with small_dense_algebra():
            factor, info = torch.linalg.cholesky_ex(gram)
            diagonal = factor.diagonal() ** 2 if int(info) == 0 else None
            if diagonal is not None and float(diagonal.min()) > floor * float(diagonal.max()):
                transform = torch.linalg.solve_triangular(
                    factor, torch.eye(len(gram), dtype=gram.dtype, device=gram.device), upper=False
                )
            else:
                values, vectors = torch.linalg.eigh(gram)
                keep = values > max(float(values[-1]) * floor, 0.0)
                if not bool(keep.any()):
                    return block[:0]
                transform = (vectors[:, keep] / values[keep].sqrt()).T
        block = transform.to(block.dtype) @ block
    return block


def block_conjugate_gradient(apply, precondition, rhs, *, tol, maxiter):
    """Breakdown-free block preconditioned CG (Ji & Li, 2017) on rows: X (C + λI) = B.

    All right-hand sides share one block Krylov space, so m of them explore m new directions
    per curvature product of m vectors; search directions that become linearly dependent are
    dropped instead of breaking the recursion. The iteration runs on an orthonormal basis W
    of the (normalised) right-hand sides, B = diag(‖b‖) K W, and X = diag(‖b‖) K Y: repeated
    or proportional right-hand sides (the same query twice) then cost nothing and cannot
    inject rounding noise into the Krylov space, and right-hand sides of very different
    norms converge alike, since every relative residual is bounded by the largest one of W.

    Returns ``(X, relative_residuals, n_iter)``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence._solvers import block_conjugate_gradient
    >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    >>> B = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)  # proportional rows
    >>> X, residuals, n_iter = block_conjugate_gradient(
    ...     lambda V: V @ A, lambda R: R, B, tol=1e-12, maxiter=10)
    >>> bool(torch.allclose(X @ A, B)), n_iter
    (True, 2)
    """
    norms = rhs.norm(dim=1)
    nonzero = norms > 0
    solution = torch.zeros_like(rhs)
    relative = torch.zeros_like(norms)
    if not bool(nonzero.any()):
        return solution, relative, 0
    normalised = rhs[nonzero] / norms[nonzero].unsqueeze(1)
    basis = _orthonormal_rows(normalised)  # (r, p)
    coefficients = normalised @ basis.T  # (m', r)
    iterate = torch.zeros_like(basis)
    residual = basis.clone()
    directions = _orthonormal_rows(precondition(residual))
    relative_nonzero = (coefficients @ residual).norm(dim=1)
    n_iter = 0
    while n_iter < maxiter and float(relative_nonzero.max()) > tol and len(directions):
        curved = apply(directions)
        gram = directions.to(torch.float64) @ curved.to(torch.float64).T
        gram = 0.5 * (gram + gram.T)
        with small_dense_algebra():
            factor, info = torch.linalg.cholesky_ex(gram)
        if int(info) != 0:
            raise ValueError(
                "The damped curvature is not positive definite (conjugate gradient met a "
                "direction of negative curvature). Use curvature='gauss_newton', or a larger "
                "damping."
            )
        with small_dense_algebra():
            step = torch.cholesky_solve((directions @ residual.T).to(torch.float64), factor)
        step = step.to(rhs.dtype)
        iterate += step.T @ directions
        residual -= step.T @ curved
        relative_nonzero = (coefficients @ residual).norm(dim=1)
        n_iter += 1
        preconditioned = precondition(residual)
        with small_dense_algebra():
            correction = torch.cholesky_solve((curved @ preconditioned.T).to(torch.float64), factor)
        directions = _orthonormal_rows(preconditioned - correction.to(rhs.dtype).T @ directions)
    solution[nonzero] = (coefficients @ iterate) * norms[nonzero].unsqueeze(1)
    relative[nonzero] = relative_nonzero
    return solution, relative, n_iter


class CGSolver(IterativeSolver):
    """Preconditioned block conjugate gradient on (C + λI) x = b, matrix-free.

    Every block of right-hand sides (up to ``block_size`` rows, e.g. all query gradients of a
    block) is solved together by breakdown-free block CG: each iteration costs one batched
    curvature-vector product for the whole block (vmapped forward and reverse mode over the
    training data). The default preconditioner is a randomized Nyström approximation of the
    Gauss-Newton matrix (:class:`NystromPreconditioner`), built once and reused for every
    solve and damping. The curvature is never formed, so memory is O(p · (m + rank)).

    Options (``solver_options``)
    ----------------------------
    tol : float, default=1e-3
        Stop when every right-hand side has ‖b − (C + λI)x‖ ≤ tol · ‖b‖.
    maxiter : int, default=100
        Iterations per block; a :class:`~sklearn.exceptions.ConvergenceWarning` with the
        largest relative residual is issued when ``tol`` is not reached.
    preconditioner : {"nystrom", None}, default="nystrom"
    rank : "auto" or int, default="auto"
        Nyström sketch size; "auto" doubles it from 64 until its smallest eigenvalue is at
        most λ/4 above the regularizer's floor (at most ``max_rank``).
    max_rank : int, default=512
    sketch_coverage : float, default=0.95
        Share of the Gauss-Newton trace carried by the training rows used in the sketch.
    block_size : int, default=128
        Right-hand sides solved together.
    seed : int
        Seeds the sketch (InfluenceFunction passes one drawn from ``random_state``).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence import InfluenceFunction
    >>> X, y = load_diabetes(return_X_y=True)
    >>> exact = InfluenceFunction(Ridge(), solver="direct").fit(X[:100], y[:100])
    >>> cg = InfluenceFunction(Ridge(), solver="cg", solver_options={"tol": 1e-10})
    >>> cg = cg.fit(X[:100], y[:100])
    >>> bool(np.allclose(cg.transform(X[100:103], y[100:103]),
    ...                  exact.transform(X[100:103], y[100:103])))
    True
    """

    name = "cg"
    options = ("tol", "maxiter", "preconditioner", "rank", "max_rank", "sketch_coverage")

    def __init__(
        self,
        operator,
        train_gradients,
        *,
        tol=1e-3,
        maxiter=100,
        preconditioner="nystrom",
        rank="auto",
        max_rank=512,
        sketch_coverage=0.95,
        block_size=128,
        seed=None,
    ):
        super().__init__(operator, train_gradients, block_size=block_size, seed=seed)
        if not float(tol) > 0:
            raise ValueError(f"tol must be positive, got {tol!r}.")
        if int(maxiter) < 1:
            raise ValueError(f"maxiter must be a positive integer, got {maxiter!r}.")
        if preconditioner not in ("nystrom", None):
            raise ValueError(f"preconditioner must be 'nystrom' or None, got {preconditioner!r}.")
        if rank != "auto" and not (isinstance(rank, int) and rank >= 1):
            raise ValueError(f"rank must be 'auto' or a positive integer, got {rank!r}.")
        if not 0 < float(sketch_coverage) <= 1:
            raise ValueError(f"sketch_coverage must be in (0, 1], got {sketch_coverage!r}.")
        self.tol = float(tol)
        self.maxiter = int(maxiter)
        self.n_iter_ = []  # iterations of each block solve
        self.preconditioner = None
        if preconditioner == "nystrom" and operator.kind != "identity":
            self.preconditioner = NystromPreconditioner(
                operator,
                rank=rank,
                max_rank=max_rank,
                coverage=sketch_coverage,
                seed=self.seed,
            )

    @classmethod
    def build(
        cls, adapter, theta, inputs, targets, train_gradients, *, curvature, batch_size, **options
    ):
        """Wrap the matrix-free curvature of ``curvature`` on the training data."""
        _check_options(cls.name, options, (*cls.options, "block_size", "seed"))
        operator = CurvatureOperator(adapter, theta, inputs, targets, curvature, batch_size)
        return cls(operator, train_gradients, **options)

    def _solve_block(self, rhs, damping):
        def apply(block):
            return self.operator.matmul(block) + damping * block

        def precondition(block):
            if self.preconditioner is None:
                return block
            return self.preconditioner.apply(block, damping)

        solution, relative, n_iter = block_conjugate_gradient(
            apply, precondition, rhs, tol=self.tol, maxiter=self.maxiter
        )
        self.n_iter_.append(n_iter)
        worst = float(relative.max())
        if not math.isfinite(worst):
            raise ValueError(
                "Conjugate gradient produced non-finite values; the curvature products are not "
                "finite at the fitted parameters (check the model's outputs and damping)."
            )
        if worst > self.tol:
            warnings.warn(
                f"Conjugate gradient did not converge in maxiter={self.maxiter} iterations: "
                f"the largest relative residual is {worst:.3g} > tol={self.tol:g}. Increase "
                "solver_options['maxiter'], the damping, or loosen 'tol'.",
                ConvergenceWarning,
                stacklevel=4,
            )
        return solution


# -- LiSSA --------------------------------------------------------------------------------
class LissaSolver(IterativeSolver):
    """LiSSA (Agarwal, Bullins & Hazan, 2017): a stochastic Neumann series for (C + λI)⁻¹.

    For each block of right-hand sides B the recursion

        X₀ = B,   X_{j+1} = B + X_j − X_j (C_j + λI) / scale,   estimate = X_J / scale,

    runs for ``depth`` steps, where C_j is the curvature on a random minibatch of training
    rows (all rows when the minibatch covers the data set), and the estimates of ``repeat``
    independent runs are averaged. The series converges when ``scale`` exceeds the largest
    eigenvalue of the (minibatch) damped curvature; directions with eigenvalue μ are resolved
    after about scale/(μ + λ) steps, so small dampings need deep recursions. A diverging
    recursion (non-finite values or norms growing faster than a convergent series can) raises
    a ValueError that names ``scale``.

    Options (``solver_options``)
    ----------------------------
    scale : float or "auto", default="auto"
        "auto": 1.5 × the largest eigenvalue of C + λI, estimated by power iteration.
    depth : int, default=1000
    repeat : int, default=1
    minibatch_size : int or None, default=None
        Training rows per step; None uses the estimator's ``batch_size``. (It cannot be
        called ``batch_size``: that name is the estimator's own parameter.)
    block_size : int, default=128
    seed : int
        Seeds the minibatches (InfluenceFunction passes one drawn from ``random_state``).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence import InfluenceFunction
    >>> X, y = load_diabetes(return_X_y=True)
    >>> exact = InfluenceFunction(Ridge(), damping=0.1).fit(X[:100], y[:100])
    >>> lissa = InfluenceFunction(Ridge(), damping=0.1, solver="lissa", random_state=0,
    ...                           solver_options={"depth": 100}).fit(X[:100], y[:100])
    >>> estimate = lissa.transform(X[100:103], y[100:103]).ravel()
    >>> reference = exact.transform(X[100:103], y[100:103]).ravel()
    >>> float(np.corrcoef(estimate, reference)[0, 1]) > 0.99
    True
    """

    name = "lissa"
    options = ("scale", "depth", "repeat", "minibatch_size")

    #: power iterations used to estimate the top eigenvalue for scale="auto"
    power_iterations = 30

    def __init__(
        self,
        operator,
        train_gradients,
        *,
        scale="auto",
        depth=1000,
        repeat=1,
        minibatch_size=None,
        block_size=128,
        seed=None,
    ):
        super().__init__(operator, train_gradients, block_size=block_size, seed=seed)
        if scale != "auto" and not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"scale must be 'auto' or a positive number, got {scale!r}.")
        for name, value in (("depth", depth), ("repeat", repeat)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if minibatch_size is not None and int(minibatch_size) < 1:
            raise ValueError(
                f"minibatch_size must be a positive integer or None, got {minibatch_size!r}."
            )
        self.scale = scale
        self.depth = int(depth)
        self.repeat = int(repeat)
        self.minibatch_size = int(operator.batch_size if minibatch_size is None else minibatch_size)
        self._top_eigenvalue = None

    @classmethod
    def build(
        cls, adapter, theta, inputs, targets, train_gradients, *, curvature, batch_size, **options
    ):
        """Wrap the matrix-free curvature of ``curvature`` on the training data."""
        _check_options(cls.name, options, (*cls.options, "block_size", "seed"))
        operator = CurvatureOperator(adapter, theta, inputs, targets, curvature, batch_size)
        return cls(operator, train_gradients, **options)

    def top_eigenvalue(self):
        """Largest |eigenvalue| of C by power iteration (cached)."""
        if self._top_eigenvalue is None:
            theta = self.operator.theta
            generator = torch.Generator().manual_seed(self.seed + 3)
            vector = torch.randn(theta.numel(), generator=generator, dtype=torch.float64)
            vector = (vector / vector.norm()).to(theta.device, theta.dtype)
            value = 0.0
            for _ in range(self.power_iterations):
                product = self.operator.matmul(vector)
                value = float(product.norm())
                if value == 0:
                    break
                vector = product / value
            self._top_eigenvalue = value
        return self._top_eigenvalue

    def resolved_scale(self, damping):
        if self.scale == "auto":
            return 1.5 * (self.top_eigenvalue() + damping)
        return float(self.scale)

    def _solve_block(self, rhs, damping):
        scale = self.resolved_scale(damping)
        n = len(self.operator.inputs)
        size = min(self.minibatch_size, n)
        generator = torch.Generator().manual_seed(self.seed)
        norms = rhs.norm(dim=1, keepdim=True)
        total = torch.zeros_like(rhs)
        for _ in range(self.repeat):
            estimate = rhs.clone()
            for step in range(self.depth):
                if size < n:
                    rows = torch.randperm(n, generator=generator)[:size]
                    operator = self.operator.subset(rows.to(self.operator.inputs.device))
                else:
                    operator = self.operator
                curved = operator.matmul(estimate) + damping * estimate
                estimate = rhs + estimate - curved / scale
                self._check_divergence(estimate, norms, step, scale)
            total += estimate / scale
        return total / self.repeat

    @staticmethod
    def _check_divergence(estimate, norms, step, scale):
        # a convergent series adds at most ‖b‖ per step; geometric growth means divergence
        growth = estimate.norm(dim=1, keepdim=True)
        if not bool(torch.isfinite(growth).all()) or bool((growth > 10 * (step + 2) * norms).any()):
            raise ValueError(
                f"LiSSA diverged at step {step + 1}: scale={scale:.4g} is smaller than the "
                "largest eigenvalue of the damped curvature on a minibatch. Increase "
                "solver_options['scale'] (for example to twice its value) or the "
                "minibatch_size."
            )


SOLVERS = {
    "direct": DirectSolver,
    "cholesky": CholeskySolver,
    "cg": CGSolver,
    "lissa": LissaSolver,
}


def _available_memory_bytes():
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not available on this platform
        return None


def dense_fits_comfortably(n_params):
    """Whether a dense solve (matrix, eigenvectors, workspace: 3 float64 p × p) fits easily.

    The budget is the dense limit and a quarter of the memory available now.
    """
    needed = 3 * n_params * n_params * 8
    budget = DENSE_LIMIT_BYTES
    available = _available_memory_bytes()
    if available is not None:
        budget = min(budget, available // 4)
    return n_params <= AUTO_DIRECT_MAX_PARAMS and needed <= budget


def resolve_solver_name(name, n_params):
    """``"auto"`` → ``"direct"`` when the dense matrix fits comfortably in memory, else ``"cg"``."""
    if name != "auto":
        return name
    return "direct" if dense_fits_comfortably(n_params) else "cg"


#: largest parameter count for which ``solver="auto"`` forms and factorizes a dense matrix
AUTO_DIRECT_MAX_PARAMS = 12_000
