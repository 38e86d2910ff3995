"""The ``lissa`` solver: a stochastic Neumann series for (C + λI)⁻¹ (Agarwal et al., 2017)."""

import warnings
from numbers import Integral, Real

import torch
from sklearn.utils._param_validation import Interval, StrOptions

from ..exceptions import SolverConvergenceWarning
from ._iterative import IterativeSolver
from ._power_iteration import top_eigenvalue


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

    Parameters
    ----------
    curvature : Curvature
        Only its products (``matmul``) and row subsets (``subset``) are used.
    **options
        The ``solver_options`` below.

    Options (``solver_options``)
    ----------------------------
    scale : float or "auto", default="auto"
        "auto": 1.5 × the largest eigenvalue of C + λI, estimated by power iteration.
    depth : int, default=1000
    repeat : int, default=1
    minibatch_size : int or None, default=None
        Training rows per step; None uses the estimator's ``batch_size``. (It cannot be
        called ``batch_size``: that name is the estimator's own parameter.)
    tol : float, default=1e-3
        After the series, the relative residual ‖(C + λI)x − b‖ / ‖b‖ of each solution is
        measured on the whole training set (one more product); above ``tol`` a
        ``SolverConvergenceWarning`` says so (a truncated series is silently inaccurate in
        the directions of small eigenvalues otherwise). The worst residual of each call is
        kept in ``residual_``.
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
    ...                           solver_options={"depth": 300}).fit(X[:100], y[:100])
    >>> estimate = lissa.transform(X[100:103], y[100:103]).ravel()
    >>> reference = exact.transform(X[100:103], y[100:103]).ravel()
    >>> float(np.corrcoef(estimate, reference)[0, 1]) > 0.99
    True
    """

    name = "lissa"
    vectors_per_rhs = 4
    options = {
        **IterativeSolver.options,
        "scale": "auto",
        "depth": 1000,
        "repeat": 1,
        "minibatch_size": None,
        "tol": 1e-3,
    }
    option_constraints = {
        **IterativeSolver.option_constraints,
        "scale": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
        "depth": [Interval(Integral, 1, None, closed="left")],
        "repeat": [Interval(Integral, 1, None, closed="left")],
        "minibatch_size": [None, Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
    }

    #: power iterations used to estimate the top eigenvalue for scale="auto"
    power_iterations = 30

    def _setup(self):
        super()._setup()
        settings = self.settings
        scale, minibatch_size = settings["scale"], settings["minibatch_size"]
        self.scale = scale
        self.depth = int(settings["depth"])
        self.repeat = int(settings["repeat"])
        self.minibatch_size = int(
            self.curvature.batch_size if minibatch_size is None else minibatch_size
        )
        self._top_eigenvalue = None
        self.tol = float(settings["tol"])
        self.residual_ = []

    def top_eigenvalue(self):
        """Largest |eigenvalue| of C by power iteration (cached, built under the lock)."""
        if self._top_eigenvalue is not None:
            return self._top_eigenvalue
        with self._locked():
            if self._top_eigenvalue is not None:
                return self._top_eigenvalue
            curvature = self.curvature
            self._top_eigenvalue = top_eigenvalue(
                curvature.matmul,
                curvature.n_params,
                curvature.dtype,
                curvature.device,
                n_iter=self.power_iterations,
                seed=self.seed + 3,
                absolute=True,
            )
        return self._top_eigenvalue

    def resolved_scale(self, damping):
        if self.scale == "auto":
            return 1.5 * (self.top_eigenvalue() + damping)
        return float(self.scale)

    def _solve_block(self, rhs, damping):
        scale = self.resolved_scale(damping)
        n = self.curvature.n_train
        size = min(self.minibatch_size, n)
        generator = torch.Generator().manual_seed(self.seed)
        norms = rhs.norm(dim=1, keepdim=True)
        total = torch.zeros_like(rhs)
        for _ in range(self.repeat):
            estimate = rhs.clone()
            for step in range(self.depth):
                if size < n:
                    rows = torch.randperm(n, generator=generator)[:size]
                    curvature = self.curvature.subset(rows.to(self.curvature.inputs.device))
                else:
                    curvature = self.curvature
                curved = curvature.matmul(estimate) + damping * estimate
                estimate = rhs + estimate - curved / scale
                self._check_divergence(estimate, norms, step, scale)
            total += estimate / scale
        solution = total / self.repeat
        self._check_residual(solution, rhs, norms, damping, scale)
        return solution

    def _check_residual(self, solution, rhs, norms, damping, scale):
        """Warn when ‖(C + λI)x − b‖ / ‖b‖ exceeds ``tol`` on the whole training set."""
        residual = self.curvature.matmul(solution) + damping * solution - rhs
        worst = float((residual.norm(dim=1, keepdim=True) / norms.clamp_min(1e-300)).max())
        self.residual_.append(worst)
        if worst > self.tol:
            warnings.warn(
                f"LiSSA stopped at depth={self.depth} with a relative residual of {worst:.3g} "
                f"> tol={self.tol:g}: the series has not resolved the directions of small "
                f"eigenvalues (each needs about scale/(eigenvalue + damping) steps; "
                f"scale={scale:.3g}). Increase solver_options['depth'], the damping, or use "
                "solver='cg', which stops on its residual.",
                SolverConvergenceWarning,
                stacklevel=6,
            )

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
