"""Mislabel detection metrics: the fraction of known mislabeled training points found as a
function of the fraction of the training set inspected, most suspicious first.

Re-exported by :mod:`sklearn_influence.metrics`; a module of its own so that the Display
(:mod:`._display`) imports it without importing its parent package (no import cycle).
"""

from numbers import Real

import numpy as np
from sklearn.utils._param_validation import Interval, validate_params
from sklearn.utils.validation import check_consistent_length, column_or_1d


def _as_finite_array(values, name):
    array = np.asarray(values, dtype=np.float64)
    if array.size and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinity; remove or fix those entries.")
    return array


# -- mislabel detection ----------------------------------------------------------------------
def _check_detection_inputs(is_mislabeled, scores):
    is_mislabeled = column_or_1d(is_mislabeled)
    scores = column_or_1d(scores)
    check_consistent_length(is_mislabeled, scores)
    if is_mislabeled.dtype != bool:
        values = np.unique(is_mislabeled)
        if not np.all(np.isin(values, [0, 1])):
            raise ValueError(
                f"is_mislabeled must be boolean (or 0/1), got values {values[:5].tolist()}; "
                "pass a mask that is True for the training points known to be mislabeled."
            )
        is_mislabeled = is_mislabeled.astype(bool)
    scores = _as_finite_array(scores, "scores")
    if not is_mislabeled.any():
        raise ValueError(
            "is_mislabeled has no mislabeled point, so recall is undefined; pass a mask with "
            "at least one True."
        )
    return is_mislabeled, scores


@validate_params(
    {"is_mislabeled": ["array-like"], "scores": ["array-like"]},
    prefer_skip_nested_validation=True,
)
def mislabel_recall_curve(is_mislabeled, scores):
    """Recall of mislabeled points against the fraction of the data inspected.

    Points are inspected from the highest score down. Tied scores are inspected as one group,
    and the curve is linear across the group: the expected recall when ties are broken at
    random. Without ties there is one point per inspected example.

    Parameters
    ----------
    is_mislabeled : array-like of shape (n_samples,)
        True (or 1) for the points whose label is known to be wrong.
    scores : array-like of shape (n_samples,)
        Suspicion of each point, **higher = inspect first** (as ``y_score`` in
        :func:`sklearn.metrics.roc_curve`). For a fitted
        :class:`~sklearn_influence.MislabelDetector` this is
        ``-detector.score_samples(X, y)`` or ``detector.mislabel_scores_``.

    Returns
    -------
    fraction_inspected : ndarray of shape (n_points,)
        Increasing from 0 to 1.
    recall : ndarray of shape (n_points,)
        Fraction of the mislabeled points among the inspected ones, from 0 to 1.

    See Also
    --------
    mislabel_detection_recall : Recall after inspecting a given fraction.
    mislabel_detection_auc : Area under this curve.
    MislabelRecallDisplay : Plot of this curve.

    Examples
    --------
    >>> from sklearn_influence.metrics import mislabel_recall_curve
    >>> fraction, recall = mislabel_recall_curve([0, 1, 0, 1], [0.1, 0.9, 0.3, 0.2])
    >>> fraction
    array([0.  , 0.25, 0.5 , 0.75, 1.  ])
    >>> recall
    array([0. , 0.5, 0.5, 1. , 1. ])
    """
    is_mislabeled, scores = _check_detection_inputs(is_mislabeled, scores)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    # last position of each group of tied scores
    group_ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    found = np.cumsum(is_mislabeled[order])[group_ends]
    fraction_inspected = np.r_[0.0, (group_ends + 1) / len(scores)]
    recall = np.r_[0.0, found / is_mislabeled.sum()]
    return fraction_inspected, recall


@validate_params(
    {
        "is_mislabeled": ["array-like"],
        "scores": ["array-like"],
        "fraction": [Interval(Real, 0, 1, closed="both"), "array-like"],
    },
    prefer_skip_nested_validation=True,
)
def mislabel_detection_recall(is_mislabeled, scores, *, fraction=0.1):
    """Fraction of the mislabeled points found after inspecting a fraction of the data.

    Parameters
    ----------
    is_mislabeled : array-like of shape (n_samples,)
        True (or 1) for the points whose label is known to be wrong.
    scores : array-like of shape (n_samples,)
        Suspicion of each point, higher = inspect first.
    fraction : float or array-like of floats in [0, 1], default=0.1
        Fraction(s) of the points inspected, most suspicious first. Between two inspected
        counts, and inside groups of tied scores, the recall is interpolated linearly (see
        :func:`mislabel_recall_curve`).

    Returns
    -------
    recall : float or ndarray
        One recall per fraction.

    Examples
    --------
    >>> from sklearn_influence.metrics import mislabel_detection_recall
    >>> mislabel_detection_recall([0, 1, 0, 1], [0.1, 0.9, 0.3, 0.2], fraction=0.5)
    0.5
    """
    fractions = np.asarray(fraction, dtype=np.float64)
    if np.any((fractions < 0) | (fractions > 1)) or not np.all(np.isfinite(fractions)):
        raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}.")
    curve_fraction, curve_recall = mislabel_recall_curve(is_mislabeled, scores)
    recall = np.interp(fractions, curve_fraction, curve_recall)
    return float(recall) if recall.ndim == 0 else recall


@validate_params(
    {
        "is_mislabeled": ["array-like"],
        "scores": ["array-like"],
        "max_fraction": [Interval(Real, 0, 1, closed="right")],
    },
    prefer_skip_nested_validation=True,
)
def mislabel_detection_auc(is_mislabeled, scores, *, max_fraction=1.0):
    """Area under the recall-vs-fraction-inspected curve, normalised by ``max_fraction``.

    With ``max_fraction=1`` a random order scores 0.5 in expectation and a perfect one
    ``1 − p/2`` for a fraction ``p`` of mislabeled points; the area equals
    ``p/2 + (1 − p)·ROC AUC`` of the same scores. A smaller ``max_fraction`` measures only
    the beginning of the inspection (random order: ``max_fraction/2``).

    Parameters
    ----------
    is_mislabeled : array-like of shape (n_samples,)
        True (or 1) for the points whose label is known to be wrong.
    scores : array-like of shape (n_samples,)
        Suspicion of each point, higher = inspect first.
    max_fraction : float in (0, 1], default=1.0
        Integrate the curve from 0 to this fraction inspected.

    Returns
    -------
    auc : float
        In [0, 1].

    Examples
    --------
    >>> from sklearn_influence.metrics import mislabel_detection_auc
    >>> mislabel_detection_auc([0, 1, 0, 1], [0.1, 0.9, 0.3, 0.2])
    0.625
    """
    fraction, recall = mislabel_recall_curve(is_mislabeled, scores)
    inside = fraction < max_fraction
    end_recall = np.interp(max_fraction, fraction, recall)
    fraction, recall = np.r_[fraction[inside], max_fraction], np.r_[recall[inside], end_recall]
    return float(np.trapezoid(recall, fraction) / max_fraction)
