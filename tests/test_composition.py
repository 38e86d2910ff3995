"""InfluenceFunction composes with scikit-learn's own objects: the query labels are used.

``fit_transform(X, y)`` is ``fit(X, y).transform(X, y)``; the labels of the queries reach
``transform`` inside a ``Pipeline`` through metadata routing; a searched estimator's matrix is
``search.best_estimator_.transform(X, y_test)``; ``clone`` gives the same matrices.
"""

import numpy as np
import pytest
import sklearn
from sklearn.base import clone
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_influence import InfluenceFunction


@pytest.fixture
def wine():
    X, y = load_wine(return_X_y=True)
    order = np.random.RandomState(0).permutation(len(y))
    X, y = StandardScaler().fit_transform(X[order]), y[order]
    y[:10] = (y[:10] + 1) % 3  # mislabeled rows: the labels are not the predicted classes
    return X[:100], y[:100], X[100:130], (y[100:130] + 1) % 3


@pytest.fixture
def routing():
    """Metadata routing on for one test, reset after it whatever happens."""
    sklearn.set_config(enable_metadata_routing=True)
    yield
    sklearn.set_config(enable_metadata_routing=False)


def _model():
    return LogisticRegression(C=0.5, tol=1e-10, max_iter=1000)


@pytest.mark.parametrize("model", [_model(), Ridge(alpha=1.0)], ids=["logistic", "ridge"])
def test_fit_transform_is_fit_then_transform_with_the_labels(wine, model):
    X, y, _, _ = wine
    fitted = InfluenceFunction(model, random_state=0).fit(X, y)
    with_labels = fitted.transform(X, y)
    np.testing.assert_array_equal(
        InfluenceFunction(model, random_state=0).fit_transform(X, y), with_labels
    )
    # the label-free measurement (predicted class / prediction) is another matrix
    assert not np.allclose(with_labels, fitted.transform(X))
    # the diagonal of the training set's influence on itself is the self-influence
    np.testing.assert_allclose(np.diag(with_labels), fitted.self_influence(), rtol=1e-8)


def test_pipeline_routes_the_query_labels_to_transform(wine, routing):
    X, y, X_test, y_test = wine
    pipeline = Pipeline(
        [
            ("scale", StandardScaler()),
            ("influence", InfluenceFunction(_model()).set_transform_request(y_test=True)),
        ]
    )
    matrix = pipeline.fit(X, y).transform(X_test, y_test=y_test)
    alone = InfluenceFunction(_model()).fit(pipeline[0].transform(X), y)
    scaled = pipeline[0].transform(X_test)
    np.testing.assert_allclose(matrix, alone.transform(scaled, y_test), rtol=1e-8, atol=1e-14)
    assert not np.allclose(matrix, alone.transform(scaled))
    # the pipeline's fit_transform hands y to the last step's fit_transform: labels used
    np.testing.assert_allclose(
        clone(pipeline).fit_transform(X, y),
        alone.transform(pipeline[0].transform(X), y),
        rtol=1e-8,
        atol=1e-14,
    )


def test_unrequested_labels_in_a_pipeline_are_refused_not_dropped(wine, routing):
    X, y, X_test, y_test = wine
    pipeline = Pipeline([("scale", StandardScaler()), ("influence", InfluenceFunction(_model()))])
    pipeline.fit(X, y)
    with pytest.raises(ValueError, match="set_transform_request"):
        pipeline.transform(X_test, y_test=y_test)


def test_a_searched_estimators_matrix_is_best_estimator_transform(wine):
    X, y, X_test, y_test = wine
    search = GridSearchCV(
        InfluenceFunction(Ridge(), n_score_points=8, random_state=0),
        {"damping": [1e-4, 1.0]},
        cv=KFold(2, shuffle=True, random_state=0),
    ).fit(X, y)
    damping = search.best_params_["damping"]
    refit = InfluenceFunction(Ridge(), damping=damping, n_score_points=8, random_state=0)
    expected = refit.fit(X, y).transform(X_test, y_test)
    np.testing.assert_allclose(
        search.best_estimator_.transform(X_test, y_test), expected, rtol=1e-8, atol=1e-14
    )
    # GridSearchCV.transform takes X only: the label-free measurement
    np.testing.assert_allclose(
        search.transform(X_test), refit.transform(X_test), rtol=1e-8, atol=1e-14
    )


def test_clone_keeps_the_settings_and_gives_the_same_matrix(wine):
    X, y, X_test, y_test = wine
    fitted = InfluenceFunction(_model(), damping=1e-2, random_state=0).fit(X, y)
    copy = clone(fitted)
    assert not hasattr(copy, "engine_") and copy.get_params()["damping"] == 1e-2
    np.testing.assert_array_equal(
        copy.fit(X, y).transform(X_test, y_test), fitted.transform(X_test, y_test)
    )
