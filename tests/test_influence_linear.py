"""InfluenceFunction on scikit-learn linear models against independent truth.

Truth here is (a) scikit-learn itself refitting without each removed point, and (b) the
influence formula written out in numpy from the fitted coefficients, with no torch.
"""

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import (
    LinearRegression,
    LogisticRegression,
    Ridge,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.preprocessing import StandardScaler

from sklearn_influence import InfluenceFunction

N_REMOVED = 60


def _standardized(loader, n_train):
    X, y = loader(return_X_y=True)
    rng = np.random.RandomState(0)
    order = rng.permutation(len(y))
    X, y = X[order], y[order]
    scaler = StandardScaler().fit(X[:n_train])
    return scaler.transform(X[:n_train]), y[:n_train], scaler.transform(X[n_train:]), y[n_train:]


def _log_loss(model, X, y):
    probabilities = model.predict_proba(X)
    positions = np.searchsorted(model.classes_, y)
    return -np.log(probabilities[np.arange(len(y)), positions])


def _squared_loss(model, X, y):
    return ((model.predict(X) - y) ** 2).reshape(len(y), -1).sum(1)


def _refit_loss_changes(model, X, y, X_test, y_test, removed, loss):
    """Actual change of each test loss when each removed point is left out (sklearn refit)."""
    base = loss(model, X_test, y_test)
    changes = []
    for index in removed:
        keep = np.arange(len(y)) != index
        refit = model.__class__(**model.get_params()).fit(X[keep], y[keep])
        changes.append(loss(refit, X_test, y_test) - base)
    return np.array(changes).T  # (n_test, n_removed)


def _agreement(predicted, actual):
    """Pearson of mean test-loss changes and the least-squares slope of actual on predicted."""
    predicted, actual = predicted.mean(0), actual.mean(0)
    pearson = np.corrcoef(predicted, actual)[0, 1]
    slope = np.polyfit(predicted, actual, 1)[0]
    return pearson, slope


# Removing a whole point is a finite step: the exact change carries the leverage factor
# 1/(1 − h_m) that the first-order estimate drops, so actual LOO changes are systematically a
# little larger (slope > 1, more so for small N/p). The scale itself is checked tightly by
# the infinitesimal down-weighting test below.
LOO_SLOPE_TOLERANCE = 0.3


def test_ridge_matches_leave_one_out_retraining():
    X, y, X_test, y_test = _standardized(load_diabetes, 300)
    model = Ridge(alpha=3.0)
    influence = InfluenceFunction(model, damping=0.0).fit(X, y)
    removed = np.random.RandomState(1).choice(len(y), N_REMOVED, replace=False)
    predicted = influence.transform(X_test, y_test)[:, removed]
    actual = _refit_loss_changes(influence.estimator_, X, y, X_test, y_test, removed, _squared_loss)
    pearson, slope = _agreement(predicted, actual)
    assert pearson >= 0.99
    assert 1.0 <= slope <= 1.0 + LOO_SLOPE_TOLERANCE
    # per query too, on the query with the largest effects
    query = np.argmax(np.abs(actual).sum(1))
    assert np.corrcoef(predicted[query], actual[query])[0, 1] >= 0.99


@pytest.mark.parametrize(
    "loader, n_train", [(load_breast_cancer, 400), (load_wine, 130)], ids=["binary", "multinomial"]
)
def test_logistic_regression_matches_leave_one_out_retraining(loader, n_train):
    X, y, X_test, y_test = _standardized(loader, n_train)
    model = LogisticRegression(C=0.5, tol=1e-12, solver="newton-cholesky")
    influence = InfluenceFunction(model, damping=1e-8).fit(X, y)
    removed = np.random.RandomState(2).choice(len(y), N_REMOVED, replace=False)
    predicted = influence.transform(X_test, y_test)[:, removed]
    actual = _refit_loss_changes(influence.estimator_, X, y, X_test, y_test, removed, _log_loss)
    pearson, slope = _agreement(predicted, actual)
    assert pearson >= 0.98
    assert 1.0 <= slope <= 1.0 + LOO_SLOPE_TOLERANCE


@pytest.mark.parametrize(
    "model, loader, loss",
    [
        (Ridge(alpha=3.0), load_diabetes, _squared_loss),
        (
            LogisticRegression(C=0.5, tol=1e-13, solver="newton-cholesky"),
            load_breast_cancer,
            _log_loss,
        ),
        (LogisticRegression(C=0.5, tol=1e-13, solver="newton-cholesky"), load_wine, _log_loss),
    ],
    ids=["ridge", "binary_logistic", "multinomial_logistic"],
)
def test_scale_matches_infinitesimal_down_weighting(model, loader, loss):
    """Refitting with sample_weight 1 − δ on point m changes f_q by δ·I[q, m] to first order.

    scikit-learn's sample weights scale each point's loss in its own objective, so this checks
    the 1/N scale and the regularizer mapping against scikit-learn with no second-order gap.
    """
    X, y, X_test, y_test = _standardized(loader, 120)
    influence = InfluenceFunction(model, damping=0.0).fit(X, y)
    fitted, delta = influence.estimator_, 1e-3
    removed = np.random.RandomState(3).choice(len(y), 10, replace=False)
    base = loss(fitted, X_test, y_test)
    actual = []
    for index in removed:
        weights = np.ones(len(y))
        weights[index] -= delta
        refit = model.__class__(**model.get_params()).fit(X, y, sample_weight=weights)
        actual.append((loss(refit, X_test, y_test) - base) / delta)
    predicted = influence.transform(X_test, y_test)[:, removed]
    np.testing.assert_allclose(
        np.array(actual).T, predicted, rtol=0.01, atol=1e-3 * np.abs(predicted).max()
    )


# -- numpy closed forms -------------------------------------------------------------------
def _design(model, X):
    """[X, 1] when the model has an intercept."""
    return np.column_stack([X, np.ones(len(X))]) if model.fit_intercept else X


def _weights(model):
    coef = np.atleast_2d(model.coef_)
    if model.fit_intercept:
        return np.column_stack([coef, np.broadcast_to(model.intercept_, (coef.shape[0],))])
    return coef


def _numpy_influence(gradients_test, gradients_train, curvature, damping, n_train):
    damped = curvature + damping * np.eye(len(curvature))
    return gradients_test @ np.linalg.solve(damped, gradients_train.T) / n_train


def _penalty_diagonal(model, per_weight):
    weights = _weights(model)
    diagonal = np.full(weights.shape, per_weight, dtype=float)
    if model.fit_intercept:
        diagonal[:, -1] = 0.0
    return np.diag(diagonal.ravel())


def _multinomial_reference(model, X, y, X_test, y_test, damping):
    """Softmax cross-entropy: ∇L = (p − e_y) ⊗ x̃, G = mean (diag p − ppᵀ) ⊗ x̃x̃ᵀ + I/(CN)."""
    Z, Z_test, W = _design(model, X), _design(model, X_test), _weights(model)
    k = len(model.classes_)

    def gradients(Z_, y_):
        residual = softmax(Z_ @ W.T, axis=1) - np.eye(k)[np.searchsorted(model.classes_, y_)]
        return (residual[:, :, None] * Z_[:, None, :]).reshape(len(Z_), -1)

    probabilities = softmax(Z @ W.T, axis=1)
    curvature = sum(
        np.kron(np.diag(p) - np.outer(p, p), np.outer(z, z))
        for p, z in zip(probabilities, Z, strict=True)
    ) / len(Z) + _penalty_diagonal(model, 1.0 / (model.C * len(Z)))
    return _numpy_influence(gradients(Z_test, y_test), gradients(Z, y), curvature, damping, len(Z))


def _binary_reference(model, X, y, X_test, y_test, damping, per_weight):
    """One logit per class, independent binary log-losses (binary LR and one-vs-rest SGD)."""
    Z, Z_test, W = _design(model, X), _design(model, X_test), _weights(model)
    classes = model.classes_

    def targets(y_):
        positions = np.searchsorted(classes, y_)
        return (
            positions[:, None].astype(float) if W.shape[0] == 1 else np.eye(len(classes))[positions]
        )

    def gradients(Z_, y_):
        residual = expit(Z_ @ W.T) - targets(y_)
        return (residual[:, :, None] * Z_[:, None, :]).reshape(len(Z_), -1)

    sigma = expit(Z @ W.T)
    curvature = sum(
        np.kron(np.diag(s * (1 - s)), np.outer(z, z)) for s, z in zip(sigma, Z, strict=True)
    ) / len(Z) + _penalty_diagonal(model, per_weight)
    return _numpy_influence(gradients(Z_test, y_test), gradients(Z, y), curvature, damping, len(Z))


def _squared_reference(model, X, y, X_test, y_test, damping, scale, per_weight):
    """L = scale·‖h − t‖²: ∇L = 2·scale·(ŷ − y) ⊗ x̃, G = 2·scale·mean I ⊗ x̃x̃ᵀ + penalty."""
    Z, Z_test, W = _design(model, X), _design(model, X_test), _weights(model)
    k = W.shape[0]

    def gradients(Z_, y_):
        residual = 2 * scale * (Z_ @ W.T - np.reshape(y_, (len(Z_), k)))
        return (residual[:, :, None] * Z_[:, None, :]).reshape(len(Z_), -1)

    curvature = 2 * scale * np.kron(np.eye(k), Z.T @ Z) / len(Z) + _penalty_diagonal(
        model, per_weight
    )
    return _numpy_influence(gradients(Z_test, y_test), gradients(Z, y), curvature, damping, len(Z))


def _relative_error(actual, expected):
    return np.abs(actual - expected).max() / np.abs(expected).max()


def test_multinomial_logistic_matches_numpy_closed_form():
    X, y, X_test, y_test = _standardized(load_wine, 120)
    influence = InfluenceFunction(LogisticRegression(C=2.0, max_iter=1000), damping=0.01).fit(X, y)
    expected = _multinomial_reference(influence.estimator_, X, y, X_test, y_test, 0.01)
    assert _relative_error(influence.transform(X_test, y_test), expected) < 1e-6


def test_binary_logistic_without_intercept_matches_numpy_closed_form():
    X, y, X_test, y_test = _standardized(load_breast_cancer, 300)
    model = LogisticRegression(C=0.3, fit_intercept=False, max_iter=1000)
    influence = InfluenceFunction(model, damping=1e-3).fit(X, y)
    fitted = influence.estimator_
    expected = _binary_reference(fitted, X, y, X_test, y_test, 1e-3, 1.0 / (0.3 * len(y)))
    assert _relative_error(influence.transform(X_test, y_test), expected) < 1e-6


# SGD stops near, not at, the optimum; the closed form is taken at the same coefficients
@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.NotStationaryWarning")
def test_one_vs_rest_sgd_classifier_matches_numpy_closed_form():
    X, y, X_test, y_test = _standardized(load_wine, 120)
    model = SGDClassifier(loss="log_loss", alpha=0.01, random_state=0)
    influence = InfluenceFunction(model, damping=0.1).fit(X, y)
    expected = _binary_reference(influence.estimator_, X, y, X_test, y_test, 0.1, 0.01)
    assert _relative_error(influence.transform(X_test, y_test), expected) < 1e-6


def test_multi_target_ridge_matches_numpy_closed_form():
    X, y, X_test, y_test = _standardized(load_diabetes, 300)
    targets, targets_test = (
        np.column_stack([y, -0.5 * y + X[:, 0]]),
        np.column_stack([y_test, -0.5 * y_test + X_test[:, 0]]),
    )
    influence = InfluenceFunction(Ridge(alpha=5.0), damping=0.0).fit(X, targets)
    model = influence.estimator_
    expected = _squared_reference(model, X, targets, X_test, targets_test, 0.0, 1.0, 2 * 5.0 / 300)
    assert _relative_error(influence.transform(X_test, targets_test), expected) < 1e-6


@pytest.mark.parametrize(
    "model, scale, per_weight",
    [
        (LinearRegression(), 1.0, 0.0),
        (SGDRegressor(alpha=0.05, random_state=0), 0.5, 0.05),
    ],
    ids=["linear_regression", "sgd_regressor"],
)
# SGD stops near, not at, the optimum; the closed form is taken at the same coefficients
@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.NotStationaryWarning")
def test_regressors_match_numpy_closed_form(model, scale, per_weight):
    X, y, X_test, y_test = _standardized(load_diabetes, 300)
    influence = InfluenceFunction(model, damping=1e-4).fit(X, y)
    fitted = influence.estimator_
    expected = _squared_reference(fitted, X, y, X_test, y_test, 1e-4, scale, per_weight)
    assert _relative_error(influence.transform(X_test, y_test), expected) < 1e-6


def test_regressor_measurement_without_targets_is_the_prediction():
    """Without y_test the measurement is ŷ, whose gradient is x̃."""
    X, y, X_test, _ = _standardized(load_diabetes, 300)
    influence = InfluenceFunction(Ridge(alpha=1.0), damping=0.0).fit(X, y)
    model = influence.estimator_
    Z, Z_test = _design(model, X), _design(model, X_test)
    residual = 2 * (model.predict(X) - y)
    curvature = 2 * Z.T @ Z / 300 + _penalty_diagonal(model, 2.0 / 300)
    expected = _numpy_influence(Z_test, residual[:, None] * Z, curvature, 0.0, 300)
    assert _relative_error(influence.transform(X_test), expected) < 1e-6


def test_classifier_measurement_without_targets_uses_predicted_class():
    X, y, X_test, _ = _standardized(load_wine, 120)
    influence = InfluenceFunction(LogisticRegression(max_iter=1000)).fit(X, y)
    predicted_labels = influence.estimator_.predict(X_test)
    np.testing.assert_allclose(
        influence.transform(X_test), influence.transform(X_test, predicted_labels), rtol=1e-12
    )


def test_self_influence_is_diagonal_of_training_influence_and_nonnegative():
    X, y, _, _ = _standardized(load_wine, 120)
    influence = InfluenceFunction(LogisticRegression(max_iter=1000), damping=1e-3).fit(X, y)
    self_influence = influence.self_influence()
    np.testing.assert_allclose(self_influence, np.diag(influence.transform(X, y)), rtol=1e-8)
    assert np.all(self_influence >= 0)


def test_string_labels():
    X, y, X_test, y_test = _standardized(load_wine, 120)
    names = np.array(["barolo", "grignolino", "barbera"])
    influence = InfluenceFunction(LogisticRegression(max_iter=1000)).fit(X, names[y])
    numeric = InfluenceFunction(LogisticRegression(max_iter=1000)).fit(X, y)
    # classes_ sort alphabetically: map labels so both models see the same class order
    np.testing.assert_allclose(
        influence.transform(X_test, names[y_test]), numeric.transform(X_test, y_test), rtol=1e-5
    )


# -- curvature identities ------------------------------------------------------------------
@pytest.mark.parametrize(
    "model",
    [
        LogisticRegression(max_iter=1000),
        Ridge(alpha=1.0),
        SGDClassifier(loss="log_loss", random_state=0),
    ],
    ids=["logistic", "ridge", "sgd_ovr"],
)
# the identity holds at any coefficients, optimal or not
@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.NotStationaryWarning")
def test_gauss_newton_equals_hessian_for_linear_models(model):
    X, y, X_test, y_test = _standardized(load_wine, 120)
    frozen = FrozenEstimator(model.fit(X, y))
    gauss_newton = InfluenceFunction(frozen, curvature="gauss_newton").fit(X, y)
    hessian = InfluenceFunction(frozen, curvature="hessian").fit(X, y)
    np.testing.assert_allclose(
        gauss_newton.engine_.curvature.dense(), hessian.engine_.curvature.dense(), atol=1e-12
    )
    np.testing.assert_allclose(
        gauss_newton.transform(X_test, y_test), hessian.transform(X_test, y_test), rtol=1e-8
    )


def test_identity_curvature_is_gradient_dot_product():
    X, y, X_test, y_test = _standardized(load_diabetes, 300)
    influence = InfluenceFunction(Ridge(), curvature="identity", damping=0.5).fit(X, y)
    model = influence.estimator_
    Z, Z_test = _design(model, X), _design(model, X_test)
    train = 2 * (model.predict(X) - y)[:, None] * Z
    test = 2 * (model.predict(X_test) - y_test)[:, None] * Z_test
    np.testing.assert_allclose(influence.transform(X_test, y_test), test @ train.T / 1.5 / 300)


def test_new_damping_reuses_the_factorization():
    X, y, X_test, y_test = _standardized(load_wine, 120)
    influence = InfluenceFunction(LogisticRegression(max_iter=1000), damping=1e-3).fit(X, y)
    influence.transform(X_test, y_test)
    solver = influence.engine_.solver
    for damping in (1e-2, 1e-1, 1.0):
        matrix = influence.set_params(damping=damping).transform(X_test, y_test)
        fresh = InfluenceFunction(LogisticRegression(max_iter=1000), damping=damping).fit(X, y)
        np.testing.assert_allclose(matrix, fresh.transform(X_test, y_test), rtol=1e-8)
    assert solver.n_factorizations == 1


def test_most_influential_returns_extremes_of_each_row():
    X, y, X_test, y_test = _standardized(load_wine, 120)
    influence = InfluenceFunction(LogisticRegression(max_iter=1000)).fit(X, y)
    matrix = influence.transform(X_test[:4], y_test[:4])
    top = influence.most_influential(X_test[:4], y_test[:4], k=5)
    for row in range(4):
        np.testing.assert_array_equal(top.helpful_indices[row], np.argsort(-matrix[row])[:5])
        np.testing.assert_array_equal(top.harmful_indices[row], np.argsort(matrix[row])[:5])
        np.testing.assert_allclose(top.helpful_values[row], matrix[row, top.helpful_indices[row]])
    assert np.all(np.diff(top.helpful_values, axis=1) <= 0)
    assert np.all(np.diff(top.harmful_values, axis=1) >= 0)


def test_cholesky_solver_equals_direct_and_refuses_singular_curvature():
    X, y, X_test, y_test = _standardized(load_wine, 120)
    model = FrozenEstimator(LogisticRegression(C=0.5, max_iter=1000).fit(X, y))
    direct = InfluenceFunction(model, damping=1e-3, solver="direct").fit(X, y)
    cholesky = InfluenceFunction(model, damping=1e-3, solver="cholesky").fit(X, y)
    np.testing.assert_allclose(
        cholesky.transform(X_test, y_test), direct.transform(X_test, y_test), rtol=1e-9
    )
    np.testing.assert_allclose(cholesky.self_influence(), direct.self_influence(), rtol=1e-9)
    # softmax logits are invariant to a shift of all intercepts: without damping the
    # Gauss-Newton matrix is singular, which the pseudo-inverse handles and Cholesky refuses
    with pytest.raises(ValueError, match="singular or not positive definite.*solver='direct'"):
        cholesky.set_params(damping=0.0).transform(X_test, y_test)
    assert np.all(np.isfinite(direct.set_params(damping=0.0).transform(X_test, y_test)))
