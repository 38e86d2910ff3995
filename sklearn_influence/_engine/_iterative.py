"""Matrix-free solvers of (C + λI) x = b: preconditioned block CG and LiSSA.

They share the interface of the dense solvers (see :mod:`sklearn_influence._engine._solvers`) but
only need curvature-vector products
(:class:`~sklearn_influence._engine._curvature.CurvatureOperator`), so the p × p matrix is never
formed.
"""

import math
import warnings

import torch
from sklearn.exceptions import ConvergenceWarning

from .._torch_utils import orthonormal_rows, small_dense_algebra
from ._curvature import CurvatureOperator
from ._gradients import batch_slices
from ._nystrom import NystromPreconditioner


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


def _check_options(name, options, allowed):
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"Unknown solver_options {unknown} for solver={name!r}; it accepts {sorted(allowed)}."
        )


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
    >>> from sklearn_influence._engine._iterative import block_conjugate_gradient
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
        directions = orthonormal_rows(preconditioned - correction.to(rhs.dtype).T @ directions)
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
