"""Exact all-row leave-one-out of linear models and GLMs (_responses/_linear_loo.py).

Every family's all-row refits equal scikit-learn's own refits on a few rows, fitted to a
tight tolerance (no looser than that refit's own accuracy), and converged refits raise no
warning — in particular plain GridSearchCV over the damping of an influence estimate.
"""

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import (
    GammaRegressor,
    LinearRegression,
    LogisticRegression,
    PoissonRegressor,
    Ridge,
    RidgeClassifier,
    RidgeCV,
    TweedieRegressor,
)
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_influence import InfluenceFunction, LeaveOneOut
from sklearn_influence._base import fit_model_and_adapter
from sklearn_influence._responses._linear_loo import (
    LinearLOOContext,
    leave_one_out_all_rows,
    one_step,
)
from sklearn_influence._responses._newton import minimize_convex
from sklearn_influence.exceptions import InfluenceWarning

ROWS = [0, 7, 33]
TIGHT = {"tol": 1e-12, "max_iter": 10_000}


def _data(kind, n=80, d=4, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, d))
    eta = X @ rng.normal(scale=0.4, size=d)
    if kind == "binary":
        return X, (eta + rng.logistic(size=n) > 0).astype(int)
    if kind == "multiclass":
        return X, np.argmax(eta[:, None] * [1, 0, -1] + rng.gumbel(size=(n, 3)), axis=1)
    if kind == "counts":
        return X, rng.poisson(np.exp(eta))
    if kind == "positive":
        return X, rng.gamma(2.0, np.exp(eta) / 2.0)
    return X, eta + rng.normal(size=n)


FAMILIES = {
    "ols": (LinearRegression(), "regression"),
    "ridge": (Ridge(alpha=3.0), "regression"),
    "ridge_cv": (RidgeCV(alphas=[0.1, 1.0, 10.0]), "regression"),
    "ridge_classifier": (RidgeClassifier(alpha=1.0), "binary"),
    "logistic": (LogisticRegression(C=0.5, solver="newton-cholesky", **TIGHT), "binary"),
    "softmax": (LogisticRegression(C=0.5, solver="newton-cholesky", **TIGHT), "multiclass"),
    "poisson": (PoissonRegressor(alpha=0.05, solver="newton-cholesky", **TIGHT), "counts"),
    "gamma": (GammaRegressor(alpha=0.05, solver="newton-cholesky", **TIGHT), "positive"),
    "tweedie": (
        TweedieRegressor(power=1.5, alpha=0.05, solver="newton-cholesky", **TIGHT),
        "positive",
    ),
}


def _sklearn_refits(loo, X, y, rows):
    """scikit-learn's own refits without each row (with the remaining rows' weights)."""
    adapter = loo.problem_.adapter
    return np.array([adapter.retrain(X, y, exclude=[m], warm_start=False).numpy() for m in rows])


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("weighted", [False, True])
def test_all_row_loo_equals_scikit_learn_refits(name, weighted):
    model, kind = FAMILIES[name]
    X, y = _data(kind)
    weights = np.random.RandomState(1).uniform(0.5, 2.0, len(y)) if weighted else None
    with warnings.catch_warnings():
        warnings.simplefilter("error", InfluenceWarning)
        loo = LeaveOneOut(model, train_indices=np.arange(len(y))).fit(X, y, sample_weight=weights)
    expected = _sklearn_refits(loo, X, y, ROWS)
    np.testing.assert_allclose(loo.parameters_[ROWS], expected, rtol=0, atol=1e-9)


def test_pipeline_and_warm_start_use_the_exact_path():
    X, y = _data("binary")
    model = make_pipeline(StandardScaler(), LogisticRegression(solver="newton-cholesky", **TIGHT))
    cold = LeaveOneOut(model, train_indices=ROWS).fit(X, y)
    warm = LeaveOneOut(model, warm_start=True, train_indices=ROWS).fit(X, y)
    # sum-form objective: the refit's penalty is the package's, so cold and warm coincide
    np.testing.assert_allclose(warm.parameters_, cold.parameters_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cold.parameters_, _sklearn_refits(cold, X, y, ROWS), atol=1e-9)


def _context(model, kind, curvature="gauss_newton"):
    X, y = _data(kind)
    _, adapter = fit_model_and_adapter(model, X, y, torch.device("cpu"))
    inputs, targets = adapter.inputs(X), adapter.targets(y)
    theta = minimize_convex(adapter, adapter.parameters(), inputs, targets, adapter.row_weights)
    return LinearLOOContext(adapter, theta, inputs, targets, curvature=curvature), X, y


def test_one_step_is_the_least_squares_closed_form():
    """Δβ_i = (XᵀX)⁻¹x_i e_i / (1 − h_ii) with e = y − ŷ: numpy, no shared code."""
    context, X, y = _context(LinearRegression(), "regression")
    step = one_step(context, np.arange(len(y)))
    Z = np.column_stack([X, np.ones(len(y))])
    inverse = np.linalg.inv(Z.T @ Z)
    beta = inverse @ Z.T @ y
    leverage = np.einsum("ij,jk,ik->i", Z, inverse, Z)
    shifts = -(Z @ inverse) * ((y - Z @ beta) / (1 - leverage))[:, None]
    np.testing.assert_allclose(step.leverages.numpy(), leverage, atol=1e-14)
    np.testing.assert_allclose(step.shifts.numpy(), shifts, atol=1e-13)


@pytest.mark.filterwarnings("ignore:Could not adhere to working_memory")
def test_one_step_blocks_do_not_change_the_result():
    import sklearn

    context, _, y = _context(LogisticRegression(solver="newton-cholesky", **TIGHT), "multiclass")
    whole = one_step(context, np.arange(len(y)))
    with sklearn.config_context(working_memory=1e-4):  # a few rows per block
        assert len(context.block_rows(len(y), 3 * 3 * 15)) > 5
        blocked = one_step(context, np.arange(len(y)))
    np.testing.assert_allclose(blocked.shifts.numpy(), whole.shifts.numpy(), rtol=0, atol=1e-15)


def test_refinement_stops_at_the_rounding_level():
    """The refits' gradients are at round-off, after a handful of iterations."""
    model = LogisticRegression(C=0.5, solver="newton-cholesky", **TIGHT)
    X, y = _data("binary", n=300)
    _, adapter = fit_model_and_adapter(model, X, y, torch.device("cpu"))
    inputs, targets = adapter.inputs(X), adapter.targets(y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _reference, thetas, converged = leave_one_out_all_rows(
            adapter, adapter.parameters(), inputs, targets, np.arange(len(y))
        )
    assert converged.all()
    for m in ROWS:
        weights = torch.ones(len(y), dtype=torch.float64)
        weights[m] = 0
        gradient = torch.func.grad(adapter.objective)(thetas[m], inputs, targets, weights)
        assert float(gradient.abs().max()) < 1e-14


def test_grid_search_raises_no_convergence_warnings():
    """The 'loo' score target of plain GridSearchCV runs is exact and silent."""
    X, y = _data("binary", n=120)
    search = GridSearchCV(
        InfluenceFunction(LogisticRegression(max_iter=500), n_score_points=10, random_state=0),
        {"damping": [1e-3, 1e-1]},
        cv=KFold(2, shuffle=True, random_state=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        search.fit(X, y)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_unknown_penalty_is_refused():
    from sklearn_influence._responses._linear_loo import penalty_scales

    with pytest.raises(ValueError, match="Unknown penalty 'other'"):
        penalty_scales(None, torch.ones(2), "other")
