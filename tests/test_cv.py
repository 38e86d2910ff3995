"""Damping selection: InfluenceFunctionCV and GridSearchCV over damping."""

import numpy as np
import pytest
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.preprocessing import StandardScaler

from sklearn_influence import InfluenceFunction, InfluenceFunctionCV

DAMPINGS = [1e-6, 1e-3, 1e-1, 3.0]


@pytest.fixture(scope="module")
def wine():
    X, y = load_wine(return_X_y=True)
    order = np.random.RandomState(0).permutation(len(y))
    X = StandardScaler().fit_transform(X[order])
    return X, y[order]


def _model():
    return LogisticRegression(C=0.5, tol=1e-10, max_iter=5000)


def test_cv_none_scores_each_damping_on_the_training_points(wine):
    X, y = wine
    selector = InfluenceFunctionCV(_model(), dampings=DAMPINGS, n_score_points=10, random_state=0)
    selector.fit(X, y)
    expected = [
        InfluenceFunction(_model(), damping=d, n_score_points=10, random_state=0)
        .fit(X, y)
        .score(X, y)
        for d in DAMPINGS
    ]
    np.testing.assert_allclose(selector.cv_scores_, expected, rtol=1e-9)
    assert selector.damping_ == DAMPINGS[int(np.argmax(expected))]
    # one factorization shared by every damping, and transform uses the selected one
    assert selector.engine_.solver.n_factorizations == 1
    chosen = InfluenceFunction(_model(), damping=selector.damping_).fit(X, y)
    np.testing.assert_allclose(selector.transform(X[:5], y[:5]), chosen.transform(X[:5], y[:5]))


def test_cv_folds_match_grid_search(wine):
    X, y = wine
    folds = KFold(2, shuffle=True, random_state=0)
    selector = InfluenceFunctionCV(
        _model(), dampings=DAMPINGS, cv=folds, n_score_points=8, random_state=0
    ).fit(X, y)
    search = GridSearchCV(
        InfluenceFunction(_model(), n_score_points=8, random_state=0),
        {"damping": DAMPINGS},
        cv=folds,
    ).fit(X, y)
    np.testing.assert_allclose(
        selector.cv_scores_, search.cv_results_["mean_test_score"], rtol=1e-9
    )
    assert selector.damping_ == search.best_params_["damping"]


def test_grid_search_choice_is_near_the_best_on_held_out_points(wine):
    """The damping GridSearchCV picks agrees with LOO on new points within 0.02 of the best."""
    X, y = wine
    X_search, y_search, X_held_out, y_held_out = X[:120], y[:120], X[120:], y[120:]
    search = GridSearchCV(
        InfluenceFunction(_model(), n_score_points=15, random_state=0),
        {"damping": DAMPINGS},
        cv=KFold(3, shuffle=True, random_state=0),
    ).fit(X_search, y_search)
    held_out = {
        d: InfluenceFunction(_model(), damping=d, n_score_points=40, random_state=1)
        .fit(X_search, y_search)
        .score(X_held_out, y_held_out)
        for d in DAMPINGS
    }
    assert held_out[search.best_params_["damping"]] >= max(held_out.values()) - 0.02


def test_bad_dampings(wine):
    X, y = wine
    with pytest.raises(ValueError, match="dampings must be a non-empty 1-d list of values >= 0"):
        InfluenceFunctionCV(_model(), dampings=[1e-3, -1.0]).fit(X, y)
