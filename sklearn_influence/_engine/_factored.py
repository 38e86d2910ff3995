"""The ``factored`` solver: a factored curvature's own damped inverse (K-FAC, EK-FAC)."""

from ._solver_base import Solver


class FactoredSolver(Solver):
    """(C + λI)⁻¹ applied through a factored curvature's eigenbases (``inverse_matmul``).

    Exact for the factored matrix C (K-FAC or EK-FAC), which is itself an approximation of
    the Gauss-Newton matrix: fast and approximate. The factors and eigendecompositions are
    computed once (on :meth:`prepare` or the first solve) and reused for every damping.
    ``solver="auto"`` picks this solver whenever the curvature is factored.

    Parameters
    ----------
    curvature : KroneckerFactoredCurvature
        A curvature with ``inverse_matmul`` (``curvature="kfac"`` or ``"ekfac"``).
    **options
        Only ``seed`` (accepted and unused).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence import InfluenceFunction
    >>> X, y = load_diabetes(return_X_y=True)
    >>> exact = InfluenceFunction(Ridge()).fit(X[:100], y[:100])
    >>> kfac = InfluenceFunction(Ridge(), curvature="kfac").fit(X[:100], y[:100])
    >>> kfac.solver_
    'factored'
    >>> bool(np.allclose(kfac.transform(X[100:103], y[100:103]),
    ...                  exact.transform(X[100:103], y[100:103])))
    True
    """

    name = "factored"
    #: the solver needs a curvature with its own damped inverse ``inverse_matmul``
    requires = frozenset({"factored_curvature"})

    def _setup(self):
        if not getattr(self.curvature, "factored", False):
            raise ValueError(
                f"solver='factored' needs a factored curvature (curvature='kfac' or 'ekfac'), "
                f"got curvature={getattr(self.curvature, 'name', None)!r}."
            )

    def prepare(self):
        with self._locked():  # concurrent first transforms build the factors once
            _ = self.curvature.layers  # factors and eigendecompositions, once
            self.n_factorizations = self.curvature.n_eigendecompositions
        return self

    def solve(self, rhs, damping):
        rhs = self._checked_rhs(rhs, damping)
        if len(rhs) == 0:
            return rhs.clone()
        self.prepare()
        return self.curvature.inverse_matmul(rhs, float(damping))
