"""Scorer factories: agreement of influence estimates with retraining, for model selection."""

from ._responses._removal import SCORE_TARGETS

CORRELATIONS = ("pearson", "spearman")


def make_influence_scorer(target="loo", correlation="pearson", pbrf_damping=1e-3):
    """A scorer ``scorer(estimator, X, y) -> float`` for a fitted ``InfluenceFunction``.

    It removes the estimator's ``n_score_points`` training points one at a time, retrains as
    ``target`` says, and correlates the actual change of the mean loss on (X, y) with the
    predicted one: the ``correlation`` field of
    :meth:`~sklearn_influence.InfluenceFunction.removal_agreement`. Use it as
    ``GridSearchCV(scoring=...)`` or in ``cross_validate``, for
    example to select damping by rank agreement instead of the default Pearson score.

    Parameters
    ----------
    target : {"loo", "warm_loo", "pbrf"}, default="loo"
        The retraining the estimates are compared with (see ``InfluenceFunction``'s
        ``score_target``).
    correlation : {"pearson", "spearman"}, default="pearson"
    pbrf_damping : float, default=1e-3
        Proximity damping of the ``"pbrf"`` target.

    Returns
    -------
    scorer : callable
        Higher is better.

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn.model_selection import cross_validate
    >>> from sklearn_influence import InfluenceFunction, make_influence_scorer
    >>> X, y = load_diabetes(return_X_y=True)
    >>> scores = cross_validate(
    ...     InfluenceFunction(Ridge(), n_score_points=10, random_state=0), X, y, cv=2,
    ...     scoring={"spearman": make_influence_scorer(correlation="spearman")},
    ... )
    >>> bool(scores["test_spearman"].min() > 0.9)
    True
    """
    if target not in SCORE_TARGETS:
        raise ValueError(f"target must be one of {SCORE_TARGETS}, got {target!r}.")
    if correlation not in CORRELATIONS:
        raise ValueError(f"correlation must be one of {CORRELATIONS}, got {correlation!r}.")

    def influence_scorer(estimator, X, y):
        agreement = estimator.removal_agreement(X, y, target=target, pbrf_damping=pbrf_damping)
        return agreement[correlation]

    influence_scorer.__name__ = f"influence_{target}_{correlation}_scorer"
    return influence_scorer
