"""The solver contract: :class:`Solver`, and :class:`DenseSolver` for the dense-matrix solvers.

A solver is built once per fit from a curvature object C alone
(:class:`~sklearn_influence._engine._curvature_base.Curvature`); it never holds training
gradients. It answers, for any damping λ:

* ``solve(B, λ)``      → B (C + λI)⁻¹ for row vectors B (m × p);
* ``quadratic(G, λ)``  → diag(G (C + λI)⁻¹ Gᵀ) (m,), for a block G of gradients (m × p);
* ``prepare()``        → do any one-off work now (factorizations), returns the solver.

λ enters only at solve time. Scaling by 1/N, the sign convention and the streaming over
training points belong to the engine
(:class:`~sklearn_influence._engine._influence_engine.InfluenceEngine`).

**Thread safety.** ``solve`` and ``quadratic`` may be called concurrently from several
threads on one solver (concurrent ``transform`` calls on one fitted estimator). State built
lazily on first use (factorizations, preconditioners, eigenvalue estimates) is built under
the solver's lock (:meth:`Solver._locked`), so every thread sees it complete and the answer
does not depend on the interleaving. The lock is not pickled: an unpickled solver gets a
fresh one.
"""

import threading
from numbers import Integral

from sklearn.utils._param_validation import Interval

from .._options import check_options


class LockedState:
    """A re-entrant lock ``self._lock`` that survives pickling (it is recreated, not copied)."""

    def _init_lock(self):
        self._lock = threading.RLock()

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_lock()


class Solver(LockedState):
    """Base class of the solvers of (C + λI) x = b.

    Each subclass declares its keyword options with their defaults in the class attribute
    ``options`` (a dict) and their scikit-learn parameter constraints in
    ``option_constraints``; the base checks names and values once for every solver
    (:func:`~sklearn_influence._options.check_options`: an unknown name or a bad value is an
    ``InvalidParameterError``, a ValueError and TypeError, that names the accepted ones),
    stores the resolved values in ``settings`` and calls :meth:`_setup`, where a subclass
    builds its state. What a solver needs from the curvature is declared too
    (``requires``, read by :func:`~sklearn_influence._engine._capabilities.check_pairing`).

    Parameters
    ----------
    curvature : Curvature
        The curvature object C.
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
    vectors_per_rhs : int
        Parameter-sized vectors the solver holds per right-hand side while it solves (the
        engine sizes its blocks of queries with it).
    requires : frozenset of str
        What the solver needs: ``"factored_curvature"`` (a curvature with its own damped
        inverse, ``curvature.factored``), ``"dense"`` (a dense matrix that fits in memory).
    """

    name = None
    vectors_per_rhs = 2
    requires = frozenset()
    #: option name → default; ``seed`` is accepted by every solver (the engine always passes one)
    options = {"seed": None}
    option_constraints = {"seed": [None, Interval(Integral, 0, None, closed="left")]}

    def __init__(self, curvature, **options):
        self._init_lock()
        self.settings = self.check_options(options)
        self.curvature = curvature
        self.n_factorizations = 0
        self._setup()

    @classmethod
    def check_options(cls, options):
        """``options`` with the defaults filled in (``InvalidParameterError`` when invalid)."""
        return check_options(
            options,
            cls.options,
            cls.option_constraints,
            channel="solver_options",
            owner=f"solver={cls.name!r}",
        )

    def _setup(self):
        """Check ``self.settings`` and build the solver's state (subclasses)."""

    def _locked(self):
        """The lock that guards state built lazily (use as ``with self._locked():``)."""
        return self._lock

    # -- the contract -------------------------------------------------------------------
    def prepare(self):
        """Do any one-off work now (for example before the solver is sent to workers)."""
        return self

    def solve(self, rhs, damping):
        """Rows of B (C + λI)⁻¹, for B of shape (m, p)."""
        raise NotImplementedError

    def _checked_rhs(self, rhs, damping):
        """``rhs`` in the curvature's dtype, after checking that the damping is not negative."""
        if float(damping) < 0:
            raise ValueError(f"damping must be >= 0, got {damping!r}.")
        return rhs.to(self.curvature.dtype)

    def quadratic(self, gradients, damping):
        """diag(G (C + λI)⁻¹ Gᵀ), shape (m,), for a block G of shape (m, p).

        The default solves for the block; the dense solvers override it with cheaper forms.
        """
        if len(gradients) == 0:
            return gradients.new_zeros((0,))
        return (self.solve(gradients, damping) * gradients.to(self.curvature.dtype)).sum(1)


class DenseSolver(Solver):
    """Shared plumbing of the solvers that work on the dense curvature matrix.

    The dense matrix ``curvature.dense()`` is formed when the solver is built (its size is
    checked first) and kept as ``matrix``; factorizations are the subclasses' business.
    """

    requires = frozenset({"dense"})

    def _setup(self):
        self.matrix = self.curvature.dense()
        self._init_factors()

    @classmethod
    def from_matrix(cls, matrix, **options):
        """A solver of (M + λI) x = b for an explicit symmetric matrix M (no curvature object)."""
        solver = cls.__new__(cls)
        solver._init_lock()
        solver.settings = cls.check_options(options)
        solver.curvature = None
        solver.n_factorizations = 0
        solver.matrix = matrix
        solver._init_factors()
        return solver

    def _init_factors(self):
        """Empty factorization caches (subclasses)."""

    def quadratic(self, gradients, damping):
        if len(gradients) == 0:
            return gradients.new_zeros((0,))
        gradients = gradients.to(self.matrix.dtype)
        return (self.solve(gradients, damping) * gradients).sum(1)


__all__ = ["DenseSolver", "LockedState", "Solver"]
