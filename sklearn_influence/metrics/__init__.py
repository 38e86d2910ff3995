"""Metrics for influence estimates: agreement with ground truth and mislabel detection.

* :func:`influence_correlation` — Pearson or Spearman correlation of estimated and actual
  effects (for example an influence matrix against leave-one-out retraining).
* :func:`group_influence` — the first-order influence of removing whole groups of training
  points at once (the sums of their columns of an influence matrix).
* :func:`linear_datamodeling_score` — the linear datamodeling score (LDS): how well sums of
  influence over removed training points rank the actual effect of retraining without them.
* :func:`mislabel_recall_curve`, :func:`mislabel_detection_recall`,
  :func:`mislabel_detection_auc` and :class:`MislabelRecallDisplay` — the fraction of
  mislabeled training points found as a function of the fraction of the training set
  inspected, most suspicious first.
* :class:`MostInfluentialDisplay` — pictures (or bar charts) of the most helpful and most
  harmful training examples of each query.
"""

import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions, validate_params
from sklearn.utils.validation import check_is_fitted

from .._base import check_removed_groups, row_correlations
from .._engine._gradients import resolve_query_targets
from .._responses._removal import subset_removal_measurements
from .._validation import query_tensors
from ..exceptions import UndefinedCorrelationWarning
from ._detection import (
    _as_finite_array,
    mislabel_detection_auc,
    mislabel_detection_recall,
    mislabel_recall_curve,
)
from ._diagnostics_display import RegressionDiagnosticsDisplay
from ._display import MislabelRecallDisplay, MostInfluentialDisplay

__all__ = [
    "MislabelRecallDisplay",
    "MostInfluentialDisplay",
    "RegressionDiagnosticsDisplay",
    "group_influence",
    "influence_correlation",
    "linear_datamodeling_score",
    "mislabel_detection_auc",
    "mislabel_detection_recall",
    "mislabel_recall_curve",
]


# -- correlation ------------------------------------------------------------------------------
def _warn_constant(n_constant, n_total, what):
    warnings.warn(
        f"{n_constant} of {n_total} {what} are constant in the predicted or the actual "
        "values, so their correlation is undefined and reported as nan. Use more varied "
        "inputs (more removed points, other queries) to make it defined.",
        UndefinedCorrelationWarning,
        stacklevel=3,
    )


@validate_params(
    {
        "predicted": ["array-like"],
        "actual": ["array-like"],
        "method": [StrOptions({"pearson", "spearman"})],
        "axis": [Integral, None],
    },
    prefer_skip_nested_validation=True,
)
def influence_correlation(predicted, actual, *, method="pearson", axis=None):
    """Correlation between estimated and actual effects of removing training points.

    Parameters
    ----------
    predicted : array-like
        Estimated effects, for example an influence matrix of shape (n_queries, n_train)
        from :meth:`InfluenceFunction.transform`.
    actual : array-like of the same shape
        The effects they estimate, for example actual loss changes after retraining
        without each training point.
    method : {"pearson", "spearman"}, default="pearson"
        Pearson (linear) correlation, or Spearman rank correlation (Pearson correlation of
        the ranks; ties get their average rank, as in :func:`scipy.stats.spearmanr`).
    axis : int or None, default=None
        ``None`` flattens both arrays and returns one correlation over all entries.
        An integer computes one correlation per slice *along* that axis, vectorised; for an
        influence matrix, ``axis=1`` gives one correlation per query (row) across training
        points and ``axis=0`` one per training point across queries.

    Returns
    -------
    correlation : float or ndarray
        A float when ``axis`` is None or the inputs are one-dimensional, else an array with
        ``axis`` removed from the input shape. Slices in which either side is constant have
        no correlation: they are nan, and a warning says how many there are.

    See Also
    --------
    linear_datamodeling_score : Agreement of summed influence with retraining on subsets.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_influence.metrics import influence_correlation
    >>> predicted = np.array([[1.0, 2.0, 3.0], [1.0, 0.0, 2.0]])
    >>> actual = np.array([[1.1, 1.9, 3.2], [3.0, 0.0, 1.0]])
    >>> round(influence_correlation(predicted, actual), 3)
    0.645
    >>> influence_correlation(predicted, actual, method="spearman", axis=1)
    array([1. , 0.5])
    """
    predicted = _as_finite_array(predicted, "predicted")
    actual = _as_finite_array(actual, "actual")
    if predicted.shape != actual.shape:
        raise ValueError(
            f"predicted has shape {predicted.shape} but actual has shape {actual.shape}; "
            "pass arrays of the same shape (one estimate per actual effect)."
        )
    flat = predicted.ndim <= 1
    if axis is None or flat:
        if axis is not None and axis not in (0, -1):
            raise ValueError(
                f"axis={axis} is out of range for one-dimensional inputs; use 0 or None."
            )
        predicted, actual = predicted.reshape(1, -1), actual.reshape(1, -1)
    else:
        if not -predicted.ndim <= axis < predicted.ndim:
            raise ValueError(
                f"axis={axis} is out of range for arrays of shape {predicted.shape}; "
                f"use an axis in [{-predicted.ndim}, {predicted.ndim - 1}] or None."
            )
        predicted, actual = np.moveaxis(predicted, axis, -1), np.moveaxis(actual, axis, -1)
    if predicted.shape[-1] < 2:
        raise ValueError(
            f"A correlation needs at least 2 values per slice, got {predicted.shape[-1]}."
        )
    correlation, constant = row_correlations(predicted, actual, method=method)
    if np.any(constant):
        _warn_constant(int(constant.sum()), constant.size, "slices")
    if axis is None or flat:
        return float(correlation[0])
    return correlation


# -- group influence ------------------------------------------------------------------------
@validate_params(
    {"influence_matrix": ["array-like"], "groups": ["array-like"]},
    prefer_skip_nested_validation=True,
)
def group_influence(influence_matrix, groups):
    """First-order influence of removing each group of training points at once.

    Removing a set S down-weights the objective by ε_S = Σ_{m∈S} w_m / W, and to first order
    its effect is the sum of its members' effects: each column of an influence matrix is
    already scaled by its point's ε_m (1/N, or w_m / W with sample weights; DESIGN.md §2), so
    the group influence is the sum of S's columns, with the same sign convention (positive:
    removing the group is predicted to raise the query's loss). It approximates, to first
    order in ε_S, the actual responses of the estimators' ``removed_groups`` (for example
    :class:`~sklearn_influence.LeaveOneOut` or :class:`~sklearn_influence.PBRF`), and equals
    the response of :class:`~sklearn_influence.LinearizedPBRF` to first order.

    Parameters
    ----------
    influence_matrix : array-like of shape (n_queries, n_train) or (n_train,)
        Influence estimates, for example :meth:`InfluenceFunction.transform
        <sklearn_influence.InfluenceFunction.transform>`, training points along the last axis.
    groups : list of array-like of int
        Training row positions of each group (distinct within a group; groups may overlap).

    Returns
    -------
    influence : ndarray of shape (n_queries, n_groups) or (n_groups,)
        ``influence[q, j]`` = Σ_{m ∈ groups[j]} ``influence_matrix[q, m]``.

    See Also
    --------
    linear_datamodeling_score : How well such sums rank the actual effect of retraining.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_influence.metrics import group_influence
    >>> influence = np.array([[1.0, 2.0, -0.5, 0.25], [0.0, 1.0, 1.0, -1.0]])
    >>> group_influence(influence, [[0, 1], [1, 2, 3]])
    array([[3.  , 1.75],
           [1.  , 1.  ]])
    """
    matrix = _as_finite_array(influence_matrix, "influence_matrix")
    if matrix.ndim not in (1, 2):
        raise ValueError(
            f"influence_matrix must be 1-d (n_train,) or 2-d (n_queries, n_train), got shape "
            f"{matrix.shape}."
        )
    checked = check_removed_groups(groups, matrix.shape[-1], name="groups")
    return np.stack([matrix[..., group].sum(-1) for group in checked], axis=-1)


# -- linear datamodeling score -----------------------------------------------------------------
def _removal_masks(n_train, train_fraction, n_subsets, random_state):
    """Boolean masks (n_subsets, n_train): True where a training point is removed.

    Each subset keeps ``round(train_fraction * n_train)`` points drawn without replacement.
    All masks are drawn up front from one generator, so any ``n_jobs`` gives the same result.
    """
    n_keep = round(train_fraction * n_train)
    if not 1 <= n_keep <= n_train - 1:
        raise ValueError(
            f"train_fraction={train_fraction} keeps {n_keep} of {n_train} training points; "
            "choose a fraction that keeps at least one point and removes at least one."
        )
    rng = check_random_state(random_state)
    masks = np.ones((n_subsets, n_train), dtype=bool)
    for row in masks:  # n_subsets draws, not a loop over examples
        row[rng.choice(n_train, size=n_keep, replace=False)] = False
    return masks


def _fitted_influence_parts(influence):
    """The engine (adapter, θˢ) and the training data of a fitted InfluenceFunction."""
    if not hasattr(influence, "removal_agreement"):
        raise TypeError(
            f"linear_datamodeling_score needs a fitted sklearn_influence.InfluenceFunction, "
            f"got {type(influence).__name__}. Fit an InfluenceFunction on the training set "
            "and pass it."
        )
    check_is_fitted(influence, "engine_")
    return influence.engine_, influence.X_train_, influence.y_train_


@validate_params(
    {
        "influence": "no_validation",
        "X_test": ["array-like"],
        "y_test": ["array-like", None],
        "attributions": ["array-like", None],
        "train_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_subsets": [Interval(Integral, 3, None, closed="left")],
        "warm_start": ["boolean"],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
        "return_per_query": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def linear_datamodeling_score(
    influence,
    X_test,
    y_test=None,
    *,
    attributions=None,
    train_fraction=0.5,
    n_subsets=50,
    warm_start=False,
    n_jobs=None,
    random_state=None,
    return_per_query=False,
):
    """Linear datamodeling score (LDS) of influence estimates.

    ``n_subsets`` random subsets of the training set, each keeping a fraction
    ``train_fraction`` of the points, are drawn; the model is retrained on each subset, and
    for every query the actual measurement after retraining is compared with the
    *predicted* change, the sum of the influence of the removed points,
    ``Σ_{m removed} I[q, m]`` (influence is additive to first order). The LDS is the
    Spearman correlation of predicted and actual values across subsets, averaged over
    queries (Park et al., 2023, "TRAK"). 1 means the summed influence ranks the subsets
    perfectly.

    Cost: ``n_subsets`` retrainings, run through :class:`sklearn.utils.parallel.Parallel`
    (so a joblib backend such as Dask spreads them). Models linear in their parameters are
    minimised exactly in torch; other models are retrained by their adapter.

    Parameters
    ----------
    influence : InfluenceFunction
        A fitted :class:`~sklearn_influence.InfluenceFunction`; it supplies the model, the
        training set, the measurement and (unless ``attributions`` is given) the influence.
    X_test : array-like of shape (n_queries, n_features)
        Query inputs.
    y_test : array-like of shape (n_queries,), default=None
        Query targets; the measurement is the query loss, or as in
        :meth:`InfluenceFunction.transform` without targets.
    attributions : array-like of shape (n_queries, n_train), default=None
        Estimated effects of removing each training point on each query, in the sign
        convention of :meth:`InfluenceFunction.transform` (positive = removal raises the
        measurement). Defaults to ``influence.transform(X_test, y_test)``; pass another
        estimate (another damping, a response function) to score it on the same footing.
    train_fraction : float in (0, 1), default=0.5
        Fraction of the training points each subset keeps.
    n_subsets : int, default=50
        Number of random subsets (retrainings); at least 3.
    warm_start : bool, default=False
        For models retrained by their adapter (neural networks): start each retraining from
        the fitted parameters instead of the original initialisation. Ignored for convex
        models, whose minimiser does not depend on the start.
    n_jobs : int, default=None
        Number of retrainings run in parallel.
    random_state : int, RandomState instance or None, default=None
        Draws the subsets. The same seed and training-set size give the same subsets, so
        different ``attributions`` can be compared on the same retrainings' draw.
    return_per_query : bool, default=False
        Also return the per-query Spearman correlations.

    Returns
    -------
    score : float
        The mean over queries of the Spearman correlation. Queries whose predicted or actual
        values do not vary across subsets are left out of the mean, with a warning.
    per_query : ndarray of shape (n_queries,)
        Only with ``return_per_query=True``.

    See Also
    --------
    influence_correlation : Correlation against leave-one-out or any other ground truth.

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence import InfluenceFunction
    >>> from sklearn_influence.metrics import linear_datamodeling_score
    >>> X, y = load_diabetes(return_X_y=True)
    >>> influence = InfluenceFunction(Ridge(alpha=1.0)).fit(X[:200], y[:200])
    >>> lds = linear_datamodeling_score(
    ...     influence, X[200:220], y[200:220], train_fraction=0.9, n_subsets=20, random_state=0
    ... )
    >>> bool(lds > 0.8)
    True
    """
    engine, X_train, y_train = _fitted_influence_parts(influence)
    adapter, theta = engine.adapter, engine.theta
    n_train = influence.n_train_
    if attributions is None:
        attributions = influence.transform(X_test, y_test)
    attributions = _as_finite_array(attributions, "attributions")
    inputs, targets = query_tensors(influence, adapter, X_test, y_test)
    if attributions.shape != (len(inputs), n_train):
        raise ValueError(
            f"attributions has shape {attributions.shape} but X_test and the training set "
            f"need ({len(inputs)}, {n_train}): one row per query, one column per training point."
        )
    targets = resolve_query_targets(adapter, theta, inputs, targets)
    masks = _removal_masks(n_train, train_fraction, n_subsets, random_state)
    actual = subset_removal_measurements(
        adapter,
        theta,
        X_train,
        y_train,
        masks,
        inputs,
        targets,
        warm_start=warm_start,
        n_jobs=n_jobs,
    )
    predicted = attributions @ masks.T.astype(np.float64)
    per_query, constant = row_correlations(predicted, actual, method="spearman")
    if np.all(constant):
        raise ValueError(
            "For every query the predicted or the actual measurement is the same on all "
            "subsets, so the LDS is undefined; use queries that the training data affect."
        )
    if np.any(constant):
        _warn_constant(int(constant.sum()), len(constant), "queries")
    score = float(np.nanmean(per_query))
    return (score, per_query) if return_per_query else score
