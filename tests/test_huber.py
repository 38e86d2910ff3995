"""HuberRegressor: the first model whose output curvature depends on the target.

Truth: scikit-learn's own objective and gradient (``_huber_loss_and_gradient``), its
leave-one-out refits, and the exact Hessian (h is linear in θ, so Gauss-Newton = Hessian).
"""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import HuberRegressor
from sklearn.linear_model._huber import _huber_loss_and_gradient

from sklearn_influence import InfluenceFunction, LeaveOneOut
from sklearn_influence._adapters._losses import HuberLoss
from sklearn_influence._engine._curvature import make_curvature

TIGHT = {"tol": 1e-12, "max_iter": 10_000}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _data(seed=0, n=60, n_test=20):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n + n_test, 3))
    y = X @ [1.0, -2.0, 0.5] + 0.5 * rng.standard_t(2, n + n_test) + 1.0
    return X[:n], y[:n], X[n:], y[n:]


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_objective_is_scikit_learns_divided_by_the_total_weight(fit_intercept, weighted):
    """J(θ) = sklearn's objective / W and ∇J = sklearn's gradient / W, at the fit and at
    perturbed parameters (residuals on both sides of the threshold)."""
    X, y, _, _ = _data(1)
    weights = np.random.RandomState(2).uniform(0.3, 3.0, len(y)) if weighted else None
    model = HuberRegressor(alpha=0.7, epsilon=1.2, fit_intercept=fit_intercept, **TIGHT)
    influence = InfluenceFunction(model).fit(X, y, sample_weight=weights)
    adapter = influence.engine_.adapter
    inputs, targets = adapter.inputs(X), adapter.targets(y)
    W = len(y) if weights is None else weights.sum()
    sw = np.ones(len(y)) if weights is None else weights
    for shift in (0.0, 0.3):
        theta = adapter.parameters() + shift * torch.linspace(-1, 1, adapter.parameters().numel())
        theta = theta.clone().requires_grad_(True)
        value = adapter.objective(theta, inputs, targets, adapter.row_weights)
        (gradient,) = torch.autograd.grad(value, theta)
        expected, expected_gradient = _huber_loss_and_gradient(
            theta.detach().numpy(), X, y, 1.2, 0.7, sw
        )
        np.testing.assert_allclose(value.item(), expected / W, rtol=1e-12)
        np.testing.assert_allclose(gradient.numpy(), expected_gradient / W, rtol=1e-9, atol=1e-13)
    assert influence.stationarity_ < 1e-5


def test_gauss_newton_is_the_hessian_and_needs_the_targets():
    X, y, _, _ = _data(3)
    influence = InfluenceFunction(HuberRegressor(**TIGHT)).fit(X, y)
    adapter = influence.engine_.adapter
    theta, inputs, targets = adapter.parameters(), adapter.inputs(X), adapter.targets(y)
    gauss_newton = make_curvature("gauss_newton", adapter, theta, inputs, targets).dense()
    hessian = make_curvature("hessian", adapter, theta, inputs, targets).dense()
    torch.testing.assert_close(gauss_newton, hessian, rtol=1e-10, atol=1e-12)
    # some rows are beyond the threshold: their curvature is zero, which a target-free
    # curvature could not know
    outputs = adapter.outputs(theta, inputs)
    factor = adapter.loss.hessian_factor(outputs, targets)
    assert (factor == 0).all(-1).any() and (factor != 0).any(-1).any()
    with pytest.raises(ValueError, match="depends on the targets"):
        HuberLoss(1.35).hessian_factor(outputs)


def _query_loss(model, X, y):
    outputs = torch.tensor(np.c_[model.predict(X), np.full(len(X), model.scale_)])
    return HuberLoss(model.epsilon)(outputs, torch.tensor(y[:, None])).numpy()


@pytest.mark.parametrize("settings", [{}, {"solver": "cg"}, {"curvature": "hessian"}])
def test_influence_matches_leave_one_out_refits(settings):
    """Predicted change of the mean test Huber loss vs scikit-learn's refits without each
    point: Pearson ≥ 0.99 (measured 0.997, slope 0.96)."""
    X, y, X_test, y_test = _data(0)
    model = HuberRegressor(alpha=1.0, **TIGHT)
    influence = InfluenceFunction(model, damping=0.0, **settings).fit(X, y)
    base = _query_loss(influence.estimator_, X_test, y_test)
    removed = np.arange(0, len(y), 2)
    actual = []
    for m in removed:
        keep = np.arange(len(y)) != m
        refit = HuberRegressor(**model.get_params()).fit(X[keep], y[keep])
        actual.append((_query_loss(refit, X_test, y_test) - base).mean())
    predicted = influence.transform(X_test, y_test)[:, removed].mean(0)
    assert np.corrcoef(predicted, actual)[0, 1] >= 0.99


def test_leave_one_out_response_is_scikit_learns_refit():
    X, y, _, _ = _data(4, n=30)
    weights = np.random.RandomState(5).uniform(0.5, 2.0, len(y))
    model = HuberRegressor(alpha=0.5, **TIGHT)
    loo = LeaveOneOut(model, train_indices=[2, 9], warm_start=False)
    loo.fit(X, y, sample_weight=weights)
    for row, m in zip(loo.parameters_, [2, 9], strict=True):
        keep = np.arange(len(y)) != m
        refit = HuberRegressor(**model.get_params()).fit(X[keep], y[keep], weights[keep])
        np.testing.assert_allclose(row, np.r_[refit.coef_, refit.intercept_, refit.scale_])
