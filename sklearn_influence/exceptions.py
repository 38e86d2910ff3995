"""Warning classes of the package.

Every warning the package issues is an instance of :class:`InfluenceWarning` (or of one of
its subclasses below), so that a user can filter them by class::

    import warnings
    from sklearn_influence.exceptions import InfluenceWarning
    warnings.simplefilter("ignore", InfluenceWarning)

Convergence warnings also subclass scikit-learn's
:class:`~sklearn.exceptions.ConvergenceWarning` (and an undefined correlation its
:class:`~sklearn.exceptions.UndefinedMetricWarning`), so filters written for scikit-learn
apply.

Examples
--------
>>> from sklearn.exceptions import ConvergenceWarning, UndefinedMetricWarning
>>> from sklearn_influence.exceptions import InfluenceWarning, ResponseConvergenceWarning
>>> issubclass(ResponseConvergenceWarning, ConvergenceWarning)
True
>>> issubclass(ResponseConvergenceWarning, InfluenceWarning)
True
"""

from sklearn.exceptions import ConvergenceWarning, UndefinedMetricWarning


class InfluenceWarning(UserWarning):
    """Base class of every warning of sklearn_influence."""


class NotStationaryWarning(InfluenceWarning, ConvergenceWarning):
    """The fitted model is not at an optimum of its training objective (convex models)."""


class SolverConvergenceWarning(InfluenceWarning, ConvergenceWarning):
    """An iterative linear solve (CG, LiSSA) stopped before its tolerance."""


class ResponseConvergenceWarning(InfluenceWarning, ConvergenceWarning):
    """A response (leave-one-out refit, PRF, PBRF) stopped before its tolerance."""


class ResponseDivergenceWarning(ResponseConvergenceWarning):
    """A response optimisation diverged (non-finite or exploding iterate) and was stopped."""


class ApproximationWarning(InfluenceWarning):
    """An approximate curvature or solver agrees poorly with the exact answer it stands for."""


class DampingWarning(InfluenceWarning):
    """The damping is far from the curvature's scale, or zero on a singular curvature."""


class NumericalWarning(InfluenceWarning):
    """Some values overflowed or are otherwise not finite; the rows concerned are named."""


class UndefinedCorrelationWarning(InfluenceWarning, UndefinedMetricWarning):
    """A correlation (``score``, an agreement, a metric) is undefined and reported as nan.

    One side is constant or has fewer than two entries; subclasses scikit-learn's
    :class:`~sklearn.exceptions.UndefinedMetricWarning`.
    """


__all__ = [
    "ApproximationWarning",
    "DampingWarning",
    "InfluenceWarning",
    "NotStationaryWarning",
    "NumericalWarning",
    "ResponseConvergenceWarning",
    "ResponseDivergenceWarning",
    "SolverConvergenceWarning",
    "UndefinedCorrelationWarning",
]
