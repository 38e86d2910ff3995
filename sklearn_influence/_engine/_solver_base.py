"""The solver contract: :class:`Solver`, and :class:`DenseSolver` for the dense-matrix solvers.

A solver is built once per fit from a curvature object C
(:class:`~sklearn_influence._engine._curvature_base.Curvature`) and the training gradients
T (N × p), and then answers for any damping λ:

* ``solve(B, λ)``         → B (C + λI)⁻¹ for row vectors B (m × p);
* ``bilinear(Q, λ)``      → Q (C + λI)⁻¹ Tᵀ (m × N);
* ``self_quadratic(λ)``   → diag(T (C + λI)⁻¹ Tᵀ) (N,);
* ``prepare()``           → do any one-off work now (factorizations), returns the solver.

λ enters only at solve time. Scaling by 1/N and the sign convention belong to the engine.
"""

import torch

from ._gradients import batch_slices


class Solver:
    """Base class of the solvers of (C + λI) x = b.

    Each subclass declares its keyword options with their defaults in the class attribute
    ``options`` (a dict); the base checks the names once for every solver (an unknown name is
    a TypeError that lists the accepted ones), stores the resolved values in ``settings``
    and calls :meth:`_setup`, where a subclass checks the values and builds its state.

    Parameters
    ----------
    curvature : Curvature
        The curvature object C.
    train_gradients : Tensor of shape (N, p)
        Per-example training gradients T.
    **options
        Keys of ``options``.

    Attributes
    ----------
    name : str
        The solver's key in :data:`~sklearn_influence._engine._solvers.SOLVERS`.
    settings : dict
        The options with defaults filled in.
    n_factorizations : int
        Factorizations performed so far (0 for the matrix-free solvers).
    """

    name = None
    #: option name → default; ``seed`` is accepted by every solver (the engine always passes one)
    options = {"seed": None}

    def __init__(self, curvature, train_gradients, **options):
        self.settings = self.check_options(options)
        self.curvature = curvature
        self.train_gradients = train_gradients
        self.n_factorizations = 0
        self._setup()

    @classmethod
    def check_options(cls, options):
        """``options`` with the defaults filled in; TypeError for an unknown name."""
        unknown = sorted(set(options) - set(cls.options))
        if unknown:
            raise TypeError(
                f"Unknown solver_options {unknown} for solver={cls.name!r}; it accepts "
                f"{sorted(cls.options)}."
            )
        return {**cls.options, **options}

    def _setup(self):
        """Check ``self.settings`` and build the solver's state (subclasses)."""

    # -- the contract -------------------------------------------------------------------
    def prepare(self):
        """Do any one-off work now (for example before the solver is sent to workers)."""
        return self

    def solve(self, rhs, damping):
        """Rows of B (C + λI)⁻¹, for B of shape (m, p)."""
        raise NotImplementedError

    def bilinear(self, queries, damping):
        """Q (C + λI)⁻¹ Tᵀ, shape (m, N): solving for the queries is the cheap side."""
        return self.solve(queries, damping) @ self.train_gradients.T

    def self_quadratic(self, damping):
        """diag(T (C + λI)⁻¹ Tᵀ), shape (N,): one solve per training point, in blocks."""
        T = self.train_gradients
        if len(T) == 0:
            return T.new_zeros((0,))
        return torch.cat(
            [(self.solve(T[rows], damping) * T[rows]).sum(1) for rows in batch_slices(len(T), 1024)]
        )


class DenseSolver(Solver):
    """Shared plumbing of the solvers that work on the dense curvature matrix.

    The dense matrix ``curvature.dense()`` is formed when the solver is built (its size is
    checked first) and kept as ``matrix``; factorizations are the subclasses' business.
    """

    def _setup(self):
        self.matrix = self.curvature.dense()
        self._init_factors()

    @classmethod
    def from_matrix(cls, matrix, train_gradients=None, **options):
        """A solver of (M + λI) x = b for an explicit symmetric matrix M (no curvature object)."""
        solver = cls.__new__(cls)
        solver.settings = cls.check_options(options)
        solver.curvature = None
        solver.train_gradients = (
            matrix.new_zeros((0, matrix.shape[0])) if train_gradients is None else train_gradients
        )
        solver.n_factorizations = 0
        solver.matrix = matrix
        solver._init_factors()
        return solver

    def _init_factors(self):
        """Empty factorization caches (subclasses)."""
