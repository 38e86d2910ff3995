"""InfluenceFunction inside scikit-learn workflows: pipelines, grid search, clone, pickle."""

import pickle

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn import config_context
from sklearn.base import clone
from sklearn.datasets import load_wine
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression, Ridge, SGDRegressor
from sklearn.model_selection import GridSearchCV, KFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.func import grad

from sklearn_influence import InfluenceFunction, make_influence_scorer
from sklearn_influence.exceptions import NotStationaryWarning, UndefinedCorrelationWarning


@pytest.fixture
def wine():
    X, y = load_wine(return_X_y=True)
    order = np.random.RandomState(0).permutation(len(y))
    return X[order][:130], y[order][:130], X[order][130:], y[order][130:]


def test_pipeline_as_estimator_equals_influence_on_transformed_features(wine):
    X, y, X_test, y_test = wine
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    wrapped = InfluenceFunction(pipeline).fit(X, y)
    scaler = wrapped.estimator_[0]
    direct = InfluenceFunction(LogisticRegression(max_iter=1000)).fit(scaler.transform(X), y)
    np.testing.assert_allclose(
        wrapped.transform(X_test, y_test),
        direct.transform(scaler.transform(X_test), y_test),
        rtol=1e-5,
        atol=1e-12,
    )


def test_influence_function_as_a_pipeline_step(wine):
    X, y, X_test, _ = wine
    pipeline = make_pipeline(StandardScaler(), InfluenceFunction(LogisticRegression(max_iter=1000)))
    matrix = pipeline.fit(X, y).transform(X_test)
    scaler = pipeline[0]
    alone = InfluenceFunction(LogisticRegression(max_iter=1000)).fit(scaler.transform(X), y)
    np.testing.assert_allclose(matrix, alone.transform(scaler.transform(X_test)), rtol=1e-5)
    assert matrix.shape == (len(X_test), len(X))
    names = pipeline.get_feature_names_out()
    assert names[0] == "influencefunction0" and len(names) == len(X)


def test_frozen_estimator_is_used_as_fitted_and_never_refit(wine):
    X, y, X_test, y_test = wine
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5)).fit(X, y)
    coefficients = model[-1].coef_.copy()
    frozen = FrozenEstimator(model)
    influence = InfluenceFunction(frozen).fit(X, y)
    assert influence.estimator_ is frozen
    # the folds of the search are not the data the frozen model was fitted on: warned
    # about, by class
    with pytest.warns(NotStationaryWarning, match="FrozenEstimator, pass fit the data"):
        search = GridSearchCV(
            InfluenceFunction(frozen, n_score_points=8, random_state=0),
            {"damping": [1e-4, 1e-1]},
            cv=2,
        ).fit(X, y)
    assert search.best_params_["damping"] in (1e-4, 1e-1)
    np.testing.assert_array_equal(model[-1].coef_, coefficients)
    assert influence.transform(X_test, y_test).shape == (len(X_test), len(X))


def test_grid_search_over_damping_rejects_heavy_damping():
    X, y = load_wine(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    search = GridSearchCV(
        InfluenceFunction(
            LogisticRegression(C=0.5, tol=1e-10, max_iter=5000), n_score_points=20, random_state=0
        ),
        {"damping": [1e-6, 1e-2, 10.0]},
        cv=KFold(3, shuffle=True, random_state=0),
    ).fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    # near-exact curvature predicts retraining of a converged convex model; heavy damping
    # shrinks the estimates towards a gradient dot product and loses the agreement
    assert search.best_params_["damping"] in (1e-6, 1e-2)
    assert scores.max() > 0.95
    assert scores[2] < scores.max() - 0.05


def test_score_agrees_with_scikit_learn_refits(wine):
    """The score's Newton leave-one-out targets equal scikit-learn refits."""
    X, y, X_test, y_test = wine
    X, X_test = StandardScaler().fit(X).transform(X), StandardScaler().fit(X).transform(X_test)
    model = LogisticRegression(C=0.5, tol=1e-13, solver="newton-cholesky")
    influence = InfluenceFunction(model, damping=1e-8, n_score_points=10, random_state=0)
    influence.fit(X, y)
    rng = np.random.RandomState(0)
    removed = rng.choice(len(y), size=10, replace=False)
    predicted = influence.transform(X_test, y_test)[:, removed].mean(0)

    def mean_log_loss(fitted):
        probabilities = fitted.predict_proba(X_test)
        return -np.log(probabilities[np.arange(len(y_test)), y_test]).mean()

    base = mean_log_loss(influence.estimator_)
    actual = [
        mean_log_loss(clone(model).fit(np.delete(X, m, 0), np.delete(y, m))) - base for m in removed
    ]
    assert influence.score(X_test, y_test) == pytest.approx(
        np.corrcoef(predicted, actual)[0, 1], abs=1e-6
    )


def test_clone_and_pickle_round_trip(wine):
    X, y, X_test, y_test = wine
    influence = InfluenceFunction(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), damping=0.01
    )
    cloned = clone(influence)
    assert cloned.get_params()["damping"] == 0.01 and not hasattr(cloned, "estimator_")
    influence.fit(X, y)
    restored = pickle.loads(pickle.dumps(influence))
    np.testing.assert_array_equal(
        restored.transform(X_test, y_test), influence.transform(X_test, y_test)
    )
    np.testing.assert_array_equal(restored.self_influence(), influence.self_influence())


def test_set_output_pandas_gives_one_column_per_training_point(wine):
    pandas = pytest.importorskip("pandas")
    X, y, X_test, y_test = wine
    influence = InfluenceFunction(
        make_pipeline(StandardScaler(), LogisticRegression()), n_score_points=5
    )
    frame = influence.set_output(transform="pandas").fit(X, y).transform(X_test)
    assert isinstance(frame, pandas.DataFrame)
    assert frame.shape == (len(X_test), len(X))
    assert list(frame.columns[:2]) == ["influencefunction0", "influencefunction1"]
    # the other methods keep working with pandas output switched on
    assert np.isfinite(influence.score(X_test, y_test))
    assert influence.most_influential(X_test[:2], k=3).helpful_indices.shape == (2, 3)


# -- the objective mapping: each fitted estimator minimises the adapter's objective --------
def _objective_gradient_norm(influence):
    engine = influence.engine_
    adapter = engine.adapter
    inputs, targets = adapter.inputs(influence.X_train_), adapter.targets(influence.y_train_)

    def objective(theta):
        return adapter.objective(theta, inputs, targets)

    gradient = grad(objective)(engine.theta)
    return float(gradient.norm()), float(engine.train_gradients(slice(None)).norm(dim=1).mean())


@pytest.mark.parametrize(
    "model",
    [
        LogisticRegression(C=0.3, tol=1e-12, solver="newton-cholesky"),
        LogisticRegression(C=0.3, tol=1e-12, solver="newton-cholesky", fit_intercept=False),
        Ridge(alpha=7.0),
    ],
    ids=["logistic", "logistic_no_intercept", "ridge"],
)
def test_fitted_estimator_is_stationary_for_the_adapter_objective(wine, model):
    """A wrong regularizer scale would leave a gradient of the size of the penalty term."""
    X, y, _, _ = wine
    X = StandardScaler().fit_transform(X)
    gradient_norm, typical_example_gradient = _objective_gradient_norm(
        InfluenceFunction(model).fit(X, y)
    )
    assert gradient_norm < 1e-7 * typical_example_gradient


def test_sgd_regressor_objective_scale_matches_its_optimum():
    """SGD with many small steps lands near argmin mean ½(y − ŷ)² + α·½‖w‖²."""
    X = StandardScaler().fit_transform(load_wine(return_X_y=True)[0])
    target = X @ np.linspace(-1, 1, X.shape[1]) + 0.1 * np.random.RandomState(0).randn(len(X))
    model = SGDRegressor(
        alpha=0.5, learning_rate="constant", eta0=1e-3, max_iter=5000, tol=None, random_state=0
    )
    influence = InfluenceFunction(model).fit(X, target)
    gradient_norm, typical_example_gradient = _objective_gradient_norm(influence)
    # a factor-2 error in the loss or penalty scale leaves a gradient of order α‖w‖ ≈ 0.5
    assert gradient_norm < 0.01 * typical_example_gradient


def test_y_test_routes_through_pipeline_transform_with_metadata_routing(wine):
    X, y, X_test, y_test = wine
    with config_context(enable_metadata_routing=True):
        influence = InfluenceFunction(LogisticRegression(max_iter=1000))
        pipeline = make_pipeline(StandardScaler(), influence.set_transform_request(y_test=True))
        # labels other than the predicted ones, so that routing them changes the result
        other_labels = (y_test + 1) % 3
        routed = pipeline.fit(X, y).transform(X_test, y_test=other_labels)
        scaled = pipeline[0].transform(X_test)
        np.testing.assert_array_equal(routed, pipeline[-1].transform(scaled, other_labels))
        assert not np.allclose(routed, pipeline[-1].transform(scaled))


def test_spearman_scorer_in_cross_validate_matches_manual_computation(wine):
    X, y, X_test, y_test = wine
    X, X_test = StandardScaler().fit(X).transform(X), StandardScaler().fit(X).transform(X_test)
    influence = InfluenceFunction(
        LogisticRegression(C=0.5, tol=1e-10, max_iter=5000), n_score_points=12, random_state=0
    ).fit(X, y)
    spearman = make_influence_scorer(correlation="spearman")(influence, X_test, y_test)
    pearson = make_influence_scorer(correlation="pearson")(influence, X_test, y_test)
    assert pearson == influence.score(X_test, y_test)
    # recompute Spearman from the same targets: ranks of predicted vs Newton LOO changes
    removed = np.random.RandomState(0).choice(len(y), size=12, replace=False)
    predicted = influence.transform(X_test, y_test)[:, removed].mean(0)
    actual = [_mean_log_loss_without(influence, X, y, X_test, y_test, m) for m in removed]
    base = _mean_log_loss_without(influence, X, y, X_test, y_test, None)
    assert spearman == pytest.approx(spearmanr(predicted, np.array(actual) - base).statistic)
    results = cross_validate(
        InfluenceFunction(LogisticRegression(max_iter=2000), n_score_points=6, random_state=0),
        X,
        y,
        cv=2,
        scoring={"spearman": make_influence_scorer(correlation="spearman")},
    )
    assert np.all(np.isfinite(results["test_spearman"]))


def _mean_log_loss_without(influence, X, y, X_test, y_test, removed):
    model = clone(influence.estimator_).set_params(tol=1e-13, solver="newton-cholesky")
    keep = np.arange(len(y)) != removed
    probabilities = model.fit(X[keep], y[keep]).predict_proba(X_test)
    return -np.log(probabilities[np.arange(len(y_test)), y_test]).mean()


def test_pbrf_score_target_at_matching_damping_is_near_perfect(wine):
    """The influence estimate is the linearisation of the PBRF at the same damping."""
    X, y, X_test, y_test = wine
    X, X_test = StandardScaler().fit(X).transform(X), StandardScaler().fit(X).transform(X_test)
    model = LogisticRegression(C=0.5, tol=1e-10, max_iter=5000)
    settings = {"n_score_points": 15, "random_state": 0, "score_target": "pbrf"}
    matching = InfluenceFunction(model, damping=0.1, score_damping=0.1, **settings).fit(X, y)
    assert matching.score(X_test, y_test) > 0.999
    # a far-off damping predicts the same PBRF target worse
    far = InfluenceFunction(model, damping=30.0, score_damping=0.1, **settings).fit(X, y)
    assert far.score(X_test, y_test) < matching.score(X_test, y_test)


def test_removal_agreement_is_what_score_and_the_scorers_report(wine):
    X, y, X_test, y_test = wine
    X, X_test = StandardScaler().fit(X).transform(X), StandardScaler().fit(X).transform(X_test)
    model = LogisticRegression(C=0.5, tol=1e-13, solver="newton-cholesky")
    influence = InfluenceFunction(model, n_score_points=10, random_state=0).fit(X, y)
    agreement = influence.removal_agreement(X_test, y_test)
    # the points score removes, the mean influence over the queries, Newton LOO changes
    removed = np.random.RandomState(0).choice(len(y), size=10, replace=False)
    np.testing.assert_array_equal(agreement.removed, removed)
    np.testing.assert_array_equal(
        agreement.predicted, influence.transform(X_test, y_test)[:, removed].mean(0)
    )
    base = _mean_log_loss_without(influence, X, y, X_test, y_test, None)
    actual = [_mean_log_loss_without(influence, X, y, X_test, y_test, m) - base for m in removed]
    np.testing.assert_allclose(agreement.actual, actual, rtol=1e-6, atol=1e-9)
    assert agreement.pearson == influence.score(X_test, y_test)
    assert agreement.pearson == pytest.approx(np.corrcoef(agreement.predicted, actual)[0, 1])
    spearman = make_influence_scorer(correlation="spearman")(influence, X_test, y_test)
    assert agreement.spearman == spearman
    # explicit points, another target
    chosen = influence.removal_agreement(
        X_test, y_test, train_indices=[3, 1, 4], target="pbrf", pbrf_damping=0.5
    )
    np.testing.assert_array_equal(chosen.removed, [3, 1, 4])
    assert chosen.predicted.shape == chosen.actual.shape == (3,)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target": "cold"}, "target must be one of"),
        ({"pbrf_damping": -1.0}, "pbrf_damping must be a number >= 0"),
        ({"train_indices": [0, 0]}, "duplicates"),
        ({"train_indices": [130]}, r"must lie in \[0, 129\]"),
    ],
)
def test_removal_agreement_rejects_bad_arguments(wine, kwargs, match):
    X, y, X_test, y_test = wine
    influence = InfluenceFunction(Ridge(), n_score_points=4).fit(X, y)
    with pytest.raises(ValueError, match=match):
        influence.removal_agreement(X_test, y_test, **kwargs)


def test_undefined_agreement_warns_once_and_is_nan(wine):
    X, y, X_test, y_test = wine
    influence = InfluenceFunction(Ridge(), n_score_points=4).fit(X, y)
    with pytest.warns(UndefinedCorrelationWarning, match="constant") as record:
        agreement = influence.removal_agreement(X_test, y_test, train_indices=[5])
    assert len(record) == 1
    assert np.isnan(agreement.pearson) and np.isnan(agreement.spearman)
