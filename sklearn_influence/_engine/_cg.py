"""The ``cg`` solver: breakdown-free preconditioned block conjugate gradient, matrix-free."""

import math
import warnings
from numbers import Integral, Real

import torch
from sklearn.utils._param_validation import Interval, StrOptions

from .._torch_utils import float64_gram, orthonormal_rows, small_dense_algebra
from ..exceptions import SolverConvergenceWarning
from ._curvature import make_curvature
from ._iterative import IterativeSolver
from ._nystrom import NystromPreconditioner
from ._solver_base import LockedState


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
    >>> from sklearn_influence._engine._cg import block_conjugate_gradient
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
    basis = orthonormal_rows(normalised)  # (r, p)
    coefficients = normalised @ basis.T  # (m', r)
    iterate = torch.zeros_like(basis)
    residual = basis.clone()
    directions = orthonormal_rows(precondition(residual))
    relative_nonzero = (coefficients @ residual).norm(dim=1)
    n_iter = 0
    while n_iter < maxiter and float(relative_nonzero.max()) > tol and len(directions):
        curved = apply(directions)
        gram = float64_gram(directions, curved)
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
        directions = orthonormal_rows(preconditioned - correction.to(rhs.dtype).T @ directions)
    solution[nonzero] = (coefficients @ iterate) * norms[nonzero].unsqueeze(1)
    relative[nonzero] = relative_nonzero
    return solution, relative, n_iter


#: accepted values of the ``preconditioner`` option
PRECONDITIONERS = ("nystrom", "kfac", "ekfac", None)


class FactoredPreconditioner(LockedState):
    """P⁻¹ = (C_factored + λI)⁻¹ of a K-FAC/EK-FAC curvature, for CG on another curvature.

    The factored curvature is the given one when it already is of that kind, else it is built
    on the same adapter, θ, rows and weights; its factors are computed on first use and reused
    for every λ. With λ = 0 a tiny floor (machine epsilon times the largest diagonal entry)
    keeps a singular factored matrix invertible.
    """

    def __init__(self, curvature, kind):
        self._init_lock()
        if curvature.name == kind:
            self.factored = curvature
        else:
            self.factored = make_curvature(
                kind,
                curvature.adapter,
                curvature.theta,
                curvature.inputs,
                curvature.targets,
                batch_size=curvature.batch_size,
                weights=curvature.weights,
            )
        self._floor = None

    def for_damping(self, damping, n_rhs=1):
        """The map R ↦ R P⁻¹ for this damping; the factors are built once, under the lock.

        ``n_rhs`` is accepted for the preconditioner contract (it sizes a Nyström sketch).
        """
        with self._lock:
            if self._floor is None:
                _ = self.factored.layers  # factors and eigenbases, once
                largest = float(self.factored.diagonal().max()) if self.factored.n_params else 0.0
                self._floor = max(largest, 1.0) * torch.finfo(self.factored.dtype).eps
        shift = max(float(damping), self._floor)
        return lambda residuals: self.factored.inverse_matmul(residuals, shift)

    def apply(self, residuals, damping):
        """Rows of R P⁻¹."""
        return self.for_damping(damping)(residuals)


class CGSolver(IterativeSolver):
    """Preconditioned block conjugate gradient on (C + λI) x = b, matrix-free.

    Every block of right-hand sides (up to ``block_size`` rows, e.g. all query gradients of a
    block) is solved together by breakdown-free block CG: each iteration costs one batched
    curvature-vector product for the whole block (vmapped forward and reverse mode over the
    training data). The default preconditioner is a randomized Nyström approximation of the
    Gauss-Newton matrix (:class:`NystromPreconditioner`), built once and reused for every
    solve and damping. The curvature is never formed, so memory is O(p · (m + rank)).

    Parameters
    ----------
    curvature : Curvature
        Only its products (``matmul``) are used, and the Gauss-Newton sketch of the
        preconditioner is taken on its adapter, θ and rows.
    **options
        The ``solver_options`` below.

    Options (``solver_options``)
    ----------------------------
    tol : float, default=1e-3
        Stop when every right-hand side has ‖b − (C + λI)x‖ ≤ tol · ‖b‖.
    maxiter : int, default=100
        Iterations per block; a :class:`~sklearn.exceptions.ConvergenceWarning` with the
        largest relative residual is issued when ``tol`` is not reached.
    preconditioner : {"nystrom", "kfac", "ekfac", None}, default="nystrom"
        ``"kfac"``/``"ekfac"``: the damped inverse of a K-FAC/EK-FAC approximation of the
        Gauss-Newton matrix (regularizer included), built once on the curvature's adapter, θ
        and rows (the curvature itself when it is that factored curvature) and applied with
        each solve's λ.
    rank : "auto" or int, default="auto"
        Nyström sketch size; "auto" doubles it from 64 while a doubling saves more
        curvature products in the solve than it costs (at most ``max_rank``; see
        :class:`NystromPreconditioner`).
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
    # the block recursion's basis, iterate, residual, directions, their products, the
    # preconditioned residual and its correction, plus the right-hand sides and solution
    vectors_per_rhs = 12
    options = {
        **IterativeSolver.options,
        "tol": 1e-3,
        "maxiter": 100,
        "preconditioner": "nystrom",
        "rank": "auto",
        "max_rank": 512,
        "sketch_coverage": 0.95,
    }
    option_constraints = {
        **IterativeSolver.option_constraints,
        "tol": [Interval(Real, 0, None, closed="neither")],
        "maxiter": [Interval(Integral, 1, None, closed="left")],
        "preconditioner": [StrOptions({"nystrom", "kfac", "ekfac"}), None],
        "rank": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "max_rank": [Interval(Integral, 1, None, closed="left")],
        "sketch_coverage": [Interval(Real, 0, 1, closed="right")],
    }

    @classmethod
    def requirements(cls, options):
        """Declared needs: a K-FAC/EK-FAC preconditioner needs the model's layer structure."""
        preconditioner = options.get("preconditioner", cls.options["preconditioner"])
        extra = {"layer_structure"} if preconditioner in ("kfac", "ekfac") else set()
        return cls.requires | extra

    def _setup(self):
        super()._setup()
        settings = self.settings
        tol, maxiter, rank = settings["tol"], settings["maxiter"], settings["rank"]
        preconditioner, coverage = settings["preconditioner"], settings["sketch_coverage"]
        self.tol = float(tol)
        self.maxiter = int(maxiter)
        self.n_iter_ = []  # iterations of each block solve
        self.preconditioner = None
        if preconditioner == "nystrom" and self.curvature.needs_preconditioner:
            self.preconditioner = NystromPreconditioner(
                self.curvature,
                rank=rank,
                max_rank=settings["max_rank"],
                coverage=coverage,
                seed=self.seed,
                tol=self.tol,
            )
        elif preconditioner in ("kfac", "ekfac") and self.curvature.needs_preconditioner:
            self.preconditioner = FactoredPreconditioner(self.curvature, preconditioner)

    def _solve_block(self, rhs, damping):
        solution, worst = self._block_cg(rhs, damping, self.tol)
        self._check_residual(worst)
        return solution

    def _block_cg(self, rhs, damping, tol):
        """Block CG on this solver's curvature: ``(solution, largest relative residual)``."""

        def apply(block):
            return self.curvature.matmul(block) + damping * block

        # a snapshot for this damping, built under the preconditioner's lock (thread safety)
        precondition = (
            (lambda block: block)
            if self.preconditioner is None
            else self.preconditioner.for_damping(damping, len(rhs))
        )

        solution, relative, n_iter = block_conjugate_gradient(
            apply, precondition, rhs, tol=tol, maxiter=self.maxiter
        )
        self.n_iter_.append(n_iter)
        return solution, relative

    def _check_residual(self, relative):
        """Refuse non-finite values; warn when the tolerance was not reached."""
        worst = float(relative.max()) if relative.numel() else 0.0
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
                SolverConvergenceWarning,
                stacklevel=5,
            )


def batched_conjugate_gradient(apply, rhs, *, precondition=None, tol, maxiter):
    """Preconditioned CG on k independent systems A_j x_j = b_j, one per row, at once.

    Unlike :func:`block_conjugate_gradient` (one operator, many right-hand sides) every row
    has its own operator: ``apply(V, rows)`` returns the rows of A_j v_j for the copies
    ``rows`` (a LongTensor into the k rows) and their vectors V. Each row stops on its own
    relative residual ‖b_j − A_j x_j‖ ≤ tol_j ‖b_j‖ (``tol`` a number or a tensor (k,)),
    and only the rows still running are multiplied. A row that meets a direction of
    non-positive curvature stops with its current iterate (the steepest-descent direction
    when that is the first one), as in truncated (Steihaug) CG. ``precondition(R, rows)``
    returns the rows of P⁻¹ r_j (None: no preconditioner).

    Returns ``(X, relative_residuals, n_products)``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence._engine._cg import batched_conjugate_gradient
    >>> A = torch.stack([torch.diag(torch.tensor([1.0, 2.0, 3.0])),
    ...                  torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 0.0], [0.0, 0.0, 1.0]])])
    >>> A = A.double()
    >>> B = torch.ones(2, 3, dtype=torch.float64)
    >>> X, residuals, _ = batched_conjugate_gradient(
    ...     lambda V, rows: torch.einsum("kij,kj->ki", A[rows], V), B, tol=1e-12, maxiter=10)
    >>> bool(torch.allclose(torch.einsum("kij,kj->ki", A, X), B))
    True
    """
    k = len(rhs)
    tol = torch.as_tensor(tol, dtype=rhs.dtype, device=rhs.device).expand(k)
    norms = rhs.norm(dim=1)
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    all_rows = torch.arange(k, device=rhs.device)

    def preconditioned(values, rows):
        return values if precondition is None else precondition(values, rows)

    z = preconditioned(residual, all_rows)
    direction = z.clone()
    rz = (residual * z).sum(1)
    active = norms > 0
    n_products = 0
    for _ in range(maxiter):
        rows = active.nonzero().squeeze(1)
        if not len(rows):
            break
        curved = apply(direction[rows], rows)
        n_products += len(rows)
        curvature = (direction[rows] * curved).sum(1)
        negative = curvature <= 0
        if bool(negative.any()):  # keep the iterate; the first direction if there is none
            stop = rows[negative]
            first = solution[stop].abs().sum(1) == 0
            solution[stop[first]] = direction[stop[first]] * (
                rz[stop[first]] / (direction[stop[first]] ** 2).sum(1).clamp_min(1e-300)
            ).unsqueeze(1)
            active[stop] = False
            keep = ~negative
            rows, curved, curvature = rows[keep], curved[keep], curvature[keep]
        alpha = rz[rows] / curvature
        solution[rows] += alpha.unsqueeze(1) * direction[rows]
        residual[rows] -= alpha.unsqueeze(1) * curved
        done = residual[rows].norm(dim=1) <= tol[rows] * norms[rows]
        active[rows[done]] = False
        if not len(rows):
            continue
        z_rows = preconditioned(residual[rows], rows)
        rz_new = (residual[rows] * z_rows).sum(1)
        beta = rz_new / rz[rows].clamp_min(1e-300)
        direction[rows] = z_rows + beta.unsqueeze(1) * direction[rows]
        rz[rows] = rz_new
    relative = residual.norm(dim=1) / norms.clamp_min(1e-300)
    return solution, torch.where(norms > 0, relative, torch.zeros_like(relative)), n_products
