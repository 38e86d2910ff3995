"""scikit-learn's estimator checks for every public estimator of the package."""

from sklearn.linear_model import (
    LinearRegression,
    LogisticRegression,
    Ridge,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_influence import InfluenceFunction, InfluenceFunctionCV

ESTIMATORS = [
    InfluenceFunction(LogisticRegression(max_iter=200), n_score_points=5, random_state=0),
    InfluenceFunction(Ridge(alpha=1.0), n_score_points=5, random_state=0),
    InfluenceFunction(LinearRegression(), n_score_points=5, random_state=0),
    InfluenceFunction(
        SGDClassifier(loss="log_loss", random_state=0), n_score_points=5, random_state=0
    ),
    InfluenceFunction(SGDRegressor(random_state=0), n_score_points=5, random_state=0),
    InfluenceFunction(make_pipeline(StandardScaler(), LogisticRegression()), random_state=0),
    InfluenceFunctionCV(Ridge(), dampings=[1e-3, 1.0], n_score_points=4, random_state=0),
]


def expected_failures(estimator):
    return {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failures)
def test_scikit_learn_contract(estimator, check):
    check(estimator)
